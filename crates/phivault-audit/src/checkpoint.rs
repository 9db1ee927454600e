//! Signed checkpoints.

use aws_lc_rs::signature::{ED25519, Ed25519KeyPair, UnparsedPublicKey};
use phivault_store::audit::CheckpointRow;
use serde::{Deserialize, Serialize};

use crate::AuditError;
use crate::merkle::Frontier;

/// Domain separation of the signed checkpoint message.
const CHECKPOINT_DOMAIN: &[u8] = b"phivault-audit/checkpoint/v1\n";

/// A signed statement that the trail's first `size` entries have Merkle root `root` and that
/// entry `size` has hash `last_entry_hash`. JSON form: hashes and signature in lower-case hex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Entries covered (seq 1..=size).
    pub size: u64,
    /// Merkle root of their entry hashes.
    #[serde(with = "crate::hexser::h32")]
    pub root: [u8; 32],
    /// Hash of entry `size` ([`crate::GENESIS_HASH`] when `size` is 0).
    #[serde(with = "crate::hexser::h32")]
    pub last_entry_hash: [u8; 32],
    /// Unix milliseconds.
    pub time: i64,
    /// Ed25519 signature of [`Checkpoint::signed_message`].
    #[serde(with = "crate::hexser::bytes")]
    pub signature: Vec<u8>,
}

impl Checkpoint {
    /// The message signed: `"phivault-audit/checkpoint/v1\n" || size (u64 big-endian) || root
    /// (32 bytes) || last_entry_hash (32 bytes) || time (i64 big-endian)`.
    pub fn signed_message(
        size: u64,
        root: &[u8; 32],
        last_entry_hash: &[u8; 32],
        time: i64,
    ) -> Vec<u8> {
        let mut m = Vec::with_capacity(CHECKPOINT_DOMAIN.len() + 80);
        m.extend_from_slice(CHECKPOINT_DOMAIN);
        m.extend_from_slice(&size.to_be_bytes());
        m.extend_from_slice(root);
        m.extend_from_slice(last_entry_hash);
        m.extend_from_slice(&time.to_be_bytes());
        m
    }

    /// Signs a checkpoint.
    pub fn sign(
        key: &Ed25519KeyPair,
        size: u64,
        root: [u8; 32],
        last_entry_hash: [u8; 32],
        time: i64,
    ) -> Checkpoint {
        let signature = key
            .sign(&Self::signed_message(size, &root, &last_entry_hash, time))
            .as_ref()
            .to_vec();
        Checkpoint {
            size,
            root,
            last_entry_hash,
            time,
            signature,
        }
    }

    /// Whether the signature verifies under the raw Ed25519 `public_key`.
    pub fn verify_signature(&self, public_key: &[u8]) -> bool {
        let message = Self::signed_message(self.size, &self.root, &self.last_entry_hash, self.time);
        UnparsedPublicKey::new(&ED25519, public_key)
            .verify(&message, &self.signature)
            .is_ok()
    }

    /// The row stored, with the Merkle frontier at `size` (not signed; see
    /// [`crate::merkle::Frontier`]).
    pub(crate) fn to_row(&self, frontier: Option<&Frontier>) -> CheckpointRow {
        CheckpointRow {
            size: self.size,
            root: self.root.to_vec(),
            last_entry_hash: self.last_entry_hash.to_vec(),
            time: self.time,
            signature: self.signature.clone(),
            frontier: frontier.map(Frontier::to_bytes),
        }
    }
}

impl TryFrom<&CheckpointRow> for Checkpoint {
    type Error = AuditError;

    fn try_from(row: &CheckpointRow) -> Result<Self, AuditError> {
        let bad = || AuditError::CheckpointMalformed { size: row.size };
        Ok(Checkpoint {
            size: row.size,
            root: row.root.as_slice().try_into().map_err(|_| bad())?,
            last_entry_hash: row
                .last_entry_hash
                .as_slice()
                .try_into()
                .map_err(|_| bad())?,
            time: row.time,
            signature: row.signature.clone(),
        })
    }
}
