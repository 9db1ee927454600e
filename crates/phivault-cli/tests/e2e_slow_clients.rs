//! Slow clients at the edge: a request head trickled (or never finished) and a body never
//! sent are cut off by the server, and one address cannot hold more connections than its
//! cap while other clients are still served. Raw TLS connections (rustls over a blocking
//! socket) play the slow client; no storage is involved, so SQLite only.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use phivault_testkit::{Backend, Server};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

const BIN: &str = env!("CARGO_BIN_EXE_phivault");

/// How long the client waits for the server before calling it stuck: far above the limits
/// configured here, so only a missing limit makes a test fail.
const PATIENCE: Duration = Duration::from_secs(15);

/// The slow client's own source address, so that the test's other connections (the
/// testkit's HTTP client, from 127.0.0.1) do not count against its per-address cap.
const SLOW_CLIENT: [u8; 4] = [127, 0, 0, 2];

type Tls = StreamOwned<ClientConnection, TcpStream>;

async fn start(edge: &str) -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("phivault.toml");
    std::fs::write(&config, format!("[edge]\n{edge}")).unwrap();
    let server = Server::start(
        BIN,
        &Backend::Sqlite,
        &["--config", config.to_str().unwrap()],
    )
    .await;
    (server, dir)
}

fn port(server: &Server) -> u16 {
    let base = server.base();
    let rest = base
        .strip_prefix("https://127.0.0.1:")
        .expect("an HTTPS base URL");
    rest.split('/').next().unwrap().parse().unwrap()
}

fn client_config(ca: &Path) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Arc::new(
        ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// A TCP connection from [`SLOW_CLIENT`] to the server, with bounded reads.
fn tcp(port: u16) -> TcpStream {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    let stream = rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::from((SLOW_CLIENT, 0))).unwrap();
        socket
            .connect(SocketAddr::from(([127, 0, 0, 1], port)))
            .await
            .unwrap()
    });
    let stream = stream.into_std().unwrap();
    stream.set_nonblocking(false).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream.set_write_timeout(Some(PATIENCE)).unwrap();
    stream
}

/// A TLS connection with its handshake done, or the error that ended the handshake.
fn tls(port: u16, config: &Arc<ClientConfig>) -> std::io::Result<Tls> {
    let mut sock = tcp(port);
    let name = ServerName::try_from("localhost").unwrap();
    let mut conn = ClientConnection::new(config.clone(), name).unwrap();
    while conn.is_handshaking() {
        let (read, _) = conn.complete_io(&mut sock)?;
        if read == 0 && conn.is_handshaking() && conn.wants_read() {
            // complete_io reports a clean EOF as a zero-length read.
            let (read_again, _) = conn.complete_io(&mut sock)?;
            if read_again == 0 && conn.is_handshaking() {
                return Err(std::io::Error::new(ErrorKind::UnexpectedEof, "closed"));
            }
        }
    }
    Ok(StreamOwned::new(conn, sock))
}

/// Reads until the server closes the connection; panics when it stays open past
/// [`PATIENCE`]. Returns what was read.
fn read_until_closed(stream: &mut Tls) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("the server kept the connection open for {PATIENCE:?}")
            }
            // Reset, or closed without close_notify: closed either way.
            Err(_) => return out,
        }
    }
}

/// Sends a whole `GET /fhir/metadata` on `stream`, reads the whole response (so the
/// connection can carry another) and returns its status line.
fn metadata_status(stream: &mut Tls, close: bool) -> String {
    let connection = if close { "close" } else { "keep-alive" };
    write!(
        stream,
        "GET /fhir/metadata HTTP/1.1\r\nHost: localhost\r\nAccept: application/fhir+json\r\n\
         Connection: {connection}\r\n\r\n"
    )
    .unwrap();
    stream.flush().unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut byte).unwrap();
        assert_eq!(
            n, 1,
            "the connection closed before the end of a response head"
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().unwrap())
        })
        .expect("a Content-Length");
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).unwrap();
    head.lines().next().unwrap().to_owned()
}

