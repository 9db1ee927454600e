//! Keeps PostgreSQL's planner statistics fresh while serving.
//!
//! With no statistics, or statistics of a much smaller index, PostgreSQL takes the index
//! tables for tiny and plans nested loops over them: a patient's search that takes
//! milliseconds turns into seconds, `$everything` into minutes. Autovacuum normally catches
//! up within a minute or so, but it may be off, and a burst of writes (an app's initial load
//! through transaction Bundles) outruns it. So the server checks at start and then every
//! [`CHECK_EVERY`] whether the resources it wrote since the last refresh make the statistics
//! stale, and refreshes them (`Store::refresh_statistics_if_stale`). `ANALYZE` writes only
//! histograms of blind tokens, ids and lengths: nothing plaintext.

use std::time::Duration;

use phivault_store::{StatisticsWatch, Store};

/// How often the write count is looked at (a load of a few thousand resources a second is
/// refreshed for every few thousand written at the latest).
pub(crate) const CHECK_EVERY: Duration = Duration::from_secs(5);

/// Runs until aborted.
pub(crate) async fn statistics_loop(store: Store, every: Duration) {
    let mut watch = StatisticsWatch::default();
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match store.refresh_statistics_if_stale(&mut watch).await {
            Ok(true) => tracing::info!(
                writes = store.resource_writes(),
                "planner statistics refreshed"
            ),
            Ok(false) => {}
            // Searches still work, only slower: logged, tried again at the next tick.
            Err(e) => tracing::warn!(error = %e, "refreshing planner statistics failed"),
        }
    }
}
