//! Conditional interactions in Bundles: `request.ifNoneExist` (conditional create) and
//! conditional references (`Organization?identifier=system|value`), resolved before anything
//! is decided or written.
//!
//! Rules kept here (the searches themselves are the caller's, through a [`Finder`] that sees
//! only what the writer may read: the server's is scoped by the policy, the importer's is the
//! master key holder's):
//! - **A conditional create** (`POST` with `ifNoneExist`) with no match stays a create; with
//!   exactly one match it becomes a read of that resource (`GET Type/id`: answered `200` with
//!   it, nothing written, and references to the entry's `fullUrl` lead to it); with more than
//!   one it fails with [`FhirError::MultipleMatches`] (412).
//! - **A conditional reference** `Type?search` is rewritten to the one resource it finds: a
//!   resource the writer can read, or, in a transaction, an entry of the same transaction
//!   that creates a matching resource (its body's index entries match every parameter), found
//!   by its `fullUrl` (one is given to an entry that has none). No match is 422 and several
//!   are 412 ([`FhirError::AmbiguousReference`]), each naming the entry and the element.
//! - Error messages name entries, elements, types and parameter names, never values (an
//!   identifier is PHI).

use std::collections::HashMap;
use std::future::Future;

use serde_json::Value;

use crate::{
    BundleEntry, EntryMethod, FhirError, Id, Issue, IssueCode, ResourceType, SearchQuery,
    ValidResource, index_entries,
};

/// Searches with the writer's access: the total it may read and up to `query.count` ids.
pub trait Finder {
    /// The caller's error (a refused search, a database fault).
    type Error: From<FhirError> + Send;
    /// Runs `query` over `rtype`.
    fn find(
        &mut self,
        rtype: ResourceType,
        query: &SearchQuery,
    ) -> impl Future<Output = Result<(u64, Vec<Id>), Self::Error>> + Send;
}

/// A conditional search of `rtype` from decoded pairs: at least one parameter, no paging, at
/// most two results wanted (one is the answer, two are too many).
pub fn condition_query(
    rtype: ResourceType,
    pairs: &[(String, String)],
) -> Result<SearchQuery, FhirError> {
    let mut query = SearchQuery::parse(rtype, pairs, false)?;
    if query.params.is_empty() && query.ids.is_none() {
        return Err(FhirError::BadSearchValue {
            param: "(condition)".to_owned(),
            message: "a condition needs at least one search parameter".to_owned(),
        });
    }
    query.count = 2;
    query.offset = 0;
    Ok(query)
}

/// `(type, query)` of a conditional reference `Type?query`; `None` for any other reference.
pub fn conditional_reference(reference: &str) -> Option<(ResourceType, &str)> {
    let (path, query) = reference.split_once('?')?;
    if path.contains([':', '/']) {
        return None;
    }
    ResourceType::parse(path).ok().map(|t| (t, query))
}

/// Whether a body about to be created matches every parameter of `query` (by the same index
/// entries the store would write for it; an `_id` condition never matches a new resource).
pub fn body_matches(resource: &ValidResource, query: &SearchQuery) -> bool {
    if query.ids.is_some() {
        return false;
    }
    let entries = index_entries(resource);
    query
        .params
        .iter()
        .all(|p| p.any_of.iter().any(|e| entries.binary_search(e).is_ok()))
}

/// Every `reference` string of a body with its element path (`Location.managingOrganization`).
pub fn references_with_paths(rtype: ResourceType, body: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack: Vec<(String, &Value)> = vec![(rtype.to_string(), body)];
    while let Some((path, value)) = stack.pop() {
        match value {
            Value::Object(object) => {
                for (key, child) in object {
                    match (key.as_str(), child) {
                        ("reference", Value::String(r)) => out.push((path.clone(), r.clone())),
                        // Contained resources are their own bodies; their references too.
                        _ => stack.push((format!("{path}.{key}"), child)),
                    }
                }
            }
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    stack.push((format!("{path}[{i}]"), item));
                }
            }
            _ => {}
        }
    }
    out
}

/// The parameter names of a query, for messages (values are never shown).
fn names(query: &str) -> String {
    let mut names: Vec<&str> = query
        .split('&')
        .filter_map(|p| p.split('=').next())
        .filter(|n| !n.is_empty())
        .collect();
    names.dedup();
    names.join(", ")
}

fn decode(query: &str) -> Result<Vec<(String, String)>, FhirError> {
    crate::bundle::parse_query(query).map_err(|_| FhirError::BadSearchValue {
        param: "(condition)".to_owned(),
        message: "malformed percent-encoding".to_owned(),
    })
}

