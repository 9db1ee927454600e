//! The authorization endpoint of SMART App Launch: `GET /oauth/authorize` validates the
//! app's request and shows the sign-in page; the pages post back to
//! `/oauth/authorize/{signin,totp,patient,consent}`; an approval ends with a redirect to the
//! app carrying a single-use code and the app's `state`.
//!
//! What holds:
//! - **A bad client or redirect URI never redirects** (an open redirector would hand codes or
//!   phishing pages to anyone): the browser gets an error page. Once both are known good,
//!   other errors go back to the app as RFC 6749 §4.1.2.1 errors with its `state`.
//! - **The request is re-validated on every step.** Each page carries the app's original
//!   query as the hidden `request` field; every post parses and checks it again against the
//!   registration, so nothing a page posts can widen what the app asked for.
//! - **PKCE S256 is required** (plain and missing are refused), `aud` must be this server's
//!   FHIR base, and the scopes must be within the client's registration.
//! - **Every post carries the CSRF token of its browser's cookie**; cookies are
//!   `__Host-`, `Secure; HttpOnly; SameSite=Strict`. The sign-in session is an ordinary
//!   8-hour session token; the second-factor ticket is single-use and lives 5 minutes.
//! - **The person decides each scope**; a patient's context is their own record, a
//!   clinician's is a patient in their care (picker) or the EHR launch's patient.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Extension;
use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use phivault_auth::{
    Accounts, Authenticated, CodeRequest, LoginRequest, LoginStep, OAuthClient, Password,
    ServiceError, has_scope,
};
use phivault_fhir::Id;
use zeroize::Zeroizing;

use crate::AppState;
use crate::edge::AuditSlot;
use crate::fhir_routes::parse_pairs;
use crate::web::{
    ConsentView, ErrorView, Form, PatientChoice, PickerView, ScopeItem, SigninView, TotpView,
    cookie, csrf, form, origin,
};

/// The session cookie of the sign-in pages (`__Host-phivault_session`).
pub(crate) const SESSION_COOKIE: &str = "phivault_session";
/// The second-step ticket cookie.
const MFA_COOKIE: &str = "phivault_mfa";
/// Largest form a page posts.
const MAX_FORM: usize = 16 * 1024;
/// Longest authorization request accepted (its query string).
const MAX_REQUEST: usize = 8 * 1024;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/oauth/authorize", get(authorize))
        .route("/oauth/authorize/signin", post(signin))
        .route("/oauth/authorize/totp", post(totp))
        .route("/oauth/authorize/patient", post(pick_patient))
        .route("/oauth/authorize/consent", post(consent))
}

/// A validated authorization request.
struct AuthRequest {
    client: OAuthClient,
    redirect_uri: String,
    state: String,
    scope: String,
    code_challenge: String,
    launch: Option<String>,
    nonce: Option<String>,
    /// The query string as the app sent it (the pages' hidden `request` field).
    raw: String,
}

impl AuthRequest {
    fn wants(&self, scope: &str) -> bool {
        has_scope(&self.scope, scope)
    }
}

