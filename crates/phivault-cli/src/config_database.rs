//! The `[database]` table of `phivault.toml`: the connection pool of `phivault serve` (file
//! only; the other commands open the database with the built-in pool and no statement
//! timeout, since an import or a restore may run long statements on purpose).
//!
//! - `max_connections`: pooled connections of one node; default 8 (2 to 1000). With several
//!   nodes on one PostgreSQL, nodes × `max_connections` (plus one leadership session per
//!   node and what backups and other clients use) must stay under the server's own
//!   `max_connections`.
//! - `acquire_timeout_secs`: how long a request waits for a pooled connection (or for a new
//!   one to open) before it is answered 503; default 5 (1 to 600).
//! - `statement_timeout_secs`: PostgreSQL only: the longest one statement may run before
//!   PostgreSQL cancels it and the request is answered 503; default 30, 0 for no limit (at
//!   most 86400). It is the session default of each pooled connection (sent at connection
//!   start), so put no `statement_timeout` in database_url's `options`: this one wins.
//!   Migrations at start and the `VACUUM FULL` that purges erased key material run without
//!   it. Behind a pooler that refuses start-up options (PgBouncer without
//!   `ignore_startup_parameters = options`), set 0 here and the timeout on the database
//!   role instead (`ALTER ROLE ... SET statement_timeout`). With a SQLite database_url it
//!   is accepted and ignored: SQLite runs in the server's process and has no statement
//!   timeout (its waits for the write lock are bounded by the busy timeout, 10 s).

use std::time::Duration;

use serde::Deserialize;

use crate::config::ConfigError;

/// Default `max_connections` (what `phivault_store::StoreOptions` has always used).
pub(crate) const DEFAULT_MAX_CONNECTIONS: u32 = 8;
/// Default `acquire_timeout_secs`.
pub(crate) const DEFAULT_ACQUIRE_TIMEOUT_SECS: u64 = 5;
/// Default `statement_timeout_secs`.
pub(crate) const DEFAULT_STATEMENT_TIMEOUT_SECS: u64 = 30;

/// `[database]` as written in the file; `None` means "not set here".
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DatabaseLayer {
    pub(crate) max_connections: Option<u32>,
    pub(crate) acquire_timeout_secs: Option<u64>,
    pub(crate) statement_timeout_secs: Option<u64>,
}

/// `[database]` resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DatabaseSettings {
    /// Pooled connections of this node.
    pub(crate) max_connections: u32,
    /// Wait for a pooled connection before answering 503.
    pub(crate) acquire_timeout: Duration,
    /// PostgreSQL's statement timeout; `None`: no limit.
    pub(crate) statement_timeout: Option<Duration>,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        DatabaseSettings {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            acquire_timeout: Duration::from_secs(DEFAULT_ACQUIRE_TIMEOUT_SECS),
            statement_timeout: Some(Duration::from_secs(DEFAULT_STATEMENT_TIMEOUT_SECS)),
        }
    }
}

impl DatabaseLayer {
    /// Checks the values and fills in the defaults.
    pub(crate) fn resolve(self) -> Result<DatabaseSettings, ConfigError> {
        let max_connections = self.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
        if !(2..=1000).contains(&max_connections) {
            return Err(ConfigError::Invalid {
                key: "database.max_connections",
                // One connection would leave a request waiting on the background tasks' (and
                // the other way round) until the acquire timeout.
                message: "must be between 2 and 1000".to_owned(),
            });
        }
        let acquire = self
            .acquire_timeout_secs
            .unwrap_or(DEFAULT_ACQUIRE_TIMEOUT_SECS);
        if !(1..=600).contains(&acquire) {
            return Err(ConfigError::Invalid {
                key: "database.acquire_timeout_secs",
                message: "must be between 1 and 600 seconds".to_owned(),
            });
        }
        let statement = self
            .statement_timeout_secs
            .unwrap_or(DEFAULT_STATEMENT_TIMEOUT_SECS);
        if statement > 86_400 {
            return Err(ConfigError::Invalid {
                key: "database.statement_timeout_secs",
                message: "must be between 0 (no limit) and 86400 seconds".to_owned(),
            });
        }
        Ok(DatabaseSettings {
            max_connections,
            acquire_timeout: Duration::from_secs(acquire),
            statement_timeout: (statement > 0).then(|| Duration::from_secs(statement)),
        })
    }
}

impl DatabaseSettings {
    /// The pool of `phivault serve`: these settings over `opts`.
    pub(crate) fn apply(&self, opts: &mut phivault_store::StoreOptions) {
        opts.max_connections = self.max_connections;
        opts.acquire_timeout = self.acquire_timeout;
        opts.statement_timeout = self.statement_timeout;
    }

