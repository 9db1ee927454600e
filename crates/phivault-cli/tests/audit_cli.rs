//! `phivault audit verify|prove|check-proof` against a temporary store, on SQLite and, when
//! `PHIVAULT_TEST_DATABASE_URL` is set, PostgreSQL: output is a contract (`ok: ...`, `FAILED:
//! first bad entry N: ...`, exit status 1 on failure). Tampering is done directly in SQL, as an
//! attacker with database access would.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output};

use phivault_audit::{ActorKind, AuditEntry, AuditLog, Outcome};
use phivault_crypto::FileKeyProvider;
use phivault_store::{Store, StoreOptions};
use phivault_testkit::{Backend, PgSchema, backends};
use sqlx::Row;

const BIN: &str = env!("CARGO_BIN_EXE_phivault");

/// A trail in a temporary data directory (master key there) on one backend.
struct Trail {
    dir: tempfile::TempDir,
    url: String,
    store: Store,
    log: AuditLog,
    label: &'static str,
    _schema: Option<PgSchema>,
}

impl Trail {
    /// `entries` entries, a checkpoint after every `every`.
    async fn new(backend: &Backend, entries: u64, every: u64) -> Trail {
        let dir = tempfile::tempdir().unwrap();
        let keys = FileKeyProvider::new(dir.path().join("master.key"));
        keys.create_if_missing().unwrap();
        let schema = match backend {
            Backend::Sqlite => None,
            Backend::Postgres { url } => Some(PgSchema::create(url).await),
        };
        let url = match &schema {
            Some(s) => s.url(),
            None => format!("sqlite://{}", dir.path().join("phivault.db").display()),
        };
        let store = Store::open(&StoreOptions::new(url.clone()), &keys)
            .await
            .unwrap();
        let log = AuditLog::open(store.clone()).await.unwrap();
        for i in 1..=entries {
            log.append(&entry(i)).await.unwrap();
            if i.is_multiple_of(every) {
                log.checkpoint().await.unwrap();
            }
        }
        Trail {
            dir,
            url,
            store,
            log,
            label: backend.name(),
            _schema: schema,
        }
    }

    fn phivault(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(BIN);
        cmd.args(args);
        if args.get(1) != Some(&"check-proof") {
            cmd.arg("--data-dir")
                .arg(self.dir.path())
                .arg("--database-url")
                .arg(&self.url);
        }
        cmd.current_dir(self.dir.path())
            .env_remove("PHIVAULT_DATABASE_URL")
            .env_remove("PHIVAULT_DATA_DIR")
            .env_remove("PHIVAULT_MASTER_KEY_FILE")
            .env_remove("PHIVAULT_CONFIG")
            .output()
            .unwrap()
    }

    async fn sql(&self, sql: &str) {
        sqlx::query(sql).execute(self.store.pool()).await.unwrap();
    }

    async fn body(&self, seq: i64) -> Vec<u8> {
        sqlx::query("SELECT body FROM audit_entries WHERE seq = $1")
            .bind(seq)
            .fetch_one(self.store.pool())
            .await
            .unwrap()
            .try_get("body")
            .unwrap()
    }

    async fn set_body(&self, seq: i64, body: Vec<u8>) {
        sqlx::query("UPDATE audit_entries SET body = $1 WHERE seq = $2")
            .bind(body)
            .bind(seq)
            .execute(self.store.pool())
            .await
            .unwrap();
    }

    /// `audit verify` fails naming entry `seq`.
    fn assert_verify_names(&self, seq: u64, what: &str) {
        let o = self.phivault(&["audit", "verify"]);
        assert_eq!(o.status.code(), Some(1), "{} {what}: {o:?}", self.label);
        let out = stdout(&o);
        assert!(
            out.starts_with(&format!("FAILED: first bad entry {seq}: ")),
            "{} {what}: {out}",
            self.label
        );
    }
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
        actor_ref: None,
        patients: Vec::new(),
        refusals: None,
        configuration: None,
        labels: Vec::new(),
        alert: None,
        via_client: None,
    }
}

#[tokio::test]
async fn verify_prove_and_check_proof() {
    for backend in backends() {
        let t = Trail::new(&backend, 12, 5).await;
        let label = t.label;
        let o = t.phivault(&["audit", "verify"]);
        assert!(o.status.success(), "{label}: {o:?}");
        assert_eq!(stdout(&o), "ok: 12 entries, 2 checkpoints\n");
        // The time taken and the rate, on stderr.
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("phivault: verified 12 entries in "), "{err}");
        assert!(err.contains(" entries/s)"), "{err}");
        let pinned = hex::encode(t.log.public_key());
        let o = t.phivault(&["audit", "verify", "--public-key", &pinned]);
        assert!(o.status.success(), "{label}: {o:?}");
        let o = t.phivault(&["audit", "verify", "--public-key", &"ab".repeat(32)]);
        assert_eq!(o.status.code(), Some(1));

        let o = t.phivault(&["audit", "prove", "7"]);
        assert!(o.status.success(), "{label}: {o:?}");
        let proof = t.dir.path().join("proof.json");
        std::fs::write(&proof, &o.stdout).unwrap();
        let p = proof.to_str().unwrap();
        let o = t.phivault(&["audit", "check-proof", p, "--public-key", &pinned]);
        assert!(o.status.success(), "{label}: {o:?}");
        assert!(stdout(&o).starts_with("ok: entry 7 is in the audit trail of 10 entries"));
        // A proof edited to claim another entry fails.
        let text = std::fs::read_to_string(&proof).unwrap();
        let edited = t.dir.path().join("edited.json");
        std::fs::write(&edited, text.replace("\\\"p7\\\"", "\\\"p8\\\"")).unwrap();
        let o = t.phivault(&["audit", "check-proof", edited.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(1), "{label}: {o:?}");
        assert!(stdout(&o).starts_with("FAILED:"));
        let o = t.phivault(&["audit", "prove", "12"]);
        assert_eq!(o.status.code(), Some(1));

        t.sql("DELETE FROM audit_entries WHERE seq = 4").await;
        t.store.close().await;
        t.assert_verify_names(4, "deleted entry");
    }
}

