//! Search parameters: definitions, index extraction, normalization, query parsing.
//!
//! The store keeps no plaintext index: for each [`IndexEntry`] it stores
//! `HMAC(index_key, tenant|type|param|value)`, so search is equality of normalized values.
//! Everything that decides *which* values are equal lives here, on both sides:
//! [`index_entries`] produces the values of a resource and [`SearchQuery::parse`] the values a
//! query looks for, through the same normalization. What each kind supports:
//!
//! * **string** (strings, HumanName and Address parts): case- and accent-insensitive,
//!   matching the whole value, a whole word, or a prefix (of the value or of a word) of at
//!   least [`MIN_PREFIX_CHARS`] characters; `:exact` matches the trimmed raw value.
//! * **token**: `code`, `system|code`, `|code` (no system); codes are case-sensitive. Over
//!   codes, strings, booleans, Coding, CodeableConcept, Identifier and ContactPoint.
//! * **reference**: `Type/id` or a bare id (meaning the parameter's only target type, else
//!   `Patient/id`); relative references only.
//! * **date**: the prefixes `eq ne gt lt ge le sa eb` with a search value at year, month or
//!   day precision (`ge2020`, `2020-03`, `lt2020-03-14`) over dates, dateTimes, instants and
//!   Periods, all as ranges of days, per R4 (`eq`: the value's range within the search range),
//!   served by covering the range with the fewest year, month and day tokens; searchable
//!   years 1800 to 2200, values outside in one bucket each side (see `date_range`, which
//!   also says where the tokens only approximate).
//! * **uri**: equality with the exact value.
//! * **number** and **quantity**: the prefixes `eq ne gt lt ge le sa eb ap` over decimals and
//!   integers, and over Quantity (Age, Duration, Count, Distance, Money) values per unit
//!   (`5.4`, `5.4|system|code`, `5.4||code-or-unit`); a value is indexed under sign, decimal
//!   exponent and leading-digit buckets, and a range is covered exactly by the fewest of them
//!   (see `number_range`).
//! * **`_lastUpdated`**: the same prefixes, over the write time the store keeps (see
//!   `last_updated`).
//!
//! The parameters of each type are generated from the specification (see `spec`). The `ap`
//! prefix on dates, times in date search values, free-text modifiers and the parameter kinds
//! a blind index does not serve (composite, special) are refused with a message saying so.

use std::collections::BTreeSet;

use serde_json::Value;
use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;

use crate::spec::{self, Step, Unsupported};

use crate::{FhirError, Id, ResourceType, ValidResource};

mod date_range;
mod last_updated;
mod number_range;
mod result_params;
mod sort;
pub use date_range::TokenTest;
pub use last_updated::TimeInterval;
pub use result_params::TotalMode;
pub use sort::{MAX_SORTED, SortKey, sort_by_keys, sort_param};

/// Shortest prefix of a name (in characters) that is indexed and can be searched as a prefix.
const MIN_PREFIX_CHARS: usize = 3;

/// Longest prefix (in characters) that is indexed; a longer query matches whole values and
/// words only. Bounds the index entries of one value.
const MAX_PREFIX_CHARS: usize = 64;

/// At most this many words of one string value are indexed as words.
const MAX_WORDS: usize = 16;

/// At most this many comma-separated values in one search parameter.
const MAX_OR_VALUES: usize = 100;

/// At most this many query parameters (repeats included) in one search: each becomes a
/// clause of one SQL statement, and databases bound a statement's depth and size.
const MAX_PARAMS: usize = 100;

/// At most this many index entries in one search, over all its parameters (bind values).
const MAX_ENTRIES: usize = 10_000;

/// Largest `_offset`: far beyond any real paging, and well inside the databases' signed
/// 64-bit `OFFSET`.
const MAX_OFFSET: usize = 1_000_000_000;

/// Default page size.
const DEFAULT_COUNT: usize = 50;

/// Largest page size.
const MAX_COUNT: usize = 1000;

/// Parameter names quoted in messages are cut to this many characters.
const MAX_NAME_CHARS: usize = 64;

/// The kind of a search parameter, which fixes how its values are normalized and matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SearchParamKind {
    /// Human names: case/accent-insensitive, prefix match (>= 3 chars) or `:exact`.
    String,
    /// `system|code`, `code`, `|code` on Coding/CodeableConcept/Identifier/code.
    Token,
    /// `Patient/123` or `123`.
    Reference,
    /// Dates as ranges of days, with order prefixes over covering tokens.
    Date,
    /// URIs matched exactly.
    Uri,
    /// Decimals and integers, with order prefixes over covering buckets.
    Number,
    /// Quantities (value and unit), with order prefixes over covering buckets per unit.
    Quantity,
}

impl SearchParamKind {
    /// The FHIR search parameter type (`string`, `token`, `reference`, `date`, `uri`).
    pub fn as_str(&self) -> &'static str {
        match self {
            SearchParamKind::String => "string",
            SearchParamKind::Token => "token",
            SearchParamKind::Reference => "reference",
            SearchParamKind::Date => "date",
            SearchParamKind::Uri => "uri",
            SearchParamKind::Number => "number",
            SearchParamKind::Quantity => "quantity",
        }
    }
}

/// A search parameter this server supports for a type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SearchParamDef {
    /// Parameter name, e.g. `family`.
    pub name: &'static str,
    /// Its kind.
    pub kind: SearchParamKind,
    /// The specification's FHIRPath expression for this type, for the CapabilityStatement.
    pub expression: &'static str,
    /// The expression compiled: the values of any of these paths are indexed.
    pub(crate) paths: &'static [&'static [Step]],
    /// For references, the types the parameter may point to (empty: any).
    pub(crate) targets: &'static [&'static str],
}

/// The parameters supported for `rtype` (not counting `_id`, `_count`, which apply to all,
/// and `_security`, see [`SECURITY`]), generated from the specification (see `spec`).
pub fn search_params(rtype: ResourceType) -> &'static [SearchParamDef] {
    spec::type_spec(rtype.as_str()).map_or(&[], |s| s.params)
}

/// The parameters of the specification for `rtype` that are not served, with why.
pub fn unsupported_params(rtype: ResourceType) -> &'static [Unsupported] {
    spec::type_spec(rtype.as_str()).map_or(&[], |s| s.unsupported)
}

/// One value to put in the blind index: `(param, normalized value)`. The store hashes
/// `tenant|type|param|value`; a query value normalized by [`SearchQuery::parse`] for the same
/// param yields the same `(param, value)` pair exactly when FHIR search semantics say it
/// matches. (So `param` may carry an internal suffix such as `family:exact`.)
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IndexEntry {
    /// Internal parameter key.
    pub param: String,
    /// Normalized value.
    pub value: String,
}

