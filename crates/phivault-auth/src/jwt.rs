//! JSON Web Tokens of SMART App Launch: the client assertions of `private_key_jwt` clients
//! (verified here) and the OpenID Connect id_tokens of the server (signed here).
//!
//! Rules this module keeps:
//! - **The algorithm is ours, not the token's.** A client assertion is accepted as RS384 or
//!   ES384 only, the two algorithms SMART App Launch asks servers to support. `none`, every HMAC
//!   algorithm (the key-confusion attack that uses a public key as an HMAC secret), RS256 and
//!   anything else are refused from the header, before any key is used. The key type must match
//!   the algorithm: an RSA key never checks an ES384 token, and jsonwebtoken is given the one
//!   pinned algorithm.
//! - **Keys come from registration only.** The keys are the JWK set stored with the client
//!   ([`ClientJwks`]); keys or key locations in the token header (`jwk`, `jku`, `x5u`, `x5c`)
//!   are ignored, and nothing is ever fetched.
//! - **Signatures and claims go through jsonwebtoken** with an explicit `Validation`: algorithm
//!   pinned, `iss`, `sub` and `aud` required and compared with the client id and the token
//!   endpoint. Times (`exp`, `nbf`) are checked here against the caller's clock, which tests
//!   fix; jsonwebtoken would read the system clock. The claims are then read again here with
//!   exact types (a string `iss`, an integer `exp`), so the two checks must agree.
//! - **Short-lived and once only.** `exp` is at most [`ASSERTION_MAX_LIFETIME`] seconds ahead;
//!   the `jti` is handed back so the caller records it until `exp` and refuses a replay.
//! - **No key material in errors or Debug output.** Error messages are fixed texts; a
//!   [`SigningKey`] prints its `kid` only and zeroizes its private key on drop.

use std::fmt;

use aws_lc_rs::encoding::AsDer as _;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{KeyPair as _, RSA_PKCS1_SHA256, RsaKeyPair, RsaPublicKeyComponents};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::crypto::CryptoProvider;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value, json};
use zeroize::Zeroizing;

/// The latest `exp` accepted in a client assertion, in seconds after now (SMART App Launch:
/// "no more than five minutes in the future").
pub const ASSERTION_MAX_LIFETIME: i64 = 300;
/// Clock skew allowed when checking `exp` and `nbf`, in seconds.
pub const CLOCK_LEEWAY: i64 = 60;
/// Longest `jti` accepted, in characters.
pub const JTI_MAX_CHARS: usize = 256;
/// The algorithm of the id_tokens this server signs.
pub const ID_TOKEN_ALG: &str = "RS256";

/// Longest client assertion read; longer input is refused before it is decoded.
const MAX_ASSERTION_BYTES: usize = 16 * 1024;
/// Longest JWK set text read.
const MAX_JWKS_BYTES: usize = 64 * 1024;
/// Most keys in a client's set: each one may cost a signature check per assertion.
const MAX_KEYS: usize = 16;
/// Members that only a private key has (RFC 7518 section 6.2.2 and 6.3.2).
const PRIVATE_MEMBERS: [&str; 7] = ["d", "p", "q", "dp", "dq", "qi", "oth"];
/// Bounds of an RSA modulus used for RS384: 2048 bits at least (SMART, NIST), 8192 at most
/// (the largest aws-lc-rs verifies).
const RSA_MIN_BITS: usize = 2048;
const RSA_MAX_BITS: usize = 8192;
/// Bytes of a P-384 coordinate.
const P384_COORDINATE: usize = 48;

/// A JWK set or a signing key was refused. The text names the rule, never key material.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JwtError {
    /// The JWK set is not well formed (the text names the member or the rule).
    #[error("invalid JWK set: {0}")]
    Jwks(&'static str),
    /// The JWK set holds no public key usable for RS384 or ES384.
    #[error(
        "the JWK set has no RSA (2048 bits or more) or P-384 public key usable for RS384 or ES384"
    )]
    NoUsableKey,
    /// The JWK set holds private key members: the client must register its public keys only.
    #[error("the JWK set holds a private key")]
    PrivateKey,
    /// The JWK set holds a symmetric (`oct`) key.
    #[error("the JWK set holds a symmetric key")]
    SymmetricKey,
    /// A signing key could not be read or is too weak (the text names the reason).
    #[error("invalid signing key: {0}")]
    SigningKey(&'static str),
    /// Generating a key or signing failed in the cryptographic library.
    #[error("signing failed")]
    Signing,
}

