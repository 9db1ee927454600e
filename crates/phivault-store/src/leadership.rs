//! Leadership among the processes serving one database: which one runs the background work
//! that must not run twice at once (audit checkpoints, retention, erasure sweeps, finishing
//! a key rotation, planner statistics, signing-key rotation, breach detection).
//!
//! On PostgreSQL the leader is the process holding a session advisory lock on a connection
//! of its own, taken out of the pool for as long as it leads. PostgreSQL releases the lock
//! when that session ends, so a leader that dies (even `kill -9`: the kernel closes its
//! socket and the server ends the session) hands leadership over at once; a leader whose
//! connection was lost (the database restarted, a network cut) learns it at its next
//! [`LeaderLock::still_held`] and stops leading. Between the loss and that check both the old
//! and the new leader may run a task: every task is written to be safe when that happens
//! (each change is one transaction; audit checkpoints are signed under the audit append lock
//! and accept checkpoints made by others), so leadership is about not doing the work N
//! times, not a fence.
//!
//! The lock's key is derived from the schema and tenant the store serves, so separate
//! deployments in one PostgreSQL database (another schema, another tenant) each have their
//! own leader. On SQLite one process serves the file: it always leads.

use sqlx::{AnyConnection, Row};

use crate::{Backend, Store, StoreError};

/// The first half of the advisory lock key (`"phvl"`): the second half is the hash of the
/// schema and tenant. The two-integer form of the lock has its own key space, apart from
/// the single-bigint keys of the audit append lock and of sqlx's migration lock.
const LEADER_LOCK_CLASS: i32 = 0x7068_766c;

/// A session campaigning for leadership, and holding it once won. Dropping it ends the
/// session on PostgreSQL and so releases the lock. A follower keeps its session between
/// attempts (one connection per node, not one per attempt).
pub struct LeaderLock {
    /// The session asking for, or holding, the lock (PostgreSQL); None on SQLite.
    conn: Option<AnyConnection>,
    held: bool,
}

impl std::fmt::Debug for LeaderLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderLock")
            .field("session", &self.conn.is_some())
            .field("held", &self.held)
            .finish()
    }
}

impl LeaderLock {
    /// Whether this session leads, as of the last attempt or check.
    pub fn is_held(&self) -> bool {
        self.held
    }

    /// Tries to take the lock (once held, only checks the session, since taking a session
    /// lock twice would need two releases). Ok(true) when this process now leads; an error
    /// means the session is broken and should be dropped.
    pub async fn try_lead(&mut self, tenant: &str) -> Result<bool, StoreError> {
        if self.held {
            return Ok(self.still_held().await);
        }
        let Some(conn) = self.conn.as_mut() else {
            self.held = true;
            return Ok(true);
        };
        let row = sqlx::query(
            "SELECT pg_try_advisory_lock($1, hashtext(current_schema() || '|' || $2)) AS locked",
        )
        .bind(LEADER_LOCK_CLASS)
        .bind(tenant)
        .fetch_one(&mut *conn)
        .await?;
        self.held = row.try_get::<bool, _>("locked")?;
        Ok(self.held)
    }

    /// Whether this process still leads: on PostgreSQL, whether the session holding the lock
    /// still answers (a lock is released only with its session, which nothing else ends).
    pub async fn still_held(&mut self) -> bool {
        if !self.held {
            return false;
        }
        if let Some(conn) = self.conn.as_mut() {
            self.held = sqlx::query("SELECT 1").execute(&mut *conn).await.is_ok();
        }
        self.held
    }
}

impl Store {
    /// A session to campaign for leadership with ([`LeaderLock::try_lead`]). On PostgreSQL it
    /// takes a connection out of the pool for as long as it lives (the pool opens another in
    /// its place).
    pub async fn leader_session(&self) -> Result<LeaderLock, StoreError> {
        let conn = match self.inner.backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(self.inner.pool.acquire().await?.detach()),
        };
        Ok(LeaderLock { conn, held: false })
    }
}
