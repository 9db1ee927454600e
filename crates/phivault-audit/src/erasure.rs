//! Signed erasure certificates (DESIGN.md invariant 6).

use aws_lc_rs::signature::{ED25519, Ed25519KeyPair, UnparsedPublicKey};
use phivault_store::ErasureRecord;
use serde::{Deserialize, Serialize};

/// Domain separation of the signed certificate message: distinct from the checkpoint's
/// (`"phivault-audit/checkpoint/v1\n"`), so a signature over one can never pass as the other.
pub const ERASURE_DOMAIN: &[u8] = b"phivault-audit/erasure-certificate/v1\n";

/// A statement, signed with the audit trail's Ed25519 key (the key that signs checkpoints),
/// that the data key of a patient was destroyed. Ids and counts only.
///
/// JSON form: the fields below; `public_key` and `signature` in lower-case hex. `public_key`
/// says which key signed, for convenience: a verifier checks the signature against the
/// server's audit public key it already trusts ([`ErasureCertificate::verify`]), never against
/// the one the certificate carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErasureCertificate {
    /// Certificate format (`phivault-erasure-certificate/v1`).
    pub format: String,
    /// Tenant.
    pub tenant: String,
    /// The erased patient's id.
    pub patient_id: String,
    /// When the key was destroyed (RFC 3339, UTC, milliseconds).
    pub erased_at: String,
    /// The destroyed data key's id.
    pub key_id: String,
    /// Resources made unreadable (whose current version was sealed under the key).
    pub resources: u64,
    /// The raw Ed25519 public key that signed (informational).
    #[serde(with = "crate::hexser::bytes")]
    pub public_key: Vec<u8>,
    /// Ed25519 signature of [`ErasureCertificate::signed_message`].
    #[serde(with = "crate::hexser::bytes")]
    pub signature: Vec<u8>,
}

/// The certificate format named in `format`.
pub const ERASURE_FORMAT: &str = "phivault-erasure-certificate/v1";

fn push_field(m: &mut Vec<u8>, field: &[u8]) {
    // Lengths fit: ids and instants are short; a longer field is cut at u32::MAX by no input.
    let len = u32::try_from(field.len()).unwrap_or(u32::MAX);
    m.extend_from_slice(&len.to_be_bytes());
    m.extend_from_slice(field);
}

impl ErasureCertificate {
    /// The message signed: `"phivault-audit/erasure-certificate/v1\n"` followed by `format`,
    /// `tenant`, `patient_id`, `erased_at` and `key_id`, each as its length (u32 big-endian)
    /// and its UTF-8 bytes, then `resources` (u64 big-endian).
    pub fn signed_message(&self) -> Vec<u8> {
        let mut m = Vec::with_capacity(ERASURE_DOMAIN.len() + 160);
        m.extend_from_slice(ERASURE_DOMAIN);
        for field in [
            &self.format,
            &self.tenant,
            &self.patient_id,
            &self.erased_at,
            &self.key_id,
        ] {
            push_field(&mut m, field.as_bytes());
        }
        m.extend_from_slice(&self.resources.to_be_bytes());
        m
    }

    /// Signs the certificate of `record` with `key`.
    pub(crate) fn sign(key: &Ed25519KeyPair, public_key: &[u8], record: &ErasureRecord) -> Self {
        let mut cert = ErasureCertificate {
            format: ERASURE_FORMAT.to_owned(),
            tenant: record.tenant.clone(),
            patient_id: record.patient.to_string(),
            erased_at: record.erased_at.clone(),
            key_id: record.key_id.clone(),
            resources: record.resources,
            public_key: public_key.to_vec(),
            signature: Vec::new(),
        };
        cert.signature = key.sign(&cert.signed_message()).as_ref().to_vec();
        cert
    }

    /// Whether the signature verifies under `trusted_public_key` (the raw Ed25519 key of the
    /// server's audit trail, e.g. from `phivault audit public-key`), and the format is known.
    pub fn verify(&self, trusted_public_key: &[u8]) -> bool {
        self.format == ERASURE_FORMAT
            && UnparsedPublicKey::new(&ED25519, trusted_public_key)
                .verify(&self.signed_message(), &self.signature)
                .is_ok()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::KeyPair;
    use phivault_fhir::Id;

    fn pair() -> Ed25519KeyPair {
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        Ed25519KeyPair::from_pkcs8(doc.as_ref()).unwrap()
    }

    fn record() -> ErasureRecord {
        ErasureRecord {
            tenant: "default".to_owned(),
            patient: Id::parse("p-1").unwrap(),
            key_id: "k-1".to_owned(),
            erased_at_ms: 1_700_000_000_000,
            erased_at: "2023-11-14T22:13:20.000Z".to_owned(),
            resources: 12,
        }
    }

    #[test]
    fn a_certificate_verifies_and_any_change_breaks_it() {
        let key = pair();
        let public = key.public_key().as_ref().to_vec();
        let cert = ErasureCertificate::sign(&key, &public, &record());
        assert!(cert.verify(&public));
        // JSON round trip.
        let json = serde_json::to_string(&cert).unwrap();
        let back: ErasureCertificate = serde_json::from_str(&json).unwrap();
        assert!(back.verify(&public));
        // Another key, or any changed field, fails.
        assert!(!cert.verify(pair().public_key().as_ref()));
        let mut c = cert.clone();
        c.resources = 11;
        assert!(!c.verify(&public));
        let mut c = cert.clone();
        c.patient_id = "p-2".to_owned();
        assert!(!c.verify(&public));
        let mut c = cert.clone();
        c.key_id = "k-2".to_owned();
        assert!(!c.verify(&public));
        let mut c = cert.clone();
        c.erased_at = "2023-11-14T22:13:21.000Z".to_owned();
        assert!(!c.verify(&public));
        // The embedded key is not trusted: a forger's own key and signature are refused.
        let forger = pair();
        let mut c = cert;
        c.resources = 0;
        c.public_key = forger.public_key().as_ref().to_vec();
        c.signature = forger.sign(&c.signed_message()).as_ref().to_vec();
        assert!(!c.verify(&public));
    }

    #[test]
    fn field_boundaries_are_unambiguous() {
        let key = pair();
        let public = key.public_key().as_ref().to_vec();
        let mut a = record();
        a.tenant = "ab".to_owned();
        a.patient = Id::parse("c").unwrap();
        let mut b = record();
        b.tenant = "a".to_owned();
        b.patient = Id::parse("bc").unwrap();
        let ca = ErasureCertificate::sign(&key, &public, &a);
        let cb = ErasureCertificate::sign(&key, &public, &b);
        assert_ne!(ca.signed_message(), cb.signed_message());
        // The message starts with its own domain, not the checkpoint's.
        assert!(ca.signed_message().starts_with(ERASURE_DOMAIN));
        assert!(
            !ca.signed_message()
                .starts_with(b"phivault-audit/checkpoint")
        );
    }
}
