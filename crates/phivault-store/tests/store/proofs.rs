//! The store's half of authorization: what it reads for a client is released only to a proof
//! for that type and compartment, and what it writes for a client commits only under a proof
//! for the compartment the store itself computes from the body. A proof for another patient,
//! another type or another action is refused, and a refused write leaves nothing behind.

use std::sync::LazyLock;

use phivault_fhir::{BundleRequest, Id, ResourceType};
use phivault_policy::{
    AccessRequest, Action, Authorized, DecisionContext, PolicyEngine, PrincipalRef, Purpose,
    ResourceRef, Role,
};
use phivault_store::{EntryDecision, NoAudit, StoreError};
use serde_json::json;

use super::{fixtures, observation, patient, query, valid, validator};

static ENGINE: LazyLock<PolicyEngine> = LazyLock::new(|| PolicyEngine::new_default().unwrap());

/// A clinician on `patient`'s care team, allowed `action` on `rtype` there.
pub(super) fn proof(action: Action, rtype: &str, patient: &Id) -> Authorized {
    let mut context = DecisionContext::new(Purpose::Treat, time::OffsetDateTime::now_utc());
    context.care_team = true;
    context.consent_permits = true;
    let request = AccessRequest {
        principal: PrincipalRef::user("u-clinician", Role::Clinician).unwrap(),
        action,
        resource: ResourceRef::new(
            ResourceType::parse(rtype).unwrap(),
            Some(patient.clone()),
            Vec::new(),
        ),
        context,
    };
    ENGINE.decide(&request).expect("the clinician is allowed")
}

fn undecided<T: std::fmt::Debug>(r: Result<T, StoreError>, what: &str) {
    assert!(
        matches!(r, Err(StoreError::Undecided { .. })),
        "{what}: {r:?}"
    );
}

/// A researcher's research-export decision on `rtype` in `patient`'s compartment (the
/// patient's consent permitting research).
fn research_proof(rtype: &str, patient: &Id) -> Authorized {
    let mut context = DecisionContext::new(Purpose::Research, time::OffsetDateTime::now_utc());
    context.consent_permits = true;
    let request = AccessRequest {
        principal: PrincipalRef::user("u-researcher", Role::Researcher).unwrap(),
        action: Action::ExportDeidentified,
        resource: ResourceRef::new(
            ResourceType::parse(rtype).unwrap(),
            Some(patient.clone()),
            Vec::new(),
        ),
        context,
    };
    ENGINE.decide(&request).expect("the researcher is allowed")
}

