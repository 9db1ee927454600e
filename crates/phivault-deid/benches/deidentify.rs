//! De-identification throughput: one Synthea-shaped patient of about 200 resources (the
//! generator of the integration tests, every Safe Harbor class planted) through a whole
//! [`Run`] per iteration (patient context, every resource through the rules, risk, NDJSON
//! and report), under the `safe-harbor` and `gdpr-pseudonymization` presets. Throughput is
//! in resources.
//!
//! `cargo bench -p phivault-deid --bench deidentify` (add `-- --quick` for a short run).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use phivault_deid::{Config, Deidentifier, ProjectKey, Run};

#[path = "../tests/deid/synthea.rs"]
#[allow(dead_code, unreachable_pub)]
mod synthea;

/// Encounters of the benchmarked patient: 6 resources of their own and 17 per encounter,
/// 210 in all.
const ENCOUNTERS: usize = 12;

fn deidentify(c: &mut Criterion) {
    let mut profile = synthea::Profile::of(0);
    profile.encounters = ENCOUNTERS;
    let patient = synthea::patient(0, &profile);
    let resources = 1 + patient.resources.len() as u64;
    let mut group = c.benchmark_group("deidentify");
    group.throughput(Throughput::Elements(resources));
    for preset in ["safe-harbor", "gdpr-pseudonymization"] {
        let engine = Deidentifier::new(
            Config::preset(preset).unwrap(),
            ProjectKey::from_bytes(&[7; 32]).unwrap(),
            2025,
        );
        group.bench_function(format!("{preset}/1 patient, {resources} resources"), |b| {
            b.iter(|| {
                let mut run = Run::new(&engine);
                run.add_patient(&patient.id, &patient.patient);
                for (t, r) in &patient.resources {
                    run.add(&patient.id, t, r);
                }
                std::hint::black_box(run.finish(Some(2)))
            });
        });
    }
    group.finish();
}

criterion_group!(benches, deidentify);
criterion_main!(benches);
