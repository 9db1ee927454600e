//! Bulk Data export (FHIR Bulk Data Access IG v2): `GET [base]/$export` (every type),
//! `GET [base]/Patient/$export` (the Patient compartment types of every patient) and
//! `GET [base]/Group/{id}/$export` (those of the Group's `member.entity` Patients), with the
//! asynchronous request pattern: a 202 kick-off naming a status URL, the status URL
//! (`[base]/$export-status/{job}`: 202 with `X-Progress` and `Retry-After` while running, 200
//! with the completion manifest when done, `DELETE` to cancel and remove), and one
//! `application/fhir+ndjson` file per type (`[base]/$export-file/{job}/{Type}.ndjson`).
//!
//! Rules kept here:
//! - **Only principals that may read across patients start an export**: SMART backend
//!   services (a client token with a `system/` scope and no launch patient) and researchers
//!   (whose searches the policies decide: the default policies let researchers search
//!   nothing, so their kick-off is refused). Everyone else gets 403 before anything is read.
//! - **Every exported resource is a search hit of the principal.** Each type is read page by
//!   page (`_count` 1000) through [`Access::search`], as the principal, with the request's
//!   purpose of use: the query-level decision, the SQL scope (consents, labels, scopes), then
//!   every hit decided again. So an export holds exactly what the principal could have
//!   searched for, and every patient whose data it holds is named in the kick-off's audit
//!   entry (each finds the export in their access log). A type the principal may not search
//!   is left out of a whole-server export, and refused (403) when named in `_type`.
//! - **The export runs during the kick-off request**, so its decisions and its audit entry
//!   are those of the request; the client still sees the asynchronous protocol (202, a
//!   status URL, a manifest). Status, download and cancel are audited requests of their own.
//! - **Output is PHI: never on disk.** Files are held in memory only (zeroed when a job is
//!   cancelled or expires; a downloaded file's buffer is handed to the response),
//!   bounded per export ([`BulkLimits::max_resources`], [`BulkLimits::max_bytes`]: a larger
//!   export is refused with 400 asking to narrow it) and in number
//!   ([`BulkLimits::max_jobs`]); a file is removed once downloaded, a job when cancelled or
//!   after [`BulkLimits::expiry`]. Nothing survives a restart.
//! - **A job is its owner's.** Only the principal that started it (same kind and id) may
//!   poll, download or cancel it; to everyone else its URLs answer 404, as for a job that
//!   does not exist. Job ids are random UUIDs.
//! - **A job lives on the node that ran the kick-off.** Behind a load balancer the job id
//!   names that node (`<node id>.<uuid>`) so the balancer can send its status, download and
//!   cancel requests there (docs/deploy.md has the rule); a node asked for another node's
//!   job answers 404 naming the node, never another job.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{OriginalUri, Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use phivault_fhir::{Id, ResourceType, SearchQuery, compartment_params};
use phivault_policy::{Action, PrincipalKind, Role, ScopeContext};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use zeroize::Zeroizing;

use crate::edge::Who;
use crate::error::fhir_json;
use crate::fhir_routes::{Access, Current, base, parse_pairs, path_error};
use crate::portability::NDJSON;
use crate::routes::research_export;
use crate::{ApiError, AppState};

/// Page size of the searches an export runs.
const PAGE: usize = 1000;

/// References per search when an export is limited to a Group's members.
const PER_QUERY: usize = 100;

/// The `_outputFormat` values accepted (all mean NDJSON).
const OUTPUT_FORMATS: &[&str] = &["application/fhir+ndjson", "application/ndjson", "ndjson"];

/// Bounds on exports held in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BulkLimits {
    /// Most resources in one export.
    pub max_resources: usize,
    /// Most bytes of NDJSON in one export.
    pub max_bytes: usize,
    /// Most exports held at once (over all principals).
    pub max_jobs: usize,
    /// How long a finished export stays available.
    pub expiry: Duration,
}

