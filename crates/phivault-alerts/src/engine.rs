//! The alert task of a serving process: follows the audit trail as it is written, runs every
//! committed entry through the rules, records each alert as an audit entry and hands it to
//! the webhook.
//!
//! Invariants:
//! - **Only committed entries are evaluated**, in seq order, whoever wrote them (this
//!   process, another node, a CLI command): the task reads the trail after its cursor, so a
//!   write that rolled back never raises an alert and none is skipped.
//! - **The trail is the state**: at start the task replays the entries of the longest rule
//!   window (their windows fill again), after first reading the alerts already raised in
//!   that stretch (their quiet times hold, so none is repeated) and their deliveries (an
//!   alert not yet delivered is delivered now).
//! - An alert entry names no patient and carries no value: rule, subject (an actor id or a
//!   client address), counts, the window, and the seqs of the first and last entries it
//!   counted ([`phivault_audit::AlertRecord`]).
//! - A check that needs the store (care relationship, earlier use of an address or of bulk
//!   access) that fails is logged and raises nothing for that entry; the task goes on. A
//!   failure to read or append the trail is retried after a pause, from the same cursor.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use phivault_audit::{
    ALERT_ACTION, ALERT_DELIVERED_ACTION, ActorKind, AlertRecord, AuditEntry, AuditError, AuditLog,
    Outcome,
};
use phivault_store::Store;
use phivault_store::audit::AuditQuery;
use tokio::sync::mpsc;

use crate::config::{Rule, Webhook};
use crate::rules::{Evaluator, Finding, is_bulk};
use crate::webhook;

/// The actor id of the server's own entries.
pub const SYSTEM_ACTOR: &str = "phivault";

/// How often the task looks for new entries when it has caught up.
pub const POLL: Duration = Duration::from_millis(250);

/// Entries read per page.
const PAGE: u32 = 1000;

/// At most this many of a principal's entries are read to learn its usual addresses and
/// bulk use (newest first): a busy client's month is not read whole on every start.
const HISTORY_LIMIT: usize = 100_000;

/// A boxed future of a [`Lookups`] method.
pub type LookupFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, String>> + Send + 'a>>;

/// An account that holds a care grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grantee {
    /// The user id.
    pub user_id: String,
    /// When the account was created (unix ms).
    pub user_created_ms: i64,
    /// When the grant was made (unix ms).
    pub granted_ms: i64,
}

/// What the rules need to know beyond the trail; the server answers from its accounts.
pub trait Lookups: Send + Sync + 'static {
    /// Whether `user` has a care relationship with `patient` now (a grant in force or a
    /// CareTeam naming their Practitioner).
    fn has_care<'a>(&'a self, user: &'a str, patient: &'a str) -> LookupFuture<'a, bool>;
    /// The accounts holding a care grant on `patient`.
    fn grantees<'a>(&'a self, patient: &'a str) -> LookupFuture<'a, Vec<Grantee>>;
}

/// How far apart (ms) a grant's own time and its audit entry's time may be and still be the
/// same event.
const GRANT_SKEW_MS: i64 = 5_000;

/// The alert task's parts.
pub struct AlertEngine {
    evaluator: Evaluator,
    store: Store,
    audit: Arc<AuditLog>,
    lookups: Arc<dyn Lookups>,
    deliveries: Option<mpsc::UnboundedSender<AuditEntry>>,
    /// The last seq evaluated.
    cursor: u64,
    /// Alerts raised whose entry is not written yet (an append failed): written first.
    pending: std::collections::VecDeque<AlertRecord>,
}

impl std::fmt::Debug for AlertEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlertEngine")
            .field("rules", &self.evaluator.rules().len())
            .field("cursor", &self.cursor)
            .finish_non_exhaustive()
    }
}

fn now_millis() -> i64 {
    i64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000)
        .unwrap_or(i64::MAX)
}

