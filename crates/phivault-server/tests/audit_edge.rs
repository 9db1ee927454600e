//! The audit trail at the edge, without sockets (`Router::oneshot` over the real store, in a
//! temporary SQLite directory): the path a route serves is the path its entry names.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Method, Request, StatusCode, header};
use base64::Engine as _;
use phivault_audit::{AuditEntry, Outcome};
use phivault_fhir::Validator;
use phivault_server::{AppState, ServerConfig, Transport, router};
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
        req.extensions_mut()
            .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 50000))));
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
