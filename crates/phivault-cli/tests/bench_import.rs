//! `phivault bench import` end to end with a tiny population: it writes the Bundles, runs
//! `phivault import` (this binary) as a child on a temporary store, and prints one line with
//! the rate and the child's peak memory. No figure is asserted beyond its being there (speed is
//! for the benchmark to report, not for a test to check).

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_phivault");

#[test]
fn bench_import_imports_every_resource_and_reports_peak_memory() {
    let out = Command::new(BIN)
        .args([
            "bench",
            "import",
            "--patients",
            "2",
            "--seed",
            "3",
            "--json",
        ])
        .env_remove("PHIVAULT_BENCH_CHILD")
        .env_remove("PHIVAULT_CONFIG")
        .env_remove("PHIVAULT_DATABASE_URL")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {BIN}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bench import failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let doc: serde_json::Value =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(doc["database"], "sqlite");
    assert_eq!(doc["files"], 2);
    // Two patients of 100 to 300 resources each, every one imported (a failed import exits
    // non-zero, which the bench reports as an error).
    let resources = doc["resources"].as_u64().unwrap_or_default();
    assert!((200..=600).contains(&resources), "{doc}");
    assert!(
        doc["resources_per_second"].as_f64().unwrap_or_default() > 0.0,
        "{doc}"
    );
    // The importer's own memory, sampled while it ran: at least the binary's resident pages.
    assert!(
        doc["peak_rss_bytes"].as_u64().unwrap_or_default() > 1_000_000,
        "{doc}"
    );
}
