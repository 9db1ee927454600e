//! No plaintext PHI at rest (DESIGN.md invariant 1), on every backend: resources carrying
//! unique markers in names, identifiers, addresses, narrative, notes and codes are written,
//! updated, deleted and searched; then no file under the data directory (database, WAL, shm,
//! keys; while running and after SIGKILL), no `pg_dump` of the PostgreSQL schema and no log
//! line contains any marker, as UTF-8, UTF-16LE/BE or hex, in any letter case or with
//! accents stripped. The markers are first proven readable through the API, so the scan is
//! known to look for what is there.
//!
//! The same holds for identities: a user's username, password, TOTP secret (base32 and raw),
//! recovery codes, session tokens, an OAuth2 client's secret and access tokens, and a
//! break-the-glass reason are each proven to work, then looked for the same way.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use phivault_testkit::fixtures::{self, BundleBuilder, LOINC, MRN_SYSTEM, SNOMED, coding};
use phivault_testkit::{
    Api, Finding, Marker, Server, backends, query, random_password, random_username, scan_bytes,
    scan_dir, totp_secret_bytes,
};
use reqwest::Method;
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_phivault");

struct Planted {
    markers: Vec<Marker>,
    /// Paths whose answers together contain every marker.
    reads: Vec<String>,
    /// Ids (in the clear by design) that a dump must contain.
    ids: Vec<String>,
}

async fn plant(s: &Api) -> Planted {
    let family = Marker::name();
    let given = Marker::name();
    let given_v2 = Marker::name();
    let mrn = Marker::code("MRN-");
    let street = Marker::name();
    let narrative = Marker::name();
    let obs_code = Marker::code("zc-");
    let obs_display = Marker::name();
    let obs_note = Marker::name();
    let cond_code = Marker::code("zs-");
    let cond_note = Marker::name();
    let tx_family = Marker::name();
    let tx_mrn = Marker::code("TX-");
    let gone_note = Marker::name();

    // a Patient with markers everywhere, then updated (v1 keeps the old given name)
    let mut p = fixtures::patient_with(
        family.text(),
        given.text(),
        mrn.text(),
        "female",
        "1961-02-03",
    );
    p["address"] = json!([{ "line": [street.text()], "city": "Springfield" }]);
    p["text"] = json!({
        "status": "generated",
        "div": format!("<div xmlns=\"http://www.w3.org/1999/xhtml\">{}</div>", narrative.text()),
    });
    let pid = s.create(&p).await;
    let pref = format!("Patient/{pid}");
    let mut v2 = s.get(&pref).await.json();
    v2["name"][0]["given"] = json!([given_v2.text()]);
    s.put_json(&pref, &v2).await.assert_status(200);

    // an Observation with a marker code, display and note
    let mut obs = fixtures::observation(
        &pref,
        coding(Some(LOINC), obs_code.text(), obs_display.text()),
        "2021-03-04T10:00:00Z",
    );
    obs["note"] = json!([{ "text": obs_note.text() }]);
    let oid = s.create(&obs).await;

    // a Condition with a marker code and note
    let mut cond = fixtures::condition(&pref, cond_code.text(), "active", "2019-05-01");
    cond["note"] = json!([{ "text": cond_note.text() }]);
    let cid = s.create(&cond).await;

    // a transaction: a second patient
    let mut b = BundleBuilder::transaction();
    b.post(fixtures::patient_with(
        tx_family.text(),
        "Tx",
        tx_mrn.text(),
        "male",
        "1970-01-01",
    ));
    let r = s.post_json("", &b.build()).await;
    r.assert_status(200);
    let tx_loc = r.json()["entry"][0]["response"]["location"]
        .as_str()
        .expect("location")
        .to_owned();
    let tx_pid = tx_loc
        .split('/')
        .nth(1)
        .expect("Patient/<id>/_history/1")
        .to_owned();

    // an Observation that is deleted afterwards (its version 1 stays, sealed)
    let mut gone = fixtures::observation(&pref, coding(Some(SNOMED), "271649006", "BP"), "2020");
    gone["note"] = json!([{ "text": gone_note.text() }]);
    let gid = s.create(&gone).await;
    let r = s.delete(&format!("Observation/{gid}")).await;
    assert!(matches!(r.status, 200 | 204), "{r:?}");

    // searches on the marker values go through the blind index and find the resources
    let lower = |m: &Marker| m.text().to_lowercase();
    for (q, want) in [
        (query("Patient", &[("family", family.text())]), &pid),
        (query("Patient", &[("family", &lower(&family))]), &pid),
        (query("Patient", &[("given", given_v2.text())]), &pid),
        (
            query("Patient", &[("name", &given_v2.text().to_lowercase()[..5])]),
            &pid,
        ),
        (
            query(
                "Patient",
                &[("identifier", &format!("{MRN_SYSTEM}|{}", mrn.text()))],
            ),
            &pid,
        ),
        (query("Patient", &[("identifier", tx_mrn.text())]), &tx_pid),
        (query("Observation", &[("code", obs_code.text())]), &oid),
        (
            query(
                "Condition",
                &[("code", &format!("{SNOMED}|{}", cond_code.text()))],
            ),
            &cid,
        ),
    ] {
        let ids = s.search_ids(&q).await;
        assert_eq!(ids, std::slice::from_ref(want), "search {q}");
    }

    Planted {
        markers: vec![
            family,
            given,
            given_v2,
            mrn,
            street,
            narrative,
            obs_code,
            obs_display,
            obs_note,
            cond_code,
            cond_note,
            tx_family,
            tx_mrn,
            gone_note,
        ],
        reads: vec![
            pref.clone(),
            format!("{pref}/_history/1"),
            format!("Observation/{oid}"),
            format!("Condition/{cid}"),
            format!("Patient/{tx_pid}"),
            format!("Observation/{gid}/_history/1"),
        ],
        ids: vec![pid, oid, cid, tx_pid, gid],
    }
}