impl Default for BulkLimits {
    fn default() -> Self {
        BulkLimits {
            max_resources: 100_000,
            max_bytes: 256 * 1024 * 1024,
            max_jobs: 16,
            expiry: Duration::from_secs(3600),
        }
    }
}

/// Who started a job.
#[derive(Clone, PartialEq, Eq)]
struct Owner {
    kind: PrincipalKind,
    id: String,
}

impl Owner {
    fn of(who: &phivault_auth::Authenticated) -> Owner {
        Owner {
            kind: who.principal.kind(),
            id: who.principal.id().to_owned(),
        }
    }
}

/// One finished export.
struct Job {
    owner: Owner,
    created: Instant,
    /// The completion manifest.
    manifest: Value,
    /// NDJSON by file name; removed once downloaded.
    files: HashMap<String, Zeroizing<Vec<u8>>>,
}

/// The Bulk Data exports held in memory (see the module's rules).
pub struct BulkJobs {
    limits: BulkLimits,
    /// The node id the job ids begin with (none: bare UUIDs, a process not in a cluster).
    node: Option<String>,
    jobs: Mutex<HashMap<String, Job>>,
}

impl std::fmt::Debug for BulkJobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BulkJobs")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl BulkJobs {
    /// No exports yet, with these bounds.
    pub fn new(limits: BulkLimits) -> BulkJobs {
        BulkJobs {
            limits,
            node: None,
            jobs: Mutex::new(HashMap::new()),
        }
    }

    /// No exports yet, with the same bounds, job ids naming `node` (a serving node's).
    pub(crate) fn for_node(&self, node: &str) -> BulkJobs {
        BulkJobs {
            limits: self.limits,
            node: Some(node.to_owned()),
            jobs: Mutex::new(HashMap::new()),
        }
    }

    /// A fresh job id: `<node id>.<uuid>`, or a bare UUID outside a cluster.
    fn new_job_id(&self) -> String {
        let id = uuid::Uuid::new_v4();
        match &self.node {
            Some(node) => format!("{node}.{id}"),
            None => id.to_string(),
        }
    }

    /// The job id of a path's segment, or the 404 of an unknown job (naming the node that
    /// holds it when that is another node, for the operator whose balancer sent it here).
    fn job_of(&self, text: &str) -> Result<String, ApiError> {
        let (node, id) = match text.rsplit_once('.') {
            Some((node, id)) => (Some(node), id),
            None => (None, text),
        };
        let id = uuid::Uuid::parse_str(id).map_err(|_| unknown_job())?;
        match (node, self.node.as_deref()) {
            (None, None) => Ok(id.to_string()),
            (Some(asked), Some(mine)) if asked == mine => Ok(format!("{mine}.{id}")),
            (Some(asked), _) if crate::is_node_id(asked) => Err(ApiError::Missing(format!(
                "no such export on this node: export jobs are held by the node that \
                     started them ({asked}); the load balancer must send $export-status and \
                     $export-file requests to that node"
            ))),
            _ => Err(unknown_job()),
        }
    }

    /// The jobs, expired ones removed (and their files zeroed).
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Job>> {
        // Entries are inserted and removed whole: a poisoned map is still consistent.
        let mut jobs = self
            .jobs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let expiry = self.limits.expiry;
        jobs.retain(|_, j| j.created.elapsed() < expiry);
        jobs
    }
}

/// The routes. Their static segments take precedence over `/fhir/{type}/...`.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/fhir/$export", get(system_export))
        .route("/fhir/Patient/$export", get(patient_export))
        .route("/fhir/Group/{id}/$export", get(group_export))
        .route("/fhir/$export-status/{job}", get(status).delete(cancel))
        .route("/fhir/$export-file/{job}/{file}", get(download))
}

/// What an export covers.
enum Level {
    /// Every type.
    System,
    /// The compartment types of every patient.
    Patients,
    /// The compartment types of these patients.
    Members(Vec<Id>),
}

