//! Router tests without sockets: the real store (SQLite in a temporary directory), the real
//! validator, the accounts service and the default policies, driven through `Router::oneshot`.
//!
//! Principals: a system-level app (`system/*.cruds`, client credentials) does the generic FHIR
//! work; people are created through `Accounts` and log in through the routes, staff enrolling
//! TOTP with codes computed from the enrolment's otpauth URL, as an authenticator app would.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use base64::Engine as _;
use phivault_auth::{Accounts, FixedClock, Password, PasswordHasher};
use phivault_fhir::{Id, Validator};
use phivault_policy::Role;
use phivault_server::{AppState, ServerConfig, ServerError, Transport, router};
use phivault_store::{NoAudit, Store, StoreOptions};
use serde_json::{Value, json};
use tower::ServiceExt;

#[path = "router/access.rs"]
mod access;
#[path = "router/all_types.rs"]
mod all_types;
#[path = "router/audit.rs"]
mod audit;
#[path = "router/authn.rs"]
mod authn;
#[path = "router/bulk.rs"]
mod bulk;
#[path = "router/caches.rs"]
mod caches;
#[path = "router/conditional.rs"]
mod conditional;
#[path = "router/consent.rs"]
mod consent;
#[path = "router/crud.rs"]
mod crud;
#[path = "router/edge.rs"]
mod edge;
#[path = "router/http_details.rs"]
mod http_details;
#[path = "router/quantity.rs"]
mod quantity;
#[path = "router/research.rs"]
mod research;
#[path = "router/result_params.rs"]
mod result_params;
#[path = "router/sort.rs"]
mod sort;
#[path = "router/summary.rs"]
mod summary;
// The CLI's generator of raw Synthea output (self-contained files).
#[path = "../../phivault-cli/src/synth.rs"]
#[allow(dead_code, unreachable_pub)]
mod synth;
#[path = "../../phivault-cli/src/synthea.rs"]
#[allow(dead_code, unreachable_pub)]
mod synthea;

const BASE: &str = "https://127.0.0.1:8443/fhir";
const MAX_BODY: usize = 64 * 1024;
/// Every test user's password (passes the password policy).
const PASSWORD: &str = "plum-orchard-lantern-47";

struct Ctx {
    _dir: tempfile::TempDir,
    state: AppState,
    /// An access token of a system-level app (`system/*.cruds`).
    token: String,
    /// That app's client id.
    app_id: String,
    /// The database and master key (hex), for a second store over the same database.
    url: String,
    master_hex: String,
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "HTTP {} {}",
            self.status,
            String::from_utf8_lossy(&self.body)
        )
    }
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {self:?}"))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts an OperationOutcome with `status` whose issue[0].code is `code`.
    fn assert_outcome(&self, status: StatusCode, code: &str) -> Value {
        assert_eq!(self.status, status, "{self:?}");
        let v = self.json();
        assert_eq!(v["resourceType"], "OperationOutcome", "{self:?}");
        assert_eq!(v["issue"][0]["code"], code, "{self:?}");
        assert!(
            v["issue"][0]["diagnostics"]
                .as_str()
                .is_some_and(|d| !d.is_empty()),
            "{self:?}"
        );
        assert_eq!(
            self.header("content-type"),
            Some("application/fhir+json; charset=utf-8"),
            "{self:?}"
        );
        v
    }

    /// The diagnostics of an OperationOutcome.
    fn diagnostics(&self) -> String {
        self.json()["issue"][0]["diagnostics"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Asserts a 403 OperationOutcome saying `access denied: <reason>`.
    fn assert_denied(&self, reason: &str) {
        self.assert_outcome(StatusCode::FORBIDDEN, "forbidden");
        assert_eq!(
            self.diagnostics(),
            format!("access denied: {reason}"),
            "{self:?}"
        );
    }
}

async fn ctx() -> Ctx {
    ctx_with(10, MAX_BODY).await
}

/// One context per backend: SQLite, and PostgreSQL in a fresh schema named `pv_<prefix>_...`
/// when `PHIVAULT_TEST_DATABASE_URL` is set.
async fn backend_contexts(prefix: &str) -> Vec<(&'static str, Ctx)> {
    let mut out = vec![("sqlite", ctx().await)];
    if let Ok(base) = std::env::var("PHIVAULT_TEST_DATABASE_URL") {
        let mut suffix = [0u8; 6];
        phivault_crypto::random_bytes(&mut suffix).unwrap();
        let schema = format!("pv_{prefix}_{}", hex::encode(suffix));
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&base)
            .await
            .expect("PHIVAULT_TEST_DATABASE_URL must point at a running PostgreSQL");
        sqlx::query(&format!("CREATE SCHEMA {schema}"))
            .execute(&mut conn)
            .await
            .unwrap();
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
        let dir = tempfile::tempdir().unwrap();
        out.push(("postgres", ctx_at(dir, url, 10, MAX_BODY).await));
    }
    out
}

