//! `phivault backup`, `phivault backup verify`, `phivault backup keygen` and
//! `phivault restore`. The behaviour lives in phivault-backup; this module reads settings,
//! files and keys, shows progress and reports.
//!
//! - `backup --to DIR --recipient age1...` writes `DIR/phivault-backup-<UTC time>.age` (mode
//!   0600, written as `.partial` and renamed once complete and synced) and, beside it,
//!   `<same>.manifest.json` (the manifest, with the archive's size and SHA-256: no PHI, no
//!   key). It runs while the server runs. It is audited (`cli backup`); a checkpoint of the
//!   audit trail is signed first, so the archived trail is covered up to the snapshot.
//! - `backup verify FILE --identity KEY [--master-key-file F]` checks an archive without
//!   restoring it (with the master key, also its MAC): `ok: ...` on stdout, or
//!   `FAILED: ...` and exit status 1.
//! - `backup keygen --out FILE` creates an age identity file (mode 0600) and prints its
//!   public key (the recipient), for operators without the `age` tools.
//! - `restore FILE --identity KEY [--to DATA_DIR] [--force]` restores into the configured
//!   database (`--to` sets the data directory), with the master key the backup was taken
//!   under (`<data_dir>/master.key` or `--master-key-file`); never creates a master key.
//!   The archive's MAC must verify under that key (a v1 archive, without MAC, needs
//!   `--allow-unauthenticated`). With `--force` over a database that holds data, that
//!   database is first archived whole, trail and all, to
//!   `<data_dir>/replaced/phivault-backup-<UTC time>.age` (encrypted to the restore's
//!   identity, MAC'd, its trail ending with a `cli restore` entry and a signed checkpoint),
//!   so nothing recorded since the backup vanishes; the restore refuses when that fails.
//!   It is audited (`cli restore`, in the replaced trail and in the restored trail).

use std::io::{BufReader, BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use phivault_backup::{BackupError, Manifest, RestoreOptions};
use phivault_crypto::{FileKeyProvider, KeyProvider, Sha256};
use phivault_store::backup::RestoreTarget;
use phivault_store::{Backend, Store, StoreOptions};
use serde::Serialize;

use crate::cli::StorageArgs;
use crate::cli_audit::CliAudit;
use crate::config::{self, Settings};

/// `phivault backup ...`
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub(crate) struct BackupCommand {
    #[command(subcommand)]
    pub(crate) action: Option<BackupAction>,
    #[command(flatten)]
    pub(crate) create: BackupArgs,
}

/// `phivault backup verify|keygen`
#[derive(Debug, Subcommand)]
pub(crate) enum BackupAction {
    /// Check an archive without restoring it: decrypts every byte (a flipped byte or a
    /// truncation anywhere is an error), checks each table's count and SHA-256, the manifest,
    /// and the archived audit trail (hash chain and signed checkpoints). Prints `ok: ...`, or
    /// `FAILED: ...` with exit status 1.
    Verify(BackupVerifyArgs),
    /// Create an age identity (private key) file for backups, mode 0600, and print its public
    /// key: the recipient to pass to `backup --recipient`. Keep the file offline.
    Keygen(BackupKeygenArgs),
}

/// `phivault backup --to DIR --recipient AGE_PUBLIC_KEY ...`
#[derive(Debug, Clone, Args)]
pub(crate) struct BackupArgs {
    /// Directory to write the archive and its manifest into (created when missing).
    #[arg(long, value_name = "DIR", required = true)]
    pub(crate) to: Option<PathBuf>,
    /// Encrypt to this age X25519 public key (`age1...`); repeat for several recipients.
    #[arg(long = "recipient", value_name = "AGE_PUBLIC_KEY")]
    pub(crate) recipients: Vec<String>,
    /// A file of age recipients, one per line (`#` comments allowed).
    #[arg(long, value_name = "FILE")]
    pub(crate) recipients_file: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) storage: StorageArgs,
}

