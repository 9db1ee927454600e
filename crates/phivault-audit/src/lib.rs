//! The tamper-evident audit trail of phivault (DESIGN.md invariants 2 and 3).
//!
//! This crate owns the format and the proofs; the store keeps the bytes. It has no SQL: the
//! store hands it rows and takes the bytes and hashes it computes.
//!
//! - [`AuditEntry`]: who did what to which record, with what outcome. Ids only, never PHI
//!   values. Its canonical bytes ([`AuditEntry::canonical_bytes`]) are the compact
//!   `serde_json` serialization with the fields in their declared order and absent values as
//!   `null`; verification re-serializes each stored body and refuses one that differs.
//! - The hash chain, keyed: each entry carries a tag ([`chain_tag`]) = HMAC-SHA256 under the
//!   audit chain key (derived from the tenant's index secret, so only the holder of the master
//!   key can compute it) over `"phivault-audit/v2"`, `prev_hash` and the canonical bytes, and
//!   its hash ([`keyed_entry_hash`]) is `SHA-256("phivault-audit/v2" || prev_hash || tag ||
//!   canonical bytes)`, with `prev_hash` of the first entry ([`GENESIS_HASH`]) 32 zero bytes.
//!   Someone with the database but without the master key can recompute hashes, not tags: an
//!   edited entry fails verification even when every hash after it is recomputed. Entries
//!   written before the keyed chain (by an older version) keep their unkeyed hash
//!   ([`entry_hash`]: `SHA-256("phivault-audit/v1" || prev_hash || canonical bytes)`) and
//!   verify as such; the store records, tagged, the seq where the keyed chain starts, and no
//!   unkeyed entry is accepted after it or after any keyed entry ([`Keying`]).
//! - The Merkle tree ([`merkle`]) over entry hashes, as RFC 6962 / RFC 9162: leaf =
//!   `SHA-256(0x00 || entry_hash)`, node = `SHA-256(0x01 || left || right)`, with inclusion
//!   proofs and their standalone verification ([`verify_inclusion`]), and the tree's
//!   [`Frontier`] (the roots of its perfect subtrees, largest first), from which the root of
//!   every size follows and the tree grows on without its earlier leaves.
//! - Checkpoints ([`Checkpoint`]): tree size, root and last entry hash, signed with Ed25519
//!   over the message documented at [`Checkpoint::signed_message`]. Each is stored with its
//!   frontier, which the signature does not cover: a stored frontier is used only once it
//!   reproduces the signed root of a checkpoint whose signature verifies.
//! - Verification ([`verify_chain`], [`ChainVerifier`]) names the first bad entry by seq: a
//!   changed byte, a deleted entry, reordered entries, and a tail truncated after a
//!   checkpoint. [`AuditLog::verify`] (`phivault audit verify`) reads the whole trail and
//!   every checkpoint. [`AuditLog::verify_tail`] (run by `phivault serve` before listening)
//!   resumes from the last checkpoint (its signature, its frontier against its root, its
//!   last entry against the stored entry at its size) and reads only the entries after it;
//!   without a usable frontier it reads the whole trail and says why ([`TailStart`]).
//! - Erasure certificates ([`ErasureCertificate`]): a patient's erasure (id, time, destroyed
//!   key id, resources made unreadable) signed with the same Ed25519 key as checkpoints, over a
//!   message with its own domain ([`ErasureCertificate::signed_message`]), by
//!   [`AuditLog::certify_erasure`].
//! - [`AuditLog`]: the trail over a [`phivault_store::Store`]: append, checkpoint, verify,
//!   prove. It keeps in memory the state it has verified (entry count, last hash, frontier),
//!   so a checkpoint verifies only the entries added since, then signs and stores exactly
//!   those it verified.
//!
//! What the incremental checks do not see: an entry altered, removed or reordered in the
//! database *before* the point they resume from (the last checkpoint, or what this process
//! has already verified), and entries removed from the very end of the trail after the last
//! checkpoint (nothing signed covers them yet). A checkpoint never covers an entry it has not
//! verified, but only the full verification (`phivault audit verify`) re-reads everything:
//! run it periodically and on any suspicion.
//!
//! Crypto is aws-lc-rs (SHA-256, Ed25519); nothing is hand-rolled.

