//! Synthetic patients in the shape Synthea writes (R4, US Core), with an identifier of every
//! HIPAA Safe Harbor class planted where real records carry it, as a distinctive string.
//!
//! Deterministic: patient `n` is always the same. No real person's data. The references are in
//! the store's form (`Patient/<id>`), as the engine receives them. Shared with the criterion
//! benchmark (`benches/deidentify.rs` includes this file by path).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use time::{Date, Duration, Month};

/// One planted identifier: its Safe Harbor class and the text that must not survive.
#[derive(Debug, Clone)]
pub(crate) struct Planted {
    pub(crate) class: &'static str,
    pub(crate) value: String,
}

/// The 18 classes of 45 CFR 164.514(b)(2)(i), by the short names the tests use.
pub(crate) const CLASSES: &[&str] = &[
    "A names",
    "B geographic subdivisions smaller than a state",
    "C dates (except year)",
    "D telephone numbers",
    "E fax numbers",
    "F email addresses",
    "G social security numbers",
    "H medical record numbers",
    "I health plan beneficiary numbers",
    "J account numbers",
    "K certificate/licence numbers",
    "L vehicle identifiers",
    "M device identifiers and serial numbers",
    "N URLs",
    "O IP addresses",
    "P biometric identifiers",
    "Q full-face photographs",
    "R any other unique identifying number, characteristic or code",
];

/// What a generated patient looks like where risk is measured.
#[derive(Debug, Clone)]
pub(crate) struct Profile {
    /// `YYYY-MM-DD`.
    pub(crate) birth_date: String,
    pub(crate) gender: &'static str,
    /// Five digits.
    pub(crate) zip: String,
    /// Each encounter brings 17 resources (the patient has 6 more).
    pub(crate) encounters: usize,
    /// SNOMED code and display of the patient's conditions (one per encounter, cycling).
    pub(crate) conditions: Vec<(&'static str, &'static str)>,
    /// Age in years at the first encounter.
    pub(crate) first_visit_age: i64,
}

impl Profile {
    /// The default profile of patient `n`.
    pub(crate) fn of(n: usize) -> Profile {
        Profile {
            birth_date: format!("{}-{:02}-{:02}", 1950 + n % 40, 1 + n % 12, 3 + n % 25),
            gender: if n.is_multiple_of(2) {
                "female"
            } else {
                "male"
            },
            zip: "02139".to_owned(),
            encounters: 3,
            conditions: vec![
                ("44054006", "Diabetes mellitus type 2 (disorder)"),
                (
                    "38341003",
                    "Hypertensive disorder, systemic arterial (disorder)",
                ),
            ],
            first_visit_age: 30,
        }
    }
}

