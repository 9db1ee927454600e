//! `phivault audit ...`: verify the audit trail, print an inclusion proof, and check a proof
//! without the database.
//!
//! `verify` and `prove` open the same storage as `serve` (the master key must exist: it
//! unseals the checkpoint-signing key); `check-proof` reads only files. The behaviour lives in
//! phivault-audit. Stdout carries the result (`ok: N entries, M checkpoints`, the proof JSON,
//! `ok: ...`) or `FAILED: ...` naming the first bad entry (exit status 1); progress and,
//! for `verify`, the time taken and the rate (entries/s) go to stderr.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use phivault_audit::{AuditLog, Checkpoint, InclusionBundle};
use phivault_crypto::{FileKeyProvider, KeyProvider};
use phivault_store::{Backend, Store, StoreOptions};
use serde::{Deserialize, Serialize};

use crate::cli::StorageArgs;
use crate::config;

/// `phivault audit ...`
#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// Verify the whole audit trail: the hash chain and every signed checkpoint. Prints
    /// `ok: N entries, M checkpoints`, or the first bad entry (exit status 1).
    Verify(AuditVerifyArgs),
    /// Print the inclusion proof of entry SEQ (JSON) under the first checkpoint covering it.
    Prove(AuditProveArgs),
    /// Check a proof printed by `audit prove`, without the database.
    #[command(name = "check-proof")]
    CheckProof(AuditCheckProofArgs),
}

