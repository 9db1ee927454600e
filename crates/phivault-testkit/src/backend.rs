//! Storage backends under test, and a throw-away PostgreSQL schema per server instance.

use std::process::Command;

use sqlx::{Connection, Executor, PgConnection};

use crate::markers::random_u64;

/// The environment variable naming the PostgreSQL server to test against (CI sets it to
/// `postgres://postgres@127.0.0.1:5432/test`). Unset: SQLite only.
pub const DATABASE_URL_ENV: &str = "PHIVAULT_TEST_DATABASE_URL";

/// A storage backend a suite runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// The embedded default: `<data_dir>/phivault.db`.
    Sqlite,
    /// PostgreSQL at `url` (each server gets its own schema there).
    Postgres {
        /// Base URL, e.g. `postgres://postgres@127.0.0.1:5432/test`.
        url: String,
    },
}

impl Backend {
    /// A short name for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres { .. } => "postgresql",
        }
    }

    /// True for PostgreSQL.
    pub fn is_postgres(&self) -> bool {
        matches!(self, Backend::Postgres { .. })
    }
}

/// The backends to run on: SQLite, plus PostgreSQL when [`DATABASE_URL_ENV`] is set.
pub fn backends() -> Vec<Backend> {
    let mut out = vec![Backend::Sqlite];
    if let Ok(url) = std::env::var(DATABASE_URL_ENV) {
        let url = url.trim();
        if !url.is_empty() {
            out.push(Backend::Postgres {
                url: url.to_owned(),
            });
        }
    }
    out
}

/// `url` with `options=-c search_path=<schema>` added to its query (sqlx passes `options` to
/// the server as the startup `options` parameter).
fn with_search_path(url: &str, schema: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}options=-c%20search_path%3D{schema}")
}

/// The `host:port` a PostgreSQL URL points at (port 5432 when absent).
pub fn postgres_target(url: &str) -> String {
    let (_, authority, _) = split_authority(url);
    let host_port = authority.rsplit('@').next().unwrap_or(authority);
    if host_port.starts_with('[') {
        // [v6]:port or [v6]
        if host_port.contains("]:") {
            host_port.to_owned()
        } else {
            format!("{host_port}:5432")
        }
    } else if host_port.contains(':') {
        host_port.to_owned()
    } else {
        format!("{host_port}:5432")
    }
}

/// `url` with its `host:port` replaced by `addr` (user info, path and query kept).
pub fn with_host(url: &str, addr: std::net::SocketAddr) -> String {
    let (scheme, authority, rest) = split_authority(url);
    let user = authority
        .rfind('@')
        .map(|i| &authority[..=i])
        .unwrap_or_default();
    format!("{scheme}{user}{addr}{rest}")
}

/// (`scheme://`, authority, rest starting at the path or query).
fn split_authority(url: &str) -> (&str, &str, &str) {
    let start = url.find("://").map(|i| i + 3).unwrap_or(0);
    let after = &url[start..];
    let end = after.find(['/', '?']).unwrap_or(after.len());
    (&url[..start], &after[..end], &after[end..])
}

/// A PostgreSQL schema made for one server instance, dropped (best effort) when dropped.
#[derive(Debug)]
pub struct PgSchema {
    base_url: String,
    name: String,
}

impl PgSchema {
    /// Creates `pv_<random>` at `base_url`.
    pub async fn create(base_url: &str) -> PgSchema {
        let name = format!("pv_{:016x}", random_u64());
        let mut conn = PgConnection::connect(base_url)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to PostgreSQL at {base_url}: {e}"));
        conn.execute(format!("CREATE SCHEMA {name}").as_str())
            .await
            .unwrap_or_else(|e| panic!("cannot create schema {name}: {e}"));
        let _ = conn.close().await;
        PgSchema {
            base_url: base_url.to_owned(),
            name,
        }
    }

    /// The schema's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The server's URL: the base URL with the schema as search path.
    pub fn url(&self) -> String {
        with_search_path(&self.base_url, &self.name)
    }

    /// The base URL (no search path).
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// `pg_dump --schema=<schema> <base url>`: the whole schema, DDL and data, as text.
    pub fn dump(&self) -> Vec<u8> {
        let out = Command::new("pg_dump")
            .arg(format!("--schema={}", self.name))
            .arg(&self.base_url)
            .output()
            .unwrap_or_else(|e| panic!("cannot run pg_dump: {e}"));
        assert!(
            out.status.success(),
            "pg_dump failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let base = self.base_url.clone();
        let name = self.name.clone();
        // Best effort, on a thread of its own: Drop may run inside a runtime.
        let dropper = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(mut conn) = PgConnection::connect(&base).await {
                    let _ = conn
                        .execute(format!("DROP SCHEMA IF EXISTS {name} CASCADE").as_str())
                        .await;
                    let _ = conn.close().await;
                }
            });
        });
        let _ = dropper.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let base = "postgres://postgres@127.0.0.1:5432/test";
        assert_eq!(
            with_search_path(base, "pv_1"),
            "postgres://postgres@127.0.0.1:5432/test?options=-c%20search_path%3Dpv_1"
        );
        assert_eq!(
            with_search_path("postgres://h/db?sslmode=disable", "s"),
            "postgres://h/db?sslmode=disable&options=-c%20search_path%3Ds"
        );
        assert_eq!(postgres_target(base), "127.0.0.1:5432");
        assert_eq!(postgres_target("postgres://u:p@db/x"), "db:5432");
        let addr: std::net::SocketAddr = "127.0.0.1:40000".parse().unwrap();
        assert_eq!(
            with_host(&with_search_path(base, "s"), addr),
            "postgres://postgres@127.0.0.1:40000/test?options=-c%20search_path%3Ds"
        );
        assert_eq!(
            with_host("postgres://u:p@db/x", addr),
            "postgres://u:p@127.0.0.1:40000/x"
        );
    }
}
