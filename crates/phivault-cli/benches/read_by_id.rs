//! Read by id through the server's router (no sockets), audited, over 500 patients with one
//! Observation each: the per-request cost of authentication, authorization, consent, the
//! read and its audit entry, without TLS or the network.
//!
//! `cargo bench -p phivault --bench read_by_id`. Cases of the `read_by_id` group:
//! - `app_patient`, `app_observation`: a system app (client credentials token) reads a
//!   Patient, an Observation;
//! - `patient_own_record`: a patient's session reads their own Patient (a user token, a
//!   linked patient, the patient's consents).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};

#[path = "router_fixture/mod.rs"]
mod router_fixture;

fn benches(c: &mut Criterion) {
    let bench = router_fixture::setup();
    let n = bench.patients.len();
    let session = bench.patient_session(3);
    let own = format!("/fhir/Patient/{}", bench.patients[3]);
    assert_eq!(bench.get_as(&session, &own), 1);

    let mut group = c.benchmark_group("read_by_id");
    group.sample_size(20);
    group.warm_up_time(Duration::from_secs(2));
    group.measurement_time(Duration::from_secs(6));
    let mut i = 0usize;
    group.bench_function("app_patient", |b| {
        b.iter(|| {
            i = (i + 7) % n;
            bench.get(&format!("/fhir/Patient/{}", bench.patients[i]))
        });
    });
    group.bench_function("app_observation", |b| {
        b.iter(|| {
            i = (i + 7) % n;
            bench.get(&format!("/fhir/Observation/{}", bench.observations[i]))
        });
    });
    group.bench_function("patient_own_record", |b| {
        b.iter(|| bench.get_as(&session, &own));
    });
    group.finish();
}

criterion_group!(read_by_id, benches);
criterion_main!(read_by_id);
