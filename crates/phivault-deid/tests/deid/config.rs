//! Configuration files: `extends` a preset and adds `encrypt`, `perturb`, `substitute` and
//! named free text; types without rules are left out and counted.

use phivault_deid::{Config, ProjectKey};
use serde_json::Value;

use crate::common::{all_bytes, configured, export, key, leaks, lines};
use crate::synthea::{self, Planted};

const RESEARCH: &str = r#"
extends = "safe-harbor"

[[rules]]
paths = ["Patient.identifier.value"]
method = "encrypt"

[[rules]]
path = "Patient.identifier.system"
method = "keep"

[[rules]]
path = "Observation.valueQuantity.value"
method = "perturb"
bound = 0.5

[[rules]]
path = "Observation.component.valueQuantity.value"
method = "perturb"
bound = 0.1
relative = true

[[rules]]
path = "Patient.address.country"
method = "substitute"
value = "ZZ"

[[rules]]
path = "Patient.maritalStatus"
method = "substitute"
value = { text = "withheld" }
"#;

#[test]
fn a_file_extends_a_preset() {
    let c = Config::parse(RESEARCH).unwrap();
    let base = Config::preset("safe-harbor").unwrap();
    assert_eq!(c.extends.as_deref(), Some("safe-harbor"));
    // Four rules added, two replacing the preset's rule for their path.
    assert_eq!(c.rules.len(), base.rules.len() + 4);
    let rule = |path: &str| {
        c.rules
            .iter()
            .find(|r| format!("{}.{}", r.rtype, r.path) == path)
    };
    assert_eq!(
        rule("Patient.address.country").unwrap().method.name(),
        "substitute"
    );
    assert_eq!(
        rule("Patient.maritalStatus").unwrap().method.name(),
        "substitute"
    );
    assert_eq!(rule("Patient.gender").unwrap().method.name(), "keep");
    assert_ne!(c.hash(), base.hash());
    let release = export(&configured(RESEARCH, 1), &synthea::population(1, 1), None);
    assert_eq!(release.report.preset.as_deref(), Some("safe-harbor"));
    assert_eq!(release.report.configuration_hash, c.hash());
}

#[test]
fn encrypt_is_reversible_only_with_the_project_key() {
    let patients = synthea::population(2, 1);
    let release = export(&configured(RESEARCH, 1), &patients, None);
    for (p, out) in patients.iter().zip(
        // Output order is by pseudonym: match each Patient by the pseudonym of its id.
        patients.iter().map(|p| {
            lines(&release, "Patient")
                .into_iter()
                .find(|o| o["id"] == configured(RESEARCH, 1).pseudonym_of("Patient", &p.id))
                .unwrap()
        }),
    ) {
        let originals = p.patient["identifier"].as_array().unwrap();
        let sealed = out["identifier"].as_array().unwrap();
        assert_eq!(sealed.len(), originals.len());
        for (s, o) in sealed.iter().zip(originals) {
            let text = s["value"].as_str().unwrap();
            assert!(text.starts_with("enc1."), "{text}");
            assert_eq!(s["system"], o["system"]);
            assert_eq!(key(1).decrypt(text).unwrap().as_str(), o["value"]);
            assert!(
                key(2).decrypt(text).is_err(),
                "another key does not open it"
            );
        }
    }
    // The plaintext is nowhere in the output.
    let ids: Vec<Planted> = patients
        .iter()
        .flat_map(|p| p.patient["identifier"].as_array().unwrap().clone())
        .map(|i| Planted {
            class: "identifier",
            value: i["value"].as_str().unwrap().to_owned(),
        })
        .collect();
    assert_eq!(leaks(&all_bytes(&release), &ids), Vec::<String>::new());
}

#[test]
fn perturb_is_bounded_and_stable_across_runs() {
    let patients = synthea::population(3, 4);
    // (input, output, whether the bound is relative) of every perturbed value.
    let values = |release: &phivault_deid::Release| -> Vec<(f64, f64, bool)> {
        let engine = configured(RESEARCH, 1);
        let out = lines(release, "Observation");
        let value = |x: &Value| x["valueQuantity"]["value"].as_f64();
        let components = |x: &Value| -> Vec<f64> {
            x["component"]
                .as_array()
                .map(|c| c.iter().filter_map(value).collect())
                .unwrap_or_default()
        };
        let mut v = Vec::new();
        for p in &patients {
            for (_, input) in p.resources.iter().filter(|(t, _)| *t == "Observation") {
                let id = engine.pseudonym_of("Observation", input["id"].as_str().unwrap());
                let o = out.iter().find(|o| o["id"] == id.as_str()).unwrap();
                if let (Some(i), Some(o)) = (value(input), value(o)) {
                    v.push((i, o, false));
                }
                for (i, o) in components(input).into_iter().zip(components(o)) {
                    v.push((i, o, true));
                }
            }
        }
        v
    };
    let first = export(&configured(RESEARCH, 1), &patients, None);
    let again = export(&configured(RESEARCH, 1), &patients, None);
    let a = values(&first);
    assert_eq!(a, values(&again), "the same noise in every export");
    assert!(a.len() > 40);
    let mut changed = 0;
    for (input, o, relative) in &a {
        let bound = if *relative { 0.1 * input.abs() } else { 0.5 };
        assert!((o - input).abs() <= bound + 1e-9, "{input} -> {o}");
        if (o - input).abs() > 1e-9 {
            changed += 1;
        }
    }
    assert!(
        changed * 2 > a.len(),
        "most values move: {changed} of {}",
        a.len()
    );
    let report = &first.report;
    assert!(report.rules_applied["Observation.valueQuantity.value perturb"] > 0);
    assert!(report.rules_applied["Observation.component.valueQuantity.value perturb"] > 0);
    // Another key, other noise.
    let other = export(&configured(RESEARCH, 2), &patients, None);
    let sum = |r: &phivault_deid::Release| -> f64 {
        lines(r, "Observation")
            .iter()
            .filter_map(|o| o["valueQuantity"]["value"].as_f64())
            .sum()
    };
    assert!((sum(&first) - sum(&other)).abs() > 1e-6);
}

