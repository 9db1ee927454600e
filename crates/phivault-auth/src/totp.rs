//! TOTP second factor (RFC 6238): SHA-1, 6 digits, 30-second steps, issuer `phivault`.
//!
//! Enrolment: [`TotpSecret::generate`], show [`Totp::otpauth_url`] (as a QR code) or
//! [`TotpSecret::to_base32`] once, ask for a first code and [`Totp::verify`] it; then the store
//! keeps the secret sealed under a data key and the step that code used.
//!
//! Login: [`Totp::verify`] with the stored last-used step. It accepts only the steps
//! now-1 ..= now+1 (30 s of clock drift either way) and refuses any step at or before the last
//! one used, so a code works once ([`TotpError::Replayed`]). The caller stores the returned
//! step with a compare-and-set on the previous value, so two concurrent logins cannot both
//! spend the same code. [`TotpError::Wrong`] and [`TotpError::Replayed`] are told apart for
//! tests and the audit trail only: the client gets the same 401 for both.
//!
//! The HOTP computation is totp-rs's; this module only chooses the window and keeps the
//! replay rule.

use std::fmt;

use secrecy::{ExposeSecret, SecretBox};
use zeroize::Zeroizing;

use crate::AuthError;

/// The issuer shown in authenticator apps.
pub const ISSUER: &str = "phivault";
/// Digits per code.
pub const DIGITS: u8 = 6;
/// Seconds per step.
pub const STEP_SECS: u64 = 30;
/// Steps accepted on either side of the current one.
pub const SKEW_STEPS: u64 = 1;
/// Bytes of a TOTP secret (160 bits, the RFC 4226 recommendation).
pub const SECRET_LEN: usize = 20;

/// Why a TOTP code was refused. Both map to the same 401 at the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TotpError {
    /// Not a code of the accepted window (wrong, malformed, or too old / too far ahead).
    #[error("the one-time code is wrong or expired")]
    Wrong,
    /// A valid code for a step already used: a replay.
    #[error("the one-time code was already used")]
    Replayed,
}

/// A TOTP shared secret, 20 random bytes, zeroized on drop, never printed.
///
/// At rest it is sealed by the store (phivault-crypto) from [`TotpSecret::expose_bytes`]; the
/// base32 form exists only at enrolment, through [`TotpSecret::to_base32`].
pub struct TotpSecret(SecretBox<[u8; SECRET_LEN]>);

impl TotpSecret {
    /// A fresh secret from the system's secure random generator.
    pub fn generate() -> Result<Self, AuthError> {
        let mut bytes = Box::new([0u8; SECRET_LEN]);
        phivault_crypto::random_bytes(bytes.as_mut())?;
        Ok(Self(SecretBox::new(bytes)))
    }

    /// A secret from exactly [`SECRET_LEN`] bytes (as unsealed from the store).
    pub fn from_bytes(raw: &[u8]) -> Result<Self, AuthError> {
        let arr: [u8; SECRET_LEN] = raw
            .try_into()
            .map_err(|_| AuthError::Invalid("TOTP secret length (20 bytes)"))?;
        Ok(Self(SecretBox::new(Box::new(arr))))
    }

    /// The raw secret: only to seal it for storage.
    pub fn expose_bytes(&self) -> &[u8] {
        self.0.expose_secret()
    }

    /// The RFC 4648 base32 form (no padding) that a user types into an authenticator app.
    /// Enrolment only; the result is zeroized on drop.
    pub fn to_base32(&self) -> Zeroizing<String> {
        Zeroizing::new(totp_rs::Secret::from(self.0.expose_secret().as_slice()).to_base32())
    }
}

impl fmt::Debug for TotpSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TotpSecret(<redacted>)")
    }
}

/// A TOTP generator and verifier for one account.
///
/// It holds a copy of the secret (inside totp-rs, zeroized on drop); its `Debug` shows only
/// the issuer and the account label.
pub struct Totp {
    inner: totp_rs::Totp,
}

impl Totp {
    /// The phivault TOTP (SHA-1, 6 digits, 30 s, issuer `phivault`) for `account_label` (the
    /// username shown in the authenticator app; it must be non-empty and contain no `:`).
    pub fn new(secret: &TotpSecret, account_label: &str) -> Result<Self, AuthError> {
        Self::build(secret, DIGITS, account_label)
    }

    fn build(secret: &TotpSecret, digits: u8, account_label: &str) -> Result<Self, AuthError> {
        if account_label.is_empty() {
            return Err(AuthError::Invalid("TOTP account label (empty)"));
        }
        let inner = totp_rs::Builder::new()
            .with_algorithm(totp_rs::Algorithm::SHA1)
            .with_digits(digits)
            .with_skew(0)
            .with_step_duration(STEP_SECS)
            .with_secret(secret.expose_bytes())
            .with_issuer(Some(ISSUER))
            .with_account_name(account_label)
            .build()
            .map_err(|e| match e {
                totp_rs::TotpError::InvalidAccountName { .. } => {
                    AuthError::Invalid("TOTP account label (contains ':')")
                }
                _ => AuthError::Invalid("TOTP parameters"),
            })?;
        Ok(Self { inner })
    }

