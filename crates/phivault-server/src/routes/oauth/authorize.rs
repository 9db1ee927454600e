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
    Accounts, Authenticated, CodeRequest, LoginOutcome, LoginRequest, LoginStep, OAuthClient,
    Password, ServiceError, has_scope,
};
use phivault_fhir::Id;
use zeroize::Zeroizing;

use crate::AppState;
use crate::edge::AuditSlot;
use crate::fhir_routes::parse_pairs;
use crate::web::session::SESSION_COOKIE;
use crate::web::{
    ConsentView, ErrorView, Form, PatientChoice, PickerView, ScopeItem, SigninView, TotpView,
    cookie, csrf, form, origin,
};

mod pages;

use pages::{approved_scopes, consent_page, picker_page};

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
        action: "/oauth/authorize/signin",
        carry: "request",
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
    let step = async {
        let (form, request) = posted(&state, &headers, body).await?;
        let address = address(&state, connect, &headers)?;
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
        let outcome = match login {
            Ok(LoginStep::Done(outcome)) => Ok(outcome),
            Ok(LoginStep::SecondFactor(ticket)) => {
                let (csrf, mut cookies) = csrf_token(&headers)?;
                cookies.push(set_cookie(MFA_COOKIE, ticket.expose(), 300)?);
                let view = TotpView {
                    client_name: Some(&request.client.name),
                    action: "/oauth/authorize/totp",
                    carry: "request",
                    csrf: &csrf,
                    request: &request.raw,
                    error: None,
                };
                let page = state.pages.respond(StatusCode::OK, &view, &[]);
                return Ok(with_cookies(page, &cookies));
            }
            Err(e) => Err(e),
        };
        let wrong = "The username or password is not right.";
        signed_in(
            &state,
            &slot,
            &headers,
            &request,
            outcome,
            Vec::new(),
            wrong,
        )
        .await
    };
    step.await
        .unwrap_or_else(|refusal| refusal.respond(&state, &slot))
}

