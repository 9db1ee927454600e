//! The FHIR REST routes: create, read, vread, update, delete, history, search, transaction
//! and batch, metadata.
//!
//! Path segments, headers and query strings are parsed here into typed values
//! ([`ResourceType`], [`Id`], versions, [`SearchQuery`]); bodies are read under the size
//! limit and validated by the [`phivault_fhir::Validator`]; every interaction is authorized
//! by [`guard`] before the store is asked; everything else is the store's. Every write passes
//! a [`RequestSink`], so its audit entries commit in its transaction (see `audit_sink`).

mod chain;
mod conditional;
pub(crate) mod guard;
mod http;
mod include;
mod links;
mod query;
mod searchset;
mod subset;
mod transaction;

use std::collections::{HashMap, HashSet};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::StreamExt;
use phivault_fhir::{
    FhirError, Id, Issue, IssueCode, ResourceType, SearchQuery, ValidResource, compartment_patient,
};
use phivault_policy::{Action, Consent, PolicyError, labels_of};
use phivault_store::{HistoryEntry, StoreError, StoredResource};
use serde_json::{Value, json};

pub(crate) use guard::{Access, Current, Facts, X_BREAK_GLASS, X_PURPOSE_OF_USE, is_directory};
use http::lenient;
pub(crate) use http::{require_form, require_json};
use links::resolve_patient_links;
pub(crate) use query::parse_pairs;
#[cfg(test)]
use query::percent_encode;
use query::query_string;

use crate::audit_sink::RequestSink;
use crate::error::fhir_json;
use crate::{ApiError, AppState};

/// Page size of history when `_count` is absent.
const DEFAULT_COUNT: usize = 50;
/// Largest page size.
const MAX_COUNT: usize = 1000;

/// The routes of the FHIR API (without fallbacks and layers).
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/fhir", post(transaction::transaction))
        .route("/fhir/", post(transaction::transaction))
        .route("/fhir/metadata", get(metadata))
        .route(
            "/fhir/{type}",
            get(search_get)
                .post(create)
                .put(conditional::update)
                .delete(conditional::delete),
        )
        .route("/fhir/{type}/_search", post(search_post).get(search_get))
        .route("/fhir/{type}/{id}", get(read).put(update).delete(delete))
        .route("/fhir/{type}/{id}/_history", get(history))
        .route("/fhir/{type}/{id}/_history/{vid}", get(vread))
        .route_layer(axum::middleware::from_fn(http::http_details))
}

/// Unknown path: 404 OperationOutcome.
pub(crate) async fn no_route() -> ApiError {
    ApiError::NotFound
}

/// Known path, wrong method: 405 OperationOutcome (axum adds `Allow`).
pub(crate) async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

// ---------------------------------------------------------------------------------------
// Path segments

pub(crate) fn path_error(_: PathRejection) -> ApiError {
    ApiError::BadRequest("the request path is malformed (invalid percent-encoding)".to_owned())
}

/// The answer to a malformed path, for handlers that answer a [`Response`].
pub(crate) fn path_error_response() -> Response {
    ApiError::BadRequest("the request path is malformed (invalid percent-encoding)".to_owned())
        .into_response()
}

pub(crate) fn rtype_of(s: &str) -> Result<ResourceType, ApiError> {
    Ok(ResourceType::parse(s)?)
}

fn id_of(s: &str) -> Result<Id, ApiError> {
    Ok(Id::parse(s)?)
}

fn version_of(s: &str) -> Result<u64, ApiError> {
    let bad = || {
        ApiError::BadRequest("the version in _history/{vid} must be a positive integer".to_owned())
    };
    if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    s.parse::<u64>().ok().filter(|v| *v > 0).ok_or_else(bad)
}

// ---------------------------------------------------------------------------------------
// Headers

/// `If-Match: W/"n"` (or `"n"`), if present.
pub(crate) fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let bad = || ApiError::BadRequest("If-Match must be a version ETag such as W/\"3\"".to_owned());
    let text = value.to_str().map_err(|_| bad())?.trim();
    let quoted = text.strip_prefix("W/").unwrap_or(text);
    let inner = quoted
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .ok_or_else(bad)?;
    version_of(inner).map(Some).map_err(|_| bad())
}

