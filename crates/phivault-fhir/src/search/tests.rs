//! Unit tests of search parsing: parameters, modifiers, prefixes, result parameters, errors.

use serde_json::json;

use super::*;
use crate::compartment_patient;
use crate::validate::tests::{condition, observation, synthea_patient, validator};

fn entry(param: &str, value: &str) -> IndexEntry {
    IndexEntry::new(param, value)
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn entries_of(body: serde_json::Value) -> Vec<IndexEntry> {
    index_entries(&validator().validate(body, None).unwrap())
}

#[test]
fn normalization_vectors() {
    let cases = [
        ("  José  ÁLVAREZ ", "jose alvarez"),
        ("Smith", "smith"),
        ("O'Brien", "o'brien"),
        ("Zoë\tMüller\n", "zoe muller"),
        ("ＡＢＣ", "abc"),
        ("ﬁnn", "finn"),
        ("Ångström", "angstrom"),
        ("Łukasz", "łukasz"),
        ("Straße", "straße"),
        ("İstanbul", "istanbul"),
        ("Nguyễn Văn", "nguyen van"),
        ("   ", ""),
        ("", ""),
    ];
    for (input, expected) in cases {
        assert_eq!(normalize_string(input), expected, "{input:?}");
    }
}

#[test]
fn every_type_has_sound_generated_parameters() {
    let mut with_identifier = 0;
    for rtype in ResourceType::all() {
        let defs = search_params(rtype);
        with_identifier += usize::from(defs.iter().any(|d| d.name == "identifier"));
        for d in defs {
            for path in d.expression.split('|') {
                let path = path.trim().trim_start_matches('(');
                assert!(
                    path.starts_with(&format!("{rtype}.")) || path.starts_with("Resource."),
                    "{rtype} {d:?}"
                );
            }
            assert!(!d.paths.is_empty() && d.paths.iter().all(|p| !p.is_empty()));
            assert_eq!(defs.iter().filter(|x| x.name == d.name).count(), 1);
            assert!(!unsupported_params(rtype).iter().any(|u| u.name == d.name));
        }
    }
    assert!(with_identifier > 100, "{with_identifier}");
}

#[test]
fn consent_index_entries() {
    let entries = entries_of(serde_json::json!({
        "resourceType": "Consent",
        "status": "active",
        "scope": {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/consentscope",
            "code": "research"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": "Patient/k1"},
        "provision": {"type": "permit", "period": {"start": "2026-01-02", "end": "2027"}},
    }));
    for e in [
        entry("patient", "Patient/k1"),
        entry("status", "*|active"),
        entry(
            "scope",
            "http://terminology.hl7.org/CodeSystem/consentscope|research",
        ),
        entry("scope", "*|research"),
        entry("category", "http://loinc.org|59284-0"),
        entry("period:lo", "2026-01-02"),
        entry("period:lo", "2026-01"),
        entry("period:hi", "2027-12-31"),
    ] {
        assert!(entries.contains(&e), "{e:?} in {entries:?}");
    }
}

#[test]
fn patient_index_entries() {
    let entries = entries_of(synthea_patient());
    let expected = [
        entry("family", "alvarez"),
        entry("family", "alv"),
        entry("family", "alva"),
        entry("family", "alvare"),
        entry("family:exact", "Álvarez"),
        entry("family", "smith-jones"),
        entry("family", "smi"),
        entry("given", "jose"),
        entry("given", "jos"),
        entry("given", "maria"),
        entry("given", "jo"),
        entry("given:exact", "José"),
        entry("name", "alvarez"),
        entry("name", "jose"),
        entry("name", "mr."),
        entry("name:exact", "Mr."),
        entry("identifier", "http://hl7.org/fhir/sid/us-ssn|999-41-1742"),
        entry("identifier", "*|999-41-1742"),
        entry("gender", "|male"),
        entry("gender", "*|male"),
        entry("birthdate:lo", "1970"),
        entry("birthdate:lo", "1970-04"),
        entry("birthdate:hi", "1970-04-13"),
    ];
    for e in &expected {
        assert!(entries.contains(e), "missing {e:?}");
    }
    // Two-letter prefixes are not indexed; "jo" above is a whole given name.
    assert!(!entries.contains(&entry("family", "al")));
    assert!(!entries.contains(&entry("given", "ma")));
    // Sorted and deduplicated.
    let mut sorted = entries.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, entries);
    // Every param key is a declared parameter (or its :exact, :lo or :hi form).
    for e in &entries {
        let base = e.param.split(':').next().unwrap_or_default();
        assert!(
            search_params(ResourceType::PATIENT)
                .iter()
                .any(|d| d.name == base),
            "{e:?}"
        );
    }
}

#[test]
fn multi_word_names_index_words_and_prefixes() {
    let entries = entries_of(json!({
        "resourceType": "Patient",
        "name": [{"family": "van der Berg"}]
    }));
    for value in [
        "van der berg",
        "van der",
        "van d",
        "van",
        "der",
        "berg",
        "ber",
    ] {
        assert!(entries.contains(&entry("family", value)), "{value}");
    }
    assert!(!entries.contains(&entry("family", "van ")));
    assert!(entries.contains(&entry("family:exact", "van der Berg")));
}

#[test]
fn long_values_are_bounded() {
    let long = "x".repeat(10_000);
    let words = vec!["word"; 1000].join(" ");
    let entries = entries_of(json!({
        "resourceType": "Patient",
        "name": [{"family": long, "text": words}]
    }));
    assert!(entries.len() < 300, "{}", entries.len());
}

#[test]
fn clinical_index_entries() {
    let obs = entries_of(observation());
    for e in [
        entry("code", "http://loinc.org|8302-2"),
        entry("code", "*|8302-2"),
        entry("status", "|final"),
        entry("status", "*|final"),
        entry("patient", "Patient/b0a3fa2c-6b0e-4d8a-9a43-7fdd4bb8d1c3"),
        entry("subject", "Patient/b0a3fa2c-6b0e-4d8a-9a43-7fdd4bb8d1c3"),
        entry("date:lo", "2019"),
        entry("date:hi", "2019-03"),
        entry("date:lo", "2019-03-14"),
    ] {
        assert!(obs.contains(&e), "missing {e:?} in {obs:?}");
    }
    // Category is not the code.
    assert!(!obs.contains(&entry("code", "*|vital-signs")));

    let cond = entries_of(condition());
    for e in [
        entry(
            "clinical-status",
            "http://terminology.hl7.org/CodeSystem/condition-clinical|active",
        ),
        entry("clinical-status", "*|active"),
        entry("code", "http://snomed.info/sct|44054006"),
        entry("patient", "Patient/p1"),
        entry("onset-date:lo", "2001-07-02"),
    ] {
        assert!(cond.contains(&e), "missing {e:?} in {cond:?}");
    }

    // References to other types index under subject only; absolute and urn references not.
    let enc = entries_of(json!({
        "resourceType": "Encounter", "status": "finished",
        "class": {"code": "AMB"},
        "type": [{"coding": [{"code": "x1"}]}, {"coding": [{"system": "s", "code": "x2"}]}],
        "subject": {"reference": "Group/g1"}
    }));
    assert!(enc.contains(&entry("subject", "Group/g1")));
    assert!(!enc.iter().any(|e| e.param == "patient"));
    assert!(enc.contains(&entry("type", "|x1")));
    assert!(enc.contains(&entry("type", "*|x1")));
    assert!(enc.contains(&entry("type", "s|x2")));
    assert!(enc.contains(&entry("class", "*|AMB")));
    for reference in [
        "http://other.example/fhir/Patient/p1",
        "urn:uuid:0c3151bd-1cbf-4d64-b04d-cd9187a4c6e0",
        "#p1",
    ] {
        let entries = entries_of(json!({
            "resourceType": "Condition", "subject": {"reference": reference}
        }));
        assert!(
            !entries
                .iter()
                .any(|e| e.param == "subject" || e.param == "patient"),
            "{reference}"
        );
    }
}

#[test]
fn compartments() {
    let v = validator();
    let cases = [
        (
            synthea_patient(),
            Some("b0a3fa2c-6b0e-4d8a-9a43-7fdd4bb8d1c3"),
        ),
        (json!({"resourceType": "Patient"}), None),
        (observation(), Some("b0a3fa2c-6b0e-4d8a-9a43-7fdd4bb8d1c3")),
        (condition(), Some("p1")),
        (
            json!({"resourceType": "AllergyIntolerance", "patient": {"reference": "Patient/a1"}}),
            Some("a1"),
        ),
        (
            json!({"resourceType": "Task", "intent": "order", "status": "ready", "for": {"reference": "Patient/t1"}}),
            Some("t1"),
        ),
        (
            json!({"resourceType": "CareTeam", "subject": {"reference": "Patient/c1"}}),
            Some("c1"),
        ),
        (
            json!({"resourceType": "Consent", "status": "active", "scope": {"text": "x"},
                "category": [{"text": "x"}], "patient": {"reference": "Patient/k1"}}),
            Some("k1"),
        ),
        (
            json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                "subject": {"reference": "Group/g1"}}),
            None,
        ),
        (json!({"resourceType": "Practitioner", "id": "d1"}), None),
        (json!({"resourceType": "Organization", "id": "o1"}), None),
    ];
    for (body, expected) in cases {
        let resource = v.validate(body, None).unwrap();
        assert_eq!(
            compartment_patient(&resource).as_ref().map(Id::as_str),
            expected,
            "{resource:?}"
        );
    }
}

