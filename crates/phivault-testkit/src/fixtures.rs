//! FHIR R4 resources and Bundles for tests. Every function returns a body valid against the
//! R4 structure definitions; tests change fields with `value["field"] = json!(...)`.

use serde_json::{Value, json};

use crate::markers::random_u64;

/// The identifier system of the test MRNs.
pub const MRN_SYSTEM: &str = "urn:oid:2.16.840.1.113883.19.5.99999.1";
/// LOINC.
pub const LOINC: &str = "http://loinc.org";
/// SNOMED CT.
pub const SNOMED: &str = "http://snomed.info/sct";
/// HL7 v3 ActCode (sensitivity labels such as `PSY`, `ETH`, `HIV` in `meta.security`).
pub const ACT_CODE: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";
/// Condition clinical status code system.
pub const CONDITION_CLINICAL: &str = "http://terminology.hl7.org/CodeSystem/condition-clinical";
/// AllergyIntolerance clinical status code system.
pub const ALLERGY_CLINICAL: &str =
    "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical";

/// A random `urn:uuid:` (lower-case, version 4 layout).
pub fn urn_uuid() -> String {
    let a = random_u64();
    let b = random_u64();
    format!(
        "urn:uuid:{:08x}-{:04x}-4{:03x}-{:x}{:03x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        8 + (b >> 62),
        (b >> 48) & 0xfff,
        b & 0xffff_ffff_ffff
    )
}

/// A random MRN (`MRN-` and 12 hex digits).
pub fn mrn() -> String {
    format!("MRN-{:012x}", random_u64() & 0xffff_ffff_ffff)
}

/// A Patient with one official name, an MRN, a gender and a birth date.
pub fn patient_with(family: &str, given: &str, mrn: &str, gender: &str, birth_date: &str) -> Value {
    json!({
        "resourceType": "Patient",
        "identifier": [{ "system": MRN_SYSTEM, "value": mrn }],
        "active": true,
        "name": [{ "use": "official", "family": family, "given": [given] }],
        "gender": gender,
        "birthDate": birth_date,
    })
}

/// A Patient with a random MRN, female, born 1987-06-15.
pub fn patient(family: &str, given: &str) -> Value {
    patient_with(family, given, &mrn(), "female", "1987-06-15")
}

/// A Coding, with or without a system.
pub fn coding(system: Option<&str>, code: &str, display: &str) -> Value {
    let mut c = json!({ "code": code, "display": display });
    if let Some(s) = system {
        c["system"] = json!(s);
    }
    c
}

/// A final Observation (heart rate value) of `subject` (`Patient/<id>` or `urn:uuid:...`)
/// with one coding and an effective dateTime.
pub fn observation(subject: &str, code: Value, effective: &str) -> Value {
    json!({
        "resourceType": "Observation",
        "status": "final",
        "category": [{ "coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
            "code": "vital-signs"
        }]}],
        "code": { "coding": [code] },
        "subject": { "reference": subject },
        "effectiveDateTime": effective,
        "valueQuantity": {
            "value": 72,
            "unit": "beats/minute",
            "system": "http://unitsofmeasure.org",
            "code": "/min"
        },
    })
}

/// A confirmed Condition of `subject` with a SNOMED code, a clinical status (`active`,
/// `resolved`, ...) and an onset.
pub fn condition(subject: &str, code: &str, clinical_status: &str, onset: &str) -> Value {
    json!({
        "resourceType": "Condition",
        "clinicalStatus": { "coding": [{ "system": CONDITION_CLINICAL, "code": clinical_status }] },
        "verificationStatus": { "coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status",
            "code": "confirmed"
        }]},
        "code": { "coding": [{ "system": SNOMED, "code": code, "display": "test condition" }] },
        "subject": { "reference": subject },
        "onsetDateTime": onset,
    })
}

