//! `phivault keys ...`: rotate the key-encryption key, rotate the master key, show the key
//! hierarchy. Servers keep running throughout; the behaviour lives in phivault-store
//! (`Store::rotate_keks`, `Store::rotate_master`, `Store::key_status`).
//!
//! `rotate` and `rotate-master` are audited (`cli keys rotate`, `cli keys rotate-master`);
//! `status` shows ids, times and counts only and is not. Stdout carries the final `ok: ...`
//! line or the status table; progress goes to stderr.
//!
//! `rotate-master` never leaves the database under a key that is not on disk: the new key is
//! written to `<master_key_file>.new` (mode 0600, fsync, directory fsync) before the KEKs are
//! rewrapped in one transaction, and only then renamed over the key file (directory fsync).
//! After a crash, the `.new` file is there: the next `rotate-master` finds which key opens the
//! KEKs and finishes (rename only, or rewrap then rename).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Instant, SystemTime};

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use phivault_crypto::{FileKeyProvider, KeyProvider, MasterKey};
use phivault_store::{Backend, KeyStatus, Store, StoreOptions};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::cli::StorageArgs;
use crate::cli_audit::CliAudit;
use crate::config::{self, Settings};

/// `phivault keys ...`
#[derive(Debug, Subcommand)]
pub(crate) enum KeysCommand {
    /// Rotate the key-encryption key: create a new one and rewrap every data key under it, in
    /// batches, while servers keep serving; then delete the old one. Resumes an interrupted
    /// rotation instead of starting another. Prints `ok: N data keys rewrapped ...`.
    Rotate(KeysRotateArgs),
    /// Rotate the master key: write a new one to `<master_key_file>.new`, rewrap the
    /// key-encryption keys under it in one transaction, then rename it over the key file.
    /// Finishes an interrupted run (a `.new` file left by a crash).
    #[command(name = "rotate-master")]
    RotateMaster(KeysStorageArgs),
    /// Show the key-encryption keys (id, age, active, data keys), data keys by kind, the
    /// master key file and its age, and any unfinished rotation.
    Status(KeysStorageArgs),
    /// Replace the OpenID Connect id_token signing key now (servers also do it every 90 days):
    /// the new key signs from now on, the old one stays in the JWKS for a day so apps that
    /// cached it still verify tokens signed before. Prints the new key id.
    #[command(name = "rotate-signing")]
    RotateSigning(KeysStorageArgs),
}

