//! The archive format (see the crate docs): writing it from a store snapshot, and reading
//! it record by record.

use std::io::{BufReader, Read, Write};

use phivault_crypto::{ARCHIVE_MAC_LEN, ArchiveMac, ArchiveMacKey};
use phivault_store::Store;
use phivault_store::backup::{
    Column, ColumnKind, TABLES, Table, Value, decode_row, encode_row, schema_version,
};

use crate::BackupError;
use crate::inspect::{Header, Inspector, Manifest, TableColumns, TableSummary};

/// The format name, first line of the decrypted stream and `format` of the header.
pub const FORMAT: &str = "phivault-backup/v2";
const MAGIC: &[u8] = b"phivault-backup/v2\n";
/// The earlier format: the same records without the closing MAC. Read only when an
/// unauthenticated archive is explicitly accepted.
pub const FORMAT_V1: &str = "phivault-backup/v1";
const MAGIC_V1: &[u8] = b"phivault-backup/v1\n";
/// The largest record accepted (a resource body is at most a few MiB).
const MAX_RECORD: usize = 256 << 20;
/// zstd level: fast, and most of an archive is ciphertext, which does not compress.
const ZSTD_LEVEL: i32 = 3;

const HEADER: u8 = b'H';
const TABLE: u8 = b'T';
const ROW: u8 = b'R';
const TABLE_END: u8 = b'E';
const MANIFEST: u8 = b'M';
/// The closing record of a v2 archive: the HMAC-SHA256, under the master key's archive key
/// ([`ArchiveMacKey`]), of the format line and of every record before it (tag, length and
/// payload). Nothing follows it.
const MAC: u8 = b'A';

fn write_record(
    out: &mut impl Write,
    mac: &mut ArchiveMac,
    tag: u8,
    payload: &[u8],
) -> Result<(), BackupError> {
    let len = u32::try_from(payload.len())
        .map_err(|_| BackupError::Write(std::io::Error::other("a record is too large")))?;
    mac.update(&[tag]);
    mac.update(&len.to_be_bytes());
    mac.update(payload);
    write_raw_record(out, tag, payload)
}

fn write_raw_record(out: &mut impl Write, tag: u8, payload: &[u8]) -> Result<(), BackupError> {
    let len = u32::try_from(payload.len())
        .map_err(|_| BackupError::Write(std::io::Error::other("a record is too large")))?;
    out.write_all(&[tag])
        .and_then(|()| out.write_all(&len.to_be_bytes()))
        .and_then(|()| out.write_all(payload))
        .map_err(BackupError::Write)
}

fn json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, BackupError> {
    serde_json::to_vec(value).map_err(|e| BackupError::Write(std::io::Error::other(e)))
}

/// Writes a backup of `store` to `out`: one consistent snapshot of every table, compressed,
/// authenticated with `key` (the archive key of the installation's master key) and
/// encrypted to `recipients`. `progress` is called with the rows written so far and the
/// total. Returns `out` (flushed, for the caller to sync) and the manifest.
pub async fn write_backup<W: Write>(
    store: &Store,
    out: W,
    recipients: &[age::x25519::Recipient],
    key: &ArchiveMacKey,
    mut progress: impl FnMut(u64, u64),
) -> Result<(W, Manifest), BackupError> {
    let encryptor =
        age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
            .map_err(|e| BackupError::Key(format!("age: {e}")))?;
    let sealed = encryptor.wrap_output(out).map_err(BackupError::Write)?;
    let mut z =
        zstd::stream::write::Encoder::new(sealed, ZSTD_LEVEL).map_err(BackupError::Write)?;

    let mut snapshot = store.snapshot().await?;
    let mut tables = Vec::with_capacity(TABLES.len());
    for table in TABLES {
        tables.push(TableColumns {
            name: table.name.to_owned(),
            columns: table
                .columns
                .iter()
                .map(|c| [c.name.to_owned(), c.kind.name().to_owned()])
                .collect(),
            rows: snapshot.count(table).await?,
        });
    }
    let created_at = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let header = Header {
        format: FORMAT.to_owned(),
        created_at,
        phivault_version: env!("CARGO_PKG_VERSION").to_owned(),
        schema_version: schema_version(),
        source_backend: store.backend().name().to_owned(),
        tenant: store.tenant().to_owned(),
        tables,
    };
    let total = header.total_rows();
    let mut mac = key.start();
    z.write_all(MAGIC).map_err(BackupError::Write)?;
    mac.update(MAGIC);
    write_record(&mut z, &mut mac, HEADER, &json(&header)?)?;
    let mut inspector = Inspector::new(header.tenant.clone());
    let mut done = 0u64;
    let mut buf = Vec::new();
    for table in TABLES {
        write_record(&mut z, &mut mac, TABLE, table.name.as_bytes())?;
        inspector.begin_table(table)?;
        snapshot
            .for_each_row(table, |values| {
                buf.clear();
                encode_row(&values, &mut buf);
                inspector.row(&values, &buf)?;
                write_record(&mut z, &mut mac, ROW, &buf)?;
                done += 1;
                if done.is_multiple_of(1000) {
                    progress(done, total);
                }
                Ok::<(), BackupError>(())
            })
            .await?;
        let summary = inspector.end_table()?;
        write_record(&mut z, &mut mac, TABLE_END, &json(&summary)?)?;
    }
    snapshot.finish().await?;
    progress(done, total);
    let manifest = inspector.finish(header)?;
    write_record(&mut z, &mut mac, MANIFEST, &json(&manifest)?)?;
    write_raw_record(&mut z, MAC, &mac.finish())?;
    let sealed = z.finish().map_err(BackupError::Write)?;
    let mut out = sealed.finish().map_err(BackupError::Write)?;
    out.flush().map_err(BackupError::Write)?;
    Ok((out, manifest))
}

