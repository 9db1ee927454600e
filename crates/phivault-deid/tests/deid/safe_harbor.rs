//! The `safe-harbor` preset: none of the 18 identifier classes survives, useful data does,
//! and references still link.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::common::{REFERENCE_YEAR, all_bytes, export, leaks, lines, preset, year_month_patterns};
use crate::synthea::{self, CLASSES, Profile, Synthetic};

/// Three patients: an ordinary one, one over 89, one in a small three-digit ZIP area.
fn cohort() -> Vec<Synthetic> {
    let ordinary = synthea::patient(0, &Profile::of(0));
    let old = synthea::patient(
        1,
        &Profile {
            birth_date: "1921-03-14".to_owned(),
            first_visit_age: 95,
            ..Profile::of(1)
        },
    );
    let rural = synthea::patient(
        2,
        &Profile {
            zip: "03601".to_owned(),
            ..Profile::of(2)
        },
    );
    vec![ordinary, old, rural]
}

#[test]
fn no_planted_identifier_of_any_class_survives() {
    let patients = cohort();
    let release = export(&preset("safe-harbor", 7), &patients, None);
    let bytes = all_bytes(&release);

    let planted: Vec<_> = patients.iter().flat_map(|p| &p.planted).collect();
    let classes: BTreeSet<&str> = planted.iter().map(|p| p.class).collect();
    assert_eq!(classes.len(), 18, "every Safe Harbor class is planted");
    assert!(CLASSES.iter().all(|c| classes.contains(c)));
    assert!(planted.len() > 300, "{} values planted", planted.len());

    let found = leaks(&bytes, planted.iter().copied());
    assert!(
        found.is_empty(),
        "planted values survive:\n{}",
        found.join("\n")
    );
    let dates = year_month_patterns(&bytes);
    assert!(
        dates.is_empty(),
        "dates more precise than a year survive:\n{}",
        dates.join("\n")
    );
}

#[test]
fn useful_data_survives_and_references_link() {
    let patients = cohort();
    let release = export(&preset("safe-harbor", 7), &patients, None);
    let out_patients = lines(&release, "Patient");
    assert_eq!(out_patients.len(), 3);

    // Birth year, gender, three-digit ZIP (000 for a small area), state; the over-89 born
    // in one class; no other Patient element.
    let by_year: BTreeMap<&str, &Value> = out_patients
        .iter()
        .map(|p| (p["birthDate"].as_str().unwrap(), p))
        .collect();
    let ordinary = by_year["1950"];
    assert_eq!(ordinary["gender"], "female");
    assert_eq!(ordinary["address"][0]["postalCode"], "021");
    assert_eq!(ordinary["address"][0]["state"], "MA");
    assert_eq!(ordinary["address"][0]["country"], "US");
    let over_89 = (REFERENCE_YEAR - 90).to_string();
    assert_eq!(by_year[over_89.as_str()]["gender"], "male");
    assert_eq!(by_year["1952"]["address"][0]["postalCode"], "000");
    let mut names: Vec<&str> = ordinary
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "address",
            "birthDate",
            "communication",
            "extension",
            "gender",
            "id",
            "maritalStatus",
            "multipleBirthBoolean",
            "resourceType"
        ]
    );

    // Of the extensions, only US Core race, ethnicity and birth sex (selected by url), with
    // their codes and without their free text.
    let kept: Vec<&str> = ordinary["extension"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["url"].as_str().unwrap())
        .collect();
    assert_eq!(
        kept,
        [
            "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race",
            "http://hl7.org/fhir/us/core/StructureDefinition/us-core-ethnicity",
            "http://hl7.org/fhir/us/core/StructureDefinition/us-core-birthsex",
        ]
    );
    let race = &ordinary["extension"][0]["extension"];
    assert_eq!(race[0]["valueCoding"]["code"], "2106-3");
    assert!(
        !race.to_string().contains("valueString"),
        "free text: {race}"
    );
    assert_eq!(ordinary["extension"][2]["valueCode"], "F");

    // An observation keeps its code, value and unit; its year stays.
    let height_in = &patients[0]
        .resources
        .iter()
        .find(|(t, r)| *t == "Observation" && r["code"]["coding"][0]["code"] == "8302-2")
        .unwrap()
        .1;
    let observations = lines(&release, "Observation");
    let height = observations
        .iter()
        .find(|o| {
            o["code"]["coding"][0]["code"] == "8302-2"
                && o["valueQuantity"]["value"] == height_in["valueQuantity"]["value"]
        })
        .expect("the height observation with its value");
    assert_eq!(height["code"]["coding"][0]["system"], "http://loinc.org");
    assert_eq!(height["code"]["coding"][0]["display"], "Body Height");
    assert_eq!(height["valueQuantity"]["unit"], "cm");
    assert_eq!(
        height["effectiveDateTime"].as_str().unwrap(),
        &height_in["effectiveDateTime"].as_str().unwrap()[..4]
    );
    let bp = observations
        .iter()
        .find(|o| o["code"]["coding"][0]["code"] == "85354-9")
        .unwrap();
    assert_eq!(
        bp["component"].as_array().unwrap().len(),
        2,
        "coded components stay"
    );
    assert_eq!(bp["component"][1]["valueQuantity"]["value"], 131);

    // Conditions keep their codes; an onset age over 89 becomes 90.
    let conditions = lines(&release, "Condition");
    assert!(
        conditions
            .iter()
            .any(|c| c["code"]["coding"][0]["code"] == "44054006")
    );
    let ages: BTreeSet<i64> = conditions
        .iter()
        .filter_map(|c| c["onsetAge"]["value"].as_i64())
        .collect();
    assert_eq!(ages, BTreeSet::from([30, 90]));

    // References point at the pseudonymous resources.
    let ids = |t: &str| -> BTreeSet<String> {
        lines(&release, t)
            .iter()
            .map(|r| format!("{t}/{}", r["id"].as_str().unwrap()))
            .collect()
    };
    let (patient_ids, encounter_ids, observation_ids) =
        (ids("Patient"), ids("Encounter"), ids("Observation"));
    let mut linked = 0;
    for (t, reference) in [
        ("Observation", "subject"),
        ("Encounter", "subject"),
        ("Condition", "subject"),
        ("Immunization", "patient"),
        ("Device", "patient"),
    ] {
        for r in lines(&release, t) {
            let to = r[reference]["reference"].as_str().unwrap();
            assert!(patient_ids.contains(to), "{t}.{reference} {to}");
            linked += 1;
        }
    }
    for o in &observations {
        assert!(encounter_ids.contains(o["encounter"]["reference"].as_str().unwrap()));
    }
    for d in lines(&release, "DiagnosticReport") {
        for r in d["result"].as_array().unwrap() {
            assert!(observation_ids.contains(r["reference"].as_str().unwrap()));
        }
    }
    assert!(linked > 50, "{linked} references checked");
    // Each patient's observations name their own Patient.
    let engine = preset("safe-harbor", 7);
    for p in &patients {
        let own = format!("Patient/{}", engine.pseudonym_of("Patient", &p.id));
        assert!(patient_ids.contains(&own));
        let theirs = observations
            .iter()
            .filter(|o| o["subject"]["reference"] == own.as_str())
            .count();
        let read = p
            .resources
            .iter()
            .filter(|(t, _)| *t == "Observation")
            .count();
        assert_eq!(theirs, read);
    }
}

