//! `_include` and `_revinclude`: which resources a search adds to its page, parsed here; the
//! server fetches them (each as a search of its own type, so each is decided and audited like
//! any search hit) and never counts them in `total`.
//!
//! Supported forms (R4 search, "Including other resources in result"):
//! * `_include=Source:param` and `_include=Source:param:Target`, where `Source` is the type
//!   searched and `param` one of its reference parameters: the resources its matches
//!   reference through `param` (only those of type `Target` when given);
//! * `_revinclude=Source:param` and `_revinclude=Source:param:Target`, where `param` is a
//!   reference parameter of `Source` that may point at the type searched (`Target`, when
//!   given, must be that type): the `Source` resources that reference a match through
//!   `param`.
//!
//! Refused with a message saying so: the wildcard `*` (it would follow every reference,
//! across compartments, on the server's choice rather than the client's) and `:iterate` /
//! `:recurse` (one level only).

use serde_json::Value;

use crate::search::{SearchParamDef, SearchParamKind, reference_target, search_params, values_of};
use crate::{FhirError, Id, ResourceType};

/// At most this many `_include` and `_revinclude` parameters in one search.
const MAX_INCLUDES: usize = 10;

/// One `_include` or `_revinclude`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Include {
    /// `_revinclude` (true) or `_include`.
    pub reverse: bool,
    /// The type holding the reference.
    pub source: ResourceType,
    /// The reference parameter of `source`.
    pub param: &'static str,
    /// The referenced type it is restricted to, if any.
    pub target: Option<ResourceType>,
}

impl Include {
    /// The parameter as a client writes it (`_include` / `Source:param[:Target]`), for self
    /// links.
    pub fn pair(&self) -> (String, String) {
        let name = if self.reverse {
            "_revinclude"
        } else {
            "_include"
        };
        let mut value = format!("{}:{}", self.source, self.param);
        if let Some(t) = self.target {
            value.push(':');
            value.push_str(t.as_str());
        }
        (name.to_owned(), value)
    }

    /// The `Type/id` references a matched resource (of the searched type, `body`) holds
    /// through this `_include`'s parameter, restricted to its target type. Empty for a
    /// `_revinclude`.
    pub fn referenced(&self, body: &Value) -> Vec<(ResourceType, Id)> {
        if self.reverse {
            return Vec::new();
        }
        references_through(self.source, self.param, body)
            .into_iter()
            .filter(|(t, _)| self.target.is_none_or(|want| want == *t))
            .collect()
    }
}

/// The reference search parameter `param` of `rtype`, or a 400 naming what is missing
/// (`what`: the use it was wanted for, e.g. "to chain on"; empty for none).
pub(crate) fn reference_param(
    rtype: ResourceType,
    name: &str,
    param: &str,
    what: &str,
) -> Result<&'static SearchParamDef, FhirError> {
    search_params(rtype)
        .iter()
        .find(|d| d.name == param && d.kind == SearchParamKind::Reference)
        .ok_or_else(|| {
            let param: String = param.chars().take(64).collect();
            let what = if what.is_empty() {
                String::new()
            } else {
                format!(" {what}")
            };
            bad(
                name,
                format!("{rtype} has no reference search parameter '{param}'{what}"),
            )
        })
}

/// The `Type/id` references a resource of `rtype` (`body`) holds through its reference
/// parameter `param`: the parameter's own paths, not the whole index of the resource.
pub fn references_through(
    rtype: ResourceType,
    param: &str,
    body: &Value,
) -> Vec<(ResourceType, Id)> {
    let Some(def) = search_params(rtype)
        .iter()
        .find(|d| d.name == param && d.kind == SearchParamKind::Reference)
    else {
        return Vec::new();
    };
    let mut out: Vec<(ResourceType, Id)> = Vec::new();
    for value in values_of(body, def) {
        let Some(target) = reference_target(def, value) else {
            continue;
        };
        let Some((t, id)) = target.split_once('/') else {
            continue;
        };
        if let (Ok(t), Ok(id)) = (ResourceType::parse(t), Id::parse(id))
            && !out.contains(&(t, id.clone()))
        {
            out.push((t, id));
        }
    }
    out
}

