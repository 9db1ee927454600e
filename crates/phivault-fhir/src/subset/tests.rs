use serde_json::json;

use super::*;

fn patient() -> Value {
    json!({
        "resourceType": "Patient",
        "id": "p1",
        "meta": { "versionId": "3", "security": [{ "system": "s", "code": "R" }] },
        "text": { "status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>" },
        "modifierExtension": [{ "url": "http://example.org/m", "valueBoolean": true }],
        "name": [{ "family": "Chalmers" }],
        "birthDate": "1974-12-25",
        "_birthDate": { "extension": [{ "url": "http://example.org/t", "valueString": "x" }] },
        "deceasedBoolean": false,
        "photo": [{ "contentType": "image/png" }],
        "contact": [{ "name": { "family": "Du Marché" } }],
        "maritalStatus": { "text": "M" },
    })
}

fn keys(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    k.sort_unstable();
    k
}

fn parse(list: &[(&str, &str)], lenient: bool) -> Result<Option<Subset>, FhirError> {
    let pairs: Vec<(String, String)> = list
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    Subset::from_pairs(ResourceType::PATIENT, &pairs, lenient)
}

#[test]
fn table_has_the_r4_flags() {
    let p = elements_of("Patient");
    let flag = |n: &str| {
        p.iter()
            .find(|e| e.name == n)
            .map(|e| (e.summary, e.mandatory))
    };
    assert_eq!(flag("birthDate"), Some((true, false)));
    assert_eq!(flag("photo"), Some((false, false)));
    assert_eq!(flag("contact"), Some((false, false)));
    assert_eq!(flag("text"), Some((false, false)));
    let active = p.iter().find(|e| e.name == "active").unwrap();
    assert!(active.modifier && active.summary);
    assert!(!p.iter().find(|e| e.name == "photo").unwrap().modifier);
    let o = elements_of("Observation");
    let status = o.iter().find(|e| e.name == "status").unwrap();
    assert!(status.summary && status.mandatory);
    let value = o.iter().find(|e| e.name == "value[x]").unwrap();
    assert!(value.json.contains(&"valueQuantity"));
    assert!(elements_of("NoSuchType").is_empty());
    // Sorted, so that the binary search finds every type.
    assert!(elements::TYPES.windows(2).all(|w| w[0].0 < w[1].0));
    assert!(elements::TYPES.len() > 140);
}

#[test]
fn summary_true_keeps_summary_and_mandatory_elements() {
    let mut body = patient();
    Subset::Summary.apply(&mut body);
    assert_eq!(
        keys(&body),
        [
            "_birthDate",
            "birthDate",
            "deceasedBoolean",
            "id",
            "meta",
            "modifierExtension",
            "name",
            "resourceType"
        ]
    );
    assert!(is_subsetted(&body));
    // The security labels stay.
    assert_eq!(body["meta"]["security"][0]["code"], "R");
    assert_eq!(body["meta"]["tag"][0]["code"], SUBSETTED);
    assert_eq!(body["meta"]["tag"][0]["system"], SUBSETTED_SYSTEM);
    // Tagged once even when subsetted twice.
    Subset::Summary.apply(&mut body);
    assert_eq!(body["meta"]["tag"].as_array().unwrap().len(), 1);

    let mut obs = json!({
        "resourceType": "Observation", "status": "final", "code": { "text": "c" },
        "valueQuantity": { "value": 1 }, "note": [{ "text": "n" }],
    });
    Subset::Summary.apply(&mut obs);
    assert_eq!(
        keys(&obs),
        ["code", "meta", "resourceType", "status", "valueQuantity"]
    );
}