/// What a research export reads leaves the store only to a research-export proof for its
/// type and patient, and never when it carries a sensitivity label, whatever the proof.
#[tokio::test]
async fn a_research_proof_releases_only_unlabelled_resources_of_its_type_and_patient() {
    for f in fixtures().await {
        let s = &f.store;
        let a = s
            .create(valid(patient("Ames", "Ann")), &NoAudit)
            .await
            .unwrap()
            .id;
        let b = s
            .create(valid(patient("Bell", "Bo")), &NoAudit)
            .await
            .unwrap()
            .id;
        let obs = ResourceType::parse("Observation").unwrap();
        let plain = s
            .create(valid(observation(&a, "1")), &NoAudit)
            .await
            .unwrap()
            .id;
        let mut psy = observation(&a, "2");
        psy["meta"] = json!({"security": [{
            "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "PSY"}]});
        let labelled = s.create(valid(psy), &NoAudit).await.unwrap().id;
        let other = s
            .create(valid(observation(&b, "3")), &NoAudit)
            .await
            .unwrap()
            .id;

        let held = s.read_unreleased(obs, &plain).await.unwrap();
        assert_eq!(
            held.release(&research_proof("Observation", &a)).unwrap().id,
            plain,
            "{}",
            f.label
        );
        let held = s.read_unreleased(obs, &labelled).await.unwrap();
        undecided(held.release(&research_proof("Observation", &a)), f.label);
        let held = s.read_unreleased(obs, &other).await.unwrap();
        undecided(held.release(&research_proof("Observation", &a)), f.label);
        let held = s.read_unreleased(obs, &plain).await.unwrap();
        undecided(held.release(&research_proof("Condition", &a)), f.label);
        let held = s.read_unreleased(ResourceType::PATIENT, &a).await.unwrap();
        undecided(held.release(&research_proof("Observation", &a)), f.label);
    }
}

#[tokio::test]
async fn a_read_is_released_only_to_a_proof_for_its_type_and_compartment() {
    for f in fixtures().await {
        let s = &f.store;
        let a = s
            .create(valid(patient("Ames", "Ann")), &NoAudit)
            .await
            .unwrap()
            .id;
        let b = s
            .create(valid(patient("Bell", "Bo")), &NoAudit)
            .await
            .unwrap()
            .id;
        let obs_a = s
            .create(valid(observation(&a, "1")), &NoAudit)
            .await
            .unwrap()
            .id;
        let obs_b = s
            .create(valid(observation(&b, "2")), &NoAudit)
            .await
            .unwrap()
            .id;
        let obs = ResourceType::parse("Observation").unwrap();

        // The facts come from the store: the compartment it read the resource from.
        let held = s.read_unreleased(obs, &obs_b).await.unwrap();
        assert_eq!(held.facts().patient(), Some(&b), "{}", f.label);
        // A proof for patient A does not open patient B's Observation ...
        undecided(
            held.release(&proof(Action::Read, "Observation", &a)),
            f.label,
        );
        // ... nor does a proof for another type, or for a write, open A's own.
        let held = s.read_unreleased(obs, &obs_a).await.unwrap();
        undecided(held.release(&proof(Action::Read, "Condition", &a)), f.label);
        let held = s.read_unreleased(obs, &obs_a).await.unwrap();
        undecided(
            held.release(&proof(Action::Update, "Observation", &a)),
            f.label,
        );
        // The right proof opens it.
        let held = s.read_unreleased(obs, &obs_a).await.unwrap();
        let read = held
            .release(&proof(Action::Read, "Observation", &a))
            .unwrap();
        assert_eq!(read.id, obs_a);

        // Versions, history entries and search hits the same way.
        let v1 = s.vread_unreleased(obs, &obs_b, 1).await.unwrap();
        undecided(
            v1.release(&proof(Action::Vread, "Observation", &a)),
            f.label,
        );
        let (_, versions) = s.history_unreleased(obs, &obs_b, 10, 0).await.unwrap();
        for v in versions {
            undecided(
                v.release(&proof(Action::History, "Observation", &a)),
                f.label,
            );
        }
        let scope = phivault_store::SearchScope::everything();
        let (total, hits) = s
            .search_unreleased(obs, &query(obs, &[]), &scope)
            .await
            .unwrap();
        assert_eq!(total, 2);
        let mut opened = 0;
        for hit in hits {
            let search_a = proof(Action::Search, "Observation", &a);
            if hit.facts().patient() == Some(&a) {
                hit.release(&search_a).unwrap();
                opened += 1;
            } else {
                undecided(hit.release(&search_a), f.label);
            }
        }
        assert_eq!(opened, 1, "{}", f.label);
    }
}

#[tokio::test]
async fn a_write_commits_only_under_a_proof_for_the_compartment_it_writes_into() {
    for f in fixtures().await {
        let s = &f.store;
        let a = s
            .create(valid(patient("Ames", "Ann")), &NoAudit)
            .await
            .unwrap()
            .id;
        let b = s
            .create(valid(patient("Bell", "Bo")), &NoAudit)
            .await
            .unwrap()
            .id;
        let obs = ResourceType::parse("Observation").unwrap();
        let count_of = |p: Id| async move {
            s.search(obs, &query(obs, &[("subject", &format!("Patient/{p}"))]))
                .await
                .unwrap()
                .total
        };

        // A proof to create in A's compartment does not create in B's.
        let create_a = proof(Action::Create, "Observation", &a);
        undecided(
            s.create_authorized(
                &create_a,
                Id::generate(),
                valid(observation(&b, "9")),
                &NoAudit,
            )
            .await,
            f.label,
        );
        assert_eq!(count_of(b.clone()).await, 0, "{}: nothing written", f.label);
        let made = s
            .create_authorized(
                &create_a,
                Id::generate(),
                valid(observation(&a, "9")),
                &NoAudit,
            )
            .await
            .unwrap();

        // Moving A's Observation into B's compartment under a proof for A is refused.
        let mut moved = observation(&b, "9");
        moved["id"] = json!(made.id.as_str());
        let update_a = proof(Action::Update, "Observation", &a);
        undecided(
            s.update_authorized(&update_a, &made.id, valid(moved), None, &NoAudit)
                .await,
            f.label,
        );
        assert_eq!(s.read(obs, &made.id).await.unwrap().version, 1);

        // A delete is checked against the live version's compartment, inside the
        // transaction: B's Observation stays after a delete under a proof for A.
        let obs_b = s
            .create(valid(observation(&b, "3")), &NoAudit)
            .await
            .unwrap()
            .id;
        undecided(
            s.delete_authorized(
                &proof(Action::Delete, "Observation", &a),
                obs,
                &obs_b,
                &NoAudit,
            )
            .await,
            f.label,
        );
        assert_eq!(s.read(obs, &obs_b).await.unwrap().version, 1, "{}", f.label);
        // A read proof is no delete proof.
        undecided(
            s.delete_authorized(
                &proof(Action::Read, "Observation", &b),
                obs,
                &obs_b,
                &NoAudit,
            )
            .await,
            f.label,
        );
        let deleted = s
            .delete_authorized(
                &proof(Action::Delete, "Observation", &b),
                obs,
                &obs_b,
                &NoAudit,
            )
            .await
            .unwrap();
        assert_eq!(deleted, Some(2));
    }
}

#[tokio::test]
async fn a_bundle_runs_each_entry_only_under_its_own_proof() {
    for f in fixtures().await {
        let s = &f.store;
        let a = s
            .create(valid(patient("Ames", "Ann")), &NoAudit)
            .await
            .unwrap()
            .id;
        let b = s
            .create(valid(patient("Bell", "Bo")), &NoAudit)
            .await
            .unwrap()
            .id;
        let obs = ResourceType::parse("Observation").unwrap();
        let bundle = |entries: serde_json::Value| {
            BundleRequest::parse(
                validator(),
                json!({ "resourceType": "Bundle", "type": "transaction", "entry": entries }),
                100,
            )
            .unwrap()
        };
        let post = |p: &Id| {
            json!({ "resource": observation(p, "7"),
                    "request": { "method": "POST", "url": "Observation" } })
        };

        // The second entry writes into B's compartment under A's proof: nothing is written.
        let request = bundle(json!([post(&a), post(&b)]));
        let decisions = vec![
            EntryDecision {
                proof: Some(proof(Action::Create, "Observation", &a)),
                new_id: None,
            },
            EntryDecision {
                proof: Some(proof(Action::Create, "Observation", &a)),
                new_id: None,
            },
        ];
        let r = s.bundle_authorized(request, decisions, &NoAudit).await;
        assert!(
            matches!(&r, Err(StoreError::Entry { index: 1, source }) if matches!(**source, StoreError::Undecided { .. })),
            "{}: {r:?}",
            f.label
        );
        let all = s.search(obs, &query(obs, &[])).await.unwrap();
        assert_eq!(all.total, 0, "{}: the transaction wrote nothing", f.label);

        // A read entry without a proof answers nothing of the resource.
        let obs_b = s
            .create(valid(observation(&b, "4")), &NoAudit)
            .await
            .unwrap()
            .id;
        let request = bundle(json!([
            { "request": { "method": "GET", "url": format!("Observation/{obs_b}") } }
        ]));
        let r = s
            .bundle_authorized(request, vec![EntryDecision::default()], &NoAudit)
            .await;
        assert!(r.is_err(), "{}: {r:?}", f.label);

        // One decision per entry, no fewer.
        let request = bundle(json!([post(&a)]));
        assert!(
            s.bundle_authorized(request, Vec::new(), &NoAudit)
                .await
                .is_err()
        );
    }
}
