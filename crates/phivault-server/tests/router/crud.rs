//! The FHIR interactions of a system app: create, read, update, delete, history, search by name,
//! transaction Bundles.

use super::*;

#[tokio::test]
async fn create_read_update_delete_history() {
    let c = ctx().await;
    let mut body = patient("Smith");
    body["id"] = json!("client-chosen");
    let (id, a) = c.create(&body).await;
    assert_ne!(id, "client-chosen", "the server assigns ids on create");
    assert_eq!(a.header("etag"), Some("W/\"1\""));
    assert_eq!(
        a.header("location"),
        Some(format!("{BASE}/Patient/{id}/_history/1").as_str())
    );
    assert!(
        a.header("last-modified")
            .is_some_and(|d| d.ends_with(" GMT"))
    );
    assert_eq!(
        a.header("content-type"),
        Some("application/fhir+json; charset=utf-8")
    );
    assert_security_headers(&a);
    let created = a.json();
    assert_eq!(created["meta"]["versionId"], "1");
    assert_eq!(created["name"][0]["family"], "Smith");

    let a = c.get(&format!("/fhir/Patient/{id}")).await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    assert_eq!(a.header("etag"), Some("W/\"1\""));
    assert_eq!(a.json()["id"], id.as_str());

    // Update with the right version.
    let mut next = created.clone();
    next["name"][0]["family"] = json!("Smythe");
    let uri = format!("/fhir/Patient/{id}");
    let a = c
        .send(
            c.req(Method::PUT, &uri)
                .header(header::CONTENT_TYPE, "application/fhir+json")
                .header(header::IF_MATCH, "W/\"1\"")
                .body(Body::from(next.to_string()))
                .unwrap(),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    assert_eq!(a.header("etag"), Some("W/\"2\""));

    // Stale If-Match: 412.
    let a = c
        .send(
            c.req(Method::PUT, &uri)
                .header(header::CONTENT_TYPE, "application/fhir+json")
                .header(header::IF_MATCH, "W/\"1\"")
                .body(Body::from(next.to_string()))
                .unwrap(),
        )
        .await;
    a.assert_outcome(StatusCode::PRECONDITION_FAILED, "conflict");

    // Malformed If-Match: 400.
    let a = c
        .send(
            c.req(Method::PUT, &uri)
                .header(header::CONTENT_TYPE, "application/fhir+json")
                .header(header::IF_MATCH, "yesterday")
                .body(Body::from(next.to_string()))
                .unwrap(),
        )
        .await;
    a.assert_outcome(StatusCode::BAD_REQUEST, "value");

    // Body id differs from the URL's, or is absent: 400 (FHIR R4).
    let mut other = next.clone();
    other["id"] = json!("someone-else");
    let a = c.json(Method::PUT, &uri, &other).await;
    a.assert_outcome(StatusCode::BAD_REQUEST, "invalid");
    let mut no_id = next.clone();
    no_id.as_object_mut().unwrap().remove("id");
    let a = c.json(Method::PUT, &uri, &no_id).await;
    a.assert_outcome(StatusCode::BAD_REQUEST, "required");

    // Update-as-create with a client id: 201.
    let mut fresh = patient("Jones");
    fresh["id"] = json!("p-jones");
    let a = c.json(Method::PUT, "/fhir/Patient/p-jones", &fresh).await;
    assert_eq!(a.status, StatusCode::CREATED, "{a:?}");
    assert_eq!(
        a.header("location"),
        Some(format!("{BASE}/Patient/p-jones/_history/1").as_str())
    );

    // Delete: 204; then read is 410; vread of the old versions still works.
    let a = c
        .send(c.req(Method::DELETE, &uri).body(Body::empty()).unwrap())
        .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT, "{a:?}");
    assert!(a.body.is_empty());
    assert_security_headers(&a);
    let a = c.get(&uri).await;
    a.assert_outcome(StatusCode::GONE, "deleted");
    let a = c.get(&format!("{uri}/_history/1")).await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    assert_eq!(a.json()["name"][0]["family"], "Smith");
    let a = c.get(&format!("{uri}/_history/2")).await;
    assert_eq!(a.json()["name"][0]["family"], "Smythe");
    let a = c.get(&format!("{uri}/_history/3")).await;
    a.assert_outcome(StatusCode::GONE, "deleted");
    let a = c.get(&format!("{uri}/_history/9")).await;
    a.assert_outcome(StatusCode::NOT_FOUND, "not-found");

    // History: newest first, deletion without a resource.
    let a = c.get(&format!("{uri}/_history")).await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    let h = a.json();
    assert_eq!(h["type"], "history");
    assert_eq!(h["total"], 3);
    let entries = h["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 3);
    assert_eq!(entries[0]["request"]["method"], "DELETE");
    assert!(entries[0].get("resource").is_none());
    assert_eq!(entries[0]["response"]["etag"], "W/\"3\"");
    assert_eq!(entries[1]["resource"]["meta"]["versionId"], "2");
    assert_eq!(entries[2]["resource"]["meta"]["versionId"], "1");
    assert_eq!(entries[2]["fullUrl"], format!("{BASE}/Patient/{id}"));
    // Paging.
    let a = c.get(&format!("{uri}/_history?_count=2")).await;
    let h = a.json();
    assert_eq!(h["entry"].as_array().unwrap().len(), 2);
    let next_link = h["link"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["relation"] == "next")
        .expect("next link")["url"]
        .as_str()
        .unwrap()
        .to_owned();
    let a = c
        .get(next_link.strip_prefix("https://127.0.0.1:8443").unwrap())
        .await;
    let h = a.json();
    assert_eq!(h["entry"].as_array().unwrap().len(), 1);
    assert_eq!(h["entry"][0]["response"]["etag"], "W/\"1\"");

    // Deleting again is fine; deleting the unknown is 404.
    let a = c
        .send(c.req(Method::DELETE, &uri).body(Body::empty()).unwrap())
        .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT, "{a:?}");
    let a = c
        .send(
            c.req(Method::DELETE, "/fhir/Patient/never-was")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    a.assert_outcome(StatusCode::NOT_FOUND, "not-found");
    let a = c.get("/fhir/Patient/never-was").await;
    a.assert_outcome(StatusCode::NOT_FOUND, "not-found");
    let a = c.get("/fhir/Patient/never-was/_history").await;
    a.assert_outcome(StatusCode::NOT_FOUND, "not-found");
}

#[tokio::test]
async fn search_by_family() {
    let c = ctx().await;
    let (smith, _) = c.create(&patient("Smith")).await;
    c.create(&patient("Jones")).await;
    c.create(&patient("Brown")).await;

    let a = c.get("/fhir/Patient?family=smith").await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    assert_security_headers(&a);
    let b = a.json();
    assert_eq!(b["resourceType"], "Bundle");
    assert_eq!(b["type"], "searchset");
    assert_eq!(b["total"], 1);
    assert_eq!(b["entry"][0]["resource"]["id"], smith.as_str());
    assert_eq!(b["entry"][0]["search"]["mode"], "match");
    assert_eq!(b["entry"][0]["fullUrl"], format!("{BASE}/Patient/{smith}"));
    let self_link = b["link"][0]["url"].as_str().unwrap();
    assert!(
        self_link.starts_with(&format!("{BASE}/Patient?")),
        "{self_link}"
    );
    assert!(self_link.contains("family=smith"), "{self_link}");

    // POST _search with a form body (merged with the URL query).
    let a = c
        .send(
            c.req(Method::POST, "/fhir/Patient/_search?_count=5")
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from("family=Smi"))
                .unwrap(),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    assert_eq!(a.json()["total"], 1);
    let a = c
        .send(
            c.req(Method::POST, "/fhir/Patient/_search")
                .header(header::CONTENT_TYPE, "application/fhir+json")
                .body(Body::from("family=Smith"))
                .unwrap(),
        )
        .await;
    a.assert_outcome(StatusCode::UNSUPPORTED_MEDIA_TYPE, "not-supported");

    // Paging over everything.
    let a = c.get("/fhir/Patient?_count=2").await;
    let b = a.json();
    assert_eq!(b["total"], 3);
    assert_eq!(b["entry"].as_array().unwrap().len(), 2);
    let next = b["link"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["relation"] == "next")
        .expect("next link")["url"]
        .as_str()
        .unwrap()
        .to_owned();
    let a = c
        .get(next.strip_prefix("https://127.0.0.1:8443").unwrap())
        .await;
    let b = a.json();
    assert_eq!(b["entry"].as_array().unwrap().len(), 1);
    assert!(
        !b["link"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["relation"] == "next")
    );

    // Unknown parameter: 400, or ignored with a warning when lenient.
    let a = c.get("/fhir/Patient?shoe-size=42").await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{a:?}");
    let a = c
        .send(
            c.req(Method::GET, "/fhir/Patient?shoe-size=42&family=jones")
                .header("prefer", "handling=lenient")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    let b = a.json();
    assert_eq!(b["total"], 1);
    let outcome = b["entry"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["search"]["mode"] == "outcome")
        .expect("an outcome entry");
    assert!(outcome["resource"].to_string().contains("shoe-size"));
    assert!(!b["link"][0]["url"].as_str().unwrap().contains("shoe-size"));

    // Malformed percent-encoding: 400.
    let a = c.get("/fhir/Patient?family=%zz").await;
    a.assert_outcome(StatusCode::BAD_REQUEST, "value");
}

#[tokio::test]
async fn transaction_bundle() {
    let c = ctx().await;
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a",
                "resource": patient("Txn"),
                "request": { "method": "POST", "url": "Patient" }
            },
            {
                "resource": {
                    "resourceType": "Observation",
                    "status": "final",
                    "code": { "coding": [{ "system": "http://loinc.org", "code": "8867-4" }] },
                    "subject": { "reference": "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a" }
                },
                "request": { "method": "POST", "url": "Observation" }
            }
        ]
    });
    let a = c.json(Method::POST, "/fhir", &bundle).await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    let b = a.json();
    assert_eq!(b["type"], "transaction-response");
    assert_eq!(b["entry"].as_array().unwrap().len(), 2);
    assert!(
        b["entry"][0]["response"]["status"]
            .as_str()
            .unwrap()
            .starts_with("201")
    );
    assert!(
        b["entry"][0]["fullUrl"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{BASE}/Patient/"))
    );
    let pid = b["entry"][0]["resource"]["id"].as_str().unwrap();
    assert_eq!(
        b["entry"][1]["resource"]["subject"]["reference"],
        format!("Patient/{pid}")
    );

    // A failing entry fails the transaction, naming the entry.
    let failing = json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            { "resource": patient("Ok"), "request": { "method": "POST", "url": "Patient" } },
            { "request": { "method": "DELETE", "url": "Patient/does-not-exist" } }
        ]
    });
    let a = c.json(Method::POST, "/fhir", &failing).await;
    assert!(a.status.is_client_error(), "{a:?}");
    assert_eq!(a.json()["resourceType"], "OperationOutcome");
    assert!(
        String::from_utf8_lossy(&a.body).contains("entry[1]"),
        "{a:?}"
    );
    // Nothing of it was kept.
    let a = c.get("/fhir/Patient?family=ok").await;
    assert_eq!(a.json()["total"], 0, "{a:?}");

    // Too many entries: 413.
    let many: Vec<Value> = (0..11)
        .map(|_| json!({ "resource": patient("Many"), "request": { "method": "POST", "url": "Patient" } }))
        .collect();
    let a = c
        .json(
            Method::POST,
            "/fhir",
            &json!({ "resourceType": "Bundle", "type": "batch", "entry": many }),
        )
        .await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE, "{a:?}");
}
