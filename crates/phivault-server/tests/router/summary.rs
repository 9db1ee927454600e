//! `_summary=true|text|data` and `_elements` over the API: search (with includes), read, vread
//! and history return subsets tagged SUBSETTED, with their own ETag; a subsetted body is never
//! written back; subsetting never widens what a principal may read.

use super::*;

const TAG_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue";

fn full_patient() -> Value {
    json!({
        "resourceType": "Patient",
        "name": [{ "family": "Subset", "given": ["Sam"] }],
        "birthDate": "1980-02-03",
        "gender": "female",
        "text": {
            "status": "generated",
            "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Sam Subset</div>",
        },
        "photo": [{ "contentType": "image/png", "data": "iVBORw0K" }],
        "contact": [{ "name": { "family": "Kin" } }],
        "maritalStatus": { "text": "single" },
    })
}

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
    k.sort();
    k
}

fn subsetted(v: &Value) -> bool {
    v["meta"]["tag"].as_array().is_some_and(|t| {
        t.iter()
            .any(|t| t["system"] == TAG_SYSTEM && t["code"] == "SUBSETTED")
    })
}

fn resources(a: &Answer, mode: &str) -> Vec<Value> {
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    a.json()["entry"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e["search"]["mode"] == mode)
        .map(|e| e["resource"].clone())
        .collect()
}

