//! What the page tests share: a state over a fresh SQLite store, requests through the whole
//! router (edge, audit trail and all) with a browser's cookies, accounts signed in with their
//! second factor, and the audit entries a request left.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use base64::Engine as _;
use phivault_audit::{AuditEntry, Outcome};
use phivault_auth::{Accounts, LoginRequest, Password, PasswordHasher};
use phivault_fhir::Validator;
use phivault_policy::Role;
use phivault_store::{NoAudit, Store, StoreOptions};
use serde_json::Value;
use tower::ServiceExt as _;

use crate::AppState;

/// Every test account's password.
pub(crate) const PASSWORD: &str = "plum-orchard-lantern-47";
/// A well-formed CSRF token, sent as cookie and field alike.
pub(crate) const CSRF: &str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQ";

/// A state over a fresh store (dropped with it), and a system app's token for fixtures.
pub(crate) struct Ctx {
    _dir: tempfile::TempDir,
    pub(crate) state: AppState,
    /// A `system/*.cruds` app's token.
    pub(crate) sys: String,
}

/// What the router answered.
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Vec<u8>,
}

impl Answer {
    /// The body as text.
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header's value (empty when absent).
    pub(crate) fn header(&self, name: header::HeaderName) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// `Location`.
    pub(crate) fn location(&self) -> &str {
        self.header(header::LOCATION)
    }

    /// The text of the element with `id` (`<code id="x">text</code>`).
    pub(crate) fn text_of(&self, id: &str) -> String {
        let text = self.text();
        let start = text.find(&format!("id=\"{id}\">")).expect(id) + id.len() + 6;
        text[start..].split('<').next().unwrap().to_owned()
    }
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP {} {}", self.status, self.text())
    }
}

/// A fresh state (cheap password hashing) with a system app.
pub(crate) async fn ctx() -> Ctx {
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
    let mut c = Ctx {
        _dir: dir,
        state,
        sys: String::new(),
    };
    c.sys = c.client_token("system", "system/*.cruds").await.1;
    c
}

impl Ctx {
    /// `req` through the router, from 127.0.0.1.
    pub(crate) async fn send(&self, mut req: Request<Body>) -> Answer {
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
            .unwrap()
            .to_vec();
        Answer {
            status,
            headers,
            body,
        }
    }

    /// A client with `scope` and a client-credentials token of it: (client id, token).
    pub(crate) async fn client_token(&self, name: &str, scope: &str) -> (String, String) {
        let (id, secret) = self
            .state
            .accounts
            .create_client(name, scope, None, &NoAudit)
            .await
            .unwrap();
        let basic =
            base64::engine::general_purpose::STANDARD.encode(format!("{id}:{}", secret.expose()));
        let req = Request::post("/oauth/token")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::AUTHORIZATION, format!("Basic {basic}"))
            .body(Body::from("grant_type=client_credentials"))
            .unwrap();
        let a = self.send(req).await;
        assert_eq!(a.status, StatusCode::OK, "{a:?}");
        let v: Value = serde_json::from_slice(&a.body).unwrap();
        (id, v["access_token"].as_str().unwrap().to_owned())
    }

    /// An API call with a bearer token, a FHIR JSON body and extra headers.
    pub(crate) async fn api(
        &self,
        token: &str,
        method: Method,
        uri: &str,
        body: Option<&Value>,
        extra: &[(&str, &str)],
    ) -> Answer {
        let mut b = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Bearer {token}"));
        for (k, v) in extra {
            b = b.header(*k, *v);
        }
        let req = match body {
            Some(v) => b
                .header(header::CONTENT_TYPE, "application/fhir+json")
                .body(Body::from(v.to_string())),
            None => b.body(Body::empty()),
        };
        self.send(req.unwrap()).await
    }

    /// Creates `body` as the system app; its id.
    pub(crate) async fn create(&self, body: Value) -> String {
        let rtype = body["resourceType"].as_str().unwrap().to_owned();
        let uri = format!("/fhir/{rtype}");
        let a = self
            .api(&self.sys, Method::POST, &uri, Some(&body), &[])
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{a:?}");
        let v: Value = serde_json::from_slice(&a.body).unwrap();
        v["id"].as_str().unwrap().to_owned()
    }

    /// A new account; its user id.
    pub(crate) async fn user(&self, username: &str, role: Role) -> String {
        self.state
            .accounts
            .create_user(username, Password::new(PASSWORD), role, &NoAudit)
            .await
            .unwrap()
    }

    /// A login: (session token, enrolment only).
    pub(crate) async fn login(&self, username: &str, totp: Option<String>) -> (String, bool) {
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

    /// A session of `username`, enrolling their authenticator first when the account must.
    pub(crate) async fn session(&self, username: &str) -> String {
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

    /// A session of a new account `username` with `role` ([`Ctx::session`]).
    pub(crate) async fn new_session(&self, username: &str, role: Role) -> String {
        self.user(username, role).await;
        self.session(username).await
    }

    /// The cookies of a browser signed in with `session`.
    pub(crate) fn cookies(session: &str) -> String {
        format!("__Host-phivault_session={session}; __Host-phivault_csrf={CSRF}")
    }

    /// `GET uri` of a page, signed in with `session`.
    pub(crate) async fn page(&self, session: &str, uri: &str) -> Answer {
        let req = Request::get(uri)
            .header(header::COOKIE, Self::cookies(session))
            .body(Body::empty())
            .unwrap();
        self.send(req).await
    }

    /// `POST uri` of a form with the CSRF field, signed in with `session`.
    pub(crate) async fn post(&self, session: &str, uri: &str, fields: &[(&str, &str)]) -> Answer {
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
    pub(crate) async fn audit_seq(&self) -> u64 {
        self.state.audit.store().audit_tail().await.unwrap().seq - 1
    }

    /// The audit entries after `seq`.
    pub(crate) async fn entries_after(&self, seq: u64) -> Vec<AuditEntry> {
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
    pub(crate) async fn one_entry(&self, seq: u64, action: &str, outcome: Outcome) -> AuditEntry {
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
