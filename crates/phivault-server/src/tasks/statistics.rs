//! Keeps PostgreSQL's planner statistics fresh while serving.
//!
//! With no statistics, or statistics of a much smaller index, PostgreSQL takes the index
//! tables for tiny. The store's searches are written so that their plans do not rest on
//! statistics (candidates bound by id, per-row probes), but what is left to the planner (a
//! search whose every test matches thousands of rows, counts, joins of other queries) is
//! planned best with statistics that match the data. Autovacuum normally catches
//! up within a minute or so, but it may be off, and a burst of writes (an app's initial load
//! through transaction Bundles) outruns it. So the server checks at start and then every
//! [`CHECK_EVERY`] whether the resources it wrote since the last refresh make the statistics
//! stale, and refreshes them (`Store::refresh_statistics_if_stale`). `ANALYZE` writes only
//! histograms of blind tokens, ids and lengths: nothing plaintext.

use std::time::Duration;

use phivault_store::{StatisticsWatch, Store};

/// How often the write count is looked at: statistics lag the writes by this much at most
/// beyond the staleness rule (`phivault_store::STALE_AFTER_WRITES`).
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
