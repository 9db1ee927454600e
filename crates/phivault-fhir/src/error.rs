//! The error of this crate, with FHIR issue codes.

/// FHIR `OperationOutcome.issue.code` values used here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum IssueCode {
    /// Content invalid against the specification or a profile (`invalid`).
    Invalid,
    /// A structural issue in the content (`structure`).
    Structure,
    /// A required element is missing (`required`).
    Required,
    /// An element or header value is invalid (`value`).
    Value,
    /// The operation or parameter is not supported (`not-supported`).
    NotSupported,
    /// The reference could not be resolved / the resource does not exist (`not-found`).
    NotFound,
    /// The resource was deleted (`deleted`).
    Deleted,
    /// Version conflict (`conflict`).
    Conflict,
    /// Content too long or too many entries (`too-long`).
    TooLong,
    /// Too costly: too many entries / results (`too-costly`).
    TooCostly,
    /// Authentication needed (`login`).
    Login,
    /// Access denied (`forbidden`).
    Forbidden,
    /// Integrity failure of stored data (`exception`).
    Exception,
    /// Transient problem (`transient`).
    Transient,
    /// Request processing failed (`processing`).
    Processing,
    /// Informational note, e.g. on success (`informational`).
    Informational,
    /// A conditional reference or operation matched more than one resource
    /// (`multiple-matches`).
    MultipleMatches,
}

impl IssueCode {
    /// The FHIR code.
    pub fn as_str(&self) -> &'static str {
        match self {
            IssueCode::Invalid => "invalid",
            IssueCode::Structure => "structure",
            IssueCode::Required => "required",
            IssueCode::Value => "value",
            IssueCode::NotSupported => "not-supported",
            IssueCode::NotFound => "not-found",
            IssueCode::Deleted => "deleted",
            IssueCode::Conflict => "conflict",
            IssueCode::TooLong => "too-long",
            IssueCode::TooCostly => "too-costly",
            IssueCode::Login => "login",
            IssueCode::Forbidden => "forbidden",
            IssueCode::Exception => "exception",
            IssueCode::Transient => "transient",
            IssueCode::Processing => "processing",
            IssueCode::Informational => "informational",
            IssueCode::MultipleMatches => "multiple-matches",
        }
    }
}

/// One problem found in a body, with the FHIRPath-like location of the element
/// (e.g. `Patient.name[0].family`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// Issue code.
    pub code: IssueCode,
    /// Location, like `Patient.name[0].family`, or empty when it concerns the whole body.
    pub path: String,
    /// What is wrong, for the client. Never echoes element values (they can be PHI).
    pub message: String,
}

/// Errors of this crate. Messages name paths and parameters, never element values.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum FhirError {
    /// The body is not JSON.
    #[error("the body is not valid JSON: {0}")]
    MalformedJson(String),
    /// Not a supported resource type.
    #[error("unknown or unsupported resource type '{0}'")]
    UnknownType(String),
    /// The body's resourceType differs from the one expected.
    #[error("resourceType '{found}' does not match the expected type '{expected}'")]
    WrongType {
        /// Expected type.
        expected: String,
        /// Type found in the body.
        found: String,
    },
    /// Not a valid FHIR id.
    #[error("'{0}' is not a valid FHIR id ([A-Za-z0-9-.]{{1,64}})")]
    InvalidId(String),
    /// The body does not conform to the R4 structure definitions.
    #[error("the resource does not conform to FHIR R4: {}", .0.first().map(|i| format!("{}: {}", i.path, i.message)).unwrap_or_default())]
    Invalid(Vec<Issue>),
    /// A search parameter is unknown or unsupported.
    #[error("unknown or unsupported search parameter '{0}'")]
    UnknownSearchParam(String),
    /// A search parameter value is malformed or uses an unsupported modifier/prefix.
    #[error("search parameter '{param}': {message}")]
    BadSearchValue {
        /// Parameter name.
        param: String,
        /// What is wrong.
        message: String,
    },
    /// A Bundle is not a valid transaction or batch.
    #[error("Bundle.entry[{index}]: {message}")]
    BadBundleEntry {
        /// Entry index.
        index: usize,
        /// What is wrong.
        message: String,
    },
    /// A Bundle-level problem (type, structure).
    #[error("Bundle: {0}")]
    BadBundle(String),
    /// A Bundle has more entries than the configured limit.
    #[error("Bundle: too many entries: {count} (limit {limit})")]
    TooManyEntries {
        /// Entries in the Bundle.
        count: usize,
        /// The configured limit.
        limit: usize,
    },
    /// A conditional reference matches more than one resource (412, as FHIR answers a
    /// conditional operation with several matches).
    #[error("{path}: the conditional reference matches more than one {target}")]
    AmbiguousReference {
        /// The element holding the reference.
        path: String,
        /// The referenced type.
        target: String,
    },
    /// A conditional create (`If-None-Exist`, `ifNoneExist`), update or delete matches more
    /// than one resource the caller may read (412).
    #[error("{path}: the condition matches more than one {target}")]
    MultipleMatches {
        /// Where the condition is (`If-None-Exist`, `Bundle.entry[2].request.ifNoneExist`).
        path: String,
        /// The searched type.
        target: String,
    },
    /// A sorted search matches more resources than the server sorts (each is decrypted to be
    /// sorted): the client narrows the search.
    #[error(
        "_sort: the search matches more than {limit} resources, too costly to sort; narrow the search"
    )]
    TooCostlyToSort {
        /// The most matches sorted.
        limit: usize,
    },
    /// A body to write carries the `SUBSETTED` tag: a partial representation (`_summary`,
    /// `_elements`), which would erase what it left out.
    #[error(
        "the resource is tagged SUBSETTED (a partial representation from _summary or _elements) and cannot be written: read it whole, then write it"
    )]
    Subsetted,
    /// The shipped FHIR schema could not be loaded or compiled: a fault of the build, not of
    /// the request (a server should not start with it).
    #[error("internal: the FHIR schema could not be loaded: {0}")]
    SchemaUnavailable(String),
}

impl FhirError {
    /// The issues to put in an OperationOutcome.
    pub fn issues(&self) -> Vec<Issue> {
        match self {
            FhirError::Invalid(issues) => issues.clone(),
            other => vec![Issue {
                code: match other {
                    FhirError::UnknownType(_) | FhirError::UnknownSearchParam(_) => {
                        IssueCode::NotSupported
                    }
                    FhirError::MalformedJson(_) => IssueCode::Structure,
                    FhirError::TooManyEntries { .. } | FhirError::TooCostlyToSort { .. } => {
                        IssueCode::TooCostly
                    }
                    FhirError::AmbiguousReference { .. } | FhirError::MultipleMatches { .. } => {
                        IssueCode::MultipleMatches
                    }
                    FhirError::SchemaUnavailable(_) => IssueCode::Exception,
                    _ => IssueCode::Invalid,
                },
                path: match other {
                    FhirError::BadBundleEntry { index, .. } => format!("Bundle.entry[{index}]"),
                    FhirError::AmbiguousReference { path, .. }
                    | FhirError::MultipleMatches { path, .. } => path.clone(),
                    _ => String::new(),
                },
                message: other.to_string(),
            }],
        }
    }
}
