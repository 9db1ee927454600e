//! The server that `phivault bench http` measures: `phivault serve` (this very binary) as a
//! child process on a temporary data directory, with the certificate it makes on first start
//! (the client trusts its CA only), a backend-service client added with `client add`, and
//! access tokens from `POST /oauth/token` (client credentials).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::bench_gate::BENCH_CHILD_ENV;

/// What the child prints once it listens.
const LISTENING_LINE: &str = "phivault: listening on ";
/// How long a start may take (migrations on PostgreSQL, certificate generation).
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// Settings that would otherwise reach the child from the caller's environment.
const PHIVAULT_ENV: &[&str] = &[
    "PHIVAULT_CONFIG",
    "PHIVAULT_DATA_DIR",
    "PHIVAULT_DATABASE_URL",
    "PHIVAULT_LISTEN",
    "PHIVAULT_MASTER_KEY_FILE",
    "PHIVAULT_INSECURE_HTTP",
    "PHIVAULT_MAX_BODY_BYTES",
    "PHIVAULT_MAX_BUNDLE_ENTRIES",
    "PHIVAULT_PUBLIC_BASE_URL",
    "PHIVAULT_LOG_FORMAT",
    "PHIVAULT_NODE_ID",
];
/// The load generator opens up to 1,024 connections from 127.0.0.1; the default per-address
/// limit (64) would refuse the 64-connection runs plus the ingest client.
const CONFIG: &str = "[edge]\nmax_connections = 4096\nmax_connections_per_address = 4096\n";

/// The running child and how to reach it.
pub(crate) struct BenchServer {
    child: Child,
    pid: u32,
    /// The FHIR base, `https://127.0.0.1:PORT/fhir`.
    pub(crate) base: String,
    /// `https://127.0.0.1:PORT`.
    pub(crate) origin: String,
    /// The CA certificate the child made (PEM).
    pub(crate) ca_pem: Vec<u8>,
    storage: Vec<String>,
    log: PathBuf,
}

impl std::fmt::Debug for BenchServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BenchServer")
            .field("pid", &self.pid)
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// A backend-service client's credentials (synthetic, for the temporary store only).
pub(crate) struct ClientCredentials {
    id: String,
    secret: String,
}

