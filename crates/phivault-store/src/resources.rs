//! Versioned resources: create, read, vread, update, delete, history.
//!
//! Each version row holds `sealed = AES-256-GCM(data key, body)` with associated data binding
//! tenant, type, id, version, deletion flag and key id. A deletion is a version too, sealing a
//! small tombstone, so its flag cannot be flipped unnoticed. `current_resources` points at the
//! latest version; a read cross-checks pointer, version row and the highest version stored.

use std::sync::Arc;

use phivault_crypto::Sealer;
use phivault_fhir::{
    Id, ResourceType, ValidResource, check_patient_links, compartment_patient,
    compartment_patient_of, index_entries, is_compartment_keyed,
};
use phivault_policy::{Action, Authorized};
use serde_json::{Value, json};
use sqlx::{AnyConnection, Row};

use crate::keys::{DataKey, Owner};
use crate::released::{Unreleased, check_write};
use crate::{AuditSink, HistoryEntry, Store, StoreError, StoredResource, WriteKind, Written};

/// A resource ready to be written: its key and index tokens are known, its version not yet.
pub(crate) struct Prepared {
    pub(crate) resource: ValidResource,
    pub(crate) id: Id,
    key: DataKey,
    tokens: Vec<Vec<u8>>,
    pub(crate) patient: Option<Id>,
}

/// What a put did.
pub(crate) struct PutOutcome {
    pub(crate) stored: StoredResource,
    pub(crate) created: bool,
    pub(crate) patient: Option<Id>,
}

impl PutOutcome {
    /// What the audit sink is told about this write.
    pub(crate) fn written(&self) -> Written {
        Written {
            kind: if self.created {
                WriteKind::Create
            } else {
                WriteKind::Update
            },
            rtype: self.stored.rtype,
            id: self.stored.id.clone(),
            version: self.stored.version,
            patient: self.patient.clone(),
        }
    }
}

/// What a deletion did: the tombstone's version and the compartment of the last live version.
pub(crate) struct DeleteOutcome {
    pub(crate) version: u64,
    pub(crate) patient: Option<Id>,
}

pub(crate) fn aad(
    tenant: &str,
    rtype: &str,
    id: &str,
    version: i64,
    deleted: bool,
    key_id: &str,
) -> Vec<u8> {
    format!(
        "phivault/v1|{tenant}|{rtype}|{id}|{version}|{}|{key_id}",
        u8::from(deleted)
    )
    .into_bytes()
}

/// The blind token of one index entry of a resource sealed under the data key `key_id`:
/// keyed per compartment for the compartment-keyed parameters (`_security`), per tenant
/// otherwise.
pub(crate) fn index_token(
    keys: &crate::keys::Keyring,
    key_id: &str,
    rtype: ResourceType,
    e: &phivault_fhir::IndexEntry,
) -> Vec<u8> {
    if is_compartment_keyed(&e.param) {
        keys.compartment_token(key_id, rtype.as_str(), &e.param, &e.value)
    } else {
        keys.search_token(rtype.as_str(), &e.param, &e.value)
    }
}

