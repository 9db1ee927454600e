//! The console's pages about people and apps: user accounts and roles
//! (`/admin/console/users`), OAuth2 clients (`/admin/console/clients`), break-the-glass
//! accesses to review (`/admin/console/break-glass`), the alerts the detection rules raised
//! (`/admin/console/alerts`) and breach-impact reports (`/admin/console/breach`).
//!
//! Rules every page here keeps:
//! - **Who first.** A form post is CSRF-checked before anything else, then the person is
//!   signed in for the console ([`signed_in`]: administrators and auditors, second factor
//!   done); a GET starts with [`signed_in`].
//! - **Only administrators change anything.** Auditors read every page but their posts that
//!   change state get a refusal page (403), and the pages show them no forms that would.
//!   The breach report changes nothing: auditors may run it.
//! - **Each change commits with the request's audit entry** ([`RequestSink::account_change`]):
//!   when the entry cannot be written the change does not happen. Refusals and invalid posts
//!   change nothing; the audit middleware records them as for every request.
//! - **A secret is shown once**, on the page answering the post that made it (a generated
//!   password, a client secret): never in a URL, never logged. Posts that make no secret
//!   answer with a redirect to their page (so a reload does not post again), naming the
//!   result by a fixed word of [`DONE`], never a value.
//! - Usernames, reasons and review notes are shown to administrators and auditors only and
//!   never logged; the log names ids.
//!
//! [`RequestSink::account_change`]: crate::audit_sink::RequestSink::account_change
//! [`signed_in`]: crate::web::session::signed_in

mod alerts;
mod break_glass;
mod clients;
mod users;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use axum::routing::get;
use phivault_auth::Authenticated;
use phivault_policy::Role;
use serde::Serialize;
use time::OffsetDateTime;

use crate::AppState;
use crate::edge::AuditSlot;
use crate::web::pages::ErrorView;
use crate::web::session::{Area, signed_in};
use crate::web::{Form, csrf, form};

/// This part's templates.
pub(crate) const TEMPLATES: &[(&str, &str)] = &[
    (
        "console/users.html",
        include_str!("../../../templates/console/users.html"),
    ),
    (
        "console/clients.html",
        include_str!("../../../templates/console/clients.html"),
    ),
    (
        "console/break_glass.html",
        include_str!("../../../templates/console/break_glass.html"),
    ),
    (
        "console/alerts.html",
        include_str!("../../../templates/console/alerts.html"),
    ),
    (
        "console/breach.html",
        include_str!("../../../templates/console/breach.html"),
    ),
    (
        "console/problem.html",
        include_str!("../../../templates/console/problem.html"),
    ),
];

/// The users page.
const USERS: &str = "/admin/console/users";
/// The apps page.
const CLIENTS: &str = "/admin/console/clients";
/// The break-the-glass review page.
const BREAK_GLASS: &str = "/admin/console/break-glass";
/// The alerts page.
const ALERTS: &str = "/admin/console/alerts";
/// The breach report page.
const BREACH: &str = "/admin/console/breach";

/// Largest form posted here (a client's JWKS is the largest field).
const MAX_FORM: usize = 64 * 1024;

pub(crate) fn routes() -> Router<AppState> {
    use axum::routing::post;
    Router::new()
        .route(USERS, get(users::page).post(users::add))
        .route("/admin/console/users/disable", post(users::disable))
        .route(CLIENTS, get(clients::page).post(clients::add))
        .route("/admin/console/clients/disable", post(clients::disable))
        .route("/admin/console/clients/rotate", post(clients::rotate))
        .route(BREAK_GLASS, get(break_glass::page))
        .route(
            "/admin/console/break-glass/review",
            post(break_glass::review),
        )
        .route(ALERTS, get(alerts::page))
        .route(BREACH, get(alerts::breach_page).post(alerts::breach))
}

/// The results a post may name in the page it redirects to (`?done=user-disabled`), and
/// what the page says for each. Only these words are read back.
const DONE: &[(&str, &str)] = &[
    (
        "user-disabled",
        "The account was disabled. Its sessions and tokens no longer work.",
    ),
    (
        "client-disabled",
        "The app was disabled. Its credentials and every token it holds no longer work.",
    ),
    (
        "reviewed",
        "The break-the-glass access was marked reviewed.",
    ),
];

/// The notice of a `done` word in `query` (`done=reviewed`), if it is one of [`DONE`].
fn done_notice(query: Option<&str>) -> Option<&'static str> {
    let value = query?
        .split('&')
        .find_map(|pair| pair.strip_prefix("done="))?;
    DONE.iter()
        .find(|(word, _)| *word == value)
        .map(|(_, text)| *text)
}

/// The path of `page` naming the result `word` (one of [`DONE`]).
fn done_path(page: &str, word: &'static str) -> String {
    format!("{page}?done={word}")
}

/// What every console page's template reads besides its own values: the anti-forgery token
/// (the sign-out form and the page's forms) and the navigation item of the page.
#[derive(Serialize)]
struct Frame<'a, T: Serialize> {
    csrf: &'a str,
    active: &'static str,
    #[serde(flatten)]
    values: &'a T,
}

