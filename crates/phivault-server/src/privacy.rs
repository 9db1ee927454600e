//! The register of processing activities (GDPR art. 30): `GET /privacy/processing-activities`.
//!
//! What the server does with personal data, why, for whom and how long, as the operator
//! configured it (`[[processing_activities]]` in `phivault.toml`), or the built-in description
//! of what phivault does out of the box ([`default_processing_activities`]). It also lists the
//! consent default of every purpose of use, so that a reader sees what happens without a
//! consent. It holds no personal data: every authenticated principal may read it (decided by
//! the `privacy.processing_activities` policy like any other access).

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use phivault_policy::{Action, ConsentDefaults, Purpose};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::fhir_routes::Access;
use crate::{ApiError, AppState};

/// One entry of the register.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessingActivity {
    /// A short name, unique in the register (`treatment`).
    pub name: String,
    /// What is done, in a sentence or two.
    pub description: String,
    /// The purposes of use (HL7 v3 PurposeOfUse codes: `TREAT`, `HRESCH`, ...).
    pub purposes: Vec<String>,
    /// The lawful basis (GDPR art. 6 and 9).
    pub legal_basis: String,
    /// Whose data (`patients`, `staff`).
    pub data_subjects: Vec<String>,
    /// The data classes: FHIR resource types, or other named categories (`AuditEvent`).
    pub data_classes: Vec<String>,
    /// Who receives the data.
    pub recipients: Vec<String>,
    /// How long the data is kept, or the rule that decides it.
    pub retention: String,
    /// Transfers outside the EEA, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfers: Option<String>,
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// What phivault does out of the box: treatment, emergency access, research (consented,
/// de-identified) and the audit trail.
pub fn default_processing_activities() -> Vec<ProcessingActivity> {
    // Every type of a patient's compartment (Patient, Observation, Claim, Device, ...).
    let clinical: Vec<String> = phivault_fhir::ResourceType::all()
        .filter(|t| t.in_patient_compartment())
        .map(|t| t.as_str().to_owned())
        .collect();
    vec![
        ProcessingActivity {
            name: "treatment".to_owned(),
            description: "Clinicians on a patient's care team record and read the patient's \
                          health record to treat them, within the patient's consents."
                .to_owned(),
            purposes: strings(&["TREAT", "HOPERAT", "HPAYMT"]),
            legal_basis: "GDPR art. 6(1)(c) and 9(2)(h): provision of health care".to_owned(),
            data_subjects: strings(&["patients"]),
            data_classes: clinical.clone(),
            recipients: strings(&["clinicians on the patient's care team", "the patient"]),
            retention: "as long as the medical record must be kept by law; erased on a valid \
                        request (crypto-shredding)"
                .to_owned(),
            transfers: None,
        },
        ProcessingActivity {
            name: "emergency-access".to_owned(),
            description: "A clinician claims an emergency (break-the-glass, ETREAT with a \
                          reason) to read a record outside their care team, even against a \
                          denying consent; each access is time-limited, flagged in the audit \
                          trail and reviewed."
                .to_owned(),
            purposes: strings(&["ETREAT"]),
            legal_basis: "GDPR art. 6(1)(d) and 9(2)(c): vital interests".to_owned(),
            data_subjects: strings(&["patients"]),
            data_classes: clinical.clone(),
            recipients: strings(&["the treating clinician", "reviewers of emergency access"]),
            retention: "as the medical record; the claim and its reason as the audit trail"
                .to_owned(),
            transfers: None,
        },
        ProcessingActivity {
            name: "research".to_owned(),
            description: "Research apps and researchers receive data only of patients whose \
                          consent permits research (none by default), and researchers only \
                          de-identified exports."
                .to_owned(),
            purposes: strings(&["HRESCH"]),
            legal_basis: "GDPR art. 6(1)(a) and 9(2)(a): explicit consent, withdrawable at \
                          any time with effect on the next request"
                .to_owned(),
            data_subjects: strings(&["patients who consented to research"]),
            data_classes: clinical,
            recipients: strings(&["research apps named by the consent", "researchers"]),
            retention: "until the consent is withdrawn or expires".to_owned(),
            transfers: None,
        },
        ProcessingActivity {
            name: "audit".to_owned(),
            description: "Every access, refusal, login and change is recorded in a \
                          tamper-evident audit trail; patients read their own access log."
                .to_owned(),
            purposes: strings(&["HOPERAT", "HLEGAL"]),
            legal_basis: "GDPR art. 6(1)(c), 32 and HIPAA 164.312(b): security of processing"
                .to_owned(),
            data_subjects: strings(&["patients", "staff", "apps"]),
            data_classes: strings(&["AuditEvent"]),
            recipients: strings(&["auditors", "each patient for their own access log"]),
            retention: "as the medical record, at least six years (HIPAA 164.316)".to_owned(),
            transfers: None,
        },
    ]
}

