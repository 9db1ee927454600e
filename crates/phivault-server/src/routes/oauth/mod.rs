//! OAuth2 and SMART App Launch for apps: the token endpoint (authorization code with PKCE,
//! refresh-token rotation, client credentials with a secret or a `private_key_jwt`
//! assertion), revocation (RFC 7009) and introspection (RFC 7662), the authorization pages
//! ([`authorize`]), discovery ([`discovery`]), and a person's view of the apps they authorized
//! and the EHR launch ([`apps`]).
//!
//! What these routes receive and answer is secret (codes, secrets, assertions, tokens): none
//! of it is logged, and errors never echo it. Client authentication failures answer one 401
//! `invalid_client` whatever failed. Every request's audit entry names the client (when it
//! authenticated) and the grant type and result (`POST /oauth/token refresh_token reuse`).

pub(crate) mod apps;
pub(crate) mod authorize;
pub(crate) mod discovery;

use std::net::{IpAddr, SocketAddr};

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Router};
use base64::Engine as _;
use phivault_auth::{ClientCredentials, GrantError, OAuthClient, ServiceError, TokenGrant};
use phivault_policy::ScopeSet;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use crate::audit_sink::RequestSink;
use crate::auth_routes::{MAX_SMALL_BODY, json_response};
use crate::edge::AuditSlot;
use crate::fhir_routes::{parse_pairs, read_body, require_form};
use crate::{ApiError, AppState};

/// The `client_assertion_type` of RFC 7523 client authentication.
pub(crate) const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// The OAuth2 routes (without fallbacks and layers).
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/oauth/token", post(token))
        .route("/oauth/revoke", post(revoke))
        .route("/oauth/introspect", post(introspect))
        .merge(authorize::routes())
        .merge(discovery::routes())
        .merge(apps::routes())
}

/// The server's root URL: the FHIR base without its `/fhir` suffix.
pub(crate) fn server_root(base_url: &str) -> &str {
    let base = base_url.trim_end_matches('/');
    base.strip_suffix("/fhir").unwrap_or(base)
}

/// The token endpoint's URL: the `aud` a client assertion must name.
pub(crate) fn token_endpoint(base_url: &str) -> String {
    format!("{}/oauth/token", server_root(base_url))
}

/// An RFC 6749 §5.2 error response.
#[derive(Debug)]
pub(crate) struct OAuthError {
    status: StatusCode,
    error: &'static str,
    description: String,
    retry_after: Option<u64>,
}

impl OAuthError {
    fn new(status: StatusCode, error: &'static str, description: impl Into<String>) -> Self {
        OAuthError {
            status,
            error,
            description: description.into(),
            retry_after: None,
        }
    }

    pub(crate) fn invalid_request(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", description)
    }

    fn invalid_client() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "client authentication failed",
        )
    }

    /// The RFC error code (for the audit detail and tests).
    pub(crate) fn code(&self) -> &'static str {
        self.error
    }

    fn from_service(e: ServiceError) -> Self {
        match e {
            ServiceError::CredentialFailure | ServiceError::NotFound(_) => Self::invalid_client(),
            ServiceError::Invalid(_) => Self::new(
                StatusCode::BAD_REQUEST,
                "invalid_scope",
                "the requested scope is not allowed for this client",
            ),
            ServiceError::Throttled { retry_after } => OAuthError {
                retry_after: Some(u64::try_from(retry_after).unwrap_or(0).max(1)),
                ..Self::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "temporarily_unavailable",
                    "too many attempts; retry later",
                )
            },
            ServiceError::Store(e) if e.http_status() == 503 => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "the service is unavailable; try again later",
            ),
            other => {
                let ApiError::Internal { reference } = ApiError::internal(&other) else {
                    return Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "");
                };
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "server_error",
                    format!("internal error, reference {reference}"),
                )
            }
        }
    }
}

impl From<GrantError> for OAuthError {
    fn from(e: GrantError) -> Self {
        let bad = StatusCode::BAD_REQUEST;
        match e {
            GrantError::InvalidRequest(d) => Self::invalid_request(d),
            GrantError::InvalidClient => Self::invalid_client(),
            GrantError::InvalidGrant(d) => Self::new(bad, "invalid_grant", d),
            e @ GrantError::RefreshReuse => Self::new(bad, "invalid_grant", e.to_string()),
            GrantError::UnauthorizedClient(d) => Self::new(bad, "unauthorized_client", d),
            GrantError::InvalidScope(d) => Self::new(bad, "invalid_scope", d),
            GrantError::Service(e) => Self::from_service(e),
        }
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let mut response = json_response(
            self.status,
            &json!({ "error": self.error, "error_description": self.description }),
        );
        let headers = response.headers_mut();
        headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"phivault\""),
            );
        }
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

