//! Accounts at rest: users, recovery codes, tokens, OAuth2 clients, care grants and
//! break-the-glass records, for the accounts service (phivault-auth), which decides; this
//! module only keeps. The functions of clients, and the rest of OAuth2 (codes, token
//! families, consents, signing keys), are in [`crate::oauth`].
//!
//! What is never stored in the clear:
//! - **usernames**: a user row is found by a *directory token* of the normalized username
//!   (HMAC under the tenant's index key, [`Store::directory_token`]); the name itself is kept
//!   only sealed (`profile_sealed`), so an administrator can read it back through the server;
//! - **passwords**: the caller hands in an argon2id PHC string;
//! - **TOTP secrets**: sealed here with the tenant's directory data key, bound (AEAD
//!   associated data) to tenant, user id and purpose, so a sealed secret moved to another row
//!   does not open;
//! - **tokens, client secrets, recovery codes**: the caller hands in SHA-256 hashes;
//! - **break-the-glass reasons** (they may describe the patient): sealed like TOTP secrets.
//!
//! Account changes (a user created, linked, granted, disabled; a client registered; TOTP
//! enrolled; a token revoked) take an [`AccountSink`] and commit in one transaction with
//! what it records (the audit entry), like resource writes: a failing sink rolls the change
//! back. Bookkeeping of logins (failure counts, a TOTP step spent, a recovery code used, a
//! session issued, a password rehashed) is not an account change: the login's own entry
//! records the attempt.
//!
//! Writes on SQLite take the store's write lock, like every other write. Compare-and-set
//! updates ([`Store::advance_totp_step`], [`Store::use_recovery_code`]) return whether they
//! changed a row, which is how the caller refuses a replayed one-time code. Failed logins are
//! counted by [`Store::claim_login_attempt`] in one statement that both checks the lock and
//! counts, so parallel attempts cannot all read the same count.

use std::fmt;

use serde_json::{Value, json};
use sqlx::Row;
use sqlx::any::AnyRow;
use zeroize::Zeroizing;

use crate::generations::{self, Generation};
use crate::keys::{DataKey, Owner};
use crate::{AccountChange, AccountSink, Store, StoreError};

/// Directory-token kind of usernames.
const USERNAME_KIND: &str = "username";

/// The form of a username that is compared: trimmed and lower-cased. `Alice ` and `alice`
/// are the same account.
pub fn normalize_username(username: &str) -> String {
    username.trim().to_lowercase()
}

/// A user to create.
pub struct NewUser {
    /// Account id (a UUID).
    pub user_id: String,
    /// The username as typed at creation (trimmed); kept only sealed and as a blind token.
    pub username: String,
    /// Role name (`clinician`, ...).
    pub role: String,
    /// argon2id PHC string.
    pub password_hash: String,
    /// Unix time.
    pub created_at: i64,
}

impl fmt::Debug for NewUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewUser")
            .field("user_id", &self.user_id)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// A user as stored. The sealed fields are opened with [`Store::user_username`] and
/// [`Store::user_totp_secret`].
#[derive(Clone)]
pub struct UserRow {
    /// Account id.
    pub user_id: String,
    /// Role name.
    pub role: String,
    /// argon2id PHC string.
    pub password_hash: String,
    /// The TOTP secret, sealed; `None` before enrolment starts.
    pub totp_sealed: Option<Vec<u8>>,
    /// Whether enrolment was confirmed (a code is then required at login).
    pub totp_enabled: bool,
    /// The last TOTP step used (replay defence).
    pub totp_last_step: Option<i64>,
    /// Login attempts claimed since the last complete login.
    pub failed_logins: i64,
    /// Unix time the account's login lock ends, if it was locked.
    pub locked_until: Option<i64>,
    /// Linked Patient id (patient users).
    pub patient_id: Option<String>,
    /// Linked Practitioner id (clinicians).
    pub practitioner_id: Option<String>,
    /// `{"username": ...}`, sealed.
    pub profile_sealed: Vec<u8>,
    /// Unix time.
    pub created_at: i64,
    /// Unix time the account was disabled, if it was.
    pub disabled_at: Option<i64>,
}

impl fmt::Debug for UserRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserRow")
            .field("user_id", &self.user_id)
            .field("role", &self.role)
            .field("totp_enabled", &self.totp_enabled)
            .field("patient_id", &self.patient_id)
            .field("practitioner_id", &self.practitioner_id)
            .field("disabled_at", &self.disabled_at)
            .finish_non_exhaustive()
    }
}

/// How failed logins lock an account (the accounts service owns the numbers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockoutSchedule {
    /// The count of failures that first locks the account.
    pub lock_after: i64,
    /// Lock lengths, seconds, when the count reaches `lock_after`, `lock_after + 1`, ...
    pub lock_secs: Vec<i64>,
    /// The lock length for any higher count.
    pub max_lock_secs: i64,
}

