//! Authentication: TOTP for patients and staff, login refusals that reveal no account, client
//! credentials and their scopes and revocation, per-address limits behind trusted proxies.

use super::*;

/// Patients may enrol TOTP from a normal session; with the setting that requires it, a
/// patient's first session can only enrol, and afterwards a code is needed.
#[tokio::test]
async fn patients_can_use_and_be_required_to_use_totp() {
    let mut c = ctx().await;
    c.user("pat.voluntary", Role::Patient).await;
    let (token, code) = c.session_with_code("pat.voluntary").await;
    assert!(code.is_none());
    let a = c
        .post_json(
            Some(&token),
            "/auth/totp/enroll",
            &json!({}),
            "pat.voluntary",
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");

    c.state.accounts = c.state.accounts.clone().with_patient_totp_required(true);
    c.user("pat.required", Role::Patient).await;
    let (_, code) = c.session_with_code("pat.required").await;
    assert!(code.is_some(), "the patient had to enrol");
    let a = c
        .login(json!({ "username": "pat.required", "password": PASSWORD }))
        .await;
    a.assert_outcome(StatusCode::UNAUTHORIZED, "login");
}

#[tokio::test]
async fn login_refusals_say_which_without_revealing_accounts() {
    let c = ctx().await;
    c.user("nurse", Role::Clinician).await;
    // Unknown user and wrong password: the same 401.
    let unknown = c
        .login(json!({ "username": "nobody", "password": PASSWORD }))
        .await;
    let wrong = c
        .login(json!({ "username": "nurse", "password": "not-the-password-1" }))
        .await;
    for a in [&unknown, &wrong] {
        a.assert_outcome(StatusCode::UNAUTHORIZED, "login");
        assert_eq!(a.diagnostics(), "authentication failed");
    }
    assert_eq!(unknown.body, wrong.body);

    // Enrolled staff: the right password alone answers like a wrong one (no password
    // oracle); a replayed code is refused.
    let (_, code) = c.session_with_code("nurse").await;
    let code = code.expect("staff enrol TOTP");
    let a = c
        .login(json!({ "username": "nurse", "password": PASSWORD }))
        .await;
    a.assert_outcome(StatusCode::UNAUTHORIZED, "login");
    assert_eq!(a.diagnostics(), "authentication failed");
    assert_eq!(a.body, wrong.body);
    let a = c
        .login(json!({ "username": "nurse", "password": PASSWORD, "totp": code }))
        .await;
    a.assert_outcome(StatusCode::UNAUTHORIZED, "login");
    assert_eq!(a.diagnostics(), "authentication failed");
    let a = c
        .login(json!({ "username": "nurse", "password": PASSWORD, "totp": "000000x" }))
        .await;
    assert_eq!(a.diagnostics(), "authentication failed");

    // Malformed bodies: 400/415, never echoing a value.
    let a = c.login(json!({ "username": "nurse" })).await;
    a.assert_outcome(StatusCode::BAD_REQUEST, "value");
    let a = c
        .login(json!({ "username": "nurse", "password": PASSWORD, "otp": "1" }))
        .await;
    a.assert_outcome(StatusCode::BAD_REQUEST, "value");
    let mut req = Request::post("/auth/login")
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from("x"))
        .unwrap();
    req.extensions_mut().insert(ConnectInfo(address_of("x")));
    c.send(req)
        .await
        .assert_outcome(StatusCode::UNSUPPORTED_MEDIA_TYPE, "not-supported");
}

