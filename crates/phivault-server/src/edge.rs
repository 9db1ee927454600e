//! Middleware every request passes: request id, security headers and the request log line
//! (outermost), authentication, and the panic guard.
//!
//! Authentication: an `Authorization: Bearer` token (a session or an OAuth2 access token) is
//! checked by the accounts service; the [`Authenticated`] it speaks for goes into the request's
//! extensions. Every failure is the same 401 "authentication failed". A few routes need no
//! token ([`is_public`]); a session that must enrol TOTP first reaches only `/auth/totp/*` and
//! `/auth/logout`.
//!
//! The audit trail ([`audit_trail`]): every request gets an [`AuditSlot`] in its extensions
//! before anything else runs. The parts that learn something about the request write it
//! there: [`authenticate`] the principal, the FHIR guard (`fhir_routes::guard::Access`) the
//! effective purpose of use, break-the-glass, every patient it decided on (allowed or
//! denied) and the sensitivity labels of the resources it decided on or returned
//! ([`AuditSlot::note_labels`]), and the audit sink of a write (`crate::audit_sink`) that the
//! request's entry was committed with the write. A route that knows the patient its request
//! is about without going through the guard either notes it in the slot
//! ([`AuditSlot::note_patient`], from the request's extensions) or puts an [`AuditPatient`] in
//! its response's extensions; the latter wins.

