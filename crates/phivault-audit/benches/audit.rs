//! Audit trail benchmarks: standalone appends at 1, 16 and 64 concurrent appenders (each
//! append returns once its entry is committed, as the server's requests wait), and a full
//! `verify` of trails of 100,000 and 1,000,000 entries.
//!
//! `cargo bench -p phivault-audit --bench audit` runs on a temporary SQLite file (WAL,
//! `synchronous=FULL`, as shipped); with `PHIVAULT_BENCH_DATABASE_URL` set (a PostgreSQL
//! URL) the same groups also run on PostgreSQL, each in a schema of its own.
//! `PHIVAULT_BENCH_VERIFY_SIZES` (comma-separated entry counts, default `100000,1000000`)
//! sets the verified trail sizes; `PHIVAULT_BENCH_GROUPS` (`append`, `verify` or both,
//! comma-separated) picks the groups.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use phivault_audit::{ActorKind, AuditEntry, AuditLog, Outcome};
use phivault_crypto::StaticKeyProvider;
use phivault_store::{Store, StoreOptions};

/// Appends per appender per measured iteration.
const APPENDS_EACH: usize = 8;
/// Entries written per transaction while populating a trail to verify.
const FILL_CHUNK: usize = 5_000;

fn random_hex() -> String {
    let mut b = [0u8; 32];
    phivault_crypto::random_bytes(&mut b).unwrap();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A read entry shaped like the server's (actor, resource, patient, request id).
fn entry(i: u64) -> AuditEntry {
    AuditEntry {
        seq: 0,
        time: 1_700_000_000_000 + i as i64,
        actor_id: format!("user-{}", i % 17),
        actor_kind: ActorKind::User,
        role: Some("clinician".to_owned()),
        purpose: Some("TREAT".to_owned()),
        break_glass: false,
        action: "read".to_owned(),
        resource_type: Some("Observation".to_owned()),
        resource_id: Some(format!("5f2b{i:028x}")),
        patient_id: Some(format!("pat-{}", i % 1000)),
        outcome: Outcome::Allowed,
        source_address: Some("127.0.0.1".to_owned()),
        request_id: format!("req-{i:08}"),
        actor_ref: None,
        patients: Vec::new(),
        refusals: None,
        configuration: None,
        labels: Vec::new(),
        alert: None,
        via_client: None,
    }
}

struct Backend {
    label: &'static str,
    url: String,
    key: String,
    _dir: Option<tempfile::TempDir>,
}

fn backends(runtime: &tokio::runtime::Runtime) -> Vec<Backend> {
    let mut out = Vec::new();
    let dir = tempfile::tempdir().unwrap();
    out.push(Backend {
        label: "sqlite",
        url: format!("sqlite://{}/bench.db", dir.path().display()),
        key: random_hex(),
        _dir: Some(dir),
    });
    if let Ok(base) = std::env::var("PHIVAULT_BENCH_DATABASE_URL") {
        let schema = format!("pv_bench_{}", &random_hex()[..12]);
        runtime.block_on(async {
            let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&base)
                .await
                .unwrap();
            sqlx::query(&format!("CREATE SCHEMA {schema}"))
                .execute(&mut conn)
                .await
                .unwrap();
        });
        let sep = if base.contains('?') { '&' } else { '?' };
        out.push(Backend {
            label: "postgres",
            url: format!("{base}{sep}options=-c%20search_path%3D{schema}"),
            key: random_hex(),
            _dir: None,
        });
    }
    out
}

impl Backend {
    async fn open(&self) -> Arc<AuditLog> {
        let mut opts = StoreOptions::new(self.url.clone());
        opts.max_connections = 80;
        let store = Store::open(&opts, &StaticKeyProvider::from_hex(self.key.clone()))
            .await
            .unwrap();
        Arc::new(AuditLog::open(store).await.unwrap())
    }
}

/// Appends `n` more entries in transactions of `FILL_CHUNK`.
async fn fill(log: &AuditLog, n: u64) {
    let store = log.store().clone();
    let mut done = 0;
    while done < n {
        let k = (n - done).min(FILL_CHUNK as u64);
        let entries: Vec<AuditEntry> = (done..done + k).map(entry).collect();
        let _lock = store.write_lock().await;
        let mut tx = store.pool().begin().await.unwrap();
        log.append_all_in(&mut tx, &entries).await.unwrap();
        tx.commit().await.unwrap();
        done += k;
    }
}

