//! The errors of the audit trail.

use phivault_store::StoreError;

/// The errors of the audit trail. Tamper findings name the first bad entry by seq (see
/// [`AuditError::first_bad_seq`]); messages name seqs and sizes, never entry content.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A group commit holding the entry failed (the store's failure, as text: it is shared by
    /// every entry of the group).
    #[error("the audit entry could not be written: {0}")]
    Append(String),
    /// An entry could not be serialized.
    #[error("cannot serialize an audit entry: {0}")]
    Serialize(#[source] serde_json::Error),
    /// The signing key is unusable.
    #[error("audit signing key: {0}")]
    Key(String),
    /// An entry is missing: the trail jumps over `seq`.
    #[error("audit entry {seq} is missing (next entry present: {next})")]
    Missing {
        /// The first missing seq.
        seq: u64,
        /// The seq found in its place.
        next: u64,
    },
    /// An entry's body is not the canonical form of an entry.
    #[error("audit entry {seq} is malformed (its body is not a canonical entry)")]
    Malformed {
        /// Seq of the row.
        seq: u64,
    },
    /// An entry's body carries another seq than its row (moved or swapped).
    #[error("audit entry {seq} holds the body of entry {claimed} (entries moved or swapped)")]
    Misplaced {
        /// Seq of the row.
        seq: u64,
        /// Seq inside the body.
        claimed: u64,
    },
    /// An entry's stored previous hash is not the hash of the entry before it.
    #[error("audit entry {seq} does not chain to the entry before it")]
    ChainBroken {
        /// Seq of the row.
        seq: u64,
    },
    /// An entry's content does not hash to its stored hash (changed).
    #[error("audit entry {seq} was altered (its hash does not match)")]
    HashMismatch {
        /// Seq of the row.
        seq: u64,
    },
    /// A checkpoint's signature does not verify.
    #[error("audit checkpoint of size {size} has an invalid signature")]
    CheckpointSignature {
        /// The checkpoint's size.
        size: u64,
    },
    /// The entries do not reproduce a checkpoint's root or last hash: some entry after the
    /// previous good checkpoint (`since`) and up to `size` was rewritten together with the
    /// hashes after it.
    #[error(
        "audit entries {first}..={size} do not match the checkpoint of size {size} (rewritten)",
        first = since + 1
    )]
    CheckpointMismatch {
        /// The checkpoint's size.
        size: u64,
        /// Size of the last checkpoint that matched (0 when none).
        since: u64,
    },
    /// A checkpoint covers more entries than are present: the tail was truncated.
    #[error(
        "audit trail truncated: checkpoint of size {size} but only {present} entries present \
         (entry {first} onwards removed)",
        first = present + 1
    )]
    Truncated {
        /// The checkpoint's size.
        size: u64,
        /// Entries present.
        present: u64,
    },
    /// A checkpoint's stored Merkle frontier does not reproduce its signed size and root
    /// (the frontier is not signed: it was altered or is corrupt).
    #[error("audit checkpoint of size {size} has a frontier that does not match its signed root")]
    FrontierMismatch {
        /// The checkpoint's size.
        size: u64,
    },
    /// A checkpoint row is malformed.
    #[error("audit checkpoint of size {size} is malformed")]
    CheckpointMalformed {
        /// The checkpoint's size.
        size: u64,
    },
    /// A keyed entry whose tag is not the one the audit chain key gives (forged or moved by
    /// someone without the master key), or an entry of the keyed part of the trail without a
    /// tag (rewritten as an unkeyed entry).
    #[error("audit entry {seq} is not authenticated by the audit chain key (forged or rewritten)")]
    Unauthenticated {
        /// The entry's seq.
        seq: u64,
    },
    /// The record of where the keyed chain starts is missing while keyed entries exist, or its
    /// tag does not verify: it was deleted or changed.
    #[error("the record of where the keyed audit chain starts {0}")]
    KeyedFrom(String),
    /// No checkpoint covers this entry yet.
    #[error("audit entry {seq} is not covered by a checkpoint yet")]
    NotCovered {
        /// The seq asked for.
        seq: u64,
    },
    /// No such entry.
    #[error("audit entry {seq} does not exist")]
    NoSuchEntry {
        /// The seq asked for.
        seq: u64,
    },
    /// A column copied out of an entry's body for queries (or the entry's patient rows)
    /// disagrees with the body: changed so that queries no longer find the entry as it is.
    #[error("audit entry {seq} was altered (its {column} column disagrees with its body)")]
    ColumnMismatch {
        /// Seq of the row.
        seq: u64,
        /// The column (`time`, `actor`, `patient`, `action`, `outcome` or `patients`).
        column: &'static str,
    },
    /// A verification was stopped before it finished (its runtime shut down).
    #[error("the audit verification was interrupted")]
    Interrupted,
}

impl AuditError {
    /// The seq of the first bad entry, for tamper findings that can name one.
    pub fn first_bad_seq(&self) -> Option<u64> {
        match self {
            AuditError::Missing { seq, .. }
            | AuditError::Malformed { seq }
            | AuditError::Misplaced { seq, .. }
            | AuditError::ChainBroken { seq }
            | AuditError::HashMismatch { seq }
            | AuditError::Unauthenticated { seq }
            | AuditError::ColumnMismatch { seq, .. } => Some(*seq),
            AuditError::CheckpointMismatch { since, .. } => Some(since + 1),
            AuditError::Truncated { present, .. } => Some(present + 1),
            _ => None,
        }
    }

    /// True for findings that mean the trail was tampered with (as opposed to I/O failures).
    pub fn is_tamper(&self) -> bool {
        matches!(
            self,
            AuditError::Missing { .. }
                | AuditError::Malformed { .. }
                | AuditError::Misplaced { .. }
                | AuditError::ChainBroken { .. }
                | AuditError::HashMismatch { .. }
                | AuditError::Unauthenticated { .. }
                | AuditError::KeyedFrom(_)
                | AuditError::ColumnMismatch { .. }
                | AuditError::CheckpointSignature { .. }
                | AuditError::CheckpointMismatch { .. }
                | AuditError::Truncated { .. }
                | AuditError::FrontierMismatch { .. }
                | AuditError::CheckpointMalformed { .. }
        )
    }
}
