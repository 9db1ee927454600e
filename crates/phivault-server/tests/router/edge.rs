//! HTTP edge: tokens on every route, routing and body errors as OperationOutcomes, hostile input,
//! HTTPS only off loopback, no PHI or token in logs, the CapabilityStatement and the SMART
//! configuration.

use super::*;

#[tokio::test]
async fn every_route_needs_a_valid_token() {
    let c = ctx().await;
    for uri in [
        "/fhir/Patient",
        "/fhir/Patient/x",
        "/fhir/Patient/x/_history",
        "/admin/break-glass",
        "/nowhere",
    ] {
        let a = c.send(Request::get(uri).body(Body::empty()).unwrap()).await;
        a.assert_outcome(StatusCode::UNAUTHORIZED, "login");
        assert_eq!(a.diagnostics(), "authentication failed");
        assert_eq!(
            a.header("www-authenticate"),
            Some("Bearer realm=\"phivault\"")
        );
        assert_security_headers(&a);

        // Unknown, malformed, or another scheme: the same answer, with invalid_token.
        for value in [
            "Bearer pvb_00".to_owned(),
            "Bearer pva_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".to_owned(),
            format!("Basic {}", c.token),
        ] {
            let a = c
                .send(
                    Request::get(uri)
                        .header(header::AUTHORIZATION, value)
                        .body(Body::empty())
                        .unwrap(),
                )
                .await;
            a.assert_outcome(StatusCode::UNAUTHORIZED, "login");
            assert_eq!(a.diagnostics(), "authentication failed");
            assert_eq!(
                a.header("www-authenticate"),
                Some("Bearer realm=\"phivault\", error=\"invalid_token\"")
            );
        }
    }
    // A body is not read before authentication: an oversized unauthenticated POST is a 401.
    let a = c
        .send(
            Request::post("/fhir/Patient")
                .header(header::CONTENT_TYPE, "application/fhir+json")
                .body(Body::from(vec![b' '; MAX_BODY * 2]))
                .unwrap(),
        )
        .await;
    a.assert_outcome(StatusCode::UNAUTHORIZED, "login");

    // What needs no token: the CapabilityStatement and SMART discovery.
    for uri in [
        "/fhir/metadata",
        "/.well-known/smart-configuration",
        "/fhir/.well-known/smart-configuration",
    ] {
        let a = c.send(Request::get(uri).body(Body::empty()).unwrap()).await;
        assert_eq!(a.status, StatusCode::OK, "{uri}: {a:?}");
        assert_security_headers(&a);
    }
}

#[tokio::test]
async fn tokens_expire_and_are_revoked() {
    let c = ctx().await;
    let (pid, _) = c.create(&patient("Expiry")).await;
    let uri = format!("/fhir/Patient/{pid}");
    let patient_token = {
        c.user("pat", Role::Patient).await;
        c.state
            .accounts
            .link_patient("pat", &Id::parse(&pid).unwrap(), &NoAudit)
            .await
            .unwrap();
        c.session("pat").await
    };
    assert_eq!(c.get_as(&patient_token, &uri).await.status, StatusCode::OK);

    // Logout revokes the session it is made with.
    let a = c
        .send(
            c.req_as(&patient_token, Method::POST, "/auth/logout")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT, "{a:?}");
    let a = c.get_as(&patient_token, &uri).await;
    a.assert_outcome(StatusCode::UNAUTHORIZED, "login");
    assert_eq!(a.diagnostics(), "authentication failed");
    assert_eq!(
        a.header("www-authenticate"),
        Some("Bearer realm=\"phivault\", error=\"invalid_token\"")
    );

    // Expired tokens: the same answer. Accounts on a fake clock issue the tokens.
    let clock = Arc::new(FixedClock::new(i64::try_from(now_unix()).unwrap()));
    let mut c = c;
    c.state.accounts = Accounts::with_hasher(
        c.state.store.clone(),
        PasswordHasher::with_params(8, 1, 1).unwrap(),
    )
    .with_clock(clock.clone());
    let (id, secret) = c.client("short", "system/*.rs", None).await;
    let access = c.client_token(&id, &secret, None).await;
    let session = c.session("pat").await;
    assert_eq!(c.get_as(&access, &uri).await.status, StatusCode::OK);
    clock.advance(15 * 60 + 1);
    let a = c.get_as(&access, &uri).await;
    a.assert_outcome(StatusCode::UNAUTHORIZED, "login");
    assert_eq!(a.diagnostics(), "authentication failed");
    assert_eq!(c.get_as(&session, &uri).await.status, StatusCode::OK);
    clock.advance(8 * 3600);
    let a = c.get_as(&session, &uri).await;
    a.assert_outcome(StatusCode::UNAUTHORIZED, "login");
    assert_eq!(a.diagnostics(), "authentication failed");
}