type Form = Vec<(String, Zeroizing<String>)>;

/// The parameters of an OAuth2 form body; each at most once (RFC 6749 §3.2).
async fn oauth_form(headers: &HeaderMap, body: Body) -> Result<Form, OAuthError> {
    if require_form(headers).is_err() {
        return Err(OAuthError::invalid_request(
            "the body must be application/x-www-form-urlencoded",
        ));
    }
    let bytes = read_body(body, headers, MAX_SMALL_BODY)
        .await
        .map_err(|_| OAuthError::invalid_request("the body is too large or unreadable"))?;
    let bytes = Zeroizing::new(bytes.to_vec());
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| OAuthError::invalid_request("the body is not UTF-8"))?;
    let pairs = parse_pairs(text)
        .map_err(|_| OAuthError::invalid_request("the body is not a valid form"))?;
    let mut out: Form = Vec::with_capacity(pairs.len());
    for (name, value) in pairs {
        if out.iter().any(|(n, _)| *n == name) {
            return Err(OAuthError::invalid_request(format!(
                "parameter `{}` is repeated",
                name.chars().take(64).collect::<String>()
            )));
        }
        out.push((name, Zeroizing::new(value)));
    }
    Ok(out)
}

fn form_value<'a>(form: &'a [(String, Zeroizing<String>)], name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

fn required<'a>(form: &'a Form, name: &str) -> Result<&'a str, OAuthError> {
    form_value(form, name).ok_or_else(|| OAuthError::invalid_request(format!("{name} is required")))
}

/// Decodes one `application/x-www-form-urlencoded` component of HTTP Basic credentials
/// (RFC 6749 §2.3.1).
fn form_decode(s: &str) -> Option<Zeroizing<String>> {
    let pairs = parse_pairs(&format!("v={s}")).ok()?;
    pairs.into_iter().next().map(|(_, v)| Zeroizing::new(v))
}

/// HTTP Basic client credentials, if the request has an `Authorization` header.
fn basic_credentials(
    headers: &HeaderMap,
) -> Result<Option<(String, Zeroizing<String>)>, OAuthError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let text = value.to_str().map_err(|_| OAuthError::invalid_client())?;
    let (scheme, encoded) = text
        .trim()
        .split_once(' ')
        .ok_or_else(OAuthError::invalid_client)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(OAuthError::invalid_client());
    }
    let decoded = Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|_| OAuthError::invalid_client())?,
    );
    let decoded = std::str::from_utf8(&decoded).map_err(|_| OAuthError::invalid_client())?;
    let (id, secret) = decoded
        .split_once(':')
        .ok_or_else(OAuthError::invalid_client)?;
    let id = form_decode(id).ok_or_else(OAuthError::invalid_client)?;
    let secret = form_decode(secret).ok_or_else(OAuthError::invalid_client)?;
    Ok(Some((id.to_string(), secret)))
}

/// How the client authenticates: exactly one of HTTP Basic, `client_secret` in the form, a
/// JWT assertion, or (public clients) `client_id` alone (RFC 6749 §2.3, RFC 7523 §2.2).
fn client_credentials(headers: &HeaderMap, form: &Form) -> Result<ClientCredentials, OAuthError> {
    let basic = basic_credentials(headers)?;
    let client_id = form_value(form, "client_id");
    let secret = form_value(form, "client_secret");
    let assertion_type = form_value(form, "client_assertion_type");
    let assertion = form_value(form, "client_assertion");
    let methods = usize::from(basic.is_some())
        + usize::from(secret.is_some())
        + usize::from(assertion_type.is_some() || assertion.is_some());
    if methods > 1 {
        return Err(OAuthError::invalid_request(
            "use one client authentication method (HTTP Basic, client_secret or \
             client_assertion), not several",
        ));
    }
    if let Some((id, secret)) = basic {
        if client_id.is_some_and(|c| c != id) {
            return Err(OAuthError::invalid_request(
                "client_id differs from the HTTP Basic user",
            ));
        }
        return Ok(ClientCredentials::Secret {
            client_id: id,
            secret,
        });
    }
    if assertion_type.is_some() || assertion.is_some() {
        if assertion_type != Some(JWT_BEARER) {
            return Err(OAuthError::invalid_request(format!(
                "client_assertion_type must be {JWT_BEARER}"
            )));
        }
        let assertion =
            assertion.ok_or_else(|| OAuthError::invalid_request("client_assertion is required"))?;
        return Ok(ClientCredentials::Assertion {
            client_id: client_id.map(str::to_owned),
            assertion: Zeroizing::new(assertion.to_owned()),
        });
    }
    match (client_id, secret) {
        (Some(id), Some(secret)) => Ok(ClientCredentials::Secret {
            client_id: id.to_owned(),
            secret: Zeroizing::new(secret.to_owned()),
        }),
        (Some(id), None) => Ok(ClientCredentials::Public {
            client_id: id.to_owned(),
        }),
        (None, _) => Err(OAuthError::invalid_client()),
    }
}

