//! The audit trail's suite, run on SQLite always and on PostgreSQL when
//! `PHIVAULT_TEST_DATABASE_URL` is set (each test in its own schema). Tampering is done
//! directly in SQL, as an attacker with database access would.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use phivault_audit::{
    ActorKind, AuditEntry, AuditError, AuditLog, Checkpoint, Frontier, GENESIS_HASH,
    InclusionBundle, Outcome, TailStart, entry_hash,
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
        actor_ref: None,
        patients: Vec::new(),
        refusals: None,
        configuration: None,
        labels: Vec::new(),
        alert: None,
        via_client: None,
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

/// Flips a bit inside the request id of entry `seq`'s body (still valid JSON).
async fn flip_byte(store: &Store, seq: i64) {
    let mut b = body(store, seq).await;
    let at = b.len() - 3;
    b[at] ^= 1;
    set_body(store, seq, b).await;
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
        // Checkpoints are incremental: entry 23 is under the checkpoint of size 50 and is not
        // read again, so with nothing new the stored checkpoint comes back (finding this
        // change is the full verification's job, above).
        assert_eq!(log.checkpoint().await.unwrap().size, 50);
        // A checkpoint over new entries refuses a changed one among them, and blesses none.
        for i in 51..=55 {
            log.append(&entry(i)).await.unwrap();
        }
        flip_byte(&f.store, 53).await;
        let err = log.checkpoint().await.unwrap_err();
        assert!(
            matches!(err, AuditError::HashMismatch { seq: 53 }),
            "{}: {err}",
            f.label
        );
        assert!(log.checkpoint().await.is_err());
        assert_eq!(log.last_checkpoint().await.unwrap().unwrap().size, 50);
    }
}

