#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::body::Body;
use axum::http::Request;
use minijinja::context;
use tower::ServiceExt;

use super::pages::{TEMPLATES, View};
use super::*;

fn header<'a>(r: &'a Response, name: &str) -> Option<&'a str> {
    r.headers().get(name).map(|v| v.to_str().unwrap())
}

async fn body_text(r: Response) -> String {
    let bytes = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
    String::from_utf8(bytes.to_vec()).unwrap()
}

fn pages() -> Pages {
    Pages::new().unwrap()
}

// ---------------------------------------------------------------------------------------
// Headers

#[test]
fn page_headers_forbid_framing_scripts_and_caching() {
    let r = page(StatusCode::OK, "<p>x</p>".to_owned(), &[]);
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "content-type"), Some("text/html; charset=utf-8"));
    assert_eq!(header(&r, "cache-control"), Some("no-store"));
    assert_eq!(header(&r, "x-frame-options"), Some("DENY"));
    assert_eq!(header(&r, "referrer-policy"), Some("no-referrer"));
    let csp = header(&r, "content-security-policy").unwrap();
    assert_eq!(
        csp,
        "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; \
         frame-ancestors 'none'; base-uri 'none'"
    );
    assert_eq!(csp, BASE_POLICY);
    assert!(csp.contains("frame-ancestors 'none'"));
    assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"));
    assert!(!csp.contains("script-src"));
}

#[test]
fn form_action_lists_each_redirect_origin_once() {
    let r = page(
        StatusCode::OK,
        String::new(),
        &[
            "https://App.Example:8443/callback?x=1",
            "https://app.example:8443/other",
            "http://127.0.0.1:51000/cb",
            "com.example.app:/oauth2redirect",
        ],
    );
    assert_eq!(
        header(&r, "content-security-policy").unwrap(),
        "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self' \
         https://app.example:8443 http://127.0.0.1:51000 com.example.app:; \
         frame-ancestors 'none'; base-uri 'none'"
    );
}

#[test]
fn form_targets_cannot_inject_directives() {
    let r = page(
        StatusCode::OK,
        String::new(),
        &[
            "https://evil.example; script-src *",
            "https://evil.example 'unsafe-inline'",
            "https://evil.example,x",
            "javascript:alert(1)",
            "data:text/html,x",
            "https://user@evil.example/",
            "https://[::1]:8080/cb",
            "not a url",
            "",
        ],
    );
    assert_eq!(header(&r, "content-security-policy"), Some(BASE_POLICY));
}

#[test]
fn origins() {
    for (url, want) in [
        ("https://app.example/cb", Some("https://app.example")),
        (
            "HTTPS://APP.example:443/cb",
            Some("https://app.example:443"),
        ),
        ("https://app.example", Some("https://app.example")),
        ("https://app.example?x#y", Some("https://app.example")),
        ("http://localhost:3000/cb", Some("http://localhost:3000")),
        ("https://[::1]:8443/cb", Some("https://[::1]:8443")),
        ("com.example.App:/cb", Some("com.example.app:")),
        ("https://a.example:99999/", None),
        ("https://a.example:/", None),
        ("https://a.example:8x/", None),
        ("https://u:p@a.example/", None),
        ("https:///cb", None),
        ("https:a.example", None),
        ("https://-a.example/", None),
        ("https://a_b.example/", None),
        ("https://exämple.org/", None),
        ("JavaScript:alert(1)", None),
        ("vbscript:x", None),
        ("1http://a/", None),
        ("/relative", None),
    ] {
        assert_eq!(origin(url).as_deref(), want, "{url}");
    }
}

// ---------------------------------------------------------------------------------------
// Templates

#[test]
fn templates_hold_no_script_and_no_inline_style() {
    for (name, source) in TEMPLATES {
        let lower = source.to_ascii_lowercase();
        for banned in ["<script", "<style", "style=", "javascript:", "<iframe"] {
            assert!(!lower.contains(banned), "{name}: {banned}");
        }
        assert!(!has_event_handler(&lower), "{name}: event handler");
    }
}