async fn system_export(
    State(state): State<AppState>,
    mut access: Access,
    headers: HeaderMap,
    uri: OriginalUri,
    RawQuery(query): RawQuery,
) -> Response {
    let result = kick_off(&state, &mut access, &headers, &uri, Level::System, query).await;
    answer(result.map(|r| access.mark(r)))
}

async fn patient_export(
    State(state): State<AppState>,
    mut access: Access,
    headers: HeaderMap,
    uri: OriginalUri,
    RawQuery(query): RawQuery,
) -> Response {
    let result = kick_off(&state, &mut access, &headers, &uri, Level::Patients, query).await;
    answer(result.map(|r| access.mark(r)))
}

async fn group_export(
    State(state): State<AppState>,
    mut access: Access,
    headers: HeaderMap,
    uri: OriginalUri,
    path: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
) -> Response {
    let result = async {
        let Path(raw) = path.map_err(path_error)?;
        let group = Id::parse(&raw)?;
        // The principal is checked before the Group is looked up.
        eligible(&access)?;
        let members = group_members(&mut access, &group).await?;
        kick_off(
            &state,
            &mut access,
            &headers,
            &uri,
            Level::Members(members),
            query,
        )
        .await
    }
    .await;
    answer(result.map(|r| access.mark(r)))
}

