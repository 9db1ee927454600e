//! Chained parameters and `_has`, one level deep, parsed here; the server answers each by a
//! search of the other type as the caller first (so it only ever learns of resources the
//! caller may read), then restricts the search asked for to what that search found.
//!
//! * **Chain** `ref[:Type].param=value` (`Observation?subject.family=Ames`,
//!   `Encounter?patient.identifier=sys|1`): `ref` is a reference parameter of the type
//!   searched; `Type` may be left out when `ref` can point at one type only. Answered as
//!   `ref=Type/id,...` over the `Type` resources with `param=value`.
//! * **Reverse chain** `_has:Source:ref:param=value` (`Patient?_has:Observation:patient:code=1234-5`):
//!   `ref` is a reference parameter of `Source` that may point at the type searched.
//!   Answered as `_id=...` over the resources the matching `Source` resources refer to.
//!
//! Deeper chains (`subject.organization.name`), nested `_has` and chains inside `_has` are
//! refused with a message saying so.

use crate::include::{Pairs, bad, reference_param};
use crate::{FhirError, ResourceType};

/// One chained parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    /// The parameter as the client wrote it (name, value), for links.
    pub written: (String, String),
    /// The reference parameter of the type searched.
    pub param: &'static str,
    /// The type it is followed to.
    pub target: ResourceType,
    /// The parameter searched on `target` (name with any modifier, value).
    pub inner: (String, String),
}

/// One `_has`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Has {
    /// The parameter as the client wrote it (name, value), for links.
    pub written: (String, String),
    /// The type whose resources refer to the ones searched.
    pub source: ResourceType,
    /// The reference parameter of `source`.
    pub param: &'static str,
    /// The parameter searched on `source` (name with any modifier, value).
    pub inner: (String, String),
}

/// What [`split_chains`] took out of a search.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Chains {
    /// Chained parameters.
    pub chains: Vec<Chain>,
    /// `_has` parameters.
    pub has: Vec<Has>,
}

impl Chains {
    /// No chain and no `_has`.
    pub fn is_empty(&self) -> bool {
        self.chains.is_empty() && self.has.is_empty()
    }
}

/// At most this many chained and `_has` parameters in one search (each costs a search).
const MAX_CHAINS: usize = 4;

/// Splits the chained and `_has` parameters of a search of `rtype` from the others.
pub fn split_chains(
    rtype: ResourceType,
    pairs: &[(String, String)],
) -> Result<(Chains, Pairs), FhirError> {
    let mut out = Chains::default();
    let mut rest = Vec::with_capacity(pairs.len());
    for (name, value) in pairs {
        if let Some(spec) = name.strip_prefix("_has:") {
            out.has.push(parse_has(rtype, name, spec, value)?);
        } else if !name.starts_with('_') && name.contains('.') {
            out.chains.push(parse_chain(rtype, name, value)?);
        } else {
            rest.push((name.clone(), value.clone()));
            continue;
        }
        if out.chains.len() + out.has.len() > MAX_CHAINS {
            return Err(bad(
                name,
                format!("at most {MAX_CHAINS} chained and _has parameters in one search"),
            ));
        }
    }
    Ok((out, rest))
}

fn parse_chain(rtype: ResourceType, name: &str, value: &str) -> Result<Chain, FhirError> {
    let Some((left, inner)) = name.split_once('.') else {
        return Err(bad(name, "expected reference.parameter"));
    };
    if inner.contains('.') {
        return Err(bad(name, "chains go one level deep"));
    }
    if inner.is_empty() || inner.starts_with("_has") {
        return Err(bad(name, "expected reference.parameter"));
    }
    let (param, given) = match left.split_once(':') {
        Some((p, t)) => (p, Some(ResourceType::parse(t)?)),
        None => (left, None),
    };
    let def = reference_param(rtype, name, param, "to chain on")?;
    let target = match given {
        Some(t) if def.may_refer_to(t) => t,
        Some(t) => {
            return Err(bad(
                name,
                format!("{rtype}:{} does not refer to {t}", def.name),
            ));
        }
        None => match def.targets {
            [only] => ResourceType::parse(only)?,
            _ => {
                return Err(bad(
                    name,
                    format!(
                        "{rtype}:{} may refer to several types: name one, as {}:Type.{inner}",
                        def.name, def.name
                    ),
                ));
            }
        },
    };
    Ok(Chain {
        written: (name.to_owned(), value.to_owned()),
        param: def.name,
        target,
        inner: (inner.to_owned(), value.to_owned()),
    })
}

