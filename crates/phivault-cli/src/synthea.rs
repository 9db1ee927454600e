//! Raw Synthea output, synthetic: the files a Synthea R4 run writes, in its two shapes, with
//! the resource types it writes (Patient, Encounter, Condition, Observation, Procedure,
//! Medication, MedicationRequest, MedicationAdministration, Immunization, DiagnosticReport,
//! DocumentReference, Claim, ExplanationOfBenefit, Provenance, ImagingStudy, Device,
//! SupplyDelivery, Goal, CarePlan, CareTeam, AllergyIntolerance, Organization, Practitioner,
//! PractitionerRole, Location).
//!
//! - [`Shape::Older`]: every reference a `urn:uuid:` of an entry of the same Bundle. Each
//!   patient Bundle carries its own Organization, Location and Practitioner entries (as
//!   Synthea 2.x wrote them); the shared hospital/practitioner Bundle writes its resources with
//!   `PUT Type/id`, so importing it again changes no count.
//! - [`Shape::Newer`]: patient Bundles name Organization, Location and Practitioner by
//!   conditional references (`Organization?identifier=https://github.com/synthetichealth/synthea|…`,
//!   `Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|…`); the shared
//!   `hospitalInformation` and `practitionerInformation` Bundles are transactions whose entries
//!   carry `ifNoneExist`, and whose Locations and PractitionerRoles name the others by
//!   conditional references too.
//!
//! Deterministic for a seed; no real person's data. Self-contained beside `synth.rs` (the
//! import tests include both by path).

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::synth::{self, Rng};

/// Synthea's identifier system.
pub(crate) const SYNTHEA: &str = "https://github.com/synthetichealth/synthea";
/// The NPI system of Practitioners.
pub(crate) const NPI: &str = "http://hl7.org/fhir/sid/us-npi";
const SNOMED: &str = "http://snomed.info/sct";
const LOINC: &str = "http://loinc.org";
const RXNORM: &str = "http://www.nlm.nih.gov/research/umls/rxnorm";

/// Which Synthea output to imitate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    /// `urn:uuid:` references only; providers inside each patient Bundle.
    Older,
    /// Conditional references to shared providers; `ifNoneExist` on the shared Bundles.
    Newer,
}

/// A run's files: name -> Bundle. Shared Bundles are named as Synthea names them
/// (`hospitalInformation…json`, `practitionerInformation…json`).
pub(crate) fn synthea_run(rng: &mut Rng, shape: Shape, patients: usize) -> Vec<(String, Value)> {
    let providers = Providers::new(rng, 2);
    let mut files = Vec::new();
    let stamp = rng.below(1_000_000_000);
    match shape {
        Shape::Older => files.push((
            format!("hospitalInformation{stamp}.json"),
            providers.older_shared(),
        )),
        Shape::Newer => {
            files.push((
                format!("hospitalInformation{stamp}.json"),
                providers.hospitals(),
            ));
            files.push((
                format!("practitionerInformation{stamp}.json"),
                providers.practitioners(),
            ));
        }
    }
    for _ in 0..patients {
        let which = rng.below(providers.orgs.len());
        let bundle = patient_bundle(rng, shape, &providers, which);
        let family = bundle["entry"][0]["resource"]["name"][0]["family"]
            .as_str()
            .unwrap_or("Patient")
            .to_owned();
        files.push((format!("{family}_{}.json", rng.uuid()), bundle));
    }
    files
}

/// How many resources of each type a set of Bundles writes (`PUT`s and `POST`s).
pub(crate) fn counts(bundles: &[&Value]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for bundle in bundles {
        for entry in bundle["entry"].as_array().into_iter().flatten() {
            if let Some(t) = entry["resource"]["resourceType"].as_str() {
                *out.entry(t.to_owned()).or_insert(0) += 1;
            }
        }
    }
    out
}

struct Org {
    id: String,
    loc_id: String,
    name: String,
    npi: String,
    prac_id: String,
    role_id: String,
    family: String,
}

struct Providers {
    orgs: Vec<Org>,
}

fn coded(system: &str, code: &str, display: &str) -> Value {
    json!({"coding": [{"system": system, "code": code, "display": display}], "text": display})
}

