//! What the search features cost through the server's router (no sockets), audited, on a
//! temporary SQLite database of 500 patients with one Observation each (see
//! `router_fixture`): `_include` and `_revinclude` against the same page without them,
//! chained parameters and `_has` against a plain search of a similar result, and date
//! ranges against the equality search that returns the same resources.
//!
//! `cargo bench -p phivault --bench search_features`. Each iteration is a whole request:
//! decisions, decryption, response, and the audit entry committed before the response
//! leaves. Each benchmark first checks the number of entries it returns.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};

#[path = "router_fixture/mod.rs"]
mod router_fixture;

use router_fixture::setup;

/// (name, query, entries the page holds).
const CASES: &[(&str, &str, usize)] = &[
    ("page_of_50", "/fhir/Observation?_count=50", 50),
    (
        "page_of_50_include_subject",
        "/fhir/Observation?_count=50&_include=Observation:subject",
        100,
    ),
    ("patients_bench7x", "/fhir/Patient?family=Bench7", 11),
    (
        "patients_bench7x_revinclude_observations",
        "/fhir/Patient?family=Bench7&_revinclude=Observation:subject",
        22,
    ),
    (
        "observations_on_one_day",
        "/fhir/Observation?date=2024-01-08",
        2,
    ),
    (
        "observations_chained_family",
        "/fhir/Observation?subject:Patient.family:exact=Bench7",
        1,
    ),
    (
        "patients_has_observation_on_one_day",
        "/fhir/Patient?_has:Observation:subject:date=2024-01-08",
        2,
    ),
    (
        "observations_in_december_equality",
        "/fhir/Observation?date=2024-12&_count=100",
        30,
    ),
    (
        "observations_in_december_range",
        "/fhir/Observation?date=ge2024-12-01&_count=100",
        30,
    ),
];

fn benches(c: &mut Criterion) {
    let bench = setup();
    let mut group = c.benchmark_group("search_features");
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(5));
    for (name, query, entries) in CASES {
        assert_eq!(bench.get(query), *entries, "{query}");
        group.bench_function(*name, |b| b.iter(|| bench.get(query)));
    }
    group.finish();
}

criterion_group!(search_features, benches);
criterion_main!(search_features);
