//! Erasure by crypto-shredding (DESIGN.md invariant 6).
//!
//! [`Store::erase_patient`] runs one transaction whose work does not depend on how many
//! resources the patient has:
//! 1. lock the row of the patient's data key (`SELECT ... FOR UPDATE` on PostgreSQL; on
//!    SQLite the transaction is `BEGIN IMMEDIATE`, which holds the database's write lock);
//! 2. count the resources whose current version is sealed under that key (one COUNT over the
//!    `current_resources (key_id)` index: no row is read into Rust);
//! 3. delete the key's row: the only copy of the wrapped key, so every version sealed under it
//!    (every version of the compartment, tombstones included) can never be opened again;
//! 4. delete the patient's traces outside the compartment: break-the-glass records, care
//!    grants, tokens launched for the patient, and unlink patient accounts (one indexed
//!    statement each; see `erase_traces`);
//! 5. record the erasure in the ledger (`erasures`: key id, owner token, time, count), and
//!    let the audit sink record it, both in the same transaction;
//! 6. after the commit and before answering, purge the deleted bytes from the database files
//!    (SQLite: truncating WAL checkpoint over `secure_delete` pages; PostgreSQL: `VACUUM
//!    FULL` of the key tables and the changed account tables; see `residue.rs`). When the
//!    database is too busy for that, the erasure stands and the purge is retried
//!    ([`Store::key_residue_pending`]).
//!
//! What stays, and why:
//! - the ciphertext rows (`resource_versions`): unreadable without the key, and deleting them
//!   would cost one row per version;
//! - the current-version pointers (`current_resources`): they hold type, id, version and key
//!   id, no PHI; kept, a read of an erased resource answers [`StoreError::Erased`] (410)
//!   instead of a 404 that would look like it never existed;
//! - the blind search tokens (`search_index`) until the sweep: HMAC tokens under the tenant's
//!   index key, which the erasure does not destroy, so whoever holds that key could still
//!   confirm a guessed value (a name, an identifier) against an erased resource id. They
//!   are deleted after the erasure commits by [`Store::sweep_erasures`] (one bounded batch per
//!   transaction, so a patient with many resources does not hold the write lock for long);
//!   until then, searches leave out every resource whose key is in the ledger, so nothing of
//!   an erased patient is ever found.
//!
//! Concurrency: every write checks, inside its transaction, that the row of the key it seals
//! with still exists (on PostgreSQL taking `FOR KEY SHARE` on it, which an erasure's
//! `FOR UPDATE` waits for and which waits for an erasure): a write that commits before the
//! erasure is erased with it (and counted), a write after it is refused with
//! [`StoreError::PatientErased`]. A new key is never created for a patient in the ledger.
//!
//! The in-memory cache of unwrapped keys: the erasing process drops the key once the erasure
//! has committed. Another process (a CLI next to a running server) may still hold it in its
//! cache, but never uses it for an erased key: every read query returns, with each version
//! row, whether its key's row still exists, and a version whose key row is gone is not opened
//! (the cache is not consulted); every write checks the key row in its transaction. So a
//! shredded key cannot serve data in any process after the erasure commits. The other process
//! also drops the key from its memory on its first read or write that meets the erasure, and
//! a long-running one evicts erased keys periodically ([`Store::evict_erased_keys`]; the
//! server does it every few seconds).

use phivault_fhir::{Id, ResourceType};
use sqlx::{AnyConnection, Row};

use crate::{AuditSink, Backend, Store, StoreError, WriteKind, Written};

/// What an erasure did: what the signed erasure certificate states. Ids only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErasureRecord {
    /// The tenant.
    pub tenant: String,
    /// The erased patient.
    pub patient: Id,
    /// The id of the destroyed data key.
    pub key_id: String,
    /// When, in unix milliseconds.
    pub erased_at_ms: i64,
    /// When, as an RFC 3339 instant (UTC, milliseconds).
    pub erased_at: String,
    /// Resources whose current version was sealed under the key (deleted ones included).
    pub resources: u64,
}

/// What a sweep of erased compartments did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Erasures whose sweep finished in this run.
    pub erasures: u64,
    /// Search index rows deleted.
    pub index_rows: u64,
}

/// Resources whose index tokens one sweep transaction deletes.
const SWEEP_BATCH: i64 = 500;

fn now_ms() -> (i64, String) {
    let t = time::OffsetDateTime::now_utc();
    let t = t
        .replace_nanosecond(t.millisecond() as u32 * 1_000_000)
        .unwrap_or(t);
    let ms = i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX);
    let text = t
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_owned());
    (ms, text)
}

