//! `/admin/console/break-glass`: every break-the-glass access, those awaiting review first
//! (each with a form to mark it reviewed with a note), then the reviewed ones with who
//! reviewed, when and their note.
//!
//! Reasons and notes may describe the patient: shown here to administrators and auditors,
//! never logged. A review commits with the request's audit entry, which names the patient
//! whose record the access reached.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use phivault_auth::{Authenticated, ServiceError};
use serde::Serialize;

use super::{
    BREAK_GLASS, admin_post, can_change, done_notice, done_path, failed, field, now_secs, render,
    when,
};
use crate::AppState;
use crate::audit_sink::RequestSink;
use crate::edge::AuditSlot;
use crate::web::session::{Area, see_other, signed_in};

/// The navigation item.
const ACTIVE: &str = "break_glass";
/// Longest note accepted, in characters (the service's limit; the form says it too).
const MAX_NOTE_CHARS: usize = 2000;

/// One access as listed.
#[derive(Serialize)]
struct Event {
    id: String,
    /// The claimant's username, or their id when the account cannot be named.
    claimant: String,
    patient: String,
    reason: String,
    started: String,
    expires: String,
    /// Still in force now.
    active: bool,
    review: Option<Review>,
}

/// A review as listed.
#[derive(Serialize)]
struct Review {
    reviewed: String,
    reviewer: String,
    note: String,
}

/// The note typed for one event, kept after a refused post.
#[derive(Serialize)]
struct Draft<'a> {
    id: &'a str,
    note: &'a str,
}

/// `console/break_glass.html`.
#[derive(Serialize)]
struct BreakGlassView<'a> {
    can_change: bool,
    to_review: Vec<Event>,
    reviewed: Vec<Event>,
    max_note_chars: usize,
    notice: Option<&'a str>,
    error: Option<&'a str>,
    draft: Option<Draft<'a>>,
}

/// The page with `notice`, or `error` and the refused `draft`, as `who` sees it.
async fn respond(
    state: &AppState,
    headers: &HeaderMap,
    who: &Authenticated,
    status: StatusCode,
    notice: Option<&str>,
    error: Option<&str>,
    draft: Option<Draft<'_>>,
) -> Response {
    let items = match state.accounts.break_glass_for_review().await {
        Ok(items) => items,
        Err(e) => return failed(state, headers, ACTIVE, BREAK_GLASS, &e),
    };
    // One query names everyone: claimants and reviewers.
    let names: HashMap<String, String> = match state.accounts.list_users().await {
        Ok(users) => users.into_iter().map(|u| (u.user_id, u.username)).collect(),
        Err(e) => return failed(state, headers, ACTIVE, BREAK_GLASS, &e),
    };
    let name = |id: &str| names.get(id).cloned().unwrap_or_else(|| id.to_owned());
    let now = now_secs();
    let (mut to_review, mut reviewed) = (Vec::new(), Vec::new());
    for (claim, review) in items {
        let event = Event {
            claimant: name(&claim.user_id),
            patient: format!("Patient/{}", claim.patient),
            started: when(claim.started_at),
            expires: when(claim.expires_at),
            active: claim.started_at <= now && now < claim.expires_at,
            review: review.map(|r| Review {
                reviewed: when(r.reviewed_at),
                reviewer: name(&r.reviewer_id),
                note: r.note,
            }),
            id: claim.id,
            reason: claim.reason,
        };
        if event.review.is_some() {
            reviewed.push(event);
        } else {
            to_review.push(event);
        }
    }
    let view = BreakGlassView {
        can_change: can_change(who),
        to_review,
        reviewed,
        max_note_chars: MAX_NOTE_CHARS,
        notice,
        error,
        draft,
    };
    render(
        state,
        headers,
        status,
        "console/break_glass.html",
        ACTIVE,
        &view,
    )
}

/// `GET /admin/console/break-glass`.
pub(super) async fn page(
    State(state): State<AppState>,
    slot: AuditSlot,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let who = match signed_in(&state, &slot, &headers, Area::Console, BREAK_GLASS).await {
        Ok(w) => w,
        Err(r) => return r,
    };
    let notice = done_notice(query.as_deref());
    respond(&state, &headers, &who, StatusCode::OK, notice, None, None).await
}

/// `POST /admin/console/break-glass/review` `id`, `note`: marks the access reviewed (with the
/// request's audit entry); a claim is reviewed once.
pub(super) async fn review(
    State(state): State<AppState>,
    slot: AuditSlot,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (form, who) = match admin_post(&state, &slot, &headers, body, ACTIVE, BREAK_GLASS).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let id = field(&form, "id");
    let note = form.one("note").unwrap_or("");
    let sink = RequestSink::account_change(&state, slot);
    let (status, message) = match state
        .accounts
        .review_break_glass(&who, id, note, &sink)
        .await
    {
        Ok(()) => {
            sink.committed();
            return see_other(&done_path(BREAK_GLASS, "reviewed"));
        }
        Err(ServiceError::NotFound(_)) => (
            StatusCode::NOT_FOUND,
            "This break-the-glass access was not found.".to_owned(),
        ),
        Err(ServiceError::Invalid(message)) => (
            StatusCode::BAD_REQUEST,
            format!("Not marked reviewed: {message}."),
        ),
        Err(e) => return failed(&state, &headers, ACTIVE, BREAK_GLASS, &e),
    };
    let draft = Draft { id, note };
    respond(
        &state,
        &headers,
        &who,
        status,
        None,
        Some(&message),
        Some(draft),
    )
    .await
}
