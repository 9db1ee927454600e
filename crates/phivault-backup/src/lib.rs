//! Encrypted, verifiable backups of a phivault store (DESIGN.md invariants 1, 6 and 7).
//!
//! A backup is one file: the rows of every table ([`phivault_store::backup::TABLES`]) read
//! from one consistent snapshot while the server keeps running, compressed with zstd and
//! encrypted with age to the operator's X25519 recipients. The rows are copied as stored:
//! sealed bodies, wrapped keys, blind tokens, the audit trail. The archive holds no master
//! key, so it is useless without both the offline age identity (to decrypt the file) and the
//! installation's master key (to open the keys inside it).
//!
//! Format (inside zstd, inside age): the line `phivault-backup/v1\n`, then records of a tag
//! byte, a length (u32 big-endian) and a payload:
//! - `H` the [`Header`] (JSON): format, time, schema version, source backend, tenant, the
//!   tables with their columns and row counts;
//! - per table: `T` its name, then one `R` per row ([`phivault_store::backup::encode_row`]),
//!   then `E` its row count and SHA-256 ([`phivault_store::backup::TableDigest`]);
//! - `M` the [`Manifest`] (JSON): counts, hashes, the audit trail's last entry and last
//!   signed checkpoint, the erasure ledger's size;
//!
//! - `A` (v2) the HMAC-SHA256 of the format line and every record before it, under a key
//!   derived from the master key ([`phivault_crypto::ArchiveMacKey`]); nothing may follow.
//!
//! age authenticates every 64 KiB chunk and the end of the stream, so a flipped byte or a
//! truncation anywhere is an error, and the counts and hashes of `E` and `M` check the rows
//! once more after decoding. age does not say who wrote a file (its recipients are public);
//! the MAC does: only a holder of the master key writes an archive a restore accepts. A v1
//! archive (before the MAC) is restored only when explicitly allowed. Reading an archive ([`verify`], [`restore`]) also checks the
//! archived audit trail: the hash chain and every signed checkpoint.
//!
//! A restore ([`restore`]) loads the archive into a target database in one transaction that
//! commits only once everything checked out: a damaged archive, the wrong identity, a newer
//! schema, a master key that does not open the archived keys, or a target that holds data
//! (without `force`) are refused before anything is changed. Rows are read back from the
//! target and compared with the archive's hashes before the commit. The erasure and
//! retention ledgers of the installation being replaced are replayed over the restored data,
//! so a patient erased after the backup was taken stays erased.

#![forbid(unsafe_code)]

mod archive;
mod inspect;
mod restore;

use std::io::Read;
use std::path::Path;

pub use archive::{FORMAT, FORMAT_V1, write_backup};
pub use inspect::{AuditSummary, CheckpointSummary, Header, Manifest, TableColumns, TableSummary};
pub use restore::{RestoreOptions, RestoreReport, restore};

use phivault_store::StoreError;

/// What went wrong. Messages name tables, counts and files, never row content.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    /// No identity given opens the archive.
    #[error(
        "none of the given age identities opens this archive (it was encrypted to other \
         recipients, or its header is damaged)"
    )]
    WrongIdentity,
    /// The archive is damaged: a flipped byte, a truncation, a record out of place.
    #[error("the archive is damaged or truncated: {0}")]
    Corrupt(String),
    /// Not a phivault backup at all.
    #[error("not a phivault backup: {0}")]
    NotABackup(String),
    /// The archive comes from a newer schema than this build knows.
    #[error(
        "the backup was written by schema version {archive}; this phivault knows schema \
         versions up to {supported}: restore it with a newer phivault"
    )]
    NewerSchema {
        /// The archive's schema version.
        archive: i64,
        /// This build's.
        supported: i64,
    },
    /// The restore target holds data and replacing it was not asked for.
    #[error(
        "the target database already holds data ({0}); a restore replaces everything in it \
         only when forced (--force)"
    )]
    TargetNotEmpty(String),
    /// The archive's keys do not open under the target's master key.
    #[error(
        "the backup's key-encryption key {0} does not open with this master key: a restore \
         needs the master key the backup was taken under"
    )]
    WrongMasterKey(String),
    /// The archive is not shown to come from this installation: its MAC does not verify
    /// under the master key's archive key, or it has none (a v1 archive, refused unless
    /// accepted explicitly).
    #[error("the archive is not authenticated: {0}")]
    Unauthenticated(String),
    /// The archived audit trail does not verify.
    #[error("the backup's audit trail does not verify: {0}")]
    Audit(String),
    /// The target database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Writing the archive failed.
    #[error("writing the archive: {0}")]
    Write(#[source] std::io::Error),
    /// A recipient or identity is not usable.
    #[error("{0}")]
    Key(String),
}

