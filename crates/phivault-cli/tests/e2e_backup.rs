//! `phivault backup`, `backup verify`, `backup keygen` and `restore` (issue 7) next to a
//! running server, on every backend: the backup is taken while the server serves, holds no
//! plaintext and comes with a manifest; `backup verify` passes it and fails a flipped byte or
//! the wrong identity; after the database is destroyed, `restore` brings back every resource
//! and history identical and the server serves them; the audit trail verifies and records the
//! restore; a restore over a database that holds data is refused without --force; with
//! --force, a patient erased after the backup stays erased, and the database replaced is
//! archived first, its trail (with the erasure recorded since the backup) included. An
//! archive's MAC is checked with the master key and fails with another.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Output};

use phivault_testkit::fixtures;
use phivault_testkit::{Server, backends, random_username};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_phivault");

/// Runs `phivault <args>` on the server's storage.
fn cli(server: &Server, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .arg("--data-dir")
        .arg(server.data_dir())
        .arg("--database-url")
        .arg(server.database_url())
        .current_dir(server.data_dir())
        .env_remove("PHIVAULT_DATABASE_URL")
        .env_remove("PHIVAULT_DATA_DIR")
        .env_remove("PHIVAULT_MASTER_KEY_FILE")
        .env_remove("PHIVAULT_CONFIG")
        .output()
        .unwrap()
}

