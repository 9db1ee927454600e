//! The health probes of a real `phivault serve`, on every backend: `/healthz` and `/readyz`
//! answer without a token; with PostgreSQL taken away, `/readyz` and FHIR requests answer
//! 503 OperationOutcomes while `/healthz` stays 200, and both recover when the database comes
//! back, without a restart. The `[database]` table reaches the pool, and a database URL
//! asking for TLS the server does not have stops the start with a message naming TLS and
//! never the password.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Stdio;
use std::time::{Duration, Instant};

use phivault_testkit::{
    Api, Backend, Forwarder, PHIVAULT_ENV, Resp, Server, backends, fixtures, postgres_target,
};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_phivault");

/// `GET <origin><path>` without a token (the probes live beside `/fhir`, not under it).
async fn probe(api: &Api, path: &str) -> Resp {
    let origin = api.base().trim_end_matches("/fhir");
    Api::send(api.client().get(format!("{origin}{path}"))).await
}

fn assert_pass(r: &Resp) {
    r.assert_status(200);
    assert_eq!(r.json(), json!({"status": "pass"}), "{r:?}");
    assert_eq!(r.header("cache-control"), Some("no-store"), "{r:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn probes_answer_without_a_token_and_the_database_table_reaches_the_pool() {
    for backend in backends() {
        let config = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(
            config.path(),
            "[database]\nmax_connections = 5\nacquire_timeout_secs = 3\n\
             statement_timeout_secs = 20\n",
        )
        .unwrap();
        let config_path = config.path().to_str().unwrap().to_owned();
        let server = Server::start(BIN, &backend, &["--config", &config_path]).await;
        let api = server.api();
        for path in ["/healthz", "/readyz"] {
            assert_pass(&probe(api, path).await);
        }
        // The probes say nothing else: no version, no backend.
        let r = probe(api, "/readyz").await;
        assert!(!r.text.contains(env!("CARGO_PKG_VERSION")), "{r:?}");
        let log = server.stderr_text();
        assert!(log.contains("max_connections=5"), "{log}");
        let timeout = if backend.is_postgres() { 20 } else { 0 };
        assert!(
            log.contains(&format!("statement_timeout_secs={timeout}")),
            "{log}"
        );
        // FHIR reads work with the configured pool.
        let id = server
            .create(&fixtures::patient("Healthcheck", "Pool"))
            .await;
        server
            .get(&format!("Patient/{id}"))
            .await
            .assert_status(200);
        server.assert_no_panic();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn readiness_follows_the_database_and_recovers_without_a_restart() {
    for backend in backends() {
        let Backend::Postgres { url } = &backend else {
            continue; // SQLite is a file: it cannot go away like a server.
        };
        let mut fwd = Forwarder::start(&postgres_target(url)).await;
        let server = Server::start_proxied(BIN, &backend, &[], fwd.addr()).await;
        let api = server.api().clone();
        let id = api.create(&fixtures::patient("Readiness", "Before")).await;
        let path = format!("Patient/{id}");
        assert_pass(&probe(&api, "/readyz").await);

        fwd.stop().await;
        let started = Instant::now();
        let r = probe(&api, "/readyz").await;
        r.assert_outcome(503, &["database"]);
        assert_eq!(r.header("cache-control"), Some("no-store"), "{r:?}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "not ready within the readiness deadline, not a hang: {:?}",
            started.elapsed()
        );
        // The process is alive: a restart would not bring the database back.
        assert_pass(&probe(&api, "/healthz").await);
        api.get(&path).await.assert_outcome(503, &["database"]);

        fwd.resume().await;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = probe(&api, "/readyz").await;
            if ready.status == 200 {
                assert_pass(&ready);
                break;
            }
            ready.assert_outcome(503, &[]);
            assert!(
                Instant::now() < deadline,
                "not ready again within 20 s: {ready:?}\nstderr:\n{}",
                server.stderr_text()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let r = api.get(&path).await;
            if r.status == 200 {
                assert_eq!(r.json()["name"][0]["family"], "Readiness");
                break;
            }
            assert_eq!(r.status, 503, "while recovering: {r:?}");
            assert!(Instant::now() < deadline, "reads did not recover: {r:?}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        server.assert_no_panic();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_full_against_a_server_without_tls_stops_the_start() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A "PostgreSQL" that answers every SSLRequest with N, as one without `ssl = on` does.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = [0u8; 8];
                if socket.read_exact(&mut request).await.is_ok() {
                    let _ = socket.write_all(b"N").await;
                    let mut rest = Vec::new();
                    let _ = socket.read_to_end(&mut rest).await;
                }
            });
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "postgres://phivault:Secret-Pw-Marker@{addr}/phivault?sslmode=verify-full&\
         sslrootcert=/run/secrets/pg-ca.pem"
    );
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.arg("serve")
        .arg("--data-dir")
        .arg(dir.path())
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--database-url")
        .arg(&url)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for var in PHIVAULT_ENV {
        cmd.env_remove(var);
    }
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("the start stops instead of waiting")
        .unwrap();
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stdout.contains("listening on"), "{stdout}");
    assert!(stderr.contains("TLS to PostgreSQL failed"), "{stderr}");
    assert!(stderr.contains("server does not support TLS"), "{stderr}");
    assert!(stderr.contains("sslmode"), "{stderr}");
    assert!(!stderr.contains("Secret-Pw-Marker"), "{stderr}");
    assert!(!stdout.contains("Secret-Pw-Marker"), "{stdout}");
}
