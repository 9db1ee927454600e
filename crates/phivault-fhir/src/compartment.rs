//! How a resource names its patient: the references in its compartment-defining element.
//!
//! A resource's compartment patient decides its data key, who may read it, what an export
//! of the patient holds and what an erasure destroys. [`compartment_patient`] reads it from
//! a relative reference `Patient/{id}` only, so every other way FHIR allows to name a patient
//! (an absolute URL, a conditional reference `Patient?identifier=...`, a logical reference
//! by identifier, a contained resource, a Bundle placeholder) would leave the resource outside
//! the patient's compartment. Rules kept here:
//!
//! - **A link is resolved before it is stored, or the write is refused.** [`patient_links`]
//!   lists every reference of a compartment-defining element that is not relative; the server
//!   rewrites the resolvable ones (its own absolute URLs, conditional references matching
//!   exactly one Patient, Bundle placeholders) to `Patient/{id}` and refuses the rest, and the
//!   store refuses any that is left ([`check_patient_links`]), whatever the write path.
//! - **An unknown patient is never protected less than a known one**: a reference that cannot
//!   be tied to one of this server's patients is refused rather than stored outside every
//!   compartment.
//!
//! [`compartment_patient`]: crate::compartment_patient

use serde_json::Value;

use crate::search::{parse_relative_reference, search_params, values_at};
use crate::{FhirError, Issue, IssueCode, ResourceType, ValidResource};

/// How an unresolved reference names its target. `Debug` shows the form only (a conditional
/// reference's query can hold identifiers).
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LinkKind {
    /// An absolute URL (`https://host/fhir/Patient/1`): this server's own when it starts with
    /// one of its base URLs, another server's otherwise.
    Absolute,
    /// A conditional reference `Type?query` (the type and the query, still percent-encoded).
    Conditional {
        /// The target type as written (`Patient`, ...).
        target: String,
        /// The query after `?`.
        query: String,
    },
    /// A placeholder resolved inside a transaction (`urn:uuid:...`, `urn:oid:...`).
    Placeholder,
    /// A contained resource (`#id`): the patient is not one of this server's.
    Contained,
    /// `Reference.identifier` without `Reference.reference`.
    IdentifierOnly,
    /// A `reference` string that is none of the forms above.
    Malformed,
}

/// A reference in a compartment-defining element that does not name its target as a relative
/// `Type/id`. Its `reference` string is PHI (an identifier can be in it): never log it.
#[derive(Clone, PartialEq, Eq)]
pub struct PatientLink {
    /// The element, e.g. `Observation.subject` (for messages).
    pub path: String,
    /// The `reference` string as written (empty for [`LinkKind::IdentifierOnly`]).
    pub reference: String,
    /// Its form.
    pub kind: LinkKind,
}

impl LinkKind {
    /// The form's name.
    fn name(&self) -> &'static str {
        match self {
            LinkKind::Conditional { .. } => "Conditional",
            LinkKind::Absolute => "Absolute",
            LinkKind::Placeholder => "Placeholder",
            LinkKind::Contained => "Contained",
            LinkKind::IdentifierOnly => "IdentifierOnly",
            LinkKind::Malformed => "Malformed",
        }
    }
}

impl std::fmt::Debug for LinkKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::fmt::Debug for PatientLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PatientLink")
            .field("path", &self.path)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl PatientLink {
    /// The 422 refusing this link, with a message saying what to send instead (no value).
    pub fn refusal(&self, why: &str) -> FhirError {
        FhirError::Invalid(vec![Issue {
            code: IssueCode::Invalid,
            path: self.path.clone(),
            message: format!(
                "{why}; a compartment-defining reference must name one of this server's \
                 patients, as `Patient/{{id}}`"
            ),
        }])
    }
}

/// The compartment-defining element of `rtype` (the expression of its `patient` search
/// parameter), without `where(...)` steps, when it has one.
fn compartment_element(rtype: ResourceType) -> Option<&'static str> {
    search_params(rtype)
        .iter()
        .find(|d| d.name == "patient")
        .map(|d| d.expression)
}

/// Every reference of `resource`'s compartment-defining element that is not a relative
/// `Type/id` (relative references to other types, such as `Group/1`, are fine: they name no
/// patient). Empty for types outside the patient compartment and for Patients.
pub fn patient_links(resource: &ValidResource) -> Vec<PatientLink> {
    patient_links_of(resource.resource_type(), resource.body())
}

/// [`patient_links`] of a body of `rtype`.
pub fn patient_links_of(rtype: ResourceType, body: &Value) -> Vec<PatientLink> {
    let Some(expression) = compartment_element(rtype) else {
        return Vec::new();
    };
    let path = expression
        .split('|')
        .next()
        .unwrap_or_default()
        .trim()
        .split('.')
        .filter(|s| !s.starts_with("where("))
        .collect::<Vec<_>>()
        .join(".");
    let mut out = Vec::new();
    for value in values_at(body, expression) {
        let kind = match value.get("reference").and_then(Value::as_str) {
            Some(reference) => match classify(reference) {
                Some(kind) => kind,
                None => continue,
            },
            None if value.get("identifier").is_some() => LinkKind::IdentifierOnly,
            // A display alone names no patient of this server: no compartment, as before.
            None => continue,
        };
        out.push(PatientLink {
            path: path.clone(),
            reference: value
                .get("reference")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            kind,
        });
    }
    out
}

