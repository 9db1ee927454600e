//! End-to-end breach detection, on every backend: a scripted incident (a clinician account
//! reads 500 patients within minutes) raises an alert that reaches a webhook receiver,
//! signed, after a refused first attempt; the breach report lists exactly those patients;
//! letters and the regulator summary are generated; disabling the account refuses its next
//! request. And a scripted normal day raises nothing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use phivault_testkit::fixtures;
use phivault_testkit::{Api, Marker, Server, backends, random_username};
use reqwest::Method;
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

const BIN: &str = env!("CARGO_BIN_EXE_phivault");
const SECRET: &str = "an alert webhook key of at least thirty-two bytes";

/// What the receiver got: (timestamp header, signature header, body).
type Received = Arc<Mutex<Vec<(String, String, Vec<u8>)>>>;

/// A local webhook receiver: refuses the first delivery with 503 (the sender must retry),
/// takes the rest.
async fn receiver() -> (String, Received) {
    let got: Received = Arc::default();
    let attempts = Arc::new(Mutex::new(0u32));
    let store = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let store = store.clone();
            let attempts = attempts.clone();
            async move {
                let mut n = attempts.lock().unwrap();
                *n += 1;
                if *n == 1 {
                    return StatusCode::SERVICE_UNAVAILABLE;
                }
                let h = |k: &str| {
                    headers
                        .get(k)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned()
                };
                store.lock().unwrap().push((
                    h("x-phivault-timestamp"),
                    h("x-phivault-signature"),
                    body.to_vec(),
                ));
                StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, got)
}

fn verify_signature(timestamp: &str, signature: &str, body: &[u8]) -> bool {
    use aws_lc_rs::hmac;
    let key = hmac::Key::new(hmac::HMAC_SHA256, SECRET.as_bytes());
    let mut message = timestamp.as_bytes().to_vec();
    message.push(b'.');
    message.extend_from_slice(body);
    let Some(hex_tag) = signature.strip_prefix("sha256=") else {
        return false;
    };
    let Ok(tag) = hex::decode(hex_tag) else {
        return false;
    };
    hmac::verify(&key, &message, &tag).is_ok()
}

/// A configuration with the webhook and `rules` (TOML of `[[alert_rules]]`; the defaults
/// when empty).
fn config(dir: &std::path::Path, url: &str, rules: &str) -> String {
    let secret = dir.join("webhook.secret");
    std::fs::write(&secret, SECRET).unwrap();
    let path = dir.join("phivault-alerts.toml");
    std::fs::write(
        &path,
        format!(
            "{rules}\n[alert_webhook]\nurl = \"{url}\"\nsecret_file = \"{}\"\nmax_attempts = 5\n",
            secret.display()
        ),
    )
    .unwrap();
    path.display().to_string()
}

fn now_text(offset_secs: i64) -> String {
    (OffsetDateTime::now_utc() + time::Duration::seconds(offset_secs))
        .format(&Rfc3339)
        .unwrap()
}

