//! The rules' state over the entries seen so far, and what each new entry makes of it.
//!
//! [`Evaluator::observe`] is synchronous and does no I/O: it updates the windows and returns
//! [`Finding`]s. A finding either raises an alert at once, or raises one only if a fact the
//! trail alone does not hold turns out as feared (no care relationship, no earlier use of an
//! address or of bulk exports); the engine checks those ([`crate::engine`]).
//!
//! Invariants:
//! - Windows slide on the entries' own times, not on the clock: replaying a stretch of the
//!   trail gives the same alerts as living through it.
//! - One alert per rule and subject per window: after an alert, the rule stays quiet about
//!   that subject until `window` has passed ([`Evaluator::is_quiet`]). Alerts already in
//!   the trail set the same quiet time ([`Evaluator::note_alert`]), so a restart that
//!   replays the last window does not repeat them.
//! - Alert entries are never counted, and entries of actor kind system (the server's own,
//!   the operator's CLI commands) only by the rule on grants (an operator granting a new
//!   account access).

use std::collections::{HashMap, HashSet, VecDeque};

use phivault_audit::{AccessKind, ActorKind, AlertRecord, AuditEntry, Outcome};
use time::OffsetDateTime;

use crate::config::{Rule, RuleKind};

/// What an entry made a rule find.
#[derive(Debug, Clone, PartialEq)]
pub enum Finding {
    /// Raise this alert.
    Raise(AlertRecord),
    /// Raise it if `user` has no care relationship with `patient`.
    IfNoCare {
        /// The alert.
        alert: AlertRecord,
        /// The user.
        user: String,
        /// The patient.
        patient: String,
    },
    /// Raise it if the actor used `address` in the rule's lookback before this entry (and
    /// had used the server at all then: a principal's very first use is not "new").
    IfNewAddress {
        /// The alert.
        alert: AlertRecord,
        /// The address.
        address: String,
        /// The rule's lookback, ms.
        lookback_ms: i64,
    },
    /// Raise it if the actor ran no export or `$everything` in the rule's lookback before
    /// this entry.
    IfUnusualBulk {
        /// The alert.
        alert: AlertRecord,
        /// The rule's lookback, ms.
        lookback_ms: i64,
    },
    /// Raise it if the grant this entry recorded went to its author, or to an account
    /// created less than the rule's window before.
    IfSelfOrNewGrantee {
        /// The alert.
        alert: AlertRecord,
        /// The patient the grant is about.
        patient: String,
    },
}

impl Finding {
    /// The alert the finding would raise.
    pub fn alert(&self) -> &AlertRecord {
        match self {
            Finding::Raise(a)
            | Finding::IfNoCare { alert: a, .. }
            | Finding::IfNewAddress { alert: a, .. }
            | Finding::IfUnusualBulk { alert: a, .. }
            | Finding::IfSelfOrNewGrantee { alert: a, .. } => a,
        }
    }
}

/// Distinct keys (patients) in a sliding window, with the seq of the oldest entry counted.
#[derive(Debug, Default)]
struct Distinct {
    events: VecDeque<(i64, u64, String)>,
    counts: HashMap<String, u32>,
    /// The highest count of each day (unix days), the latest last: the principal's usual
    /// peak. At most [`BASELINE_DAYS`] days are kept.
    peaks: VecDeque<(i64, usize)>,
}

/// Days of peaks kept for a baseline.
const BASELINE_DAYS: usize = 14;

/// The least count a baseline alone raises an alert for: a principal who usually sees two
/// patients and today sees seven is not an incident.
const BASELINE_FLOOR: usize = 10;

