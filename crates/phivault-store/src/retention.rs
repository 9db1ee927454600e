//! Retention: disposal of resources older than their type's retention period (issue 6).
//!
//! Data keys are per patient, so the retention of one resource type cannot shred a key.
//! A resource is disposed of instead by deleting, in one transaction per batch, every one of
//! its ciphertext rows (`resource_versions`, all versions, tombstones included), its blind
//! search tokens (`search_index`) and its current pointer (`current_resources`), and by
//! recording it in `retention_ledger` (ids, type, counts, times) and through the
//! [`AuditSink`] ([`WriteKind::Dispose`]), in the same transaction. Afterwards the resource
//! is as if it never existed: reads answer [`StoreError::NotFound`] (every read starts from
//! the pointer, so no integrity check meets a half-removed resource), searches and history
//! find nothing.
//!
//! Expiry is measured from the resource's last write (`current_resources.recorded_at`, unix
//! seconds, indexed): clinical dates (an Observation's `effectiveDateTime`, ...) are inside
//! the sealed bodies and cannot be queried without decrypting every resource.

use phivault_fhir::{Id, ResourceType};
use sqlx::Row;

use crate::{AuditSink, Store, StoreError, WriteKind, Written};

/// A retention period for one resource type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionRule {
    /// The resource type.
    pub rtype: ResourceType,
    /// How long after its last write a resource is kept, in seconds.
    pub max_age_secs: i64,
}

impl RetentionRule {
    /// The `recorded_at` (unix seconds) before which a resource of this type is expired at
    /// `now`.
    pub fn cutoff(&self, now: i64) -> i64 {
        now.saturating_sub(self.max_age_secs)
    }
}

/// What a retention run did (or, in a dry run, would do) for one resource type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionCount {
    /// The resource type.
    pub rtype: ResourceType,
    /// Resources disposed of (dry run: expired).
    pub resources: u64,
}

/// Resources one disposal transaction handles.
pub const DISPOSE_BATCH: usize = 200;

impl Store {
    /// How many resources of `rule`'s type are expired at `now` (unix seconds).
    pub async fn count_expired(&self, rule: &RetentionRule, now: i64) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query(
            "SELECT COUNT(*) AS n FROM current_resources \
             WHERE tenant = $1 AND rtype = $2 AND recorded_at < $3",
        )
        .bind(&self.inner.tenant)
        .bind(rule.rtype.as_str())
        .bind(rule.cutoff(now))
        .fetch_one(&self.inner.pool)
        .await?
        .try_get("n")?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// The ids of at most `limit` resources of `rule`'s type expired at `now`, oldest first.
    pub async fn expired(
        &self,
        rule: &RetentionRule,
        now: i64,
        limit: usize,
    ) -> Result<Vec<Id>, StoreError> {
        let rows = sqlx::query(
            "SELECT id FROM current_resources \
             WHERE tenant = $1 AND rtype = $2 AND recorded_at < $3 \
             ORDER BY recorded_at, id LIMIT $4",
        )
        .bind(&self.inner.tenant)
        .bind(rule.rtype.as_str())
        .bind(rule.cutoff(now))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.inner.pool)
        .await?;
        let mut ids = Vec::with_capacity(rows.len());
        for row in rows {
            let id: String = row.try_get("id")?;
            ids.push(Id::parse(&id).map_err(|_| {
                StoreError::Config(format!("stored {} id is not a FHIR id", rule.rtype))
            })?);
        }
        Ok(ids)
    }

    /// Disposes of one batch (at most `limit`) of the resources of `rule`'s type expired at
    /// `now`, in one transaction with the ledger rows and the audit entries (see the module
    /// documentation). Returns how many were disposed of; 0 when none is left. A resource
    /// written again since it was listed (no longer expired) is left alone.
    pub async fn dispose_batch(
        &self,
        rule: &RetentionRule,
        now: i64,
        limit: usize,
        audit: &dyn AuditSink,
    ) -> Result<u64, StoreError> {
        let tenant = &self.inner.tenant;
        let cutoff = rule.cutoff(now);
        let rtype = rule.rtype.as_str();
        let _guard = self.write_guard().await;
        let mut tx = self.begin_write().await?;
        if let Some(kind) = crate::generations::of_type(rtype) {
            crate::generations::bump(&mut tx, tenant, kind).await?;
        }
        let rows = sqlx::query(
            "SELECT id, version, recorded_at FROM current_resources \
             WHERE tenant = $1 AND rtype = $2 AND recorded_at < $3 \
             ORDER BY recorded_at, id LIMIT $4",
        )
        .bind(tenant)
        .bind(rtype)
        .bind(cutoff)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&mut *tx)
        .await?;
        let mut written = Vec::with_capacity(rows.len());
        for row in rows {
            let id: String = row.try_get("id")?;
            let version: i64 = row.try_get("version")?;
            let recorded_at: i64 = row.try_get("recorded_at")?;
            // The pointer first, still expired: a concurrent write (PostgreSQL) either
            // committed before (then the pointer is newer and is kept) or waits for this one.
            let gone = sqlx::query(
                "DELETE FROM current_resources \
                 WHERE tenant = $1 AND rtype = $2 AND id = $3 AND recorded_at < $4",
            )
            .bind(tenant)
            .bind(rtype)
            .bind(&id)
            .bind(cutoff)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if gone != 1 {
                continue;
            }
            let versions = sqlx::query(
                "DELETE FROM resource_versions WHERE tenant = $1 AND rtype = $2 AND id = $3",
            )
            .bind(tenant)
            .bind(rtype)
            .bind(&id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            sqlx::query("DELETE FROM search_index WHERE tenant = $1 AND rtype = $2 AND id = $3")
                .bind(tenant)
                .bind(rtype)
                .bind(&id)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO retention_ledger \
                 (tenant, rtype, id, versions, last_recorded_at, disposed_at) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(tenant)
            .bind(rtype)
            .bind(&id)
            .bind(i64::try_from(versions).unwrap_or(i64::MAX))
            .bind(recorded_at)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            let id = Id::parse(&id).map_err(|_| {
                StoreError::Config(format!("stored {} id is not a FHIR id", rule.rtype))
            })?;
            written.push(Written {
                kind: WriteKind::Dispose,
                rtype: rule.rtype,
                id,
                version: u64::try_from(version).unwrap_or(0),
                // The compartment is inside the sealed body; disposal does not decrypt.
                patient: None,
            });
        }
        if written.is_empty() {
            tx.rollback().await?;
            return Ok(0);
        }
        audit.record(&mut tx, &written).await?;
        tx.commit().await?;
        Ok(written.len() as u64)
    }

    /// Applies `rules` at `now` (unix seconds): per rule, disposes of every expired resource in
    /// batches of [`DISPOSE_BATCH`], or with `dry_run` only counts them. Returns one count per
    /// rule, in the rules' order.
    pub async fn run_retention(
        &self,
        rules: &[RetentionRule],
        now: i64,
        dry_run: bool,
        audit: &dyn AuditSink,
    ) -> Result<Vec<RetentionCount>, StoreError> {
        let mut out = Vec::with_capacity(rules.len());
        for rule in rules {
            let resources = if dry_run {
                self.count_expired(rule, now).await?
            } else {
                let mut total = 0;
                loop {
                    let n = self.dispose_batch(rule, now, DISPOSE_BATCH, audit).await?;
                    total += n;
                    if n == 0 {
                        break;
                    }
                }
                total
            };
            out.push(RetentionCount {
                rtype: rule.rtype,
                resources,
            });
        }
        Ok(out)
    }
}
