//! Transaction (atomic) and batch Bundles.

use std::collections::HashMap;

use phivault_fhir::conditional::{Finder, resolve_conditions};
use phivault_fhir::{
    BundleEntry, BundleKind, BundleRequest, EntryMethod, Id, OperationOutcome, ResourceType,
    SearchQuery,
};
use phivault_policy::{Action, Authorized};
use serde_json::{Value, json};
use sqlx::AnyConnection;

use crate::released::{Unreleased, check_write};
use crate::resources::Prepared;
use crate::{AuditSink, Store, StoreError, StoredResource, WriteKind, Written};

/// The decision a caller made on one entry of a Bundle before running it
/// ([`Store::bundle_authorized`]).
#[derive(Debug, Default)]
pub struct EntryDecision {
    /// The proof for the entry's action on its resource: required for every entry that
    /// writes or returns a resource. `None` only where the caller found nothing to decide on
    /// (a resource that does not exist, or is deleted or erased): the entry may then answer
    /// its error, and nothing else.
    pub proof: Option<Authorized>,
    /// For a POST: the id the caller decided the new resource on (a new Patient is decided
    /// on its own id, and `urn:uuid:` references to it are resolved to it).
    pub new_id: Option<Id>,
}

/// What an entry needs besides the request: its prepared write, if any, and the caller's
/// decision (`None` when run without decisions, [`Store::bundle`]).
struct Work {
    entry: BundleEntry,
    prepared: Option<Prepared>,
    decision: Option<EntryDecision>,
}

fn status_line(code: u16) -> String {
    let text = match code {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        409 => "Conflict",
        410 => "Gone",
        412 => "Precondition Failed",
        422 => "Unprocessable Entity",
        503 => "Service Unavailable",
        _ => "Error",
    };
    format!("{code} {text}")
}

fn written_entry(stored: &StoredResource, created: bool) -> Value {
    json!({
        "fullUrl": format!("{}/{}", stored.rtype, stored.id),
        "resource": stored.body,
        "response": {
            "status": status_line(if created { 201 } else { 200 }),
            "location": format!("{}/{}/_history/{}", stored.rtype, stored.id, stored.version),
            "etag": format!("W/\"{}\"", stored.version),
            "lastModified": stored.last_updated,
        }
    })
}

/// Processing order required by FHIR for transactions: DELETE, POST, PUT, GET.
fn rank(m: EntryMethod) -> u8 {
    match m {
        EntryMethod::Delete => 0,
        EntryMethod::Post => 1,
        EntryMethod::Put => 2,
        EntryMethod::Get => 3,
    }
}

/// The proof-free search of conditions: everything is visible to the master key's holder.
struct StoreFinder<'a>(&'a Store);

impl Finder for StoreFinder<'_> {
    type Error = StoreError;

    async fn find(
        &mut self,
        rtype: ResourceType,
        query: &SearchQuery,
    ) -> Result<(u64, Vec<Id>), StoreError> {
        let page = self.0.search(rtype, query).await?;
        Ok((
            page.total,
            page.resources.into_iter().map(|r| r.id).collect(),
        ))
    }
}

impl Store {
    /// Runs a transaction or batch Bundle and returns the response Bundle. Conditional creates
    /// (`ifNoneExist`) and conditional references are resolved first, over everything
    /// ([`phivault_fhir::conditional`]).
    /// `audit` records the writes in their transaction: all of a transaction's writes at once,
    /// each batch entry's write in that entry's own transaction. Proof-free: for the master
    /// key's holder (import) and tests; the server uses [`Store::bundle_authorized`].
    pub async fn bundle(
        &self,
        request: BundleRequest,
        audit: &dyn AuditSink,
    ) -> Result<Value, StoreError> {
        self.run_bundle(request, None, audit).await
    }

    /// [`Store::bundle`] with the caller's decision on every entry, in entry order: each
    /// write and each read runs only when its proof covers the compartment the store finds
    /// (computed from the body it writes, or read from the body it decrypted).
    pub async fn bundle_authorized(
        &self,
        request: BundleRequest,
        decisions: Vec<EntryDecision>,
        audit: &dyn AuditSink,
    ) -> Result<Value, StoreError> {
        if decisions.len() != request.entries.len() {
            return Err(StoreError::Config(
                "a Bundle needs one decision per entry".to_owned(),
            ));
        }
        self.run_bundle(request, Some(decisions), audit).await
    }

