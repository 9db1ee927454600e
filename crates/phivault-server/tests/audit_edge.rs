//! The audit trail at the edge, without sockets (`Router::oneshot` over the real store, in a
//! temporary SQLite directory): the path a route serves is the path its entry names, and
//! refused unauthenticated requests are aggregated per client address without losing their
//! count, while failed logins keep an entry each.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Method, Request, StatusCode, header};
use base64::Engine as _;
use phivault_audit::{ActorKind, AuditEntry, Outcome, REFUSALS_ACTION};
use phivault_auth::Password;
use phivault_fhir::Validator;
use phivault_policy::Role;
use phivault_server::{AppState, RefusalLimits, RefusalTally, ServerConfig, Transport, router};
use phivault_store::{NoAudit, Store, StoreOptions};
use serde_json::{Value, json};
use tower::ServiceExt;

struct Ctx {
    _dir: tempfile::TempDir,
    state: AppState,
    token: String,
}

async fn ctx() -> Ctx {
    let dir = tempfile::tempdir().unwrap();
    let mut key = [0u8; 32];
    phivault_crypto::random_bytes(&mut key).unwrap();
    let keys = phivault_crypto::StaticKeyProvider::from_hex(hex::encode(key));
    let opts = StoreOptions::new(format!("sqlite://{}/t.db", dir.path().display()));
    let store = Store::open(&opts, &keys).await.unwrap();
    let state = AppState::new(
        store,
        Arc::new(Validator::new().unwrap()),
        None,
        "https://127.0.0.1:8443/fhir",
        64 * 1024,
    )
    .await
    .unwrap();
    let (id, secret) = state
        .accounts
        .create_client("system", "system/*.cruds", None, &NoAudit)
        .await
        .unwrap();
    let mut c = Ctx {
        _dir: dir,
        state,
        token: String::new(),
    };
    let basic =
        base64::engine::general_purpose::STANDARD.encode(format!("{id}:{}", secret.expose()));
    let req = Request::post("/oauth/token")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::AUTHORIZATION, format!("Basic {basic}"))
        .body(Body::from("grant_type=client_credentials"))
        .unwrap();
    let (status, v) = c.send(req).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    c.token = v["access_token"].as_str().unwrap().to_owned();
    c
}

impl Ctx {
    async fn send(&self, mut req: Request<Body>) -> (StatusCode, Value) {
        if req.extensions().get::<ConnectInfo<SocketAddr>>().is_none() {
            req.extensions_mut()
                .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 50000))));
        }
        let resp = router(self.state.clone()).oneshot(req).await.unwrap();
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    fn req(&self, method: Method, uri: &str) -> axum::http::request::Builder {
        Request::builder()
            .method(method)
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token))
    }

    async fn get(&self, uri: &str) -> (StatusCode, Value) {
        self.send(self.req(Method::GET, uri).body(Body::empty()).unwrap())
            .await
    }

    /// `GET uri` from `peer` with `authorization` (if any), answered 401.
    async fn refused_from(&self, peer: [u8; 4], uri: &str, authorization: Option<&str>) {
        let mut req = Request::get(uri);
        if let Some(a) = authorization {
            req = req.header(header::AUTHORIZATION, a);
        }
        let mut req = req.body(Body::empty()).unwrap();
        req.extensions_mut()
            .insert(ConnectInfo(SocketAddr::from((peer, 40000))));
        let (status, v) = self.send(req).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{uri}: {v}");
    }

    /// The seq of the last entry.
    async fn tail(&self) -> u64 {
        self.state.audit.store().audit_tail().await.unwrap().seq - 1
    }

    /// The entries after seq `after`.
    async fn entries_after(&self, after: u64) -> Vec<AuditEntry> {
        let store = self.state.audit.store();
        let mut out = Vec::new();
        for seq in after + 1..=self.tail().await {
            let row = store.audit_entry(seq).await.unwrap().unwrap();
            out.push(AuditEntry::from_canonical(&row.body).unwrap());
        }
        out
    }

    async fn last_entry(&self) -> AuditEntry {
        let store = self.state.audit.store();
        let seq = store.audit_tail().await.unwrap().seq - 1;
        let row = store.audit_entry(seq).await.unwrap().unwrap();
        AuditEntry::from_canonical(&row.body).unwrap()
    }
}

