//! Key rotation without downtime (issue 7): a new key-encryption key (KEK) rewraps every
//! data key, in batches, while servers keep serving; the master key rewraps the KEKs.
//!
//! Only wrappings change, never key material: a data key unwrapped and cached by a running
//! server stays valid, and every ciphertext keeps opening. A running server creates new data
//! keys under the KEK active in the database at creation time and loads a KEK it has not seen
//! on first sight (reading the master key again if another process rotated it; see
//! `keys::Keyring::kek`).
//!
//! [`Store::rotate_keks`]:
//! 1. one transaction: when data keys are still under a non-active KEK (an interrupted
//!    rotation), keep the active KEK and resume; otherwise create a KEK wrapped by the master
//!    key and make it the only active one;
//! 2. rewrap the data keys under any other KEK, `batch_size` rows per write transaction, each
//!    row updated only if it still names the KEK it was read under (a key erased or rewrapped
//!    meanwhile is skipped);
//! 3. one transaction: delete the non-active KEKs no data key references and count the data
//!    keys still under one (a key created under the old KEK by a server that read it just
//!    before the switch); while any is left, go back to 2.
//!
//! A crash anywhere leaves every data key under a KEK that exists (the foreign key and step 3
//! see to it); the next `rotate_keks` resumes at step 2 without creating another KEK.

use phivault_crypto::{MasterKey, SecretKey};
use sqlx::Row;

use crate::keys::{DekRow, kek_aad};
use crate::{Backend, Store, StoreError};

/// How far a KEK rotation got, reported after each batch.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RotationProgress {
    /// The KEK data keys are rewrapped under.
    pub kek_id: String,
    /// Data keys rewrapped so far by this run.
    pub rewrapped: u64,
    /// Data keys that were under another KEK when this run started.
    pub pending_at_start: u64,
}

/// The outcome of [`Store::rotate_keks`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RotationReport {
    /// The active KEK, under which every data key now is.
    pub kek_id: String,
    /// True when this run finished an interrupted rotation instead of starting one.
    pub resumed: bool,
    /// Data keys rewrapped by this run.
    pub rewrapped: u64,
    /// The old KEKs deleted (ids).
    pub retired: Vec<String>,
    /// Whether the old wrappings and KEKs were also removed from the database files (false:
    /// the database was busy; [`Store::key_residue_pending`] stays true until a retry).
    pub residue_purged: bool,
}

/// One key-encryption key, as [`Store::key_status`] shows it (no key material).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KekStatus {
    /// Id.
    pub kek_id: String,
    /// Creation time, unix seconds.
    pub created_at: i64,
    /// Whether new data keys are wrapped under it.
    pub active: bool,
    /// Data keys wrapped under it (all tenants).
    pub data_keys: u64,
}

/// The key hierarchy's state (no key material).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyStatus {
    /// Every KEK, oldest first.
    pub keks: Vec<KekStatus>,
    /// Data keys by kind (`directory`, `index`, `patient`), all tenants.
    pub data_keys_by_kind: Vec<(String, u64)>,
    /// Data keys under a non-active KEK: an unfinished rotation when not 0.
    pub pending: u64,
}

