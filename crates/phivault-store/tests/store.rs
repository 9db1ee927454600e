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
#[path = "store/connection.rs"]
mod connection;
#[path = "store/date_range.rs"]
mod date_range;
#[path = "store/erasure.rs"]
mod erasure;
#[path = "store/number_range.rs"]
mod number_range;
#[path = "store/oauth.rs"]
mod oauth;
#[path = "store/proofs.rs"]
mod proofs;
#[path = "store/review.rs"]
mod review;
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
                        // Entries 2 and 4 came from one network ("0a..." keys), 3 from
                        // another, 1 and 5 from nowhere known.
                        address: match tail.seq {
                            2 => "0a01",
                            3 => "0b01",
                            4 => "0a02",
                            _ => "",
                        }
                        .to_owned(),
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
        let q = AuditQuery {
            address_between: Some(("0a00".to_owned(), "0aff".to_owned())),
            ..AuditQuery::default()
        };
        assert_eq!(seqs(s.audit_search(&q, 10).await.unwrap()), vec![4, 2]);
        let q = AuditQuery {
            address_between: Some(("0a00".to_owned(), "0aff".to_owned())),
            since: Some(1003),
            ..AuditQuery::default()
        };
        assert_eq!(seqs(s.audit_search(&q, 10).await.unwrap()), vec![4]);
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
