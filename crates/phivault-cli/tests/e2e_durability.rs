//! Nothing acknowledged is lost (DESIGN.md invariant 7), on every backend: clients stream
//! creates; after about 300 have been acknowledged (201) the server is killed with SIGKILL
//! while requests are in flight; after a restart on the same data directory and database,
//! every acknowledged create reads back with the content that was sent.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use phivault_testkit::fixtures;
use phivault_testkit::{Api, Marker, Server, backends, query};
use reqwest::Method;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_phivault");

/// Acknowledged creates before the kill.
const ACKED_BEFORE_KILL: usize = 300;
/// Concurrent clients.
const CLIENTS: usize = 4;

#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_creates_survive_sigkill() {
    for backend in backends() {
        let mut server = Server::start(BIN, &backend, &[]).await;
        let api = server.api().clone();
        let family = Marker::name();
        let acked: Arc<Mutex<Vec<(String, Value)>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));

        let clients: Vec<_> = (0..CLIENTS)
            .map(|w| {
                let api = api.clone();
                let acked = Arc::clone(&acked);
                let stop = Arc::clone(&stop);
                let family = family.text().to_owned();
                tokio::spawn(async move {
                    let mut unexpected = Vec::new();
                    let mut n = 0u32;
                    while !stop.load(Ordering::SeqCst) {
                        let body = fixtures::patient_with(
                            &family,
                            &format!("Worker{w}n{n}"),
                            &fixtures::mrn(),
                            if n.is_multiple_of(2) {
                                "female"
                            } else {
                                "male"
                            },
                            "1980-01-01",
                        );
                        n += 1;
                        let rb = api.json_request(Method::POST, "Patient", &body);
                        match Api::try_send(rb).await {
                            Ok(r) if r.status == 201 => {
                                let id = r.json()["id"].as_str().unwrap_or_default().to_owned();
                                assert!(!id.is_empty(), "201 without an id: {r:?}");
                                acked.lock().unwrap().push((id, body));
                            }
                            // the server answered something else before being killed
                            Ok(r) => unexpected.push(format!("{r:?}")),
                            // connection refused or reset: the server is gone
                            Err(_) => break,
                        }
                    }
                    unexpected
                })
            })
            .collect();

        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let n = acked.lock().unwrap().len();
            if n >= ACKED_BEFORE_KILL {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "only {n} creates acknowledged in 90 s\nstderr:\n{}",
                server.stderr_text()
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // SIGKILL with requests in flight: no graceful shutdown, no flush
        server.kill();
        stop.store(true, Ordering::SeqCst);
        let mut unexpected = Vec::new();
        for c in clients {
            unexpected.extend(c.await.expect("client task"));
        }
        assert!(
            unexpected.is_empty(),
            "creates answered other than 201 before the kill: {unexpected:?}"
        );
        let acked = acked.lock().unwrap().clone();
        assert!(acked.len() >= ACKED_BEFORE_KILL);

        server.restart().await;
        let s = server.api();
        let mut lost = Vec::new();
        for (id, sent) in &acked {
            let r = s.get(&format!("Patient/{id}")).await;
            if r.status != 200 {
                lost.push(format!("{id}: {r:?}"));
                continue;
            }
            let got = r.json();
            for (k, v) in sent.as_object().expect("a fixture is an object") {
                assert_eq!(
                    &got[k], v,
                    "Patient/{id}: {k} differs from what was acknowledged"
                );
            }
        }
        assert!(
            lost.is_empty(),
            "{} of {} acknowledged creates lost after SIGKILL ({}):\n{}",
            lost.len(),
            acked.len(),
            backend.name(),
            lost.join("\n")
        );

        // search agrees: at least every acknowledged create is indexed
        let b = s
            .search_bundle(&query(
                "Patient",
                &[("family", family.text()), ("_count", "1000")],
            ))
            .await;
        let found = b["total"]
            .as_u64()
            .map(|t| t as usize)
            .unwrap_or_else(|| b["entry"].as_array().map(Vec::len).unwrap_or(0));
        assert!(
            found >= acked.len(),
            "search finds {found} of {} acknowledged creates",
            acked.len()
        );
        // and the server takes writes again
        s.create(&fixtures::patient(family.text(), "AfterRestart"))
            .await;
        server.assert_no_panic();
    }
}
