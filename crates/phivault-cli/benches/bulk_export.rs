//! What a system-level Bulk Data export costs through the server's router (no sockets):
//! 500 patients with four Observations each (2,500 resources), exported by a SMART backend
//! service (`system/*.rs`) as a client does it: kick-off, status (the manifest), every NDJSON
//! file downloaded, the job deleted. Every resource is a search hit of the app, decided,
//! decrypted and named per patient in the kick-off's audit entry.
//!
//! The same export through a research project (`deidentification=bench`, the `safe-harbor`
//! preset, purpose HRESCH, every patient's consent permitting research): the same reads and
//! decisions, plus the de-identification of every resource and the risk figures.
//!
//! `cargo bench -p phivault --bench bulk_export`; resources per second is the throughput
//! criterion reports (`thrpt`).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

#[path = "router_fixture/mod.rs"]
mod router_fixture;

use router_fixture::setup_sized;

const PATIENTS: usize = 500;
const PER_PATIENT: usize = 4;

fn benches(c: &mut Criterion) {
    let bench = setup_sized(PATIENTS, PER_PATIENT).with_research_project();
    let resources = bench.bulk_export();
    assert_eq!(
        resources,
        PATIENTS * (1 + PER_PATIENT),
        "every resource exported"
    );
    let mut group = c.benchmark_group("bulk_export");
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(resources as u64));
    group.bench_function("system_2500_resources", |b| b.iter(|| bench.bulk_export()));
    assert_eq!(
        bench.deidentified_export(),
        resources,
        "every resource de-identified"
    );
    group.bench_function("deidentified_2500_resources", |b| {
        b.iter(|| bench.deidentified_export())
    });
    group.finish();
}

criterion_group!(bulk, benches);
criterion_main!(bulk);