use std::any::Any;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use axum::extract::{ConnectInfo, FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use phivault_audit::{ActorKind, AuditEntry, Outcome};
use phivault_auth::{Authenticated, ServiceError};
use phivault_fhir::{Id, IssueCode, OperationOutcome, ResourceType};
use phivault_policy::{Label, PrincipalKind, Purpose};
use tracing::Instrument;
use zeroize::Zeroizing;

use crate::middleware::client_address::client_ip;
use crate::middleware::refusals::Refusal;
use crate::{ApiError, AppState};

/// The principal id of a request, put in the response's extensions for the log line (never
/// the token).
#[derive(Debug, Clone)]
struct PrincipalId(String);

/// The request id given by [`request_edge`], in the request's extensions.
#[derive(Debug, Clone)]
pub(crate) struct RequestId(pub(crate) String);

/// The patient a request was about, put in the response's extensions by a route that knows it
/// without the guard (the guard notes its patients in the [`AuditSlot`]). When present, it is
/// the patient of the request's audit entry, whatever the slot holds.
#[derive(Debug, Clone)]
#[allow(dead_code)] // Constructed by routes outside the FHIR guard (admin and audit routes).
pub(crate) struct AuditPatient(pub(crate) Id);

/// Who made a request, as the audit trail names them.
#[derive(Debug, Clone)]
struct Actor {
    id: String,
    kind: ActorKind,
    role: Option<String>,
    /// The role's default purpose of use (when the request names none).
    default_purpose: Purpose,
    /// The app a person acts through (their access token's client).
    via_client: Option<String>,
}

/// What the parts of a request tell the audit trail while it runs (ids only).
#[derive(Debug, Default)]
struct AuditNotes {
    /// The authenticated principal.
    actor: Option<Actor>,
    /// The version of the Practitioner the principal's account is linked to, as
    /// `Practitioner/{id}/_history/{version}`, read when the request was authenticated.
    actor_ref: Option<String>,
    /// The effective purpose of use, as the guard decided with it.
    purpose: Option<Purpose>,
    /// A decision relied on break-the-glass.
    break_glass: bool,
    /// Every compartment patient a decision was made on (allowed or denied), and every
    /// patient whose data the response returns (the hits of a search).
    patients: BTreeSet<Id>,
    /// The sensitivity labels (canonical codes) of every resource an allowed decision was
    /// made on, and of every resource the response returns.
    labels: BTreeSet<&'static str>,
    /// The labels of resources a decision refused: in the entry only when the request's
    /// outcome is not allowed (a search or `$everything` leaves such a resource out of a 200,
    /// which then did not disclose it).
    denied_labels: BTreeSet<&'static str>,
    /// The request's own entry was committed with its write: its seq.
    entry_written: Option<u64>,
    /// An audit sink failed, so its write was rolled back.
    sink_failed: bool,
    /// Refused for want of a valid bearer token (none, malformed, unknown, expired,
    /// revoked): the request names no account.
    unauthenticated: bool,
    /// A research export's de-identification configuration (SHA-256, hex).
    configuration: Option<String>,
    /// What the route did, when its template alone does not say (the OAuth2 grant type and
    /// its result: `authorization_code`, `refresh_token reuse`): appended to the action.
    action_detail: Option<String>,
    /// The RFC 6749 error code the route refused with, when it answered the refusal with a
    /// redirect (an authorization request sent back to the app): the entry's outcome is then
    /// not "allowed" whatever the status.
    refused: Option<&'static str>,
}

/// The fixed facts of a request, known before it runs.
#[derive(Debug)]
struct RequestFacts {
    /// `METHOD /route/template`.
    action: String,
    resource_type: Option<String>,
    resource_id: Option<String>,
    /// `X-Purpose-Of-Use` when it parses (the guard's purpose wins).
    purpose_header: Option<Purpose>,
    source_address: Option<String>,
    request_id: String,
}

/// The request-scoped audit context: put in the request's extensions by [`audit_trail`],
/// filled in by the parts the request passes, read when its entry is written (by the audit
/// sink of a write, inside the write's transaction, or by [`audit_trail`] afterwards).
#[derive(Debug, Clone)]
pub(crate) struct AuditSlot {
    facts: Arc<RequestFacts>,
    notes: Arc<Mutex<AuditNotes>>,
}

impl AuditSlot {
    fn notes(&self) -> MutexGuard<'_, AuditNotes> {
        // A panic while holding the lock (none is possible: only assignments happen under
        // it) leaves the notes as they were; they stay usable.
        self.notes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The slot of a request (present on every request that passed [`audit_trail`]).
    pub(crate) fn of(extensions: &axum::http::Extensions) -> Option<AuditSlot> {
        extensions.get::<AuditSlot>().cloned()
    }

    /// The authenticated principal (set by [`authenticate`], or by a route that
    /// authenticates its caller itself: a sign-in cookie, OAuth2 client credentials).
    pub(crate) fn note_principal(&self, who: &Authenticated) {
        let actor = Actor {
            id: who.principal.id().to_owned(),
            kind: match who.principal.kind() {
                PrincipalKind::User => ActorKind::User,
                PrincipalKind::Client => ActorKind::Client,
            },
            role: Some(who.principal.role().as_str().to_owned()),
            default_purpose: who.principal.role().default_purpose(),
            via_client: who
                .client_id
                .clone()
                .filter(|_| who.principal.kind() == PrincipalKind::User),
        };
        self.notes().actor = Some(actor);
    }

    /// An OAuth2 client that authenticated at the token, revocation or introspection
    /// endpoint: the actor of the request's entry.
    pub(crate) fn note_client(&self, client_id: &str) {
        self.notes().actor = Some(Actor {
            id: client_id.to_owned(),
            kind: ActorKind::Client,
            role: Some(phivault_policy::Role::App.as_str().to_owned()),
            default_purpose: phivault_policy::Role::App.default_purpose(),
            via_client: None,
        });
    }

    /// What the route did beyond its template (ids and fixed words only, never a token),
    /// appended to the action of the request's entry: `POST /oauth/token refresh_token reuse`.
    pub(crate) fn note_action_detail(&self, detail: &str) {
        self.notes().action_detail = Some(detail.to_owned());
    }

    /// The route refused with this error code: appended to the action's detail
    /// (`POST /oauth/token refresh_token refused invalid_grant`).
    pub(crate) fn note_action_refused(&self, code: &'static str) {
        let mut notes = self.notes();
        notes.refused = Some(code);
        let detail = match notes.action_detail.take() {
            Some(d) => format!("{d} refused {code}"),
            None => format!("refused {code}"),
        };
        notes.action_detail = Some(detail);
    }

    /// Who the actor is at this time: their linked Practitioner's current version.
    fn note_actor_ref(&self, reference: String) {
        self.notes().actor_ref = Some(reference);
    }

    /// The effective purpose of use.
    pub(crate) fn note_purpose(&self, purpose: Purpose) {
        self.notes().purpose = Some(purpose);
    }

    /// The request is a research export with this de-identification configuration.
    pub(crate) fn note_configuration(&self, hash: &str) {
        self.notes().configuration = Some(hash.to_owned());
    }

    /// A decision relied on break-the-glass.
    pub(crate) fn note_break_glass(&self) {
        self.notes().break_glass = true;
    }

    /// A decision was made on a resource of `patient`'s compartment.
    pub(crate) fn note_patient(&self, patient: &Id) {
        self.notes().patients.insert(patient.clone());
    }

    /// An allowed decision was made on a resource carrying `labels`, or the response returns
    /// one (a search's hits): its data classes are in the request's entry.
    pub(crate) fn note_labels(&self, labels: &[Label]) {
        if !labels.is_empty() {
            self.notes().labels.extend(labels.iter().map(Label::as_str));
        }
    }

    /// A decision refused a resource carrying `labels`: in the request's entry when it is a
    /// denial (or an error), not when the request was served without that resource.
    pub(crate) fn note_denied_labels(&self, labels: &[Label]) {
        if !labels.is_empty() {
            self.notes()
                .denied_labels
                .extend(labels.iter().map(Label::as_str));
        }
    }

    /// The request's own entry was committed with its write, as entry `seq`.
    pub(crate) fn note_entry_written(&self, seq: u64) {
        self.notes().entry_written = Some(seq);
    }

    /// An audit sink failed (its write was rolled back).
    pub(crate) fn note_sink_failed(&self) {
        self.notes().sink_failed = true;
    }

    /// The request was refused for want of a valid bearer token.
    fn note_unauthenticated(&self) {
        self.notes().unauthenticated = true;
    }

    /// The request's `METHOD /route/template`.
    pub(crate) fn action(&self) -> &str {
        &self.facts.action
    }

    /// An entry of this request: who, purpose, break-the-glass, address, request id and
    /// sensitivity labels from the slot (the labels of refused resources too when `outcome`
    /// is not allowed); the rest as given.
    pub(crate) fn entry(
        &self,
        action: String,
        resource_type: Option<String>,
        resource_id: Option<String>,
        patient_id: Option<String>,
        outcome: Outcome,
    ) -> AuditEntry {
        let notes = self.notes();
        let (actor_id, actor_kind, role) = match &notes.actor {
            Some(a) => (a.id.clone(), a.kind, a.role.clone()),
            None => ("anonymous".to_owned(), ActorKind::Anonymous, None),
        };
        let purpose = notes
            .purpose
            .or(self.facts.purpose_header)
            .or_else(|| notes.actor.as_ref().map(|a| a.default_purpose))
            .map(|p| p.as_str().to_owned());
        let action = match &notes.action_detail {
            Some(detail) if action == self.facts.action => format!("{action} {detail}"),
            _ => action,
        };
        let mut labels: BTreeSet<&str> = notes.labels.clone();
        if outcome != Outcome::Allowed {
            labels.extend(notes.denied_labels.iter().copied());
        }
        AuditEntry {
            seq: 0,
            time: now_millis(),
            actor_id,
            actor_kind,
            role,
            purpose,
            break_glass: notes.break_glass,
            action,
            resource_type,
            resource_id,
            patient_id,
            outcome,
            source_address: self.facts.source_address.clone(),
            request_id: self.facts.request_id.clone(),
            actor_ref: notes.actor_ref.clone(),
            patients: Vec::new(),
            refusals: None,
            configuration: notes.configuration.clone(),
            // Ascending and without repeats: a set's order.
            labels: labels.into_iter().map(str::to_owned).collect(),
            alert: None,
            via_client: notes.actor.as_ref().and_then(|a| a.via_client.clone()),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for AuditSlot {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        // Every routed request passed `audit_trail`; a router built without it cannot audit
        // the request's changes, so they are refused.
        AuditSlot::of(&parts.extensions)
            .ok_or_else(|| ApiError::internal(&"the request has no audit slot"))
    }
}

/// `X-Request-Id`.
pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Headers sent on every response. A handler may set its own [`KEPT_IF_SET`] ones.
const SECURITY_HEADERS: &[(HeaderName, &str)] = &[
    (header::CACHE_CONTROL, "no-store"),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::X_FRAME_OPTIONS, "DENY"),
    (
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; frame-ancestors 'none'",
    ),
    (header::REFERRER_POLICY, "no-referrer"),
    (header::STRICT_TRANSPORT_SECURITY, "max-age=31536000"),
];

/// Security headers a handler may set for itself, kept as it set them: a web page's
/// `Content-Security-Policy` lets it load the stylesheet and post its forms (still with
/// `frame-ancestors 'none'`, see `crate::web::page`), and the stylesheet may be cached. Every
/// other response, and every other header, gets the strict defaults above.
const KEPT_IF_SET: [HeaderName; 2] = [header::CACHE_CONTROL, header::CONTENT_SECURITY_POLICY];

/// Gives the request an id, runs it inside a span carrying that id, adds the security headers
/// and `X-Request-Id` to the response, and logs one line: method, route template, status,
/// latency, request id and principal. Never the raw path or query (they can hold PHI) and
/// never a body.
pub(crate) async fn request_edge(mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let request_id = uuid::Uuid::new_v4().to_string();
    req.extensions_mut().insert(RequestId(request_id.clone()));
    let method = req.method().clone();
    let probe = is_probe(&method, req.uri().path());
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "(no route)".to_owned());
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        method = %method,
        route = %route,
    );
    let mut response = next.run(req).instrument(span.clone()).await;

    let headers = response.headers_mut();
    for (name, value) in SECURITY_HEADERS {
        if KEPT_IF_SET.contains(name) && headers.contains_key(name) {
            continue;
        }
        headers.insert(name.clone(), HeaderValue::from_static(value));
    }
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        headers.insert(X_REQUEST_ID.clone(), value);
    }

    let principal = response
        .extensions()
        .get::<PrincipalId>()
        .map(|p| p.0.clone())
        .unwrap_or_else(|| "-".to_owned());
    let status = response.status().as_u16();
    let latency_ms = (started.elapsed().as_secs_f64() * 10_000.0).round() / 10.0;
    span.in_scope(|| {
        // A passing probe, every few seconds from each load balancer, only at debug level; a
        // failing one is logged like any request.
        if probe && status == 200 {
            tracing::debug!(status, latency_ms, principal = %principal, "request");
        } else {
            tracing::info!(
                status,
                latency_ms,
                principal = %principal,
                "request"
            );
        }
    });
    response
}

