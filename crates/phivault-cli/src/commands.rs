//! The commands: wire settings to the library crates and report on stdout/stderr.
//!
//! Stdout carries only the lines of docs/CONTRACTS.md (token, CA certificate, import summary,
//! bench figures); logs go to stderr and never carry PHI or secrets.

use std::cell::Cell;
use std::future::Future;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use phivault_audit::{AuditLog, Outcome, TailStart};
use phivault_crypto::{FileKeyProvider, KeyProvider};
use phivault_fhir::Validator;
use phivault_server::{AppState, ServerConfig, Transport, tls};
use phivault_store::{Backend, Store, StoreError, StoreOptions};

use crate::bench::{self, BenchOptions};
use crate::cli::{BenchArgs, BenchSubcommand, Cli, Command, ImportArgs, SyntheaArgs};
use crate::cli_audit::CliAudit;
use crate::config::{self, LogFormat, Settings};
use crate::import::{self, ImportEvent};

/// The largest Bundle `import` accepts when `max_bundle_entries` is not set: a local file
/// from the operator is not a client request, and Synthea writes one Bundle per patient with
/// thousands of entries.
const IMPORT_MAX_BUNDLE_ENTRIES: usize = 1_000_000;

/// Runs the command; the exit code for outcomes that are not errors of the command itself
/// (an import with errors exits 1).
pub(crate) async fn run(cli: Cli) -> Result<ExitCode> {
    let settings = || -> Result<Settings> {
        let file = config::load_file(cli.config.as_deref())?;
        Ok(config::resolve(cli.command.layer(), file)?)
    };
    match &cli.command {
        Command::Serve(args) => {
            let settings = settings()?;
            if args.print_config {
                print!("{}", settings.to_toml());
                return Ok(ExitCode::SUCCESS);
            }
            init_tracing(settings.log_format, "info");
            serve(&settings, args.allow_broken_audit).await?;
        }
        Command::Init(_) => {
            let settings = settings()?;
            init_tracing(settings.log_format, "info");
            init(&settings).await?;
        }
        Command::Import(args) => {
            let settings = settings()?;
            init_tracing(settings.log_format, "warn");
            return import(&settings, args).await;
        }
        Command::Bench(args) => {
            init_tracing(LogFormat::Text, "warn");
            match &args.command {
                None => bench(&args.store).await?,
                Some(BenchSubcommand::Store(store)) => bench(store).await?,
                Some(BenchSubcommand::Http(http)) => crate::bench_http::run(http).await?,
                Some(BenchSubcommand::Cluster(c)) => crate::bench_cluster::run(c).await?,
                Some(BenchSubcommand::Import(import)) => crate::bench_import::run(import).await?,
            }
        }
        Command::Synthea(args) => write_synthea(args)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// `phivault synthea`: writes the generated files and prints how many.
fn write_synthea(args: &SyntheaArgs) -> Result<()> {
    let shape = match args.shape.as_str() {
        "older" => crate::synthea::Shape::Older,
        _ => crate::synthea::Shape::Newer,
    };
    let patients = usize::try_from(args.patients).context("too many patients")?;
    let files =
        crate::synthea::synthea_run(&mut crate::synth::Rng::new(args.seed), shape, patients);
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    for (name, bundle) in &files {
        let path = args.out.join(name);
        std::fs::write(&path, serde_json::to_vec_pretty(bundle)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let bundles: Vec<&serde_json::Value> = files.iter().map(|(_, b)| b).collect();
    let per_type: Vec<String> = crate::synthea::counts(&bundles)
        .into_iter()
        .map(|(t, n)| format!("{t} {n}"))
        .collect();
    println!(
        "wrote {} files to {}: {}",
        files.len(),
        args.out.display(),
        per_type.join(", ")
    );
    Ok(())
}

/// Logs to stderr; verbosity from `RUST_LOG`, else `default_level`.
fn init_tracing(format: LogFormat, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(filter);
    // Fails only when a subscriber is already installed; the first one stays.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Creates `dir` (and missing parents) with mode 0700.
pub(crate) fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

/// `--out` must not exist, or be an empty directory (output that is moved into place must
/// not mix with what was there).
pub(crate) fn check_new_out(out: &Path) -> Result<()> {
    match std::fs::read_dir(out) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                bail!(
                    "--out {}: the directory exists and is not empty; give a new (or empty) \
                     directory",
                    out.display()
                );
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(anyhow::anyhow!("--out {}: {e}", out.display())),
    }
}

/// Creates the directory `path`, which must not exist, mode 0700 on Unix; missing parents
/// are created too (0700). For output that is assembled in private before it is moved into
/// place ([`partial_sibling`]).
pub(crate) fn create_new_private_dir(path: &Path) -> std::io::Result<()> {
    if let Some(parent) = path.parent()
        && !parent.as_os_str().is_empty()
        && !parent.exists()
    {
        create_private_dir(parent)?;
    }
    let mut builder = std::fs::DirBuilder::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(path)
}

/// `DIR.partial-<uuid>` beside `out`: where output is written before it is renamed to `out`
/// (on the same file system, so the rename is atomic).
pub(crate) fn partial_sibling(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".partial-{}", uuid::Uuid::new_v4()));
    out.with_file_name(name)
}

/// The master key, and whether it was created by this run.
struct MasterKeyFile {
    keys: FileKeyProvider,
    created: bool,
}

/// The data directory and the master key (created when missing).
fn prepare_data_dir(settings: &Settings) -> Result<MasterKeyFile> {
    let dir = &settings.data_dir;
    create_private_dir(dir)
        .with_context(|| format!("creating the data directory {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(dir)
            && meta.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(
                data_dir = %dir.display(),
                "the data directory is accessible to other users; chmod 700 it"
            );
        }
    }
    tighten_database_files(settings);
    let keys = FileKeyProvider::new(&settings.master_key_file);
    let created = keys
        .create_if_missing()
        .context("creating the master key")?;
    if key_beside_data(settings) {
        let text = format!(
            "the master key {} is inside the data directory {}: a copy of the directory (a \
             volume backup, a snapshot, a stolen disk) carries the key together with the data \
             it protects. Keep it on another volume or in a secrets manager \
             (master_key_file / PHIVAULT_MASTER_KEY_FILE, or /dev/fd/N; see docs/keys.md)",
            keys.path().display(),
            dir.display()
        );
        eprintln!("phivault: warning: {text}");
        tracing::warn!("{text}");
    }
    // Read it once now, so a bad key file is reported as such before anything else.
    keys.master_key()
        .with_context(|| format!("reading the master key {}", keys.path().display()))?;
    if created {
        tracing::info!(path = %keys.path().display(), "created a new master key; back it up");
    } else {
        tracing::info!(path = %keys.path().display(), "master key file");
    }
    Ok(MasterKeyFile { keys, created })
}

/// Whether the master key file lies inside the data directory (or beside the SQLite
/// database): copying the directory then copies the key. A stream (`/dev/fd/N`) never does.
pub(crate) fn key_beside_data(settings: &Settings) -> bool {
    let canonical = |p: &Path| std::fs::canonicalize(p).ok();
    let Some(key_dir) = settings
        .master_key_file
        .parent()
        .map(|d| {
            if d.as_os_str().is_empty() {
                Path::new(".")
            } else {
                d
            }
        })
        .and_then(canonical)
    else {
        return false;
    };
    if FileKeyProvider::new(&settings.master_key_file).is_stream() {
        return false;
    }
    let mut dirs: Vec<PathBuf> = canonical(&settings.data_dir).into_iter().collect();
    if let Some(db) = sqlite_file(&settings.database_url)
        && let Some(parent) = db.parent().and_then(canonical)
    {
        dirs.push(parent);
    }
    dirs.iter().any(|d| key_dir.starts_with(d))
}

/// The file of a `sqlite:` URL.
fn sqlite_file(url: &str) -> Option<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let file = rest.split('?').next().unwrap_or(rest);
    (!file.is_empty()).then(|| PathBuf::from(file))
}

/// A SQLite database (and its `-wal`/`-shm` files, which SQLite creates with the database's
/// mode) made by an older version with mode 0644 becomes owner-only; new ones are (umask).
fn tighten_database_files(settings: &Settings) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let Some(db) = sqlite_file(&settings.database_url) else {
            return;
        };
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut name = db.clone().into_os_string();
            name.push(suffix);
            let path = PathBuf::from(name);
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            let mode = meta.permissions().mode() & 0o777;
            if meta.is_file() && mode & 0o077 != 0 {
                match std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode & 0o700))
                {
                    Ok(()) => tracing::warn!(
                        path = %path.display(),
                        "database file was readable by other users (mode {mode:04o}); made owner-only"
                    ),
                    Err(e) => tracing::warn!(
                        path = %path.display(),
                        error = %e,
                        "database file is readable by other users and could not be made owner-only"
                    ),
                }
            }
        }
    }
}