impl Distinct {
    fn add(&mut self, time: i64, seq: u64, key: &str, window_ms: i64) -> usize {
        while let Some((t, _, k)) = self.events.front() {
            if *t > time - window_ms {
                break;
            }
            if let Some(n) = self.counts.get_mut(k) {
                *n -= 1;
                if *n == 0 {
                    self.counts.remove(k);
                }
            }
            self.events.pop_front();
        }
        self.events.push_back((time, seq, key.to_owned()));
        *self.counts.entry(key.to_owned()).or_default() += 1;
        let count = self.counts.len();
        let day = time.div_euclid(86_400_000);
        match self.peaks.back_mut() {
            Some((d, peak)) if *d == day => *peak = (*peak).max(count),
            _ => {
                self.peaks.push_back((day, count));
                if self.peaks.len() > BASELINE_DAYS + 1 {
                    self.peaks.pop_front();
                }
            }
        }
        count
    }

    /// The highest daily peak before today, if any day before today was seen.
    fn baseline(&self, time: i64) -> Option<usize> {
        let today = time.div_euclid(86_400_000);
        self.peaks
            .iter()
            .filter(|(d, _)| *d < today)
            .map(|(_, p)| *p)
            .max()
    }

    fn first_seq(&self) -> u64 {
        self.events.front().map_or(0, |e| e.1)
    }
}

/// A sum over a sliding window (denials, where one summary entry counts many).
#[derive(Debug, Default)]
struct Sum {
    events: VecDeque<(i64, u64, u64)>,
    total: u64,
}

impl Sum {
    fn add(&mut self, time: i64, seq: u64, n: u64, window_ms: i64) -> u64 {
        while let Some((t, _, k)) = self.events.front() {
            if *t > time - window_ms {
                break;
            }
            self.total -= k;
            self.events.pop_front();
        }
        self.events.push_back((time, seq, n));
        self.total += n;
        self.total
    }

    fn first_seq(&self) -> u64 {
        self.events.front().map_or(0, |e| e.1)
    }
}

/// The state of every rule.
#[derive(Debug)]
pub struct Evaluator {
    rules: Vec<Rule>,
    /// Per rule index and subject: distinct patients in the window.
    distinct: Vec<HashMap<String, Distinct>>,
    /// Per rule index and subject: refused requests in the window.
    denials: Vec<HashMap<String, Sum>>,
    /// Per rule name and subject key: no alert before this time (ms).
    quiet: HashMap<(String, String), i64>,
    /// Actors already known to have used an address / bulk access (the engine fills these
    /// once it has looked at the trail, and the evaluator as it sees more).
    known_addresses: HashMap<String, HashSet<String>>,
    known_bulk: HashSet<String>,
}

impl Evaluator {
    /// An evaluator of `rules`, with empty windows.
    pub fn new(rules: Vec<Rule>) -> Evaluator {
        Evaluator {
            distinct: rules.iter().map(|_| HashMap::new()).collect(),
            denials: rules.iter().map(|_| HashMap::new()).collect(),
            rules,
            quiet: HashMap::new(),
            known_addresses: HashMap::new(),
            known_bulk: HashSet::new(),
        }
    }

    /// The rules.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The longest window of any rule (what a restart replays).
    pub fn longest_window_ms(&self) -> i64 {
        self.rules.iter().map(|r| r.window_ms).max().unwrap_or(0)
    }

    /// An alert already raised (read back from the trail, or just written): its rule stays
    /// quiet about its subject for a window from its time.
    pub fn note_alert(&mut self, alert: &AlertRecord) {
        let window = self
            .rules
            .iter()
            .find(|r| r.name == alert.rule)
            .map_or(0, |r| r.window_ms);
        let until = alert.to.saturating_add(window);
        let key = (alert.rule.clone(), quiet_key(alert));
        let slot = self.quiet.entry(key).or_insert(until);
        *slot = (*slot).max(until);
    }

    /// The engine found that `actor` has used `address` (or that it is the actor's first
    /// use, which is not "new").
    pub fn note_known_address(&mut self, actor: &str, address: &str) {
        self.remember_address(actor, address);
    }

    /// Whether `actor` is known to have used `address`.
    fn knows_address(&self, actor: &str, address: &str) -> bool {
        self.known_addresses
            .get(actor)
            .is_some_and(|set| set.contains(address))
    }

