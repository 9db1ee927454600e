//! SMART App Launch from the outside, for the end-to-end suites: both sides of the
//! authorization code flow driven over real HTTPS against the running binary.
//!
//! - The person's side, [`Browser`]: a form-driving browser over [`reqwest`] that never
//!   follows redirects (a test reads each `Location` itself) and keeps a manual cookie jar
//!   (`Set-Cookie` name=value kept, sent back as `Cookie`). Its steps ([`Browser::sign_in`],
//!   [`Browser::totp`], [`Browser::pick`], [`Browser::consent`]) post the fields a page
//!   carries (its hidden `csrf`, `request`, `patient`), so a test can also post forged ones
//!   ([`Browser::submit`]).
//! - The app's side: [`Pkce`] pairs, [`AuthorizeUrl`] (any parameter replaced or dropped),
//!   the token, revocation and introspection endpoints ([`OAuthHttp`]) with any client
//!   authentication ([`ClientAuth`]), and `private_key_jwt` keys ([`ClientKey`], RS384 and
//!   ES384, generated with aws-lc-rs) that sign good and deliberately bad assertions
//!   ([`BadAssertion`]).
//! - The operator's side: [`Server::register_client`] (`phivault client add --type ...`),
//!   the audit trail and token rows read back ([`Server::audit_since`],
//!   [`Server::tokens_of_client`]).
//!
//! Every request can carry an `X-Forwarded-For` address ([`OAuthHttp::from_address`]): a
//! server started with `[edge] trusted_proxies = ["127.0.0.1"]` then counts each test's
//! failed client authentications against an address of its own, so the per-address limit
//! (20 failures per 5 minutes) never mixes the checks of one suite.

use std::time::Duration;

use aws_lc_rs::digest;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use reqwest::{Method, RequestBuilder};
use serde_json::Value;
use sqlx::Row;

use crate::api::{Api, Resp, query};
use crate::markers::random_u64;
use crate::server::Server;

mod browser;
mod keys;

pub use browser::{Browser, Decision, hidden_input, html_unescape, input_values, inputs};
pub use keys::{
    BadAssertion, ClientKey, assertion_claims, compact_jwt, jwks, try_verify_id_token,
    verify_id_token,
};

/// The `client_assertion_type` of RFC 7523.
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// `n` random bytes, base64url without padding.
fn random_b64(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    aws_lc_rs::rand::fill(&mut bytes).expect("the system random generator works");
    URL_SAFE_NO_PAD.encode(bytes)
}

/// An `application/x-www-form-urlencoded` body (repeated names kept in order).
pub fn form_body(pairs: &[(&str, &str)]) -> String {
    query("", pairs).trim_start_matches('?').to_owned()
}

// ---------------------------------------------------------------------------------------
// HTTP without redirects

/// The server's origin over HTTPS, redirects not followed, optionally as seen from another
/// client address (`X-Forwarded-For`, believed when the server trusts 127.0.0.1 as a proxy).
#[derive(Clone)]
pub struct OAuthHttp {
    client: reqwest::Client,
    origin: String,
    base: String,
    forwarded_for: Option<String>,
}

impl std::fmt::Debug for OAuthHttp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthHttp")
            .field("origin", &self.origin)
            .field("forwarded_for", &self.forwarded_for)
            .finish_non_exhaustive()
    }
}

/// How a request authenticates its client at the token, revocation or introspection
/// endpoint.
#[derive(Clone)]
pub enum ClientAuth {
    /// No client authentication at all.
    Nothing,
    /// A public client names itself (`client_id`).
    Public(String),
    /// `client_id` and `client_secret` in the form.
    Post {
        /// Client id.
        id: String,
        /// Secret.
        secret: String,
    },
    /// HTTP Basic (RFC 6749 §2.3.1).
    Basic {
        /// Client id.
        id: String,
        /// Secret.
        secret: String,
    },
    /// `client_assertion` (RFC 7523), with `client_id` when given.
    Assertion {
        /// `client_id` sent alongside, if any.
        client_id: Option<String>,
        /// The compact JWT.
        jwt: String,
    },
}

impl std::fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self {
            ClientAuth::Nothing => "nothing",
            ClientAuth::Public(_) => "public",
            ClientAuth::Post { .. } => "post",
            ClientAuth::Basic { .. } => "basic",
            ClientAuth::Assertion { .. } => "assertion",
        };
        f.debug_struct("ClientAuth")
            .field("kind", &kind)
            .finish_non_exhaustive()
    }
}

impl ClientAuth {
    /// A `private_key_jwt` assertion without `client_id`.
    pub fn assertion(jwt: impl Into<String>) -> ClientAuth {
        ClientAuth::Assertion {
            client_id: None,
            jwt: jwt.into(),
        }
    }
}

