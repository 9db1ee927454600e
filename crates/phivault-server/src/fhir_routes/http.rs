//! The HTTP details FHIR clients rely on, around the handlers rather than inside them: content
//! negotiation (`Accept`, `_format`), conditional read (`If-None-Match`, `If-Modified-Since`)
//! and `Prefer: return=...` on writes; and the media types of request bodies.
//!
//! Rules kept here:
//! - **JSON only, and said so.** A request whose `_format` names anything but JSON, or whose
//!   `Accept` admits no JSON type (`*/*`, `application/*`, `application/json`,
//!   `application/fhir+json`, with a q-value above 0 and, if given, `fhirVersion=4.0`), is
//!   answered 406 with an OperationOutcome (in JSON, the only format there is) before the
//!   handler runs. `_format` wins over `Accept`, as FHIR says. A missing or empty `Accept` is
//!   JSON.
//! - **A 304 is a read.** Conditional read turns the read handler's own `200` into a `304`
//!   (no body; `ETag` and `Last-Modified` kept): the read was decided, released and audited
//!   exactly like an unconditional one. A refusal or an absence passes through unchanged, so
//!   a 304 never answers for a resource the caller may not read or that does not exist.
//!   `If-None-Match` wins over `If-Modified-Since` (RFC 9110); the latter compares at the
//!   one-second precision of HTTP dates.
//! - **`Prefer: return=...` shapes only successes.** On create, update, transaction and batch:
//!   `minimal` sends no body (the headers `Location`, `ETag`, `Last-Modified` stay; in a
//!   Bundle, written entries lose their `resource`), `OperationOutcome` sends an
//!   OperationOutcome saying what was done (in a Bundle, as each written entry's
//!   `response.outcome`), `representation` (the default) the resource. Errors are answered
//!   as they are. `Preference-Applied` says which was applied.

use axum::body::Body;
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use phivault_fhir::{Issue, IssueCode, OperationOutcome};
use serde_json::Value;

use super::parse_pairs;
use crate::ApiError;
use crate::error::fhir_json;

/// `Preference-Applied` (RFC 7240).
static PREFERENCE_APPLIED: HeaderName = HeaderName::from_static("preference-applied");

/// The route templates whose successes `Prefer: return` shapes.
const WRITE_ROUTES: &[(Method, &str)] = &[
    (Method::POST, "/fhir/{type}"),
    (Method::PUT, "/fhir/{type}/{id}"),
    (Method::POST, "/fhir"),
    (Method::POST, "/fhir/"),
];

/// The route of a read, the one that answers conditional reads.
const READ_ROUTE: &str = "/fhir/{type}/{id}";

/// The FHIR routes' HTTP details (see the module's rules), as a route layer: it runs after
/// authentication and inside the audit trail, so every answer it gives is audited like the
/// handler's.
pub(crate) async fn http_details(req: Request, next: Next) -> Response {
    if let Err(e) = negotiate(req.headers(), req.uri().query()) {
        return e.into_response();
    }
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let method = req.method().clone();
    let is_read = matches!(method, Method::GET | Method::HEAD) && route == READ_ROUTE;
    let conditions = is_read.then(|| ReadConditions::of(req.headers()));
    let is_write = WRITE_ROUTES
        .iter()
        .any(|(m, r)| *m == method && *r == route);
    let preference = if is_write {
        prefer_return(req.headers())
    } else {
        None
    };

    let response = next.run(req).await;

    if let Some(conditions) = conditions
        && response.status() == StatusCode::OK
        && conditions.not_modified(response.headers())
    {
        return not_modified(response);
    }
    match preference {
        Some(preference) if response.status().is_success() => {
            let kind = match (method, route.as_str()) {
                (Method::POST, "/fhir/{type}") => Written::Create,
                (Method::PUT, _) => Written::Update,
                _ => Written::Bundle,
            };
            apply_preference(response, preference, kind).await
        }
        _ => response,
    }
}

// ---------------------------------------------------------------------------------------
// Media types of request bodies