/// The response of the console page `template` with `values`, `csrf` and `active`; the CSRF
/// cookie is set when the browser had none.
fn render<T: Serialize>(
    state: &AppState,
    headers: &HeaderMap,
    status: StatusCode,
    template: &str,
    active: &'static str,
    values: &T,
) -> Response {
    let Ok((csrf, cookie)) = csrf::ensure(headers) else {
        return unavailable(state);
    };
    let frame = Frame {
        csrf: &csrf,
        active,
        values,
    };
    let mut response = state.pages.respond_template(status, template, &frame, &[]);
    if let Some(cookie) = cookie {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response
}

/// `console/problem.html`: a page saying what went wrong and where to go back to.
#[derive(Serialize)]
struct Problem<'a> {
    title: &'a str,
    message: &'a str,
    back: &'a str,
}

/// The problem page with `status`.
fn problem(
    state: &AppState,
    headers: &HeaderMap,
    status: StatusCode,
    active: &'static str,
    problem: &Problem<'_>,
) -> Response {
    render(
        state,
        headers,
        status,
        "console/problem.html",
        active,
        problem,
    )
}

/// A plain page for when even the CSRF token cannot be made (the system random generator
/// failed).
fn unavailable(state: &AppState) -> Response {
    let view = ErrorView {
        title: "Something went wrong",
        message: "Please try again later.",
    };
    state
        .pages
        .respond(StatusCode::SERVICE_UNAVAILABLE, &view, &[])
}

/// The answer to a failure on our side while serving a console page: logged by kind (never
/// a username, reason or note), and a page saying to try again.
fn failed(
    state: &AppState,
    headers: &HeaderMap,
    active: &'static str,
    back: &str,
    error: &dyn std::fmt::Display,
) -> Response {
    tracing::error!(page = back, %error, "a console page failed");
    problem(
        state,
        headers,
        StatusCode::SERVICE_UNAVAILABLE,
        active,
        &Problem {
            title: "Something went wrong",
            message: "The page could not be made or the change could not be saved. Nothing \
                      was changed. Please try again later.",
            back,
        },
    )
}

/// The form of a post, CSRF-checked; the problem page otherwise (400 for a body that is not
/// a form, 403 when the token is missing or wrong).
async fn checked_form(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    active: &'static str,
    back: &str,
) -> Result<Form, Response> {
    let Ok(form) = form(headers, body, MAX_FORM).await else {
        return Err(problem(
            state,
            headers,
            StatusCode::BAD_REQUEST,
            active,
            &Problem {
                title: "The form could not be read",
                message: "Please go back and try again.",
                back,
            },
        ));
    };
    if csrf::check(headers, form.one(csrf::FIELD)).is_err() {
        return Err(problem(
            state,
            headers,
            StatusCode::FORBIDDEN,
            active,
            &Problem {
                title: "This form has expired",
                message: "The form was not sent from this site's page, or it expired. Please \
                          go back, reload the page and try again.",
                back,
            },
        ));
    }
    Ok(form)
}

/// An administrator's post on the console page `back`: its CSRF-checked form and who sent it,
/// or the page to answer instead (the form is checked first, so a forged post is refused
/// before the session is looked at; then the sign-in; then the role).
async fn admin_post(
    state: &AppState,
    slot: &AuditSlot,
    headers: &HeaderMap,
    body: Body,
    active: &'static str,
    back: &str,
) -> Result<(Form, Authenticated), Response> {
    let form = checked_form(state, headers, body, active, back).await?;
    let who = signed_in(state, slot, headers, Area::Console, back).await?;
    if let Some(r) = admin_only(state, headers, &who, active, back) {
        return Err(r);
    }
    Ok((form, who))
}

/// Whether `who` may change state here: administrators only.
fn can_change(who: &Authenticated) -> bool {
    who.principal.role() == Role::Admin
}

/// `None` for an administrator; the refusal page (403) for anyone else.
fn admin_only(
    state: &AppState,
    headers: &HeaderMap,
    who: &Authenticated,
    active: &'static str,
    back: &str,
) -> Option<Response> {
    if can_change(who) {
        return None;
    }
    Some(problem(
        state,
        headers,
        StatusCode::FORBIDDEN,
        active,
        &Problem {
            title: "Only administrators can do this",
            message: "Your account can read the console but not change accounts, apps or \
                      reviews. Ask an administrator.",
            back,
        },
    ))
}

/// A form field, trimmed; `""` when absent or repeated.
fn field<'f>(form: &'f Form, name: &str) -> &'f str {
    form.one(name).unwrap_or("").trim()
}

/// Unix seconds as shown: `2026-05-01 14:03 UTC`.
fn when(secs: i64) -> String {
    when_ms(secs.saturating_mul(1000))
}

/// Unix milliseconds as shown: `2026-05-01 14:03 UTC` (the number itself when out of range).
fn when_ms(ms: i64) -> String {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute] UTC");
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_else(|| ms.to_string())
}

/// The current Unix time in seconds.
fn now_secs() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

#[cfg(test)]
mod router_tests;
#[cfg(test)]
mod tests;
