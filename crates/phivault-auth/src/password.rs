//! Passwords: the secret type, the policy for new passwords, and argon2id hashing.
//!
//! - [`Password`] holds a password in memory, zeroized on drop, never printed.
//! - [`PasswordPolicy`] decides whether a *new* password may be set: 12 to 128 characters, not
//!   in the shipped list of common (breached) passwords, not equal to or containing the username.
//! - [`PasswordHasher`] turns a password into an argon2id PHC string with the OWASP parameters
//!   (m = 19,456 KiB, t = 2, p = 1) and verifies one in constant time; for an unknown user
//!   [`PasswordHasher::dummy_verify`] spends the same time, so timing does not tell whether an
//!   account exists. Hashing costs tens of milliseconds of CPU and 19 MiB of memory by design:
//!   async callers run it on a blocking thread.

use std::collections::HashSet;
use std::fmt;
use std::sync::OnceLock;

use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
use argon2::{Algorithm, Argon2, Params, PasswordHash, Version};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use secrecy::{ExposeSecret, SecretString};

use crate::AuthError;

/// A password as typed by its owner, zeroized on drop.
///
/// It has no `Display` and no `Serialize`, and its `Debug` prints `Password(<redacted>)`.
/// Read it with [`Password::expose`], only to check or hash it.
pub struct Password(SecretString);

impl Password {
    /// Wraps a password.
    pub fn new(password: impl Into<String>) -> Self {
        Self(SecretString::from(password.into()))
    }

    /// The password itself: for the policy check and the hasher, never for output.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl From<String> for Password {
    fn from(password: String) -> Self {
        Self::new(password)
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// The rule a new password broke. Messages name the rule and never echo the password.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyViolation {
    /// Fewer characters than the minimum.
    #[error("the password must have at least {min} characters")]
    TooShort {
        /// The minimum number of characters.
        min: usize,
    },
    /// More characters than the maximum.
    #[error("the password must have at most {max} characters")]
    TooLong {
        /// The maximum number of characters.
        max: usize,
    },
    /// Equal to, or containing, the username (or the part of an e-mail username before `@`).
    #[error("the password must not be or contain the username")]
    ContainsUsername,
    /// In the list of common passwords seen in breaches.
    #[error("the password is too common: it appears in lists of breached passwords")]
    Common,
}

/// The shipped list of common passwords, lowercase, one a line (see `data/README.md`).
const COMMON_PASSWORDS: &str = include_str!("../data/common-passwords.txt");

fn common_passwords() -> &'static HashSet<&'static str> {
    static SET: OnceLock<HashSet<&'static str>> = OnceLock::new();
    SET.get_or_init(|| {
        COMMON_PASSWORDS
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect()
    })
}

/// True when `password`, trimmed and lowercased, is in the shipped common-password list.
pub fn is_common(password: &str) -> bool {
    common_passwords().contains(password.trim().to_lowercase().as_str())
}

/// Number of entries in the shipped common-password list.
pub fn common_password_count() -> usize {
    common_passwords().len()
}

/// The rules a new password must meet (NIST SP 800-63B style: length and a blocklist, no
/// composition rules). Lengths count Unicode scalar values, not bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasswordPolicy {
    min_chars: usize,
    max_chars: usize,
}

impl PasswordPolicy {
    /// The default minimum length, in characters.
    pub const MIN_CHARS: usize = 12;
    /// The default maximum length, in characters (long enough for passphrases, short enough
    /// to bound hashing input).
    pub const MAX_CHARS: usize = 128;
    /// Usernames (or e-mail local parts) shorter than this are only refused as the whole
    /// password, not as a substring, so `al` does not forbid every password containing "al".
    pub const MIN_USERNAME_CHARS_FOR_SUBSTRING: usize = 3;

    /// Checks a new password for the account `username`, naming the first rule it breaks.
    pub fn check(&self, password: &Password, username: &str) -> Result<(), PolicyViolation> {
        let pw = password.expose();
        let chars = pw.chars().count();
        if chars < self.min_chars {
            return Err(PolicyViolation::TooShort {
                min: self.min_chars,
            });
        }
        if chars > self.max_chars {
            return Err(PolicyViolation::TooLong {
                max: self.max_chars,
            });
        }
        if contains_username(pw, username) {
            return Err(PolicyViolation::ContainsUsername);
        }
        if is_common(pw) {
            return Err(PolicyViolation::Common);
        }
        Ok(())
    }

