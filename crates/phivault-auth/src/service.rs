//! The accounts service: what the server and the CLI call. It joins the pure parts of this
//! crate with the store (which keeps users, hashed tokens, sealed TOTP secrets, grants and
//! break-the-glass records) and with the policy crate's principals.
//!
//! Every account change (create a user, link, grant, disable, register a client, enrol TOTP,
//! revoke a token) takes an [`AccountSink`]: the caller's audit entry of the change commits in
//! the change's own transaction, so a change whose entry cannot be written does not happen.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};

use phivault_fhir::{Id, ResourceType, SearchQuery};
use phivault_policy::{
    BreakGlass, Label, PrincipalKind, PrincipalRef, Role, ScopeSet, SmartScope, period_contains,
};
use phivault_store::accounts::{
    BreakGlassRow, ClientRow, GrantRow, LockoutSchedule, LoginClaim, NewUser, TokenRow, UserRow,
};
use phivault_store::{AccountChange, AccountChangeKind, AccountSink, Store, StoreError};
use serde_json::Value;
use subtle::ConstantTimeEq as _;
use time::OffsetDateTime;

mod care;
mod clients;
mod grants;
mod launch;
mod login;
mod oauth;
mod oidc;
mod review;
mod verified;

pub use oauth::{
    AppAuthorization, ClientCredentials, ClientRegistration, ClientType, CodeRequest, GrantError,
    LAUNCH_LIFETIME_SECS, OAuthClient, ONLINE_REFRESH_SECS, TokenGrant, has_scope,
};
pub use oidc::{IdTokenClaims, SIGNING_KEY_OVERLAP_SECS, SIGNING_KEY_ROTATE_SECS};
pub use verified::MAX_VERIFIED_TOKENS;
use verified::VerifiedTokens;

use crate::lockout::{
    FAILURES_BEFORE_LOCKOUT, MAX_LOCKOUT_SECS, UNKNOWN_NAME_KEEP_SECS, lockout_secs,
};
use crate::recovery::RECOVERY_CODE_COUNT;
use crate::token;
use crate::{
    AddressLimiter, Clock, IssuedToken, LockedUntil, Password, PasswordHasher, PasswordPolicy,
    RecoveryCodeHash, RecoveryCodes, SystemClock, TokenHash, TokenKind, TokenRecord, Totp,
    TotpError, TotpSecret,
};

/// Errors of the service. Credential failures all display the same text.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// Wrong username/password/TOTP/recovery code, a missing second factor, unknown/expired/
    /// revoked token, token of another client: one text for all, so nothing tells whether an
    /// account exists or whether a password was right.
    #[error("authentication failed")]
    CredentialFailure,
    /// The account or address is throttled; retry after this many seconds.
    #[error("too many attempts; retry in {retry_after} s")]
    Throttled {
        /// Seconds to wait.
        retry_after: i64,
    },
    /// The session may only be used to enrol TOTP.
    #[error("TOTP enrolment is required before this account can be used")]
    EnrolmentRequired,
    /// The password breaks the policy (which rule; never the password).
    #[error("password rejected: {0}")]
    WeakPassword(String),
    /// Username already taken (admin operations only).
    #[error("username already exists")]
    UsernameTaken,
    /// No such user/client (admin operations only; never from login).
    #[error("{0} not found")]
    NotFound(String),
    /// Bad input to an admin operation (role, scope, id...).
    #[error("{0}")]
    Invalid(String),
    /// Store failure.
    #[error(transparent)]
    Store(#[from] phivault_store::StoreError),
    /// A primitive failed on our side (random generator, hashing task, corrupt stored
    /// value): answer 500 and log; the text names what failed, never a secret.
    #[error("internal error: {0}")]
    Internal(String),
}

/// A login attempt.
pub struct LoginRequest {
    /// Username as typed.
    pub username: String,
    /// Password.
    pub password: Password,
    /// TOTP code, when enrolled.
    pub totp: Option<String>,
    /// A recovery code instead of a TOTP code.
    pub recovery_code: Option<String>,
    /// Client address (rate limiting).
    pub address: IpAddr,
}

