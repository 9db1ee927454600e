//! The real `phivault serve`, started on port 0 in a temporary data directory.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tempfile::TempDir;
use tokio::sync::mpsc;

use crate::api::Api;
use crate::backend::{Backend, PgSchema, with_host};
use crate::identity::SYSTEM_SCOPE;

/// Stdout line prefixes of `phivault serve` (docs/CONTRACTS.md).
const CA_LINE: &str = "phivault: CA certificate: ";
const LISTENING_LINE: &str = "phivault: listening on ";

/// How long a start may take before the test fails.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Environment variables of the binary that must not leak in from the test's environment.
pub const PHIVAULT_ENV: &[&str] = &[
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

/// A running (or killed) `phivault serve`. Dropping it kills the process, removes the data
/// directory and drops the PostgreSQL schema.
pub struct Server {
    bin: PathBuf,
    backend: Backend,
    extra_args: Vec<String>,
    /// What `--database-url` gets (possibly through a forwarder); `None`: the default SQLite.
    server_database_url: Option<String>,
    /// The database a node shares with others (or the test's own server) reached directly,
    /// when the schema is not this instance's.
    shared_database_url: Option<String>,
    child: Option<Child>,
    readers: Vec<JoinHandle<()>>,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    api: Option<Api>,
    /// The system app (`system/*.cruds`) provisioned after the first start: (id, secret).
    system_client: Option<(String, String)>,
    starts: usize,
    // Dropped last: the process is gone by then.
    schema: Option<PgSchema>,
    data_dir: TempDir,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("backend", &self.backend.name())
            .field("data_dir", &self.data_dir.path())
            .field("api", &self.api)
            .finish_non_exhaustive()
    }
}

impl std::ops::Deref for Server {
    type Target = Api;

    /// The request helpers of the running instance.
    fn deref(&self) -> &Api {
        self.api()
    }
}

impl Server {
    /// Starts `bin serve --data-dir <tmp> --listen 127.0.0.1:0 [--database-url <fresh schema>]
    /// <extra_args>` and waits (60 s at most) for `phivault: listening on <url>`.
    pub async fn start(bin: impl AsRef<Path>, backend: &Backend, extra_args: &[&str]) -> Server {
        Self::start_inner(bin.as_ref(), backend, extra_args, None).await
    }

    /// Like [`Server::start`] on PostgreSQL, but the server reaches the database through
    /// `proxy` (a [`crate::Forwarder`]'s address) instead of directly.
    pub async fn start_proxied(
        bin: impl AsRef<Path>,
        backend: &Backend,
        extra_args: &[&str],
        proxy: SocketAddr,
    ) -> Server {
        assert!(
            backend.is_postgres(),
            "a proxy only makes sense for PostgreSQL"
        );
        Self::start_inner(bin.as_ref(), backend, extra_args, Some(proxy)).await
    }

    /// Starts the first node on a PostgreSQL database the test owns (`database_url`, e.g. a
    /// [`crate::PrivatePostgres`]): no schema is made or dropped.
    pub async fn start_on_database(
        bin: impl AsRef<Path>,
        database_url: &str,
        extra_args: &[&str],
    ) -> Server {
        let mut server = Self::unlaunched(
            bin.as_ref(),
            &Backend::Postgres {
                url: database_url.to_owned(),
            },
            extra_args,
            None,
            Some(database_url.to_owned()),
        );
        server.shared_database_url = Some(database_url.to_owned());
        server.launch().await;
        server
    }

    /// Starts another node of `first`'s cluster (PostgreSQL): its own data directory and TLS
    /// certificate, the same database (through the same proxy, if any), a copy of `first`'s
    /// master key, and `first`'s system app for its token.
    pub async fn start_node(bin: impl AsRef<Path>, first: &Server, extra_args: &[&str]) -> Server {
        assert!(
            first.backend.is_postgres(),
            "nodes share a PostgreSQL database"
        );
        let mut server = Self::unlaunched(
            bin.as_ref(),
            &first.backend,
            extra_args,
            None,
            first.server_database_url.clone(),
        );
        server.shared_database_url = Some(first.database_url());
        server.system_client = first.system_client.clone();
        let key = server.data_dir.path().join("master.key");
        std::fs::copy(first.data_dir.path().join("master.key"), &key)
            .unwrap_or_else(|e| panic!("cannot copy the master key: {e}"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
                .unwrap_or_else(|e| panic!("cannot restrict the master key: {e}"));
        }
        server.launch().await;
        server
    }

    async fn start_inner(
        bin: &Path,
        backend: &Backend,
        extra_args: &[&str],
        proxy: Option<SocketAddr>,
    ) -> Server {
        let schema = match backend {
            Backend::Sqlite => None,
            Backend::Postgres { url } => Some(PgSchema::create(url).await),
        };
        let server_database_url = schema.as_ref().map(|s| match proxy {
            Some(addr) => with_host(&s.url(), addr),
            None => s.url(),
        });
        let mut server = Self::unlaunched(bin, backend, extra_args, schema, server_database_url);
        server.launch().await;
        server
    }

    /// The instance, not started yet, with a fresh data directory.
    fn unlaunched(
        bin: &Path,
        backend: &Backend,
        extra_args: &[&str],
        schema: Option<PgSchema>,
        server_database_url: Option<String>,
    ) -> Server {
        let data_dir = tempfile::Builder::new()
            .prefix("phivault-e2e-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot make a temporary data directory: {e}"));
        Server {
            bin: bin.to_owned(),
            backend: backend.clone(),
            extra_args: extra_args.iter().map(|s| (*s).to_owned()).collect(),
            server_database_url,
            shared_database_url: None,
            child: None,
            readers: Vec::new(),
            stdout: Arc::default(),
            stderr: Arc::default(),
            api: None,
            system_client: None,
            starts: 0,
            schema,
            data_dir,
        }
    }

