//! The console's system pages: the overview (`GET /admin`), the audit chain
//! (`/admin/console/audit`, and `POST .../verify`), the keys (`/admin/console/keys`, and
//! `POST .../rotate`), the backups recorded in the trail (`/admin/console/backups`) and the
//! settings in force (`/admin/console/settings`).
//!
//! Rules every handler here keeps:
//! - **Who first.** A page calls [`signed_in`] before it reads anything; a form post checks
//!   its CSRF token before that, so a forged post learns nothing and changes nothing.
//! - **Reading is for administrators and auditors, changing for administrators.** The
//!   console area admits both roles; the key rotation refuses an auditor with a 403 page.
//!   The verification is read-only and open to both (it runs one at a time, see [`jobs`]).
//! - **Bounded cost per request.** Work that grows with the trail or the keys (verifying,
//!   rotating) runs in the background ([`jobs`]) and the pages show its progress; the
//!   backups page reads a bounded number of the trail's newest entries.
//! - **Ids, counts and times only.** Nothing these pages show or log holds PHI: key ids,
//!   hashes, seqs, counts, usernames of staff, and fixed sentences for failures (the detail
//!   goes to the log).
//! - **Audited by the request's entry.** Each request has its one entry (the edge's); the
//!   verification adds its result to the action (`POST /admin/console/audit/verify
//!   verified`), the rotation `started` or `already running`, and the rotation's task
//!   appends a `keys rotate` entry with its outcome, by the person who started it, under the
//!   same request id.

mod backups;
mod chain;
mod jobs;
mod keys;
mod text;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use axum::routing::{get, post};
use phivault_auth::Authenticated;
use phivault_policy::{ConsentDefaults, Purpose};
use phivault_store::RetentionRule;
use serde::Serialize;

use crate::AppState;
use crate::edge::AuditSlot;
use crate::web::pages::ErrorView;
use crate::web::session::{Area, signed_in};
use crate::web::{csrf, form};
use text::{now_ms, period, purpose_words, when_ms};

/// This part's templates.
pub(crate) const TEMPLATES: &[(&str, &str)] = &[
    (
        "console/home.html",
        include_str!("../../../templates/console/home.html"),
    ),
    (
        "console/audit.html",
        include_str!("../../../templates/console/audit.html"),
    ),
    (
        "console/keys.html",
        include_str!("../../../templates/console/keys.html"),
    ),
    (
        "console/backups.html",
        include_str!("../../../templates/console/backups.html"),
    ),
    (
        "console/settings.html",
        include_str!("../../../templates/console/settings.html"),
    ),
];

/// The routes of these pages.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin", get(home))
        .route("/admin/console/audit", get(chain::page))
        .route("/admin/console/audit/verify", post(chain::verify))
        .route("/admin/console/keys", get(keys::page))
        .route("/admin/console/keys/rotate", post(keys::rotate))
        .route("/admin/console/backups", get(backups::page))
        .route("/admin/console/settings", get(settings))
}

/// Largest form posted to these pages (they carry the CSRF token only).
const MAX_FORM: usize = 4 * 1024;

/// Alerts counted on the overview at most (more reads as "1000 or more").
const ALERT_CAP: u32 = 1000;

/// A page of a fixed title and message.
fn error_page(state: &AppState, status: StatusCode, title: &str, message: &str) -> Response {
    state
        .pages
        .respond(status, &ErrorView { title, message }, &[])
}

/// The page of a failure on our side: `what` failed, logged with its error (which names
/// no value of a record), and the person told only to try again.
fn failed(state: &AppState, what: &'static str, error: &dyn std::fmt::Display) -> Response {
    tracing::error!(%error, "console: {what} failed");
    error_page(
        state,
        StatusCode::SERVICE_UNAVAILABLE,
        "Something went wrong",
        "This page could not be shown. Please try again later.",
    )
}