impl IndexEntry {
    fn new(param: impl Into<String>, value: impl Into<String>) -> Self {
        IndexEntry {
            param: param.into(),
            value: value.into(),
        }
    }
}

/// `_security` (security labels in `meta.security`), searchable on every type. Authorization
/// uses it to keep labelled resources out of searches by principals without a grant.
pub const SECURITY: SearchParamDef = SearchParamDef {
    name: "_security",
    kind: SearchParamKind::Token,
    expression: "Resource.meta.security",
    paths: &[&[Step::Field(&["meta"]), Step::Field(&["security"])]],
    targets: &[],
};

/// Whether the index tokens of `param` are keyed per compartment: the store puts the
/// compartment's key id into their HMAC input, so equal values in two patients' compartments
/// give unrelated tokens, and a search for such a value computes one token per compartment it
/// may look in. `_security` is: its values (HIV, substance use, mental health labels) say the
/// most about a patient, and a database reader who could match them across rows would learn
/// which patients carry them.
pub fn is_compartment_keyed(param: &str) -> bool {
    param == SECURITY.name
}

/// Every index entry of a resource (deduplicated, sorted).
pub fn index_entries(resource: &ValidResource) -> Vec<IndexEntry> {
    index_entries_of(resource.resource_type(), resource.body())
}

/// [`index_entries`] of a body of `rtype` known to be valid (for example one the store wrote
/// after validation and has just decrypted, to index it again).
pub fn index_entries_of(rtype: ResourceType, body: &Value) -> Vec<IndexEntry> {
    let mut out = BTreeSet::new();
    for def in search_params(rtype)
        .iter()
        .chain(std::iter::once(&SECURITY))
    {
        for value in values_of(body, def) {
            match def.kind {
                SearchParamKind::String => index_string(def.name, value, &mut out),
                SearchParamKind::Token => index_token(def.name, value, &mut out),
                SearchParamKind::Reference => {
                    if let Some(target) = reference_target(def, value) {
                        out.insert(IndexEntry::new(def.name, target));
                    }
                }
                SearchParamKind::Date => out.extend(date_range::index_value(def.name, value)),
                SearchParamKind::Number => {
                    out.extend(number_range::index_number_value(def.name, value));
                }
                SearchParamKind::Quantity => {
                    out.extend(number_range::index_quantity_value(def.name, value));
                }
                SearchParamKind::Uri => {
                    if let Some(uri) = value.as_str().map(str::trim).filter(|u| !u.is_empty()) {
                        out.insert(IndexEntry::new(def.name, uri));
                    }
                }
            }
        }
    }
    out.into_iter().collect()
}

/// The values a parameter's expression selects in a body, arrays flattened.
pub(crate) fn values_of<'v>(body: &'v Value, def: &SearchParamDef) -> Vec<&'v Value> {
    spec::select(body, def.paths, true)
}

/// The parts of a HumanName or an Address that a string parameter over it matches.
const NAME_AND_ADDRESS_PARTS: &[&str] = &[
    "text",
    "family",
    "given",
    "prefix",
    "suffix",
    "line",
    "city",
    "district",
    "state",
    "postalCode",
    "country",
];

/// Name entries: the normalized value, its words, their prefixes; the raw value as `:exact`.
fn index_string(param: &str, value: &Value, out: &mut BTreeSet<IndexEntry>) {
    if let Value::Object(parts) = value {
        for key in NAME_AND_ADDRESS_PARTS {
            match parts.get(*key) {
                Some(Value::Array(items)) => {
                    for item in items {
                        index_string(param, item, out);
                    }
                }
                Some(part @ Value::String(_)) => index_string(param, part, out),
                _ => {}
            }
        }
        return;
    }
    let Some(raw) = value.as_str() else {
        return;
    };
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return;
    }
    out.insert(IndexEntry::new(format!("{param}:exact"), trimmed));
    let normalized = normalize_string(trimmed);
    if normalized.is_empty() {
        return;
    }
    push_with_prefixes(param, &normalized, out);
    if normalized.contains(' ') {
        for word in normalized.split(' ').take(MAX_WORDS) {
            push_with_prefixes(param, word, out);
        }
    }
}

/// `value` and each of its prefixes of [`MIN_PREFIX_CHARS`]..=[`MAX_PREFIX_CHARS`] characters
/// (a prefix ending in a space is skipped: a normalized query never ends in one).
fn push_with_prefixes(param: &str, value: &str, out: &mut BTreeSet<IndexEntry>) {
    out.insert(IndexEntry::new(param, value));
    for (count, (end, c)) in value
        .char_indices()
        .map(|(i, c)| (i + c.len_utf8(), c))
        .enumerate()
        .map(|(n, x)| (n + 1, x))
    {
        if count > MAX_PREFIX_CHARS {
            break;
        }
        if count >= MIN_PREFIX_CHARS && c != ' ' {
            out.insert(IndexEntry::new(param, &value[..end]));
        }
    }
}

/// Token entries of a code, Coding, CodeableConcept or Identifier.
fn index_token(param: &str, value: &Value, out: &mut BTreeSet<IndexEntry>) {
    let mut push = |system: Option<&str>, code: Option<&str>| {
        let Some(code) = code.map(str::trim).filter(|c| !c.is_empty()) else {
            return;
        };
        let system = system.map(str::trim).unwrap_or_default();
        out.insert(IndexEntry::new(param, format!("{system}|{code}")));
        out.insert(IndexEntry::new(param, format!("*|{code}")));
    };
    fn text<'v>(value: &'v Value, key: &str) -> Option<&'v str> {
        value.get(key).and_then(Value::as_str)
    }
    match value {
        Value::String(code) => push(None, Some(code)),
        Value::Bool(b) => push(None, Some(if *b { "true" } else { "false" })),
        Value::Object(object) => {
            if let Some(codings) = object.get("coding").and_then(Value::as_array) {
                for coding in codings {
                    push(text(coding, "system"), text(coding, "code"));
                }
            } else if object.contains_key("value") {
                push(text(value, "system"), text(value, "value"));
            } else {
                push(text(value, "system"), text(value, "code"));
            }
        }
        _ => {}
    }
}

/// The indexed form of a Reference element for `def`: `Type/id` (relative references only),
/// of one of the parameter's target types.
pub(crate) fn reference_target(def: &SearchParamDef, value: &Value) -> Option<String> {
    let reference = value.get("reference").and_then(Value::as_str)?;
    let (rtype, id) = parse_relative_reference(reference)?;
    if !def.targets.is_empty() && !def.targets.contains(&rtype) {
        return None;
    }
    Some(format!("{rtype}/{id}"))
}