impl BenchServer {
    /// Starts `phivault serve` on `dir` (data directory `dir/data`, master key `dir/master.key`
    /// outside it) and the database `database_url` (default: SQLite in the data directory).
    /// `alerts`: whether the breach-detection rules run (the defaults), or none
    /// (`alert_rules = []`), to measure what they cost.
    pub(crate) async fn start(
        dir: &Path,
        database_url: Option<&str>,
        alerts: bool,
    ) -> Result<BenchServer> {
        let exe = std::env::current_exe().context("locating this binary")?;
        let config = dir.join("phivault.toml");
        let text = if alerts {
            CONFIG.to_owned()
        } else {
            format!("alert_rules = []\n{CONFIG}")
        };
        std::fs::write(&config, text).context("writing the server's configuration")?;
        let data = dir.join("data");
        let mut storage = vec![
            "--config".to_owned(),
            config.display().to_string(),
            "--data-dir".to_owned(),
            data.display().to_string(),
            "--master-key-file".to_owned(),
            dir.join("master.key").display().to_string(),
        ];
        if let Some(url) = database_url {
            storage.extend(["--database-url".to_owned(), url.to_owned()]);
        }
        let log = dir.join("server.log");
        let log_file = std::fs::File::create(&log).context("creating the server log")?;
        let mut cmd = Command::new(&exe);
        cmd.arg("serve")
            .args(&storage)
            .args(["--listen", "127.0.0.1:0"]);
        prepare_child(&mut cmd, dir);
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true);
        let mut child = cmd.spawn().context("starting phivault serve")?;
        let pid = child.id().context("the server exited at once")?;
        let stdout = child.stdout.take().context("the server's stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let base = tokio::time::timeout(START_TIMEOUT, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(url) = line.strip_prefix(LISTENING_LINE) {
                    return Some(url.trim().to_owned());
                }
            }
            None
        })
        .await;
        let base = match base {
            Ok(Some(base)) => base,
            Ok(None) => bail!(
                "phivault serve exited before listening; its log:\n{}",
                log_tail(&log)
            ),
            Err(_) => bail!(
                "phivault serve did not listen within {START_TIMEOUT:?}; its log:\n{}",
                log_tail(&log)
            ),
        };
        // Keep draining stdout so that the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let origin = base
            .strip_suffix("/fhir")
            .context("the server's base URL does not end in /fhir")?
            .to_owned();
        let ca = data.join("tls").join("ca.pem");
        let ca_pem = std::fs::read(&ca).with_context(|| format!("reading {}", ca.display()))?;
        Ok(BenchServer {
            child,
            pid,
            base,
            origin,
            ca_pem,
            storage,
            log,
        })
    }

    /// The child's process id (for `/proc/PID/stat`).
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// The last lines of the child's log (its stderr).
    pub(crate) fn log_tail(&self) -> String {
        log_tail(&self.log)
    }

    /// Adds a backend-service client with `scope` (`phivault client add` on the same
    /// storage, as an operator would).
    pub(crate) async fn add_client(&self, dir: &Path, scope: &str) -> Result<ClientCredentials> {
        let exe = std::env::current_exe().context("locating this binary")?;
        let mut cmd = Command::new(&exe);
        cmd.args(["client", "add", "--name", "bench", "--scope", scope])
            .args(&self.storage);
        prepare_child(&mut cmd, dir);
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .await
            .context("running phivault client add")?;
        if !out.status.success() {
            bail!(
                "phivault client add failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let line = |prefix: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(prefix))
                .map(|v| v.trim().to_owned())
                .with_context(|| format!("phivault client add printed no `{prefix}` line"))
        };
        Ok(ClientCredentials {
            id: line("client_id: ")?,
            secret: line("client_secret: ")?,
        })
    }

    /// Asks the child to stop (SIGTERM), then kills it if it has not within 10 s.
    pub(crate) async fn stop(mut self) {
        if let Some(pid) = rustix::process::Pid::from_raw(i32::try_from(self.pid).unwrap_or(0)) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// A child's environment: marked as started by the bench (a bench-only build serves only
/// so), without the caller's `PHIVAULT_*` settings, logging warnings only, run in `dir`.
pub(crate) fn prepare_child(cmd: &mut Command, dir: &Path) {
    for var in PHIVAULT_ENV {
        cmd.env_remove(var);
    }
    cmd.env(BENCH_CHILD_ENV, "1")
        .env("RUST_LOG", "warn")
        .current_dir(dir);
}

fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// The HTTPS client of one worker: trusts only the child's CA, HTTP/1.1 with keep-alive,
/// at most one idle connection (so each worker holds exactly one connection).
pub(crate) fn https_client(ca_pem: &[u8]) -> Result<reqwest::Client> {
    let ca = reqwest::Certificate::from_pem(ca_pem).context("reading the server's CA")?;
    reqwest::Client::builder()
        .tls_certs_only([ca])
        .no_proxy()
        .http1_only()
        .pool_max_idle_per_host(1)
        .timeout(Duration::from_secs(120))
        .build()
        .context("building the HTTPS client")
}

/// The current access token, renewed in the background before it expires.
#[derive(Clone)]
pub(crate) struct Tokens {
    current: Arc<RwLock<String>>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tokens(..)")
    }
}

impl Tokens {
    /// Obtains a token and keeps renewing it at half its lifetime (until the process ends).
    pub(crate) async fn obtain(
        client: reqwest::Client,
        origin: &str,
        credentials: ClientCredentials,
    ) -> Result<Tokens> {
        let url = format!("{origin}/oauth/token");
        let (token, lifetime) = request_token(&client, &url, &credentials).await?;
        let current = Arc::new(RwLock::new(token));
        let shared = Arc::clone(&current);
        tokio::spawn(async move {
            let mut lifetime = lifetime;
            loop {
                tokio::time::sleep(Duration::from_secs((lifetime / 2).max(1))).await;
                match request_token(&client, &url, &credentials).await {
                    Ok((token, next)) => {
                        *shared.write().unwrap_or_else(|e| e.into_inner()) = token;
                        lifetime = next;
                    }
                    Err(e) => {
                        eprintln!("phivault: bench: renewing the access token: {e:#}");
                        lifetime = 2;
                    }
                }
            }
        });
        Ok(Tokens { current })
    }

    /// `Bearer <token>`.
    pub(crate) fn bearer(&self) -> String {
        format!(
            "Bearer {}",
            self.current.read().unwrap_or_else(|e| e.into_inner())
        )
    }
}

/// One client credentials grant: the token and its lifetime in seconds.
async fn request_token(
    client: &reqwest::Client,
    url: &str,
    credentials: &ClientCredentials,
) -> Result<(String, u64)> {
    let body = format!(
        "grant_type=client_credentials&client_id={}&client_secret={}",
        form_encode(&credentials.id),
        form_encode(&credentials.secret)
    );
    let response = client
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("accept", "application/json")
        .body(body)
        .send()
        .await
        .context("requesting an access token")?;
    let status = response.status();
    if !status.is_success() {
        bail!("the token request was refused ({status})");
    }
    let answer: serde_json::Value = response.json().await.context("reading the token")?;
    let token = answer["access_token"]
        .as_str()
        .context("the token answer has no access_token")?
        .to_owned();
    Ok((token, answer["expires_in"].as_u64().unwrap_or(300)))
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub(crate) fn form_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Server CPU time (user + system, all threads) in milliseconds, from `/proc/PID/stat`.
pub(crate) fn cpu_millis(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces, and ends with the last `)`):
    // state is field 3, utime field 14, stime field 15.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // /proc reports in USER_HZ clock ticks, 100 per second on Linux whatever the kernel's HZ.
    Some((utime + stime) * 10)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn form_encoding_and_own_cpu_time() {
        assert_eq!(form_encode("a-Z_0.~"), "a-Z_0.~");
        assert_eq!(form_encode("a b|c/d+"), "a%20b%7Cc%2Fd%2B");
        let pid = std::process::id();
        assert!(cpu_millis(pid).is_some());
    }
}