    async fn run_bundle(
        &self,
        mut request: BundleRequest,
        decisions: Option<Vec<EntryDecision>>,
        audit: &dyn AuditSink,
    ) -> Result<Value, StoreError> {
        let atomic = request.kind == BundleKind::Transaction;
        let mut failed: Vec<Option<StoreError>> = match decisions {
            // The caller resolved the conditions with its own access (and cleared them).
            Some(_) => request
                .entries
                .iter()
                .map(|e| {
                    e.if_none_exist.as_ref().map(|_| StoreError::Undecided {
                        rtype: e.url.rtype.to_string(),
                    })
                })
                .collect(),
            // Proof-free: resolved with access to everything.
            None => {
                resolve_conditions(&mut request.entries, atomic, &mut StoreFinder(self)).await?
            }
        };
        if atomic
            && let Some((index, e)) = failed
                .iter_mut()
                .enumerate()
                .find_map(|(i, e)| e.take().map(|e| (i, e)))
        {
            return Err(StoreError::Entry {
                index,
                source: Box::new(e),
            });
        }
        let entries: Vec<(BundleEntry, Option<EntryDecision>)> = match decisions {
            Some(d) => request
                .entries
                .into_iter()
                .zip(d.into_iter().map(Some))
                .collect(),
            None => request.entries.into_iter().map(|e| (e, None)).collect(),
        };
        match request.kind {
            BundleKind::Transaction => self.transaction(entries, audit).await,
            BundleKind::Batch => self.batch(entries, failed, audit).await,
        }
    }

    /// Ids for new resources, `urn:uuid:` references resolved, keys and tokens prepared.
    async fn plan(
        &self,
        entries: Vec<(BundleEntry, Option<EntryDecision>)>,
        resolve: bool,
    ) -> Result<Vec<Work>, StoreError> {
        let mut map: HashMap<String, String> = HashMap::new();
        let mut ids: Vec<Option<Id>> = Vec::with_capacity(entries.len());
        for (e, decision) in &entries {
            let id = match e.method {
                EntryMethod::Post => Some(
                    decision
                        .as_ref()
                        .and_then(|d| d.new_id.clone())
                        .unwrap_or_else(Id::generate),
                ),
                EntryMethod::Put => e.url.id.clone(),
                _ => None,
            };
            if let (Some(full), Some(id)) = (&e.full_url, &id) {
                map.insert(full.clone(), format!("{}/{}", e.url.rtype, id));
            }
            ids.push(id);
        }
        let mut work = Vec::with_capacity(entries.len());
        for (index, ((mut entry, decision), id)) in entries.into_iter().zip(ids).enumerate() {
            let prepared = match (entry.resource.take(), id) {
                (Some(mut resource), Some(id)) => {
                    if resolve && !map.is_empty() {
                        resource.rewrite_references(&map);
                    }
                    Some(
                        self.prepare(resource, id)
                            .await
                            .map_err(|e| StoreError::Entry {
                                index,
                                source: Box::new(e),
                            })?,
                    )
                }
                _ => None,
            };
            work.push(Work {
                entry,
                prepared,
                decision,
            });
        }
        Ok(work)
    }

    async fn transaction(
        &self,
        entries: Vec<(BundleEntry, Option<EntryDecision>)>,
        audit: &dyn AuditSink,
    ) -> Result<Value, StoreError> {
        let work = self.plan(entries, true).await?;
        let mut order: Vec<usize> = (0..work.len()).collect();
        order.sort_by_key(|&i| (rank(work[i].entry.method), i));
        let mut slots: Vec<Option<Work>> = work.into_iter().map(Some).collect();
        let mut responses: Vec<Value> = vec![Value::Null; slots.len()];
        let mut written = Vec::new();
        let _guard = self.write_guard().await;
        let mut tx = self.begin_write().await?;
        for index in order {
            let Some(w) = slots[index].take() else {
                continue;
            };
            let (response, wrote) =
                self.run_entry(&mut tx, w)
                    .await
                    .map_err(|e| StoreError::Entry {
                        index,
                        source: Box::new(e),
                    })?;
            responses[index] = response;
            written.extend(wrote);
        }
        if !written.is_empty() {
            audit.record(&mut tx, &written).await?;
        }
        tx.commit().await?;
        Ok(json!({
            "resourceType": "Bundle",
            "type": "transaction-response",
            "entry": responses,
        }))
    }

