//! The HTTP details FHIR clients rely on: Bundles at `[base]/` as at `[base]`; JSON only, with
//! 406 for anything else; conditional read (304 only for what the caller may read, audited
//! like a read); `Prefer: return=...` on create, update and Bundles; 400 for an update whose
//! body id is absent or differs from the URL's; this server's absolute URLs stored as
//! relative references; references to resources that do not exist accepted as written.

use super::*;

fn get_with(c: &Ctx, token: &str, uri: &str, headers: &[(&str, &str)]) -> Request<Body> {
    let mut b = c.req_as(token, Method::GET, uri);
    for (name, value) in headers {
        b = b.header(*name, *value);
    }
    b.body(Body::empty()).unwrap()
}

fn write_with(c: &Ctx, method: Method, uri: &str, body: &Value, prefer: &str) -> Request<Body> {
    c.req(method, uri)
        .header(header::CONTENT_TYPE, "application/fhir+json")
        .header("prefer", prefer)
        .body(Body::from(body.to_string()))
        .unwrap()
}

fn bundle(kind: &str, entries: Vec<Value>) -> Value {
    json!({ "resourceType": "Bundle", "type": kind, "entry": entries })
}

#[tokio::test]
async fn bundles_are_taken_at_the_base_url_with_or_without_a_trailing_slash() {
    let c = ctx().await;
    for (uri, kind) in [
        ("/fhir/", "transaction"),
        ("/fhir/", "batch"),
        ("/fhir", "batch"),
    ] {
        let family = format!("Slash{}{}", uri.len(), kind.len());
        let b = bundle(
            kind,
            vec![json!({ "resource": patient(&family),
                         "request": { "method": "POST", "url": "Patient" } })],
        );
        let a = c.json(Method::POST, uri, &b).await;
        assert_eq!(a.status, StatusCode::OK, "{uri} {kind}: {a:?}");
        let v = a.json();
        assert_eq!(v["type"], format!("{kind}-response"), "{v}");
        assert!(
            v["entry"][0]["response"]["status"]
                .as_str()
                .unwrap()
                .starts_with("201"),
            "{v}"
        );
        let found = c
            .get(&format!("/fhir/Patient?family={}", family.to_lowercase()))
            .await;
        assert_eq!(total(&found), 1, "{found:?}");
    }
    // The trailing slash is audited under its own route template.
    let before = audit_count(&c).await;
    let b = bundle("batch", vec![]);
    assert_eq!(
        c.json(Method::POST, "/fhir/", &b).await.status,
        StatusCode::OK
    );
    let entries = audit_entries_after(&c, before).await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0].0.action, "POST /fhir/");
    // The rest of the base is unchanged.
    let a = c.get("/fhir/metadata").await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    assert_eq!(a.json()["resourceType"], "CapabilityStatement");
    let a = c.get("/fhir/").await;
    a.assert_outcome(StatusCode::METHOD_NOT_ALLOWED, "not-supported");
    // A Bundle needs a token at the trailing slash too.
    let a = c
        .send(
            Request::post("/fhir/")
                .header(header::CONTENT_TYPE, "application/fhir+json")
                .body(Body::from(b.to_string()))
                .unwrap(),
        )
        .await;
    a.assert_outcome(StatusCode::UNAUTHORIZED, "login");
}

