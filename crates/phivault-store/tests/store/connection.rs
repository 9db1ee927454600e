//! The connection to the database as several nodes share it: a database migrated by a newer
//! build is refused with both versions named, nodes starting at once migrate once, the
//! PostgreSQL statement timeout is every connection's default and a statement it cancels is
//! "unavailable" (503), and TLS that `sslmode` asks for and does not get stops the open with
//! a message naming TLS and never the password.

use std::time::Duration;

use phivault_crypto::StaticKeyProvider;
use phivault_store::{Store, StoreError, StoreOptions};
use sqlx::Row;

use super::{fixtures, random_hex};

/// A version no build will reach.
const FUTURE: i64 = 99_999;

/// Records a migration this build does not know, as a newer build would have.
async fn apply_future_migration(store: &Store) {
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(FUTURE)
    .bind("a newer build's migration")
    .bind(true)
    .bind(vec![0u8; 48])
    .bind(0i64)
    .execute(store.pool())
    .await
    .unwrap();
}

#[tokio::test]
async fn a_database_migrated_by_a_newer_build_is_refused_naming_both_versions() {
    for f in fixtures().await {
        let (applied, known) = f.store.schema_versions().await.unwrap();
        assert_eq!(applied, known, "{}: a fresh store is current", f.label);
        assert!(known >= 18, "{}: {known}", f.label);

        apply_future_migration(&f.store).await;
        assert_eq!(
            f.store.schema_versions().await.unwrap(),
            (FUTURE, known),
            "{}: the running node sees it is behind",
            f.label
        );
        let err = f.reopen(&f.key).await.unwrap_err();
        assert!(
            matches!(err, StoreError::SchemaNewer { database: FUTURE, build } if build == known),
            "{}: {err:?}",
            f.label
        );
        assert_eq!(
            err.to_string(),
            format!(
                "the database schema is at version {FUTURE}, newer than this phivault build \
                 (knows up to {known}): run the newer phivault on every node, or restore the \
                 database from a backup made by this version"
            ),
            "{}",
            f.label
        );
        assert_eq!(err.http_status(), 500);
        assert!(err.is_internal());

        // The refusal left the migration lock free: without the future row, a node opens.
        sqlx::query("DELETE FROM _sqlx_migrations WHERE version = $1")
            .bind(FUTURE)
            .execute(f.store.pool())
            .await
            .unwrap();
        let again = tokio::time::timeout(Duration::from_secs(30), f.reopen(&f.key))
            .await
            .expect("the migration lock was released")
            .unwrap();
        assert_eq!(again.schema_versions().await.unwrap(), (known, known));
    }
}

/// A fresh PostgreSQL schema of its own (the fixtures' stores are migrated already).
async fn fresh_pg_schema(base: &str) -> String {
    let schema = format!("pv_conn_{}", &random_hex()[..12]);
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(base)
        .await
        .expect("PHIVAULT_TEST_DATABASE_URL must point at a running PostgreSQL");
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&mut conn)
        .await
        .unwrap();
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}options=-c%20search_path%3D{schema}")
}

#[tokio::test]
async fn nodes_starting_at_once_on_postgresql_migrate_once() {
    let Ok(base) = std::env::var("PHIVAULT_TEST_DATABASE_URL") else {
        return;
    };
    let url = fresh_pg_schema(&base).await;
    let key = random_hex();
    // Four nodes open the empty schema at the same moment: one migrates under sqlx's
    // advisory lock, the others wait for it and find every migration applied.
    let opts = StoreOptions::new(url);
    let keys = StaticKeyProvider::from_hex(key);
    let stores: Vec<Store> = futures::future::join_all((0..4).map(|_| Store::open(&opts, &keys)))
        .await
        .into_iter()
        .collect::<Result<_, _>>()
        .unwrap();
    let (applied, known) = stores[0].schema_versions().await.unwrap();
    assert_eq!(applied, known);
    let rows = sqlx::query("SELECT version, COUNT(*) AS n FROM _sqlx_migrations GROUP BY version")
        .fetch_all(stores[0].pool())
        .await
        .unwrap();
    assert!(rows.len() > 10, "{}", rows.len());
    for row in rows {
        assert_eq!(row.try_get::<i64, _>("n").unwrap(), 1);
    }
    // One node created the keys; the others found them: one key-encryption key, and the
    // same index key everywhere (a resource one node writes, another finds by search).
    let keks: i64 = sqlx::query("SELECT COUNT(*) AS n FROM key_encryption_keys")
        .fetch_one(stores[0].pool())
        .await
        .unwrap()
        .try_get("n")
        .unwrap();
    assert_eq!(keks, 1);
    for s in &stores {
        s.check_keys().await.unwrap();
    }
    let created = stores[1]
        .create(
            super::valid(super::patient("Manynodes", "Ann")),
            &phivault_store::NoAudit,
        )
        .await
        .unwrap();
    for s in &stores {
        let patient = phivault_fhir::ResourceType::PATIENT;
        let found = s
            .search(patient, &super::query(patient, &[("family", "Manynodes")]))
            .await
            .unwrap();
        assert_eq!(found.total, 1);
        assert_eq!(found.resources[0].id, created.id);
    }
}

