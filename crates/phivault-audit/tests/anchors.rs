//! What holds against someone with the database but without the master key: the keyed chain,
//! the signing key that is never replaced while the trail has entries, the record of where the
//! keyed chain starts, and checkpoints published outside the database. Run on SQLite always
//! and on PostgreSQL when `PHIVAULT_TEST_DATABASE_URL` is set (each test in its own schema).
//! Tampering is done directly in SQL, recomputing every hash that can be recomputed without
//! the master key.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use phivault_audit::{
    ActorKind, AuditEntry, AuditError, AuditLog, Checkpoint, InclusionBundle, Outcome, entry_hash,
};
use phivault_crypto::StaticKeyProvider;
use phivault_store::{Store, StoreOptions};
use sqlx::Row;

fn random_hex() -> String {
    let mut b = [0u8; 32];
    phivault_crypto::random_bytes(&mut b).unwrap();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

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
    let dir = tempfile::tempdir().unwrap();
    let mut urls = vec![(
        format!("sqlite://{}/phivault.db", dir.path().display()),
        "sqlite",
    )];
    if let Ok(base) = std::env::var("PHIVAULT_TEST_DATABASE_URL") {
        let schema = format!("pv_anchor_{}", &random_hex()[..12]);
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&base)
            .await
            .expect("PHIVAULT_TEST_DATABASE_URL must point at a running PostgreSQL");
        sqlx::query(&format!("CREATE SCHEMA {schema}"))
            .execute(&mut conn)
            .await
            .unwrap();
        let sep = if base.contains('?') { '&' } else { '?' };
        urls.push((
            format!("{base}{sep}options=-c%20search_path%3D{schema}"),
            "postgres",
        ));
    }
    let mut out = Vec::new();
    let mut dir = Some(dir);
    for (url, label) in urls {
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
            _dir: dir.take().unwrap_or_else(|| tempfile::tempdir().unwrap()),
            label,
        });
    }
    out
}