// ---------------------------------------------------------------------------------------
// Bodies

/// Reads the body, refusing more than `limit` bytes with 413 (from `Content-Length` before
/// reading when it is sent, else while reading).
pub(crate) async fn read_body(
    body: Body,
    headers: &HeaderMap,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<u64>().ok());
    if let Some(len) = declared
        && len > limit as u64
    {
        return Err(ApiError::BodyTooLarge { limit });
    }
    let mut stream = body.into_data_stream();
    let mut buf: Vec<u8> = Vec::with_capacity(declared.map_or(0, |n| n as usize));
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            crate::middleware::slow_body::timed_out(e).unwrap_or_else(|| {
                ApiError::BadRequest("the request body could not be read".to_owned())
            })
        })?;
        if buf.len().saturating_add(chunk.len()) > limit {
            return Err(ApiError::BodyTooLarge { limit });
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(buf))
}

/// A JSON body of a FHIR request, checked for type and size.
pub(crate) async fn json_body(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<Bytes, ApiError> {
    require_json(headers)?;
    read_body(body, headers, state.max_body_bytes).await
}

/// Parses JSON without quoting the input in the error (values are PHI).
fn parse_json(bytes: &[u8]) -> Result<Value, ApiError> {
    phivault_fhir::json::from_slice_unique(bytes).map_err(|e| {
        let what = match e.classify() {
            _ if phivault_fhir::json::is_duplicate_key(&e) => "duplicate object key",
            serde_json::error::Category::Eof => "unexpected end of input",
            serde_json::error::Category::Io => "unreadable input",
            serde_json::error::Category::Syntax | serde_json::error::Category::Data => {
                "syntax error"
            }
        };
        ApiError::Fhir(FhirError::MalformedJson(format!(
            "{what} at line {} column {}",
            e.line(),
            e.column()
        )))
    })
}

// ---------------------------------------------------------------------------------------
// Responses

pub(crate) fn base(state: &AppState) -> &str {
    state.base_url.trim_end_matches('/')
}

fn etag(version: u64) -> String {
    format!("W/\"{version}\"")
}

/// A FHIR instant as an HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`).
fn http_date(instant: &str) -> Option<String> {
    let t = time::OffsetDateTime::parse(instant, &time::format_description::well_known::Rfc3339)
        .ok()?
        .to_offset(time::UtcOffset::UTC);
    let format = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    t.format(&format).ok()
}

fn set_header(response: &mut Response, name: header::HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        response.headers_mut().insert(name, v);
    }
}

/// A resource with its `ETag` and `Last-Modified` (and `Location` when asked for).
pub(crate) fn resource_response(
    state: &AppState,
    status: StatusCode,
    stored: &StoredResource,
    location: bool,
) -> Response {
    let mut response = fhir_json(status, &stored.body);
    resource_headers(state, &mut response, stored, location);
    response
}

/// The 200 answer of a read whose body is served as it was stored: the decrypted JSON text,
/// not serialized again (only for a resource whose body was not changed since it was read).
pub(crate) fn as_stored_response(state: &AppState, stored: &StoredResource) -> Response {
    let Some(json) = stored.as_stored() else {
        return resource_response(state, StatusCode::OK, stored, false);
    };
    // The stored text and the body it parsed to say the same: a caller that changed the body
    // must not come here (the tests run with this check).
    debug_assert_eq!(
        serde_json::to_vec(&stored.body).ok().as_deref(),
        Some(json),
        "a changed body was served as stored"
    );
    let mut response = crate::error::fhir_json_bytes(StatusCode::OK, json.to_vec());
    resource_headers(state, &mut response, stored, false);
    response
}

/// The ETag, Last-Modified and (on a create) Location of a resource's answer.
fn resource_headers(
    state: &AppState,
    response: &mut Response,
    stored: &StoredResource,
    location: bool,
) {
    set_header(response, header::ETAG, &etag(stored.version));
    if let Some(date) = http_date(&stored.last_updated) {
        set_header(response, header::LAST_MODIFIED, &date);
    }
    if location {
        let url = format!(
            "{}/{}/{}/_history/{}",
            base(state),
            stored.rtype,
            stored.id,
            stored.version
        );
        set_header(response, header::LOCATION, &url);
    }
}

// ---------------------------------------------------------------------------------------
// Handlers

