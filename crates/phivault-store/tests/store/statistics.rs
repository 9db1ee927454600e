//! After a bulk load the planner has statistics for the index: `refresh_statistics` analyzes
//! phivault's tables on both backends (the search index above all, which every search joins).

use phivault_store::{NoAudit, StatisticsWatch};
use sqlx::Row;

use super::{fixtures, observation, patient, valid};

#[tokio::test]
async fn refreshed_statistics_cover_the_search_index() {
    for f in fixtures().await {
        let s = &f.store;
        for i in 0..20 {
            let p = s
                .create(valid(patient(&format!("Stat{i}"), "Ann")), &NoAudit)
                .await
                .unwrap()
                .id;
            s.create(valid(observation(&p, "1")), &NoAudit)
                .await
                .unwrap();
        }
        let indexed: i64 = sqlx::query("SELECT COUNT(*) FROM search_index")
            .fetch_one(s.pool())
            .await
            .unwrap()
            .try_get(0)
            .unwrap();
        assert!(indexed > 40, "{}", f.label);

        if f.label == "sqlite" {
            let before: i64 = sqlx::query(
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'sqlite_stat1'",
            )
            .fetch_one(s.pool())
            .await
            .unwrap()
            .try_get(0)
            .unwrap();
            assert_eq!(before, 0, "nothing analyzed the new database yet");
        }

        s.refresh_statistics().await.unwrap();

        if f.label == "sqlite" {
            let rows: i64 =
                sqlx::query("SELECT COUNT(*) FROM sqlite_stat1 WHERE tbl = 'search_index'")
                    .fetch_one(s.pool())
                    .await
                    .unwrap()
                    .try_get(0)
                    .unwrap();
            assert!(rows > 0, "sqlite_stat1 has the search index");
        } else {
            // ANALYZE of a table this small reads every row: the estimate is the count.
            let estimate: f64 = sqlx::query(
                "SELECT reltuples::float8 FROM pg_class \
                 WHERE relname = 'search_index' AND relnamespace = current_schema()::regnamespace",
            )
            .fetch_one(s.pool())
            .await
            .unwrap()
            .try_get(0)
            .unwrap();
            assert_eq!(estimate as i64, indexed, "{}", f.label);
        }
    }
}

/// A server keeps PostgreSQL's statistics fresh by itself: at start when they were never
/// gathered, then once enough resources were written since the last refresh; SQLite is left
/// alone (its searches do not depend on statistics).
#[tokio::test]
async fn stale_statistics_are_refreshed_as_writes_accumulate() {
    for f in fixtures().await {
        let s = &f.store;
        let mut watch = StatisticsWatch::after_writes(10);
        let refreshed = s.refresh_statistics_if_stale(&mut watch).await.unwrap();
        if f.label == "sqlite" {
            assert!(!refreshed);
            continue;
        }
        assert!(refreshed, "a never-analyzed index is refreshed at start");
        assert!(
            !s.refresh_statistics_if_stale(&mut watch).await.unwrap(),
            "nothing written since"
        );
        let p = s
            .create(valid(patient("Stale", "Ann")), &NoAudit)
            .await
            .unwrap()
            .id;
        for _ in 0..4 {
            s.create(valid(observation(&p, "1")), &NoAudit)
                .await
                .unwrap();
        }
        assert!(
            !s.refresh_statistics_if_stale(&mut watch).await.unwrap(),
            "5 writes are fewer than the watch's 10"
        );
        for _ in 0..5 {
            s.create(valid(observation(&p, "1")), &NoAudit)
                .await
                .unwrap();
        }
        assert!(s.refresh_statistics_if_stale(&mut watch).await.unwrap());
        let estimate: f64 = sqlx::query(
            "SELECT reltuples::float8 FROM pg_class WHERE oid = to_regclass('current_resources')",
        )
        .fetch_one(s.pool())
        .await
        .unwrap()
        .try_get(0)
        .unwrap();
        assert_eq!(estimate, 10.0, "the refresh counted what was written");
    }
}
