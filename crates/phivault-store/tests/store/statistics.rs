//! After a bulk load the planner has statistics for the index: `refresh_statistics` analyzes
//! phivault's tables on both backends (the search index above all, which every search joins).

use phivault_store::NoAudit;
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