/// A liveness or readiness probe (`crate::PROBE_ROUTES`, and `HEAD` of them).
fn is_probe(method: &Method, path: &str) -> bool {
    (*method == Method::GET || *method == Method::HEAD)
        && crate::PROBE_ROUTES.iter().any(|(_, p)| *p == path)
}

/// The token of an `Authorization: Bearer <token>` header.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The routes that need no token: login and the OAuth2 endpoints (the client authenticates
/// itself there), SMART discovery and the CapabilityStatement (FHIR servers publish it; it
/// states the security), and the health probes (a load balancer has no token).
fn is_public(method: &Method, path: &str) -> bool {
    if is_probe(method, path) {
        return true;
    }
    // The web pages authenticate the person by the session cookie themselves (and every form
    // by its CSRF token); the JSON admin API under `/admin/` stays bearer-only.
    let page = path == "/admin"
        || path.starts_with("/admin/console/")
        || path == "/portal"
        || path.starts_with("/portal/")
        || path.starts_with("/account/")
        || matches!(path, "/signin" | "/signin/totp" | "/signout");
    if page && matches!(*method, Method::GET | Method::HEAD | Method::POST) {
        return true;
    }
    match *method {
        // The sign-in pages authenticate people themselves (cookie, password, code); the
        // OAuth2 endpoints authenticate the client.
        Method::POST => matches!(
            path,
            "/auth/login"
                | "/oauth/token"
                | "/oauth/revoke"
                | "/oauth/introspect"
                | "/oauth/authorize/signin"
                | "/oauth/authorize/totp"
                | "/oauth/authorize/patient"
                | "/oauth/authorize/consent"
        ),
        Method::GET | Method::HEAD => matches!(
            path,
            "/fhir/metadata"
                | "/.well-known/smart-configuration"
                | "/fhir/.well-known/smart-configuration"
                | "/.well-known/openid-configuration"
                | "/fhir/.well-known/openid-configuration"
                | "/oauth/authorize"
                | "/oauth/jwks"
                | "/static/phivault.css"
        ),
        _ => false,
    }
}

