//! `/admin/console/users`: the accounts (username, role, second factor, state), adding one
//! with a generated password shown once, and disabling one.
//!
//! An administrator cannot disable their own account here: the console would lock out the
//! person using it (and possibly the last administrator).

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use phivault_auth::{Authenticated, Password, ServiceError};
use phivault_policy::Role;
use serde::Serialize;
use zeroize::Zeroizing;

use super::{
    Problem, USERS, admin_post, can_change, done_notice, done_path, failed, field, now_secs,
    problem, render, when,
};
use crate::AppState;
use crate::audit_sink::RequestSink;
use crate::edge::AuditSlot;
use crate::web::session::{Area, see_other, signed_in};

/// The navigation item.
const ACTIVE: &str = "users";
/// Characters of a generated password: 24 of 62 letters and digits, about 143 bits.
const GENERATED_PASSWORD_CHARS: usize = 24;
const PASSWORD_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
/// Attempts at a generated password the policy accepts (it refuses one that contains the
/// username: rare for 24 random characters, so a second attempt all but always passes).
const PASSWORD_ATTEMPTS: usize = 8;

/// A role that can be given here, and how the page names it.
#[derive(Serialize)]
struct RoleChoice {
    value: &'static str,
    label: &'static str,
}

/// The roles of people (the app role is for OAuth2 clients).
const ROLES: &[RoleChoice] = &[
    RoleChoice {
        value: "clinician",
        label: "Clinician",
    },
    RoleChoice {
        value: "patient",
        label: "Patient",
    },
    RoleChoice {
        value: "researcher",
        label: "Researcher",
    },
    RoleChoice {
        value: "auditor",
        label: "Auditor",
    },
    RoleChoice {
        value: "admin",
        label: "Administrator",
    },
];

/// One account as listed.
#[derive(Serialize)]
struct UserItem {
    user_id: String,
    username: String,
    role: String,
    totp: bool,
    created: String,
    /// When it was disabled.
    disabled: Option<String>,
    /// Until when its login is locked (failed attempts), when that is in the future.
    locked_until: Option<String>,
    /// `Patient/…` or `Practitioner/…`.
    linked: Option<String>,
    /// The signed-in person's own account (no disable button).
    is_self: bool,
}

/// An account just made, with its password: shown once.
#[derive(Serialize)]
struct Created<'a> {
    username: &'a str,
    role: &'a str,
    password: &'a str,
    /// Staff sign in with a second factor: they enrol it at their first sign-in.
    totp_at_first_sign_in: bool,
}

/// `console/users.html`.
#[derive(Serialize)]
struct UsersView<'a> {
    can_change: bool,
    users: Vec<UserItem>,
    roles: &'static [RoleChoice],
    notice: Option<&'a str>,
    error: Option<&'a str>,
    created: Option<Created<'a>>,
    /// The add form's values after a refused post.
    form_username: &'a str,
    form_role: &'a str,
}

/// What a page answering a post adds to the list.
#[derive(Default)]
struct Extra<'a> {
    notice: Option<&'a str>,
    error: Option<&'a str>,
    created: Option<Created<'a>>,
    form_username: &'a str,
    form_role: &'a str,
}

/// The users page with `extra`, as `who` sees it.
async fn respond(
    state: &AppState,
    headers: &HeaderMap,
    who: &Authenticated,
    status: StatusCode,
    extra: Extra<'_>,
) -> Response {
    let users = match state.accounts.list_users().await {
        Ok(u) => u,
        Err(e) => return failed(state, headers, ACTIVE, USERS, &e),
    };
    let now = now_secs();
    let me = who.principal.id();
    let users = users
        .into_iter()
        .map(|u| UserItem {
            is_self: u.user_id == me,
            linked: u
                .patient_id
                .map(|p| format!("Patient/{p}"))
                .or_else(|| u.practitioner_id.map(|p| format!("Practitioner/{p}"))),
            created: when(u.created_at),
            disabled: u.disabled_at.map(when),
            locked_until: u.locked_until.filter(|t| *t > now).map(when),
            user_id: u.user_id,
            username: u.username,
            role: u.role,
            totp: u.totp_enabled,
        })
        .collect();
    let view = UsersView {
        can_change: can_change(who),
        users,
        roles: ROLES,
        notice: extra.notice,
        error: extra.error,
        created: extra.created,
        form_username: extra.form_username,
        form_role: extra.form_role,
    };
    render(state, headers, status, "console/users.html", ACTIVE, &view)
}

