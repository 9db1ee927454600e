use phivault_audit::RefusalSummary;

use super::*;
use crate::config::{RuleSetting, check_rules, default_rules};

const MIN: i64 = 60_000;
/// A Wednesday, 2026-12-02T12:00:00Z.
const NOON: i64 = 1_796_212_800_000;

fn entry(seq: u64, time: i64, actor: &str, action: &str, patient: Option<&str>) -> AuditEntry {
    AuditEntry {
        seq,
        time,
        actor_id: actor.to_owned(),
        actor_kind: ActorKind::User,
        role: Some("clinician".to_owned()),
        purpose: Some("TREAT".to_owned()),
        break_glass: false,
        action: action.to_owned(),
        resource_type: Some("Observation".to_owned()),
        resource_id: Some(format!("o{seq}")),
        patient_id: patient.map(str::to_owned),
        outcome: Outcome::Allowed,
        source_address: Some("10.0.0.5".to_owned()),
        request_id: format!("r{seq}"),
        actor_ref: None,
        patients: Vec::new(),
        refusals: None,
        configuration: None,
        labels: Vec::new(),
        alert: None,
        via_client: None,
    }
}

const READ: &str = "GET /fhir/{type}/{id}";

fn defaults() -> Evaluator {
    Evaluator::new(check_rules(None).unwrap())
}

fn raised(found: &[Finding]) -> Vec<&str> {
    found.iter().map(|f| f.alert().rule.as_str()).collect()
}

#[test]
fn fifty_one_patients_in_ten_minutes_raise_one_alert_and_fifty_do_not() {
    let mut ev = defaults();
    let mut alerts = Vec::new();
    for i in 0..120u64 {
        let e = entry(
            i + 1,
            NOON + i as i64 * 1000,
            "u1",
            READ,
            Some(&format!("p{i}")),
        );
        let found = ev.observe(&e);
        if i < 50 {
            assert!(found.is_empty(), "patient {i}: {found:?}");
        }
        for f in found {
            let Finding::Raise(a) = f else {
                panic!("a distinct-patients alert needs no check")
            };
            ev.note_alert(&a);
            alerts.push(a);
        }
    }
    assert_eq!(alerts.len(), 1, "quiet for a window after the alert");
    let a = &alerts[0];
    assert_eq!(
        (a.rule.as_str(), a.subject.as_str(), a.count, a.threshold),
        ("many-patients", "u1", 51, 50)
    );
    assert_eq!((a.first_seq, a.last_seq), (1, 51));
}

#[test]
fn the_window_slides_on_entry_times() {
    let mut ev = defaults();
    // One new patient every 13 seconds: never more than 47 in ten minutes.
    for i in 0..300u64 {
        let e = entry(
            i + 1,
            NOON + i as i64 * 13_000,
            "u1",
            READ,
            Some(&format!("p{i}")),
        );
        assert!(ev.observe(&e).is_empty(), "entry {i}");
    }
}

#[test]
fn a_search_counts_every_patient_it_returned() {
    let mut ev = defaults();
    let mut e = entry(1, NOON, "u1", "GET /fhir/{type}", None);
    e.set_patients((0..60).map(|i| format!("p{i}")));
    assert_eq!(raised(&ev.observe(&e)), ["many-patients"]);
}

#[test]
fn twenty_patients_of_a_normal_day_raise_nothing() {
    let mut ev = defaults();
    let mut seq = 0;
    for p in 0..20 {
        for r in 0..15 {
            seq += 1;
            let time = NOON - 4 * 60 * MIN + p * 20 * MIN + r * 1000;
            let e = entry(seq, time, "u1", READ, Some(&format!("p{p}")));
            assert!(ev.observe(&e).is_empty(), "{seq}");
        }
    }
}

#[test]
fn denials_count_summaries_and_anonymous_callers_by_address() {
    let mut ev = defaults();
    let mut found = Vec::new();
    for i in 0..10u64 {
        let mut e = entry(i + 1, NOON + i as i64, "-", "POST /auth/login", None);
        e.actor_kind = ActorKind::Anonymous;
        e.outcome = Outcome::Denied;
        found.extend(ev.observe(&e));
    }
    assert!(
        found.is_empty(),
        "ten denials are the threshold, not past it"
    );
    let mut summary = entry(
        11,
        NOON + 100,
        "anonymous",
        "unauthenticated refusals",
        None,
    );
    summary.actor_kind = ActorKind::Anonymous;
    summary.outcome = Outcome::Denied;
    summary.refusals = Some(RefusalSummary {
        count: 40,
        first: NOON,
        last: NOON + 100,
        routes: vec!["GET /fhir/{type}".to_owned()],
        addresses: Vec::new(),
        truncated: false,
    });
    let found = ev.observe(&summary);
    assert_eq!(raised(&found), ["repeated-denials"]);
    let a = found[0].alert();
    assert_eq!(
        (a.subject_kind.as_str(), a.subject.as_str()),
        ("address", "10.0.0.5")
    );
    // Ten entries, and the summary's forty less the first of them (already counted).
    assert_eq!(a.count, 49);
}

#[test]
fn break_glass_on_a_fourth_patient_within_the_hour_raises() {
    let mut ev = defaults();
    for i in 0..4u64 {
        let mut e = entry(
            i + 1,
            NOON + i as i64 * MIN,
            "u1",
            READ,
            Some(&format!("p{i}")),
        );
        e.break_glass = true;
        let found = ev.observe(&e);
        assert_eq!(raised(&found).contains(&"break-glass-burst"), i == 3, "{i}");
    }
}

