//! SMART App Launch driven as a person and an app would: a real OAuth2 client library
//! (`authlib`) is the app, headless Chromium (Python `playwright`) is the person's browser,
//! against the real binary over HTTPS. See `tests/python/smart_launch.py` for the checks:
//! patient and clinician standalone launches (sign-in, TOTP, patient picker, consent), an EHR
//! launch, refresh-token rotation and reuse detection, a backend service with
//! `private_key_jwt` doing a Bulk export, and a patient revoking the app. Screenshots of every
//! page land in `target/screenshots/`.
//!
//! This file provisions everything through the CLI and the test kit (patients, an encounter,
//! observations, a patient user, a clinician with TOTP and grants, a public client, a
//! `confidential-jwt` client whose RS384 key `openssl` makes here) and hands it to the script
//! in environment variables.
//!
//! Needs `PHIVAULT_TEST_PYTHON` (a Python with `authlib`, `playwright` and `pyotp`: `.ci/run`
//! makes it) and Debian's Chromium at `/usr/bin/chromium`. Without either the test says so and
//! checks nothing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;

use phivault_testkit::{Backend, LoginAnswer, Server, fixtures, random_username};
use reqwest::Method;
use reqwest::header::CONTENT_TYPE;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_phivault");
const CHROMIUM: &str = "/usr/bin/chromium";

/// Checks of the script the server does not pass yet, by name. Each must still fail (the
/// script reports one that passes), so the list only ever shrinks.
const EXPECTED_FAILURES: &[&str] = &[];

/// What the public app may ask for: the union of what the script's launches request.
const APP_SCOPE: &str =
    "openid fhirUser launch launch/patient offline_access patient/*.rs user/*.rs";

/// Base64url without padding (RFC 4648 §5), for the JWK members.
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

/// Runs `openssl <args>`, asserting success; its stdout.
fn openssl(args: &[&str]) -> String {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("openssl could not be run: {e}"));
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A fresh RSA 2048 key for RS384 client assertions in `dir`: (private key PEM path, the
/// public JWKS file path).
fn backend_key(dir: &Path) -> (PathBuf, PathBuf) {
    let key = dir.join("backend-key.pem");
    let key_arg = key.display().to_string();
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        &key_arg,
    ]);
    let modulus = openssl(&["rsa", "-in", &key_arg, "-noout", "-modulus"]);
    let hex = modulus
        .trim()
        .strip_prefix("Modulus=")
        .unwrap_or_else(|| panic!("unexpected openssl modulus output: {modulus}"));
    let n: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("a hex modulus"))
        .collect();
    // genpkey's default public exponent is 65537.
    let text = openssl(&["rsa", "-in", &key_arg, "-noout", "-text"]);
    assert!(
        text.contains("publicExponent: 65537"),
        "expected exponent 65537"
    );
    let jwks = json!({ "keys": [{
        "kty": "RSA",
        "alg": "RS384",
        "use": "sig",
        "kid": "backend-1",
        "n": base64url(&n),
        "e": base64url(&[1, 0, 1]),
    }]});
    let jwks_path = dir.join("backend-jwks.json");
    std::fs::write(&jwks_path, jwks.to_string()).expect("write the JWKS");
    (key, jwks_path)
}

/// `phivault client add <args>`: the client id of its first stdout line.
async fn add_client(server: &Server, args: &[&str]) -> String {
    let mut all = vec!["client", "add"];
    all.extend_from_slice(args);
    let out = server.cli(&all, None).await;
    out.assert_ok("phivault client add");
    out.stdout
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("client_id: "))
        .unwrap_or_else(|| panic!("contract: first line `client_id: ...`:\n{}", out.stdout))
        .trim()
        .to_owned()
}

/// A free loopback port for the app's redirect URI (the script binds it).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

#[test]
fn base64url_matches_rfc_4648() {
    assert_eq!(base64url(b""), "");
    assert_eq!(base64url(b"f"), "Zg");
    assert_eq!(base64url(b"fo"), "Zm8");
    assert_eq!(base64url(b"foo"), "Zm9v");
    assert_eq!(base64url(b"foob"), "Zm9vYg");
    assert_eq!(base64url(&[1, 0, 1]), "AQAB");
    assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
}

