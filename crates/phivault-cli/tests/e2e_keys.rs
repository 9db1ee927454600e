//! Key rotation without downtime (issue 7) over HTTPS and the CLI, on every backend:
//! `phivault keys rotate` runs next to a loaded server (every request succeeds, every data key
//! ends under the new KEK, everything reads back identically, also after a restart); a rotation
//! killed with SIGKILL mid-way is resumed by the next run without a third KEK;
//! `phivault keys rotate-master` replaces the master key (the old one no longer opens the
//! database; a running server picks up the new one when it meets a KEK wrapped under it) and
//! finishes after a crash that left `<master_key_file>.new`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::PermissionsExt as _;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use phivault_crypto::StaticKeyProvider;
use phivault_store::{Store, StoreOptions};
use phivault_testkit::fixtures::{self, BundleBuilder};
use phivault_testkit::{Api, Server, backends, random_username};
use serde_json::Value;
use sqlx::Row;

const BIN: &str = env!("CARGO_BIN_EXE_phivault");

/// Resources as created: "Type/id" -> body.
type Bodies = HashMap<String, Value>;

/// Creates `n` patients with one observation each, in transaction Bundles of 100 patients.
async fn populate(api: &Api, n: usize) -> Bodies {
    let mut out = Bodies::new();
    let mut left = n;
    while left > 0 {
        let now = left.min(100);
        left -= now;
        let mut b = BundleBuilder::transaction();
        for _ in 0..now {
            let family = format!("Rot{}", &random_username()[2..10]);
            let urn = b.post(fixtures::patient(&family, "Kim"));
            b.post(fixtures::observation(
                &urn,
                fixtures::coding(Some("http://loinc.org"), "8867-4", "heart rate"),
                "2024-02-03T10:00:00Z",
            ));
        }
        let r = api.post_json("", &b.build()).await;
        r.assert_status(200);
        for e in r.json()["entry"].as_array().unwrap() {
            let body = e["resource"].clone();
            let key = format!(
                "{}/{}",
                body["resourceType"].as_str().unwrap(),
                body["id"].as_str().unwrap()
            );
            out.insert(key, body);
        }
    }
    out
}

/// Every resource reads back as created.
async fn assert_reads(api: &Api, bodies: &Bodies, what: &str) {
    for (path, body) in bodies {
        let r = api.get(path).await;
        assert_eq!(r.status, 200, "{what}: {path}: {r:?}");
        assert_eq!(&r.json(), body, "{what}: {path}");
    }
}

/// Data keys by KEK id, and the KEK ids.
async fn key_state(server: &Server) -> (BTreeMap<String, i64>, Vec<String>) {
    let db = server.db().await;
    let by_kek = sqlx::query("SELECT kek_id, COUNT(*) AS n FROM data_keys GROUP BY kek_id")
        .fetch_all(&db)
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get::<String, _>("kek_id"), r.get::<i64, _>("n")))
        .collect();
    let keks = sqlx::query("SELECT kek_id FROM key_encryption_keys ORDER BY created_at")
        .fetch_all(&db)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<String, _>("kek_id"))
        .collect();
    db.close().await;
    (by_kek, keks)
}

/// The outcomes of the audit entries with `action`, in order.
async fn cli_entries(server: &Server, action: &str) -> Vec<String> {
    let db = server.db().await;
    let rows = sqlx::query("SELECT body FROM audit_entries ORDER BY seq")
        .fetch_all(&db)
        .await
        .unwrap();
    db.close().await;
    rows.iter()
        .filter_map(|r| {
            let body: Vec<u8> = r.get("body");
            let v: Value = serde_json::from_slice(&body).unwrap();
            (v["action"] == action).then(|| v["outcome"].as_str().unwrap().to_owned())
        })
        .collect()
}