/// `Type/id` or `Type/id/_history/n` -> `(Type, id)`; anything else (absolute URLs,
/// `urn:uuid:`, `#contained`) is `None`.
pub(crate) fn parse_relative_reference(reference: &str) -> Option<(&str, Id)> {
    let parts: Vec<&str> = reference.split('/').collect();
    let (rtype, id) = match parts.as_slice() {
        [rtype, id] => (*rtype, *id),
        [rtype, id, "_history", version]
            if !version.is_empty() && version.bytes().all(|b| b.is_ascii_digit()) =>
        {
            (*rtype, *id)
        }
        _ => return None,
    };
    if !is_type_name(rtype) {
        return None;
    }
    Some((rtype, Id::parse(id).ok()?))
}

/// A FHIR resource type name: an upper-case ASCII letter, then ASCII letters.
pub(crate) fn is_type_name(s: &str) -> bool {
    s.len() <= MAX_NAME_CHARS
        && s.bytes().next().is_some_and(|b| b.is_ascii_uppercase())
        && s.bytes().all(|b| b.is_ascii_alphabetic())
}

/// Case/accent-insensitive normal form: NFKD, combining marks removed, lower-case,
/// whitespace collapsed, trimmed.
pub fn normalize_string(s: &str) -> String {
    let folded: String = s
        .nfkd()
        .filter(|c| !is_combining_mark(*c))
        .flat_map(char::to_lowercase)
        .filter(|c| !is_combining_mark(*c))
        .collect();
    let mut out = String::with_capacity(folded.len());
    for word in folded.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

/// One parsed search parameter: the entries to match (OR between them).
#[derive(Clone, PartialEq, Eq)]
pub struct SearchParam {
    /// Name as the client wrote it (for messages and self links).
    pub name: String,
    /// Values as the client wrote them (for self links only; PHI, never log).
    pub raw: String,
    /// Index entries, any of which matches.
    pub any_of: Vec<IndexEntry>,
    /// Or any of these conjunctions matches: every test of one holds (date `eq` and `ne`).
    pub conjunctions: Vec<Vec<TokenTest>>,
}

impl SearchParam {
    /// How many index entries the parameter looks for (its bind values).
    pub fn entry_count(&self) -> usize {
        self.any_of.len()
            + self
                .conjunctions
                .iter()
                .flatten()
                .map(|t| t.any_of.len())
                .sum::<usize>()
    }

    /// Whether a resource with these index entries matches: what the store's SQL computes.
    pub fn matches(&self, entries: &[IndexEntry]) -> bool {
        self.any_of.iter().any(|e| entries.contains(e))
            || self.conjunctions.iter().any(|tests| {
                tests
                    .iter()
                    .all(|t| t.any_of.iter().any(|e| entries.contains(e)) == t.present)
            })
    }

    /// Every entry the parameter looks for.
    pub fn entries(&self) -> impl Iterator<Item = &IndexEntry> {
        self.any_of.iter().chain(
            self.conjunctions
                .iter()
                .flatten()
                .flat_map(|t| t.any_of.iter()),
        )
    }
}

/// A parsed search: `_id` values, indexed parameters (AND between them), paging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchQuery {
    /// `_id` values (OR), if given.
    pub ids: Option<Vec<Id>>,
    /// Indexed parameters (AND).
    pub params: Vec<SearchParam>,
    /// `_lastUpdated` parameters (AND): each its value as written (for links; not PHI) and
    /// the write times (OR of intervals) it matches.
    pub last_updated: Vec<(String, Vec<TimeInterval>)>,
    /// Page size (`_count`, default 50, at most 1000; 0: the total only).
    pub count: usize,
    /// Offset of the page (`_offset`, default 0, our paging parameter for `next` links).
    pub offset: usize,
    /// Parameters ignored under `Prefer: handling=lenient` (names only).
    pub ignored: Vec<String>,
    /// Warnings for the searchset (a capped `_count`); no search values in them.
    pub warnings: Vec<String>,
    /// `_summary=count`: the total only (the page size is 0).
    pub summary_count: bool,
    /// Whether the searchset states its total (`_total`).
    pub total: TotalMode,
    /// `_sort` keys, in order (empty: the store's order, by id).
    pub sort: Vec<SortKey>,
    /// `_summary=true|text|data` or `_elements`: the representation of every returned
    /// resource, included ones too (see [`crate::Subset`]).
    pub subset: Option<crate::Subset>,
}

