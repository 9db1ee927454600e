//! The compartment of a resource and the blind index: a patient named in any form other than
//! `Patient/{id}` is refused (never stored outside the compartment), and the tokens of
//! sensitivity labels are keyed per compartment, so the index cannot tell which patients
//! carry a label, while label searches and label filtering answer as before.

use std::collections::BTreeSet;

use phivault_fhir::{Id, IndexEntry, ResourceType, SearchQuery};
use phivault_policy::Action;
use phivault_store::{NoAudit, SearchScope, Store, StoreError};
use serde_json::{Value, json};
use sqlx::Row;

use super::{fixtures, observation, patient, query, valid};

fn labelled(patient_id: &Id, code: &str) -> Value {
    let mut o = observation(patient_id, "1-1");
    o["meta"] = json!({"security": [{
        "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": code}]});
    o
}

async fn tokens(s: &Store, id: &Id) -> BTreeSet<Vec<u8>> {
    sqlx::query("SELECT token FROM search_index WHERE id = $1")
        .bind(id.as_str())
        .fetch_all(s.pool())
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.get::<Vec<u8>, _>("token"))
        .collect()
}

fn label_entries(rtype: ResourceType, codes: &str) -> Vec<IndexEntry> {
    SearchQuery::parse(rtype, &[("_security".to_owned(), codes.to_owned())], false)
        .unwrap()
        .params[0]
        .any_of
        .clone()
}

#[tokio::test]
async fn label_tokens_differ_between_patients_and_label_searches_still_work() {
    for f in fixtures().await {
        let s = &f.store;
        let obs = ResourceType::parse("Observation").unwrap();
        let a = s
            .create(valid(patient("Laba", "Ann")), &NoAudit)
            .await
            .unwrap();
        let b = s
            .create(valid(patient("Labb", "Ben")), &NoAudit)
            .await
            .unwrap();
        let a_plain = s
            .create(valid(observation(&a.id, "1-1")), &NoAudit)
            .await
            .unwrap();
        let a_hiv = s
            .create(valid(labelled(&a.id, "HIV")), &NoAudit)
            .await
            .unwrap();
        let b_plain = s
            .create(valid(observation(&b.id, "1-1")), &NoAudit)
            .await
            .unwrap();
        let b_hiv = s
            .create(valid(labelled(&b.id, "HIV")), &NoAudit)
            .await
            .unwrap();

        // The label's tokens: those of the labelled resource that its unlabelled twin lacks.
        let a_label: BTreeSet<_> = tokens(s, &a_hiv.id)
            .await
            .difference(&tokens(s, &a_plain.id).await)
            .cloned()
            .collect();
        let b_label: BTreeSet<_> = tokens(s, &b_hiv.id)
            .await
            .difference(&tokens(s, &b_plain.id).await)
            .cloned()
            .collect();
        assert_eq!(a_label.len(), 2, "{}: system|code and *|code", f.label);
        assert_eq!(b_label.len(), 2, "{}", f.label);
        assert!(
            a_label.is_disjoint(&b_label),
            "{}: the same label in two compartments must not give equal tokens",
            f.label
        );
        // Tokens of other parameters stay equal across compartments (code searches across
        // patients use one token).
        assert!(
            !tokens(s, &a_plain.id)
                .await
                .is_disjoint(&tokens(s, &b_plain.id).await)
        );

        // `_security` searches: across patients, per patient, with other parameters, OR.
        let hiv = query(obs, &[("_security", "HIV")]);
        let page = s.search(obs, &hiv).await.unwrap();
        assert_eq!(page.total, 2, "{}", f.label);
        let found: BTreeSet<_> = page.resources.iter().map(|r| r.id.clone()).collect();
        assert_eq!(found, [a_hiv.id.clone(), b_hiv.id.clone()].into());
        let full = query(
            obs,
            &[
                (
                    "_security",
                    "http://terminology.hl7.org/CodeSystem/v3-ActCode|HIV",
                ),
                ("code", "1-1"),
            ],
        );
        assert_eq!(s.search(obs, &full).await.unwrap().total, 2, "{}", f.label);
        assert_eq!(
            s.search(obs, &query(obs, &[("_security", "PSY,HIV")]))
                .await
                .unwrap()
                .total,
            2
        );
        assert_eq!(
            s.search(obs, &query(obs, &[("_security", "PSY")]))
                .await
                .unwrap()
                .total,
            0
        );
        let only_a = SearchScope {
            patients: Some(vec![a.id.clone()]),
            directory: false,
            exclude_labels: Vec::new(),
            exclude_patients: Vec::new(),
        };
        let page = s.search_scoped(obs, &hiv, &only_a).await.unwrap();
        assert_eq!(page.total, 1, "{}", f.label);
        assert_eq!(page.resources[0].id, a_hiv.id);

        // Label filtering, in a patient list and across every compartment: results and
        // totals leave the labelled resources out.
        let code = query(obs, &[("code", "1-1")]);
        let no_hiv = SearchScope {
            exclude_labels: label_entries(obs, "HIV,PSY"),
            ..only_a.clone()
        };
        let page = s.search_scoped(obs, &code, &no_hiv).await.unwrap();
        assert_eq!((page.total, page.resources.len()), (1, 1), "{}", f.label);
        assert_eq!(page.resources[0].id, a_plain.id);
        let everywhere = SearchScope {
            patients: None,
            directory: true,
            exclude_labels: label_entries(obs, "HIV"),
            exclude_patients: Vec::new(),
        };
        let page = s.search_scoped(obs, &code, &everywhere).await.unwrap();
        assert_eq!(page.total, 2, "{}", f.label);
        assert!(
            page.resources
                .iter()
                .all(|r| r.id == a_plain.id || r.id == b_plain.id)
        );
        // Paging across the filtered results.
        let mut second = code.clone();
        second.count = 1;
        second.offset = 1;
        let page = s.search_scoped(obs, &second, &everywhere).await.unwrap();
        assert_eq!((page.total, page.resources.len()), (2, 1), "{}", f.label);
        // Another label is not filtered.
        let psy_only = SearchScope {
            exclude_labels: label_entries(obs, "PSY"),
            ..everywhere.clone()
        };
        assert_eq!(
            s.search_scoped(obs, &code, &psy_only).await.unwrap().total,
            4
        );
    }
}