async fn create(
    State(state): State<AppState>,
    mut access: Access,
    path: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let Path(t) = path.map_err(path_error)?;
    let rtype = rtype_of(&t)?;
    let headers = conditional::query_condition(&headers, query.as_deref())?;
    let bytes = json_body(&state, &headers, body).await?;
    // A body id is ignored: on create the server assigns the id (the store stamps it).
    let resource = state.validator.parse(&bytes, Some(rtype))?;
    create_resource(&state, &mut access, rtype, resource, Some(&headers)).await
}

/// Creates `resource` (a POST, or a conditional update that matched nothing). With
/// `headers`, an `If-None-Exist` condition is searched once the create is decided.
pub(crate) async fn create_resource(
    state: &AppState,
    access: &mut Access,
    rtype: ResourceType,
    resource: ValidResource,
    headers: Option<&HeaderMap>,
) -> Result<Response, ApiError> {
    let mut resource = conditional::resolve_single(access, resource).await?;
    resolve_patient_links(state, access, &mut resource, &HashMap::new()).await?;
    check_consent(&resource)?;
    let creates_patient = rtype == ResourceType::PATIENT;
    // The id is chosen before the decision: a new Patient is decided on its own id.
    let new_id = Id::generate();
    let facts = if creates_patient {
        new_patient_facts(&resource, Some(&new_id))
    } else {
        Access::body_facts(&resource, &HashSet::new())
    };
    let proof = access.authorize_body(Action::Create, rtype, &facts).await?;
    check_consent_patient(state, &resource, &HashSet::new()).await?;
    if let Some(headers) = headers
        && let Some(found) = conditional::if_none_exist(access, rtype, headers).await?
    {
        return Ok(access.mark(resource_response(state, StatusCode::OK, &found, false)));
    }
    let sink = RequestSink::single_write(state, access.audit_slot());
    let stored = state
        .store
        .create_authorized(&proof, new_id, resource, &sink)
        .await?;
    sink.committed();
    if creates_patient {
        grant_creator(access, &stored.id).await;
    }
    Ok(access.mark(resource_response(state, StatusCode::CREATED, &stored, true)))
}

/// The facts of a Patient about to be created with a server-assigned id: a new patient
/// (`placeholder` stands for its id until the store assigns one).
fn new_patient_facts(resource: &ValidResource, placeholder: Option<&Id>) -> Facts {
    Facts {
        patient: Some(placeholder.cloned().unwrap_or_else(Id::generate)),
        labels: labels_of(resource.body()),
        new_patient: true,
    }
}

/// Gives a clinician who created a Patient a care relationship with it. The resource exists
/// already: a failure is logged, not answered (a retry would create a second patient), and an
/// administrator can grant access.
async fn grant_creator(access: &Access, patient: &Id) {
    if let Err(e) = access.grant_creator(patient).await {
        let reference = uuid::Uuid::new_v4().to_string();
        tracing::error!(
            reference = %reference,
            principal = %access.who().principal.id(),
            error = %e,
            "granting the creator of a new patient access to it failed"
        );
    }
}

async fn read(
    State(state): State<AppState>,
    mut access: Access,
    path: Result<Path<(String, String)>, PathRejection>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Path((t, i)) = path.map_err(path_error)?;
    let rtype = rtype_of(&t)?;
    let id = id_of(&i)?;
    let subset = subset::asked(rtype, query.as_deref(), &headers)?;
    let current = access.load(rtype, &id).await?;
    let proof = access
        .authorize_current(Action::Read, rtype, &current)
        .await?;
    match (current, proof) {
        (Current::Live(stored), Some(proof)) => {
            let stored = stored.release(&proof)?;
            Ok(access.mark(subset::response(&state, stored, subset.as_ref())))
        }
        (other, _) => Err(other.absent(rtype, &id)),
    }
}

