//! Tests of the AuditEvent view of the trail: the mapping of entries, the patient's and the
//! auditor's views, search parameters and paging.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Method, Request, header};
use phivault_auth::{Accounts, LoginRequest, Password, PasswordHasher};
use phivault_fhir::Validator;
use phivault_store::{NoAudit, Store, StoreOptions};
use tower::ServiceExt;

use super::*;

const PASSWORD: &str = "plum-orchard-lantern-47";

fn entry(seq: u64) -> AuditEntry {
    AuditEntry {
        seq,
        time: 1_767_225_600_123, // 2026-01-01T00:00:00.123Z
        actor_id: "u-clin".to_owned(),
        actor_kind: ActorKind::User,
        role: Some("clinician".to_owned()),
        purpose: Some("TREAT".to_owned()),
        break_glass: false,
        action: "GET /fhir/{type}/{id}".to_owned(),
        resource_type: Some("Observation".to_owned()),
        resource_id: Some("o1".to_owned()),
        patient_id: Some("pa".to_owned()),
        outcome: Outcome::Allowed,
        source_address: Some("192.0.2.7".to_owned()),
        request_id: "r-1".to_owned(),
        actor_ref: None,
        patients: Vec::new(),
        refusals: None,
        configuration: None,
        labels: Vec::new(),
        alert: None,
        via_client: None,
    }
}

/// The official R4 schema's definition `name`, compiled as the fhir crate does (with its
/// `ResourceList` stub: contained and Bundle resources are checked to be objects).
fn schema(name: &str) -> jsonschema::Validator {
    let mut schema: Value = serde_json::from_str(include_str!(
        "../../../phivault-fhir/schema/fhir.r4.schema.json"
    ))
    .unwrap();
    schema["definitions"]["ResourceList"] = json!({ "type": "object" });
    let uri = "http://hl7.org/fhir/json-schema/4.0";
    let registry = jsonschema::Registry::new()
        .draft(jsonschema::Draft::Draft6)
        .add(uri, schema)
        .and_then(|b| b.prepare())
        .unwrap();
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft6)
        .with_pattern_options(jsonschema::PatternOptions::regex())
        .with_registry(&registry)
        .offline()
        .build(&json!({ "$ref": format!("{uri}#/definitions/{name}") }))
        .unwrap()
}

fn assert_valid(v: &jsonschema::Validator, value: &Value) {
    let errors: Vec<String> = v
        .iter_errors(value)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{errors:?}\n{value:#}");
}

/// Entries of every shape the trail holds.
fn samples() -> Vec<AuditEntry> {
    let mut out = vec![entry(1)];
    let mut e = entry(2);
    e.break_glass = true;
    e.purpose = Some("ETREAT".to_owned());
    out.push(e);
    let mut e = entry(3);
    e.action = "POST /auth/login".to_owned();
    e.actor_id = "anonymous".to_owned();
    e.actor_kind = ActorKind::Anonymous;
    e.role = None;
    e.purpose = None;
    e.resource_type = None;
    e.resource_id = None;
    e.patient_id = None;
    e.outcome = Outcome::Denied;
    out.push(e);
    let mut e = entry(4);
    e.action = "GET /fhir/{type}".to_owned();
    e.actor_id = "pvcl_x".to_owned();
    e.actor_kind = ActorKind::Client;
    e.role = Some("app".to_owned());
    e.resource_id = None;
    e.outcome = Outcome::Error;
    out.push(e);
    let mut e = entry(5);
    e.action = "create".to_owned();
    e.resource_type = Some("Patient".to_owned());
    e.resource_id = Some("pa".to_owned());
    e.source_address = None;
    out.push(e);
    let mut e = entry(6);
    e.action = "cli import".to_owned();
    e.actor_id = "-".to_owned();
    e.actor_kind = ActorKind::System;
    e.role = None;
    out.push(e);
    let mut e = entry(7);
    e.action = "POST /fhir".to_owned();
    out.push(e);
    let mut e = entry(8);
    e.action = "GET /fhir/Patient/{id}/$access-log".to_owned();
    e.role = Some("patient".to_owned());
    e.actor_id = "u-other-patient".to_owned();
    e.outcome = Outcome::Denied;
    out.push(e);
    out.push(refusals_sample(9));
    let mut e = entry(10);
    e.labels = vec!["HIV".to_owned(), "PSY".to_owned(), "R".to_owned()];
    out.push(e);
    let mut e = entry(11);
    e.resource_type = Some("Patient".to_owned());
    e.resource_id = Some("pa".to_owned());
    e.labels = vec!["ETH".to_owned()];
    out.push(e);
    out
}

fn refusals_sample(seq: u64) -> AuditEntry {
    let mut e = AuditEntry::refusal_summary(
        phivault_audit::RefusalSummary {
            count: 500,
            first: 1_767_225_600_000,
            last: 1_767_225_659_000,
            routes: vec!["GET /fhir/{type}".to_owned()],
            addresses: vec!["198.51.100.3".to_owned()],
            truncated: true,
        },
        None,
        "r-9".to_owned(),
        1_767_225_660_000,
    );
    e.seq = seq;
    e
}

#[test]
fn a_refusal_summary_is_a_security_alert_with_its_counts() {
    let e = audit_event(&refusals_sample(9), None, &View::Auditor);
    assert_eq!(e["type"]["code"], "110113", "{e}");
    assert_eq!(e["outcome"], "4");
    let details = &e["entity"][0]["detail"];
    let value = |t: &str| -> Vec<&str> {
        details
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["type"] == t)
            .map(|d| d["valueString"].as_str().unwrap())
            .collect()
    };
    assert_eq!(value("count"), ["500"]);
    assert_eq!(value("first"), ["2026-01-01T00:00:00.000Z"]);
    assert_eq!(value("route"), ["GET /fhir/{type}"]);
    assert_eq!(value("address"), ["198.51.100.3"]);
    assert_eq!(value("truncated"), ["true"]);
    let p = audit_event(
        &refusals_sample(9),
        None,
        &View::Patient {
            user_id: "u".to_owned(),
            patient: "p".to_owned(),
        },
    );
    assert!(!p.to_string().contains("198.51.100.3"), "{p}");
}

