//! The edge error type: every failure becomes a FHIR OperationOutcome and a status.
//!
//! Client mistakes answer 4xx with a precise message that names paths, parameters, types and
//! ids, never values from the body or the query (they can be PHI). Internal faults answer 500
//! with an opaque reference; their detail goes to the log under that reference. Integrity
//! failures of stored data answer 500 with a message that says so (naming only type and id).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use phivault_auth::ServiceError;
use phivault_fhir::{FhirError, Issue, IssueCode, OperationOutcome};
use phivault_store::StoreError;

/// Failures of the server outside a request (start-up, TLS files, listening).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// Bad configuration.
    #[error("configuration: {0}")]
    Config(String),
    /// I/O on a file or socket.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// Cause.
        source: std::io::Error,
    },
    /// Certificate generation failed.
    #[error("certificate generation: {0}")]
    Certificate(String),
}

impl ServerError {
    /// An I/O error with what was being done.
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        ServerError::Io {
            what: what.into(),
            source,
        }
    }
}

/// A request's failure, answered as an OperationOutcome with its status.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// No bearer token presented (401, `login`).
    #[error("authentication failed")]
    Unauthorized,
    /// A bearer token that is unknown, malformed, expired, revoked or bound to another client
    /// (401, `login`, `error="invalid_token"`). One text for all of them.
    #[error("authentication failed")]
    InvalidToken,
    /// Login refused: wrong username, password, TOTP or recovery code, or a right password
    /// without a needed code (401, `login`). One text for all of them, so nothing tells
    /// whether an account exists or a password was right.
    #[error("authentication failed")]
    LoginFailed,
    /// Too many attempts for the account or the address (429 with `Retry-After`).
    #[error("too many attempts; retry in {retry_after} s")]
    Throttled {
        /// Seconds to wait.
        retry_after: u64,
    },
    /// Authenticated, but not allowed (403, `forbidden`). The message says why (`access
    /// denied: <reason>`, `TOTP enrolment required`), never whether a resource exists.
    #[error("{0}")]
    Forbidden(String),
    /// A named thing of the admin API does not exist (404). Never used for FHIR resources.
    #[error("{0}")]
    Missing(String),
    /// The request conflicts with the current state (409), e.g. a username already taken.
    #[error("{0}")]
    Conflict(String),
    /// A FHIR-level client mistake (status per kind: 400, 404, 413, 422).
    #[error(transparent)]
    Fhir(#[from] FhirError),
    /// A failure of the store (status per kind; internal faults answer an opaque 500).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The request body is larger than the configured limit (413).
    #[error("the request body exceeds the limit of {limit} bytes")]
    BodyTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The request body did not arrive within the allowed time (408).
    #[error("the request body did not arrive within {seconds} s")]
    BodyTimeout {
        /// The time allowed, in seconds.
        seconds: u64,
    },
    /// The body's content type is not accepted here (415).
    #[error("unsupported content type: expected {expected}")]
    UnsupportedMediaType {
        /// What is accepted.
        expected: &'static str,
    },
    /// The answer cannot be in a format the request accepts (406): `Accept` admits no JSON
    /// type, or `_format` names another format.
    #[error(
        "this server answers only in JSON (application/fhir+json or application/json): the \
         Accept header or _format asks for another format"
    )]
    NotAcceptable,
    /// No route for the path (404).
    #[error("no such endpoint")]
    NotFound,
    /// The route exists but not for this method (405).
    #[error("method not allowed on this endpoint")]
    MethodNotAllowed,
    /// The id in the URL and the id in the body differ (400, as FHIR R4 says).
    #[error("the id in the URL and the id in the body differ")]
    IdMismatch,
    /// An update body without `id` (400).
    #[error("Resource.id is required for update")]
    MissingId,
    /// A malformed header, path segment or query parameter (400). The message names the
    /// header or parameter, never its value.
    #[error("{0}")]
    BadRequest(String),
    /// An internal fault already logged under `reference` (500, opaque).
    #[error("internal error, reference {reference}")]
    Internal {
        /// Correlation id, also in the log.
        reference: String,
    },
}

