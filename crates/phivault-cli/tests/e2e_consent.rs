//! Consent in decisions, over HTTPS against the real binary, on every backend: a research
//! app reads a patient who consented, and the same token is refused on the next request once
//! the patient withdraws (status `inactive`, or a new deny provision); research is denied by
//! default; a treatment denial for one clinician's Practitioner blocks that clinician and no
//! other; break-the-glass passes a denial (flagged) and nothing else does (another purpose
//! of use, ETREAT without a reason); Consent writes are checked (422s) and only the patient
//! (or a principal an operator's policy names) may write them; configured consent defaults;
//! the register of processing activities.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use phivault_testkit::fixtures::{self, LOINC, coding};
use phivault_testkit::{Api, Marker, Resp, Server, backends, query, random_username};
use reqwest::Method;
use reqwest::header::CONTENT_TYPE;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_phivault");
const SCOPE_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/consentscope";
const PURPOSE_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v3-ActReason";

fn consent(patient: &str, scope: &str, provision: Value) -> Value {
    json!({
        "resourceType": "Consent",
        "status": "active",
        "scope": {"coding": [{"system": SCOPE_SYSTEM, "code": scope}]},
        "category": [{"coding": [{"system": LOINC, "code": "59284-0"}]}],
        "patient": {"reference": format!("Patient/{patient}")},
        "provision": provision,
    })
}

fn purpose(code: &str) -> Value {
    json!({"system": PURPOSE_SYSTEM, "code": code})
}

fn research_permit(patient: &str) -> Value {
    consent(
        patient,
        "research",
        json!({"type": "permit", "purpose": [purpose("HRESCH")]}),
    )
}

fn observation(patient: &str, code: &Marker) -> Value {
    fixtures::observation(
        &format!("Patient/{patient}"),
        coding(Some(LOINC), code.text(), "Consent test"),
        "2024-05-06T07:08:09Z",
    )
}

/// A request with a purpose of use.
async fn with_purpose(api: &Api, method: Method, path: &str, purpose: &str) -> Resp {
    Api::send(
        api.request(method, path)
            .header("X-Purpose-Of-Use", purpose),
    )
    .await
}