/// The attribute names of every tag of an HTML source (quoted values skipped).
fn attribute_names(html: &str) -> Vec<String> {
    let mut names = Vec::new();
    for tag in html.split('<').skip(1) {
        let mut chars = tag.chars().peekable();
        // The tag name.
        while chars.next_if(|c| !c.is_whitespace() && *c != '>').is_some() {}
        loop {
            while chars.next_if(|c| c.is_whitespace()).is_some() {}
            let mut name = String::new();
            while let Some(c) = chars.next_if(|c| !c.is_whitespace() && !"=>/".contains(*c)) {
                name.push(c);
            }
            if !name.is_empty() {
                names.push(name.to_ascii_lowercase());
            }
            match chars.next() {
                Some('=') => match chars.next() {
                    Some(q @ ('"' | '\'')) => while chars.next().is_some_and(|c| c != q) {},
                    _ => while chars.next_if(|c| !c.is_whitespace() && *c != '>').is_some() {},
                },
                Some('>') | None => break,
                Some(_) => {}
            }
        }
    }
    names
}

/// Whether an HTML source has an event handler attribute (`onclick=`) in a tag.
fn has_event_handler(html: &str) -> bool {
    attribute_names(html).iter().any(|n| n.starts_with("on"))
}

#[test]
fn the_attribute_scanner_sees_handlers_but_not_quoted_text() {
    assert!(has_event_handler("<p class=\"a\" onclick=\"x()\">"));
    assert!(has_event_handler("<img src=x onerror=alert(1)>"));
    assert!(!has_event_handler(
        "<input value=\"&quot; onfocus=&quot;x\">"
    ));
    assert!(!has_event_handler("<p>one onion=3</p>"));
    assert_eq!(
        attribute_names("<input type=\"checkbox\" checked id='a b'>"),
        ["type", "checked", "id"]
    );
}

#[test]
fn stylesheet_fetches_nothing_else() {
    // The sheet without its comments (which may name what it avoids).
    let css: String = STYLESHEET
        .split("/*")
        .enumerate()
        .map(|(i, part)| {
            if i == 0 {
                part
            } else {
                part.split_once("*/").map_or("", |(_, rest)| rest)
            }
        })
        .collect::<String>()
        .to_ascii_lowercase();
    assert!(!css.contains("@import") && !css.contains("url("));
    assert!(css.contains(":focus-visible") && css.contains("outline: 3px"));
    assert!(css.contains("prefers-color-scheme") && css.contains("max-width: 30rem"));
}

fn signin<'a>(client_name: &'a str, error: Option<&'a str>) -> SigninView<'a> {
    SigninView {
        client_name,
        action: "/oauth/authorize/signin",
        carry: "request",
        csrf: "CSRF-TOKEN",
        request: "REQ-HANDLE",
        error,
        username: None,
    }
}

fn scopes() -> Vec<ScopeItem> {
    vec![
        ScopeItem::new("launch/patient", true),
        ScopeItem::new("patient/Observation.rs", true),
        ScopeItem::new("offline_access", false),
    ]
}

fn consent<'a>(
    client_name: &'a str,
    scopes: &'a [ScopeItem],
    patient: Option<&'a str>,
) -> ConsentView<'a> {
    ConsentView {
        client_name,
        scopes,
        redirect_origin: "https://app.example",
        csrf: "CSRF-TOKEN",
        request: "REQ-HANDLE",
        patient,
        patient_label: patient.map(|_| "Jane <b>Doe</b> (1970-01-02)"),
        error: None,
    }
}

const PATIENTS: &[(&str, &str)] = &[("p1", "Alex Smith (1970-01-02)"), ("p2", "Sam <Jones>")];

fn patient_choices() -> Vec<PatientChoice> {
    PATIENTS
        .iter()
        .map(|(id, label)| PatientChoice {
            id: (*id).to_owned(),
            label: (*label).to_owned(),
        })
        .collect()
}