/// Client authentication attempts count against the same per-address limit as logins (and
/// are forgiven once they succeed): the client's address, or the refusal to send.
async fn limit_address(
    state: &AppState,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: &HeaderMap,
) -> Result<IpAddr, Box<Response>> {
    let address = crate::auth_routes::client(state, connect, headers)
        .map_err(|e| Box::new(e.into_response()))?;
    state
        .accounts
        .check_address(address)
        .await
        .map_err(|e| Box::new(OAuthError::from_service(e).into_response()))?;
    Ok(address)
}

/// Authenticates the client of a request and names it as the actor of its audit entry.
async fn authenticated_client(
    state: &AppState,
    slot: &AuditSlot,
    headers: &HeaderMap,
    form: &Form,
) -> Result<OAuthClient, OAuthError> {
    let credentials = client_credentials(headers, form)?;
    let client = state
        .accounts
        .authenticate_client(&credentials, &token_endpoint(&state.base_url))
        .await?;
    slot.note_client(&client.client_id);
    Ok(client)
}

/// `POST /oauth/token`.
async fn token(
    State(state): State<AppState>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    slot: AuditSlot,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let address = match limit_address(&state, connect, &headers).await {
        Ok(address) => address,
        Err(refusal) => return *refusal,
    };
    match token_inner(&state, &slot, &headers, body).await {
        Ok(response) => {
            // Only failures count against an address.
            state.accounts.forgive_address(address).await;
            response
        }
        Err(e) => {
            tracing::info!(error = e.code(), "token request refused");
            slot.note_action_refused(e.code());
            e.into_response()
        }
    }
}

async fn token_inner(
    state: &AppState,
    slot: &AuditSlot,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, OAuthError> {
    let form = oauth_form(headers, body).await?;
    let grant_type = required(&form, "grant_type")?;
    // The entry names the grant type from here on, so a refusal before the client
    // authenticated (`invalid_client`) names it too. Only the known names: the value is the
    // client's.
    if matches!(
        grant_type,
        "authorization_code" | "refresh_token" | "client_credentials"
    ) {
        slot.note_action_detail(grant_type);
    }
    match grant_type {
        "authorization_code" => {
            let client = authenticated_client(state, slot, headers, &form).await?;
            let code = required(&form, "code")?;
            let redirect_uri = required(&form, "redirect_uri")?;
            let verifier = form_value(&form, "code_verifier").ok_or_else(|| {
                OAuthError::invalid_request("code_verifier is required (PKCE S256)")
            })?;
            // Named before the exchange: a replayed code's revocation commits an entry
            // of its own during it.
            slot.note_action_detail("authorization_code");
            let sink = RequestSink::account_change(state, slot.clone());
            let grant = state
                .accounts
                .exchange_code(&client, code, redirect_uri, verifier, &sink)
                .await?;
            grant_response(state, grant).await
        }
        "refresh_token" => {
            let client = authenticated_client(state, slot, headers, &form).await?;
            let refresh = required(&form, "refresh_token")?;
            slot.note_action_detail("refresh_token");
            let sink = RequestSink::account_change(state, slot.clone());
            match state
                .accounts
                .refresh(&client, refresh, form_value(&form, "scope"), &sink)
                .await
            {
                Ok(grant) => grant_response(state, grant).await,
                Err(e @ GrantError::RefreshReuse) => {
                    // The family's revocation committed with an entry of its own; the
                    // refusal gets the request's entry too.
                    slot.note_action_detail("refresh_token reuse: family revoked");
                    tracing::warn!(client = %client.client_id, "refresh token reuse: probable theft");
                    Err(e.into())
                }
                Err(e) => Err(e.into()),
            }
        }
        "client_credentials" => {
            let client = authenticated_client(state, slot, headers, &form).await?;
            let scope = form_value(&form, "scope");
            if let Some(scope) = scope
                && ScopeSet::parse(scope).is_err()
            {
                return Err(OAuthError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_scope",
                    "the scope is malformed",
                ));
            }
            let (token, lifetime, granted) = state
                .accounts
                .client_credentials_for(&client, scope)
                .await?;
            slot.note_action_detail("client_credentials");
            tracing::info!(client = %client.client_id, "access token issued");
            Ok(no_cache(json_response(
                StatusCode::OK,
                &json!({
                    "access_token": token.expose(),
                    "token_type": "Bearer",
                    "expires_in": lifetime,
                    "scope": granted,
                }),
            )))
        }
        _ => Err(OAuthError::new(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "grant_type must be authorization_code, refresh_token or client_credentials",
        )),
    }
}

