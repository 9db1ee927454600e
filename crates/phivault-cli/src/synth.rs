//! Synthetic patients for benchmarks: transaction Bundles in the shape Synthea writes (entries
//! with `fullUrl: urn:uuid:...`, `request: POST <Type>`, references to `urn:uuid:...`).
//!
//! Deterministic for a seed; no real person's data. Shared by `phivault bench` and the
//! criterion benchmark (`benches/store.rs` includes this file by path).

use serde_json::{Value, json};

/// A small, fast, seedable generator (SplitMix64). Not for anything secret.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    /// A generator starting from `seed`.
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        // n is at most usize::MAX, which fits u64 on every supported target.
        (self.next_u64() % n as u64) as usize
    }

    /// A number in `lo..=hi`, with one decimal.
    fn decimal(&mut self, lo: f64, hi: f64) -> f64 {
        let unit = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        ((lo + unit * (hi - lo)) * 10.0).round() / 10.0
    }

    /// One element of `items` (which must not be empty).
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// A random (version 4) UUID drawn from this generator.
    pub(crate) fn uuid(&mut self) -> uuid::Uuid {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&self.next_u64().to_le_bytes());
        bytes[8..].copy_from_slice(&self.next_u64().to_le_bytes());
        uuid::Builder::from_random_bytes(bytes).into_uuid()
    }
}

const FAMILY: &[&str] = &[
    "Smith",
    "Johnson",
    "Williams",
    "Brown",
    "Jones",
    "Garcia",
    "Miller",
    "Davis",
    "Rodriguez",
    "Martinez",
    "Hernandez",
    "Lopez",
    "Gonzalez",
    "Wilson",
    "Anderson",
    "Thomas",
    "Taylor",
    "Moore",
    "Jackson",
    "Martin",
    "Lee",
    "Perez",
    "Thompson",
    "White",
    "Harris",
    "Sanchez",
];
const GIVEN_FEMALE: &[&str] = &[
    "Mary",
    "Patricia",
    "Jennifer",
    "Linda",
    "Elizabeth",
    "Barbara",
    "Susan",
    "Jessica",
    "Sarah",
    "Karen",
    "Lisa",
    "Nancy",
    "Betty",
    "Margaret",
    "Sandra",
    "Ashley",
    "Emily",
    "Zoë",
];
const GIVEN_MALE: &[&str] = &[
    "James",
    "Robert",
    "John",
    "Michael",
    "David",
    "William",
    "Richard",
    "Joseph",
    "Thomas",
    "Charles",
    "Christopher",
    "Daniel",
    "Matthew",
    "Anthony",
    "Mark",
    "Donald",
    "José",
    "Paul",
];
const CITIES: &[(&str, &str, &str)] = &[
    ("Boston", "MA", "02118"),
    ("Springfield", "MA", "01103"),
    ("Worcester", "MA", "01608"),
    ("Cambridge", "MA", "02139"),
    ("Lowell", "MA", "01852"),
];

/// A vital sign or lab: LOINC code, display, UCUM unit, plausible range.
struct Measure {
    code: &'static str,
    display: &'static str,
    unit: &'static str,
    category: &'static str,
    lo: f64,
    hi: f64,
}

const MEASURES: &[Measure] = &[
    Measure {
        code: "8867-4",
        display: "Heart rate",
        unit: "/min",
        category: "vital-signs",
        lo: 50.0,
        hi: 110.0,
    },
    Measure {
        code: "9279-1",
        display: "Respiratory rate",
        unit: "/min",
        category: "vital-signs",
        lo: 10.0,
        hi: 24.0,
    },
    Measure {
        code: "8310-5",
        display: "Body temperature",
        unit: "Cel",
        category: "vital-signs",
        lo: 36.0,
        hi: 39.0,
    },
    Measure {
        code: "29463-7",
        display: "Body weight",
        unit: "kg",
        category: "vital-signs",
        lo: 3.0,
        hi: 140.0,
    },
    Measure {
        code: "8302-2",
        display: "Body height",
        unit: "cm",
        category: "vital-signs",
        lo: 50.0,
        hi: 200.0,
    },
    Measure {
        code: "39156-5",
        display: "Body mass index (BMI) [Ratio]",
        unit: "kg/m2",
        category: "vital-signs",
        lo: 15.0,
        hi: 40.0,
    },
    Measure {
        code: "8480-6",
        display: "Systolic blood pressure",
        unit: "mm[Hg]",
        category: "vital-signs",
        lo: 95.0,
        hi: 180.0,
    },
    Measure {
        code: "8462-4",
        display: "Diastolic blood pressure",
        unit: "mm[Hg]",
        category: "vital-signs",
        lo: 55.0,
        hi: 110.0,
    },
    Measure {
        code: "2339-0",
        display: "Glucose [Mass/volume] in Blood",
        unit: "mg/dL",
        category: "laboratory",
        lo: 65.0,
        hi: 250.0,
    },
    Measure {
        code: "2093-3",
        display: "Cholesterol [Mass/volume] in Serum or Plasma",
        unit: "mg/dL",
        category: "laboratory",
        lo: 120.0,
        hi: 300.0,
    },
    Measure {
        code: "4548-4",
        display: "Hemoglobin A1c/Hemoglobin.total in Blood",
        unit: "%",
        category: "laboratory",
        lo: 4.5,
        hi: 11.0,
    },
    Measure {
        code: "2160-0",
        display: "Creatinine [Mass/volume] in Serum or Plasma",
        unit: "mg/dL",
        category: "laboratory",
        lo: 0.5,
        hi: 2.5,
    },
];