/// A generated patient: their Patient, the rest of their compartment, what was planted.
#[derive(Debug, Clone)]
pub(crate) struct Synthetic {
    pub(crate) id: String,
    pub(crate) patient: Value,
    pub(crate) resources: Vec<(&'static str, Value)>,
    pub(crate) planted: Vec<Planted>,
}

impl Synthetic {
    /// Every resource, the Patient first.
    pub(crate) fn all(&self) -> impl Iterator<Item = (&'static str, &Value)> {
        std::iter::once(("Patient", &self.patient))
            .chain(self.resources.iter().map(|(t, r)| (*t, r)))
    }
}

/// Three lower-case letters naming patient `n` (`n` < 17,576), so patients' strings differ
/// and none is a prefix of another's.
pub(crate) fn tag(n: usize) -> String {
    let mut out = String::new();
    let mut v = n;
    for _ in 0..3 {
        out.insert(0, char::from(b'a' + u8::try_from(v % 26).unwrap_or(0)));
        v /= 26;
    }
    out
}

fn date_of(s: &str) -> Date {
    let y: i32 = s[0..4].parse().unwrap_or(2000);
    let m: u8 = s[5..7].parse().unwrap_or(1);
    let d: u8 = s[8..10].parse().unwrap_or(1);
    Date::from_calendar_date(y, Month::try_from(m).unwrap_or(Month::January), d)
        .unwrap_or(Date::MIN)
}

fn ymd(d: Date) -> String {
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

/// An id in the shape Synthea gives (a UUID), distinct per patient and resource.
fn uuid(n: usize, k: usize) -> String {
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        0x5eed_0000 + n,
        k,
        n % 4096,
        k % 4096,
        n * 1_000_003 + k
    )
}

fn cc(system: &str, code: &str, display: &str) -> Value {
    json!({"coding": [{"system": system, "code": code, "display": display}], "text": display})
}

fn narrative(text: &str) -> Value {
    json!({"status": "generated",
           "div": format!("<div xmlns=\"http://www.w3.org/1999/xhtml\">{text}</div>")})
}

fn number(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or(Value::Null)
}

const LOINC: &str = "http://loinc.org";
const SNOMED: &str = "http://snomed.info/sct";
const UCUM: &str = "http://unitsofmeasure.org";
const V2_0203: &str = "http://terminology.hl7.org/CodeSystem/v2-0203";
const OBS_CATEGORY: &str = "http://terminology.hl7.org/CodeSystem/observation-category";

/// Patient `n` with `profile`.
pub(crate) fn patient(n: usize, profile: &Profile) -> Synthetic {
    let t = tag(n);
    let id = uuid(n, 0);
    let mut planted: Vec<Planted> = Vec::new();
    let mut plant = |class: &'static str, value: String| -> String {
        planted.push(Planted {
            class,
            value: value.clone(),
        });
        value
    };

