//! Which patient's compartment a resource belongs to, from the Patient CompartmentDefinition.
//!
//! A resource's compartment patient decides its data key, who may read it, what an export
//! of the patient holds and what an erasure destroys. The compartment-defining elements of
//! each type are the references of the parameters the official Patient CompartmentDefinition
//! lists for it (`Observation`: `subject`, `performer`; `Claim`: `patient`, `payee`; ...),
//! generated at build time, plus the `patient` parameter of the four types outside it that
//! name a patient (Contract, Device, GuidanceResponse, Task). [`compartment_patient`] reads
//! the patient from a relative reference `Patient/{id}` only, so every other way FHIR allows
//! to name a patient (an absolute URL, a conditional reference `Patient?identifier=...`, a
//! logical reference by identifier, a contained resource, a Bundle placeholder) would leave
//! the resource outside the patient's compartment. Rules kept here:
//!
//! - **A link is resolved before it is stored, or the write is refused.** [`patient_links`]
//!   lists every reference of a compartment-defining element that is not relative and may
//!   name a patient (its type is Patient or cannot be told); the server rewrites the
//!   resolvable ones (its own absolute URLs, conditional references matching exactly one
//!   Patient, Bundle placeholders) to `Patient/{id}` and refuses the rest, and the store
//!   refuses any that is left ([`check_patient_links`]), whatever the write path.
//! - **An unknown patient is never protected less than a known one**: a reference that cannot
//!   be tied to one of this server's patients is refused rather than stored outside every
//!   compartment.
//! - **A compartment type names exactly one patient** ([`check_compartment`], 422 otherwise):
//!   one with none (no subject, a Group or a Device as subject, another server's patient)
//!   would be sealed under no patient's key and read by no patient, so it is refused rather
//!   than stored under the directory key; one naming two different patients (a `subject` and
//!   a `performer`, a Group of several patients) cannot be sealed under both keys, and is
//!   refused rather than readable by one patient and hidden from the other.
//! - **A directory resource names no patient**: a resource of a type outside the compartment
//!   (Medication, Organization, ...) that references a Patient or contains one is refused, as
//!   the directory key would let every user read it.
//!
//! [`compartment_patient`]: crate::compartment_patient

use serde_json::Value;

use crate::search::{SearchParamDef, is_type_name, parse_relative_reference, search_params};
use crate::spec::{self, select};
use crate::{FhirError, Id, Issue, IssueCode, ResourceType, ValidResource};

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

/// The search parameters whose references put a resource of `rtype` in a patient's
/// compartment (empty for types outside it; `link` for Patient, whose compartment is its own).
pub fn compartment_params(rtype: ResourceType) -> &'static [&'static str] {
    spec::type_spec(rtype.as_str()).map_or(&[], |s| s.compartment)
}

/// The definitions of the compartment parameters of `rtype`.
fn compartment_defs(rtype: ResourceType) -> impl Iterator<Item = &'static SearchParamDef> {
    let defs = search_params(rtype);
    compartment_params(rtype)
        .iter()
        .filter_map(move |name| defs.iter().find(|d| d.name == *name))
}

/// The element an expression selects, for messages: its first path without casts and
/// `where(...)` steps (`Observation.subject`).
fn element_path(expression: &str) -> String {
    let first = expression.split('|').next().unwrap_or_default().trim();
    let first = first.trim_start_matches('(');
    let first = first.split(" as ").next().unwrap_or_default();
    first
        .split('.')
        .filter(|s| !s.starts_with("where(") && !s.starts_with("as("))
        .collect::<Vec<_>>()
        .join(".")
}

/// The values of the compartment-defining elements of a body, each with its element path;
/// `where(resolve() is Patient)` keeps every reference here, resolved or not.
fn compartment_values(rtype: ResourceType, body: &Value) -> Vec<(String, &Value)> {
    if rtype == ResourceType::PATIENT {
        return Vec::new();
    }
    let mut out = Vec::new();
    for def in compartment_defs(rtype) {
        for value in select(body, def.paths, false) {
            out.push((element_path(def.expression), value));
        }
    }
    out
}