fn answer(result: Result<Response, ApiError>) -> Response {
    match result {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// Refuses principals that may not read across patients.
fn eligible(access: &Access) -> Result<(), ApiError> {
    let principal = &access.who().principal;
    let ok = match principal.kind() {
        PrincipalKind::Client => {
            principal.launch_patient().is_none()
                && principal.scopes().is_some_and(|s| {
                    s.data_scopes()
                        .iter()
                        .any(|s| s.context() == ScopeContext::System)
                })
        }
        PrincipalKind::User => principal.role() == Role::Researcher,
    };
    if ok {
        Ok(())
    } else {
        Err(ApiError::Forbidden(
            "access denied: bulk export is for backend services (a client token with system/ \
             scopes) and researchers; others read patient by patient"
                .to_owned(),
        ))
    }
}

/// The Patients a Group names in `member.entity`, the Group decided like a read.
async fn group_members(access: &mut Access, group: &Id) -> Result<Vec<Id>, ApiError> {
    let rtype = ResourceType::parse("Group")?;
    let current = access.load(rtype, group).await?;
    let proof = access
        .authorize_current(Action::Read, rtype, &current)
        .await?;
    let body = match (current, proof) {
        (Current::Live(stored), Some(proof)) => stored.release(&proof)?.body,
        (other, _) => return Err(other.absent(rtype, group)),
    };
    let mut members = Vec::new();
    for m in body["member"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
        if let Some(id) = m["entity"]["reference"]
            .as_str()
            .and_then(|r| r.strip_prefix("Patient/"))
            .and_then(|id| Id::parse(id).ok())
            && !members.contains(&id)
        {
            members.push(id);
        }
    }
    Ok(members)
}

/// The kick-off's parameters.
struct Request {
    /// Named in `_type` (else every type of the level).
    types: Option<Vec<ResourceType>>,
    since: Option<OffsetDateTime>,
    /// `_typeFilter`: per type, searches whose hits alone are exported (any of them).
    filters: HashMap<ResourceType, Vec<Vec<(String, String)>>>,
    /// `deidentification`: the research project whose de-identification the export goes
    /// through (see `routes::research_export`).
    deidentification: Option<String>,
}

/// Result parameters a `_typeFilter` search may not carry: the export pages, orders and
/// shapes its own output.
const NOT_IN_TYPE_FILTER: &[&str] = &[
    "_count",
    "_offset",
    "_sort",
    "_summary",
    "_elements",
    "_total",
    "_totalMethod",
    "_include",
    "_revinclude",
    "_contained",
    "_containedType",
    "_format",
];

/// One `_typeFilter` value (`Type?search`, itself URL-encoded): its type and its query pairs,
/// checked as that type's search would be (unknown parameters and malformed values: 400).
fn parse_type_filter(value: &str) -> Result<(ResourceType, Vec<(String, String)>), ApiError> {
    let bad = |why: &str| {
        ApiError::BadRequest(format!(
            "_typeFilter: {why} (a filter is Type?search, for example Observation%3Fstatus%3Dfinal)"
        ))
    };
    let (t, query) = value
        .split_once('?')
        .ok_or_else(|| bad("no `?` between the type and its search"))?;
    let rtype = ResourceType::parse(t.trim())
        .map_err(|_| bad("the filter does not start with a resource type this server stores"))?;
    let pairs = parse_pairs(query)?;
    if pairs.is_empty() {
        return Err(bad("the filter has no search parameter"));
    }
    if let Some((name, _)) = pairs
        .iter()
        .find(|(n, _)| NOT_IN_TYPE_FILTER.contains(&n.split(':').next().unwrap_or_default()))
    {
        return Err(bad(&format!(
            "`{}` is a result parameter, not a search parameter",
            name.chars().take(64).collect::<String>()
        )));
    }
    SearchQuery::parse(rtype, &pairs, false)
        .map_err(|e| ApiError::BadRequest(format!("_typeFilter: {e}")))?;
    Ok((rtype, pairs))
}

fn parse_request(query: Option<&str>) -> Result<Request, ApiError> {
    let mut request = Request {
        types: None,
        since: None,
        filters: HashMap::new(),
        deidentification: None,
    };
    for (name, value) in parse_pairs(query.unwrap_or(""))? {
        match name.as_str() {
            "_outputFormat" => {
                if !OUTPUT_FORMATS.contains(&value.as_str()) {
                    return Err(ApiError::BadRequest(format!(
                        "_outputFormat: only {} are supported",
                        OUTPUT_FORMATS.join(", ")
                    )));
                }
            }
            "_type" => {
                let mut types = request.types.take().unwrap_or_default();
                for t in value.split(',').map(str::trim) {
                    let t = ResourceType::parse(t).map_err(|_| {
                        ApiError::BadRequest(format!(
                            "_type: `{}` is not a resource type this server stores",
                            t.chars().take(64).collect::<String>()
                        ))
                    })?;
                    if !types.contains(&t) {
                        types.push(t);
                    }
                }
                request.types = Some(types);
            }
            "_since" => {
                let since = OffsetDateTime::parse(&value, &Rfc3339).map_err(|_| {
                    ApiError::BadRequest(
                        "_since must be a FHIR instant with a time zone, such as \
                         2024-01-01T00:00:00Z"
                            .to_owned(),
                    )
                })?;
                request.since = Some(since);
            }
            "_typeFilter" => {
                // Filters are separated by commas; a comma inside one arrives encoded (%2C).
                for filter in value.split(',').filter(|f| !f.trim().is_empty()) {
                    let (rtype, pairs) = parse_type_filter(filter)?;
                    request.filters.entry(rtype).or_default().push(pairs);
                }
            }
            "deidentification" => request.deidentification = Some(value),
            _ => {
                return Err(ApiError::BadRequest(format!(
                    "$export takes _outputFormat, _type, _since, _typeFilter and \
                     deidentification, not `{}` (no _elements or includeAssociatedData)",
                    name.chars().take(64).collect::<String>()
                )));
            }
        }
    }
    if request.deidentification.is_some()
        && (request.since.is_some() || !request.filters.is_empty())
    {
        return Err(ApiError::BadRequest(
            "a de-identified export (deidentification) takes _type only: _since and \
             _typeFilter would select by values the recipient must not see"
                .to_owned(),
        ));
    }
    if let Some(types) = &request.types
        && let Some(t) = request.filters.keys().find(|t| !types.contains(t))
    {
        return Err(ApiError::BadRequest(format!(
            "_typeFilter: {t} is not among the types named in _type"
        )));
    }
    Ok(request)
}

/// Whether `Prefer` asks for `respond-async`.
fn respond_async(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::HeaderName::from_static("prefer"))
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([',', ';']))
        .any(|p| p.trim().eq_ignore_ascii_case("respond-async"))
}

