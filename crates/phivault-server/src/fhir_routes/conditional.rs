//! Conditional interactions: `If-None-Exist` on a create, `ifNoneExist` and conditional
//! references (`Organization?identifier=system|value`) in transactions and batches.
//!
//! Rules kept here:
//! - **Every condition is a search with the caller's own access** ([`Access::search`]: the
//!   query decided, the SQL scoped to what the caller may read, every hit decided again), and
//!   is audited as one: the request's audit entry names the patients whose resources it found.
//! - **A match the caller may not read counts as none.** So a conditional create whose only
//!   match is out of the caller's reach creates (a second resource, in the compartment the
//!   caller may write to) exactly as if nothing matched: 201 vs 200 never tells of a resource
//!   the caller could not find by searching. The price is a possible duplicate of a resource
//!   the caller cannot see; an administrator who can see both may merge them.
//! - **A create is decided before its condition is searched** (`If-None-Exist`): a caller who
//!   may not create gets 403 whatever exists. In a Bundle, a conditional create that matches
//!   becomes a read of the match (`GET Type/id`, decided as a read: nothing is written).
//! - **A conditional reference is resolved to exactly one resource** the writer can read, or,
//!   in a transaction, to an entry of the same transaction that creates a matching resource;
//!   none is 422 and several 412, naming the entry and the element
//!   ([`phivault_fhir::conditional`]). The search never picks a resource the writer cannot
//!   read.
//! - **Conditional update** (`PUT [base]/Type?search`): no match the caller may read creates
//!   (a body id makes it an update-as-create of that id, decided like any `PUT`), one updates
//!   it (a body id must be the match's, else 400), several are 412. **Conditional delete**
//!   (`DELETE [base]/Type?search`): no match 204 (as for a resource that does not exist), one
//!   is deleted like `DELETE Type/id`, several 412 (single deletes only).
//! - Two concurrent conditional creates of the same thing may both create: the condition is
//!   searched before the write's transaction, as in most FHIR servers.

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use phivault_fhir::conditional::{Finder, condition_query, resolve_conditions, resolve_references};
use phivault_fhir::{BundleEntry, FhirError, Id, ResourceType, SearchQuery, ValidResource};
use phivault_store::StoredResource;

use super::{
    Access, create_resource, delete_resource, if_match, json_body, parse_pairs, path_error,
    rtype_of, update_resource,
};
use crate::{ApiError, AppState};

/// The header of a conditional create.
const IF_NONE_EXIST: &str = "if-none-exist";

/// The caller's search, as conditions use it.
struct AccessFinder<'a>(&'a mut Access);

impl Finder for AccessFinder<'_> {
    type Error = ApiError;

    async fn find(
        &mut self,
        rtype: ResourceType,
        query: &SearchQuery,
    ) -> Result<(u64, Vec<Id>), ApiError> {
        let (total, found) = self.0.search(rtype, query).await?;
        Ok((total, found.into_iter().map(|r| r.id).collect()))
    }
}

/// The query of an `If-None-Exist` header (`identifier=s|v`, or `Type?identifier=s|v`), if
/// the request has one.
fn header_query(rtype: ResourceType, headers: &HeaderMap) -> Result<Option<SearchQuery>, ApiError> {
    let Some(value) = headers.get(IF_NONE_EXIST) else {
        return Ok(None);
    };
    let bad = |why: String| {
        ApiError::BadRequest(format!("If-None-Exist must be a search of {rtype}: {why}"))
    };
    let text = value
        .to_str()
        .map_err(|_| bad("the header is not visible ASCII".to_owned()))?
        .trim();
    let text = match text.split_once('?') {
        Some((path, rest)) if !path.contains('=') => {
            let named = path
                .trim_start_matches('/')
                .rsplit('/')
                .next()
                .unwrap_or("");
            if named != rtype.as_str() {
                return Err(bad("it names another type".to_owned()));
            }
            rest
        }
        _ => text,
    };
    let pairs = parse_pairs(text)?;
    condition_query(rtype, &pairs)
        .map(Some)
        .map_err(|e| bad(e.to_string()))
}

