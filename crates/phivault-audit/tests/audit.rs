//! The audit trail's suite, run on SQLite always and on PostgreSQL when
//! `PHIVAULT_TEST_DATABASE_URL` is set (each test in its own schema). Tampering is done
//! directly in SQL, as an attacker with database access would.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use phivault_audit::{
    ActorKind, AuditEntry, AuditError, AuditLog, Checkpoint, GENESIS_HASH, InclusionBundle,
    Outcome, entry_hash,
};
use phivault_crypto::StaticKeyProvider;
use phivault_store::{Store, StoreOptions};
use sqlx::Row;

fn random_hex() -> String {
    let mut b = [0u8; 32];
    phivault_crypto::random_bytes(&mut b).unwrap();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A fresh, empty store on each backend under test.
struct Fixture {
    store: Store,
    url: String,
    key: String,
    _dir: tempfile::TempDir,
    label: &'static str,
}

impl Fixture {
    async fn reopen(&self) -> Store {
        Store::open(
            &StoreOptions::new(self.url.clone()),
            &StaticKeyProvider::from_hex(self.key.clone()),
        )
        .await
        .unwrap()
    }
}

async fn fixtures() -> Vec<Fixture> {
    let mut out = Vec::new();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/phivault.db", dir.path().display());
    let key = random_hex();
    let store = Store::open(
        &StoreOptions::new(url.clone()),
        &StaticKeyProvider::from_hex(key.clone()),
    )
    .await
    .unwrap();
    out.push(Fixture {
        store,
        url,
        key,
        _dir: dir,
        label: "sqlite",
    });
    if let Ok(base) = std::env::var("PHIVAULT_TEST_DATABASE_URL") {
        let schema = format!("pv_audit_{}", &random_hex()[..12]);
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&base)
            .await
            .expect("PHIVAULT_TEST_DATABASE_URL must point at a running PostgreSQL");
        sqlx::query(&format!("CREATE SCHEMA {schema}"))
            .execute(&mut conn)
            .await
            .unwrap();
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
        let key = random_hex();
        let store = Store::open(
            &StoreOptions::new(url.clone()),
            &StaticKeyProvider::from_hex(key.clone()),
        )
        .await
        .unwrap();
        out.push(Fixture {
            store,
            url,
            key,
            _dir: tempfile::tempdir().unwrap(),
            label: "postgres",
        });
    }
    out
}

fn entry(i: u64) -> AuditEntry {
    AuditEntry {
        seq: 0,
        time: 1_700_000_000_000 + i as i64,
        actor_id: format!("user-{}", i % 3),
        actor_kind: if i.is_multiple_of(5) {
            ActorKind::Client
        } else {
            ActorKind::User
        },
        role: Some("clinician".to_owned()),
        purpose: Some("TREAT".to_owned()),
        break_glass: i.is_multiple_of(7),
        action: "read".to_owned(),
        resource_type: Some("Observation".to_owned()),
        resource_id: Some(format!("obs-{i}")),
        patient_id: Some(format!("pat-{}", i % 4)),
        outcome: if i.is_multiple_of(9) {
            Outcome::Denied
        } else {
            Outcome::Allowed
        },
        source_address: Some("127.0.0.1".to_owned()),
        request_id: format!("req-{i:04}"),
    }
}

/// 50 entries, a checkpoint after every 10.
async fn populated(store: &Store) -> AuditLog {
    let log = AuditLog::open(store.clone()).await.unwrap();
    for i in 1..=50u64 {
        let seq = log.append(&entry(i)).await.unwrap();
        assert_eq!(seq, i);
        if i.is_multiple_of(10) {
            let cp = log.checkpoint().await.unwrap();
            assert_eq!(cp.size, i);
        }
    }
    log
}

async fn body(store: &Store, seq: i64) -> Vec<u8> {
    sqlx::query("SELECT body FROM audit_entries WHERE seq = $1")
        .bind(seq)
        .fetch_one(store.pool())
        .await
        .unwrap()
        .try_get("body")
        .unwrap()
}

