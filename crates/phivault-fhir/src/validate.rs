//! Validation against the official FHIR R4 JSON schema.
//!
//! The schema (`schema/fhir.r4.schema.json`, HL7's `fhir.schema.json` for 4.0.1 with the
//! descriptions stripped) is registered once under its own id, and each resource type is
//! compiled as `{"$ref": "<schema id>#/definitions/<Type>"}`, so only the definitions reachable
//! from that type are compiled. One change to the schema: `ResourceList` (the `oneOf` over all
//! 146 resource types that `contained` uses) is replaced by "an object", and each contained
//! resource is validated against its own type instead. That cuts the compilation of a type
//! from ~50 ms to ~1.5 ms (release build) and gives contained resources precise errors instead
//! of "matches none of 146 types". Regular expressions run on the linear-time `regex` engine,
//! so no client string can make a pattern backtrack.
//!
//! Errors are turned into [`Issue`]s from the *kind* of each schema error, never from its
//! `Display` (which quotes the offending value, and values are PHI): the path is FHIRPath-like
//! (`Patient.name[0].family`) and the message says what is expected.

use std::collections::HashMap;
use std::fmt;
use std::sync::OnceLock;

use jsonschema::error::{TypeKind, ValidationErrorKind};
use jsonschema::paths::{Location, LocationSegment};
use jsonschema::{JsonType, PatternOptions, ValidationError};
use serde_json::{Map, Value};

use crate::{FhirError, Id, Issue, IssueCode, ResourceType};

/// The official FHIR R4 JSON schema (draft-06), shipped with the crate.
const FHIR_SCHEMA: &str = include_str!("../schema/fhir.r4.schema.json");

/// The schema's own id, under which it is registered for `$ref`s.
const SCHEMA_URI: &str = "http://hl7.org/fhir/json-schema/4.0";

/// At most this many issues are reported for one body.
const MAX_ISSUES: usize = 20;

/// Element names quoted in messages are cut to this many characters.
const MAX_NAME_CHARS: usize = 64;

/// A resource body that passed validation for its type. Only [`Validator`] makes one.
///
/// `Debug` shows the type and id only: the body is PHI.
#[derive(Clone, PartialEq)]
pub struct ValidResource {
    rtype: ResourceType,
    body: Value,
}

impl fmt::Debug for ValidResource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ValidResource")
            .field("rtype", &self.rtype)
            .field("id", &self.id())
            .finish_non_exhaustive()
    }
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
    /// Replaces every `reference` string of the body that is a key of `map` (e.g.
    /// `urn:uuid:...` in a transaction) by its value (e.g. `Patient/123`), as
    /// [`rewrite_references`](crate::rewrite_references); returns how many were replaced.
    /// Keeps validity: a value that is not a valid FHIR string without whitespace (as every
    /// `Type/id` is) is not used.
    pub fn rewrite_references(&mut self, map: &HashMap<String, String>) -> usize {
        let usable =
            |target: &String| !target.is_empty() && !target.chars().any(char::is_whitespace);
        if map.values().all(usable) {
            crate::rewrite_references(&mut self.body, map)
        } else {
            let usable_map: HashMap<String, String> = map
                .iter()
                .filter(|(_, target)| usable(target))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            crate::rewrite_references(&mut self.body, &usable_map)
        }
    }

    /// Sets `id` (a valid id keeps the body valid), e.g. the id a conditional update found.
    pub fn set_id(&mut self, id: &Id) {
        if let Value::Object(body) = &mut self.body {
            body.insert("id".to_owned(), Value::String(id.as_str().to_owned()));
        }
    }

    /// Sets `id` and `meta.versionId`/`meta.lastUpdated` (server-assigned; keeps other meta).
    /// Keeps validity: the values set are valid id, id and instant.
    pub fn stamp(&mut self, id: &Id, version: u64, last_updated: &str) {
        // A ValidResource body is always an object; the guard keeps this total anyway.
        let Value::Object(body) = &mut self.body else {
            return;
        };
        body.insert("id".to_owned(), Value::String(id.as_str().to_owned()));
        let meta = body
            .entry("meta")
            .or_insert_with(|| Value::Object(Map::new()));
        if !meta.is_object() {
            *meta = Value::Object(Map::new());
        }
        if let Value::Object(meta) = meta {
            meta.insert("versionId".to_owned(), Value::String(version.to_string()));
            meta.insert(
                "lastUpdated".to_owned(),
                Value::String(last_updated.to_owned()),
            );
        }
    }
}

