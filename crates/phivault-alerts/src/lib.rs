//! Breach detection for phivault: rules evaluated over the audit trail as it is written.
//!
//! - [`config`]: `[[alert_rules]]` (what is watched, with defaults) and `[alert_webhook]`,
//!   checked before the server listens.
//! - [`rules`]: the rules' windows over the entries seen; pure, no I/O.
//! - [`engine`]: the task of `phivault serve` that follows the trail, confirms what needs the
//!   store (care relationships, earlier use), and writes each alert as an audit entry.
//! - [`webhook`]: delivery of alerts, signed and retried.
//! - [`list_alerts`]: the alerts in the trail, for `phivault alerts list` and
//!   `GET /admin/alerts`.
//!
//! Alerts carry ids and counts only, never a value from a record, and never a patient id in
//! what leaves the server.

#![forbid(unsafe_code)]

pub mod config;
pub mod engine;
pub mod rules;
pub mod webhook;

use std::collections::HashSet;

use phivault_audit::{ALERT_ACTION, ALERT_DELIVERED_ACTION, AlertRecord, AuditError};
use phivault_store::Store;
use serde::Serialize;

pub use config::{
    ConfigError, Rule, RuleKind, RuleSetting, Webhook, WebhookSetting, check_rules, check_webhook,
    default_rules,
};
pub use engine::{AlertEngine, Grantee, LookupFuture, Lookups};

/// An RFC 3339 instant of unix ms.
pub(crate) fn format_ms(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

/// An alert as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ListedAlert {
    /// The alert's id (its entry's request id).
    pub id: String,
    /// Its entry's seq.
    pub seq: u64,
    /// When it was raised (RFC 3339).
    pub time: String,
    /// What the rule saw.
    #[serde(flatten)]
    pub alert: AlertRecord,
    /// Whether the webhook took it.
    pub delivered: bool,
}

/// The alerts raised at or after `since` (unix ms), newest first, at most `limit`.
pub async fn list_alerts(
    store: &Store,
    since: i64,
    limit: u32,
) -> Result<Vec<ListedAlert>, AuditError> {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let alerts = engine::system_entries(store, ALERT_ACTION, since, limit).await?;
    let delivered: HashSet<String> =
        engine::system_entries(store, ALERT_DELIVERED_ACTION, since, usize::MAX)
            .await?
            .into_iter()
            .map(|e| e.request_id)
            .collect();
    let mut out = Vec::with_capacity(alerts.len());
    for entry in alerts {
        let Some(alert) = entry.alert else { continue };
        out.push(ListedAlert {
            delivered: delivered.contains(&entry.request_id),
            id: entry.request_id,
            seq: entry.seq,
            time: format_ms(entry.time),
            alert,
        });
    }
    Ok(out)
}