fn off_hours_rule() -> Vec<RuleSetting> {
    vec![RuleSetting {
        hours: Some("07:00-19:00".to_owned()),
        utc_offset: Some("+01:00".to_owned()),
        ..RuleSetting::new("nights", RuleKind::OffHours)
    }]
}

#[test]
fn off_hours_uses_the_sites_offset_days_and_roles() {
    let rules = check_rules(Some(off_hours_rule())).unwrap();
    let at = |time: i64, role: &str| {
        let mut ev = Evaluator::new(rules.clone());
        let mut e = entry(1, time, "u1", READ, Some("p1"));
        e.role = Some(role.to_owned());
        !ev.observe(&e).is_empty()
    };
    assert!(!at(NOON, "clinician"), "13:00 local on a Wednesday");
    assert!(at(NOON + 6 * 60 * MIN, "clinician"), "19:00 local");
    assert!(
        !at(NOON - 5 * 60 * MIN - 59 * MIN + MIN, "clinician"),
        "07:01 local"
    );
    assert!(at(NOON - 7 * 60 * MIN, "clinician"), "06:00 local");
    assert!(at(NOON + 3 * 24 * 60 * MIN, "clinician"), "Saturday noon");
    assert!(
        !at(NOON + 6 * 60 * MIN, "patient"),
        "patients are not staff"
    );
}

#[test]
fn labelled_access_asks_for_a_care_check_per_patient() {
    let mut ev = defaults();
    let mut e = entry(1, NOON, "u1", "GET /fhir/{type}", Some("p1"));
    e.set_patients(["p1", "p2"]);
    assert!(
        !raised(&ev.observe(&e)).contains(&"labelled-without-care"),
        "no label, no check"
    );
    e.seq = 2;
    e.labels = vec!["PSY".to_owned()];
    let found = ev.observe(&e);
    let checks: Vec<_> = found
        .iter()
        .filter_map(|f| match f {
            Finding::IfNoCare { user, patient, .. } => Some((user.as_str(), patient.as_str())),
            _ => None,
        })
        .collect();
    assert_eq!(checks, [("u1", "p1"), ("u1", "p2")]);
    e.seq = 3;
    e.labels = vec!["R".to_owned()];
    assert!(
        !ev.observe(&e)
            .iter()
            .any(|f| matches!(f, Finding::IfNoCare { .. })),
        "only the watched labels"
    );
}

#[test]
fn new_addresses_and_first_bulk_use_are_checked_once_then_known() {
    let mut ev = defaults();
    let mut e = entry(1, NOON, "app1", READ, Some("p1"));
    e.actor_kind = ActorKind::Client;
    e.role = Some("app".to_owned());
    let found = ev.observe(&e);
    assert!(
        matches!(found.as_slice(), [Finding::IfNewAddress { address, .. }] if address == "10.0.0.5")
    );
    e.seq = 2;
    assert!(ev.observe(&e).is_empty(), "seen once, known");
    e.seq = 3;
    e.action = "GET /fhir/$export".to_owned();
    let found = ev.observe(&e);
    assert!(
        matches!(found.as_slice(), [Finding::IfUnusualBulk { .. }]),
        "{found:?}"
    );
    e.seq = 4;
    assert!(ev.observe(&e).is_empty());
}

#[test]
fn a_grant_by_an_admin_is_checked_and_other_actions_are_not() {
    let mut ev = defaults();
    let mut e = entry(1, NOON, "admin1", GRANT_ACTIONS[0], Some("p1"));
    e.role = Some("admin".to_owned());
    e.source_address = None;
    let found = ev.observe(&e);
    assert!(
        matches!(found.as_slice(), [Finding::IfSelfOrNewGrantee { patient, .. }] if patient == "p1")
    );
}

#[test]
fn alerts_already_in_the_trail_keep_a_replay_quiet() {
    let rules = check_rules(Some(default_rules())).unwrap();
    let mut live = Evaluator::new(rules.clone());
    let entries: Vec<_> = (0..60u64)
        .map(|i| {
            entry(
                i + 1,
                NOON + i as i64 * 1000,
                "u1",
                READ,
                Some(&format!("p{i}")),
            )
        })
        .collect();
    let mut first = None;
    for e in &entries {
        for f in live.observe(e) {
            live.note_alert(f.alert());
            first.get_or_insert(f.alert().clone());
        }
    }
    let first = first.unwrap();
    // A restart: the alert is read back first, then the same entries are replayed.
    let mut replay = Evaluator::new(rules);
    replay.note_alert(&first);
    for e in &entries {
        assert!(replay.observe(e).is_empty(), "seq {}", e.seq);
    }
    // Its own alert entries are never counted.
    let mut own = entry(99, NOON, "phivault", "alert", None);
    own.actor_kind = ActorKind::System;
    own.alert = Some(first);
    assert!(replay.observe(&own).is_empty());
}

#[test]
fn a_baseline_raises_for_a_principal_far_above_its_usual_peak() {
    let mut ev = defaults();
    let day = 24 * 60 * MIN;
    let mut seq = 0;
    // Yesterday: five patients.
    for p in 0..5 {
        seq += 1;
        ev.observe(&entry(
            seq,
            NOON - day + p * MIN,
            "u1",
            READ,
            Some(&format!("y{p}")),
        ));
    }
    // Today: the 16th patient within ten minutes is more than three times five.
    let mut rules = Vec::new();
    for p in 0..16 {
        seq += 1;
        let found = ev.observe(&entry(
            seq,
            NOON + p * 1000,
            "u1",
            READ,
            Some(&format!("t{p}")),
        ));
        rules.extend(found.iter().map(|f| (p, f.alert().threshold)));
        for f in &found {
            ev.note_alert(f.alert());
        }
    }
    assert_eq!(rules, [(15, 5)]);
}