#[tokio::test]
async fn summaries_and_elements_on_read_and_search() {
    let c = ctx().await;
    let (pid, _) = c.create(&full_patient()).await;
    let uri = format!("/fhir/Patient/{pid}");

    // The whole resource: no tag, the version ETag.
    let whole = c.get(&uri).await;
    assert_eq!(whole.status, StatusCode::OK, "{whole:?}");
    assert_eq!(whole.header("etag"), Some("W/\"1\""));
    assert!(!subsetted(&whole.json()));
    assert!(whole.json().get("photo").is_some());

    // _summary=true: R4's summary elements (name, birthDate, gender), not photo, contact,
    // maritalStatus or text.
    let a = c.get(&format!("{uri}?_summary=true")).await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    let body = a.json();
    assert_eq!(
        keys(&body),
        ["birthDate", "gender", "id", "meta", "name", "resourceType"]
    );
    assert!(subsetted(&body), "{body}");
    assert_eq!(body["meta"]["versionId"], "1");
    assert_eq!(a.header("etag"), Some("W/\"1-subsetted\""));
    // Conditional reads compare the subset's own tag.
    let cond = c
        .send(
            c.req(Method::GET, &format!("{uri}?_summary=true"))
                .header(header::IF_NONE_MATCH, "W/\"1\"")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(cond.status, StatusCode::OK, "{cond:?}");
    let cond = c
        .send(
            c.req(Method::GET, &format!("{uri}?_summary=true"))
                .header(header::IF_NONE_MATCH, "W/\"1-subsetted\"")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(cond.status, StatusCode::NOT_MODIFIED, "{cond:?}");

    // _summary=text: text, id, meta (Patient has no mandatory element).
    let a = c.get(&format!("{uri}?_summary=text")).await;
    assert_eq!(keys(&a.json()), ["id", "meta", "resourceType", "text"]);
    assert!(subsetted(&a.json()));
    // _summary=data: everything but text.
    let a = c.get(&format!("{uri}?_summary=data")).await;
    let mut expected = keys(&whole.json());
    expected.retain(|k| k != "text");
    assert_eq!(keys(&a.json()), expected);
    assert!(subsetted(&a.json()));
    // _summary=false: the whole resource.
    let a = c.get(&format!("{uri}?_summary=false")).await;
    assert_eq!(a.json(), whole.json());
    assert_eq!(a.header("etag"), Some("W/\"1\""));

    // _elements on read and on vread.
    for u in [
        format!("{uri}?_elements=birthDate"),
        format!("{uri}/_history/1?_elements=birthDate"),
    ] {
        let a = c.get(&u).await;
        assert_eq!(a.status, StatusCode::OK, "{u}: {a:?}");
        assert_eq!(
            keys(&a.json()),
            ["birthDate", "id", "meta", "resourceType"],
            "{u}"
        );
        assert!(subsetted(&a.json()), "{u}");
    }

    // _elements on search, GET and POST; the links repeat it.
    let a = c
        .get(&format!("/fhir/Patient?_id={pid}&_elements=birthDate,name"))
        .await;
    let found = resources(&a, "match");
    assert_eq!(found.len(), 1, "{a:?}");
    assert_eq!(
        keys(&found[0]),
        ["birthDate", "id", "meta", "name", "resourceType"]
    );
    assert!(subsetted(&found[0]));
    let link = a.json()["link"][0]["url"].as_str().unwrap().to_owned();
    assert!(link.contains("_elements=birthDate,name"), "{link}");
    let a = c
        .send(
            c.req(Method::POST, "/fhir/Patient/_search")
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from(format!("_id={pid}&_summary=true")))
                .unwrap(),
        )
        .await;
    let found = resources(&a, "match");
    assert_eq!(found.len(), 1, "{a:?}");
    assert!(found[0].get("photo").is_none() && found[0].get("name").is_some());
    assert!(subsetted(&found[0]));

    // Included resources are subsetted the same way; an Observation keeps its mandatory
    // status and code under _summary=text.
    let mut obs = observation(&pid);
    obs["note"] = json!([{ "text": "not a summary element" }]);
    obs["valueString"] = json!("summary element");
    let (oid, _) = c.create(&obs).await;
    let a = c
        .get(&format!(
            "/fhir/Observation?_id={oid}&_include=Observation:subject&_summary=true"
        ))
        .await;
    let matched = resources(&a, "match");
    assert_eq!(matched.len(), 1, "{a:?}");
    assert!(matched[0].get("note").is_none(), "{}", matched[0]);
    assert_eq!(matched[0]["valueString"], "summary element");
    let included = resources(&a, "include");
    assert_eq!(included.len(), 1, "{a:?}");
    assert_eq!(included[0]["resourceType"], "Patient");
    assert!(included[0].get("photo").is_none() && included[0].get("name").is_some());
    assert!(subsetted(&included[0]));
    let a = c
        .get(&format!("/fhir/Observation/{oid}?_summary=text"))
        .await;
    assert_eq!(
        keys(&a.json()),
        ["code", "id", "meta", "resourceType", "status"]
    );

    // History: each version subsetted, its entry's etag too, the links repeat it.
    let a = c.get(&format!("{uri}/_history?_summary=true")).await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    let entry = &a.json()["entry"][0];
    assert!(entry["resource"].get("photo").is_none(), "{entry}");
    assert!(subsetted(&entry["resource"]));
    assert_eq!(entry["response"]["etag"], "W/\"1-subsetted\"");
    let link = a.json()["link"][0]["url"].as_str().unwrap().to_owned();
    assert!(link.ends_with("&_summary=true"), "{link}");

    // Summaries in a batch's search entries.
    let bundle = json!({
        "resourceType": "Bundle", "type": "batch",
        "entry": [{ "request": { "method": "GET", "url": format!("Patient?_id={pid}&_elements=gender") } }],
    });
    let a = c.json(Method::POST, "/fhir", &bundle).await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    let found = &a.json()["entry"][0]["resource"]["entry"][0]["resource"];
    assert_eq!(keys(found), ["gender", "id", "meta", "resourceType"]);

    // And in a batch's reads and vreads; a bad one is that entry's 400, other parameters on
    // a read are still refused.
    let bundle = json!({
        "resourceType": "Bundle", "type": "batch",
        "entry": [
            { "request": { "method": "GET", "url": format!("Patient/{pid}?_summary=true") } },
            { "request": { "method": "GET", "url": format!("Patient/{pid}/_history/1?_elements=gender") } },
            { "request": { "method": "GET", "url": format!("Patient/{pid}?_elements=shoeSize") } },
            { "request": { "method": "GET", "url": format!("Patient/{pid}") } },
        ],
    });
    let a = c.json(Method::POST, "/fhir", &bundle).await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    let answers = a.json()["entry"].as_array().unwrap().clone();
    assert!(answers[0]["resource"].get("photo").is_none(), "{a:?}");
    assert!(subsetted(&answers[0]["resource"]));
    assert_eq!(answers[0]["response"]["etag"], "W/\"1-subsetted\"");
    assert_eq!(
        keys(&answers[1]["resource"]),
        ["gender", "id", "meta", "resourceType"]
    );
    assert!(
        answers[2]["response"]["status"]
            .as_str()
            .unwrap()
            .starts_with("400"),
        "{a:?}"
    );
    assert!(answers[3]["resource"].get("photo").is_some());
    assert!(!subsetted(&answers[3]["resource"]));
    for url in [
        format!("Patient/{pid}?_elements=shoeSize"),
        format!("Patient/{pid}?family=x"),
    ] {
        let bundle = json!({
            "resourceType": "Bundle", "type": "transaction",
            "entry": [{ "request": { "method": "GET", "url": url } }],
        });
        let a = c.json(Method::POST, "/fhir", &bundle).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{url}: {a:?}");
        assert!(a.diagnostics().contains("Bundle.entry[0]"), "{a:?}");
    }
}

#[tokio::test]
async fn bad_subset_parameters_are_400() {
    let c = ctx().await;
    let (pid, _) = c.create(&full_patient()).await;
    let uri = format!("/fhir/Patient/{pid}");
    for q in [
        "/fhir/Patient?_elements=shoeSize".to_owned(),
        format!("{uri}?_elements=shoeSize"),
        format!("{uri}/_history/1?_elements=shoeSize"),
        format!("{uri}/_history?_elements=shoeSize"),
        "/fhir/Patient?_elements=name&_summary=true".to_owned(),
        format!("{uri}?_summary=text&_elements=name"),
        format!("{uri}?_summary=count"),
        format!("{uri}?_summary=yes"),
    ] {
        let a = c.get(&q).await;
        a.assert_outcome(StatusCode::BAD_REQUEST, "invalid");
        assert!(!a.diagnostics().contains("Subset"), "{q}: {a:?}");
    }
    assert!(
        c.get(&format!("{uri}?_elements=shoeSize"))
            .await
            .diagnostics()
            .contains("'shoeSize' is not a top-level element of Patient")
    );
    // Lenient: an unknown element is ignored (with a warning in a searchset).
    let a = c
        .send(
            c.req(
                Method::GET,
                &format!("/fhir/Patient?_id={pid}&_elements=shoeSize,gender"),
            )
            .header("prefer", "handling=lenient")
            .body(Body::empty())
            .unwrap(),
        )
        .await;
    let found = resources(&a, "match");
    assert_eq!(keys(&found[0]), ["gender", "id", "meta", "resourceType"]);
    let outcome = resources(&a, "outcome");
    assert!(
        outcome[0]["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("shoeSize"),
        "{a:?}"
    );
}

#[tokio::test]
async fn subsets_are_never_written_back() {
    let c = ctx().await;
    let (pid, _) = c.create(&full_patient()).await;
    let uri = format!("/fhir/Patient/{pid}");
    let a = c.get(&format!("{uri}?_summary=true")).await;
    let subset = a.json();
    // PUT of the subset: 400, nothing written (version 1 still whole).
    let put = c.json(Method::PUT, &uri, &subset).await;
    put.assert_outcome(StatusCode::BAD_REQUEST, "invalid");
    assert!(put.diagnostics().contains("SUBSETTED"), "{put:?}");
    // Nor with the subset's ETag as a precondition: not a version ETag.
    let mut untagged = subset.clone();
    untagged["meta"] = json!({});
    let put = c
        .send(
            c.req(Method::PUT, &uri)
                .header(header::CONTENT_TYPE, "application/fhir+json")
                .header(header::IF_MATCH, a.header("etag").unwrap())
                .body(Body::from(untagged.to_string()))
                .unwrap(),
        )
        .await;
    put.assert_outcome(StatusCode::BAD_REQUEST, "value");
    assert!(put.diagnostics().contains("If-Match"), "{put:?}");
    // Neither as a create, a conditional update nor in a transaction.
    let mut fresh = subset.clone();
    fresh.as_object_mut().unwrap().remove("id");
    c.json(Method::POST, "/fhir/Patient", &fresh)
        .await
        .assert_outcome(StatusCode::BAD_REQUEST, "invalid");
    c.json(Method::PUT, &format!("/fhir/Patient?_id={pid}"), &subset)
        .await
        .assert_outcome(StatusCode::BAD_REQUEST, "invalid");
    let bundle = json!({
        "resourceType": "Bundle", "type": "transaction",
        "entry": [{ "resource": subset, "request": { "method": "PUT", "url": format!("Patient/{pid}") } }],
    });
    let a = c.json(Method::POST, "/fhir", &bundle).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{a:?}");
    let after = c.get(&uri).await;
    assert_eq!(after.header("etag"), Some("W/\"1\""));
    assert!(after.json().get("photo").is_some());
}

#[tokio::test]
async fn subsets_widen_nothing() {
    let c = ctx().await;
    let admin = c.person("admin", Role::Admin).await;
    let gp = c.person("gp", Role::Clinician).await;
    let psych_token = c.person("psych", Role::Clinician).await;
    let (pid, _) = c.create(&patient("Guarded")).await;
    c.grant(&admin, "gp", &pid, &[]).await;
    c.grant(&admin, "psych", &pid, &["PSY"]).await;
    let (psych, _) = c.create_as(&psych_token, &psy_observation(&pid)).await;
    c.create(&observation(&pid)).await;
    let uri = format!("/fhir/Observation/{psych}");
    // The label still refuses the read whatever subset is asked for.
    for q in ["_summary=true", "_summary=text", "_elements=status"] {
        c.get_as(&gp, &format!("{uri}?{q}"))
            .await
            .assert_denied("label-not-granted");
    }
    // A summary search neither returns nor counts it; the labels stay in meta.
    let a = c.get_as(&gp, "/fhir/Observation?_summary=true").await;
    assert_eq!(total(&a), 1);
    let a = c
        .get_as(&psych_token, "/fhir/Observation?_summary=true")
        .await;
    assert_eq!(total(&a), 2);
    assert!(
        resources(&a, "match")
            .iter()
            .any(|o| o["meta"]["security"][0]["code"] == "PSY"),
        "{a:?}"
    );
    // A stranger learns nothing more from a summary than from a read.
    let stranger = c.person("stranger", Role::Clinician).await;
    c.get_as(&stranger, &format!("/fhir/Patient/{pid}?_summary=true"))
        .await
        .assert_denied("no-permit");
}
