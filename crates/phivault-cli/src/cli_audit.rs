//! The audit trail of CLI commands (DESIGN.md invariant 2, issue 5: "an audit entry for every
//! request and every CLI operation that touches data").
//!
//! Every command that touches data writes entries as the system actor `cli:<OS user>` (from
//! `$USER`, else `$LOGNAME`, else `cli`), with no role and no purpose, a fresh request id per
//! run shared by all the run's entries, and the action `cli <command>`:
//! - `import` writes through the store with [`CliAudit`] as its [`AuditSink`]: each imported
//!   resource gets an entry (`create`, `update` or `delete`, type, id, patient) inside the
//!   transaction that writes it, so no resource is stored without its entry; then one
//!   `cli import` entry for the run (outcome `error` when anything failed);
//! - `erase` writes its `erase` entry (Patient, id, patient) inside the erasure's transaction
//!   (the store's [`AuditSink`]), then one `cli erase` entry for the run with its outcome;
//! - `backup` signs a checkpoint of the trail, takes the snapshot, then appends `cli backup`
//!   with its outcome (after the snapshot, so it is not in the archive); `restore` appends
//!   `cli restore` to the restored trail once the restore has committed;
//! - `keys rotate` and `keys rotate-master` append one entry (`cli keys rotate`,
//!   `cli keys rotate-master`) after the rotation, with its outcome;
//! - `deidentify` appends one `cli deidentify` entry once the export is written (before it is
//!   moved into place, so an export whose entry cannot be written is removed), with purpose
//!   of use HRESCH, the de-identification configuration's SHA-256 (`configuration`) and every
//!   patient whose records the export released (outcome `error`, naming no patient, when the
//!   run failed);
//! - the administration commands that change accounts (`user add|link-patient|
//!   link-practitioner|grant|disable`, `client add|disable`) write their one entry (`cli user add`, ...,
//!   outcome allowed) inside the change's transaction, through the store's [`AccountSink`]:
//!   when it cannot be written the change is rolled back and the command fails, saying so.
//!   A command that fails before or instead of changing anything appends its entry with
//!   outcome `error` afterwards; `break-glass list`, `breach report` and `alerts list` (reads
//!   of the accounts or the trail) append their entry after the read;
//! - `breach notify` appends one `cli breach notify` entry naming every patient written to,
//!   before the letters are moved into place.
//!
//! Not audited: `audit verify|prove|check-proof` (verification must not change the trail it
//! checks, and a proof is of the trail as it is), `keys status` (ids, times and counts of
//! keys, no data), `init` (creates an empty store), `bench` (a
//! fresh temporary store of synthetic data), `policy check` (reads a file, not the store) and
//! `serve` (the server audits each of its requests itself).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, anyhow};
use phivault_audit::{ActorKind, AuditEntry, AuditLog, Outcome};
use phivault_fhir::Id;
use phivault_policy::Purpose;
use phivault_store::{
    AccountChange, AccountSink, AnyConnection, AuditSink, SinkFuture, Store, StoreError, Written,
};

/// The audit context of one CLI run.
pub(crate) struct CliAudit {
    log: Arc<AuditLog>,
    actor: String,
    /// `cli <command>`.
    action: String,
    request_id: String,
    /// The command's own entry was appended inside an account change's transaction (it is
    /// committed once the change returned Ok).
    recorded_in_change: AtomicBool,
}

impl std::fmt::Debug for CliAudit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CliAudit")
            .field("actor", &self.actor)
            .field("action", &self.action)
            .field("request_id", &self.request_id)
            .finish_non_exhaustive()
    }
}

/// `cli:<OS user>` from `user` (`$USER`) or `logname` (`$LOGNAME`), else `cli`.
fn actor_of(user: Option<String>, logname: Option<String>) -> String {
    [user, logname]
        .into_iter()
        .flatten()
        .map(|u| u.trim().to_owned())
        .find(|u| !u.is_empty())
        .map_or_else(|| "cli".to_owned(), |u| format!("cli:{u}"))
}