impl Store {
    /// Erases `patient` by destroying their data key, in one transaction (see the module
    /// documentation); `audit` records the erasure in it (one [`Written`] of kind
    /// [`WriteKind::Erase`]). Errors: [`StoreError::NotFound`] when the patient has no data
    /// (no key), [`StoreError::AlreadyErased`] when they were erased before.
    pub async fn erase_patient(
        &self,
        patient: &Id,
        audit: &dyn AuditSink,
    ) -> Result<ErasureRecord, StoreError> {
        let tenant = &self.inner.tenant;
        let owner = self.inner.keys.patient_owner(patient);
        let _guard = self.write_guard().await;
        let mut tx = self.begin_write().await?;
        let lock = match self.inner.backend {
            Backend::Postgres => " FOR UPDATE",
            Backend::Sqlite => "",
        };
        let row = sqlx::query(&format!(
            "SELECT key_id FROM data_keys WHERE tenant = $1 AND kind = 'patient' AND owner = $2{lock}"
        ))
        .bind(tenant)
        .bind(owner.clone())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            let erased =
                sqlx::query("SELECT key_id FROM erasures WHERE tenant = $1 AND owner = $2")
                    .bind(tenant)
                    .bind(owner)
                    .fetch_optional(&mut *tx)
                    .await?
                    .is_some();
            return Err(if erased {
                StoreError::AlreadyErased {
                    patient: patient.to_string(),
                }
            } else {
                StoreError::NotFound {
                    rtype: ResourceType::PATIENT.to_string(),
                    id: patient.to_string(),
                }
            });
        };
        let key_id: String = row.try_get("key_id")?;
        let resources: i64 =
            sqlx::query("SELECT COUNT(*) AS n FROM current_resources WHERE key_id = $1")
                .bind(&key_id)
                .fetch_one(&mut *tx)
                .await?
                .try_get("n")?;
        let done = sqlx::query("DELETE FROM data_keys WHERE key_id = $1")
            .bind(&key_id)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() != 1 {
            return Err(StoreError::Conflict {
                rtype: ResourceType::PATIENT.to_string(),
                id: patient.to_string(),
            });
        }
        let traces = self.erase_traces(&mut tx, patient).await?;
        let (erased_at_ms, erased_at) = now_ms();
        sqlx::query(
            "INSERT INTO erasures (key_id, tenant, owner, erased_at, resources, index_swept_at) \
             VALUES ($1, $2, $3, $4, $5, NULL)",
        )
        .bind(&key_id)
        .bind(tenant)
        .bind(owner)
        .bind(erased_at_ms)
        .bind(resources)
        .execute(&mut *tx)
        .await?;
        audit
            .record(
                &mut tx,
                &[Written {
                    kind: WriteKind::Erase,
                    rtype: ResourceType::PATIENT,
                    id: patient.clone(),
                    version: 0,
                    patient: Some(patient.clone()),
                }],
            )
            .await?;
        tx.commit().await?;
        self.inner.keys.forget(&key_id, patient);
        tracing::info!(key_id = %key_id, resources, "patient data key destroyed (erasure)");
        // The wrapped key (and the traces) must leave the database files before the erasure
        // is answered: the bytes plus the master key would open the compartment again.
        let mut tables: Vec<&'static str> = crate::residue::KEY_TABLES.to_vec();
        tables.extend(traces);
        match self.purge_key_residue(&tables).await {
            Ok(true) => {}
            Ok(false) => tracing::warn!(
                key_id = %key_id,
                "the erased key's bytes are still in the database files (database busy); \
                 the purge is retried"
            ),
            Err(e) => tracing::error!(
                key_id = %key_id,
                error = %e,
                "removing the erased key's bytes from the database files failed; retried later"
            ),
        }
        Ok(ErasureRecord {
            tenant: tenant.clone(),
            patient: patient.clone(),
            key_id,
            erased_at_ms,
            erased_at,
            resources: u64::try_from(resources).unwrap_or(0),
        })
    }

    /// Inside the erasure's transaction: removes what outside the compartment names the
    /// patient or serves their care: break-the-glass records (patient id in the clear, reason
    /// sealed under the directory key, which the erasure does not destroy), care grants,
    /// access tokens launched for the patient (deleted: a token without its launch patient
    /// would reach further, not less far), and the link of a patient account to the patient
    /// (the account stays, linked to no one, so it opens nothing), and the launch patient of
    /// OAuth2 clients registered for the patient (the client is disabled in the same
    /// statement: like a token, a client without its launch patient would reach further), and
    /// the authorization codes and EHR launch contexts naming the patient (deleted: they
    /// would give tokens launched for the patient).
    /// Returns the tables changed, whose residue is then purged from the files.
    async fn erase_traces(
        &self,
        conn: &mut AnyConnection,
        patient: &Id,
    ) -> Result<Vec<&'static str>, StoreError> {
        let tenant = &self.inner.tenant;
        let statements: [(&'static str, &str); 6] = [
            (
                "break_glass",
                "DELETE FROM break_glass WHERE tenant = $1 AND patient_id = $2",
            ),
            (
                "care_grants",
                "DELETE FROM care_grants WHERE tenant = $1 AND patient_id = $2",
            ),
            (
                "tokens",
                "DELETE FROM tokens WHERE tenant = $1 AND launch_patient = $2",
            ),
            (
                "users",
                "UPDATE users SET patient_id = NULL WHERE tenant = $1 AND patient_id = $2",
            ),
            (
                "oauth_codes",
                "DELETE FROM oauth_codes WHERE tenant = $1 AND launch_patient = $2",
            ),
            (
                "smart_launches",
                "DELETE FROM smart_launches WHERE tenant = $1 AND patient_id = $2",
            ),
        ];
        let mut changed = Vec::new();
        // Tokens deleted, clients disabled, patient accounts unlinked: what authenticating a
        // token answers changes with this transaction.
        crate::generations::bump(&mut *conn, tenant, crate::Generation::Auth).await?;
        // The patient's consents become unreadable: a server's memo of them is stale.
        crate::generations::bump(&mut *conn, tenant, crate::Generation::Consent).await?;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let clients = sqlx::query(
            "UPDATE oauth_clients SET launch_patient = NULL, \
             disabled_at = COALESCE(disabled_at, $3) \
             WHERE tenant = $1 AND launch_patient = $2",
        )
        .bind(tenant)
        .bind(patient.as_str())
        .bind(now)
        .execute(&mut *conn)
        .await?
        .rows_affected();
        if clients > 0 {
            changed.push("oauth_clients");
        }
        for (table, sql) in statements {
            let n = sqlx::query(sql)
                .bind(tenant)
                .bind(patient.as_str())
                .execute(&mut *conn)
                .await?
                .rows_affected();
            if n > 0 {
                changed.push(table);
            }
        }
        Ok(changed)
    }

    /// How many of the data keys this store holds (in the database and in its cache) open the
    /// version row `rtype/id/version` (sealed bytes `sealed`, stored with key id `key_id` and
    /// deletion flag `deleted`), trying each key both under the row's key id and under its own
    /// in the associated data. For the tests that prove an erasure: 0 for every row of an
    /// erased compartment.
    #[doc(hidden)]
    pub async fn keys_that_open(
        &self,
        rtype: &str,
        id: &str,
        version: i64,
        deleted: bool,
        key_id: &str,
        sealed: &[u8],
    ) -> Result<usize, StoreError> {
        let tenant = &self.inner.tenant;
        let sealers = self.inner.keys.every_sealer(&self.inner.pool).await?;
        Ok(sealers
            .iter()
            .filter(|(own_id, sealer)| {
                [key_id, own_id.as_str()].iter().any(|k| {
                    let aad = crate::resources::aad(tenant, rtype, id, version, deleted, k);
                    sealer.open(&aad, sealed).is_ok()
                })
            })
            .count())
    }

    /// Drops from this process's key cache every key erased (by any process) after
    /// `since_ms` (unix milliseconds; 0 for all); returns the latest erasure time seen, to pass
    /// next time. A long-running process (the server) calls it periodically, so a key erased
    /// by another process (`phivault erase`) leaves its memory within that period even if it
    /// never touches the compartment again; reads and writes never use such a key meanwhile.
    pub async fn evict_erased_keys(&self, since_ms: i64) -> Result<i64, StoreError> {
        let rows = sqlx::query(
            "SELECT key_id, erased_at FROM erasures WHERE tenant = $1 AND erased_at >= $2",
        )
        .bind(&self.inner.tenant)
        .bind(since_ms)
        .fetch_all(&self.inner.pool)
        .await?;
        let mut latest = since_ms;
        for row in rows {
            let key_id: String = row.try_get("key_id")?;
            latest = latest.max(row.try_get::<i64, _>("erased_at")?);
            self.inner.keys.forget_key(&key_id);
        }
        Ok(latest)
    }

    /// Whether `patient` was erased (their key owner token is in the ledger).
    pub async fn is_erased(&self, patient: &Id) -> Result<bool, StoreError> {
        let owner = self.inner.keys.patient_owner(patient);
        self.inner.keys.owner_erased(&self.inner.pool, &owner).await
    }

    /// Deletes the blind search tokens of erased compartments whose sweep has not finished, a
    /// bounded batch of resources per transaction, and marks each erasure swept once none is
    /// left. Idempotent; safe to run at any time and from any process (`phivault erase` runs
    /// it after the erasure, the server in the background after each `$erase`).
    pub async fn sweep_erasures(&self) -> Result<SweepReport, StoreError> {
        let pending = sqlx::query(
            "SELECT key_id FROM erasures WHERE tenant = $1 AND index_swept_at IS NULL \
             ORDER BY erased_at",
        )
        .bind(&self.inner.tenant)
        .fetch_all(&self.inner.pool)
        .await?;
        let mut report = SweepReport::default();
        for row in pending {
            let key_id: String = row.try_get("key_id")?;
            // Pointers are never deleted, so the cursor (rtype, id) walks them once.
            let mut after: (String, String) = (String::new(), String::new());
            loop {
                let _guard = self.write_guard().await;
                let mut tx = self.begin_write().await?;
                let (rows, last) = self.sweep_batch(&mut tx, &key_id, &after).await?;
                report.index_rows += rows;
                match last {
                    Some(last) => {
                        tx.commit().await?;
                        after = last;
                    }
                    None => {
                        let (now, _) = now_ms();
                        sqlx::query("UPDATE erasures SET index_swept_at = $1 WHERE key_id = $2")
                            .bind(now)
                            .bind(&key_id)
                            .execute(&mut *tx)
                            .await?;
                        tx.commit().await?;
                        report.erasures += 1;
                        break;
                    }
                }
            }
        }
        Ok(report)
    }

    /// Deletes the index rows of the next batch of resources of `key_id` after `after`;
    /// returns the rows deleted and the last resource of the batch (None when none was left).
    async fn sweep_batch(
        &self,
        conn: &mut AnyConnection,
        key_id: &str,
        after: &(String, String),
    ) -> Result<(u64, Option<(String, String)>), StoreError> {
        let batch = sqlx::query(
            "SELECT rtype, id FROM current_resources \
             WHERE tenant = $1 AND key_id = $2 AND (rtype > $3 OR (rtype = $3 AND id > $4)) \
             ORDER BY rtype, id LIMIT $5",
        )
        .bind(&self.inner.tenant)
        .bind(key_id)
        .bind(&after.0)
        .bind(&after.1)
        .bind(SWEEP_BATCH)
        .fetch_all(&mut *conn)
        .await?;
        let mut deleted = 0;
        let mut last = None;
        for row in batch {
            let rtype: String = row.try_get("rtype")?;
            let id: String = row.try_get("id")?;
            deleted += sqlx::query(
                "DELETE FROM search_index WHERE tenant = $1 AND rtype = $2 AND id = $3",
            )
            .bind(&self.inner.tenant)
            .bind(&rtype)
            .bind(&id)
            .execute(&mut *conn)
            .await?
            .rows_affected();
            last = Some((rtype, id));
        }
        Ok((deleted, last))
    }

    /// Inside a write transaction: the data key `key_id` still exists. On PostgreSQL its row
    /// is locked (`FOR KEY SHARE`) until the transaction ends, so an erasure waits for this
    /// write (and erases it too) or this write waits for the erasure (and is refused).
    /// Refused with [`StoreError::PatientErased`] when the key of `patient`'s compartment is
    /// gone.
    pub(crate) async fn hold_key_in(
        &self,
        conn: &mut AnyConnection,
        key_id: &str,
        patient: Option<&Id>,
    ) -> Result<(), StoreError> {
        let lock = match self.inner.backend {
            Backend::Postgres => " FOR KEY SHARE",
            Backend::Sqlite => "",
        };
        let found = sqlx::query(&format!(
            "SELECT key_id FROM data_keys WHERE key_id = $1{lock}"
        ))
        .bind(key_id)
        .fetch_optional(&mut *conn)
        .await?
        .is_some();
        if found {
            return Ok(());
        }
        self.inner.keys.forget_key(key_id);
        match patient {
            Some(p) => Err(StoreError::PatientErased {
                patient: p.to_string(),
            }),
            None => Err(StoreError::Config(format!("data key {key_id} is missing"))),
        }
    }

    /// The error for a version whose data key row is gone: [`StoreError::Erased`] when the
    /// erasure ledger names the key, else an integrity failure (a key removed without an
    /// erasure is tampering).
    pub(crate) async fn key_missing(
        &self,
        rtype: ResourceType,
        id: &Id,
        version: i64,
        key_id: &str,
    ) -> StoreError {
        let erased = sqlx::query("SELECT key_id FROM erasures WHERE key_id = $1")
            .bind(key_id)
            .fetch_optional(&self.inner.pool)
            .await;
        match erased {
            Ok(Some(_)) => {
                // Erased by another process: this one lets go of the key too.
                self.inner.keys.forget_key(key_id);
                StoreError::Erased {
                    rtype: rtype.to_string(),
                    id: id.to_string(),
                }
            }
            Ok(None) => self.integrity(rtype, id, version, "data key missing"),
            Err(e) => StoreError::from(e),
        }
    }
}
