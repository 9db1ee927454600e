//! The people pages over the router, signed in by cookie: who may see and change what, a
//! generated password and client secrets shown once and working, disabling, break-the-glass
//! reviews (once, audited with the patient), alerts and a breach report; each change with
//! exactly the request's audit entry.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use base64::Engine as _;
use phivault_audit::Outcome;
use phivault_auth::{LoginRequest, LoginStep, Password};
use phivault_fhir::Id;
use phivault_policy::Role;
use phivault_store::NoAudit;
use serde_json::{Value, json};

use crate::web::test_support::{Ctx, ctx};

#[tokio::test]
async fn the_pages_are_for_administrators_and_auditors_who_read_only() {
    let c = ctx().await;
    let pages = [
        "/admin/console/users",
        "/admin/console/clients",
        "/admin/console/break-glass",
        "/admin/console/alerts",
        "/admin/console/breach",
    ];
    for page in pages {
        let a = c
            .send(Request::get(page).body(Body::empty()).unwrap())
            .await;
        assert_eq!(a.status, StatusCode::SEE_OTHER, "{page}: {a:?}");
        assert_eq!(
            a.location(),
            format!("/signin?next={}", urlencoding::encode(page))
        );
    }
    let doc = c.new_session("doc", Role::Clinician).await;
    let a = c.page(&doc, "/admin/console/users").await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{a:?}");

    let auditor = c.new_session("audrey", Role::Auditor).await;
    for page in pages {
        let a = c.page(&auditor, page).await;
        assert_eq!(a.status, StatusCode::OK, "{page}: {a:?}");
        assert!(a.text().contains("aria-current=\"page\""), "{page}");
    }
    let a = c.page(&auditor, "/admin/console/users").await;
    assert!(
        a.text().contains("audrey") && a.text().contains("doc"),
        "{a:?}"
    );
    assert!(!a.text().contains("action=\"/admin/console/users\""));
    // An auditor's change is refused, audited as such, and changes nothing.
    let seq = c.audit_seq().await;
    let a = c
        .post(
            &auditor,
            "/admin/console/users",
            &[("username", "sneaky"), ("role", "admin")],
        )
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{a:?}");
    assert!(a.text().contains("Only administrators"));
    c.one_entry(seq, "POST /admin/console/users", Outcome::Denied)
        .await;
    assert!(
        c.state
            .store
            .user_by_username("sneaky")
            .await
            .unwrap()
            .is_none()
    );

    // A post without the CSRF field is refused before anything else.
    let admin = c.new_session("root", Role::Admin).await;
    let req = Request::post("/admin/console/users")
        .header(header::COOKIE, Ctx::cookies(&admin))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from("username=sneaky&role=admin"))
        .unwrap();
    let a = c.send(req).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{a:?}");
    assert!(
        c.state
            .store
            .user_by_username("sneaky")
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn accounts_are_added_with_a_password_shown_once_and_disabled() {
    let c = ctx().await;
    let admin = c.new_session("root", Role::Admin).await;
    let seq = c.audit_seq().await;
    let a = c
        .post(
            &admin,
            "/admin/console/users",
            &[("username", "Dr New"), ("role", "clinician")],
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    c.one_entry(seq, "POST /admin/console/users", Outcome::Allowed)
        .await;
    let password = a.text_of("new-password");
    assert_eq!(password.len(), 24, "{password}");
    assert!(
        a.headers
            .get(header::CACHE_CONTROL)
            .is_some_and(|v| v == "no-store")
    );
    // The password works (a new clinician enrols an authenticator first).
    let step = c
        .state
        .accounts
        .login_first_factor(LoginRequest {
            username: "dr new".to_owned(),
            password: Password::new(password.clone()),
            totp: None,
            recovery_code: None,
            address: std::net::IpAddr::from([127, 0, 0, 1]),
        })
        .await
        .unwrap();
    assert!(matches!(step, LoginStep::Done(o) if o.enrolment_only));
    // Shown once: the list never shows it again.
    let a = c.page(&admin, "/admin/console/users").await;
    assert!(!a.text().contains(&password) && a.text().contains("Dr New"));

    // The same username again: refused, the form kept.
    let a = c
        .post(
            &admin,
            "/admin/console/users",
            &[("username", "dr new"), ("role", "auditor")],
        )
        .await;
    assert_eq!(a.status, StatusCode::CONFLICT, "{a:?}");
    assert!(a.text().contains("exists already") && a.text().contains("value=\"dr new\""));
    let a = c
        .post(
            &admin,
            "/admin/console/users",
            &[("username", "x"), ("role", "app")],
        )
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{a:?}");

    // Disable by id, and by username; never oneself.
    let id = c
        .state
        .store
        .user_by_username("dr new")
        .await
        .unwrap()
        .unwrap()
        .user_id;
    let seq = c.audit_seq().await;
    let a = c
        .post(&admin, "/admin/console/users/disable", &[("user_id", &id)])
        .await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{a:?}");
    assert_eq!(a.location(), "/admin/console/users?done=user-disabled");
    c.one_entry(seq, "POST /admin/console/users/disable", Outcome::Allowed)
        .await;
    let user = c.state.store.user_by_id(&id).await.unwrap().unwrap();
    assert!(user.disabled_at.is_some());
    let a = c.page(&admin, a.location()).await;
    assert!(a.text().contains("The account was disabled") && a.text().contains(">disabled</span>"));

    c.user("temp", Role::Researcher).await;
    let a = c
        .post(
            &admin,
            "/admin/console/users/disable",
            &[("username", "temp")],
        )
        .await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{a:?}");
    let root = c
        .state
        .store
        .user_by_username("root")
        .await
        .unwrap()
        .unwrap();
    let a = c
        .post(
            &admin,
            "/admin/console/users/disable",
            &[("user_id", &root.user_id)],
        )
        .await;
    assert_eq!(a.status, StatusCode::CONFLICT, "{a:?}");
    let a = c
        .post(
            &admin,
            "/admin/console/users/disable",
            &[("user_id", "nobody")],
        )
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "{a:?}");
}

/// A client-credentials token of `id` with `secret`, or the refusal's status.
async fn client_token(c: &Ctx, id: &str, secret: &str) -> StatusCode {
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"));
    let req = Request::post("/oauth/token")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::AUTHORIZATION, format!("Basic {basic}"))
        .body(Body::from("grant_type=client_credentials"))
        .unwrap();
    c.send(req).await.status
}

