//! Bearer secrets: browser sessions, OAuth2 access tokens, second-factor tickets and OAuth2
//! client secrets.
//!
//! A token is 32 random bytes (256 bits) in base64url without padding, behind a prefix naming
//! its kind (`pvs_`, `pva_`, `pvm_`, `pvc_`), so a leaked token is recognizable by secret
//! scanners and a token of one kind is never mistaken for another. The holder gets the token
//! once ([`IssuedToken`]); the store keeps its SHA-256 ([`TokenHash`]) in a [`TokenRecord`] and
//! finds a presented token by hashing it again. The hash is a lookup key, not a secret: 256 random
//! bits need no salt or slow hash.
//!
//! [`TokenRecord::check`] refuses a token that is of the wrong kind, revoked, expired, or
//! presented by another client than the one it is bound to. Lifetimes are absolute (no idle
//! extension): a session lasts 8 hours, an access token 15 minutes, a second-factor ticket 5
//! minutes, a client secret a year. Logout and revocation set `revoked_at`.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use subtle::{Choice, ConstantTimeEq};
use time::Duration;

use crate::AuthError;

/// Random bytes per token.
pub const TOKEN_BYTES: usize = 32;
/// Characters of a token after its prefix (base64url of 32 bytes, no padding).
pub const TOKEN_BODY_CHARS: usize = 43;

/// What a token is for. Stored as its snake-case name (`session`, `access`, `mfa`,
/// `client_secret`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum TokenKind {
    /// A signed-in user's browser session (`pvs_`), 8 hours absolute.
    Session,
    /// An OAuth2 access token (`pva_`), 15 minutes, bound to its client.
    Access,
    /// A ticket proving the password step passed, redeemable once for a session with a TOTP or
    /// recovery code (`pvm_`), 5 minutes.
    Mfa,
    /// An OAuth2 client secret (`pvc_`), a year, bound to its client.
    ClientSecret,
    /// An OAuth2 refresh token (`pvr_`), bound to its client and to the grant (family) it
    /// continues; rotated on every use. 90 days (`offline_access`) unless the grant says less.
    Refresh,
    /// An OAuth2 authorization code (`pvo_`), single-use, 60 seconds, bound to its client,
    /// redirect URI and PKCE challenge.
    AuthorizationCode,
    /// A SMART EHR launch id (`pvl_`), minted for a clinician's session and bound to a
    /// patient (and an encounter), 5 minutes.
    Launch,
}

impl TokenKind {
    /// Every kind.
    pub const ALL: [TokenKind; 7] = [
        TokenKind::Session,
        TokenKind::Access,
        TokenKind::Mfa,
        TokenKind::ClientSecret,
        TokenKind::Refresh,
        TokenKind::AuthorizationCode,
        TokenKind::Launch,
    ];

    /// The prefix of tokens of this kind.
    pub fn prefix(self) -> &'static str {
        match self {
            Self::Session => "pvs_",
            Self::Access => "pva_",
            Self::Mfa => "pvm_",
            Self::ClientSecret => "pvc_",
            Self::Refresh => "pvr_",
            Self::AuthorizationCode => "pvo_",
            Self::Launch => "pvl_",
        }
    }

    /// The stored name (`session`, `access`, `mfa`, `client_secret`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Session => "session",
            Self::Access => "access",
            Self::Mfa => "mfa",
            Self::ClientSecret => "client_secret",
            Self::Refresh => "refresh",
            Self::AuthorizationCode => "authorization_code",
            Self::Launch => "launch",
        }
    }

    /// How long a token of this kind lives from issue (absolute, never extended).
    pub fn default_lifetime(self) -> Duration {
        match self {
            Self::Session => Duration::hours(8),
            Self::Access => Duration::minutes(15),
            Self::Mfa => Duration::minutes(5),
            Self::ClientSecret => Duration::days(365),
            Self::Refresh => Duration::days(90),
            Self::AuthorizationCode => Duration::seconds(60),
            Self::Launch => Duration::minutes(5),
        }
    }

    /// The kind named by a token's prefix, if any.
    pub fn of_token(token: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|k| token.starts_with(k.prefix()))
    }
}

impl fmt::Display for TokenKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TokenKind {
    type Err = AuthError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or(AuthError::Invalid("token kind"))
    }
}

