//! Restoring an archive into a target database, in one transaction (see the crate docs).

use std::io::Read;

use phivault_crypto::{ArchiveMacKey, MasterKey};
use phivault_store::StoreError;
use phivault_store::backup::{
    RestoreTarget, RevocationsReplayed, Table, TableDigest, Value, encode_row, kek_opens,
};

use crate::BackupError;
use crate::archive::{ArchiveReader, Auth};
use crate::inspect::{Inspector, Manifest, TableSummary, compare_manifests};

/// How to restore.
#[derive(Debug, Clone, Copy, Default)]
pub struct RestoreOptions {
    /// Replace a target that holds data (its erasure and retention ledgers are replayed over
    /// the restored data).
    pub force: bool,
    /// Restore even when the archived audit trail does not verify (the problem is reported).
    pub allow_broken_audit: bool,
    /// Restore a v1 archive, which carries no MAC (nothing shows which installation wrote
    /// it). A v2 archive's MAC is checked whatever this says.
    pub allow_unauthenticated: bool,
}

/// What a restore did.
#[derive(Debug, Clone)]
pub struct RestoreReport {
    /// The archive's manifest.
    pub manifest: Manifest,
    /// What the target held before (table, rows), when it was replaced.
    pub replaced: Vec<(String, u64)>,
    /// Rows restored and read back identical.
    pub rows: u64,
    /// Data keys deleted by replaying the erasure ledgers (patients erased after the backup
    /// was taken, in the installation replaced).
    pub keys_erased: u64,
    /// Resources disposed of by replaying the replaced installation's retention ledger.
    pub resources_disposed: u64,
    /// Tokens, users, clients and recovery codes revoked again by replaying the replaced
    /// installation's revocations.
    pub revocations: RevocationsReplayed,
    /// Whether the archive's MAC was verified under the master key (false: a v1 archive
    /// restored with `allow_unauthenticated`).
    pub authenticated: bool,
}

fn ledger(name: &str) -> Result<&'static Table, BackupError> {
    Table::named(name)
        .ok_or_else(|| BackupError::Store(StoreError::Config(format!("no table {name}"))))
}

/// Restores `archive` into `target` (see the crate docs): decrypts with `identities`, checks
/// every key-encryption key of the archive against `master`, loads every row in one
/// transaction, reads every table back and compares it with the archive's hashes, checks
/// the archive's MAC under `master`'s archive key, replays the erasure and retention ledgers
/// and the revocations of the database replaced, and commits. On any error nothing is
/// changed.
/// `progress` is called with the rows loaded so far and the total.
pub async fn restore<R: Read>(
    archive: R,
    identities: &[age::x25519::Identity],
    target: &RestoreTarget,
    master: &MasterKey,
    options: RestoreOptions,
    mut progress: impl FnMut(u64, u64),
) -> Result<RestoreReport, BackupError> {
    let key = ArchiveMacKey::derive(master)
        .map_err(|e| BackupError::Key(format!("the archive key: {e}")))?;
    let mut reader = ArchiveReader::open(
        archive,
        identities,
        Auth::Key(&key, options.allow_unauthenticated),
    )?;
    let authenticated = reader.authenticated();
    let existing = target.data_rows().await?;
    if !existing.is_empty() && !options.force {
        let held: Vec<String> = existing
            .iter()
            .map(|(table, rows)| format!("{table}: {rows} rows"))
            .collect();
        return Err(BackupError::TargetNotEmpty(held.join(", ")));
    }
    let mut tx = target.begin().await?;
    let erasures = ledger("erasures")?;
    let retention = ledger("retention_ledger")?;
    let other_erasures = tx.rows(erasures).await?;
    let other_retention = tx.rows(retention).await?;
    let other_revocations = tx.revocations().await?;
    tx.clear().await?;

    let total = reader.header().total_rows();
    let mut inspector = Inspector::new(reader.header().tenant.clone());
    let mut loaded: Vec<(&'static Table, bool, TableSummary)> = Vec::new();
    let mut batch: Vec<Vec<Value>> = Vec::new();
    let mut done = 0u64;
    while let Some(archived) = reader.next_table()? {
        let table = archived.table;
        inspector.begin_table(table)?;
        let per_insert = tx.batch_rows(archived.columns.len());
        let at = |name: &str| table.columns.iter().position(|c| c.name == name);
        let (kek_id, wrapped) = (at("kek_id"), at("wrapped"));
        while let Some(row) = reader.next_row(&archived)? {
            if table.name == "key_encryption_keys" {
                let id = match kek_id.and_then(|i| row.values.get(i)) {
                    Some(Value::Text(id)) => id.clone(),
                    _ => String::new(),
                };
                let key = match wrapped.and_then(|i| row.values.get(i)) {
                    Some(Value::Bytes(b)) => b.as_slice(),
                    _ => &[],
                };
                if !kek_opens(master, &id, key) {
                    return Err(BackupError::WrongMasterKey(id));
                }
            }
            inspector.row(&row.values, &row.encoded)?;
            batch.push(row.archived);
            if batch.len() >= per_insert {
                tx.insert(table, &archived.columns, &batch).await?;
                batch.clear();
            }
            done += 1;
            if done.is_multiple_of(1000) {
                progress(done, total);
            }
        }
        if !batch.is_empty() {
            tx.insert(table, &archived.columns, &batch).await?;
            batch.clear();
        }
        let summary = inspector.end_table()?;
        reader.end_table(&archived, &summary)?;
        let whole = archived.columns.len() == table.columns.len()
            && archived
                .columns
                .iter()
                .zip(table.columns)
                .all(|(a, b)| a.name == b.name);
        loaded.push((table, whole, summary));
    }
    progress(done, total);
    let header = reader.header().clone();
    let manifest = reader.finish()?;
    let computed = inspector.finish(header)?;
    compare_manifests(&manifest, &computed)?;
    if let Some(problem) = &computed.audit.problem
        && !options.allow_broken_audit
    {
        return Err(BackupError::Audit(problem.clone()));
    }

    // Every table as the target now holds it must be the archive's, row for row.
    for (table, whole, summary) in &loaded {
        if !whole {
            continue;
        }
        let mut digest = TableDigest::new();
        let mut buf = Vec::new();
        tx.for_each_row(table, |values| {
            buf.clear();
            encode_row(&values, &mut buf);
            digest.add(&buf);
            Ok::<(), StoreError>(())
        })
        .await?;
        let (rows, hash) = digest.finish();
        if rows != summary.rows || hex::encode(hash) != summary.sha256 {
            return Err(BackupError::Store(StoreError::Config(format!(
                "table {} reads back differently from the archive ({rows} rows of {})",
                table.name, summary.rows
            ))));
        }
    }

    let keys_erased = tx.replay_erasures(&other_erasures).await?;
    let resources_disposed = tx.replay_retention(&other_retention).await?;
    let revocations = tx.replay_revocations(&other_revocations).await?;
    tx.commit().await?;
    // Restored tables have no statistics yet; without them PostgreSQL plans searches as if
    // the index were empty.
    target.refresh_statistics().await?;
    Ok(RestoreReport {
        manifest,
        replaced: existing
            .into_iter()
            .map(|(t, n)| (t.to_owned(), n))
            .collect(),
        rows: done,
        keys_erased,
        resources_disposed,
        revocations,
        authenticated,
    })
}