#[tokio::test]
async fn the_statement_timeout_is_every_connections_default_and_answers_503() {
    let Ok(base) = std::env::var("PHIVAULT_TEST_DATABASE_URL") else {
        return;
    };
    let url = fresh_pg_schema(&base).await;
    let mut opts = StoreOptions::new(url);
    opts.statement_timeout = Some(Duration::from_secs(1));
    // Migrations run without it (their connection sets none), and the store opens.
    let store = Store::open(&opts, &StaticKeyProvider::from_hex(random_hex()))
        .await
        .unwrap();
    let mut conn = store.pool().acquire().await.unwrap();
    let shown = |row: sqlx::any::AnyRow| row.try_get::<String, _>(0).unwrap();
    let timeout = sqlx::query("SHOW statement_timeout")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(shown(timeout), "1s");
    // The session default, not a SET: RESET comes back to it.
    sqlx::query("SET statement_timeout = 0")
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query("RESET statement_timeout")
        .execute(&mut *conn)
        .await
        .unwrap();
    let timeout = sqlx::query("SHOW statement_timeout")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(shown(timeout), "1s");
    let err = sqlx::query("SELECT pg_sleep(3)")
        .execute(&mut *conn)
        .await
        .unwrap_err();
    let err = StoreError::from(err);
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert_eq!(err.http_status(), 503);
    assert!(!err.is_internal());
    drop(conn);
    // The readiness checks stay well inside it.
    store.health().await.unwrap();
    assert!(store.check_audit_writable().await.unwrap());
    store.check_keys().await.unwrap();
}

/// A server that answers every SSLRequest with `N` (no TLS here), as a PostgreSQL without
/// `ssl = on` does.
async fn server_without_tls() -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = [0u8; 8];
                if socket.read_exact(&mut request).await.is_ok() {
                    let _ = socket.write_all(b"N").await;
                    let mut rest = Vec::new();
                    let _ = socket.read_to_end(&mut rest).await;
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn verify_full_against_a_server_without_tls_stops_the_open_naming_tls() {
    let addr = server_without_tls().await;
    let url = format!(
        "postgres://pv:Secret-Pw-Marker@{addr}/pv?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem"
    );
    let started = std::time::Instant::now();
    let err = Store::open(
        &StoreOptions::new(url),
        &StaticKeyProvider::from_hex(random_hex()),
    )
    .await
    .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "refused at once, not retried until the acquire timeout: {:?}",
        started.elapsed()
    );
    assert!(matches!(err, StoreError::Config(_)), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("TLS to PostgreSQL failed"), "{text}");
    assert!(text.contains("server does not support TLS"), "{text}");
    assert!(text.contains("sslmode"), "{text}");
    assert!(!text.contains("Secret-Pw-Marker"), "{text}");
    assert!(!format!("{err:?}").contains("Secret-Pw-Marker"), "{err:?}");
}

#[tokio::test]
async fn verify_full_without_the_servers_ca_is_refused_on_postgresql() {
    let Ok(base) = std::env::var("PHIVAULT_TEST_DATABASE_URL") else {
        return;
    };
    // The test server's certificate (if it has TLS at all) is not issued by a public CA
    // for this host: whether it has TLS or not, verify-full without its CA cannot connect.
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}sslmode=verify-full");
    let err = Store::open(
        &StoreOptions::new(url),
        &StaticKeyProvider::from_hex(random_hex()),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, StoreError::Config(_)), "{err:?}");
    assert!(
        err.to_string().contains("TLS to PostgreSQL failed"),
        "{err}"
    );
}