/// The refusal of a form whose CSRF token is missing or wrong (or a body that is not a
/// form); `Ok` when the post may go on.
async fn checked_post(state: &AppState, headers: &HeaderMap, body: Body) -> Result<(), Response> {
    let form = form(headers, body, MAX_FORM).await.map_err(|_| {
        error_page(
            state,
            StatusCode::BAD_REQUEST,
            "The form could not be read",
            "Please go back and try again.",
        )
    })?;
    csrf::check(headers, form.one(csrf::FIELD)).map_err(|_| {
        error_page(
            state,
            StatusCode::FORBIDDEN,
            "This form has expired",
            "The form was not sent from this site's page, or it expired. Please go back and \
             try again.",
        )
    })
}

/// The values of a console page: its own (`context`) and the ones every console page needs,
/// `csrf` (the sign-out form's, and the page's forms') and `active` (its nav item).
///
/// Contexts are typed structs, not `serde_json::Value`s: with the workspace's
/// `arbitrary_precision` feature a JSON number reaches the templates as a map, not a number.
#[derive(Serialize)]
pub(super) struct PageContext<'a, C: Serialize> {
    /// The anti-forgery token.
    pub(super) csrf: &'a str,
    /// The nav item of the page.
    pub(super) active: &'a str,
    /// The page's own values.
    #[serde(flatten)]
    pub(super) context: C,
}

/// The page `template` with `context` and the values every console page needs
/// ([`PageContext`]); the CSRF cookie goes with it when the browser had none.
fn show<C: Serialize>(
    state: &AppState,
    headers: &HeaderMap,
    template: &str,
    active: &str,
    context: C,
) -> Response {
    let (token, cookie) = match csrf::ensure(headers) {
        Ok(t) => t,
        Err(e) => return failed(state, "making a form token", &e),
    };
    let values = PageContext {
        csrf: &token,
        active,
        context,
    };
    let mut page = state
        .pages
        .respond_template(StatusCode::OK, template, &values, &[]);
    if let Some(cookie) = cookie {
        page.headers_mut().append(header::SET_COOKIE, cookie);
    }
    page
}

/// The username of the person signed in (their id when it cannot be read), to show who
/// started a background run.
async fn username(state: &AppState, who: &Authenticated) -> String {
    match state.accounts.user_summary(who.principal.id()).await {
        Ok(Some(user)) => user.username,
        _ => who.principal.id().to_owned(),
    }
}

/// `GET /admin`: counts of what the console manages, with links to their pages.
async fn home(State(state): State<AppState>, slot: AuditSlot, headers: HeaderMap) -> Response {
    if let Err(r) = signed_in(&state, &slot, &headers, Area::Console, "/admin").await {
        return r;
    }
    match overview(&state).await {
        Ok(context) => show(&state, &headers, "console/home.html", "home", context),
        Err(r) => r,
    }
}

/// The overview's values.
#[derive(Serialize)]
pub(super) struct Overview {
    /// User accounts.
    pub(super) users: u64,
    /// Registered apps.
    pub(super) clients: usize,
    /// Registered apps not disabled.
    pub(super) clients_enabled: usize,
    /// Alerts raised in the last 24 hours (at most [`ALERT_CAP`]).
    pub(super) alerts_day: usize,
    /// `alerts_day` reached [`ALERT_CAP`]: there may be more.
    pub(super) alerts_capped: bool,
    /// Break-the-glass accesses not reviewed yet.
    pub(super) break_glass_to_review: u64,
    /// The latest signed checkpoint.
    pub(super) checkpoint: Option<CheckpointBrief>,
    /// Entries in the audit trail.
    pub(super) entries: u64,
    /// Key-encryption keys.
    pub(super) keks: usize,
    /// Data keys still under an old key-encryption key (an unfinished rotation).
    pub(super) keys_pending: u64,
    /// The last verification of this process.
    pub(super) verification: Option<jobs::VerificationView>,
    /// The last rotation of this process.
    pub(super) rotation: Option<jobs::RotationView>,
}

/// A checkpoint on the overview: its size and when it was signed.
#[derive(Serialize)]
pub(super) struct CheckpointBrief {
    /// Entries covered.
    pub(super) size: u64,
    /// When it was signed (UTC).
    pub(super) time: String,
}