/// The ids a search lists, and its total.
async fn search(api: &Api, path: &str, purpose: &str) -> (Vec<String>, u64) {
    let r = with_purpose(api, Method::GET, path, purpose).await;
    r.assert_status(200);
    let b = r.json();
    let mut ids: Vec<String> = b["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["resource"]["id"].as_str())
        .map(str::to_owned)
        .collect();
    ids.sort();
    (ids, b["total"].as_u64().unwrap_or(u64::MAX))
}

/// A patient user linked to `patient`, signed in.
async fn patient_user(server: &Server, patient: &str) -> Api {
    let username = random_username();
    let password = server.create_user(&username, "patient").await;
    server.link_patient(&username, patient).await;
    let account = server.sign_in(&username, "patient", &password, false).await;
    server.api_as(&account.token)
}

/// A clinician linked to `practitioner` (if any) with a grant on `patient` (if any).
async fn clinician(server: &Server, practitioner: Option<&str>, patient: Option<&str>) -> Api {
    let username = random_username();
    let password = server.create_user(&username, "clinician").await;
    if let Some(p) = practitioner {
        server.link_practitioner(&username, p).await;
    }
    if let Some(p) = patient {
        server.grant(&username, p, &[], None).await;
    }
    let account = server
        .sign_in(&username, "clinician", &password, false)
        .await;
    server.api_as(&account.token)
}

/// A research app: an OAuth2 client with `system/*.rs`, its requests with `HRESCH`.
async fn research_app(server: &Server) -> (Api, String) {
    let (id, secret) = server.add_client("research", "system/*.rs", None).await;
    let token = server.client_credentials(&id, &secret, None).await;
    (server.api_as(&token), id)
}

#[tokio::test(flavor = "multi_thread")]
async fn research_consent_is_read_at_every_decision() {
    for backend in backends() {
        let server = Server::start(BIN, &backend, &[]).await;
        let sys = server.api().clone();
        let family = Marker::name();
        let code = Marker::code("cs-");
        let a = sys.create(&fixtures::patient(family.text(), "Alpha")).await;
        let b = sys.create(&fixtures::patient(family.text(), "Beta")).await;
        let oa = sys.create(&observation(&a, &code)).await;
        let _ob = sys.create(&observation(&b, &code)).await;
        let (research, _) = research_app(&server).await;
        let patient_a = patient_user(&server, &a).await;
        let by_code = query("Observation", &[("code", code.text())]);
        let by_family = query("Patient", &[("family", family.text())]);
        let read_a = format!("Patient/{a}");

        // Default deny for research: no consent yet.
        let r = with_purpose(&research, Method::GET, &read_a, "HRESCH").await;
        r.assert_outcome(403, &["consent"]);
        assert_eq!(search(&research, &by_code, "HRESCH").await, (vec![], 0));
        assert_eq!(search(&research, &by_family, "HRESCH").await, (vec![], 0));
        // The same app for treatment: the default permits.
        with_purpose(&research, Method::GET, &read_a, "TREAT")
            .await
            .assert_status(200);

        // A records a research permit consent.
        let r = patient_a.post_json("Consent", &research_permit(&a)).await;
        r.assert_status(201);
        let mut permit = r.json();
        let permit_id = permit["id"].as_str().unwrap().to_owned();

        with_purpose(&research, Method::GET, &read_a, "HRESCH")
            .await
            .assert_status(200);
        with_purpose(
            &research,
            Method::GET,
            &format!("Observation/{oa}"),
            "HRESCH",
        )
        .await
        .assert_status(200);
        // Searches list A's data, never B's, and count only it.
        assert_eq!(
            search(&research, &by_code, "HRESCH").await,
            (vec![oa.clone()], 1)
        );
        assert_eq!(
            search(&research, &by_family, "HRESCH").await,
            (vec![a.clone()], 1)
        );
        with_purpose(&research, Method::GET, &format!("Patient/{b}"), "HRESCH")
            .await
            .assert_outcome(403, &["consent"]);

        // Withdrawal (status inactive): the SAME token is refused on the next request.
        permit["status"] = json!("inactive");
        patient_a
            .put_json(&format!("Consent/{permit_id}"), &permit)
            .await
            .assert_status(200);
        with_purpose(&research, Method::GET, &read_a, "HRESCH")
            .await
            .assert_outcome(403, &["consent"]);
        assert_eq!(search(&research, &by_code, "HRESCH").await, (vec![], 0));
        assert_eq!(search(&research, &by_family, "HRESCH").await, (vec![], 0));

        // Re-activated, then withdrawn by a new deny provision (another consent).
        permit["status"] = json!("active");
        patient_a
            .put_json(&format!("Consent/{permit_id}"), &permit)
            .await
            .assert_status(200);
        with_purpose(&research, Method::GET, &read_a, "HRESCH")
            .await
            .assert_status(200);
        let deny = consent(
            &a,
            "patient-privacy",
            json!({"type": "deny", "purpose": [purpose("HRESCH"), purpose("HMARKT")]}),
        );
        patient_a
            .post_json("Consent", &deny)
            .await
            .assert_status(201);
        with_purpose(&research, Method::GET, &read_a, "HRESCH")
            .await
            .assert_outcome(403, &["consent"]);
        assert_eq!(search(&research, &by_code, "HRESCH").await, (vec![], 0));
        // The denial is about research and marketing: treatment still passes.
        with_purpose(&research, Method::GET, &read_a, "TREAT")
            .await
            .assert_status(200);
        assert_eq!(
            search(&research, &by_code, "TREAT").await.1,
            2,
            "treatment searches see both patients"
        );
        // The patient's own access does not depend on consent (their purposes are the
        // patient's: PATRQT, not research).
        with_purpose(&patient_a, Method::GET, &read_a, "PATRQT")
            .await
            .assert_status(200);
        with_purpose(&patient_a, Method::GET, &read_a, "HRESCH")
            .await
            .assert_outcome(403, &["purpose-not-permitted"]);
        server.assert_no_panic();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_treatment_denial_names_one_clinician_and_break_the_glass_passes_it() {
    for backend in backends() {
        let server = Server::start(BIN, &backend, &[]).await;
        let sys = server.api().clone();
        let p = sys
            .create(&fixtures::patient(Marker::name().text(), "Private"))
            .await;
        let code = Marker::code("ct-");
        let o = sys.create(&observation(&p, &code)).await;
        let d1 = sys.create(&fixtures::practitioner("Denied")).await;
        let d2 = sys.create(&fixtures::practitioner("Allowed")).await;
        let denied = clinician(&server, Some(&d1), Some(&p)).await;
        let allowed = clinician(&server, Some(&d2), Some(&p)).await;
        let patient = patient_user(&server, &p).await;
        let read = format!("Patient/{p}");
        let by_patient = query("Observation", &[("patient", &p)]);
        for api in [&denied, &allowed] {
            with_purpose(api, Method::GET, &read, "TREAT")
                .await
                .assert_status(200);
        }

        // Permit everything, except anything by Practitioner d1.
        let c = consent(
            &p,
            "patient-privacy",
            json!({"type": "permit", "provision": [{
                "type": "deny",
                "actor": [{
                    "role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "PRCP"}]},
                    "reference": {"reference": format!("Practitioner/{d1}")}
                }]
            }]}),
        );
        patient.post_json("Consent", &c).await.assert_status(201);

        with_purpose(&denied, Method::GET, &read, "TREAT")
            .await
            .assert_outcome(403, &["consent"]);
        with_purpose(&denied, Method::GET, &format!("Observation/{o}"), "TREAT")
            .await
            .assert_outcome(403, &["consent"]);
        let r = with_purpose(&denied, Method::GET, &by_patient, "TREAT").await;
        assert!(
            r.status == 403 || (r.status == 200 && r.json()["total"] == 0),
            "the denied clinician's search shows nothing: {r:?}"
        );
        // A write by the denied clinician: refused too.
        let r = Api::send(
            denied
                .request(Method::POST, "Observation")
                .header(CONTENT_TYPE, "application/fhir+json")
                .body(observation(&p, &code).to_string()),
        )
        .await;
        r.assert_outcome(403, &["consent"]);
        // ETREAT without a claim: refused (the denial covers it, and it is no claim).
        with_purpose(&denied, Method::GET, &read, "ETREAT")
            .await
            .assert_outcome(403, &["break-glass-required"]);

        // The other clinician: unaffected.
        with_purpose(&allowed, Method::GET, &read, "TREAT")
            .await
            .assert_status(200);
        assert_eq!(
            search(&allowed, &by_patient, "TREAT").await,
            (vec![o.clone()], 1)
        );

        // Break-the-glass passes the denial, flagged.
        let reason = Marker::name();
        let r = Api::send(
            denied
                .request(Method::GET, &read)
                .header("X-Purpose-Of-Use", "ETREAT")
                .header("X-Break-Glass-Reason", reason.text()),
        )
        .await;
        r.assert_status(200);
        assert_eq!(r.header("x-break-glass"), Some("recorded"), "{r:?}");
        // The recorded claim lasts: an ETREAT search sees the patient's data.
        assert_eq!(
            search(&denied, &by_patient, "ETREAT").await,
            (vec![o.clone()], 1)
        );
        // Listed for review.
        let admin = server.staff_session(&random_username(), "admin").await;
        let r = server
            .api_as(&admin)
            .get(&server.origin_url("/admin/break-glass"))
            .await;
        r.assert_status(200);
        assert!(r.text.contains(&p), "the claim is listed: {r:?}");
        assert!(!server.stderr_text().contains(reason.text()));
        server.assert_no_panic();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_treatment_denial_is_not_passed_by_another_purpose() {
    for backend in backends() {
        let server = Server::start(BIN, &backend, &[]).await;
        let sys = server.api().clone();
        let p = sys
            .create(&fixtures::patient(Marker::name().text(), "Refuses"))
            .await;
        let code = Marker::code("pu-");
        let o = sys.create(&observation(&p, &code)).await;
        let care = clinician(&server, None, Some(&p)).await;
        let patient = patient_user(&server, &p).await;
        let read = format!("Observation/{o}");
        with_purpose(&care, Method::GET, &read, "TREAT")
            .await
            .assert_status(200);
        patient
            .post_json(
                "Consent",
                &consent(
                    &p,
                    "patient-privacy",
                    json!({"type": "deny", "purpose": [purpose("TREAT")]}),
                ),
            )
            .await
            .assert_status(201);
        with_purpose(&care, Method::GET, &read, "TREAT")
            .await
            .assert_outcome(403, &["consent-denies"]);
        // Payment and operations are not a clinician's purposes (by default): refused with
        // what the role may assert.
        for other in ["HPAYMT", "HOPERAT"] {
            with_purpose(&care, Method::GET, &read, other)
                .await
                .assert_outcome(403, &["purpose-not-permitted", other, "TREAT"]);
        }
        // ETREAT without a reason: refused, and nothing is recorded as break-the-glass.
        with_purpose(&care, Method::GET, &read, "ETREAT")
            .await
            .assert_outcome(403, &["break-glass-required"]);
        let admin = server.staff_session(&random_username(), "admin").await;
        let r = server
            .api_as(&admin)
            .get(&server.origin_url("/admin/break-glass"))
            .await;
        r.assert_status(200);
        assert!(!r.text.contains(&p), "no claim was recorded: {r:?}");
        server.assert_no_panic();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn consent_writes_are_checked() {
    // Apps never change a patient's Consents unless the operator names them: here every app
    // may (a privacy office's system recording signed forms), so the checks are reached.
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("privacy-office.cedar");
    std::fs::write(
        &policy,
        r#"@id("privacy_office")
permit (principal is PhiVault::Client, action in PhiVault::Action::"clinical_write", resource is PhiVault::Resource)
when { resource.rtype == "Consent" && context.scope_permits };
"#,
    )
    .unwrap();
    let policy = policy.display().to_string();
    for backend in backends() {
        let server = Server::start(BIN, &backend, &["--policy-file", &policy]).await;
        let sys = server.api().clone();
        let p = sys
            .create(&fixtures::patient(Marker::name().text(), "Writer"))
            .await;
        let other = sys
            .create(&fixtures::patient(Marker::name().text(), "Other"))
            .await;

        // No patient.
        let mut no_patient = research_permit(&p);
        no_patient.as_object_mut().unwrap().remove("patient");
        sys.post_json("Consent", &no_patient)
            .await
            .assert_outcome(422, &["Consent.patient"]);
        // An unknown patient (the system app may write anywhere, so it learns that).
        sys.post_json("Consent", &research_permit("no-such-patient"))
            .await
            .assert_outcome(422, &["Consent.patient", "does not exist"]);
        // Contradicting provisions: permit and deny research at the same level, overlapping.
        let contradicting = consent(
            &p,
            "patient-privacy",
            json!({"provision": [
                {"type": "permit", "purpose": [purpose("HRESCH")], "period": {"start": "2025-01-01"}},
                {"type": "deny", "purpose": [purpose("HRESCH")], "period": {"end": "2025-06-30"}}
            ]}),
        );
        sys.post_json("Consent", &contradicting)
            .await
            .assert_outcome(
                422,
                &[
                    "Consent.provision.provision[1]",
                    "contradicts Consent.provision.provision[0]",
                    "HRESCH",
                ],
            );
        // Not contradicting once the periods do not overlap.
        let mut fine = contradicting.clone();
        fine["provision"]["provision"][1]["period"] = json!({"end": "2024-12-31"});
        sys.post_json("Consent", &fine).await.assert_status(201);
        // Unknown purpose, unknown class, unsupported actor, nesting too deep.
        let bad = [
            (
                json!({"type": "permit", "purpose": [purpose("CURIOSITY")]}),
                "Consent.provision.purpose[0]",
            ),
            (
                json!({"type": "permit", "class": [{"system": "http://hl7.org/fhir/resource-types", "code": "Spaceship"}]}),
                "Consent.provision.class[0]",
            ),
            (
                json!({"type": "deny", "actor": [{"role": {"text": "x"}, "reference": {"reference": "Organization/o1"}}]}),
                "Consent.provision.actor[0].reference",
            ),
            (
                json!({"type": "deny", "provision": [{"type": "permit", "provision": [{"type": "deny"}]}]}),
                "Consent.provision.provision[0].provision",
            ),
        ];
        for (provision, path) in bad {
            sys.post_json("Consent", &consent(&p, "patient-privacy", provision))
                .await
                .assert_outcome(422, &[path]);
        }
        // The same checks in a transaction, and an update.
        let bundle = json!({
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [{
                "resource": research_permit("no-such-patient"),
                "request": {"method": "POST", "url": "Consent"}
            }]
        });
        let r = sys.post_json("", &bundle).await;
        assert!(
            r.status == 400 || r.status == 422,
            "a transaction with a Consent of an unknown patient is refused: {r:?}"
        );
        assert!(r.issue_text().contains("does not exist"), "{r:?}");
        let r = sys.post_json("Consent", &research_permit(&p)).await;
        r.assert_status(201);
        let mut stored = r.json();
        let id = stored["id"].as_str().unwrap().to_owned();
        stored["provision"] = contradicting["provision"].clone();
        sys.put_json(&format!("Consent/{id}"), &stored)
            .await
            .assert_outcome(422, &["contradicts"]);

        // Who may write: the patient (their own only); not their care team, not an admin, not
        // another patient, not a clinician without a care relationship.
        let patient = patient_user(&server, &p).await;
        let r = patient.post_json("Consent", &research_permit(&p)).await;
        r.assert_status(201);
        let mut own = r.json();
        let own_id = own["id"].as_str().unwrap().to_owned();
        own["status"] = json!("inactive");
        patient
            .put_json(&format!("Consent/{own_id}"), &own)
            .await
            .assert_status(200);
        patient
            .delete(&format!("Consent/{own_id}"))
            .await
            .assert_outcome(403, &["access denied"]);
        patient
            .post_json("Consent", &research_permit(&other))
            .await
            .assert_outcome(403, &["access denied"]);
        // A patient's write to an unknown patient is refused as out of reach (403), never
        // telling whether that patient exists.
        patient
            .post_json("Consent", &research_permit("no-such-patient"))
            .await
            .assert_outcome(403, &["access denied"]);
        let care = clinician(&server, None, Some(&p)).await;
        care.post_json("Consent", &research_permit(&p))
            .await
            .assert_outcome(403, &["access denied"]);
        // Nor withdraw or delete the patient's consent.
        let r = patient.post_json("Consent", &research_permit(&p)).await;
        r.assert_status(201);
        let mut theirs = r.json();
        let theirs_id = theirs["id"].as_str().unwrap().to_owned();
        theirs["status"] = json!("inactive");
        care.put_json(&format!("Consent/{theirs_id}"), &theirs)
            .await
            .assert_outcome(403, &["access denied"]);
        care.delete(&format!("Consent/{theirs_id}"))
            .await
            .assert_outcome(403, &["access denied"]);
        let stranger = clinician(&server, None, None).await;
        stranger
            .post_json("Consent", &research_permit(&p))
            .await
            .assert_outcome(403, &["access denied"]);
        let admin = server.api_as(&server.staff_session(&random_username(), "admin").await);
        admin
            .post_json("Consent", &research_permit(&p))
            .await
            .assert_outcome(403, &["access denied"]);
        server.assert_no_panic();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn configured_defaults_and_the_register_of_processing_activities() {
    let backend = backends().remove(0);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("phivault.toml");
    std::fs::write(
        &config,
        r#"
[consent_defaults]
HRESCH = "permit"
TREAT = "deny"

[[processing_activities]]
name = "registry"
description = "A disease registry."
purposes = ["HRESCH"]
legal_basis = "art. 9(2)(j)"
data_subjects = ["patients"]
data_classes = ["Condition"]
recipients = ["the registry"]
retention = "25 years"
"#,
    )
    .unwrap();
    let config_arg = config.display().to_string();
    let server = Server::start(BIN, &backend, &["--config", &config_arg]).await;
    let sys = server.api().clone();
    // Treatment is denied by default here: the system app registers the patient for
    // operations (HOPERAT, still permitted by default).
    let r = Api::send(
        sys.request(Method::POST, "Patient")
            .header("X-Purpose-Of-Use", "HOPERAT")
            .header(CONTENT_TYPE, "application/fhir+json")
            .body(fixtures::patient(Marker::name().text(), "Defaults").to_string()),
    )
    .await;
    r.assert_status(201);
    let p = r.json()["id"].as_str().unwrap().to_owned();
    let (research, _) = research_app(&server).await;
    let read = format!("Patient/{p}");
    // Research permitted by default now; treatment denied unless permitted.
    with_purpose(&research, Method::GET, &read, "HRESCH")
        .await
        .assert_status(200);
    with_purpose(&research, Method::GET, &read, "TREAT")
        .await
        .assert_outcome(403, &["consent"]);
    // A consent still decides over the default.
    let patient = patient_user(&server, &p).await;
    patient
        .post_json(
            "Consent",
            &consent(
                &p,
                "patient-privacy",
                json!({"type": "permit", "purpose": [purpose("TREAT")]}),
            ),
        )
        .await
        .assert_status(201);
    with_purpose(&research, Method::GET, &read, "TREAT")
        .await
        .assert_status(200);

    // The register: any authenticated principal; configured content and defaults.
    for api in [&sys, &patient, &research] {
        let r = api
            .get(&server.origin_url("/privacy/processing-activities"))
            .await;
        r.assert_status(200);
        let v = r.json();
        assert_eq!(v["processing_activities"][0]["name"], "registry", "{v}");
        assert_eq!(v["processing_activities"][0]["retention"], "25 years");
        assert_eq!(v["processing_activities"].as_array().unwrap().len(), 1);
        assert_eq!(v["consent_defaults"]["HRESCH"], "permit");
        assert_eq!(v["consent_defaults"]["TREAT"], "deny");
        assert_eq!(v["consent_defaults"]["HMARKT"], "deny");
    }
    let r = Api::send(sys.anonymous(
        Method::GET,
        &server.origin_url("/privacy/processing-activities"),
    ))
    .await;
    r.assert_outcome(401, &[]);
    server.assert_no_panic();
    drop(server);

    // The built-in register, and a bad configuration stops the server at start.
    let server = Server::start(BIN, &backend, &[]).await;
    let r = server
        .api()
        .get(&server.origin_url("/privacy/processing-activities"))
        .await;
    r.assert_status(200);
    let v = r.json();
    let names: Vec<&str> = v["processing_activities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["treatment", "emergency-access", "research", "audit"]
    );
    assert_eq!(v["consent_defaults"]["HRESCH"], "deny");
    assert_eq!(v["consent_defaults"]["TREAT"], "permit");
    drop(server);
    std::fs::write(&config, "[consent_defaults]\nHRESCH = \"sometimes\"\n").unwrap();
    let out = std::process::Command::new(BIN)
        .args(["--config", &config_arg, "serve", "--print-config"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("consent_defaults") && stderr.contains("HRESCH"),
        "{stderr}"
    );
}
