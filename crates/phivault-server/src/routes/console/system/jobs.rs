//! The console's background work: a verification of the whole audit trail and a rotation of
//! the key-encryption key, each run as a task so that no request waits on a cost that grows
//! with the trail or the number of data keys.
//!
//! Rules it keeps:
//! - **One of each at a time per audit trail.** A start while one runs joins it instead of
//!   starting another ([`Jobs::start_verification`] hands back the running one's completion,
//!   [`Jobs::start_rotation`] says it was already running).
//! - **Progress and the last result are in memory only**, per audit trail ([`jobs_of`]: the
//!   `AuditLog` of an `AppState`), and gone at restart; a rotation cut short by a restart
//!   is finished by the next start of the server (`finish_kek_rotation`), and the audit trail
//!   keeps who started what.
//! - **A task that dies is seen.** Each run keeps its task's handle: a run whose task ended
//!   without a result (a panic) reads as not finished, never as running forever.
//! - **Nothing secret or identifying is kept**: counts, seqs, key ids, hashes, times, the
//!   username of whoever started the run, and error texts that name seqs and sizes only
//!   (other failures are logged and shown as a fixed sentence).

use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError, Weak};

use phivault_audit::{AuditEntry, AuditError, AuditLog, Outcome, VerifyReport};
use phivault_store::{RotationProgress, RotationReport, Store, StoreError};
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::text::{now_ms, percent, when_ms};

/// Data keys rewrapped per transaction by a rotation started here (as `phivault keys
/// rotate` by default).
pub(crate) const ROTATION_BATCH: usize = 500;

/// The background work of one audit trail.
#[derive(Default)]
pub(crate) struct Jobs {
    verification: Mutex<Option<Verification>>,
    rotation: Mutex<Option<Rotation>>,
}

impl std::fmt::Debug for Jobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jobs").finish_non_exhaustive()
    }
}

/// The jobs of every audit trail of this process, by `AuditLog` (each `AppState` opens its
/// own). An entry whose log is gone is dropped at the next look-up, so a later log at the
/// same address cannot inherit it.
static ALL: LazyLock<Mutex<Registry>> = LazyLock::new(|| Mutex::new(Vec::new()));

/// Each audit trail (held weakly) and its jobs.
type Registry = Vec<(Weak<AuditLog>, Arc<Jobs>)>;

/// A lock that survives a panic of another holder: only whole values are assigned under
/// these locks, so what they hold stays consistent.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The jobs of `audit`'s trail (made on first use).
pub(crate) fn jobs_of(audit: &Arc<AuditLog>) -> Arc<Jobs> {
    let mut all = lock(&ALL);
    all.retain(|(log, _)| log.strong_count() > 0);
    if let Some((_, jobs)) = all
        .iter()
        .find(|(log, _)| std::ptr::eq(log.as_ptr(), Arc::as_ptr(audit)))
    {
        return jobs.clone();
    }
    let jobs = Arc::new(Jobs::default());
    all.push((Arc::downgrade(audit), jobs.clone()));
    jobs
}

/// A verification's end.
enum VerifyEnd {
    /// Every entry and checkpoint checked out.
    Verified(VerifyReport),
    /// The trail does not verify: the first bad entry when the finding names one, and the
    /// finding (seqs and sizes only).
    Failed {
        first_bad: Option<u64>,
        problem: String,
    },
    /// It could not run to the end (the store failed): no finding either way.
    Unfinished,
}

struct Verification {
    started_ms: i64,
    started_by: String,
    /// Entries in the trail when it started.
    total: u64,
    /// Entries checked so far.
    checked: u64,
    end: Option<(VerifyEnd, i64)>,
    /// True once it ended (dropped without a value if its task died).
    done: watch::Receiver<bool>,
    task: Option<JoinHandle<()>>,
}