    /// The `[database]` table as TOML.
    pub(crate) fn to_toml(&self) -> String {
        format!(
            "\n[database]\nmax_connections = {}\nacquire_timeout_secs = {}\n\
             statement_timeout_secs = {}\n",
            self.max_connections,
            self.acquire_timeout.as_secs(),
            self.statement_timeout.map_or(0, |t| t.as_secs())
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::{Layer, parse_file, resolve};

    #[test]
    fn defaults_values_and_mistakes() {
        let d = DatabaseLayer::default().resolve().unwrap();
        assert_eq!(d, DatabaseSettings::default());
        assert_eq!(d.max_connections, 8);
        assert_eq!(d.acquire_timeout, Duration::from_secs(5));
        assert_eq!(d.statement_timeout, Some(Duration::from_secs(30)));
        // The pool the store has always had, plus the statement timeout.
        let mut opts = phivault_store::StoreOptions::new("postgres://h/d");
        let before = opts.clone();
        d.apply(&mut opts);
        assert_eq!(opts.max_connections, before.max_connections);
        assert_eq!(opts.acquire_timeout, before.acquire_timeout);
        assert_eq!(opts.statement_timeout, Some(Duration::from_secs(30)));

        let s = DatabaseLayer {
            max_connections: Some(40),
            acquire_timeout_secs: Some(2),
            statement_timeout_secs: Some(0),
        }
        .resolve()
        .unwrap();
        assert_eq!(s.max_connections, 40);
        assert_eq!(s.acquire_timeout, Duration::from_secs(2));
        assert_eq!(s.statement_timeout, None, "0 is no limit");
        assert!(s.to_toml().contains(
            "[database]\nmax_connections = 40\nacquire_timeout_secs = 2\n\
             statement_timeout_secs = 0\n"
        ));
        for (bad, key) in [
            (
                DatabaseLayer {
                    max_connections: Some(0),
                    ..DatabaseLayer::default()
                },
                "database.max_connections",
            ),
            (
                DatabaseLayer {
                    max_connections: Some(1),
                    ..DatabaseLayer::default()
                },
                "database.max_connections",
            ),
            (
                DatabaseLayer {
                    max_connections: Some(1001),
                    ..DatabaseLayer::default()
                },
                "database.max_connections",
            ),
            (
                DatabaseLayer {
                    acquire_timeout_secs: Some(0),
                    ..DatabaseLayer::default()
                },
                "database.acquire_timeout_secs",
            ),
            (
                DatabaseLayer {
                    acquire_timeout_secs: Some(601),
                    ..DatabaseLayer::default()
                },
                "database.acquire_timeout_secs",
            ),
            (
                DatabaseLayer {
                    statement_timeout_secs: Some(86_401),
                    ..DatabaseLayer::default()
                },
                "database.statement_timeout_secs",
            ),
        ] {
            let e = bad.resolve().unwrap_err().to_string();
            assert!(e.contains(key), "{e}");
        }
    }

    #[test]
    fn the_file_table_parses_and_prints_back() {
        let text = "database_url = \"postgres://pv@db/pv?sslmode=verify-full&\
                    sslrootcert=/run/secrets/pg-ca.pem\"\n\
                    [database]\nmax_connections = 20\nstatement_timeout_secs = 10\n";
        let s = resolve(
            Layer::default(),
            parse_file(Path::new("t.toml"), text).unwrap(),
        )
        .unwrap();
        assert_eq!(s.database.max_connections, 20);
        assert_eq!(s.database.acquire_timeout, Duration::from_secs(5));
        assert_eq!(s.database.statement_timeout, Some(Duration::from_secs(10)));
        let printed = s.to_toml();
        assert!(
            printed.contains("statement_timeout_secs = 10\n"),
            "{printed}"
        );
        let again = resolve(
            Layer::default(),
            parse_file(Path::new("t.toml"), &printed).unwrap(),
        )
        .unwrap();
        assert_eq!(again.database, s.database);
        assert_eq!(again.database_url, s.database_url);
        // Unknown keys and wrong types are named with their line.
        for (text, needle) in [
            ("[database]\nmax_conections = 3\n", "max_conections"),
            ("[database]\nmax_connections = -1\n", "line 2"),
            ("[database]\nstatement_timeout_secs = \"30s\"\n", "line 2"),
        ] {
            let e = parse_file(Path::new("t.toml"), text)
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{text}: {e}");
        }
        // Values that parse but cannot work are refused when resolved, naming the key.
        let e = resolve(
            Layer::default(),
            parse_file(Path::new("t.toml"), "[database]\nmax_connections = 1\n").unwrap(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("setting database.max_connections"), "{e}");
    }
}