impl OAuthHttp {
    /// Requests to `server`, no redirects followed, trusting only its CA.
    pub fn new(server: &Server) -> OAuthHttp {
        let ca_path = server.data_dir().join("tls").join("ca.pem");
        let pem = std::fs::read(&ca_path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", ca_path.display()));
        let ca = reqwest::Certificate::from_pem(&pem).expect("the server's CA is PEM");
        let client = reqwest::Client::builder()
            .tls_certs_only([ca])
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            .pool_idle_timeout(Duration::from_secs(5))
            .build()
            .expect("an HTTPS client");
        OAuthHttp {
            client,
            origin: server.origin(),
            base: server.base().to_owned(),
            forwarded_for: None,
        }
    }

    /// The same, as seen from `address` (`X-Forwarded-For`).
    pub fn from_address(mut self, address: &str) -> OAuthHttp {
        self.forwarded_for = Some(address.to_owned());
        self
    }

    /// The server's origin (`https://127.0.0.1:<port>`).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The FHIR base (the `aud` of authorization requests, the id_token issuer).
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The token endpoint's URL (the `aud` of client assertions).
    pub fn token_endpoint(&self) -> String {
        format!("{}/oauth/token", self.origin)
    }

    /// A request to `url` (absolute, or a path at the origin).
    pub fn request(&self, method: Method, url: &str) -> RequestBuilder {
        let url = if url.starts_with("https://") || url.starts_with("http://") {
            url.to_owned()
        } else {
            format!("{}/{}", self.origin, url.trim_start_matches('/'))
        };
        let rb = self.client.request(method, url);
        match &self.forwarded_for {
            Some(a) => rb.header("x-forwarded-for", a),
            None => rb,
        }
    }

    /// `POST path` with a form body and the client authentication `auth`.
    pub async fn post_form(&self, path: &str, auth: &ClientAuth, pairs: &[(&str, &str)]) -> Resp {
        let mut all: Vec<(&str, &str)> = pairs.to_vec();
        let mut rb = self.request(Method::POST, path);
        match auth {
            ClientAuth::Nothing => {}
            ClientAuth::Public(id) => all.push(("client_id", id)),
            ClientAuth::Post { id, secret } => {
                all.push(("client_id", id));
                all.push(("client_secret", secret));
            }
            ClientAuth::Basic { id, secret } => {
                let enc = |s: &str| form_body(&[("v", s)])[2..].to_owned();
                let raw = format!("{}:{}", enc(id), enc(secret));
                let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
                rb = rb.header(AUTHORIZATION, format!("Basic {b64}"));
            }
            ClientAuth::Assertion { client_id, jwt } => {
                if let Some(id) = client_id {
                    all.push(("client_id", id));
                }
                all.push(("client_assertion_type", JWT_BEARER));
                all.push(("client_assertion", jwt));
            }
        }
        Api::send(
            rb.header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(form_body(&all)),
        )
        .await
    }

    /// `POST /oauth/token` with `pairs` and `auth`.
    pub async fn token(&self, auth: &ClientAuth, pairs: &[(&str, &str)]) -> Resp {
        self.post_form("/oauth/token", auth, pairs).await
    }

    /// The authorization code exchange.
    pub async fn exchange_code(
        &self,
        auth: &ClientAuth,
        code: &str,
        redirect_uri: &str,
        verifier: &str,
    ) -> Resp {
        self.token(
            auth,
            &[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", redirect_uri),
                ("code_verifier", verifier),
            ],
        )
        .await
    }

    /// A refresh, optionally narrowing the scope.
    pub async fn refresh(
        &self,
        auth: &ClientAuth,
        refresh_token: &str,
        scope: Option<&str>,
    ) -> Resp {
        let mut pairs = vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
        ];
        if let Some(s) = scope {
            pairs.push(("scope", s));
        }
        self.token(auth, &pairs).await
    }

    /// The client credentials grant.
    pub async fn client_credentials(&self, auth: &ClientAuth, scope: Option<&str>) -> Resp {
        let mut pairs = vec![("grant_type", "client_credentials")];
        if let Some(s) = scope {
            pairs.push(("scope", s));
        }
        self.token(auth, &pairs).await
    }

    /// `POST /oauth/revoke` (RFC 7009).
    pub async fn revoke(&self, auth: &ClientAuth, token: &str) -> Resp {
        self.post_form("/oauth/revoke", auth, &[("token", token)])
            .await
    }

    /// `POST /oauth/introspect` (RFC 7662).
    pub async fn introspect(&self, auth: &ClientAuth, token: &str) -> Resp {
        self.post_form("/oauth/introspect", auth, &[("token", token)])
            .await
    }