/// Credentials and other identity secrets, each proven to work (so the server holds what
/// it needs to check them), as markers.
async fn plant_identities(server: &Server, patient: &str) -> Vec<Marker> {
    let username = random_username();
    let password = random_password();
    server
        .create_user_with_password(&username, "clinician", &password)
        .await;
    // Staff enrol TOTP on their first login: secret, recovery codes, an enrolment-only
    // session, then a session from a TOTP login.
    let account = server
        .sign_in(&username, "clinician", &password, false)
        .await;
    let totp = account.totp.clone().expect("a clinician enrols TOTP");
    let enrolment_token = account
        .enrolment_token
        .clone()
        .expect("the first session is enrolment-only");
    let api = server.api_as(&account.token);
    api.get(&query("Patient", &[("_count", "1")]))
        .await
        .assert_status(200);
    // A recovery code works once, and gives another session.
    let r = server
        .login_with(json!({
            "username": username,
            "password": password,
            "recovery_code": totp.recovery_codes[0],
        }))
        .await;
    r.assert_status(200);
    let recovery_session = r.json()["access_token"].as_str().unwrap().to_owned();
    // Break-the-glass: the reason is sealed.
    let reason = Marker::name();
    let r = Api::send(
        api.request(Method::GET, &format!("Patient/{patient}"))
            .header("X-Purpose-Of-Use", "ETREAT")
            .header("X-Break-Glass-Reason", reason.text()),
    )
    .await;
    r.assert_status(200);
    // An OAuth2 client: its secret and an access token.
    let (client_id, client_secret) = server.add_client("at-rest", "system/*.rs", None).await;
    let access = server
        .client_credentials(&client_id, &client_secret, None)
        .await;
    server
        .api_as(&access)
        .get(&format!("Patient/{patient}"))
        .await
        .assert_status(200);
    let (_, system_secret) = server.system_client().expect("the kit's system app");

    let mut markers = vec![
        Marker::literal(&username),
        Marker::literal(&password),
        Marker::literal(&totp.secret),
        Marker::bytes("TOTP secret (raw bytes)", &totp_secret_bytes(&totp.secret)),
        Marker::literal(&enrolment_token),
        Marker::literal(&account.token),
        Marker::literal(&recovery_session),
        Marker::literal(&client_secret),
        Marker::literal(system_secret),
        Marker::literal(&access),
        Marker::literal(server.token()),
        reason,
    ];
    markers.extend(totp.recovery_codes.iter().map(|c| Marker::literal(c)));
    markers
}

/// Every marker is readable through the API: proves the data is stored and that the
/// scanner recognizes it.
async fn assert_readable(s: &Api, planted: &Planted) {
    let mut all = String::new();
    for path in &planted.reads {
        let r = s.get(path).await;
        r.assert_status(200);
        all.push_str(&r.text);
    }
    let found = scan_bytes("API answers", all.as_bytes(), &planted.markers);
    for m in &planted.markers {
        assert!(
            found.iter().any(|f| f.marker == m.text()),
            "marker {m} is not readable through the API: the test would prove nothing"
        );
    }
}