/// A verification as a page shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct VerificationView {
    /// When it started.
    pub(crate) started: String,
    /// Who started it (username).
    pub(crate) started_by: String,
    /// Still running.
    pub(crate) running: bool,
    /// Entries checked (so far, or in all).
    pub(crate) checked: u64,
    /// Entries in the trail when it started.
    pub(crate) total: u64,
    /// `checked` of `total`, in percent.
    pub(crate) percent: u64,
    /// `verified`, `failed` (the trail does not verify), `unfinished` (no finding), or none
    /// while running.
    pub(crate) result: Option<&'static str>,
    /// Checkpoints whose roots matched (when verified).
    pub(crate) checkpoints: usize,
    /// The Merkle root of all entries checked, hex (when verified).
    pub(crate) root: Option<String>,
    /// The first bad entry's seq (when failed and known).
    pub(crate) first_bad: Option<u64>,
    /// What was found (when failed): seqs and sizes only.
    pub(crate) problem: Option<String>,
    /// When it ended.
    pub(crate) finished: Option<String>,
}

/// The end of a rotation.
enum RotateEnd {
    Done {
        report: RotationReport,
        /// Its `keys rotate` entry was written.
        audited: bool,
    },
    Failed {
        audited: bool,
    },
}

struct Rotation {
    started_ms: i64,
    started_by: String,
    progress: Option<RotationProgress>,
    end: Option<(RotateEnd, i64)>,
    task: Option<JoinHandle<()>>,
}

/// A rotation as a page shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct RotationView {
    /// When it started.
    pub(crate) started: String,
    /// Who started it (username).
    pub(crate) started_by: String,
    /// Still running.
    pub(crate) running: bool,
    /// The key-encryption key the data keys are rewrapped under (once known).
    pub(crate) kek_id: Option<String>,
    /// Data keys rewrapped so far (or in all).
    pub(crate) rewrapped: u64,
    /// Data keys under another key when it started (once known).
    pub(crate) pending_at_start: u64,
    /// `rewrapped` of `pending_at_start`, in percent.
    pub(crate) percent: u64,
    /// `finished`, `failed`, `unfinished` (its task stopped), or none while running.
    pub(crate) result: Option<&'static str>,
    /// It finished an interrupted rotation instead of starting one.
    pub(crate) resumed: bool,
    /// The old keys deleted (ids).
    pub(crate) retired: Vec<String>,
    /// The replaced wrappings are still in the database files (retried by the server).
    pub(crate) residue_left: bool,
    /// Its entry could not be written to the audit trail (the rotation itself stands).
    pub(crate) unaudited: bool,
    /// When it ended.
    pub(crate) finished: Option<String>,
}

/// Whether a run's task is still going: no end recorded and its task not over.
fn going<E>(end: &Option<E>, task: &Option<JoinHandle<()>>) -> bool {
    end.is_none() && task.as_ref().is_none_or(|t| !t.is_finished())
}

impl Jobs {
    /// The last verification of this process, if any.
    pub(crate) fn verification(&self) -> Option<VerificationView> {
        let guard = lock(&self.verification);
        let v = guard.as_ref()?;
        let running = going(&v.end, &v.task);
        let (result, checkpoints, root, first_bad, problem) = match &v.end {
            None if running => (None, 0, None, None, None),
            None => (Some("unfinished"), 0, None, None, None),
            Some((VerifyEnd::Verified(r), _)) => (
                Some("verified"),
                r.checkpoints,
                Some(hex::encode(r.root)),
                None,
                None,
            ),
            Some((VerifyEnd::Failed { first_bad, problem }, _)) => {
                (Some("failed"), 0, None, *first_bad, Some(problem.clone()))
            }
            Some((VerifyEnd::Unfinished, _)) => (Some("unfinished"), 0, None, None, None),
        };
        let checked = match &v.end {
            Some((VerifyEnd::Verified(r), _)) => r.entries,
            _ => v.checked,
        };
        let total = v.total.max(checked);
        Some(VerificationView {
            started: when_ms(v.started_ms),
            started_by: v.started_by.clone(),
            running,
            checked,
            total,
            percent: percent(checked, total),
            result,
            checkpoints,
            root,
            first_bad,
            problem,
            finished: v.end.as_ref().map(|(_, at)| when_ms(*at)),
        })
    }