/// Why a client assertion was refused. Every variant reaches the client as the same
/// `invalid_client`; the variants exist for the audit trail and the tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AssertionError {
    /// The header's `alg` is missing or not RS384 / ES384.
    #[error("client assertion algorithm not accepted")]
    Algorithm,
    /// No registered key has the header's `kid` and the algorithm's key type.
    #[error("client assertion key unknown")]
    UnknownKey,
    /// No candidate key verifies the signature.
    #[error("client assertion signature invalid")]
    Signature,
    /// A claim is missing, has the wrong type or the wrong value (the claim's name).
    #[error("client assertion claim {0} invalid")]
    Claims(&'static str),
    /// `exp` has passed (beyond the clock leeway).
    #[error("client assertion expired")]
    Expired,
    /// `exp` is more than five minutes ahead.
    #[error("client assertion lives too long")]
    TooLong,
    /// The assertion is not a compact JWS with a JSON header and payload, or is too long.
    #[error("client assertion malformed")]
    Malformed,
    /// No jsonwebtoken crypto provider could be selected (a build problem, not the client's).
    #[error("JWT verification unavailable")]
    Unavailable,
}

/// What the caller needs from an accepted client assertion: the `jti` to record against replay
/// until `exp`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssertionClaims {
    /// The assertion's unique id (1 to 256 characters).
    pub jti: String,
    /// The assertion's expiry, Unix seconds.
    pub exp: i64,
}

/// The key types an assertion may be checked with, one per accepted algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    /// RSA, for RS384.
    Rsa,
    /// EC on P-384, for ES384.
    EcP384,
}

impl KeyKind {
    fn algorithm(self) -> Algorithm {
        match self {
            Self::Rsa => Algorithm::RS384,
            Self::EcP384 => Algorithm::ES384,
        }
    }

    fn alg_name(self) -> &'static str {
        match self {
            Self::Rsa => "RS384",
            Self::EcP384 => "ES384",
        }
    }
}

/// One usable public key of a client.
#[derive(Debug, Clone)]
struct ClientKey {
    kid: Option<String>,
    kind: KeyKind,
    key: DecodingKey,
}

/// The public keys a `private_key_jwt` client registered, filtered to those usable for RS384
/// (RSA, 2048 to 8192 bits) and ES384 (EC P-384).
#[derive(Debug, Clone)]
pub struct ClientJwks {
    keys: Vec<ClientKey>,
}

