//! The encrypted, versioned FHIR resource store of phivault, over SQLite (embedded default)
//! and PostgreSQL (scale).
//!
//! This crate is the only one that talks SQL. It owns the schema and its migrations (one
//! directory per backend under `migrations/`), the versioned resource table, the
//! current-version pointers, the blind search index, the wrapped keys, and the FHIR
//! interactions that change them: create, read, vread, update with optimistic concurrency,
//! soft delete, history, search and atomic transaction/batch Bundles. It also keeps the
//! accounts ([`accounts`]): users found by blind username tokens, sealed TOTP secrets and
//! usernames, hashed tokens, client secrets and recovery codes, care grants and sealed
//! break-the-glass reasons; and OAuth2 / SMART App Launch state ([`oauth`]): clients,
//! one-time authorization codes, token families and refresh rotation, client-assertion ids,
//! launch contexts, remembered consents and the sealed id_token signing keys; and the login
//! limits every server on the database shares ([`login_limits`], by blind tokens). And it keeps
//! the audit trail's bytes ([`audit`]): entries, signed checkpoints and the sealed
//! checkpoint-signing key, whose hashes and signatures phivault-audit computes.
//!
//! Guarantees (DESIGN.md invariants 1, 4 and 7):
//! - every resource version is sealed with AES-256-GCM under the data key of its patient
//!   compartment (or the tenant's directory key), with associated data binding tenant, type,
//!   id, version, deletion flag and key id; no column holds PHI in the clear (search values are
//!   HMAC tokens, data-key owners are HMAC tokens);
//! - a row that fails to open, or whose decrypted content or version disagrees with where it
//!   was found, is reported as [`StoreError::Integrity`] and never returned;
//! - erasing a patient ([`Store::erase_patient`]) deletes the only copy of their wrapped data
//!   key and records the erasure in the erasure ledger in one transaction whose cost does not
//!   depend on how many resources the patient has; afterwards every version of the
//!   compartment answers [`StoreError::Erased`] (never an integrity failure), searches leave
//!   it out, and writes into it are refused ([`StoreError::PatientErased`]);
//! - a write returns only after its transaction has committed (SQLite in WAL mode with
//!   `synchronous=FULL`, PostgreSQL's default durability).

pub mod accounts;
pub mod audit;
mod backend;
pub mod backup;
mod bundle;
mod erasure;
mod generations;
mod health;
mod keys;
mod leadership;
pub mod login_limits;
pub mod oauth;
mod reindex;
mod released;
mod residue;
mod resources;
mod retention;
pub mod review;
mod rotation;
mod search;
mod statistics;
mod written;

use std::sync::Arc;
use std::time::Duration;

use phivault_crypto::{CryptoError, KeyProvider};
use phivault_fhir::{FhirError, IssueCode};
use serde_json::Value;
use sqlx::AnyPool;

pub use backend::Backend;
pub use bundle::EntryDecision;
pub use erasure::{ErasureRecord, SweepReport};
pub use generations::{Generation, Generations};
pub use leadership::LeaderLock;
pub use released::{Facts, Unreleased};
pub use retention::{DISPOSE_BATCH, RetentionCount, RetentionRule};
pub use rotation::{KekStatus, KeyStatus, RotationProgress, RotationReport};
pub use search::{SearchPage, SearchScope};
pub use sqlx::AnyConnection;
pub use statistics::{STALE_AFTER_WRITES, StatisticsWatch};
pub use written::{
    AccountChange, AccountChangeKind, AccountSink, AuditSink, NoAudit, SinkFuture, WriteKind,
    Written,
};