/// Why a presented token was refused. All of them are the same 401 at the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Not shaped like a phivault token.
    #[error("the token is malformed")]
    Malformed,
    /// No record has this token's hash (for the store to report).
    #[error("the token is unknown")]
    Unknown,
    /// A token of another kind than this place accepts.
    #[error("the token is of the wrong kind")]
    WrongKind,
    /// Past its expiry.
    #[error("the token has expired")]
    Expired,
    /// Revoked (logout, rotation or an administrator).
    #[error("the token has been revoked")]
    Revoked,
    /// Presented by another client than the one it is bound to.
    #[error("the token belongs to another client")]
    WrongClient,
}

/// A freshly generated token, zeroized on drop, never printed: hand it to its holder once and
/// store only its [`IssuedToken::hash`].
pub struct IssuedToken {
    kind: TokenKind,
    secret: SecretString,
}

impl IssuedToken {
    /// `kind`'s prefix followed by 32 random bytes in base64url without padding.
    pub fn generate(kind: TokenKind) -> Result<Self, AuthError> {
        let mut raw = zeroize::Zeroizing::new([0u8; TOKEN_BYTES]);
        phivault_crypto::random_bytes(raw.as_mut())?;
        let mut text = String::with_capacity(kind.prefix().len() + TOKEN_BODY_CHARS);
        text.push_str(kind.prefix());
        URL_SAFE_NO_PAD.encode_string(raw.as_ref(), &mut text);
        Ok(Self {
            kind,
            secret: SecretString::from(text),
        })
    }

    /// The token: only to give it to its holder, once.
    pub fn expose(&self) -> &str {
        self.secret.expose_secret()
    }

    /// Its kind.
    pub fn kind(&self) -> TokenKind {
        self.kind
    }

    /// Its hash, the form that is stored.
    pub fn hash(&self) -> TokenHash {
        TokenHash::of(self.expose())
    }
}

impl fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedToken")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// A fresh token of `kind` (see [`IssuedToken::generate`]).
pub fn generate(kind: TokenKind) -> Result<IssuedToken, AuthError> {
    IssuedToken::generate(kind)
}

/// The SHA-256 of a token as presented (prefix included).
pub fn hash(token: &str) -> TokenHash {
    TokenHash::of(token)
}

/// Reads a presented token: its kind from the prefix and its hash for the store lookup.
/// Anything that is not a prefix followed by 43 base64url characters is [`TokenError::Malformed`].
pub fn parse(presented: &str) -> Result<(TokenKind, TokenHash), TokenError> {
    let kind = TokenKind::of_token(presented).ok_or(TokenError::Malformed)?;
    let body = &presented[kind.prefix().len()..];
    let well_formed = body.len() == TOKEN_BODY_CHARS
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && URL_SAFE_NO_PAD
            .decode(body)
            .is_ok_and(|raw| raw.len() == TOKEN_BYTES);
    if !well_formed {
        return Err(TokenError::Malformed);
    }
    Ok((kind, TokenHash::of(presented)))
}

/// SHA-256 of a token: what the store keeps and looks tokens up by. Serialized as hex.
/// Equality is constant time.
#[derive(Clone, Copy, Serialize, Deserialize)]
pub struct TokenHash(#[serde(with = "crate::hex32")] [u8; 32]);

impl TokenHash {
    /// The hash of `token` as presented.
    pub fn of(token: &str) -> Self {
        Self(phivault_crypto::sha256(token.as_bytes()))
    }

    /// The raw hash bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// A hash from its raw bytes (as read from the store).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex digits.
    pub fn from_hex(text: &str) -> Option<Self> {
        crate::hex32::parse(text).map(Self)
    }
}

impl ConstantTimeEq for TokenHash {
    fn ct_eq(&self, other: &Self) -> Choice {
        self.0.ct_eq(&other.0)
    }
}

impl PartialEq for TokenHash {
    fn eq(&self, other: &Self) -> bool {
        self.ct_eq(other).into()
    }
}

impl Eq for TokenHash {}

impl std::hash::Hash for TokenHash {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // Consistent with `PartialEq`: both look at all 32 bytes.
        self.0.hash(state);
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenHash({})", self.to_hex())
    }
}