    /// Remembers that `actor` used `address` (allocating only the first time).
    fn remember_address(&mut self, actor: &str, address: &str) {
        if !self.knows_address(actor, address) {
            self.known_addresses
                .entry(actor.to_owned())
                .or_default()
                .insert(address.to_owned());
        }
    }

    /// The engine found earlier bulk access by `actor`.
    pub fn note_known_bulk(&mut self, actor: &str) {
        self.known_bulk.insert(actor.to_owned());
    }

    /// Whether `alert`'s rule is still quiet about its subject at `time` (an alert of the
    /// same rule and subject was raised less than a window before).
    pub fn is_quiet(&self, alert: &AlertRecord, time: i64) -> bool {
        self.quiet
            .get(&(alert.rule.clone(), quiet_key(alert)))
            .is_some_and(|until| time < *until)
    }

    /// What entry `entry` (already in the trail, with its seq) makes the rules find. The
    /// caller raises what it decides to raise through [`Evaluator::note_alert`].
    pub fn observe(&mut self, entry: &AuditEntry) -> Vec<Finding> {
        if let Some(alert) = &entry.alert {
            self.note_alert(alert);
            return Vec::new();
        }
        // The server's own entries and the operator's commands (actor kind system) are not
        // a principal's use of data; only the operator's grants are watched.
        let system = entry.actor_kind == ActorKind::System;
        let mut found = Vec::new();
        for i in 0..self.rules.len() {
            let rule = &self.rules[i];
            if system && rule.kind != RuleKind::SelfGrant {
                continue;
            }
            let finding = match rule.kind {
                RuleKind::DistinctPatients => self.distinct_patients(i, entry),
                RuleKind::BreakGlass => self.break_glass(i, entry),
                RuleKind::RepeatedDenials => self.denials(i, entry),
                RuleKind::OffHours => off_hours(rule, entry).map(Finding::Raise),
                RuleKind::NewAddress => self.new_address(i, entry),
                RuleKind::UnusualBulk => self.unusual_bulk(i, entry),
                RuleKind::LabelledAccess => {
                    found.extend(labelled_access(rule, entry));
                    None
                }
                RuleKind::SelfGrant => self_grant(rule, entry),
            };
            found.extend(finding);
        }
        // What the trail says of this entry is known from now on.
        if entry.outcome == Outcome::Allowed {
            if let Some(address) = &entry.source_address {
                self.remember_address(&entry.actor_id, address);
            }
            if is_bulk(&entry.action) && !self.known_bulk.contains(&entry.actor_id) {
                self.known_bulk.insert(entry.actor_id.clone());
            }
        }
        found.retain(|f| !self.is_quiet(f.alert(), entry.time));
        found
    }

    fn watched(rule: &Rule, entry: &AuditEntry) -> bool {
        let kind_ok = rule.actor_kinds.contains(&entry.actor_kind);
        let role_ok = rule.roles.as_ref().is_none_or(|roles| {
            entry
                .role
                .as_ref()
                .is_some_and(|r| roles.iter().any(|x| x == r))
        });
        kind_ok && role_ok
    }

    fn distinct_patients(&mut self, i: usize, entry: &AuditEntry) -> Option<Finding> {
        let rule = &self.rules[i];
        let reads = matches!(
            AccessKind::of(&entry.action),
            AccessKind::Read | AccessKind::Search | AccessKind::Export
        );
        if entry.outcome != Outcome::Allowed || !reads || !Self::watched(rule, entry) {
            return None;
        }
        let patients = entry.patients_concerned();
        if patients.is_empty() {
            return None;
        }
        let window = slot(&mut self.distinct[i], &entry.actor_id)?;
        let baseline = window.baseline(entry.time);
        let mut count = 0;
        for p in &patients {
            count = window.add(entry.time, entry.seq, p, rule.window_ms);
        }
        let over_threshold = count as u64 > rule.threshold;
        let over_baseline = match (rule.baseline_factor, baseline) {
            (Some(f), Some(b)) => count >= BASELINE_FLOOR && count > (f as usize).saturating_mul(b),
            _ => false,
        };
        if !(over_threshold || over_baseline) {
            return None;
        }
        let threshold = if over_threshold {
            rule.threshold
        } else {
            baseline.map_or(0, |b| b as u64)
        };
        Some(Finding::Raise(record(
            rule,
            entry,
            subject(entry),
            count as u64,
            threshold,
            window.first_seq(),
        )))
    }