    /// Starts a verification of the whole of `audit`'s trail (`total` entries now), unless
    /// one is running; either way, the receiver that turns true (or closes) when the
    /// running one ends.
    pub(crate) fn start_verification(
        self: &Arc<Self>,
        audit: Arc<AuditLog>,
        total: u64,
        started_by: String,
    ) -> watch::Receiver<bool> {
        let mut slot = lock(&self.verification);
        if let Some(v) = slot.as_ref()
            && going(&v.end, &v.task)
        {
            return v.done.clone();
        }
        let (done_tx, done) = watch::channel(false);
        *slot = Some(Verification {
            started_ms: now_ms(),
            started_by,
            total,
            checked: 0,
            end: None,
            done: done.clone(),
            task: None,
        });
        let jobs = self.clone();
        // The task waits for this lock before it records anything, so it cannot end
        // before its handle is stored below.
        let task = tokio::spawn(async move {
            let progress = jobs.clone();
            let result = audit
                .verify(move |n| {
                    if let Some(v) = lock(&progress.verification).as_mut() {
                        v.checked = n;
                    }
                })
                .await;
            let end = match result {
                Ok(report) => VerifyEnd::Verified(report),
                Err(e) if e.is_tamper() => VerifyEnd::Failed {
                    first_bad: e.first_bad_seq(),
                    problem: e.to_string(),
                },
                Err(e) => {
                    log_verify_error(&e);
                    VerifyEnd::Unfinished
                }
            };
            if let Some(v) = lock(&jobs.verification).as_mut() {
                v.end = Some((end, now_ms()));
            }
            done_tx.send_replace(true);
        });
        if let Some(v) = slot.as_mut() {
            v.task = Some(task);
        }
        done
    }

    /// The last rotation of this process, if any.
    pub(crate) fn rotation(&self) -> Option<RotationView> {
        let guard = lock(&self.rotation);
        let r = guard.as_ref()?;
        let running = going(&r.end, &r.task);
        let (kek_id, rewrapped, pending) = match (&r.end, &r.progress) {
            (Some((RotateEnd::Done { report, .. }, _)), p) => (
                Some(report.kek_id.clone()),
                report.rewrapped,
                p.as_ref().map_or(report.rewrapped, |p| p.pending_at_start),
            ),
            (_, Some(p)) => (Some(p.kek_id.clone()), p.rewrapped, p.pending_at_start),
            (_, None) => (None, 0, 0),
        };
        let result = match &r.end {
            None if running => None,
            None => Some("unfinished"),
            Some((RotateEnd::Done { .. }, _)) => Some("finished"),
            Some((RotateEnd::Failed { .. }, _)) => Some("failed"),
        };
        let (resumed, retired, residue_left, unaudited) = match &r.end {
            Some((RotateEnd::Done { report, audited }, _)) => (
                report.resumed,
                report.retired.clone(),
                !report.residue_purged,
                !audited,
            ),
            Some((RotateEnd::Failed { audited }, _)) => (false, Vec::new(), false, !audited),
            None => (false, Vec::new(), false, false),
        };
        Some(RotationView {
            started: when_ms(r.started_ms),
            started_by: r.started_by.clone(),
            running,
            kek_id,
            rewrapped,
            pending_at_start: pending.max(rewrapped),
            percent: match result {
                Some("finished") => 100,
                // Nothing known yet (no batch done): nothing done.
                _ if pending == 0 => 0,
                _ => percent(rewrapped, pending),
            },
            result,
            resumed,
            retired,
            residue_left,
            unaudited,
            finished: r.end.as_ref().map(|(_, at)| when_ms(*at)),
        })
    }