/// Validates bodies against the official R4 JSON schema (shipped in `schema/`).
/// Building one compiles the schema: build once, share (it is `Send + Sync`).
///
/// Each resource type's schema is compiled on first use (about 1.5 ms in a release build),
/// Patient's by [`Validator::new`].
pub struct Validator {
    /// The schema, indexed for `$ref` resolution.
    registry: jsonschema::Registry<'static>,
    /// Compiled regular expressions, shared by all compilations.
    patterns: jsonschema::PatternCache,
    /// Every resource type of the schema -> its validator, compiled once (`None`: it failed).
    by_type: HashMap<String, OnceLock<Option<jsonschema::Validator>>>,
    /// Client-facing explanation of each primitive-type pattern of the schema.
    pattern_messages: HashMap<String, &'static str>,
}

impl std::fmt::Debug for Validator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Validator").finish_non_exhaustive()
    }
}

/// What a failed pattern of a FHIR primitive type means, by the primitive's name in the schema.
/// Types sharing a pattern (string/markdown, uri/url/canonical) come first in the order wanted.
const PRIMITIVE_MESSAGES: &[(&str, &str)] = &[
    ("id", "not a valid id (1 to 64 of A-Z, a-z, 0-9, '-', '.')"),
    ("date", "not a valid date (YYYY, YYYY-MM or YYYY-MM-DD)"),
    (
        "dateTime",
        "not a valid dateTime (YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDThh:mm:ss with a time zone)",
    ),
    (
        "instant",
        "not a valid instant (YYYY-MM-DDThh:mm:ss with a time zone)",
    ),
    ("time", "not a valid time (hh:mm:ss)"),
    (
        "code",
        "not a valid code (no leading, trailing or repeated whitespace)",
    ),
    (
        "string",
        "not a valid string (must not be empty; only space, tab, CR and LF as whitespace)",
    ),
    ("uri", "not a valid uri (must not contain whitespace)"),
    ("oid", "not a valid oid (urn:oid:...)"),
    ("uuid", "not a valid uuid (urn:uuid:... in lower case)"),
];

/// Stands in for the schema's `ResourceList` (a `oneOf` over all 146 resource types, used by
/// `contained`): compiling it into every type costs ~50 ms per type, and its errors cannot say
/// what is wrong. Contained resources are validated separately, against their own type. (The
/// other users of `ResourceList`, `Bundle.entry.resource` and `Parameters.parameter.resource`,
/// are not types this server stores; inside a contained Bundle or Parameters, their resources
/// are only checked to be objects.)
fn resource_list_stub() -> Value {
    let mut stub = Map::new();
    stub.insert("type".to_owned(), Value::String("object".to_owned()));
    Value::Object(stub)
}

