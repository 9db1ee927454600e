//! Starting the nodes of a cluster, and what the tests read back from them.

use std::time::{Duration, Instant};

use phivault_testkit::{Api, Backend, Server, fixtures};
use serde_json::{Value, json};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_phivault");

/// The checkpoint interval the cluster tests run with, seconds.
pub(crate) const CHECKPOINT_SECS: u64 = 3;

/// The log line of a node that became the leader (tasks/leadership.rs).
pub(crate) const LEADING: &str = "leading: running the cluster's background tasks";

/// The shared PostgreSQL server the suite runs against; None (the test is skipped) when
/// `PHIVAULT_TEST_DATABASE_URL` is unset, which CI never leaves it.
pub(crate) fn shared_postgres() -> Option<Backend> {
    let pg = phivault_testkit::backends()
        .into_iter()
        .find(Backend::is_postgres);
    if pg.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs the cluster tests on PostgreSQL: set PHIVAULT_TEST_DATABASE_URL"
        );
        eprintln!("skipped: the cluster tests need PHIVAULT_TEST_DATABASE_URL");
    }
    pg
}

/// A configuration file naming the node and the checkpoint interval, kept in `dir`; a
/// request waits at most 2 s for a database connection (the outage test's 503s come sooner).
pub(crate) fn node_config(dir: &tempfile::TempDir, node: &str) -> String {
    let path = dir.path().join(format!("{node}.toml"));
    std::fs::write(
        &path,
        format!(
            "[cluster]\nnode_id = \"{node}\"\ncheckpoint_interval_secs = {CHECKPOINT_SECS}\n\
             [database]\nacquire_timeout_secs = 2\n"
        ),
    )
    .unwrap();
    path.display().to_string()
}

/// `first` plus `more` further nodes on its database, each named `node-<i>` in its logs.
pub(crate) async fn nodes_of(first: Server, more: usize, dir: &tempfile::TempDir) -> Vec<Server> {
    let mut nodes = vec![first];
    for i in 1..=more {
        let config = node_config(dir, &format!("node-{i}"));
        let node = Server::start_node(BIN, &nodes[0], &["--config", &config]).await;
        nodes.push(node);
    }
    nodes
}

/// Three nodes on a fresh schema of `backend` (the temporary directory holds their
/// configuration files).
pub(crate) async fn three_nodes(backend: &Backend) -> (tempfile::TempDir, Vec<Server>) {
    let configs = tempfile::tempdir().unwrap();
    let first = Server::start(
        BIN,
        backend,
        &["--config", &node_config(&configs, "node-0")],
    )
    .await;
    let nodes = nodes_of(first, 2, &configs).await;
    (configs, nodes)
}

/// The indexes of the nodes whose logs say they lead now (the last leadership line of each
/// node is "leading", not "lost leadership").
pub(crate) fn leaders(nodes: &mut [Server]) -> Vec<usize> {
    let mut out = Vec::new();
    for (i, n) in nodes.iter_mut().enumerate() {
        if !n.is_running() {
            continue;
        }
        let log = n.stderr_text();
        let leads = match (log.rfind(LEADING), log.rfind("lost leadership")) {
            (Some(_), None) => true,
            (Some(led), Some(lost)) => led > lost,
            _ => false,
        };
        if leads {
            out.push(i);
        }
    }
    out
}

/// Waits (60 s at most) until exactly one node leads; its index.
pub(crate) async fn the_leader(nodes: &mut [Server]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = leaders(nodes);
        if now.len() == 1 {
            return now[0];
        }
        assert!(now.len() <= 1, "two nodes lead at once: {now:?}");
        assert!(Instant::now() < deadline, "no node became the leader");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A patient, created through `api`; its id.
pub(crate) async fn patient(api: &Api, family: &str) -> String {
    api.create(&fixtures::patient(family, "Cluster")).await
}

/// An Observation of `patient` carrying `marker` in its note.
pub(crate) fn observation(patient: &str, marker: &str) -> Value {
    let mut o = fixtures::observation(
        &format!("Patient/{patient}"),
        fixtures::coding(Some("http://loinc.org"), "8867-4", "Heart rate"),
        "2026-01-02T03:04:05Z",
    );
    o["note"] = json!([{ "text": marker }]);
    o
}

/// The marker in an Observation's note.
pub(crate) fn marker_of(body: &Value) -> Option<&str> {
    body["note"][0]["text"].as_str()
}

/// The latest signed checkpoint (size, time in ms), read through `node`; None before the
/// first.
pub(crate) async fn checkpoint(node: &Server) -> Option<(u64, i64)> {
    let r = Api::send(node.origin_request(
        reqwest::Method::GET,
        "/audit/checkpoint",
        Some(node.token()),
    ))
    .await;
    if r.status == 404 {
        return None;
    }
    assert_eq!(r.status, 200, "{r:?}");
    let v = r.json();
    Some((v["size"].as_u64().unwrap(), v["time"].as_i64().unwrap()))
}

/// `phivault audit verify` on the cluster's database (through `node`'s storage options):
/// passes, and how many entries it verified.
pub(crate) async fn audit_verifies(node: &Server) -> u64 {
    let out = node.cli(&["audit", "verify"], None).await;
    out.assert_ok("phivault audit verify");
    let line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("ok: "))
        .unwrap_or_else(|| panic!("audit verify printed no ok line:\n{}", out.stdout));
    line.trim_start_matches("ok: ")
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("audit verify's line names no entry count: {line}"))
}
