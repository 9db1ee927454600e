//! Transaction and batch Bundles (`POST /fhir`): every entry decided before anything runs,
//! placeholders for new resources, the store's entries in one transaction (or one by one for
//! a batch), then the searches, each scoped like any search.

use std::collections::{HashMap, HashSet};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use phivault_fhir::{
    BundleEntry, BundleKind, BundleRequest, EntryMethod, FhirError, Id, ResourceType, SearchQuery,
    ValidResource,
};
use phivault_policy::{Action, Authorized};
use phivault_store::{EntryDecision, StoreError};
use serde_json::{Value, json};

use super::guard::{Access, refuse_includes};
use super::links::resolve_patient_links;
use super::{
    authorize_replaced, base, check_consent, check_consent_patient, conditional, grant_creator,
    json_body, match_entries, new_patient_facts, parse_json, subset,
};
use crate::audit_sink::RequestSink;
use crate::error::fhir_json;
use crate::{ApiError, AppState};

/// What becomes of one entry once every entry is decided.
enum Plan {
    /// Refused (batch only): the entry's answer.
    Refused(Value),
    /// Run by the store, which checks `decision` against what it writes or reads. `check`:
    /// the action to decide again on the resource it returns (GET read and vread; the Bundle
    /// may have changed its labels); `creates_patient`: a POST of a Patient, whose creator is
    /// then granted access to it.
    Store {
        rtype: ResourceType,
        check: Option<Action>,
        creates_patient: bool,
        decision: EntryDecision,
    },
    /// A search, run here (after the store's entries) so that it is scoped like any search.
    Search(ResourceType, SearchQuery),
}

/// The ids of a Bundle's new resources, chosen before anything is decided and given to the
/// store with the decisions: each POST of a Patient is a new patient decided on its own id,
/// and references to any entry's `fullUrl` are read as the store resolves them.
struct Placeholders {
    /// `fullUrl` -> `Type/id` (the new ids of POSTs, the URL's id for PUTs).
    refs: HashMap<String, String>,
    /// Per entry: the new id of a POST.
    post_ids: Vec<Option<Id>>,
    /// Per entry: the placeholder id of a POSTed Patient.
    patient_of: Vec<Option<Id>>,
    /// Every placeholder patient id.
    new_patients: HashSet<Id>,
}

fn placeholders(entries: &[BundleEntry]) -> Placeholders {
    let mut p = Placeholders {
        refs: HashMap::new(),
        post_ids: Vec::with_capacity(entries.len()),
        patient_of: Vec::with_capacity(entries.len()),
        new_patients: HashSet::new(),
    };
    for e in entries {
        let id = match e.method {
            EntryMethod::Post => Some(Id::generate()),
            EntryMethod::Put => e.url.id.clone(),
            _ => None,
        };
        let new_patient = (e.method == EntryMethod::Post && e.url.rtype == ResourceType::PATIENT)
            .then(|| id.clone())
            .flatten();
        if let Some(patient) = &new_patient {
            p.new_patients.insert(patient.clone());
        }
        if let (Some(full), Some(id)) = (&e.full_url, &id) {
            p.refs
                .insert(full.clone(), format!("{}/{}", e.url.rtype, id));
        }
        p.patient_of.push(new_patient);
        p.post_ids
            .push(id.filter(|_| e.method == EntryMethod::Post));
    }
    p
}

/// An error as the answer of one entry of a batch.
fn error_entry(e: ApiError) -> Value {
    let (status, outcome) = e.status_and_outcome();
    json!({
        "response": {
            "status": format!(
                "{} {}",
                status.as_u16(),
                status.canonical_reason().unwrap_or("Error")
            ),
            "outcome": outcome.to_json(),
        }
    })
}

/// An entry's error as the error of a whole transaction, naming the entry.
pub(super) fn in_entry(index: usize, e: ApiError) -> ApiError {
    match e {
        ApiError::Forbidden(m) => ApiError::Forbidden(format!("Bundle.entry[{index}]: {m}")),
        ApiError::BadRequest(m) => ApiError::BadRequest(format!("Bundle.entry[{index}]: {m}")),
        ApiError::Fhir(f) => ApiError::Fhir(FhirError::BadBundleEntry {
            index,
            message: f.to_string(),
        }),
        ApiError::Store(s) => ApiError::Store(StoreError::Entry {
            index,
            source: Box::new(s),
        }),
        other => other,
    }
}

