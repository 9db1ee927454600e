//! Planner statistics after bulk loads.
//!
//! A search joins the index on its blind tokens; with no statistics PostgreSQL guesses the
//! index tables are tiny and may pick a nested loop over them, which after a bulk import of
//! thousands of patients turns a millisecond search into seconds until autovacuum gets round
//! to analyzing. Bulk writers (`phivault import`, `backup restore`) therefore refresh the
//! statistics of every phivault table when they finish. `ANALYZE` reads samples of the rows
//! and writes only histograms of what is stored: blind tokens, ciphertext lengths, ids, never
//! plaintext (the columns hold none).

use sqlx::AnyPool;

use crate::backend::Backend;
use crate::backup::TABLES;
use crate::{Store, StoreError};

impl Store {
    /// Refreshes the planner statistics of phivault's tables (PostgreSQL `ANALYZE` of each
    /// table, SQLite `ANALYZE`). Call after a bulk load; cheap next to the load itself.
    pub async fn refresh_statistics(&self) -> Result<(), StoreError> {
        refresh(self.pool(), self.backend()).await
    }
}

/// See [`Store::refresh_statistics`]; also used by a restore, which has no [`Store`].
pub(crate) async fn refresh(pool: &AnyPool, backend: Backend) -> Result<(), StoreError> {
    let sql = match backend {
        // Named tables, not a bare `ANALYZE`: that would analyze every schema of the database,
        // including other tenants' and unrelated applications'.
        Backend::Postgres => {
            let names: Vec<&str> = TABLES.iter().map(|t| t.name).collect();
            format!("ANALYZE {}", names.join(", "))
        }
        Backend::Sqlite => "ANALYZE".to_owned(),
    };
    sqlx::query(&sql).execute(pool).await?;
    Ok(())
}
