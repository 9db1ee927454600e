//! Wrapped keys in the database, unwrapped keys in memory.
//!
//! Key-encryption keys are stored wrapped by the master key; data keys (one per patient
//! compartment, one directory key per tenant) and the tenant's index key are stored wrapped
//! by a key-encryption key. A patient's data key is found by a blind token of the patient id,
//! so the table does not link key ids to patient ids in the clear.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use phivault_crypto::{IndexKey, MasterKey, Sealer, SecretKey};
use phivault_fhir::Id;
use sqlx::{AnyPool, Row};

use crate::StoreError;

const KIND_PATIENT: &str = "patient";
const KIND_DIRECTORY: &str = "directory";
const KIND_INDEX: &str = "index";

/// Whose data a key protects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Owner {
    /// A patient compartment.
    Patient(Id),
    /// Resources outside any compartment.
    Directory,
}

/// A data key ready for use.
#[derive(Clone)]
pub(crate) struct DataKey {
    pub(crate) key_id: String,
    pub(crate) sealer: Arc<Sealer>,
}

/// Upper bound of cached unwrapped data keys before the cache is emptied.
const CACHE_LIMIT: usize = 200_000;

pub(crate) struct Keyring {
    tenant: String,
    kek_id: String,
    keks: HashMap<String, SecretKey>,
    index: IndexKey,
    by_id: RwLock<HashMap<String, Arc<Sealer>>>,
    by_owner: RwLock<HashMap<[u8; 32], String>>,
}

pub(crate) fn kek_aad(kek_id: &str) -> Vec<u8> {
    format!("phivault/kek|{kek_id}").into_bytes()
}

fn dek_aad(tenant: &str, kind: &str, key_id: &str) -> Vec<u8> {
    format!("phivault/dek|{tenant}|{kind}|{key_id}").into_bytes()
}

impl Keyring {
    /// Loads the key-encryption keys (creating the first), and the tenant's index key.
    pub(crate) async fn load(
        pool: &AnyPool,
        write_lock: Option<&tokio::sync::Mutex<()>>,
        master: MasterKey,
        tenant: &str,
    ) -> Result<Keyring, StoreError> {
        let _guard = match write_lock {
            Some(l) => Some(l.lock().await),
            None => None,
        };
        let rows = sqlx::query(
            "SELECT kek_id, wrapped, active FROM key_encryption_keys ORDER BY created_at",
        )
        .fetch_all(pool)
        .await?;
        let mut keks = HashMap::new();
        let mut active = None;
        for row in rows {
            let kek_id: String = row.try_get("kek_id")?;
            let wrapped: Vec<u8> = row.try_get("wrapped")?;
            let is_active: i64 = row.try_get("active")?;
            let key = master
                .key()
                .unwrap_key(&kek_aad(&kek_id), &wrapped)
                .map_err(|_| {
                    StoreError::Config(format!(
                        "key-encryption key {kek_id} does not open with this master key \
                         (wrong master key file?)"
                    ))
                })?;
            if is_active != 0 {
                active = Some(kek_id.clone());
            }
            keks.insert(kek_id, key);
        }
        let kek_id = match active {
            Some(id) => id,
            None => {
                let id = uuid::Uuid::new_v4().to_string();
                let key = SecretKey::generate()?;
                let wrapped = master.key().wrap(&kek_aad(&id), &key)?;
                // Another process may have created one meanwhile (PostgreSQL): then use it.
                let (_, now) = crate::now();
                sqlx::query(
                    "INSERT INTO key_encryption_keys (kek_id, wrapped, created_at, active) \
                     VALUES ($1, $2, $3, 1)",
                )
                .bind(&id)
                .bind(wrapped)
                .bind(now)
                .execute(pool)
                .await?;
                keks.insert(id.clone(), key);
                id
            }
        };
        let mut ring = Keyring {
            tenant: tenant.to_owned(),
            kek_id,
            keks,
            // Replaced below once the index key is loaded.
            index: IndexKey::new(&SecretKey::generate()?),
            by_id: RwLock::new(HashMap::new()),
            by_owner: RwLock::new(HashMap::new()),
        };
        let index_secret = ring.load_or_create_secret(pool, KIND_INDEX, &[]).await?;
        ring.index = IndexKey::new(&index_secret.1);
        Ok(ring)
    }

    /// The blind token of a search value.
    pub(crate) fn search_token(&self, rtype: &str, param: &str, value: &str) -> Vec<u8> {
        self.index
            .token(&["search", &self.tenant, rtype, param, value])
            .to_vec()
    }

    /// The blind token of a directory value such as a username: HMAC under the tenant's index
    /// key of (`directory`, tenant, `kind`, `value`), so a value of one kind never matches a
    /// value of another kind, a search token or a key owner. The caller normalizes `value`.
    pub(crate) fn directory_token(&self, kind: &str, value: &str) -> Vec<u8> {
        self.index
            .token(&["directory", &self.tenant, kind, value])
            .to_vec()
    }

