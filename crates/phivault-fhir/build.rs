//! Generates the resource-type, compartment and search-parameter tables from the vendored
//! FHIR R4 4.0.1 definitions (`data/`, see `data/README.md`) and the shipped JSON schema.
//!
//! What it decides, so that the server never does at run time:
//! - which R4 types are stored (all concrete types but [`EXCLUDED`]);
//! - for each type, the parameters of the Patient CompartmentDefinition (plus the `patient`
//!   parameter of the few types outside it that name a patient; see `EXTRA_COMPARTMENT`);
//! - for each type and search parameter, whether its FHIRPath expression is one the server
//!   evaluates (element paths, choice elements, `as` casts, `where(resolve() is T)`,
//!   `where(key='value')`, unions) and whether its kind and the element types it selects are
//!   ones a blind index serves; every other parameter is listed as unsupported, with why.
//!
//! Element paths are checked against the schema's definitions, so a typo or an element that
//! does not exist fails the build instead of silently indexing nothing. A compartment parameter
//! that cannot be evaluated fails the build too: a resource's key must never depend on an
//! expression the server cannot read.

use std::collections::{BTreeMap, BTreeSet};
use std::error::Error;
use std::fmt::Write as _;
use std::path::Path;

use serde_json::Value;

type Res<T> = Result<T, Box<dyn Error>>;

/// R4 types this server does not store, and why (also in `data/README.md` and the docs).
const EXCLUDED: &[(&str, &str)] = &[
    (
        "Parameters",
        "Parameters is an operation's input or output, not a stored resource",
    ),
    (
        "Bundle",
        "Bundles are processed (POST a transaction or batch to the base URL), not stored: a \
         stored Bundle would hold several patients' resources under no patient's key",
    ),
    (
        "Binary",
        "Binary content is not stored: it has no patient to be keyed by and no meta.security \
         labels; put document content in a DocumentReference attachment",
    ),
    (
        "AuditEvent",
        "AuditEvents are the server's own audit trail (read-only at /fhir/AuditEvent)",
    ),
    (
        "OperationOutcome",
        "OperationOutcome is a response, not a stored resource",
    ),
];

/// Types outside the Patient CompartmentDefinition whose `patient` search parameter names a
/// patient: keyed by that patient too, since storing them under the directory key would let
/// every user read a patient's devices, tasks, contracts and guidance.
const EXTRA_COMPARTMENT: &[&str] = &["Contract", "Device", "GuidanceResponse", "Task"];

/// Parameters handled by the search code itself, not generated.
const BUILT_IN: &[&str] = &["_id", "_lastUpdated", "_security"];

/// Parameters with a supported kind and expression that still are not served, and why.
const NOT_SERVED: &[(&str, &str)] = &[(
    "phonetic",
    "phonetic matching is not implemented on encrypted indexes",
)];

/// FHIR primitive type names (the suffix of a choice element, capitalized, names them).
const PRIMITIVES: &[&str] = &[
    "base64Binary",
    "boolean",
    "canonical",
    "code",
    "date",
    "dateTime",
    "decimal",
    "id",
    "instant",
    "integer",
    "markdown",
    "oid",
    "positiveInt",
    "string",
    "time",
    "unsignedInt",
    "uri",
    "url",
    "uuid",
    "xhtml",
];

/// One step of a compiled path.
#[derive(Debug, Clone)]
enum Step {
    /// The element under any of these JSON keys (several for a choice element).
    Field(Vec<String>),
    /// Only References whose relative reference is to this type.
    RefIs(String),
    /// Only objects whose `key` is this string.
    Eq(String, String),
}

/// A parsed union member before resolution against the schema.
#[derive(Debug)]
enum RawStep {
    Name(String),
    /// A cast of the previous element to a type (`as T`, `.as(T)`).
    As(String),
    RefIs(String),
    Eq(String, String),
}