/// The media type of the body, lower-case, without parameters; `Err` when a charset other
/// than UTF-8 is named.
fn media_type(headers: &HeaderMap) -> Option<Result<String, ()>> {
    let value = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let mut parts = value.split(';');
    let essence = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
    for param in parts {
        if let Some((name, val)) = param.split_once('=')
            && name.trim().eq_ignore_ascii_case("charset")
        {
            let val = val.trim().trim_matches('"');
            if !val.eq_ignore_ascii_case("utf-8") && !val.eq_ignore_ascii_case("utf8") {
                return Some(Err(()));
            }
        }
    }
    Some(Ok(essence))
}

const JSON_TYPES: &str = "application/fhir+json or application/json (UTF-8)";
const FORM_TYPE: &str = "application/x-www-form-urlencoded";

pub(crate) fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    match media_type(headers) {
        Some(Ok(t)) if t == "application/fhir+json" || t == "application/json" => Ok(()),
        _ => Err(ApiError::UnsupportedMediaType {
            expected: JSON_TYPES,
        }),
    }
}

pub(crate) fn require_form(headers: &HeaderMap) -> Result<(), ApiError> {
    match media_type(headers) {
        Some(Ok(t)) if t == FORM_TYPE => Ok(()),
        _ => Err(ApiError::UnsupportedMediaType {
            expected: FORM_TYPE,
        }),
    }
}

// ---------------------------------------------------------------------------------------
// Content negotiation

/// 406 unless the answer may be JSON: `_format` (any of them) names JSON, or, without
/// `_format`, `Accept` admits JSON. A query that does not decode is left to the handler.
fn negotiate(headers: &HeaderMap, query: Option<&str>) -> Result<(), ApiError> {
    let formats: Vec<String> = query
        .and_then(|q| parse_pairs(q).ok())
        .unwrap_or_default()
        .into_iter()
        .filter(|(name, _)| name == "_format")
        .map(|(_, value)| value)
        .collect();
    if !formats.is_empty() {
        return if formats.iter().all(|f| format_is_json(f)) {
            Ok(())
        } else {
            Err(ApiError::NotAcceptable)
        };
    }
    let accept: Vec<&str> = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let accept = accept.join(",");
    if accept.trim().is_empty() || accept_admits_json(&accept) {
        Ok(())
    } else {
        Err(ApiError::NotAcceptable)
    }
}

/// A `_format` value naming JSON: `json`, or a JSON media type (a `+` sent unencoded arrives
/// as a space).
fn format_is_json(value: &str) -> bool {
    let value = value.trim();
    value.eq_ignore_ascii_case("json") || media_range_admits_json(&value.replace(' ', "+"), false)
}

/// Whether an `Accept` value admits one of the JSON types.
fn accept_admits_json(accept: &str) -> bool {
    accept
        .split(',')
        .any(|range| media_range_admits_json(range, true))
}