#[tokio::test]
async fn rewritten_chain_is_caught_by_the_checkpoint() {
    for f in fixtures().await {
        let log = populated(&f.store).await;
        // Change entry 23 and recompute every hash after it, as a careful attacker without
        // the master key would: the unkeyed formula, tags cleared (they cannot be recomputed).
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
            // The copied-out actor and outcome columns too, or verification names the entry by
            // them.
            sqlx::query(
                "UPDATE audit_entries SET body = $1, entry_hash = $2, prev_hash = $3, \
                 chain_mac = NULL, actor = $4, outcome = $5 WHERE seq = $6",
            )
            .bind(b)
            .bind(h.to_vec())
            .bind(prev.to_vec())
            .bind(e.actor_id.clone())
            .bind(e.outcome.as_str().to_owned())
            .bind(seq as i64)
            .execute(f.store.pool())
            .await
            .unwrap();
            prev = h;
        }
        // The chain key names the first rewritten entry, before any checkpoint is reached.
        let err = verify_err(&log).await;
        assert!(
            matches!(err, AuditError::Unauthenticated { seq: 23 }),
            "{}: {err}",
            f.label
        );
        assert_eq!(err.first_bad_seq(), Some(23));
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
async fn append_all_in_chains_many_entries_in_one_go() {
    for f in fixtures().await {
        let log = AuditLog::open(f.store.clone()).await.unwrap();
        log.append(&entry(1)).await.unwrap();
        let many: Vec<AuditEntry> = (0..250).map(entry).collect();
        {
            let _lock = f.store.write_lock().await;
            let mut tx = f.store.pool().begin().await.unwrap();
            assert_eq!(log.append_all_in(&mut tx, &many).await.unwrap(), 2);
            tx.rollback().await.unwrap();
        }
        assert_eq!(f.store.audit_tail().await.unwrap().seq, 2, "{}", f.label);
        {
            let _lock = f.store.write_lock().await;
            let mut tx = f.store.pool().begin().await.unwrap();
            assert_eq!(log.append_all_in(&mut tx, &many).await.unwrap(), 2);
            assert_eq!(log.append_in(&mut tx, &entry(9)).await.unwrap(), 252);
            tx.commit().await.unwrap();
        }
        log.append(&entry(10)).await.unwrap();
        let report = log.verify(|_| {}).await.unwrap();
        assert_eq!(report.entries, 253, "{}", f.label);
        let cp = log.checkpoint().await.unwrap();
        assert_eq!(cp.size, 253);
        // Each row is the entry it was given, at its place.
        let row = f.store.audit_entry(101).await.unwrap().unwrap();
        let body = AuditEntry::from_canonical(&row.body).unwrap();
        assert_eq!(body.seq, 101);
        assert_eq!(body.resource_id, entry(99).resource_id);
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

// ---- Incremental verification: `verify_tail` and checkpoints that go on from it. ----

/// 50 entries with a checkpoint after every 10, then 7 more (51..=57) not yet covered; the
/// log returned is a fresh one (another process: no verified state in memory).
async fn with_tail(f: &Fixture) -> AuditLog {
    let log = populated(&f.store).await;
    for i in 51..=57u64 {
        log.append(&entry(i)).await.unwrap();
    }
    AuditLog::open(f.reopen().await).await.unwrap()
}

async fn tail_err(log: &AuditLog) -> AuditError {
    let err = log.verify_tail(|_| {}).await.unwrap_err();
    assert!(err.is_tamper(), "{err}");
    err
}

async fn frontier_of(store: &Store, size: i64) -> Option<Vec<u8>> {
    sqlx::query("SELECT frontier FROM audit_checkpoints WHERE size = $1")
        .bind(size)
        .fetch_one(store.pool())
        .await
        .unwrap()
        .try_get("frontier")
        .unwrap()
}

async fn set_frontier(store: &Store, size: i64, frontier: Option<Vec<u8>>) {
    sqlx::query("UPDATE audit_checkpoints SET frontier = $1 WHERE size = $2")
        .bind(frontier)
        .bind(size)
        .execute(store.pool())
        .await
        .unwrap();
}

#[tokio::test]
async fn clean_tail_verifies_only_the_new_entries() {
    for f in fixtures().await {
        let log = with_tail(&f).await;
        let mut seen = Vec::new();
        let report = log.verify_tail(|n| seen.push(n)).await.unwrap();
        assert_eq!(
            report.start,
            TailStart::Checkpoint { size: 50 },
            "{}",
            f.label
        );
        assert_eq!(report.from_seq, 51);
        assert_eq!(report.checked, 7);
        assert_eq!(report.entries, 57);
        assert_eq!(report.checkpoints, 1);
        assert_eq!(seen, vec![7]);
        let full = log.verify(|_| {}).await.unwrap();
        assert_eq!(report.root, full.root);
        assert_eq!(report.last_entry_hash, full.last_entry_hash);
        // Every checkpoint stores its frontier: popcount(size) hashes, reproducing its root.
        for size in [10u64, 50] {
            let bytes = frontier_of(&f.store, size as i64).await.unwrap();
            assert_eq!(bytes.len(), size.count_ones() as usize * 32);
            let cp = log
                .checkpoints()
                .await
                .unwrap()
                .into_iter()
                .find(|c| c.size == size)
                .unwrap();
            assert_eq!(Frontier::from_bytes(size, &bytes).unwrap().root(), cp.root);
        }
        // It reads nothing before the checkpoint: an entry changed there is for the full
        // verification to find (documented).
        flip_byte(&f.store, 23).await;
        assert!(log.verify_tail(|_| {}).await.is_ok());
        assert_eq!(verify_err(&log).await.first_bad_seq(), Some(23));
    }
}

#[tokio::test]
async fn tail_verification_from_nothing_and_from_the_empty_checkpoint() {
    for f in fixtures().await {
        let log = AuditLog::open(f.store.clone()).await.unwrap();
        let report = log.verify_tail(|_| {}).await.unwrap();
        assert_eq!(report.start, TailStart::NoCheckpoint, "{}", f.label);
        assert_eq!((report.from_seq, report.checked, report.entries), (1, 0, 0));
        assert_eq!(report.last_entry_hash, GENESIS_HASH);
        log.checkpoint().await.unwrap();
        let report = log.verify_tail(|_| {}).await.unwrap();
        assert_eq!(report.start, TailStart::Checkpoint { size: 0 });
        for i in 1..=3 {
            log.append(&entry(i)).await.unwrap();
        }
        // No checkpoint yet but entries: all of them, from the first.
        let report = log.verify_tail(|_| {}).await.unwrap();
        assert_eq!((report.from_seq, report.checked), (1, 3));
        assert_eq!(report.root, log.verify(|_| {}).await.unwrap().root);
    }
}

#[tokio::test]
async fn tail_changed_byte_is_named() {
    for f in fixtures().await {
        let log = with_tail(&f).await;
        flip_byte(&f.store, 54).await;
        let err = tail_err(&log).await;
        assert!(
            matches!(err, AuditError::HashMismatch { seq: 54 }),
            "{}: {err}",
            f.label
        );
        assert_eq!(err.first_bad_seq(), Some(54));
        // The same as the full verification says.
        assert_eq!(verify_err(&log).await.first_bad_seq(), Some(54));
        // And no checkpoint is made over it (the failed check left no verified state).
        assert!(log.checkpoint().await.is_err());
        assert_eq!(log.last_checkpoint().await.unwrap().unwrap().size, 50);
    }
}

#[tokio::test]
async fn tail_deleted_entry_is_named() {
    for f in fixtures().await {
        let log = with_tail(&f).await;
        sqlx::query("DELETE FROM audit_entries WHERE seq = 53")
            .execute(f.store.pool())
            .await
            .unwrap();
        let err = tail_err(&log).await;
        assert!(
            matches!(err, AuditError::Missing { seq: 53, next: 54 }),
            "{}: {err}",
            f.label
        );
    }
}

#[tokio::test]
async fn tail_swapped_entries_are_named() {
    for f in fixtures().await {
        let log = with_tail(&f).await;
        let (a, b) = (body(&f.store, 55).await, body(&f.store, 56).await);
        set_body(&f.store, 55, b).await;
        set_body(&f.store, 56, a).await;
        let err = tail_err(&log).await;
        assert!(
            matches!(
                err,
                AuditError::Misplaced {
                    seq: 55,
                    claimed: 56
                }
            ),
            "{}: {err}",
            f.label
        );
    }
}

#[tokio::test]
async fn tail_truncated_below_the_checkpoint_is_detected() {
    for f in fixtures().await {
        let log = with_tail(&f).await;
        // The entry at seq = size removed, later ones kept: named.
        sqlx::query("DELETE FROM audit_entries WHERE seq = 50")
            .execute(f.store.pool())
            .await
            .unwrap();
        let err = tail_err(&log).await;
        assert!(
            matches!(err, AuditError::Missing { seq: 50, next: 51 }),
            "{}: {err}",
            f.label
        );
        // Everything from 45 on removed: the trail no longer reaches the checkpoint.
        sqlx::query("DELETE FROM audit_entries WHERE seq > 44")
            .execute(f.store.pool())
            .await
            .unwrap();
        let err = tail_err(&log).await;
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
        assert!(log.checkpoint().await.is_err());
    }
}

#[tokio::test]
async fn tail_entry_at_the_checkpoint_altered_is_named() {
    for f in fixtures().await {
        let log = with_tail(&f).await;
        // Its body changed, hashes kept.
        let original = body(&f.store, 50).await;
        flip_byte(&f.store, 50).await;
        let err = tail_err(&log).await;
        assert!(
            matches!(err, AuditError::HashMismatch { seq: 50 }),
            "{}: {err}",
            f.label
        );
        // Its body and its stored hash rewritten to agree (and the next entry chained to it):
        // it is not the entry the checkpoint signed.
        let mut e = AuditEntry::from_canonical(&original).unwrap();
        e.outcome = Outcome::Allowed;
        e.actor_id = "someone-else".to_owned();
        let row = f.store.audit_entry(50).await.unwrap().unwrap();
        let prev: [u8; 32] = row.prev_hash.try_into().unwrap();
        let b = e.canonical_bytes().unwrap();
        let h = entry_hash(&prev, &b);
        sqlx::query("UPDATE audit_entries SET body = $1, entry_hash = $2 WHERE seq = 50")
            .bind(b)
            .bind(h.to_vec())
            .execute(f.store.pool())
            .await
            .unwrap();
        sqlx::query("UPDATE audit_entries SET prev_hash = $1 WHERE seq = 51")
            .bind(h.to_vec())
            .execute(f.store.pool())
            .await
            .unwrap();
        let err = tail_err(&log).await;
        assert!(
            matches!(err, AuditError::HashMismatch { seq: 50 }),
            "{}: {err}",
            f.label
        );
        // A body that is not an entry: malformed.
        set_body(&f.store, 50, b"{}".to_vec()).await;
        let err = tail_err(&log).await;
        assert!(
            matches!(err, AuditError::Malformed { seq: 50 }),
            "{}: {err}",
            f.label
        );
    }
}

#[tokio::test]
async fn tail_refuses_a_bad_signature_on_the_last_checkpoint() {
    for f in fixtures().await {
        let log = with_tail(&f).await;
        let sig: Vec<u8> = sqlx::query("SELECT signature FROM audit_checkpoints WHERE size = 50")
            .fetch_one(f.store.pool())
            .await
            .unwrap()
            .try_get("signature")
            .unwrap();
        let mut sig = sig;
        sig[3] ^= 1;
        sqlx::query("UPDATE audit_checkpoints SET signature = $1 WHERE size = 50")
            .bind(sig)
            .execute(f.store.pool())
            .await
            .unwrap();
        let err = tail_err(&log).await;
        assert!(
            matches!(err, AuditError::CheckpointSignature { size: 50 }),
            "{}: {err}",
            f.label
        );
        assert_eq!(err.first_bad_seq(), None);
    }
}

#[tokio::test]
async fn tampered_frontier_is_refused_and_the_whole_trail_verified() {
    for f in fixtures().await {
        let log = with_tail(&f).await;
        let good = frontier_of(&f.store, 50).await.unwrap();
        // A flipped byte, a wrong length, a frontier of another checkpoint: each refused
        // (never trusted), and the verification runs from the first entry instead.
        let mut flipped = good.clone();
        flipped[5] ^= 1;
        let other = frontier_of(&f.store, 40).await.unwrap();
        for bad in [flipped, good[..32].to_vec(), other] {
            set_frontier(&f.store, 50, Some(bad)).await;
            let report = log.verify_tail(|_| {}).await.unwrap();
            assert_eq!(
                report.start,
                TailStart::FrontierRefused { size: 50 },
                "{}",
                f.label
            );
            assert_eq!(
                (report.from_seq, report.checked, report.entries),
                (1, 57, 57)
            );
            assert_eq!(report.checkpoints, 5);
        }
        // Since it verifies from the first entry, a change before the checkpoint is found.
        flip_byte(&f.store, 12).await;
        let err = tail_err(&log).await;
        assert!(
            matches!(err, AuditError::HashMismatch { seq: 12 }),
            "{}: {err}",
            f.label
        );
    }
}

#[tokio::test]
async fn checkpoint_without_a_frontier_falls_back_then_the_next_one_has_one() {
    for f in fixtures().await {
        let log = with_tail(&f).await;
        // As a checkpoint made before schema v4.
        set_frontier(&f.store, 50, None).await;
        let report = log.verify_tail(|_| {}).await.unwrap();
        assert_eq!(
            report.start,
            TailStart::NoFrontier { size: 50 },
            "{}",
            f.label
        );
        assert_eq!((report.from_seq, report.checked), (1, 57));
        // The next checkpoint stores one, and the next check resumes from it.
        let cp = log.checkpoint().await.unwrap();
        assert_eq!(cp.size, 57);
        assert!(frontier_of(&f.store, 57).await.is_some());
        log.append(&entry(58)).await.unwrap();
        let again = AuditLog::open(f.reopen().await).await.unwrap();
        let report = again.verify_tail(|_| {}).await.unwrap();
        assert_eq!(report.start, TailStart::Checkpoint { size: 57 });
        assert_eq!((report.from_seq, report.checked), (58, 1));
    }
}

#[tokio::test]
async fn incremental_checkpoints_agree_with_full_verification() {
    for f in fixtures().await {
        let log = with_tail(&f).await;
        // Cold: the first checkpoint loads its state by verifying the tail.
        let cp = log.checkpoint().await.unwrap();
        assert_eq!(cp.size, 57, "{}", f.label);
        assert_eq!(cp.root, log.verify(|_| {}).await.unwrap().root);
        // Warm: N more appends each time, for several N.
        let mut next = 58u64;
        for n in [1u64, 2, 9, 16, 33] {
            for _ in 0..n {
                log.append(&entry(next)).await.unwrap();
                next += 1;
            }
            let cp = log.checkpoint().await.unwrap();
            let full = log.verify(|_| {}).await.unwrap();
            assert_eq!(cp.size, full.entries);
            assert_eq!(cp.root, full.root, "{} after {n} more", f.label);
            assert_eq!(cp.last_entry_hash, full.last_entry_hash);
            assert!(cp.verify_signature(log.public_key()));
            // Its stored frontier reproduces its root.
            let bytes = frontier_of(&f.store, cp.size as i64).await.unwrap();
            assert_eq!(
                Frontier::from_bytes(cp.size, &bytes).unwrap().root(),
                cp.root
            );
        }
        // Another process's checkpoint meanwhile is checked, then gone on from.
        let other = AuditLog::open(f.reopen().await).await.unwrap();
        log.append(&entry(next)).await.unwrap();
        let theirs = other.checkpoint().await.unwrap();
        let ours = log.checkpoint().await.unwrap();
        assert_eq!(ours, theirs);
        // A new entry that does not chain to the verified state is refused.
        log.append(&entry(next + 1)).await.unwrap();
        sqlx::query("UPDATE audit_entries SET prev_hash = $1 WHERE seq = $2")
            .bind(vec![7u8; 32])
            .bind((next + 1) as i64)
            .execute(f.store.pool())
            .await
            .unwrap();
        let err = log.checkpoint().await.unwrap_err();
        assert_eq!(err.first_bad_seq(), Some(next + 1), "{}: {err}", f.label);
    }
}

#[tokio::test]
async fn checkpoints_while_appending_cover_what_they_verified() {
    for f in fixtures().await {
        let log = std::sync::Arc::new(AuditLog::open(f.store.clone()).await.unwrap());
        let mut tasks = Vec::new();
        for t in 0..3u64 {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..20u64 {
                    log.append(&entry(t * 100 + i)).await.unwrap();
                }
            }));
        }
        let checkpointer = {
            let log = log.clone();
            tokio::spawn(async move {
                let mut sizes = Vec::new();
                for _ in 0..8 {
                    sizes.push(log.checkpoint().await.unwrap().size);
                    tokio::task::yield_now().await;
                }
                sizes
            })
        };
        for t in tasks {
            t.await.unwrap();
        }
        let sizes = checkpointer.await.unwrap();
        assert!(sizes.windows(2).all(|w| w[0] <= w[1]), "{sizes:?}");
        let last = log.checkpoint().await.unwrap();
        assert_eq!(last.size, 60, "{}", f.label);
        // The full verification checks every checkpoint's root against the entries.
        let report = log.verify(|_| {}).await.unwrap();
        assert_eq!(report.entries, 60);
        assert_eq!(report.unsealed, 0);
    }
}