#[test]
fn substitute_replaces_the_element_it_names() {
    let patients = synthea::population(1, 1);
    let out = &lines(
        &export(&configured(RESEARCH, 1), &patients, None),
        "Patient",
    )[0];
    assert_eq!(out["address"][0]["country"], "ZZ");
    assert_eq!(out["address"][0]["state"], "MA");
    assert_eq!(
        out["maritalStatus"],
        serde_json::json!({"text": "withheld"})
    );
}

#[test]
fn types_without_rules_are_left_out_and_counted() {
    let text = r#"
[[rules]]
paths = ["Patient.id", "Observation.id", "Observation.subject.reference"]
method = "cryptoHash"

[[rules]]
paths = ["Patient.gender", "Observation.code", "Observation.valueQuantity"]
method = "keep"
"#;
    let patients = synthea::population(2, 2);
    let release = export(&configured(text, 1), &patients, None);
    assert_eq!(
        release.files.keys().map(String::as_str).collect::<Vec<_>>(),
        ["Observation", "Patient"]
    );
    let report = &release.report;
    assert_eq!(report.preset, None);
    let mut without = 0;
    for (t, n) in &report.types_without_rules {
        assert!(t != "Patient" && t != "Observation");
        assert_eq!(*n, report.resources[t].read, "{t}");
        assert_eq!(report.resources[t].released, 0, "{t}");
        without += n;
    }
    let read: u64 = report.resources.values().map(|c| c.read).sum();
    let released: u64 = report.resources.values().map(|c| c.released).sum();
    assert_eq!(read, without + released);
    assert!(report.types_without_rules.contains_key("Encounter"));
    let planted: Vec<&Planted> = patients.iter().flat_map(|p| &p.planted).collect();
    assert_eq!(leaks(&all_bytes(&release), planted), Vec::<String>::new());
}

#[test]
fn named_free_text_is_kept_with_the_patients_own_identifiers_scrubbed() {
    let text = "extends = \"safe-harbor\"\n[[rules]]\npath = \"Observation.valueString\"\nmethod = \"keep\"\n";
    let patients = synthea::population(2, 2);
    let release = export(&configured(text, 1), &patients, None);
    let notes: Vec<String> = lines(&release, "Observation")
        .iter()
        .filter_map(|o| o["valueString"].as_str().map(str::to_owned))
        .collect();
    assert!(notes.len() >= 4);
    assert!(
        notes
            .iter()
            .any(|n| n.contains("[REDACTED]") && n.contains("check-up"))
    );
    // What the Patient resource holds about them is gone from the text, dates included.
    let own: Vec<Planted> = patients
        .iter()
        .flat_map(|p| p.planted.iter())
        // Not what only the note knows (a vehicle, an IP address, a tattoo): the engine does
        // no language processing.
        .filter(|p| !matches!(&p.class[..1], "L" | "O" | "R"))
        .cloned()
        .collect();
    let joined = notes.join("\n");
    assert_eq!(leaks(joined.as_bytes(), &own), Vec::<String>::new());
    // What the engine cannot know stays in the text it was told to keep, yet neither the
    // report nor a `Debug` print of the release carries any planted value.
    let all: Vec<&Planted> = patients.iter().flat_map(|p| &p.planted).collect();
    assert!(!leaks(joined.as_bytes(), all.iter().copied()).is_empty());
    let report = serde_json::to_vec(&release.report).unwrap();
    assert_eq!(leaks(&report, all.iter().copied()), Vec::<String>::new());
    let debug = format!("{release:?}");
    assert_eq!(
        leaks(debug.as_bytes(), all.iter().copied()),
        Vec::<String>::new()
    );
    assert!(debug.contains("Observation"));
    // Dates written in the text follow the date policy (the year).
    let plain = crate::common::year_month_patterns(joined.as_bytes());
    assert!(plain.is_empty(), "{plain:?}");
}

#[test]
fn a_file_names_its_key_file_relative_to_itself() {
    let dir = tempfile::tempdir().unwrap();
    let key_text = ProjectKey::generate().unwrap();
    std::fs::write(dir.path().join("project.key"), key_text.as_bytes()).unwrap();
    let path = dir.path().join("deid.toml");
    std::fs::write(&path, format!("key_file = \"project.key\"\n{RESEARCH}")).unwrap();
    let config = Config::load(&path).unwrap();
    let key_file = config.key_file.clone().unwrap();
    assert_eq!(key_file, dir.path().join("project.key"));
    let k = ProjectKey::load(&key_file).unwrap();
    assert_eq!(
        k.pseudonym("x"),
        ProjectKey::parse(&key_text).unwrap().pseudonym("x")
    );
    assert_eq!(config.hash(), Config::parse(RESEARCH).unwrap().hash());
}
