//! Audited reads and searches through the server's router (no sockets), on a temporary SQLite
//! database: what the audit trail costs when every patient a response returns is attributed
//! (one entry per request, naming each patient, with one `audit_entry_patients` row each).
//!
//! `cargo bench -p phivault --bench audit_attribution`. Groups: `read` (one Observation by id:
//! one patient) and `search` with `_count` = N for N in 1, 10, 100, 500 (N Observations of N
//! different patients, read by a system app). Each iteration is a whole request: decision,
//! decryption, response, and the audit entry committed (group commit, durable) before the
//! response leaves. The file uses only what the server has had since before attribution, so
//! the same file measures an older checkout for the ratio.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

#[path = "router_fixture/mod.rs"]
mod router_fixture;

use router_fixture::setup;

/// Page sizes measured.
const PAGES: [usize; 4] = [1, 10, 100, 500];

fn benches(c: &mut Criterion) {
    let bench = setup();
    let mut group = c.benchmark_group("read");
    group.sample_size(30);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(5));
    let mut i = 0usize;
    group.bench_function("observation_by_id", |b| {
        b.iter(|| {
            i = (i + 7) % bench.observations.len();
            bench.get(&format!("/fhir/Observation/{}", bench.observations[i]))
        });
    });
    group.finish();

    let mut group = c.benchmark_group("search");
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(8));
    for n in PAGES {
        assert_eq!(bench.get(&format!("/fhir/Observation?_count={n}")), n);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(format!("observations_of_{n}_patients"), |b| {
            b.iter(|| bench.get(&format!("/fhir/Observation?_count={n}")));
        });
    }
    group.finish();
}

criterion_group!(audit_attribution, benches);
criterion_main!(audit_attribution);
