//! The HTTPS FHIR R4 API of phivault.
//!
//! This crate owns the edge: routes, TLS (rustls with aws-lc-rs, a self-signed CA and
//! localhost certificate made on first start), authentication of every request (session and
//! OAuth2 access tokens, through `phivault-auth`), authorization of every FHIR interaction
//! (Cedar policies, through `phivault-policy`), the one error type that becomes a FHIR
//! `OperationOutcome` with the right status, and security headers. Everything it does with
//! data goes through `phivault-store`; the HTTP layer stays thin.
//!
//! Routes: the FHIR API under `/fhir`; login, logout and TOTP enrolment under `/auth`; the
//! OAuth2 token and revocation endpoints under `/oauth`; SMART discovery at
//! `/.well-known/smart-configuration`; the admin API under `/admin`; the audit trail as FHIR
//! `AuditEvent`s (`/fhir/AuditEvent`, for auditors) and each patient's access log
//! (`/fhir/Patient/{id}/$access-log`, for that patient); the register of processing
//! activities (GDPR art. 30) at `/privacy/processing-activities`; the erasure of a patient by
//! crypto-shredding (`POST /fhir/Patient/{id}/$erase`, admins), answering a signed erasure
//! certificate; access and portability (`GET /fhir/Patient/{id}/$everything`, decided per
//! resource like reads, and the patient's own `GET /fhir/Patient/{id}/$export`, a portable
//! NDJSON package, see [`portability`]); Bulk Data export (`GET /fhir/$export`,
//! `/fhir/Patient/$export`, `/fhir/Group/{id}/$export`, for backend services and researchers,
//! every resource decided like a search hit, output held in memory only).
//!
//! Guarantees:
//! - **No route answers without a valid token**, except login, the OAuth2 endpoints (which
//!   authenticate the client themselves), SMART discovery, the CapabilityStatement and the
//!   health probes ([`PROBE_ROUTES`]). Every token failure is the same 401 "authentication
//!   failed".
//! - **Default deny.** Every FHIR interaction is decided by the policy engine on the stored
//!   resource's compartment and labels (and the new body's, for writes), with the purpose of
//!   use; searches are restricted in SQL to what the principal may read, then every hit is
//!   decided again. Consent is read at decision time: the patient's active patient-privacy
//!   and research `Consent`s (through the store, not the principal's access), else the
//!   configured default of the purpose; a withdrawal binds the next request of every token.
//!   A refusal for a resource that does not exist is the same as for one the
//!   principal cannot reach: existence never leaks.
//! - No client mistake produces a 500 or a panic; internal detail goes to the log under a
//!   request id, never into a response; logs never hold tokens, passwords, codes,
//!   break-the-glass reasons or PHI; plain HTTP is served only on a loopback address and only
//!   when asked for explicitly.

mod admin_routes;
mod audit_event;
mod audit_routes;
mod audit_sink;
mod auth_routes;
mod bulk_export;
mod capability;
mod consent_memo;
mod edge;
mod erasure_routes;
mod error;
mod export_routes;
mod fhir_routes;
mod middleware;
pub mod portability;
mod privacy;
mod request_routes;
mod retention;
mod routes;
mod tasks;
pub mod tls;
pub mod web;
pub use web::Pages;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use phivault_audit::AuditLog;
use phivault_auth::Accounts;
use phivault_fhir::Validator;
use phivault_policy::{ConsentDefaults, PolicyEngine, RolePurposes};
use phivault_store::Store;

pub use bulk_export::{BulkJobs, BulkLimits};
pub use consent_memo::ConsentMemo;
pub use error::{ApiError, ServerError};
pub use middleware::connections::ConnectionLimits;
pub use middleware::refusals::{RefusalLimits, RefusalTally};
pub use privacy::{ProcessingActivity, check_processing_activities, default_processing_activities};
pub use routes::research_export::{ResearchProject, ResearchProjects};
pub use tasks::alerts::Alerting;