    /// The `otpauth://totp/phivault:<label>?secret=...&issuer=phivault` URL for a QR code at
    /// enrolment. It contains the secret: show it once, never log it; zeroized on drop.
    pub fn otpauth_url(&self) -> Result<Zeroizing<String>, AuthError> {
        self.inner
            .to_url()
            .map(Zeroizing::new)
            .map_err(|_| AuthError::Invalid("TOTP account label"))
    }

    /// The step (30-second window number) that `now_unix` falls in.
    pub fn step_at(now_unix: i64) -> Option<u64> {
        u64::try_from(now_unix).ok().map(|t| t / STEP_SECS)
    }

    /// Checks `code` at time `now_unix` against the steps now-1 ..= now+1, refusing any step
    /// at or before `last_used_step`. Returns the step the code belongs to, which the caller
    /// stores as the new last-used step. ASCII spaces in the code are ignored ("123 456").
    pub fn verify(
        &self,
        code: &str,
        now_unix: i64,
        last_used_step: Option<u64>,
    ) -> Result<u64, TotpError> {
        let code: Zeroizing<String> = Zeroizing::new(code.chars().filter(|c| *c != ' ').collect());
        let digits = usize::from(self.inner.digits());
        if code.len() != digits || !code.bytes().all(|b| b.is_ascii_digit()) {
            return Err(TotpError::Wrong);
        }
        let current = Self::step_at(now_unix).ok_or(TotpError::Wrong)?;
        let mut accepted = None;
        let mut replayed = false;
        // Every candidate is computed and compared, whatever matched before.
        for step in current.saturating_sub(SKEW_STEPS)..=current.saturating_add(SKEW_STEPS) {
            let Some(time) = step.checked_mul(STEP_SECS) else {
                continue;
            };
            let expected = Zeroizing::new(self.inner.generate(time).to_string());
            if phivault_crypto::ct_eq(expected.as_bytes(), code.as_bytes()) {
                if last_used_step.is_some_and(|last| step <= last) {
                    replayed = true;
                } else {
                    accepted = Some(step);
                }
            }
        }
        match (accepted, replayed) {
            (Some(step), _) => Ok(step),
            (None, true) => Err(TotpError::Replayed),
            (None, false) => Err(TotpError::Wrong),
        }
    }
}

