//! Probes for load balancers and orchestrators (see [`crate::PROBE_ROUTES`]):
//!
//! - `GET /healthz`: the process is up and answering. No database call, so a database outage
//!   does not get healthy nodes restarted. `200 {"status":"pass"}`.
//! - `GET /readyz`: this node can serve requests now. The checks, in order (the first that
//!   fails decides): `database` (it answers), `schema` (its newest migration is this build's
//!   newest: a node left on an older build after another migrated the database is taken out
//!   of rotation), `audit` (the trail can take an entry now: a read-write transaction on the
//!   primary that may insert into it and gets its append lock; nothing is appended) and
//!   `keys` (the master key opens the active key-encryption key). `200 {"status":"pass"}`,
//!   else 503 with an OperationOutcome naming the check that failed.
//!
//! Rules kept here:
//! - **No token, no audit entry.** A load balancer has no token, and probes every few
//!   seconds: an entry per probe would bury the trail in entries that say nothing about
//!   anyone's data. The probes read no PHI and change nothing (`crate::edge` lets them
//!   through and leaves them out of the trail).
//! - **Pass or fail and the check's name, nothing more.** No version, no database detail, no
//!   PHI: the reason goes to the log.
//! - **Bounded.** A readiness answer comes within [`READY_TIMEOUT`]: a check still running
//!   then fails (a database that hangs is not ready).
//! - `Cache-Control: no-store` on both.

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use phivault_fhir::{IssueCode, OperationOutcome};

use crate::AppState;

/// The longest `/readyz` takes to answer.
pub(crate) const READY_TIMEOUT: Duration = Duration::from_secs(3);

/// The routes.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

/// What `/readyz` checks, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    Database,
    Schema,
    Audit,
    Keys,
}

impl Check {
    const ALL: [Check; 4] = [Check::Database, Check::Schema, Check::Audit, Check::Keys];

    fn name(self) -> &'static str {
        match self {
            Check::Database => "database",
            Check::Schema => "schema",
            Check::Audit => "audit",
            Check::Keys => "keys",
        }
    }

    /// What the OperationOutcome says (no detail beyond the check).
    fn failure(self) -> &'static str {
        match self {
            Check::Database => "not ready: the database does not answer (check: database)",
            Check::Schema => {
                "not ready: the database schema is not the one this build knows (check: schema)"
            }
            Check::Audit => "not ready: the audit trail cannot take entries (check: audit)",
            Check::Keys => {
                "not ready: the master key does not open the active key-encryption key \
                 (check: keys)"
            }
        }
    }

    /// Runs the check; the error is for the log only.
    async fn run(self, state: &AppState) -> Result<(), String> {
        let store = &state.store;
        match self {
            Check::Database => store.health().await.map_err(|e| e.to_string()),
            Check::Schema => match store.schema_versions().await {
                Ok((applied, known)) if applied == known => Ok(()),
                Ok((applied, known)) => Err(format!(
                    "the database schema is at version {applied}, this build's is {known}"
                )),
                Err(e) => Err(e.to_string()),
            },
            Check::Audit => match store.check_audit_writable().await {
                Ok(true) => Ok(()),
                Ok(false) => Err("the database refuses writes to the audit trail (read-only \
                                  or no privilege)"
                    .to_owned()),
                Err(e) => Err(e.to_string()),
            },
            Check::Keys => store.check_keys().await.map_err(|e| e.to_string()),
        }
    }
}

/// `200 {"status":"pass"}` (the health check response format of
/// draft-inadarei-api-health-check).
fn pass() -> Response {
    let mut response = (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/health+json"),
        )],
        r#"{"status":"pass"}"#,
    )
        .into_response();
    no_store(&mut response);
    response
}

