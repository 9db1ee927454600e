//! What the detection rules cost per audit entry: the default rules over a day-like stream
//! of audited reads and searches (200 clinicians, 20,000 patients, one entry every 50 ms on
//! average, addresses and bulk use already known), to set against the cost of the audited
//! read that wrote the entry (BENCHMARKS.md).
//!
//! `cargo bench -p phivault-alerts --bench evaluate`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use phivault_alerts::check_rules;
use phivault_alerts::rules::Evaluator;
use phivault_audit::{ActorKind, AuditEntry, Outcome};

const ENTRIES: u64 = 100_000;

fn stream() -> Vec<AuditEntry> {
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
                time: 1_796_212_800_000 + i64::try_from(seq * 50).unwrap(),
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
            };
            if search {
                e.set_patients((0..5).map(|k| format!("p{:05}", (patient + k * 7) % 20_000)));
            }
            e
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let entries = stream();
    let rules = check_rules(None).unwrap();
    let mut group = c.benchmark_group("alerts");
    group.throughput(Throughput::Elements(ENTRIES));
    group.sample_size(10);
    group.bench_function("default rules over 100k audited reads", |b| {
        b.iter(|| {
            let mut ev = Evaluator::new(rules.clone());
            // Every principal's address and history are known after its first entry (the
            // engine's one lookup per principal is not what is measured here).
            let mut found = 0usize;
            for e in &entries {
                found += ev.observe(e).len();
            }
            found
        });
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