/// How to open a [`Store`].
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// `sqlite://path/to/file.db` or `postgres://user@host/db`.
    pub database_url: String,
    /// Largest number of pooled connections.
    pub max_connections: u32,
    /// How long a request waits for a connection before the database counts as unavailable.
    pub acquire_timeout: Duration,
    /// The tenant whose data this store serves.
    pub tenant: String,
    /// Largest number of entries in a transaction or batch Bundle.
    pub max_bundle_entries: usize,
    /// PostgreSQL only (SQLite ignores it): the longest a statement may run before the server
    /// cancels it, which the store reports as [`StoreError::Unavailable`] (503). Set as the
    /// session default of every pooled connection, so `RESET statement_timeout` returns to it.
    /// `None` (the default here; `phivault serve` sets its own) or zero: no limit.
    pub statement_timeout: Option<Duration>,
}

impl StoreOptions {
    /// Options with defaults for everything but the URL.
    pub fn new(database_url: impl Into<String>) -> Self {
        Self {
            database_url: database_url.into(),
            max_connections: 8,
            acquire_timeout: Duration::from_secs(5),
            tenant: "default".to_owned(),
            max_bundle_entries: 1000,
            statement_timeout: None,
        }
    }
}

/// A resource as stored: its current or requested version, decrypted and checked.
/// `Debug` shows type, id and version only: the body is PHI.
#[derive(Clone)]
pub struct StoredResource {
    /// Type.
    pub rtype: phivault_fhir::ResourceType,
    /// Id.
    pub id: phivault_fhir::Id,
    /// Version (`meta.versionId`).
    pub version: u64,
    /// `meta.lastUpdated`.
    pub last_updated: String,
    /// The body, with `id` and `meta` stamped by the server.
    pub body: Value,
    /// The JSON text `body` was decrypted from (None for what a write returns). Read through
    /// [`StoredResource::as_stored`] only: it no longer matches `body` once `body` is changed.
    stored_json: Option<std::sync::Arc<[u8]>>,
}

impl StoredResource {
    /// A resource built by the store from a body it holds (a write's result: no stored text
    /// kept).
    pub(crate) fn new(
        rtype: phivault_fhir::ResourceType,
        id: phivault_fhir::Id,
        version: u64,
        last_updated: String,
        body: Value,
    ) -> Self {
        StoredResource {
            rtype,
            id,
            version,
            last_updated,
            body,
            stored_json: None,
        }
    }

    /// Keeps the JSON text the body was parsed from.
    pub(crate) fn with_stored_json(mut self, json: Vec<u8>) -> Self {
        self.stored_json = Some(json.into());
        self
    }

    /// The body's JSON exactly as it was decrypted, to answer a read without serializing the
    /// body again (the stored text is what `serde_json` wrote from the same body at write
    /// time, and a parse then a write of it yields the same text).
    ///
    /// Only for a resource whose `body` was not changed since it was read (subsetting,
    /// redaction, ...): a caller that changed it must serialize `body` instead. None for a
    /// write's result.
    pub fn as_stored(&self) -> Option<&[u8]> {
        self.stored_json.as_deref()
    }
}

/// Equality is of what the resource is (type, id, version, time, body), not of whether the
/// stored JSON text came along.
impl PartialEq for StoredResource {
    fn eq(&self, other: &Self) -> bool {
        self.rtype == other.rtype
            && self.id == other.id
            && self.version == other.version
            && self.last_updated == other.last_updated
            && self.body == other.body
    }
}

/// One version in a resource's history. `Debug` leaves the body out (PHI).
#[derive(Clone, PartialEq)]
pub struct HistoryEntry {
    /// Version.
    pub version: u64,
    /// When the version was written.
    pub last_updated: String,
    /// True when this version is a deletion.
    pub deleted: bool,
    /// The body (None for a deletion).
    pub body: Option<Value>,
}

impl std::fmt::Debug for StoredResource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredResource")
            .field("rtype", &self.rtype)
            .field("id", &self.id)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for HistoryEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HistoryEntry")
            .field("version", &self.version)
            .field("deleted", &self.deleted)
            .finish_non_exhaustive()
    }
}