/// How the server listens.
#[derive(Debug, Clone)]
pub enum Transport {
    /// HTTPS with the certificate and key in these PEM files.
    Tls {
        /// Certificate chain (PEM).
        cert: PathBuf,
        /// Private key (PEM).
        key: PathBuf,
    },
    /// Plain HTTP; refused unless the listen address is loopback.
    InsecureHttp,
}

/// Server settings (already merged from flags, environment, file and defaults).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Listen address.
    pub listen: SocketAddr,
    /// TLS or (loopback only) plain HTTP.
    pub transport: Transport,
    /// Public base URL of the FHIR API, e.g. `https://127.0.0.1:8443/fhir` (for links).
    pub base_url: String,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Connection caps and slow-client timeouts.
    pub limits: ConnectionLimits,
    /// This node's name and the cadence of the work one node of a cluster does for all.
    pub node: NodeSettings,
}

/// How a node takes part in a cluster of nodes serving one database.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    /// The node's name in logs (no secret, no PHI: a host name and a process id by default).
    pub node_id: String,
    /// How often the leader signs an audit checkpoint when entries were added (also every
    /// 10,000 entries).
    pub checkpoint_interval: Duration,
}

impl Default for NodeSettings {
    /// A checkpoint every 60 s; the node named after the host and process.
    fn default() -> NodeSettings {
        NodeSettings {
            node_id: default_node_id(),
            checkpoint_interval: audit_routes::CHECKPOINTS.interval,
        }
    }
}

/// A character a node id may hold: letters, digits, `.`, `_`, `-` (node ids go into logs and
/// into Bulk Data export URLs, so nothing else).
fn node_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// Whether `text` is a node id: 1 to 64 of [`node_id_char`].
pub fn is_node_id(text: &str) -> bool {
    (1..=64).contains(&text.len()) && text.chars().all(node_id_char)
}

/// `<host name>-<process id>`: unique among the nodes of a cluster at any time (a restarted
/// node gets a new one, which is what the logs should show).
pub fn default_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".to_owned());
    // Only what a node id may hold (it goes into logs and export job URLs).
    let host: String = host
        .chars()
        .take(48)
        .map(|c| if node_id_char(c) { c } else { '-' })
        .collect();
    format!("{host}-{}", std::process::id())
}

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// The store.
    pub store: Store,
    /// The compiled FHIR validator.
    pub validator: Arc<Validator>,
    /// Accounts, sessions, OAuth2 clients and tokens, care relationships, break-the-glass.
    pub accounts: Accounts,
    /// The authorization policies (default deny).
    pub policy: Arc<PolicyEngine>,
    /// Base URL of the FHIR API, for links (`https://host:port/fhir`).
    pub base_url: Arc<str>,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// Time allowed to read a request body once its head is read.
    pub body_read_timeout: Duration,
    /// The audit trail of the store: one entry per request, committed in the write's own
    /// transaction for a single-resource write, otherwise appended before the response leaves;
    /// plus one entry per resource a Bundle writes, in its transaction (shared: the log holds
    /// the checkpoint-signing key).
    pub audit: Arc<AuditLog>,
    /// What each purpose of use gets when no consent of the patient applies.
    pub consent_defaults: Arc<ConsentDefaults>,
    /// The register of processing activities (GDPR art. 30).
    pub processing_activities: Arc<[ProcessingActivity]>,
    /// Retention periods by resource type, applied in the background (none: keep forever).
    pub retention: Arc<[phivault_store::RetentionRule]>,
    /// Reverse proxies (CIDR ranges) whose `X-Forwarded-For` names the client; from any
    /// other peer the header is ignored. Empty: the peer is the client.
    pub trusted_proxies: Arc<[ipnet::IpNet]>,
    /// Refused unauthenticated requests of the current window, per client address: the
    /// first of each address is audited in full, the rest in one summary entry per window.
    pub refusals: Arc<RefusalTally>,
    /// Bulk Data exports, held in memory only until downloaded, cancelled or expired.
    pub bulk: Arc<BulkJobs>,
    /// The research projects whose de-identified exports researchers and research apps may
    /// run (none by default).
    pub research: Arc<ResearchProjects>,
    /// Most matches a `_sort` search decrypts and sorts (at most
    /// [`phivault_fhir::MAX_SORTED`]); a search matching more is refused as too costly.
    pub max_sorted: usize,
    /// Patients' active consents as last read, trusted only under the consent generation
    /// they were read at (see [`ConsentMemo`]).
    pub consent_memo: Arc<ConsentMemo>,
    /// The detection rules the alert task runs while serving, and where alerts are sent.
    pub alerting: Arc<Alerting>,
    /// The compiled page templates (sign-in, consent; later the portal and console).
    pub pages: web::Pages,
}