/// Files being written, and the limits they must stay within.
struct Output {
    limits: BulkLimits,
    since: Option<OffsetDateTime>,
    files: BTreeMap<&'static str, (Zeroizing<Vec<u8>>, usize)>,
    resources: usize,
    bytes: usize,
}

impl Output {
    /// Adds one resource as a line of its type's file, unless `_since` leaves it out.
    fn add(
        &mut self,
        rtype: ResourceType,
        r: &phivault_store::StoredResource,
    ) -> Result<(), ApiError> {
        if let Some(since) = self.since {
            let updated = OffsetDateTime::parse(&r.last_updated, &Rfc3339)
                .map_err(|_| ApiError::internal(&"a stored meta.lastUpdated is not an instant"))?;
            if updated <= since {
                return Ok(());
            }
        }
        let line = Zeroizing::new(serde_json::to_vec(&r.body).map_err(|e| ApiError::internal(&e))?);
        self.resources += 1;
        self.bytes = self.bytes.saturating_add(line.len() + 1);
        if self.resources > self.limits.max_resources || self.bytes > self.limits.max_bytes {
            return Err(ApiError::BadRequest(format!(
                "this export exceeds the server's limit of {} resources or {} bytes: narrow it \
                 with _type or _since, or export by Group",
                self.limits.max_resources, self.limits.max_bytes
            )));
        }
        let (file, count) = self.files.entry(rtype.as_str()).or_default();
        file.extend_from_slice(&line);
        file.push(b'\n');
        *count += 1;
        Ok(())
    }
}

/// Reads every page of a search of `rtype` with `pairs` as the principal into `out`, each
/// resource once (`seen`). `Ok(false)` when the principal may not search the type.
async fn export_search(
    access: &mut Access,
    rtype: ResourceType,
    pairs: &[(String, String)],
    seen: &mut HashSet<Id>,
    out: &mut Output,
) -> Result<bool, ApiError> {
    let mut query = SearchQuery::parse(rtype, pairs, false)?;
    query.count = PAGE;
    query.offset = 0;
    loop {
        let (total, page) = match access.search(rtype, &query).await {
            Ok(found) => found,
            Err(ApiError::Forbidden(_)) => return Ok(false),
            Err(e) => return Err(e),
        };
        let read = page.len();
        for r in &page {
            if seen.insert(r.id.clone()) {
                out.add(rtype, r)?;
            }
        }
        query.offset = query.offset.saturating_add(read);
        if read == 0 || u64::try_from(query.offset).unwrap_or(u64::MAX) >= total {
            return Ok(true);
        }
    }
}

/// Exports `rtype` at `level` into `out`: the hits of any of `filters` (`_typeFilter`
/// searches of the type; none: every resource of the level). `Ok(false)` when the principal
/// may not search it.
async fn export_type(
    access: &mut Access,
    rtype: ResourceType,
    level: &Level,
    filters: Option<&Vec<Vec<(String, String)>>>,
    out: &mut Output,
) -> Result<bool, ApiError> {
    let unfiltered = vec![Vec::new()];
    let filters = filters.unwrap_or(&unfiltered);
    // A resource matching several filters is exported once.
    let mut seen = HashSet::new();
    let mut allowed = true;
    for filter in filters {
        allowed &= export_filtered(access, rtype, level, filter, &mut seen, out).await?;
    }
    Ok(allowed)
}

