//! `GET /portal/privacy`: how the record is used, in plain words: the register of processing
//! activities (`GET /privacy/processing-activities`, as the operator configured it), each with
//! why, who receives the data, on what legal basis and for how long; and what happens for each
//! purpose when the patient has not said yes or no.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Serialize;
use serde_json::{Value, json};

use super::text::{many_records, purpose_label};
use super::{Connect, not_shown, render, visit};
use crate::AppState;
use crate::edge::AuditSlot;

/// From this many kinds of records on, a list is "your whole health record".
const WHOLE_RECORD: usize = 10;

/// One activity as the page shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(super) struct Activity {
    pub(super) title: String,
    pub(super) description: String,
    pub(super) purposes: Vec<String>,
    pub(super) data: String,
    pub(super) people: String,
    pub(super) recipients: Vec<String>,
    pub(super) legal_basis: String,
    pub(super) retention: String,
    /// "" when there are none.
    pub(super) transfers: String,
}

/// A purpose's default in words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(super) struct DefaultRule {
    pub(super) purpose: String,
    pub(super) rule: &'static str,
}

/// The heading of an activity: known names in words, others as written.
fn title_of(name: &str) -> String {
    match name {
        "treatment" => "Caring for you".to_owned(),
        "emergency-access" => "Emergency access".to_owned(),
        "research" => "Health research".to_owned(),
        "audit" => "Recording every access".to_owned(),
        other => {
            let words = other.replace(['-', '_'], " ");
            let mut chars = words.chars();
            match chars.next() {
                Some(first) => first.to_uppercase().chain(chars).collect(),
                None => String::new(),
            }
        }
    }
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect()
}

/// The data an activity uses, in words.
fn data_of(classes: &[String]) -> String {
    if classes.len() >= WHOLE_RECORD {
        return "Your whole health record".to_owned();
    }
    let words: Vec<String> = classes.iter().map(|c| many_records(c)).collect();
    let text = words.join(", ");
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// The activities of a register answer.
pub(super) fn activities(register: &Value) -> Vec<Activity> {
    register
        .get("processing_activities")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|a| {
            let text = |k: &str| a.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
            Activity {
                title: title_of(&text("name")),
                description: text("description"),
                purposes: strings(a.get("purposes"))
                    .iter()
                    .map(|p| purpose_label(p))
                    .collect(),
                data: data_of(&strings(a.get("data_classes"))),
                people: strings(a.get("data_subjects")).join(", "),
                recipients: strings(a.get("recipients")),
                legal_basis: text("legal_basis"),
                retention: text("retention"),
                transfers: text("transfers"),
            }
        })
        .collect()
}

/// The consent defaults of a register answer, in words, by purpose name.
pub(super) fn defaults(register: &Value) -> Vec<DefaultRule> {
    let mut out: Vec<DefaultRule> = register
        .get("consent_defaults")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(code, rule)| DefaultRule {
            purpose: purpose_label(code),
            rule: if rule.as_str() == Some("permit") {
                "Allowed unless you say no"
            } else {
                "Only if you agree"
            },
        })
        .collect();
    out.sort_by(|a, b| a.purpose.cmp(&b.purpose));
    out
}

/// `GET /portal/privacy`.
pub(super) async fn page(
    State(state): State<AppState>,
    slot: AuditSlot,
    connect: Connect,
    headers: HeaderMap,
) -> Response {
    let v = match visit(&state, &slot, connect, &headers, "/portal/privacy").await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let register = match v.json("/privacy/processing-activities").await {
        Ok(r) => r,
        Err(s) => return not_shown(&state, &headers, "privacy", s),
    };
    let context = json!({
        "activities": activities(&register),
        "defaults": defaults(&register),
    });
    render(
        &state,
        &headers,
        StatusCode::OK,
        "portal/privacy.html",
        "privacy",
        context,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_register_in_plain_words() {
        let register = json!({
            "processing_activities": [
                {
                    "name": "research",
                    "description": "Research apps...",
                    "purposes": ["HRESCH"],
                    "legal_basis": "consent",
                    "data_subjects": ["patients"],
                    "data_classes": ["Observation", "Condition"],
                    "recipients": ["researchers"],
                    "retention": "until withdrawn",
                },
                {
                    "name": "quality_checks",
                    "description": "",
                    "purposes": ["HOPERAT"],
                    "data_classes": (0..12).map(|i| format!("T{i}")).collect::<Vec<_>>(),
                    "transfers": "none outside the EEA",
                },
            ],
            "consent_defaults": {"TREAT": "permit", "HRESCH": "deny"},
        });
        let a = activities(&register);
        assert_eq!(a[0].title, "Health research");
        assert_eq!(a[0].purposes, ["Research"]);
        assert_eq!(a[0].data, "Test results and measurements, conditions");
        assert_eq!(a[0].transfers, "");
        assert_eq!(a[1].title, "Quality checks");
        assert_eq!(a[1].data, "Your whole health record");
        assert_eq!(a[1].transfers, "none outside the EEA");
        let d = defaults(&register);
        assert_eq!(d[0].purpose, "Research");
        assert_eq!(d[0].rule, "Only if you agree");
        assert_eq!(d[1].purpose, "Treatment");
        assert_eq!(d[1].rule, "Allowed unless you say no");
    }
}