/// Opens the store (never names the URL: it may hold a password). `serving`: with the
/// `[database]` pool and statement timeout of `serve`; otherwise (init, import) with the
/// built-in pool and no statement timeout.
async fn open_store(
    settings: &Settings,
    key: &MasterKeyFile,
    max_bundle_entries: usize,
    serving: bool,
) -> Result<Store> {
    let backend = Backend::from_url(&settings.database_url)
        .map(|b| b.name())
        .unwrap_or("configured");
    let mut opts = StoreOptions::new(settings.database_url.clone());
    opts.max_bundle_entries = max_bundle_entries;
    if serving {
        settings.database.apply(&mut opts);
    }
    let store = Store::open(&opts, &key.keys).await.map_err(|e| {
        let key_problem = matches!(e, StoreError::Crypto(_) | StoreError::Integrity { .. });
        let error = anyhow::Error::new(e).context(format!("opening the {backend} database"));
        if let Some(why) = crate::keys_cmd::interrupted_master_rotation(key.keys.path()) {
            error.context(why)
        } else if key_problem && key.created {
            error.context(format!(
                "the master key {} was created just now, but the database was made with \
                 another one (restore that key file)",
                key.keys.path().display()
            ))
        } else {
            error
        }
    })?;
    tracing::info!(
        backend,
        max_connections = opts.max_connections,
        // SQLite has none.
        statement_timeout_secs = opts
            .statement_timeout
            .filter(|_| backend == Backend::Postgres.name())
            .map_or(0, |t| t.as_secs()),
        "database open"
    );
    Ok(store)
}