impl AppState {
    /// The state over `store`: accounts in the same store and the default policy set.
    /// `policy_file`, when given, adds an operator's Cedar policies to the defaults. Opens the
    /// audit trail of `store` (creating its checkpoint-signing key on first use).
    pub async fn new(
        store: Store,
        validator: Arc<Validator>,
        policy_file: Option<&std::path::Path>,
        base_url: &str,
        max_body_bytes: usize,
    ) -> Result<AppState, ServerError> {
        let policy = match policy_file {
            None => PolicyEngine::new_default(),
            Some(path) => PolicyEngine::with_extra_policy_file(path),
        }
        .map_err(|e| ServerError::Config(format!("authorization policies: {e}")))?;
        let audit = AuditLog::open(store.clone())
            .await
            .map_err(|e| ServerError::Config(format!("opening the audit trail: {e}")))?;
        Ok(AppState {
            audit: Arc::new(audit),
            accounts: Accounts::new(store.clone()),
            store,
            validator,
            policy: Arc::new(policy),
            base_url: Arc::from(base_url),
            max_body_bytes,
            body_read_timeout: ConnectionLimits::default().body_read_timeout,
            consent_defaults: Arc::new(ConsentDefaults::default()),
            processing_activities: Arc::from(default_processing_activities()),
            retention: Arc::from(Vec::new()),
            trusted_proxies: Arc::from(Vec::new()),
            refusals: Arc::new(RefusalTally::new(RefusalLimits::default())),
            bulk: Arc::new(BulkJobs::new(BulkLimits::default())),
            research: Arc::new(ResearchProjects::default()),
            max_sorted: phivault_fhir::MAX_SORTED,
            consent_memo: Arc::new(ConsentMemo::default()),
            alerting: Arc::new(Alerting::default()),
            pages: web::Pages::new()
                .map_err(|e| ServerError::Config(format!("page templates: {e}")))?,
        })
    }

    /// The state with these consent defaults and register of processing activities (checked
    /// by the caller with [`check_processing_activities`]) instead of the built-in ones.
    pub fn with_privacy(
        mut self,
        consent_defaults: ConsentDefaults,
        processing_activities: Vec<ProcessingActivity>,
    ) -> AppState {
        self.consent_defaults = Arc::new(consent_defaults);
        self.processing_activities = Arc::from(processing_activities);
        self
    }

    /// The state with these purposes of use per role instead of the built-in ones. Call it
    /// before the state is shared (it changes the policy engine).
    pub fn with_role_purposes(mut self, purposes: RolePurposes) -> Result<AppState, ServerError> {
        let engine = Arc::get_mut(&mut self.policy).ok_or_else(|| {
            ServerError::Config(
                "the purposes of use per role are set before the server state is shared".to_owned(),
            )
        })?;
        engine.set_role_purposes(purposes);
        Ok(self)
    }

    /// The state believing `X-Forwarded-For` from these reverse proxies only (for the client
    /// address that login and token limits key on).
    pub fn with_trusted_proxies(mut self, proxies: Vec<ipnet::IpNet>) -> AppState {
        self.trusted_proxies = Arc::from(proxies);
        self
    }