#[tokio::test]
async fn only_json_is_served_and_anything_else_is_406() {
    let c = ctx().await;
    let (pid, _) = c.create(&patient("Formats")).await;
    let read = format!("/fhir/Patient/{pid}");
    let search = "/fhir/Patient?family=formats".to_owned();
    for uri in [&read, &search, &"/fhir/metadata".to_owned()] {
        for accept in [
            None,
            Some("*/*"),
            Some("application/json"),
            Some("application/fhir+json"),
            Some("application/fhir+json; fhirVersion=4.0"),
            Some("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
        ] {
            let headers: Vec<(&str, &str)> = accept.iter().map(|a| ("accept", *a)).collect();
            let a = c.send(get_with(&c, &c.token, uri, &headers)).await;
            assert_eq!(a.status, StatusCode::OK, "{uri} {accept:?}: {a:?}");
            assert_eq!(
                a.header("content-type"),
                Some("application/fhir+json; charset=utf-8")
            );
        }
        for format in ["json", "application/fhir%2Bjson", "application/json"] {
            let sep = if uri.contains('?') { '&' } else { '?' };
            let with = format!("{uri}{sep}_format={format}");
            // `_format` wins over Accept.
            let a = c
                .send(get_with(
                    &c,
                    &c.token,
                    &with,
                    &[("accept", "application/fhir+xml")],
                ))
                .await;
            assert_eq!(a.status, StatusCode::OK, "{with}: {a:?}");
        }
        for accept in ["application/fhir+xml", "application/xml", "text/turtle"] {
            let a = c
                .send(get_with(&c, &c.token, uri, &[("accept", accept)]))
                .await;
            a.assert_outcome(StatusCode::NOT_ACCEPTABLE, "not-supported");
            assert!(a.diagnostics().contains("JSON"), "{a:?}");
        }
        for format in ["xml", "application/fhir%2Bxml", "ttl"] {
            let sep = if uri.contains('?') { '&' } else { '?' };
            let a = c.get(&format!("{uri}{sep}_format={format}")).await;
            a.assert_outcome(StatusCode::NOT_ACCEPTABLE, "not-supported");
        }
    }
    // Writes too: nothing is created when the answer could not be given.
    let a = c
        .send(
            c.req(Method::POST, "/fhir/Patient")
                .header(header::CONTENT_TYPE, "application/fhir+json")
                .header(header::ACCEPT, "application/fhir+xml")
                .body(Body::from(patient("Unanswerable").to_string()))
                .unwrap(),
        )
        .await;
    a.assert_outcome(StatusCode::NOT_ACCEPTABLE, "not-supported");
    assert_eq!(total(&c.get("/fhir/Patient?family=unanswerable").await), 0);
    // A 406 is audited like any answer; without a token the answer is still 401.
    let before = audit_count(&c).await;
    c.get(&format!("{read}?_format=xml")).await;
    let entries = audit_entries_after(&c, before).await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0].0.action, "GET /fhir/{type}/{id}");
    let a = c
        .send(
            Request::get(&read)
                .header(header::ACCEPT, "application/fhir+xml")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    a.assert_outcome(StatusCode::UNAUTHORIZED, "login");
}