/// The errors of the store. Messages name types, ids and versions, never content.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// No such resource.
    #[error("{rtype}/{id} is not known")]
    NotFound {
        /// Type.
        rtype: String,
        /// Id.
        id: String,
    },
    /// No such version of a resource.
    #[error("{rtype}/{id}/_history/{version} is not known")]
    VersionNotFound {
        /// Type.
        rtype: String,
        /// Id.
        id: String,
        /// Version asked for.
        version: u64,
    },
    /// The resource (or the version asked for) is a deletion.
    #[error("{rtype}/{id} was deleted (version {version})")]
    Gone {
        /// Type.
        rtype: String,
        /// Id.
        id: String,
        /// The deletion's version.
        version: u64,
    },
    /// The resource (or version) was in a patient compartment that was erased: its data key
    /// is destroyed and it can never be read again (410).
    #[error("{rtype}/{id} was erased (its patient's data was erased)")]
    Erased {
        /// Type.
        rtype: String,
        /// Id.
        id: String,
    },
    /// A write into the compartment of a patient who was erased (410): refused, so no data
    /// lands under a destroyed key and no new key is made for that patient.
    #[error("Patient/{patient} was erased; its compartment accepts no more data")]
    PatientErased {
        /// The erased patient's id.
        patient: String,
    },
    /// The audit trail has entries (or checkpoints) but its checkpoint-signing key is gone:
    /// refused rather than replaced, since a new key would sign whatever the trail now holds.
    #[error(
        "the audit signing key is missing but the audit trail has {entries} entries: refusing \
         to create a new key (restore the audit_keys table from a backup)"
    )]
    AuditKeyMissing {
        /// Entries in the trail.
        entries: u64,
    },
    /// The patient was erased before (409).
    #[error("patient already erased: Patient/{patient}")]
    AlreadyErased {
        /// The patient's id.
        patient: String,
    },
    /// `If-Match` named another version than the current one.
    #[error(
        "If-Match expected version {expected} of {rtype}/{id} but the current version is {current}"
    )]
    PreconditionFailed {
        /// Type.
        rtype: String,
        /// Id.
        id: String,
        /// Version in If-Match.
        expected: u64,
        /// Current version (0 when the resource does not exist).
        current: u64,
    },
    /// No decision of the policies covers the read or write: the request was decided on other
    /// facts than the store holds (a concurrent write moved the resource), or not at all.
    #[error("the {rtype} changed while the request was being authorized; read it again and retry")]
    Undecided {
        /// Type.
        rtype: String,
    },
    /// Another write to the same resource won the race.
    #[error("{rtype}/{id} was changed concurrently; read it again and retry")]
    Conflict {
        /// Type.
        rtype: String,
        /// Id.
        id: String,
    },
    /// Stored data failed its integrity check and was not served.
    #[error(
        "integrity failure: the stored data of {rtype}/{id} was altered or misplaced and is not served"
    )]
    Integrity {
        /// Type.
        rtype: String,
        /// Id.
        id: String,
    },
    /// The database cannot be reached.
    #[error("the database is unavailable; try again later")]
    Unavailable(#[source] sqlx::Error),
    /// A Bundle entry failed (transactions fail whole).
    #[error("Bundle.entry[{index}]: {source}")]
    Entry {
        /// Entry index.
        index: usize,
        /// Why.
        source: Box<StoreError>,
    },
    /// A client request was malformed (FHIR-level).
    #[error(transparent)]
    Fhir(#[from] FhirError),
    /// Key material could not be used.
    #[error("key error: {0}")]
    Crypto(#[from] CryptoError),
    /// Another database error.
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
    /// Schema migration failed.
    #[error("schema migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The database was migrated by a newer phivault: this build does not know its schema and
    /// refuses to open it (an older node of a cluster after the others were upgraded).
    #[error(
        "the database schema is at version {database}, newer than this phivault build (knows \
         up to {build}): run the newer phivault on every node, or restore the database from a \
         backup made by this version"
    )]
    SchemaNewer {
        /// The newest migration applied to the database.
        database: i64,
        /// The newest migration this build knows.
        build: i64,
    },
    /// Bad configuration.
    #[error("configuration: {0}")]
    Config(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => StoreError::Unavailable(e),
            sqlx::Error::Database(db) => {
                // PostgreSQL connection and shutdown classes (08*, 57P0*), a statement
                // cancelled by `statement_timeout` or by an operator (57014 query_canceled:
                // the database is overloaded or stuck, not the request wrong), SQLite
                // busy/locked.
                let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
                if code.starts_with("08")
                    || code.starts_with("57P")
                    || code == "57014"
                    || code == "5"
                    || code == "6"
                {
                    StoreError::Unavailable(e)
                } else {
                    StoreError::Database(e)
                }
            }
            _ => StoreError::Database(e),
        }
    }
}