    /// The state aggregating refused unauthenticated requests with these limits (window,
    /// addresses tracked).
    pub fn with_refusal_limits(mut self, limits: RefusalLimits) -> AppState {
        self.refusals = Arc::new(RefusalTally::new(limits));
        self
    }

    /// The state with these bounds on Bulk Data exports (resources, bytes, exports held,
    /// expiry) instead of the defaults.
    pub fn with_bulk_limits(mut self, limits: BulkLimits) -> AppState {
        self.bulk = Arc::new(BulkJobs::new(limits));
        self
    }

    /// The state with these research projects (de-identified `$export`s).
    pub fn with_research_projects(mut self, projects: ResearchProjects) -> AppState {
        self.research = Arc::new(projects);
        self
    }

    /// The state running these detection rules (checked by the caller) and sending alerts
    /// to `webhook`, instead of the default rules without a webhook.
    pub fn with_alerting(mut self, alerting: Alerting) -> AppState {
        self.alerting = Arc::new(alerting);
        self
    }

    /// The state sorting at most `limit` matches per `_sort` search (capped at
    /// [`phivault_fhir::MAX_SORTED`]).
    pub fn with_max_sorted(mut self, limit: usize) -> AppState {
        self.max_sorted = limit.min(phivault_fhir::MAX_SORTED);
        self
    }

    /// The state with these retention periods (applied at start and then hourly).
    pub fn with_retention(mut self, rules: Vec<phivault_store::RetentionRule>) -> AppState {
        self.retention = Arc::from(rules);
        self
    }
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").finish_non_exhaustive()
    }
}