async fn vread(
    State(state): State<AppState>,
    mut access: Access,
    path: Result<Path<(String, String, String)>, PathRejection>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Path((t, i, v)) = path.map_err(path_error)?;
    let rtype = rtype_of(&t)?;
    let id = id_of(&i)?;
    let version = version_of(&v)?;
    let subset = subset::asked(rtype, query.as_deref(), &headers)?;
    match state.store.vread_unreleased(rtype, &id, version).await {
        // Decided on the version asked for: it may lie in another compartment than the
        // current one.
        Ok(stored) => {
            let proof = access
                .authorize_stored(Action::Vread, stored.facts())
                .await?;
            let stored = stored.release(&proof)?;
            Ok(access.mark(subset::response(&state, stored, subset.as_ref())))
        }
        // No such version, a deletion, or a version that fails its integrity check: answered
        // only to who may read the resource (as currently stored); a refusal otherwise, the
        // same as for a resource that does not exist.
        Err(
            e @ (StoreError::NotFound { .. }
            | StoreError::VersionNotFound { .. }
            | StoreError::Gone { .. }
            | StoreError::Erased { .. }
            | StoreError::Integrity { .. }),
        ) => {
            let current = access.load(rtype, &id).await?;
            access
                .authorize_current(Action::Vread, rtype, &current)
                .await?;
            Err(e.into())
        }
        Err(e) => Err(e.into()),
    }
}

/// Authorizes an update of the resource as stored (`current`) and returns the action the new
/// body is decided for: `Update`, or `Create` when the resource never existed.
async fn authorize_replaced(
    access: &mut Access,
    rtype: ResourceType,
    current: &Current,
) -> Result<Action, ApiError> {
    match current {
        Current::Missing => Ok(Action::Create),
        current => {
            // Decides on the replaced version; the write itself is released by the decision
            // on the new body.
            access
                .authorize_current(Action::Update, rtype, current)
                .await?;
            Ok(Action::Update)
        }
    }
}

async fn update(
    State(state): State<AppState>,
    mut access: Access,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let Path((t, i)) = path.map_err(path_error)?;
    let rtype = rtype_of(&t)?;
    let id = id_of(&i)?;
    let expected = if_match(&headers)?;
    let bytes = json_body(&state, &headers, body).await?;
    let resource = state.validator.parse(&bytes, Some(rtype))?;
    match resource.id() {
        None => return Err(ApiError::MissingId),
        Some(body_id) if body_id != id => return Err(ApiError::IdMismatch),
        Some(_) => {}
    }
    update_resource(&state, &mut access, rtype, &id, resource, expected).await
}

/// Updates (or creates) `rtype/id` with `resource`, whose id is `id`.
pub(crate) async fn update_resource(
    state: &AppState,
    access: &mut Access,
    rtype: ResourceType,
    id: &Id,
    resource: ValidResource,
    expected: Option<u64>,
) -> Result<Response, ApiError> {
    let mut resource = conditional::resolve_single(access, resource).await?;
    resolve_patient_links(state, access, &mut resource, &HashMap::new()).await?;
    check_consent(&resource)?;
    // Both the stored resource and the new body: moving a resource into another compartment
    // needs the right on both.
    let current = access.load(rtype, id).await?;
    let action = authorize_replaced(access, rtype, &current).await?;
    let facts = Access::body_facts(&resource, &HashSet::new());
    let proof = access.authorize_body(action, rtype, &facts).await?;
    check_consent_patient(state, &resource, &HashSet::new()).await?;
    let sink = RequestSink::single_write(state, access.audit_slot());
    let (stored, created) = state
        .store
        .update_authorized(&proof, id, resource, expected, &sink)
        .await?;
    sink.committed();
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(access.mark(resource_response(state, status, &stored, created)))
}

async fn delete(
    State(state): State<AppState>,
    mut access: Access,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path((t, i)) = path.map_err(path_error)?;
    let rtype = rtype_of(&t)?;
    let id = id_of(&i)?;
    delete_resource(&state, &mut access, rtype, &id).await
}

/// Deletes `rtype/id`: 204 (also when already deleted).
pub(crate) async fn delete_resource(
    state: &AppState,
    access: &mut Access,
    rtype: ResourceType,
    id: &Id,
) -> Result<Response, ApiError> {
    let current = access.load(rtype, id).await?;
    let proof = access
        .authorize_current(Action::Delete, rtype, &current)
        .await?;
    let version = match (&current, proof) {
        (Current::Live(_), Some(proof)) => {
            let sink = RequestSink::single_write(state, access.audit_slot());
            let version = state
                .store
                .delete_authorized(&proof, rtype, id, &sink)
                .await?;
            sink.committed();
            version
        }
        // Deleting a deleted resource changes nothing (204); nothing to delete otherwise.
        (Current::Deleted { .. }, _) => None,
        (other, _) => return Err(other.absent(rtype, id)),
    };
    let mut response = StatusCode::NO_CONTENT.into_response();
    if let Some(v) = version {
        set_header(&mut response, header::ETAG, &etag(v));
    }
    Ok(access.mark(response))
}