impl std::fmt::Debug for LoginRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginRequest")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

/// A successful login.
#[derive(Debug)]
pub struct LoginOutcome {
    /// The session token (shown once to the client).
    pub token: IssuedToken,
    /// Unix time it expires.
    pub expires_at: i64,
    /// True when the account must enrol TOTP first: the session can do nothing else.
    pub enrolment_only: bool,
    /// Role of the user.
    pub role: Role,
}

/// Where a two-step login stands.
#[derive(Debug)]
pub enum LoginStep {
    /// Signed in.
    Done(LoginOutcome),
    /// The password was right and the account has a second factor: this ticket (5 minutes,
    /// once) goes with the code to [`Accounts::login_second_factor`].
    SecondFactor(IssuedToken),
}

/// A TOTP enrolment in progress.
pub struct TotpEnrolment {
    /// Base32 secret, for manual entry (shown once).
    pub secret_base32: String,
    /// `otpauth://` URL for QR codes (shown once).
    pub otpauth_url: String,
}

impl std::fmt::Debug for TotpEnrolment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TotpEnrolment").finish_non_exhaustive()
    }
}

/// Who a bearer token speaks for.
#[derive(Debug, Clone)]
pub struct Authenticated {
    /// The policy principal (user with role and linked patient, or client with scopes).
    pub principal: PrincipalRef,
    /// The Practitioner the user is linked to (care teams name practitioners).
    pub practitioner: Option<Id>,
    /// The OAuth2 client, for access tokens.
    pub client_id: Option<String>,
    /// The session may only enrol TOTP.
    pub enrolment_only: bool,
}

/// Who a user account is, for showing who acted (an access log): the username, the role and
/// the linked Practitioner. `Debug` leaves the username out.
#[derive(Clone, PartialEq, Eq)]
pub struct UserSummary {
    /// The username (sealed at rest; never log it).
    pub username: String,
    /// The role.
    pub role: Role,
    /// The Practitioner the user is linked to, if any.
    pub practitioner: Option<Id>,
}

impl std::fmt::Debug for UserSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserSummary")
            .field("role", &self.role)
            .field("practitioner", &self.practitioner)
            .finish_non_exhaustive()
    }
}

/// A break-the-glass access, for review. `Debug` leaves the reason out.
#[derive(Clone)]
pub struct BreakGlassRecord {
    /// Record id.
    pub id: String,
    /// User who claimed it.
    pub user_id: String,
    /// Patient concerned.
    pub patient: Id,
    /// Stated reason (may hold clinical context: shown to reviewers only, never logged).
    pub reason: String,
    /// Unix times.
    pub started_at: i64,
    /// Unix time it ends.
    pub expires_at: i64,
}

impl std::fmt::Debug for BreakGlassRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BreakGlassRecord")
            .field("id", &self.id)
            .field("user_id", &self.user_id)
            .field("patient", &self.patient)
            .field("started_at", &self.started_at)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// Roles whose accounts must have a second factor: their sessions are enrolment-only until
/// TOTP is confirmed.
fn is_staff(role: Role) -> bool {
    matches!(
        role,
        Role::Admin | Role::Clinician | Role::Auditor | Role::Researcher
    )
}

/// Longest username accepted, in characters.
pub const MAX_USERNAME_CHARS: usize = 128;
/// Longest OAuth2 client name accepted, in characters.
pub const MAX_CLIENT_NAME_CHARS: usize = 200;
/// Longest client id looked up (ours are `pvcl_` and a UUID).
const MAX_CLIENT_ID_LEN: usize = 128;
/// How often one service deletes the expired login-limit rows of the store, at most, seconds.
const PRUNE_LOGIN_LIMITS_SECS: i64 = 60;
/// CareTeam resources read per page, and at most this many pages.
const CARE_TEAM_PAGE: usize = 1000;
const MAX_CARE_TEAM_PAGES: usize = 100;
/// Stands in for a stored client secret hash when the client is unknown, so both paths
/// compare a hash.
const NO_CLIENT_SECRET: [u8; 32] = [0u8; 32];

