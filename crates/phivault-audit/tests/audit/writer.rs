//! The group-commit writer: concurrent standalone appends (from several logs over one trail,
//! interleaved with appends inside write transactions and with checkpoints) each return the
//! seq of their own committed entry and make one valid chain; a batch that cannot be written
//! fails every appender waiting on it, and the writer goes on afterwards.

use std::sync::Arc;

use phivault_audit::{AuditEntry, AuditLog};
use phivault_store::Store;

use super::{body, entry, fixtures};

/// The advisory lock key the store appends under on PostgreSQL.
const APPEND_LOCK_KEY: i64 = 0x7068_6976_6175_6474;

async fn stored(store: &Store, seq: u64) -> AuditEntry {
    AuditEntry::from_canonical(&body(store, seq as i64).await).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_all_commit_as_one_valid_chain() {
    const APPENDERS: u64 = 240;
    for f in fixtures().await {
        // Two logs over two stores of the same trail: two processes appending.
        let a = Arc::new(AuditLog::open(f.store.clone()).await.unwrap());
        let b = Arc::new(AuditLog::open(f.reopen().await).await.unwrap());
        let mut tasks = Vec::new();
        for i in 0..APPENDERS {
            let log = if i % 2 == 0 { a.clone() } else { b.clone() };
            tasks.push(tokio::spawn(async move {
                (i, log.append(&entry(1000 + i)).await.unwrap())
            }));
        }
        // Meanwhile: writes that append their entries in their own transactions, and
        // checkpoints.
        let store = f.store.clone();
        let writes = {
            let a = a.clone();
            tokio::spawn(async move {
                for i in 0..10u64 {
                    let _lock = store.write_lock().await;
                    let mut tx = store.begin_write().await.unwrap();
                    a.append_in(&mut tx, &entry(5000 + i)).await.unwrap();
                    tx.commit().await.unwrap();
                }
            })
        };
        let checkpoints = {
            let a = a.clone();
            tokio::spawn(async move {
                for _ in 0..3 {
                    a.checkpoint().await.unwrap();
                    tokio::task::yield_now().await;
                }
            })
        };
        let mut seqs = Vec::new();
        for t in tasks {
            seqs.push(t.await.unwrap());
        }
        writes.await.unwrap();
        checkpoints.await.unwrap();

        let total = APPENDERS + 10;
        let mut taken: Vec<u64> = seqs.iter().map(|(_, s)| *s).collect();
        taken.sort_unstable();
        taken.dedup();
        assert_eq!(
            taken.len() as u64,
            APPENDERS,
            "{}: a seq given twice",
            f.label
        );
        assert!(taken.iter().all(|s| (1..=total).contains(s)), "{}", f.label);
        // Each appender's seq holds its own entry, committed.
        for (i, seq) in &seqs {
            let e = stored(&f.store, *seq).await;
            assert_eq!(e.request_id, entry(1000 + i).request_id, "{}", f.label);
            assert_eq!(e.seq, *seq);
        }
        let report = a.verify(|_| {}).await.unwrap();
        assert_eq!(report.entries, total, "{}", f.label);
        let cp = b.checkpoint().await.unwrap();
        assert_eq!(cp.size, total);
        assert_eq!(a.verify_tail(|_| {}).await.unwrap().entries, total);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_batch_fails_every_appender_in_it() {
    const APPENDERS: u64 = 64;
    for f in fixtures().await {
        let log = Arc::new(AuditLog::open(f.store.clone()).await.unwrap());
        log.append(&entry(1)).await.unwrap();
        // Inserts into the trail fail from now on.
        if f.label == "sqlite" {
            sqlx::query(
                "CREATE TRIGGER refuse BEFORE INSERT ON audit_entries \
                 BEGIN SELECT RAISE(ABORT, 'refused'); END",
            )
            .execute(f.store.pool())
            .await
            .unwrap();
        } else {
            sqlx::query(
                "CREATE FUNCTION refuse() RETURNS trigger AS $$ \
                 BEGIN RAISE EXCEPTION 'refused'; END $$ LANGUAGE plpgsql",
            )
            .execute(f.store.pool())
            .await
            .unwrap();
            sqlx::query(
                "CREATE TRIGGER refuse BEFORE INSERT ON audit_entries \
                 FOR EACH ROW EXECUTE FUNCTION refuse()",
            )
            .execute(f.store.pool())
            .await
            .unwrap();
        }
        // Hold the append lock while the appenders arrive, so that they queue and are
        // written as one batch (or a few) when it is released.
        let mut pg_lock = None;
        let sqlite_lock = if f.label == "sqlite" {
            Some(f.store.write_lock().await)
        } else {
            let mut tx = f.store.pool().begin().await.unwrap();
            sqlx::query("SELECT 1 AS locked FROM (SELECT pg_advisory_xact_lock($1)) AS l")
                .bind(APPEND_LOCK_KEY)
                .execute(&mut *tx)
                .await
                .unwrap();
            pg_lock = Some(tx);
            None
        };
        let mut tasks = Vec::new();
        for i in 0..APPENDERS {
            let log = log.clone();
            tasks.push(tokio::spawn(
                async move { log.append(&entry(100 + i)).await },
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        drop(sqlite_lock);
        if let Some(tx) = pg_lock {
            tx.rollback().await.unwrap();
        }
        for t in tasks {
            let result = t.await.unwrap();
            assert!(result.is_err(), "{}: an appender got {result:?}", f.label);
        }
        assert_eq!(f.store.audit_tail().await.unwrap().seq, 2, "{}", f.label);

        // The writer goes on once the trail takes inserts again.
        sqlx::query("DROP TRIGGER refuse ON audit_entries")
            .execute(f.store.pool())
            .await
            .ok();
        sqlx::query("DROP TRIGGER IF EXISTS refuse")
            .execute(f.store.pool())
            .await
            .ok();
        let mut tasks = Vec::new();
        for i in 0..APPENDERS {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                log.append(&entry(200 + i)).await.unwrap()
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let report = log.verify(|_| {}).await.unwrap();
        assert_eq!(report.entries, 1 + APPENDERS, "{}", f.label);
    }
}
