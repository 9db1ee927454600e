//! A patient's requests about their own record (issue 6, rectification and erasure):
//!
//! - `POST /fhir/Patient/{id}/$request-correction`: a FHIR `Parameters` body with `target`
//!   (valueReference to a resource of the patient's compartment) and `description`
//!   (valueString: what is wrong). Nothing is changed: a `Task` (status `requested`, intent
//!   `proposal`, code `task-code#change`, focus the target, for and requester the patient,
//!   the description as a note authored by the patient: the R4 JSON schema the validator
//!   uses has no `Task.description`) is
//!   created for staff, who find it by search (`Task?patient=...&status=requested`) under the
//!   normal rules, apply the correction with a normal update of the target (which keeps
//!   history) and set the Task `completed`.
//! - `POST /fhir/Patient/{id}/$request-erasure`: a `Task` (code `urn:phivault:task#erasure`,
//!   focus the Patient) for staff; optional `description` as above. The erasure itself stays
//!   an admin's `$erase`; the Task, in the compartment, is erased with it, and the erasure
//!   ledger and certificate are the record of its completion.
//!
//! Decided as `request_correction` / `request_erasure` on the patient's Patient before
//! anything is looked up (by default the patient themselves, in their own session): everyone
//! else gets the same 403. A target that is unknown, deleted, erased, in another compartment
//! or not readable by the patient gets one and the same 422, so nothing is learned about
//! other compartments. The Task is validated like a created resource and written with the
//! request's audit entry; the middleware audits failures, naming the patient of the path.

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use phivault_fhir::{FhirError, Id, Issue, IssueCode, ResourceType};
use phivault_policy::Action;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::audit_sink::RequestSink;
use crate::edge::AuditPatient;
use crate::fhir_routes::{Access, Current, path_error, read_body, require_json, resource_response};
use crate::{ApiError, AppState};

/// The code system of the erasure request Task.
pub(crate) const ERASURE_SYSTEM: &str = "urn:phivault:task";

/// The routes. Their static segments take precedence over `/fhir/{type}/{id}/...`.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/fhir/Patient/{id}/$request-correction",
            post(request_correction),
        )
        .route("/fhir/Patient/{id}/$request-erasure", post(request_erasure))
}

/// Longest `description` accepted, in characters.
const MAX_DESCRIPTION: usize = 4000;

async fn request_correction(
    State(state): State<AppState>,
    access: Access,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    handle(
        state,
        access,
        path,
        headers,
        body,
        Action::RequestCorrection,
    )
    .await
}

async fn request_erasure(
    State(state): State<AppState>,
    access: Access,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    handle(state, access, path, headers, body, Action::RequestErasure).await
}

