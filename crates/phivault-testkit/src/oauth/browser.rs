//! The person's side: a form-driving browser (no redirects followed, a manual cookie jar)
//! and the HTML helpers that read a page's inputs.

use reqwest::header::{CONTENT_TYPE, COOKIE, SET_COOKIE};
use reqwest::{Method, RequestBuilder};

use super::{OAuthHttp, form_body};
use crate::api::{Api, Resp};

// ---------------------------------------------------------------------------------------
// HTML

/// Undoes minijinja's HTML escaping (`&amp; &lt; &gt; &quot; &#x27; &#x2f;` and their
/// decimal or upper-case spellings).
pub fn html_unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let Some(end) = rest.find(';').filter(|e| *e <= 8) else {
            out.push('&');
            rest = &rest[1..];
            continue;
        };
        let entity = rest[1..end].to_ascii_lowercase();
        let c = match entity.as_str() {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            e => {
                let code = if let Some(hex) = e.strip_prefix("#x") {
                    u32::from_str_radix(hex, 16).ok()
                } else if let Some(dec) = e.strip_prefix('#') {
                    dec.parse().ok()
                } else {
                    None
                };
                code.and_then(char::from_u32)
            }
        };
        match c {
            Some(c) => {
                out.push(c);
                rest = &rest[end + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The attributes of one tag (`<input a="b" c>`), values unescaped; bare attributes get "".
fn attributes(tag: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = tag.trim_start_matches('<');
    // Skip the tag name.
    rest = rest.trim_start_matches(|c: char| c.is_ascii_alphanumeric());
    loop {
        rest = rest.trim_start_matches(|c: char| c.is_whitespace() || c == '/');
        if rest.is_empty() || rest.starts_with('>') {
            return out;
        }
        let name_end = rest
            .find(|c: char| c.is_whitespace() || c == '=' || c == '>' || c == '/')
            .unwrap_or(rest.len());
        let name = rest[..name_end].to_ascii_lowercase();
        rest = &rest[name_end..];
        if let Some(after) = rest.strip_prefix('=') {
            let (value, after) = match after.chars().next() {
                Some(q @ ('"' | '\'')) => {
                    let body = &after[1..];
                    let end = body.find(q).unwrap_or(body.len());
                    (&body[..end], body.get(end + 1..).unwrap_or(""))
                }
                _ => {
                    let end = after
                        .find(|c: char| c.is_whitespace() || c == '>')
                        .unwrap_or(after.len());
                    (&after[..end], &after[end..])
                }
            };
            out.push((name, html_unescape(value)));
            rest = after;
        } else {
            out.push((name, String::new()));
        }
    }
}

/// Every `<input>` of a page, as its attribute lists.
pub fn inputs(html: &str) -> Vec<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut rest = html;
    while let Some(i) = rest.find("<input") {
        rest = &rest[i..];
        let end = rest.find('>').unwrap_or(rest.len());
        out.push(attributes(&rest[..end]));
        rest = &rest[end..];
    }
    out
}

fn attr<'a>(attrs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    attrs
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// The values of the inputs named `name` (checkboxes and radios repeat), unescaped.
pub fn input_values(html: &str, name: &str) -> Vec<String> {
    inputs(html)
        .iter()
        .filter(|a| attr(a, "name") == Some(name))
        .map(|a| attr(a, "value").unwrap_or_default().to_owned())
        .collect()
}

/// The value of the hidden input `name`, unescaped.
pub fn hidden_input(html: &str, name: &str) -> Option<String> {
    inputs(html)
        .iter()
        .find(|a| attr(a, "type") == Some("hidden") && attr(a, "name") == Some(name))
        .map(|a| attr(a, "value").unwrap_or_default().to_owned())
}

impl Resp {
    /// The `Location` header.
    pub fn location(&self) -> Option<&str> {
        self.header("location")
    }

    /// The decoded query parameters of the `Location` (a redirect to the app); a test
    /// failure when there is no redirect.
    pub fn redirect_params(&self) -> Vec<(String, String)> {
        let location = self
            .location()
            .unwrap_or_else(|| panic!("expected a redirect, got {self:?}"));
        let url = reqwest::Url::parse(location)
            .unwrap_or_else(|e| panic!("the Location {location:?} is not a URL: {e}"));
        url.query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    }

    /// One query parameter of the redirect (the first of that name).
    pub fn redirect_param(&self, name: &str) -> Option<String> {
        self.redirect_params()
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }

    /// The hidden input `name` of a page.
    pub fn hidden(&self, name: &str) -> Option<String> {
        hidden_input(&self.text, name)
    }

    /// Every `Set-Cookie` header of the answer.
    pub fn set_cookies(&self) -> Vec<String> {
        self.headers
            .get_all(SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_owned))
            .collect()
    }
}

// ---------------------------------------------------------------------------------------
// The browser

/// What the person decides on the consent page.
#[derive(Debug, Clone)]
pub enum Decision<'a> {
    /// Allow every scope the page offers (its checkboxes).
    ApproveOffered,
    /// Allow these scopes (sent as the `scope` checkboxes, whatever the page offered).
    Approve(&'a [&'a str]),
    /// Deny.
    Deny,
}

/// A browser: no redirects followed, a manual cookie jar.
#[derive(Debug, Clone)]
pub struct Browser {
    http: OAuthHttp,
    /// (name with its `__Host-` prefix, value), in the order set.
    jar: Vec<(String, String)>,
}

impl Browser {
    /// A browser with an empty jar.
    pub fn new(http: OAuthHttp) -> Browser {
        Browser {
            http,
            jar: Vec::new(),
        }
    }

