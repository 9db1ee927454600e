//! `_sort`: the order of a searchset (R4 search, "Sorting").
//!
//! A comma-separated list of keys, each a parameter name with an optional `-` for descending:
//! `_sort=-date,family`. Sortable: `_id`, `_lastUpdated`, and the type's date and string
//! parameters. Token, reference and uri parameters have no meaningful order for a client of
//! this server and are refused (400), as are unknown names.
//!
//! The blind index holds no order, so a sorted search is answered over the decrypted
//! resources (see the server's sorted search, which bounds how many at [`MAX_SORTED`]). The
//! order computed here, per key:
//!
//! * **date** (and `_lastUpdated`, from `meta.lastUpdated`): each value is the range of
//!   instants of its precision (a date-only value a UTC day, a Period from its start to its
//!   end); ascending compares the earliest instant of a resource's values, descending the
//!   latest.
//! * **string**: the normalized value (case- and accent-insensitive, as search matches it); a
//!   HumanName or Address as its parts joined, family name first. Ascending compares the
//!   smallest of a resource's values, descending the largest.
//! * **`_id`**: the id, byte order.
//!
//! A resource without a value for a key comes after every resource with one, whatever the
//! direction. Resources equal on every key are ordered by id, so paging is deterministic.

use std::cmp::Ordering;

use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::{MAX_NAME_CHARS, SearchParamDef, SearchParamKind, bad, last_updated, search_params};
use super::{normalize_string, split_unescaped, values_of};
use crate::{FhirError, ResourceType};

/// Most matches a sorted search orders in memory: above it the search is refused as too
/// costly (every match is decrypted to be sorted).
pub const MAX_SORTED: usize = 10_000;

/// Most keys in one `_sort`.
pub(super) const MAX_SORT_KEYS: usize = 8;

/// The parts of a HumanName or an Address a string sort value is made of, in this order.
const SORT_PARTS: &[&str] = &[
    "family",
    "given",
    "prefix",
    "suffix",
    "text",
    "line",
    "city",
    "district",
    "state",
    "postalCode",
    "country",
];

/// What one key sorts by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SortBy {
    Id,
    LastUpdated,
    Date(&'static SearchParamDef),
    String(&'static SearchParamDef),
}

/// One key of `_sort`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SortKey {
    name: &'static str,
    by: SortBy,
    descending: bool,
}

impl SortKey {
    /// The parameter sorted by.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Whether the order is descending (`-name`).
    pub fn descending(&self) -> bool {
        self.descending
    }

    /// The value of `body` this key compares, `None` when it has none.
    fn value(&self, body: &Value) -> Option<SortValue> {
        match self.by {
            SortBy::Id => body
                .get("id")
                .and_then(Value::as_str)
                .map(|s| SortValue::Text(s.to_owned())),
            SortBy::LastUpdated => {
                let range = body
                    .get("meta")
                    .and_then(|m| m.get("lastUpdated"))
                    .and_then(Value::as_str)
                    .and_then(instant_range)?;
                Some(SortValue::Instant(self.pick(std::iter::once(range))?))
            }
            SortBy::Date(def) => {
                let ranges = values_of(body, def).into_iter().filter_map(value_range);
                Some(SortValue::Instant(self.pick(ranges)?))
            }
            SortBy::String(def) => {
                let texts = values_of(body, def)
                    .into_iter()
                    .filter_map(string_value)
                    .filter(|s| !s.is_empty());
                if self.descending {
                    texts.max()
                } else {
                    texts.min()
                }
                .map(SortValue::Text)
            }
        }
    }

    /// The earliest start (ascending) or the latest end (descending) of `ranges`.
    fn pick(&self, ranges: impl Iterator<Item = (i128, i128)>) -> Option<i128> {
        if self.descending {
            ranges.map(|(_, end)| end).max()
        } else {
            ranges.map(|(start, _)| start).min()
        }
    }
}

/// A key's value: instants in nanoseconds since the epoch, or normalized text.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum SortValue {
    Instant(i128),
    Text(String),
}