/// Whether a session that must enrol TOTP first may call `path`.
fn enrolment_allows(path: &str) -> bool {
    path.starts_with("/auth/totp/") || path == "/auth/logout"
}

/// Refuses requests without a valid bearer token (401), except on the public routes; puts the
/// [`Authenticated`] principal in the request's extensions for handlers, and its id in the
/// response's for the log line.
pub(crate) async fn authenticate(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    if is_public(req.method(), req.uri().path()) {
        return next.run(req).await;
    }
    let slot = AuditSlot::of(req.extensions());
    let refuse = |error: ApiError| {
        if let Some(slot) = &slot {
            slot.note_unauthenticated();
        }
        error.into_response()
    };
    let Some(token) = bearer(req.headers()).map(|t| Zeroizing::new(t.to_owned())) else {
        let presented = req.headers().contains_key(header::AUTHORIZATION);
        tracing::info!(token_presented = presented, "authentication failed");
        return refuse(if presented {
            ApiError::InvalidToken
        } else {
            ApiError::Unauthorized
        });
    };
    // Every generation at once, before the token's rows and any consent are read: the
    // token cache checks the auth value, the request's consent decisions use the consent
    // value (`fhir_routes::guard`), one statement for both.
    let generations = match state.store.generations().await {
        Ok(g) => g,
        Err(e) => return ApiError::Store(e).into_response(),
    };
    req.extensions_mut()
        .insert(ConsentGeneration(generations.consent));
    let who = match state
        .accounts
        .authenticate_under(&token, generations.auth)
        .await
    {
        Ok(who) => who,
        Err(ServiceError::Store(e)) => return ApiError::Store(e).into_response(),
        Err(e @ ServiceError::Throttled { .. }) => return ApiError::from(e).into_response(),
        Err(e @ ServiceError::Internal(_)) => return ApiError::internal(&e).into_response(),
        Err(e) => {
            // The kind only (expired, revoked, ...): never the token.
            tracing::info!(reason = %e, "authentication failed");
            return refuse(ApiError::InvalidToken);
        }
    };
    drop(token);
    let principal = PrincipalId(who.principal.id().to_owned());
    if let Some(slot) = slot {
        slot.note_principal(&who);
        // The access log names a staff member from the Practitioner version they were
        // linked to now, which their later edits of that Practitioner cannot change.
        if let Some(practitioner) = &who.practitioner
            && let Ok(rtype) = ResourceType::parse("Practitioner")
        {
            match state.store.current_version(rtype, practitioner).await {
                Ok(Some(version)) => {
                    slot.note_actor_ref(format!("Practitioner/{practitioner}/_history/{version}"));
                }
                Ok(None) => {}
                Err(e) => return ApiError::Store(e).into_response(),
            }
        }
    }
    if who.enrolment_only && !enrolment_allows(req.uri().path()) {
        let mut response =
            ApiError::Forbidden("TOTP enrolment required".to_owned()).into_response();
        response.extensions_mut().insert(principal);
        return response;
    }
    req.extensions_mut().insert(who);
    let mut response = next.run(req).await;
    response.extensions_mut().insert(principal);
    response
}

