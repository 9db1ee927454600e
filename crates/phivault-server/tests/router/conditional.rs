//! Conditional interactions: `If-None-Exist` on a create, `ifNoneExist` and conditional
//! references in transactions and batches. Each condition is a search with the caller's own
//! access: a match the caller may not read counts as none (no 200 vs 201 about it), a create
//! is decided before its condition is searched, and a conditional reference never resolves to
//! a resource the writer cannot read.

use super::*;

const SYNTHEA: &str = "https://github.com/synthetichealth/synthea";

fn org(value: &str) -> Value {
    json!({"resourceType": "Organization", "name": "General Hospital",
        "identifier": [{"system": SYNTHEA, "value": value}]})
}

fn location(org_ref: &str) -> Value {
    json!({"resourceType": "Location", "name": "Ward",
        "managingOrganization": {"reference": org_ref}})
}

fn with_identifier(mut body: Value, system: &str, value: &str) -> Value {
    body["identifier"] = json!([{"system": system, "value": value}]);
    body
}

impl Ctx {
    /// `POST /fhir/{type}` with `If-None-Exist: condition` as `token`.
    async fn create_if_none(&self, token: &str, body: &Value, condition: &str) -> Answer {
        let rtype = body["resourceType"].as_str().unwrap();
        self.send(
            self.req_as(token, Method::POST, &format!("/fhir/{rtype}"))
                .header(header::CONTENT_TYPE, "application/fhir+json")
                .header("if-none-exist", condition)
                .body(Body::from(body.to_string()))
                .unwrap(),
        )
        .await
    }
}

fn transaction(entries: Value) -> Value {
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
}

#[tokio::test]
async fn if_none_exist_creates_once_then_returns_the_match() {
    let c = ctx().await;
    let condition = format!("identifier={SYNTHEA}|org-1");
    let first = c.create_if_none(&c.token, &org("org-1"), &condition).await;
    assert_eq!(first.status, StatusCode::CREATED, "{first:?}");
    let id = first.json()["id"].as_str().unwrap().to_owned();
    // The same condition again: the match, 200, nothing written.
    let second = c.create_if_none(&c.token, &org("org-1"), &condition).await;
    assert_eq!(second.status, StatusCode::OK, "{second:?}");
    assert_eq!(second.json()["id"], id.as_str());
    assert_eq!(second.header("etag"), Some("W/\"1\""));
    // `Type?query` is accepted too.
    let third = c
        .create_if_none(
            &c.token,
            &org("org-1"),
            &format!("Organization?identifier={SYNTHEA}|org-1"),
        )
        .await;
    assert_eq!(third.status, StatusCode::OK, "{third:?}");
    assert_eq!(
        total(
            &c.get(&format!("/fhir/Organization?identifier={SYNTHEA}|org-1"))
                .await
        ),
        1
    );
    // Two matches: 412, nothing written.
    c.create(&org("org-1")).await;
    c.create_if_none(&c.token, &org("org-1"), &condition)
        .await
        .assert_outcome(StatusCode::PRECONDITION_FAILED, "multiple-matches");
    assert_eq!(
        total(
            &c.get(&format!("/fhir/Organization?identifier={SYNTHEA}|org-1"))
                .await
        ),
        2
    );
    // A condition that is no search of the type: 400, naming the header, not the value.
    for bad in ["", "nonsense=1", "Patient?identifier=x|1", "_count=1"] {
        let a = c.create_if_none(&c.token, &org("org-2"), bad).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{bad}: {a:?}");
        assert!(a.diagnostics().contains("If-None-Exist"), "{a:?}");
    }
}