async fn set_body(store: &Store, seq: i64, body: Vec<u8>) {
    sqlx::query("UPDATE audit_entries SET body = $1 WHERE seq = $2")
        .bind(body)
        .bind(seq)
        .execute(store.pool())
        .await
        .unwrap();
}

async fn verify_err(log: &AuditLog) -> AuditError {
    let err = log.verify(|_| {}).await.unwrap_err();
    assert!(err.is_tamper(), "{err}");
    err
}

#[tokio::test]
async fn fifty_entries_verify_and_survive_reopen() {
    for f in fixtures().await {
        let log = populated(&f.store).await;
        let mut seen = Vec::new();
        let report = log.verify(|n| seen.push(n)).await.unwrap();
        assert_eq!(report.entries, 50, "{}", f.label);
        assert_eq!(report.checkpoints, 5);
        assert_eq!(report.unsealed, 0);
        assert_eq!(seen.last(), Some(&50));
        // Stored bytes are canonical entries with assigned seqs; the index columns match.
        let row = f.store.audit_entry(7).await.unwrap().unwrap();
        let mut expect = entry(7);
        expect.seq = 7;
        assert_eq!(row.body, expect.canonical_bytes().unwrap());
        assert_eq!(row.actor, "user-1");
        assert_eq!(row.patient.as_deref(), Some("pat-3"));
        assert_eq!(row.tenant, "default");
        // The signing key is persisted (sealed) and reopens with the same public key.
        let again = AuditLog::open(f.reopen().await).await.unwrap();
        assert_eq!(again.public_key(), log.public_key());
        assert_eq!(again.verify(|_| {}).await.unwrap().entries, 50);
        // The private key is not stored in the clear.
        let sealed: Vec<u8> = sqlx::query("SELECT sealed_private FROM audit_keys")
            .fetch_one(f.store.pool())
            .await
            .unwrap()
            .try_get("sealed_private")
            .unwrap();
        assert!(!sealed.windows(16).any(|w| log.public_key().starts_with(w)));
        // A second checkpoint of the same size returns the stored one.
        let cp = log.checkpoint().await.unwrap();
        assert_eq!(cp, log.checkpoints().await.unwrap()[4]);
    }
}

#[tokio::test]
async fn changed_byte_is_named() {
    for f in fixtures().await {
        let log = populated(&f.store).await;
        let mut b = body(&f.store, 23).await;
        let at = b.len() - 3; // inside the request id: still valid JSON
        b[at] ^= 1;
        set_body(&f.store, 23, b).await;
        let err = verify_err(&log).await;
        assert!(
            matches!(err, AuditError::HashMismatch { seq: 23 }),
            "{}: {err}",
            f.label
        );
        assert_eq!(err.first_bad_seq(), Some(23));
        // A checkpoint is refused over a tampered trail.
        assert!(log.checkpoint().await.is_err());
    }
}

#[tokio::test]
async fn rewritten_chain_is_caught_by_the_checkpoint() {
    for f in fixtures().await {
        let log = populated(&f.store).await;
        // Change entry 23 and recompute every hash after it, as a careful attacker would.
        let mut prev: [u8; 32] = f
            .store
            .audit_entry(22)
            .await
            .unwrap()
            .unwrap()
            .entry_hash
            .try_into()
            .unwrap();
        for seq in 23..=50u64 {
            let mut e = AuditEntry::from_canonical(&body(&f.store, seq as i64).await).unwrap();
            if seq == 23 {
                e.outcome = Outcome::Allowed;
                e.actor_id = "someone-else".to_owned();
            }
            let b = e.canonical_bytes().unwrap();
            let h = entry_hash(&prev, &b);
            sqlx::query(
                "UPDATE audit_entries SET body = $1, entry_hash = $2, prev_hash = $3 WHERE seq = $4",
            )
            .bind(b)
            .bind(h.to_vec())
            .bind(prev.to_vec())
            .bind(seq as i64)
            .execute(f.store.pool())
            .await
            .unwrap();
            prev = h;
        }
        let err = verify_err(&log).await;
        assert!(
            matches!(
                err,
                AuditError::CheckpointMismatch {
                    size: 30,
                    since: 20
                }
            ),
            "{}: {err}",
            f.label
        );
        assert_eq!(err.first_bad_seq(), Some(21));
    }
}