    // A: names.
    let given = plant("A names", format!("Quintavius{t}"));
    let family = plant("A names", format!("Zorblatt{t}"));
    let maiden = plant("A names", format!("Vexlington{t}"));
    let contact_given = plant("A names", format!("Ophira{t}"));
    let full = format!("{given} {family}");
    // B: geography below the state.
    let line = plant(
        "B geographic subdivisions smaller than a state",
        format!("4417 Quarrendon{t} Lane"),
    );
    let city = plant(
        "B geographic subdivisions smaller than a state",
        format!("Pemberwick{t}"),
    );
    let county = plant(
        "B geographic subdivisions smaller than a state",
        format!("Ulverbrook{t} County"),
    );
    let birth_city = plant(
        "B geographic subdivisions smaller than a state",
        format!("Glenmarrow{t}"),
    );
    let zip = plant(
        "B geographic subdivisions smaller than a state",
        profile.zip.clone(),
    );
    let lat = plant(
        "B geographic subdivisions smaller than a state",
        format!("42.36{:05}", 17_000 + n),
    );
    let lon = plant(
        "B geographic subdivisions smaller than a state",
        format!("-71.05{:05}", 83_000 + n),
    );
    let facility = plant(
        "B geographic subdivisions smaller than a state",
        format!("Pemberwick{t} General Hospital"),
    );
    // C: dates (the month and day of each; the year may stay).
    let birth = profile.birth_date.clone();
    let mut dates: Vec<String> = vec![birth.clone()];
    // D-F: telecom.
    let phone = plant("D telephone numbers", format!("617-555-{:04}", 1000 + n));
    let mobile = plant("D telephone numbers", format!("(857) 555-{:04}", 3000 + n));
    let fax = plant("E fax numbers", format!("617-555-{:04}", 6000 + n));
    let email = plant(
        "F email addresses",
        format!("quintavius.{t}@zorblatt-mail.example"),
    );
    // G-K: numbers.
    let ssn = plant(
        "G social security numbers",
        format!("999-{:02}-{:04}", 10 + n % 89, 4400 + n),
    );
    let mrn = plant("H medical record numbers", format!("MRN{t}7Q4X9Z"));
    let plan = plant("I health plan beneficiary numbers", format!("HPBN{t}88321"));
    let group = plant("I health plan beneficiary numbers", format!("GRP{t}5521"));
    let account = plant("J account numbers", format!("ACCT{t}5521XR"));
    let licence = plant(
        "K certificate/licence numbers",
        format!("S999{:05}{t}", 18_000 + n),
    );
    let passport = plant("K certificate/licence numbers", format!("X4821{t}977X"));
    // L: vehicles.
    let vin = plant("L vehicle identifiers", format!("1HGCM82633A{t}4352"));
    let plate = plant("L vehicle identifiers", format!("ZQX{t}4471"));
    // M: devices.
    let udi_di = plant(
        "M device identifiers and serial numbers",
        format!("0084458{:07}", 8_003_288 + n),
    );
    let udi_hrf = plant(
        "M device identifiers and serial numbers",
        format!("(01){udi_di}(21)UDI{t}321"),
    );
    let serial = plant(
        "M device identifiers and serial numbers",
        format!("SNQX{t}554312"),
    );
    let lot = plant(
        "M device identifiers and serial numbers",
        format!("LOTZQ{t}7781"),
    );
    // N, O: URLs and IP addresses.
    let home_page = plant("N URLs", format!("https://quintavius-{t}.example.net/home"));
    let photo_url = plant(
        "N URLs",
        format!("https://photos.example.net/zorblatt-{t}.jpg"),
    );
    let source = plant("N URLs", format!("https://ehr.example.net/source/{t}"));
    let ip = plant(
        "O IP addresses",
        format!("198.51.{}.{}", 100 + n % 100, 23 + n % 200),
    );
    let ip6 = plant("O IP addresses", format!("2001:db8::{t}:17"));
    // P: biometrics.
    let fingerprint = plant("P biometric identifiers", format!("FPT{t}9F8E7D6C5B"));
    let retina = plant("P biometric identifiers", format!("RETINA{t}4D2B"));
    let voice = plant("P biometric identifiers", format!("VOICEPRINT{t}77"));
    // Q: photographs (as attachments: the base64 data and what it encodes).
    let photo_bytes = format!("JFIF full-face photograph of {full} {t}");
    let photo = plant(
        "Q full-face photographs",
        STANDARD.encode(photo_bytes.as_bytes()),
    );
    let media_bytes = format!("JFIF clinical photograph, face of {full} {t}");
    let media = plant(
        "Q full-face photographs",
        STANDARD.encode(media_bytes.as_bytes()),
    );
    // R: any other unique code.
    let unique = plant(
        "R any other unique identifying number, characteristic or code",
        format!("UNQ{t}771QZ"),
    );
    let element_id = plant(
        "R any other unique identifying number, characteristic or code",
        format!("ELEM{t}42"),
    );
    let tattoo = plant(
        "R any other unique identifying number, characteristic or code",
        format!("dragon tattoo {t} on left forearm"),
    );

    let note_about = |what: &str, when: &str| {
        format!(
            "{full} (MRN {mrn}, SSN {ssn}) seen {when} ({}/{}/{}) re {what}; call {phone} or \
             fax {fax}, {email}; lives at {line}, {city}; drives VIN {vin} plate {plate}; \
             portal login from {ip} {home_page}; {tattoo}.",
            &when[5..7],
            &when[8..10],
            &when[0..4],
        )
    };
    let sensitive = json!({"security": [
        {"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"},
        {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "PSY"}],
        "source": source, "versionId": "3", "lastUpdated": "2024-11-19T08:21:13.114+00:00"});

