//! The audit sink of the server's writes (DESIGN.md invariant 2: "writes and their audit entry
//! commit in one transaction").
//!
//! The store calls a [`phivault_store::AuditSink`] inside every write's transaction, before
//! the commit; [`RequestSink`] appends the entries there, built from the request's
//! [`AuditSlot`] (who, purpose, break-the-glass, address, request id) and what the store
//! wrote (type, id, patient):
//! - a single-resource write (`POST /fhir/{type}`, `PUT` and `DELETE /fhir/{type}/{id}`):
//!   THE request's entry (its `METHOD /route/template`, outcome allowed), so that the write
//!   and its entry commit together. Once the store call returned Ok (the transaction
//!   committed), the handler calls [`RequestSink::committed`], which tells the slot, and the
//!   audit middleware appends nothing more;
//! - a transaction or batch Bundle (`POST /fhir`): one entry per written resource (action
//!   `create`, `update` or `delete`) in the transaction that wrote it; the middleware appends
//!   the Bundle request's own entry afterwards, which carries the sensitivity labels of
//!   everything the Bundle decided on (the per-resource entries carry none).
//!
//! - an account change (the admin API, logout, TOTP enrolment, OAuth2 revocation: the store's
//!   [`AccountSink`]): THE request's entry, naming the Patient or Practitioner the change is
//!   about, committed with the change; the handler calls [`RequestSink::committed`] as for a
//!   single-resource write. An account change that follows a request's own write (the care
//!   grant of a clinician who created a Patient) gets an entry of its own instead, action
//!   the change's kind (`granted`), in the change's transaction ([`RequestSink::per_resource`]).
//!
//! A failing append fails the sink, which rolls the write back; the slot is told, and the
//! middleware answers 503 (the trail is unavailable) instead of the store's error.

use std::sync::{Arc, Mutex};

use phivault_audit::{AuditError, AuditLog, Outcome};
use phivault_store::{
    AccountChange, AccountSink, AnyConnection, AuditSink, SinkFuture, StoreError, Written,
};

use crate::AppState;
use crate::edge::AuditSlot;

/// What the sink appends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The request's own entry (one write per request).
    Request,
    /// One entry per written resource (Bundles).
    PerResource,
}

/// The audit sink of one request's writes.
pub(crate) struct RequestSink {
    audit: Arc<AuditLog>,
    slot: AuditSlot,
    mode: Mode,
    /// The seq of the request's entry, appended in a transaction not yet known committed.
    pending: Mutex<Option<u64>>,
}

impl std::fmt::Debug for RequestSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestSink")
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl RequestSink {
    /// The sink of a single-resource write: the request's entry commits with the write.
    pub(crate) fn single_write(state: &AppState, slot: AuditSlot) -> RequestSink {
        RequestSink::new(state, slot, Mode::Request)
    }

    /// The sink of an account change: the request's entry commits with the change.
    pub(crate) fn account_change(state: &AppState, slot: AuditSlot) -> RequestSink {
        RequestSink::new(state, slot, Mode::Request)
    }

    /// The sink of a Bundle's writes: one entry per written resource.
    pub(crate) fn per_resource(state: &AppState, slot: AuditSlot) -> RequestSink {
        RequestSink::new(state, slot, Mode::PerResource)
    }

    fn new(state: &AppState, slot: AuditSlot, mode: Mode) -> RequestSink {
        RequestSink {
            audit: state.audit.clone(),
            slot,
            mode,
            pending: Mutex::new(None),
        }
    }

    /// The store call returned Ok: the transaction holding the request's entry committed.
    /// Tells the slot, so the middleware does not append a second entry. Call only after a
    /// successful write; without a pending entry (nothing was written) it does nothing.
    pub(crate) fn committed(&self) {
        let seq = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(seq) = seq {
            self.slot.note_entry_written(seq);
        }
    }

    async fn append(
        &self,
        conn: &mut AnyConnection,
        written: &[Written],
    ) -> Result<(), StoreError> {
        if self.mode == Mode::Request
            && let [one] = written
        {
            let entry = self.slot.entry(
                self.slot.action().to_owned(),
                Some(one.rtype.to_string()),
                Some(one.id.to_string()),
                one.patient.as_ref().map(ToString::to_string),
                Outcome::Allowed,
            );
            let seq = self
                .audit
                .append_in(conn, &entry)
                .await
                .map_err(store_error)?;
            *self.pending.lock().unwrap_or_else(|e| e.into_inner()) = Some(seq);
            return Ok(());
        }
        let entries: Vec<_> = written
            .iter()
            .map(|w| {
                let mut entry = self.slot.entry(
                    w.kind.as_str().to_owned(),
                    Some(w.rtype.to_string()),
                    Some(w.id.to_string()),
                    w.patient.as_ref().map(ToString::to_string),
                    Outcome::Allowed,
                );
                // The slot's labels are the whole request's: the Bundle's own entry carries
                // them, not each written resource's.
                entry.labels.clear();
                entry
            })
            .collect();
        self.audit
            .append_all_in(conn, &entries)
            .await
            .map_err(store_error)?;
        Ok(())
    }

    /// Appends the request's entry for an account change and remembers its seq (pending
    /// until the change's transaction commits).
    async fn append_change(
        &self,
        conn: &mut AnyConnection,
        change: &AccountChange,
    ) -> Result<(), StoreError> {
        let (resource_type, resource_id) = change
            .resource
            .as_ref()
            .map(|(t, id)| (t.to_string(), id.to_string()))
            .unzip();
        let action = match self.mode {
            Mode::Request => self.slot.action().to_owned(),
            Mode::PerResource => change.kind.as_str().to_owned(),
        };
        let mut entry = self.slot.entry(
            action,
            resource_type,
            resource_id,
            change.patient.as_ref().map(ToString::to_string),
            Outcome::Allowed,
        );
        if self.mode == Mode::PerResource {
            // A change following the request's write (a care grant): the request's own entry
            // carries what it decided on.
            entry.labels.clear();
        }
        let seq = self
            .audit
            .append_in(conn, &entry)
            .await
            .map_err(store_error)?;
        if self.mode == Mode::Request {
            *self.pending.lock().unwrap_or_else(|e| e.into_inner()) = Some(seq);
        }
        Ok(())
    }
}

/// An audit failure as the store's error (it rolls the write back).
fn store_error(e: AuditError) -> StoreError {
    match e {
        AuditError::Store(e) => e,
        // Names the kind of failure, never an entry's content.
        other => StoreError::Config(format!("the audit entry could not be written: {other}")),
    }
}

impl AuditSink for RequestSink {
    fn record<'a>(&'a self, conn: &'a mut AnyConnection, written: &'a [Written]) -> SinkFuture<'a> {
        Box::pin(async move {
            let result = self.append(conn, written).await;
            if let Err(e) = &result {
                tracing::error!(error = %e, "audit entry of a write failed; the write is rolled back");
                self.slot.note_sink_failed();
            }
            result
        })
    }
}

impl AccountSink for RequestSink {
    fn record_account<'a>(
        &'a self,
        conn: &'a mut AnyConnection,
        change: &'a AccountChange,
    ) -> SinkFuture<'a> {
        Box::pin(async move {
            let result = self.append_change(conn, change).await;
            if let Err(e) = &result {
                tracing::error!(
                    error = %e,
                    change = change.kind.as_str(),
                    "audit entry of an account change failed; the change is rolled back"
                );
                self.slot.note_sink_failed();
            }
            result
        })
    }
}
