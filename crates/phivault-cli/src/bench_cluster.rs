//! `phivault bench cluster`: throughput of 1, 2, 3 ... nodes on one PostgreSQL database, for
//! audited reads and for writes, as ratios to one node, with where the machine's CPU went
//! (the nodes, PostgreSQL, the load generator) to show the bottleneck.
//!
//! Each node is this binary's `phivault serve` as a child process ([`BenchServer`]), with
//! its own data directory and TLS certificate and a copy of the first node's master key, all
//! on the database given. The load is spread evenly: worker `w` talks to node `w mod n`.
//! A node count's run starts the nodes it needs beyond those already running (node 1 runs
//! alone first, then 2, ...); every figure is taken while exactly that many nodes serve.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::bench_server::{BenchServer, Tokens, cpu_millis, https_client};

/// `phivault bench cluster`
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct BenchClusterArgs {
    /// The (empty) PostgreSQL database the nodes share. Its content is not removed
    /// afterwards.
    #[arg(long, value_name = "URL")]
    pub(crate) database_url: String,

    /// Node counts to measure, comma-separated (the first is the baseline of the ratios).
    #[arg(long, value_name = "N,N,...", value_delimiter = ',', default_values_t = [1u64, 2, 3], value_parser = clap::value_parser!(u64).range(1..=16))]
    pub(crate) nodes: Vec<u64>,

    /// Concurrent connections of each run, spread evenly over the nodes.
    #[arg(long, value_name = "N", default_value_t = 24, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub(crate) connections: u64,

    /// Seconds each workload runs at each node count.
    #[arg(long, value_name = "N", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub(crate) seconds: u64,

    /// Patients created before the runs (ten Observations each are the reads' targets).
    #[arg(long, value_name = "N", default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub(crate) patients: u64,

    /// Print the figures as one JSON document on stdout instead of the table.
    #[arg(long)]
    pub(crate) json: bool,
}

/// The backend-service client's scopes.
const SCOPE: &str = "system/*.cruds";

/// The two workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `GET Observation/<id>` (each read is authorized, decrypted and audited).
    Read,
    /// `POST Observation` (validated, encrypted, indexed, audited in its transaction).
    Write,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Read => "audited read",
            Kind::Write => "write",
        }
    }
}

/// One run's figures.
#[derive(Debug, Clone)]
struct Figures {
    kind: Kind,
    nodes: usize,
    requests: u64,
    errors: u64,
    first_error: Option<String>,
    elapsed: Duration,
    p50: Duration,
    p99: Duration,
    /// CPU milliseconds during the run: all nodes, PostgreSQL's processes, this process.
    cpu_nodes: u64,
    cpu_postgres: u64,
    cpu_loadgen: u64,
}

impl Figures {
    fn rate(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 {
            self.requests as f64 / s
        } else {
            0.0
        }
    }

    /// The share of the machine's CPU time the run used, 0 to 1.
    fn machine_busy(&self) -> f64 {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let total = (self.cpu_nodes + self.cpu_postgres + self.cpu_loadgen) as f64;
        total / (self.elapsed.as_secs_f64() * 1000.0 * cores).max(1.0)
    }

    fn json(&self, baseline: Option<f64>) -> Value {
        json!({
            "workload": self.kind.name(),
            "nodes": self.nodes,
            "requests": self.requests,
            "errors": self.errors,
            "requests_per_second": self.rate(),
            "ratio_to_baseline": baseline.map(|b| self.rate() / b),
            "p50_ms": self.p50.as_secs_f64() * 1000.0,
            "p99_ms": self.p99.as_secs_f64() * 1000.0,
            "cpu_ms": { "nodes": self.cpu_nodes, "postgres": self.cpu_postgres, "load_generator": self.cpu_loadgen },
            "machine_cpu_busy": self.machine_busy(),
        })
    }
}

/// Runs the benchmark and prints its figures.
pub(crate) async fn run(args: &BenchClusterArgs) -> Result<()> {
    if !args.database_url.starts_with("postgres") {
        bail!("bench cluster needs a PostgreSQL database_url: nodes share one database");
    }
    let counts: Vec<usize> = args.nodes.iter().map(|&n| n as usize).collect();
    let most = counts.iter().copied().max().unwrap_or(1);
    let dir = crate::bench::TempDir::new()?;
    let mut servers: Vec<BenchServer> = Vec::new();
    let result = measure(args, &dir.0, &counts, most, &mut servers).await;
    let failed = match &result {
        Ok(runs) => runs.iter().any(|r| r.errors > 0),
        Err(_) => true,
    };
    if failed {
        for (i, s) in servers.iter().enumerate() {
            eprintln!(
                "phivault: bench cluster: node {i}'s log ends with:\n{}",
                s.log_tail()
            );
        }
    }
    for s in servers {
        s.stop().await;
    }
    let runs = result?;
    print(args, &runs)
}