/// What the store keeps for an issued token. Times are Unix seconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// SHA-256 of the token.
    pub hash: TokenHash,
    /// What the token is for.
    pub kind: TokenKind,
    /// The user (or, for client credentials, the client) the token speaks for.
    pub principal_id: String,
    /// The OAuth2 client the token is bound to; `None` for a user's own session or ticket.
    pub client_id: Option<String>,
    /// Granted scopes, space-separated (OAuth2 / SMART syntax).
    pub scopes: String,
    /// When it was issued.
    pub issued_at: i64,
    /// When it stops working (exclusive: at `expires_at` it is expired).
    pub expires_at: i64,
    /// When it was revoked, if it was.
    pub revoked_at: Option<i64>,
}

impl TokenRecord {
    /// A fresh token of `kind` with its default lifetime from `now`, and the record to store.
    pub fn issue(
        kind: TokenKind,
        principal_id: impl Into<String>,
        client_id: Option<String>,
        scopes: impl Into<String>,
        now: i64,
    ) -> Result<(IssuedToken, TokenRecord), AuthError> {
        let token = IssuedToken::generate(kind)?;
        let record = Self {
            hash: token.hash(),
            kind,
            principal_id: principal_id.into(),
            client_id,
            scopes: scopes.into(),
            issued_at: now,
            expires_at: now.saturating_add(kind.default_lifetime().whole_seconds()),
            revoked_at: None,
        };
        Ok((token, record))
    }

    /// Whether this token may be used at `now` where a token of `expected_kind` is accepted.
    ///
    /// `presenting_client` is the OAuth2 client that authenticated itself on this request (at
    /// the token, revocation or introspection endpoints), or `None` for a plain bearer
    /// presentation. A token bound to a client is refused when another client presents it; a
    /// token bound to no client (a user's session) is refused when any client presents it.
    pub fn check(
        &self,
        now: i64,
        expected_kind: TokenKind,
        presenting_client: Option<&str>,
    ) -> Result<(), TokenError> {
        if self.kind != expected_kind {
            return Err(TokenError::WrongKind);
        }
        if self.revoked_at.is_some() {
            return Err(TokenError::Revoked);
        }
        if now >= self.expires_at {
            return Err(TokenError::Expired);
        }
        match (self.client_id.as_deref(), presenting_client) {
            (_, None) => Ok(()),
            (Some(bound), Some(presenting))
                if phivault_crypto::ct_eq(bound.as_bytes(), presenting.as_bytes()) =>
            {
                Ok(())
            }
            _ => Err(TokenError::WrongClient),
        }
    }

    /// Revokes the token at `now`; revoking again keeps the first time.
    pub fn revoke(&mut self, now: i64) {
        self.revoked_at.get_or_insert(now);
    }