/// Decides one entry (before anything runs).
async fn plan_entry(
    state: &AppState,
    access: &mut Access,
    entry: &BundleEntry,
    placeholders: &Placeholders,
    index: usize,
    resolve: bool,
) -> Result<Plan, ApiError> {
    let rtype = entry.url.rtype;
    let store = |check, creates_patient, proof: Option<Authorized>| Plan::Store {
        rtype,
        check,
        creates_patient,
        decision: EntryDecision {
            proof,
            new_id: placeholders.post_ids.get(index).cloned().flatten(),
        },
    };
    // The body as the store will write it (references resolved in a transaction).
    let body = || -> Result<ValidResource, ApiError> {
        let mut resource = entry.resource.clone().ok_or_else(|| {
            ApiError::internal(&"a write entry without a resource passed parsing")
        })?;
        if resolve && !placeholders.refs.is_empty() {
            resource.rewrite_references(&placeholders.refs);
        }
        Ok(resource)
    };
    let url_id = || {
        entry
            .url
            .id
            .clone()
            .ok_or_else(|| ApiError::internal(&"an entry without an id passed parsing"))
    };
    let new_patients = if resolve {
        placeholders.new_patients.clone()
    } else {
        HashSet::new()
    };
    match entry.method {
        EntryMethod::Post => {
            let resource = body()?;
            check_consent(&resource)?;
            let creates_patient = rtype == ResourceType::PATIENT;
            let facts = if creates_patient {
                let placeholder = placeholders.patient_of.get(index).cloned().flatten();
                new_patient_facts(&resource, placeholder.as_ref())
            } else {
                Access::body_facts(&resource, &new_patients)
            };
            let proof = access.authorize_body(Action::Create, rtype, &facts).await?;
            check_consent_patient(state, &resource, &new_patients).await?;
            Ok(store(None, creates_patient, Some(proof)))
        }
        EntryMethod::Put => {
            let id = url_id()?;
            let current = access.load(rtype, &id).await?;
            let resource = body()?;
            check_consent(&resource)?;
            let action = authorize_replaced(access, rtype, &current).await?;
            let facts = Access::body_facts(&resource, &new_patients);
            let proof = access.authorize_body(action, rtype, &facts).await?;
            check_consent_patient(state, &resource, &new_patients).await?;
            Ok(store(None, false, Some(proof)))
        }
        EntryMethod::Delete => {
            let id = url_id()?;
            let current = access.load(rtype, &id).await?;
            let proof = access
                .authorize_current(Action::Delete, rtype, &current)
                .await?;
            Ok(store(None, false, proof))
        }
        EntryMethod::Get => match &entry.url.id {
            Some(id) => {
                let action = if entry.url.version.is_some() {
                    Action::Vread
                } else {
                    Action::Read
                };
                let current = access.load(rtype, id).await?;
                let proof = access.authorize_current(action, rtype, &current).await?;
                Ok(store(Some(action), false, proof))
            }
            None => {
                refuse_includes(&entry.url.query)?;
                let query = SearchQuery::parse(rtype, &entry.url.query, false)?;
                access.authorize_query(rtype).await?;
                Ok(Plan::Search(rtype, query))
            }
        },
    }
}

/// The answer of a search entry: a searchset, scoped like any search.
async fn search_entry(
    state: &AppState,
    access: &mut Access,
    rtype: ResourceType,
    query: &SearchQuery,
) -> Result<Value, ApiError> {
    let (total, mut resources) = access.search(rtype, query).await?;
    subset::matches(query.subset.as_ref(), &mut resources);
    let mut set = json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": match_entries(state, resources),
    });
    if query.total != phivault_fhir::TotalMode::None {
        set["total"] = json!(total);
    }
    Ok(json!({
        "resource": set,
        "response": { "status": "200 OK" },
    }))
}

/// The status code of an entry's answer (`"201 Created"` -> 201).
fn entry_status(answer: &Value) -> Option<u16> {
    answer
        .get("response")?
        .get("status")?
        .as_str()?
        .split(' ')
        .next()?
        .parse()
        .ok()
}