#[test]
fn audit_events_are_valid_fhir_r4() {
    let v = schema("AuditEvent");
    let views = [
        View::Auditor,
        View::Patient {
            user_id: "u-pa".to_owned(),
            patient: "pa".to_owned(),
        },
    ];
    for e in samples() {
        for view in &views {
            let event = audit_event(&e, Some("Dr Ann Smith"), view);
            assert_valid(&v, &event);
            assert_eq!(event["id"], e.seq.to_string());
            for required in ["type", "recorded", "agent", "source"] {
                assert!(!event[required].is_null(), "{required}: {event}");
            }
        }
    }
    // And a wrong one is refused: the schema is really applied.
    let mut bad = audit_event(&entry(1), None, &View::Auditor);
    bad["outcome"] = json!(4);
    assert!(v.iter_errors(&bad).next().is_some());
    bad["outcome"] = json!("0");
    bad["recorded"] = json!("yesterday");
    assert!(v.iter_errors(&bad).next().is_some());
}

#[test]
fn representation_of_a_read() {
    let e = audit_event(&entry(1), Some("Dr Ann Smith"), &View::Auditor);
    assert_eq!(e["type"]["system"], EVENT_TYPE_SYSTEM);
    assert_eq!(e["type"]["code"], "rest");
    assert_eq!(e["subtype"][0]["system"], INTERACTION_SYSTEM);
    assert_eq!(e["subtype"][0]["code"], "read");
    assert_eq!(e["action"], "R");
    assert_eq!(e["recorded"], "2026-01-01T00:00:00.123Z");
    assert_eq!(e["outcome"], "0");
    assert_eq!(
        e["purposeOfEvent"][0]["coding"][0]["system"],
        PURPOSE_SYSTEM
    );
    assert_eq!(e["purposeOfEvent"][0]["coding"][0]["code"], "TREAT");
    assert!(e["meta"].is_null(), "no BTG flag on a normal access: {e}");
    let agent = &e["agent"][0];
    assert_eq!(agent["who"]["identifier"]["system"], "urn:phivault:user");
    assert_eq!(agent["who"]["identifier"]["value"], "u-clin");
    assert_eq!(agent["who"]["display"], "Dr Ann Smith");
    assert_eq!(agent["role"][0]["coding"][0]["code"], "clinician");
    assert_eq!(agent["requestor"], true);
    assert_eq!(agent["network"]["address"], "192.0.2.7");
    let refs: Vec<&str> = e["entity"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|x| x["what"]["reference"].as_str())
        .collect();
    assert_eq!(refs, ["Patient/pa", "Observation/o1"]);
    assert_eq!(e["entity"][0]["role"]["code"], "1");
    assert_eq!(e["entity"][2]["what"]["identifier"]["value"], "r-1");

    // The patient's view: no network address.
    let p = audit_event(
        &entry(1),
        Some("Dr Ann Smith"),
        &View::Patient {
            user_id: "u-pa".to_owned(),
            patient: "pa".to_owned(),
        },
    );
    assert!(p["agent"][0]["network"].is_null(), "{p}");
    assert!(!p.to_string().contains("192.0.2.7"));
    assert_eq!(p["agent"][0]["who"]["display"], "Dr Ann Smith");
}