#[tokio::test]
async fn open_fills_action_and_outcome_of_old_rows() {
    for f in fixtures().await {
        let log = populated(&f.store).await;
        drop(log);
        // As rows written before schema v4; one with a body that is not an entry.
        sqlx::query("UPDATE audit_entries SET action = NULL, outcome = NULL WHERE seq <= 20")
            .execute(f.store.pool())
            .await
            .unwrap();
        set_body(&f.store, 5, b"not an entry".to_vec()).await;
        let _log = AuditLog::open(f.reopen().await).await.unwrap();
        let rows = f.store.audit_entries(0, 100).await.unwrap();
        assert_eq!(rows.len(), 50, "{}", f.label);
        for row in &rows {
            if row.seq == 5 {
                assert_eq!(row.action, None);
                assert_eq!(row.outcome, None);
                continue;
            }
            let expect = if row.seq.is_multiple_of(9) {
                "denied"
            } else {
                "allowed"
            };
            assert_eq!(row.action.as_deref(), Some("R"), "seq {}", row.seq);
            assert_eq!(row.outcome.as_deref(), Some(expect), "seq {}", row.seq);
        }
        // Searchable again.
        let q = phivault_store::audit::AuditQuery {
            outcome: Some("denied".to_owned()),
            ..Default::default()
        };
        assert_eq!(f.store.audit_count(&q).await.unwrap(), 5);
    }
}

