//! Erasure by crypto-shredding (issue 6, DESIGN.md invariant 6) over HTTPS and the CLI, on
//! every backend: only an admin may erase (403 for the patient's clinician, the patient, an
//! app); the admin's `$erase` answers a certificate signed with the audit key; afterwards
//! read, vread, history and searches by family name, identifier, code and subject answer 410
//! or nothing, writes into the compartment are refused, the ciphertext rows left cannot be
//! opened by any key the store holds; erasing twice is a 409 "patient already erased", an
//! unknown patient a 404; `phivault erase` (with --yes, refused without) erases next to the
//! running server, whose cached key is then refused too; the audit trail verifies and keeps
//! its entries about the erased patients (ids only).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use phivault_audit::ErasureCertificate;
use phivault_crypto::FileKeyProvider;
use phivault_testkit::fixtures;
use phivault_testkit::{Api, Resp, Server, backends, query, random_username};
use serde_json::{Value, json};
use sqlx::Row;

const BIN: &str = env!("CARGO_BIN_EXE_phivault");

/// The patient, their observations and conditions (ids), and what to search them by.
struct Compartment {
    patient: String,
    family: String,
    mrn: String,
    code: String,
    observations: Vec<String>,
    conditions: Vec<String>,
}

impl Compartment {
    fn all(&self) -> Vec<(&'static str, &str)> {
        let mut out = vec![("Patient", self.patient.as_str())];
        out.extend(
            self.observations
                .iter()
                .map(|o| ("Observation", o.as_str())),
        );
        out.extend(self.conditions.iter().map(|c| ("Condition", c.as_str())));
        out
    }
}

async fn compartment(api: &Api, tag: &str) -> Compartment {
    let family = format!("Erase{tag}{}", &random_username()[2..8]);
    let mrn = fixtures::mrn();
    let patient = api
        .create(&fixtures::patient_with(
            &family,
            "Eve",
            &mrn,
            "female",
            "1980-02-03",
        ))
        .await;
    let subject = format!("Patient/{patient}");
    let code = format!("9{}-1", &random_username()[2..6]);
    let mut observations = Vec::new();
    for day in 1..=3 {
        let c = fixtures::coding(Some("http://loinc.org"), &code, "heart rate");
        observations.push(
            api.create(&fixtures::observation(
                &subject,
                c,
                &format!("2024-01-0{day}T10:00:00Z"),
            ))
            .await,
        );
    }
    // One observation with a second version, so vread of version 2 and history have more.
    let o = &observations[0];
    let mut body = api.get(&format!("Observation/{o}")).await.json();
    body["status"] = json!("amended");
    api.put_json(&format!("Observation/{o}"), &body)
        .await
        .assert_status(200);
    let mut conditions = Vec::new();
    for onset in ["2020-05-01", "2021-06-02"] {
        conditions.push(
            api.create(&fixtures::condition(&subject, "38341003", "active", onset))
                .await,
        );
    }
    Compartment {
        patient,
        family,
        mrn,
        code,
        observations,
        conditions,
    }
}

/// A user with `role` (linked to `patient` when given), signed in.
async fn person(server: &Server, role: &str, patient: Option<&str>) -> Api {
    let username = random_username();
    let password = server.create_user(&username, role).await;
    if let Some(p) = patient {
        server.link_patient(&username, p).await;
    }
    let account = server.sign_in(&username, role, &password, false).await;
    server.api_as(&account.token)
}

fn total(r: &Resp, what: &str) -> u64 {
    assert_eq!(r.status, 200, "{what}: {r:?}");
    r.json()["total"].as_u64().unwrap()
}