/// Whether one media range (with its parameters) admits JSON; wildcards only when
/// `wildcards`.
fn media_range_admits_json(range: &str, wildcards: bool) -> bool {
    let mut parts = range.split(';');
    let essence = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
    for param in parts {
        let Some((name, value)) = param.split_once('=') else {
            continue;
        };
        let value = value.trim().trim_matches('"');
        let refused = match name.trim().to_ascii_lowercase().as_str() {
            "q" => value.parse::<f32>().map_or(true, |q| q <= 0.0),
            "fhirversion" => value != "4.0" && !value.starts_with("4.0."),
            _ => false,
        };
        if refused {
            return false;
        }
    }
    match essence.as_str() {
        "application/json" | "application/fhir+json" | "application/json+fhir" => true,
        "*/*" | "application/*" => wildcards,
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------
// Conditional read

/// The conditions of a conditional read.
#[derive(Debug, Default, PartialEq)]
struct ReadConditions {
    /// `If-None-Match`: the versions listed (weak or strong), or `*`.
    none_match: Option<NoneMatch>,
    /// `If-Modified-Since`, as Unix seconds.
    modified_since: Option<i64>,
}

#[derive(Debug, PartialEq)]
enum NoneMatch {
    Any,
    Tags(Vec<String>),
}

impl ReadConditions {
    /// The conditions sent; a malformed `If-Modified-Since` is ignored (RFC 9110), as is an
    /// `If-None-Match` member that is no entity tag.
    fn of(headers: &HeaderMap) -> Self {
        let values: Vec<&str> = headers
            .get_all(header::IF_NONE_MATCH)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        let none_match = if values.is_empty() {
            None
        } else if values.iter().any(|v| v.trim() == "*") {
            Some(NoneMatch::Any)
        } else {
            Some(NoneMatch::Tags(
                values
                    .iter()
                    .flat_map(|v| v.split(','))
                    .filter_map(opaque_tag)
                    .collect(),
            ))
        };
        let modified_since = headers
            .get(header::IF_MODIFIED_SINCE)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_http_date);
        ReadConditions {
            none_match,
            modified_since,
        }
    }

    /// Whether the answer (the handler's 200 with its `ETag` and `Last-Modified`) is not
    /// modified for these conditions.
    fn not_modified(&self, response: &HeaderMap) -> bool {
        let header = |name| {
            response
                .get(name)
                .and_then(|v: &HeaderValue| v.to_str().ok())
        };
        if let Some(none_match) = &self.none_match {
            return match none_match {
                NoneMatch::Any => true,
                NoneMatch::Tags(tags) => header(header::ETAG)
                    .and_then(opaque_tag)
                    .is_some_and(|current| tags.contains(&current)),
            };
        }
        match (
            self.modified_since,
            header(header::LAST_MODIFIED).and_then(parse_http_date),
        ) {
            (Some(since), Some(modified)) => modified <= since,
            _ => false,
        }
    }
}

/// The opaque part of an entity tag (`W/"3"` and `"3"` both give `3`: weak comparison).
fn opaque_tag(tag: &str) -> Option<String> {
    let tag = tag.trim();
    let quoted = tag.strip_prefix("W/").unwrap_or(tag);
    quoted
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .filter(|s| !s.contains('"'))
        .map(str::to_owned)
}

/// An HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`, the only form this server sends) as Unix
/// seconds.
fn parse_http_date(value: &str) -> Option<i64> {
    let format = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    time::PrimitiveDateTime::parse(value.trim(), &format)
        .ok()
        .map(|t| t.assume_utc().unix_timestamp())
}

/// The 304 of a conditional read: the handler's headers without a body.
fn not_modified(response: Response) -> Response {
    let (mut parts, _) = response.into_parts();
    parts.status = StatusCode::NOT_MODIFIED;
    parts.headers.remove(header::CONTENT_TYPE);
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::empty())
}

// ---------------------------------------------------------------------------------------
// Prefer

/// `Prefer: return=...`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Return {
    Minimal,
    Representation,
    OperationOutcome,
}

impl Return {
    fn as_str(self) -> &'static str {
        match self {
            Return::Minimal => "return=minimal",
            Return::Representation => "return=representation",
            Return::OperationOutcome => "return=OperationOutcome",
        }
    }
}

/// The preferences of every `Prefer` header: `(name, value)`, names lower-case. Preferences
/// are separated by `,` and parameters by `;` (RFC 7240); both are read as preferences.
fn preferences(headers: &HeaderMap) -> impl Iterator<Item = (String, String)> + '_ {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([',', ';']))
        .filter_map(|p| {
            let (k, v) = p.split_once('=')?;
            Some((
                k.trim().to_ascii_lowercase(),
                v.trim().trim_matches('"').to_owned(),
            ))
        })
}

/// `Prefer: handling=lenient`.
pub(crate) fn lenient(headers: &HeaderMap) -> bool {
    preferences(headers).any(|(k, v)| k == "handling" && v.eq_ignore_ascii_case("lenient"))
}

/// `Prefer: return=...`, if one this server knows is asked for (others are ignored, as RFC
/// 7240 says).
fn prefer_return(headers: &HeaderMap) -> Option<Return> {
    preferences(headers)
        .filter(|(k, _)| k == "return")
        .find_map(|(_, v)| match v.to_ascii_lowercase().as_str() {
            "minimal" => Some(Return::Minimal),
            "representation" => Some(Return::Representation),
            "operationoutcome" => Some(Return::OperationOutcome),
            _ => None,
        })
}

/// What answered a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Written {
    /// `POST [type]`: 201, or 200 when an existing resource is answered instead.
    Create,
    /// `PUT [type]/[id]`.
    Update,
    /// A transaction or batch.
    Bundle,
}