impl ApiError {
    /// An internal fault: logs `detail` at error level under a fresh correlation id, and
    /// returns the opaque error to answer with.
    pub(crate) fn internal(detail: &dyn std::fmt::Display) -> Self {
        let reference = uuid::Uuid::new_v4().to_string();
        tracing::error!(reference = %reference, error = %detail, "internal error");
        ApiError::Internal { reference }
    }

    /// True for faults on the server's side (5xx): never folded into a Bundle entry's answer.
    pub(crate) fn is_server_fault(&self) -> bool {
        match self {
            ApiError::Internal { .. } => true,
            ApiError::Store(e) => e.http_status() >= 500,
            ApiError::Fhir(e) => fhir_status(e).is_server_error(),
            _ => false,
        }
    }

    /// Status and OperationOutcome of this error. Logs internal faults (with a fresh
    /// correlation id) as a side effect.
    pub(crate) fn status_and_outcome(self) -> (StatusCode, OperationOutcome) {
        match self {
            e @ (ApiError::Unauthorized | ApiError::InvalidToken | ApiError::LoginFailed) => (
                StatusCode::UNAUTHORIZED,
                OperationOutcome::error(IssueCode::Login, e.to_string()),
            ),
            e @ ApiError::Throttled { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                OperationOutcome::error(IssueCode::Transient, e.to_string()),
            ),
            ApiError::Forbidden(message) => (
                StatusCode::FORBIDDEN,
                OperationOutcome::error(IssueCode::Forbidden, message),
            ),
            ApiError::Missing(message) => (
                StatusCode::NOT_FOUND,
                OperationOutcome::error(IssueCode::NotFound, message),
            ),
            ApiError::Conflict(message) => (
                StatusCode::CONFLICT,
                OperationOutcome::error(IssueCode::Conflict, message),
            ),
            ApiError::Fhir(e) => fhir_outcome(e),
            ApiError::Store(e) => store_outcome(e),
            e @ ApiError::BodyTooLarge { .. } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                OperationOutcome::error(IssueCode::TooLong, e.to_string()),
            ),
            e @ ApiError::BodyTimeout { .. } => (
                StatusCode::REQUEST_TIMEOUT,
                OperationOutcome::error(IssueCode::Transient, e.to_string()),
            ),
            e @ ApiError::UnsupportedMediaType { .. } => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                OperationOutcome::error(IssueCode::NotSupported, e.to_string()),
            ),
            e @ ApiError::NotAcceptable => (
                StatusCode::NOT_ACCEPTABLE,
                OperationOutcome::error(IssueCode::NotSupported, e.to_string()),
            ),
            e @ ApiError::NotFound => (
                StatusCode::NOT_FOUND,
                OperationOutcome::error(IssueCode::NotFound, e.to_string()),
            ),
            e @ ApiError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                OperationOutcome::error(IssueCode::NotSupported, e.to_string()),
            ),
            e @ ApiError::IdMismatch => (
                StatusCode::BAD_REQUEST,
                OperationOutcome::from_issues(vec![Issue {
                    code: IssueCode::Invalid,
                    path: "Resource.id".to_owned(),
                    message: e.to_string(),
                }]),
            ),
            e @ ApiError::MissingId => (
                StatusCode::BAD_REQUEST,
                OperationOutcome::from_issues(vec![Issue {
                    code: IssueCode::Required,
                    path: "Resource.id".to_owned(),
                    message: e.to_string(),
                }]),
            ),
            ApiError::BadRequest(message) => (
                StatusCode::BAD_REQUEST,
                OperationOutcome::error(IssueCode::Value, message),
            ),
            e @ ApiError::Internal { .. } => (
                StatusCode::INTERNAL_SERVER_ERROR,
                OperationOutcome::error(IssueCode::Exception, e.to_string()),
            ),
        }
    }
}

