//! `GET /portal/requests`: the patient's requests about their record (Tasks of their
//! compartment: corrections and erasure) with their status, and the form to make one; `POST
//! /portal/requests` (`kind` = `correction` | `erasure`, `text`, optional `target`) sends it
//! through `$request-correction` or `$request-erasure` as the patient.
//!
//! A correction is about one item of the record: `?target=Observation/123` (the summary's
//! "ask for a correction" links) names it, else it is about the personal details (the
//! Patient). The API checks that the item is the patient's own; nothing is changed until
//! staff act on the request.

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;
use serde::Serialize;
use serde_json::{Value, json};

use super::text::{date_text, one_record, resources};
use super::{
    Connect, Query, Visit, checked_form, done_message, not_shown, render, unavailable, visit,
};
use crate::AppState;
use crate::edge::AuditSlot;
use crate::web::session::see_other;

/// Longest request text, in characters (the API's limit).
const MAX_TEXT: usize = 4000;

/// The confirmations of this page.
const DONE: &[(&str, &str)] = &[(
    "sent",
    "Your request has been sent. Staff will review it, and its status will show below.",
)];

/// One request as the page lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(super) struct RequestRow {
    /// "Correction" or "Erasure" (or the Task's own words).
    pub(super) kind: String,
    /// What it is about, in words.
    pub(super) about: String,
    /// The status in words.
    pub(super) status: String,
    /// `open` or `closed` (a class of the badge).
    pub(super) state: &'static str,
    /// When it was made.
    pub(super) date: String,
    /// The patient's own words.
    pub(super) text: String,
    /// For ordering: the `authoredOn` as written.
    #[serde(skip)]
    pub(super) sort: String,
}

/// A Task status in words, and whether it is still open.
fn status_words(status: &str) -> (String, &'static str) {
    let (words, state) = match status {
        "draft" | "requested" | "received" => ("Waiting for review", "open"),
        "accepted" | "ready" | "in-progress" | "on-hold" => ("Being worked on", "open"),
        "completed" => ("Done", "closed"),
        "rejected" => ("Declined", "closed"),
        "cancelled" => ("Cancelled", "closed"),
        "failed" => ("Could not be completed", "closed"),
        "entered-in-error" => ("Withdrawn as a mistake", "closed"),
        other => return (other.to_owned(), "open"),
    };
    (words.to_owned(), state)
}

/// The rows of a Task searchset, newest first.
pub(super) fn request_rows(bundle: &Value) -> Vec<RequestRow> {
    let mut rows: Vec<RequestRow> = resources(bundle)
        .into_iter()
        .filter(|t| t.get("resourceType").and_then(Value::as_str) == Some("Task"))
        .map(|t| {
            let codes: Vec<&str> = t
                .pointer("/code/coding")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|c| c.get("code").and_then(Value::as_str))
                .collect();
            let kind = if codes.contains(&"erasure") {
                "Erasure".to_owned()
            } else if codes.contains(&"change") {
                "Correction".to_owned()
            } else {
                super::text::concept_text(t.get("code"))
            };
            let about = match t.pointer("/focus/reference").and_then(Value::as_str) {
                _ if kind == "Erasure" => "your whole record".to_owned(),
                Some(r) => one_record(r.split('/').next().unwrap_or("")),
                None => String::new(),
            };
            let (status, state) =
                status_words(t.get("status").and_then(Value::as_str).unwrap_or(""));
            let authored = t.get("authoredOn").and_then(Value::as_str).unwrap_or("");
            RequestRow {
                kind,
                about,
                status,
                state,
                date: date_text(authored),
                text: t
                    .pointer("/note/0/text")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
                sort: authored.to_owned(),
            }
        })
        .collect();
    rows.sort_by(|a, b| b.sort.cmp(&a.sort));
    rows
}

/// A `Type/id` target as given in a query or form; `None` for anything else.
pub(super) fn target_of(s: &str) -> Option<(&str, &str)> {
    let (t, id) = s.split_once('/')?;
    let type_ok = !t.is_empty() && t.len() <= 64 && t.bytes().all(|b| b.is_ascii_alphabetic());
    let id_ok = phivault_fhir::Id::parse(id).is_ok();
    (type_ok && id_ok && t.starts_with(|c: char| c.is_ascii_uppercase())).then_some((t, id))
}

/// What the form says it is about.
struct Form<'a> {
    kind: &'a str,
    text: &'a str,
    target: Option<&'a str>,
}

/// The page, with the request form filled in as given.
async fn show(
    state: &AppState,
    headers: &HeaderMap,
    v: &Visit<'_>,
    status: StatusCode,
    form: Form<'_>,
    done: Option<&str>,
    error: Option<&str>,
) -> Response {
    let bundle = match v
        .json(&format!(
            "/fhir/Task?patient=Patient/{}&_count=200",
            v.patient
        ))
        .await
    {
        Ok(b) => b,
        Err(s) => return not_shown(state, headers, "requests", s),
    };
    let about = form
        .target
        .and_then(target_of)
        .map(|(t, _)| one_record(t))
        .unwrap_or_else(|| "your personal details".to_owned());
    let mut context = json!({
        "requests": request_rows(&bundle),
        "kind": form.kind,
        "text": form.text,
        "target": form.target.filter(|t| target_of(t).is_some()).unwrap_or(""),
        "about": about,
        // As text: JSON numbers would not reach the template as numbers.
        "max_text": MAX_TEXT.to_string(),
    });
    if let Some(d) = done {
        context["done"] = json!(d);
    }
    if let Some(e) = error {
        context["error"] = json!(e);
    }
    render(
        state,
        headers,
        status,
        "portal/requests.html",
        "requests",
        context,
    )
}

