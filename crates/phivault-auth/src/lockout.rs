//! Login throttling, per account and per client address.
//!
//! **Per account**: after [`FAILURES_BEFORE_LOCKOUT`] (5) consecutive failed logins the
//! account is locked for [`FIRST_LOCKOUT_SECS`] (60 s). Each further failure (necessarily
//! after the lock has passed, since a locked account's password is not checked) locks it again
//! for twice as long as the previous lock: 120 s, 240 s, ... up to [`MAX_LOCKOUT_SECS`] (1 h).
//! A successful login resets the count. Known accounts keep the count in the store, which
//! checks the lock and counts the attempt in one statement *before* the password is checked
//! (the accounts service clears it after a complete login), so parallel guesses cannot all
//! read the same count. Usernames that do not exist are counted and locked the same way, in
//! the store too, by a blind token of the name, in one statement (so an unknown account locks
//! like a known one and the two cannot be told apart); an unknown name's count is forgotten
//! [`UNKNOWN_NAME_KEEP_SECS`] (a day) after its last counted attempt, where a known account's
//! is kept until a complete login. [`LoginThrottle`] is the same rule as a pure state machine.
//!
//! **Per address** ([`AddressLimiter`]): at most [`ADDRESS_LIMIT`] (20) login attempts per
//! [`ADDRESS_WINDOW_SECS`] (5 minutes) from one IPv4 address or one IPv6 /64 (a single host
//! usually holds a whole /64), sliding window. Refused attempts are not counted, so a client
//! that waits gets in again. Only failures stay counted: an attempt is recorded when it starts
//! (so parallel attempts cannot all pass) and [`AddressLimiter::forgive`] takes it back once it
//! succeeded, so the users behind one address (a clinic's NAT, a trusted reverse proxy) are not
//! locked out by their own logins.
//!
//! **Shared by every server on the database**: both the per-account and unknown-name counts
//! and each address's attempts are kept in the store (by blind tokens: no client address and
//! no username that was tried is stored), checked and counted in one statement or one
//! transaction holding the row, so a guess on one node counts on every other and parallel
//! guesses across nodes cannot all pass.

use std::net::{IpAddr, Ipv6Addr};

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
/// How long the failed logins of a username without an account are remembered after its last
/// counted attempt, seconds (a day). Telling an unknown name from a known one by waiting for
/// its count to be forgotten costs a day per guess; the rows stay bounded by a day of attempts,
/// which the per-address limit bounds in turn.
pub const UNKNOWN_NAME_KEEP_SECS: i64 = 86_400;

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

/// Per-account failed-login state: the lockout rule as a pure state machine. The store's
/// statements keep the same rule for accounts and unknown usernames (as columns, not this
/// value); it is serializable for tools and tests that keep it themselves.
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

/// The per-address rule: at most `limit` attempts per `window_secs` (sliding) from one client
/// address ([`AddressLimiter::key`]), refused attempts not counted, successful ones taken back.
///
/// It decides on one address's list of counted attempts (Unix times, oldest first) and holds
/// no state: the accounts service keeps each address's list in the store, which hands it to
/// [`AddressLimiter::check_and_record`] or [`AddressLimiter::forgive`] and writes it back in
/// one transaction holding the address's row, so every server on the database counts the same
/// attempts and parallel attempts cannot all pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressLimiter {
    limit: usize,
    window_secs: i64,
}

impl AddressLimiter {
    /// A limiter allowing `limit` attempts per `window_secs` per address.
    pub fn new(limit: usize, window_secs: i64) -> Self {
        Self { limit, window_secs }
    }

    /// Attempts allowed per window.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// The window, seconds.
    pub fn window_secs(&self) -> i64 {
        self.window_secs
    }

    /// What is limited, as text (the value the store keeps a blind token of): an IPv4
    /// address (also when mapped into IPv6) as is, any other IPv6 address by its /64
    /// (`2001:db8:1:2::/64`), since a single host usually holds a whole /64.
    pub fn key(addr: IpAddr) -> String {
        match addr {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => v4.to_string(),
                None => {
                    let s = v6.segments();
                    format!("{}/64", Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
                }
            },
        }
    }

    /// Records an attempt at `now` in `attempts` (one address's counted attempts, in any
    /// order), or refuses it (without recording it) when the address has used its attempts in
    /// the window. Attempts that left the window are dropped first.
    pub fn check_and_record(
        &self,
        attempts: &mut Vec<i64>,
        now: i64,
    ) -> Result<(), AddressLimited> {
        let horizon = now.saturating_sub(self.window_secs);
        attempts.retain(|t| *t > horizon);
        if attempts.len() >= self.limit {
            let oldest = attempts.iter().copied().min().unwrap_or(now);
            return Err(AddressLimited {
                retry_after_secs: oldest
                    .saturating_add(self.window_secs)
                    .saturating_sub(now)
                    .max(1),
            });
        }
        attempts.push(now);
        Ok(())
    }

    /// Takes back one attempt of `attempts` (the latest): the attempt succeeded, and only
    /// failures count against an address. Harmless on an empty list.
    pub fn forgive(attempts: &mut Vec<i64>) {
        attempts.pop();
    }
}

