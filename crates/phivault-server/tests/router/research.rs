//! De-identified research exports (`$export?deidentification=<project>`): only through a
//! configured project, only for research, only the patients whose research consent permits
//! it (withdrawal counts at the next export), never labelled data, nothing identifying in the
//! files, and audited per patient with the configuration's hash.

use super::*;
use phivault_deid::{Config, Deidentifier, ProjectKey};
use phivault_server::{ResearchProject, ResearchProjects};

const FAMILIES: [&str; 3] = ["Consentsyes", "Consentsnever", "Consentswithdrawn"];

fn research_consent(patient: &str) -> Value {
    json!({
        "resourceType": "Consent",
        "status": "active",
        "scope": {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/consentscope",
            "code": "research",
        }]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "57016-8"}]}],
        "patient": {"reference": format!("Patient/{patient}")},
        "provision": {"type": "permit"},
    })
}

fn with_project(c: &Ctx, k: Option<usize>) -> AppState {
    let engine = Deidentifier::new(
        Config::preset("safe-harbor").unwrap(),
        ProjectKey::from_bytes(&[7; 32]).unwrap(),
        2026,
    );
    let project = ResearchProject::new("cardio", engine, k).unwrap();
    c.state
        .clone()
        .with_research_projects(ResearchProjects::new(vec![project]).unwrap())
}

/// Kicks off `uri` as `token` with `purpose`; returns the answer.
async fn kick_off(c: &Ctx, token: &str, uri: &str, purpose: &str) -> Answer {
    c.send(
        c.req_as(token, Method::GET, uri)
            .header("prefer", "respond-async")
            .header("x-purpose-of-use", purpose)
            .body(Body::empty())
            .unwrap(),
    )
    .await
}

/// The manifest of an accepted kick-off and every file's text, by type.
async fn fetch(c: &Ctx, token: &str, a: &Answer) -> (Value, BTreeMap<String, String>) {
    assert_eq!(a.status, StatusCode::ACCEPTED, "{a:?}");
    let status = a.header("content-location").unwrap().to_owned();
    let m = c
        .get_as(
            token,
            &format!("/fhir{}", status.strip_prefix(BASE).unwrap()),
        )
        .await;
    assert_eq!(m.status, StatusCode::OK, "{m:?}");
    let manifest = m.json();
    let mut files = BTreeMap::new();
    for o in manifest["output"].as_array().unwrap() {
        let url = o["url"].as_str().unwrap();
        let f = c
            .get_as(token, &format!("/fhir{}", url.strip_prefix(BASE).unwrap()))
            .await;
        assert_eq!(f.status, StatusCode::OK, "{f:?}");
        files.insert(
            o["type"].as_str().unwrap().to_owned(),
            String::from_utf8(f.body.clone()).unwrap(),
        );
    }
    (manifest, files)
}

/// The audit entry of the last export kick-off after entry `after`.
async fn export_entry(c: &Ctx, after: u64) -> phivault_audit::AuditEntry {
    audit_entries_after(c, after)
        .await
        .into_iter()
        .rev()
        .map(|(e, _)| e)
        .find(|e| e.action == "GET /fhir/$export")
        .expect("the kick-off is audited")
}

