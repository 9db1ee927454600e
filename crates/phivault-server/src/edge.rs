//! Middleware every request passes: request id, security headers and the request log line
//! (outermost), authentication, and the panic guard.

use std::any::Any;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::Instrument;

use crate::auth::Principal;
use crate::{ApiError, AppState};

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
        .get::<Principal>()
        .map(|p| p.id.clone())
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
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Refuses requests without a valid bearer token (401); puts the [`Principal`] in the
/// request's extensions for handlers, and in the response's for the log line.
pub(crate) async fn authenticate(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let Some(principal) = bearer(req.headers()).and_then(|t| state.auth.verify(t)) else {
        let presented = req.headers().contains_key(header::AUTHORIZATION);
        tracing::info!(token_presented = presented, "authentication failed");
        return ApiError::Unauthorized.into_response();
    };
    req.extensions_mut().insert(principal.clone());
    let mut response = next.run(req).await;
    response.extensions_mut().insert(principal);
    response
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