impl StoreError {
    /// The HTTP status this error answers with.
    pub fn http_status(&self) -> u16 {
        match self {
            StoreError::NotFound { .. } | StoreError::VersionNotFound { .. } => 404,
            StoreError::Gone { .. }
            | StoreError::Erased { .. }
            | StoreError::PatientErased { .. } => 410,
            StoreError::AlreadyErased { .. } => 409,
            StoreError::PreconditionFailed { .. } => 412,
            StoreError::Conflict { .. } | StoreError::Undecided { .. } => 409,
            StoreError::Unavailable(_) => 503,
            StoreError::Entry { source, .. } => source.http_status(),
            StoreError::Fhir(FhirError::UnknownType(_)) => 404,
            StoreError::Fhir(FhirError::Invalid(_)) => 422,
            StoreError::Fhir(
                FhirError::AmbiguousReference { .. } | FhirError::MultipleMatches { .. },
            ) => 412,
            StoreError::Fhir(_) => 400,
            StoreError::Integrity { .. }
            | StoreError::AuditKeyMissing { .. }
            | StoreError::Crypto(_)
            | StoreError::Database(_)
            | StoreError::Migrate(_)
            | StoreError::SchemaNewer { .. }
            | StoreError::Config(_) => 500,
        }
    }

    /// The FHIR issue code.
    pub fn issue_code(&self) -> IssueCode {
        match self {
            StoreError::NotFound { .. } | StoreError::VersionNotFound { .. } => IssueCode::NotFound,
            StoreError::Gone { .. }
            | StoreError::Erased { .. }
            | StoreError::PatientErased { .. } => IssueCode::Deleted,
            StoreError::PreconditionFailed { .. }
            | StoreError::Conflict { .. }
            | StoreError::Undecided { .. }
            | StoreError::AlreadyErased { .. } => IssueCode::Conflict,
            StoreError::Unavailable(_) => IssueCode::Transient,
            StoreError::Entry { source, .. } => source.issue_code(),
            StoreError::Fhir(f) => f
                .issues()
                .first()
                .map(|i| i.code)
                .unwrap_or(IssueCode::Invalid),
            StoreError::Integrity { .. } => IssueCode::Exception,
            _ => IssueCode::Exception,
        }
    }

    /// True for faults on our side whose detail must stay in the log (500s).
    pub fn is_internal(&self) -> bool {
        matches!(
            self,
            StoreError::Crypto(_)
                | StoreError::Database(_)
                | StoreError::Migrate(_)
                | StoreError::SchemaNewer { .. }
                | StoreError::Config(_)
                | StoreError::AuditKeyMissing { .. }
        ) || matches!(self, StoreError::Entry { source, .. } if source.is_internal())
    }
}

/// The store. Cheap to clone; share one per process.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.inner.backend)
            .field("tenant", &self.inner.tenant)
            .finish_non_exhaustive()
    }
}