/// Every route of the router: (method, path template). The router is checked against this
/// list by the tests (every entry answers, none is the 404 fallback), and the audit trail
/// names these templates as actions.
pub const ROUTES: &[(&str, &str)] = &[
    ("POST", "/fhir"),
    ("POST", "/fhir/"),
    ("GET", "/fhir/metadata"),
    ("GET", "/fhir/{type}"),
    ("POST", "/fhir/{type}"),
    ("POST", "/fhir/{type}/_search"),
    ("GET", "/fhir/{type}/_search"),
    ("GET", "/fhir/{type}/{id}"),
    ("PUT", "/fhir/{type}/{id}"),
    ("DELETE", "/fhir/{type}/{id}"),
    ("GET", "/fhir/{type}/{id}/_history"),
    ("GET", "/fhir/{type}/{id}/_history/{vid}"),
    ("POST", "/auth/login"),
    ("POST", "/auth/logout"),
    ("POST", "/auth/totp/enroll"),
    ("POST", "/auth/totp/confirm"),
    ("POST", "/oauth/token"),
    ("POST", "/oauth/revoke"),
    ("POST", "/oauth/introspect"),
    ("GET", "/oauth/authorize"),
    ("POST", "/oauth/authorize/signin"),
    ("POST", "/oauth/authorize/totp"),
    ("POST", "/oauth/authorize/patient"),
    ("POST", "/oauth/authorize/consent"),
    ("GET", "/oauth/jwks"),
    ("GET", "/.well-known/smart-configuration"),
    ("GET", "/fhir/.well-known/smart-configuration"),
    ("GET", "/.well-known/openid-configuration"),
    ("GET", "/fhir/.well-known/openid-configuration"),
    ("GET", "/auth/apps"),
    ("DELETE", "/auth/apps/{client_id}"),
    ("POST", "/smart/launch"),
    ("GET", "/static/phivault.css"),
    ("GET", "/signin"),
    ("POST", "/signin"),
    ("POST", "/signin/totp"),
    ("POST", "/signout"),
    ("GET", "/account/totp"),
    ("POST", "/account/totp/start"),
    ("POST", "/account/totp/confirm"),
    // The patient portal's pages (routes::portal).
    ("GET", "/portal"),
    ("GET", "/portal/access"),
    ("GET", "/portal/apps"),
    ("POST", "/portal/apps/revoke"),
    ("GET", "/portal/consents"),
    ("POST", "/portal/consents"),
    ("GET", "/portal/download"),
    ("POST", "/portal/download"),
    ("GET", "/portal/requests"),
    ("POST", "/portal/requests"),
    ("GET", "/portal/privacy"),
    // The admin console's pages: users, apps, break-the-glass, alerts (routes::console::people).
    ("GET", "/admin/console/users"),
    ("POST", "/admin/console/users"),
    ("POST", "/admin/console/users/disable"),
    ("GET", "/admin/console/clients"),
    ("POST", "/admin/console/clients"),
    ("POST", "/admin/console/clients/disable"),
    ("POST", "/admin/console/clients/rotate"),
    ("GET", "/admin/console/break-glass"),
    ("POST", "/admin/console/break-glass/review"),
    ("GET", "/admin/console/alerts"),
    ("GET", "/admin/console/breach"),
    ("POST", "/admin/console/breach"),
    // The admin console's pages: overview, audit, keys, backups, settings (routes::console::system).
    ("GET", "/admin"),
    ("GET", "/admin/console/audit"),
    ("POST", "/admin/console/audit/verify"),
    ("GET", "/admin/console/keys"),
    ("POST", "/admin/console/keys/rotate"),
    ("GET", "/admin/console/backups"),
    ("GET", "/admin/console/settings"),
    ("POST", "/admin/users"),
    ("POST", "/admin/users/{username}/link-patient"),
    ("POST", "/admin/users/{username}/link-practitioner"),
    ("POST", "/admin/users/{username}/grants"),
    ("POST", "/admin/clients"),
    ("GET", "/admin/break-glass"),
    ("GET", "/audit/checkpoint"),
    ("GET", "/fhir/AuditEvent"),
    ("GET", "/fhir/AuditEvent/{id}"),
    ("GET", "/fhir/Patient/{id}/$access-log"),
    ("GET", "/privacy/processing-activities"),
    ("POST", "/fhir/Patient/{id}/$erase"),
    ("GET", "/fhir/Patient/{id}/$everything"),
    ("GET", "/fhir/Patient/{id}/$export"),
    ("POST", "/fhir/Patient/{id}/$request-correction"),
    ("POST", "/fhir/Patient/{id}/$request-erasure"),
    ("GET", "/fhir/$export"),
    ("GET", "/fhir/Patient/$export"),
    ("GET", "/fhir/Group/{id}/$export"),
    ("GET", "/fhir/$export-status/{job}"),
    ("DELETE", "/fhir/$export-status/{job}"),
    ("GET", "/fhir/$export-file/{job}/{file}"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
];

/// The liveness and readiness probes of load balancers (`routes::health`): answered without a
/// token and left out of the audit trail (they read no PHI and change nothing, and a probe
/// every few seconds would bury the trail). Also in [`ROUTES`].
pub const PROBE_ROUTES: &[(&str, &str)] = &[("GET", "/healthz"), ("GET", "/readyz")];

/// The application's routes (usable without sockets, e.g. `Router::oneshot` in tests).
///
/// Every route, the 404 fallback and the 405 answers pass through the same layers: security
/// headers and a request id (outermost), request logging, the audit trail (one entry per
/// request but the health probes of [`PROBE_ROUTES`], committed with a single-resource write
/// or appended before the response leaves; a failed append answers 503 instead and a write
/// whose entry fails is rolled back), authentication, then a panic guard that turns a
/// panicking handler into a 500 OperationOutcome.
///
/// Login reads the client's address (for per-address limiting) from the
/// `ConnectInfo<SocketAddr>` extension: [`serve`] provides it; callers without sockets insert
/// it into each request.
pub fn router(state: AppState) -> axum::Router {
    fhir_routes::routes()
        .merge(auth_routes::routes())
        .merge(routes::oauth::routes())
        .merge(routes::account::routes())
        .merge(routes::portal::routes())
        .merge(routes::console::routes())
        .merge(web::routes())
        .merge(admin_routes::routes())
        .merge(routes::alerts::routes())
        .merge(audit_routes::routes())
        .merge(audit_event::routes())
        .merge(privacy::routes())
        .merge(erasure_routes::routes())
        .merge(export_routes::routes())
        .merge(bulk_export::routes())
        .merge(request_routes::routes())
        .merge(routes::health::routes())
        .fallback(fhir_routes::no_route)
        .method_not_allowed_fallback(fhir_routes::method_not_allowed)
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            edge::panic_response,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            edge::authenticate,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            edge::audit_trail,
        ))
        .layer(axum::middleware::from_fn(edge::request_edge))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::slow_body::body_deadline,
        ))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(state)
}