fn internal(what: impl std::fmt::Display) -> ServiceError {
    ServiceError::Internal(what.to_string())
}

/// Checks a new username: 1 to 128 characters after trimming, no control characters, no `:`
/// (authenticator apps use it to separate issuer and account). Returns it trimmed.
fn check_username(username: &str) -> Result<String, ServiceError> {
    let name = username.trim();
    let chars = name.chars().count();
    if chars == 0 || chars > MAX_USERNAME_CHARS {
        return Err(ServiceError::Invalid(format!(
            "a username has 1 to {MAX_USERNAME_CHARS} characters"
        )));
    }
    if name.chars().any(|c| c.is_control() || c == ':') {
        return Err(ServiceError::Invalid(
            "a username has no control characters and no `:`".to_owned(),
        ));
    }
    Ok(name.to_owned())
}

/// The account lockout of [`crate::lockout`] as the store applies it: locked from the fifth
/// failure, 60 s doubling per failure, at most an hour.
fn lockout_schedule() -> LockoutSchedule {
    let lock_secs = (FAILURES_BEFORE_LOCKOUT..)
        .map_while(|n| lockout_secs(n).filter(|secs| *secs < MAX_LOCKOUT_SECS))
        .collect();
    LockoutSchedule {
        lock_after: i64::from(FAILURES_BEFORE_LOCKOUT),
        lock_secs,
        max_lock_secs: MAX_LOCKOUT_SECS,
    }
}

fn parse_id(text: &str) -> Result<Id, ServiceError> {
    Id::parse(text).map_err(|_| internal("a stored patient or practitioner id is not a FHIR id"))
}

/// Every requested scope is within one allowed scope: same context, same or any type, and no
/// more permissions; non-data scopes must be registered as such.
fn scopes_within(requested: &ScopeSet, allowed: &ScopeSet) -> bool {
    let covered = |r: &SmartScope| {
        allowed.data_scopes().iter().any(|a| {
            a.context() == r.context()
                && (a.resource_type().is_none() || a.resource_type() == r.resource_type())
                && a.permissions().contains(r.permissions())
        })
    };
    requested.data_scopes().iter().all(covered)
        && requested
            .other_scopes()
            .iter()
            .all(|o| allowed.other_scopes().contains(o))
}

/// The patient id of a `Patient/<id>` reference (relative, absolute or versioned).
fn patient_of_reference(reference: &str) -> Option<Id> {
    let (_, rest) = reference.rsplit_once("Patient/")?;
    let id = rest.split('/').next()?;
    Id::parse(id).ok()
}

/// Whether a CareTeam puts `practitioner` on its subject's care team at `now`: the team is in
/// force (status `active` or not given; proposed, suspended, inactive and entered-in-error
/// teams are not), `now` lies within the team's `period`, and a participant naming the
/// practitioner (`member`) is within that participant's own `period`. A period that cannot be
/// read grants nothing (fail closed).
fn care_team_grants(body: &Value, practitioner: &Id, now: OffsetDateTime) -> bool {
    let within = |v: Option<&Value>| v.is_none_or(|p| period_contains(p, now) == Some(true));
    let in_force = matches!(
        body.get("status").and_then(Value::as_str),
        None | Some("active")
    );
    let names = |member: &Value| {
        member
            .get("reference")
            .and_then(Value::as_str)
            .and_then(|r| r.rsplit_once("Practitioner/"))
            .is_some_and(|(_, rest)| rest.split('/').next() == Some(practitioner.as_str()))
    };
    let member = body
        .get("participant")
        .and_then(Value::as_array)
        .is_some_and(|ps| {
            ps.iter()
                .any(|p| p.get("member").is_some_and(names) && within(p.get("period")))
        });
    in_force && within(body.get("period")) && member
}