impl SearchParamDef {
    /// Whether this is a reference parameter that may point at a resource of type `t`.
    pub fn may_refer_to(&self, t: ResourceType) -> bool {
        self.kind == SearchParamKind::Reference
            && (self.targets.is_empty() || self.targets.contains(&t.as_str()))
    }
}

/// The `_include` values a search of `rtype` accepts (`rtype:param`), for the
/// CapabilityStatement.
pub fn include_values(rtype: ResourceType) -> Vec<String> {
    search_params(rtype)
        .iter()
        .filter(|d| d.kind == SearchParamKind::Reference)
        .map(|d| format!("{rtype}:{}", d.name))
        .collect()
}

/// The `_revinclude` values a search of `rtype` accepts (`Source:param` for every reference
/// parameter of any type that may point at `rtype`), for the CapabilityStatement.
pub fn revinclude_values(rtype: ResourceType) -> Vec<String> {
    ResourceType::all()
        .flat_map(|source| {
            search_params(source)
                .iter()
                .filter(move |d| d.may_refer_to(rtype))
                .map(move |d| format!("{source}:{}", d.name))
        })
        .collect()
}

pub(crate) fn bad(name: &str, message: impl Into<String>) -> FhirError {
    FhirError::BadSearchValue {
        param: name.chars().take(64).collect(),
        message: message.into(),
    }
}

/// Query pairs, percent-decoded.
pub(crate) type Pairs = Vec<(String, String)>;

/// Splits the `_include` / `_revinclude` parameters of a search of `rtype` from the others.
/// Returns the includes (in order, duplicates dropped) and the remaining pairs.
pub fn split_includes(
    rtype: ResourceType,
    pairs: &[(String, String)],
) -> Result<(Vec<Include>, Pairs), FhirError> {
    let mut includes: Vec<Include> = Vec::new();
    let mut rest = Vec::with_capacity(pairs.len());
    for (name, value) in pairs {
        let (base, modifier) = match name.split_once(':') {
            Some((b, m)) => (b, Some(m)),
            None => (name.as_str(), None),
        };
        let reverse = match base {
            "_include" => false,
            "_revinclude" => true,
            _ => {
                rest.push((name.clone(), value.clone()));
                continue;
            }
        };
        if let Some(m) = modifier {
            let m: String = m.chars().take(32).collect();
            return Err(bad(
                base,
                format!("the modifier ':{m}' is not supported (includes go one level deep)"),
            ));
        }
        for one in value.split(',').map(str::trim) {
            let include = parse_one(rtype, base, reverse, one)?;
            if !includes.contains(&include) {
                includes.push(include);
            }
        }
        if includes.len() > MAX_INCLUDES {
            return Err(bad(
                base,
                format!("at most {MAX_INCLUDES} _include and _revinclude values in one search"),
            ));
        }
    }
    Ok((includes, rest))
}

