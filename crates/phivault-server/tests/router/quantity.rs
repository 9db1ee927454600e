//! Number and quantity search over the API: prefixes, units, components, malformed values
//! (400 OperationOutcome), and no numeric value of a resource in the database files.

use super::*;

fn measured(pid: &str, value: Value, code: &str) -> Value {
    let mut o = observation(pid);
    o["valueQuantity"] = json!({"value": value, "system": "http://unitsofmeasure.org",
                                "code": code, "unit": code});
    o
}

fn ids(a: &Answer) -> Vec<String> {
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    let mut out: Vec<String> = a.json()["entry"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|e| e["search"]["mode"] == "match")
        .map(|e| e["resource"]["id"].as_str().unwrap().to_owned())
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn quantity_and_number_prefixes_over_the_api() {
    let c = ctx().await;
    let (pid, _) = c.create(&patient("Quantified")).await;
    let (low, _) = c.create(&measured(&pid, json!(5.4), "mmol/L")).await;
    let (high, _) = c.create(&measured(&pid, json!(7.25), "mmol/L")).await;
    let (mg, _) = c.create(&measured(&pid, json!(100), "mg")).await;
    let mut with_component = observation(&pid);
    with_component["component"] = json!([{"code": {"text": "systolic"},
        "valueQuantity": {"value": 142, "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}}]);
    let (bp, _) = c.create(&with_component).await;
    let sorted = |mut v: Vec<&String>| {
        v.sort();
        v.into_iter().cloned().collect::<Vec<String>>()
    };
    for (query, expected) in [
        ("value-quantity=5.4", vec![&low]),
        (
            "value-quantity=5.4|http://unitsofmeasure.org|mmol/L",
            vec![&low],
        ),
        (
            "value-quantity=gt5.4|http://unitsofmeasure.org|mmol/L",
            vec![&high],
        ),
        ("value-quantity=ge5.4||mmol/L", vec![&low, &high]),
        ("value-quantity=le100||mg", vec![&mg]),
        ("value-quantity=lt100||mg", vec![]),
        ("value-quantity=gt5", vec![&low, &high, &mg]),
        ("value-quantity=ne5.4||mmol/L", vec![&high]),
        ("value-quantity=sa5.4", vec![&high, &mg]),
        ("value-quantity=eb7.3", vec![&low]),
        ("value-quantity=ap7", vec![&high]),
        ("value-quantity=7.2", vec![]),
        ("value-quantity=7.25", vec![&high]),
        ("value-quantity=5.4,100", vec![&low, &mg]),
        ("value-quantity=gt5&value-quantity=lt10", vec![&low, &high]),
        (
            "component-value-quantity=gt140|http://unitsofmeasure.org|mm[Hg]",
            vec![&bp],
        ),
        ("component-value-quantity=gt142", vec![]),
        ("combo-value-quantity=ge100", vec![&mg, &bp]),
    ] {
        let uri = format!(
            "/fhir/Observation?{}",
            query
                .replace('|', "%7C")
                .replace('[', "%5B")
                .replace(']', "%5D")
        );
        assert_eq!(ids(&c.get(&uri).await), sorted(expected), "{query}");
    }
    let risk = |p: f64| {
        json!({"resourceType": "RiskAssessment", "status": "final",
               "subject": {"reference": format!("Patient/{pid}")},
               "prediction": [{"probabilityDecimal": p}]})
    };
    let (likely, _) = c.create(&risk(0.85)).await;
    c.create(&risk(0.2)).await;
    assert_eq!(
        ids(&c.get("/fhir/RiskAssessment?probability=gt0.8").await),
        vec![likely]
    );
    assert_eq!(
        total(&c.get("/fhir/RiskAssessment?probability=le0.2").await),
        1
    );
}

#[tokio::test]
async fn malformed_number_and_quantity_values_are_400() {
    let c = ctx().await;
    for (query, phrase) in [
        ("Observation?value-quantity=abc", "not a valid number"),
        ("Observation?value-quantity=gt", "not a valid number"),
        ("Observation?value-quantity=5.4%7Cx", "not a quantity"),
        (
            "Observation?value-quantity=5.4%7Chttp://x%7C",
            "system without a code",
        ),
        ("Observation?value-quantity=1.234567", "significant digits"),
        ("Observation?value-quantity=1e-30", "magnitude"),
        ("Observation?value-quantity:missing=true", "not supported"),
        ("RiskAssessment?probability=0.5%7Cx%7Cy", "not a number"),
        ("RiskAssessment?probability=5,6,abc", "not a valid number"),
        ("Observation?code-value-quantity=x", "composite"),
    ] {
        let a = c.get(&format!("/fhir/{query}")).await;
        let outcome = a.assert_outcome(StatusCode::BAD_REQUEST, "invalid");
        let text = outcome["issue"][0]["diagnostics"].as_str().unwrap();
        assert!(text.contains(phrase), "{query}: {text}");
    }
    // Too many buckets in all: refused, not run.
    let wide = vec!["value-quantity=gt-9.99999e15,lt9.99999e15"; 100].join("&");
    let a = c.get(&format!("/fhir/Observation?{wide}")).await;
    let outcome = a.assert_outcome(StatusCode::BAD_REQUEST, "invalid");
    let text = outcome["issue"][0]["diagnostics"].as_str().unwrap();
    assert!(text.contains("too many values in all"), "{text}");
}

#[tokio::test]
async fn numeric_values_are_not_in_the_database_files() {
    let c = ctx().await;
    let (pid, _) = c.create(&patient("Digits")).await;
    // Distinctive digits no other value in the database has.
    let mut b = [0u8; 4];
    phivault_crypto::random_bytes(&mut b).unwrap();
    let digits = format!("{}", 10_000_000 + u32::from_le_bytes(b) % 89_999_999);
    let text = format!("{}.{}", &digits[..4], &digits[4..]);
    let value: Value = serde_json::from_str(&text).unwrap();
    c.create(&measured(&pid, value, "mg")).await;
    let found = c
        .get(&format!(
            "/fhir/Observation?value-quantity=ge{}%7C%7Cmg",
            &digits[..4]
        ))
        .await;
    assert_eq!(total(&found), 1);
    if phivault_crypto::NOOP_CIPHER {
        return;
    }
    let mut scanned = 0;
    for entry in std::fs::read_dir(c._dir.path()).unwrap() {
        let Ok(bytes) = std::fs::read(entry.unwrap().path()) else {
            continue;
        };
        scanned += bytes.len();
        for needle in [digits.as_bytes(), text.as_bytes()] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "the digits of a value are in a database file"
            );
        }
    }
    assert!(scanned > 10_000, "{scanned}");
}

#[tokio::test]
async fn decimals_keep_their_written_precision_on_read_and_search() {
    let c = ctx().await;
    let (pid, _) = c.create(&patient("Precise")).await;
    // (as written, as read back): serde_json writes an exponent as `e` and a sign.
    for (written, read) in [
        ("1.50", "1.50"),
        ("0.10", "0.10"),
        ("100.00", "100.00"),
        ("-0.0", "-0.0"),
        ("1e2", "1e+2"),
        ("2.50E-3", "2.50e-3"),
    ] {
        let body = format!(
            r#"{{"resourceType":"Observation","status":"final","code":{{"text":"x"}},"subject":{{"reference":"Patient/{pid}"}},"valueQuantity":{{"value":{written},"unit":"u{written}"}}}}"#
        );
        let a = c
            .send(
                c.req_as(&c.token, Method::POST, "/fhir/Observation")
                    .header(header::CONTENT_TYPE, "application/fhir+json")
                    .body(Body::from(body))
                    .unwrap(),
            )
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{a:?}");
        // The number as written, then the next key.
        let needle = format!(r#""value":{read},"unit""#);
        let created = String::from_utf8(a.body.clone()).unwrap();
        assert!(created.contains(&needle), "{written}: {created}");
        let id = a.json()["id"].as_str().unwrap().to_owned();
        let read_back = c.get(&format!("/fhir/Observation/{id}")).await;
        let text = String::from_utf8(read_back.body.clone()).unwrap();
        assert!(text.contains(&needle), "{written}: {text}");
        let found = c
            .get(&format!(
                "/fhir/Observation?_id={id}&value-quantity={written}"
            ))
            .await;
        assert_eq!(total(&found), 1, "{written}");
        let text = String::from_utf8(found.body.clone()).unwrap();
        assert!(text.contains(&needle), "{written}: {text}");
    }
}
