//! The background work of a node that only one node of a cluster runs at a time.
//!
//! [`campaign`] keeps trying to become the leader ([`phivault_store::Store::try_lead`]) and,
//! once it leads, checks every poll that it still does; [`while_leading`] runs a task only
//! while this node leads, starting it again whenever leadership comes back (so a node that
//! takes over resumes interrupted work: a sweep, a key rotation) and aborting it when
//! leadership is lost. Aborting is safe: every task's changes are transactions, and a task
//! cut in the middle is rolled back and redone by whichever node leads next.
//!
//! What runs under leadership: audit checkpoints, retention, the erasure index sweep,
//! finishing an interrupted key-encryption key rotation, breach detection. What every node
//! runs for itself: evicting erased keys from its own memory, writing its own summaries of
//! refused requests, refreshing planner statistics after its own writes, and making sure an
//! OpenID Connect signing key is in force (safe to repeat, and each node's JWKS must be
//! ready before its first sign-in).

use std::future::Future;
use std::time::Duration;

use phivault_store::Store;
use tokio::sync::watch;

/// How often a follower tries to lead, and a leader checks that it still does.
pub(crate) const POLL: Duration = Duration::from_secs(2);

/// Whether this node leads, as last learnt.
pub(crate) type Leading = watch::Receiver<bool>;

/// Campaigns for leadership until aborted, publishing whether this node leads on `tx`.
/// Logs each change with the node id (ids only). A follower keeps one session and asks for
/// the lock on it every poll; a broken session (the database went away) is replaced.
pub(crate) async fn campaign(
    store: Store,
    node_id: String,
    tx: watch::Sender<bool>,
    poll: Duration,
) {
    let mut ticks = tokio::time::interval(poll);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut session = None;
    loop {
        ticks.tick().await;
        let lock = match session.as_mut() {
            Some(lock) => lock,
            None => match store.leader_session().await {
                Ok(lock) => session.insert(lock),
                Err(e) => {
                    tracing::debug!(node_id = %node_id, error = %e, "cannot campaign for leadership now");
                    continue;
                }
            },
        };
        let was = lock.is_held();
        let now = match lock.try_lead(store.tenant()).await {
            Ok(now) => now,
            Err(e) => {
                tracing::debug!(node_id = %node_id, error = %e, "leadership session broken");
                session = None;
                false
            }
        };
        // A session that lost the lock lost it with its connection: a fresh one is made.
        if was && !now {
            session = None;
        }
        match (was, now) {
            (false, true) => {
                tx.send_replace(true);
                tracing::info!(node_id = %node_id, "leading: running the cluster's background tasks");
            }
            (true, false) => {
                tx.send_replace(false);
                tracing::warn!(node_id = %node_id, "lost leadership (database session ended)");
            }
            _ => {}
        }
    }
}

/// Runs the task `make` builds while `leading` says this node leads: started when leadership
/// is gained (again), aborted when it is lost. Runs until aborted.
pub(crate) async fn while_leading<F, Fut>(mut leading: Leading, make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        if leading.wait_for(|l| *l).await.is_err() {
            return;
        }
        let task = tokio::spawn(make());
        let abort = task.abort_handle();
        let lost = leading.wait_for(|l| !*l).await.is_err();
        abort.abort();
        let _ = task.await;
        if lost {
            return;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A task runs only while leading, and starts again when leadership comes back.
    #[tokio::test]
    async fn tasks_follow_leadership() {
        let (tx, rx) = watch::channel(false);
        let starts = Arc::new(AtomicUsize::new(0));
        let running = Arc::new(AtomicUsize::new(0));
        let (s, r) = (starts.clone(), running.clone());
        let supervisor = tokio::spawn(while_leading(rx, move || {
            let (s, r) = (s.clone(), r.clone());
            async move {
                s.fetch_add(1, Ordering::SeqCst);
                struct Running(Arc<AtomicUsize>);
                impl Drop for Running {
                    fn drop(&mut self) {
                        self.0.fetch_sub(1, Ordering::SeqCst);
                    }
                }
                r.fetch_add(1, Ordering::SeqCst);
                let _running = Running(r);
                std::future::pending::<()>().await;
            }
        }));
        let settle = || tokio::time::sleep(Duration::from_millis(50));
        settle().await;
        assert_eq!(starts.load(Ordering::SeqCst), 0, "no task before leading");
        tx.send_replace(true);
        settle().await;
        assert_eq!(
            (
                starts.load(Ordering::SeqCst),
                running.load(Ordering::SeqCst)
            ),
            (1, 1)
        );
        tx.send_replace(false);
        settle().await;
        assert_eq!(
            running.load(Ordering::SeqCst),
            0,
            "aborted when leadership is lost"
        );
        tx.send_replace(true);
        settle().await;
        assert_eq!(
            (
                starts.load(Ordering::SeqCst),
                running.load(Ordering::SeqCst)
            ),
            (2, 1),
            "started again when leadership comes back"
        );
        drop(tx);
        settle().await;
        assert!(supervisor.is_finished());
        assert_eq!(running.load(Ordering::SeqCst), 0);
    }

    /// On SQLite the one process serving the file leads at once.
    #[tokio::test]
    async fn sqlite_always_leads() {
        let dir = tempfile::tempdir().unwrap();
        let keys = phivault_crypto::StaticKeyProvider::from_hex(hex::encode([7u8; 32]));
        let opts =
            phivault_store::StoreOptions::new(format!("sqlite://{}/t.db", dir.path().display()));
        let store = Store::open(&opts, &keys).await.unwrap();
        let (tx, mut rx) = watch::channel(false);
        let task = tokio::spawn(campaign(
            store,
            "n1".to_owned(),
            tx,
            Duration::from_millis(10),
        ));
        tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|l| *l))
            .await
            .unwrap()
            .unwrap();
        task.abort();
    }
}