/// [`ctx`] with other limits on Bundle entries and body size.
async fn ctx_with(max_bundle_entries: usize, max_body: usize) -> Ctx {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/t.db", dir.path().display());
    ctx_at(dir, url, max_bundle_entries, max_body).await
}

/// [`ctx`] over the database at `url` (SQLite in `dir`, or PostgreSQL).
async fn ctx_at(
    dir: tempfile::TempDir,
    url: String,
    max_bundle_entries: usize,
    max_body: usize,
) -> Ctx {
    let mut key = [0u8; 32];
    phivault_crypto::random_bytes(&mut key).unwrap();
    let master_hex = hex::encode(key);
    let keys = phivault_crypto::StaticKeyProvider::from_hex(master_hex.clone());
    let mut opts = StoreOptions::new(url.clone());
    opts.max_bundle_entries = max_bundle_entries;
    let store = Store::open(&opts, &keys).await.unwrap();
    let mut state = AppState::new(
        store.clone(),
        Arc::new(Validator::new().unwrap()),
        None,
        BASE,
        max_body,
    )
    .await
    .unwrap();
    // Cheap password hashing: the tests hash and verify many passwords.
    state.accounts = Accounts::with_hasher(store, PasswordHasher::with_params(8, 1, 1).unwrap());
    let mut c = Ctx {
        _dir: dir,
        state,
        token: String::new(),
        app_id: String::new(),
        url,
        master_hex,
    };
    let (id, secret) = c.client("system", "system/*.cruds", None).await;
    c.token = c.client_token(&id, &secret, None).await;
    c.app_id = id;
    c
}

