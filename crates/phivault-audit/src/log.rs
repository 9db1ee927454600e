//! The audit log over the store.

use std::fmt;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use phivault_store::AnyConnection;
use phivault_store::audit::{AuditTail, NewAuditRow};
use phivault_store::{ErasureRecord, Store};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::BENCH_NO_AUDIT;
use crate::entry::{chain_tag, keyed_entry_hash, keyed_from_tag};
use crate::merkle::{Frontier, MerkleTree};
use crate::writer::Writer;
use crate::{
    AuditEntry, AuditError, ChainVerifier, Checkpoint, ErasureCertificate, GENESIS_HASH, Keying,
    RecordedEntry, VerifyReport, entry_hash, verify_inclusion,
};
use phivault_crypto::MacKey;

/// Entries read per page while proving.
const PAGE: u32 = 1000;

/// Entries read per page while verifying: large pages amortize each query; the next page is
/// read while the current one is verified.
const VERIFY_PAGE: u32 = 10_000;

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
    /// The entry's tag under the audit chain key, for a keyed entry (absent for an entry of
    /// the unkeyed chain). The proof's reader cannot check the tag (it takes the master key);
    /// it recomputes the entry's hash from it, and the signed checkpoint vouches for that.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::hexser::opt_h32"
    )]
    pub chain_mac: Option<[u8; 32]>,
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
        let hash = match &self.chain_mac {
            Some(tag) => keyed_entry_hash(&self.prev_hash, tag, self.body.as_bytes()),
            None => entry_hash(&self.prev_hash, self.body.as_bytes()),
        };
        if hash != self.entry_hash {
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

/// Where [`AuditLog::verify_tail`] started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TailStart {
    /// After the last checkpoint (of `size` entries): its signature verified, its stored
    /// frontier reproduced its signed root, and the stored entry `size` is the one it signed.
    Checkpoint {
        /// The checkpoint's size.
        size: u64,
    },
    /// From the first entry: there is no checkpoint yet.
    NoCheckpoint,
    /// From the first entry: the last checkpoint (of `size` entries) has no stored frontier
    /// (it was made before schema v4).
    NoFrontier {
        /// The checkpoint's size.
        size: u64,
    },
    /// From the first entry: the last checkpoint's stored frontier does not reproduce its
    /// signed root (the frontier is not signed: altered or corrupt), so it was refused and
    /// the whole trail verified instead.
    FrontierRefused {
        /// The checkpoint's size.
        size: u64,
    },
}

/// What a successful [`AuditLog::verify_tail`] covered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailReport {
    /// Where it started.
    pub start: TailStart,
    /// The first entry verified (1 when verifying from the first entry; one past the trail
    /// when nothing followed the checkpoint).
    pub from_seq: u64,
    /// Entries verified (`from_seq` onwards).
    pub checked: u64,
    /// Entries in the trail (the seq of the last one verified).
    pub entries: u64,
    /// Checkpoints whose root was checked (the one resumed from included).
    pub checkpoints: usize,
    /// Hash of the last entry ([`GENESIS_HASH`] when empty).
    pub last_entry_hash: [u8; 32],
    /// Merkle root of all entries.
    pub root: [u8; 32],
}

/// The trail as this process has verified it: the first `frontier.size()` entries, the last
/// with hash `last_entry_hash`.
#[derive(Debug, Clone)]
struct Verified {
    last_entry_hash: [u8; 32],
    frontier: Frontier,
}

/// The audit trail of one store: appends entries, makes signed checkpoints, verifies and
/// proves. Holds the checkpoint-signing key (loaded, or created on first open) and, once
/// [`AuditLog::verify_tail`] or [`AuditLog::checkpoint`] has run, the state of the trail it
/// verified, from which the next checkpoint goes on.
pub struct AuditLog {
    store: Store,
    key_id: String,
    signer: Ed25519KeyPair,
    /// The audit chain key and where the keyed chain starts.
    keying: Keying,
    /// Held for the whole of a checkpoint or tail verification (one at a time).
    verified: tokio::sync::Mutex<Option<Verified>>,
    /// The group-commit writer of standalone appends ([`AuditLog::append`]).
    writer: Writer,
}