async fn measure(
    args: &BenchClusterArgs,
    dir: &Path,
    counts: &[usize],
    most: usize,
    servers: &mut Vec<BenchServer>,
) -> Result<Vec<Figures>> {
    eprintln!("phivault: bench cluster: starting node 0 on the database");
    let first_dir = dir.join("node-0");
    crate::commands::create_private_dir(&first_dir)?;
    servers.push(BenchServer::start(&first_dir, Some(&args.database_url), false).await?);
    let credentials = servers[0].add_client(&first_dir, SCOPE).await?;
    let tokens = Tokens::obtain(
        https_client(&servers[0].ca_pem)?,
        &servers[0].origin,
        credentials,
    )
    .await?;
    let (patients, observations) = populate(args, &servers[0], &tokens).await?;
    let (patients, observations) = (Arc::new(patients), Arc::new(observations));
    let mut runs = Vec::new();
    for &n in counts {
        while servers.len() < n.min(most) {
            let i = servers.len();
            eprintln!("phivault: bench cluster: starting node {i}");
            let node_dir = dir.join(format!("node-{i}"));
            crate::commands::create_private_dir(&node_dir)?;
            std::fs::copy(first_dir.join("master.key"), node_dir.join("master.key"))
                .context("copying the master key to the next node")?;
            servers.push(BenchServer::start(&node_dir, Some(&args.database_url), false).await?);
        }
        for kind in [Kind::Read, Kind::Write] {
            eprintln!(
                "phivault: bench cluster: {} on {n} node(s), {} connections, {} s",
                kind.name(),
                args.connections,
                args.seconds
            );
            let f = load(kind, &servers[..n], args, &tokens, &patients, &observations).await?;
            eprintln!(
                "phivault: bench cluster:   {:.0} req/s, {} errors",
                f.rate(),
                f.errors
            );
            runs.push(f);
        }
    }
    Ok(runs)
}

/// Creates the patients and their Observations through node 0; their ids.
async fn populate(
    args: &BenchClusterArgs,
    node: &BenchServer,
    tokens: &Tokens,
) -> Result<(Vec<String>, Vec<String>)> {
    eprintln!(
        "phivault: bench cluster: creating {} patients with ten Observations each",
        args.patients
    );
    let client = https_client(&node.ca_pem)?;
    let mut patients = Vec::new();
    let mut observations = Vec::new();
    for i in 0..args.patients {
        let p = create(
            &client,
            &node.base,
            tokens,
            "Patient",
            &json!({"resourceType": "Patient", "name": [{"family": format!("Bench{i}"), "given": ["Cluster"]}], "gender": "unknown"}),
        )
        .await?;
        for _ in 0..10 {
            observations
                .push(create(&client, &node.base, tokens, "Observation", &observation(&p)).await?);
        }
        patients.push(p);
    }
    Ok((patients, observations))
}

fn observation(patient: &str) -> Value {
    json!({
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},
        "subject": {"reference": format!("Patient/{patient}")},
        "effectiveDateTime": "2026-01-02T03:04:05Z",
        "valueQuantity": {"value": 72, "unit": "beats/minute", "system": "http://unitsofmeasure.org", "code": "/min"}
    })
}

async fn create(
    client: &reqwest::Client,
    base: &str,
    tokens: &Tokens,
    rtype: &str,
    body: &Value,
) -> Result<String> {
    let r = client
        .post(format!("{base}/{rtype}"))
        .header("authorization", tokens.bearer())
        .header("content-type", "application/fhir+json")
        .body(serde_json::to_vec(body)?)
        .send()
        .await
        .context("creating a resource")?;
    let status = r.status();
    let v: Value = r.json().await.context("reading a create's answer")?;
    if status.as_u16() != 201 {
        bail!("a create was refused ({status})");
    }
    Ok(v["id"]
        .as_str()
        .context("a create answered no id")?
        .to_owned())
}