impl SearchQuery {
    /// Parses query pairs (already percent-decoded) for `rtype`. Unknown parameters,
    /// unsupported modifiers or prefixes and malformed values are errors unless `lenient`,
    /// in which case unknown parameters are recorded in `ignored` (malformed values of known
    /// parameters are still errors). `_format=json`/`application/fhir+json` is accepted and
    /// ignored. Repeating a parameter ANDs it.
    pub fn parse(
        rtype: ResourceType,
        pairs: &[(String, String)],
        lenient: bool,
    ) -> Result<SearchQuery, FhirError> {
        let mut query = SearchQuery {
            ids: None,
            params: Vec::new(),
            last_updated: Vec::new(),
            count: DEFAULT_COUNT,
            offset: 0,
            ignored: Vec::new(),
            warnings: Vec::new(),
            summary_count: false,
            total: TotalMode::Accurate,
            sort: Vec::new(),
            subset: None,
        };
        if let Some((name, _)) = pairs.get(MAX_PARAMS) {
            return Err(bad(
                name,
                format!("too many search parameters (limit {MAX_PARAMS})"),
            ));
        }
        for (name, value) in pairs {
            match name.as_str() {
                "_id" => {
                    let ids = parse_ids(value)?;
                    query.ids = Some(match query.ids.take() {
                        // `_id` repeated: AND, so only ids in both lists.
                        Some(before) => before.into_iter().filter(|i| ids.contains(i)).collect(),
                        None => ids,
                    });
                }
                "_lastUpdated" => {
                    let parts = split_unescaped(value, ',');
                    if parts.len() > MAX_OR_VALUES {
                        return Err(bad(
                            name,
                            format!("too many values (limit {MAX_OR_VALUES})"),
                        ));
                    }
                    let mut any = Vec::new();
                    for part in parts {
                        any.extend(last_updated::parse(&part).map_err(|m| bad(name, m))?);
                    }
                    query.last_updated.push((value.clone(), any));
                }
                "_count" | "_summary" | "_total" | "_totalMethod" => {
                    result_params::apply(&mut query, name, value)?;
                    if name == "_summary" {
                        crate::subset::apply_param(
                            &mut query.subset,
                            rtype,
                            name,
                            value,
                            lenient,
                            &mut query.warnings,
                        )?;
                    }
                }
                "_sort" => {
                    query.sort.extend(sort::parse(rtype, value)?);
                    if query.sort.len() > sort::MAX_SORT_KEYS {
                        return Err(bad(name, "too many sort keys in all"));
                    }
                }
                "_elements" => crate::subset::apply_param(
                    &mut query.subset,
                    rtype,
                    name,
                    value,
                    lenient,
                    &mut query.warnings,
                )?,
                "_offset" => {
                    query.offset = value
                        .trim()
                        .parse::<usize>()
                        .ok()
                        .filter(|n| *n <= MAX_OFFSET)
                        .ok_or_else(|| {
                            bad(
                                name,
                                format!("must be a non-negative integer up to {MAX_OFFSET}"),
                            )
                        })?;
                }
                "_format" => {
                    // A `+` sent unencoded arrives as a space.
                    if !matches!(
                        value.trim(),
                        "json"
                            | "application/json"
                            | "application/fhir+json"
                            | "application/fhir json"
                    ) {
                        return Err(bad(
                            name,
                            "only json, application/json and application/fhir+json are supported",
                        ));
                    }
                }
                _ => {
                    let (base, modifier) = match name.split_once(':') {
                        Some((base, modifier)) => (base, Some(modifier)),
                        None => (name.as_str(), None),
                    };
                    match search_params(rtype)
                        .iter()
                        .chain(std::iter::once(&SECURITY))
                        .find(|d| d.name == base)
                    {
                        Some(def) => query.params.push(parse_param(def, name, modifier, value)?),
                        None if lenient => query.ignored.push(truncate(name)),
                        None => match unsupported_params(rtype).iter().find(|u| u.name == base) {
                            Some(u) => {
                                return Err(bad(
                                    name,
                                    format!(
                                        "this {} parameter of {rtype} is not supported: {}",
                                        u.kind, u.reason
                                    ),
                                ));
                            }
                            None => return Err(FhirError::UnknownSearchParam(truncate(name))),
                        },
                    }
                    let entries: usize = query.params.iter().map(SearchParam::entry_count).sum();
                    if entries > MAX_ENTRIES {
                        return Err(bad(name, "the search has too many values in all"));
                    }
                }
            }
        }
        if query.summary_count {
            query.count = 0;
        }
        Ok(query)
    }
}

/// A `BadSearchValue` for `param`.
fn bad(param: &str, message: impl Into<String>) -> FhirError {
    FhirError::BadSearchValue {
        param: truncate(param),
        message: message.into(),
    }
}

/// At most [`MAX_NAME_CHARS`] characters of a client-chosen name.
fn truncate(s: &str) -> String {
    s.chars().take(MAX_NAME_CHARS).collect()
}

/// `_id=a,b`: valid ids only.
fn parse_ids(value: &str) -> Result<Vec<Id>, FhirError> {
    let parts = split_unescaped(value, ',');
    if parts.len() > MAX_OR_VALUES {
        return Err(bad(
            "_id",
            format!("too many values (limit {MAX_OR_VALUES})"),
        ));
    }
    parts
        .iter()
        .map(|p| Id::parse(unescape(p).trim()).map_err(|_| bad("_id", "not a valid id")))
        .collect()
}

/// One indexed parameter: each comma-separated value to its index entry.
fn parse_param(
    def: &SearchParamDef,
    name: &str,
    modifier: Option<&str>,
    value: &str,
) -> Result<SearchParam, FhirError> {
    let modifier_refused = |m: &str| {
        bad(
            name,
            format!(
                "modifier ':{}' is not supported on encrypted indexes",
                truncate(m)
            ),
        )
    };
    let parts = split_unescaped(value, ',');
    if parts.len() > MAX_OR_VALUES {
        return Err(bad(
            name,
            format!("too many values (limit {MAX_OR_VALUES})"),
        ));
    }
    let mut any_of = Vec::with_capacity(parts.len());
    let mut conjunctions = Vec::new();
    for part in parts {
        let entry = match def.kind {
            SearchParamKind::String => match modifier {
                None => {
                    let normalized = normalize_string(&unescape(&part));
                    if normalized.is_empty() {
                        return Err(bad(name, "empty value"));
                    }
                    IndexEntry::new(def.name, normalized)
                }
                Some("exact") => {
                    let raw = unescape(&part);
                    let raw = raw.trim();
                    if raw.is_empty() {
                        return Err(bad(name, "empty value"));
                    }
                    IndexEntry::new(format!("{}:exact", def.name), raw)
                }
                Some(m) => return Err(modifier_refused(m)),
            },
            SearchParamKind::Token => match modifier {
                None => IndexEntry::new(def.name, parse_token(name, &part)?),
                Some(m) => return Err(modifier_refused(m)),
            },
            SearchParamKind::Reference => {
                let target_type = match modifier {
                    None => None,
                    Some(m) if is_type_name(m) => Some(m),
                    Some(m) => return Err(modifier_refused(m)),
                };
                let target = parse_reference_query(def, name, target_type, &part)?;
                IndexEntry::new(def.name, target)
            }
            SearchParamKind::Uri => match modifier {
                None => {
                    let raw = unescape(&part);
                    let raw = raw.trim();
                    if raw.is_empty() {
                        return Err(bad(name, "empty value"));
                    }
                    IndexEntry::new(def.name, raw)
                }
                Some(m) => return Err(modifier_refused(m)),
            },
            SearchParamKind::Number | SearchParamKind::Quantity => match modifier {
                None => {
                    let quantity = def.kind == SearchParamKind::Quantity;
                    match number_range::parse_query(def.name, &part, quantity) {
                        Ok(date_range::Matcher::AnyOf(entries)) => {
                            for e in entries {
                                if !any_of.contains(&e) {
                                    any_of.push(e);
                                }
                            }
                            continue;
                        }
                        Ok(date_range::Matcher::Conjunctions(c)) => {
                            conjunctions.extend(c);
                            continue;
                        }
                        Err(message) => return Err(bad(name, message)),
                    }
                }
                Some(m) => return Err(modifier_refused(m)),
            },
            SearchParamKind::Date => match modifier {
                None => match date_range::parse_query(def.name, &unescape(&part)) {
                    Ok(date_range::Matcher::AnyOf(entries)) => {
                        for e in entries {
                            if !any_of.contains(&e) {
                                any_of.push(e);
                            }
                        }
                        continue;
                    }
                    Ok(date_range::Matcher::Conjunctions(c)) => {
                        conjunctions.extend(c);
                        continue;
                    }
                    Err(message) => return Err(bad(name, message)),
                },
                Some(m) => return Err(modifier_refused(m)),
            },
        };
        if !any_of.contains(&entry) {
            any_of.push(entry);
        }
    }
    Ok(SearchParam {
        name: name.to_owned(),
        raw: value.to_owned(),
        any_of,
        conjunctions,
    })
}