impl LockoutSchedule {
    /// The SQL expression of the lock a claim leaves when the failure count becomes `count`
    /// (an SQL expression): `current` (the lock in force, an SQL expression) below
    /// `lock_after`, else `$1` (now) plus the schedule's length. Only the schedule's integers
    /// and the caller's constant expressions are formatted into it.
    pub(crate) fn lock_sql(&self, count: &str, current: &str) -> String {
        let mut lock = format!("CASE WHEN {count} < {} THEN {current}", self.lock_after);
        for (failures, secs) in (self.lock_after..).zip(&self.lock_secs) {
            lock.push_str(&format!(" WHEN {count} = {failures} THEN $1 + {secs}"));
        }
        lock.push_str(&format!(" ELSE $1 + {} END", self.max_lock_secs));
        lock
    }
}

/// The answer of [`Store::claim_login_attempt`] (and [`Store::claim_unknown_login`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginClaim {
    /// The attempt was counted; check the credentials.
    Admitted,
    /// The account is locked until this Unix time; the attempt was not counted.
    Locked {
        /// When the lock ends.
        until: i64,
    },
    /// There is no such account (it vanished since it was read).
    NoSuchUser,
}

/// A token as stored: its SHA-256, never the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRow {
    /// SHA-256 of the token as presented.
    pub token_hash: Vec<u8>,
    /// `session`, `access`, ...
    pub kind: String,
    /// The user or client the token speaks for.
    pub principal_id: String,
    /// The OAuth2 client it is bound to.
    pub client_id: Option<String>,
    /// Granted scopes, space-separated.
    pub scopes: String,
    /// The SMART launch patient.
    pub launch_patient: Option<String>,
    /// Unix time.
    pub issued_at: i64,
    /// Unix time (exclusive).
    pub expires_at: i64,
    /// Unix time, if revoked.
    pub revoked_at: Option<i64>,
    /// The authorization-code grant the token descends from: the access and refresh tokens
    /// of one grant share it ([`Store::revoke_family`]). `None` for sessions and
    /// client-credentials tokens.
    pub family: Option<String>,
    /// The SMART launch encounter.
    pub encounter: Option<String>,
}

/// An OAuth2 client as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientRow {
    /// `pvcl_<uuid>`.
    pub client_id: String,
    /// Display name.
    pub name: String,
    /// SHA-256 of the client secret. A client without one (`public`, `confidential-jwt`)
    /// holds a value no presented secret hashes to (empty, or the hash of a secret nobody
    /// holds).
    pub secret_hash: Vec<u8>,
    /// Allowed scopes, space-separated.
    pub scopes: String,
    /// The patient a patient-scoped app is launched for.
    pub launch_patient: Option<String>,
    /// Unix time.
    pub created_at: i64,
    /// Unix time, if disabled.
    pub disabled_at: Option<i64>,
    /// How the client authenticates: [`crate::oauth::CONFIDENTIAL_SECRET`],
    /// [`crate::oauth::PUBLIC`] or [`crate::oauth::CONFIDENTIAL_JWT`] (rows registered
    /// before client types read as the first).
    pub client_type: String,
    /// The redirect URIs an authorization may return to (exact match). None holds a line
    /// break (they are stored one per line).
    pub redirect_uris: Vec<String>,
    /// The public keys (JWKS JSON) of a `confidential-jwt` client.
    pub jwks: Option<String>,
    /// Where `jwks` was fetched from at registration (recorded only).
    pub jwks_url: Option<String>,
}

/// A care grant: a user may reach a patient's compartment (and these labels).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantRow {
    /// User.
    pub user_id: String,
    /// Patient id.
    pub patient_id: String,
    /// Granted sensitivity labels, space-separated canonical codes.
    pub labels: String,
    /// Unix time.
    pub created_at: i64,
    /// Unix time (exclusive), `None` for no end.
    pub expires_at: Option<i64>,
}

impl GrantRow {
    /// Whether the grant is in force at `now`.
    pub fn is_active(&self, now: i64) -> bool {
        self.expires_at.is_none_or(|end| now < end)
    }
}

/// A break-the-glass claim, with its reason in the clear (sealed at rest).
#[derive(Clone, PartialEq, Eq)]
pub struct BreakGlassRow {
    /// Record id.
    pub id: String,
    /// Who claimed.
    pub user_id: String,
    /// For which patient.
    pub patient_id: String,
    /// Why (may describe the patient: reviewers only, never logged).
    pub reason: String,
    /// Unix time.
    pub started_at: i64,
    /// Unix time (exclusive).
    pub expires_at: i64,
}

impl fmt::Debug for BreakGlassRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakGlassRow")
            .field("id", &self.id)
            .field("user_id", &self.user_id)
            .field("patient_id", &self.patient_id)
            .field("started_at", &self.started_at)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

