//! Login throttling, per account and per client address.
//!
//! **Per account**: after [`FAILURES_BEFORE_LOCKOUT`] (5) consecutive failed logins the
//! account is locked for [`FIRST_LOCKOUT_SECS`] (60 s). Each further failure (necessarily
//! after the lock has passed, since a locked account's password is not checked) locks it again
//! for twice as long as the previous lock: 120 s, 240 s, ... up to [`MAX_LOCKOUT_SECS`] (1 h).
//! A successful login resets the count. Known accounts keep the count in the store, which
//! checks the lock and counts the attempt in one statement *before* the password is checked
//! (the accounts service clears it after a complete login), so parallel guesses cannot all
//! read the same count. [`LoginThrottle`] is the same rule as a pure state machine, which the
//! service uses in memory for usernames that do not exist (checked and counted under one
//! lock, for the same reason).
//!
//! **Per address** ([`AddressLimiter`], in memory, one per server process): at most
//! [`ADDRESS_LIMIT`] (20) login attempts per [`ADDRESS_WINDOW_SECS`] (5 minutes) from one IPv4
//! address or one IPv6 /64 (a single host usually holds a whole /64), sliding window. Refused
//! attempts are not counted, so a client that waits gets in again. Only failures stay
//! counted: an attempt is recorded when it starts (so parallel attempts cannot all pass) and
//! [`AddressLimiter::forgive`] takes it back once it succeeded, so the users behind one
//! address (a clinic's NAT, a trusted reverse proxy) are not locked out by their own logins.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Mutex, MutexGuard, PoisonError};

use serde::{Deserialize, Serialize};

/// Consecutive failures that lock an account.
pub const FAILURES_BEFORE_LOCKOUT: u32 = 5;
/// The first lock's length, seconds.
pub const FIRST_LOCKOUT_SECS: i64 = 60;
/// The longest lock, seconds.
pub const MAX_LOCKOUT_SECS: i64 = 3_600;
/// Login attempts allowed per address per window.
pub const ADDRESS_LIMIT: usize = 20;
/// The per-address window, seconds.
pub const ADDRESS_WINDOW_SECS: i64 = 300;

/// The account is locked until `until` (Unix seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the account is temporarily locked after repeated failed logins")]
pub struct LockedUntil {
    /// When the lock ends.
    pub until: i64,
}

impl LockedUntil {
    /// Seconds left at `now` (for a `Retry-After` header), at least 1.
    pub fn retry_after(&self, now: i64) -> i64 {
        self.until.saturating_sub(now).max(1)
    }
}

/// Per-account failed-login state. Serializable so the store can keep it with the account.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginThrottle {
    consecutive_failures: u32,
    locked_until: Option<i64>,
}

impl LoginThrottle {
    /// A throttle with no failures.
    pub fn new() -> Self {
        Self::default()
    }

    /// `Ok` when a login may be attempted at `now`, else when the lock ends.
    pub fn check(&self, now: i64) -> Result<(), LockedUntil> {
        match self.locked_until {
            Some(until) if now < until => Err(LockedUntil { until }),
            _ => Ok(()),
        }
    }

    /// Counts a failed login at `now`, locking the account from the fifth consecutive failure.
    pub fn record_failure(&mut self, now: i64) {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        if let Some(secs) = lockout_secs(self.consecutive_failures) {
            self.locked_until = Some(now.saturating_add(secs));
        }
    }

    /// A successful login: the count and any lock are cleared.
    pub fn record_success(&mut self) {
        *self = Self::default();
    }

    /// Failed logins since the last success.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// The end of the current or last lock, if any.
    pub fn locked_until(&self) -> Option<i64> {
        self.locked_until
    }
}

/// How long the `failures`-th consecutive failure locks the account: none before the fifth,
/// then 60 s doubling per failure, at most an hour.
pub fn lockout_secs(failures: u32) -> Option<i64> {
    let beyond = failures.checked_sub(FAILURES_BEFORE_LOCKOUT)?;
    let secs = 1i64
        .checked_shl(beyond)
        .and_then(|factor| FIRST_LOCKOUT_SECS.checked_mul(factor))
        .filter(|secs| *secs > 0)
        .map_or(MAX_LOCKOUT_SECS, |secs| secs.min(MAX_LOCKOUT_SECS));
    Some(secs)
}

/// Too many login attempts from one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many login attempts from this address")]
pub struct AddressLimited {
    /// Seconds until an attempt from this address is allowed again (for `Retry-After`).
    pub retry_after_secs: i64,
}

/// Sliding-window limit of login attempts per client address, in memory.
///
/// Memory is bounded by the addresses seen in the last window times the limit: idle addresses
/// are pruned at most once per window.
#[derive(Debug)]
pub struct AddressLimiter {
    limit: usize,
    window_secs: i64,
    state: Mutex<LimiterState>,
}

