//! What an archive says about itself (header and manifest), and the inspector that computes
//! the manifest from rows: the writer runs it over the rows it reads from the database, the
//! readers over the rows they decode, and the two results must be equal.

use std::collections::BTreeMap;

use phivault_audit::{ChainVerifier, Checkpoint, RecordedEntry};
use phivault_store::backup::{Table, TableDigest, Value};
use serde::{Deserialize, Serialize};

use crate::BackupError;

/// A table as archived: its columns (name and kind, in the order of the row values) and the
/// rows the snapshot held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableColumns {
    /// Table name.
    pub name: String,
    /// `[name, kind]` per column (kind: `int`, `text` or `bytes`).
    pub columns: Vec<[String; 2]>,
    /// Rows in the archive.
    pub rows: u64,
}

/// The first record of an archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// [`crate::FORMAT`].
    pub format: String,
    /// When the snapshot was taken (RFC 3339).
    pub created_at: String,
    /// The phivault version that wrote the archive.
    pub phivault_version: String,
    /// The schema version (newest migration) of the database backed up.
    pub schema_version: i64,
    /// `sqlite` or `postgresql`.
    pub source_backend: String,
    /// The tenant of the store that wrote it (whose audit key signs the checkpoints).
    pub tenant: String,
    /// The tables, in archive order.
    pub tables: Vec<TableColumns>,
}

impl Header {
    /// Rows in the whole archive.
    pub fn total_rows(&self) -> u64 {
        self.tables.iter().map(|t| t.rows).sum()
    }
}

/// A table's row count and SHA-256 (hex), see [`phivault_store::backup::TableDigest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableSummary {
    /// Table name.
    pub name: String,
    /// Rows.
    pub rows: u64,
    /// SHA-256 of the rows, hex.
    pub sha256: String,
}

/// The last signed checkpoint of the archived trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointSummary {
    /// Entries covered.
    pub size: u64,
    /// Merkle root, hex.
    pub root: String,
    /// Unix milliseconds.
    pub time: i64,
}

/// The archived audit trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditSummary {
    /// Entries.
    pub entries: u64,
    /// Seq of the last entry (0 when none).
    pub last_seq: u64,
    /// Hash of the last entry, hex.
    pub last_entry_hash: Option<String>,
    /// Signed checkpoints.
    pub checkpoints: u64,
    /// The last of them.
    pub last_checkpoint: Option<CheckpointSummary>,
    /// Entries after the last checkpoint (covered by the hash chain only).
    pub unsealed: u64,
    /// Why the trail did not verify when the archive was written (`None`: it verified).
    pub problem: Option<String>,
}

/// The last record of an archive: what it holds, with a hash per table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The header again.
    pub header: Header,
    /// Per table: rows and SHA-256.
    pub tables: Vec<TableSummary>,
    /// Current resources (not deleted).
    pub resources: u64,
    /// Resources whose current version is a deletion.
    pub deleted_resources: u64,
    /// Resource versions (history entries), all of them.
    pub versions: u64,
    /// Current resources per type.
    pub resource_types: BTreeMap<String, u64>,
    /// Data keys (patients with data, directory and index keys).
    pub data_keys: u64,
    /// User accounts.
    pub users: u64,
    /// The audit trail.
    pub audit: AuditSummary,
    /// Erasure ledger rows (patients erased).
    pub erasures: u64,
    /// Retention ledger rows (resources disposed of).
    pub disposals: u64,
    /// Bytes of encoded rows (before compression and encryption).
    pub row_bytes: u64,
}

impl Manifest {
    /// Rows in the archive.
    pub fn rows(&self) -> u64 {
        self.tables.iter().map(|t| t.rows).sum()
    }
}

