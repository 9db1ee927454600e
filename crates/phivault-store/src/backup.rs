//! Row-level access for backups and restores: the tables as a backend-neutral list, a
//! consistent read snapshot to dump them from, and a restore transaction to load them into.
//!
//! A backup is logical (rows, not database files), so an archive taken from SQLite restores
//! into PostgreSQL and back. Every table of the schema is listed in [`TABLES`] with its
//! columns, but the ephemeral login limits ([`EPHEMERAL_TABLES`]), which are not backed up (a
//! test compares the lists with both backends' schemas, so a migration that adds a table or a
//! column without listing it here fails). Rows travel as [`Value`]s in the encoding of
//! [`encode_row`]; [`TableDigest`] hashes a table's rows in that encoding in key order, so a
//! restored table can be read back and compared with the archive byte for byte.
//!
//! Nothing here decrypts: rows are copied as stored (sealed bodies, wrapped keys, blind
//! tokens). The only key operation is [`kek_opens`], which checks that a backup's
//! key-encryption keys open under the master key a restore target uses.

use std::path::PathBuf;

use futures::TryStreamExt;
use phivault_crypto::{MasterKey, Sha256};
use sqlx::{AnyConnection, AnyPool, Row};

use crate::{Backend, Store, StoreError, StoreOptions};

mod revocations;
mod tables;
pub use revocations::{Revocations, RevocationsReplayed};
pub use tables::{EPHEMERAL_TABLES, TABLES};

/// The type of a column, as both backends store it (BIGINT, TEXT, BLOB/BYTEA).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnKind {
    /// A 64-bit integer.
    Int,
    /// UTF-8 text.
    Text,
    /// Bytes.
    Bytes,
}

impl ColumnKind {
    /// `int`, `text` or `bytes` (the archive's names).
    pub fn name(self) -> &'static str {
        match self {
            ColumnKind::Int => "int",
            ColumnKind::Text => "text",
            ColumnKind::Bytes => "bytes",
        }
    }

    /// The kind a name from [`ColumnKind::name`] stands for.
    pub fn from_name(name: &str) -> Option<ColumnKind> {
        match name {
            "int" => Some(ColumnKind::Int),
            "text" => Some(ColumnKind::Text),
            "bytes" => Some(ColumnKind::Bytes),
            _ => None,
        }
    }
}

/// A column of a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column {
    /// Name.
    pub name: &'static str,
    /// Type.
    pub kind: ColumnKind,
}

/// A table of the schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Table {
    /// Name.
    pub name: &'static str,
    /// Every column, in a fixed order.
    pub columns: &'static [Column],
    /// The columns rows are ordered by (the primary key; every column for a table without
    /// one), so a dump and a read-back list rows in the same order on either backend.
    pub order: &'static [&'static str],
}

impl Table {
    /// The table named `name`.
    pub fn named(name: &str) -> Option<&'static Table> {
        TABLES.iter().find(|t| t.name == name)
    }

    /// The column named `name`.
    pub fn column(&self, name: &str) -> Option<&'static Column> {
        self.columns.iter().find(|c| c.name == name)
    }
}

/// The schema version of this build: the number of its newest migration. An archive from a
/// newer schema is refused by restore.
pub fn schema_version() -> i64 {
    crate::backend::schema_version()
}

/// One stored value. `Debug` shows the kind and the size, never the content.
#[derive(Clone, PartialEq, Eq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// An integer.
    Int(i64),
    /// Text.
    Text(String),
    /// Bytes.
    Bytes(Vec<u8>),
}

impl std::fmt::Debug for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Null => f.write_str("Null"),
            Value::Int(_) => f.write_str("Int(..)"),
            Value::Text(s) => write!(f, "Text({} bytes)", s.len()),
            Value::Bytes(b) => write!(f, "Bytes({} bytes)", b.len()),
        }
    }
}

const TAG_NULL: u8 = 0;
const TAG_INT: u8 = 1;
const TAG_TEXT: u8 = 2;
const TAG_BYTES: u8 = 3;

