//! Keyed pseudonyms: the same input and key give the same output; another key shares none.

use crate::common::{all_bytes, export, hex64, lines, preset};
use crate::synthea;

#[test]
fn same_input_and_key_give_identical_pseudonyms() {
    let patients = synthea::population(4, 2);
    for name in ["safe-harbor", "gdpr-pseudonymization"] {
        let a = export(&preset(name, 1), &patients, None);
        let b = export(&preset(name, 1), &patients, None);
        assert_eq!(a.files, b.files, "{name}: the same bytes");
        assert_eq!(a.report, b.report, "{name}");
        let tokens = hex64(&all_bytes(&a));
        let resources: u64 = a.report.resources.values().map(|c| c.released).sum();
        assert!(
            tokens.len() as u64 >= resources,
            "{name}: every id is a pseudonym"
        );
    }
}

#[test]
fn another_key_shares_no_pseudonym() {
    let patients = synthea::population(4, 2);
    for name in ["safe-harbor", "gdpr-pseudonymization"] {
        let a = hex64(&all_bytes(&export(&preset(name, 1), &patients, None)));
        let b = hex64(&all_bytes(&export(&preset(name, 2), &patients, None)));
        assert!(a.len() > 100, "{name}: {} pseudonyms", a.len());
        let shared: Vec<_> = a.intersection(&b).collect();
        // The configuration hash is the one 64-hex value both reports carry on purpose.
        let config_hash = phivault_deid::Config::preset(name).unwrap().hash();
        assert_eq!(shared, [&config_hash], "{name}");
    }
}

#[test]
fn pseudonymous_identifiers_link_across_exports_of_one_project() {
    // gdpr-pseudonymization keeps identifiers as keyed pseudonyms: a patient exported twice
    // (in different company) is recognizably the same; the id is the Patient's pseudonym.
    let patients = synthea::population(3, 1);
    let engine = preset("gdpr-pseudonymization", 1);
    let both = export(&engine, &patients, None);
    let alone = export(&engine, &patients[1..2], None);
    let one = &lines(&alone, "Patient")[0];
    assert_eq!(
        one["id"].as_str().unwrap(),
        engine.pseudonym_of("Patient", &patients[1].id)
    );
    assert!(lines(&both, "Patient").contains(one));
    let ids = one["identifier"].as_array().unwrap();
    assert_eq!(
        ids.len(),
        patients[1].patient["identifier"].as_array().unwrap().len()
    );
    for (i, original) in ids
        .iter()
        .zip(patients[1].patient["identifier"].as_array().unwrap())
    {
        let value = i["value"].as_str().unwrap();
        assert_eq!(value.len(), 64);
        assert_eq!(
            value,
            engine.key().pseudonym(original["value"].as_str().unwrap())
        );
        assert_eq!(i["system"], original["system"]);
    }
}