#[derive(Debug, Default)]
struct LimiterState {
    attempts: HashMap<IpAddr, VecDeque<i64>>,
    last_prune: i64,
}

impl AddressLimiter {
    /// A limiter allowing `limit` attempts per `window_secs` per address.
    pub fn new(limit: usize, window_secs: i64) -> Self {
        Self {
            limit,
            window_secs,
            state: Mutex::new(LimiterState::default()),
        }
    }

    fn state(&self) -> MutexGuard<'_, LimiterState> {
        // The state is a set of counters: one left half-updated by a panic is still usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records an attempt from `addr` at `now`, or refuses it (without recording it) when the
    /// address has used its attempts in the window.
    pub fn check_and_record(&self, addr: IpAddr, now: i64) -> Result<(), AddressLimited> {
        let key = address_key(addr);
        let window = self.window_secs;
        let mut state = self.state();
        if now.saturating_sub(state.last_prune) >= window {
            prune(&mut state.attempts, now, window);
            state.last_prune = now;
        }
        let times = state.attempts.entry(key).or_default();
        drop_expired(times, now, window);
        if times.len() >= self.limit {
            let oldest = times.front().copied().unwrap_or(now);
            return Err(AddressLimited {
                retry_after_secs: oldest.saturating_add(window).saturating_sub(now).max(1),
            });
        }
        times.push_back(now);
        Ok(())
    }

    /// Takes back one attempt recorded for `addr` (the latest): the attempt succeeded, and
    /// only failures count against an address.
    pub fn forgive(&self, addr: IpAddr) {
        let key = address_key(addr);
        let mut state = self.state();
        if let Some(times) = state.attempts.get_mut(&key) {
            times.pop_back();
            if times.is_empty() {
                state.attempts.remove(&key);
            }
        }
    }

    /// Forgets addresses with no attempt in the window ending at `now`.
    pub fn prune(&self, now: i64) {
        let window = self.window_secs;
        let mut state = self.state();
        prune(&mut state.attempts, now, window);
        state.last_prune = now;
    }

    /// How many addresses are tracked.
    pub fn tracked_addresses(&self) -> usize {
        self.state().attempts.len()
    }
}

impl Default for AddressLimiter {
    /// 20 attempts per 5 minutes.
    fn default() -> Self {
        Self::new(ADDRESS_LIMIT, ADDRESS_WINDOW_SECS)
    }
}

fn drop_expired(times: &mut VecDeque<i64>, now: i64, window: i64) {
    let horizon = now.saturating_sub(window);
    while times.front().is_some_and(|t| *t <= horizon) {
        times.pop_front();
    }
}

fn prune(attempts: &mut HashMap<IpAddr, VecDeque<i64>>, now: i64, window: i64) {
    attempts.retain(|_, times| {
        drop_expired(times, now, window);
        !times.is_empty()
    });
}

