//! The people pages over the router, signed in by cookie: who may see and change what, a
//! generated password and client secrets shown once and working, disabling, break-the-glass
//! reviews (once, audited with the patient), alerts and a breach report; each change with
//! exactly the request's audit entry.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, Request, StatusCode, header};
use base64::Engine as _;
use phivault_audit::{AuditEntry, Outcome};
use phivault_auth::{Accounts, LoginRequest, LoginStep, Password, PasswordHasher};
use phivault_fhir::{Id, Validator};
use phivault_policy::Role;
use phivault_store::{NoAudit, Store, StoreOptions};
use serde_json::{Value, json};
use tower::ServiceExt as _;

use crate::AppState;

const PASSWORD: &str = "plum-orchard-lantern-47";
/// A well-formed CSRF token, sent as cookie and field alike.
const CSRF: &str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQ";

struct Ctx {
    _dir: tempfile::TempDir,
    state: AppState,
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP {} {}", self.status, self.body)
    }
}

impl Answer {
    fn location(&self) -> &str {
        self.headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The text of the element with `id` (`<code id="x">text</code>`).
    fn text_of(&self, id: &str) -> String {
        let start = self.body.find(&format!("id=\"{id}\">")).expect(id) + id.len() + 6;
        self.body[start..].split('<').next().unwrap().to_owned()
    }
}

async fn ctx() -> Ctx {
    let dir = tempfile::tempdir().unwrap();
    let mut key = [0u8; 32];
    phivault_crypto::random_bytes(&mut key).unwrap();
    let keys = phivault_crypto::StaticKeyProvider::from_hex(hex::encode(key));
    let opts = StoreOptions::new(format!("sqlite://{}/t.db", dir.path().display()));
    let store = Store::open(&opts, &keys).await.unwrap();
    let mut state = AppState::new(
        store.clone(),
        Arc::new(Validator::new().unwrap()),
        None,
        "https://127.0.0.1:8443/fhir",
        1024 * 1024,
    )
    .await
    .unwrap();
    state.accounts = Accounts::with_hasher(store, PasswordHasher::with_params(8, 1, 1).unwrap());
    Ctx { _dir: dir, state }
}

impl Ctx {
    async fn send(&self, mut req: Request<Body>) -> Answer {
        req.extensions_mut()
            .insert(ConnectInfo(std::net::SocketAddr::from(([127, 0, 0, 1], 1))));
        let resp = crate::router(self.state.clone())
            .oneshot(req)
            .await
            .unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        Answer {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    async fn user(&self, username: &str, role: Role) -> String {
        self.state
            .accounts
            .create_user(username, Password::new(PASSWORD), role, &NoAudit)
            .await
            .unwrap()
    }

    async fn login(&self, username: &str, totp: Option<String>) -> (String, bool) {
        let out = self
            .state
            .accounts
            .login(LoginRequest {
                username: username.to_owned(),
                password: Password::new(PASSWORD),
                totp,
                recovery_code: None,
                address: std::net::IpAddr::from([127, 0, 0, 1]),
            })
            .await
            .unwrap();
        (out.token.expose().to_owned(), out.enrolment_only)
    }

    /// A session of a new account `username` with `role`, its authenticator enrolled.
    async fn session(&self, username: &str, role: Role) -> String {
        self.user(username, role).await;
        let (token, enrol) = self.login(username, None).await;
        if !enrol {
            return token;
        }
        let who = self.state.accounts.authenticate(&token).await.unwrap();
        let enrolment = self
            .state
            .accounts
            .begin_totp_enrolment(&who, &NoAudit)
            .await
            .unwrap();
        let totp = totp_rs::Totp::from_url(&enrolment.otpauth_url).unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let code = totp.generate(now).to_string();
        self.state
            .accounts
            .confirm_totp(&who, &code, &NoAudit)
            .await
            .unwrap();
        let next = totp.generate(now + 30).to_string();
        self.login(username, Some(next)).await.0
    }

    fn cookies(session: &str) -> String {
        format!("__Host-phivault_session={session}; __Host-phivault_csrf={CSRF}")
    }

    async fn page(&self, session: &str, uri: &str) -> Answer {
        let req = Request::get(uri)
            .header(header::COOKIE, Self::cookies(session))
            .body(Body::empty())
            .unwrap();
        self.send(req).await
    }

    /// `POST uri` of a form with the CSRF field, signed in with `session`.
    async fn post(&self, session: &str, uri: &str, fields: &[(&str, &str)]) -> Answer {
        let mut body = format!("csrf={CSRF}");
        for (k, v) in fields {
            body.push_str(&format!("&{k}={}", urlencoding::encode(v)));
        }
        let req = Request::post(uri)
            .header(header::COOKIE, Self::cookies(session))
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(body))
            .unwrap();
        self.send(req).await
    }

    /// The seq of the last audit entry.
    async fn audit_seq(&self) -> u64 {
        self.state.audit.store().audit_tail().await.unwrap().seq - 1
    }

    /// The audit entries after `seq`.
    async fn entries_after(&self, seq: u64) -> Vec<AuditEntry> {
        self.state
            .audit
            .store()
            .audit_entries(seq, 10_000)
            .await
            .unwrap()
            .into_iter()
            .map(|row| AuditEntry::from_canonical(&row.body).unwrap())
            .collect()
    }

    /// Asserts that the request after `seq` left one entry, `action`, with `outcome`.
    async fn one_entry(&self, seq: u64, action: &str, outcome: Outcome) -> AuditEntry {
        let mut entries = self.entries_after(seq).await;
        assert_eq!(entries.len(), 1, "{entries:?}");
        let entry = entries.remove(0);
        assert_eq!(
            (entry.action.as_str(), entry.outcome),
            (action, outcome),
            "{entry:?}"
        );
        entry
    }
}

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
    let doc = c.session("doc", Role::Clinician).await;
    let a = c.page(&doc, "/admin/console/users").await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{a:?}");

