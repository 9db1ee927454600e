//! Transaction and batch Bundles.

use std::collections::HashMap;

use serde_json::Value;

use crate::{FhirError, Id, ResourceType, ValidResource, Validator};

/// Transaction (atomic) or batch (independent entries).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BundleKind {
    /// All or nothing.
    Transaction,
    /// Each entry on its own.
    Batch,
}

/// HTTP method of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryMethod {
    /// GET (read or search).
    Get,
    /// POST (create).
    Post,
    /// PUT (update or create with id).
    Put,
    /// DELETE.
    Delete,
}

/// The parsed `request.url` of an entry (relative: `Type`, `Type/id`, `Type/id/_history/v`,
/// `Type?query`).
#[derive(Clone, PartialEq, Eq)]
pub struct EntryUrl {
    /// Resource type.
    pub rtype: ResourceType,
    /// Id, when present.
    pub id: Option<Id>,
    /// Version, when `_history/v` is present.
    pub version: Option<u64>,
    /// Decoded query pairs, when `?` is present (search).
    pub query: Vec<(String, String)>,
}

/// One entry of a transaction or batch request.
#[derive(Debug, Clone)]
pub struct BundleEntry {
    /// `fullUrl` (e.g. `urn:uuid:...`), if any.
    pub full_url: Option<String>,
    /// Method.
    pub method: EntryMethod,
    /// Parsed URL.
    pub url: EntryUrl,
    /// `request.ifMatch` version (from `W/"3"`), if any.
    pub if_match: Option<u64>,
    /// `request.ifNoneExist` of a POST (conditional create), decoded query pairs. Resolved
    /// (and cleared) before the store writes: see [`crate::conditional`].
    pub if_none_exist: Option<Vec<(String, String)>>,
    /// The resource (POST/PUT), validated, with its type equal to `url.rtype`.
    pub resource: Option<ValidResource>,
}

/// A transaction or batch request.
#[derive(Debug, Clone)]
pub struct BundleRequest {
    /// Kind.
    pub kind: BundleKind,
    /// Entries in document order.
    pub entries: Vec<BundleEntry>,
}

