//! Store benchmarks on a temporary SQLite database, with synthetic patients.
//!
//! `cargo bench -p phivault --bench store` measures the shipped build (AES-256-GCM);
//! `cargo bench -p phivault --bench store --features bench-noop-cipher` the same code with a
//! no-op cipher: the difference is the cost of encryption.
//!
//! Groups: `ingest_bundle_100` (one transaction Bundle of 1 Patient + 99 Observations,
//! validated and stored; throughput in resources), `validate_bundle_100` (the validation
//! part alone, for reference) and `read_by_id` (one read of a random stored resource).
//! One run takes well under two minutes.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "../src/synth.rs"]
#[allow(dead_code, unreachable_pub, unused_imports)]
mod synth;

use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use phivault_crypto::FileKeyProvider;
use phivault_fhir::{BundleRequest, Id, ResourceType, Validator};
use phivault_store::{Store, StoreOptions};
use synth::Rng;

const BUNDLE_SIZE: usize = 100;
/// Bundles stored before measuring reads.
const READ_POPULATION_BUNDLES: usize = 20;

struct Bench {
    _dir: tempfile::TempDir,
    runtime: tokio::runtime::Runtime,
    store: Store,
    validator: Validator,
}

fn setup() -> Bench {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let keys = FileKeyProvider::new(dir.path().join("master.key"));
    keys.create_if_missing().unwrap();
    let mut opts = StoreOptions::new(format!(
        "sqlite://{}",
        dir.path().join("bench.db").display()
    ));
    opts.max_bundle_entries = BUNDLE_SIZE;
    let store = runtime.block_on(Store::open(&opts, &keys)).unwrap();
    let validator = Validator::new().unwrap();
    Bench {
        _dir: dir,
        runtime,
        store,
        validator,
    }
}

impl Bench {
    fn ingest(&self, bundle: serde_json::Value) -> serde_json::Value {
        let request = BundleRequest::parse(&self.validator, bundle, BUNDLE_SIZE).unwrap();
        self.runtime
            .block_on(self.store.bundle(request, &phivault_store::NoAudit))
            .unwrap()
    }
}

fn benches(c: &mut Criterion) {
    let cipher = if phivault_crypto::NOOP_CIPHER {
        "noop"
    } else {
        "aes-256-gcm"
    };
    let bench = setup();
    let mut rng = Rng::new(42);

    let mut group = c.benchmark_group("ingest_bundle_100");
    group.throughput(Throughput::Elements(BUNDLE_SIZE as u64));
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(2));
    group.measurement_time(Duration::from_secs(15));
    group.bench_function(cipher, |b| {
        b.iter_batched(
            || synth::patient_bundle(&mut rng, BUNDLE_SIZE - 1),
            |bundle| bench.ingest(bundle),
            BatchSize::SmallInput,
        );
    });
    group.finish();

    // The validation share of ingest (no store): ingest minus this is the store's cost.
    let mut group = c.benchmark_group("validate_bundle_100");
    group.throughput(Throughput::Elements(BUNDLE_SIZE as u64));
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("parse", |b| {
        b.iter_batched(
            || synth::patient_bundle(&mut rng, BUNDLE_SIZE - 1),
            |bundle| BundleRequest::parse(&bench.validator, bundle, BUNDLE_SIZE).unwrap(),
            BatchSize::SmallInput,
        );
    });
    group.finish();

    let mut ids: Vec<(ResourceType, Id)> = Vec::new();
    for _ in 0..READ_POPULATION_BUNDLES {
        let response = bench.ingest(synth::patient_bundle(&mut rng, BUNDLE_SIZE - 1));
        for (t, id) in synth::written_references(&response) {
            ids.push((ResourceType::parse(&t).unwrap(), Id::parse(&id).unwrap()));
        }
    }
    assert!(!ids.is_empty());

    let mut group = c.benchmark_group("read_by_id");
    group.throughput(Throughput::Elements(1));
    group.sample_size(50);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(10));
    group.bench_function(cipher, |b| {
        b.iter(|| {
            let (t, id) = &ids[rng.below(ids.len())];
            bench.runtime.block_on(bench.store.read(*t, id)).unwrap()
        });
    });
    group.finish();

    bench.runtime.block_on(bench.store.close());
}

criterion_group!(store, benches);
criterion_main!(store);