impl ClientJwks {
    /// Parses a JWK set (`{"keys": [...]}`) or a single JWK.
    ///
    /// Refuses the whole set when any key carries private members (`d`, ...) or is symmetric
    /// (`kty: oct`), when a member of an RSA or EC key is malformed, or when no key is usable.
    /// Keys of other types or curves, keys restricted to another algorithm (`alg`) or use
    /// (`use`, `key_ops`) and RSA keys outside 2048..=8192 bits are left out.
    pub fn parse(json: &str) -> Result<Self, JwtError> {
        if json.len() > MAX_JWKS_BYTES {
            return Err(JwtError::Jwks("too large"));
        }
        let value: Value = serde_json::from_str(json).map_err(|_| JwtError::Jwks("not JSON"))?;
        let Value::Object(object) = &value else {
            return Err(JwtError::Jwks("not a JSON object"));
        };
        let members: Vec<&Map<String, Value>> = match object.get("keys") {
            Some(Value::Array(keys)) => keys
                .iter()
                .map(|key| {
                    key.as_object()
                        .ok_or(JwtError::Jwks("a key is not an object"))
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(JwtError::Jwks("keys is not an array")),
            None => vec![object],
        };
        if members.len() > MAX_KEYS {
            return Err(JwtError::Jwks("too many keys"));
        }
        // Refusals of the whole set first: a registrant who pasted a private or shared secret
        // must learn it, not have the key silently skipped.
        for member in &members {
            if PRIVATE_MEMBERS
                .iter()
                .any(|name| member.contains_key(*name))
            {
                return Err(JwtError::PrivateKey);
            }
            if member.get("kty").and_then(Value::as_str) == Some("oct") {
                return Err(JwtError::SymmetricKey);
            }
        }
        let mut keys = Vec::new();
        for member in members {
            if let Some(key) = usable_key(member)? {
                keys.push(key);
            }
        }
        if keys.is_empty() {
            return Err(JwtError::NoUsableKey);
        }
        Ok(Self { keys })
    }

    /// Number of usable keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Always false for a parsed set (a set without a usable key is refused); here for clippy's
    /// `len_without_is_empty` and for callers that build on it.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// Reads one JWK: `Ok(None)` for a well-formed key that is not usable here, `Err` for a
/// malformed one.
fn usable_key(jwk: &Map<String, Value>) -> Result<Option<ClientKey>, JwtError> {
    let kty = optional_str(jwk, "kty")?.ok_or(JwtError::Jwks("kty"))?;
    let kid = optional_str(jwk, "kid")?.map(str::to_owned);
    let alg = optional_str(jwk, "alg")?;
    if optional_str(jwk, "use")?.is_some_and(|key_use| key_use != "sig") {
        return Ok(None);
    }
    match jwk.get("key_ops") {
        None => {}
        Some(Value::Array(ops)) if !ops.iter().any(|op| op.as_str() == Some("verify")) => {
            return Ok(None);
        }
        Some(Value::Array(_)) => {}
        Some(_) => return Err(JwtError::Jwks("key_ops")),
    }
    let kind = match kty {
        "RSA" => KeyKind::Rsa,
        "EC" => {
            let crv = optional_str(jwk, "crv")?.ok_or(JwtError::Jwks("crv"))?;
            if crv != "P-384" {
                return Ok(None);
            }
            KeyKind::EcP384
        }
        _ => return Ok(None),
    };
    if alg.is_some_and(|alg| alg != kind.alg_name()) {
        return Ok(None);
    }
    let key = match kind {
        KeyKind::Rsa => {
            let n = base64url_member(jwk, "n")?;
            let e = base64url_member(jwk, "e")?;
            let n = strip_leading_zeros(&n);
            let e = strip_leading_zeros(&e);
            // e: odd, at least 3, at most 32 bits (what RSA libraries accept).
            if e.len() > 4 || e.last().is_none_or(|last| last & 1 == 0) || e == [1] {
                return Err(JwtError::Jwks("e"));
            }
            let bits = n.first().map_or(0, |first| {
                (n.len() - 1) * 8 + (8 - first.leading_zeros() as usize)
            });
            if !(RSA_MIN_BITS..=RSA_MAX_BITS).contains(&bits) {
                return Ok(None);
            }
            DecodingKey::from_rsa_raw_components(n, e)
        }
        KeyKind::EcP384 => {
            let x = base64url_member(jwk, "x")?;
            let y = base64url_member(jwk, "y")?;
            if x.len() != P384_COORDINATE {
                return Err(JwtError::Jwks("x"));
            }
            if y.len() != P384_COORDINATE {
                return Err(JwtError::Jwks("y"));
            }
            // The uncompressed point, the bytes `DecodingKey::from_ec_components` builds from
            // the same members. Whether it is on the curve is checked by aws-lc-rs at
            // verification: a point off the curve verifies nothing.
            let mut point = Vec::with_capacity(1 + 2 * P384_COORDINATE);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            DecodingKey::from_ec_der(&point)
        }
    };
    Ok(Some(ClientKey { kid, kind, key }))
}

/// A member that must be a string when present.
fn optional_str<'a>(
    object: &'a Map<String, Value>,
    name: &'static str,
) -> Result<Option<&'a str>, JwtError> {
    match object.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(JwtError::Jwks(name)),
    }
}

/// A required base64url (no padding) member.
fn base64url_member(object: &Map<String, Value>, name: &'static str) -> Result<Vec<u8>, JwtError> {
    let text = optional_str(object, name)?.ok_or(JwtError::Jwks(name))?;
    URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| JwtError::Jwks(name))
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

