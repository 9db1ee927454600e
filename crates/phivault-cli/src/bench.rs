//! `phivault bench`: ingest, read-by-id and erasure figures on a fresh store, with synthetic
//! data.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use phivault_audit::{ActorKind, AuditEntry, AuditLog, Outcome};
use phivault_crypto::FileKeyProvider;
use phivault_fhir::{BundleRequest, Id, ResourceType, Validator};
use phivault_store::{
    AnyConnection, AuditSink, SinkFuture, Store, StoreError, StoreOptions, Written,
};

use crate::synth::{self, Rng};

/// Resources per transaction Bundle (1 Patient + 99 Observations).
pub(crate) const BUNDLE_SIZE: usize = 100;

/// What to measure.
#[derive(Debug, Clone)]
pub(crate) struct BenchOptions {
    pub(crate) patients: u64,
    pub(crate) reads: u64,
    /// Concurrent readers of the second read phase.
    pub(crate) readers: u64,
    /// None: a temporary SQLite file, removed afterwards.
    pub(crate) database_url: Option<String>,
    /// Resources of the large patient erased (0: no erasure figures).
    pub(crate) erasure_resources: u64,
    /// Entries the audit trail is filled up to before its verification is timed (0: as the
    /// benchmark left it).
    pub(crate) audit_entries: u64,
    /// Also time a backup, its verification and its restore.
    pub(crate) backup: bool,
    /// Where to restore (None: a temporary SQLite file).
    pub(crate) restore_url: Option<String>,
}

/// Resources of the small patient erased (for comparison with the large one).
pub(crate) const SMALL_ERASURE: usize = 10;

/// How long erasures took: the crypto-shredding transaction itself, then the index sweep that
/// follows it (in the background on the server).
#[derive(Debug, Clone)]
pub(crate) struct ErasureFigures {
    /// (resources made unreadable, time of `erase_patient`) for the small and large patient.
    pub(crate) small: (u64, Duration),
    pub(crate) large: (u64, Duration),
    /// (index rows deleted, time) of the sweep after the large erasure.
    pub(crate) sweep: (u64, Duration),
}

/// The figures.
#[derive(Debug, Clone)]
pub(crate) struct BenchReport {
    pub(crate) backend: &'static str,
    pub(crate) resources: usize,
    /// Time spent validating and storing (generation excluded).
    pub(crate) ingest: Duration,
    /// Latency of each read, sorted.
    pub(crate) reads: Vec<Duration>,
    /// Readers, reads and the wall time of the concurrent phase.
    pub(crate) concurrent: Option<(u64, u64, Duration)>,
    /// Entries in the audit trail and the time a full `audit verify` of it took (`None` in a
    /// bench-no-audit build).
    pub(crate) verify: Option<(u64, Duration)>,
    /// Erasure figures (`None` when not asked for).
    pub(crate) erasure: Option<ErasureFigures>,
    /// Backup and restore figures (`None` when not asked for).
    pub(crate) backup: Option<crate::bench_backup::BackupFigures>,
}

