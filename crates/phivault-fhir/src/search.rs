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
use unions::union_parts;

mod date_range;
mod last_updated;
mod number_range;
mod result_params;
mod sort;
mod unions;
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
        .filter(|d| union_parts(rtype, d.name).is_none())
    {
        index_param(body, def, &mut out);
    }
    out.into_iter().collect()
}

/// Adds the index entries of parameter `def` of `body` to `out`.
fn index_param(body: &Value, def: &SearchParamDef, out: &mut BTreeSet<IndexEntry>) {
    for value in values_of(body, def) {
        match def.kind {
            SearchParamKind::String => index_string(def.name, value, out),
            SearchParamKind::Token => index_token(def.name, value, out),
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
                        Some(def) => {
                            let param = parse_param(def, name, modifier, value)?;
                            query.params.push(match union_parts(rtype, def.name) {
                                Some(parts) => param.into_union(def.name, parts),
                                None => param,
                            });
                        }
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
            SearchParamKind::Number | SearchParamKind::Quantity | SearchParamKind::Date => {
                if let Some(m) = modifier {
                    return Err(modifier_refused(m));
                }
                // Ranges: the fewest bucket tokens covering the range (see `date_range` and
                // `number_range`), as alternatives or conjunctions.
                let matcher = if def.kind == SearchParamKind::Date {
                    date_range::parse_query(def.name, &unescape(&part))
                } else {
                    let quantity = def.kind == SearchParamKind::Quantity;
                    number_range::parse_query(def.name, &part, quantity)
                };
                match matcher.map_err(|message| bad(name, message))? {
                    date_range::Matcher::AnyOf(entries) => {
                        for e in entries {
                            if !any_of.contains(&e) {
                                any_of.push(e);
                            }
                        }
                    }
                    date_range::Matcher::Conjunctions(c) => conjunctions.extend(c),
                }
                continue;
            }
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
mod tests;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod union_tests;

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
