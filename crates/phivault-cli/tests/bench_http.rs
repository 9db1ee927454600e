//! `phivault bench http` end to end with a tiny population: it starts its own server (this
//! binary) over TLS, ingests, and prints a row per workload and concurrency. No figure is
//! asserted (speed is for the benchmark to report, not for a test to check).
//!
//! In a bench-only build (`--features bench-noop-cipher` or `bench-no-audit`) the server and
//! the administration commands refuse to run unless started by the bench.

use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_phivault");

const LABELS: [&str; 6] = [
    "read by id",
    "Patient?family=",
    "Patient?identifier=",
    "Observation?patient&code",
    "Observation?patient&date=ge",
    "Patient/$everything",
];

fn phivault(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("PHIVAULT_BENCH_CHILD")
        .env_remove("PHIVAULT_CONFIG")
        .env_remove("PHIVAULT_DATABASE_URL")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {BIN}: {e}"))
}

#[test]
fn bench_http_prints_a_row_per_workload_and_concurrency() {
    let out = phivault(&[
        "bench",
        "http",
        "--patients",
        "2",
        "--seconds",
        "1",
        "--connections",
        "1,2",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bench http failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("database: sqlite"), "{stdout}");
    let ingest = stdout
        .lines()
        .find(|l| l.starts_with("ingest: 2 patients, "))
        .unwrap_or_else(|| panic!("no ingest line:\n{stdout}"));
    assert!(ingest.contains("resources/s"), "{ingest}");
    for label in LABELS {
        for conns in ["1", "2"] {
            let row = stdout
                .lines()
                .find(|l| {
                    l.starts_with(label)
                        && l[label.len()..].split_whitespace().next() == Some(conns)
                })
                .unwrap_or_else(|| panic!("no row for {label} at {conns}:\n{stdout}"));
            let cols: Vec<&str> = row[label.len()..].split_whitespace().collect();
            // conns, requests, req/s, p50, p99, cpu ms/req, bytes, errors
            assert_eq!(cols.len(), 8, "{row}");
            let requests: u64 = cols[1].parse().unwrap_or(0);
            assert!(requests > 0, "no successful request: {row}");
            assert_eq!(cols[7], "0", "errors: {row}");
        }
    }
    assert!(
        stderr.contains("ingesting 2 patients"),
        "progress: {stderr}"
    );
}

#[test]
fn bench_http_json() {
    let out = phivault(&[
        "bench",
        "http",
        "--patients",
        "1",
        "--seconds",
        "1",
        "--connections",
        "1",
        "--workloads",
        "read,obs-code",
        "--json",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{stdout}"));
    assert_eq!(doc["database"], "sqlite");
    assert!(doc["ingest"]["resources"].as_u64().unwrap_or(0) >= 100);
    let runs = doc["runs"].as_array().cloned().unwrap_or_default();
    let names: Vec<&str> = runs.iter().filter_map(|r| r["workload"].as_str()).collect();
    assert_eq!(names, ["read", "obs-code"]);
    for r in &runs {
        assert!(r["requests"].as_u64().unwrap_or(0) > 0, "{r}");
        assert_eq!(r["errors"], 0, "{r}");
        assert!(r["p99_ms"].as_f64().unwrap_or(-1.0) >= r["p50_ms"].as_f64().unwrap_or(0.0));
    }
}

/// The store benchmark keeps its flags without a subcommand, and as `bench store`.
#[test]
fn bench_store_flags_still_work() {
    for prefix in [&["bench"][..], &["bench", "store"][..]] {
        let mut args = prefix.to_vec();
        args.extend([
            "--patients",
            "1",
            "--reads",
            "5",
            "--readers",
            "1",
            "--erasure-resources",
            "0",
        ]);
        let out = phivault(&args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{args:?}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("read-by-id: 5 reads"), "{stdout}");
    }
}

/// A bench-only build serves, administers and imports only under `phivault bench http` or
/// `bench import`.
#[cfg(any(feature = "bench-noop-cipher", feature = "bench-no-audit"))]
#[test]
fn bench_only_build_refuses_to_serve_or_administer() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let data = dir.path().join("data");
    let data = data.to_str().unwrap_or_default();
    for args in [
        &["serve", "--data-dir", data, "--listen", "127.0.0.1:0"][..],
        &[
            "client",
            "add",
            "--name",
            "x",
            "--scope",
            "system/*.rs",
            "--data-dir",
            data,
        ][..],
        &["init", "--data-dir", data][..],
        &["import", "--data-dir", data, "."][..],
    ] {
        let out = phivault(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} ran in a bench-only build");
        assert!(stderr.contains("bench-only build"), "{args:?}: {stderr}");
    }
    assert!(
        !data.is_empty() && !std::path::Path::new(data).join("phivault.db").exists(),
        "a refused command created a database"
    );
}
