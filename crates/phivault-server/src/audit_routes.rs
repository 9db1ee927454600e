//! The audit trail's API and background work: `GET /audit/checkpoint` (the latest signed
//! checkpoint: hashes and a signature only, no PHI, so any authenticated principal may read
//! it) and the periodic checkpoint task started by [`crate::serve`].

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use phivault_audit::{AuditLog, Checkpoint};

use crate::AppState;
use crate::edge::Who;
use crate::error::ApiError;

/// When the serving process makes a checkpoint: every `every_entries` new entries, or every
/// `interval` when fewer (but some) were added, whichever comes first; the trail's tail is
/// looked at every `poll`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CheckpointPolicy {
    pub(crate) interval: Duration,
    pub(crate) every_entries: u64,
    pub(crate) poll: Duration,
}

/// The server's checkpoint policy: every 10,000 entries or 60 s.
pub(crate) const CHECKPOINTS: CheckpointPolicy = CheckpointPolicy {
    interval: Duration::from_secs(60),
    every_entries: 10_000,
    poll: Duration::from_secs(1),
};

/// The audit routes.
pub(crate) fn routes() -> Router<AppState> {
    Router::new().route("/audit/checkpoint", get(latest_checkpoint))
}

/// The latest checkpoint as JSON; 404 when there is none yet.
async fn latest_checkpoint(
    State(state): State<AppState>,
    _who: Who,
) -> Result<Json<Checkpoint>, ApiError> {
    state
        .audit
        .last_checkpoint()
        .await
        .map_err(|e| ApiError::internal(&e))?
        .map(Json)
        .ok_or_else(|| ApiError::Missing("no audit checkpoint yet".to_owned()))
}

/// Makes checkpoints as `policy` says, only when entries were added since the last one. Runs
/// until aborted; a failure is logged (no PHI: the errors name seqs and sizes) and retried at
/// the next tick.
///
/// The interval is measured from the trail's last checkpoint, whoever signed it, not from
/// when this task started: a node that takes the task over from one that died signs at once
/// when the last checkpoint is older than the interval, so the trail is never left unsigned
/// for much longer than one interval.
pub(crate) async fn checkpoint_loop(audit: Arc<AuditLog>, policy: CheckpointPolicy) {
    let mut ticker = tokio::time::interval(policy.poll);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick completes at once: skip it.
    ticker.tick().await;
    // Until this task has seen a checkpoint: when it started (a trail with entries but no
    // checkpoint yet gets its first one after one interval).
    let started = now_millis();
    loop {
        ticker.tick().await;
        let entries = match audit.store().audit_tail().await {
            Ok(tail) => tail.seq.saturating_sub(1),
            Err(e) => {
                tracing::error!(error = %e, "audit checkpoint: reading the trail's tail failed");
                continue;
            }
        };
        let (covered, signed_at) = match audit.last_checkpoint().await {
            Ok(cp) => cp.map_or((0, started), |c| (c.size, c.time)),
            Err(e) => {
                tracing::error!(error = %e, "audit checkpoint: reading the checkpoints failed");
                continue;
            }
        };
        let interval_ms = i64::try_from(policy.interval.as_millis()).unwrap_or(i64::MAX);
        let due = entries - covered.min(entries) >= policy.every_entries
            || now_millis().saturating_sub(signed_at) >= interval_ms;
        if entries <= covered || !due {
            continue;
        }
        match audit.checkpoint().await {
            Ok(cp) => tracing::info!(size = cp.size, "audit checkpoint made"),
            Err(e) => tracing::error!(error = %e, "audit checkpoint failed"),
        }
    }
}

