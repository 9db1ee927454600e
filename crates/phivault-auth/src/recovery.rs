//! Recovery codes: one-time codes that stand in for the TOTP second factor when the
//! authenticator is lost.
//!
//! [`RecoveryCodes::generate`] makes [`RECOVERY_CODE_COUNT`] codes of the form
//! `xxxx-xxxx-xxxx` over Crockford's base32 alphabet (digits and lowercase letters without
//! `i l o u`), 60 random bits each. The plaintext is shown to the user once; the store keeps only
//! their SHA-256 hashes ([`RecoveryCodeHash`]). [`RecoveryCodes::verify`] ignores dashes,
//! spaces and case (and reads `o` as `0`, `i`/`l` as `1`), compares against every stored hash in
//! constant time, and returns the index of the match, which the caller deletes so each code works
//! once.

use std::fmt;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};
use zeroize::Zeroizing;

use crate::AuthError;

/// How many codes a user gets.
pub const RECOVERY_CODE_COUNT: usize = 10;
/// Characters per code, without dashes.
pub const CODE_CHARS: usize = 12;
/// Crockford's base32 alphabet, lowercase.
const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

/// One recovery code in the clear, zeroized on drop; shown once at generation, never printed.
pub struct RecoveryCode(SecretString);

impl RecoveryCode {
    /// The code, `xxxx-xxxx-xxxx`: only to show it to its owner once.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for RecoveryCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RecoveryCode(<redacted>)")
    }
}

/// SHA-256 of a normalized recovery code: what the store keeps. Serialized as hex.
#[derive(Clone, Copy, Serialize, Deserialize)]
pub struct RecoveryCodeHash(#[serde(with = "crate::hex32")] [u8; 32]);

impl RecoveryCodeHash {
    /// The hash of `code` after normalization, or `None` when it cannot be a recovery code.
    pub fn of(code: &str) -> Option<Self> {
        let normalized = normalize(code)?;
        Some(Self(phivault_crypto::sha256(normalized.as_bytes())))
    }

    /// The raw hash bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// A hash from its raw bytes (as read from the store).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex digits.
    pub fn from_hex(text: &str) -> Option<Self> {
        crate::hex32::parse(text).map(Self)
    }
}

impl ConstantTimeEq for RecoveryCodeHash {
    fn ct_eq(&self, other: &Self) -> Choice {
        self.0.ct_eq(&other.0)
    }
}

impl PartialEq for RecoveryCodeHash {
    fn eq(&self, other: &Self) -> bool {
        self.ct_eq(other).into()
    }
}

impl Eq for RecoveryCodeHash {}

impl fmt::Debug for RecoveryCodeHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RecoveryCodeHash({})", self.to_hex())
    }
}

/// A fresh set of recovery codes: the plaintexts to show once, and the hashes to store.
pub struct RecoveryCodes {
    codes: Vec<RecoveryCode>,
    hashes: Vec<RecoveryCodeHash>,
}

impl RecoveryCodes {
    /// `n` fresh random codes (use [`RECOVERY_CODE_COUNT`]).
    pub fn generate(n: usize) -> Result<Self, AuthError> {
        let mut codes = Vec::with_capacity(n);
        let mut hashes = Vec::with_capacity(n);
        for _ in 0..n {
            let normalized = random_code()?;
            hashes.push(RecoveryCodeHash(phivault_crypto::sha256(
                normalized.as_bytes(),
            )));
            codes.push(RecoveryCode(SecretString::from(format!(
                "{}-{}-{}",
                &normalized[0..4],
                &normalized[4..8],
                &normalized[8..12]
            ))));
        }
        Ok(Self { codes, hashes })
    }

    /// The codes in the clear, in the same order as [`RecoveryCodes::hashes`].
    pub fn codes(&self) -> &[RecoveryCode] {
        &self.codes
    }

    /// The hashes to store.
    pub fn hashes(&self) -> &[RecoveryCodeHash] {
        &self.hashes
    }

    /// Drops the plaintexts (zeroizing them) and keeps the hashes.
    pub fn into_hashes(self) -> Vec<RecoveryCodeHash> {
        self.hashes
    }

    /// The index in `hashes` of the hash matching `code`, if any. Every hash is compared, in
    /// constant time, whichever matches.
    pub fn verify(code: &str, hashes: &[RecoveryCodeHash]) -> Option<usize> {
        let candidate = RecoveryCodeHash::of(code)?;
        let mut found = Choice::from(0);
        let mut index = 0u64;
        for (i, stored) in hashes.iter().enumerate() {
            let hit = stored.ct_eq(&candidate);
            // `i` fits in u64 on every platform Rust supports.
            let i = u64::try_from(i).unwrap_or(u64::MAX);
            index.conditional_assign(&i, hit & !found);
            found |= hit;
        }
        if bool::from(found) {
            usize::try_from(index).ok()
        } else {
            None
        }
    }
}

impl fmt::Debug for RecoveryCodes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecoveryCodes")
            .field("count", &self.codes.len())
            .finish_non_exhaustive()
    }
}