/// How one conditional reference resolved.
#[derive(Clone)]
enum Found {
    One(String),
    None,
    Several,
    Unusable(String),
}

/// Resolves the conditional creates and conditional references of `entries` (see the
/// module's rules) with `finder`. `atomic`: a transaction, whose entries may refer to each
/// other. Returns, per entry, the error that entry fails with (the whole Bundle, for a
/// transaction); the entries left are free of conditions.
pub async fn resolve_conditions<F: Finder + Send>(
    entries: &mut [BundleEntry],
    atomic: bool,
    finder: &mut F,
) -> Result<Vec<Option<F::Error>>, F::Error> {
    resolve_all(entries, atomic, finder, false).await
}

/// Resolves the conditional references of one resource written on its own (a create or an
/// update), as in a batch: errors name the element (`Location.managingOrganization`).
pub async fn resolve_references<F: Finder + Send>(
    resource: ValidResource,
    finder: &mut F,
) -> Result<ValidResource, F::Error> {
    let mut entries = [BundleEntry {
        full_url: None,
        method: EntryMethod::Post,
        url: crate::EntryUrl {
            rtype: resource.resource_type(),
            id: None,
            version: None,
            query: Vec::new(),
        },
        if_match: None,
        if_none_exist: None,
        resource: Some(resource),
    }];
    let [mut failed] = resolve_all(&mut entries, false, finder, true)
        .await?
        .try_into()
        .map_err(|_| FhirError::BadBundle("one entry expected".to_owned()))?;
    if let Some(e) = failed.take() {
        return Err(e);
    }
    let [entry] = entries;
    entry
        .resource
        .ok_or_else(|| FhirError::BadBundle("the resource was lost".to_owned()).into())
}

async fn resolve_all<F: Finder + Send>(
    entries: &mut [BundleEntry],
    atomic: bool,
    finder: &mut F,
    single: bool,
) -> Result<Vec<Option<F::Error>>, F::Error> {
    let mut errors: Vec<Option<F::Error>> = (0..entries.len()).map(|_| None).collect();
    // `fullUrl` of a matched conditional create -> the resource it matched.
    let mut matched: HashMap<String, String> = HashMap::new();
    for (index, entry) in entries.iter_mut().enumerate() {
        let Some(pairs) = entry.if_none_exist.take() else {
            continue;
        };
        let rtype = entry.url.rtype;
        let path = format!("Bundle.entry[{index}].request.ifNoneExist");
        let query = match condition_query(rtype, &pairs) {
            Ok(q) => q,
            Err(e) => {
                errors[index] = Some(
                    FhirError::BadBundleEntry {
                        index,
                        message: format!("request.ifNoneExist is not a valid search: {e}"),
                    }
                    .into(),
                );
                continue;
            }
        };
        let (total, ids) = finder.find(rtype, &query).await?;
        match (total, ids.as_slice()) {
            (0, _) => {}
            (1, [id]) => {
                if let Some(full) = &entry.full_url {
                    matched.insert(full.clone(), format!("{rtype}/{id}"));
                }
                entry.method = EntryMethod::Get;
                entry.url.id = Some(id.clone());
                entry.url.version = None;
                entry.resource = None;
            }
            _ => {
                errors[index] = Some(
                    FhirError::MultipleMatches {
                        path,
                        target: rtype.to_string(),
                    }
                    .into(),
                );
            }
        }
    }

    // Entries creating a resource that a conditional reference may name: (type, index). Each
    // gets a `fullUrl` if it has none, by which a reference to it is resolved like any other.
    let mut creating: Vec<(ResourceType, usize)> = Vec::new();
    if atomic {
        for (i, e) in entries.iter_mut().enumerate() {
            if e.method == EntryMethod::Post && e.resource.is_some() {
                e.full_url
                    .get_or_insert_with(|| format!("urn:uuid:{}", Id::generate()));
                creating.push((e.url.rtype, i));
            }
        }
    }
    let mut cache: HashMap<String, Found> = HashMap::new();
    for index in 0..entries.len() {
        let Some(resource) = &entries[index].resource else {
            continue;
        };
        let mut map = if atomic {
            matched.clone()
        } else {
            HashMap::new()
        };
        let refs = references_with_paths(resource.resource_type(), resource.body());
        for (path, reference) in refs {
            let Some((target, query)) = conditional_reference(&reference) else {
                continue;
            };
            if map.contains_key(&reference) {
                continue;
            }
            let found = match cache.get(&reference) {
                Some(found) => found.clone(),
                None => {
                    let found = match decode(query).and_then(|p| condition_query(target, &p)) {
                        Err(e) => Found::Unusable(e.to_string()),
                        Ok(q) => {
                            let (total, ids) = finder.find(target, &q).await?;
                            let mut hits: Vec<String> =
                                ids.iter().map(|id| format!("{target}/{id}")).collect();
                            let mut more = total > ids.len() as u64;
                            for &(t, j) in &creating {
                                if t != target || j == index {
                                    continue;
                                }
                                let Some(candidate) = &entries[j].resource else {
                                    continue;
                                };
                                if body_matches(candidate, &q)
                                    && let Some(full) = &entries[j].full_url
                                {
                                    hits.push(full.clone());
                                }
                            }
                            hits.sort();
                            hits.dedup();
                            if hits.len() > 1 {
                                more = true;
                            }
                            match hits.pop() {
                                _ if more => Found::Several,
                                None => Found::None,
                                Some(one) => Found::One(one),
                            }
                        }
                    };
                    cache.insert(reference.clone(), found.clone());
                    found
                }
            };
            let at = if single {
                path.clone()
            } else {
                format!("Bundle.entry[{index}].resource.{}", strip_type(&path))
            };
            match found {
                Found::One(one) => {
                    map.insert(reference.clone(), one);
                }
                Found::None => {
                    errors[index].get_or_insert_with(|| {
                        FhirError::Invalid(vec![Issue {
                            code: IssueCode::NotFound,
                            path: at,
                            message: format!(
                                "the conditional reference to {target} (search on {}) matches \
                                 no {target} the writer can read",
                                names(query)
                            ),
                        }])
                        .into()
                    });
                }
                Found::Several => {
                    errors[index].get_or_insert_with(|| {
                        FhirError::AmbiguousReference {
                            path: at,
                            target: target.to_string(),
                        }
                        .into()
                    });
                }
                Found::Unusable(why) => {
                    errors[index].get_or_insert_with(|| {
                        FhirError::Invalid(vec![Issue {
                            code: IssueCode::Invalid,
                            path: at,
                            message: format!(
                                "the conditional reference to {target} is not a valid search: \
                                 {why}"
                            ),
                        }])
                        .into()
                    });
                }
            }
        }
        if !map.is_empty()
            && let Some(resource) = entries[index].resource.as_mut()
        {
            resource.rewrite_references(&map);
        }
    }
    Ok(errors)
}

