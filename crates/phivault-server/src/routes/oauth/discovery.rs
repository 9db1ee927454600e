//! Discovery: `/.well-known/smart-configuration` (SMART App Launch 2.x),
//! `/.well-known/openid-configuration` (OpenID Connect Discovery; the issuer is the FHIR base,
//! so it is served under `/fhir` as well) and the JWKS of the id_token signing keys. Each
//! lists only what the server does.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use super::server_root;
use crate::auth_routes::json_response;
use crate::{ApiError, AppState};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/.well-known/smart-configuration", get(smart_configuration))
        .route(
            "/fhir/.well-known/smart-configuration",
            get(smart_configuration),
        )
        .route(
            "/.well-known/openid-configuration",
            get(openid_configuration),
        )
        .route(
            "/fhir/.well-known/openid-configuration",
            get(openid_configuration),
        )
        .route("/oauth/jwks", get(jwks))
}

/// Client authentication methods of the token, revocation and introspection endpoints.
const AUTH_METHODS: [&str; 4] = [
    "client_secret_basic",
    "client_secret_post",
    "private_key_jwt",
    "none",
];

/// Scopes beyond resource scopes.
const OTHER_SCOPES: [&str; 7] = [
    "openid",
    "fhirUser",
    "profile",
    "launch",
    "launch/patient",
    "offline_access",
    "online_access",
];

/// The SMART configuration.
pub(crate) fn smart_document(base_url: &str) -> Value {
    let root = server_root(base_url);
    let mut scopes: Vec<&str> = OTHER_SCOPES.to_vec();
    scopes.extend([
        "patient/*.rs",
        "patient/*.cruds",
        "user/*.rs",
        "user/*.cruds",
        "system/*.rs",
        "system/*.cruds",
        "patient/Observation.rs",
        "patient/Patient.r",
    ]);
    json!({
        "issuer": base_url.trim_end_matches('/'),
        "jwks_uri": format!("{root}/oauth/jwks"),
        "authorization_endpoint": format!("{root}/oauth/authorize"),
        "token_endpoint": format!("{root}/oauth/token"),
        "revocation_endpoint": format!("{root}/oauth/revoke"),
        "introspection_endpoint": format!("{root}/oauth/introspect"),
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "response_types_supported": ["code"],
        "token_endpoint_auth_methods_supported": AUTH_METHODS,
        "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
        "code_challenge_methods_supported": ["S256"],
        "scopes_supported": scopes,
        "capabilities": [
            "launch-standalone",
            "launch-ehr",
            "client-public",
            "client-confidential-symmetric",
            "client-confidential-asymmetric",
            "context-standalone-patient",
            "context-ehr-patient",
            "context-ehr-encounter",
            "context-banner",
            "permission-v1",
            "permission-v2",
            "permission-patient",
            "permission-user",
            "permission-offline",
            "permission-online",
            "sso-openid-connect",
        ],
    })
}

/// The OpenID Connect provider metadata.
pub(crate) fn openid_document(base_url: &str) -> Value {
    let root = server_root(base_url);
    json!({
        "issuer": base_url.trim_end_matches('/'),
        "authorization_endpoint": format!("{root}/oauth/authorize"),
        "token_endpoint": format!("{root}/oauth/token"),
        "jwks_uri": format!("{root}/oauth/jwks"),
        "revocation_endpoint": format!("{root}/oauth/revoke"),
        "introspection_endpoint": format!("{root}/oauth/introspect"),
        "response_types_supported": ["code"],
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "token_endpoint_auth_methods_supported": AUTH_METHODS,
        "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
        "code_challenge_methods_supported": ["S256"],
        "scopes_supported": OTHER_SCOPES,
        "claims_supported": ["iss", "sub", "aud", "exp", "iat", "nonce", "fhirUser"],
    })
}

async fn smart_configuration(State(state): State<AppState>) -> Response {
    json_response(StatusCode::OK, &smart_document(&state.base_url))
}

async fn openid_configuration(State(state): State<AppState>) -> Response {
    json_response(StatusCode::OK, &openid_document(&state.base_url))
}

/// `GET /oauth/jwks`: the public keys that verify id_tokens (a key is created on first use).
async fn jwks(State(state): State<AppState>) -> Result<Response, ApiError> {
    state.accounts.ensure_signing_key(false).await?;
    let keys = state.accounts.jwks().await?;
    let mut response = json_response(StatusCode::OK, &keys);
    // Public keys: apps may cache them briefly (a rotation keeps the old key an overlap
    // period, longer than this).
    response.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("public, max-age=300"),
    );
    Ok(response.into_response())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn smart_document_is_truthful() {
        let d = smart_document("https://h:1/fhir");
        assert_eq!(d["token_endpoint"], "https://h:1/oauth/token");
        assert_eq!(d["authorization_endpoint"], "https://h:1/oauth/authorize");
        assert_eq!(d["code_challenge_methods_supported"], json!(["S256"]));
        for s in d["scopes_supported"].as_array().unwrap() {
            assert!(
                phivault_policy::ScopeSet::parse(s.as_str().unwrap()).is_ok(),
                "{s}"
            );
        }
        let caps = d["capabilities"].as_array().unwrap();
        for needed in [
            "launch-standalone",
            "launch-ehr",
            "client-public",
            "client-confidential-asymmetric",
            "context-standalone-patient",
            "permission-v2",
            "permission-offline",
            "sso-openid-connect",
        ] {
            assert!(caps.contains(&json!(needed)), "{needed}");
        }
        let o = openid_document("https://h:1/fhir");
        assert_eq!(o["issuer"], "https://h:1/fhir");
        assert_eq!(o["jwks_uri"], d["jwks_uri"]);
    }
}