    /// The blind owner token of a patient's data key (for compartment-restricted searches).
    pub(crate) fn patient_owner(&self, patient: &Id) -> Vec<u8> {
        self.owner_token(&Owner::Patient(patient.clone())).1
    }

    fn owner_token(&self, owner: &Owner) -> (&'static str, Vec<u8>) {
        match owner {
            Owner::Patient(id) => (
                KIND_PATIENT,
                self.index
                    .token(&["patient-key", &self.tenant, id.as_str()])
                    .to_vec(),
            ),
            Owner::Directory => (KIND_DIRECTORY, Vec::new()),
        }
    }

    /// The data key of `owner`, created on first use. Call outside a write transaction.
    pub(crate) async fn data_key(
        &self,
        pool: &AnyPool,
        write_lock: Option<&tokio::sync::Mutex<()>>,
        owner: &Owner,
    ) -> Result<DataKey, StoreError> {
        let (kind, token) = self.owner_token(owner);
        let cache_key = phivault_crypto::sha256(&[kind.as_bytes(), b"|", &token].concat());
        let known = self
            .by_owner
            .read()
            .ok()
            .and_then(|m| m.get(&cache_key).cloned());
        if let Some(key_id) = known
            && let Some(sealer) = self.cached(&key_id)
        {
            return Ok(DataKey { key_id, sealer });
        }
        let found = self.find_owned(pool, kind, &token).await?;
        let (key_id, secret) = match found {
            Some(x) => x,
            None => {
                // An erased patient never gets a new key: their compartment stays closed.
                if let Owner::Patient(patient) = owner
                    && self.owner_erased(pool, &token).await?
                {
                    return Err(StoreError::PatientErased {
                        patient: patient.to_string(),
                    });
                }
                let _guard = match write_lock {
                    Some(l) => Some(l.lock().await),
                    None => None,
                };
                self.load_or_create_secret(pool, kind, &token).await?
            }
        };
        let sealer = Arc::new(Sealer::new(&secret)?);
        self.remember(&key_id, sealer.clone());
        if let Ok(mut m) = self.by_owner.write() {
            if m.len() > CACHE_LIMIT {
                m.clear();
            }
            m.insert(cache_key, key_id.clone());
        }
        Ok(DataKey { key_id, sealer })
    }

