//! Transaction and batch Bundles.

use std::collections::HashMap;

use serde_json::Value;

use crate::{FhirError, Id, ResourceType, ValidResource, Validator};

/// Transaction (atomic) or batch (independent entries).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BundleKind {
    /// All or nothing.
    Transaction,
    /// Each entry on its own.
    Batch,
}

/// HTTP method of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryMethod {
    /// GET (read or search).
    Get,
    /// POST (create).
    Post,
    /// PUT (update or create with id).
    Put,
    /// DELETE.
    Delete,
}

/// The parsed `request.url` of an entry (relative: `Type`, `Type/id`, `Type/id/_history/v`,
/// `Type?query`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryUrl {
    /// Resource type.
    pub rtype: ResourceType,
    /// Id, when present.
    pub id: Option<Id>,
    /// Version, when `_history/v` is present.
    pub version: Option<u64>,
    /// Decoded query pairs, when `?` is present (search).
    pub query: Vec<(String, String)>,
}

/// One entry of a transaction or batch request.
#[derive(Debug, Clone)]
pub struct BundleEntry {
    /// `fullUrl` (e.g. `urn:uuid:...`), if any.
    pub full_url: Option<String>,
    /// Method.
    pub method: EntryMethod,
    /// Parsed URL.
    pub url: EntryUrl,
    /// `request.ifMatch` version (from `W/"3"`), if any.
    pub if_match: Option<u64>,
    /// The resource (POST/PUT), validated, with its type equal to `url.rtype`.
    pub resource: Option<ValidResource>,
}

/// A transaction or batch request.
#[derive(Debug, Clone)]
pub struct BundleRequest {
    /// Kind.
    pub kind: BundleKind,
    /// Entries in document order.
    pub entries: Vec<BundleEntry>,
}

impl BundleRequest {
    /// Parses a Bundle body of type `transaction` or `batch`, validating each entry's
    /// resource. More than `max_entries` entries is [`FhirError::BadBundle`]. For a
    /// transaction, any bad entry fails the whole bundle ([`FhirError::BadBundleEntry`]
    /// naming its index). For a batch, entries that fail to parse are also an error here
    /// (simplest correct behaviour: a client mistake in the request document).
    pub fn parse(
        validator: &Validator,
        body: Value,
        max_entries: usize,
    ) -> Result<BundleRequest, FhirError> {
        todo!()
    }
}

/// Replaces every `reference` string inside `body` that is a key of `map` (e.g.
/// `urn:uuid:...`) by the mapped value (e.g. `Patient/123`). Returns how many were replaced.
pub fn rewrite_references(body: &mut Value, map: &HashMap<String, String>) -> usize {
    todo!()
}
