//! Delivery of alerts to the operator's webhook: JSON, signed with HMAC-SHA256, retried with
//! backoff, recorded in the trail once delivered.
//!
//! The request: `POST <url>`, `Content-Type: application/json`, body [`payload`] (ids and
//! counts only: never a name, a value or a patient id), and the headers
//! - `X-Phivault-Timestamp`: unix seconds when the attempt was made;
//! - `X-Phivault-Signature`: `sha256=` and the hex HMAC-SHA256, under the configured key, of
//!   the timestamp, a `.`, and the body's bytes. A receiver recomputes it, compares in
//!   constant time, and refuses a timestamp older than a few minutes (replays).
//!
//! A 2xx answer is a delivery; anything else (another status, no answer within 10 s) is
//! retried after 1, 2, 4, ... seconds (at most 60) until `max_attempts`. A delivered alert
//! gets an entry `alert delivered` with the alert's request id; an alert whose attempts all
//! failed is logged, and delivered again at the next start if it is still in the replayed
//! window.

use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::hmac;
use phivault_audit::{AuditEntry, AuditLog};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::config::Webhook;

/// How long one attempt may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// The JSON an alert is delivered as.
pub fn payload(entry: &AuditEntry) -> Value {
    let alert = entry.alert.as_ref();
    json!({
        "id": entry.request_id,
        "seq": entry.seq,
        "time": crate::format_ms(entry.time),
        "rule": alert.map(|a| a.rule.as_str()),
        "kind": alert.map(|a| a.kind.as_str()),
        "subject": alert.map(|a| a.subject.as_str()),
        "subject_kind": alert.map(|a| a.subject_kind.as_str()),
        "count": alert.map(|a| a.count),
        "threshold": alert.map(|a| a.threshold),
        "window": alert.map(|a| json!({
            "from": crate::format_ms(a.from),
            "to": crate::format_ms(a.to),
        })),
        "evidence": alert.map(|a| json!({"first_seq": a.first_seq, "last_seq": a.last_seq})),
    })
}

/// The signature header's value for `body` sent at `timestamp` (unix seconds).
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(timestamp.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    format!("sha256={}", hex::encode(ctx.sign().as_ref()))
}

/// Delivers the alerts sent on `queue`, one after the other, until every sender is gone.
pub(crate) async fn deliver_loop(
    hook: Arc<Webhook>,
    audit: Arc<AuditLog>,
    mut queue: mpsc::UnboundedReceiver<AuditEntry>,
) {
    let client = match reqwest::Client::builder()
        .timeout(ATTEMPT_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "alerts: cannot build the webhook client");
            return;
        }
    };
    while let Some(entry) = queue.recv().await {
        if deliver(&client, &hook, &entry).await {
            let done = crate::engine::delivered_entry(&entry);
            if let Err(e) = audit.append(&done).await {
                tracing::error!(error = %e, "alerts: a delivery could not be recorded");
            }
        } else {
            tracing::error!(
                alert = %entry.request_id,
                attempts = hook.max_attempts,
                "alerts: the webhook did not take the alert; it is in the audit trail \
                 (phivault alerts list)"
            );
        }
    }
}

/// Tries until a 2xx or `max_attempts`; whether it was delivered.
async fn deliver(client: &reqwest::Client, hook: &Webhook, entry: &AuditEntry) -> bool {
    let body = match serde_json::to_vec(&payload(entry)) {
        Ok(b) => b,
        Err(_) => return false,
    };
    let mut backoff = Duration::from_secs(1);
    for attempt in 1..=hook.max_attempts {
        let timestamp = time::OffsetDateTime::now_utc().unix_timestamp();
        let sent = client
            .post(hook.url.clone())
            .header("content-type", "application/json")
            .header("x-phivault-timestamp", timestamp.to_string())
            .header(
                "x-phivault-signature",
                signature(&hook.secret, timestamp, &body),
            )
            .body(body.clone())
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => return true,
            Ok(r) => {
                tracing::warn!(
                    attempt,
                    status = r.status().as_u16(),
                    "alerts: webhook refused"
                )
            }
            Err(e) => tracing::warn!(attempt, error = %e, "alerts: webhook unreachable"),
        }
        if attempt < hook.max_attempts {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(60));
        }
    }
    false
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_over_timestamp_dot_body() {
        // Against a one-shot HMAC of the joined bytes: the parts are fed in this order.
        let key = b"0123456789abcdef0123456789abcdef";
        let sig = signature(key, 1_700_000_000, b"{\"a\":1}");
        let expected = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, key),
            b"1700000000.{\"a\":1}",
        );
        assert_eq!(sig, format!("sha256={}", hex::encode(expected.as_ref())));
        assert_ne!(sig, signature(key, 1_700_000_001, b"{\"a\":1}"));
        assert_ne!(
            sig,
            signature(
                b"another key, another key, another",
                1_700_000_000,
                b"{\"a\":1}"
            )
        );
    }
}