fn ca(server: &Server) -> PathBuf {
    server.data_dir().join("tls").join("ca.pem")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trickled_head_and_a_missing_body_are_cut_off() {
    let (s, _dir) = start("header_read_timeout_secs = 1\nbody_read_timeout_secs = 1\n").await;
    let port = port(&s);
    let config = client_config(&ca(&s));
    let token = s.token().to_owned();
    tokio::task::spawn_blocking(move || {
        // Half a request line, then nothing: closed without an answer to a request.
        let mut slow = tls(port, &config).unwrap();
        slow.write_all(b"GET /fhir/metadata HT").unwrap();
        slow.flush().unwrap();
        let answered = read_until_closed(&mut slow);
        assert!(
            !String::from_utf8_lossy(&answered).contains(" 200 "),
            "{answered:?}"
        );

        // A connection that never sends a head at all is closed too (idle keep-alive).
        let mut idle = tls(port, &config).unwrap();
        read_until_closed(&mut idle);

        // A whole head announcing a body that never comes: 408 with an OperationOutcome.
        let mut no_body = tls(port, &config).unwrap();
        write!(
            no_body,
            "POST /fhir/Patient HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/fhir+json\r\nContent-Length: 100\r\nConnection: close\r\n\r\n\
             {{\"resourceType\""
        )
        .unwrap();
        no_body.flush().unwrap();
        let answer = String::from_utf8(read_until_closed(&mut no_body)).unwrap();
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("OperationOutcome"), "{answer}");
        assert!(answer.contains("did not arrive within 1 s"), "{answer}");

        // A prompt client is served as before.
        let mut prompt = tls(port, &config).unwrap();
        assert!(metadata_status(&mut prompt, true).starts_with("HTTP/1.1 200"));
    })
    .await
    .unwrap();
    assert_eq!(s.get("metadata").await.status, 200);
    s.assert_no_panic();
}

#[tokio::test(flavor = "multi_thread")]
async fn one_address_cannot_hold_more_connections_than_its_cap() {
    // A long head timeout: only the cap can close these connections here.
    let (s, _dir) =
        start("header_read_timeout_secs = 120\nmax_connections_per_address = 2\n").await;
    let port = port(&s);
    let config = client_config(&ca(&s));
    tokio::task::spawn_blocking(move || {
        let mut first = tls(port, &config).unwrap();
        let mut second = tls(port, &config).unwrap();
        // The third from the same address is closed before its handshake completes.
        match tls(port, &config) {
            Err(_) => {}
            Ok(mut third) => {
                // Some stacks finish the client side first; the server still closes it.
                let mut buf = [0u8; 1];
                let _ = third.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
                match third.read(&mut buf) {
                    Ok(0) | Err(_) => {}
                    Ok(_) => panic!("a connection over the per-address cap was served"),
                }
            }
        }
        // The first two are still served, and stay open (keep-alive).
        assert!(metadata_status(&mut first, false).starts_with("HTTP/1.1 200"));
        assert!(metadata_status(&mut second, false).starts_with("HTTP/1.1 200"));

        // Once one ends, its slot comes back (bounded wait for the server to notice).
        drop(first);
        let mut again = None;
        for _ in 0..100 {
            if let Ok(mut c) = tls(port, &config) {
                let mut line = String::new();
                let _ = write!(
                    c,
                    "GET /fhir/metadata HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
                );
                let mut buf = [0u8; 12];
                if c.read_exact(&mut buf).is_ok() {
                    line.push_str(&String::from_utf8_lossy(&buf));
                    again = Some(line);
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(
            again.as_deref(),
            Some("HTTP/1.1 200"),
            "the slot did not come back"
        );
        assert!(metadata_status(&mut second, true).starts_with("HTTP/1.1 200"));
    })
    .await
    .unwrap();
    // Other addresses are not affected by one address's cap.
    assert_eq!(s.get("metadata").await.status, 200);
    s.assert_no_panic();
}
