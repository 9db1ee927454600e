//! The resource types, Patient compartment and search parameters of FHIR R4 4.0.1, as tables
//! generated at build time (`build.rs`) from the vendored official definitions (`data/`).
//!
//! Invariants the generator keeps (it fails the build otherwise):
//! - every stored type has a [`TypeSpec`]; its `compartment` lists the parameters of the
//!   Patient CompartmentDefinition for it (and `patient` for the few types outside it that
//!   name a patient), each one a supported reference parameter of that type;
//! - every supported parameter's paths were checked against the FHIR schema and end in
//!   elements of a type its kind indexes; every other parameter of the type is listed in
//!   `unsupported` with the reason, so a query naming it gets a precise refusal.
//!
//! The tables are `static`: nothing is parsed or loaded per request.

use serde_json::Value;

use crate::search::{SearchParamDef, SearchParamKind, parse_relative_reference};

include!(concat!(env!("OUT_DIR"), "/spec_tables.rs"));

/// One step of a compiled FHIRPath expression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Step {
    /// The element under any of these JSON keys (several for a choice element such as
    /// `effective[x]`); arrays are flattened.
    Field(&'static [&'static str]),
    /// `where(resolve() is T)`: only References whose relative reference is to type `T`.
    RefIs(&'static str),
    /// `where(key='value')`: only objects whose `key` is that string.
    Eq(&'static str, &'static str),
}

/// The generated tables of one resource type.
#[derive(Debug)]
pub(crate) struct TypeSpec {
    /// The parameters that put a resource of this type in a patient's compartment.
    pub(crate) compartment: &'static [&'static str],
    /// The search parameters served.
    pub(crate) params: &'static [SearchParamDef],
    /// The search parameters of the specification that are not served.
    pub(crate) unsupported: &'static [Unsupported],
}

/// A search parameter of the specification that this server does not serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsupported {
    /// Its name.
    pub name: &'static str,
    /// Its FHIR type (`quantity`, `composite`, ...).
    pub kind: &'static str,
    /// Why it is not served.
    pub reason: &'static str,
}

/// The tables of `name`, a stored type.
pub(crate) fn type_spec(name: &str) -> Option<&'static TypeSpec> {
    TYPE_NAMES
        .binary_search(&name)
        .ok()
        .and_then(|i| TYPE_SPECS.get(i))
}

/// Why an R4 type is not stored, if it is one this server refuses.
pub(crate) fn exclusion(name: &str) -> Option<&'static str> {
    EXCLUDED
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, why)| *why)
}

/// The values `paths` select in `body`, arrays flattened. With `filter_references` false,
/// `where(resolve() is T)` keeps every value (to see the references it could not resolve).
pub(crate) fn select<'v>(
    body: &'v Value,
    paths: &[&[Step]],
    filter_references: bool,
) -> Vec<&'v Value> {
    let mut out = Vec::new();
    for path in paths {
        let mut current = vec![body];
        for step in *path {
            let mut next = Vec::new();
            match step {
                Step::Field(keys) => {
                    for value in current {
                        for key in *keys {
                            match value.get(key) {
                                Some(Value::Array(items)) => next.extend(items.iter()),
                                Some(item) => next.push(item),
                                None => {}
                            }
                        }
                    }
                }
                Step::RefIs(rtype) => {
                    next = current
                        .into_iter()
                        .filter(|v| {
                            !filter_references
                                || v.get("reference")
                                    .and_then(Value::as_str)
                                    .and_then(parse_relative_reference)
                                    .is_some_and(|(t, _)| t == *rtype)
                        })
                        .collect();
                }
                Step::Eq(key, expected) => {
                    next = current
                        .into_iter()
                        .filter(|v| v.get(key).and_then(Value::as_str) == Some(expected))
                        .collect();
                }
            }
            current = next;
        }
        out.extend(current);
    }
    out
}

/// Counts over all stored types: (parameters served, parameters not served).
pub fn param_counts() -> (usize, usize) {
    PARAM_COUNTS
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn tables_cover_every_type() {
        assert_eq!(TYPE_NAMES.len(), TYPE_SPECS.len());
        assert_eq!(TYPE_NAMES.len() + EXCLUDED.len(), 146);
        let mut sorted = TYPE_NAMES.to_vec();
        sorted.sort_unstable();
        assert_eq!(sorted, TYPE_NAMES);
        // 66 types in the official compartment, Patient included, AuditEvent not stored, plus
        // 4 named by `patient`.
        let keyed = TYPE_SPECS
            .iter()
            .filter(|s| !s.compartment.is_empty())
            .count();
        assert_eq!(keyed, 69);
        for name in [
            "Claim",
            "ExplanationOfBenefit",
            "Provenance",
            "Device",
            "Task",
        ] {
            assert!(!type_spec(name).unwrap().compartment.is_empty(), "{name}");
        }
        for name in ["Medication", "Practitioner", "Organization", "Location"] {
            assert!(type_spec(name).unwrap().compartment.is_empty(), "{name}");
        }
        for name in [
            "Bundle",
            "Binary",
            "Parameters",
            "AuditEvent",
            "OperationOutcome",
        ] {
            assert!(
                type_spec(name).is_none() && exclusion(name).is_some(),
                "{name}"
            );
        }
        let (served, not) = param_counts();
        assert!(served > 900 && not > 50, "{served} {not}");
    }

    #[test]
    fn generated_paths() {
        let obs = type_spec("Observation").unwrap();
        let date = obs.params.iter().find(|d| d.name == "date").unwrap();
        // The Timing alternative of effective[x] is not indexed by a date parameter.
        let keys: Vec<&str> = date
            .paths
            .iter()
            .flat_map(|p| p.iter())
            .flat_map(|s| match s {
                Step::Field(k) => k.to_vec(),
                _ => Vec::new(),
            })
            .collect();
        assert!(keys.contains(&"effectiveDateTime") && keys.contains(&"effectivePeriod"));
        assert!(!keys.contains(&"effectiveTiming"));
        let patient = obs.params.iter().find(|d| d.name == "patient").unwrap();
        assert_eq!(
            patient.paths,
            &[&[Step::Field(&["subject"]), Step::RefIs("Patient")][..]]
        );
        let unsupported: Vec<&str> = obs.unsupported.iter().map(|u| u.name).collect();
        for name in ["code-value-quantity", "combo-code-value-concept"] {
            assert!(unsupported.contains(&name), "{name}");
        }
        // Quantity parameters are served over their Quantity alternatives; the SampledData
        // ones are left out.
        let quantity = obs
            .params
            .iter()
            .find(|d| d.name == "value-quantity")
            .unwrap();
        assert_eq!(quantity.kind, SearchParamKind::Quantity);
        assert_eq!(quantity.paths, &[&[Step::Field(&["valueQuantity"])][..]]);
        let probability = type_spec("RiskAssessment")
            .unwrap()
            .params
            .iter()
            .find(|d| d.name == "probability")
            .unwrap();
        assert_eq!(probability.kind, SearchParamKind::Number);
        let email = type_spec("Patient")
            .unwrap()
            .params
            .iter()
            .find(|d| d.name == "email")
            .unwrap();
        assert_eq!(
            email.paths,
            &[&[Step::Field(&["telecom"]), Step::Eq("system", "email")][..]]
        );
    }
}
