//! The patient portal and the admin console driven as people would, in a real browser:
//! headless Chromium (Python `playwright`) against the real binary over HTTPS. See
//! `tests/python/web_portal_console.py` for the checks:
//!
//! 1. a patient signs in with a password, enrols an authenticator on `/account/totp` (the key
//!    read from the page, the code computed with `pyotp`), sees the recovery codes, signs out
//!    and in again with password and code;
//! 2. a clinician's read and search of the patient's record, and another clinician's
//!    break-the-glass read (made here), are on `/portal/access` with the actor's name;
//! 3. the patient permits, then withdraws research on `/portal/consents`: a research app (a
//!    `system/*.rs` client acting for `HRESCH`) is refused on its next request;
//! 4. the patient authorizes an app through SMART App Launch (a recovery code as the second
//!    factor), then revokes it on `/portal/apps`: its next request gets 401;
//! 5. the patient downloads the package on `/portal/download`, plain (NDJSON) and encrypted
//!    to an age key that `pyrage` makes (decrypted back to NDJSON);
//! 6. an administrator signs in with a TOTP code, marks the break-the-glass event reviewed,
//!    disables an app (whose next request is refused) and verifies the audit chain;
//! 7. screenshots of every page at 1280 and 390 pixels wide in `target/screenshots/`;
//! 8. a forged cross-site form post (from a page of another origin) changes nothing, markup in
//!    a patient's and an app's name stays text, and no page can be framed by another site;
//! 9. axe-core (bundled by `axe-playwright-python`, injected with `page.evaluate`, which the
//!    pages' CSP does not govern) finds no serious or critical violation on any page.
//!
//! This file provisions the records, people and apps through the CLI and the test kit and
//! hands them to the script in environment variables.
//!
//! Needs `PHIVAULT_TEST_PYTHON` (a Python with the packages of `tests/python/requirements.txt`:
//! `.ci/run` makes it) and Debian's Chromium at `/usr/bin/chromium`. Without either the test
//! says so and checks nothing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;

use phivault_testkit::fixtures::{LOINC, SNOMED};
use phivault_testkit::{Api, Backend, LoginAnswer, Server, random_username};
use reqwest::Method;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_phivault");
const CHROMIUM: &str = "/usr/bin/chromium";

/// Checks of the script the server does not pass yet, by section name. Each must still fail
/// (the script reports one that passes), so the list only ever shrinks.
const EXPECTED_FAILURES: &[&str] = &[];

/// Markup that must stay text wherever a page shows it (the patient's and an app's name).
const INJECTED: &str = "<script>window.__pwned=1</script>";

/// What the patient's SMART app may ask for.
const APP_SCOPE: &str = "launch/patient patient/*.rs";

/// `phivault client add <args>`: the client id of its first stdout line and the secret of
/// its second, if any.
async fn add_client(server: &Server, args: &[&str]) -> (String, Option<String>) {
    let mut all = vec!["client", "add"];
    all.extend_from_slice(args);
    let out = server.cli(&all, None).await;
    out.assert_ok("phivault client add");
    let mut lines = out.stdout.lines();
    let id = lines
        .next()
        .and_then(|l| l.strip_prefix("client_id: "))
        .unwrap_or_else(|| panic!("contract: first line `client_id: ...`:\n{}", out.stdout))
        .trim()
        .to_owned();
    let secret = lines
        .next()
        .and_then(|l| l.strip_prefix("client_secret: "))
        .map(|s| s.trim().to_owned());
    (id, secret)
}

/// A confidential app with `system/*.rs` and an access token for it: (client id, token).
async fn system_app(server: &Server, name: &str) -> (String, String) {
    let (id, secret) = add_client(server, &["--name", name, "--scope", "system/*.rs"]).await;
    let secret = secret.unwrap_or_else(|| panic!("`client add` printed no secret"));
    let token = server.client_credentials(&id, &secret, None).await;
    (id, token)
}

/// A free loopback port for the script's little web server (the app's redirect URI and the
/// pages of "another site").
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

/// A final vital-sign Observation of `subject` with a value.
fn vital(subject: &str, code: &str, display: &str, when: &str, value: f64, unit: &str) -> Value {
    json!({
        "resourceType": "Observation",
        "status": "final",
        "category": [{ "coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
            "code": "vital-signs"
        }]}],
        "code": { "coding": [{ "system": LOINC, "code": code, "display": display }],
                  "text": display },
        "subject": { "reference": subject },
        "effectiveDateTime": when,
        "valueQuantity": {
            "value": value,
            "unit": unit,
            "system": "http://unitsofmeasure.org",
            "code": unit
        },
    })
}

