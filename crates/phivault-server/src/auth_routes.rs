//! Identity routes: login, logout and TOTP enrolment for people (`/auth/*`), the OAuth2
//! client credentials and revocation endpoints for apps (`/oauth/*`), and SMART on FHIR
//! discovery (`/.well-known/smart-configuration`).
//!
//! What these routes receive is secret (passwords, codes, client secrets, tokens) and what
//! they answer too (tokens, TOTP secrets, recovery codes): none of it is logged, and errors
//! never echo it. Credential failures answer one 401 "authentication failed" (RFC 6749
//! `invalid_client` at the token endpoint) whatever failed, so nothing tells whether an
//! account or a client exists.

use std::net::{IpAddr, SocketAddr};

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use base64::Engine as _;
use phivault_auth::{LoginRequest, Password, ServiceError};
use phivault_policy::ScopeSet;
use serde_json::{Map, Value, json};
use zeroize::Zeroizing;

use crate::audit_sink::RequestSink;
use crate::edge::{AuditSlot, Who, bearer};
use crate::fhir_routes::{parse_pairs, read_body, require_form, require_json};
use crate::middleware::client_address::client_ip;
use crate::{ApiError, AppState};

/// Largest body of the identity and admin routes (they carry a few short fields).
const MAX_SMALL_BODY: usize = 16 * 1024;

/// The identity routes (without fallbacks and layers).
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/auth/login", post(login))
        .route("/auth/logout", post(logout))
        .route("/auth/totp/enroll", post(totp_enroll))
        .route("/auth/totp/confirm", post(totp_confirm))
        .route("/oauth/token", post(token))
        .route("/oauth/revoke", post(revoke))
        .route("/.well-known/smart-configuration", get(smart_configuration))
        .route(
            "/fhir/.well-known/smart-configuration",
            get(smart_configuration),
        )
}

// ---------------------------------------------------------------------------------------
// JSON bodies (shared with the admin API)

/// A JSON object body of at most [`MAX_SMALL_BODY`] bytes. Errors never quote the body.
pub(crate) async fn json_object(
    headers: &HeaderMap,
    body: Body,
) -> Result<Map<String, Value>, ApiError> {
    require_json(headers)?;
    let bytes = Zeroizing::new(read_body(body, headers, MAX_SMALL_BODY).await?.to_vec());
    match phivault_fhir::json::from_slice_unique(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::BadRequest(
            "the body must be a JSON object".to_owned(),
        )),
        Err(e) if phivault_fhir::json::is_duplicate_key(&e) => Err(ApiError::BadRequest(format!(
            "the body has a duplicate key (line {} column {})",
            e.line(),
            e.column()
        ))),
        Err(e) => Err(ApiError::BadRequest(format!(
            "the body is not valid JSON (line {} column {})",
            e.line(),
            e.column()
        ))),
    }
}

/// The string field `name`, if present; 400 when it is not a string.
pub(crate) fn optional_str(
    body: &mut Map<String, Value>,
    name: &str,
) -> Result<Option<String>, ApiError> {
    match body.remove(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ApiError::BadRequest(format!("`{name}` must be a string"))),
    }
}

/// The string field `name`; 400 when absent or not a string.
pub(crate) fn required_str(body: &mut Map<String, Value>, name: &str) -> Result<String, ApiError> {
    optional_str(body, name)?
        .ok_or_else(|| ApiError::BadRequest(format!("`{name}` is required (a string)")))
}

/// Refuses fields other than those read (a misspelt `totp` must not pass unnoticed).
pub(crate) fn no_other_fields(body: &Map<String, Value>) -> Result<(), ApiError> {
    match body.keys().next() {
        None => Ok(()),
        Some(name) => Err(ApiError::BadRequest(format!(
            "unknown field `{}`",
            name.chars().take(64).collect::<String>()
        ))),
    }
}

/// A JSON (not FHIR) response.
pub(crate) fn json_response(status: StatusCode, body: &Value) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        bytes,
    )
        .into_response()
}

// ---------------------------------------------------------------------------------------
// People

/// The client's address: the peer, or what a trusted proxy says the client is (see
/// [`crate::middleware::client_address`]). The peer is present whenever the server runs with
/// connection info.
fn client(
    state: &AppState,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: &HeaderMap,
) -> Result<IpAddr, ApiError> {
    let peer = connect
        .map(|Extension(ConnectInfo(addr))| addr)
        .ok_or_else(|| ApiError::internal(&"the router runs without connection info"))?;
    Ok(client_ip(peer.ip(), headers, &state.trusted_proxies))
}