#[derive(Debug, Clone, Args)]
pub(crate) struct AuditVerifyArgs {
    /// Expected checkpoint public key (64 hex digits); default: `audit_public_key` of the
    /// configuration, else the key in the database (with a warning).
    #[arg(long, value_name = "HEX")]
    pub(crate) public_key: Option<String>,
    /// A checkpoint published earlier (JSON, as `GET /audit/checkpoint` answers), kept outside
    /// the database: the trail must still hold what it signed. Repeatable.
    #[arg(long, value_name = "FILE")]
    pub(crate) checkpoint: Vec<PathBuf>,
    #[command(flatten)]
    pub(crate) storage: StorageArgs,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct AuditProveArgs {
    /// The entry's sequence number.
    #[arg(value_name = "SEQ")]
    pub(crate) seq: u64,
    #[command(flatten)]
    pub(crate) storage: StorageArgs,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct AuditCheckProofArgs {
    /// The proof (JSON, as printed by `audit prove`).
    #[arg(value_name = "FILE")]
    pub(crate) file: PathBuf,
    /// A checkpoint (JSON) to check against instead of the one inside the proof.
    #[arg(long, value_name = "FILE")]
    pub(crate) checkpoint: Option<PathBuf>,
    /// The checkpoint public key (64 hex digits); default: the key inside the proof file.
    #[arg(long, value_name = "HEX")]
    pub(crate) public_key: Option<String>,
}

/// What `audit prove` prints: the proof and the key that signed its checkpoint.
#[derive(Debug, Serialize, Deserialize)]
struct ProofFile {
    /// Raw Ed25519 public key, hex.
    public_key: String,
    #[serde(flatten)]
    bundle: InclusionBundle,
}

/// Runs `phivault audit ...`.
pub(crate) async fn run(config_file: Option<&Path>, command: AuditCommand) -> Result<ExitCode> {
    match command {
        AuditCommand::Verify(args) => {
            let published = args
                .checkpoint
                .iter()
                .map(|path| read_json::<Checkpoint>(path))
                .collect::<Result<Vec<_>>>()?;
            let (log, settings) = open_with(config_file, &args.storage).await?;
            let pinned = match &args.public_key {
                Some(text) => Some(parse_key(text)?),
                None => settings.audit_public_key.clone(),
            };
            let result = verify(&log, pinned.as_deref(), &published).await;
            log.store().close().await;
            result
        }
        AuditCommand::Prove(args) => {
            let log = open(config_file, &args.storage).await?;
            let result = log.prove(args.seq).await;
            let public_key = hex::encode(log.public_key());
            log.store().close().await;
            let bundle = result.with_context(|| format!("proving audit entry {}", args.seq))?;
            let text = serde_json::to_string_pretty(&ProofFile { public_key, bundle })?;
            let mut out = std::io::stdout().lock();
            writeln!(out, "{text}")?;
            out.flush()?;
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::CheckProof(args) => check_proof(&args),
    }
}

async fn open(config_file: Option<&Path>, storage: &StorageArgs) -> Result<AuditLog> {
    Ok(open_with(config_file, storage).await?.0)
}

/// The trail and the settings it was opened with.
async fn open_with(
    config_file: Option<&Path>,
    storage: &StorageArgs,
) -> Result<(AuditLog, config::Settings)> {
    let file = config::load_file(config_file)?;
    let settings = config::resolve(storage.layer(), file)?;
    let keys = FileKeyProvider::new(&settings.master_key_file);
    keys.master_key()
        .with_context(|| format!("reading the master key {}", keys.path().display()))?;
    // Never name the URL: it may hold a password.
    let backend = Backend::from_url(&settings.database_url)
        .map(|b| b.name())
        .unwrap_or("configured");
    let mut opts = StoreOptions::new(settings.database_url.clone());
    opts.max_connections = 2;
    let store = Store::open(&opts, &keys)
        .await
        .with_context(|| format!("opening the {backend} database"))?;
    let log = AuditLog::open(store)
        .await
        .context("loading the audit signing key")?;
    Ok((log, settings))
}

fn parse_key(text: &str) -> Result<Vec<u8>> {
    let key = hex::decode(text.trim()).context("the public key is not hex")?;
    if key.len() != 32 {
        bail!("the public key must be 32 bytes (64 hex digits)");
    }
    Ok(key)
}

async fn verify(
    log: &AuditLog,
    pinned: Option<&[u8]>,
    published: &[Checkpoint],
) -> Result<ExitCode> {
    match pinned {
        Some(pinned) if pinned != log.public_key() => {
            println!(
                "FAILED: the database's audit key {} is not the expected public key {}",
                hex::encode(log.public_key()),
                hex::encode(pinned)
            );
            return Ok(ExitCode::FAILURE);
        }
        Some(_) => {}
        None => eprintln!(
            "phivault: no pinned audit key (--public-key or audit_public_key): trusting the \
             key stored in the database"
        ),
    }
    eprintln!(
        "phivault: verifying the audit trail (checkpoint key {})",
        hex::encode(log.public_key())
    );
    let started = Instant::now();
    let mut shown = 0;
    let result = log
        .verify_against(published, |n| {
            if n >= shown + 10_000 {
                shown = n;
                eprintln!("phivault: {n} entries verified");
            }
        })
        .await;
    match result {
        Ok(report) => {
            if report.unsealed > 0 {
                eprintln!(
                    "phivault: the last {} entries are not covered by a checkpoint yet \
                     (chain only)",
                    report.unsealed
                );
            }
            let elapsed = started.elapsed().as_secs_f64();
            // Entries per second; an instant run (no entries, or too fast to time) shows 0.
            let rate = if elapsed > 0.0 {
                report.entries as f64 / elapsed
            } else {
                0.0
            };
            eprintln!(
                "phivault: verified {} entries in {elapsed:.3} s ({rate:.0} entries/s)",
                report.entries
            );
            if !published.is_empty() {
                eprintln!(
                    "phivault: the trail holds what {} published checkpoint(s) signed",
                    published.len()
                );
            }
            println!(
                "ok: {} entries, {} checkpoints",
                report.entries, report.checkpoints
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) if e.is_tamper() => {
            match e.first_bad_seq() {
                Some(seq) => println!("FAILED: first bad entry {seq}: {e}"),
                None => println!("FAILED: {e}"),
            }
            Ok(ExitCode::FAILURE)
        }
        Err(e) => Err(anyhow::Error::new(e).context("verifying the audit trail")),
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

fn check_proof(args: &AuditCheckProofArgs) -> Result<ExitCode> {
    let proof: ProofFile = read_json(&args.file)?;
    let checkpoint: Checkpoint = match &args.checkpoint {
        Some(path) => read_json(path)?,
        None => proof.bundle.checkpoint.clone(),
    };
    let key = match &args.public_key {
        Some(k) => parse_key(k)?,
        None => {
            eprintln!(
                "phivault: using the public key inside the proof file; pin the trail's key \
                 with --public-key"
            );
            parse_key(&proof.public_key)?
        }
    };
    match proof.bundle.check(&checkpoint, &key) {
        Ok(()) => {
            println!(
                "ok: entry {} is in the audit trail of {} entries (root {})",
                proof.bundle.seq,
                checkpoint.size,
                hex::encode(checkpoint.root)
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(why) => {
            println!("FAILED: {why}");
            Ok(ExitCode::FAILURE)
        }
    }
}