#[test]
fn query_vectors() {
    let p = ResourceType::PATIENT;
    let obs = ResourceType::parse("Observation").unwrap();
    // (type, pairs, expected any_of of each param)
    type Case = (ResourceType, Vec<(String, String)>, Vec<Vec<IndexEntry>>);
    let cases: Vec<Case> = vec![
        (
            p,
            pairs(&[("family", "Smi")]),
            vec![vec![entry("family", "smi")]],
        ),
        (
            p,
            pairs(&[("family", " ÁLVAREZ ")]),
            vec![vec![entry("family", "alvarez")]],
        ),
        (
            p,
            pairs(&[("family", "Li")]),
            vec![vec![entry("family", "li")]],
        ),
        (
            p,
            pairs(&[("family:exact", "Álvarez")]),
            vec![vec![entry("family:exact", "Álvarez")]],
        ),
        (
            p,
            pairs(&[("name", "jo,smith")]),
            vec![vec![entry("name", "jo"), entry("name", "smith")]],
        ),
        (
            p,
            pairs(&[("name", r"a\,b")]),
            vec![vec![entry("name", "a,b")]],
        ),
        (
            p,
            pairs(&[("given", "Jo"), ("given", "Mar")]),
            vec![vec![entry("given", "jo")], vec![entry("given", "mar")]],
        ),
        (
            p,
            pairs(&[("gender", "male")]),
            vec![vec![entry("gender", "*|male")]],
        ),
        (
            p,
            pairs(&[("identifier", "http://hl7.org/fhir/sid/us-ssn|999-41-1742")]),
            vec![vec![entry(
                "identifier",
                "http://hl7.org/fhir/sid/us-ssn|999-41-1742",
            )]],
        ),
        (
            p,
            pairs(&[("identifier", "|abc")]),
            vec![vec![entry("identifier", "|abc")]],
        ),
        (
            p,
            pairs(&[("identifier", r"s|a\|b")]),
            vec![vec![entry("identifier", "s|a|b")]],
        ),
        (
            obs,
            pairs(&[("code", "http://loinc.org|8302-2")]),
            vec![vec![entry("code", "http://loinc.org|8302-2")]],
        ),
        (
            obs,
            pairs(&[("code", "8302-2")]),
            vec![vec![entry("code", "*|8302-2")]],
        ),
        (
            obs,
            pairs(&[("code", "A,a")]),
            vec![vec![entry("code", "*|A"), entry("code", "*|a")]],
        ),
        (
            obs,
            pairs(&[("patient", "123")]),
            vec![vec![entry("patient", "Patient/123")]],
        ),
        (
            obs,
            pairs(&[("patient", "Patient/123")]),
            vec![vec![entry("patient", "Patient/123")]],
        ),
        (
            obs,
            pairs(&[("subject", "123")]),
            vec![vec![entry("subject", "Patient/123")]],
        ),
        (
            obs,
            pairs(&[("subject", "Group/9")]),
            vec![vec![entry("subject", "Group/9")]],
        ),
        (
            obs,
            pairs(&[("subject:Group", "9")]),
            vec![vec![entry("subject", "Group/9")]],
        ),
        (
            obs,
            pairs(&[("subject", "Patient/1/_history/2")]),
            vec![vec![entry("subject", "Patient/1")]],
        ),
        (
            obs,
            pairs(&[("_format", "application/fhir+json"), ("_count", "10")]),
            vec![],
        ),
    ];
    for (rtype, pairs, expected) in cases {
        let q =
            SearchQuery::parse(rtype, &pairs, false).unwrap_or_else(|e| panic!("{pairs:?}: {e}"));
        let got: Vec<Vec<IndexEntry>> = q.params.iter().map(|p| p.any_of.clone()).collect();
        assert_eq!(got, expected, "{pairs:?}");
        for (param, (name, raw)) in q.params.iter().zip(&pairs) {
            assert_eq!(&param.name, name);
            assert_eq!(&param.raw, raw);
        }
    }
}

