//! The project key: the one secret of a de-identification project.
//!
//! Every keyed method derives its own key from it with HKDF-SHA256 (aws-lc-rs), so a value
//! hashed by `cryptoHash` says nothing about a date offset or a ciphertext:
//! - `cryptoHash`: HMAC-SHA256. The same value and project key give the same pseudonym in
//!   every export, so records still link; another project's key gives unrelated pseudonyms.
//! - `dateShift` and `perturb`: HMAC-SHA256 outputs read as uniform numbers, so one patient's
//!   offset is the same in every export (stable without storing it) and unpredictable without
//!   the key.
//! - `encrypt`: AES-256-GCM with a random nonce; only the key holder can reverse it.
//!
//! The key never appears in `Debug` output, and its bytes are zeroed when dropped.

use std::path::Path;

use aws_lc_rs::{aead, hkdf, hmac, rand};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use zeroize::Zeroizing;

use crate::DeidError;

/// Salt of the HKDF that derives each method's key.
const SALT: &[u8] = b"phivault/deid/v1";
/// Associated data of `encrypt` ciphertexts (binds them to this use of the key).
const AAD: &[u8] = b"phivault/deid/encrypt/v1";
/// The prefix of an `encrypt` output.
pub(crate) const ENCRYPTED_PREFIX: &str = "enc1.";

/// A de-identification project's secret (32 bytes), with the keys derived from it.
pub struct ProjectKey {
    hash: hmac::Key,
    shift: hmac::Key,
    noise: hmac::Key,
    seal: aead::LessSafeKey,
}

impl std::fmt::Debug for ProjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProjectKey").finish_non_exhaustive()
    }
}

/// HKDF output length for an HMAC-SHA256 key.
struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

impl ProjectKey {
    /// The key from its 32 secret bytes.
    pub fn from_bytes(secret: &[u8; 32]) -> Result<ProjectKey, DeidError> {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, SALT).extract(secret);
        let derive = |label: &'static [u8]| -> Result<Zeroizing<[u8; 32]>, DeidError> {
            let info = [label];
            let okm = prk
                .expand(&info, Len(32))
                .map_err(|_| DeidError::Key("key derivation failed".to_owned()))?;
            let mut out = Zeroizing::new([0u8; 32]);
            okm.fill(out.as_mut())
                .map_err(|_| DeidError::Key("key derivation failed".to_owned()))?;
            Ok(out)
        };
        let hmac_key = |label| -> Result<hmac::Key, DeidError> {
            Ok(hmac::Key::new(hmac::HMAC_SHA256, derive(label)?.as_ref()))
        };
        let seal = aead::UnboundKey::new(&aead::AES_256_GCM, derive(b"encrypt")?.as_ref())
            .map_err(|_| DeidError::Key("key derivation failed".to_owned()))?;
        Ok(ProjectKey {
            hash: hmac_key(b"cryptoHash")?,
            shift: hmac_key(b"dateShift")?,
            noise: hmac_key(b"perturb")?,
            seal: aead::LessSafeKey::new(seal),
        })
    }

    /// A fresh random key, as the text a key file holds (64 hex digits and a newline).
    pub fn generate() -> Result<Zeroizing<String>, DeidError> {
        let mut secret = Zeroizing::new([0u8; 32]);
        rand::fill(secret.as_mut())
            .map_err(|_| DeidError::Key("the system random generator failed".to_owned()))?;
        Ok(Zeroizing::new(format!(
            "{}\n",
            hex::encode(secret.as_ref())
        )))
    }

    /// The key from the text of a key file: 64 hex digits (surrounding whitespace ignored).
    pub fn parse(text: &str) -> Result<ProjectKey, DeidError> {
        let mut secret = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(text.trim(), secret.as_mut()).map_err(|_| {
            DeidError::Key("a key file holds 64 hexadecimal digits (32 bytes)".to_owned())
        })?;
        ProjectKey::from_bytes(&secret)
    }

    /// The key from a key file (see [`ProjectKey::parse`]).
    pub fn load(path: &Path) -> Result<ProjectKey, DeidError> {
        let text =
            Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
                DeidError::Key(format!("reading {}: {}", path.display(), e.kind()))
            })?);
        ProjectKey::parse(&text)
    }

    /// The pseudonym of `value`: HMAC-SHA256, 64 hex digits (a valid FHIR id).
    pub fn pseudonym(&self, value: &str) -> String {
        hex::encode(hmac::sign(&self.hash, value.as_bytes()).as_ref())
    }

    /// A number in `0..=u64::MAX` that `value` always gives under this key (date offsets).
    pub(crate) fn shift_draw(&self, value: &str) -> u64 {
        draw(&self.shift, value)
    }

    /// As [`ProjectKey::shift_draw`], for numeric noise.
    pub(crate) fn noise_draw(&self, value: &str) -> u64 {
        draw(&self.noise, value)
    }

    /// `value` encrypted (AES-256-GCM, random nonce): `enc1.` and base64url of nonce and
    /// ciphertext.
    pub fn encrypt(&self, value: &str) -> Result<String, DeidError> {
        let mut nonce = [0u8; aead::NONCE_LEN];
        rand::fill(&mut nonce)
            .map_err(|_| DeidError::Key("the system random generator failed".to_owned()))?;
        let mut buffer = value.as_bytes().to_vec();
        self.seal
            .seal_in_place_append_tag(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(AAD),
                &mut buffer,
            )
            .map_err(|_| DeidError::Key("encryption failed".to_owned()))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buffer);
        Ok(format!("{ENCRYPTED_PREFIX}{}", URL_SAFE_NO_PAD.encode(out)))
    }

    /// The value [`ProjectKey::encrypt`] sealed, for the key holder.
    pub fn decrypt(&self, text: &str) -> Result<Zeroizing<String>, DeidError> {
        let raw = text
            .strip_prefix(ENCRYPTED_PREFIX)
            .and_then(|b| URL_SAFE_NO_PAD.decode(b).ok())
            .ok_or(DeidError::Decrypt)?;
        if raw.len() < aead::NONCE_LEN {
            return Err(DeidError::Decrypt);
        }
        let (nonce, sealed) = raw.split_at(aead::NONCE_LEN);
        let nonce =
            aead::Nonce::try_assume_unique_for_key(nonce).map_err(|_| DeidError::Decrypt)?;
        let mut buffer = Zeroizing::new(sealed.to_vec());
        let plain = self
            .seal
            .open_in_place(nonce, aead::Aad::from(AAD), buffer.as_mut())
            .map_err(|_| DeidError::Decrypt)?;
        let text = std::str::from_utf8(plain).map_err(|_| DeidError::Decrypt)?;
        Ok(Zeroizing::new(text.to_owned()))
    }
}

