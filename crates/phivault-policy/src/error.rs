//! The error of this crate.

use std::fmt;
use std::path::PathBuf;

/// One problem found in a policy set: which policy, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyProblem {
    /// The `@id` of the policy (or Cedar's generated id when it has none).
    pub policy: String,
    /// What is wrong, in Cedar's words.
    pub message: String,
}

impl fmt::Display for PolicyProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "policy `{}`: {}", self.policy, self.message)
    }
}

/// Everything that can go wrong in this crate. Decisions themselves never fail: a request that
/// cannot be decided is [`Denied`](crate::Denied), not an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// `X-Purpose-Of-Use` is not one of the HL7 PurposeOfUse codes this server knows.
    #[error("unknown purpose of use `{0}`")]
    UnknownPurpose(String),
    /// A role name is not one of admin, clinician, patient, researcher, auditor, app.
    #[error("unknown role `{0}`")]
    UnknownRole(String),
    /// A sensitivity label code is not one this server knows.
    #[error("unknown sensitivity label `{0}`")]
    UnknownLabel(String),
    /// A SMART scope does not parse.
    #[error("invalid SMART scope `{scope}`: {reason}")]
    InvalidScope {
        /// The scope as written (truncated).
        scope: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A principal cannot be built as asked (e.g. a user with the `app` role).
    #[error("invalid principal: {0}")]
    InvalidPrincipal(&'static str),
    /// A break-the-glass claim is malformed (empty reason, window out of bounds).
    #[error("invalid break-the-glass claim: {0}")]
    InvalidBreakGlass(&'static str),
    /// The purposes of use configured for a role cannot be used as written.
    #[error("invalid purposes of use for a role: {0}")]
    InvalidRolePurposes(String),
    /// A patient-privacy or research `Consent` cannot be applied as written (422 at the
    /// edge). `path` locates the problem (`Consent.provision.provision[1]`); the message never
    /// echoes element values.
    #[error("{path}: {message}")]
    InvalidConsent {
        /// Where in the Consent.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The built-in schema or policies do not load (a bug in this crate, caught by its tests).
    #[error("built-in policy configuration is broken: {0}")]
    BuiltIn(String),
    /// Policy text does not parse.
    #[error("policies do not parse: {0}")]
    Parse(String),
    /// Policies parse but are refused: invalid against the schema, duplicate ids, templates.
    #[error("{} problem(s) in the policies: {}", .0.len(), ProblemList(.0))]
    Invalid(Vec<PolicyProblem>),
    /// A policy file cannot be read.
    #[error("cannot read policy file {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

struct ProblemList<'a>(&'a [PolicyProblem]);

impl fmt::Display for ProblemList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// Truncates outside input before it goes into an error message.
pub(crate) fn clip(s: &str) -> String {
    s.chars().take(80).collect()
}