/// IPv4 (also when mapped into IPv6) as is; other IPv6 addresses by their /64.
fn address_key(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(_) => addr,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const T0: i64 = 1_750_000_000;

    #[test]
    fn lockout_durations() {
        let cases = [
            (0, None),
            (1, None),
            (4, None),
            (5, Some(60)),
            (6, Some(120)),
            (7, Some(240)),
            (10, Some(1_920)),
            (11, Some(3_600)),
            (12, Some(3_600)),
            (100, Some(3_600)),
            (u32::MAX, Some(3_600)),
        ];
        for (failures, expected) in cases {
            assert_eq!(lockout_secs(failures), expected, "{failures} failures");
        }
    }

    #[test]
    fn engages_after_five_failures() {
        let mut t = LoginThrottle::new();
        for i in 0..4 {
            t.record_failure(T0 + i);
            assert_eq!(t.check(T0 + i), Ok(()), "after {} failures", i + 1);
        }
        t.record_failure(T0 + 4);
        assert_eq!(t.check(T0 + 4), Err(LockedUntil { until: T0 + 64 }));
        assert_eq!(t.check(T0 + 63), Err(LockedUntil { until: T0 + 64 }));
        assert_eq!(LockedUntil { until: T0 + 64 }.retry_after(T0 + 4), 60);
    }

    #[test]
    fn releases_after_the_back_off_and_doubles() {
        let mut t = LoginThrottle::new();
        for _ in 0..5 {
            t.record_failure(T0);
        }
        let mut now = T0;
        // (lock length after this failure)
        for expected in [60, 120, 240, 480, 960, 1_920, 3_600, 3_600] {
            assert!(t.check(now).is_err());
            assert!(
                t.check(now + expected - 1).is_err(),
                "still locked before {expected} s"
            );
            now += expected;
            assert_eq!(t.check(now), Ok(()), "released after {expected} s");
            t.record_failure(now);
        }
        assert_eq!(t.consecutive_failures(), 13);
    }

    #[test]
    fn success_resets() {
        let mut t = LoginThrottle::new();
        for _ in 0..4 {
            t.record_failure(T0);
        }
        t.record_success();
        assert_eq!(t, LoginThrottle::new());
        // Four more failures do not lock: the count started again.
        for _ in 0..4 {
            t.record_failure(T0);
        }
        assert_eq!(t.check(T0), Ok(()));
        t.record_failure(T0);
        assert!(t.check(T0).is_err());
        // After the lock, a success clears everything.
        t.record_success();
        assert_eq!(t.check(T0), Ok(()));
        assert_eq!(t.consecutive_failures(), 0);
        assert_eq!(t.locked_until(), None);
    }

    #[test]
    fn state_round_trips_through_serde() {
        let mut t = LoginThrottle::new();
        for _ in 0..6 {
            t.record_failure(T0);
        }
        let json = serde_json::to_string(&t).unwrap();
        let back: LoginThrottle = serde_json::from_str(&json).unwrap();
        assert_eq!(back, t);
        assert_eq!(back.check(T0 + 1), Err(LockedUntil { until: T0 + 120 }));
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn address_limit_in_window() {
        let limiter = AddressLimiter::default();
        let a = ip("192.0.2.1");
        for i in 0..20 {
            assert_eq!(limiter.check_and_record(a, T0 + i), Ok(()), "attempt {i}");
        }
        assert_eq!(
            limiter.check_and_record(a, T0 + 20),
            Err(AddressLimited {
                retry_after_secs: 280
            })
        );
        // Another address is not affected.
        assert_eq!(limiter.check_and_record(ip("192.0.2.2"), T0 + 20), Ok(()));
        // Refused attempts are not counted: once the first attempt leaves the window, one more
        // is allowed.
        assert!(limiter.check_and_record(a, T0 + 299).is_err());
        assert_eq!(limiter.check_and_record(a, T0 + 300), Ok(()));
        assert!(limiter.check_and_record(a, T0 + 300).is_err());
        assert_eq!(limiter.check_and_record(a, T0 + 301), Ok(()));
    }

    #[test]
    fn forgiven_attempts_do_not_count() {
        let limiter = AddressLimiter::new(3, 300);
        let a = ip("192.0.2.9");
        // A hundred successes from one address: each is forgiven, none is counted.
        for i in 0..100 {
            limiter.check_and_record(a, T0 + i).unwrap();
            limiter.forgive(a);
        }
        assert_eq!(limiter.tracked_addresses(), 0);
        // Three failures still lock it; forgiving an untracked address is harmless.
        limiter.forgive(ip("192.0.2.10"));
        for i in 0..3 {
            limiter.check_and_record(a, T0 + 100 + i).unwrap();
        }
        assert!(limiter.check_and_record(a, T0 + 103).is_err());
    }

    #[test]
    fn ipv6_is_limited_per_slash_64_and_mapped_ipv4_as_ipv4() {
        let limiter = AddressLimiter::new(2, 60);
        assert!(limiter.check_and_record(ip("2001:db8:1:2::1"), T0).is_ok());
        assert!(
            limiter
                .check_and_record(ip("2001:db8:1:2::ffff"), T0)
                .is_ok()
        );
        assert!(
            limiter
                .check_and_record(ip("2001:db8:1:2:abcd::9"), T0)
                .is_err()
        );
        assert!(limiter.check_and_record(ip("2001:db8:1:3::1"), T0).is_ok());
        assert!(limiter.check_and_record(ip("198.51.100.7"), T0).is_ok());
        assert!(
            limiter
                .check_and_record(ip("::ffff:198.51.100.7"), T0)
                .is_ok()
        );
        assert!(limiter.check_and_record(ip("198.51.100.7"), T0).is_err());
    }

    #[test]
    fn idle_addresses_are_pruned() {
        let limiter = AddressLimiter::new(5, 60);
        for i in 0..100u8 {
            limiter
                .check_and_record(IpAddr::from([10, 0, 0, i]), T0)
                .unwrap();
        }
        assert_eq!(limiter.tracked_addresses(), 100);
        // The next attempt after a window prunes the idle ones.
        limiter.check_and_record(ip("10.0.1.1"), T0 + 60).unwrap();
        assert_eq!(limiter.tracked_addresses(), 1);
        limiter.prune(T0 + 120);
        assert_eq!(limiter.tracked_addresses(), 0);
    }
}
