//! The resources `_include` and `_revinclude` add to a search page.
//!
//! Each included resource is found by a search of its own type through [`Access::search`]
//! (`_id=...` for an `_include`, `param=Type/id,...` for a `_revinclude`), so it is decided
//! exactly like a hit of a search the principal made itself: the query-level decision, the
//! SQL scopes, then the per-resource decision, and every patient it returns is named in the
//! request's audit entry. What the principal may not read is left out without a trace (no
//! error, no count, no different status): a search of a type the principal may not search at
//! all adds nothing. Included resources are never counted in `total`.

use std::collections::{BTreeMap, HashSet};

use phivault_fhir::{Id, Include, ResourceType, SearchQuery};
use phivault_store::StoredResource;
use serde_json::{Value, json};

use super::{Access, base};
use crate::{ApiError, AppState};

/// At most this many resources are included in one page; beyond it the page carries a
/// warning saying the includes were cut.
pub(crate) const MAX_INCLUDED: usize = 1000;

/// References (or referring resources) looked up per search: one search parameter's value
/// list (see the `_id` and OR limits of [`SearchQuery::parse`]).
const PER_QUERY: usize = 100;

/// What the includes of a page added.
#[derive(Debug, Default)]
pub(crate) struct Included {
    /// `search.mode = include` entries.
    pub(crate) entries: Vec<Value>,
    /// Some were left out because the page reached [`MAX_INCLUDED`].
    pub(crate) capped: bool,
}

/// The resources `includes` add to a page of `rtype` whose matches are `matches`.
pub(crate) async fn included(
    state: &AppState,
    access: &mut Access,
    rtype: ResourceType,
    includes: &[Include],
    matches: &[StoredResource],
) -> Result<Included, ApiError> {
    let mut out = Included::default();
    if includes.is_empty() || matches.is_empty() {
        return Ok(out);
    }
    let mut seen: HashSet<(ResourceType, Id)> =
        matches.iter().map(|r| (r.rtype, r.id.clone())).collect();

    // `_include`: the referenced resources, by type, each once.
    let mut wanted: BTreeMap<ResourceType, Vec<Id>> = BTreeMap::new();
    for include in includes.iter().filter(|i| !i.reverse) {
        for m in matches {
            for (t, id) in include.referenced(&m.body) {
                if !seen.contains(&(t, id.clone())) {
                    let ids = wanted.entry(t).or_default();
                    if !ids.contains(&id) {
                        ids.push(id);
                    }
                }
            }
        }
    }
    for (t, ids) in wanted {
        for chunk in ids.chunks(PER_QUERY) {
            let list: Vec<&str> = chunk.iter().map(Id::as_str).collect();
            let pairs = vec![
                ("_id".to_owned(), list.join(",")),
                ("_count".to_owned(), PER_QUERY.to_string()),
            ];
            if !add(state, access, t, &pairs, &mut seen, &mut out).await? {
                return Ok(out);
            }
        }
    }

    // `_revinclude`: the resources of the source type that refer to a match.
    let refs: Vec<String> = matches
        .iter()
        .filter(|m| m.rtype == rtype)
        .map(|m| format!("{}/{}", m.rtype, m.id))
        .collect();
    for include in includes.iter().filter(|i| i.reverse) {
        for chunk in refs.chunks(PER_QUERY) {
            let room = MAX_INCLUDED.saturating_sub(out.entries.len()).max(1);
            let pairs = vec![
                (include.param.to_owned(), chunk.join(",")),
                ("_count".to_owned(), room.to_string()),
            ];
            if !add(state, access, include.source, &pairs, &mut seen, &mut out).await? {
                return Ok(out);
            }
        }
    }
    Ok(out)
}

/// Runs one search of `rtype` with `pairs` as the principal and adds its unseen hits to
/// `out`. False when the page is full (`out.capped` is then set).
async fn add(
    state: &AppState,
    access: &mut Access,
    rtype: ResourceType,
    pairs: &[(String, String)],
    seen: &mut HashSet<(ResourceType, Id)>,
    out: &mut Included,
) -> Result<bool, ApiError> {
    let query = SearchQuery::parse(rtype, pairs, false)?;
    let (total, found) = match access.search(rtype, &query).await {
        Ok(r) => r,
        // The principal may not search this type at all: it adds nothing.
        Err(ApiError::Forbidden(_)) => return Ok(true),
        Err(e) => return Err(e),
    };
    let returned = found.len() as u64;
    for r in found {
        if out.entries.len() >= MAX_INCLUDED {
            out.capped = true;
            return Ok(false);
        }
        if seen.insert((r.rtype, r.id.clone())) {
            out.entries.push(json!({
                "fullUrl": format!("{}/{}/{}", base(state), r.rtype, r.id),
                "resource": r.body,
                "search": { "mode": "include" },
            }));
        }
    }
    if total > returned {
        // More refer to these matches than fit: the page is full.
        out.capped = true;
        return Ok(false);
    }
    Ok(true)
}