/// Waits (60 s at most) until `done` holds of the received alerts.
async fn wait_for(got: &Received, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    for _ in 0..240 {
        let alerts: Vec<Value> = got
            .lock()
            .unwrap()
            .iter()
            .map(|(_, _, b)| serde_json::from_slice(b).unwrap())
            .collect();
        if done(&alerts) {
            return alerts;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("no {what} reached the webhook: {:?}", got.lock().unwrap());
}

/// The clinician creates `n` patients (a clinician who registers a patient is on their
/// care); their ids.
async fn register(api: &Api, n: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        ids.push(
            api.create(&fixtures::patient(
                Marker::name().text(),
                &format!("Alert{i}"),
            ))
            .await,
        );
    }
    ids
}

#[tokio::test]
async fn a_clinician_account_reading_500_patients_is_detected_reported_and_contained() {
    for backend in backends() {
        let dir = tempfile::tempdir().unwrap();
        let (url, got) = receiver().await;
        let config = config(dir.path(), &url, "");
        let server = Server::start(BIN, &backend, &["--config", &config]).await;
        let doc = random_username();
        let session = server.staff_session(&doc, "clinician").await;
        let as_doc = server.api_as(&session);
        let ids = register(&as_doc, 500).await;
        let start = now_text(-1);

        // The stolen account reads half the patients one by one and finds the rest by
        // searches, 25 at a time.
        for id in &ids[..250] {
            as_doc
                .get(&format!("Patient/{id}"))
                .await
                .assert_status(200);
        }
        for chunk in ids[250..].chunks(25) {
            let found = as_doc
                .search_ids(&format!("Patient?_id={}&_count=50", chunk.join(",")))
                .await;
            assert_eq!(found.len(), 25);
        }

        // The alert reaches the receiver (after one refused attempt), signed, ids only.
        let alerts = wait_for(&got, "many-patients alert", |a| {
            a.iter().any(|x| x["rule"] == "many-patients")
        })
        .await;
        let alert = alerts
            .iter()
            .find(|x| x["rule"] == "many-patients")
            .unwrap();
        assert_eq!(alert["subject_kind"], "user", "{alert}");
        assert_eq!(alert["count"], 51, "{alert}");
        assert_eq!(alert["threshold"], 50, "{alert}");
        let (timestamp, signature, body) = got.lock().unwrap()[0].clone();
        assert!(
            verify_signature(&timestamp, &signature, &body),
            "bad signature"
        );
        let mut forged = body.clone();
        forged[2] ^= 1;
        assert!(!verify_signature(&timestamp, &signature, &forged));
        let text = String::from_utf8(body).unwrap();
        for id in &ids {
            assert!(
                !text.contains(id.as_str()),
                "a patient id in the webhook: {text}"
            );
        }

        // It is in the trail: `alerts list` and `GET /admin/alerts` show it, delivered.
        let out = server
            .cli(&["alerts", "list", "--format", "json"], None)
            .await;
        out.assert_ok("phivault alerts list");
        let listed: Vec<Value> = serde_json::from_str(&out.stdout).unwrap();
        let mine = listed
            .iter()
            .find(|a| a["rule"] == "many-patients")
            .unwrap_or_else(|| panic!("{}", out.stdout));
        assert_eq!(mine["id"], alert["id"]);
        let admin = server.staff_session(&random_username(), "admin").await;
        let r = Api::send(server.origin_request(Method::GET, "/admin/alerts", Some(&admin))).await;
        r.assert_status(200);
        let answer: Value = serde_json::from_str(&r.text).unwrap();
        assert!(
            answer["alerts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a["id"] == alert["id"] && a["delivered"] == true),
            "{answer}"
        );
        Api::send(server.origin_request(Method::GET, "/admin/alerts", Some(&session)))
            .await
            .assert_outcome(403, &["access denied"]);

        // The breach report lists exactly those 500 patients.
        let end = now_text(60);
        let report = dir.path().join("report.json");
        let out = server
            .cli(
                &[
                    "breach",
                    "report",
                    "--actor",
                    &doc,
                    "--from",
                    &start,
                    "--to",
                    &end,
                    "--format",
                    "json",
                    "--out",
                    &report.display().to_string(),
                ],
                None,
            )
            .await;
        out.assert_ok("phivault breach report");
        let parsed: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
        let reached: BTreeSet<String> = parsed["patients"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["patient"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(reached, ids.iter().cloned().collect::<BTreeSet<_>>());

        // 500 letters and one regulator summary.
        let incident = dir.path().join("incident.toml");
        std::fs::write(
            &incident,
            format!(
                "description = \"A clinician's credentials were used to read patient records.\"\n\
                 detected_at = \"{start}\"\n\
                 likely_consequences = \"Names and health data may have been seen.\"\n\
                 measures_taken = \"The account was disabled and its sessions revoked.\"\n\
                 [contact]\nname = \"Data Protection Officer\"\nemail = \"dpo@example.org\"\n"
            ),
        )
        .unwrap();
        let letters = dir.path().join("letters-out");
        let templates = concat!(env!("CARGO_MANIFEST_DIR"), "/../../templates/breach");
        let out = server
            .cli(
                &[
                    "breach",
                    "notify",
                    "--report",
                    &report.display().to_string(),
                    "--template",
                    templates,
                    "--incident",
                    &incident.display().to_string(),
                    "--out",
                    &letters.display().to_string(),
                ],
                None,
            )
            .await;
        out.assert_ok("phivault breach notify");
        let count = |ext: &str| {
            std::fs::read_dir(letters.join("letters"))
                .unwrap()
                .filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .path()
                        .extension()
                        .is_some_and(|x| x == ext)
                })
                .count()
        };
        assert_eq!((count("html"), count("pdf")), (500, 500));
        assert!(letters.join("regulator-summary.html").is_file());
        assert!(letters.join("regulator-summary.pdf").is_file());

        // Containment: the next request of the account is refused.
        server
            .cli(&["user", "disable", &doc], None)
            .await
            .assert_ok("phivault user disable");
        let refused = as_doc.get(&format!("Patient/{}", ids[0])).await;
        assert_eq!(refused.status, 401, "{refused:?}");
        server.assert_no_panic();
    }
}

#[tokio::test]
async fn a_normal_day_raises_no_alert() {
    for backend in backends() {
        let dir = tempfile::tempdir().unwrap();
        let (url, got) = receiver().await;
        // Working hours around now, wherever the clock stands: the site's offset puts the
        // current UTC hour at 12:00 local.
        let hour = i64::from(OffsetDateTime::now_utc().hour());
        let offset = 12 - hour;
        let sign = if offset < 0 { '-' } else { '+' };
        let mut rules = String::new();
        for rule in phivault_alerts::default_rules() {
            rules.push_str("[[alert_rules]]\n");
            rules.push_str(&toml::to_string(&rule).unwrap());
        }
        rules.push_str(&format!(
            "[[alert_rules]]\nname = \"nights\"\nkind = \"off_hours\"\nhours = \"07:00-19:00\"\n\
             days = [\"mon\", \"tue\", \"wed\", \"thu\", \"fri\", \"sat\", \"sun\"]\n\
             utc_offset = \"{sign}{:02}:00\"\n",
            offset.abs()
        ));
        let config = config(dir.path(), &url, &rules);
        let server = Server::start(BIN, &backend, &["--config", &config]).await;
        let doc = random_username();
        let session = server.staff_session(&doc, "clinician").await;
        let as_doc = server.api_as(&session);
        let ids = register(&as_doc, 20).await;
        // A day's work: each patient seen, their record read and searched a few times.
        for id in &ids {
            for _ in 0..3 {
                as_doc
                    .get(&format!("Patient/{id}"))
                    .await
                    .assert_status(200);
            }
            as_doc
                .search_ids(&format!("Observation?patient={id}"))
                .await;
        }
        as_doc.search_ids("Patient?_count=50").await;

        // A marker the rules must catch, after the day: repeated failed logins. Entries are
        // evaluated in order, so once its alert arrives the day has been evaluated too.
        for _ in 0..11 {
            let r = server
                .login(&random_username(), "not the password", None)
                .await;
            assert!(r.status >= 400, "{r:?}");
        }
        let alerts = wait_for(&got, "repeated-denials alert", |a| {
            a.iter().any(|x| x["rule"] == "repeated-denials")
        })
        .await;
        let rules: Vec<&str> = alerts.iter().map(|a| a["rule"].as_str().unwrap()).collect();
        assert_eq!(rules, ["repeated-denials"], "{alerts:?}");
        let out = server
            .cli(&["alerts", "list", "--format", "json"], None)
            .await;
        out.assert_ok("phivault alerts list");
        let listed: Vec<Value> = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(listed.len(), 1, "{}", out.stdout);
        server.assert_no_panic();
    }
}

#[tokio::test]
async fn labelled_access_without_care_and_grants_to_new_or_own_accounts_raise_alerts() {
    for backend in backends() {
        let dir = tempfile::tempdir().unwrap();
        let (url, got) = receiver().await;
        let config = config(dir.path(), &url, "");
        let server = Server::start(BIN, &backend, &["--config", &config]).await;
        let patient = server
            .api()
            .create(&fixtures::patient(Marker::name().text(), "Labelled"))
            .await;
        // The operator grants a new clinician the patient, mental-health notes included.
        let carer = random_username();
        let carer_session = server.staff_session(&carer, "clinician").await;
        server.grant(&carer, &patient, &["PSY"], None).await;
        let as_carer = server.api_as(&carer_session);
        let mut note = fixtures::observation(
            &format!("Patient/{patient}"),
            fixtures::coding(Some(fixtures::LOINC), "8867-4", "Heart rate"),
            "2026-11-30T10:00:00Z",
        );
        note["meta"] = serde_json::json!({
            "security": [{ "system": fixtures::ACT_CODE, "code": "PSY" }]
        });
        let psy = as_carer.create(&note).await;
        as_carer
            .get(&format!("Observation/{psy}"))
            .await
            .assert_status(200);

        // A clinician without a care relationship breaks the glass to read it.
        let stranger = random_username();
        let stranger_session = server.staff_session(&stranger, "clinician").await;
        let r = Api::send(
            server
                .api_as(&stranger_session)
                .request(Method::GET, &format!("Observation/{psy}"))
                .header("X-Purpose-Of-Use", "ETREAT")
                .header("X-Break-Glass-Reason", "unconscious in the emergency room"),
        )
        .await;
        r.assert_status(200);

        // An administrator grants themselves the patient.
        let admin_name = random_username();
        let admin = server.staff_session(&admin_name, "admin").await;
        let r = Api::send(
            server
                .origin_request(
                    Method::POST,
                    &format!("/admin/users/{admin_name}/grants"),
                    Some(&admin),
                )
                .header("content-type", "application/json")
                .body(serde_json::json!({ "patient": patient }).to_string()),
        )
        .await;
        assert!(r.status < 300, "{r:?}");

        let alerts = wait_for(&got, "labelled and grant alerts", |a| {
            a.iter().filter(|x| x["rule"] == "self-grant").count() == 2
                && a.iter().any(|x| x["rule"] == "labelled-without-care")
        })
        .await;
        let labelled: Vec<&Value> = alerts
            .iter()
            .filter(|x| x["rule"] == "labelled-without-care")
            .collect();
        assert_eq!(labelled.len(), 1, "only the stranger: {alerts:?}");
        assert_eq!(labelled[0]["subject_kind"], "user/patient");
        let subject = labelled[0]["subject"].as_str().unwrap();
        assert!(
            subject.ends_with(&format!("/Patient/{patient}")),
            "{subject}"
        );
        let grants: Vec<&str> = alerts
            .iter()
            .filter(|x| x["rule"] == "self-grant")
            .map(|x| x["subject_kind"].as_str().unwrap())
            .collect();
        // The operator's CLI grant to a new account, and the administrator's grant to
        // themselves.
        assert_eq!(grants, ["system", "user"], "{alerts:?}");
        server.assert_no_panic();
    }
}