/// Runs `phivault <args>` with no storage settings.
fn plain_cli(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env_remove("PHIVAULT_DATABASE_URL")
        .env_remove("PHIVAULT_DATA_DIR")
        .env_remove("PHIVAULT_MASTER_KEY_FILE")
        .env_remove("PHIVAULT_CONFIG")
        .output()
        .unwrap()
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(out: &Output, what: &str) -> String {
    let (stdout, stderr) = text(out);
    assert!(out.status.success(), "{what} failed:\n{stdout}\n{stderr}");
    stdout
}

/// Every resource (type, id) with its current body and its history, through the API.
async fn snapshot(server: &Server, ids: &[(&str, String)]) -> Vec<(Value, Value)> {
    let mut out = Vec::new();
    for (t, id) in ids {
        let current = server.get(&format!("{t}/{id}")).await;
        current.assert_status(200);
        let history = server.get(&format!("{t}/{id}/_history")).await;
        history.assert_status(200);
        let mut h = history.json();
        // Paging links and the bundle's own id and time are per request.
        for k in ["id", "meta", "link"] {
            h.as_object_mut().unwrap().remove(k);
        }
        // The base URL (its port) changes with each start.
        let h = serde_json::to_string(&h)
            .unwrap()
            .replace(server.base(), "BASE");
        out.push((current.json(), serde_json::from_str(&h).unwrap()));
    }
    out
}

/// Deletes the database (the SQLite files, or every table of the PostgreSQL schema).
async fn destroy(server: &Server) {
    if server.backend().is_postgres() {
        let db = server.db().await;
        let tables: Vec<(String,)> = sqlx::query_as(
            "SELECT table_name::text FROM information_schema.tables \
             WHERE table_schema = current_schema()",
        )
        .fetch_all(&db)
        .await
        .unwrap();
        assert!(tables.len() > 10);
        for (t,) in tables {
            sqlx::query(&format!("DROP TABLE IF EXISTS {t} CASCADE"))
                .execute(&db)
                .await
                .unwrap();
        }
        db.close().await;
    } else {
        for suffix in ["", "-wal", "-shm"] {
            let f = server.data_dir().join(format!("phivault.db{suffix}"));
            if f.exists() {
                std::fs::remove_file(f).unwrap();
            }
        }
    }
}

#[tokio::test]
async fn backup_verify_destroy_restore_and_erasure_replay() {
    for backend in backends() {
        let label = backend.name();
        let mut server = Server::start(BIN, &backend, &[]).await;
        let keys = tempfile::tempdir().unwrap();

        // Data: patients with observations, one of them updated (history).
        let marker = format!("Backupcli{}", &random_username()[2..8]);
        let mut ids: Vec<(&str, String)> = Vec::new();
        for p in 0..8 {
            let patient = server
                .create(&fixtures::patient(&format!("{marker}{p}"), "Ida"))
                .await;
            for day in 1..=3 {
                let code = fixtures::coding(Some("http://loinc.org"), "8867-4", "heart rate");
                let o = server
                    .create(&fixtures::observation(
                        &format!("Patient/{patient}"),
                        code,
                        &format!("2024-03-0{day}T08:00:00Z"),
                    ))
                    .await;
                ids.push(("Observation", o));
            }
            ids.push(("Patient", patient));
        }
        let (_, first) = ids[0].clone();
        let mut body = server.get(&format!("Observation/{first}")).await.json();
        body["status"] = json!("amended");
        server
            .put_json(&format!("Observation/{first}"), &body)
            .await
            .assert_status(200);
        let before = snapshot(&server, &ids).await;

        // Keys: the operator's identity and a stranger's.
        let recipient = ok(
            &plain_cli(keys.path(), &["backup", "keygen", "--out", "id.txt"]),
            "keygen",
        );
        let recipient = recipient.trim().to_owned();
        assert!(recipient.starts_with("age1"), "{recipient}");
        ok(
            &plain_cli(keys.path(), &["backup", "keygen", "--out", "other.txt"]),
            "keygen",
        );
        let e = plain_cli(keys.path(), &["backup", "keygen", "--out", "id.txt"]);
        assert!(!e.status.success(), "{label}: keygen overwrote an identity");
        let identity = keys.path().join("id.txt");
        let other = keys.path().join("other.txt");

        // Backup while the server runs.
        let dir = keys.path().join("backups");
        let out = ok(
            &cli(
                &server,
                &[
                    "backup",
                    "--to",
                    dir.to_str().unwrap(),
                    "--recipient",
                    &recipient,
                ],
            ),
            "backup",
        );
        assert!(out.starts_with("ok: "), "{label}: {out}");
        assert!(out.contains("resources/s") && out.contains("MB/s"), "{out}");
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        assert_eq!(files.len(), 2, "{label}: {files:?}");
        let archive = files[0].clone();
        assert!(archive.to_string_lossy().ends_with(".age"), "{archive:?}");
        let manifest: Value = serde_json::from_slice(&std::fs::read(&files[1]).unwrap()).unwrap();
        let bytes = std::fs::read(&archive).unwrap();
        assert_eq!(manifest["archive_bytes"], json!(bytes.len()));
        assert_eq!(
            manifest["archive_sha256"],
            json!(hex::encode(phivault_crypto::sha256(&bytes)))
        );
        assert_eq!(manifest["resources"], json!(32), "{label}: {manifest}");
        assert_eq!(manifest["resource_types"]["Observation"], json!(24));
        assert_eq!(manifest["header"]["source_backend"], json!(label));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&archive).unwrap().permissions().mode();
            assert_eq!(
                mode & 0o077,
                0,
                "{label}: the archive is readable by others"
            );
        }
        let all = [bytes.as_slice(), &std::fs::read(&files[1]).unwrap()].concat();
        assert!(
            !all.windows(marker.len()).any(|w| w == marker.as_bytes()),
            "{label}: plaintext PHI in the backup"
        );

        // Verify: ok; a flipped byte and the wrong identity fail.
        let a = archive.to_str().unwrap();
        let v = ok(
            &plain_cli(
                keys.path(),
                &["backup", "verify", a, "--identity", "id.txt"],
            ),
            "verify",
        );
        assert!(v.starts_with("ok: ") && v.contains("32 resources"), "{v}");
        let mut flipped = bytes.clone();
        let at = flipped.len() * 2 / 3;
        flipped[at] ^= 0x04;
        let bad = keys.path().join("flipped.age");
        std::fs::write(&bad, &flipped).unwrap();
        let v = plain_cli(
            keys.path(),
            &[
                "backup",
                "verify",
                bad.to_str().unwrap(),
                "--identity",
                "id.txt",
            ],
        );
        let (stdout, _) = text(&v);
        assert_eq!(v.status.code(), Some(1), "{label}: {stdout}");
        assert!(
            stdout.starts_with("FAILED: ") && stdout.contains("damaged"),
            "{stdout}"
        );
        let v = plain_cli(
            keys.path(),
            &["backup", "verify", a, "--identity", "other.txt"],
        );
        let (stdout, _) = text(&v);
        assert_eq!(v.status.code(), Some(1), "{label}: {stdout}");
        assert!(
            stdout.contains("none of the given age identities"),
            "{stdout}"
        );
        // With the master key the archive's MAC is checked too; another key refuses it.
        let master = server.data_dir().join("master.key");
        let v = ok(
            &plain_cli(
                keys.path(),
                &[
                    "backup",
                    "verify",
                    a,
                    "--identity",
                    "id.txt",
                    "--master-key-file",
                    master.to_str().unwrap(),
                ],
            ),
            "verify with the master key",
        );
        assert!(v.starts_with("ok: "), "{v}");
        let stranger = keys.path().join("stranger.key");
        std::fs::write(&stranger, format!("{}\n", "ab".repeat(32))).unwrap();
        // Owner-only, or phivault refuses it before looking at the archive.
        std::fs::set_permissions(&stranger, std::fs::Permissions::from_mode(0o600)).unwrap();
        let v = plain_cli(
            keys.path(),
            &[
                "backup",
                "verify",
                a,
                "--identity",
                "id.txt",
                "--master-key-file",
                stranger.to_str().unwrap(),
            ],
        );
        let (stdout, _) = text(&v);
        assert_eq!(v.status.code(), Some(1), "{label}: {stdout}");
        assert!(stdout.contains("not authenticated"), "{stdout}");

        // The machine is lost: the database is gone (the master key was kept apart).
        server.kill();
        destroy(&server).await;
        let r = cli(
            &server,
            &["restore", a, "--identity", other.to_str().unwrap()],
        );
        assert!(!r.status.success(), "{label}: the wrong identity restored");
        let r = ok(
            &cli(
                &server,
                &["restore", a, "--identity", identity.to_str().unwrap()],
            ),
            "restore",
        );
        assert!(r.starts_with("ok: restored"), "{label}: {r}");
        server.restart().await;
        let after = snapshot(&server, &ids).await;
        for (((t, id), b), a) in ids.iter().zip(&before).zip(&after) {
            assert!(
                a == b,
                "{label}: {t}/{id} or its history differs after the restore"
            );
        }
        let audit = ok(&cli(&server, &["audit", "verify"]), "audit verify");
        assert!(audit.starts_with("ok: "), "{audit}");
        let db = server.db().await;
        let bodies: Vec<(Vec<u8>,)> = sqlx::query_as("SELECT body FROM audit_entries")
            .fetch_all(&db)
            .await
            .unwrap();
        db.close().await;
        let restores = bodies
            .iter()
            .filter_map(|(b,)| phivault_audit::AuditEntry::from_canonical(b))
            .filter(|e| e.action == "cli restore")
            .count();
        assert_eq!(restores, 1, "{label}: the restore is not in the trail");

        // A patient erased after the backup stays erased when the backup is restored over
        // the installation; without --force nothing is replaced.
        let (_, erased) = ids[3].clone();
        assert_eq!(ids[3].0, "Patient");
        ok(&cli(&server, &["erase", &erased, "--yes"]), "erase");
        server.kill();
        let r = cli(
            &server,
            &["restore", a, "--identity", identity.to_str().unwrap()],
        );
        let (_, stderr) = text(&r);
        assert!(
            !r.status.success(),
            "{label}: restored over data without --force"
        );
        assert!(stderr.contains("--force"), "{stderr}");
        let r = ok(
            &cli(
                &server,
                &[
                    "restore",
                    a,
                    "--identity",
                    identity.to_str().unwrap(),
                    "--force",
                ],
            ),
            "restore --force",
        );
        assert!(r.starts_with("ok: restored"), "{r}");
        // The database replaced was archived first, with its trail: the erasure recorded
        // after the backup (gone from the restored trail) is kept there, verifiable.
        let replaced_dir = server.data_dir().join("replaced");
        let mut kept_files: Vec<_> = std::fs::read_dir(&replaced_dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        kept_files.sort();
        assert_eq!(kept_files.len(), 2, "{label}: {kept_files:?}");
        let kept_manifest: Value =
            serde_json::from_slice(&std::fs::read(&kept_files[1]).unwrap()).unwrap();
        assert_eq!(
            kept_manifest["erasures"],
            json!(1),
            "{label}: {kept_manifest}"
        );
        let kept_entries = kept_manifest["audit"]["entries"].as_u64().unwrap();
        assert!(
            kept_entries > manifest["audit"]["entries"].as_u64().unwrap(),
            "{label}: the replaced trail lost entries"
        );
        let v = ok(
            &plain_cli(
                keys.path(),
                &[
                    "backup",
                    "verify",
                    kept_files[0].to_str().unwrap(),
                    "--identity",
                    "id.txt",
                    "--master-key-file",
                    master.to_str().unwrap(),
                ],
            ),
            "verify the replaced database's archive",
        );
        assert!(v.starts_with("ok: ") && v.contains("1 erasures"), "{v}");
        server.restart().await;
        server
            .get(&format!("Patient/{erased}"))
            .await
            .assert_status(410);
        let (_, kept) = ids[7].clone();
        server
            .get(&format!("Patient/{kept}"))
            .await
            .assert_status(200);
        server.assert_no_panic();
    }
}