/// Why a request cannot go on.
enum Refusal {
    /// Shown to the person, no redirect (bad client or redirect URI, expired form).
    Page(StatusCode, &'static str, String),
    /// Sent back to the app (RFC 6749 §4.1.2.1).
    Redirect {
        redirect_uri: String,
        state: Option<String>,
        error: &'static str,
        description: String,
    },
}

impl Refusal {
    fn respond(self, state: &AppState, slot: &AuditSlot) -> Response {
        match self {
            Refusal::Page(status, title, message) => {
                slot.note_action_refused("page");
                state.pages.respond(
                    status,
                    &ErrorView {
                        title,
                        message: &message,
                    },
                    &[],
                )
            }
            Refusal::Redirect {
                redirect_uri,
                state: app_state,
                error,
                description,
            } => {
                slot.note_action_refused(error);
                let mut params = vec![
                    ("error", error.to_owned()),
                    ("error_description", description),
                ];
                if let Some(s) = app_state {
                    params.push(("state", s));
                }
                redirect(&redirect_uri, &params)
            }
        }
    }
}

/// A 303 to `uri` with `params` appended to its query.
fn redirect(uri: &str, params: &[(&str, String)]) -> Response {
    let mut target = uri.to_owned();
    for (i, (name, value)) in params.iter().enumerate() {
        let sep = if i == 0 && !uri.contains('?') {
            '?'
        } else {
            '&'
        };
        target.push(sep);
        target.push_str(name);
        target.push('=');
        target.push_str(&urlencoding::encode(value));
    }
    match HeaderValue::from_str(&target) {
        Ok(location) => (StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response(),
        Err(_) => StatusCode::BAD_REQUEST.into_response(),
    }
}

fn page_refusal(title: &'static str, message: &str) -> Refusal {
    Refusal::Page(StatusCode::BAD_REQUEST, title, message.to_owned())
}

/// Parses and checks an authorization request (see the module docs for the order).
async fn parse_request(state: &AppState, raw: &str) -> Result<AuthRequest, Refusal> {
    const BAD_APP: &str = "This app's sign-in link is not valid";
    if raw.len() > MAX_REQUEST {
        return Err(page_refusal(BAD_APP, "The request is too long."));
    }
    let pairs =
        parse_pairs(raw).map_err(|_| page_refusal(BAD_APP, "The request could not be read."))?;
    let mut seen = std::collections::BTreeSet::new();
    for (name, _) in &pairs {
        if !seen.insert(name.as_str()) {
            return Err(page_refusal(
                BAD_APP,
                "A parameter of the request is repeated.",
            ));
        }
    }
    let get = |name: &str| {
        pairs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty())
    };
    let client_id = get("client_id")
        .ok_or_else(|| page_refusal(BAD_APP, "The request names no app (client_id)."))?;
    let client = match state.accounts.oauth_client(&client_id).await {
        Ok(Some(c)) if c.disabled_at.is_none() && !c.redirect_uris.is_empty() => c,
        Ok(_) => {
            return Err(page_refusal(
                BAD_APP,
                "The app is not registered with this server, or it is disabled.",
            ));
        }
        Err(e) => return Err(service_page(e)),
    };
    let redirect_uri = get("redirect_uri")
        .filter(|r| client.redirect_uris.iter().any(|u| u == r))
        .ok_or_else(|| {
            page_refusal(
                BAD_APP,
                "The address this app asked to return to is not one it registered, so you \
                 are not sent there.",
            )
        })?;
    let app_state = get("state");
    let back = |error: &'static str, description: &str| Refusal::Redirect {
        redirect_uri: redirect_uri.clone(),
        state: app_state.clone(),
        error,
        description: description.to_owned(),
    };
    if get("response_type").as_deref() != Some("code") {
        return Err(back(
            "unsupported_response_type",
            "response_type must be code",
        ));
    }
    let Some(app_state_value) = app_state.clone() else {
        return Err(back("invalid_request", "state is required"));
    };
    match get("code_challenge_method").as_deref() {
        Some("S256") => {}
        Some("plain") => {
            return Err(back(
                "invalid_request",
                "PKCE method plain is refused; use S256",
            ));
        }
        _ => {
            return Err(back(
                "invalid_request",
                "PKCE is required: code_challenge with code_challenge_method S256",
            ));
        }
    }
    let code_challenge = get("code_challenge")
        .filter(|c| phivault_auth::pkce::is_valid_challenge(c))
        .ok_or_else(|| back("invalid_request", "code_challenge is not an S256 challenge"))?;
    let base = state.base_url.trim_end_matches('/');
    if get("aud").as_deref().map(|a| a.trim_end_matches('/')) != Some(base) {
        return Err(back(
            "invalid_request",
            "aud must be this server's FHIR base URL",
        ));
    }
    let scope = get("scope").ok_or_else(|| back("invalid_scope", "scope is required"))?;
    let scope = Accounts::requested_scopes(&client, &scope)
        .map_err(|e| back("invalid_scope", &e.to_string()))?
        .to_string();
    let launch = get("launch");
    if has_scope(&scope, "launch") && launch.is_none() {
        return Err(back(
            "invalid_request",
            "the launch scope needs the launch parameter of an EHR launch",
        ));
    }
    Ok(AuthRequest {
        client,
        redirect_uri,
        state: app_state_value,
        scope,
        code_challenge,
        launch,
        nonce: get("nonce"),
        raw: raw.to_owned(),
    })
}

