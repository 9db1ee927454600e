//! Verification of the trail against its checkpoints.

use std::fmt;
use std::sync::Arc;

use phivault_crypto::MacKey;
use phivault_store::audit::AuditRow;

use crate::entry::{chain_tag, keyed_entry_hash};
use crate::merkle::Frontier;
use crate::{AuditEntry, AuditError, Checkpoint, GENESIS_HASH, entry_hash};

/// What a verifier holding the audit chain key checks on top of the hashes: entries from
/// `keyed_from` on must carry the tag the key gives ([`crate::chain_tag`]), entries before it
/// must carry none (they are the unkeyed chain of an older version).
#[derive(Clone)]
pub struct Keying {
    /// The audit chain key.
    pub key: Arc<MacKey>,
    /// The first seq of the keyed chain.
    pub keyed_from: u64,
}

impl fmt::Debug for Keying {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keying")
            .field("keyed_from", &self.keyed_from)
            .finish_non_exhaustive()
    }
}

/// Checks entry `seq` (chained onto `prev`) as recorded: its stored hash must be its hash
/// recomputed (the keyed formula when it carries a tag, the unkeyed one otherwise;
/// [`AuditError::HashMismatch`]), and it must be authenticated
/// ([`AuditError::Unauthenticated`]): see [`authentic`]. Returns its hash.
fn check_recorded(
    seq: u64,
    entry: &RecordedEntry,
    prev: &[u8; 32],
    keying: Option<&Keying>,
    seen_keyed: bool,
) -> Result<[u8; 32], AuditError> {
    let unauthenticated = AuditError::Unauthenticated { seq };
    let tag = match &entry.chain_mac {
        None => None,
        Some(t) => Some(<[u8; 32]>::try_from(t.as_slice()).map_err(|_| unauthenticated)?),
    };
    let hash = match &tag {
        None => entry_hash(prev, &entry.body),
        Some(tag) => keyed_entry_hash(prev, tag, &entry.body),
    };
    if entry.entry_hash.as_slice() != hash.as_slice() {
        return Err(AuditError::HashMismatch { seq });
    }
    let key_ok = match (&tag, keying) {
        (Some(tag), Some(k)) if seq >= k.keyed_from => {
            phivault_crypto::ct_eq(&chain_tag(&k.key, prev, &entry.body), tag)
        }
        _ => false,
    };
    if !authentic(seq, tag.is_some(), key_ok, keying, seen_keyed) {
        return Err(AuditError::Unauthenticated { seq });
    }
    Ok(hash)
}

/// Whether entry `seq` is authenticated: no untagged entry after a tagged one (`seen_keyed`:
/// a downgrade) and, with `keying`, no untagged entry in the keyed part, no tagged one before
/// it, and no tag other than the one the key gives (`key_ok`: the tag is the key's tag of the
/// entry over the hash it chains onto).
fn authentic(
    seq: u64,
    tagged: bool,
    key_ok: bool,
    keying: Option<&Keying>,
    seen_keyed: bool,
) -> bool {
    match (tagged, keying) {
        (false, None) => !seen_keyed,
        (false, Some(k)) => !seen_keyed && seq < k.keyed_from,
        (true, None) => true,
        (true, Some(k)) => seq >= k.keyed_from && key_ok,
    }
}

/// Entries checked by one thread at least before [`ChainVerifier::push_all`] spreads a run
/// over several.
const MIN_PER_THREAD: usize = 256;

/// The tag an entry carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tag {
    Absent,
    Present,
    /// Not 32 bytes: refused as unauthenticated.
    Malformed,
}

/// What can be checked of an entry on its own, over its *stored* previous hash, so that
/// entries are checked in parallel ([`precheck`]); what depends on the entries before it (its
/// seq, its link to the previous entry's recomputed hash, the downgrade rule) is judged in
/// seq order by [`ChainVerifier::link`], which refuses a stored previous hash other than the
/// recomputed one before using anything computed over it.
#[derive(Debug)]
struct Prechecked {
    /// The first fault of the entry alone, in the order a serial check finds them: a body
    /// that is not canonical, a body of another seq, a copied-out column that disagrees.
    fault: Option<AuditError>,
    tag: Tag,
    /// The entry's recomputed hash over its stored previous hash (`None` when that is not 32
    /// bytes or the entry has a fault).
    hash: Option<[u8; 32]>,
    /// With keying, a tag in the keyed part: whether it is the key's tag.
    key_ok: bool,
}

