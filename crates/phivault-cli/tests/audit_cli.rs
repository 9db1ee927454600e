//! `phivault audit verify|prove|check-proof` against a temporary SQLite store: output is a
//! contract (`ok: ...`, `FAILED: first bad entry N: ...`, exit status 1 on failure).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};

use phivault_audit::{ActorKind, AuditEntry, AuditLog, Outcome};
use phivault_crypto::FileKeyProvider;
use phivault_store::{Store, StoreOptions};

const BIN: &str = env!("CARGO_BIN_EXE_phivault");

fn phivault(dir: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    if args.get(1) != Some(&"check-proof") {
        cmd.arg("--data-dir").arg(dir);
    }
    cmd.current_dir(dir)
        .env_remove("PHIVAULT_DATABASE_URL")
        .env_remove("PHIVAULT_DATA_DIR")
        .env_remove("PHIVAULT_MASTER_KEY_FILE")
        .env_remove("PHIVAULT_CONFIG")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn entry(i: u64) -> AuditEntry {
    AuditEntry {
        seq: 0,
        time: 1_700_000_000_000 + i as i64,
        actor_id: "u1".to_owned(),
        actor_kind: ActorKind::User,
        role: Some("clinician".to_owned()),
        purpose: Some("TREAT".to_owned()),
        break_glass: false,
        action: "read".to_owned(),
        resource_type: Some("Patient".to_owned()),
        resource_id: Some(format!("p{i}")),
        patient_id: Some(format!("p{i}")),
        outcome: Outcome::Allowed,
        source_address: None,
        request_id: format!("r{i}"),
    }
}

#[tokio::test]
async fn verify_prove_and_check_proof() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let keys = FileKeyProvider::new(dir.join("master.key"));
    keys.create_if_missing().unwrap();
    let url = format!("sqlite://{}", dir.join("phivault.db").display());
    let store = Store::open(&StoreOptions::new(url), &keys).await.unwrap();
    let log = AuditLog::open(store.clone()).await.unwrap();
    for i in 1..=12 {
        log.append(&entry(i)).await.unwrap();
        if i.is_multiple_of(5) {
            log.checkpoint().await.unwrap();
        }
    }

    let o = phivault(dir, &["audit", "verify"]);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(stdout(&o), "ok: 12 entries, 2 checkpoints\n");
    let pinned = hex::encode(log.public_key());
    let o = phivault(dir, &["audit", "verify", "--public-key", &pinned]);
    assert!(o.status.success(), "{o:?}");
    let o = phivault(dir, &["audit", "verify", "--public-key", &"ab".repeat(32)]);
    assert_eq!(o.status.code(), Some(1));

    let o = phivault(dir, &["audit", "prove", "7"]);
    assert!(o.status.success(), "{o:?}");
    let proof = dir.join("proof.json");
    std::fs::write(&proof, &o.stdout).unwrap();
    let p = proof.to_str().unwrap();
    let o = phivault(dir, &["audit", "check-proof", p, "--public-key", &pinned]);
    assert!(o.status.success(), "{o:?}");
    assert!(stdout(&o).starts_with("ok: entry 7 is in the audit trail of 10 entries"));
    // A proof edited to claim another entry fails.
    let text = std::fs::read_to_string(&proof).unwrap();
    let edited = dir.join("edited.json");
    std::fs::write(&edited, text.replace("\\\"p7\\\"", "\\\"p8\\\"")).unwrap();
    let o = phivault(dir, &["audit", "check-proof", edited.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert!(stdout(&o).starts_with("FAILED:"));
    let o = phivault(dir, &["audit", "prove", "12"]);
    assert_eq!(o.status.code(), Some(1));

    sqlx::query("DELETE FROM audit_entries WHERE seq = 4")
        .execute(store.pool())
        .await
        .unwrap();
    store.close().await;
    let o = phivault(dir, &["audit", "verify"]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert!(
        stdout(&o).starts_with("FAILED: first bad entry 4: "),
        "{}",
        stdout(&o)
    );
}
