//! The world of the SMART App Launch suites: one server, a patient and their user signed in
//! through the authorization pages, registered apps of each type, and the assertions the
//! checks share (OAuth2 error answers, audit entries of refusals, page headers, cookies).

use std::sync::atomic::{AtomicU32, Ordering};

use phivault_testkit::{
    AuthorizeUrl, Backend, Browser, ClientAuth, ClientKey, ClientSpec, Decision, Marker, OAuthHttp,
    Pkce, RegisteredClient, Resp, Server, fixtures, random_username,
};
use serde_json::Value;
use tempfile::TempDir;

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_phivault");
/// The redirect URIs of the main app, and the one of the second app.
pub(crate) const CB: &str = "https://app.example/cb";
pub(crate) const CB2: &str = "https://app.example/cb2";
pub(crate) const CB3: &str = "http://localhost:8765/cb";
/// An app's name that would run as a script if a page did not escape it.
pub(crate) const XSS_NAME: &str = "<script>alert(1)</script>";
/// What the public apps may ask for.
pub(crate) const PUBLIC_SCOPE: &str =
    "openid fhirUser launch/patient offline_access online_access patient/*.rs";

/// One server and its fixtures.
pub(crate) struct Ctx {
    pub(crate) server: Server,
    /// The patient of the patient user (`Patient/{patient}`).
    pub(crate) patient: String,
    /// A patient nobody here cares for.
    pub(crate) other_patient: String,
    pub(crate) username: String,
    pub(crate) password: String,
    /// The patient user's own session (`/auth/login`).
    pub(crate) session: String,
    /// A browser signed in as the patient user (session and CSRF cookies).
    signed_in: Browser,
    /// Public app (`PUBLIC_SCOPE`, redirect URIs `CB` and `CB2`).
    pub(crate) public: RegisteredClient,
    /// Another public app (`PUBLIC_SCOPE`, `CB3`).
    pub(crate) public2: RegisteredClient,
    /// A confidential-secret client (a resource server: introspection).
    pub(crate) secret: RegisteredClient,
    /// A confidential-jwt client, `system/*.rs`, keys `rsa` and `ec`.
    pub(crate) jwt: RegisteredClient,
    pub(crate) rsa: ClientKey,
    pub(crate) ec: ClientKey,
    addresses: AtomicU32,
    _config: TempDir,
}

impl Ctx {
    /// Starts a server trusting 127.0.0.1 as a proxy (so each check may name its own client
    /// address) and provisions the fixtures, signing the patient user in through the pages.
    pub(crate) async fn new(backend: &Backend) -> Ctx {
        let config = tempfile::tempdir().unwrap();
        let path = config.path().join("phivault.toml");
        std::fs::write(&path, "[edge]\ntrusted_proxies = [\"127.0.0.1\"]\n").unwrap();
        let server = Server::start(BIN, backend, &["--config", path.to_str().unwrap()]).await;
        let sys = server.api().clone();
        let patient = sys
            .create(&fixtures::patient(Marker::name().text(), "Smart"))
            .await;
        let other_patient = sys
            .create(&fixtures::patient(Marker::name().text(), "Elsewhere"))
            .await;
        let username = random_username();
        let password = server.create_user(&username, "patient").await;
        server.link_patient(&username, &patient).await;
        let session = server
            .sign_in(&username, "patient", &password, false)
            .await
            .token;
        let rsa = ClientKey::rs384("rsa-1");
        let ec = ClientKey::es384("ec-1");
        let public = server
            .register_client(&public_spec("smart app", &[CB, CB2]))
            .await;
        let public2 = server
            .register_client(&public_spec("other app", &[CB3]))
            .await;
        let secret = server
            .register_client(&ClientSpec {
                kind: "confidential-secret",
                name: "resource server",
                scope: "system/Patient.rs",
                redirect_uris: &[],
                jwks: None,
            })
            .await;
        let jwt = server
            .register_client(&ClientSpec {
                kind: "confidential-jwt",
                name: "backend service",
                scope: "system/*.rs",
                redirect_uris: &[],
                jwks: Some(phivault_testkit::oauth::jwks(&[&rsa, &ec])),
            })
            .await;
        assert!(public.secret.is_none() && jwt.secret.is_none() && secret.secret.is_some());
        let mut ctx = Ctx {
            signed_in: server.browser(),
            server,
            patient,
            other_patient,
            username,
            password,
            session,
            public,
            public2,
            secret,
            jwt,
            rsa,
            ec,
            addresses: AtomicU32::new(1),
            _config: config,
        };
        ctx.sign_in_through_the_pages().await;
        ctx
    }

