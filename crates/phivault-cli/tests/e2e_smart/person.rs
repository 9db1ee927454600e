//! The person's side: the pages (CSRF, escaping, headers, cookies), a clinician's second
//! factor and patient picker, a patient's Consent, the person's list of apps, the id_token.

use phivault_testkit::oauth::{input_values, try_verify_id_token, verify_id_token};
use phivault_testkit::{
    AuthorizeUrl, Browser, ClientKey, ClientSpec, Decision, Pkce, RegisteredClient, fixtures,
    random_username,
};
use serde_json::{Value, json};

use super::world::*;

/// A form's fields, owned.
type Fields = Vec<(String, String)>;

/// The pages: CSRF (a consent post without, or with another, token is refused: no code),
/// escaping of the app's name, security headers and cookie attributes.
pub(crate) async fn pages_csrf_and_headers(ctx: &Ctx) {
    let http = ctx.http();
    let xss = ctx
        .server
        .register_client(&ClientSpec {
            kind: "public",
            name: XSS_NAME,
            scope: "launch/patient patient/*.rs",
            redirect_uris: &[CB],
            jwks: None,
        })
        .await;
    let pkce = Pkce::generate();
    let url = AuthorizeUrl::new(
        &http,
        &xss.client_id,
        CB,
        "launch/patient patient/*.rs",
        "x",
        &pkce,
    );
    let mut browser = ctx.server.browser();
    let signin = browser.open(&url.url()).await;
    signin.assert_status(200);
    assert_html_page(&signin, "sign-in page");
    assert_escaped(&signin, "sign-in page");
    assert_cookies(&signin, "sign-in page", &["__Host-phivault_csrf"]);
    // A wrong password: the sign-in page again, no session.
    let again = browser
        .sign_in(&signin, &ctx.username, "not-the-password")
        .await;
    assert_eq!(again.status, 401, "{again:?}");
    assert_html_page(&again, "failed sign-in");
    assert!(browser.cookie("__Host-phivault_session").is_none());
    let consent = browser.sign_in(&signin, &ctx.username, &ctx.password).await;
    consent.assert_status(200);
    assert_html_page(&consent, "consent page");
    assert_escaped(&consent, "consent page");
    assert_cookies(&consent, "consent page", &["__Host-phivault_session"]);
    assert_eq!(
        consent.hidden("patient").as_deref(),
        Some(ctx.patient.as_str())
    );
    let csp = consent.header("content-security-policy").unwrap();
    assert!(
        csp.contains("form-action 'self' https://app.example"),
        "{csp}"
    );

    // Forged consent posts: refused with a page, no redirect, no code.
    let csrf = consent.hidden("csrf").unwrap();
    let request = consent.hidden("request").unwrap();
    let approve = |token: &str| {
        vec![
            ("csrf".to_owned(), token.to_owned()),
            ("request".to_owned(), request.clone()),
            ("patient".to_owned(), ctx.patient.clone()),
            ("scope".to_owned(), "patient/*.rs".to_owned()),
            ("decision".to_owned(), "approve".to_owned()),
        ]
    };
    let session = browser
        .cookie("__Host-phivault_session")
        .unwrap()
        .to_owned();
    let attacker = {
        let mut b = ctx.server.browser();
        b.open(&url.url()).await;
        b.cookie("__Host-phivault_csrf").unwrap().to_owned()
    };
    assert_ne!(attacker, csrf);
    let mut no_field = approve("");
    no_field.retain(|(k, _)| k != "csrf");
    let cases: Vec<(&str, Fields, bool)> = vec![
        ("no csrf field", no_field, true),
        ("empty csrf field", approve(""), true),
        ("another browser's token", approve(&attacker), true),
        ("no csrf cookie", approve(&csrf), false),
        (
            "a cross-site form (attacker's token, no csrf cookie)",
            approve(&attacker),
            false,
        ),
    ];
    for (what, fields, with_csrf_cookie) in cases {
        let mut forged = ctx.server.browser();
        forged.set_cookie("__Host-phivault_session", &session);
        if with_csrf_cookie {
            forged.set_cookie("__Host-phivault_csrf", &csrf);
        }
        let codes = ctx.codes_of(&xss.client_id).await;
        let since = ctx.server.audit_seq().await;
        let pairs: Vec<(&str, &str)> = fields
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let r = forged.submit("/oauth/authorize/consent", &pairs).await;
        assert_eq!(r.status, 403, "{what}: {r:?}");
        assert!(r.location().is_none(), "{what}: no redirect: {r:?}");
        assert_html_page(&r, what);
        assert_eq!(ctx.codes_of(&xss.client_id).await, codes, "{what}: no code");
        let e = ctx
            .refusal(since, "POST /oauth/authorize/consent refused page", None)
            .await;
        assert_eq!(e["outcome"], "denied", "{what}: {e}");
    }
    // The same posts with the right pair pass (the refusals were the CSRF check's).
    let r = browser
        .consent(&consent, Decision::Approve(&["patient/*.rs"]))
        .await;
    assert_eq!(r.status, 303, "{r:?}");
    assert!(r.redirect_param("code").is_some(), "{r:?}");
    // A request field tampered to widen the scope is checked again: invalid_scope.
    let wider = request.replace("patient%2F*.rs", "patient%2F*.cruds");
    assert_ne!(wider, request, "the request field names the scope");
    let r = browser
        .submit(
            "/oauth/authorize/consent",
            &[
                ("csrf", &csrf),
                ("request", &wider),
                ("scope", "patient/*.cruds"),
                ("decision", "approve"),
            ],
        )
        .await;
    assert_eq!(r.redirect_param("error").as_deref(), Some("invalid_scope"));
    // ... and a request field sending the code elsewhere gets a page, never a redirect.
    let elsewhere = request.replace(
        &*urlencoding::encode(CB),
        &urlencoding::encode("https://evil.example/cb"),
    );
    assert_ne!(
        elsewhere, request,
        "the request field names the redirect URI"
    );
    let codes = ctx.codes_of(&xss.client_id).await;
    let r = browser
        .submit(
            "/oauth/authorize/consent",
            &[
                ("csrf", &csrf),
                ("request", &elsewhere),
                ("scope", "patient/*.rs"),
                ("decision", "approve"),
            ],
        )
        .await;
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.location().is_none(), "{r:?}");
    assert_eq!(ctx.codes_of(&xss.client_id).await, codes);

    // Login CSRF: a sign-in post without the browser's token is refused before any
    // password check, and no session is set.
    let mut fresh = ctx.browser();
    let r = fresh
        .submit(
            "/oauth/authorize/signin",
            &[
                ("csrf", &attacker),
                ("request", &request),
                ("username", &ctx.username),
                ("password", &ctx.password),
            ],
        )
        .await;
    assert_eq!(r.status, 403, "{r:?}");
    assert_html_page(&r, "a forged sign-in");
    assert!(fresh.cookie("__Host-phivault_session").is_none(), "{r:?}");
}

