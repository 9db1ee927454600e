//! The audit trail on the FHIR API (issue 5): audit entries as FHIR R4 `AuditEvent`s, in the
//! spirit of the IHE Basic Audit Log Patterns (BALP), and the routes that show them:
//!
//! - `GET /fhir/AuditEvent` (search by `patient`, `agent`, `date`, `action`, `outcome`; paged
//!   newest first with an opaque cursor) and `GET /fhir/AuditEvent/{id}`: the auditors' view of
//!   the whole trail. Decided as `read_audit` on the whole trail, whatever the search filters
//!   on: by default only the `auditor` role passes.
//! - `GET /fhir/Patient/{id}/$access-log`: one patient's access log, who (name and role of the
//!   staff member or app), when, what and why, break-the-glass accesses flagged. Decided as
//!   `read_audit` on that patient's entries: by default the patient themselves (in their own
//!   session) and auditors. The refusal is the same whether the patient exists or not (their
//!   existence is never looked up). The patient's own view leaves out network addresses, and
//!   names no other patient account.
//!
//! **The entry's body is authoritative.** Rows are selected on the columns the store copies
//! out of each entry; every row is then parsed from its canonical body and checked against
//! its columns and the filters. A row whose columns disagree with its body is an integrity
//! problem: it is logged at error level by seq (nothing else) and left out of the answer,
//! which then carries an OperationOutcome entry saying that entries were left out (with their
//! seqs for auditors). Leaving out rather than failing the whole answer keeps a patient's
//! access log readable while the operator investigates (`phivault audit verify` checks the
//! chain over the bodies); a read of one such entry by id fails with an integrity error.
//!
//! Names are looked up per request and kept for that request only: for a user, the name in
//! the Practitioner version the entry recorded (`actor_ref`: who they were at the time of the
//! access; an edit of the Practitioner since makes a new version and changes nothing here),
//! else their linked Practitioner's current name, else the username (a system lookup for
//! display, not a clinical access); an app's registered name.

use std::collections::HashMap;

use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use phivault_audit::{ActorKind, AuditEntry, Outcome};
use phivault_auth::Accounts;
use phivault_fhir::{Id, Issue, IssueCode, OperationOutcome, ResourceType};
use phivault_policy::{
    AccessRequest, Action, DecisionContext, PURPOSE_SYSTEM, Purpose, ResourceRef, Role,
};
use phivault_store::audit::{AuditQuery, AuditRow};
use phivault_store::{Store, StoreError};
use serde_json::{Map, Value, json};
use time::OffsetDateTime;

use crate::edge::AuditPatient;
use crate::error::fhir_json;
use crate::fhir_routes::{Access, X_PURPOSE_OF_USE, base, parse_pairs, path_error};
use crate::{ApiError, AppState};

/// Page size when `_count` is absent.
pub(crate) const DEFAULT_COUNT: u32 = 50;
/// Largest page size (a larger `_count` is lowered to it).
pub(crate) const MAX_COUNT: u32 = 500;

/// `http://terminology.hl7.org/CodeSystem/audit-event-type`.
const EVENT_TYPE_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/audit-event-type";
/// DICOM controlled terminology (audit event types and subtypes).
const DCM_SYSTEM: &str = "http://dicom.nema.org/resources/ontology/DCM";
/// FHIR restful interactions.
const INTERACTION_SYSTEM: &str = "http://hl7.org/fhir/restful-interaction";
/// HL7 v3 ActCode (`BTG`, break the glass).
const ACT_CODE_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";
/// Agent types (`humanuser`, `dataprocessor`).
const ROLE_TYPE_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/extra-security-role-type";
/// Our roles (`clinician`, `app`, ...).
const PHIVAULT_ROLE_SYSTEM: &str = "urn:phivault:role";
/// Entity types (`1` person, `2` system object).
const ENTITY_TYPE_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/audit-entity-type";
/// Entity roles (`1` patient, `4` domain resource).
const OBJECT_ROLE_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/object-role";
/// BALP's entity types (`XrequestId`).
const BALP_ENTITY_SYSTEM: &str =
    "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType";
/// Audit source types (`4` application server).
const SOURCE_TYPE_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/security-source-type";
/// The request id of an entry.
const REQUEST_ID_SYSTEM: &str = "urn:phivault:request-id";

/// The audit routes of the FHIR API. Their static segments take precedence over the generic
/// `/fhir/{type}...` routes.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/fhir/AuditEvent", get(search))
        .route("/fhir/AuditEvent/{id}", get(read))
        .route("/fhir/Patient/{id}/$access-log", get(access_log))
}

// ---------------------------------------------------------------------------------------
// Representation

/// Who looks at an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum View {
    /// An auditor: everything the entry holds.
    Auditor,
    /// The patient whose access log it is, through their own account (`user_id`): no
    /// network addresses, and no other patient account or patient id named.
    Patient {
        /// The viewing patient's user id.
        user_id: String,
        /// The viewing patient's id.
        patient: String,
    },
}

/// The FHIR code of an outcome: `0` success, `4` minor failure (refused), `8` serious failure.
pub(crate) fn outcome_code(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Allowed => "0",
        Outcome::Denied => "4",
        Outcome::Error => "8",
    }
}

fn outcome_of_code(code: &str) -> Option<Outcome> {
    match code {
        "0" => Some(Outcome::Allowed),
        "4" => Some(Outcome::Denied),
        "8" => Some(Outcome::Error),
        _ => None,
    }
}

fn coding(system: &str, code: &str, display: &str) -> Value {
    json!({ "system": system, "code": code, "display": display })
}

/// The FHIR restful interaction of an action, when known.
fn interaction(action: &str) -> Option<&'static str> {
    let (verb, route) = action.split_once(' ').unwrap_or((action, ""));
    Some(match (verb, route) {
        ("read", _) => "read",
        ("search", _) => "search-type",
        ("create", _) => "create",
        ("update", _) => "update",
        ("delete", _) => "delete",
        ("GET" | "HEAD", "/fhir/metadata") => "capabilities",
        ("GET" | "HEAD", "/fhir/{type}/{id}" | "/fhir/AuditEvent/{id}") => "read",
        ("GET" | "HEAD", "/fhir/{type}/{id}/_history/{vid}") => "vread",
        ("GET" | "HEAD", "/fhir/{type}/{id}/_history") => "history-instance",
        ("GET" | "HEAD", "/fhir/{type}" | "/fhir/{type}/_search" | "/fhir/AuditEvent") => {
            "search-type"
        }
        ("POST", "/fhir/{type}/_search") => "search-type",
        ("POST", "/fhir/{type}") => "create",
        ("PUT", "/fhir/{type}/{id}" | "/fhir/{type}") => "update",
        ("DELETE", "/fhir/{type}/{id}" | "/fhir/{type}") => "delete",
        (
            "GET" | "HEAD",
            "/fhir/Patient/{id}/$access-log"
            | "/fhir/Patient/{id}/$everything"
            | "/fhir/Patient/{id}/$export",
        ) => "operation",
        (_, r) if r.ends_with("/$export") || r.starts_with("/fhir/$export-") => "operation",
        _ => return None,
    })
}

/// `type` and `subtype` codings of an action.
fn event_type(action: &str) -> (Value, Option<Value>) {
    if action == phivault_audit::REFUSALS_ACTION {
        return (coding(DCM_SYSTEM, "110113", "Security Alert"), None);
    }
    let (verb, route) = action.split_once(' ').unwrap_or((action, ""));
    let rest_subtype = || interaction(action).map(|code| coding(INTERACTION_SYSTEM, code, code));
    if route.starts_with("/fhir/AuditEvent") || route == "/fhir/Patient/{id}/$access-log" {
        return (
            coding(DCM_SYSTEM, "110101", "Audit Log Used"),
            rest_subtype(),
        );
    }
    if route.ends_with("/$export") || action == "cli export-patient" {
        return (coding(DCM_SYSTEM, "110106", "Export"), rest_subtype());
    }
    if matches!(verb, "read" | "search" | "create" | "update" | "delete")
        || route == "/fhir"
        || route.starts_with("/fhir/")
    {
        return (
            coding(EVENT_TYPE_SYSTEM, "rest", "RESTful Operation"),
            rest_subtype(),
        );
    }
    let authentication = coding(DCM_SYSTEM, "110114", "User Authentication");
    match route {
        "/auth/login" | "/oauth/token" => {
            (authentication, Some(coding(DCM_SYSTEM, "110122", "Login")))
        }
        "/auth/logout" | "/oauth/revoke" => {
            (authentication, Some(coding(DCM_SYSTEM, "110123", "Logout")))
        }
        r if r.starts_with("/auth/") => (authentication, None),
        r if r.starts_with("/admin/break-glass") || r.starts_with("/audit/") => {
            (coding(DCM_SYSTEM, "110101", "Audit Log Used"), None)
        }
        r if r.starts_with("/admin/") => {
            (coding(DCM_SYSTEM, "110136", "Security Roles Changed"), None)
        }
        _ => (coding(DCM_SYSTEM, "110100", "Application Activity"), None),
    }
}

