//! Form posts of the web pages (`application/x-www-form-urlencoded`).
//!
//! Rules:
//! - **Secrets stay secret.** Passwords and codes arrive here: the body and every decoded
//!   value are zeroized when dropped, [`Form`]'s `Debug` prints field names only, and errors
//!   never quote the body.
//! - **Repeats are data, not ambiguity.** A name may repeat (one `scope` per ticked box):
//!   [`Form::all`] reads them all; [`Form::one`] answers only for a name given exactly once, so
//!   a second `csrf` or `request` field cannot change what is read.
//! - Percent-escapes must be complete and the result UTF-8; `+` is a space.

use std::fmt;

use axum::body::Body;
use axum::http::HeaderMap;
use zeroize::Zeroizing;

use crate::ApiError;
use crate::fhir_routes::{read_body, require_form};

/// A decoded form: its fields in the order posted.
pub(crate) struct Form {
    fields: Vec<(String, Zeroizing<String>)>,
}

impl fmt::Debug for Form {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Form")
            .field(
                "names",
                &self.fields.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// The body of a form post to a web page: refuses another media type (415), a body over
/// `max` bytes (413), and a body that does not decode (400).
pub(crate) async fn form(headers: &HeaderMap, body: Body, max: usize) -> Result<Form, ApiError> {
    require_form(headers)?;
    let bytes = Zeroizing::new(Vec::from(read_body(body, headers, max).await?));
    Form::parse(&bytes)
}

/// The value of one `%XX` hex digit.
fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes one name or value.
fn decode(raw: &[u8]) -> Result<Zeroizing<String>, ApiError> {
    let bad = || ApiError::BadRequest("the form body is not valid url-encoded UTF-8".to_owned());
    let mut out = Zeroizing::new(Vec::with_capacity(raw.len()));
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = raw
                    .get(i + 1)
                    .copied()
                    .and_then(hex_digit)
                    .ok_or_else(bad)?;
                let lo = raw
                    .get(i + 2)
                    .copied()
                    .and_then(hex_digit)
                    .ok_or_else(bad)?;
                out.push(hi << 4 | lo);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    // Moving the bytes out leaves an empty vector to zeroize; the string zeroizes them.
    match String::from_utf8(std::mem::take(&mut *out)) {
        Ok(text) => Ok(Zeroizing::new(text)),
        Err(e) => {
            drop(Zeroizing::new(e.into_bytes()));
            Err(bad())
        }
    }
}

impl Form {
    /// Decodes an url-encoded body.
    pub(crate) fn parse(body: &[u8]) -> Result<Form, ApiError> {
        let mut fields = Vec::new();
        for piece in body.split(|b| *b == b'&').filter(|p| !p.is_empty()) {
            let (name, value) = match piece.iter().position(|b| *b == b'=') {
                Some(at) => (&piece[..at], &piece[at + 1..]),
                None => (piece, &[][..]),
            };
            // Names are the form's own words, not secrets.
            let name = std::mem::take(&mut *decode(name)?);
            fields.push((name, decode(value)?));
        }
        Ok(Form { fields })
    }

    /// The value of `name` when the form has it exactly once; `None` when it is absent or
    /// repeated.
    pub(crate) fn one(&self, name: &str) -> Option<&str> {
        let mut values = self.fields.iter().filter(|(n, _)| n == name);
        let (_, first) = values.next()?;
        values.next().is_none().then_some(first.as_str())
    }

    /// Every value of `name`, in the order posted.
    pub(crate) fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.fields
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use axum::http::{HeaderValue, header};

    use super::*;

    #[test]
    fn decodes_repeats_escapes_and_spaces() {
        let f = Form::parse(
            b"scope=patient%2FObservation.rs&scope=openid&username=J%C3%BCrgen+M&password=a%26b%3Dc&flag&&x=",
        )
        .unwrap();
        assert_eq!(
            f.all("scope").collect::<Vec<_>>(),
            ["patient/Observation.rs", "openid"]
        );
        assert_eq!(f.one("username"), Some("Jürgen M"));
        assert_eq!(f.one("password"), Some("a&b=c"));
        assert_eq!(f.one("flag"), Some(""));
        assert_eq!(f.one("x"), Some(""));
        assert_eq!(f.one("missing"), None);
        // A repeated single-valued field is not read at all.
        assert_eq!(f.one("scope"), None);
        assert_eq!(f.fields.len(), 6);
    }

    #[test]
    fn refuses_broken_escapes_and_non_utf8() {
        for body in [
            &b"a=%"[..],
            b"a=%4",
            b"a=%zz",
            b"a=%C3",
            b"%FF=1",
            b"a=\xff",
        ] {
            assert!(Form::parse(body).is_err(), "{body:?}");
        }
    }

    #[test]
    fn debug_names_fields_but_never_values() {
        let f = Form::parse(b"username=alice&password=hunter2").unwrap();
        let shown = format!("{f:?}");
        assert!(
            shown.contains("username") && shown.contains("password"),
            "{shown}"
        );
        assert!(
            !shown.contains("alice") && !shown.contains("hunter2"),
            "{shown}"
        );
    }

    #[tokio::test]
    async fn form_checks_the_media_type_and_size() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded; charset=UTF-8"),
        );
        let f = form(&headers, Body::from("a=1&b=2"), 64).await.unwrap();
        assert_eq!(f.one("b"), Some("2"));

        let long = "a=".to_owned() + &"x".repeat(100);
        assert!(matches!(
            form(&headers, Body::from(long), 64).await,
            Err(ApiError::BodyTooLarge { .. })
        ));

        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        assert!(matches!(
            form(&headers, Body::from("a=1"), 64).await,
            Err(ApiError::UnsupportedMediaType { .. })
        ));
        assert!(matches!(
            form(&HeaderMap::new(), Body::from("a=1"), 64).await,
            Err(ApiError::UnsupportedMediaType { .. })
        ));
    }
}