#[tokio::test(flavor = "multi_thread")]
async fn smart_app_launch_in_a_real_browser() {
    let Ok(python) = std::env::var("PHIVAULT_TEST_PYTHON") else {
        eprintln!(
            "skipped: set PHIVAULT_TEST_PYTHON to a python with authlib, playwright and pyotp \
             installed (.ci/run does)"
        );
        return;
    };
    if !Path::new(CHROMIUM).exists() {
        eprintln!("skipped: {CHROMIUM} is missing (apt-get install chromium; .ci/run does)");
        return;
    }
    let server = Server::start(BIN, &Backend::Sqlite, &[]).await;
    let api = server.api();

    // ---- Records: two patients, an encounter and observations of the first.
    let patient = api.create(&fixtures::patient("Launch", "Ada")).await;
    let other = api.create(&fixtures::patient("Other", "Bea")).await;
    // How the pages may name them (given and family name).
    let (patient_name, other_name) = ("Ada Launch", "Bea Other");
    let subject = format!("Patient/{patient}");
    let encounter = api
        .create(&json!({
            "resourceType": "Encounter",
            "status": "in-progress",
            "class": {
                "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                "code": "AMB",
            },
            "subject": { "reference": subject },
        }))
        .await;
    for (code, day) in [("8867-4", "01"), ("8480-6", "02"), ("8462-4", "03")] {
        let coding = fixtures::coding(Some("http://loinc.org"), code, "vital sign");
        api.create(&fixtures::observation(
            &subject,
            coding,
            &format!("2024-03-{day}T10:00:00Z"),
        ))
        .await;
    }

    // ---- People: a patient user linked to the first patient; a clinician in care of both,
    // with TOTP enrolled.
    let patient_user = random_username();
    let patient_password = server.create_user(&patient_user, "patient").await;
    server.link_patient(&patient_user, &patient).await;

    let clinician = random_username();
    let clinician_password = server.create_user(&clinician, "clinician").await;
    server.grant(&clinician, &patient, &[], None).await;
    server.grant(&clinician, &other, &[], None).await;
    let first = LoginAnswer::parse(&server.login(&clinician, &clinician_password, None).await);
    let enrolled = server.enrol_totp_full(&first.token).await;
    assert!(
        enrolled.recovery_codes.len() >= 2,
        "two recovery codes are needed"
    );
    // A recovery code, not a TOTP code, signs the EHR's session in: the TOTP steps after the
    // enrolment's are the browser's.
    let session = LoginAnswer::parse(
        &server
            .login_with(json!({
                "username": clinician,
                "password": clinician_password,
                "recovery_code": enrolled.recovery_codes[0],
            }))
            .await,
    );
    assert!(!session.enrolment_only, "a full session after enrolment");

    // ---- The EHR mints a launch for the first patient and the encounter.
    let r = phivault_testkit::Api::send(
        server
            .origin_request(Method::POST, "/smart/launch", Some(&session.token))
            .header(CONTENT_TYPE, "application/json")
            .body(json!({ "patient": patient, "encounter": encounter }).to_string()),
    )
    .await;
    assert_eq!(r.status, 200, "POST /smart/launch: {r:?}");
    let launch: Value = r.json();
    let launch = launch["launch"]
        .as_str()
        .unwrap_or_else(|| panic!("no launch id: {r:?}"))
        .to_owned();

    // ---- Apps: a backend service with its own RS384 key, and a public SMART app.
    let keys = tempfile::tempdir().expect("a temporary directory");
    let (key_pem, jwks) = backend_key(keys.path());
    let jwks_arg = jwks.display().to_string();
    let backend = add_client(
        &server,
        &[
            "--type",
            "confidential-jwt",
            "--name",
            "Nightly analytics",
            "--scope",
            "system/*.rs",
            "--jwks",
            &jwks_arg,
        ],
    )
    .await;

    // ---- The public SMART app, registered last: the redirect port is picked here and bound
    // by the script, and another process could take it in between.
    let port = free_port();
    let redirect_uri = format!("http://127.0.0.1:{port}/callback");
    let app = add_client(
        &server,
        &[
            "--type",
            "public",
            "--name",
            "Ada's Health Diary",
            "--scope",
            APP_SCOPE,
            "--redirect-uri",
            &redirect_uri,
        ],
    )
    .await;

    // ---- The script.
    let ca = server.data_dir().join("tls").join("ca.pem");
    let screenshots = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/screenshots");
    std::fs::create_dir_all(&screenshots).expect("create target/screenshots");
    let screenshots = screenshots.canonicalize().expect("target/screenshots");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/smart_launch.py");
    let started = std::time::Instant::now();
    let out = Command::new(&python)
        .arg(&script)
        .env("PHIVAULT_BASE", server.base().trim_end_matches('/'))
        .env("REQUESTS_CA_BUNDLE", &ca)
        .env("SSL_CERT_FILE", &ca)
        .env("PHIVAULT_SCREENSHOTS", &screenshots)
        .env("SMART_CHROMIUM", CHROMIUM)
        .env("SMART_REDIRECT_PORT", port.to_string())
        .env("SMART_APP_CLIENT_ID", &app)
        .env("SMART_BACKEND_CLIENT_ID", &backend)
        .env("SMART_BACKEND_KEY", &key_pem)
        .env("SMART_PATIENT_ID", &patient)
        .env("SMART_OTHER_PATIENT_ID", &other)
        .env("SMART_ENCOUNTER_ID", &encounter)
        .env("SMART_PATIENT_NAME", patient_name)
        .env("SMART_OTHER_NAME", other_name)
        .env("SMART_PATIENT_USER", &patient_user)
        .env("SMART_PATIENT_PASSWORD", &patient_password)
        .env("SMART_CLINICIAN_USER", &clinician)
        .env("SMART_CLINICIAN_PASSWORD", &clinician_password)
        .env("SMART_CLINICIAN_TOTP_SECRET", &enrolled.secret)
        .env(
            "SMART_CLINICIAN_TOTP_LAST_STEP",
            enrolled.confirmed_step.to_string(),
        )
        .env("SMART_CLINICIAN_RECOVERY_CODE", &enrolled.recovery_codes[1])
        .env("SMART_LAUNCH", &launch)
        .env("SMART_EXPECTED_FAILURES", EXPECTED_FAILURES.join(","))
        .output()
        .unwrap_or_else(|e| panic!("{python} could not be run: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    println!(
        "smart_launch.py took {:.1} s; screenshots in {}",
        started.elapsed().as_secs_f64(),
        screenshots.display()
    );
    server.assert_no_panic();
    if !out.status.success() {
        let log = server.stderr_text();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(40)..].join("\n");
        let failed = stdout
            .lines()
            .find(|l| l.starts_with("FAIL"))
            .unwrap_or("(no FAIL line)");
        panic!("the SMART App Launch script failed: {failed}\nlast server log lines:\n{tail}");
    }
}