impl BundleRequest {
    /// Parses a Bundle body of type `transaction` or `batch`, validating each entry's
    /// resource. More than `max_entries` entries is [`FhirError::TooManyEntries`]. For a
    /// transaction, any bad entry fails the whole bundle ([`FhirError::BadBundleEntry`]
    /// naming its index). For a batch, entries that fail to parse are also an error here
    /// (simplest correct behaviour: a client mistake in the request document).
    pub fn parse(
        validator: &Validator,
        body: Value,
        max_entries: usize,
    ) -> Result<BundleRequest, FhirError> {
        let Value::Object(mut bundle) = body else {
            return Err(FhirError::BadBundle(
                "the body must be a JSON object".to_owned(),
            ));
        };
        if bundle.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
            return Err(FhirError::BadBundle(
                "resourceType must be Bundle".to_owned(),
            ));
        }
        let kind = match bundle.get("type").and_then(Value::as_str) {
            Some("transaction") => BundleKind::Transaction,
            Some("batch") => BundleKind::Batch,
            _ => {
                return Err(FhirError::BadBundle(
                    "Bundle.type must be transaction or batch".to_owned(),
                ));
            }
        };
        let entries = match bundle.remove("entry") {
            None => Vec::new(),
            Some(Value::Array(entries)) => entries,
            Some(_) => {
                return Err(FhirError::BadBundle(
                    "Bundle.entry must be an array".to_owned(),
                ));
            }
        };
        if entries.len() > max_entries {
            return Err(FhirError::TooManyEntries {
                count: entries.len(),
                limit: max_entries,
            });
        }
        let entries = entries
            .into_iter()
            .enumerate()
            .map(|(index, entry)| {
                parse_entry(validator, entry)
                    .map_err(|message| FhirError::BadBundleEntry { index, message })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(BundleRequest { kind, entries })
    }
}

/// One entry; the error is the message of a [`FhirError::BadBundleEntry`].
fn parse_entry(validator: &Validator, entry: Value) -> Result<BundleEntry, String> {
    let Value::Object(mut entry) = entry else {
        return Err("an entry must be a JSON object".to_owned());
    };
    let full_url = match entry.get("fullUrl") {
        None => None,
        Some(Value::String(url)) => Some(url.clone()),
        Some(_) => return Err("fullUrl must be a string".to_owned()),
    };
    let request = entry
        .get("request")
        .and_then(Value::as_object)
        .ok_or("request is required (with method and url)")?;
    let method = match request.get("method").and_then(Value::as_str) {
        Some("GET") => EntryMethod::Get,
        Some("POST") => EntryMethod::Post,
        Some("PUT") => EntryMethod::Put,
        Some("DELETE") => EntryMethod::Delete,
        Some("PATCH" | "HEAD") => {
            return Err(
                "request.method must be GET, POST, PUT or DELETE (PATCH and HEAD \
                        are not supported)"
                    .to_owned(),
            );
        }
        Some(_) => return Err("request.method must be GET, POST, PUT or DELETE".to_owned()),
        None => return Err("request.method is required".to_owned()),
    };
    let url = request
        .get("url")
        .and_then(Value::as_str)
        .ok_or("request.url is required")?;
    let url = parse_entry_url(url)?;
    let if_match = request
        .get("ifMatch")
        .map(|v| {
            v.as_str()
                .and_then(parse_etag)
                .ok_or("request.ifMatch must be a version ETag like W/\"3\"")
        })
        .transpose()?;

    let if_none_exist = match request.get("ifNoneExist") {
        None => None,
        Some(Value::String(q)) => {
            // Written as the query alone (`identifier=...`), sometimes with `Type?` before it.
            let q = match q.split_once('?') {
                Some((path, rest)) if !path.contains('=') => rest,
                _ => q.as_str(),
            };
            let pairs = parse_query(q)
                .map_err(|_| "request.ifNoneExist has malformed percent-encoding".to_owned())?;
            if pairs.is_empty() {
                return Err(
                    "request.ifNoneExist must hold a search (e.g. identifier=s|v)".to_owned(),
                );
            }
            Some(pairs)
        }
        Some(_) => return Err("request.ifNoneExist must be a string".to_owned()),
    };
    if if_none_exist.is_some() && method != EntryMethod::Post {
        return Err("request.ifNoneExist is only for a POST (conditional create)".to_owned());
    }

    let plain = url.version.is_none() && url.query.is_empty();
    match method {
        EntryMethod::Get => {}
        EntryMethod::Post if url.id.is_none() && plain => {}
        EntryMethod::Post => {
            return Err("a POST (create) needs request.url of the form Type".to_owned());
        }
        EntryMethod::Put | EntryMethod::Delete if url.id.is_some() && plain => {}
        EntryMethod::Put => {
            return Err("a PUT (update) needs request.url of the form Type/id".to_owned());
        }
        EntryMethod::Delete => {
            return Err("a DELETE needs request.url of the form Type/id".to_owned());
        }
    }

    let resource = match method {
        EntryMethod::Post | EntryMethod::Put => {
            let mut resource = entry
                .remove("resource")
                .ok_or("resource is required for POST and PUT")?;
            if let (EntryMethod::Put, Some(id), Value::Object(body)) =
                (method, &url.id, &mut resource)
            {
                match body.get("id") {
                    None => {
                        body.insert("id".to_owned(), Value::String(id.as_str().to_owned()));
                    }
                    Some(Value::String(body_id)) if body_id == id.as_str() => {}
                    Some(_) => {
                        return Err("resource.id differs from the id in request.url".to_owned());
                    }
                }
            }
            Some(
                validator
                    .validate(resource, Some(url.rtype))
                    .map_err(|e| resource_error(&e))?,
            )
        }
        EntryMethod::Get | EntryMethod::Delete => None,
    };
    Ok(BundleEntry {
        full_url,
        method,
        url,
        if_match,
        if_none_exist,
        resource,
    })
}

/// The message for an entry whose resource failed validation (paths and kinds, no values).
fn resource_error(error: &FhirError) -> String {
    match error {
        FhirError::Invalid(issues) => {
            let mut message = String::from("resource does not conform to FHIR R4");
            if let Some(first) = issues.first() {
                message.push_str(&format!(": {}: {}", first.path, first.message));
            }
            if issues.len() > 1 {
                message.push_str(&format!(" (and {} more issues)", issues.len() - 1));
            }
            message
        }
        FhirError::WrongType { expected, found } => {
            format!("resource.resourceType '{found}' does not match request.url type '{expected}'")
        }
        other => format!("resource: {other}"),
    }
}

/// `W/"3"` (or `"3"`, `3`) -> 3.
fn parse_etag(etag: &str) -> Option<u64> {
    let etag = etag.trim();
    let etag = etag.strip_prefix("W/").unwrap_or(etag);
    let etag = etag
        .strip_prefix('"')
        .and_then(|e| e.strip_suffix('"'))
        .unwrap_or(etag);
    if etag.is_empty() || !etag.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    etag.parse().ok()
}

/// Parses a relative entry URL: `Type`, `Type/id`, `Type/id/_history/v`, `Type?query`; a
/// read or vread may carry `_summary`, `_elements` and `_format` (other methods none).
fn parse_entry_url(url: &str) -> Result<EntryUrl, String> {
    const SHAPE: &str =
        "request.url must be relative: Type, Type/id, Type/id/_history/version or Type?query";
    let (path, query) = match url.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (url, None),
    };
    // A scheme (`https:`, `urn:`) makes it absolute: ids and type names never hold ':'.
    if path.contains(':') {
        return Err(SHAPE.to_owned());
    }
    let path = path.strip_prefix('/').unwrap_or(path);
    let segments: Vec<&str> = path.split('/').collect();
    let (type_name, id, version) = match segments.as_slice() {
        [t] => (*t, None, None),
        [t, id] => (*t, Some(*id), None),
        [t, id, "_history", v] => (*t, Some(*id), Some(*v)),
        _ => return Err(SHAPE.to_owned()),
    };
    let rtype = ResourceType::parse(type_name)
        .map_err(|_| "request.url names an unknown or unsupported resource type".to_owned())?;
    let id = id
        .map(|id| Id::parse(id).map_err(|_| "request.url holds an invalid id".to_owned()))
        .transpose()?;
    let version = version
        .map(|v| {
            v.parse::<u64>()
                .ok()
                .filter(|v| *v >= 1)
                .ok_or_else(|| "request.url holds an invalid version".to_owned())
        })
        .transpose()?;
    let query = match query {
        None => Vec::new(),
        Some(query) => {
            let pairs = parse_query(query)?;
            // A read or vread takes only the parameters of its representation.
            if id.is_some()
                && pairs
                    .iter()
                    .any(|(k, _)| !matches!(k.as_str(), "_summary" | "_elements" | "_format"))
            {
                return Err(SHAPE.to_owned());
            }
            pairs
        }
    };
    Ok(EntryUrl {
        rtype,
        id,
        version,
        query,
    })
}