/// Parses one `_sort` value for `rtype`.
pub(crate) fn parse(rtype: ResourceType, value: &str) -> Result<Vec<SortKey>, FhirError> {
    let parts = split_unescaped(value, ',');
    if parts.len() > MAX_SORT_KEYS {
        return Err(bad(
            "_sort",
            format!("too many sort keys (limit {MAX_SORT_KEYS})"),
        ));
    }
    let mut keys = Vec::with_capacity(parts.len());
    for part in parts {
        let part = part.trim();
        let (descending, name) = match part.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, part),
        };
        if name.is_empty() {
            return Err(bad("_sort", "empty sort key"));
        }
        let quoted: String = name.chars().take(MAX_NAME_CHARS).collect();
        let (name, by) = match name {
            "_id" => ("_id", SortBy::Id),
            "_lastUpdated" => ("_lastUpdated", SortBy::LastUpdated),
            _ => match search_params(rtype).iter().find(|d| d.name == name) {
                Some(def) => match def.kind {
                    SearchParamKind::Date => (def.name, SortBy::Date(def)),
                    SearchParamKind::String => (def.name, SortBy::String(def)),
                    kind => {
                        return Err(bad(
                            "_sort",
                            format!(
                                "cannot sort by '{quoted}': only _id, _lastUpdated and date \
                                 and string parameters sort, and it is a {} parameter",
                                kind.as_str()
                            ),
                        ));
                    }
                },
                None => {
                    return Err(bad(
                        "_sort",
                        format!("cannot sort by '{quoted}': not a search parameter of {rtype}"),
                    ));
                }
            },
        };
        keys.push(SortKey {
            name,
            by,
            descending,
        });
    }
    Ok(keys)
}

/// `_sort`'s value for links: the keys as parsed.
pub fn sort_param(keys: &[SortKey]) -> String {
    keys.iter()
        .map(|k| format!("{}{}", if k.descending { "-" } else { "" }, k.name))
        .collect::<Vec<_>>()
        .join(",")
}

/// Sorts `items` by `keys` (missing values last, then by id): `body` gives an item's
/// resource, whose `id` breaks ties.
pub fn sort_by_keys<T>(keys: &[SortKey], items: Vec<T>, body: impl Fn(&T) -> &Value) -> Vec<T> {
    let mut keyed: Vec<(Vec<Option<SortValue>>, String, T)> = items
        .into_iter()
        .map(|item| {
            let b = body(&item);
            let values = keys.iter().map(|k| k.value(b)).collect();
            let id = b
                .get("id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            (values, id, item)
        })
        .collect();
    keyed.sort_by(|(a, a_id, _), (b, b_id, _)| {
        keys.iter()
            .zip(a.iter().zip(b.iter()))
            .map(|(key, (a, b))| match (a, b) {
                (Some(a), Some(b)) if key.descending => b.cmp(a),
                (Some(a), Some(b)) => a.cmp(b),
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (None, None) => Ordering::Equal,
            })
            .find(|o| o.is_ne())
            .unwrap_or(Ordering::Equal)
            .then_with(|| a_id.cmp(b_id))
    });
    keyed.into_iter().map(|(_, _, item)| item).collect()
}

/// The instants `[earliest, latest]` (nanoseconds) of a date parameter's value: a date,
/// dateTime or instant string, or a Period (its start's earliest to its end's latest; an open
/// side takes the other's).
fn value_range(value: &Value) -> Option<(i128, i128)> {
    match value {
        Value::String(s) => instant_range(s),
        Value::Object(period) => {
            let side = |k: &str| {
                period
                    .get(k)
                    .and_then(Value::as_str)
                    .and_then(instant_range)
            };
            match (side("start"), side("end")) {
                (Some(s), Some(e)) => Some((s.0, e.1.max(s.0))),
                (Some(s), None) => Some(s),
                (None, Some(e)) => Some(e),
                (None, None) => None,
            }
        }
        _ => None,
    }
}

/// The instants `[earliest, latest]` (nanoseconds) of a date, dateTime or instant string: one
/// instant when it has seconds, else the range of its precision (UTC for a date).
fn instant_range(s: &str) -> Option<(i128, i128)> {
    let s = s.trim();
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        let n = t.unix_timestamp_nanos();
        return Some((n, n));
    }
    let (from, to) = last_updated::range(s).ok()?;
    const NANOS: i128 = 1_000_000_000;
    Some((i128::from(from) * NANOS, i128::from(to) * NANOS - 1))
}

