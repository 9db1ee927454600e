//! Authentication of backup archives to the installation that wrote them.
//!
//! age encrypts an archive to public recipients, so anyone can write a file that decrypts
//! under the operator's identity; the rows inside are as stored, so anyone who could read the
//! database could fill such a file with keys that open under the master key. An
//! [`ArchiveMacKey`] is derived from the master key alone (HKDF-SHA256 with its own label,
//! never used for anything else), so an archive whose MAC verifies was written by someone
//! holding the master key: neither the database nor the backup identity is enough.

use std::fmt;

use aws_lc_rs::{hkdf, hmac};

use crate::{CryptoError, MasterKey, ct_eq};

/// The HKDF info of the archive MAC key: distinct from every other key derived from the
/// master key, and versioned with the archive format that uses it.
const LABEL: &[u8] = b"phivault backup archive authentication v2";

/// Length of an archive MAC (HMAC-SHA256).
pub const ARCHIVE_MAC_LEN: usize = 32;

/// The key that authenticates backup archives, derived from the master key.
pub struct ArchiveMacKey(hmac::Key);

impl fmt::Debug for ArchiveMacKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArchiveMacKey").finish_non_exhaustive()
    }
}

impl ArchiveMacKey {
    /// The archive key of `master`.
    pub fn derive(master: &MasterKey) -> Result<Self, CryptoError> {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &[]).extract(master.key().bytes.as_ref());
        let info = [LABEL];
        let okm = prk
            .expand(&info, hmac::HMAC_SHA256)
            .map_err(|_| CryptoError::Malformed("archive key derivation"))?;
        Ok(ArchiveMacKey(hmac::Key::from(okm)))
    }

    /// A MAC computation over data given in pieces.
    pub fn start(&self) -> ArchiveMac {
        ArchiveMac(hmac::Context::with_key(&self.0))
    }
}

/// An archive MAC being computed ([`ArchiveMacKey::start`]).
pub struct ArchiveMac(hmac::Context);

impl fmt::Debug for ArchiveMac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArchiveMac").finish_non_exhaustive()
    }
}

impl ArchiveMac {
    /// Adds `data`.
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    /// The MAC of everything added.
    pub fn finish(self) -> [u8; ARCHIVE_MAC_LEN] {
        let tag = self.0.sign();
        let mut out = [0u8; ARCHIVE_MAC_LEN];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Whether `mac` is the MAC of everything added (in constant time).
    pub fn verify(self, mac: &[u8]) -> bool {
        ct_eq(&self.finish(), mac)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_mac_depends_on_the_master_key_and_the_data() {
        let a = MasterKey::generate().unwrap();
        let b = MasterKey::generate().unwrap();
        let mac = |k: &MasterKey, data: &[u8]| {
            let mut m = ArchiveMacKey::derive(k).unwrap().start();
            m.update(data);
            m.finish()
        };
        assert_eq!(mac(&a, b"rows"), mac(&a.duplicate(), b"rows"));
        assert_ne!(mac(&a, b"rows"), mac(&b, b"rows"));
        assert_ne!(mac(&a, b"rows"), mac(&a, b"rowz"));
        let mut m = ArchiveMacKey::derive(&a).unwrap().start();
        m.update(b"ro");
        m.update(b"ws");
        assert!(m.verify(&mac(&a, b"rows")));
        // The derived key is not the master key used as an HMAC key directly.
        let direct = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, a.key().bytes.as_ref()),
            b"rows",
        );
        assert_ne!(direct.as_ref(), mac(&a, b"rows").as_slice());
    }
}