/// Appends the encoding of a row to `out`: the number of values (u16, big-endian), then per
/// value a tag (0 null, 1 integer, 2 text, 3 bytes) and the integer as 8 bytes big-endian, or
/// the length (u32 big-endian) and the bytes.
pub fn encode_row(values: &[Value], out: &mut Vec<u8>) {
    out.extend_from_slice(
        &u16::try_from(values.len())
            .unwrap_or(u16::MAX)
            .to_be_bytes(),
    );
    for v in values {
        match v {
            Value::Null => out.push(TAG_NULL),
            Value::Int(i) => {
                out.push(TAG_INT);
                out.extend_from_slice(&i.to_be_bytes());
            }
            Value::Text(s) => {
                out.push(TAG_TEXT);
                out.extend_from_slice(&u32::try_from(s.len()).unwrap_or(u32::MAX).to_be_bytes());
                out.extend_from_slice(s.as_bytes());
            }
            Value::Bytes(b) => {
                out.push(TAG_BYTES);
                out.extend_from_slice(&u32::try_from(b.len()).unwrap_or(u32::MAX).to_be_bytes());
                out.extend_from_slice(b);
            }
        }
    }
}

/// Decodes a row written by [`encode_row`]; `None` when the bytes are not one exactly.
pub fn decode_row(bytes: &[u8]) -> Option<Vec<Value>> {
    fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if bytes.len() < n {
            return None;
        }
        let (head, rest) = bytes.split_at(n);
        *bytes = rest;
        Some(head)
    }
    fn len(bytes: &mut &[u8]) -> Option<usize> {
        let raw: [u8; 4] = take(bytes, 4)?.try_into().ok()?;
        usize::try_from(u32::from_be_bytes(raw)).ok()
    }
    let mut rest = bytes;
    let count: [u8; 2] = take(&mut rest, 2)?.try_into().ok()?;
    let count = usize::from(u16::from_be_bytes(count));
    let mut values = Vec::with_capacity(count);
    for _ in 0..count {
        let tag = *take(&mut rest, 1)?.first()?;
        values.push(match tag {
            TAG_NULL => Value::Null,
            TAG_INT => Value::Int(i64::from_be_bytes(take(&mut rest, 8)?.try_into().ok()?)),
            TAG_TEXT => {
                let n = len(&mut rest)?;
                Value::Text(String::from_utf8(take(&mut rest, n)?.to_vec()).ok()?)
            }
            TAG_BYTES => {
                let n = len(&mut rest)?;
                Value::Bytes(take(&mut rest, n)?.to_vec())
            }
            _ => return None,
        });
    }
    rest.is_empty().then_some(values)
}

/// The SHA-256 of a table's rows, each as its [`encode_row`] bytes preceded by their length
/// (u32 big-endian), in the table's order, and their count.
#[derive(Debug, Default)]
pub struct TableDigest {
    hash: Sha256,
    rows: u64,
}

impl TableDigest {
    /// An empty table's digest, to add rows to.
    pub fn new() -> Self {
        TableDigest::default()
    }

    /// Adds one encoded row.
    pub fn add(&mut self, encoded: &[u8]) {
        self.hash.update(
            &u32::try_from(encoded.len())
                .unwrap_or(u32::MAX)
                .to_be_bytes(),
        );
        self.hash.update(encoded);
        self.rows += 1;
    }

    /// Rows added so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// The count and the hash.
    pub fn finish(self) -> (u64, [u8; 32]) {
        (self.rows, self.hash.finish())
    }
}

/// Whether the key-encryption key `kek_id` (a `key_encryption_keys` row) opens under
/// `master`: a restore refuses an archive whose keys do not, before it changes anything.
pub fn kek_opens(master: &MasterKey, kek_id: &str, wrapped: &[u8]) -> bool {
    master
        .key()
        .unwrap_key(&crate::keys::kek_aad(kek_id), wrapped)
        .is_ok()
}

fn select_sql(backend: Backend, table: &Table) -> String {
    let columns: Vec<&str> = table.columns.iter().map(|c| c.name).collect();
    let order: Vec<String> = table
        .order
        .iter()
        .map(|name| {
            let is_text = table
                .column(name)
                .is_some_and(|c| c.kind == ColumnKind::Text);
            // Byte order on both backends (PostgreSQL would otherwise sort text by the
            // database's collation, and a read-back would list rows in another order).
            if is_text && backend == Backend::Postgres {
                format!("{name} COLLATE \"C\"")
            } else {
                (*name).to_owned()
            }
        })
        .collect();
    format!(
        "SELECT {} FROM {} ORDER BY {}",
        columns.join(", "),
        table.name,
        order.join(", ")
    )
}