fn profile_aad(tenant: &str, user_id: &str, key_id: &str) -> Vec<u8> {
    format!("phivault/account|{tenant}|{user_id}|profile|{key_id}").into_bytes()
}

fn totp_aad(tenant: &str, user_id: &str, key_id: &str) -> Vec<u8> {
    format!("phivault/account|{tenant}|{user_id}|totp|{key_id}").into_bytes()
}

fn reason_aad(tenant: &str, id: &str, user_id: &str, patient_id: &str, key_id: &str) -> Vec<u8> {
    format!("phivault/break-glass|{tenant}|{id}|{user_id}|{patient_id}|reason|{key_id}")
        .into_bytes()
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.kind() == sqlx::error::ErrorKind::UniqueViolation)
}

const USER_COLUMNS: &str = "user_id, role, password_hash, totp_sealed, totp_enabled, \
     totp_last_step, failed_logins, locked_until, patient_id, practitioner_id, profile_sealed, created_at, \
     disabled_at";

fn user_from(row: &AnyRow) -> Result<UserRow, StoreError> {
    Ok(UserRow {
        user_id: row.try_get("user_id")?,
        role: row.try_get("role")?,
        password_hash: row.try_get("password_hash")?,
        totp_sealed: row.try_get("totp_sealed")?,
        totp_enabled: row.try_get::<i64, _>("totp_enabled")? != 0,
        totp_last_step: row.try_get("totp_last_step")?,
        failed_logins: row.try_get("failed_logins")?,
        locked_until: row.try_get("locked_until")?,
        patient_id: row.try_get("patient_id")?,
        practitioner_id: row.try_get("practitioner_id")?,
        profile_sealed: row.try_get("profile_sealed")?,
        created_at: row.try_get("created_at")?,
        disabled_at: row.try_get("disabled_at")?,
    })
}

pub(crate) const TOKEN_COLUMNS: &str = "token_hash, kind, principal_id, client_id, scopes, \
     launch_patient, issued_at, expires_at, revoked_at, family, encounter";

pub(crate) fn token_from(row: &AnyRow) -> Result<TokenRow, StoreError> {
    Ok(TokenRow {
        token_hash: row.try_get("token_hash")?,
        kind: row.try_get("kind")?,
        principal_id: row.try_get("principal_id")?,
        client_id: row.try_get("client_id")?,
        scopes: row.try_get("scopes")?,
        launch_patient: row.try_get("launch_patient")?,
        issued_at: row.try_get("issued_at")?,
        expires_at: row.try_get("expires_at")?,
        revoked_at: row.try_get("revoked_at")?,
        family: row.try_get("family")?,
        encounter: row.try_get("encounter")?,
    })
}

/// Inserts `token` for `tenant` through `conn` (a pool or a transaction).
pub(crate) async fn insert_token_in<'c, E>(
    conn: E,
    tenant: &str,
    token: &TokenRow,
) -> Result<(), StoreError>
where
    E: sqlx::Executor<'c, Database = sqlx::Any>,
{
    sqlx::query(&format!(
        "INSERT INTO tokens (tenant, {TOKEN_COLUMNS}) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
    ))
    .bind(tenant)
    .bind(token.token_hash.as_slice())
    .bind(&token.kind)
    .bind(&token.principal_id)
    .bind(token.client_id.as_deref())
    .bind(&token.scopes)
    .bind(token.launch_patient.as_deref())
    .bind(token.issued_at)
    .bind(token.expires_at)
    .bind(token.revoked_at)
    .bind(token.family.as_deref())
    .bind(token.encounter.as_deref())
    .execute(conn)
    .await?;
    Ok(())
}

fn grant_from(row: &AnyRow) -> Result<GrantRow, StoreError> {
    Ok(GrantRow {
        user_id: row.try_get("user_id")?,
        patient_id: row.try_get("patient_id")?,
        labels: row.try_get("labels")?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
    })
}

impl Store {
    /// The blind token of a directory value of `kind` (e.g. a normalized username): HMAC
    /// under the tenant's index key, domain-separated from search tokens. Equal inputs give
    /// equal tokens; the value cannot be read back from it.
    pub fn directory_token(&self, kind: &str, value: &str) -> Vec<u8> {
        self.inner.keys.directory_token(kind, value)
    }

    /// The directory token of a username, after [`normalize_username`].
    pub fn username_token(&self, username: &str) -> Vec<u8> {
        self.directory_token(USERNAME_KIND, &normalize_username(username))
    }

    pub(crate) async fn directory_key(&self) -> Result<DataKey, StoreError> {
        self.inner
            .keys
            .data_key(
                &self.inner.pool,
                self.inner.write_lock.as_ref(),
                &Owner::Directory,
            )
            .await
    }