/// A practitioner with a given and a family name.
fn practitioner(given: &str, family: &str) -> Value {
    json!({
        "resourceType": "Practitioner",
        "name": [{ "given": [given], "family": family }],
    })
}

/// A clinician linked to `practitioner`, with a grant on `patient` when given: a signed-in
/// API client.
async fn clinician(server: &Server, practitioner: &str, patient: Option<&str>) -> Api {
    let username = random_username();
    let password = server.create_user(&username, "clinician").await;
    server.link_practitioner(&username, practitioner).await;
    if let Some(p) = patient {
        server.grant(&username, p, &[], None).await;
    }
    let account = server
        .sign_in(&username, "clinician", &password, false)
        .await;
    server.api_as(&account.token)
}

#[tokio::test(flavor = "multi_thread")]
async fn portal_and_console_in_a_real_browser() {
    let Ok(python) = std::env::var("PHIVAULT_TEST_PYTHON") else {
        eprintln!(
            "skipped: set PHIVAULT_TEST_PYTHON to a python with the packages of \
             tests/python/requirements.txt installed (.ci/run does)"
        );
        return;
    };
    if !Path::new(CHROMIUM).exists() {
        eprintln!("skipped: {CHROMIUM} is missing (apt-get install chromium; .ci/run does)");
        return;
    }
    let started = std::time::Instant::now();
    let server = Server::start(BIN, &Backend::Sqlite, &[]).await;
    let api = server.api();

    // ---- The patient's record: markup in the family name, a condition, a medication and
    // two vital signs over time (the summary's chart).
    let patient = api
        .create(&json!({
            "resourceType": "Patient",
            "active": true,
            "name": [{ "use": "official", "family": INJECTED, "given": ["Ada"] }],
            "gender": "female",
            "birthDate": "1987-06-15",
        }))
        .await;
    let subject = format!("Patient/{patient}");
    api.create(&json!({
        "resourceType": "Condition",
        "clinicalStatus": { "coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
            "code": "active"
        }]},
        "code": { "coding": [{ "system": SNOMED, "code": "38341003",
                               "display": "Hypertension" }], "text": "Hypertension" },
        "subject": { "reference": subject },
        "onsetDateTime": "2021-04-02",
    }))
    .await;
    api.create(&json!({
        "resourceType": "MedicationRequest",
        "status": "active",
        "intent": "order",
        "medicationCodeableConcept": {
            "coding": [{ "system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                         "code": "314076", "display": "lisinopril 10 MG Oral Tablet" }],
            "text": "lisinopril 10 MG Oral Tablet"
        },
        "subject": { "reference": subject },
        "authoredOn": "2021-04-02",
    }))
    .await;
    for (month, kg, bpm) in [
        ("01", 71.5, 74.0),
        ("02", 70.8, 72.0),
        ("03", 70.1, 70.0),
        ("04", 69.6, 69.0),
    ] {
        let when = format!("2024-{month}-05T09:00:00Z");
        api.create(&vital(&subject, "29463-7", "Body weight", &when, kg, "kg"))
            .await;
        api.create(&vital(&subject, "8867-4", "Heart rate", &when, bpm, "/min"))
            .await;
    }

    // ---- The patient's account (no second factor yet: the browser enrols it).
    let patient_user = random_username();
    let patient_password = server.create_user(&patient_user, "patient").await;
    server.link_patient(&patient_user, &patient).await;

    // ---- A clinician in the patient's care reads the record and searches it; another, not
    // in their care, breaks the glass.
    let carer = api.create(&practitioner("Carla", "Reed")).await;
    let carer = clinician(&server, &carer, Some(&patient)).await;
    carer.get(&subject).await.assert_status(200);
    let r = carer
        .get(&format!("Observation?patient={patient}&code=29463-7"))
        .await;
    r.assert_status(200);
    assert!(
        r.json()["entry"].as_array().is_some_and(|e| !e.is_empty()),
        "the clinician's search finds the weights: {r:?}"
    );
    let emergency = api.create(&practitioner("Dan", "Ortiz")).await;
    let emergency = clinician(&server, &emergency, None).await;
    let r = Api::send(
        emergency
            .request(Method::GET, &subject)
            .header("X-Purpose-Of-Use", "ETREAT")
            .header("X-Break-Glass-Reason", "Unconscious in the emergency room"),
    )
    .await;
    r.assert_status(200);
    assert_eq!(r.header("x-break-glass"), Some("recorded"), "{r:?}");

    // ---- Apps: a research app (acts for HRESCH: research needs the patient's consent), a
    // feed the administrator disables, and the patient's SMART app, whose name is markup.
    let (_, research_token) = system_app(&server, "Cohort study").await;
    let (_, feed_token) = system_app(&server, "Lab results feed").await;
    let port = free_port();
    let redirect_uri = format!("http://127.0.0.1:{port}/callback");
    let app_name = format!("Diary {INJECTED}");
    let (app, _) = add_client(
        &server,
        &[
            "--type",
            "public",
            "--name",
            &app_name,
            "--scope",
            APP_SCOPE,
            "--redirect-uri",
            &redirect_uri,
        ],
    )
    .await;

    // ---- An administrator with an authenticator (enrolled here; the browser signs in with
    // the next code).
    let admin_user = random_username();
    let admin_password = server.create_user(&admin_user, "admin").await;
    let first = LoginAnswer::parse(&server.login(&admin_user, &admin_password, None).await);
    let admin_totp = server.enrol_totp_full(&first.token).await;

    // ---- The script.
    let ca = server.data_dir().join("tls").join("ca.pem");
    let screenshots = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/screenshots");
    std::fs::create_dir_all(&screenshots).expect("create target/screenshots");
    let screenshots = screenshots.canonicalize().expect("target/screenshots");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/web_portal_console.py");
    let provisioned = started.elapsed().as_secs_f64();
    let out = Command::new(&python)
        .arg(&script)
        .env("PHIVAULT_BASE", server.base().trim_end_matches('/'))
        .env("REQUESTS_CA_BUNDLE", &ca)
        .env("SSL_CERT_FILE", &ca)
        .env("PHIVAULT_SCREENSHOTS", &screenshots)
        .env("WEB_CHROMIUM", CHROMIUM)
        .env("WEB_PORT", port.to_string())
        .env("WEB_INJECTED", INJECTED)
        .env("WEB_PATIENT_ID", &patient)
        .env("WEB_PATIENT_USER", &patient_user)
        .env("WEB_PATIENT_PASSWORD", &patient_password)
        .env("WEB_CARER_NAME", "Carla Reed")
        .env("WEB_EMERGENCY_NAME", "Dan Ortiz")
        .env("WEB_RESEARCH_TOKEN", &research_token)
        .env("WEB_FEED_NAME", "Lab results feed")
        .env("WEB_FEED_TOKEN", &feed_token)
        .env("WEB_APP_CLIENT_ID", &app)
        .env("WEB_APP_SCOPE", APP_SCOPE)
        .env("WEB_ADMIN_USER", &admin_user)
        .env("WEB_ADMIN_PASSWORD", &admin_password)
        .env("WEB_ADMIN_TOTP_SECRET", &admin_totp.secret)
        .env(
            "WEB_ADMIN_TOTP_LAST_STEP",
            admin_totp.confirmed_step.to_string(),
        )
        .env("WEB_EXPECTED_FAILURES", EXPECTED_FAILURES.join(","))
        .output()
        .unwrap_or_else(|e| panic!("{python} could not be run: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    println!(
        "provisioning took {provisioned:.1} s, the whole test {:.1} s; screenshots in {}",
        started.elapsed().as_secs_f64(),
        screenshots.display()
    );
    server.assert_no_panic();
    if !out.status.success() {
        let log = server.stderr_text();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(40)..].join("\n");
        // The server's warnings and errors (a page's 500 says why there), wherever they are.
        let problems: Vec<&str> = lines
            .iter()
            .filter(|l| l.contains(" ERROR ") || l.contains(" WARN "))
            .take(40)
            .copied()
            .collect();
        let failed: Vec<&str> = stdout.lines().filter(|l| l.starts_with("FAIL")).collect();
        panic!(
            "the portal and console script failed:\n{}\nserver warnings and errors:\n{}\n\
             last server log lines:\n{tail}",
            failed.join("\n"),
            problems.join("\n")
        );
    }
}