/// `_count` / `_offset` of history, with the rules of search (`_count` from 1 to 1000);
/// other parameters are refused, or ignored when lenient.
fn history_paging(pairs: &[(String, String)], lenient: bool) -> Result<(usize, usize), ApiError> {
    let mut count = DEFAULT_COUNT;
    let mut offset = 0usize;
    for (name, value) in pairs {
        let bad = |message: String| {
            ApiError::Fhir(FhirError::BadSearchValue {
                param: name.clone(),
                message,
            })
        };
        match name.as_str() {
            "_count" => {
                count = value
                    .trim()
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_COUNT).contains(n))
                    .ok_or_else(|| bad(format!("must be an integer from 1 to {MAX_COUNT}")))?;
            }
            "_offset" => {
                offset = value
                    .trim()
                    .parse::<usize>()
                    .map_err(|_| bad("must be a non-negative integer".to_owned()))?;
            }
            "_format" | "_summary" | "_elements" => {}
            _ if lenient => {}
            other => {
                return Err(ApiError::Fhir(FhirError::UnknownSearchParam(
                    other.chars().take(64).collect(),
                )));
            }
        }
    }
    Ok((count, offset))
}

fn history_entry(state: &AppState, rtype: ResourceType, id: &Id, h: HistoryEntry) -> Value {
    let full_url = format!("{}/{}/{}", base(state), rtype, id);
    let (method, url, status) = if h.deleted {
        ("DELETE", format!("{rtype}/{id}"), "204 No Content")
    } else if h.version == 1 {
        ("POST", rtype.to_string(), "201 Created")
    } else {
        ("PUT", format!("{rtype}/{id}"), "200 OK")
    };
    let mut entry = json!({
        "fullUrl": full_url,
        "request": { "method": method, "url": url },
        "response": {
            "status": status,
            "etag": etag(h.version),
            "lastModified": h.last_updated,
        },
    });
    if let Some(body) = h.body {
        entry["resource"] = body;
    }
    entry
}

async fn history(
    State(state): State<AppState>,
    mut access: Access,
    path: Result<Path<(String, String)>, PathRejection>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Path((t, i)) = path.map_err(path_error)?;
    let rtype = rtype_of(&t)?;
    let id = id_of(&i)?;
    let pairs = parse_pairs(query.as_deref().unwrap_or(""))?;
    let (count, offset) = history_paging(&pairs, lenient(&headers))?;
    let subset = subset::asked(rtype, query.as_deref(), &headers)?;
    let current = access.load(rtype, &id).await?;
    let proof = access
        .authorize_current(Action::History, rtype, &current)
        .await?;
    let (total, unreleased) = state
        .store
        .history_unreleased(rtype, &id, count, offset)
        .await?;
    // Older versions may lie in another compartment, or carry other labels: each is decided
    // on its own (a deletion, which has no body, goes with the decision on the resource).
    let mut versions = Vec::with_capacity(unreleased.len());
    for version in unreleased {
        if version.facts().has_body() {
            let own = access
                .authorize_stored(Action::History, version.facts())
                .await?;
            versions.push(version.release(&own)?);
        } else {
            let Some(proof) = &proof else {
                return Err(current.absent(rtype, &id));
            };
            versions.push(version.release(proof)?);
        }
    }
    let link = |offset: usize| {
        format!(
            "{}/{}/{}/_history?_count={count}&_offset={offset}{}",
            base(&state),
            rtype,
            id,
            subset::link_suffix(subset.as_ref())
        )
    };
    let mut links = vec![json!({ "relation": "self", "url": link(offset) })];
    if (offset.saturating_add(count) as u64) < total {
        links.push(json!({ "relation": "next", "url": link(offset + count) }));
    }
    let entries: Vec<Value> = versions
        .into_iter()
        .map(|h| subset::history_entry(&state, rtype, &id, h, subset.as_ref()))
        .collect();
    let bundle = json!({
        "resourceType": "Bundle",
        "id": uuid::Uuid::new_v4().to_string(),
        "type": "history",
        "total": total,
        "link": links,
        "entry": entries,
    });
    Ok(access.mark(fhir_json(StatusCode::OK, &bundle)))
}

