//! The start-up check of the audit trail (DESIGN.md invariant 3), end to end on SQLite and,
//! when `PHIVAULT_TEST_DATABASE_URL` is set, PostgreSQL: `phivault serve` verifies the trail
//! from its last checkpoint on before listening. A server is started and queried (every request
//! appends an entry), stopped, a checkpoint is made, the server is started again (the check
//! passes) and queried again, stopped, and one entry after the checkpoint has a body byte
//! changed in the database. Then `serve` refuses to start, naming that entry, and starts with
//! `--allow-broken-audit`, logging the finding.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Stdio;
use std::time::Duration;

use phivault_audit::AuditLog;
use phivault_crypto::FileKeyProvider;
use phivault_store::{Store, StoreOptions};
use phivault_testkit::{PHIVAULT_ENV, Server, backends};
use sqlx::Row;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

const BIN: &str = env!("CARGO_BIN_EXE_phivault");

/// How long a start may take before the test fails.
const LIMIT: Duration = Duration::from_secs(60);

/// `phivault serve` on the server's data directory and database, on a free port.
fn serve_command(server: &Server, extra: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.arg("serve")
        .arg("--data-dir")
        .arg(server.data_dir())
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--database-url")
        .arg(server.database_url())
        .args(extra)
        .current_dir(server.data_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for var in PHIVAULT_ENV {
        cmd.env_remove(var);
    }
    cmd
}

/// A few requests; each appends an audit entry.
async fn some_requests(server: &Server) {
    for path in ["metadata", "Patient?family=nobody", "Patient/not-there"] {
        let r = server.get(path).await;
        assert!(r.status < 500, "{path}: {r:?}");
    }
}

/// Signs a checkpoint over the whole trail, as the server does every minute. Returns its size.
async fn checkpoint(server: &Server) -> u64 {
    let keys = FileKeyProvider::new(server.data_dir().join("master.key"));
    let store = Store::open(&StoreOptions::new(server.database_url()), &keys)
        .await
        .unwrap();
    let size = AuditLog::open(store.clone())
        .await
        .unwrap()
        .checkpoint()
        .await
        .unwrap()
        .size;
    store.close().await;
    size
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_refuses_a_tampered_trail_unless_told_otherwise() {
    for backend in backends() {
        let name = backend.name();
        let mut server = Server::start(BIN, &backend, &[]).await;
        some_requests(&server).await;
        server.kill();
        let covered = checkpoint(&server).await;
        assert!(covered >= 3, "{name}: {covered}");

        // A clean trail: the check passes and says what it verified.
        server.restart().await;
        some_requests(&server).await;
        server.kill();
        let log = server.stderr_text();
        assert!(
            log.contains("audit trail verified at start"),
            "{name}: no start-up verification logged:\n{log}"
        );

        // One body byte of an entry after the checkpoint changed (inside its request id, so
        // still valid JSON).
        let bad = covered + 2;
        let db = server.db().await;
        let mut body: Vec<u8> = sqlx::query("SELECT body FROM audit_entries WHERE seq = $1")
            .bind(bad as i64)
            .fetch_one(&db)
            .await
            .unwrap_or_else(|e| panic!("{name}: no audit entry {bad}: {e}"))
            .try_get("body")
            .unwrap();
        let at = body.len() - 3;
        body[at] ^= 1;
        sqlx::query("UPDATE audit_entries SET body = $1 WHERE seq = $2")
            .bind(body)
            .bind(bad as i64)
            .execute(&db)
            .await
            .unwrap();
        db.close().await;

        // Refused: non-zero exit, the entry named, what to do next said.
        let out = tokio::time::timeout(LIMIT, serve_command(&server, &[]).output())
            .await
            .unwrap_or_else(|_| panic!("{name}: serve did not exit on a tampered trail"))
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{name}: started:\n{stdout}\n{stderr}"
        );
        assert!(!stdout.contains("listening on"), "{name}: {stdout}");
        assert!(
            stderr.contains(&format!("first bad entry {bad}:")),
            "{name}: the entry is not named:\n{stderr}"
        );
        assert!(stderr.contains("phivault audit verify"), "{name}: {stderr}");
        assert!(stderr.contains("--allow-broken-audit"), "{name}: {stderr}");
        assert!(!stderr.contains("panicked"), "{name}: {stderr}");

        // Told otherwise: it starts, and logs the finding as an error.
        let mut child = serve_command(&server, &["--allow-broken-audit"])
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let listening = tokio::time::timeout(LIMIT, async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if line.starts_with("phivault: listening on ") {
                    return true;
                }
            }
            false
        })
        .await
        .unwrap_or(false);
        child.kill().await.unwrap();
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .await
            .unwrap();
        assert!(
            listening,
            "{name}: --allow-broken-audit did not start:\n{stderr}"
        );
        assert!(
            stderr.contains("ERROR"),
            "{name}: no error logged:\n{stderr}"
        );
        assert!(
            stderr.contains(&format!("audit entry {bad} was altered")),
            "{name}: the logged error does not name the entry:\n{stderr}"
        );
    }
}

