//! FHIR R4 JSON handling for phivault, without I/O.
//!
//! This crate owns what a FHIR request means: which resource types exist here
//! ([`ResourceType`]), what a valid id is ([`Id`]), whether a body conforms to the official R4
//! structure definitions ([`Validator`], which yields a [`ValidResource`] only for conforming
//! bodies), which types, compartments and search parameters FHIR R4 defines (tables generated
//! at build time from the official definitions vendored in `data/`), which patient
//! compartment a resource belongs to ([`compartment_patient`], the references that must be
//! resolved before it can be known: [`patient_links`], and the rules a body must keep:
//! [`check_compartment`]), which
//! normalized values each search parameter indexes ([`index_entries`]) and how a search query
//! parses ([`SearchQuery::parse`]), how transaction and batch Bundles read
//! ([`BundleRequest`]), which elements a `_summary` or `_elements` subset keeps ([`Subset`]),
//! and how errors are told to clients ([`OperationOutcome`]).
//!
//! Guarantees: every public parser returns a typed value or a [`FhirError`] naming the path of
//! the offending element; nothing here panics on input. Index values and query values go
//! through the same normalization, so a value found by search is exactly a value indexed.

mod bundle;
mod chain;
mod compartment;
pub mod conditional;
mod error;
mod include;
pub mod json;
mod outcome;
mod search;
mod spec;
#[cfg(test)]
mod spec_tests;
mod subset;
mod types;
mod validate;

pub use bundle::{
    BundleEntry, BundleKind, BundleRequest, EntryMethod, EntryUrl, rewrite_references,
};
pub use chain::{Chain, Chains, Has, split_chains};
pub use compartment::{
    LinkKind, PatientLink, check_compartment, check_compartment_of, check_patient_links,
    compartment_params, compartment_patient, compartment_patient_of, compartment_patients_of,
    patient_links, patient_links_of,
};
pub use error::{FhirError, Issue, IssueCode};
pub use include::{Include, include_values, references_through, revinclude_values, split_includes};
pub use outcome::OperationOutcome;
pub use search::{
    IndexEntry, MAX_SORTED, SECURITY, SearchParam, SearchParamDef, SearchParamKind, SearchQuery,
    SortKey, TimeInterval, TokenTest, TotalMode, index_entries, index_entries_of,
    is_compartment_keyed, normalize_string, search_params, sort_by_keys, sort_param,
    unsupported_params,
};
pub use spec::{Step, Unsupported, param_counts};
pub use subset::{SUBSETTED, SUBSETTED_SYSTEM, Subset, is_subsetted};
pub use types::{Id, ResourceType};
pub use validate::{ValidResource, Validator};