/// Parses age X25519 recipients (`age1...`), from the command line or from the lines of a
/// recipients file (blank lines and `#` comments are skipped).
pub fn parse_recipients<S: AsRef<str>>(
    lines: &[S],
) -> Result<Vec<age::x25519::Recipient>, BackupError> {
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let line = line.as_ref().trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        out.push(line.parse::<age::x25519::Recipient>().map_err(|_| {
            BackupError::Key(format!(
                "recipient {}: not an age X25519 public key (age1...)",
                i + 1
            ))
        })?);
    }
    if out.is_empty() {
        return Err(BackupError::Key(
            "no age recipient: a backup is encrypted to at least one".to_owned(),
        ));
    }
    Ok(out)
}

/// Reads the age X25519 identities (`AGE-SECRET-KEY-1...` lines, `#` comments allowed) of an
/// identity file, as `age-keygen` and `phivault backup keygen` write them.
pub fn read_identities(path: &Path) -> Result<Vec<age::x25519::Identity>, BackupError> {
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_string(&mut text))
        .map_err(|e| {
            BackupError::Key(format!("reading the identity file {}: {e}", path.display()))
        })?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        out.push(line.parse::<age::x25519::Identity>().map_err(|_| {
            BackupError::Key(format!(
                "{} line {}: not an age X25519 identity (AGE-SECRET-KEY-1...)",
                path.display(),
                i + 1
            ))
        })?);
    }
    if out.is_empty() {
        return Err(BackupError::Key(format!(
            "{} holds no age identity",
            path.display()
        )));
    }
    Ok(out)
}

/// Decrypts the start of an archive and returns its header: a wrong identity, a file that
/// is not a phivault backup, a damaged header or a newer schema is refused (the rest of the
/// archive is not read).
pub fn read_header(
    archive: impl Read,
    identities: &[age::x25519::Identity],
) -> Result<Header, BackupError> {
    Ok(
        archive::ArchiveReader::open(archive, identities, archive::Auth::Unchecked)?
            .header()
            .clone(),
    )
}

/// Checks an archive without restoring it: decrypts and decodes every record, checks every
/// table's count and hash, the manifest, and the archived audit trail (hash chain and signed
/// checkpoints). With `key` (the archive key of the installation's master key), the
/// archive's MAC must verify under it, and a v1 archive (without MAC) is refused; without,
/// the MAC is not checked. `progress` is called with the rows read so far and the total.
/// Returns the manifest.
pub fn verify(
    archive: impl Read,
    identities: &[age::x25519::Identity],
    key: Option<&phivault_crypto::ArchiveMacKey>,
    mut progress: impl FnMut(u64, u64),
) -> Result<Manifest, BackupError> {
    let auth = key.map_or(archive::Auth::Unchecked, |k| archive::Auth::Key(k, false));
    let mut reader = archive::ArchiveReader::open(archive, identities, auth)?;
    let total = reader.header().total_rows();
    let mut inspector = inspect::Inspector::new(reader.header().tenant.clone());
    let mut done = 0u64;
    while let Some(table) = reader.next_table()? {
        inspector.begin_table(table.table)?;
        while let Some(row) = reader.next_row(&table)? {
            inspector.row(&row.values, &row.encoded)?;
            done += 1;
            if done.is_multiple_of(1000) {
                progress(done, total);
            }
        }
        let computed = inspector.end_table()?;
        reader.end_table(&table, &computed)?;
    }
    progress(done, total);
    let header = reader.header().clone();
    let manifest = reader.finish()?;
    let computed = inspector.finish(header)?;
    inspect::compare_manifests(&manifest, &computed)?;
    if let Some(problem) = &computed.audit.problem {
        return Err(BackupError::Audit(problem.clone()));
    }
    Ok(manifest)
}