/// The patient compartment a resource belongs to: the Patient's own id, or the one patient its
/// compartment-defining elements reference as `Patient/{id}`. `None` for resources outside
/// every compartment (Practitioner, Organization, ...), for a Patient without an id yet, and
/// for resources naming no patient (which [`check_compartment`] refuses for compartment
/// types). A resource naming several is refused by [`check_compartment`]; stored ones never do.
pub fn compartment_patient(resource: &ValidResource) -> Option<Id> {
    compartment_patient_of(resource.resource_type(), resource.body())
}

/// [`compartment_patient`] of a body of `rtype` known to be valid (for example one the store
/// wrote after validation and has just decrypted).
pub fn compartment_patient_of(rtype: ResourceType, body: &Value) -> Option<Id> {
    compartment_patients_of(rtype, body).into_iter().next()
}

/// Every distinct patient the compartment-defining elements of a body reference as
/// `Patient/{id}`, in order (the Patient's own id for a Patient).
pub fn compartment_patients_of(rtype: ResourceType, body: &Value) -> Vec<Id> {
    if rtype == ResourceType::PATIENT {
        return body
            .get("id")
            .and_then(Value::as_str)
            .and_then(|s| Id::parse(s).ok())
            .into_iter()
            .collect();
    }
    let mut out: Vec<Id> = Vec::new();
    for (_, value) in compartment_values(rtype, body) {
        if let Some(("Patient", id)) = value
            .get("reference")
            .and_then(Value::as_str)
            .and_then(parse_relative_reference)
            && !out.contains(&id)
        {
            out.push(id);
        }
    }
    out
}

/// Every reference of `resource`'s compartment-defining elements that is not a relative
/// `Type/id` and may name a patient: its target type is Patient or cannot be told (relative
/// references to other types, such as `Group/1`, and absolute URLs, conditional references,
/// contained resources or identifiers of another type name no patient). Empty for types
/// outside the patient compartment and for Patients.
pub fn patient_links(resource: &ValidResource) -> Vec<PatientLink> {
    patient_links_of(resource.resource_type(), resource.body())
}

/// [`patient_links`] of a body of `rtype`.
pub fn patient_links_of(rtype: ResourceType, body: &Value) -> Vec<PatientLink> {
    let mut out = Vec::new();
    for (path, value) in compartment_values(rtype, body) {
        let reference = value.get("reference").and_then(Value::as_str);
        let kind = match reference {
            Some(reference) => match classify(reference) {
                None => continue,
                Some(LinkKind::Absolute) if url_type(reference).is_some_and(|t| t != "Patient") => {
                    continue;
                }
                Some(LinkKind::Conditional { target, .. }) if target != "Patient" => continue,
                Some(LinkKind::Contained)
                    if contained_type(body, reference).is_some_and(|t| t != "Patient") =>
                {
                    continue;
                }
                Some(kind) => kind,
            },
            None if value.get("identifier").is_some() => {
                match value.get("type").and_then(Value::as_str) {
                    Some(t) if t != "Patient" => continue,
                    _ => LinkKind::IdentifierOnly,
                }
            }
            // A display alone names no patient of this server.
            None => continue,
        };
        out.push(PatientLink {
            path,
            reference: reference.unwrap_or_default().to_owned(),
            kind,
        });
    }
    out
}

/// The type an absolute URL's path names (`.../Group/1`, `.../Group/1/_history/2`), if any.
fn url_type(url: &str) -> Option<&str> {
    let path = url.split(['?', '#']).next().unwrap_or_default();
    let mut segments: Vec<&str> = path.split('/').collect();
    if segments.len() >= 4 && segments[segments.len() - 2] == "_history" {
        segments.truncate(segments.len() - 2);
    }
    let rtype = *segments.get(segments.len().checked_sub(2)?)?;
    is_type_name(rtype).then_some(rtype)
}

/// The `resourceType` of the contained resource `#id` of a body, if there is one.
fn contained_type<'v>(body: &'v Value, reference: &str) -> Option<&'v str> {
    let id = reference.strip_prefix('#')?;
    body.get("contained")?
        .as_array()?
        .iter()
        .find(|c| c.get("id").and_then(Value::as_str) == Some(id))?
        .get("resourceType")?
        .as_str()
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

