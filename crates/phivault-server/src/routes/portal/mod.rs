//! The patient portal (`/portal`): a patient's record, who looked at it, their apps, consents,
//! data package, requests and the register of processing activities, as server-rendered pages
//! (see `crate::web`). Every page reads and writes through the API as the signed-in patient
//! (`crate::web::api`), so the policies, consent and audit trail apply as to any app.
//!
//! What every page keeps:
//! - **The patient first.** A page answers only after [`visit`] found a signed-in patient
//!   linked to their record (else the sign-in page, the enrolment page or a refusal); a form
//!   post is CSRF-checked before anything else ([`checked_form`]).
//! - **Through the API only.** Reads and writes are calls of the API as the patient, with their
//!   session and their browser's address: the portal never reaches more than an app of theirs
//!   could, and every access it makes is in the audit trail and in their own access log.
//! - **Nothing echoed.** A confirmation after a post is a fixed sentence chosen by a key in
//!   the query (`?done=revoked`); an unknown key shows nothing. Errors are this module's own
//!   sentences, never the API's diagnostics.
//! - Pages are `no-store` (`crate::web::page`); every context holds `csrf` and `active`.

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Extension, Router};
use phivault_auth::Authenticated;
use phivault_fhir::Id;
use serde_json::{Value, json};

use crate::AppState;
use crate::edge::AuditSlot;
use crate::web::api::AsPerson;
use crate::web::session::{Area, session_token, signed_in, to_signin};
use crate::web::{Form, csrf, form};

mod access;
mod apps;
mod consents;
mod download;
mod privacy;
mod requests;
mod summary;
mod text;

#[cfg(test)]
mod tests;

/// The portal's templates.
pub(crate) const TEMPLATES: &[(&str, &str)] = &[
    (
        "portal/base.html",
        include_str!("../../../templates/portal/base.html"),
    ),
    (
        "portal/summary.html",
        include_str!("../../../templates/portal/summary.html"),
    ),
    (
        "portal/access.html",
        include_str!("../../../templates/portal/access.html"),
    ),
    (
        "portal/apps.html",
        include_str!("../../../templates/portal/apps.html"),
    ),
    (
        "portal/consents.html",
        include_str!("../../../templates/portal/consents.html"),
    ),
    (
        "portal/download.html",
        include_str!("../../../templates/portal/download.html"),
    ),
    (
        "portal/requests.html",
        include_str!("../../../templates/portal/requests.html"),
    ),
    (
        "portal/privacy.html",
        include_str!("../../../templates/portal/privacy.html"),
    ),
    (
        "portal/problem.html",
        include_str!("../../../templates/portal/problem.html"),
    ),
];

/// The portal's pages.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/portal", get(summary::page))
        .route("/portal/access", get(access::page))
        .route("/portal/apps", get(apps::page))
        .route("/portal/apps/revoke", post(apps::revoke))
        .route(
            "/portal/consents",
            get(consents::page).post(consents::decide),
        )
        .route(
            "/portal/download",
            get(download::page).post(download::download),
        )
        .route("/portal/requests", get(requests::page).post(requests::send))
        .route("/portal/privacy", get(privacy::page))
}

/// Largest form posted to the portal (a request's text is at most 4000 characters).
const MAX_FORM: usize = 32 * 1024;

/// The connection's address, as handlers extract it.
type Connect = Option<Extension<ConnectInfo<SocketAddr>>>;

/// A signed-in patient on a page, and the API as them.
struct Visit<'a> {
    /// Who is signed in.
    who: Authenticated,
    /// Their record.
    patient: Id,
    /// The API, called as them.
    api: AsPerson<'a>,
}

impl Visit<'_> {
    /// `GET path` as the patient: the JSON of a 2xx answer, `Err(status)` otherwise (a
    /// failure on our side is a 503).
    async fn json(&self, path: &str) -> Result<Value, StatusCode> {
        match self.api.get(path).await {
            Ok(a) if a.ok() => Ok(a.json()),
            Ok(a) => Err(a.status),
            Err(_) => Err(StatusCode::SERVICE_UNAVAILABLE),
        }
    }
}