#[test]
fn index_and_query_agree() {
    let resource = validator().validate(synthea_patient(), None).unwrap();
    let entries = index_entries(&resource);
    for (name, value) in [
        ("family", "álvarez"),
        ("family", "ALV"),
        ("family", "smith-j"),
        ("family:exact", "Álvarez"),
        ("given", "MARIA"),
        ("name", "Mr."),
        ("identifier", "999-41-1742"),
        ("gender", "male"),
        ("birthdate", "1970-04"),
    ] {
        let q = SearchQuery::parse(ResourceType::PATIENT, &pairs(&[(name, value)]), false).unwrap();
        assert!(q.params[0].matches(&entries), "{name}={value}");
    }
    // Too short for a prefix; not a whitespace-separated word; exact is exact; codes and
    // dates are not folded.
    for (name, value) in [
        ("family", "al"),
        ("name", "mr"),
        ("family", "jones"),
        ("family:exact", "alvarez"),
        ("gender", "MALE"),
        ("birthdate", "1970-05"),
    ] {
        let q = SearchQuery::parse(ResourceType::PATIENT, &pairs(&[(name, value)]), false).unwrap();
        assert!(!q.params[0].matches(&entries), "{name}={value}");
    }
}

#[test]
fn control_parameters() {
    let p = ResourceType::PATIENT;
    let q = SearchQuery::parse(p, &[], false).unwrap();
    assert_eq!((q.count, q.offset, q.ids), (50, 0, None));
    let q = SearchQuery::parse(
        p,
        &pairs(&[
            ("_id", "a,b"),
            ("_id", "b,c"),
            ("_count", "1000"),
            ("_offset", "20"),
        ]),
        false,
    )
    .unwrap();
    assert_eq!(q.ids, Some(vec![Id::parse("b").unwrap()]));
    assert_eq!((q.count, q.offset), (1000, 20));
    let q = SearchQuery::parse(
        p,
        &pairs(&[("_containedType", "x"), ("foo:bar", "y"), ("family", "x")]),
        true,
    )
    .unwrap();
    assert_eq!(
        q.ignored,
        vec!["_containedType".to_owned(), "foo:bar".to_owned()]
    );
    assert_eq!(q.params.len(), 1);
}

