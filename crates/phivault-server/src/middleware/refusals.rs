//! Refused unauthenticated requests, aggregated per client address.
//!
//! Rules it keeps:
//! - **the evidence is kept, the trail is not flooded**: in each window, the first refused
//!   unauthenticated request (no, malformed, unknown, expired or revoked bearer token) from a
//!   client address gets its full entry, as every request does; the further ones from that
//!   address are counted here, and at the end of the window one summary entry
//!   ([`AuditEntry::refusal_summary`]) records the address, how many (the first included),
//!   the first and last time and the routes asked for (at most [`SUMMARY_SAMPLE`]). A flood
//!   therefore adds two entries per address per window, whatever its size;
//! - **only requests that name no account**: failed logins and OAuth2 client authentication
//!   name an account and stay audited one by one (the caller decides; see `edge`);
//! - **memory is bounded**: at most `max_addresses` addresses are tracked per window; requests
//!   from further addresses go, without a full entry, to one overflow summary that still
//!   counts them and names a sample of their addresses;
//! - **what a crash loses**: the counts of the current window live in memory until the window
//!   ends or the server shuts down gracefully (both flush); a `kill -9` loses at most one
//!   window of counts. The full entry of each address's first refusal is durable before its
//!   response leaves, like every entry.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use phivault_audit::{AuditEntry, AuditError, AuditLog, RefusalSummary, SUMMARY_SAMPLE};

/// How refusals are aggregated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefusalLimits {
    /// The length of a window; its counts are written when it ends.
    pub window: Duration,
    /// The most client addresses tracked in one window.
    pub max_addresses: usize,
}

impl Default for RefusalLimits {
    /// A 60 s window, 10,000 addresses.
    fn default() -> Self {
        RefusalLimits {
            window: Duration::from_secs(60),
            max_addresses: 10_000,
        }
    }
}

/// What to do with one refused unauthenticated request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The first from its address in this window: write its full entry.
    Record,
    /// Counted for the window's summary: write nothing now.
    Counted,
}

/// The refusals of one address (or of the overflow) in the current window.
#[derive(Debug, Default)]
struct Bucket {
    count: u64,
    first: i64,
    last: i64,
    routes: BTreeSet<String>,
    addresses: BTreeSet<String>,
    truncated: bool,
}

impl Bucket {
    fn add(&mut self, route: &str, at: i64) {
        if self.count == 0 || at < self.first {
            self.first = at;
        }
        self.last = self.last.max(at);
        self.count = self.count.saturating_add(1);
        bounded_insert(&mut self.routes, route, &mut self.truncated);
    }

    /// Adds the counts of `other` (a bucket that could not be written, put back).
    fn merge(&mut self, other: Bucket) {
        if other.count == 0 {
            return;
        }
        if self.count == 0 || other.first < self.first {
            self.first = other.first;
        }
        self.last = self.last.max(other.last);
        self.count = self.count.saturating_add(other.count);
        self.truncated |= other.truncated;
        for r in other.routes {
            bounded_insert(&mut self.routes, &r, &mut self.truncated);
        }
        for a in other.addresses {
            bounded_insert(&mut self.addresses, &a, &mut self.truncated);
        }
    }

    fn summary(&self) -> RefusalSummary {
        RefusalSummary {
            count: self.count,
            first: self.first,
            last: self.last,
            routes: self.routes.iter().cloned().collect(),
            addresses: self.addresses.iter().cloned().collect(),
            truncated: self.truncated,
        }
    }
}

/// Inserts `value` unless the set holds [`SUMMARY_SAMPLE`] values already (then notes the
/// truncation).
fn bounded_insert(set: &mut BTreeSet<String>, value: &str, truncated: &mut bool) {
    if set.contains(value) {
        return;
    }
    if set.len() < SUMMARY_SAMPLE {
        set.insert(value.to_owned());
    } else {
        *truncated = true;
    }
}

#[derive(Debug, Default)]
struct Window {
    by_address: HashMap<IpAddr, Bucket>,
    overflow: Bucket,
}

/// The refusals of the current window, shared by every request.
#[derive(Debug)]
pub struct RefusalTally {
    limits: RefusalLimits,
    window: Mutex<Window>,
}