/// Verifies a `private_key_jwt` client assertion (RFC 7523, SMART App Launch "asymmetric client
/// authentication") against the client's registered keys.
///
/// `now` is Unix seconds from the caller's clock. On success the caller must record
/// ([`AssertionClaims::jti`], `client_id`) until [`AssertionClaims::exp`] and refuse a second
/// use; this function has no state.
pub fn verify_client_assertion(
    assertion: &str,
    jwks: &ClientJwks,
    client_id: &str,
    token_endpoint: &str,
    now: i64,
) -> Result<AssertionClaims, AssertionError> {
    let (kind, kid) = read_header(assertion)?;
    let candidates: Vec<&ClientKey> = jwks
        .keys
        .iter()
        .filter(|key| key.kind == kind)
        .filter(|key| kid.is_none() || key.kid.as_deref() == kid.as_deref())
        .collect();
    if candidates.is_empty() {
        return Err(AssertionError::UnknownKey);
    }
    if !provider_ready() {
        return Err(AssertionError::Unavailable);
    }
    let validation = validation(kind, client_id, token_endpoint);
    for candidate in candidates {
        match jsonwebtoken::decode::<Map<String, Value>>(assertion, &candidate.key, &validation) {
            Ok(data) => return check_claims(&data.claims, client_id, token_endpoint, now),
            // Another candidate (same type, no or the same kid) may hold the right key.
            Err(e) if key_did_not_verify(e.kind()) => continue,
            // Anything else is the same for every key: the signature checked out and a claim
            // failed, or the token is malformed.
            Err(e) => return Err(map_decode_error(e.kind())),
        }
    }
    Err(AssertionError::Signature)
}

/// Reads the algorithm and key id from the header, without jsonwebtoken: an algorithm outside
/// RS384 / ES384 (including `none` and names jsonwebtoken does not know) is refused here, as
/// [`AssertionError::Algorithm`], before any key is looked at.
fn read_header(assertion: &str) -> Result<(KeyKind, Option<String>), AssertionError> {
    if assertion.len() > MAX_ASSERTION_BYTES {
        return Err(AssertionError::Malformed);
    }
    let mut parts = assertion.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AssertionError::Malformed);
    };
    let header = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| AssertionError::Malformed)?;
    let header: Value = serde_json::from_slice(&header).map_err(|_| AssertionError::Malformed)?;
    let Value::Object(header) = header else {
        return Err(AssertionError::Malformed);
    };
    let kind = match header.get("alg").and_then(Value::as_str) {
        Some("RS384") => KeyKind::Rsa,
        Some("ES384") => KeyKind::EcP384,
        _ => return Err(AssertionError::Algorithm),
    };
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err(AssertionError::Malformed),
    };
    Ok((kind, kid))
}

/// The jsonwebtoken rules: one algorithm; `iss`, `sub`, `aud` present and equal to the client
/// id, the client id and (one of) the token endpoint. Times are left to [`check_claims`]
/// because jsonwebtoken reads the system clock, not the caller's.
fn validation(kind: KeyKind, client_id: &str, token_endpoint: &str) -> Validation {
    let mut validation = Validation::new(kind.algorithm());
    validation.set_required_spec_claims(&["iss", "sub", "aud"]);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.leeway = 0;
    validation.validate_aud = true;
    validation.set_audience(&[token_endpoint]);
    validation.set_issuer(&[client_id]);
    validation.sub = Some(client_id.to_owned());
    validation
}