/// `a=b&c=d` -> decoded pairs (`+` is a space, `%XX` a byte; the result must be UTF-8).
pub(crate) fn parse_query(query: &str) -> Result<Vec<(String, String)>, String> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((percent_decode(name)?, percent_decode(value)?))
        })
        .collect()
}

/// Decodes `application/x-www-form-urlencoded` text.
fn percent_decode(s: &str) -> Result<String, String> {
    const BAD: &str = "request.url has malformed percent-encoding";
    let hex = |b: u8| -> Result<u8, String> {
        match b {
            b'0'..=b'9' => Ok(b - b'0'),
            b'a'..=b'f' => Ok(b - b'a' + 10),
            b'A'..=b'F' => Ok(b - b'A' + 10),
            _ => Err(BAD.to_owned()),
        }
    };
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let (Some(&hi), Some(&lo)) = (bytes.get(i + 1), bytes.get(i + 2)) else {
                    return Err(BAD.to_owned());
                };
                out.push(hex(hi)? << 4 | hex(lo)?);
                i += 2;
            }
            _ => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| "request.url decodes to invalid UTF-8".to_owned())
}

/// Replaces every `reference` string inside `body` that is a key of `map` (e.g.
/// `urn:uuid:...`) by the mapped value (e.g. `Patient/123`). Returns how many were replaced.
pub fn rewrite_references(body: &mut Value, map: &HashMap<String, String>) -> usize {
    let mut replaced = 0;
    // An explicit stack: no recursion depth to exhaust, however deep the body.
    let mut stack = vec![body];
    while let Some(value) = stack.pop() {
        match value {
            Value::Object(object) => {
                for (key, child) in object.iter_mut() {
                    if key == "reference"
                        && let Value::String(reference) = child
                    {
                        if let Some(target) = map.get(reference.as_str()) {
                            target.clone_into(reference);
                            replaced += 1;
                        }
                    } else {
                        stack.push(child);
                    }
                }
            }
            Value::Array(items) => stack.extend(items.iter_mut()),
            _ => {}
        }
    }
    replaced
}