/// Exports the hits of one search of `rtype` (`filter`, possibly empty) at `level`.
async fn export_filtered(
    access: &mut Access,
    rtype: ResourceType,
    level: &Level,
    filter: &[(String, String)],
    seen: &mut HashSet<Id>,
    out: &mut Output,
) -> Result<bool, ApiError> {
    let Level::Members(members) = level else {
        return export_search(access, rtype, filter, seen, out).await;
    };
    let mut allowed = true;
    for chunk in members.chunks(PER_QUERY) {
        let pairs: Vec<Vec<(String, String)>> = if rtype == ResourceType::PATIENT {
            let ids: Vec<&str> = chunk.iter().map(Id::as_str).collect();
            vec![vec![("_id".to_owned(), ids.join(","))]]
        } else {
            let refs: Vec<String> = chunk.iter().map(|p| format!("Patient/{p}")).collect();
            compartment_params(rtype)
                .iter()
                .map(|param| vec![((*param).to_owned(), refs.join(","))])
                .collect()
        };
        for mut p in pairs {
            p.extend(filter.iter().cloned());
            allowed &= export_search(access, rtype, &p, seen, out).await?;
        }
    }
    Ok(allowed)
}

async fn kick_off(
    state: &AppState,
    access: &mut Access,
    headers: &HeaderMap,
    uri: &OriginalUri,
    level: Level,
    query: Option<String>,
) -> Result<Response, ApiError> {
    if !respond_async(headers) {
        return Err(ApiError::BadRequest(
            "$export is asynchronous: send the header Prefer: respond-async".to_owned(),
        ));
    }
    eligible(access)?;
    let request = parse_request(query.as_deref())?;
    // A research export covers patients' data only, at every level.
    let compartment_only = !matches!(level, Level::System) || request.deidentification.is_some();
    let (types, named) = match request.types.clone() {
        Some(types) => (types, true),
        None => (
            ResourceType::all()
                .filter(|t| !compartment_only || t.in_patient_compartment())
                .collect(),
            false,
        ),
    };
    if compartment_only && let Some(t) = types.iter().find(|t| !t.in_patient_compartment()) {
        return Err(ApiError::BadRequest(
            if request.deidentification.is_some() {
                format!(
                    "_type: {t} is not in the Patient compartment; a de-identified export covers \
                 only patients' data"
                )
            } else {
                format!(
                    "_type: {t} is not in the Patient compartment; a Patient or Group export \
                 covers only compartment types (use [base]/$export for the others)"
                )
            },
        ));
    }
    {
        let jobs = state.bulk.lock();
        if jobs.len() >= state.bulk.limits.max_jobs {
            return Err(ApiError::Throttled { retry_after: 60 });
        }
    }
    let transaction_time = OffsetDateTime::now_utc();
    let (files, extension) = match &request.deidentification {
        Some(project) => {
            let members = match &level {
                Level::Members(m) => Some(m.as_slice()),
                Level::System | Level::Patients => None,
            };
            let out = research_export::export(
                &state.research,
                project,
                access,
                &types,
                members,
                state.bulk.limits,
            )
            .await?;
            (out.files, Some(json!({ "deidentification": out.report })))
        }
        None => (
            identified(access, types, named, &level, &request, state.bulk.limits).await?,
            None,
        ),
    };
    finish(state, access, uri, transaction_time, files, extension)
}

/// Reads an identified export: every type the principal may search, as its searches.
async fn identified(
    access: &mut Access,
    types: Vec<ResourceType>,
    named: bool,
    level: &Level,
    request: &Request,
    limits: BulkLimits,
) -> Result<BTreeMap<&'static str, (Zeroizing<Vec<u8>>, usize)>, ApiError> {
    let mut out = Output {
        limits,
        since: request.since,
        files: BTreeMap::new(),
        resources: 0,
        bytes: 0,
    };
    // Decided per type before anything is read: a type named in `_type` that may not be
    // searched refuses the export; unnamed ones are left out.
    let mut allowed = Vec::with_capacity(types.len());
    for rtype in types {
        match access.authorize_query(rtype).await {
            Ok(()) => allowed.push(rtype),
            Err(ApiError::Forbidden(_)) if !named => {}
            Err(ApiError::Forbidden(_)) => {
                return Err(ApiError::Forbidden(format!(
                    "access denied: {rtype} may not be exported by this principal"
                )));
            }
            Err(e) => return Err(e),
        }
    }
    if allowed.is_empty() {
        return Err(ApiError::Forbidden(
            "access denied: there is no type this principal may export".to_owned(),
        ));
    }
    for rtype in allowed {
        let filters = request.filters.get(&rtype);
        export_type(access, rtype, level, filters, &mut out).await?;
    }
    Ok(out.files)
}