impl BenchReport {
    /// The plain lines printed by `phivault bench`.
    pub(crate) fn lines(&self) -> Vec<String> {
        let secs = self.ingest.as_secs_f64();
        let rate = if secs > 0.0 {
            self.resources as f64 / secs
        } else {
            0.0
        };
        let mut lines = vec![
            format!("database: {}", self.backend),
            format!(
                "ingest: {} resources in {secs:.1} s = {rate:.0} resources/s (transaction bundles of {BUNDLE_SIZE})",
                self.resources
            ),
        ];
        if !self.reads.is_empty() {
            let n = self.reads.len();
            let us = |d: Duration| d.as_secs_f64() * 1e6;
            let total: Duration = self.reads.iter().sum();
            let mean = us(total) / n as f64;
            let p50 = us(self.reads[n / 2]);
            let p99 = us(self.reads[((n * 99) / 100).min(n - 1)]);
            lines.push(format!(
                "read-by-id: {n} reads, mean {mean:.0} us, p50 {p50:.0} us, p99 {p99:.0} us"
            ));
        }
        if let Some((readers, n, took)) = self.concurrent {
            let secs = took.as_secs_f64();
            let rate = if secs > 0.0 { n as f64 / secs } else { 0.0 };
            lines.push(format!(
                "read-by-id, {readers} concurrent readers: {n} reads in {secs:.2} s = {rate:.0} reads/s"
            ));
        }
        if let Some((entries, took)) = self.verify {
            let secs = took.as_secs_f64();
            let rate = if secs > 0.0 {
                entries as f64 / secs
            } else {
                0.0
            };
            lines.push(format!(
                "audit verify: {entries} entries in {secs:.2} s = {rate:.0} entries/s"
            ));
        }
        if let Some(e) = &self.erasure {
            let ms = |d: Duration| d.as_secs_f64() * 1e3;
            lines.push(format!(
                "erasure: patient of {} resources in {:.1} ms, patient of {} resources in {:.1} ms \
                 (key destroyed, ledger and audit entry, one transaction)",
                e.small.0,
                ms(e.small.1),
                e.large.0,
                ms(e.large.1)
            ));
            lines.push(format!(
                "erasure index sweep (after the erasure, in the background): {} rows in {:.1} ms",
                e.sweep.0,
                ms(e.sweep.1)
            ));
        }
        if let Some(b) = &self.backup {
            lines.extend(b.lines());
        }
        lines
    }
}

/// Which cipher this build seals with.
pub(crate) fn cipher_line() -> &'static str {
    if phivault_crypto::NOOP_CIPHER {
        "cipher: none (bench-noop-cipher build: data is NOT encrypted)"
    } else {
        "cipher: aes-256-gcm"
    }
}

/// Whether this build audits what the benchmark does.
pub(crate) fn audit_line() -> &'static str {
    if AUDIT {
        "audit: on (each written resource and each request appends an entry, as the server does)"
    } else {
        "audit: off (bench-no-audit build: nothing is audited)"
    }
}

/// Off only in a `bench-no-audit` build; no server or CLI path can switch the audit off.
const AUDIT: bool = !cfg!(feature = "bench-no-audit");

/// The benchmark's audit: what the server does per request. Each resource a transaction
/// writes gets an entry inside the transaction ([`AuditSink`]), the request gets its own entry
/// after the commit, and each read gets an entry before its answer would leave.
struct BenchAudit {
    log: std::sync::Arc<AuditLog>,
}

impl BenchAudit {
    fn entry(action: &str, rtype: Option<ResourceType>, id: Option<&Id>) -> AuditEntry {
        AuditEntry {
            seq: 0,
            time: time::OffsetDateTime::now_utc().unix_timestamp() * 1000,
            actor_id: "bench".to_owned(),
            actor_kind: ActorKind::Client,
            role: Some("app".to_owned()),
            purpose: Some("TREAT".to_owned()),
            break_glass: false,
            action: action.to_owned(),
            resource_type: rtype.map(|t| t.to_string()),
            resource_id: id.map(|i| i.to_string()),
            patient_id: None,
            outcome: Outcome::Allowed,
            source_address: Some("127.0.0.1".to_owned()),
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
}

impl AuditSink for BenchAudit {
    fn record<'a>(&'a self, conn: &'a mut AnyConnection, written: &'a [Written]) -> SinkFuture<'a> {
        Box::pin(async move {
            let entries: Vec<AuditEntry> = written
                .iter()
                .map(|w| {
                    let mut entry = Self::entry(w.kind.as_str(), Some(w.rtype), Some(&w.id));
                    entry.patient_id = w.patient.as_ref().map(|p| p.to_string());
                    entry
                })
                .collect();
            self.log
                .append_all_in(conn, &entries)
                .await
                .map_err(|e| StoreError::Config(format!("audit append: {e}")))?;
            Ok(())
        })
    }
}

/// Entries written per transaction while filling the trail.
const FILL_CHUNK: u64 = 10_000;

