//! `phivault bench http`: a real server over HTTPS, measured by the load generator of
//! [`crate::loadgen`]. Ingests the population of [`crate::population`] through transaction
//! Bundles, then runs each workload at each concurrency and prints a table (or JSON).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::json;

use crate::bench_server::{BenchServer, Tokens, https_client};
use crate::cli::BenchHttpArgs;
use crate::loadgen::{self, Run, Target, Workload};
use crate::population;

/// Concurrent ingest connections (each posts one patient's Bundle at a time).
const INGEST_CONNECTIONS: u64 = 4;
/// The backend-service client's scopes: everything, for every patient.
const SCOPE: &str = "system/*.cruds";

/// What the ingest did.
#[derive(Debug, Clone)]
struct Ingest {
    patients: u64,
    resources: u64,
    took: Duration,
}

/// Runs the benchmark and prints its figures.
pub(crate) async fn run(args: &BenchHttpArgs) -> Result<()> {
    let dir = crate::bench::TempDir::new()?;
    let backend = if args.database_url.is_some() {
        "postgres"
    } else {
        "sqlite"
    };
    eprintln!(
        "phivault: bench http: starting phivault serve ({backend}, TLS) on a temporary store"
    );
    let server = BenchServer::start(&dir.0, args.database_url.as_deref(), !args.no_alerts).await?;
    let result = measure(args, &dir.0, &server).await;
    if result.is_err() {
        eprintln!(
            "phivault: bench http: the server's log ends with:\n{}",
            server.log_tail()
        );
    }
    server.stop().await;
    let (ingest, runs) = result?;
    let header = vec![
        format!("database: {backend}"),
        crate::bench::cipher_line().to_owned(),
        http_audit_line().to_owned(),
    ];
    if args.json {
        let doc = json!({
            "database": backend,
            "encryption": !phivault_crypto::NOOP_CIPHER,
            "audit": !phivault_audit::BENCH_NO_AUDIT,
            "seed": args.seed,
            "seconds": args.seconds,
            "ingest": {
                "patients": ingest.patients,
                "resources": ingest.resources,
                "seconds": ingest.took.as_secs_f64(),
                "resources_per_second": rate(ingest.resources, ingest.took),
                "connections": INGEST_CONNECTIONS,
            },
            "runs": runs.iter().map(Run::json).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        for line in header {
            println!("{line}");
        }
        println!(
            "ingest: {} patients, {} resources in {:.1} s = {:.0} resources/s (one transaction \
             Bundle per patient, {INGEST_CONNECTIONS} connections)",
            ingest.patients,
            ingest.resources,
            ingest.took.as_secs_f64(),
            rate(ingest.resources, ingest.took)
        );
        for line in loadgen::table(&runs) {
            println!("{line}");
        }
    }
    Ok(())
}

/// Whether the server audits (it does, except in a bench-no-audit build).
fn http_audit_line() -> &'static str {
    if phivault_audit::BENCH_NO_AUDIT {
        "audit: off (bench-no-audit build: the server appends nothing)"
    } else {
        "audit: on (every request's entry is durable before its response leaves)"
    }
}

fn rate(n: u64, took: Duration) -> f64 {
    let secs = took.as_secs_f64();
    if secs > 0.0 { n as f64 / secs } else { 0.0 }
}

async fn measure(
    args: &BenchHttpArgs,
    dir: &std::path::Path,
    server: &BenchServer,
) -> Result<(Ingest, Vec<Run>)> {
    let credentials = server.add_client(dir, SCOPE).await?;
    let tokens = Tokens::obtain(https_client(&server.ca_pem)?, &server.origin, credentials).await?;
    let (ingest, target) = ingest(args, server, &tokens).await?;
    let workloads: Vec<Workload> = if args.workloads.is_empty() {
        Workload::ALL.to_vec()
    } else {
        Workload::ALL
            .iter()
            .copied()
            .filter(|w| args.workloads.iter().any(|n| n == w.name()))
            .collect()
    };
    let target = Arc::new(target);
    let mut runs = Vec::new();
    for workload in workloads {
        for &connections in &args.connections {
            eprintln!(
                "phivault: bench http: {} with {connections} connections for {} s",
                workload.label(),
                args.seconds
            );
            let run = loadgen::run(
                workload,
                connections,
                Duration::from_secs(args.seconds),
                args.seed,
                server,
                &tokens,
                &target,
            )
            .await?;
            eprintln!("phivault: bench http:   {}", run.summary());
            runs.push(run);
        }
    }
    Ok((ingest, runs))
}

/// Posts every patient's Bundle, [`INGEST_CONNECTIONS`] at a time. The time is the wall time
/// of the whole ingest: each worker generates its next Bundle between posts, as a client
/// would (a few milliseconds of JSON beside the server's work).
async fn ingest(
    args: &BenchHttpArgs,
    server: &BenchServer,
    tokens: &Tokens,
) -> Result<(Ingest, Target)> {
    eprintln!(
        "phivault: bench http: ingesting {} patients (seed {}) through transaction Bundles",
        args.patients, args.seed
    );
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..INGEST_CONNECTIONS.min(args.patients) {
        let client = https_client(&server.ca_pem)?;
        let url = server.base.clone();
        let tokens = tokens.clone();
        let (next, done) = (Arc::clone(&next), Arc::clone(&done));
        let (patients, seed) = (args.patients, args.seed);
        workers.push(tokio::spawn(async move {
            let mut target = Target::default();
            let mut resources = 0u64;
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= patients {
                    break;
                }
                let record = population::patient(seed, index);
                let body = serde_json::to_vec(&record.bundle)?;
                let response = client
                    .post(&url)
                    .header("authorization", tokens.bearer())
                    .header("content-type", "application/fhir+json")
                    .header("accept", "application/fhir+json")
                    .body(body)
                    .send()
                    .await
                    .context("posting a transaction Bundle")?;
                let status = response.status();
                let answer = response
                    .bytes()
                    .await
                    .context("reading a Bundle's answer")?;
                if !status.is_success() {
                    bail!(
                        "a transaction Bundle was refused ({status}): {}",
                        String::from_utf8_lossy(&answer[..answer.len().min(500)])
                    );
                }
                let answer: serde_json::Value =
                    serde_json::from_slice(&answer).context("reading a Bundle's answer")?;
                target.add(index, &record, &crate::synth::written_references(&answer))?;
                resources += record.resources as u64;
                let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                if n % (patients / 10).max(1) == 0 || n == patients {
                    eprintln!("phivault: bench http:   ingested {n}/{patients} patients");
                }
            }
            Ok::<_, anyhow::Error>((target, resources))
        }));
    }
    let mut target = Target::default();
    let mut resources = 0;
    for w in workers {
        let (t, r) = w.await.context("an ingest worker failed")??;
        target.merge(t);
        resources += r;
    }
    let took = started.elapsed();
    target.sort();
    Ok((
        Ingest {
            patients: args.patients,
            resources,
            took,
        },
        target,
    ))
}
