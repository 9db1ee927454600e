//! The two backends: what differs between SQLite and PostgreSQL is confined here
//! (connection settings and the migration set). Queries elsewhere are portable SQL with
//! `$n` placeholders, which both drivers accept.

use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::{MigrateError, Migrator};
use sqlx::{AnyConnection, AnyPool, Connection, Executor, Row};

use crate::{StoreError, StoreOptions};

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

/// The number of the newest migration of this build (both backends have the same numbers).
pub(crate) fn schema_version() -> i64 {
    SQLITE_MIGRATIONS
        .iter()
        .chain(POSTGRES_MIGRATIONS.iter())
        .map(|m| m.version)
        .max()
        .unwrap_or(0)
}

/// The newest migration of one migration set.
fn newest(migrator: &Migrator) -> i64 {
    migrator.iter().map(|m| m.version).max().unwrap_or(0)
}

impl Backend {
    /// This backend's migrations.
    fn migrations(self) -> &'static Migrator {
        match self {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        }
    }
}

/// The database behind a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Embedded SQLite in WAL mode.
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

impl Backend {
    /// The backend a URL names (`sqlite:` or `postgres:`/`postgresql:`).
    pub fn from_url(url: &str) -> Result<Backend, StoreError> {
        if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Ok(Backend::Postgres)
        } else {
            Err(StoreError::Config(
                "database_url must start with sqlite: or postgres:".to_owned(),
            ))
        }
    }

    /// A short name.
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgresql",
        }
    }

    pub(crate) async fn connect(&self, opts: &StoreOptions) -> Result<AnyPool, StoreError> {
        sqlx::any::install_default_drivers();
        let pool_opts = AnyPoolOptions::new()
            .max_connections(opts.max_connections.max(1))
            .acquire_timeout(opts.acquire_timeout);
        let pool = match self {
            Backend::Sqlite => {
                let url = sqlite_url(&opts.database_url)?;
                pool_opts
                    .after_connect(|conn, _meta| {
                        Box::pin(async move {
                            // WAL for concurrent readers; FULL sync so an acknowledged write
                            // survives a crash of the process or the machine; wait for the
                            // writer instead of failing; secure_delete zeroes freed pages.
                            conn.execute(
                                "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; \
                                 PRAGMA busy_timeout=10000; PRAGMA foreign_keys=ON; \
                                 PRAGMA secure_delete=ON;",
                            )
                            .await?;
                            Ok(())
                        })
                    })
                    .connect(&url)
                    .await?
            }
            Backend::Postgres => {
                let mut connect = AnyConnectOptions::from_str(&opts.database_url)
                    .map_err(|e| StoreError::Config(format!("database_url: {e}")))?;
                if let Some(ms) = statement_timeout_ms(opts.statement_timeout) {
                    // The session default of every connection, sent at connection start (as
                    // `PGOPTIONS='-c statement_timeout=...'` would), not a `SET` after it:
                    // `RESET statement_timeout` returns to it, and the few statements that must
                    // not be cut (migrations, `VACUUM FULL`) set 0 for themselves. Appended
                    // after any `options` of the URL, so it wins over one set there.
                    connect
                        .database_url
                        .query_pairs_mut()
                        .append_pair("options[statement_timeout]", &ms.to_string());
                }
                pool_opts
                    .connect_with(connect)
                    .await
                    .map_err(first_connect_error)?
            }
        };
        Ok(pool)
    }

    /// Applies this build's migrations, or refuses a database a newer build migrated (see
    /// `run_migrations`). `Store::open` migrates inside an [`Opening`] instead, which also
    /// keeps other processes out until the keys exist.
    ///
    /// The migrations run on a connection of their own, closed afterwards instead of
    /// returned to the pool: sqlx leaves its advisory lock held when a migration fails (only
    /// the end of the session releases it then), and the connection runs without a statement
    /// timeout.
    pub(crate) async fn migrate(&self, pool: &AnyPool) -> Result<(), StoreError> {
        let mut conn = pool.acquire().await?.detach();
        let result = run_migrations(*self, &mut conn).await;
        // Ends the session, and with it the migration lock whatever happened.
        let _ = conn.close().await;
        result
    }
}

/// The first half of the advisory lock key held while a process opens the store (`"phvo"`);
/// the second half is the hash of the schema and tenant, so that separate deployments in one
/// database open independently. The two-integer form has its own key space, apart from the
/// single-bigint keys of sqlx's migration lock and of the audit append lock.
const OPEN_LOCK_CLASS: i32 = 0x7068_766f;

/// A store being opened. On PostgreSQL, processes opening the same schema and tenant do it
/// one at a time: the session of this connection holds an advisory lock from before the
/// migrations until the store is ready (keys loaded or created, the index at its format,
/// the generations recorded), so that nodes starting at once on an empty database do not
/// each create a key-encryption key or race to record the index format; the first creates
/// them, the others wait, then find them. The connection is out of the pool and has no
/// statement timeout (the wait and the migrations may be long); [`Opening::end`] closes it,
/// and with it the lock, whatever happened.
pub(crate) struct Opening {
    conn: AnyConnection,
    backend: Backend,
}

impl Opening {
    /// Takes a connection out of `pool` and, on PostgreSQL, waits for the opening lock of
    /// `tenant` in the connection's schema.
    pub(crate) async fn begin(
        backend: Backend,
        pool: &AnyPool,
        tenant: &str,
    ) -> Result<Opening, StoreError> {
        let mut conn = pool.acquire().await?.detach();
        if backend == Backend::Postgres {
            let locked = lock_for_opening(&mut conn, tenant).await;
            if let Err(e) = locked {
                let _ = conn.close().await;
                return Err(e);
            }
        }
        Ok(Opening { conn, backend })
    }

