//! The accounts service: what the server and the CLI call. It joins the pure parts of this
//! crate with the store (which keeps users, hashed tokens, sealed TOTP secrets, grants and
//! break-the-glass records) and with the policy crate's principals.

use std::net::IpAddr;

use phivault_fhir::Id;
use phivault_policy::{Label, PrincipalRef, Role};
use phivault_store::Store;

use crate::{IssuedToken, Password};

/// Errors of the service. Credential failures all display the same text.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// Wrong username/password/TOTP/recovery code, unknown/expired/revoked token, token of
    /// another client: one text for all, so nothing tells whether an account exists.
    #[error("authentication failed")]
    CredentialFailure,
    /// The account or address is throttled; retry after this many seconds.
    #[error("too many attempts; retry in {retry_after} s")]
    Throttled {
        /// Seconds to wait.
        retry_after: i64,
    },
    /// A second factor is required and was not given.
    #[error("a TOTP code is required for this account")]
    SecondFactorRequired,
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

/// A break-the-glass access, for review.
#[derive(Debug, Clone)]
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

/// The accounts service. Cheap to clone.
#[derive(Clone)]
pub struct Accounts {
    store: Store,
}

impl std::fmt::Debug for Accounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accounts").finish_non_exhaustive()
    }
}

#[allow(unused_variables, clippy::unused_async)]
impl Accounts {
    /// The service over a store, with OWASP argon2id parameters.
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// Creates a user (password checked against the policy). Returns the user id.
    pub async fn create_user(
        &self,
        username: &str,
        password: Password,
        role: Role,
    ) -> Result<String, ServiceError> {
        todo!()
    }

    /// Links a user (role patient) to their Patient record.
    pub async fn link_patient(&self, username: &str, patient: &Id) -> Result<(), ServiceError> {
        todo!()
    }

    /// Links a user (role clinician) to their Practitioner record.
    pub async fn link_practitioner(
        &self,
        username: &str,
        practitioner: &Id,
    ) -> Result<(), ServiceError> {
        todo!()
    }

    /// Password (+ TOTP or recovery code) login with lockout and per-address limits.
    pub async fn login(&self, request: LoginRequest) -> Result<LoginOutcome, ServiceError> {
        todo!()
    }

    /// Starts TOTP enrolment for the authenticated user.
    pub async fn begin_totp_enrolment(
        &self,
        who: &Authenticated,
    ) -> Result<TotpEnrolment, ServiceError> {
        todo!()
    }

    /// Confirms enrolment with a first code; returns the recovery codes (shown once).
    pub async fn confirm_totp(
        &self,
        who: &Authenticated,
        code: &str,
    ) -> Result<Vec<String>, ServiceError> {
        todo!()
    }

    /// Revokes a session or access token (logout).
    pub async fn revoke(&self, token: &str) -> Result<(), ServiceError> {
        todo!()
    }

    /// Who a bearer token speaks for (session or access token).
    pub async fn authenticate(&self, bearer: &str) -> Result<Authenticated, ServiceError> {
        todo!()
    }

    /// Registers an OAuth2 client with its allowed scopes; returns (client_id, secret).
    pub async fn create_client(
        &self,
        name: &str,
        scopes: &str,
        launch_patient: Option<&Id>,
    ) -> Result<(String, IssuedToken), ServiceError> {
        todo!()
    }

    /// OAuth2 client credentials grant: (access token, lifetime seconds, granted scopes).
    pub async fn client_credentials(
        &self,
        client_id: &str,
        secret: &str,
        scope: Option<&str>,
    ) -> Result<(IssuedToken, i64, String), ServiceError> {
        todo!()
    }

    /// Grants a user access to a patient (care relationship), optionally with labels.
    pub async fn grant(
        &self,
        username: &str,
        patient: &Id,
        labels: &[Label],
        expires_at: Option<i64>,
    ) -> Result<(), ServiceError> {
        todo!()
    }

    /// The care relationship of a user to a patient: (on care team or granted, label grants).
    pub async fn relationship(
        &self,
        who: &Authenticated,
        patient: &Id,
    ) -> Result<(bool, Vec<Label>), ServiceError> {
        todo!()
    }

    /// Every patient the user may reach through care relationships (grants and CareTeam
    /// resources naming the user's Practitioner), for compartment-restricted searches.
    pub async fn care_patients(&self, who: &Authenticated) -> Result<Vec<Id>, ServiceError> {
        todo!()
    }

    /// The user's break-the-glass claim on a patient that is still active, if any.
    pub async fn active_break_glass(
        &self,
        who: &Authenticated,
        patient: &Id,
    ) -> Result<Option<BreakGlassRecord>, ServiceError> {
        todo!()
    }

    /// Records a break-the-glass claim.
    pub async fn record_break_glass(
        &self,
        who: &Authenticated,
        patient: &Id,
        reason: &str,
        expires_at: i64,
    ) -> Result<String, ServiceError> {
        todo!()
    }

    /// Break-the-glass records, newest first.
    pub async fn list_break_glass(&self) -> Result<Vec<BreakGlassRecord>, ServiceError> {
        todo!()
    }
}