/// Status of a FHIR-level error.
fn fhir_status(e: &FhirError) -> StatusCode {
    match e {
        FhirError::UnknownType(_) => StatusCode::NOT_FOUND,
        FhirError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
        FhirError::TooManyEntries { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        FhirError::AmbiguousReference { .. } | FhirError::MultipleMatches { .. } => {
            StatusCode::PRECONDITION_FAILED
        }
        FhirError::SchemaUnavailable(_) => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_REQUEST,
    }
}

fn fhir_outcome(e: FhirError) -> (StatusCode, OperationOutcome) {
    let status = fhir_status(&e);
    if status == StatusCode::INTERNAL_SERVER_ERROR {
        return ApiError::internal(&e).status_and_outcome();
    }
    (status, OperationOutcome::from_issues(e.issues()))
}

fn store_outcome(e: StoreError) -> (StatusCode, OperationOutcome) {
    match e {
        // FHIR errors keep their own mapping (all issues with paths, 413 for too many entries).
        StoreError::Fhir(f) => fhir_outcome(f),
        e if e.is_internal() => ApiError::internal(&e).status_and_outcome(),
        e => {
            let status =
                StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            if status.is_server_error() {
                // Integrity failures and an unavailable database: the message is safe to
                // show (type and id only) and the operator needs the detail in the log.
                let reference = uuid::Uuid::new_v4().to_string();
                let source = std::error::Error::source(&e)
                    .map(ToString::to_string)
                    .unwrap_or_default();
                tracing::error!(reference = %reference, error = %e, source = %source, "store failure");
            }
            let issues = match &e {
                // An entry's FHIR problem: keep each issue's path, say which entry.
                StoreError::Entry { index, source } => match source.as_ref() {
                    StoreError::Fhir(f) => f
                        .issues()
                        .into_iter()
                        .map(|i| Issue {
                            message: format!("Bundle.entry[{index}]: {}", i.message),
                            ..i
                        })
                        .collect(),
                    _ => vec![plain_issue(e.issue_code(), e.to_string())],
                },
                _ => vec![plain_issue(e.issue_code(), e.to_string())],
            };
            (status, OperationOutcome::from_issues(issues))
        }
    }
}

fn plain_issue(code: IssueCode, message: String) -> Issue {
    Issue {
        code,
        path: String::new(),
        message,
    }
}

/// The media type of every FHIR body this server sends.
pub(crate) const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";

/// A FHIR JSON response with `status`.
pub(crate) fn fhir_json(status: StatusCode, body: &serde_json::Value) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    fhir_json_bytes(status, bytes)
}

/// A FHIR JSON answer of JSON text already serialized.
pub(crate) fn fhir_json_bytes(status: StatusCode, bytes: Vec<u8>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON))],
        bytes,
    )
        .into_response()
}