fn synthea_id(value: &str) -> Value {
    json!([{"system": SYNTHEA, "value": value}])
}

impl Providers {
    fn new(rng: &mut Rng, n: usize) -> Self {
        let orgs = (0..n)
            .map(|i| Org {
                id: rng.uuid().to_string(),
                loc_id: rng.uuid().to_string(),
                name: format!("General Hospital {}", i + 1),
                npi: format!("99999{:05}", rng.below(100_000)),
                prac_id: rng.uuid().to_string(),
                role_id: rng.uuid().to_string(),
                family: format!("Osler{}", i + 1),
            })
            .collect();
        Providers { orgs }
    }

    fn organization(o: &Org) -> Value {
        json!({"resourceType": "Organization", "identifier": synthea_id(&o.id), "active": true,
            "type": [coded("http://terminology.hl7.org/CodeSystem/organization-type", "prov",
                           "Healthcare Provider")],
            "name": o.name, "telecom": [{"system": "phone", "value": "555-010-0100"}],
            "address": [{"line": ["1 Hospital Drive"], "city": "Boston", "state": "MA",
                         "postalCode": "02118", "country": "US"}]})
    }

    fn location(o: &Org, org_ref: &str) -> Value {
        json!({"resourceType": "Location", "identifier": synthea_id(&o.loc_id),
            "status": "active", "name": o.name,
            "telecom": [{"system": "phone", "value": "555-010-0100"}],
            "address": {"line": ["1 Hospital Drive"], "city": "Boston", "state": "MA",
                        "postalCode": "02118", "country": "US"},
            "position": {"longitude": -71.06, "latitude": 42.36},
            "managingOrganization": {"reference": org_ref, "display": o.name}})
    }

    fn practitioner(o: &Org) -> Value {
        json!({"resourceType": "Practitioner",
            "identifier": [{"system": NPI, "value": o.npi}], "active": true,
            "name": [{"family": o.family, "given": ["William"], "prefix": ["Dr."]}],
            "telecom": [{"system": "email", "value": "doctor@example.com", "use": "work"}],
            "address": [{"line": ["1 Hospital Drive"], "city": "Boston", "state": "MA",
                         "postalCode": "02118", "country": "US"}],
            "gender": "male"})
    }

    fn role(o: &Org, prac: &str, org: &str, loc: &str) -> Value {
        json!({"resourceType": "PractitionerRole", "identifier": synthea_id(&o.role_id),
            "practitioner": {"reference": prac, "display": format!("Dr. William {}", o.family)},
            "organization": {"reference": org, "display": o.name},
            "code": [coded("http://nucc.org/provider-taxonomy", "208D00000X", "General Practice")],
            "specialty": [coded("http://nucc.org/provider-taxonomy", "208D00000X",
                                "General Practice")],
            "location": [{"reference": loc, "display": o.name}],
            "telecom": [{"system": "phone", "value": "555-010-0100"}]})
    }

    fn org_ref(o: &Org) -> String {
        format!("Organization?identifier={SYNTHEA}|{}", o.id)
    }
    fn loc_ref(o: &Org) -> String {
        format!("Location?identifier={SYNTHEA}|{}", o.loc_id)
    }
    fn prac_ref(o: &Org) -> String {
        format!("Practitioner?identifier={NPI}|{}", o.npi)
    }

    /// The newer `hospitalInformation` transaction.
    fn hospitals(&self) -> Value {
        let mut entries = Vec::new();
        for o in &self.orgs {
            entries.push(conditional_entry(
                &o.id,
                Self::organization(o),
                &format!("identifier={SYNTHEA}|{}", o.id),
            ));
            entries.push(conditional_entry(
                &o.loc_id,
                Self::location(o, &Self::org_ref(o)),
                &format!("identifier={SYNTHEA}|{}", o.loc_id),
            ));
        }
        transaction(entries)
    }

    /// The newer `practitionerInformation` transaction.
    fn practitioners(&self) -> Value {
        let mut entries = Vec::new();
        for o in &self.orgs {
            entries.push(conditional_entry(
                &o.prac_id,
                Self::practitioner(o),
                &format!("identifier={NPI}|{}", o.npi),
            ));
            let role = Self::role(o, &Self::prac_ref(o), &Self::org_ref(o), &Self::loc_ref(o));
            entries.push(conditional_entry(
                &o.role_id,
                role,
                &format!("identifier={SYNTHEA}|{}", o.role_id),
            ));
        }
        transaction(entries)
    }