/// `phivault backup verify FILE --identity KEY`
#[derive(Debug, Clone, Args)]
pub(crate) struct BackupVerifyArgs {
    /// The archive.
    #[arg(value_name = "FILE")]
    pub(crate) file: PathBuf,
    /// The age identity file (`AGE-SECRET-KEY-1...`) that opens it.
    #[arg(long, value_name = "KEY")]
    pub(crate) identity: PathBuf,
    /// The master key the archive was taken under: its MAC is checked too (without, only
    /// its integrity is, not which installation wrote it).
    #[arg(long, value_name = "FILE")]
    pub(crate) master_key_file: Option<PathBuf>,
}

/// `phivault backup keygen --out FILE`
#[derive(Debug, Clone, Args)]
pub(crate) struct BackupKeygenArgs {
    /// The identity file to create (refused when it exists).
    #[arg(long, value_name = "FILE")]
    pub(crate) out: PathBuf,
}

/// `phivault restore FILE --identity KEY [--to DATA_DIR] [--force]`
#[derive(Debug, Clone, Args)]
pub(crate) struct RestoreArgs {
    /// The archive written by `phivault backup`.
    #[arg(value_name = "FILE")]
    pub(crate) file: PathBuf,
    /// The age identity file (`AGE-SECRET-KEY-1...`) that opens it.
    #[arg(long, value_name = "KEY")]
    pub(crate) identity: PathBuf,
    /// The data directory to restore into (the same as --data-dir): its database (unless
    /// --database-url names another) and its master key, which must be the one the backup
    /// was taken under.
    #[arg(long, value_name = "DATA_DIR", conflicts_with = "data_dir")]
    pub(crate) to: Option<PathBuf>,
    /// Replace a database that holds data. It is archived first (into
    /// <data_dir>/replaced/); its erasure and retention ledgers and its revocations are
    /// replayed over the restored data, so what was erased, disposed of or revoked there
    /// stays so.
    #[arg(long)]
    pub(crate) force: bool,
    /// Restore a v1 archive, written before archives carried a MAC: nothing shows which
    /// installation wrote it.
    #[arg(long)]
    pub(crate) allow_unauthenticated: bool,
    /// Restore even when the archived audit trail does not verify (reported on stderr).
    #[arg(long)]
    pub(crate) allow_broken_audit: bool,
    #[command(flatten)]
    pub(crate) storage: StorageArgs,
}

/// What `<archive>.manifest.json` holds.
#[derive(Debug, Serialize)]
struct ManifestFile<'a> {
    archive: String,
    archive_bytes: u64,
    archive_sha256: String,
    #[serde(flatten)]
    manifest: &'a Manifest,
}

/// Runs `phivault backup ...`.
pub(crate) async fn run_backup(
    config_file: Option<&Path>,
    command: BackupCommand,
) -> Result<ExitCode> {
    match command.action {
        Some(BackupAction::Verify(args)) => verify(&args),
        Some(BackupAction::Keygen(args)) => keygen(&args),
        None => {
            let settings = settings(config_file, &command.create.storage)?;
            backup(&settings, &command.create).await
        }
    }
}

fn settings(config_file: Option<&Path>, storage: &StorageArgs) -> Result<Settings> {
    let file = config::load_file(config_file)?;
    Ok(config::resolve(storage.layer(), file)?)
}

/// A progress bar on a terminal's stderr (hidden otherwise).
fn progress_bar(what: &str) -> ProgressBar {
    let bar = ProgressBar::new(0);
    if !std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    let style = ProgressStyle::with_template(&format!(
        "{{spinner}} [{{elapsed_precise}}] {{bar:30}} {{pos}}/{{len}} rows {what}"
    ))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}

