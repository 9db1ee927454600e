//! Consents and care teams: a denial of treatment is not passed by another purpose, only the
//! patient changes their consents, care teams grant only through those allowed and within their
//! periods.

use super::*;

#[tokio::test]
async fn a_consent_denying_treatment_is_not_passed_by_another_purpose() {
    let c = ctx().await;
    let admin = c.person("admin", Role::Admin).await;
    let doc = c.person("doc", Role::Clinician).await;
    let (pid, _) = c.create(&patient("Refuses")).await;
    let (oid, _) = c.create(&observation(&pid)).await;
    c.grant(&admin, "doc", &pid, &[]).await;
    let pat = patient_session(&c, "pat", &pid).await;
    c.create_as(&pat, &deny_consent(&pid, "TREAT", &[])).await;
    let get = |purpose: &str, reason: Option<&str>, uri: &str| {
        with_purpose(c.req_as(&doc, Method::GET, uri), purpose, reason)
            .body(Body::empty())
            .unwrap()
    };
    let uri = format!("/fhir/Observation/{oid}");

    c.send(get("TREAT", None, &uri))
        .await
        .assert_denied("consent-denies");
    // A specialization of TREAT is covered by the denial.
    c.send(get("COC", None, &uri))
        .await
        .assert_denied("consent-denies");
    // Payment and operations are not a clinician's purposes: refused, whatever the consent,
    // with a message naming what the role may assert, and audited.
    for purpose in ["HPAYMT", "HOPERAT", "HRESCH"] {
        let before = audit_count(&c).await;
        for path in [uri.as_str(), "/fhir/Observation"] {
            let a = c.send(get(purpose, None, path)).await;
            a.assert_outcome(StatusCode::FORBIDDEN, "forbidden");
            let d = a.diagnostics();
            assert!(
                d.starts_with("access denied: purpose-not-permitted")
                    && d.contains(purpose)
                    && d.contains("clinician")
                    && d.contains("TREAT"),
                "{d}"
            );
        }
        let entries = audit_entries_after(&c, before).await;
        assert_eq!(entries.len(), 2, "{entries:?}");
        for (e, _) in &entries {
            assert_eq!(e.outcome, phivault_audit::Outcome::Denied, "{e:?}");
            assert_eq!(e.purpose.as_deref(), Some(purpose), "{e:?}");
        }
    }
    // ETREAT without a reason is refused and records no break-the-glass access.
    c.send(get("ETREAT", None, &uri))
        .await
        .assert_denied("break-glass-required");
    let records = c.get_as(&admin, "/admin/break-glass").await.json();
    assert_eq!(records["records"].as_array().unwrap().len(), 0);
    // With a reason it passes the denial, recorded and flagged.
    let a = c.send(get("ETREAT", Some("collapsed"), &uri)).await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    assert_eq!(a.header("x-break-glass"), Some("recorded"));
    let records = c.get_as(&admin, "/admin/break-glass").await.json();
    assert_eq!(records["records"].as_array().unwrap().len(), 1);
    // Patients assert the patient's purposes only.
    let a = c
        .send(
            with_purpose(c.req_as(&pat, Method::GET, &uri), "TREAT", None)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    a.assert_outcome(StatusCode::FORBIDDEN, "forbidden");
    assert!(
        a.diagnostics()
            .starts_with("access denied: purpose-not-permitted"),
        "{a:?}"
    );
    assert_eq!(c.get_as(&pat, &uri).await.status, StatusCode::OK);
}

#[tokio::test]
async fn only_the_patient_changes_their_consents() {
    let c = ctx().await;
    let admin = c.person("admin", Role::Admin).await;
    let doc = c.person("doc", Role::Clinician).await;
    let (pid, _) = c.create(&patient("Private")).await;
    let (oid, _) = c.create(&observation(&pid)).await;
    c.grant(&admin, "doc", &pid, &[]).await;
    let pat = patient_session(&c, "pat", &pid).await;
    // The patient keeps their Observations from treatment; the Consent itself stays
    // readable by the care team.
    let (cid, _) = c
        .create_as(&pat, &deny_consent(&pid, "TREAT", &["Observation"]))
        .await;
    let obs_uri = format!("/fhir/Observation/{oid}");
    c.get_as(&doc, &obs_uri)
        .await
        .assert_denied("consent-denies");
    let consent_uri = format!("/fhir/Consent/{cid}");
    let a = c.get_as(&doc, &consent_uri).await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    let mut withdrawn = a.json();
    withdrawn["status"] = json!("inactive");

    // The clinician cannot withdraw it, delete it, or record another.
    c.json_as(&doc, Method::PUT, &consent_uri, &withdrawn)
        .await
        .assert_denied("no-permit");
    let a = c
        .send(
            c.req_as(&doc, Method::DELETE, &consent_uri)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    a.assert_denied("no-permit");
    let mut permit = deny_consent(&pid, "TREAT", &[]);
    permit["provision"]["type"] = json!("permit");
    c.json_as(&doc, Method::POST, "/fhir/Consent", &permit)
        .await
        .assert_denied("no-permit");
    // Nor can an app with every scope.
    c.json_as(&c.token, Method::PUT, &consent_uri, &withdrawn)
        .await
        .assert_denied("no-permit");
    c.get_as(&doc, &obs_uri)
        .await
        .assert_denied("consent-denies");

    // The patient can.
    let a = c.json_as(&pat, Method::PUT, &consent_uri, &withdrawn).await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    assert_eq!(c.get_as(&doc, &obs_uri).await.status, StatusCode::OK);
}

#[tokio::test]
async fn care_teams_grant_only_through_those_allowed_and_within_their_periods() {
    let c = ctx().await;
    let admin = c.person("admin", Role::Admin).await;
    let lead = c.person("lead", Role::Clinician).await;
    c.user("locum", Role::Clinician).await;
    let (dr, _) = c
        .create(&json!({"resourceType": "Practitioner", "name": [{"family": "Locum"}]}))
        .await;
    c.state
        .accounts
        .link_practitioner("locum", &Id::parse(&dr).unwrap(), &NoAudit)
        .await
        .unwrap();
    let locum = c.session("locum").await;
    let (pid, _) = c.create(&patient("Teamed")).await;
    let uri = format!("/fhir/Patient/{pid}");
    c.get_as(&locum, &uri).await.assert_denied("no-permit");

    // An app whose only scope is creating CareTeams cannot put anyone on a care team.
    let (id, secret) = c.client("teams", "system/CareTeam.c", None).await;
    let teams = c.client_token(&id, &secret, None).await;
    c.json_as(
        &teams,
        Method::POST,
        "/fhir/CareTeam",
        &care_team(&pid, &dr, None, None),
    )
    .await
    .assert_denied("no-permit");
    c.get_as(&locum, &uri).await.assert_denied("no-permit");

    // A clinician on the patient's care team may add a colleague, for the team's period.
    c.grant(&admin, "lead", &pid, &[]).await;
    let past = json!({"start": "2019-01-01", "end": "2020-12-31"});
    let future = json!({"start": "2999-01-01"});
    let now = json!({"start": "2020-01-01"});
    for (team, member) in [
        (Some(past.clone()), None),
        (Some(future.clone()), None),
        (None, Some(past.clone())),
        (Some(now.clone()), Some(future.clone())),
    ] {
        let (tid, _) = c
            .create_as(&lead, &care_team(&pid, &dr, team.clone(), member.clone()))
            .await;
        c.get_as(&locum, &uri).await.assert_denied("no-permit");
        assert_eq!(
            total(&c.get_as(&locum, "/fhir/Patient").await),
            0,
            "{team:?} {member:?}"
        );
        let a = c
            .send(
                c.req_as(&lead, Method::DELETE, &format!("/fhir/CareTeam/{tid}"))
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert!(a.status.is_success(), "{a:?}");
    }
    c.create_as(&lead, &care_team(&pid, &dr, Some(now.clone()), Some(now)))
        .await;
    assert_eq!(c.get_as(&locum, &uri).await.status, StatusCode::OK);
    assert_eq!(total(&c.get_as(&locum, "/fhir/Patient").await), 1);
}
