//! The signed-in person of a portal or console page: the `__Host-phivault_session` cookie of
//! the sign-in pages (one sign-in for the authorization pages, the portal and the console).
//!
//! What holds:
//! - **No cookie, or one that does not verify: the sign-in page**, with the page asked for as
//!   `next` (a local path only).
//! - **A session that must enrol a second factor reaches only the enrolment page**: staff
//!   sign in with TOTP before they see the console; a patient required to enrol likewise.
//! - **Each area has its roles**: the portal is for patients linked to their record, the
//!   console for administrators and auditors. Anyone else gets a plain refusal page.
//! - The person is named in the request's audit entry.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use phivault_auth::{Authenticated, ServiceError};
use phivault_policy::{PrincipalKind, Role};

use super::cookie;
use super::pages::ErrorView;
use crate::AppState;
use crate::edge::AuditSlot;

/// The session cookie (`__Host-phivault_session`).
pub(crate) const SESSION_COOKIE: &str = "phivault_session";

/// Where a page belongs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Area {
    /// `/portal`: patients.
    Portal,
    /// `/admin`: administrators and auditors.
    Console,
    /// `/account`: anyone signed in (second-factor enrolment).
    Account,
}

/// A local path to come back to after sign-in: starts with one `/`, no scheme or host, no
/// backslash or control character (so `//evil.example` and `/\evil` are refused).
pub(crate) fn local_path(next: &str) -> Option<&str> {
    let ok = next.starts_with('/')
        && !next.starts_with("//")
        && !next.contains('\\')
        && !next.chars().any(char::is_control)
        && next.len() <= 512;
    ok.then_some(next)
}

/// A 303 to `location` (a local path or a URL this server built).
pub(crate) fn see_other(location: &str) -> Response {
    match HeaderValue::from_str(location) {
        Ok(v) => (StatusCode::SEE_OTHER, [(header::LOCATION, v)]).into_response(),
        Err(_) => StatusCode::BAD_REQUEST.into_response(),
    }
}

/// The sign-in page, coming back to `next` afterwards.
pub(crate) fn to_signin(next: &str) -> Response {
    let next = local_path(next).unwrap_or("/portal");
    see_other(&format!("/signin?next={}", urlencoding::encode(next)))
}

/// A refusal page (403) for someone signed in who has no business here.
fn not_yours(state: &AppState, message: &str) -> Response {
    let view = ErrorView {
        title: "This page is not for your account",
        message,
    };
    state.pages.respond(StatusCode::FORBIDDEN, &view, &[])
}

/// The person signed in for a page of `area` at `path`, or the response to send instead (the
/// sign-in page, the enrolment page, a refusal).
pub(crate) async fn signed_in(
    state: &AppState,
    slot: &AuditSlot,
    headers: &HeaderMap,
    area: Area,
    path: &str,
) -> Result<Authenticated, Response> {
    let Some(token) = cookie::get(headers, SESSION_COOKIE) else {
        return Err(to_signin(path));
    };
    if !token.starts_with(phivault_auth::TokenKind::Session.prefix()) {
        return Err(to_signin(path));
    }
    let who = match state.accounts.authenticate(&token).await {
        Ok(who) => who,
        Err(ServiceError::CredentialFailure) => return Err(to_signin(path)),
        Err(e) => {
            let e = crate::ApiError::from(e);
            return Err(e.into_response());
        }
    };
    slot.note_principal(&who);
    if who.principal.kind() != PrincipalKind::User || who.client_id.is_some() {
        return Err(to_signin(path));
    }
    if who.enrolment_only && area != Area::Account {
        return Err(see_other("/account/totp"));
    }
    let role = who.principal.role();
    match area {
        Area::Portal if role != Role::Patient || who.principal.linked_patient().is_none() => {
            Err(not_yours(
                state,
                "The portal is for patients whose account is linked to their record.",
            ))
        }
        Area::Console if !matches!(role, Role::Admin | Role::Auditor) => Err(not_yours(
            state,
            "The console is for administrators and auditors.",
        )),
        _ => Ok(who),
    }
}

/// The raw session token of the request (for calls to the API as the person).
pub(crate) fn session_token(headers: &HeaderMap) -> Option<zeroize::Zeroizing<String>> {
    cookie::get(headers, SESSION_COOKIE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_is_a_local_path_only() {
        assert_eq!(local_path("/portal/apps"), Some("/portal/apps"));
        assert_eq!(local_path("/admin"), Some("/admin"));
        for bad in [
            "//evil.example/x",
            "https://evil.example",
            "/\\evil.example",
            "portal",
            "/a\nb",
            "",
        ] {
            assert_eq!(local_path(bad), None, "{bad:?}");
        }
    }
}