    pub(crate) fn account_integrity(&self, id: &str, why: &'static str) -> StoreError {
        tracing::error!(
            target: "phivault::integrity",
            tenant = %self.inner.tenant,
            id = %id,
            why,
            "stored account data failed its integrity check; not served"
        );
        StoreError::Integrity {
            rtype: "account".to_owned(),
            id: id.to_owned(),
        }
    }

    // ---- users ----------------------------------------------------------------------------

    /// Creates a user, committed with `audit`'s record of `change`. Returns `false` (and
    /// writes nothing, records nothing) when the username is taken in this tenant.
    pub async fn insert_user(
        &self,
        user: &NewUser,
        audit: &dyn AccountSink,
        change: &AccountChange,
    ) -> Result<bool, StoreError> {
        let key = self.directory_key().await?;
        let tenant = &self.inner.tenant;
        let profile = serde_json::to_vec(&json!({ "username": user.username }))
            .map_err(|e| StoreError::Config(format!("cannot serialize a profile: {e}")))?;
        let profile = Zeroizing::new(profile);
        let sealed = key.sealer.seal(
            &profile_aad(tenant, &user.user_id, &key.key_id),
            profile.as_slice(),
        )?;
        let token = self.username_token(&user.username);
        let _guard = self.write_guard().await;
        let mut tx = self.begin_write().await?;
        let done = sqlx::query(
            "INSERT INTO users (user_id, tenant, username_token, role, password_hash, \
             totp_enabled, profile_sealed, created_at) VALUES ($1, $2, $3, $4, $5, 0, $6, $7)",
        )
        .bind(&user.user_id)
        .bind(tenant)
        .bind(token)
        .bind(&user.role)
        .bind(&user.password_hash)
        .bind(sealed)
        .bind(user.created_at)
        .execute(&mut *tx)
        .await;
        match done {
            Ok(_) => {}
            // Dropping the transaction rolls it back.
            Err(e) if is_unique_violation(&e) => return Ok(false),
            Err(e) => return Err(e.into()),
        }
        commit_recorded(tx, audit, change).await?;
        Ok(true)
    }

