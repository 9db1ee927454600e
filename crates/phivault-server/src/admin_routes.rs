//! The admin JSON API: users, their links and care grants, OAuth2 clients, and the review list
//! of break-the-glass accesses. Every call is decided by the policies (`manage_users`,
//! `manage_clients`; the review list also for `read_audit`), so by default only the admin role
//! (and, for the review list, the auditor role) gets through. Errors are OperationOutcomes.
//!
//! Each change (a user, a link, a grant, a client) commits in one transaction with the
//! request's audit entry ([`RequestSink::account_change`]): when the entry cannot be written
//! the change does not happen and the answer is 503. Refusals and invalid requests change
//! nothing; the audit middleware records them as for every request.

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use phivault_auth::Password;
use phivault_fhir::Id;
use phivault_policy::{Action, Label, Role, ScopeSet};
use serde_json::{Map, Value, json};
use zeroize::Zeroizing;

use crate::audit_sink::RequestSink;
use crate::auth_routes::{json_object, json_response, no_other_fields, optional_str, required_str};
use crate::fhir_routes::{Access, path_error};
use crate::{ApiError, AppState};

/// The admin routes (without fallbacks and layers).
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin/users", post(create_user))
        .route("/admin/users/{username}/link-patient", post(link_patient))
        .route(
            "/admin/users/{username}/link-practitioner",
            post(link_practitioner),
        )
        .route("/admin/users/{username}/grants", post(grant))
        .route("/admin/clients", post(create_client))
        .route("/admin/break-glass", get(break_glass))
}

/// A FHIR id field; 400 naming the field when malformed.
fn id_field(fields: &mut Map<String, Value>, name: &str) -> Result<Id, ApiError> {
    let text = required_str(fields, name)?;
    Id::parse(&text).map_err(|_| ApiError::BadRequest(format!("`{name}` must be a FHIR id")))
}

fn username_of(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(username) = path.map_err(path_error)?;
    Ok(username)
}

/// `POST /admin/users` `{username, password, role}` -> 201 `{user_id}`.
async fn create_user(
    State(state): State<AppState>,
    access: Access,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    access.require(Action::ManageUsers)?;
    let mut fields = json_object(&headers, body).await?;
    let username = required_str(&mut fields, "username")?;
    let password = Password::new(required_str(&mut fields, "password")?);
    let role = required_str(&mut fields, "role")?;
    no_other_fields(&fields)?;
    let role = Role::parse(&role)
        .ok()
        .filter(|r| *r != Role::App)
        .ok_or_else(|| {
            ApiError::BadRequest(
                "`role` must be one of admin, clinician, patient, researcher, auditor".to_owned(),
            )
        })?;
    let sink = RequestSink::account_change(&state, access.audit_slot());
    let user_id = state
        .accounts
        .create_user(&username, password, role, &sink)
        .await?;
    sink.committed();
    tracing::info!(user_id = %user_id, role = %role, "user created");
    Ok(json_response(
        StatusCode::CREATED,
        &json!({ "user_id": user_id }),
    ))
}

/// `POST /admin/users/{username}/link-patient` `{patient}`: the patient user's own record.
async fn link_patient(
    State(state): State<AppState>,
    access: Access,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    access.require(Action::ManageUsers)?;
    let username = username_of(path)?;
    let mut fields = json_object(&headers, body).await?;
    let patient = id_field(&mut fields, "patient")?;
    no_other_fields(&fields)?;
    let sink = RequestSink::account_change(&state, access.audit_slot());
    state
        .accounts
        .link_patient(&username, &patient, &sink)
        .await?;
    sink.committed();
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /admin/users/{username}/link-practitioner` `{practitioner}`: the clinician's
/// Practitioner record (CareTeam resources name practitioners).
async fn link_practitioner(
    State(state): State<AppState>,
    access: Access,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    access.require(Action::ManageUsers)?;
    let username = username_of(path)?;
    let mut fields = json_object(&headers, body).await?;
    let practitioner = id_field(&mut fields, "practitioner")?;
    no_other_fields(&fields)?;
    let sink = RequestSink::account_change(&state, access.audit_slot());
    state
        .accounts
        .link_practitioner(&username, &practitioner, &sink)
        .await?;
    sink.committed();
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /admin/users/{username}/grants` `{patient, labels?, expires_at?}`: a care
/// relationship with a patient, optionally with sensitivity labels, optionally until a time.
async fn grant(
    State(state): State<AppState>,
    access: Access,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    access.require(Action::ManageUsers)?;
    let username = username_of(path)?;
    let mut fields = json_object(&headers, body).await?;
    let patient = id_field(&mut fields, "patient")?;
    let labels_error = || {
        ApiError::BadRequest(
            "`labels` must be an array of label codes (R, PSY, ETH, HIV)".to_owned(),
        )
    };
    let labels: Vec<Label> = match fields.remove("labels") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().and_then(|s| Label::parse(s).ok()))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(labels_error)?,
        Some(_) => return Err(labels_error()),
    };
    let expires_at = match fields.remove("expires_at") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_i64().ok_or_else(|| {
            ApiError::BadRequest("`expires_at` must be a Unix time in seconds".to_owned())
        })?),
    };
    no_other_fields(&fields)?;
    let sink = RequestSink::account_change(&state, access.audit_slot());
    state
        .accounts
        .grant(&username, &patient, &labels, expires_at, &sink)
        .await?;
    sink.committed();
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /admin/clients` `{name, scope, launch_patient?}` -> 201 `{client_id, client_secret}`
/// (the secret is shown once).
async fn create_client(
    State(state): State<AppState>,
    access: Access,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    access.require(Action::ManageClients)?;
    let mut fields = json_object(&headers, body).await?;
    let name = required_str(&mut fields, "name")?;
    let scope = required_str(&mut fields, "scope")?;
    let launch_patient =
        match optional_str(&mut fields, "launch_patient")? {
            None => None,
            Some(text) => Some(Id::parse(&text).map_err(|_| {
                ApiError::BadRequest("`launch_patient` must be a FHIR id".to_owned())
            })?),
        };
    no_other_fields(&fields)?;
    ScopeSet::parse(&scope).map_err(|e| ApiError::BadRequest(format!("`scope`: {e}")))?;
    let sink = RequestSink::account_change(&state, access.audit_slot());
    let (client_id, secret) = state
        .accounts
        .create_client(&name, &scope, launch_patient.as_ref(), &sink)
        .await?;
    sink.committed();
    tracing::info!(client = %client_id, "client registered");
    let secret = Zeroizing::new(secret.expose().to_owned());
    Ok(json_response(
        StatusCode::CREATED,
        &json!({ "client_id": client_id, "client_secret": secret.as_str() }),
    ))
}

/// `GET /admin/break-glass`: break-the-glass accesses for review, newest first. Reasons may
/// describe the patient: shown to reviewers only (admins and auditors), never logged.
async fn break_glass(State(state): State<AppState>, access: Access) -> Result<Response, ApiError> {
    if access.require(Action::ReadAudit).is_err() {
        access.require(Action::ManageUsers)?;
    }
    let records: Vec<Value> = state
        .accounts
        .list_break_glass()
        .await?
        .into_iter()
        .map(|r| {
            json!({
                "id": r.id,
                "user_id": r.user_id,
                "patient": r.patient.as_str(),
                "reason": r.reason,
                "started_at": r.started_at,
                "expires_at": r.expires_at,
            })
        })
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({ "records": records }),
    ))
}