#[tokio::test]
async fn apps_are_registered_rotated_and_disabled() {
    let c = ctx().await;
    let admin = c.new_session("root", Role::Admin).await;
    let seq = c.audit_seq().await;
    let a = c
        .post(
            &admin,
            "/admin/console/clients",
            &[
                ("name", "Lab feed"),
                ("type", "confidential-secret"),
                ("scope", "system/Observation.cruds"),
                ("redirect_uri", ""),
                ("jwks", ""),
            ],
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    c.one_entry(seq, "POST /admin/console/clients", Outcome::Allowed)
        .await;
    let id = a.text_of("issued-client-id");
    let secret = a.text_of("client-secret");
    assert_eq!(client_token(&c, &id, &secret).await, StatusCode::OK);
    let listed = c.page(&admin, "/admin/console/clients").await;
    assert!(listed.text().contains(&id) && !listed.text().contains(&secret));
    assert!(listed.text().contains(">Rotate secret</button>"));

    let seq = c.audit_seq().await;
    let a = c
        .post(
            &admin,
            "/admin/console/clients/rotate",
            &[("client_id", &id)],
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    c.one_entry(seq, "POST /admin/console/clients/rotate", Outcome::Allowed)
        .await;
    let rotated = a.text_of("client-secret");
    assert_ne!(rotated, secret);
    assert!(a.text().contains("The old secret no longer works"));
    assert_eq!(
        client_token(&c, &id, &secret).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(client_token(&c, &id, &rotated).await, StatusCode::OK);

    // A public app: no secret, its redirect URIs one per line; one without any is refused.
    let a = c
        .post(
            &admin,
            "/admin/console/clients",
            &[
                ("name", "Chart <app>"),
                ("type", "public"),
                ("scope", "launch/patient patient/*.rs openid fhirUser"),
                (
                    "redirect_uri",
                    "https://app.example/cb\r\nhttp://127.0.0.1:9/cb",
                ),
                ("jwks", ""),
            ],
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    assert!(!a.text().contains("id=\"client-secret\"") && a.text().contains("Chart &lt;app&gt;"));
    let public = a.text_of("issued-client-id");
    let client = c
        .state
        .accounts
        .oauth_client(&public)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        client.redirect_uris,
        ["https://app.example/cb", "http://127.0.0.1:9/cb"]
    );
    let a = c
        .post(
            &admin,
            "/admin/console/clients",
            &[
                ("name", "No way back"),
                ("type", "public"),
                ("scope", "openid"),
            ],
        )
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{a:?}");
    assert!(a.text().contains("redirect URI") && a.text().contains("value=\"No way back\""));
    // A public app has no secret to rotate.
    let a = c
        .post(
            &admin,
            "/admin/console/clients/rotate",
            &[("client_id", &public)],
        )
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "{a:?}");

    let seq = c.audit_seq().await;
    let a = c
        .post(
            &admin,
            "/admin/console/clients/disable",
            &[("client_id", &id)],
        )
        .await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{a:?}");
    assert_eq!(a.location(), "/admin/console/clients?done=client-disabled");
    c.one_entry(seq, "POST /admin/console/clients/disable", Outcome::Allowed)
        .await;
    assert_eq!(
        client_token(&c, &id, &rotated).await,
        StatusCode::UNAUTHORIZED
    );
    let listed = c.page(&admin, "/admin/console/clients").await;
    assert!(
        !listed
            .text()
            .contains(&format!("name=\"client_id\" value=\"{id}\""))
    );
    let a = c
        .post(
            &admin,
            "/admin/console/clients/disable",
            &[("client_id", "pvcl_none")],
        )
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "{a:?}");
}

#[tokio::test]
async fn break_glass_accesses_are_reviewed_once_with_the_patient_in_the_entry() {
    let c = ctx().await;
    let admin = c.new_session("root", Role::Admin).await;
    let doc = c.new_session("doc", Role::Clinician).await;
    let who = c.state.accounts.authenticate(&doc).await.unwrap();
    let patient = Id::parse("p-42").unwrap();
    let expires = time::OffsetDateTime::now_utc().unix_timestamp() + 3600;
    let id = c
        .state
        .accounts
        .record_break_glass(&who, &patient, "Unconscious <on arrival>", expires)
        .await
        .unwrap();
    let a = c.page(&admin, "/admin/console/break-glass").await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    assert!(a.text().contains(&format!("name=\"id\" value=\"{id}\"")));
    assert!(a.text().contains("Unconscious &lt;on arrival&gt;") && a.text().contains(">doc<"));
    assert!(
        a.text().contains(">Review note</label>") && a.text().contains(">Mark reviewed</button>")
    );

    // An empty note is refused; nothing is reviewed.
    let a = c
        .post(
            &admin,
            "/admin/console/break-glass/review",
            &[("id", &id), ("note", " ")],
        )
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{a:?}");
    let seq = c.audit_seq().await;
    let a = c
        .post(
            &admin,
            "/admin/console/break-glass/review",
            &[("id", &id), ("note", "Checked with the ward: justified.")],
        )
        .await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{a:?}");
    assert_eq!(a.location(), "/admin/console/break-glass?done=reviewed");
    let entry = c
        .one_entry(
            seq,
            "POST /admin/console/break-glass/review",
            Outcome::Allowed,
        )
        .await;
    assert_eq!(entry.patient_id.as_deref(), Some("p-42"));
    let a = c.page(&admin, a.location()).await;
    assert!(!a.text().contains(&format!("name=\"id\" value=\"{id}\"")));
    assert!(a.text().contains("Checked with the ward: justified.") && a.text().contains("by root"));
    assert!(a.text().contains("Nothing awaits review."));

    // Once only.
    let a = c
        .post(
            &admin,
            "/admin/console/break-glass/review",
            &[("id", &id), ("note", "again")],
        )
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{a:?}");
    assert!(a.text().contains("reviewed already"));
    let a = c
        .post(
            &admin,
            "/admin/console/break-glass/review",
            &[("id", "no-such-id"), ("note", "x")],
        )
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "{a:?}");
    assert_eq!(c.state.accounts.unreviewed_break_glass().await.unwrap(), 0);
}