/// `code` -> `*|code`; `system|code` -> `system|code`; `|code` -> `|code`.
fn parse_token(name: &str, part: &str) -> Result<String, FhirError> {
    let pieces = split_unescaped(part, '|');
    match pieces.as_slice() {
        [code] => {
            let code = unescape(code);
            let code = code.trim();
            if code.is_empty() {
                return Err(bad(name, "empty value"));
            }
            Ok(format!("*|{code}"))
        }
        [system, rest @ ..] => {
            // The code is everything after the first `|`.
            let code = unescape(&rest.join("|"));
            let code = code.trim();
            if code.is_empty() {
                return Err(bad(
                    name,
                    "a system without a code (system|) is not supported; give system|code",
                ));
            }
            Ok(format!("{}|{code}", unescape(system).trim()))
        }
        [] => Err(bad(name, "empty value")),
    }
}

/// `Type/id`, `Type/id/_history/n` or a bare `id` (the `:Type` modifier's type, else the
/// parameter's only target type, else a Patient) -> `Type/id`, of one of the parameter's
/// target types.
fn parse_reference_query(
    def: &SearchParamDef,
    name: &str,
    target_type: Option<&str>,
    part: &str,
) -> Result<String, FhirError> {
    let value = unescape(part);
    let value = value.trim();
    if value.is_empty() {
        return Err(bad(name, "empty value"));
    }
    let (rtype, id) = if value.contains('/') {
        let (rtype, id) = parse_relative_reference(value).ok_or_else(|| {
            bad(
                name,
                "not a valid reference (Type/id or id; relative references only)",
            )
        })?;
        if target_type.is_some_and(|t| t != rtype) {
            return Err(bad(
                name,
                "the reference type differs from the :Type modifier",
            ));
        }
        (rtype.to_owned(), id)
    } else {
        let id = Id::parse(value).map_err(|_| bad(name, "not a valid id"))?;
        let default = match def.targets {
            [only] => only,
            _ => "Patient",
        };
        (target_type.unwrap_or(default).to_owned(), id)
    };
    if !def.targets.is_empty() && !def.targets.contains(&rtype.as_str()) {
        return Err(bad(
            name,
            match def.targets {
                [only] => format!("must reference a {only}"),
                _ => format!(
                    "must reference one of the parameter's target types ({})",
                    def.targets.join(", ")
                ),
            },
        ));
    }
    Ok(format!("{rtype}/{id}"))
}

/// Splits on `sep` where it is not escaped by a backslash; escapes are kept (see [`unescape`]).
fn split_unescaped(s: &str, sep: char) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            current.push(c);
            if let Some(next) = chars.next() {
                current.push(next);
            }
        } else if c == sep {
            parts.push(std::mem::take(&mut current));
        } else {
            current.push(c);
        }
    }
    parts.push(current);
    parts
}

/// Removes the search escapes `\,`, `\|`, `\$` and `\\`; other backslashes stay.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\'
            && let Some(&next) = chars.peek()
            && matches!(next, ',' | '|' | '$' | '\\')
        {
            out.push(next);
            chars.next();
        } else {
            out.push(c);
        }
    }
    out
}