/// Reads the overview's values.
async fn overview(state: &AppState) -> Result<Overview, Response> {
    let now = now_ms();
    let users = state
        .store
        .user_count()
        .await
        .map_err(|e| failed(state, "counting users", &e))?;
    let clients = state
        .accounts
        .list_clients()
        .await
        .map_err(|e| failed(state, "listing apps", &e))?;
    let alerts = phivault_alerts::list_alerts(&state.store, now - 86_400_000, ALERT_CAP)
        .await
        .map_err(|e| failed(state, "listing alerts", &e))?
        .len();
    // A count only: the claims' reasons stay sealed.
    let to_review = state
        .store
        .unreviewed_break_glass_count()
        .await
        .map_err(|e| failed(state, "counting break-the-glass accesses to review", &e))?;
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
    let keys = state
        .store
        .key_status()
        .await
        .map_err(|e| failed(state, "reading the key status", &e))?;
    let jobs = jobs::jobs_of(&state.audit);
    Ok(Overview {
        users,
        clients: clients.len(),
        clients_enabled: clients.iter().filter(|c| c.disabled_at.is_none()).count(),
        alerts_day: alerts,
        alerts_capped: alerts >= usize::try_from(ALERT_CAP).unwrap_or(usize::MAX),
        break_glass_to_review: to_review,
        checkpoint: checkpoint.map(|c| CheckpointBrief {
            size: c.size,
            time: when_ms(c.time),
        }),
        entries,
        keks: keys.keks.len(),
        keys_pending: keys.pending,
        verification: jobs.verification(),
        rotation: jobs.rotation(),
    })
}

/// `GET /admin/console/settings`: the retention periods and the consent defaults in force,
/// read-only (they are set in the server's configuration file).
async fn settings(State(state): State<AppState>, slot: AuditSlot, headers: HeaderMap) -> Response {
    let path = "/admin/console/settings";
    if let Err(r) = signed_in(&state, &slot, &headers, Area::Console, path).await {
        return r;
    }
    let context = settings_context(&state.retention, &state.consent_defaults);
    show(
        &state,
        &headers,
        "console/settings.html",
        "settings",
        context,
    )
}

/// The settings page's values.
#[derive(Debug, PartialEq, Eq, Serialize)]
pub(super) struct Settings {
    /// The retention rules, by resource type.
    pub(super) retention: Vec<RetentionLine>,
    /// How often the rules are applied, in words.
    pub(super) retention_every: String,
    /// Every purpose of use, and what happens when no consent of the patient applies.
    pub(super) consent: Vec<ConsentLine>,
}

/// One retention rule in words.
#[derive(Debug, PartialEq, Eq, Serialize)]
pub(super) struct RetentionLine {
    /// The FHIR resource type.
    pub(super) resource_type: String,
    /// How long after its last change a resource is kept, in words.
    pub(super) period: String,
}

/// One purpose's consent default.
#[derive(Debug, PartialEq, Eq, Serialize)]
pub(super) struct ConsentLine {
    /// The purpose in words.
    pub(super) purpose: &'static str,
    /// Its HL7 code.
    pub(super) code: &'static str,
    /// Permitted unless the patient refuses (else refused unless they agree).
    pub(super) permit: bool,
}

/// The settings page's values: retention rules by resource type, and for every purpose of
/// use what happens when no consent of the patient applies.
fn settings_context(rules: &[RetentionRule], defaults: &ConsentDefaults) -> Settings {
    let mut retention: Vec<RetentionLine> = rules
        .iter()
        .map(|r| RetentionLine {
            resource_type: r.rtype.to_string(),
            period: period(r.max_age_secs),
        })
        .collect();
    retention.sort_by(|a, b| a.resource_type.cmp(&b.resource_type));
    let consent = Purpose::ALL
        .iter()
        .map(|p| ConsentLine {
            purpose: purpose_words(*p),
            code: p.as_str(),
            permit: defaults.permits(*p),
        })
        .collect();
    let every = i64::try_from(crate::retention::RETENTION_EVERY.as_secs()).unwrap_or(i64::MAX);
    Settings {
        retention,
        retention_every: period(every),
        consent,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