/// Every page, rendered with its optional values given.
fn all_pages() -> Vec<(&'static str, String)> {
    let p = pages();
    let items = scopes();
    let patients = patient_choices();
    vec![
        (
            "signin.html",
            p.render(&SigninView {
                username: Some("alice"),
                ..signin("Growth Chart", Some("Wrong user name or password."))
            })
            .unwrap(),
        ),
        (
            "totp.html",
            p.render(&TotpView {
                client_name: Some("Growth Chart"),
                action: "/oauth/authorize/totp",
                carry: "request",
                csrf: "CSRF-TOKEN",
                request: "REQ-HANDLE",
                error: Some("That code did not work."),
            })
            .unwrap(),
        ),
        (
            "picker.html",
            p.render(&PickerView {
                client_name: Some("Growth Chart"),
                patients: &patients,
                csrf: "CSRF-TOKEN",
                request: "REQ-HANDLE",
                error: None,
            })
            .unwrap(),
        ),
        (
            "consent.html",
            p.render(&consent("Growth Chart", &items, Some("p1")))
                .unwrap(),
        ),
        (
            "error.html",
            p.render(&ErrorView {
                title: "Unknown app",
                message: "This app is not registered here.",
            })
            .unwrap(),
        ),
    ]
}

#[test]
fn pages_have_the_accessible_frame() {
    for (name, html) in all_pages() {
        assert!(html.starts_with("<!doctype html>"), "{name}");
        assert!(html.contains("<html lang=\"en\">"), "{name}");
        assert!(html.contains("<meta name=\"viewport\""), "{name}");
        assert!(html.contains("<main id=\"main\""), "{name}");
        assert_eq!(html.matches("<h1").count(), 1, "{name}");
        assert!(
            html.contains("<link rel=\"stylesheet\" href=\"/static/phivault.css\">"),
            "{name}"
        );
        assert!(
            html.contains("<title>") && !html.contains("<title> ·"),
            "{name}"
        );
        // Every visible input has a label pointing at its id.
        for tag in html.split("<input").skip(1) {
            let tag = tag.split('>').next().unwrap();
            if tag.contains("type=\"hidden\"") {
                continue;
            }
            let id = tag
                .split("id=\"")
                .nth(1)
                .and_then(|s| s.split('"').next())
                .unwrap_or_else(|| panic!("{name}: an input without id: {tag}"));
            assert!(
                html.contains(&format!("<label for=\"{id}\"")),
                "{name}: no label for {id}"
            );
        }
        assert!(
            !has_event_handler(&html) && !html.contains("<script"),
            "{name}"
        );
    }
}

#[test]
fn rendering_escapes_every_value() {
    let p = pages();
    let evil = "<script>alert(1)</script>\"'&";
    let html = p.render(&signin(evil, Some(evil))).unwrap();
    assert!(!html.contains("<script>"), "{html}");
    assert!(html.contains("&lt;script&gt;alert(1)&lt;&#x2f;script&gt;&quot;&#x27;&amp;"));

    let items = vec![ScopeItem::new("\"><script>x</script>", true)];
    let html = p
        .render(&ConsentView {
            redirect_origin: evil,
            patient_label: Some(evil),
            ..consent(evil, &items, Some("\" onfocus=\"x"))
        })
        .unwrap();
    assert!(
        !html.contains("<script>") && !has_event_handler(&html),
        "{html}"
    );
    assert!(html.contains("value=\"&quot; onfocus=&quot;x\""));

    let patients = patient_choices();
    let html = p
        .render(&PickerView {
            client_name: Some(evil),
            patients: &patients,
            csrf: "c",
            request: "r",
            error: Some(evil),
        })
        .unwrap();
    assert!(!html.contains("<script>") && html.contains("Sam &lt;Jones&gt;"));
}

#[test]
fn signin_page_fields() {
    let html = pages().render(&signin("Growth Chart", None)).unwrap();
    // Values are escaped, `/` included: the browser reads `&#x2f;` as `/`.
    assert!(
        html.contains("<form method=\"post\" action=\"&#x2f;oauth&#x2f;authorize&#x2f;signin\">")
    );
    assert!(html.contains("name=\"username\" type=\"text\" autocomplete=\"username\""));
    assert!(html.contains("name=\"password\" type=\"password\" autocomplete=\"current-password\""));
    assert!(html.contains("<input type=\"hidden\" name=\"csrf\" value=\"CSRF-TOKEN\">"));
    assert!(html.contains("<input type=\"hidden\" name=\"request\" value=\"REQ-HANDLE\">"));
    assert!(html.contains("<strong>Growth Chart</strong>"));
    assert!(html.contains(">Sign in</button>"));
    assert!(!html.contains("role=\"alert\"") && !html.contains("aria-describedby"));

    let html = pages()
        .render(&SigninView {
            username: Some("alice"),
            ..signin("Growth Chart", Some("Wrong user name or password."))
        })
        .unwrap();
    assert!(html.contains("role=\"alert\" id=\"form-error\"><p>Wrong user name or password.</p>"));
    assert!(html.contains("value=\"alice\" aria-describedby=\"form-error\""));
}