/// How long in-flight requests may take to finish once shutdown is asked for.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves until `shutdown` resolves, then drains in-flight requests.
///
/// Binds `config.listen`; when its port is 0, the real port replaces `:0` in the base URL
/// (used for links and printed). Once bound, prints `phivault: listening on <base_url>` to
/// stdout, then serves. Plain HTTP is refused unless the listen address is loopback.
pub async fn serve(
    config: ServerConfig,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    if matches!(config.transport, Transport::InsecureHttp) && !config.listen.ip().is_loopback() {
        return Err(ServerError::Config(format!(
            "plain HTTP is served only on a loopback address, not on {}: \
             remove --insecure-http to serve HTTPS, or listen on 127.0.0.1 or ::1",
            config.listen
        )));
    }
    let tls = match &config.transport {
        Transport::Tls { cert, key } => {
            // Another component may have installed the same provider already: fine.
            let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
            let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
                .await
                .map_err(|e| {
                    ServerError::io(
                        format!(
                            "loading the TLS certificate {} and key {}",
                            cert.display(),
                            key.display()
                        ),
                        e,
                    )
                })?;
            // HTTP/1.1 only: hyper bounds the time a client may take over each request head
            // (and idle between requests) for HTTP/1.1, but has no such timeout for HTTP/2,
            // where a peer that answers pings could hold a connection open indefinitely.
            let mut rustls_config = (*tls.get_inner()).clone();
            rustls_config.alpn_protocols = vec![b"http/1.1".to_vec()];
            tls.reload_from_config(Arc::new(rustls_config));
            Some(tls)
        }
        Transport::InsecureHttp => None,
    };

    let listener = std::net::TcpListener::bind(config.listen)
        .map_err(|e| ServerError::io(format!("listening on {}", config.listen), e))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| ServerError::io("configuring the listening socket", e))?;
    let bound = listener
        .local_addr()
        .map_err(|e| ServerError::io("reading the bound address", e))?;
    let base_url = real_base_url(&config.base_url, config.listen.port(), bound.port());

    let mut state = state;
    state.base_url = Arc::from(base_url.as_str());
    state.max_body_bytes = config.max_body_bytes;
    state.body_read_timeout = config.limits.body_read_timeout;
    let node_id = config.node.node_id.clone();
    // Export jobs are held in this process's memory: their ids name this node, for the load
    // balancer to route their follow-up requests here.
    state.bulk = Arc::new(state.bulk.for_node(&node_id));
    tracing::info!(node_id = %node_id, backend = state.store.backend().name(), "node starting");
    // Leadership: the work one node does for the cluster runs only while this node leads
    // (always, on SQLite). Stopped when serving ends, which releases leadership.
    let (leading_tx, leading) = tokio::sync::watch::channel(false);
    let campaign = AbortOnDrop(tokio::spawn(tasks::leadership::campaign(
        state.store.clone(),
        node_id.clone(),
        leading_tx,
        tasks::leadership::POLL,
    )));
    let checkpoint_policy = audit_routes::CheckpointPolicy {
        interval: config.node.checkpoint_interval,
        ..audit_routes::CHECKPOINTS
    };
    let audit_for_checkpoints = state.audit.clone();
    let checkpoints = AbortOnDrop(tokio::spawn(tasks::leadership::while_leading(
        leading.clone(),
        move || audit_routes::checkpoint_loop(audit_for_checkpoints.clone(), checkpoint_policy),
    )));
    // Finishes the index sweep of erasures interrupted before (a crash, a failed sweep), and
    // a key-encryption key rotation interrupted before (`phivault keys rotate`), each time
    // this node becomes the leader.
    let store = state.store.clone();
    let interrupted = AbortOnDrop(tokio::spawn(tasks::leadership::while_leading(
        leading.clone(),
        move || {
            let store = store.clone();
            async move {
                erasure_routes::sweep(store.clone()).await;
                finish_kek_rotation(store).await;
                // Done: wait here until leadership is lost (then this is aborted).
                std::future::pending::<()>().await;
            }
        },
    )));
    // Keys erased by another process or node leave this one's memory too (every node).
    let evictions = AbortOnDrop(tokio::spawn(erasure_routes::evict_loop(
        state.store.clone(),
        erasure_routes::EVICT_EVERY,
    )));
    // Retention: when leadership is gained, then every hour.
    let (store, audit, rules) = (
        state.store.clone(),
        state.audit.clone(),
        state.retention.clone(),
    );
    let retention = AbortOnDrop(tokio::spawn(tasks::leadership::while_leading(
        leading.clone(),
        move || {
            retention::retention_loop(
                store.clone(),
                audit.clone(),
                rules.clone(),
                retention::RETENTION_EVERY,
            )
        },
    )));
    // PostgreSQL's planner statistics, refreshed as this node's writes make them stale
    // (every node counts its own writes).
    let statistics = AbortOnDrop(tokio::spawn(tasks::statistics::statistics_loop(
        state.store.clone(),
        tasks::statistics::CHECK_EVERY,
    )));
    // OpenID Connect signing keys: one in force, rotated after its age, old ones retired
    // (every node: safe to repeat, and the JWKS is ready before this node's first sign-in).
    let signing_keys = AbortOnDrop(tokio::spawn(tasks::signing_keys::signing_key_loop(
        state.accounts.clone(),
        tasks::signing_keys::CHECK_EVERY,
    )));
    // Summaries of refused unauthenticated requests, at the end of every window.
    let refusals = state.refusals.clone();
    let refusal_flushes = AbortOnDrop(tokio::spawn(middleware::refusals::flush_loop(
        refusals.clone(),
        state.audit.clone(),
    )));
    // Breach detection: follows the trail as it is written (unless no rule is configured).
    // (on the leader: the trail is the engine's state, so a new leader replays the rules'
    // windows and repeats no alert).
    let _alerts = if state.alerting.rules.is_empty() {
        tracing::warn!("no alert rules are configured: breach detection is off");
        None
    } else {
        let alert_state = state.clone();
        Some(AbortOnDrop(tokio::spawn(tasks::leadership::while_leading(
            leading.clone(),
            move || tasks::alerts::engine(&alert_state).run(),
        ))))
    };
    let audit = state.audit.clone();
    let app = router(state);
    let _retention = retention;
    let _statistics = statistics;
    let _signing_keys = signing_keys;
    let _evictions = evictions;
    let _interrupted = interrupted;

    let served = match tls {
        Some(tls) => {
            let handle = axum_server::Handle::new();
            let limits = config.limits;
            // Caps first (before any handshake work), then TLS with a bounded handshake.
            let acceptor = axum_server::tls_rustls::RustlsAcceptor::new(tls)
                .handshake_timeout(limits.header_read_timeout)
                .acceptor(middleware::connections::CappedAcceptor::new(&limits));
            let mut server = axum_server::from_tcp(listener)
                .map_err(|e| ServerError::io("registering the listening socket", e))?
                .acceptor(acceptor)
                .handle(handle.clone())
                .http1_only();
            // A client must send each request head within the timeout; hyper also runs this
            // timer while a kept-alive connection waits for its next request, so idle
            // connections close too.
            server
                .http_builder()
                .http1()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .keep_alive(true);
            tokio::spawn(async move {
                shutdown.await;
                handle.graceful_shutdown(Some(DRAIN_TIMEOUT));
            });
            announce(&base_url);
            server
                .serve(app.into_make_service_with_connect_info::<SocketAddr>())
                .await
                .map_err(|e| ServerError::io("serving HTTPS", e))
        }
        None => {
            let listener = tokio::net::TcpListener::from_std(listener)
                .map_err(|e| ServerError::io("registering the listening socket", e))?;
            tracing::warn!(listen = %bound, "serving plain HTTP on a loopback address");
            announce(&base_url);
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(|e| ServerError::io("serving HTTP", e))
        }
    };
    // Requests have drained: the window's refusal counts are written, the periodic task stops
    // and the entries since its last checkpoint are sealed now, so a trail cut short while
    // the server is down is detected.
    drop(refusal_flushes);
    if let Err(e) = refusals.flush(&audit).await {
        tracing::error!(error = %e, "writing the summary of refused requests at shutdown failed");
    }
    drop(checkpoints);
    // Every node seals what it can at shutdown (safe alongside the leader's checkpoints),
    // then gives leadership up for the next node.
    audit_routes::final_checkpoint(&audit).await;
    drop(campaign);
    served
}

