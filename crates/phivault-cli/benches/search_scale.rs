//! Search cost against data size: the same queries over 100, 1,000 and 10,000 patients with
//! four Observations each (500, 5,000 and 50,000 resources), through the server's router (no
//! sockets) as a system app (whose searches leave labelled resources out, in SQL), audited.
//!
//! `cargo bench -p phivault --bench search_scale`. Groups, one case per size:
//! - `patient_observations`: `Observation?subject=Patient/X` (four hits): a patient-scoped
//!   search must cost what it returns, flat across sizes.
//! - `patient_observations_filtered`: the same with `code` and a `date` range.
//! - `type_page_no_total`: the first 50 Observations of the type with `_total=none`.
//! - `type_page`: the same with its total, which counts every match (grows with the data).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

#[path = "router_fixture/mod.rs"]
mod router_fixture;

use router_fixture::setup_sized;

/// Patients per size (each with [`PER_PATIENT`] Observations).
const SIZES: [usize; 3] = [100, 1_000, 10_000];
const PER_PATIENT: usize = 4;

/// A case: its group name, its URI for patient `i`, and the hits it returns.
type Case<'a> = (&'static str, Box<dyn Fn(usize) -> String + 'a>, usize);

fn benches(c: &mut Criterion) {
    for n in SIZES {
        let bench = setup_sized(n, PER_PATIENT);
        let cases: [Case<'_>; 4] = [
            (
                "patient_observations",
                Box::new(|i| format!("/fhir/Observation?subject=Patient/{}", bench.patients[i])),
                PER_PATIENT,
            ),
            (
                "patient_observations_filtered",
                Box::new(|i| {
                    format!(
                        "/fhir/Observation?subject=Patient/{}&code=http://loinc.org%7C8867-4\
                         &date=ge2024-01-01&status=final",
                        bench.patients[i]
                    )
                }),
                PER_PATIENT,
            ),
            (
                "type_page_no_total",
                Box::new(|_| "/fhir/Observation?_count=50&_total=none".to_owned()),
                50,
            ),
            (
                "type_page",
                Box::new(|_| "/fhir/Observation?_count=50".to_owned()),
                50,
            ),
        ];
        for (name, uri, expected) in &cases {
            assert_eq!(bench.get(&uri(0)), *expected, "{name} at {n} patients");
            let mut group = c.benchmark_group(*name);
            configure(&mut group);
            let mut i = 0usize;
            group.bench_function(BenchmarkId::from_parameter(n), |b| {
                b.iter(|| {
                    i = (i + 7) % bench.patients.len();
                    bench.get(&uri(i))
                });
            });
            group.finish();
        }
    }
}

fn configure(group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(4));
}

criterion_group!(search_scale, benches);
criterion_main!(search_scale);