/// Plain HTTP only on loopback (the server checks too; this gives the clearer message).
fn check_transport(settings: &Settings) -> Result<()> {
    if settings.insecure_http && !settings.listen.ip().is_loopback() {
        bail!(
            "insecure_http is allowed only on a loopback listen address (listen is {}); \
             use TLS for anything else",
            settings.listen
        );
    }
    Ok(())
}

/// The CA certificate (and server certificate) under `<data_dir>/tls`; prints the CA line.
fn certificates(settings: &Settings) -> Result<tls::CertPaths> {
    let certs = tls::ensure_certificates(&settings.data_dir.join("tls"))
        .context("preparing the TLS certificates")?;
    let ca = std::fs::canonicalize(&certs.ca).unwrap_or_else(|_| certs.ca.clone());
    println!("phivault: CA certificate: {}", ca.display());
    Ok(certs)
}

/// Verifies the audit trail from its last checkpoint on, before serving (DESIGN.md invariant
/// 3). A tampered trail stops the start, unless `allow_broken` (`--allow-broken-audit`): then
/// the finding is logged as an error and the server starts. Errors name entry seqs and
/// checkpoint sizes, never entry content.
async fn check_audit_trail(audit: &AuditLog, allow_broken: bool) -> Result<()> {
    let started = Instant::now();
    let mut shown = 0;
    let result = audit
        .verify_tail(|n| {
            if n >= shown + 100_000 {
                shown = n;
                tracing::info!(entries = n, "verifying the audit trail");
            }
        })
        .await;
    let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    match result {
        Ok(report) => {
            match report.start {
                TailStart::FrontierRefused { size } => tracing::warn!(
                    checkpoint = size,
                    "the stored frontier of the last audit checkpoint does not match its signed \
                     root (altered or corrupt); verified the whole trail instead"
                ),
                TailStart::NoFrontier { size } => tracing::info!(
                    checkpoint = size,
                    "the last audit checkpoint predates stored frontiers; verified the whole \
                     trail"
                ),
                _ => {}
            }
            tracing::info!(
                entries = report.checked,
                from_seq = report.from_seq,
                trail_entries = report.entries,
                elapsed_ms,
                "audit trail verified at start"
            );
            Ok(())
        }
        Err(e) if e.is_tamper() => {
            let finding = match e.first_bad_seq() {
                Some(seq) => format!("first bad entry {seq}: {e}"),
                None => e.to_string(),
            };
            if allow_broken {
                tracing::error!(
                    first_bad_seq = e.first_bad_seq(),
                    error = %e,
                    "the audit trail failed verification at start; serving anyway \
                     (--allow-broken-audit). Investigate with `phivault audit verify`"
                );
                Ok(())
            } else {
                bail!(
                    "the audit trail failed verification at start ({finding}); refusing to \
                     serve. Investigate with `phivault audit verify` (same storage settings); \
                     to start anyway, pass --allow-broken-audit (the failure is then logged as \
                     an error)"
                )
            }
        }
        Err(e) => Err(anyhow::Error::new(e).context("verifying the audit trail at start")),
    }
}