impl Validator {
    /// Compiles the schema.
    pub fn new() -> Result<Self, FhirError> {
        let mut schema: Value = serde_json::from_str(FHIR_SCHEMA)
            .map_err(|_| schema_fault("the shipped FHIR schema is not valid JSON"))?;
        let Some(definitions) = schema.get_mut("definitions").and_then(Value::as_object_mut) else {
            return Err(schema_fault("the shipped FHIR schema has no definitions"));
        };
        definitions.insert("ResourceList".to_owned(), resource_list_stub());

        let mut pattern_messages = HashMap::new();
        for (name, message) in PRIMITIVE_MESSAGES {
            if let Some(pattern) = definitions
                .get(*name)
                .and_then(|d| d.get("pattern"))
                .and_then(Value::as_str)
            {
                pattern_messages
                    .entry(pattern.to_owned())
                    .or_insert(*message);
            }
        }

        // The resource types are the targets of the root `oneOf`.
        let by_type: HashMap<String, OnceLock<Option<jsonschema::Validator>>> = schema
            .get("oneOf")
            .and_then(Value::as_array)
            .map(|refs| {
                refs.iter()
                    .filter_map(|r| r.get("$ref").and_then(Value::as_str))
                    .filter_map(|r| r.strip_prefix("#/definitions/"))
                    .map(|name| (name.to_owned(), OnceLock::new()))
                    .collect()
            })
            .unwrap_or_default();

        let registry = jsonschema::Registry::new()
            .draft(jsonschema::Draft::Draft6)
            .add(SCHEMA_URI, schema)
            .and_then(|b| b.prepare())
            .map_err(|_| schema_fault("the shipped FHIR schema cannot be indexed"))?;
        let validator = Validator {
            registry,
            patterns: jsonschema::PatternCache::new(),
            by_type,
            pattern_messages,
        };
        // Patient is compiled now, to prove the schema compiles; the other types (141 of them,
        // about 1.5 ms each in a release build) on first use.
        validator.schema_of(ResourceType::PATIENT.as_str())?;
        Ok(validator)
    }

    /// The compiled schema of a resource type (any type of the schema), compiled on first use.
    fn schema_of(&self, name: &str) -> Result<&jsonschema::Validator, FhirError> {
        let cell = self
            .by_type
            .get(name)
            .ok_or_else(|| FhirError::UnknownType(truncate(name, MAX_NAME_CHARS)))?;
        cell.get_or_init(|| {
            let mut root = Map::new();
            root.insert(
                "$ref".to_owned(),
                Value::String(format!("{SCHEMA_URI}#/definitions/{name}")),
            );
            jsonschema::options()
                .with_draft(jsonschema::Draft::Draft6)
                .with_pattern_options(PatternOptions::regex())
                .with_pattern_cache(self.patterns.clone())
                .with_registry(&self.registry)
                .offline()
                .build(&Value::Object(root))
                .ok()
        })
        .as_ref()
        .ok_or_else(|| schema_fault("the shipped FHIR schema does not compile"))
    }

    /// Parses JSON bytes and validates them as a resource. With `expected`, the body's
    /// `resourceType` must be that type ([`FhirError::WrongType`]); the type must be supported
    /// ([`FhirError::UnknownType`]); malformed JSON (and an object with a key twice) is
    /// [`FhirError::MalformedJson`]; a body
    /// that breaks the schema is [`FhirError::Invalid`] with one issue per problem (at most
    /// 20), each with its path (`Patient.name[0].family`) and a message that never echoes the
    /// offending value.
    pub fn parse(
        &self,
        bytes: &[u8],
        expected: Option<ResourceType>,
    ) -> Result<ValidResource, FhirError> {
        let body = crate::json::from_slice_unique(bytes)
            .map_err(|e| FhirError::MalformedJson(json_error(&e)))?;
        self.validate(body, expected)
    }