    async fn batch(
        &self,
        entries: Vec<(BundleEntry, Option<EntryDecision>)>,
        failed: Vec<Option<StoreError>>,
        audit: &dyn AuditSink,
    ) -> Result<Value, StoreError> {
        let mut responses = Vec::with_capacity(entries.len());
        for (entry, failed) in entries.into_iter().zip(failed) {
            let one = async {
                if let Some(e) = failed {
                    return Err(e);
                }
                let mut work = self.plan(vec![entry], false).await?;
                let w = work
                    .pop()
                    .ok_or_else(|| StoreError::Config("empty plan".to_owned()))?;
                let _guard = self.write_guard().await;
                let mut tx = self.begin_write().await?;
                let (r, wrote) = self.run_entry(&mut tx, w).await?;
                if let Some(wrote) = wrote {
                    audit.record(&mut tx, &[wrote]).await?;
                }
                tx.commit().await?;
                Ok::<Value, StoreError>(r)
            }
            .await;
            responses.push(match one {
                Ok(v) => v,
                Err(e) => {
                    let e = match e {
                        StoreError::Entry { source, .. } => *source,
                        other => other,
                    };
                    let status = e.http_status();
                    let message = if e.is_internal() {
                        tracing::error!(error = %e, "batch entry failed");
                        "internal error".to_owned()
                    } else {
                        e.to_string()
                    };
                    json!({
                        "response": {
                            "status": status_line(status),
                            "outcome": OperationOutcome::error(e.issue_code(), message).to_json(),
                        }
                    })
                }
            });
        }
        Ok(json!({
            "resourceType": "Bundle",
            "type": "batch-response",
            "entry": responses,
        }))
    }

    /// Runs one entry; returns its response entry and what it wrote, if anything.
    async fn run_entry(
        &self,
        conn: &mut AnyConnection,
        w: Work,
    ) -> Result<(Value, Option<Written>), StoreError> {
        let url = &w.entry.url;
        // With decisions: `Some(proof)` to check against, `None` for none given.
        let checked = w.decision.map(|d| d.proof);
        let check = |actions: &[Action], patient: Option<&Id>| match &checked {
            None => Ok(()),
            Some(Some(proof)) => check_write(proof, actions, url.rtype, patient),
            Some(None) => Err(StoreError::Undecided {
                rtype: url.rtype.to_string(),
            }),
        };
        let release = |r: StoredResource| match &checked {
            None => Ok(r),
            Some(Some(proof)) => Unreleased::stored(r).release(proof),
            Some(None) => Err(StoreError::Undecided {
                rtype: url.rtype.to_string(),
            }),
        };
        match (w.entry.method, w.prepared) {
            (EntryMethod::Post, Some(p)) => {
                check(&[Action::Create], p.patient.as_ref())?;
                let out = self.put_in(conn, p, None, true).await?;
                Ok((written_entry(&out.stored, true), Some(out.written())))
            }
            (EntryMethod::Put, Some(p)) => {
                check(&[Action::Update, Action::Create], p.patient.as_ref())?;
                let out = self.put_in(conn, p, w.entry.if_match, false).await?;
                Ok((written_entry(&out.stored, out.created), Some(out.written())))
            }
            (EntryMethod::Delete, _) => {
                let id = url.id.as_ref().ok_or_else(|| {
                    StoreError::Config("DELETE entry without id passed parsing".to_owned())
                })?;
                let out = self.delete_in(conn, url.rtype, id).await?;
                if let Some(out) = &out {
                    check(&[Action::Delete], out.patient.as_ref())?;
                }
                let wrote = out.map(|out| Written {
                    kind: WriteKind::Delete,
                    rtype: url.rtype,
                    id: id.clone(),
                    version: out.version,
                    patient: out.patient,
                });
                Ok((json!({ "response": { "status": status_line(204) } }), wrote))
            }
            (EntryMethod::Get, _) => match (&url.id, url.version) {
                (Some(id), Some(v)) => {
                    let r = release(self.vread(url.rtype, id, v).await?)?;
                    Ok((
                        json!({ "resource": r.body, "response": {
                        "status": status_line(200), "etag": format!("W/\"{}\"", r.version) } }),
                        None,
                    ))
                }
                (Some(id), None) => {
                    let r = release(self.read_in(conn, url.rtype, id).await?)?;
                    Ok((
                        json!({ "resource": r.body, "response": {
                        "status": status_line(200), "etag": format!("W/\"{}\"", r.version) } }),
                        None,
                    ))
                }
                (None, _) => {
                    // With decisions, searches are the caller's (scoped per principal, every
                    // hit decided): never run here.
                    if checked.is_some() {
                        return Err(StoreError::Undecided {
                            rtype: url.rtype.to_string(),
                        });
                    }
                    let q = SearchQuery::parse(url.rtype, &url.query, false)?;
                    let page = self.search(url.rtype, &q).await?;
                    let entries: Vec<Value> = page
                        .resources
                        .into_iter()
                        .map(|r| {
                            json!({
                                "fullUrl": format!("{}/{}", r.rtype, r.id),
                                "resource": r.body,
                                "search": { "mode": "match" },
                            })
                        })
                        .collect();
                    Ok((
                        json!({ "resource": {
                        "resourceType": "Bundle", "type": "searchset",
                        "total": page.total, "entry": entries,
                    }, "response": { "status": status_line(200) } }),
                        None,
                    ))
                }
            },
            (EntryMethod::Post | EntryMethod::Put, None) => Err(StoreError::Config(
                "a write entry without a resource passed parsing".to_owned(),
            )),
        }
    }
}