/// A table being read: its place in the schema and how the archive's columns map onto it.
#[derive(Debug)]
pub(crate) struct ArchivedTable {
    pub(crate) table: &'static Table,
    /// The archive's columns, in row order.
    pub(crate) columns: Vec<&'static Column>,
    /// Rows the header announced.
    pub(crate) rows: u64,
}

/// A row read: its values in the schema's column order (NULL for a column the archive
/// lacks), in the archive's column order, and as encoded in the archive.
pub(crate) struct ArchivedRow {
    pub(crate) values: Vec<Value>,
    pub(crate) archived: Vec<Value>,
    pub(crate) encoded: Vec<u8>,
}

type Plain<R> =
    BufReader<zstd::stream::read::Decoder<'static, BufReader<age::stream::StreamReader<R>>>>;

/// How a reader treats the archive's authentication.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Auth<'k> {
    /// A v2 archive's MAC must verify under this key; a v1 archive (no MAC) is refused,
    /// unless `allow_v1`.
    Key(&'k ArchiveMacKey, bool),
    /// The MAC is not checked (no master key at hand: `backup verify` without one).
    Unchecked,
}

/// Reads an archive record by record; every read error is reported as damage.
pub(crate) struct ArchiveReader<R: Read> {
    plain: Plain<R>,
    header: Header,
    /// The MAC of what was read so far (v2 archives, when checked).
    mac: Option<ArchiveMac>,
    /// Whether the archive is v2 (closes with a MAC).
    authenticated: bool,
    next_table: usize,
    /// A table end or the manifest, read while looking for the next row or table.
    pending: Option<(u8, Vec<u8>)>,
}

fn corrupt(e: std::io::Error) -> BackupError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        BackupError::Corrupt("it ends early".to_owned())
    } else {
        BackupError::Corrupt(e.to_string())
    }
}

fn decrypt_error(e: age::DecryptError) -> BackupError {
    match e {
        age::DecryptError::NoMatchingKeys => BackupError::WrongIdentity,
        age::DecryptError::UnknownFormat => {
            BackupError::NotABackup("not an age-encrypted file".to_owned())
        }
        age::DecryptError::Io(e) => corrupt(e),
        other => BackupError::Corrupt(other.to_string()),
    }
}