struct Inner {
    pool: AnyPool,
    backend: Backend,
    tenant: String,
    keys: keys::Keyring,
    /// SQLite allows one writer: writes queue here instead of failing with SQLITE_BUSY.
    write_lock: Option<tokio::sync::Mutex<()>>,
    max_bundle_entries: usize,
    /// Tables whose deleted key material a purge has still to remove from the files.
    residue: std::sync::Mutex<std::collections::BTreeSet<&'static str>>,
    /// Resources written through this store (see [`Store::resource_writes`]).
    resource_writes: std::sync::atomic::AtomicU64,
}

impl Store {
    /// Opens (creating when needed) the database, applies migrations, and loads or creates
    /// the key-encryption key and the tenant's index and directory keys. The store keeps
    /// [`KeyProvider::shared`] to read the master key again if another process rotates it.
    ///
    /// Processes opening one PostgreSQL database at once (nodes of a cluster starting
    /// together) do it one after the other: the first migrates and creates the keys, the
    /// others wait for it, then find them (see `backend::Opening`).
    pub async fn open(opts: &StoreOptions, keys: &dyn KeyProvider) -> Result<Store, StoreError> {
        let backend = Backend::from_url(&opts.database_url)?;
        let pool = backend.connect(opts).await?;
        let mut opening = backend::Opening::begin(backend, &pool, &opts.tenant).await?;
        let opened = Store::open_with(opts, keys, backend, pool, &mut opening).await;
        opening.end().await;
        opened
    }

    /// [`Store::open`] once the opening has begun.
    async fn open_with(
        opts: &StoreOptions,
        keys: &dyn KeyProvider,
        backend: Backend,
        pool: AnyPool,
        opening: &mut backend::Opening,
    ) -> Result<Store, StoreError> {
        opening.migrate().await?;
        let write_lock = match backend {
            Backend::Sqlite => Some(tokio::sync::Mutex::new(())),
            Backend::Postgres => None,
        };
        let master = keys.master_key()?;
        let keyring = keys::Keyring::load(
            &pool,
            write_lock.as_ref(),
            master,
            keys.shared(),
            &opts.tenant,
        )
        .await?;
        let store = Store {
            inner: Arc::new(Inner {
                pool,
                backend,
                tenant: opts.tenant.clone(),
                keys: keyring,
                write_lock,
                max_bundle_entries: opts.max_bundle_entries,
                residue: std::sync::Mutex::new(std::collections::BTreeSet::new()),
                resource_writes: std::sync::atomic::AtomicU64::new(0),
            }),
        };
        // Before anything is served: an index in an older format would leak labels and miss
        // them in label-filtered searches.
        store.upgrade_index().await?;
        store.ensure_generation(Generation::Auth).await?;
        store.ensure_generation(Generation::Consent).await?;
        Ok(store)
    }

    /// Which backend this store runs on.
    pub fn backend(&self) -> Backend {
        self.inner.backend
    }

    /// The tenant served.
    pub fn tenant(&self) -> &str {
        &self.inner.tenant
    }

    /// Largest number of Bundle entries accepted.
    pub fn max_bundle_entries(&self) -> usize {
        self.inner.max_bundle_entries
    }

    /// Checks that the database answers.
    pub async fn health(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.inner.pool).await?;
        Ok(())
    }

    /// Closes the pool (waits for connections to return).
    pub async fn close(&self) {
        self.inner.pool.close().await;
    }

    /// The raw pool, for tests that tamper with rows and for tools that inspect the schema.
    #[doc(hidden)]
    pub fn pool(&self) -> &AnyPool {
        &self.inner.pool
    }
}

/// Now, as a FHIR instant with millisecond precision, and as unix seconds.
pub(crate) fn now() -> (String, i64) {
    let t = time::OffsetDateTime::now_utc();
    let t = t
        .replace_nanosecond(t.millisecond() as u32 * 1_000_000)
        .unwrap_or(t);
    let text = t
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_owned());
    (text, t.unix_timestamp())
}