/// A checkpoint published outside the database catches a trail truncated below it (with the
/// later checkpoints removed, so the database alone is consistent); a key pinned in the
/// configuration refuses a database whose key differs.
#[tokio::test]
async fn verify_against_a_published_checkpoint_and_a_pinned_key() {
    for backend in backends() {
        let t = Trail::new(&backend, 12, 5).await;
        let label = t.label;
        let published = t.dir.path().join("published.json");
        let cp = t.log.last_checkpoint().await.unwrap().unwrap();
        assert_eq!(cp.size, 10);
        std::fs::write(&published, serde_json::to_string(&cp).unwrap()).unwrap();
        let p = published.to_str().unwrap();
        let o = t.phivault(&["audit", "verify", "--checkpoint", p]);
        assert!(o.status.success(), "{label}: {o:?}");
        assert_eq!(stdout(&o), "ok: 12 entries, 3 checkpoints\n");

        t.sql("DELETE FROM audit_entries WHERE seq > 7").await;
        t.sql("DELETE FROM audit_checkpoints WHERE size > 7").await;
        let o = t.phivault(&["audit", "verify"]);
        assert!(o.status.success(), "{label}: {o:?}");
        assert_eq!(stdout(&o), "ok: 7 entries, 1 checkpoints\n");
        let o = t.phivault(&["audit", "verify", "--checkpoint", p]);
        assert_eq!(o.status.code(), Some(1), "{label}: {o:?}");
        assert!(
            stdout(&o).starts_with("FAILED: first bad entry 8: "),
            "{label}: {}",
            stdout(&o)
        );

        // The key pinned in the configuration file: the database's key passes, another fails.
        let config = t.dir.path().join("phivault.toml");
        let pinned = hex::encode(t.log.public_key());
        std::fs::write(&config, format!("audit_public_key = \"{pinned}\"\n")).unwrap();
        let o = t.phivault(&["audit", "verify"]);
        assert!(o.status.success(), "{label}: {o:?}");
        std::fs::write(
            &config,
            format!("audit_public_key = \"{}\"\n", "ab".repeat(32)),
        )
        .unwrap();
        let o = t.phivault(&["audit", "verify"]);
        assert_eq!(o.status.code(), Some(1), "{label}: {o:?}");
        assert!(
            stdout(&o).starts_with("FAILED: the database's audit key "),
            "{label}: {}",
            stdout(&o)
        );
        t.store.close().await;
    }
}

/// 23 entries, checkpoints at 5, 10, 15 and 20; each kind of tampering on a fresh trail.
#[tokio::test]
async fn verify_names_the_first_tampered_entry() {
    for backend in backends() {
        // One changed byte (inside the request id: still valid JSON).
        let t = Trail::new(&backend, 23, 5).await;
        let mut b = t.body(7).await;
        let at = b.len() - 3;
        b[at] ^= 1;
        t.set_body(7, b).await;
        t.assert_verify_names(7, "changed byte");

        // A changed byte after the last checkpoint (covered by the chain only).
        let t = Trail::new(&backend, 23, 5).await;
        let mut b = t.body(22).await;
        let at = b.len() - 3;
        b[at] ^= 1;
        t.set_body(22, b).await;
        t.assert_verify_names(22, "changed byte after the last checkpoint");

        // A deleted entry.
        let t = Trail::new(&backend, 23, 5).await;
        t.sql("DELETE FROM audit_entries WHERE seq = 9").await;
        t.assert_verify_names(9, "deleted entry");

        // Two entries reordered: bodies swapped.
        let t = Trail::new(&backend, 23, 5).await;
        let (a, b) = (t.body(11).await, t.body(12).await);
        t.set_body(11, b).await;
        t.set_body(12, a).await;
        t.assert_verify_names(11, "swapped bodies");

        // Two entries reordered: whole rows swapped (their seqs exchanged).
        let t = Trail::new(&backend, 23, 5).await;
        t.sql("UPDATE audit_entries SET seq = -1 WHERE seq = 11")
            .await;
        t.sql("UPDATE audit_entries SET seq = 11 WHERE seq = 12")
            .await;
        t.sql("UPDATE audit_entries SET seq = 12 WHERE seq = -1")
            .await;
        t.assert_verify_names(11, "swapped rows");

        // The tail truncated after a checkpoint: entries 14.. removed, the checkpoints of 15
        // and 20 remain.
        let t = Trail::new(&backend, 23, 5).await;
        t.sql("DELETE FROM audit_entries WHERE seq > 13").await;
        t.assert_verify_names(14, "truncated tail");
        let o = t.phivault(&["audit", "verify"]);
        assert!(stdout(&o).contains("truncated"), "{}", stdout(&o));
    }
}
