//! The store's suite, run on SQLite always and on PostgreSQL when
//! `PHIVAULT_TEST_DATABASE_URL` is set (each test in its own schema).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::OnceLock;

use phivault_crypto::StaticKeyProvider;
use phivault_fhir::{BundleRequest, Id, ResourceType, SearchQuery, ValidResource, Validator};
use phivault_store::{NoAudit, Store, StoreError, StoreOptions};
use serde_json::{Value, json};
use sqlx::Row;

#[path = "store/all_types.rs"]
mod all_types;
#[path = "store/compartments.rs"]
mod compartments;
#[path = "store/date_range.rs"]
mod date_range;
#[path = "store/number_range.rs"]
mod number_range;
#[path = "store/proofs.rs"]
mod proofs;
#[path = "store/rotation.rs"]
mod rotation;
#[path = "store/schema_upgrade.rs"]
mod schema_upgrade;
#[path = "store/search_plan.rs"]
mod search_plan;
#[path = "store/shred.rs"]
mod shred;
#[path = "store/statistics.rs"]
mod statistics;

fn validator() -> &'static Validator {
    static V: OnceLock<Validator> = OnceLock::new();
    V.get_or_init(|| Validator::new().unwrap())
}

fn valid(body: Value) -> ValidResource {
    validator().validate(body, None).unwrap()
}

fn random_hex() -> String {
    let mut b = [0u8; 32];
    phivault_crypto::random_bytes(&mut b).unwrap();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A fresh, empty store on each backend under test.
struct Fixture {
    store: Store,
    url: String,
    key: String,
    _dir: tempfile::TempDir,
    label: &'static str,
}

impl Fixture {
    async fn reopen(&self, key_hex: &str) -> Result<Store, StoreError> {
        Store::open(
            &StoreOptions::new(self.url.clone()),
            &StaticKeyProvider::from_hex(key_hex),
        )
        .await
    }
}

async fn fixtures() -> Vec<Fixture> {
    let mut out = Vec::new();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/phivault.db", dir.path().display());
    let key = random_hex();
    let store = Store::open(
        &StoreOptions::new(url.clone()),
        &StaticKeyProvider::from_hex(key.clone()),
    )
    .await
    .unwrap();
    out.push(Fixture {
        store,
        url,
        key,
        _dir: dir,
        label: "sqlite",
    });
    if let Ok(base) = std::env::var("PHIVAULT_TEST_DATABASE_URL") {
        let schema = format!("pv_store_{}", &random_hex()[..12]);
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&base)
            .await
            .expect("PHIVAULT_TEST_DATABASE_URL must point at a running PostgreSQL");
        sqlx::query(&format!("CREATE SCHEMA {schema}"))
            .execute(&mut conn)
            .await
            .unwrap();
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
        let key = random_hex();
        let store = Store::open(
            &StoreOptions::new(url.clone()),
            &StaticKeyProvider::from_hex(key.clone()),
        )
        .await
        .unwrap();
        out.push(Fixture {
            store,
            url,
            key,
            _dir: tempfile::tempdir().unwrap(),
            label: "postgres",
        });
    }
    out
}

fn patient(family: &str, given: &str) -> Value {
    json!({
        "resourceType": "Patient",
        "name": [{ "family": family, "given": [given] }],
        "gender": "female",
        "birthDate": "1970-01-02",
        "identifier": [{ "system": "urn:mrn", "value": format!("MRN-{family}") }],
    })
}

fn observation(patient_id: &Id, code: &str) -> Value {
    json!({
        "resourceType": "Observation",
        "status": "final",
        "code": { "coding": [{ "system": "http://loinc.org", "code": code }] },
        "subject": { "reference": format!("Patient/{patient_id}") },
        "effectiveDateTime": "2024-03-05T10:00:00Z",
        "valueQuantity": { "value": 72, "unit": "/min" },
    })
}

fn query(rtype: ResourceType, pairs: &[(&str, &str)]) -> SearchQuery {
    let pairs: Vec<(String, String)> = pairs
        .iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect();
    SearchQuery::parse(rtype, &pairs, false).unwrap()
}

#[tokio::test]
async fn create_read_update_delete_history() {
    for f in fixtures().await {
        let s = &f.store;
        let created = s
            .create(valid(patient("Smith", "Ann")), &NoAudit)
            .await
            .unwrap();
        assert_eq!(created.version, 1, "{}", f.label);
        let id = created.id.clone();
        let read = s.read(ResourceType::PATIENT, &id).await.unwrap();
        assert_eq!(read.body, created.body);
        assert_eq!(read.body["meta"]["versionId"], "1");
        // A read keeps the JSON text it decrypted, which a read answers with as it is: the
        // same text the body serializes to. A write's result has none.
        assert_eq!(
            read.as_stored(),
            Some(serde_json::to_vec(&read.body).unwrap().as_slice())
        );
        assert_eq!(created.as_stored(), None);

        // If-Match with a stale version is refused and changes nothing.
        let mut body = patient("Smythe", "Ann");
        body["id"] = json!(id.as_str());
        let err = s
            .update(&id, valid(body.clone()), Some(7), &NoAudit)
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::PreconditionFailed { current: 1, .. }),
            "{err:?}"
        );
        assert_eq!(s.read(ResourceType::PATIENT, &id).await.unwrap().version, 1);

        let (updated, created_now) = s.update(&id, valid(body), Some(1), &NoAudit).await.unwrap();
        assert!(!created_now);
        assert_eq!(updated.version, 2);
        let v1 = s.vread(ResourceType::PATIENT, &id, 1).await.unwrap();
        assert_eq!(v1.body["name"][0]["family"], "Smith");
        assert_eq!(
            v1.as_stored(),
            Some(serde_json::to_vec(&v1.body).unwrap().as_slice())
        );

        assert_eq!(
            s.delete(ResourceType::PATIENT, &id, &NoAudit)
                .await
                .unwrap(),
            Some(3)
        );
        assert_eq!(
            s.delete(ResourceType::PATIENT, &id, &NoAudit)
                .await
                .unwrap(),
            None
        );
        let gone = s.read(ResourceType::PATIENT, &id).await.unwrap_err();
        assert!(
            matches!(gone, StoreError::Gone { version: 3, .. }),
            "{gone:?}"
        );
        assert_eq!(gone.http_status(), 410);
        let (total, hist) = s.history(ResourceType::PATIENT, &id, 10, 0).await.unwrap();
        assert_eq!(total, 3);
        let versions: Vec<(u64, bool)> = hist.iter().map(|h| (h.version, h.deleted)).collect();
        assert_eq!(versions, vec![(3, true), (2, false), (1, false)]);

        let missing = Id::parse("does-not-exist").unwrap();
        assert_eq!(
            s.read(ResourceType::PATIENT, &missing)
                .await
                .unwrap_err()
                .http_status(),
            404
        );
        assert_eq!(
            s.delete(ResourceType::PATIENT, &missing, &NoAudit)
                .await
                .unwrap_err()
                .http_status(),
            404
        );

        // Update-as-create with a client id.
        let cid = Id::parse("client-chosen-1").unwrap();
        let mut body = patient("Lee", "Bo");
        body["id"] = json!("client-chosen-1");
        let (r, created_now) = s.update(&cid, valid(body), None, &NoAudit).await.unwrap();
        assert!(created_now);
        assert_eq!(r.version, 1);
    }
}