    /// The older shared Bundle: every provider resource by `PUT` with its id, references by
    /// `urn:uuid:`.
    fn older_shared(&self) -> Value {
        let put = |id: &str, resource: Value| {
            let rtype = resource["resourceType"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            json!({"fullUrl": format!("urn:uuid:{id}"), "resource": resource,
                   "request": {"method": "PUT", "url": format!("{rtype}/{id}")}})
        };
        let urn = |id: &str| format!("urn:uuid:{id}");
        let mut entries = Vec::new();
        for o in &self.orgs {
            entries.push(put(&o.id, Self::organization(o)));
            entries.push(put(&o.loc_id, Self::location(o, &urn(&o.id))));
            entries.push(put(&o.prac_id, Self::practitioner(o)));
            entries.push(put(
                &o.role_id,
                Self::role(o, &urn(&o.prac_id), &urn(&o.id), &urn(&o.loc_id)),
            ));
        }
        transaction(entries)
    }
}

fn transaction(entries: Vec<Value>) -> Value {
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
}

fn conditional_entry(id: &str, resource: Value, condition: &str) -> Value {
    let rtype = resource["resourceType"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    json!({"fullUrl": format!("urn:uuid:{id}"), "resource": resource,
           "request": {"method": "POST", "url": rtype, "ifNoneExist": condition}})
}

/// Builds one patient's transaction: entries POSTed with `urn:uuid:` fullUrls.
struct Builder<'r> {
    rng: &'r mut Rng,
    entries: Vec<Value>,
}

impl Builder<'_> {
    /// Adds `resource` and returns its `urn:uuid:`.
    fn add(&mut self, resource: Value) -> String {
        let urn = format!("urn:uuid:{}", self.rng.uuid());
        let rtype = resource["resourceType"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        self.entries
            .push(json!({"fullUrl": urn, "resource": resource,
                                 "request": {"method": "POST", "url": rtype}}));
        urn
    }
}

fn r(reference: &str) -> Value {
    json!({"reference": reference})
}

/// One patient's Bundle, with one encounter and one of each clinical type Synthea writes.
fn patient_bundle(rng: &mut Rng, shape: Shape, providers: &Providers, which: usize) -> Value {
    let o = &providers.orgs[which];
    let patient = synth::patient(rng);
    let mut b = Builder {
        rng,
        entries: Vec::new(),
    };
    let pat = b.add(patient);
    let (org, loc, prac) = match shape {
        Shape::Newer => (
            Providers::org_ref(o),
            Providers::loc_ref(o),
            Providers::prac_ref(o),
        ),
        Shape::Older => {
            let org = b.add(Providers::organization(o));
            let loc = b.add(Providers::location(o, &org));
            let prac = b.add(Providers::practitioner(o));
            (org, loc, prac)
        }
    };
    let start = "2021-03-04T09:00:00-05:00";
    let end = "2021-03-04T09:30:00-05:00";
    let period = json!({"start": start, "end": end});
    let prac_named = json!({"reference": prac, "display": format!("Dr. William {}", o.family)});
    let enc = b.add(json!({"resourceType": "Encounter", "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "type": [coded(SNOMED, "185349003", "Encounter for check up (procedure)")],
        "subject": r(&pat),
        "participant": [{"type": [coded(
            "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "PPRF",
            "primary performer")], "period": period, "individual": prac_named}],
        "period": period, "location": [{"location": {"reference": loc, "display": o.name}}],
        "serviceProvider": {"reference": org, "display": o.name}}));
    let cond = b.add(json!({"resourceType": "Condition",
        "clinicalStatus": coded("http://terminology.hl7.org/CodeSystem/condition-clinical",
                                "active", "Active"),
        "verificationStatus": coded("http://terminology.hl7.org/CodeSystem/condition-ver-status",
                                    "confirmed", "Confirmed"),
        "category": [coded("http://terminology.hl7.org/CodeSystem/condition-category",
                           "encounter-diagnosis", "Encounter Diagnosis")],
        "code": coded(SNOMED, "44054006", "Diabetes mellitus type 2 (disorder)"),
        "subject": r(&pat), "encounter": r(&enc), "onsetDateTime": start, "recordedDate": start}));
    let mut results = Vec::new();
    for _ in 0..3 {
        let mut obs = synth::observation(b.rng, &pat);
        obs["encounter"] = r(&enc);
        results.push(r(&b.add(obs)));
    }
    let procedure = b.add(json!({"resourceType": "Procedure", "status": "completed",
        "code": coded(SNOMED, "430193006", "Medication Reconciliation (procedure)"),
        "subject": r(&pat), "encounter": r(&enc), "performedPeriod": period,
        "location": {"reference": loc, "display": o.name}}));
    let med = b.add(json!({"resourceType": "Medication", "status": "active",
        "code": coded(RXNORM, "860975", "24 HR Metformin hydrochloride 500 MG")}));
    let med_request = b.add(
        json!({"resourceType": "MedicationRequest", "status": "active",
        "intent": "order", "medicationReference": r(&med), "subject": r(&pat),
        "encounter": r(&enc), "authoredOn": start, "requester": prac_named,
        "reasonReference": [r(&cond)],
        "dosageInstruction": [{"sequence": 1, "asNeededBoolean": false,
            "timing": {"repeat": {"frequency": 1, "period": 1.0, "periodUnit": "d"}}}]}),
    );
    b.add(
        json!({"resourceType": "MedicationAdministration", "status": "completed",
        "medicationReference": r(&med), "subject": r(&pat), "context": r(&enc),
        "effectiveDateTime": start, "request": r(&med_request), "reasonReference": [r(&cond)]}),
    );
    b.add(
        json!({"resourceType": "Immunization", "status": "completed",
        "vaccineCode": coded("http://hl7.org/fhir/sid/cvx", "140",
                             "Influenza, seasonal, injectable, preservative free"),
        "patient": r(&pat), "encounter": r(&enc), "occurrenceDateTime": start,
        "primarySource": true, "location": {"reference": loc, "display": o.name}}),
    );
    b.add(
        json!({"resourceType": "DiagnosticReport", "status": "final",
        "category": [coded("http://terminology.hl7.org/CodeSystem/v2-0074", "LAB", "Laboratory")],
        "code": coded(LOINC, "51990-0", "Basic metabolic panel - Blood"),
        "subject": r(&pat), "encounter": r(&enc), "effectiveDateTime": start, "issued":
        "2021-03-04T09:00:00.000-05:00", "performer": [prac_named], "result": results}),
    );
    let doc_id = format!("urn:uuid:{}", b.rng.uuid());
    b.add(json!({"resourceType": "DocumentReference",
        "identifier": [{"system": "urn:ietf:rfc:3986", "value": doc_id}],
        "status": "current", "type": coded(LOINC, "34117-2", "History and physical note"),
        "category": [{"coding": [{"system":
            "http://hl7.org/fhir/us/core/CodeSystem/us-core-documentreference-category",
            "code": "clinical-note", "display": "Clinical Note"}]}],
        "subject": r(&pat), "date": "2021-03-04T09:00:00.000-05:00", "author": [prac_named],
        "custodian": {"reference": org, "display": o.name},
        "content": [{"attachment": {"contentType": "text/plain; charset=utf-8",
            "data": "Q2hlY2sgdXAu"}, "format": {"system":
            "http://ihe.net/fhir/ValueSet/IHE.FormatCode.codesystem",
            "code": "urn:ihe:iti:xds:2017:mimeTypeSufficient", "display": "mimeType Sufficient"}}],
        "context": {"encounter": [r(&enc)], "period": period}}));
    let product = coded(SNOMED, "185349003", "Encounter for check up (procedure)");
    let claim = b.add(json!({"resourceType": "Claim", "status": "active",
        "type": coded("http://terminology.hl7.org/CodeSystem/claim-type", "professional",
                      "Professional"),
        "use": "claim", "patient": r(&pat), "billablePeriod": period, "created": end,
        "provider": {"reference": org, "display": o.name},
        "priority": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/processpriority",
                                 "code": "normal"}]},
        "facility": {"reference": loc, "display": o.name},
        "diagnosis": [{"sequence": 1, "diagnosisReference": r(&cond)}],
        "procedure": [{"sequence": 1, "procedureReference": r(&procedure)}],
        "insurance": [{"sequence": 1, "focal": true, "coverage": {"display": "Medicaid"}}],
        "item": [{"sequence": 1, "productOrService": product, "encounter": [r(&enc)]}],
        "total": {"value": 129.16, "currency": "USD"}}));
    let claim_id = b.rng.uuid().to_string();
    b.add(json!({"resourceType": "ExplanationOfBenefit",
        "identifier": [{"system": "https://bluebutton.cms.gov/resources/variables/clm_id",
                        "value": claim_id}],
        "status": "active",
        "type": coded("http://terminology.hl7.org/CodeSystem/claim-type", "professional",
                      "Professional"),
        "use": "claim", "patient": r(&pat), "billablePeriod": period, "created": end,
        "insurer": {"display": "Medicaid"}, "provider": prac_named, "claim": r(&claim),
        "outcome": "complete",
        "careTeam": [{"sequence": 1, "provider": prac_named, "role": coded(
            "http://terminology.hl7.org/CodeSystem/claimcareteamrole", "primary",
            "Primary provider")}],
        "insurance": [{"focal": true, "coverage": {"display": "Medicaid"}}],
        "item": [{"sequence": 1, "productOrService": product, "servicedPeriod": period,
                  "encounter": [r(&enc)]}],
        "total": [{"category": coded("http://terminology.hl7.org/CodeSystem/adjudication",
                                     "submitted", "Submitted Amount"),
                   "amount": {"value": 129.16, "currency": "USD"}}],
        "payment": {"amount": {"value": 103.33, "currency": "USD"}}}));
    b.add(json!({"resourceType": "ImagingStudy",
        "identifier": [{"use": "official", "system": "urn:ietf:rfc:3986",
                        "value": "urn:oid:1.2.840.99999999.1.1"}],
        "status": "available", "subject": r(&pat), "encounter": r(&enc), "started": start,
        "numberOfSeries": 1, "numberOfInstances": 1,
        "procedureCode": [coded(SNOMED, "399208008", "Plain chest X-ray (procedure)")],
        "location": {"reference": loc, "display": o.name},
        "series": [{"uid": "1.2.840.99999999.1.1.1", "number": 1,
            "modality": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "DX",
                         "display": "Digital Radiography"},
            "numberOfInstances": 1,
            "bodySite": {"system": SNOMED, "code": "51185008", "display": "Thoracic structure"},
            "started": start,
            "instance": [{"uid": "1.2.840.99999999.1.1.1.1", "number": 1, "title":
                "Image of chest", "sopClass": {"system": "urn:ietf:rfc:3986",
                "code": "urn:oid:1.2.840.10008.5.1.4.1.1.1.1"}}]}]}));
    let udi = format!("(01){:014}", b.rng.below(1_000_000_000));
    b.add(json!({"resourceType": "Device",
        "udiCarrier": [{"deviceIdentifier": udi, "carrierHRF": udi}],
        "status": "active", "distinctIdentifier": udi, "manufactureDate": start,
        "expirationDate": "2031-03-04T09:00:00-05:00", "lotNumber": "1234",
        "serialNumber": "5678",
        "deviceName": [{"name": "Blood glucose meter", "type": "user-friendly-name"}],
        "type": coded(SNOMED, "337414009", "Blood glucose meter (physical object)"),
        "patient": r(&pat)}));
    b.add(
        json!({"resourceType": "SupplyDelivery", "status": "completed", "patient": r(&pat),
        "type": coded("http://terminology.hl7.org/CodeSystem/supply-item-type", "device",
                      "Device"),
        "suppliedItem": {"quantity": {"value": 1},
            "itemCodeableConcept": coded(SNOMED, "337388004", "Blood glucose testing strips")},
        "occurrenceDateTime": start}),
    );
    let goal = b.add(json!({"resourceType": "Goal", "lifecycleStatus": "active",
        "achievementStatus": coded("http://terminology.hl7.org/CodeSystem/goal-achievement",
                                   "in-progress", "In Progress"),
        "description": {"text": "Hemoglobin A1c total in Blood < 7.0"},
        "subject": r(&pat), "addresses": [r(&cond)]}));
    let team = b.add(
        json!({"resourceType": "CareTeam", "status": "active", "subject": r(&pat),
        "encounter": r(&enc), "period": {"start": start},
        "participant": [
            {"role": [coded(SNOMED, "116154003", "Patient")], "member": r(&pat)},
            {"role": [coded(SNOMED, "223366009", "Healthcare professional")],
             "member": prac_named},
            {"role": [coded(SNOMED, "224891009", "Healthcare services")],
             "member": {"reference": org, "display": o.name}}],
        "managingOrganization": [{"reference": org, "display": o.name}]}),
    );
    b.add(
        json!({"resourceType": "CarePlan", "status": "active", "intent": "order",
        "category": [coded(SNOMED, "698360004", "Diabetes self management plan")],
        "subject": r(&pat), "encounter": r(&enc), "period": {"start": start},
        "careTeam": [r(&team)], "addresses": [r(&cond)], "goal": [r(&goal)],
        "activity": [{"detail": {"code": coded(SNOMED, "160670007", "Diabetic diet"),
            "status": "in-progress", "location": {"reference": loc, "display": o.name}}}]}),
    );
    b.add(json!({"resourceType": "AllergyIntolerance",
        "clinicalStatus": coded("http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical",
                                "active", "Active"),
        "verificationStatus": coded(
            "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification",
            "confirmed", "Confirmed"),
        "type": "allergy", "category": ["food"], "criticality": "low",
        "code": coded(SNOMED, "91935009", "Allergy to peanut"),
        "patient": r(&pat), "recordedDate": start}));
    // Provenance last: its targets are every resource of the Bundle, as Synthea writes it.
    let targets: Vec<Value> = b
        .entries
        .iter()
        .filter(|e| e["resource"]["resourceType"] != "Medication")
        .filter(|e| !is_directory_type(e["resource"]["resourceType"].as_str()))
        .map(|e| r(e["fullUrl"].as_str().unwrap_or_default()))
        .collect();
    b.add(json!({"resourceType": "Provenance", "target": targets,
        "recorded": "2021-03-04T09:30:00.000-05:00",
        "agent": [
            {"type": coded("http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                           "author", "Author"),
             "who": prac_named, "onBehalfOf": {"reference": org, "display": o.name}},
            {"type": coded("http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                           "transmitter", "Transmitter"),
             "who": prac_named, "onBehalfOf": {"reference": org, "display": o.name}}]}));
    transaction(b.entries)
}

/// The provider types (outside every patient compartment).
fn is_directory_type(t: Option<&str>) -> bool {
    matches!(
        t,
        Some("Organization" | "Location" | "Practitioner" | "PractitionerRole")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_shapes_hold_every_type_and_are_deterministic() {
        for shape in [Shape::Older, Shape::Newer] {
            let a = synthea_run(&mut Rng::new(3), shape, 2);
            let b = synthea_run(&mut Rng::new(3), shape, 2);
            assert_eq!(a, b);
            let bundles: Vec<&Value> = a.iter().map(|(_, b)| b).collect();
            let counts = counts(&bundles);
            for t in [
                "Patient",
                "Encounter",
                "Condition",
                "Observation",
                "Procedure",
                "MedicationRequest",
                "Medication",
                "MedicationAdministration",
                "Immunization",
                "DiagnosticReport",
                "DocumentReference",
                "Claim",
                "ExplanationOfBenefit",
                "Provenance",
                "ImagingStudy",
                "Device",
                "SupplyDelivery",
                "Goal",
                "CarePlan",
                "CareTeam",
                "AllergyIntolerance",
                "Organization",
                "Practitioner",
                "PractitionerRole",
                "Location",
            ] {
                assert!(counts.get(t).copied().unwrap_or(0) > 0, "{shape:?} {t}");
            }
        }
        let newer = synthea_run(&mut Rng::new(3), Shape::Newer, 1);
        let text = newer[2].1.to_string();
        assert!(text.contains("Organization?identifier=https://github.com/synthetichealth"));
        assert!(text.contains("Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|"));
        assert!(!newer[0].1.to_string().contains("urn:uuid:\""));
        assert!(newer[0].1.to_string().contains("ifNoneExist"));
    }
}