#[tokio::test]
async fn an_index_in_an_older_format_is_rebuilt_when_the_store_opens() {
    for f in fixtures().await {
        let s = &f.store;
        let obs = ResourceType::parse("Observation").unwrap();
        let a = s
            .create(valid(patient("Reidx", "Ann")), &NoAudit)
            .await
            .unwrap();
        let hiv = s
            .create(valid(labelled(&a.id, "HIV")), &NoAudit)
            .await
            .unwrap();
        let before = tokens(s, &hiv.id).await;
        // An index from before: no format recorded, tokens that are not today's.
        sqlx::query("DELETE FROM index_formats")
            .execute(s.pool())
            .await
            .unwrap();
        sqlx::query("DELETE FROM search_index WHERE id = $1")
            .bind(hiv.id.as_str())
            .execute(s.pool())
            .await
            .unwrap();
        assert_eq!(
            s.search(obs, &query(obs, &[("_security", "HIV")]))
                .await
                .unwrap()
                .total,
            0
        );
        let reopened = f.reopen(&f.key).await.unwrap();
        assert_eq!(tokens(&reopened, &hiv.id).await, before, "{}", f.label);
        let page = reopened
            .search(obs, &query(obs, &[("_security", "HIV")]))
            .await
            .unwrap();
        assert_eq!(page.total, 1, "{}", f.label);
        let format: i64 = sqlx::query("SELECT format FROM index_formats")
            .fetch_one(reopened.pool())
            .await
            .unwrap()
            .get("format");
        assert_eq!(format, 5);
    }
}

