//! Verification reads the trail in pages and checks each page's entries in parallel runs
//! (one per core); tampering at the boundaries of both is named as anywhere else: the last
//! entry of a page, the first of the next, and entries swapped across a boundary.

use phivault_audit::{AuditEntry, AuditError, AuditLog};
use phivault_store::Store;

use super::{body, entry, fixtures, flip_byte, set_body, verify_err};

/// Entries per verification page.
const PAGE: i64 = 10_000;
/// Beyond the first page.
const ENTRIES: u64 = 10_040;

async fn large(store: &Store) -> AuditLog {
    let log = AuditLog::open(store.clone()).await.unwrap();
    let mut next = 1;
    while next <= ENTRIES {
        let chunk: Vec<AuditEntry> = (next..(next + 2_000).min(ENTRIES + 1)).map(entry).collect();
        let _lock = store.write_lock().await;
        let mut tx = store.pool().begin().await.unwrap();
        log.append_all_in(&mut tx, &chunk).await.unwrap();
        tx.commit().await.unwrap();
        next += chunk.len() as u64;
    }
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampering_at_page_and_run_boundaries_is_named() {
    for f in fixtures().await {
        let log = large(&f.store).await;
        let report = log.verify(|_| {}).await.unwrap();
        assert_eq!(report.entries, ENTRIES, "{}", f.label);
        let cp = log.checkpoint().await.unwrap();
        assert_eq!(cp.size, ENTRIES);

        // A changed byte in the last entry of the first page, then in the middle of it (where
        // the runs of two cores meet), each named, each undone.
        for seq in [PAGE, PAGE / 2, PAGE / 2 + 1] {
            let original = body(&f.store, seq).await;
            flip_byte(&f.store, seq).await;
            let err = verify_err(&log).await;
            assert!(
                matches!(err, AuditError::HashMismatch { seq: s } if s == seq as u64),
                "{}: {seq}: {err}",
                f.label
            );
            set_body(&f.store, seq, original).await;
        }
        assert_eq!(log.verify(|_| {}).await.unwrap().entries, ENTRIES);

        // Bodies swapped across the page boundary.
        let (a, b) = (body(&f.store, PAGE).await, body(&f.store, PAGE + 1).await);
        set_body(&f.store, PAGE, b.clone()).await;
        set_body(&f.store, PAGE + 1, a.clone()).await;
        let err = verify_err(&log).await;
        assert!(
            matches!(err, AuditError::Misplaced { seq, claimed } if seq == PAGE as u64 && claimed == PAGE as u64 + 1),
            "{}: {err}",
            f.label
        );
        set_body(&f.store, PAGE, a).await;
        set_body(&f.store, PAGE + 1, b).await;

        // Whole rows swapped across the page boundary (renumbered, hashes and all).
        for (from, to) in [(PAGE, -1), (PAGE + 1, PAGE), (-1, PAGE + 1)] {
            sqlx::query("UPDATE audit_entries SET seq = $1 WHERE seq = $2")
                .bind(to)
                .bind(from)
                .execute(f.store.pool())
                .await
                .unwrap();
        }
        let err = verify_err(&log).await;
        assert_eq!(err.first_bad_seq(), Some(PAGE as u64), "{}: {err}", f.label);
        for (from, to) in [(PAGE, -1), (PAGE + 1, PAGE), (-1, PAGE + 1)] {
            sqlx::query("UPDATE audit_entries SET seq = $1 WHERE seq = $2")
                .bind(to)
                .bind(from)
                .execute(f.store.pool())
                .await
                .unwrap();
        }
        assert_eq!(log.verify(|_| {}).await.unwrap().entries, ENTRIES);

        // The first entry of the second page deleted.
        sqlx::query("DELETE FROM audit_entries WHERE seq = $1")
            .bind(PAGE + 1)
            .execute(f.store.pool())
            .await
            .unwrap();
        let err = verify_err(&log).await;
        assert!(
            matches!(err, AuditError::Missing { seq, next } if seq == PAGE as u64 + 1 && next == PAGE as u64 + 2),
            "{}: {err}",
            f.label
        );
    }
}