fn values_of(table: &Table, row: &sqlx::any::AnyRow) -> Result<Vec<Value>, StoreError> {
    let mut values = Vec::with_capacity(table.columns.len());
    for (i, c) in table.columns.iter().enumerate() {
        values.push(match c.kind {
            ColumnKind::Int => row
                .try_get::<Option<i64>, _>(i)?
                .map_or(Value::Null, Value::Int),
            ColumnKind::Text => row
                .try_get::<Option<String>, _>(i)?
                .map_or(Value::Null, Value::Text),
            ColumnKind::Bytes => row
                .try_get::<Option<Vec<u8>>, _>(i)?
                .map_or(Value::Null, Value::Bytes),
        });
    }
    Ok(values)
}

/// Calls `each` with every row of `table` (all of [`Table::columns`], in [`Table::order`]).
async fn for_each_row<E: From<StoreError>>(
    conn: &mut AnyConnection,
    backend: Backend,
    table: &Table,
    mut each: impl FnMut(Vec<Value>) -> Result<(), E>,
) -> Result<(), E> {
    let sql = select_sql(backend, table);
    let mut rows = sqlx::query(&sql).fetch(&mut *conn);
    while let Some(row) = rows.try_next().await.map_err(StoreError::from)? {
        each(values_of(table, &row)?)?;
    }
    Ok(())
}

async fn count_rows(conn: &mut AnyConnection, table: &Table) -> Result<u64, StoreError> {
    let n: i64 = sqlx::query(&format!("SELECT COUNT(*) AS n FROM {}", table.name))
        .fetch_one(&mut *conn)
        .await?
        .try_get("n")?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// A consistent, read-only view of the whole database, taken while others keep writing:
/// one transaction (PostgreSQL: `REPEATABLE READ, READ ONLY`; SQLite in WAL mode: a read
/// transaction, whose snapshot is fixed by its first read).
pub struct Snapshot {
    tx: sqlx::Transaction<'static, sqlx::Any>,
    backend: Backend,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens a [`Snapshot`] of the database.
    pub async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let backend = self.inner.backend;
        let mut tx = self.inner.pool.begin().await?;
        if backend == Backend::Postgres {
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                .execute(&mut *tx)
                .await?;
        }
        Ok(Snapshot { tx, backend })
    }
}

impl Snapshot {
    /// The number of rows of `table`.
    pub async fn count(&mut self, table: &Table) -> Result<u64, StoreError> {
        count_rows(&mut self.tx, table).await
    }

    /// Calls `each` with every row of `table` (all of [`Table::columns`], in
    /// [`Table::order`]).
    pub async fn for_each_row<E: From<StoreError>>(
        &mut self,
        table: &Table,
        each: impl FnMut(Vec<Value>) -> Result<(), E>,
    ) -> Result<(), E> {
        for_each_row(&mut self.tx, self.backend, table, each).await
    }

    /// Ends the snapshot.
    pub async fn finish(self) -> Result<(), StoreError> {
        self.tx.rollback().await?;
        Ok(())
    }
}

/// The database a restore writes into: connected and migrated, but with no keys loaded or
/// created (a [`Store`] would create a key-encryption key in an empty database).
pub struct RestoreTarget {
    pool: AnyPool,
    backend: Backend,
    /// The SQLite file, when this connection created it.
    created: Option<PathBuf>,
}

impl std::fmt::Debug for RestoreTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestoreTarget")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

/// The path of the file a `sqlite:` URL names.
fn sqlite_file(url: &str) -> Option<PathBuf> {
    let path = url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:");
    let file = path.split('?').next().unwrap_or(path);
    (!file.is_empty()).then(|| PathBuf::from(file))
}

impl RestoreTarget {
    /// Connects to `database_url` (a SQLite file is created when missing) and applies the
    /// migrations.
    pub async fn connect(database_url: &str) -> Result<RestoreTarget, StoreError> {
        let backend = Backend::from_url(database_url)?;
        let created = match backend {
            Backend::Sqlite => sqlite_file(database_url).filter(|f| !f.exists()),
            Backend::Postgres => None,
        };
        let mut opts = StoreOptions::new(database_url);
        opts.max_connections = 2;
        let pool = backend.connect(&opts).await?;
        backend.migrate(&pool).await?;
        Ok(RestoreTarget {
            pool,
            backend,
            created,
        })
    }