#[tokio::test]
async fn ciphertext_holds_no_plaintext_and_search_works() {
    for f in fixtures().await {
        let s = &f.store;
        let marker = format!("Zq{}", &random_hex()[..10]);
        let p = s
            .create(valid(patient(&marker, "José")), &NoAudit)
            .await
            .unwrap();
        let o = s
            .create(valid(observation(&p.id, "8867-4")), &NoAudit)
            .await
            .unwrap();

        let rows = sqlx::query("SELECT sealed FROM resource_versions")
            .fetch_all(s.pool())
            .await
            .unwrap();
        assert!(rows.len() >= 2);
        for row in rows {
            let sealed: Vec<u8> = row.try_get("sealed").unwrap();
            if phivault_crypto::NOOP_CIPHER {
                continue;
            }
            let hay = String::from_utf8_lossy(&sealed);
            assert!(!hay.contains(&marker), "{}", f.label);
            assert!(!hay.contains("8867-4"));
        }

        let by_family = s
            .search(
                ResourceType::PATIENT,
                &query(
                    ResourceType::PATIENT,
                    &[("family", &marker.to_lowercase()[..5])],
                ),
            )
            .await
            .unwrap();
        assert_eq!(by_family.total, 1, "{}", f.label);
        assert_eq!(by_family.resources[0].id, p.id);
        let by_given = s
            .search(
                ResourceType::PATIENT,
                &query(ResourceType::PATIENT, &[("given", "JOSE")]),
            )
            .await
            .unwrap();
        assert_eq!(by_given.total, 1);
        let nobody = s
            .search(
                ResourceType::PATIENT,
                &query(ResourceType::PATIENT, &[("family", "nobody-here")]),
            )
            .await
            .unwrap();
        assert_eq!(nobody.total, 0);

        let obs = ResourceType::parse("Observation").unwrap();
        for (param, value, hits) in [
            ("code", "http://loinc.org|8867-4", 1),
            ("code", "8867-4", 1),
            ("code", "http://snomed.info/sct|8867-4", 0),
            ("patient", p.id.as_str(), 1),
            ("subject", &format!("Patient/{}", p.id), 1),
            ("date", "2024-03", 1),
            ("date", "2024-03-06", 0),
            ("status", "final", 1),
        ] {
            let page = s.search(obs, &query(obs, &[(param, value)])).await.unwrap();
            assert_eq!(page.total, hits, "{} {param}={value}", f.label);
            if hits == 1 {
                assert_eq!(page.resources[0].id, o.id);
            }
        }
        // Deleted resources leave the index.
        s.delete(obs, &o.id, &NoAudit).await.unwrap();
        let page = s
            .search(obs, &query(obs, &[("code", "8867-4")]))
            .await
            .unwrap();
        assert_eq!(page.total, 0);
    }
}

#[tokio::test]
async fn tampering_is_detected_and_nothing_is_served() {
    for f in fixtures().await {
        let s = &f.store;
        let a = s
            .create(valid(patient("Alpha", "Ann")), &NoAudit)
            .await
            .unwrap();
        let b = s
            .create(valid(patient("Bravo", "Bob")), &NoAudit)
            .await
            .unwrap();
        let pt = ResourceType::PATIENT;

        // 1. Flip one byte of A's ciphertext.
        let sealed: Vec<u8> =
            sqlx::query("SELECT sealed FROM resource_versions WHERE rtype = 'Patient' AND id = $1")
                .bind(a.id.as_str())
                .fetch_one(s.pool())
                .await
                .unwrap()
                .try_get("sealed")
                .unwrap();
        let mut flipped = sealed.clone();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 0x01;
        set_sealed(s, &a.id, 1, flipped).await;
        if !phivault_crypto::NOOP_CIPHER {
            let err = s.read(pt, &a.id).await.unwrap_err();
            assert!(
                matches!(err, StoreError::Integrity { .. }),
                "{}: {err:?}",
                f.label
            );
            assert!(err.to_string().contains("integrity"));
            let err = s
                .search(pt, &query(pt, &[("family", "alpha")]))
                .await
                .unwrap_err();
            assert!(matches!(err, StoreError::Integrity { .. }));
        }
        set_sealed(s, &a.id, 1, sealed.clone()).await;
        assert_eq!(s.read(pt, &a.id).await.unwrap().id, a.id);

        // 2. Copy A's ciphertext over B's: B must not be served (and not as A).
        set_sealed(s, &b.id, 1, sealed.clone()).await;
        let err = s.read(pt, &b.id).await.unwrap_err();
        assert!(
            matches!(err, StoreError::Integrity { .. }),
            "{}: {err:?}",
            f.label
        );

        // 3. Replay an old version's ciphertext as the current one.
        let mut body = patient("Alpha2", "Ann");
        body["id"] = json!(a.id.as_str());
        s.update(&a.id, valid(body), None, &NoAudit).await.unwrap();
        set_sealed(s, &a.id, 2, sealed.clone()).await;
        let err = s.read(pt, &a.id).await.unwrap_err();
        assert!(
            matches!(err, StoreError::Integrity { .. }),
            "{}: {err:?}",
            f.label
        );

        // 4. Roll the current pointer back to version 1 while version 2 exists.
        sqlx::query("UPDATE current_resources SET version = 1 WHERE id = $1")
            .bind(a.id.as_str())
            .execute(s.pool())
            .await
            .unwrap();
        let err = s.read(pt, &a.id).await.unwrap_err();
        assert!(
            matches!(err, StoreError::Integrity { .. }),
            "{}: {err:?}",
            f.label
        );
    }
}