    /// Not revoked and not expired at `now`.
    pub fn is_active(&self, now: i64) -> bool {
        self.revoked_at.is_none() && now < self.expires_at
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const NOW: i64 = 1_750_000_000;

    #[test]
    fn generated_tokens_have_prefix_length_and_hash() {
        for kind in TokenKind::ALL {
            let t = generate(kind).unwrap();
            let text = t.expose();
            assert!(text.starts_with(kind.prefix()), "{kind}");
            assert_eq!(text.len(), 4 + TOKEN_BODY_CHARS);
            assert_eq!(TokenKind::of_token(text), Some(kind));
            assert_eq!(t.hash(), hash(text));
            assert_eq!(parse(text), Ok((kind, t.hash())));
            assert_ne!(text, generate(kind).unwrap().expose());
        }
    }

    #[test]
    fn parse_refuses_malformed() {
        let good = generate(TokenKind::Session).unwrap();
        let body = &good.expose()[4..];
        let cases = [
            String::new(),
            "pvs_".into(),
            format!("pvx_{body}"),
            format!("PVS_{body}"),
            body.to_owned(),
            format!("pvs_{}", &body[1..]),
            format!("pvs_{body}A"),
            format!("pvs_{}+", &body[1..]),
            format!("pvs_{}=", &body[1..]),
            format!("pvs_{body} "),
            format!("Bearer pvs_{body}"),
        ];
        for case in cases {
            assert_eq!(parse(&case), Err(TokenError::Malformed), "{case:?}");
        }
    }

    #[test]
    fn default_lifetimes() {
        let cases = [
            (TokenKind::Session, 8 * 3600),
            (TokenKind::Access, 15 * 60),
            (TokenKind::Mfa, 5 * 60),
            (TokenKind::ClientSecret, 365 * 86_400),
        ];
        for (kind, secs) in cases {
            assert_eq!(kind.default_lifetime().whole_seconds(), secs, "{kind}");
            let (_, record) = TokenRecord::issue(kind, "u1", None, "", NOW).unwrap();
            assert_eq!(record.expires_at - record.issued_at, secs);
        }
    }

    #[test]
    fn check_table() {
        let (_, session) = TokenRecord::issue(TokenKind::Session, "user-1", None, "", NOW).unwrap();
        let (_, access) = TokenRecord::issue(
            TokenKind::Access,
            "user-1",
            Some("app-a".into()),
            "patient/Observation.rs",
            NOW,
        )
        .unwrap();
        let mut revoked = session.clone();
        revoked.revoke(NOW + 10);
        let session_end = NOW + 8 * 3600;
        let access_end = NOW + 15 * 60;
        use TokenError::*;
        use TokenKind::{Access, Mfa, Session};
        type Case<'a> = (
            &'a str,
            &'a TokenRecord,
            i64,
            TokenKind,
            Option<&'a str>,
            Result<(), TokenError>,
        );
        #[rustfmt::skip]
        let cases: &[Case<'_>] = &[
            ("fresh session", &session, NOW, Session, None, Ok(())),
            ("last second", &session, session_end - 1, Session, None, Ok(())),
            ("expired", &session, session_end, Session, None, Err(Expired)),
            ("session as access", &session, NOW, Access, None, Err(WrongKind)),
            ("session as mfa", &session, NOW, Mfa, None, Err(WrongKind)),
            ("session from a client", &session, NOW, Session, Some("app-a"), Err(WrongClient)),
            ("revoked", &revoked, NOW + 11, Session, None, Err(Revoked)),
            ("revoked and expired", &revoked, session_end, Session, None, Err(Revoked)),
            ("access as bearer", &access, NOW, Access, None, Ok(())),
            ("access by its client", &access, NOW, Access, Some("app-a"), Ok(())),
            ("access by another client", &access, NOW, Access, Some("app-b"), Err(WrongClient)),
            ("access by a prefix client", &access, NOW, Access, Some("app-"), Err(WrongClient)),
            ("access expired", &access, access_end, Access, None, Err(Expired)),
            ("access as session", &access, NOW, Session, None, Err(WrongKind)),
        ];
        for (name, record, now, kind, client, expected) in cases {
            assert_eq!(record.check(*now, *kind, *client), *expected, "{name}");
        }
    }

    #[test]
    fn revocation_is_sticky() {
        let (_, mut r) = TokenRecord::issue(TokenKind::Mfa, "u", None, "", NOW).unwrap();
        assert!(r.is_active(NOW));
        r.revoke(NOW + 1);
        r.revoke(NOW + 2);
        assert_eq!(r.revoked_at, Some(NOW + 1));
        assert!(!r.is_active(NOW + 1));
    }

    #[test]
    fn records_serialize_without_the_token() {
        let (token, record) =
            TokenRecord::issue(TokenKind::Access, "u", Some("c".into()), "openid", NOW).unwrap();
        let json = serde_json::to_string(&record).unwrap();
        assert!(!json.contains(token.expose()));
        assert!(!json.contains(&token.expose()[4..]));
        assert!(json.contains(&record.hash.to_hex()));
        assert!(json.contains("\"kind\":\"access\""));
        let back: TokenRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(back, record);
    }

    #[test]
    fn kinds_round_trip_by_name() {
        for kind in TokenKind::ALL {
            assert_eq!(kind.as_str().parse::<TokenKind>().unwrap(), kind);
        }
        assert!("bearer".parse::<TokenKind>().is_err());
    }

    #[test]
    fn hashes_round_trip_as_hex() {
        let h = hash("pvs_x");
        assert_eq!(TokenHash::from_hex(&h.to_hex()), Some(h));
        assert_eq!(TokenHash::from_bytes(*h.as_bytes()), h);
        assert_eq!(TokenHash::from_hex("zz"), None);
        assert_ne!(hash("pvs_x"), hash("pvs_y"));
    }

    #[test]
    fn debug_prints_no_secret() {
        for kind in TokenKind::ALL {
            let t = generate(kind).unwrap();
            let shown = format!("{t:?} {t:#?}");
            assert!(!shown.contains(t.expose()), "{shown}");
            assert!(!shown.contains(&t.expose()[4..]), "{shown}");
            assert!(!shown.contains(&t.expose()[4..20]), "{shown}");
        }
    }
}