/// The claims again with exact types, and the times against `now`.
fn check_claims(
    claims: &Map<String, Value>,
    client_id: &str,
    token_endpoint: &str,
    now: i64,
) -> Result<AssertionClaims, AssertionError> {
    if claims.get("iss").and_then(Value::as_str) != Some(client_id) {
        return Err(AssertionError::Claims("iss"));
    }
    if claims.get("sub").and_then(Value::as_str) != Some(client_id) {
        return Err(AssertionError::Claims("sub"));
    }
    let audience_ok = match claims.get("aud") {
        Some(Value::String(aud)) => aud == token_endpoint,
        Some(Value::Array(auds)) => auds.iter().any(|aud| aud.as_str() == Some(token_endpoint)),
        _ => false,
    };
    if !audience_ok {
        return Err(AssertionError::Claims("aud"));
    }
    let exp = claims
        .get("exp")
        .and_then(Value::as_i64)
        .ok_or(AssertionError::Claims("exp"))?;
    if exp.saturating_add(CLOCK_LEEWAY) <= now {
        return Err(AssertionError::Expired);
    }
    if exp > now.saturating_add(ASSERTION_MAX_LIFETIME) {
        return Err(AssertionError::TooLong);
    }
    if let Some(nbf) = claims.get("nbf") {
        let nbf = nbf.as_i64().ok_or(AssertionError::Claims("nbf"))?;
        if nbf > now.saturating_add(CLOCK_LEEWAY) {
            return Err(AssertionError::Claims("nbf"));
        }
    }
    let jti = claims
        .get("jti")
        .and_then(Value::as_str)
        .filter(|jti| (1..=JTI_MAX_CHARS).contains(&jti.chars().count()))
        .ok_or(AssertionError::Claims("jti"))?;
    Ok(AssertionClaims {
        jti: jti.to_owned(),
        exp,
    })
}

/// A decode failure that depends on the key tried: the next candidate may do better.
fn key_did_not_verify(kind: &ErrorKind) -> bool {
    matches!(
        kind,
        ErrorKind::InvalidSignature
            | ErrorKind::InvalidEcdsaKey
            | ErrorKind::InvalidRsaKey(_)
            | ErrorKind::InvalidKeyFormat
    )
}

fn map_decode_error(kind: &ErrorKind) -> AssertionError {
    match kind {
        ErrorKind::InvalidSignature
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidKeyFormat => AssertionError::Signature,
        ErrorKind::InvalidAlgorithm
        | ErrorKind::MissingAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::UnsupportedAlgorithm => AssertionError::Algorithm,
        ErrorKind::InvalidIssuer => AssertionError::Claims("iss"),
        ErrorKind::InvalidSubject => AssertionError::Claims("sub"),
        ErrorKind::InvalidAudience => AssertionError::Claims("aud"),
        ErrorKind::ExpiredSignature => AssertionError::Expired,
        ErrorKind::ImmatureSignature => AssertionError::Claims("nbf"),
        ErrorKind::MissingRequiredClaim(name) | ErrorKind::InvalidClaimFormat(name) => {
            AssertionError::Claims(claim_name(name))
        }
        ErrorKind::Provider(_) => AssertionError::Unavailable,
        _ => AssertionError::Malformed,
    }
}

/// The static name of a registered claim (the error type holds `&'static str`).
fn claim_name(name: &str) -> &'static str {
    match name {
        "iss" => "iss",
        "sub" => "sub",
        "aud" => "aud",
        "exp" => "exp",
        "nbf" => "nbf",
        _ => "claims",
    }
}

/// jsonwebtoken picks its crypto backend from its crate features and panics on first use when
/// it cannot (both `aws_lc_rs` and `rust_crypto` enabled by feature unification, or neither).
/// Selecting aws-lc-rs explicitly in that case keeps verification working and never panics.
fn provider_ready() -> bool {
    if CryptoProvider::try_get_default().is_some() {
        return true;
    }
    // An error means another thread installed a provider first: that one is used.
    let _ = CryptoProvider::install_default(&jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER);
    CryptoProvider::try_get_default().is_some()
}

/// The server's RS256 key for OpenID Connect id_tokens: an RSA-2048 key pair from aws-lc-rs.
///
/// The private key is kept as PKCS#8 DER (zeroized on drop) for the store to seal; `Debug`
/// prints the `kid` only.
pub struct SigningKey {
    kid: String,
    private_der: Zeroizing<Vec<u8>>,
    pair: RsaKeyPair,
    n: Vec<u8>,
    e: Vec<u8>,
}

