//! Several nodes on one PostgreSQL database, each the real `phivault serve` with the same
//! database and master key, driven over HTTPS:
//!
//! - three nodes under a bounded mixed load through all of them (creates, updates, reads,
//!   searches), with an erasure on one node followed at once by reads on the others, a
//!   key-encryption key rotation in the middle, and wrong passwords spread over the nodes:
//!   no acknowledged write is lost (each reads back at its last acknowledged version from
//!   another node), the erased patient is never served by any node once the erasure has
//!   answered, a lockout reached through several nodes holds on all of them, a token revoked
//!   through one node and a client disabled beside another are refused by all, exactly one
//!   node leads, and `audit verify` passes over the one chain all nodes appended to;
//! - `kill -9` of the leader: another node takes over and signs the next checkpoint within
//!   about one interval of the last one (`e2e_cluster/failover.rs`);
//! - PostgreSQL itself crashing and coming back (a private server, so the shared one other
//!   tests use is left alone): every node answers 503 while it is away and serves again
//!   without a restart, nothing acknowledged is lost (`e2e_cluster/failover.rs`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "e2e_cluster/failover.rs"]
mod failover;
#[path = "e2e_cluster/nodes.rs"]
mod nodes;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use phivault_testkit::{Api, ClientAuth, Marker, OAuthHttp, random_username};
use serde_json::json;

use nodes::{
    audit_verifies, leaders, marker_of, observation, patient, shared_postgres, the_leader,
    three_nodes,
};

/// How long the mixed load runs.
const LOAD: Duration = Duration::from_secs(12);
/// Concurrent clients, each going round the nodes.
const CLIENTS: usize = 6;

/// A write a node acknowledged: the resource's id, version and the marker it carried.
#[derive(Debug, Clone)]
struct Acked {
    id: String,
    version: u64,
    marker: String,
}