/// The consent generation read when the request was authenticated (see `authenticate`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConsentGeneration(pub(crate) Option<i64>);

/// The answer when the audit entry of a request cannot be stored: the request's own answer
/// (a read's body included) is discarded.
fn audit_unavailable() -> Response {
    crate::error::fhir_json(
        StatusCode::SERVICE_UNAVAILABLE,
        &OperationOutcome::error(
            IssueCode::Transient,
            "the audit trail is unavailable; the request was not served",
        )
        .to_json(),
    )
}

/// The outcome recorded for a response status.
fn outcome_of(status: StatusCode) -> Outcome {
    match status.as_u16() {
        200..=399 => Outcome::Allowed,
        401 | 403 | 429 => Outcome::Denied,
        _ => Outcome::Error,
    }
}

/// The resource type and id named by the path of a FHIR route whose template holds `{type}`
/// (and `{id}`); only values that parse as a FHIR type and id are kept.
fn resource_of(route: &str, path: &str) -> (Option<String>, Option<String>) {
    let last = || path.rsplit('/').next().unwrap_or_default();
    match route {
        "/fhir/AuditEvent/{id}" => {
            // AuditEvent ids are entry seqs.
            let id = last().parse::<u64>().ok().map(|seq| seq.to_string());
            return (Some("AuditEvent".to_owned()), id);
        }
        "/fhir/AuditEvent" => return (Some("AuditEvent".to_owned()), None),
        "/fhir/Patient/{id}/$access-log" | "/fhir/Patient/{id}/$erase" => {
            let id = path
                .split('/')
                .nth(3)
                .and_then(|i| Id::parse(i).ok())
                .map(|i| i.to_string());
            return (Some("Patient".to_owned()), id);
        }
        _ => {}
    }
    if !route.starts_with("/fhir/{type}") {
        return (None, None);
    }
    let mut segments = path.trim_start_matches('/').split('/').skip(1);
    let rtype = segments
        .next()
        .and_then(|t| ResourceType::parse(t).ok())
        .map(|t| t.to_string());
    let id = if route.starts_with("/fhir/{type}/{id}") {
        segments
            .next()
            .and_then(|i| Id::parse(i).ok())
            .map(|i| i.to_string())
    } else {
        None
    };
    (rtype, id)
}

