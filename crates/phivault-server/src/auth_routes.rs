//! Identity routes for people: login, logout and TOTP enrolment (`/auth/*`). The OAuth2 and
//! SMART endpoints for apps are in `routes::oauth`.
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
use axum::routing::post;
use axum::{Extension, Router};
use phivault_auth::{LoginRequest, Password, ServiceError};
use serde_json::{Map, Value, json};
use zeroize::Zeroizing;

use crate::audit_sink::RequestSink;
use crate::edge::{AuditSlot, Who, bearer};
use crate::fhir_routes::{read_body, require_json};
use crate::middleware::client_address::client_ip;
use crate::{ApiError, AppState};

/// Largest body of the identity, OAuth2 and admin routes (they carry a few short fields).
pub(crate) const MAX_SMALL_BODY: usize = 16 * 1024;

/// The identity routes (without fallbacks and layers).
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/auth/login", post(login))
        .route("/auth/logout", post(logout))
        .route("/auth/totp/enroll", post(totp_enroll))
        .route("/auth/totp/confirm", post(totp_confirm))
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
pub(crate) fn client(
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
