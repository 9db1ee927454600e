//! The HTTPS load generator of `phivault bench http`: `connections` workers, each with its
//! own keep-alive connection, send one workload's requests back to back for a fixed time.
//! Each worker's first request (the TLS handshake) is made before the clock starts; it is
//! not timed, but a refusal of it counts among the run's errors.
//!
//! Latencies are kept exactly (4 bytes per request; a 5-second run at 20,000 req/s is 400 kB)
//! and sorted once, so p50 and p99 are exact: no histogram crate is needed for that.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use tokio::sync::Barrier;

use crate::bench_server::{BenchServer, Tokens, cpu_millis, form_encode, https_client};
use crate::population::PatientRecord;
use crate::synth::Rng;

/// What is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Workload {
    /// `GET Type/id` of a random resource of the population.
    Read,
    /// `Patient?family=` a random patient's family name.
    Family,
    /// `Patient?identifier=system|value` of a random patient's record number.
    Identifier,
    /// `Observation?patient=X&code=loinc|C&_count=50`.
    ObsCode,
    /// `Observation?patient=X&date=geD&_count=50`, D about two thirds into X's history.
    ObsDate,
    /// `Patient/X/$everything`.
    Everything,
}

impl Workload {
    pub(crate) const ALL: [Workload; 6] = [
        Workload::Read,
        Workload::Family,
        Workload::Identifier,
        Workload::ObsCode,
        Workload::ObsDate,
        Workload::Everything,
    ];

    /// The name of `--workloads` and of the JSON.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Workload::Read => "read",
            Workload::Family => "family",
            Workload::Identifier => "identifier",
            Workload::ObsCode => "obs-code",
            Workload::ObsDate => "obs-date",
            Workload::Everything => "everything",
        }
    }

    /// The label of the table.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Workload::Read => "read by id",
            Workload::Family => "Patient?family=",
            Workload::Identifier => "Patient?identifier=",
            Workload::ObsCode => "Observation?patient&code",
            Workload::ObsDate => "Observation?patient&date=ge",
            Workload::Everything => "Patient/$everything",
        }
    }

    /// The URL of the next request.
    fn url(self, base: &str, target: &Target, rng: &mut Rng) -> String {
        let p = &target.patients[rng.below(target.patients.len())].1;
        match self {
            Workload::Read => {
                let (rtype, id) = &target.resources[rng.below(target.resources.len())];
                format!("{base}/{rtype}/{id}")
            }
            Workload::Family => format!("{base}/Patient?family={}", form_encode(&p.family)),
            Workload::Identifier => {
                format!("{base}/Patient?identifier={}", form_encode(&p.identifier))
            }
            Workload::ObsCode => {
                let code = &p.codes[rng.below(p.codes.len())];
                format!(
                    "{base}/Observation?patient={}&code={}&_count=50",
                    p.id,
                    form_encode(&format!("http://loinc.org|{code}"))
                )
            }
            Workload::ObsDate => format!(
                "{base}/Observation?patient={}&date=ge{}&_count=50",
                p.id, p.recent
            ),
            Workload::Everything => format!("{base}/Patient/{}/$everything", p.id),
        }
    }
}

/// One patient as the workloads ask about them (server ids).
#[derive(Debug, Clone)]
struct PatientTarget {
    id: String,
    family: String,
    identifier: String,
    codes: Vec<String>,
    recent: String,
}

/// What the ingest wrote: every patient (by population index) and every resource.
#[derive(Debug, Default)]
pub(crate) struct Target {
    patients: Vec<(u64, PatientTarget)>,
    resources: Vec<(String, String)>,
}

impl Target {
    /// Adds patient `index` from the `Type/id` pairs its transaction answered.
    pub(crate) fn add(
        &mut self,
        index: u64,
        record: &PatientRecord,
        written: &[(String, String)],
    ) -> Result<()> {
        let id = written
            .iter()
            .find(|(t, _)| t == "Patient")
            .map(|(_, id)| id.clone())
            .context("a transaction answer names no Patient")?;
        if written.len() != record.resources {
            bail!(
                "a transaction of {} resources answered {} entries",
                record.resources,
                written.len()
            );
        }
        self.patients.push((
            index,
            PatientTarget {
                id,
                family: record.family.clone(),
                identifier: record.identifier.clone(),
                codes: record.codes.clone(),
                recent: record.recent.clone(),
            },
        ));
        self.resources.extend(written.iter().cloned());
        Ok(())
    }