    /// The user with this username (compared after [`normalize_username`]).
    pub async fn user_by_username(&self, username: &str) -> Result<Option<UserRow>, StoreError> {
        let token = self.username_token(username);
        let row = sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE tenant = $1 AND username_token = $2"
        ))
        .bind(&self.inner.tenant)
        .bind(token)
        .fetch_optional(&self.inner.pool)
        .await?;
        row.as_ref().map(user_from).transpose()
    }

    /// The user with this id.
    pub async fn user_by_id(&self, user_id: &str) -> Result<Option<UserRow>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE tenant = $1 AND user_id = $2"
        ))
        .bind(&self.inner.tenant)
        .bind(user_id)
        .fetch_optional(&self.inner.pool)
        .await?;
        row.as_ref().map(user_from).transpose()
    }

    /// How many users the tenant has (disabled ones included).
    pub async fn user_count(&self) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query("SELECT COUNT(*) AS n FROM users WHERE tenant = $1")
            .bind(&self.inner.tenant)
            .fetch_one(&self.inner.pool)
            .await?
            .try_get("n")?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// The username of a user, unsealed (for administrators and TOTP labels; never log it).
    pub async fn user_username(&self, user: &UserRow) -> Result<String, StoreError> {
        let key = self.directory_key().await?;
        let plain = key
            .sealer
            .open(
                &profile_aad(&self.inner.tenant, &user.user_id, &key.key_id),
                &user.profile_sealed,
            )
            .map(Zeroizing::new)
            .map_err(|_| self.account_integrity(&user.user_id, "profile does not open"))?;
        let profile: Value = serde_json::from_slice(&plain)
            .map_err(|_| self.account_integrity(&user.user_id, "profile is not JSON"))?;
        profile
            .get("username")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| self.account_integrity(&user.user_id, "profile has no username"))
    }

    /// The user's TOTP secret, unsealed, if enrolment has started.
    pub async fn user_totp_secret(
        &self,
        user: &UserRow,
    ) -> Result<Option<Zeroizing<Vec<u8>>>, StoreError> {
        let Some(sealed) = &user.totp_sealed else {
            return Ok(None);
        };
        let key = self.directory_key().await?;
        let plain = key
            .sealer
            .open(
                &totp_aad(&self.inner.tenant, &user.user_id, &key.key_id),
                sealed,
            )
            .map_err(|_| self.account_integrity(&user.user_id, "TOTP secret does not open"))?;
        Ok(Some(Zeroizing::new(plain)))
    }

    /// Stores a new TOTP secret (sealed) for a user, not yet enabled, forgetting the last
    /// step used, committed with `audit`'s record of `change`. Returns `false` (and records
    /// nothing) when the user does not exist or already has TOTP enabled (an enabled factor
    /// is not replaced this way).
    pub async fn begin_totp(
        &self,
        user_id: &str,
        secret: &[u8],
        audit: &dyn AccountSink,
        change: &AccountChange,
    ) -> Result<bool, StoreError> {
        let key = self.directory_key().await?;
        let tenant = &self.inner.tenant;
        let sealed = key
            .sealer
            .seal(&totp_aad(tenant, user_id, &key.key_id), secret)?;
        let _guard = self.write_guard().await;
        let mut tx = self.begin_write().await?;
        let done = sqlx::query(
            "UPDATE users SET totp_sealed = $1, totp_enabled = 0, totp_last_step = NULL \
             WHERE tenant = $2 AND user_id = $3 AND totp_enabled = 0",
        )
        .bind(sealed)
        .bind(tenant)
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Ok(false);
        }
        commit_recorded(tx, audit, change).await?;
        Ok(true)
    }

    /// Confirms TOTP enrolment in one transaction: enables the factor with `step` as the last
    /// step used, and replaces the user's recovery codes with `code_hashes`; `audit` records
    /// `change` in that transaction. Returns `false` (and changes and records nothing) when
    /// enrolment was not pending (no secret, or already enabled).
    pub async fn enable_totp(
        &self,
        user_id: &str,
        step: i64,
        code_hashes: &[[u8; 32]],
        audit: &dyn AccountSink,
        change: &AccountChange,
    ) -> Result<bool, StoreError> {
        let _guard = self.write_guard().await;
        let mut tx = self.begin_write().await?;
        let done = sqlx::query(
            "UPDATE users SET totp_enabled = 1, totp_last_step = $1 \
             WHERE tenant = $2 AND user_id = $3 AND totp_enabled = 0 AND totp_sealed IS NOT NULL",
        )
        .bind(step)
        .bind(&self.inner.tenant)
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        replace_codes_in(&mut tx, user_id, code_hashes).await?;
        // The user's sessions stop being enrolment-only.
        commit_recorded_auth(tx, &self.inner.tenant, audit, change).await?;
        Ok(true)
    }

    /// Records `step` as the last TOTP step used, only if it is later than the stored one:
    /// `false` means another login spent this step (or a later one) first, i.e. a replay.
    pub async fn advance_totp_step(&self, user_id: &str, step: i64) -> Result<bool, StoreError> {
        let _guard = self.write_guard().await;
        let done = sqlx::query(
            "UPDATE users SET totp_last_step = $1 WHERE tenant = $2 AND user_id = $3 \
             AND totp_enabled = 1 AND (totp_last_step IS NULL OR totp_last_step < $1)",
        )
        .bind(step)
        .bind(&self.inner.tenant)
        .bind(user_id)
        .execute(&self.inner.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Claims one login attempt on an account at `now`, in one statement: unless the account
    /// is locked, its failure count goes up by one and, once the count reaches
    /// `schedule.lock_after`, the account is locked for the schedule's length. The caller
    /// claims before it checks the password and calls [`Store::clear_login_failures`] after a
    /// complete login, so an attempt counts as failed unless it is proven right; parallel
    /// attempts each see the count the others left.
    pub async fn claim_login_attempt(
        &self,
        user_id: &str,
        now: i64,
        schedule: &LockoutSchedule,
    ) -> Result<LoginClaim, StoreError> {
        let lock = schedule.lock_sql("failed_logins + 1", "locked_until");
        let sql = format!(
            "UPDATE users SET failed_logins = failed_logins + 1, locked_until = {lock} \
             WHERE tenant = $2 AND user_id = $3 AND (locked_until IS NULL OR locked_until <= $1)"
        );
        let _guard = self.write_guard().await;
        let done = sqlx::query(&sql)
            .bind(now)
            .bind(&self.inner.tenant)
            .bind(user_id)
            .execute(&self.inner.pool)
            .await?;
        if done.rows_affected() == 1 {
            return Ok(LoginClaim::Admitted);
        }
        let row = sqlx::query("SELECT locked_until FROM users WHERE tenant = $1 AND user_id = $2")
            .bind(&self.inner.tenant)
            .bind(user_id)
            .fetch_optional(&self.inner.pool)
            .await?;
        Ok(match row {
            None => LoginClaim::NoSuchUser,
            Some(row) => LoginClaim::Locked {
                until: row
                    .try_get::<Option<i64>, _>("locked_until")?
                    .unwrap_or(now),
            },
        })
    }

    /// Clears an account's failure count and lock after a complete login.
    pub async fn clear_login_failures(&self, user_id: &str) -> Result<(), StoreError> {
        let _guard = self.write_guard().await;
        sqlx::query(
            "UPDATE users SET failed_logins = 0, locked_until = NULL \
             WHERE tenant = $1 AND user_id = $2 \
             AND (failed_logins <> 0 OR locked_until IS NOT NULL)",
        )
        .bind(&self.inner.tenant)
        .bind(user_id)
        .execute(&self.inner.pool)
        .await?;
        Ok(())
    }

    /// Replaces a user's password hash (after a rehash with current parameters: the same
    /// password, so not an account change).
    pub async fn set_password_hash(
        &self,
        user_id: &str,
        password_hash: &str,
    ) -> Result<bool, StoreError> {
        self.update_user_text(user_id, "password_hash", Some(password_hash), None)
            .await
    }

    /// Links a user to a Patient record (or unlinks with `None`), committed with `audit`'s
    /// record of `change`. `false` (nothing recorded) when there is no such user.
    pub async fn set_user_patient(
        &self,
        user_id: &str,
        patient_id: Option<&str>,
        audit: &dyn AccountSink,
        change: &AccountChange,
    ) -> Result<bool, StoreError> {
        self.update_user_text(user_id, "patient_id", patient_id, Some((audit, change)))
            .await
    }

    /// Links a user to a Practitioner record (or unlinks with `None`), committed with
    /// `audit`'s record of `change`. `false` (nothing recorded) when there is no such user.
    pub async fn set_user_practitioner(
        &self,
        user_id: &str,
        practitioner_id: Option<&str>,
        audit: &dyn AccountSink,
        change: &AccountChange,
    ) -> Result<bool, StoreError> {
        self.update_user_text(
            user_id,
            "practitioner_id",
            practitioner_id,
            Some((audit, change)),
        )
        .await
    }

    /// `column` is one of this module's constants, never caller input. With `audited`, the
    /// sink records the change in the update's transaction.
    async fn update_user_text(
        &self,
        user_id: &str,
        column: &'static str,
        value: Option<&str>,
        audited: Option<(&dyn AccountSink, &AccountChange)>,
    ) -> Result<bool, StoreError> {
        let _guard = self.write_guard().await;
        let mut tx = self.begin_write().await?;
        let done = sqlx::query(&format!(
            "UPDATE users SET {column} = $1 WHERE tenant = $2 AND user_id = $3"
        ))
        .bind(value)
        .bind(&self.inner.tenant)
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Ok(false);
        }
        // The audited columns (patient and Practitioner links) are part of what authenticating
        // a token answers; the password hash (rehashed on login) is not.
        match audited {
            Some((audit, change)) => {
                commit_recorded_auth(tx, &self.inner.tenant, audit, change).await?;
            }
            None => tx.commit().await?,
        }
        Ok(true)
    }

    /// Disables a user at `now` (kept for the audit trail; logins and tokens stop working),
    /// committed with `audit`'s record of `change`. `false` (nothing recorded) when there is
    /// no such user or it is disabled already.
    pub async fn disable_user(
        &self,
        user_id: &str,
        now: i64,
        audit: &dyn AccountSink,
        change: &AccountChange,
    ) -> Result<bool, StoreError> {
        let _guard = self.write_guard().await;
        let mut tx = self.begin_write().await?;
        let done = sqlx::query(
            "UPDATE users SET disabled_at = $1 WHERE tenant = $2 AND user_id = $3 \
             AND disabled_at IS NULL",
        )
        .bind(now)
        .bind(&self.inner.tenant)
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Ok(false);
        }
        commit_recorded_auth(tx, &self.inner.tenant, audit, change).await?;
        Ok(true)
    }

    // ---- recovery codes --------------------------------------------------------------------

    /// Replaces a user's recovery codes by these SHA-256 hashes.
    pub async fn replace_recovery_codes(
        &self,
        user_id: &str,
        code_hashes: &[[u8; 32]],
    ) -> Result<(), StoreError> {
        let _guard = self.write_guard().await;
        let mut tx = self.begin_write().await?;
        replace_codes_in(&mut tx, user_id, code_hashes).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The hashes of a user's unused recovery codes.
    pub async fn unused_recovery_codes(&self, user_id: &str) -> Result<Vec<[u8; 32]>, StoreError> {
        let rows = sqlx::query(
            "SELECT code_hash FROM recovery_codes WHERE user_id = $1 AND used_at IS NULL \
             ORDER BY code_hash",
        )
        .bind(user_id)
        .fetch_all(&self.inner.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let hash: Vec<u8> = row.try_get("code_hash")?;
            let hash: [u8; 32] = hash
                .as_slice()
                .try_into()
                .map_err(|_| self.account_integrity(user_id, "recovery code hash length"))?;
            out.push(hash);
        }
        Ok(out)
    }

    /// Marks a recovery code used at `now`, only if it is still unused: `false` means it was
    /// spent already (by a concurrent login) or does not exist.
    pub async fn use_recovery_code(
        &self,
        user_id: &str,
        code_hash: &[u8; 32],
        now: i64,
    ) -> Result<bool, StoreError> {
        let _guard = self.write_guard().await;
        let done = sqlx::query(
            "UPDATE recovery_codes SET used_at = $1 \
             WHERE user_id = $2 AND code_hash = $3 AND used_at IS NULL",
        )
        .bind(now)
        .bind(user_id)
        .bind(code_hash.as_slice())
        .execute(&self.inner.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    // ---- tokens ----------------------------------------------------------------------------

    /// Stores an issued token (its hash).
    pub async fn insert_token(&self, token: &TokenRow) -> Result<(), StoreError> {
        let _guard = self.write_guard().await;
        insert_token_in(&self.inner.pool, &self.inner.tenant, token).await
    }

    /// The token with this hash.
    pub async fn token(&self, token_hash: &[u8]) -> Result<Option<TokenRow>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {TOKEN_COLUMNS} FROM tokens WHERE token_hash = $1 AND tenant = $2"
        ))
        .bind(token_hash)
        .bind(&self.inner.tenant)
        .fetch_optional(&self.inner.pool)
        .await?;
        row.as_ref().map(token_from).transpose()
    }

    /// Revokes a token at `now`, committed with `audit`'s record of `change`. `false`
    /// (nothing recorded) when unknown or already revoked.
    pub async fn revoke_token(
        &self,
        token_hash: &[u8],
        now: i64,
        audit: &dyn AccountSink,
        change: &AccountChange,
    ) -> Result<bool, StoreError> {
        let _guard = self.write_guard().await;
        let mut tx = self.begin_write().await?;
        let done = sqlx::query(
            "UPDATE tokens SET revoked_at = $1 \
             WHERE token_hash = $2 AND tenant = $3 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(token_hash)
        .bind(&self.inner.tenant)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Ok(false);
        }
        commit_recorded_auth(tx, &self.inner.tenant, audit, change).await?;
        Ok(true)
    }

    // ---- care grants -----------------------------------------------------------------------

    /// Creates or replaces the grant of (user, patient), committed with `audit`'s record of
    /// `change`.
    pub async fn upsert_grant(
        &self,
        grant: &GrantRow,
        audit: &dyn AccountSink,
        change: &AccountChange,
    ) -> Result<(), StoreError> {
        let _guard = self.write_guard().await;
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO care_grants (tenant, user_id, patient_id, labels, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (tenant, user_id, patient_id) DO UPDATE SET labels = excluded.labels, \
             created_at = excluded.created_at, expires_at = excluded.expires_at",
        )
        .bind(&self.inner.tenant)
        .bind(&grant.user_id)
        .bind(&grant.patient_id)
        .bind(&grant.labels)
        .bind(grant.created_at)
        .bind(grant.expires_at)
        .execute(&mut *tx)
        .await?;
        commit_recorded(tx, audit, change).await
    }

    /// The grant of (user, patient), active or not.
    pub async fn grant(
        &self,
        user_id: &str,
        patient_id: &str,
    ) -> Result<Option<GrantRow>, StoreError> {
        let row = sqlx::query(
            "SELECT user_id, patient_id, labels, created_at, expires_at FROM care_grants \
             WHERE tenant = $1 AND user_id = $2 AND patient_id = $3",
        )
        .bind(&self.inner.tenant)
        .bind(user_id)
        .bind(patient_id)
        .fetch_optional(&self.inner.pool)
        .await?;
        row.as_ref().map(grant_from).transpose()
    }

    /// Every grant on `patient` (in force or not), by user id.
    pub async fn grants_of_patient(&self, patient_id: &str) -> Result<Vec<GrantRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT user_id, patient_id, labels, created_at, expires_at FROM care_grants \
             WHERE tenant = $1 AND patient_id = $2 ORDER BY user_id",
        )
        .bind(&self.inner.tenant)
        .bind(patient_id)
        .fetch_all(&self.inner.pool)
        .await?;
        rows.iter().map(grant_from).collect()
    }

    /// The patients a user holds a grant for that is in force at `now`, ordered by id.
    pub async fn granted_patients(
        &self,
        user_id: &str,
        now: i64,
    ) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(
            "SELECT patient_id FROM care_grants WHERE tenant = $1 AND user_id = $2 \
             AND (expires_at IS NULL OR expires_at > $3) ORDER BY patient_id",
        )
        .bind(&self.inner.tenant)
        .bind(user_id)
        .bind(now)
        .fetch_all(&self.inner.pool)
        .await?;
        rows.iter()
            .map(|r| r.try_get("patient_id").map_err(StoreError::from))
            .collect()
    }

    // ---- break-the-glass -------------------------------------------------------------------

    /// Records a break-the-glass claim, its reason sealed.
    pub async fn insert_break_glass(&self, record: &BreakGlassRow) -> Result<(), StoreError> {
        let key = self.directory_key().await?;
        let tenant = &self.inner.tenant;
        let sealed = key.sealer.seal(
            &reason_aad(
                tenant,
                &record.id,
                &record.user_id,
                &record.patient_id,
                &key.key_id,
            ),
            record.reason.as_bytes(),
        )?;
        let _guard = self.write_guard().await;
        sqlx::query(
            "INSERT INTO break_glass (id, tenant, user_id, patient_id, reason_sealed, \
             started_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&record.id)
        .bind(tenant)
        .bind(&record.user_id)
        .bind(&record.patient_id)
        .bind(sealed)
        .bind(record.started_at)
        .bind(record.expires_at)
        .execute(&self.inner.pool)
        .await?;
        Ok(())
    }

    /// Every break-the-glass claim of the tenant, newest first, reasons unsealed.
    pub async fn list_break_glass(&self) -> Result<Vec<BreakGlassRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, user_id, patient_id, reason_sealed, started_at, expires_at \
             FROM break_glass WHERE tenant = $1 ORDER BY started_at DESC, id",
        )
        .bind(&self.inner.tenant)
        .fetch_all(&self.inner.pool)
        .await?;
        self.break_glass_rows(&rows).await
    }

    /// The user's claim on the patient in force at `now` that lasts longest, if any.
    pub async fn active_break_glass(
        &self,
        user_id: &str,
        patient_id: &str,
        now: i64,
    ) -> Result<Option<BreakGlassRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, user_id, patient_id, reason_sealed, started_at, expires_at \
             FROM break_glass WHERE tenant = $1 AND user_id = $2 AND patient_id = $3 \
             AND started_at <= $4 AND expires_at > $4 ORDER BY expires_at DESC, id LIMIT 1",
        )
        .bind(&self.inner.tenant)
        .bind(user_id)
        .bind(patient_id)
        .bind(now)
        .fetch_all(&self.inner.pool)
        .await?;
        Ok(self.break_glass_rows(&rows).await?.into_iter().next())
    }

    async fn break_glass_rows(&self, rows: &[AnyRow]) -> Result<Vec<BreakGlassRow>, StoreError> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let key = self.directory_key().await?;
        let tenant = &self.inner.tenant;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let id: String = row.try_get("id")?;
            let user_id: String = row.try_get("user_id")?;
            let patient_id: String = row.try_get("patient_id")?;
            let sealed: Vec<u8> = row.try_get("reason_sealed")?;
            let plain = key
                .sealer
                .open(
                    &reason_aad(tenant, &id, &user_id, &patient_id, &key.key_id),
                    &sealed,
                )
                .map_err(|_| self.account_integrity(&id, "break-the-glass reason does not open"))?;
            let reason = String::from_utf8(plain)
                .map_err(|_| self.account_integrity(&id, "break-the-glass reason is not text"))?;
            out.push(BreakGlassRow {
                id,
                user_id,
                patient_id,
                reason,
                started_at: row.try_get("started_at")?,
                expires_at: row.try_get("expires_at")?,
            });
        }
        Ok(out)
    }
}