async fn handle(
    state: AppState,
    mut access: Access,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
    action: Action,
) -> Response {
    let patient = match path
        .map_err(path_error)
        .and_then(|Path(raw)| Id::parse(&raw).map_err(ApiError::from))
    {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let result = request_of(&state, &mut access, &patient, &headers, body, action).await;
    let mut response = match result {
        Ok(r) => access.mark(r),
        Err(e) => e.into_response(),
    };
    response.extensions_mut().insert(AuditPatient(patient));
    response
}

async fn request_of(
    state: &AppState,
    access: &mut Access,
    patient: &Id,
    headers: &HeaderMap,
    body: Body,
    action: Action,
) -> Result<Response, ApiError> {
    // Decided before anything is looked up: the refusal is the same for all.
    access.decide_on_patient(action, patient)?;
    // The body is optional for an erasure request.
    let optional = action != Action::RequestCorrection;
    let params = parameters(state, headers, body, optional).await?;
    let description = match &params {
        Some(p) => param(p, "description", "valueString").and_then(Value::as_str),
        None => None,
    };
    let description = match (action, description) {
        (_, Some(d)) if d.trim().is_empty() || d.chars().count() > MAX_DESCRIPTION => {
            return Err(bad_param(&format!(
                "`description` must be a non-empty valueString of at most {MAX_DESCRIPTION} \
                 characters"
            )));
        }
        (_, Some(d)) => d.to_owned(),
        (Action::RequestCorrection, None) => {
            return Err(bad_param(
                "`description` (valueString: what is wrong) is required",
            ));
        }
        (_, None) => "Erasure of the record requested by the patient".to_owned(),
    };
    let now = OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .map_err(|e| ApiError::internal(&e))?;
    let me = format!("Patient/{patient}");
    let (focus, code) = if action == Action::RequestCorrection {
        let target = params
            .as_ref()
            .and_then(|p| param(p, "target", "valueReference"))
            .and_then(|r| r.get("reference"))
            .and_then(Value::as_str)
            .ok_or_else(|| {
                bad_param(
                    "`target` (valueReference to a resource of the patient's record) is required",
                )
            })?;
        let focus = check_target(access, patient, target).await?;
        (
            focus,
            json!({
                "coding": [{
                    "system": "http://hl7.org/fhir/CodeSystem/task-code",
                    "code": "change",
                    "display": "Change the focal resource",
                }],
                "text": "Correction requested by the patient",
            }),
        )
    } else {
        (
            me.clone(),
            json!({
                "coding": [{
                    "system": ERASURE_SYSTEM,
                    "code": "erasure",
                    "display": "Erase the patient's record",
                }],
                "text": "Erasure requested by the patient",
            }),
        )
    };
    let task = json!({
        "resourceType": "Task",
        "status": "requested",
        "intent": "proposal",
        "code": code,
        "focus": { "reference": focus },
        "for": { "reference": me },
        "authoredOn": now,
        "requester": { "reference": me },
        // `Task.description` is missing from the R4 JSON schema the validator uses: the
        // patient's words go in a note authored by the patient.
        "note": [{ "authorReference": { "reference": me }, "time": now, "text": description }],
    });
    let bytes = serde_json::to_vec(&task).map_err(|e| ApiError::internal(&e))?;
    let task_type = ResourceType::parse("Task")?;
    let resource = state.validator.parse(&bytes, Some(task_type))?;
    let sink = RequestSink::single_write(state, access.audit_slot());
    // The Task is the server's own record of a request the policies allowed (decided on the
    // patient before anything was looked up), written as the system: no client body is
    // stored, and the request may be made by a patient who may not create Tasks.
    #[allow(clippy::disallowed_methods)]
    let stored = state.store.create(resource, &sink).await?;
    sink.committed();
    Ok(resource_response(state, StatusCode::CREATED, &stored, true))
}

/// The `Parameters` body; `None` when `optional` and there is none (no content type, or
/// an empty body).
async fn parameters(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    optional: bool,
) -> Result<Option<Value>, ApiError> {
    if optional && headers.get(axum::http::header::CONTENT_TYPE).is_none() {
        return Ok(None);
    }
    require_json(headers)?;
    let bytes = read_body(body, headers, state.max_body_bytes).await?;
    if optional && bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let value: Value = phivault_fhir::json::from_slice_unique(&bytes).map_err(|e| {
        ApiError::Fhir(FhirError::MalformedJson(
            if phivault_fhir::json::is_duplicate_key(&e) {
                "the body has a duplicate key"
            } else {
                "the body is not valid JSON"
            }
            .to_owned(),
        ))
    })?;
    if value.get("resourceType").and_then(Value::as_str) != Some("Parameters") {
        return Err(ApiError::BadRequest(
            "the body must be a FHIR Parameters resource".to_owned(),
        ));
    }
    Ok(Some(value))
}

/// The `value[x]` of the first parameter named `name`, if it has that `value` element.
fn param<'a>(params: &'a Value, name: &str, value: &str) -> Option<&'a Value> {
    params
        .get("parameter")
        .and_then(Value::as_array)?
        .iter()
        .find(|p| p.get("name").and_then(Value::as_str) == Some(name))?
        .get(value)
}

fn bad_param(message: &str) -> ApiError {
    ApiError::BadRequest(format!("invalid parameter: {message}"))
}

/// The target as `Type/id`, if it is a live resource of `patient`'s compartment that the
/// principal may read; one and the same 422 otherwise.
async fn check_target(access: &mut Access, patient: &Id, target: &str) -> Result<String, ApiError> {
    let refused = || {
        ApiError::Fhir(FhirError::Invalid(vec![Issue {
            code: IssueCode::Value,
            path: "Parameters.parameter[target]".to_owned(),
            message: "`target` must reference a current resource of the patient's own record"
                .to_owned(),
        }]))
    };
    let (t, i) = target.split_once('/').ok_or_else(|| {
        bad_param("`target` must be a relative reference such as Observation/123")
    })?;
    let rtype = ResourceType::parse(t)
        .map_err(|_| bad_param("`target` names an unsupported resource type"))?;
    let id = Id::parse(i).map_err(|_| bad_param("`target` has a malformed id"))?;
    let Current::Live(stored) = access.load(rtype, &id).await? else {
        return Err(refused());
    };
    if stored.facts().patient() != Some(patient) {
        return Err(refused());
    }
    match access.authorize_stored(Action::Read, stored.facts()).await {
        Ok(_) => Ok(format!("{rtype}/{id}")),
        Err(ApiError::Forbidden(_)) => Err(refused()),
        Err(e) => Err(e),
    }
}