/// Now, in unix milliseconds.
fn now_millis() -> i64 {
    let t = time::OffsetDateTime::now_utc();
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

impl CliAudit {
    /// The audit context of `phivault <command>` (e.g. `user add`) on `store`'s trail.
    pub(crate) async fn open(store: &Store, command: &str) -> Result<CliAudit> {
        let log = AuditLog::open(store.clone())
            .await
            .context("opening the audit trail")?;
        Ok(CliAudit {
            log: Arc::new(log),
            actor: actor_of(std::env::var("USER").ok(), std::env::var("LOGNAME").ok()),
            action: format!("cli {command}"),
            request_id: uuid::Uuid::new_v4().to_string(),
            recorded_in_change: AtomicBool::new(false),
        })
    }

    fn entry(
        &self,
        action: String,
        resource: Option<(String, String)>,
        patient: Option<String>,
        outcome: Outcome,
    ) -> AuditEntry {
        let (resource_type, resource_id) = resource.unzip();
        AuditEntry {
            seq: 0,
            time: now_millis(),
            actor_id: self.actor.clone(),
            actor_kind: ActorKind::System,
            role: None,
            purpose: None,
            break_glass: false,
            action,
            resource_type,
            resource_id,
            patient_id: patient,
            outcome,
            source_address: None,
            request_id: self.request_id.clone(),
            actor_ref: None,
            patients: Vec::new(),
            refusals: None,
            configuration: None,
            labels: Vec::new(),
            alert: None,
            via_client: None,
        }
    }

    /// Appends the command's own entry (`cli <command>`) with `outcome`, naming `resource`
    /// (type and id) and `patient` when the command was about them.
    pub(crate) async fn command_entry(
        &self,
        outcome: Outcome,
        resource: Option<(&str, &Id)>,
        patient: Option<&Id>,
    ) -> Result<()> {
        let entry = self.entry(
            self.action.clone(),
            resource.map(|(t, id)| (t.to_owned(), id.to_string())),
            patient.map(ToString::to_string),
            outcome,
        );
        self.log.append(&entry).await.map(|_| ()).map_err(|e| {
            anyhow!(
                "the audit entry of `phivault {}` could not be written: {e}",
                self.command()
            )
        })
    }

    /// Appends the command's own entry for a release of patients' records for `purpose`
    /// (`deidentify`): `outcome`, the purpose of use, the de-identification `configuration`
    /// (SHA-256, hex) it ran with, and every patient whose records it released (`patient_id`
    /// when there is one, else the `patients` list), so that each finds it in their access
    /// log.
    pub(crate) async fn release_entry(
        &self,
        outcome: Outcome,
        purpose: Purpose,
        configuration: &str,
        patients: Vec<String>,
    ) -> Result<()> {
        let mut entry = self.patients_entry(outcome, patients);
        entry.purpose = Some(purpose.as_str().to_owned());
        entry.configuration = Some(configuration.to_owned());
        self.append(&entry).await
    }

    /// Appends the command's own entry with `outcome`, naming every patient of `patients`
    /// (`breach notify`: those written to), so that each finds it in their access log.
    pub(crate) async fn about_patients(
        &self,
        outcome: Outcome,
        patients: Vec<String>,
    ) -> Result<()> {
        self.append(&self.patients_entry(outcome, patients)).await
    }

    /// The command's entry naming `patients`: `patient_id` when there is one, else the
    /// `patients` list.
    fn patients_entry(&self, outcome: Outcome, patients: Vec<String>) -> AuditEntry {
        let single = match patients.as_slice() {
            [one] => Some(one.clone()),
            _ => None,
        };
        let mut entry = self.entry(self.action.clone(), None, single, outcome);
        entry.set_patients(patients);
        entry
    }

    async fn append(&self, entry: &AuditEntry) -> Result<()> {
        self.log.append(entry).await.map(|_| ()).map_err(|e| {
            anyhow!(
                "the audit entry of `phivault {}` could not be written: {e}",
                self.command()
            )
        })
    }

    /// Appends the command's entry for `result` (allowed when Ok, error otherwise) and returns
    /// `result`; when the entry cannot be written, that is the command's failure (after the
    /// command's own error, if any). A successful account change committed the entry with
    /// itself ([`AccountSink`]): nothing more is appended then.
    pub(crate) async fn finish<T>(
        &self,
        result: Result<T>,
        resource: Option<(&str, &Id)>,
        patient: Option<&Id>,
    ) -> Result<T> {
        if result.is_ok() && self.recorded_in_change.load(Ordering::SeqCst) {
            return result;
        }
        let outcome = if result.is_ok() {
            Outcome::Allowed
        } else {
            Outcome::Error
        };
        let recorded = self.command_entry(outcome, resource, patient).await;
        match (result, recorded) {
            (Ok(value), Ok(())) => Ok(value),
            (Ok(_), Err(audit)) => Err(audit),
            (Err(e), Ok(())) => Err(e),
            (Err(e), Err(audit)) => Err(anyhow!("{e:#} (and {audit:#})")),
        }
    }

    /// The audit trail (whose key signs erasure certificates).
    pub(crate) fn log(&self) -> &AuditLog {
        &self.log
    }

    /// `<command>` of `cli <command>`.
    fn command(&self) -> &str {
        self.action.strip_prefix("cli ").unwrap_or(&self.action)
    }
}

impl AuditSink for CliAudit {
    /// One entry per written resource (`create`, `update`, `delete`), in the write's
    /// transaction.
    fn record<'a>(&'a self, conn: &'a mut AnyConnection, written: &'a [Written]) -> SinkFuture<'a> {
        Box::pin(async move {
            let entries: Vec<_> = written
                .iter()
                .map(|w| {
                    self.entry(
                        w.kind.as_str().to_owned(),
                        Some((w.rtype.to_string(), w.id.to_string())),
                        w.patient.as_ref().map(ToString::to_string),
                        Outcome::Allowed,
                    )
                })
                .collect();
            self.log
                .append_all_in(conn, &entries)
                .await
                .map_err(store_error)?;
            Ok(())
        })
    }
}

