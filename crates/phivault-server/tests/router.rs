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

#[path = "router/all_types.rs"]
mod all_types;
#[path = "router/bulk.rs"]
mod bulk;
#[path = "router/caches.rs"]
mod caches;
#[path = "router/conditional.rs"]
mod conditional;
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
async fn create_read_update_delete_history() {
    let c = ctx().await;
    let mut body = patient("Smith");
    body["id"] = json!("client-chosen");
    let (id, a) = c.create(&body).await;
    assert_ne!(id, "client-chosen", "the server assigns ids on create");
    assert_eq!(a.header("etag"), Some("W/\"1\""));
    assert_eq!(
        a.header("location"),
        Some(format!("{BASE}/Patient/{id}/_history/1").as_str())
    );
    assert!(
        a.header("last-modified")
            .is_some_and(|d| d.ends_with(" GMT"))
    );
    assert_eq!(
        a.header("content-type"),
        Some("application/fhir+json; charset=utf-8")
    );
    assert_security_headers(&a);
    let created = a.json();
    assert_eq!(created["meta"]["versionId"], "1");
    assert_eq!(created["name"][0]["family"], "Smith");

    let a = c.get(&format!("/fhir/Patient/{id}")).await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    assert_eq!(a.header("etag"), Some("W/\"1\""));
    assert_eq!(a.json()["id"], id.as_str());

    // Update with the right version.
    let mut next = created.clone();
    next["name"][0]["family"] = json!("Smythe");
    let uri = format!("/fhir/Patient/{id}");
    let a = c
        .send(
            c.req(Method::PUT, &uri)
                .header(header::CONTENT_TYPE, "application/fhir+json")
                .header(header::IF_MATCH, "W/\"1\"")
                .body(Body::from(next.to_string()))
                .unwrap(),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    assert_eq!(a.header("etag"), Some("W/\"2\""));

    // Stale If-Match: 412.
    let a = c
        .send(
            c.req(Method::PUT, &uri)
                .header(header::CONTENT_TYPE, "application/fhir+json")
                .header(header::IF_MATCH, "W/\"1\"")
                .body(Body::from(next.to_string()))
                .unwrap(),
        )
        .await;
    a.assert_outcome(StatusCode::PRECONDITION_FAILED, "conflict");

    // Malformed If-Match: 400.
    let a = c
        .send(
            c.req(Method::PUT, &uri)
                .header(header::CONTENT_TYPE, "application/fhir+json")
                .header(header::IF_MATCH, "yesterday")
                .body(Body::from(next.to_string()))
                .unwrap(),
        )
        .await;
    a.assert_outcome(StatusCode::BAD_REQUEST, "value");

    // Body id differs from the URL's, or is absent: 400 (FHIR R4).
    let mut other = next.clone();
    other["id"] = json!("someone-else");
    let a = c.json(Method::PUT, &uri, &other).await;
    a.assert_outcome(StatusCode::BAD_REQUEST, "invalid");
    let mut no_id = next.clone();
    no_id.as_object_mut().unwrap().remove("id");
    let a = c.json(Method::PUT, &uri, &no_id).await;
    a.assert_outcome(StatusCode::BAD_REQUEST, "required");

    // Update-as-create with a client id: 201.
    let mut fresh = patient("Jones");
    fresh["id"] = json!("p-jones");
    let a = c.json(Method::PUT, "/fhir/Patient/p-jones", &fresh).await;
    assert_eq!(a.status, StatusCode::CREATED, "{a:?}");
    assert_eq!(
        a.header("location"),
        Some(format!("{BASE}/Patient/p-jones/_history/1").as_str())
    );

    // Delete: 204; then read is 410; vread of the old versions still works.
    let a = c
        .send(c.req(Method::DELETE, &uri).body(Body::empty()).unwrap())
        .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT, "{a:?}");
    assert!(a.body.is_empty());
    assert_security_headers(&a);
    let a = c.get(&uri).await;
    a.assert_outcome(StatusCode::GONE, "deleted");
    let a = c.get(&format!("{uri}/_history/1")).await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    assert_eq!(a.json()["name"][0]["family"], "Smith");
    let a = c.get(&format!("{uri}/_history/2")).await;
    assert_eq!(a.json()["name"][0]["family"], "Smythe");
    let a = c.get(&format!("{uri}/_history/3")).await;
    a.assert_outcome(StatusCode::GONE, "deleted");
    let a = c.get(&format!("{uri}/_history/9")).await;
    a.assert_outcome(StatusCode::NOT_FOUND, "not-found");

    // History: newest first, deletion without a resource.
    let a = c.get(&format!("{uri}/_history")).await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    let h = a.json();
    assert_eq!(h["type"], "history");
    assert_eq!(h["total"], 3);
    let entries = h["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 3);
    assert_eq!(entries[0]["request"]["method"], "DELETE");
    assert!(entries[0].get("resource").is_none());
    assert_eq!(entries[0]["response"]["etag"], "W/\"3\"");
    assert_eq!(entries[1]["resource"]["meta"]["versionId"], "2");
    assert_eq!(entries[2]["resource"]["meta"]["versionId"], "1");
    assert_eq!(entries[2]["fullUrl"], format!("{BASE}/Patient/{id}"));
    // Paging.
    let a = c.get(&format!("{uri}/_history?_count=2")).await;
    let h = a.json();
    assert_eq!(h["entry"].as_array().unwrap().len(), 2);
    let next_link = h["link"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["relation"] == "next")
        .expect("next link")["url"]
        .as_str()
        .unwrap()
        .to_owned();
    let a = c
        .get(next_link.strip_prefix("https://127.0.0.1:8443").unwrap())
        .await;
    let h = a.json();
    assert_eq!(h["entry"].as_array().unwrap().len(), 1);
    assert_eq!(h["entry"][0]["response"]["etag"], "W/\"1\"");

    // Deleting again is fine; deleting the unknown is 404.
    let a = c
        .send(c.req(Method::DELETE, &uri).body(Body::empty()).unwrap())
        .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT, "{a:?}");
    let a = c
        .send(
            c.req(Method::DELETE, "/fhir/Patient/never-was")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    a.assert_outcome(StatusCode::NOT_FOUND, "not-found");
    let a = c.get("/fhir/Patient/never-was").await;
    a.assert_outcome(StatusCode::NOT_FOUND, "not-found");
    let a = c.get("/fhir/Patient/never-was/_history").await;
    a.assert_outcome(StatusCode::NOT_FOUND, "not-found");
}

#[tokio::test]
async fn search_by_family() {
    let c = ctx().await;
    let (smith, _) = c.create(&patient("Smith")).await;
    c.create(&patient("Jones")).await;
    c.create(&patient("Brown")).await;

    let a = c.get("/fhir/Patient?family=smith").await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    assert_security_headers(&a);
    let b = a.json();
    assert_eq!(b["resourceType"], "Bundle");
    assert_eq!(b["type"], "searchset");
    assert_eq!(b["total"], 1);
    assert_eq!(b["entry"][0]["resource"]["id"], smith.as_str());
    assert_eq!(b["entry"][0]["search"]["mode"], "match");
    assert_eq!(b["entry"][0]["fullUrl"], format!("{BASE}/Patient/{smith}"));
    let self_link = b["link"][0]["url"].as_str().unwrap();
    assert!(
        self_link.starts_with(&format!("{BASE}/Patient?")),
        "{self_link}"
    );
    assert!(self_link.contains("family=smith"), "{self_link}");

    // POST _search with a form body (merged with the URL query).
    let a = c
        .send(
            c.req(Method::POST, "/fhir/Patient/_search?_count=5")
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from("family=Smi"))
                .unwrap(),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    assert_eq!(a.json()["total"], 1);
    let a = c
        .send(
            c.req(Method::POST, "/fhir/Patient/_search")
                .header(header::CONTENT_TYPE, "application/fhir+json")
                .body(Body::from("family=Smith"))
                .unwrap(),
        )
        .await;
    a.assert_outcome(StatusCode::UNSUPPORTED_MEDIA_TYPE, "not-supported");

    // Paging over everything.
    let a = c.get("/fhir/Patient?_count=2").await;
    let b = a.json();
    assert_eq!(b["total"], 3);
    assert_eq!(b["entry"].as_array().unwrap().len(), 2);
    let next = b["link"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["relation"] == "next")
        .expect("next link")["url"]
        .as_str()
        .unwrap()
        .to_owned();
    let a = c
        .get(next.strip_prefix("https://127.0.0.1:8443").unwrap())
        .await;
    let b = a.json();
    assert_eq!(b["entry"].as_array().unwrap().len(), 1);
    assert!(
        !b["link"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["relation"] == "next")
    );

    // Unknown parameter: 400, or ignored with a warning when lenient.
    let a = c.get("/fhir/Patient?shoe-size=42").await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{a:?}");
    let a = c
        .send(
            c.req(Method::GET, "/fhir/Patient?shoe-size=42&family=jones")
                .header("prefer", "handling=lenient")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    let b = a.json();
    assert_eq!(b["total"], 1);
    let outcome = b["entry"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["search"]["mode"] == "outcome")
        .expect("an outcome entry");
    assert!(outcome["resource"].to_string().contains("shoe-size"));
    assert!(!b["link"][0]["url"].as_str().unwrap().contains("shoe-size"));

    // Malformed percent-encoding: 400.
    let a = c.get("/fhir/Patient?family=%zz").await;
    a.assert_outcome(StatusCode::BAD_REQUEST, "value");
}

#[tokio::test]
async fn transaction_bundle() {
    let c = ctx().await;
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a",
                "resource": patient("Txn"),
                "request": { "method": "POST", "url": "Patient" }
            },
            {
                "resource": {
                    "resourceType": "Observation",
                    "status": "final",
                    "code": { "coding": [{ "system": "http://loinc.org", "code": "8867-4" }] },
                    "subject": { "reference": "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a" }
                },
                "request": { "method": "POST", "url": "Observation" }
            }
        ]
    });
    let a = c.json(Method::POST, "/fhir", &bundle).await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    let b = a.json();
    assert_eq!(b["type"], "transaction-response");
    assert_eq!(b["entry"].as_array().unwrap().len(), 2);
    assert!(
        b["entry"][0]["response"]["status"]
            .as_str()
            .unwrap()
            .starts_with("201")
    );
    assert!(
        b["entry"][0]["fullUrl"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{BASE}/Patient/"))
    );
    let pid = b["entry"][0]["resource"]["id"].as_str().unwrap();
    assert_eq!(
        b["entry"][1]["resource"]["subject"]["reference"],
        format!("Patient/{pid}")
    );

    // A failing entry fails the transaction, naming the entry.
    let failing = json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            { "resource": patient("Ok"), "request": { "method": "POST", "url": "Patient" } },
            { "request": { "method": "DELETE", "url": "Patient/does-not-exist" } }
        ]
    });
    let a = c.json(Method::POST, "/fhir", &failing).await;
    assert!(a.status.is_client_error(), "{a:?}");
    assert_eq!(a.json()["resourceType"], "OperationOutcome");
    assert!(
        String::from_utf8_lossy(&a.body).contains("entry[1]"),
        "{a:?}"
    );
    // Nothing of it was kept.
    let a = c.get("/fhir/Patient?family=ok").await;
    assert_eq!(a.json()["total"], 0, "{a:?}");

    // Too many entries: 413.
    let many: Vec<Value> = (0..11)
        .map(|_| json!({ "resource": patient("Many"), "request": { "method": "POST", "url": "Patient" } }))
        .collect();
    let a = c
        .json(
            Method::POST,
            "/fhir",
            &json!({ "resourceType": "Bundle", "type": "batch", "entry": many }),
        )
        .await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE, "{a:?}");
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
        None,
        "no authorization endpoint is offered"
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
    assert_eq!(v["grant_types_supported"], json!(["client_credentials"]));
    assert_eq!(
        v["token_endpoint_auth_methods_supported"],
        json!(["client_secret_basic", "client_secret_post"])
    );
    assert_eq!(
        v["capabilities"],
        json!(["permission-v2", "client-confidential-symmetric"])
    );
    assert!(v.get("authorization_endpoint").is_none());
    let scopes = v["scopes_supported"].as_array().unwrap();
    assert!(scopes.iter().any(|s| s == "system/*.rs"), "{v}");
    assert!(scopes.iter().all(|s| s.as_str().unwrap().contains('/')));
    // Every advertised scope can be registered and requested.
    for scope in scopes {
        let (id, secret) = c.client("s", scope.as_str().unwrap(), Some("p1")).await;
        c.client_token(&id, &secret, None).await;
    }
}

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
        assert_eq!(entries.len(), 1, "{method} {uri}: {entries:?}");
        assert_eq!(entries[0].0.action, format!("{method} {template}"));
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

/// An "HIV positive" Observation of `subject` (a Reference as JSON).
fn hiv_note(subject: Value) -> Value {
    json!({
        "resourceType": "Observation",
        "status": "final",
        "code": { "text": "HIV positive" },
        "subject": subject,
    })
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