fn token_row(record: &TokenRecord, launch_patient: Option<String>) -> TokenRow {
    TokenRow {
        token_hash: record.hash.as_bytes().to_vec(),
        kind: record.kind.as_str().to_owned(),
        principal_id: record.principal_id.clone(),
        client_id: record.client_id.clone(),
        scopes: record.scopes.clone(),
        launch_patient,
        issued_at: record.issued_at,
        expires_at: record.expires_at,
        revoked_at: record.revoked_at,
        family: None,
        encounter: None,
    }
}

fn break_glass_record(row: BreakGlassRow) -> Result<BreakGlassRecord, ServiceError> {
    Ok(BreakGlassRecord {
        patient: parse_id(&row.patient_id)?,
        id: row.id,
        user_id: row.user_id,
        reason: row.reason,
        started_at: row.started_at,
        expires_at: row.expires_at,
    })
}

/// The accounts service. Cheap to clone.
#[derive(Clone)]
pub struct Accounts {
    store: Store,
    /// `None` only when the system random generator failed at start-up: every operation that
    /// hashes a password then fails with [`ServiceError::Internal`].
    hasher: Option<Arc<PasswordHasher>>,
    policy: PasswordPolicy,
    clock: Arc<dyn Clock>,
    /// The per-address rule; the attempts it counts are in the store, shared by every server.
    addresses: AddressLimiter,
    /// When this service last deleted expired login-limit rows (Unix seconds).
    limits_pruned: Arc<AtomicI64>,
    lockout: Arc<LockoutSchedule>,
    /// Permits for argon2id runs (each takes tens of milliseconds of a core and 19 MiB): a
    /// burst of logins waits here, without holding a thread, instead of taking every core
    /// and the blocking pool from the requests that read and write records.
    hashing: Arc<tokio::sync::Semaphore>,
    hashing_gauge: Arc<HashingGauge>,
    /// Patients, too, must confirm TOTP before their sessions can do anything else.
    patient_totp_required: bool,
    /// Tokens verified recently, checked against the auth generation on each use.
    verified: Arc<VerifiedTokens>,
}

/// How many password hashes run now, and the most that ever ran at once.
#[derive(Debug, Default)]
struct HashingGauge {
    running: AtomicUsize,
    peak: AtomicUsize,
}

/// The default number of password hashes that may run at once: half the cores, at least 1.
pub fn default_hash_concurrency() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get() / 2)
        .unwrap_or(1)
        .max(1)
}

impl std::fmt::Debug for Accounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accounts").finish_non_exhaustive()
    }
}

impl Accounts {
    /// The service over a store, with OWASP argon2id parameters.
    pub fn new(store: Store) -> Self {
        let hasher = match PasswordHasher::new() {
            Ok(h) => Some(Arc::new(h)),
            Err(e) => {
                tracing::error!(target: "phivault::auth", error = %e, "password hasher unavailable");
                None
            }
        };
        Self::build(store, hasher)
    }

    /// The service with another password hasher: cheap parameters for tests and benchmarks
    /// (`PasswordHasher::with_params(8, 1, 1)`). Servers use [`Accounts::new`].
    pub fn with_hasher(store: Store, hasher: PasswordHasher) -> Self {
        Self::build(store, Some(Arc::new(hasher)))
    }

    fn build(store: Store, hasher: Option<Arc<PasswordHasher>>) -> Self {
        Self {
            store,
            hasher,
            policy: PasswordPolicy::default(),
            clock: Arc::new(SystemClock),
            addresses: AddressLimiter::default(),
            limits_pruned: Arc::new(AtomicI64::new(i64::MIN)),
            lockout: Arc::new(lockout_schedule()),
            hashing: Arc::new(tokio::sync::Semaphore::new(default_hash_concurrency())),
            hashing_gauge: Arc::new(HashingGauge::default()),
            patient_totp_required: false,
            verified: Arc::new(VerifiedTokens::new(MAX_VERIFIED_TOKENS)),
        }
    }