/// The store's check: a resource whose compartment-defining elements still hold a reference
/// that may name a patient and is not relative is refused (422), so no write path can store a
/// patient's resource outside the patient's compartment; then [`check_compartment`].
pub fn check_patient_links(resource: &ValidResource) -> Result<(), FhirError> {
    if let Some(link) = patient_links(resource).first() {
        return Err(link.refusal(match link.kind {
            LinkKind::Absolute => "an absolute reference that is not resolved",
            LinkKind::Conditional { .. } => "a conditional reference that is not resolved",
            LinkKind::Placeholder => "a placeholder that no entry of the transaction defines",
            LinkKind::Contained => "a contained resource cannot be the compartment's patient",
            LinkKind::IdentifierOnly => "a reference by identifier alone is not accepted",
            LinkKind::Malformed => "not a valid reference",
        }));
    }
    check_compartment(resource)
}

/// The compartment rules (422 when broken): a resource of a compartment type names exactly one
/// patient as `Patient/{id}`; a resource of a directory type references no Patient and
/// contains none. Patients themselves pass.
pub fn check_compartment(resource: &ValidResource) -> Result<(), FhirError> {
    check_compartment_of(resource.resource_type(), resource.body())
}

/// [`check_compartment`] of a body of `rtype`.
pub fn check_compartment_of(rtype: ResourceType, body: &Value) -> Result<(), FhirError> {
    if rtype == ResourceType::PATIENT {
        return Ok(());
    }
    let elements = || {
        let mut paths: Vec<String> = compartment_defs(rtype)
            .map(|d| element_path(d.expression))
            .collect();
        paths.dedup();
        paths
    };
    let refuse = |code, path: String, message: String| {
        Err(FhirError::Invalid(vec![Issue {
            code,
            path,
            message,
        }]))
    };
    if !rtype.in_patient_compartment() {
        return match names_a_patient(body, true) {
            false => Ok(()),
            true => refuse(
                IssueCode::Invalid,
                rtype.to_string(),
                format!(
                    "{rtype} is outside every patient compartment (stored under the directory key, \
                     readable by every user): it must not reference or contain a Patient"
                ),
            ),
        };
    }
    let patients = compartment_patients_of(rtype, body);
    let paths = elements();
    match patients.len() {
        1 => Ok(()),
        0 => refuse(
            IssueCode::Required,
            paths.first().cloned().unwrap_or_else(|| rtype.to_string()),
            format!(
                "{rtype} must name its patient: one of {} must reference `Patient/{{id}}` \
                 (naming no patient, or only a Group, a Device or another subject, it would \
                 be protected by no patient's key)",
                paths.join(", ")
            ),
        ),
        _ => refuse(
            IssueCode::Invalid,
            paths.first().cloned().unwrap_or_else(|| rtype.to_string()),
            format!(
                "{rtype} must name one patient, not several: it is sealed under one patient's \
                 key (the references in {} name different patients)",
                paths.join(", ")
            ),
        ),
    }
}