/// Appends synthetic read entries until the trail holds `entries` (nothing when it already
/// does), in transactions of [`FILL_CHUNK`] entries.
async fn fill_trail(log: &AuditLog, entries: u64) -> Result<()> {
    let store = log.store();
    let mut present = store.audit_tail().await?.seq.saturating_sub(1);
    if present < entries {
        eprintln!("phivault: bench: filling the audit trail up to {entries} entries");
    }
    while present < entries {
        let n = (entries - present).min(FILL_CHUNK);
        let batch: Vec<AuditEntry> = (0..n)
            .map(|_| {
                BenchAudit::entry(
                    "GET /fhir/{type}/{id}",
                    ResourceType::parse("Observation").ok(),
                    Some(&Id::generate()),
                )
            })
            .collect();
        let _lock = store.write_lock().await;
        let mut tx = store.begin_write().await?;
        log.append_all_in(&mut tx, &batch)
            .await
            .context("filling the audit trail")?;
        tx.commit().await.context("filling the audit trail")?;
        present += n;
    }
    Ok(())
}

/// A temporary directory removed on drop.
pub(crate) struct TempDir(pub(crate) PathBuf);

impl TempDir {
    pub(crate) fn new() -> Result<Self> {
        let path = std::env::temp_dir().join(format!("phivault-bench-{}", uuid::Uuid::new_v4()));
        crate::commands::create_private_dir(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // Best effort: a leftover temporary directory holds only synthetic data.
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the benchmark.
pub(crate) async fn run(opts: &BenchOptions) -> Result<BenchReport> {
    let dir = TempDir::new()?;
    let keys = FileKeyProvider::new(dir.0.join("master.key"));
    keys.create_if_missing()
        .context("creating a temporary master key")?;
    let url = match &opts.database_url {
        Some(url) => url.clone(),
        None => format!("sqlite://{}", dir.0.join("bench.db").display()),
    };
    let mut store_opts = StoreOptions::new(url);
    store_opts.max_bundle_entries = BUNDLE_SIZE;
    let store = Store::open(&store_opts, &keys)
        .await
        .context("opening the benchmark database")?;
    let validator = Validator::new().context("loading the FHIR schema")?;
    let audit = if AUDIT {
        Some(BenchAudit {
            log: std::sync::Arc::new(
                AuditLog::open(store.clone())
                    .await
                    .context("opening the audit trail")?,
            ),
        })
    } else {
        None
    };
    let mut result = measure(&store, &validator, audit.as_ref(), opts).await;
    if opts.backup
        && let Ok(report) = &mut result
    {
        let figures =
            crate::bench_backup::measure(&store, &dir.0, &keys, opts.restore_url.as_deref()).await;
        match figures {
            Ok(f) => report.backup = Some(f),
            Err(e) => result = Err(e),
        }
    }
    store.close().await;
    result
}

async fn measure(
    store: &Store,
    validator: &Validator,
    audit: Option<&BenchAudit>,
    opts: &BenchOptions,
) -> Result<BenchReport> {
    let sink: &dyn AuditSink = match audit {
        Some(a) => a,
        None => &phivault_store::NoAudit,
    };
    let mut rng = Rng::new(0x5048_4956_4155_4c54);
    let mut written: Vec<(ResourceType, Id)> = Vec::new();
    let mut ingest = Duration::ZERO;
    let mut resources = 0usize;
    for _ in 0..opts.patients {
        let bundle = synth::patient_bundle(&mut rng, BUNDLE_SIZE - 1);
        let start = Instant::now();
        let request = BundleRequest::parse(validator, bundle, BUNDLE_SIZE)
            .context("a synthetic Bundle did not validate")?;
        let response = store
            .bundle(request, sink)
            .await
            .context("storing a synthetic Bundle")?;
        if let Some(a) = audit {
            a.log
                .append(&BenchAudit::entry("POST /fhir", None, None))
                .await
                .context("auditing a synthetic Bundle")?;
        }
        ingest += start.elapsed();
        for (rtype, id) in synth::written_references(&response) {
            if let (Ok(rtype), Ok(id)) = (ResourceType::parse(&rtype), Id::parse(&id)) {
                written.push((rtype, id));
            }
        }
        resources += BUNDLE_SIZE;
    }
    if written.is_empty() && opts.reads > 0 {
        bail!("the store reported no written resources to read back");
    }
    let mut reads = Vec::with_capacity(usize::try_from(opts.reads).unwrap_or(0));
    for _ in 0..opts.reads {
        let (rtype, id) = &written[rng.below(written.len())];
        let start = Instant::now();
        store
            .read(*rtype, id)
            .await
            .context("reading back a synthetic resource")?;
        if let Some(a) = audit {
            a.log
                .append(&BenchAudit::entry(
                    "GET /fhir/{type}/{id}",
                    Some(*rtype),
                    Some(id),
                ))
                .await
                .context("auditing a read")?;
        }
        reads.push(start.elapsed());
    }
    reads.sort();
    // The same reads again, split among concurrent readers (as concurrent requests would):
    // with the audit on, their entries share group commits.
    let mut concurrent = None;
    if opts.reads > 0 {
        let started = Instant::now();
        let mut tasks = Vec::new();
        let per = opts.reads.div_ceil(opts.readers);
        for r in 0..opts.readers {
            let store = store.clone();
            let log = audit.map(|a| a.log.clone());
            let mut rng = Rng::new(0x5245_4144 + r);
            let picks: Vec<(ResourceType, Id)> = (0..per)
                .map(|_| written[rng.below(written.len())].clone())
                .collect();
            tasks.push(tokio::spawn(async move {
                for (rtype, id) in picks {
                    store.read(rtype, &id).await?;
                    if let Some(log) = &log {
                        log.append(&BenchAudit::entry(
                            "GET /fhir/{type}/{id}",
                            Some(rtype),
                            Some(&id),
                        ))
                        .await?;
                    }
                }
                Ok::<(), anyhow::Error>(())
            }));
        }
        for t in tasks {
            t.await.context("a concurrent reader failed")??;
        }
        concurrent = Some((opts.readers, per * opts.readers, started.elapsed()));
    }
    let erasure = if opts.erasure_resources > 0 {
        let large = usize::try_from(opts.erasure_resources).unwrap_or(usize::MAX);
        Some(erasures(store, validator, sink, &mut rng, large).await?)
    } else {
        None
    };
    let verify = match audit {
        Some(a) => {
            fill_trail(&a.log, opts.audit_entries).await?;
            let start = Instant::now();
            let report = a
                .log
                .verify(|_| {})
                .await
                .context("verifying the audit trail")?;
            Some((report.entries, start.elapsed()))
        }
        None => None,
    };
    Ok(BenchReport {
        backend: store.backend().name(),
        resources,
        ingest,
        reads,
        concurrent,
        verify,
        erasure,
        backup: None,
    })
}

/// Stores a patient with `resources` resources (the Patient and Observations), in transaction
/// Bundles of [`BUNDLE_SIZE`]; returns the patient's id.
async fn patient_with(
    store: &Store,
    validator: &Validator,
    sink: &dyn AuditSink,
    rng: &mut Rng,
    resources: usize,
) -> Result<Id> {
    let first = resources.clamp(1, BUNDLE_SIZE);
    let bundle = synth::patient_bundle(rng, first - 1);
    let request = BundleRequest::parse(validator, bundle, BUNDLE_SIZE)
        .context("a synthetic Bundle did not validate")?;
    let response = store
        .bundle(request, sink)
        .await
        .context("storing a synthetic Bundle")?;
    let patient = synth::written_references(&response)
        .into_iter()
        .find(|(t, _)| t == "Patient")
        .and_then(|(_, id)| Id::parse(&id).ok())
        .context("the synthetic Bundle wrote no Patient")?;
    let subject = format!("Patient/{patient}");
    let mut left = resources - first;
    while left > 0 {
        let n = left.min(BUNDLE_SIZE);
        let entries: Vec<serde_json::Value> = (0..n)
            .map(|_| {
                serde_json::json!({
                    "fullUrl": format!("urn:uuid:{}", rng.uuid()),
                    "resource": synth::observation(rng, &subject),
                    "request": { "method": "POST", "url": "Observation" }
                })
            })
            .collect();
        let bundle = serde_json::json!({ "resourceType": "Bundle", "type": "transaction", "entry": entries });
        let request = BundleRequest::parse(validator, bundle, BUNDLE_SIZE)
            .context("a synthetic Bundle did not validate")?;
        store
            .bundle(request, sink)
            .await
            .context("storing a synthetic Bundle")?;
        left -= n;
    }
    Ok(patient)
}

/// Erases a patient of [`SMALL_ERASURE`] resources and one of `large`, timing each erasure
/// (not the ingest), then the index sweep.
async fn erasures(
    store: &Store,
    validator: &Validator,
    sink: &dyn AuditSink,
    rng: &mut Rng,
    large: usize,
) -> Result<ErasureFigures> {
    let small_patient = patient_with(store, validator, sink, rng, SMALL_ERASURE).await?;
    let large_patient = patient_with(store, validator, sink, rng, large).await?;
    // The sweep of earlier erasures (none) is not timed with this one.
    store.sweep_erasures().await.context("sweeping")?;
    let mut timed = Vec::new();
    for patient in [&small_patient, &large_patient] {
        let start = Instant::now();
        let record = store
            .erase_patient(patient, sink)
            .await
            .context("erasing a synthetic patient")?;
        timed.push((record.resources, start.elapsed()));
        if timed.len() == 1 {
            store.sweep_erasures().await.context("sweeping")?;
        }
    }
    let start = Instant::now();
    let swept = store.sweep_erasures().await.context("sweeping")?;
    let sweep = (swept.index_rows, start.elapsed());
    Ok(ErasureFigures {
        small: timed[0],
        large: timed[1],
        sweep,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_lines() {
        let report = BenchReport {
            backend: "sqlite",
            resources: 10_000,
            ingest: Duration::from_millis(4200),
            reads: (1..=99).map(Duration::from_micros).collect(),
            concurrent: Some((8, 99, Duration::from_millis(33))),
            verify: Some((50_000, Duration::from_millis(500))),
            erasure: Some(ErasureFigures {
                small: (10, Duration::from_micros(2500)),
                large: (10_000, Duration::from_micros(3100)),
                sweep: (120_000, Duration::from_millis(900)),
            }),
            backup: Some(crate::bench_backup::BackupFigures {
                resources: 10_000,
                rows: 50_000,
                row_bytes: 20_000_000,
                archive_bytes: 10_000_000,
                backup: Duration::from_secs(2),
                verify: Duration::from_secs(1),
                restore: Duration::from_secs(4),
                restore_backend: "sqlite",
            }),
        };
        let lines = report.lines();
        assert!(
            lines.iter().any(|l| l
                == "restore into sqlite (with read-back of every table): 10000 resources \
                    (50000 rows, archive 10.0 MB, rows 20.0 MB) in 4.00 s = 2500 resources/s, \
                    2.5 MB/s of archive"),
            "{lines:?}"
        );
        assert_eq!(
            lines[1],
            "ingest: 10000 resources in 4.2 s = 2381 resources/s (transaction bundles of 100)"
        );
        assert_eq!(
            lines[2],
            "read-by-id: 99 reads, mean 50 us, p50 50 us, p99 99 us"
        );
        assert_eq!(
            lines[3],
            "read-by-id, 8 concurrent readers: 99 reads in 0.03 s = 3000 reads/s"
        );
        assert_eq!(
            lines[4],
            "audit verify: 50000 entries in 0.50 s = 100000 entries/s"
        );
        assert_eq!(
            lines[5],
            "erasure: patient of 10 resources in 2.5 ms, patient of 10000 resources in 3.1 ms \
             (key destroyed, ledger and audit entry, one transaction)"
        );
    }
}
