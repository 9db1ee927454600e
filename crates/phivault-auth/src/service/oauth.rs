//! OAuth2 for apps that act for people (SMART App Launch) and for backend services: client
//! types, client authentication (public, secret, `private_key_jwt`), authorization codes with
//! PKCE, refresh-token rotation with reuse detection, EHR launch contexts, and the apps a
//! person has authorized.
//!
//! What holds:
//! - **A code is used once, within 60 seconds, by the client, redirect URI and PKCE verifier
//!   it was issued for.** Taking a code marks it used in the same statement that reads it, so
//!   two concurrent exchanges cannot both succeed; a second presentation revokes every token
//!   the first one produced (RFC 6749 §4.1.2).
//! - **A refresh token works once.** Using it revokes it and issues its successor in one
//!   transaction. Presenting a rotated (revoked) refresh token again means two parties hold
//!   it: the whole family (every token of that grant) is revoked, audited as a probable theft.
//! - **Tokens of one grant share a family**, so reuse detection, a person's revocation of an
//!   app and a code replay each reach all of them at once, in one transaction with the audit
//!   entry, and bump the auth generation so no process keeps serving a cached verification.
//! - **Client assertions** are RS384/ES384 JWTs verified against the keys registered with the
//!   client; a `jti` is accepted once per client until the assertion expires.

use std::collections::BTreeSet;

use zeroize::Zeroizing;

use super::*;
use crate::jwt::{ClientJwks, verify_client_assertion};

/// How long a launch id of an EHR launch stays usable.
pub const LAUNCH_LIFETIME_SECS: i64 = 300;
/// How long a refresh token of `online_access` lives from sign-in: a browser session's
/// lifetime (the app stays connected while the person could still be signed in).
pub const ONLINE_REFRESH_SECS: i64 = 8 * 3600;
/// Longest redirect URI accepted at registration.
const MAX_REDIRECT_URI_LEN: usize = 2000;
/// Most redirect URIs of one client.
const MAX_REDIRECT_URIS: usize = 20;

/// How an OAuth2 client authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientType {
    /// An app that cannot keep a secret (a browser or phone app): PKCE, no client secret.
    Public,
    /// A confidential client with a shared secret (HTTP Basic or form post).
    ConfidentialSecret,
    /// A confidential client that signs JWT assertions with its own key (`private_key_jwt`,
    /// RFC 7523; SMART Backend Services).
    ConfidentialJwt,
}

impl ClientType {
    /// The stored and command-line name.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientType::Public => "public",
            ClientType::ConfidentialSecret => "confidential-secret",
            ClientType::ConfidentialJwt => "confidential-jwt",
        }
    }

    /// Parses a stored or command-line name.
    pub fn parse(text: &str) -> Option<ClientType> {
        [
            ClientType::Public,
            ClientType::ConfidentialSecret,
            ClientType::ConfidentialJwt,
        ]
        .into_iter()
        .find(|t| t.as_str() == text)
    }
}

/// A client to register.
#[derive(Debug, Clone)]
pub struct ClientRegistration {
    /// Display name (shown on the consent screen: escaped there).
    pub name: String,
    /// How it authenticates.
    pub client_type: ClientType,
    /// The scopes it may ask for, space-separated.
    pub scopes: String,
    /// Redirect URIs, matched exactly (https, or http to a loopback host).
    pub redirect_uris: Vec<String>,
    /// Its public keys (a JWKS or one JWK, JSON), for `confidential-jwt`.
    pub jwks: Option<String>,
    /// Where its keys were fetched from at registration (recorded, never fetched by the server).
    pub jwks_url: Option<String>,
    /// The patient whose compartment its `patient/` scopes reach under client credentials.
    pub launch_patient: Option<Id>,
}