#[tokio::test]
async fn client_credentials_scopes_and_revocation() {
    let c = ctx().await;
    let (pid, _) = c.create(&patient("Scoped")).await;
    let (oid, _) = c.create(&observation(&pid)).await;
    let (id, secret) = c
        .client("reader", "system/Patient.rs system/Observation.rs", None)
        .await;

    // Client authentication: HTTP Basic or in the form; a wrong secret is invalid_client.
    let a = c
        .form(
            "/oauth/token",
            &format!("grant_type=client_credentials&client_id={id}&client_secret={secret}"),
            None,
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    let v = a.json();
    assert_eq!(v["token_type"], "Bearer");
    assert!(
        v["expires_in"].as_i64().is_some_and(|s| s > 0 && s <= 3600),
        "{v}"
    );
    assert_eq!(a.header("cache-control"), Some("no-store"));
    let a = c
        .form(
            "/oauth/token",
            "grant_type=client_credentials",
            Some((&id, "pvc_wrong")),
        )
        .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{a:?}");
    assert_eq!(a.json()["error"], "invalid_client");
    let a = c
        .form(
            "/oauth/token",
            "grant_type=client_credentials",
            Some(("no-such", &secret)),
        )
        .await;
    assert_eq!(a.json()["error"], "invalid_client");
    let a = c
        .form("/oauth/token", "grant_type=password", Some((&id, &secret)))
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{a:?}");
    assert_eq!(a.json()["error"], "unsupported_grant_type");
    let a = c
        .form(
            "/oauth/token",
            "grant_type=client_credentials&scope=patient/",
            Some((&id, &secret)),
        )
        .await;
    assert_eq!(a.json()["error"], "invalid_scope", "{a:?}");

    // Narrowed scope: the token carries only what was asked for.
    let narrow = c
        .client_token(&id, &secret, Some("system/Observation.rs"))
        .await;
    let a = c.get_as(&narrow, &format!("/fhir/Observation/{oid}")).await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    let a = c.get_as(&narrow, &format!("/fhir/Patient/{pid}")).await;
    a.assert_denied("scope-too-narrow");
    // ... and the same for a Patient that does not exist.
    let missing = c.get_as(&narrow, "/fhir/Patient/never-was").await;
    missing.assert_denied("scope-too-narrow");
    // Writing needs c/u/d.
    let a = c
        .json_as(
            &narrow,
            Method::POST,
            "/fhir/Observation",
            &observation(&pid),
        )
        .await;
    a.assert_denied("scope-too-narrow");
    // A scope beyond the registration is not granted.
    let a = c
        .form(
            "/oauth/token",
            "grant_type=client_credentials&scope=system/*.cruds",
            Some((&id, &secret)),
        )
        .await;
    match a.status {
        StatusCode::BAD_REQUEST => assert_eq!(a.json()["error"], "invalid_scope"),
        StatusCode::OK => {
            let granted = a.json()["scope"].as_str().unwrap().to_owned();
            assert!(!granted.contains("cruds"), "{granted}");
        }
        other => panic!("{other}: {a:?}"),
    }

    // Revocation: only the client's own tokens, always 200.
    let full = c.client_token(&id, &secret, None).await;
    let (other_id, other_secret) = c.client("other", "system/*.rs", None).await;
    let a = c
        .form(
            "/oauth/revoke",
            &format!("token={full}"),
            Some((&other_id, &other_secret)),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    assert_eq!(
        c.get_as(&full, &format!("/fhir/Patient/{pid}"))
            .await
            .status,
        StatusCode::OK
    );
    let a = c
        .form(
            "/oauth/revoke",
            &format!("token={full}"),
            Some((&id, "pvc_wrong")),
        )
        .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{a:?}");
    let a = c
        .form(
            "/oauth/revoke",
            &format!("token={full}"),
            Some((&id, &secret)),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    let a = c.get_as(&full, &format!("/fhir/Patient/{pid}")).await;
    a.assert_outcome(StatusCode::UNAUTHORIZED, "login");
    assert_eq!(a.diagnostics(), "authentication failed");
    let a = c
        .form("/oauth/revoke", "token=pva_nonsense", Some((&id, &secret)))
        .await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");

    // A patient-scoped app reaches its launch patient only.
    let (other_pid, _) = c.create(&patient("Elsewhere")).await;
    let (pid2, psecret) = c.client("portal", "patient/*.rs", Some(&pid)).await;
    let portal = c.client_token(&pid2, &psecret, None).await;
    assert_eq!(
        c.get_as(&portal, &format!("/fhir/Observation/{oid}"))
            .await
            .status,
        StatusCode::OK
    );
    c.get_as(&portal, &format!("/fhir/Patient/{other_pid}"))
        .await
        .assert_denied("scope-too-narrow");
    assert_eq!(total(&c.get_as(&portal, "/fhir/Patient").await), 1);
    assert_eq!(total(&c.get_as(&portal, "/fhir/Observation").await), 1);
}

/// Behind a reverse proxy every request arrives from the proxy: successful token requests
/// must not count, and with `trusted_proxies` each client behind the proxy (by
/// `X-Forwarded-For`) has its own bucket, while a direct client cannot escape its bucket by
/// sending the header.
#[tokio::test]
async fn address_limits_count_failures_per_client_behind_trusted_proxies() {
    let mut c = ctx().await;
    c.state = c
        .state
        .clone()
        .with_trusted_proxies(vec!["10.0.0.0/8".parse().unwrap()]);
    let (id, secret) = c.client("behind.proxy", "system/Patient.rs", None).await;
    let token = |peer: [u8; 4], xff: Option<&str>, secret: &str| {
        let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"));
        let mut b = Request::post("/oauth/token")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::AUTHORIZATION, format!("Basic {encoded}"));
        if let Some(xff) = xff {
            b = b.header("x-forwarded-for", xff);
        }
        let mut req = b.body(Body::from("grant_type=client_credentials")).unwrap();
        req.extensions_mut()
            .insert(ConnectInfo(SocketAddr::from((peer, 40000))));
        req
    };
    let proxy = [10, 0, 0, 1];
    // Thirty successes through the proxy (the limit is 20 attempts per 5 minutes).
    for i in 0..30 {
        let a = c.send(token(proxy, Some("198.51.100.1"), &secret)).await;
        assert_eq!(a.status, StatusCode::OK, "#{i}: {a:?}");
    }
    // Another client behind the proxy guesses secrets until it is throttled...
    let mut last = StatusCode::OK;
    for _ in 0..21 {
        last = c
            .send(token(proxy, Some("1.1.1.1, 198.51.100.66"), "pvc_guess"))
            .await
            .status;
    }
    assert_eq!(last, StatusCode::TOO_MANY_REQUESTS);
    // ... which neither locks out the first client nor the proxy's own requests.
    let a = c.send(token(proxy, Some("198.51.100.1"), &secret)).await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    let a = c.send(token(proxy, None, &secret)).await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    // A direct (untrusted) client's X-Forwarded-For is ignored: changing it does not give
    // a fresh bucket.
    let direct = [203, 0, 113, 9];
    for i in 0..20u8 {
        let xff = format!("192.0.2.{i}");
        let a = c.send(token(direct, Some(&xff), "pvc_guess")).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "#{i}: {a:?}");
    }
    let a = c.send(token(direct, Some("192.0.2.200"), &secret)).await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS, "{a:?}");
}

#[tokio::test]
async fn token_requests_are_limited_per_address() {
    let c = ctx().await;
    let (id, _secret) = c.client("guesser", "system/Patient.rs", None).await;
    // Guessing a client secret from one address: refused, then throttled.
    let mut statuses = Vec::new();
    for _ in 0..25 {
        let a = c
            .form(
                "/oauth/token",
                "grant_type=client_credentials",
                Some((&id, "pvc_guess")),
            )
            .await;
        statuses.push(a.status);
    }
    assert_eq!(statuses[0], StatusCode::UNAUTHORIZED);
    let last = statuses.last().copied().unwrap();
    assert_eq!(last, StatusCode::TOO_MANY_REQUESTS, "{statuses:?}");
    // The same limit holds for revocation requests from that address.
    let a = c
        .form("/oauth/revoke", "token=pva_x", Some((&id, "pvc_guess")))
        .await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS, "{a:?}");
}