fn report(findings: &[Finding]) -> String {
    findings
        .iter()
        .map(|f| {
            format!(
                "  {} in {} ({}) at byte {}",
                f.marker, f.place, f.encoding, f.offset
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn assert_dir_clean(server: &Server, markers: &[Marker], when: &str) {
    let (files, findings) = scan_dir(server.data_dir(), markers);
    assert!(
        findings.is_empty(),
        "plaintext PHI under the data directory ({when}):\n{}\nfiles: {files:?}",
        report(&findings)
    );
    if !server.backend().is_postgres() {
        let db = files
            .iter()
            .find(|(p, _)| p.file_name().is_some_and(|n| n == "phivault.db"))
            .unwrap_or_else(|| panic!("no phivault.db under the data directory: {files:?}"));
        let stored: u64 = files
            .iter()
            .filter(|(p, _)| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("phivault.db"))
            })
            .map(|(_, len)| *len)
            .sum();
        assert!(
            db.1 > 0 && stored > 8192,
            "the database files hold the data ({when}): {files:?}"
        );
    }
}

fn assert_logs_clean(server: &Server, markers: &[Marker]) {
    let findings = scan_bytes("stderr (logs)", server.stderr_text().as_bytes(), markers);
    assert!(
        findings.is_empty(),
        "PHI or secrets in the logs:\n{}",
        report(&findings)
    );
    let out = server.stdout_text();
    let findings = scan_bytes("stdout", out.as_bytes(), markers);
    assert!(
        findings.is_empty(),
        "PHI or secrets on stdout:\n{}",
        report(&findings)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn no_plaintext_phi_at_rest() {
    for backend in backends() {
        let mut server = Server::start(BIN, &backend, &[]).await;
        let api = server.api().clone();
        let mut planted = plant(&api).await;
        assert_readable(&api, &planted).await;
        let patient = planted.ids[0].clone();
        planted
            .markers
            .extend(plant_identities(&server, &patient).await);

        // while running: database, WAL, shm, keys, certificates
        assert_dir_clean(&server, &planted.markers, "while running");

        if let Some(schema) = server.schema() {
            let dump = schema.dump();
            let text = String::from_utf8_lossy(&dump);
            assert!(
                text.contains("resource_versions") && text.contains("search_index"),
                "pg_dump covers the schema's tables"
            );
            for id in &planted.ids {
                assert!(
                    text.contains(id.as_str()),
                    "pg_dump holds the rows (id {id} missing): the scan would prove nothing"
                );
            }
            let findings = scan_bytes("pg_dump", &dump, &planted.markers);
            assert!(
                findings.is_empty(),
                "plaintext PHI in pg_dump of schema {}:\n{}",
                schema.name(),
                report(&findings)
            );
        }

        // after SIGKILL: whatever is on disk now (the WAL is not checkpointed away)
        server.kill();
        assert_dir_clean(&server, &planted.markers, "after SIGKILL");
        assert_logs_clean(&server, &planted.markers);
        server.assert_no_panic();

        control(&server).await;
    }
}

/// The control experiment: plaintext written into the same database (a text column and a
/// UTF-16 blob) IS found by the same scans, so a clean scan above means something.
async fn control(server: &Server) {
    let as_text = Marker::name();
    let as_blob = Marker::name();
    let utf16: Vec<u8> = as_blob
        .text()
        .encode_utf16()
        .flat_map(|u| u.to_le_bytes())
        .collect();
    let db = server.db().await;
    let blob_type = if server.backend().is_postgres() {
        "BYTEA"
    } else {
        "BLOB"
    };
    // A token-like secret in a text column, and raw key-like bytes in a blob.
    let token = Marker::literal(&format!("pva_{}", random_password()));
    let raw: Vec<u8> = (0u8..20)
        .map(|i| i.wrapping_mul(37).wrapping_add(0xa5))
        .collect();
    let as_raw = Marker::bytes("control raw bytes", &raw);
    sqlx::query(&format!(
        "CREATE TABLE e2e_control (t TEXT NOT NULL, b {blob_type} NOT NULL)"
    ))
    .execute(&db)
    .await
    .unwrap();
    sqlx::query("INSERT INTO e2e_control (t, b) VALUES ($1, $2)")
        .bind(as_text.text())
        .bind(utf16)
        .execute(&db)
        .await
        .unwrap();
    sqlx::query("INSERT INTO e2e_control (t, b) VALUES ($1, $2)")
        .bind(token.text())
        .bind(raw)
        .execute(&db)
        .await
        .unwrap();
    db.close().await;
    let markers = [as_text, as_blob, token, as_raw];
    let findings = match server.schema() {
        Some(schema) => scan_bytes("pg_dump", &schema.dump(), &markers),
        None => scan_dir(server.data_dir(), &markers).1,
    };
    for m in &markers {
        assert!(
            findings.iter().any(|f| f.marker == m.text()),
            "control: plaintext {m} written to the database is not found by the scan: {findings:?}"
        );
    }
}
