//! Every R4 resource type over the API: the types raw Synthea bundles hold are created, read,
//! versioned, searched and deleted; a Claim is read only within its patient's compartment (not
//! by another patient, not by a clinician outside the care team, history included); a
//! resource of a compartment type naming no patient, or another server's, is refused (422)
//! before anything is stored; types the server does not store answer 404.

use super::*;

fn claim(pid: &str, marker: &str) -> Value {
    json!({"resourceType": "Claim", "status": "active", "use": "claim",
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/claim-type",
                              "code": "institutional"}]},
        "patient": {"reference": format!("Patient/{pid}")}, "created": "2022-02-03",
        "provider": {"reference": "Organization/o1"}, "priority": {"coding": [{"code": "normal"}]},
        "insurance": [{"sequence": 1, "focal": true, "coverage": {"display": marker}}],
        "item": [{"sequence": 1, "productOrService": {"text": marker}}]})
}

#[tokio::test]
async fn new_types_support_every_interaction() {
    let c = ctx().await;
    let (pid, _) = c.create(&patient("Typed")).await;
    let subject = json!({"reference": format!("Patient/{pid}")});
    let cases = [
        (claim(&pid, "x"), "patient", pid.clone()),
        (
            json!({"resourceType": "ExplanationOfBenefit", "status": "active",
                "type": {"text": "x"}, "use": "claim", "patient": subject,
                "created": "2022-02-04", "insurer": {"display": "x"},
                "provider": {"reference": "Organization/o1"}, "outcome": "complete",
                "insurance": [{"focal": true, "coverage": {"display": "x"}}]}),
            "created",
            "2022-02-04".to_owned(),
        ),
        (
            json!({"resourceType": "Provenance", "recorded": "2022-02-05T10:00:00Z",
                "target": [subject], "agent": [{"who": {"reference": "Practitioner/d"}}]}),
            "agent",
            "Practitioner/d".to_owned(),
        ),
        (
            json!({"resourceType": "ImagingStudy", "status": "available", "subject": subject,
                "identifier": [{"system": "urn:dicom:uid", "value": "urn:oid:1.2.3"}]}),
            "identifier",
            "urn:dicom:uid|urn:oid:1.2.3".to_owned(),
        ),
        (
            json!({"resourceType": "Device", "status": "active", "patient": subject}),
            "status",
            "active".to_owned(),
        ),
        (
            json!({"resourceType": "SupplyDelivery", "status": "completed",
                "patient": subject}),
            "patient",
            format!("Patient/{pid}"),
        ),
        (
            json!({"resourceType": "Goal", "lifecycleStatus": "active", "subject": subject,
                "description": {"text": "walk"}}),
            "lifecycle-status",
            "active".to_owned(),
        ),
        (
            json!({"resourceType": "MedicationAdministration", "status": "completed",
                "subject": subject, "effectiveDateTime": "2022-02-06T08:00:00Z",
                "medicationCodeableConcept": {"coding": [{"code": "313782"}]}}),
            "effective-time",
            "2022-02-06".to_owned(),
        ),
        (
            json!({"resourceType": "Medication", "code": {"coding": [{"code": "313782"}]}}),
            "code",
            "313782".to_owned(),
        ),
    ];
    for (body, param, value) in cases {
        let rtype = body["resourceType"].as_str().unwrap().to_owned();
        let (id, _) = c.create(&body).await;
        let url = format!("/fhir/{rtype}/{id}");
        assert_eq!(c.get(&url).await.status, StatusCode::OK, "{rtype}");
        let mut changed = body.clone();
        changed["id"] = json!(id);
        changed["meta"] = json!({"tag": [{"code": "v2"}]});
        let a = c.json(Method::PUT, &url, &changed).await;
        assert_eq!(a.status, StatusCode::OK, "{rtype}: {a:?}");
        assert_eq!(
            c.get(&format!("{url}/_history/2")).await.status,
            StatusCode::OK
        );
        let history = c.get(&format!("{url}/_history")).await;
        assert_eq!(total(&history), 2, "{rtype}");
        let search = c.get(&format!("/fhir/{rtype}?{param}={value}")).await;
        assert_eq!(total(&search), 1, "{rtype}?{param}={value}: {search:?}");
        assert_eq!(total(&c.get(&format!("/fhir/{rtype}?_tag=v2")).await), 1);
        let a = c
            .send(c.req(Method::DELETE, &url).body(Body::empty()).unwrap())
            .await;
        assert!(a.status.is_success(), "{rtype}: {a:?}");
        assert_eq!(c.get(&url).await.status, StatusCode::GONE, "{rtype}");
        assert_eq!(
            total(&c.get(&format!("/fhir/{rtype}?{param}={value}")).await),
            0
        );
    }
    // Unsupported parameters: a precise 400.
    let a = c.get("/fhir/Observation?code-value-quantity=5").await;
    a.assert_outcome(StatusCode::BAD_REQUEST, "invalid");
    assert!(
        a.diagnostics()
            .contains("composite parameters are not supported"),
        "{a:?}"
    );
    // Types not stored here.
    for rtype in ["Bundle", "Binary", "Parameters", "OperationOutcome"] {
        let a = c
            .json(
                Method::POST,
                &format!("/fhir/{rtype}"),
                &json!({"resourceType": rtype}),
            )
            .await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{rtype}: {a:?}");
    }
}