/// The checks of `entry` that do not depend on the entries before it (see [`Prechecked`]).
fn precheck(entry: &RecordedEntry, keying: Option<&Keying>) -> Prechecked {
    let seq = entry.seq;
    let fault = match AuditEntry::from_canonical(&entry.body) {
        None => Some(AuditError::Malformed { seq }),
        Some(parsed) if parsed.seq != seq => Some(AuditError::Misplaced {
            seq,
            claimed: parsed.seq,
        }),
        Some(parsed) => check_columns(entry, &parsed).err(),
    };
    let tag = match &entry.chain_mac {
        None => None,
        Some(t) => <[u8; 32]>::try_from(t.as_slice()).ok(),
    };
    let tag_state = match (&entry.chain_mac, &tag) {
        (None, _) => Tag::Absent,
        (Some(_), Some(_)) => Tag::Present,
        (Some(_), None) => Tag::Malformed,
    };
    let prev = <[u8; 32]>::try_from(entry.prev_hash.as_slice()).ok();
    let (hash, key_ok) = match (fault.is_none(), prev) {
        (true, Some(prev)) => {
            let hash = match &tag {
                None => entry_hash(&prev, &entry.body),
                Some(tag) => keyed_entry_hash(&prev, tag, &entry.body),
            };
            let key_ok = match (&tag, keying) {
                (Some(tag), Some(k)) if seq >= k.keyed_from => {
                    phivault_crypto::ct_eq(&chain_tag(&k.key, &prev, &entry.body), tag)
                }
                _ => false,
            };
            (Some(hash), key_ok)
        }
        _ => (None, false),
    };
    Prechecked {
        fault,
        tag: tag_state,
        hash,
        key_ok,
    }
}