/// Unix milliseconds as a FHIR instant in UTC, to the millisecond.
pub(crate) fn instant(ms: i64) -> String {
    let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year().clamp(1, 9999),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// The agent (who acted) of an entry, as `view` may see it; `name` is the display name looked
/// up for the actor.
fn agent(entry: &AuditEntry, name: Option<&str>, view: &View) -> Value {
    let role = entry.role.as_deref();
    // In a patient's view, another patient account is not named (a patient's identity is
    // PHI): "a patient account", without id.
    let hidden_patient = match view {
        View::Patient { user_id, .. } => {
            role == Some(Role::Patient.as_str()) && entry.actor_id != *user_id
        }
        View::Auditor => false,
    };
    let mut a = Map::new();
    let kind_type = match entry.actor_kind {
        ActorKind::User | ActorKind::Anonymous => {
            Some(coding(ROLE_TYPE_SYSTEM, "humanuser", "human user"))
        }
        ActorKind::Client => Some(coding(ROLE_TYPE_SYSTEM, "dataprocessor", "data processor")),
        ActorKind::System => None,
    };
    if let Some(t) = kind_type {
        a.insert("type".to_owned(), json!({ "coding": [t] }));
    }
    if let Some(role) = role {
        a.insert(
            "role".to_owned(),
            json!([{
                "coding": [coding(PHIVAULT_ROLE_SYSTEM, role, role)],
                "text": role,
            }]),
        );
    }
    let who = if hidden_patient {
        json!({ "display": "a patient account" })
    } else {
        let (system, display) = match entry.actor_kind {
            ActorKind::User => ("urn:phivault:user", name.unwrap_or("unknown user")),
            ActorKind::Client => ("urn:phivault:client", name.unwrap_or("unknown app")),
            ActorKind::Anonymous => ("urn:phivault:anonymous", "not signed in"),
            ActorKind::System => ("urn:phivault:system", "phivault"),
        };
        json!({
            "identifier": { "system": system, "value": entry.actor_id },
            "display": display,
        })
    };
    a.insert("who".to_owned(), who);
    a.insert("requestor".to_owned(), Value::Bool(true));
    if *view == View::Auditor
        && let Some(address) = &entry.source_address
    {
        a.insert(
            "network".to_owned(),
            json!({ "address": address, "type": "2" }),
        );
    }
    Value::Object(a)
}

/// The entities of an entry: the patients it concerns, the resource, and the request. In a
/// patient's view, the only patient named is the viewer (an entry about several patients, a
/// search for example, does not tell one patient who the others were).
fn entities(entry: &AuditEntry, view: &View) -> Vec<Value> {
    let shown = |p: &str| match view {
        View::Auditor => true,
        View::Patient { patient, .. } => p == patient,
    };
    let mut out = Vec::new();
    let mut concerned: Vec<&String> = entry.patient_id.iter().collect();
    concerned.extend(entry.patients.iter());
    for patient in concerned.into_iter().filter(|p| shown(p)) {
        out.push(json!({
            "what": { "reference": format!("Patient/{patient}") },
            "type": coding(ENTITY_TYPE_SYSTEM, "1", "Person"),
            "role": coding(OBJECT_ROLE_SYSTEM, "1", "Patient"),
        }));
    }
    match (&entry.resource_type, &entry.resource_id) {
        (Some(t), Some(id)) if t == "Patient" && !shown(id) => {
            out.push(json!({
                "what": { "type": t },
                "type": coding(ENTITY_TYPE_SYSTEM, "2", "System Object"),
                "role": coding(OBJECT_ROLE_SYSTEM, "4", "Domain Resource"),
            }));
        }
        (Some(t), Some(id)) if !(t == "Patient" && entry.concerns(id)) => {
            out.push(json!({
                "what": { "reference": format!("{t}/{id}") },
                "type": coding(ENTITY_TYPE_SYSTEM, "2", "System Object"),
                "role": coding(OBJECT_ROLE_SYSTEM, "4", "Domain Resource"),
            }));
        }
        (Some(t), None) => {
            out.push(json!({
                "what": { "type": t },
                "type": coding(ENTITY_TYPE_SYSTEM, "2", "System Object"),
                "role": coding(OBJECT_ROLE_SYSTEM, "4", "Domain Resource"),
            }));
        }
        _ => {}
    }
    if let Some(summary) = &entry.refusals {
        out.push(refusals_entity(summary, view));
    }
    out.push(json!({
        "what": { "identifier": { "system": REQUEST_ID_SYSTEM, "value": entry.request_id } },
        "type": coding(BALP_ENTITY_SYSTEM, "XrequestId", "Request Id"),
    }));
    out
}

/// The summary of refused unauthenticated requests as an entity whose details are the count
/// (`count`), the first and last time (`first`, `last`, FHIR instants), each route asked for
/// (`route`), each sampled client address of the overflow summary (`address`, auditors
/// only) and whether the lists were cut short (`truncated`).
fn refusals_entity(summary: &phivault_audit::RefusalSummary, view: &View) -> Value {
    let detail = |t: &str, v: String| json!({ "type": t, "valueString": v });
    let mut details = vec![
        detail("count", summary.count.to_string()),
        detail("first", instant(summary.first)),
        detail("last", instant(summary.last)),
    ];
    details.extend(summary.routes.iter().map(|r| detail("route", r.clone())));
    if matches!(view, View::Auditor) {
        details.extend(
            summary
                .addresses
                .iter()
                .map(|a| detail("address", a.clone())),
        );
    }
    details.push(detail("truncated", summary.truncated.to_string()));
    json!({
        "type": coding(ENTITY_TYPE_SYSTEM, "2", "System Object"),
        "name": "refused unauthenticated requests",
        "detail": details,
    })
}

/// An audit entry as a FHIR R4 `AuditEvent`, as `view` may see it. `name` is the actor's
/// display name ([`Names`]).
pub(crate) fn audit_event(entry: &AuditEntry, name: Option<&str>, view: &View) -> Value {
    let (etype, subtype) = event_type(&entry.action);
    let mut e = Map::new();
    e.insert("resourceType".to_owned(), json!("AuditEvent"));
    e.insert("id".to_owned(), json!(entry.seq.to_string()));
    if entry.break_glass {
        e.insert(
            "meta".to_owned(),
            json!({ "security": [coding(ACT_CODE_SYSTEM, "BTG", "break the glass")] }),
        );
    }
    e.insert("type".to_owned(), etype);
    if let Some(s) = subtype {
        e.insert("subtype".to_owned(), json!([s]));
    }
    e.insert("action".to_owned(), json!(entry.action_code()));
    e.insert("recorded".to_owned(), json!(instant(entry.time)));
    e.insert("outcome".to_owned(), json!(outcome_code(entry.outcome)));
    e.insert("outcomeDesc".to_owned(), json!(entry.outcome.as_str()));
    let mut purposes: Vec<&str> = entry.purpose.iter().map(String::as_str).collect();
    if entry.break_glass && !purposes.contains(&Purpose::EmergencyTreat.as_str()) {
        purposes.push(Purpose::EmergencyTreat.as_str());
    }
    if !purposes.is_empty() {
        let concepts: Vec<Value> = purposes
            .iter()
            .map(|p| json!({ "coding": [{ "system": PURPOSE_SYSTEM, "code": p }], "text": p }))
            .collect();
        e.insert("purposeOfEvent".to_owned(), Value::Array(concepts));
    }
    e.insert("agent".to_owned(), json!([agent(entry, name, view)]));
    e.insert(
        "source".to_owned(),
        json!({
            "observer": { "display": "phivault" },
            "type": [coding(SOURCE_TYPE_SYSTEM, "4", "Application Server")],
        }),
    );
    e.insert("entity".to_owned(), Value::Array(entities(entry, view)));
    Value::Object(e)
}

// ---------------------------------------------------------------------------------------
// Names

/// Display names of actors, looked up once per request and dropped with it.
struct Names<'a> {
    store: &'a Store,
    accounts: &'a Accounts,
    cache: HashMap<(u8, String, Option<String>), Option<String>>,
}

impl<'a> Names<'a> {
    fn new(state: &'a AppState) -> Self {
        Names::over(&state.store, &state.accounts)
    }

    fn over(store: &'a Store, accounts: &'a Accounts) -> Self {
        Names {
            store,
            accounts,
            cache: HashMap::new(),
        }
    }

    /// The display name of the actor of `entry`: a user's linked Practitioner's name, else
    /// their username; an app's registered name. `None` for unknown accounts, anonymous
    /// callers and the system.
    async fn of(&mut self, entry: &AuditEntry) -> Result<Option<String>, ApiError> {
        let kind = match entry.actor_kind {
            ActorKind::User => 0u8,
            ActorKind::Client => 1,
            ActorKind::Anonymous | ActorKind::System => return Ok(None),
        };
        let key = (kind, entry.actor_id.clone(), entry.actor_ref.clone());
        if let Some(name) = self.cache.get(&key) {
            return Ok(name.clone());
        }
        let recorded = match &entry.actor_ref {
            Some(r) if kind == 0 => self.recorded_name(r).await?,
            _ => None,
        };
        let name = if recorded.is_some() {
            recorded
        } else if kind == 0 {
            self.user_name(&entry.actor_id).await?
        } else {
            self.accounts.client_name(&entry.actor_id).await?
        };
        self.cache.insert(key, name.clone());
        Ok(name)
    }

