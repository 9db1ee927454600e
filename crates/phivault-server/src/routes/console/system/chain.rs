//! `GET /admin/console/audit` (the latest signed checkpoint and the last verification) and
//! `POST /admin/console/audit/verify` (verify the whole trail now).
//!
//! The verification checks every entry's chain link, hash and tag and every stored
//! checkpoint's signature and root (`AuditLog::verify`): its cost grows with the trail, so it
//! runs in the background ([`super::jobs`]) and the post waits for it at most
//! [`VERIFY_WAIT`] before it shows the page, which then says how far it got. Administrators
//! and auditors may start it; one runs at a time (a second post joins the running one).

use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use serde::Serialize;

use super::jobs::{VerificationView, jobs_of};
use super::text::when_ms;
use super::{checked_post, failed, show, username};
use crate::AppState;
use crate::edge::AuditSlot;
use crate::web::session::{Area, see_other, signed_in};

/// The page's path.
const PATH: &str = "/admin/console/audit";

/// How long a verify post waits for the verification before it shows the page (which then
/// shows its progress).
pub(super) const VERIFY_WAIT: Duration = Duration::from_secs(15);

/// `GET /admin/console/audit`.
pub(super) async fn page(
    State(state): State<AppState>,
    slot: AuditSlot,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = signed_in(&state, &slot, &headers, Area::Console, PATH).await {
        return r;
    }
    match context(&state).await {
        Ok(context) => show(&state, &headers, "console/audit.html", "audit", context),
        Err(r) => r,
    }
}

/// The audit page's values.
#[derive(Serialize)]
pub(super) struct AuditPage {
    /// The latest signed checkpoint.
    pub(super) checkpoint: Option<CheckpointView>,
    /// Entries in the trail.
    pub(super) entries: u64,
    /// Entries after the latest checkpoint.
    pub(super) unsealed: u64,
    /// The checkpoint-signing public key, hex.
    pub(super) public_key: String,
    /// The last verification of this process.
    pub(super) verification: Option<VerificationView>,
    /// [`VERIFY_WAIT`] in seconds.
    pub(super) wait_secs: u64,
}

/// The latest checkpoint as shown.
#[derive(Serialize)]
pub(super) struct CheckpointView {
    /// Entries covered (1 to `size`).
    pub(super) size: u64,
    /// When it was signed.
    pub(super) time: String,
    /// Its Merkle root, hex.
    pub(super) root: String,
    /// The hash of entry `size`, hex.
    pub(super) last_entry_hash: String,
    /// Its signature verifies under the trail's key.
    pub(super) signature_ok: bool,
}

/// The page's values: the latest checkpoint (its signature checked against the trail's key),
/// the trail's size, and the last verification.
async fn context(state: &AppState) -> Result<AuditPage, Response> {
    let checkpoint = state
        .audit
        .last_checkpoint()
        .await
        .map_err(|e| failed(state, "reading the latest checkpoint", &e))?;
    let entries = state
        .store
        .audit_tail()
        .await
        .map_err(|e| failed(state, "reading the audit trail's end", &e))?
        .seq
        .saturating_sub(1);
    let covered = checkpoint.as_ref().map_or(0, |c| c.size);
    let checkpoint = checkpoint.map(|c| CheckpointView {
        size: c.size,
        time: when_ms(c.time),
        root: hex::encode(c.root),
        last_entry_hash: hex::encode(c.last_entry_hash),
        signature_ok: c.verify_signature(state.audit.public_key()),
    });
    Ok(AuditPage {
        checkpoint,
        entries,
        unsealed: entries.saturating_sub(covered),
        public_key: hex::encode(state.audit.public_key()),
        verification: jobs_of(&state.audit).verification(),
        wait_secs: VERIFY_WAIT.as_secs(),
    })
}

/// `POST /admin/console/audit/verify` (`csrf`): starts a verification of the whole trail
/// (or joins the running one), waits for it at most [`VERIFY_WAIT`], and shows the page.
/// The request's entry ends with the result: `verified`, `failed`, `unfinished`, or
/// `running` when it was still going.
pub(super) async fn verify(
    State(state): State<AppState>,
    slot: AuditSlot,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Err(r) = checked_post(&state, &headers, body).await {
        return r;
    }
    let who = match signed_in(&state, &slot, &headers, Area::Console, PATH).await {
        Ok(w) => w,
        Err(r) => return r,
    };
    let total = match state.store.audit_tail().await {
        Ok(tail) => tail.seq.saturating_sub(1),
        Err(e) => return failed(&state, "reading the audit trail's end", &e),
    };
    let by = username(&state, &who).await;
    let jobs = jobs_of(&state.audit);
    let mut done = jobs.start_verification(state.audit.clone(), total, by);
    // A closed channel (its task died) ends the wait as well.
    let ended = tokio::time::timeout(VERIFY_WAIT, done.wait_for(|d| *d))
        .await
        .is_ok();
    let result = jobs
        .verification()
        .and_then(|v| v.result)
        .filter(|_| ended)
        .unwrap_or("running");
    slot.note_action_detail(result);
    see_other(PATH)
}
