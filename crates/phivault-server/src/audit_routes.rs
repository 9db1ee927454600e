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

/// How often the serving process makes a checkpoint (when entries were added since the last).
pub(crate) const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(60);

/// The audit routes.
pub(crate) fn routes() -> Router<AppState> {
    Router::new().route("/audit/checkpoint", get(latest_checkpoint))
}

/// The latest checkpoint as JSON; 404 when there is none yet.
async fn latest_checkpoint(
    State(state): State<AppState>,
    _who: Who,
) -> Result<Json<Checkpoint>, ApiError> {
    let mut checkpoints = state
        .audit
        .checkpoints()
        .await
        .map_err(|e| ApiError::internal(&e))?;
    checkpoints
        .pop()
        .map(Json)
        .ok_or_else(|| ApiError::Missing("no audit checkpoint yet".to_owned()))
}

/// Makes a checkpoint every `interval` when entries were added since the last one. Runs until
/// aborted; a failure is logged (no PHI: the errors name seqs and sizes) and retried at the
/// next tick.
pub(crate) async fn checkpoint_loop(audit: Arc<AuditLog>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick completes at once: skip it, the first checkpoint comes after `interval`.
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let entries = match audit.store().audit_tail().await {
            Ok(tail) => tail.seq.saturating_sub(1),
            Err(e) => {
                tracing::error!(error = %e, "audit checkpoint: reading the trail's tail failed");
                continue;
            }
        };
        let covered = match audit.checkpoints().await {
            Ok(cps) => cps.last().map_or(0, |c| c.size),
            Err(e) => {
                tracing::error!(error = %e, "audit checkpoint: reading the checkpoints failed");
                continue;
            }
        };
        if entries <= covered {
            continue;
        }
        match audit.checkpoint().await {
            Ok(cp) => tracing::info!(size = cp.size, "audit checkpoint made"),
            Err(e) => tracing::error!(error = %e, "audit checkpoint failed"),
        }
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
        }
    }

    #[tokio::test]
    async fn checkpoints_only_when_entries_were_added() {
        let dir = tempfile::tempdir().unwrap();
        let mut key = [0u8; 32];
        phivault_crypto::random_bytes(&mut key).unwrap();
        let keys = phivault_crypto::StaticKeyProvider::from_hex(hex::encode(key));
        let opts = StoreOptions::new(format!("sqlite://{}/t.db", dir.path().display()));
        let store = Store::open(&opts, &keys).await.unwrap();
        let audit = Arc::new(AuditLog::open(store).await.unwrap());
        let task = tokio::spawn(checkpoint_loop(audit.clone(), Duration::from_millis(50)));

        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(audit.checkpoints().await.unwrap().is_empty());
        audit.append(&entry()).await.unwrap();
        audit.append(&entry()).await.unwrap();
        // Polled, not timed: a loaded machine may be slow.
        let mut cps = Vec::new();
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            cps = audit.checkpoints().await.unwrap();
            if !cps.is_empty() {
                break;
            }
        }
        assert_eq!(cps.len(), 1);
        assert_eq!(cps[0].size, 2);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(audit.checkpoints().await.unwrap().len(), 1);
        task.abort();
    }
}