#[tokio::test]
async fn routing_errors_are_operation_outcomes() {
    let c = ctx().await;
    let a = c.get("/fhir/Patients").await;
    a.assert_outcome(StatusCode::NOT_FOUND, "not-supported");
    assert_security_headers(&a);

    let a = c.get("/fhir/Patient/a_b").await;
    a.assert_outcome(StatusCode::BAD_REQUEST, "invalid");
    let a = c.get(&format!("/fhir/Patient/{}", "a".repeat(65))).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{a:?}");

    for v in ["0", "x", "-1", "1.5"] {
        let a = c.get(&format!("/fhir/Patient/abc/_history/{v}")).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{v}: {a:?}");
    }

    let a = c.get("/somewhere/else").await;
    a.assert_outcome(StatusCode::NOT_FOUND, "not-found");
    let a = c.get("/fhir/Patient/abc/_history/1/extra").await;
    a.assert_outcome(StatusCode::NOT_FOUND, "not-found");

    let a = c
        .send(
            c.req(Method::PATCH, "/fhir/Patient/abc")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    a.assert_outcome(StatusCode::METHOD_NOT_ALLOWED, "not-supported");
    assert!(
        a.header("allow").is_some_and(|v| v.contains("PUT")),
        "{a:?}"
    );
    assert_security_headers(&a);

    let a = c
        .send(
            c.req(Method::DELETE, "/fhir/metadata")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    a.assert_outcome(StatusCode::METHOD_NOT_ALLOWED, "not-supported");
}

#[tokio::test]
async fn bodies_need_json_and_a_bounded_size() {
    let c = ctx().await;
    let body = patient("Smith").to_string();
    for ct in [None, Some("text/plain"), Some("application/xml")] {
        let mut b = c.req(Method::POST, "/fhir/Patient");
        if let Some(ct) = ct {
            b = b.header(header::CONTENT_TYPE, ct);
        }
        let a = c.send(b.body(Body::from(body.clone())).unwrap()).await;
        a.assert_outcome(StatusCode::UNSUPPORTED_MEDIA_TYPE, "not-supported");
    }
    // application/json with a charset is fine.
    let a = c
        .send(
            c.req(Method::POST, "/fhir/Patient")
                .header(header::CONTENT_TYPE, "application/json; charset=utf-8")
                .body(Body::from(body))
                .unwrap(),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{a:?}");

    // Too large: declared by Content-Length, and streamed without it.
    let big = vec![b' '; MAX_BODY + 1];
    let a = c
        .send(
            c.req(Method::POST, "/fhir/Patient")
                .header(header::CONTENT_TYPE, "application/fhir+json")
                .header(header::CONTENT_LENGTH, big.len())
                .body(Body::from(big.clone()))
                .unwrap(),
        )
        .await;
    a.assert_outcome(StatusCode::PAYLOAD_TOO_LARGE, "too-long");
    let stream = futures::stream::iter(
        big.chunks(1000)
            .map(|c| Ok::<_, std::io::Error>(axum::body::Bytes::copy_from_slice(c)))
            .collect::<Vec<_>>(),
    );
    let a = c
        .send(
            c.req(Method::PUT, "/fhir/Patient/abc")
                .header(header::CONTENT_TYPE, "application/fhir+json")
                .body(Body::from_stream(stream))
                .unwrap(),
        )
        .await;
    a.assert_outcome(StatusCode::PAYLOAD_TOO_LARGE, "too-long");

    // Malformed JSON: 400 without echoing the body.
    let a = c
        .send(
            c.req(Method::POST, "/fhir/Patient")
                .header(header::CONTENT_TYPE, "application/fhir+json")
                .body(Body::from("{\"resourceType\": \"Patient\", SECRETVALUE"))
                .unwrap(),
        )
        .await;
    a.assert_outcome(StatusCode::BAD_REQUEST, "structure");
    assert!(!String::from_utf8_lossy(&a.body).contains("SECRETVALUE"));

    // Invalid resource: 422 with the element's path, not its value.
    let mut bad = patient("Smith");
    bad["birthDate"] = json!("SECRET-not-a-date");
    let a = c.json(Method::POST, "/fhir/Patient", &bad).await;
    let o = a.assert_outcome(StatusCode::UNPROCESSABLE_ENTITY, "value");
    assert!(o.to_string().contains("birthDate"), "{a:?}");
    assert!(!o.to_string().contains("SECRET"), "{a:?}");

    // Wrong resourceType for the URL.
    let a = c
        .json(Method::POST, "/fhir/Observation", &patient("Smith"))
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{a:?}");
}

/// Input that once answered 500: offsets past the databases' 64-bit range, a thousand
/// repeated search parameters; and JSON with a key twice, which was read as its last value
/// (a second `resourceType` created the second type). All are 400 now and change nothing.
#[tokio::test]
async fn hostile_input_answers_400_not_500() {
    let c = ctx().await;
    for offset in ["9223372036854775808", "18446744073709551615", "1000000001"] {
        let a = c.get(&format!("/fhir/Patient?_offset={offset}")).await;
        a.assert_outcome(StatusCode::BAD_REQUEST, "invalid");
    }
    let repeated = vec!["family=smith"; 1_100].join("&");
    let a = c.get(&format!("/fhir/Patient?{repeated}")).await;
    a.assert_outcome(StatusCode::BAD_REQUEST, "invalid");
    let a = c.get("/fhir/Patient?_offset=1000000000").await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");

    let twice = r#"{"resourceType":"Patient","name":[{"family":"Twice"}],"resourceType":"Observation","status":"final","code":{"text":"x"}}"#;
    for uri in ["/fhir/Patient", "/fhir/Observation", "/fhir/Patient/twice1"] {
        let method = if uri.ends_with("twice1") {
            Method::PUT
        } else {
            Method::POST
        };
        let a = c
            .send(
                c.req(method, uri)
                    .header(header::CONTENT_TYPE, "application/fhir+json")
                    .body(Body::from(twice))
                    .unwrap(),
            )
            .await;
        a.assert_outcome(StatusCode::BAD_REQUEST, "structure");
        assert!(
            String::from_utf8_lossy(&a.body).contains("duplicate"),
            "{a:?}"
        );
    }
    // A transaction bundle with a duplicate key inside an entry is refused whole.
    let bundle = r#"{"resourceType":"Bundle","type":"transaction","entry":[{"resource":{"resourceType":"Patient","id":"a","id":"b"},"request":{"method":"POST","url":"Patient"}}]}"#;
    let a = c
        .send(
            c.req(Method::POST, "/fhir")
                .header(header::CONTENT_TYPE, "application/fhir+json")
                .body(Body::from(bundle))
                .unwrap(),
        )
        .await;
    a.assert_outcome(StatusCode::BAD_REQUEST, "structure");
    assert_eq!(total(&c.get("/fhir/Observation").await), 0);
    assert_eq!(total(&c.get("/fhir/Patient").await), 0);

    // Login bodies: a second `password` must not replace the first.
    c.user("dupe.keys", Role::Patient).await;
    let body = format!(
        r#"{{"username":"dupe.keys","password":"wrong password here","password":"{PASSWORD}"}}"#
    );
    let mut req = Request::post("/auth/login")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .unwrap();
    req.extensions_mut()
        .insert(ConnectInfo(address_of("dupe.keys")));
    let a = c.send(req).await;
    a.assert_outcome(StatusCode::BAD_REQUEST, "value");
    assert!(
        String::from_utf8_lossy(&a.body).contains("duplicate key"),
        "{a:?}"
    );
    assert!(!String::from_utf8_lossy(&a.body).contains(PASSWORD));
}

#[tokio::test]
async fn metadata_is_a_capability_statement() {
    let c = ctx().await;
    // Published without a token: it states the security.
    let a = c
        .send(Request::get("/fhir/metadata").body(Body::empty()).unwrap())
        .await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    assert_security_headers(&a);
    let cs = a.json();
    assert_eq!(cs["resourceType"], "CapabilityStatement");
    assert_eq!(cs["fhirVersion"], "4.0.1");
    assert_eq!(cs["kind"], "instance");
    assert_eq!(cs["format"], json!(["json"]));
    assert_eq!(cs["implementation"]["url"], BASE);
    let rest = &cs["rest"][0];
    assert_eq!(rest["mode"], "server");
    let security = &rest["security"];
    assert_eq!(security["cors"], false);
    assert_eq!(
        security["service"][0]["coding"][0],
        json!({
            "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
            "code": "SMART-on-FHIR",
            "display": "SMART-on-FHIR",
        })
    );
    let oauth = security["extension"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| {
            e["url"] == "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
        })
        .expect("the oauth-uris extension");
    let uri_of = |name: &str| {
        oauth["extension"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["url"] == name)
            .map(|e| e["valueUri"].clone())
    };
    assert_eq!(
        uri_of("token"),
        Some(json!("https://127.0.0.1:8443/oauth/token"))
    );
    assert_eq!(
        uri_of("revoke"),
        Some(json!("https://127.0.0.1:8443/oauth/revoke"))
    );
    assert_eq!(
        uri_of("authorize"),
        Some(json!("https://127.0.0.1:8443/oauth/authorize"))
    );
    assert_eq!(
        uri_of("introspect"),
        Some(json!("https://127.0.0.1:8443/oauth/introspect"))
    );
    let description = security["description"].as_str().unwrap();
    for claim in [
        "TLS",
        "Bearer",
        "Cedar",
        "default deny",
        "X-Purpose-Of-Use",
        "meta.security",
        "Break-the-glass",
        "X-Break-Glass-Reason",
    ] {
        assert!(description.contains(claim), "{claim}: {description}");
    }
    let patient = rest["resource"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "Patient")
        .expect("Patient is listed");
    let params: Vec<&str> = patient["searchParam"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert!(params.contains(&"_id"));
    assert!(params.contains(&"family"), "{params:?}");
    let interactions: Vec<&str> = patient["interaction"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["code"].as_str().unwrap())
        .collect();
    for i in [
        "read",
        "vread",
        "update",
        "delete",
        "history-instance",
        "create",
        "search-type",
    ] {
        assert!(interactions.contains(&i), "{i}");
    }
    assert!(!interactions.contains(&"history-type"));
}

#[tokio::test]
async fn serves_https_and_refuses_plain_http_off_loopback() {
    let c = ctx().await;
    let dir = tempfile::tempdir().unwrap();
    let certs = phivault_server::tls::ensure_certificates(&dir.path().join("tls")).unwrap();

    let config = ServerConfig {
        listen: "0.0.0.0:0".parse().unwrap(),
        transport: Transport::InsecureHttp,
        base_url: "http://0.0.0.0:0/fhir".to_owned(),
        max_body_bytes: MAX_BODY,
        limits: phivault_server::ConnectionLimits::default(),
        node: phivault_server::NodeSettings::default(),
    };
    let refused = phivault_server::serve(config, c.state.clone(), async {}).await;
    assert!(
        matches!(refused, Err(ServerError::Config(_))),
        "{refused:?}"
    );

    // A free port (the listening line with the real port is the CLI tests' business).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let config = ServerConfig {
        listen: format!("127.0.0.1:{port}").parse().unwrap(),
        transport: Transport::Tls {
            cert: certs.cert.clone(),
            key: certs.key.clone(),
        },
        base_url: format!("https://127.0.0.1:{port}/fhir"),
        max_body_bytes: MAX_BODY,
        limits: phivault_server::ConnectionLimits::default(),
        node: phivault_server::NodeSettings::default(),
    };
    let server = tokio::spawn(phivault_server::serve(
        config,
        c.state.clone(),
        async move {
            let _ = stopped.await;
        },
    ));

    let ca = reqwest::Certificate::from_pem(&std::fs::read(&certs.ca).unwrap()).unwrap();
    let client = reqwest::Client::builder()
        .tls_certs_only([ca])
        .no_proxy()
        .build()
        .unwrap();
    let mut answer = None;
    for _ in 0..200 {
        match client
            .get(format!("https://localhost:{port}/fhir/Patient/x"))
            .send()
            .await
        {
            Ok(r) => {
                answer = Some(r);
                break;
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(25)).await,
        }
    }
    let r = answer.expect("the server answers over HTTPS");
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.headers()["content-type"],
        "application/fhir+json; charset=utf-8"
    );
    let r = client
        .get(format!("https://127.0.0.1:{port}/no/such/path"))
        .bearer_auth(&c.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["strict-transport-security"], "max-age=31536000");
    // Login sees the client's address (connection info is wired): a refusal, not a 500.
    let r = client
        .post(format!("https://127.0.0.1:{port}/auth/login"))
        .header("content-type", "application/json")
        .body(json!({ "username": "nobody", "password": PASSWORD }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    stop.send(()).unwrap();
    let served = tokio::time::timeout(std::time::Duration::from_secs(40), server)
        .await
        .expect("serve returns after shutdown")
        .unwrap();
    assert!(served.is_ok(), "{served:?}");

    // Plain HTTP on loopback: connection info is wired there too.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let config = ServerConfig {
        listen: format!("127.0.0.1:{port}").parse().unwrap(),
        transport: Transport::InsecureHttp,
        base_url: format!("http://127.0.0.1:{port}/fhir"),
        max_body_bytes: MAX_BODY,
        limits: phivault_server::ConnectionLimits::default(),
        node: phivault_server::NodeSettings::default(),
    };
    let server = tokio::spawn(phivault_server::serve(
        config,
        c.state.clone(),
        async move {
            let _ = stopped.await;
        },
    ));
    let plain = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut answer = None;
    for _ in 0..200 {
        match plain
            .post(format!("http://127.0.0.1:{port}/auth/login"))
            .header("content-type", "application/json")
            .body(json!({ "username": "nobody", "password": PASSWORD }).to_string())
            .send()
            .await
        {
            Ok(r) => {
                answer = Some(r);
                break;
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(25)).await,
        }
    }
    assert_eq!(answer.expect("the server answers over HTTP").status(), 401);
    stop.send(()).unwrap();
    let served = tokio::time::timeout(std::time::Duration::from_secs(40), server)
        .await
        .expect("serve returns after shutdown")
        .unwrap();
    assert!(served.is_ok(), "{served:?}");
}

#[tokio::test]
async fn logs_hold_no_phi_and_no_token() {
    let logs = LogBuffer::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(logs.clone())
        .finish();
    // Global, not scoped: the tests of this binary run on several threads and a scoped
    // subscriber misses events whose callsites another thread registered first. Other tests'
    // lines land here too; only this test's marker and token are looked for.
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let c = ctx().await;
    let marker = format!("Zqx{}", uuid::Uuid::new_v4().simple());
    let (id, _) = c.create(&patient(&marker)).await;
    let a = c.get(&format!("/fhir/Patient?family={marker}")).await;
    assert_eq!(a.json()["total"], 1, "{a:?}");
    let a = c
        .send(
            c.req(Method::POST, "/fhir/Patient/_search")
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from(format!("family={marker}")))
                .unwrap(),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    let mut bad = patient(&marker);
    bad["birthDate"] = json!(marker.clone());
    let a = c.json(Method::POST, "/fhir/Patient", &bad).await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{a:?}");
    let a = c
        .send(
            c.req(Method::POST, "/fhir/Patient")
                .header(header::CONTENT_TYPE, "application/fhir+json")
                .body(Body::from(format!("{{\"name\": {marker}")))
                .unwrap(),
        )
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{a:?}");
    let a = c.get(&format!("/fhir/Patient?{marker}=1")).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{a:?}");
    let a = c
        .send(
            Request::get(format!("/fhir/Patient/{id}"))
                .header(header::AUTHORIZATION, format!("Bearer {}x", c.token))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);

    // People: login with TOTP, a break-the-glass read with a reason that must stay out of
    // the log, an admin call.
    let admin = c.person("admin", Role::Admin).await;
    c.user("doc", Role::Clinician).await;
    let (doc, code) = c.session_with_code("doc").await;
    let reason = format!("Rsn{}", uuid::Uuid::new_v4().simple());
    let a = c
        .send(
            c.req_as(&doc, Method::GET, &format!("/fhir/Patient/{id}"))
                .header("x-purpose-of-use", "ETREAT")
                .header("x-break-glass-reason", reason.as_str())
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    let a = c.get_as(&admin, "/admin/break-glass").await;
    assert!(String::from_utf8_lossy(&a.body).contains(&reason), "{a:?}");
    let a = c
        .login(json!({ "username": "doc", "password": "wrong-password-123456" }))
        .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{a:?}");

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        text.contains("/fhir/{type}"),
        "the route template is logged:\n{text}"
    );
    assert!(text.contains(&c.app_id), "the principal is logged:\n{text}");
    assert!(!text.contains(&marker), "PHI in the log:\n{text}");
    assert!(
        !text.contains(&c.token[4..]),
        "the token in the log:\n{text}"
    );
    for secret in [
        &doc[4..],
        &admin[4..],
        PASSWORD,
        "wrong-password-123456",
        reason.as_str(),
    ] {
        assert!(!text.contains(secret), "a secret in the log:\n{text}");
    }
    if let Some(code) = code {
        assert!(
            !text.contains(&format!("\"{code}\"")),
            "a TOTP code in the log"
        );
    }
}

#[tokio::test]
async fn smart_configuration_is_truthful() {
    let c = ctx().await;
    let a = c
        .send(
            Request::get("/.well-known/smart-configuration")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    assert_eq!(a.header("content-type"), Some("application/json"));
    let v = a.json();
    assert_eq!(v["token_endpoint"], "https://127.0.0.1:8443/oauth/token");
    assert_eq!(
        v["revocation_endpoint"],
        "https://127.0.0.1:8443/oauth/revoke"
    );
    assert_eq!(
        v["grant_types_supported"],
        json!(["authorization_code", "refresh_token", "client_credentials"])
    );
    assert_eq!(
        v["token_endpoint_auth_methods_supported"],
        json!([
            "client_secret_basic",
            "client_secret_post",
            "private_key_jwt",
            "none"
        ])
    );
    assert_eq!(v["code_challenge_methods_supported"], json!(["S256"]));
    assert_eq!(
        v["authorization_endpoint"],
        "https://127.0.0.1:8443/oauth/authorize"
    );
    let capabilities = v["capabilities"].as_array().unwrap();
    for capability in [
        "launch-standalone",
        "launch-ehr",
        "client-public",
        "client-confidential-symmetric",
        "client-confidential-asymmetric",
        "context-standalone-patient",
        "permission-v2",
        "permission-offline",
        "sso-openid-connect",
    ] {
        assert!(capabilities.contains(&json!(capability)), "{capability}");
    }
    let scopes = v["scopes_supported"].as_array().unwrap();
    assert!(scopes.iter().any(|s| s == "system/*.rs"), "{v}");
    // The OpenID Connect discovery document agrees on the issuer and keys.
    let o = c
        .send(
            Request::get("/fhir/.well-known/openid-configuration")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(o.status, StatusCode::OK, "{o:?}");
    let o = o.json();
    assert_eq!(o["issuer"], "https://127.0.0.1:8443/fhir");
    assert_eq!(o["jwks_uri"], v["jwks_uri"]);
    let scopes: Vec<&Value> = scopes
        .iter()
        .filter(|s| s.as_str().unwrap().contains('/') && !s.as_str().unwrap().starts_with("launch"))
        .collect();
    // Every advertised scope can be registered and requested.
    for scope in scopes {
        let (id, secret) = c.client("s", scope.as_str().unwrap(), Some("p1")).await;
        c.client_token(&id, &secret, None).await;
    }
}
