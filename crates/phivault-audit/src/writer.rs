//! The group-commit writer of standalone appends ([`crate::AuditLog::append`]).
//!
//! One task per audit log takes the entries submitted by every concurrent appender and writes
//! them in batches: whatever is queued when the previous commit ends (up to [`MAX_BATCH`])
//! goes into one transaction, so one fsync makes the whole batch durable. There is no timer:
//! a lone appender's entry is written as soon as it arrives, and under load the batch grows
//! with the number of appenders waiting.
//!
//! Invariants:
//! - An appender is answered only once the transaction holding its entry has committed
//!   (its seq), or once it is known not to have committed (the batch's error, or an error
//!   when the commit task ended without an answer). Every appender of a failed batch gets an
//!   error: none gets a seq for an entry that was not written.
//! - A batch is chained exactly as the same entries appended one by one, in queue order: the
//!   store reads the tail under its append lock (the SQLite write lock, the PostgreSQL
//!   advisory lock) inside the batch's transaction, so appends by other processes and the
//!   in-transaction appends of writes ([`crate::AuditLog::append_in`]) interleave between
//!   batches, never inside one.
//! - A submitted entry is written even when its appender is cancelled meanwhile (a client
//!   that went away): the batch belongs to the writer, not to any appender.

use std::sync::Arc;

use phivault_crypto::MacKey;
use phivault_store::Store;
use tokio::sync::{mpsc, oneshot};

use crate::{AuditEntry, AuditError};

/// The most entries committed in one transaction.
pub(crate) const MAX_BATCH: usize = 512;

/// Entries that may wait for the writer before submitters wait for room.
const QUEUE: usize = 8 * MAX_BATCH;

/// An entry waiting for its batch, and where its seq (or the batch's failure) goes.
struct Pending {
    entry: AuditEntry,
    reply: oneshot::Sender<Result<u64, String>>,
}

/// The handle appenders submit to. The writer task is started on the first append and
/// started again when it has gone (its runtime shut down); it ends when the handle is
/// dropped and the queue is drained.
pub(crate) struct Writer {
    store: Store,
    key: Arc<MacKey>,
    queue: std::sync::Mutex<Option<mpsc::Sender<Pending>>>,
}

impl Writer {
    pub(crate) fn new(store: Store, key: Arc<MacKey>) -> Writer {
        Writer {
            store,
            key,
            queue: std::sync::Mutex::new(None),
        }
    }

    /// The queue of a running writer, starting one when there is none.
    fn queue(&self) -> mpsc::Sender<Pending> {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        match queue.as_ref() {
            Some(q) if !q.is_closed() => q.clone(),
            _ => {
                let (tx, rx) = mpsc::channel(QUEUE);
                tokio::spawn(run(self.store.clone(), self.key.clone(), rx));
                *queue = Some(tx.clone());
                tx
            }
        }
    }

    /// Submits `entry` and waits until its batch has committed (its seq) or failed.
    pub(crate) async fn append(&self, entry: AuditEntry) -> Result<u64, AuditError> {
        let (reply, answer) = oneshot::channel();
        let mut pending = Pending { entry, reply };
        // A writer whose runtime has shut down closes its queue: start another and submit
        // there (once; a second failure is reported).
        for _ in 0..2 {
            match self.queue().send(pending).await {
                Ok(()) => {
                    return match answer.await {
                        Ok(Ok(seq)) => Ok(seq),
                        Ok(Err(text)) => Err(AuditError::Append(text)),
                        Err(_) => Err(AuditError::Append(
                            "the batch holding the entry ended without an answer".to_owned(),
                        )),
                    };
                }
                Err(mpsc::error::SendError(back)) => pending = back,
            }
        }
        Err(AuditError::Append(
            "the audit writer is not running".to_owned(),
        ))
    }
}

/// The writer: takes what is queued (at least one entry, at most [`MAX_BATCH`]) and commits
/// it, until every handle is gone and the queue is empty.
async fn run(store: Store, key: Arc<MacKey>, mut queue: mpsc::Receiver<Pending>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let group = std::mem::replace(&mut batch, Vec::with_capacity(MAX_BATCH));
        // In a task of its own: should the commit panic, its appenders are answered with an
        // error (their reply senders are dropped) and the writer goes on with the next batch.
        let commit = tokio::spawn(commit_batch(store.clone(), key.clone(), group));
        if commit.await.is_err() {
            tracing::error!("an audit batch commit failed without an answer");
        }
    }
}

/// Writes one batch in a transaction of its own and answers every appender in it.
async fn commit_batch(store: Store, key: Arc<MacKey>, batch: Vec<Pending>) {
    let (entries, replies): (Vec<AuditEntry>, Vec<_>) =
        batch.into_iter().map(|p| (p.entry, p.reply)).unzip();
    let written = store
        .append_audit_rows(|tail| crate::log::chained_rows(&entries, tail, &key))
        .await;
    match written {
        Ok(first) => {
            for (seq, reply) in (first..).zip(replies) {
                // An appender that gave up waiting does not need its seq.
                let _ = reply.send(Ok(seq));
            }
        }
        Err(e) => {
            let text = e.to_string();
            for reply in replies {
                let _ = reply.send(Err(text.clone()));
            }
        }
    }
}
