//! Chained parameters and `_has` (parsed by [`phivault_fhir::split_chains`]): each is
//! answered by a search of the other type through [`Access::search`], as the caller, so it
//! only ever learns of resources the caller may read (and names their patients in the
//! request's audit entry, as any search does); the search asked for is then restricted to
//! what it found. A chain becomes `ref=Type/id,...`, a `_has` becomes `_id=...`.

use phivault_fhir::{Chains, Id, IndexEntry, ResourceType, SearchParam, SearchQuery};

use super::Access;
use crate::ApiError;

/// At most this many resources found by one chained or `_has` search; more is refused as
/// too costly (the client narrows the chained parameter).
pub(crate) const MAX_CHAIN_MATCHES: usize = 1000;

/// Restricts `query` (a search of `rtype`) by `chains`. False when a chain found nothing:
/// the search then matches nothing.
pub(crate) async fn restrict(
    access: &mut Access,
    rtype: ResourceType,
    chains: &Chains,
    query: &mut SearchQuery,
) -> Result<bool, ApiError> {
    for chain in &chains.chains {
        let found = inner_search(access, chain.target, &chain.inner, &chain.written.0).await?;
        let any_of: Vec<IndexEntry> = found
            .iter()
            .map(|(t, id, _)| IndexEntry {
                param: chain.param.to_owned(),
                value: format!("{t}/{id}"),
            })
            .collect();
        let nothing = any_of.is_empty();
        // Kept even when empty: the page's links repeat the chain as written.
        query.params.push(SearchParam {
            name: chain.written.0.clone(),
            raw: chain.written.1.clone(),
            any_of,
            conjunctions: Vec::new(),
        });
        if nothing {
            return Ok(false);
        }
    }
    for has in &chains.has {
        let found = inner_search(access, has.source, &has.inner, &has.written.0).await?;
        let mut ids: Vec<Id> = Vec::new();
        for (_, _, body) in &found {
            for (t, id) in phivault_fhir::references_through(has.source, has.param, body) {
                if t == rtype && !ids.contains(&id) {
                    ids.push(id);
                }
            }
        }
        let ids = match query.ids.take() {
            Some(before) => before.into_iter().filter(|i| ids.contains(i)).collect(),
            None => ids,
        };
        if ids.is_empty() {
            return Ok(false);
        }
        query.ids = Some(ids);
    }
    Ok(true)
}

/// The resources of `rtype` matching `inner` that the caller may read (type, id, body).
async fn inner_search(
    access: &mut Access,
    rtype: ResourceType,
    inner: &(String, String),
    written: &str,
) -> Result<Vec<(ResourceType, Id, serde_json::Value)>, ApiError> {
    let pairs = [
        inner.clone(),
        ("_count".to_owned(), MAX_CHAIN_MATCHES.to_string()),
    ];
    let query = SearchQuery::parse(rtype, &pairs, false)?;
    let (total, found) = access.search(rtype, &query).await?;
    if total > MAX_CHAIN_MATCHES as u64 {
        let name: String = written.chars().take(64).collect();
        return Err(ApiError::Fhir(phivault_fhir::FhirError::BadSearchValue {
            param: name,
            message: format!(
                "the chained search matches more than {MAX_CHAIN_MATCHES} {rtype} resources: narrow it"
            ),
        }));
    }
    Ok(found.into_iter().map(|r| (r.rtype, r.id, r.body)).collect())
}