    /// The name in the Practitioner version `reference` (`Practitioner/{id}/_history/{v}`),
    /// when that version is readable and names someone.
    async fn recorded_name(&self, reference: &str) -> Result<Option<String>, ApiError> {
        let parts: Vec<&str> = reference.split('/').collect();
        let [rtype, id, "_history", version] = parts.as_slice() else {
            return Ok(None);
        };
        let (Ok(rtype), Ok(id), Ok(version)) = (
            ResourceType::parse(rtype),
            Id::parse(id),
            version.parse::<u64>(),
        ) else {
            return Ok(None);
        };
        if rtype.as_str() != "Practitioner" {
            return Ok(None);
        }
        // The name of an actor of the audit trail as they were then, for those allowed to read
        // the trail: a directory resource, read as the system.
        #[allow(clippy::disallowed_methods)]
        let found = self.store.vread(rtype, &id, version).await;
        match found {
            Ok(stored) => Ok(practitioner_name(&stored.body)),
            // Gone or disposed of: the current name or the username names them.
            Err(
                StoreError::NotFound { .. }
                | StoreError::Gone { .. }
                | StoreError::VersionNotFound { .. },
            ) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn user_name(&self, user_id: &str) -> Result<Option<String>, ApiError> {
        let Some(user) = self.accounts.user_summary(user_id).await? else {
            return Ok(None);
        };
        if let Some(practitioner) = &user.practitioner {
            let rtype = ResourceType::parse("Practitioner")?;
            // The actor's current name, for those allowed to read the trail: a directory
            // resource, read as the system.
            #[allow(clippy::disallowed_methods)]
            let found = self.store.read(rtype, practitioner).await;
            match found {
                Ok(stored) => {
                    if let Some(name) = practitioner_name(&stored.body) {
                        return Ok(Some(name));
                    }
                }
                // Deleted or never written: the username names them.
                Err(StoreError::NotFound { .. } | StoreError::Gone { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Some(user.username))
    }
}

/// A Practitioner's display name: `name[0].text`, else its given names and family name.
fn practitioner_name(body: &Value) -> Option<String> {
    let name = body.get("name")?.as_array()?.first()?;
    if let Some(text) = name.get("text").and_then(Value::as_str)
        && !text.trim().is_empty()
    {
        return Some(text.trim().to_owned());
    }
    let mut parts: Vec<&str> = Vec::new();
    for p in ["prefix", "given"] {
        if let Some(list) = name.get(p).and_then(Value::as_array) {
            parts.extend(list.iter().filter_map(Value::as_str));
        }
    }
    if let Some(family) = name.get("family").and_then(Value::as_str) {
        parts.push(family);
    }
    let joined = parts
        .iter()
        .map(|p| p.trim())
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    (!joined.is_empty()).then_some(joined)
}

// ---------------------------------------------------------------------------------------
// Search parameters

/// Which parameters a route takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Params {
    /// `GET /fhir/AuditEvent`: every filter.
    Search,
    /// `$access-log`: the patient is the path's; `date`, `action`, `outcome` and paging.
    AccessLog,
}

/// A parsed audit search: the filters, the page size and the cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AuditSearch {
    query: AuditQuery,
    count: u32,
    /// The parameters to repeat in links (validated, as given).
    link_pairs: Vec<(String, String)>,
}

fn bad_param(name: &str, what: &str) -> ApiError {
    ApiError::BadRequest(format!("search parameter {name}: {what}"))
}

/// Parses `pairs` for `params`. Unknown or repeated parameters, and malformed values, are a
/// 400 naming the parameter (never its value).
fn parse_search(pairs: &[(String, String)], params: Params) -> Result<AuditSearch, ApiError> {
    let mut search = AuditSearch {
        query: AuditQuery::default(),
        count: DEFAULT_COUNT,
        link_pairs: Vec::new(),
    };
    let mut seen: Vec<&str> = Vec::new();
    for (name, value) in pairs {
        let name = name.as_str();
        let repeatable = name == "date";
        if !repeatable && seen.contains(&name) {
            return Err(bad_param(name, "may be given once"));
        }
        match name {
            "patient" if params == Params::Search => {
                let id = value.strip_prefix("Patient/").unwrap_or(value);
                let id = Id::parse(id)
                    .map_err(|_| bad_param(name, "expected a Patient id or Patient/<id>"))?;
                search.query.patient = Some(id.to_string());
            }
            "agent" if params == Params::Search => {
                let ok = !value.is_empty()
                    && value.len() <= 128
                    && !value.chars().any(|c| c.is_control() || c.is_whitespace());
                if !ok {
                    return Err(bad_param(
                        name,
                        "expected the id of a user or client (1 to 128 characters, no spaces)",
                    ));
                }
                search.query.actor = Some(value.clone());
            }
            "date" => {
                let (since, until) = date_bounds(value)?;
                if let Some(s) = since {
                    search.query.since = Some(search.query.since.map_or(s, |x| x.max(s)));
                }
                if let Some(u) = until {
                    search.query.until = Some(search.query.until.map_or(u, |x| x.min(u)));
                }
            }
            "action" => {
                if !matches!(value.as_str(), "C" | "R" | "U" | "D" | "E") {
                    return Err(bad_param(name, "expected one of the codes C, R, U, D, E"));
                }
                search.query.action = Some(value.clone());
            }
            "outcome" => {
                let outcome = outcome_of_code(value)
                    .ok_or_else(|| bad_param(name, "expected one of the codes 0, 4, 8"))?;
                search.query.outcome = Some(outcome.as_str().to_owned());
            }
            "_count" => {
                let n = (!value.is_empty() && value.len() <= 9)
                    .then(|| value.parse::<u32>().ok())
                    .flatten()
                    .filter(|_| value.bytes().all(|b| b.is_ascii_digit()))
                    .ok_or_else(|| bad_param(name, "expected a non-negative integer"))?;
                search.count = n.min(MAX_COUNT);
                seen.push(name);
                continue;
            }
            "_cursor" => {
                let seq = (!value.is_empty() && value.len() <= 19)
                    .then(|| value.parse::<u64>().ok())
                    .flatten()
                    .filter(|s| *s > 0 && value.bytes().all(|b| b.is_ascii_digit()))
                    .ok_or_else(|| {
                        bad_param(name, "not a cursor of this server (follow the next link)")
                    })?;
                search.query.before_seq = Some(seq);
                seen.push(name);
                continue;
            }
            _ => {
                let shown: String = name.chars().take(64).collect();
                return Err(ApiError::BadRequest(format!(
                    "unknown search parameter {shown} for {}",
                    match params {
                        Params::Search => "AuditEvent",
                        Params::AccessLog => "$access-log",
                    }
                )));
            }
        }
        seen.push(name);
        search.link_pairs.push((name.to_owned(), value.clone()));
    }
    Ok(search)
}

/// The bounds (unix ms: at or after, before) a `date` value with its FHIR prefix sets.
fn date_bounds(value: &str) -> Result<(Option<i64>, Option<i64>), ApiError> {
    let bad = || {
        bad_param(
            "date",
            "expected an optional prefix (eq, ge, gt, le, lt) and a date (YYYY, YYYY-MM, \
             YYYY-MM-DD) or an instant (YYYY-MM-DDThh:mm:ss[.fff] with Z or an offset)",
        )
    };
    let (prefix, rest) = match value.get(..2) {
        Some(p @ ("eq" | "ge" | "gt" | "le" | "lt")) => (p, &value[2..]),
        Some("ne" | "sa" | "eb" | "ap") => {
            return Err(bad_param(
                "date",
                "the prefixes ne, sa, eb and ap are not supported (use eq, ge, gt, le, lt)",
            ));
        }
        _ => ("eq", value),
    };
    let (start, end) = date_range(rest).ok_or_else(bad)?;
    Ok(match prefix {
        "ge" => (Some(start), None),
        "gt" => (Some(end), None),
        "lt" => (None, Some(start)),
        "le" => (None, Some(end)),
        _ => (Some(start), Some(end)),
    })
}

/// The range `[start, end)` in unix ms a date or instant denotes (dates in UTC).
fn date_range(s: &str) -> Option<(i64, i64)> {
    use time::{Date, Month, PrimitiveDateTime, Time, UtcOffset};
    let digits = |t: &str, n: usize| t.len() == n && t.bytes().all(|b| b.is_ascii_digit());
    let ms = |d: Date| {
        i64::try_from(
            PrimitiveDateTime::new(d, Time::MIDNIGHT)
                .assume_offset(UtcOffset::UTC)
                .unix_timestamp_nanos()
                / 1_000_000,
        )
        .ok()
    };
    let year = |y: &str| -> Option<i32> {
        digits(y, 4)
            .then(|| y.parse::<i32>().ok())
            .flatten()
            .filter(|y| *y >= 1)
    };
    if s.contains('T') {
        let t = OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
        // FHIR requires the seconds; a fraction narrows the range to the millisecond.
        let start = i64::try_from(t.unix_timestamp_nanos().div_euclid(1_000_000)).ok()?;
        let width = if s.contains('.') { 1 } else { 1000 };
        let start = if width == 1000 {
            start - start.rem_euclid(1000)
        } else {
            start
        };
        return Some((start, start + width));
    }
    let parts: Vec<&str> = s.split('-').collect();
    match parts.as_slice() {
        [y] => {
            let y = year(y)?;
            let a = Date::from_calendar_date(y, Month::January, 1).ok()?;
            let b = Date::from_calendar_date(y + 1, Month::January, 1).ok()?;
            Some((ms(a)?, ms(b)?))
        }
        [y, m] if digits(m, 2) => {
            let y = year(y)?;
            let month = Month::try_from(m.parse::<u8>().ok()?).ok()?;
            let a = Date::from_calendar_date(y, month, 1).ok()?;
            let b = if month == Month::December {
                Date::from_calendar_date(y + 1, Month::January, 1).ok()?
            } else {
                Date::from_calendar_date(y, month.next(), 1).ok()?
            };
            Some((ms(a)?, ms(b)?))
        }
        [y, m, d] if digits(m, 2) && digits(d, 2) => {
            let y = year(y)?;
            let month = Month::try_from(m.parse::<u8>().ok()?).ok()?;
            let a = Date::from_calendar_date(y, month, d.parse().ok()?).ok()?;
            Some((ms(a)?, ms(a.next_day()?)?))
        }
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------
// Reading rows: the body is authoritative

/// The entry of `row`, when its body parses and agrees with its columns; `None` (logged at
/// error level by seq) otherwise.
fn entry_of(row: &AuditRow) -> Option<AuditEntry> {
    let entry = AuditEntry::from_canonical(&row.body);
    let problem = match &entry {
        None => Some("its body is not a canonical entry"),
        Some(e) if e.seq != row.seq => Some("its body holds another seq"),
        Some(e) if e.time != row.time => Some("its time column disagrees with its body"),
        Some(e) if e.actor_id != row.actor => Some("its actor column disagrees with its body"),
        Some(e) if e.patient_id != row.patient => {
            Some("its patient column disagrees with its body")
        }
        Some(e) if e.patients_concerned() != row.patients => {
            Some("its patient rows disagree with its body")
        }
        Some(e) if row.action.as_deref().is_some_and(|a| a != e.action_code()) => {
            Some("its action column disagrees with its body")
        }
        Some(e)
            if row
                .outcome
                .as_deref()
                .is_some_and(|o| o != e.outcome.as_str()) =>
        {
            Some("its outcome column disagrees with its body")
        }
        Some(_) => None,
    };
    if let Some(problem) = problem {
        tracing::error!(
            target: "phivault::integrity",
            seq = row.seq,
            problem,
            "audit entry left out: {problem}"
        );
        return None;
    }
    entry
}

/// Whether `entry` (from its body) meets every filter of `q`.
fn matches(entry: &AuditEntry, q: &AuditQuery) -> bool {
    q.patient.as_ref().is_none_or(|p| entry.concerns(p))
        && q.actor.as_ref().is_none_or(|a| entry.actor_id == *a)
        && q.since.is_none_or(|t| entry.time >= t)
        && q.until.is_none_or(|t| entry.time < t)
        && q.action.as_deref().is_none_or(|a| entry.action_code() == a)
        && q.outcome
            .as_deref()
            .is_none_or(|o| entry.outcome.as_str() == o)
        && q.before_seq.is_none_or(|s| entry.seq < s)
}

/// One page of a search: the entries (newest first) that pass the integrity check, the seqs
/// left out, and the cursor of the next page if there is one.
struct Page {
    entries: Vec<AuditEntry>,
    left_out: Vec<u64>,
    next: Option<u64>,
}

async fn page(state: &AppState, search: &AuditSearch) -> Result<Page, ApiError> {
    let mut out = Page {
        entries: Vec::new(),
        left_out: Vec::new(),
        next: None,
    };
    if search.count == 0 {
        return Ok(out);
    }
    let rows = state
        .store
        .audit_search(&search.query, search.count + 1)
        .await?;
    let count = usize::try_from(search.count).unwrap_or(usize::MAX);
    if rows.len() > count {
        out.next = rows.get(count - 1).map(|r| r.seq);
    }
    for row in rows.iter().take(count) {
        match entry_of(row) {
            Some(entry) if matches(&entry, &search.query) => out.entries.push(entry),
            Some(_) => {
                tracing::error!(
                    target: "phivault::integrity",
                    seq = row.seq,
                    "audit entry left out: its columns matched a search its body does not"
                );
                out.left_out.push(row.seq);
            }
            None => out.left_out.push(row.seq),
        }
    }
    Ok(out)
}

/// Every entry about `patient`, oldest first, as FHIR `AuditEvent`s in `view` (for the
/// portable export of the patient's record). Entries that fail the integrity check are left
/// out (logged by seq, as in [`page`]); the count of those is returned too.
pub(crate) async fn patient_log(
    store: &Store,
    accounts: &Accounts,
    patient: &Id,
    view: &View,
) -> Result<(Vec<Value>, usize), ApiError> {
    const PAGE: u32 = 500;
    let mut query = AuditQuery {
        patient: Some(patient.to_string()),
        ..AuditQuery::default()
    };
    let mut entries = Vec::new();
    let mut left_out = 0usize;
    loop {
        let rows = store.audit_search(&query, PAGE).await?;
        let Some(last) = rows.last().map(|r| r.seq) else {
            break;
        };
        for row in &rows {
            match entry_of(row) {
                Some(entry) if matches(&entry, &query) => entries.push(entry),
                _ => left_out += 1,
            }
        }
        if rows.len() < PAGE as usize {
            break;
        }
        query.before_seq = Some(last);
    }
    entries.reverse();
    let mut names = Names::over(store, accounts);
    let mut out = Vec::with_capacity(entries.len());
    for entry in &entries {
        let name = names.of(entry).await?;
        out.push(audit_event(entry, name.as_deref(), view));
    }
    Ok((out, left_out))
}

// ---------------------------------------------------------------------------------------
// Handlers

/// `ApiError` as a response naming `patient` for the audit trail.
fn refused(e: ApiError, patient: Option<&Id>) -> Response {
    let mut r = e.into_response();
    if let Some(p) = patient {
        r.extensions_mut().insert(AuditPatient(p.clone()));
    }
    r
}

/// The purpose of use of the request (already validated by [`Access`]).
fn purpose_of(headers: &HeaderMap, role: Role) -> Purpose {
    headers
        .get(&X_PURPOSE_OF_USE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| Purpose::parse(v).ok())
        .unwrap_or_else(|| role.default_purpose())
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A link to `path` with the search's parameters, its `_count` and a cursor.
fn link(state: &AppState, path: &str, search: &AuditSearch, cursor: Option<u64>) -> String {
    let mut pairs = search.link_pairs.clone();
    pairs.push(("_count".to_owned(), search.count.to_string()));
    if let Some(c) = cursor {
        pairs.push(("_cursor".to_owned(), c.to_string()));
    }
    let query: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
        .collect();
    format!("{}/{path}?{}", base(state), query.join("&"))
}

/// The searchset Bundle of a page.
async fn bundle(
    state: &AppState,
    path: &str,
    search: &AuditSearch,
    view: &View,
) -> Result<Value, ApiError> {
    let total = {
        let mut q = search.query.clone();
        q.before_seq = None;
        state.store.audit_count(&q).await?
    };
    let page = page(state, search).await?;
    let mut names = Names::new(state);
    let mut entries = Vec::with_capacity(page.entries.len() + 1);
    if !page.left_out.is_empty() {
        let message = match view {
            View::Auditor => format!(
                "{} audit entries were left out because their indexed columns disagree with \
                 their recorded content (an integrity problem; run phivault audit verify): \
                 seq {}",
                page.left_out.len(),
                page.left_out
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            View::Patient { .. } => format!(
                "{} entries of this access log could not be shown (an integrity problem \
                 reported to the operator)",
                page.left_out.len()
            ),
        };
        let mut outcome = OperationOutcome::default();
        outcome.push(
            "warning",
            Issue {
                code: IssueCode::Exception,
                path: String::new(),
                message,
            },
        );
        entries.push(json!({
            "fullUrl": format!("urn:uuid:{}", uuid::Uuid::new_v4()),
            "resource": outcome.to_json(),
            "search": { "mode": "outcome" },
        }));
    }
    for entry in &page.entries {
        let name = names.of(entry).await?;
        entries.push(json!({
            "fullUrl": format!("{}/AuditEvent/{}", base(state), entry.seq),
            "resource": audit_event(entry, name.as_deref(), view),
            "search": { "mode": "match" },
        }));
    }
    let mut links = vec![json!({
        "relation": "self",
        "url": link(state, path, search, search.query.before_seq),
    })];
    if let Some(next) = page.next {
        links.push(json!({ "relation": "next", "url": link(state, path, search, Some(next)) }));
    }
    Ok(json!({
        "resourceType": "Bundle",
        "id": uuid::Uuid::new_v4().to_string(),
        "type": "searchset",
        "total": total,
        "link": links,
        "entry": entries,
    }))
}

/// `GET /fhir/AuditEvent`: auditors search the whole trail.
async fn search(
    State(state): State<AppState>,
    access: Access,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    access.require(Action::ReadAudit)?;
    let pairs = parse_pairs(query.as_deref().unwrap_or(""))?;
    let search = parse_search(&pairs, Params::Search)?;
    let b = bundle(&state, "AuditEvent", &search, &View::Auditor).await?;
    let mut response = fhir_json(StatusCode::OK, &b);
    if let Some(p) = search
        .query
        .patient
        .as_deref()
        .and_then(|p| Id::parse(p).ok())
    {
        response.extensions_mut().insert(AuditPatient(p));
    }
    Ok(response)
}

/// `GET /fhir/AuditEvent/{id}`: auditors read one entry.
async fn read(
    State(state): State<AppState>,
    access: Access,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    access.require(Action::ReadAudit)?;
    let Path(raw) = path.map_err(path_error)?;
    let id = Id::parse(&raw)?;
    let not_found = || {
        ApiError::Store(StoreError::NotFound {
            rtype: "AuditEvent".to_owned(),
            id: id.to_string(),
        })
    };
    let seq = id
        .as_str()
        .parse::<u64>()
        .ok()
        .filter(|s| *s > 0 && id.as_str().bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(not_found)?;
    let row = state.store.audit_entry(seq).await?.ok_or_else(not_found)?;
    let entry = entry_of(&row).ok_or_else(|| {
        ApiError::Store(StoreError::Integrity {
            rtype: "AuditEvent".to_owned(),
            id: id.to_string(),
        })
    })?;
    let name = Names::new(&state).of(&entry).await?;
    let mut response = fhir_json(
        StatusCode::OK,
        &audit_event(&entry, name.as_deref(), &View::Auditor),
    );
    if let Some(p) = entry.patient_id.as_deref().and_then(|p| Id::parse(p).ok()) {
        response.extensions_mut().insert(AuditPatient(p));
    }
    Ok(response)
}

/// `GET /fhir/Patient/{id}/$access-log`: one patient's access log, for that patient and
/// auditors.
async fn access_log(
    State(state): State<AppState>,
    access: Access,
    path: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let Ok(Path(raw)) = path else {
        return ApiError::BadRequest(
            "the request path is malformed (invalid percent-encoding)".to_owned(),
        )
        .into_response();
    };
    let patient = match Id::parse(&raw) {
        Ok(id) => id,
        Err(e) => return ApiError::from(e).into_response(),
    };
    match access_log_of(&state, &access, &patient, query.as_deref(), &headers).await {
        Ok(mut response) => {
            response
                .extensions_mut()
                .insert(AuditPatient(patient.clone()));
            response
        }
        Err(e) => refused(e, Some(&patient)),
    }
}

async fn access_log_of(
    state: &AppState,
    access: &Access,
    patient: &Id,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let principal = &access.who().principal;
    let request = AccessRequest {
        principal: principal.clone(),
        action: Action::ReadAudit,
        resource: ResourceRef::audit_trail(Some(patient.clone())),
        context: DecisionContext::new(
            purpose_of(headers, principal.role()),
            OffsetDateTime::now_utc(),
        ),
    };
    // The existence of the patient is never looked up: the refusal is the same for all.
    state
        .policy
        .decide(&request)
        .map_err(|d| ApiError::Forbidden(format!("access denied: {}", d.reason().as_str())))?;
    let pairs = parse_pairs(query.unwrap_or(""))?;
    let mut search = parse_search(&pairs, Params::AccessLog)?;
    search.query.patient = Some(patient.to_string());
    let view = if principal.linked_patient() == Some(patient) {
        View::Patient {
            user_id: principal.id().to_owned(),
            patient: patient.to_string(),
        }
    } else {
        View::Auditor
    };
    let path = format!("Patient/{patient}/$access-log");
    let b = bundle(state, &path, &search, &view).await?;
    Ok(fhir_json(StatusCode::OK, &b))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use std::sync::Arc;

    use axum::body::Body;
    use axum::extract::ConnectInfo;
    use axum::http::{Method, Request, header};
    use phivault_auth::{Accounts, LoginRequest, Password, PasswordHasher};
    use phivault_fhir::Validator;
    use phivault_store::{NoAudit, Store, StoreOptions};
    use tower::ServiceExt;

    use super::*;

    const PASSWORD: &str = "plum-orchard-lantern-47";

    fn entry(seq: u64) -> AuditEntry {
        AuditEntry {
            seq,
            time: 1_767_225_600_123, // 2026-01-01T00:00:00.123Z
            actor_id: "u-clin".to_owned(),
            actor_kind: ActorKind::User,
            role: Some("clinician".to_owned()),
            purpose: Some("TREAT".to_owned()),
            break_glass: false,
            action: "GET /fhir/{type}/{id}".to_owned(),
            resource_type: Some("Observation".to_owned()),
            resource_id: Some("o1".to_owned()),
            patient_id: Some("pa".to_owned()),
            outcome: Outcome::Allowed,
            source_address: Some("192.0.2.7".to_owned()),
            request_id: "r-1".to_owned(),
            actor_ref: None,
            patients: Vec::new(),
            refusals: None,
        }
    }

    /// The official R4 schema's definition `name`, compiled as the fhir crate does (with its
    /// `ResourceList` stub: contained and Bundle resources are checked to be objects).
    fn schema(name: &str) -> jsonschema::Validator {
        let mut schema: Value = serde_json::from_str(include_str!(
            "../../phivault-fhir/schema/fhir.r4.schema.json"
        ))
        .unwrap();
        schema["definitions"]["ResourceList"] = json!({ "type": "object" });
        let uri = "http://hl7.org/fhir/json-schema/4.0";
        let registry = jsonschema::Registry::new()
            .draft(jsonschema::Draft::Draft6)
            .add(uri, schema)
            .and_then(|b| b.prepare())
            .unwrap();
        jsonschema::options()
            .with_draft(jsonschema::Draft::Draft6)
            .with_pattern_options(jsonschema::PatternOptions::regex())
            .with_registry(&registry)
            .offline()
            .build(&json!({ "$ref": format!("{uri}#/definitions/{name}") }))
            .unwrap()
    }

    fn assert_valid(v: &jsonschema::Validator, value: &Value) {
        let errors: Vec<String> = v
            .iter_errors(value)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{errors:?}\n{value:#}");
    }

    /// Entries of every shape the trail holds.
    fn samples() -> Vec<AuditEntry> {
        let mut out = vec![entry(1)];
        let mut e = entry(2);
        e.break_glass = true;
        e.purpose = Some("ETREAT".to_owned());
        out.push(e);
        let mut e = entry(3);
        e.action = "POST /auth/login".to_owned();
        e.actor_id = "anonymous".to_owned();
        e.actor_kind = ActorKind::Anonymous;
        e.role = None;
        e.purpose = None;
        e.resource_type = None;
        e.resource_id = None;
        e.patient_id = None;
        e.outcome = Outcome::Denied;
        out.push(e);
        let mut e = entry(4);
        e.action = "GET /fhir/{type}".to_owned();
        e.actor_id = "pvcl_x".to_owned();
        e.actor_kind = ActorKind::Client;
        e.role = Some("app".to_owned());
        e.resource_id = None;
        e.outcome = Outcome::Error;
        out.push(e);
        let mut e = entry(5);
        e.action = "create".to_owned();
        e.resource_type = Some("Patient".to_owned());
        e.resource_id = Some("pa".to_owned());
        e.source_address = None;
        out.push(e);
        let mut e = entry(6);
        e.action = "cli import".to_owned();
        e.actor_id = "-".to_owned();
        e.actor_kind = ActorKind::System;
        e.role = None;
        out.push(e);
        let mut e = entry(7);
        e.action = "POST /fhir".to_owned();
        out.push(e);
        let mut e = entry(8);
        e.action = "GET /fhir/Patient/{id}/$access-log".to_owned();
        e.role = Some("patient".to_owned());
        e.actor_id = "u-other-patient".to_owned();
        e.outcome = Outcome::Denied;
        out.push(e);
        out.push(refusals_sample(9));
        out
    }

    fn refusals_sample(seq: u64) -> AuditEntry {
        let mut e = AuditEntry::refusal_summary(
            phivault_audit::RefusalSummary {
                count: 500,
                first: 1_767_225_600_000,
                last: 1_767_225_659_000,
                routes: vec!["GET /fhir/{type}".to_owned()],
                addresses: vec!["198.51.100.3".to_owned()],
                truncated: true,
            },
            None,
            "r-9".to_owned(),
            1_767_225_660_000,
        );
        e.seq = seq;
        e
    }

    #[test]
    fn a_refusal_summary_is_a_security_alert_with_its_counts() {
        let e = audit_event(&refusals_sample(9), None, &View::Auditor);
        assert_eq!(e["type"]["code"], "110113", "{e}");
        assert_eq!(e["outcome"], "4");
        let details = &e["entity"][0]["detail"];
        let value = |t: &str| -> Vec<&str> {
            details
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| d["type"] == t)
                .map(|d| d["valueString"].as_str().unwrap())
                .collect()
        };
        assert_eq!(value("count"), ["500"]);
        assert_eq!(value("first"), ["2026-01-01T00:00:00.000Z"]);
        assert_eq!(value("route"), ["GET /fhir/{type}"]);
        assert_eq!(value("address"), ["198.51.100.3"]);
        assert_eq!(value("truncated"), ["true"]);
        let p = audit_event(
            &refusals_sample(9),
            None,
            &View::Patient {
                user_id: "u".to_owned(),
                patient: "p".to_owned(),
            },
        );
        assert!(!p.to_string().contains("198.51.100.3"), "{p}");
    }

    #[test]
    fn audit_events_are_valid_fhir_r4() {
        let v = schema("AuditEvent");
        let views = [
            View::Auditor,
            View::Patient {
                user_id: "u-pa".to_owned(),
                patient: "pa".to_owned(),
            },
        ];
        for e in samples() {
            for view in &views {
                let event = audit_event(&e, Some("Dr Ann Smith"), view);
                assert_valid(&v, &event);
                assert_eq!(event["id"], e.seq.to_string());
                for required in ["type", "recorded", "agent", "source"] {
                    assert!(!event[required].is_null(), "{required}: {event}");
                }
            }
        }
        // And a wrong one is refused: the schema is really applied.
        let mut bad = audit_event(&entry(1), None, &View::Auditor);
        bad["outcome"] = json!(4);
        assert!(v.iter_errors(&bad).next().is_some());
        bad["outcome"] = json!("0");
        bad["recorded"] = json!("yesterday");
        assert!(v.iter_errors(&bad).next().is_some());
    }

    #[test]
    fn representation_of_a_read() {
        let e = audit_event(&entry(1), Some("Dr Ann Smith"), &View::Auditor);
        assert_eq!(e["type"]["system"], EVENT_TYPE_SYSTEM);
        assert_eq!(e["type"]["code"], "rest");
        assert_eq!(e["subtype"][0]["system"], INTERACTION_SYSTEM);
        assert_eq!(e["subtype"][0]["code"], "read");
        assert_eq!(e["action"], "R");
        assert_eq!(e["recorded"], "2026-01-01T00:00:00.123Z");
        assert_eq!(e["outcome"], "0");
        assert_eq!(
            e["purposeOfEvent"][0]["coding"][0]["system"],
            PURPOSE_SYSTEM
        );
        assert_eq!(e["purposeOfEvent"][0]["coding"][0]["code"], "TREAT");
        assert!(e["meta"].is_null(), "no BTG flag on a normal access: {e}");
        let agent = &e["agent"][0];
        assert_eq!(agent["who"]["identifier"]["system"], "urn:phivault:user");
        assert_eq!(agent["who"]["identifier"]["value"], "u-clin");
        assert_eq!(agent["who"]["display"], "Dr Ann Smith");
        assert_eq!(agent["role"][0]["coding"][0]["code"], "clinician");
        assert_eq!(agent["requestor"], true);
        assert_eq!(agent["network"]["address"], "192.0.2.7");
        let refs: Vec<&str> = e["entity"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|x| x["what"]["reference"].as_str())
            .collect();
        assert_eq!(refs, ["Patient/pa", "Observation/o1"]);
        assert_eq!(e["entity"][0]["role"]["code"], "1");
        assert_eq!(e["entity"][2]["what"]["identifier"]["value"], "r-1");

        // The patient's view: no network address.
        let p = audit_event(
            &entry(1),
            Some("Dr Ann Smith"),
            &View::Patient {
                user_id: "u-pa".to_owned(),
                patient: "pa".to_owned(),
            },
        );
        assert!(p["agent"][0]["network"].is_null(), "{p}");
        assert!(!p.to_string().contains("192.0.2.7"));
        assert_eq!(p["agent"][0]["who"]["display"], "Dr Ann Smith");
    }

    #[test]
    fn break_the_glass_is_flagged() {
        let mut e = entry(2);
        e.break_glass = true;
        e.purpose = Some("ETREAT".to_owned());
        let v = audit_event(&e, None, &View::Auditor);
        assert_eq!(
            v["meta"]["security"],
            json!([{ "system": ACT_CODE_SYSTEM, "code": "BTG", "display": "break the glass" }])
        );
        let purposes: Vec<&str> = v["purposeOfEvent"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["coding"][0]["code"].as_str().unwrap())
            .collect();
        assert_eq!(purposes, ["ETREAT"]);
        // Flagged even if the recorded purpose said otherwise.
        e.purpose = Some("TREAT".to_owned());
        let v = audit_event(&e, None, &View::Auditor);
        assert_eq!(v["meta"]["security"][0]["code"], "BTG");
        assert!(v["purposeOfEvent"].to_string().contains("ETREAT"));
    }

    #[test]
    fn other_patients_are_not_named_in_a_patients_view() {
        let mut e = entry(8);
        e.role = Some("patient".to_owned());
        e.actor_id = "u-other".to_owned();
        let view = View::Patient {
            user_id: "u-pa".to_owned(),
            patient: "pa".to_owned(),
        };
        let v = audit_event(&e, Some("zoe.private"), &view);
        assert_eq!(
            v["agent"][0]["who"],
            json!({ "display": "a patient account" })
        );
        assert!(!v.to_string().contains("zoe.private") && !v.to_string().contains("u-other"));
        // Their own account is named; auditors see everyone.
        e.actor_id = "u-pa".to_owned();
        let v = audit_event(&e, Some("me.myself"), &view);
        assert_eq!(v["agent"][0]["who"]["display"], "me.myself");
        e.actor_id = "u-other".to_owned();
        let v = audit_event(&e, Some("zoe.private"), &View::Auditor);
        assert_eq!(v["agent"][0]["who"]["display"], "zoe.private");
    }

    #[test]
    fn types_and_subtypes() {
        let cases: &[(&str, &str, Option<&str>)] = &[
            ("GET /fhir/{type}/{id}", "rest", Some("read")),
            (
                "GET /fhir/{type}/{id}/_history/{vid}",
                "rest",
                Some("vread"),
            ),
            (
                "GET /fhir/{type}/{id}/_history",
                "rest",
                Some("history-instance"),
            ),
            ("GET /fhir/{type}", "rest", Some("search-type")),
            ("POST /fhir/{type}/_search", "rest", Some("search-type")),
            ("POST /fhir/{type}", "rest", Some("create")),
            ("PUT /fhir/{type}/{id}", "rest", Some("update")),
            ("DELETE /fhir/{type}/{id}", "rest", Some("delete")),
            ("GET /fhir/metadata", "rest", Some("capabilities")),
            ("POST /fhir", "rest", None),
            ("create", "rest", Some("create")),
            ("update", "rest", Some("update")),
            ("delete", "rest", Some("delete")),
            ("POST /auth/login", "110114", Some("110122")),
            ("POST /auth/logout", "110114", Some("110123")),
            ("POST /oauth/token", "110114", Some("110122")),
            ("POST /auth/totp/enroll", "110114", None),
            ("POST /admin/users", "110136", None),
            ("GET /admin/break-glass", "110101", None),
            ("GET /audit/checkpoint", "110101", None),
            ("GET /fhir/AuditEvent", "110101", Some("search-type")),
            ("GET /fhir/AuditEvent/{id}", "110101", Some("read")),
            (
                "GET /fhir/Patient/{id}/$access-log",
                "110101",
                Some("operation"),
            ),
            ("cli import", "110100", None),
            ("GET (no route)", "110100", None),
        ];
        for (action, ty, sub) in cases {
            let (t, s) = event_type(action);
            assert_eq!(t["code"], *ty, "{action}");
            assert_eq!(
                s.as_ref().and_then(|s| s["code"].as_str()),
                *sub,
                "{action}"
            );
        }
        assert_eq!(outcome_code(Outcome::Allowed), "0");
        assert_eq!(outcome_code(Outcome::Denied), "4");
        assert_eq!(outcome_code(Outcome::Error), "8");
        assert_eq!(instant(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(instant(1_767_225_600_123), "2026-01-01T00:00:00.123Z");
    }

    #[test]
    fn practitioner_names() {
        let name = |v: Value| practitioner_name(&json!({ "name": [v] }));
        assert_eq!(
            name(json!({ "text": " Dr Ann Smith ", "family": "X" })).as_deref(),
            Some("Dr Ann Smith")
        );
        assert_eq!(
            name(json!({ "prefix": ["Dr"], "given": ["Ann", "B"], "family": "Smith" })).as_deref(),
            Some("Dr Ann B Smith")
        );
        assert_eq!(name(json!({ "family": "Smith" })).as_deref(), Some("Smith"));
        assert_eq!(name(json!({ "use": "official" })), None);
        assert_eq!(practitioner_name(&json!({ "name": [] })), None);
        assert_eq!(practitioner_name(&json!({})), None);
    }

    fn pairs(q: &[(&str, &str)]) -> Vec<(String, String)> {
        q.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn parsed(q: &[(&str, &str)]) -> Result<AuditSearch, String> {
        parse_search(&pairs(q), Params::Search).map_err(|e| e.to_string())
    }

    const JAN1: i64 = 1_767_225_600_000;
    const DAY: i64 = 86_400_000;

    #[test]
    fn dates_and_prefixes() {
        assert_eq!(date_range("2026"), Some((JAN1, JAN1 + 365 * DAY)));
        assert_eq!(date_range("2026-01"), Some((JAN1, JAN1 + 31 * DAY)));
        assert_eq!(date_range("2026-12").map(|r| r.1), Some(JAN1 + 365 * DAY));
        assert_eq!(date_range("2026-01-01"), Some((JAN1, JAN1 + DAY)));
        assert_eq!(
            date_range("2026-01-01T00:00:05Z"),
            Some((JAN1 + 5000, JAN1 + 6000))
        );
        assert_eq!(
            date_range("2026-01-01T00:00:05.250Z"),
            Some((JAN1 + 5250, JAN1 + 5251))
        );
        assert_eq!(
            date_range("2026-01-01T01:00:00+01:00"),
            Some((JAN1, JAN1 + 1000))
        );
        for bad in [
            "",
            "notadate",
            "26",
            "2026-1",
            "2026-13",
            "2026-02-30",
            "2026-01-01T00:00Z",
            "2026-01-01T00:00:00",
            "0000",
            "2026-01-01 ",
            "+2026",
        ] {
            assert_eq!(date_range(bad), None, "{bad:?}");
        }
        let q = parsed(&[("date", "ge2026-01-01"), ("date", "lt2026-02-01")]).unwrap();
        assert_eq!(q.query.since, Some(JAN1));
        assert_eq!(q.query.until, Some(JAN1 + 31 * DAY));
        let q = parsed(&[("date", "2026-01-01")]).unwrap();
        assert_eq!(
            (q.query.since, q.query.until),
            (Some(JAN1), Some(JAN1 + DAY))
        );
        let q = parsed(&[("date", "gt2026-01-01"), ("date", "le2026-01-03")]).unwrap();
        assert_eq!(
            (q.query.since, q.query.until),
            (Some(JAN1 + DAY), Some(JAN1 + 3 * DAY))
        );
        // The narrowest bounds win.
        let q = parsed(&[("date", "ge2025"), ("date", "ge2026"), ("date", "lt2027")]).unwrap();
        assert_eq!(q.query.since, Some(JAN1));
        let e = parsed(&[("date", "ne2026")]).unwrap_err();
        assert!(e.contains("date") && e.contains("not supported"), "{e}");
    }

    #[test]
    fn search_parameters() {
        let q = parsed(&[
            ("patient", "Patient/pa"),
            ("agent", "pvcl_1234"),
            ("action", "R"),
            ("outcome", "4"),
            ("_count", "10"),
            ("_cursor", "42"),
        ])
        .unwrap();
        assert_eq!(
            q.query,
            AuditQuery {
                patient: Some("pa".to_owned()),
                actor: Some("pvcl_1234".to_owned()),
                since: None,
                until: None,
                action: Some("R".to_owned()),
                outcome: Some("denied".to_owned()),
                before_seq: Some(42),
            }
        );
        assert_eq!(q.count, 10);
        // Links repeat the filters, not the paging.
        assert_eq!(q.link_pairs.len(), 4);
        assert_eq!(
            parsed(&[("patient", "pa")])
                .unwrap()
                .query
                .patient
                .as_deref(),
            Some("pa")
        );
        assert_eq!(parsed(&[]).unwrap().count, DEFAULT_COUNT);
        assert_eq!(parsed(&[("_count", "100000")]).unwrap().count, MAX_COUNT);
        assert_eq!(parsed(&[("_count", "0")]).unwrap().count, 0);
        for o in ["0", "4", "8"] {
            assert!(parsed(&[("outcome", o)]).is_ok());
        }

        // Each refusal names the parameter and never echoes the value.
        let cases: &[(&str, &str)] = &[
            ("date", "notadate-SECRET"),
            ("outcome", "9"),
            ("outcome", "SECRET"),
            ("action", "X"),
            ("action", "R,C"),
            ("patient", "Patient/a b SECRET"),
            ("patient", "Observation/SECRET$"),
            ("agent", "two words SECRET"),
            ("agent", ""),
            ("_count", "-1"),
            ("_count", "ten"),
            ("_cursor", "0"),
            ("_cursor", "abc"),
        ];
        for (name, value) in cases {
            let e = parsed(&[(name, value)]).unwrap_err();
            assert!(e.contains(name), "{name}={value}: {e}");
            assert!(!e.contains("SECRET"), "{name}={value}: {e}");
        }
        let e = parsed(&[("unknown", "1")]).unwrap_err();
        assert!(e.contains("unknown search parameter unknown"), "{e}");
        let e = parsed(&[("patient", "a"), ("patient", "b")]).unwrap_err();
        assert!(e.contains("patient") && e.contains("once"), "{e}");
        // The access log's patient is its path's; agent searches are the auditors'.
        for name in ["patient", "agent", "_sort"] {
            let e = parse_search(&pairs(&[(name, "x")]), Params::AccessLog)
                .unwrap_err()
                .to_string();
            assert!(e.contains(name), "{e}");
        }
        assert!(
            parse_search(
                &pairs(&[("date", "2026"), ("_count", "5")]),
                Params::AccessLog
            )
            .is_ok()
        );
    }

    fn row_of(e: &AuditEntry) -> AuditRow {
        AuditRow {
            seq: e.seq,
            tenant: "default".to_owned(),
            body: e.canonical_bytes().unwrap(),
            entry_hash: vec![0; 32],
            prev_hash: vec![0; 32],
            time: e.time,
            actor: e.actor_id.clone(),
            patient: e.patient_id.clone(),
            action: Some(e.action_code().to_owned()),
            outcome: Some(e.outcome.as_str().to_owned()),
            chain_mac: None,
            patients: e.patients_concerned(),
        }
    }

    #[test]
    fn rows_whose_columns_disagree_with_their_body_are_left_out() {
        let e = entry(9);
        assert_eq!(entry_of(&row_of(&e)), Some(e.clone()));
        // Rows written before schema v4 have no action and outcome columns yet.
        let mut r = row_of(&e);
        r.action = None;
        r.outcome = None;
        assert!(entry_of(&r).is_some());
        let alterations: Vec<fn(&mut AuditRow)> = vec![
            |r| r.patient = Some("pb".to_owned()),
            |r| r.patient = None,
            |r| r.actor = "u-someone".to_owned(),
            |r| r.time += 1,
            |r| r.action = Some("D".to_owned()),
            |r| r.outcome = Some("denied".to_owned()),
            |r| r.patients.clear(),
            |r| r.patients.push("pz".to_owned()),
            |r| r.seq = 10,
            |r| r.body.push(b' '),
            |r| r.body = b"{}".to_vec(),
        ];
        for (i, alter) in alterations.iter().enumerate() {
            let mut r = row_of(&e);
            alter(&mut r);
            assert_eq!(entry_of(&r), None, "alteration {i}");
        }
        // Filters are re-checked on the body.
        let q = AuditQuery {
            patient: Some("pb".to_owned()),
            ..AuditQuery::default()
        };
        assert!(!matches(&e, &q));
        assert!(matches(&e, &AuditQuery::default()));
    }

    // -----------------------------------------------------------------------------------
    // Over the router

    struct Ctx {
        _dir: tempfile::TempDir,
        state: AppState,
    }

    async fn ctx() -> Ctx {
        let dir = tempfile::tempdir().unwrap();
        let mut key = [0u8; 32];
        phivault_crypto::random_bytes(&mut key).unwrap();
        let keys = phivault_crypto::StaticKeyProvider::from_hex(hex::encode(key));
        let opts = StoreOptions::new(format!("sqlite://{}/t.db", dir.path().display()));
        let store = Store::open(&opts, &keys).await.unwrap();
        let mut state = AppState::new(
            store.clone(),
            Arc::new(Validator::new().unwrap()),
            None,
            "https://127.0.0.1:8443/fhir",
            64 * 1024,
        )
        .await
        .unwrap();
        state.accounts =
            Accounts::with_hasher(store, PasswordHasher::with_params(8, 1, 1).unwrap());
        Ctx { _dir: dir, state }
    }

    impl Ctx {
        async fn user(&self, username: &str, role: Role) -> String {
            self.state
                .accounts
                .create_user(username, Password::new(PASSWORD), role, &NoAudit)
                .await
                .unwrap()
        }

        async fn login(&self, username: &str) -> String {
            let out = self
                .state
                .accounts
                .login(LoginRequest {
                    username: username.to_owned(),
                    password: Password::new(PASSWORD),
                    totp: None,
                    recovery_code: None,
                    address: std::net::IpAddr::from([127, 0, 0, 1]),
                })
                .await
                .unwrap();
            assert!(!out.enrolment_only);
            out.token.expose().to_owned()
        }

        async fn get(&self, token: &str, uri: &str) -> (StatusCode, Value) {
            let mut req = Request::builder()
                .method(Method::GET)
                .uri(uri)
                .header(header::AUTHORIZATION, format!("Bearer {token}"))
                .body(Body::empty())
                .unwrap();
            req.extensions_mut()
                .insert(ConnectInfo(std::net::SocketAddr::from(([127, 0, 0, 1], 1))));
            let resp = crate::router(self.state.clone())
                .oneshot(req)
                .await
                .unwrap();
            let status = resp.status();
            let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
                .await
                .unwrap();
            (
                status,
                serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            )
        }
    }

    fn events(bundle: &Value) -> Vec<Value> {
        bundle["entry"]
            .as_array()
            .map(|e| {
                e.iter()
                    .filter(|x| x["search"]["mode"] == "match")
                    .map(|x| x["resource"].clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn routes_names_views_and_integrity() {
        let c = ctx().await;
        let st = &c.state;
        // A clinician linked to a Practitioner, a clinician without one, and two patients.
        let prac = st
            .store
            .create(
                st.validator
                    .validate(
                        json!({
                            "resourceType": "Practitioner",
                            "name": [{ "given": ["Ann"], "family": "Quillfeather" }],
                        }),
                        None,
                    )
                    .unwrap(),
                &NoAudit,
            )
            .await
            .unwrap();
        let clin = c.user("clin.linked", Role::Clinician).await;
        st.accounts
            .link_practitioner("clin.linked", &prac.id, &NoAudit)
            .await
            .unwrap();
        let bare = c.user("clin.bare", Role::Clinician).await;
        let pat_a = c.user("pat.a", Role::Patient).await;
        let pat_b = c.user("pat.b", Role::Patient).await;
        let a = Id::parse("pa").unwrap();
        st.accounts
            .link_patient("pat.a", &a, &NoAudit)
            .await
            .unwrap();
        st.accounts
            .link_patient("pat.b", &Id::parse("pb").unwrap(), &NoAudit)
            .await
            .unwrap();
        let (client, _) = st
            .accounts
            .create_client("Lab feed", "system/Observation.rs", None, &NoAudit)
            .await
            .unwrap();

        // Entries about A: a normal read, a break-the-glass read, an app's search, B's
        // refused attempt; and one about B.
        let mut e = entry(0);
        e.actor_id = clin.clone();
        st.audit.append(&e).await.unwrap();
        let mut e = entry(0);
        e.actor_id = bare.clone();
        e.break_glass = true;
        e.purpose = Some("ETREAT".to_owned());
        st.audit.append(&e).await.unwrap();
        let mut e = entry(0);
        e.actor_id = client.clone();
        e.actor_kind = ActorKind::Client;
        e.role = Some("app".to_owned());
        e.action = "GET /fhir/{type}".to_owned();
        e.resource_id = None;
        st.audit.append(&e).await.unwrap();
        let mut e = entry(0);
        e.actor_id = pat_b.clone();
        e.role = Some("patient".to_owned());
        e.outcome = Outcome::Denied;
        st.audit.append(&e).await.unwrap();
        let mut e = entry(0);
        e.actor_id = clin.clone();
        e.patient_id = Some("pb".to_owned());
        st.audit.append(&e).await.unwrap();

        let token_a = c.login("pat.a").await;
        let token_b = c.login("pat.b").await;

        // The static routes win over /fhir/{type}...; the generic ones still answer.
        let (s, b) = c.get(&token_a, "/fhir/Patient/pa/$access-log").await;
        assert_eq!(s, StatusCode::OK, "{b}");
        assert_eq!(b["type"], "searchset");
        assert_eq!(b["total"], 4, "{b}");
        let ev = events(&b);
        assert_eq!(ev.len(), 4);
        // Newest first: B's attempt, the app, break-the-glass, the normal read.
        let who: Vec<&str> = ev
            .iter()
            .map(|e| e["agent"][0]["who"]["display"].as_str().unwrap())
            .collect();
        assert_eq!(
            who,
            [
                "a patient account",
                "Lab feed",
                "clin.bare",
                "Ann Quillfeather"
            ]
        );
        let roles: Vec<&str> = ev
            .iter()
            .map(|e| e["agent"][0]["role"][0]["text"].as_str().unwrap())
            .collect();
        assert_eq!(roles, ["patient", "app", "clinician", "clinician"]);
        assert_eq!(ev[2]["meta"]["security"][0]["code"], "BTG");
        assert!(ev[3]["meta"].is_null());
        assert!(
            !b.to_string().contains("192.0.2.7"),
            "no addresses for patients"
        );
        assert!(!b.to_string().contains(&pat_b), "no other patient's id");
        let (s, _) = c.get(&token_a, "/fhir/Patient/pa").await;
        assert_ne!(s, StatusCode::METHOD_NOT_ALLOWED);
        let (s, b2) = c.get(&token_a, "/fhir/Patient/pa/_history").await;
        assert_ne!(
            b2["issue"][0]["diagnostics"], "no such endpoint",
            "{s} {b2}"
        );

        // Paging: one at a time, following next links, no duplicates.
        let mut seen = Vec::new();
        let mut next = Some("/fhir/Patient/pa/$access-log?_count=1".to_owned());
        while let Some(uri) = next {
            let uri = uri.replace("https://127.0.0.1:8443", "");
            let (s, b) = c.get(&token_a, &uri).await;
            assert_eq!(s, StatusCode::OK, "{b}");
            seen.extend(
                events(&b)
                    .iter()
                    .map(|e| e["id"].as_str().unwrap().to_owned()),
            );
            next = b["link"]
                .as_array()
                .unwrap()
                .iter()
                .find(|l| l["relation"] == "next")
                .map(|l| l["url"].as_str().unwrap().to_owned());
        }
        // Each look at the log is itself in the log (newer entries, above the cursor): the
        // pages hold the first look, then the four entries, each once, newest first.
        let seqs: Vec<u64> = seen.iter().map(|s| s.parse().unwrap()).collect();
        assert_eq!(seqs, [6, 4, 3, 2, 1], "{seen:?}");

        // B may not read A's log (nor may anyone without a patient link); B's own is B's.
        let (s, b) = c.get(&token_b, "/fhir/Patient/pa/$access-log").await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
        assert_eq!(b["issue"][0]["diagnostics"], "access denied: no-permit");
        let (s, nobody) = c
            .get(&token_b, "/fhir/Patient/nobody-at-all/$access-log")
            .await;
        assert_eq!((s, &nobody), (StatusCode::FORBIDDEN, &b));
        let (s, b) = c.get(&token_b, "/fhir/Patient/pb/$access-log").await;
        assert_eq!(s, StatusCode::OK);
        let ids: Vec<String> = events(&b)
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect();
        // B's log: entry 5 (B's refused look at A's log is about A, so it is in A's).
        assert!(ids.contains(&"5".to_owned()), "{b}");
        for id in ["1", "2", "3", "4"] {
            assert!(!ids.contains(&id.to_owned()), "{b}");
        }
        // The refused attempt by B was recorded in A's log.
        let (_, b) = c
            .get(&token_a, "/fhir/Patient/pa/$access-log?outcome=4")
            .await;
        assert!(
            events(&b)
                .iter()
                .any(|e| e["subtype"][0]["code"] == "operation"),
            "{b}"
        );

        // The AuditEvent API is for auditors only: a patient is refused, even about
        // themselves.
        for uri in [
            "/fhir/AuditEvent",
            "/fhir/AuditEvent?patient=pa",
            "/fhir/AuditEvent/1",
        ] {
            let (s, b) = c.get(&token_a, uri).await;
            assert_eq!(s, StatusCode::FORBIDDEN, "{uri}: {b}");
        }
        let _ = pat_a;

        // Integrity: a row whose patient column and patient rows were moved to A is left out
        // of A's log and reported; the rest is served.
        for statement in [
            "UPDATE audit_entries SET patient = 'pa' WHERE seq = 5",
            "DELETE FROM audit_entry_patients WHERE seq = 5",
            "INSERT INTO audit_entry_patients (seq, patient) VALUES (5, 'pa')",
        ] {
            sqlx::query(statement)
                .execute(st.store.pool())
                .await
                .unwrap();
        }
        let (s, b) = c
            .get(&token_a, "/fhir/Patient/pa/$access-log?_count=100")
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        let ids: Vec<String> = events(&b)
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect();
        assert!(!ids.contains(&"5".to_owned()), "{b}");
        assert!(ids.contains(&"1".to_owned()), "{b}");
        let outcome = b["entry"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["search"]["mode"] == "outcome")
            .expect("an outcome entry says entries were left out");
        assert!(
            outcome["resource"]
                .to_string()
                .contains("could not be shown"),
            "{outcome}"
        );
    }
}