/// The normalized text of a string parameter's value: a string, or a HumanName or Address as
/// its parts joined.
fn string_value(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(normalize_string(s)),
        Value::Object(parts) => {
            let mut words: Vec<&str> = Vec::new();
            for key in SORT_PARTS {
                match parts.get(*key) {
                    Some(Value::String(s)) => words.push(s),
                    Some(Value::Array(items)) => {
                        words.extend(items.iter().filter_map(Value::as_str));
                    }
                    _ => {}
                }
            }
            (!words.is_empty()).then(|| normalize_string(&words.join(" ")))
        }
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::SearchQuery;

    fn parse_for(rtype: ResourceType, value: &str) -> Result<Vec<SortKey>, FhirError> {
        let pairs = vec![("_sort".to_owned(), value.to_owned())];
        SearchQuery::parse(rtype, &pairs, false).map(|q| q.sort)
    }

    fn names(keys: &[SortKey]) -> Vec<(&str, bool)> {
        keys.iter().map(|k| (k.name(), k.descending())).collect()
    }

    #[test]
    fn parses_keys_and_directions() {
        let p = ResourceType::PATIENT;
        let keys = parse_for(p, "-_lastUpdated").unwrap();
        assert_eq!(names(&keys), vec![("_lastUpdated", true)]);
        let keys = parse_for(p, "birthdate, -family,_id,given,name").unwrap();
        assert_eq!(
            names(&keys),
            vec![
                ("birthdate", false),
                ("family", true),
                ("_id", false),
                ("given", false),
                ("name", false)
            ]
        );
        assert_eq!(sort_param(&keys), "birthdate,-family,_id,given,name");
        let o = ResourceType::parse("Observation").unwrap();
        assert_eq!(names(&parse_for(o, "-date").unwrap()), vec![("date", true)]);
        // Repeated, the keys add up.
        let pairs = vec![
            ("_sort".to_owned(), "family".to_owned()),
            ("_sort".to_owned(), "-birthdate".to_owned()),
        ];
        let q = SearchQuery::parse(p, &pairs, false).unwrap();
        assert_eq!(names(&q.sort), vec![("family", false), ("birthdate", true)]);
        assert!(SearchQuery::parse(p, &[], false).unwrap().sort.is_empty());
    }

    #[test]
    fn refuses_what_does_not_sort() {
        let p = ResourceType::PATIENT;
        for (value, phrase) in [
            (
                "gender",
                "'gender': only _id, _lastUpdated and date and string",
            ),
            ("identifier", "token parameter"),
            ("general-practitioner", "reference parameter"),
            ("-organization", "'organization'"),
            ("nonsense", "'nonsense': not a search parameter of Patient"),
            ("_security", "'_security'"),
            ("family:exact", "'family:exact'"),
            ("", "empty sort key"),
            ("family,", "empty sort key"),
            ("-", "empty sort key"),
            ("a,b,c,d,e,f,g,h,i", "too many sort keys"),
        ] {
            for lenient in [false, true] {
                let pairs = vec![("_sort".to_owned(), value.to_owned())];
                match SearchQuery::parse(p, &pairs, lenient) {
                    Err(FhirError::BadSearchValue { param, message }) => {
                        assert_eq!(param, "_sort");
                        assert!(message.contains(phrase), "{value}: {message}");
                    }
                    other => panic!("{value}: {other:?}"),
                }
            }
        }
        // A long name is cut in the message.
        let long = "x".repeat(500);
        let Err(FhirError::BadSearchValue { message, .. }) = parse_for(p, &long) else {
            panic!("parsed");
        };
        assert!(message.len() < 200, "{message}");
    }

    fn ids(keys: &[SortKey], bodies: &[Value]) -> Vec<String> {
        sort_by_keys(keys, bodies.to_vec(), |b| b)
            .into_iter()
            .map(|b| b["id"].as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn dates_sort_by_earliest_or_latest_instant_missing_last() {
        let o = ResourceType::parse("Observation").unwrap();
        let obs = |id: &str, effective: Value| {
            let mut b = json!({ "resourceType": "Observation", "id": id });
            if !effective.is_null() {
                let field = if effective.is_object() {
                    "effectivePeriod"
                } else {
                    "effectiveDateTime"
                };
                b[field] = effective;
            }
            b
        };
        let bodies = vec![
            obs("a", json!("2021-06-01T12:00:00.500Z")),
            obs("b", json!("2021")),
            obs("c", Value::Null),
            obs("d", json!({ "start": "2020-12-31", "end": "2022-01-01" })),
            obs("e", json!("2021-06-01T13:00:00+02:00")),
            obs("f", json!("2021-06-01T12:00:00.500Z")),
        ];
        let asc = parse_for(o, "date").unwrap();
        // d starts 2020-12-31; b 2021-01-01; e is 11:00Z; a and f tie (by id); c has none.
        assert_eq!(ids(&asc, &bodies), vec!["d", "b", "e", "a", "f", "c"]);
        let desc = parse_for(o, "-date").unwrap();
        // d ends 2022-01-01; b ends 2021-12-31; then a, f (tied, by id), e; c last.
        assert_eq!(ids(&desc, &bodies), vec!["d", "b", "a", "f", "e", "c"]);
    }

    #[test]
    fn strings_sort_normalized_then_ties_by_id() {
        let p = ResourceType::PATIENT;
        let patient =
            |id: &str, names: Value| json!({ "resourceType": "Patient", "id": id, "name": names });
        let bodies = vec![
            patient("p1", json!([{ "family": "Émile", "given": ["Zoe"] }])),
            patient("p2", json!([{ "family": "adams" }, { "family": "Young" }])),
            patient("p3", json!([{ "text": "no family" }])),
            patient("p4", json!([{ "family": "EMILE", "given": ["Anna"] }])),
            json!({ "resourceType": "Patient", "id": "p0" }),
        ];
        let family = parse_for(p, "family").unwrap();
        assert_eq!(ids(&family, &bodies), vec!["p2", "p1", "p4", "p0", "p3"]);
        let family_desc = parse_for(p, "-family").unwrap();
        // p2's largest family is "young".
        assert_eq!(
            ids(&family_desc, &bodies),
            vec!["p2", "p1", "p4", "p0", "p3"]
        );
        let family_given = parse_for(p, "family,given").unwrap();
        assert_eq!(
            ids(&family_given, &bodies),
            vec!["p2", "p4", "p1", "p0", "p3"]
        );
        // A whole name: family first.
        let name = parse_for(p, "name").unwrap();
        assert_eq!(ids(&name, &bodies), vec!["p2", "p4", "p1", "p3", "p0"]);
        let by_id = parse_for(p, "-_id").unwrap();
        assert_eq!(ids(&by_id, &bodies), vec!["p4", "p3", "p2", "p1", "p0"]);
    }

    #[test]
    fn last_updated_sorts_from_meta() {
        let p = ResourceType::PATIENT;
        let at = |id: &str, t: &str| {
            let mut b = json!({ "resourceType": "Patient", "id": id });
            b["meta"] = json!({ "lastUpdated": t });
            b
        };
        let bodies = vec![
            at("x", "2024-01-02T00:00:00Z"),
            at("y", "2024-01-01T00:00:00.250Z"),
            json!({ "resourceType": "Patient", "id": "w" }),
            at("z", "2024-01-01T00:00:00Z"),
        ];
        let asc = parse_for(p, "_lastUpdated").unwrap();
        assert_eq!(ids(&asc, &bodies), vec!["z", "y", "x", "w"]);
        let desc = parse_for(p, "-_lastUpdated").unwrap();
        assert_eq!(ids(&desc, &bodies), vec!["x", "y", "z", "w"]);
    }
}