    /// Validates an already-parsed JSON value, as [`Validator::parse`].
    pub fn validate(
        &self,
        body: Value,
        expected: Option<ResourceType>,
    ) -> Result<ValidResource, FhirError> {
        let Some(object) = body.as_object() else {
            return Err(FhirError::Invalid(vec![Issue {
                code: IssueCode::Structure,
                path: String::new(),
                message: "a resource must be a JSON object".to_owned(),
            }]));
        };
        let found = match object.get("resourceType") {
            Some(Value::String(name)) => name.as_str(),
            Some(_) => {
                return Err(FhirError::Invalid(vec![Issue {
                    code: IssueCode::Structure,
                    path: "resourceType".to_owned(),
                    message: "expected a string".to_owned(),
                }]));
            }
            None => {
                return Err(FhirError::Invalid(vec![Issue {
                    code: IssueCode::Required,
                    path: "resourceType".to_owned(),
                    message: "missing required element 'resourceType'".to_owned(),
                }]));
            }
        };
        if let Some(expected) = expected
            && found != expected.as_str()
        {
            return Err(FhirError::WrongType {
                expected: expected.as_str().to_owned(),
                found: truncate(found, MAX_NAME_CHARS),
            });
        }
        let rtype = ResourceType::parse(found)?;
        if crate::is_subsetted(&body) {
            return Err(FhirError::Subsetted);
        }

        let mut issues = Vec::new();
        self.check(rtype.as_str(), &body, rtype.as_str(), &mut issues)?;
        if let Some(Value::Array(contained)) = object.get("contained") {
            for (i, item) in contained.iter().enumerate() {
                self.check_contained(&format!("{rtype}.contained[{i}]"), item, &mut issues)?;
            }
        }
        // The schema's id pattern is the FHIR id grammar; check with our own parser as well, so
        // that `ValidResource::id` can never drop an id the schema accepted.
        if issues.is_empty()
            && let Some(id) = object.get("id")
            && id.as_str().is_none_or(|s| Id::parse(s).is_err())
        {
            issues.push(Issue {
                code: IssueCode::Value,
                path: format!("{rtype}.id"),
                message: "not a valid id (1 to 64 of A-Z, a-z, 0-9, '-', '.')".to_owned(),
            });
        }
        if issues.is_empty() {
            Ok(ValidResource { rtype, body })
        } else {
            Err(FhirError::Invalid(issues))
        }
    }

    /// Checks `body` against the schema of `type_name`, adding issues under `prefix`.
    fn check(
        &self,
        type_name: &str,
        body: &Value,
        prefix: &str,
        issues: &mut Vec<Issue>,
    ) -> Result<(), FhirError> {
        let schema = self.schema_of(type_name)?;
        if !schema.is_valid(body) {
            let before = issues.len();
            for error in schema.iter_errors(body) {
                if issues.len() >= MAX_ISSUES {
                    break;
                }
                self.push_issues(prefix, &error, issues);
            }
            if issues.len() == before && issues.len() < MAX_ISSUES {
                // Cannot happen (an invalid body yields errors); stay closed if it does.
                issues.push(Issue {
                    code: IssueCode::Invalid,
                    path: prefix.to_owned(),
                    message: "does not conform to FHIR R4".to_owned(),
                });
            }
        }
        Ok(())
    }

    /// Checks one `contained` resource (the main schema only checked that it is an object).
    fn check_contained(
        &self,
        prefix: &str,
        item: &Value,
        issues: &mut Vec<Issue>,
    ) -> Result<(), FhirError> {
        let Some(object) = item.as_object() else {
            return Ok(()); // reported by the main schema
        };
        let issue = match object.get("resourceType") {
            None => Issue {
                code: IssueCode::Required,
                path: format!("{prefix}.resourceType"),
                message: "missing required element 'resourceType'".to_owned(),
            },
            Some(Value::String(name)) if self.by_type.contains_key(name.as_str()) => {
                if object.contains_key("contained") {
                    Issue {
                        code: IssueCode::Structure,
                        path: format!("{prefix}.contained"),
                        message: "a contained resource must not contain other resources (dom-2)"
                            .to_owned(),
                    }
                } else {
                    return self.check(name, item, prefix, issues);
                }
            }
            Some(Value::String(_)) => Issue {
                code: IssueCode::Value,
                path: format!("{prefix}.resourceType"),
                message: "not a FHIR R4 resource type".to_owned(),
            },
            Some(_) => Issue {
                code: IssueCode::Structure,
                path: format!("{prefix}.resourceType"),
                message: "expected a string".to_owned(),
            },
        };
        push_unique(issues, issue);
        Ok(())
    }