impl From<ServiceError> for ApiError {
    /// The edge's answer to a failure of the accounts service. Credential failures are one
    /// 401 whatever their cause; a store failure keeps its own mapping.
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::CredentialFailure => ApiError::LoginFailed,
            ServiceError::Throttled { retry_after } => ApiError::Throttled {
                retry_after: u64::try_from(retry_after).unwrap_or(0).max(1),
            },
            ServiceError::EnrolmentRequired => {
                ApiError::Forbidden("TOTP enrolment required".to_owned())
            }
            e @ ServiceError::WeakPassword(_) => ApiError::BadRequest(e.to_string()),
            e @ ServiceError::UsernameTaken => ApiError::Conflict(e.to_string()),
            e @ ServiceError::NotFound(_) => ApiError::Missing(e.to_string()),
            ServiceError::Invalid(message) => ApiError::BadRequest(message),
            ServiceError::Store(e) => ApiError::Store(e),
            other => ApiError::internal(&other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let challenge = match &self {
            ApiError::Unauthorized | ApiError::LoginFailed => Some("Bearer realm=\"phivault\""),
            ApiError::InvalidToken => Some("Bearer realm=\"phivault\", error=\"invalid_token\""),
            _ => None,
        };
        let retry_after = match &self {
            ApiError::Throttled { retry_after } => Some(*retry_after),
            _ => None,
        };
        let (status, outcome) = self.status_and_outcome();
        let mut response = fhir_json(status, &outcome.to_json());
        if let Some(challenge) = challenge {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        response
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn outcome_of(e: ApiError) -> (StatusCode, serde_json::Value) {
        let (status, o) = e.status_and_outcome();
        (status, o.to_json())
    }

    #[test]
    fn statuses() {
        assert_eq!(
            outcome_of(ApiError::Unauthorized).0,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            outcome_of(ApiError::Fhir(FhirError::UnknownType("X".into()))).0,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            outcome_of(ApiError::Fhir(FhirError::TooManyEntries {
                count: 2,
                limit: 1
            }))
            .0,
            StatusCode::PAYLOAD_TOO_LARGE
        );
        assert_eq!(
            outcome_of(ApiError::Store(StoreError::Gone {
                rtype: "Patient".into(),
                id: "a".into(),
                version: 2
            }))
            .0,
            StatusCode::GONE
        );
        assert_eq!(outcome_of(ApiError::IdMismatch).0, StatusCode::BAD_REQUEST);
        assert_eq!(
            outcome_of(ApiError::NotAcceptable).0,
            StatusCode::NOT_ACCEPTABLE
        );
        assert_eq!(outcome_of(ApiError::MissingId).0, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn invalid_lists_every_issue_with_its_path() {
        let e = FhirError::Invalid(vec![
            Issue {
                code: IssueCode::Value,
                path: "Patient.birthDate".into(),
                message: "not a valid date".into(),
            },
            Issue {
                code: IssueCode::Structure,
                path: "Patient.name[0]".into(),
                message: "expected an object".into(),
            },
        ]);
        let (status, json) = outcome_of(ApiError::Fhir(e));
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        let issues = json["issue"].as_array().unwrap();
        assert_eq!(issues.len(), 2);
        assert_eq!(issues[0]["expression"][0], "Patient.birthDate");
        assert_eq!(issues[1]["expression"][0], "Patient.name[0]");
    }

    #[test]
    fn internal_faults_are_opaque() {
        let e = StoreError::Config("secret detail".into());
        let (status, json) = outcome_of(ApiError::Store(e));
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        let text = json.to_string();
        assert!(!text.contains("secret detail"));
        assert!(text.contains("internal error, reference "));
    }

    #[test]
    fn integrity_says_so() {
        let e = StoreError::Integrity {
            rtype: "Patient".into(),
            id: "p1".into(),
        };
        let (status, json) = outcome_of(ApiError::Store(e));
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(json.to_string().contains("integrity failure"));
    }

    #[test]
    fn entry_names_its_index() {
        let e = StoreError::Entry {
            index: 3,
            source: Box::new(StoreError::NotFound {
                rtype: "Patient".into(),
                id: "p1".into(),
            }),
        };
        let (status, json) = outcome_of(ApiError::Store(e));
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(json.to_string().contains("Bundle.entry[3]"));
    }

    #[test]
    fn unauthorized_has_challenge() {
        let r = ApiError::Unauthorized.into_response();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            r.headers()[header::WWW_AUTHENTICATE],
            "Bearer realm=\"phivault\""
        );
        assert_eq!(r.headers()[header::CONTENT_TYPE], FHIR_JSON);
        let r = ApiError::InvalidToken.into_response();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            r.headers()[header::WWW_AUTHENTICATE],
            "Bearer realm=\"phivault\", error=\"invalid_token\""
        );
    }

    #[test]
    fn credential_failures_say_the_same() {
        let texts: Vec<String> = [
            ApiError::Unauthorized,
            ApiError::InvalidToken,
            ApiError::LoginFailed,
            ApiError::from(ServiceError::CredentialFailure),
        ]
        .into_iter()
        .map(|e| {
            let (status, json) = outcome_of(e);
            assert_eq!(status, StatusCode::UNAUTHORIZED);
            json["issue"][0]["diagnostics"].as_str().unwrap().to_owned()
        })
        .collect();
        assert!(
            texts.iter().all(|t| t == "authentication failed"),
            "{texts:?}"
        );
    }

    #[test]
    fn throttled_says_when() {
        let r = ApiError::from(ServiceError::Throttled { retry_after: 30 }).into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "30");
        let (status, _) = outcome_of(ApiError::Forbidden("access denied: no-permit".into()));
        assert_eq!(status, StatusCode::FORBIDDEN);
    }
}