/// A transaction or batch: every entry is decided before anything runs. In a transaction, any
/// refusal refuses the whole Bundle (403 naming the entry) and nothing is written; in a batch,
/// refused entries answer 403 and the others run.
pub(super) async fn transaction(
    State(state): State<AppState>,
    mut access: Access,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = json_body(&state, &headers, body).await?;
    let value = parse_json(&bytes)?;
    let limit = state.store.max_bundle_entries();
    // Checked here too so that the answer is 413 whatever the parser reports.
    if let Some(count) = value.get("entry").and_then(Value::as_array).map(Vec::len)
        && count > limit
    {
        return Err(ApiError::Fhir(FhirError::TooManyEntries { count, limit }));
    }
    let mut request = BundleRequest::parse(&state.validator, value, limit)?;
    access.require(Action::Transaction)?;
    let kind = request.kind;
    let atomic = kind == BundleKind::Transaction;
    let mut failed = conditional::resolve_bundle(&mut access, &mut request.entries, atomic).await?;
    let subsets = subset::bundle_reads(&request.entries, &mut failed, atomic)?;
    let placeholders = placeholders(&request.entries);
    // A batch resolves no placeholders: its entries are independent.
    let resolved_by_store = if atomic {
        placeholders.refs.clone()
    } else {
        HashMap::new()
    };

    let mut plans = Vec::with_capacity(request.entries.len());
    for (index, entry) in request.entries.iter_mut().enumerate() {
        let linked = match (failed[index].take(), entry.resource.as_mut()) {
            (Some(e), _) => Err(e),
            (None, Some(resource)) => {
                resolve_patient_links(&state, &mut access, resource, &resolved_by_store).await
            }
            (None, None) => Ok(()),
        };
        let planned = match linked {
            Ok(()) => plan_entry(&state, &mut access, entry, &placeholders, index, atomic).await,
            Err(e) => Err(e),
        };
        match planned {
            Ok(plan) => plans.push(plan),
            Err(e) if e.is_server_fault() => return Err(e),
            Err(e) if atomic => return Err(in_entry(index, e)),
            Err(e) => plans.push(Plan::Refused(error_entry(e))),
        }
    }

    // The store runs the entries it may; refusals and searches are answered here.
    let mut answers: Vec<Value> = vec![Value::Null; plans.len()];
    let mut store_index = Vec::new();
    let mut to_store = Vec::new();
    let mut decisions = Vec::new();
    for (index, (entry, plan)) in request.entries.into_iter().zip(&mut plans).enumerate() {
        if let Plan::Store { decision, .. } = plan {
            store_index.push(index);
            to_store.push(entry);
            decisions.push(std::mem::take(decision));
        }
    }
    if !to_store.is_empty() {
        // One audit entry per written resource, in the transaction that writes it; the
        // Bundle request's own entry follows from the audit middleware.
        let sink = RequestSink::per_resource(&state, access.audit_slot());
        let response = state
            .store
            .bundle_authorized(
                BundleRequest {
                    kind,
                    entries: to_store,
                },
                decisions,
                &sink,
            )
            .await
            .map_err(|e| match e {
                StoreError::Entry { index, source } => StoreError::Entry {
                    index: store_index.get(index).copied().unwrap_or(index),
                    source,
                },
                other => other,
            })?;
        if let Some(Value::Array(entries)) = response.get("entry").cloned() {
            for (k, answer) in entries.into_iter().enumerate() {
                if let Some(&index) = store_index.get(k) {
                    answers[index] = answer;
                }
            }
        }
    }
    for (index, plan) in plans.into_iter().enumerate() {
        match plan {
            Plan::Refused(answer) => answers[index] = answer,
            Plan::Search(rtype, query) => {
                answers[index] = match search_entry(&state, &mut access, rtype, &query).await {
                    Ok(answer) => answer,
                    Err(e) if atomic || e.is_server_fault() => return Err(in_entry(index, e)),
                    Err(e) => error_entry(e),
                };
            }
            Plan::Store {
                rtype,
                check,
                creates_patient,
                ..
            } => {
                let status = entry_status(&answers[index]);
                if let (Some(action), Some(200)) = (check, status)
                    && let Some(resource) = answers[index].get("resource").cloned()
                    && let Err(e) = access.authorize_stored_body(action, rtype, &resource).await
                {
                    // Decided on the stored resource before running; refused now only if the
                    // Bundle itself moved it out of reach.
                    if e.is_server_fault() {
                        return Err(e);
                    }
                    tracing::warn!(index, "a Bundle read was refused after the Bundle ran");
                    answers[index] = error_entry(e);
                }
                subset::bundle_answer(&mut answers[index], subsets[index].as_ref());
                if creates_patient
                    && status == Some(201)
                    && let Some(id) = answers[index]
                        .get("resource")
                        .and_then(|r| r.get("id"))
                        .and_then(Value::as_str)
                        .and_then(|s| Id::parse(s).ok())
                {
                    grant_creator(&access, &id).await;
                }
            }
        }
    }

    // The store answers relative `fullUrl`s (`Patient/123`); clients get absolute ones.
    for entry in &mut answers {
        if let Some(full) = entry.get_mut("fullUrl")
            && let Some(rel) = full.as_str()
            && !rel.contains(':')
        {
            *full = Value::String(format!("{}/{}", base(&state), rel));
        }
    }
    let response = json!({
        "resourceType": "Bundle",
        "type": if atomic { "transaction-response" } else { "batch-response" },
        "entry": answers,
    });
    Ok(access.mark(fhir_json(StatusCode::OK, &response)))
}
