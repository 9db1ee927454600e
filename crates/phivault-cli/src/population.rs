//! The population of `phivault bench http`: one transaction Bundle per patient in the shape
//! Synthea writes, 100 to 300 resources each (the Patient, then encounters over the years,
//! each with LOINC-coded Observations dated on the encounter's day and sometimes a
//! Condition, a MedicationRequest and a Procedure).
//!
//! Deterministic: patient `i` of seed `s` is always the same Bundle, whatever order the
//! patients are generated in (the ingest workers take them in any order). Patients and
//! Observations come from `synth` (the same as the store benchmark and `phivault synthea`).

use serde_json::{Value, json};

use crate::synth::{self, Rng};

/// Fewest and most resources of one patient.
pub(crate) const MIN_RESOURCES: usize = 100;
pub(crate) const MAX_RESOURCES: usize = 300;

const SNOMED: &str = "http://snomed.info/sct";
const RXNORM: &str = "http://www.nlm.nih.gov/research/umls/rxnorm";

/// (code, display) of conditions, medications and procedures.
const CONDITIONS: &[(&str, &str)] = &[
    ("44054006", "Diabetes mellitus type 2 (disorder)"),
    (
        "38341003",
        "Hypertensive disorder, systemic arterial (disorder)",
    ),
    ("195662009", "Acute viral pharyngitis (disorder)"),
    ("10509002", "Acute bronchitis (disorder)"),
    ("55822004", "Hyperlipidemia (disorder)"),
];
const MEDICATIONS: &[(&str, &str)] = &[
    (
        "860975",
        "24 HR Metformin hydrochloride 500 MG Extended Release Oral Tablet",
    ),
    ("314076", "lisinopril 10 MG Oral Tablet"),
    ("316049", "Hydrochlorothiazide 25 MG"),
    ("308136", "amLODIPine 2.5 MG Oral Tablet"),
];
const PROCEDURES: &[(&str, &str)] = &[
    ("430193006", "Medication Reconciliation (procedure)"),
    (
        "710824005",
        "Assessment of health and social care needs (procedure)",
    ),
    ("171207006", "Depression screening (procedure)"),
    (
        "428191000124101",
        "Documentation of current medications (procedure)",
    ),
];
const ENCOUNTER_TYPES: &[(&str, &str)] = &[
    ("185349003", "Encounter for check up (procedure)"),
    ("162673000", "General examination of patient (procedure)"),
    ("185345009", "Encounter for symptom (procedure)"),
];

/// One patient: the Bundle and what the workloads ask about them.
#[derive(Clone)]
pub(crate) struct PatientRecord {
    pub(crate) bundle: Value,
    pub(crate) resources: usize,
    pub(crate) family: String,
    /// `system|value` of the medical record number.
    pub(crate) identifier: String,
    /// LOINC codes of the patient's Observations (each at least once).
    pub(crate) codes: Vec<String>,
    /// A day (`YYYY-MM-DD`) about two thirds into the patient's history: `date=ge` it
    /// matches about a third of their Observations.
    pub(crate) recent: String,
}

impl std::fmt::Debug for PatientRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Synthetic, but a record all the same: counts only.
        f.debug_struct("PatientRecord")
            .field("resources", &self.resources)
            .finish_non_exhaustive()
    }
}