/// The signed-in patient of a page at `path`, or the response to send instead (the sign-in
/// page, the enrolment page, a refusal).
async fn visit<'a>(
    state: &'a AppState,
    slot: &AuditSlot,
    connect: Connect,
    headers: &HeaderMap,
    path: &str,
) -> Result<Visit<'a>, Response> {
    let who = signed_in(state, slot, headers, Area::Portal, path).await?;
    // `signed_in` lets into the portal only patients linked to a record.
    let Some(patient) = who.principal.linked_patient().cloned() else {
        return Err(to_signin(path));
    };
    let Some(token) = session_token(headers) else {
        return Err(to_signin(path));
    };
    let Ok(address) = crate::auth_routes::client(state, connect, headers) else {
        return Err(unavailable(state, headers, ""));
    };
    Ok(Visit {
        who,
        patient,
        api: AsPerson::new(state, token, address),
    })
}

/// The form of a post, CSRF-checked; the page saying why otherwise.
async fn checked_form(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    active: &str,
) -> Result<Form, Response> {
    let Ok(form) = form(headers, body, MAX_FORM).await else {
        return Err(problem(
            state,
            headers,
            StatusCode::BAD_REQUEST,
            active,
            "The form could not be read",
            "Please go back and try again.",
        ));
    };
    if csrf::check(headers, form.one(csrf::FIELD)).is_err() {
        return Err(problem(
            state,
            headers,
            StatusCode::FORBIDDEN,
            active,
            "This form has expired",
            "The form was not sent from this site's page, or it expired. Please go back, \
             reload the page and try again.",
        ));
    }
    Ok(form)
}

/// The page `template` with `context`, plus `csrf` (and its cookie when new) and `active`.
fn render(
    state: &AppState,
    headers: &HeaderMap,
    status: StatusCode,
    template: &str,
    active: &str,
    mut context: Value,
) -> Response {
    let Ok((token, cookie)) = csrf::ensure(headers) else {
        // Only the system random generator fails here: a page without a form.
        return crate::web::page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Something went wrong. Please try again later.".to_owned(),
            &[],
        );
    };
    if !context.is_object() {
        context = json!({});
    }
    context["csrf"] = json!(&*token);
    context["active"] = json!(active);
    let mut response = state
        .pages
        .respond_template(status, template, &context, &[]);
    if let Some(c) = cookie {
        response.headers_mut().append(header::SET_COOKIE, c);
    }
    response
}

/// A portal page saying what went wrong, in the patient's words.
fn problem(
    state: &AppState,
    headers: &HeaderMap,
    status: StatusCode,
    active: &str,
    title: &str,
    message: &str,
) -> Response {
    let context = json!({ "title": title, "message": message });
    render(
        state,
        headers,
        status,
        "portal/problem.html",
        active,
        context,
    )
}

/// The page of a failure on our side.
fn unavailable(state: &AppState, headers: &HeaderMap, active: &str) -> Response {
    problem(
        state,
        headers,
        StatusCode::SERVICE_UNAVAILABLE,
        active,
        "Something went wrong",
        "This page could not be shown just now. Please try again in a few minutes.",
    )
}

/// The page of an API answer that was not a success (`status`), for a read.
fn not_shown(state: &AppState, headers: &HeaderMap, active: &str, status: StatusCode) -> Response {
    match status {
        StatusCode::FORBIDDEN | StatusCode::NOT_FOUND | StatusCode::GONE => problem(
            state,
            headers,
            StatusCode::FORBIDDEN,
            active,
            "This cannot be shown",
            "Your account cannot see this part of your record. If you think this is wrong, \
             please contact your care provider.",
        ),
        _ => unavailable(state, headers, active),
    }
}

/// The query string of a page, as form fields (none when it cannot be read).
struct Query(Option<Form>);

impl Query {
    /// The query of `raw` (`RawQuery`).
    fn of(raw: Option<&str>) -> Query {
        Query(Form::parse(raw.unwrap_or("").as_bytes()).ok())
    }

    /// The value of `name` when given exactly once.
    fn one(&self, name: &str) -> Option<&str> {
        self.0.as_ref().and_then(|f| f.one(name))
    }
}

/// The confirmation of `?done=key` among `known` (key, sentence); `None` for anything else.
fn done_message(query: &Query, known: &[(&str, &'static str)]) -> Option<&'static str> {
    let key = query.one("done")?;
    known.iter().find(|(k, _)| *k == key).map(|(_, m)| *m)
}