/// The client address of requests by `who` (distinct per user, so that the per-address login
/// limit of one test never meets another user's attempts).
fn address_of(who: &str) -> SocketAddr {
    let h = who
        .bytes()
        .fold(0u16, |h, b| h.wrapping_mul(31).wrapping_add(u16::from(b)));
    SocketAddr::from(([10, 0, (h >> 8) as u8, h as u8], 40000))
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

impl Ctx {
    async fn send(&self, mut req: Request<Body>) -> Answer {
        if req.extensions().get::<ConnectInfo<SocketAddr>>().is_none() {
            req.extensions_mut()
                .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 50000))));
        }
        let resp = router(self.state.clone()).oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap()
            .to_vec();
        Answer {
            status,
            headers,
            body,
        }
    }

    fn req_as(&self, token: &str, method: Method, uri: &str) -> axum::http::request::Builder {
        Request::builder()
            .method(method)
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
    }

    fn req(&self, method: Method, uri: &str) -> axum::http::request::Builder {
        self.req_as(&self.token, method, uri)
    }

    async fn get_as(&self, token: &str, uri: &str) -> Answer {
        self.send(
            self.req_as(token, Method::GET, uri)
                .body(Body::empty())
                .unwrap(),
        )
        .await
    }

    async fn get(&self, uri: &str) -> Answer {
        self.get_as(&self.token, uri).await
    }

    async fn json_as(&self, token: &str, method: Method, uri: &str, body: &Value) -> Answer {
        self.send(
            self.req_as(token, method, uri)
                .header(header::CONTENT_TYPE, "application/fhir+json")
                .body(Body::from(body.to_string()))
                .unwrap(),
        )
        .await
    }

    async fn json(&self, method: Method, uri: &str, body: &Value) -> Answer {
        self.json_as(&self.token, method, uri, body).await
    }

    /// Creates `body` as `token`; 201 expected. Returns the id.
    async fn create_as(&self, token: &str, body: &Value) -> (String, Answer) {
        let rtype = body["resourceType"].as_str().unwrap().to_owned();
        let a = self
            .json_as(token, Method::POST, &format!("/fhir/{rtype}"), body)
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{a:?}");
        let id = a.json()["id"].as_str().unwrap().to_owned();
        (id, a)
    }

    async fn create(&self, body: &Value) -> (String, Answer) {
        self.create_as(&self.token, body).await
    }

    /// A POST of a plain JSON body (the `/auth` and `/admin` routes), with or without a token.
    async fn post_json(&self, token: Option<&str>, uri: &str, body: &Value, from: &str) -> Answer {
        let mut b = Request::post(uri).header(header::CONTENT_TYPE, "application/json");
        if let Some(t) = token {
            b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let mut req = b.body(Body::from(body.to_string())).unwrap();
        req.extensions_mut().insert(ConnectInfo(address_of(from)));
        self.send(req).await
    }

    /// A POST of a form (the `/oauth` routes), with HTTP Basic client credentials or not.
    async fn form(&self, uri: &str, body: &str, basic: Option<(&str, &str)>) -> Answer {
        let mut b =
            Request::post(uri).header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        if let Some((id, secret)) = basic {
            let encoded =
                base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"));
            b = b.header(header::AUTHORIZATION, format!("Basic {encoded}"));
        }
        self.send(b.body(Body::from(body.to_owned())).unwrap())
            .await
    }

    /// Registers an OAuth2 client; returns its id and secret.
    async fn client(&self, name: &str, scope: &str, launch: Option<&str>) -> (String, String) {
        let launch = launch.map(|p| Id::parse(p).unwrap());
        let (id, secret) = self
            .state
            .accounts
            .create_client(name, scope, launch.as_ref(), &NoAudit)
            .await
            .unwrap();
        (id, secret.expose().to_owned())
    }

    /// A client credentials access token.
    async fn client_token(&self, id: &str, secret: &str, scope: Option<&str>) -> String {
        let mut body = "grant_type=client_credentials".to_owned();
        if let Some(scope) = scope {
            body.push_str(&format!("&scope={}", scope.replace(' ', "+")));
        }
        let a = self.form("/oauth/token", &body, Some((id, secret))).await;
        assert_eq!(a.status, StatusCode::OK, "{a:?}");
        a.json()["access_token"].as_str().unwrap().to_owned()
    }

    /// Creates a user with [`PASSWORD`].
    async fn user(&self, username: &str, role: Role) {
        self.state
            .accounts
            .create_user(username, Password::new(PASSWORD), role, &NoAudit)
            .await
            .unwrap();
    }

    async fn login(&self, body: Value) -> Answer {
        let from = body["username"].as_str().unwrap_or("-").to_owned();
        self.post_json(None, "/auth/login", &body, &from).await
    }

    /// Logs in through the routes, enrolling TOTP first when the account needs it. Returns
    /// the session token and the last TOTP code used (if any).
    async fn session_with_code(&self, username: &str) -> (String, Option<String>) {
        let a = self
            .login(json!({ "username": username, "password": PASSWORD }))
            .await;
        assert_eq!(a.status, StatusCode::OK, "{a:?}");
        let v = a.json();
        assert_eq!(v["token_type"], "Bearer");
        assert!(v["expires_at"].as_i64().is_some(), "{v}");
        let token = v["access_token"].as_str().unwrap().to_owned();
        if v["enrolment_required"] != json!(true) {
            return (token, None);
        }
        // The enrolment session reaches nothing but enrolment (and logout).
        let a = self.get_as(&token, "/fhir/Patient").await;
        a.assert_outcome(StatusCode::FORBIDDEN, "forbidden");
        assert_eq!(a.diagnostics(), "TOTP enrolment required");
        let a = self
            .post_json(Some(&token), "/auth/totp/enroll", &json!({}), username)
            .await;
        assert_eq!(a.status, StatusCode::OK, "{a:?}");
        let enrolment = a.json();
        assert!(enrolment["secret"].as_str().is_some_and(|s| s.len() >= 32));
        let totp = totp_rs::Totp::from_url(enrolment["otpauth_url"].as_str().unwrap()).unwrap();
        let now = now_unix();
        let code = totp.generate(now).to_string();
        let a = self
            .post_json(
                Some(&token),
                "/auth/totp/confirm",
                &json!({ "code": code }),
                username,
            )
            .await;
        assert_eq!(a.status, StatusCode::OK, "{a:?}");
        assert_eq!(a.json()["recovery_codes"].as_array().unwrap().len(), 10);
        // Each code works once: the next login uses the next step's.
        let next = totp.generate(now + 30).to_string();
        let a = self
            .login(json!({ "username": username, "password": PASSWORD, "totp": next }))
            .await;
        assert_eq!(a.status, StatusCode::OK, "{a:?}");
        let v = a.json();
        assert_eq!(v["enrolment_required"], false, "{v}");
        (v["access_token"].as_str().unwrap().to_owned(), Some(next))
    }

    async fn session(&self, username: &str) -> String {
        self.session_with_code(username).await.0
    }

    /// A user of `role` with a session.
    async fn person(&self, username: &str, role: Role) -> String {
        self.user(username, role).await;
        self.session(username).await
    }

    /// `POST /admin/users/{username}/grants` as `admin`.
    async fn grant(&self, admin: &str, username: &str, patient: &str, labels: &[&str]) {
        let a = self
            .post_json(
                Some(admin),
                &format!("/admin/users/{username}/grants"),
                &json!({ "patient": patient, "labels": labels }),
                "admin",
            )
            .await;
        assert_eq!(a.status, StatusCode::NO_CONTENT, "{a:?}");
    }
}