    /// The same service reading time from `clock` (a [`crate::FixedClock`] in tests).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The same service with another per-address login limit (default: 20 attempts per 5
    /// minutes per IPv4 address or IPv6 /64). The attempts counted are the store's, shared
    /// with every service on the database; the limit applies to this service's checks.
    pub fn with_address_limiter(mut self, limiter: AddressLimiter) -> Self {
        self.addresses = limiter;
        self
    }

    /// The same service requiring TOTP of patient accounts too: a patient without a
    /// confirmed second factor gets an enrolment-only session, like staff. Patients may
    /// enrol TOTP either way.
    pub fn with_patient_totp_required(mut self, required: bool) -> Self {
        self.patient_totp_required = required;
        // Entries verified under the other setting answer `enrolment_only` differently.
        self.verified = Arc::new(VerifiedTokens::new(MAX_VERIFIED_TOKENS));
        self
    }

    /// Whether accounts of `role` must confirm TOTP before their sessions are usable.
    fn second_factor_required(&self, role: Role) -> bool {
        is_staff(role) || (role == Role::Patient && self.patient_totp_required)
    }

    /// The same service running at most `n` password hashes at once (at least 1).
    pub fn with_hash_concurrency(mut self, n: usize) -> Self {
        self.hashing = Arc::new(tokio::sync::Semaphore::new(n.max(1)));
        self
    }

    /// The most password hashes that ran at once so far (for tests and diagnostics).
    pub fn peak_concurrent_hashes(&self) -> usize {
        self.hashing_gauge.peak.load(Ordering::Relaxed)
    }

    /// Takes back the attempt [`Accounts::check_address`] counted for `address`, once the
    /// credential it carried was accepted: only failures count against an address. A store
    /// failure is logged, not returned: the credential was accepted, and the attempt then
    /// stays counted (the safe side) until it leaves the window.
    pub async fn forgive_address(&self, address: IpAddr) {
        let key = AddressLimiter::key(address);
        let window = self.addresses.window_secs();
        let forgiven = self
            .store
            .update_address_attempts(&key, window, AddressLimiter::forgive)
            .await;
        if let Err(e) = forgiven {
            // Neither the address nor anything else personal: the error names no row.
            tracing::warn!(target: "phivault::auth", error = %e, "a successful attempt could not be taken back from its address's count");
        }
    }

    /// Counts one credential attempt (login, OAuth2 token or revocation request) from
    /// `address` against the per-address limit; `Throttled` once it is exceeded. The count
    /// is the store's: attempts on every server sharing the database count together, and the
    /// check and the count are one transaction, so parallel attempts cannot all pass.
    pub async fn check_address(&self, address: IpAddr) -> Result<(), ServiceError> {
        let now = self.now();
        self.prune_login_limits(now).await;
        let limiter = self.addresses;
        self.store
            .update_address_attempts(
                &AddressLimiter::key(address),
                limiter.window_secs(),
                |attempts| limiter.check_and_record(attempts, now),
            )
            .await?
            .map_err(|e| ServiceError::Throttled {
                retry_after: e.retry_after_secs,
            })
    }

    /// Deletes the store's expired login-limit rows, at most once per
    /// [`PRUNE_LOGIN_LIMITS_SECS`] from this service (each server prunes on its own; the
    /// delete is cheap and idempotent). A failure is logged: expired rows limit nothing.
    async fn prune_login_limits(&self, now: i64) {
        let last = self.limits_pruned.load(Ordering::Relaxed);
        if now.saturating_sub(last) < PRUNE_LOGIN_LIMITS_SECS
            || self
                .limits_pruned
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        if let Err(e) = self.store.prune_login_limits(now).await {
            tracing::warn!(target: "phivault::auth", error = %e, "expired login limits could not be deleted");
        }
    }

    /// The store this service keeps accounts in.
    pub fn store(&self) -> &Store {
        &self.store
    }

    fn now(&self) -> i64 {
        self.clock.now_unix()
    }

