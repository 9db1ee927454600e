//! Access and portability on the FHIR API (issue 6):
//!
//! - `GET /fhir/Patient/{id}/$everything`: the patient's whole compartment (current versions)
//!   as one `searchset` Bundle, the Patient first. The Patient is decided like a read (403 as
//!   for any resource out of reach); then every member is decided like a read, and those the
//!   principal may not read (a label not granted, a consent refusing the type) are left out,
//!   as a search leaves them out. So the patient themselves, clinicians with a care
//!   relationship (consent applies) and apps with the right scopes get what they could read
//!   one by one. No paging: at most [`MAX_EVERYTHING`] resources, a larger compartment is a
//!   400 pointing to `$export`; parameters are refused (400). An erased patient answers 410
//!   to those who could read the patient (decided on the patient's id alone), a deleted one
//!   410, an unknown one 404 or 403 as for a read.
//! - `GET /fhir/Patient/{id}/$export`: the portable package of [`crate::portability`]
//!   (`application/fhir+ndjson`: a manifest line, the compartment, the Consents, the access
//!   log as AuditEvents). Decided as `export_own` on the patient's Patient before anything is
//!   looked up: by default the patient themselves, in their own session; everyone else gets
//!   the same 403. `?recipient=age1...` (repeatable) encrypts the package to those age
//!   X25519 recipients (`application/octet-stream`, the binary age format).
//!
//! Both are audited by the middleware with the patient of the path and the sensitivity labels
//! of the resources returned.

use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use phivault_fhir::{Id, ResourceType};
use phivault_policy::Action;
use serde_json::json;

use crate::edge::AuditPatient;
use crate::error::fhir_json;
use crate::fhir_routes::{Access, Current, Facts, base, match_entries, parse_pairs, path_error};
use crate::portability::{self, NDJSON};
use crate::{ApiError, AppState};

/// Most resources `$everything` returns in one Bundle.
pub(crate) const MAX_EVERYTHING: usize = 10_000;

/// The routes. Their static segments take precedence over `/fhir/{type}/{id}/...`.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/fhir/Patient/{id}/$everything", get(everything))
        .route("/fhir/Patient/{id}/$export", get(export))
}

/// The path's patient id, or the answer to a malformed one.
fn patient_of(path: Result<Path<String>, PathRejection>) -> Result<Id, ApiError> {
    let Path(raw) = path.map_err(path_error)?;
    Ok(Id::parse(&raw)?)
}

/// The response naming `patient` for the audit trail.
fn about(result: Result<Response, ApiError>, patient: Id) -> Response {
    let mut response = match result {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    response.extensions_mut().insert(AuditPatient(patient));
    response
}

async fn everything(
    State(state): State<AppState>,
    mut access: Access,
    path: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
) -> Response {
    let patient = match patient_of(path) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let result = everything_of(&state, &mut access, &patient, query.as_deref()).await;
    about(result.map(|r| access.mark(r)), patient)
}

async fn everything_of(
    state: &AppState,
    access: &mut Access,
    patient: &Id,
    query: Option<&str>,
) -> Result<Response, ApiError> {
    if !parse_pairs(query.unwrap_or(""))?.is_empty() {
        return Err(ApiError::BadRequest(format!(
            "$everything takes no parameters here: it returns the whole compartment (at most \
             {MAX_EVERYTHING} resources) in one Bundle"
        )));
    }
    let rtype = ResourceType::PATIENT;
    let current = access.load(rtype, patient).await?;
    match &current {
        Current::Live(_) => {
            access
                .authorize_current(Action::Read, rtype, &current)
                .await?;
        }
        // Erased: nothing is left to decide on but the patient's id. Those who could read
        // the patient learn that it is gone; the others get the same refusal as for any
        // patient out of reach.
        Current::Erased => {
            let facts = Facts {
                patient: Some(patient.clone()),
                labels: Vec::new(),
                new_patient: false,
            };
            access.authorize_body(Action::Read, rtype, &facts).await?;
            return Err(current.absent(rtype, patient));
        }
        Current::Deleted { .. } | Current::Missing => {
            access
                .authorize_current(Action::Read, rtype, &current)
                .await?;
            return Err(current.absent(rtype, patient));
        }
    }
    let members = portability::compartment(&state.store, patient, Some(MAX_EVERYTHING)).await?;
    let mut kept = Vec::with_capacity(members.len());
    for r in members {
        match access.authorize_stored(Action::Read, r.facts()).await {
            Ok(proof) => kept.push(r.release(&proof)?),
            // Left out, as a search leaves out what may not be read.
            Err(ApiError::Forbidden(_)) => {}
            Err(e) => return Err(e),
        }
    }
    let bundle = json!({
        "resourceType": "Bundle",
        "id": uuid::Uuid::new_v4().to_string(),
        "type": "searchset",
        "total": kept.len(),
        "link": [{
            "relation": "self",
            "url": format!("{}/Patient/{patient}/$everything", base(state)),
        }],
        "entry": match_entries(state, kept),
    });
    Ok(fhir_json(StatusCode::OK, &bundle))
}

async fn export(
    State(state): State<AppState>,
    access: Access,
    path: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
) -> Response {
    let patient = match patient_of(path) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let result = export_of(&state, &access, &patient, query.as_deref()).await;
    about(result, patient)
}

async fn export_of(
    state: &AppState,
    access: &Access,
    patient: &Id,
    query: Option<&str>,
) -> Result<Response, ApiError> {
    // Decided before anything is looked up: the refusal is the same for all.
    let proof = access.decide_on_patient(Action::ExportOwn, patient)?;
    let mut recipients = Vec::new();
    for (name, value) in parse_pairs(query.unwrap_or(""))? {
        match name.as_str() {
            "recipient" => recipients.push(value),
            _ => {
                return Err(ApiError::BadRequest(format!(
                    "$export takes only `recipient` (an age X25519 public key), not `{}`",
                    name.chars().take(64).collect::<String>()
                )));
            }
        }
    }
    let mut resources = Vec::new();
    let slot = access.audit_slot();
    for r in portability::compartment(&state.store, patient, None).await? {
        // The package holds the labelled resources too: their data classes are in the entry.
        slot.note_labels(r.facts().labels());
        resources.push(r.release(&proof)?);
    }
    let (bytes, _) = portability::package(
        &state.store,
        &state.accounts,
        patient,
        resources,
        Some(access.who().principal.id()),
    )
    .await?;
    let (bytes, media) = if recipients.is_empty() {
        (bytes, NDJSON)
    } else {
        (
            portability::encrypt(&bytes, &recipients)?,
            "application/octet-stream",
        )
    };
    let extension = if recipients.is_empty() {
        "ndjson"
    } else {
        "ndjson.age"
    };
    let mut response = (StatusCode::OK, bytes).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(media));
    if let Ok(v) = HeaderValue::from_str(&format!(
        "attachment; filename=\"patient-{patient}.{extension}\""
    )) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(response)
}
