//! Scopes in plain language, for the consent page.
//!
//! The person deciding reads what an app may do, not SMART syntax: every data scope is
//! described by what it allows (create, read, update, delete, search), on which records
//! (a type in everyday words, or all of them) and whose (the patient's own with `patient/`,
//! what the user can reach with `user/`, every patient with `system/`). A scope this server
//! does not know is never described as harmless: it says it is not recognised.

use phivault_fhir::ResourceType;
use phivault_policy::{Permissions, ScopeContext, SmartScope};
use serde::Serialize;

/// What the identity scopes allow (`openid`, `fhirUser`, `profile`).
const IDENTITY: &str = "Know who you are (your name and role)";
/// What a scope this server does not know is shown as.
const UNKNOWN: &str = "Access that phivault does not recognise";

/// One line of the consent page's list: a checkbox named `scope` with the scope as its
/// value, labelled with the description.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct ScopeItem {
    /// The scope as requested (`patient/Observation.rs`): the checkbox's value.
    pub(crate) scope: String,
    /// [`describe_scope`] of it: the checkbox's label.
    pub(crate) description: String,
    /// Whether the box starts ticked.
    pub(crate) checked: bool,
}

impl ScopeItem {
    /// The item of `scope`, described.
    pub(crate) fn new(scope: &str, checked: bool) -> ScopeItem {
        ScopeItem {
            scope: scope.to_owned(),
            description: describe_scope(scope),
            checked,
        }
    }
}

/// `scope` in plain language: `patient/Observation.rs` is "Read and search your
/// observations (lab results, vital signs)". SMART v2 and v1 data scopes (through
/// [`SmartScope`]), the identity, launch and refresh scopes; anything else is "Access that
/// phivault does not recognise".
pub(crate) fn describe_scope(scope: &str) -> String {
    let fixed = match scope {
        "openid" | "fhirUser" | "profile" => IDENTITY,
        "offline_access" => "Stay connected when you are not using it (until you revoke it)",
        "online_access" => "Stay connected while you are signed in",
        "launch" => "Open with the patient and encounter chosen in your EHR",
        "launch/patient" => "Know which patient record is open",
        "launch/encounter" => "Know which encounter (visit or stay) is open",
        _ => match SmartScope::parse(scope) {
            Ok(data) => return describe_data(&data),
            Err(_) => UNKNOWN,
        },
    };
    fixed.to_owned()
}

/// "Read and search" for `rs`: the verbs in `cruds` order, the first capitalised.
fn verbs(permissions: Permissions) -> String {
    let words: Vec<&str> = [
        (Permissions::CREATE, "create"),
        (Permissions::READ, "read"),
        (Permissions::UPDATE, "update"),
        (Permissions::DELETE, "delete"),
        (Permissions::SEARCH, "search"),
    ]
    .into_iter()
    .filter(|(p, _)| permissions.contains(*p))
    .map(|(_, w)| w)
    .collect();
    let mut text = match words.split_last() {
        Some((last, [])) => (*last).to_owned(),
        Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
        // A parsed scope has at least one permission.
        None => "use".to_owned(),
    };
    if let Some(first) = text.get_mut(..1) {
        first.make_ascii_uppercase();
    }
    text
}

fn describe_data(scope: &SmartScope) -> String {
    let verbs = verbs(scope.permissions());
    let records = match (scope.context(), scope.resource_type()) {
        (ScopeContext::Patient, None) => "all of your records".to_owned(),
        (ScopeContext::Patient, Some(t)) => format!("your {}", noun(t)),
        (ScopeContext::User, None) => "all records you can access".to_owned(),
        (ScopeContext::User, Some(t)) => format!("the {} you can access", noun(t)),
        (ScopeContext::System, None) => "all records of every patient".to_owned(),
        (ScopeContext::System, Some(t)) => format!("the {} of every patient", noun(t)),
    };
    format!("{verbs} {records}")
}