/// Compares the trail's checkpoint key with the one pinned in the configuration
/// (`audit_public_key`): a database whose key differs (replaced by someone with access to the
/// database only) stops the start. Unpinned, the key is printed so the operator can pin it
/// (and give it to `phivault audit verify --public-key` elsewhere).
fn check_pinned_audit_key(audit: &AuditLog, pinned: Option<&[u8]>) -> Result<()> {
    let key = hex::encode(audit.public_key());
    match pinned {
        Some(pinned) if pinned == audit.public_key() => {
            tracing::info!(public_key = %key, "the audit checkpoint key is the pinned one");
            Ok(())
        }
        Some(pinned) => bail!(
            "the database's audit checkpoint key {key} is not the pinned audit_public_key {}; \
             refusing to serve (the audit key was replaced, or this is another database)",
            hex::encode(pinned)
        ),
        None => {
            println!(
                "phivault: audit checkpoint public key: {key} (pin it: audit_public_key in \
                 the configuration file, and keep a copy outside this server)"
            );
            Ok(())
        }
    }
}

/// `phivault serve`.
async fn serve(settings: &Settings, allow_broken_audit: bool) -> Result<()> {
    crate::bench_gate::refuse_unless_bench_child()?;
    check_transport(settings)?;
    let key = prepare_data_dir(settings)?;
    let validator = Arc::new(Validator::new().context("loading the FHIR R4 schema")?);
    let store = open_store(settings, &key, settings.max_bundle_entries, true).await?;
    let transport = if settings.insecure_http {
        tracing::warn!("serving plain HTTP (insecure_http): for local testing only");
        Transport::InsecureHttp
    } else {
        let certs = certificates(settings)?;
        Transport::Tls {
            cert: certs.cert,
            key: certs.key,
        }
    };
    // Before anything listens: a project whose configuration or key cannot be read stops
    // the start, with the reason.
    let research = crate::research_projects::load(
        &settings.research_projects,
        time::OffsetDateTime::now_utc().year(),
    )?;
    // The alert rules were checked with the settings; the webhook's key file is read now.
    let alerting = phivault_server::Alerting {
        rules: phivault_alerts::check_rules(Some(settings.alert_rules.clone()))
            .map_err(|e| anyhow::anyhow!("alert_rules: {e}"))?,
        webhook: match &settings.alert_webhook {
            None => None,
            Some(hook) => Some(Arc::new(
                phivault_alerts::check_webhook(hook).map_err(|e| anyhow::anyhow!("{e}"))?,
            )),
        },
    };
    let base_url = settings.base_url();
    let config = ServerConfig {
        listen: settings.listen,
        transport,
        base_url: base_url.clone(),
        max_body_bytes: settings.max_body_bytes,
        limits: settings.edge.limits,
        node: settings.cluster.node(),
    };
    let state = AppState::new(
        store.clone(),
        validator,
        settings.policy_file.as_deref(),
        &base_url,
        settings.max_body_bytes,
    )
    .await
    .context("loading the authorization policies and the audit trail")?
    .with_privacy(
        settings.consent_defaults.clone(),
        settings.processing_activities.clone(),
    )
    .with_retention(settings.retention.clone())
    .with_trusted_proxies(settings.edge.trusted_proxies.clone())
    .with_refusal_limits(settings.edge.refusals)
    .with_bulk_limits(settings.edge.bulk)
    .with_research_projects(research)
    .with_alerting(alerting)
    .with_role_purposes(settings.role_purposes.clone())
    .context("setting the purposes of use per role")?;
    let state = AppState {
        accounts: state
            .accounts
            .clone()
            .with_hash_concurrency(settings.edge.max_concurrent_password_hashes)
            .with_patient_totp_required(settings.edge.require_patient_totp),
        ..state
    };
    if let Err(e) = check_pinned_audit_key(&state.audit, settings.audit_public_key.as_deref()) {
        store.close().await;
        return Err(e);
    }
    if let Err(e) = check_audit_trail(&state.audit, allow_broken_audit).await {
        store.close().await;
        return Err(e);
    }
    if state
        .accounts
        .user_count()
        .await
        .context("counting the user accounts")?
        == 0
    {
        println!(
            "phivault: no accounts yet; create the first admin with: \
             phivault user add --role admin --username NAME"
        );
    }
    let shutdown = shutdown_signal()?;
    let served = phivault_server::serve(config, state, shutdown)
        .await
        .context("serving");
    store.close().await;
    served?;
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C. Installed before serving, so an early signal is not lost.
fn shutdown_signal() -> Result<impl Future<Output = ()> + Send + 'static> {
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    Ok(async move {
        #[cfg(unix)]
        {
            let ctrl_c_failed = tokio::select! {
                r = tokio::signal::ctrl_c() => r.is_err(),
                _ = term.recv() => false,
            };
            if ctrl_c_failed {
                tracing::warn!("cannot listen for Ctrl-C; stop with SIGTERM");
                term.recv().await;
            }
        }
        #[cfg(not(unix))]
        {
            if tokio::signal::ctrl_c().await.is_err() {
                tracing::warn!("cannot listen for Ctrl-C");
                std::future::pending::<()>().await;
            }
        }
        tracing::info!("shutting down: draining requests");
    })
}