/// The entities of an event that carry a `securityLabel`, with its codes as `system|code`.
fn labelled_entities(event: &Value) -> Vec<(Value, Vec<String>)> {
    event["entity"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| !x["securityLabel"].is_null())
        .map(|x| {
            let codes = x["securityLabel"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| {
                    format!(
                        "{}|{}",
                        c["system"].as_str().unwrap(),
                        c["code"].as_str().unwrap()
                    )
                })
                .collect();
            (x.clone(), codes)
        })
        .collect()
}

#[test]
fn sensitivity_labels_are_security_labels_of_the_resource() {
    let own = View::Patient {
        user_id: "u-pa".to_owned(),
        patient: "pa".to_owned(),
    };
    let confidentiality = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality";
    let mut e = entry(1);
    e.labels = vec!["PSY".to_owned(), "R".to_owned()];
    for view in [&View::Auditor, &own] {
        let v = audit_event(&e, None, view);
        let labelled = labelled_entities(&v);
        assert_eq!(labelled.len(), 1, "{v}");
        // On the entity of the resource read, codes only.
        assert_eq!(labelled[0].0["what"]["reference"], "Observation/o1", "{v}");
        assert_eq!(
            labelled[0].1,
            [
                format!("{ACT_CODE_SYSTEM}|PSY"),
                format!("{confidentiality}|R")
            ]
        );
        assert!(labelled[0].0["securityLabel"][0]["display"].is_null());
    }
    // A read of the Patient itself has no resource entity: the labels get one of their own.
    let mut p = e.clone();
    p.resource_type = Some("Patient".to_owned());
    p.resource_id = Some("pa".to_owned());
    let v = audit_event(&p, None, &View::Auditor);
    let labelled = labelled_entities(&v);
    assert_eq!(labelled.len(), 1, "{v}");
    assert!(labelled[0].0["what"].is_null(), "{v}");
    assert_eq!(labelled[0].0["role"]["code"], "4", "{v}");
    // An entry about other patients too: auditors see its labels, the patient does not (they
    // may be another patient's).
    let mut search = e;
    search.set_patients(["pb"]);
    assert_eq!(
        labelled_entities(&audit_event(&search, None, &View::Auditor)).len(),
        1
    );
    let v = audit_event(&search, None, &own);
    assert!(labelled_entities(&v).is_empty(), "{v}");
    // Without labels, none.
    let v = audit_event(&entry(1), None, &View::Auditor);
    assert!(!v.to_string().contains("securityLabel"), "{v}");
}

#[test]
fn break_the_glass_is_flagged() {
    let mut e = entry(2);
    e.break_glass = true;
    e.purpose = Some("ETREAT".to_owned());
    let v = audit_event(&e, None, &View::Auditor);
    assert_eq!(
        v["meta"]["security"],
        json!([{ "system": ACT_CODE_SYSTEM, "code": "BTG", "display": "break the glass" }])
    );
    let purposes: Vec<&str> = v["purposeOfEvent"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["coding"][0]["code"].as_str().unwrap())
        .collect();
    assert_eq!(purposes, ["ETREAT"]);
    // Flagged even if the recorded purpose said otherwise.
    e.purpose = Some("TREAT".to_owned());
    let v = audit_event(&e, None, &View::Auditor);
    assert_eq!(v["meta"]["security"][0]["code"], "BTG");
    assert!(v["purposeOfEvent"].to_string().contains("ETREAT"));
}