/// Now, Unix milliseconds (the unit of [`Checkpoint::time`]).
fn now_millis() -> i64 {
    let t = time::OffsetDateTime::now_utc();
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// Makes a checkpoint when entries were added since the last one (at shutdown, once requests
/// have drained). A failure is logged (seqs and sizes only); the next start verifies the
/// tail from the last checkpoint anyway.
pub(crate) async fn final_checkpoint(audit: &AuditLog) {
    let pending = match (
        audit.store().audit_tail().await,
        audit.last_checkpoint().await,
    ) {
        (Ok(tail), Ok(cp)) => tail.seq.saturating_sub(1) > cp.map_or(0, |c| c.size),
        (Err(e), _) => {
            tracing::error!(error = %e, "audit checkpoint at shutdown: reading the tail failed");
            true
        }
        (_, Err(e)) => {
            tracing::error!(error = %e, "audit checkpoint at shutdown: reading it failed");
            true
        }
    };
    if !pending {
        return;
    }
    match audit.checkpoint().await {
        Ok(cp) => tracing::info!(size = cp.size, "audit checkpoint made at shutdown"),
        Err(e) => tracing::error!(error = %e, "audit checkpoint at shutdown failed"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use phivault_audit::{ActorKind, AuditEntry, Outcome};
    use phivault_store::{Store, StoreOptions};

    fn entry() -> AuditEntry {
        AuditEntry {
            seq: 0,
            time: 1,
            actor_id: "u1".to_owned(),
            actor_kind: ActorKind::User,
            role: None,
            purpose: None,
            break_glass: false,
            action: "GET /fhir/metadata".to_owned(),
            resource_type: None,
            resource_id: None,
            patient_id: None,
            outcome: Outcome::Allowed,
            source_address: None,
            request_id: "r".to_owned(),
            actor_ref: None,
            patients: Vec::new(),
            refusals: None,
            configuration: None,
            labels: Vec::new(),
            alert: None,
            via_client: None,
        }
    }

    /// A fresh trail in a temporary SQLite store (the directory lives as long as the guard).
    async fn trail() -> (tempfile::TempDir, Arc<AuditLog>) {
        let dir = tempfile::tempdir().unwrap();
        let mut key = [0u8; 32];
        phivault_crypto::random_bytes(&mut key).unwrap();
        let keys = phivault_crypto::StaticKeyProvider::from_hex(hex::encode(key));
        let opts = StoreOptions::new(format!("sqlite://{}/t.db", dir.path().display()));
        let store = Store::open(&opts, &keys).await.unwrap();
        (dir, Arc::new(AuditLog::open(store).await.unwrap()))
    }

    /// The checkpoints once there are any. Polled, not timed: a loaded machine may be slow.
    async fn first_checkpoints(audit: &AuditLog) -> Vec<Checkpoint> {
        let mut cps = Vec::new();
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            cps = audit.checkpoints().await.unwrap();
            if !cps.is_empty() {
                break;
            }
        }
        cps
    }

    #[tokio::test]
    async fn checkpoints_only_when_entries_were_added() {
        let (_dir, audit) = trail().await;
        let policy = CheckpointPolicy {
            interval: Duration::from_millis(50),
            every_entries: 1_000,
            poll: Duration::from_millis(10),
        };
        let task = tokio::spawn(checkpoint_loop(audit.clone(), policy));

        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(audit.checkpoints().await.unwrap().is_empty());
        audit.append(&entry()).await.unwrap();
        audit.append(&entry()).await.unwrap();
        let cps = first_checkpoints(&audit).await;
        assert_eq!(cps.len(), 1);
        assert_eq!(cps[0].size, 2);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(audit.checkpoints().await.unwrap().len(), 1);
        task.abort();
    }

    #[tokio::test]
    async fn checkpoints_every_n_entries_before_the_interval() {
        let (_dir, audit) = trail().await;
        // The interval is never reached in this test: only the entry count can trigger.
        let policy = CheckpointPolicy {
            interval: Duration::from_secs(3600),
            every_entries: 5,
            poll: Duration::from_millis(10),
        };
        let task = tokio::spawn(checkpoint_loop(audit.clone(), policy));
        for _ in 0..4 {
            audit.append(&entry()).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(audit.checkpoints().await.unwrap().is_empty());
        audit.append(&entry()).await.unwrap();
        let cps = first_checkpoints(&audit).await;
        assert_eq!(cps.len(), 1);
        assert_eq!(cps[0].size, 5);
        task.abort();
    }
}