    /// Its HTTP side.
    pub fn http(&self) -> &OAuthHttp {
        &self.http
    }

    /// The value of cookie `name` (full name, e.g. `__Host-phivault_csrf`).
    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.jar
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Sets (or replaces) cookie `name` in the jar.
    pub fn set_cookie(&mut self, name: &str, value: &str) {
        self.remove_cookie(name);
        self.jar.push((name.to_owned(), value.to_owned()));
    }

    /// Removes cookie `name` from the jar.
    pub fn remove_cookie(&mut self, name: &str) {
        self.jar.retain(|(n, _)| n != name);
    }

    /// Empties the jar.
    pub fn clear_cookies(&mut self) {
        self.jar.clear();
    }

    fn keep_cookies(&mut self, r: &Resp) {
        for line in r.set_cookies() {
            let first = line.split(';').next().unwrap_or_default();
            let Some((name, value)) = first.split_once('=') else {
                continue;
            };
            let expired = line
                .split(';')
                .any(|a| a.trim().eq_ignore_ascii_case("max-age=0"));
            if expired || value.is_empty() {
                self.remove_cookie(name.trim());
            } else {
                self.set_cookie(name.trim(), value.trim());
            }
        }
    }

    fn with_cookies(&self, rb: RequestBuilder) -> RequestBuilder {
        if self.jar.is_empty() {
            return rb;
        }
        let header = self
            .jar
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        rb.header(COOKIE, header)
    }

    /// `GET url` (absolute, or a path at the origin) with the jar; cookies set are kept.
    pub async fn open(&mut self, url: &str) -> Resp {
        let rb = self
            .with_cookies(self.http.request(Method::GET, url))
            .header("accept", "text/html");
        let r = Api::send(rb).await;
        self.keep_cookies(&r);
        r
    }

    /// `POST action` with a form of `fields` (repeated names kept) and the jar.
    pub async fn submit(&mut self, action: &str, fields: &[(&str, &str)]) -> Resp {
        let rb = self
            .with_cookies(self.http.request(Method::POST, action))
            .header("accept", "text/html")
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(form_body(fields));
        let r = Api::send(rb).await;
        self.keep_cookies(&r);
        r
    }

    /// The hidden fields every step posts back: `csrf`, `request`.
    fn page_fields(page: &Resp) -> (String, String) {
        let csrf = page
            .hidden("csrf")
            .unwrap_or_else(|| panic!("the page has no csrf field: {page:?}"));
        let request = page
            .hidden("request")
            .unwrap_or_else(|| panic!("the page has no request field: {page:?}"));
        (csrf, request)
    }

    /// Posts the sign-in form of `page` (answer: the TOTP, picker or consent page, or the
    /// sign-in page again with an error).
    pub async fn sign_in(&mut self, page: &Resp, username: &str, password: &str) -> Resp {
        let (csrf, request) = Self::page_fields(page);
        self.submit(
            "/oauth/authorize/signin",
            &[
                ("csrf", &csrf),
                ("request", &request),
                ("username", username),
                ("password", password),
            ],
        )
        .await
    }

    /// Posts the second-factor form of `page` with `code` (a TOTP or a recovery code).
    pub async fn totp(&mut self, page: &Resp, code: &str) -> Resp {
        let (csrf, request) = Self::page_fields(page);
        self.submit(
            "/oauth/authorize/totp",
            &[("csrf", &csrf), ("request", &request), ("code", code)],
        )
        .await
    }

    /// Posts the patient picker of `page` with `patient` (an id).
    pub async fn pick(&mut self, page: &Resp, patient: &str) -> Resp {
        let (csrf, request) = Self::page_fields(page);
        self.submit(
            "/oauth/authorize/patient",
            &[("csrf", &csrf), ("request", &request), ("patient", patient)],
        )
        .await
    }

    /// Posts the consent form of `page` (its `csrf`, `request` and `patient`) with the
    /// decision. An approval answers a redirect to the app with `code` and `state`.
    pub async fn consent(&mut self, page: &Resp, decision: Decision<'_>) -> Resp {
        let (csrf, request) = Self::page_fields(page);
        let patient = page.hidden("patient");
        let offered = input_values(&page.text, "scope");
        let mut fields: Vec<(&str, &str)> = vec![("csrf", &csrf), ("request", &request)];
        if let Some(p) = &patient {
            fields.push(("patient", p));
        }
        match decision {
            Decision::ApproveOffered => {
                fields.extend(offered.iter().map(|s| ("scope", s.as_str())));
                fields.push(("decision", "approve"));
            }
            Decision::Approve(scopes) => {
                fields.extend(scopes.iter().map(|s| ("scope", *s)));
                fields.push(("decision", "approve"));
            }
            Decision::Deny => fields.push(("decision", "deny")),
        }
        self.submit("/oauth/authorize/consent", &fields).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_helpers() {
        let page = r#"<form><input type="hidden" name="csrf" value="a&#x2f;b&amp;c">
            <input type="hidden" name="request" value="x=1&amp;state=a&#x27;&quot;&lt;&gt;">
            <input type="checkbox" id="s1" name="scope" value="patient&#x2f;*.rs" checked>
            <input type="checkbox" name="scope" value="openid"></form>"#;
        assert_eq!(hidden_input(page, "csrf").as_deref(), Some("a/b&c"));
        assert_eq!(
            hidden_input(page, "request").as_deref(),
            Some("x=1&state=a'\"<>")
        );
        assert_eq!(input_values(page, "scope"), ["patient/*.rs", "openid"]);
        assert_eq!(hidden_input(page, "scope"), None);
        assert_eq!(html_unescape("&#X2F;&#39;&bogus; & x"), "/'&bogus; & x");
    }
}