/// A clinician: second factor, the picker refuses a patient outside their care, then a
/// patient in their care reaches consent and the token names it.
pub(crate) async fn clinician_picker(ctx: &Ctx) -> Browser {
    let username = random_username();
    let password = ctx.server.create_user(&username, "clinician").await;
    ctx.server.grant(&username, &ctx.patient, &[], None).await;
    let account = ctx
        .server
        .sign_in(&username, "clinician", &password, false)
        .await;
    let recovery = account.totp.as_ref().unwrap().recovery_codes.clone();
    let scope = "launch/patient patient/*.rs";
    let pkce = Pkce::generate();
    let http = ctx.http();
    let url = AuthorizeUrl::new(&http, &ctx.public.client_id, CB, scope, "c", &pkce);
    let mut browser = ctx.browser();
    let signin = browser.open(&url.url()).await;
    let totp = browser.sign_in(&signin, &username, &password).await;
    totp.assert_status(200);
    assert!(
        totp.text.contains("name=\"code\""),
        "the TOTP page: {totp:?}"
    );
    assert!(browser.cookie("__Host-phivault_session").is_none());
    assert_cookies(&totp, "TOTP page", &["__Host-phivault_mfa"]);
    // A wrong code: back to sign-in.
    let r = browser.totp(&totp, "000000").await;
    assert_eq!(r.status, 401, "{r:?}");
    let totp = browser.sign_in(&signin, &username, &password).await;
    let picker = browser.totp(&totp, &recovery[0]).await;
    picker.assert_status(200);
    assert_html_page(&picker, "picker");
    let offered = input_values(&picker.text, "patient");
    assert_eq!(
        offered,
        std::slice::from_ref(&ctx.patient),
        "only the patient in care"
    );
    let r = browser.pick(&picker, &ctx.other_patient).await;
    assert_eq!(r.status, 400, "a patient outside their care: {r:?}");
    assert!(r.location().is_none());
    // A consent post naming the other patient directly: refused too.
    let mut forged = vec![
        ("csrf", picker.hidden("csrf").unwrap()),
        ("request", picker.hidden("request").unwrap()),
    ];
    forged.push(("patient", ctx.other_patient.clone()));
    forged.push(("scope", "patient/*.rs".to_owned()));
    forged.push(("decision", "approve".to_owned()));
    let pairs: Vec<(&str, &str)> = forged.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let r = browser.submit("/oauth/authorize/consent", &pairs).await;
    assert!(
        r.location().is_none() || r.redirect_param("code").is_none(),
        "no code for another patient: {r:?}"
    );
    let consent = browser.pick(&picker, &ctx.patient).await;
    consent.assert_status(200);
    let r = browser.consent(&consent, Decision::ApproveOffered).await;
    let code = r.redirect_param("code").expect("a code");
    let r = http
        .exchange_code(&ctx.public.auth(), &code, CB, &pkce.verifier)
        .await;
    r.assert_status(200);
    assert_eq!(r.json()["patient"], ctx.patient.as_str());
    let token = r.json()["access_token"].as_str().unwrap().to_owned();
    ctx.reads(&token, 200).await;
    let other = ctx.server.api_as(&token);
    let r = other.get(&format!("Patient/{}", ctx.other_patient)).await;
    assert!(matches!(r.status, 403 | 404), "{r:?}");
    browser
}

