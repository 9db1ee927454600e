//! Date shifting (`gdpr-pseudonymization`): one secret offset per patient, so every interval
//! between a patient's dates survives exactly, and patients' offsets differ.

use std::collections::{BTreeMap, BTreeSet};

use phivault_deid::Run;
use serde_json::Value;

use crate::common::{configured, day_of, export, lines, paired_strings, preset, strings};
use crate::synthea::{self, Synthetic};

/// For each patient (by output id): the (original, shifted) full dates of their resources,
/// and how many full dates their output holds.
fn shifted_dates(
    patients: &[Synthetic],
    engine: &phivault_deid::Deidentifier,
) -> BTreeMap<String, (Vec<(String, String)>, usize)> {
    let release = export(engine, patients, None);
    // Output resources by pseudonymous id, to pair each with its input.
    let mut out: BTreeMap<String, Value> = BTreeMap::new();
    for body in release.files.values() {
        for line in body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let v: Value = serde_json::from_slice(line).unwrap();
            out.insert(v["id"].as_str().unwrap().to_owned(), v);
        }
    }
    let mut by_patient = BTreeMap::new();
    for p in patients {
        let mut pairs = Vec::new();
        let mut dated = 0;
        for (t, input) in p.all() {
            let id = input["id"].as_str().unwrap();
            let Some(output) = out.get(&engine.pseudonym_of(t, id)) else {
                continue;
            };
            let mut found = Vec::new();
            paired_strings(input, output, &mut found);
            pairs.extend(
                found
                    .into_iter()
                    .filter(|(i, o)| day_of(i).is_some() && day_of(o).is_some())
                    .map(|(i, o)| (i.to_owned(), o.to_owned())),
            );
            let mut all = Vec::new();
            strings(output, &mut all);
            dated += all.iter().filter(|s| day_of(s).is_some()).count();
        }
        by_patient.insert(engine.pseudonym_of("Patient", &p.id), (pairs, dated));
    }
    by_patient
}

#[test]
fn every_interval_of_a_patient_survives_and_offsets_differ() {
    let patients = synthea::population(20, 3);
    let engine = preset("gdpr-pseudonymization", 3);
    let max = i64::from(engine.config().date_shift_max_days);
    let mut offsets = Vec::new();
    for (patient, (pairs, dated)) in shifted_dates(&patients, &engine) {
        assert!(pairs.len() >= 30, "{patient}: {} dates", pairs.len());
        assert_eq!(
            pairs.len(),
            dated,
            "{patient}: every output date pairs with its input"
        );
        let days: Vec<(time::Date, time::Date)> = pairs
            .iter()
            .map(|(i, o)| (day_of(i).unwrap(), day_of(o).unwrap()))
            .collect();
        let offset = (days[0].1 - days[0].0).whole_days();
        assert!(
            offset != 0 && offset.abs() <= max,
            "{patient}: offset {offset}"
        );
        for (a, b) in &days {
            assert_eq!((*b - *a).whole_days(), offset, "{patient}: one offset");
        }
        for (x, (xi, xo)) in days.iter().enumerate() {
            for (yi, yo) in &days[x + 1..] {
                assert_eq!(*yo - *xo, *yi - *xi, "{patient}: an interval changed");
            }
        }
        // The time of day and zone stay as written.
        for (i, o) in &pairs {
            assert_eq!(i.get(10..), o.get(10..));
        }
        offsets.push(offset);
    }
    assert_eq!(offsets.len(), 20);
    let distinct: BTreeSet<i64> = offsets.iter().copied().collect();
    assert!(distinct.len() >= 15, "offsets {offsets:?}");
    // The offset the engine reports for a patient is the one applied.
    let ctx = engine.patient_context(&patients[0].id, Some(&patients[0].patient));
    let out = lines(&export(&engine, &patients[..1], None), "Patient");
    let shifted = day_of(out[0]["birthDate"].as_str().unwrap()).unwrap();
    let original = day_of(patients[0].patient["birthDate"].as_str().unwrap()).unwrap();
    assert_eq!((shifted - original).whole_days(), engine.offset_days(&ctx));
}

#[test]
fn offsets_are_stable_per_key_and_bounded_by_the_configuration() {
    let patients = synthea::population(12, 1);
    let text = "extends = \"gdpr-pseudonymization\"\ndate_shift_max_days = 3\n";
    let engine = configured(text, 4);
    let offsets = |engine: &phivault_deid::Deidentifier| -> Vec<i64> {
        patients
            .iter()
            .map(|p| engine.offset_days(&engine.patient_context(&p.id, Some(&p.patient))))
            .collect()
    };
    let small = offsets(&engine);
    assert!(small.iter().all(|o| *o != 0 && o.abs() <= 3), "{small:?}");
    assert_eq!(small, offsets(&configured(text, 4)), "stable under one key");
    assert_ne!(
        small,
        offsets(&configured(text, 5)),
        "another key, other offsets"
    );
    for (_, (pairs, _)) in shifted_dates(&patients, &engine) {
        for (i, o) in pairs {
            let d = (day_of(&o).unwrap() - day_of(&i).unwrap()).whole_days();
            assert!(d != 0 && d.abs() <= 3);
        }
    }
}

#[test]
fn a_resource_handed_without_its_patient_is_left_out() {
    let p = synthea::population(1, 1).remove(0);
    let engine = preset("gdpr-pseudonymization", 3);
    let mut run = Run::new(&engine);
    for (t, r) in &p.resources {
        run.add(&p.id, t, r);
    }
    let release = run.finish(None);
    assert!(release.files.is_empty());
    assert_eq!(
        release.report.resources_without_patient,
        p.resources.len() as u64
    );
}