/// Computes a [`Manifest`] from the rows of an archive, table by table, checking the audit
/// trail as its entries go by.
pub(crate) struct Inspector {
    tenant: String,
    current: Option<(&'static Table, TableDigest)>,
    tables: Vec<TableSummary>,
    resources: u64,
    deleted_resources: u64,
    versions: u64,
    resource_types: BTreeMap<String, u64>,
    data_keys: u64,
    users: u64,
    erasures: u64,
    disposals: u64,
    row_bytes: u64,
    audit_key: Option<Vec<u8>>,
    checkpoints: Vec<Checkpoint>,
    verifier: Option<ChainVerifier>,
    entries: u64,
    last_seq: u64,
    last_entry_hash: Option<Vec<u8>>,
    problem: Option<String>,
}

fn text(v: Option<&Value>) -> Option<&str> {
    match v {
        Some(Value::Text(s)) => Some(s),
        _ => None,
    }
}
fn int(v: Option<&Value>) -> Option<i64> {
    match v {
        Some(Value::Int(i)) => Some(*i),
        _ => None,
    }
}
fn bytes(v: Option<&Value>) -> Option<&[u8]> {
    match v {
        Some(Value::Bytes(b)) => Some(b),
        _ => None,
    }
}

impl Inspector {
    pub(crate) fn new(tenant: String) -> Inspector {
        Inspector {
            tenant,
            current: None,
            tables: Vec::new(),
            resources: 0,
            deleted_resources: 0,
            versions: 0,
            resource_types: BTreeMap::new(),
            data_keys: 0,
            users: 0,
            erasures: 0,
            disposals: 0,
            row_bytes: 0,
            audit_key: None,
            checkpoints: Vec::new(),
            verifier: None,
            entries: 0,
            last_seq: 0,
            last_entry_hash: None,
            problem: None,
        }
    }

    pub(crate) fn begin_table(&mut self, table: &'static Table) -> Result<(), BackupError> {
        if self.current.is_some() || self.tables.iter().any(|t| t.name == table.name) {
            return Err(BackupError::Corrupt(format!(
                "table {} appears out of place",
                table.name
            )));
        }
        self.current = Some((table, TableDigest::new()));
        Ok(())
    }