    /// The issues of one schema error, under `prefix` (the path of the validated instance).
    fn push_issues(&self, prefix: &str, error: &ValidationError<'_>, out: &mut Vec<Issue>) {
        let path = fhir_path(prefix, error.instance_path());
        let (code, message) = match error.kind() {
            ValidationErrorKind::AdditionalProperties { unexpected }
            | ValidationErrorKind::UnevaluatedProperties { unexpected } => {
                for name in unexpected {
                    push_unique(
                        out,
                        Issue {
                            code: IssueCode::Structure,
                            path: join_property(&path, name),
                            message: format!(
                                "unknown element '{}'",
                                truncate(name, MAX_NAME_CHARS)
                            ),
                        },
                    );
                }
                return;
            }
            ValidationErrorKind::Required { property } => {
                let name = property.as_str().unwrap_or_default();
                push_unique(
                    out,
                    Issue {
                        code: IssueCode::Required,
                        path: join_property(&path, name),
                        message: format!(
                            "missing required element '{}'",
                            truncate(name, MAX_NAME_CHARS)
                        ),
                    },
                );
                return;
            }
            kind => describe(kind, &self.pattern_messages),
        };
        push_unique(
            out,
            Issue {
                code,
                path,
                message,
            },
        );
    }
}

/// A schema-compilation fault: the shipped schema is broken, not the client's body.
fn schema_fault(message: &str) -> FhirError {
    FhirError::SchemaUnavailable(message.to_owned())
}

/// The message of a schema error of a kind that maps to one issue at the error's own path.
fn describe(
    kind: &ValidationErrorKind,
    pattern_messages: &HashMap<String, &'static str>,
) -> (IssueCode, String) {
    match kind {
        ValidationErrorKind::Type { kind } => (IssueCode::Structure, expected_type(kind)),
        ValidationErrorKind::Pattern { pattern } => (
            IssueCode::Value,
            pattern_messages
                .get(pattern.as_str())
                .map_or("does not have the required format", |m| m)
                .to_owned(),
        ),
        ValidationErrorKind::Enum { options } => (IssueCode::Value, one_of(options)),
        ValidationErrorKind::Constant { expected_value } => (
            IssueCode::Value,
            match expected_value.as_str() {
                Some(s) => format!("must be '{s}'"),
                None => "does not have the required value".to_owned(),
            },
        ),
        ValidationErrorKind::OneOfNotValid { .. } => (
            IssueCode::Structure,
            "does not match any allowed type".to_owned(),
        ),
        ValidationErrorKind::OneOfMultipleValid { .. } => (
            IssueCode::Structure,
            "matches more than one allowed type".to_owned(),
        ),
        ValidationErrorKind::AnyOf { .. } => (
            IssueCode::Structure,
            "does not match any allowed form".to_owned(),
        ),
        ValidationErrorKind::MinItems { limit } => (
            IssueCode::Structure,
            format!("must have at least {limit} item(s)"),
        ),
        ValidationErrorKind::MaxItems { limit } => (
            IssueCode::Structure,
            format!("must have at most {limit} item(s)"),
        ),
        ValidationErrorKind::MinLength { limit } => (
            IssueCode::Value,
            format!("must be at least {limit} character(s) long"),
        ),
        ValidationErrorKind::MaxLength { limit } => (
            IssueCode::Value,
            format!("must be at most {limit} character(s) long"),
        ),
        ValidationErrorKind::Minimum { limit }
        | ValidationErrorKind::ExclusiveMinimum { limit } => {
            (IssueCode::Value, format!("is below the minimum {limit}"))
        }
        ValidationErrorKind::Maximum { limit }
        | ValidationErrorKind::ExclusiveMaximum { limit } => {
            (IssueCode::Value, format!("is above the maximum {limit}"))
        }
        ValidationErrorKind::Format { format } => (
            IssueCode::Value,
            format!("not a valid {}", truncate(format, MAX_NAME_CHARS)),
        ),
        ValidationErrorKind::FalseSchema => (IssueCode::Structure, "is not allowed".to_owned()),
        ValidationErrorKind::BacktrackLimitExceeded { .. }
        | ValidationErrorKind::RegexEngineFailure { .. } => (
            IssueCode::Value,
            "could not be checked against its format".to_owned(),
        ),
        other => (
            IssueCode::Invalid,
            format!("is not valid ({})", other.keyword()),
        ),
    }
}

