//! Login limits shared by every server on one database: the attempts counted against a client
//! address, and the failed logins of usernames that have no account. phivault-auth decides the
//! rules (`phivault_auth::lockout`); this module keeps their state where every node sees it,
//! so a guess on one node counts on every other.
//!
//! - **Nothing that was tried is stored.** A row is found by a blind token: the HMAC under the
//!   tenant's index key of (`directory`, tenant, kind, value) with kinds of its own
//!   ([`ADDRESS_KIND`], [`UNKNOWN_NAME_KIND`]), so neither a client address nor a username is
//!   written, and the tokens match neither the users' username tokens nor search tokens.
//! - **Checked and counted at once.** An address's attempts are read, decided on and written
//!   back in one transaction that holds the row (`SELECT ... FOR UPDATE` on PostgreSQL; on
//!   SQLite `BEGIN IMMEDIATE` takes the database's write lock, which other processes on the
//!   file wait for too); an unknown name's attempt is checked and counted in one
//!   `INSERT ... ON CONFLICT DO UPDATE ... WHERE` statement, the same rule as
//!   [`Store::claim_login_attempt`]. Parallel attempts, on one node or several, each see what
//!   the others counted.
//! - **Ephemeral.** Every row carries `expires_at`, after which it limits nothing;
//!   [`Store::prune_login_limits`] deletes such rows. Backups leave these tables out
//!   ([`crate::backup::EPHEMERAL_TABLES`]): a limit in force is not worth restoring, and a
//!   restore keeps the rows of the database it replaces, which expire on their own.

use sqlx::Row;

use crate::accounts::{LockoutSchedule, LoginClaim, normalize_username};
use crate::{Backend, Store, StoreError};

/// Directory-token kind of the client addresses counted by the per-address limit.
pub const ADDRESS_KIND: &str = "login-address";
/// Directory-token kind of usernames without an account whose failed logins are counted.
pub const UNKNOWN_NAME_KIND: &str = "login-unknown-name";
/// The tables of this module (ephemeral: not backed up).
pub const TABLES: &[&str] = &["login_address_limits", "login_unknown_names"];

/// Parses a stored attempt list, oldest first. Only [`Store::update_address_attempts`] writes
/// the column; a value that does not parse counts as no attempt. Sorted because nodes' clocks
/// may disagree by a little, and the rule reads the oldest attempt first.
fn parse_attempts(stored: &str) -> Vec<i64> {
    let mut times: Vec<i64> = stored
        .split_ascii_whitespace()
        .filter_map(|t| t.parse().ok())
        .collect();
    times.sort_unstable();
    times
}

fn format_attempts(times: &[i64]) -> String {
    times
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}

impl Store {
    /// Reads the attempts counted against the client address `address` (the caller's
    /// canonical form of what is limited, e.g. an IPv4 address or an IPv6 /64), Unix times
    /// oldest first; lets `update` decide on them and change them; writes them back; all in
    /// one transaction holding the address's row, so no other attempt on any node reads the
    /// list between. `update` runs once; what it returns is returned after the commit. A list
    /// left empty deletes the row; otherwise the row expires `window_secs` after its newest
    /// attempt.
    pub async fn update_address_attempts<T>(
        &self,
        address: &str,
        window_secs: i64,
        update: impl FnOnce(&mut Vec<i64>) -> T,
    ) -> Result<T, StoreError> {
        let tenant = &self.inner.tenant;
        let token = self.inner.keys.directory_token(ADDRESS_KIND, address);
        let lock = match self.inner.backend {
            Backend::Postgres => " FOR UPDATE",
            Backend::Sqlite => "",
        };
        let _guard = self.write_guard().await;
        let mut tx = self.begin_write().await?;
        // A row to hold, whether or not the address has one yet (a new one is empty and is
        // deleted or filled below): two first attempts cannot both insert theirs.
        sqlx::query(
            "INSERT INTO login_address_limits (tenant, token, attempts, expires_at) \
             VALUES ($1, $2, '', 0) ON CONFLICT (tenant, token) DO NOTHING",
        )
        .bind(tenant)
        .bind(token.clone())
        .execute(&mut *tx)
        .await?;
        let stored: String = sqlx::query(&format!(
            "SELECT attempts FROM login_address_limits WHERE tenant = $1 AND token = $2{lock}"
        ))
        .bind(tenant)
        .bind(token.clone())
        .fetch_one(&mut *tx)
        .await?
        .try_get("attempts")?;
        let mut attempts = parse_attempts(&stored);
        let out = update(&mut attempts);
        attempts.sort_unstable();
        let written = format_attempts(&attempts);
        match attempts.last() {
            None => {
                sqlx::query("DELETE FROM login_address_limits WHERE tenant = $1 AND token = $2")
                    .bind(tenant)
                    .bind(token)
                    .execute(&mut *tx)
                    .await?;
            }
            Some(newest) if written != stored => {
                sqlx::query(
                    "UPDATE login_address_limits SET attempts = $3, expires_at = $4 \
                     WHERE tenant = $1 AND token = $2",
                )
                .bind(tenant)
                .bind(token)
                .bind(written)
                .bind(newest.saturating_add(window_secs))
                .execute(&mut *tx)
                .await?;
            }
            Some(_) => {}
        }
        tx.commit().await?;
        Ok(out)
    }