    /// The backend.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Rows per table, for the tables holding data (not only fresh keys): resources,
    /// accounts, the audit trail and the ledgers. An empty target has none.
    pub async fn data_rows(&self) -> Result<Vec<(&'static str, u64)>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let mut out = Vec::new();
        for table in TABLES {
            if matches!(
                table.name,
                "key_encryption_keys" | "data_keys" | "audit_keys" | "audit_chain"
            ) {
                continue;
            }
            let n = count_rows(&mut conn, table).await?;
            if n > 0 {
                out.push((table.name, n));
            }
        }
        Ok(out)
    }

    /// Starts the restore's one transaction: nothing it does is seen before
    /// [`RestoreTx::commit`], and all of it is undone when it is dropped uncommitted.
    pub async fn begin(&self) -> Result<RestoreTx, StoreError> {
        let tx = match self.backend {
            Backend::Sqlite => {
                let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
                // A larger page cache for one big transaction (64 MiB; this connection is
                // closed with the target).
                sqlx::query("PRAGMA cache_size = -65536")
                    .execute(&mut *tx)
                    .await?;
                tx
            }
            Backend::Postgres => self.pool.begin().await?,
        };
        Ok(RestoreTx {
            tx,
            backend: self.backend,
            sql: Vec::new(),
        })
    }

    /// Refreshes the planner statistics of the restored tables (see
    /// [`Store::refresh_statistics`](crate::Store::refresh_statistics)); call after
    /// [`RestoreTx::commit`].
    pub async fn refresh_statistics(&self) -> Result<(), StoreError> {
        crate::statistics::refresh(&self.pool, self.backend).await
    }

    /// Closes the connections; when this connection created the SQLite file and `remove` is
    /// set (the restore failed), removes the file again, so a refused restore leaves nothing.
    pub async fn close(self, remove: bool) {
        self.pool.close().await;
        if remove && let Some(file) = self.created {
            for suffix in ["", "-wal", "-shm", "-journal"] {
                let mut name = file.clone().into_os_string();
                name.push(suffix);
                let _ = std::fs::remove_file(PathBuf::from(name));
            }
        }
    }
}

/// The restore's transaction (see [`RestoreTarget::begin`]).
pub struct RestoreTx {
    tx: sqlx::Transaction<'static, sqlx::Any>,
    backend: Backend,
    /// Cached INSERT statements by (table, column list, rows).
    sql: Vec<(String, String)>,
}

impl std::fmt::Debug for RestoreTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestoreTx")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

/// The largest number of bound values in one INSERT. PostgreSQL allows 65,535. SQLite allows
/// 32,766, but binding `$n` parameters costs time quadratic in their number there (the
/// driver looks each one up by name), so its statements stay small.
const MAX_BOUND_POSTGRES: usize = 30_000;
const MAX_BOUND_SQLITE: usize = 240;
/// The largest number of rows in one INSERT.
const MAX_ROWS_PER_INSERT: usize = 500;

impl RestoreTx {
    /// Every row of `table` as the target holds it now (for the small ledger tables).
    pub async fn rows(&mut self, table: &Table) -> Result<Vec<Vec<Value>>, StoreError> {
        let mut out = Vec::new();
        for_each_row(&mut self.tx, self.backend, table, |row| {
            out.push(row);
            Ok::<(), StoreError>(())
        })
        .await?;
        Ok(out)
    }

    /// Calls `each` with every row of `table`, as [`Snapshot::for_each_row`] does.
    pub async fn for_each_row<E: From<StoreError>>(
        &mut self,
        table: &Table,
        each: impl FnMut(Vec<Value>) -> Result<(), E>,
    ) -> Result<(), E> {
        for_each_row(&mut self.tx, self.backend, table, each).await
    }

    /// Deletes every row of every table (children first).
    pub async fn clear(&mut self) -> Result<(), StoreError> {
        for table in TABLES.iter().rev() {
            sqlx::query(&format!("DELETE FROM {}", table.name))
                .execute(&mut *self.tx)
                .await?;
        }
        Ok(())
    }

    /// The most rows of `columns` columns one [`RestoreTx::insert`] call should carry.
    pub fn batch_rows(&self, columns: usize) -> usize {
        let bound = match self.backend {
            Backend::Sqlite => MAX_BOUND_SQLITE,
            Backend::Postgres => MAX_BOUND_POSTGRES,
        };
        (bound / columns.max(1)).clamp(1, MAX_ROWS_PER_INSERT)
    }