#[test]
fn the_report_counts_what_was_left_out() {
    let patients = cohort();
    let release = export(&preset("safe-harbor", 7), &patients, None);
    let report = &release.report;
    assert_eq!(report.preset.as_deref(), Some("safe-harbor"));
    assert_eq!(report.patients_released, 3);
    let read = |t: &str| {
        patients
            .iter()
            .map(|p| p.all().filter(|(rt, _)| *rt == t).count() as u64)
            .sum::<u64>()
    };
    for t in [
        "Coverage",
        "Claim",
        "ExplanationOfBenefit",
        "RelatedPerson",
        "Provenance",
        "Media",
        "DocumentReference",
    ] {
        assert_eq!(report.types_without_rules.get(t), Some(&read(t)), "{t}");
        assert_eq!(report.resources[t].released, 0, "{t}");
        assert!(!release.files.contains_key(t), "{t}");
    }
    for t in [
        "Patient",
        "Observation",
        "Encounter",
        "Device",
        "DiagnosticReport",
    ] {
        assert_eq!(report.resources[t].read, read(t), "{t}");
        assert_eq!(report.resources[t].released, read(t), "{t}");
    }
    assert_eq!(report.rules_applied["Patient.birthDate generalize"], 3);
}

#[test]
fn limited_data_set_keeps_dates_and_town_but_no_direct_identifier() {
    let patients = cohort();
    let release = export(&preset("limited-data-set", 7), &patients, None);
    // What a limited data set may hold: dates, city, district (county), five-digit ZIP.
    let p = &patients[0].patient;
    let out = lines(&release, "Patient")
        .into_iter()
        .find(|o| o["gender"] == "female" && o["birthDate"] == p["birthDate"])
        .expect("the birth date as written");
    for part in ["city", "district", "postalCode", "state"] {
        assert_eq!(out["address"][0][part], p["address"][0][part], "{part}");
    }
    let encounter = &lines(&release, "Encounter")[0];
    assert_eq!(encounter["period"]["start"].as_str().unwrap().len(), 25);
    // Nothing else.
    let allowed = |class: &str, value: &str| {
        class.starts_with('C')
            || patients.iter().any(|s| {
                ["city", "district", "postalCode"]
                    .iter()
                    .any(|part| s.patient["address"][0][part] == value)
            })
    };
    let planted: Vec<_> = patients
        .iter()
        .flat_map(|p| &p.planted)
        .filter(|p| !allowed(p.class, &p.value))
        .collect();
    let found = leaks(&all_bytes(&release), planted.iter().copied());
    assert!(
        found.is_empty(),
        "planted values survive:\n{}",
        found.join("\n")
    );
}