/// A read of the erased patient's data: when it was sent, which node, what it answered.
#[derive(Debug)]
struct ErasedRead {
    sent: Instant,
    node: usize,
    status: u16,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_share_one_database_under_mixed_load() {
    let Some(backend) = shared_postgres() else {
        return;
    };
    let (_configs, mut nodes) = three_nodes(&backend).await;
    let apis: Vec<Api> = nodes.iter().map(|n| n.api().clone()).collect();

    // ---- A lockout reached through several nodes holds on all of them.
    let username = random_username();
    let password = nodes[0].create_user(&username, "clinician").await;
    for i in 0..5 {
        let r = nodes[i % 3]
            .login(&username, "not the password", None)
            .await;
        assert!(
            r.status == 401,
            "wrong password #{i} on node {}: {r:?}",
            i % 3
        );
    }
    for (i, node) in nodes.iter().enumerate() {
        let r = node.login(&username, &password, None).await;
        assert_eq!(
            r.status, 429,
            "node {i}: the account locked through other nodes is locked here too: {r:?}"
        );
    }

    // ---- A token revoked through one node, and a client disabled next to another, are
    // refused by every node at its next request.
    let (app, secret) = nodes[0]
        .add_client("cluster-app", "system/Patient.r", None)
        .await;
    let revoked = nodes[1].client_credentials(&app, &secret, None).await;
    let kept = nodes[2].client_credentials(&app, &secret, None).await;
    let probe = patient(&apis[0], "Probe").await;
    for api in &apis {
        for token in [&revoked, &kept] {
            api.with_token(token)
                .get(&format!("Patient/{probe}"))
                .await
                .assert_status(200);
        }
    }
    let auth = ClientAuth::Post {
        id: app.clone(),
        secret: secret.clone(),
    };
    OAuthHttp::new(&nodes[1])
        .revoke(&auth, &revoked)
        .await
        .assert_status(200);
    for (i, api) in apis.iter().enumerate() {
        let r = api
            .with_token(&revoked)
            .get(&format!("Patient/{probe}"))
            .await;
        assert_eq!(
            r.status, 401,
            "node {i} after the revocation on node 1: {r:?}"
        );
        api.with_token(&kept)
            .get(&format!("Patient/{probe}"))
            .await
            .assert_status(200);
    }
    nodes[2]
        .cli(&["client", "disable", &app], None)
        .await
        .assert_ok("phivault client disable");
    for (i, api) in apis.iter().enumerate() {
        let r = api.with_token(&kept).get(&format!("Patient/{probe}")).await;
        assert_eq!(
            r.status, 401,
            "node {i} after the client was disabled: {r:?}"
        );
    }

    // ---- The data: patients whose Observations the clients write, and one to erase.
    let family = Marker::name();
    let mut patients = Vec::new();
    for i in 0..3 {
        patients.push(patient(&apis[i % 3], family.text()).await);
    }
    let erased = patient(&apis[1], family.text()).await;
    let mut erased_obs = Vec::new();
    for i in 0..3 {
        erased_obs.push(
            apis[i % 3]
                .create(&observation(&erased, &format!("erased-{i}")))
                .await,
        );
    }
    let admin = nodes[0].staff_session(&random_username(), "admin").await;
    let admin = apis[0].with_token(&admin);

    // ---- The mixed load.
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let apis = apis.clone();
        let patients = patients.clone();
        let erased_obs = erased_obs.clone();
        let stop = stop.clone();
        clients.push(tokio::spawn(async move {
            let mut mine: BTreeMap<String, Acked> = BTreeMap::new();
            let mut erased_reads = Vec::new();
            let mut errors = Vec::new();
            let mut op = c;
            while !stop.load(Ordering::SeqCst) {
                op += 1;
                let node = op % apis.len();
                let api = &apis[node];
                match op % 5 {
                    // Create.
                    0 | 1 => {
                        let marker = format!("c{c}-op{op}");
                        let p = &patients[op % patients.len()];
                        let r = api.post_json("Observation", &observation(p, &marker)).await;
                        if r.status == 201 {
                            let v = r.json();
                            let id = v["id"].as_str().unwrap().to_owned();
                            mine.insert(
                                id.clone(),
                                Acked {
                                    id,
                                    version: 1,
                                    marker,
                                },
                            );
                        } else {
                            errors.push(format!("create on node {node}: {r:?}"));
                        }
                    }
                    // Update one of this client's own, at the version it last saw.
                    2 => {
                        let Some(last) = mine.values().nth(op % mine.len().max(1)).cloned() else {
                            continue;
                        };
                        let r = api.get(&format!("Observation/{}", last.id)).await;
                        if r.status != 200 {
                            errors.push(format!("read before update on node {node}: {r:?}"));
                            continue;
                        }
                        let mut body = r.json();
                        if body["meta"]["versionId"] != json!(last.version.to_string())
                            || marker_of(&body) != Some(&last.marker)
                        {
                            errors.push(format!(
                                "node {node} served {} at {} with {:?}, acknowledged {} with {}",
                                last.id,
                                body["meta"]["versionId"],
                                marker_of(&body),
                                last.version,
                                last.marker
                            ));
                        }
                        let marker = format!("c{c}-op{op}-u");
                        body["note"] = json!([{ "text": marker }]);
                        let r = api
                            .put_json_if_match(
                                &format!("Observation/{}", last.id),
                                &body,
                                last.version,
                            )
                            .await;
                        if r.status == 200 {
                            mine.insert(
                                last.id.clone(),
                                Acked {
                                    id: last.id.clone(),
                                    version: last.version + 1,
                                    marker,
                                },
                            );
                        } else {
                            errors.push(format!("update on node {node}: {r:?}"));
                        }
                    }
                    // Search a patient's Observations.
                    3 => {
                        let p = &patients[op % patients.len()];
                        let r = api.get(&format!("Observation?patient={p}&_count=5")).await;
                        if r.status != 200 {
                            errors.push(format!("search on node {node}: {r:?}"));
                        }
                    }
                    // Read the patient who gets erased during the run.
                    _ => {
                        let id = &erased_obs[op % erased_obs.len()];
                        let sent = Instant::now();
                        let r = api.get(&format!("Observation/{id}")).await;
                        erased_reads.push(ErasedRead {
                            sent,
                            node,
                            status: r.status,
                        });
                    }
                }
            }
            (mine, erased_reads, errors)
        }));
    }

