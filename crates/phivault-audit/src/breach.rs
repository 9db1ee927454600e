//! Breach-impact reports: whose data one actor, or one network, reached in a window, read
//! from the trail to notify the patients and the regulator.
//!
//! Rules kept here:
//! - **Every patient the actor's allowed requests concerned** is listed: the patient of a
//!   read or a write, every patient a search, `$everything` or Bundle returned, every patient
//!   an export released (each entry records them: `patient_id` and `patients`). Refused
//!   requests exposed nothing and are only counted.
//! - **Indexed, not scanned**: an actor's entries are read through the trail's (actor, time)
//!   index, newest first, page by page; a network's through the (address, time) index, the
//!   network being one range of address keys ([`crate::network_range`]), so each costs what
//!   the actor or the network did, not what the trail holds. Each entry's address is checked
//!   again in its body.
//! - Per patient: accesses by kind (read, search, export, change, other), by resource type,
//!   by sensitivity label (the data classes: `PSY`, `ETH`, `HIV`, `R`, as each entry's
//!   `labels` records the labels of what the request decided on or returned), and the first
//!   and last access.
//! - **Labels err on the side of notifying.** An entry records the union of the labels of
//!   every resource it decided on or returned, not which patient's resource carried which:
//!   an entry about several patients (a search, a Bundle) counts each of its labels for every
//!   patient it concerns. So a patient may be told of a data class that was another
//!   patient's, but is never left untold of one of theirs.
//! - Ids only, as in the trail: no names, no content.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;
use phivault_store::Store;
use phivault_store::audit::AuditQuery;
use serde::Serialize;

use crate::{AuditEntry, AuditError, Outcome};

/// Entries read per page.
const PAGE: u32 = 5000;

/// Whose requests a report covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// Entries by this actor id (a user id or a client id).
    Actor(String),
    /// Entries whose client address lies in this network.
    Network(IpNet),
}

/// What one request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessKind {
    /// A read of one resource (or its versions).
    Read,
    /// A search, `$everything`, a Bundle read.
    Search,
    /// A Bulk Data export, a patient's package, a de-identified export.
    Export,
    /// A create, update, delete or erasure.
    Change,
    /// Anything else that concerned a patient.
    Other,
}

impl AccessKind {
    /// The kind of an entry's action (`METHOD /route/template`, or `cli ...`).
    pub fn of(action: &str) -> AccessKind {
        if action.ends_with("/$export")
            || action.contains("$export-file")
            || action == "cli export-patient"
            || action == "cli deidentify"
        {
            return AccessKind::Export;
        }
        let (method, route) = action.split_once(' ').unwrap_or((action, ""));
        match method {
            "GET" | "HEAD" if route.ends_with("/{id}") || route.contains("/{id}/_history") => {
                AccessKind::Read
            }
            "GET" | "HEAD" if route.starts_with("/fhir") => AccessKind::Search,
            "POST" if route.ends_with("/_search") => AccessKind::Search,
            "POST" | "PUT" | "PATCH" | "DELETE" if route.starts_with("/fhir") => AccessKind::Change,
            "create" | "update" | "delete" | "erase" => AccessKind::Change,
            _ => AccessKind::Other,
        }
    }
}

/// One patient in a report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Affected {
    /// The patient's id.
    pub patient: String,
    /// First access (unix ms).
    pub first_ms: i64,
    /// Last access (unix ms).
    pub last_ms: i64,
    /// Allowed requests that concerned the patient.
    pub accesses: u64,
    /// By kind.
    pub by_kind: BTreeMap<AccessKind, u64>,
    /// By resource type (the type a request named).
    pub by_resource_type: BTreeMap<String, u64>,
    /// By sensitivity label (data class): allowed requests concerning the patient whose
    /// entry carries the label. An entry's labels are attributed to every patient it
    /// concerns (an over-approximation for entries about several patients).
    pub by_label: BTreeMap<String, u64>,
}

/// A breach-impact report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BreachReport {
    /// Start of the window (unix ms, inclusive).
    pub from_ms: i64,
    /// End of the window (unix ms, exclusive).
    pub to_ms: i64,
    /// Allowed requests covered.
    pub requests: u64,
    /// Refused requests (they exposed nothing).
    pub refused: u64,
    /// The actors whose requests were covered.
    pub actors: Vec<String>,
    /// The patients reached, by id.
    pub patients: Vec<Affected>,
}