/// Whether a body (or, with `root`, anything below it) references a Patient or contains one.
fn names_a_patient(value: &Value, root: bool) -> bool {
    match value {
        Value::Object(object) => {
            if !root && object.get("resourceType").and_then(Value::as_str) == Some("Patient") {
                return true;
            }
            if let Some(reference) = object.get("reference").and_then(Value::as_str) {
                let patient = match parse_relative_reference(reference) {
                    Some((rtype, _)) => rtype == "Patient",
                    None => {
                        url_type(reference) == Some("Patient")
                            || reference
                                .split_once('?')
                                .is_some_and(|(t, _)| t == "Patient")
                    }
                };
                if patient {
                    return true;
                }
            }
            object.values().any(|v| names_a_patient(v, false))
        }
        Value::Array(items) => items.iter().any(|v| names_a_patient(v, false)),
        _ => false,
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

    fn check(body: Value) -> Result<(), FhirError> {
        let rtype = ResourceType::parse(body["resourceType"].as_str().unwrap()).unwrap();
        check_compartment_of(rtype, &body)
    }

    #[test]
    fn compartments_of_new_types() {
        let p = |id: &str| json!({"reference": format!("Patient/{id}")});
        let cases = [
            (
                json!({"resourceType": "Claim", "patient": p("c1"),
                    "provider": {"reference": "Organization/o"}}),
                "c1",
            ),
            (
                json!({"resourceType": "ExplanationOfBenefit", "patient": p("e1")}),
                "e1",
            ),
            // Provenance names its patient among its targets.
            (
                json!({"resourceType": "Provenance", "target": [
                {"reference": "Encounter/x"}, p("v1")]}),
                "v1",
            ),
            (
                json!({"resourceType": "ImagingStudy", "subject": p("i1")}),
                "i1",
            ),
            (json!({"resourceType": "Device", "patient": p("d1")}), "d1"),
            (
                json!({"resourceType": "SupplyDelivery", "patient": p("s1")}),
                "s1",
            ),
            (json!({"resourceType": "Goal", "subject": p("g1")}), "g1"),
            (
                json!({"resourceType": "MedicationAdministration", "subject": p("m1"),
                    "performer": [{"actor": {"reference": "Practitioner/dr"}}]}),
                "m1",
            ),
            // The same patient twice is one patient.
            (
                json!({"resourceType": "Observation", "subject": p("o1"),
                    "performer": [p("o1"), {"reference": "https://other.example/Practitioner/1"}]}),
                "o1",
            ),
        ];
        for (body, expected) in cases {
            let rtype = ResourceType::parse(body["resourceType"].as_str().unwrap()).unwrap();
            assert_eq!(
                compartment_patient_of(rtype, &body).unwrap().as_str(),
                expected,
                "{body}"
            );
            assert!(patient_links_of(rtype, &body).is_empty(), "{body}");
            check(body).unwrap();
        }
    }

    #[test]
    fn compartment_types_name_exactly_one_patient() {
        let refused = |body: Value, phrase: &str| match check(body.clone()) {
            Err(FhirError::Invalid(issues)) => {
                assert!(issues[0].message.contains(phrase), "{body}: {issues:?}")
            }
            other => panic!("{body}: {other:?}"),
        };
        // No subject, a Group, a Device: no patient's key could seal it.
        refused(
            json!({"resourceType": "Observation", "status": "final"}),
            "must name its patient",
        );
        refused(
            json!({"resourceType": "Observation", "subject": {"reference": "Group/g"}}),
            "must name its patient",
        );
        refused(
            json!({"resourceType": "Claim", "patient": {"display": "someone"}}),
            "must name its patient",
        );
        refused(
            json!({"resourceType": "Task", "status": "ready"}),
            "must name its patient",
        );
        // Two patients, through two elements or one.
        refused(
            json!({"resourceType": "Observation", "subject": {"reference": "Patient/a"},
                       "performer": [{"reference": "Patient/b"}]}),
            "not several",
        );
        refused(
            json!({"resourceType": "Group", "member": [
                    {"entity": {"reference": "Patient/a"}}, {"entity": {"reference": "Patient/b"}}]}),
            "not several",
        );
        // A directory resource naming or containing a patient.
        refused(
            json!({"resourceType": "Medication", "extension": [{"url": "x",
                    "valueReference": {"reference": "Patient/a"}}]}),
            "directory",
        );
        refused(
            json!({"resourceType": "VerificationResult", "target": [
                    {"reference": "https://h.example/fhir/Patient/a/_history/1"}]}),
            "directory",
        );
        refused(
            json!({"resourceType": "Organization", "contained": [
                    {"resourceType": "Patient", "id": "p"}]}),
            "directory",
        );
        check(json!({"resourceType": "Medication", "code": {"text": "x"}})).unwrap();
        check(json!({"resourceType": "Patient", "id": "p"})).unwrap();
        // Links that may name a patient are still links: a contained Patient, an unknown
        // contained id, a conditional Patient reference in any compartment element.
        let rtype = ResourceType::parse("Observation").unwrap();
        let body = json!({"resourceType": "Observation", "subject": {"reference": "Patient/a"},
            "contained": [{"resourceType": "Patient", "id": "c"}],
            "performer": [{"reference": "#c"}, {"reference": "Patient?identifier=x"},
                          {"reference": "Practitioner?identifier=y"},
                          {"identifier": {"value": "z"}, "type": "Practitioner"}]});
        let kinds: Vec<String> = patient_links_of(rtype, &body)
            .iter()
            .map(|l| format!("{:?} {}", l.kind, l.path))
            .collect();
        assert_eq!(
            kinds,
            [
                "Contained Observation.performer",
                "Conditional Observation.performer"
            ]
        );
    }
}