/// "expected a string", "expected an object", ...
fn expected_type(kind: &TypeKind) -> String {
    fn article(t: JsonType) -> &'static str {
        match t {
            JsonType::Array => "an array",
            JsonType::Boolean => "a boolean (true or false)",
            JsonType::Integer => "an integer",
            JsonType::Null => "null",
            JsonType::Number => "a number",
            JsonType::Object => "an object",
            JsonType::String => "a string",
        }
    }
    match kind {
        TypeKind::Single(t) => format!("expected {}", article(*t)),
        TypeKind::Multiple(set) => {
            let names: Vec<&str> = set.iter().map(article).collect();
            format!("expected {}", names.join(" or "))
        }
    }
}

/// "must be one of: male, female, other, unknown" (the options are the schema's, not PHI).
fn one_of(options: &Value) -> String {
    const SHOWN: usize = 12;
    let Some(options) = options.as_array() else {
        return "is not one of the allowed values".to_owned();
    };
    let mut names: Vec<&str> = options
        .iter()
        .filter_map(Value::as_str)
        .take(SHOWN)
        .collect();
    if options.len() > SHOWN {
        names.push("...");
    }
    if names.is_empty() {
        "is not one of the allowed values".to_owned()
    } else {
        format!("must be one of: {}", names.join(", "))
    }
}

/// `Patient` + `/name/0/family` -> `Patient.name[0].family`.
fn fhir_path(prefix: &str, location: &Location) -> String {
    let mut path = prefix.to_owned();
    for segment in location.segments() {
        match segment {
            LocationSegment::Property(name) => {
                path.push('.');
                path.push_str(&truncate(&name, MAX_NAME_CHARS));
            }
            LocationSegment::Index(i) => {
                path.push('[');
                path.push_str(&i.to_string());
                path.push(']');
            }
        }
    }
    path
}

/// `Patient` + `foo` -> `Patient.foo`.
fn join_property(path: &str, name: &str) -> String {
    format!("{path}.{}", truncate(name, MAX_NAME_CHARS))
}

fn push_unique(out: &mut Vec<Issue>, issue: Issue) {
    if out.len() < MAX_ISSUES && !out.contains(&issue) {
        out.push(issue);
    }
}

/// At most `max` characters of `s`.
fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

/// A JSON syntax error, described by position and a fixed phrase (never by content).
fn json_error(error: &serde_json::Error) -> String {
    /// serde_json's syntax messages, none of which quotes the input.
    const KNOWN: &[&str] = &[
        "EOF while parsing a list",
        "EOF while parsing an object",
        "EOF while parsing a string",
        "EOF while parsing a value",
        "expected `:`",
        "expected `,` or `]`",
        "expected `,` or `}`",
        "expected ident",
        "expected value",
        "expected `\"`",
        "invalid escape",
        "invalid number",
        "number out of range",
        "invalid unicode code point",
        "control character (\\u0000-\\u001F) found while parsing a string",
        "key must be a string",
        "lone leading surrogate in hex escape",
        "trailing comma",
        "trailing characters",
        "unexpected end of hex escape",
        "recursion limit exceeded",
        crate::json::DUPLICATE_KEY,
    ];
    let text = error.to_string();
    let phrase = KNOWN
        .iter()
        .find(|k| text.starts_with(**k))
        .copied()
        .unwrap_or(match error.classify() {
            serde_json::error::Category::Eof => "unexpected end of input",
            _ => "syntax error",
        });
    if error.line() == 0 {
        phrase.to_owned()
    } else {
        format!(
            "{phrase} at line {} column {}",
            error.line(),
            error.column()
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests;
