//! Sign-in and sign-out of the portal and the console (one sign-in for them and the
//! authorization pages: the same session cookie), and second-factor enrolment with a QR code
//! rendered here (no script, no image from elsewhere) and recovery codes shown once.
//!
//! Every form is CSRF-checked; `next` is a local path only (no open redirect); a sign-in
//! failure says as little as the JSON login does.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Extension, Router};
use phivault_auth::{LoginOutcome, LoginRequest, LoginStep, Password, ServiceError};
use phivault_policy::Role;
use serde_json::json;

use crate::AppState;
use crate::audit_sink::RequestSink;
use crate::edge::AuditSlot;
use crate::web::pages::{ErrorView, SigninView, TotpView};
use crate::web::session::{Area, SESSION_COOKIE, local_path, see_other, signed_in};
use crate::web::{cookie, csrf, form};

/// The account area's templates.
pub(crate) const TEMPLATES: &[(&str, &str)] = &[
    (
        "account/totp.html",
        include_str!("../../templates/account/totp.html"),
    ),
    (
        "account/codes.html",
        include_str!("../../templates/account/codes.html"),
    ),
];

/// The second-step ticket cookie of the portal's and console's sign-in.
const MFA_COOKIE: &str = "phivault_signin_mfa";
/// Largest form posted here.
const MAX_FORM: usize = 16 * 1024;
/// The session's lifetime (the session token's own).
const SESSION_SECS: u64 = 8 * 3600;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/signin", get(signin_page).post(signin))
        .route("/signin/totp", post(signin_totp))
        .route("/signout", post(signout))
        .route("/account/totp", get(totp_page))
        .route("/account/totp/start", post(totp_start))
        .route("/account/totp/confirm", post(totp_confirm))
}

#[derive(serde::Deserialize)]
struct Next {
    next: Option<String>,
}

/// Where a role goes after sign-in when no page was asked for.
fn home_of(role: Role) -> &'static str {
    match role {
        Role::Admin | Role::Auditor => "/admin",
        _ => "/portal",
    }
}

fn error_page(state: &AppState, status: StatusCode, title: &str, message: &str) -> Response {
    state
        .pages
        .respond(status, &ErrorView { title, message }, &[])
}

fn with_cookies(mut response: Response, cookies: Vec<HeaderValue>) -> Response {
    for c in cookies {
        response.headers_mut().append(header::SET_COOKIE, c);
    }
    response
}

fn internal(state: &AppState) -> Response {
    error_page(
        state,
        StatusCode::SERVICE_UNAVAILABLE,
        "Something went wrong",
        "Please try again later.",
    )
}

/// The sign-in page, with `error` and `status`.
fn render_signin(
    state: &AppState,
    headers: &HeaderMap,
    next: &str,
    status: StatusCode,
    error: Option<&str>,
    mut cookies: Vec<HeaderValue>,
) -> Response {
    let Ok((csrf, cookie)) = csrf::ensure(headers) else {
        return internal(state);
    };
    cookies.extend(cookie);
    let view = SigninView {
        client_name: "",
        action: "/signin",
        carry: "next",
        csrf: &csrf,
        request: next,
        error,
        username: None,
    };
    with_cookies(state.pages.respond(status, &view, &[]), cookies)
}

/// `GET /signin?next=/portal`.
async fn signin_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<Next>,
) -> Response {
    let next = q.next.as_deref().and_then(local_path).unwrap_or("");
    render_signin(&state, &headers, next, StatusCode::OK, None, Vec::new())
}

fn client_address(
    state: &AppState,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: &HeaderMap,
) -> Option<std::net::IpAddr> {
    crate::auth_routes::client(state, connect, headers).ok()
}

