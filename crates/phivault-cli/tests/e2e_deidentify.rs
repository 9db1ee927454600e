//! `phivault deidentify` against the real binary, on every backend: only patients whose
//! consent permits research (HRESCH) are exported (research is denied by default; a
//! configured default of permit lets patients without a consent in), and never a labelled
//! resource or a patient with a labelled record; withdrawing consent excludes the patient from
//! the next export; a population with one unique quasi-identifier combination is reported
//! with k = 1 and that patient is suppressed at `--k 2`; the run's `cli deidentify` audit
//! entry (purpose HRESCH, the configuration's hash) is in the access log of each patient
//! released, and of no patient left out (by consent, label or k); the output is owner-only
//! and an existing non-empty `--out` is refused; `--new-key` never overwrites; `--key`
//! overrides the configuration's key; no PHI on stderr.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use phivault_testkit::{Backend, CliOutput, Marker, Server, backends, random_username};
use serde_json::{Value, json};
use sqlx::Row;

const BIN: &str = env!("CARGO_BIN_EXE_phivault");
const LOINC: &str = "http://loinc.org";
const SNOMED: &str = "http://snomed.info/sct";
const SCOPE_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/consentscope";
const PURPOSE_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v3-ActReason";
const CONFIDENTIALITY: &str = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality";
const ACT_CODE: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";

/// One patient of the test population.
struct Person {
    id: String,
    family: Marker,
    /// A value only this patient's Observation holds.
    value: f64,
}

fn patient(p: &Person, birth: &str, gender: &str, zip: &str) -> Value {
    json!({
        "resourceType": "Patient",
        "id": p.id,
        "name": [{"family": p.family.text(), "given": ["Test"]}],
        "gender": gender,
        "birthDate": birth,
        "address": [{"line": ["1 Main St"], "city": "Springfield", "postalCode": zip}],
    })
}

fn observation(id: &str, patient: &str, value: f64) -> Value {
    json!({
        "resourceType": "Observation",
        "id": id,
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "8867-4", "display": "Heart rate"}]},
        "subject": {"reference": format!("Patient/{patient}")},
        "effectiveDateTime": "2024-03-01T10:00:00Z",
        "valueQuantity": {"value": value, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"},
    })
}

fn condition(id: &str, patient: &str, code: &str) -> Value {
    json!({
        "resourceType": "Condition",
        "id": id,
        "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
        "code": {"coding": [{"system": SNOMED, "code": code}]},
        "subject": {"reference": format!("Patient/{patient}")},
        "onsetDateTime": "2020-05-01",
    })
}

fn research_consent(id: &str, patient: &str, status: &str) -> Value {
    json!({
        "resourceType": "Consent",
        "id": id,
        "status": status,
        "scope": {"coding": [{"system": SCOPE_SYSTEM, "code": "research"}]},
        "category": [{"coding": [{"system": LOINC, "code": "59284-0"}]}],
        "patient": {"reference": format!("Patient/{patient}")},
        "provision": {"type": "permit", "purpose": [{"system": PURPOSE_SYSTEM, "code": "HRESCH"}]},
    })
}

fn labelled(mut body: Value, system: &str, code: &str) -> Value {
    body["meta"] = json!({"security": [{"system": system, "code": code}]});
    body
}

fn person(tag: &str, value: f64) -> Person {
    Person {
        id: format!("deid{tag}{}", &random_username()[2..10]),
        family: Marker::name(),
        value,
    }
}

/// `phivault import` of `resources` as one NDJSON file.
async fn import(server: &Server, resources: &[Value]) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("population.ndjson");
    let text: String = resources.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(&file, text).unwrap();
    server
        .cli(&["import", &file.display().to_string()], None)
        .await
        .assert_ok("import");
}

/// `phivault deidentify --deid-config <config> --out <out> <extra...>`.
async fn deidentify(server: &Server, config: &Path, out: &Path, extra: &[&str]) -> CliOutput {
    let config = config.display().to_string();
    let out = out.display().to_string();
    let mut args = vec!["deidentify", "--deid-config", &config, "--out", &out];
    args.extend(extra);
    server.cli(&args, None).await
}

/// The lines of `<dir>/<file>`, parsed (none when the file is absent).
fn ndjson(dir: &Path, file: &str) -> Vec<Value> {
    std::fs::read_to_string(dir.join(file))
        .map(|t| {
            t.lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        })
        .unwrap_or_default()
}