/// `POST /oauth/authorize/totp`: the second factor (a TOTP code, or a recovery code).
async fn totp(
    State(state): State<AppState>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    slot: AuditSlot,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let step = async {
        let (form, request) = posted(&state, &headers, body).await?;
        let address = address(&state, connect, &headers)?;
        // The ticket is spent by this attempt, whatever its result.
        let spent: Vec<HeaderValue> = cookie::clear(MFA_COOKIE).ok().into_iter().collect();
        let Some(ticket) = cookie::get(&headers, MFA_COOKIE) else {
            let expired = Some("Your sign-in expired. Please sign in again.");
            return Ok(signin_page(
                &state,
                &slot,
                &headers,
                &request,
                StatusCode::UNAUTHORIZED,
                expired,
                Some(spent),
            ));
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
        let outcome = state
            .accounts
            .login_second_factor(&ticket, totp_code, recovery, address)
            .await;
        let wrong = "The code was not accepted. Please sign in again.";
        signed_in(&state, &slot, &headers, &request, outcome, spent, wrong).await
    };
    step.await
        .unwrap_or_else(|refusal| refusal.respond(&state, &slot))
}

/// A `__Host-` cookie living `secs` seconds.
fn set_cookie(name: &str, value: &str, secs: u64) -> Result<HeaderValue, Refusal> {
    cookie::set(name, value, Duration::from_secs(secs))
        .map_err(|_| service_page(ServiceError::Internal("cookie".to_owned())))
}

/// The end of a sign-in step: the session cookie and the next page, or the sign-in page again
/// saying why (`wrong` for a refused credential), with `cookies` either way.
async fn signed_in(
    state: &AppState,
    slot: &AuditSlot,
    headers: &HeaderMap,
    request: &AuthRequest,
    outcome: Result<LoginOutcome, ServiceError>,
    mut cookies: Vec<HeaderValue>,
    wrong: &str,
) -> Result<Response, Refusal> {
    let again = |status, error: &str, cookies| {
        Ok(signin_page(
            state,
            slot,
            headers,
            request,
            status,
            Some(error),
            Some(cookies),
        ))
    };
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(ServiceError::Throttled { retry_after }) => {
            let wait = format!(
                "Too many attempts. Try again in {} seconds.",
                retry_after.max(1)
            );
            return again(StatusCode::TOO_MANY_REQUESTS, &wait, cookies);
        }
        Err(ServiceError::CredentialFailure) => {
            return again(StatusCode::UNAUTHORIZED, wrong, cookies);
        }
        Err(e) => return Err(service_page(e)),
    };
    if outcome.enrolment_only {
        return Err(Refusal::Page(
            StatusCode::FORBIDDEN,
            "Set up your authenticator first",
            "Your account needs an authenticator app (a second factor) before it can \
             authorize apps. Set it up, then start again from the app."
                .to_owned(),
        ));
    }
    let token = outcome.token.expose();
    cookies.push(set_cookie(SESSION_COOKIE, token, 8 * 3600)?);
    let response = after_signin(state, slot, headers, request, token).await;
    Ok(with_cookies(response, &cookies))
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

/// `POST /oauth/authorize/patient`: a clinician's choice of patient.
async fn pick_patient(
    State(state): State<AppState>,
    slot: AuditSlot,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let step = async {
        let (form, request) = posted(&state, &headers, body).await?;
        let who = session(&state, &slot, &headers).await?;
        let chosen = form.one("patient");
        let patient = match chosen {
            Some(id) => context_patient(&state, &who, &request, Some(id)).await?,
            None => None,
        };
        let Some(patient) = patient else {
            let again = Some("Choose a patient.");
            return Ok(picker_page(&state, &slot, &headers, &request, &who, again).await);
        };
        slot.note_patient(&patient);
        Ok(consent_page(
            &state,
            &slot,
            &headers,
            &request,
            Some(&patient),
            &who,
            None,
        )
        .await)
    };
    step.await
        .unwrap_or_else(|refusal: Refusal| refusal.respond(&state, &slot))
}

/// `POST /oauth/authorize/consent`: the person's decision; an approval redirects to the app
/// with a code for the scopes they ticked (within what the app asked for).
async fn consent(
    State(state): State<AppState>,
    slot: AuditSlot,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let step = async {
        let (form, request) = posted(&state, &headers, body).await?;
        let who = session(&state, &slot, &headers).await?;
        slot.note_action_detail(&format!("client {}", request.client.client_id));
        let deny = Refusal::Redirect {
            redirect_uri: request.redirect_uri.clone(),
            state: Some(request.state.clone()),
            error: "access_denied",
            description: "the person did not authorize the app".to_owned(),
        };
        if form.one("decision") != Some("approve") {
            return Err(deny);
        }
        // Only scopes the app asked for count, whatever the form says.
        let approved = approved_scopes(&request, form.all("scope"));
        let has_data = approved
            .iter()
            .any(|s| s.contains('/') && !s.starts_with("launch"));
        if !has_data && !approved.contains(&"openid") {
            return Err(deny);
        }
        let patient = context_patient(&state, &who, &request, form.one("patient")).await?;
        if request.wants("launch/patient") && patient.is_none() {
            let first = Some("Choose a patient first.");
            return Ok(picker_page(&state, &slot, &headers, &request, &who, first).await);
        }
        if let Some(p) = &patient {
            slot.note_patient(p);
        }
        let encounter = match (&request.launch, request.wants("launch")) {
            (Some(launch), true) => state
                .accounts
                .resolve_launch(who.principal.id(), launch)
                .await
                .map_err(service_page)?
                .and_then(|(_, encounter)| encounter),
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
            .await
            .map_err(service_page)?;
        slot.note_action_detail(&format!("client {} approved", request.client.client_id));
        Ok(redirect(
            &request.redirect_uri,
            &[
                ("code", code.expose().to_owned()),
                ("state", request.state.clone()),
            ],
        ))
    };
    step.await
        .unwrap_or_else(|refusal: Refusal| refusal.respond(&state, &slot))
}
