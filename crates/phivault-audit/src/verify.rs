//! Verification of the trail against its checkpoints.

use phivault_store::audit::AuditRow;

use crate::merkle::CompactRange;
use crate::{AuditEntry, AuditError, Checkpoint, GENESIS_HASH, entry_hash};

/// An entry as recorded: its row's seq, canonical bytes and stored hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedEntry {
    /// The row's seq.
    pub seq: u64,
    /// Canonical bytes.
    pub body: Vec<u8>,
    /// Stored hash of the entry.
    pub entry_hash: Vec<u8>,
    /// Stored hash of the previous entry.
    pub prev_hash: Vec<u8>,
}

impl From<AuditRow> for RecordedEntry {
    fn from(row: AuditRow) -> Self {
        RecordedEntry {
            seq: row.seq,
            body: row.body,
            entry_hash: row.entry_hash,
            prev_hash: row.prev_hash,
        }
    }
}

/// What a successful verification covered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Entries verified.
    pub entries: u64,
    /// Checkpoints verified.
    pub checkpoints: usize,
    /// Entries after the last checkpoint (covered by the chain only).
    pub unsealed: u64,
    /// Hash of the last entry ([`GENESIS_HASH`] when empty).
    pub last_entry_hash: [u8; 32],
    /// Merkle root of all entries.
    pub root: [u8; 32],
}

/// Verifies the trail entry by entry, in seq order, in `O(log n)` memory.
///
/// Each entry must have the next seq, a canonical body carrying that same seq, a stored
/// previous hash equal to the recomputed hash of the entry before it, and a stored hash equal
/// to its recomputed hash. When the count reaches a checkpoint's size, the recomputed Merkle
/// root and last hash must equal the checkpoint's. Every checkpoint's signature is checked
/// first, and [`ChainVerifier::finish`] refuses a checkpoint larger than the trail.
#[derive(Debug)]
pub struct ChainVerifier {
    checkpoints: Vec<Checkpoint>,
    next_checkpoint: usize,
    last_good_checkpoint: u64,
    count: u64,
    prev: [u8; 32],
    range: CompactRange,
}

impl ChainVerifier {
    /// Starts a verification; checks every checkpoint's signature under `public_key`.
    pub fn new(
        mut checkpoints: Vec<Checkpoint>,
        public_key: &[u8],
    ) -> Result<ChainVerifier, AuditError> {
        checkpoints.sort_by_key(|c| c.size);
        for cp in &checkpoints {
            if !cp.verify_signature(public_key) {
                return Err(AuditError::CheckpointSignature { size: cp.size });
            }
        }
        let mut v = ChainVerifier {
            checkpoints,
            next_checkpoint: 0,
            last_good_checkpoint: 0,
            count: 0,
            prev: GENESIS_HASH,
            range: CompactRange::default(),
        };
        v.check_checkpoints()?;
        Ok(v)
    }

    /// Entries verified so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Checks the next entry.
    pub fn push(&mut self, entry: &RecordedEntry) -> Result<(), AuditError> {
        let seq = self.count + 1;
        if entry.seq != seq {
            return Err(AuditError::Missing {
                seq,
                next: entry.seq,
            });
        }
        let parsed =
            AuditEntry::from_canonical(&entry.body).ok_or(AuditError::Malformed { seq })?;
        if parsed.seq != seq {
            return Err(AuditError::Misplaced {
                seq,
                claimed: parsed.seq,
            });
        }
        if entry.prev_hash.as_slice() != self.prev.as_slice() {
            return Err(AuditError::ChainBroken { seq });
        }
        let hash = entry_hash(&self.prev, &entry.body);
        if entry.entry_hash.as_slice() != hash.as_slice() {
            return Err(AuditError::HashMismatch { seq });
        }
        self.prev = hash;
        self.range.push(&hash);
        self.count = seq;
        self.check_checkpoints()
    }

    fn check_checkpoints(&mut self) -> Result<(), AuditError> {
        while let Some(cp) = self.checkpoints.get(self.next_checkpoint) {
            if cp.size != self.count {
                break;
            }
            if cp.root != self.range.root() || cp.last_entry_hash != self.prev {
                return Err(AuditError::CheckpointMismatch {
                    size: cp.size,
                    since: self.last_good_checkpoint,
                });
            }
            self.last_good_checkpoint = cp.size;
            self.next_checkpoint += 1;
        }
        Ok(())
    }

    /// Ends the verification: every checkpoint must have been reached.
    pub fn finish(self) -> Result<VerifyReport, AuditError> {
        if let Some(cp) = self.checkpoints.get(self.next_checkpoint) {
            return Err(AuditError::Truncated {
                size: cp.size,
                present: self.count,
            });
        }
        Ok(VerifyReport {
            entries: self.count,
            checkpoints: self.checkpoints.len(),
            unsealed: self.count - self.last_good_checkpoint,
            last_entry_hash: self.prev,
            root: self.range.root(),
        })
    }
}

/// Verifies `entries` (in seq order) against `checkpoints` signed by `public_key`, naming the
/// first bad entry on failure (see [`ChainVerifier`]).
pub fn verify_chain(
    entries: &[RecordedEntry],
    checkpoints: &[Checkpoint],
    public_key: &[u8],
) -> Result<VerifyReport, AuditError> {
    let mut v = ChainVerifier::new(checkpoints.to_vec(), public_key)?;
    for e in entries {
        v.push(e)?;
    }
    v.finish()
}