/// A registered client as the OAuth2 endpoints and the CLI see it (no secret, no keys).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthClient {
    /// `pvcl_<uuid>`.
    pub client_id: String,
    /// Display name.
    pub name: String,
    /// How it authenticates.
    pub client_type: ClientType,
    /// Registered scopes.
    pub scopes: String,
    /// Registered redirect URIs.
    pub redirect_uris: Vec<String>,
    /// Where its keys came from, if recorded.
    pub jwks_url: Option<String>,
    /// Its launch patient for client credentials.
    pub launch_patient: Option<Id>,
    /// Unix time registered.
    pub created_at: i64,
    /// Unix time disabled, if disabled.
    pub disabled_at: Option<i64>,
}

/// How a client authenticates one request to the token, revocation or introspection endpoint.
pub enum ClientCredentials {
    /// A public client names itself.
    Public {
        /// Its id.
        client_id: String,
    },
    /// A shared secret.
    Secret {
        /// Its id.
        client_id: String,
        /// The secret.
        secret: Zeroizing<String>,
    },
    /// A signed JWT assertion (`client_assertion_type` jwt-bearer).
    Assertion {
        /// `client_id` when the request also named it (must then match the assertion).
        client_id: Option<String>,
        /// The compact JWT.
        assertion: Zeroizing<String>,
    },
}

impl std::fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self {
            ClientCredentials::Public { .. } => "public",
            ClientCredentials::Secret { .. } => "secret",
            ClientCredentials::Assertion { .. } => "assertion",
        };
        f.debug_struct("ClientCredentials")
            .field("kind", &kind)
            .finish_non_exhaustive()
    }
}