fn parse_has(rtype: ResourceType, name: &str, spec: &str, value: &str) -> Result<Has, FhirError> {
    let mut parts = spec.splitn(3, ':');
    let (Some(source), Some(param), Some(inner)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(bad(name, "expected _has:SourceType:reference:parameter"));
    };
    if inner.starts_with("_has") || inner.contains('.') {
        return Err(bad(name, "_has goes one level deep"));
    }
    if inner.is_empty() {
        return Err(bad(name, "expected _has:SourceType:reference:parameter"));
    }
    let source = ResourceType::parse(source)?;
    let def = reference_param(source, name, param, "")?;
    if !def.may_refer_to(rtype) {
        return Err(bad(
            name,
            format!("{source}:{} does not refer to {rtype}", def.name),
        ));
    }
    Ok(Has {
        written: (name.to_owned(), value.to_owned()),
        source,
        param: def.name,
        inner: (inner.to_owned(), value.to_owned()),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn t(s: &str) -> ResourceType {
        ResourceType::parse(s).unwrap()
    }

    fn one(rtype: &str, name: &str, value: &str) -> Result<Chains, FhirError> {
        split_chains(t(rtype), &[(name.to_owned(), value.to_owned())]).map(|(c, _)| c)
    }

    #[test]
    fn chains_and_has_are_split_from_the_other_parameters() {
        let (c, rest) = split_chains(
            t("Observation"),
            &[
                ("code".to_owned(), "x".to_owned()),
                ("subject:Patient.family".to_owned(), "Ames".to_owned()),
                ("patient.identifier".to_owned(), "s|1".to_owned()),
            ],
        )
        .unwrap();
        assert_eq!(rest, vec![("code".to_owned(), "x".to_owned())]);
        assert_eq!(c.chains.len(), 2);
        assert_eq!(c.chains[0].param, "subject");
        assert_eq!(c.chains[0].target, t("Patient"));
        assert_eq!(c.chains[0].inner, ("family".to_owned(), "Ames".to_owned()));
        assert_eq!(
            c.chains[1].target,
            t("Patient"),
            "patient points at Patient only"
        );

        let h = one("Patient", "_has:Observation:patient:code", "1234-5").unwrap();
        assert_eq!(h.has[0].source, t("Observation"));
        assert_eq!(h.has[0].param, "patient");
        assert_eq!(h.has[0].inner, ("code".to_owned(), "1234-5".to_owned()));
        let h = one("Patient", "_has:Observation:patient:code:exact", "x").unwrap();
        assert_eq!(h.has[0].inner.0, "code:exact");
    }

    #[test]
    fn what_is_not_served_is_refused_with_what_is_wrong() {
        for (rtype, name, says) in [
            ("Observation", "subject.organization.name", "one level"),
            ("Observation", "subject.family", "several types"),
            (
                "Observation",
                "code.family",
                "no reference search parameter",
            ),
            (
                "Observation",
                "subject:Organization.name",
                "does not refer to",
            ),
            ("Observation", "subject:Nope.name", "Nope"),
            (
                "Patient",
                "_has:Observation:patient:_has:Encounter:subject:status",
                "one level",
            ),
            (
                "Patient",
                "_has:Observation:code:status",
                "no reference search parameter",
            ),
            ("Patient", "_has:Observation:patient", "_has:SourceType"),
            (
                "Patient",
                "_has:Organization:partof:name",
                "does not refer to",
            ),
        ] {
            let e = one(rtype, name, "x").unwrap_err().to_string();
            assert!(e.contains(says), "{rtype}?{name}: {e}");
        }
        let five: Vec<(String, String)> = (0..5)
            .map(|_| ("patient.family".to_owned(), "x".to_owned()))
            .collect();
        let e = split_chains(t("Observation"), &five)
            .unwrap_err()
            .to_string();
        assert!(e.contains("at most 4"), "{e}");
    }
}