/// Checks a register before the server starts: a name, a retention, at least one purpose
/// (known PurposeOfUse codes) and data class in every entry, names unique. The message names
/// the entry and the field.
pub fn check_processing_activities(activities: &[ProcessingActivity]) -> Result<(), String> {
    let mut names = std::collections::BTreeSet::new();
    for (i, a) in activities.iter().enumerate() {
        let at = |field: &str, what: &str| format!("processing_activities[{i}].{field}: {what}");
        if a.name.trim().is_empty() {
            return Err(at("name", "must not be empty"));
        }
        if !names.insert(a.name.trim()) {
            return Err(at("name", "is used by another entry"));
        }
        if a.purposes.is_empty() {
            return Err(at("purposes", "name at least one purpose of use"));
        }
        for p in &a.purposes {
            if Purpose::parse(p).is_err() {
                return Err(at(
                    "purposes",
                    &format!("`{}` is not an HL7 PurposeOfUse code", clip(p)),
                ));
            }
        }
        if a.data_classes.iter().all(|c| c.trim().is_empty()) {
            return Err(at("data_classes", "name at least one data class"));
        }
        if a.retention.trim().is_empty() {
            return Err(at("retention", "must not be empty"));
        }
    }
    Ok(())
}

fn clip(s: &str) -> String {
    s.chars().take(40).collect()
}

/// The register's routes.
pub(crate) fn routes() -> Router<AppState> {
    Router::new().route("/privacy/processing-activities", get(processing_activities))
}

/// The register as JSON, with the consent default of every purpose.
fn register(activities: &[ProcessingActivity], defaults: &ConsentDefaults) -> Value {
    let defaults: serde_json::Map<String, Value> = Purpose::ALL
        .iter()
        .map(|p| {
            let d = if defaults.permits(*p) {
                "permit"
            } else {
                "deny"
            };
            (p.as_str().to_owned(), Value::from(d))
        })
        .collect();
    json!({
        "processing_activities": activities,
        "consent_defaults": defaults,
    })
}

async fn processing_activities(
    State(state): State<AppState>,
    access: Access,
) -> Result<Json<Value>, ApiError> {
    access.require(Action::ReadProcessingActivities)?;
    Ok(Json(register(
        &state.processing_activities,
        &state.consent_defaults,
    )))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_register_is_valid_and_complete() {
        let d = default_processing_activities();
        check_processing_activities(&d).unwrap();
        let names: Vec<&str> = d.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(
            names,
            ["treatment", "emergency-access", "research", "audit"]
        );
        let v = register(&d, &ConsentDefaults::default());
        assert_eq!(v["consent_defaults"]["HRESCH"], "deny");
        assert_eq!(v["consent_defaults"]["HMARKT"], "deny");
        assert_eq!(v["consent_defaults"]["TREAT"], "permit");
        assert_eq!(v["processing_activities"][2]["purposes"][0], "HRESCH");
        assert!(v["processing_activities"][0].get("transfers").is_none());
    }

    #[test]
    fn bad_registers_are_refused_by_entry_and_field() {
        let good = default_processing_activities();
        type Change = fn(&mut ProcessingActivity);
        let cases: [(Change, &str); 5] = [
            (|a| a.name = " ".to_owned(), "processing_activities[1].name"),
            (|a| a.purposes.clear(), "processing_activities[1].purposes"),
            (
                |a| a.purposes = vec!["CURIOSITY".to_owned()],
                "processing_activities[1].purposes: `CURIOSITY`",
            ),
            (
                |a| a.data_classes.clear(),
                "processing_activities[1].data_classes",
            ),
            (
                |a| a.retention = String::new(),
                "processing_activities[1].retention",
            ),
        ];
        for (change, expected) in cases {
            let mut bad = good.clone();
            change(&mut bad[1]);
            let e = check_processing_activities(&bad).unwrap_err();
            assert!(e.starts_with(expected), "{e}");
        }
        let mut twice = good;
        twice[1].name = twice[0].name.clone();
        let e = check_processing_activities(&twice).unwrap_err();
        assert!(e.contains("another entry"), "{e}");
    }
}
