//! What a readiness probe asks of the store (phivault-server's `/readyz`): can this process
//! serve requests on this database now. Each check is cheap (a few statements, no resource
//! read), changes nothing, and reports no detail a caller could show but pass or fail; the
//! errors it returns are for the log.
//!
//! - [`Store::health`] (in the crate root): the database answers.
//! - [`Store::schema_versions`]: the newest migration applied equals the newest this build
//!   knows. A node left on an older build after another node migrated the database is not
//!   ready (it would also refuse to start again).
//! - [`Store::check_audit_writable`]: the audit trail can take an entry now, without taking
//!   one: a write transaction opens (SQLite: the file's write lock, after the process's own
//!   writer queue), the trail's tail reads, and on PostgreSQL the transaction is read-write
//!   (not a hot standby, not `default_transaction_read_only`), the role may insert into
//!   `audit_entries`, and the append lock is granted within [`AUDIT_LOCK_WAIT`] (a session
//!   stuck holding it would hold up every audited request). The transaction is rolled back.
//! - [`Store::check_keys`]: the master key in memory (or read again through the key
//!   provider, after a rotation by another process) opens the active key-encryption key.

use sqlx::Row;

use crate::{Backend, Store, StoreError};

/// The longest the audit check waits for the audit append lock on PostgreSQL. Appenders
/// hold it for the end of one transaction: milliseconds.
pub(crate) const AUDIT_LOCK_WAIT: &str = "2s";

impl Store {
    /// The newest migration applied to the database and the newest this build knows: the
    /// schema is current when they are equal.
    pub async fn schema_versions(&self) -> Result<(i64, i64), StoreError> {
        crate::backend::schema_versions(self.inner.backend, &self.inner.pool).await
    }

    /// Whether the audit trail could take an entry now (see the module documentation).
    /// `Ok(false)`: the database answers but refuses writes to the trail (read-only, or no
    /// privilege); `Err`: it did not answer, or the lock was not granted in time.
    pub async fn check_audit_writable(&self) -> Result<bool, StoreError> {
        let _guard = self.write_guard().await;
        let mut tx = self.begin_write().await?;
        if self.inner.backend == Backend::Postgres {
            let writable: i32 = sqlx::query(
                "SELECT CASE WHEN current_setting('transaction_read_only') = 'off' \
                 AND has_table_privilege('audit_entries', 'INSERT') THEN 1 ELSE 0 END AS ok",
            )
            .fetch_one(&mut *tx)
            .await?
            .try_get("ok")?;
            if writable != 1 {
                tx.rollback().await?;
                return Ok(false);
            }
            sqlx::query(&format!(
                "SET LOCAL statement_timeout = '{AUDIT_LOCK_WAIT}'"
            ))
            .execute(&mut *tx)
            .await?;
            sqlx::query("SELECT 1 AS locked FROM (SELECT pg_advisory_xact_lock($1)) AS l")
                .bind(crate::audit::APPEND_LOCK_KEY)
                .execute(&mut *tx)
                .await?;
        }
        crate::audit::tail(&mut tx).await?;
        tx.rollback().await?;
        Ok(true)
    }

    /// Whether the master key opens the active key-encryption key (from memory when this
    /// process has it; otherwise its row is read and unwrapped, reading the master key again
    /// through the key provider when the one in memory does not open it).
    pub async fn check_keys(&self) -> Result<(), StoreError> {
        let kek_id: String = sqlx::query(
            "SELECT kek_id FROM key_encryption_keys WHERE active = 1 \
             ORDER BY created_at DESC, kek_id LIMIT 1",
        )
        .fetch_optional(&self.inner.pool)
        .await?
        .ok_or_else(|| StoreError::Config("no active key-encryption key".to_owned()))?
        .try_get("kek_id")?;
        self.inner
            .keys
            .kek(&self.inner.pool, &kek_id)
            .await?
            .map(|_| ())
            .ok_or_else(|| StoreError::Config("the active key-encryption key vanished".to_owned()))
    }
}
