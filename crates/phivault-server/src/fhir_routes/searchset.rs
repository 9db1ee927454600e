//! The searchset Bundle of a search: its links, its total (unless `_total=none`), an
//! OperationOutcome entry for warnings (ignored parameters, a capped `_count`) and the match
//! entries. The total and the entries are what the principal may read only (see `guard`).

use phivault_fhir::{Id, Issue, IssueCode, OperationOutcome, ResourceType, SearchQuery, TotalMode};
use phivault_store::StoredResource;
use serde_json::{Value, json};

use super::include::{Included, MAX_INCLUDED};
use super::{base, match_entries, query_string};
use crate::AppState;

/// What a search's links repeat beyond its indexed parameters: the client's own `_id` (not
/// the ids a `_has` resolved to) and the parameters answered outside the index (`_has`,
/// `_include`, `_revinclude`), as the client wrote them.
pub(super) struct LinkEcho {
    pub(super) ids: Option<Vec<Id>>,
    pub(super) pairs: Vec<(String, String)>,
}

/// A link of a search: the parameters actually used, then the result parameters (`_sort`
/// included, so every page is cut from the same order), `_count` and `_offset`.
pub(super) fn search_link(
    state: &AppState,
    rtype: ResourceType,
    query: &SearchQuery,
    echo: &LinkEcho,
    offset: usize,
) -> String {
    let mut pairs: Vec<(String, String)> = Vec::new();
    if let Some(ids) = &echo.ids {
        let list: Vec<&str> = ids.iter().map(Id::as_str).collect();
        pairs.push(("_id".to_owned(), list.join(",")));
    }
    for p in &query.params {
        pairs.push((p.name.clone(), p.raw.clone()));
    }
    pairs.extend(echo.pairs.iter().cloned());
    for (raw, _) in &query.last_updated {
        pairs.push(("_lastUpdated".to_owned(), raw.clone()));
    }
    if query.summary_count {
        pairs.push(("_summary".to_owned(), "count".to_owned()));
    }
    if let Some(subset) = &query.subset {
        pairs.push(subset.pair());
    }
    if query.total == TotalMode::None {
        pairs.push(("_total".to_owned(), "none".to_owned()));
    }
    if !query.sort.is_empty() {
        pairs.push(("_sort".to_owned(), phivault_fhir::sort_param(&query.sort)));
    }
    pairs.push(("_count".to_owned(), query.count.to_string()));
    pairs.push(("_offset".to_owned(), offset.to_string()));
    format!("{}/{}?{}", base(state), rtype, query_string(&pairs))
}

/// The searchset of one page: `total` of what the principal may read, `resources` the page,
/// `included` what its `_include` and `_revinclude` added (never counted in `total`).
pub(super) fn searchset(
    state: &AppState,
    rtype: ResourceType,
    query: &SearchQuery,
    echo: &LinkEcho,
    total: u64,
    resources: Vec<StoredResource>,
    included: Included,
) -> Value {
    let mut links = vec![json!({
        "relation": "self",
        "url": search_link(state, rtype, query, echo, query.offset),
    })];
    let next = query.offset.saturating_add(query.count);
    if query.count > 0 && (next as u64) < total {
        links.push(json!({
            "relation": "next",
            "url": search_link(state, rtype, query, echo, next),
        }));
    }

    let mut entries: Vec<Value> = Vec::with_capacity(resources.len() + 1);
    let mut outcome = OperationOutcome::default();
    if !query.ignored.is_empty() {
        let names: Vec<String> = query
            .ignored
            .iter()
            .map(|n| n.chars().take(64).collect())
            .collect();
        outcome.push(
            "warning",
            Issue {
                code: IssueCode::NotSupported,
                path: String::new(),
                message: format!(
                    "these search parameters are not supported and were ignored: {}",
                    names.join(", ")
                ),
            },
        );
    }
    for warning in &query.warnings {
        outcome.push(
            "warning",
            Issue {
                code: IssueCode::TooCostly,
                path: String::new(),
                message: warning.clone(),
            },
        );
    }
    if included.capped {
        outcome.push(
            "warning",
            Issue {
                code: IssueCode::TooCostly,
                path: String::new(),
                message: format!(
                    "only the first {MAX_INCLUDED} included resources are on this page"
                ),
            },
        );
    }
    if !query.ignored.is_empty() || !query.warnings.is_empty() || included.capped {
        entries.push(json!({
            "fullUrl": format!("urn:uuid:{}", uuid::Uuid::new_v4()),
            "resource": outcome.to_json(),
            "search": { "mode": "outcome" },
        }));
    }
    entries.extend(match_entries(state, resources));
    entries.extend(included.entries);
    let mut bundle = json!({
        "resourceType": "Bundle",
        "id": uuid::Uuid::new_v4().to_string(),
        "type": "searchset",
        "link": links,
        "entry": entries,
    });
    if query.total != TotalMode::None {
        bundle["total"] = json!(total);
    }
    bundle
}
