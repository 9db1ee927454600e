//! Server-rendered web pages: the sign-in, second factor, patient picker and consent steps of
//! the SMART authorization flow, and later the patient portal and the admin console.
//!
//! Rules every page keeps:
//! - **No script, no inline style.** Templates carry neither `<script>`, `<style>` nor
//!   `style=`; [`page`] sends a Content-Security-Policy that allows only the one same-origin
//!   stylesheet (`GET /static/phivault.css`), images from this origin or `data:`, forms posted
//!   here or to the targets the handler names, never framing (`frame-ancestors 'none'`,
//!   `X-Frame-Options: DENY`) and no `<base>`. The edge keeps that policy instead of its
//!   API default.
//! - **Nothing is cached, nothing leaks through the referrer.** `Cache-Control: no-store` and
//!   `Referrer-Policy: no-referrer` on every page (the stylesheet alone may be cached).
//! - **Every value is escaped** and a template mistake is an error, not a blank
//!   ([`pages`]).
//! - **Every form post carries a CSRF token** checked against a `__Host-` cookie
//!   ([`csrf`], [`cookie`]); form bodies are decoded into zeroized values ([`form`]).
//! - **Accessible.** `lang`, one `<h1>` per page inside `<main>`, a label for every input,
//!   errors announced (`role="alert"`), visible focus, WCAG AA contrast, phone widths
//!   (the stylesheet states its own rules).

pub(crate) mod api;
pub(crate) mod cookie;
pub(crate) mod csrf;
mod form;
pub mod pages;
mod scopes;
pub(crate) mod session;
#[cfg(test)]
pub(crate) mod test_support;

use std::sync::LazyLock;

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::AppState;

pub(crate) use form::{Form, form};
pub use pages::Pages;
pub(crate) use pages::{ConsentView, ErrorView, PatientChoice, PickerView, SigninView, TotpView};
pub(crate) use scopes::ScopeItem;

/// Where the stylesheet is served.
pub(crate) const STYLESHEET_PATH: &str = "/static/phivault.css";
/// The stylesheet, embedded.
const STYLESHEET: &str = include_str!("../../static/phivault.css");

/// What can fail on our side while making a page. Nothing here is the client's mistake.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum WebError {
    /// A template did not compile or render (names the template and line, never a value).
    #[error("page template: {0}")]
    Template(#[from] minijinja::Error),
    /// The system random generator failed.
    #[error("the system random generator failed")]
    Random,
    /// A cookie name outside `[A-Za-z0-9_-]` (a programming error).
    #[error("invalid cookie name")]
    CookieName,
    /// A cookie value outside the cookie-octets.
    #[error("invalid cookie value")]
    CookieValue,
}

/// The routes of this module: the stylesheet. Public (no token), like the pages.
pub(crate) fn routes() -> Router<AppState> {
    Router::new().route(STYLESHEET_PATH, get(stylesheet))
}

/// The stylesheet's entity tag: a hash of its text, so a new release is fetched at once.
static STYLESHEET_ETAG: LazyLock<String> = LazyLock::new(|| {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, STYLESHEET.as_bytes());
    format!("\"{}\"", hex::encode(&digest.as_ref()[..16]))
});

/// Whether `If-None-Match` names the current stylesheet (or `*`).
fn etag_matches(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|tag| tag.trim().trim_start_matches("W/"))
        .any(|tag| tag == "*" || tag == STYLESHEET_ETAG.as_str())
}

/// `GET /static/phivault.css`: revalidated on every use (`no-cache` with an entity tag), so
/// an upgrade changes the look at once and an unchanged sheet costs a 304.
async fn stylesheet(headers: HeaderMap) -> Response {
    let etag = HeaderValue::from_str(&STYLESHEET_ETAG).ok();
    let mut response = if etag_matches(&headers) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/css; charset=utf-8"),
            )],
            STYLESHEET,
        )
            .into_response()
    };
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Some(etag) = etag {
        h.insert(header::ETAG, etag);
    }
    response
}