/// `GET /admin/console/users`.
pub(super) async fn page(
    State(state): State<AppState>,
    slot: AuditSlot,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let who = match signed_in(&state, &slot, &headers, Area::Console, USERS).await {
        Ok(w) => w,
        Err(r) => return r,
    };
    let extra = Extra {
        notice: done_notice(query.as_deref()),
        ..Extra::default()
    };
    respond(&state, &headers, &who, StatusCode::OK, extra).await
}

/// A role given here: a person's role, never the app role.
fn parse_role(text: &str) -> Option<Role> {
    ROLES
        .iter()
        .any(|r| r.value == text)
        .then(|| Role::parse(text).ok())
        .flatten()
}

/// A random password of [`GENERATED_PASSWORD_CHARS`] letters and digits (rejection
/// sampling, so every character is uniform). `None` when the system random generator fails.
fn generate_password() -> Option<Zeroizing<String>> {
    let mut out = Zeroizing::new(String::with_capacity(GENERATED_PASSWORD_CHARS));
    let limit = 256 - (256 % PASSWORD_ALPHABET.len());
    while out.len() < GENERATED_PASSWORD_CHARS {
        let mut buf = Zeroizing::new([0u8; 64]);
        phivault_crypto::random_bytes(buf.as_mut()).ok()?;
        for b in buf.iter().map(|b| usize::from(*b)) {
            if b < limit && out.len() < GENERATED_PASSWORD_CHARS {
                out.push(char::from(PASSWORD_ALPHABET[b % PASSWORD_ALPHABET.len()]));
            }
        }
    }
    Some(out)
}

/// `POST /admin/console/users` `username`, `role`: creates the account with a generated
/// password (with the request's audit entry) and shows the password once.
pub(super) async fn add(
    State(state): State<AppState>,
    slot: AuditSlot,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (form, who) = match admin_post(&state, &slot, &headers, body, ACTIVE, USERS).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let username = field(&form, "username");
    let role_text = field(&form, "role");
    let (status, error) = match create(&state, slot, username, role_text).await {
        Ok((role, password)) => {
            let extra = Extra {
                created: Some(Created {
                    username,
                    role: role.as_str(),
                    password: password.as_str(),
                    totp_at_first_sign_in: role != Role::Patient,
                }),
                ..Extra::default()
            };
            return respond(&state, &headers, &who, StatusCode::OK, extra).await;
        }
        Err(Refused::Form(status, error)) => (status, error),
        Err(Refused::Failed(e)) => return failed(&state, &headers, ACTIVE, USERS, &e),
    };
    let extra = Extra {
        error: Some(&error),
        form_username: username,
        form_role: role_text,
        ..Extra::default()
    };
    respond(&state, &headers, &who, status, extra).await
}

/// Why an account was not created.
enum Refused {
    /// The form's fault: the status and what to tell the administrator.
    Form(StatusCode, String),
    /// Ours.
    Failed(ServiceError),
}