/// Registers the finished export as a job and answers the kick-off (202, the status URL).
fn finish(
    state: &AppState,
    access: &Access,
    uri: &OriginalUri,
    transaction_time: OffsetDateTime,
    out_files: BTreeMap<&'static str, (Zeroizing<Vec<u8>>, usize)>,
    extension: Option<Value>,
) -> Result<Response, ApiError> {
    let job = state.bulk.new_job_id();
    let base = base(state);
    let mut output = Vec::with_capacity(out_files.len());
    let mut files = HashMap::with_capacity(out_files.len());
    for (rtype, (bytes, count)) in out_files {
        let name = format!("{rtype}.ndjson");
        output.push(json!({
            "type": rtype,
            "url": format!("{base}/$export-file/{job}/{name}"),
            "count": count,
        }));
        files.insert(name, bytes);
    }
    let request_url = format!(
        "{}{}",
        base.strip_suffix("/fhir").unwrap_or(base),
        uri.0
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or_else(|| uri.0.path())
    );
    let mut manifest = json!({
        "transactionTime": transaction_time.format(&Rfc3339).map_err(|e| ApiError::internal(&e))?,
        "request": request_url,
        "requiresAccessToken": true,
        "output": output,
        "error": [],
    });
    if let (Some(extension), Value::Object(m)) = (extension, &mut manifest) {
        m.insert("extension".to_owned(), extension);
    }
    state.bulk.lock().insert(
        job.clone(),
        Job {
            owner: Owner::of(access.who()),
            created: Instant::now(),
            manifest,
            files,
        },
    );
    let status_url = format!("{base}/$export-status/{job}");
    let mut response = fhir_json(
        StatusCode::ACCEPTED,
        &json!({
            "resourceType": "OperationOutcome",
            "issue": [{
                "severity": "information",
                "code": "informational",
                "diagnostics": format!("export accepted; poll {status_url}"),
            }],
        }),
    );
    if let Ok(v) = HeaderValue::from_str(&status_url) {
        response.headers_mut().insert(header::CONTENT_LOCATION, v);
    }
    Ok(response)
}

/// The job id of a path, or the 404 of an unknown job.
fn job_of(state: &AppState, path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(job) = path.map_err(path_error)?;
    state.bulk.job_of(&job)
}

fn unknown_job() -> ApiError {
    ApiError::Missing("no such export (unknown, expired, cancelled or not yours)".to_owned())
}

async fn status(
    State(state): State<AppState>,
    Who(who): Who,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    let result = (|| {
        let job = job_of(&state, path)?;
        let jobs = state.bulk.lock();
        let found = jobs
            .get(&job)
            .filter(|j| j.owner == Owner::of(&who))
            .ok_or_else(unknown_job)?;
        let mut response = (StatusCode::OK, found.manifest.to_string()).into_response();
        let h = response.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(
            header::HeaderName::from_static("x-progress"),
            HeaderValue::from_static("complete"),
        );
        Ok(response)
    })();
    answer(result)
}

async fn cancel(
    State(state): State<AppState>,
    Who(who): Who,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    let result = (|| {
        let job = job_of(&state, path)?;
        let mut jobs = state.bulk.lock();
        if !jobs.get(&job).is_some_and(|j| j.owner == Owner::of(&who)) {
            return Err(unknown_job());
        }
        // Dropping the job zeroes its files.
        jobs.remove(&job);
        Ok(fhir_json(
            StatusCode::ACCEPTED,
            &json!({
                "resourceType": "OperationOutcome",
                "issue": [{
                    "severity": "information",
                    "code": "informational",
                    "diagnostics": "export cancelled and its files deleted",
                }],
            }),
        ))
    })();
    answer(result)
}