#[test]
fn totp_page_fields() {
    let html = pages()
        .render(&TotpView {
            client_name: None,
            action: "/oauth/authorize/totp",
            carry: "request",
            csrf: "CSRF-TOKEN",
            request: "REQ-HANDLE",
            error: None,
        })
        .unwrap();
    assert!(html.contains("action=\"&#x2f;oauth&#x2f;authorize&#x2f;totp\""));
    assert!(html.contains("name=\"code\""));
    assert!(html.contains("inputmode=\"numeric\" autocomplete=\"one-time-code\""));
    assert!(html.contains("name=\"csrf\" value=\"CSRF-TOKEN\""));
    assert!(html.contains("name=\"request\" value=\"REQ-HANDLE\""));
    assert!(html.contains(">Verify</button>"));
}

#[test]
fn picker_page_fields() {
    let patients = patient_choices();
    let view = PickerView {
        client_name: None,
        patients: &patients,
        csrf: "CSRF-TOKEN",
        request: "REQ-HANDLE",
        error: None,
    };
    let html = pages().render(&view).unwrap();
    assert!(html.contains("action=\"/oauth/authorize/patient\""));
    assert!(html.contains(
        "<input type=\"radio\" id=\"patient-1\" name=\"patient\" value=\"p1\" required>"
    ));
    assert!(html.contains("<input type=\"radio\" id=\"patient-2\" name=\"patient\" value=\"p2\">"));
    assert!(html.contains("<label for=\"patient-1\">Alex Smith (1970-01-02)</label>"));
    assert!(html.contains("<fieldset>") && html.contains("<legend>"));
    assert!(html.contains(">Continue</button>"));

    let html = pages()
        .render(&PickerView {
            patients: &[],
            ..view
        })
        .unwrap();
    assert!(!html.contains("<form") && html.contains("There is no patient record"));
}

#[test]
fn consent_page_fields() {
    let items = scopes();
    let html = pages()
        .render(&consent("Growth Chart", &items, Some("p1")))
        .unwrap();
    assert!(html.contains("action=\"/oauth/authorize/consent\""));
    assert!(html.contains(
        "<input type=\"checkbox\" id=\"scope-2\" name=\"scope\" value=\"patient&#x2f;Observation.rs\" \
         checked>"
    ));
    assert!(html.contains(
        "<input type=\"checkbox\" id=\"scope-3\" name=\"scope\" value=\"offline_access\">"
    ));
    assert!(html.contains(
        "<label for=\"scope-2\">Read and search your observations (lab results, vital signs)\
         <span class=\"scope-code\">patient&#x2f;Observation.rs</span></label>"
    ));
    assert!(html.contains("<legend>Growth Chart wants to:</legend>"));
    assert!(html.contains("<input type=\"hidden\" name=\"patient\" value=\"p1\">"));
    assert!(html.contains("Patient record: <strong>Jane &lt;b&gt;Doe&lt;&#x2f;b&gt; (1970-01-02)"));
    assert!(html.contains(
        // `/` is escaped too; the browser shows it as is.
        "You will return to <strong>https:&#x2f;&#x2f;app.example</strong>."
    ));
    assert!(html.contains(
        "<button type=\"submit\" class=\"button primary\" name=\"decision\" value=\"approve\">\
         Allow</button>"
    ));
    assert!(html.contains(
        "<button type=\"submit\" class=\"button\" name=\"decision\" value=\"deny\">Deny</button>"
    ));

    let html = pages()
        .render(&consent("Growth Chart", &items, None))
        .unwrap();
    assert!(!html.contains("name=\"patient\"") && !html.contains("Patient record"));
}