/// The checkpoint key printed at start, once pinned in the configuration, refuses a database
/// whose key differs; a database whose key row was deleted while its trail has entries is
/// refused rather than given a new key.
#[tokio::test(flavor = "multi_thread")]
async fn serve_refuses_another_audit_key_than_the_pinned_one_and_a_deleted_one() {
    for backend in backends() {
        let name = backend.name();
        let mut server = Server::start(BIN, &backend, &[]).await;
        some_requests(&server).await;
        server.kill();
        let printed = server.stdout_text();
        let key = printed
            .lines()
            .find_map(|l| l.strip_prefix("phivault: audit checkpoint public key: "))
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("{name}: no key printed:\n{printed}"))
            .to_owned();
        assert_eq!(key.len(), 64, "{name}: {key}");

        // Read from ./phivault.toml (serve runs in the data directory).
        let config = server.data_dir().join("phivault.toml");
        let run = |extra: &'static [&'static str]| serve_command(&server, extra);
        // Another key pinned: refused before listening.
        std::fs::write(
            &config,
            format!("audit_public_key = \"{}\"\n", "ab".repeat(32)),
        )
        .unwrap();
        let out = tokio::time::timeout(LIMIT, run(&[]).output())
            .await
            .unwrap_or_else(|_| panic!("{name}: serve did not exit"))
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{name}: started:\n{stdout}\n{stderr}"
        );
        assert!(!stdout.contains("listening on"), "{name}: {stdout}");
        assert!(
            stderr.contains("is not the pinned audit_public_key"),
            "{name}: {stderr}"
        );

        // The printed key pinned: it starts (and no longer prints the key).
        std::fs::write(&config, format!("audit_public_key = \"{key}\"\n")).unwrap();
        let mut child = run(&[]).spawn().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut seen = Vec::new();
        let listening = tokio::time::timeout(LIMIT, async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if line.starts_with("phivault: listening on ") {
                    return true;
                }
                seen.push(line);
            }
            false
        })
        .await
        .unwrap_or(false);
        child.kill().await.unwrap();
        assert!(listening, "{name}: the pinned key did not start: {seen:?}");
        assert!(
            !seen
                .iter()
                .any(|l| l.contains("audit checkpoint public key")),
            "{name}: {seen:?}"
        );

        // The key row deleted: refused, and no key minted.
        let db = server.db().await;
        sqlx::query("DELETE FROM audit_keys")
            .execute(&db)
            .await
            .unwrap();
        std::fs::remove_file(&config).unwrap();
        let out = tokio::time::timeout(LIMIT, serve_command(&server, &[]).output())
            .await
            .unwrap_or_else(|_| panic!("{name}: serve did not exit"))
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}: started:\n{stderr}");
        assert!(
            stderr.contains("refusing to create a new key"),
            "{name}: {stderr}"
        );
        let n: i64 = sqlx::query("SELECT COUNT(*) AS n FROM audit_keys")
            .fetch_one(&db)
            .await
            .unwrap()
            .try_get("n")
            .unwrap();
        assert_eq!(n, 0, "{name}");
        db.close().await;
    }
}
