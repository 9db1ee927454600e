//! Wrapped keys in the database, unwrapped keys in memory.
//!
//! Key-encryption keys are stored wrapped by the master key; data keys (one per patient
//! compartment, one directory key per tenant) and the tenant's index key are stored wrapped
//! by a key-encryption key. A patient's data key is found by a blind token of the patient id,
//! so the table does not link key ids to patient ids in the clear.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use phivault_crypto::{IndexKey, KeyProvider, MacKey, MasterKey, Sealer, SecretKey};
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
    /// The master key as last read; replaced when another process rotated it.
    master: RwLock<Arc<MasterKey>>,
    /// Where the master key is read again (None: read once, at open).
    provider: Option<Arc<dyn KeyProvider>>,
    /// Unwrapped key-encryption keys by id: all of them at open, later ones on first sight.
    keks: RwLock<HashMap<String, Arc<SecretKey>>>,
    index: IndexKey,
    /// The audit chain key: derived from the tenant's index secret (which only the master key
    /// hierarchy unwraps, and which master and key-encryption key rotations keep), so it
    /// survives rotations and restores like the search index does.
    audit_chain: Arc<MacKey>,
    by_id: RwLock<HashMap<String, Arc<Sealer>>>,
    by_owner: RwLock<HashMap<[u8; 32], String>>,
}

/// The HKDF label of the audit chain key.
const AUDIT_CHAIN_LABEL: &[u8] = b"phivault/audit-chain/v2";

pub(crate) fn kek_aad(kek_id: &str) -> Vec<u8> {
    format!("phivault/kek|{kek_id}").into_bytes()
}

/// Associated data of the first wrapping format of data keys (no owner): still opened, never
/// written; a KEK rotation rewraps such keys in the current format.
fn dek_aad_v1(tenant: &str, kind: &str, key_id: &str) -> Vec<u8> {
    format!("phivault/dek|{tenant}|{kind}|{key_id}").into_bytes()
}

/// Associated data of the current wrapping format: the owner token is bound too, so a wrapped
/// key moved to another owner's row (swapping `owner` columns) no longer opens.
fn dek_aad_v2(tenant: &str, kind: &str, key_id: &str, owner: &[u8]) -> Vec<u8> {
    format!(
        "phivault/dek2|{tenant}|{kind}|{key_id}|{}",
        hex::encode(owner)
    )
    .into_bytes()
}

/// First byte of a wrapped data key in the current format (owner bound); the first format
/// has no version byte and is exactly [`WRAPPED_V1_LEN`] bytes long.
const WRAP_V2: u8 = 2;
/// nonce (12) + key (32) + tag (16).
const WRAPPED_V1_LEN: usize = 60;

/// Identifies one data key row: what its wrapping is bound to.
pub(crate) struct DekRow<'a> {
    pub(crate) tenant: &'a str,
    pub(crate) kind: &'a str,
    pub(crate) key_id: &'a str,
    pub(crate) owner: &'a [u8],
}

impl DekRow<'_> {
    /// Wraps `secret` under `kek` in the current format (version byte, owner bound).
    pub(crate) fn wrap(&self, kek: &SecretKey, secret: &SecretKey) -> Result<Vec<u8>, StoreError> {
        let aad = dek_aad_v2(self.tenant, self.kind, self.key_id, self.owner);
        let mut out = vec![WRAP_V2];
        out.extend(kek.wrap(&aad, secret)?);
        Ok(out)
    }

    /// Unwraps either format; a key of the first format is bound to tenant, kind and id only.
    pub(crate) fn unwrap(&self, kek: &SecretKey, wrapped: &[u8]) -> Result<SecretKey, StoreError> {
        if wrapped.len() == WRAPPED_V1_LEN {
            let aad = dek_aad_v1(self.tenant, self.kind, self.key_id);
            return Ok(kek.unwrap_key(&aad, wrapped)?);
        }
        match wrapped.split_first() {
            Some((&WRAP_V2, rest)) => {
                let aad = dek_aad_v2(self.tenant, self.kind, self.key_id, self.owner);
                Ok(kek.unwrap_key(&aad, rest)?)
            }
            _ => Err(phivault_crypto::CryptoError::Integrity.into()),
        }
    }

    /// Wraps in the first format (tests of the upgrade path only).
    pub(crate) fn wrap_v1(
        &self,
        kek: &SecretKey,
        secret: &SecretKey,
    ) -> Result<Vec<u8>, StoreError> {
        Ok(kek.wrap(&dek_aad_v1(self.tenant, self.kind, self.key_id), secret)?)
    }
}