    fn break_glass(&mut self, i: usize, entry: &AuditEntry) -> Option<Finding> {
        let rule = &self.rules[i];
        if entry.outcome != Outcome::Allowed || !entry.break_glass {
            return None;
        }
        let patients = entry.patients_concerned();
        let window = slot(&mut self.distinct[i], &entry.actor_id)?;
        let mut count = window.counts.len();
        for p in &patients {
            count = window.add(entry.time, entry.seq, p, rule.window_ms);
        }
        (count as u64 > rule.threshold).then(|| {
            Finding::Raise(record(
                rule,
                entry,
                subject(entry),
                count as u64,
                rule.threshold,
                window.first_seq(),
            ))
        })
    }

    fn denials(&mut self, i: usize, entry: &AuditEntry) -> Option<Finding> {
        let rule = &self.rules[i];
        if entry.outcome != Outcome::Denied {
            return None;
        }
        let who = subject(entry);
        // A summary of one address's refusals counts the first of them, which has an entry
        // of its own (counted when it was seen); the overflow summary's addresses had none.
        let n = match (&entry.refusals, &entry.source_address) {
            (None, _) => 1,
            (Some(r), Some(_)) => r.count.saturating_sub(1),
            (Some(r), None) => r.count,
        };
        if n == 0 {
            return None;
        }
        let sum = slot(&mut self.denials[i], &who.1)?;
        let total = sum.add(entry.time, entry.seq, n, rule.window_ms);
        (total > rule.threshold).then(|| {
            Finding::Raise(record(
                rule,
                entry,
                who,
                total,
                rule.threshold,
                sum.first_seq(),
            ))
        })
    }

    fn new_address(&self, i: usize, entry: &AuditEntry) -> Option<Finding> {
        let rule = &self.rules[i];
        let address = entry.source_address.as_ref()?;
        if entry.outcome != Outcome::Allowed
            || !rule.actor_kinds.contains(&entry.actor_kind)
            || self.knows_address(&entry.actor_id, address)
        {
            return None;
        }
        let mut alert = record(rule, entry, subject(entry), 1, 0, entry.seq);
        alert.subject_kind = format!("{}@address", alert.subject_kind);
        alert.subject = format!("{}@{address}", entry.actor_id);
        Some(Finding::IfNewAddress {
            alert,
            address: address.clone(),
            lookback_ms: rule.lookback_ms,
        })
    }

    fn unusual_bulk(&self, i: usize, entry: &AuditEntry) -> Option<Finding> {
        let rule = &self.rules[i];
        if entry.outcome != Outcome::Allowed
            || !is_bulk(&entry.action)
            || matches!(entry.actor_kind, ActorKind::Anonymous)
            || self.known_bulk.contains(&entry.actor_id)
        {
            return None;
        }
        Some(Finding::IfUnusualBulk {
            alert: record(rule, entry, subject(entry), 1, 0, entry.seq),
            lookback_ms: rule.lookback_ms,
        })
    }
}

/// The state kept for `key`, created empty the first time (the key is copied only then).
/// Always `Some`; an `Option` so that no path can panic.
fn slot<'a, T: Default>(map: &'a mut HashMap<String, T>, key: &str) -> Option<&'a mut T> {
    if !map.contains_key(key) {
        map.insert(key.to_owned(), T::default());
    }
    map.get_mut(key)
}

/// Whether an action is a Bulk Data export kick-off or `$everything`.
pub fn is_bulk(action: &str) -> bool {
    action.ends_with("/$export") || action.contains("$everything")
}