#[tokio::test]
async fn conditional_read_answers_304_only_for_what_may_be_read() {
    let c = ctx().await;
    let (pid, created) = c.create(&patient("Conditional")).await;
    let uri = format!("/fhir/Patient/{pid}");
    assert_eq!(created.header("etag"), Some("W/\"1\""));
    let last_modified = created.header("last-modified").unwrap().to_owned();

    // The current version: 304, no body, the ETag kept; audited as a read of the resource.
    let before = audit_count(&c).await;
    let a = c
        .send(get_with(
            &c,
            &c.token,
            &uri,
            &[("if-none-match", "W/\"1\"")],
        ))
        .await;
    assert_eq!(a.status, StatusCode::NOT_MODIFIED, "{a:?}");
    assert!(a.body.is_empty(), "{a:?}");
    assert_eq!(a.header("etag"), Some("W/\"1\""));
    assert_eq!(a.header("last-modified"), Some(last_modified.as_str()));
    assert_security_headers(&a);
    let entries = audit_entries_after(&c, before).await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    let (entry, _) = &entries[0];
    assert_eq!(entry.action, "GET /fhir/{type}/{id}");
    assert_eq!(entry.resource_id.as_deref(), Some(pid.as_str()));
    assert_eq!(entry.patient_id.as_deref(), Some(pid.as_str()));
    assert_eq!(entry.outcome, phivault_audit::Outcome::Allowed);

    // A strong tag, a list, and `*` match too; If-Modified-Since at or after lastUpdated.
    for (name, value) in [
        ("if-none-match", "\"1\""),
        ("if-none-match", "W/\"7\", W/\"1\""),
        ("if-none-match", "*"),
        ("if-modified-since", last_modified.as_str()),
        ("if-modified-since", "Fri, 31 Dec 9999 23:59:59 GMT"),
    ] {
        let a = c.send(get_with(&c, &c.token, &uri, &[(name, value)])).await;
        assert_eq!(a.status, StatusCode::NOT_MODIFIED, "{name}: {value}: {a:?}");
    }

    // Once updated, the old tag and an earlier date read the new version in full.
    let mut next = c.get(&uri).await.json();
    next["gender"] = json!("other");
    assert_eq!(
        c.json(Method::PUT, &uri, &next).await.status,
        StatusCode::OK
    );
    for (name, value) in [
        ("if-none-match", "W/\"1\""),
        ("if-modified-since", "Thu, 01 Jan 1970 00:00:00 GMT"),
        ("if-modified-since", "not a date"),
        // If-None-Match wins over If-Modified-Since.
        ("if-none-match", "W/\"1\""),
    ] {
        let mut headers = vec![(name, value)];
        if name == "if-none-match" {
            headers.push(("if-modified-since", "Fri, 31 Dec 9999 23:59:59 GMT"));
        }
        let a = c.send(get_with(&c, &c.token, &uri, &headers)).await;
        assert_eq!(a.status, StatusCode::OK, "{name}: {value}: {a:?}");
        assert_eq!(a.json()["gender"], "other");
        assert_eq!(a.header("etag"), Some("W/\"2\""));
    }
    let a = c
        .send(get_with(
            &c,
            &c.token,
            &uri,
            &[("if-none-match", "W/\"2\"")],
        ))
        .await;
    assert_eq!(a.status, StatusCode::NOT_MODIFIED, "{a:?}");

    // A caller who may not read it is refused exactly as without the condition, whatever
    // the tag; an id that does not exist is refused (or not found) the same way.
    let (other, _) = c.create(&patient("Launched")).await;
    let (app, secret) = c.client("portal", "patient/*.rs", Some(&other)).await;
    let portal = c.client_token(&app, &secret, None).await;
    let plain = c.get_as(&portal, &uri).await;
    plain.assert_denied("scope-too-narrow");
    for value in ["W/\"2\"", "W/\"1\"", "*"] {
        let a = c
            .send(get_with(&c, &portal, &uri, &[("if-none-match", value)]))
            .await;
        a.assert_denied("scope-too-narrow");
        assert_eq!(a.body, plain.body);
    }
    let a = c
        .send(get_with(
            &c,
            &portal,
            &uri,
            &[("if-modified-since", "Fri, 31 Dec 9999 23:59:59 GMT")],
        ))
        .await;
    a.assert_denied("scope-too-narrow");
    let a = c
        .send(get_with(
            &c,
            &portal,
            "/fhir/Patient/never-was",
            &[("if-none-match", "*")],
        ))
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{a:?}");
    let a = c
        .send(get_with(
            &c,
            &c.token,
            "/fhir/Patient/never-was",
            &[("if-none-match", "*")],
        ))
        .await;
    a.assert_outcome(StatusCode::NOT_FOUND, "not-found");
    // A deleted resource is gone, not "not modified".
    let (gone, _) = c.create(&patient("Gone")).await;
    let gone_uri = format!("/fhir/Patient/{gone}");
    let a = c
        .send(
            c.req(Method::DELETE, &gone_uri)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    let a = c
        .send(get_with(&c, &c.token, &gone_uri, &[("if-none-match", "*")]))
        .await;
    a.assert_outcome(StatusCode::GONE, "deleted");
    // The launched patient's own record does answer 304 to its app.
    let a = c
        .send(get_with(
            &c,
            &portal,
            &format!("/fhir/Patient/{other}"),
            &[("if-none-match", "W/\"1\"")],
        ))
        .await;
    assert_eq!(a.status, StatusCode::NOT_MODIFIED, "{a:?}");
}

#[tokio::test]
async fn prefer_return_shapes_create_update_and_bundles() {
    let c = ctx().await;
    // minimal: 201, no body, the headers a client needs.
    let a = c
        .send(write_with(
            &c,
            Method::POST,
            "/fhir/Patient",
            &patient("Minimal"),
            "return=minimal",
        ))
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{a:?}");
    assert!(a.body.is_empty(), "{a:?}");
    assert_eq!(a.header("content-type"), None);
    assert_eq!(a.header("etag"), Some("W/\"1\""));
    assert!(a.header("last-modified").is_some());
    assert_eq!(a.header("preference-applied"), Some("return=minimal"));
    let location = a.header("location").unwrap().to_owned();
    let prefix = format!("{BASE}/Patient/");
    let id = location
        .strip_prefix(&prefix)
        .and_then(|rest| rest.strip_suffix("/_history/1"))
        .unwrap()
        .to_owned();
    let uri = format!("/fhir/Patient/{id}");
    let mut stored = c.get(&uri).await.json();
    assert_eq!(stored["name"][0]["family"], "Minimal");

    // OperationOutcome: says what was done, by type, id and version only.
    stored["gender"] = json!("female");
    let a = c
        .send(write_with(
            &c,
            Method::PUT,
            &uri,
            &stored,
            "return=OperationOutcome",
        ))
        .await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    assert_eq!(a.header("etag"), Some("W/\"2\""));
    assert_eq!(
        a.header("content-type"),
        Some("application/fhir+json; charset=utf-8")
    );
    let v = a.json();
    assert_eq!(v["resourceType"], "OperationOutcome", "{v}");
    assert_eq!(v["issue"][0]["severity"], "information");
    assert_eq!(
        v["issue"][0]["diagnostics"],
        format!("updated Patient/{id} (now version 2)")
    );
    assert!(!a.body.windows(6).any(|w| w == b"female"), "{a:?}");
    let a = c
        .send(write_with(
            &c,
            Method::POST,
            "/fhir/Patient",
            &patient("Outcome"),
            "return=OperationOutcome",
        ))
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{a:?}");
    assert!(
        a.json()["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .starts_with("created Patient/"),
        "{a:?}"
    );

    // representation (and no preference): the resource.
    for prefer in ["return=representation", "respond-async"] {
        stored["gender"] = json!("male");
        stored.as_object_mut().unwrap().remove("meta");
        let a = c
            .send(write_with(&c, Method::PUT, &uri, &stored, prefer))
            .await;
        assert_eq!(a.status, StatusCode::OK, "{a:?}");
        assert_eq!(a.json()["gender"], "male");
    }

    // Errors are answered as they are.
    let mut wrong = stored.clone();
    wrong["id"] = json!("not-this-one");
    let a = c
        .send(write_with(&c, Method::PUT, &uri, &wrong, "return=minimal"))
        .await;
    a.assert_outcome(StatusCode::BAD_REQUEST, "invalid");
    assert_eq!(a.header("preference-applied"), None);

    // Bundles: written entries lose their resource (minimal) or get an outcome; reads and
    // searches keep what they return.
    for prefer in ["return=minimal", "return=OperationOutcome"] {
        let b = bundle(
            "batch",
            vec![
                json!({ "resource": patient("InBundle"),
                        "request": { "method": "POST", "url": "Patient" } }),
                json!({ "request": { "method": "GET", "url": format!("Patient/{id}") } }),
                json!({ "request": { "method": "GET", "url": "Patient?family=minimal" } }),
            ],
        );
        let a = c
            .send(write_with(&c, Method::POST, "/fhir/", &b, prefer))
            .await;
        assert_eq!(a.status, StatusCode::OK, "{a:?}");
        let v = a.json();
        let written = &v["entry"][0];
        assert!(written.get("resource").is_none(), "{v}");
        assert!(written["response"]["location"].is_string(), "{v}");
        assert_eq!(
            written["response"].get("outcome").is_some(),
            prefer == "return=OperationOutcome",
            "{v}"
        );
        assert_eq!(v["entry"][1]["resource"]["id"], id.as_str(), "{v}");
        assert_eq!(v["entry"][2]["resource"]["total"], 1, "{v}");
    }
}

#[tokio::test]
async fn an_update_needs_the_urls_id_in_its_body() {
    let c = ctx().await;
    let (pid, _) = c.create(&patient("Ids")).await;
    let uri = format!("/fhir/Patient/{pid}");
    let body = c.get(&uri).await.json();
    let mut other = body.clone();
    other["id"] = json!("someone-else");
    let a = c.json(Method::PUT, &uri, &other).await;
    a.assert_outcome(StatusCode::BAD_REQUEST, "invalid");
    assert_eq!(
        a.json()["issue"][0]["expression"][0],
        "Resource.id",
        "{a:?}"
    );
    let mut no_id = body.clone();
    no_id.as_object_mut().unwrap().remove("id");
    let a = c.json(Method::PUT, &uri, &no_id).await;
    a.assert_outcome(StatusCode::BAD_REQUEST, "required");
    // Checked before the body's references: a mismatch is 400 even when they would be 422.
    let mut obs = observation("elsewhere");
    obs["id"] = json!("o-2");
    obs["subject"] = json!({ "reference": "https://other.example/fhir/Patient/x" });
    let a = c.json(Method::PUT, "/fhir/Observation/o-1", &obs).await;
    a.assert_outcome(StatusCode::BAD_REQUEST, "invalid");
    // Neither was written.
    assert_eq!(c.get(&uri).await.header("etag"), Some("W/\"1\""));
    assert_eq!(
        c.get("/fhir/Observation/o-1").await.status,
        StatusCode::NOT_FOUND
    );
    // In a Bundle, a PUT entry takes its id from request.url when the body has none, and a
    // different one fails the entry.
    let mut put = body.clone();
    put.as_object_mut().unwrap().remove("id");
    let b = bundle(
        "batch",
        vec![
            json!({ "resource": put, "request": { "method": "PUT", "url": format!("Patient/{pid}") } }),
        ],
    );
    let a = c.json(Method::POST, "/fhir", &b).await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    assert!(
        a.json()["entry"][0]["response"]["status"]
            .as_str()
            .unwrap()
            .starts_with("200"),
        "{a:?}"
    );
    let b = bundle(
        "transaction",
        vec![
            json!({ "resource": other, "request": { "method": "PUT", "url": format!("Patient/{pid}") } }),
        ],
    );
    let a = c.json(Method::POST, "/fhir", &b).await;
    a.assert_outcome(StatusCode::BAD_REQUEST, "invalid");
    assert!(a.diagnostics().contains("differs"), "{a:?}");
}

#[tokio::test]
async fn own_absolute_urls_are_stored_as_relative_references() {
    let c = ctx().await;
    let (pid, _) = c.create(&patient("Absolute")).await;
    let (org, _) = c
        .create(&json!({ "resourceType": "Organization", "name": "Clinic" }))
        .await;
    let (doc, _) = c
        .create(&json!({ "resourceType": "Practitioner", "name": [{ "family": "Doc" }] }))
        .await;
    let host = "HTTPS://127.0.0.1:8443/fhir";
    let mut obs = observation(&pid);
    obs["subject"] = json!({ "reference": format!("{BASE}/Patient/{pid}") });
    obs["performer"] = json!([
        { "reference": format!("{BASE}/Practitioner/{doc}") },
        { "reference": format!("{host}/Organization/{org}/_history/1") },
    ]);
    obs["basedOn"] = json!([
        { "reference": "https://elsewhere.example/fhir/CarePlan/x" },
        { "reference": format!("{BASE}/CarePlan") },
    ]);
    let (oid, created) = c.create(&obs).await;
    let body = created.json();
    assert_eq!(body["subject"]["reference"], format!("Patient/{pid}"));
    assert_eq!(
        body["performer"][0]["reference"],
        format!("Practitioner/{doc}")
    );
    assert_eq!(
        body["performer"][1]["reference"],
        format!("Organization/{org}/_history/1")
    );
    // Another server's URL, and a URL of ours that names no resource, stay as written.
    assert_eq!(
        body["basedOn"][0]["reference"],
        "https://elsewhere.example/fhir/CarePlan/x"
    );
    assert_eq!(body["basedOn"][1]["reference"], format!("{BASE}/CarePlan"));
    // Searches by the relative reference find it.
    let a = c
        .get(&format!("/fhir/Observation?performer=Practitioner/{doc}"))
        .await;
    assert_eq!(total(&a), 1, "{a:?}");
    assert_eq!(a.json()["entry"][0]["resource"]["id"], oid.as_str());

    // In updates and in Bundles too (directory resources included).
    let mut role = json!({
        "resourceType": "PractitionerRole",
        "id": "role-1",
        "practitioner": { "reference": format!("{BASE}/Practitioner/{doc}") },
        "organization": { "reference": format!("{BASE}/Organization/{org}") },
    });
    let a = c
        .json(Method::PUT, "/fhir/PractitionerRole/role-1", &role)
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{a:?}");
    assert_eq!(
        a.json()["organization"]["reference"],
        format!("Organization/{org}")
    );
    role["organization"] = json!({ "reference": format!("{BASE}/Organization/{org}") });
    let b = bundle(
        "transaction",
        vec![
            json!({ "resource": role, "request": { "method": "PUT", "url": "PractitionerRole/role-1" } }),
        ],
    );
    let a = c.json(Method::POST, "/fhir/", &b).await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    assert_eq!(
        a.json()["entry"][0]["resource"]["organization"]["reference"],
        format!("Organization/{org}")
    );
}

#[tokio::test]
async fn references_to_resources_that_do_not_exist_are_accepted_as_written() {
    let c = ctx().await;
    // Referential integrity is not enforced: a dangling reference is stored as written.
    let (pid, _) = c.create(&patient("Dangling")).await;
    let mut obs = observation(&pid);
    obs["performer"] = json!([{ "reference": "Practitioner/not-yet-here" }]);
    let (_, a) = c.create(&obs).await;
    assert_eq!(
        a.json()["performer"][0]["reference"],
        "Practitioner/not-yet-here"
    );
    // The compartment patient may not exist yet either (a record may arrive before its
    // Patient); it is decided like any write in that compartment.
    let (oid, _) = c.create(&observation("arrives-later")).await;
    let a = c.get(&format!("/fhir/Observation/{oid}")).await;
    assert_eq!(a.json()["subject"]["reference"], "Patient/arrives-later");
    let mut later = patient("Later");
    later["id"] = json!("arrives-later");
    let a = c
        .json(Method::PUT, "/fhir/Patient/arrives-later", &later)
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{a:?}");
    assert_eq!(
        total(&c.get("/fhir/Observation?patient=arrives-later").await),
        1
    );
    // Existence is not revealed to a writer who may not write there: the refusal for a
    // patient that does not exist is the one for a patient out of reach.
    let (app, secret) = c.client("portal", "patient/*.cruds", Some(&pid)).await;
    let portal = c.client_token(&app, &secret, None).await;
    let missing = c
        .json_as(
            &portal,
            Method::POST,
            "/fhir/Observation",
            &observation("nobody-here"),
        )
        .await;
    let existing = c
        .json_as(
            &portal,
            Method::POST,
            "/fhir/Observation",
            &observation("arrives-later"),
        )
        .await;
    assert_eq!(missing.status, StatusCode::FORBIDDEN, "{missing:?}");
    assert_eq!(missing.body, existing.body);
}