    /// Spawns the process and waits for its listening line.
    async fn launch(&mut self) {
        let first = self.starts == 0;
        self.starts += 1;
        if !first {
            let note = format!("\n----- restart #{} -----\n", self.starts - 1);
            self.stdout.lock().unwrap().push_str(&note);
            self.stderr.lock().unwrap().push_str(&note);
        }
        let mut cmd = Command::new(&self.bin);
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(self.data_dir.path())
            .arg("--listen")
            .arg("127.0.0.1:0");
        if let Some(url) = &self.server_database_url {
            cmd.arg("--database-url").arg(url);
        }
        cmd.args(&self.extra_args)
            // No ./phivault.toml of the developer's working directory.
            .current_dir(self.data_dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for var in PHIVAULT_ENV {
            cmd.env_remove(var);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.bin.display()));
        let (tx, mut rx) = mpsc::unbounded_channel::<String>();
        let out = child.stdout.take().expect("stdout is piped");
        let err = child.stderr.take().expect("stderr is piped");
        let stdout_buf = Arc::clone(&self.stdout);
        self.readers.push(std::thread::spawn(move || {
            let mut reader = BufReader::new(out);
            let mut line = Vec::new();
            loop {
                line.clear();
                match reader.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let text = String::from_utf8_lossy(&line).into_owned();
                        stdout_buf.lock().unwrap().push_str(&text);
                        let _ = tx.send(text.trim_end().to_owned());
                    }
                }
            }
        }));
        let stderr_buf = Arc::clone(&self.stderr);
        self.readers.push(std::thread::spawn(move || {
            let mut reader = BufReader::new(err);
            let mut chunk = [0u8; 8192];
            loop {
                match reader.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => stderr_buf
                        .lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&chunk[..n])),
                }
            }
        }));
        self.child = Some(child);

        let mut ca_line = None;
        let mut unexpected = Vec::new();
        let waited = tokio::time::timeout(START_TIMEOUT, async {
            while let Some(line) = rx.recv().await {
                if let Some(p) = line.strip_prefix(CA_LINE) {
                    ca_line = Some(p.trim().to_owned());
                } else if let Some(url) = line.strip_prefix(LISTENING_LINE) {
                    return Some(url.trim().to_owned());
                } else {
                    unexpected.push(line);
                }
            }
            None
        })
        .await;
        let base = match waited {
            Ok(Some(url)) => url,
            Ok(None) => {
                let status = self.reap();
                panic!(
                    "phivault serve ({}) exited before printing its listening line ({status:?}).\n\
                     stdout:\n{}\nstderr:\n{}",
                    self.backend.name(),
                    self.stdout_text(),
                    self.stderr_text()
                );
            }
            Err(_) => {
                self.kill();
                panic!(
                    "phivault serve ({}) printed no listening line within {START_TIMEOUT:?}.\n\
                     stdout:\n{}\nstderr:\n{}",
                    self.backend.name(),
                    self.stdout_text(),
                    self.stderr_text()
                );
            }
        };
        // The identity work replaced the bootstrap token: no start prints a credential.
        if let Some(line) = unexpected
            .iter()
            .find(|l| l.to_ascii_lowercase().contains("token"))
        {
            self.kill();
            panic!(
                "contract: `serve` prints no token (start #{}), but printed {line:?}; stdout:\n{}",
                self.starts,
                self.stdout_text()
            );
        }
        let ca_path = self.data_dir.path().join("tls").join("ca.pem");
        if let Some(printed) = &ca_line {
            let same = std::fs::canonicalize(printed).ok() == std::fs::canonicalize(&ca_path).ok();
            assert!(
                same,
                "the CA line names {printed}, expected {}",
                ca_path.display()
            );
        }
        let pem = std::fs::read(&ca_path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", ca_path.display()));
        let ca = reqwest::Certificate::from_pem(&pem)
            .unwrap_or_else(|e| panic!("{} is not a PEM certificate: {e}", ca_path.display()));
        let client = reqwest::Client::builder()
            .tls_certs_only([ca])
            .no_proxy()
            .timeout(Duration::from_secs(30))
            // The server closes connections idle past its request-head timeout (10 s by
            // default); letting them go sooner avoids reusing one as the server closes it.
            .pool_idle_timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_else(|e| panic!("cannot build the HTTPS client: {e}"));
        // Without a token first: provisioning needs the client and the origin.
        self.api = Some(Api::new(client.clone(), &base, ""));
        let (client_id, secret) = match self.system_client.clone() {
            Some(c) => c,
            None => {
                let c = self.add_client("e2e", SYSTEM_SCOPE, None).await;
                self.system_client = Some(c.clone());
                c
            }
        };
        let token = self.client_credentials(&client_id, &secret, None).await;
        self.api = Some(Api::new(client, &base, &token));
    }

    /// Waits for the exited process and for its output to be drained.
    fn reap(&mut self) -> Option<ExitStatus> {
        let status = self.child.take().and_then(|mut c| {
            for _ in 0..100 {
                if let Ok(Some(s)) = c.try_wait() {
                    return Some(s);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            c.wait().ok()
        });
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        status
    }

    /// The request helpers of the running instance (also reachable through `Deref`).
    pub fn api(&self) -> &Api {
        self.api
            .as_ref()
            .expect("the server is running (start or restart it first)")
    }

    /// The FHIR base URL of the running instance.
    pub fn base(&self) -> &str {
        self.api().base()
    }

    /// The access token of the system app (`system/*.cruds`, client credentials) that the
    /// kit provisions after each start: full access to every patient's unlabelled data.
    pub fn token(&self) -> &str {
        self.api().token()
    }

    /// The system app's client id and secret (provisioned after the first start).
    pub fn system_client(&self) -> Option<(&str, &str)> {
        self.system_client
            .as_ref()
            .map(|(id, secret)| (id.as_str(), secret.as_str()))
    }

    /// The binary.
    pub(crate) fn bin(&self) -> &Path {
        &self.bin
    }

    /// The HTTPS client of the running instance.
    pub fn client(&self) -> &reqwest::Client {
        self.api().client()
    }

    /// The backend.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        self.data_dir.path()
    }

    /// The database URL, reaching the database directly (not through a proxy):
    /// `sqlite://<data_dir>/phivault.db` or the PostgreSQL schema's URL.
    pub fn database_url(&self) -> String {
        if let Some(url) = &self.shared_database_url {
            return url.clone();
        }
        match &self.schema {
            Some(s) => s.url(),
            None => format!(
                "sqlite://{}",
                self.data_dir.path().join("phivault.db").display()
            ),
        }
    }

    /// The PostgreSQL schema, if any.
    pub fn schema(&self) -> Option<&PgSchema> {
        self.schema.as_ref()
    }

    /// A one-connection pool on the server's database, for tests that look at or alter rows.
    pub async fn db(&self) -> sqlx::AnyPool {
        sqlx::any::install_default_drivers();
        let opts = sqlx::any::AnyPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(30));
        let url = self.database_url();
        let pool = if self.backend.is_postgres() {
            opts.connect(&url).await
        } else {
            opts.after_connect(|conn, _| {
                Box::pin(async move {
                    sqlx::Executor::execute(&mut *conn, "PRAGMA busy_timeout=10000").await?;
                    Ok(())
                })
            })
            .connect(&format!("{url}?mode=rw"))
            .await
        };
        pool.unwrap_or_else(|e| panic!("cannot open {url}: {e}"))
    }

    /// Everything the server wrote to stdout so far (all starts).
    pub fn stdout_text(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    /// Everything the server wrote to stderr (its logs) so far (all starts).
    pub fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Asserts that the server never panicked (its stderr has no panic message).
    pub fn assert_no_panic(&self) {
        let err = self.stderr_text();
        assert!(
            !err.contains("panicked at"),
            "the server panicked; stderr:\n{err}"
        );
    }

    /// The process id of the running server (to inspect `/proc/<pid>`).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(std::process::Child::id)
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Kills the process with SIGKILL (no chance to flush or clean up) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        self.api = None;
    }

    /// Asks the process to stop with SIGTERM (a graceful shutdown: in-flight requests drain,
    /// the audit trail's pending summaries are written and a checkpoint seals it) and waits
    /// for it to exit. Returns its exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        assert!(
            sent.is_ok_and(|s| s.success()),
            "cannot send SIGTERM to the server"
        );
        let status = c.wait().ok();
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        self.api = None;
        status.and_then(|s| s.code())
    }

    /// Starts the server again on the same data directory and database (killing it first if
    /// it still runs), and obtains a fresh access token for the system app.
    pub async fn restart(&mut self) {
        self.kill();
        self.launch().await;
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