    // One node erases while the others serve; right after its answer, the others are asked.
    tokio::time::sleep(LOAD / 3).await;
    let r = admin
        .post_json(&format!("Patient/{erased}/$erase"), &json!({}))
        .await;
    assert_eq!(r.status, 200, "the erasure on node 0: {r:?}");
    let done = Instant::now();
    for (i, api) in apis.iter().enumerate().skip(1) {
        for id in &erased_obs {
            let r = api.get(&format!("Observation/{id}")).await;
            r.assert_outcome(410, &["erased"]);
            assert_eq!(r.status, 410, "node {i} right after the erasure on node 0");
        }
        let hits = api
            .search_ids(&format!("Observation?patient={erased}"))
            .await;
        assert!(
            hits.is_empty(),
            "node {i} finds the erased patient: {hits:?}"
        );
    }

    // A key-encryption key rotation while the nodes serve (the CLI next to node 1).
    tokio::time::sleep(LOAD / 3).await;
    nodes[1]
        .cli(&["keys", "rotate", "--batch-size", "20"], None)
        .await
        .assert_ok("phivault keys rotate while three nodes serve");

    tokio::time::sleep(LOAD / 3).await;
    stop.store(true, Ordering::SeqCst);
    let mut acked = Vec::new();
    let mut erased_reads = Vec::new();
    let mut errors = Vec::new();
    for c in clients {
        let (mine, reads, errs) = c.await.unwrap();
        acked.extend(mine.into_values());
        erased_reads.extend(reads);
        errors.extend(errs);
    }
    assert!(
        errors.is_empty(),
        "requests failed under load:\n{}",
        errors.join("\n")
    );
    assert!(
        acked.len() >= 30,
        "too little load to mean anything: {}",
        acked.len()
    );

    // ---- The erased patient was never served once the erasure had answered.
    let served_after: Vec<_> = erased_reads
        .iter()
        .filter(|r| r.sent >= done && r.status != 410)
        .collect();
    assert!(
        served_after.is_empty(),
        "reads sent after the erasure answered were not refused: {served_after:?}"
    );
    assert!(
        erased_reads.iter().any(|r| r.sent >= done),
        "no read of the erased patient was sent after the erasure"
    );
    assert!(
        erased_reads
            .iter()
            .filter(|r| r.sent >= done)
            .map(|r| r.node)
            .collect::<std::collections::BTreeSet<_>>()
            .len()
            == 3,
        "every node was asked for the erased patient after the erasure"
    );

    // ---- No acknowledged write lost: each reads back, from another node than usual.
    for (i, a) in acked.iter().enumerate() {
        let r = apis[(i + 1) % 3]
            .get(&format!("Observation/{}", a.id))
            .await;
        assert_eq!(r.status, 200, "acknowledged {} is gone: {r:?}", a.id);
        let body = r.json();
        assert_eq!(
            (body["meta"]["versionId"].as_str(), marker_of(&body)),
            (
                Some(a.version.to_string().as_str()),
                Some(a.marker.as_str())
            ),
            "{} does not read back as acknowledged",
            a.id
        );
    }

    // ---- A Bulk Data export is held by the node that ran it: its status URL names that
    // node, which serves it; another node refuses it by name (the balancer routes on it).
    let r = apis[0]
        .request(reqwest::Method::GET, "$export?_type=Patient")
        .header("prefer", "respond-async")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202, "{r:?}");
    let status_url = r.headers()["content-location"].to_str().unwrap().to_owned();
    assert!(
        status_url.contains("/$export-status/node-0."),
        "{status_url}"
    );
    let path = status_url.split("/fhir/").nth(1).unwrap();
    apis[1]
        .get(path)
        .await
        .assert_outcome(404, &["(node-0)", "load balancer"]);
    apis[0].get(path).await.assert_status(200);

    // ---- One leader all along, one audit chain.
    the_leader(&mut nodes).await;
    assert_eq!(leaders(&mut nodes).len(), 1);
    for (i, n) in nodes.iter().enumerate() {
        assert!(
            !n.stderr_text().contains("lost leadership"),
            "node {i} lost leadership without a failure"
        );
        n.assert_no_panic();
    }
    let entries = audit_verifies(&nodes[2]).await;
    assert!(
        entries as usize > acked.len(),
        "the chain holds every node's entries: {entries} for {} writes",
        acked.len()
    );
    eprintln!(
        "three nodes: {} acknowledged writes, {} reads of the erased patient, {entries} audit entries",
        acked.len(),
        erased_reads.len()
    );
}