impl Keyring {
    /// Loads the key-encryption keys (creating the first), and the tenant's index key.
    pub(crate) async fn load(
        pool: &AnyPool,
        write_lock: Option<&tokio::sync::Mutex<()>>,
        master: MasterKey,
        provider: Option<Arc<dyn KeyProvider>>,
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
                .map_err(|_| wrong_master(&kek_id))?;
            if is_active != 0 {
                active = Some(kek_id.clone());
            }
            keks.insert(kek_id, Arc::new(key));
        }
        match active {
            Some(_) => {}
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
                keks.insert(id, Arc::new(key));
            }
        }
        let mut ring = Keyring {
            tenant: tenant.to_owned(),
            master: RwLock::new(Arc::new(master)),
            provider,
            keks: RwLock::new(keks),
            // Replaced below once the index key is loaded.
            index: IndexKey::new(&SecretKey::generate()?),
            audit_chain: Arc::new(MacKey::derive(&SecretKey::generate()?, AUDIT_CHAIN_LABEL)?),
            by_id: RwLock::new(HashMap::new()),
            by_owner: RwLock::new(HashMap::new()),
        };
        let index_secret = ring.load_or_create_secret(pool, KIND_INDEX, &[]).await?;
        ring.index = IndexKey::new(&index_secret.1);
        ring.audit_chain = Arc::new(MacKey::derive(&index_secret.1, AUDIT_CHAIN_LABEL)?);
        Ok(ring)
    }

    /// The key that authenticates the audit chain.
    pub(crate) fn audit_chain(&self) -> Arc<MacKey> {
        self.audit_chain.clone()
    }

    /// The blind token of a search value.
    pub(crate) fn search_token(&self, rtype: &str, param: &str, value: &str) -> Vec<u8> {
        self.index
            .token(&["search", &self.tenant, rtype, param, value])
            .to_vec()
    }

    /// The blind token of a value of a compartment-keyed parameter
    /// ([`phivault_fhir::is_compartment_keyed`]) in the compartment whose data key is
    /// `key_id`: the key id is part of the HMAC input, so the same value in two compartments
    /// gives unrelated tokens and the index cannot be joined across patients on it.
    pub(crate) fn compartment_token(
        &self,
        key_id: &str,
        rtype: &str,
        param: &str,
        value: &str,
    ) -> Vec<u8> {
        self.index
            .token(&[
                "search-compartment",
                &self.tenant,
                key_id,
                rtype,
                param,
                value,
            ])
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
        // A row read just before a rotation rewrapped it and deleted its old key-encryption
        // key names a KEK that is gone: the row is read again once (it then names the new one).
        for attempt in 0..2 {
            let row = sqlx::query(
                "SELECT kind, owner, kek_id, wrapped FROM data_keys \
                 WHERE key_id = $1 AND tenant = $2",
            )
            .bind(key_id)
            .bind(&self.tenant)
            .fetch_optional(pool)
            .await?;
            let Some(row) = row else { return Ok(None) };
            let kind: String = row.try_get("kind")?;
            let owner: Vec<u8> = row.try_get("owner")?;
            let kek_id: String = row.try_get("kek_id")?;
            let wrapped: Vec<u8> = row.try_get("wrapped")?;
            let Some(secret) = self
                .unwrap(pool, &kind, key_id, &owner, &kek_id, &wrapped)
                .await?
            else {
                if attempt == 0 {
                    continue;
                }
                return Err(unknown_kek(&kek_id));
            };
            let sealer = Arc::new(Sealer::new(&secret)?);
            self.remember(key_id, sealer.clone());
            return Ok(Some(sealer));
        }
        Ok(None)
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
        let rows = sqlx::query(
            "SELECT key_id, kind, owner, kek_id, wrapped FROM data_keys WHERE tenant = $1",
        )
        .bind(&self.tenant)
        .fetch_all(pool)
        .await?;
        let mut out = Vec::new();
        for row in rows {
            let key_id: String = row.try_get("key_id")?;
            let kind: String = row.try_get("kind")?;
            let owner: Vec<u8> = row.try_get("owner")?;
            let kek_id: String = row.try_get("kek_id")?;
            let wrapped: Vec<u8> = row.try_get("wrapped")?;
            let secret = self
                .unwrap(pool, &kind, &key_id, &owner, &kek_id, &wrapped)
                .await?
                .ok_or_else(|| unknown_kek(&kek_id))?;
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

    /// Unwraps a data key of this tenant wrapped by `kek_id`; None when that key-encryption
    /// key no longer exists (deleted by a rotation after the data key row was read).
    async fn unwrap(
        &self,
        pool: &AnyPool,
        kind: &str,
        key_id: &str,
        owner: &[u8],
        kek_id: &str,
        wrapped: &[u8],
    ) -> Result<Option<SecretKey>, StoreError> {
        let Some(kek) = self.kek(pool, kek_id).await? else {
            return Ok(None);
        };
        let row = DekRow {
            tenant: &self.tenant,
            kind,
            key_id,
            owner,
        };
        Ok(Some(row.unwrap(&kek, wrapped)?))
    }

    /// The key-encryption key `kek_id`: from memory, else (a KEK created by another process,
    /// e.g. a rotation) read from its row and unwrapped with the master key. When the master
    /// key in memory does not open it, the master key is read again through the key provider
    /// (another process may have rotated it) and tried once more. None when no such row.
    pub(crate) async fn kek(
        &self,
        pool: &AnyPool,
        kek_id: &str,
    ) -> Result<Option<Arc<SecretKey>>, StoreError> {
        if let Some(k) = self.keks.read().ok().and_then(|m| m.get(kek_id).cloned()) {
            return Ok(Some(k));
        }
        let row = sqlx::query("SELECT wrapped FROM key_encryption_keys WHERE kek_id = $1")
            .bind(kek_id)
            .fetch_optional(pool)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let wrapped: Vec<u8> = row.try_get("wrapped")?;
        let key = Arc::new(self.open_kek(kek_id, &wrapped)?);
        if let Ok(mut m) = self.keks.write() {
            m.insert(kek_id.to_owned(), key.clone());
        }
        Ok(Some(key))
    }

    /// Unwraps the KEK row `kek_id` with the master key, reading the master key again once
    /// when the one in memory does not open it.
    pub(crate) fn open_kek(&self, kek_id: &str, wrapped: &[u8]) -> Result<SecretKey, StoreError> {
        let master = self.master();
        if let Ok(k) = master.key().unwrap_key(&kek_aad(kek_id), wrapped) {
            return Ok(k);
        }
        let Some(provider) = &self.provider else {
            return Err(wrong_master(kek_id));
        };
        let fresh = provider.master_key()?;
        let key = fresh
            .key()
            .unwrap_key(&kek_aad(kek_id), wrapped)
            .map_err(|_| wrong_master(kek_id))?;
        tracing::info!("the master key was rotated by another process; using the new one");
        self.set_master(fresh);
        Ok(key)
    }

    /// The master key in memory.
    pub(crate) fn master(&self) -> Arc<MasterKey> {
        match self.master.read() {
            Ok(m) => m.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces the master key in memory (after a rotation to `new`).
    pub(crate) fn set_master(&self, new: MasterKey) {
        match self.master.write() {
            Ok(mut m) => *m = Arc::new(new),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(new),
        }
    }

    /// Keeps an unwrapped key-encryption key (one this process just created).
    pub(crate) fn remember_kek(&self, kek_id: &str, key: SecretKey) {
        if let Ok(mut m) = self.keks.write() {
            m.insert(kek_id.to_owned(), Arc::new(key));
        }
    }

    /// The id of the key-encryption key active in the database now.
    async fn active_kek_id(&self, pool: &AnyPool) -> Result<String, StoreError> {
        let row = sqlx::query(
            "SELECT kek_id FROM key_encryption_keys WHERE active = 1 \
             ORDER BY created_at DESC, kek_id LIMIT 1",
        )
        .fetch_optional(pool)
        .await?
        .ok_or_else(|| StoreError::Config("no active key-encryption key".to_owned()))?;
        Ok(row.try_get("kek_id")?)
    }

    async fn find_owned(
        &self,
        pool: &AnyPool,
        kind: &str,
        owner: &[u8],
    ) -> Result<Option<(String, SecretKey)>, StoreError> {
        self.find_owned_once(pool, kind, owner, true).await
    }

    async fn find_owned_once(
        &self,
        pool: &AnyPool,
        kind: &str,
        owner: &[u8],
        retry: bool,
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
                match self
                    .unwrap(pool, kind, &key_id, owner, &kek_id, &wrapped)
                    .await?
                {
                    Some(secret) => Ok(Some((key_id, secret))),
                    // Rewrapped and its old KEK deleted since the row was read: read it again.
                    None if retry => Box::pin(self.find_owned_once(pool, kind, owner, false)).await,
                    None => Err(unknown_kek(&kek_id)),
                }
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
        // Under the KEK active in the database now (a rotation may have switched it since
        // this process opened). Should a rotation delete that KEK between this read and the
        // insert, the insert fails its foreign key and is tried again under the new one; a
        // key inserted under the old KEK just before the switch is rewrapped by the rotation.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let kek_id = self.active_kek_id(pool).await?;
            let kek = self
                .kek(pool, &kek_id)
                .await?
                .ok_or_else(|| unknown_kek(&kek_id))?;
            let wrapped = DekRow {
                tenant: &self.tenant,
                kind,
                key_id: &key_id,
                owner,
            }
            .wrap(&kek, &secret)?;
            let (_, now) = crate::now();
            let inserted = sqlx::query(
                "INSERT INTO data_keys (key_id, tenant, kind, owner, kek_id, wrapped, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (tenant, kind, owner) DO NOTHING",
            )
            .bind(&key_id)
            .bind(&self.tenant)
            .bind(kind)
            .bind(owner.to_vec())
            .bind(&kek_id)
            .bind(wrapped)
            .bind(now)
            .execute(pool)
            .await;
            match inserted {
                Ok(_) => break,
                Err(e) if attempt < 3 && is_foreign_key_violation(&e) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        self.find_owned(pool, kind, owner)
            .await?
            .ok_or_else(|| StoreError::Config("a new data key vanished".to_owned()))
    }
}

/// The error of a key-encryption key the master key does not open.
fn wrong_master(kek_id: &str) -> StoreError {
    StoreError::Config(format!(
        "key-encryption key {kek_id} does not open with this master key (wrong master key file?)"
    ))
}

fn unknown_kek(kek_id: &str) -> StoreError {
    StoreError::Config(format!("unknown key-encryption key {kek_id}"))
}

/// A foreign key violation (PostgreSQL 23503, SQLite 787).
fn is_foreign_key_violation(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            code == "23503" || code == "787"
        }
        _ => false,
    }
}