/// `PHIVAULT_TEST_DATABASE_TLS_URL`: a PostgreSQL URL with `sslmode=verify-full` and the
/// `sslrootcert` of that server's CA (for example, on Debian's PostgreSQL with its default
/// certificate: `postgres://postgres@localhost:5432/test?sslmode=verify-full&sslrootcert=
/// /etc/ssl/certs/ssl-cert-snakeoil.pem`). The store opens and its sessions are encrypted.
#[tokio::test]
async fn verify_full_with_the_servers_ca_connects_over_tls() {
    let Ok(base) = std::env::var("PHIVAULT_TEST_DATABASE_TLS_URL") else {
        return;
    };
    let schema = format!("pv_tls_{}", &random_hex()[..12]);
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&base)
        .await
        .unwrap();
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&mut conn)
        .await
        .unwrap();
    let url = format!("{base}&options=-c%20search_path%3D{schema}");
    let store = Store::open(
        &StoreOptions::new(url),
        &StaticKeyProvider::from_hex(random_hex()),
    )
    .await
    .unwrap();
    let encrypted: bool = sqlx::query("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(store.pool())
        .await
        .unwrap()
        .try_get(0)
        .unwrap();
    assert!(encrypted);
    store.close().await;
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&mut conn)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_read_only_session_cannot_take_audit_entries_on_postgresql() {
    let Ok(base) = std::env::var("PHIVAULT_TEST_DATABASE_URL") else {
        return;
    };
    let url = fresh_pg_schema(&base).await;
    let mut opts = StoreOptions::new(url);
    // One pooled connection, so the check below runs on the session made read-only here,
    // as every session of a hot standby (or of a database set read-only) is.
    opts.max_connections = 1;
    let store = Store::open(&opts, &StaticKeyProvider::from_hex(random_hex()))
        .await
        .unwrap();
    assert!(store.check_audit_writable().await.unwrap());
    let mut conn = store.pool().acquire().await.unwrap();
    sqlx::query("SET default_transaction_read_only = on")
        .execute(&mut *conn)
        .await
        .unwrap();
    drop(conn);
    assert!(!store.check_audit_writable().await.unwrap());
    // Reads still work: the database answers, only the trail cannot grow.
    store.health().await.unwrap();
    let mut conn = store.pool().acquire().await.unwrap();
    sqlx::query("SET default_transaction_read_only = off")
        .execute(&mut *conn)
        .await
        .unwrap();
    drop(conn);
    assert!(store.check_audit_writable().await.unwrap());
}

/// A node whose data-key cache is cold answers as many reads at once as its pool has
/// connections, and more: a read gives its pooled connection back before it opens the version
/// (which may read the data key on another connection), so reads never wait on each other
/// for the pool's timeout.
#[tokio::test]
async fn cold_reads_beyond_the_pool_size_do_not_wait_for_each_other() {
    for f in fixtures().await {
        // Written by one node: Observations of eight patients, eight data keys.
        let mut ids = Vec::new();
        for i in 0..8 {
            let p = f
                .store
                .create(
                    super::valid(super::patient("Cold", &format!("P{i}"))),
                    &phivault_store::NoAudit,
                )
                .await
                .unwrap();
            let o = f
                .store
                .create(
                    super::valid(super::observation(&p.id, "8867-4")),
                    &phivault_store::NoAudit,
                )
                .await
                .unwrap();
            ids.push(o.id);
        }
        // Read by another node with nothing cached, two connections and a short wait for one.
        let mut opts = StoreOptions::new(f.url.clone());
        opts.max_connections = 2;
        opts.acquire_timeout = Duration::from_secs(3);
        let node = Store::open(&opts, &StaticKeyProvider::from_hex(f.key.clone()))
            .await
            .unwrap();
        let reads = ids.iter().map(|id| {
            node.read(
                phivault_fhir::ResourceType::parse("Observation").unwrap(),
                id,
            )
        });
        for (i, r) in futures::future::join_all(reads)
            .await
            .into_iter()
            .enumerate()
        {
            let r = r.unwrap_or_else(|e| panic!("{}: cold read {i}: {e}", f.label));
            assert_eq!(r.id, ids[i], "{}", f.label);
        }
        node.close().await;
    }
}