/// Why `path` is not in canonical form (RFC 3986 section 6.2.2), if it is not: a
/// percent-encoded unreserved character (`%4F` for `O`; the routes would decode it, so the
/// audit entry, which is built from the path as sent, would not name the resource served), a
/// percent-encoded `$` (operations are matched on the raw path), or a `%` not followed by two
/// hex digits. Percent-encoding of other characters (a space, `/`, `%`, non-ASCII) is
/// legitimate and left alone: no FHIR type or id contains them, so the routes refuse them.
fn non_canonical_path(path: &str) -> Option<String> {
    let bytes = path.as_bytes();
    let mut i = 0;
    while let Some(offset) = bytes[i..].iter().position(|&b| b == b'%') {
        let at = i + offset;
        let hex = bytes
            .get(at + 1..at + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        let Some(decoded) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) else {
            return Some("malformed percent-encoding in the request path".to_owned());
        };
        if decoded.is_ascii_alphanumeric() || matches!(decoded, b'-' | b'.' | b'_' | b'~' | b'$') {
            return Some(format!(
                "the request path is not in canonical form: write '{}' instead of '%{}'",
                char::from(decoded),
                hex.unwrap_or_default()
            ));
        }
        i = at + 3;
    }
    None
}

/// Gives the request its [`AuditSlot`], runs it, and makes sure it has its audit entry
/// before the response leaves (except a refusal for want of a valid token that
/// [`crate::middleware::refusals`] counts for its address's summary entry): who (the principal, or `anonymous`), the method and route
/// template (never the raw URI: its query can hold PHI), the resource type and id of a FHIR
/// instance route, the patient when exactly one was decided on (allowed or denied; an
/// [`AuditPatient`] in the response's extensions wins), every other patient decided on or
/// whose data the response returns (the entry's `patients`), the sensitivity labels of what
/// was decided on or returned ([`AuditSlot::entry`]), the effective purpose of use,
/// break-the-glass, the outcome from the status, the client address (the peer, or what a
/// trusted proxy says it is) and the request id.
///
/// A single-resource write commits the request's entry in its own transaction (the audit sink
/// notes it in the slot): nothing more is appended then. Otherwise the entry is appended here,
/// and when it cannot be stored the response is replaced by a 503 (fail closed). A write whose
/// audit sink failed was rolled back: its failure is answered as the 503 of an unavailable
/// trail too.
pub(crate) async fn audit_trail(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    // The health probes get no entry: they read no PHI, change nothing and name no one, and
    // a load balancer calls them every few seconds on every node, which would bury the trail
    // (and, with the database down, make every probe a failed append). They get no slot
    // either, so a probe route that tried to note anything would fail loudly.
    if is_probe(req.method(), req.uri().path()) {
        return next.run(req).await;
    }
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let (resource_type, resource_id) = route
        .as_deref()
        .map(|r| resource_of(r, req.uri().path()))
        .unwrap_or((None, None));
    let purpose_header = req
        .headers()
        .get(&crate::fhir_routes::X_PURPOSE_OF_USE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| Purpose::parse(v).ok());
    // The client as the login limits see it: the peer, or what a trusted proxy says.
    let client = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| client_ip(c.0.ip(), req.headers(), &state.trusted_proxies));
    let source_address = client.map(|ip| ip.to_string());
    let request_id = req
        .extensions()
        .get::<RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_else(|| "-".to_owned());
    let slot = AuditSlot {
        facts: Arc::new(RequestFacts {
            action: format!("{method} {}", route.as_deref().unwrap_or("(no route)")),
            resource_type,
            resource_id,
            purpose_header,
            source_address,
            request_id,
        }),
        notes: Arc::new(Mutex::new(AuditNotes::default())),
    };
    req.extensions_mut().insert(slot.clone());

    // A path that is not in canonical form is refused before any route sees it: the routes
    // decode it, the audit entry is built from it as sent, and the two must name the same
    // resource.
    let response = match non_canonical_path(req.uri().path()) {
        Some(why) => ApiError::BadRequest(why).into_response(),
        None => next.run(req).await,
    };

    let (written, sink_failed, single_patient, concerned, unauthenticated) = {
        let notes = slot.notes();
        let single = match notes.patients.len() {
            1 => notes.patients.iter().next().map(Id::to_string),
            _ => None,
        };
        let concerned: Vec<String> = notes.patients.iter().map(Id::to_string).collect();
        (
            notes.entry_written,
            notes.sink_failed,
            single,
            concerned,
            notes.unauthenticated && notes.actor.is_none(),
        )
    };
    if written.is_some() {
        return response;
    }
    // A refusal that names no account: the first from its address in the window gets its
    // entry below; the others are counted for the window's summary entry.
    if unauthenticated
        && response.status() == StatusCode::UNAUTHORIZED
        && let Some(client) = client
        && state.refusals.observe(client, slot.action(), now_millis()) == Refusal::Counted
    {
        return response;
    }
    let patient_id = response
        .extensions()
        .get::<AuditPatient>()
        .map(|p| p.0.to_string())
        .or(single_patient);
    // A refusal answered with a redirect (back to an OAuth2 app) is no success.
    let outcome = match (outcome_of(response.status()), slot.notes().refused) {
        (Outcome::Allowed, Some("access_denied")) => Outcome::Denied,
        (Outcome::Allowed, Some(_)) => Outcome::Error,
        (outcome, _) => outcome,
    };
    let mut entry = slot.entry(
        slot.action().to_owned(),
        slot.facts.resource_type.clone(),
        slot.facts.resource_id.clone(),
        patient_id,
        outcome,
    );
    // Every other patient concerned is named in the entry too, so that each finds the
    // request in their access log (a search's hits, a Bundle's entries, `$everything`).
    entry.set_patients(concerned);
    entry.break_glass |= response
        .headers()
        .contains_key(&crate::fhir_routes::X_BREAK_GLASS);
    // A write refused because its audit entries could not be stored: the trail is the reason.
    let refused_by_sink = sink_failed
        && response.status().is_server_error()
        && response.status() != StatusCode::SERVICE_UNAVAILABLE;
    match state.audit.append(&entry).await {
        Ok(_) if refused_by_sink => audit_unavailable(),
        Ok(_) => response,
        Err(e) => {
            // The error names the store's failure, never the entry's content.
            tracing::error!(error = %e, "audit append failed; the response is withheld");
            if response.status().is_server_error() && !refused_by_sink {
                // Already a failure carrying no data (e.g. the database is down, which is
                // also why the entry could not be written): its message is the precise one.
                response
            } else {
                audit_unavailable()
            }
        }
    }
}

