//! The audit log over the store.

use std::fmt;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use phivault_store::AnyConnection;
use phivault_store::Store;
use phivault_store::audit::{AuditTail, NewAuditRow};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::merkle::MerkleTree;
use crate::{
    AuditEntry, AuditError, ChainVerifier, Checkpoint, GENESIS_HASH, RecordedEntry, VerifyReport,
    entry_hash, verify_inclusion,
};

/// Entries read per page while verifying or proving.
const PAGE: u32 = 1000;

/// An inclusion proof with everything needed to check it without the database: the entry (its
/// canonical body and previous hash, from which its hash is recomputed), its place, the audit
/// path, and the signed checkpoint whose root it leads to. JSON form: hashes in hex, `body` the
/// canonical JSON text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InclusionBundle {
    /// The entry's seq (leaf index + 1).
    pub seq: u64,
    /// Canonical bytes of the entry, as text.
    pub body: String,
    /// Hash of the previous entry.
    #[serde(with = "crate::hexser::h32")]
    pub prev_hash: [u8; 32],
    /// Hash of the entry.
    #[serde(with = "crate::hexser::h32")]
    pub entry_hash: [u8; 32],
    /// 0-based leaf index (seq − 1).
    pub leaf_index: u64,
    /// Size of the tree the path is in (the checkpoint's size).
    pub tree_size: u64,
    /// Audit path, leaf to root.
    #[serde(with = "crate::hexser::path")]
    pub path: Vec<[u8; 32]>,
    /// The checkpoint (may be given separately to [`InclusionBundle::check`]).
    pub checkpoint: Checkpoint,
}

impl InclusionBundle {
    /// Checks the bundle against `checkpoint` and `public_key`: the checkpoint's signature,
    /// the entry's hash from its body and previous hash, that the body is canonical with this
    /// seq, and the inclusion of the entry hash under the checkpoint's root.
    pub fn check(&self, checkpoint: &Checkpoint, public_key: &[u8]) -> Result<(), String> {
        if !checkpoint.verify_signature(public_key) {
            return Err("the checkpoint's signature does not verify".to_owned());
        }
        if checkpoint.size != self.tree_size {
            return Err(format!(
                "the proof is for a tree of {} entries, the checkpoint covers {}",
                self.tree_size, checkpoint.size
            ));
        }
        let entry = AuditEntry::from_canonical(self.body.as_bytes())
            .ok_or_else(|| "the entry body is not a canonical audit entry".to_owned())?;
        if entry.seq != self.seq || self.leaf_index + 1 != self.seq {
            return Err("the entry's seq and leaf index disagree".to_owned());
        }
        if entry_hash(&self.prev_hash, self.body.as_bytes()) != self.entry_hash {
            return Err("the entry does not hash to entry_hash".to_owned());
        }
        if !verify_inclusion(
            &self.entry_hash,
            self.leaf_index,
            self.tree_size,
            &self.path,
            &checkpoint.root,
        ) {
            return Err("the inclusion proof does not lead to the checkpoint's root".to_owned());
        }
        Ok(())
    }
}

/// The audit trail of one store: appends entries, makes signed checkpoints, verifies and
/// proves. Holds the checkpoint-signing key (loaded, or created on first open).
pub struct AuditLog {
    store: Store,
    key_id: String,
    signer: Ed25519KeyPair,
}

impl fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditLog")
            .field("store", &self.store)
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

