//! Router tests without sockets: the real store (SQLite in a temporary directory), the real
//! validator and the bootstrap token, driven through `Router::oneshot`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use phivault_fhir::Validator;
use phivault_server::auth::BootstrapAuth;
use phivault_server::{AppState, ServerConfig, ServerError, Transport, router};
use phivault_store::{Store, StoreOptions};
use serde_json::{Value, json};
use tower::ServiceExt;

const BASE: &str = "https://127.0.0.1:8443/fhir";
const MAX_BODY: usize = 64 * 1024;

struct Ctx {
    _dir: tempfile::TempDir,
    state: AppState,
    token: String,
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
}

async fn ctx() -> Ctx {
    let dir = tempfile::tempdir().unwrap();
    let mut key = [0u8; 32];
    phivault_crypto::random_bytes(&mut key).unwrap();
    let keys = phivault_crypto::StaticKeyProvider::from_hex(hex::encode(key));
    let mut opts = StoreOptions::new(format!("sqlite://{}/t.db", dir.path().display()));
    opts.max_bundle_entries = 10;
    let store = Store::open(&opts, &keys).await.unwrap();
    let (auth, token) = BootstrapAuth::load_or_create(dir.path()).unwrap();
    let state = AppState {
        store,
        validator: Arc::new(Validator::new().unwrap()),
        auth: Arc::new(auth),
        base_url: Arc::from(BASE),
        max_body_bytes: MAX_BODY,
    };
    Ctx {
        _dir: dir,
        state,
        token: token.unwrap(),
    }
}

impl Ctx {
    async fn send(&self, req: Request<Body>) -> Answer {
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

    fn req(&self, method: Method, uri: &str) -> axum::http::request::Builder {
        Request::builder()
            .method(method)
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token))
    }

    async fn get(&self, uri: &str) -> Answer {
        self.send(self.req(Method::GET, uri).body(Body::empty()).unwrap())
            .await
    }

    async fn json(&self, method: Method, uri: &str, body: &Value) -> Answer {
        self.send(
            self.req(method, uri)
                .header(header::CONTENT_TYPE, "application/fhir+json")
                .body(Body::from(body.to_string()))
                .unwrap(),
        )
        .await
    }

    async fn create(&self, body: &Value) -> (String, Answer) {
        let rtype = body["resourceType"].as_str().unwrap().to_owned();
        let a = self
            .json(Method::POST, &format!("/fhir/{rtype}"), body)
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{a:?}");
        let id = a.json()["id"].as_str().unwrap().to_owned();
        (id, a)
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
        "/fhir/metadata",
        "/fhir/Patient",
        "/fhir/Patient/x",
        "/nowhere",
    ] {
        let a = c.send(Request::get(uri).body(Body::empty()).unwrap()).await;
        a.assert_outcome(StatusCode::UNAUTHORIZED, "login");
        assert_eq!(
            a.header("www-authenticate"),
            Some("Bearer realm=\"phivault\"")
        );
        assert_security_headers(&a);

        let a = c
            .send(
                Request::get(uri)
                    .header(header::AUTHORIZATION, "Bearer pvb_00")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        a.assert_outcome(StatusCode::UNAUTHORIZED, "login");

        let a = c
            .send(
                Request::get(uri)
                    .header(header::AUTHORIZATION, format!("Basic {}", c.token))
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        a.assert_outcome(StatusCode::UNAUTHORIZED, "login");
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

    // Body id differs from the URL's: 422; absent: 400.
    let mut other = next.clone();
    other["id"] = json!("someone-else");
    let a = c.json(Method::PUT, &uri, &other).await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{a:?}");
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
    let a = c.get("/fhir/metadata").await;
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
    assert_eq!(rest["security"]["cors"], false);
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

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        text.contains("/fhir/{type}"),
        "the route template is logged:\n{text}"
    );
    assert!(
        text.contains("bootstrap-admin"),
        "the principal is logged:\n{text}"
    );
    assert!(!text.contains(&marker), "PHI in the log:\n{text}");
    assert!(
        !text.contains(&c.token[4..]),
        "the token in the log:\n{text}"
    );
}
