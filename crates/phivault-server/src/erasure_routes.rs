//! `POST /fhir/Patient/{id}/$erase`: erasure of a patient by crypto-shredding (DESIGN.md
//! invariant 6).
//!
//! Decided by the policy engine (action `erase` on the patient's `Patient` resource; by
//! default admins only, in their own session). The existence of the patient is looked up only
//! once the request is allowed, so a refusal says nothing about it. The store destroys the
//! patient's data key and records the erasure in its ledger, and the request's audit entry
//! (action, patient, outcome) commits in the same transaction; a failure (404 unknown
//! patient, 409 already erased) is audited by the middleware with its outcome.
//!
//! The answer (200) is a FHIR `Parameters` resource holding the signed erasure certificate:
//! `certificate` (valueString: the certificate's JSON, as `phivault erase` prints it, which
//! [`phivault_audit::ErasureCertificate::verify`] checks against the server's audit public
//! key) and, for reading, its fields `patient`, `erasedAt`, `keyId`,
//! `resourcesMadeUnreadable`, `signature` and `publicKey`. Once answered, the blind search
//! tokens of the erased compartment are deleted in the background
//! ([`phivault_store::Store::sweep_erasures`]); searches leave the compartment out already.

use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use phivault_audit::ErasureCertificate;
use phivault_fhir::Id;
use phivault_policy::Action;
use serde_json::{Value, json};

use crate::audit_sink::RequestSink;
use crate::edge::AuditPatient;
use crate::error::fhir_json;
use crate::fhir_routes::Access;
use crate::{ApiError, AppState};

/// The erasure route. Its static segments take precedence over `/fhir/{type}/{id}/...`.
pub(crate) fn routes() -> Router<AppState> {
    Router::new().route("/fhir/Patient/{id}/$erase", post(erase))
}

/// The certificate as a FHIR `Parameters` resource.
pub(crate) fn certificate_parameters(cert: &ErasureCertificate) -> Value {
    let text = serde_json::to_string(cert).unwrap_or_default();
    json!({
        "resourceType": "Parameters",
        "parameter": [
            { "name": "certificate", "valueString": text },
            { "name": "patient", "valueReference": { "reference": format!("Patient/{}", cert.patient_id) } },
            { "name": "erasedAt", "valueInstant": cert.erased_at },
            { "name": "keyId", "valueString": cert.key_id },
            { "name": "resourcesMadeUnreadable", "valueUnsignedInt": cert.resources },
            { "name": "signature", "valueString": hex::encode(&cert.signature) },
            { "name": "publicKey", "valueString": hex::encode(&cert.public_key) },
        ]
    })
}

async fn erase(
    State(state): State<AppState>,
    access: Access,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    let Ok(Path(raw)) = path else {
        return crate::fhir_routes::path_error_response();
    };
    let patient = match Id::parse(&raw) {
        Ok(id) => id,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let mut response = match erase_of(&state, &access, &patient).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    response.extensions_mut().insert(AuditPatient(patient));
    response
}

async fn erase_of(state: &AppState, access: &Access, patient: &Id) -> Result<Response, ApiError> {
    // Decided before anything is looked up: the refusal is the same for all.
    access.decide_on_patient(Action::Erase, patient)?;
    let sink = RequestSink::single_write(state, access.audit_slot());
    let record = state.store.erase_patient(patient, &sink).await?;
    sink.committed();
    // The erased patient's consents leave this process's memory now (other processes drop
    // theirs at their next consent read: the erasure wrote a fresh consent generation).
    state.consent_memo.clear();
    if state.store.key_residue_pending() {
        tracing::warn!(
            key_id = %record.key_id,
            "erasure answered while the erased key's bytes are still in the database files \
             (database busy); the purge is retried every few seconds"
        );
    }
    let cert = state.audit.certify_erasure(&record);
    // The index tokens go in the background; searches skip the compartment meanwhile.
    tokio::spawn(sweep(state.store.clone()));
    Ok(fhir_json(StatusCode::OK, &certificate_parameters(&cert)))
}

/// How often the serving process drops from its key cache the keys erased by others.
pub(crate) const EVICT_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Drops erased keys from the store's cache every `every`, until aborted (reads and writes
/// never use an erased key anyway; this bounds how long one stays in memory).
pub(crate) async fn evict_loop(store: phivault_store::Store, every: std::time::Duration) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut since = 0;
    loop {
        ticker.tick().await;
        match store.evict_erased_keys(since).await {
            Ok(latest) => since = latest,
            Err(e) => tracing::error!(error = %e, "evicting erased keys failed"),
        }
        // An erasure or rotation whose bytes could not yet be purged from the database files
        // (the database was busy) is retried here until it completes.
        match store.purge_pending_key_residue().await {
            Ok(true) => {}
            Ok(false) => {}
            Err(e) => tracing::error!(error = %e, "purging deleted key material failed"),
        }
    }
}

/// Deletes the search tokens of erased compartments not swept yet (after each erasure, and
/// when the server starts, for a sweep that was interrupted). Logs ids and counts only.
pub(crate) async fn sweep(store: phivault_store::Store) {
    match store.sweep_erasures().await {
        Ok(r) if r.erasures > 0 => tracing::info!(
            erasures = r.erasures,
            index_rows = r.index_rows,
            "erased compartments swept"
        ),
        Ok(_) => {}
        Err(e) => tracing::error!(error = %e, "sweeping erased compartments failed"),
    }
}