    /// The whole flow once: authorization request, sign-in page, consent page, approval,
    /// code exchange. The browser keeps its session for the later checks.
    async fn sign_in_through_the_pages(&mut self) {
        let mut browser = self.browser();
        let http = self.http();
        let pkce = Pkce::generate();
        let url = AuthorizeUrl::new(&http, &self.public.client_id, CB, PUBLIC_SCOPE, "s0", &pkce);
        let page = browser.open(&url.url()).await;
        page.assert_status(200);
        assert!(page.text.contains("Sign in"), "the sign-in page: {page:?}");
        let consent = browser.sign_in(&page, &self.username, &self.password).await;
        consent.assert_status(200);
        // One checkbox per scope asked for; `openid` stands for `fhirUser` too.
        let offered = phivault_testkit::oauth::input_values(&consent.text, "scope");
        let mut expected = same_scopes(PUBLIC_SCOPE);
        expected.remove("fhirUser");
        assert_eq!(
            offered
                .iter()
                .map(String::as_str)
                .collect::<std::collections::BTreeSet<_>>(),
            expected,
            "the consent page offers each scope asked for"
        );
        let r = browser.consent(&consent, Decision::ApproveOffered).await;
        assert_eq!(r.status, 303, "{r:?}");
        assert!(
            r.location().unwrap().starts_with(&format!("{CB}?")),
            "{r:?}"
        );
        assert_eq!(r.redirect_param("state").as_deref(), Some("s0"));
        let code = r.redirect_param("code").expect("a code");
        let r = http
            .exchange_code(&self.public.auth(), &code, CB, &pkce.verifier)
            .await;
        r.assert_status(200);
        let t = r.json();
        assert_eq!(t["token_type"], "Bearer");
        assert_eq!(
            same_scopes(t["scope"].as_str().unwrap()),
            same_scopes(PUBLIC_SCOPE)
        );
        assert_eq!(t["patient"], self.patient.as_str());
        assert!(
            t["refresh_token"].is_string() && t["id_token"].is_string(),
            "{t}"
        );
        self.reads(t["access_token"].as_str().unwrap(), 200).await;
        self.signed_in = browser;
    }

    /// The endpoints, from an address no other check uses.
    pub(crate) fn http(&self) -> OAuthHttp {
        let n = self.addresses.fetch_add(1, Ordering::Relaxed);
        self.server
            .oauth()
            .from_address(&format!("10.77.{}.{}", n / 250, n % 250 + 1))
    }

    /// A fresh browser (empty jar), from an address of its own.
    pub(crate) fn browser(&self) -> Browser {
        Browser::new(self.http())
    }

    /// A new public app (`PUBLIC_SCOPE`, redirect URI `CB`).
    pub(crate) async fn public_client(&self, name: &str) -> RegisteredClient {
        self.server.register_client(&public_spec(name, &[CB])).await
    }

    /// The signed-in patient user's decision on the authorization request `url`: the
    /// request is opened (its page gives the CSRF token and the request) and the consent
    /// posted at once with the browser's session. `ApproveOffered` approves every scope the
    /// request asks for.
    pub(crate) async fn approve(&self, url: &AuthorizeUrl, decision: Decision<'_>) -> Resp {
        approve_as(&self.signed_in, url, decision, None).await
    }

    /// An authorization by the patient user for `client`: (the answer, the PKCE pair).
    pub(crate) async fn authorize(
        &self,
        client: &RegisteredClient,
        redirect_uri: &str,
        scope: &str,
        state: &str,
        decision: Decision<'_>,
    ) -> (Resp, Pkce) {
        let pkce = Pkce::generate();
        let url = AuthorizeUrl::new(
            &self.http(),
            &client.client_id,
            redirect_uri,
            scope,
            state,
            &pkce,
        );
        (self.approve(&url, decision).await, pkce)
    }

    /// A code for `client` and `scope`, approved by the patient user.
    pub(crate) async fn code(
        &self,
        client: &RegisteredClient,
        redirect_uri: &str,
        scope: &str,
    ) -> (String, Pkce) {
        let (r, pkce) = self
            .authorize(client, redirect_uri, scope, "st", Decision::ApproveOffered)
            .await;
        assert_eq!(r.status, 303, "{r:?}");
        let code = r
            .redirect_param("code")
            .unwrap_or_else(|| panic!("an approval redirects with a code: {r:?}"));
        (code, pkce)
    }