/// The actions that grant a user access to a patient.
pub const GRANT_ACTIONS: [&str; 2] = ["POST /admin/users/{username}/grants", "cli user grant"];

/// The key a rule's quiet time is kept under: the subject, and for labelled access the
/// patient too (one alert per patient reached, not one per user).
fn quiet_key(alert: &AlertRecord) -> String {
    alert.subject.clone()
}

/// Whom an entry is about: the actor, or an anonymous caller's address.
fn subject(entry: &AuditEntry) -> (String, String) {
    match entry.actor_kind {
        ActorKind::Anonymous => (
            "address".to_owned(),
            entry
                .source_address
                .clone()
                .unwrap_or_else(|| "-".to_owned()),
        ),
        kind => (
            match kind {
                ActorKind::User => "user",
                ActorKind::Client => "client",
                ActorKind::System => "system",
                ActorKind::Anonymous => "anonymous",
            }
            .to_owned(),
            entry.actor_id.clone(),
        ),
    }
}

fn record(
    rule: &Rule,
    entry: &AuditEntry,
    (subject_kind, subject): (String, String),
    count: u64,
    threshold: u64,
    first_seq: u64,
) -> AlertRecord {
    AlertRecord {
        rule: rule.name.clone(),
        kind: rule.kind.as_str().to_owned(),
        subject,
        subject_kind,
        count,
        threshold,
        from: entry.time.saturating_sub(rule.window_ms),
        to: entry.time,
        first_seq: if first_seq == 0 { entry.seq } else { first_seq },
        last_seq: entry.seq,
    }
}

fn off_hours(rule: &Rule, entry: &AuditEntry) -> Option<AlertRecord> {
    if entry.actor_kind != ActorKind::User || !Evaluator::watched(rule, entry) {
        return None;
    }
    let at = OffsetDateTime::from_unix_timestamp_nanos(i128::from(entry.time) * 1_000_000)
        .ok()?
        .to_offset(rule.utc_offset);
    let minute = u32::from(at.hour()) * 60 + u32::from(at.minute());
    let day = usize::from(at.weekday().number_days_from_monday());
    let (start, end) = rule.hours;
    let in_hours = if start < end {
        (start..end).contains(&minute)
    } else {
        minute >= start || minute < end
    };
    // A shift that spans midnight belongs to the day it started on.
    let shift_day = if start > end && minute < end {
        (day + 6) % 7
    } else {
        day
    };
    if in_hours && rule.days[shift_day] {
        return None;
    }
    Some(record(rule, entry, subject(entry), 1, 0, entry.seq))
}

fn labelled_access(rule: &Rule, entry: &AuditEntry) -> Vec<Finding> {
    if entry.outcome != Outcome::Allowed
        || entry.actor_kind != ActorKind::User
        || !Evaluator::watched(rule, entry)
        || !entry.labels.iter().any(|l| rule.labels.contains(l))
    {
        return Vec::new();
    }
    entry
        .patients_concerned()
        .into_iter()
        .map(|patient| {
            let mut alert = record(rule, entry, subject(entry), 1, 0, entry.seq);
            // One alert per (user, patient): the subject names both.
            alert.subject = format!("{}/Patient/{patient}", entry.actor_id);
            alert.subject_kind = "user/patient".to_owned();
            Finding::IfNoCare {
                alert,
                user: entry.actor_id.clone(),
                patient,
            }
        })
        .collect()
}

fn self_grant(rule: &Rule, entry: &AuditEntry) -> Option<Finding> {
    if entry.outcome != Outcome::Allowed || !GRANT_ACTIONS.contains(&entry.action.as_str()) {
        return None;
    }
    let patient = entry.patient_id.clone()?;
    // About the granting account: one alert per window however many patients it grants.
    let alert = record(rule, entry, subject(entry), 1, 0, entry.seq);
    Some(Finding::IfSelfOrNewGrantee { alert, patient })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#[path = "rules_tests.rs"]
mod tests;
