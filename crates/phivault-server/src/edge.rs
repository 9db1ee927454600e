//! Middleware every request passes: request id, security headers and the request log line
//! (outermost), authentication, and the panic guard.
//!
//! Authentication: an `Authorization: Bearer` token (a session or an OAuth2 access token) is
//! checked by the accounts service; the [`Authenticated`] it speaks for goes into the request's
//! extensions. Every failure is the same 401 "authentication failed". A few routes need no
//! token ([`is_public`]); a session that must enrol TOTP first reaches only `/auth/totp/*` and
//! `/auth/logout`.

use std::any::Any;
use std::time::Instant;

use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use phivault_auth::{Authenticated, ServiceError};
use tracing::Instrument;
use zeroize::Zeroizing;

use crate::{ApiError, AppState};

/// The principal id of a request, put in the response's extensions for the log line (never
/// the token).
#[derive(Debug, Clone)]
struct PrincipalId(String);

/// `X-Request-Id`.
pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Headers sent on every response.
const SECURITY_HEADERS: &[(HeaderName, &str)] = &[
    (header::CACHE_CONTROL, "no-store"),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::X_FRAME_OPTIONS, "DENY"),
    (
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; frame-ancestors 'none'",
    ),
    (header::REFERRER_POLICY, "no-referrer"),
    (header::STRICT_TRANSPORT_SECURITY, "max-age=31536000"),
];

/// Gives the request an id, runs it inside a span carrying that id, adds the security headers
/// and `X-Request-Id` to the response, and logs one line: method, route template, status,
/// latency, request id and principal. Never the raw path or query (they can hold PHI) and
/// never a body.
pub(crate) async fn request_edge(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let request_id = uuid::Uuid::new_v4().to_string();
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "(no route)".to_owned());
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        method = %method,
        route = %route,
    );
    let mut response = next.run(req).instrument(span.clone()).await;

    let headers = response.headers_mut();
    for (name, value) in SECURITY_HEADERS {
        headers.insert(name.clone(), HeaderValue::from_static(value));
    }
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        headers.insert(X_REQUEST_ID.clone(), value);
    }

    let principal = response
        .extensions()
        .get::<PrincipalId>()
        .map(|p| p.0.clone())
        .unwrap_or_else(|| "-".to_owned());
    let status = response.status().as_u16();
    let latency_ms = (started.elapsed().as_secs_f64() * 10_000.0).round() / 10.0;
    span.in_scope(|| {
        tracing::info!(
            status,
            latency_ms,
            principal = %principal,
            "request"
        );
    });
    response
}

/// The token of an `Authorization: Bearer <token>` header.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The routes that need no token: login and the OAuth2 endpoints (the client authenticates
/// itself there), SMART discovery and the CapabilityStatement (FHIR servers publish it; it
/// states the security).
fn is_public(method: &Method, path: &str) -> bool {
    match *method {
        Method::POST => matches!(path, "/auth/login" | "/oauth/token" | "/oauth/revoke"),
        Method::GET | Method::HEAD => matches!(
            path,
            "/fhir/metadata"
                | "/.well-known/smart-configuration"
                | "/fhir/.well-known/smart-configuration"
        ),
        _ => false,
    }
}

/// Whether a session that must enrol TOTP first may call `path`.
fn enrolment_allows(path: &str) -> bool {
    path.starts_with("/auth/totp/") || path == "/auth/logout"
}

/// Refuses requests without a valid bearer token (401), except on the public routes; puts the
/// [`Authenticated`] principal in the request's extensions for handlers, and its id in the
/// response's for the log line.
pub(crate) async fn authenticate(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    if is_public(req.method(), req.uri().path()) {
        return next.run(req).await;
    }
    let Some(token) = bearer(req.headers()).map(|t| Zeroizing::new(t.to_owned())) else {
        let presented = req.headers().contains_key(header::AUTHORIZATION);
        tracing::info!(token_presented = presented, "authentication failed");
        return if presented {
            ApiError::InvalidToken
        } else {
            ApiError::Unauthorized
        }
        .into_response();
    };
    let who = match state.accounts.authenticate(&token).await {
        Ok(who) => who,
        Err(ServiceError::Store(e)) => return ApiError::Store(e).into_response(),
        Err(e @ ServiceError::Throttled { .. }) => return ApiError::from(e).into_response(),
        Err(e @ ServiceError::Internal(_)) => return ApiError::internal(&e).into_response(),
        Err(e) => {
            // The kind only (expired, revoked, ...): never the token.
            tracing::info!(reason = %e, "authentication failed");
            return ApiError::InvalidToken.into_response();
        }
    };
    drop(token);
    let principal = PrincipalId(who.principal.id().to_owned());
    if who.enrolment_only && !enrolment_allows(req.uri().path()) {
        let mut response =
            ApiError::Forbidden("TOTP enrolment required".to_owned()).into_response();
        response.extensions_mut().insert(principal);
        return response;
    }
    req.extensions_mut().insert(who);
    let mut response = next.run(req).await;
    response.extensions_mut().insert(principal);
    response
}

/// The authenticated principal of a request (handlers of authenticated routes only).
#[derive(Debug, Clone)]
pub(crate) struct Who(pub(crate) Authenticated);

impl<S: Send + Sync> FromRequestParts<S> for Who {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Authenticated>()
            .cloned()
            .map(Who)
            // Only a route wrongly listed as public gets here: refuse.
            .ok_or(ApiError::Unauthorized)
    }
}

/// The answer to a panicking handler: a 500 OperationOutcome with an opaque reference; the
/// panic message goes to the log under that reference.
pub(crate) fn panic_response(payload: Box<dyn Any + Send + 'static>) -> Response {
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(non-text panic payload)".to_owned());
    let detail = format!("handler panicked: {message}");
    ApiError::internal(&detail).into_response()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer  abc "),
        );
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(bearer(&h), None);
    }

    #[test]
    fn public_routes() {
        assert!(is_public(&Method::POST, "/auth/login"));
        assert!(is_public(&Method::POST, "/oauth/token"));
        assert!(is_public(&Method::POST, "/oauth/revoke"));
        assert!(is_public(&Method::GET, "/fhir/metadata"));
        assert!(is_public(&Method::GET, "/.well-known/smart-configuration"));
        assert!(!is_public(&Method::GET, "/auth/login"));
        assert!(!is_public(&Method::DELETE, "/fhir/metadata"));
        assert!(!is_public(&Method::GET, "/fhir/Patient"));
        assert!(!is_public(&Method::POST, "/auth/logout"));
        assert!(!is_public(&Method::GET, "/fhir/metadata/x"));
        assert!(enrolment_allows("/auth/totp/enroll"));
        assert!(enrolment_allows("/auth/logout"));
        assert!(!enrolment_allows("/auth/totp"));
        assert!(!enrolment_allows("/fhir/Patient"));
    }

    #[tokio::test]
    async fn a_panic_answers_an_opaque_500() {
        let r = panic_response(Box::new("index out of bounds: SECRET".to_owned()));
        assert_eq!(r.status(), axum::http::StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(r.headers()[header::CONTENT_TYPE], crate::error::FHIR_JSON);
        let body = axum::body::to_bytes(r.into_body(), usize::MAX)
            .await
            .unwrap();
        let text = String::from_utf8(body.to_vec()).unwrap();
        assert!(text.contains("OperationOutcome"));
        assert!(text.contains("internal error, reference "));
        assert!(!text.contains("SECRET"));
    }
}