    /// `GET path` at the origin, with `bearer` when given (redirects not followed).
    pub async fn get(&self, path: &str, bearer: Option<&str>) -> Resp {
        let mut rb = self
            .request(Method::GET, path)
            .header("accept", "application/fhir+json, application/json");
        if let Some(t) = bearer {
            rb = rb.header(AUTHORIZATION, format!("Bearer {t}"));
        }
        Api::send(rb).await
    }
}

// ---------------------------------------------------------------------------------------
// The app

/// A PKCE pair (RFC 7636, S256).
#[derive(Debug, Clone)]
pub struct Pkce {
    /// 43 characters of base64url (32 random bytes).
    pub verifier: String,
    /// BASE64URL(SHA256(verifier)).
    pub challenge: String,
}

impl Pkce {
    /// A fresh pair.
    pub fn generate() -> Pkce {
        let verifier = random_b64(32);
        let challenge = Self::challenge_of(&verifier);
        Pkce {
            verifier,
            challenge,
        }
    }

    /// The S256 challenge of `verifier`.
    pub fn challenge_of(verifier: &str) -> String {
        URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, verifier.as_bytes()))
    }
}

/// An authorization request (`GET /oauth/authorize?...`) whose parameters a test may
/// replace or drop.
#[derive(Debug, Clone)]
pub struct AuthorizeUrl {
    origin: String,
    params: Vec<(String, String)>,
}

impl AuthorizeUrl {
    /// A well-formed request: `response_type=code`, the client, redirect URI, scope and
    /// state, `aud` = the FHIR base, the PKCE S256 challenge.
    pub fn new(
        http: &OAuthHttp,
        client_id: &str,
        redirect_uri: &str,
        scope: &str,
        state: &str,
        pkce: &Pkce,
    ) -> AuthorizeUrl {
        let params = [
            ("response_type", "code"),
            ("client_id", client_id),
            ("redirect_uri", redirect_uri),
            ("scope", scope),
            ("state", state),
            ("aud", http.base()),
            ("code_challenge", pkce.challenge.as_str()),
            ("code_challenge_method", "S256"),
        ];
        AuthorizeUrl {
            origin: http.origin().to_owned(),
            params: params
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    /// Replaces parameter `name` (or adds it).
    pub fn set(mut self, name: &str, value: &str) -> AuthorizeUrl {
        match self.params.iter_mut().find(|(k, _)| k == name) {
            Some(p) => p.1 = value.to_owned(),
            None => self.params.push((name.to_owned(), value.to_owned())),
        }
        self
    }

    /// Drops parameter `name`.
    pub fn remove(mut self, name: &str) -> AuthorizeUrl {
        self.params.retain(|(k, _)| k != name);
        self
    }

    /// The value of parameter `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The query string (without `?`).
    pub fn query(&self) -> String {
        let pairs: Vec<(&str, &str)> = self
            .params
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        form_body(&pairs)
    }

    /// The absolute URL.
    pub fn url(&self) -> String {
        format!("{}/oauth/authorize?{}", self.origin, self.query())
    }
}

// ---------------------------------------------------------------------------------------
// The operator

/// A client to register with `phivault client add`.
#[derive(Debug, Clone)]
pub struct ClientSpec<'a> {
    /// `public`, `confidential-jwt` or `confidential-secret`.
    pub kind: &'a str,
    /// Display name.
    pub name: &'a str,
    /// Scopes, space-separated.
    pub scope: &'a str,
    /// Redirect URIs.
    pub redirect_uris: &'a [&'a str],
    /// The JWK set of a `confidential-jwt` client (written to a file for `--jwks`).
    pub jwks: Option<Value>,
}

/// A registered client.
#[derive(Clone)]
pub struct RegisteredClient {
    /// `pvcl_...`.
    pub client_id: String,
    /// The secret of a `confidential-secret` client.
    pub secret: Option<String>,
    /// Registered redirect URIs.
    pub redirect_uris: Vec<String>,
    /// Registered scopes.
    pub scope: String,
}

impl std::fmt::Debug for RegisteredClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegisteredClient")
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

impl RegisteredClient {
    /// Its authentication without a key: `client_id` alone (public) or the secret posted.
    pub fn auth(&self) -> ClientAuth {
        match &self.secret {
            Some(secret) => ClientAuth::Post {
                id: self.client_id.clone(),
                secret: secret.clone(),
            },
            None => ClientAuth::Public(self.client_id.clone()),
        }
    }

    /// The first redirect URI.
    pub fn redirect_uri(&self) -> &str {
        self.redirect_uris
            .first()
            .map(String::as_str)
            .expect("the client has a redirect URI")
    }
}

impl Server {
    /// The OAuth2 endpoints of the running instance (redirects not followed).
    pub fn oauth(&self) -> OAuthHttp {
        OAuthHttp::new(self)
    }

    /// A fresh browser (empty cookie jar) on the running instance.
    pub fn browser(&self) -> Browser {
        Browser::new(self.oauth())
    }