impl<R: Read> ArchiveReader<R> {
    /// Decrypts with `identities`, checks the format line and reads the header: a wrong
    /// identity, another format or a newer schema is refused here, before any row is read.
    pub(crate) fn open(
        archive: R,
        identities: &[age::x25519::Identity],
        auth: Auth<'_>,
    ) -> Result<ArchiveReader<R>, BackupError> {
        let decryptor = age::Decryptor::new(archive).map_err(decrypt_error)?;
        let stream = decryptor
            .decrypt(identities.iter().map(|i| i as &dyn age::Identity))
            .map_err(decrypt_error)?;
        let z = zstd::stream::read::Decoder::new(stream).map_err(corrupt)?;
        let mut plain = BufReader::with_capacity(1 << 16, z);
        let mut magic = vec![0u8; MAGIC.len()];
        plain.read_exact(&mut magic).map_err(corrupt)?;
        let (authenticated, format) = if magic == MAGIC {
            (true, FORMAT)
        } else if magic == MAGIC_V1 {
            (false, FORMAT_V1)
        } else {
            return Err(BackupError::NotABackup(format!(
                "the decrypted stream does not start with {FORMAT}"
            )));
        };
        let mut mac = match auth {
            Auth::Key(_, false) if !authenticated => {
                return Err(BackupError::Unauthenticated(
                    "it is a phivault-backup/v1 archive, written before archives carried a \
                     MAC: nothing shows which installation wrote it; restore it only if you \
                     know where it came from, with --allow-unauthenticated"
                        .to_owned(),
                ));
            }
            Auth::Key(key, _) if authenticated => Some(key.start()),
            _ => None,
        };
        if let Some(mac) = &mut mac {
            mac.update(MAGIC);
        }
        let (tag, payload) = read_record(&mut plain, mac.as_mut())?;
        if tag != HEADER {
            return Err(BackupError::Corrupt("the header is missing".to_owned()));
        }
        let header: Header = serde_json::from_slice(&payload)
            .map_err(|e| BackupError::Corrupt(format!("the header does not parse: {e}")))?;
        if header.format != format {
            return Err(BackupError::NotABackup(format!(
                "format {} in a {format} stream (this phivault reads {FORMAT})",
                header.format
            )));
        }
        if header.schema_version > schema_version() {
            return Err(BackupError::NewerSchema {
                archive: header.schema_version,
                supported: schema_version(),
            });
        }
        for t in &header.tables {
            let table = Table::named(&t.name).ok_or_else(|| {
                BackupError::Corrupt(format!("unknown table {} in the header", t.name))
            })?;
            for [name, kind] in &t.columns {
                let known = table.column(name).ok_or_else(|| {
                    BackupError::Corrupt(format!("unknown column {}.{name}", t.name))
                })?;
                if ColumnKind::from_name(kind) != Some(known.kind) {
                    return Err(BackupError::Corrupt(format!(
                        "column {}.{name} has type {kind}, not {}",
                        t.name,
                        known.kind.name()
                    )));
                }
            }
        }
        Ok(ArchiveReader {
            plain,
            header,
            mac,
            authenticated,
            next_table: 0,
            pending: None,
        })
    }

    pub(crate) fn header(&self) -> &Header {
        &self.header
    }

    /// Whether the archive carries a MAC (v2) that [`ArchiveReader::finish`] checks.
    pub(crate) fn authenticated(&self) -> bool {
        self.authenticated
    }