// Values in search entries are PHI: Debug shows parameter names only.
impl std::fmt::Debug for IndexEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IndexEntry")
            .field("param", &self.param)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for SearchParam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SearchParam")
            .field("name", &self.name)
            .field("values", &self.entry_count())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::compartment_patient;
    use crate::validate::tests::{condition, observation, synthea_patient, validator};

    fn entry(param: &str, value: &str) -> IndexEntry {
        IndexEntry::new(param, value)
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn entries_of(body: serde_json::Value) -> Vec<IndexEntry> {
        index_entries(&validator().validate(body, None).unwrap())
    }

    #[test]
    fn normalization_vectors() {
        let cases = [
            ("  José  ÁLVAREZ ", "jose alvarez"),
            ("Smith", "smith"),
            ("O'Brien", "o'brien"),
            ("Zoë\tMüller\n", "zoe muller"),
            ("ＡＢＣ", "abc"),
            ("ﬁnn", "finn"),
            ("Ångström", "angstrom"),
            ("Łukasz", "łukasz"),
            ("Straße", "straße"),
            ("İstanbul", "istanbul"),
            ("Nguyễn Văn", "nguyen van"),
            ("   ", ""),
            ("", ""),
        ];
        for (input, expected) in cases {
            assert_eq!(normalize_string(input), expected, "{input:?}");
        }
    }

    #[test]
    fn every_type_has_sound_generated_parameters() {
        let mut with_identifier = 0;
        for rtype in ResourceType::all() {
            let defs = search_params(rtype);
            with_identifier += usize::from(defs.iter().any(|d| d.name == "identifier"));
            for d in defs {
                for path in d.expression.split('|') {
                    let path = path.trim().trim_start_matches('(');
                    assert!(
                        path.starts_with(&format!("{rtype}.")) || path.starts_with("Resource."),
                        "{rtype} {d:?}"
                    );
                }
                assert!(!d.paths.is_empty() && d.paths.iter().all(|p| !p.is_empty()));
                assert_eq!(defs.iter().filter(|x| x.name == d.name).count(), 1);
                assert!(!unsupported_params(rtype).iter().any(|u| u.name == d.name));
            }
        }
        assert!(with_identifier > 100, "{with_identifier}");
    }

    #[test]
    fn consent_index_entries() {
        let entries = entries_of(serde_json::json!({
            "resourceType": "Consent",
            "status": "active",
            "scope": {"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/consentscope",
                "code": "research"}]},
            "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
            "patient": {"reference": "Patient/k1"},
            "provision": {"type": "permit", "period": {"start": "2026-01-02", "end": "2027"}},
        }));
        for e in [
            entry("patient", "Patient/k1"),
            entry("status", "*|active"),
            entry(
                "scope",
                "http://terminology.hl7.org/CodeSystem/consentscope|research",
            ),
            entry("scope", "*|research"),
            entry("category", "http://loinc.org|59284-0"),
            entry("period:lo", "2026-01-02"),
            entry("period:lo", "2026-01"),
            entry("period:hi", "2027-12-31"),
        ] {
            assert!(entries.contains(&e), "{e:?} in {entries:?}");
        }
    }

    #[test]
    fn patient_index_entries() {
        let entries = entries_of(synthea_patient());
        let expected = [
            entry("family", "alvarez"),
            entry("family", "alv"),
            entry("family", "alva"),
            entry("family", "alvare"),
            entry("family:exact", "Álvarez"),
            entry("family", "smith-jones"),
            entry("family", "smi"),
            entry("given", "jose"),
            entry("given", "jos"),
            entry("given", "maria"),
            entry("given", "jo"),
            entry("given:exact", "José"),
            entry("name", "alvarez"),
            entry("name", "jose"),
            entry("name", "mr."),
            entry("name:exact", "Mr."),
            entry("identifier", "http://hl7.org/fhir/sid/us-ssn|999-41-1742"),
            entry("identifier", "*|999-41-1742"),
            entry("gender", "|male"),
            entry("gender", "*|male"),
            entry("birthdate:lo", "1970"),
            entry("birthdate:lo", "1970-04"),
            entry("birthdate:hi", "1970-04-13"),
        ];
        for e in &expected {
            assert!(entries.contains(e), "missing {e:?}");
        }
        // Two-letter prefixes are not indexed; "jo" above is a whole given name.
        assert!(!entries.contains(&entry("family", "al")));
        assert!(!entries.contains(&entry("given", "ma")));
        // Sorted and deduplicated.
        let mut sorted = entries.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted, entries);
        // Every param key is a declared parameter (or its :exact, :lo or :hi form).
        for e in &entries {
            let base = e.param.split(':').next().unwrap_or_default();
            assert!(
                search_params(ResourceType::PATIENT)
                    .iter()
                    .any(|d| d.name == base),
                "{e:?}"
            );
        }
    }

    #[test]
    fn multi_word_names_index_words_and_prefixes() {
        let entries = entries_of(json!({
            "resourceType": "Patient",
            "name": [{"family": "van der Berg"}]
        }));
        for value in [
            "van der berg",
            "van der",
            "van d",
            "van",
            "der",
            "berg",
            "ber",
        ] {
            assert!(entries.contains(&entry("family", value)), "{value}");
        }
        assert!(!entries.contains(&entry("family", "van ")));
        assert!(entries.contains(&entry("family:exact", "van der Berg")));
    }

    #[test]
    fn long_values_are_bounded() {
        let long = "x".repeat(10_000);
        let words = vec!["word"; 1000].join(" ");
        let entries = entries_of(json!({
            "resourceType": "Patient",
            "name": [{"family": long, "text": words}]
        }));
        assert!(entries.len() < 300, "{}", entries.len());
    }

    #[test]
    fn clinical_index_entries() {
        let obs = entries_of(observation());
        for e in [
            entry("code", "http://loinc.org|8302-2"),
            entry("code", "*|8302-2"),
            entry("status", "|final"),
            entry("status", "*|final"),
            entry("patient", "Patient/b0a3fa2c-6b0e-4d8a-9a43-7fdd4bb8d1c3"),
            entry("subject", "Patient/b0a3fa2c-6b0e-4d8a-9a43-7fdd4bb8d1c3"),
            entry("date:lo", "2019"),
            entry("date:hi", "2019-03"),
            entry("date:lo", "2019-03-14"),
        ] {
            assert!(obs.contains(&e), "missing {e:?} in {obs:?}");
        }
        // Category is not the code.
        assert!(!obs.contains(&entry("code", "*|vital-signs")));

        let cond = entries_of(condition());
        for e in [
            entry(
                "clinical-status",
                "http://terminology.hl7.org/CodeSystem/condition-clinical|active",
            ),
            entry("clinical-status", "*|active"),
            entry("code", "http://snomed.info/sct|44054006"),
            entry("patient", "Patient/p1"),
            entry("onset-date:lo", "2001-07-02"),
        ] {
            assert!(cond.contains(&e), "missing {e:?} in {cond:?}");
        }

        // References to other types index under subject only; absolute and urn references not.
        let enc = entries_of(json!({
            "resourceType": "Encounter", "status": "finished",
            "class": {"code": "AMB"},
            "type": [{"coding": [{"code": "x1"}]}, {"coding": [{"system": "s", "code": "x2"}]}],
            "subject": {"reference": "Group/g1"}
        }));
        assert!(enc.contains(&entry("subject", "Group/g1")));
        assert!(!enc.iter().any(|e| e.param == "patient"));
        assert!(enc.contains(&entry("type", "|x1")));
        assert!(enc.contains(&entry("type", "*|x1")));
        assert!(enc.contains(&entry("type", "s|x2")));
        assert!(enc.contains(&entry("class", "*|AMB")));
        for reference in [
            "http://other.example/fhir/Patient/p1",
            "urn:uuid:0c3151bd-1cbf-4d64-b04d-cd9187a4c6e0",
            "#p1",
        ] {
            let entries = entries_of(json!({
                "resourceType": "Condition", "subject": {"reference": reference}
            }));
            assert!(
                !entries
                    .iter()
                    .any(|e| e.param == "subject" || e.param == "patient"),
                "{reference}"
            );
        }
    }

    #[test]
    fn compartments() {
        let v = validator();
        let cases = [
            (
                synthea_patient(),
                Some("b0a3fa2c-6b0e-4d8a-9a43-7fdd4bb8d1c3"),
            ),
            (json!({"resourceType": "Patient"}), None),
            (observation(), Some("b0a3fa2c-6b0e-4d8a-9a43-7fdd4bb8d1c3")),
            (condition(), Some("p1")),
            (
                json!({"resourceType": "AllergyIntolerance", "patient": {"reference": "Patient/a1"}}),
                Some("a1"),
            ),
            (
                json!({"resourceType": "Task", "intent": "order", "status": "ready", "for": {"reference": "Patient/t1"}}),
                Some("t1"),
            ),
            (
                json!({"resourceType": "CareTeam", "subject": {"reference": "Patient/c1"}}),
                Some("c1"),
            ),
            (
                json!({"resourceType": "Consent", "status": "active", "scope": {"text": "x"},
                    "category": [{"text": "x"}], "patient": {"reference": "Patient/k1"}}),
                Some("k1"),
            ),
            (
                json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                    "subject": {"reference": "Group/g1"}}),
                None,
            ),
            (json!({"resourceType": "Practitioner", "id": "d1"}), None),
            (json!({"resourceType": "Organization", "id": "o1"}), None),
        ];
        for (body, expected) in cases {
            let resource = v.validate(body, None).unwrap();
            assert_eq!(
                compartment_patient(&resource).as_ref().map(Id::as_str),
                expected,
                "{resource:?}"
            );
        }
    }

    #[test]
    fn query_vectors() {
        let p = ResourceType::PATIENT;
        let obs = ResourceType::parse("Observation").unwrap();
        // (type, pairs, expected any_of of each param)
        type Case = (ResourceType, Vec<(String, String)>, Vec<Vec<IndexEntry>>);
        let cases: Vec<Case> = vec![
            (
                p,
                pairs(&[("family", "Smi")]),
                vec![vec![entry("family", "smi")]],
            ),
            (
                p,
                pairs(&[("family", " ÁLVAREZ ")]),
                vec![vec![entry("family", "alvarez")]],
            ),
            (
                p,
                pairs(&[("family", "Li")]),
                vec![vec![entry("family", "li")]],
            ),
            (
                p,
                pairs(&[("family:exact", "Álvarez")]),
                vec![vec![entry("family:exact", "Álvarez")]],
            ),
            (
                p,
                pairs(&[("name", "jo,smith")]),
                vec![vec![entry("name", "jo"), entry("name", "smith")]],
            ),
            (
                p,
                pairs(&[("name", r"a\,b")]),
                vec![vec![entry("name", "a,b")]],
            ),
            (
                p,
                pairs(&[("given", "Jo"), ("given", "Mar")]),
                vec![vec![entry("given", "jo")], vec![entry("given", "mar")]],
            ),
            (
                p,
                pairs(&[("gender", "male")]),
                vec![vec![entry("gender", "*|male")]],
            ),
            (
                p,
                pairs(&[("identifier", "http://hl7.org/fhir/sid/us-ssn|999-41-1742")]),
                vec![vec![entry(
                    "identifier",
                    "http://hl7.org/fhir/sid/us-ssn|999-41-1742",
                )]],
            ),
            (
                p,
                pairs(&[("identifier", "|abc")]),
                vec![vec![entry("identifier", "|abc")]],
            ),
            (
                p,
                pairs(&[("identifier", r"s|a\|b")]),
                vec![vec![entry("identifier", "s|a|b")]],
            ),
            (
                obs,
                pairs(&[("code", "http://loinc.org|8302-2")]),
                vec![vec![entry("code", "http://loinc.org|8302-2")]],
            ),
            (
                obs,
                pairs(&[("code", "8302-2")]),
                vec![vec![entry("code", "*|8302-2")]],
            ),
            (
                obs,
                pairs(&[("code", "A,a")]),
                vec![vec![entry("code", "*|A"), entry("code", "*|a")]],
            ),
            (
                obs,
                pairs(&[("patient", "123")]),
                vec![vec![entry("patient", "Patient/123")]],
            ),
            (
                obs,
                pairs(&[("patient", "Patient/123")]),
                vec![vec![entry("patient", "Patient/123")]],
            ),
            (
                obs,
                pairs(&[("subject", "123")]),
                vec![vec![entry("subject", "Patient/123")]],
            ),
            (
                obs,
                pairs(&[("subject", "Group/9")]),
                vec![vec![entry("subject", "Group/9")]],
            ),
            (
                obs,
                pairs(&[("subject:Group", "9")]),
                vec![vec![entry("subject", "Group/9")]],
            ),
            (
                obs,
                pairs(&[("subject", "Patient/1/_history/2")]),
                vec![vec![entry("subject", "Patient/1")]],
            ),
            (
                obs,
                pairs(&[("_format", "application/fhir+json"), ("_count", "10")]),
                vec![],
            ),
        ];
        for (rtype, pairs, expected) in cases {
            let q = SearchQuery::parse(rtype, &pairs, false)
                .unwrap_or_else(|e| panic!("{pairs:?}: {e}"));
            let got: Vec<Vec<IndexEntry>> = q.params.iter().map(|p| p.any_of.clone()).collect();
            assert_eq!(got, expected, "{pairs:?}");
            for (param, (name, raw)) in q.params.iter().zip(&pairs) {
                assert_eq!(&param.name, name);
                assert_eq!(&param.raw, raw);
            }
        }
    }

    #[test]
    fn index_and_query_agree() {
        let resource = validator().validate(synthea_patient(), None).unwrap();
        let entries = index_entries(&resource);
        for (name, value) in [
            ("family", "álvarez"),
            ("family", "ALV"),
            ("family", "smith-j"),
            ("family:exact", "Álvarez"),
            ("given", "MARIA"),
            ("name", "Mr."),
            ("identifier", "999-41-1742"),
            ("gender", "male"),
            ("birthdate", "1970-04"),
        ] {
            let q =
                SearchQuery::parse(ResourceType::PATIENT, &pairs(&[(name, value)]), false).unwrap();
            assert!(q.params[0].matches(&entries), "{name}={value}");
        }
        // Too short for a prefix; not a whitespace-separated word; exact is exact; codes and
        // dates are not folded.
        for (name, value) in [
            ("family", "al"),
            ("name", "mr"),
            ("family", "jones"),
            ("family:exact", "alvarez"),
            ("gender", "MALE"),
            ("birthdate", "1970-05"),
        ] {
            let q =
                SearchQuery::parse(ResourceType::PATIENT, &pairs(&[(name, value)]), false).unwrap();
            assert!(!q.params[0].matches(&entries), "{name}={value}");
        }
    }

    #[test]
    fn control_parameters() {
        let p = ResourceType::PATIENT;
        let q = SearchQuery::parse(p, &[], false).unwrap();
        assert_eq!((q.count, q.offset, q.ids), (50, 0, None));
        let q = SearchQuery::parse(
            p,
            &pairs(&[
                ("_id", "a,b"),
                ("_id", "b,c"),
                ("_count", "1000"),
                ("_offset", "20"),
            ]),
            false,
        )
        .unwrap();
        assert_eq!(q.ids, Some(vec![Id::parse("b").unwrap()]));
        assert_eq!((q.count, q.offset), (1000, 20));
        let q = SearchQuery::parse(
            p,
            &pairs(&[("_containedType", "x"), ("foo:bar", "y"), ("family", "x")]),
            true,
        )
        .unwrap();
        assert_eq!(
            q.ignored,
            vec!["_containedType".to_owned(), "foo:bar".to_owned()]
        );
        assert_eq!(q.params.len(), 1);
    }

    #[test]
    fn query_errors() {
        const MARKER: &str = "ZQXMARKER";
        let p = ResourceType::PATIENT;
        let obs = ResourceType::parse("Observation").unwrap();
        let org = ResourceType::parse("Organization").unwrap();
        // (type, name, value, expected param in the error, phrase) ; param "" = UnknownSearchParam
        let cases = [
            (
                p,
                "family:contains",
                "ZQXMARKER",
                "family:contains",
                "modifier ':contains' is not supported",
            ),
            (
                p,
                "family:missing",
                "true",
                "family:missing",
                "not supported",
            ),
            (p, "family", "  ", "family", "empty value"),
            (p, "family", "", "family", "empty value"),
            (p, "gender:not", "male", "gender:not", "not supported"),
            (
                p,
                "identifier",
                "http://ZQXMARKER|",
                "identifier",
                "system without a code",
            ),
            (p, "birthdate", "ap1970", "birthdate", "prefix 'ap'"),
            (p, "birthdate", "lt1799", "birthdate", "from 1800 to 2200"),
            (
                p,
                "birthdate",
                "1970-01-01T10:00:00Z",
                "birthdate",
                "a time is not supported",
            ),
            (p, "birthdate", "1970-13", "birthdate", "not a valid date"),
            (
                p,
                "birthdate",
                "1970-02-30",
                "birthdate",
                "not a valid date",
            ),
            (p, "birthdate", "ZQXMARKER", "birthdate", "not a valid date"),
            (p, "birthdate", "70", "birthdate", "not a valid date"),
            (p, "birthdate", "0000", "birthdate", "not a valid date"),
            (
                obs,
                "patient",
                "Patient/ZQX MARKER",
                "patient",
                "not a valid reference",
            ),
            (obs, "patient", "ZQX MARKER", "patient", "not a valid id"),
            (
                obs,
                "patient",
                "Group/1",
                "patient",
                "must reference a Patient",
            ),
            (
                obs,
                "patient",
                "http://x.example/Patient/1",
                "patient",
                "not a valid reference",
            ),
            (
                obs,
                "subject:Patient",
                "Group/1",
                "subject:Patient",
                "differs",
            ),
            (
                obs,
                "subject:identifier",
                "x",
                "subject:identifier",
                "not supported",
            ),
            (p, "_id", "ZQX MARKER", "_id", "not a valid id"),
            (p, "_count", "-1", "_count", "non-negative integer"),
            (p, "_count", "ten", "_count", "non-negative integer"),
            (p, "_offset", "-5", "_offset", "non-negative"),
            (
                p,
                "_offset",
                "9223372036854775808",
                "_offset",
                "up to 1000000000",
            ),
            (p, "_offset", "1000000001", "_offset", "up to 1000000000"),
            (p, "_format", "xml", "_format", "only json"),
            (
                p,
                "family",
                &vec!["a"; 101].join(","),
                "family",
                "too many values",
            ),
            (org, "family", "x", "", ""),
            (p, "code", "x", "", ""),
            (p, "_containedType", "x", "", ""),
            (p, "name.family", "x", "", ""),
        ];
        for (rtype, name, value, param, phrase) in cases {
            let err = SearchQuery::parse(rtype, &pairs(&[(name, value)]), true)
                .err()
                .filter(|_| !param.is_empty())
                .or_else(|| SearchQuery::parse(rtype, &pairs(&[(name, value)]), false).err())
                .unwrap_or_else(|| panic!("{name}={value} parsed"));
            match (&err, param) {
                (FhirError::UnknownSearchParam(n), "") => assert_eq!(n, name),
                (
                    FhirError::BadSearchValue {
                        param: got,
                        message,
                    },
                    _,
                ) => {
                    assert_eq!(got, param, "{name}={value}");
                    assert!(message.contains(phrase), "{name}={value}: {message}");
                }
                _ => panic!("{name}={value}: {err:?}"),
            }
            assert!(!err.to_string().contains(MARKER), "{err}");
            assert!(!err.to_string().contains("ZQX MARKER"), "{err}");
        }
    }

    #[test]
    fn searches_are_bounded_in_parameters() {
        let p = ResourceType::parse("Patient").unwrap();
        let repeated = |n: usize| vec![("family".to_owned(), "smith".to_owned()); n];
        assert_eq!(
            SearchQuery::parse(p, &repeated(MAX_PARAMS), false)
                .unwrap()
                .params
                .len(),
            MAX_PARAMS
        );
        for n in [MAX_PARAMS + 1, 1_100] {
            match SearchQuery::parse(p, &repeated(n), false) {
                Err(FhirError::BadSearchValue { param, message }) => {
                    assert_eq!(param, "family");
                    assert!(message.contains("too many search parameters"), "{message}");
                }
                other => panic!("{n}: {other:?}"),
            }
        }
        let offset = |v: &str| SearchQuery::parse(p, &pairs(&[("_offset", v)]), false);
        assert_eq!(offset("1000000000").unwrap().offset, MAX_OFFSET);
        for v in [
            "9223372036854775807",
            "9223372036854775808",
            "18446744073709551616",
        ] {
            assert!(
                matches!(offset(v), Err(FhirError::BadSearchValue { .. })),
                "{v}"
            );
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod debug_tests {
    use super::*;

    #[test]
    fn debug_output_hides_search_values() {
        let pairs = vec![("family".to_owned(), "Zqmarkerfamily".to_owned())];
        let q = SearchQuery::parse(ResourceType::PATIENT, &pairs, false).unwrap();
        let shown = format!("{q:?}").to_lowercase();
        assert!(shown.contains("family"));
        assert!(!shown.contains("zqmarker"), "{shown}");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod security_tests {
    use super::*;
    use crate::Validator;
    use serde_json::json;

    #[test]
    fn security_labels_and_participants_are_indexed() {
        let v = Validator::new().unwrap();
        let p = v
            .validate(
                json!({"resourceType": "Patient", "meta": {"security": [{
                    "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "PSY"}]}}),
                None,
            )
            .unwrap();
        let entries = index_entries(&p);
        let q = SearchQuery::parse(
            ResourceType::PATIENT,
            &[("_security".to_owned(), "PSY".to_owned())],
            false,
        )
        .unwrap();
        assert!(entries.contains(&q.params[0].any_of[0]));
        let ct = v
            .validate(
                json!({"resourceType": "CareTeam", "subject": {"reference": "Patient/p1"},
                       "participant": [{"member": {"reference": "Practitioner/dr1"}}]}),
                None,
            )
            .unwrap();
        let q = SearchQuery::parse(
            ResourceType::parse("CareTeam").unwrap(),
            &[("participant".to_owned(), "Practitioner/dr1".to_owned())],
            false,
        )
        .unwrap();
        assert!(index_entries(&ct).contains(&q.params[0].any_of[0]));
    }
}