/// Two stores over one SQLite file stand for two processes (a server and `phivault import`):
/// their appends interleave without a stale-snapshot failure or a duplicate seq, because
/// write transactions take SQLite's write lock when they begin.
#[tokio::test]
async fn two_processes_append_to_one_sqlite_trail() {
    let f = fixtures().await.into_iter().next().unwrap();
    assert_eq!(f.label, "sqlite");
    let other = f.reopen().await;
    let a = std::sync::Arc::new(AuditLog::open(f.store.clone()).await.unwrap());
    let b = std::sync::Arc::new(AuditLog::open(other).await.unwrap());
    let mut tasks = Vec::new();
    for (t, log) in [a.clone(), b.clone(), a.clone(), b.clone()]
        .into_iter()
        .enumerate()
    {
        tasks.push(tokio::spawn(async move {
            for i in 0..25u64 {
                log.append(&entry(t as u64 * 100 + i)).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let report = a.verify(|_| {}).await.unwrap();
    assert_eq!(report.entries, 100);
}

/// Appenders arriving together are committed in groups: each gets its own seq, every seq is
/// taken once, and the trail is one chain; when the group cannot be written, each appender
/// of it gets the error.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn group_commit_gives_each_appender_its_own_committed_seq() {
    for f in fixtures().await {
        let log = std::sync::Arc::new(AuditLog::open(f.store.clone()).await.unwrap());
        let mut tasks = Vec::new();
        for i in 0..64u64 {
            let log = log.clone();
            tasks.push(tokio::spawn(
                async move { log.append(&entry(i)).await.unwrap() },
            ));
        }
        let mut seqs = Vec::new();
        for t in tasks {
            seqs.push(t.await.unwrap());
        }
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=64).collect::<Vec<_>>(), "{}", f.label);
        // Each appender's seq holds its own entry.
        let report = log.verify(|_| {}).await.unwrap();
        assert_eq!(report.entries, 64);

        // The table refuses inserts (a SQLite trigger): every appender of the group fails,
        // nothing is written.
        if f.label == "sqlite" {
            sqlx::query(
                "CREATE TRIGGER refuse BEFORE INSERT ON audit_entries \
                 BEGIN SELECT RAISE(ABORT, 'refused'); END",
            )
            .execute(f.store.pool())
            .await
            .unwrap();
            let mut tasks = Vec::new();
            for i in 0..8u64 {
                let log = log.clone();
                tasks.push(tokio::spawn(
                    async move { log.append(&entry(100 + i)).await },
                ));
            }
            for t in tasks {
                assert!(t.await.unwrap().is_err());
            }
            assert_eq!(f.store.audit_tail().await.unwrap().seq, 65);
        }
    }
}

/// Entries that concern several patients, and the columns copied out of entries.
#[path = "audit/attribution.rs"]
mod attribution;

/// The group-commit writer of standalone appends.
#[path = "audit/writer.rs"]
mod writer;

/// Verification across its pages and parallel runs.
#[path = "audit/pages.rs"]
mod pages;