#[tokio::test]
async fn deleted_entry_is_named() {
    for f in fixtures().await {
        let log = populated(&f.store).await;
        sqlx::query("DELETE FROM audit_entries WHERE seq = 17")
            .execute(f.store.pool())
            .await
            .unwrap();
        let err = verify_err(&log).await;
        assert!(
            matches!(err, AuditError::Missing { seq: 17, next: 18 }),
            "{}: {err}",
            f.label
        );
        // Renumbering the rest to close the gap breaks the chain at the same place.
        sqlx::query("UPDATE audit_entries SET seq = seq - 1 WHERE seq > 17")
            .execute(f.store.pool())
            .await
            .ok();
        let err = verify_err(&log).await;
        assert_eq!(err.first_bad_seq(), Some(17), "{}: {err}", f.label);
    }
}

#[tokio::test]
async fn swapped_entries_are_named() {
    for f in fixtures().await {
        let log = populated(&f.store).await;
        let (a, b) = (body(&f.store, 31).await, body(&f.store, 32).await);
        set_body(&f.store, 31, b).await;
        set_body(&f.store, 32, a).await;
        let err = verify_err(&log).await;
        assert!(
            matches!(
                err,
                AuditError::Misplaced {
                    seq: 31,
                    claimed: 32
                }
            ),
            "{}: {err}",
            f.label
        );
        // Swapping whole rows (bodies and hashes, renumbered) breaks the chain at 31 too.
        let f2 = fixtures()
            .await
            .into_iter()
            .find(|x| x.label == f.label)
            .unwrap();
        let log2 = populated(&f2.store).await;
        for (from, to) in [(31, -1), (32, 31), (-1, 32)] {
            sqlx::query("UPDATE audit_entries SET seq = $1 WHERE seq = $2")
                .bind(to as i64)
                .bind(from as i64)
                .execute(f2.store.pool())
                .await
                .unwrap();
        }
        let err = verify_err(&log2).await;
        assert_eq!(err.first_bad_seq(), Some(31), "{}: {err}", f.label);
    }
}

#[tokio::test]
async fn truncated_tail_is_detected() {
    for f in fixtures().await {
        let log = populated(&f.store).await;
        sqlx::query("DELETE FROM audit_entries WHERE seq > 44")
            .execute(f.store.pool())
            .await
            .unwrap();
        let err = verify_err(&log).await;
        assert!(
            matches!(
                err,
                AuditError::Truncated {
                    size: 50,
                    present: 44
                }
            ),
            "{}: {err}",
            f.label
        );
        assert_eq!(err.first_bad_seq(), Some(45));
    }
}

#[tokio::test]
async fn flipped_checkpoint_signature_is_detected() {
    for f in fixtures().await {
        let log = populated(&f.store).await;
        let sig: Vec<u8> = sqlx::query("SELECT signature FROM audit_checkpoints WHERE size = 30")
            .fetch_one(f.store.pool())
            .await
            .unwrap()
            .try_get("signature")
            .unwrap();
        let mut sig = sig;
        sig[10] ^= 0x80;
        sqlx::query("UPDATE audit_checkpoints SET signature = $1 WHERE size = 30")
            .bind(sig)
            .execute(f.store.pool())
            .await
            .unwrap();
        let err = verify_err(&log).await;
        assert!(
            matches!(err, AuditError::CheckpointSignature { size: 30 }),
            "{}: {err}",
            f.label
        );
    }
}

