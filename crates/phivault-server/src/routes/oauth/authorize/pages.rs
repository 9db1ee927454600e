//! The pages after sign-in: the patient picker and the consent screen, with the patient
//! labels they show (read as the signed-in person: decided, released and audited like any
//! read).

use super::*;

/// Most patients the picker lists (a clinician with more searches in the EHR instead).
const MAX_PICKER_PATIENTS: usize = 200;

/// The picker's choices: each patient's name and birth date, read as the clinician (decided,
/// released and audited like any read); a patient the clinician may not read now is left
/// out, and one whose record has no name shows its id.
async fn patient_choices(
    state: &AppState,
    slot: &AuditSlot,
    who: &Authenticated,
    patients: &[Id],
) -> Result<Vec<PatientChoice>, ServiceError> {
    let to_service = |e: crate::ApiError| ServiceError::Internal(e.to_string());
    let mut access = crate::fhir_routes::guard::Access::new(
        state.clone(),
        who.clone(),
        &HeaderMap::new(),
        slot.clone(),
    )
    .map_err(to_service)?;
    let Ok(rtype) = phivault_fhir::ResourceType::parse("Patient") else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for id in patients.iter().take(MAX_PICKER_PATIENTS) {
        let current = access.load(rtype, id).await.map_err(to_service)?;
        let proof = match access
            .authorize_current(phivault_policy::Action::Read, rtype, &current)
            .await
        {
            Ok(Some(proof)) => proof,
            Ok(None) | Err(crate::ApiError::Forbidden(_)) => continue,
            Err(e) => return Err(to_service(e)),
        };
        let crate::fhir_routes::guard::Current::Live(stored) = current else {
            continue;
        };
        let Ok(stored) = stored.release(&proof) else {
            continue;
        };
        out.push(PatientChoice {
            id: id.as_str().to_owned(),
            label: patient_label(&stored.body).unwrap_or_else(|| format!("Patient/{id}")),
        });
    }
    Ok(out)
}

/// "Ann Smith, born 1980-01-02" from a Patient's first name and birth date.
fn patient_label(body: &serde_json::Value) -> Option<String> {
    let name = body.get("name")?.as_array()?.first()?;
    let mut parts: Vec<&str> = name
        .get("given")
        .and_then(|g| g.as_array())
        .map(|g| g.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    if let Some(family) = name.get("family").and_then(|f| f.as_str()) {
        parts.push(family);
    }
    let text = name.get("text").and_then(|t| t.as_str());
    let shown = if parts.is_empty() {
        text?.to_owned()
    } else {
        parts.join(" ")
    };
    Some(match body.get("birthDate").and_then(|b| b.as_str()) {
        Some(born) => format!("{shown}, born {born}"),
        None => shown,
    })
}

pub(super) async fn picker_page(
    state: &AppState,
    slot: &AuditSlot,
    headers: &HeaderMap,
    request: &AuthRequest,
    who: &Authenticated,
    error: Option<&str>,
) -> Response {
    let (csrf, cookies) = match csrf_token(headers) {
        Ok(t) => t,
        Err(refusal) => return refusal.respond(state, slot),
    };
    let patients = match state.accounts.care_patients(who).await {
        Ok(p) => p,
        Err(e) => return service_page(e).respond(state, slot),
    };
    let choices = match patient_choices(state, slot, who, &patients).await {
        Ok(c) => c,
        Err(e) => return service_page(e).respond(state, slot),
    };
    let view = PickerView {
        client_name: Some(&request.client.name),
        patients: &choices,
        csrf: &csrf,
        request: &request.raw,
        error,
    };
    with_cookies(state.pages.respond(StatusCode::OK, &view, &[]), &cookies)
}

/// Identity scopes shown as one choice: `openid` stands for `fhirUser` and `profile` too.
const IDENTITY_COMPANIONS: [&str; 2] = ["fhirUser", "profile"];

/// The consent page's list: one line per scope asked for, the identity scopes as one line,
/// and `patient/` scopes worded for a clinician ("this patient's") when the reader is not
/// the patient.
fn consent_items(scope: &str, reader_is_patient: bool) -> Vec<ScopeItem> {
    let openid = has_scope(scope, "openid");
    scope
        .split_ascii_whitespace()
        .filter(|s| !(openid && IDENTITY_COMPANIONS.contains(s)))
        .map(|s| {
            let mut item = ScopeItem::new(s, true);
            if !reader_is_patient && s.starts_with("patient/") {
                item.description = item
                    .description
                    .replace("of your records", "of this patient's records")
                    .replace(" your ", " this patient's ");
            }
            item
        })
        .collect()
}

/// The scopes approved on the consent page: the ticked ones the app asked for, with the
/// identity companions of a ticked `openid`.
pub(super) fn approved_scopes<'a>(
    request: &'a AuthRequest,
    ticked: impl Iterator<Item = &'a str>,
) -> Vec<&'a str> {
    let mut approved: std::collections::BTreeSet<&str> =
        ticked.filter(|s| request.wants(s)).collect();
    if approved.contains("openid") {
        approved.extend(
            request
                .scope
                .split_ascii_whitespace()
                .filter(|s| IDENTITY_COMPANIONS.contains(s)),
        );
    }
    approved.into_iter().collect()
}

pub(super) async fn consent_page(
    state: &AppState,
    slot: &AuditSlot,
    headers: &HeaderMap,
    request: &AuthRequest,
    patient: Option<&Id>,
    who: &Authenticated,
    error: Option<&str>,
) -> Response {
    let reader_is_patient = is_patient(who);
    let (csrf, cookies) = match csrf_token(headers) {
        Ok(t) => t,
        Err(refusal) => return refusal.respond(state, slot),
    };
    let items = consent_items(&request.scope, reader_is_patient);
    let redirect_origin = origin(&request.redirect_uri).unwrap_or_default();
    let patient_id = patient.map(|p| p.as_str().to_owned());
    // The patient in context, named as the picker names them (read as the signed-in
    // person, audited); their id when the record cannot be read.
    let patient_label = match patient {
        Some(p) => Some(
            match patient_choices(state, slot, who, std::slice::from_ref(p)).await {
                Ok(mut choices) if !choices.is_empty() => choices.remove(0).label,
                Ok(_) => format!("Patient/{p}"),
                Err(e) => return service_page(e).respond(state, slot),
            },
        ),
        None => None,
    };
    let view = ConsentView {
        client_name: &request.client.name,
        scopes: &items,
        redirect_origin: &redirect_origin,
        csrf: &csrf,
        request: &request.raw,
        patient: patient_id.as_deref(),
        patient_label: patient_label.as_deref(),
        error,
    };
    // The approval's redirect to the app follows the form post: the app's origin must be
    // a form target, or the browser stops the redirect.
    with_cookies(
        state
            .pages
            .respond(StatusCode::OK, &view, &[request.redirect_uri.as_str()]),
        &cookies,
    )
}