    let auditor = c.session("audrey", Role::Auditor).await;
    for page in pages {
        let a = c.page(&auditor, page).await;
        assert_eq!(a.status, StatusCode::OK, "{page}: {a:?}");
        assert!(a.body.contains("aria-current=\"page\""), "{page}");
    }
    let a = c.page(&auditor, "/admin/console/users").await;
    assert!(a.body.contains("audrey") && a.body.contains("doc"), "{a:?}");
    assert!(!a.body.contains("action=\"/admin/console/users\""));
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
    assert!(a.body.contains("Only administrators"));
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
    let admin = c.session("root", Role::Admin).await;
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
    let admin = c.session("root", Role::Admin).await;
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
    assert!(!a.body.contains(&password) && a.body.contains("Dr New"));

    // The same username again: refused, the form kept.
    let a = c
        .post(
            &admin,
            "/admin/console/users",
            &[("username", "dr new"), ("role", "auditor")],
        )
        .await;
    assert_eq!(a.status, StatusCode::CONFLICT, "{a:?}");
    assert!(a.body.contains("exists already") && a.body.contains("value=\"dr new\""));
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
    assert!(a.body.contains("The account was disabled") && a.body.contains(">disabled</span>"));

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
    let admin = c.session("root", Role::Admin).await;
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
    assert!(listed.body.contains(&id) && !listed.body.contains(&secret));
    assert!(listed.body.contains(">Rotate secret</button>"));

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
    assert!(a.body.contains("The old secret no longer works"));
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
    assert!(!a.body.contains("id=\"client-secret\"") && a.body.contains("Chart &lt;app&gt;"));
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
    assert!(a.body.contains("redirect URI") && a.body.contains("value=\"No way back\""));
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
            .body
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
    let admin = c.session("root", Role::Admin).await;
    let doc = c.session("doc", Role::Clinician).await;
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
    assert!(a.body.contains(&format!("name=\"id\" value=\"{id}\"")));
    assert!(a.body.contains("Unconscious &lt;on arrival&gt;") && a.body.contains(">doc<"));
    assert!(a.body.contains(">Review note</label>") && a.body.contains(">Mark reviewed</button>"));

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
    assert!(!a.body.contains(&format!("name=\"id\" value=\"{id}\"")));
    assert!(a.body.contains("Checked with the ward: justified.") && a.body.contains("by root"));
    assert!(a.body.contains("Nothing awaits review."));

    // Once only.
    let a = c
        .post(
            &admin,
            "/admin/console/break-glass/review",
            &[("id", &id), ("note", "again")],
        )
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{a:?}");
    assert!(a.body.contains("reviewed already"));
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
    let auditor = c.session("audrey", Role::Auditor).await;
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
    let token: Value = serde_json::from_str(&c.send(req).await.body).unwrap();
    let token = token["access_token"].as_str().unwrap().to_owned();
    let patient = json!({"resourceType": "Patient", "name": [{"family": "Reached"}]});
    let req = Request::post("/fhir/Patient")
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::CONTENT_TYPE, "application/fhir+json")
        .body(Body::from(patient.to_string()))
        .unwrap();
    let created: Value = serde_json::from_str(&c.send(req).await.body).unwrap();
    let pid = created["id"].as_str().unwrap().to_owned();

    let a = c.page(&auditor, "/admin/console/alerts?days=30").await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    assert!(a.body.contains("<option value=\"30\" selected>"));

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
            a.body.contains(&format!("<td>Patient&#x2f;{pid}</td>")),
            "{a:?}"
        );
        assert!(a.body.contains(&format!("importer ({app})")), "{a:?}");
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
        assert!(a.body.contains(why), "{why}: {a:?}");
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