    fn hasher(&self) -> Result<Arc<PasswordHasher>, ServiceError> {
        self.hasher
            .clone()
            .ok_or_else(|| internal("password hasher unavailable"))
    }

    /// Runs `work` (an argon2id hash or verification) on a blocking thread once a hashing
    /// permit is free.
    async fn hashing<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ServiceError> {
        let _permit = self
            .hashing
            .acquire()
            .await
            .map_err(|_| internal("password hashing closed"))?;
        let gauge = self.hashing_gauge.clone();
        let running = gauge
            .running
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        gauge.peak.fetch_max(running, Ordering::Relaxed);
        let out = tokio::task::spawn_blocking(work).await;
        gauge.running.fetch_sub(1, Ordering::Relaxed);
        out.map_err(|_| internal("password hashing task failed"))
    }

    /// Hashes on a blocking thread (argon2id takes tens of milliseconds and 19 MiB).
    async fn hash_password(&self, password: Password) -> Result<String, ServiceError> {
        let hasher = self.hasher()?;
        self.hashing(move || hasher.hash(&password))
            .await?
            .map_err(internal)
    }

    /// Verifies on a blocking thread; with no stored hash, spends the same time and answers
    /// false. Hands the password back for a rehash.
    async fn verify_password(
        &self,
        password: Password,
        phc: Option<String>,
    ) -> Result<(bool, Password), ServiceError> {
        let hasher = self.hasher()?;
        self.hashing(move || {
            let ok = match &phc {
                Some(phc) => hasher.verify(&password, phc),
                None => {
                    hasher.dummy_verify(&password);
                    false
                }
            };
            (ok, password)
        })
        .await
    }

    async fn user_by_username(&self, username: &str) -> Result<UserRow, ServiceError> {
        self.store
            .user_by_username(username)
            .await?
            .ok_or_else(|| ServiceError::NotFound("user".to_owned()))
    }

    /// The account behind an authenticated user principal; a disabled or vanished account is
    /// a credential failure.
    async fn user_of(&self, who: &Authenticated) -> Result<UserRow, ServiceError> {
        if who.principal.kind() != PrincipalKind::User {
            return Err(ServiceError::Invalid(
                "this operation is for user accounts, not OAuth2 clients".to_owned(),
            ));
        }
        match self.store.user_by_id(who.principal.id()).await? {
            Some(u) if u.disabled_at.is_none() => Ok(u),
            _ => Err(ServiceError::CredentialFailure),
        }
    }

    /// Creates a user (password checked against the policy), committed with `audit`'s entry.
    /// Returns the user id.
    pub async fn create_user(
        &self,
        username: &str,
        password: Password,
        role: Role,
        audit: &dyn AccountSink,
    ) -> Result<String, ServiceError> {
        let username = check_username(username)?;
        if role == Role::App {
            return Err(ServiceError::Invalid(
                "the app role is for OAuth2 clients, not users".to_owned(),
            ));
        }
        self.policy
            .check(&password, &username)
            .map_err(|v| ServiceError::WeakPassword(v.to_string()))?;
        // Cheap check before the expensive hash; the unique index decides races.
        if self.store.user_by_username(&username).await?.is_some() {
            return Err(ServiceError::UsernameTaken);
        }
        let password_hash = self.hash_password(password).await?;
        let user_id = uuid::Uuid::new_v4().to_string();
        let created = self
            .store
            .insert_user(
                &NewUser {
                    user_id: user_id.clone(),
                    username,
                    role: role.as_str().to_owned(),
                    password_hash,
                    created_at: self.now(),
                },
                audit,
                &AccountChange::new(AccountChangeKind::UserCreated),
            )
            .await?;
        if !created {
            return Err(ServiceError::UsernameTaken);
        }
        tracing::info!(target: "phivault::auth", user_id, role = %role, "user created");
        Ok(user_id)
    }