/// `GET /portal/requests?target=Type/id`.
pub(super) async fn page(
    State(state): State<AppState>,
    slot: AuditSlot,
    connect: Connect,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    let v = match visit(&state, &slot, connect, &headers, "/portal/requests").await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let query = Query::of(raw.as_deref());
    let target = query.one("target").filter(|t| target_of(t).is_some());
    let form = Form {
        kind: if target.is_some() { "correction" } else { "" },
        text: "",
        target,
    };
    let done = done_message(&query, DONE);
    show(&state, &headers, &v, StatusCode::OK, form, done, None).await
}

/// The `Parameters` body of a request.
pub(super) fn parameters(kind: &str, text: &str, target: &str) -> Value {
    let mut parameter = Vec::new();
    if kind == "correction" {
        parameter.push(json!({ "name": "target", "valueReference": { "reference": target } }));
    }
    if !text.is_empty() {
        parameter.push(json!({ "name": "description", "valueString": text }));
    }
    if parameter.is_empty() {
        // FHIR JSON has no empty arrays.
        return json!({ "resourceType": "Parameters" });
    }
    json!({ "resourceType": "Parameters", "parameter": parameter })
}

/// `POST /portal/requests` `kind`, `text`, `target?`.
pub(super) async fn send(
    State(state): State<AppState>,
    slot: AuditSlot,
    connect: Connect,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let form = match checked_form(&state, &headers, body, "requests").await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let v = match visit(&state, &slot, connect, &headers, "/portal/requests").await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let kind = form.one("kind").unwrap_or("");
    let text = form.one("text").unwrap_or("").trim();
    let target = form
        .one("target")
        .filter(|t| !t.is_empty())
        .filter(|t| target_of(t).is_some());
    let again = |error: &'static str, status: StatusCode| {
        let filled = Form { kind, text, target };
        show(&state, &headers, &v, status, filled, None, Some(error))
    };
    let operation = match kind {
        "correction" => "$request-correction",
        "erasure" => "$request-erasure",
        _ => {
            let e = "Please choose what you are asking for: a correction or erasure.";
            return again(e, StatusCode::BAD_REQUEST).await;
        }
    };
    if kind == "correction" && text.is_empty() {
        let e = "Please describe what is wrong and what it should say.";
        return again(e, StatusCode::BAD_REQUEST).await;
    }
    if text.chars().count() > MAX_TEXT {
        let e = "Please keep your description under 4000 characters.";
        return again(e, StatusCode::BAD_REQUEST).await;
    }
    let own = format!("Patient/{}", v.patient);
    let body = parameters(kind, text, target.unwrap_or(&own));
    let path = format!("/fhir/Patient/{}/{operation}", v.patient);
    match v
        .api
        .send_json(Method::POST, &path, "application/fhir+json", &body)
        .await
    {
        Ok(a) if a.ok() => see_other("/portal/requests?done=sent"),
        Ok(a) if a.status == StatusCode::UNPROCESSABLE_ENTITY => {
            let e = "That item could not be found in your record. Please start again from \
                     your record's page, or ask about your personal details.";
            again(e, StatusCode::UNPROCESSABLE_ENTITY).await
        }
        Ok(a) if a.status == StatusCode::BAD_REQUEST => {
            let e = "Your request could not be sent as written. Please check it and try again.";
            again(e, StatusCode::BAD_REQUEST).await
        }
        Ok(a) => not_shown(&state, &headers, "requests", a.status),
        Err(_) => unavailable(&state, &headers, "requests"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_listed_newest_first_in_words() {
        let b = json!({"entry": [
            {"resource": {
                "resourceType": "Task", "status": "requested",
                "code": {"coding": [{"code": "change"}]},
                "focus": {"reference": "Observation/o1"},
                "authoredOn": "2024-05-01T10:00:00Z",
                "note": [{"text": "The weight is wrong"}],
            }},
            {"resource": {
                "resourceType": "Task", "status": "completed",
                "code": {"coding": [{"system": "urn:phivault:task", "code": "erasure"}]},
                "focus": {"reference": "Patient/p1"},
                "authoredOn": "2024-06-01T10:00:00Z",
            }},
        ]});
        let rows = request_rows(&b);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].kind, "Erasure");
        assert_eq!(rows[0].about, "your whole record");
        assert_eq!((rows[0].status.as_str(), rows[0].state), ("Done", "closed"));
        assert_eq!(rows[0].date, "1 June 2024");
        assert_eq!(rows[1].kind, "Correction");
        assert_eq!(rows[1].about, "a test result or measurement");
        assert_eq!(rows[1].status, "Waiting for review");
        assert_eq!(rows[1].text, "The weight is wrong");
    }

    #[test]
    fn targets_are_type_and_id_only() {
        assert_eq!(target_of("Observation/o-1"), Some(("Observation", "o-1")));
        for bad in [
            "Observation",
            "observation/1",
            "Observation/",
            "http://x/Observation/1",
            "Observation/1/_history/2",
            "Obs3rvation/1",
        ] {
            assert_eq!(target_of(bad), None, "{bad}");
        }
    }

    #[test]
    fn parameters_carry_the_target_and_the_words() {
        let p = parameters("correction", "Wrong date", "Condition/c1");
        assert_eq!(
            p["parameter"][0]["valueReference"]["reference"],
            "Condition/c1"
        );
        assert_eq!(p["parameter"][1]["valueString"], "Wrong date");
        let p = parameters("erasure", "", "Patient/p1");
        assert_eq!(p, json!({"resourceType": "Parameters"}));
    }
}