    /// Takes in another worker's part.
    pub(crate) fn merge(&mut self, other: Target) {
        self.patients.extend(other.patients);
        self.resources.extend(other.resources);
    }

    /// Population order, whatever order the workers ingested in (the same seed then picks
    /// the same patients).
    pub(crate) fn sort(&mut self) {
        self.patients.sort_by_key(|(i, _)| *i);
        self.resources.sort();
    }
}

/// The figures of one workload at one concurrency.
#[derive(Debug, Clone)]
pub(crate) struct Run {
    workload: Workload,
    connections: u64,
    /// Successful requests.
    requests: u64,
    errors: u64,
    first_error: Option<String>,
    elapsed: Duration,
    p50: Duration,
    p99: Duration,
    mean_bytes: u64,
    /// Server CPU (user + system) over the run; `None` without `/proc`.
    cpu: Option<Duration>,
}

impl Run {
    fn per_second(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.requests as f64 / secs
        } else {
            0.0
        }
    }

    /// Server CPU milliseconds per request.
    fn cpu_per_request(&self) -> Option<f64> {
        let cpu = self.cpu?;
        (self.requests > 0).then(|| cpu.as_secs_f64() * 1e3 / self.requests as f64)
    }

    /// One line for the progress output.
    pub(crate) fn summary(&self) -> String {
        let mut line = format!(
            "{} requests, {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, server CPU {} ms/req",
            self.requests,
            self.per_second(),
            ms(self.p50),
            ms(self.p99),
            self.cpu_per_request()
                .map_or("?".to_owned(), |c| format!("{c:.3}"))
        );
        if let Some(e) = &self.first_error {
            line.push_str(&format!(", {} errors (first: {e})", self.errors));
        }
        line
    }

    /// The run as JSON.
    pub(crate) fn json(&self) -> Value {
        json!({
            "workload": self.workload.name(),
            "connections": self.connections,
            "requests": self.requests,
            "errors": self.errors,
            "seconds": self.elapsed.as_secs_f64(),
            "requests_per_second": self.per_second(),
            "p50_ms": ms(self.p50),
            "p99_ms": ms(self.p99),
            "server_cpu_ms_per_request": self.cpu_per_request(),
            "mean_response_bytes": self.mean_bytes,
        })
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The final table.
pub(crate) fn table(runs: &[Run]) -> Vec<String> {
    let mut lines = vec![format!(
        "{:<28} {:>5} {:>9} {:>9} {:>8} {:>8} {:>11} {:>8} {:>6}",
        "workload",
        "conns",
        "requests",
        "req/s",
        "p50 ms",
        "p99 ms",
        "cpu ms/req",
        "bytes",
        "errors"
    )];
    for r in runs {
        lines.push(format!(
            "{:<28} {:>5} {:>9} {:>9.0} {:>8.2} {:>8.2} {:>11} {:>8} {:>6}",
            r.workload.label(),
            r.connections,
            r.requests,
            r.per_second(),
            ms(r.p50),
            ms(r.p99),
            r.cpu_per_request()
                .map_or("?".to_owned(), |c| format!("{c:.3}")),
            r.mean_bytes,
            r.errors
        ));
    }
    lines
}

/// What one worker measured.
#[derive(Default)]
struct WorkerFigures {
    latencies: Vec<u32>,
    errors: u64,
    first_error: Option<String>,
    bytes: u64,
}

/// Runs `workload` on `connections` connections for `duration`.
pub(crate) async fn run(
    workload: Workload,
    connections: u64,
    duration: Duration,
    seed: u64,
    server: &BenchServer,
    tokens: &Tokens,
    target: &Arc<Target>,
) -> Result<Run> {
    if target.patients.is_empty() || target.resources.is_empty() {
        bail!("nothing was ingested");
    }
    let ready = Arc::new(Barrier::new(
        usize::try_from(connections).context("too many connections")? + 1,
    ));
    let mut workers = Vec::new();
    for w in 0..connections {
        let client = https_client(&server.ca_pem)?;
        let (base, tokens) = (server.base.clone(), tokens.clone());
        let (target, ready) = (Arc::clone(target), Arc::clone(&ready));
        let mut rng = Rng::new(seed ^ (w + 1).wrapping_mul(0xA24B_AED4_963E_E407));
        workers.push(tokio::spawn(async move {
            // The connection (TCP and TLS handshakes) before the clock starts.
            let url = workload.url(&base, &target, &mut rng);
            // An overloaded server may refuse it (503 when no database connection frees up in
            // time): that is a figure of the run, not a failure of the benchmark.
            let warmup = get(&client, &url, &tokens).await;
            ready.wait().await;
            let mut figures = WorkerFigures::default();
            if let Err(status) = warmup? {
                figures.errors += 1;
                figures.first_error = Some(format!("{status} (first request)"));
            }
            let deadline = Instant::now() + duration;
            while Instant::now() < deadline {
                let url = workload.url(&base, &target, &mut rng);
                let start = Instant::now();
                match get(&client, &url, &tokens).await? {
                    Ok(bytes) => {
                        let us = start.elapsed().as_micros();
                        figures
                            .latencies
                            .push(u32::try_from(us).unwrap_or(u32::MAX));
                        figures.bytes += bytes;
                    }
                    Err(e) => {
                        figures.errors += 1;
                        figures.first_error.get_or_insert(e);
                    }
                }
            }
            Ok::<_, anyhow::Error>(figures)
        }));
    }
    ready.wait().await;
    let cpu_before = cpu_millis(server.pid());
    let started = Instant::now();
    let mut all = WorkerFigures::default();
    for w in workers {
        let f = w.await.context("a load worker failed")??;
        all.latencies.extend(f.latencies);
        all.errors += f.errors;
        all.bytes += f.bytes;
        if all.first_error.is_none() {
            all.first_error = f.first_error;
        }
    }
    let elapsed = started.elapsed();
    let cpu = match (cpu_before, cpu_millis(server.pid())) {
        (Some(a), Some(b)) => Some(Duration::from_millis(b.saturating_sub(a))),
        _ => None,
    };
    all.latencies.sort_unstable();
    let n = all.latencies.len();
    let at = |q: usize| {
        if n == 0 {
            Duration::ZERO
        } else {
            Duration::from_micros(u64::from(all.latencies[((n * q) / 100).min(n - 1)]))
        }
    };
    let requests = n as u64;
    Ok(Run {
        workload,
        connections,
        requests,
        errors: all.errors,
        first_error: all.first_error,
        elapsed,
        p50: at(50),
        p99: at(99),
        mean_bytes: all.bytes.checked_div(requests).unwrap_or(0),
        cpu,
    })
}

/// One GET: `Ok(Ok(bytes))` for a 2xx answer read in full, `Ok(Err(status))` for another
/// answer, `Err` when the connection failed.
async fn get(
    client: &reqwest::Client,
    url: &str,
    tokens: &Tokens,
) -> Result<std::result::Result<u64, String>> {
    let response = client
        .get(url)
        .header("authorization", tokens.bearer())
        .header("accept", "application/fhir+json")
        .send()
        .await
        .context("sending a request")?;
    let status = response.status();
    let body = response.bytes().await.context("reading an answer")?;
    if status.is_success() {
        Ok(Ok(body.len() as u64))
    } else {
        Ok(Err(status.to_string()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn urls_of_each_workload() {
        let record = crate::population::patient(1, 0);
        let mut target = Target::default();
        let mut written = vec![("Patient".to_owned(), "p1".to_owned())];
        written.extend((1..record.resources).map(|i| ("Observation".to_owned(), format!("o{i}"))));
        target.add(0, &record, &written).unwrap();
        let mut rng = Rng::new(1);
        let base = "https://h/fhir";
        let url = |w: Workload, rng: &mut Rng| w.url(base, &target, rng);
        assert!(url(Workload::Read, &mut rng).starts_with("https://h/fhir/"));
        assert!(url(Workload::Family, &mut rng).starts_with("https://h/fhir/Patient?family="));
        assert!(
            url(Workload::Identifier, &mut rng)
                .starts_with("https://h/fhir/Patient?identifier=http%3A%2F%2Fhospital")
        );
        let code = url(Workload::ObsCode, &mut rng);
        assert!(
            code.starts_with(
                "https://h/fhir/Observation?patient=p1&code=http%3A%2F%2Floinc.org%7C"
            )
        );
        assert!(code.ends_with("&_count=50"));
        assert!(url(Workload::ObsDate, &mut rng).contains("patient=p1&date=ge2"));
        assert_eq!(
            url(Workload::Everything, &mut rng),
            "https://h/fhir/Patient/p1/$everything"
        );
        assert!(target.add(1, &record, &written[1..]).is_err());
    }
}