/// One run of `kind` on `nodes`, `args.connections` workers spread evenly over them.
async fn load(
    kind: Kind,
    nodes: &[BenchServer],
    args: &BenchClusterArgs,
    tokens: &Tokens,
    patients: &Arc<Vec<String>>,
    observations: &Arc<Vec<String>>,
) -> Result<Figures> {
    let duration = Duration::from_secs(args.seconds);
    let ready = Arc::new(tokio::sync::Barrier::new(args.connections as usize + 1));
    let mut workers = Vec::new();
    for w in 0..args.connections {
        let node = &nodes[(w as usize) % nodes.len()];
        let client = https_client(&node.ca_pem)?;
        let base = node.base.clone();
        let (tokens, ready) = (tokens.clone(), ready.clone());
        let (patients, observations) = (patients.clone(), observations.clone());
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let (mut errors, mut first_error) = (0u64, None);
            let mut i = w as usize * 7919;
            // The connection (TCP and TLS handshakes) before the clock starts.
            let warm = client
                .get(format!("{base}/metadata"))
                .send()
                .await
                .map(|_| ());
            ready.wait().await;
            warm.context("connecting to a node")?;
            let deadline = Instant::now() + duration;
            while Instant::now() < deadline {
                i = i.wrapping_add(1);
                let start = Instant::now();
                let request = match kind {
                    Kind::Read => client.get(format!(
                        "{base}/Observation/{}",
                        observations[i % observations.len()]
                    )),
                    Kind::Write => client
                        .post(format!("{base}/Observation"))
                        .header("content-type", "application/fhir+json")
                        .body(serde_json::to_vec(&observation(
                            &patients[i % patients.len()],
                        ))?),
                };
                let answer = request
                    .header("authorization", tokens.bearer())
                    .header("accept", "application/fhir+json")
                    .send()
                    .await;
                match answer {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        latencies.push(start.elapsed());
                    }
                    Ok(r) => {
                        errors += 1;
                        if first_error.is_none() {
                            // The OperationOutcome's text (ids and reasons, no PHI).
                            let status = r.status();
                            let body = r.text().await.unwrap_or_default();
                            first_error = Some(format!(
                                "{status}: {}",
                                body.chars().take(300).collect::<String>()
                            ));
                        }
                    }
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| e.to_string());
                    }
                }
            }
            Ok::<_, anyhow::Error>((latencies, errors, first_error))
        }));
    }
    ready.wait().await;
    let cpu = |nodes: &[BenchServer]| {
        (
            nodes
                .iter()
                .filter_map(|n| cpu_millis(n.pid()))
                .sum::<u64>(),
            postgres_cpu_millis(),
            cpu_millis(std::process::id()).unwrap_or(0),
        )
    };
    let before = cpu(nodes);
    let started = Instant::now();
    let mut latencies = Vec::new();
    let (mut errors, mut first_error) = (0, None);
    for w in workers {
        let (l, e, f) = w.await.context("a load worker failed")??;
        latencies.extend(l);
        errors += e;
        if first_error.is_none() {
            first_error = f;
        }
    }
    let elapsed = started.elapsed();
    let after = cpu(nodes);
    latencies.sort_unstable();
    let at = |q: usize| {
        latencies
            .get((latencies.len() * q / 100).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Ok(Figures {
        kind,
        nodes: nodes.len(),
        requests: latencies.len() as u64,
        errors,
        first_error,
        elapsed,
        p50: at(50),
        p99: at(99),
        cpu_nodes: after.0.saturating_sub(before.0),
        cpu_postgres: after.1.saturating_sub(before.1),
        cpu_loadgen: after.2.saturating_sub(before.2),
    })
}

/// CPU milliseconds of every `postgres` process on this machine (the server's backends and
/// its own processes), from `/proc`; 0 when PostgreSQL runs elsewhere.
fn postgres_cpu_millis() -> u64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "postgres")
        })
        .filter_map(cpu_millis)
        .sum()
}

fn print(args: &BenchClusterArgs, runs: &[Figures]) -> Result<()> {
    let baseline = |kind: Kind| {
        runs.iter()
            .find(|r| r.kind == kind)
            .map(Figures::rate)
            .filter(|&r| r > 0.0)
    };
    if args.json {
        let doc = json!({
            "database": "postgresql",
            "connections": args.connections,
            "seconds": args.seconds,
            "cores": std::thread::available_parallelism().map_or(1, |n| n.get()),
            "runs": runs.iter().map(|r| r.json(baseline(r.kind))).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    println!(
        "database: postgresql; {} connections spread over the nodes; {} s per run; {} cores",
        args.connections,
        args.seconds,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!(
        "{:<13} {:>5} {:>9} {:>7} {:>8} {:>8} {:>7} {:>20}  errors",
        "workload", "nodes", "req/s", "ratio", "p50 ms", "p99 ms", "busy", "cpu nodes/pg/load %"
    );
    for r in runs {
        let total = (r.cpu_nodes + r.cpu_postgres + r.cpu_loadgen).max(1) as f64;
        let share = |x: u64| 100.0 * x as f64 / total;
        println!(
            "{:<13} {:>5} {:>9.0} {:>7} {:>8.2} {:>8.2} {:>6.0}% {:>6.0}/{:>5.0}/{:>5.0}  {}{}",
            r.kind.name(),
            r.nodes,
            r.rate(),
            baseline(r.kind).map_or("-".to_owned(), |b| format!("{:.2}", r.rate() / b)),
            r.p50.as_secs_f64() * 1000.0,
            r.p99.as_secs_f64() * 1000.0,
            100.0 * r.machine_busy(),
            share(r.cpu_nodes),
            share(r.cpu_postgres),
            share(r.cpu_loadgen),
            r.errors,
            r.first_error
                .as_ref()
                .map_or(String::new(), |e| format!(" (first: {e})"))
        );
    }
    Ok(())
}