#[tokio::test]
async fn if_none_exist_never_reveals_what_the_caller_cannot_read() {
    let c = ctx().await;
    let admin = c.person("admin", Role::Admin).await;
    let doc = c.person("doc", Role::Clinician).await;
    // A patient out of the doctor's reach, with an identifier and an Observation.
    let hidden = with_identifier(patient("Hidden"), "urn:mrn", "MRN-HIDDEN");
    let (hidden_pid, _) = c.create(&hidden).await;
    let hidden_obs = with_identifier(observation(&hidden_pid), "urn:obs", "OBS-1");
    c.create(&hidden_obs).await;
    // A patient in the doctor's care.
    let (cared, _) = c.create(&patient("Cared")).await;
    c.grant(&admin, "doc", &cared, &[]).await;

    // A new Patient whose condition matches only the hidden one: created (201), exactly like
    // one whose condition matches nothing; the answer holds the doctor's own new patient.
    let a = c
        .create_if_none(&doc, &hidden, "identifier=urn:mrn|MRN-HIDDEN")
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{a:?}");
    assert_ne!(a.json()["id"], hidden_pid.as_str());
    let b = c
        .create_if_none(&doc, &patient("Fresh"), "identifier=urn:mrn|MRN-NOBODY")
        .await;
    assert_eq!(b.status, StatusCode::CREATED, "{b:?}");
    // Now the doctor's own match exists: that one is returned (the hidden one is not counted,
    // so this is not 412).
    let again = c
        .create_if_none(&doc, &hidden, "identifier=urn:mrn|MRN-HIDDEN")
        .await;
    assert_eq!(again.status, StatusCode::OK, "{again:?}");
    assert_eq!(again.json()["id"], a.json()["id"]);

    // An Observation in the cared patient's compartment whose condition matches only the
    // hidden patient's: created, not returned.
    let mine = with_identifier(observation(&cared), "urn:obs", "OBS-1");
    let a = c
        .create_if_none(&doc, &mine, "identifier=urn:obs|OBS-1")
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{a:?}");
    assert_eq!(
        a.json()["subject"]["reference"],
        format!("Patient/{cared}").as_str()
    );
    // The system app sees both: two matches.
    c.create_if_none(&c.token, &mine, "identifier=urn:obs|OBS-1")
        .await
        .assert_outcome(StatusCode::PRECONDITION_FAILED, "multiple-matches");

    // A create the caller may not make is refused whatever the condition finds: the same
    // 403 for a match in the hidden compartment, a match nowhere, and no condition.
    let refused = c
        .create_if_none(&doc, &hidden_obs, "identifier=urn:obs|OBS-1")
        .await;
    refused.assert_denied("no-permit");
    let nothing = c
        .create_if_none(&doc, &hidden_obs, "identifier=urn:obs|NONE")
        .await;
    nothing.assert_denied("no-permit");
    assert_eq!(refused.diagnostics(), nothing.diagnostics());
}

#[tokio::test]
async fn a_patient_account_learns_nothing_from_conditional_creates() {
    let c = ctx().await;
    let admin = c.person("admin", Role::Admin).await;
    let (own, _) = c.create(&patient("Own")).await;
    let (other, _) = c.create(&patient("Other")).await;
    c.create(&with_identifier(observation(&other), "urn:obs", "THEIRS"))
        .await;
    c.create(&with_identifier(observation(&own), "urn:obs", "MINE"))
        .await;
    c.user("pat", Role::Patient).await;
    let a = c
        .post_json(
            Some(&admin),
            "/admin/users/pat/link-patient",
            &json!({ "patient": own }),
            "admin",
        )
        .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT, "{a:?}");
    let pat = c.session("pat").await;
    // A patient writes no Observation: 403 whether the condition matches another patient's,
    // their own or nothing; never 200 with a resource.
    let mut answers = Vec::new();
    for condition in [
        "identifier=urn:obs|THEIRS",
        "identifier=urn:obs|MINE",
        "identifier=urn:obs|NONE",
    ] {
        let a = c.create_if_none(&pat, &observation(&own), condition).await;
        a.assert_denied("no-permit");
        answers.push(a.diagnostics());
    }
    answers.dedup();
    assert_eq!(answers.len(), 1, "{answers:?}");
    // A transaction's conditional create that matches another patient's Observation: the
    // entry becomes a read, refused like any read of it.
    let bundle = transaction(json!([{
        "request": {"method": "POST", "url": "Observation",
                    "ifNoneExist": "identifier=urn:obs|THEIRS"},
        "resource": observation(&own),
    }]));
    let a = c.json_as(&pat, Method::POST, "/fhir", &bundle).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{a:?}");
    assert!(!String::from_utf8_lossy(&a.body).contains(&other), "{a:?}");
}

