//! Access and portability (issue 6) over HTTPS and the CLI, on every backend:
//! `GET /fhir/Patient/{id}/$everything` gives the patient and their care clinician the whole
//! compartment (and nothing of another patient), other patients and clinicians a 403;
//! `GET /fhir/Patient/{id}/$export` gives the patient their package (manifest, resources,
//! consents, access log) and everyone else a 403; `phivault export-patient` writes the same
//! package (audited as `cli export-patient`), re-imports into an empty phivault with identical
//! resources under the same ids (AuditEvents and the manifest skipped), and with --recipient
//! is unreadable without the age identity; after `$erase`, `$everything`, `$export` and
//! `export-patient` answer 410 / fail, and never return data.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::io::Read;

use phivault_testkit::fixtures::{self, LOINC, coding};
use phivault_testkit::{Api, Marker, Server, backends, random_username};
use serde_json::{Value, json};
use sqlx::Row;

const BIN: &str = env!("CARGO_BIN_EXE_phivault");
const SCOPE_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/consentscope";
const PURPOSE_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v3-ActReason";
const ACT_CODE: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";

/// A user with `role` (linked to `patient` when given), signed in.
async fn person(server: &Server, role: &str, patient: Option<&str>) -> (String, Api) {
    let username = random_username();
    let password = server.create_user(&username, role).await;
    if let Some(p) = patient {
        server.link_patient(&username, p).await;
    }
    let account = server.sign_in(&username, role, &password, false).await;
    (username, server.api_as(&account.token))
}