#[tokio::test]
async fn research_exports_follow_consent_and_release_nothing_identifying() {
    for (backend, mut c) in backend_contexts("research").await {
        c.state = with_project(&c, None);
        let mut ids = Vec::new();
        for family in FAMILIES {
            let (pid, a) = c.create(&patient(family)).await;
            assert_eq!(a.status, StatusCode::CREATED, "{backend} {a:?}");
            let (_, a) = c.create(&observation(&pid)).await;
            assert_eq!(a.status, StatusCode::CREATED, "{a:?}");
            ids.push(pid);
        }
        // A labelled record of a consenting patient never leaves.
        let admin = c.person("admin", Role::Admin).await;
        let psych = c.person("psych", Role::Clinician).await;
        c.grant(&admin, "psych", &ids[0], &["PSY"]).await;
        let (_, a) = c.create_as(&psych, &psy_observation(&ids[0])).await;
        assert_eq!(a.status, StatusCode::CREATED, "{a:?}");
        let mut consents = Vec::new();
        for (i, pid) in ids.iter().enumerate() {
            if i == 1 {
                continue;
            }
            let me = patient_session(&c, &format!("patient{i}"), pid).await;
            let a = c
                .json_as(&me, Method::POST, "/fhir/Consent", &research_consent(pid))
                .await;
            assert_eq!(a.status, StatusCode::CREATED, "{backend} {a:?}");
            consents.push((me, a.json()));
        }
        let researcher = c.person("researcher", Role::Researcher).await;

        // Not through a project: researchers read nothing identified.
        kick_off(&c, &researcher, "/fhir/$export", "HRESCH")
            .await
            .assert_outcome(StatusCode::FORBIDDEN, "forbidden");
        // An unknown project, or filters the recipient must not use: 400.
        kick_off(
            &c,
            &researcher,
            "/fhir/$export?deidentification=nope",
            "HRESCH",
        )
        .await
        .assert_outcome(StatusCode::BAD_REQUEST, "value");
        kick_off(
            &c,
            &researcher,
            "/fhir/$export?deidentification=cardio&_since=2020-01-01T00:00:00Z",
            "HRESCH",
        )
        .await
        .assert_outcome(StatusCode::BAD_REQUEST, "value");
        // Clinicians and system apps outside research: refused.
        let doc = c.person("doc", Role::Clinician).await;
        kick_off(&c, &doc, "/fhir/$export?deidentification=cardio", "TREAT")
            .await
            .assert_outcome(StatusCode::FORBIDDEN, "forbidden");
        let a = kick_off(
            &c,
            &c.token,
            "/fhir/$export?deidentification=cardio",
            "TREAT",
        )
        .await;
        a.assert_outcome(StatusCode::FORBIDDEN, "forbidden");
        assert!(a.diagnostics().contains("HRESCH"), "{a:?}");

        let before = audit_count(&c).await;
        let a = kick_off(
            &c,
            &researcher,
            "/fhir/$export?deidentification=cardio",
            "HRESCH",
        )
        .await;
        let (manifest, files) = fetch(&c, &researcher, &a).await;
        let report = &manifest["extension"]["deidentification"];
        assert_eq!(report["project"], "cardio", "{manifest}");
        assert_eq!(report["patientsReleased"], 2, "{report}");
        assert_eq!(report["patientsWithoutConsent"], 1, "{report}");
        let hash = report["configurationHash"].as_str().unwrap().to_owned();
        assert_eq!(hash.len(), 64);
        let count = |t: &str| {
            manifest["output"]
                .as_array()
                .unwrap()
                .iter()
                .find(|o| o["type"] == t)
                .map_or(0, |o| o["count"].as_u64().unwrap())
        };
        assert_eq!(
            (count("Patient"), count("Observation")),
            (2, 2),
            "{manifest}"
        );
        let all: String = files.values().cloned().collect();
        for (family, pid) in FAMILIES.iter().zip(&ids) {
            assert!(!all.contains(family), "{backend}: a name left: {all}");
            assert!(!all.contains(pid.as_str()), "{backend}: an id left: {all}");
        }
        assert!(all.contains("8867-4"), "the clinical code survives: {all}");
        // Audited: the consenting patients (and only they) find a research use.
        let kick = export_entry(&c, before).await;
        assert_eq!(kick.purpose.as_deref(), Some("HRESCH"));
        assert_eq!(kick.configuration.as_deref(), Some(hash.as_str()));
        assert!(kick.concerns(&ids[0]) && kick.concerns(&ids[2]), "{kick:?}");
        assert!(!kick.concerns(&ids[1]), "{kick:?}");
        let me = &consents[0].0;
        let log = c
            .get_as(me, &format!("/fhir/Patient/{}/$access-log", ids[0]))
            .await;
        assert_eq!(log.status, StatusCode::OK, "{log:?}");
        let text = String::from_utf8(log.body.clone()).unwrap();
        assert!(
            text.contains("HRESCH") && text.contains(&hash),
            "{backend}: {text}"
        );

        // The third patient withdraws: the next export leaves them out.
        let (me, mut consent) = consents.pop().unwrap();
        consent["status"] = json!("inactive");
        let a = c
            .json_as(
                &me,
                Method::PUT,
                &format!("/fhir/Consent/{}", consent["id"].as_str().unwrap()),
                &consent,
            )
            .await;
        assert_eq!(a.status, StatusCode::OK, "{a:?}");
        let before = audit_count(&c).await;
        let a = kick_off(
            &c,
            &researcher,
            "/fhir/$export?deidentification=cardio",
            "HRESCH",
        )
        .await;
        let (manifest, files) = fetch(&c, &researcher, &a).await;
        let report = &manifest["extension"]["deidentification"];
        assert_eq!(report["patientsReleased"], 1, "{backend} {report}");
        assert_eq!(report["patientsWithoutConsent"], 2, "{report}");
        assert_eq!(files["Patient"].lines().count(), 1);
        let kick = export_entry(&c, before).await;
        assert!(
            kick.concerns(&ids[0]) && !kick.concerns(&ids[2]),
            "{kick:?}"
        );

        // Pseudonyms are stable across exports of one project.
        let first: Value = serde_json::from_str(files["Patient"].lines().next().unwrap()).unwrap();
        let again = kick_off(
            &c,
            &researcher,
            "/fhir/$export?deidentification=cardio",
            "HRESCH",
        )
        .await;
        let (_, again) = fetch(&c, &researcher, &again).await;
        let second: Value = serde_json::from_str(again["Patient"].lines().next().unwrap()).unwrap();
        assert_eq!(first["id"], second["id"]);
        assert_eq!(first["id"].as_str().unwrap().len(), 64);
    }
}