fn count(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl Store {
    /// Rotates the key-encryption key: creates a new active KEK (or resumes an interrupted
    /// rotation), rewraps every data key under it, `batch_size` per transaction, and deletes
    /// the old KEKs. Servers keep serving meanwhile (see the module documentation). `progress`
    /// is called after each batch.
    pub async fn rotate_keks(
        &self,
        batch_size: usize,
        mut progress: impl FnMut(RotationProgress),
    ) -> Result<RotationReport, StoreError> {
        let batch = i64::try_from(batch_size.max(1)).unwrap_or(i64::MAX);
        let (kek_id, resumed) = self.start_kek_rotation().await?;
        let pending_at_start = self.pending_rewraps(&kek_id).await?;
        let mut rewrapped = 0;
        let mut retired = Vec::new();
        loop {
            // A key-id cursor walks the table once per pass (primary key order).
            let mut after = String::new();
            while let Some((n, last)) = self.rewrap_batch(&kek_id, &after, batch).await? {
                rewrapped += n;
                after = last;
                progress(RotationProgress {
                    kek_id: kek_id.clone(),
                    rewrapped,
                    pending_at_start,
                });
            }
            let (deleted, remaining) = self.retire_keks(&kek_id).await?;
            retired.extend(deleted);
            if remaining == 0 {
                break;
            }
        }
        tracing::info!(kek_id = %kek_id, rewrapped, resumed, "key-encryption key rotated");
        let residue_purged = self.purge_after_rotation().await;
        Ok(RotationReport {
            kek_id,
            resumed,
            rewrapped,
            retired,
            residue_purged,
        })
    }

    /// Step 1 of [`Store::rotate_keks`]: returns the KEK to rewrap under and whether an
    /// interrupted rotation is resumed (no new KEK). Checks first that the master key opens
    /// every KEK, so a new KEK is never wrapped under a stale master key.
    #[doc(hidden)]
    pub async fn start_kek_rotation(&self) -> Result<(String, bool), StoreError> {
        let keys = &self.inner.keys;
        let _guard = self.write_guard().await;
        let mut tx = self.begin_write().await?;
        self.lock_keks(&mut tx).await?;
        let rows = sqlx::query(
            "SELECT kek_id, wrapped, active FROM key_encryption_keys \
             ORDER BY created_at DESC, kek_id",
        )
        .fetch_all(&mut *tx)
        .await?;
        let mut active = None;
        for row in &rows {
            let kek_id: String = row.try_get("kek_id")?;
            let wrapped: Vec<u8> = row.try_get("wrapped")?;
            keys.open_kek(&kek_id, &wrapped)?;
            if row.try_get::<i64, _>("active")? != 0 && active.is_none() {
                active = Some(kek_id);
            }
        }
        if let Some(active) = active {
            let pending: i64 =
                sqlx::query("SELECT COUNT(*) AS n FROM data_keys WHERE kek_id <> $1")
                    .bind(&active)
                    .fetch_one(&mut *tx)
                    .await?
                    .try_get("n")?;
            if pending > 0 {
                // Only one active KEK from here on.
                sqlx::query("UPDATE key_encryption_keys SET active = 0 WHERE kek_id <> $1")
                    .bind(&active)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                return Ok((active, true));
            }
        }
        let kek_id = uuid::Uuid::new_v4().to_string();
        let key = SecretKey::generate()?;
        let wrapped = keys.master().key().wrap(&kek_aad(&kek_id), &key)?;
        let (_, now) = crate::now();
        sqlx::query("UPDATE key_encryption_keys SET active = 0")
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO key_encryption_keys (kek_id, wrapped, created_at, active) \
             VALUES ($1, $2, $3, 1)",
        )
        .bind(&kek_id)
        .bind(wrapped)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        keys.remember_kek(&kek_id, key);
        Ok((kek_id, false))
    }

    /// Step 2 of [`Store::rotate_keks`]: in one write transaction, rewraps under `kek_id`
    /// (which must still be the active KEK) the next `limit` data keys after key id `after`
    /// that are under another KEK. Returns the rows rewrapped and the last key id seen, or
    /// None when no such key is left after `after`.
    #[doc(hidden)]
    pub async fn rewrap_batch(
        &self,
        kek_id: &str,
        after: &str,
        limit: i64,
    ) -> Result<Option<(u64, String)>, StoreError> {
        let keys = &self.inner.keys;
        let pool = &self.inner.pool;
        let new_kek = keys
            .kek(pool, kek_id)
            .await?
            .ok_or_else(|| StoreError::Config(format!("key-encryption key {kek_id} is gone")))?;
        let _guard = self.write_guard().await;
        let mut tx = self.begin_write().await?;
        let share = match self.inner.backend {
            Backend::Postgres => " FOR SHARE",
            Backend::Sqlite => "",
        };
        let active: Option<i64> = sqlx::query(&format!(
            "SELECT active FROM key_encryption_keys WHERE kek_id = $1{share}"
        ))
        .bind(kek_id)
        .fetch_optional(&mut *tx)
        .await?
        .map(|r| r.try_get("active"))
        .transpose()?;
        if active.unwrap_or(0) == 0 {
            return Err(StoreError::Config(format!(
                "key-encryption key {kek_id} is no longer the active one (another rotation \
                 started); run the rotation again"
            )));
        }
        let rows = sqlx::query(
            "SELECT key_id, tenant, kind, owner, kek_id, wrapped FROM data_keys \
             WHERE kek_id <> $1 AND key_id > $2 ORDER BY key_id LIMIT $3",
        )
        .bind(kek_id)
        .bind(after)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        let mut last = None;
        let mut rewrapped = 0;
        for row in rows {
            let key_id: String = row.try_get("key_id")?;
            let tenant: String = row.try_get("tenant")?;
            let kind: String = row.try_get("kind")?;
            let owner: Vec<u8> = row.try_get("owner")?;
            let old_id: String = row.try_get("kek_id")?;
            let wrapped: Vec<u8> = row.try_get("wrapped")?;
            // The row's KEK exists (foreign key); this process may not have seen it yet.
            let old = keys.kek(pool, &old_id).await?.ok_or_else(|| {
                StoreError::Config(format!("unknown key-encryption key {old_id}"))
            })?;
            let dek = DekRow {
                tenant: &tenant,
                kind: &kind,
                key_id: &key_id,
                owner: &owner,
            };
            // Rewrapped in the current format: a key of the first format (owner not bound)
            // leaves it here.
            let secret = dek.unwrap(&old, &wrapped)?;
            let rewrapped_key = dek.wrap(&new_kek, &secret)?;
            rewrapped += sqlx::query(
                "UPDATE data_keys SET kek_id = $1, wrapped = $2 WHERE key_id = $3 AND kek_id = $4",
            )
            .bind(kek_id)
            .bind(rewrapped_key)
            .bind(&key_id)
            .bind(&old_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            last = Some(key_id);
        }
        tx.commit().await?;
        Ok(last.map(|l| (rewrapped, l)))
    }

    /// Step 3 of [`Store::rotate_keks`]: in one transaction, deletes the KEKs other than
    /// `kek_id` that no data key references, and counts the data keys still under one.
    async fn retire_keks(&self, kek_id: &str) -> Result<(Vec<String>, u64), StoreError> {
        let _guard = self.write_guard().await;
        let mut tx = self.begin_write().await?;
        // PostgreSQL: creators of data keys wait (their foreign key check) until this commits,
        // then find the old KEK gone and retry under the active one.
        self.lock_keks(&mut tx).await?;
        let unused = sqlx::query(
            "SELECT kek_id FROM key_encryption_keys k WHERE kek_id <> $1 \
             AND NOT EXISTS (SELECT 1 FROM data_keys d WHERE d.kek_id = k.kek_id)",
        )
        .bind(kek_id)
        .fetch_all(&mut *tx)
        .await?;
        let mut retired = Vec::new();
        for row in unused {
            let old: String = row.try_get("kek_id")?;
            sqlx::query("DELETE FROM key_encryption_keys WHERE kek_id = $1")
                .bind(&old)
                .execute(&mut *tx)
                .await?;
            retired.push(old);
        }
        let remaining: i64 = sqlx::query("SELECT COUNT(*) AS n FROM data_keys WHERE kek_id <> $1")
            .bind(kek_id)
            .fetch_one(&mut *tx)
            .await?
            .try_get("n")?;
        tx.commit().await?;
        Ok((retired, count(remaining)))
    }

    /// Rewraps data key `key_id` in the first wrapping format (owner not bound), as a
    /// database written by an older phivault holds it: for the tests of the upgrade path.
    #[doc(hidden)]
    pub async fn rewrap_in_first_format(&self, key_id: &str) -> Result<(), StoreError> {
        let keys = &self.inner.keys;
        let pool = &self.inner.pool;
        let row = sqlx::query(
            "SELECT tenant, kind, owner, kek_id, wrapped FROM data_keys WHERE key_id = $1",
        )
        .bind(key_id)
        .fetch_one(pool)
        .await?;
        let tenant: String = row.try_get("tenant")?;
        let kind: String = row.try_get("kind")?;
        let owner: Vec<u8> = row.try_get("owner")?;
        let kek_id: String = row.try_get("kek_id")?;
        let wrapped: Vec<u8> = row.try_get("wrapped")?;
        let kek = keys
            .kek(pool, &kek_id)
            .await?
            .ok_or_else(|| StoreError::Config(format!("unknown key-encryption key {kek_id}")))?;
        let dek = DekRow {
            tenant: &tenant,
            kind: &kind,
            key_id,
            owner: &owner,
        };
        let secret = dek.unwrap(&kek, &wrapped)?;
        sqlx::query("UPDATE data_keys SET wrapped = $1 WHERE key_id = $2")
            .bind(dek.wrap_v1(&kek, &secret)?)
            .bind(key_id)
            .execute(pool)
            .await?;
        Ok(())
    }

    /// The wrappings a rotation replaced (data keys under the old KEK, KEKs under the old
    /// master key, the deleted KEKs) leave the database files too: whoever holds the old key
    /// (the reason to rotate) must not find them there. Returns whether that completed.
    async fn purge_after_rotation(&self) -> bool {
        match self.purge_key_residue(crate::residue::KEY_TABLES).await {
            Ok(done) => done,
            Err(e) => {
                tracing::error!(error = %e, "removing replaced key wrappings from the database files failed");
                false
            }
        }
    }

    async fn pending_rewraps(&self, kek_id: &str) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query("SELECT COUNT(*) AS n FROM data_keys WHERE kek_id <> $1")
            .bind(kek_id)
            .fetch_one(&self.inner.pool)
            .await?
            .try_get("n")?;
        Ok(count(n))
    }

    /// PostgreSQL: locks the KEK table against other rotations and against new references
    /// to its rows until the transaction ends (SQLite: the write transaction does).
    async fn lock_keks(&self, conn: &mut sqlx::AnyConnection) -> Result<(), StoreError> {
        if self.inner.backend == Backend::Postgres {
            sqlx::query("LOCK TABLE key_encryption_keys IN EXCLUSIVE MODE")
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }

    /// Rewraps every KEK under `new` in one transaction (KEK material unchanged), and uses
    /// `new` from then on. Returns how many KEKs were rewrapped. Until the caller makes `new`
    /// the master key the provider returns, other processes cannot open KEKs they have not
    /// loaded yet; `phivault keys rotate-master` switches the key file right after.
    pub async fn rotate_master(&self, new: &MasterKey) -> Result<u64, StoreError> {
        let keys = &self.inner.keys;
        let _guard = self.write_guard().await;
        let mut tx = self.begin_write().await?;
        self.lock_keks(&mut tx).await?;
        let rows = sqlx::query("SELECT kek_id, wrapped FROM key_encryption_keys")
            .fetch_all(&mut *tx)
            .await?;
        let mut n = 0;
        for row in rows {
            let kek_id: String = row.try_get("kek_id")?;
            let wrapped: Vec<u8> = row.try_get("wrapped")?;
            let key = keys.open_kek(&kek_id, &wrapped)?;
            let rewrapped = new.key().wrap(&kek_aad(&kek_id), &key)?;
            n += sqlx::query("UPDATE key_encryption_keys SET wrapped = $1 WHERE kek_id = $2")
                .bind(rewrapped)
                .bind(&kek_id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        tx.commit().await?;
        keys.set_master(new.duplicate());
        tracing::info!(
            keks = n,
            "key-encryption keys rewrapped under a new master key"
        );
        self.purge_after_rotation().await;
        Ok(n)
    }

    /// Whether `master` opens every KEK in the database (and there is at least one).
    pub async fn master_opens_keks(&self, master: &MasterKey) -> Result<bool, StoreError> {
        let rows = sqlx::query("SELECT kek_id, wrapped FROM key_encryption_keys")
            .fetch_all(&self.inner.pool)
            .await?;
        let mut any = false;
        for row in rows {
            let kek_id: String = row.try_get("kek_id")?;
            let wrapped: Vec<u8> = row.try_get("wrapped")?;
            if master
                .key()
                .unwrap_key(&kek_aad(&kek_id), &wrapped)
                .is_err()
            {
                return Ok(false);
            }
            any = true;
        }
        Ok(any)
    }

    /// The key hierarchy: each KEK with the data keys it wraps, data keys by kind, and the
    /// data keys a rotation has still to rewrap.
    pub async fn key_status(&self) -> Result<KeyStatus, StoreError> {
        let pool = &self.inner.pool;
        let rows = sqlx::query(
            "SELECT k.kek_id AS kek_id, k.created_at AS created_at, k.active AS active, \
             (SELECT COUNT(*) FROM data_keys d WHERE d.kek_id = k.kek_id) AS n \
             FROM key_encryption_keys k ORDER BY k.created_at, k.kek_id",
        )
        .fetch_all(pool)
        .await?;
        let mut keks = Vec::new();
        for row in rows {
            keks.push(KekStatus {
                kek_id: row.try_get("kek_id")?,
                created_at: row.try_get("created_at")?,
                active: row.try_get::<i64, _>("active")? != 0,
                data_keys: count(row.try_get("n")?),
            });
        }
        let rows =
            sqlx::query("SELECT kind, COUNT(*) AS n FROM data_keys GROUP BY kind ORDER BY kind")
                .fetch_all(pool)
                .await?;
        let mut by_kind = Vec::new();
        for row in rows {
            by_kind.push((row.try_get("kind")?, count(row.try_get("n")?)));
        }
        let pending = keks.iter().filter(|k| !k.active).map(|k| k.data_keys).sum();
        Ok(KeyStatus {
            keks,
            data_keys_by_kind: by_kind,
            pending,
        })
    }
}