/// Reads existing resources and creates patients with observations until `stop`; panics on
/// any answer that is not a success. Returns what it created.
async fn load(api: Api, existing: Arc<Bodies>, stop: Arc<AtomicBool>, seed: usize) -> Bodies {
    let paths: Vec<&String> = existing.keys().collect();
    let mut created = Bodies::new();
    let mut i = seed;
    let mut rounds = 0;
    while !stop.load(Ordering::SeqCst) || rounds < 5 {
        rounds += 1;
        for _ in 0..3 {
            i = (i * 31 + 7) % paths.len();
            let path = paths[i];
            let r = api.get(path).await;
            assert_eq!(r.status, 200, "read {path} during the rotation: {r:?}");
            assert_eq!(&r.json(), &existing[path], "{path}");
        }
        let family = format!("Load{}", &random_username()[2..10]);
        let r = api
            .post_json("Patient", &fixtures::patient(&family, "Lu"))
            .await;
        assert_eq!(r.status, 201, "create during the rotation: {r:?}");
        let p = r.json();
        let pid = p["id"].as_str().unwrap().to_owned();
        created.insert(format!("Patient/{pid}"), p);
        let obs = fixtures::observation(
            &format!("Patient/{pid}"),
            fixtures::coding(Some("http://loinc.org"), "8310-5", "temperature"),
            "2024-02-04T10:00:00Z",
        );
        let r = api.post_json("Observation", &obs).await;
        assert_eq!(r.status, 201, "create during the rotation: {r:?}");
        let o = r.json();
        created.insert(format!("Observation/{}", o["id"].as_str().unwrap()), o);
    }
    created
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotation_under_load() {
    for backend in backends() {
        let label = backend.name();
        let mut server = Server::start(BIN, &backend, &[]).await;
        let api = server.api().clone();
        let existing = Arc::new(populate(&api, 200).await);
        let (before, keks_before) = key_state(&server).await;
        assert_eq!(keks_before.len(), 1, "{label}");
        let old = keks_before[0].clone();
        assert!(before[&old] >= 200, "{label}: {before:?}");

        let stop = Arc::new(AtomicBool::new(false));
        let tasks: Vec<_> = (0..4)
            .map(|n| {
                tokio::spawn(load(
                    api.clone(),
                    existing.clone(),
                    stop.clone(),
                    n * 17 + 1,
                ))
            })
            .collect();
        let out = server
            .cli(&["keys", "rotate", "--batch-size", "10"], None)
            .await;
        stop.store(true, Ordering::SeqCst);
        let mut all = (*existing).clone();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        out.assert_ok("keys rotate");
        let line = out.stdout.trim();
        assert!(
            line.starts_with("ok: ") && line.contains("data keys rewrapped under key-encryption"),
            "{label}: {line}"
        );
        assert!(!line.contains("resumed"), "{label}: {line}");

        // One KEK left, the new one, and every data key under it.
        let (after, keks) = key_state(&server).await;
        assert_eq!(keks.len(), 1, "{label}: {keks:?}");
        let new = &keks[0];
        assert_ne!(new, &old, "{label}");
        assert!(line.contains(new.as_str()), "{label}: {line}");
        assert_eq!(after.len(), 1, "{label}: {after:?}");
        assert!(after[new] > before[&old], "{label}: new patients have keys");

        // Everything reads back, from the running server and after a restart; the server
        // keeps creating under the new KEK.
        assert_reads(&api, &all, "running server after the rotation").await;
        let more = load(
            api.clone(),
            existing.clone(),
            Arc::new(AtomicBool::new(true)),
            3,
        )
        .await;
        all.extend(more);
        let (after, _) = key_state(&server).await;
        assert_eq!(after.keys().collect::<Vec<_>>(), vec![new], "{label}");
        server.restart().await;
        assert_reads(server.api(), &all, "after a restart").await;
        // The rotation is in the audit trail.
        let status = server.cli(&["keys", "status"], None).await;
        status.assert_ok("keys status");
        assert!(status.stdout.contains(new.as_str()), "{}", status.stdout);
        assert!(
            !status.stdout.contains("rotation pending"),
            "{}",
            status.stdout
        );
        assert_eq!(
            cli_entries(&server, "cli keys rotate").await,
            vec!["allowed".to_owned()],
            "{label}"
        );
        server.assert_no_panic();
    }
}

/// Runs `keys rotate --batch-size 1` next to `server` and kills it with SIGKILL once at least
/// 5 data keys are under a KEK other than `old` and some are still under `old`; returns how
/// many were moved when it was seen.
async fn kill_rotation_mid_way(server: &Server, old: &str) -> i64 {
    let label = server.backend().name();
    let backend = server.backend();
    let dir = server.data_dir().display().to_string();
    let url = server.database_url();
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(["keys", "rotate", "--batch-size", "1", "--data-dir", &dir]);
    if backend.is_postgres() {
        cmd.args(["--database-url", &url]);
    }
    for (var, _) in std::env::vars() {
        if var.starts_with("PHIVAULT_") {
            cmd.env_remove(var);
        }
    }
    let mut child = cmd
        .current_dir(server.data_dir())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let partial = loop {
        let (by_kek, _) = key_state(server).await;
        let moved: i64 = by_kek
            .iter()
            .filter(|(k, _)| **k != old)
            .map(|(_, n)| n)
            .sum();
        if moved >= 5 && by_kek.get(old).copied().unwrap_or(0) > 0 {
            break moved;
        }
        assert!(
            Instant::now() < deadline,
            "{label}: never saw a partial rotation"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "{label}: the rotation ended before it could be killed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    child.kill().await.unwrap();
    partial
}

#[tokio::test(flavor = "multi_thread")]
async fn rotation_killed_mid_way_is_resumed() {
    for backend in backends() {
        let label = backend.name();
        let mut server = Server::start(BIN, &backend, &[]).await;
        let api = server.api().clone();
        let bodies = populate(&api, 400).await;
        let (_, keks) = key_state(&server).await;
        let old = keks[0].clone();

        let partial = kill_rotation_mid_way(&server, &old).await;

        // Partial state: two KEKs, data keys under both.
        let (by_kek, keks) = key_state(&server).await;
        assert_eq!(keks.len(), 2, "{label}: {keks:?}");
        let new = keks.iter().find(|k| **k != old).unwrap().clone();
        assert!(by_kek[&new] >= partial, "{label}: {by_kek:?}");
        assert!(by_kek[&old] > 0, "{label}: {by_kek:?}");
        let status = server.cli(&["keys", "status"], None).await;
        status.assert_ok("keys status mid-rotation");
        assert!(
            status
                .stdout
                .contains(&format!("rotation pending: {} data keys", by_kek[&old])),
            "{label}: {}",
            status.stdout
        );
        // The running server reads everything meanwhile.
        assert_reads(&api, &bodies, "mid-rotation").await;

        // The rerun resumes under the same KEK; no third one.
        let out = server.cli(&["keys", "rotate"], None).await;
        out.assert_ok("keys rotate (resume)");
        assert!(out.stdout.contains("resumed"), "{label}: {}", out.stdout);
        assert!(out.stdout.contains(new.as_str()), "{label}: {}", out.stdout);
        let (by_kek, keks) = key_state(&server).await;
        assert_eq!(keks, vec![new.clone()], "{label}");
        assert_eq!(by_kek.keys().collect::<Vec<_>>(), vec![&new], "{label}");
        assert_reads(&api, &bodies, "after resuming").await;
        server.restart().await;
        assert_reads(server.api(), &bodies, "after resuming and a restart").await;

        // Killed again; this time a server start finishes the rotation in the background.
        let partial = kill_rotation_mid_way(&server, &new).await;
        assert!(partial >= 5, "{label}");
        let (_, keks) = key_state(&server).await;
        assert_eq!(keks.len(), 2, "{label}: {keks:?}");
        let newest = keks.iter().find(|k| **k != new).unwrap().clone();
        server.restart().await;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (by_kek, keks) = key_state(&server).await;
            if keks == vec![newest.clone()] {
                assert_eq!(by_kek.keys().collect::<Vec<_>>(), vec![&newest], "{label}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{label}: the server did not finish the rotation: {by_kek:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_reads(
            server.api(),
            &bodies,
            "after the server finished the rotation",
        )
        .await;
        server.assert_no_panic();
    }
}

async fn open_with(server: &Server, key_hex: &str) -> Result<Store, phivault_store::StoreError> {
    let mut opts = StoreOptions::new(server.database_url());
    opts.max_connections = 1;
    Store::open(&opts, &StaticKeyProvider::from_hex(key_hex.trim())).await
}

#[tokio::test(flavor = "multi_thread")]
async fn master_key_rotation() {
    for backend in backends() {
        let label = backend.name();
        let mut server = Server::start(BIN, &backend, &[]).await;
        let api = server.api().clone();
        let mut bodies = populate(&api, 20).await;
        let key_file = server.data_dir().join("master.key");
        let old_key = std::fs::read_to_string(&key_file).unwrap();

        let out = server.cli(&["keys", "rotate-master"], None).await;
        out.assert_ok("keys rotate-master");
        assert!(
            out.stdout.starts_with("ok: 1 key-encryption keys"),
            "{}",
            out.stdout
        );
        let new_key = std::fs::read_to_string(&key_file).unwrap();
        assert_ne!(new_key, old_key, "{label}");
        assert!(!server.data_dir().join("master.key.new").exists());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{label}");
        }
        // No key material on the CLI's output.
        for k in [&old_key, &new_key] {
            assert!(!out.stdout.contains(k.trim()) && !out.stderr.contains(k.trim()));
        }

        // The old key no longer opens the database; the new one does.
        let err = open_with(&server, &old_key).await.unwrap_err();
        assert!(
            err.to_string()
                .contains("does not open with this master key"),
            "{label}: {err}"
        );
        open_with(&server, &new_key).await.unwrap().close().await;

        // The running server (old master key in memory) serves on; after a KEK rotation it
        // meets a KEK wrapped under the new master key, reads the key file again and creates.
        assert_reads(&api, &bodies, "running server after rotate-master").await;
        server
            .cli(&["keys", "rotate"], None)
            .await
            .assert_ok("keys rotate");
        let id = api.create(&fixtures::patient("AfterMaster", "Jo")).await;
        bodies.insert(
            format!("Patient/{id}"),
            api.get(&format!("Patient/{id}")).await.json(),
        );
        assert_reads(&api, &bodies, "running server after both rotations").await;
        server.restart().await;
        assert_reads(server.api(), &bodies, "restarted with the new key").await;

        // A crash after the rewrap, before the rename: the configured key no longer opens,
        // and every command says how to finish.
        let rotated_key = std::fs::read_to_string(&key_file).unwrap();
        server.kill();
        let out = server.cli(&["keys", "rotate-master"], None).await;
        out.assert_ok("keys rotate-master (second)");
        let newest = std::fs::read_to_string(&key_file).unwrap();
        std::fs::rename(&key_file, server.data_dir().join("master.key.new")).unwrap();
        std::fs::write(&key_file, &rotated_key).unwrap();
        // Owner-only, as phivault requires of a key file.
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let line = server.cli(&["keys", "status"], None).await.assert_error(
            "keys status with the old key",
            "interrupted `keys rotate-master`",
        );
        assert!(line.contains("master.key.new"), "{label}: {line}");
        let out = server.cli(&["keys", "rotate-master"], None).await;
        out.assert_ok("keys rotate-master (finish)");
        assert!(out.stdout.contains("finished"), "{label}: {}", out.stdout);
        assert_eq!(std::fs::read_to_string(&key_file).unwrap(), newest);
        assert!(open_with(&server, &rotated_key).await.is_err(), "{label}");
        server.restart().await;
        assert_reads(server.api(), &bodies, "after finishing").await;
        assert_eq!(
            cli_entries(&server, "cli keys rotate-master").await,
            vec!["allowed".to_owned(); 3],
            "{label}"
        );
        server.assert_no_panic();
    }
}