#[test]
fn other_patients_are_not_named_in_a_patients_view() {
    let mut e = entry(8);
    e.role = Some("patient".to_owned());
    e.actor_id = "u-other".to_owned();
    let view = View::Patient {
        user_id: "u-pa".to_owned(),
        patient: "pa".to_owned(),
    };
    let v = audit_event(&e, Some("zoe.private"), &view);
    assert_eq!(
        v["agent"][0]["who"],
        json!({ "display": "a patient account" })
    );
    assert!(!v.to_string().contains("zoe.private") && !v.to_string().contains("u-other"));
    // Their own account is named; auditors see everyone.
    e.actor_id = "u-pa".to_owned();
    let v = audit_event(&e, Some("me.myself"), &view);
    assert_eq!(v["agent"][0]["who"]["display"], "me.myself");
    e.actor_id = "u-other".to_owned();
    let v = audit_event(&e, Some("zoe.private"), &View::Auditor);
    assert_eq!(v["agent"][0]["who"]["display"], "zoe.private");
}

#[test]
fn types_and_subtypes() {
    let cases: &[(&str, &str, Option<&str>)] = &[
        ("GET /fhir/{type}/{id}", "rest", Some("read")),
        (
            "GET /fhir/{type}/{id}/_history/{vid}",
            "rest",
            Some("vread"),
        ),
        (
            "GET /fhir/{type}/{id}/_history",
            "rest",
            Some("history-instance"),
        ),
        ("GET /fhir/{type}", "rest", Some("search-type")),
        ("POST /fhir/{type}/_search", "rest", Some("search-type")),
        ("POST /fhir/{type}", "rest", Some("create")),
        ("PUT /fhir/{type}/{id}", "rest", Some("update")),
        ("DELETE /fhir/{type}/{id}", "rest", Some("delete")),
        ("GET /fhir/metadata", "rest", Some("capabilities")),
        ("POST /fhir", "rest", None),
        ("create", "rest", Some("create")),
        ("update", "rest", Some("update")),
        ("delete", "rest", Some("delete")),
        ("POST /auth/login", "110114", Some("110122")),
        ("POST /auth/logout", "110114", Some("110123")),
        ("POST /oauth/token", "110114", Some("110122")),
        (
            "POST /oauth/token refresh_token reuse: family revoked refused invalid_grant",
            "110114",
            Some("110122"),
        ),
        ("POST /oauth/revoke", "110114", Some("110123")),
        ("POST /oauth/authorize/signin", "110114", Some("110122")),
        (
            "POST /oauth/authorize/consent client pvcl_x approved",
            "110114",
            None,
        ),
        ("DELETE /auth/apps/{client_id}", "110114", None),
        ("POST /auth/totp/enroll", "110114", None),
        ("POST /admin/users", "110136", None),
        ("GET /admin/break-glass", "110101", None),
        ("GET /audit/checkpoint", "110101", None),
        ("GET /fhir/AuditEvent", "110101", Some("search-type")),
        ("GET /fhir/AuditEvent/{id}", "110101", Some("read")),
        (
            "GET /fhir/Patient/{id}/$access-log",
            "110101",
            Some("operation"),
        ),
        ("cli import", "110100", None),
        ("GET (no route)", "110100", None),
    ];
    for (action, ty, sub) in cases {
        let (t, s) = event_type(action);
        assert_eq!(t["code"], *ty, "{action}");
        assert_eq!(
            s.as_ref().and_then(|s| s["code"].as_str()),
            *sub,
            "{action}"
        );
    }
    assert_eq!(outcome_code(Outcome::Allowed), "0");
    assert_eq!(outcome_code(Outcome::Denied), "4");
    assert_eq!(outcome_code(Outcome::Error), "8");
    assert_eq!(instant(0), "1970-01-01T00:00:00.000Z");
    assert_eq!(instant(1_767_225_600_123), "2026-01-01T00:00:00.123Z");
}

#[test]
fn practitioner_names() {
    let name = |v: Value| practitioner_name(&json!({ "name": [v] }));
    assert_eq!(
        name(json!({ "text": " Dr Ann Smith ", "family": "X" })).as_deref(),
        Some("Dr Ann Smith")
    );
    assert_eq!(
        name(json!({ "prefix": ["Dr"], "given": ["Ann", "B"], "family": "Smith" })).as_deref(),
        Some("Dr Ann B Smith")
    );
    assert_eq!(name(json!({ "family": "Smith" })).as_deref(), Some("Smith"));
    assert_eq!(name(json!({ "use": "official" })), None);
    assert_eq!(practitioner_name(&json!({ "name": [] })), None);
    assert_eq!(practitioner_name(&json!({})), None);
}

