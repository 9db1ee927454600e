//! Parameters searched as the union of two others ([`UNIONS`]): the table agrees with the
//! specification, and a search by such a parameter finds exactly what it found when the
//! parameter had tokens of its own.

use serde_json::{Value, json};

use super::unions::UNIONS;
use super::*;

fn observation_type() -> ResourceType {
    ResourceType::parse("Observation").unwrap()
}

/// The expression of `code` in the vendored R4 definitions, restricted to the `Observation`
/// alternatives (shared parameters such as `code` list every type's path).
fn observation_paths(code: &str) -> BTreeSet<String> {
    let spec: Value =
        serde_json::from_str(include_str!("../../data/search-parameters.json")).unwrap();
    let def = spec["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| {
            p["code"] == code
                && p["base"]
                    .as_array()
                    .is_some_and(|b| b.iter().any(|t| t == "Observation"))
        })
        .unwrap_or_else(|| panic!("{code} is not an Observation parameter"));
    def["expression"]
        .as_str()
        .unwrap()
        .split('|')
        .map(|alt| alt.trim().to_owned())
        .filter(|alt| alt.trim_start_matches('(').starts_with("Observation."))
        .collect()
}

#[test]
fn each_union_is_the_union_of_its_parts_in_the_specification() {
    let rtype = observation_type();
    for (t, union, parts) in UNIONS {
        assert_eq!(*t, "Observation");
        let mut both = observation_paths(parts[0]);
        both.extend(observation_paths(parts[1]));
        assert_eq!(observation_paths(union), both, "{union}");
        for name in [union, &parts[0], &parts[1]] {
            assert!(
                search_params(rtype).iter().any(|d| d.name == *name),
                "{name} is served"
            );
        }
    }
}

/// Observations with values, components, absent data and codeable values.
fn samples() -> Vec<Value> {
    let quantity = |v: f64, unit: &str| json!({"value": v, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit});
    let code = |c: &str| json!({"coding": [{"system": "http://loinc.org", "code": c}], "text": c});
    vec![
        json!({"resourceType": "Observation", "status": "final", "code": code("8302-2"),
               "valueQuantity": quantity(172.4, "cm")}),
        json!({"resourceType": "Observation", "status": "final", "code": code("85354-9"),
               "component": [
                   {"code": code("8480-6"), "valueQuantity": quantity(120.0, "mm[Hg]")},
                   {"code": code("8462-4"), "valueQuantity": quantity(80.0, "mm[Hg]")}]}),
        json!({"resourceType": "Observation", "status": "final", "code": code("72166-2"),
               "valueCodeableConcept": code("266919005")}),
        json!({"resourceType": "Observation", "status": "final", "code": code("8867-4"),
               "dataAbsentReason": code("unknown"),
               "component": [{"code": code("9279-1"), "dataAbsentReason": code("asked")}]}),
        json!({"resourceType": "Observation", "status": "final", "code": code("1-1"),
               "component": [{"code": code("2-2"), "valueCodeableConcept": code("3-3")}]}),
    ]
}

#[test]
fn a_union_finds_what_its_own_tokens_found() {
    let rtype = observation_type();
    let queries: &[(&str, &[&str])] = &[
        (
            "combo-code",
            &[
                "8302-2",
                "8480-6",
                "9279-1",
                "http://loinc.org|2-2",
                "9-9",
                "1-1",
            ],
        ),
        (
            "combo-value-quantity",
            &[
                "172.4",
                "gt100",
                "lt100",
                "120||mm[Hg]",
                "ge80|http://unitsofmeasure.org|mm[Hg]",
                "ne172.4",
                "ap80",
                "5",
            ],
        ),
        (
            "combo-value-concept",
            &["266919005", "3-3", "http://loinc.org|3-3", "4-4"],
        ),
        ("combo-data-absent-reason", &["unknown", "asked", "masked"]),
    ];
    let mut matched = 0;
    for body in samples() {
        // What the index holds now, and what it held with the unions' own tokens as well.
        let now = index_entries_of(rtype, &body);
        let mut before: BTreeSet<IndexEntry> = now.iter().cloned().collect();
        for (_, union, _) in UNIONS {
            let def = search_params(rtype)
                .iter()
                .find(|d| d.name == *union)
                .unwrap();
            index_param(&body, def, &mut before);
        }
        let before: Vec<IndexEntry> = before.into_iter().collect();
        assert!(
            !now.iter().any(|e| e.param.starts_with("combo-")),
            "no union has tokens of its own"
        );
        for (name, values) in queries {
            let (base, modifier) = match name.split_once(':') {
                Some((b, m)) => (b, Some(m)),
                None => (*name, None),
            };
            let def = search_params(rtype)
                .iter()
                .find(|d| d.name == base)
                .unwrap();
            for value in *values {
                let own = parse_param(def, name, modifier, value).unwrap();
                let query =
                    SearchQuery::parse(rtype, &[((*name).to_owned(), (*value).to_owned())], false)
                        .unwrap();
                let union = &query.params[0];
                assert_eq!(
                    union.matches(&now),
                    own.matches(&before),
                    "{name}={value} on {body}"
                );
                matched += usize::from(own.matches(&before));
            }
        }
    }
    // The samples exercise matches as well as misses.
    assert!(matched >= 15, "{matched}");
}