/// A patient's Consent denying an app binds a token already issued to it: a clinician's
/// token through that app is refused on its next read, the same clinician through another
/// app is not. (A patient's own access, through an app or not, does not depend on their
/// consents: the guard skips consent for patient users.)
pub(crate) async fn consent_binds_issued_tokens(ctx: &Ctx, clinician: &Browser) {
    let app = ctx.public_client("denied by consent").await;
    let scope = "launch/patient patient/*.rs";
    let token = |client: RegisteredClient| async move {
        let pkce = Pkce::generate();
        let http = ctx.http();
        let url = AuthorizeUrl::new(&http, &client.client_id, CB, scope, "k", &pkce);
        let r = approve_as(
            clinician,
            &url,
            Decision::ApproveOffered,
            Some(&ctx.patient),
        )
        .await;
        let code = r
            .redirect_param("code")
            .unwrap_or_else(|| panic!("a code for the clinician: {r:?}"));
        let r = http
            .exchange_code(&client.auth(), &code, CB, &pkce.verifier)
            .await;
        r.assert_status(200);
        assert_eq!(r.json()["patient"], ctx.patient.as_str());
        r.json()["access_token"].as_str().unwrap().to_owned()
    };
    let denied = token(app.clone()).await;
    let allowed = token(ctx.public.clone()).await;
    ctx.reads(&denied, 200).await;
    // The patient's own token through the same app: their denial binds it too.
    let own = ctx.tokens(&app, "launch/patient patient/*.rs").await;
    let own = own["access_token"].as_str().unwrap().to_owned();
    ctx.reads(&own, 200).await;
    let consent = json!({
        "resourceType": "Consent",
        "status": "active",
        "scope": {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/consentscope",
            "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": fixtures::LOINC, "code": "59284-0"}]}],
        "patient": {"reference": format!("Patient/{}", ctx.patient)},
        "provision": {"type": "deny", "actor": [{
            "role": {"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                "code": "PRCP"}]},
            "reference": {"identifier": {
                "system": "urn:phivault:client", "value": app.client_id}}
        }]},
    });
    ctx.server
        .api_as(&ctx.session)
        .post_json("Consent", &consent)
        .await
        .assert_status(201);
    let since = ctx.server.audit_seq().await;
    let r = ctx
        .server
        .api_as(&denied)
        .get(&format!("Patient/{}", ctx.patient))
        .await;
    r.assert_outcome(403, &["consent"]);
    // The refusal is audited: the entry names the person and the app they acted through.
    let e = ctx.refusal(since, "GET /fhir/{type}/{id}", None).await;
    assert_eq!(e["outcome"], "denied", "{e}");
    assert_eq!(e["patient_id"], ctx.patient.as_str(), "{e}");
    assert_eq!(e["via_client"], app.client_id.as_str(), "{e}");
    ctx.reads(&allowed, 200).await;
    let r = ctx
        .server
        .api_as(&own)
        .get(&format!("Patient/{}", ctx.patient))
        .await;
    r.assert_outcome(403, &["consent"]);
    // The patient's own session is not an app: consent does not bind their own access.
    ctx.reads(&ctx.session, 200).await;
}