/// 12 characters of the alphabet from 60 random bits.
fn random_code() -> Result<Zeroizing<String>, AuthError> {
    let mut raw = Zeroizing::new([0u8; 8]);
    phivault_crypto::random_bytes(raw.as_mut())?;
    let mut bits = Zeroizing::new(u64::from_le_bytes(*raw));
    let mut out = Zeroizing::new(String::with_capacity(CODE_CHARS));
    for _ in 0..CODE_CHARS {
        let idx = usize::try_from(*bits & 0x1f).unwrap_or(0);
        out.push(char::from(ALPHABET[idx]));
        *bits >>= 5;
    }
    Ok(out)
}

/// Lowercase, without dashes or whitespace, with `o` read as `0` and `i`/`l` as `1`; `None`
/// unless exactly [`CODE_CHARS`] characters of the alphabet remain.
fn normalize(code: &str) -> Option<Zeroizing<String>> {
    let mut out = Zeroizing::new(String::with_capacity(CODE_CHARS));
    for c in code.chars() {
        let c = match c.to_ascii_lowercase() {
            '-' | ' ' | '\t' => continue,
            'o' => '0',
            'i' | 'l' => '1',
            c => c,
        };
        if !c.is_ascii() || !ALPHABET.contains(&(c as u8)) || out.len() == CODE_CHARS {
            return None;
        }
        out.push(c);
    }
    (out.len() == CODE_CHARS).then_some(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn generated_codes_have_the_format_and_verify() {
        let set = RecoveryCodes::generate(RECOVERY_CODE_COUNT).unwrap();
        assert_eq!(set.codes().len(), 10);
        assert_eq!(set.hashes().len(), 10);
        for (i, code) in set.codes().iter().enumerate() {
            let text = code.expose();
            assert_eq!(text.len(), 14, "{text}");
            let groups: Vec<&str> = text.split('-').collect();
            assert_eq!(groups.len(), 3);
            assert!(groups.iter().all(|g| g.len() == 4));
            assert!(
                text.bytes().all(|b| b == b'-' || ALPHABET.contains(&b)),
                "{text}"
            );
            assert_eq!(RecoveryCodes::verify(text, set.hashes()), Some(i));
        }
        let distinct: std::collections::HashSet<&str> =
            set.codes().iter().map(RecoveryCode::expose).collect();
        assert_eq!(distinct.len(), 10);
    }

    #[test]
    fn verify_normalizes_and_refuses() {
        let known = "0123-4567-89ab";
        let hashes = vec![
            RecoveryCodeHash::of("zzzz-zzzz-zzzz").unwrap(),
            RecoveryCodeHash::of(known).unwrap(),
        ];
        let cases: &[(&str, Option<usize>)] = &[
            ("0123-4567-89ab", Some(1)),
            ("012345 6789AB", Some(1)),
            ("O123-4567-89AB", Some(1)),
            (" 0123-4567-89ab ", Some(1)),
            ("zzzzzzzzzzzz", Some(0)),
            ("0123-4567-89ac", None),
            ("0123-4567-89a", None),
            ("0123-4567-89abc", None),
            ("0123-4567-89a!", None),
            ("0123-4567-89aé", None),
            ("", None),
            ("----", None),
        ];
        for (code, expected) in cases {
            assert_eq!(RecoveryCodes::verify(code, &hashes), *expected, "{code:?}");
        }
        assert_eq!(RecoveryCodes::verify(known, &[]), None);
    }

    #[test]
    fn a_used_code_is_gone_once_its_hash_is_removed() {
        let set = RecoveryCodes::generate(3).unwrap();
        let code = set.codes()[1].expose().to_owned();
        let mut stored = set.into_hashes();
        let i = RecoveryCodes::verify(&code, &stored).unwrap();
        stored.remove(i);
        assert_eq!(RecoveryCodes::verify(&code, &stored), None);
    }

    #[test]
    fn hashes_round_trip_as_hex() {
        let h = RecoveryCodeHash::of("0123-4567-89ab").unwrap();
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(json, format!("\"{}\"", h.to_hex()));
        let back: RecoveryCodeHash = serde_json::from_str(&json).unwrap();
        assert_eq!(back, h);
        assert_eq!(RecoveryCodeHash::from_hex(&h.to_hex()), Some(h));
        assert_eq!(RecoveryCodeHash::from_bytes(*h.as_bytes()), h);
        assert!(serde_json::from_str::<RecoveryCodeHash>("\"00\"").is_err());
    }

    #[test]
    fn debug_prints_no_secret() {
        let set = RecoveryCodes::generate(2).unwrap();
        let shown = format!("{set:?} {:?} {:#?}", set.codes()[0], set.codes());
        for code in set.codes() {
            assert!(!shown.contains(code.expose()), "{shown}");
            let bare: String = code.expose().chars().filter(|c| *c != '-').collect();
            assert!(!shown.contains(&bare), "{shown}");
        }
        assert!(shown.contains("RecoveryCode(<redacted>)"));
    }
}