#[tokio::test]
async fn percent_encoded_paths_are_refused_and_audited() {
    let c = ctx().await;
    let patient = json!({"resourceType": "Patient", "name": [{"family": "Quillfeather"}]});
    let (status, v) = c
        .send(
            c.req(Method::POST, "/fhir/Patient")
                .header(header::CONTENT_TYPE, "application/fhir+json")
                .body(Body::from(patient.to_string()))
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let id = v["id"].as_str().unwrap().to_owned();

    // The canonical path is served, and its entry names the resource.
    let (status, _) = c.get(&format!("/fhir/Patient/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    let entry = c.last_entry().await;
    assert_eq!(entry.resource_type.as_deref(), Some("Patient"));
    assert_eq!(entry.resource_id.as_deref(), Some(id.as_str()));

    // The same resource through percent-encoded unreserved characters: refused with a 400
    // OperationOutcome, never served, and the refusal is audited.
    let mut encoded_id = String::from("%");
    encoded_id.push_str(&format!("{:02X}", id.as_bytes()[0]));
    encoded_id.push_str(&id[1..]);
    for uri in [
        format!("/fhir/%50atient/{id}"),
        format!("/fhir/%50atient/{id}/_history"),
        format!("/fhir/Patient/{encoded_id}"),
        format!("/fhir/Patient/{id}/%24access-log"),
    ] {
        let before = c.state.audit.store().audit_tail().await.unwrap().seq;
        let (status, v) = c.get(&uri).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {v}");
        assert_eq!(v["resourceType"], "OperationOutcome", "{uri}: {v}");
        assert!(
            v["issue"][0]["diagnostics"]
                .as_str()
                .unwrap()
                .contains("canonical form"),
            "{uri}: {v}"
        );
        assert!(v.get("name").is_none(), "{uri}: {v}");
        let after = c.state.audit.store().audit_tail().await.unwrap().seq;
        assert_eq!(after, before + 1, "{uri}: one entry");
        let entry = c.last_entry().await;
        assert_eq!(entry.outcome, Outcome::Error, "{uri}");
    }
}

#[tokio::test]
async fn a_clean_shutdown_leaves_a_checkpoint_over_every_entry() {
    let c = ctx().await;
    // Entries made before serving (the token request among them) and none covered yet.
    let (status, _) = c.get("/fhir/metadata").await;
    assert_eq!(status, StatusCode::OK);
    let entries = c.state.audit.store().audit_tail().await.unwrap().seq - 1;
    assert!(entries >= 2);
    assert!(c.state.audit.last_checkpoint().await.unwrap().is_none());
    let config = ServerConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        transport: Transport::InsecureHttp,
        base_url: "http://127.0.0.1:0/fhir".to_owned(),
        max_body_bytes: 64 * 1024,
        limits: phivault_server::ConnectionLimits::default(),
        node: phivault_server::NodeSettings::default(),
    };
    // Shut down at once: the periodic task (every 60 s) never ran, so only the shutdown
    // checkpoint can cover the entries.
    phivault_server::serve(config, c.state.clone(), std::future::ready(()))
        .await
        .unwrap();
    let cp = c.state.audit.last_checkpoint().await.unwrap().unwrap();
    assert_eq!(cp.size, entries);
    assert!(cp.verify_signature(c.state.audit.public_key()));
    c.state.audit.verify(|_| {}).await.unwrap();
}

/// The summary entries among `entries`, by source address.
fn summaries(entries: &[AuditEntry]) -> Vec<&AuditEntry> {
    entries
        .iter()
        .filter(|e| e.action == REFUSALS_ACTION)
        .collect()
}

#[tokio::test]
async fn a_flood_of_unauthenticated_requests_adds_constant_entries_and_keeps_its_count() {
    let c = ctx().await;
    let before = c.tail().await;
    const N: u64 = 500;
    for i in 0..N {
        match i % 3 {
            0 => c.refused_from([192, 0, 2, 1], "/fhir/Patient", None).await,
            1 => {
                c.refused_from([192, 0, 2, 1], "/fhir/Observation/x", Some("Bearer nope"))
                    .await
            }
            _ => {
                c.refused_from([192, 0, 2, 1], "/fhir/Patient", Some("Bearer pvs_forged.x"))
                    .await
            }
        }
    }
    for _ in 0..3 {
        c.refused_from([192, 0, 2, 2], "/admin/break-glass", None)
            .await;
    }
    // The first of each address is recorded in full, at once; the rest are counted.
    let entries = c.entries_after(before).await;
    assert_eq!(entries.len(), 2, "{entries:?}");
    for (e, address) in entries.iter().zip(["192.0.2.1", "192.0.2.2"]) {
        assert_eq!(e.actor_kind, ActorKind::Anonymous);
        assert_eq!(e.outcome, Outcome::Denied);
        assert_eq!(e.source_address.as_deref(), Some(address));
        assert!(e.refusals.is_none());
    }

    // Failed logins name an account: each keeps its own entry.
    c.state
        .accounts
        .create_user(
            "lock.target",
            Password::new("Correct-Horse-9-Battery"),
            Role::Patient,
            &NoAudit,
        )
        .await
        .unwrap();
    let mid = c.tail().await;
    for _ in 0..3 {
        let mut req = Request::post("/auth/login")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(
                json!({ "username": "lock.target", "password": "wrong-wrong-wrong" }).to_string(),
            ))
            .unwrap();
        req.extensions_mut()
            .insert(ConnectInfo(SocketAddr::from(([192, 0, 2, 1], 40000))));
        let (status, v) = c.send(req).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{v}");
    }
    let logins = c.entries_after(mid).await;
    assert_eq!(logins.len(), 3, "{logins:?}");
    assert!(logins.iter().all(|e| e.action == "POST /auth/login"));

    // The window ends: one summary per address, counting every refusal, the first included.
    assert_eq!(c.state.refusals.flush(&c.state.audit).await.unwrap(), 2);
    let entries = c.entries_after(before).await;
    assert_eq!(entries.len(), 2 + 3 + 2, "{entries:?}");
    let found = summaries(&entries);
    assert_eq!(found.len(), 2, "{found:?}");
    let one = found[0];
    assert_eq!(one.source_address.as_deref(), Some("192.0.2.1"));
    assert_eq!(one.actor_kind, ActorKind::Anonymous);
    assert_eq!(one.outcome, Outcome::Denied);
    let r = one.refusals.as_ref().unwrap();
    assert_eq!(r.count, N);
    assert!(r.first <= r.last);
    assert_eq!(r.routes, ["GET /fhir/{type}", "GET /fhir/{type}/{id}"]);
    assert!(r.addresses.is_empty() && !r.truncated);
    let two = found[1];
    assert_eq!(two.source_address.as_deref(), Some("192.0.2.2"));
    assert_eq!(two.refusals.as_ref().unwrap().count, 3);
    assert_eq!(
        two.refusals.as_ref().unwrap().routes,
        ["GET /admin/break-glass"]
    );

    // A new window: the next refusal is recorded in full again; nothing else to summarise.
    assert_eq!(c.state.refusals.flush(&c.state.audit).await.unwrap(), 0);
    let after = c.tail().await;
    c.refused_from([192, 0, 2, 1], "/fhir/Patient", None).await;
    assert_eq!(c.entries_after(after).await.len(), 1);
    c.state.audit.verify(|_| {}).await.unwrap();
}

#[tokio::test]
async fn addresses_past_the_cap_share_one_overflow_summary() {
    let mut c = ctx().await;
    c.state.refusals = Arc::new(RefusalTally::new(RefusalLimits {
        max_addresses: 2,
        ..RefusalLimits::default()
    }));
    let before = c.tail().await;
    for last in 1..=5u8 {
        for _ in 0..2 {
            c.refused_from([198, 51, 100, last], "/fhir/Patient", None)
                .await;
        }
    }
    // Two addresses tracked (one full entry each); the other three only counted.
    assert_eq!(c.entries_after(before).await.len(), 2);
    assert_eq!(c.state.refusals.flush(&c.state.audit).await.unwrap(), 3);
    let entries = c.entries_after(before).await;
    let found = summaries(&entries);
    assert_eq!(found.len(), 3, "{found:?}");
    let overflow = found
        .iter()
        .find(|e| e.source_address.is_none())
        .expect("an overflow summary");
    let r = overflow.refusals.as_ref().unwrap();
    assert_eq!(r.count, 6);
    assert_eq!(
        r.addresses,
        ["198.51.100.3", "198.51.100.4", "198.51.100.5"]
    );
    c.state.audit.verify(|_| {}).await.unwrap();
}

#[tokio::test]
async fn a_clean_shutdown_writes_the_window_summaries() {
    let c = ctx().await;
    for _ in 0..10 {
        c.refused_from([203, 0, 113, 9], "/fhir/Patient", None)
            .await;
    }
    let before = c.tail().await;
    let config = ServerConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        transport: Transport::InsecureHttp,
        base_url: "http://127.0.0.1:0/fhir".to_owned(),
        max_body_bytes: 64 * 1024,
        limits: phivault_server::ConnectionLimits::default(),
        node: phivault_server::NodeSettings::default(),
    };
    phivault_server::serve(config, c.state.clone(), std::future::ready(()))
        .await
        .unwrap();
    let entries = c.entries_after(before).await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0].refusals.as_ref().unwrap().count, 10);
    // The shutdown checkpoint covers the summary too.
    let cp = c.state.audit.last_checkpoint().await.unwrap().unwrap();
    assert_eq!(cp.size, c.tail().await);
    c.state.audit.verify(|_| {}).await.unwrap();
}