async fn search_get(
    State(state): State<AppState>,
    mut access: Access,
    path: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Path(t) = path.map_err(path_error)?;
    let rtype = rtype_of(&t)?;
    let pairs = parse_pairs(query.as_deref().unwrap_or(""))?;
    search(&state, &mut access, rtype, &pairs, &headers).await
}

async fn search_post(
    State(state): State<AppState>,
    mut access: Access,
    path: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let Path(t) = path.map_err(path_error)?;
    let rtype = rtype_of(&t)?;
    require_form(&headers)?;
    let bytes = read_body(body, &headers, state.max_body_bytes).await?;
    let form = std::str::from_utf8(&bytes)
        .map_err(|_| ApiError::BadRequest("the form body is not valid UTF-8".to_owned()))?;
    let mut pairs = parse_pairs(query.as_deref().unwrap_or(""))?;
    pairs.extend(parse_pairs(form)?);
    search(&state, &mut access, rtype, &pairs, &headers).await
}

async fn search(
    state: &AppState,
    access: &mut Access,
    rtype: ResourceType,
    pairs: &[(String, String)],
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let (includes, pairs) = phivault_fhir::split_includes(rtype, pairs)?;
    let (chains, pairs) = phivault_fhir::split_chains(rtype, &pairs)?;
    let mut query = SearchQuery::parse(rtype, &pairs, lenient(headers))?;
    let echo = searchset::LinkEcho {
        ids: query.ids.clone(),
        pairs: chains
            .has
            .iter()
            .map(|h| h.written.clone())
            .chain(includes.iter().map(phivault_fhir::Include::pair))
            .collect(),
    };
    let (total, mut resources) = if chains.is_empty() {
        access.search(rtype, &query).await?
    } else {
        // The search asked for is decided before anything is looked up for it.
        access.authorize_query(rtype).await?;
        if chain::restrict(access, rtype, &chains, &mut query).await? {
            access.search(rtype, &query).await?
        } else {
            (0, Vec::new())
        }
    };
    let mut included = include::included(state, access, rtype, &includes, &resources).await?;
    subset::matches(query.subset.as_ref(), &mut resources);
    subset::included(query.subset.as_ref(), &mut included);
    let bundle = searchset::searchset(state, rtype, &query, &echo, total, resources, included);
    Ok(access.mark(fhir_json(StatusCode::OK, &bundle)))
}

/// The `match` entries of a searchset.
pub(crate) fn match_entries(state: &AppState, resources: Vec<StoredResource>) -> Vec<Value> {
    resources
        .into_iter()
        .map(|r| {
            json!({
                "fullUrl": format!("{}/{}/{}", base(state), r.rtype, r.id),
                "resource": r.body,
                "search": { "mode": "match" },
            })
        })
        .collect()
}

/// The checks of a Consent body made before any decision: it names a patient, and its
/// provisions are ones this server can apply (422 naming the problem's path).
fn check_consent(resource: &ValidResource) -> Result<(), ApiError> {
    if resource.resource_type().as_str() != "Consent" {
        return Ok(());
    }
    let unprocessable = |code, path: &str, message: &str| {
        ApiError::Fhir(FhirError::Invalid(vec![Issue {
            code,
            path: path.to_owned(),
            message: message.to_owned(),
        }]))
    };
    if compartment_patient(resource).is_none() {
        return Err(unprocessable(
            IssueCode::Required,
            "Consent.patient",
            "a Consent needs a patient: a reference `Patient/{id}`",
        ));
    }
    match Consent::parse(resource.body()) {
        Ok(_) => Ok(()),
        Err(PolicyError::InvalidConsent { path, message }) => {
            Err(unprocessable(IssueCode::Invalid, &path, &message))
        }
        Err(other) => Err(ApiError::internal(&other)),
    }
}