mod address;
mod breach;
mod checkpoint;
mod entry;
mod erasure;
mod error;
mod log;
pub mod merkle;
mod verify;
mod writer;

/// True only in a bench-only build (feature `bench-no-audit`): appends then write nothing
/// and answer seq 0, to measure what auditing costs. The `phivault` binary built so refuses
/// to serve or administer real data; no runtime setting can switch the audit off.
pub const BENCH_NO_AUDIT: bool = cfg!(feature = "bench-no-audit");

pub use address::{address_key, network_range};
pub use breach::{AccessKind, Affected, BreachReport, Selector, breach_report};
pub use checkpoint::Checkpoint;
pub use entry::{
    ALERT_ACTION, ALERT_DELIVERED_ACTION, ActorKind, AlertRecord, AuditEntry, CHAIN_DOMAIN,
    GENESIS_HASH, KEYED_CHAIN_DOMAIN, Outcome, REFUSALS_ACTION, RefusalSummary, SUMMARY_SAMPLE,
    action_code, chain_tag, entry_hash, keyed_entry_hash, keyed_from_tag,
};
pub use erasure::{ERASURE_DOMAIN, ERASURE_FORMAT, ErasureCertificate};
pub use error::AuditError;
pub use log::{AuditLog, InclusionBundle, TailReport, TailStart};
pub use merkle::{Frontier, MerkleTree, verify_inclusion};
pub use verify::{ChainVerifier, CopiedColumns, Keying, RecordedEntry, VerifyReport, verify_chain};

/// SHA-256 of the concatenation of `parts` (aws-lc-rs).
pub(crate) fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for p in parts {
        ctx.update(p);
    }
    let d = ctx.finish();
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Hex (de)serialization of hashes and signatures in JSON.
pub(crate) mod hexser {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) mod h32 {
        use super::*;
        pub(crate) fn serialize<S: Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
            s.serialize_str(&hex::encode(v))
        }
        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
            let text = String::deserialize(d)?;
            let raw = hex::decode(text).map_err(serde::de::Error::custom)?;
            <[u8; 32]>::try_from(raw.as_slice())
                .map_err(|_| serde::de::Error::custom("expected 32 bytes"))
        }
    }

    pub(crate) mod opt_h32 {
        use super::*;
        pub(crate) fn serialize<S: Serializer>(
            v: &Option<[u8; 32]>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match v {
                Some(v) => s.serialize_str(&hex::encode(v)),
                None => s.serialize_none(),
            }
        }
        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<[u8; 32]>, D::Error> {
            let Some(text) = Option::<String>::deserialize(d)? else {
                return Ok(None);
            };
            let raw = hex::decode(text).map_err(serde::de::Error::custom)?;
            <[u8; 32]>::try_from(raw.as_slice())
                .map(Some)
                .map_err(|_| serde::de::Error::custom("expected 32 bytes"))
        }
    }

    pub(crate) mod bytes {
        use super::*;
        pub(crate) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
            s.serialize_str(&hex::encode(v))
        }
        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
            let text = String::deserialize(d)?;
            hex::decode(text).map_err(serde::de::Error::custom)
        }
    }

    pub(crate) mod path {
        use super::*;
        pub(crate) fn serialize<S: Serializer>(v: &[[u8; 32]], s: S) -> Result<S::Ok, S::Error> {
            s.collect_seq(v.iter().map(hex::encode))
        }
        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Vec<[u8; 32]>, D::Error> {
            let texts = Vec::<String>::deserialize(d)?;
            texts
                .iter()
                .map(|t| {
                    let raw = hex::decode(t).map_err(serde::de::Error::custom)?;
                    <[u8; 32]>::try_from(raw.as_slice())
                        .map_err(|_| serde::de::Error::custom("expected 32 bytes"))
                })
                .collect()
        }
    }
}