#[tokio::test]
async fn a_deleted_current_pointer_is_an_integrity_failure() {
    for f in fixtures().await {
        let s = &f.store;
        let pt = ResourceType::PATIENT;
        let a = s
            .create(valid(patient("Pointer", "Pat")), &NoAudit)
            .await
            .unwrap();
        let mut body = patient("Pointer2", "Pat");
        body["id"] = json!(a.id.as_str());
        s.update(&a.id, valid(body), None, &NoAudit).await.unwrap();

        // The pointer goes, the versions stay: no read may answer "not found" or serve an
        // old version as if nothing were wrong.
        sqlx::query("DELETE FROM current_resources WHERE id = $1")
            .bind(a.id.as_str())
            .execute(s.pool())
            .await
            .unwrap();
        let err = s.read(pt, &a.id).await.unwrap_err();
        assert!(
            matches!(err, StoreError::Integrity { .. }),
            "{}: read: {err:?}",
            f.label
        );
        for version in [1, 2] {
            let err = s.vread(pt, &a.id, version).await.unwrap_err();
            assert!(
                matches!(err, StoreError::Integrity { .. }),
                "{}: vread {version}: {err:?}",
                f.label
            );
        }
        let err = s.history(pt, &a.id, 10, 0).await.unwrap_err();
        assert!(
            matches!(err, StoreError::Integrity { .. }),
            "{}: history: {err:?}",
            f.label
        );

        // A resource that never existed is still simply not found.
        let never = Id::parse("never-stored").unwrap();
        assert!(matches!(
            s.read(pt, &never).await.unwrap_err(),
            StoreError::NotFound { .. }
        ));
        assert!(matches!(
            s.history(pt, &never, 10, 0).await.unwrap_err(),
            StoreError::NotFound { .. }
        ));
    }
}

async fn set_sealed(s: &Store, id: &Id, version: i64, sealed: Vec<u8>) {
    let done =
        sqlx::query("UPDATE resource_versions SET sealed = $1 WHERE id = $2 AND version = $3")
            .bind(sealed)
            .bind(id.as_str())
            .bind(version)
            .execute(s.pool())
            .await
            .unwrap();
    assert_eq!(done.rows_affected(), 1);
}

#[tokio::test]
async fn wrong_master_key_is_refused_and_right_one_reads() {
    for f in fixtures().await {
        let p = f
            .store
            .create(valid(patient("Key", "Kim")), &NoAudit)
            .await
            .unwrap();
        let err = f.reopen(&random_hex()).await.unwrap_err();
        assert!(err.to_string().contains("master key"), "{}: {err}", f.label);
        let again = f.reopen(&f.key).await.unwrap();
        assert_eq!(
            again.read(ResourceType::PATIENT, &p.id).await.unwrap().body,
            p.body
        );
    }
}

#[tokio::test]
async fn transaction_is_atomic_and_resolves_references() {
    for f in fixtures().await {
        let s = &f.store;
        let good = json!({
            "resourceType": "Bundle", "type": "transaction",
            "entry": [
                { "fullUrl": "urn:uuid:11111111-1111-4111-8111-111111111111",
                  "resource": patient("Txn", "Tia"),
                  "request": { "method": "POST", "url": "Patient" } },
                { "fullUrl": "urn:uuid:22222222-2222-4222-8222-222222222222",
                  "resource": {
                    "resourceType": "Observation", "status": "final",
                    "code": { "coding": [{ "system": "http://loinc.org", "code": "1-1" }] },
                    "subject": { "reference": "urn:uuid:11111111-1111-4111-8111-111111111111" } },
                  "request": { "method": "POST", "url": "Observation" } },
            ]
        });
        let req = BundleRequest::parse(validator(), good, 100).unwrap();
        let resp = s.bundle(req, &NoAudit).await.unwrap();
        assert_eq!(resp["type"], "transaction-response");
        let obs = &resp["entry"][1]["resource"];
        let pid = resp["entry"][0]["resource"]["id"].as_str().unwrap();
        assert_eq!(
            obs["subject"]["reference"],
            format!("Patient/{pid}"),
            "{}",
            f.label
        );

        // A failing entry (stale If-Match on an existing resource) rolls back everything.
        let mut upd = patient("Txn", "Changed");
        upd["id"] = json!(pid);
        let bad = json!({
            "resourceType": "Bundle", "type": "transaction",
            "entry": [
                { "resource": patient("Rollback", "Rita"),
                  "request": { "method": "POST", "url": "Patient" } },
                { "resource": upd,
                  "request": { "method": "PUT", "url": format!("Patient/{pid}"), "ifMatch": "W/\"9\"" } },
            ]
        });
        let req = BundleRequest::parse(validator(), bad, 100).unwrap();
        let err = s.bundle(req, &NoAudit).await.unwrap_err();
        assert!(
            matches!(&err, StoreError::Entry { index: 1, .. }),
            "{}: {err:?}",
            f.label
        );
        assert_eq!(err.http_status(), 412);
        let pt = ResourceType::PATIENT;
        let page = s
            .search(pt, &query(pt, &[("family", "rollback")]))
            .await
            .unwrap();
        assert_eq!(page.total, 0, "{}: rolled-back create is visible", f.label);
        let still = s.read(pt, &Id::parse(pid).unwrap()).await.unwrap();
        assert_eq!(still.version, 1);
    }
}

