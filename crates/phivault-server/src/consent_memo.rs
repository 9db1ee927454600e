//! The process-wide memo of patients' active consents, validated by the consent generation
//! ([`phivault_store::Generation::Consent`]).
//!
//! Every transaction that writes a `Consent` resource (create, update, delete, a Bundle
//! entry), erases a patient, disposes of Consents by retention or restores a backup writes a
//! fresh consent generation in the same transaction, in whatever process makes it. A request
//! reads the generation once, before it reads any consent; the memo serves it only what was
//! read under that same generation, so a withdrawal committed before the request began binds
//! it, as when every request read the consents itself.
//!
//! What is kept, per generation: each patient's active consents as parsed, and whether every
//! active consent of the tenant was read (then a patient without an entry has none). A
//! different generation drops all of it. Entries are PHI in memory (the server holds
//! decrypted data anyway): they are never logged, `Debug` shows counts only, and an erasure
//! in this process clears the memo at once. Bounded: past [`MAX_MEMO_PATIENTS`] patients the
//! memo is cleared (a miss costs one query).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use phivault_fhir::Id;
use phivault_policy::Consent;

/// Most patients whose consents are kept at once.
pub(crate) const MAX_MEMO_PATIENTS: usize = 100_000;

#[derive(Default)]
struct Memo {
    generation: Option<i64>,
    by_patient: HashMap<Id, Arc<Vec<Consent>>>,
    /// Every active consent of the tenant was read under `generation`.
    complete: bool,
}

/// The memo (see the module docs); one per server process, shared by its requests.
#[derive(Default)]
pub struct ConsentMemo {
    memo: Mutex<Memo>,
}

impl std::fmt::Debug for ConsentMemo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let memo = self.lock();
        f.debug_struct("ConsentMemo")
            .field("patients", &memo.by_patient.len())
            .field("complete", &memo.complete)
            .finish_non_exhaustive()
    }
}

/// What the memo holds for one patient under a generation.
pub(crate) enum Memoized {
    /// The patient's active consents.
    Consents(Arc<Vec<Consent>>),
    /// Nothing known: read them.
    Unknown,
}

impl ConsentMemo {
    fn lock(&self) -> std::sync::MutexGuard<'_, Memo> {
        // Entries are inserted whole: the memo is consistent after a panic elsewhere.
        self.memo.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Moves the memo to `generation` (dropping everything when it held another).
    fn at(memo: &mut Memo, generation: i64) {
        if memo.generation != Some(generation) {
            memo.by_patient.clear();
            memo.complete = false;
            memo.generation = Some(generation);
        }
    }

    /// `patient`'s consents as read under `generation`.
    pub(crate) fn get(&self, generation: i64, patient: &Id) -> Memoized {
        let mut memo = self.lock();
        Self::at(&mut memo, generation);
        match memo.by_patient.get(patient) {
            Some(c) => Memoized::Consents(c.clone()),
            None if memo.complete => Memoized::Consents(Arc::new(Vec::new())),
            None => Memoized::Unknown,
        }
    }

    /// Every patient's consents, when every active consent of the tenant was read under
    /// `generation`.
    pub(crate) fn all(&self, generation: i64) -> Option<HashMap<Id, Arc<Vec<Consent>>>> {
        let mut memo = self.lock();
        Self::at(&mut memo, generation);
        memo.complete.then(|| memo.by_patient.clone())
    }

    /// Keeps `patient`'s consents, read after `generation` was; nothing is kept when the memo
    /// has moved to another generation meanwhile.
    pub(crate) fn put(&self, generation: i64, patient: &Id, consents: Arc<Vec<Consent>>) {
        let mut memo = self.lock();
        if memo.generation != Some(generation) {
            return;
        }
        if memo.by_patient.len() >= MAX_MEMO_PATIENTS && !memo.by_patient.contains_key(patient) {
            memo.by_patient.clear();
            memo.complete = false;
        }
        memo.by_patient.insert(patient.clone(), consents);
    }

    /// Keeps every active consent of the tenant, read after `generation` was.
    pub(crate) fn put_all(&self, generation: i64, all: &HashMap<Id, Arc<Vec<Consent>>>) {
        let mut memo = self.lock();
        if memo.generation != Some(generation) || all.len() > MAX_MEMO_PATIENTS {
            return;
        }
        memo.by_patient = all.clone();
        memo.complete = true;
    }

    /// Forgets everything (after an erasure in this process: the erased patient's consents
    /// leave memory at once, not at the next request).
    pub(crate) fn clear(&self) {
        let mut memo = self.lock();
        memo.by_patient.clear();
        memo.complete = false;
        memo.generation = None;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn id(s: &str) -> Id {
        Id::parse(s).unwrap()
    }

    #[test]
    fn entries_serve_their_generation_only() {
        let m = ConsentMemo::default();
        assert!(matches!(m.get(1, &id("p1")), Memoized::Unknown));
        m.put(1, &id("p1"), Arc::new(Vec::new()));
        assert!(matches!(m.get(1, &id("p1")), Memoized::Consents(_)));
        assert!(matches!(m.get(2, &id("p1")), Memoized::Unknown));
        // Read under 1, but the memo moved to 2: not kept.
        m.put(1, &id("p1"), Arc::new(Vec::new()));
        assert!(matches!(m.get(2, &id("p1")), Memoized::Unknown));
    }

    #[test]
    fn a_complete_read_answers_for_patients_without_consents() {
        let m = ConsentMemo::default();
        assert!(m.all(5).is_none());
        let mut all = HashMap::new();
        all.insert(id("p1"), Arc::new(Vec::new()));
        m.put_all(5, &all);
        assert!(m.all(5).is_some());
        assert!(matches!(m.get(5, &id("p2")), Memoized::Consents(c) if c.is_empty()));
        m.clear();
        assert!(matches!(m.get(5, &id("p2")), Memoized::Unknown));
        assert!(m.all(6).is_none());
    }
}
