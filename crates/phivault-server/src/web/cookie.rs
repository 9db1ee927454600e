//! The cookies of the web pages.
//!
//! Rules:
//! - **`__Host-` only.** Every cookie is named `__Host-<name>`: a browser keeps such a cookie
//!   only when it came over HTTPS from this very host with `Path=/` and no `Domain`, so a
//!   sibling subdomain or a plain-HTTP attacker can neither plant nor overwrite it (the
//!   double-submit CSRF check relies on that).
//! - **Never readable by script, never sent cross-site.** `Secure; HttpOnly; SameSite=Strict`
//!   on every cookie, set and cleared alike.
//! - **Checked values.** Names are `[A-Za-z0-9_-]`, values cookie-octets (RFC 6265, no
//!   quotes, spaces, commas, semicolons or backslashes), so a value can never add an
//!   attribute. `Set-Cookie` headers are marked sensitive (kept out of HTTP/2 header
//!   compression tables).
//! - **Ambiguity reads as absence.** A cookie sent twice with different values is not read.

use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, header};
use zeroize::Zeroizing;

use super::WebError;

/// The prefix browsers hold to the host-only rules.
pub(crate) const PREFIX: &str = "__Host-";
/// Longest name accepted (without the prefix).
const MAX_NAME: usize = 64;
/// Longest value accepted: browsers keep about 4 KiB per cookie, name included.
const MAX_VALUE: usize = 3900;
/// The attributes of every cookie, after the value.
const ATTRIBUTES: &str = "Path=/; Secure; HttpOnly; SameSite=Strict";

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// RFC 6265 `cookie-octet`: visible ASCII but `"`, `,`, `;` and `\`.
fn valid_value(value: &str) -> bool {
    value.len() <= MAX_VALUE
        && value
            .bytes()
            .all(|b| matches!(b, 0x21 | 0x23..=0x2B | 0x2D..=0x3A | 0x3C..=0x5B | 0x5D..=0x7E))
}

fn header_value(text: &str) -> Result<HeaderValue, WebError> {
    let mut value = HeaderValue::from_str(text).map_err(|_| WebError::CookieValue)?;
    value.set_sensitive(true);
    Ok(value)
}

/// `Set-Cookie: __Host-<name>=<value>; Path=/; Secure; HttpOnly; SameSite=Strict;
/// Max-Age=<seconds>`. Refuses a name or value outside the allowed characters.
pub(crate) fn set(name: &str, value: &str, max_age: Duration) -> Result<HeaderValue, WebError> {
    if !valid_name(name) {
        return Err(WebError::CookieName);
    }
    if !valid_value(value) {
        return Err(WebError::CookieValue);
    }
    let text = Zeroizing::new(format!(
        "{PREFIX}{name}={value}; {ATTRIBUTES}; Max-Age={}",
        max_age.as_secs()
    ));
    header_value(&text)
}

/// The `Set-Cookie` header that deletes `__Host-<name>` (empty value, `Max-Age=0`, the same
/// attributes: a browser only replaces a `__Host-` cookie with one that keeps the rules).
pub(crate) fn clear(name: &str) -> Result<HeaderValue, WebError> {
    if !valid_name(name) {
        return Err(WebError::CookieName);
    }
    header_value(&format!("{PREFIX}{name}=; {ATTRIBUTES}; Max-Age=0"))
}

/// The value of the `__Host-<name>` cookie of a request, from every `Cookie` header (HTTP/2
/// may split them). `None` when absent, or present twice with different values.
pub(crate) fn get(headers: &HeaderMap, name: &str) -> Option<Zeroizing<String>> {
    if !valid_name(name) {
        return None;
    }
    let mut found: Option<&str> = None;
    let pairs = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'));
    for pair in pairs {
        let Some((n, v)) = pair.trim().split_once('=') else {
            continue;
        };
        if n.strip_prefix(PREFIX) != Some(name) {
            continue;
        }
        match found {
            Some(earlier) if earlier != v => return None,
            _ => found = Some(v),
        }
    }
    found.map(|v| Zeroizing::new(v.to_owned()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn set_has_exactly_the_host_only_attributes() {
        let v = set("phivault_csrf", "abc-DEF_123", Duration::from_secs(600)).unwrap();
        assert_eq!(
            v.to_str().unwrap(),
            "__Host-phivault_csrf=abc-DEF_123; Path=/; Secure; HttpOnly; SameSite=Strict; \
             Max-Age=600"
        );
        assert!(v.is_sensitive());
    }

    #[test]
    fn clear_expires_with_the_same_attributes() {
        let v = clear("phivault_signin").unwrap();
        assert_eq!(
            v.to_str().unwrap(),
            "__Host-phivault_signin=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0"
        );
    }

    #[test]
    fn refuses_names_and_values_that_could_add_attributes() {
        let age = Duration::from_secs(1);
        for name in ["", "a b", "a;b", "a=b", "__Host-x\n", &"n".repeat(65)] {
            assert!(
                matches!(set(name, "v", age), Err(WebError::CookieName)),
                "{name:?}"
            );
            assert!(matches!(clear(name), Err(WebError::CookieName)), "{name:?}");
        }
        for value in [
            "a; Domain=evil.example",
            "a b",
            "a,b",
            "\"a\"",
            "a\\b",
            "a\r\nSet-Cookie: x=y",
            "é",
            &"v".repeat(MAX_VALUE + 1),
        ] {
            assert!(
                matches!(set("n", value, age), Err(WebError::CookieValue)),
                "{value:?}"
            );
        }
        assert!(set("n", "", age).is_ok());
    }

    fn headers(cookies: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for c in cookies {
            h.append(header::COOKIE, HeaderValue::from_str(c).unwrap());
        }
        h
    }

    #[test]
    fn get_reads_the_prefixed_cookie_only() {
        let h = headers(&["a=1; __Host-sid=xyz; phivault_x=2", "__Host-other=3"]);
        assert_eq!(get(&h, "sid").unwrap().as_str(), "xyz");
        assert_eq!(get(&h, "other").unwrap().as_str(), "3");
        // Without the prefix, a cookie could have been planted by a sibling subdomain.
        assert!(get(&h, "phivault_x").is_none());
        assert!(get(&h, "a").is_none());
        assert!(get(&headers(&[]), "sid").is_none());
        assert!(get(&h, "bad name").is_none());
    }

    #[test]
    fn get_refuses_an_ambiguous_cookie() {
        assert!(get(&headers(&["__Host-sid=a; __Host-sid=b"]), "sid").is_none());
        assert!(get(&headers(&["__Host-sid=a", "__Host-sid=b"]), "sid").is_none());
        assert_eq!(
            get(&headers(&["__Host-sid=a", "__Host-sid=a"]), "sid")
                .unwrap()
                .as_str(),
            "a"
        );
    }
}