fn no_store(response: &mut Response) {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

/// `GET /healthz`: the process answers.
async fn healthz() -> Response {
    pass()
}

/// `GET /readyz`: every check passes within [`READY_TIMEOUT`].
async fn readyz(State(state): State<AppState>) -> Response {
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    for check in Check::ALL {
        let why = match tokio::time::timeout_at(deadline, check.run(&state)).await {
            Ok(Ok(())) => continue,
            Ok(Err(why)) => why,
            Err(_) => format!("no answer within {} s", READY_TIMEOUT.as_secs()),
        };
        tracing::warn!(check = check.name(), reason = %why, "not ready");
        let mut response = crate::error::fhir_json(
            StatusCode::SERVICE_UNAVAILABLE,
            &OperationOutcome::error(IssueCode::Transient, check.failure()).to_json(),
        );
        no_store(&mut response);
        return response;
    }
    pass()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode, header};
    use serde_json::{Value, json};

    use crate::web::test_support::{Answer, Ctx, ctx};

    async fn probe(c: &Ctx, method: &str, uri: &str) -> Answer {
        c.send(
            Request::builder()
                .method(method)
                .uri(uri)
                .body(Body::empty())
                .unwrap(),
        )
        .await
    }

    async fn entries(c: &Ctx) -> u64 {
        c.state.store.audit_tail().await.unwrap().seq
    }

    fn assert_pass(a: &Answer) {
        assert_eq!(a.status, StatusCode::OK, "{a:?}");
        assert_eq!(a.header(header::CACHE_CONTROL), "no-store");
        assert_eq!(a.header(header::CONTENT_TYPE), "application/health+json");
        let body: Value = serde_json::from_slice(&a.body).unwrap();
        assert_eq!(body, json!({"status": "pass"}));
    }

    /// The OperationOutcome of a failed readiness check, which names the check and nothing
    /// else (no digits: no version, no count).
    fn assert_not_ready(a: &Answer, check: &str) {
        assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{a:?}");
        assert_eq!(a.header(header::CACHE_CONTROL), "no-store");
        let body: Value = serde_json::from_slice(&a.body).unwrap();
        assert_eq!(body["resourceType"], "OperationOutcome", "{a:?}");
        assert_eq!(body["issue"][0]["code"], "transient", "{a:?}");
        let text = body["issue"][0]["diagnostics"].as_str().unwrap();
        assert!(text.contains(&format!("(check: {check})")), "{text}");
        assert!(!a.text().chars().any(|c| c.is_ascii_digit()), "{a:?}");
    }

    #[tokio::test]
    async fn probes_answer_without_a_token_and_leave_no_audit_entry() {
        let c = ctx().await;
        let before = entries(&c).await;
        for uri in ["/healthz", "/readyz"] {
            assert_pass(&probe(&c, "GET", uri).await);
            let head = probe(&c, "HEAD", uri).await;
            assert_eq!(head.status, StatusCode::OK, "{head:?}");
            assert!(head.body.is_empty());
        }
        assert_eq!(entries(&c).await, before, "probes are not audited");
        // Only GET and HEAD are public probes: anything else needs a token like any
        // request, and is audited.
        let post = probe(&c, "POST", "/readyz").await;
        assert_eq!(post.status, StatusCode::UNAUTHORIZED, "{post:?}");
        assert_eq!(entries(&c).await, before + 1);
    }

    #[tokio::test]
    async fn a_schema_newer_than_the_build_is_not_ready_and_names_only_the_check() {
        let c = ctx().await;
        let pool = c.state.store.pool().clone();
        sqlx::query(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, \
             execution_time) VALUES (99999, 'newer', 1, x'00', 0)",
        )
        .execute(&pool)
        .await
        .unwrap();
        assert_not_ready(&probe(&c, "GET", "/readyz").await, "schema");
        // Alive all the same: a restart would not help.
        assert_pass(&probe(&c, "GET", "/healthz").await);
        sqlx::query("DELETE FROM _sqlx_migrations WHERE version = 99999")
            .execute(&pool)
            .await
            .unwrap();
        assert_pass(&probe(&c, "GET", "/readyz").await);
    }

    #[tokio::test]
    async fn no_active_key_encryption_key_is_not_ready() {
        let c = ctx().await;
        let pool = c.state.store.pool().clone();
        sqlx::query("UPDATE key_encryption_keys SET active = 0")
            .execute(&pool)
            .await
            .unwrap();
        assert_not_ready(&probe(&c, "GET", "/readyz").await, "keys");
        sqlx::query("UPDATE key_encryption_keys SET active = 1")
            .execute(&pool)
            .await
            .unwrap();
        assert_pass(&probe(&c, "GET", "/readyz").await);
    }

    #[tokio::test]
    async fn a_writer_that_holds_the_trail_too_long_makes_the_node_not_ready() {
        let c = ctx().await;
        let started = std::time::Instant::now();
        let a = {
            // SQLite: the process's one writer, held past the readiness deadline.
            let _writer = c.state.store.write_lock().await;
            probe(&c, "GET", "/readyz").await
        };
        assert_not_ready(&a, "audit");
        assert!(
            started.elapsed() < super::READY_TIMEOUT + std::time::Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert_pass(&probe(&c, "GET", "/readyz").await);
    }
}