fn report(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("report.json")).unwrap()).unwrap()
}

/// Every byte the export wrote, as text.
fn all_text(dir: &Path) -> String {
    let mut out = String::new();
    for e in std::fs::read_dir(dir).unwrap() {
        out.push_str(&std::fs::read_to_string(e.unwrap().path()).unwrap());
    }
    out
}

/// The `cli deidentify` entries in `patient`'s access log, as the store's audit query by
/// patient finds them (through the entry's patients).
async fn research_entries(server: &Server, patient: &str) -> Vec<Value> {
    let db = server.db().await;
    let rows = sqlx::query(
        "SELECT e.body FROM audit_entry_patients p JOIN audit_entries e ON e.seq = p.seq \
         WHERE p.patient = $1 ORDER BY e.seq",
    )
    .bind(patient)
    .fetch_all(&db)
    .await
    .unwrap();
    db.close().await;
    rows.iter()
        .map(|r| serde_json::from_slice::<Value>(&r.get::<Vec<u8>, _>("body")).unwrap())
        .filter(|v| v["action"] == "cli deidentify")
        .collect()
}

/// Makes the audit table refuse inserts (`on` true) or accept them again.
async fn refuse_audit_inserts(server: &Server, on: bool) {
    let db = server.db().await;
    let statements: &[&str] = match (server.backend(), on) {
        (Backend::Sqlite, true) => &["CREATE TRIGGER deid_audit_ro BEFORE INSERT ON \
              audit_entries BEGIN SELECT RAISE(ABORT, 'read-only'); END;"],
        (Backend::Sqlite, false) => &["DROP TRIGGER deid_audit_ro"],
        (Backend::Postgres { .. }, true) => &[
            "CREATE FUNCTION deid_audit_ro() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN RAISE EXCEPTION 'read-only'; END $$",
            "CREATE TRIGGER deid_audit_ro BEFORE INSERT ON audit_entries \
             FOR EACH ROW EXECUTE FUNCTION deid_audit_ro()",
        ],
        (Backend::Postgres { .. }, false) => &[
            "DROP TRIGGER deid_audit_ro ON audit_entries",
            "DROP FUNCTION deid_audit_ro()",
        ],
    };
    for sql in statements {
        sqlx::query(sql).execute(&db).await.unwrap();
    }
    db.close().await;
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread")]
async fn research_consent_decides_the_export_and_the_audit_names_each_released_patient() {
    for backend in backends() {
        let label = backend.name();
        let server = Server::start(BIN, &backend, &[]).await;
        let work = tempfile::tempdir().unwrap();

        // ---- A project key and a configuration naming it.
        let key = work.path().join("project.key");
        server
            .cli(
                &["deidentify", "--new-key", &key.display().to_string()],
                None,
            )
            .await
            .assert_ok("deidentify --new-key");
        #[cfg(unix)]
        assert_eq!(mode(&key), 0o600, "{label}");
        let again = server
            .cli(
                &["deidentify", "--new-key", &key.display().to_string()],
                None,
            )
            .await;
        again.assert_error("--new-key over an existing key", "never overwritten");
        let config = work.path().join("deid.toml");
        std::fs::write(
            &config,
            "extends = \"safe-harbor\"\nkey_file = \"project.key\"\n",
        )
        .unwrap();

        // ---- The population. a, b, b2: one quasi-identifier class (1980, female, 021);
        // u: alone in its class; c: no consent (research denied by default); l: consents, but
        // their Patient record carries a sensitivity label.
        let a = person("a", 1001.5);
        let b = person("b", 1002.5);
        let b2 = person("b2", 1003.5);
        let u = person("u", 1004.5);
        let c = person("c", 1005.5);
        let l = person("l", 1006.5);
        let psy_value = 1007.5;
        let mut resources = vec![
            patient(&a, "1980-02-03", "female", "02139"),
            patient(&b, "1980-07-08", "female", "02141"),
            patient(&b2, "1980-11-12", "female", "02142"),
            patient(&u, "1950-01-01", "male", "94110"),
            patient(&c, "1980-04-05", "female", "02139"),
            labelled(
                patient(&l, "1980-06-07", "female", "02139"),
                CONFIDENTIALITY,
                "R",
            ),
        ];
        for (p, code) in [
            (&a, "38341003"),
            (&b, "44054006"),
            (&b2, "38341003"),
            (&u, "195967001"),
            (&c, "38341003"),
            (&l, "38341003"),
        ] {
            resources.push(observation(&format!("{}-obs", p.id), &p.id, p.value));
            resources.push(condition(&format!("{}-cond", p.id), &p.id, code));
        }
        // A mental-health note of a: never in a research export.
        resources.push(labelled(
            observation(&format!("{}-psy", a.id), &a.id, psy_value),
            ACT_CODE,
            "PSY",
        ));
        for p in [&a, &b, &b2, &u, &l] {
            resources.push(research_consent(
                &format!("{}-consent", p.id),
                &p.id,
                "active",
            ));
        }
        import(&server, &resources).await;
        let every = [&a, &b, &b2, &u, &c, &l];

        // ---- The first export: a, b, b2 and u.
        let out1 = work.path().join("export1");
        let o = deidentify(&server, &config, &out1, &[]).await;
        o.assert_ok("deidentify");
        for p in every {
            assert!(
                !o.stderr.contains(&p.id) && !o.stderr.contains(p.family.text()),
                "{label}: PHI on stderr: {}",
                o.stderr
            );
        }
        #[cfg(unix)]
        {
            assert_eq!(mode(&out1), 0o700, "{label}");
            for e in std::fs::read_dir(&out1).unwrap() {
                assert_eq!(mode(&e.unwrap().path()), 0o600, "{label}");
            }
        }
        let mut names: Vec<String> = std::fs::read_dir(&out1)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "Condition.ndjson",
                "Observation.ndjson",
                "Patient.ndjson",
                "report.json"
            ],
            "{label}"
        );
        assert_eq!(ndjson(&out1, "Patient.ndjson").len(), 4, "{label}");
        assert_eq!(ndjson(&out1, "Observation.ndjson").len(), 4, "{label}");
        let text = all_text(&out1);
        for p in every {
            assert!(
                !text.contains(&p.id),
                "{label}: an original id in the export"
            );
            assert!(
                !text.contains(p.family.text()),
                "{label}: a name in the export"
            );
        }
        for (what, v) in [
            ("c's observation (no consent)", c.value),
            ("l's observation (labelled patient)", l.value),
            ("a's labelled observation", psy_value),
        ] {
            assert!(
                !text.contains(&v.to_string()),
                "{label}: {what} was exported"
            );
        }
        for p in [&a, &b, &b2, &u] {
            assert!(text.contains(&p.value.to_string()), "{label}: {}", p.id);
        }
        let r1 = report(&out1);
        assert_eq!(r1["patientsReleased"], 4, "{label}: {r1}");
        assert_eq!(r1["patientsWithoutConsent"], 1, "{label}: {r1}");
        assert_eq!(r1["patientsSuppressed"], 0, "{label}: {r1}");
        assert_eq!(r1["risk"]["k"], 1, "{label}: u is alone in its class: {r1}");
        assert_eq!(r1["risk"]["smallestClasses"], 1, "{label}: {r1}");
        assert_eq!(r1["risk"]["classes"], 2, "{label}: {r1}");
        assert!(r1["kThreshold"].is_null(), "{label}: {r1}");
        let hash = r1["configurationHash"].as_str().unwrap().to_owned();
        assert_eq!(hash.len(), 64, "{label}");
        assert!(o.stderr.contains(&hash), "{label}: {}", o.stderr);
        assert!(
            r1["rulesApplied"]
                .as_object()
                .is_some_and(|m| !m.is_empty())
        );

        // The audit entry is in the access log of each released patient, and no other.
        for p in [&a, &b, &b2, &u] {
            let entries = research_entries(&server, &p.id).await;
            assert_eq!(entries.len(), 1, "{label}: {}: {entries:?}", p.id);
            let e = &entries[0];
            assert_eq!(e["purpose"], "HRESCH", "{label}: {e}");
            assert_eq!(e["outcome"], "allowed", "{label}: {e}");
            assert_eq!(e["configuration"], hash.as_str(), "{label}: {e}");
            assert!(
                e["actor_id"].as_str().unwrap().starts_with("cli"),
                "{label}: {e}"
            );
        }
        for p in [&c, &l] {
            assert!(
                research_entries(&server, &p.id).await.is_empty(),
                "{label}: {} was not exported",
                p.id
            );
        }
        // ... as the patient access log shows it (an auditor reads it).
        let auditor = random_username();
        let pw = server.create_user(&auditor, "auditor").await;
        let account = server.sign_in(&auditor, "auditor", &pw, false).await;
        let aud = server.api_as(&account.token);
        let research_events = async |p: &Person| {
            let r = aud
                .get(&format!("Patient/{}/$access-log?_count=500", p.id))
                .await;
            assert_eq!(r.status, 200, "{label}: {r:?}");
            phivault_testkit::search_matches(&r.json(), "AuditEvent")
                .into_iter()
                .filter(|e| e["purposeOfEvent"][0]["coding"][0]["code"] == "HRESCH")
                .count()
        };
        assert_eq!(research_events(&a).await, 1, "{label}: a's access log");
        assert_eq!(research_events(&c).await, 0, "{label}: c's access log");

        // ---- An existing, non-empty --out is refused before anything is read.
        let o = deidentify(&server, &config, &out1, &[]).await;
        o.assert_error("deidentify into a non-empty directory", "not empty");
        assert_eq!(research_entries(&server, &a.id).await.len(), 1, "{label}");

        // ---- a withdraws their consent; the next export, with --k 2, leaves a out and
        // suppresses u (alone in their class).
        import(
            &server,
            &[research_consent(
                &format!("{}-consent", a.id),
                &a.id,
                "inactive",
            )],
        )
        .await;
        let out2 = work.path().join("export2");
        let o = deidentify(&server, &config, &out2, &["--k", "2"]).await;
        o.assert_ok("deidentify --k 2");
        let r2 = report(&out2);
        assert_eq!(r2["patientsReleased"], 2, "{label}: {r2}");
        assert_eq!(r2["patientsSuppressed"], 1, "{label}: {r2}");
        assert_eq!(r2["patientsWithoutConsent"], 2, "{label}: {r2}");
        assert_eq!(r2["kThreshold"], 2, "{label}: {r2}");
        assert_eq!(r2["risk"]["k"], 1, "{label}: before suppression: {r2}");
        assert_eq!(r2["riskReleased"]["k"], 2, "{label}: released: {r2}");
        assert_eq!(r2["resources"]["Observation"]["suppressed"], 1, "{label}");
        assert_eq!(r2["configurationHash"], hash.as_str(), "{label}");
        assert_eq!(ndjson(&out2, "Patient.ndjson").len(), 2, "{label}");
        let text = all_text(&out2);
        assert!(!text.contains(&a.value.to_string()), "{label}: a withdrew");
        assert!(
            !text.contains(&u.value.to_string()),
            "{label}: u suppressed"
        );
        for p in [&b, &b2] {
            assert!(text.contains(&p.value.to_string()), "{label}: {}", p.id);
        }
        assert!(o.stderr.contains("1 suppressed"), "{label}: {}", o.stderr);
        for (p, n) in [(&a, 1), (&b, 2), (&b2, 2), (&u, 1), (&c, 0), (&l, 0)] {
            assert_eq!(
                research_entries(&server, &p.id).await.len(),
                n,
                "{label}: research entries of {}",
                p.id
            );
        }
        server.assert_no_panic();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn configured_defaults_and_keys() {
    for backend in backends() {
        let label = backend.name();
        let server = Server::start(BIN, &backend, &[]).await;
        let work = tempfile::tempdir().unwrap();
        let c = person("c", 2001.5);
        let d = person("d", 2002.5);
        let mut resources = Vec::new();
        for p in [&c, &d] {
            resources.push(patient(p, "1970-01-01", "other", "02139"));
            resources.push(observation(&format!("{}-obs", p.id), &p.id, p.value));
        }
        import(&server, &resources).await;
        let key = work.path().join("k1");
        std::fs::write(&key, format!("{}\n", "1a".repeat(32))).unwrap();
        let other = work.path().join("k2");
        std::fs::write(&other, format!("{}\n", "2b".repeat(32))).unwrap();

        // Without a key anywhere: refused by name, before the store is read.
        let bare = work.path().join("bare.toml");
        std::fs::write(&bare, "extends = \"safe-harbor\"\n").unwrap();
        let o = deidentify(&server, &bare, &work.path().join("none"), &[]).await;
        o.assert_error("deidentify without a key", "--key");
        assert!(!work.path().join("none").exists(), "{label}");

        // A de-identification configuration given as --config (the server's) is named.
        let o = deidentify(
            &server,
            &bare,
            &work.path().join("none"),
            &["--config", &bare.display().to_string()],
        )
        .await;
        o.assert_error(
            "a de-identification configuration as --config",
            "--deid-config",
        );

        // Nobody has a consent: research denied by default, an empty export, still audited.
        let config = work.path().join("deid.toml");
        std::fs::write(&config, "extends = \"safe-harbor\"\nkey_file = \"k1\"\n").unwrap();
        let out = work.path().join("denied");
        deidentify(&server, &config, &out, &[])
            .await
            .assert_ok("deidentify, nobody consents");
        let r = report(&out);
        assert_eq!(r["patientsReleased"], 0, "{label}: {r}");
        assert_eq!(r["patientsWithoutConsent"], 2, "{label}: {r}");
        assert!(ndjson(&out, "Patient.ndjson").is_empty(), "{label}");
        assert!(research_entries(&server, &c.id).await.is_empty(), "{label}");

        // The server configuration permits research by default: both are exported.
        let server_config = work.path().join("phivault.toml");
        std::fs::write(&server_config, "[consent_defaults]\nHRESCH = \"permit\"\n").unwrap();
        let sc = server_config.display().to_string();
        let out1 = work.path().join("permitted");
        deidentify(&server, &config, &out1, &["--config", &sc])
            .await
            .assert_ok("deidentify with research permitted by default");
        let r = report(&out1);
        assert_eq!(r["patientsReleased"], 2, "{label}: {r}");
        assert_eq!(r["patientsWithoutConsent"], 0, "{label}: {r}");
        for p in [&c, &d] {
            assert_eq!(research_entries(&server, &p.id).await.len(), 1, "{label}");
        }

        // The same key gives the same pseudonyms; --key replaces the configuration's.
        let ids = |dir: &Path| -> Vec<String> {
            let mut v: Vec<String> = ndjson(dir, "Patient.ndjson")
                .iter()
                .map(|p| p["id"].as_str().unwrap().to_owned())
                .collect();
            v.sort();
            v
        };
        let out2 = work.path().join("again");
        deidentify(&server, &config, &out2, &["--config", &sc])
            .await
            .assert_ok("deidentify again");
        assert_eq!(ids(&out1), ids(&out2), "{label}: stable pseudonyms");
        let out3 = work.path().join("other-key");
        let k2 = other.display().to_string();
        deidentify(&server, &config, &out3, &["--config", &sc, "--key", &k2])
            .await
            .assert_ok("deidentify --key");
        let (first, third) = (ids(&out1), ids(&out3));
        assert_eq!(third.len(), 2, "{label}");
        assert!(
            first.iter().all(|i| !third.contains(i)),
            "{label}: another key shares no pseudonym"
        );
        // Every run left its entry, the one that released nobody too (naming nobody).
        let db = server.db().await;
        let rows = sqlx::query("SELECT body FROM audit_entries ORDER BY seq")
            .fetch_all(&db)
            .await
            .unwrap();
        db.close().await;
        let runs: Vec<Value> = rows
            .iter()
            .map(|r| serde_json::from_slice::<Value>(&r.get::<Vec<u8>, _>("body")).unwrap())
            .filter(|v| v["action"] == "cli deidentify")
            .collect();
        assert_eq!(runs.len(), 4, "{label}: {runs:?}");
        assert!(runs[0]["patient_id"].is_null() && runs[0].get("patients").is_none());
        assert_eq!(research_entries(&server, &d.id).await.len(), 3, "{label}");
        // Fail-closed: when the entry cannot be written, no export is left behind.
        refuse_audit_inserts(&server, true).await;
        let refused = work.path().join("refused");
        let o = deidentify(&server, &config, &refused, &["--config", &sc]).await;
        refuse_audit_inserts(&server, false).await;
        o.assert_error(
            "deidentify without an audit trail",
            "the export was removed",
        );
        assert!(!refused.exists(), "{label}: an unaudited export was left");
        let leftovers: Vec<_> = std::fs::read_dir(work.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".partial-"))
            .collect();
        assert!(leftovers.is_empty(), "{label}: {leftovers:?}");

        server.assert_no_panic();
    }
}