/// `GET /auth/apps` lists the person's apps; `DELETE /auth/apps/{id}` revokes one at once;
/// an app's token cannot do either.
pub(crate) async fn apps_of_a_person(ctx: &Ctx) {
    let app = ctx.public_client("revocable").await;
    let t = ctx
        .tokens(&app, "launch/patient offline_access patient/*.rs")
        .await;
    let access = t["access_token"].as_str().unwrap();
    let http = ctx.http();
    let r = http.get("/auth/apps", Some(&ctx.session)).await;
    r.assert_status(200);
    let apps = r.json()["apps"].as_array().cloned().unwrap_or_default();
    let listed = apps
        .iter()
        .find(|a| a["client_id"] == app.client_id.as_str())
        .unwrap_or_else(|| panic!("the app is listed: {apps:?}"));
    assert_eq!(
        same_scopes(listed["scope"].as_str().unwrap()),
        same_scopes("launch/patient offline_access patient/*.rs")
    );
    assert_eq!(listed["name"], "revocable");
    assert!(
        listed["last_used_at"].as_i64().is_some_and(|t| t > 0),
        "{listed}"
    );
    assert!(
        apps.iter()
            .any(|a| a["client_id"] == ctx.public.client_id.as_str()),
        "{apps:?}"
    );
    // The app's own token: 403 on the person's list and revocation.
    let r = http.get("/auth/apps", Some(access)).await;
    assert_eq!(r.status, 403, "{r:?}");
    let delete = |bearer: &str| {
        let path = format!("/auth/apps/{}", app.client_id);
        let rb = http
            .request(reqwest::Method::DELETE, &path)
            .bearer_auth(bearer);
        phivault_testkit::Api::send(rb)
    };
    assert_eq!(delete(access).await.status, 403);
    ctx.reads(access, 200).await;
    // The patient's access log names the app the read came through.
    let log = ctx
        .server
        .api_as(&ctx.session)
        .get(&format!("Patient/{}/$access-log", ctx.patient))
        .await;
    log.assert_status(200);
    let through_app = log.json()["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["resource"]["agent"].as_array())
        .any(|agents| {
            agents.iter().any(|a| {
                a["who"]["identifier"]["value"] == app.client_id.as_str()
                    && a["who"]["display"] == "revocable"
                    && a["requestor"] == false
            })
        });
    assert!(through_app, "the access log names the app: {log:?}");
    let r = delete(&ctx.session).await;
    assert_eq!(r.status, 204, "{r:?}");
    ctx.reads(access, 401).await;
    let r = http
        .refresh(&app.auth(), t["refresh_token"].as_str().unwrap(), None)
        .await;
    assert_oauth_error(&r, 400, "invalid_grant");
    assert_eq!(delete(&ctx.session).await.status, 404);
    let r = http.get("/auth/apps", Some(&ctx.session)).await;
    assert!(
        !r.text.contains(&app.client_id),
        "a revoked app is no longer listed: {r:?}"
    );
}

/// The id_token verifies with the published keys and names the person.
pub(crate) async fn id_token(ctx: &Ctx) {
    let scope = "openid fhirUser launch/patient patient/*.rs";
    let nonce = "n-0S6_WzA2Mj";
    let http = ctx.http();
    let pkce = Pkce::generate();
    let url =
        AuthorizeUrl::new(&http, &ctx.public.client_id, CB, scope, "i", &pkce).set("nonce", nonce);
    let r = ctx.approve(&url, Decision::ApproveOffered).await;
    let code = r.redirect_param("code").expect("a code");
    let r = http
        .exchange_code(&ctx.public.auth(), &code, CB, &pkce.verifier)
        .await;
    r.assert_status(200);
    let t = r.json();
    let token = t["id_token"].as_str().expect("an id_token for openid");
    let keys = http.get("/oauth/jwks", None).await;
    keys.assert_status(200);
    let set: Value = keys.json();
    for k in set["keys"].as_array().unwrap() {
        assert!(k.get("d").is_none(), "a private member is published: {k}");
    }
    let claims = verify_id_token(&set, token, ctx.server.base(), &ctx.public.client_id);
    assert_eq!(claims["iss"], ctx.server.base());
    assert_eq!(claims["aud"], ctx.public.client_id.as_str());
    assert_eq!(claims["nonce"], nonce);
    assert_eq!(
        claims["fhirUser"],
        format!("{}/Patient/{}", ctx.server.base(), ctx.patient)
    );
    let r = http
        .introspect(&ctx.secret.auth(), t["access_token"].as_str().unwrap())
        .await;
    assert_eq!(r.json()["sub"], claims["sub"], "{r:?}");
    // The published set does not verify a token signed by another key.
    let forged = ClientKey::rs384("x").sign_jwt(&claims);
    assert!(
        try_verify_id_token(&set, &forged, ctx.server.base(), &ctx.public.client_id).is_err(),
        "a foreign key's token must not verify"
    );
    // Without `fhirUser` the claim is absent.
    let url = AuthorizeUrl::new(
        &http,
        &ctx.public.client_id,
        CB,
        "openid patient/*.rs",
        "j",
        &pkce,
    );
    let r = ctx.approve(&url, Decision::ApproveOffered).await;
    let code = r.redirect_param("code").unwrap();
    let r = http
        .exchange_code(&ctx.public.auth(), &code, CB, &pkce.verifier)
        .await;
    let claims = verify_id_token(
        &set,
        r.json()["id_token"].as_str().unwrap(),
        ctx.server.base(),
        &ctx.public.client_id,
    );
    assert!(claims.get("fhirUser").is_none(), "{claims}");
    assert!(claims.get("nonce").is_none(), "{claims}");
}
