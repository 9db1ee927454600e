//! Accounts and credentials for phivault: argon2id passwords and the password policy, TOTP
//! second factors, recovery codes, session and OAuth2 tokens, and login throttling.
//!
//! The primitives (passwords, TOTP, recovery codes, tokens, lockout) are pure: they decide and
//! compute without I/O. The [`service`] module ([`Accounts`]) joins them with the store, which
//! persists what they hand out (PHC strings, hashes, sealed TOTP secrets, throttle state, care
//! grants, break-the-glass claims); it speaks no HTTP, and the server maps its errors to
//! responses.
//!
//! Guarantees:
//! - **No credential in the clear at rest.** What this crate gives the store to keep is a
//!   one-way form: argon2id PHC strings for passwords ([`PasswordHasher`]), SHA-256 hashes for
//!   tokens ([`TokenHash`]) and recovery codes ([`RecoveryCodeHash`]). A TOTP secret must be
//!   readable again to compute codes, so the store seals [`TotpSecret::expose_bytes`] with a
//!   data key (phivault-crypto) before writing it.
//! - **Secrets live in their own types** ([`Password`], [`TotpSecret`], [`IssuedToken`],
//!   [`RecoveryCode`], [`Totp`]): zeroized on drop, with a `Debug` that prints no secret
//!   material, and no `Display` or `Serialize`. Reading one takes an explicitly named method.
//! - **Constant-time comparisons** for password outputs (argon2), TOTP codes, recovery codes
//!   and token hashes; [`PasswordHasher::dummy_verify`] spends the same time for unknown users,
//!   so timing does not reveal whether an account exists.
//! - **One refusal for every credential failure.** The errors distinguish a wrong from a
//!   replayed TOTP code, or an expired from a revoked token, for tests and the audit trail;
//!   [`AuthError::is_credential_failure`] tells the edge to answer all of them with the same
//!   401 and the same text, without saying whether the account exists.
//!
//! The numbers (all in one place, for the README):
//!
//! | what | value |
//! |---|---|
//! | password length | 12 to 128 characters ([`PasswordPolicy`]) |
//! | common-password list | 49,233 entries shipped in `data/common-passwords.txt` |
//! | argon2id | m = 19,456 KiB, t = 2, p = 1, 16-byte salt, 32-byte output (OWASP) |
//! | TOTP | SHA-1, 6 digits, 30 s step, accepted steps now-1 ..= now+1, each step used once |
//! | TOTP secret | 20 random bytes (160 bits, RFC 4226 recommendation) |
//! | recovery codes | 10, each `xxxx-xxxx-xxxx` (60 random bits), stored as SHA-256 |
//! | tokens | 32 random bytes, prefix + base64url, stored as SHA-256 |
//! | session / access token / MFA ticket | 8 h absolute / 15 min / 5 min |
//! | account lockout | after 5 consecutive failures: 60 s, doubling per further failure, at most 1 h; success resets |
//! | per-address limit | 20 login attempts per 5 minutes per IPv4 address or IPv6 /64 |
//! | usernames without an account | locked like an account; the count forgotten a day after its last attempt |
//! | where the counts are | in the store, by blind tokens: shared by every server on the database |
//!
//! The secret types have neither `Display` nor `Serialize`; these checks fail to compile, while
//! the same code for a public type compiles:
//!
//! ```
//! fn display<T: std::fmt::Display>() {}
//! fn serialize<T: serde::Serialize>() {}
//! display::<phivault_auth::TokenKind>();
//! serialize::<phivault_auth::TokenKind>();
//! ```
//!
//! ```compile_fail,E0277
//! fn display<T: std::fmt::Display>() {}
//! display::<phivault_auth::Password>();
//! ```
//!
//! ```compile_fail,E0277
//! fn serialize<T: serde::Serialize>() {}
//! serialize::<phivault_auth::Password>();
//! ```
//!
//! ```compile_fail,E0277
//! fn display<T: std::fmt::Display>() {}
//! display::<phivault_auth::TotpSecret>();
//! ```
//!
//! ```compile_fail,E0277
//! fn serialize<T: serde::Serialize>() {}
//! serialize::<phivault_auth::TotpSecret>();
//! ```
//!
//! ```compile_fail,E0277
//! fn display<T: std::fmt::Display>() {}
//! display::<phivault_auth::Totp>();
//! ```
//!
//! ```compile_fail,E0277
//! fn serialize<T: serde::Serialize>() {}
//! serialize::<phivault_auth::Totp>();
//! ```
//!
//! ```compile_fail,E0277
//! fn display<T: std::fmt::Display>() {}
//! display::<phivault_auth::IssuedToken>();
//! ```
//!
//! ```compile_fail,E0277
//! fn serialize<T: serde::Serialize>() {}
//! serialize::<phivault_auth::IssuedToken>();
//! ```
//!
//! ```compile_fail,E0277
//! fn display<T: std::fmt::Display>() {}
//! display::<phivault_auth::RecoveryCode>();
//! ```
//!
//! ```compile_fail,E0277
//! fn serialize<T: serde::Serialize>() {}
//! serialize::<phivault_auth::RecoveryCode>();
//! ```