impl Default for AddressLimiter {
    /// 20 attempts per 5 minutes.
    fn default() -> Self {
        Self::new(ADDRESS_LIMIT, ADDRESS_WINDOW_SECS)
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

    /// The store's part, in memory: each address's list of counted attempts.
    #[derive(Default)]
    struct Lists(std::collections::HashMap<String, Vec<i64>>);

    impl Lists {
        fn attempt(
            &mut self,
            l: &AddressLimiter,
            a: IpAddr,
            now: i64,
        ) -> Result<(), AddressLimited> {
            let list = self.0.entry(AddressLimiter::key(a)).or_default();
            l.check_and_record(list, now)
        }

        fn forgive(&mut self, a: IpAddr) {
            if let Some(list) = self.0.get_mut(&AddressLimiter::key(a)) {
                AddressLimiter::forgive(list);
            }
        }

        fn counted(&self, a: IpAddr) -> usize {
            self.0.get(&AddressLimiter::key(a)).map_or(0, Vec::len)
        }
    }

    #[test]
    fn address_limit_in_window() {
        let limiter = AddressLimiter::default();
        let mut lists = Lists::default();
        let a = ip("192.0.2.1");
        for i in 0..20 {
            assert_eq!(lists.attempt(&limiter, a, T0 + i), Ok(()), "attempt {i}");
        }
        assert_eq!(
            lists.attempt(&limiter, a, T0 + 20),
            Err(AddressLimited {
                retry_after_secs: 280
            })
        );
        // Another address is not affected.
        assert_eq!(lists.attempt(&limiter, ip("192.0.2.2"), T0 + 20), Ok(()));
        // Refused attempts are not counted: once the first attempt leaves the window, one more
        // is allowed.
        assert!(lists.attempt(&limiter, a, T0 + 299).is_err());
        assert_eq!(lists.attempt(&limiter, a, T0 + 300), Ok(()));
        assert!(lists.attempt(&limiter, a, T0 + 300).is_err());
        assert_eq!(lists.attempt(&limiter, a, T0 + 301), Ok(()));
        assert_eq!(lists.counted(a), 20);
    }

    #[test]
    fn forgiven_attempts_do_not_count() {
        let limiter = AddressLimiter::new(3, 300);
        let mut lists = Lists::default();
        let a = ip("192.0.2.9");
        // A hundred successes from one address: each is forgiven, none is counted.
        for i in 0..100 {
            lists.attempt(&limiter, a, T0 + i).unwrap();
            lists.forgive(a);
        }
        assert_eq!(lists.counted(a), 0);
        // Three failures still lock it; forgiving an address without attempts is harmless.
        lists.forgive(ip("192.0.2.10"));
        AddressLimiter::forgive(&mut Vec::new());
        for i in 0..3 {
            lists.attempt(&limiter, a, T0 + 100 + i).unwrap();
        }
        assert!(lists.attempt(&limiter, a, T0 + 103).is_err());
    }

    #[test]
    fn ipv6_is_limited_per_slash_64_and_mapped_ipv4_as_ipv4() {
        let limiter = AddressLimiter::new(2, 60);
        let mut lists = Lists::default();
        let mut attempt = |a: &str| lists.attempt(&limiter, ip(a), T0);
        assert!(attempt("2001:db8:1:2::1").is_ok());
        assert!(attempt("2001:db8:1:2::ffff").is_ok());
        assert!(attempt("2001:db8:1:2:abcd::9").is_err());
        assert!(attempt("2001:db8:1:3::1").is_ok());
        assert!(attempt("198.51.100.7").is_ok());
        assert!(attempt("::ffff:198.51.100.7").is_ok());
        assert!(attempt("198.51.100.7").is_err());
        assert_eq!(
            AddressLimiter::key(ip("2001:db8:1:2:abcd::9")),
            "2001:db8:1:2::/64"
        );
        assert_eq!(
            AddressLimiter::key(ip("::ffff:198.51.100.7")),
            "198.51.100.7"
        );
        assert_eq!(AddressLimiter::key(ip("198.51.100.7")), "198.51.100.7");
    }

    #[test]
    fn attempts_leave_the_window_and_lists_need_not_be_sorted() {
        let limiter = AddressLimiter::new(3, 60);
        // Times another node wrote with a clock a little behind: the rule does not rely on
        // the order.
        let mut list = vec![T0 + 5, T0, T0 + 2];
        assert_eq!(
            limiter.check_and_record(&mut list, T0 + 10),
            Err(AddressLimited {
                retry_after_secs: 50
            })
        );
        assert_eq!(list.len(), 3);
        // At T0 + 60 the attempt of T0 has left the window.
        limiter.check_and_record(&mut list, T0 + 60).unwrap();
        assert_eq!(list, vec![T0 + 5, T0 + 2, T0 + 60]);
        // After a whole window without attempts the list empties (the store then deletes it).
        let mut list = vec![T0, T0 + 1];
        let _ = AddressLimiter::new(0, 60).check_and_record(&mut list, T0 + 61);
        assert!(list.is_empty());
    }
}