/// The headers of a create whose query string holds search parameters
/// (`POST [base]/Type?identifier=...`, as fhirpy's `get_or_create` sends it): the query is
/// the create's condition, exactly as if it had come as `If-None-Exist`. A create must not
/// ignore a condition it was given (that would write the duplicate the client meant to
/// avoid), and giving it twice is refused. `_format` and `_pretty` alone are no condition.
pub(crate) fn query_condition(
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<HeaderMap, ApiError> {
    let Some(query) = query.filter(|q| !q.is_empty()) else {
        return Ok(headers.clone());
    };
    let pairs = parse_pairs(query)?;
    if pairs
        .iter()
        .all(|(name, _)| matches!(name.as_str(), "_format" | "_pretty"))
    {
        return Ok(headers.clone());
    }
    if headers.contains_key(IF_NONE_EXIST) {
        return Err(ApiError::BadRequest(
            "a create takes its condition once: in If-None-Exist or in the query string".to_owned(),
        ));
    }
    let value = axum::http::HeaderValue::from_str(query).map_err(|_| {
        ApiError::BadRequest("the query string of a create is not visible ASCII".to_owned())
    })?;
    let mut headers = headers.clone();
    headers.insert(IF_NONE_EXIST, value);
    Ok(headers)
}

/// A conditional create's search (after the create was decided): `Some(resource)` when
/// exactly one resource the caller may read matches (answer it with 200, write nothing),
/// `None` when none does or there is no `If-None-Exist` (create), 412 when several do.
pub(crate) async fn if_none_exist(
    access: &mut Access,
    rtype: ResourceType,
    headers: &HeaderMap,
) -> Result<Option<StoredResource>, ApiError> {
    let Some(query) = header_query(rtype, headers)? else {
        return Ok(None);
    };
    let (total, mut found) = access.search(rtype, &query).await?;
    match (total, found.len()) {
        (0, _) => Ok(None),
        (1, 1) => Ok(found.pop()),
        _ => Err(ApiError::Fhir(FhirError::MultipleMatches {
            path: "If-None-Exist".to_owned(),
            target: rtype.to_string(),
        })),
    }
}

/// Resolves the conditional references (of any type) of a resource written on its own.
pub(crate) async fn resolve_single(
    access: &mut Access,
    resource: ValidResource,
) -> Result<ValidResource, ApiError> {
    resolve_references(resource, &mut AccessFinder(access)).await
}

/// Resolves the conditional creates and references of a Bundle's entries with the caller's
/// access (see the module's rules). A transaction fails with its first entry's error
/// (already naming the entry); for a batch, each entry's error, if any, is returned in its
/// place.
pub(crate) async fn resolve_bundle(
    access: &mut Access,
    entries: &mut [BundleEntry],
    atomic: bool,
) -> Result<Vec<Option<ApiError>>, ApiError> {
    let mut failed = resolve_conditions(entries, atomic, &mut AccessFinder(access)).await?;
    if atomic && let Some(e) = failed.iter_mut().find_map(Option::take) {
        return Err(e);
    }
    Ok(failed)
}

/// The one resource a conditional update or delete's query finds with the caller's access:
/// `None` for none, 412 for several.
async fn the_match(
    access: &mut Access,
    rtype: ResourceType,
    query: Option<&str>,
    what: &str,
) -> Result<Option<Id>, ApiError> {
    let pairs = parse_pairs(query.unwrap_or(""))?;
    if pairs.is_empty() {
        return Err(ApiError::BadRequest(format!(
            "a {what} of {rtype} needs an id (`{rtype}/{{id}}`) or a search (`{rtype}?...`)"
        )));
    }
    let query = condition_query(rtype, &pairs)?;
    let (total, found) = access.search(rtype, &query).await?;
    match (total, found.as_slice()) {
        (0, _) => Ok(None),
        (1, [one]) => Ok(Some(one.id.clone())),
        _ => Err(ApiError::Fhir(FhirError::MultipleMatches {
            path: format!("{rtype}?"),
            target: rtype.to_string(),
        })),
    }
}

/// `PUT [base]/Type?search`: conditional update.
pub(crate) async fn update(
    State(state): State<AppState>,
    mut access: Access,
    path: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let Path(t) = path.map_err(path_error)?;
    let rtype = rtype_of(&t)?;
    let expected = if_match(&headers)?;
    let bytes = json_body(&state, &headers, body).await?;
    let resource = state.validator.parse(&bytes, Some(rtype))?;
    let found = the_match(&mut access, rtype, query.as_deref(), "conditional update").await?;
    let id = match (found, resource.id()) {
        (Some(found), Some(body_id)) if body_id != found => {
            return Err(ApiError::BadRequest(
                "the resource's id is not the id of the resource the search found".to_owned(),
            ));
        }
        (Some(found), _) => found,
        // No match: an update-as-create of the body's id, decided like any PUT of it.
        (None, Some(body_id)) => body_id,
        (None, None) => {
            return create_resource(&state, &mut access, rtype, resource, None).await;
        }
    };
    let mut resource = resource;
    if resource.id().as_ref() != Some(&id) {
        resource.set_id(&id);
    }
    update_resource(&state, &mut access, rtype, &id, resource, expected).await
}

/// `DELETE [base]/Type?search`: conditional delete of one match.
pub(crate) async fn delete(
    State(state): State<AppState>,
    mut access: Access,
    path: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let Path(t) = path.map_err(path_error)?;
    let rtype = rtype_of(&t)?;
    match the_match(&mut access, rtype, query.as_deref(), "conditional delete").await? {
        Some(id) => delete_resource(&state, &mut access, rtype, &id).await,
        None => Ok(access.mark(StatusCode::NO_CONTENT.into_response())),
    }
}
