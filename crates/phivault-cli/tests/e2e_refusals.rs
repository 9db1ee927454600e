//! End-to-end, on every backend: refused unauthenticated requests (no or invalid bearer
//! token) are aggregated per client address (as `[edge] trusted_proxies` names it): a flood
//! adds the first request's full entry and, when the server shuts down gracefully (or the
//! window ends), one summary entry whose count is the flood's size; failed logins keep an
//! entry each; the trail verifies.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use phivault_audit::{AuditEntry, REFUSALS_ACTION};
use phivault_testkit::{Api, Server, backends, random_username};
use reqwest::Method;
use serde_json::json;
use sqlx::Row;

const BIN: &str = env!("CARGO_BIN_EXE_phivault");

/// The entries after `after`, but the server's own alerts (actor `phivault`): refusals in
/// bursts raise them, in the background, and they are not the requests' entries.
async fn entries_after(server: &Server, after: i64) -> Vec<AuditEntry> {
    let db = server.db().await;
    let rows = sqlx::query(
        "SELECT body FROM audit_entries WHERE seq > $1 AND actor <> 'phivault' ORDER BY seq",
    )
    .bind(after)
    .fetch_all(&db)
    .await
    .unwrap();
    db.close().await;
    rows.iter()
        .map(|row| AuditEntry::from_canonical(&row.get::<Vec<u8>, _>("body")).unwrap())
        .collect()
}

async fn last_seq(server: &Server) -> i64 {
    let db = server.db().await;
    let row = sqlx::query("SELECT COALESCE(MAX(seq), 0) AS last FROM audit_entries")
        .fetch_one(&db)
        .await
        .unwrap();
    db.close().await;
    row.get::<i64, _>("last")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_is_summarised_per_address_and_failed_logins_stay_individual() {
    for backend in backends() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("phivault.toml");
        // The test client connects from 127.0.0.1: as a trusted proxy, its X-Forwarded-For
        // names the client. A long window: only the shutdown writes the summaries.
        std::fs::write(
            &config,
            "[edge]\ntrusted_proxies = [\"127.0.0.1\"]\nrefusal_window_secs = 3600\n",
        )
        .unwrap();
        let mut server =
            Server::start(BIN, &backend, &["--config", config.to_str().unwrap()]).await;
        let user = random_username();
        server.create_user(&user, "patient").await;
        let before = last_seq(&server).await;

        const N: u64 = 300;
        let from = |address: &str, path: &str, token: Option<&str>| {
            let mut rb = server
                .client()
                .request(Method::GET, server.origin_url(path))
                .header("x-forwarded-for", address);
            if let Some(t) = token {
                rb = rb.header("authorization", format!("Bearer {t}"));
            }
            Api::send(rb)
        };
        for i in 0..N {
            let token = (i % 2 == 1).then_some("pvs_not-a-real-token");
            let r = from("198.51.100.7", "/fhir/Patient", token).await;
            assert_eq!(r.status, 401, "{r:?}");
        }
        for _ in 0..4 {
            let r = from("198.51.100.8", "/fhir/Observation", None).await;
            assert_eq!(r.status, 401, "{r:?}");
        }
        for _ in 0..3 {
            let r = Api::send(
                server
                    .origin_request(Method::POST, "/auth/login", None)
                    .header("x-forwarded-for", "198.51.100.7")
                    .header("content-type", "application/json")
                    .body(json!({ "username": user, "password": "wrong-password-1" }).to_string()),
            )
            .await;
            assert_eq!(r.status, 401, "{r:?}");
        }
        // While serving: one full entry per address, one per failed login.
        let entries = entries_after(&server, before).await;
        assert_eq!(entries.len(), 2 + 3, "{}: {entries:?}", backend.name());
        assert_eq!(entries[0].source_address.as_deref(), Some("198.51.100.7"));
        assert_eq!(entries[1].source_address.as_deref(), Some("198.51.100.8"));
        assert!(entries[2..].iter().all(|e| e.action == "POST /auth/login"));

        assert_eq!(server.terminate(), Some(0), "a clean shutdown");
        let entries = entries_after(&server, before).await;
        let summaries: Vec<&AuditEntry> = entries
            .iter()
            .filter(|e| e.action == REFUSALS_ACTION)
            .collect();
        assert_eq!(summaries.len(), 2, "{}: {entries:?}", backend.name());
        let count_of = |address: &str| {
            summaries
                .iter()
                .find(|e| e.source_address.as_deref() == Some(address))
                .and_then(|e| e.refusals.as_ref())
                .map(|r| r.count)
        };
        assert_eq!(count_of("198.51.100.7"), Some(N));
        assert_eq!(count_of("198.51.100.8"), Some(4));
        assert_eq!(entries.len(), 2 + 3 + 2, "O(1) entries for the flood");
        server
            .cli(&["audit", "verify"], None)
            .await
            .assert_ok("audit verify");
        server.assert_no_panic();
    }
}