fn pairs(q: &[(&str, &str)]) -> Vec<(String, String)> {
    q.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn parsed(q: &[(&str, &str)]) -> Result<AuditSearch, String> {
    parse_search(&pairs(q), Params::Search).map_err(|e| e.to_string())
}

const JAN1: i64 = 1_767_225_600_000;
const DAY: i64 = 86_400_000;

#[test]
fn dates_and_prefixes() {
    assert_eq!(date_range("2026"), Some((JAN1, JAN1 + 365 * DAY)));
    assert_eq!(date_range("2026-01"), Some((JAN1, JAN1 + 31 * DAY)));
    assert_eq!(date_range("2026-12").map(|r| r.1), Some(JAN1 + 365 * DAY));
    assert_eq!(date_range("2026-01-01"), Some((JAN1, JAN1 + DAY)));
    assert_eq!(
        date_range("2026-01-01T00:00:05Z"),
        Some((JAN1 + 5000, JAN1 + 6000))
    );
    assert_eq!(
        date_range("2026-01-01T00:00:05.250Z"),
        Some((JAN1 + 5250, JAN1 + 5251))
    );
    assert_eq!(
        date_range("2026-01-01T01:00:00+01:00"),
        Some((JAN1, JAN1 + 1000))
    );
    for bad in [
        "",
        "notadate",
        "26",
        "2026-1",
        "2026-13",
        "2026-02-30",
        "2026-01-01T00:00Z",
        "2026-01-01T00:00:00",
        "0000",
        "2026-01-01 ",
        "+2026",
    ] {
        assert_eq!(date_range(bad), None, "{bad:?}");
    }
    let q = parsed(&[("date", "ge2026-01-01"), ("date", "lt2026-02-01")]).unwrap();
    assert_eq!(q.query.since, Some(JAN1));
    assert_eq!(q.query.until, Some(JAN1 + 31 * DAY));
    let q = parsed(&[("date", "2026-01-01")]).unwrap();
    assert_eq!(
        (q.query.since, q.query.until),
        (Some(JAN1), Some(JAN1 + DAY))
    );
    let q = parsed(&[("date", "gt2026-01-01"), ("date", "le2026-01-03")]).unwrap();
    assert_eq!(
        (q.query.since, q.query.until),
        (Some(JAN1 + DAY), Some(JAN1 + 3 * DAY))
    );
    // The narrowest bounds win.
    let q = parsed(&[("date", "ge2025"), ("date", "ge2026"), ("date", "lt2027")]).unwrap();
    assert_eq!(q.query.since, Some(JAN1));
    let e = parsed(&[("date", "ne2026")]).unwrap_err();
    assert!(e.contains("date") && e.contains("not supported"), "{e}");
}

#[test]
fn search_parameters() {
    let q = parsed(&[
        ("patient", "Patient/pa"),
        ("agent", "pvcl_1234"),
        ("action", "R"),
        ("outcome", "4"),
        ("_count", "10"),
        ("_cursor", "42"),
    ])
    .unwrap();
    assert_eq!(
        q.query,
        AuditQuery {
            patient: Some("pa".to_owned()),
            actor: Some("pvcl_1234".to_owned()),
            since: None,
            until: None,
            action: Some("R".to_owned()),
            outcome: Some("denied".to_owned()),
            before_seq: Some(42),
            address_between: None,
        }
    );
    assert_eq!(q.count, 10);
    // Links repeat the filters, not the paging.
    assert_eq!(q.link_pairs.len(), 4);
    assert_eq!(
        parsed(&[("patient", "pa")])
            .unwrap()
            .query
            .patient
            .as_deref(),
        Some("pa")
    );
    assert_eq!(parsed(&[]).unwrap().count, DEFAULT_COUNT);
    assert_eq!(parsed(&[("_count", "100000")]).unwrap().count, MAX_COUNT);
    assert_eq!(parsed(&[("_count", "0")]).unwrap().count, 0);
    for o in ["0", "4", "8"] {
        assert!(parsed(&[("outcome", o)]).is_ok());
    }

    // Each refusal names the parameter and never echoes the value.
    let cases: &[(&str, &str)] = &[
        ("date", "notadate-SECRET"),
        ("outcome", "9"),
        ("outcome", "SECRET"),
        ("action", "X"),
        ("action", "R,C"),
        ("patient", "Patient/a b SECRET"),
        ("patient", "Observation/SECRET$"),
        ("agent", "two words SECRET"),
        ("agent", ""),
        ("_count", "-1"),
        ("_count", "ten"),
        ("_cursor", "0"),
        ("_cursor", "abc"),
    ];
    for (name, value) in cases {
        let e = parsed(&[(name, value)]).unwrap_err();
        assert!(e.contains(name), "{name}={value}: {e}");
        assert!(!e.contains("SECRET"), "{name}={value}: {e}");
    }
    let e = parsed(&[("unknown", "1")]).unwrap_err();
    assert!(e.contains("unknown search parameter unknown"), "{e}");
    let e = parsed(&[("patient", "a"), ("patient", "b")]).unwrap_err();
    assert!(e.contains("patient") && e.contains("once"), "{e}");
    // The access log's patient is its path's; agent searches are the auditors'.
    for name in ["patient", "agent", "_sort"] {
        let e = parse_search(&pairs(&[(name, "x")]), Params::AccessLog)
            .unwrap_err()
            .to_string();
        assert!(e.contains(name), "{e}");
    }
    assert!(
        parse_search(
            &pairs(&[("date", "2026"), ("_count", "5")]),
            Params::AccessLog
        )
        .is_ok()
    );
}

fn row_of(e: &AuditEntry) -> AuditRow {
    AuditRow {
        seq: e.seq,
        tenant: "default".to_owned(),
        body: e.canonical_bytes().unwrap(),
        entry_hash: vec![0; 32],
        prev_hash: vec![0; 32],
        time: e.time,
        actor: e.actor_id.clone(),
        patient: e.patient_id.clone(),
        action: Some(e.action_code().to_owned()),
        outcome: Some(e.outcome.as_str().to_owned()),
        chain_mac: None,
        patients: e.patients_concerned(),
    }
}

#[test]
fn rows_whose_columns_disagree_with_their_body_are_left_out() {
    let e = entry(9);
    assert_eq!(entry_of(&row_of(&e)), Some(e.clone()));
    // Rows written before schema v4 have no action and outcome columns yet.
    let mut r = row_of(&e);
    r.action = None;
    r.outcome = None;
    assert!(entry_of(&r).is_some());
    let alterations: Vec<fn(&mut AuditRow)> = vec![
        |r| r.patient = Some("pb".to_owned()),
        |r| r.patient = None,
        |r| r.actor = "u-someone".to_owned(),
        |r| r.time += 1,
        |r| r.action = Some("D".to_owned()),
        |r| r.outcome = Some("denied".to_owned()),
        |r| r.patients.clear(),
        |r| r.patients.push("pz".to_owned()),
        |r| r.seq = 10,
        |r| r.body.push(b' '),
        |r| r.body = b"{}".to_vec(),
    ];
    for (i, alter) in alterations.iter().enumerate() {
        let mut r = row_of(&e);
        alter(&mut r);
        assert_eq!(entry_of(&r), None, "alteration {i}");
    }
    // Filters are re-checked on the body.
    let q = AuditQuery {
        patient: Some("pb".to_owned()),
        ..AuditQuery::default()
    };
    assert!(!matches(&e, &q));
    assert!(matches(&e, &AuditQuery::default()));
}

// -----------------------------------------------------------------------------------
// Over the router

struct Ctx {
    _dir: tempfile::TempDir,
    state: AppState,
}

async fn ctx() -> Ctx {
    let dir = tempfile::tempdir().unwrap();
    let mut key = [0u8; 32];
    phivault_crypto::random_bytes(&mut key).unwrap();
    let keys = phivault_crypto::StaticKeyProvider::from_hex(hex::encode(key));
    let opts = StoreOptions::new(format!("sqlite://{}/t.db", dir.path().display()));
    let store = Store::open(&opts, &keys).await.unwrap();
    let mut state = AppState::new(
        store.clone(),
        Arc::new(Validator::new().unwrap()),
        None,
        "https://127.0.0.1:8443/fhir",
        64 * 1024,
    )
    .await
    .unwrap();
    state.accounts = Accounts::with_hasher(store, PasswordHasher::with_params(8, 1, 1).unwrap());
    Ctx { _dir: dir, state }
}

impl Ctx {
    async fn user(&self, username: &str, role: Role) -> String {
        self.state
            .accounts
            .create_user(username, Password::new(PASSWORD), role, &NoAudit)
            .await
            .unwrap()
    }

    async fn login(&self, username: &str) -> String {
        let out = self
            .state
            .accounts
            .login(LoginRequest {
                username: username.to_owned(),
                password: Password::new(PASSWORD),
                totp: None,
                recovery_code: None,
                address: std::net::IpAddr::from([127, 0, 0, 1]),
            })
            .await
            .unwrap();
        assert!(!out.enrolment_only);
        out.token.expose().to_owned()
    }

    async fn get(&self, token: &str, uri: &str) -> (StatusCode, Value) {
        let mut req = Request::builder()
            .method(Method::GET)
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap();
        req.extensions_mut()
            .insert(ConnectInfo(std::net::SocketAddr::from(([127, 0, 0, 1], 1))));
        let resp = crate::router(self.state.clone())
            .oneshot(req)
            .await
            .unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }
}

fn events(bundle: &Value) -> Vec<Value> {
    bundle["entry"]
        .as_array()
        .map(|e| {
            e.iter()
                .filter(|x| x["search"]["mode"] == "match")
                .map(|x| x["resource"].clone())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn routes_names_views_and_integrity() {
    let c = ctx().await;
    let st = &c.state;
    // A clinician linked to a Practitioner, a clinician without one, and two patients.
    let prac = st
        .store
        .create(
            st.validator
                .validate(
                    json!({
                        "resourceType": "Practitioner",
                        "name": [{ "given": ["Ann"], "family": "Quillfeather" }],
                    }),
                    None,
                )
                .unwrap(),
            &NoAudit,
        )
        .await
        .unwrap();
    let clin = c.user("clin.linked", Role::Clinician).await;
    st.accounts
        .link_practitioner("clin.linked", &prac.id, &NoAudit)
        .await
        .unwrap();
    let bare = c.user("clin.bare", Role::Clinician).await;
    let pat_a = c.user("pat.a", Role::Patient).await;
    let pat_b = c.user("pat.b", Role::Patient).await;
    let a = Id::parse("pa").unwrap();
    st.accounts
        .link_patient("pat.a", &a, &NoAudit)
        .await
        .unwrap();
    st.accounts
        .link_patient("pat.b", &Id::parse("pb").unwrap(), &NoAudit)
        .await
        .unwrap();
    let (client, _) = st
        .accounts
        .create_client("Lab feed", "system/Observation.rs", None, &NoAudit)
        .await
        .unwrap();

    // Entries about A: a normal read, a break-the-glass read, an app's search, B's
    // refused attempt; and one about B.
    let mut e = entry(0);
    e.actor_id = clin.clone();
    st.audit.append(&e).await.unwrap();
    let mut e = entry(0);
    e.actor_id = bare.clone();
    e.break_glass = true;
    e.purpose = Some("ETREAT".to_owned());
    st.audit.append(&e).await.unwrap();
    let mut e = entry(0);
    e.actor_id = client.clone();
    e.actor_kind = ActorKind::Client;
    e.role = Some("app".to_owned());
    e.action = "GET /fhir/{type}".to_owned();
    e.resource_id = None;
    st.audit.append(&e).await.unwrap();
    let mut e = entry(0);
    e.actor_id = pat_b.clone();
    e.role = Some("patient".to_owned());
    e.outcome = Outcome::Denied;
    st.audit.append(&e).await.unwrap();
    let mut e = entry(0);
    e.actor_id = clin.clone();
    e.patient_id = Some("pb".to_owned());
    st.audit.append(&e).await.unwrap();

    let token_a = c.login("pat.a").await;
    let token_b = c.login("pat.b").await;

    // The static routes win over /fhir/{type}...; the generic ones still answer.
    let (s, b) = c.get(&token_a, "/fhir/Patient/pa/$access-log").await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["type"], "searchset");
    assert_eq!(b["total"], 4, "{b}");
    let ev = events(&b);
    assert_eq!(ev.len(), 4);
    // Newest first: B's attempt, the app, break-the-glass, the normal read.
    let who: Vec<&str> = ev
        .iter()
        .map(|e| e["agent"][0]["who"]["display"].as_str().unwrap())
        .collect();
    assert_eq!(
        who,
        [
            "a patient account",
            "Lab feed",
            "clin.bare",
            "Ann Quillfeather"
        ]
    );
    let roles: Vec<&str> = ev
        .iter()
        .map(|e| e["agent"][0]["role"][0]["text"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["patient", "app", "clinician", "clinician"]);
    assert_eq!(ev[2]["meta"]["security"][0]["code"], "BTG");
    assert!(ev[3]["meta"].is_null());
    assert!(
        !b.to_string().contains("192.0.2.7"),
        "no addresses for patients"
    );
    assert!(!b.to_string().contains(&pat_b), "no other patient's id");
    let (s, _) = c.get(&token_a, "/fhir/Patient/pa").await;
    assert_ne!(s, StatusCode::METHOD_NOT_ALLOWED);
    let (s, b2) = c.get(&token_a, "/fhir/Patient/pa/_history").await;
    assert_ne!(
        b2["issue"][0]["diagnostics"], "no such endpoint",
        "{s} {b2}"
    );

    // Paging: one at a time, following next links, no duplicates.
    let mut seen = Vec::new();
    let mut next = Some("/fhir/Patient/pa/$access-log?_count=1".to_owned());
    while let Some(uri) = next {
        let uri = uri.replace("https://127.0.0.1:8443", "");
        let (s, b) = c.get(&token_a, &uri).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        seen.extend(
            events(&b)
                .iter()
                .map(|e| e["id"].as_str().unwrap().to_owned()),
        );
        next = b["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == "next")
            .map(|l| l["url"].as_str().unwrap().to_owned());
    }
    // Each look at the log is itself in the log (newer entries, above the cursor): the
    // pages hold the first look, then the four entries, each once, newest first.
    let seqs: Vec<u64> = seen.iter().map(|s| s.parse().unwrap()).collect();
    assert_eq!(seqs, [6, 4, 3, 2, 1], "{seen:?}");

    // B may not read A's log (nor may anyone without a patient link); B's own is B's.
    let (s, b) = c.get(&token_b, "/fhir/Patient/pa/$access-log").await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
    assert_eq!(b["issue"][0]["diagnostics"], "access denied: no-permit");
    let (s, nobody) = c
        .get(&token_b, "/fhir/Patient/nobody-at-all/$access-log")
        .await;
    assert_eq!((s, &nobody), (StatusCode::FORBIDDEN, &b));
    let (s, b) = c.get(&token_b, "/fhir/Patient/pb/$access-log").await;
    assert_eq!(s, StatusCode::OK);
    let ids: Vec<String> = events(&b)
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    // B's log: entry 5 (B's refused look at A's log is about A, so it is in A's).
    assert!(ids.contains(&"5".to_owned()), "{b}");
    for id in ["1", "2", "3", "4"] {
        assert!(!ids.contains(&id.to_owned()), "{b}");
    }
    // The refused attempt by B was recorded in A's log.
    let (_, b) = c
        .get(&token_a, "/fhir/Patient/pa/$access-log?outcome=4")
        .await;
    assert!(
        events(&b)
            .iter()
            .any(|e| e["subtype"][0]["code"] == "operation"),
        "{b}"
    );

    // The AuditEvent API is for auditors only: a patient is refused, even about
    // themselves.
    for uri in [
        "/fhir/AuditEvent",
        "/fhir/AuditEvent?patient=pa",
        "/fhir/AuditEvent/1",
    ] {
        let (s, b) = c.get(&token_a, uri).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{uri}: {b}");
    }
    let _ = pat_a;

    // Integrity: a row whose patient column and patient rows were moved to A is left out
    // of A's log and reported; the rest is served.
    for statement in [
        "UPDATE audit_entries SET patient = 'pa' WHERE seq = 5",
        "DELETE FROM audit_entry_patients WHERE seq = 5",
        "INSERT INTO audit_entry_patients (seq, patient) VALUES (5, 'pa')",
    ] {
        sqlx::query(statement)
            .execute(st.store.pool())
            .await
            .unwrap();
    }
    let (s, b) = c
        .get(&token_a, "/fhir/Patient/pa/$access-log?_count=100")
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let ids: Vec<String> = events(&b)
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert!(!ids.contains(&"5".to_owned()), "{b}");
    assert!(ids.contains(&"1".to_owned()), "{b}");
    let outcome = b["entry"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["search"]["mode"] == "outcome")
        .expect("an outcome entry says entries were left out");
    assert!(
        outcome["resource"]
            .to_string()
            .contains("could not be shown"),
        "{outcome}"
    );
}