/// [`precheck`] of every entry of `entries`, spread over the available cores when there are
/// enough of them (contiguous runs, one per thread, results in entry order).
fn precheck_all(entries: &[RecordedEntry], keying: Option<&Keying>) -> Vec<Prechecked> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = cores.min(entries.len() / MIN_PER_THREAD).max(1);
    if threads == 1 {
        return entries.iter().map(|e| precheck(e, keying)).collect();
    }
    let run = entries.len().div_ceil(threads);
    std::thread::scope(|s| {
        let workers: Vec<_> = entries
            .chunks(run)
            .map(|chunk| {
                s.spawn(move || {
                    chunk
                        .iter()
                        .map(|e| precheck(e, keying))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut out = Vec::with_capacity(entries.len());
        for worker in workers {
            match worker.join() {
                Ok(part) => out.extend(part),
                // A panic in a check is a bug: it surfaces as it would have on this thread.
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        out
    })
}

/// The columns the store copies out of an entry's body for its queries (`audit_entries`'
/// time, actor, patient, action and outcome, and the entry's `audit_entry_patients` rows).
/// Queries select on them, so each must say what the body says: a column changed so that an
/// entry no longer matches a query (a patient's access log, an actor's accesses) hides it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopiedColumns {
    /// Unix milliseconds.
    pub time: i64,
    /// Actor id.
    pub actor: String,
    /// Patient id.
    pub patient: Option<String>,
    /// FHIR action code (`None`: not filled in).
    pub action: Option<String>,
    /// Outcome (`None`: not filled in).
    pub outcome: Option<String>,
    /// The `audit_entry_patients` rows of the entry, ascending.
    pub patients: Vec<String>,
}

impl CopiedColumns {
    /// The first column (by name) that disagrees with `entry`, if any. `action` and `outcome`
    /// must be present (the audit log fills in those of older rows when it opens).
    pub fn disagreement(&self, entry: &AuditEntry) -> Option<&'static str> {
        if self.time != entry.time {
            return Some("time");
        }
        if self.actor != entry.actor_id {
            return Some("actor");
        }
        if self.patient != entry.patient_id {
            return Some("patient");
        }
        if self.action.as_deref() != Some(entry.action_code()) {
            return Some("action");
        }
        if self.outcome.as_deref() != Some(entry.outcome.as_str()) {
            return Some("outcome");
        }
        let mut rows = self.patients.clone();
        rows.sort_unstable();
        if rows != entry.patients_concerned() {
            return Some("patients");
        }
        None
    }
}

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
    /// Stored tag under the audit chain key (`None`: an unkeyed entry).
    pub chain_mac: Option<Vec<u8>>,
    /// The columns copied out of the body, compared with it when present (`None`: an entry
    /// read without them, e.g. from an archive's entry stream).
    pub columns: Option<CopiedColumns>,
}

impl From<AuditRow> for RecordedEntry {
    fn from(row: AuditRow) -> Self {
        RecordedEntry {
            seq: row.seq,
            body: row.body,
            entry_hash: row.entry_hash,
            prev_hash: row.prev_hash,
            chain_mac: row.chain_mac,
            columns: Some(CopiedColumns {
                time: row.time,
                actor: row.actor,
                patient: row.patient,
                action: row.action,
                outcome: row.outcome,
                patients: row.patients,
            }),
        }
    }
}

/// What a successful verification covered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Entries verified.
    pub entries: u64,
    /// Checkpoints verified (for a resumed verification, those after the one it resumed
    /// from).
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
/// to its recomputed hash (keyed or unkeyed, as the entry says; an unkeyed entry after a keyed
/// one is refused), and columns copied out of the body that agree with it ([`CopiedColumns`],
/// when the entry carries them). With [`Keying`] ([`ChainVerifier::keyed`]), the tags of the
/// keyed part are checked under the audit chain key and an untagged entry there is refused.
/// When the count reaches a checkpoint's size, the recomputed Merkle
/// root and last hash must equal the checkpoint's. Every checkpoint's signature is checked
/// first, and [`ChainVerifier::finish`] refuses a checkpoint larger than the trail.
#[derive(Debug)]
pub struct ChainVerifier {
    checkpoints: Vec<Checkpoint>,
    next_checkpoint: usize,
    last_good_checkpoint: u64,
    count: u64,
    prev: [u8; 32],
    range: Frontier,
    keying: Option<Keying>,
    seen_keyed: bool,
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
            range: Frontier::new(),
            keying: None,
            seen_keyed: false,
        };
        v.check_checkpoints()?;
        Ok(v)
    }

    /// Resumes a verification after the checkpoint `base`, whose entries are not read again:
    /// the verifier starts at entry `base.size + 1`, chained to `base.last_entry_hash`, with
    /// the Merkle tree given by `frontier`. Checks the signatures of `base` and of `later`
    /// (the checkpoints to reach from there; any of size `base.size` or less is ignored) under
    /// `public_key`, and refuses a frontier that does not reproduce `base`'s signed size and
    /// root ([`AuditError::FrontierMismatch`]).
    ///
    /// What this trusts: that the entries up to `base.size` are the ones `base` signed. The
    /// entry at `base.size` itself can be checked with [`ChainVerifier::check_base_entry`];
    /// the ones before it are only checked by a verification from the first entry.
    pub fn resume(
        base: &Checkpoint,
        frontier: Frontier,
        later: Vec<Checkpoint>,
        public_key: &[u8],
    ) -> Result<ChainVerifier, AuditError> {
        if !base.verify_signature(public_key) {
            return Err(AuditError::CheckpointSignature { size: base.size });
        }
        if frontier.size() != base.size || frontier.root() != base.root {
            return Err(AuditError::FrontierMismatch { size: base.size });
        }
        Self::resume_verified(base.last_entry_hash, frontier, later, public_key)
    }

    /// Resumes after entries this process has verified itself: `frontier.size()` entries, the
    /// last with hash `last_entry_hash`. Checks the signatures of `later` (those of a larger
    /// size are kept).
    pub(crate) fn resume_verified(
        last_entry_hash: [u8; 32],
        frontier: Frontier,
        later: Vec<Checkpoint>,
        public_key: &[u8],
    ) -> Result<ChainVerifier, AuditError> {
        let size = frontier.size();
        let mut checkpoints: Vec<Checkpoint> =
            later.into_iter().filter(|c| c.size > size).collect();
        checkpoints.sort_by_key(|c| c.size);
        for cp in &checkpoints {
            if !cp.verify_signature(public_key) {
                return Err(AuditError::CheckpointSignature { size: cp.size });
            }
        }
        Ok(ChainVerifier {
            checkpoints,
            next_checkpoint: 0,
            last_good_checkpoint: size,
            count: size,
            prev: last_entry_hash,
            range: frontier,
            keying: None,
            seen_keyed: false,
        })
    }

    /// Also checks the keyed part of the trail with the audit chain key (see [`Keying`]).
    pub fn keyed(mut self, keying: Keying) -> ChainVerifier {
        self.keying = Some(keying);
        self
    }

    /// Checks the stored entry at `base.size` against the checkpoint `base` it ends: a
    /// canonical body of that seq whose recomputed hash (over its stored previous hash) is
    /// both its stored hash and the checkpoint's last entry hash. Names the entry when it was
    /// altered; the empty checkpoint (size 0) has no entry and `entry` is ignored. With
    /// `keying`, its tag is checked as [`ChainVerifier::push`] does.
    pub fn check_base_entry(
        base: &Checkpoint,
        entry: &RecordedEntry,
        keying: Option<&Keying>,
    ) -> Result<(), AuditError> {
        let seq = base.size;
        if seq == 0 {
            return Ok(());
        }
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
        let prev = <[u8; 32]>::try_from(entry.prev_hash.as_slice())
            .map_err(|_| AuditError::ChainBroken { seq })?;
        let hash = check_recorded(seq, entry, &prev, keying, false)?;
        if hash != base.last_entry_hash {
            return Err(AuditError::HashMismatch { seq });
        }
        Ok(())
    }

    /// Entries verified so far (counting those before a resumed checkpoint).
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Checks the next entry.
    pub fn push(&mut self, entry: &RecordedEntry) -> Result<(), AuditError> {
        let pre = precheck(entry, self.keying.as_ref());
        self.link(entry, pre)
    }

    /// Checks the next entries, in seq order, as [`ChainVerifier::push`] of each in turn
    /// does (the same checks, the same first error): what each entry holds on its own is
    /// checked in parallel over the cores, then the entries are linked in order.
    pub fn push_all(&mut self, entries: &[RecordedEntry]) -> Result<(), AuditError> {
        let pre = precheck_all(entries, self.keying.as_ref());
        for (entry, pre) in entries.iter().zip(pre) {
            self.link(entry, pre)?;
        }
        Ok(())
    }

    /// Judges the next entry from its [`precheck`], in the order of the checks documented on
    /// [`ChainVerifier`]: its seq, its own faults, its link to the entry before it, its tag,
    /// its hash, its authentication; then grows the tree and checks the checkpoints reached.
    fn link(&mut self, entry: &RecordedEntry, pre: Prechecked) -> Result<(), AuditError> {
        let seq = self.count + 1;
        if entry.seq != seq {
            return Err(AuditError::Missing {
                seq,
                next: entry.seq,
            });
        }
        if let Some(fault) = pre.fault {
            return Err(fault);
        }
        if entry.prev_hash.as_slice() != self.prev.as_slice() {
            return Err(AuditError::ChainBroken { seq });
        }
        // From here the stored previous hash is `self.prev`: what `precheck` computed over
        // it is what a check over the recomputed chain gives.
        if pre.tag == Tag::Malformed {
            return Err(AuditError::Unauthenticated { seq });
        }
        let hash = match pre.hash {
            Some(hash) if entry.entry_hash.as_slice() == hash.as_slice() => hash,
            _ => return Err(AuditError::HashMismatch { seq }),
        };
        let tagged = pre.tag == Tag::Present;
        if !authentic(
            seq,
            tagged,
            pre.key_ok,
            self.keying.as_ref(),
            self.seen_keyed,
        ) {
            return Err(AuditError::Unauthenticated { seq });
        }
        self.seen_keyed |= tagged;
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
        self.finish_with_frontier().map(|(report, _)| report)
    }

    /// [`ChainVerifier::finish`], also giving the Merkle frontier of the entries verified.
    pub(crate) fn finish_with_frontier(self) -> Result<(VerifyReport, Frontier), AuditError> {
        if let Some(cp) = self.checkpoints.get(self.next_checkpoint) {
            return Err(AuditError::Truncated {
                size: cp.size,
                present: self.count,
            });
        }
        let report = VerifyReport {
            entries: self.count,
            checkpoints: self.checkpoints.len(),
            unsealed: self.count - self.last_good_checkpoint,
            last_entry_hash: self.prev,
            root: self.range.root(),
        };
        Ok((report, self.range))
    }
}

/// Refuses an entry whose copied-out columns disagree with its body, naming the column.
fn check_columns(entry: &RecordedEntry, parsed: &AuditEntry) -> Result<(), AuditError> {
    match entry.columns.as_ref().and_then(|c| c.disagreement(parsed)) {
        Some(column) => Err(AuditError::ColumnMismatch {
            seq: entry.seq,
            column,
        }),
        None => Ok(()),
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
    v.push_all(entries)?;
    v.finish()
}
