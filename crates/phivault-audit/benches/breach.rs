//! Breach-impact reports over a trail of 1,000,000 entries (`PHIVAULT_BENCH_BREACH_SIZE`
//! overrides): 200 staff actors reading 50,000 patients over 30 days from 200 addresses, and
//! one stolen account that read 500 distinct patients in ten minutes.
//!
//! Measured: the report on the stolen account over the whole 30 days (its entries found
//! through the (actor, time) index), the report on one busy ordinary actor (5,000 entries),
//! and the report on one /24 network over one day (the time index, then each entry's
//! address). `cargo bench -p phivault-audit --bench breach`; SQLite in a temporary file.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use phivault_audit::{ActorKind, AuditEntry, AuditLog, Outcome, Selector, breach_report};
use phivault_crypto::StaticKeyProvider;
use phivault_store::{Store, StoreOptions};

const START: i64 = 1_780_000_000_000;
const DAY: i64 = 86_400_000;
/// The stolen account's spree: 500 reads, one every 1.2 s, on day 12.
const SPREE_START: i64 = START + 12 * DAY;
const SPREE: u64 = 500;
const CHUNK: u64 = 5_000;

fn entry(i: u64, size: u64) -> AuditEntry {
    let time = START + i64::try_from(i * (30 * DAY as u64) / size).unwrap();
    let actor = i % 200;
    AuditEntry {
        seq: 0,
        time,
        actor_id: format!("user-{actor:03}"),
        actor_kind: ActorKind::User,
        role: Some("clinician".to_owned()),
        purpose: Some("TREAT".to_owned()),
        break_glass: false,
        action: if i.is_multiple_of(5) {
            "GET /fhir/{type}".to_owned()
        } else {
            "GET /fhir/{type}/{id}".to_owned()
        },
        resource_type: Some("Observation".to_owned()),
        resource_id: Some(format!("obs-{i:010}")),
        patient_id: Some(format!("pat-{:05}", (i * 7919) % 50_000)),
        outcome: if i.is_multiple_of(97) {
            Outcome::Denied
        } else {
            Outcome::Allowed
        },
        source_address: Some(format!(
            "10.{}.{}.{}",
            actor % 4,
            actor % 50,
            1 + actor % 200
        )),
        request_id: format!("req-{i:010}"),
        actor_ref: None,
        patients: Vec::new(),
        refusals: None,
        configuration: None,
        labels: Vec::new(),
        alert: None,
        via_client: None,
    }
}

fn spree(k: u64) -> AuditEntry {
    AuditEntry {
        time: SPREE_START + i64::try_from(k).unwrap() * 1_200,
        actor_id: "thief".to_owned(),
        source_address: Some("203.0.113.9".to_owned()),
        patient_id: Some(format!("pat-{:05}", k * 97)),
        request_id: format!("spree-{k:04}"),
        outcome: Outcome::Allowed,
        ..entry(k, 1)
    }
}

async fn fill(log: &AuditLog, size: u64) {
    let store = log.store().clone();
    let mut done = 0;
    while done < size {
        let k = (size - done).min(CHUNK);
        let mut entries: Vec<AuditEntry> = (done..done + k).map(|i| entry(i, size)).collect();
        // The spree lands in the middle of the trail, in time order.
        if done <= size / 2 && size / 2 < done + k {
            entries.extend((0..SPREE).map(spree));
            entries.sort_by_key(|e| e.time);
        }
        let _lock = store.write_lock().await;
        let mut tx = store.pool().begin().await.unwrap();
        log.append_all_in(&mut tx, &entries).await.unwrap();
        tx.commit().await.unwrap();
        done += k;
    }
}

fn benches(c: &mut Criterion) {
    let size: u64 = std::env::var("PHIVAULT_BENCH_BREACH_SIZE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = runtime.block_on(async {
        let opts = StoreOptions::new(format!("sqlite://{}/bench.db", dir.path().display()));
        let mut key = [0u8; 32];
        phivault_crypto::random_bytes(&mut key).unwrap();
        let keys = StaticKeyProvider::from_hex(hex::encode(key));
        let store = Store::open(&opts, &keys).await.unwrap();
        let log = AuditLog::open(store.clone()).await.unwrap();
        let t = Instant::now();
        fill(&log, size).await;
        eprintln!(
            "breach bench: {} entries written in {:.1} s",
            size + SPREE,
            t.elapsed().as_secs_f64()
        );
        store
    });
    let whole = (START, START + 31 * DAY);
    let thief = Selector::Actor("thief".to_owned());
    let busy = Selector::Actor("user-007".to_owned());
    let net = Selector::Network("10.3.7.0/24".parse().unwrap());
    let day = (START + 3 * DAY, START + 4 * DAY);
    runtime.block_on(async {
        let r = breach_report(&store, &thief, whole.0, whole.1)
            .await
            .unwrap();
        assert_eq!(
            r.patients.len(),
            SPREE as usize,
            "every patient of the spree"
        );
        let r = breach_report(&store, &busy, whole.0, whole.1)
            .await
            .unwrap();
        assert_eq!(r.requests + r.refused, size / 200);
        let r = breach_report(&store, &net, day.0, day.1).await.unwrap();
        assert!(r.requests > 0);
    });
    let mut group = c.benchmark_group("breach_report");
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("stolen_account_500_patients_in_1m", |b| {
        b.iter(|| {
            runtime
                .block_on(breach_report(&store, &thief, whole.0, whole.1))
                .unwrap()
        })
    });
    group.bench_function("busy_actor_5000_entries_in_1m", |b| {
        b.iter(|| {
            runtime
                .block_on(breach_report(&store, &busy, whole.0, whole.1))
                .unwrap()
        })
    });
    group.bench_function("network_24_one_day_in_1m", |b| {
        b.iter(|| {
            runtime
                .block_on(breach_report(&store, &net, day.0, day.1))
                .unwrap()
        })
    });
    group.finish();
}

criterion_group!(breach, benches);
criterion_main!(breach);