/// `Location.managingOrganization` -> `managingOrganization`.
fn strip_type(path: &str) -> &str {
    path.split_once('.').map_or("", |(_, rest)| rest)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::validate::tests::validator;

    #[test]
    fn conditional_references_parse() {
        let (t, q) = conditional_reference("Organization?identifier=https://x|1").unwrap();
        assert_eq!(t.as_str(), "Organization");
        assert_eq!(q, "identifier=https://x|1");
        assert!(conditional_reference("Organization/1").is_none());
        assert!(conditional_reference("urn:uuid:1?x=1").is_none());
        assert!(conditional_reference("https://a/Patient?x=1").is_none());
        assert!(conditional_reference("Nonsense?x=1").is_none());
    }

    #[test]
    fn bodies_match_queries() {
        let org = validator()
            .validate(
                json!({"resourceType": "Organization", "identifier": [
                    {"system": "https://github.com/synthetichealth/synthea", "value": "abc"}]}),
                None,
            )
            .unwrap();
        let pairs = |v: &str| {
            vec![(
                "identifier".to_owned(),
                format!("https://github.com/synthetichealth/synthea|{v}"),
            )]
        };
        let rtype = ResourceType::parse("Organization").unwrap();
        assert!(body_matches(
            &org,
            &condition_query(rtype, &pairs("abc")).unwrap()
        ));
        assert!(!body_matches(
            &org,
            &condition_query(rtype, &pairs("abd")).unwrap()
        ));
        assert!(condition_query(rtype, &[]).is_err());
    }

    #[test]
    fn paths_of_references() {
        let body = json!({"resourceType": "Claim", "patient": {"reference": "Patient/1"},
            "item": [{"encounter": [{"reference": "Encounter/2"}]}]});
        let rtype = ResourceType::parse("Claim").unwrap();
        let mut refs = references_with_paths(rtype, &body);
        refs.sort();
        assert_eq!(
            refs,
            vec![
                (
                    "Claim.item[0].encounter[0]".to_owned(),
                    "Encounter/2".to_owned()
                ),
                ("Claim.patient".to_owned(), "Patient/1".to_owned()),
            ]
        );
        assert_eq!(
            names("identifier=a|b&identifier=c&name=x"),
            "identifier, name"
        );
    }
}
