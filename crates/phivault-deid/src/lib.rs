//! De-identification of FHIR R4 resources for research and analytics (HIPAA 45 CFR 164.514,
//! GDPR art. 4(5) and 89).
//!
//! What this crate owns: the rule engine ([`Deidentifier`]), its configuration ([`Config`],
//! read from TOML, with the shipped presets `safe-harbor`, `limited-data-set` and
//! `gdpr-pseudonymization`), the project key that makes pseudonyms stable and dates shift
//! consistently ([`ProjectKey`]), and one export from patients to NDJSON with its report and
//! its re-identification risk ([`Run`], [`Report`], [`Risk`]). It does no I/O but reading a
//! key file: the command line and the server choose the patients (by consent), read the
//! store, and audit.
//!
//! What it guarantees:
//! - **Allow-list**: an element, extension or resource type without a rule is never output;
//!   free text is output only where a rule names it exactly, scrubbed of the patient's own
//!   identifiers.
//! - **Dates at the configured precision**: every date a rule keeps goes through the date
//!   policy (year, shift, keep, redact), dates written in kept text included.
//! - **Keyed and stable**: the same input and key give the same pseudonyms and the same date
//!   offsets in every export; another key shares none of them. A patient's dates all move by
//!   one offset (never 0, at most `date_shift_max_days`), so intervals survive exactly.
//! - **Measured**: every export reports k-anonymity and l-diversity over the configured
//!   quasi-identifiers of what it releases, and can withhold classes smaller than k.
//! - **No values in errors, reports or `Debug` output.**
//!
//! `docs/deidentification.md` lists, class by class, how the Safe Harbor preset removes each
//! of the 18 identifiers.

#![forbid(unsafe_code)]

mod config;
mod dates;
mod engine;
mod error;
mod key;
mod risk;
mod run;
mod scrub;
mod zip3;

pub use config::{
    Config, DatePolicy, Generalization, Method, PRESETS, QuasiIdentifier, Reduce, Rule,
};
pub use engine::{Deidentifier, PatientContext};
pub use error::DeidError;
pub use key::ProjectKey;
pub use risk::Risk;
pub use run::{Release, Report, Run, TypeCounts};