fn service_page(e: ServiceError) -> Refusal {
    let reference = match crate::ApiError::from(e) {
        crate::ApiError::Internal { reference } => format!(" (reference {reference})"),
        _ => String::new(),
    };
    Refusal::Page(
        StatusCode::SERVICE_UNAVAILABLE,
        "Something went wrong",
        format!("The server could not finish this step; please try again later{reference}."),
    )
}

/// A page response with the CSRF cookie, when a new one was made.
fn with_cookies(mut response: Response, cookies: &[HeaderValue]) -> Response {
    for c in cookies {
        response.headers_mut().append(header::SET_COOKIE, c.clone());
    }
    response
}

/// The CSRF token for a page, and its cookie when new.
fn csrf_token(headers: &HeaderMap) -> Result<(Zeroizing<String>, Vec<HeaderValue>), Refusal> {
    let (token, cookie) = csrf::ensure(headers).map_err(|_| {
        Refusal::Page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Something went wrong",
            "Please try again later.".to_owned(),
        )
    })?;
    Ok((token, cookie.into_iter().collect()))
}

/// `GET /oauth/authorize?...`: the sign-in page for a valid request.
async fn authorize(
    State(state): State<AppState>,
    slot: AuditSlot,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let request = match parse_request(&state, query.as_deref().unwrap_or("")).await {
        Ok(r) => r,
        Err(refusal) => return refusal.respond(&state, &slot),
    };
    slot.note_action_detail(&format!("client {}", request.client.client_id));
    signin_page(
        &state,
        &slot,
        &headers,
        &request,
        StatusCode::OK,
        None,
        None,
    )
}

#[allow(clippy::too_many_arguments)]
fn signin_page(
    state: &AppState,
    slot: &AuditSlot,
    headers: &HeaderMap,
    request: &AuthRequest,
    status: StatusCode,
    error: Option<&str>,
    extra_cookies: Option<Vec<HeaderValue>>,
) -> Response {
    let (csrf, mut cookies) = match csrf_token(headers) {
        Ok(t) => t,
        Err(refusal) => return refusal.respond(state, slot),
    };
    cookies.extend(extra_cookies.unwrap_or_default());
    let view = SigninView {
        client_name: &request.client.name,
        csrf: &csrf,
        request: &request.raw,
        error,
        username: None,
    };
    with_cookies(state.pages.respond(status, &view, &[]), &cookies)
}