/// The form of a `reference` string; `None` for a relative `Type/id[/_history/n]`.
fn classify(reference: &str) -> Option<LinkKind> {
    if parse_relative_reference(reference).is_some() {
        return None;
    }
    let lower = reference.get(..8).unwrap_or(reference).to_ascii_lowercase();
    if lower.starts_with("https://") || lower.starts_with("http://") {
        return Some(LinkKind::Absolute);
    }
    if lower.starts_with("urn:uuid") || lower.starts_with("urn:oid:") {
        return Some(LinkKind::Placeholder);
    }
    if reference.starts_with('#') {
        return Some(LinkKind::Contained);
    }
    if let Some((target, query)) = reference.split_once('?')
        && !target.is_empty()
        && target.bytes().all(|b| b.is_ascii_alphabetic())
    {
        return Some(LinkKind::Conditional {
            target: target.to_owned(),
            query: query.to_owned(),
        });
    }
    Some(LinkKind::Malformed)
}

/// The store's check: a resource whose compartment-defining element still holds a reference
/// that is not relative is refused (422), so no write path can store a patient's resource
/// outside the patient's compartment.
pub fn check_patient_links(resource: &ValidResource) -> Result<(), FhirError> {
    match patient_links(resource).first() {
        None => Ok(()),
        Some(link) => Err(link.refusal(match link.kind {
            LinkKind::Absolute => "an absolute reference that is not resolved",
            LinkKind::Conditional { .. } => "a conditional reference that is not resolved",
            LinkKind::Placeholder => "a placeholder that no entry of the transaction defines",
            LinkKind::Contained => "a contained resource cannot be the compartment's patient",
            LinkKind::IdentifierOnly => "a reference by identifier alone is not accepted",
            LinkKind::Malformed => "not a valid reference",
        })),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    fn obs(subject: Value) -> Value {
        json!({"resourceType": "Observation", "status": "final",
               "code": {"text": "x"}, "subject": subject})
    }

    fn kinds(body: Value) -> Vec<LinkKind> {
        let rtype = ResourceType::parse(body["resourceType"].as_str().unwrap()).unwrap();
        patient_links_of(rtype, &body)
            .into_iter()
            .map(|l| l.kind)
            .collect()
    }

    #[test]
    fn link_forms() {
        assert!(kinds(obs(json!({"reference": "Patient/p1"}))).is_empty());
        assert!(kinds(obs(json!({"reference": "Patient/p1/_history/2"}))).is_empty());
        assert!(kinds(obs(json!({"reference": "Group/g1"}))).is_empty());
        assert!(kinds(obs(json!({"display": "someone"}))).is_empty());
        assert_eq!(
            kinds(obs(
                json!({"reference": "https://h.example/fhir/Patient/p1"})
            )),
            vec![LinkKind::Absolute]
        );
        assert_eq!(
            kinds(obs(json!({"reference": "HTTP://h.example/Patient/p1"}))),
            vec![LinkKind::Absolute]
        );
        assert_eq!(
            kinds(obs(json!({"reference": "Patient?identifier=s%7Cv"}))),
            vec![LinkKind::Conditional {
                target: "Patient".to_owned(),
                query: "identifier=s%7Cv".to_owned()
            }]
        );
        assert_eq!(
            kinds(obs(json!({"identifier": {"system": "s", "value": "v"}}))),
            vec![LinkKind::IdentifierOnly]
        );
        assert_eq!(
            kinds(obs(json!({"reference": "urn:uuid:8e7d"}))),
            vec![LinkKind::Placeholder]
        );
        assert_eq!(
            kinds(obs(json!({"reference": "#p"}))),
            vec![LinkKind::Contained]
        );
        assert_eq!(
            kinds(obs(json!({"reference": "Patient/a/b"}))),
            vec![LinkKind::Malformed]
        );
        // Types whose compartment element is `patient`, and types outside the compartment.
        assert_eq!(
            kinds(json!({"resourceType": "AllergyIntolerance",
                         "patient": {"reference": "Patient?identifier=v"}}))
            .len(),
            1
        );
        assert!(
            kinds(json!({"resourceType": "Practitioner",
                         "identifier": [{"value": "x"}]}))
            .is_empty()
        );
    }

    #[test]
    fn debug_hides_the_reference() {
        let link = &patient_links_of(
            ResourceType::parse("Observation").unwrap(),
            &obs(json!({"reference": "Patient?identifier=secret-mrn"})),
        )[0];
        assert_eq!(link.path, "Observation.subject");
        assert!(!format!("{link:?}").contains("secret-mrn"));
        assert!(!link.refusal("x").to_string().contains("secret-mrn"));
    }
}