/// The report of `selector`'s requests in `from_ms..to_ms`.
pub async fn breach_report(
    store: &Store,
    selector: &Selector,
    from_ms: i64,
    to_ms: i64,
) -> Result<BreachReport, AuditError> {
    let mut query = AuditQuery {
        actor: match selector {
            Selector::Actor(id) => Some(id.clone()),
            Selector::Network(_) => None,
        },
        address_between: match selector {
            Selector::Actor(_) => None,
            Selector::Network(net) => Some(crate::network_range(net)),
        },
        since: Some(from_ms),
        until: Some(to_ms),
        ..AuditQuery::default()
    };
    let mut patients: BTreeMap<String, Affected> = BTreeMap::new();
    let mut actors = BTreeSet::new();
    let (mut requests, mut refused) = (0u64, 0u64);
    // An empty window reads nothing.
    let mut more = from_ms < to_ms;
    while more {
        let rows = store.audit_search(&query, PAGE).await?;
        more = rows.len() == PAGE as usize;
        let Some(last) = rows.last() else { break };
        query.before_seq = Some(last.seq);
        for row in &rows {
            let entry = AuditEntry::from_canonical(&row.body)
                .ok_or(AuditError::Malformed { seq: row.seq })?;
            if let Selector::Network(net) = selector {
                let inside = entry
                    .source_address
                    .as_deref()
                    .and_then(|a| a.parse::<std::net::IpAddr>().ok())
                    .is_some_and(|a| net.contains(&a));
                if !inside {
                    continue;
                }
            }
            if entry.outcome != Outcome::Allowed {
                refused += 1;
                continue;
            }
            requests += 1;
            actors.insert(entry.actor_id.clone());
            add(&mut patients, &entry);
        }
    }
    Ok(BreachReport {
        from_ms,
        to_ms,
        requests,
        refused,
        actors: actors.into_iter().collect(),
        patients: patients.into_values().collect(),
    })
}

/// Adds one allowed entry to the patients it concerns.
fn add(patients: &mut BTreeMap<String, Affected>, entry: &AuditEntry) {
    let kind = AccessKind::of(&entry.action);
    for patient in entry.patients_concerned() {
        let a = patients.entry(patient.clone()).or_insert_with(|| Affected {
            patient,
            first_ms: entry.time,
            last_ms: entry.time,
            accesses: 0,
            by_kind: BTreeMap::new(),
            by_resource_type: BTreeMap::new(),
            by_label: BTreeMap::new(),
        });
        a.first_ms = a.first_ms.min(entry.time);
        a.last_ms = a.last_ms.max(entry.time);
        a.accesses += 1;
        *a.by_kind.entry(kind).or_default() += 1;
        if let Some(t) = &entry.resource_type {
            *a.by_resource_type.entry(t.clone()).or_default() += 1;
        }
        // The entry's labels, as it carries them for all its patients.
        for label in &entry.labels {
            *a.by_label.entry(label.clone()).or_default() += 1;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// An allowed entry of `action` at `time` about `patient_id` and `others`, with `labels`.
    fn entry(
        time: i64,
        action: &str,
        patient_id: &str,
        others: &[&str],
        labels: &[&str],
    ) -> AuditEntry {
        let mut e: AuditEntry = serde_json::from_value(serde_json::json!({
            "seq": 1, "time": time, "actor_id": "u1", "actor_kind": "user",
            "role": "clinician", "purpose": "TREAT", "break_glass": false,
            "action": action, "resource_type": "Observation", "resource_id": null,
            "patient_id": patient_id, "outcome": "allowed", "source_address": null,
            "request_id": "r1",
        }))
        .unwrap();
        e.set_patients(others.iter().copied());
        e.labels = labels.iter().map(|l| (*l).to_owned()).collect();
        e
    }

    #[test]
    fn labels_are_counted_for_every_patient_an_entry_concerns() {
        let mut patients = BTreeMap::new();
        // A search returning p1's HIV and PSY resources and p2's unlabelled ones: both are
        // attributed both labels (the entry does not say whose resource carried which).
        add(
            &mut patients,
            &entry(10, "GET /fhir/{type}", "p1", &["p2"], &["HIV", "PSY"]),
        );
        add(
            &mut patients,
            &entry(20, "GET /fhir/{type}/{id}", "p1", &[], &["PSY"]),
        );
        add(
            &mut patients,
            &entry(30, "GET /fhir/{type}/{id}", "p3", &[], &[]),
        );
        let by_label = |p: &str| -> Vec<(String, u64)> {
            patients[p]
                .by_label
                .iter()
                .map(|(l, n)| (l.clone(), *n))
                .collect()
        };
        assert_eq!(
            by_label("p1"),
            [("HIV".to_owned(), 1), ("PSY".to_owned(), 2)]
        );
        assert_eq!(
            by_label("p2"),
            [("HIV".to_owned(), 1), ("PSY".to_owned(), 1)]
        );
        assert!(by_label("p3").is_empty());
        assert_eq!(patients["p1"].accesses, 2);
        // Serialized always, empty or not.
        let json = serde_json::to_value(&patients["p3"]).unwrap();
        assert_eq!(json["by_label"], serde_json::json!({}));
        let json = serde_json::to_value(&patients["p1"]).unwrap();
        assert_eq!(json["by_label"], serde_json::json!({"HIV": 1, "PSY": 2}));
    }

    #[test]
    fn actions_are_classified() {
        for (action, kind) in [
            ("GET /fhir/{type}/{id}", AccessKind::Read),
            ("GET /fhir/{type}/{id}/_history/{vid}", AccessKind::Read),
            ("GET /fhir/{type}", AccessKind::Search),
            ("POST /fhir/{type}/_search", AccessKind::Search),
            ("GET /fhir/Patient/{id}/$everything", AccessKind::Search),
            ("GET /fhir/$export", AccessKind::Export),
            ("cli deidentify", AccessKind::Export),
            ("POST /fhir/{type}", AccessKind::Change),
            ("DELETE /fhir/{type}/{id}", AccessKind::Change),
            ("create", AccessKind::Change),
            ("POST /auth/login", AccessKind::Other),
        ] {
            assert_eq!(AccessKind::of(action), kind, "{action}");
        }
    }
}