    /// The token response of a code for `client` and `scope` (exchanged at once).
    pub(crate) async fn tokens(&self, client: &RegisteredClient, scope: &str) -> Value {
        let redirect = client.redirect_uri().to_owned();
        let (code, pkce) = self.code(client, &redirect, scope).await;
        let r = self
            .http()
            .exchange_code(&client.auth(), &code, &redirect, &pkce.verifier)
            .await;
        r.assert_status(200);
        r.json()
    }

    /// Reads the patient with `token`, expecting `status`.
    pub(crate) async fn reads(&self, token: &str, status: u16) {
        let r = self
            .server
            .api_as(token)
            .get(&format!("Patient/{}", self.patient))
            .await;
        assert_eq!(r.status, status, "reading the patient: {r:?}");
    }

    /// How many authorization codes the client was ever issued.
    pub(crate) async fn codes_of(&self, client_id: &str) -> i64 {
        self.server
            .sql_count(
                "SELECT COUNT(*) FROM oauth_codes WHERE client_id = $1",
                &[client_id],
            )
            .await
    }

    /// The last audit entry after `since` whose action contains `action`; its actor is
    /// `actor` when given. Entries of the OAuth2 endpoints must not be `allowed`.
    pub(crate) async fn refusal(&self, since: i64, action: &str, actor: Option<&str>) -> Value {
        let entries = self.server.audit_since(since).await;
        let entry = entries
            .iter()
            .rev()
            .find(|e| e["action"].as_str().is_some_and(|a| a.contains(action)))
            .unwrap_or_else(|| {
                let actions: Vec<&Value> = entries.iter().map(|e| &e["action"]).collect();
                panic!("no audit entry with {action:?} after seq {since}: {actions:?}")
            })
            .clone();
        if let Some(actor) = actor {
            assert_eq!(
                entry["actor_id"], actor,
                "the refusal names the client: {entry}"
            );
        }
        if entry["action"]
            .as_str()
            .is_some_and(|a| a.starts_with("POST /oauth/"))
        {
            assert_ne!(entry["outcome"], "allowed", "{entry}");
        }
        entry
    }

    /// A code exchange by `client` refused with `status` and `error`: no token issued, the
    /// refusal audited under the client. Returns the entry's action.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn refused_exchange(
        &self,
        client: &RegisteredClient,
        auth: &ClientAuth,
        code: &str,
        redirect_uri: &str,
        verifier: &str,
        status: u16,
        error: &str,
    ) -> String {
        let before = self.server.tokens_of_client(&client.client_id).await;
        let since = self.server.audit_seq().await;
        let r = self
            .http()
            .exchange_code(auth, code, redirect_uri, verifier)
            .await;
        assert_oauth_error(&r, status, error);
        assert_eq!(
            self.server.tokens_of_client(&client.client_id).await,
            before,
            "no token issued"
        );
        let entry = self
            .refusal(
                since,
                &format!("POST /oauth/token authorization_code refused {error}"),
                Some(&client.client_id),
            )
            .await;
        entry["action"].as_str().unwrap().to_owned()
    }

    /// A client credentials request of the jwt client refused as `invalid_client`: no token,
    /// audited (no actor: the client did not authenticate).
    pub(crate) async fn refused_assertion(&self, http: &OAuthHttp, what: &str, auth: ClientAuth) {
        let id = &self.jwt.client_id;
        let before = self.server.tokens_of_client(id).await;
        let since = self.server.audit_seq().await;
        let r = http.client_credentials(&auth, None).await;
        assert_eq!(r.status, 401, "{what}: {r:?}");
        assert_oauth_error(&r, 401, "invalid_client");
        assert_eq!(
            self.server.tokens_of_client(id).await,
            before,
            "{what}: no token"
        );
        let e = self
            .refusal(
                since,
                "POST /oauth/token client_credentials refused invalid_client",
                None,
            )
            .await;
        assert_eq!(e["outcome"], "denied", "{what}: {e}");
        assert_ne!(e["actor_id"], id.as_str(), "{what}: not authenticated: {e}");
    }
}