/// Reads the columns verification reads of every entry, decoding each value without keeping
/// it; returns the number of rows.
async fn select_all(store: &Store) -> u64 {
    use futures::TryStreamExt;
    use sqlx::Row;
    let mut rows = sqlx::query(
        "SELECT seq, body, entry_hash, prev_hash, time, actor, patient, action, outcome, \
         chain_mac FROM audit_entries ORDER BY seq",
    )
    .fetch(store.pool());
    let mut n = 0u64;
    let mut bytes = 0usize;
    while let Some(row) = rows.try_next().await.unwrap() {
        let body: &[u8] = row.try_get(1).unwrap();
        let hash: &[u8] = row.try_get(2).unwrap();
        let prev: &[u8] = row.try_get(3).unwrap();
        let actor: &str = row.try_get(5).unwrap();
        bytes += body.len() + hash.len() + prev.len() + actor.len();
        n += 1;
    }
    std::hint::black_box(bytes);
    n
}

fn groups() -> Vec<String> {
    std::env::var("PHIVAULT_BENCH_GROUPS")
        .unwrap_or_else(|_| "append,verify".to_owned())
        .split(',')
        .map(str::to_owned)
        .collect()
}

fn benches(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let groups = groups();
    for backend in backends(&runtime) {
        let log = runtime.block_on(backend.open());
        if groups.iter().any(|g| g == "append") {
            let mut group = c.benchmark_group(format!("append_{}", backend.label));
            group.sample_size(10);
            group.warm_up_time(Duration::from_secs(1));
            group.measurement_time(Duration::from_secs(8));
            for appenders in [1usize, 16, 64] {
                group.throughput(Throughput::Elements((appenders * APPENDS_EACH) as u64));
                group.bench_function(format!("{appenders}_appenders"), |b| {
                    b.iter_custom(|iters| {
                        runtime.block_on(async {
                            let start = Instant::now();
                            for _ in 0..iters {
                                let tasks: Vec<_> = (0..appenders)
                                    .map(|t| {
                                        let log = log.clone();
                                        tokio::spawn(async move {
                                            for i in 0..APPENDS_EACH {
                                                log.append(&entry((t * 1000 + i) as u64))
                                                    .await
                                                    .unwrap();
                                            }
                                        })
                                    })
                                    .collect();
                                for t in tasks {
                                    t.await.unwrap();
                                }
                            }
                            start.elapsed()
                        })
                    });
                });
            }
            group.finish();
        }
        if groups.iter().any(|g| g == "verify") {
            let sizes: Vec<u64> = std::env::var("PHIVAULT_BENCH_VERIFY_SIZES")
                .unwrap_or_else(|_| "100000,1000000".to_owned())
                .split(',')
                .map(|s| s.trim().parse().unwrap())
                .collect();
            let mut group = c.benchmark_group(format!("verify_{}", backend.label));
            group.sample_size(10);
            group.warm_up_time(Duration::from_millis(500));
            group.measurement_time(Duration::from_secs(5));
            for size in sizes {
                let present = runtime.block_on(async {
                    let present = log.store().audit_tail().await.unwrap().seq - 1;
                    if present < size {
                        fill(&log, size - present).await;
                    }
                    log.store().audit_tail().await.unwrap().seq - 1
                });
                if present != size {
                    // Already larger (the append group ran first): verify what is there.
                    eprintln!("verify_{}: {present} entries present", backend.label);
                }
                group.throughput(Throughput::Elements(present));
                group.bench_function(format!("{size}_entries"), |b| {
                    b.iter(|| {
                        let report = runtime.block_on(log.verify(|_| {})).unwrap();
                        assert_eq!(report.entries, present);
                    });
                });
                // The driver alone: the same columns of every entry, read and decoded
                // (borrowed, nothing kept), in one query through the store's pool.
                group.bench_function(format!("{size}_select_only"), |b| {
                    b.iter(|| {
                        let rows = runtime.block_on(select_all(log.store()));
                        assert_eq!(rows, present);
                    });
                });
            }
            group.finish();
        }
    }
}

criterion_group!(audit, benches);
criterion_main!(audit);