    /// The minimum length in characters.
    pub fn min_chars(&self) -> usize {
        self.min_chars
    }

    /// The maximum length in characters.
    pub fn max_chars(&self) -> usize {
        self.max_chars
    }
}

impl Default for PasswordPolicy {
    fn default() -> Self {
        Self {
            min_chars: Self::MIN_CHARS,
            max_chars: Self::MAX_CHARS,
        }
    }
}

fn contains_username(password: &str, username: &str) -> bool {
    let pw = password.to_lowercase();
    let name = username.trim().to_lowercase();
    if name.is_empty() {
        return false;
    }
    let local = name.split('@').next().unwrap_or_default();
    [name.as_str(), local].iter().any(|n| {
        !n.is_empty()
            && (pw.trim() == *n
                || (n.chars().count() >= PasswordPolicy::MIN_USERNAME_CHARS_FOR_SUBSTRING
                    && pw.contains(n)))
    })
}

/// Refuse to verify PHC strings asking for more than this (1 GiB, 16 passes, 16 lanes): a
/// corrupted or planted hash must not exhaust the server.
const MAX_M_COST_KIB: u32 = 1 << 20;
const MAX_T_COST: u32 = 16;
const MAX_P_COST: u32 = 16;
const SALT_LEN: usize = 16;
const OUTPUT_LEN: usize = 32;

/// argon2id password hashing to PHC strings (`$argon2id$v=19$m=19456,t=2,p=1$salt$hash`).
///
/// Verification takes its parameters from the stored PHC string, so hashes made with older
/// parameters still verify; [`PasswordHasher::needs_rehash`] tells the login flow to store a
/// fresh hash after a successful login.
pub struct PasswordHasher {
    params: Params,
    /// A PHC string with this hasher's parameters that no password matches, for
    /// [`PasswordHasher::dummy_verify`].
    dummy_phc: String,
}

impl PasswordHasher {
    /// OWASP Password Storage Cheat Sheet: memory cost in KiB (19 MiB).
    pub const OWASP_M_COST_KIB: u32 = 19_456;
    /// OWASP: passes over memory.
    pub const OWASP_T_COST: u32 = 2;
    /// OWASP: lanes.
    pub const OWASP_P_COST: u32 = 1;

    /// The hasher with the OWASP parameters (m = 19,456 KiB, t = 2, p = 1). Use this one in
    /// the server and the CLI.
    pub fn new() -> Result<Self, AuthError> {
        Self::with_params(
            Self::OWASP_M_COST_KIB,
            Self::OWASP_T_COST,
            Self::OWASP_P_COST,
        )
    }

    /// A hasher with other costs: for tests and benchmarks, which cannot afford 19 MiB and two
    /// passes per hash. Hashes it makes are flagged by the OWASP hasher's
    /// [`PasswordHasher::needs_rehash`].
    pub fn with_params(m_cost_kib: u32, t_cost: u32, p_cost: u32) -> Result<Self, AuthError> {
        let params = Params::new(m_cost_kib, t_cost, p_cost, Some(OUTPUT_LEN))?;
        let mut salt = [0u8; SALT_LEN];
        let mut output = [0u8; OUTPUT_LEN];
        phivault_crypto::random_bytes(&mut salt)?;
        phivault_crypto::random_bytes(&mut output)?;
        let dummy_phc = format!(
            "$argon2id$v=19$m={m_cost_kib},t={t_cost},p={p_cost}${}${}",
            STANDARD_NO_PAD.encode(salt),
            STANDARD_NO_PAD.encode(output)
        );
        Ok(Self { params, dummy_phc })
    }

    /// The cheapest parameters argon2 accepts (8 KiB, one pass): unit tests only.
    #[cfg(test)]
    pub(crate) fn for_tests() -> Self {
        match Self::with_params(8, 1, 1) {
            Ok(h) => h,
            Err(e) => panic!("test hasher: {e}"),
        }
    }