/// Schemes a form may never be sent to, even when a handler names them.
const REFUSED_SCHEMES: &[&str] = &[
    "javascript",
    "data",
    "blob",
    "filesystem",
    "vbscript",
    "about",
];

/// The origin of `url` (`https://app.example:8443` of `https://App.Example:8443/cb?x=1`), lower
/// case, as shown to people and as a CSP source: `http` and `https` URLs give
/// `scheme://host[:port]`, a private-use scheme of a native app (`com.example.app:/cb`) gives
/// `com.example.app:`. `None` for anything else: user info, a malformed host or port,
/// `javascript:` and the like.
pub(crate) fn origin(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once(':')?;
    let mut chars = scheme.chars();
    let scheme_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    let scheme = scheme.to_ascii_lowercase();
    if !scheme_ok || REFUSED_SCHEMES.contains(&scheme.as_str()) {
        return None;
    }
    if scheme != "http" && scheme != "https" {
        return Some(format!("{scheme}:"));
    }
    let rest = rest.strip_prefix("//")?;
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let (host, port) = match authority.strip_prefix('[') {
        Some(inner) => {
            let (ip, after) = inner.split_once(']')?;
            let ok = !ip.is_empty()
                && ip
                    .chars()
                    .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.');
            if !ok {
                return None;
            }
            (format!("[{ip}]"), after)
        }
        None => {
            let end = authority.find(':').unwrap_or(authority.len());
            let host = &authority[..end];
            let ok = !host.is_empty()
                && !host.starts_with(['.', '-'])
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
            if !ok {
                return None;
            }
            (host.to_owned(), &authority[end..])
        }
    };
    let port = match port {
        "" => String::new(),
        p => {
            let digits = p.strip_prefix(':')?;
            if digits.is_empty() || digits.len() > 5 || !digits.bytes().all(|b| b.is_ascii_digit())
            {
                return None;
            }
            let n: u16 = digits.parse().ok()?;
            format!(":{n}")
        }
    };
    Some(format!("{scheme}://{}{port}", host.to_ascii_lowercase()))
}

/// The Content-Security-Policy of a page whose forms may lead to `form_targets` (a form
/// posted here and redirected there: Chromium applies `form-action` to the redirect too).
/// A target without an origin is left out, and the redirect to it is then blocked, as is an
/// IPv6 literal host (CSP source expressions cannot name one).
fn content_security_policy(form_targets: &[&str]) -> String {
    let mut form_action = String::from("'self'");
    let mut listed: Vec<String> = Vec::new();
    for source in form_targets.iter().filter_map(|t| origin(t)) {
        if source.contains('[') || listed.contains(&source) {
            continue;
        }
        form_action.push(' ');
        form_action.push_str(&source);
        listed.push(source);
    }
    format!(
        "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action {form_action}; \
         frame-ancestors 'none'; base-uri 'none'"
    )
}

/// The response of a rendered page: `html` with `status`, and the headers of every page
/// (`text/html; charset=utf-8`, `Cache-Control: no-store`, the Content-Security-Policy with
/// a `form-action` source for the origin of each of `form_targets`, `X-Frame-Options: DENY`,
/// `Referrer-Policy: no-referrer`). Add cookies with `headers_mut().append(SET_COOKIE, ..)`.
pub(crate) fn page(status: StatusCode, html: String, form_targets: &[&str]) -> Response {
    let csp = HeaderValue::from_str(&content_security_policy(form_targets))
        // Origins are checked to hold only source-expression characters, so this does not
        // fire; if it did, the policy without the targets is still a valid, stricter one.
        .unwrap_or_else(|_| HeaderValue::from_static(BASE_POLICY));
    let mut response = (status, html).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::CONTENT_SECURITY_POLICY, csp);
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// The policy of a page whose forms post only here.
const BASE_POLICY: &str = "default-src 'none'; style-src 'self'; img-src 'self' data:; \
                           form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

#[cfg(test)]
mod tests;