// Query values can be PHI: Debug shows the parameter names only.
impl std::fmt::Debug for EntryUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.query.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("EntryUrl")
            .field("rtype", &self.rtype)
            .field("id", &self.id)
            .field("version", &self.version)
            .field("query_params", &names)
            .finish()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::validate::tests::{observation, synthea_patient, validator};

    const PATIENT_URN: &str = "urn:uuid:0c3151bd-1cbf-4d64-b04d-cd9187a4c6e0";

    fn transaction() -> Value {
        let mut patient = synthea_patient();
        patient.as_object_mut().unwrap().remove("id");
        let mut obs = observation();
        obs.as_object_mut().unwrap().remove("id");
        obs["subject"]["reference"] = json!(PATIENT_URN);
        json!({
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "fullUrl": PATIENT_URN,
                    "resource": patient,
                    "request": {"method": "POST", "url": "Patient"}
                },
                {
                    "fullUrl": "urn:uuid:5f0e8a57-9d0a-4f5e-8d40-2f4c2b1f5d6a",
                    "resource": obs,
                    "request": {"method": "POST", "url": "Observation"}
                },
                {
                    "resource": {"resourceType": "Organization", "name": "Clinic"},
                    "request": {"method": "PUT", "url": "Organization/org-1", "ifMatch": "W/\"3\""}
                },
                {"request": {"method": "DELETE", "url": "Condition/c-9"}},
                {"request": {"method": "GET", "url": "Patient/p1/_history/4"}},
                {"request": {"method": "GET", "url": "Observation?code=http%3A%2F%2Floinc.org%7C8302-2&subject=Patient%2Fp1&name=a+b"}}
            ]
        })
    }

    #[test]
    fn parses_a_transaction() {
        let bundle = BundleRequest::parse(validator(), transaction(), 100).unwrap();
        assert_eq!(bundle.kind, BundleKind::Transaction);
        let e = &bundle.entries;
        assert_eq!(e.len(), 6);

        assert_eq!(e[0].method, EntryMethod::Post);
        assert_eq!(e[0].full_url.as_deref(), Some(PATIENT_URN));
        assert_eq!(e[0].url.rtype, ResourceType::PATIENT);
        let patient = e[0].resource.as_ref().unwrap();
        assert_eq!(patient.id(), None);

        let obs = e[1].resource.as_ref().unwrap();
        assert_eq!(obs.body()["subject"]["reference"], PATIENT_URN);

        assert_eq!(e[2].method, EntryMethod::Put);
        assert_eq!(e[2].url.id.as_ref().map(Id::as_str), Some("org-1"));
        assert_eq!(e[2].if_match, Some(3));
        // The id from the URL is set on a body without one.
        assert_eq!(
            e[2].resource
                .as_ref()
                .unwrap()
                .id()
                .as_ref()
                .map(Id::as_str),
            Some("org-1")
        );

        assert_eq!(e[3].method, EntryMethod::Delete);
        assert!(e[3].resource.is_none());
        assert_eq!(e[4].url.version, Some(4));
        assert_eq!(
            e[5].url.query,
            vec![
                ("code".to_owned(), "http://loinc.org|8302-2".to_owned()),
                ("subject".to_owned(), "Patient/p1".to_owned()),
                ("name".to_owned(), "a b".to_owned()),
            ]
        );
    }

    #[test]
    fn rewrites_references() {
        let bundle = BundleRequest::parse(validator(), transaction(), 100).unwrap();
        let map: HashMap<String, String> =
            [(PATIENT_URN.to_owned(), "Patient/new-1".to_owned())].into();
        let mut obs = bundle.entries[1].resource.clone().unwrap().into_body();
        obs["hasMember"] = json!([{"reference": PATIENT_URN}, {"reference": "Observation/x"}]);
        obs["note"] = json!([{"text": PATIENT_URN}]);
        assert_eq!(rewrite_references(&mut obs, &map), 2);
        assert_eq!(obs["subject"]["reference"], "Patient/new-1");
        assert_eq!(obs["hasMember"][0]["reference"], "Patient/new-1");
        assert_eq!(obs["hasMember"][1]["reference"], "Observation/x");
        // Only `reference` keys are rewritten.
        assert_eq!(obs["note"][0]["text"], PATIENT_URN);
        assert_eq!(rewrite_references(&mut obs, &map), 0);

        // Deep nesting does not recurse.
        let mut deep = json!({"reference": PATIENT_URN});
        for _ in 0..10_000 {
            // Not `json!`: it would serialize `deep`, recursively.
            let mut level = serde_json::Map::new();
            level.insert("a".to_owned(), Value::Array(vec![deep]));
            deep = Value::Object(level);
        }
        assert_eq!(rewrite_references(&mut deep, &map), 1);
        // Drop iteratively too (serde_json's Drop of a deep value recurses).
        let mut stack = vec![deep];
        while let Some(mut v) = stack.pop() {
            if let Some(a) = v.get_mut("a").and_then(Value::as_array_mut) {
                stack.append(a);
            }
        }
    }

    #[test]
    fn bundle_errors() {
        let with_entries =
            |entries: Value| json!({"resourceType": "Bundle", "type": "batch", "entry": entries});
        let cases = [
            (json!([]), "", "must be a JSON object"),
            (
                json!({"resourceType": "Patient"}),
                "",
                "resourceType must be Bundle",
            ),
            (
                json!({"resourceType": "Bundle", "type": "collection"}),
                "",
                "Bundle.type must be transaction or batch",
            ),
            (
                json!({"resourceType": "Bundle"}),
                "",
                "Bundle.type must be transaction or batch",
            ),
            (
                json!({"resourceType": "Bundle", "type": "batch", "entry": {}}),
                "",
                "must be an array",
            ),
            (
                with_entries(json!([{}, {}, {}, {}])),
                "",
                "too many entries: 4 (limit 3)",
            ),
            (with_entries(json!([5])), "0", "must be a JSON object"),
            (
                with_entries(json!([{"request": {"url": "Patient"}}])),
                "0",
                "request.method is required",
            ),
            (
                with_entries(json!([{"request": {"method": "PATCH", "url": "Patient/1"}}])),
                "0",
                "PATCH",
            ),
            (
                with_entries(json!([{"request": {"method": "get", "url": "Patient"}}])),
                "0",
                "GET, POST, PUT or DELETE",
            ),
            (
                with_entries(json!([{"request": {"method": "GET"}}])),
                "0",
                "request.url is required",
            ),
            (
                with_entries(
                    json!([{"request": {"method": "GET", "url": "https://x.example/fhir/Patient/1"}}]),
                ),
                "0",
                "must be relative",
            ),
            (
                with_entries(
                    json!([{"request": {"method": "GET", "url": "urn:uuid:0c3151bd-1cbf-4d64-b04d-cd9187a4c6e0"}}]),
                ),
                "0",
                "must be relative",
            ),
            (
                with_entries(json!([{"request": {"method": "GET", "url": "Binary/1"}}])),
                "0",
                "unsupported resource type",
            ),
            (
                with_entries(json!([{"request": {"method": "GET", "url": "Patient/a b"}}])),
                "0",
                "invalid id",
            ),
            (
                with_entries(
                    json!([{"request": {"method": "GET", "url": "Patient/1/_history/x"}}]),
                ),
                "0",
                "invalid version",
            ),
            (
                with_entries(json!([{"request": {"method": "GET", "url": "Patient/1/extra"}}])),
                "0",
                "must be relative",
            ),
            (
                with_entries(json!([{"request": {"method": "GET", "url": "Patient?name=%zz"}}])),
                "0",
                "percent-encoding",
            ),
            (
                with_entries(json!([{"request": {"method": "GET", "url": "Patient?name=%ff"}}])),
                "0",
                "UTF-8",
            ),
            (
                with_entries(json!([{"request": {"method": "POST", "url": "Patient"}}])),
                "0",
                "resource is required",
            ),
            (
                with_entries(json!([{"request": {"method": "POST", "url": "Patient/1"},
                                  "resource": {"resourceType": "Patient"}}])),
                "0",
                "form Type",
            ),
            (
                with_entries(json!([{"request": {"method": "PUT", "url": "Patient"},
                                  "resource": {"resourceType": "Patient"}}])),
                "0",
                "form Type/id",
            ),
            (
                with_entries(json!([{"request": {"method": "PUT", "url": "Patient/1"},
                                  "resource": {"resourceType": "Patient", "id": "2"}}])),
                "0",
                "differs from the id",
            ),
            (
                with_entries(json!([{"request": {"method": "DELETE", "url": "Patient"}}])),
                "0",
                "form Type/id",
            ),
            (
                with_entries(
                    json!([{"request": {"method": "DELETE", "url": "Patient/1", "ifMatch": "ZQXMARKER"}}]),
                ),
                "0",
                "ifMatch",
            ),
            (
                with_entries(json!([{"request": {"method": "POST", "url": "Patient"},
                                  "resource": {"resourceType": "Observation", "code": {"text": "x"}}}])),
                "0",
                "does not match request.url",
            ),
            (
                with_entries(json!([{"request": {"method": "GET", "url": "Patient"}},
                                 {"request": {"method": "POST", "url": "Patient"},
                                  "resource": {"resourceType": "Patient", "gender": "ZQXMARKER", "foo": 1}}])),
                "1",
                "Patient.gender: must be one of",
            ),
        ];
        for (body, index, phrase) in cases {
            let err = BundleRequest::parse(validator(), body.clone(), 3).unwrap_err();
            let text = err.to_string();
            assert!(text.contains(phrase), "{body}: {text}");
            assert!(!text.contains("ZQXMARKER"), "{text}");
            match (&err, index) {
                (FhirError::BadBundle(_) | FhirError::TooManyEntries { .. }, "") => {}
                (FhirError::BadBundleEntry { index: i, .. }, _) => {
                    assert_eq!(i.to_string(), index, "{text}");
                }
                _ => panic!("{body}: {err:?}"),
            }
        }
    }

    #[test]
    fn empty_and_batch_bundles() {
        let bundle = BundleRequest::parse(
            validator(),
            json!({"resourceType": "Bundle", "type": "batch"}),
            10,
        )
        .unwrap();
        assert_eq!(bundle.kind, BundleKind::Batch);
        assert!(bundle.entries.is_empty());
    }

    #[test]
    fn reads_take_representation_parameters_only() {
        let url = parse_entry_url("Patient/p1/_history/2?_summary=true&_elements=name").unwrap();
        assert_eq!((url.id.is_some(), url.version), (true, Some(2)));
        assert_eq!(url.query.len(), 2);
        for bad in ["Patient/p1?family=x", "Patient/p1?_summary=true&_count=1"] {
            assert!(parse_entry_url(bad).is_err(), "{bad}");
        }
        let bundle = json!({"resourceType": "Bundle", "type": "batch", "entry": [
            {"request": {"method": "DELETE", "url": "Patient/p1?_summary=true"}},
        ]});
        assert!(BundleRequest::parse(validator(), bundle, 10).is_err());
    }

    #[test]
    fn etags() {
        for (etag, expected) in [
            ("W/\"3\"", Some(3)),
            ("\"12\"", Some(12)),
            ("7", Some(7)),
            ("W/\"\"", None),
            ("W/\"-1\"", None),
            ("W/\"x\"", None),
            ("99999999999999999999999", None),
        ] {
            assert_eq!(parse_etag(etag), expected, "{etag}");
        }
    }
}