#[tokio::test]
async fn transactions_resolve_if_none_exist_and_conditional_references() {
    let c = ctx().await;
    let org_ref = format!("Organization?identifier={SYNTHEA}|hosp-1");
    let bundle = transaction(json!([
        {"fullUrl": "urn:uuid:7f1c1a7e-0000-4000-8000-000000000001",
         "request": {"method": "POST", "url": "Organization",
                     "ifNoneExist": format!("identifier={SYNTHEA}|hosp-1")},
         "resource": org("hosp-1")},
        {"request": {"method": "POST", "url": "Location",
                     "ifNoneExist": format!("identifier={SYNTHEA}|loc-1")},
         "resource": with_identifier(location(&org_ref), SYNTHEA, "loc-1")},
        {"request": {"method": "POST", "url": "PractitionerRole"},
         "resource": {"resourceType": "PractitionerRole",
                      "organization": {"reference": "urn:uuid:7f1c1a7e-0000-4000-8000-000000000001"},
                      "location": [{"reference": format!("Location?identifier={SYNTHEA}|loc-1")}]}},
    ]));
    let first = c.json(Method::POST, "/fhir", &bundle).await;
    assert_eq!(first.status, StatusCode::OK, "{first:?}");
    let entries = first.json()["entry"].as_array().unwrap().clone();
    let statuses: Vec<&str> = entries
        .iter()
        .map(|e| e["response"]["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["201 Created", "201 Created", "201 Created"]);
    let org_id = entries[0]["resource"]["id"].as_str().unwrap().to_owned();
    let loc_id = entries[1]["resource"]["id"].as_str().unwrap().to_owned();
    // The conditional reference found the Organization created by the same transaction.
    assert_eq!(
        entries[1]["resource"]["managingOrganization"]["reference"],
        format!("Organization/{org_id}").as_str()
    );
    assert_eq!(
        entries[2]["resource"]["location"][0]["reference"],
        format!("Location/{loc_id}").as_str()
    );

    // Again: the conditional creates return the matches (200) and references lead to them.
    let second = c.json(Method::POST, "/fhir", &bundle).await;
    assert_eq!(second.status, StatusCode::OK, "{second:?}");
    let entries = second.json()["entry"].as_array().unwrap().clone();
    assert_eq!(entries[0]["response"]["status"], "200 OK");
    assert_eq!(entries[0]["resource"]["id"], org_id.as_str());
    assert_eq!(entries[1]["response"]["status"], "200 OK");
    assert_eq!(entries[2]["response"]["status"], "201 Created");
    assert_eq!(
        entries[2]["resource"]["organization"]["reference"],
        format!("Organization/{org_id}").as_str()
    );
    assert_eq!(
        entries[2]["resource"]["location"][0]["reference"],
        format!("Location/{loc_id}").as_str()
    );
    assert_eq!(total(&c.get("/fhir/Organization").await), 1);
    assert_eq!(total(&c.get("/fhir/Location").await), 1);

    // No match: 422 naming the entry and the element, not the value; nothing written.
    let none = transaction(json!([
        {"request": {"method": "POST", "url": "Organization"}, "resource": org("hosp-2")},
        {"request": {"method": "POST", "url": "Location"},
         "resource": location(&format!("Organization?identifier={SYNTHEA}|nowhere"))},
    ]));
    let a = c.json(Method::POST, "/fhir", &none).await;
    let v = a.assert_outcome(StatusCode::UNPROCESSABLE_ENTITY, "not-found");
    assert_eq!(
        v["issue"][0]["expression"][0], "Bundle.entry[1].resource.managingOrganization",
        "{a:?}"
    );
    assert!(!a.diagnostics().contains("nowhere"), "{a:?}");
    assert_eq!(total(&c.get("/fhir/Organization").await), 1);
    // Two matches (one stored, one in the transaction): 412.
    let twice = transaction(json!([
        {"request": {"method": "POST", "url": "Organization"}, "resource": org("hosp-1")},
        {"request": {"method": "POST", "url": "Location"}, "resource": location(&org_ref)},
    ]));
    let a = c.json(Method::POST, "/fhir", &twice).await;
    let v = a.assert_outcome(StatusCode::PRECONDITION_FAILED, "multiple-matches");
    assert_eq!(
        v["issue"][0]["expression"][0],
        "Bundle.entry[1].resource.managingOrganization"
    );
    // An ifNoneExist with two matches: 412 naming the entry.
    c.create(&org("hosp-3")).await;
    c.create(&org("hosp-3")).await;
    let dup = transaction(json!([
        {"request": {"method": "POST", "url": "Organization",
                     "ifNoneExist": format!("identifier={SYNTHEA}|hosp-3")},
         "resource": org("hosp-3")},
    ]));
    let a = c.json(Method::POST, "/fhir", &dup).await;
    let v = a.assert_outcome(StatusCode::PRECONDITION_FAILED, "multiple-matches");
    assert_eq!(
        v["issue"][0]["expression"][0],
        "Bundle.entry[0].request.ifNoneExist"
    );
    // In a batch, each entry answers on its own.
    let mut batch = none.clone();
    batch["type"] = json!("batch");
    let a = c.json(Method::POST, "/fhir", &batch).await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    let entries = a.json()["entry"].as_array().unwrap().clone();
    assert_eq!(entries[0]["response"]["status"], "201 Created");
    assert!(
        entries[1]["response"]["status"]
            .as_str()
            .unwrap()
            .starts_with("422"),
        "{a:?}"
    );
}

#[tokio::test]
async fn conditional_references_never_pick_what_the_writer_cannot_read() {
    let c = ctx().await;
    let admin = c.person("admin", Role::Admin).await;
    let doc = c.person("doc", Role::Clinician).await;
    let (hidden, _) = c
        .create(&with_identifier(patient("Hidden"), "urn:mrn", "MRN-H"))
        .await;
    let (cared, _) = c.create(&patient("Cared")).await;
    c.grant(&admin, "doc", &cared, &[]).await;
    let (hidden_obs, _) = c
        .create(&with_identifier(observation(&hidden), "urn:obs", "SHARED"))
        .await;
    let (cared_obs, _) = c
        .create(&with_identifier(observation(&cared), "urn:obs", "SHARED"))
        .await;
    c.create(&with_identifier(observation(&hidden), "urn:obs", "ONLY-H"))
        .await;

    let note = |focus: &str| {
        let mut o = observation(&cared);
        o["focus"] = json!([{"reference": focus}]);
        o
    };
    let post = |resource: Value| {
        transaction(json!([{"request": {"method": "POST", "url": "Observation"},
                            "resource": resource}]))
    };
    // Two match, one readable: resolved to the readable one (not 412, which would tell of
    // the other).
    let a = c
        .json_as(
            &doc,
            Method::POST,
            "/fhir",
            &post(note("Observation?identifier=urn:obs|SHARED")),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    let written = &a.json()["entry"][0]["resource"];
    assert_eq!(
        written["focus"][0]["reference"],
        format!("Observation/{cared_obs}").as_str()
    );
    assert!(!String::from_utf8_lossy(&a.body).contains(&hidden_obs));
    // Only an unreadable match: the same 422 as no match at all.
    let only_hidden = c
        .json_as(
            &doc,
            Method::POST,
            "/fhir",
            &post(note("Observation?identifier=urn:obs|ONLY-H")),
        )
        .await;
    only_hidden.assert_outcome(StatusCode::UNPROCESSABLE_ENTITY, "not-found");
    let nowhere = c
        .json_as(
            &doc,
            Method::POST,
            "/fhir",
            &post(note("Observation?identifier=urn:obs|NOWHERE")),
        )
        .await;
    nowhere.assert_outcome(StatusCode::UNPROCESSABLE_ENTITY, "not-found");
    assert_eq!(only_hidden.diagnostics(), nowhere.diagnostics());
    // A subject named by the hidden patient's identifier: not found for the doctor either.
    let mut o = observation(&cared);
    o["subject"] = json!({"reference": "Patient?identifier=urn:mrn|MRN-H"});
    let a = c.json_as(&doc, Method::POST, "/fhir", &post(o)).await;
    a.assert_outcome(StatusCode::UNPROCESSABLE_ENTITY, "not-found");
}

#[tokio::test]
async fn conditional_update_and_delete_act_on_one_readable_match() {
    let c = ctx().await;
    let uri = format!("/fhir/Organization?identifier={SYNTHEA}|u-1");
    // No match, no id: created.
    let a = c.json(Method::PUT, &uri, &org("u-1")).await;
    assert_eq!(a.status, StatusCode::CREATED, "{a:?}");
    let id = a.json()["id"].as_str().unwrap().to_owned();
    // One match: updated in place.
    let mut renamed = org("u-1");
    renamed["name"] = json!("Renamed Hospital");
    let a = c.json(Method::PUT, &uri, &renamed).await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    assert_eq!(a.json()["id"], id.as_str());
    assert_eq!(a.header("etag"), Some("W/\"2\""));
    // A body id other than the match's: 400.
    renamed["id"] = json!("someone-else");
    let a = c.json(Method::PUT, &uri, &renamed).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{a:?}");
    // No search: 400; two matches: 412.
    let a = c.json(Method::PUT, "/fhir/Organization", &org("u-1")).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{a:?}");
    c.create(&org("u-1")).await;
    c.json(Method::PUT, &uri, &org("u-1"))
        .await
        .assert_outcome(StatusCode::PRECONDITION_FAILED, "multiple-matches");
    let del = |uri: String| c.send(c.req(Method::DELETE, &uri).body(Body::empty()).unwrap());
    del(uri.clone())
        .await
        .assert_outcome(StatusCode::PRECONDITION_FAILED, "multiple-matches");
    // One match: deleted; none: 204, nothing done.
    let one = format!("/fhir/Organization?_id={id}");
    assert_eq!(del(one.clone()).await.status, StatusCode::NO_CONTENT);
    assert_eq!(
        c.get(&format!("/fhir/Organization/{id}")).await.status,
        StatusCode::GONE
    );
    assert_eq!(del(one).await.status, StatusCode::NO_CONTENT);
    assert_eq!(total(&c.get(&uri).await), 1);
}

#[tokio::test]
async fn conditional_update_and_delete_never_touch_what_the_caller_cannot_read() {
    let c = ctx().await;
    let admin = c.person("admin", Role::Admin).await;
    let doc = c.person("doc", Role::Clinician).await;
    let (hidden, _) = c.create(&patient("Hidden")).await;
    let (cared, _) = c.create(&patient("Cared")).await;
    c.grant(&admin, "doc", &cared, &[]).await;
    let (hidden_obs, _) = c
        .create(&with_identifier(observation(&hidden), "urn:obs", "H-1"))
        .await;
    let uri = "/fhir/Observation?identifier=urn:obs|H-1";
    // The only match is out of reach: a new Observation in the doctor's patient, the hidden
    // one untouched.
    let mine = with_identifier(observation(&cared), "urn:obs", "H-1");
    let a = c.json_as(&doc, Method::PUT, uri, &mine).await;
    assert_eq!(a.status, StatusCode::CREATED, "{a:?}");
    assert_ne!(a.json()["id"], hidden_obs.as_str());
    let stored = c.get(&format!("/fhir/Observation/{hidden_obs}")).await;
    assert_eq!(stored.header("etag"), Some("W/\"1\""), "{stored:?}");
    // Naming the hidden one by id in the body: decided like a PUT of it, refused.
    let mut theirs = mine.clone();
    theirs["id"] = json!(hidden_obs);
    let a = c
        .json_as(
            &doc,
            Method::PUT,
            "/fhir/Observation?identifier=urn:obs|NONE",
            &theirs,
        )
        .await;
    a.assert_denied("no-permit");
    // A conditional delete by the hidden patient's identifier: only the doctor's own match.
    let a = c
        .send(
            c.req_as(&doc, Method::DELETE, uri)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT, "{a:?}");
    let stored = c.get(&format!("/fhir/Observation/{hidden_obs}")).await;
    assert_eq!(stored.status, StatusCode::OK, "{stored:?}");
    assert_eq!(total(&c.get(uri).await), 1);
}

#[tokio::test]
async fn creates_and_updates_resolve_conditional_references_and_metadata_says_so() {
    let c = ctx().await;
    let (org_id, _) = c.create(&org("single-1")).await;
    let (loc_id, created) = c
        .create(&location(&format!(
            "Organization?identifier={SYNTHEA}|single-1"
        )))
        .await;
    assert_eq!(
        created.json()["managingOrganization"]["reference"],
        format!("Organization/{org_id}").as_str()
    );
    let mut moved = location(&format!("Organization?identifier={SYNTHEA}|nowhere"));
    moved["id"] = json!(loc_id);
    let a = c
        .json(Method::PUT, &format!("/fhir/Location/{loc_id}"), &moved)
        .await;
    let v = a.assert_outcome(StatusCode::UNPROCESSABLE_ENTITY, "not-found");
    assert_eq!(
        v["issue"][0]["expression"][0],
        "Location.managingOrganization"
    );
    let meta = c.get("/fhir/metadata").await.json();
    let observation = meta["rest"][0]["resource"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "Observation")
        .unwrap()
        .clone();
    assert_eq!(observation["conditionalCreate"], true);
    assert_eq!(observation["conditionalUpdate"], true);
    assert_eq!(observation["conditionalDelete"], "single");
}

#[tokio::test]
async fn raw_synthea_bundles_of_the_newer_shape_post_as_they_are() {
    let c = ctx_with(100, 1024 * 1024).await;
    let mut files = crate::synthea::synthea_run(
        &mut crate::synth::Rng::new(5),
        crate::synthea::Shape::Newer,
        2,
    );
    // Apps write no CareTeam (it grants care relationships) unless a policy file says so:
    // left out here, with the CarePlan's reference to it; `phivault import` stores them.
    for (_, bundle) in &mut files[2..] {
        let entries = bundle["entry"].as_array_mut().unwrap();
        let teams: Vec<Value> = entries
            .iter()
            .filter(|e| e["resource"]["resourceType"] == "CareTeam")
            .map(|e| json!({"reference": e["fullUrl"]}))
            .collect();
        entries.retain(|e| e["resource"]["resourceType"] != "CareTeam");
        for e in entries.iter_mut() {
            if let Some(resource) = e["resource"].as_object_mut() {
                resource.remove("careTeam");
            }
            if let Some(targets) = e
                .pointer_mut("/resource/target")
                .and_then(Value::as_array_mut)
            {
                targets.retain(|t| !teams.contains(t));
            }
        }
    }
    for (name, bundle) in &files {
        let a = c.json(Method::POST, "/fhir", bundle).await;
        assert_eq!(a.status, StatusCode::OK, "{name}: {a:?}");
    }
    let bundles: Vec<&Value> = files.iter().map(|(_, b)| b).collect();
    for (rtype, n) in crate::synthea::counts(&bundles) {
        assert_eq!(
            total(&c.get(&format!("/fhir/{rtype}")).await),
            n as u64,
            "{rtype}"
        );
    }
    // The shared Bundles again: every conditional create finds its match.
    for (name, bundle) in &files[..2] {
        let a = c.json(Method::POST, "/fhir", bundle).await;
        assert_eq!(a.status, StatusCode::OK, "{name}: {a:?}");
        for entry in a.json()["entry"].as_array().unwrap() {
            assert_eq!(entry["response"]["status"], "200 OK", "{name}");
        }
    }
    assert_eq!(total(&c.get("/fhir/Organization").await), 2);
}

/// `POST Type?search` (fhirpy's `get_or_create`) is a conditional create: the query string is
/// its condition, never silently ignored; a condition given twice is refused.
#[tokio::test]
async fn a_create_query_string_is_its_condition() {
    let c = ctx().await;
    let post = |uri: String, condition: Option<&str>| {
        let mut req = c
            .req_as(&c.token, Method::POST, &uri)
            .header(header::CONTENT_TYPE, "application/fhir+json");
        if let Some(condition) = condition {
            req = req.header("if-none-exist", condition);
        }
        req.body(Body::from(org("org-q").to_string())).unwrap()
    };
    let uri = format!("/fhir/Organization?identifier={SYNTHEA}|org-q");
    let first = c.send(post(uri.clone(), None)).await;
    assert_eq!(first.status, StatusCode::CREATED, "{first:?}");
    let second = c.send(post(uri.clone(), None)).await;
    assert_eq!(second.status, StatusCode::OK, "{second:?}");
    assert_eq!(second.json()["id"], first.json()["id"]);
    let found = c
        .get(&format!("/fhir/Organization?identifier={SYNTHEA}|org-q"))
        .await;
    assert_eq!(found.json()["total"], 1, "no duplicate");
    // `_format` alone is no condition: a plain create.
    let plain = c
        .send(post("/fhir/Organization?_format=json".to_owned(), None))
        .await;
    assert_eq!(plain.status, StatusCode::CREATED, "{plain:?}");
    let twice = c
        .send(post(uri, Some(&format!("identifier={SYNTHEA}|org-q"))))
        .await;
    assert_eq!(twice.status, StatusCode::BAD_REQUEST, "{twice:?}");
}