/// The checks every post starts with: the form, its CSRF token, the request re-validated.
async fn posted(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<(Form, AuthRequest), Refusal> {
    let form = form(headers, body, MAX_FORM).await.map_err(|_| {
        page_refusal(
            "The form could not be read",
            "Please start again from the app.",
        )
    })?;
    if csrf::check(headers, form.one(csrf::FIELD)).is_err() {
        return Err(Refusal::Page(
            StatusCode::FORBIDDEN,
            "This form has expired",
            "The form was not sent from this site's page, or it expired. Please start again \
             from the app."
                .to_owned(),
        ));
    }
    let raw = form.one("request").unwrap_or("").to_owned();
    let request = parse_request(state, &raw).await?;
    Ok((form, request))
}

fn address(
    state: &AppState,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: &HeaderMap,
) -> Result<std::net::IpAddr, Refusal> {
    crate::auth_routes::client(state, connect, headers).map_err(|_| {
        Refusal::Page(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Something went wrong",
            "Please try again later.".to_owned(),
        )
    })
}

/// `POST /oauth/authorize/signin`: the password step.
async fn signin(
    State(state): State<AppState>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    slot: AuditSlot,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (form, request) = match posted(&state, &headers, body).await {
        Ok(p) => p,
        Err(refusal) => return refusal.respond(&state, &slot),
    };
    let address = match address(&state, connect, &headers) {
        Ok(a) => a,
        Err(refusal) => return refusal.respond(&state, &slot),
    };
    let username = form.one("username").unwrap_or("").to_owned();
    let password = Password::new(form.one("password").unwrap_or("").to_owned());
    let step = state
        .accounts
        .login_first_factor(LoginRequest {
            username,
            password,
            totp: None,
            recovery_code: None,
            address,
        })
        .await;
    match step {
        Ok(LoginStep::Done(outcome)) => {
            let cookie = match cookie::set(
                SESSION_COOKIE,
                outcome.token.expose(),
                Duration::from_secs(8 * 3600),
            ) {
                Ok(c) => c,
                Err(_) => {
                    return service_page(ServiceError::Internal("cookie".to_owned()))
                        .respond(&state, &slot);
                }
            };
            if outcome.enrolment_only {
                return Refusal::Page(
                    StatusCode::FORBIDDEN,
                    "Set up your authenticator first",
                    "Your account needs an authenticator app (a second factor) before it can \
                     authorize apps. Set it up, then start again from the app."
                        .to_owned(),
                )
                .respond(&state, &slot);
            }
            let response =
                after_signin(&state, &slot, &headers, &request, outcome.token.expose()).await;
            with_cookies(response, &[cookie])
        }
        Ok(LoginStep::SecondFactor(ticket)) => {
            let (csrf, mut cookies) = match csrf_token(&headers) {
                Ok(t) => t,
                Err(refusal) => return refusal.respond(&state, &slot),
            };
            match cookie::set(MFA_COOKIE, ticket.expose(), Duration::from_secs(300)) {
                Ok(c) => cookies.push(c),
                Err(_) => {
                    return service_page(ServiceError::Internal("cookie".to_owned()))
                        .respond(&state, &slot);
                }
            }
            let view = TotpView {
                client_name: Some(&request.client.name),
                csrf: &csrf,
                request: &request.raw,
                error: None,
            };
            with_cookies(state.pages.respond(StatusCode::OK, &view, &[]), &cookies)
        }
        Err(ServiceError::Throttled { retry_after }) => signin_page(
            &state,
            &slot,
            &headers,
            &request,
            StatusCode::TOO_MANY_REQUESTS,
            Some(&format!(
                "Too many attempts. Try again in {} seconds.",
                retry_after.max(1)
            )),
            None,
        ),
        Err(ServiceError::CredentialFailure) => signin_page(
            &state,
            &slot,
            &headers,
            &request,
            StatusCode::UNAUTHORIZED,
            Some("The username or password is not right."),
            None,
        ),
        Err(e) => service_page(e).respond(&state, &slot),
    }
}

/// `POST /oauth/authorize/totp`: the second factor (a TOTP code, or a recovery code).
async fn totp(
    State(state): State<AppState>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    slot: AuditSlot,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (form, request) = match posted(&state, &headers, body).await {
        Ok(p) => p,
        Err(refusal) => return refusal.respond(&state, &slot),
    };
    let address = match address(&state, connect, &headers) {
        Ok(a) => a,
        Err(refusal) => return refusal.respond(&state, &slot),
    };
    let spent = cookie::clear(MFA_COOKIE).ok();
    let Some(ticket) = cookie::get(&headers, MFA_COOKIE) else {
        return signin_page(
            &state,
            &slot,
            &headers,
            &request,
            StatusCode::UNAUTHORIZED,
            Some("Your sign-in expired. Please sign in again."),
            None,
        );
    };
    let code: String = form
        .one("code")
        .unwrap_or("")
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    // Recovery codes have dashes (`xxxx-xxxx-xxxx`); TOTP codes are digits.
    let (totp_code, recovery) = if code.contains('-') {
        (None, Some(code.as_str()))
    } else {
        (Some(code.as_str()), None)
    };
    match state
        .accounts
        .login_second_factor(&ticket, totp_code, recovery, address)
        .await
    {
        Ok(outcome) => {
            let mut cookies: Vec<HeaderValue> = spent.into_iter().collect();
            match cookie::set(
                SESSION_COOKIE,
                outcome.token.expose(),
                Duration::from_secs(8 * 3600),
            ) {
                Ok(c) => cookies.push(c),
                Err(_) => {
                    return service_page(ServiceError::Internal("cookie".to_owned()))
                        .respond(&state, &slot);
                }
            }
            let response =
                after_signin(&state, &slot, &headers, &request, outcome.token.expose()).await;
            with_cookies(response, &cookies)
        }
        Err(ServiceError::Throttled { retry_after }) => signin_page(
            &state,
            &slot,
            &headers,
            &request,
            StatusCode::TOO_MANY_REQUESTS,
            Some(&format!(
                "Too many attempts. Try again in {} seconds.",
                retry_after.max(1)
            )),
            Some(spent.into_iter().collect()),
        ),
        Err(ServiceError::CredentialFailure) => signin_page(
            &state,
            &slot,
            &headers,
            &request,
            StatusCode::UNAUTHORIZED,
            Some("The code was not accepted. Please sign in again."),
            Some(spent.into_iter().collect()),
        ),
        Err(e) => service_page(e).respond(&state, &slot),
    }
}

/// The signed-in person of a post (the session cookie), named in the request's audit entry.
async fn session(
    state: &AppState,
    slot: &AuditSlot,
    headers: &HeaderMap,
) -> Result<Authenticated, Refusal> {
    let expired = || {
        Refusal::Page(
            StatusCode::UNAUTHORIZED,
            "Your sign-in has expired",
            "Please start again from the app.".to_owned(),
        )
    };
    let token = cookie::get(headers, SESSION_COOKIE).ok_or_else(expired)?;
    session_of(state, slot, &token).await.map_err(|e| match e {
        ServiceError::CredentialFailure => expired(),
        other => service_page(other),
    })
}

async fn session_of(
    state: &AppState,
    slot: &AuditSlot,
    token: &str,
) -> Result<Authenticated, ServiceError> {
    if !token.starts_with(phivault_auth::TokenKind::Session.prefix()) {
        return Err(ServiceError::CredentialFailure);
    }
    let who = state.accounts.authenticate(token).await?;
    slot.note_principal(&who);
    if who.enrolment_only {
        return Err(ServiceError::CredentialFailure);
    }
    Ok(who)
}

/// After sign-in: the EHR launch's patient, the patient picker, or straight to consent.
async fn after_signin(
    state: &AppState,
    slot: &AuditSlot,
    headers: &HeaderMap,
    request: &AuthRequest,
    session_token: &str,
) -> Response {
    let who = match session_of(state, slot, session_token).await {
        Ok(who) => who,
        Err(e) => return service_page(e).respond(state, slot),
    };
    match context_patient(state, &who, request, None).await {
        Ok(Some(patient)) => {
            consent_page(state, slot, headers, request, Some(&patient), &who, None).await
        }
        Ok(None) if needs_picker(&who, request) => {
            picker_page(state, slot, headers, request, &who, None).await
        }
        Ok(None) => consent_page(state, slot, headers, request, None, &who, None).await,
        Err(refusal) => refusal.respond(state, slot),
    }
}

/// Whether the signed-in person is a patient (their own record is the context).
fn is_patient(who: &Authenticated) -> bool {
    who.principal.role() == phivault_policy::Role::Patient
}

/// A clinician choosing the patient of a standalone `launch/patient` request.
fn needs_picker(who: &Authenticated, request: &AuthRequest) -> bool {
    request.wants("launch/patient")
        && !request.wants("launch")
        && who.principal.role() != phivault_policy::Role::Patient
}

/// The patient in context, when it is known without a choice: an EHR launch's patient, or a
/// patient user's own record. `chosen` is a picker's choice, checked.
async fn context_patient(
    state: &AppState,
    who: &Authenticated,
    request: &AuthRequest,
    chosen: Option<&str>,
) -> Result<Option<Id>, Refusal> {
    let back = |error: &'static str, description: &str| Refusal::Redirect {
        redirect_uri: request.redirect_uri.clone(),
        state: Some(request.state.clone()),
        error,
        description: description.to_owned(),
    };
    if let Some(launch) = &request.launch
        && request.wants("launch")
    {
        return match state
            .accounts
            .resolve_launch(who.principal.id(), launch)
            .await
        {
            Ok(Some((patient, _))) => Ok(Some(patient)),
            Ok(None) => Err(back(
                "invalid_request",
                "the launch is unknown, expired or someone else's",
            )),
            Err(e) => Err(service_page(e)),
        };
    }
    if who.principal.role() == phivault_policy::Role::Patient {
        return Ok(who.principal.linked_patient().cloned());
    }
    match chosen {
        Some(id) => {
            let patient = Id::parse(id)
                .map_err(|_| page_refusal("Choose a patient", "That patient cannot be chosen."))?;
            match state.accounts.may_pick(who, &patient).await {
                Ok(true) => Ok(Some(patient)),
                Ok(false) => Err(page_refusal(
                    "Choose a patient",
                    "That patient is not in your care.",
                )),
                Err(e) => Err(service_page(e)),
            }
        }
        None => Ok(None),
    }
}

