//! Re-identification risk: k-anonymity and l-diversity of the output, and suppression of
//! classes smaller than k.

use crate::common::{all_bytes, export, lines, preset};
use crate::synthea::{self, Profile, Synthetic};

const DIABETES: (&str, &str) = ("44054006", "Diabetes mellitus type 2 (disorder)");
const HYPERTENSION: (&str, &str) = (
    "38341003",
    "Hypertensive disorder, systemic arterial (disorder)",
);
const ASTHMA: (&str, &str) = ("195967001", "Asthma (disorder)");

/// Three classes of (birth year, gender, ZIP3): five patients in two classes of sizes 3 and
/// 2, and one patient whose combination is unique.
fn population() -> (Vec<Synthetic>, Synthetic) {
    let person = |n: usize, birth: &str, gender: &'static str, zip: &str, condition| {
        synthea::patient(
            n,
            &Profile {
                birth_date: birth.to_owned(),
                gender,
                zip: zip.to_owned(),
                encounters: 2,
                conditions: vec![condition],
                first_visit_age: 30,
            },
        )
    };
    let unique = person(5, "1950-07-19", "male", "94105", ASTHMA);
    let mut all = vec![
        person(0, "1980-01-05", "female", "02139", DIABETES),
        person(1, "1980-11-23", "female", "02144", DIABETES),
        person(2, "1980-06-30", "female", "02101", HYPERTENSION),
        person(3, "1990-02-14", "male", "10001", ASTHMA),
        person(4, "1990-09-09", "male", "10025", DIABETES),
    ];
    all.insert(3, unique.clone());
    (all, unique)
}

#[test]
fn a_unique_combination_is_reported_as_k_1() {
    let (patients, _) = population();
    let report = export(&preset("safe-harbor", 9), &patients, None).report;
    let r = &report.risk;
    assert_eq!(
        (r.patients, r.classes, r.k, r.smallest_classes, r.l),
        (6, 3, 1, 1, 1)
    );
    assert_eq!(r.patients_in_classes_below_5, 6);
    assert_eq!(
        report.risk_released, report.risk,
        "nothing withheld without k"
    );
    assert_eq!(report.k_threshold, None);
    assert_eq!(report.patients_suppressed, 0);
    let qis: Vec<&str> = report
        .quasi_identifiers
        .iter()
        .map(|q| q.path.as_str())
        .collect();
    assert_eq!(
        qis,
        [
            "Patient.birthDate",
            "Patient.gender",
            "Patient.address.postalCode"
        ]
    );
    assert_eq!(report.sensitive_attribute, "Condition.code");
}

#[test]
fn k_2_withholds_every_record_of_the_unique_patient_and_counts_them() {
    let (patients, unique) = population();
    let engine = preset("safe-harbor", 9);
    let release = export(&engine, &patients, Some(2));
    let report = &release.report;
    assert_eq!(report.k_threshold, Some(2));
    assert_eq!(
        (report.patients_released, report.patients_suppressed),
        (5, 1)
    );
    assert_eq!(
        report.risk.k, 1,
        "the risk before suppression is still reported"
    );
    let after = &report.risk_released;
    assert_eq!(
        (after.patients, after.classes, after.k, after.l),
        (5, 2, 2, 2)
    );

    // None of the unique patient's records is output ...
    let pseudonym = engine.pseudonym_of("Patient", &unique.id);
    let bytes = all_bytes(&release);
    let text = String::from_utf8_lossy(&bytes);
    assert!(!text.contains(&pseudonym));
    for (t, r) in &unique.resources {
        let id = engine.pseudonym_of(t, r["id"].as_str().unwrap());
        assert!(!text.contains(&id), "{t} of the withheld patient");
    }
    assert_eq!(lines(&release, "Patient").len(), 5);
    // The caller learns exactly whom it released (for its audit entry).
    assert_eq!(release.released_patients.len(), 5);
    assert!(!release.released_patients.contains(&unique.id));
    assert!(release.released_patients.windows(2).all(|w| w[0] < w[1]));
    // ... and the report counts them, type by type.
    let exported = |t: &str| engine.exports(t);
    for (t, counts) in &report.resources {
        let theirs = unique.all().filter(|(rt, _)| rt == t).count() as u64;
        let expected = if exported(t) { theirs } else { 0 };
        assert_eq!(counts.suppressed, expected, "{t}");
        assert_eq!(
            counts.released as usize,
            lines(&release, t).len(),
            "{t}: the files hold what the report says"
        );
    }
    assert!(report.resources["Observation"].suppressed > 0);
}

#[test]
fn a_threshold_of_1_withholds_nothing() {
    let (patients, _) = population();
    let report = export(&preset("safe-harbor", 9), &patients, Some(1)).report;
    assert_eq!(report.k_threshold, None);
    assert_eq!(report.patients_released, 6);
}

#[test]
fn l_diversity_counts_distinct_sensitive_values_in_a_class() {
    // Two classes of two: one where both share a condition (l = 1), one where they differ.
    let person = |n: usize, birth: &str, condition| {
        synthea::patient(
            n,
            &Profile {
                birth_date: birth.to_owned(),
                encounters: 1,
                conditions: vec![condition],
                ..Profile::of(0)
            },
        )
    };
    let same = [
        person(0, "1980-01-05", DIABETES),
        person(1, "1980-03-05", DIABETES),
    ];
    let mixed = [
        person(2, "1970-01-05", DIABETES),
        person(3, "1970-03-05", ASTHMA),
    ];
    let engine = preset("safe-harbor", 9);
    let both: Vec<_> = same.iter().chain(&mixed).cloned().collect();
    let r = export(&engine, &both, None).report.risk;
    assert_eq!((r.classes, r.k, r.l), (2, 2, 1));
    assert_eq!(export(&engine, &mixed, None).report.risk.l, 2);
}