/// The rows of `entries` as consecutive entries from `tail` on, each chained onto the one
/// before it.
pub(crate) fn chained_rows(
    entries: &[AuditEntry],
    tail: &AuditTail,
    key: &MacKey,
) -> Result<Vec<NewAuditRow>, AuditError> {
    let mut at = tail.clone();
    let mut rows = Vec::with_capacity(entries.len());
    for entry in entries {
        let row = build_row(entry, &at, key)?;
        at = AuditTail {
            seq: at.seq + 1,
            prev_hash: Some(row.entry_hash.clone()),
        };
        rows.push(row);
    }
    Ok(rows)
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
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

/// Prepares the row of `entry` as entry `tail.seq`, keyed under `key`.
fn build_row(
    entry: &AuditEntry,
    tail: &AuditTail,
    key: &MacKey,
) -> Result<NewAuditRow, AuditError> {
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
    let tag = chain_tag(key, &prev, &body);
    let hash = keyed_entry_hash(&prev, &tag, &body);
    Ok(NewAuditRow {
        body,
        entry_hash: hash.to_vec(),
        prev_hash: prev.to_vec(),
        time: entry.time,
        action: entry.action_code().to_owned(),
        outcome: entry.outcome.as_str().to_owned(),
        patients: entry.patients_concerned(),
        address: crate::address_key(entry.source_address.as_deref()),
        actor: entry.actor_id,
        patient: entry.patient_id,
        chain_mac: Some(tag.to_vec()),
    })
}

impl AuditLog {
    /// Opens the trail of `store`, loading (or, for an empty trail, creating) the
    /// checkpoint-signing key, and the record of where the keyed chain starts: made on the
    /// first open by a version that keys the chain (at the next seq; the entries before it
    /// stay the unkeyed chain they were written as), checked under the audit chain key on
    /// every later open. A missing record while the last entry is keyed, or a record whose tag
    /// does not verify, is refused ([`AuditError::KeyedFrom`]), as is a missing signing key
    /// while the trail has entries.
    pub async fn open(store: Store) -> Result<AuditLog, AuditError> {
        let key = store.audit_signing_key(new_key).await?;
        let signer = Ed25519KeyPair::from_pkcs8(&key.private_pkcs8)
            .map_err(|e| AuditError::Key(format!("the stored key does not parse: {e}")))?;
        if signer.public_key().as_ref() != key.public_key.as_slice() {
            return Err(AuditError::Key(
                "the stored public key does not match the private key".to_owned(),
            ));
        }
        // Rows written before schema v4 lack the action and outcome copied out of their
        // bodies, which audit searches filter on; one query when there is nothing to fill. A
        // body that is not a canonical entry is left as it is (verification names it).
        store
            .fill_audit_columns(|body| {
                AuditEntry::from_canonical(body)
                    .map(|e| (e.action_code().to_owned(), e.outcome.as_str().to_owned()))
            })
            .await?;
        // Rows written before schema v16 lack their address key (breach reports by
        // network read through it); filled once, each row then holds a key or "".
        let filled = store
            .fill_audit_addresses(|body| {
                crate::address_key(
                    AuditEntry::from_canonical(body)
                        .and_then(|e| e.source_address)
                        .as_deref(),
                )
            })
            .await?;
        if filled > 0 {
            tracing::info!(entries = filled, "audit trail: address keys filled in");
        }
        let chain_key = store.audit_chain_key();
        let tenant = store.tenant().to_owned();
        let recorded = store
            .record_audit_keyed_from(|seq, last| {
                if last.is_some_and(|row| row.chain_mac.is_some()) {
                    return Err(AuditError::KeyedFrom(
                        "is missing while the trail's last entry is keyed (it was deleted)"
                            .to_owned(),
                    ));
                }
                Ok(keyed_from_tag(&chain_key, &tenant, seq).to_vec())
            })
            .await?;
        if !phivault_crypto::ct_eq(
            &keyed_from_tag(&chain_key, &tenant, recorded.seq),
            &recorded.tag,
        ) {
            return Err(AuditError::KeyedFrom(
                "does not verify under the audit chain key (it was changed)".to_owned(),
            ));
        }
        let writer = Writer::new(store.clone(), chain_key.clone());
        Ok(AuditLog {
            store,
            key_id: key.key_id,
            signer,
            keying: Keying {
                key: chain_key,
                keyed_from: recorded.seq,
            },
            verified: tokio::sync::Mutex::new(None),
            writer,
        })
    }

    /// The raw Ed25519 public key that verifies checkpoints.
    pub fn public_key(&self) -> &[u8] {
        self.signer.public_key().as_ref()
    }

    /// Signs the certificate of an erasure with the trail's Ed25519 key (the checkpoints'
    /// key; the message is domain-separated, see [`ErasureCertificate::signed_message`]).
    pub fn certify_erasure(&self, record: &ErasureRecord) -> ErasureCertificate {
        ErasureCertificate::sign(&self.signer, self.public_key(), record)
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Appends `entry` in a transaction of its own; its `seq` is assigned (the one given is
    /// ignored). Returns the seq.
    ///
    /// Group commit: the entry goes to the log's writer task, which
    /// commits whatever entries all concurrent appenders have queued in one transaction (one
    /// fsync), chained in queue order exactly as one-by-one appends would be. Returns only
    /// once the entry is committed (durable); every appender of a batch that could not be
    /// written gets the error. An appender cancelled after submitting does not stop its entry
    /// from being written.
    pub async fn append(&self, entry: &AuditEntry) -> Result<u64, AuditError> {
        if BENCH_NO_AUDIT {
            return Ok(0);
        }
        self.writer.append(entry.clone()).await
    }

    /// Appends `entry` inside the caller's transaction (see
    /// [`Store::append_audit_in`]: on SQLite the caller holds [`Store::write_lock`]).
    pub async fn append_in(
        &self,
        conn: &mut AnyConnection,
        entry: &AuditEntry,
    ) -> Result<u64, AuditError> {
        if BENCH_NO_AUDIT {
            return Ok(0);
        }
        self.store
            .append_audit_in(conn, |tail| build_row(entry, tail, &self.keying.key))
            .await
    }

    /// Appends `entries`, in order, inside the caller's transaction, with one read of the
    /// tail and a few multi-row inserts (as [`AuditLog::append_in`] does one). Returns the seq
    /// of the first; nothing is written when `entries` is empty.
    pub async fn append_all_in(
        &self,
        conn: &mut AnyConnection,
        entries: &[AuditEntry],
    ) -> Result<u64, AuditError> {
        if BENCH_NO_AUDIT {
            return Ok(0);
        }
        if entries.is_empty() {
            return Ok(self.store.audit_tail().await?.seq);
        }
        self.store
            .append_audit_rows_in(conn, |tail| chained_rows(entries, tail, &self.keying.key))
            .await
    }

    /// Signs and stores a checkpoint over the trail as it is now, verifying only the entries
    /// added since the state this process last verified (see [`AuditLog::verify_tail`],
    /// which runs first when there is no such state yet): their chain, canonical bodies and
    /// every checkpoint stored meanwhile. Entries appended while it runs are left to the next
    /// checkpoint: a checkpoint covers exactly the entries it verified, and stores their
    /// Merkle frontier. When a checkpoint of that size exists, returns the stored one (after
    /// checking that it agrees).
    ///
    /// A checkpoint never blesses entries it has not verified, but it does not read again the
    /// entries verified before: an entry altered in the database after this process verified
    /// it is found by a full [`AuditLog::verify`] (`phivault audit verify`), not here.
    pub async fn checkpoint(&self) -> Result<Checkpoint, AuditError> {
        let mut state = self.verified.lock().await;
        let current = match state.as_ref() {
            Some(v) => v.clone(),
            None => {
                let (_, v) = self.verify_tail_locked(|_| {}).await?;
                *state = Some(v.clone());
                v
            }
        };
        let since = current.frontier.size();
        let later = self.checkpoints_from(since.saturating_add(1)).await?;
        let target = self.store.audit_tail().await?.seq.saturating_sub(1);
        if target < since {
            return Err(AuditError::Truncated {
                size: since,
                present: target,
            });
        }
        let v = ChainVerifier::resume_verified(
            current.last_entry_hash,
            current.frontier,
            later,
            self.public_key(),
        )?
        .keyed(self.keying.clone());
        let v = self.read_into(v, target, &mut |_| {}).await?;
        let (report, frontier) = v.finish_with_frontier()?;
        let cp = Checkpoint::sign(
            &self.signer,
            report.entries,
            report.root,
            report.last_entry_hash,
            now_millis(),
        );
        let verified = Verified {
            last_entry_hash: report.last_entry_hash,
            frontier,
        };
        if self
            .store
            .insert_audit_checkpoint(&cp.to_row(Some(&verified.frontier)))
            .await?
        {
            *state = Some(verified);
            return Ok(cp);
        }
        // One of that size exists (made meanwhile, or earlier over the same entries).
        let existing = self
            .checkpoints_from(cp.size)
            .await?
            .into_iter()
            .find(|c| c.size == cp.size)
            .ok_or(AuditError::CheckpointMalformed { size: cp.size })?;
        if !existing.verify_signature(self.public_key()) {
            return Err(AuditError::CheckpointSignature { size: cp.size });
        }
        if existing.root != cp.root || existing.last_entry_hash != cp.last_entry_hash {
            return Err(AuditError::CheckpointMismatch {
                size: cp.size,
                since,
            });
        }
        *state = Some(verified);
        Ok(existing)
    }

    /// Verifies the trail from its last checkpoint to its end, the check made at start-up:
    /// a full verification costs time in the size of the trail, this one in the entries added
    /// since the last checkpoint (the server makes one every minute).
    ///
    /// It reads the last stored checkpoint and refuses it when its signature does not verify
    /// ([`AuditError::CheckpointSignature`]). When its stored Merkle frontier reproduces its
    /// signed root, verification resumes there: the stored entry at seq = its size must be
    /// the one it signed (its body canonical and hashing to the checkpoint's last entry hash),
    /// a trail that no longer reaches it is reported truncated, and every entry after it is
    /// checked as [`AuditLog::verify`] does (chain links, canonical bodies, the root of any
    /// later checkpoint). When the last checkpoint has no frontier (made before schema v4) or
    /// a frontier that does not reproduce its root (altered: it is not signed), or when there
    /// is no checkpoint, the whole trail is verified from the first entry instead, and the
    /// report says why ([`TailReport::start`]). Errors name the first bad entry as `verify`
    /// does. `progress` is called with the number of entries verified after each page.
    ///
    /// What it does not see: entries before the last checkpoint (altered, removed or
    /// reordered there, they are found by the full [`AuditLog::verify`]), and entries removed
    /// from the very end of the trail after the last checkpoint (nothing signed covers them
    /// yet).
    ///
    /// On success it also sets the verified state from which [`AuditLog::checkpoint`] goes
    /// on; on failure it clears it.
    pub async fn verify_tail(&self, progress: impl FnMut(u64)) -> Result<TailReport, AuditError> {
        let mut state = self.verified.lock().await;
        *state = None;
        let (report, verified) = self.verify_tail_locked(progress).await?;
        *state = Some(verified);
        Ok(report)
    }

    /// [`AuditLog::verify_tail`], with the state lock held by the caller.
    async fn verify_tail_locked(
        &self,
        mut progress: impl FnMut(u64),
    ) -> Result<(TailReport, Verified), AuditError> {
        let (start, resumed) = self.tail_start().await?;
        let v = match resumed {
            Some(v) => v,
            None => ChainVerifier::new(self.checkpoints().await?, self.public_key())?
                .keyed(self.keying.clone()),
        };
        let checked_before = v.count();
        let target = self.store.audit_tail().await?.seq.saturating_sub(1);
        let v = self.read_into(v, target, &mut progress).await?;
        let (report, frontier) = v.finish_with_frontier()?;
        let resumed_from = matches!(start, TailStart::Checkpoint { .. });
        let tail = TailReport {
            start,
            from_seq: checked_before + 1,
            checked: report.entries - checked_before,
            entries: report.entries,
            checkpoints: report.checkpoints + usize::from(resumed_from),
            last_entry_hash: report.last_entry_hash,
            root: report.root,
        };
        let verified = Verified {
            last_entry_hash: report.last_entry_hash,
            frontier,
        };
        Ok((tail, verified))
    }

    /// Where a tail verification starts: after the last checkpoint (a verifier resumed there,
    /// its entry checked) or, with the reason, from the first entry (`None`).
    async fn tail_start(&self) -> Result<(TailStart, Option<ChainVerifier>), AuditError> {
        let Some(row) = self.store.last_audit_checkpoint().await? else {
            return Ok((TailStart::NoCheckpoint, None));
        };
        let cp = Checkpoint::try_from(&row)?;
        let size = cp.size;
        if !cp.verify_signature(self.public_key()) {
            return Err(AuditError::CheckpointSignature { size });
        }
        let Some(bytes) = row.frontier.as_deref() else {
            return Ok((TailStart::NoFrontier { size }, None));
        };
        let Some(frontier) = Frontier::from_bytes(size, bytes) else {
            return Ok((TailStart::FrontierRefused { size }, None));
        };
        let later = self.checkpoints_from(size.saturating_add(1)).await?;
        let v = match ChainVerifier::resume(&cp, frontier, later, self.public_key()) {
            Ok(v) => v.keyed(self.keying.clone()),
            Err(AuditError::FrontierMismatch { .. }) => {
                return Ok((TailStart::FrontierRefused { size }, None));
            }
            Err(e) => return Err(e),
        };
        if size > 0 {
            // The first stored entry from seq = size on: the checkpoint's last entry, unless
            // the trail was cut short.
            match self
                .store
                .audit_entries(size - 1, 1)
                .await?
                .into_iter()
                .next()
            {
                Some(row) => ChainVerifier::check_base_entry(
                    &cp,
                    &RecordedEntry::from(row),
                    Some(&self.keying),
                )?,
                None => {
                    let present = self.store.audit_tail().await?.seq.saturating_sub(1);
                    return Err(AuditError::Truncated { size, present });
                }
            }
        }
        Ok((TailStart::Checkpoint { size }, Some(v)))
    }

    /// Feeds `v` the stored entries after the ones it has verified, up to seq `target`
    /// (entries appended later are left alone); `progress` gets the number fed so far after
    /// each page.
    async fn read_into(
        &self,
        v: ChainVerifier,
        target: u64,
        progress: &mut impl FnMut(u64),
    ) -> Result<ChainVerifier, AuditError> {
        let first = v.count();
        let v = self
            .feed(v, Some(target), &mut |count| progress(count - first))
            .await?;
        // Entries up to `target` were there when it was read: they cannot have gone since.
        if v.count() < target {
            return Err(AuditError::Missing {
                seq: v.count() + 1,
                next: target,
            });
        }
        Ok(v)
    }

    /// Feeds `v` the stored entries after the ones it has verified, up to seq `upto` (`None`:
    /// to the end), a page at a time: a reader task reads the next page while the current one
    /// is verified (off the async threads, spread over the cores by
    /// [`ChainVerifier::push_all`]). `progress` gets the verifier's count after each page.
    async fn feed(
        &self,
        mut v: ChainVerifier,
        upto: Option<u64>,
        progress: &mut impl FnMut(u64),
    ) -> Result<ChainVerifier, AuditError> {
        let (pages, mut read) = tokio::sync::mpsc::channel(2);
        let store = self.store.clone();
        let mut after = v.count();
        let reader = tokio::spawn(async move {
            while upto.is_none_or(|t| after < t) {
                let page = store.audit_entries_to_verify(after, VERIFY_PAGE).await;
                let last = page
                    .as_ref()
                    .ok()
                    .and_then(|rows| rows.last().map(|r| r.seq));
                if pages.send(page).await.is_err() {
                    break;
                }
                match last {
                    Some(seq) => after = seq,
                    None => break,
                }
            }
        });
        // Stops the reader when verification ends early (a bad entry, an error).
        let _reader = AbortOnDrop(reader);
        while let Some(page) = read.recv().await {
            let entries: Vec<RecordedEntry> = page?
                .into_iter()
                .take_while(|r| upto.is_none_or(|t| r.seq <= t))
                .map(RecordedEntry::from)
                .collect();
            if entries.is_empty() {
                break;
            }
            let checked = tokio::task::spawn_blocking(move || v.push_all(&entries).map(|()| v));
            v = match checked.await {
                Ok(result) => result?,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(_) => {
                    return Err(AuditError::Interrupted);
                }
            };
            progress(v.count());
        }
        Ok(v)
    }

    /// The checkpoints of size `min_size` or more, smallest first.
    async fn checkpoints_from(&self, min_size: u64) -> Result<Vec<Checkpoint>, AuditError> {
        self.store
            .audit_checkpoints_from(min_size)
            .await?
            .iter()
            .map(Checkpoint::try_from)
            .collect()
    }

    /// The checkpoint of the largest size, if any (one query, whatever the number of
    /// checkpoints). Its signature is not checked here.
    pub async fn last_checkpoint(&self) -> Result<Option<Checkpoint>, AuditError> {
        self.store
            .last_audit_checkpoint()
            .await?
            .as_ref()
            .map(Checkpoint::try_from)
            .transpose()
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
    pub async fn verify(&self, progress: impl FnMut(u64)) -> Result<VerifyReport, AuditError> {
        self.verify_against(&[], progress).await
    }

    /// [`AuditLog::verify`], also against `published`: checkpoints kept outside the database
    /// (fetched from `GET /audit/checkpoint` and stored elsewhere). Each must be signed by the
    /// trail's key, and the trail must still hold the entries it signed: a trail rolled back
    /// or rewritten below a published checkpoint fails its root
    /// ([`AuditError::CheckpointMismatch`]), one truncated below it fails as
    /// [`AuditError::Truncated`], even when the stored checkpoints were removed or rewritten
    /// along with the entries. The report counts the stored checkpoints and the published ones.
    pub async fn verify_against(
        &self,
        published: &[Checkpoint],
        mut progress: impl FnMut(u64),
    ) -> Result<VerifyReport, AuditError> {
        let mut checkpoints = self.checkpoints().await?;
        checkpoints.extend_from_slice(published);
        let v = ChainVerifier::new(checkpoints, self.public_key())?.keyed(self.keying.clone());
        self.feed(v, None, &mut progress).await?.finish()
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
        )?
        .keyed(self.keying.clone());
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
            chain_mac: row.chain_mac.as_deref().map(hash32),
            leaf_index: seq - 1,
            tree_size: checkpoint.size,
            path,
            checkpoint,
        })
    }
}
