//! `GET /portal/access`: who looked at the record, when, what they did and why: the patient's
//! `$access-log` read as the patient (the API decides what they may see: no network addresses,
//! no other patient named), 100 entries a page, newest first, with the searches that touched
//! the record. Emergency (break-the-glass) accesses are highlighted; a person acting through
//! an app is shown with the app; the patient's own visits are "You" and can be hidden.

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Serialize;
use serde_json::{Value, json};

use super::text::{instant_text, many_records, one_record, purpose_label, resources, role_label};
use super::{Connect, Query, not_shown, render, visit};
use crate::AppState;
use crate::edge::AuditSlot;

/// Entries a page.
const PAGE: u32 = 100;

/// One line of the access log as the patient reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(super) struct AccessRow {
    /// When ("6 May 2024, 07:08 UTC").
    pub(super) time: String,
    /// Who: a name, an app's name, or "You".
    pub(super) who: String,
    /// Their role in words ("Clinician").
    pub(super) role: String,
    /// The app a person acted through ("" when none).
    pub(super) app: String,
    /// What they did, in words ("Looked at a test result or measurement").
    pub(super) action: String,
    /// Why (the purposes of use in words, "Not stated" when none).
    pub(super) purpose: String,
    /// "" when it went through, else "Refused" or "Failed".
    pub(super) outcome: String,
    /// An emergency (break-the-glass) access.
    pub(super) emergency: bool,
    /// The patient themselves.
    pub(super) you: bool,
}

/// `GET /portal/access?before=<cursor>&show=others`.
pub(super) async fn page(
    State(state): State<AppState>,
    slot: AuditSlot,
    connect: Connect,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    let v = match visit(&state, &slot, connect, &headers, "/portal/access").await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let query = Query::of(raw.as_deref());
    // A cursor is a sequence number: digits only, passed on as the API's `_cursor`.
    let before = query
        .one("before")
        .filter(|c| !c.is_empty() && c.len() <= 19 && c.bytes().all(|b| b.is_ascii_digit()));
    let others_only = query.one("show") == Some("others");
    let mut path = format!("/fhir/Patient/{}/$access-log?_count={PAGE}", v.patient);
    if let Some(c) = before {
        path.push_str("&_cursor=");
        path.push_str(c);
    }
    let bundle = match v.json(&path).await {
        Ok(b) => b,
        Err(status) => return not_shown(&state, &headers, "access", status),
    };
    let own = v.who.principal.id();
    let mut rows = rows_of(&bundle, own);
    let shown_all = rows.len();
    if others_only {
        rows.retain(|r| !r.you);
    }
    let show = if others_only { "&show=others" } else { "" };
    let next = next_cursor(&bundle).map(|c| format!("/portal/access?before={c}{show}"));
    // Numbers go to templates as text (JSON numbers keep their written form and would not
    // reach the template as numbers).
    let hidden = shown_all - rows.len();
    let context = json!({
        "rows": rows,
        "hidden": if hidden > 0 { hidden.to_string() } else { String::new() },
        "others_only": others_only,
        "first_page": before.is_none(),
        "next": next,
        "total": bundle.get("total").and_then(Value::as_u64).map(|t| t.to_string()),
        "incomplete": incomplete(&bundle),
    });
    render(
        &state,
        &headers,
        StatusCode::OK,
        "portal/access.html",
        "access",
        context,
    )
}

/// Whether the API left entries out (an integrity problem it reported to the operator).
fn incomplete(bundle: &Value) -> bool {
    bundle
        .get("entry")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|e| e.pointer("/search/mode").and_then(Value::as_str) == Some("outcome"))
}

/// The cursor of the bundle's `next` link (its `_cursor`, digits only).
pub(super) fn next_cursor(bundle: &Value) -> Option<String> {
    let url = bundle
        .get("link")
        .and_then(Value::as_array)?
        .iter()
        .find(|l| l.get("relation").and_then(Value::as_str) == Some("next"))?
        .get("url")
        .and_then(Value::as_str)?;
    let query = url.split_once('?')?.1;
    query
        .split('&')
        .filter_map(|p| p.strip_prefix("_cursor="))
        .find(|c| !c.is_empty() && c.len() <= 19 && c.bytes().all(|b| b.is_ascii_digit()))
        .map(str::to_owned)
}

/// The rows of an `$access-log` Bundle, in its order; `own_user` is the patient's account
/// (their own accesses are "You").
pub(super) fn rows_of(bundle: &Value, own_user: &str) -> Vec<AccessRow> {
    resources(bundle)
        .into_iter()
        .filter(|r| r.get("resourceType").and_then(Value::as_str) == Some("AuditEvent"))
        .map(|e| row(e, own_user))
        .collect()
}

