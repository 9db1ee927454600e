//! What breach detection costs per audit entry, to set against the cost of the audited
//! request that wrote the entry (BENCHMARKS.md):
//!
//! - `evaluate`: the default rules alone over a stream of audited reads and searches (200
//!   clinicians, 20,000 patients), no I/O;
//! - `follow`: the alert task as `phivault serve` runs it: reading 100,000 committed entries
//!   back from a SQLite trail page by page, parsing them and running the default rules.
//!
//! `cargo bench -p phivault-alerts --bench evaluate`

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use phivault_alerts::rules::Evaluator;
use phivault_alerts::{AlertEngine, Grantee, LookupFuture, Lookups, check_rules};
use phivault_audit::{ActorKind, AuditEntry, AuditLog, Outcome};
use phivault_crypto::StaticKeyProvider;
use phivault_store::{Store, StoreOptions};

const ENTRIES: u64 = 100_000;

/// `ENTRIES` entries `gap_ms` apart: reads, and every fifth a search returning 5 patients.
fn stream(gap_ms: u64) -> Vec<AuditEntry> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (1..=ENTRIES)
        .map(|seq| {
            let actor = next() % 200;
            let patient = next() % 20_000;
            let search = seq % 5 == 0;
            let mut e = AuditEntry {
                seq,
                time: 1_796_212_800_000 + i64::try_from(seq * gap_ms).unwrap(),
                actor_id: format!("user-{actor:04}"),
                actor_kind: ActorKind::User,
                role: Some("clinician".to_owned()),
                purpose: Some("TREAT".to_owned()),
                break_glass: false,
                action: if search {
                    "GET /fhir/{type}".to_owned()
                } else {
                    "GET /fhir/{type}/{id}".to_owned()
                },
                resource_type: Some("Observation".to_owned()),
                resource_id: (!search).then(|| format!("o{seq}")),
                patient_id: Some(format!("p{patient:05}")),
                outcome: Outcome::Allowed,
                source_address: Some(format!("10.0.{}.{}", actor / 250, actor % 250)),
                request_id: format!("r{seq}"),
                actor_ref: None,
                patients: Vec::new(),
                refusals: None,
                configuration: None,
                labels: Vec::new(),
                alert: None,
                via_client: None,
            };
            if search {
                e.set_patients((0..5).map(|k| format!("p{:05}", (patient + k * 7) % 20_000)));
            }
            e
        })
        .collect()
}

/// Nothing to look up in this stream (users, no labels, no grants).
struct NoLookups;

impl Lookups for NoLookups {
    fn has_care<'a>(&'a self, _: &'a str, _: &'a str) -> LookupFuture<'a, bool> {
        Box::pin(async { Ok(true) })
    }
    fn grantees<'a>(&'a self, _: &'a str) -> LookupFuture<'a, Vec<Grantee>> {
        Box::pin(async { Ok(Vec::new()) })
    }
}

fn evaluate(c: &mut Criterion) {
    let entries = stream(50);
    let rules = check_rules(None).unwrap();
    let mut group = c.benchmark_group("alerts");
    group.throughput(Throughput::Elements(ENTRIES));
    group.sample_size(10);
    group.bench_function("evaluate_default_rules_100k_entries", |b| {
        b.iter(|| {
            let mut ev = Evaluator::new(rules.clone());
            let mut found = 0usize;
            for e in &entries {
                found += ev.observe(e).len();
            }
            found
        });
    });
    group.finish();
}

fn follow(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = runtime.block_on(async {
        let opts = StoreOptions::new(format!("sqlite://{}/bench.db", dir.path().display()));
        let mut key = [0u8; 32];
        phivault_crypto::random_bytes(&mut key).unwrap();
        let store = Store::open(&opts, &StaticKeyProvider::from_hex(hex::encode(key)))
            .await
            .unwrap();
        let log = Arc::new(AuditLog::open(store.clone()).await.unwrap());
        // 250 ms apart: each clinician reads about twelve patients in ten minutes (no alert).
        for chunk in stream(250).chunks(5_000) {
            let _lock = store.write_lock().await;
            let mut tx = store.pool().begin().await.unwrap();
            log.append_all_in(&mut tx, chunk).await.unwrap();
            tx.commit().await.unwrap();
        }
        log
    });
    let rules = check_rules(None).unwrap();
    let mut group = c.benchmark_group("alerts");
    group.throughput(Throughput::Elements(ENTRIES));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    group.bench_function("follow_trail_100k_entries_sqlite", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let mut engine =
                    AlertEngine::new(rules.clone(), None, log.clone(), Arc::new(NoLookups))
                        .following_from(0);
                let mut read = 0;
                loop {
                    match engine.step().await.unwrap() {
                        0 => break read,
                        n => read += n,
                    }
                }
            })
        });
    });
    group.finish();
}

criterion_group!(benches, evaluate, follow);
criterion_main!(benches);