#[test]
fn query_errors() {
    const MARKER: &str = "ZQXMARKER";
    let p = ResourceType::PATIENT;
    let obs = ResourceType::parse("Observation").unwrap();
    let org = ResourceType::parse("Organization").unwrap();
    // (type, name, value, expected param in the error, phrase) ; param "" = UnknownSearchParam
    let cases = [
        (
            p,
            "family:contains",
            "ZQXMARKER",
            "family:contains",
            "modifier ':contains' is not supported",
        ),
        (
            p,
            "family:missing",
            "true",
            "family:missing",
            "not supported",
        ),
        (p, "family", "  ", "family", "empty value"),
        (p, "family", "", "family", "empty value"),
        (p, "gender:not", "male", "gender:not", "not supported"),
        (
            p,
            "identifier",
            "http://ZQXMARKER|",
            "identifier",
            "system without a code",
        ),
        (p, "birthdate", "ap1970", "birthdate", "prefix 'ap'"),
        (p, "birthdate", "lt1799", "birthdate", "from 1800 to 2200"),
        (
            p,
            "birthdate",
            "1970-01-01T10:00:00Z",
            "birthdate",
            "a time is not supported",
        ),
        (p, "birthdate", "1970-13", "birthdate", "not a valid date"),
        (
            p,
            "birthdate",
            "1970-02-30",
            "birthdate",
            "not a valid date",
        ),
        (p, "birthdate", "ZQXMARKER", "birthdate", "not a valid date"),
        (p, "birthdate", "70", "birthdate", "not a valid date"),
        (p, "birthdate", "0000", "birthdate", "not a valid date"),
        (
            obs,
            "patient",
            "Patient/ZQX MARKER",
            "patient",
            "not a valid reference",
        ),
        (obs, "patient", "ZQX MARKER", "patient", "not a valid id"),
        (
            obs,
            "patient",
            "Group/1",
            "patient",
            "must reference a Patient",
        ),
        (
            obs,
            "patient",
            "http://x.example/Patient/1",
            "patient",
            "not a valid reference",
        ),
        (
            obs,
            "subject:Patient",
            "Group/1",
            "subject:Patient",
            "differs",
        ),
        (
            obs,
            "subject:identifier",
            "x",
            "subject:identifier",
            "not supported",
        ),
        (p, "_id", "ZQX MARKER", "_id", "not a valid id"),
        (p, "_count", "-1", "_count", "non-negative integer"),
        (p, "_count", "ten", "_count", "non-negative integer"),
        (p, "_offset", "-5", "_offset", "non-negative"),
        (
            p,
            "_offset",
            "9223372036854775808",
            "_offset",
            "up to 1000000000",
        ),
        (p, "_offset", "1000000001", "_offset", "up to 1000000000"),
        (p, "_format", "xml", "_format", "only json"),
        (
            p,
            "family",
            &vec!["a"; 101].join(","),
            "family",
            "too many values",
        ),
        (org, "family", "x", "", ""),
        (p, "code", "x", "", ""),
        (p, "_containedType", "x", "", ""),
        (p, "name.family", "x", "", ""),
    ];
    for (rtype, name, value, param, phrase) in cases {
        let err = SearchQuery::parse(rtype, &pairs(&[(name, value)]), true)
            .err()
            .filter(|_| !param.is_empty())
            .or_else(|| SearchQuery::parse(rtype, &pairs(&[(name, value)]), false).err())
            .unwrap_or_else(|| panic!("{name}={value} parsed"));
        match (&err, param) {
            (FhirError::UnknownSearchParam(n), "") => assert_eq!(n, name),
            (
                FhirError::BadSearchValue {
                    param: got,
                    message,
                },
                _,
            ) => {
                assert_eq!(got, param, "{name}={value}");
                assert!(message.contains(phrase), "{name}={value}: {message}");
            }
            _ => panic!("{name}={value}: {err:?}"),
        }
        assert!(!err.to_string().contains(MARKER), "{err}");
        assert!(!err.to_string().contains("ZQX MARKER"), "{err}");
    }
}

#[test]
fn searches_are_bounded_in_parameters() {
    let p = ResourceType::parse("Patient").unwrap();
    let repeated = |n: usize| vec![("family".to_owned(), "smith".to_owned()); n];
    assert_eq!(
        SearchQuery::parse(p, &repeated(MAX_PARAMS), false)
            .unwrap()
            .params
            .len(),
        MAX_PARAMS
    );
    for n in [MAX_PARAMS + 1, 1_100] {
        match SearchQuery::parse(p, &repeated(n), false) {
            Err(FhirError::BadSearchValue { param, message }) => {
                assert_eq!(param, "family");
                assert!(message.contains("too many search parameters"), "{message}");
            }
            other => panic!("{n}: {other:?}"),
        }
    }
    let offset = |v: &str| SearchQuery::parse(p, &pairs(&[("_offset", v)]), false);
    assert_eq!(offset("1000000000").unwrap().offset, MAX_OFFSET);
    for v in [
        "9223372036854775807",
        "9223372036854775808",
        "18446744073709551616",
    ] {
        assert!(
            matches!(offset(v), Err(FhirError::BadSearchValue { .. })),
            "{v}"
        );
    }
}
