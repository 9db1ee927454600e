//! A person's own OAuth2 surface: the apps they authorized (`GET /auth/apps`), revoking one
//! (`DELETE /auth/apps/{client_id}`: its tokens die at once), and minting an EHR launch for an
//! app (`POST /smart/launch`, a clinician's session). Sessions only: an app's token cannot
//! list or revoke apps, or launch another.

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use phivault_auth::Authenticated;
use phivault_fhir::Id;
use serde_json::json;

use crate::audit_sink::RequestSink;
use crate::auth_routes::{json_object, json_response, no_other_fields, optional_str, required_str};
use crate::edge::{AuditSlot, Who};
use crate::{ApiError, AppState};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/auth/apps", get(list))
        .route("/auth/apps/{client_id}", delete(revoke))
        .route("/smart/launch", post(launch))
}

/// A person's own session, not an app acting for them.
fn own_session(who: &Authenticated) -> Result<(), ApiError> {
    if who.client_id.is_some() {
        return Err(ApiError::Forbidden(
            "only the person's own session may do this, not an app's token".to_owned(),
        ));
    }
    Ok(())
}

/// `GET /auth/apps`: the apps the signed-in person authorized, with scopes and last use.
async fn list(State(state): State<AppState>, Who(who): Who) -> Result<Response, ApiError> {
    own_session(&who)?;
    let apps = state.accounts.authorized_apps(&who).await?;
    let apps: Vec<_> = apps
        .into_iter()
        .map(|a| {
            json!({
                "client_id": a.client_id,
                "name": a.client_name,
                "scope": a.scopes,
                "authorized_at": a.granted_at,
                "last_used_at": a.last_used_at,
            })
        })
        .collect();
    Ok(json_response(StatusCode::OK, &json!({ "apps": apps })))
}

/// `DELETE /auth/apps/{client_id}`: revokes the person's authorization of the app and every
/// token it holds for them (with the request's audit entry); the app's next request is
/// refused. 204, or 404 when no authorization of that app is in force.
async fn revoke(
    State(state): State<AppState>,
    Who(who): Who,
    slot: AuditSlot,
    Path(client_id): Path<String>,
) -> Result<Response, ApiError> {
    own_session(&who)?;
    let sink = RequestSink::account_change(&state, slot);
    if state.accounts.revoke_app(&who, &client_id, &sink).await? {
        sink.committed();
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::Missing(
            "no authorization of this app is in force".to_owned(),
        ))
    }
}

/// `POST /smart/launch` `{patient, encounter?}`: an opaque launch id for an EHR launch, bound
/// to the clinician's account, the patient (one in their care) and the encounter, for 5
/// minutes. The EHR passes it to the app as `launch`.
async fn launch(
    State(state): State<AppState>,
    Who(who): Who,
    slot: AuditSlot,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    own_session(&who)?;
    let mut fields = json_object(&headers, body).await?;
    let patient = required_str(&mut fields, "patient")?;
    let encounter = optional_str(&mut fields, "encounter")?;
    no_other_fields(&fields)?;
    let patient = Id::parse(patient.trim_start_matches("Patient/"))
        .map_err(|_| ApiError::BadRequest("`patient` must be a Patient id".to_owned()))?;
    let encounter = encounter
        .map(|e| Id::parse(e.trim_start_matches("Encounter/")))
        .transpose()
        .map_err(|_| ApiError::BadRequest("`encounter` must be an Encounter id".to_owned()))?;
    slot.note_patient(&patient);
    let launch = state
        .accounts
        .mint_launch(&who, &patient, encounter.as_ref())
        .await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "launch": launch.expose(),
            "expires_in": phivault_auth::LAUNCH_LIFETIME_SECS,
        }),
    ))
}
