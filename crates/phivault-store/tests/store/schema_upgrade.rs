//! Upgrades of an existing database: a store written by an older schema opens under this one
//! with every row, and searches find what they found.

use phivault_fhir::ResourceType;
use phivault_store::NoAudit;
use sqlx::Row;

use super::{fixtures, observation, patient, query, valid};

/// The SQLite search index is a WITHOUT ROWID table from schema 15 on. A database of schema
/// 14 (its search index a rowid table, as made here by hand from the new one) is migrated at
/// open with every token kept, and the same searches find the same resources.
#[tokio::test]
async fn a_rowid_search_index_is_clustered_at_open_with_every_token() {
    let f = fixtures().await.into_iter().next().unwrap();
    assert_eq!(f.label, "sqlite");
    let s = &f.store;
    let p = s
        .create(valid(patient("Upgrade", "Ann")), &NoAudit)
        .await
        .unwrap();
    s.create(valid(observation(&p.id, "1-1")), &NoAudit)
        .await
        .unwrap();
    s.create(valid(observation(&p.id, "2-2")), &NoAudit)
        .await
        .unwrap();
    let rows = |s: &phivault_store::Store| {
        let pool = s.pool().clone();
        async move {
            let rows = sqlx::query(
                "SELECT tenant, rtype, token, id FROM search_index \
                 ORDER BY tenant, rtype, token, id",
            )
            .fetch_all(&pool)
            .await
            .unwrap();
            rows.iter()
                .map(|r| {
                    (
                        r.try_get::<String, _>(0).unwrap(),
                        r.try_get::<String, _>(1).unwrap(),
                        r.try_get::<Vec<u8>, _>(2).unwrap(),
                        r.try_get::<String, _>(3).unwrap(),
                    )
                })
                .collect::<Vec<_>>()
        }
    };
    let before = rows(s).await;
    assert!(before.len() > 10);
    let clustered = |s: &phivault_store::Store| {
        let pool = s.pool().clone();
        async move {
            let sql: String = sqlx::query(
                "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'search_index'",
            )
            .fetch_one(&pool)
            .await
            .unwrap()
            .try_get(0)
            .unwrap();
            sql.to_uppercase().contains("WITHOUT ROWID")
        }
    };
    assert!(clustered(s).await, "a new database's index is clustered");

    // Back to schema 14: the index as the rowid table it was, the migration not applied (one
    // connection: the pool's others may hold the old schema until they see the change).
    let mut conn = s.pool().acquire().await.unwrap();
    for statement in [
        "CREATE TABLE search_index_v14 (tenant TEXT NOT NULL, rtype TEXT NOT NULL, \
         token BLOB NOT NULL, id TEXT NOT NULL, PRIMARY KEY (tenant, rtype, token, id))",
        "INSERT INTO search_index_v14 SELECT tenant, rtype, token, id FROM search_index",
        "DROP TABLE search_index",
        "ALTER TABLE search_index_v14 RENAME TO search_index",
        "CREATE INDEX search_index_resource ON search_index (tenant, rtype, id)",
        "DELETE FROM _sqlx_migrations WHERE version = 15",
    ] {
        sqlx::query(statement).execute(&mut *conn).await.unwrap();
    }
    drop(conn);
    assert!(!clustered(s).await);
    f.store.close().await;

    let s = f.reopen(&f.key).await.unwrap();
    assert!(clustered(&s).await, "the migration clustered the index");
    assert_eq!(rows(&s).await, before, "every token kept");
    let obs = ResourceType::parse("Observation").unwrap();
    let page = s
        .search(obs, &query(obs, &[("code", "2-2")]))
        .await
        .unwrap();
    assert_eq!(page.total, 1);
    let pt = ResourceType::PATIENT;
    let page = s
        .search(pt, &query(pt, &[("family", "upgrade")]))
        .await
        .unwrap();
    assert_eq!(page.total, 1);
    assert_eq!(page.resources[0].id, p.id);
    s.close().await;
}