/// Most patients the picker lists (a clinician with more searches in the EHR instead).
const MAX_PICKER_PATIENTS: usize = 200;

/// The picker's choices: each patient's name and birth date, read as the clinician (decided,
/// released and audited like any read); a patient the clinician may not read now is left
/// out, and one whose record has no name shows its id.
async fn patient_choices(
    state: &AppState,
    slot: &AuditSlot,
    who: &Authenticated,
    patients: &[Id],
) -> Result<Vec<PatientChoice>, ServiceError> {
    let to_service = |e: crate::ApiError| ServiceError::Internal(e.to_string());
    let mut access = crate::fhir_routes::guard::Access::new(
        state.clone(),
        who.clone(),
        &HeaderMap::new(),
        slot.clone(),
    )
    .map_err(to_service)?;
    let Ok(rtype) = phivault_fhir::ResourceType::parse("Patient") else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for id in patients.iter().take(MAX_PICKER_PATIENTS) {
        let current = access.load(rtype, id).await.map_err(to_service)?;
        let proof = match access
            .authorize_current(phivault_policy::Action::Read, rtype, &current)
            .await
        {
            Ok(Some(proof)) => proof,
            Ok(None) | Err(crate::ApiError::Forbidden(_)) => continue,
            Err(e) => return Err(to_service(e)),
        };
        let crate::fhir_routes::guard::Current::Live(stored) = current else {
            continue;
        };
        let Ok(stored) = stored.release(&proof) else {
            continue;
        };
        out.push(PatientChoice {
            id: id.as_str().to_owned(),
            label: patient_label(&stored.body).unwrap_or_else(|| format!("Patient/{id}")),
        });
    }
    Ok(out)
}