/// The form of a post, CSRF-checked; the refusal page otherwise.
async fn checked_form(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<crate::web::Form, Response> {
    let form = form(headers, body, MAX_FORM).await.map_err(|_| {
        error_page(
            state,
            StatusCode::BAD_REQUEST,
            "The form could not be read",
            "Please try again.",
        )
    })?;
    if csrf::check(headers, form.one(csrf::FIELD)).is_err() {
        return Err(error_page(
            state,
            StatusCode::FORBIDDEN,
            "This form has expired",
            "The form was not sent from this site's page, or it expired. Please go back and \
             try again.",
        ));
    }
    Ok(form)
}

/// `POST /signin`: the password step.
async fn signin(
    State(state): State<AppState>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let form = match checked_form(&state, &headers, body).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let next = form
        .one("next")
        .and_then(local_path)
        .unwrap_or("")
        .to_owned();
    let Some(address) = client_address(&state, connect, &headers) else {
        return internal(&state);
    };
    let login = state
        .accounts
        .login_first_factor(LoginRequest {
            username: form.one("username").unwrap_or("").to_owned(),
            password: Password::new(form.one("password").unwrap_or("").to_owned()),
            totp: None,
            recovery_code: None,
            address,
        })
        .await;
    match login {
        Ok(LoginStep::SecondFactor(ticket)) => {
            let Ok((csrf, cookie)) = csrf::ensure(&headers) else {
                return internal(&state);
            };
            let mut cookies: Vec<HeaderValue> = cookie.into_iter().collect();
            match cookie::set(MFA_COOKIE, ticket.expose(), Duration::from_secs(300)) {
                Ok(c) => cookies.push(c),
                Err(_) => return internal(&state),
            }
            let view = TotpView {
                client_name: None,
                action: "/signin/totp",
                carry: "next",
                csrf: &csrf,
                request: &next,
                error: None,
            };
            with_cookies(state.pages.respond(StatusCode::OK, &view, &[]), cookies)
        }
        Ok(LoginStep::Done(outcome)) => finish(&state, &headers, &next, Ok(outcome), Vec::new()),
        Err(e) => finish(&state, &headers, &next, Err(e), Vec::new()),
    }
}

/// `POST /signin/totp`: the code step (a TOTP code, or a recovery code).
async fn signin_totp(
    State(state): State<AppState>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let form = match checked_form(&state, &headers, body).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let next = form
        .one("next")
        .and_then(local_path)
        .unwrap_or("")
        .to_owned();
    let Some(address) = client_address(&state, connect, &headers) else {
        return internal(&state);
    };
    // The ticket is spent by this attempt, whatever its result.
    let spent: Vec<HeaderValue> = cookie::clear(MFA_COOKIE).ok().into_iter().collect();
    let Some(ticket) = cookie::get(&headers, MFA_COOKIE) else {
        let expired = Some("Your sign-in expired. Please sign in again.");
        return render_signin(
            &state,
            &headers,
            &next,
            StatusCode::UNAUTHORIZED,
            expired,
            spent,
        );
    };
    let code: String = form
        .one("code")
        .unwrap_or("")
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let (totp, recovery) = if code.contains('-') {
        (None, Some(code.as_str()))
    } else {
        (Some(code.as_str()), None)
    };
    let outcome = state
        .accounts
        .login_second_factor(&ticket, totp, recovery, address)
        .await;
    finish(&state, &headers, &next, outcome, spent)
}

/// The end of a sign-in: the session cookie and the page asked for (or the role's home, or
/// second-factor enrolment), or the sign-in page again saying why.
fn finish(
    state: &AppState,
    headers: &HeaderMap,
    next: &str,
    outcome: Result<LoginOutcome, ServiceError>,
    mut cookies: Vec<HeaderValue>,
) -> Response {
    let outcome = match outcome {
        Ok(o) => o,
        Err(ServiceError::Throttled { retry_after }) => {
            let wait = format!(
                "Too many attempts. Try again in {} seconds.",
                retry_after.max(1)
            );
            let status = StatusCode::TOO_MANY_REQUESTS;
            return render_signin(state, headers, next, status, Some(&wait), cookies);
        }
        Err(ServiceError::CredentialFailure) => {
            let wrong = Some("The username, password or code is not right.");
            let status = StatusCode::UNAUTHORIZED;
            return render_signin(state, headers, next, status, wrong, cookies);
        }
        Err(_) => return internal(state),
    };
    match cookie::set(
        SESSION_COOKIE,
        outcome.token.expose(),
        Duration::from_secs(SESSION_SECS),
    ) {
        Ok(c) => cookies.push(c),
        Err(_) => return internal(state),
    }
    let to = if outcome.enrolment_only {
        "/account/totp"
    } else if next.is_empty() {
        home_of(outcome.role)
    } else {
        next
    };
    with_cookies(see_other(to), cookies)
}

/// `POST /signout`: ends the session (revoked, with the request's audit entry) and clears
/// the cookie.
async fn signout(
    State(state): State<AppState>,
    slot: AuditSlot,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Err(r) = checked_form(&state, &headers, body).await {
        return r;
    }
    let mut cookies: Vec<HeaderValue> = cookie::clear(SESSION_COOKIE).ok().into_iter().collect();
    cookies.extend(cookie::clear(MFA_COOKIE).ok());
    if let Some(token) = cookie::get(&headers, SESSION_COOKIE)
        && let Ok(who) = state.accounts.authenticate(&token).await
    {
        slot.note_principal(&who);
        let sink = RequestSink::account_change(&state, slot);
        if state.accounts.revoke(&token, &sink).await.is_ok() {
            sink.committed();
        }
    }
    with_cookies(see_other("/signin"), cookies)
}

/// The values of `account/totp.html`. A typed struct, not `json!`: with serde_json's
/// `arbitrary_precision` (the workspace keeps FHIR decimals as written) a JSON number reaches
/// the template as a map, not a number.
#[derive(serde::Serialize, Default)]
struct TotpPage<'a> {
    mode: &'a str,
    continue_to: &'a str,
    csrf: &'a str,
    qr_size: usize,
    qr_path: String,
    secret: String,
    error: Option<&'a str>,
}