/// Now, in unix milliseconds.
fn now_millis() -> i64 {
    let t = time::OffsetDateTime::now_utc();
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// The authenticated principal of a request (handlers of authenticated routes only).
#[derive(Debug, Clone)]
pub(crate) struct Who(pub(crate) Authenticated);

impl<S: Send + Sync> FromRequestParts<S> for Who {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Authenticated>()
            .cloned()
            .map(Who)
            // Only a route wrongly listed as public gets here: refuse.
            .ok_or(ApiError::Unauthorized)
    }
}

/// The answer to a panicking handler: a 500 OperationOutcome with an opaque reference; the
/// panic message goes to the log under that reference.
pub(crate) fn panic_response(payload: Box<dyn Any + Send + 'static>) -> Response {
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(non-text panic payload)".to_owned());
    let detail = format!("handler panicked: {message}");
    ApiError::internal(&detail).into_response()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn resources_named_by_routes() {
        assert_eq!(
            resource_of("/fhir/{type}/{id}", "/fhir/Patient/abc"),
            (Some("Patient".to_owned()), Some("abc".to_owned()))
        );
        assert_eq!(
            resource_of("/fhir/{type}", "/fhir/Observation"),
            (Some("Observation".to_owned()), None)
        );
        assert_eq!(
            resource_of("/fhir/AuditEvent/{id}", "/fhir/AuditEvent/42"),
            (Some("AuditEvent".to_owned()), Some("42".to_owned()))
        );
        assert_eq!(
            resource_of("/fhir/AuditEvent/{id}", "/fhir/AuditEvent/x%20y"),
            (Some("AuditEvent".to_owned()), None)
        );
        assert_eq!(
            resource_of(
                "/fhir/Patient/{id}/$access-log",
                "/fhir/Patient/p-1/$access-log"
            ),
            (Some("Patient".to_owned()), Some("p-1".to_owned()))
        );
        assert_eq!(
            resource_of("/fhir/Patient/{id}/$erase", "/fhir/Patient/p-1/$erase"),
            (Some("Patient".to_owned()), Some("p-1".to_owned()))
        );
        assert_eq!(resource_of("/auth/login", "/auth/login"), (None, None));
    }

    #[test]
    fn non_canonical_paths_are_named() {
        for ok in [
            "/fhir/Observation/abc",
            "/fhir/Patient/p-1/$access-log",
            "/admin/users/a%20b/grants",
            "/fhir/Patient%2Fx",
            "/fhir/%C3%A9",
        ] {
            assert_eq!(non_canonical_path(ok), None, "{ok}");
        }
        for bad in [
            "/fhir/%4Fbservation/ID",
            "/fhir/%4fbservation/ID",
            "/fhir/Observation/%61bc",
            "/fhir/Patient/p%2D1",
            "/fhir/Patient/p1/%24access-log",
            "/fhir/Patient/p1%",
            "/fhir/Patient/p1%4",
            "/fhir/Patient/%zz",
        ] {
            assert!(non_canonical_path(bad).is_some(), "{bad}");
        }
        assert_eq!(
            non_canonical_path("/fhir/%4Fbservation/ID").unwrap(),
            "the request path is not in canonical form: write 'O' instead of '%4F'"
        );
    }

    #[test]
    fn bearer_tokens() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer  abc "),
        );
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(bearer(&h), None);
    }

    #[test]
    fn public_routes() {
        assert!(is_public(&Method::POST, "/auth/login"));
        assert!(is_public(&Method::POST, "/oauth/token"));
        assert!(is_public(&Method::POST, "/oauth/revoke"));
        assert!(is_public(&Method::GET, "/fhir/metadata"));
        assert!(is_public(&Method::GET, "/.well-known/smart-configuration"));
        assert!(!is_public(&Method::GET, "/auth/login"));
        assert!(!is_public(&Method::DELETE, "/fhir/metadata"));
        assert!(!is_public(&Method::GET, "/fhir/Patient"));
        assert!(!is_public(&Method::POST, "/auth/logout"));
        assert!(!is_public(&Method::GET, "/fhir/metadata/x"));
        assert!(is_public(&Method::GET, "/healthz"));
        assert!(is_public(&Method::HEAD, "/readyz"));
        assert!(!is_public(&Method::POST, "/readyz"));
        assert!(!is_public(&Method::GET, "/readyz/x"));
        assert!(enrolment_allows("/auth/totp/enroll"));
        assert!(enrolment_allows("/auth/logout"));
        assert!(!enrolment_allows("/auth/totp"));
        assert!(!enrolment_allows("/fhir/Patient"));
    }

    #[tokio::test]
    async fn a_panic_answers_an_opaque_500() {
        let r = panic_response(Box::new("index out of bounds: SECRET".to_owned()));
        assert_eq!(r.status(), axum::http::StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(r.headers()[header::CONTENT_TYPE], crate::error::FHIR_JSON);
        let body = axum::body::to_bytes(r.into_body(), usize::MAX)
            .await
            .unwrap();
        let text = String::from_utf8(body.to_vec()).unwrap();
        assert!(text.contains("OperationOutcome"));
        assert!(text.contains("internal error, reference "));
        assert!(!text.contains("SECRET"));
    }
}