    /// Starts a rotation of `store`'s key-encryption key unless one is running (false then).
    /// When it ends, the entry `entry(outcome)` is appended to `audit`'s trail: the
    /// rotation's record, with who started it.
    pub(crate) fn start_rotation<F>(
        self: &Arc<Self>,
        store: Store,
        audit: Arc<AuditLog>,
        started_by: String,
        entry: F,
    ) -> bool
    where
        F: FnOnce(Outcome) -> AuditEntry + Send + 'static,
    {
        let mut slot = lock(&self.rotation);
        if let Some(r) = slot.as_ref()
            && going(&r.end, &r.task)
        {
            return false;
        }
        *slot = Some(Rotation {
            started_ms: now_ms(),
            started_by,
            progress: None,
            end: None,
            task: None,
        });
        let jobs = self.clone();
        // As for verifications: the task records nothing before its handle is stored.
        let task = tokio::spawn(async move {
            let progress = jobs.clone();
            let result = store
                .rotate_keks(ROTATION_BATCH, move |p| {
                    if let Some(r) = lock(&progress.rotation).as_mut() {
                        r.progress = Some(p);
                    }
                })
                .await;
            let outcome = if result.is_ok() {
                Outcome::Allowed
            } else {
                Outcome::Error
            };
            let audited = match audit.append(&entry(outcome)).await {
                Ok(_) => true,
                Err(e) => {
                    tracing::error!(error = %e, "the key rotation's audit entry could not be written");
                    false
                }
            };
            let end = match result {
                Ok(report) => {
                    tracing::info!(
                        kek_id = %report.kek_id,
                        rewrapped = report.rewrapped,
                        "key-encryption key rotation finished"
                    );
                    RotateEnd::Done { report, audited }
                }
                Err(e) => {
                    log_rotation_error(&e);
                    RotateEnd::Failed { audited }
                }
            };
            if let Some(r) = lock(&jobs.rotation).as_mut() {
                r.end = Some((end, now_ms()));
            }
        });
        if let Some(r) = slot.as_mut() {
            r.task = Some(task);
        }
        true
    }
}

fn log_verify_error(e: &AuditError) {
    tracing::error!(error = %e, "the console's audit verification could not finish");
}

