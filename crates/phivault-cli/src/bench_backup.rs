//! `phivault bench --backup`: the throughput of a backup of the benchmark store, of its
//! verification, and of its restore into an empty database.

use std::io::{BufReader, BufWriter};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use phivault_backup::RestoreOptions;
use phivault_crypto::{FileKeyProvider, KeyProvider};
use phivault_store::Store;
use phivault_store::backup::RestoreTarget;

/// What the backup phase measured.
#[derive(Debug, Clone)]
pub(crate) struct BackupFigures {
    /// Current resources and rows in the archive.
    pub(crate) resources: u64,
    pub(crate) rows: u64,
    /// Bytes of encoded rows, and of the archive (compressed and encrypted).
    pub(crate) row_bytes: u64,
    pub(crate) archive_bytes: u64,
    pub(crate) backup: Duration,
    pub(crate) verify: Duration,
    pub(crate) restore: Duration,
    pub(crate) restore_backend: &'static str,
}

impl BackupFigures {
    pub(crate) fn lines(&self) -> Vec<String> {
        let mb = |b: u64| b as f64 / 1e6;
        let line = |what: &str, took: Duration| {
            let s = took.as_secs_f64().max(1e-9);
            format!(
                "{what}: {} resources ({} rows, archive {:.1} MB, rows {:.1} MB) in {:.2} s = \
                 {:.0} resources/s, {:.1} MB/s of archive",
                self.resources,
                self.rows,
                mb(self.archive_bytes),
                mb(self.row_bytes),
                s,
                self.resources as f64 / s,
                mb(self.archive_bytes) / s
            )
        };
        vec![
            line("backup (snapshot, zstd, age)", self.backup),
            line("backup verify", self.verify),
            line(
                &format!(
                    "restore into {} (with read-back of every table)",
                    self.restore_backend
                ),
                self.restore,
            ),
        ]
    }
}

/// Backs `store` up into `dir`, verifies the archive, and restores it into `restore_url`
/// (default: a new SQLite file in `dir`), timing each.
pub(crate) async fn measure(
    store: &Store,
    dir: &Path,
    keys: &FileKeyProvider,
    restore_url: Option<&str>,
) -> Result<BackupFigures> {
    let identity = age::x25519::Identity::generate();
    let recipient = identity.to_public();
    let path = dir.join("bench-backup.age");
    let archive_key = phivault_crypto::ArchiveMacKey::derive(&keys.master_key()?)?;
    let started = Instant::now();
    let file = std::fs::File::create(&path).context("creating the benchmark archive")?;
    let (out, manifest) = phivault_backup::write_backup(
        store,
        BufWriter::with_capacity(1 << 20, file),
        std::slice::from_ref(&recipient),
        &archive_key,
        |_, _| {},
    )
    .await
    .context("backing up the benchmark store")?;
    out.into_inner()
        .map_err(|e| anyhow::anyhow!("writing the archive: {}", e.error()))?
        .sync_all()?;
    let backup = started.elapsed();
    let archive_bytes = std::fs::metadata(&path)?.len();
    let identities = std::slice::from_ref(&identity);
    let open = || -> Result<BufReader<std::fs::File>> {
        Ok(BufReader::with_capacity(
            1 << 20,
            std::fs::File::open(&path)?,
        ))
    };

    let started = Instant::now();
    phivault_backup::verify(open()?, identities, Some(&archive_key), |_, _| {})
        .context("verifying the archive")?;
    let verify = started.elapsed();

    let url = match restore_url {
        Some(u) => u.to_owned(),
        None => format!("sqlite://{}", dir.join("restored.db").display()),
    };
    let started = Instant::now();
    let target = RestoreTarget::connect(&url)
        .await
        .context("opening the database to restore into")?;
    let restore_backend = target.backend().name();
    let result = phivault_backup::restore(
        open()?,
        identities,
        &target,
        &keys.master_key()?,
        RestoreOptions::default(),
        |_, _| {},
    )
    .await;
    target.close(result.is_err()).await;
    result.context("restoring the archive")?;
    let restore = started.elapsed();
    Ok(BackupFigures {
        resources: manifest.resources,
        rows: manifest.rows(),
        row_bytes: manifest.row_bytes,
        archive_bytes,
        backup,
        verify,
        restore,
        restore_backend,
    })
}
