//! Every R4 type, not a fixed list: the types raw Synthea bundles hold are stored, read,
//! updated, searched and deleted on each backend, sealed under their patient's key (a
//! Medication under the directory key), with no plaintext in the database; a resource of a
//! compartment type that names no patient, or two, is refused rather than stored less
//! protected.

use phivault_fhir::{Id, ResourceType};
use phivault_store::{NoAudit, Store, StoreError};
use serde_json::{Value, json};
use sqlx::Row;

use super::{fixtures, patient, query, random_hex, valid};

/// One resource of each new type for `p`, with `marker` in a free-text element, and a search
/// `(param, value)` that finds it.
fn resources(p: &Id, marker: &str) -> Vec<(Value, (&'static str, String))> {
    let subject = json!({"reference": format!("Patient/{p}")});
    vec![
        (
            json!({"resourceType": "Claim", "status": "active", "use": "claim",
                "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/claim-type",
                                      "code": "professional"}]},
                "patient": subject, "created": "2021-04-05",
                "provider": {"reference": "Organization/o1"},
                "priority": {"coding": [{"code": "normal"}]},
                "insurance": [{"sequence": 1, "focal": true,
                               "coverage": {"display": format!("{marker}-coverage")}}],
                "item": [{"sequence": 1,
                          "productOrService": {"text": format!("{marker}-claim")}}]}),
            ("patient", p.to_string()),
        ),
        (
            json!({"resourceType": "ExplanationOfBenefit", "status": "active",
                "type": {"coding": [{"code": "professional"}]}, "use": "claim",
                "patient": subject, "created": "2021-04-06",
                "insurer": {"display": format!("{marker}-insurer")},
                "provider": {"reference": "Organization/o1"}, "outcome": "complete",
                "insurance": [{"focal": true, "coverage": {"display": "x"}}]}),
            ("created", "2021-04-06".to_owned()),
        ),
        (
            json!({"resourceType": "Provenance", "recorded": "2021-04-07T10:00:00Z",
                "target": [subject, {"reference": "Encounter/e1"}],
                "agent": [{"who": {"display": format!("{marker}-agent")}}]}),
            ("patient", format!("Patient/{p}")),
        ),
        (
            json!({"resourceType": "ImagingStudy", "status": "available", "subject": subject,
                "started": "2021-04-08T09:00:00Z", "description": format!("{marker}-study")}),
            ("started", "2021-04-08".to_owned()),
        ),
        (
            json!({"resourceType": "Device", "status": "active", "patient": subject,
                "distinctIdentifier": format!("{marker}-udi"),
                "type": {"coding": [{"system": "http://snomed.info/sct", "code": "72506001"}]}}),
            ("type", "http://snomed.info/sct|72506001".to_owned()),
        ),
        (
            json!({"resourceType": "SupplyDelivery", "status": "completed", "patient": subject,
                "suppliedItem": {"itemCodeableConcept": {"text": format!("{marker}-supply")}}}),
            ("status", "completed".to_owned()),
        ),
        (
            json!({"resourceType": "Goal", "lifecycleStatus": "active", "subject": subject,
                "description": {"text": format!("{marker}-goal")}}),
            ("lifecycle-status", "active".to_owned()),
        ),
        (
            json!({"resourceType": "MedicationAdministration", "status": "completed",
                "subject": subject, "effectiveDateTime": "2021-04-09T08:00:00Z",
                "medicationCodeableConcept": {"coding": [
                    {"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "313782"}],
                    "text": format!("{marker}-med")}}),
            ("code", "313782".to_owned()),
        ),
    ]
}

async fn key_of(s: &Store, rtype: &str, id: &Id) -> String {
    sqlx::query("SELECT key_id FROM resource_versions WHERE rtype = $1 AND id = $2")
        .bind(rtype)
        .bind(id.as_str())
        .fetch_one(s.pool())
        .await
        .unwrap()
        .get("key_id")
}