#[tokio::test]
async fn a_patient_named_otherwise_than_by_a_relative_reference_is_refused() {
    for f in fixtures().await {
        let s = &f.store;
        let a = s
            .create(valid(patient("Linka", "Ann")), &NoAudit)
            .await
            .unwrap();
        for subject in [
            json!({"reference": format!("https://phivault.example/fhir/Patient/{}", a.id)}),
            json!({"reference": "Patient?identifier=urn:mrn|MRN-Linka"}),
            json!({"identifier": {"system": "urn:mrn", "value": "MRN-Linka"}}),
            json!({"reference": "urn:uuid:0b5e1a4c-6d1e-4b8a-9b7e-3c2f1d0e9a87"}),
            json!({"reference": "#p"}),
        ] {
            let mut o = labelled(&a.id, "HIV");
            o["subject"] = subject;
            match s.create(valid(o), &NoAudit).await {
                Err(e @ StoreError::Fhir(_)) => assert_eq!(e.http_status(), 422, "{}", f.label),
                other => panic!("{}: expected a 422, got {other:?}", f.label),
            }
        }
        // A Group subject names no patient: refused too (it would be sealed under no
        // patient's key). Relative patient references are written as before.
        let mut group = observation(&a.id, "1-1");
        group["subject"] = json!({"reference": "Group/g1"});
        match s.create(valid(group), &NoAudit).await {
            Err(e @ StoreError::Fhir(_)) => assert_eq!(e.http_status(), 422, "{}", f.label),
            other => panic!("{}: expected a 422, got {other:?}", f.label),
        }
        s.create(valid(observation(&a.id, "1-1")), &NoAudit)
            .await
            .unwrap();
    }
}

/// A patient's compartment is read whole through their data key: every current resource of
/// every type under it, the Patient included, nothing deleted, nothing of another patient or
/// of the directory; by type, then id; at most the limit; and nothing once erased.
#[tokio::test]
async fn a_compartment_is_read_whole_through_its_key() {
    for f in fixtures().await {
        let s = &f.store;
        let a = s
            .create(valid(patient("Whole", "Ann")), &NoAudit)
            .await
            .unwrap();
        let b = s
            .create(valid(patient("Other", "Bob")), &NoAudit)
            .await
            .unwrap();
        let mut expected = vec![("Patient".to_owned(), a.id.to_string())];
        for code in ["1-1", "2-2", "3-3"] {
            let o = s
                .create(valid(observation(&a.id, code)), &NoAudit)
                .await
                .unwrap();
            expected.push(("Observation".to_owned(), o.id.to_string()));
            s.create(valid(observation(&b.id, code)), &NoAudit)
                .await
                .unwrap();
        }
        let c = s
            .create(valid(super::condition(&a.id, "44054006")), &NoAudit)
            .await
            .unwrap();
        expected.push(("Condition".to_owned(), c.id.to_string()));
        let gone = s
            .create(valid(observation(&a.id, "9-9")), &NoAudit)
            .await
            .unwrap();
        let obs = ResourceType::parse("Observation").unwrap();
        s.delete(obs, &gone.id, &NoAudit).await.unwrap();
        s.create(
            valid(json!({"resourceType": "Organization", "name": "Directory Org"})),
            &NoAudit,
        )
        .await
        .unwrap();
        expected.sort();

        let read = |limit| {
            let s = s.clone();
            let id = a.id.clone();
            async move {
                s.compartment_unreleased(&id, limit)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|r| {
                        let rtype = r.facts().rtype().to_string();
                        let proof = super::proofs::proof(Action::Read, &rtype, &id);
                        let r = r.release(&proof).unwrap();
                        (rtype, r.id.to_string())
                    })
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(read(None).await, expected, "{}", f.label);
        let two = read(Some(2)).await;
        assert_eq!(two.len(), 2, "{}", f.label);
        assert!(two.iter().all(|r| expected.contains(r)), "{}", f.label);
        s.erase_patient(&a.id, &NoAudit).await.unwrap();
        assert!(read(None).await.is_empty(), "{}", f.label);
    }
}