    /// Inserts `rows`, each holding the values of `columns` (of `table`) in that order.
    pub async fn insert(
        &mut self,
        table: &Table,
        columns: &[&'static Column],
        rows: &[Vec<Value>],
    ) -> Result<(), StoreError> {
        self.insert_with(table, columns, rows, "").await
    }

    /// [`RestoreTx::insert`] with `suffix` (e.g. `ON CONFLICT DO NOTHING`) after the VALUES.
    async fn insert_with(
        &mut self,
        table: &Table,
        columns: &[&'static Column],
        rows: &[Vec<Value>],
        suffix: &str,
    ) -> Result<(), StoreError> {
        for chunk in rows.chunks(self.batch_rows(columns.len())) {
            let key = format!("{}|{}|{suffix}", table.name, chunk.len());
            let sql = match self.sql.iter().find(|(k, _)| *k == key) {
                Some((_, sql)) => sql.clone(),
                None => {
                    let names: Vec<&str> = columns.iter().map(|c| c.name).collect();
                    let mut sql =
                        format!("INSERT INTO {} ({}) VALUES ", table.name, names.join(", "));
                    let mut n = 0;
                    for r in 0..chunk.len() {
                        if r > 0 {
                            sql.push_str(", ");
                        }
                        sql.push('(');
                        for c in 0..columns.len() {
                            if c > 0 {
                                sql.push_str(", ");
                            }
                            n += 1;
                            sql.push_str(&format!("${n}"));
                        }
                        sql.push(')');
                    }
                    if !suffix.is_empty() {
                        sql.push(' ');
                        sql.push_str(suffix);
                    }
                    self.sql.push((key, sql.clone()));
                    sql
                }
            };
            let mut query = sqlx::query(&sql);
            for row in chunk {
                if row.len() != columns.len() {
                    return Err(StoreError::Config(format!(
                        "a row of {} has {} values for {} columns",
                        table.name,
                        row.len(),
                        columns.len()
                    )));
                }
                for (value, column) in row.iter().zip(columns) {
                    query = match (value, column.kind) {
                        (Value::Null, ColumnKind::Int) => query.bind(None::<i64>),
                        (Value::Null, ColumnKind::Text) => query.bind(None::<String>),
                        (Value::Null, ColumnKind::Bytes) => query.bind(None::<Vec<u8>>),
                        (Value::Int(i), ColumnKind::Int) => query.bind(*i),
                        (Value::Text(s), ColumnKind::Text) => query.bind(s.clone()),
                        (Value::Bytes(b), ColumnKind::Bytes) => query.bind(b.clone()),
                        _ => {
                            return Err(StoreError::Config(format!(
                                "{}.{} holds a value of another type",
                                table.name, column.name
                            )));
                        }
                    };
                }
            }
            query.execute(&mut *self.tx).await?;
        }
        Ok(())
    }

    /// Applies erasure ledger rows (`erasures` rows, as [`RestoreTx::rows`] returns them)
    /// of another copy of the installation (the one being replaced): each one not yet
    /// recorded is recorded (with its index sweep still to do), then every data key whose id
    /// or patient owner token is in the ledger, the restored archive's own included, is
    /// deleted. Returns the number of data keys deleted.
    pub async fn replay_erasures(&mut self, other: &[Vec<Value>]) -> Result<u64, StoreError> {
        let table = Table::named("erasures").ok_or_else(|| missing("erasures"))?;
        let columns: Vec<&'static Column> = table.columns.iter().collect();
        let swept = position(table, "index_swept_at")?;
        let rows: Vec<Vec<Value>> = other
            .iter()
            .map(|row| {
                let mut row = row.clone();
                if let Some(v) = row.get_mut(swept) {
                    *v = Value::Null;
                }
                row
            })
            .collect();
        self.insert_with(table, &columns, &rows, "ON CONFLICT DO NOTHING")
            .await?;
        let deleted = sqlx::query(
            "DELETE FROM data_keys WHERE key_id IN (SELECT key_id FROM erasures) \
             OR (kind = 'patient' AND EXISTS (SELECT 1 FROM erasures e \
                 WHERE e.tenant = data_keys.tenant AND e.owner = data_keys.owner))",
        )
        .execute(&mut *self.tx)
        .await?
        .rows_affected();
        if deleted > 0 {
            // The restored rows no longer are the archive's: see `crate::generations`.
            crate::generations::bump_all(&mut self.tx).await?;
            // Their compartments' search tokens are swept again (Store::sweep_erasures).
            sqlx::query(
                "UPDATE erasures SET index_swept_at = NULL WHERE key_id IN \
                 (SELECT DISTINCT key_id FROM current_resources)",
            )
            .execute(&mut *self.tx)
            .await?;
        }
        Ok(deleted)
    }

    /// Applies retention ledger rows of the installation being replaced: each resource
    /// disposed of there whose last write is not newer here is disposed of here too (every
    /// version, its search tokens and its pointer) and the ledger row is recorded. Returns
    /// the number of resources disposed of.
    pub async fn replay_retention(&mut self, other: &[Vec<Value>]) -> Result<u64, StoreError> {
        let table = Table::named("retention_ledger").ok_or_else(|| missing("retention_ledger"))?;
        let (t, r, i, l) = (
            position(table, "tenant")?,
            position(table, "rtype")?,
            position(table, "id")?,
            position(table, "last_recorded_at")?,
        );
        let known = self.rows(table).await?;
        let mut disposed = 0;
        for row in other {
            if known.contains(row) {
                continue;
            }
            let (
                Some(Value::Text(tenant)),
                Some(Value::Text(rtype)),
                Some(Value::Text(id)),
                Some(Value::Int(last)),
            ) = (row.get(t), row.get(r), row.get(i), row.get(l))
            else {
                return Err(StoreError::Config(
                    "a retention ledger row is malformed".to_owned(),
                ));
            };
            let gone = sqlx::query(
                "DELETE FROM current_resources \
                 WHERE tenant = $1 AND rtype = $2 AND id = $3 AND recorded_at <= $4",
            )
            .bind(tenant)
            .bind(rtype)
            .bind(id)
            .bind(*last)
            .execute(&mut *self.tx)
            .await?
            .rows_affected();
            if gone > 0 {
                for sql in [
                    "DELETE FROM resource_versions WHERE tenant = $1 AND rtype = $2 AND id = $3",
                    "DELETE FROM search_index WHERE tenant = $1 AND rtype = $2 AND id = $3",
                ] {
                    sqlx::query(sql)
                        .bind(tenant)
                        .bind(rtype)
                        .bind(id)
                        .execute(&mut *self.tx)
                        .await?;
                }
                disposed += 1;
            }
            let columns: Vec<&'static Column> = table.columns.iter().collect();
            self.insert(table, &columns, std::slice::from_ref(row))
                .await?;
        }
        if disposed > 0 {
            crate::generations::bump_all(&mut self.tx).await?;
        }
        Ok(disposed)
    }

    /// Commits the restore.
    pub async fn commit(self) -> Result<(), StoreError> {
        self.tx.commit().await?;
        Ok(())
    }
}

fn missing(table: &str) -> StoreError {
    StoreError::Config(format!("the table list lacks {table}"))
}

fn position(table: &Table, column: &str) -> Result<usize, StoreError> {
    table
        .columns
        .iter()
        .position(|c| c.name == column)
        .ok_or_else(|| StoreError::Config(format!("{} has no column {column}", table.name)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip_through_their_encoding() {
        let row = vec![
            Value::Null,
            Value::Int(-7),
            Value::Text("Ünïcode".to_owned()),
            Value::Bytes(vec![0, 255, 1]),
            Value::Bytes(Vec::new()),
        ];
        let mut out = Vec::new();
        encode_row(&row, &mut out);
        assert_eq!(decode_row(&out).unwrap(), row);
        // Truncated, extended or with an unknown tag: refused.
        assert!(decode_row(&out[..out.len() - 1]).is_none());
        let mut longer = out.clone();
        longer.push(0);
        assert!(decode_row(&longer).is_none());
        let mut bad = out.clone();
        bad[2] = 9;
        assert!(decode_row(&bad).is_none());
    }

    #[test]
    fn a_digest_depends_on_every_row_and_their_order() {
        let digest = |rows: &[&[u8]]| {
            let mut d = TableDigest::new();
            for r in rows {
                d.add(r);
            }
            d.finish()
        };
        let a = digest(&[b"one", b"two"]);
        assert_eq!(a.0, 2);
        assert_ne!(a, digest(&[b"two", b"one"]));
        assert_ne!(a, digest(&[b"one", b"twO"]));
        // The length prefix keeps row boundaries apart.
        assert_ne!(digest(&[b"ab", b"c"]).1, digest(&[b"a", b"bc"]).1);
    }

    #[test]
    fn value_debug_shows_no_content() {
        let shown = format!("{:?}", Value::Text("Jane Marker".to_owned()));
        assert!(!shown.contains("Marker"), "{shown}");
    }
}
