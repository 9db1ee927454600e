//! The audit trail of requests: one entry per route template, fail-closed, verifiable, with no
//! search values; writes commit with their entry or roll back.

use super::*;

#[tokio::test]
async fn every_route_is_audited_once_by_its_template() {
    let c = ctx().await;
    // Logout revokes the token it is called with: a throwaway session of its own.
    let (id, secret) = c.client("throwaway", "system/*.cruds", None).await;
    let throwaway = c.client_token(&id, &secret, None).await;
    for (method, template) in phivault_server::ROUTES {
        let uri = template
            .replace("{type}", "Patient")
            .replace("{id}", "placeholder-id")
            .replace("{vid}", "1")
            .replace("{username}", "nobody");
        let token = if *template == "/auth/logout" {
            &throwaway
        } else {
            &c.token
        };
        let (content_type, body) = if template.starts_with("/oauth/") {
            ("application/x-www-form-urlencoded", "")
        } else if template.starts_with("/fhir") {
            ("application/fhir+json", "{}")
        } else {
            ("application/json", "{}")
        };
        let req = c
            .req_as(token, Method::from_bytes(method.as_bytes()).unwrap(), &uri)
            .header(header::CONTENT_TYPE, content_type)
            .body(Body::from(body))
            .unwrap();
        let before = audit_count(&c).await;
        let a = c.send(req).await;
        // The router's routes and ROUTES agree: no entry is the fallback or a 405.
        assert_ne!(
            a.status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {uri}: {a:?}"
        );
        if a.status == StatusCode::NOT_FOUND {
            assert_ne!(a.diagnostics(), "no such endpoint", "{method} {uri}: {a:?}");
        }
        let entries = audit_entries_after(&c, before).await;
        if phivault_server::PROBE_ROUTES.contains(&(*method, *template)) {
            // The health probes are left out of the trail (see `PROBE_ROUTES`).
            assert_eq!(a.status, StatusCode::OK, "{method} {uri}: {a:?}");
            assert!(entries.is_empty(), "{method} {uri}: {entries:?}");
            continue;
        }
        assert_eq!(entries.len(), 1, "{method} {uri}: {entries:?}");
        // The OAuth2 routes add what they did after the template (`POST /oauth/token
        // refused invalid_request`).
        let action = &entries[0].0.action;
        let named = format!("{method} {template}");
        assert!(
            *action == named || action.starts_with(&format!("{named} ")),
            "{method} {uri}: {action}"
        );
        assert!(
            !entries[0].1.contains("placeholder-id") || template.contains("{id}"),
            "{method} {template}: {}",
            entries[0].1
        );
    }
    // The fallback and a 401 are audited too, without the raw path.
    let before = audit_count(&c).await;
    c.get("/somewhere/secret-path").await;
    let a = c.get_as("not-a-token", "/fhir/Patient").await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{a:?}");
    let entries = audit_entries_after(&c, before).await;
    assert_eq!(entries.len(), 2, "{entries:?}");
    assert_eq!(entries[0].0.action, "GET (no route)");
    assert!(!entries[0].1.contains("secret-path"));
    assert_eq!(entries[1].0.action, "GET /fhir/{type}");
    assert_eq!(entries[1].0.actor_id, "anonymous");
    assert_eq!(entries[1].0.outcome, phivault_audit::Outcome::Denied);
}

#[tokio::test]
async fn the_audit_trail_fails_closed() {
    let c = ctx().await;
    let (pid, _) = c.create(&patient("Zanzibarova")).await;
    sqlx::query(
        "CREATE TRIGGER audit_ro BEFORE INSERT ON audit_entries \
         BEGIN SELECT RAISE(ABORT, 'read-only'); END;",
    )
    .execute(c.state.store.pool())
    .await
    .unwrap();
    let a = c.get(&format!("/fhir/Patient/{pid}")).await;
    a.assert_outcome(StatusCode::SERVICE_UNAVAILABLE, "transient");
    assert_eq!(
        a.diagnostics(),
        "the audit trail is unavailable; the request was not served"
    );
    assert!(!String::from_utf8_lossy(&a.body).contains("Zanzibarova"));
    assert_security_headers(&a);
    sqlx::query("DROP TRIGGER audit_ro")
        .execute(c.state.store.pool())
        .await
        .unwrap();
    let a = c.get(&format!("/fhir/Patient/{pid}")).await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    assert!(String::from_utf8_lossy(&a.body).contains("Zanzibarova"));
}

