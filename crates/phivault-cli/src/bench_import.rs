//! `phivault bench import`: `phivault import` (this very binary, as a child process) of the
//! population of [`crate::population`] written as files, one transaction Bundle per patient as
//! Synthea writes them, into a temporary store. Reports the rate, the child's CPU per resource
//! and its peak resident memory: an import must stream, whatever the size of the input.

use std::io::{BufWriter, Write};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::json;
use tokio::process::Command;

use crate::bench_server::{cpu_millis, prepare_child};
use crate::cli::BenchImportArgs;
use crate::population;

/// How often the child's memory and CPU are sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);

/// What the import did.
#[derive(Debug, Clone, Default)]
struct Figures {
    files: u64,
    resources: u64,
    input_bytes: u64,
    took: Duration,
    cpu_ms: u64,
    /// The child's peak resident set (`VmHWM`), in KiB.
    peak_rss_kib: u64,
}

/// Runs the benchmark and prints its figures.
pub(crate) async fn run(args: &BenchImportArgs) -> Result<()> {
    let dir = crate::bench::TempDir::new()?;
    let input = dir.0.join("input");
    crate::commands::create_private_dir(&input)
        .with_context(|| format!("creating {}", input.display()))?;
    eprintln!(
        "phivault: bench import: writing {} patients (seed {}) as transaction Bundles",
        args.patients, args.seed
    );
    let mut figures = write_population(&input, args.patients, args.seed)?;
    let backend = if args.database_url.is_some() {
        "postgres"
    } else {
        "sqlite"
    };
    eprintln!(
        "phivault: bench import: importing {} resources ({:.1} MB of JSON) into a temporary \
         {backend} store",
        figures.resources,
        figures.input_bytes as f64 / 1e6
    );
    import(&dir.0, &input, args.database_url.as_deref(), &mut figures).await?;
    let rate = figures.resources as f64 / figures.took.as_secs_f64().max(f64::EPSILON);
    let cpu_per_resource = figures.cpu_ms as f64 / (figures.resources.max(1) as f64);
    if args.json {
        let doc = json!({
            "database": backend,
            "encryption": !phivault_crypto::NOOP_CIPHER,
            "audit": !phivault_audit::BENCH_NO_AUDIT,
            "seed": args.seed,
            "patients": args.patients,
            "files": figures.files,
            "resources": figures.resources,
            "input_bytes": figures.input_bytes,
            "seconds": figures.took.as_secs_f64(),
            "resources_per_second": rate,
            "cpu_ms_per_resource": cpu_per_resource,
            "peak_rss_bytes": figures.peak_rss_kib * 1024,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        println!("database: {backend}");
        println!("{}", crate::bench::cipher_line());
        println!("{}", import_audit_line());
        println!(
            "import: {} files, {} resources ({:.1} MB of JSON) in {:.1} s = {rate:.0} \
             resources/s, {cpu_per_resource:.2} ms of CPU per resource, peak resident memory {} MB",
            figures.files,
            figures.resources,
            figures.input_bytes as f64 / 1e6,
            figures.took.as_secs_f64(),
            figures.peak_rss_kib / 1024
        );
    }
    Ok(())
}

/// Whether the import audits its writes (it does, except in a bench-no-audit build).
fn import_audit_line() -> &'static str {
    if phivault_audit::BENCH_NO_AUDIT {
        "audit: off (bench-no-audit build: the import appends nothing)"
    } else {
        "audit: on (each resource's entry is written in its transaction)"
    }
}

/// Writes patient `i` of the population as `patient-i.json`, one at a time (the generator
/// holds one Bundle in memory, never the population).
fn write_population(dir: &Path, patients: u64, seed: u64) -> Result<Figures> {
    let mut figures = Figures::default();
    for index in 0..patients {
        let record = population::patient(seed, index);
        let path = dir.join(format!("patient-{index:07}.json"));
        let file =
            std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let mut out = BufWriter::new(file);
        serde_json::to_writer(&mut out, &record.bundle)?;
        out.flush()
            .with_context(|| format!("writing {}", path.display()))?;
        figures.files += 1;
        figures.resources += record.resources as u64;
        figures.input_bytes += std::fs::metadata(&path)?.len();
    }
    Ok(figures)
}

/// Runs `phivault import input` on a fresh store under `dir`, sampling the child's peak
/// resident memory and CPU time until it exits.
async fn import(
    dir: &Path,
    input: &Path,
    database_url: Option<&str>,
    figures: &mut Figures,
) -> Result<()> {
    let exe = std::env::current_exe().context("locating this binary")?;
    let mut cmd = Command::new(&exe);
    cmd.arg("import")
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--master-key-file")
        .arg(dir.join("master.key"));
    if let Some(url) = database_url {
        cmd.args(["--database-url", url]);
    }
    cmd.arg(input);
    prepare_child(&mut cmd, dir);
    let log = dir.join("import.log");
    let log_file = std::fs::File::create(&log).context("creating the import log")?;
    let summary = dir.join("import.out");
    let summary_file = std::fs::File::create(&summary).context("creating the import summary")?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(summary_file))
        .stderr(Stdio::from(log_file))
        .kill_on_drop(true);
    let started = Instant::now();
    let mut child = cmd.spawn().context("starting phivault import")?;
    let pid = child.id().context("phivault import exited at once")?;
    let status = loop {
        // Read before checking for exit: once reaped, /proc no longer has the child.
        if let Some(kib) = peak_rss_kib(pid) {
            figures.peak_rss_kib = figures.peak_rss_kib.max(kib);
        }
        if let Some(ms) = cpu_millis(pid) {
            figures.cpu_ms = figures.cpu_ms.max(ms);
        }
        if let Some(status) = child.try_wait().context("waiting for phivault import")? {
            break status;
        }
        tokio::time::sleep(SAMPLE_EVERY).await;
    };
    figures.took = started.elapsed();
    if !status.success() {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(20).collect();
        bail!(
            "phivault import failed ({status}); its output ends with:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    // The importer's own count, so that a run that skipped anything cannot pass for a rate.
    let printed = std::fs::read_to_string(&summary).unwrap_or_default();
    let imported = imported_resources(&printed)
        .with_context(|| format!("phivault import printed no summary: {printed}"))?;
    if imported != figures.resources {
        bail!(
            "phivault import wrote {imported} resources of {}: {printed}",
            figures.resources
        );
    }
    Ok(())
}

/// N of the `imported: N resources, ...` line `phivault import` prints at the end.
fn imported_resources(stdout: &str) -> Option<u64> {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("imported: "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// The peak resident set of process `pid` so far (`VmHWM` of `/proc/PID/status`), in KiB.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_importers_count_is_read_from_its_summary() {
        let out = "imported: 417 resources, 2 files, 0 errors\n";
        assert_eq!(imported_resources(out), Some(417));
        assert_eq!(imported_resources("something else\n"), None);
    }

    #[test]
    fn own_peak_memory_is_read() {
        let kib = peak_rss_kib(std::process::id()).unwrap();
        assert!(kib > 0);
        assert!(peak_rss_kib(u32::MAX).is_none());
    }

    #[test]
    fn the_population_is_written_one_bundle_per_patient() {
        let dir = crate::bench::TempDir::new().unwrap();
        let figures = write_population(&dir.0, 3, 5).unwrap();
        assert_eq!(figures.files, 3);
        let expected: u64 = (0..3)
            .map(|i| population::patient(5, i).resources as u64)
            .sum();
        assert_eq!(figures.resources, expected);
        let first: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.0.join("patient-0000000.json")).unwrap())
                .unwrap();
        assert_eq!(first["type"], "transaction");
        assert_eq!(
            first["entry"].as_array().unwrap().len() as u64,
            population::patient(5, 0).resources as u64
        );
    }
}