#[test]
fn optional_values_may_be_left_out_but_required_ones_may_not() {
    let p = pages();
    let html = p
        .render_template(
            "signin.html",
            context! {
                client_name => "App", action => "/oauth/authorize/signin", carry => "request",
                csrf => "c", request => "r",
            },
        )
        .unwrap();
    assert!(html.contains("<strong>App</strong>"));
    let html = p
        .render_template(
            "consent.html",
            context! {
                client_name => "App", scopes => minijinja::value::Serde(scopes()), redirect_origin => "https://a.example",
                csrf => "c", request => "r",
            },
        )
        .unwrap();
    assert!(!html.contains("name=\"patient\""));
    // A required value left out is an error, not an empty string in the page.
    assert!(
        p.render_template(
            "signin.html",
            context! { client_name => "App", csrf => "c" }
        )
        .is_err()
    );
    assert!(
        p.render_template("error.html", context! { title => "T" })
            .is_err()
    );
    assert!(p.render_template("missing.html", context! {}).is_err());
}

/// A view whose template does not exist.
#[derive(serde::Serialize)]
struct Broken;

impl View for Broken {
    const TEMPLATE: &'static str = "missing.html";
}

#[tokio::test]
async fn respond_sends_the_page_or_a_plain_500() {
    let p = pages();
    let r = p.respond(
        StatusCode::BAD_REQUEST,
        &ErrorView {
            title: "Unknown app",
            message: "This app is not registered here.",
        },
        &["https://app.example/cb"],
    );
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(
        header(&r, "content-security-policy")
            .unwrap()
            .contains("form-action 'self' https://app.example;")
    );
    assert!(
        body_text(r)
            .await
            .contains("<h1 id=\"heading\">Unknown app</h1>")
    );

    let r = p.respond(StatusCode::OK, &Broken, &[]);
    assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(header(&r, "content-security-policy"), Some(BASE_POLICY));
    assert!(body_text(r).await.contains("Something went wrong"));
}

// ---------------------------------------------------------------------------------------
// The stylesheet, and the edge keeping the pages' headers

fn edge_router() -> Router {
    Router::new()
        .route(
            "/page",
            get(|| async {
                page(
                    StatusCode::OK,
                    "<p>x</p>".to_owned(),
                    &["https://app.example/cb"],
                )
            }),
        )
        .route(STYLESHEET_PATH, get(stylesheet))
        .route("/api", get(|| async { "{}" }))
        .layer(axum::middleware::from_fn(crate::edge::request_edge))
}

async fn get_path(path: &str, headers: &[(&str, &str)]) -> Response {
    let mut req = Request::get(path);
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    edge_router()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap()
}

#[tokio::test]
async fn the_edge_keeps_a_page_policy_and_defaults_the_rest() {
    let r = get_path("/page", &[]).await;
    let csp = header(&r, "content-security-policy").unwrap();
    assert!(
        csp.contains("form-action 'self' https://app.example;"),
        "{csp}"
    );
    assert!(csp.contains("frame-ancestors 'none'"));
    assert_eq!(header(&r, "cache-control"), Some("no-store"));
    assert_eq!(header(&r, "x-content-type-options"), Some("nosniff"));
    assert_eq!(header(&r, "x-frame-options"), Some("DENY"));
    assert!(header(&r, "x-request-id").is_some());

    let r = get_path("/api", &[]).await;
    assert_eq!(
        header(&r, "content-security-policy"),
        Some("default-src 'none'; frame-ancestors 'none'")
    );
    assert_eq!(header(&r, "cache-control"), Some("no-store"));
}

#[tokio::test]
async fn the_stylesheet_is_served_and_revalidated() {
    let r = get_path(STYLESHEET_PATH, &[]).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "content-type"), Some("text/css; charset=utf-8"));
    assert_eq!(header(&r, "cache-control"), Some("no-cache"));
    assert_eq!(header(&r, "x-content-type-options"), Some("nosniff"));
    let etag = header(&r, "etag").unwrap().to_owned();
    assert_eq!(etag.len(), 34, "{etag}");
    assert_eq!(body_text(r).await, STYLESHEET);

    for sent in [
        etag.clone(),
        format!("W/{etag}"),
        format!("\"x\", {etag}"),
        "*".to_owned(),
    ] {
        let r = get_path(STYLESHEET_PATH, &[("if-none-match", &sent)]).await;
        assert_eq!(r.status(), StatusCode::NOT_MODIFIED, "{sent}");
        assert_eq!(header(&r, "etag"), Some(etag.as_str()));
        assert!(body_text(r).await.is_empty());
    }
    let r = get_path(STYLESHEET_PATH, &[("if-none-match", "\"old\"")]).await;
    assert_eq!(r.status(), StatusCode::OK);
}