/// Now, in unix milliseconds.
fn now_millis() -> i64 {
    let t = time::OffsetDateTime::now_utc();
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

impl RefusalTally {
    /// An empty tally.
    pub fn new(limits: RefusalLimits) -> RefusalTally {
        RefusalTally {
            limits: RefusalLimits {
                window: limits.window.max(Duration::from_secs(1)),
                max_addresses: limits.max_addresses.max(1),
            },
            window: Mutex::new(Window::default()),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> RefusalLimits {
        self.limits
    }

    fn window(&self) -> MutexGuard<'_, Window> {
        // Counters only: a window left half-updated by a panic is still usable.
        self.window.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a refused unauthenticated request from `address` for `route` (`METHOD
    /// /template`) at `at` (unix ms), and says whether its full entry is to be written.
    pub(crate) fn observe(&self, address: IpAddr, route: &str, at: i64) -> Refusal {
        let mut w = self.window();
        if let Some(bucket) = w.by_address.get_mut(&address) {
            bucket.add(route, at);
            return Refusal::Counted;
        }
        if w.by_address.len() >= self.limits.max_addresses {
            let text = address.to_string();
            let overflow = &mut w.overflow;
            overflow.add(route, at);
            bounded_insert(&mut overflow.addresses, &text, &mut overflow.truncated);
            return Refusal::Counted;
        }
        let mut bucket = Bucket::default();
        bucket.add(route, at);
        w.by_address.insert(address, bucket);
        Refusal::Record
    }

    /// Ends the window: appends one summary entry per address with more than its first
    /// refusal counted, and one for the overflow when it counted anything; the next window
    /// starts empty. Returns how many summaries were written. When an append fails, the
    /// counts not yet written are put back into the current window (written by a later
    /// flush) and the error is returned.
    pub async fn flush(&self, audit: &AuditLog) -> Result<usize, AuditError> {
        let taken = std::mem::take(&mut *self.window());
        let mut pending: Vec<(Option<IpAddr>, Bucket)> = taken
            .by_address
            .into_iter()
            .filter(|(_, b)| b.count > 1)
            .map(|(a, b)| (Some(a), b))
            .collect();
        pending.sort_by_key(|(a, _)| *a);
        if taken.overflow.count > 0 {
            pending.push((None, taken.overflow));
        }
        let mut written = 0;
        let mut rest = pending.into_iter();
        while let Some((address, bucket)) = rest.next() {
            let entry = AuditEntry::refusal_summary(
                bucket.summary(),
                address.map(|a| a.to_string()),
                uuid::Uuid::new_v4().to_string(),
                now_millis(),
            );
            if let Err(e) = audit.append(&entry).await {
                let mut w = self.window();
                for (address, bucket) in std::iter::once((address, bucket)).chain(rest) {
                    match address {
                        Some(a) => w.by_address.entry(a).or_default().merge(bucket),
                        None => w.overflow.merge(bucket),
                    }
                }
                return Err(e);
            }
            written += 1;
        }
        Ok(written)
    }
}

/// Flushes `tally` at the end of every window, for as long as the server serves.
pub(crate) async fn flush_loop(
    tally: std::sync::Arc<RefusalTally>,
    audit: std::sync::Arc<AuditLog>,
) {
    let mut ticks = tokio::time::interval(tally.limits().window);
    // The first tick is immediate: skip it, a window has just started.
    ticks.tick().await;
    loop {
        ticks.tick().await;
        if let Err(e) = tally.flush(&audit).await {
            tracing::error!(error = %e, "writing the summary of refused requests failed; retried at the next window");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn first_is_recorded_then_counted_and_memory_is_bounded() {
        let t = RefusalTally::new(RefusalLimits {
            window: Duration::from_secs(60),
            max_addresses: 2,
        });
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert_eq!(t.observe(a, "GET /fhir/{type}", 10), Refusal::Record);
        assert_eq!(t.observe(a, "GET /fhir/{type}", 5), Refusal::Counted);
        assert_eq!(t.observe(b, "GET /fhir/{type}", 7), Refusal::Record);
        for i in 0..100u8 {
            let c: IpAddr = format!("198.51.100.{i}").parse().unwrap();
            assert_eq!(t.observe(c, &format!("GET /r{i}"), 20), Refusal::Counted);
        }
        let w = t.window();
        assert_eq!(w.by_address.len(), 2);
        let bucket = &w.by_address[&a];
        assert_eq!((bucket.count, bucket.first, bucket.last), (2, 5, 10));
        assert_eq!(w.overflow.count, 100);
        assert_eq!(w.overflow.addresses.len(), SUMMARY_SAMPLE);
        assert_eq!(w.overflow.routes.len(), SUMMARY_SAMPLE);
        assert!(w.overflow.truncated);
        assert!(
            w.overflow
                .summary()
                .addresses
                .windows(2)
                .all(|p| p[0] < p[1])
        );
    }
}