/// The check of a Consent body made once the write is authorized (so that only a principal
/// who may write in that compartment learns whether the patient exists): its patient exists
/// (or is created by the same transaction, `new_patients`). 422 otherwise.
async fn check_consent_patient(
    state: &AppState,
    resource: &ValidResource,
    new_patients: &HashSet<Id>,
) -> Result<(), ApiError> {
    if resource.resource_type().as_str() != "Consent" {
        return Ok(());
    }
    let Some(patient) = compartment_patient(resource) else {
        return Ok(());
    };
    if new_patients.contains(&patient) {
        return Ok(());
    }
    // Whether the patient exists; nothing of it is returned.
    let message = match state
        .store
        .read_unreleased(ResourceType::PATIENT, &patient)
        .await
    {
        Ok(_) => return Ok(()),
        Err(StoreError::NotFound { .. }) => "the Consent's patient does not exist",
        Err(StoreError::Gone { .. }) => "the Consent's patient was deleted",
        Err(e) => return Err(e.into()),
    };
    Err(ApiError::Fhir(FhirError::Invalid(vec![Issue {
        code: IssueCode::NotFound,
        path: "Consent.patient".to_owned(),
        message: message.to_owned(),
    }])))
}

async fn metadata(State(state): State<AppState>) -> Response {
    fhir_json(
        StatusCode::OK,
        &crate::capability::capability_statement(base(&state)),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(version_of("1").unwrap(), 1);
        assert_eq!(version_of("42").unwrap(), 42);
        for bad in ["0", "", "-1", "+1", "1.0", "abc", "99999999999999999999"] {
            assert!(version_of(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn if_match_forms() {
        let mut h = HeaderMap::new();
        assert_eq!(if_match(&h).unwrap(), None);
        h.insert(header::IF_MATCH, HeaderValue::from_static("W/\"3\""));
        assert_eq!(if_match(&h).unwrap(), Some(3));
        h.insert(header::IF_MATCH, HeaderValue::from_static("\"4\""));
        assert_eq!(if_match(&h).unwrap(), Some(4));
        for bad in ["3", "W/3", "*", "W/\"x\"", "W/\"0\""] {
            h.insert(header::IF_MATCH, HeaderValue::from_static(bad));
            assert!(if_match(&h).is_err(), "{bad}");
        }
    }

    #[test]
    fn query_pairs() {
        let pairs = parse_pairs("family=M%C3%BCller&given=a+b&&x&_count=2").unwrap();
        assert_eq!(
            pairs,
            vec![
                ("family".to_owned(), "Müller".to_owned()),
                ("given".to_owned(), "a b".to_owned()),
                ("x".to_owned(), String::new()),
                ("_count".to_owned(), "2".to_owned()),
            ]
        );
        assert!(parse_pairs("a=%zz").is_err());
        assert!(parse_pairs("a=%C3").is_err());
        assert!(parse_pairs("a=%4").is_err());
        assert_eq!(
            percent_encode("http://x|a b&c=d"),
            "http://x%7Ca%20b%26c%3Dd"
        );
    }

    #[test]
    fn http_dates() {
        assert_eq!(
            http_date("2024-03-05T07:08:09.123Z").unwrap(),
            "Tue, 05 Mar 2024 07:08:09 GMT"
        );
        assert_eq!(
            http_date("2024-03-05T09:08:09+02:00").unwrap(),
            "Tue, 05 Mar 2024 07:08:09 GMT"
        );
        assert!(http_date("yesterday").is_none());
    }

    #[test]
    fn history_paging_rules() {
        assert_eq!(history_paging(&[], false).unwrap(), (50, 0));
        let p = vec![
            ("_count".to_owned(), "1000".to_owned()),
            ("_offset".to_owned(), "7".to_owned()),
        ];
        assert_eq!(history_paging(&p, false).unwrap(), (1000, 7));
        for bad in ["0", "1001", "-1"] {
            let p = vec![("_count".to_owned(), bad.to_owned())];
            assert!(history_paging(&p, false).is_err(), "{bad}");
        }
        let bad = vec![("_since".to_owned(), "2020".to_owned())];
        assert!(history_paging(&bad, false).is_err());
        assert!(history_paging(&bad, true).is_ok());
        let bad = vec![("_count".to_owned(), "x".to_owned())];
        assert!(history_paging(&bad, true).is_err());
    }
}
