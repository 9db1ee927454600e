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

mod app;
mod entity;

use entity::entities;

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
/// Identifier system of a research export's de-identification configuration (its SHA-256,
/// as the export's report states it).
const DEID_CONFIGURATION_SYSTEM: &str = "urn:phivault:deidentification-configuration";
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
    // The OAuth2 routes follow their template with what they did
    // (`POST /oauth/token refresh_token reuse: family revoked`).
    let route = route.split(' ').next().unwrap_or(route);
    let rest_subtype = || interaction(action).map(|code| coding(INTERACTION_SYSTEM, code, code));
    if route.starts_with("/fhir/AuditEvent") || route == "/fhir/Patient/{id}/$access-log" {
        return (
            coding(DCM_SYSTEM, "110101", "Audit Log Used"),
            rest_subtype(),
        );
    }
    if route.ends_with("/$export") || action == "cli export-patient" || action == "cli deidentify" {
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
        "/auth/login" | "/oauth/token" | "/oauth/authorize/signin" | "/oauth/authorize/totp" => {
            (authentication, Some(coding(DCM_SYSTEM, "110122", "Login")))
        }
        "/auth/logout" | "/oauth/revoke" => {
            (authentication, Some(coding(DCM_SYSTEM, "110123", "Logout")))
        }
        r if r.starts_with("/auth/") || r.starts_with("/oauth/") => (authentication, None),
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
    /// Apps' names by client id.
    apps: HashMap<String, Option<String>>,
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
            apps: HashMap::new(),
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
        out.push(names.event(entry, view).await?);
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
        entries.push(json!({
            "fullUrl": format!("{}/AuditEvent/{}", base(state), entry.seq),
            "resource": names.event(entry, view).await?,
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
    let event = Names::new(&state).event(&entry, &View::Auditor).await?;
    let mut response = fhir_json(StatusCode::OK, &event);
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
mod tests;