/// Every read of the compartment answers 410 (or, for searches, nothing).
async fn assert_erased(api: &Api, c: &Compartment, label: &str) {
    for (rtype, id) in c.all() {
        let r = api.get(&format!("{rtype}/{id}")).await;
        r.assert_outcome(410, &["erased"]);
        let r = api.get(&format!("{rtype}/{id}/_history/1")).await;
        assert_eq!(r.status, 410, "{label} vread {rtype}: {r:?}");
        let r = api.get(&format!("{rtype}/{id}/_history")).await;
        assert_eq!(r.status, 410, "{label} history {rtype}: {r:?}");
    }
    let o = &c.observations[0];
    let r = api.get(&format!("Observation/{o}/_history/2")).await;
    assert_eq!(r.status, 410, "{label}: {r:?}");
    let subject = format!("Patient/{}", c.patient);
    let mrn = format!("{}|{}", fixtures::MRN_SYSTEM, c.mrn);
    let code = format!("http://loinc.org|{}", c.code);
    for q in [
        query("Patient", &[("family", &c.family)]),
        query("Patient", &[("identifier", &mrn)]),
        query("Patient", &[("_id", &c.patient)]),
        query("Observation", &[("code", &code)]),
        query("Observation", &[("subject", &subject)]),
        query("Observation", &[("patient", &c.patient)]),
        query("Condition", &[("subject", &subject)]),
        query("Condition", &[("code", "http://snomed.info/sct|38341003")]),
    ] {
        let r = api.get(&q).await;
        let b = r.json();
        assert_eq!(r.status, 200, "{label} {q}: {r:?}");
        let hits: Vec<&Value> = b["entry"]
            .as_array()
            .map(|e| e.iter().collect())
            .unwrap_or_default();
        assert!(
            hits.iter().all(|e| {
                let text = e.to_string();
                !c.all().iter().any(|(_, id)| text.contains(id))
            }),
            "{label} {q}: {b}"
        );
        if !q.contains("38341003") {
            assert_eq!(total(&r, &q), 0, "{label} {q}");
        }
    }
}

/// The certificate inside a `$erase` answer, with its fields checked against the Parameters.
fn certificate_of(r: &Resp) -> ErasureCertificate {
    assert_eq!(r.status, 200, "{r:?}");
    let p = r.json();
    assert_eq!(p["resourceType"], "Parameters", "{p}");
    let param = |name: &str| {
        p["parameter"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name} in {p}"))
    };
    let cert: ErasureCertificate =
        serde_json::from_str(param("certificate")["valueString"].as_str().unwrap()).unwrap();
    assert_eq!(
        param("patient")["valueReference"]["reference"],
        format!("Patient/{}", cert.patient_id)
    );
    assert_eq!(param("keyId")["valueString"], cert.key_id);
    assert_eq!(
        param("resourcesMadeUnreadable")["valueUnsignedInt"],
        cert.resources
    );
    assert_eq!(param("erasedAt")["valueInstant"], cert.erased_at);
    cert
}

/// The trail's public key, pinned through `phivault audit verify --public-key` (which fails
/// for any other key): the certificate's claimed key is trusted only once that passed.
async fn trusted_key(server: &Server, claimed: &[u8]) -> Vec<u8> {
    let hexkey = hex::encode(claimed);
    server
        .cli(&["audit", "verify", "--public-key", &hexkey], None)
        .await
        .assert_ok("audit verify with the certificate's key");
    claimed.to_vec()
}