fn patient(family: &str) -> Value {
    json!({
        "resourceType": "Patient",
        "name": [{ "family": family, "given": ["Alex"] }],
        "birthDate": "1970-01-02",
    })
}

fn assert_security_headers(a: &Answer) {
    assert_eq!(a.header("cache-control"), Some("no-store"), "{a:?}");
    assert_eq!(a.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(a.header("x-frame-options"), Some("DENY"));
    assert_eq!(
        a.header("content-security-policy"),
        Some("default-src 'none'; frame-ancestors 'none'")
    );
    assert_eq!(a.header("referrer-policy"), Some("no-referrer"));
    assert_eq!(
        a.header("strict-transport-security"),
        Some("max-age=31536000")
    );
    let rid = a.header("x-request-id").expect("x-request-id");
    assert!(uuid::Uuid::parse_str(rid).is_ok(), "{rid}");
}

/// A log sink shared with the test.
#[derive(Clone, Default)]
struct LogBuffer(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuffer {
    type Writer = LogBuffer;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

// ---------------------------------------------------------------------------------------
// Identity and authorization

fn observation(patient: &str) -> Value {
    json!({
        "resourceType": "Observation",
        "status": "final",
        "code": { "coding": [{ "system": "http://loinc.org", "code": "8867-4" }] },
        "subject": { "reference": format!("Patient/{patient}") },
    })
}

/// An Observation labelled mental health (v3-ActCode PSY).
fn psy_observation(patient: &str) -> Value {
    let mut o = observation(patient);
    o["meta"] = json!({
        "security": [{
            "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
            "code": "PSY",
        }]
    });
    o
}

/// A request with a purpose of use and, optionally, a break-the-glass reason.
fn with_purpose(
    b: axum::http::request::Builder,
    purpose: &str,
    reason: Option<&str>,
) -> axum::http::request::Builder {
    let b = b.header("x-purpose-of-use", purpose);
    match reason {
        Some(r) => b.header("x-break-glass-reason", r),
        None => b,
    }
}

fn total(a: &Answer) -> u64 {
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    a.json()["total"].as_u64().unwrap()
}

// ---------------------------------------------------------------------------------------
// The audit trail

/// The audit entries after `after` (seq), parsed.
async fn audit_entries_after(c: &Ctx, after: u64) -> Vec<(phivault_audit::AuditEntry, String)> {
    c.state
        .audit
        .store()
        .audit_entries(after, 10_000)
        .await
        .unwrap()
        .into_iter()
        .map(|row| {
            let text = String::from_utf8(row.body.clone()).unwrap();
            let entry = phivault_audit::AuditEntry::from_canonical(&row.body).unwrap();
            (entry, text)
        })
        .collect()
}

/// The number of audit entries so far.
async fn audit_count(c: &Ctx) -> u64 {
    c.state.audit.store().audit_tail().await.unwrap().seq - 1
}

/// The entries after `before`, as (action, resource type, resource id, patient, outcome).
async fn audit_summary(
    c: &Ctx,
    before: u64,
) -> Vec<(
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    phivault_audit::Outcome,
)> {
    audit_entries_after(c, before)
        .await
        .into_iter()
        .map(|(e, _)| {
            (
                e.action,
                e.resource_type,
                e.resource_id,
                e.patient_id,
                e.outcome,
            )
        })
        .collect()
}

/// A patient-privacy Consent of `patient` denying `purpose` (to everyone), for `classes` if
/// any.
fn deny_consent(patient: &str, purpose: &str, classes: &[&str]) -> Value {
    let mut provision = json!({
        "type": "deny",
        "purpose": [{
            "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
            "code": purpose,
        }],
    });
    if !classes.is_empty() {
        provision["class"] = classes
            .iter()
            .map(|c| json!({"system": "http://hl7.org/fhir/resource-types", "code": c}))
            .collect();
    }
    json!({
        "resourceType": "Consent",
        "status": "active",
        "scope": {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/consentscope",
            "code": "patient-privacy",
        }]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": format!("Patient/{patient}")},
        "provision": provision,
    })
}

/// A patient user `username` linked to `pid`, signed in.
async fn patient_session(c: &Ctx, username: &str, pid: &str) -> String {
    c.user(username, Role::Patient).await;
    c.state
        .accounts
        .link_patient(username, &Id::parse(pid).unwrap(), &NoAudit)
        .await
        .unwrap();
    c.session(username).await
}

/// A CareTeam of `patient` with `practitioner` as a member, with optional team and member
/// periods.
fn care_team(
    patient: &str,
    practitioner: &str,
    team: Option<Value>,
    member: Option<Value>,
) -> Value {
    let mut participant = json!({"member": {"reference": format!("Practitioner/{practitioner}")}});
    if let Some(p) = member {
        participant["period"] = p;
    }
    let mut t = json!({
        "resourceType": "CareTeam",
        "status": "active",
        "subject": {"reference": format!("Patient/{patient}")},
        "participant": [participant],
    });
    if let Some(p) = team {
        t["period"] = p;
    }
    t
}

/// An "HIV positive" Observation of `subject` (a Reference as JSON).
fn hiv_note(subject: Value) -> Value {
    json!({
        "resourceType": "Observation",
        "status": "final",
        "code": { "text": "HIV positive" },
        "subject": subject,
    })
}