impl fmt::Debug for Totp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Totp")
            .field("issuer", &self.inner.issuer())
            .field("account_label", &self.inner.account_name())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// The RFC 6238 appendix B / RFC 4226 appendix D SHA-1 seed.
    const RFC_SEED: &[u8; 20] = b"12345678901234567890";

    fn rfc_secret() -> TotpSecret {
        TotpSecret::from_bytes(RFC_SEED).unwrap()
    }

    fn code_at(totp: &Totp, time: u64) -> String {
        totp.inner.generate(time).to_string()
    }

    #[test]
    fn rfc6238_appendix_b_sha1_vectors() {
        // (time, 8-digit code) from RFC 6238 appendix B, mode SHA1.
        let vectors: &[(u64, &str)] = &[
            (59, "94287082"),
            (1_111_111_109, "07081804"),
            (1_111_111_111, "14050471"),
            (1_234_567_890, "89005924"),
            (2_000_000_000, "69279037"),
            (20_000_000_000, "65353130"),
        ];
        let totp = Totp::build(&rfc_secret(), 8, "rfc").unwrap();
        for (time, code) in vectors {
            assert_eq!(code_at(&totp, *time), *code, "T = {time}");
            let now = i64::try_from(*time).unwrap();
            assert_eq!(totp.verify(code, now, None), Ok(time / 30), "T = {time}");
        }
    }

    #[test]
    fn rfc4226_appendix_d_six_digit_vectors() {
        // HOTP(counter) for counters 0..=9; TOTP at time 30 * counter is HOTP(counter).
        let codes = [
            "755224", "287082", "359152", "969429", "338314", "254676", "287922", "162583",
            "399871", "520489",
        ];
        let totp = Totp::new(&rfc_secret(), "rfc").unwrap();
        for (counter, code) in codes.iter().enumerate() {
            let counter = u64::try_from(counter).unwrap();
            assert_eq!(code_at(&totp, counter * 30), *code, "counter {counter}");
            let now = i64::try_from(counter * 30 + 7).unwrap();
            assert_eq!(totp.verify(code, now, None), Ok(counter));
        }
    }

    #[test]
    fn verify_table() {
        let totp = Totp::new(&rfc_secret(), "alice").unwrap();
        let now: i64 = 1_700_000_015; // step 56_666_667
        let step = 56_666_667u64;
        let at = |s: u64| code_at(&totp, s * 30);
        let spaced = {
            let c = at(step);
            format!("{} {}", &c[..3], &c[3..])
        };
        let wrong = {
            let c = at(step);
            let last = (c.as_bytes()[5] - b'0' + 1) % 10;
            format!("{}{}", &c[..5], last)
        };
        let cases: Vec<(String, Option<u64>, Result<u64, TotpError>)> = vec![
            (at(step), None, Ok(step)),
            (spaced, None, Ok(step)),
            (at(step - 1), None, Ok(step - 1)),
            (at(step + 1), None, Ok(step + 1)),
            (at(step), Some(step - 1), Ok(step)),
            // Outside the window: two steps old, two ahead, a day old.
            (at(step - 2), None, Err(TotpError::Wrong)),
            (at(step + 2), None, Err(TotpError::Wrong)),
            (at(step - 2880), None, Err(TotpError::Wrong)),
            (wrong, None, Err(TotpError::Wrong)),
            // Malformed.
            (String::new(), None, Err(TotpError::Wrong)),
            ("12345".into(), None, Err(TotpError::Wrong)),
            ("1234567".into(), None, Err(TotpError::Wrong)),
            ("12345a".into(), None, Err(TotpError::Wrong)),
            ("+12345".into(), None, Err(TotpError::Wrong)),
            ("١٢٣٤٥٦".into(), None, Err(TotpError::Wrong)),
            // Replays: the same step again, or an earlier step after a later one was used.
            (at(step), Some(step), Err(TotpError::Replayed)),
            (at(step - 1), Some(step), Err(TotpError::Replayed)),
            (at(step), Some(step + 1), Err(TotpError::Replayed)),
        ];
        for (code, last, expected) in cases {
            assert_eq!(
                totp.verify(&code, now, last),
                expected,
                "code {code:?} last {last:?}"
            );
        }
    }

    #[test]
    fn a_code_works_once() {
        let totp = Totp::new(&TotpSecret::generate().unwrap(), "bob").unwrap();
        let now = 1_800_000_000i64;
        let code = code_at(&totp, u64::try_from(now).unwrap());
        let used = totp.verify(&code, now, None).unwrap();
        assert_eq!(
            totp.verify(&code, now, Some(used)),
            Err(TotpError::Replayed)
        );
        assert_eq!(
            totp.verify(&code, now + 20, Some(used)),
            Err(TotpError::Replayed)
        );
        // The next step's code is fresh.
        let next = code_at(&totp, u64::try_from(now + 30).unwrap());
        assert_eq!(totp.verify(&next, now + 30, Some(used)), Ok(used + 1));
    }

    #[test]
    fn before_the_epoch_is_refused() {
        let totp = Totp::new(&rfc_secret(), "alice").unwrap();
        assert_eq!(totp.verify("755224", -1, None), Err(TotpError::Wrong));
        // At time 0 the window is steps 0 ..= 1.
        assert_eq!(totp.verify("755224", 0, None), Ok(0));
    }

    #[test]
    fn labels_are_checked() {
        let secret = rfc_secret();
        assert!(matches!(Totp::new(&secret, ""), Err(AuthError::Invalid(_))));
        assert!(matches!(
            Totp::new(&secret, "a:b"),
            Err(AuthError::Invalid(_))
        ));
        assert!(TotpSecret::from_bytes(&[0u8; 19]).is_err());
        assert!(TotpSecret::from_bytes(&[0u8; 21]).is_err());
    }

    #[test]
    fn otpauth_url_and_base32() {
        let secret = rfc_secret();
        assert_eq!(
            secret.to_base32().as_str(),
            "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"
        );
        let url = Totp::new(&secret, "alice@example.org")
            .unwrap()
            .otpauth_url()
            .unwrap();
        assert!(
            url.starts_with("otpauth://totp/phivault:alice%40example.org?"),
            "{}",
            *url
        );
        assert!(url.contains("secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"));
        assert!(url.contains("issuer=phivault"));
    }

    #[test]
    fn generated_secrets_differ() {
        let a = TotpSecret::generate().unwrap();
        let b = TotpSecret::generate().unwrap();
        assert_eq!(a.expose_bytes().len(), 20);
        assert_ne!(a.expose_bytes(), b.expose_bytes());
    }

    #[test]
    fn debug_prints_no_secret() {
        let secret = rfc_secret();
        let b32 = secret.to_base32();
        let hex = hex::encode(RFC_SEED);
        let totp = Totp::new(&secret, "alice").unwrap();
        for shown in [
            format!("{secret:?}"),
            format!("{totp:?}"),
            format!("{totp:#?}"),
        ] {
            assert!(!shown.contains(b32.as_str()), "{shown}");
            assert!(!shown.contains(&hex), "{shown}");
            assert!(!shown.contains("12345678901234567890"), "{shown}");
        }
        assert_eq!(format!("{secret:?}"), "TotpSecret(<redacted>)");
        assert!(format!("{totp:?}").contains("alice"));
    }
}
