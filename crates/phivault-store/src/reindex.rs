//! Rebuilding the blind search index when its format changes.
//!
//! The index format of a tenant is recorded in `index_formats`. Format 2 keys the tokens of
//! compartment-keyed parameters (`_security`) per compartment
//! ([`phivault_fhir::is_compartment_keyed`]); format 1 tokens of those parameters were equal in
//! every compartment, so a database reader could tell which patients carry a label, and the
//! searches of format 2 would no longer find them (a labelled resource would escape the label
//! filtering of searches). Format 3 indexes each date value by the year, month and day tokens
//! of its first and last day (`{param}:lo`, `{param}:hi`), which date range searches cover;
//! format 2 date tokens would not be found by them. Format 4 indexes number and quantity
//! values under their sign, exponent and leading-digit buckets (see
//! `phivault_fhir::search::number_range`), which number and quantity searches cover; format 3
//! has no such tokens. Format 5 adds the century and decade tokens of each date endpoint,
//! which date range searches now cover open ranges with; format 4 has none, so a range
//! spanning a whole decade would miss its values. So a tenant on an older format (an installation from before, or a
//! restored older archive) has every live resource's tokens recomputed from its sealed body
//! when the store opens, before anything is served, and only then is the format recorded.
//! Resources of erased compartments are skipped (their tokens are swept with them), and so is
//! a version that fails its integrity check (it is never served; the failure is logged).
//!
//! Not every change of the tokens needs a new format. Parameters that are the union of two
//! others (`combo-code`, `combo-value-quantity`, ...; see `phivault_fhir::search`) stopped
//! having tokens of their own without one: their searches look for their parts' tokens, which
//! every format-5 index holds. A resource indexed before keeps its now unused union tokens
//! until it is written again, deleted or erased, which remove all of a resource's tokens.

use phivault_fhir::{Id, ResourceType, index_entries_of};
use sqlx::Row;

use crate::resources::index_token;
use crate::{Store, StoreError};

/// The index format this code writes and searches.
pub(crate) const INDEX_FORMAT: i64 = 5;

/// Resources re-indexed per write transaction.
const BATCH: i64 = 200;

impl Store {
    /// The tenant's index format, `None` when none is recorded.
    pub(crate) async fn index_format(&self) -> Result<Option<i64>, StoreError> {
        Ok(
            sqlx::query("SELECT format FROM index_formats WHERE tenant = $1")
                .bind(&self.inner.tenant)
                .fetch_optional(&self.inner.pool)
                .await?
                .map(|r| r.try_get::<i64, _>("format"))
                .transpose()?,
        )
    }

    /// Brings the tenant's index to [`INDEX_FORMAT`], rebuilding it when it is older.
    /// Returns how many resources were re-indexed.
    pub(crate) async fn upgrade_index(&self) -> Result<u64, StoreError> {
        if self
            .index_format()
            .await?
            .is_some_and(|f| f >= INDEX_FORMAT)
        {
            return Ok(0);
        }
        let tenant = self.inner.tenant.clone();
        let mut done = 0u64;
        let mut after: (String, String) = (String::new(), String::new());
        loop {
            let rows = sqlx::query(
                "SELECT rtype, id, key_id FROM current_resources \
                 WHERE tenant = $1 AND deleted = 0 AND (rtype > $2 OR (rtype = $2 AND id > $3)) \
                 ORDER BY rtype, id LIMIT $4",
            )
            .bind(&tenant)
            .bind(&after.0)
            .bind(&after.1)
            .bind(BATCH)
            .fetch_all(&self.inner.pool)
            .await?;
            let Some(last) = rows.last() else {
                break;
            };
            after = (last.try_get("rtype")?, last.try_get("id")?);
            let mut batch = Vec::with_capacity(rows.len());
            for row in &rows {
                let rtype: String = row.try_get("rtype")?;
                let id: String = row.try_get("id")?;
                let key_id: String = row.try_get("key_id")?;
                let (Ok(rtype), Ok(id)) = (ResourceType::parse(&rtype), Id::parse(&id)) else {
                    continue;
                };
                let stored = match self.read(rtype, &id).await {
                    Ok(stored) => stored,
                    // Erased: swept with its compartment. Integrity failures are logged by
                    // the read and never served; nothing to index.
                    Err(StoreError::Erased { .. } | StoreError::Integrity { .. }) => continue,
                    Err(StoreError::NotFound { .. } | StoreError::Gone { .. }) => continue,
                    Err(e) => return Err(e),
                };
                let mut tokens: Vec<Vec<u8>> = index_entries_of(rtype, &stored.body)
                    .iter()
                    .map(|e| index_token(&self.inner.keys, &key_id, rtype, e))
                    .collect();
                tokens.sort();
                tokens.dedup();
                batch.push((rtype, id, stored.version, tokens));
            }
            let _guard = self.write_guard().await;
            let mut tx = self.begin_write().await?;
            for (rtype, id, version, tokens) in &batch {
                // Written meanwhile (another process): that write indexed it already.
                let current: Option<i64> = sqlx::query(
                    "SELECT version FROM current_resources WHERE tenant = $1 AND rtype = $2 \
                     AND id = $3",
                )
                .bind(&tenant)
                .bind(rtype.as_str())
                .bind(id.as_str())
                .fetch_optional(&mut *tx)
                .await?
                .map(|r| r.try_get::<i64, _>("version"))
                .transpose()?;
                if current != i64::try_from(*version).ok() {
                    continue;
                }
                self.replace_index_in(&mut tx, *rtype, id, tokens).await?;
                done += 1;
            }
            tx.commit().await?;
        }
        let _guard = self.write_guard().await;
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM index_formats WHERE tenant = $1")
            .bind(&tenant)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO index_formats (tenant, format) VALUES ($1, $2)")
            .bind(&tenant)
            .bind(INDEX_FORMAT)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        if done > 0 {
            tracing::info!(
                resources = done,
                format = INDEX_FORMAT,
                "search index rebuilt in the current format"
            );
        }
        Ok(done)
    }
}