fn main() -> Res<()> {
    let dir = std::env::var("CARGO_MANIFEST_DIR")?;
    let dir = Path::new(&dir);
    for f in [
        "data/search-parameters.json",
        "data/compartment-patient.json",
        "data/resource-types.json",
        "schema/fhir.r4.schema.json",
    ] {
        println!("cargo:rerun-if-changed={f}");
    }
    println!("cargo:rerun-if-changed=build.rs");
    let read = |f: &str| -> Res<Value> {
        Ok(serde_json::from_str(&std::fs::read_to_string(
            dir.join(f),
        )?)?)
    };
    let params = read("data/search-parameters.json")?;
    let compartment = read("data/compartment-patient.json")?;
    let types = read("data/resource-types.json")?;
    let schema = read("schema/fhir.r4.schema.json")?;
    let defs = schema
        .get("definitions")
        .and_then(Value::as_object)
        .ok_or("the schema has no definitions")?;

    let mut names: Vec<String> = types["resourceTypes"]
        .as_array()
        .ok_or("resource-types.json: no resourceTypes")?
        .iter()
        .filter_map(Value::as_str)
        .filter(|t| !EXCLUDED.iter().any(|(x, _)| x == t))
        .map(str::to_owned)
        .collect();
    names.sort();

    let mut compartments: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (rtype, list) in compartment["resources"]
        .as_object()
        .ok_or("compartment-patient.json: no resources")?
    {
        let list = list
            .as_array()
            .ok_or("compartment params")?
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect();
        compartments.insert(rtype.clone(), list);
    }
    for rtype in EXTRA_COMPARTMENT {
        if compartments.contains_key(*rtype) {
            return Err(format!("{rtype} is already in the Patient compartment").into());
        }
        compartments.insert((*rtype).to_owned(), vec!["patient".to_owned()]);
    }

    let all_params = params["parameters"]
        .as_array()
        .ok_or("search-parameters.json: no parameters")?;
    let mut out = String::new();
    out.push_str("// @generated by build.rs from data/*.json and schema/: do not edit.\n\n");
    writeln!(
        out,
        "/// Every R4 resource type this server stores, sorted.\npub(crate) const TYPE_NAMES: &[&str] = &{names:?};\n"
    )?;
    writeln!(
        out,
        "/// R4 resource types this server does not store, and why.\npub(crate) static EXCLUDED: &[(&str, &str)] = &{EXCLUDED:?};\n"
    )?;
    out.push_str("/// The tables of each type of [`TYPE_NAMES`], in the same order.\n");
    out.push_str("pub(crate) static TYPE_SPECS: &[TypeSpec] = &[\n");
    let mut supported_count = 0;
    let mut unsupported_count = 0;
    for rtype in &names {
        let mut supported = String::new();
        let mut unsupported = String::new();
        let mut seen = BTreeSet::new();
        for p in all_params {
            let code = p["code"].as_str().ok_or("a parameter without code")?;
            let bases: Vec<&str> = p["base"]
                .as_array()
                .ok_or("a parameter without base")?
                .iter()
                .filter_map(Value::as_str)
                .collect();
            let generic = bases
                .iter()
                .any(|b| *b == "Resource" || *b == "DomainResource");
            if !(bases.contains(&rtype.as_str()) || generic) || BUILT_IN.contains(&code) {
                continue;
            }
            if !seen.insert(code.to_owned()) {
                return Err(format!("{rtype}: parameter {code} defined twice").into());
            }
            let kind = p["type"].as_str().ok_or("a parameter without type")?;
            let targets: Vec<&str> = p
                .get("target")
                .and_then(Value::as_array)
                .map(|t| t.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let decided = decide(rtype, code, kind, p.get("expression"), generic, defs);
            match decided {
                Ok((expression, paths)) => {
                    supported_count += 1;
                    let rust_kind = match kind {
                        "string" => "String",
                        "token" => "Token",
                        "reference" => "Reference",
                        "date" => "Date",
                        "number" => "Number",
                        "quantity" => "Quantity",
                        _ => "Uri",
                    };
                    let mut paths_src = String::new();
                    for path in &paths {
                        paths_src.push_str("&[");
                        for step in path {
                            match step {
                                Step::Field(keys) => write!(paths_src, "Step::Field(&{keys:?}), ")?,
                                Step::RefIs(t) => write!(paths_src, "Step::RefIs({t:?}), ")?,
                                Step::Eq(k, v) => write!(paths_src, "Step::Eq({k:?}, {v:?}), ")?,
                            }
                        }
                        paths_src.push_str("], ");
                    }
                    // Targets matter for references only; "Any" (every type) is left empty.
                    // Paths that all end in `where(resolve() is T)` target only those types.
                    let resolved: BTreeSet<&str> = paths
                        .iter()
                        .filter_map(|p| match p.last() {
                            Some(Step::RefIs(t)) => Some(t.as_str()),
                            _ => None,
                        })
                        .collect();
                    let targets: Vec<&str> = if kind != "reference" {
                        Vec::new()
                    } else if paths
                        .iter()
                        .all(|p| matches!(p.last(), Some(Step::RefIs(_))))
                    {
                        resolved.into_iter().collect()
                    } else if targets.len() < 100 {
                        targets
                    } else {
                        Vec::new()
                    };
                    writeln!(
                        supported,
                        "        SearchParamDef {{ name: {code:?}, kind: SearchParamKind::{rust_kind}, \
                         expression: {expression:?}, paths: &[{paths_src}], targets: &{targets:?} }},"
                    )?;
                }
                Err(reason) => {
                    unsupported_count += 1;
                    writeln!(
                        unsupported,
                        "        Unsupported {{ name: {code:?}, kind: {kind:?}, reason: {reason:?} }},"
                    )?;
                }
            }
        }
        let comp = compartments.get(rtype).cloned().unwrap_or_default();
        // Every compartment parameter must be one the server evaluates, as a reference.
        for c in &comp {
            let needle = format!("name: {c:?}, kind: SearchParamKind::Reference,");
            if rtype != "Patient" && !supported.contains(&needle) {
                return Err(format!(
                    "{rtype}: compartment parameter {c} is not an evaluable reference parameter"
                )
                .into());
            }
        }
        writeln!(
            out,
            "    // {rtype}\n    TypeSpec {{\n        compartment: &{comp:?},\n        params: &[\n{supported}        ],\n        unsupported: &[\n{unsupported}        ],\n    }},"
        )?;
    }
    out.push_str("];\n");
    writeln!(
        out,
        "\n/// Parameters over all types: {supported_count} supported, {unsupported_count} not.\n\
         pub(crate) const PARAM_COUNTS: (usize, usize) = ({supported_count}, {unsupported_count});"
    )?;
    let dest = Path::new(&std::env::var("OUT_DIR")?).join("spec_tables.rs");
    std::fs::write(dest, out)?;
    Ok(())
}

/// The expression restricted to `rtype` and its compiled paths, or why the parameter is not
/// served.
fn decide(
    rtype: &str,
    code: &str,
    kind: &str,
    expression: Option<&Value>,
    generic: bool,
    defs: &serde_json::Map<String, Value>,
) -> Result<(String, Vec<Vec<Step>>), String> {
    if let Some((_, why)) = NOT_SERVED.iter().find(|(n, _)| *n == code) {
        return Err((*why).to_owned());
    }
    if !matches!(
        kind,
        "string" | "token" | "reference" | "date" | "uri" | "number" | "quantity"
    ) {
        return Err(format!(
            "{kind} parameters are not supported on encrypted indexes"
        ));
    }
    let Some(expression) = expression.and_then(Value::as_str) else {
        return Err("the parameter has no FHIRPath expression".to_owned());
    };
    let roots: &[&str] = if generic {
        &["Resource", "DomainResource"]
    } else {
        &[rtype]
    };
    let members: Vec<&str> = split_top(expression, '|')
        .into_iter()
        .map(str::trim)
        .filter(|m| {
            let m = m.trim_start_matches('(');
            roots.iter().any(|r| m.starts_with(&format!("{r}.")))
        })
        .collect();
    if members.is_empty() {
        return Err("the expression selects nothing of this type".to_owned());
    }
    let mut paths = Vec::new();
    for member in &members {
        let raw = parse_member(member).ok_or_else(|| {
            "the expression uses FHIRPath the server does not evaluate".to_owned()
        })?;
        let mut resolved = resolve(rtype, &raw, kind, defs)?;
        paths.append(&mut resolved);
    }
    if paths.is_empty() {
        return Err(format!(
            "no element the expression selects has a type a {kind} parameter indexes"
        ));
    }
    Ok((members.join(" | "), paths))
}

/// Splits on `sep` outside parentheses and quotes.
fn split_top(s: &str, sep: char) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut quoted, mut start) = (0i32, false, 0);
    for (i, c) in s.char_indices() {
        match c {
            '\'' => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted => depth -= 1,
            c if c == sep && depth == 0 && !quoted => {
                out.push(&s[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn is_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// `Type.a.b`, `Type.a.as(T)`, `(Type.a as T)[.c...]`, `Type.a.where(resolve() is T)`,
/// `Type.a.where(k='v').b`; `None` for anything else.
fn parse_member(member: &str) -> Option<Vec<RawStep>> {
    let member = member.trim();
    let mut steps = Vec::new();
    let rest = if let Some(inner) = member.strip_prefix('(') {
        let close = inner.find(')')?;
        let (chain, cast) = inner[..close].split_once(" as ")?;
        steps.extend(parse_chain(chain.trim())?);
        let cast = cast.trim();
        if !is_name(cast) {
            return None;
        }
        steps.push(RawStep::As(cast.to_owned()));
        let after = &inner[close + 1..];
        if after.is_empty() {
            return Some(steps);
        }
        let after = after.strip_prefix('.')?;
        let mut tail = parse_steps(after)?;
        steps.append(&mut tail);
        return Some(steps);
    } else {
        member
    };
    steps.extend(parse_chain(rest)?);
    Some(steps)
}

/// `Type.a.b...`: the root type is dropped.
fn parse_chain(chain: &str) -> Option<Vec<RawStep>> {
    let (root, rest) = chain.split_once('.')?;
    if !is_name(root) {
        return None;
    }
    parse_steps(rest)
}

fn parse_steps(s: &str) -> Option<Vec<RawStep>> {
    let mut steps = Vec::new();
    for part in split_top(s, '.') {
        if is_name(part) {
            steps.push(RawStep::Name(part.to_owned()));
        } else if let Some(t) = part.strip_prefix("as(").and_then(|p| p.strip_suffix(')')) {
            if !is_name(t) {
                return None;
            }
            steps.push(RawStep::As(t.to_owned()));
        } else if let Some(cond) = part
            .strip_prefix("where(")
            .and_then(|p| p.strip_suffix(')'))
        {
            if let Some(t) = cond.strip_prefix("resolve() is ") {
                if !is_name(t) {
                    return None;
                }
                steps.push(RawStep::RefIs(t.to_owned()));
            } else {
                let (k, v) = cond.split_once('=')?;
                let v = v.trim().strip_prefix('\'')?.strip_suffix('\'')?;
                if !is_name(k.trim()) || v.contains('\'') {
                    return None;
                }
                steps.push(RawStep::Eq(k.trim().to_owned(), v.to_owned()));
            }
        } else {
            return None;
        }
    }
    Some(steps)
}

/// The element types a parameter of `kind` indexes.
fn indexes(kind: &str, ty: &str) -> bool {
    match kind {
        "string" => matches!(ty, "string" | "markdown" | "HumanName" | "Address"),
        "token" => matches!(
            ty,
            "code"
                | "string"
                | "id"
                | "uri"
                | "url"
                | "canonical"
                | "oid"
                | "uuid"
                | "boolean"
                | "Coding"
                | "CodeableConcept"
                | "Identifier"
                | "ContactPoint"
        ),
        "reference" => ty == "Reference",
        "date" => matches!(ty, "date" | "dateTime" | "instant" | "Period"),
        "uri" => matches!(ty, "uri" | "url" | "canonical" | "oid" | "uuid"),
        "number" => matches!(ty, "decimal" | "integer" | "positiveInt" | "unsignedInt"),
        "quantity" => matches!(
            ty,
            "Quantity" | "Age" | "Duration" | "Count" | "Distance" | "Money" | "SimpleQuantity"
        ),
        _ => false,
    }
}

/// The type of a schema property (its definition's name; `code` for an enum).
fn property_type(prop: &Value) -> Option<String> {
    let target = prop.get("items").unwrap_or(prop);
    if let Some(r) = target.get("$ref").and_then(Value::as_str) {
        return r.strip_prefix("#/definitions/").map(str::to_owned);
    }
    if target.get("enum").is_some() {
        return Some("code".to_owned());
    }
    None
}

/// The type a choice key's suffix names (`DateTime` -> `dateTime`, `Period` -> `Period`).
fn suffix_type(suffix: &str, defs: &serde_json::Map<String, Value>) -> Option<String> {
    let mut chars = suffix.chars();
    let first = chars.next()?;
    let lower = format!("{}{}", first.to_ascii_lowercase(), chars.as_str());
    if PRIMITIVES.contains(&lower.as_str()) {
        return Some(lower);
    }
    defs.contains_key(suffix).then(|| suffix.to_owned())
}

/// Compiles parsed steps against the schema from `rtype`: the paths, each ending in an element
/// of a type `kind` indexes. Alternatives of a choice element that `kind` does not index are
/// left out; any other element it does not index makes the parameter unsupported.
fn resolve(
    rtype: &str,
    raw: &[RawStep],
    kind: &str,
    defs: &serde_json::Map<String, Value>,
) -> Result<Vec<Vec<Step>>, String> {
    // Alternatives: (steps so far, current type, reached through a choice expansion).
    let mut alts: Vec<(Vec<Step>, String, bool)> = vec![(Vec::new(), rtype.to_owned(), false)];
    let unknown = |what: &str| format!("the expression names {what}, which the schema lacks");
    let mut i = 0;
    while i < raw.len() {
        let mut next = Vec::new();
        match &raw[i] {
            RawStep::Name(name) => {
                let cast = match raw.get(i + 1) {
                    Some(RawStep::As(t)) => Some(t.clone()),
                    _ => None,
                };
                for (steps, ty, _) in alts {
                    let props = defs
                        .get(&ty)
                        .and_then(|d| d.get("properties"))
                        .and_then(Value::as_object)
                        .ok_or_else(|| unknown(&ty))?;
                    let mut found: Vec<(String, String)> = Vec::new();
                    if let Some(prop) = props.get(name.as_str()) {
                        if cast.is_some() {
                            return Err("a cast of an element that is not a choice".to_owned());
                        }
                        found.push((
                            name.clone(),
                            property_type(prop).ok_or_else(|| unknown(name))?,
                        ));
                    } else {
                        for key in props.keys() {
                            let Some(suffix) = key.strip_prefix(name.as_str()) else {
                                continue;
                            };
                            if !suffix.starts_with(|c: char| c.is_ascii_uppercase()) {
                                continue;
                            }
                            let Some(t) = suffix_type(suffix, defs) else {
                                continue;
                            };
                            if cast.as_deref().is_none_or(|c| c.eq_ignore_ascii_case(&t)) {
                                found.push((key.clone(), t));
                            }
                        }
                    }
                    if found.is_empty() {
                        return Err(unknown(&format!("{ty}.{name}")));
                    }
                    let choice = found.len() > 1 || found[0].0 != *name;
                    // Choice alternatives of one type continue together.
                    let mut by_type: BTreeMap<String, Vec<String>> = BTreeMap::new();
                    for (key, t) in found {
                        by_type.entry(t).or_default().push(key);
                    }
                    for (t, keys) in by_type {
                        let mut s = steps.clone();
                        s.push(Step::Field(keys));
                        next.push((s, t, choice && cast.is_none()));
                    }
                }
                if cast.is_some() {
                    i += 1;
                }
            }
            RawStep::As(_) => return Err("a cast the server does not evaluate".to_owned()),
            RawStep::RefIs(t) => {
                for (mut steps, ty, choice) in alts {
                    if ty != "Reference" {
                        return Err("resolve() on an element that is not a Reference".to_owned());
                    }
                    steps.push(Step::RefIs(t.clone()));
                    next.push((steps, ty, choice));
                }
            }
            RawStep::Eq(k, v) => {
                for (mut steps, ty, choice) in alts {
                    let has = defs
                        .get(&ty)
                        .and_then(|d| d.get("properties"))
                        .and_then(|p| p.get(k.as_str()))
                        .is_some();
                    if !has {
                        return Err(unknown(&format!("{ty}.{k}")));
                    }
                    steps.push(Step::Eq(k.clone(), v.clone()));
                    next.push((steps, ty, choice));
                }
            }
        }
        alts = next;
        i += 1;
    }
    let mut out = Vec::new();
    for (steps, ty, choice) in alts {
        // A quantity parameter's `as Range` and `as SampledData` alternatives are not indexed
        // (a Range is not one value, SampledData a series): the parameter serves the others.
        let skipped = kind == "quantity" && matches!(ty.as_str(), "Range" | "SampledData");
        if indexes(kind, &ty) {
            out.push(steps);
        } else if !choice && !skipped {
            return Err(format!(
                "the expression selects a {ty}, which a {kind} parameter does not index"
            ));
        }
    }
    Ok(out)
}