/// A date `YYYY-MM-DD` between 1930 and 2020.
fn birth_date(rng: &mut Rng) -> String {
    format!(
        "{}-{:02}-{:02}",
        1930 + rng.below(91),
        1 + rng.below(12),
        1 + rng.below(28)
    )
}

/// A dateTime with a time zone between 2015 and 2024.
fn effective(rng: &mut Rng) -> String {
    format!(
        "{}-{:02}-{:02}T{:02}:{:02}:{:02}-05:00",
        2015 + rng.below(10),
        1 + rng.below(12),
        1 + rng.below(28),
        rng.below(24),
        rng.below(60),
        rng.below(60)
    )
}

/// A Patient with the fields Synthea fills (name, identifiers, gender, birthDate, address,
/// telecom), without `id` (the server assigns one).
pub(crate) fn patient(rng: &mut Rng) -> Value {
    let female = rng.below(2) == 0;
    let given = *rng.pick(if female { GIVEN_FEMALE } else { GIVEN_MALE });
    let family = *rng.pick(FAMILY);
    let (city, state, zip) = *rng.pick(CITIES);
    let mrn = rng.uuid();
    json!({
        "resourceType": "Patient",
        "identifier": [
            {
                "system": "https://github.com/synthetichealth/synthea",
                "value": mrn.to_string()
            },
            {
                "type": { "coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                    "code": "MR",
                    "display": "Medical Record Number"
                }]},
                "system": "http://hospital.smarthealthit.org",
                "value": format!("MRN{:08}", rng.below(100_000_000))
            }
        ],
        "name": [{
            "use": "official",
            "family": family,
            "given": [given],
            "prefix": [if female { "Ms." } else { "Mr." }]
        }],
        "telecom": [{
            "system": "phone",
            "value": format!("555-{:03}-{:04}", rng.below(1000), rng.below(10_000)),
            "use": "home"
        }],
        "gender": if female { "female" } else { "male" },
        "birthDate": birth_date(rng),
        "address": [{
            "line": [format!("{} Main Street", 1 + rng.below(999))],
            "city": city,
            "state": state,
            "postalCode": zip,
            "country": "US"
        }]
    })
}

/// An Observation (vital sign or lab, LOINC-coded, UCUM quantity) about `subject`.
pub(crate) fn observation(rng: &mut Rng, subject: &str) -> Value {
    let m = rng.pick(MEASURES);
    let value = rng.decimal(m.lo, m.hi);
    let category_display = if m.category == "laboratory" {
        "Laboratory"
    } else {
        "Vital signs"
    };
    json!({
        "resourceType": "Observation",
        "status": "final",
        "category": [{ "coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
            "code": m.category,
            "display": category_display
        }]}],
        "code": {
            "coding": [{ "system": "http://loinc.org", "code": m.code, "display": m.display }],
            "text": m.display
        },
        "subject": { "reference": subject },
        "effectiveDateTime": effective(rng),
        "issued": "2024-06-01T12:00:00.000-05:00",
        "valueQuantity": {
            "value": value,
            "unit": m.unit,
            "system": "http://unitsofmeasure.org",
            "code": m.unit
        }
    })
}

/// One transaction Bundle: a Patient and `observations` Observations referring to it by its
/// `urn:uuid:` fullUrl (resolved by the store on import).
pub(crate) fn patient_bundle(rng: &mut Rng, observations: usize) -> Value {
    let patient_urn = format!("urn:uuid:{}", rng.uuid());
    let mut entries = Vec::with_capacity(observations + 1);
    entries.push(json!({
        "fullUrl": patient_urn,
        "resource": patient(rng),
        "request": { "method": "POST", "url": "Patient" }
    }));
    for _ in 0..observations {
        entries.push(json!({
            "fullUrl": format!("urn:uuid:{}", rng.uuid()),
            "resource": observation(rng, &patient_urn),
            "request": { "method": "POST", "url": "Observation" }
        }));
    }
    json!({ "resourceType": "Bundle", "type": "transaction", "entry": entries })
}

/// `Type/id` of every resource written by a transaction-response Bundle.
pub(crate) fn written_references(response: &Value) -> Vec<(String, String)> {
    response
        .get("entry")
        .and_then(Value::as_array)
        .map(|entries| {
            entries
                .iter()
                .filter_map(|e| {
                    let full = e.get("fullUrl")?.as_str()?;
                    let (t, id) = full.rsplit_once('/')?;
                    let t = t.rsplit('/').next().unwrap_or(t);
                    Some((t.to_owned(), id.to_owned()))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_shaped_like_synthea() {
        let a = patient_bundle(&mut Rng::new(7), 99);
        let b = patient_bundle(&mut Rng::new(7), 99);
        assert_eq!(a, b);
        let entries = a["entry"].as_array().map(Vec::len);
        assert_eq!(entries, Some(100));
        let urn = a["entry"][0]["fullUrl"].as_str().unwrap_or_default();
        assert!(urn.starts_with("urn:uuid:"));
        assert_eq!(a["entry"][5]["resource"]["subject"]["reference"], urn);
        assert_eq!(
            a["entry"][5]["resource"]["code"]["coding"][0]["system"],
            "http://loinc.org"
        );
    }

    #[test]
    fn below_stays_in_range() {
        let mut rng = Rng::new(1);
        assert!((0..1000).all(|_| rng.below(7) < 7));
        assert_eq!(rng.below(0), 0);
    }
}