#[tokio::test]
async fn inclusion_proofs_for_every_entry() {
    for f in fixtures().await {
        let log = populated(&f.store).await;
        let pk = log.public_key().to_vec();
        for seq in 1..=50u64 {
            let bundle = log.prove(seq).await.unwrap();
            assert_eq!(bundle.tree_size, seq.div_ceil(10) * 10, "{}", f.label);
            bundle.check(&bundle.checkpoint, &pk).unwrap();
            // JSON round trip, as `audit prove` / `audit check-proof` use it.
            let text = serde_json::to_string(&bundle).unwrap();
            let back: InclusionBundle = serde_json::from_str(&text).unwrap();
            back.check(&back.checkpoint, &pk).unwrap();
            // A wrong leaf fails.
            let mut wrong = bundle.clone();
            wrong.entry_hash[0] ^= 1;
            assert!(wrong.check(&wrong.checkpoint, &pk).is_err());
            assert!(!phivault_audit::verify_inclusion(
                &wrong.entry_hash,
                wrong.leaf_index,
                wrong.tree_size,
                &wrong.path,
                &wrong.checkpoint.root
            ));
            // Another entry's body with this proof fails.
            let mut other = bundle.clone();
            other.body = log.prove(seq % 50 + 1).await.unwrap().body;
            assert!(other.check(&other.checkpoint, &pk).is_err());
        }
        // Another key's checkpoint does not verify.
        let bundle = log.prove(5).await.unwrap();
        assert!(bundle.check(&bundle.checkpoint, &[7u8; 32]).is_err());
        // Entries past the last checkpoint are not covered yet.
        log.append(&entry(51)).await.unwrap();
        assert!(matches!(
            log.prove(51).await,
            Err(AuditError::NotCovered { seq: 51 })
        ));
        assert!(matches!(
            log.prove(99).await,
            Err(AuditError::NotCovered { .. } | AuditError::NoSuchEntry { .. })
        ));
    }
}

#[tokio::test]
async fn append_in_commits_or_rolls_back_with_the_caller() {
    for f in fixtures().await {
        let log = AuditLog::open(f.store.clone()).await.unwrap();
        log.append(&entry(1)).await.unwrap();
        {
            let _lock = f.store.write_lock().await;
            let mut tx = f.store.pool().begin().await.unwrap();
            assert_eq!(log.append_in(&mut tx, &entry(2)).await.unwrap(), 2);
            tx.rollback().await.unwrap();
        }
        assert_eq!(f.store.audit_tail().await.unwrap().seq, 2, "{}", f.label);
        {
            let _lock = f.store.write_lock().await;
            let mut tx = f.store.pool().begin().await.unwrap();
            assert_eq!(log.append_in(&mut tx, &entry(3)).await.unwrap(), 2);
            assert_eq!(log.append_in(&mut tx, &entry(4)).await.unwrap(), 3);
            tx.commit().await.unwrap();
        }
        let report = log.verify(|_| {}).await.unwrap();
        assert_eq!(report.entries, 3);
        assert_eq!(report.unsealed, 3);
    }
}

#[tokio::test]
async fn concurrent_appends_stay_one_chain() {
    for f in fixtures().await {
        let log = std::sync::Arc::new(AuditLog::open(f.store.clone()).await.unwrap());
        let mut tasks = Vec::new();
        for t in 0..6u64 {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..10u64 {
                    log.append(&entry(t * 100 + i)).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let cp = log.checkpoint().await.unwrap();
        assert_eq!(cp.size, 60, "{}", f.label);
        assert_eq!(log.verify(|_| {}).await.unwrap().entries, 60);
    }
}

#[tokio::test]
async fn empty_trail_verifies() {
    for f in fixtures().await {
        let log = AuditLog::open(f.store.clone()).await.unwrap();
        let report = log.verify(|_| {}).await.unwrap();
        assert_eq!(report.entries, 0);
        assert_eq!(report.last_entry_hash, GENESIS_HASH);
        let cp: Checkpoint = log.checkpoint().await.unwrap();
        assert_eq!(cp.size, 0);
        assert_eq!(
            log.verify(|_| {}).await.unwrap().checkpoints,
            1,
            "{}",
            f.label
        );
    }
}