#[tokio::test]
async fn a_claim_is_read_only_in_its_patients_compartment() {
    let c = ctx().await;
    let admin = c.person("admin", Role::Admin).await;
    let (own, _) = c.create(&patient("Claimant")).await;
    let (other, _) = c.create(&patient("Stranger")).await;
    let (own_claim, _) = c.create(&claim(&own, "mine")).await;
    let (other_claim, _) = c.create(&claim(&other, "theirs")).await;
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
        c.get_as(&pat, &format!("/fhir/Claim/{own_claim}"))
            .await
            .status,
        StatusCode::OK
    );
    for url in [
        format!("/fhir/Claim/{other_claim}"),
        format!("/fhir/Claim/{other_claim}/_history"),
        format!("/fhir/Claim/{other_claim}/_history/1"),
    ] {
        c.get_as(&pat, &url).await.assert_denied("no-permit");
    }
    assert_eq!(total(&c.get_as(&pat, "/fhir/Claim").await), 1);
    assert_eq!(
        total(
            &c.get_as(&pat, &format!("/fhir/Claim?patient={other}"))
                .await
        ),
        0
    );

    // A clinician outside the care team: neither the Claim nor its history nor a search.
    let doc = c.person("doc", Role::Clinician).await;
    for url in [
        format!("/fhir/Claim/{own_claim}"),
        format!("/fhir/Claim/{own_claim}/_history"),
        format!("/fhir/Claim/{own_claim}/_history/1"),
    ] {
        c.get_as(&doc, &url).await.assert_denied("no-permit");
    }
    assert_eq!(total(&c.get_as(&doc, "/fhir/Claim").await), 0);
    // On the care team of one patient: that patient's Claim only.
    c.grant(&admin, "doc", &own, &[]).await;
    assert_eq!(
        c.get_as(&doc, &format!("/fhir/Claim/{own_claim}"))
            .await
            .status,
        StatusCode::OK
    );
    c.get_as(&doc, &format!("/fhir/Claim/{other_claim}/_history"))
        .await
        .assert_denied("no-permit");
    assert_eq!(total(&c.get_as(&doc, "/fhir/Claim").await), 1);
}

#[tokio::test]
async fn resources_naming_no_patient_of_this_server_are_refused() {
    let c = ctx().await;
    let (pid, _) = c.create(&patient("Named")).await;
    let (other, _) = c.create(&patient("Twice")).await;
    let doc = c.person("doc", Role::Clinician).await;
    let cases = [
        // No subject at all (legal FHIR for device data, refused here), a Group subject,
        // another server's patient, an unresolved placeholder, two patients.
        json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}}),
        json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "subject": {"reference": "Group/g1"}}),
        json!({"resourceType": "Claim", "status": "active", "use": "claim",
            "type": {"text": "x"}, "created": "2022-01-01",
            "patient": {"reference": "https://other.example/fhir/Patient/p1"},
            "provider": {"reference": "Organization/o"}, "priority": {"text": "x"},
            "insurance": [{"sequence": 1, "focal": true, "coverage": {"display": "x"}}]}),
        json!({"resourceType": "Goal", "lifecycleStatus": "active",
            "description": {"text": "x"},
            "subject": {"reference": "urn:uuid:0c3151bd-1cbf-4d64-b04d-cd9187a4c6e0"}}),
        json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "subject": {"reference": format!("Patient/{pid}")},
            "performer": [{"reference": format!("Patient/{other}")}]}),
        // A directory resource naming a patient.
        json!({"resourceType": "Medication", "extension": [{"url": "urn:x",
            "valueReference": {"reference": format!("Patient/{pid}")}}]}),
    ];
    for body in cases {
        let rtype = body["resourceType"].as_str().unwrap();
        for token in [&c.token, &doc] {
            let a = c
                .json_as(token, Method::POST, &format!("/fhir/{rtype}"), &body)
                .await;
            assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {a:?}");
        }
        // Nothing was stored: a search by the system app finds none.
        let all = c.get(&format!("/fhir/{rtype}")).await;
        assert_eq!(total(&all), 0, "{rtype}");
    }
    // An update to a resource that would drop its patient is refused too.
    let (oid, _) = c.create(&observation(&pid)).await;
    let mut dropped = observation(&pid);
    dropped["id"] = json!(oid);
    dropped.as_object_mut().unwrap().remove("subject");
    let a = c
        .json(Method::PUT, &format!("/fhir/Observation/{oid}"), &dropped)
        .await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{a:?}");
    let history = c.get(&format!("/fhir/Observation/{oid}/_history")).await;
    assert_eq!(total(&history), 1);
}