#[tokio::test]
async fn research_apps_need_research_scopes_and_small_classes_are_withheld() {
    let mut c = ctx().await;
    c.state = with_project(&c, Some(2));
    let mut ids = Vec::new();
    for (i, family) in ["Alpha", "Beta", "Gamma"].iter().enumerate() {
        let mut p = patient(family);
        // Two share a class (same birth year, gender, ZIP3); the third is alone in its own.
        p["gender"] = json!(if i < 2 { "female" } else { "male" });
        p["birthDate"] = json!("1970-02-03");
        p["address"] = json!([{"postalCode": "02139", "state": "MA"}]);
        let (pid, a) = c.create(&p).await;
        assert_eq!(a.status, StatusCode::CREATED, "{a:?}");
        let me = patient_session(&c, &format!("p{i}"), &pid).await;
        let a = c
            .json_as(&me, Method::POST, "/fhir/Consent", &research_consent(&pid))
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{a:?}");
        ids.push(pid);
    }
    // A research app with system/ search scopes for Patient only.
    let (id, secret) = c.client("study", "system/Patient.rs", None).await;
    let app = c.client_token(&id, &secret, None).await;
    let a = kick_off(&c, &app, "/fhir/$export?deidentification=cardio", "HRESCH").await;
    let (manifest, files) = fetch(&c, &app, &a).await;
    let report = &manifest["extension"]["deidentification"];
    assert_eq!(report["risk"]["k"], 1, "{report}");
    assert_eq!(report["kThreshold"], 2, "{report}");
    assert_eq!(report["patientsSuppressed"], 1, "{report}");
    assert_eq!(report["riskReleased"]["k"], 2, "{report}");
    assert_eq!(files["Patient"].lines().count(), 2);
    assert!(!files["Patient"].contains("\"male\""), "{files:?}");
    // The withheld patient is not named in the export's audit entry; the others are.
    let kick = export_entry(&c, 0).await;
    assert!(kick.concerns(&ids[0]) && kick.concerns(&ids[1]), "{kick:?}");
    assert!(!kick.concerns(&ids[2]), "{kick:?}");
    // Its scopes do not reach Observations: naming them is refused per patient, so none.
    assert!(!files.contains_key("Observation"));
}