/// The answer of a successful write shaped as `preference` asks.
async fn apply_preference(response: Response, preference: Return, kind: Written) -> Response {
    let single = kind != Written::Bundle;
    let (mut parts, body) = response.into_parts();
    if let Ok(value) = HeaderValue::from_str(preference.as_str()) {
        parts.headers.insert(PREFERENCE_APPLIED.clone(), value);
    }
    if preference == Return::Representation {
        return Response::from_parts(parts, body);
    }
    if single && preference == Return::Minimal {
        parts.headers.remove(header::CONTENT_TYPE);
        parts.headers.remove(header::CONTENT_LENGTH);
        return Response::from_parts(parts, Body::empty());
    }
    // The body is this server's own answer, already in memory.
    let value = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(bytes) => serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null),
        Err(_) => Value::Null,
    };
    let shaped = if single {
        outcome_of_write(kind, parts.status, &value).to_json()
    } else {
        shape_bundle(value, preference)
    };
    let fresh = fhir_json(parts.status, &shaped);
    let (fresh_parts, fresh_body) = fresh.into_parts();
    for name in [header::CONTENT_TYPE, header::CONTENT_LENGTH] {
        parts.headers.remove(&name);
        if let Some(v) = fresh_parts.headers.get(&name) {
            parts.headers.insert(name, v.clone());
        }
    }
    Response::from_parts(parts, fresh_body)
}

/// What a write did, as an informational OperationOutcome: type, id and version only (never
/// a value of the body).
fn outcome_of_write(kind: Written, status: StatusCode, resource: &Value) -> OperationOutcome {
    let rtype = resource["resourceType"].as_str().unwrap_or("resource");
    let id = resource["id"].as_str().unwrap_or("?");
    let version = resource["meta"]["versionId"].as_str().unwrap_or("?");
    let message = match (kind, status) {
        (_, StatusCode::CREATED) => format!("created {rtype}/{id} (version {version})"),
        (Written::Create, _) => {
            format!("nothing was written: {rtype}/{id} (version {version}) answers the create")
        }
        (Written::Update, _) => format!("updated {rtype}/{id} (now version {version})"),
        (Written::Bundle, _) => format!("{rtype}/{id} is at version {version}"),
    };
    let mut outcome = OperationOutcome::default();
    outcome.push(
        "information",
        Issue {
            code: IssueCode::Informational,
            path: String::new(),
            message,
        },
    );
    outcome
}

