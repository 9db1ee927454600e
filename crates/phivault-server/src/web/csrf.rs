//! Cross-site request forgery protection of the web forms: a double-submit cookie.
//!
//! A page that shows a form calls [`ensure`]: it reuses the browser's `__Host-phivault_csrf`
//! cookie (32 random bytes from aws-lc-rs, base64url) or makes one, and the page puts the same
//! token in a hidden `csrf` field. A form post passes [`check`] only when the cookie and the
//! field are both present, well formed and equal (compared in constant time).
//!
//! Why it holds: another site can make a browser post a form here, but it can neither read
//! the cookie (HttpOnly, and the same-origin policy) nor write it (`__Host-` cookies come only
//! from this host over HTTPS), so it cannot put the right value in the field. `SameSite=Strict`
//! on the cookie is a second, independent barrier. The token is not a credential: it proves
//! only that the post came from a page this server rendered for this browser.

use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::{WebError, cookie};

/// The cookie's name (sent as `__Host-phivault_csrf`).
pub(crate) const COOKIE: &str = "phivault_csrf";
/// The form field that carries the token.
pub(crate) const FIELD: &str = "csrf";
/// How long a browser keeps the cookie: a working day, so a page left open for hours still
/// posts. It is renewed by nothing but expiry; a new one is made when it is gone.
pub(crate) const MAX_AGE: Duration = Duration::from_secs(12 * 60 * 60);
/// Random bytes of a token.
const TOKEN_BYTES: usize = 32;
/// Length of a token: 32 bytes in base64url without padding.
const TOKEN_CHARS: usize = 43;

/// Why a form post was refused. Neither variant says anything about the values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum CsrfError {
    /// The cookie or the form field is absent or malformed.
    #[error("the form's anti-forgery token is missing")]
    Missing,
    /// Both present, but they differ.
    #[error("the form's anti-forgery token does not match")]
    Mismatch,
}

/// Whether `token` has the form of a token this module makes.
fn well_formed(token: &str) -> bool {
    token.len() == TOKEN_CHARS
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A fresh token.
fn generate() -> Result<Zeroizing<String>, WebError> {
    let mut raw = Zeroizing::new([0u8; TOKEN_BYTES]);
    phivault_crypto::random_bytes(raw.as_mut()).map_err(|_| WebError::Random)?;
    let mut token = Zeroizing::new(String::with_capacity(TOKEN_CHARS));
    URL_SAFE_NO_PAD.encode_string(raw.as_ref(), &mut token);
    Ok(token)
}

/// The token to put in the page's hidden `csrf` field, and the `Set-Cookie` header to send
/// with the page when the browser had no usable cookie (`None`: it has one, keep it).
/// Fails only when the system random generator does.
pub(crate) fn ensure(
    headers: &HeaderMap,
) -> Result<(Zeroizing<String>, Option<HeaderValue>), WebError> {
    if let Some(token) = cookie::get(headers, COOKIE)
        && well_formed(&token)
    {
        return Ok((token, None));
    }
    let token = generate()?;
    let set_cookie = cookie::set(COOKIE, &token, MAX_AGE)?;
    Ok((token, Some(set_cookie)))
}

/// Whether a form post carries the token of its browser's cookie: `form_value` is the
/// posted `csrf` field (`None` when absent). Refused when either is missing or malformed,
/// or when they differ; the comparison takes the same time wherever they differ.
pub(crate) fn check(headers: &HeaderMap, form_value: Option<&str>) -> Result<(), CsrfError> {
    let cookie = cookie::get(headers, COOKIE).ok_or(CsrfError::Missing)?;
    let field = form_value.ok_or(CsrfError::Missing)?;
    // An empty or short cookie and field would otherwise be equal: only real tokens count.
    if !well_formed(&cookie) || !well_formed(field) {
        return Err(CsrfError::Missing);
    }
    if bool::from(cookie.as_bytes().ct_eq(field.as_bytes())) {
        Ok(())
    } else {
        Err(CsrfError::Mismatch)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use axum::http::header;

    use super::*;

    fn with_cookie(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        let cookie = format!("other=1; __Host-{COOKIE}={value}");
        h.insert(header::COOKIE, HeaderValue::from_str(&cookie).unwrap());
        h
    }

    #[test]
    fn ensure_makes_a_token_and_its_cookie() {
        let (token, set) = ensure(&HeaderMap::new()).unwrap();
        assert!(well_formed(&token), "{}", token.len());
        let set = set.unwrap();
        assert_eq!(
            set.to_str().unwrap(),
            format!(
                "__Host-phivault_csrf={}; Path=/; Secure; HttpOnly; SameSite=Strict; \
                 Max-Age=43200",
                token.as_str()
            )
        );
        let (other, _) = ensure(&HeaderMap::new()).unwrap();
        assert_ne!(token.as_str(), other.as_str());
    }

    #[test]
    fn ensure_reuses_a_good_cookie_and_replaces_a_bad_one() {
        let (token, _) = ensure(&HeaderMap::new()).unwrap();
        let (again, set) = ensure(&with_cookie(&token)).unwrap();
        assert_eq!(again.as_str(), token.as_str());
        assert!(set.is_none());

        for bad in ["", "short", &"a".repeat(44), &format!("{}!", &token[..42])] {
            let (fresh, set) = ensure(&with_cookie(bad)).unwrap();
            assert_ne!(fresh.as_str(), bad);
            assert!(well_formed(&fresh));
            assert!(set.is_some(), "{bad:?}");
        }
    }

    #[test]
    fn check_accepts_only_the_matching_pair() {
        let (token, _) = ensure(&HeaderMap::new()).unwrap();
        let headers = with_cookie(&token);
        assert_eq!(check(&headers, Some(&token)), Ok(()));

        let (other, _) = ensure(&HeaderMap::new()).unwrap();
        assert_eq!(check(&headers, Some(&other)), Err(CsrfError::Mismatch));
        // One character off, at the end.
        let mut near = token.to_string();
        near.pop();
        near.push(if token.ends_with('A') { 'B' } else { 'A' });
        assert_eq!(check(&headers, Some(&near)), Err(CsrfError::Mismatch));
    }

    #[test]
    fn check_refuses_when_either_side_is_missing() {
        let (token, _) = ensure(&HeaderMap::new()).unwrap();
        assert_eq!(
            check(&HeaderMap::new(), Some(&token)),
            Err(CsrfError::Missing)
        );
        assert_eq!(check(&with_cookie(&token), None), Err(CsrfError::Missing));
        assert_eq!(
            check(&with_cookie(&token), Some("")),
            Err(CsrfError::Missing)
        );
        // Empty cookie and empty field are equal, and still refused.
        assert_eq!(check(&with_cookie(""), Some("")), Err(CsrfError::Missing));
        assert_eq!(check(&with_cookie("x"), Some("x")), Err(CsrfError::Missing));
        // The token without the `__Host-` prefix could come from a sibling subdomain.
        let mut h = HeaderMap::new();
        let plain = format!("{COOKIE}={}", token.as_str());
        h.insert(header::COOKIE, HeaderValue::from_str(&plain).unwrap());
        assert_eq!(check(&h, Some(&token)), Err(CsrfError::Missing));
    }
}