/// "Ann Smith, born 1980-01-02" from a Patient's first name and birth date.
fn patient_label(body: &serde_json::Value) -> Option<String> {
    let name = body.get("name")?.as_array()?.first()?;
    let mut parts: Vec<&str> = name
        .get("given")
        .and_then(|g| g.as_array())
        .map(|g| g.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    if let Some(family) = name.get("family").and_then(|f| f.as_str()) {
        parts.push(family);
    }
    let text = name.get("text").and_then(|t| t.as_str());
    let shown = if parts.is_empty() {
        text?.to_owned()
    } else {
        parts.join(" ")
    };
    Some(match body.get("birthDate").and_then(|b| b.as_str()) {
        Some(born) => format!("{shown}, born {born}"),
        None => shown,
    })
}

async fn picker_page(
    state: &AppState,
    slot: &AuditSlot,
    headers: &HeaderMap,
    request: &AuthRequest,
    who: &Authenticated,
    error: Option<&str>,
) -> Response {
    let (csrf, cookies) = match csrf_token(headers) {
        Ok(t) => t,
        Err(refusal) => return refusal.respond(state, slot),
    };
    let patients = match state.accounts.care_patients(who).await {
        Ok(p) => p,
        Err(e) => return service_page(e).respond(state, slot),
    };
    let choices = match patient_choices(state, slot, who, &patients).await {
        Ok(c) => c,
        Err(e) => return service_page(e).respond(state, slot),
    };
    let view = PickerView {
        client_name: Some(&request.client.name),
        patients: &choices,
        csrf: &csrf,
        request: &request.raw,
        error,
    };
    with_cookies(state.pages.respond(StatusCode::OK, &view, &[]), &cookies)
}

/// Identity scopes shown as one choice: `openid` stands for `fhirUser` and `profile` too.
const IDENTITY_COMPANIONS: [&str; 2] = ["fhirUser", "profile"];

/// The consent page's list: one line per scope asked for, the identity scopes as one line,
/// and `patient/` scopes worded for a clinician ("this patient's") when the reader is not
/// the patient.
fn consent_items(scope: &str, reader_is_patient: bool) -> Vec<ScopeItem> {
    let openid = has_scope(scope, "openid");
    scope
        .split_ascii_whitespace()
        .filter(|s| !(openid && IDENTITY_COMPANIONS.contains(s)))
        .map(|s| {
            let mut item = ScopeItem::new(s, true);
            if !reader_is_patient && s.starts_with("patient/") {
                item.description = item
                    .description
                    .replace("of your records", "of this patient's records")
                    .replace(" your ", " this patient's ");
            }
            item
        })
        .collect()
}

/// The scopes approved on the consent page: the ticked ones the app asked for, with the
/// identity companions of a ticked `openid`.
fn approved_scopes<'a>(
    request: &'a AuthRequest,
    ticked: impl Iterator<Item = &'a str>,
) -> Vec<&'a str> {
    let mut approved: std::collections::BTreeSet<&str> =
        ticked.filter(|s| request.wants(s)).collect();
    if approved.contains("openid") {
        approved.extend(
            request
                .scope
                .split_ascii_whitespace()
                .filter(|s| IDENTITY_COMPANIONS.contains(s)),
        );
    }
    approved.into_iter().collect()
}