/// One AuditEvent as a row.
fn row(e: &Value, own_user: &str) -> AccessRow {
    let agents: Vec<&Value> = e
        .get("agent")
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let requestor = agents
        .iter()
        .find(|a| a.get("requestor").and_then(Value::as_bool) != Some(false))
        .copied();
    let app = agents
        .iter()
        .find(|a| a.get("requestor").and_then(Value::as_bool) == Some(false))
        .and_then(|a| a.pointer("/who/display"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let you = requestor
        .and_then(|a| a.pointer("/who/identifier"))
        .is_some_and(|i| {
            i.get("system").and_then(Value::as_str) == Some("urn:phivault:user")
                && i.get("value").and_then(Value::as_str) == Some(own_user)
        });
    let who = if you {
        "You".to_owned()
    } else {
        requestor
            .and_then(|a| a.pointer("/who/display"))
            .and_then(Value::as_str)
            .unwrap_or("Unknown")
            .to_owned()
    };
    let role = requestor
        .and_then(|a| a.pointer("/role/0/text"))
        .and_then(Value::as_str)
        .map(role_label)
        .unwrap_or_default();
    let emergency = e
        .pointer("/meta/security")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|c| c.get("code").and_then(Value::as_str) == Some("BTG"));
    let purposes: Vec<String> = e
        .get("purposeOfEvent")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| p.pointer("/coding/0/code").and_then(Value::as_str))
        .map(purpose_label)
        .collect();
    let purpose = if purposes.is_empty() {
        "Not stated".to_owned()
    } else {
        purposes.join(", ")
    };
    let outcome = match e.get("outcome").and_then(Value::as_str) {
        Some("4") => "Refused",
        Some("8") => "Failed",
        _ => "",
    }
    .to_owned();
    AccessRow {
        time: e
            .get("recorded")
            .and_then(Value::as_str)
            .map(instant_text)
            .unwrap_or_default(),
        who,
        role,
        app,
        action: action_text(e),
        purpose,
        outcome,
        emergency,
        you,
    }
}

