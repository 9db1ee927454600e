//! Authenticated FHIR requests to a running server, and assertions on their answers.

use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap};
use reqwest::{Method, RequestBuilder};
use serde_json::Value;

/// The FHIR JSON media type.
pub(crate) const FHIR_JSON: &str = "application/fhir+json";

/// A client bound to one server: its base URL (`https://127.0.0.1:<port>/fhir`) and bearer
/// token. Cheap to clone (share it with tasks).
#[derive(Clone)]
pub struct Api {
    client: reqwest::Client,
    base: String,
    token: String,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// An answer, fully read.
#[derive(Clone)]
pub struct Resp {
    /// HTTP status.
    pub status: u16,
    /// Headers.
    pub headers: HeaderMap,
    /// Body as text.
    pub text: String,
}

impl std::fmt::Debug for Resp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP {} {}", self.status, self.text)
    }
}

impl Api {
    pub(crate) fn new(client: reqwest::Client, base: &str, token: &str) -> Api {
        Api {
            client,
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
        }
    }

    /// The same server with another bearer token.
    pub fn with_token(&self, token: &str) -> Api {
        Api {
            client: self.client.clone(),
            base: self.base.clone(),
            token: token.to_owned(),
        }
    }

    /// The FHIR base URL, e.g. `https://127.0.0.1:40123/fhir`.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The bearer token.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The HTTPS client (trusts only the server's CA).
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// An absolute URL: `path` relative to the base (`Patient/1`, `Patient?name=x`), or
    /// returned as is when already absolute (links from Bundles).
    pub fn url(&self, path: &str) -> String {
        if path.starts_with("https://") || path.starts_with("http://") {
            path.to_owned()
        } else if path.is_empty() {
            self.base.clone()
        } else {
            format!("{}/{}", self.base, path.trim_start_matches('/'))
        }
    }

    /// A request without credentials (for 401 tests).
    pub fn anonymous(&self, method: Method, path: &str) -> RequestBuilder {
        self.client
            .request(method, self.url(path))
            .header(ACCEPT, FHIR_JSON)
    }

    /// A request with the bearer token and `Accept: application/fhir+json`.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.anonymous(method, path)
            .header(AUTHORIZATION, format!("Bearer {}", self.token))
    }

    /// Sends and reads the whole answer; a transport error is a test failure.
    pub async fn send(rb: RequestBuilder) -> Resp {
        match Self::try_send(rb).await {
            Ok(r) => r,
            Err(e) => panic!("request failed at the transport level: {e:?}"),
        }
    }

    /// Sends and reads the whole answer.
    pub async fn try_send(rb: RequestBuilder) -> Result<Resp, reqwest::Error> {
        let r = rb.send().await?;
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let text = r.text().await?;
        Ok(Resp {
            status,
            headers,
            text,
        })
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Resp {
        Self::send(self.request(Method::GET, path)).await
    }

    /// `POST path` with a FHIR JSON body.
    pub async fn post_json(&self, path: &str, body: &Value) -> Resp {
        Self::send(self.json_request(Method::POST, path, body)).await
    }

    /// `PUT path` with a FHIR JSON body.
    pub async fn put_json(&self, path: &str, body: &Value) -> Resp {
        Self::send(self.json_request(Method::PUT, path, body)).await
    }

    /// `PUT path` with a FHIR JSON body and `If-Match: W/"<version>"`.
    pub async fn put_json_if_match(&self, path: &str, body: &Value, version: u64) -> Resp {
        Self::send(
            self.json_request(Method::PUT, path, body)
                .header("If-Match", format!("W/\"{version}\"")),
        )
        .await
    }

    /// `DELETE path`.
    pub async fn delete(&self, path: &str) -> Resp {
        Self::send(self.request(Method::DELETE, path)).await
    }

    /// A request carrying `body` as `application/fhir+json`.
    pub fn json_request(&self, method: Method, path: &str, body: &Value) -> RequestBuilder {
        self.raw_request(method, path, FHIR_JSON, body.to_string().into_bytes())
    }

    /// A request with a body of any content type.
    pub fn raw_request(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> RequestBuilder {
        self.request(method, path)
            .header(CONTENT_TYPE, content_type)
            .body(body)
    }

    /// `POST path` with `pairs` as an `application/x-www-form-urlencoded` body (`_search`).
    pub fn form_request(&self, path: &str, pairs: &[(&str, &str)]) -> RequestBuilder {
        let body = query("", pairs).trim_start_matches('?').to_owned();
        self.raw_request(
            Method::POST,
            path,
            "application/x-www-form-urlencoded",
            body.into_bytes(),
        )
    }

    /// Creates a resource (asserting 201) and returns its id.
    pub async fn create(&self, resource: &Value) -> String {
        let rtype = resource["resourceType"]
            .as_str()
            .expect("a fixture has a resourceType");
        let r = self.post_json(rtype, resource).await;
        r.assert_status(201);
        r.json()["id"]
            .as_str()
            .unwrap_or_else(|| panic!("create answered without an id: {r:?}"))
            .to_owned()
    }

    /// Runs a search (`Patient?family=x`), asserting 200 and a searchset Bundle; returns the
    /// Bundle.
    pub async fn search_bundle(&self, query: &str) -> Value {
        let r = self.get(query).await;
        assert_eq!(r.status, 200, "search {query}: {r:?}");
        let b = r.json();
        assert_eq!(b["resourceType"], "Bundle", "search {query}: {r:?}");
        assert_eq!(b["type"], "searchset", "search {query}: {r:?}");
        b
    }

    /// Runs a search and returns the ids of the matches (sorted), following no links.
    pub async fn search_ids(&self, query: &str) -> Vec<String> {
        let rtype = query
            .split(['?', '/'])
            .next()
            .unwrap_or_default()
            .to_owned();
        let b = self.search_bundle(query).await;
        let mut ids: Vec<String> = search_matches(&b, &rtype)
            .iter()
            .map(|r| r["id"].as_str().unwrap_or_default().to_owned())
            .collect();
        ids.sort();
        ids
    }
}

/// `path?k=v&...` with the keys and values form-encoded (`|`, `:`, accents, spaces).
pub fn query(path: &str, pairs: &[(&str, &str)]) -> String {
    let mut u = reqwest::Url::parse("https://x.invalid/").expect("a constant URL parses");
    {
        let mut q = u.query_pairs_mut();
        for (k, v) in pairs {
            q.append_pair(k, v);
        }
    }
    match u.query() {
        Some(q) if !q.is_empty() => format!("{path}?{q}"),
        _ => path.to_owned(),
    }
}

/// The resources of type `rtype` in a searchset Bundle's entries (`search.mode` match or
/// absent).
pub fn search_matches(bundle: &Value, rtype: &str) -> Vec<Value> {
    bundle["entry"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .filter(|e| e["search"]["mode"].as_str().is_none_or(|m| m == "match"))
                .filter(|e| e["resource"]["resourceType"] == rtype)
                .map(|e| e["resource"].clone())
                .collect()
        })
        .unwrap_or_default()
}