async fn consent_page(
    state: &AppState,
    slot: &AuditSlot,
    headers: &HeaderMap,
    request: &AuthRequest,
    patient: Option<&Id>,
    who: &Authenticated,
    error: Option<&str>,
) -> Response {
    let reader_is_patient = is_patient(who);
    let (csrf, cookies) = match csrf_token(headers) {
        Ok(t) => t,
        Err(refusal) => return refusal.respond(state, slot),
    };
    let items = consent_items(&request.scope, reader_is_patient);
    let redirect_origin = origin(&request.redirect_uri).unwrap_or_default();
    let patient_id = patient.map(|p| p.as_str().to_owned());
    // The patient in context, named as the picker names them (read as the signed-in
    // person, audited); their id when the record cannot be read.
    let patient_label = match patient {
        Some(p) => Some(
            match patient_choices(state, slot, who, std::slice::from_ref(p)).await {
                Ok(mut choices) if !choices.is_empty() => choices.remove(0).label,
                Ok(_) => format!("Patient/{p}"),
                Err(e) => return service_page(e).respond(state, slot),
            },
        ),
        None => None,
    };
    let view = ConsentView {
        client_name: &request.client.name,
        scopes: &items,
        redirect_origin: &redirect_origin,
        csrf: &csrf,
        request: &request.raw,
        patient: patient_id.as_deref(),
        patient_label: patient_label.as_deref(),
        error,
    };
    // The approval's redirect to the app follows the form post: the app's origin must be
    // a form target, or the browser stops the redirect.
    with_cookies(
        state
            .pages
            .respond(StatusCode::OK, &view, &[request.redirect_uri.as_str()]),
        &cookies,
    )
}