    let pid = |code: &str, display: &str, id_system: &str, value: &str| json!({"type": cc(V2_0203, code, display), "system": id_system, "value": value});
    let patient = json!({
        "resourceType": "Patient",
        "id": id,
        "meta": sensitive,
        "text": narrative(&format!("Generated by Synthea. {full}, born {birth}, {line}")),
        "extension": [
            {"url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race",
             "extension": [{"url": "ombCategory", "valueCoding": {"system": "urn:oid:2.16.840.1.113883.6.238", "code": "2106-3", "display": "White"}},
                           {"url": "text", "valueString": "White"}]},
            {"url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-ethnicity",
             "extension": [{"url": "ombCategory", "valueCoding": {"system": "urn:oid:2.16.840.1.113883.6.238", "code": "2186-5", "display": "Not Hispanic or Latino"}},
                           {"url": "text", "valueString": "Not Hispanic or Latino"}]},
            {"url": "http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName", "valueString": format!("Marquita {maiden}")},
            {"url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-birthsex", "valueCode": if profile.gender == "female" { "F" } else { "M" }},
            {"url": "http://hl7.org/fhir/StructureDefinition/patient-birthPlace",
             "valueAddress": {"city": birth_city, "state": "Massachusetts", "country": "US"}},
            {"url": "http://example.org/fhir/StructureDefinition/biometric-voiceprint", "valueString": voice},
            {"url": "http://synthetichealth.github.io/synthea/disability-adjusted-life-years", "valueDecimal": number("0.0641")},
        ],
        "identifier": [
            {"system": "https://github.com/synthetichealth/synthea", "value": uuid(n, 0)},
            pid("MR", "Medical Record Number", "http://hospital.smarthealthit.org", &mrn),
            pid("SS", "Social Security Number", "http://hl7.org/fhir/sid/us-ssn", &ssn),
            pid("DL", "Driver's License", "urn:oid:2.16.840.1.113883.4.3.25", &licence),
            pid("PPN", "Passport Number", "http://standardhealthrecord.org/fhir/StructureDefinition/passportNumber", &passport),
            {"system": "http://example.org/fhir/sid/fingerprint", "value": fingerprint},
            {"system": "http://example.org/fhir/sid/health-plan", "value": plan},
        ],
        "name": [
            {"use": "official", "family": family, "given": [given], "prefix": ["Mr."], "text": full},
            {"use": "maiden", "family": maiden, "given": [given]},
        ],
        "telecom": [
            {"system": "phone", "value": phone, "use": "home"},
            {"system": "phone", "value": mobile, "use": "mobile"},
            {"system": "fax", "value": fax, "use": "work"},
            {"system": "email", "value": email},
            {"system": "url", "value": home_page},
        ],
        "gender": profile.gender,
        "birthDate": birth,
        "_birthDate": {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime", "valueDateTime": format!("{birth}T04:17:00-05:00")}]},
        "address": [{
            "extension": [{"url": "http://hl7.org/fhir/StructureDefinition/geolocation",
                           "extension": [{"url": "latitude", "valueDecimal": number(&lat)},
                                         {"url": "longitude", "valueDecimal": number(&lon)}]}],
            "line": [line], "city": city, "district": county, "state": "MA",
            "postalCode": zip, "country": "US",
            "period": {"start": format!("{birth}T00:00:00Z")}
        }],
        "maritalStatus": cc("http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", "M", "Married"),
        "multipleBirthBoolean": false,
        "photo": [{"contentType": "image/jpeg", "data": photo, "url": photo_url, "title": format!("Photo of {full}")}],
        "contact": [{"relationship": [cc("http://terminology.hl7.org/CodeSystem/v2-0131", "N", "Next-of-Kin")],
                     "name": {"family": family, "given": [contact_given]},
                     "telecom": [{"system": "phone", "value": mobile}],
                     "address": {"line": [line], "city": city}}],
        "communication": [{"language": cc("urn:ietf:bcp:47", "en-US", "English (United States)")}],
    });

    let subject = json!({"reference": format!("Patient/{id}"), "display": format!("Mr. {full}")});
    let mut resources: Vec<(&'static str, Value)> = Vec::new();
    let mut k = 1;
    let mut next = || {
        k += 1;
        uuid(n, k)
    };

    // Once per patient: their device, coverage, relative, photograph, documents.
    let age = profile.first_visit_age;
    let start = date_of(&birth)
        + Duration::days(365 * age + age / 4 + 17 * i64::try_from(n % 20).unwrap_or(0));
    let made = ymd(start - Duration::days(400));
    let expires = ymd(start + Duration::days(1900));
    dates.push(made.clone());
    dates.push(expires.clone());
    let device_id = next();
    resources.push(("Device", json!({
        "resourceType": "Device", "id": device_id, "meta": sensitive,
        "text": narrative(&format!("Insulin pump of {full}")),
        "udiCarrier": [{"deviceIdentifier": udi_di, "carrierHRF": udi_hrf, "issuer": "http://hl7.org/fhir/NamingSystem/gs1-di"}],
        "distinctIdentifier": udi_hrf, "serialNumber": serial, "lotNumber": lot,
        "status": "active", "manufactureDate": made, "expirationDate": expires,
        "type": cc(SNOMED, "69805005", "Insulin pump (physical object)"),
        "url": format!("http://{ip}:8080/pump"),
        "patient": {"reference": format!("Patient/{id}")},
    })));
    let coverage_id = next();
    resources.push(("Coverage", json!({
        "resourceType": "Coverage", "id": coverage_id, "status": "active",
        "identifier": [{"system": "http://example.org/fhir/sid/member", "value": plan}],
        "subscriberId": plan, "beneficiary": subject, "relationship": cc("http://terminology.hl7.org/CodeSystem/subscriber-relationship", "self", "Self"),
        "period": {"start": made},
        "payor": [{"display": "Blue Cross Blue Shield"}],
        "class": [{"type": cc("http://terminology.hl7.org/CodeSystem/coverage-class", "group", "Group"), "value": group, "name": format!("Group of {family}")}],
    })));
    resources.push(("RelatedPerson", json!({
        "resourceType": "RelatedPerson", "id": next(), "patient": {"reference": format!("Patient/{id}")},
        "relationship": [cc("http://terminology.hl7.org/CodeSystem/v3-RoleCode", "MTH", "mother")],
        "name": [{"family": maiden, "given": ["Marquita"]}],
        "telecom": [{"system": "phone", "value": mobile}],
        "address": [{"line": [line], "city": city, "postalCode": zip}],
        "birthDate": made,
    })));
    resources.push(("Media", json!({
        "resourceType": "Media", "id": next(), "status": "completed",
        "type": cc("http://terminology.hl7.org/CodeSystem/media-type", "image", "Image"),
        "subject": subject, "createdDateTime": format!("{made}T10:00:00Z"),
        "content": {"contentType": "image/jpeg", "data": media, "url": photo_url, "title": format!("Face of {full}")},
        "note": [{"text": format!("Photograph of {full}")}],
    })));
    resources.push(("DocumentReference", json!({
        "resourceType": "DocumentReference", "id": next(), "status": "current",
        "masterIdentifier": {"system": "urn:ietf:rfc:3986", "value": format!("urn:oid:{unique}")},
        "identifier": [{"system": "http://example.org/docs", "value": unique}],
        "type": cc(LOINC, "34117-2", "History and physical note"),
        "subject": subject, "date": format!("{made}T10:00:00Z"),
        "author": [{"display": "Dr. Hollis Marrow"}],
        "content": [{"attachment": {"contentType": "text/plain", "data": STANDARD.encode(note_about("history", &made)), "url": home_page, "title": format!("H&P of {full}")}}],
    })));

    for e in 0..profile.encounters {
        let day = start + Duration::days(41 * i64::try_from(e).unwrap_or(0) + 3);
        let date = ymd(day);
        let begin = format!("{date}T09:{:02}:00-05:00", e % 60);
        let end = format!("{date}T09:{:02}:00-05:00", (e % 60).min(14) + 45);
        let authored = ymd(day + Duration::days(1));
        dates.extend([date.clone(), authored.clone()]);
        let enc_id = next();
        let enc_ref = json!({"reference": format!("Encounter/{enc_id}")});
        let (code, display) = profile.conditions[e % profile.conditions.len().max(1)];
        resources.push(("Encounter", json!({
            "resourceType": "Encounter", "id": enc_id, "meta": sensitive,
            "text": narrative(&format!("Encounter of {full} on {date}")),
            "extension": [{"url": "http://example.org/fhir/StructureDefinition/arrival-vehicle", "valueString": plate}],
            "identifier": [{"use": "official", "system": "https://github.com/synthetichealth/synthea", "value": format!("{unique}-{e}")}],
            "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB", "display": "ambulatory"},
            "type": [cc(SNOMED, "185349003", "Encounter for check up (procedure)")],
            "subject": subject,
            "participant": [{"individual": {"reference": "Practitioner/0000016f-57cb-cdaa-0000-00000000c300", "display": "Dr. Hollis Marrow"}}],
            "period": {"start": begin, "end": end},
            "reasonCode": [cc(SNOMED, code, display)],
            "location": [{"location": {"reference": "Location/loc-1", "display": facility}}],
            "serviceProvider": {"reference": "Organization/org-1", "display": facility},
            "account": [{"reference": format!("Account/{account}")}],
        })));
        let cond_id = next();
        let mut condition = json!({
            "resourceType": "Condition", "id": cond_id, "meta": sensitive,
            "text": narrative(&format!("{full}: {display}")),
            "identifier": [{"value": format!("{unique}-c{e}")}],
            "clinicalStatus": cc("http://terminology.hl7.org/CodeSystem/condition-clinical", "active", "Active"),
            "verificationStatus": cc("http://terminology.hl7.org/CodeSystem/condition-ver-status", "confirmed", "Confirmed"),
            "category": [cc("http://terminology.hl7.org/CodeSystem/condition-category", "encounter-diagnosis", "Encounter Diagnosis")],
            "code": cc(SNOMED, code, display),
            "subject": subject, "encounter": enc_ref,
            "onsetDateTime": begin, "recordedDate": begin,
            "note": [{"authorString": format!("{full}'s mother {maiden}"), "text": note_about(display, &date)}],
        });
        if e == 0 {
            let age = i64::from(date_of(&date).year() - date_of(&birth).year());
            condition["onsetAge"] = json!({"value": age, "unit": "a", "system": UCUM, "code": "a"});
            if let Some(obj) = condition.as_object_mut() {
                obj.remove("onsetDateTime");
            }
        }
        resources.push(("Condition", condition));

        let obs = |code: &str, display: &str, category: &str, value: Value, extra: Value| {
            let mut o = json!({
                "resourceType": "Observation", "status": "final",
                "text": narrative(&format!("{display} of {full}")),
                "identifier": [{"system": "urn:ietf:rfc:3986", "value": format!("{unique}-o{e}-{code}")}],
                "category": [cc(OBS_CATEGORY, category, category)],
                "code": {"coding": [{"id": element_id, "system": LOINC, "code": code, "display": display}], "text": display},
                "subject": subject, "encounter": enc_ref,
                "effectiveDateTime": begin, "issued": format!("{date}T09:50:12.114-05:00"),
                "performer": [{"display": "Dr. Hollis Marrow"}],
            });
            if let (Some(o), Some(value)) = (o.as_object_mut(), value.as_object()) {
                o.extend(value.clone());
                if let Some(extra) = extra.as_object() {
                    o.extend(extra.clone());
                }
            }
            o
        };
        let q = |v: &str, unit: &str, code: &str| json!({"value": number(v), "unit": unit, "system": UCUM, "code": code});
        let height = format!("{}.{}", 160 + n % 30, 1 + e % 9);
        let mut observations = vec![
            obs(
                "8302-2",
                "Body Height",
                "vital-signs",
                json!({"valueQuantity": q(&height, "cm", "cm")}),
                json!({}),
            ),
            obs(
                "29463-7",
                "Body Weight",
                "vital-signs",
                json!({"valueQuantity": q(&format!("{}.4", 60 + n % 40), "kg", "kg")}),
                json!({}),
            ),
            obs(
                "85354-9",
                "Blood pressure panel with all children optional",
                "vital-signs",
                json!({}),
                json!({"component": [
                {"code": cc(LOINC, "8462-4", "Diastolic Blood Pressure"), "valueQuantity": q("82", "mm[Hg]", "mm[Hg]")},
                {"code": cc(LOINC, "8480-6", "Systolic Blood Pressure"), "valueQuantity": q("131", "mm[Hg]", "mm[Hg]")},
                {"code": {"text": "Cuff owner"}, "valueString": full}]}),
            ),
            obs(
                "8867-4",
                "Heart rate",
                "vital-signs",
                json!({"valueQuantity": q("71", "/min", "/min")}),
                json!({}),
            ),
            obs(
                "34109-9",
                "Note",
                "exam",
                json!({"valueString": note_about("check-up", &date)}),
                json!({}),
            ),
            obs(
                "72166-2",
                "Tobacco smoking status",
                "social-history",
                json!({"valueCodeableConcept": cc(SNOMED, "266919005", "Never smoked tobacco (finding)")}),
                json!({}),
            ),
            obs(
                "99999-1",
                "Vehicle",
                "social-history",
                json!({"valueString": format!("VIN {vin}")}),
                json!({"component": [
                {"code": {"text": "plate"}, "valueString": plate}]}),
            ),
            obs(
                "99999-2",
                "Biometric enrolment",
                "exam",
                json!({"valueSampledData": {"origin": {"value": 0}, "period": 1, "dimensions": 1, "data": retina}}),
                json!({"component": [{"code": {"text": "fingerprint template"}, "valueString": fingerprint}]}),
            ),
        ];
        let mut obs_ids = Vec::new();
        for o in &mut observations {
            let oid = next();
            o["id"] = json!(oid);
            obs_ids.push(json!({"reference": format!("Observation/{oid}")}));
        }
        resources.extend(observations.into_iter().map(|o| ("Observation", o)));
        resources.push((
            "Procedure",
            json!({
                "resourceType": "Procedure", "id": next(), "status": "completed",
                "text": narrative(&format!("Procedure on {full}")),
                "code": cc(SNOMED, "430193006", "Medication Reconciliation (procedure)"),
                "subject": subject, "encounter": enc_ref,
                "performedPeriod": {"start": begin, "end": end},
                "location": {"display": facility},
                "note": [{"text": note_about("procedure", &date)}],
            }),
        ));
        resources.push(("MedicationRequest", json!({
            "resourceType": "MedicationRequest", "id": next(), "status": "active", "intent": "order",
            "identifier": [{"value": format!("RX{unique}{e}")}],
            "medicationCodeableConcept": cc("http://www.nlm.nih.gov/research/umls/rxnorm", "860975", "24 HR Metformin hydrochloride 500 MG Extended Release Oral Tablet"),
            "subject": subject, "encounter": enc_ref, "authoredOn": format!("{authored}T10:00:00-05:00"),
            "requester": {"display": "Dr. Hollis Marrow"},
            "dosageInstruction": [{"sequence": 1, "text": format!("{given}, take one daily; questions: {phone}"),
                "timing": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "d", "boundsPeriod": {"start": authored}}, "code": {"text": format!("daily for {given}")}},
                "asNeededBoolean": false,
                "doseAndRate": [{"type": cc("http://terminology.hl7.org/CodeSystem/dose-rate-type", "ordered", "Ordered"), "doseQuantity": {"value": 1}}]}],
            "note": [{"text": note_about("metformin", &authored)}],
        })));
        resources.push(("Immunization", json!({
            "resourceType": "Immunization", "id": next(), "status": "completed",
            "vaccineCode": cc("http://hl7.org/fhir/sid/cvx", "140", "Influenza, seasonal, injectable, preservative free"),
            "patient": {"reference": format!("Patient/{id}")}, "encounter": enc_ref,
            "occurrenceDateTime": begin, "primarySource": true, "lotNumber": format!("{lot}{e}"),
            "location": {"display": facility}, "note": [{"text": note_about("flu shot", &date)}],
        })));
        let form = STANDARD.encode(note_about("lab report", &date));
        planted.push(Planted {
            class: "A names",
            value: form.clone(),
        });
        resources.push((
            "DiagnosticReport",
            json!({
                "resourceType": "DiagnosticReport", "id": next(), "status": "final",
                "category": [cc("http://loinc.org", "34117-2", "History and physical note")],
                "code": cc(LOINC, "51990-0", "Basic metabolic panel - Blood"),
                "subject": subject, "encounter": enc_ref,
                "effectiveDateTime": begin, "issued": format!("{date}T11:02:00.000-05:00"),
                "result": obs_ids[..2].to_vec(),
                "conclusion": note_about("labs", &date),
                "presentedForm": [{"contentType": "text/plain; charset=utf-8", "data": form}],
            }),
        ));
        let claim_id = next();
        resources.push(("Claim", json!({
            "resourceType": "Claim", "id": claim_id, "status": "active",
            "identifier": [{"system": "http://example.org/accounts", "value": account}],
            "type": cc("http://terminology.hl7.org/CodeSystem/claim-type", "professional", "Professional"),
            "use": "claim", "patient": {"reference": format!("Patient/{id}")},
            "billablePeriod": {"start": begin, "end": end}, "created": end,
            "provider": {"display": facility}, "priority": cc("http://terminology.hl7.org/CodeSystem/processpriority", "normal", "Normal"),
            "insurance": [{"sequence": 1, "focal": true, "coverage": {"reference": format!("Coverage/{coverage_id}")}, "identifier": {"value": plan}}],
            "accident": {"date": date, "locationAddress": {"line": [line], "city": city}},
            "item": [{"sequence": 1, "productOrService": cc(SNOMED, "185349003", "Encounter for check up (procedure)"), "encounter": [enc_ref]}],
            "total": {"value": number("129.16"), "currency": "USD"},
        })));
        resources.push(("ExplanationOfBenefit", json!({
            "resourceType": "ExplanationOfBenefit", "id": next(), "status": "active",
            "identifier": [{"system": "https://bluebutton.cms.gov/resources/variables/clm_id", "value": format!("{account}-{e}")}],
            "type": cc("http://terminology.hl7.org/CodeSystem/claim-type", "professional", "Professional"),
            "use": "claim", "patient": {"reference": format!("Patient/{id}")},
            "billablePeriod": {"start": begin, "end": end}, "created": end,
            "claim": {"reference": format!("Claim/{claim_id}")}, "outcome": "complete",
            "insurance": [{"focal": true, "coverage": {"reference": format!("Coverage/{coverage_id}"), "display": plan}}],
        })));
        resources.push(("Provenance", json!({
            "resourceType": "Provenance", "id": next(),
            "extension": [{"url": "http://example.org/fhir/StructureDefinition/client-ip", "valueString": ip},
                          {"url": "http://example.org/fhir/StructureDefinition/client-ip6", "valueString": ip6}],
            "target": [{"reference": format!("Encounter/{enc_id}")}],
            "recorded": begin,
            "agent": [{"type": cc("http://terminology.hl7.org/CodeSystem/provenance-participant-type", "author", "Author"),
                       "who": {"display": format!("portal session of {full} from {ip}")}}],
        })));
    }
    for d in &dates {
        // The month and day as written in a date, and as a note writes them.
        planted.push(Planted {
            class: "C dates (except year)",
            value: d[5..10].to_owned(),
        });
        planted.push(Planted {
            class: "C dates (except year)",
            value: format!("{}/{}", &d[5..7], &d[8..10]),
        });
    }
    planted.push(Planted {
        class: "C dates (except year)",
        value: "04:17".to_owned(),
    });
    for (_, r) in &resources {
        if let Some(rid) = r["id"].as_str() {
            planted.push(Planted {
                class: "R any other unique identifying number, characteristic or code",
                value: rid.to_owned(),
            });
        }
    }
    planted.push(Planted {
        class: "R any other unique identifying number, characteristic or code",
        value: id.clone(),
    });
    Synthetic {
        id,
        patient,
        resources,
        planted,
    }
}

/// `count` patients with their default profiles.
pub(crate) fn population(count: usize, encounters: usize) -> Vec<Synthetic> {
    (0..count)
        .map(|n| {
            let mut p = Profile::of(n);
            p.encounters = encounters;
            patient(n, &p)
        })
        .collect()
}