    /// One row: `values` in the order of the table's columns ([`Table::columns`]), `encoded`
    /// as archived.
    pub(crate) fn row(&mut self, values: &[Value], encoded: &[u8]) -> Result<(), BackupError> {
        let Some((table, digest)) = self.current.as_mut() else {
            return Err(BackupError::Corrupt("a row outside any table".to_owned()));
        };
        digest.add(encoded);
        self.row_bytes += encoded.len() as u64;
        let table: &'static Table = table;
        let at = |name: &str| {
            table
                .columns
                .iter()
                .position(|c| c.name == name)
                .and_then(|i| values.get(i))
        };
        let malformed = || BackupError::Corrupt(format!("a row of {} is malformed", table.name));
        match table.name {
            "current_resources" => {
                let rtype = text(at("rtype")).ok_or_else(malformed)?;
                if int(at("deleted")).ok_or_else(malformed)? == 0 {
                    self.resources += 1;
                    *self.resource_types.entry(rtype.to_owned()).or_default() += 1;
                } else {
                    self.deleted_resources += 1;
                }
            }
            "resource_versions" => self.versions += 1,
            "data_keys" => self.data_keys += 1,
            "users" => self.users += 1,
            "erasures" => self.erasures += 1,
            "retention_ledger" => self.disposals += 1,
            "audit_keys" if text(at("tenant")) == Some(self.tenant.as_str()) => {
                self.audit_key = Some(bytes(at("public_key")).ok_or_else(malformed)?.to_vec());
            }
            "audit_checkpoints" => {
                let size = int(at("size")).ok_or_else(malformed)?;
                let checkpoint = Checkpoint {
                    size: u64::try_from(size).map_err(|_| malformed())?,
                    root: bytes(at("root"))
                        .and_then(|b| b.try_into().ok())
                        .ok_or_else(malformed)?,
                    last_entry_hash: bytes(at("last_entry_hash"))
                        .and_then(|b| b.try_into().ok())
                        .ok_or_else(malformed)?,
                    time: int(at("time")).ok_or_else(malformed)?,
                    signature: bytes(at("signature")).ok_or_else(malformed)?.to_vec(),
                };
                self.checkpoints.push(checkpoint);
            }
            "audit_entries" => {
                let entry = RecordedEntry {
                    seq: int(at("seq"))
                        .and_then(|s| u64::try_from(s).ok())
                        .ok_or_else(malformed)?,
                    body: bytes(at("body")).ok_or_else(malformed)?.to_vec(),
                    entry_hash: bytes(at("entry_hash")).ok_or_else(malformed)?.to_vec(),
                    prev_hash: bytes(at("prev_hash")).ok_or_else(malformed)?.to_vec(),
                    // Absent from archives written before the keyed chain.
                    chain_mac: bytes(at("chain_mac")).map(<[u8]>::to_vec),
                    // The archive streams the patient rows after the entries: the chain is
                    // checked here, the copied-out columns by a verification after restore.
                    columns: None,
                };
                self.entries += 1;
                self.last_seq = entry.seq;
                self.last_entry_hash = Some(entry.entry_hash.clone());
                if self.entries == 1 {
                    self.start_verifier();
                }
                if let Some(v) = self.verifier.as_mut()
                    && let Err(e) = v.push(&entry)
                {
                    self.problem = Some(e.to_string());
                    self.verifier = None;
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn start_verifier(&mut self) {
        if self.problem.is_some() {
            return;
        }
        let Some(key) = &self.audit_key else {
            if !self.checkpoints.is_empty() {
                self.problem = Some(format!(
                    "the trail has checkpoints but no checkpoint key of tenant {}",
                    self.tenant
                ));
            }
            return;
        };
        match ChainVerifier::new(self.checkpoints.clone(), key) {
            Ok(v) => self.verifier = Some(v),
            Err(e) => self.problem = Some(e.to_string()),
        }
    }

    pub(crate) fn end_table(&mut self) -> Result<TableSummary, BackupError> {
        let Some((table, digest)) = self.current.take() else {
            return Err(BackupError::Corrupt(
                "a table end outside any table".to_owned(),
            ));
        };
        let (rows, hash) = digest.finish();
        let summary = TableSummary {
            name: table.name.to_owned(),
            rows,
            sha256: hex::encode(hash),
        };
        self.tables.push(summary.clone());
        Ok(summary)
    }

    pub(crate) fn finish(mut self, header: Header) -> Result<Manifest, BackupError> {
        if self.current.is_some() {
            return Err(BackupError::Corrupt("the last table has no end".to_owned()));
        }
        if self.entries == 0 {
            self.start_verifier();
        }
        let mut unsealed = self.entries;
        if let Some(v) = self.verifier.take() {
            match v.finish() {
                Ok(report) => unsealed = report.unsealed,
                Err(e) => self.problem = Some(e.to_string()),
            }
        }
        let last_checkpoint =
            self.checkpoints
                .iter()
                .max_by_key(|c| c.size)
                .map(|c| CheckpointSummary {
                    size: c.size,
                    root: hex::encode(c.root),
                    time: c.time,
                });
        Ok(Manifest {
            header,
            tables: self.tables,
            resources: self.resources,
            deleted_resources: self.deleted_resources,
            versions: self.versions,
            resource_types: self.resource_types,
            data_keys: self.data_keys,
            users: self.users,
            audit: AuditSummary {
                entries: self.entries,
                last_seq: self.last_seq,
                last_entry_hash: self.last_entry_hash.map(hex::encode),
                checkpoints: self.checkpoints.len() as u64,
                last_checkpoint,
                unsealed,
                problem: self.problem,
            },
            erasures: self.erasures,
            disposals: self.disposals,
            row_bytes: self.row_bytes,
        })
    }
}

/// Checks that the manifest an archive carries is the one its rows give.
pub(crate) fn compare_manifests(stored: &Manifest, computed: &Manifest) -> Result<(), BackupError> {
    for (s, c) in stored.tables.iter().zip(&computed.tables) {
        if s != c {
            return Err(BackupError::Corrupt(format!(
                "table {} does not match the manifest ({} rows recorded, {} found)",
                c.name, s.rows, c.rows
            )));
        }
    }
    if stored != computed {
        return Err(BackupError::Corrupt(
            "the manifest does not match the archive's rows".to_owned(),
        ));
    }
    Ok(())
}
