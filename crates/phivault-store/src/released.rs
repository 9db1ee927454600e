//! Reads and writes that need a decision of the policies (DESIGN.md invariant 5, "default
//! deny"): the store's half of the authorization, so that a route cannot skip it.
//!
//! The policies decide on a resource's facts, its patient compartment and its sensitivity
//! labels, which for a stored resource are only known once it is decrypted. So the reads that
//! serve clients return the resource sealed in an [`Unreleased`]: its facts can be looked at,
//! its content cannot, until [`Unreleased::release`] is given an [`Authorized`] proof (which
//! only `phivault_policy::PolicyEngine` makes) for a read of that type in that compartment.
//! The writes that serve clients take the proof up front and check it against the compartment
//! the store itself computes from the body, inside the write's transaction, before anything
//! is committed.
//!
//! The facts come from here, not from the caller: the compartment is the one the store sealed
//! the resource under (the same rule, [`compartment_patient_of`], picks the data key on
//! write), and the labels are read from the body the store decrypted. A proof for another
//! patient, another type or another action does not open the resource.
//!
//! The proof-free functions of [`Store`] (`read`, `create`, `search_scoped`, ...) remain for
//! the holder of the master key (the `phivault` command line: import, export, benchmarks) and
//! for tests; the server's routes are not allowed to call them (`clippy.toml` of
//! phivault-server lists them as disallowed methods, and CI denies warnings).

use phivault_fhir::{Id, ResourceType, compartment_patient_of};
use phivault_policy::{Action, Authorized, Label, labels_of};
use serde_json::Value;

use crate::{HistoryEntry, StoreError, StoredResource};

/// What the policies decide a stored resource on. `Debug` says whether it lies in a
/// compartment, never whose (logs do not name patients).
#[derive(Clone, PartialEq, Eq)]
pub struct Facts {
    rtype: ResourceType,
    /// `None`: outside every compartment (or a deletion, which has no body).
    patient: Option<Id>,
    labels: Vec<Label>,
    /// False for a deletion's history entry: there is no body to decide on.
    has_body: bool,
}

impl std::fmt::Debug for Facts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Facts")
            .field("rtype", &self.rtype)
            .field("in_compartment", &self.patient.is_some())
            .field("labels", &self.labels)
            .field("has_body", &self.has_body)
            .finish()
    }
}

impl Facts {
    /// The facts of a decrypted body of `rtype`.
    pub fn of(rtype: ResourceType, body: &Value) -> Facts {
        Facts {
            rtype,
            patient: compartment_patient_of(rtype, body),
            labels: labels_of(body),
            has_body: true,
        }
    }

    fn bodiless(rtype: ResourceType) -> Facts {
        Facts {
            rtype,
            patient: None,
            labels: Vec::new(),
            has_body: false,
        }
    }

    /// The resource type.
    pub fn rtype(&self) -> ResourceType {
        self.rtype
    }

    /// The patient whose compartment holds the resource (`None`: a directory resource).
    pub fn patient(&self) -> Option<&Id> {
        self.patient.as_ref()
    }

    /// Its sensitivity labels.
    pub fn labels(&self) -> &[Label] {
        &self.labels
    }

    /// False for a deletion in a history (nothing to decide on but the type).
    pub fn has_body(&self) -> bool {
        self.has_body
    }
}

/// The actions whose proof releases what a read returned.
const READS: [Action; 4] = [Action::Read, Action::Vread, Action::History, Action::Search];

/// Data the store read for a client, held until a decision covers it. `Debug` shows the facts
/// only.
#[must_use = "an unreleased read returns nothing until it is released with a proof"]
pub struct Unreleased<T> {
    value: T,
    facts: Facts,
}

impl<T> std::fmt::Debug for Unreleased<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Unreleased")
            .field("facts", &self.facts)
            .finish_non_exhaustive()
    }
}

impl<T> Unreleased<T> {
    pub(crate) fn new(value: T, facts: Facts) -> Self {
        Unreleased { value, facts }
    }

    /// What to decide on.
    pub fn facts(&self) -> &Facts {
        &self.facts
    }

    /// The content, when `proof` allows a read (read, vread, history or search) of this type
    /// in this compartment, or the export of this compartment by its patient (the right of
    /// access covers every type of it), or a research export of this type in this
    /// compartment (unlabelled resources only: the caller hands the content to the
    /// de-identification engine and to nothing else). A deletion in a history (no body) needs a history
    /// proof for the type. Anything else is a defect of the caller: refused, and logged.
    pub fn release(self, proof: &Authorized) -> Result<T, StoreError> {
        let facts = &self.facts;
        let ok = if facts.has_body {
            (READS.contains(&proof.action())
                && proof.covers(proof.action(), Some(facts.rtype), facts.patient.as_ref()))
                || (proof.action() == Action::ExportOwn
                    && facts.patient.is_some()
                    && proof.patient() == facts.patient.as_ref())
                || (proof.action() == Action::ExportDeidentified
                    && facts.patient.is_some()
                    && facts.labels.is_empty()
                    && proof.covers(proof.action(), Some(facts.rtype), facts.patient.as_ref()))
        } else {
            proof.action() == Action::History && proof.resource_type() == Some(facts.rtype)
        };
        if ok {
            Ok(self.value)
        } else {
            Err(undecided(facts.rtype, proof.action()))
        }
    }
}

impl Unreleased<StoredResource> {
    pub(crate) fn stored(stored: StoredResource) -> Self {
        let facts = Facts::of(stored.rtype, &stored.body);
        Unreleased::new(stored, facts)
    }
}

impl Unreleased<HistoryEntry> {
    pub(crate) fn version(rtype: ResourceType, entry: HistoryEntry) -> Self {
        let facts = match &entry.body {
            Some(body) => Facts::of(rtype, body),
            None => Facts::bodiless(rtype),
        };
        Unreleased::new(entry, facts)
    }
}

/// Checks, before a write commits, that `proof` allows one of `actions` on `rtype` in
/// `patient`'s compartment (the one the store computed from the body it writes).
pub(crate) fn check_write(
    proof: &Authorized,
    actions: &[Action],
    rtype: ResourceType,
    patient: Option<&Id>,
) -> Result<(), StoreError> {
    if actions.contains(&proof.action()) && proof.covers(proof.action(), Some(rtype), patient) {
        Ok(())
    } else {
        Err(undecided(rtype, proof.action()))
    }
}

/// The refusal of a read or write that no decision covers. A route that decided on other
/// facts than the store holds now (a concurrent write moved the resource between the decision
/// and the write) gets it too: the client may retry, and the next decision is made on what is
/// stored then.
fn undecided(rtype: ResourceType, action: Action) -> StoreError {
    tracing::error!(
        rtype = %rtype,
        action = %action,
        "the store refused a read or write that the request's decision does not cover"
    );
    StoreError::Undecided {
        rtype: rtype.to_string(),
    }
}