/// The audit entries about `patient`: (action, outcome).
async fn entries_about(server: &Server, patient: &str) -> Vec<(String, String)> {
    let db = server.db().await;
    let rows = sqlx::query("SELECT body FROM audit_entries WHERE patient = $1 ORDER BY seq")
        .bind(patient)
        .fetch_all(&db)
        .await
        .unwrap();
    db.close().await;
    rows.iter()
        .map(|r| {
            let body: Vec<u8> = r.get("body");
            let v: Value = serde_json::from_slice(&body).unwrap();
            (
                v["action"].as_str().unwrap().to_owned(),
                v["outcome"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Every version row of the compartment still stored, and how many keys the store holds that
/// open any of them (opened as another process: the CLI's view of the same storage).
async fn rows_and_openers(server: &Server, c: &Compartment) -> (usize, usize) {
    let keys = FileKeyProvider::new(server.data_dir().join("master.key"));
    let mut opts = phivault_store::StoreOptions::new(server.database_url());
    opts.max_connections = 1;
    let store = phivault_store::Store::open(&opts, &keys).await.unwrap();
    let mut rows = 0;
    let mut openers = 0;
    for (_, id) in c.all() {
        let found = sqlx::query(
            "SELECT rtype, id, version, deleted, key_id, sealed FROM resource_versions \
             WHERE id = $1",
        )
        .bind(id)
        .fetch_all(store.pool())
        .await
        .unwrap();
        for r in found {
            rows += 1;
            openers += store
                .keys_that_open(
                    &r.get::<String, _>("rtype"),
                    &r.get::<String, _>("id"),
                    r.get("version"),
                    r.get::<i64, _>("deleted") != 0,
                    &r.get::<String, _>("key_id"),
                    &r.get::<Vec<u8>, _>("sealed"),
                )
                .await
                .unwrap();
        }
    }
    store.close().await;
    (rows, openers)
}

#[tokio::test(flavor = "multi_thread")]
async fn erasure_over_https_and_the_cli() {
    for backend in backends() {
        let label = backend.name();
        let server = Server::start(BIN, &backend, &[]).await;
        let sys = server.api().clone();
        let a = compartment(&sys, "A").await;
        let b = compartment(&sys, "B").await;
        let keep = compartment(&sys, "K").await;
        let (rows_before, openers_before) = rows_and_openers(&server, &a).await;
        assert_eq!(rows_before, 1 + 4 + 2, "{label}");
        assert_eq!(
            openers_before, rows_before,
            "{label}: each row opens with its key"
        );

        // ---- Who may erase: admins only.
        let admin = person(&server, "admin", None).await;
        let own = person(&server, "patient", Some(&a.patient)).await;
        let clinician = person(&server, "clinician", None).await;
        let username = random_username();
        let password = server.create_user(&username, "clinician").await;
        server.grant(&username, &a.patient, &[], None).await;
        let care = server.api_as(
            &server
                .sign_in(&username, "clinician", &password, false)
                .await
                .token,
        );
        care.get(&format!("Patient/{}", a.patient))
            .await
            .assert_status(200);
        let erase_a = format!("Patient/{}/$erase", a.patient);
        for (who, api) in [
            ("the patient", &own),
            ("their clinician", &care),
            ("another clinician", &clinician),
            ("an app with system/*.cruds", &sys),
        ] {
            let r = api.post_json(&erase_a, &json!({})).await;
            r.assert_outcome(403, &["access denied"]);
            assert_eq!(r.status, 403, "{label}: {who}");
        }
        sys.get(&format!("Patient/{}", a.patient))
            .await
            .assert_status(200);

        // ---- The admin erases A.
        let r = admin.post_json(&erase_a, &json!({})).await;
        let cert = certificate_of(&r);
        assert_eq!(cert.patient_id, a.patient, "{label}");
        assert_eq!(
            cert.resources, 6,
            "{label}: the patient, 3 observations, 2 conditions"
        );
        let key = trusted_key(&server, &cert.public_key).await;
        assert!(cert.verify(&key), "{label}: the certificate verifies");
        let mut forged = cert.clone();
        forged.resources = 0;
        assert!(
            !forged.verify(&key),
            "{label}: a changed certificate does not"
        );
        // No PHI in it.
        let text = serde_json::to_string(&cert).unwrap();
        assert!(
            !text.contains(&a.family) && !text.contains(&a.mrn),
            "{label}: {text}"
        );

        // Every interaction on A's resources: 410 or nothing, for who could read it; the
        // others are untouched.
        assert_erased(&sys, &a, label).await;
        // Nothing of an erased resource can be decided on (its compartment is sealed under
        // the destroyed key): it is decided as out of reach, so the care clinician, who
        // cannot reach every patient, gets the same refusal as for any resource out of reach.
        let r = care
            .get(&format!("Observation/{}", a.observations[1]))
            .await;
        r.assert_outcome(403, &["access denied"]);
        for (rtype, id) in keep.all() {
            sys.get(&format!("{rtype}/{id}")).await.assert_status(200);
        }
        let r = sys
            .get(&query("Patient", &[("family", &keep.family)]))
            .await;
        assert_eq!(total(&r, "the other patient"), 1, "{label}");
        // A principal who could not read it learns nothing more than before.
        let r = clinician
            .get(&format!("Observation/{}", a.observations[1]))
            .await;
        assert_eq!(r.status, 403, "{label}: {r:?}");

        // No write lands in A's compartment.
        let c = fixtures::coding(Some("http://loinc.org"), "8867-4", "heart rate");
        let subject = format!("Patient/{}", a.patient);
        let r = sys
            .post_json(
                "Observation",
                &fixtures::observation(&subject, c, "2024-02-01T10:00:00Z"),
            )
            .await;
        r.assert_outcome(410, &["erased"]);
        let mut body = fixtures::patient(&a.family, "Eve");
        body["id"] = json!(a.patient);
        let r = sys.put_json(&format!("Patient/{}", a.patient), &body).await;
        assert_eq!(r.status, 410, "{label}: {r:?}");
        let r = sys.delete(&format!("Condition/{}", a.conditions[0])).await;
        assert_eq!(r.status, 410, "{label}: {r:?}");

        // Twice: 409; unknown: 404; a malformed id: 400.
        let r = admin.post_json(&erase_a, &json!({})).await;
        r.assert_outcome(409, &["patient already erased"]);
        let r = admin
            .post_json("Patient/no-such-patient/$erase", &json!({}))
            .await;
        assert_eq!(r.status, 404, "{label}: {r:?}");
        let r = admin.post_json("Patient/bad$id/$erase", &json!({})).await;
        assert_eq!(r.status, 400, "{label}: {r:?}");

        // The ciphertext left opens with no key the store holds.
        let (rows, openers) = rows_and_openers(&server, &a).await;
        assert_eq!(rows, rows_before, "{label}: the ciphertext rows stay");
        assert_eq!(openers, 0, "{label}: and open with no key");

        // ---- The CLI erases B while the server runs (the server cached B's key).
        sys.get(&format!("Observation/{}", b.observations[0]))
            .await
            .assert_status(200);
        let out = server.cli(&["erase", &b.patient], None).await;
        out.assert_error("erase without --yes", "--yes");
        sys.get(&format!("Observation/{}", b.observations[0]))
            .await
            .assert_status(200);
        let out = server.cli(&["erase", &b.patient, "--yes"], None).await;
        out.assert_ok("phivault erase --yes");
        let cli_cert: ErasureCertificate = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(cli_cert.patient_id, b.patient);
        assert_eq!(cli_cert.resources, 6);
        assert!(
            cli_cert.verify(&key),
            "{label}: signed with the same audit key"
        );
        assert_erased(&sys, &b, label).await;
        let out = server.cli(&["erase", &b.patient, "--yes"], None).await;
        out.assert_error("erasing twice", "already erased");
        let (_, openers) = rows_and_openers(&server, &b).await;
        assert_eq!(openers, 0, "{label}");

        // ---- The trail verifies and keeps the entries about the erased patients.
        server
            .cli(&["audit", "verify"], None)
            .await
            .assert_ok("audit verify after erasures");
        let about_a = entries_about(&server, &a.patient).await;
        let erase_action = "POST /fhir/Patient/{id}/$erase".to_owned();
        assert!(
            about_a.contains(&(erase_action.clone(), "allowed".to_owned())),
            "{label}: {about_a:?}"
        );
        assert!(
            about_a.contains(&(erase_action.clone(), "denied".to_owned())),
            "{label}: the refused erasures: {about_a:?}"
        );
        assert!(
            about_a.contains(&(erase_action, "error".to_owned())),
            "{label}: the second erasure: {about_a:?}"
        );
        assert!(
            about_a.iter().any(|(a, _)| a == "POST /fhir/{type}"),
            "{label}: the entries from before the erasure stay: {about_a:?}"
        );
        let about_b = entries_about(&server, &b.patient).await;
        for (action, outcome) in [
            ("erase", "allowed"),
            ("cli erase", "allowed"),
            ("cli erase", "error"),
        ] {
            assert!(
                about_b.contains(&(action.to_owned(), outcome.to_owned())),
                "{label}: {action} {outcome}: {about_b:?}"
            );
        }
        server.assert_no_panic();
        assert!(
            !server.stderr_text().contains(&a.family)
                && !server.stderr_text().contains("integrity"),
            "{label}: no PHI and no integrity alarm in the log"
        );
    }
}