/// The decision of the person signed in to `browser` (a clone: its jar is unchanged) on the
/// authorization request `url`: the request's page gives the CSRF token and the request,
/// the consent is posted at once with the session, naming `patient` when given (a
/// clinician's choice). `ApproveOffered` approves every scope the request asks for.
pub(crate) async fn approve_as(
    browser: &Browser,
    url: &AuthorizeUrl,
    decision: Decision<'_>,
    patient: Option<&str>,
) -> Resp {
    let mut browser = browser.clone();
    let page = browser.open(&url.url()).await;
    assert_eq!(
        page.status, 200,
        "the authorization request is valid: {page:?}"
    );
    let csrf = page.hidden("csrf").expect("a csrf field");
    let request = page.hidden("request").expect("a request field");
    let asked: Vec<&str> = url.get("scope").unwrap_or("").split(' ').collect();
    let mut fields = vec![("csrf", csrf.as_str()), ("request", request.as_str())];
    if let Some(p) = patient {
        fields.push(("patient", p));
    }
    match decision {
        Decision::ApproveOffered => {
            fields.extend(asked.iter().map(|s| ("scope", *s)));
            fields.push(("decision", "approve"));
        }
        Decision::Approve(scopes) => {
            fields.extend(scopes.iter().map(|s| ("scope", *s)));
            fields.push(("decision", "approve"));
        }
        Decision::Deny => fields.push(("decision", "deny")),
    }
    browser.submit("/oauth/authorize/consent", &fields).await
}

/// A scope string as a set (the server may reorder).
pub(crate) fn same_scopes(scope: &str) -> std::collections::BTreeSet<&str> {
    scope.split_ascii_whitespace().collect()
}

fn public_spec<'a>(name: &'a str, redirect_uris: &'a [&'a str]) -> ClientSpec<'a> {
    ClientSpec {
        kind: "public",
        name,
        scope: PUBLIC_SCOPE,
        redirect_uris,
        jwks: None,
    }
}

/// An RFC 6749 §5.2 error answer: `status`, JSON `error`, no token.
pub(crate) fn assert_oauth_error(r: &Resp, status: u16, error: &str) {
    assert_eq!(r.status, status, "expected {error}: {r:?}");
    let v = r.json();
    assert_eq!(v["error"], error, "{r:?}");
    assert!(
        v.get("access_token").is_none() && v.get("refresh_token").is_none(),
        "{r:?}"
    );
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "{r:?}"
    );
    assert_eq!(r.header("cache-control"), Some("no-store"), "{r:?}");
}

/// A page of the authorization endpoint: HTML, framing forbidden, no inline script or
/// style allowed, never cached.
pub(crate) fn assert_html_page(r: &Resp, what: &str) {
    let header = |name: &str| {
        r.header(name)
            .unwrap_or_else(|| panic!("{what}: no {name} header: {:?}", r.headers))
    };
    assert!(header("content-type").starts_with("text/html"), "{what}");
    let csp = header("content-security-policy");
    assert!(csp.contains("frame-ancestors 'none'"), "{what}: {csp}");
    assert!(csp.contains("default-src 'none'"), "{what}: {csp}");
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
        "{what}: {csp}"
    );
    assert_eq!(header("x-frame-options"), "DENY", "{what}");
    assert_eq!(header("cache-control"), "no-store", "{what}");
    assert!(!r.text.contains("<script"), "{what}: a script on the page");
    assert!(!r.text.contains(" style="), "{what}: an inline style");
}

/// The app's name appears on the page, escaped only.
pub(crate) fn assert_escaped(r: &Resp, what: &str) {
    assert!(
        !r.text.contains(XSS_NAME),
        "{what}: the app's name unescaped"
    );
    assert!(
        r.text.contains("&lt;script&gt;alert(1)&lt;"),
        "{what}: the app's name shown escaped: {}",
        r.text
    );
}

/// Every cookie the answer sets is `__Host-`, `Path=/; Secure; HttpOnly; SameSite=Strict`,
/// without `Domain`; `names` are among them.
pub(crate) fn assert_cookies(r: &Resp, what: &str, names: &[&str]) {
    let set = r.set_cookies();
    for line in &set {
        assert!(line.starts_with("__Host-"), "{what}: {line}");
        let attrs: Vec<String> = line
            .split(';')
            .skip(1)
            .map(|a| a.trim().to_ascii_lowercase())
            .collect();
        for needed in ["path=/", "secure", "httponly", "samesite=strict"] {
            assert!(
                attrs.iter().any(|a| a == needed),
                "{what}: {needed} in {line}"
            );
        }
        assert!(
            !attrs.iter().any(|a| a.starts_with("domain")),
            "{what}: {line}"
        );
    }
    for name in names {
        assert!(
            set.iter().any(|l| l.starts_with(&format!("{name}="))),
            "{what}: sets {name}: {set:?}"
        );
    }
}