fn parse_one(
    rtype: ResourceType,
    name: &str,
    reverse: bool,
    value: &str,
) -> Result<Include, FhirError> {
    if value == "*" || value.ends_with(":*") {
        return Err(bad(
            name,
            "the wildcard '*' is not supported: name the reference parameter",
        ));
    }
    let mut parts = value.split(':');
    let (Some(source), Some(param)) = (parts.next(), parts.next()) else {
        return Err(bad(
            name,
            "expected SourceType:parameter or SourceType:parameter:TargetType",
        ));
    };
    let target = parts.next();
    if parts.next().is_some() {
        return Err(bad(
            name,
            "expected SourceType:parameter or SourceType:parameter:TargetType",
        ));
    }
    let source = ResourceType::parse(source)?;
    let target = target.map(ResourceType::parse).transpose()?;
    if !reverse && source != rtype {
        return Err(bad(
            name,
            format!("the source type must be the type searched ({rtype}), not {source}"),
        ));
    }
    let def = reference_param(source, name, param, "")?;
    if let Some(t) = target
        && !def.may_refer_to(t)
    {
        return Err(bad(
            name,
            format!("{source}:{} does not refer to {t}", def.name),
        ));
    }
    if reverse {
        if target.is_some_and(|t| t != rtype) {
            return Err(bad(
                name,
                format!("the target type of a _revinclude must be the type searched ({rtype})"),
            ));
        }
        if !def.may_refer_to(rtype) {
            return Err(bad(
                name,
                format!("{source}:{} does not refer to {rtype}", def.name),
            ));
        }
    }
    Ok(Include {
        reverse,
        source,
        param: def.name,
        target,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn t(s: &str) -> ResourceType {
        ResourceType::parse(s).unwrap()
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect()
    }

    #[test]
    fn includes_are_split_from_the_other_parameters() {
        let (inc, rest) = split_includes(
            t("Observation"),
            &pairs(&[
                ("code", "x"),
                (
                    "_include",
                    "Observation:subject:Patient,Observation:performer",
                ),
                ("_revinclude", "Provenance:target"),
                ("_include", "Observation:subject:Patient"),
            ]),
        )
        .unwrap();
        assert_eq!(rest, pairs(&[("code", "x")]));
        assert_eq!(inc.len(), 3, "{inc:?}");
        assert_eq!(inc[0].target, Some(t("Patient")));
        assert_eq!(inc[0].param, "subject");
        assert!(inc[2].reverse && inc[2].source == t("Provenance"));
        assert_eq!(
            inc[0].pair(),
            (
                "_include".to_owned(),
                "Observation:subject:Patient".to_owned()
            )
        );
    }

    #[test]
    fn malformed_includes_are_refused_with_what_is_wrong() {
        let obs = t("Observation");
        for (name, value, says) in [
            ("_include", "*", "wildcard"),
            ("_include", "Observation:*", "wildcard"),
            ("_include", "Patient:organization", "type searched"),
            (
                "_include",
                "Observation:code",
                "no reference search parameter",
            ),
            ("_include", "Observation", "SourceType:parameter"),
            ("_include", "Observation:subject:Nope", "Nope"),
            (
                "_include",
                "Observation:subject:Organization",
                "does not refer to",
            ),
            ("_include:iterate", "Observation:subject", "one level"),
            ("_revinclude", "Provenance:target:Patient", "type searched"),
            (
                "_revinclude",
                "Encounter:service-provider",
                "does not refer to",
            ),
        ] {
            let e = split_includes(obs, &pairs(&[(name, value)]))
                .unwrap_err()
                .to_string();
            assert!(e.contains(says), "{name}={value}: {e}");
        }
        let eleven = [
            "Observation:performer:Practitioner",
            "Observation:performer:Organization",
            "Observation:performer:Patient",
            "Observation:performer:PractitionerRole",
            "Observation:performer:CareTeam",
            "Observation:performer:RelatedPerson",
            "Observation:subject:Patient",
            "Observation:subject:Group",
            "Observation:subject:Device",
            "Observation:subject:Location",
            "Observation:encounter",
        ];
        let ten = split_includes(obs, &pairs(&[("_include", &eleven[..10].join(","))]));
        assert_eq!(ten.unwrap().0.len(), 10);
        let e = split_includes(obs, &pairs(&[("_include", &eleven.join(","))]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("at most 10"), "{e}");
    }

    #[test]
    fn referenced_follows_the_parameter_and_the_target() {
        let body = json!({
            "resourceType": "Observation",
            "status": "final",
            "code": {"text": "x"},
            "subject": {"reference": "Patient/p1"},
            "performer": [{"reference": "Practitioner/d1"}, {"reference": "Organization/o1"}],
        });
        let (inc, _) = split_includes(
            t("Observation"),
            &pairs(&[
                ("_include", "Observation:performer:Practitioner"),
                ("_include", "Observation:subject"),
            ]),
        )
        .unwrap();
        assert_eq!(
            inc[0].referenced(&body),
            vec![(t("Practitioner"), Id::parse("d1").unwrap())]
        );
        assert_eq!(
            inc[1].referenced(&body),
            vec![(t("Patient"), Id::parse("p1").unwrap())]
        );
    }
}
