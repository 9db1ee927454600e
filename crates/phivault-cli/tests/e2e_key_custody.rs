//! Custody of the master key and of the files at rest: every file the server makes is
//! owner-only, the process cannot dump core, a master key file other users may read is
//! refused, a key beside the database is warned about, and the key can come from an inherited
//! file descriptor (as secrets managers hand it over) instead of a file.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use phivault_testkit::{Server, backends, fixtures};

const BIN: &str = env!("CARGO_BIN_EXE_phivault");

/// `phivault <args>` with no ambient settings, `stdin` fed to its standard input.
fn run(dir: &Path, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .current_dir(dir)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for var in [
        "PHIVAULT_DATABASE_URL",
        "PHIVAULT_DATA_DIR",
        "PHIVAULT_MASTER_KEY_FILE",
        "PHIVAULT_CONFIG",
    ] {
        cmd.env_remove(var);
    }
    let mut child = cmd.spawn().unwrap();
    if let Some(bytes) = stdin {
        child.stdin.take().unwrap().write_all(bytes).unwrap();
    }
    child.wait_with_output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Every file and directory under `dir` whose mode lets group or others in.
fn exposed(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            out.push(format!("{} {mode:04o}", path.display()));
        }
        if meta.is_dir() {
            out.extend(exposed(&path));
        }
    }
    out
}

#[tokio::test]
async fn the_server_makes_only_owner_only_files_and_cannot_dump_core() {
    for backend in backends() {
        let s = Server::start(BIN, &backend, &[]).await;
        let l = backend.name();
        // Some writes, so the database, its WAL and shm exist (SQLite).
        let p = s.create(&fixtures::patient("Mode", "Mia")).await;
        s.create(&fixtures::observation(
            &format!("Patient/{p}"),
            fixtures::coding(Some(fixtures::LOINC), "8867-4", "Heart rate"),
            "2024-01-02T03:04:05Z",
        ))
        .await;
        let names: Vec<String> = std::fs::read_dir(s.data_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        if !backend.is_postgres() {
            for f in [
                "phivault.db",
                "phivault.db-wal",
                "phivault.db-shm",
                "master.key",
            ] {
                assert!(names.iter().any(|n| n == f), "{l}: {f} in {names:?}");
            }
        }
        assert!(names.iter().any(|n| n == "tls"), "{l}: {names:?}");
        let exposed = exposed(s.data_dir());
        assert!(exposed.is_empty(), "{l}: readable by others: {exposed:?}");

        let pid = s.pid().unwrap();
        let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
        let core = limits
            .lines()
            .find(|l| l.starts_with("Max core file size"))
            .unwrap();
        let fields: Vec<&str> = core.split_whitespace().collect();
        assert_eq!(&fields[4..6], &["0", "0"], "{l}: {core}");

        // The default key location is inside the data directory: said loudly.
        let err = s.stderr_text();
        assert!(
            err.contains("phivault: warning: the master key")
                && err.contains("is inside the data directory"),
            "{l}: {err}"
        );
        s.assert_no_panic();
    }
}

#[test]
fn a_master_key_file_others_may_read_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_arg = data.to_str().unwrap();
    let out = run(dir.path(), &["init", "--data-dir", data_arg], None);
    assert!(out.status.success(), "{}", stderr(&out));
    let key = data.join("master.key");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = run(dir.path(), &["init", "--data-dir", data_arg], None);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("mode 0644") && err.contains("chmod 600"),
        "{err}"
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = run(dir.path(), &["init", "--data-dir", data_arg], None);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn the_master_key_can_come_from_an_inherited_descriptor() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_arg = data.to_str().unwrap();
    let keys = dir.path().join("keys");
    std::fs::create_dir(&keys).unwrap();
    let key_file = keys.join("master.key");
    let key_arg = key_file.to_str().unwrap();
    let out = run(
        dir.path(),
        &["init", "--data-dir", data_arg, "--master-key-file", key_arg],
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    // Kept apart from the data: no warning.
    assert!(
        !stderr(&out).contains("is inside the data directory"),
        "{}",
        stderr(&out)
    );
    let hex = std::fs::read(&key_file).unwrap();

    // The same key handed over on a descriptor (here standard input, /dev/fd/0).
    let out = run(
        dir.path(),
        &[
            "init",
            "--data-dir",
            data_arg,
            "--master-key-file",
            "/dev/fd/0",
        ],
        Some(&hex),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("is inside the data directory"));

    // Another key on the descriptor does not open the database: the descriptor was used.
    let other = b"00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n";
    let out = run(
        dir.path(),
        &[
            "init",
            "--data-dir",
            data_arg,
            "--master-key-file",
            "/dev/fd/0",
        ],
        Some(other),
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("does not open with this master key"),
        "{}",
        stderr(&out)
    );
}

/// Every file of `dir` (recursively) that contains `needle`.
fn files_holding(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_holding(&path, needle));
        } else if std::fs::read(&path)
            .unwrap()
            .windows(needle.len())
            .any(|w| w == needle)
        {
            out.push(path.display().to_string());
        }
    }
    out
}

/// SQLite: when `$erase` has answered its certificate, the erased wrapped key is in no file
/// of the data directory (database, WAL, shm). (PostgreSQL's pages are checked by the store
/// suite, through `pageinspect`.)
#[tokio::test]
async fn an_erased_key_is_on_no_file_when_the_certificate_is_answered() {
    use sqlx::Row;
    for backend in backends() {
        if backend.is_postgres() {
            continue;
        }
        let s = Server::start(BIN, &backend, &[]).await;
        let p = s.create(&fixtures::patient("Gone", "Gil")).await;
        let db = s.db().await;
        let key_id: String =
            sqlx::query("SELECT key_id FROM current_resources WHERE rtype = 'Patient' AND id = $1")
                .bind(&p)
                .fetch_one(&db)
                .await
                .unwrap()
                .get("key_id");
        let wrapped: Vec<u8> = sqlx::query("SELECT wrapped FROM data_keys WHERE key_id = $1")
            .bind(&key_id)
            .fetch_one(&db)
            .await
            .unwrap()
            .get("wrapped");
        db.close().await;
        assert!(
            !files_holding(s.data_dir(), &wrapped).is_empty(),
            "the key is on disk before"
        );
        let username = phivault_testkit::random_username();
        let password = s.create_user(&username, "admin").await;
        let account = s.sign_in(&username, "admin", &password, false).await;
        let admin = s.api_as(&account.token);
        let r = admin
            .post_json(&format!("Patient/{p}/$erase"), &serde_json::json!({}))
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        let left = files_holding(s.data_dir(), &wrapped);
        assert!(left.is_empty(), "erased key bytes still in {left:?}");
        s.assert_no_panic();
    }
}