impl AccountSink for CliAudit {
    /// The command's own entry (`cli <command>`, outcome allowed, naming the change's resource
    /// and patient), in the change's transaction.
    fn record_account<'a>(
        &'a self,
        conn: &'a mut AnyConnection,
        change: &'a AccountChange,
    ) -> SinkFuture<'a> {
        Box::pin(async move {
            let entry = self.entry(
                self.action.clone(),
                change
                    .resource
                    .as_ref()
                    .map(|(t, id)| (t.to_string(), id.to_string())),
                change.patient.as_ref().map(ToString::to_string),
                Outcome::Allowed,
            );
            self.log
                .append_in(conn, &entry)
                .await
                .map_err(store_error)?;
            self.recorded_in_change.store(true, Ordering::SeqCst);
            Ok(())
        })
    }
}

/// An audit failure as the store's error (it rolls the transaction back).
fn store_error(e: phivault_audit::AuditError) -> StoreError {
    match e {
        phivault_audit::AuditError::Store(e) => e,
        other => StoreError::Config(format!("the audit entry could not be written: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_actor_is_the_os_user() {
        assert_eq!(actor_of(Some("ana".into()), Some("bo".into())), "cli:ana");
        assert_eq!(actor_of(None, Some("bo".into())), "cli:bo");
        assert_eq!(actor_of(Some(" ".into()), Some("bo".into())), "cli:bo");
        assert_eq!(actor_of(Some(String::new()), None), "cli");
        assert_eq!(actor_of(None, None), "cli");
    }
}