/// `phivault init`.
async fn init(settings: &Settings) -> Result<()> {
    crate::bench_gate::refuse_bench_only_build()?;
    let key = prepare_data_dir(settings)?;
    let store = open_store(settings, &key, settings.max_bundle_entries, false).await?;
    store.close().await;
    certificates(settings)?;
    eprintln!(
        "phivault: initialized {} (back up {} somewhere safe: without it the data is lost); \
         create the first admin with `phivault user add --username NAME --role admin`",
        settings.data_dir.display(),
        settings.master_key_file.display()
    );
    Ok(())
}

/// `phivault import PATH...`.
async fn import(settings: &Settings, args: &ImportArgs) -> Result<ExitCode> {
    crate::bench_gate::refuse_unless_bench_child()?;
    let key = prepare_data_dir(settings)?;
    let limit = if settings.max_bundle_entries_set {
        settings.max_bundle_entries
    } else {
        IMPORT_MAX_BUNDLE_ENTRIES
    };
    let validator = Validator::new().context("loading the FHIR R4 schema")?;
    let store = open_store(settings, &key, limit, false).await?;

    let bar = ProgressBar::new(0);
    let style = ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} files, {msg} {prefix:.dim}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    let resources = Cell::new(0usize);
    bar.set_message("0 resources");
    let progress = |event: ImportEvent<'_>| match event {
        ImportEvent::Found { files } => bar.set_length(files as u64),
        // The operator's own file names, on the operator's terminal (never in logs).
        ImportEvent::FileStarted { file } => bar.set_prefix(
            file.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        ),
        ImportEvent::Imported { resources: n } => {
            resources.set(resources.get() + n);
            bar.set_message(format!("{} resources", resources.get()));
        }
        ImportEvent::Error(error) => bar.suspend(|| eprintln!("{error}")),
        ImportEvent::FileDone => bar.inc(1),
    };
    let paths: Vec<PathBuf> = args.paths.clone();
    // Each written resource gets its audit entry in its transaction, the run one at the end.
    let audit = match CliAudit::open(&store, "import").await {
        Ok(audit) => audit,
        Err(e) => {
            store.close().await;
            return Err(e);
        }
    };
    let summary = import::import(&store, &validator, &audit, &paths, &progress).await;
    bar.finish_and_clear();
    let outcome = if summary.errors.is_empty() {
        Outcome::Allowed
    } else {
        Outcome::Error
    };
    // A bulk load leaves PostgreSQL with no statistics on the new rows; refresh them now so
    // the first searches after the import are planned on what is there.
    let analyzed = if summary.resources > 0 {
        store.refresh_statistics().await
    } else {
        Ok(())
    };
    let recorded = audit.command_entry(outcome, None, None).await;
    store.close().await;
    println!("{summary}");
    analyzed?;
    recorded?;
    Ok(if summary.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `phivault bench`.
async fn bench(args: &BenchArgs) -> Result<()> {
    let opts = BenchOptions {
        patients: args.patients,
        reads: args.reads,
        readers: args.readers,
        database_url: args.database_url.clone(),
        erasure_resources: args.erasure_resources,
        audit_entries: args.audit_entries,
        backup: args.backup,
        restore_url: args.restore_url.clone(),
    };
    println!("{}", bench::cipher_line());
    println!("{}", bench::audit_line());
    eprintln!(
        "phivault: bench: ingesting {} transaction bundles of {}, then {} reads by id",
        opts.patients,
        bench::BUNDLE_SIZE,
        opts.reads
    );
    let report = bench::run(&opts).await?;
    for line in report.lines() {
        println!("{line}");
    }
    Ok(())
}