fn no_cache(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

/// The token response of a grant for a person (SMART App Launch §token response).
async fn grant_response(state: &AppState, grant: TokenGrant) -> Result<Response, OAuthError> {
    let base = state.base_url.trim_end_matches('/');
    let mut body = json!({
        "access_token": grant.access.expose(),
        "token_type": "Bearer",
        "expires_in": grant.expires_in,
        "scope": grant.scope,
    });
    if let Some(refresh) = &grant.refresh {
        body["refresh_token"] = json!(refresh.expose());
    }
    if let Some(patient) = &grant.patient {
        body["patient"] = json!(patient.as_str());
        body["need_patient_banner"] = json!(true);
    }
    if let Some(encounter) = &grant.encounter {
        body["encounter"] = json!(encounter);
    }
    let fhir_user = state
        .accounts
        .fhir_user(&grant.user_id)
        .await
        .map_err(OAuthError::from_service)?
        .map(|r| format!("{base}/{r}"));
    if phivault_auth::has_scope(&grant.scope, "openid") {
        let id_token = state
            .accounts
            .id_token(&phivault_auth::IdTokenClaims {
                issuer: base.to_owned(),
                subject: grant.user_id.clone(),
                audience: grant.client_id.clone(),
                fhir_user: fhir_user
                    .clone()
                    .filter(|_| phivault_auth::has_scope(&grant.scope, "fhirUser")),
                nonce: grant.nonce.clone(),
            })
            .await
            .map_err(OAuthError::from_service)?;
        body["id_token"] = json!(id_token);
    }
    tracing::info!(client = %grant.client_id, "tokens issued to an app acting for a person");
    Ok(no_cache(json_response(StatusCode::OK, &body)))
}

/// `POST /oauth/revoke` (RFC 7009): the authenticated client revokes one of its tokens (a
/// refresh token with every token of its grant). Always 200 once the client is
/// authenticated, whether the token was valid or not.
async fn revoke(
    State(state): State<AppState>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    slot: AuditSlot,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let address = match limit_address(&state, connect, &headers).await {
        Ok(address) => address,
        Err(refusal) => return *refusal,
    };
    let result = async {
        let form = oauth_form(&headers, body).await?;
        let token = required(&form, "token")?;
        let client = authenticated_client(&state, &slot, &headers, &form).await?;
        let sink = RequestSink::account_change(&state, slot.clone());
        if state
            .accounts
            .revoke_client_token(&client, token, &sink)
            .await
            .map_err(OAuthError::from_service)?
        {
            sink.committed();
            tracing::info!(client = %client.client_id, "token revoked by its client");
        }
        Ok::<_, OAuthError>(())
    }
    .await;
    match result {
        Ok(()) => {
            state.accounts.forgive_address(address).await;
            StatusCode::OK.into_response()
        }
        Err(e) => e.into_response(),
    }
}

/// `POST /oauth/introspect` (RFC 7662), for resource servers: a confidential client learns
/// whether a token is active and what it stands for. Public clients cannot authenticate,
/// so they cannot introspect.
async fn introspect(
    State(state): State<AppState>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    slot: AuditSlot,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let address = match limit_address(&state, connect, &headers).await {
        Ok(address) => address,
        Err(refusal) => return *refusal,
    };
    let result = async {
        let form = oauth_form(&headers, body).await?;
        let token = required(&form, "token")?;
        let client = authenticated_client(&state, &slot, &headers, &form).await?;
        if client.client_type == phivault_auth::ClientType::Public {
            return Err(OAuthError::invalid_client());
        }
        let row = state
            .accounts
            .introspect(token)
            .await
            .map_err(OAuthError::from_service)?;
        Ok::<_, OAuthError>(introspection(row.as_ref()))
    }
    .await;
    match result {
        Ok(body) => {
            state.accounts.forgive_address(address).await;
            no_cache(json_response(StatusCode::OK, &body))
        }
        Err(e) => e.into_response(),
    }
}

fn introspection(row: Option<&phivault_store::accounts::TokenRow>) -> Value {
    let Some(row) = row else {
        return json!({ "active": false });
    };
    let mut body = json!({
        "active": true,
        "scope": row.scopes,
        "client_id": row.client_id,
        "sub": row.principal_id,
        "exp": row.expires_at,
        "iat": row.issued_at,
        "token_type": if row.kind == "refresh" { "refresh_token" } else { "Bearer" },
    });
    if let Some(patient) = &row.launch_patient {
        body["patient"] = json!(patient);
    }
    if let Some(encounter) = &row.encounter {
        body["encounter"] = json!(encounter);
    }
    body
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn form(pairs: &[(&str, &str)]) -> Form {
        pairs
            .iter()
            .map(|(n, v)| ((*n).to_owned(), Zeroizing::new((*v).to_owned())))
            .collect()
    }

    #[test]
    fn roots() {
        assert_eq!(server_root("https://h:1/fhir"), "https://h:1");
        assert_eq!(server_root("https://h:1/fhir/"), "https://h:1");
        assert_eq!(server_root("https://h/x/fhir"), "https://h/x");
        assert_eq!(server_root("https://h/api"), "https://h/api");
        assert_eq!(
            token_endpoint("https://h:1/fhir"),
            "https://h:1/oauth/token"
        );
    }

    #[test]
    fn one_client_authentication_method() {
        let mut h = HeaderMap::new();
        let encoded = base64::engine::general_purpose::STANDARD.encode("my%20app:s%3Acret");
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {encoded}")).unwrap(),
        );
        let Ok(ClientCredentials::Secret { client_id, secret }) =
            client_credentials(&h, &Vec::new())
        else {
            panic!("basic credentials")
        };
        assert_eq!(client_id, "my app");
        assert_eq!(secret.as_str(), "s:cret");
        // Basic and a posted secret at once: refused.
        let both = form(&[("client_secret", "x")]);
        assert_eq!(
            client_credentials(&h, &both).unwrap_err().code(),
            "invalid_request"
        );
        // Posted secret.
        let posted = form(&[("client_id", "c"), ("client_secret", "s")]);
        assert!(matches!(
            client_credentials(&HeaderMap::new(), &posted),
            Ok(ClientCredentials::Secret { .. })
        ));
        // A public client names itself.
        let public = form(&[("client_id", "c")]);
        assert!(matches!(
            client_credentials(&HeaderMap::new(), &public),
            Ok(ClientCredentials::Public { .. })
        ));
        // An assertion needs the jwt-bearer type.
        let wrong_type = form(&[
            ("client_assertion_type", "x"),
            ("client_assertion", "a.b.c"),
        ]);
        assert_eq!(
            client_credentials(&HeaderMap::new(), &wrong_type)
                .unwrap_err()
                .code(),
            "invalid_request"
        );
        let assertion = form(&[
            ("client_assertion_type", JWT_BEARER),
            ("client_assertion", "a.b.c"),
        ]);
        assert!(matches!(
            client_credentials(&HeaderMap::new(), &assertion),
            Ok(ClientCredentials::Assertion { .. })
        ));
        // An assertion and a secret at once: refused.
        let mixed = form(&[
            ("client_assertion_type", JWT_BEARER),
            ("client_assertion", "a.b.c"),
            ("client_secret", "s"),
        ]);
        assert_eq!(
            client_credentials(&HeaderMap::new(), &mixed)
                .unwrap_err()
                .code(),
            "invalid_request"
        );
        assert_eq!(
            client_credentials(&HeaderMap::new(), &Vec::new())
                .unwrap_err()
                .code(),
            "invalid_client"
        );
    }
}