fn draw(key: &hmac::Key, value: &str) -> u64 {
    let tag = hmac::sign(key, value.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&tag.as_ref()[..8]);
    u64::from_be_bytes(first)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn key(byte: u8) -> ProjectKey {
        ProjectKey::from_bytes(&[byte; 32]).unwrap()
    }

    #[test]
    fn pseudonyms_are_stable_per_key_and_differ_across_keys() {
        assert_eq!(key(1).pseudonym("Patient/a"), key(1).pseudonym("Patient/a"));
        assert_ne!(key(1).pseudonym("Patient/a"), key(2).pseudonym("Patient/a"));
        assert_ne!(key(1).pseudonym("Patient/a"), key(1).pseudonym("Patient/b"));
        assert_eq!(key(1).pseudonym("x").len(), 64);
    }

    #[test]
    fn encryption_round_trips_only_with_the_key_and_detects_changes() {
        let sealed = key(1).encrypt("MRN-123").unwrap();
        assert!(!sealed.contains("MRN"));
        assert_eq!(key(1).decrypt(&sealed).unwrap().as_str(), "MRN-123");
        assert!(
            key(2).decrypt(&sealed).is_err(),
            "another key does not open it"
        );
        let mut flipped = sealed.clone().into_bytes();
        let last = flipped.len() - 3;
        flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
        assert!(
            key(1)
                .decrypt(std::str::from_utf8(&flipped).unwrap())
                .is_err()
        );
        assert_ne!(sealed, key(1).encrypt("MRN-123").unwrap(), "random nonce");
    }

    #[test]
    fn key_files() {
        let text = ProjectKey::generate().unwrap();
        assert_eq!(text.trim().len(), 64);
        let a = ProjectKey::parse(&text).unwrap();
        let b = ProjectKey::parse(&format!("  {}  ", text.trim())).unwrap();
        assert_eq!(a.pseudonym("v"), b.pseudonym("v"));
        assert!(ProjectKey::parse("abc").is_err());
        assert!(!format!("{a:?}").contains(text.trim()));
    }
}