/// What an AuditEvent did, in words: a verb and the records.
fn action_text(e: &Value) -> String {
    let type_code = e
        .pointer("/type/code")
        .and_then(Value::as_str)
        .unwrap_or("");
    let subtype = e
        .pointer("/subtype/0/code")
        .and_then(Value::as_str)
        .unwrap_or("");
    let action = e.get("action").and_then(Value::as_str).unwrap_or("");
    // The resource the entry names: `Type/id` (one record) or a type alone (a search).
    let resource = e
        .get("entity")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|en| en.pointer("/role/code").and_then(Value::as_str) == Some("4"))
        .and_then(|en| en.get("what"));
    let one = resource
        .and_then(|w| w.get("reference"))
        .and_then(Value::as_str)
        .and_then(|r| r.split('/').next())
        .map(one_record);
    let many = resource
        .and_then(|w| w.get("type"))
        .and_then(Value::as_str)
        .map(many_records);
    // No resource but the patient: the entry is about the Patient itself.
    let about_patient = e
        .get("entity")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|en| en.pointer("/role/code").and_then(Value::as_str) == Some("1"));
    let fallback = if about_patient {
        one_record("Patient")
    } else {
        "your record".to_owned()
    };
    let request = one.as_deref() == Some(one_record("Task").as_str());
    let things = one.or_else(|| many.clone()).unwrap_or(fallback);
    match (type_code, subtype) {
        ("110106", _) => "Downloaded a copy of your record".to_owned(),
        ("110101", _) => "Looked at your access log".to_owned(),
        (_, "search-type") => format!(
            "Searched {}",
            many.unwrap_or_else(|| "your record".to_owned())
        ),
        (_, "read" | "vread") => format!("Looked at {things}"),
        (_, "history-instance") => format!("Looked at the history of {things}"),
        (_, "create") => format!("Added {things}"),
        (_, "update") => format!("Changed {things}"),
        (_, "delete") => format!("Deleted {things}"),
        _ if request && matches!(action, "C" | "E") => {
            "Made a request about your record".to_owned()
        }
        _ => match action {
            "C" => format!("Added {things}"),
            "R" => format!("Looked at {things}"),
            "U" => format!("Changed {things}"),
            "D" => format!("Deleted {things}"),
            _ => format!("Used {things}"),
        },
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn event(agent: Value, extra: Value) -> Value {
        let mut e = json!({
            "resourceType": "AuditEvent",
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest"},
            "subtype": [{"code": "read"}],
            "action": "R",
            "recorded": "2024-05-06T07:08:09.000Z",
            "outcome": "0",
            "agent": [agent],
            "entity": [
                {"what": {"reference": "Patient/p1"}, "role": {"code": "1"}},
                {"what": {"reference": "Observation/o1"}, "role": {"code": "4"}},
            ],
        });
        if let (Some(e), Some(extra)) = (e.as_object_mut(), extra.as_object()) {
            for (k, v) in extra {
                e.insert(k.clone(), v.clone());
            }
        }
        e
    }

    fn user(id: &str, name: &str, role: &str) -> Value {
        json!({
            "role": [{"text": role}],
            "who": {"identifier": {"system": "urn:phivault:user", "value": id}, "display": name},
            "requestor": true,
        })
    }

    fn bundle(events: Vec<Value>) -> Value {
        let entry: Vec<Value> = events
            .into_iter()
            .map(|r| json!({"resource": r, "search": {"mode": "match"}}))
            .collect();
        json!({"resourceType": "Bundle", "entry": entry, "link": [
            {"relation": "self", "url": "https://x/fhir/Patient/p1/$access-log?_count=50"},
            {"relation": "next", "url": "https://x/fhir/Patient/p1/$access-log?_count=50&_cursor=41"},
        ]})
    }

    #[test]
    fn rows_name_who_when_what_and_why() {
        let doc = event(
            user("u-doc", "Dr Ada Smith", "clinician"),
            json!({"purposeOfEvent": [{"coding": [{"code": "TREAT"}]}]}),
        );
        let rows = rows_of(&bundle(vec![doc]), "u-me");
        assert_eq!(
            rows,
            vec![AccessRow {
                time: "6 May 2024, 07:08 UTC".to_owned(),
                who: "Dr Ada Smith".to_owned(),
                role: "Clinician".to_owned(),
                app: String::new(),
                action: "Looked at a test result or measurement".to_owned(),
                purpose: "Treatment".to_owned(),
                outcome: String::new(),
                emergency: false,
                you: false,
            }]
        );
    }

    #[test]
    fn emergencies_apps_searches_refusals_and_the_patient_themselves() {
        let btg = event(
            user("u-doc", "Dr Who", "clinician"),
            json!({
                "meta": {"security": [{"code": "BTG"}]},
                "purposeOfEvent": [{"coding": [{"code": "ETREAT"}]}],
            }),
        );
        let mut through_app = event(user("u-doc", "Dr Who", "clinician"), json!({}));
        through_app["agent"].as_array_mut().unwrap().push(json!({
            "who": {"identifier": {"system": "urn:phivault:client", "value": "c1"}, "display": "Heart Diary"},
            "requestor": false,
        }));
        let search = event(
            user("u-me", "Alex", "patient"),
            json!({
                "subtype": [{"code": "search-type"}],
                "entity": [{"what": {"type": "Condition"}, "role": {"code": "4"}}],
            }),
        );
        let refused = event(
            json!({
                "role": [{"text": "app"}],
                "who": {"identifier": {"system": "urn:phivault:client", "value": "r"}, "display": "Study App"},
                "requestor": true,
            }),
            json!({
                "outcome": "4",
                "purposeOfEvent": [{"coding": [{"code": "HRESCH"}]}],
            }),
        );
        let export = event(
            user("u-me", "Alex", "patient"),
            json!({"type": {"code": "110106"}, "subtype": [{"code": "operation"}], "action": "E"}),
        );
        let outcome = json!({"resourceType": "OperationOutcome"});
        let mut b = bundle(vec![btg, through_app, search, refused, export]);
        b["entry"].as_array_mut().unwrap().insert(
            0,
            json!({"resource": outcome, "search": {"mode": "outcome"}}),
        );
        assert!(incomplete(&b));
        let rows = rows_of(&b, "u-me");
        assert_eq!(rows.len(), 5);
        assert!(rows[0].emergency);
        assert_eq!(rows[0].purpose, "Emergency treatment");
        assert_eq!(rows[1].app, "Heart Diary");
        assert_eq!(rows[1].who, "Dr Who");
        assert!(!rows[1].emergency);
        assert_eq!(rows[2].who, "You");
        assert!(rows[2].you);
        assert_eq!(rows[2].action, "Searched conditions");
        assert_eq!(rows[2].purpose, "Not stated");
        assert_eq!(rows[3].outcome, "Refused");
        assert_eq!(rows[3].who, "Study App");
        assert_eq!(rows[3].role, "App");
        assert!(!rows[3].you);
        assert_eq!(rows[4].action, "Downloaded a copy of your record");
        // The Patient itself, and a request the patient made.
        let own = event(
            user("u-doc", "Dr Who", "clinician"),
            json!({"entity": [{"what": {"reference": "Patient/p1"}, "role": {"code": "1"}}]}),
        );
        let task = event(
            user("u-me", "Alex", "patient"),
            json!({"subtype": [], "action": "E", "entity": [
                {"what": {"reference": "Task/t1"}, "role": {"code": "4"}},
            ]}),
        );
        let rows = rows_of(&bundle(vec![own, task]), "u-me");
        assert_eq!(rows[0].action, "Looked at your personal details");
        assert_eq!(rows[1].action, "Made a request about your record");
        assert_eq!(next_cursor(&b).as_deref(), Some("41"));
    }

    #[test]
    fn a_foreign_cursor_is_not_followed() {
        let b = json!({"link": [{"relation": "next", "url": "https://x/?_cursor=1;drop"}]});
        assert_eq!(next_cursor(&b), None);
        assert_eq!(next_cursor(&json!({})), None);
        assert!(!incomplete(&json!({})));
    }
}