    /// Claims a login attempt on `username`, which has no account, as
    /// [`Store::claim_login_attempt`] does for an account: unless the name is locked, its
    /// failure count goes up by one and, from `schedule.lock_after`, the name is locked for
    /// the schedule's length; in one statement. Answers [`LoginClaim::Admitted`] or
    /// [`LoginClaim::Locked`] (the attempt then not counted). The count is forgotten
    /// `keep_secs` after the last counted attempt (never before a lock ends).
    pub async fn claim_unknown_login(
        &self,
        username: &str,
        now: i64,
        schedule: &LockoutSchedule,
        keep_secs: i64,
    ) -> Result<LoginClaim, StoreError> {
        let tenant = &self.inner.tenant;
        let token = self
            .inner
            .keys
            .directory_token(UNKNOWN_NAME_KIND, &normalize_username(username));
        let expires_at = now.saturating_add(keep_secs.max(schedule.max_lock_secs));
        let sql = format!(
            "INSERT INTO login_unknown_names (tenant, token, failures, locked_until, expires_at) \
             VALUES ($2, $3, 1, {first}, $4) \
             ON CONFLICT (tenant, token) DO UPDATE SET \
             failures = login_unknown_names.failures + 1, locked_until = {next}, expires_at = $4 \
             WHERE login_unknown_names.locked_until IS NULL OR login_unknown_names.locked_until <= $1",
            first = schedule.lock_sql("1", "NULL"),
            next = schedule.lock_sql(
                "login_unknown_names.failures + 1",
                "login_unknown_names.locked_until"
            ),
        );
        let _guard = self.write_guard().await;
        let done = sqlx::query(&sql)
            .bind(now)
            .bind(tenant)
            .bind(token.clone())
            .bind(expires_at)
            .execute(&self.inner.pool)
            .await?;
        if done.rows_affected() == 1 {
            return Ok(LoginClaim::Admitted);
        }
        let until = sqlx::query(
            "SELECT locked_until FROM login_unknown_names WHERE tenant = $1 AND token = $2",
        )
        .bind(tenant)
        .bind(token)
        .fetch_optional(&self.inner.pool)
        .await?
        .map(|row| row.try_get::<Option<i64>, _>("locked_until"))
        .transpose()?
        .flatten();
        // A locked row expires after its lock, so it cannot have been pruned since; should it
        // be gone anyway, the caller is told to retry at once.
        Ok(LoginClaim::Locked {
            until: until.unwrap_or(now),
        })
    }

    /// Deletes the login-limit rows that expired at `now` (they limit nothing any more);
    /// answers how many. Cheap: both tables are indexed on (tenant, expires_at).
    pub async fn prune_login_limits(&self, now: i64) -> Result<u64, StoreError> {
        let _guard = self.write_guard().await;
        let mut pruned = 0u64;
        for table in TABLES {
            pruned = pruned.saturating_add(
                sqlx::query(&format!(
                    "DELETE FROM {table} WHERE tenant = $1 AND expires_at <= $2"
                ))
                .bind(&self.inner.tenant)
                .bind(now)
                .execute(&self.inner.pool)
                .await?
                .rows_affected(),
            );
        }
        Ok(pruned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempt_lists_round_trip_sorted() {
        assert_eq!(parse_attempts(""), Vec::<i64>::new());
        assert_eq!(parse_attempts("30 10 20"), vec![10, 20, 30]);
        assert_eq!(parse_attempts("10 x 20"), vec![10, 20]);
        assert_eq!(format_attempts(&[10, 20, 30]), "10 20 30");
        assert_eq!(format_attempts(&[]), "");
        let times = vec![1_760_000_000, 1_760_000_001, 1_760_000_001];
        assert_eq!(parse_attempts(&format_attempts(&times)), times);
    }
}
