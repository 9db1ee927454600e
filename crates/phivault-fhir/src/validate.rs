//! Validation against the official FHIR R4 JSON schema.

use serde_json::Value;

use crate::{FhirError, Id, ResourceType};

/// A resource body that passed validation for its type. Only [`Validator`] makes one.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidResource {
    rtype: ResourceType,
    body: Value,
}

impl ValidResource {
    /// The resource type.
    pub fn resource_type(&self) -> ResourceType {
        self.rtype
    }
    /// The body (a JSON object with `resourceType`).
    pub fn body(&self) -> &Value {
        &self.body
    }
    /// The body's `id`, if any (already checked to be a valid id).
    pub fn id(&self) -> Option<Id> {
        self.body
            .get("id")
            .and_then(Value::as_str)
            .and_then(|s| Id::parse(s).ok())
    }
    /// Takes the body.
    pub fn into_body(self) -> Value {
        self.body
    }
    /// Sets `id` and `meta.versionId`/`meta.lastUpdated` (server-assigned; keeps other meta).
    /// Keeps validity: the values set are valid id, id and instant.
    pub fn stamp(&mut self, id: &Id, version: u64, last_updated: &str) {
        todo!()
    }
}

/// Validates bodies against the official R4 JSON schema (shipped in `schema/`).
/// Building one compiles the schema: build once, share (it is `Send + Sync`).
pub struct Validator {
    // implementation-defined
}

impl std::fmt::Debug for Validator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Validator").finish_non_exhaustive()
    }
}

impl Validator {
    /// Compiles the schema.
    pub fn new() -> Result<Self, FhirError> {
        todo!()
    }

    /// Parses JSON bytes and validates them as a resource. With `expected`, the body's
    /// `resourceType` must be that type ([`FhirError::WrongType`]); the type must be supported
    /// ([`FhirError::UnknownType`]); malformed JSON is [`FhirError::MalformedJson`]; a body
    /// that breaks the schema is [`FhirError::Invalid`] with one issue per problem (at most
    /// 20), each with its path (`Patient.name[0].family`) and a message that never echoes the
    /// offending value.
    pub fn parse(
        &self,
        bytes: &[u8],
        expected: Option<ResourceType>,
    ) -> Result<ValidResource, FhirError> {
        todo!()
    }

    /// Validates an already-parsed JSON value, as [`Validator::parse`].
    pub fn validate(
        &self,
        body: Value,
        expected: Option<ResourceType>,
    ) -> Result<ValidResource, FhirError> {
        todo!()
    }
}