#[derive(Debug, Clone, Args)]
pub(crate) struct KeysRotateArgs {
    /// Data keys rewrapped per transaction.
    #[arg(long, value_name = "N", default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) batch_size: u64,
    #[command(flatten)]
    pub(crate) storage: StorageArgs,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct KeysStorageArgs {
    #[command(flatten)]
    pub(crate) storage: StorageArgs,
}

/// Runs `phivault keys ...`.
pub(crate) async fn run(config_file: Option<&Path>, command: KeysCommand) -> Result<ExitCode> {
    let settings = |storage: &StorageArgs| -> Result<Settings> {
        let file = config::load_file(config_file)?;
        Ok(config::resolve(storage.layer(), file)?)
    };
    match command {
        KeysCommand::Rotate(args) => {
            let settings = settings(&args.storage)?;
            let store = open(&settings, &settings.master_key_file).await?;
            let result = rotate(&store, args.batch_size).await;
            store.close().await;
            println!("{}", result?);
        }
        KeysCommand::RotateMaster(args) => {
            let line = rotate_master(&settings(&args.storage)?).await?;
            println!("{line}");
        }
        KeysCommand::RotateSigning(args) => {
            let settings = settings(&args.storage)?;
            let store = open(&settings, &settings.master_key_file).await?;
            let result = rotate_signing(&store).await;
            store.close().await;
            println!("{}", result?);
        }
        KeysCommand::Status(args) => {
            let settings = settings(&args.storage)?;
            let store = open(&settings, &settings.master_key_file).await?;
            let status = store.key_status().await.context("reading the key status");
            store.close().await;
            let mut out = std::io::stdout().lock();
            write!(
                out,
                "{}",
                status_text(&status?, &settings.master_key_file, now())
            )?;
            out.flush()?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `<master key file>.new`.
pub(crate) fn pending_master_file(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".new");
    PathBuf::from(name)
}

/// When a `rotate-master` was interrupted (its `.new` file is there), the sentence that says
/// so, for errors of opening the store with the configured key.
pub(crate) fn interrupted_master_rotation(path: &Path) -> Option<String> {
    let pending = pending_master_file(path);
    pending.exists().then(|| {
        format!(
            "an interrupted `keys rotate-master` left {}; run `phivault keys rotate-master` to \
             finish it",
            pending.display()
        )
    })
}

/// Opens the store with the master key in `key_file` (which must exist).
async fn open(settings: &Settings, key_file: &Path) -> Result<Store> {
    let keys = FileKeyProvider::new(key_file);
    keys.master_key()
        .with_context(|| format!("reading the master key {}", key_file.display()))?;
    // Never name the URL: it may hold a password.
    let backend = Backend::from_url(&settings.database_url)
        .map(|b| b.name())
        .unwrap_or("configured");
    let mut opts = StoreOptions::new(settings.database_url.clone());
    opts.max_connections = 2;
    Store::open(&opts, &keys).await.map_err(|e| {
        let error = anyhow::Error::new(e).context(format!("opening the {backend} database"));
        match interrupted_master_rotation(&settings.master_key_file) {
            Some(why) if key_file == settings.master_key_file => error.context(why),
            _ => error,
        }
    })
}

/// `phivault keys rotate-signing`: the audited replacement of the id_token signing key.
async fn rotate_signing(store: &Store) -> Result<String> {
    let audit = CliAudit::open(store, "keys rotate-signing").await?;
    let accounts = phivault_auth::Accounts::new(store.clone());
    let run = accounts
        .ensure_signing_key(true)
        .await
        .context("replacing the OpenID Connect signing key");
    let kid = audit.finish(run, None, None).await?;
    Ok(format!(
        "ok: id_tokens are signed with key {kid}; the previous key stays published for a day"
    ))
}

/// `phivault keys rotate`: the audited rotation; returns the final line.
async fn rotate(store: &Store, batch_size: u64) -> Result<String> {
    let audit = CliAudit::open(store, "keys rotate").await?;
    let started = Instant::now();
    let mut shown = Instant::now();
    let batch = usize::try_from(batch_size).unwrap_or(usize::MAX);
    let run = store
        .rotate_keks(batch, |p| {
            if shown.elapsed().as_millis() >= 500 {
                shown = Instant::now();
                eprintln!(
                    "phivault: {} of {} data keys rewrapped under {}",
                    p.rewrapped, p.pending_at_start, p.kek_id
                );
            }
        })
        .await
        .context("rotating the key-encryption key");
    let report = audit.finish(run, None, None).await?;
    for old in &report.retired {
        eprintln!("phivault: old key-encryption key {old} deleted");
    }
    if !report.residue_purged {
        eprintln!(
            "phivault: warning: the replaced wrappings are still in the database files (the \
             database stayed busy); a running server retries every few seconds (see \
             docs/keys.md)"
        );
    }
    let secs = started.elapsed().as_secs_f64();
    Ok(if report.resumed {
        format!(
            "ok: resumed an interrupted rotation: {} data keys rewrapped under key-encryption \
             key {} in {secs:.2}s",
            report.rewrapped, report.kek_id
        )
    } else {
        format!(
            "ok: {} data keys rewrapped under key-encryption key {} in {secs:.2}s",
            report.rewrapped, report.kek_id
        )
    })
}

/// `phivault keys rotate-master` (see the module documentation); returns the final line.
async fn rotate_master(settings: &Settings) -> Result<String> {
    let path = &settings.master_key_file;
    let pending = pending_master_file(path);
    if pending.exists() {
        return finish_master_rotation(settings, &pending).await;
    }
    let store = open(settings, path).await?;
    let result = async {
        let audit = CliAudit::open(&store, "keys rotate-master").await?;
        let run = async {
            let new = MasterKey::generate()?;
            write_key_file(&pending, &new)?;
            let n = store
                .rotate_master(&new)
                .await
                .context("rewrapping the key-encryption keys under the new master key")?;
            switch_key_file(&pending, path)?;
            Ok::<_, anyhow::Error>(n)
        }
        .await;
        audit.finish(run, None, None).await
    }
    .await;
    store.close().await;
    let n = result?;
    eprintln!(
        "phivault: back up the new master key {} now; backups made before need the old one",
        path.display()
    );
    Ok(format!(
        "ok: {n} key-encryption keys rewrapped under a new master key; {} replaced",
        path.display()
    ))
}

/// Finishes a `rotate-master` that left `pending`: whichever key opens the KEKs is current.
async fn finish_master_rotation(settings: &Settings, pending: &Path) -> Result<String> {
    let path = &settings.master_key_file;
    eprintln!(
        "phivault: found {} from an interrupted `keys rotate-master`; finishing it",
        pending.display()
    );
    let new = match FileKeyProvider::new(pending).master_key() {
        Ok(k) => Some(k),
        Err(e) => {
            // Not fully written: the crash came before the rewrap, which needs it on disk.
            eprintln!(
                "phivault: {} is unreadable ({e}); it was never used",
                pending.display()
            );
            None
        }
    };
    let Some(new) = new else {
        std::fs::remove_file(pending).with_context(|| format!("removing {}", pending.display()))?;
        return Box::pin(rotate_master(settings)).await;
    };
    // The new key already opens the KEKs: the rewrap committed, only the rename is left.
    let opened_new = open(settings, pending).await;
    let (store, rewrap) = match opened_new {
        Ok(store) => (store, false),
        Err(_) => (open(settings, path).await?, true),
    };
    let result = async {
        let audit = CliAudit::open(&store, "keys rotate-master").await?;
        let run = async {
            if rewrap {
                store
                    .rotate_master(&new)
                    .await
                    .context("rewrapping the key-encryption keys under the new master key")?;
            }
            switch_key_file(pending, path)?;
            Ok::<_, anyhow::Error>(())
        }
        .await;
        audit.finish(run, None, None).await
    }
    .await;
    store.close().await;
    result?;
    Ok(if rewrap {
        format!(
            "ok: finished the interrupted master key rotation (key-encryption keys rewrapped); \
             {} replaced",
            path.display()
        )
    } else {
        format!(
            "ok: finished the interrupted master key rotation (the key-encryption keys were \
             already rewrapped); {} replaced",
            path.display()
        )
    })
}

/// Writes `key` to the new file `path` (mode 0600, fsync) and fsyncs its directory, so the
/// key is on disk before anything is wrapped under it.
fn write_key_file(path: &Path, key: &MasterKey) -> Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let io = || format!("writing the new master key {}", path.display());
    let mut file = opts.open(path).with_context(io)?;
    let hex = key.to_hex();
    file.write_all(hex.as_bytes()).with_context(io)?;
    file.write_all(b"\n").with_context(io)?;
    file.sync_all().with_context(io)?;
    sync_dir(path)
}

/// Renames `pending` over `path` (atomic) and fsyncs the directory.
fn switch_key_file(pending: &Path, path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(pending, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("making {} private", pending.display()))?;
    }
    std::fs::rename(pending, path).with_context(|| {
        format!(
            "renaming {} over {} (the database already uses the new key: rerun `phivault keys \
             rotate-master`)",
            pending.display(),
            path.display()
        )
    })?;
    sync_dir(path)
}

fn sync_dir(path: &Path) -> Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or_else(|| Path::new("."));
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing the directory {}", dir.display()))
}