mod clock;
mod hex32;
pub mod jwt;
pub mod lockout;
pub mod password;
pub mod pkce;
pub mod recovery;
pub mod service;
pub mod token;
pub mod totp;

pub use clock::{Clock, FixedClock, SystemClock};
pub use lockout::{AddressLimited, AddressLimiter, LockedUntil, LoginThrottle};
pub use password::{Password, PasswordHasher, PasswordPolicy, PolicyViolation};
pub use recovery::{RecoveryCode, RecoveryCodeHash, RecoveryCodes};
pub use service::{
    Accounts, AppAuthorization, Authenticated, BreakGlassRecord, ClientCredentials,
    ClientRegistration, ClientType, CodeRequest, GrantError, IdTokenClaims, LAUNCH_LIFETIME_SECS,
    LoginOutcome, LoginRequest, LoginStep, OAuthClient, ONLINE_REFRESH_SECS,
    SIGNING_KEY_OVERLAP_SECS, SIGNING_KEY_ROTATE_SECS, ServiceError, TokenGrant, TotpEnrolment,
    UserSummary, default_hash_concurrency, has_scope,
};
pub use token::{IssuedToken, TokenError, TokenHash, TokenKind, TokenRecord};
pub use totp::{Totp, TotpError, TotpSecret};

use phivault_crypto::CryptoError;

/// Errors of this crate.
///
/// Credential failures ([`AuthError::is_credential_failure`]) must reach the client as one
/// indistinguishable 401; the variants exist for tests and the audit trail.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// A new password breaks the password policy (the message names the rule, never the
    /// password).
    #[error(transparent)]
    Policy(#[from] PolicyViolation),
    /// A TOTP code was refused.
    #[error(transparent)]
    Totp(#[from] TotpError),
    /// A presented token was refused.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The account is locked out until the given time.
    #[error(transparent)]
    Locked(#[from] LockedUntil),
    /// The client address made too many login attempts.
    #[error(transparent)]
    AddressLimited(#[from] AddressLimited),
    /// A password, recovery code or other credential did not match.
    #[error("invalid credentials")]
    InvalidCredentials,
    /// The system random generator or another primitive failed.
    #[error("cryptography failed: {0}")]
    Crypto(#[from] CryptoError),
    /// argon2 refused its parameters or failed internally (never a wrong password).
    #[error("password hashing failed: {0}")]
    Hashing(String),
    /// A value handed in by the caller had the wrong shape (e.g. a TOTP label with `:`).
    #[error("invalid {0}")]
    Invalid(&'static str),
}

impl AuthError {
    /// True for every refusal that the edge answers with the same 401 (wrong password, wrong
    /// or replayed TOTP code, bad recovery code, expired, revoked, unknown or misbound token).
    ///
    /// Lockout and address limiting are not included: the edge decides whether to disclose
    /// them (429 with `Retry-After`) or to fold them into the same 401.
    pub fn is_credential_failure(&self) -> bool {
        matches!(
            self,
            Self::Totp(_) | Self::Token(_) | Self::InvalidCredentials
        )
    }
}

impl From<argon2::Error> for AuthError {
    fn from(e: argon2::Error) -> Self {
        Self::Hashing(e.to_string())
    }
}

impl From<argon2::password_hash::Error> for AuthError {
    fn from(e: argon2::password_hash::Error) -> Self {
        Self::Hashing(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_failures_are_grouped() {
        let cases: Vec<(AuthError, bool)> = vec![
            (AuthError::Totp(TotpError::Wrong), true),
            (AuthError::Totp(TotpError::Replayed), true),
            (AuthError::Token(TokenError::Expired), true),
            (AuthError::Token(TokenError::Revoked), true),
            (AuthError::InvalidCredentials, true),
            (AuthError::Policy(PolicyViolation::Common), false),
            (AuthError::Locked(LockedUntil { until: 10 }), false),
            (AuthError::Invalid("label"), false),
        ];
        for (err, expected) in cases {
            assert_eq!(err.is_credential_failure(), expected, "{err:?}");
        }
    }
}