/// The page of the enrolment, in `view.mode`.
fn totp_view(
    state: &AppState,
    headers: &HeaderMap,
    status: StatusCode,
    view: TotpPage<'_>,
) -> Response {
    let Ok((csrf, cookie)) = csrf::ensure(headers) else {
        return internal(state);
    };
    let view = TotpPage {
        csrf: &csrf,
        ..view
    };
    let page = state
        .pages
        .respond_template(status, "account/totp.html", &view, &[]);
    with_cookies(page, cookie.into_iter().collect())
}

/// `GET /account/totp`: whether the account has an authenticator, or the start of enrolment.
async fn totp_page(State(state): State<AppState>, slot: AuditSlot, headers: HeaderMap) -> Response {
    let who = match signed_in(&state, &slot, &headers, Area::Account, "/account/totp").await {
        Ok(w) => w,
        Err(r) => return r,
    };
    let enabled = match state.accounts.totp_enabled(&who).await {
        Ok(e) => e,
        Err(_) => return internal(&state),
    };
    let view = TotpPage {
        mode: if enabled { "enabled" } else { "start" },
        continue_to: home_of(who.principal.role()),
        ..TotpPage::default()
    };
    totp_view(&state, &headers, StatusCode::OK, view)
}

/// `POST /account/totp/start`: a new secret (stored pending, with the request's entry) and
/// its QR code.
async fn totp_start(
    State(state): State<AppState>,
    slot: AuditSlot,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Err(r) = checked_form(&state, &headers, body).await {
        return r;
    }
    let who = match signed_in(&state, &slot, &headers, Area::Account, "/account/totp").await {
        Ok(w) => w,
        Err(r) => return r,
    };
    let sink = RequestSink::account_change(&state, slot);
    let enrolment = match state.accounts.begin_totp_enrolment(&who, &sink).await {
        Ok(e) => {
            sink.committed();
            e
        }
        Err(_) => return internal(&state),
    };
    let Some((size, path)) = qr_path(enrolment.otpauth_url.as_bytes()) else {
        return internal(&state);
    };
    let view = TotpPage {
        mode: "scan",
        continue_to: home_of(who.principal.role()),
        qr_size: size,
        qr_path: path,
        secret: enrolment.secret_base32,
        ..TotpPage::default()
    };
    totp_view(&state, &headers, StatusCode::OK, view)
}

/// `POST /account/totp/confirm` `code`: turns the authenticator on (with the request's
/// entry) and shows the recovery codes, once.
async fn totp_confirm(
    State(state): State<AppState>,
    slot: AuditSlot,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let form = match checked_form(&state, &headers, body).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let who = match signed_in(&state, &slot, &headers, Area::Account, "/account/totp").await {
        Ok(w) => w,
        Err(r) => return r,
    };
    let code: String = form
        .one("code")
        .unwrap_or("")
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let sink = RequestSink::account_change(&state, slot);
    match state.accounts.confirm_totp(&who, &code, &sink).await {
        Ok(codes) => {
            sink.committed();
            let context = json!({
                "codes": codes,
                "continue_to": home_of(who.principal.role()),
            });
            state
                .pages
                .respond_template(StatusCode::OK, "account/codes.html", &context, &[])
        }
        Err(ServiceError::CredentialFailure) => {
            let view = TotpPage {
                mode: "start",
                continue_to: home_of(who.principal.role()),
                error: Some(
                    "That code was not accepted. Set up the authenticator again and enter the \
                     current code.",
                ),
                ..TotpPage::default()
            };
            totp_view(&state, &headers, StatusCode::BAD_REQUEST, view)
        }
        Err(_) => internal(&state),
    }
}

/// A QR code of `data` as (size in modules with a 4-module quiet zone, an SVG path of its dark
/// modules: one `MxXyYh1v1h-1z` square each). Only digits and `M h v z` in the path.
fn qr_path(data: &[u8]) -> Option<(usize, String)> {
    let code = qrcode::QrCode::new(data).ok()?;
    let width = code.width();
    let colors = code.to_colors();
    let quiet = 4;
    let mut path = String::new();
    for (i, color) in colors.iter().enumerate() {
        if *color == qrcode::Color::Dark {
            let (x, y) = (i % width + quiet, i / width + quiet);
            path.push_str(&format!("M{x} {y}h1v1h-1z"));
        }
    }
    Some((width + 2 * quiet, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qr_paths_hold_only_squares() {
        let Some((size, path)) =
            qr_path(b"otpauth://totp/phivault:alice?secret=ABC&issuer=phivault")
        else {
            panic!("a QR code")
        };
        assert!(size >= 21 + 8);
        assert!(path.starts_with('M'));
        assert!(
            path.chars()
                .all(|c| c.is_ascii_digit() || " Mhvz-".contains(c)),
            "{path}"
        );
    }

    #[test]
    fn homes_by_role() {
        assert_eq!(home_of(Role::Admin), "/admin");
        assert_eq!(home_of(Role::Auditor), "/admin");
        assert_eq!(home_of(Role::Patient), "/portal");
    }
}