#[tokio::test]
async fn concurrent_writers_do_not_fail() {
    for f in fixtures().await {
        let mut tasks = Vec::new();
        for i in 0..8 {
            let s = f.store.clone();
            tasks.push(tokio::spawn(async move {
                for j in 0..10 {
                    s.create(valid(patient(&format!("Conc{i}x{j}"), "C")), &NoAudit)
                        .await
                        .unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let pt = ResourceType::PATIENT;
        let page = f
            .store
            .search(pt, &query(pt, &[("given", "c"), ("_count", "100")]))
            .await
            .unwrap();
        assert_eq!(page.total, 80, "{}", f.label);
    }
}

#[tokio::test]
async fn scoped_search_sees_only_allowed_compartments_and_labels() {
    use phivault_store::SearchScope;
    for f in fixtures().await {
        let s = &f.store;
        let a = s
            .create(valid(patient("Scopea", "Ann")), &NoAudit)
            .await
            .unwrap();
        let b = s
            .create(valid(patient("Scopeb", "Ben")), &NoAudit)
            .await
            .unwrap();
        let obs = ResourceType::parse("Observation").unwrap();
        s.create(valid(observation(&a.id, "1-1")), &NoAudit)
            .await
            .unwrap();
        s.create(valid(observation(&b.id, "1-1")), &NoAudit)
            .await
            .unwrap();
        let mut labelled = observation(&a.id, "1-1");
        labelled["meta"] = json!({"security": [{
            "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "PSY"}]});
        s.create(valid(labelled), &NoAudit).await.unwrap();
        s.create(
            valid(json!({"resourceType": "Practitioner", "name": [{"family": "Scopedoc"}]})),
            &NoAudit,
        )
        .await
        .unwrap();

        let q = query(obs, &[("code", "1-1")]);
        assert_eq!(s.search(obs, &q).await.unwrap().total, 3, "{}", f.label);
        let only_a = SearchScope {
            patients: Some(vec![a.id.clone()]),
            directory: false,
            exclude_labels: Vec::new(),
            exclude_patients: Vec::new(),
        };
        let page = s.search_scoped(obs, &q, &only_a).await.unwrap();
        assert_eq!(page.total, 2, "{}", f.label);
        assert!(
            page.resources
                .iter()
                .all(|r| r.body["subject"]["reference"] == format!("Patient/{}", a.id))
        );
        let psy = SearchQuery::parse(obs, &[("_security".to_owned(), "PSY".to_owned())], false)
            .unwrap()
            .params[0]
            .any_of
            .clone();
        let no_labels = SearchScope {
            exclude_labels: psy,
            ..only_a.clone()
        };
        assert_eq!(s.search_scoped(obs, &q, &no_labels).await.unwrap().total, 1);
        // Over every compartment the labelled Observation's id is resolved first and left out
        // of both the total and the page, which stays ordered by id.
        let everyone_no_labels = SearchScope {
            patients: None,
            directory: false,
            exclude_labels: no_labels.exclude_labels.clone(),
            exclude_patients: Vec::new(),
        };
        let page = s.search_scoped(obs, &q, &everyone_no_labels).await.unwrap();
        assert_eq!(page.total, 2, "{}", f.label);
        assert_eq!(page.resources.len(), 2, "{}", f.label);
        assert!(
            page.resources
                .iter()
                .all(|r| r.body["meta"]["security"].is_null()),
            "{}",
            f.label
        );
        assert!(page.resources[0].id.as_str() < page.resources[1].id.as_str());
        let mut one_per_page = q.clone();
        one_per_page.count = 1;
        one_per_page.offset = 1;
        let second = s
            .search_scoped(obs, &one_per_page, &everyone_no_labels)
            .await
            .unwrap();
        assert_eq!(second.total, 2, "{}", f.label);
        assert_eq!(second.resources[0].id, page.resources[1].id, "{}", f.label);
        let nobody = SearchScope {
            patients: Some(Vec::new()),
            directory: false,
            exclude_labels: Vec::new(),
            exclude_patients: Vec::new(),
        };
        // Every compartment but a's (and never the directory).
        let but_a = SearchScope {
            patients: None,
            directory: false,
            exclude_labels: Vec::new(),
            exclude_patients: vec![a.id.clone()],
        };
        assert_eq!(
            s.search_scoped(obs, &q, &but_a).await.unwrap().total,
            1,
            "{}",
            f.label
        );
        let neither = SearchScope {
            patients: Some(vec![a.id.clone()]),
            ..but_a.clone()
        };
        assert_eq!(s.search_scoped(obs, &q, &neither).await.unwrap().total, 0);
        assert_eq!(s.search_scoped(obs, &q, &nobody).await.unwrap().total, 0);
        let pr = ResourceType::parse("Practitioner").unwrap();
        let pq = query(pr, &[("family", "scopedoc")]);
        assert_eq!(s.search_scoped(pr, &pq, &only_a).await.unwrap().total, 0);
        let with_dir = SearchScope {
            directory: true,
            ..nobody
        };
        assert_eq!(s.search_scoped(pr, &pq, &with_dir).await.unwrap().total, 1);
    }
}

#[tokio::test]
async fn audit_rows_keys_and_checkpoints() {
    use phivault_store::audit::{CheckpointRow, NewAuditRow};
    for f in fixtures().await {
        let s = &f.store;
        assert_eq!(s.audit_tail().await.unwrap().seq, 1);
        for i in 1..=5u64 {
            let seq = s
                .append_audit(|tail| {
                    Ok::<_, StoreError>(NewAuditRow {
                        body: format!("body-{}", tail.seq).into_bytes(),
                        entry_hash: vec![tail.seq as u8; 32],
                        prev_hash: tail.prev_hash.clone().unwrap_or_else(|| vec![0; 32]),
                        time: 1000 + tail.seq as i64,
                        actor: "u1".to_owned(),
                        patient: (tail.seq.is_multiple_of(2)).then(|| "p1".to_owned()),
                        patients: if tail.seq.is_multiple_of(2) {
                            vec!["p1".to_owned()]
                        } else {
                            Vec::new()
                        },
                        action: if tail.seq == 5 { "D" } else { "R" }.to_owned(),
                        outcome: if tail.seq == 3 { "denied" } else { "allowed" }.to_owned(),
                        chain_mac: None,
                    })
                })
                .await
                .unwrap();
            assert_eq!(seq, i, "{}", f.label);
        }
        let tail = s.audit_tail().await.unwrap();
        assert_eq!(tail.seq, 6);
        assert_eq!(tail.prev_hash, Some(vec![5u8; 32]));
        let page = s.audit_entries(2, 2).await.unwrap();
        assert_eq!(page.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![3, 4]);
        assert_eq!(page[0].prev_hash, vec![2u8; 32]);
        assert_eq!(page[1].patient.as_deref(), Some("p1"));
        assert_eq!(s.audit_entry(9).await.unwrap(), None);

        // Searches: newest first, every filter applied, paging by seq.
        use phivault_store::audit::AuditQuery;
        let seqs = |rows: Vec<phivault_store::audit::AuditRow>| {
            rows.iter().map(|r| r.seq).collect::<Vec<_>>()
        };
        let all = AuditQuery::default();
        assert_eq!(
            seqs(s.audit_search(&all, 10).await.unwrap()),
            vec![5, 4, 3, 2, 1]
        );
        assert_eq!(s.audit_count(&all).await.unwrap(), 5);
        let p1 = AuditQuery {
            patient: Some("p1".to_owned()),
            ..AuditQuery::default()
        };
        assert_eq!(seqs(s.audit_search(&p1, 10).await.unwrap()), vec![4, 2]);
        let p1_before_4 = AuditQuery {
            before_seq: Some(4),
            ..p1.clone()
        };
        assert_eq!(
            seqs(s.audit_search(&p1_before_4, 10).await.unwrap()),
            vec![2]
        );
        assert_eq!(s.audit_count(&p1_before_4).await.unwrap(), 1);
        let q = AuditQuery {
            action: Some("D".to_owned()),
            ..AuditQuery::default()
        };
        assert_eq!(seqs(s.audit_search(&q, 10).await.unwrap()), vec![5]);
        let q = AuditQuery {
            outcome: Some("denied".to_owned()),
            actor: Some("u1".to_owned()),
            ..AuditQuery::default()
        };
        assert_eq!(seqs(s.audit_search(&q, 10).await.unwrap()), vec![3]);
        let q = AuditQuery {
            actor: Some("u2".to_owned()),
            ..AuditQuery::default()
        };
        assert!(s.audit_search(&q, 10).await.unwrap().is_empty());
        let q = AuditQuery {
            since: Some(1002),
            until: Some(1004),
            ..AuditQuery::default()
        };
        assert_eq!(seqs(s.audit_search(&q, 10).await.unwrap()), vec![3, 2]);
        assert_eq!(seqs(s.audit_search(&all, 2).await.unwrap()), vec![5, 4]);
        let page1 = s.audit_entries(0, 10).await.unwrap();
        assert_eq!(page1[4].action.as_deref(), Some("D"));
        assert_eq!(page1[2].outcome.as_deref(), Some("denied"));

        let cp = CheckpointRow {
            size: 5,
            root: vec![1; 32],
            last_entry_hash: vec![5; 32],
            time: 7,
            signature: vec![9; 64],
            frontier: Some(vec![2; 64]),
        };
        assert!(s.last_audit_checkpoint().await.unwrap().is_none());
        assert!(s.insert_audit_checkpoint(&cp).await.unwrap());
        assert!(!s.insert_audit_checkpoint(&cp).await.unwrap());
        assert_eq!(s.audit_checkpoints().await.unwrap(), vec![cp.clone()]);
        // A checkpoint without a frontier (as made before schema v4) reads back as such.
        let old = CheckpointRow {
            size: 3,
            frontier: None,
            ..cp.clone()
        };
        assert!(s.insert_audit_checkpoint(&old).await.unwrap());
        assert_eq!(
            s.audit_checkpoints().await.unwrap(),
            vec![old.clone(), cp.clone()]
        );
        assert_eq!(s.last_audit_checkpoint().await.unwrap(), Some(cp.clone()));
        assert_eq!(s.audit_checkpoints_from(4).await.unwrap(), vec![cp.clone()]);
        assert_eq!(s.audit_checkpoints_from(3).await.unwrap().len(), 2);
        assert!(s.audit_checkpoints_from(6).await.unwrap().is_empty());

        // No key is made for a trail that has entries (its key was deleted).
        assert!(matches!(
            s.audit_signing_key(|| -> Result<_, StoreError> { panic!("must not create") })
                .await,
            Err(StoreError::AuditKeyMissing { entries: 5 })
        ));
        sqlx::query("DELETE FROM audit_entries")
            .execute(s.pool())
            .await
            .unwrap();
        // Nor for one that has checkpoints.
        assert!(matches!(
            s.audit_signing_key(|| -> Result<_, StoreError> { panic!("must not create") })
                .await,
            Err(StoreError::AuditKeyMissing { entries: 0 })
        ));
        sqlx::query("DELETE FROM audit_checkpoints")
            .execute(s.pool())
            .await
            .unwrap();
        let mut created = 0;
        let k1 = s
            .audit_signing_key(|| {
                created += 1;
                Ok::<_, StoreError>((vec![3; 32], zeroize::Zeroizing::new(vec![4; 48])))
            })
            .await
            .unwrap();
        let reopened = f.reopen(&f.key).await.unwrap();
        let k2 = reopened
            .audit_signing_key(|| -> Result<_, StoreError> { panic!("must not create again") })
            .await
            .unwrap();
        assert_eq!(created, 1);
        assert_eq!(k1.key_id, k2.key_id);
        assert_eq!(k2.public_key, vec![3; 32]);
        assert_eq!(k2.private_pkcs8.as_slice(), &[4; 48]);
        // Sealed at rest, and bound to its row: moved to another key id it does not open.
        let sealed: Vec<u8> = sqlx::query("SELECT sealed_private FROM audit_keys")
            .fetch_one(s.pool())
            .await
            .unwrap()
            .try_get("sealed_private")
            .unwrap();
        assert!(!sealed.windows(8).any(|w| w == [4u8; 8]));
        sqlx::query("UPDATE audit_keys SET key_id = 'other'")
            .execute(s.pool())
            .await
            .unwrap();
        assert!(matches!(
            reopened
                .audit_signing_key(|| -> Result<_, StoreError> { panic!("found one") })
                .await,
            Err(StoreError::Integrity { .. })
        ));
    }
}

#[tokio::test]
async fn debug_output_holds_no_content() {
    let f = fixtures().await.remove(0);
    let marker = format!("Zqdebug{}", &random_hex()[..8]);
    let p = f
        .store
        .create(valid(patient(&marker, "Dee")), &NoAudit)
        .await
        .unwrap();
    assert!(
        p.body.to_string().contains(&marker),
        "the marker is in the body"
    );
    let shown = format!("{p:?}");
    assert!(shown.contains(p.id.as_str()), "{shown}");
    assert!(!shown.contains(&marker), "{shown}");
    let (_, history) = f
        .store
        .history(ResourceType::PATIENT, &p.id, 10, 0)
        .await
        .unwrap();
    let shown = format!("{history:?}");
    assert!(!shown.contains(&marker), "{shown}");
}

/// A sink that records what it is told, writes a row through the transaction it is handed
/// (so a rollback of the write takes the row with it), and fails on demand.
#[derive(Default)]
struct RecordingSink {
    seen: std::sync::Mutex<Vec<phivault_store::Written>>,
    fail: std::sync::atomic::AtomicBool,
}

impl phivault_store::AuditSink for RecordingSink {
    fn record<'a>(
        &'a self,
        conn: &'a mut phivault_store::AnyConnection,
        written: &'a [phivault_store::Written],
    ) -> phivault_store::SinkFuture<'a> {
        Box::pin(async move {
            let n = {
                let mut seen = self.seen.lock().unwrap();
                seen.extend(written.iter().cloned());
                seen.len() as i64
            };
            // A row in the writing transaction: visible only if the write commits.
            sqlx::query(
                "INSERT INTO audit_checkpoints (size, root, last_entry_hash, time, signature) \
                 VALUES ($1, $2, $2, 0, $2)",
            )
            .bind(1_000_000 + n)
            .bind(vec![0u8; 32])
            .execute(&mut *conn)
            .await
            .map_err(StoreError::from)?;
            if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(StoreError::Config("the audit sink refused".to_owned()));
            }
            Ok(())
        })
    }
}

#[tokio::test]
async fn writes_are_recorded_in_their_transaction_and_roll_back_with_it() {
    use phivault_store::{WriteKind, Written};
    for f in fixtures().await {
        let s = &f.store;
        let sink = RecordingSink::default();
        let obs = ResourceType::parse("Observation").unwrap();
        let p = s
            .create(valid(patient("Sink", "Sam")), &sink)
            .await
            .unwrap();
        let o = s
            .create(valid(observation(&p.id, "1-1")), &sink)
            .await
            .unwrap();
        let mut body = o.body.clone();
        body["status"] = json!("amended");
        s.update(&o.id, valid(body.clone()), None, &sink)
            .await
            .unwrap();
        assert_eq!(s.delete(obs, &o.id, &sink).await.unwrap(), Some(3));
        // Already deleted: nothing written, nothing recorded.
        assert_eq!(s.delete(obs, &o.id, &sink).await.unwrap(), None);
        let who = Some(p.id.clone());
        assert_eq!(
            *sink.seen.lock().unwrap(),
            vec![
                Written {
                    kind: WriteKind::Create,
                    rtype: ResourceType::PATIENT,
                    id: p.id.clone(),
                    version: 1,
                    patient: who.clone()
                },
                Written {
                    kind: WriteKind::Create,
                    rtype: obs,
                    id: o.id.clone(),
                    version: 1,
                    patient: who.clone()
                },
                Written {
                    kind: WriteKind::Update,
                    rtype: obs,
                    id: o.id.clone(),
                    version: 2,
                    patient: who.clone()
                },
                Written {
                    kind: WriteKind::Delete,
                    rtype: obs,
                    id: o.id.clone(),
                    version: 3,
                    patient: who.clone()
                },
            ],
            "{}",
            f.label
        );
        let rows = |s: &Store| {
            let pool = s.pool().clone();
            async move {
                sqlx::query("SELECT COUNT(*) AS n FROM audit_checkpoints")
                    .fetch_one(&pool)
                    .await
                    .unwrap()
                    .try_get::<i64, _>("n")
                    .unwrap()
            }
        };
        assert_eq!(rows(s).await, 4, "{}", f.label);

        // A failing sink: no write commits, and the sink's own row is gone with it.
        sink.fail.store(true, std::sync::atomic::Ordering::SeqCst);
        let err = s.create(valid(patient("Refused", "Rae")), &sink).await;
        assert!(err.is_err(), "{}", f.label);
        let q = query(ResourceType::PATIENT, &[("family", "Refused")]);
        assert_eq!(s.search(ResourceType::PATIENT, &q).await.unwrap().total, 0);
        let mut changed = p.body.clone();
        changed["active"] = json!(false);
        assert!(s.update(&p.id, valid(changed), None, &sink).await.is_err());
        assert_eq!(
            s.read(ResourceType::PATIENT, &p.id).await.unwrap().version,
            1,
            "{}",
            f.label
        );
        assert!(s.delete(ResourceType::PATIENT, &p.id, &sink).await.is_err());
        assert!(s.read(ResourceType::PATIENT, &p.id).await.is_ok());
        let txn = json!({
            "resourceType": "Bundle", "type": "transaction",
            "entry": [
                { "resource": patient("Refused", "Tx"),
                  "request": { "method": "POST", "url": "Patient" } },
            ]
        });
        let req = BundleRequest::parse(validator(), txn, 100).unwrap();
        assert!(s.bundle(req, &sink).await.is_err());
        assert_eq!(s.search(ResourceType::PATIENT, &q).await.unwrap().total, 0);
        assert_eq!(rows(s).await, 4, "{}", f.label);
    }
}

fn condition(patient_id: &Id, code: &str) -> Value {
    json!({
        "resourceType": "Condition",
        "code": { "coding": [{ "system": "http://snomed.info/sct", "code": code }] },
        "subject": { "reference": format!("Patient/{patient_id}") },
    })
}

/// The version rows of `ids` as stored: (rtype, id, version, deleted, key_id, sealed).
async fn version_rows(s: &Store, ids: &[&Id]) -> Vec<(String, String, i64, bool, String, Vec<u8>)> {
    let mut out = Vec::new();
    for id in ids {
        let rows = sqlx::query(
            "SELECT rtype, id, version, deleted, key_id, sealed FROM resource_versions \
             WHERE id = $1",
        )
        .bind(id.as_str())
        .fetch_all(s.pool())
        .await
        .unwrap();
        for r in rows {
            out.push((
                r.get("rtype"),
                r.get("id"),
                r.get("version"),
                r.get::<i64, _>("deleted") != 0,
                r.get("key_id"),
                r.get("sealed"),
            ));
        }
    }
    out
}

async fn index_rows(s: &Store, id: &Id) -> i64 {
    sqlx::query("SELECT COUNT(*) AS n FROM search_index WHERE id = $1")
        .bind(id.as_str())
        .fetch_one(s.pool())
        .await
        .unwrap()
        .get("n")
}

#[tokio::test]
async fn erasure_shreds_the_compartment_for_every_reader_and_writer() {
    use phivault_store::WriteKind;
    let obs = ResourceType::parse("Observation").unwrap();
    let cond = ResourceType::parse("Condition").unwrap();
    for f in fixtures().await {
        let s = &f.store;
        let l = f.label;
        let p = s
            .create(valid(patient("Erasmus", "Eve")), &NoAudit)
            .await
            .unwrap();
        let o1 = s
            .create(valid(observation(&p.id, "8310-5")), &NoAudit)
            .await
            .unwrap();
        let mut amended = o1.body.clone();
        amended["status"] = json!("amended");
        s.update(&o1.id, valid(amended), None, &NoAudit)
            .await
            .unwrap();
        let o2 = s
            .create(valid(observation(&p.id, "2339-0")), &NoAudit)
            .await
            .unwrap();
        s.delete(obs, &o2.id, &NoAudit).await.unwrap();
        let c = s
            .create(valid(condition(&p.id, "44054006")), &NoAudit)
            .await
            .unwrap();
        // Someone else, untouched by the erasure.
        let q = s
            .create(valid(patient("Keeper", "Kim")), &NoAudit)
            .await
            .unwrap();
        let qo = s
            .create(valid(observation(&q.id, "8867-4")), &NoAudit)
            .await
            .unwrap();

        // A second process on the same database, its key cache warm with the patient's key.
        let other = f.reopen(&f.key).await.unwrap();
        other.read(obs, &o1.id).await.unwrap();
        other.vread(obs, &o1.id, 1).await.unwrap();

        // A third, whose warm cache is never touched again: the periodic eviction clears it.
        let idle = f.reopen(&f.key).await.unwrap();
        idle.read(ResourceType::PATIENT, &p.id).await.unwrap();

        let sink = RecordingSink::default();
        let record = s.erase_patient(&p.id, &sink).await.unwrap();
        assert_eq!(record.patient, p.id, "{l}");
        // Patient, two observations (one deleted) and the condition.
        assert_eq!(record.resources, 4, "{l}");
        let seen = sink.seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 1, "{l}");
        assert_eq!(seen[0].kind, WriteKind::Erase);
        assert_eq!(seen[0].patient.as_ref(), Some(&p.id));
        assert!(s.is_erased(&p.id).await.unwrap());
        assert!(!s.is_erased(&q.id).await.unwrap());

        // Every read of the compartment, in both processes: 410 Erased, never an integrity
        // failure.
        for store in [s, &other] {
            for (rtype, id) in [
                (ResourceType::PATIENT, &p.id),
                (obs, &o1.id),
                (obs, &o2.id),
                (cond, &c.id),
            ] {
                let e = store.read(rtype, id).await.unwrap_err();
                assert!(
                    matches!(e, StoreError::Erased { .. }),
                    "{l} read {rtype}: {e:?}"
                );
                assert_eq!(e.http_status(), 410);
                let e = store.vread(rtype, id, 1).await.unwrap_err();
                assert!(
                    matches!(e, StoreError::Erased { .. }),
                    "{l} vread {rtype}: {e:?}"
                );
                let e = store.history(rtype, id, 10, 0).await.unwrap_err();
                assert!(matches!(e, StoreError::Erased { .. }), "{l} history: {e:?}");
            }
            // Searches by every kind of indexed value find nothing of it (before the sweep).
            for (rtype, pairs) in [
                (ResourceType::PATIENT, vec![("family", "Erasmus")]),
                (
                    ResourceType::PATIENT,
                    vec![("identifier", "urn:mrn|MRN-Erasmus")],
                ),
                (ResourceType::PATIENT, vec![("_id", p.id.as_str())]),
                (obs, vec![("code", "http://loinc.org|8310-5")]),
                (cond, vec![("code", "http://snomed.info/sct|44054006")]),
            ] {
                let page = store.search(rtype, &query(rtype, &pairs)).await.unwrap();
                assert_eq!(page.total, 0, "{l} {rtype} {pairs:?}");
            }
            let subject = format!("Patient/{}", p.id);
            let page = store
                .search(obs, &query(obs, &[("subject", subject.as_str())]))
                .await
                .unwrap();
            assert_eq!(page.total, 0, "{l}");
            // The other patient is still there.
            let page = store
                .search(obs, &query(obs, &[("code", "http://loinc.org|8867-4")]))
                .await
                .unwrap();
            assert_eq!(page.resources.len(), 1, "{l}");
            assert_eq!(page.resources[0].id, qo.id);
            store.read(ResourceType::PATIENT, &q.id).await.unwrap();
        }

        // No write lands in the compartment, and no new key is made for it: from this process
        // (cache dropped) and from the other (its cached key is refused in the transaction).
        for store in [s, &other] {
            let e = store
                .create(valid(observation(&p.id, "1-1")), &NoAudit)
                .await
                .unwrap_err();
            assert!(matches!(e, StoreError::PatientErased { .. }), "{l}: {e:?}");
            assert_eq!(e.http_status(), 410);
            let mut body = patient("Erasmus", "Eve");
            body["id"] = json!(p.id.as_str());
            let e = store
                .update(&p.id, valid(body), None, &NoAudit)
                .await
                .unwrap_err();
            assert!(matches!(e, StoreError::PatientErased { .. }), "{l}: {e:?}");
            let e = store.delete(cond, &c.id, &NoAudit).await.unwrap_err();
            assert_eq!(e.http_status(), 410, "{l}: {e:?}");
        }
        let keys: i64 = sqlx::query("SELECT COUNT(*) AS n FROM data_keys WHERE kind = 'patient'")
            .fetch_one(s.pool())
            .await
            .unwrap()
            .get("n");
        assert_eq!(keys, 1, "{l}: only the other patient's key is left");

        // Twice: 409; an unknown patient: 404. Nothing written for either.
        let e = s.erase_patient(&p.id, &sink).await.unwrap_err();
        assert!(matches!(e, StoreError::AlreadyErased { .. }), "{l}: {e:?}");
        assert_eq!(e.http_status(), 409);
        assert_eq!(
            e.to_string(),
            format!("patient already erased: Patient/{}", p.id)
        );
        let e = s
            .erase_patient(&Id::parse("nobody-here").unwrap(), &sink)
            .await
            .unwrap_err();
        assert_eq!(e.http_status(), 404, "{l}: {e:?}");
        assert_eq!(sink.seen.lock().unwrap().len(), 1);

        // The ciphertext rows remain, and not one key either store holds opens any of them.
        let rows = version_rows(s, &[&p.id, &o1.id, &o2.id, &c.id]).await;
        assert_eq!(rows.len(), 1 + 2 + 2 + 1, "{l}");
        for store in [s, &other] {
            for (rtype, id, version, deleted, key_id, sealed) in &rows {
                let n = store
                    .keys_that_open(rtype, id, *version, *deleted, key_id, sealed)
                    .await
                    .unwrap();
                assert_eq!(n, 0, "{l}: {rtype}/{id}/{version} opens with {n} keys");
            }
        }
        let (_, _, version, deleted, key_id, sealed) = &rows[0];
        let opens = |st: Store| {
            let (rtype, id) = (rows[0].0.clone(), rows[0].1.clone());
            let (key_id, sealed) = (key_id.clone(), sealed.clone());
            let (version, deleted) = (*version, *deleted);
            async move {
                st.keys_that_open(&rtype, &id, version, deleted, &key_id, &sealed)
                    .await
                    .unwrap()
            }
        };
        assert_eq!(
            opens(idle.clone()).await,
            1,
            "{l}: the idle cache still holds it"
        );
        assert!(idle.evict_erased_keys(0).await.unwrap() >= record.erased_at_ms);
        assert_eq!(opens(idle.clone()).await, 0, "{l}: evicted");
        idle.close().await;
        // The check is not vacuous: the other patient's rows open with their key.
        for (rtype, id, version, deleted, key_id, sealed) in version_rows(s, &[&qo.id]).await {
            let n = s
                .keys_that_open(&rtype, &id, version, deleted, &key_id, &sealed)
                .await
                .unwrap();
            assert_eq!(n, 1, "{l}");
        }

        // The ledger: key id, owner token, count; not the patient id in the clear.
        let row = sqlx::query("SELECT key_id, owner, resources, index_swept_at FROM erasures")
            .fetch_one(s.pool())
            .await
            .unwrap();
        assert_eq!(row.get::<String, _>("key_id"), record.key_id);
        assert_eq!(row.get::<i64, _>("resources"), 4);
        let owner: Vec<u8> = row.get("owner");
        assert_eq!(owner.len(), 32);
        assert!(
            !owner
                .windows(p.id.as_str().len())
                .any(|w| w == p.id.as_str().as_bytes())
        );
        assert!(row.get::<Option<i64>, _>("index_swept_at").is_none());

        // The sweep deletes the compartment's blind tokens, and only those; once.
        assert!(index_rows(s, &o1.id).await > 0, "{l}");
        let report = s.sweep_erasures().await.unwrap();
        assert_eq!(report.erasures, 1, "{l}");
        assert!(report.index_rows > 0);
        for id in [&p.id, &o1.id, &c.id] {
            assert_eq!(index_rows(s, id).await, 0, "{l}");
        }
        assert!(index_rows(s, &qo.id).await > 0, "{l}");
        assert_eq!(other.sweep_erasures().await.unwrap().erasures, 0);
        // Reads still answer 410 after the sweep.
        let e = s.read(obs, &o1.id).await.unwrap_err();
        assert!(matches!(e, StoreError::Erased { .. }), "{l}: {e:?}");
        other.close().await;
    }
}

#[tokio::test]
async fn a_write_racing_an_erasure_is_erased_with_it_or_refused() {
    for f in fixtures().await {
        let s = &f.store;
        let l = f.label;
        let p = s
            .create(valid(patient("Racer", "Rae")), &NoAudit)
            .await
            .unwrap();
        let mut writers = Vec::new();
        for i in 0..16 {
            let s = s.clone();
            let p = p.id.clone();
            writers.push(tokio::spawn(async move {
                s.create(valid(observation(&p, &format!("{i}-1"))), &NoAudit)
                    .await
            }));
        }
        let record = s.erase_patient(&p.id, &NoAudit).await.unwrap();
        let mut written = Vec::new();
        for w in writers {
            match w.await.unwrap() {
                Ok(stored) => written.push(stored.id),
                Err(e) => assert!(matches!(e, StoreError::PatientErased { .. }), "{l}: {e:?}"),
            }
        }
        // Every acknowledged write committed before the erasure and was counted by it.
        assert_eq!(record.resources, 1 + written.len() as u64, "{l}");
        for id in &written {
            let e = s
                .read(ResourceType::parse("Observation").unwrap(), id)
                .await
                .unwrap_err();
            assert!(matches!(e, StoreError::Erased { .. }), "{l}: {e:?}");
        }
        let keys: i64 = sqlx::query("SELECT COUNT(*) AS n FROM data_keys WHERE kind = 'patient'")
            .fetch_one(s.pool())
            .await
            .unwrap()
            .get("n");
        assert_eq!(keys, 0, "{l}: no key was re-created");
    }
}

/// Sets the last write of `rtype/id` back by `secs` (pointer and every version).
async fn age(s: &Store, rtype: ResourceType, id: &Id, secs: i64) {
    for table in ["current_resources", "resource_versions"] {
        sqlx::query(&format!(
            "UPDATE {table} SET recorded_at = recorded_at - $1 WHERE rtype = $2 AND id = $3"
        ))
        .bind(secs)
        .bind(rtype.as_str())
        .bind(id.as_str())
        .execute(s.pool())
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn retention_disposes_of_expired_resources_only() {
    use phivault_store::{RetentionCount, RetentionRule, WriteKind};
    let obs = ResourceType::parse("Observation").unwrap();
    let cond = ResourceType::parse("Condition").unwrap();
    let day = 86_400;
    for f in fixtures().await {
        let s = &f.store;
        let l = f.label;
        let p = s
            .create(valid(patient("Retent", "Rita")), &NoAudit)
            .await
            .unwrap();
        // Old: amended (two versions), and another old one deleted (a tombstone).
        let old = s
            .create(valid(observation(&p.id, "8310-5")), &NoAudit)
            .await
            .unwrap();
        let mut amended = old.body.clone();
        amended["status"] = json!("amended");
        s.update(&old.id, valid(amended), None, &NoAudit)
            .await
            .unwrap();
        let old_deleted = s
            .create(valid(observation(&p.id, "2339-0")), &NoAudit)
            .await
            .unwrap();
        s.delete(obs, &old_deleted.id, &NoAudit).await.unwrap();
        // Recent: kept.
        let recent = s
            .create(valid(observation(&p.id, "8867-4")), &NoAudit)
            .await
            .unwrap();
        // Another type, just as old, without a rule: kept.
        let c = s
            .create(valid(condition(&p.id, "44054006")), &NoAudit)
            .await
            .unwrap();
        for id in [&old.id, &old_deleted.id] {
            age(s, obs, id, 40 * day).await;
        }
        age(s, cond, &c.id, 400 * day).await;
        age(s, ResourceType::PATIENT, &p.id, 400 * day).await;
        age(s, obs, &recent.id, 10 * day).await;

        let rules = [RetentionRule {
            rtype: obs,
            max_age_secs: 30 * day,
        }];
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let expired = s.expired(&rules[0], now, 10).await.unwrap();
        assert_eq!(expired.len(), 2, "{l}");
        assert!(expired.contains(&old.id) && expired.contains(&old_deleted.id));

        // Dry run: counted, nothing changed, nothing audited.
        let sink = RecordingSink::default();
        let counts = s.run_retention(&rules, now, true, &sink).await.unwrap();
        assert_eq!(
            counts,
            vec![RetentionCount {
                rtype: obs,
                resources: 2
            }],
            "{l}"
        );
        assert!(sink.seen.lock().unwrap().is_empty(), "{l}");
        s.read(obs, &old.id).await.unwrap();
        assert_eq!(version_rows(s, &[&old.id, &old_deleted.id]).await.len(), 4);

        // A failing sink rolls the disposal back.
        sink.fail.store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(s.run_retention(&rules, now, false, &sink).await.is_err());
        s.read(obs, &old.id).await.unwrap();
        assert_eq!(s.count_expired(&rules[0], now).await.unwrap(), 2, "{l}");
        sink.fail.store(false, std::sync::atomic::Ordering::SeqCst);
        sink.seen.lock().unwrap().clear();

        let counts = s.run_retention(&rules, now, false, &sink).await.unwrap();
        assert_eq!(counts[0].resources, 2, "{l}");
        let seen = sink.seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 2, "{l}");
        assert!(
            seen.iter()
                .all(|w| w.kind == WriteKind::Dispose && w.rtype == obs)
        );
        assert!(seen.iter().any(|w| w.id == old.id && w.version == 2));
        assert!(
            seen.iter()
                .any(|w| w.id == old_deleted.id && w.version == 2)
        );
        assert!(seen.iter().all(|w| w.patient.is_none()));

        // Gone as if it never existed: 404, not 410, not an integrity failure.
        for id in [&old.id, &old_deleted.id] {
            let e = s.read(obs, id).await.unwrap_err();
            assert!(matches!(e, StoreError::NotFound { .. }), "{l}: {e:?}");
            assert_eq!(e.http_status(), 404);
            let e = s.vread(obs, id, 1).await.unwrap_err();
            assert_eq!(e.http_status(), 404, "{l}: {e:?}");
            let e = s.history(obs, id, 10, 0).await.unwrap_err();
            assert_eq!(e.http_status(), 404, "{l}: {e:?}");
            assert_eq!(index_rows(s, id).await, 0, "{l}");
        }
        assert!(
            version_rows(s, &[&old.id, &old_deleted.id])
                .await
                .is_empty(),
            "{l}: no ciphertext row is left"
        );
        let page = s
            .search(obs, &query(obs, &[("code", "http://loinc.org|8310-5")]))
            .await
            .unwrap();
        assert_eq!(page.total, 0, "{l}");
        // The same patient's other resources read and are found.
        s.read(obs, &recent.id).await.unwrap();
        s.read(cond, &c.id).await.unwrap();
        s.read(ResourceType::PATIENT, &p.id).await.unwrap();
        let subject = format!("Patient/{}", p.id);
        let page = s
            .search(obs, &query(obs, &[("subject", subject.as_str())]))
            .await
            .unwrap();
        assert_eq!(page.total, 1, "{l}");
        // The ledger: ids, counts, times.
        let ledger: i64 = sqlx::query(
            "SELECT CAST(SUM(versions) AS BIGINT) AS n FROM retention_ledger WHERE rtype = 'Observation'",
        )
        .fetch_one(s.pool())
        .await
        .unwrap()
        .get("n");
        assert_eq!(ledger, 4, "{l}");
        // Run again: nothing left to do.
        let counts = s.run_retention(&rules, now, false, &sink).await.unwrap();
        assert_eq!(counts[0].resources, 0, "{l}");
    }
}
