//! End-to-end: `phivault breach report` lists exactly the patients an actor reached in a
//! window (reads, searches, writes), by user, client, token hash and network address, with the
//! data classes (sensitivity labels) of what they reached, counts refused requests without
//! listing their patients, and is itself audited; on every backend.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;

use phivault_audit::{AuditEntry, Outcome};
use phivault_testkit::fixtures;
use phivault_testkit::{Marker, Server, backends, random_username};
use serde_json::Value;
use sqlx::Row;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

const BIN: &str = env!("CARGO_BIN_EXE_phivault");

fn now_text(offset_secs: i64) -> String {
    (OffsetDateTime::now_utc() + time::Duration::seconds(offset_secs))
        .format(&Rfc3339)
        .unwrap()
}

/// `breach report` with `who` (flag and value) over `from..to`, as JSON.
async fn report(server: &Server, who: [&str; 2], from: &str, to: &str) -> Value {
    let out = server
        .cli(
            &[
                "breach", "report", who[0], who[1], "--from", from, "--to", to, "--format", "json",
            ],
            None,
        )
        .await;
    out.assert_ok("phivault breach report");
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout))
}

fn patients(report: &Value) -> BTreeSet<String> {
    report["patients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["patient"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn the_report_lists_exactly_whom_an_actor_reached() {
    for backend in backends() {
        let server = Server::start(BIN, &backend, &[]).await;
        let s = server.api().clone();
        let start = now_text(-1);
        let mut ids = Vec::new();
        for i in 0..6 {
            let family = format!("Breach{i}");
            ids.push(
                s.create(&fixtures::patient(Marker::name().text(), &family))
                    .await,
            );
        }
        let doc = random_username();
        let session = server.staff_session(&doc, "clinician").await;
        for pid in &ids[..4] {
            let labels: &[&str] = if pid == &ids[2] { &["PSY"] } else { &[] };
            server.grant(&doc, pid, labels, None).await;
        }
        let other = random_username();
        let other_session = server.staff_session(&other, "clinician").await;
        server.grant(&other, &ids[4], &[], None).await;

        // The clinician reads two patients, searches (their four come back), and is refused
        // one they have no relationship with; a colleague reads another.
        let as_doc = server.api_as(&session);
        as_doc
            .get(&format!("Patient/{}", ids[0]))
            .await
            .assert_status(200);
        as_doc
            .get(&format!("Patient/{}", ids[1]))
            .await
            .assert_status(200);
        as_doc.get("Patient?_count=50").await.assert_status(200);
        // A mental-health note of the third patient, written and read again.
        let mut note = fixtures::observation(
            &format!("Patient/{}", ids[2]),
            fixtures::coding(Some(fixtures::LOINC), "8867-4", "Heart rate"),
            "2026-11-30T10:00:00Z",
        );
        note["meta"] = serde_json::json!({
            "security": [{ "system": fixtures::ACT_CODE, "code": "PSY" }]
        });
        let psy = as_doc.create(&note).await;
        as_doc
            .get(&format!("Observation/{psy}"))
            .await
            .assert_status(200);
        let refused = as_doc.get(&format!("Patient/{}", ids[5])).await;
        assert!(matches!(refused.status, 403 | 404), "{refused:?}");
        server
            .api_as(&other_session)
            .get(&format!("Patient/{}", ids[4]))
            .await
            .assert_status(200);
        let end = now_text(60);

        let by_user = report(&server, ["--actor", &doc], &start, &end).await;
        let want: BTreeSet<String> = ids[..4].iter().cloned().collect();
        assert_eq!(patients(&by_user), want, "{by_user}");
        assert!(by_user["refused"].as_u64().unwrap() >= 1, "{by_user}");
        let first = by_user["patients"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["patient"] == ids[0].as_str())
            .unwrap();
        assert_eq!(first["by_kind"]["read"], 1, "{first}");
        assert_eq!(first["by_kind"]["search"], 1, "{first}");
        assert_eq!(first["by_resource_type"]["Patient"], 2, "{first}");
        // As instants: RFC 3339 text drops trailing zeros of the fraction, so "…01.9Z" sorts
        // after "…01.95Z" as text.
        let instant = |v: &Value| OffsetDateTime::parse(v.as_str().unwrap(), &Rfc3339).unwrap();
        assert!(
            instant(&first["first"]) <= instant(&first["last"]),
            "{first}"
        );
        // Data classes: always present; the PSY note's write and read for the third patient.
        assert_eq!(first["by_label"], serde_json::json!({}), "{first}");
        let third = by_user["patients"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["patient"] == ids[2].as_str())
            .unwrap();
        assert_eq!(
            third["by_label"],
            serde_json::json!({ "PSY": 2 }),
            "{third}"
        );
        let out = server
            .cli(
                &[
                    "breach", "report", "--actor", &doc, "--from", &start, "--to", &end,
                ],
                None,
            )
            .await;
        out.assert_ok("phivault breach report (markdown)");
        assert!(out.stdout.contains("| data classes |"), "{}", out.stdout);
        let row = |pid: &str| {
            out.stdout
                .lines()
                .find(|l| l.starts_with(&format!("| Patient/{pid} |")))
                .unwrap_or_else(|| panic!("no row for {pid}: {}", out.stdout))
                .to_owned()
        };
        assert!(row(&ids[2]).contains("| PSY 2 |"), "{}", row(&ids[2]));
        assert!(row(&ids[0]).contains("| - |"), "{}", row(&ids[0]));

        // The same through the session token's hash (the stolen credential).
        let hash = hex::encode(phivault_crypto::sha256(session.as_bytes()));
        let by_token = report(&server, ["--token-hash", &hash], &start, &end).await;
        assert_eq!(patients(&by_token), want, "{by_token}");

        // The system app created all six; every request came from the loopback.
        let (client_id, _) = server.system_client().unwrap();
        let by_client = report(&server, ["--client", client_id], &start, &end).await;
        assert_eq!(patients(&by_client).len(), 6, "{by_client}");
        let by_address = report(&server, ["--address", "127.0.0.0/8"], &start, &end).await;
        assert_eq!(patients(&by_address).len(), 6, "{by_address}");
        assert!(by_address["actors"].as_array().unwrap().len() >= 3);
        let elsewhere = report(&server, ["--address", "10.9.0.0/16"], &start, &end).await;
        assert!(patients(&elsewhere).is_empty(), "{elsewhere}");
        // Entries are found by network through their address key. A trail written before the
        // key existed has none: whatever opens the trail next (here the report itself) fills
        // the keys in from the bodies, and the network reaches the same patients.
        let db = server.db().await;
        sqlx::query("UPDATE audit_entries SET address = NULL")
            .execute(&db)
            .await
            .unwrap();
        let refilled = report(&server, ["--address", "127.0.0.0/8"], &start, &end).await;
        assert_eq!(patients(&refilled), patients(&by_address), "{refilled}");
        let missing: i64 =
            sqlx::query("SELECT COUNT(*) AS n FROM audit_entries WHERE address IS NULL")
                .fetch_one(&db)
                .await
                .unwrap()
                .get("n");
        assert_eq!(missing, 0);
        db.close().await;

        // A window before the reads finds nothing.
        let before = report(&server, ["--actor", &doc], "2020-01-01T00:00:00Z", &start).await;
        assert!(patients(&before).is_empty(), "{before}");

        // Mistakes are named; the report is audited.
        let out = server
            .cli(
                &[
                    "breach",
                    "report",
                    "--actor",
                    "nobody-here",
                    "--from",
                    &start,
                    "--to",
                    &end,
                ],
                None,
            )
            .await;
        assert_eq!(out.code, Some(1), "{out:?}");
        assert!(out.stderr.contains("no user named"), "{out:?}");
        let db = server.db().await;
        // The server's own alerts (actor `phivault`) come at their own pace: not counted.
        let rows = sqlx::query(
            "SELECT body FROM audit_entries WHERE actor <> 'phivault' ORDER BY seq DESC LIMIT 2",
        )
        .fetch_all(&db)
        .await
        .unwrap();
        db.close().await;
        let last: Vec<AuditEntry> = rows
            .iter()
            .map(|r| AuditEntry::from_canonical(&r.get::<Vec<u8>, _>("body")).unwrap())
            .collect();
        assert_eq!(last[0].action, "cli breach report");
        assert_eq!(last[0].outcome, Outcome::Error);
        assert_eq!(last[1].action, "cli breach report");
        assert_eq!(last[1].outcome, Outcome::Allowed);
        assert!(last[1].patients_concerned().is_empty());
    }
}