async fn download(
    State(state): State<AppState>,
    Who(who): Who,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Response {
    let result = (|| {
        let Path((job, file)) = path.map_err(path_error)?;
        let job = job_of(&state, Ok(Path(job)))?;
        let bytes = {
            let mut jobs = state.bulk.lock();
            let found = jobs
                .get_mut(&job)
                .filter(|j| j.owner == Owner::of(&who))
                .ok_or_else(unknown_job)?;
            // Deleted once downloaded.
            found.files.remove(&file).ok_or_else(|| {
                ApiError::Missing(
                    "no such file in this export (files are deleted once downloaded)".to_owned(),
                )
            })?
        };
        // Moved into the response (no copy left behind in the job).
        let mut bytes = bytes;
        let body = std::mem::take(&mut *bytes);
        let mut response = (StatusCode::OK, body).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(NDJSON));
        Ok(response)
    })();
    answer(result)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Job ids name the node holding the job; another node's id is refused by name, a
    /// malformed one as unknown, and a bare UUID only outside a cluster.
    #[test]
    fn job_ids_name_their_node() {
        let plain = BulkJobs::new(BulkLimits::default());
        let n1 = plain.for_node("node-1");
        let id = n1.new_job_id();
        assert!(id.starts_with("node-1."), "{id}");
        assert_eq!(n1.job_of(&id).ok(), Some(id.clone()));
        let uuid = id.trim_start_matches("node-1.");
        let elsewhere = n1.job_of(&format!("node-2.{uuid}")).unwrap_err();
        assert!(matches!(&elsewhere, ApiError::Missing(m) if m.contains("(node-2)")));
        for bad in ["node-1.x", "<script>.x", uuid, ""] {
            assert!(
                matches!(n1.job_of(bad), Err(ApiError::Missing(m)) if !m.contains("node-2")),
                "{bad}"
            );
        }
        let bare = plain.new_job_id();
        assert_eq!(plain.job_of(&bare).ok(), Some(bare.clone()));
        assert!(plain.job_of(&format!("node-1.{bare}")).is_err());
    }

    #[test]
    fn parameters() {
        let r = parse_request(Some(
            "_type=Patient,Observation&_since=2024-01-01T00:00:00Z",
        ))
        .unwrap();
        assert_eq!(r.types.unwrap().len(), 2);
        assert!(r.since.is_some());
        assert!(parse_request(Some("_outputFormat=application%2Ffhir%2Bndjson")).is_ok());
        let r = parse_request(Some(
            "_typeFilter=Observation%3Fstatus%3Dfinal,Observation%3Fcode%3Dhttp%253A%252F%252Floinc.org%257C8867-4,Patient%3Fgender%3Dfemale",
        ))
        .unwrap();
        let obs = ResourceType::parse("Observation").unwrap();
        assert_eq!(
            r.filters[&obs].len(),
            2,
            "two filters of one type: either matches"
        );
        assert_eq!(
            r.filters[&obs][1],
            vec![("code".to_owned(), "http://loinc.org|8867-4".to_owned())],
            "a filter's own query is decoded once more"
        );
        assert_eq!(r.filters[&ResourceType::PATIENT].len(), 1);
        for bad in [
            "_type=Nope",
            "_since=2024-01-01",
            "_outputFormat=text%2Fcsv",
            "_typeFilter=Observation",
            "_typeFilter=Nope%3Fstatus%3Dfinal",
            "_typeFilter=Observation%3Fnope%3Dx",
            "_typeFilter=Observation%3F_count%3D5",
            "_typeFilter=Observation%3Fdate%3Dxx",
            "_type=Patient&_typeFilter=Observation%3Fstatus%3Dfinal",
        ] {
            assert!(parse_request(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn prefer_header() {
        let mut h = HeaderMap::new();
        assert!(!respond_async(&h));
        h.insert(
            "prefer",
            HeaderValue::from_static("handling=lenient, respond-async"),
        );
        assert!(respond_async(&h));
        h.insert("prefer", HeaderValue::from_static("return=minimal"));
        assert!(!respond_async(&h));
    }
}
