//! The two backends: what differs between SQLite and PostgreSQL is confined here
//! (connection settings and the migration set). Queries elsewhere are portable SQL with
//! `$n` placeholders, which both drivers accept.

use sqlx::any::AnyPoolOptions;
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, Executor};

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
            Backend::Postgres => pool_opts.connect(&opts.database_url).await?,
        };
        Ok(pool)
    }

    pub(crate) async fn migrate(&self, pool: &AnyPool) -> Result<(), StoreError> {
        match self {
            Backend::Sqlite => SQLITE_MIGRATIONS.run(pool).await?,
            Backend::Postgres => POSTGRES_MIGRATIONS.run(pool).await?,
        }
        Ok(())
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