#[tokio::test]
async fn the_audit_trail_verifies_records_denials_and_holds_no_search_values() {
    let c = ctx().await;
    let doc = c.person("doc", Role::Clinician).await;
    let (pid, _) = c.create(&patient("Quillfeather")).await;
    let before = audit_count(&c).await;
    let a = c.get(&format!("/fhir/Patient/{pid}")).await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    let a = c.get("/fhir/Patient?family=PHIMARKERXYZZY").await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    let a = c.get_as(&doc, &format!("/fhir/Patient/{pid}")).await;
    a.assert_denied("no-permit");

    let report = c.state.audit.verify(|_| {}).await.unwrap();
    assert!(report.entries >= before + 3, "{report:?}");
    let entries = audit_entries_after(&c, before).await;
    assert_eq!(entries.len(), 3, "{entries:?}");
    let (read, _) = &entries[0];
    assert_eq!(read.action, "GET /fhir/{type}/{id}");
    assert_eq!(read.resource_type.as_deref(), Some("Patient"));
    assert_eq!(read.resource_id.as_deref(), Some(pid.as_str()));
    assert_eq!(read.patient_id.as_deref(), Some(pid.as_str()));
    assert_eq!(read.actor_id, c.app_id);
    assert_eq!(read.actor_kind, phivault_audit::ActorKind::Client);
    assert_eq!(read.outcome, phivault_audit::Outcome::Allowed);
    assert_eq!(read.source_address.as_deref(), Some("127.0.0.1"));
    assert!(uuid::Uuid::parse_str(&read.request_id).is_ok(), "{read:?}");
    let (search, _) = &entries[1];
    assert_eq!(search.action, "GET /fhir/{type}");
    let (denied, _) = &entries[2];
    assert_eq!(denied.outcome, phivault_audit::Outcome::Denied);
    assert_eq!(denied.actor_kind, phivault_audit::ActorKind::User);
    assert_eq!(denied.role.as_deref(), Some("clinician"));
    assert!(denied.purpose.is_some());
    for (_, text) in audit_entries_after(&c, 0).await {
        assert!(!text.contains("PHIMARKERXYZZY"), "{text}");
        assert!(!text.contains("Quillfeather"), "{text}");
    }

    // The checkpoint route: 404 before the first checkpoint, then the latest one.
    c.get("/audit/checkpoint")
        .await
        .assert_outcome(StatusCode::NOT_FOUND, "not-found");
    let cp = c.state.audit.checkpoint().await.unwrap();
    let a = c.get_as(&doc, "/audit/checkpoint").await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    let got: phivault_audit::Checkpoint = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(got, cp);
    assert_eq!(
        c.send(
            Request::get("/audit/checkpoint")
                .body(Body::empty())
                .unwrap()
        )
        .await
        .status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn writes_commit_with_their_audit_entry() {
    use phivault_audit::Outcome::Allowed;
    let c = ctx().await;
    let s = |v: &str| Some(v.to_owned());

    // Create: one entry, naming the new resource and its patient, by the app.
    let before = audit_count(&c).await;
    let (pid, created) = c.create(&patient("Atomically")).await;
    let entries = audit_entries_after(&c, before).await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    let (entry, text) = &entries[0];
    assert_eq!(
        (
            entry.action.as_str(),
            entry.resource_type.as_deref(),
            entry.resource_id.as_deref(),
            entry.patient_id.as_deref(),
            entry.outcome
        ),
        (
            "POST /fhir/{type}",
            Some("Patient"),
            Some(pid.as_str()),
            Some(pid.as_str()),
            Allowed
        )
    );
    assert_eq!(entry.actor_id, c.app_id);
    assert_eq!(entry.actor_kind, phivault_audit::ActorKind::Client);
    assert_eq!(entry.source_address.as_deref(), Some("127.0.0.1"));
    assert_eq!(
        Some(entry.request_id.as_str()),
        created.header("x-request-id")
    );
    assert!(!text.contains("Atomically"), "{text}");

    // An Observation of that patient: its entry names the patient.
    let before = audit_count(&c).await;
    let (oid, _) = c.create(&observation(&pid)).await;
    assert_eq!(
        audit_summary(&c, before).await,
        vec![(
            "POST /fhir/{type}".to_owned(),
            s("Observation"),
            s(&oid),
            s(&pid),
            Allowed
        )]
    );

    // Update and delete: one entry each.
    let before = audit_count(&c).await;
    let mut body = patient("Atomically");
    body["id"] = json!(pid);
    body["gender"] = json!("other");
    let a = c
        .json(Method::PUT, &format!("/fhir/Patient/{pid}"), &body)
        .await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    let a = c
        .send(
            c.req(Method::DELETE, &format!("/fhir/Observation/{oid}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT, "{a:?}");
    // Deleting it again writes nothing: the request's entry comes from the middleware.
    let a = c
        .send(
            c.req(Method::DELETE, &format!("/fhir/Observation/{oid}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert!(a.status.is_success(), "{a:?}");
    assert_eq!(
        audit_summary(&c, before).await,
        vec![
            (
                "PUT /fhir/{type}/{id}".to_owned(),
                s("Patient"),
                s(&pid),
                s(&pid),
                Allowed
            ),
            (
                "DELETE /fhir/{type}/{id}".to_owned(),
                s("Observation"),
                s(&oid),
                s(&pid),
                Allowed
            ),
            (
                "DELETE /fhir/{type}/{id}".to_owned(),
                s("Observation"),
                s(&oid),
                s(&pid),
                Allowed
            ),
        ]
    );

    // A transaction of two: one entry per written resource, then the Bundle request's.
    let urn = "urn:uuid:0b8f3f55-2f6b-4a57-9d3c-0a0b0c0d0e0f";
    let mut urn_observation = observation("x");
    urn_observation["subject"]["reference"] = json!(urn);
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            { "fullUrl": urn, "resource": patient("Bundled"),
              "request": { "method": "POST", "url": "Patient" } },
            { "resource": urn_observation, "request": { "method": "POST", "url": "Observation" } }
        ]
    });
    let before = audit_count(&c).await;
    let a = c.json(Method::POST, "/fhir", &bundle).await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    let b = a.json();
    let new_pid = b["entry"][0]["resource"]["id"].as_str().unwrap().to_owned();
    let new_oid = b["entry"][1]["resource"]["id"].as_str().unwrap().to_owned();
    let entries = audit_entries_after(&c, before).await;
    let mut written: Vec<_> = entries[..2]
        .iter()
        .map(|(e, _)| {
            (
                e.action.clone(),
                e.resource_type.clone(),
                e.resource_id.clone(),
                e.patient_id.clone(),
                e.outcome,
            )
        })
        .collect();
    written.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(
        written,
        vec![
            (
                "create".to_owned(),
                s("Observation"),
                s(&new_oid),
                s(&new_pid),
                Allowed
            ),
            (
                "create".to_owned(),
                s("Patient"),
                s(&new_pid),
                s(&new_pid),
                Allowed
            ),
        ]
    );
    assert_eq!(entries.len(), 3, "{entries:?}");
    let (request, _) = &entries[2];
    assert_eq!(request.action, "POST /fhir");
    assert_eq!(request.outcome, Allowed);
    for (e, _) in &entries {
        assert_eq!(e.request_id, entries[2].0.request_id, "one request");
        assert_eq!(e.actor_id, c.app_id);
    }
    assert_eq!(
        phivault_audit::action_code(&entries[0].0.action),
        "C",
        "writes carry their FHIR action code"
    );

    // The trail still verifies.
    c.state.audit.verify(|_| {}).await.unwrap();
}

#[tokio::test]
async fn writes_fail_closed_and_roll_back_when_the_audit_refuses() {
    let c = ctx().await;
    let (pid, _) = c.create(&patient("Steadfast")).await;
    let (oid, _) = c.create(&observation(&pid)).await;
    let before = c.get(&format!("/fhir/Patient/{pid}")).await.json();
    sqlx::query(
        "CREATE TRIGGER audit_ro BEFORE INSERT ON audit_entries \
         BEGIN SELECT RAISE(ABORT, 'read-only'); END;",
    )
    .execute(c.state.store.pool())
    .await
    .unwrap();

    let unavailable = |a: &Answer, what: &str| {
        a.assert_outcome(StatusCode::SERVICE_UNAVAILABLE, "transient");
        assert_eq!(
            a.diagnostics(),
            "the audit trail is unavailable; the request was not served",
            "{what}"
        );
        assert_security_headers(a);
    };
    let a = c
        .json(Method::POST, "/fhir/Patient", &patient("Unrecorded"))
        .await;
    unavailable(&a, "create");
    let mut body = before.clone();
    body["gender"] = json!("unknown");
    let a = c
        .json(Method::PUT, &format!("/fhir/Patient/{pid}"), &body)
        .await;
    unavailable(&a, "update");
    let a = c
        .send(
            c.req(Method::DELETE, &format!("/fhir/Observation/{oid}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    unavailable(&a, "delete");
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            { "resource": patient("Unrecorded"), "request": { "method": "POST", "url": "Patient" } },
            { "resource": observation(&pid),
              "request": { "method": "POST", "url": "Observation" } }
        ]
    });
    let a = c.json(Method::POST, "/fhir", &bundle).await;
    unavailable(&a, "transaction");
    let mut batch = bundle.clone();
    batch["type"] = json!("batch");
    let a = c.json(Method::POST, "/fhir", &batch).await;
    unavailable(&a, "batch");

    sqlx::query("DROP TRIGGER audit_ro")
        .execute(c.state.store.pool())
        .await
        .unwrap();
    // Nothing of it was written.
    let a = c.get(&format!("/fhir/Patient/{pid}")).await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    assert_eq!(a.json(), before, "the update was rolled back");
    let a = c.get(&format!("/fhir/Observation/{oid}")).await;
    assert_eq!(
        a.status,
        StatusCode::OK,
        "the delete was rolled back: {a:?}"
    );
    let a = c.get("/fhir/Patient?family=Unrecorded").await;
    assert_eq!(total(&a), 0, "{a:?}");
    let a = c.get(&format!("/fhir/Observation?patient={pid}")).await;
    assert_eq!(total(&a), 1, "{a:?}");
    let a = c.get(&format!("/fhir/Patient/{pid}/_history")).await;
    assert_eq!(total(&a), 1, "{a:?}");
    c.state.audit.verify(|_| {}).await.unwrap();
}

/// An Observation of `patient` carrying the sensitivity label `code` (v3-ActCode).
fn labelled_observation(patient: &str, code: &str) -> Value {
    let mut o = psy_observation(patient);
    o["meta"]["security"][0]["code"] = json!(code);
    o
}

/// The labels of the last entry after `before`, with its outcome.
async fn last_labels(c: &Ctx, before: u64) -> (Vec<String>, phivault_audit::Outcome) {
    let entries = audit_entries_after(c, before).await;
    let (last, text) = entries.last().expect("an entry");
    // Codes only: no display of a label is ever in the trail.
    assert!(
        !text.contains("mental") && !text.contains("display"),
        "{text}"
    );
    (last.labels.clone(), last.outcome)
}

#[tokio::test]
async fn entries_carry_the_labels_of_what_was_decided_on_or_returned() {
    use phivault_audit::Outcome::{Allowed, Denied};
    for (backend, c) in backend_contexts("labels").await {
        let admin = c.person("admin", Role::Admin).await;
        let psych = c.person("psych", Role::Clinician).await;
        let gp = c.person("gp", Role::Clinician).await;
        let (pid, _) = c.create(&patient("Labelaudit")).await;
        let (plain, _) = c.create(&observation(&pid)).await;
        c.grant(&admin, "psych", &pid, &["PSY", "HIV"]).await;
        c.grant(&admin, "gp", &pid, &[]).await;

        // A write records the labels of what it wrote (`MH` is read as PSY, its code).
        let before = audit_count(&c).await;
        let (psy, _) = c.create_as(&psych, &psy_observation(&pid)).await;
        assert_eq!(
            last_labels(&c, before).await,
            (vec!["PSY".to_owned()], Allowed),
            "{backend}"
        );
        let before = audit_count(&c).await;
        let (hiv, _) = c
            .create_as(&psych, &labelled_observation(&pid, "HIV"))
            .await;
        assert_eq!(
            last_labels(&c, before).await,
            (vec!["HIV".to_owned()], Allowed),
            "{backend}"
        );
        let before = audit_count(&c).await;
        let (mh, _) = c.create_as(&psych, &labelled_observation(&pid, "MH")).await;
        assert_eq!(
            last_labels(&c, before).await,
            (vec!["PSY".to_owned()], Allowed),
            "{backend}"
        );

        // A read of a labelled resource, of an unlabelled one, and of its history.
        let before = audit_count(&c).await;
        let a = c.get_as(&psych, &format!("/fhir/Observation/{psy}")).await;
        assert_eq!(a.status, StatusCode::OK, "{a:?}");
        assert_eq!(
            last_labels(&c, before).await,
            (vec!["PSY".to_owned()], Allowed),
            "{backend}"
        );
        let before = audit_count(&c).await;
        let a = c
            .get_as(&psych, &format!("/fhir/Observation/{plain}"))
            .await;
        assert_eq!(a.status, StatusCode::OK, "{a:?}");
        assert_eq!(
            last_labels(&c, before).await,
            (vec![], Allowed),
            "{backend}"
        );
        let before = audit_count(&c).await;
        let a = c
            .get_as(&psych, &format!("/fhir/Observation/{mh}/_history"))
            .await;
        assert_eq!(a.status, StatusCode::OK, "{a:?}");
        assert_eq!(
            last_labels(&c, before).await,
            (vec!["PSY".to_owned()], Allowed),
            "{backend}"
        );

        // A search returning an HIV-labelled and an unlabelled resource.
        let before = audit_count(&c).await;
        let a = c
            .get_as(&psych, &format!("/fhir/Observation?_id={hiv},{plain}"))
            .await;
        assert_eq!(total(&a), 2, "{backend}");
        assert_eq!(
            last_labels(&c, before).await,
            (vec!["HIV".to_owned()], Allowed),
            "{backend}"
        );
        // The same search by whom the labels are not granted returns, and records, neither.
        let before = audit_count(&c).await;
        let a = c
            .get_as(&gp, &format!("/fhir/Observation?_id={hiv},{plain}"))
            .await;
        assert_eq!(total(&a), 1, "{backend}");
        assert_eq!(
            last_labels(&c, before).await,
            (vec![], Allowed),
            "{backend}"
        );

        // `$everything` returns them all to psych; to gp it leaves them out, and its entry
        // claims none of their labels.
        let before = audit_count(&c).await;
        let a = c
            .get_as(&psych, &format!("/fhir/Patient/{pid}/$everything"))
            .await;
        assert_eq!(a.status, StatusCode::OK, "{a:?}");
        let want = vec!["HIV".to_owned(), "PSY".to_owned()];
        assert_eq!(last_labels(&c, before).await, (want, Allowed), "{backend}");
        let before = audit_count(&c).await;
        let a = c
            .get_as(&gp, &format!("/fhir/Patient/{pid}/$everything"))
            .await;
        assert_eq!(total(&a), 2, "{backend}");
        assert_eq!(
            last_labels(&c, before).await,
            (vec![], Allowed),
            "{backend}"
        );

        // A refused read of a labelled resource records its label in the denial.
        let before = audit_count(&c).await;
        c.get_as(&gp, &format!("/fhir/Observation/{psy}"))
            .await
            .assert_denied("label-not-granted");
        assert_eq!(
            last_labels(&c, before).await,
            (vec!["PSY".to_owned()], Denied),
            "{backend}"
        );
    }
}