/// The `next` link of a Bundle, if any.
pub fn next_link(bundle: &Value) -> Option<String> {
    bundle["link"].as_array().and_then(|links| {
        links
            .iter()
            .find(|l| l["relation"] == "next")
            .and_then(|l| l["url"].as_str())
            .map(str::to_owned)
    })
}

impl Resp {
    /// The body as JSON (a test failure when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {self:?}"))
    }

    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts the status (the message shows the body).
    pub fn assert_status(&self, expected: u16) -> &Self {
        assert_eq!(self.status, expected, "unexpected status: {self:?}");
        self
    }

    /// The concatenated `diagnostics` of an OperationOutcome's issues.
    pub fn diagnostics(&self) -> String {
        let v: Value = serde_json::from_str(&self.text).unwrap_or(Value::Null);
        v["issue"]
            .as_array()
            .map(|issues| {
                issues
                    .iter()
                    .filter_map(|i| i["diagnostics"].as_str())
                    .collect::<Vec<_>>()
                    .join(" | ")
            })
            .unwrap_or_default()
    }

    /// Everything an OperationOutcome says about its issues: `diagnostics`, `details.text`,
    /// `expression` and `location`, joined.
    pub fn issue_text(&self) -> String {
        let v: Value = serde_json::from_str(&self.text).unwrap_or(Value::Null);
        let mut parts: Vec<String> = Vec::new();
        for i in v["issue"].as_array().into_iter().flatten() {
            if let Some(d) = i["diagnostics"].as_str() {
                parts.push(d.to_owned());
            }
            if let Some(d) = i["details"]["text"].as_str() {
                parts.push(d.to_owned());
            }
            for key in ["expression", "location"] {
                for e in i[key].as_array().into_iter().flatten() {
                    if let Some(e) = e.as_str() {
                        parts.push(e.to_owned());
                    }
                }
            }
        }
        parts.join(" | ")
    }

    /// Asserts an error answer: this status, an OperationOutcome body with at least one
    /// issue, each issue with a severity and a code, `issue[0].diagnostics` non-empty, and the
    /// issues ([`Resp::issue_text`]: diagnostics and the element paths) mentioning every one
    /// of `mentions` (ASCII case-insensitively). Returns the OperationOutcome.
    pub fn assert_outcome(&self, status: u16, mentions: &[&str]) -> Value {
        assert_eq!(self.status, status, "unexpected status: {self:?}");
        let v: Value = serde_json::from_str(&self.text).unwrap_or_else(|e| {
            panic!("an error answer must be an OperationOutcome, not non-JSON ({e}): {self:?}")
        });
        assert_eq!(
            v["resourceType"], "OperationOutcome",
            "an error answer must be an OperationOutcome: {self:?}"
        );
        let issues = v["issue"]
            .as_array()
            .filter(|i| !i.is_empty())
            .unwrap_or_else(|| panic!("OperationOutcome without issues: {self:?}"));
        for i in issues {
            assert!(
                i["severity"].is_string() && i["code"].is_string(),
                "issue without severity or code: {self:?}"
            );
        }
        assert!(
            issues[0]["diagnostics"]
                .as_str()
                .is_some_and(|d| !d.trim().is_empty()),
            "issue[0].diagnostics is missing or empty: {self:?}"
        );
        let diag = self.issue_text().to_ascii_lowercase();
        for m in mentions {
            assert!(
                diag.contains(&m.to_ascii_lowercase()),
                "the OperationOutcome should mention {m:?}: {self:?}"
            );
        }
        if let Some(ct) = self.header("content-type") {
            assert!(
                ct.contains("json"),
                "an OperationOutcome is served as JSON, not {ct}: {self:?}"
            );
        }
        v
    }

    /// Like [`Resp::assert_outcome`], and the diagnostics mention at least one of `any_of`.
    pub fn assert_outcome_any(&self, status: u16, any_of: &[&str]) -> Value {
        let v = self.assert_outcome(status, &[]);
        let diag = self.issue_text().to_ascii_lowercase();
        assert!(
            any_of
                .iter()
                .any(|m| diag.contains(&m.to_ascii_lowercase())),
            "the OperationOutcome should mention one of {any_of:?}: {self:?}"
        );
        v
    }

    /// The `issue[0].code` of an OperationOutcome.
    pub fn issue_code(&self) -> String {
        let v: Value = serde_json::from_str(&self.text).unwrap_or(Value::Null);
        v["issue"][0]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}