#[tokio::test]
async fn synthea_types_are_stored_searched_and_sealed_per_patient() {
    for f in fixtures().await {
        let s = &f.store;
        let marker = format!("Zqtypes{}", &random_hex()[..10]);
        let p = s
            .create(valid(patient("Typa", "Ann")), &NoAudit)
            .await
            .unwrap();
        let other = s
            .create(valid(patient("Typb", "Ben")), &NoAudit)
            .await
            .unwrap();
        let patient_key = key_of(s, "Patient", &p.id).await;
        for (body, (param, value)) in resources(&p.id, &marker) {
            let rtype = ResourceType::parse(body["resourceType"].as_str().unwrap()).unwrap();
            let created = s.create(valid(body.clone()), &NoAudit).await.unwrap();
            let label = format!("{} {rtype}", f.label);
            assert_eq!(
                key_of(s, rtype.as_str(), &created.id).await,
                patient_key,
                "{label}"
            );
            let read = s.read(rtype, &created.id).await.unwrap();
            assert_eq!(read.body["resourceType"], rtype.as_str(), "{label}");
            // Update, history, search, delete.
            let mut changed = body.clone();
            changed["id"] = json!(created.id.as_str());
            changed["meta"] = json!({"tag": [{"code": "v2"}]});
            let (v2, was_created) = s
                .update(&created.id, valid(changed), Some(1), &NoAudit)
                .await
                .unwrap();
            assert_eq!((v2.version, was_created), (2, false), "{label}");
            let (total, _) = s.history(rtype, &created.id, 10, 0).await.unwrap();
            assert_eq!(total, 2, "{label}");
            let page = s
                .search(rtype, &query(rtype, &[(param, &value)]))
                .await
                .unwrap();
            assert_eq!(page.total, 1, "{label} {param}={value}");
            assert_eq!(page.resources[0].id, created.id, "{label}");
            let tagged = s
                .search(rtype, &query(rtype, &[("_tag", "v2")]))
                .await
                .unwrap();
            assert_eq!(tagged.total, 1, "{label} _tag");
            let theirs = s
                .search(rtype, &query(rtype, &[("patient", other.id.as_str())]))
                .await
                .unwrap();
            assert_eq!(theirs.total, 0, "{label}");
            s.delete(rtype, &created.id, &NoAudit).await.unwrap();
            let page = s
                .search(rtype, &query(rtype, &[(param, &value)]))
                .await
                .unwrap();
            assert_eq!(page.total, 0, "{label} after delete");
        }
        // A Medication is a directory resource: the directory key, not the patient's.
        let med = s
            .create(
                valid(json!({"resourceType": "Medication", "status": "active",
                    "code": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                                         "code": "313782"}], "text": format!("{marker}-drug")}})),
                &NoAudit,
            )
            .await
            .unwrap();
        assert_ne!(key_of(s, "Medication", &med.id).await, patient_key);
        let medication = ResourceType::parse("Medication").unwrap();
        let page = s
            .search(medication, &query(medication, &[("code", "313782")]))
            .await
            .unwrap();
        assert_eq!(page.total, 1, "{}", f.label);

        // No marker in any sealed body or index token.
        if !phivault_crypto::NOOP_CIPHER {
            for (table, column) in [("resource_versions", "sealed"), ("search_index", "token")] {
                let rows = sqlx::query(&format!("SELECT {column} AS b FROM {table}"))
                    .fetch_all(s.pool())
                    .await
                    .unwrap();
                assert!(!rows.is_empty());
                for row in rows {
                    let bytes: Vec<u8> = row.get("b");
                    let hay = String::from_utf8_lossy(&bytes);
                    assert!(!hay.contains(&marker), "{} {table}", f.label);
                }
            }
        }
    }
}

#[tokio::test]
async fn a_compartment_type_naming_no_patient_or_two_is_refused() {
    for f in fixtures().await {
        let s = &f.store;
        let a = s
            .create(valid(patient("Nopa", "Ann")), &NoAudit)
            .await
            .unwrap();
        let b = s
            .create(valid(patient("Nopb", "Ben")), &NoAudit)
            .await
            .unwrap();
        for body in [
            json!({"resourceType": "Claim", "status": "active", "use": "claim",
                "type": {"text": "x"}, "created": "2021-01-01",
                "patient": {"display": "someone"},
                "provider": {"reference": "Organization/o"}, "priority": {"text": "x"},
                "insurance": [{"sequence": 1, "focal": true, "coverage": {"display": "x"}}]}),
            json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                "subject": {"reference": "Group/g1"}}),
            json!({"resourceType": "Device", "status": "active"}),
            json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                "subject": {"reference": format!("Patient/{}", a.id)},
                "performer": [{"reference": format!("Patient/{}", b.id)}]}),
            json!({"resourceType": "Medication",
                "contained": [{"resourceType": "Patient", "id": "c"}]}),
        ] {
            match s.create(valid(body.clone()), &NoAudit).await {
                Err(StoreError::Fhir(e)) => {
                    let text = e.to_string();
                    assert!(
                        text.contains("must name") || text.contains("directory"),
                        "{text}"
                    );
                }
                other => panic!("{} {body}: {other:?}", f.label),
            }
        }
        let count: i64 = sqlx::query("SELECT COUNT(*) AS n FROM resource_versions")
            .fetch_one(s.pool())
            .await
            .unwrap()
            .get("n");
        assert_eq!(count, 2, "{}: only the two Patients are stored", f.label);
    }
}