impl SigningKey {
    /// Generates a new RSA-2048 key. Its `kid` is the RFC 7638 JWK thumbprint (SHA-256,
    /// base64url) of the public key.
    pub fn generate() -> Result<Self, JwtError> {
        let pair = RsaKeyPair::generate(KeySize::Rsa2048).map_err(|_| JwtError::Signing)?;
        // `as_der` returns a buffer that aws-lc-rs zeroizes on drop; the copy lives in Zeroizing.
        let der = pair.as_der().map_err(|_| JwtError::Signing)?;
        let private_der = Zeroizing::new(der.as_ref().to_vec());
        let RsaPublicKeyComponents { n, e } =
            RsaPublicKeyComponents::<Vec<u8>>::from(pair.public_key());
        let kid = jwk_thumbprint(&n, &e);
        Ok(Self {
            kid,
            private_der,
            pair,
            n,
            e,
        })
    }

    /// Reads a key kept by the store: `der` is the PKCS#8 DER that [`SigningKey::private_der`]
    /// gave, `kid` the id it was published under. Refuses keys under 2048 bits.
    pub fn from_der(kid: &str, der: &[u8]) -> Result<Self, JwtError> {
        if kid.is_empty() || kid.len() > 256 || kid.chars().any(char::is_control) {
            return Err(JwtError::SigningKey("kid"));
        }
        let pair = RsaKeyPair::from_pkcs8(der)
            .map_err(|_| JwtError::SigningKey("not an RSA PKCS#8 key"))?;
        if pair.public_modulus_len() * 8 < RSA_MIN_BITS {
            return Err(JwtError::SigningKey("shorter than 2048 bits"));
        }
        let RsaPublicKeyComponents { n, e } =
            RsaPublicKeyComponents::<Vec<u8>>::from(pair.public_key());
        Ok(Self {
            kid: kid.to_owned(),
            private_der: Zeroizing::new(der.to_vec()),
            pair,
            n,
            e,
        })
    }

    /// The key id, in the `kid` header of every token signed and in the published JWK.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The private key as PKCS#8 DER, for the store to seal. Never log or print it.
    pub fn private_der(&self) -> &Zeroizing<Vec<u8>> {
        &self.private_der
    }

    /// The public key as a JWK for the server's JWKS document:
    /// `{"kty":"RSA","n":..,"e":..,"kid":..,"alg":"RS256","use":"sig"}`.
    pub fn public_jwk(&self) -> Value {
        json!({
            "kty": "RSA",
            "n": URL_SAFE_NO_PAD.encode(&self.n),
            "e": URL_SAFE_NO_PAD.encode(&self.e),
            "kid": self.kid,
            "alg": ID_TOKEN_ALG,
            "use": "sig",
        })
    }

    /// Signs `claims` (a JSON object) as a compact RS256 JWT with header
    /// `{"alg":"RS256","typ":"JWT","kid":..}`.
    ///
    /// Signs with aws-lc-rs directly: jsonwebtoken's RSA signer reads PKCS#1 DER, while
    /// aws-lc-rs keeps keys as PKCS#8. The result is an ordinary JWS that jsonwebtoken (or any
    /// library) verifies with [`SigningKey::public_jwk`]; the tests check that.
    pub fn sign(&self, claims: &Value) -> Result<String, JwtError> {
        if !claims.is_object() {
            return Err(JwtError::SigningKey("claims must be a JSON object"));
        }
        let header = json!({ "alg": ID_TOKEN_ALG, "typ": "JWT", "kid": self.kid });
        let header = serde_json::to_vec(&header).map_err(|_| JwtError::Signing)?;
        let claims = serde_json::to_vec(claims).map_err(|_| JwtError::Signing)?;
        let mut token = URL_SAFE_NO_PAD.encode(header);
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(claims));
        let mut signature = vec![0; self.pair.public_modulus_len()];
        self.pair
            .sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                token.as_bytes(),
                &mut signature,
            )
            .map_err(|_| JwtError::Signing)?;
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(signature));
        Ok(token)
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// RFC 7638 thumbprint of an RSA public key: SHA-256 of `{"e":..,"kty":"RSA","n":..}` (members
/// in lexicographic order, no whitespace), base64url.
fn jwk_thumbprint(n: &[u8], e: &[u8]) -> String {
    let canonical = format!(
        r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#,
        URL_SAFE_NO_PAD.encode(e),
        URL_SAFE_NO_PAD.encode(n)
    );
    URL_SAFE_NO_PAD.encode(phivault_crypto::sha256(canonical.as_bytes()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