#[tokio::test]
async fn alerts_are_listed_and_a_breach_report_lists_the_patients_reached() {
    let c = ctx().await;
    let auditor = c.new_session("audrey", Role::Auditor).await;
    let (app, secret) = c
        .state
        .accounts
        .create_client("importer", "system/*.cruds", None, &NoAudit)
        .await
        .unwrap();
    let basic =
        base64::engine::general_purpose::STANDARD.encode(format!("{app}:{}", secret.expose()));
    let req = Request::post("/oauth/token")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::AUTHORIZATION, format!("Basic {basic}"))
        .body(Body::from("grant_type=client_credentials"))
        .unwrap();
    let token: Value = serde_json::from_slice(&c.send(req).await.body).unwrap();
    let token = token["access_token"].as_str().unwrap().to_owned();
    let patient = json!({"resourceType": "Patient", "name": [{"family": "Reached"}]});
    let req = Request::post("/fhir/Patient")
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::CONTENT_TYPE, "application/fhir+json")
        .body(Body::from(patient.to_string()))
        .unwrap();
    let created: Value = serde_json::from_slice(&c.send(req).await.body).unwrap();
    let pid = created["id"].as_str().unwrap().to_owned();

    let a = c.page(&auditor, "/admin/console/alerts?days=30").await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    assert!(a.text().contains("<option value=\"30\" selected>"));

    let now = time::OffsetDateTime::now_utc();
    let window = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    let (from, to) = (
        window(now - time::Duration::hours(1)),
        window(now + time::Duration::hours(1)),
    );
    for (principal, network) in [(app.as_str(), ""), ("", "127.0.0.0/8")] {
        let a = c
            .post(
                &auditor,
                "/admin/console/breach",
                &[
                    ("principal", principal),
                    ("network", network),
                    ("from", &from),
                    ("to", &to),
                ],
            )
            .await;
        assert_eq!(a.status, StatusCode::OK, "{a:?}");
        // The engine escapes `/` too.
        assert!(
            a.text().contains(&format!("<td>Patient&#x2f;{pid}</td>")),
            "{a:?}"
        );
        assert!(a.text().contains(&format!("importer ({app})")), "{a:?}");
    }
    for (fields, why) in [
        (vec![("principal", "nobody")], "No account"),
        (
            vec![("principal", "audrey"), ("network", "10.0.0.0/8")],
            "not both",
        ),
        (vec![("network", "not a network")], "CIDR"),
    ] {
        let mut fields = fields;
        fields.extend([("from", from.as_str()), ("to", to.as_str())]);
        let a = c.post(&auditor, "/admin/console/breach", &fields).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{a:?}");
        assert!(a.text().contains(why), "{why}: {a:?}");
    }
    let a = c
        .post(
            &auditor,
            "/admin/console/breach",
            &[("principal", "audrey"), ("from", &to), ("to", &from)],
        )
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{a:?}");
}