fn now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

/// `3d 4h`, `5h 2m`, `7m`, `12s`.
fn age(seconds: i64) -> String {
    let s = seconds.max(0);
    let (d, h, m) = (s / 86_400, (s % 86_400) / 3600, (s % 3600) / 60);
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else if m > 0 {
        format!("{m}m")
    } else {
        format!("{s}s")
    }
}

fn rfc3339(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| unix.to_string())
}

/// The `keys status` text.
fn status_text(status: &KeyStatus, key_file: &Path, now: i64) -> String {
    let mut out = String::from("key-encryption keys:\n");
    out.push_str(&format!(
        "  {:<36}  {:<20}  {:>8}  {:<6}  {:>9}\n",
        "ID", "CREATED", "AGE", "ACTIVE", "DATA KEYS"
    ));
    for k in &status.keks {
        out.push_str(&format!(
            "  {:<36}  {:<20}  {:>8}  {:<6}  {:>9}\n",
            k.kek_id,
            rfc3339(k.created_at),
            age(now - k.created_at),
            if k.active { "yes" } else { "no" },
            k.data_keys
        ));
    }
    let kinds: Vec<String> = status
        .data_keys_by_kind
        .iter()
        .map(|(kind, n)| format!("{kind} {n}"))
        .collect();
    out.push_str(&format!(
        "data keys: {}\n",
        if kinds.is_empty() {
            "none".to_owned()
        } else {
            kinds.join(", ")
        }
    ));
    let modified = std::fs::metadata(key_file)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .and_then(|d| i64::try_from(d.as_secs()).ok());
    match modified {
        Some(m) => out.push_str(&format!(
            "master key file: {} (modified {}, {} ago)\n",
            key_file.display(),
            rfc3339(m),
            age(now - m)
        )),
        None => out.push_str(&format!("master key file: {}\n", key_file.display())),
    }
    if let Some(why) = interrupted_master_rotation(key_file) {
        out.push_str(&format!("master key rotation pending: {why}\n"));
    }
    if status.pending > 0 {
        out.push_str(&format!(
            "rotation pending: {} data keys (run `phivault keys rotate` to finish it)\n",
            status.pending
        ));
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ages() {
        assert_eq!(age(5), "5s");
        assert_eq!(age(125), "2m");
        assert_eq!(age(3 * 3600 + 60), "3h 1m");
        assert_eq!(age(2 * 86_400 + 7200), "2d 2h");
        assert_eq!(age(-3), "0s");
    }

    #[test]
    fn pending_file_name() {
        assert_eq!(
            pending_master_file(Path::new("/d/master.key")),
            PathBuf::from("/d/master.key.new")
        );
        assert!(interrupted_master_rotation(Path::new("/nonexistent/master.key")).is_none());
    }

    #[test]
    fn key_file_is_private_and_synced() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("master.key.new");
        let key = MasterKey::generate().unwrap();
        write_key_file(&p, &key).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let read = FileKeyProvider::new(&p).master_key().unwrap();
        assert_eq!(*read.to_hex(), *key.to_hex());
        // Never overwrites.
        assert!(write_key_file(&p, &key).is_err());
    }
}