/// The generator of patient `index` of the population of `seed`.
fn rng_for(seed: u64, index: u64) -> Rng {
    let mut mix = Rng::new(seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    Rng::new(mix.next_u64())
}

fn coded(system: &str, (code, display): (&str, &str)) -> Value {
    json!({"coding": [{"system": system, "code": code, "display": display}], "text": display})
}

/// `YYYY-MM-DD`, `days` after 2012-01-01.
fn day(days: i64) -> String {
    let d = time::macros::date!(2012 - 01 - 01) + time::Duration::days(days);
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

/// Patient `index` of the population of `seed`.
pub(crate) fn patient(seed: u64, index: u64) -> PatientRecord {
    let mut rng = rng_for(seed, index);
    let rng = &mut rng;
    let total = MIN_RESOURCES + rng.below(MAX_RESOURCES - MIN_RESOURCES + 1);
    let patient = synth::patient(rng);
    let family = patient["name"][0]["family"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let mrn = &patient["identifier"][1];
    let identifier = format!(
        "{}|{}",
        mrn["system"].as_str().unwrap_or_default(),
        mrn["value"].as_str().unwrap_or_default()
    );
    let mut entries: Vec<Value> = Vec::with_capacity(total);
    let mut add = |rng: &mut Rng, resource: Value| -> String {
        let urn = format!("urn:uuid:{}", rng.uuid());
        let rtype = resource["resourceType"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        entries.push(json!({"fullUrl": urn, "resource": resource,
                            "request": {"method": "POST", "url": rtype}}));
        urn
    };
    let pat = add(rng, patient);
    let mut count = 1;
    let mut codes: Vec<String> = Vec::new();
    let mut days = i64::try_from(rng.below(3 * 365)).unwrap_or(0);
    let mut encounter_days = Vec::new();
    while count < total {
        days += 15 + i64::try_from(rng.below(120)).unwrap_or(0);
        encounter_days.push(days);
        let date = day(days);
        let start = format!("{date}T09:00:00-05:00");
        let end = format!("{date}T09:30:00-05:00");
        let period = json!({"start": start, "end": end});
        let kind = *pick(rng, ENCOUNTER_TYPES);
        let enc = add(
            rng,
            json!({"resourceType": "Encounter", "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "type": [coded(SNOMED, kind)], "subject": {"reference": pat}, "period": period}),
        );
        count += 1;
        let observations = (6 + rng.below(7)).min(total - count);
        for _ in 0..observations {
            let mut obs = synth::observation(rng, &pat);
            obs["encounter"] = json!({"reference": enc});
            obs["effectiveDateTime"] = json!(start);
            if let Some(code) = obs["code"]["coding"][0]["code"].as_str()
                && !codes.iter().any(|c| c == code)
            {
                codes.push(code.to_owned());
            }
            add(rng, obs);
            count += 1;
        }
        if count < total && rng.below(10) < 3 {
            let condition = *pick(rng, CONDITIONS);
            add(
                rng,
                json!({"resourceType": "Condition",
                "clinicalStatus": coded("http://terminology.hl7.org/CodeSystem/condition-clinical",
                                        ("active", "Active")),
                "verificationStatus": coded(
                    "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                    ("confirmed", "Confirmed")),
                "code": coded(SNOMED, condition), "subject": {"reference": pat},
                "encounter": {"reference": enc}, "onsetDateTime": start, "recordedDate": start}),
            );
            count += 1;
        }
        if count < total && rng.below(10) < 5 {
            let medication = *pick(rng, MEDICATIONS);
            add(
                rng,
                json!({"resourceType": "MedicationRequest", "status": "active",
                "intent": "order", "medicationCodeableConcept": coded(RXNORM, medication),
                "subject": {"reference": pat}, "encounter": {"reference": enc},
                "authoredOn": start}),
            );
            count += 1;
        }
        if count < total && rng.below(10) < 4 {
            let procedure = *pick(rng, PROCEDURES);
            add(
                rng,
                json!({"resourceType": "Procedure", "status": "completed",
                "code": coded(SNOMED, procedure), "subject": {"reference": pat},
                "encounter": {"reference": enc}, "performedPeriod": period}),
            );
            count += 1;
        }
    }
    let recent = day(encounter_days
        .get(encounter_days.len() * 2 / 3)
        .copied()
        .unwrap_or(days));
    PatientRecord {
        bundle: json!({"resourceType": "Bundle", "type": "transaction", "entry": entries}),
        resources: count,
        family,
        identifier,
        codes,
        recent,
    }
}

fn pick<'a, T>(rng: &mut Rng, items: &'a [T]) -> &'a T {
    &items[rng.below(items.len())]
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_per_patient_and_sized_like_synthea() {
        let a = patient(7, 3);
        assert_eq!(a.bundle, patient(7, 3).bundle);
        assert_ne!(a.bundle, patient(7, 4).bundle);
        assert_ne!(a.bundle, patient(8, 3).bundle);
        for i in 0..40 {
            let p = patient(1, i);
            let entries = p.bundle["entry"].as_array().unwrap();
            assert_eq!(entries.len(), p.resources);
            assert!((MIN_RESOURCES..=MAX_RESOURCES).contains(&p.resources));
            assert!(!p.codes.is_empty());
            assert!(
                p.identifier
                    .starts_with("http://hospital.smarthealthit.org|MRN")
            );
            let types: std::collections::BTreeSet<&str> = entries
                .iter()
                .filter_map(|e| e["resource"]["resourceType"].as_str())
                .collect();
            assert!(types.contains("Encounter") && types.contains("Observation"));
            // Every Observation is dated on its encounter's day and LOINC-coded.
            let urn = entries[0]["fullUrl"].as_str().unwrap();
            for e in entries
                .iter()
                .filter(|e| e["resource"]["resourceType"] == "Observation")
            {
                assert_eq!(e["resource"]["subject"]["reference"], urn);
                assert_eq!(
                    e["resource"]["code"]["coding"][0]["system"],
                    "http://loinc.org"
                );
                assert!(e["resource"]["effectiveDateTime"].as_str().unwrap().len() > 10);
            }
        }
        assert_eq!(day(0), "2012-01-01");
        assert_eq!(day(366), "2013-01-01");
    }
}