/// An AllergyIntolerance of `patient` with a SNOMED code and a clinical status.
pub fn allergy(patient: &str, code: &str, clinical_status: &str) -> Value {
    json!({
        "resourceType": "AllergyIntolerance",
        "clinicalStatus": { "coding": [{ "system": ALLERGY_CLINICAL, "code": clinical_status }] },
        "code": { "coding": [{ "system": SNOMED, "code": code, "display": "test allergy" }] },
        "patient": { "reference": patient },
        "recordedDate": "2020-01-02",
    })
}

/// A practitioner (outside any patient compartment).
pub fn practitioner(family: &str) -> Value {
    json!({
        "resourceType": "Practitioner",
        "name": [{ "family": family, "given": ["Test"] }],
    })
}

/// Builds a transaction or batch Bundle.
#[derive(Debug, Clone)]
pub struct BundleBuilder {
    kind: &'static str,
    entries: Vec<Value>,
}

impl BundleBuilder {
    /// A transaction (all or nothing).
    pub fn transaction() -> Self {
        Self {
            kind: "transaction",
            entries: Vec::new(),
        }
    }

    /// A batch (entries independent).
    pub fn batch() -> Self {
        Self {
            kind: "batch",
            entries: Vec::new(),
        }
    }

    /// Adds `POST <type>` of `resource` under a fresh `urn:uuid:` fullUrl, returned so that
    /// other entries can reference it.
    pub fn post(&mut self, resource: Value) -> String {
        let full = urn_uuid();
        let rtype = resource["resourceType"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        self.entries.push(json!({
            "fullUrl": full,
            "resource": resource,
            "request": { "method": "POST", "url": rtype },
        }));
        full
    }

    /// Adds `PUT <url>` (`Patient/123`) of `resource`, with `ifMatch: W/"v"` when given.
    pub fn put(&mut self, url: &str, resource: Value, if_match: Option<u64>) -> &mut Self {
        let mut request = json!({ "method": "PUT", "url": url });
        if let Some(v) = if_match {
            request["ifMatch"] = json!(format!("W/\"{v}\""));
        }
        self.entries
            .push(json!({ "resource": resource, "request": request }));
        self
    }

    /// Adds `DELETE <url>`.
    pub fn delete(&mut self, url: &str) -> &mut Self {
        self.entries
            .push(json!({ "request": { "method": "DELETE", "url": url } }));
        self
    }

    /// Adds `GET <url>` (read or search).
    pub fn get(&mut self, url: &str) -> &mut Self {
        self.entries
            .push(json!({ "request": { "method": "GET", "url": url } }));
        self
    }

    /// Adds a raw entry as is (for malformed-entry tests).
    pub fn raw(&mut self, entry: Value) -> &mut Self {
        self.entries.push(entry);
        self
    }

    /// Number of entries so far.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True without entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The Bundle.
    pub fn build(&self) -> Value {
        json!({
            "resourceType": "Bundle",
            "type": self.kind,
            "entry": self.entries,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids() {
        let u = urn_uuid();
        let hex = u.trim_start_matches("urn:uuid:");
        let parts: Vec<&str> = hex.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(
            hex.chars()
                .all(|c| c == '-' || c.is_ascii_digit() || ('a'..='f').contains(&c))
        );
        assert_ne!(urn_uuid(), urn_uuid());
    }

    #[test]
    fn bundles() {
        let mut b = BundleBuilder::transaction();
        let p = b.post(patient("Doe", "Jane"));
        b.post(observation(
            &p,
            coding(Some(LOINC), "8867-4", "Heart rate"),
            "2021-03-04",
        ));
        b.put("Patient/x", patient("Doe", "John"), Some(2))
            .delete("Patient/y")
            .get("Patient?family=doe");
        let v = b.build();
        assert_eq!(v["entry"].as_array().unwrap().len(), 5);
        assert_eq!(v["entry"][1]["resource"]["subject"]["reference"], p);
        assert_eq!(v["entry"][2]["request"]["ifMatch"], "W/\"2\"");
    }
}