fn log_rotation_error(e: &StoreError) {
    tracing::error!(
        error = %e,
        "the key-encryption key rotation failed; starting it again resumes it"
    );
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::time::Duration;

    use phivault_audit::ActorKind;
    use phivault_store::StoreOptions;

    use super::*;

    async fn store() -> (tempfile::TempDir, Store, Arc<AuditLog>) {
        let dir = tempfile::tempdir().unwrap();
        let mut key = [0u8; 32];
        phivault_crypto::random_bytes(&mut key).unwrap();
        let keys = phivault_crypto::StaticKeyProvider::from_hex(hex::encode(key));
        let opts = StoreOptions::new(format!("sqlite://{}/t.db", dir.path().display()));
        let store = Store::open(&opts, &keys).await.unwrap();
        let audit = Arc::new(AuditLog::open(store.clone()).await.unwrap());
        (dir, store, audit)
    }

    fn entry(action: &str, outcome: Outcome) -> AuditEntry {
        AuditEntry {
            seq: 0,
            time: now_ms(),
            actor_id: "u1".to_owned(),
            actor_kind: ActorKind::User,
            role: Some("admin".to_owned()),
            purpose: None,
            break_glass: false,
            action: action.to_owned(),
            resource_type: None,
            resource_id: None,
            patient_id: None,
            outcome,
            source_address: None,
            request_id: "r1".to_owned(),
            actor_ref: None,
            patients: Vec::new(),
            refusals: None,
            configuration: None,
            labels: Vec::new(),
            alert: None,
            via_client: None,
        }
    }

    /// Each trail has its own jobs; a log that is gone leaves no jobs behind.
    #[tokio::test]
    async fn jobs_are_per_audit_trail() {
        let (_d1, _s1, a1) = store().await;
        let (_d2, _s2, a2) = store().await;
        let j1 = jobs_of(&a1);
        assert!(Arc::ptr_eq(&j1, &jobs_of(&a1)));
        assert!(!Arc::ptr_eq(&j1, &jobs_of(&a2)));
        assert!(j1.verification().is_none() && j1.rotation().is_none());
        let gone = Arc::downgrade(&a2);
        drop(a2);
        jobs_of(&a1);
        assert!(lock(&ALL).iter().all(|(log, _)| !log.ptr_eq(&gone)));
    }

    /// A verification runs in the background, counts the entries it checked and says
    /// `verified`; one that finds a changed entry says `failed` and names it.
    #[tokio::test]
    async fn verification_reports_entries_checked_and_the_first_bad_one() {
        let (_dir, store, audit) = store().await;
        for _ in 0..5 {
            audit
                .append(&entry("GET /admin", Outcome::Allowed))
                .await
                .unwrap();
        }
        let jobs = Arc::new(Jobs::default());
        let mut done = jobs.start_verification(audit.clone(), 5, "alice".to_owned());
        tokio::time::timeout(Duration::from_secs(30), done.wait_for(|d| *d))
            .await
            .unwrap()
            .unwrap();
        let v = jobs.verification().unwrap();
        assert_eq!(v.result, Some("verified"));
        assert!(!v.running);
        assert_eq!((v.checked, v.total, v.percent), (5, 5, 100));
        assert_eq!(v.started_by, "alice");
        assert_eq!(v.root.as_deref().map(str::len), Some(64));
        assert!(v.finished.is_some());

        sqlx::query("UPDATE audit_entries SET entry_hash = prev_hash WHERE seq = 3")
            .execute(store.pool())
            .await
            .unwrap();
        let mut done = jobs.start_verification(audit.clone(), 5, "bob".to_owned());
        tokio::time::timeout(Duration::from_secs(30), done.wait_for(|d| *d))
            .await
            .unwrap()
            .unwrap();
        let v = jobs.verification().unwrap();
        assert_eq!(v.result, Some("failed"), "{v:?}");
        assert!(v.first_bad.is_some_and(|s| s <= 4), "{v:?}");
        assert!(v.problem.is_some());
        assert_eq!(v.started_by, "bob");
    }

    /// A rotation runs in the background, rewraps every data key under a new key, retires
    /// the old one and appends its entry with the outcome; a second start while it runs is
    /// refused.
    #[tokio::test]
    async fn rotation_runs_once_and_is_audited() {
        let (_dir, store, audit) = store().await;
        let before = store.key_status().await.unwrap();
        let old: Vec<String> = before.keks.iter().map(|k| k.kek_id.clone()).collect();
        let jobs = Arc::new(Jobs::default());
        let started = jobs.start_rotation(store.clone(), audit.clone(), "alice".to_owned(), |o| {
            entry("keys rotate", o)
        });
        assert!(started);
        let again = jobs.start_rotation(store.clone(), audit.clone(), "bob".to_owned(), |o| {
            entry("keys rotate", o)
        });
        let mut view = None;
        for _ in 0..600 {
            let v = jobs.rotation().unwrap();
            if !v.running {
                view = Some(v);
                break;
            }
            assert!(!again, "a second rotation started while one ran");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let v = view.expect("the rotation ended");
        assert_eq!(v.result, Some("finished"), "{v:?}");
        assert_eq!(v.percent, 100);
        assert!(!v.unaudited);
        let after = store.key_status().await.unwrap();
        assert_eq!(after.pending, 0);
        assert!(after.keks.iter().all(|k| !old.contains(&k.kek_id)));
        assert_eq!(v.kek_id.as_deref(), Some(after.keks[0].kek_id.as_str()));
        let rows = store.audit_entries(0, 100).await.unwrap();
        let last = AuditEntry::from_canonical(&rows.last().unwrap().body).unwrap();
        assert_eq!(last.action, "keys rotate");
        assert_eq!(last.outcome, Outcome::Allowed);
        // Once it ended, another may start.
        assert!(
            jobs.start_rotation(store.clone(), audit.clone(), "carol".to_owned(), |o| {
                entry("keys rotate", o)
            })
        );
    }
}
