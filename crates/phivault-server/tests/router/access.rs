//! Who reads what: care relationships, a patient's own record, sensitivity labels, break-the-
//! glass, searches that never count what may not be read, Bundles decided entry by entry,
//! compartments of resources that name their patient indirectly.

use super::*;

#[tokio::test]
async fn clinicians_need_a_care_relationship() {
    let c = ctx().await;
    let admin = c.person("admin", Role::Admin).await;
    let doc = c.person("doc", Role::Clinician).await;
    let (pid, _) = c.create(&patient("Cared")).await;
    let (oid, _) = c.create(&observation(&pid)).await;

    // Not on the care team: refused, and a resource that does not exist answers the same.
    let refused = c.get_as(&doc, &format!("/fhir/Patient/{pid}")).await;
    refused.assert_denied("no-permit");
    let missing = c.get_as(&doc, "/fhir/Patient/never-was").await;
    missing.assert_denied("no-permit");
    assert_eq!(refused.diagnostics(), missing.diagnostics());
    c.get_as(&doc, &format!("/fhir/Observation/{oid}"))
        .await
        .assert_denied("no-permit");
    c.get_as(&doc, "/fhir/Observation/never-was")
        .await
        .assert_denied("no-permit");
    // Changing the id in the URL of a write: refused the same way.
    let a = c
        .json_as(&doc, Method::PUT, &format!("/fhir/Observation/{oid}"), &{
            let mut o = observation(&pid);
            o["id"] = json!(oid);
            o
        })
        .await;
    a.assert_denied("no-permit");
    let a = c
        .send(
            c.req_as(&doc, Method::DELETE, &format!("/fhir/Observation/{oid}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    a.assert_denied("no-permit");
    assert_eq!(total(&c.get_as(&doc, "/fhir/Patient").await), 0);

    // Granted through the admin API: 200, and 404 only now for what does not exist.
    c.grant(&admin, "doc", &pid, &[]).await;
    let a = c.get_as(&doc, &format!("/fhir/Patient/{pid}")).await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    assert_eq!(
        c.get_as(&doc, &format!("/fhir/Observation/{oid}"))
            .await
            .status,
        StatusCode::OK
    );
    c.get_as(&doc, &format!("/fhir/Observation/{oid}/_history/1"))
        .await
        .status
        .is_success()
        .then_some(())
        .expect("vread");
    assert_eq!(total(&c.get_as(&doc, "/fhir/Patient").await), 1);
    // Purpose of use is part of the decision.
    let a = c
        .send(
            with_purpose(
                c.req_as(&doc, Method::GET, &format!("/fhir/Patient/{pid}")),
                "HRESCH",
                None,
            )
            .body(Body::empty())
            .unwrap(),
        )
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{a:?}");
    let a = c
        .send(
            with_purpose(
                c.req_as(&doc, Method::GET, &format!("/fhir/Patient/{pid}")),
                "NOPE",
                None,
            )
            .body(Body::empty())
            .unwrap(),
        )
        .await;
    a.assert_outcome(StatusCode::BAD_REQUEST, "value");
    assert!(a.diagnostics().contains("X-Purpose-Of-Use"), "{a:?}");
    assert!(!a.diagnostics().contains("NOPE"), "{a:?}");

    // A clinician creating a Patient is given care of it.
    let (new_pid, _) = c.create_as(&doc, &patient("Newborn")).await;
    let a = c.get_as(&doc, &format!("/fhir/Patient/{new_pid}")).await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    c.create_as(&doc, &observation(&new_pid)).await;
}

#[tokio::test]
async fn patients_read_their_own_record_only() {
    let c = ctx().await;
    let admin = c.person("admin", Role::Admin).await;
    let (own, _) = c.create(&patient("Own")).await;
    let (other, _) = c.create(&patient("Other")).await;
    let (own_obs, _) = c.create(&observation(&own)).await;
    let (other_obs, _) = c.create(&observation(&other)).await;
    c.create(&observation(&other)).await;
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

    assert_eq!(
        c.get_as(&pat, &format!("/fhir/Patient/{own}")).await.status,
        StatusCode::OK
    );
    assert_eq!(
        c.get_as(&pat, &format!("/fhir/Observation/{own_obs}"))
            .await
            .status,
        StatusCode::OK
    );
    // Changing the id in the URL: refused, exactly as for an id that does not exist.
    let refused = c.get_as(&pat, &format!("/fhir/Patient/{other}")).await;
    refused.assert_denied("no-permit");
    let missing = c.get_as(&pat, "/fhir/Patient/does-not-exist").await;
    missing.assert_denied("no-permit");
    assert_eq!(refused.diagnostics(), missing.diagnostics());
    c.get_as(&pat, &format!("/fhir/Observation/{other_obs}"))
        .await
        .assert_denied("no-permit");
    c.get_as(&pat, &format!("/fhir/Observation/{other_obs}/_history"))
        .await
        .assert_denied("no-permit");
    // Searches count their own only.
    assert_eq!(total(&c.get_as(&pat, "/fhir/Observation").await), 1);
    assert_eq!(total(&c.get_as(&pat, "/fhir/Patient").await), 1);
    assert_eq!(
        total(
            &c.get_as(&pat, &format!("/fhir/Observation?patient={other}"))
                .await
        ),
        0
    );
    // A patient does not write clinical data.
    let a = c
        .json_as(&pat, Method::POST, "/fhir/Observation", &observation(&own))
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{a:?}");
}

#[tokio::test]
async fn labelled_resources_need_a_grant() {
    let c = ctx().await;
    let admin = c.person("admin", Role::Admin).await;
    let psych = c.person("psych", Role::Clinician).await;
    let gp = c.person("gp", Role::Clinician).await;
    let stranger = c.person("stranger", Role::Clinician).await;
    let (pid, _) = c.create(&patient("Labelled")).await;
    c.create(&observation(&pid)).await;
    c.grant(&admin, "psych", &pid, &["PSY"]).await;
    c.grant(&admin, "gp", &pid, &[]).await;

    // Writing a labelled resource needs the grant too.
    let a = c
        .json_as(
            &gp,
            Method::POST,
            "/fhir/Observation",
            &psy_observation(&pid),
        )
        .await;
    a.assert_denied("label-not-granted");
    let (lid, _) = c.create_as(&psych, &psy_observation(&pid)).await;
    let uri = format!("/fhir/Observation/{lid}");

    assert_eq!(c.get_as(&psych, &uri).await.status, StatusCode::OK);
    // On the care team without the label: told so.
    c.get_as(&gp, &uri).await.assert_denied("label-not-granted");
    // Out of reach: the label is not revealed, nor the existence.
    c.get_as(&stranger, &uri).await.assert_denied("no-permit");
    // Apps hold no label grants.
    c.get(&uri).await.assert_denied("label-not-granted");
    // Searches neither return nor count it, but do for who holds the grant.
    assert_eq!(total(&c.get_as(&psych, "/fhir/Observation").await), 2);
    assert_eq!(
        total(
            &c.get_as(&psych, &format!("/fhir/Observation?patient={pid}"))
                .await
        ),
        2
    );
    assert_eq!(total(&c.get_as(&gp, "/fhir/Observation").await), 1);
    assert_eq!(
        total(&c.get_as(&gp, "/fhir/Observation?_security=PSY").await),
        0
    );
    assert_eq!(total(&c.get("/fhir/Observation").await), 1);

    c.grant(&admin, "gp", &pid, &["PSY"]).await;
    assert_eq!(c.get_as(&gp, &uri).await.status, StatusCode::OK);

    // The patient's own record passes labels.
    c.user("pat", Role::Patient).await;
    c.state
        .accounts
        .link_patient("pat", &Id::parse(&pid).unwrap(), &NoAudit)
        .await
        .unwrap();
    let pat = c.session("pat").await;
    assert_eq!(c.get_as(&pat, &uri).await.status, StatusCode::OK);
    assert_eq!(total(&c.get_as(&pat, "/fhir/Observation").await), 2);
}

#[tokio::test]
async fn break_the_glass_is_recorded_and_listed() {
    let c = ctx().await;
    let admin = c.person("admin", Role::Admin).await;
    let doc = c.person("doc", Role::Clinician).await;
    let (pid, _) = c.create(&patient("Emergency")).await;
    c.create(&observation(&pid)).await;
    c.create(&observation(&pid)).await;
    let (other, _) = c.create(&patient("Unrelated")).await;
    c.create(&observation(&other)).await;
    let uri = format!("/fhir/Patient/{pid}");
    let get = |purpose: &str, reason: Option<&str>, uri: &str| {
        with_purpose(c.req_as(&doc, Method::GET, uri), purpose, reason)
            .body(Body::empty())
            .unwrap()
    };

    c.get_as(&doc, &uri).await.assert_denied("no-permit");
    // ETREAT alone is not a claim: refused as such.
    c.send(get("ETREAT", None, &uri))
        .await
        .assert_denied("break-glass-required");
    // A reason needs ETREAT; it has bounds.
    let a = c.send(get("TREAT", Some("unconscious in ED"), &uri)).await;
    a.assert_outcome(StatusCode::BAD_REQUEST, "value");
    let long = "x".repeat(501);
    let a = c.send(get("ETREAT", Some(&long), &uri)).await;
    a.assert_outcome(StatusCode::BAD_REQUEST, "value");

    // The claim: allowed, recorded, flagged.
    let a = c.send(get("ETREAT", Some("unconscious in ED"), &uri)).await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    assert_eq!(a.header("x-break-glass"), Some("recorded"));
    let a = c.get_as(&admin, "/admin/break-glass").await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    let records = a.json()["records"].as_array().unwrap().clone();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["patient"], pid.as_str());
    assert_eq!(records[0]["reason"], "unconscious in ED");
    let window =
        records[0]["expires_at"].as_i64().unwrap() - records[0]["started_at"].as_i64().unwrap();
    assert!((3590..=3600).contains(&window), "one hour: {window}");
    // The clinician cannot read the review list.
    c.get_as(&doc, "/admin/break-glass")
        .await
        .assert_denied("no-permit");

    // While it lasts, ETREAT reads of that patient use the recorded claim.
    let a = c.send(get("ETREAT", None, &uri)).await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    let a = c.send(get("ETREAT", None, "/fhir/Observation")).await;
    assert_eq!(total(&a), 2, "only the claimed patient's");
    // Not for another purpose, not for another patient, never for writes.
    c.get_as(&doc, &uri).await.assert_denied("no-permit");
    c.send(get("ETREAT", None, &format!("/fhir/Patient/{other}")))
        .await
        .assert_denied("break-glass-required");
    let a = c
        .send(
            with_purpose(
                c.req_as(&doc, Method::POST, "/fhir/Observation"),
                "ETREAT",
                Some("still unconscious"),
            )
            .header(header::CONTENT_TYPE, "application/fhir+json")
            .body(Body::from(observation(&pid).to_string()))
            .unwrap(),
        )
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{a:?}");
    // A claim for a resource that does not exist records nothing.
    let a = c
        .send(get("ETREAT", Some("looking"), "/fhir/Patient/never-was"))
        .await;
    a.assert_outcome(StatusCode::NOT_FOUND, "not-found");
    let a = c.get_as(&admin, "/admin/break-glass").await;
    assert_eq!(a.json()["records"].as_array().unwrap().len(), 1);

    // A search naming one patient, as the first access: the claim is for that patient.
    let q = format!("/fhir/Observation?patient={other}");
    assert_eq!(total(&c.send(get("ETREAT", None, &q)).await), 0);
    let a = c.send(get("ETREAT", Some("found collapsed"), &q)).await;
    assert_eq!(total(&a), 1);
    assert_eq!(a.header("x-break-glass"), Some("recorded"));
    let a = c.get_as(&admin, "/admin/break-glass").await;
    assert_eq!(a.json()["records"].as_array().unwrap().len(), 2);
    // A search across patients claims nothing by itself.
    let a = c
        .send(get("ETREAT", Some("looking"), "/fhir/Patient"))
        .await;
    assert_eq!(total(&a), 2, "the two claimed patients");
    assert_eq!(a.header("x-break-glass"), None);
}

#[tokio::test]
async fn searches_never_count_other_patients() {
    let c = ctx().await;
    let admin = c.person("admin", Role::Admin).await;
    let doc = c.person("doc", Role::Clinician).await;
    let (mine, _) = c.create(&patient("Smith")).await;
    let (theirs, _) = c.create(&patient("Smith")).await;
    for _ in 0..2 {
        c.create(&observation(&mine)).await;
    }
    for _ in 0..3 {
        c.create(&observation(&theirs)).await;
    }
    // A resource of a compartment type naming no patient is not stored at all (it would be
    // in no patient's compartment).
    let a = c
        .json(
            Method::POST,
            "/fhir/Observation",
            &json!({ "resourceType": "Observation", "status": "final",
                "code": { "coding": [{ "system": "http://loinc.org", "code": "8867-4" }] } }),
        )
        .await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{a:?}");
    c.create(&json!({ "resourceType": "Practitioner", "name": [{ "family": "Who" }] }))
        .await;
    c.grant(&admin, "doc", &mine, &[]).await;

    assert_eq!(total(&c.get("/fhir/Observation").await), 5);
    assert_eq!(total(&c.get_as(&doc, "/fhir/Observation").await), 2);
    assert_eq!(
        total(&c.get_as(&doc, "/fhir/Patient?family=smith").await),
        1
    );
    assert_eq!(
        total(
            &c.get_as(&doc, &format!("/fhir/Observation?patient={theirs}"))
                .await
        ),
        0
    );
    assert_eq!(
        total(&c.get_as(&doc, &format!("/fhir/Patient?_id={theirs}")).await),
        0
    );
    let a = c.get_as(&doc, "/fhir/Observation?_count=1").await;
    assert_eq!(a.json()["entry"].as_array().unwrap().len(), 1);
    assert_eq!(total(&a), 2);
    // Directory resources are shared.
    assert_eq!(total(&c.get_as(&doc, "/fhir/Practitioner").await), 1);
    let a = c
        .send(
            c.req_as(&doc, Method::POST, "/fhir/Observation/_search")
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from(format!("patient={theirs}")))
                .unwrap(),
        )
        .await;
    assert_eq!(total(&a), 0);

    // _revinclude adds only the Observations the clinician may read, and counts none.
    let a = c
        .get_as(
            &doc,
            "/fhir/Patient?family=smith&_revinclude=Observation:patient",
        )
        .await;
    assert_eq!(total(&a), 1);
    let included: Vec<Value> = a.json()["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["search"]["mode"] == "include")
        .map(|e| e["resource"]["subject"]["reference"].clone())
        .collect();
    assert_eq!(included.len(), 2, "{included:?}");
    assert!(
        included
            .iter()
            .all(|r| *r == json!(format!("Patient/{mine}"))),
        "{included:?}"
    );
    // One level only, lenient or not.
    for lenient in [false, true] {
        let mut req = c.req_as(
            &doc,
            Method::GET,
            "/fhir/Patient?_include:iterate=Observation:patient",
        );
        if lenient {
            req = req.header("prefer", "handling=lenient");
        }
        let a = c.send(req.body(Body::empty()).unwrap()).await;
        a.assert_outcome(StatusCode::BAD_REQUEST, "invalid");
    }
}

#[tokio::test]
async fn bundles_are_decided_entry_by_entry() {
    let c = ctx().await;
    let admin = c.person("admin", Role::Admin).await;
    let doc = c.person("doc", Role::Clinician).await;
    let (mine, _) = c.create(&patient("Mine")).await;
    let (theirs, _) = c.create(&patient("Theirs")).await;
    let (their_obs, _) = c.create(&observation(&theirs)).await;
    c.grant(&admin, "doc", &mine, &[]).await;
    let post =
        |o: Value| json!({ "resource": o, "request": { "method": "POST", "url": "Observation" } });

    // A transaction reaching another patient: refused whole, naming the entry; nothing written.
    let bundle = json!({ "resourceType": "Bundle", "type": "transaction", "entry": [
        post(observation(&mine)),
        post(observation(&theirs)),
    ]});
    let a = c.json_as(&doc, Method::POST, "/fhir", &bundle).await;
    a.assert_outcome(StatusCode::FORBIDDEN, "forbidden");
    assert!(a.diagnostics().contains("Bundle.entry[1]"), "{a:?}");
    assert_eq!(
        total(&c.get(&format!("/fhir/Observation?patient={mine}")).await),
        0
    );
    // Reading, deleting or searching another patient inside a transaction: the same.
    for entry in [
        json!({ "request": { "method": "GET", "url": format!("Observation/{their_obs}") } }),
        json!({ "request": { "method": "GET", "url": format!("Observation/{their_obs}/_history/1") } }),
        json!({ "request": { "method": "DELETE", "url": format!("Observation/{their_obs}") } }),
        json!({ "request": { "method": "GET", "url": "Observation/never-was" } }),
    ] {
        let bundle = json!({ "resourceType": "Bundle", "type": "transaction", "entry": [
            post(observation(&mine)),
            entry,
        ]});
        let a = c.json_as(&doc, Method::POST, "/fhir", &bundle).await;
        a.assert_outcome(StatusCode::FORBIDDEN, "forbidden");
        assert!(a.diagnostics().contains("Bundle.entry[1]"), "{a:?}");
    }
    assert_eq!(
        total(&c.get(&format!("/fhir/Observation?patient={mine}")).await),
        0
    );
    assert_eq!(
        c.get(&format!("/fhir/Observation/{their_obs}"))
            .await
            .status,
        StatusCode::OK
    );
    // Moving a resource into a reachable compartment needs the right on the stored one too.
    let mut moved = observation(&mine);
    moved["id"] = json!(their_obs);
    let bundle = json!({ "resourceType": "Bundle", "type": "transaction", "entry": [
        { "resource": moved, "request": { "method": "PUT", "url": format!("Observation/{their_obs}") } },
    ]});
    c.json_as(&doc, Method::POST, "/fhir", &bundle)
        .await
        .assert_outcome(StatusCode::FORBIDDEN, "forbidden");

    // A batch: the refused entry answers 403, the others run.
    let bundle = json!({ "resourceType": "Bundle", "type": "batch", "entry": [
        post(observation(&mine)),
        post(observation(&theirs)),
        { "request": { "method": "GET", "url": "Observation" } },
    ]});
    let a = c.json_as(&doc, Method::POST, "/fhir", &bundle).await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    let b = a.json();
    assert_eq!(b["type"], "batch-response");
    assert!(
        b["entry"][0]["response"]["status"]
            .as_str()
            .unwrap()
            .starts_with("201"),
        "{b}"
    );
    assert!(
        b["entry"][1]["response"]["status"]
            .as_str()
            .unwrap()
            .starts_with("403"),
        "{b}"
    );
    assert_eq!(
        b["entry"][1]["response"]["outcome"]["resourceType"],
        "OperationOutcome"
    );
    // Searches inside a Bundle are scoped like any search.
    assert_eq!(b["entry"][2]["resource"]["total"], 1, "{b}");
    assert_eq!(
        total(&c.get(&format!("/fhir/Observation?patient={mine}")).await),
        1
    );
    assert_eq!(
        total(&c.get(&format!("/fhir/Observation?patient={theirs}")).await),
        1
    );

    // A transaction creating a patient and its data: the creator is given care of it.
    let bundle = json!({ "resourceType": "Bundle", "type": "transaction", "entry": [
        { "fullUrl": "urn:uuid:0d8f6c7e-5b0e-4b6e-9a52-4d5c1bb0a001",
          "resource": patient("Admitted"),
          "request": { "method": "POST", "url": "Patient" } },
        post(json!({
            "resourceType": "Observation", "status": "final",
            "code": { "coding": [{ "system": "http://loinc.org", "code": "8867-4" }] },
            "subject": { "reference": "urn:uuid:0d8f6c7e-5b0e-4b6e-9a52-4d5c1bb0a001" },
        })),
        { "request": { "method": "GET", "url": "Patient" } },
    ]});
    let a = c.json_as(&doc, Method::POST, "/fhir", &bundle).await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    let b = a.json();
    let new_pid = b["entry"][0]["resource"]["id"].as_str().unwrap().to_owned();
    let a = c.get_as(&doc, &format!("/fhir/Patient/{new_pid}")).await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    assert_eq!(
        total(
            &c.get_as(&doc, &format!("/fhir/Observation?patient={new_pid}"))
                .await
        ),
        1
    );
    // ... but a reference to an existing patient is not a new patient.
    let bundle = json!({ "resourceType": "Bundle", "type": "transaction", "entry": [
        { "fullUrl": "urn:uuid:0d8f6c7e-5b0e-4b6e-9a52-4d5c1bb0a002",
          "resource": patient("Decoy"),
          "request": { "method": "POST", "url": "Patient" } },
        post(observation(&theirs)),
    ]});
    c.json_as(&doc, Method::POST, "/fhir", &bundle)
        .await
        .assert_outcome(StatusCode::FORBIDDEN, "forbidden");

    // Admins run no Bundles.
    let bundle = json!({ "resourceType": "Bundle", "type": "batch", "entry": [
        { "request": { "method": "GET", "url": "Patient" } },
    ]});
    c.json_as(&admin, Method::POST, "/fhir", &bundle)
        .await
        .assert_denied("no-permit");
}

#[tokio::test]
async fn history_and_versions_of_another_patient_are_refused() {
    let c = ctx().await;
    let admin = c.person("admin", Role::Admin).await;
    let doc = c.person("doc", Role::Clinician).await;
    let (mine, _) = c.create(&patient("Mine")).await;
    let (theirs, _) = c.create(&patient("Theirs")).await;
    c.grant(&admin, "doc", &mine, &[]).await;
    let (their_obs, created) = c.create(&observation(&theirs)).await;
    let (my_obs, _) = c.create_as(&doc, &observation(&mine)).await;

    for uri in [
        format!("/fhir/Observation/{their_obs}/_history"),
        format!("/fhir/Observation/{their_obs}/_history/1"),
        format!("/fhir/Patient/{theirs}/_history"),
        "/fhir/Observation/never-was/_history".to_owned(),
        "/fhir/Observation/never-was/_history/1".to_owned(),
    ] {
        c.get_as(&doc, &uri).await.assert_denied("no-permit");
    }
    assert_eq!(
        c.get_as(&doc, &format!("/fhir/Observation/{my_obs}/_history"))
            .await
            .status,
        StatusCode::OK
    );

    // An Observation that once was another patient's: its history shows that version, so it
    // is refused even though the current version is reachable.
    let mut moved = created.json();
    moved["subject"] = json!({ "reference": format!("Patient/{mine}") });
    let a = c
        .json(
            Method::PUT,
            &format!("/fhir/Observation/{their_obs}"),
            &moved,
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    assert_eq!(
        c.get_as(&doc, &format!("/fhir/Observation/{their_obs}"))
            .await
            .status,
        StatusCode::OK
    );
    c.get_as(&doc, &format!("/fhir/Observation/{their_obs}/_history"))
        .await
        .assert_denied("no-permit");
    c.get_as(&doc, &format!("/fhir/Observation/{their_obs}/_history/1"))
        .await
        .assert_denied("no-permit");
    assert_eq!(
        c.get_as(&doc, &format!("/fhir/Observation/{their_obs}/_history/2"))
            .await
            .status,
        StatusCode::OK
    );
    // Moving it back out needs the right on the target compartment.
    let mut back = moved.clone();
    back["subject"] = json!({ "reference": format!("Patient/{theirs}") });
    c.json_as(
        &doc,
        Method::PUT,
        &format!("/fhir/Observation/{their_obs}"),
        &back,
    )
    .await
    .assert_denied("no-permit");

    // A deleted resource out of reach: refused, not "gone".
    let (gone, _) = c.create(&observation(&theirs)).await;
    let a = c
        .send(
            c.req(Method::DELETE, &format!("/fhir/Observation/{gone}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    c.get_as(&doc, &format!("/fhir/Observation/{gone}"))
        .await
        .assert_denied("no-permit");
    c.get(&format!("/fhir/Observation/{gone}"))
        .await
        .assert_outcome(StatusCode::GONE, "deleted");
}

#[tokio::test]
async fn admins_manage_accounts_but_see_no_clinical_data() {
    let c = ctx().await;
    let admin = c.person("admin", Role::Admin).await;
    let (pid, _) = c.create(&patient("Private")).await;

    c.get_as(&admin, &format!("/fhir/Patient/{pid}"))
        .await
        .assert_denied("no-permit");
    c.get_as(&admin, "/fhir/Patient")
        .await
        .assert_denied("no-permit");
    let a = c
        .json_as(&admin, Method::POST, "/fhir/Patient", &patient("X"))
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{a:?}");
    c.get_as(&admin, &format!("/fhir/Patient/{pid}/_history"))
        .await
        .assert_denied("no-permit");

    // Users and clients.
    let a = c
        .post_json(
            Some(&admin),
            "/admin/users",
            &json!({ "username": "newdoc", "password": PASSWORD, "role": "clinician" }),
            "admin",
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{a:?}");
    assert!(a.json()["user_id"].as_str().is_some_and(|s| !s.is_empty()));
    let a = c
        .post_json(
            Some(&admin),
            "/admin/users",
            &json!({ "username": "newdoc", "password": PASSWORD, "role": "clinician" }),
            "admin",
        )
        .await;
    a.assert_outcome(StatusCode::CONFLICT, "conflict");
    let a = c
        .post_json(
            Some(&admin),
            "/admin/users",
            &json!({ "username": "x", "password": PASSWORD, "role": "wizard" }),
            "admin",
        )
        .await;
    a.assert_outcome(StatusCode::BAD_REQUEST, "value");
    let a = c
        .post_json(
            Some(&admin),
            "/admin/users",
            &json!({ "username": "weak", "password": "password", "role": "patient" }),
            "admin",
        )
        .await;
    a.assert_outcome(StatusCode::BAD_REQUEST, "value");
    assert!(!a.diagnostics().contains("\"password\""), "{a:?}");
    let a = c
        .post_json(
            Some(&admin),
            "/admin/clients",
            &json!({ "name": "lab", "scope": "system/Observation.cruds" }),
            "admin",
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{a:?}");
    let v = a.json();
    let (id, secret) = (
        v["client_id"].as_str().unwrap().to_owned(),
        v["client_secret"].as_str().unwrap().to_owned(),
    );
    c.client_token(&id, &secret, None).await;
    let a = c
        .post_json(
            Some(&admin),
            "/admin/clients",
            &json!({ "name": "bad", "scope": "system/Nothing.rs" }),
            "admin",
        )
        .await;
    a.assert_outcome(StatusCode::BAD_REQUEST, "value");

    // Nobody else manages accounts.
    let doc = c.session("newdoc").await;
    let a = c
        .post_json(
            Some(&doc),
            "/admin/users",
            &json!({ "username": "mine", "password": PASSWORD, "role": "admin" }),
            "newdoc",
        )
        .await;
    a.assert_denied("no-permit");
    let a = c
        .post_json(
            Some(&c.token),
            "/admin/clients",
            &json!({ "name": "more", "scope": "system/*.cruds" }),
            "app",
        )
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{a:?}");
    let a = c
        .post_json(
            Some(&doc),
            "/admin/users/newdoc/grants",
            &json!({ "patient": pid }),
            "newdoc",
        )
        .await;
    a.assert_denied("no-permit");
}

#[tokio::test]
async fn searches_page_across_patients_with_different_label_grants() {
    let c = ctx().await;
    let admin = c.person("admin", Role::Admin).await;
    let doc = c.person("doc", Role::Clinician).await;
    let writer = c.person("writer", Role::Clinician).await;
    let mut expected = BTreeSet::new();
    let mut patients = Vec::new();
    for (family, grant) in [
        ("Plain", &[][..]),
        ("Psy", &["PSY"][..]),
        ("Hiv", &["HIV"][..]),
    ] {
        let (pid, _) = c.create(&patient(family)).await;
        c.grant(&admin, "doc", &pid, grant).await;
        c.grant(&admin, "writer", &pid, &["PSY", "HIV"]).await;
        for _ in 0..2 {
            expected.insert(c.create(&observation(&pid)).await.0);
        }
        let (psy, _) = c.create_as(&writer, &psy_observation(&pid)).await;
        if grant.contains(&"PSY") {
            expected.insert(psy);
        }
        patients.push(pid);
    }
    // Someone else's patient, for contrast.
    let (theirs, _) = c.create(&patient("Theirs")).await;
    c.create(&observation(&theirs)).await;

    let a = c.get_as(&doc, "/fhir/Observation").await;
    assert_eq!(total(&a), expected.len() as u64);
    // Paging one by one visits each readable Observation exactly once.
    let mut seen = BTreeSet::new();
    let mut uri = "/fhir/Observation?_count=2".to_owned();
    loop {
        let a = c.get_as(&doc, &uri).await;
        assert_eq!(total(&a), expected.len() as u64);
        let b = a.json();
        for e in b["entry"].as_array().unwrap() {
            assert!(
                seen.insert(e["resource"]["id"].as_str().unwrap().to_owned()),
                "{b}"
            );
        }
        match b["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == "next")
        {
            Some(next) => {
                uri = next["url"]
                    .as_str()
                    .unwrap()
                    .strip_prefix("https://127.0.0.1:8443")
                    .unwrap()
                    .to_owned();
            }
            None => break,
        }
    }
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn refusals_name_the_patient_and_break_the_glass_is_flagged() {
    let c = ctx().await;
    let doc = c.person("doc", Role::Clinician).await;
    let (pid, _) = c.create(&patient("Guarded")).await;
    let (oid, _) = c.create(&observation(&pid)).await;
    let before = audit_count(&c).await;
    c.get_as(&doc, &format!("/fhir/Observation/{oid}"))
        .await
        .assert_denied("no-permit");
    let a = c
        .send(
            c.req_as(&doc, Method::DELETE, &format!("/fhir/Observation/{oid}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{a:?}");
    // A resource that does not exist names no patient (not even the one it is decided as).
    c.get_as(&doc, "/fhir/Observation/never-was")
        .await
        .assert_denied("no-permit");
    let entries = audit_entries_after(&c, before).await;
    assert_eq!(entries.len(), 3, "{entries:?}");
    for (e, _) in &entries[..2] {
        assert_eq!(e.outcome, phivault_audit::Outcome::Denied, "{e:?}");
        assert_eq!(e.patient_id.as_deref(), Some(pid.as_str()), "{e:?}");
        assert_eq!(e.resource_id.as_deref(), Some(oid.as_str()), "{e:?}");
        assert_eq!(e.purpose.as_deref(), Some("TREAT"), "{e:?}");
        assert!(!e.break_glass, "{e:?}");
    }
    assert_eq!(entries[2].0.outcome, phivault_audit::Outcome::Denied);
    assert_eq!(entries[2].0.patient_id, None, "{:?}", entries[2].0);

    // Break-the-glass: the claimed read is flagged, with the effective purpose.
    let before = audit_count(&c).await;
    let a = c
        .send(
            with_purpose(
                c.req_as(&doc, Method::GET, &format!("/fhir/Observation/{oid}")),
                "ETREAT",
                Some("unresponsive"),
            )
            .body(Body::empty())
            .unwrap(),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    let entries = audit_entries_after(&c, before).await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    let (e, text) = &entries[0];
    assert!(e.break_glass, "{e:?}");
    assert_eq!(e.purpose.as_deref(), Some("ETREAT"));
    assert_eq!(e.patient_id.as_deref(), Some(pid.as_str()));
    assert!(!text.contains("unresponsive"), "no reason in the trail");
}

#[tokio::test]
async fn patients_named_by_url_or_condition_land_in_their_compartment() {
    let c = ctx().await;
    let admin = c.person("admin", Role::Admin).await;
    let (own, _) = c
        .create(&json!({
            "resourceType": "Patient",
            "name": [{ "family": "Linked" }],
            "identifier": [{ "system": "urn:mrn", "value": "MRN-LINKED-1" }],
        }))
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

    // This server's absolute URL (another case, the default port spelled out elsewhere) and a
    // conditional reference: both become `Patient/{own}`.
    let (by_url, created) = c
        .create(&hiv_note(
            json!({ "reference": format!("HTTPS://127.0.0.1:8443/fhir/Patient/{own}") }),
        ))
        .await;
    assert_eq!(
        created.json()["subject"]["reference"],
        format!("Patient/{own}")
    );
    let (by_condition, created) = c
        .create(&hiv_note(
            json!({ "reference": "Patient?identifier=urn:mrn|MRN-LINKED-1" }),
        ))
        .await;
    assert_eq!(
        created.json()["subject"]["reference"],
        format!("Patient/{own}")
    );
    // The patient reads both, and finds them in their record.
    for id in [&by_url, &by_condition] {
        let a = c.get_as(&pat, &format!("/fhir/Observation/{id}")).await;
        assert_eq!(a.status, StatusCode::OK, "{a:?}");
    }
    let everything = c.get(&format!("/fhir/Patient/{own}/$everything")).await;
    assert_eq!(everything.status, StatusCode::OK, "{everything:?}");
    let ids: BTreeSet<String> = everything.json()["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["resource"]["id"].as_str().map(str::to_owned))
        .collect();
    assert!(
        ids.contains(&by_url) && ids.contains(&by_condition),
        "{ids:?}"
    );

    // Refused with 422 (nothing stored): another server's patient, an identifier alone, a
    // contained patient, a placeholder outside a transaction, a conditional reference that
    // matches nobody. Two matches: 412.
    for subject in [
        json!({ "reference": format!("https://elsewhere.example/fhir/Patient/{own}") }),
        json!({ "identifier": { "system": "urn:mrn", "value": "MRN-LINKED-1" } }),
        json!({ "reference": "#p1" }),
        json!({ "reference": "urn:uuid:0b5e1a4c-6d1e-4b8a-9b7e-3c2f1d0e9a87" }),
        json!({ "reference": "Patient?identifier=urn:mrn|NOBODY" }),
    ] {
        let a = c
            .json(Method::POST, "/fhir/Observation", &hiv_note(subject))
            .await;
        assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{a:?}");
        assert_eq!(a.json()["resourceType"], "OperationOutcome");
        assert_eq!(
            a.json()["issue"][0]["expression"][0],
            "Observation.subject",
            "{a:?}"
        );
    }
    c.create(&json!({
        "resourceType": "Patient",
        "identifier": [{ "system": "urn:mrn", "value": "MRN-TWIN" }],
    }))
    .await;
    c.create(&json!({
        "resourceType": "Patient",
        "identifier": [{ "system": "urn:mrn", "value": "MRN-TWIN" }],
    }))
    .await;
    c.json(
        Method::POST,
        "/fhir/Observation",
        &hiv_note(json!({ "reference": "Patient?identifier=urn:mrn|MRN-TWIN" })),
    )
    .await
    .assert_outcome(StatusCode::PRECONDITION_FAILED, "multiple-matches");
    // In a transaction too.
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{
            "request": { "method": "POST", "url": "Observation" },
            "resource": hiv_note(json!({ "identifier": { "value": "MRN-LINKED-1" } })),
        }],
    });
    let a = c.json(Method::POST, "/fhir", &bundle).await;
    assert!(a.status.is_client_error(), "{a:?}");
    assert!(a.diagnostics().contains("identifier alone"), "{a:?}");

    // Erasing the patient erases the notes with them.
    let a = c
        .send(
            c.req_as(&admin, Method::POST, &format!("/fhir/Patient/{own}/$erase"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    for id in [&by_url, &by_condition] {
        let a = c.get(&format!("/fhir/Observation/{id}")).await;
        assert_eq!(a.status, StatusCode::GONE, "{a:?}");
    }
}

#[tokio::test]
async fn a_resource_in_no_compartment_is_refused_so_no_history_is_open() {
    let c = ctx().await;
    let admin = c.person("admin", Role::Admin).await;
    let doc = c.person("doc", Role::Clinician).await;
    let (own, _) = c.create(&patient("Unrelated")).await;
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
    // About a Group: in no patient's compartment, so refused (422) to every writer rather
    // than stored where neither the patient nor the care team could be decided on; no
    // version exists for anyone to read.
    for token in [&c.token, &doc] {
        let a = c
            .json_as(
                token,
                Method::POST,
                "/fhir/Observation",
                &hiv_note(json!({ "reference": "Group/g1" })),
            )
            .await;
        assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{a:?}");
    }
    for token in [&pat, &doc, &c.token] {
        assert_eq!(total(&c.get_as(token, "/fhir/Observation").await), 0);
    }
}