/// Aborts a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The stdout line tests and operators read once the socket is bound.
fn announce(base_url: &str) {
    let mut out = std::io::stdout().lock();
    // Stdout closed (a detached service) is no reason not to serve.
    let _ = writeln!(out, "phivault: listening on {base_url}");
    let _ = out.flush();
    tracing::info!(base_url = %base_url, "listening");
}

/// `base_url` with `:0` replaced by the real port when the configured port was 0.
fn real_base_url(base_url: &str, configured_port: u16, bound_port: u16) -> String {
    if configured_port != 0 {
        return base_url.to_owned();
    }
    let real = format!(":{bound_port}");
    if let Some(i) = base_url.find(":0/") {
        format!("{}{}{}", &base_url[..i], real, &base_url[i + 2..])
    } else if let Some(stripped) = base_url.strip_suffix(":0") {
        format!("{stripped}{real}")
    } else {
        base_url.to_owned()
    }
}

/// When data keys are still under a non-active key-encryption key (a `phivault keys rotate`
/// that was interrupted), finishes that rotation in the background while the server serves.
/// Logs ids and counts only.
async fn finish_kek_rotation(store: phivault_store::Store) {
    match store.key_status().await {
        Ok(status) if status.pending > 0 => {
            tracing::info!(
                pending = status.pending,
                "finishing an interrupted key-encryption key rotation"
            );
            match store.rotate_keks(500, |_| {}).await {
                Ok(r) => tracing::info!(
                    kek_id = %r.kek_id,
                    rewrapped = r.rewrapped,
                    "key-encryption key rotation finished"
                ),
                Err(e) => tracing::error!(
                    error = %e,
                    "finishing the key-encryption key rotation failed; run `phivault keys rotate`"
                ),
            }
        }
        Ok(_) => {}
        Err(e) => tracing::error!(error = %e, "reading the key status failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_gets_the_real_port() {
        assert_eq!(
            real_base_url("https://127.0.0.1:0/fhir", 0, 4321),
            "https://127.0.0.1:4321/fhir"
        );
        assert_eq!(
            real_base_url("http://[::1]:0/fhir", 0, 80),
            "http://[::1]:80/fhir"
        );
        assert_eq!(
            real_base_url("https://127.0.0.1:0", 0, 9),
            "https://127.0.0.1:9"
        );
        assert_eq!(
            real_base_url("https://example.org/fhir", 0, 9),
            "https://example.org/fhir"
        );
        assert_eq!(
            real_base_url("https://127.0.0.1:8443/fhir", 8443, 8443),
            "https://127.0.0.1:8443/fhir"
        );
    }
}
