//! The retention task (issue 6): disposes of the resources older than their type's retention
//! period (see `phivault_store::Store::run_retention`) when the server starts and then every
//! [`RETENTION_EVERY`]. Each disposal batch commits with one `dispose` audit entry per
//! resource (actor `phivault-server`, a system actor); the task logs counts by type only.

use std::sync::Arc;
use std::time::Duration;

use phivault_audit::{ActorKind, AuditEntry, AuditError, AuditLog, Outcome};
use phivault_store::{
    AnyConnection, AuditSink, RetentionRule, SinkFuture, Store, StoreError, Written,
};

/// How often the server applies the retention periods.
pub(crate) const RETENTION_EVERY: Duration = Duration::from_secs(3600);

/// The actor of the server's own audit entries.
const ACTOR: &str = "phivault-server";

/// The audit sink of the background disposals: one entry per disposed resource.
pub(crate) struct SystemSink {
    audit: Arc<AuditLog>,
    request_id: String,
}

impl SystemSink {
    pub(crate) fn new(audit: Arc<AuditLog>) -> SystemSink {
        SystemSink {
            audit,
            request_id: uuid::Uuid::new_v4().to_string(),
        }
    }
}

impl AuditSink for SystemSink {
    fn record<'a>(&'a self, conn: &'a mut AnyConnection, written: &'a [Written]) -> SinkFuture<'a> {
        Box::pin(async move {
            let t = time::OffsetDateTime::now_utc();
            let time = i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX);
            let entries: Vec<AuditEntry> = written
                .iter()
                .map(|w| AuditEntry {
                    seq: 0,
                    time,
                    actor_id: ACTOR.to_owned(),
                    actor_kind: ActorKind::System,
                    role: None,
                    purpose: None,
                    break_glass: false,
                    action: w.kind.as_str().to_owned(),
                    resource_type: Some(w.rtype.to_string()),
                    resource_id: Some(w.id.to_string()),
                    patient_id: w.patient.as_ref().map(ToString::to_string),
                    outcome: Outcome::Allowed,
                    source_address: None,
                    request_id: self.request_id.clone(),
                    actor_ref: None,
                    patients: Vec::new(),
                    refusals: None,
                    configuration: None,
                    labels: Vec::new(),
                    alert: None,
                    via_client: None,
                })
                .collect();
            self.audit
                .append_all_in(conn, &entries)
                .await
                .map(|_| ())
                .map_err(|e| match e {
                    AuditError::Store(e) => e,
                    other => {
                        StoreError::Config(format!("the audit entry could not be written: {other}"))
                    }
                })
        })
    }
}

/// Applies `rules` now and then every `every`, until aborted. Does nothing without rules.
pub(crate) async fn retention_loop(
    store: Store,
    audit: Arc<AuditLog>,
    rules: Arc<[RetentionRule]>,
    every: Duration,
) {
    if rules.is_empty() {
        return;
    }
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let sink = SystemSink::new(audit.clone());
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        match store.run_retention(&rules, now, false, &sink).await {
            Ok(counts) => {
                for c in counts {
                    tracing::info!(
                        resource_type = %c.rtype,
                        disposed = c.resources,
                        "retention: expired resources disposed of"
                    );
                }
            }
            Err(e) => tracing::error!(error = %e, "retention run failed; retried next time"),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;
    use phivault_fhir::{ResourceType, Validator};
    use phivault_store::{NoAudit, StoreError, StoreOptions};
    use sqlx::Row;

    /// The loop disposes of the expired resources at once (not an hour later), keeps the
    /// others, and each disposal has its `dispose` entry by the server; without rules it
    /// does nothing.
    #[tokio::test]
    async fn the_loop_disposes_at_start_and_audits() {
        let dir = tempfile::tempdir().unwrap();
        let mut key = [0u8; 32];
        phivault_crypto::random_bytes(&mut key).unwrap();
        let keys = phivault_crypto::StaticKeyProvider::from_hex(hex::encode(key));
        let opts = StoreOptions::new(format!("sqlite://{}/t.db", dir.path().display()));
        let store = Store::open(&opts, &keys).await.unwrap();
        let audit = Arc::new(AuditLog::open(store.clone()).await.unwrap());
        let validator = Validator::new().unwrap();
        let obs = ResourceType::parse("Observation").unwrap();
        let mut ids = Vec::new();
        for _ in 0..2 {
            let body = serde_json::json!({
                "resourceType": "Observation",
                "status": "final",
                "code": { "coding": [{ "system": "http://loinc.org", "code": "8310-5" }] },
                "subject": { "reference": "Patient/r1" },
            });
            let v = validator.validate(body, None).unwrap();
            ids.push(store.create(v, &NoAudit).await.unwrap().id);
        }
        sqlx::query(
            "UPDATE current_resources SET recorded_at = recorded_at - 864000 WHERE id = $1",
        )
        .bind(ids[0].as_str())
        .execute(store.pool())
        .await
        .unwrap();
        let rules: Arc<[RetentionRule]> = Arc::from(vec![RetentionRule {
            rtype: obs,
            max_age_secs: 86_400,
        }]);

        // Without rules: returns at once, nothing disposed.
        retention_loop(
            store.clone(),
            audit.clone(),
            Arc::from(Vec::new()),
            RETENTION_EVERY,
        )
        .await;
        store.read(obs, &ids[0]).await.unwrap();

        let task = tokio::spawn(retention_loop(
            store.clone(),
            audit.clone(),
            rules,
            RETENTION_EVERY,
        ));
        let mut gone = false;
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if matches!(
                store.read(obs, &ids[0]).await,
                Err(StoreError::NotFound { .. })
            ) {
                gone = true;
                break;
            }
        }
        task.abort();
        assert!(gone, "the expired resource was disposed of at start");
        store.read(obs, &ids[1]).await.unwrap();
        let rows = sqlx::query("SELECT body FROM audit_entries ORDER BY seq")
            .fetch_all(store.pool())
            .await
            .unwrap();
        let entries: Vec<AuditEntry> = rows
            .iter()
            .map(|r| AuditEntry::from_canonical(&r.get::<Vec<u8>, _>("body")).unwrap())
            .collect();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].action, "dispose");
        assert_eq!(entries[0].actor_id, ACTOR);
        assert_eq!(entries[0].resource_id.as_deref(), Some(ids[0].as_str()));
    }
}