fn now_millis() -> i64 {
    let t = time::OffsetDateTime::now_utc();
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// A stored hash as 32 bytes; only used on rows the verifier has accepted (whose hashes it
/// compared in full), so the fallback never reaches a proof that verifies.
fn hash32(bytes: &[u8]) -> [u8; 32] {
    <[u8; 32]>::try_from(bytes).unwrap_or([0xff; 32])
}

fn new_key() -> Result<(Vec<u8>, Zeroizing<Vec<u8>>), AuditError> {
    let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
        .map_err(|_| AuditError::Key("cannot generate an Ed25519 key".to_owned()))?;
    let pkcs8 = Zeroizing::new(doc.as_ref().to_vec());
    let pair = Ed25519KeyPair::from_pkcs8(&pkcs8)
        .map_err(|e| AuditError::Key(format!("a new key does not parse: {e}")))?;
    Ok((pair.public_key().as_ref().to_vec(), pkcs8))
}

/// Prepares the row of `entry` as entry `tail.seq`.
fn build_row(entry: &AuditEntry, tail: &AuditTail) -> Result<NewAuditRow, AuditError> {
    let prev = match &tail.prev_hash {
        None => GENESIS_HASH,
        // A stored hash of the wrong length: refuse to chain onto it (fail closed).
        Some(h) => <[u8; 32]>::try_from(h.as_slice()).map_err(|_| AuditError::Malformed {
            seq: tail.seq.saturating_sub(1),
        })?,
    };
    let mut entry = entry.clone();
    entry.seq = tail.seq;
    let body = entry.canonical_bytes().map_err(AuditError::Serialize)?;
    let hash = entry_hash(&prev, &body);
    Ok(NewAuditRow {
        body,
        entry_hash: hash.to_vec(),
        prev_hash: prev.to_vec(),
        time: entry.time,
        action: entry.action_code().to_owned(),
        outcome: entry.outcome.as_str().to_owned(),
        actor: entry.actor_id,
        patient: entry.patient_id,
    })
}

impl AuditLog {
    /// Opens the trail of `store`, loading (or creating) the checkpoint-signing key.
    pub async fn open(store: Store) -> Result<AuditLog, AuditError> {
        let key = store.audit_signing_key(new_key).await?;
        let signer = Ed25519KeyPair::from_pkcs8(&key.private_pkcs8)
            .map_err(|e| AuditError::Key(format!("the stored key does not parse: {e}")))?;
        if signer.public_key().as_ref() != key.public_key.as_slice() {
            return Err(AuditError::Key(
                "the stored public key does not match the private key".to_owned(),
            ));
        }
        Ok(AuditLog {
            store,
            key_id: key.key_id,
            signer,
        })
    }

    /// The raw Ed25519 public key that verifies checkpoints.
    pub fn public_key(&self) -> &[u8] {
        self.signer.public_key().as_ref()
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Appends `entry` in a transaction of its own; its `seq` is assigned (the one given is
    /// ignored). Returns the seq.
    pub async fn append(&self, entry: &AuditEntry) -> Result<u64, AuditError> {
        self.store.append_audit(|tail| build_row(entry, tail)).await
    }

    /// Appends `entry` inside the caller's transaction (see
    /// [`Store::append_audit_in`]: on SQLite the caller holds [`Store::write_lock`]).
    pub async fn append_in(
        &self,
        conn: &mut AnyConnection,
        entry: &AuditEntry,
    ) -> Result<u64, AuditError> {
        self.store
            .append_audit_in(conn, |tail| build_row(entry, tail))
            .await
    }

    /// Verifies the whole trail, then signs and stores a checkpoint over it (so a checkpoint
    /// never blesses a tampered trail). When a checkpoint of that size exists, returns the
    /// stored one.
    pub async fn checkpoint(&self) -> Result<Checkpoint, AuditError> {
        let report = self.verify(|_| {}).await?;
        let cp = Checkpoint::sign(
            &self.signer,
            report.entries,
            report.root,
            report.last_entry_hash,
            now_millis(),
        );
        if self.store.insert_audit_checkpoint(&cp.to_row()).await? {
            return Ok(cp);
        }
        let existing = self
            .checkpoints()
            .await?
            .into_iter()
            .find(|c| c.size == cp.size);
        existing.ok_or(AuditError::CheckpointMalformed { size: cp.size })
    }

    /// The stored checkpoints, smallest first.
    pub async fn checkpoints(&self) -> Result<Vec<Checkpoint>, AuditError> {
        self.store
            .audit_checkpoints()
            .await?
            .iter()
            .map(Checkpoint::try_from)
            .collect()
    }

    /// Verifies every entry and checkpoint (see [`crate::ChainVerifier`]), reading in pages;
    /// `progress` is called with the number of entries verified after each page.
    pub async fn verify(&self, mut progress: impl FnMut(u64)) -> Result<VerifyReport, AuditError> {
        let mut v = ChainVerifier::new(self.checkpoints().await?, self.public_key())?;
        let mut after = 0;
        loop {
            let rows = self.store.audit_entries(after, PAGE).await?;
            let Some(last) = rows.last() else { break };
            after = last.seq;
            for row in rows {
                v.push(&RecordedEntry::from(row))?;
            }
            progress(v.count());
        }
        v.finish()
    }

    /// The inclusion proof of entry `seq` under the smallest checkpoint that covers it. The
    /// trail up to that checkpoint is verified on the way.
    pub async fn prove(&self, seq: u64) -> Result<InclusionBundle, AuditError> {
        let checkpoints = self.checkpoints().await?;
        let checkpoint = checkpoints
            .iter()
            .find(|c| c.size >= seq)
            .cloned()
            .ok_or(AuditError::NotCovered { seq })?;
        let mut v = ChainVerifier::new(
            checkpoints
                .into_iter()
                .filter(|c| c.size <= checkpoint.size)
                .collect(),
            self.public_key(),
        )?;
        let mut tree = MerkleTree::new();
        let mut found = None;
        let mut after = 0;
        while after < checkpoint.size {
            let rows = self.store.audit_entries(after, PAGE).await?;
            let Some(last) = rows.last() else { break };
            after = last.seq;
            for row in rows.into_iter().take_while(|r| r.seq <= checkpoint.size) {
                tree.push(&hash32(&row.entry_hash));
                if row.seq == seq {
                    found = Some(row.clone());
                }
                v.push(&RecordedEntry::from(row))?;
            }
        }
        v.finish()?;
        let row = found.ok_or(AuditError::NoSuchEntry { seq })?;
        let path = tree
            .prove(seq - 1, checkpoint.size)
            .ok_or(AuditError::NotCovered { seq })?;
        let body = String::from_utf8(row.body).map_err(|_| AuditError::Malformed { seq })?;
        Ok(InclusionBundle {
            seq,
            body,
            prev_hash: hash32(&row.prev_hash),
            entry_hash: hash32(&row.entry_hash),
            leaf_index: seq - 1,
            tree_size: checkpoint.size,
            path,
            checkpoint,
        })
    }
}