/// Why a grant was refused: each maps to one RFC 6749 / 7523 error code. The texts are for
/// the `error_description` and the log: they never hold a token, code or secret.
#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    /// `invalid_request`.
    #[error("{0}")]
    InvalidRequest(String),
    /// `invalid_client` (one text whatever failed).
    #[error("client authentication failed")]
    InvalidClient,
    /// `invalid_grant`.
    #[error("{0}")]
    InvalidGrant(&'static str),
    /// A rotated refresh token was presented again: its family was revoked (`invalid_grant`).
    #[error("the refresh token was already used; every token of this grant is revoked")]
    RefreshReuse,
    /// `unauthorized_client`.
    #[error("{0}")]
    UnauthorizedClient(&'static str),
    /// `invalid_scope`.
    #[error("{0}")]
    InvalidScope(String),
    /// Throttling, store or internal failure.
    #[error(transparent)]
    Service(#[from] ServiceError),
}

impl GrantError {
    /// The same refusal for callers that speak [`ServiceError`] (the JSON admin API, tests):
    /// client authentication failures are credential failures, other refusals invalid input.
    pub fn into_service(self) -> ServiceError {
        match self {
            GrantError::InvalidClient => ServiceError::CredentialFailure,
            GrantError::Service(e) => e,
            other => ServiceError::Invalid(other.to_string()),
        }
    }
}

impl From<phivault_store::StoreError> for GrantError {
    fn from(e: phivault_store::StoreError) -> Self {
        GrantError::Service(e.into())
    }
}

/// What the person approved on the consent screen, to become a code.
#[derive(Debug, Clone)]
pub struct CodeRequest {
    /// The client.
    pub client_id: String,
    /// The signed-in user.
    pub user_id: String,
    /// The redirect URI of the authorization request (the exchange must present it again).
    pub redirect_uri: String,
    /// The approved scopes (within the client's registration), space-separated.
    pub scopes: String,
    /// The PKCE S256 challenge.
    pub code_challenge: String,
    /// The patient in context (`launch/patient` choice, EHR launch, or a patient's own).
    pub launch_patient: Option<Id>,
    /// The encounter in context (EHR launch).
    pub launch_encounter: Option<String>,
    /// The OpenID Connect `nonce`, echoed in the id_token.
    pub nonce: Option<String>,
}

/// Tokens issued by a grant.
#[derive(Debug)]
pub struct TokenGrant {
    /// The access token.
    pub access: IssuedToken,
    /// Its lifetime in seconds.
    pub expires_in: i64,
    /// The granted scopes.
    pub scope: String,
    /// The refresh token, for `offline_access` / `online_access`.
    pub refresh: Option<IssuedToken>,
    /// The patient in context.
    pub patient: Option<Id>,
    /// The encounter in context.
    pub encounter: Option<String>,
    /// The user the tokens act for.
    pub user_id: String,
    /// The client.
    pub client_id: String,
    /// The OpenID Connect nonce of the authorization request.
    pub nonce: Option<String>,
}

/// An app a person has authorized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppAuthorization {
    /// The client.
    pub client_id: String,
    /// Its display name.
    pub client_name: String,
    /// What the person approved.
    pub scopes: String,
    /// Unix time of the approval.
    pub granted_at: i64,
    /// Unix time the app last got a token (sign-in or refresh; an access token lives 15
    /// minutes, so an app in use refreshes at least that often).
    pub last_used_at: i64,
}

fn client_of(row: ClientRow) -> Result<OAuthClient, ServiceError> {
    Ok(OAuthClient {
        client_type: ClientType::parse(&row.client_type)
            .ok_or_else(|| internal("a stored client type is unknown"))?,
        launch_patient: row.launch_patient.as_deref().map(parse_id).transpose()?,
        client_id: row.client_id,
        name: row.name,
        scopes: row.scopes,
        redirect_uris: row.redirect_uris,
        jwks_url: row.jwks_url,
        created_at: row.created_at,
        disabled_at: row.disabled_at,
    })
}

/// A redirect URI a client may register: absolute https, or http to a loopback host (native
/// apps, RFC 8252 §7.3), no fragment, no credentials.
fn check_redirect_uri(uri: &str) -> Result<(), ServiceError> {
    let bad = |why: &str| ServiceError::Invalid(format!("redirect URI refused: {why}"));
    if uri.len() > MAX_REDIRECT_URI_LEN || uri.chars().any(|c| c.is_control() || c == ' ') {
        return Err(bad("too long or has spaces or control characters"));
    }
    if uri.contains('#') {
        return Err(bad("a redirect URI has no fragment"));
    }
    let (scheme, rest) = uri
        .split_once("://")
        .ok_or_else(|| bad("not an absolute URI"))?;
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    if authority.is_empty() || authority.contains('@') {
        return Err(bad("no host, or credentials in the URI"));
    }
    let host = authority
        .rsplit_once(':')
        .filter(|(h, port)| !h.ends_with(']') || port.chars().all(|c| c.is_ascii_digit()))
        .map_or(authority, |(h, _)| h);
    let loopback = matches!(host, "localhost" | "127.0.0.1" | "[::1]");
    match scheme {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        _ => Err(bad("use https (http only to localhost)")),
    }
}

/// The `sub` claim of a compact JWT, read without verifying anything: only to find the
/// client whose keys then verify the assertion (RFC 7523 §3: `sub` is the client id).
fn unverified_subject(assertion: &str) -> Option<String> {
    use base64::Engine as _;
    let mut parts = assertion.split('.');
    let (_, payload) = (parts.next()?, parts.next()?);
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    let sub = claims.get("sub")?.as_str()?;
    (!sub.is_empty() && sub.len() <= MAX_CLIENT_ID_LEN).then(|| sub.to_owned())
}

/// Registered scopes that the client may ask to be approved: everything it may ask for.
fn parse_scopes(scopes: &str) -> Result<ScopeSet, ServiceError> {
    ScopeSet::parse(scopes).map_err(|e| ServiceError::Invalid(e.to_string()))
}

/// Whether `scopes` (space-separated) names `scope` among its non-data scopes.
pub fn has_scope(scopes: &str, scope: &str) -> bool {
    scopes.split_ascii_whitespace().any(|s| s == scope)
}

impl Accounts {
    /// Registers an OAuth2 client of any type, committed with `audit`'s entry. Returns its id
    /// and, for `confidential-secret`, its secret (shown once).
    pub async fn register_client(
        &self,
        registration: &ClientRegistration,
        audit: &dyn AccountSink,
    ) -> Result<(String, Option<IssuedToken>), ServiceError> {
        let name = registration.name.trim();
        let chars = name.chars().count();
        if chars == 0 || chars > MAX_CLIENT_NAME_CHARS || name.chars().any(char::is_control) {
            return Err(ServiceError::Invalid(format!(
                "a client name has 1 to {MAX_CLIENT_NAME_CHARS} characters, no control characters"
            )));
        }
        let set = parse_scopes(&registration.scopes)?;
        if set.data_scopes().is_empty() && set.other_scopes().is_empty() {
            return Err(ServiceError::Invalid(
                "a client needs at least one scope".to_owned(),
            ));
        }
        if registration.redirect_uris.len() > MAX_REDIRECT_URIS {
            return Err(ServiceError::Invalid(format!(
                "at most {MAX_REDIRECT_URIS} redirect URIs"
            )));
        }
        for uri in &registration.redirect_uris {
            check_redirect_uri(uri)?;
        }
        let kind = registration.client_type;
        if kind == ClientType::Public && registration.redirect_uris.is_empty() {
            return Err(ServiceError::Invalid(
                "a public client needs at least one redirect URI (it can only use the \
                 authorization code flow)"
                    .to_owned(),
            ));
        }
        if kind == ClientType::Public
            && set
                .data_scopes()
                .iter()
                .any(|s| s.context() == phivault_policy::ScopeContext::System)
        {
            return Err(ServiceError::Invalid(
                "a public client cannot hold system/ scopes (it cannot authenticate itself)"
                    .to_owned(),
            ));
        }
        let jwks = match (kind, registration.jwks.as_deref()) {
            (ClientType::ConfidentialJwt, Some(jwks)) => {
                ClientJwks::parse(jwks)
                    .map_err(|e| ServiceError::Invalid(format!("the client's keys: {e}")))?;
                Some(jwks.to_owned())
            }
            (ClientType::ConfidentialJwt, None) => {
                return Err(ServiceError::Invalid(
                    "a confidential-jwt client needs its public keys (a JWKS)".to_owned(),
                ));
            }
            (_, Some(_)) => {
                return Err(ServiceError::Invalid(
                    "only a confidential-jwt client registers keys".to_owned(),
                ));
            }
            (_, None) => None,
        };
        let client_id = format!("pvcl_{}", uuid::Uuid::new_v4());
        // Clients without a secret store the hash of a fresh random token nobody holds, so
        // the secret check can never pass for them (and is also refused by type).
        let secret = IssuedToken::generate(TokenKind::ClientSecret).map_err(internal)?;
        self.store
            .insert_client(
                &ClientRow {
                    client_id: client_id.clone(),
                    name: name.to_owned(),
                    secret_hash: secret.hash().as_bytes().to_vec(),
                    scopes: set.to_string(),
                    launch_patient: registration
                        .launch_patient
                        .as_ref()
                        .map(|p| p.as_str().to_owned()),
                    created_at: self.now(),
                    disabled_at: None,
                    client_type: kind.as_str().to_owned(),
                    redirect_uris: registration.redirect_uris.clone(),
                    jwks,
                    jwks_url: registration.jwks_url.clone(),
                },
                audit,
                &AccountChange::new(AccountChangeKind::ClientRegistered),
            )
            .await?;
        tracing::info!(target: "phivault::auth", client_id, kind = kind.as_str(), "OAuth2 client registered");
        Ok((
            client_id,
            (kind == ClientType::ConfidentialSecret).then_some(secret),
        ))
    }

    /// Every registered client (disabled ones included), oldest first.
    pub async fn list_clients(&self) -> Result<Vec<OAuthClient>, ServiceError> {
        self.store
            .list_clients()
            .await?
            .into_iter()
            .map(client_of)
            .collect()
    }

    /// The client `client_id` (disabled ones included), if any.
    pub async fn oauth_client(&self, client_id: &str) -> Result<Option<OAuthClient>, ServiceError> {
        if client_id.is_empty() || client_id.len() > MAX_CLIENT_ID_LEN {
            return Ok(None);
        }
        self.store
            .client(client_id)
            .await?
            .map(client_of)
            .transpose()
    }

    /// A new secret for a `confidential-secret` client, committed with `audit`'s entry; the
    /// old one stops working at once. Tokens already issued keep working (revoke them by
    /// disabling the client).
    pub async fn rotate_client_secret(
        &self,
        client_id: &str,
        audit: &dyn AccountSink,
    ) -> Result<IssuedToken, ServiceError> {
        let client = self
            .oauth_client(client_id)
            .await?
            .filter(|c| c.disabled_at.is_none())
            .ok_or_else(|| ServiceError::NotFound("enabled client".to_owned()))?;
        if client.client_type != ClientType::ConfidentialSecret {
            return Err(ServiceError::Invalid(format!(
                "a {} client has no secret",
                client.client_type.as_str()
            )));
        }
        let secret = IssuedToken::generate(TokenKind::ClientSecret).map_err(internal)?;
        if !self
            .store
            .set_client_secret(
                client_id,
                secret.hash().as_bytes(),
                audit,
                &AccountChange::new(AccountChangeKind::ClientSecretReplaced),
            )
            .await?
        {
            return Err(ServiceError::NotFound("enabled client".to_owned()));
        }
        tracing::info!(target: "phivault::auth", client_id, "OAuth2 client secret rotated");
        Ok(secret)
    }

    /// Authenticates a client at the token, revocation or introspection endpoint. Every
    /// failure is [`GrantError::InvalidClient`]; the reason goes to the log only.
    pub async fn authenticate_client(
        &self,
        credentials: &ClientCredentials,
        token_endpoint: &str,
    ) -> Result<OAuthClient, GrantError> {
        let refuse = |why: &'static str| {
            tracing::info!(target: "phivault::auth", why, "client authentication refused");
            GrantError::InvalidClient
        };
        match credentials {
            ClientCredentials::Public { client_id } => match self.oauth_client(client_id).await? {
                Some(c) if c.disabled_at.is_none() && c.client_type == ClientType::Public => Ok(c),
                _ => Err(refuse("not an enabled public client")),
            },
            ClientCredentials::Secret { client_id, secret } => {
                let row = self
                    .client_by_credentials(client_id, secret)
                    .await
                    .map_err(|e| match e {
                        ServiceError::CredentialFailure => refuse("wrong secret"),
                        other => GrantError::Service(other),
                    })?;
                let client = client_of(row)?;
                if client.client_type != ClientType::ConfidentialSecret {
                    return Err(refuse("client does not authenticate with a secret"));
                }
                Ok(client)
            }
            ClientCredentials::Assertion {
                client_id,
                assertion,
            } => {
                let claimed =
                    unverified_subject(assertion).ok_or_else(|| refuse("assertion unreadable"))?;
                if client_id.as_deref().is_some_and(|c| c != claimed) {
                    return Err(refuse("client_id differs from the assertion's subject"));
                }
                let row = match self.store.client(&claimed).await? {
                    Some(row) if row.disabled_at.is_none() => row,
                    _ => return Err(refuse("unknown or disabled client")),
                };
                let keys = row.jwks.clone();
                let client = client_of(row)?;
                if client.client_type != ClientType::ConfidentialJwt {
                    return Err(refuse("client does not authenticate with keys"));
                }
                let jwks = keys
                    .as_deref()
                    .and_then(|k| ClientJwks::parse(k).ok())
                    .ok_or_else(|| refuse("stored keys unusable"))?;
                let now = self.now();
                let claims = verify_client_assertion(
                    assertion,
                    &jwks,
                    &client.client_id,
                    token_endpoint,
                    now,
                )
                .map_err(|e| {
                    tracing::info!(target: "phivault::auth", reason = %e, "client assertion refused");
                    GrantError::InvalidClient
                })?;
                if !self
                    .store
                    .claim_jti(
                        &client.client_id,
                        &claims.jti,
                        // Kept as long as the verifier would still accept it.
                        claims.exp.saturating_add(crate::jwt::CLOCK_LEEWAY),
                        now,
                    )
                    .await?
                {
                    return Err(refuse("assertion jti replayed"));
                }
                Ok(client)
            }
        }
    }

    /// OAuth2 client credentials grant for an authenticated client (secret or assertion):
    /// (access token, lifetime seconds, granted scopes).
    pub async fn client_credentials_for(
        &self,
        client: &OAuthClient,
        scope: Option<&str>,
    ) -> Result<(IssuedToken, i64, String), GrantError> {
        if client.client_type == ClientType::Public {
            return Err(GrantError::UnauthorizedClient(
                "a public client cannot use the client_credentials grant",
            ));
        }
        let now = self.now();
        let allowed = ScopeSet::parse(&client.scopes).map_err(internal)?;
        let granted = match scope.map(str::trim).filter(|s| !s.is_empty()) {
            None => allowed,
            Some(s) => {
                let requested =
                    ScopeSet::parse(s).map_err(|e| GrantError::InvalidScope(e.to_string()))?;
                if !scopes_within(&requested, &allowed) {
                    return Err(GrantError::InvalidScope(
                        "the requested scope exceeds what the client is registered for".to_owned(),
                    ));
                }
                requested
            }
        };
        let granted = granted.to_string();
        let (token, record) = TokenRecord::issue(
            TokenKind::Access,
            &client.client_id,
            Some(client.client_id.clone()),
            granted.clone(),
            now,
        )
        .map_err(internal)?;
        self.store
            .insert_token(&token_row(
                &record,
                client
                    .launch_patient
                    .as_ref()
                    .map(|p| p.as_str().to_owned()),
            ))
            .await?;
        Ok((token, record.expires_at.saturating_sub(now), granted))
    }

    /// Checks the scopes an authorization request asks for against the client's registration:
    /// the requested set when it is within, else `invalid_scope`.
    pub fn requested_scopes(client: &OAuthClient, scope: &str) -> Result<ScopeSet, GrantError> {
        let requested =
            ScopeSet::parse(scope).map_err(|e| GrantError::InvalidScope(e.to_string()))?;
        let allowed = ScopeSet::parse(&client.scopes).map_err(internal)?;
        if !scopes_within(&requested, &allowed) {
            return Err(GrantError::InvalidScope(
                "the requested scope exceeds what the client is registered for".to_owned(),
            ));
        }
        Ok(requested)
    }

    /// The scopes of every registered client, deduplicated (for discovery documents).
    pub async fn registered_scopes(&self) -> Result<BTreeSet<String>, ServiceError> {
        Ok(self
            .store
            .list_clients()
            .await?
            .into_iter()
            .flat_map(|c| {
                c.scopes
                    .split_ascii_whitespace()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_uris_are_https_or_loopback_http() {
        for ok in [
            "https://app.example/cb",
            "https://app.example:8443/cb?x=1",
            "http://localhost:8080/cb",
            "http://127.0.0.1/cb",
            "http://[::1]:9000/cb",
        ] {
            assert!(check_redirect_uri(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://app.example/cb",
            "https://app.example/cb#frag",
            "https://user:pw@app.example/cb",
            "app.example/cb",
            "javascript://x",
            "https:///cb",
            "http://localhost.evil.example/cb",
        ] {
            assert!(check_redirect_uri(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn client_types_round_trip() {
        for t in [
            ClientType::Public,
            ClientType::ConfidentialSecret,
            ClientType::ConfidentialJwt,
        ] {
            assert_eq!(ClientType::parse(t.as_str()), Some(t));
        }
        assert_eq!(ClientType::parse("confidential"), None);
    }
}
