//! Removing deleted key material from the database files, not only from the tables.
//!
//! A committed `DELETE` or `UPDATE` removes a row from every query, but not its bytes from
//! disk. An erasure (the wrapped data key), a key rotation (the data keys wrapped under the
//! old key-encryption key, the old key-encryption keys) and the erasure's account traces are
//! only final once those bytes are gone, because the wrapped bytes plus the master key open
//! the "erased" data. [`Store::purge_key_residue`] makes them gone before an erasure is
//! answered, and after each rotation:
//!
//! - **SQLite.** Every connection runs with `secure_delete=ON` (see `backend.rs`), so a
//!   freed cell is overwritten with zeros in the page the delete writes. In WAL mode that page
//!   goes to the WAL, which still holds the earlier frames with the key bytes, as does the
//!   main file until a checkpoint copies the new page into it (sqlite checkpoints on its own
//!   only after about 1,000 pages of WAL, or at a clean close). `PRAGMA
//!   wal_checkpoint(TRUNCATE)` copies every frame into the main file and truncates the WAL to
//!   zero bytes. It needs every reader to be on the newest snapshot and no writer: it waits
//!   for them (the connection's busy timeout, 10 s) and is tried [`SQLITE_ATTEMPTS`] times.
//! - **PostgreSQL.** A deleted or updated tuple stays in its page until vacuumed, and a plain
//!   `VACUUM` marks its space free without overwriting it: the bytes of a pruned tuple can stay
//!   in the page's free space (seen with `pageinspect` on PostgreSQL 15). `VACUUM FULL`
//!   rewrites the table into a new file holding only live tuples and unlinks the old one. It
//!   holds an ACCESS EXCLUSIVE lock on the table while it copies it: its cost grows with the
//!   number of rows of the key and account tables (patients, users), not with resources. It
//!   waits at most `lock_timeout` = [`PG_LOCK_TIMEOUT`] for that lock (a long transaction on
//!   the table would otherwise queue every reader behind it). It keeps a deleted tuple that
//!   a snapshot older than the delete could still see, so the purge first waits (5 s at most)
//!   until no transaction of the database holds such a snapshot; a transaction open longer
//!   (or a replication slot or prepared transaction holding the horizon back) leaves the purge
//!   pending.
//!
//! When the purge cannot complete (readers kept the SQLite WAL busy, the PostgreSQL lock
//! was not granted), the erasure or rotation has still committed and is final for every
//! query; the purge is left pending ([`Store::key_residue_pending`]): the caller says so, and
//! [`Store::purge_pending_key_residue`] retries (the server does every few seconds; any later
//! erasure or rotation does too). What no database command reaches (filesystem blocks freed by
//! the truncation or by the unlinked file, PostgreSQL's WAL, its archives and base backups,
//! phivault's own backups) is described in docs/keys.md.

use std::collections::BTreeSet;
use std::time::Duration;

use sqlx::{Executor, Row};

use crate::{Backend, Store, StoreError};

/// Tries of a truncating SQLite checkpoint (each waits up to the busy timeout for readers).
pub(crate) const SQLITE_ATTEMPTS: u32 = 3;

/// How long `VACUUM FULL` waits for its table lock on PostgreSQL.
pub(crate) const PG_LOCK_TIMEOUT: &str = "5s";

/// How many times (every [`RETRY_PAUSE`]) the PostgreSQL purge looks whether the
/// transactions that could still see the deleted rows have ended (5 s in all).
const PG_HORIZON_POLLS: u32 = 25;

/// The tables holding key material.
pub(crate) const KEY_TABLES: &[&str] = &["data_keys", "key_encryption_keys"];

/// Pause between two checkpoint attempts.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