    /// The sealer of a data key by id (for reading).
    pub(crate) async fn sealer(
        &self,
        pool: &AnyPool,
        key_id: &str,
    ) -> Result<Option<Arc<Sealer>>, StoreError> {
        if let Some(s) = self.cached(key_id) {
            return Ok(Some(s));
        }
        let row = sqlx::query(
            "SELECT kind, kek_id, wrapped FROM data_keys WHERE key_id = $1 AND tenant = $2",
        )
        .bind(key_id)
        .bind(&self.tenant)
        .fetch_optional(pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let kind: String = row.try_get("kind")?;
        let kek_id: String = row.try_get("kek_id")?;
        let wrapped: Vec<u8> = row.try_get("wrapped")?;
        let secret = self.unwrap(&kind, key_id, &kek_id, &wrapped)?;
        let sealer = Arc::new(Sealer::new(&secret)?);
        self.remember(key_id, sealer.clone());
        Ok(Some(sealer))
    }

    /// Whether the patient key owner `token` is in the erasure ledger.
    pub(crate) async fn owner_erased(
        &self,
        pool: &AnyPool,
        token: &[u8],
    ) -> Result<bool, StoreError> {
        Ok(
            sqlx::query("SELECT key_id FROM erasures WHERE tenant = $1 AND owner = $2")
                .bind(&self.tenant)
                .bind(token.to_vec())
                .fetch_optional(pool)
                .await?
                .is_some(),
        )
    }

    /// Drops `patient`'s key (id `key_id`) from this process's caches: called once its
    /// erasure has committed. Other processes keep what they cached until their cache is
    /// emptied, but never use it on an erased key: every read of a version checks, in the same
    /// query, that the row of the version's key still exists, and every write checks it inside
    /// its transaction (see `Store::erase_patient`).
    pub(crate) fn forget(&self, key_id: &str, patient: &Id) {
        let (kind, token) = self.owner_token(&Owner::Patient(patient.clone()));
        let cache_key = phivault_crypto::sha256(&[kind.as_bytes(), b"|", &token].concat());
        if let Ok(mut m) = self.by_owner.write() {
            m.remove(&cache_key);
        }
        if let Ok(mut m) = self.by_id.write() {
            m.remove(key_id);
        }
    }

    /// Every data key this store holds: each row of `data_keys` of the tenant, unwrapped, and
    /// each key in the cache (for the tests that prove an erasure).
    pub(crate) async fn every_sealer(
        &self,
        pool: &AnyPool,
    ) -> Result<Vec<(String, Arc<Sealer>)>, StoreError> {
        let rows =
            sqlx::query("SELECT key_id, kind, kek_id, wrapped FROM data_keys WHERE tenant = $1")
                .bind(&self.tenant)
                .fetch_all(pool)
                .await?;
        let mut out = Vec::new();
        for row in rows {
            let key_id: String = row.try_get("key_id")?;
            let kind: String = row.try_get("kind")?;
            let kek_id: String = row.try_get("kek_id")?;
            let wrapped: Vec<u8> = row.try_get("wrapped")?;
            let secret = self.unwrap(&kind, &key_id, &kek_id, &wrapped)?;
            out.push((key_id, Arc::new(Sealer::new(&secret)?)));
        }
        // Cached keys the database no longer has (a key cached under the id of a row is
        // that row's key).
        if let Ok(m) = self.by_id.read() {
            let missing: Vec<_> = m
                .iter()
                .filter(|(k, _)| !out.iter().any(|(id, _)| id == *k))
                .map(|(k, s)| (k.clone(), s.clone()))
                .collect();
            out.extend(missing);
        }
        Ok(out)
    }

    /// Drops the unwrapped key `key_id` from the cache (an erasure made by another process,
    /// learnt from the database). An owner entry still naming it leads to the database, which
    /// no longer has the key.
    pub(crate) fn forget_key(&self, key_id: &str) {
        if let Ok(mut m) = self.by_id.write() {
            m.remove(key_id);
        }
    }

    fn cached(&self, key_id: &str) -> Option<Arc<Sealer>> {
        self.by_id.read().ok().and_then(|m| m.get(key_id).cloned())
    }

    fn remember(&self, key_id: &str, sealer: Arc<Sealer>) {
        if let Ok(mut m) = self.by_id.write() {
            if m.len() > CACHE_LIMIT {
                m.clear();
            }
            m.insert(key_id.to_owned(), sealer);
        }
    }

    fn unwrap(
        &self,
        kind: &str,
        key_id: &str,
        kek_id: &str,
        wrapped: &[u8],
    ) -> Result<SecretKey, StoreError> {
        let kek = self
            .keks
            .get(kek_id)
            .ok_or_else(|| StoreError::Config(format!("unknown key-encryption key {kek_id}")))?;
        Ok(kek.unwrap_key(&dek_aad(&self.tenant, kind, key_id), wrapped)?)
    }

    async fn find_owned(
        &self,
        pool: &AnyPool,
        kind: &str,
        owner: &[u8],
    ) -> Result<Option<(String, SecretKey)>, StoreError> {
        let row = sqlx::query(
            "SELECT key_id, kek_id, wrapped FROM data_keys \
             WHERE tenant = $1 AND kind = $2 AND owner = $3",
        )
        .bind(&self.tenant)
        .bind(kind)
        .bind(owner.to_vec())
        .fetch_optional(pool)
        .await?;
        match row {
            None => Ok(None),
            Some(row) => {
                let key_id: String = row.try_get("key_id")?;
                let kek_id: String = row.try_get("kek_id")?;
                let wrapped: Vec<u8> = row.try_get("wrapped")?;
                let secret = self.unwrap(kind, &key_id, &kek_id, &wrapped)?;
                Ok(Some((key_id, secret)))
            }
        }
    }

    /// Finds the key of (kind, owner) or creates it; concurrent creators agree on one.
    async fn load_or_create_secret(
        &self,
        pool: &AnyPool,
        kind: &str,
        owner: &[u8],
    ) -> Result<(String, SecretKey), StoreError> {
        if let Some(found) = self.find_owned(pool, kind, owner).await? {
            return Ok(found);
        }
        let key_id = uuid::Uuid::new_v4().to_string();
        let secret = SecretKey::generate()?;
        let kek = self
            .keks
            .get(&self.kek_id)
            .ok_or_else(|| StoreError::Config("no active key-encryption key".to_owned()))?;
        let wrapped = kek.wrap(&dek_aad(&self.tenant, kind, &key_id), &secret)?;
        let (_, now) = crate::now();
        sqlx::query(
            "INSERT INTO data_keys (key_id, tenant, kind, owner, kek_id, wrapped, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (tenant, kind, owner) DO NOTHING",
        )
        .bind(&key_id)
        .bind(&self.tenant)
        .bind(kind)
        .bind(owner.to_vec())
        .bind(&self.kek_id)
        .bind(wrapped)
        .bind(now)
        .execute(pool)
        .await?;
        self.find_owned(pool, kind, owner)
            .await?
            .ok_or_else(|| StoreError::Config("a new data key vanished".to_owned()))
    }
}
