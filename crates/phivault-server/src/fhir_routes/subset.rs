//! Subsetted representations (`_summary=true|text|data`, `_elements`) on read, vread,
//! history and search (see [`phivault_fhir::Subset`]).
//!
//! A resource is subsetted after it was decided, released and audited exactly like the whole
//! resource: subsetting only leaves elements out, so it never widens what is returned.
//!
//! ETags: a subset of version `n` is another representation than the whole resource, so it
//! gets its own weak ETag, `W/"n-subsetted"`. Conditional reads (`If-None-Match`) compare it as
//! any tag; `If-Match` on an update takes version ETags only, so a subset's ETag is refused
//! (400) rather than taken as a precondition for a full update. A body carrying the
//! `SUBSETTED` tag is refused on every write by the validator (400).

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use phivault_fhir::{BundleEntry, EntryMethod, Id, ResourceType, Subset};
use phivault_store::{HistoryEntry, StoredResource};
use serde_json::Value;

use super::include::Included;
use super::{etag, parse_pairs, resource_response, set_header};
use crate::{ApiError, AppState};

/// The subset a read, vread or history of `rtype` asks for in its query string (other
/// parameters are not looked at here). Unknown element names: 400, or ignored when lenient.
pub(super) fn asked(
    rtype: ResourceType,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<Option<Subset>, ApiError> {
    let pairs = parse_pairs(query.unwrap_or(""))?;
    Ok(Subset::from_pairs(rtype, &pairs, super::lenient(headers))?)
}

/// The ETag of version `version` in the representation `subset`.
pub(super) fn etag_of(version: u64, subset: Option<&Subset>) -> String {
    match subset {
        Some(_) => format!("W/\"{version}-subsetted\""),
        None => etag(version),
    }
}

/// The 200 answer of a read or vread: the resource, subsetted as asked.
pub(super) fn response(
    state: &AppState,
    mut stored: StoredResource,
    subset: Option<&Subset>,
) -> Response {
    let Some(subset) = subset else {
        return super::as_stored_response(state, &stored);
    };
    subset.apply(&mut stored.body);
    let mut response = resource_response(state, StatusCode::OK, &stored, false);
    set_header(
        &mut response,
        header::ETAG,
        &etag_of(stored.version, Some(subset)),
    );
    response
}

/// Subsets the matches of a search page.
pub(super) fn matches(subset: Option<&Subset>, resources: &mut [StoredResource]) {
    if let Some(subset) = subset {
        for r in resources {
            subset.apply(&mut r.body);
        }
    }
}

/// Subsets what `_include` and `_revinclude` added to a page, as its matches.
pub(super) fn included(subset: Option<&Subset>, included: &mut Included) {
    if let Some(subset) = subset {
        for entry in &mut included.entries {
            if let Some(resource) = entry.get_mut("resource") {
                subset.apply(resource);
            }
        }
    }
}

/// A version's entry in a history, subsetted as asked: its resource and its etag.
pub(super) fn history_entry(
    state: &AppState,
    rtype: ResourceType,
    id: &Id,
    h: HistoryEntry,
    subset: Option<&Subset>,
) -> Value {
    let version = h.version;
    let mut entry = super::history_entry(state, rtype, id, h);
    if let Some(subset) = subset {
        if let Some(body) = entry.get_mut("resource") {
            subset.apply(body);
        }
        entry["response"]["etag"] = Value::String(etag_of(version, Some(subset)));
    }
    entry
}

/// The query-string suffix (`&_summary=true`) that repeats `subset` in a history link.
pub(super) fn link_suffix(subset: Option<&Subset>) -> String {
    subset.map_or_else(String::new, |s| {
        format!("&{}", super::query_string(&[s.pair()]))
    })
}

/// The subsets asked for by a Bundle's read and vread entries (`GET Type/id?_summary=true`),
/// one per entry. A bad parameter refuses a transaction (naming the entry) and is the
/// entry's answer in a batch (`failed`).
pub(super) fn bundle_reads(
    entries: &[BundleEntry],
    failed: &mut [Option<ApiError>],
    atomic: bool,
) -> Result<Vec<Option<Subset>>, ApiError> {
    let mut out = Vec::with_capacity(entries.len());
    for (index, e) in entries.iter().enumerate() {
        if e.method != EntryMethod::Get || e.url.id.is_none() {
            out.push(None);
            continue;
        }
        match Subset::from_pairs(e.url.rtype, &e.url.query, false) {
            Ok(subset) => out.push(subset),
            Err(err) if atomic => return Err(super::transaction::in_entry(index, err.into())),
            Err(err) => {
                if let Some(slot) = failed.get_mut(index)
                    && slot.is_none()
                {
                    *slot = Some(err.into());
                }
                out.push(None);
            }
        }
    }
    Ok(out)
}

/// Subsets the answer of a Bundle's read or vread entry: its resource and its etag.
pub(super) fn bundle_answer(answer: &mut Value, subset: Option<&Subset>) {
    let Some(subset) = subset else {
        return;
    };
    let Some(resource) = answer.get_mut("resource") else {
        return;
    };
    subset.apply(resource);
    let version = resource
        .get("meta")
        .and_then(|m| m.get("versionId"))
        .and_then(Value::as_str)
        .and_then(|v| v.parse::<u64>().ok());
    if let (Some(version), Some(response)) = (version, answer.get_mut("response"))
        && response.get("etag").is_some()
    {
        response["etag"] = Value::String(etag_of(version, Some(subset)));
    }
}