fn master_key(settings: &Settings) -> Result<FileKeyProvider> {
    let keys = FileKeyProvider::new(&settings.master_key_file);
    if !keys.path().exists() {
        bail!(
            "no master key at {}: this needs the master key the data is encrypted under \
             (kept apart from backups); put it there or pass --master-key-file",
            keys.path().display()
        );
    }
    keys.master_key()
        .with_context(|| format!("reading the master key {}", keys.path().display()))?;
    Ok(keys)
}

async fn open_store(settings: &Settings, keys: &FileKeyProvider) -> Result<Store> {
    // Never name the URL: it may hold a password.
    let backend = Backend::from_url(&settings.database_url)
        .map(|b| b.name())
        .unwrap_or("configured");
    let mut opts = StoreOptions::new(settings.database_url.clone());
    opts.max_connections = 2;
    Store::open(&opts, keys)
        .await
        .with_context(|| format!("opening the {backend} database"))
}

fn megabytes(bytes: u64) -> f64 {
    bytes as f64 / 1_000_000.0
}

/// Writes through to `inner`, counting and hashing the bytes (the archive's size and
/// SHA-256 for the manifest file).
struct Hashing<W> {
    inner: W,
    bytes: u64,
    hash: Sha256,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Creates `path` (it must not exist) for writing, mode 0600 on Unix.
pub(crate) fn create_private_file(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

async fn backup(settings: &Settings, args: &BackupArgs) -> Result<ExitCode> {
    let Some(dir) = &args.to else {
        bail!("--to DIR is required");
    };
    let mut lines = args.recipients.clone();
    if let Some(file) = &args.recipients_file {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("reading the recipients file {}", file.display()))?;
        lines.extend(text.lines().map(str::to_owned));
    }
    let recipients = phivault_backup::parse_recipients(&lines)?;
    let keys = master_key(settings)?;
    crate::commands::create_private_dir(dir)
        .with_context(|| format!("creating the backup directory {}", dir.display()))?;
    let archive_key = phivault_crypto::ArchiveMacKey::derive(&keys.master_key()?)?;
    let store = open_store(settings, &keys).await?;
    let result = backup_store(&store, dir, &recipients, &archive_key).await;
    store.close().await;
    let (path, manifest, bytes, seconds) = result?;
    let resources_per_s = manifest.resources as f64 / seconds.max(1e-9);
    let mb_per_s = megabytes(bytes) / seconds.max(1e-9);
    println!(
        "ok: {} ({} rows: {} resources, {} versions, {} audit entries, {} checkpoints; {:.1} MB) \
         in {seconds:.2}s: {resources_per_s:.0} resources/s, {mb_per_s:.1} MB/s",
        path.display(),
        manifest.rows(),
        manifest.resources,
        manifest.versions,
        manifest.audit.entries,
        manifest.audit.checkpoints,
        megabytes(bytes),
    );
    Ok(ExitCode::SUCCESS)
}

async fn backup_store(
    store: &Store,
    dir: &Path,
    recipients: &[age::x25519::Recipient],
    archive_key: &phivault_crypto::ArchiveMacKey,
) -> Result<(PathBuf, Manifest, u64, f64)> {
    let audit = CliAudit::open(store, "backup").await?;
    // Sign the trail up to now, so the archived trail is covered by a checkpoint.
    if let Err(e) = audit.log().checkpoint().await {
        eprintln!("phivault: warning: no audit checkpoint before the backup: {e}");
    }
    let stamp = time::OffsetDateTime::now_utc()
        .format(&time::macros::format_description!(
            "[year][month][day]T[hour][minute][second]Z"
        ))
        .unwrap_or_else(|_| "now".to_owned());
    let name = format!("phivault-backup-{stamp}.age");
    let path = dir.join(&name);
    let partial = dir.join(format!("{name}.partial"));
    let started = Instant::now();
    let written = async {
        let file = create_private_file(&partial)
            .with_context(|| format!("creating {}", partial.display()))?;
        let out = Hashing {
            inner: BufWriter::with_capacity(1 << 20, file),
            bytes: 0,
            hash: Sha256::new(),
        };
        let bar = progress_bar("backed up");
        let (out, manifest) =
            phivault_backup::write_backup(store, out, recipients, archive_key, |done, total| {
                bar.set_length(total);
                bar.set_position(done);
            })
            .await?;
        bar.finish_and_clear();
        let Hashing { inner, bytes, hash } = out;
        let file = inner
            .into_inner()
            .map_err(|e| anyhow!("writing {}: {}", partial.display(), e.error()))?;
        file.sync_all()
            .with_context(|| format!("syncing {}", partial.display()))?;
        Ok::<_, anyhow::Error>((manifest, bytes, hex::encode(hash.finish())))
    }
    .await;
    let (manifest, bytes, sha) = match written {
        Ok(w) => w,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            // Records the failure; returns the backup's error (and the audit's, if any).
            audit.finish(Err::<(), _>(e), None, None).await?;
            bail!("the backup failed");
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    let sidecar = dir.join(format!("{name}.manifest.json"));
    let placed = (|| {
        std::fs::rename(&partial, &path)
            .with_context(|| format!("moving the archive to {}", path.display()))?;
        let text = serde_json::to_string_pretty(&ManifestFile {
            archive: name.clone(),
            archive_bytes: bytes,
            archive_sha256: sha,
            manifest: &manifest,
        })?;
        std::fs::write(&sidecar, text + "\n")
            .with_context(|| format!("writing {}", sidecar.display()))?;
        sync_dir(dir);
        Ok::<_, anyhow::Error>(())
    })();
    if placed.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    audit.finish(placed, None, None).await?;
    if let Some(problem) = &manifest.audit.problem {
        eprintln!(
            "phivault: warning: the audit trail backed up does not verify ({problem}); \
             run `phivault audit verify`"
        );
    }
    Ok((path, manifest, bytes, seconds))
}

/// Before a forced restore over a database that holds data: archives that database whole
/// into `<data_dir>/replaced/`, encrypted to the restore's identities and MAC'd under its
/// master key, after appending a `cli restore` entry to its trail (the archive's checkpoint
/// covers it). Its trail, and everything else recorded since the backup being restored, is
/// kept there. `None` when the target holds no data (nothing is replaced).
async fn archive_replaced(
    settings: &Settings,
    keys: &FileKeyProvider,
    target: &RestoreTarget,
    identities: &[age::x25519::Identity],
) -> Result<Option<PathBuf>> {
    if target.data_rows().await?.is_empty() {
        return Ok(None);
    }
    let recipients: Vec<age::x25519::Recipient> = identities
        .iter()
        .map(age::x25519::Identity::to_public)
        .collect();
    let archive_key = phivault_crypto::ArchiveMacKey::derive(&keys.master_key()?)?;
    let dir = settings.data_dir.join("replaced");
    crate::commands::create_private_dir(&dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let store = open_store(settings, keys).await?;
    let archived = async {
        CliAudit::open(&store, "restore")
            .await?
            .command_entry(phivault_audit::Outcome::Allowed, None, None)
            .await?;
        backup_store(&store, &dir, &recipients, &archive_key).await
    }
    .await;
    store.close().await;
    let (path, _, _, _) = archived?;
    Ok(Some(path))
}

fn open_archive(path: &Path) -> Result<BufReader<std::fs::File>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    Ok(BufReader::with_capacity(1 << 20, file))
}

fn verify(args: &BackupVerifyArgs) -> Result<ExitCode> {
    let identities = phivault_backup::read_identities(&args.identity)?;
    let archive_key = match &args.master_key_file {
        Some(path) => {
            let master = FileKeyProvider::new(path)
                .master_key()
                .with_context(|| format!("reading the master key {}", path.display()))?;
            Some(phivault_crypto::ArchiveMacKey::derive(&master)?)
        }
        None => None,
    };
    let archive = open_archive(&args.file)?;
    let started = Instant::now();
    let bar = progress_bar("verified");
    let result =
        phivault_backup::verify(archive, &identities, archive_key.as_ref(), |done, total| {
            bar.set_length(total);
            bar.set_position(done);
        });
    bar.finish_and_clear();
    let mut out = std::io::stdout().lock();
    match result {
        Ok(m) => {
            let checkpoint = m.audit.last_checkpoint.as_ref().map_or_else(
                || "none".to_owned(),
                |c| format!("covers {} entries", c.size),
            );
            writeln!(
                out,
                "ok: {}: taken {} from {} (schema {}), {} rows: {} resources, {} versions, {} \
                 audit entries (chain and {} checkpoints verified, last {checkpoint}), {} \
                 erasures",
                args.file.display(),
                m.header.created_at,
                m.header.source_backend,
                m.header.schema_version,
                m.rows(),
                m.resources,
                m.versions,
                m.audit.entries,
                m.audit.checkpoints,
                m.erasures,
            )?;
            out.flush()?;
            if archive_key.is_none() {
                eprintln!(
                    "phivault: the archive's MAC was not checked (no --master-key-file): \
                     its integrity is, not which installation wrote it"
                );
            }
            eprintln!(
                "phivault: verified in {:.2}s",
                started.elapsed().as_secs_f64()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e @ (BackupError::Key(_) | BackupError::Store(_))) => Err(e.into()),
        Err(e) => {
            writeln!(out, "FAILED: {}: {e}", args.file.display())?;
            out.flush()?;
            Ok(ExitCode::FAILURE)
        }
    }
}

fn keygen(args: &BackupKeygenArgs) -> Result<ExitCode> {
    use age::secrecy::ExposeSecret;
    let identity = age::x25519::Identity::generate();
    let public = identity.to_public().to_string();
    let created = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let mut file = create_private_file(&args.out)
        .with_context(|| format!("creating {} (it must not exist)", args.out.display()))?;
    let text = format!(
        "# created: {created} by phivault backup keygen\n# public key: {public}\n{}\n",
        identity.to_string().expose_secret()
    );
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", args.out.display()))?;
    println!("{public}");
    eprintln!(
        "phivault: identity written to {}; keep it offline: without it no backup encrypted to \
         {public} can be read",
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Runs `phivault restore ...`.
pub(crate) async fn run_restore(config_file: Option<&Path>, args: RestoreArgs) -> Result<ExitCode> {
    let mut storage = args.storage.clone();
    if let Some(to) = &args.to {
        storage.dir.data_dir = Some(to.clone());
    }
    let settings = settings(config_file, &storage)?;
    let identities = phivault_backup::read_identities(&args.identity)?;
    // The archive first: a wrong identity, a damaged header or a newer schema is refused
    // before the target is touched.
    let header = phivault_backup::read_header(open_archive(&args.file)?, &identities)
        .with_context(|| format!("reading {}", args.file.display()))?;
    if header.format == phivault_backup::FORMAT_V1 && !args.allow_unauthenticated {
        bail!(
            "{} is a {} archive, written before archives carried a MAC: nothing shows which \
             installation wrote it; restore it only if you know where it came from, with \
             --allow-unauthenticated",
            args.file.display(),
            phivault_backup::FORMAT_V1
        );
    }
    let keys = master_key(&settings)?;
    let master = keys.master_key()?;
    let backend = Backend::from_url(&settings.database_url)
        .map(|b| b.name())
        .unwrap_or("configured");
    // The data directory, owner-only like `serve` makes it (removed again if the restore
    // fails and it was made here).
    let made_dir = !settings.data_dir.exists();
    crate::commands::create_private_dir(&settings.data_dir).with_context(|| {
        format!(
            "creating the data directory {}",
            settings.data_dir.display()
        )
    })?;
    let target = match RestoreTarget::connect(&settings.database_url).await {
        Ok(t) => t,
        Err(e) => {
            if made_dir {
                let _ = std::fs::remove_dir(&settings.data_dir);
            }
            return Err(anyhow::Error::new(e)
                .context(format!("opening the {backend} database to restore into")));
        }
    };
    let replaced = if args.force {
        archive_replaced(&settings, &keys, &target, &identities).await
    } else {
        Ok(None)
    };
    let replaced = match replaced {
        Ok(r) => r,
        Err(e) => {
            target.close(false).await;
            return Err(e.context(
                "archiving the database being replaced (its audit trail must not be lost); \
                 nothing was restored",
            ));
        }
    };
    let started = Instant::now();
    let bar = progress_bar("restored");
    let options = RestoreOptions {
        force: args.force,
        allow_broken_audit: args.allow_broken_audit,
        allow_unauthenticated: args.allow_unauthenticated,
    };
    let result = phivault_backup::restore(
        open_archive(&args.file)?,
        &identities,
        &target,
        &master,
        options,
        |done, total| {
            bar.set_length(total);
            bar.set_position(done);
        },
    )
    .await;
    bar.finish_and_clear();
    target.close(result.is_err()).await;
    if result.is_err() && made_dir {
        // Only when empty: nothing of the operator's is removed.
        let _ = std::fs::remove_dir(&settings.data_dir);
    }
    let report = result.with_context(|| format!("restoring {}", args.file.display()))?;
    let seconds = started.elapsed().as_secs_f64();

    // The restored installation: its trail records the restore; the search tokens of
    // erased compartments are swept.
    let store = open_store(&settings, &keys).await?;
    let audited = async {
        let audit = CliAudit::open(&store, "restore").await?;
        audit
            .command_entry(phivault_audit::Outcome::Allowed, None, None)
            .await?;
        if let Err(e) = store.sweep_erasures().await {
            eprintln!("phivault: warning: the search-token sweep of erased patients failed: {e}");
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    store.close().await;
    audited?;
    let m = &report.manifest;
    if let Some(problem) = &m.audit.problem {
        eprintln!("phivault: warning: the restored audit trail does not verify: {problem}");
    }
    if !report.authenticated {
        eprintln!(
            "phivault: warning: the archive carries no MAC (v1): restored without knowing \
             which installation wrote it (--allow-unauthenticated)"
        );
    }
    if let Some(path) = &replaced {
        eprintln!(
            "phivault: the database replaced, with its audit trail, was archived first to {}",
            path.display()
        );
    }
    if !report.replaced.is_empty() {
        let r = &report.revocations;
        eprintln!(
            "phivault: replaced what the database held; replayed its ledgers: {} data keys of \
             erased patients deleted, {} resources disposed of, {} tokens revoked, {} users \
             and {} clients disabled, {} recovery codes spent, {} app authorizations revoked, \
             {} id_token signing keys retired",
            report.keys_erased,
            report.resources_disposed,
            r.tokens,
            r.users,
            r.clients,
            r.recovery_codes,
            r.authorizations,
            r.signing_keys
        );
        if r.passwords_differ > 0 {
            eprintln!(
                "phivault: warning: {} restored users have another password than in the \
                 database replaced (the archive's is restored); reset them if a password was \
                 changed because it leaked",
                r.passwords_differ
            );
        }
    }
    let bytes = std::fs::metadata(&args.file).map(|m| m.len()).unwrap_or(0);
    println!(
        "ok: restored {} rows ({} resources, {} versions, {} audit entries, {} checkpoints, {} \
         erasures) from {} into {backend} in {seconds:.2}s: {:.0} resources/s, {:.1} MB/s",
        report.rows,
        m.resources,
        m.versions,
        m.audit.entries,
        m.audit.checkpoints,
        m.erasures,
        m.header.source_backend,
        m.resources as f64 / seconds.max(1e-9),
        megabytes(bytes) / seconds.max(1e-9),
    );
    Ok(ExitCode::SUCCESS)
}