    /// Applies this build's migrations on the opening's connection (see `run_migrations`).
    pub(crate) async fn migrate(&mut self) -> Result<(), StoreError> {
        run_migrations(self.backend, &mut self.conn).await
    }

    /// Ends the session (and with it every lock it holds).
    pub(crate) async fn end(self) {
        let _ = self.conn.close().await;
    }
}

async fn lock_for_opening(conn: &mut AnyConnection, tenant: &str) -> Result<(), StoreError> {
    conn.execute("SET statement_timeout = 0").await?;
    let key = "hashtext(coalesce(current_schema(), '') || '/' || $2)";
    let got: bool = sqlx::query(&format!("SELECT pg_try_advisory_lock($1, {key}) AS got"))
        .bind(OPEN_LOCK_CLASS)
        .bind(tenant)
        .fetch_one(&mut *conn)
        .await?
        .try_get("got")?;
    if !got {
        tracing::info!(
            "another process is opening this database (migrating or creating its keys); \
             waiting for it"
        );
        sqlx::query(&format!(
            "SELECT 1 AS locked FROM (SELECT pg_advisory_lock($1, {key})) AS l"
        ))
        .bind(OPEN_LOCK_CLASS)
        .bind(tenant)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Applies this build's migrations on `conn`, or refuses a database a newer build migrated.
///
/// Several nodes may start at once on one PostgreSQL database. sqlx's migrator (with
/// `Migrator::locking` on, its default, which phivault keeps) takes a session advisory lock
/// (`pg_advisory_lock`, keyed on the database's name) before it reads `_sqlx_migrations`,
/// and releases it when done: one node applies the migrations while the others wait on the
/// lock, then find them applied and apply nothing. (On SQLite its lock is a no-op: one
/// process serves the file.)
///
/// No statement timeout here: neither the wait for another node's migrations nor a long
/// migration may be cut (each migration is one transaction: a cancel would fail the start,
/// never leave half a migration).
async fn run_migrations(backend: Backend, conn: &mut AnyConnection) -> Result<(), StoreError> {
    let migrator = backend.migrations();
    if backend == Backend::Postgres {
        conn.execute("SET statement_timeout = 0").await?;
    }
    match migrator.run(&mut *conn).await {
        Ok(()) => Ok(()),
        // An applied migration this build does not know: a newer phivault migrated the
        // database (its other nodes were upgraded first). Running this build on it could
        // write what the newer schema no longer means, so the start is refused, naming both
        // versions.
        Err(MigrateError::VersionMissing(missing)) => {
            let applied = sqlx::query("SELECT MAX(version) AS v FROM _sqlx_migrations")
                .fetch_one(&mut *conn)
                .await
                .ok()
                .and_then(|row| row.try_get::<i64, _>("v").ok())
                .unwrap_or(missing)
                .max(missing);
            let build = newest(migrator);
            if applied > build {
                Err(StoreError::SchemaNewer {
                    database: applied,
                    build,
                })
            } else {
                Err(MigrateError::VersionMissing(missing).into())
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// The newest migration applied to the database behind `pool`, and the newest this build
/// knows (equal when the schema is current).
pub(crate) async fn schema_versions(
    backend: Backend,
    pool: &AnyPool,
) -> Result<(i64, i64), StoreError> {
    let applied: Option<i64> = sqlx::query("SELECT MAX(version) AS v FROM _sqlx_migrations")
        .fetch_one(pool)
        .await?
        .try_get("v")?;
    Ok((applied.unwrap_or(0), newest(backend.migrations())))
}

/// Whole milliseconds of a statement timeout; none for no timeout or zero.
fn statement_timeout_ms(timeout: Option<Duration>) -> Option<u128> {
    timeout.map(|t| t.as_millis()).filter(|&ms| ms > 0)
}

/// The failure of the first connection, at open. A TLS failure (`sslmode` asks for TLS and
/// the server has none; a certificate that `sslrootcert` does not vouch for; a host name the
/// certificate does not name) or a file of the URL that is missing is a configuration
/// mistake and named so, not "try again later". Never names the URL: it may hold a password.
fn first_connect_error(e: sqlx::Error) -> StoreError {
    const HINT: &str = "check sslmode and sslrootcert in database_url: sslmode=verify-full \
                        needs a server that speaks TLS with a certificate for the URL's host \
                        name, issued by the CA in sslrootcert";
    match &e {
        sqlx::Error::Tls(cause) => {
            StoreError::Config(format!("TLS to PostgreSQL failed: {cause} ({HINT})"))
        }
        // rustls reports a refused certificate through the socket as invalid data.
        sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::InvalidData => {
            StoreError::Config(format!("TLS to PostgreSQL failed: {io} ({HINT})"))
        }
        sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::NotFound => {
            StoreError::Config(format!(
                "a file or socket that database_url names (sslrootcert, sslcert, sslkey, a \
                 socket directory) does not exist: {io}"
            ))
        }
        _ => StoreError::from(e),
    }
}

/// Adds `mode=rwc` (create when missing) and creates the parent directory.
fn sqlite_url(url: &str) -> Result<String, StoreError> {
    let path = url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:");
    let file = path.split('?').next().unwrap_or(path);
    if file.is_empty() || file == ":memory:" {
        return Err(StoreError::Config(
            "SQLite needs a file path (an in-memory database would lose acknowledged writes)"
                .to_owned(),
        ));
    }
    if let Some(dir) = std::path::Path::new(file)
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
    {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Config(format!("cannot create {}: {e}", dir.display())))?;
    }
    if url.contains("mode=") {
        Ok(url.to_owned())
    } else if url.contains('?') {
        Ok(format!("{url}&mode=rwc"))
    } else {
        Ok(format!("{url}?mode=rwc"))
    }
}
