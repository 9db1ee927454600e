//! Planner statistics after bulk loads.
//!
//! A search joins the index on its blind tokens; with no statistics PostgreSQL guesses the
//! index tables are tiny and may pick a nested loop over them, which after a bulk import of
//! thousands of patients turns a millisecond search into seconds until autovacuum gets round
//! to analyzing. Bulk writers (`phivault import`, `backup restore`) therefore refresh the
//! statistics of every phivault table when they finish. `ANALYZE` reads samples of the rows
//! and writes only histograms of what is stored: blind tokens, ciphertext lengths, ids, never
//! plaintext (the columns hold none).

use std::sync::atomic::Ordering;

use sqlx::{AnyPool, Row};

use crate::backend::Backend;
use crate::backup::TABLES;
use crate::{Store, StoreError};

/// Resource writes after which a server refreshes PostgreSQL's statistics at the soonest;
/// past that, a tenth of the resources counted at the last refresh must have been written
/// too. The rule and its figures are autovacuum's own defaults (`autovacuum_analyze_threshold`
/// 50, `autovacuum_analyze_scale_factor` 0.1), so statistics stay as fresh as a PostgreSQL
/// with autovacuum on would keep them, on one that runs with it off.
pub const STALE_AFTER_WRITES: u64 = 50;

/// The share of the resources at the last refresh that must be written before the next.
const STALE_FRACTION: u64 = 10;

/// What [`Store::refresh_statistics_if_stale`] remembers between calls: the store's write
/// count and the resources PostgreSQL counted at the last refresh.
#[derive(Debug, Clone, Copy)]
pub struct StatisticsWatch {
    min_writes: u64,
    writes_at_refresh: u64,
    resources_at_refresh: u64,
    checked_at_start: bool,
}

impl Default for StatisticsWatch {
    fn default() -> Self {
        StatisticsWatch::after_writes(STALE_AFTER_WRITES)
    }
}

impl StatisticsWatch {
    /// A watch that refreshes after `min_writes` writes at the soonest (the default is
    /// [`STALE_AFTER_WRITES`]).
    pub fn after_writes(min_writes: u64) -> Self {
        StatisticsWatch {
            min_writes,
            writes_at_refresh: 0,
            resources_at_refresh: 0,
            checked_at_start: false,
        }
    }
}

impl Store {
    /// Refreshes the planner statistics of phivault's tables (PostgreSQL `ANALYZE` of each
    /// table, SQLite `ANALYZE`). Call after a bulk load; cheap next to the load itself.
    pub async fn refresh_statistics(&self) -> Result<(), StoreError> {
        refresh(self.pool(), self.backend()).await
    }

    /// Resources this process wrote since the store was opened (rolled-back writes
    /// included: a hint for statistics, not a count of data).
    pub fn resource_writes(&self) -> u64 {
        self.inner.resource_writes.load(Ordering::Relaxed)
    }

    /// On PostgreSQL, refreshes the statistics when they are stale: never gathered (a new
    /// database, or a server without autovacuum), or at least the watch's minimum of
    /// resources written since the last refresh plus a tenth of what there was then (the
    /// index grew enough to change the best plan, see [`STALE_AFTER_WRITES`]). Writes through the server are counted
    /// here; growth through another process (`phivault import` refreshes on its own) is
    /// not. Returns whether it refreshed. SQLite: never (its searches are planned by the store
    /// from index counts, see `Store::drive`, and its `ANALYZE` reads every row under the
    /// write lock).
    pub async fn refresh_statistics_if_stale(
        &self,
        watch: &mut StatisticsWatch,
    ) -> Result<bool, StoreError> {
        if self.backend() != Backend::Postgres {
            return Ok(false);
        }
        let writes = self.resource_writes();
        let grown = writes.saturating_sub(watch.writes_at_refresh);
        let stale = if watch.checked_at_start {
            grown >= watch.min_writes + watch.resources_at_refresh / STALE_FRACTION
        } else {
            watch.checked_at_start = true;
            // `reltuples` is -1 until the table was first analyzed (PostgreSQL 14 and later).
            self.estimated_rows("search_index").await? < 0.0
        };
        if !stale {
            return Ok(false);
        }
        self.refresh_statistics().await?;
        watch.writes_at_refresh = writes;
        watch.resources_at_refresh =
            self.estimated_rows("current_resources").await?.max(0.0) as u64;
        Ok(true)
    }

    /// PostgreSQL's row estimate of one of phivault's tables (in the schema the store uses).
    async fn estimated_rows(&self, table: &str) -> Result<f64, StoreError> {
        let row =
            sqlx::query("SELECT reltuples::float8 AS n FROM pg_class WHERE oid = to_regclass($1)")
                .bind(table)
                .fetch_optional(self.pool())
                .await?;
        Ok(match row {
            Some(row) => row.try_get::<f64, _>("n")?,
            None => 0.0,
        })
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
