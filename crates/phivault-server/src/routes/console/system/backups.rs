//! `GET /admin/console/backups`: the backups, backup checks and restores the audit trail
//! records (`phivault backup`, `backup verify` and `restore` append `cli backup`, `cli backup
//! verify` and `cli restore`), newest first, with when, by whom and the outcome.
//!
//! The trail's action column holds only the FHIR action code, so the page reads the newest
//! `E` (execute) entries a page at a time and keeps those whose body names one of the three
//! actions, written by a system actor (the CLI). It stops once it has [`SHOWN`] of them and
//! one of each kind, or after [`MAX_SCANNED`] entries, and then says how far back it looked:
//! the cost of a page view is bounded whatever the size of the trail.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use phivault_audit::{ActorKind, AuditEntry};
use phivault_store::audit::AuditQuery;
use phivault_store::{Store, StoreError};
use serde::Serialize;

use super::text::{backup_action, cli_user, outcome_words, when_ms};
use super::{failed, show};
use crate::AppState;
use crate::edge::AuditSlot;
use crate::web::session::{Area, signed_in};

/// The page's path.
const PATH: &str = "/admin/console/backups";
/// Entries listed at most.
pub(super) const SHOWN: usize = 20;
/// Entries of the trail read at most per page view.
pub(super) const MAX_SCANNED: u64 = 20_000;
/// Entries read per query.
const PAGE: u32 = 500;

/// One backup, check or restore as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(super) struct BackupRow {
    /// `Backup`, `Backup check` or `Restore`.
    pub(super) what: &'static str,
    /// When (UTC).
    pub(super) when: String,
    /// Who ran it (the OS user of the command line).
    pub(super) by: String,
    /// `succeeded`, `refused` or `failed`.
    pub(super) outcome: &'static str,
    /// Whether it succeeded.
    pub(super) ok: bool,
    /// The entry's seq.
    pub(super) seq: u64,
}

/// The row of `entry` when it records a backup, a check or a restore by the CLI.
pub(super) fn row_of(entry: &AuditEntry) -> Option<BackupRow> {
    if entry.actor_kind != ActorKind::System {
        return None;
    }
    let what = backup_action(&entry.action)?;
    Some(BackupRow {
        what,
        when: when_ms(entry.time),
        by: cli_user(&entry.actor_id),
        outcome: outcome_words(entry.outcome),
        ok: entry.outcome == phivault_audit::Outcome::Allowed,
        seq: entry.seq,
    })
}

/// Whether the search may stop: enough rows, and one of each kind among them.
fn enough(rows: &[BackupRow]) -> bool {
    rows.len() >= SHOWN
        && ["Backup", "Backup check", "Restore"]
            .iter()
            .all(|k| rows.iter().any(|r| r.what == *k))
}

/// The newest backup rows of the trail, and the number of entries read (see the module).
async fn recent(store: &Store) -> Result<(Vec<BackupRow>, u64, bool), StoreError> {
    let mut query = AuditQuery {
        action: Some("E".to_owned()),
        ..AuditQuery::default()
    };
    let mut rows = Vec::new();
    let mut scanned = 0u64;
    loop {
        let page = store.audit_search(&query, PAGE).await?;
        scanned += page.len() as u64;
        for stored in &page {
            // A body that does not parse is the verification's finding, not this page's.
            if let Some(row) = AuditEntry::from_canonical(&stored.body).and_then(|e| row_of(&e)) {
                rows.push(row);
            }
        }
        let complete = page.len() < PAGE as usize;
        match page.last() {
            Some(last) if !complete && scanned < MAX_SCANNED && !enough(&rows) => {
                query.before_seq = Some(last.seq);
            }
            _ => return Ok((rows, scanned, complete)),
        }
    }
}

/// `GET /admin/console/backups`.
pub(super) async fn page(
    State(state): State<AppState>,
    slot: AuditSlot,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = signed_in(&state, &slot, &headers, Area::Console, PATH).await {
        return r;
    }
    let (rows, scanned, complete) = match recent(&state.store).await {
        Ok(found) => found,
        Err(e) => return failed(&state, "reading the backups in the audit trail", &e),
    };
    let last = |what: &str| rows.iter().find(|r| r.what == what).cloned();
    let context = BackupsPage {
        last_backup: last("Backup"),
        last_check: last("Backup check"),
        last_restore: last("Restore"),
        rows: rows.iter().take(SHOWN).cloned().collect(),
        scanned,
        complete,
    };
    show(&state, &headers, "console/backups.html", "backups", context)
}

/// The backups page's values.
#[derive(Serialize)]
pub(super) struct BackupsPage {
    /// The newest backup found.
    pub(super) last_backup: Option<BackupRow>,
    /// The newest backup check found.
    pub(super) last_check: Option<BackupRow>,
    /// The newest restore found.
    pub(super) last_restore: Option<BackupRow>,
    /// The newest rows, at most [`SHOWN`].
    pub(super) rows: Vec<BackupRow>,
    /// Entries read.
    pub(super) scanned: u64,
    /// The whole trail was read.
    pub(super) complete: bool,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use phivault_audit::Outcome;

    use super::*;

    fn entry(action: &str, kind: ActorKind, outcome: Outcome) -> AuditEntry {
        AuditEntry {
            seq: 7,
            time: 0,
            actor_id: "cli:alice".to_owned(),
            actor_kind: kind,
            role: None,
            purpose: None,
            break_glass: false,
            action: action.to_owned(),
            resource_type: None,
            resource_id: None,
            patient_id: None,
            outcome,
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

    #[test]
    fn rows_are_the_clis_backups_checks_and_restores() {
        let row = row_of(&entry("cli backup", ActorKind::System, Outcome::Allowed)).unwrap();
        assert_eq!(
            row,
            BackupRow {
                what: "Backup",
                when: "1970-01-01 00:00:00 UTC".to_owned(),
                by: "alice (command line)".to_owned(),
                outcome: "succeeded",
                ok: true,
                seq: 7,
            }
        );
        let failed = row_of(&entry("cli restore", ActorKind::System, Outcome::Error)).unwrap();
        assert_eq!(
            (failed.what, failed.outcome, failed.ok),
            ("Restore", "failed", false)
        );
        // A person's request naming the same words is not a backup.
        assert!(row_of(&entry("cli backup", ActorKind::User, Outcome::Allowed)).is_none());
        assert!(row_of(&entry("cli import", ActorKind::System, Outcome::Allowed)).is_none());
    }

    #[test]
    fn the_search_stops_with_enough_of_each_kind() {
        let of = |what: &'static str| BackupRow {
            what,
            when: String::new(),
            by: String::new(),
            outcome: "succeeded",
            ok: true,
            seq: 1,
        };
        let mut rows: Vec<BackupRow> = (0..SHOWN).map(|_| of("Backup")).collect();
        assert!(!enough(&rows), "no check or restore yet");
        rows.push(of("Backup check"));
        assert!(!enough(&rows));
        rows.push(of("Restore"));
        assert!(enough(&rows));
        assert!(!enough(&rows[SHOWN..]), "too few rows");
    }
}
