//! Result parameters (`_count=0`, `_summary=count`, `_total`, a capped `_count`) and range
//! searches (`date` prefixes, `_lastUpdated`) over the API: totals and entries are only ever of
//! what the principal may read.

use super::*;

fn dated(pid: &str, date: &str) -> Value {
    let mut o = observation(pid);
    o["effectiveDateTime"] = json!(date);
    o
}

fn entries(a: &Answer) -> Vec<Value> {
    a.json()["entry"].as_array().cloned().unwrap_or_default()
}

fn matches(a: &Answer) -> Vec<Value> {
    entries(a)
        .into_iter()
        .filter(|e| e["search"]["mode"] == "match")
        .collect()
}

#[tokio::test]
async fn count_summary_and_total_shape_the_searchset() {
    let c = ctx().await;
    let (pid, _) = c.create(&patient("Counted")).await;
    for day in ["2020-01-01", "2020-06-01", "2021-01-01"] {
        c.create(&dated(&pid, day)).await;
    }
    // _count=0 and _summary=count: the total only.
    for q in ["_count=0", "_summary=count", "_summary=count&_count=2"] {
        let a = c.get(&format!("/fhir/Observation?{q}")).await;
        assert_eq!(total(&a), 3, "{q}");
        assert!(entries(&a).is_empty(), "{q}: {a:?}");
        assert!(
            !a.json()["link"]
                .as_array()
                .unwrap()
                .iter()
                .any(|l| l["relation"] == "next"),
            "{q}"
        );
    }
    // _total=none: entries, no total; estimate and accurate: the exact total.
    let a = c.get("/fhir/Observation?_total=none&_count=2").await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    assert!(a.json().get("total").is_none(), "{a:?}");
    assert_eq!(matches(&a).len(), 2);
    let next = a.json()["link"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["relation"] == "next")
        .map(|l| l["url"].as_str().unwrap().to_owned());
    assert!(
        next.as_deref().is_some_and(|u| u.contains("_total=none")),
        "{next:?}"
    );
    for t in ["estimate", "accurate"] {
        assert_eq!(
            total(&c.get(&format!("/fhir/Observation?_total={t}")).await),
            3
        );
    }
    // A _count above the maximum is capped, with a warning entry.
    let a = c.get("/fhir/Observation?_count=5000").await;
    assert_eq!(total(&a), 3);
    assert_eq!(matches(&a).len(), 3);
    let outcome = entries(&a)
        .into_iter()
        .find(|e| e["search"]["mode"] == "outcome")
        .unwrap_or_else(|| panic!("no outcome entry: {a:?}"));
    assert_eq!(outcome["resource"]["resourceType"], "OperationOutcome");
    assert_eq!(outcome["resource"]["issue"][0]["severity"], "warning");
    assert!(
        outcome["resource"]["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("reduced to 1000"),
        "{outcome}"
    );
    let self_link = a.json()["link"][0]["url"].as_str().unwrap().to_owned();
    assert!(self_link.contains("_count=1000"), "{self_link}");
    // Malformed values are refused.
    for q in ["_count=-1", "_count=x", "_summary=all", "_total=all"] {
        c.get(&format!("/fhir/Observation?{q}"))
            .await
            .assert_outcome(StatusCode::BAD_REQUEST, "invalid");
    }
    // Range prefixes and _lastUpdated.
    assert_eq!(total(&c.get("/fhir/Observation?date=ge2020-06").await), 2);
    assert_eq!(
        total(&c.get("/fhir/Observation?date=lt2020-06-01").await),
        1
    );
    assert_eq!(total(&c.get("/fhir/Observation?date=ne2020").await), 1);
    assert_eq!(
        total(&c.get("/fhir/Observation?date=2020&date=gt2020-03").await),
        1
    );
    assert_eq!(
        total(&c.get("/fhir/Observation?_lastUpdated=ge2000").await),
        3
    );
    assert_eq!(
        total(
            &c.get("/fhir/Observation?_lastUpdated=lt2000-01-01T00:00Z")
                .await
        ),
        0
    );
    c.get("/fhir/Observation?date=ap2020")
        .await
        .assert_outcome(StatusCode::BAD_REQUEST, "invalid");
}

#[tokio::test]
async fn range_searches_never_return_or_count_what_may_not_be_read() {
    let c = ctx().await;
    let admin = c.person("admin", Role::Admin).await;
    let doc = c.person("doc", Role::Clinician).await;
    let (mine, _) = c.create(&patient("Rangemine")).await;
    let (theirs, _) = c.create(&patient("Rangetheirs")).await;
    for day in ["2020-02-03", "2020-07-08"] {
        c.create(&dated(&mine, day)).await;
    }
    for day in ["2020-02-04", "2020-07-09", "2020-08-01"] {
        c.create(&dated(&theirs, day)).await;
    }
    // A labelled Observation of the doctor's own patient, without a label grant.
    let mut psy = psy_observation(&mine);
    psy["effectiveDateTime"] = json!("2020-03-01");
    let psych = c.person("psych", Role::Clinician).await;
    c.grant(&admin, "psych", &mine, &["PSY"]).await;
    c.create_as(&psych, &psy).await;
    c.grant(&admin, "doc", &mine, &[]).await;
    // The labelled one is in range: its holder counts it; the app (no label grants) sees the
    // five others.
    assert_eq!(
        total(&c.get_as(&psych, "/fhir/Observation?date=ge2020").await),
        3
    );
    assert_eq!(total(&c.get("/fhir/Observation?date=ge2020").await), 5);
    for q in [
        "date=ge2020",
        "date=le2020-12-31",
        "date=ne2019",
        "date=sa2019",
        "date=eb2021",
        "date=2020",
        "date=ge2020&_count=0",
        "date=ge2020&_summary=count",
        "date=ge2020&_count=5000",
        "_lastUpdated=ge2000",
        "_lastUpdated=ne1999",
    ] {
        let a = c.get_as(&doc, &format!("/fhir/Observation?{q}")).await;
        assert_eq!(total(&a), 2, "{q}");
        for e in matches(&a) {
            assert_eq!(
                e["resource"]["subject"]["reference"],
                format!("Patient/{mine}"),
                "{q}"
            );
            assert!(e["resource"]["meta"]["security"].is_null(), "{q}");
        }
    }
    // Naming the other patient finds nothing, whatever the range.
    for q in ["date=ge1800", "date=lt2200", "_lastUpdated=ge2000"] {
        let a = c
            .get_as(&doc, &format!("/fhir/Observation?patient={theirs}&{q}"))
            .await;
        assert_eq!(total(&a), 0, "{q}");
        assert!(matches(&a).is_empty());
    }
}