/// `POST /oauth/authorize/patient`: a clinician's choice of patient.
async fn pick_patient(
    State(state): State<AppState>,
    slot: AuditSlot,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (form, request) = match posted(&state, &headers, body).await {
        Ok(p) => p,
        Err(refusal) => return refusal.respond(&state, &slot),
    };
    let who = match session(&state, &slot, &headers).await {
        Ok(w) => w,
        Err(refusal) => return refusal.respond(&state, &slot),
    };
    let Some(chosen) = form.one("patient") else {
        return picker_page(
            &state,
            &slot,
            &headers,
            &request,
            &who,
            Some("Choose a patient."),
        )
        .await;
    };
    match context_patient(&state, &who, &request, Some(chosen)).await {
        Ok(Some(patient)) => {
            slot.note_patient(&patient);
            consent_page(
                &state,
                &slot,
                &headers,
                &request,
                Some(&patient),
                &who,
                None,
            )
            .await
        }
        Ok(None) => {
            picker_page(
                &state,
                &slot,
                &headers,
                &request,
                &who,
                Some("Choose a patient."),
            )
            .await
        }
        Err(refusal) => refusal.respond(&state, &slot),
    }
}

/// `POST /oauth/authorize/consent`: the person's decision; an approval redirects to the app
/// with a code for the scopes they ticked (within what the app asked for).
async fn consent(
    State(state): State<AppState>,
    slot: AuditSlot,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (form, request) = match posted(&state, &headers, body).await {
        Ok(p) => p,
        Err(refusal) => return refusal.respond(&state, &slot),
    };
    let who = match session(&state, &slot, &headers).await {
        Ok(w) => w,
        Err(refusal) => return refusal.respond(&state, &slot),
    };
    slot.note_action_detail(&format!("client {}", request.client.client_id));
    let deny = Refusal::Redirect {
        redirect_uri: request.redirect_uri.clone(),
        state: Some(request.state.clone()),
        error: "access_denied",
        description: "the person did not authorize the app".to_owned(),
    };
    if form.one("decision") != Some("approve") {
        return deny.respond(&state, &slot);
    }
    // Only scopes the app asked for count, whatever the form says.
    let approved = approved_scopes(&request, form.all("scope"));
    let has_data = approved
        .iter()
        .any(|s| s.contains('/') && !s.starts_with("launch"));
    if !has_data && !approved.contains(&"openid") {
        return deny.respond(&state, &slot);
    }
    let patient = match context_patient(&state, &who, &request, form.one("patient")).await {
        Ok(p) => p,
        Err(refusal) => return refusal.respond(&state, &slot),
    };
    if request.wants("launch/patient") && patient.is_none() {
        return picker_page(
            &state,
            &slot,
            &headers,
            &request,
            &who,
            Some("Choose a patient first."),
        )
        .await;
    }
    if let Some(p) = &patient {
        slot.note_patient(p);
    }
    let encounter = match (&request.launch, request.wants("launch")) {
        (Some(launch), true) => match state
            .accounts
            .resolve_launch(who.principal.id(), launch)
            .await
        {
            Ok(Some((_, encounter))) => encounter,
            Ok(None) => None,
            Err(e) => return service_page(e).respond(&state, &slot),
        },
        _ => None,
    };
    let code = state
        .accounts
        .issue_code(&CodeRequest {
            client_id: request.client.client_id.clone(),
            user_id: who.principal.id().to_owned(),
            redirect_uri: request.redirect_uri.clone(),
            scopes: approved.join(" "),
            code_challenge: request.code_challenge.clone(),
            launch_patient: patient,
            launch_encounter: encounter,
            nonce: request.nonce.clone(),
        })
        .await;
    match code {
        Ok(code) => {
            slot.note_action_detail(&format!("client {} approved", request.client.client_id));
            redirect(
                &request.redirect_uri,
                &[
                    ("code", code.expose().to_owned()),
                    ("state", request.state.clone()),
                ],
            )
        }
        Err(e) => service_page(e).respond(&state, &slot),
    }
}