#[test]
fn text_data_and_elements() {
    let mut body = patient();
    Subset::Text.apply(&mut body);
    // deceased[x] is a modifier: kept.
    assert_eq!(
        keys(&body),
        [
            "deceasedBoolean",
            "id",
            "meta",
            "modifierExtension",
            "resourceType",
            "text"
        ]
    );
    let mut obs = json!({
        "resourceType": "Observation", "status": "final", "code": { "text": "c" },
        "text": { "status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>" },
        "valueQuantity": { "value": 1 },
    });
    Subset::Text.apply(&mut obs);
    // Mandatory elements stay.
    assert_eq!(
        keys(&obs),
        ["code", "meta", "resourceType", "status", "text"]
    );

    let mut body = patient();
    Subset::Data.apply(&mut body);
    let whole = patient();
    let mut expected = keys(&whole);
    expected.retain(|k| *k != "text");
    assert_eq!(keys(&body), expected);
    assert!(is_subsetted(&body));

    let mut body = patient();
    Subset::Elements(vec!["birthDate".to_owned(), "deceased".to_owned()]).apply(&mut body);
    assert_eq!(
        keys(&body),
        [
            "_birthDate",
            "birthDate",
            "deceasedBoolean",
            "id",
            "meta",
            "modifierExtension",
            "resourceType"
        ]
    );
    // A resource without meta gets one for the tag; a modifier (active) is never left out.
    let mut bare = json!({ "resourceType": "Patient", "gender": "other", "active": false });
    Subset::Elements(vec!["name".to_owned()]).apply(&mut bare);
    assert_eq!(keys(&bare), ["active", "meta", "resourceType"]);
    assert!(is_subsetted(&bare));
    assert!(!is_subsetted(&patient()));
}

#[test]
fn parameters() {
    assert_eq!(parse(&[], false).unwrap(), None);
    assert_eq!(
        parse(&[("_summary", "true")], false).unwrap(),
        Some(Subset::Summary)
    );
    assert_eq!(
        parse(&[("_summary", "text")], false).unwrap(),
        Some(Subset::Text)
    );
    assert_eq!(
        parse(&[("_summary", "data")], false).unwrap(),
        Some(Subset::Data)
    );
    assert_eq!(parse(&[("_summary", "false")], false).unwrap(), None);
    assert_eq!(
        parse(
            &[
                ("_elements", "birthDate, deceased[x]"),
                ("_elements", "name,birthDate")
            ],
            false
        )
        .unwrap(),
        Some(Subset::Elements(vec![
            "birthDate".to_owned(),
            "deceased[x]".to_owned(),
            "name".to_owned()
        ]))
    );
    assert_eq!(
        parse(
            &[("_elements", "deceasedBoolean"), ("_summary", "false")],
            false
        )
        .unwrap(),
        Some(Subset::Elements(vec!["deceasedBoolean".to_owned()]))
    );
    // fhirpy's `elements()` adds `id` and `resourceType`.
    assert_eq!(
        parse(&[("_elements", "resourceType,birthDate,id")], false).unwrap(),
        Some(Subset::Elements(vec![
            "resourceType".to_owned(),
            "birthDate".to_owned(),
            "id".to_owned()
        ]))
    );
    // Other parameters are not looked at.
    assert_eq!(parse(&[("family", "x")], false).unwrap(), None);
    for (list, phrase) in [
        (&[("_summary", "count")][..], "searches only"),
        (
            &[("_summary", "all")][..],
            "true, text, data, count or false",
        ),
        (
            &[("_elements", "nope")][..],
            "'nope' is not a top-level element of Patient",
        ),
        (
            &[("_elements", "name.family")][..],
            "not a FHIR element name",
        ),
        (&[("_elements", "_birthDate")][..], "'_birthDate' is not"),
        (
            &[("_summary", "true"), ("_elements", "name")][..],
            "cannot be combined",
        ),
        (
            &[("_elements", "name"), ("_summary", "text")][..],
            "cannot be combined",
        ),
    ] {
        match parse(list, false) {
            Err(FhirError::BadSearchValue { message, .. }) => {
                assert!(message.contains(phrase), "{list:?}: {message}");
            }
            other => panic!("{list:?}: {other:?}"),
        }
    }
    // Lenient: unknown names are left out.
    assert_eq!(
        parse(&[("_elements", "nope,name")], true).unwrap(),
        Some(Subset::Elements(vec!["name".to_owned()]))
    );
    let many = vec!["name"; 101].join(",");
    assert!(
        parse(&[("_elements", &many)], false).is_ok(),
        "repeats count once"
    );
    assert_eq!(
        Subset::Elements(vec!["a".to_owned(), "b".to_owned()]).pair(),
        ("_elements".to_owned(), "a,b".to_owned())
    );
}

#[test]
fn a_subsetted_body_is_not_written() {
    let v = crate::Validator::new().unwrap();
    assert!(v.validate(patient(), None).is_ok());
    let mut body = patient();
    Subset::Data.apply(&mut body);
    assert!(matches!(
        v.validate(body, Some(ResourceType::PATIENT)),
        Err(FhirError::Subsetted)
    ));
}