    /// Links a user (role patient) to their Patient record, committed with `audit`'s entry.
    pub async fn link_patient(
        &self,
        username: &str,
        patient: &Id,
        audit: &dyn AccountSink,
    ) -> Result<(), ServiceError> {
        let user = self.user_by_username(username).await?;
        if user.role != Role::Patient.as_str() {
            return Err(ServiceError::Invalid(
                "only users with the patient role are linked to a Patient".to_owned(),
            ));
        }
        self.store
            .set_user_patient(
                &user.user_id,
                Some(patient.as_str()),
                audit,
                &AccountChange::about_patient(AccountChangeKind::PatientLinked, patient),
            )
            .await?;
        Ok(())
    }

    /// Links a user (role clinician) to their Practitioner record, committed with `audit`'s
    /// entry.
    pub async fn link_practitioner(
        &self,
        username: &str,
        practitioner: &Id,
        audit: &dyn AccountSink,
    ) -> Result<(), ServiceError> {
        let user = self.user_by_username(username).await?;
        if user.role != Role::Clinician.as_str() {
            return Err(ServiceError::Invalid(
                "only users with the clinician role are linked to a Practitioner".to_owned(),
            ));
        }
        self.store
            .set_user_practitioner(
                &user.user_id,
                Some(practitioner.as_str()),
                audit,
                &AccountChange {
                    kind: AccountChangeKind::PractitionerLinked,
                    resource: Some((ResourceType::PRACTITIONER, practitioner.clone())),
                    patient: None,
                },
            )
            .await?;
        Ok(())
    }

    /// Disables a user: logins and existing tokens stop working; the row stays for the audit
    /// trail. Committed with `audit`'s entry; disabling a disabled user changes and records
    /// nothing.
    pub async fn disable_user(
        &self,
        username: &str,
        audit: &dyn AccountSink,
    ) -> Result<(), ServiceError> {
        let user = self.user_by_username(username).await?;
        self.store
            .disable_user(
                &user.user_id,
                self.now(),
                audit,
                &AccountChange::new(AccountChangeKind::UserDisabled),
            )
            .await?;
        Ok(())
    }

    /// Disables an OAuth2 client: its credentials and every token bound to it stop working;
    /// the row stays for the audit trail. Committed with `audit`'s entry; disabling a
    /// disabled client changes and records nothing.
    pub async fn disable_client(
        &self,
        client_id: &str,
        audit: &dyn AccountSink,
    ) -> Result<(), ServiceError> {
        if self.store.client(client_id).await?.is_none() {
            return Err(ServiceError::NotFound("client".to_owned()));
        }
        self.store
            .disable_client(
                client_id,
                self.now(),
                audit,
                &AccountChange::new(AccountChangeKind::ClientDisabled),
            )
            .await?;
        Ok(())
    }

    /// The username of an account, unsealed (administrators only; never log it).
    pub async fn username(&self, user_id: &str) -> Result<String, ServiceError> {
        let user = self
            .store
            .user_by_id(user_id)
            .await?
            .ok_or_else(|| ServiceError::NotFound("user".to_owned()))?;
        Ok(self.store.user_username(&user).await?)
    }

    /// Who the account `user_id` is (disabled accounts included: they still name who acted
    /// in the past); `None` when there is no such account. A stored role or Practitioner id
    /// that does not parse is an internal fault.
    pub async fn user_summary(&self, user_id: &str) -> Result<Option<UserSummary>, ServiceError> {
        let Some(user) = self.store.user_by_id(user_id).await? else {
            return Ok(None);
        };
        let role = Role::parse(&user.role)
            .map_err(|_| internal(format_args!("user {user_id} has an unknown stored role")))?;
        let practitioner = user
            .practitioner_id
            .as_deref()
            .map(Id::parse)
            .transpose()
            .map_err(|_| {
                internal(format_args!(
                    "user {user_id} is linked to a malformed Practitioner id"
                ))
            })?;
        Ok(Some(UserSummary {
            username: self.store.user_username(&user).await?,
            role,
            practitioner,
        }))
    }

    /// The registered name of the OAuth2 client `client_id` (disabled clients included);
    /// `None` when there is no such client.
    pub async fn client_name(&self, client_id: &str) -> Result<Option<String>, ServiceError> {
        Ok(self.store.client(client_id).await?.map(|c| c.name))
    }