/// A transaction or batch answer with its written entries (those with a
/// `response.location`) shaped as `preference` asks; reads and searches keep their resource.
fn shape_bundle(mut bundle: Value, preference: Return) -> Value {
    let Some(entries) = bundle.get_mut("entry").and_then(Value::as_array_mut) else {
        return bundle;
    };
    for entry in entries {
        let written = entry
            .get("response")
            .and_then(|r| r.get("location"))
            .is_some();
        if !written {
            continue;
        }
        let status = entry["response"]["status"]
            .as_str()
            .and_then(|s| s.split(' ').next())
            .and_then(|s| s.parse::<u16>().ok())
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or(StatusCode::OK);
        let Some(object) = entry.as_object_mut() else {
            continue;
        };
        let resource = object.remove("resource").unwrap_or(Value::Null);
        if preference == Return::OperationOutcome
            && let Some(response) = object.get_mut("response").and_then(Value::as_object_mut)
        {
            response.insert(
                "outcome".to_owned(),
                outcome_of_write(Written::Bundle, status, &resource).to_json(),
            );
        }
    }
    bundle
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn headers(pairs: &[(HeaderName, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(name.clone(), HeaderValue::from_static(value));
        }
        h
    }

    #[test]
    fn content_types() {
        let mut h = HeaderMap::new();
        assert!(require_json(&h).is_err());
        for ok in [
            "application/fhir+json",
            "application/json",
            "application/fhir+json; charset=utf-8",
            "Application/JSON;charset=UTF-8",
            "application/fhir+json; fhirVersion=4.0",
        ] {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ok));
            assert!(require_json(&h).is_ok(), "{ok}");
        }
        for bad in [
            "text/plain",
            "application/xml",
            "application/fhir+xml",
            "application/json; charset=latin1",
        ] {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(bad));
            assert!(require_json(&h).is_err(), "{bad}");
        }
    }

    #[test]
    fn accept_headers() {
        for ok in [
            "*/*",
            "application/json",
            "application/fhir+json",
            "application/fhir+json; fhirVersion=4.0",
            "application/json+fhir",
            "application/*",
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
            "application/fhir+xml;q=1.0, application/fhir+json;q=0.9",
            "APPLICATION/FHIR+JSON",
            "",
            "  ",
        ] {
            let h = headers(&[(header::ACCEPT, ok)]);
            assert!(negotiate(&h, None).is_ok(), "{ok}");
        }
        assert!(negotiate(&HeaderMap::new(), None).is_ok());
        for bad in [
            "application/fhir+xml",
            "application/xml",
            "text/xml",
            "text/html",
            "text/*",
            "application/fhir+json;q=0, application/fhir+xml",
            "application/json;q=0",
            "application/fhir+json; fhirVersion=3.0",
            "application/fhir+json; q=abc",
        ] {
            let h = headers(&[(header::ACCEPT, bad)]);
            assert!(
                matches!(negotiate(&h, None), Err(ApiError::NotAcceptable)),
                "{bad}"
            );
        }
        // Several Accept headers are one list.
        let h = headers(&[
            (header::ACCEPT, "application/fhir+xml"),
            (header::ACCEPT, "application/fhir+json"),
        ]);
        assert!(negotiate(&h, None).is_ok());
    }

    #[test]
    fn format_parameter() {
        let none = HeaderMap::new();
        let xml = headers(&[(header::ACCEPT, "application/fhir+xml")]);
        for ok in [
            "_format=json",
            "_format=JSON",
            "_format=application/json",
            "_format=application/fhir%2Bjson",
            "_format=application/fhir+json",
            "_format=application/fhir%2Bjson;fhirVersion=4.0",
            "family=x&_format=json",
        ] {
            assert!(negotiate(&none, Some(ok)).is_ok(), "{ok}");
            // `_format` wins over Accept.
            assert!(negotiate(&xml, Some(ok)).is_ok(), "{ok}");
        }
        for bad in [
            "_format=xml",
            "_format=application/fhir%2Bxml",
            "_format=text/xml",
            "_format=ttl",
            "_format=html",
            "_format=",
            "_format=*/*",
            "_format=json&_format=xml",
        ] {
            assert!(
                matches!(negotiate(&none, Some(bad)), Err(ApiError::NotAcceptable)),
                "{bad}"
            );
        }
        // Without `_format`, Accept decides; a query that does not decode is the handler's.
        assert!(negotiate(&xml, Some("family=x")).is_err());
        assert!(negotiate(&none, Some("a=%zz")).is_ok());
    }

    #[test]
    fn read_conditions() {
        let etag = |v: &'static str| headers(&[(header::ETAG, v)]);
        let modified = |v: &'static str| headers(&[(header::LAST_MODIFIED, v)]);
        let c = ReadConditions::of(&headers(&[(header::IF_NONE_MATCH, "W/\"3\"")]));
        assert!(c.not_modified(&etag("W/\"3\"")));
        assert!(!c.not_modified(&etag("W/\"4\"")));
        assert!(!c.not_modified(&HeaderMap::new()));
        let c = ReadConditions::of(&headers(&[(header::IF_NONE_MATCH, "\"1\", W/\"3\"")]));
        assert!(c.not_modified(&etag("W/\"3\"")));
        assert!(c.not_modified(&etag("W/\"1\"")));
        assert!(!c.not_modified(&etag("W/\"2\"")));
        let c = ReadConditions::of(&headers(&[(header::IF_NONE_MATCH, "*")]));
        assert!(c.not_modified(&etag("W/\"9\"")));
        let c = ReadConditions::of(&headers(&[(header::IF_NONE_MATCH, "3")]));
        assert!(!c.not_modified(&etag("W/\"3\"")));

        let last = "Tue, 05 Mar 2024 07:08:09 GMT";
        for (since, expected) in [
            ("Tue, 05 Mar 2024 07:08:09 GMT", true),
            ("Wed, 06 Mar 2024 00:00:00 GMT", true),
            ("Tue, 05 Mar 2024 07:08:08 GMT", false),
            ("yesterday", false),
        ] {
            let c = ReadConditions::of(&headers(&[(header::IF_MODIFIED_SINCE, since)]));
            assert_eq!(c.not_modified(&modified(last)), expected, "{since}");
        }
        // If-None-Match wins over If-Modified-Since.
        let c = ReadConditions::of(&headers(&[
            (header::IF_NONE_MATCH, "W/\"2\""),
            (header::IF_MODIFIED_SINCE, "Wed, 06 Mar 2024 00:00:00 GMT"),
        ]));
        let mut both = etag("W/\"3\"");
        both.insert(header::LAST_MODIFIED, HeaderValue::from_static(last));
        assert!(!c.not_modified(&both));
        assert_eq!(
            ReadConditions::of(&HeaderMap::new()),
            ReadConditions::default()
        );
    }

    #[test]
    fn prefer_headers() {
        let prefer = HeaderName::from_static("prefer");
        let mut h = HeaderMap::new();
        assert!(!lenient(&h));
        assert_eq!(prefer_return(&h), None);
        h.insert(
            &prefer,
            HeaderValue::from_static("return=minimal, handling=lenient"),
        );
        assert!(lenient(&h));
        assert_eq!(prefer_return(&h), Some(Return::Minimal));
        h.insert(&prefer, HeaderValue::from_static("handling=strict"));
        assert!(!lenient(&h));
        h.insert(&prefer, HeaderValue::from_static("return=OperationOutcome"));
        assert_eq!(prefer_return(&h), Some(Return::OperationOutcome));
        h.insert(
            &prefer,
            HeaderValue::from_static("return=\"representation\""),
        );
        assert_eq!(prefer_return(&h), Some(Return::Representation));
        h.insert(&prefer, HeaderValue::from_static("return=everything"));
        assert_eq!(prefer_return(&h), None);
    }

    #[test]
    fn outcomes_say_what_was_written() {
        let r = json!({"resourceType": "Observation", "id": "o1", "meta": {"versionId": "2"},
                       "note": [{"text": "private"}]});
        let message = |kind, status| {
            outcome_of_write(kind, status, &r).to_json()["issue"][0]["diagnostics"]
                .as_str()
                .unwrap()
                .to_owned()
        };
        assert_eq!(
            message(Written::Create, StatusCode::CREATED),
            "created Observation/o1 (version 2)"
        );
        assert_eq!(
            message(Written::Create, StatusCode::OK),
            "nothing was written: Observation/o1 (version 2) answers the create"
        );
        assert_eq!(
            message(Written::Update, StatusCode::OK),
            "updated Observation/o1 (now version 2)"
        );
        assert_eq!(
            message(Written::Bundle, StatusCode::OK),
            "Observation/o1 is at version 2"
        );
        let outcome = outcome_of_write(Written::Update, StatusCode::OK, &r).to_json();
        assert!(!outcome.to_string().contains("private"));
    }

    #[test]
    fn bundles_are_shaped_per_written_entry() {
        let bundle = json!({
            "resourceType": "Bundle",
            "type": "batch-response",
            "entry": [
                {"resource": {"resourceType": "Patient", "id": "a",
                              "meta": {"versionId": "1"}},
                 "response": {"status": "201 Created", "location": "Patient/a/_history/1"}},
                {"resource": {"resourceType": "Patient", "id": "b"},
                 "response": {"status": "200 OK", "etag": "W/\"1\""}},
                {"response": {"status": "403 Forbidden", "outcome": {}}},
            ],
        });
        let minimal = shape_bundle(bundle.clone(), Return::Minimal);
        assert!(minimal["entry"][0].get("resource").is_none());
        assert!(minimal["entry"][0]["response"].get("outcome").is_none());
        assert_eq!(minimal["entry"][1]["resource"]["id"], "b");
        assert_eq!(minimal["entry"][2], bundle["entry"][2]);
        let outcome = shape_bundle(bundle, Return::OperationOutcome);
        assert!(outcome["entry"][0].get("resource").is_none());
        assert_eq!(
            outcome["entry"][0]["response"]["outcome"]["issue"][0]["diagnostics"],
            "created Patient/a (version 1)"
        );
        assert_eq!(outcome["entry"][1]["resource"]["id"], "b");
    }
}