fn entry(i: u64) -> AuditEntry {
    AuditEntry {
        seq: 0,
        time: 1_700_000_000_000 + i as i64,
        actor_id: format!("user-{}", i % 3),
        actor_kind: ActorKind::User,
        role: Some("clinician".to_owned()),
        purpose: Some("TREAT".to_owned()),
        break_glass: false,
        action: "read".to_owned(),
        resource_type: Some("Observation".to_owned()),
        resource_id: Some(format!("obs-{i}")),
        patient_id: Some(format!("pat-{}", i % 4)),
        outcome: Outcome::Denied,
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

/// `n` entries, a checkpoint after every 10.
async fn populated(store: &Store, n: u64) -> AuditLog {
    let log = AuditLog::open(store.clone()).await.unwrap();
    for i in 1..=n {
        log.append(&entry(i)).await.unwrap();
        if i.is_multiple_of(10) {
            log.checkpoint().await.unwrap();
        }
    }
    log
}

async fn sql(store: &Store, text: &str) {
    sqlx::query(text).execute(store.pool()).await.unwrap();
}

/// Edits entry `from` (its actor) and rewrites the chain from there to the end as an attacker
/// without the master key can: the unkeyed formula, tags cleared.
async fn rewrite_unkeyed(store: &Store, from: u64) {
    let last = store.audit_tail().await.unwrap().seq - 1;
    let mut prev: [u8; 32] = store
        .audit_entry(from - 1)
        .await
        .unwrap()
        .map(|r| r.entry_hash.try_into().unwrap())
        .unwrap_or([0u8; 32]);
    for seq in from..=last {
        let row = store.audit_entry(seq).await.unwrap().unwrap();
        let mut e = AuditEntry::from_canonical(&row.body).unwrap();
        if seq == from {
            e.actor_id = "someone-else".to_owned();
            e.outcome = Outcome::Allowed;
        }
        let b = e.canonical_bytes().unwrap();
        let h = entry_hash(&prev, &b);
        // The copied-out columns too, as a careful attacker would (else they name the entry).
        sqlx::query(
            "UPDATE audit_entries SET body = $1, entry_hash = $2, prev_hash = $3, \
             chain_mac = NULL, actor = $4, outcome = $5 WHERE seq = $6",
        )
        .bind(b)
        .bind(h.to_vec())
        .bind(prev.to_vec())
        .bind(e.actor_id)
        .bind(e.outcome.as_str().to_owned())
        .bind(seq as i64)
        .execute(store.pool())
        .await
        .unwrap();
        prev = h;
    }
}

#[tokio::test]
async fn an_edited_entry_with_the_unkeyed_chain_recomputed_is_detected() {
    for f in fixtures().await {
        let log = populated(&f.store, 25).await;
        log.verify(|_| {}).await.unwrap();
        // The attacker removes every checkpoint (they would not match) and rewrites the chain
        // from entry 7 on: every hash and link is consistent again.
        sql(&f.store, "DELETE FROM audit_checkpoints").await;
        rewrite_unkeyed(&f.store, 7).await;
        let err = log.verify(|_| {}).await.unwrap_err();
        assert!(
            matches!(err, AuditError::Unauthenticated { seq: 7 }),
            "{}: {err}",
            f.label
        );
        assert!(err.is_tamper());
        assert_eq!(err.first_bad_seq(), Some(7));
        // The start-up check (from the first entry: no checkpoint is left) finds it too, in a
        // new process.
        let again = AuditLog::open(f.reopen().await).await.unwrap();
        let err = again.verify_tail(|_| {}).await.unwrap_err();
        assert!(
            matches!(err, AuditError::Unauthenticated { seq: 7 }),
            "{}: {err}",
            f.label
        );

        // Keeping the stored tags and recomputing the keyed hashes over them fails as well:
        // the tag of entry 7 does not fit its new body.
        let g = fixtures()
            .await
            .into_iter()
            .find(|g| g.label == f.label)
            .unwrap();
        let log = populated(&g.store, 12).await;
        sql(&g.store, "DELETE FROM audit_checkpoints").await;
        let row = g.store.audit_entry(7).await.unwrap().unwrap();
        let mut e = AuditEntry::from_canonical(&row.body).unwrap();
        e.actor_id = "someone-else".to_owned();
        let b = e.canonical_bytes().unwrap();
        let prev: [u8; 32] = row.prev_hash.clone().try_into().unwrap();
        let tag: [u8; 32] = row.chain_mac.clone().unwrap().try_into().unwrap();
        let h = phivault_audit::keyed_entry_hash(&prev, &tag, &b);
        // The copied-out actor column too, or verification names the entry by it.
        sqlx::query(
            "UPDATE audit_entries SET body = $1, entry_hash = $2, actor = $3 WHERE seq = 7",
        )
        .bind(b)
        .bind(h.to_vec())
        .bind(e.actor_id.clone())
        .execute(g.store.pool())
        .await
        .unwrap();
        // (Entries after 7 would need their links recomputed too; 8's tag covers 7's old
        // hash, so the first failure is already at 7.)
        let err = log.verify(|_| {}).await.unwrap_err();
        assert!(
            matches!(err, AuditError::Unauthenticated { seq: 7 }),
            "{}: {err}",
            g.label
        );
    }
}

#[tokio::test]
async fn the_record_of_the_keyed_chain_cannot_be_deleted_or_moved() {
    for f in fixtures().await {
        let log = populated(&f.store, 5).await;
        let recorded = f.store.audit_keyed_from().await.unwrap().unwrap();
        assert_eq!(
            recorded.seq, 1,
            "{}: a new trail is keyed from its start",
            f.label
        );
        drop(log);
        // Deleted: the last entry is keyed, so the record cannot be made again.
        sql(&f.store, "DELETE FROM audit_chain").await;
        let err = AuditLog::open(f.reopen().await).await.unwrap_err();
        assert!(
            matches!(err, AuditError::KeyedFrom(_)),
            "{}: {err}",
            f.label
        );
        // Moved (to make entries 1..5 pass as the unkeyed chain): its tag no longer fits.
        sqlx::query(
            "INSERT INTO audit_chain (tenant, keyed_from, tag, created_at) VALUES ($1, 6, $2, 0)",
        )
        .bind(f.store.tenant())
        .bind(recorded.tag.clone())
        .execute(f.store.pool())
        .await
        .unwrap();
        let err = AuditLog::open(f.reopen().await).await.unwrap_err();
        assert!(
            matches!(err, AuditError::KeyedFrom(_)),
            "{}: {err}",
            f.label
        );
        // Put back, all is well.
        sqlx::query("UPDATE audit_chain SET keyed_from = 1")
            .execute(f.store.pool())
            .await
            .unwrap();
        let log = AuditLog::open(f.reopen().await).await.unwrap();
        assert_eq!(log.verify(|_| {}).await.unwrap().entries, 5);
    }
}

#[tokio::test]
async fn an_unkeyed_trail_of_an_older_version_still_verifies_and_is_keyed_from_then_on() {
    for f in fixtures().await {
        // An older version's trail: 8 unkeyed entries, a checkpoint at 5, no record.
        let log = populated(&f.store, 8).await;
        log.checkpoint().await.unwrap();
        drop(log);
        sql(&f.store, "DELETE FROM audit_checkpoints").await;
        sql(&f.store, "DELETE FROM audit_chain").await;
        rewrite_unkeyed(&f.store, 1).await;
        // Opened by this version: keyed from entry 9 on, the 8 before verify unkeyed.
        let log = AuditLog::open(f.reopen().await).await.unwrap();
        assert_eq!(
            f.store.audit_keyed_from().await.unwrap().unwrap().seq,
            9,
            "{}",
            f.label
        );
        log.checkpoint().await.unwrap();
        for i in 9..=14 {
            log.append(&entry(i)).await.unwrap();
        }
        log.checkpoint().await.unwrap();
        let report = log.verify(|_| {}).await.unwrap();
        assert_eq!(report.entries, 14, "{}", f.label);
        // Proofs of an unkeyed and of a keyed entry check without the database.
        for seq in [3, 12] {
            let bundle = log.prove(seq).await.unwrap();
            assert_eq!(bundle.chain_mac.is_some(), seq >= 9);
            let text = serde_json::to_string(&bundle).unwrap();
            let back: InclusionBundle = serde_json::from_str(&text).unwrap();
            back.check(&back.checkpoint, log.public_key()).unwrap();
            // Another body under the same tag does not hash to the entry's hash.
            let mut forged = back.clone();
            forged.body = forged.body.replace("req-", "reQ-");
            assert!(forged.check(&forged.checkpoint, log.public_key()).is_err());
        }
        // Downgrading a new entry to the unkeyed formula is refused (the record says the
        // chain is keyed from 9).
        let last_cp = log.last_checkpoint().await.unwrap().unwrap();
        assert_eq!(last_cp.size, 14);
        sql(&f.store, "DELETE FROM audit_checkpoints WHERE size > 8").await;
        rewrite_unkeyed(&f.store, 13).await;
        let err = log.verify(|_| {}).await.unwrap_err();
        assert!(
            matches!(err, AuditError::Unauthenticated { seq: 13 }),
            "{}: {err}",
            f.label
        );
    }
}

#[tokio::test]
async fn a_missing_signing_key_is_not_replaced_while_entries_exist() {
    for f in fixtures().await {
        let log = populated(&f.store, 10).await;
        let key = log.public_key().to_vec();
        drop(log);
        sql(&f.store, "DELETE FROM audit_keys").await;
        let err = AuditLog::open(f.reopen().await).await.unwrap_err();
        assert!(
            err.to_string().contains("refusing to create a new key"),
            "{}: {err}",
            f.label
        );
        let n: i64 = sqlx::query("SELECT COUNT(*) AS n FROM audit_keys")
            .fetch_one(f.store.pool())
            .await
            .unwrap()
            .try_get("n")
            .unwrap();
        assert_eq!(n, 0, "{}: no key was minted", f.label);
        // Checkpoints alone (entries deleted too) are refused the same way.
        sql(&f.store, "DELETE FROM audit_entries").await;
        assert!(AuditLog::open(f.reopen().await).await.is_err());
        // An empty trail gets its first key.
        sql(&f.store, "DELETE FROM audit_checkpoints").await;
        sql(&f.store, "DELETE FROM audit_chain").await;
        let log = AuditLog::open(f.reopen().await).await.unwrap();
        assert_ne!(log.public_key(), key.as_slice());
    }
}

#[tokio::test]
async fn a_published_checkpoint_detects_rollback_and_truncation() {
    for f in fixtures().await {
        let log = populated(&f.store, 30).await;
        // Published outside the database (e.g. fetched from GET /audit/checkpoint).
        let published: Checkpoint = serde_json::from_str(
            &serde_json::to_string(&log.last_checkpoint().await.unwrap().unwrap()).unwrap(),
        )
        .unwrap();
        assert_eq!(published.size, 30);
        log.verify_against(std::slice::from_ref(&published), |_| {})
            .await
            .unwrap();

        // Truncated to 22 entries, with the checkpoints past it removed: the database alone
        // is consistent, the published checkpoint is not found.
        sql(&f.store, "DELETE FROM audit_entries WHERE seq > 22").await;
        sql(&f.store, "DELETE FROM audit_entry_patients WHERE seq > 22").await;
        sql(&f.store, "DELETE FROM audit_checkpoints WHERE size > 22").await;
        log.verify(|_| {}).await.unwrap();
        let err = log
            .verify_against(std::slice::from_ref(&published), |_| {})
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                AuditError::Truncated {
                    size: 30,
                    present: 22
                }
            ),
            "{}: {err}",
            f.label
        );

        // Rolled back and regrown: entries 23.. appended again (by the real server, so keyed
        // and checkpointed), with other content than the published checkpoint signed.
        let log = AuditLog::open(f.reopen().await).await.unwrap();
        for i in 100..110 {
            log.append(&entry(i)).await.unwrap();
        }
        log.checkpoint().await.unwrap();
        log.verify(|_| {}).await.unwrap();
        let err = log
            .verify_against(std::slice::from_ref(&published), |_| {})
            .await
            .unwrap_err();
        assert!(
            matches!(err, AuditError::CheckpointMismatch { size: 30, .. }),
            "{}: {err}",
            f.label
        );
        assert!(err.is_tamper());

        // A published checkpoint signed by another key is refused.
        let mut forged = published.clone();
        forged.signature[0] ^= 1;
        let err = log
            .verify_against(std::slice::from_ref(&forged), |_| {})
            .await
            .unwrap_err();
        assert!(
            matches!(err, AuditError::CheckpointSignature { size: 30 }),
            "{}: {err}",
            f.label
        );
    }
}
