//! The entities of an `AuditEvent`: the patients an entry concerns, the resource with the
//! sensitivity labels of what the request decided on or returned, the summary of refused
//! requests, a research export's configuration and the request id.

use phivault_audit::AuditEntry;
use phivault_policy::{CONFIDENTIALITY_SYSTEM, Label};
use serde_json::{Value, json};

use super::{
    ACT_CODE_SYSTEM, BALP_ENTITY_SYSTEM, DEID_CONFIGURATION_SYSTEM, ENTITY_TYPE_SYSTEM,
    OBJECT_ROLE_SYSTEM, REQUEST_ID_SYSTEM, View, coding, instant,
};

/// The entities of an entry: the patients it concerns, the resource (with the entry's
/// sensitivity labels, [`security_labels`]; on an entity of their own when the entry names no
/// resource apart from its patients), and the request. In a patient's view, the only patient
/// named is the viewer (an entry about several patients, a search for example, does not tell
/// one patient who the others were).
pub(super) fn entities(entry: &AuditEntry, view: &View) -> Vec<Value> {
    let shown = |p: &str| match view {
        View::Auditor => true,
        View::Patient { patient, .. } => p == patient,
    };
    let mut out = Vec::new();
    let mut concerned: Vec<&String> = entry.patient_id.iter().collect();
    concerned.extend(entry.patients.iter());
    for patient in concerned.into_iter().filter(|p| shown(p)) {
        out.push(json!({
            "what": { "reference": format!("Patient/{patient}") },
            "type": coding(ENTITY_TYPE_SYSTEM, "1", "Person"),
            "role": coding(OBJECT_ROLE_SYSTEM, "1", "Patient"),
        }));
    }
    let resource = match (&entry.resource_type, &entry.resource_id) {
        (Some(t), Some(id)) if t == "Patient" && !shown(id) => Some(json!({
            "what": { "type": t },
            "type": coding(ENTITY_TYPE_SYSTEM, "2", "System Object"),
            "role": coding(OBJECT_ROLE_SYSTEM, "4", "Domain Resource"),
        })),
        (Some(t), Some(id)) if !(t == "Patient" && entry.concerns(id)) => Some(json!({
            "what": { "reference": format!("{t}/{id}") },
            "type": coding(ENTITY_TYPE_SYSTEM, "2", "System Object"),
            "role": coding(OBJECT_ROLE_SYSTEM, "4", "Domain Resource"),
        })),
        (Some(t), None) => Some(json!({
            "what": { "type": t },
            "type": coding(ENTITY_TYPE_SYSTEM, "2", "System Object"),
            "role": coding(OBJECT_ROLE_SYSTEM, "4", "Domain Resource"),
        })),
        _ => None,
    };
    match (resource, security_labels(entry, view)) {
        (Some(mut r), Some(labels)) => {
            r["securityLabel"] = labels;
            out.push(r);
        }
        (Some(r), None) => out.push(r),
        (None, Some(labels)) => out.push(json!({
            "type": coding(ENTITY_TYPE_SYSTEM, "2", "System Object"),
            "role": coding(OBJECT_ROLE_SYSTEM, "4", "Domain Resource"),
            "description": "the resources the request decided on or returned",
            "securityLabel": labels,
        })),
        (None, None) => {}
    }
    if let Some(summary) = &entry.refusals {
        out.push(refusals_entity(summary, view));
    }
    if let Some(hash) = &entry.configuration {
        out.push(json!({
            "what": { "identifier": { "system": DEID_CONFIGURATION_SYSTEM, "value": hash } },
            "type": coding(ENTITY_TYPE_SYSTEM, "2", "System Object"),
            "description": "the de-identification configuration the research export ran with",
        }));
    }
    out.push(json!({
        "what": { "identifier": { "system": REQUEST_ID_SYSTEM, "value": entry.request_id } },
        "type": coding(BALP_ENTITY_SYSTEM, "XrequestId", "Request Id"),
    }));
    out
}

/// The summary of refused unauthenticated requests as an entity whose details are the count
/// (`count`), the first and last time (`first`, `last`, FHIR instants), each route asked for
/// (`route`), each sampled client address of the overflow summary (`address`, auditors
/// only) and whether the lists were cut short (`truncated`).
fn refusals_entity(summary: &phivault_audit::RefusalSummary, view: &View) -> Value {
    let detail = |t: &str, v: String| json!({ "type": t, "valueString": v });
    let mut details = vec![
        detail("count", summary.count.to_string()),
        detail("first", instant(summary.first)),
        detail("last", instant(summary.last)),
    ];
    details.extend(summary.routes.iter().map(|r| detail("route", r.clone())));
    if matches!(view, View::Auditor) {
        details.extend(
            summary
                .addresses
                .iter()
                .map(|a| detail("address", a.clone())),
        );
    }
    details.push(detail("truncated", summary.truncated.to_string()));
    json!({
        "type": coding(ENTITY_TYPE_SYSTEM, "2", "System Object"),
        "name": "refused unauthenticated requests",
        "detail": details,
    })
}

/// The entry's sensitivity labels as `securityLabel` codings (`R` in v3-Confidentiality, the
/// others in v3-ActCode), codes only; `None` when there are none to show. A patient sees them
/// only on an entry about nobody else: the labels of a search are those of every patient's
/// resources it returned, and would tell one patient something of the others'.
fn security_labels(entry: &AuditEntry, view: &View) -> Option<Value> {
    if entry.labels.is_empty() {
        return None;
    }
    if let View::Patient { patient, .. } = view
        && entry.patients_concerned().iter().any(|p| p != patient)
    {
        return None;
    }
    let codings = entry
        .labels
        .iter()
        .map(|code| {
            let system = match Label::parse(code) {
                Ok(Label::Restricted) => CONFIDENTIALITY_SYSTEM,
                _ => ACT_CODE_SYSTEM,
            };
            json!({ "system": system, "code": code })
        })
        .collect();
    Some(Value::Array(codings))
}