    /// How many user accounts exist (e.g. to offer first-admin bootstrap only on an empty
    /// system).
    pub async fn user_count(&self) -> Result<u64, ServiceError> {
        Ok(self.store.user_count().await?)
    }

    /// Starts TOTP enrolment for the authenticated user, committed with `audit`'s entry.
    pub async fn begin_totp_enrolment(
        &self,
        who: &Authenticated,
        audit: &dyn AccountSink,
    ) -> Result<TotpEnrolment, ServiceError> {
        let user = self.user_of(who).await?;
        let already = || ServiceError::Invalid("TOTP is already enabled for this account".into());
        if user.totp_enabled {
            return Err(already());
        }
        let secret = TotpSecret::generate().map_err(internal)?;
        let username = self.store.user_username(&user).await?;
        let totp = Totp::new(&secret, &username).map_err(internal)?;
        let url = totp.otpauth_url().map_err(internal)?;
        if !self
            .store
            .begin_totp(
                &user.user_id,
                secret.expose_bytes(),
                audit,
                &AccountChange::new(AccountChangeKind::TotpEnrolmentStarted),
            )
            .await?
        {
            return Err(already());
        }
        tracing::info!(target: "phivault::auth", user_id = %user.user_id, "TOTP enrolment started");
        Ok(TotpEnrolment {
            secret_base32: String::from(secret.to_base32().as_str()),
            otpauth_url: String::from(url.as_str()),
        })
    }

    /// Confirms enrolment with a first code, committed with `audit`'s entry; returns the
    /// recovery codes (shown once).
    pub async fn confirm_totp(
        &self,
        who: &Authenticated,
        code: &str,
        audit: &dyn AccountSink,
    ) -> Result<Vec<String>, ServiceError> {
        let user = self.user_of(who).await?;
        if user.totp_enabled {
            return Err(ServiceError::Invalid(
                "TOTP is already enabled for this account".into(),
            ));
        }
        let Some(secret) = self.store.user_totp_secret(&user).await? else {
            return Err(ServiceError::Invalid(
                "no TOTP enrolment is in progress".into(),
            ));
        };
        let secret = TotpSecret::from_bytes(&secret).map_err(internal)?;
        let checker = Totp::new(&secret, &user.user_id).map_err(internal)?;
        let step = checker
            .verify(code, self.now(), None)
            .map_err(|_| ServiceError::CredentialFailure)?;
        let step = i64::try_from(step).map_err(internal)?;
        let codes = RecoveryCodes::generate(RECOVERY_CODE_COUNT).map_err(internal)?;
        let hashes: Vec<[u8; 32]> = codes.hashes().iter().map(|h| *h.as_bytes()).collect();
        let enabled = self
            .store
            .enable_totp(
                &user.user_id,
                step,
                &hashes,
                audit,
                &AccountChange::new(AccountChangeKind::TotpEnabled),
            )
            .await?;
        if !enabled {
            return Err(ServiceError::Invalid(
                "no TOTP enrolment is in progress".into(),
            ));
        }
        tracing::info!(target: "phivault::auth", user_id = %user.user_id, "TOTP enabled");
        Ok(codes
            .codes()
            .iter()
            .map(|c| c.expose().to_owned())
            .collect())
    }

    /// Revokes a session or access token (logout), committed with `audit`'s entry. Revoking
    /// an unknown, malformed or already revoked token succeeds (RFC 7009) and records
    /// nothing: the answer says nothing about the token.
    pub async fn revoke(&self, token: &str, audit: &dyn AccountSink) -> Result<(), ServiceError> {
        let Ok((_, hash)) = token::parse(token) else {
            return Ok(());
        };
        self.store
            .revoke_token(
                hash.as_bytes(),
                self.now(),
                audit,
                &AccountChange::new(AccountChangeKind::TokenRevoked),
            )
            .await?;
        Ok(())
    }
}