    /// The next table, or `None` once the manifest is reached.
    pub(crate) fn next_table(&mut self) -> Result<Option<ArchivedTable>, BackupError> {
        let (tag, payload) = match self.pending.take() {
            Some(p) => p,
            None => read_record(&mut self.plain, self.mac.as_mut())?,
        };
        match tag {
            MANIFEST => {
                if self.next_table != self.header.tables.len() {
                    return Err(BackupError::Corrupt(
                        "the manifest comes before the last table".to_owned(),
                    ));
                }
                self.pending = Some((tag, payload));
                Ok(None)
            }
            TABLE => {
                let expected = self.header.tables.get(self.next_table).ok_or_else(|| {
                    BackupError::Corrupt("more tables than the header lists".to_owned())
                })?;
                if payload != expected.name.as_bytes() {
                    return Err(BackupError::Corrupt(format!(
                        "table {} is not where the header puts it",
                        String::from_utf8_lossy(&payload)
                    )));
                }
                self.next_table += 1;
                let table = Table::named(&expected.name)
                    .ok_or_else(|| BackupError::Corrupt("unknown table".to_owned()))?;
                let columns = expected
                    .columns
                    .iter()
                    .map(|[name, _]| {
                        table
                            .column(name)
                            .ok_or_else(|| BackupError::Corrupt("unknown column".to_owned()))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Some(ArchivedTable {
                    table,
                    columns,
                    rows: expected.rows,
                }))
            }
            other => Err(BackupError::Corrupt(format!(
                "a record of kind {} where a table should start",
                char::from(other)
            ))),
        }
    }

    /// The next row of `table`, or `None` at its end.
    pub(crate) fn next_row(
        &mut self,
        table: &ArchivedTable,
    ) -> Result<Option<ArchivedRow>, BackupError> {
        let (tag, payload) = read_record(&mut self.plain, self.mac.as_mut())?;
        match tag {
            ROW => {
                let malformed =
                    || BackupError::Corrupt(format!("a row of {} is malformed", table.table.name));
                let archived = decode_row(&payload).ok_or_else(malformed)?;
                if archived.len() != table.columns.len() {
                    return Err(malformed());
                }
                let mut values = vec![Value::Null; table.table.columns.len()];
                for (value, column) in archived.iter().zip(&table.columns) {
                    let fits = matches!(
                        (value, column.kind),
                        (Value::Null, _)
                            | (Value::Int(_), ColumnKind::Int)
                            | (Value::Text(_), ColumnKind::Text)
                            | (Value::Bytes(_), ColumnKind::Bytes)
                    );
                    let at = table
                        .table
                        .columns
                        .iter()
                        .position(|c| c.name == column.name);
                    match (fits, at) {
                        (true, Some(i)) => values[i] = value.clone(),
                        _ => return Err(malformed()),
                    }
                }
                Ok(Some(ArchivedRow {
                    values,
                    archived,
                    encoded: payload,
                }))
            }
            TABLE_END => {
                self.pending = Some((tag, payload));
                Ok(None)
            }
            other => Err(BackupError::Corrupt(format!(
                "a record of kind {} inside table {}",
                char::from(other),
                table.table.name
            ))),
        }
    }

    /// Checks the end record of `table` against what its rows gave.
    pub(crate) fn end_table(
        &mut self,
        table: &ArchivedTable,
        computed: &TableSummary,
    ) -> Result<(), BackupError> {
        let Some((TABLE_END, payload)) = self.pending.take() else {
            return Err(BackupError::Corrupt(format!(
                "table {} has no end",
                table.table.name
            )));
        };
        let recorded: TableSummary = serde_json::from_slice(&payload)
            .map_err(|e| BackupError::Corrupt(format!("a table end does not parse: {e}")))?;
        if &recorded != computed || computed.rows != table.rows {
            return Err(BackupError::Corrupt(format!(
                "table {}: {} rows with SHA-256 {} recorded, {} rows with SHA-256 {} read \
                 ({} announced)",
                table.table.name,
                recorded.rows,
                recorded.sha256,
                computed.rows,
                computed.sha256,
                table.rows
            )));
        }
        Ok(())
    }

    /// Reads the manifest, then (v2) the MAC and checks it, and checks that nothing follows
    /// (which also makes age check the end of the stream).
    pub(crate) fn finish(mut self) -> Result<Manifest, BackupError> {
        let Some((MANIFEST, payload)) = self.pending.take() else {
            return Err(BackupError::Corrupt("the manifest is missing".to_owned()));
        };
        let manifest: Manifest = serde_json::from_slice(&payload)
            .map_err(|e| BackupError::Corrupt(format!("the manifest does not parse: {e}")))?;
        if manifest.header != self.header {
            return Err(BackupError::Corrupt(
                "the manifest's header differs from the archive's".to_owned(),
            ));
        }
        if self.authenticated {
            let (tag, payload) = read_record(&mut self.plain, None)?;
            if tag != MAC || payload.len() != ARCHIVE_MAC_LEN {
                return Err(BackupError::Corrupt(
                    "the archive's MAC is missing after the manifest".to_owned(),
                ));
            }
            if let Some(mac) = self.mac.take()
                && !mac.verify(&payload)
            {
                return Err(BackupError::Unauthenticated(
                    "its MAC does not verify under this master key: it was not written by \
                     this installation, or was altered, or was taken under an earlier master \
                     key (restore it with that key, --master-key-file OLD)"
                        .to_owned(),
                ));
            }
        }
        let mut rest = Vec::new();
        self.plain.read_to_end(&mut rest).map_err(corrupt)?;
        let mut tail = Vec::new();
        self.plain
            .into_inner()
            .finish()
            .read_to_end(&mut tail)
            .map_err(corrupt)?;
        if !rest.is_empty() || !tail.is_empty() {
            return Err(BackupError::Corrupt("data follows the manifest".to_owned()));
        }
        Ok(manifest)
    }
}

/// Reads one record; `mac`, when given, takes its tag, length and payload.
fn read_record(
    r: &mut impl Read,
    mac: Option<&mut ArchiveMac>,
) -> Result<(u8, Vec<u8>), BackupError> {
    let mut head = [0u8; 5];
    r.read_exact(&mut head).map_err(corrupt)?;
    let [tag, l0, l1, l2, l3] = head;
    let len = usize::try_from(u32::from_be_bytes([l0, l1, l2, l3])).unwrap_or(usize::MAX);
    if len > MAX_RECORD {
        return Err(BackupError::Corrupt(format!("a record claims {len} bytes")));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).map_err(corrupt)?;
    if let Some(mac) = mac {
        mac.update(&head);
        mac.update(&payload);
    }
    Ok((tag, payload))
}