impl Store {
    /// Removes from the database files the bytes of rows deleted or rewritten in `tables`
    /// (see the module documentation), and any purge left pending before. Returns true when
    /// done; false when it could not complete now (left pending, retried by
    /// [`Store::purge_pending_key_residue`]). Errors other than a busy database are returned
    /// (and the purge is left pending too).
    pub async fn purge_key_residue(&self, tables: &[&'static str]) -> Result<bool, StoreError> {
        let mut wanted: BTreeSet<&'static str> = self.pending_residue().clone();
        wanted.extend(tables.iter().copied());
        if wanted.is_empty() {
            return Ok(true);
        }
        let done = match self.inner.backend {
            Backend::Sqlite => self.checkpoint_truncate().await,
            Backend::Postgres => self.vacuum_full(&wanted).await,
        };
        let mut pending = self.pending_residue();
        match done {
            Ok(true) => {
                pending.retain(|t| !wanted.contains(t));
                Ok(true)
            }
            Ok(false) => {
                pending.extend(wanted);
                tracing::warn!(
                    "deleted key material is still in the database files (the database was \
                     busy); the purge is retried"
                );
                Ok(false)
            }
            Err(e) => {
                pending.extend(wanted);
                Err(e)
            }
        }
    }

    /// Whether a purge of deleted key material did not complete yet.
    pub fn key_residue_pending(&self) -> bool {
        !self.pending_residue().is_empty()
    }

    /// Retries a purge left pending (a no-op returning true when none is).
    pub async fn purge_pending_key_residue(&self) -> Result<bool, StoreError> {
        if !self.key_residue_pending() {
            return Ok(true);
        }
        self.purge_key_residue(&[]).await
    }

    fn pending_residue(&self) -> std::sync::MutexGuard<'_, BTreeSet<&'static str>> {
        match self.inner.residue.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// SQLite: copies the WAL into the main file and truncates it to zero bytes.
    async fn checkpoint_truncate(&self) -> Result<bool, StoreError> {
        for attempt in 1..=SQLITE_ATTEMPTS {
            let outcome = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .fetch_one(&self.inner.pool)
                .await;
            match outcome {
                // Columns: busy (1 when it could not complete), WAL frames, frames copied.
                Ok(row) if row.try_get::<i64, _>(0)? == 0 => return Ok(true),
                Ok(_) => {}
                Err(e) if is_busy(&e) => {}
                Err(e) => return Err(e.into()),
            }
            if attempt < SQLITE_ATTEMPTS {
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
        Ok(false)
    }

    /// PostgreSQL: rewrites `tables` without their dead tuples.
    async fn vacuum_full(&self, tables: &BTreeSet<&'static str>) -> Result<bool, StoreError> {
        let mut conn = self.inner.pool.acquire().await?;
        // VACUUM FULL copies a deleted tuple that a snapshot taken before the delete could
        // still see: first wait for every such snapshot of this database to end. A new xid
        // (newer than the delete, which has committed) is the mark.
        let mark: String = sqlx::query("SELECT (txid_current() % 4294967296)::TEXT AS x")
            .fetch_one(&mut *conn)
            .await?
            .try_get("x")?;
        let mut horizon_passed = false;
        for _ in 0..PG_HORIZON_POLLS {
            let older: i64 = sqlx::query(
                "SELECT COUNT(*) AS n FROM pg_stat_activity \
                 WHERE pid <> pg_backend_pid() AND datname = current_database() \
                 AND backend_xmin IS NOT NULL AND age(backend_xmin) >= age($1::TEXT::xid)",
            )
            .bind(&mark)
            .fetch_one(&mut *conn)
            .await?
            .try_get("n")?;
            if older == 0 {
                horizon_passed = true;
                break;
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
        conn.execute(format!("SET lock_timeout = '{PG_LOCK_TIMEOUT}'").as_str())
            .await?;
        // Not cut by the server's statement timeout: its cost grows with the key and account
        // tables, and a purge cancelled each time would stay pending for ever. `RESET` below
        // returns to the connection's configured default.
        conn.execute("SET statement_timeout = 0").await?;
        let list: Vec<&str> = tables.iter().copied().collect();
        // Table names come from this crate's constants, never from input.
        let outcome = conn
            .execute(format!("VACUUM FULL {}", list.join(", ")).as_str())
            .await;
        conn.execute("RESET lock_timeout").await?;
        conn.execute("RESET statement_timeout").await?;
        match outcome {
            Ok(_) => Ok(horizon_passed),
            Err(e) if is_lock_timeout(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

/// SQLITE_BUSY or SQLITE_LOCKED, extended codes included (primary code 5 or 6 in the low
/// byte).
fn is_busy(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db
            .code()
            .and_then(|c| c.parse::<u32>().ok())
            .is_some_and(|c| matches!(c & 0xff, 5 | 6)),
        _ => false,
    }
}

/// PostgreSQL `lock_not_available` (55P03): the lock timeout expired.
fn is_lock_timeout(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db.code().as_deref() == Some("55P03"),
        _ => false,
    }
}