/// `POST /auth/login` `{username, password, totp?, recovery_code?}`: a session token.
async fn login(
    State(state): State<AppState>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let address = client(&state, connect, &headers)?;
    let mut fields = json_object(&headers, body).await?;
    let username = required_str(&mut fields, "username")?;
    let password = Password::new(required_str(&mut fields, "password")?);
    let totp = optional_str(&mut fields, "totp")?.map(Zeroizing::new);
    let recovery_code = optional_str(&mut fields, "recovery_code")?.map(Zeroizing::new);
    no_other_fields(&fields)?;
    let outcome = state
        .accounts
        .login(LoginRequest {
            username,
            password,
            totp: totp.as_ref().map(|c| c.to_string()),
            recovery_code: recovery_code.as_ref().map(|c| c.to_string()),
            address,
        })
        .await
        .map_err(|e| {
            tracing::info!(reason = %e, "login refused");
            ApiError::from(e)
        })?;
    tracing::info!(role = %outcome.role, enrolment_only = outcome.enrolment_only, "login");
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "access_token": outcome.token.expose(),
            "token_type": "Bearer",
            "expires_at": outcome.expires_at,
            "enrolment_required": outcome.enrolment_only,
        }),
    ))
}

/// `POST /auth/logout`: revokes the token the request was made with.
/// The revocation commits with the request's audit entry.
async fn logout(
    State(state): State<AppState>,
    slot: AuditSlot,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    // The middleware accepted this very token.
    let token = bearer(&headers)
        .map(|t| Zeroizing::new(t.to_owned()))
        .ok_or(ApiError::Unauthorized)?;
    let sink = RequestSink::account_change(&state, slot);
    state.accounts.revoke(&token, &sink).await?;
    sink.committed();
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /auth/totp/enroll`: a new TOTP secret, shown once. Stored with the request's audit
/// entry.
async fn totp_enroll(
    State(state): State<AppState>,
    Who(who): Who,
    slot: AuditSlot,
) -> Result<Response, ApiError> {
    let sink = RequestSink::account_change(&state, slot);
    let enrolment = state.accounts.begin_totp_enrolment(&who, &sink).await?;
    sink.committed();
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "secret": enrolment.secret_base32,
            "otpauth_url": enrolment.otpauth_url,
        }),
    ))
}

/// `POST /auth/totp/confirm` `{code}`: enables TOTP (with the request's audit entry); the
/// recovery codes, shown once.
async fn totp_confirm(
    State(state): State<AppState>,
    Who(who): Who,
    slot: AuditSlot,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let mut fields = json_object(&headers, body).await?;
    let code = Zeroizing::new(required_str(&mut fields, "code")?);
    no_other_fields(&fields)?;
    let sink = RequestSink::account_change(&state, slot);
    let codes = match state.accounts.confirm_totp(&who, &code, &sink).await {
        Ok(codes) => {
            sink.committed();
            codes
        }
        // The session is fine; the code is not.
        Err(ServiceError::CredentialFailure) => {
            return Err(ApiError::BadRequest(
                "the TOTP code was not accepted; enter the current code".to_owned(),
            ));
        }
        Err(e) => return Err(e.into()),
    };
    Ok(json_response(
        StatusCode::OK,
        &json!({ "recovery_codes": codes }),
    ))
}

// ---------------------------------------------------------------------------------------
// OAuth2 (RFC 6749 client credentials, RFC 7009 revocation)

/// An RFC 6749 §5.2 error response.
#[derive(Debug)]
struct OAuthError {
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

    fn invalid_request(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", description)
    }

    fn invalid_client() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "client authentication failed",
        )
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

/// The parameters of an OAuth2 form body; each at most once (RFC 6749 §3.2).
async fn oauth_form(
    headers: &HeaderMap,
    body: Body,
) -> Result<Vec<(String, Zeroizing<String>)>, OAuthError> {
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
    let mut out: Vec<(String, Zeroizing<String>)> = Vec::with_capacity(pairs.len());
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
}

/// Decodes one `application/x-www-form-urlencoded` component of HTTP Basic credentials
/// (RFC 6749 §2.3.1).
fn form_decode(s: &str) -> Option<Zeroizing<String>> {
    let pairs = parse_pairs(&format!("v={s}")).ok()?;
    pairs.into_iter().next().map(|(_, v)| Zeroizing::new(v))
}

/// The client's credentials: HTTP Basic or `client_id` + `client_secret` in the form, not
/// both (RFC 6749 §2.3.1).
fn client_credentials(
    headers: &HeaderMap,
    form: &[(String, Zeroizing<String>)],
) -> Result<(String, Zeroizing<String>), OAuthError> {
    let basic = match headers.get(header::AUTHORIZATION) {
        None => None,
        Some(value) => {
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
            let decoded =
                std::str::from_utf8(&decoded).map_err(|_| OAuthError::invalid_client())?;
            let (id, secret) = decoded
                .split_once(':')
                .ok_or_else(OAuthError::invalid_client)?;
            let id = form_decode(id).ok_or_else(OAuthError::invalid_client)?;
            let secret = form_decode(secret).ok_or_else(OAuthError::invalid_client)?;
            Some((id.to_string(), secret))
        }
    };
    let posted = (
        form_value(form, "client_id"),
        form_value(form, "client_secret"),
    );
    match (basic, posted) {
        (Some(_), (Some(_), _) | (_, Some(_))) => Err(OAuthError::invalid_request(
            "authenticate the client with HTTP Basic or with client_id and client_secret in \
             the body, not both",
        )),
        (Some(credentials), _) => Ok(credentials),
        (None, (Some(id), Some(secret))) => Ok((id.to_owned(), Zeroizing::new(secret.to_owned()))),
        (None, _) => Err(OAuthError::invalid_client()),
    }
}

/// `POST /oauth/token`: the client credentials grant.
async fn token(
    State(state): State<AppState>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let address = match limit_address(&state, connect, &headers) {
        Ok(address) => address,
        Err(refusal) => return *refusal,
    };
    match token_inner(&state, &headers, body).await {
        Ok(response) => {
            // Only failures count against an address.
            state.accounts.forgive_address(address);
            response
        }
        Err(e) => e.into_response(),
    }
}

async fn token_inner(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, OAuthError> {
    let form = oauth_form(headers, body).await?;
    match form_value(&form, "grant_type") {
        None => return Err(OAuthError::invalid_request("grant_type is required")),
        Some("client_credentials") => {}
        Some(_) => {
            return Err(OAuthError::new(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "only the client_credentials grant is supported",
            ));
        }
    }
    let (client_id, secret) = client_credentials(headers, &form)?;
    let scope = form_value(&form, "scope").filter(|s| !s.trim().is_empty());
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
        .client_credentials(&client_id, &secret, scope)
        .await
        .map_err(|e| {
            tracing::info!(reason = %e, "token request refused");
            OAuthError::from_service(e)
        })?;
    tracing::info!(client = %client_id, "access token issued");
    let mut response = json_response(
        StatusCode::OK,
        &json!({
            "access_token": token.expose(),
            "token_type": "Bearer",
            "expires_in": lifetime,
            "scope": granted,
        }),
    );
    response
        .headers_mut()
        .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    Ok(response)
}

/// `POST /oauth/revoke` (RFC 7009): the authenticated client revokes one of its tokens.
/// Always 200 once the client is authenticated, whether the token was valid or not. A
/// revocation commits with the request's audit entry.
async fn revoke(
    State(state): State<AppState>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    slot: AuditSlot,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let address = match limit_address(&state, connect, &headers) {
        Ok(address) => address,
        Err(refusal) => return *refusal,
    };
    match revoke_inner(&state, slot, &headers, body).await {
        Ok(()) => {
            state.accounts.forgive_address(address);
            StatusCode::OK.into_response()
        }
        Err(e) => e.into_response(),
    }
}

async fn revoke_inner(
    state: &AppState,
    slot: AuditSlot,
    headers: &HeaderMap,
    body: Body,
) -> Result<(), OAuthError> {
    let form = oauth_form(headers, body).await?;
    let token = form_value(&form, "token")
        .filter(|t| !t.is_empty())
        .map(|t| Zeroizing::new(t.to_owned()))
        .ok_or_else(|| OAuthError::invalid_request("token is required"))?;
    let (client_id, secret) = client_credentials(headers, &form)?;
    verify_client(state, &client_id, &secret).await?;
    // Only a token bound to this client is revoked; anything else is silently ignored.
    match state.accounts.authenticate(&token).await {
        Ok(who) if who.client_id.as_deref() == Some(client_id.as_str()) => {
            let sink = RequestSink::account_change(state, slot);
            state
                .accounts
                .revoke(&token, &sink)
                .await
                .map_err(OAuthError::from_service)?;
            sink.committed();
            tracing::info!(client = %client_id, "access token revoked");
        }
        Ok(_) | Err(ServiceError::CredentialFailure) => {}
        Err(e) => return Err(OAuthError::from_service(e)),
    }
    Ok(())
}

/// Client authentication attempts count against the same per-address limit as logins (and
/// are forgiven once they succeed): the client's address, or the refusal to send.
fn limit_address(
    state: &AppState,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: &HeaderMap,
) -> Result<IpAddr, Box<Response>> {
    let address = client(state, connect, headers).map_err(|e| Box::new(e.into_response()))?;
    state
        .accounts
        .check_address(address)
        .map_err(|e| Box::new(OAuthError::from_service(e).into_response()))?;
    Ok(address)
}

/// Checks a client's credentials (issuing nothing).
async fn verify_client(state: &AppState, client_id: &str, secret: &str) -> Result<(), OAuthError> {
    state
        .accounts
        .verify_client(client_id, secret)
        .await
        .map_err(OAuthError::from_service)
}

// ---------------------------------------------------------------------------------------
// SMART on FHIR discovery

/// The server's root URL: the FHIR base without its `/fhir` suffix.
pub(crate) fn server_root(base_url: &str) -> &str {
    let base = base_url.trim_end_matches('/');
    base.strip_suffix("/fhir").unwrap_or(base)
}

/// The SMART configuration: only what this server does (client credentials with a shared
/// secret, SMART v2 scopes, revocation); no authorization endpoint, no OpenID Connect.
pub(crate) fn smart_document(base_url: &str) -> Value {
    let root = server_root(base_url);
    json!({
        "token_endpoint": format!("{root}/oauth/token"),
        "revocation_endpoint": format!("{root}/oauth/revoke"),
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "scopes_supported": [
            "system/*.rs",
            "system/*.cruds",
            "system/Patient.rs",
            "system/Observation.rs",
            "patient/*.rs",
            "patient/Observation.rs",
            "patient/Patient.r",
        ],
        "capabilities": ["permission-v2", "client-confidential-symmetric"],
    })
}

/// `GET /.well-known/smart-configuration` (also under the FHIR base, as SMART asks).
async fn smart_configuration(State(state): State<AppState>) -> Response {
    json_response(StatusCode::OK, &smart_document(&state.base_url))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn roots() {
        assert_eq!(server_root("https://h:1/fhir"), "https://h:1");
        assert_eq!(server_root("https://h:1/fhir/"), "https://h:1");
        assert_eq!(server_root("https://h/x/fhir"), "https://h/x");
        assert_eq!(server_root("https://h/api"), "https://h/api");
    }

    #[test]
    fn smart_document_is_truthful() {
        let d = smart_document("https://h:1/fhir");
        assert_eq!(d["token_endpoint"], "https://h:1/oauth/token");
        assert_eq!(d["grant_types_supported"], json!(["client_credentials"]));
        assert!(d.get("authorization_endpoint").is_none());
        for s in d["scopes_supported"].as_array().unwrap() {
            assert!(ScopeSet::parse(s.as_str().unwrap()).is_ok(), "{s}");
        }
    }

    #[test]
    fn basic_credentials() {
        let mut h = HeaderMap::new();
        let encoded = base64::engine::general_purpose::STANDARD.encode("my%20app:s%3Acret");
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {encoded}")).unwrap(),
        );
        let (id, secret) = client_credentials(&h, &[]).unwrap();
        assert_eq!(id, "my app");
        assert_eq!(secret.as_str(), "s:cret");
        // Both ways at once: refused.
        let form = vec![("client_id".to_owned(), Zeroizing::new("x".to_owned()))];
        assert_eq!(
            client_credentials(&h, &form).unwrap_err().error,
            "invalid_request"
        );
        // Posted.
        let form = vec![
            ("client_id".to_owned(), Zeroizing::new("c".to_owned())),
            ("client_secret".to_owned(), Zeroizing::new("s".to_owned())),
        ];
        let (id, _) = client_credentials(&HeaderMap::new(), &form).unwrap();
        assert_eq!(id, "c");
        assert_eq!(
            client_credentials(&HeaderMap::new(), &[])
                .unwrap_err()
                .error,
            "invalid_client"
        );
    }
}