    fn argon2(&self) -> Argon2<'static> {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, self.params.clone())
    }

    /// Hashes `password` with a fresh 16-byte random salt; the result is a PHC string, the only
    /// form of a password that is ever stored.
    pub fn hash(&self, password: &Password) -> Result<String, AuthError> {
        let mut salt = [0u8; SALT_LEN];
        phivault_crypto::random_bytes(&mut salt)?;
        let phc = self
            .argon2()
            .hash_password_with_salt(password.expose().as_bytes(), &salt)?;
        Ok(phc.to_string())
    }

    /// True when `password` matches the PHC string `phc`. The output comparison is constant
    /// time (argon2). A malformed PHC string, another algorithm than argon2id, or costs above
    /// 1 GiB / 16 passes / 16 lanes are refused, after spending the time of a real check.
    pub fn verify(&self, password: &Password, phc: &str) -> bool {
        match parse_acceptable(phc) {
            Some(parsed) => Argon2::default()
                .verify_password(password.expose().as_bytes(), &parsed)
                .is_ok(),
            None => {
                self.dummy_verify(password);
                false
            }
        }
    }

    /// Spends the time of a real [`PasswordHasher::verify`] against a hash no password
    /// matches. Call it when the username is unknown, so the response takes as long as for a
    /// known user with a wrong password.
    pub fn dummy_verify(&self, password: &Password) {
        if let Ok(parsed) = PasswordHash::new(&self.dummy_phc) {
            // The result is always a mismatch; only the time spent matters.
            let _ = self
                .argon2()
                .verify_password(password.expose().as_bytes(), &parsed);
        }
    }

    /// True when `phc` was not made with this hasher's algorithm and costs (or does not
    /// parse): after a successful login, store a fresh [`PasswordHasher::hash`].
    pub fn needs_rehash(&self, phc: &str) -> bool {
        let Ok(parsed) = PasswordHash::new(phc) else {
            return true;
        };
        let Ok(params) = Params::try_from(&parsed) else {
            return true;
        };
        parsed.algorithm.as_str() != argon2::ARGON2ID_IDENT.as_str()
            || parsed.version != Some(Version::V0x13.into())
            || params.m_cost() != self.params.m_cost()
            || params.t_cost() != self.params.t_cost()
            || params.p_cost() != self.params.p_cost()
    }

    /// This hasher's costs: memory in KiB, passes, lanes.
    pub fn costs(&self) -> (u32, u32, u32) {
        (
            self.params.m_cost(),
            self.params.t_cost(),
            self.params.p_cost(),
        )
    }
}

fn parse_acceptable(phc: &str) -> Option<PasswordHash> {
    let parsed = PasswordHash::new(phc).ok()?;
    if parsed.algorithm.as_str() != argon2::ARGON2ID_IDENT.as_str() {
        return None;
    }
    let params = Params::try_from(&parsed).ok()?;
    (params.m_cost() <= MAX_M_COST_KIB
        && params.t_cost() <= MAX_T_COST
        && params.p_cost() <= MAX_P_COST)
        .then_some(parsed)
}