    /// `phivault client add --type <kind> --name <n> --scope <s> [--redirect-uri <u>]...
    /// [--jwks <file>]`: the contract is `client_id: ...` on stdout, then `client_secret:
    /// ...` for `confidential-secret` clients only.
    pub async fn register_client(&self, spec: &ClientSpec<'_>) -> RegisteredClient {
        let jwks_file = spec.jwks.as_ref().map(|jwks| {
            let path = self
                .data_dir()
                .join(format!("jwks-{:016x}.json", random_u64()));
            std::fs::write(&path, jwks.to_string())
                .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
            path.display().to_string()
        });
        let mut args = vec![
            "client", "add", "--type", spec.kind, "--name", spec.name, "--scope", spec.scope,
        ];
        for uri in spec.redirect_uris {
            args.extend(["--redirect-uri", uri]);
        }
        if let Some(file) = &jwks_file {
            args.extend(["--jwks", file.as_str()]);
        }
        let out = self.cli(&args, None).await;
        out.assert_ok("phivault client add --type");
        let lines: Vec<&str> = out.stdout.lines().collect();
        let with_secret = spec.kind == "confidential-secret";
        assert_eq!(
            lines.len(),
            if with_secret { 2 } else { 1 },
            "contract: `client add --type {}` prints the client id{}:\n{}",
            spec.kind,
            if with_secret { " and secret" } else { " only" },
            out.stdout
        );
        let id = lines[0]
            .strip_prefix("client_id: ")
            .unwrap_or_else(|| panic!("contract: first line `client_id: ...`: {}", lines[0]))
            .trim()
            .to_owned();
        let secret = lines.get(1).map(|l| {
            l.strip_prefix("client_secret: ")
                .unwrap_or_else(|| panic!("contract: second line `client_secret: ...`: {l}"))
                .trim()
                .to_owned()
        });
        RegisteredClient {
            client_id: id,
            secret,
            redirect_uris: spec.redirect_uris.iter().map(|u| (*u).to_owned()).collect(),
            scope: spec.scope.to_owned(),
        }
    }

    /// The seq of the last audit entry (0 when none).
    pub async fn audit_seq(&self) -> i64 {
        let db = self.db().await;
        let row = sqlx::query("SELECT COALESCE(MAX(seq), 0) AS last FROM audit_entries")
            .fetch_one(&db)
            .await
            .expect("the audit trail is readable");
        db.close().await;
        row.get::<i64, _>("last")
    }

    /// The audit entries after `seq`, oldest first, as their canonical JSON bodies (`action`,
    /// `actor_id`, `outcome`, ...), the server's own alerts (actor `phivault`) left out.
    pub async fn audit_since(&self, seq: i64) -> Vec<Value> {
        let db = self.db().await;
        let rows = sqlx::query(
            "SELECT body FROM audit_entries WHERE seq > $1 AND actor <> 'phivault' ORDER BY seq",
        )
        .bind(seq)
        .fetch_all(&db)
        .await
        .expect("the audit trail is readable");
        db.close().await;
        rows.iter()
            .map(|row| {
                let body: Vec<u8> = row.get("body");
                serde_json::from_slice(&body).expect("an entry body is JSON")
            })
            .collect()
    }

    /// How many token rows the client holds (issued ever, revoked or not).
    pub async fn tokens_of_client(&self, client_id: &str) -> i64 {
        let db = self.db().await;
        let row = sqlx::query("SELECT COUNT(*) AS n FROM tokens WHERE client_id = $1")
            .bind(client_id)
            .fetch_one(&db)
            .await
            .expect("the tokens are readable");
        db.close().await;
        row.get::<i64, _>("n")
    }

    /// The number a counting query answers (its first column, `COUNT(*)`).
    pub async fn sql_count(&self, statement: &str, binds: &[&str]) -> i64 {
        let db = self.db().await;
        let mut q = sqlx::query(statement);
        for b in binds {
            q = q.bind(*b);
        }
        let row = q
            .fetch_one(&db)
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
        db.close().await;
        row.get::<i64, _>(0)
    }

    /// Runs one SQL statement on the server's database; the rows it changed.
    pub async fn sql(&self, statement: &str, binds: &[&str]) -> u64 {
        let db = self.db().await;
        let mut q = sqlx::query(statement);
        for b in binds {
            q = q.bind(*b);
        }
        let done = q
            .execute(&db)
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
        db.close().await;
        done.rows_affected()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_matches_rfc_7636_appendix_b() {
        assert_eq!(
            Pkce::challenge_of("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        let p = Pkce::generate();
        assert_eq!(p.verifier.len(), 43);
        assert_eq!(p.challenge, Pkce::challenge_of(&p.verifier));
    }
}