/// Everyday words for the records of a type, plural.
fn noun(t: ResourceType) -> String {
    let known = match t.as_str() {
        "AllergyIntolerance" => "allergies and intolerances",
        "Appointment" => "appointments",
        "CarePlan" => "care plans",
        "CareTeam" => "care teams",
        "Claim" => "insurance claims",
        "Communication" => "messages",
        "Composition" => "clinical documents",
        "Condition" => "conditions (problems and diagnoses)",
        "Consent" => "consents (privacy choices)",
        "Coverage" => "insurance coverage",
        "Device" => "devices (implants and equipment)",
        "DiagnosticReport" => "diagnostic reports (lab and imaging reports)",
        "DocumentReference" => "documents (clinical notes and letters)",
        "Encounter" => "encounters (visits and hospital stays)",
        "ExplanationOfBenefit" => "insurance claims and payments",
        "FamilyMemberHistory" => "family health history",
        "Goal" => "care goals",
        "Group" => "groups of patients",
        "ImagingStudy" => "imaging studies (X-rays and scans)",
        "Immunization" => "immunizations (vaccines)",
        "Location" => "locations",
        "Medication" => "medication details",
        "MedicationAdministration" => "medicines given",
        "MedicationDispense" => "medicines dispensed",
        "MedicationRequest" => "prescriptions",
        "MedicationStatement" => "medicines taken",
        "Observation" => "observations (lab results, vital signs)",
        "Organization" => "organizations (hospitals and clinics)",
        "Patient" => "demographics (name, birth date, contact details)",
        "Practitioner" => "care providers",
        "PractitionerRole" => "care providers' roles",
        "Procedure" => "procedures (operations and treatments)",
        "Provenance" => "record histories (who made or changed a record)",
        "QuestionnaireResponse" => "questionnaire answers",
        "RelatedPerson" => "related people (family and carers)",
        "ServiceRequest" => "orders and referrals",
        "Specimen" => "specimens (lab samples)",
        _ => return generic_noun(t.as_str()),
    };
    known.to_owned()
}

/// `CarePlan` -> "care plan records": the type's words in lower case.
fn generic_noun(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 10);
    let mut previous_lower = false;
    for c in name.chars() {
        if c.is_ascii_uppercase() && previous_lower {
            out.push(' ');
        }
        previous_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
        out.push(c.to_ascii_lowercase());
    }
    out.push_str(" records");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_the_scopes_of_the_plan() {
        for (scope, text) in [
            (
                "patient/Observation.rs",
                "Read and search your observations (lab results, vital signs)",
            ),
            (
                "user/*.cruds",
                "Create, read, update, delete and search all records you can access",
            ),
            ("launch/patient", "Know which patient record is open"),
            ("openid", IDENTITY),
            ("fhirUser", IDENTITY),
            ("profile", IDENTITY),
            (
                "offline_access",
                "Stay connected when you are not using it (until you revoke it)",
            ),
            ("online_access", "Stay connected while you are signed in"),
            (
                "launch",
                "Open with the patient and encounter chosen in your EHR",
            ),
        ] {
            assert_eq!(describe_scope(scope), text, "{scope}");
        }
    }

    #[test]
    fn describes_v1_and_other_contexts() {
        for (scope, text) in [
            ("patient/*.read", "Read and search all of your records"),
            (
                "user/Observation.write",
                "Create, update and delete the observations (lab results, vital signs) you \
                 can access",
            ),
            ("system/*.r", "Read all records of every patient"),
            (
                "system/Patient.s",
                "Search the demographics (name, birth date, contact details) of every patient",
            ),
            ("patient/MedicationRequest.r", "Read your prescriptions"),
            ("patient/CarePlan.rs", "Read and search your care plans"),
            (
                "patient/DeviceUseStatement.r",
                "Read your device use statement records",
            ),
        ] {
            assert_eq!(describe_scope(scope), text, "{scope}");
        }
    }

    #[test]
    fn unknown_and_malformed_scopes_are_not_made_to_look_harmless() {
        for scope in [
            "patient/Observation.rs?category=laboratory",
            "patient/Foo.r",
            "patient/Observation.sr",
            "admin",
            "",
            "<script>",
        ] {
            assert_eq!(describe_scope(scope), UNKNOWN, "{scope}");
        }
    }

    #[test]
    fn every_stored_type_gets_words() {
        for t in ResourceType::all() {
            let n = noun(t);
            assert!(!n.is_empty() && n.is_ascii(), "{}", t.as_str());
            assert!(!n.contains(char::is_uppercase) || n.contains('X'), "{n}");
        }
        assert_eq!(generic_noun("CarePlan"), "care plan records");
        assert_eq!(generic_noun("Basic"), "basic records");
    }

    #[test]
    fn items_carry_the_scope_and_its_words() {
        let item = ScopeItem::new("patient/Observation.rs", true);
        assert_eq!(item.scope, "patient/Observation.rs");
        assert!(
            item.description
                .starts_with("Read and search your observations")
        );
        assert!(item.checked);
    }
}