/// `Type/id` of every match of a searchset.
fn refs(bundle: &Value) -> BTreeSet<String> {
    bundle["entry"]
        .as_array()
        .map(|e| {
            e.iter()
                .map(|x| {
                    let r = &x["resource"];
                    format!(
                        "{}/{}",
                        r["resourceType"].as_str().unwrap(),
                        r["id"].as_str().unwrap()
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The resources of an NDJSON package, by line.
fn lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `Type/id` of the lines of `rtype`s other than the manifest and AuditEvents.
fn package_refs(lines: &[Value]) -> BTreeSet<String> {
    lines
        .iter()
        .skip(1)
        .filter(|v| v["resourceType"] != "AuditEvent")
        .map(|v| {
            format!(
                "{}/{}",
                v["resourceType"].as_str().unwrap(),
                v["id"].as_str().unwrap()
            )
        })
        .collect()
}

/// `body` without `meta.versionId` and `meta.lastUpdated` (the store stamps them anew).
fn comparable(body: &Value) -> Value {
    let mut b = body.clone();
    if let Some(meta) = b.get_mut("meta").and_then(Value::as_object_mut) {
        meta.remove("versionId");
        meta.remove("lastUpdated");
        if meta.is_empty() {
            b.as_object_mut().unwrap().remove("meta");
        }
    }
    b
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

#[tokio::test(flavor = "multi_thread")]
async fn everything_export_and_round_trip() {
    for backend in backends() {
        let label = backend.name();
        let server = Server::start(BIN, &backend, &[]).await;
        let sys = server.api().clone();

        // ---- A patient with several resources, and another patient.
        let family = Marker::name();
        let p = sys.create(&fixtures::patient(family.text(), "Ada")).await;
        let subject = format!("Patient/{p}");
        let mut expected = BTreeSet::from([format!("Patient/{p}")]);
        for day in 1..=2 {
            let c = coding(Some(LOINC), "8867-4", "heart rate");
            let o = sys
                .create(&fixtures::observation(
                    &subject,
                    c,
                    &format!("2024-03-0{day}T10:00:00Z"),
                ))
                .await;
            expected.insert(format!("Observation/{o}"));
        }
        let cond = sys
            .create(&fixtures::condition(
                &subject,
                "38341003",
                "active",
                "2020-05-01",
            ))
            .await;
        expected.insert(format!("Condition/{cond}"));
        // A mental-health note: the patient's, but not for a clinician without a PSY grant.
        let mut psy = fixtures::observation(
            &subject,
            coding(Some(LOINC), "8867-4", "heart rate"),
            "2024-03-04T10:00:00Z",
        );
        psy["meta"] = json!({ "security": [{ "system": ACT_CODE, "code": "PSY" }] });
        // Apps get no label grants: written by the operator's import, under a chosen id.
        let psy_id = format!("psy-{}", &random_username()[2..10]);
        psy["id"] = json!(psy_id);
        let seed = tempfile::tempdir().unwrap();
        let seed_file = seed.path().join("psy.ndjson");
        std::fs::write(&seed_file, format!("{psy}\n")).unwrap();
        server
            .cli(&["import", &seed_file.display().to_string()], None)
            .await
            .assert_ok("import of the labelled note");
        let psy = format!("Observation/{psy_id}");
        expected.insert(psy.clone());
        // A patient's Consents are the patient's to write.
        let (_, own) = person(&server, "patient", Some(&p)).await;
        let consent = own
            .create(&json!({
                "resourceType": "Consent",
                "status": "active",
                "scope": {"coding": [{"system": SCOPE_SYSTEM, "code": "patient-privacy"}]},
                "category": [{"coding": [{"system": LOINC, "code": "59284-0"}]}],
                "patient": {"reference": subject},
                "provision": {"type": "permit", "purpose": [{"system": PURPOSE_SYSTEM, "code": "TREAT"}]},
            }))
            .await;
        expected.insert(format!("Consent/{consent}"));
        let other_family = Marker::name();
        let q = sys
            .create(&fixtures::patient(other_family.text(), "Bo"))
            .await;
        let q_obs = sys
            .create(&fixtures::observation(
                &format!("Patient/{q}"),
                coding(Some(LOINC), "8867-4", "heart rate"),
                "2024-03-05T10:00:00Z",
            ))
            .await;

        let (_, other_patient) = person(&server, "patient", Some(&q)).await;
        let (care_name, care) = person(&server, "clinician", None).await;
        server.grant(&care_name, &p, &[], None).await;
        let (_, stranger) = person(&server, "clinician", None).await;
        let (_, admin) = person(&server, "admin", None).await;

        // ---- $everything: the whole compartment for the patient and their care clinician.
        let everything = format!("Patient/{p}/$everything");
        // The clinician has no PSY grant: the labelled note is left out, as from a search.
        let mut unlabelled = expected.clone();
        unlabelled.remove(&psy);
        for (who, api, want) in [
            ("the patient", &own, &expected),
            ("their clinician", &care, &unlabelled),
        ] {
            let r = api.get(&everything).await;
            assert_eq!(r.status, 200, "{label} {who}: {r:?}");
            let b = r.json();
            assert_eq!(b["resourceType"], "Bundle");
            assert_eq!(b["type"], "searchset");
            assert_eq!(&refs(&b), want, "{label} {who}");
            assert_eq!(
                b["total"].as_u64(),
                Some(want.len() as u64),
                "{label} {who}"
            );
            assert!(
                !r.text.contains(&q) && !r.text.contains(&q_obs),
                "{label} {who}"
            );
            assert!(!r.text.contains(other_family.text()), "{label} {who}");
        }
        // The patient's first resource is the Patient.
        let b = own.get(&everything).await.json();
        assert_eq!(b["entry"][0]["resource"]["resourceType"], "Patient");
        // Others: 403, the same as for any patient out of reach; parameters: 400.
        for (who, api) in [
            ("another patient", &other_patient),
            ("another clinician", &stranger),
            ("an admin", &admin),
        ] {
            let r = api.get(&everything).await;
            r.assert_outcome(403, &["access denied"]);
            assert!(!r.text.contains(family.text()), "{label} {who}");
        }
        own.get(&format!("{everything}?_count=2"))
            .await
            .assert_status(400);
        other_patient
            .get(&format!("Patient/{}/$everything", "no-such-patient"))
            .await
            .assert_status(403);
        // With a PSY grant, the clinician gets the note too.
        server.grant(&care_name, &p, &["PSY"], None).await;
        let r = care.get(&everything).await;
        assert_eq!(refs(&r.json()), expected, "{label} clinician with PSY");
        // An app with system scopes has no label grants: everything but the note.
        let r = sys.get(&everything).await;
        assert_eq!(refs(&r.json()), unlabelled, "{label} system app");
        // Audited with the patient id.
        let actions: Vec<String> = entries_about(&server, &p)
            .await
            .into_iter()
            .map(|(a, _)| a)
            .collect();
        assert!(
            actions
                .iter()
                .any(|a| a == "GET /fhir/Patient/{id}/$everything"),
            "{label}: {actions:?}"
        );

        // ---- $export: the patient's own package; nobody else's.
        let export = format!("Patient/{p}/$export");
        let r = own.get(&export).await;
        assert_eq!(r.status, 200, "{label}: {r:?}");
        assert_eq!(r.header("content-type"), Some("application/fhir+ndjson"));
        let pkg = lines(&r.text);
        assert_eq!(
            pkg[0]["resourceType"], "Parameters",
            "{label}: manifest first"
        );
        assert_eq!(package_refs(&pkg), expected, "{label}");
        assert_eq!(pkg[1]["resourceType"], "Patient");
        let consents_at: Vec<usize> = pkg
            .iter()
            .enumerate()
            .filter(|(_, v)| v["resourceType"] == "Consent")
            .map(|(i, _)| i)
            .collect();
        let events: Vec<&Value> = pkg
            .iter()
            .filter(|v| v["resourceType"] == "AuditEvent")
            .collect();
        assert!(
            !events.is_empty(),
            "{label}: the access log is in the package"
        );
        assert!(
            events.iter().any(|e| e["subtype"][0]["code"] == "operation"
                && e["entity"][0]["what"]["reference"] == subject.as_str()),
            "{label}: the $everything reads are in the access log"
        );
        let first_event = pkg
            .iter()
            .position(|v| v["resourceType"] == "AuditEvent")
            .unwrap();
        assert!(
            consents_at.iter().all(|i| *i < first_event),
            "{label}: consents, then the log"
        );
        assert!(!r.text.contains(other_family.text()), "{label}");
        for (who, api) in [
            ("their clinician", &care),
            ("another patient", &other_patient),
            ("an admin", &admin),
            ("a system app", &sys),
        ] {
            let r = api.get(&export).await;
            r.assert_outcome(403, &["access denied"]);
            assert!(!r.text.contains(family.text()), "{label} {who}");
        }
        own.get(&format!("{export}?recipient=age1nope"))
            .await
            .assert_outcome(400, &["recipient"]);
        own.get(&format!("{export}?_since=2020"))
            .await
            .assert_status(400);

        // ---- export-patient, then import into an empty phivault: identical resources.
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("export.ndjson");
        let plain_s = plain.display().to_string();
        let out = server
            .cli(&["export-patient", &p, "--out", &plain_s], None)
            .await;
        out.assert_ok("export-patient");
        let text = std::fs::read_to_string(&plain).unwrap();
        let pkg = lines(&text);
        assert!(text.contains(family.text()), "{label}: plaintext package");
        assert_eq!(package_refs(&pkg), expected, "{label}");
        assert!(
            pkg.iter().any(|v| v["resourceType"] == "AuditEvent"),
            "{label}"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&plain).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "{label}: owner-only package file");
        }
        let entries = entries_about(&server, &p).await;
        for expected_entry in [
            ("cli export-patient", "allowed"),
            ("GET /fhir/Patient/{id}/$export", "allowed"),
            ("GET /fhir/Patient/{id}/$export", "denied"),
            ("GET /fhir/Patient/{id}/$everything", "denied"),
        ] {
            let (a, o) = expected_entry;
            assert!(
                entries.contains(&(a.to_owned(), o.to_owned())),
                "{label}: {a} {o} in {entries:?}"
            );
        }

        let fresh = Server::start(BIN, &backend, &[]).await;
        let out = fresh.cli(&["import", &plain_s], None).await;
        out.assert_ok("import of the package");
        // The patient's own account on the new server reads their labelled note too.
        let (_, fresh_own) = person(&fresh, "patient", Some(&p)).await;
        assert!(
            out.stdout.contains(&format!(
                "imported: {} resources, 1 files, 0 errors",
                expected.len()
            )),
            "{label}: {}{}",
            out.stdout,
            out.stderr
        );
        for v in pkg
            .iter()
            .skip(1)
            .filter(|v| v["resourceType"] != "AuditEvent")
        {
            let path = format!(
                "{}/{}",
                v["resourceType"].as_str().unwrap(),
                v["id"].as_str().unwrap()
            );
            let r = fresh_own.get(&path).await;
            assert_eq!(r.status, 200, "{label} {path}: {r:?}");
            assert_eq!(comparable(&r.json()), comparable(v), "{label} {path}");
        }
        // The fresh server's $everything (system app) is the same compartment.
        let r = fresh_own.get(&everything).await;
        assert_eq!(refs(&r.json()), expected, "{label}: round trip");
        // An app of the new server: its scopes, no label grants, as before the move.
        let r = fresh.api().get(&everything).await;
        assert_eq!(refs(&r.json()), unlabelled, "{label}: round trip, app");
        drop(fresh);

        // ---- Encrypted to an age recipient: no plaintext, decrypts with the identity.
        let identity = age::x25519::Identity::generate();
        let recipient = identity.to_public().to_string();
        let sealed = dir.path().join("export.ndjson.age");
        let sealed_s = sealed.display().to_string();
        server
            .cli(
                &[
                    "export-patient",
                    &p,
                    "--out",
                    &sealed_s,
                    "--recipient",
                    &recipient,
                ],
                None,
            )
            .await
            .assert_ok("export-patient --recipient");
        let bytes = std::fs::read(&sealed).unwrap();
        let marker = family.text().as_bytes();
        assert!(
            !bytes.windows(marker.len()).any(|w| w == marker),
            "{label}: the patient's name is not in the encrypted file"
        );
        assert!(
            !bytes.windows(p.len()).any(|w| w == p.as_bytes()),
            "{label}"
        );
        let decryptor = age::Decryptor::new(&bytes[..]).unwrap();
        let mut reader = decryptor
            .decrypt(std::iter::once(&identity as &dyn age::Identity))
            .unwrap();
        let mut opened = String::new();
        reader.read_to_string(&mut opened).unwrap();
        assert!(opened.contains(family.text()), "{label}");
        assert_eq!(package_refs(&lines(&opened)), expected, "{label}");
        // Another identity cannot open it.
        let wrong = age::x25519::Identity::generate();
        let decryptor = age::Decryptor::new(&bytes[..]).unwrap();
        assert!(
            decryptor
                .decrypt(std::iter::once(&wrong as &dyn age::Identity))
                .is_err(),
            "{label}"
        );
        // A malformed recipient: refused, no file.
        let bad = dir.path().join("bad.ndjson");
        let out = server
            .cli(
                &[
                    "export-patient",
                    &p,
                    "--out",
                    &bad.display().to_string(),
                    "--recipient",
                    "age1nope",
                ],
                None,
            )
            .await;
        assert_ne!(out.code, Some(0), "{label}");
        assert!(out.stderr.contains("recipient"), "{label}: {}", out.stderr);
        assert!(!bad.exists(), "{label}");

        // ---- After erasure: 410 or a refusal, never data.
        admin
            .post_json(&format!("Patient/{p}/$erase"), &json!({}))
            .await
            .assert_status(200);
        let r = sys.get(&everything).await;
        assert_eq!(r.status, 410, "{label} a system app: {r:?}");
        assert!(!r.text.contains(family.text()), "{label}");
        // The erasure removed the patient's account link and the clinician's care grant: a
        // refusal.
        for r in [
            own.get(&everything).await,
            care.get(&everything).await,
            own.get(&export).await,
            other_patient.get(&everything).await,
        ] {
            r.assert_outcome(403, &["access denied"]);
            assert!(!r.text.contains(family.text()), "{label}");
        }
        let after = dir.path().join("after.ndjson");
        let out = server
            .cli(
                &["export-patient", &p, "--out", &after.display().to_string()],
                None,
            )
            .await;
        assert_ne!(out.code, Some(0), "{label}");
        assert!(out.stderr.contains("erased"), "{label}: {}", out.stderr);
        assert!(!after.exists(), "{label}");
        // The other patient is untouched.
        let r = other_patient.get(&format!("Patient/{q}/$everything")).await;
        assert_eq!(
            refs(&r.json()),
            BTreeSet::from([format!("Patient/{q}"), format!("Observation/{q_obs}")]),
            "{label}"
        );
        server.assert_no_panic();
    }
}