/// Index rows written by one INSERT (well under both drivers' bind-parameter limits).
const INDEX_ROWS_PER_INSERT: usize = 200;

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl Store {
    /// Begins a write transaction. On SQLite it is `BEGIN IMMEDIATE`: the database's write
    /// lock is taken at the start (waiting up to the busy timeout for another process, e.g.
    /// `phivault import` next to a running server), so a transaction that reads and then
    /// writes (the audit tail, a current version) cannot fail half-way with a stale snapshot.
    /// In this process the caller also holds [`Store::write_lock`].
    pub async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, StoreError> {
        Ok(match self.inner.backend {
            crate::Backend::Sqlite => self.inner.pool.begin_with("BEGIN IMMEDIATE").await?,
            crate::Backend::Postgres => self.inner.pool.begin().await?,
        })
    }

    pub(crate) async fn write_guard(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        match &self.inner.write_lock {
            Some(l) => Some(l.lock().await),
            None => None,
        }
    }

    /// Computes the compartment key and the index tokens of a resource that will get `id`.
    pub(crate) async fn prepare(
        &self,
        resource: ValidResource,
        id: Id,
    ) -> Result<Prepared, StoreError> {
        let rtype = resource.resource_type();
        // A patient named in any other form than `Patient/{id}` would leave the resource
        // outside the patient's compartment (unreadable by them, not exported, not erased):
        // whatever the write path, such a resource is refused, never stored less protected.
        check_patient_links(&resource)?;
        let patient = if rtype == ResourceType::PATIENT {
            Some(id.clone())
        } else {
            compartment_patient(&resource)
        };
        let owner = match &patient {
            Some(p) => Owner::Patient(p.clone()),
            None => Owner::Directory,
        };
        let key = self
            .inner
            .keys
            .data_key(&self.inner.pool, self.inner.write_lock.as_ref(), &owner)
            .await?;
        let keys = &self.inner.keys;
        let mut tokens: Vec<Vec<u8>> = index_entries(&resource)
            .iter()
            .map(|e| index_token(keys, &key.key_id, rtype, e))
            .collect();
        tokens.sort();
        tokens.dedup();
        Ok(Prepared {
            resource,
            id,
            key,
            tokens,
            patient,
        })
    }

    /// Creates a resource with a new server-assigned id; `audit` records the write in its
    /// transaction. Proof-free: for the master key's holder (import) and tests; the server
    /// uses [`Store::create_authorized`].
    pub async fn create(
        &self,
        resource: ValidResource,
        audit: &dyn AuditSink,
    ) -> Result<StoredResource, StoreError> {
        self.create_checked(resource, Id::generate(), None, audit)
            .await
    }

    /// Creates a resource with the new id `id` (chosen by the caller, so that a new Patient
    /// is decided on the id it will get), when `proof` allows creating it in the compartment
    /// the store computes from the body.
    pub async fn create_authorized(
        &self,
        proof: &Authorized,
        id: Id,
        resource: ValidResource,
        audit: &dyn AuditSink,
    ) -> Result<StoredResource, StoreError> {
        self.create_checked(resource, id, Some(proof), audit).await
    }

    async fn create_checked(
        &self,
        resource: ValidResource,
        id: Id,
        proof: Option<&Authorized>,
        audit: &dyn AuditSink,
    ) -> Result<StoredResource, StoreError> {
        let prepared = self.prepare(resource, id).await?;
        if let Some(proof) = proof {
            check_write(
                proof,
                &[Action::Create],
                prepared.resource.resource_type(),
                prepared.patient.as_ref(),
            )?;
        }
        let _guard = self.write_guard().await;
        let mut tx = self.begin_write().await?;
        let out = self.put_in(&mut tx, prepared, None, true).await?;
        audit.record(&mut tx, &[out.written()]).await?;
        tx.commit().await?;
        Ok(out.stored)
    }

    /// Updates (or creates, when unknown) the resource `id`. With `if_match`, the current
    /// version must be that one. Returns the stored resource and whether it was created;
    /// `audit` records the write in its transaction. Proof-free: for the master key's holder
    /// and tests; the server uses [`Store::update_authorized`].
    pub async fn update(
        &self,
        id: &Id,
        resource: ValidResource,
        if_match: Option<u64>,
        audit: &dyn AuditSink,
    ) -> Result<(StoredResource, bool), StoreError> {
        self.update_checked(id, resource, if_match, None, audit)
            .await
    }

    /// [`Store::update`] when `proof` allows an update (or, for a resource that does not
    /// exist yet, a create) of the new body in the compartment the store computes from it.
    /// The caller decides on the version it replaces as well.
    pub async fn update_authorized(
        &self,
        proof: &Authorized,
        id: &Id,
        resource: ValidResource,
        if_match: Option<u64>,
        audit: &dyn AuditSink,
    ) -> Result<(StoredResource, bool), StoreError> {
        self.update_checked(id, resource, if_match, Some(proof), audit)
            .await
    }

    async fn update_checked(
        &self,
        id: &Id,
        resource: ValidResource,
        if_match: Option<u64>,
        proof: Option<&Authorized>,
        audit: &dyn AuditSink,
    ) -> Result<(StoredResource, bool), StoreError> {
        let prepared = self.prepare(resource, id.clone()).await?;
        if let Some(proof) = proof {
            check_write(
                proof,
                &[Action::Update, Action::Create],
                prepared.resource.resource_type(),
                prepared.patient.as_ref(),
            )?;
        }
        let _guard = self.write_guard().await;
        let mut tx = self.begin_write().await?;
        let out = self.put_in(&mut tx, prepared, if_match, false).await?;
        audit.record(&mut tx, &[out.written()]).await?;
        tx.commit().await?;
        Ok((out.stored, out.created))
    }

    /// Deletes (softly: history keeps every version). Returns the deletion's version, or
    /// `None` when the resource was already deleted (nothing is written, nothing recorded);
    /// `audit` records a deletion in its transaction. Proof-free: for the master key's holder
    /// and tests; the server uses [`Store::delete_authorized`].
    pub async fn delete(
        &self,
        rtype: ResourceType,
        id: &Id,
        audit: &dyn AuditSink,
    ) -> Result<Option<u64>, StoreError> {
        self.delete_checked(rtype, id, None, audit).await
    }

    /// [`Store::delete`] when `proof` allows deleting it from the compartment its live
    /// version lies in (checked inside the transaction, before the tombstone commits).
    pub async fn delete_authorized(
        &self,
        proof: &Authorized,
        rtype: ResourceType,
        id: &Id,
        audit: &dyn AuditSink,
    ) -> Result<Option<u64>, StoreError> {
        self.delete_checked(rtype, id, Some(proof), audit).await
    }

    async fn delete_checked(
        &self,
        rtype: ResourceType,
        id: &Id,
        proof: Option<&Authorized>,
        audit: &dyn AuditSink,
    ) -> Result<Option<u64>, StoreError> {
        let _guard = self.write_guard().await;
        let mut tx = self.begin_write().await?;
        let Some(out) = self.delete_in(&mut tx, rtype, id).await? else {
            return Ok(None);
        };
        if let Some(proof) = proof {
            // Dropping the transaction rolls the tombstone back.
            check_write(proof, &[Action::Delete], rtype, out.patient.as_ref())?;
        }
        audit
            .record(
                &mut tx,
                &[Written {
                    kind: WriteKind::Delete,
                    rtype,
                    id: id.clone(),
                    version: out.version,
                    patient: out.patient,
                }],
            )
            .await?;
        tx.commit().await?;
        Ok(Some(out.version))
    }

    /// Reads the current version. Proof-free: for the master key's holder and tests; the
    /// server uses [`Store::read_unreleased`].
    ///
    /// The row is read on a pooled connection that goes back to the pool before the version
    /// is opened: opening may read a data key that is not cached yet (on another pooled
    /// connection), and a read holding one connection while waiting for a second would, with
    /// as many concurrent reads as the pool has connections, wait for the pool's timeout.
    pub async fn read(&self, rtype: ResourceType, id: &Id) -> Result<StoredResource, StoreError> {
        match self.current_row(&self.inner.pool, rtype, id).await? {
            Some(row) => self.open_current(rtype, id, &row).await,
            None => Err(self.not_current(&self.inner.pool, rtype, id).await),
        }
    }

    /// Reads the current version, held until a decision on its facts releases it.
    pub async fn read_unreleased(
        &self,
        rtype: ResourceType,
        id: &Id,
    ) -> Result<Unreleased<StoredResource>, StoreError> {
        self.read(rtype, id).await.map(Unreleased::stored)
    }

    /// Reads one version, held until a decision on its facts releases it.
    pub async fn vread_unreleased(
        &self,
        rtype: ResourceType,
        id: &Id,
        version: u64,
    ) -> Result<Unreleased<StoredResource>, StoreError> {
        self.vread(rtype, id, version).await.map(Unreleased::stored)
    }

    /// [`Store::history`], each version held until a decision on its own facts releases it
    /// (versions may lie in other compartments, or carry other labels, than the current one).
    pub async fn history_unreleased(
        &self,
        rtype: ResourceType,
        id: &Id,
        count: usize,
        offset: usize,
    ) -> Result<(u64, Vec<Unreleased<HistoryEntry>>), StoreError> {
        let (total, versions) = self.history(rtype, id, count, offset).await?;
        Ok((
            total,
            versions
                .into_iter()
                .map(|v| Unreleased::version(rtype, v))
                .collect(),
        ))
    }

    /// The current version number of a live resource (`None`: never written, or deleted),
    /// from the current-version pointer alone (nothing is decrypted).
    pub async fn current_version(
        &self,
        rtype: ResourceType,
        id: &Id,
    ) -> Result<Option<u64>, StoreError> {
        let row = sqlx::query(
            "SELECT version, deleted FROM current_resources \
             WHERE tenant = $1 AND rtype = $2 AND id = $3",
        )
        .bind(&self.inner.tenant)
        .bind(rtype.as_str())
        .bind(id.as_str())
        .fetch_optional(&self.inner.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let deleted: i64 = row.try_get("deleted")?;
        let version: i64 = row.try_get("version")?;
        Ok((deleted == 0)
            .then(|| u64::try_from(version).ok())
            .flatten())
    }

    /// Reads one version. Proof-free: for the master key's holder and tests; the server uses
    /// [`Store::vread_unreleased`].
    pub async fn vread(
        &self,
        rtype: ResourceType,
        id: &Id,
        version: u64,
    ) -> Result<StoredResource, StoreError> {
        let row = sqlx::query(
            "SELECT v.key_id AS key_id, v.sealed AS sealed, v.deleted AS deleted, \
                    (SELECT COUNT(*) FROM data_keys k WHERE k.key_id = v.key_id) AS key_live, \
                    (SELECT COUNT(*) FROM current_resources c WHERE c.tenant = v.tenant \
                      AND c.rtype = v.rtype AND c.id = v.id) AS has_current \
             FROM resource_versions v \
             WHERE v.tenant = $1 AND v.rtype = $2 AND v.id = $3 AND v.version = $4",
        )
        .bind(&self.inner.tenant)
        .bind(rtype.as_str())
        .bind(id.as_str())
        .bind(to_i64(version))
        .fetch_optional(&self.inner.pool)
        .await?;
        let Some(row) = row else {
            return Err(StoreError::VersionNotFound {
                rtype: rtype.to_string(),
                id: id.to_string(),
                version,
            });
        };
        if row.try_get::<i64, _>("has_current")? == 0 {
            return Err(self.integrity(rtype, id, to_i64(version), NO_POINTER));
        }
        let key_id: String = row.try_get("key_id")?;
        let sealed: Vec<u8> = row.try_get("sealed")?;
        let deleted: i64 = row.try_get("deleted")?;
        let key_live = row.try_get::<i64, _>("key_live")? > 0;
        let body = self
            .open_version_text(
                rtype,
                id,
                to_i64(version),
                deleted != 0,
                &key_id,
                &sealed,
                key_live,
            )
            .await?;
        if deleted != 0 {
            return Err(StoreError::Gone {
                rtype: rtype.to_string(),
                id: id.to_string(),
                version,
            });
        }
        Ok(stored_from(rtype, id, version, body))
    }

    /// Every version of a resource, newest first (at most `count`, skipping `offset`).
    /// Proof-free: for the master key's holder and tests; the server uses
    /// [`Store::history_unreleased`].
    pub async fn history(
        &self,
        rtype: ResourceType,
        id: &Id,
        count: usize,
        offset: usize,
    ) -> Result<(u64, Vec<HistoryEntry>), StoreError> {
        let total: i64 = sqlx::query(
            "SELECT COUNT(*) AS n FROM resource_versions WHERE tenant = $1 AND rtype = $2 AND id = $3",
        )
        .bind(&self.inner.tenant)
        .bind(rtype.as_str())
        .bind(id.as_str())
        .fetch_one(&self.inner.pool)
        .await?
        .try_get("n")?;
        if total == 0 {
            return Err(StoreError::NotFound {
                rtype: rtype.to_string(),
                id: id.to_string(),
            });
        }
        if let Some(latest) = self.pointerless(&self.inner.pool, rtype, id).await? {
            return Err(self.integrity(rtype, id, latest, NO_POINTER));
        }
        let rows = sqlx::query(
            "SELECT v.version AS version, v.key_id AS key_id, v.sealed AS sealed, \
                    v.deleted AS deleted, \
                    (SELECT COUNT(*) FROM data_keys k WHERE k.key_id = v.key_id) AS key_live \
             FROM resource_versions v \
             WHERE v.tenant = $1 AND v.rtype = $2 AND v.id = $3 ORDER BY v.version DESC \
             LIMIT $4 OFFSET $5",
        )
        .bind(&self.inner.tenant)
        .bind(rtype.as_str())
        .bind(id.as_str())
        .bind(i64::try_from(count).unwrap_or(i64::MAX))
        .bind(i64::try_from(offset).unwrap_or(i64::MAX))
        .fetch_all(&self.inner.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let version: i64 = row.try_get("version")?;
            let key_id: String = row.try_get("key_id")?;
            let sealed: Vec<u8> = row.try_get("sealed")?;
            let deleted = row.try_get::<i64, _>("deleted")? != 0;
            let key_live = row.try_get::<i64, _>("key_live")? > 0;
            let body = self
                .open_version(rtype, id, version, deleted, &key_id, &sealed, key_live)
                .await?;
            let last_updated = last_updated_of(&body, deleted);
            out.push(HistoryEntry {
                version: to_u64(version),
                last_updated,
                deleted,
                body: (!deleted).then_some(body),
            });
        }
        Ok((to_u64(total), out))
    }

    /// Writes a new version of a prepared resource inside a transaction.
    pub(crate) async fn put_in(
        &self,
        conn: &mut AnyConnection,
        prepared: Prepared,
        if_match: Option<u64>,
        create_only: bool,
    ) -> Result<PutOutcome, StoreError> {
        let Prepared {
            mut resource,
            id,
            key,
            tokens,
            patient,
        } = prepared;
        let rtype = resource.resource_type();
        let tenant = &self.inner.tenant;
        // The key may have been erased since it was looked up (or cached): checked, and on
        // PostgreSQL locked against an erasure, inside this transaction.
        self.hold_key_in(conn, &key.key_id, patient.as_ref())
            .await?;
        if let Some(kind) = crate::generations::of_type(rtype.as_str()) {
            // What a server keeps of the tenant's consents is stale once this commits.
            crate::generations::bump(conn, tenant, kind).await?;
        }
        let current = if create_only {
            None
        } else {
            sqlx::query(
                "SELECT version FROM current_resources WHERE tenant = $1 AND rtype = $2 AND id = $3",
            )
            .bind(tenant)
            .bind(rtype.as_str())
            .bind(id.as_str())
            .fetch_optional(&mut *conn)
            .await?
            .map(|r| r.try_get::<i64, _>("version"))
            .transpose()?
        };
        if let Some(expected) = if_match {
            let cur = current.map(to_u64).unwrap_or(0);
            if cur != expected {
                return Err(StoreError::PreconditionFailed {
                    rtype: rtype.to_string(),
                    id: id.to_string(),
                    expected,
                    current: cur,
                });
            }
        }
        let version = current.unwrap_or(0) + 1;
        let (now_text, now_secs) = crate::now();
        resource.stamp(&id, to_u64(version), &now_text);
        let plaintext = serde_json::to_vec(resource.body())
            .map_err(|e| StoreError::Config(format!("cannot serialize a resource: {e}")))?;
        let sealed = key.sealer.seal(
            &aad(
                tenant,
                rtype.as_str(),
                id.as_str(),
                version,
                false,
                &key.key_id,
            ),
            &plaintext,
        )?;
        sqlx::query(
            "INSERT INTO resource_versions \
             (tenant, rtype, id, version, key_id, sealed, deleted, recorded_at) \
             VALUES ($1, $2, $3, $4, $5, $6, 0, $7)",
        )
        .bind(tenant)
        .bind(rtype.as_str())
        .bind(id.as_str())
        .bind(version)
        .bind(&key.key_id)
        .bind(sealed)
        .bind(now_secs)
        .execute(&mut *conn)
        .await
        .map_err(|e| conflict_or(e, rtype, &id))?;
        match current {
            None => {
                sqlx::query(
                    "INSERT INTO current_resources \
                     (tenant, rtype, id, version, key_id, deleted, recorded_at) \
                     VALUES ($1, $2, $3, $4, $5, 0, $6)",
                )
                .bind(tenant)
                .bind(rtype.as_str())
                .bind(id.as_str())
                .bind(version)
                .bind(&key.key_id)
                .bind(now_secs)
                .execute(&mut *conn)
                .await
                .map_err(|e| conflict_or(e, rtype, &id))?;
            }
            Some(old) => {
                let done = sqlx::query(
                    "UPDATE current_resources SET version = $1, key_id = $2, deleted = 0, \
                     recorded_at = $3 WHERE tenant = $4 AND rtype = $5 AND id = $6 AND version = $7",
                )
                .bind(version)
                .bind(&key.key_id)
                .bind(now_secs)
                .bind(tenant)
                .bind(rtype.as_str())
                .bind(id.as_str())
                .bind(old)
                .execute(&mut *conn)
                .await?;
                if done.rows_affected() != 1 {
                    return Err(StoreError::Conflict {
                        rtype: rtype.to_string(),
                        id: id.to_string(),
                    });
                }
                self.drop_index_in(conn, rtype, &id).await?;
            }
        }
        self.insert_index_in(conn, rtype, &id, &tokens).await?;
        self.inner
            .resource_writes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let version = to_u64(version);
        Ok(PutOutcome {
            stored: StoredResource::new(rtype, id, version, now_text, resource.into_body()),
            created: current.is_none(),
            patient,
        })
    }

    /// Inserts the index tokens of a resource.
    async fn insert_index_in(
        &self,
        conn: &mut AnyConnection,
        rtype: ResourceType,
        id: &Id,
        tokens: &[Vec<u8>],
    ) -> Result<(), StoreError> {
        // One statement per chunk of tokens instead of one per token: `tenant`, `rtype` and
        // `id` are bound once as $1..$3, tokens follow as $4...
        for chunk in tokens.chunks(INDEX_ROWS_PER_INSERT) {
            let values: Vec<String> = (0..chunk.len())
                .map(|i| format!("($1, $2, ${}, $3)", i + 4))
                .collect();
            let sql = format!(
                "INSERT INTO search_index (tenant, rtype, token, id) VALUES {}",
                values.join(", ")
            );
            let mut q = sqlx::query(&sql)
                .bind(&self.inner.tenant)
                .bind(rtype.as_str())
                .bind(id.as_str());
            for token in chunk {
                q = q.bind(token.as_slice());
            }
            q.execute(&mut *conn).await?;
        }
        Ok(())
    }

    /// Replaces every index token of a resource (rebuilding the index in a new format).
    pub(crate) async fn replace_index_in(
        &self,
        conn: &mut AnyConnection,
        rtype: ResourceType,
        id: &Id,
        tokens: &[Vec<u8>],
    ) -> Result<(), StoreError> {
        self.drop_index_in(conn, rtype, id).await?;
        self.insert_index_in(conn, rtype, id, tokens).await
    }

    async fn drop_index_in(
        &self,
        conn: &mut AnyConnection,
        rtype: ResourceType,
        id: &Id,
    ) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM search_index WHERE tenant = $1 AND rtype = $2 AND id = $3")
            .bind(&self.inner.tenant)
            .bind(rtype.as_str())
            .bind(id.as_str())
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    /// Deletes inside a transaction.
    pub(crate) async fn delete_in(
        &self,
        conn: &mut AnyConnection,
        rtype: ResourceType,
        id: &Id,
    ) -> Result<Option<DeleteOutcome>, StoreError> {
        let tenant = &self.inner.tenant;
        let row = sqlx::query(
            "SELECT version, key_id, deleted FROM current_resources \
             WHERE tenant = $1 AND rtype = $2 AND id = $3",
        )
        .bind(tenant)
        .bind(rtype.as_str())
        .bind(id.as_str())
        .fetch_optional(&mut *conn)
        .await?;
        let Some(row) = row else {
            return Err(StoreError::NotFound {
                rtype: rtype.to_string(),
                id: id.to_string(),
            });
        };
        let old: i64 = row.try_get("version")?;
        let key_id: String = row.try_get("key_id")?;
        if row.try_get::<i64, _>("deleted")? != 0 {
            return Ok(None);
        }
        // The compartment of the version being deleted, for the audit trail; reading it also
        // checks its integrity before a tombstone is stacked on it.
        let live = self.read_in(conn, rtype, id).await?;
        let patient = compartment_patient_of(rtype, &live.body);
        if let Some(kind) = crate::generations::of_type(rtype.as_str()) {
            crate::generations::bump(conn, tenant, kind).await?;
        }
        self.hold_key_in(conn, &key_id, patient.as_ref()).await?;
        let sealer = self.sealer_of(rtype, id, old, &key_id).await?;
        let version = old + 1;
        let (now_text, now_secs) = crate::now();
        let tombstone = serde_json::to_vec(&json!({ "deleted": true, "lastUpdated": now_text }))
            .map_err(|e| StoreError::Config(format!("cannot serialize a tombstone: {e}")))?;
        let sealed = sealer.seal(
            &aad(tenant, rtype.as_str(), id.as_str(), version, true, &key_id),
            &tombstone,
        )?;
        sqlx::query(
            "INSERT INTO resource_versions \
             (tenant, rtype, id, version, key_id, sealed, deleted, recorded_at) \
             VALUES ($1, $2, $3, $4, $5, $6, 1, $7)",
        )
        .bind(tenant)
        .bind(rtype.as_str())
        .bind(id.as_str())
        .bind(version)
        .bind(&key_id)
        .bind(sealed)
        .bind(now_secs)
        .execute(&mut *conn)
        .await
        .map_err(|e| conflict_or(e, rtype, id))?;
        let done = sqlx::query(
            "UPDATE current_resources SET version = $1, deleted = 1, recorded_at = $2 \
             WHERE tenant = $3 AND rtype = $4 AND id = $5 AND version = $6",
        )
        .bind(version)
        .bind(now_secs)
        .bind(tenant)
        .bind(rtype.as_str())
        .bind(id.as_str())
        .bind(old)
        .execute(&mut *conn)
        .await?;
        if done.rows_affected() != 1 {
            return Err(StoreError::Conflict {
                rtype: rtype.to_string(),
                id: id.to_string(),
            });
        }
        self.drop_index_in(conn, rtype, id).await?;
        Ok(Some(DeleteOutcome {
            version: to_u64(version),
            patient,
        }))
    }

    /// Reads the current version through `conn` (inside or outside a transaction).
    pub(crate) async fn read_in(
        &self,
        conn: &mut AnyConnection,
        rtype: ResourceType,
        id: &Id,
    ) -> Result<StoredResource, StoreError> {
        match self.current_row(&mut *conn, rtype, id).await? {
            Some(row) => self.open_current(rtype, id, &row).await,
            None => Err(self.not_current(&mut *conn, rtype, id).await),
        }
    }

    /// The row of a resource's current version (pointer, version, sealed body, whether its
    /// data key still exists), or None when it has no current pointer.
    async fn current_row<'c, E>(
        &self,
        conn: E,
        rtype: ResourceType,
        id: &Id,
    ) -> Result<Option<sqlx::any::AnyRow>, StoreError>
    where
        E: sqlx::Executor<'c, Database = sqlx::Any>,
    {
        Ok(sqlx::query(
            "SELECT c.version AS cur, c.deleted AS cur_deleted, c.key_id AS cur_key, \
                    v.version AS v_version, v.key_id AS key_id, v.sealed AS sealed, \
                    v.deleted AS deleted, \
                    (SELECT MAX(m.version) FROM resource_versions m \
                      WHERE m.tenant = c.tenant AND m.rtype = c.rtype AND m.id = c.id) AS max_version, \
                    (SELECT COUNT(*) FROM data_keys k WHERE k.key_id = c.key_id) AS key_live \
             FROM current_resources c \
             LEFT JOIN resource_versions v ON v.tenant = c.tenant AND v.rtype = c.rtype \
                  AND v.id = c.id AND v.version = c.version \
             WHERE c.tenant = $1 AND c.rtype = $2 AND c.id = $3",
        )
        .bind(&self.inner.tenant)
        .bind(rtype.as_str())
        .bind(id.as_str())
        .fetch_optional(conn)
        .await?)
    }

    /// Why a resource without a current pointer cannot be read: an integrity failure when it
    /// has versions (its pointer was deleted behind the store's back), else not found.
    async fn not_current<'c, E>(&self, conn: E, rtype: ResourceType, id: &Id) -> StoreError
    where
        E: sqlx::Executor<'c, Database = sqlx::Any>,
    {
        match self.pointerless(conn, rtype, id).await {
            Ok(Some(latest)) => self.integrity(rtype, id, latest, NO_POINTER),
            Ok(None) => StoreError::NotFound {
                rtype: rtype.to_string(),
                id: id.to_string(),
            },
            Err(e) => e,
        }
    }

    /// The newest stored version of a resource that has versions but no current pointer
    /// (`None` when it has a pointer, or no version at all). Every write keeps a pointer
    /// beside the versions, and a disposal removes both in one transaction: versions without
    /// a pointer mean a pointer was deleted behind the store's back, which must not turn a
    /// stored resource into a silent 404 while its history still serves it.
    async fn pointerless<'c, E>(
        &self,
        conn: E,
        rtype: ResourceType,
        id: &Id,
    ) -> Result<Option<i64>, StoreError>
    where
        E: sqlx::Executor<'c, Database = sqlx::Any>,
    {
        let row = sqlx::query(
            "SELECT MAX(v.version) AS latest FROM resource_versions v \
             WHERE v.tenant = $1 AND v.rtype = $2 AND v.id = $3 AND NOT EXISTS \
               (SELECT 1 FROM current_resources c \
                 WHERE c.tenant = v.tenant AND c.rtype = v.rtype AND c.id = v.id)",
        )
        .bind(&self.inner.tenant)
        .bind(rtype.as_str())
        .bind(id.as_str())
        .fetch_one(conn)
        .await?;
        Ok(row.try_get::<Option<i64>, _>("latest")?)
    }

    /// Opens a row of the current-version query (shared by read and search).
    pub(crate) async fn open_current(
        &self,
        rtype: ResourceType,
        id: &Id,
        row: &sqlx::any::AnyRow,
    ) -> Result<StoredResource, StoreError> {
        let cur: i64 = row.try_get("cur")?;
        let cur_deleted: i64 = row.try_get("cur_deleted")?;
        let cur_key: String = row.try_get("cur_key")?;
        let v_version: Option<i64> = row.try_get("v_version")?;
        let max_version: Option<i64> = row.try_get("max_version")?;
        let key_id: Option<String> = row.try_get("key_id")?;
        let sealed: Option<Vec<u8>> = row.try_get("sealed")?;
        let deleted: Option<i64> = row.try_get("deleted")?;
        let key_live = row.try_get::<i64, _>("key_live")? > 0;
        let consistent = v_version == Some(cur)
            && max_version == Some(cur)
            && deleted == Some(cur_deleted)
            && key_id.as_deref() == Some(cur_key.as_str());
        let (Some(key_id), Some(sealed), true) = (key_id, sealed, consistent) else {
            return Err(self.integrity(rtype, id, cur, "current pointer disagrees with versions"));
        };
        let is_deleted = cur_deleted != 0;
        let body = self
            .open_version_text(rtype, id, cur, is_deleted, &key_id, &sealed, key_live)
            .await?;
        if is_deleted {
            return Err(StoreError::Gone {
                rtype: rtype.to_string(),
                id: id.to_string(),
                version: to_u64(cur),
            });
        }
        Ok(stored_from(rtype, id, to_u64(cur), body))
    }

    async fn sealer_of(
        &self,
        rtype: ResourceType,
        id: &Id,
        version: i64,
        key_id: &str,
    ) -> Result<Arc<Sealer>, StoreError> {
        match self.inner.keys.sealer(&self.inner.pool, key_id).await? {
            Some(sealer) => Ok(sealer),
            None => Err(self.key_missing(rtype, id, version, key_id).await),
        }
    }

    /// Decrypts a version row and checks that its content belongs where it was found.
    /// `key_live` says whether the row of its data key existed when the row was read (same
    /// query): when not, the key is never taken from the cache, and the version is
    /// [`StoreError::Erased`] when the erasure ledger names the key (an integrity failure
    /// otherwise).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn open_version(
        &self,
        rtype: ResourceType,
        id: &Id,
        version: i64,
        deleted: bool,
        key_id: &str,
        sealed: &[u8],
        key_live: bool,
    ) -> Result<Value, StoreError> {
        self.open_version_text(rtype, id, version, deleted, key_id, sealed, key_live)
            .await
            .map(|opened| opened.body)
    }

    /// [`Self::open_version`], keeping the JSON text too.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn open_version_text(
        &self,
        rtype: ResourceType,
        id: &Id,
        version: i64,
        deleted: bool,
        key_id: &str,
        sealed: &[u8],
        key_live: bool,
    ) -> Result<Opened, StoreError> {
        if !key_live {
            return Err(self.key_missing(rtype, id, version, key_id).await);
        }
        let sealer = self.sealer_of(rtype, id, version, key_id).await?;
        let aad = aad(
            &self.inner.tenant,
            rtype.as_str(),
            id.as_str(),
            version,
            deleted,
            key_id,
        );
        let plain = sealer
            .open(&aad, sealed)
            .map_err(|_| self.integrity(rtype, id, version, "ciphertext does not open"))?;
        let body: Value = serde_json::from_slice(&plain)
            .map_err(|_| self.integrity(rtype, id, version, "plaintext is not JSON"))?;
        if !deleted {
            let ok = body.get("resourceType").and_then(Value::as_str) == Some(rtype.as_str())
                && body.get("id").and_then(Value::as_str) == Some(id.as_str())
                && body
                    .pointer("/meta/versionId")
                    .and_then(Value::as_str)
                    .and_then(|v| v.parse::<i64>().ok())
                    == Some(version);
            if !ok {
                return Err(self.integrity(rtype, id, version, "content does not match its row"));
            }
        }
        Ok(Opened { body, json: plain })
    }

    /// Logs an integrity failure (ids only, no content) and builds the error.
    pub(crate) fn integrity(
        &self,
        rtype: ResourceType,
        id: &Id,
        version: i64,
        why: &'static str,
    ) -> StoreError {
        tracing::error!(
            target: "phivault::integrity",
            tenant = %self.inner.tenant,
            rtype = %rtype,
            id = %id,
            version,
            why,
            "stored data failed its integrity check; not served"
        );
        StoreError::Integrity {
            rtype: rtype.to_string(),
            id: id.to_string(),
        }
    }
}

/// Why a resource with versions but no current pointer is refused.
const NO_POINTER: &str = "versions exist without a current pointer";

fn last_updated_of(body: &Value, deleted: bool) -> String {
    let ptr = if deleted {
        "/lastUpdated"
    } else {
        "/meta/lastUpdated"
    };
    body.pointer(ptr)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

fn stored_from(rtype: ResourceType, id: &Id, version: u64, opened: Opened) -> StoredResource {
    StoredResource::new(
        rtype,
        id.clone(),
        version,
        last_updated_of(&opened.body, false),
        opened.body,
    )
    .with_stored_json(opened.json)
}

/// A version decrypted and checked: the body and the JSON text it was parsed from.
pub(crate) struct Opened {
    pub(crate) body: Value,
    pub(crate) json: Vec<u8>,
}

/// A unique-key violation on a version row means a concurrent writer took that version.
fn conflict_or(e: sqlx::Error, rtype: ResourceType, id: &Id) -> StoreError {
    if let sqlx::Error::Database(db) = &e
        && db.kind() == sqlx::error::ErrorKind::UniqueViolation
    {
        return StoreError::Conflict {
            rtype: rtype.to_string(),
            id: id.to_string(),
        };
    }
    StoreError::from(e)
}