/// Replaces the auth generation inside `tx` (the change alters what authenticating a token
/// answers: see [`crate::Generation::Auth`]), has `audit` record `change` in `tx`, then
/// commits.
pub(crate) async fn commit_recorded_auth(
    mut tx: sqlx::Transaction<'static, sqlx::Any>,
    tenant: &str,
    audit: &dyn AccountSink,
    change: &AccountChange,
) -> Result<(), StoreError> {
    generations::bump(&mut tx, tenant, Generation::Auth).await?;
    commit_recorded(tx, audit, change).await
}

/// Has `audit` record `change` in `tx`, then commits. A failing sink drops `tx`, which rolls
/// the change back: no account change is committed without its audit entry.
pub(crate) async fn commit_recorded(
    mut tx: sqlx::Transaction<'static, sqlx::Any>,
    audit: &dyn AccountSink,
    change: &AccountChange,
) -> Result<(), StoreError> {
    audit.record_account(&mut tx, change).await?;
    tx.commit().await?;
    Ok(())
}

async fn replace_codes_in(
    conn: &mut sqlx::AnyConnection,
    user_id: &str,
    code_hashes: &[[u8; 32]],
) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM recovery_codes WHERE user_id = $1")
        .bind(user_id)
        .execute(&mut *conn)
        .await?;
    for hash in code_hashes {
        sqlx::query(
            "INSERT INTO recovery_codes (user_id, code_hash, used_at) VALUES ($1, $2, NULL) \
             ON CONFLICT (user_id, code_hash) DO NOTHING",
        )
        .bind(user_id)
        .bind(hash.as_slice())
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}
