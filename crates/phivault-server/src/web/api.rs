//! The portal and console read and write through the FHIR and JSON API itself, as the
//! signed-in person: each call goes through the same router, edge, authentication, policies,
//! consent and audit trail as a request from an app would, with the person's own session token
//! and the browser's address. A page therefore never reaches more than its person may, and
//! every access it makes is in the trail (and in the patient's access log) like any other.

use std::net::{IpAddr, SocketAddr};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use serde_json::Value;
use tower::ServiceExt as _;
use zeroize::Zeroizing;

use crate::{ApiError, AppState};

/// Largest answer read back from an internal call (a patient's whole record as a Bundle).
const MAX_ANSWER: usize = 64 * 1024 * 1024;

/// What an internal call answered.
pub(crate) struct Answer {
    /// Its status.
    pub(crate) status: StatusCode,
    /// Its headers.
    pub(crate) headers: HeaderMap,
    /// Its body.
    pub(crate) body: Vec<u8>,
}

impl Answer {
    /// The body as JSON (`Null` when it is not JSON).
    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// Whether the status is 2xx.
    pub(crate) fn ok(&self) -> bool {
        self.status.is_success()
    }
}

/// Calls the API as a signed-in person.
pub(crate) struct AsPerson<'a> {
    state: &'a AppState,
    token: Zeroizing<String>,
    address: IpAddr,
}

impl<'a> AsPerson<'a> {
    /// Calls made with `token` (the person's session) from `address` (the browser's).
    pub(crate) fn new(state: &'a AppState, token: Zeroizing<String>, address: IpAddr) -> Self {
        AsPerson {
            state,
            token,
            address,
        }
    }

    /// `GET path` (a path with its query, e.g. `/fhir/Patient/1/$access-log?_count=50`).
    pub(crate) async fn get(&self, path: &str) -> Result<Answer, ApiError> {
        self.call(Method::GET, path, None).await
    }

    /// `method path` with a JSON body of `content_type` (`application/fhir+json` or
    /// `application/json`).
    pub(crate) async fn send_json(
        &self,
        method: Method,
        path: &str,
        content_type: &'static str,
        body: &Value,
    ) -> Result<Answer, ApiError> {
        let bytes = serde_json::to_vec(body).map_err(|e| ApiError::internal(&e))?;
        self.call(method, path, Some((content_type, bytes))).await
    }

    /// `method path` with an optional body, through a fresh router over the same state.
    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<(&'static str, Vec<u8>)>,
    ) -> Result<Answer, ApiError> {
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(header::AUTHORIZATION, format!("Bearer {}", &*self.token))
            .header(header::ACCEPT, "application/fhir+json, application/json");
        let body = match body {
            Some((content_type, bytes)) => {
                builder = builder.header(header::CONTENT_TYPE, content_type);
                Body::from(bytes)
            }
            None => Body::empty(),
        };
        let mut request = builder.body(body).map_err(|e| ApiError::internal(&e))?;
        // The browser's address, as the edge would have resolved it (no proxy in between).
        request
            .extensions_mut()
            .insert(ConnectInfo(SocketAddr::new(self.address, 0)));
        let response = crate::router(self.state.clone())
            .oneshot(request)
            .await
            .map_err(|e| ApiError::internal(&e))?;
        let (parts, body) = response.into_parts();
        let body = axum::body::to_bytes(body, MAX_ANSWER)
            .await
            .map_err(|e| ApiError::internal(&e))?;
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body: body.to_vec(),
        })
    }
}