impl fmt::Debug for PasswordHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (m, t, p) = self.costs();
        f.debug_struct("PasswordHasher")
            .field("m_cost_kib", &m)
            .field("t_cost", &t)
            .field("p_cost", &p)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const GOOD: &str = "correct horse battery staple 42";

    #[test]
    fn policy_table() {
        let policy = PasswordPolicy::default();
        let long = "x".repeat(129);
        let max = "ab".repeat(64);
        use PolicyViolation::*;
        #[rustfmt::skip]
        let cases: &[(&str, &str, Result<(), PolicyViolation>)] = &[
            (GOOD, "alice", Ok(())),
            ("Tr0ub4dor&3", "alice", Err(TooShort { min: 12 })),
            ("", "alice", Err(TooShort { min: 12 })),
            // 11 characters, 22 bytes: length counts characters.
            ("ééééééééééé", "alice", Err(TooShort { min: 12 })),
            ("éééééééééééé", "alice", Ok(())),
            (&long, "alice", Err(TooLong { max: 128 })),
            (&max, "alice", Ok(())),
            ("alice.wonderland", "Alice.Wonderland", Err(ContainsUsername)),
            ("my-name-is-ALICE-ok", "alice", Err(ContainsUsername)),
            ("totally-unrelated!", "dr.bob@example.org", Ok(())),
            ("i-am-dr.bob-really", "dr.bob@example.org", Err(ContainsUsername)),
            // A two-letter username is only refused as the whole password.
            ("pallets-of-salt-9", "al", Ok(())),
            ("123456789012", "alice", Err(Common)),
            ("qazwsxedcrfv", "alice", Err(Common)),
            ("QWERTY123456", "alice", Err(Common)),
            ("  1qaz2wsx3edc ", "alice", Err(Common)),
        ];
        for (pw, user, expected) in cases {
            assert_eq!(
                policy.check(&Password::new(*pw), user),
                *expected,
                "password {pw:?} for {user:?}"
            );
        }
    }

    #[test]
    fn policy_messages_never_echo_the_password() {
        let policy = PasswordPolicy::default();
        for pw in ["short-pw", "alice-in-chains-forever", "123456789012"] {
            let err = policy.check(&Password::new(pw), "alice").unwrap_err();
            assert!(!err.to_string().contains(pw), "{err}");
            assert!(!format!("{err:?}").contains(pw), "{err:?}");
        }
    }

    #[test]
    fn common_list_is_loaded_lowercase_and_sized() {
        let n = common_password_count();
        assert!((10_000..=100_000).contains(&n), "{n} entries");
        for line in COMMON_PASSWORDS.lines() {
            assert_eq!(line, line.trim().to_lowercase(), "entry {line:?}");
        }
        assert!(is_common("password"));
        assert!(is_common("PassWord"));
        assert!(!is_common("a-phrase-nobody-has-used-before-7c1e"));
    }

    #[test]
    fn hash_then_verify() {
        let hasher = PasswordHasher::for_tests();
        let pw = Password::new(GOOD);
        let phc = hasher.hash(&pw).unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=8,t=1,p=1$"), "{phc}");
        assert!(!phc.contains(GOOD));
        assert!(hasher.verify(&pw, &phc));
        // Salted: the same password hashes differently each time.
        assert_ne!(phc, hasher.hash(&pw).unwrap());
    }

    #[test]
    fn verify_refuses() {
        let hasher = PasswordHasher::for_tests();
        let pw = Password::new(GOOD);
        let phc = hasher.hash(&pw).unwrap();
        let argon2i = phc.replacen("$argon2id$", "$argon2i$", 1);
        let huge = phc.replacen("m=8,", "m=4194304,", 1);
        let cases: &[(&str, &str)] = &[
            ("correct horse battery staple 43", phc.as_str()),
            ("", phc.as_str()),
            (GOOD, ""),
            (GOOD, "not a phc string"),
            (GOOD, "$argon2id$v=19$m=8,t=1,p=1$"),
            (GOOD, argon2i.as_str()),
            (GOOD, huge.as_str()),
        ];
        for (candidate, stored) in cases {
            assert!(
                !hasher.verify(&Password::new(*candidate), stored),
                "{candidate:?} against {stored:?}"
            );
        }
    }

    #[test]
    fn production_hasher_uses_owasp_parameters() {
        let hasher = PasswordHasher::new().unwrap();
        assert_eq!(hasher.costs(), (19_456, 2, 1));
        // Its dummy hash carries the same costs, so a dummy check costs as much as a real one.
        assert!(
            hasher
                .dummy_phc
                .starts_with("$argon2id$v=19$m=19456,t=2,p=1$")
        );
        assert!(!hasher.needs_rehash(&hasher.dummy_phc));
        // A hash made with test costs is flagged for rehashing by the real hasher.
        let weak = PasswordHasher::for_tests()
            .hash(&Password::new(GOOD))
            .unwrap();
        assert!(hasher.needs_rehash(&weak));
        assert!(hasher.needs_rehash("garbage"));
    }

    #[test]
    fn dummy_verify_parses_and_never_matches() {
        let hasher = PasswordHasher::for_tests();
        assert!(PasswordHash::new(&hasher.dummy_phc).is_ok());
        assert!(!hasher.needs_rehash(&hasher.dummy_phc));
        assert!(!hasher.verify(&Password::new(GOOD), &hasher.dummy_phc));
        hasher.dummy_verify(&Password::new(GOOD));
    }

    #[test]
    fn debug_prints_no_secret() {
        let pw = Password::new(GOOD);
        assert_eq!(format!("{pw:?}"), "Password(<redacted>)");
        assert_eq!(format!("{pw:#?}"), "Password(<redacted>)");
        let hasher = PasswordHasher::for_tests();
        assert!(!format!("{hasher:?}").contains(&hasher.dummy_phc));
    }
}