/// Creates the account `username` with `role_text` and a generated password, committed with
/// the request's entry; its role and password.
async fn create(
    state: &AppState,
    slot: AuditSlot,
    username: &str,
    role_text: &str,
) -> Result<(Role, Zeroizing<String>), Refused> {
    let Some(role) = parse_role(role_text) else {
        return Err(Refused::Form(
            StatusCode::BAD_REQUEST,
            "Choose a role.".to_owned(),
        ));
    };
    let sink = RequestSink::account_change(state, slot);
    let mut attempts = 0;
    loop {
        attempts += 1;
        let password = generate_password().ok_or_else(|| {
            Refused::Failed(ServiceError::Internal(
                "the system random generator failed".to_owned(),
            ))
        })?;
        let result = state
            .accounts
            .create_user(username, Password::new(password.as_str()), role, &sink)
            .await;
        match result {
            Ok(user_id) => {
                sink.committed();
                tracing::info!(user_id = %user_id, role = %role, "user created from the console");
                return Ok((role, password));
            }
            Err(ServiceError::WeakPassword(_)) if attempts < PASSWORD_ATTEMPTS => continue,
            Err(ServiceError::UsernameTaken) => {
                return Err(Refused::Form(
                    StatusCode::CONFLICT,
                    "An account with this username exists already.".to_owned(),
                ));
            }
            Err(ServiceError::Invalid(message)) => {
                return Err(Refused::Form(
                    StatusCode::BAD_REQUEST,
                    format!("The account was not created: {message}."),
                ));
            }
            Err(e) => return Err(Refused::Failed(e)),
        }
    }
}

/// `POST /admin/console/users/disable` `user_id` (or `username`): disables the account (with
/// the request's audit entry); its sessions and tokens stop working.
pub(super) async fn disable(
    State(state): State<AppState>,
    slot: AuditSlot,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (form, who) = match admin_post(&state, &slot, &headers, body, ACTIVE, USERS).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let not_found = || {
        problem(
            &state,
            &headers,
            StatusCode::NOT_FOUND,
            ACTIVE,
            &Problem {
                title: "No such account",
                message: "The account to disable was not found.",
                back: USERS,
            },
        )
    };
    // The account by id (the list's buttons), or by username (typed).
    let user_id = match (field(&form, "user_id"), field(&form, "username")) {
        ("", "") => return not_found(),
        ("", username) => match state.store.user_by_username(username).await {
            Ok(Some(user)) => user.user_id,
            Ok(None) => return not_found(),
            Err(e) => return failed(&state, &headers, ACTIVE, USERS, &e),
        },
        (id, _) => id.to_owned(),
    };
    if user_id == who.principal.id() {
        return problem(
            &state,
            &headers,
            StatusCode::CONFLICT,
            ACTIVE,
            &Problem {
                title: "You cannot disable your own account",
                message: "Ask another administrator to disable it.",
                back: USERS,
            },
        );
    }
    let username = match state.accounts.username(&user_id).await {
        Ok(u) => Zeroizing::new(u),
        Err(ServiceError::NotFound(_)) => return not_found(),
        Err(e) => return failed(&state, &headers, ACTIVE, USERS, &e),
    };
    let sink = RequestSink::account_change(&state, slot);
    match state.accounts.disable_user(&username, &sink).await {
        Ok(()) => {
            sink.committed();
            tracing::info!(user_id = %user_id, "user disabled from the console");
            see_other(&done_path(USERS, "user-disabled"))
        }
        Err(ServiceError::NotFound(_)) => not_found(),
        Err(e) => failed(&state, &headers, ACTIVE, USERS, &e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_passwords_are_long_distinct_letters_and_digits() {
        let a = generate_password().unwrap_or_default();
        let b = generate_password().unwrap_or_default();
        assert_eq!(a.len(), GENERATED_PASSWORD_CHARS);
        assert!(
            a.bytes().all(|c| PASSWORD_ALPHABET.contains(&c)),
            "{}",
            a.as_str()
        );
        assert_ne!(a.as_str(), b.as_str());
        // The policy accepts it for a typical username.
        let policy = phivault_auth::PasswordPolicy::default();
        assert!(policy.check(&Password::new(a.as_str()), "alice").is_ok());
    }

    #[test]
    fn only_peoples_roles_are_given() {
        assert_eq!(parse_role("clinician"), Some(Role::Clinician));
        assert_eq!(parse_role("admin"), Some(Role::Admin));
        assert_eq!(parse_role("auditor"), Some(Role::Auditor));
        for bad in ["app", "", "Admin", "root", " admin"] {
            assert_eq!(parse_role(bad), None, "{bad:?}");
        }
    }
}