impl AlertEngine {
    /// An engine of `rules` over `audit`'s trail; alerts go to `webhook` when there is one.
    pub fn new(
        rules: Vec<Rule>,
        webhook: Option<Arc<Webhook>>,
        audit: Arc<AuditLog>,
        lookups: Arc<dyn Lookups>,
    ) -> AlertEngine {
        let deliveries = webhook.map(|hook| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(webhook::deliver_loop(hook, audit.clone(), rx));
            tx
        });
        AlertEngine {
            evaluator: Evaluator::new(rules),
            store: audit.store().clone(),
            audit,
            lookups,
            deliveries,
            cursor: 0,
            pending: std::collections::VecDeque::new(),
        }
    }

    /// The engine following the trail from after `seq` instead of from the replayed window
    /// (benchmarks, tests).
    pub fn following_from(mut self, seq: u64) -> AlertEngine {
        self.cursor = seq;
        self
    }

    /// Runs until the process ends: replays the last window, then follows the trail.
    pub async fn run(mut self) {
        loop {
            match self.start().await {
                Ok(()) => break,
                Err(e) => {
                    tracing::error!(error = %e, "alerts: cannot read the audit trail; retrying");
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
            }
        }
        loop {
            match self.step().await {
                Ok(0) => tokio::time::sleep(POLL).await,
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(error = %e, "alerts: evaluation paused; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Sets the cursor before the replayed stretch, and reads the alerts and deliveries
    /// already in it.
    pub async fn start(&mut self) -> Result<(), AuditError> {
        let since = now_millis().saturating_sub(self.evaluator.longest_window_ms());
        self.cursor = self.first_seq_at(since).await?.saturating_sub(1);
        let alerts = self.all(ALERT_ACTION, since).await?;
        let delivered: HashSet<String> = self
            .all(ALERT_DELIVERED_ACTION, since)
            .await?
            .into_iter()
            .map(|e| e.request_id)
            .collect();
        // Oldest first, as they were raised.
        for entry in alerts.into_iter().rev() {
            if let Some(alert) = &entry.alert {
                self.evaluator.note_alert(alert);
            }
            if !delivered.contains(&entry.request_id)
                && let Some(tx) = &self.deliveries
            {
                let _ = tx.send(entry);
            }
        }
        Ok(())
    }

    /// Every entry of the server with `action` since `since`, newest first.
    async fn all(&self, action: &str, since: i64) -> Result<Vec<AuditEntry>, AuditError> {
        system_entries(&self.store, action, since, usize::MAX).await
    }

    /// The first seq whose time is at or after `since` (the next seq when there is none):
    /// a binary search over seqs, entries' times rising with their seqs (within the few ms
    /// that concurrent requests take to append).
    async fn first_seq_at(&self, since: i64) -> Result<u64, AuditError> {
        let next = self.store.audit_tail().await?.seq;
        let (mut lo, mut hi) = (1u64, next);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.store.audit_entry(mid).await? {
                Some(row) if row.time >= since => hi = mid,
                _ => lo = mid + 1,
            }
        }
        Ok(lo)
    }

    /// Evaluates the next page of entries after the cursor; how many there were.
    pub async fn step(&mut self) -> Result<usize, AuditError> {
        self.flush().await?;
        let rows = self.store.audit_bodies(self.cursor, PAGE).await?;
        for (seq, body) in &rows {
            // Parsed, not checked for its canonical form: this is a reader of the trail, not
            // its verifier (`audit verify` and the checkpoints are), and the check would
            // double the cost of following it. An entry that does not parse is skipped (and
            // logged): it must not stop detection for everything after it.
            let Ok(entry) = serde_json::from_slice::<AuditEntry>(body) else {
                tracing::error!(seq, "alerts: an audit entry does not parse; skipped");
                self.cursor = *seq;
                continue;
            };
            let findings = self.evaluator.observe(&entry);
            for finding in findings {
                if let Some(alert) = self.confirm(finding, &entry).await {
                    self.evaluator.note_alert(&alert);
                    self.pending.push_back(alert);
                }
            }
            // The entry is evaluated (once: its alerts wait in `pending` until written, so a
            // failed append is retried without counting the entry again).
            self.cursor = *seq;
            self.flush().await?;
        }
        Ok(rows.len())
    }

    /// Writes the alerts raised and not yet written, oldest first.
    async fn flush(&mut self) -> Result<(), AuditError> {
        while let Some(alert) = self.pending.front().cloned() {
            self.write_alert(alert).await?;
            self.pending.pop_front();
        }
        Ok(())
    }

    /// The alert of a finding whose condition holds.
    async fn confirm(&mut self, finding: Finding, entry: &AuditEntry) -> Option<AlertRecord> {
        // The alerts of this same entry may have made the rule quiet meanwhile.
        if self.evaluator.is_quiet(finding.alert(), entry.time) {
            return None;
        }
        let checked = match finding {
            Finding::Raise(alert) => Ok(Some(alert)),
            Finding::IfNoCare {
                alert,
                user,
                patient,
            } => self
                .lookups
                .has_care(&user, &patient)
                .await
                .map(|care| (!care).then_some(alert)),
            Finding::IfNewAddress {
                alert,
                address,
                lookback_ms,
            } => self.history(entry, lookback_ms).await.map(|h| {
                // A principal's first use is not a new address; and it is known now.
                let new = h.any && !h.addresses.contains(&address);
                self.evaluator.note_known_address(&entry.actor_id, &address);
                new.then_some(alert)
            }),
            Finding::IfUnusualBulk { alert, lookback_ms } => {
                self.history(entry, lookback_ms).await.map(|h| {
                    self.evaluator.note_known_bulk(&entry.actor_id);
                    (!h.bulk).then_some(alert)
                })
            }
            Finding::IfSelfOrNewGrantee { alert, patient } => {
                let window = self
                    .evaluator
                    .rules()
                    .iter()
                    .find(|r| r.name == alert.rule)
                    .map_or(0, |r| r.window_ms);
                self.lookups.grantees(&patient).await.map(|grantees| {
                    let suspicious = grantees.iter().any(|g| {
                        (g.granted_ms - entry.time).abs() <= GRANT_SKEW_MS
                            && (g.user_id == entry.actor_id
                                || entry.time - g.user_created_ms < window)
                    });
                    suspicious.then_some(alert)
                })
            }
        };
        match checked {
            Ok(alert) => alert,
            Err(e) => {
                tracing::warn!(seq = entry.seq, error = %e, "alerts: a rule's check failed");
                None
            }
        }
    }

    /// What the trail says of the entry's actor in `lookback_ms` before it.
    async fn history(&self, entry: &AuditEntry, lookback_ms: i64) -> Result<History, String> {
        let mut query = AuditQuery {
            actor: Some(entry.actor_id.clone()),
            since: Some(entry.time.saturating_sub(lookback_ms)),
            before_seq: Some(entry.seq),
            ..AuditQuery::default()
        };
        let mut h = History::default();
        let mut read = 0usize;
        loop {
            let rows = self
                .store
                .audit_search(&query, PAGE)
                .await
                .map_err(|e| e.to_string())?;
            for row in &rows {
                let Some(e) = AuditEntry::from_canonical(&row.body) else {
                    continue;
                };
                if e.actor_id != entry.actor_id || e.outcome != Outcome::Allowed {
                    continue;
                }
                h.any = true;
                h.bulk |= is_bulk(&e.action);
                if let Some(a) = e.source_address {
                    h.addresses.insert(a);
                }
            }
            read += rows.len();
            match rows.last() {
                Some(last) if rows.len() == PAGE as usize && read < HISTORY_LIMIT => {
                    query.before_seq = Some(last.seq);
                }
                _ => return Ok(h),
            }
        }
    }

    /// Writes an alert's entry and hands it to the webhook.
    async fn write_alert(&mut self, alert: AlertRecord) -> Result<(), AuditError> {
        tracing::warn!(
            rule = %alert.rule,
            kind = %alert.kind,
            subject_kind = %alert.subject_kind,
            count = alert.count,
            "alert raised"
        );
        let mut entry = alert_entry(alert);
        entry.seq = self.audit.append(&entry).await?;
        if let Some(tx) = &self.deliveries {
            let _ = tx.send(entry);
        }
        Ok(())
    }
}

/// What a principal did in a lookback.
#[derive(Debug, Default)]
struct History {
    any: bool,
    bulk: bool,
    addresses: HashSet<String>,
}

/// The entry recording that `alert` (an alert's entry) reached the webhook: same request id.
pub(crate) fn delivered_entry(alert: &AuditEntry) -> AuditEntry {
    AuditEntry {
        action: ALERT_DELIVERED_ACTION.to_owned(),
        request_id: alert.request_id.clone(),
        alert: None,
        via_client: None,
        ..system_entry()
    }
}

/// Up to `limit` entries of the server (actor [`SYSTEM_ACTOR`]) with `action` since
/// `since`, newest first: read through the trail's (actor, time) index, the action checked
/// in each body (the action column holds only the FHIR action code).
pub(crate) async fn system_entries(
    store: &Store,
    action: &str,
    since: i64,
    limit: usize,
) -> Result<Vec<AuditEntry>, AuditError> {
    let mut query = AuditQuery {
        actor: Some(SYSTEM_ACTOR.to_owned()),
        since: Some(since),
        ..AuditQuery::default()
    };
    let mut out = Vec::new();
    loop {
        let rows = store.audit_search(&query, PAGE).await?;
        for row in &rows {
            let entry = AuditEntry::from_canonical(&row.body)
                .ok_or(AuditError::Malformed { seq: row.seq })?;
            if entry.action == action && entry.actor_kind == ActorKind::System {
                out.push(entry);
                if out.len() >= limit {
                    return Ok(out);
                }
            }
        }
        match rows.last() {
            Some(last) if rows.len() == PAGE as usize => query.before_seq = Some(last.seq),
            _ => return Ok(out),
        }
    }
}

/// The audit entry of an alert: the server's, about no patient.
pub fn alert_entry(alert: AlertRecord) -> AuditEntry {
    AuditEntry {
        alert: Some(alert),
        via_client: None,
        ..system_entry()
    }
}

fn system_entry() -> AuditEntry {
    AuditEntry {
        seq: 0,
        time: now_millis(),
        actor_id: SYSTEM_ACTOR.to_owned(),
        actor_kind: ActorKind::System,
        role: None,
        purpose: None,
        break_glass: false,
        action: ALERT_ACTION.to_owned(),
        resource_type: None,
        resource_id: None,
        patient_id: None,
        outcome: Outcome::Allowed,
        source_address: None,
        request_id: uuid::Uuid::new_v4().to_string(),
        actor_ref: None,
        patients: Vec::new(),
        refusals: None,
        configuration: None,
        labels: Vec::new(),
        alert: None,
        via_client: None,
    }
}
