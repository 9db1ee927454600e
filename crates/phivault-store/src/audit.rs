//! The audit trail at rest: entries, signed checkpoints and the checkpoint-signing key, for
//! the audit log (phivault-audit), which computes every hash and signature; this module only
//! keeps bytes and hands out the place of the next entry.
//!
//! - **Entries** (`audit_entries`): the canonical bytes of each entry (ids only, never PHI
//!   values), its hash, the previous entry's hash, and the time, actor and patient copied out
//!   for the access-log indexes. Sequence numbers start at 1 and are dense: an append reads
//!   the last row (seq, hash) and inserts `seq + 1`. On SQLite that happens under the store's
//!   write lock; on PostgreSQL under a transaction-scoped advisory lock (held until the
//!   appending transaction ends, so appenders queue rather than race; append last in a
//!   longer transaction), and should an appender that skips the lock take the same seq, the
//!   primary key on `seq` makes the insert fail with a unique violation, after which the
//!   append is retried (up to [`APPEND_ATTEMPTS`] times) from a savepoint, so a caller's
//!   transaction survives the retry.
//! - **Patients of an entry** (`audit_entry_patients`, schema v7): one row per patient an
//!   entry concerns (its patient and the other patients its body lists), written with the
//!   entry. Queries by patient ([`AuditQuery::patient`]) go through these rows, and
//!   [`AuditRow::patients`] hands them to readers, which compare them with the body.
//! - **Checkpoints** (`audit_checkpoints`): one row per checkpointed size, never updated. Since
//!   schema v4 a row may carry the Merkle frontier at that size (`frontier`, NULL on older
//!   rows): it is not signed, so the audit log trusts it only after recomputing the signed
//!   root from it.
//! - **The keyed chain** (since schema v8): each new entry carries `chain_mac`, its tag under
//!   the audit chain key ([`Store::audit_chain_key`], derived from the tenant's index secret:
//!   the master key is needed to compute it), and `audit_chain` records the first seq of the
//!   keyed chain with a tag of its own; entries before it were written unkeyed by an older
//!   version.
//! - **Signing keys** (`audit_keys`): the Ed25519 public key in the clear and the PKCS#8
//!   private key sealed with the tenant's directory data key, bound (AEAD associated data) to
//!   tenant, key id and data key id. The first key created is the active one.

use std::fmt;

use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};
use zeroize::Zeroizing;

use crate::{Backend, Store, StoreError};

/// How many times an append is tried on PostgreSQL when another appender took the same seq.
pub const APPEND_ATTEMPTS: usize = 8;

/// Audit rows written by one INSERT (11 values each: well under both drivers' limits).
const AUDIT_ROWS_PER_INSERT: usize = 100;

/// `audit_entry_patients` rows written by one INSERT (2 values each; SQLite binds many values
/// slowly, so a few hundred per statement).
const PATIENT_ROWS_PER_INSERT: usize = 120;

/// The PostgreSQL advisory lock key serializing appends (`"phivaudt"` as a big-endian i64).
pub(crate) const APPEND_LOCK_KEY: i64 = 0x7068_6976_6175_6474;

/// What the audit log hands in for the next entry, once it knows the entry's seq and the
/// previous entry's hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAuditRow {
    /// The canonical bytes of the entry.
    pub body: Vec<u8>,
    /// The entry's hash (chained over `prev_hash` and `body`).
    pub entry_hash: Vec<u8>,
    /// The previous entry's hash as the audit log chained it (what it was handed, or the
    /// genesis value for the first entry).
    pub prev_hash: Vec<u8>,
    /// Unix milliseconds.
    pub time: i64,
    /// Actor id.
    pub actor: String,
    /// Patient id, when the access concerned a patient.
    pub patient: Option<String>,
    /// Every patient the entry concerns (`patient` included), one `audit_entry_patients` row
    /// each.
    pub patients: Vec<String>,
    /// FHIR AuditEvent action code (`C`, `R`, `U`, `D`, `E`).
    pub action: String,
    /// `allowed`, `denied` or `error`.
    pub outcome: String,
    /// The entry's tag under the audit chain key (`None`: an unkeyed entry).
    pub chain_mac: Option<Vec<u8>>,
    /// The client address as an index key (32 hex digits of the IPv6 or IPv4-mapped
    /// address), `""` when the entry has none.
    pub address: String,
}

/// The end of the trail an append builds on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditTail {
    /// The seq the new entry gets (1 for the first entry).
    pub seq: u64,
    /// The last entry's hash (`None` before the first entry).
    pub prev_hash: Option<Vec<u8>>,
}

/// An entry as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRow {
    /// Sequence number.
    pub seq: u64,
    /// Tenant.
    pub tenant: String,
    /// Canonical bytes.
    pub body: Vec<u8>,
    /// Hash of this entry.
    pub entry_hash: Vec<u8>,
    /// Hash of the previous entry.
    pub prev_hash: Vec<u8>,
    /// Unix milliseconds.
    pub time: i64,
    /// Actor id.
    pub actor: String,
    /// Patient id.
    pub patient: Option<String>,
    /// Action code copied out of the body (`None` on rows written before schema v4 until
    /// they are filled in).
    pub action: Option<String>,
    /// Outcome copied out of the body (as `action`).
    pub outcome: Option<String>,
    /// The entry's tag under the audit chain key (`None` on entries written before schema
    /// v8, the unkeyed chain).
    pub chain_mac: Option<Vec<u8>>,
    /// The entry's `audit_entry_patients` rows, ascending (every patient it concerns, as
    /// copied out of its body).
    pub patients: Vec<String>,
}

/// Where the keyed chain starts, as stored (`audit_chain`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyedFrom {
    /// The first seq of the keyed chain.
    pub seq: u64,
    /// Its tag under the audit chain key.
    pub tag: Vec<u8>,
}

/// Filters of an audit search ([`Store::audit_search`]); every given filter must hold.
/// Matching is on the columns copied out of the bodies: a reader that relies on a match
/// re-checks it against the body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// Entries about this patient id.
    pub patient: Option<String>,
    /// Entries by this actor id.
    pub actor: Option<String>,
    /// Entries at or after this time (unix ms).
    pub since: Option<i64>,
    /// Entries before this time (unix ms, exclusive).
    pub until: Option<i64>,
    /// Action code.
    pub action: Option<String>,
    /// Outcome.
    pub outcome: Option<String>,
    /// Only entries with a seq below this one (paging, newest first).
    pub before_seq: Option<u64>,
    /// Entries whose address key lies in this range (inclusive; see
    /// [`NewAuditRow::address`]): a network.
    pub address_between: Option<(String, String)>,
}

/// A signed checkpoint as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointRow {
    /// Number of entries covered (seq 1..=size).
    pub size: u64,
    /// Merkle root of their hashes.
    pub root: Vec<u8>,
    /// Hash of entry `size`.
    pub last_entry_hash: Vec<u8>,
    /// Unix milliseconds.
    pub time: i64,
    /// Ed25519 signature.
    pub signature: Vec<u8>,
    /// The Merkle frontier at `size` (the roots of the perfect subtrees, largest first, 32
    /// bytes each); `None` on checkpoints made before schema v4. Not covered by the
    /// signature.
    pub frontier: Option<Vec<u8>>,
}

/// The checkpoint-signing key, with its private half unsealed.
pub struct AuditKey {
    /// Key id.
    pub key_id: String,
    /// Raw Ed25519 public key.
    pub public_key: Vec<u8>,
    /// PKCS#8 private key (zeroized on drop).
    pub private_pkcs8: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditKey")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

fn key_aad(tenant: &str, key_id: &str, dek_id: &str) -> Vec<u8> {
    format!("phivault/audit-key|{tenant}|{key_id}|{dek_id}").into_bytes()
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.kind() == sqlx::error::ErrorKind::UniqueViolation)
}

fn to_i64(v: u64) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Config(format!("audit seq {v} out of range")))
}

fn to_u64(v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Config(format!("audit seq {v} out of range")))
}

const ENTRY_COLUMNS: &str =
    "seq, tenant, body, entry_hash, prev_hash, time, actor, patient, action, outcome, chain_mac";

fn entry_from(row: &AnyRow) -> Result<AuditRow, StoreError> {
    Ok(AuditRow {
        seq: to_u64(row.try_get("seq")?)?,
        tenant: row.try_get("tenant")?,
        body: row.try_get("body")?,
        entry_hash: row.try_get("entry_hash")?,
        prev_hash: row.try_get("prev_hash")?,
        time: row.try_get("time")?,
        actor: row.try_get("actor")?,
        patient: row.try_get("patient")?,
        action: row.try_get("action")?,
        outcome: row.try_get("outcome")?,
        chain_mac: row.try_get("chain_mac")?,
        patients: Vec::new(),
    })
}

/// Attaches to `rows` their `audit_entry_patients` rows.
async fn attach_patients(pool: &sqlx::AnyPool, rows: &mut [AuditRow]) -> Result<(), StoreError> {
    /// Seqs per query (one bound value each).
    const SEQS_PER_QUERY: usize = 500;
    let at: std::collections::HashMap<u64, usize> =
        rows.iter().enumerate().map(|(i, r)| (r.seq, i)).collect();
    let seqs: Vec<u64> = rows.iter().map(|r| r.seq).collect();
    for chunk in seqs.chunks(SEQS_PER_QUERY) {
        let marks: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT seq, patient FROM audit_entry_patients WHERE seq IN ({}) \
             ORDER BY seq, patient",
            marks.join(", ")
        );
        let mut q = sqlx::query(&sql);
        for seq in chunk {
            q = q.bind(to_i64(*seq)?);
        }
        for row in q.fetch_all(pool).await? {
            let seq = to_u64(row.try_get("seq")?)?;
            if let Some(i) = at.get(&seq)
                && let Some(r) = rows.get_mut(*i)
            {
                r.patients.push(row.try_get("patient")?);
            }
        }
    }
    Ok(())
}

fn checkpoint_from(row: &AnyRow) -> Result<CheckpointRow, StoreError> {
    Ok(CheckpointRow {
        size: to_u64(row.try_get("size")?)?,
        root: row.try_get("root")?,
        last_entry_hash: row.try_get("last_entry_hash")?,
        time: row.try_get("time")?,
        signature: row.try_get("signature")?,
        frontier: row.try_get("frontier")?,
    })
}

const CHECKPOINT_COLUMNS: &str = "size, root, last_entry_hash, time, signature, frontier";

enum AuditBind {
    Text(String),
    Int(i64),
}

/// The FROM and WHERE clauses of an audit search (entries as `e`) and their values, bound as
/// `$1...` in order. A search by patient is driven by the `audit_entry_patients` index
/// (`(patient, seq)`, read newest first) and joins the entries it names.
fn audit_where(query: &AuditQuery) -> Result<(String, Vec<AuditBind>), StoreError> {
    let mut conds = Vec::new();
    let mut binds = Vec::new();
    if let Some(p) = &query.patient {
        binds.push(AuditBind::Text(p.clone()));
        conds.push(format!("p.patient = ${}", binds.len()));
    }
    let mut text = |column: &str, value: &Option<String>, conds: &mut Vec<String>| {
        if let Some(v) = value {
            binds.push(AuditBind::Text(v.clone()));
            conds.push(format!("e.{column} = ${}", binds.len()));
        }
    };
    text("actor", &query.actor, &mut conds);
    text("action", &query.action, &mut conds);
    text("outcome", &query.outcome, &mut conds);
    if let Some((lo, hi)) = &query.address_between {
        binds.push(AuditBind::Text(lo.clone()));
        binds.push(AuditBind::Text(hi.clone()));
        conds.push(format!(
            "e.address BETWEEN ${} AND ${}",
            binds.len() - 1,
            binds.len()
        ));
    }
    if let Some(t) = query.since {
        binds.push(AuditBind::Int(t));
        conds.push(format!("e.time >= ${}", binds.len()));
    }
    if let Some(t) = query.until {
        binds.push(AuditBind::Int(t));
        conds.push(format!("e.time < ${}", binds.len()));
    }
    if let Some(seq) = query.before_seq {
        binds.push(AuditBind::Int(to_i64(seq)?));
        conds.push(format!("e.seq < ${}", binds.len()));
    }
    let from = if query.patient.is_some() {
        " FROM audit_entry_patients p JOIN audit_entries e ON e.seq = p.seq"
    } else {
        " FROM audit_entries e"
    };
    let clause = if conds.is_empty() {
        from.to_owned()
    } else {
        format!("{from} WHERE {}", conds.join(" AND "))
    };
    Ok((clause, binds))
}

pub(crate) async fn tail(conn: &mut AnyConnection) -> Result<AuditTail, StoreError> {
    let row = sqlx::query("SELECT seq, entry_hash FROM audit_entries ORDER BY seq DESC LIMIT 1")
        .fetch_optional(&mut *conn)
        .await?;
    match row {
        None => Ok(AuditTail {
            seq: 1,
            prev_hash: None,
        }),
        Some(row) => {
            let seq = to_u64(row.try_get("seq")?)?;
            Ok(AuditTail {
                seq: seq + 1,
                prev_hash: Some(row.try_get("entry_hash")?),
            })
        }
    }
}

impl Store {
    /// The store's SQLite write lock (none on PostgreSQL). A caller that opens its own write
    /// transaction (for example to append an audit entry with [`Store::append_audit_in`]
    /// together with other writes) holds this guard until the transaction has ended.
    pub async fn write_lock(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        self.write_guard().await
    }

    /// Appends an audit entry inside the caller's transaction `conn`: reads the tail of the
    /// trail, calls `build` with it and inserts what `build` returns as entry `tail.seq`.
    /// Returns that seq. On SQLite the caller holds [`Store::write_lock`]; on PostgreSQL a
    /// concurrent appender that took the same seq makes this retry from a savepoint, calling
    /// `build` again with the new tail.
    pub async fn append_audit_in<F, E>(
        &self,
        conn: &mut AnyConnection,
        mut build: F,
    ) -> Result<u64, E>
    where
        F: FnMut(&AuditTail) -> Result<NewAuditRow, E>,
        E: From<StoreError>,
    {
        self.append_audit_rows_in(conn, |tail| Ok(vec![build(tail)?]))
            .await
    }

    /// Appends several entries inside the caller's transaction, as
    /// [`Store::append_audit_in`] does one: `build` gets the tail and returns the rows of
    /// entries `tail.seq`, `tail.seq + 1`, ... (each chained onto the one before it), which
    /// are inserted with a few multi-row statements. Returns the first seq (the tail's seq when
    /// `build` returns nothing).
    pub async fn append_audit_rows_in<F, E>(
        &self,
        conn: &mut AnyConnection,
        mut build: F,
    ) -> Result<u64, E>
    where
        F: FnMut(&AuditTail) -> Result<Vec<NewAuditRow>, E>,
        E: From<StoreError>,
    {
        let savepoints = self.inner.backend == Backend::Postgres;
        let mut attempt = 0;
        loop {
            attempt += 1;
            if savepoints {
                sqlx::query("SAVEPOINT phivault_audit_append")
                    .execute(&mut *conn)
                    .await
                    .map_err(StoreError::from)?;
                // Appenders queue here until the holder's transaction ends, instead of racing
                // for the same seq; the unique-violation retry below remains the safety net.
                sqlx::query("SELECT 1 AS locked FROM (SELECT pg_advisory_xact_lock($1)) AS l")
                    .bind(APPEND_LOCK_KEY)
                    .execute(&mut *conn)
                    .await
                    .map_err(StoreError::from)?;
            }
            let tail = tail(conn).await?;
            let rows = build(&tail)?;
            let done = self.insert_audit_rows(conn, tail.seq, rows).await;
            match done {
                Ok(()) => {
                    if savepoints {
                        sqlx::query("RELEASE SAVEPOINT phivault_audit_append")
                            .execute(&mut *conn)
                            .await
                            .map_err(StoreError::from)?;
                    }
                    return Ok(tail.seq);
                }
                Err(e) if savepoints && is_unique_violation(&e) && attempt < APPEND_ATTEMPTS => {
                    sqlx::query("ROLLBACK TO SAVEPOINT phivault_audit_append")
                        .execute(&mut *conn)
                        .await
                        .map_err(StoreError::from)?;
                }
                Err(e) => return Err(StoreError::from(e).into()),
            }
        }
    }

    /// Inserts `rows` as entries `first`, `first + 1`, ...
    async fn insert_audit_rows(
        &self,
        conn: &mut AnyConnection,
        first: u64,
        rows: Vec<NewAuditRow>,
    ) -> Result<(), sqlx::Error> {
        let mut seq = first;
        let mut patients: Vec<(i64, String)> = Vec::new();
        let mut rows = rows.into_iter().peekable();
        while rows.peek().is_some() {
            let chunk: Vec<NewAuditRow> = rows.by_ref().take(AUDIT_ROWS_PER_INSERT).collect();
            let values: Vec<String> = (0..chunk.len())
                .map(|i| {
                    let b = i * 11 + 2;
                    format!(
                        "(${}, $1, ${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}, ${})",
                        b,
                        b + 1,
                        b + 2,
                        b + 3,
                        b + 4,
                        b + 5,
                        b + 6,
                        b + 7,
                        b + 8,
                        b + 9,
                        b + 10
                    )
                })
                .collect();
            let sql = format!(
                "INSERT INTO audit_entries (seq, tenant, body, entry_hash, prev_hash, time, \
                 actor, patient, action, outcome, chain_mac, address) VALUES {}",
                values.join(", ")
            );
            let mut q = sqlx::query(&sql).bind(&self.inner.tenant);
            for row in chunk {
                let s = i64::try_from(seq)
                    .map_err(|_| sqlx::Error::Protocol(format!("audit seq {seq} out of range")))?;
                patients.extend(row.patients.into_iter().map(|p| (s, p)));
                q = q
                    .bind(s)
                    .bind(row.body)
                    .bind(row.entry_hash)
                    .bind(row.prev_hash)
                    .bind(row.time)
                    .bind(row.actor)
                    .bind(row.patient)
                    .bind(row.action)
                    .bind(row.outcome)
                    .bind(row.chain_mac)
                    .bind(row.address);
                seq += 1;
            }
            q.execute(&mut *conn).await?;
        }
        for chunk in patients.chunks(PATIENT_ROWS_PER_INSERT) {
            let values: Vec<String> = (0..chunk.len())
                .map(|i| format!("(${}, ${})", 2 * i + 1, 2 * i + 2))
                .collect();
            let sql = format!(
                "INSERT INTO audit_entry_patients (seq, patient) VALUES {}",
                values.join(", ")
            );
            let mut q = sqlx::query(&sql);
            for (s, p) in chunk {
                q = q.bind(*s).bind(p.as_str());
            }
            q.execute(&mut *conn).await?;
        }
        Ok(())
    }

    /// Appends entries in a transaction of their own (see [`Store::append_audit_rows_in`]).
    pub async fn append_audit_rows<F, E>(&self, build: F) -> Result<u64, E>
    where
        F: FnMut(&AuditTail) -> Result<Vec<NewAuditRow>, E>,
        E: From<StoreError>,
    {
        let _guard = self.write_guard().await;
        let mut tx = self.begin_write().await?;
        let seq = self.append_audit_rows_in(&mut tx, build).await?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok(seq)
    }

    /// Appends an audit entry in a transaction of its own (see [`Store::append_audit_in`]).
    pub async fn append_audit<F, E>(&self, build: F) -> Result<u64, E>
    where
        F: FnMut(&AuditTail) -> Result<NewAuditRow, E>,
        E: From<StoreError>,
    {
        let _guard = self.write_guard().await;
        let mut tx = self.begin_write().await?;
        let seq = self.append_audit_in(&mut tx, build).await?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok(seq)
    }

    /// Up to `limit` entries with seq greater than `after`, in seq order.
    pub async fn audit_entries(&self, after: u64, limit: u32) -> Result<Vec<AuditRow>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {ENTRY_COLUMNS} FROM audit_entries WHERE seq > $1 ORDER BY seq LIMIT $2"
        ))
        .bind(to_i64(after)?)
        .bind(i64::from(limit))
        .fetch_all(&self.inner.pool)
        .await?;
        let mut rows = rows.iter().map(entry_from).collect::<Result<Vec<_>, _>>()?;
        attach_patients(&self.inner.pool, &mut rows).await?;
        Ok(rows)
    }

    /// Up to `limit` entries' (seq, body) with seq greater than `after`, in seq order: what a
    /// reader that follows the trail needs (the body names every patient; no hashes, no
    /// second query), at a fraction of [`Store::audit_entries`]'s cost.
    pub async fn audit_bodies(
        &self,
        after: u64,
        limit: u32,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let rows =
            sqlx::query("SELECT seq, body FROM audit_entries WHERE seq > $1 ORDER BY seq LIMIT $2")
                .bind(to_i64(after)?)
                .bind(i64::from(limit))
                .fetch_all(&self.inner.pool)
                .await?;
        rows.iter()
            .map(|row| Ok((to_u64(row.try_get(0)?)?, row.try_get(1)?)))
            .collect()
    }

    /// Up to `limit` entries with seq greater than `after`, in seq order, as a verification
    /// reads them: every column but the tenant (left empty), and their
    /// `audit_entry_patients` rows read with one range query over the page's seqs.
    pub async fn audit_entries_to_verify(
        &self,
        after: u64,
        limit: u32,
    ) -> Result<Vec<AuditRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, body, entry_hash, prev_hash, time, actor, patient, action, outcome, \
             chain_mac FROM audit_entries WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(to_i64(after)?)
        .bind(i64::from(limit))
        .fetch_all(&self.inner.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            out.push(AuditRow {
                seq: to_u64(row.try_get(0)?)?,
                tenant: String::new(),
                body: row.try_get(1)?,
                entry_hash: row.try_get(2)?,
                prev_hash: row.try_get(3)?,
                time: row.try_get(4)?,
                actor: row.try_get(5)?,
                patient: row.try_get(6)?,
                action: row.try_get(7)?,
                outcome: row.try_get(8)?,
                chain_mac: row.try_get(9)?,
                patients: Vec::new(),
            });
        }
        drop(rows);
        let Some(last) = out.last().map(|r| r.seq) else {
            return Ok(out);
        };
        let patients = sqlx::query(
            "SELECT seq, patient FROM audit_entry_patients WHERE seq > $1 AND seq <= $2 \
             ORDER BY seq, patient",
        )
        .bind(to_i64(after)?)
        .bind(to_i64(last)?)
        .fetch_all(&self.inner.pool)
        .await?;
        // Both in seq order: one walk attaches each row to its entry (rows of a seq with no
        // entry are left out, as a query by the page's seqs would).
        let mut at = 0;
        for row in &patients {
            let seq = to_u64(row.try_get(0)?)?;
            while out.get(at).is_some_and(|r| r.seq < seq) {
                at += 1;
            }
            if let Some(entry) = out.get_mut(at).filter(|r| r.seq == seq) {
                entry.patients.push(row.try_get(1)?);
            }
        }
        Ok(out)
    }

    /// Up to `limit` entries matching `query`, newest (highest seq) first.
    pub async fn audit_search(
        &self,
        query: &AuditQuery,
        limit: u32,
    ) -> Result<Vec<AuditRow>, StoreError> {
        let (clause, binds) = audit_where(query)?;
        let columns = ENTRY_COLUMNS
            .split(", ")
            .map(|c| format!("e.{c} AS {c}"))
            .collect::<Vec<_>>()
            .join(", ");
        let order = if query.patient.is_some() {
            "p.seq"
        } else {
            "e.seq"
        };
        let sql = format!(
            "SELECT {columns}{clause} ORDER BY {order} DESC LIMIT ${}",
            binds.len() + 1
        );
        let mut q = sqlx::query(&sql);
        for b in binds {
            q = match b {
                AuditBind::Text(t) => q.bind(t),
                AuditBind::Int(i) => q.bind(i),
            };
        }
        let rows = q.bind(i64::from(limit)).fetch_all(&self.inner.pool).await?;
        let mut rows = rows.iter().map(entry_from).collect::<Result<Vec<_>, _>>()?;
        attach_patients(&self.inner.pool, &mut rows).await?;
        Ok(rows)
    }

    /// How many entries match `query` (its `before_seq` included).
    pub async fn audit_count(&self, query: &AuditQuery) -> Result<u64, StoreError> {
        let (clause, binds) = audit_where(query)?;
        let sql = format!("SELECT COUNT(*) AS n{clause}");
        let mut q = sqlx::query(&sql);
        for b in binds {
            q = match b {
                AuditBind::Text(t) => q.bind(t),
                AuditBind::Int(i) => q.bind(i),
            };
        }
        let row = q.fetch_one(&self.inner.pool).await?;
        to_u64(row.try_get("n")?)
    }

    /// Fills in the `address` column of rows written before schema v16 with the key `derive`
    /// computes from each row's body (`""` for none, so that a row is filled once). Returns
    /// the number of rows filled in; one query when there is nothing to fill.
    pub async fn fill_audit_addresses<F>(&self, mut derive: F) -> Result<u64, StoreError>
    where
        F: FnMut(&[u8]) -> String,
    {
        let mut filled = 0;
        loop {
            let rows = sqlx::query(
                "SELECT seq, body FROM audit_entries WHERE address IS NULL ORDER BY seq LIMIT 5000",
            )
            .fetch_all(&self.inner.pool)
            .await?;
            if rows.is_empty() {
                break;
            }
            let _guard = self.write_guard().await;
            let mut tx = self.begin_write().await?;
            for row in &rows {
                let seq: i64 = row.try_get("seq")?;
                let body: Vec<u8> = row.try_get("body")?;
                sqlx::query("UPDATE audit_entries SET address = $1 WHERE seq = $2")
                    .bind(derive(&body))
                    .bind(seq)
                    .execute(&mut *tx)
                    .await?;
                filled += 1;
            }
            tx.commit().await?;
        }
        Ok(filled)
    }

    /// Fills in the `action` and `outcome` columns of rows written before schema v4, as
    /// `derive` computes them from each row's body (`None` leaves a row as it is). Returns the
    /// number of rows filled in.
    pub async fn fill_audit_columns<F>(&self, mut derive: F) -> Result<u64, StoreError>
    where
        F: FnMut(&[u8]) -> Option<(String, String)>,
    {
        let mut filled = 0;
        let mut after = 0i64;
        loop {
            let rows = sqlx::query(
                "SELECT seq, body FROM audit_entries WHERE action IS NULL AND seq > $1 \
                 ORDER BY seq LIMIT 1000",
            )
            .bind(after)
            .fetch_all(&self.inner.pool)
            .await?;
            let Some(last) = rows.last() else { break };
            after = last.try_get("seq")?;
            let _guard = self.write_guard().await;
            let mut tx = self.begin_write().await?;
            for row in &rows {
                let seq: i64 = row.try_get("seq")?;
                let body: Vec<u8> = row.try_get("body")?;
                if let Some((action, outcome)) = derive(&body) {
                    sqlx::query(
                        "UPDATE audit_entries SET action = $1, outcome = $2 \
                         WHERE seq = $3 AND action IS NULL",
                    )
                    .bind(action)
                    .bind(outcome)
                    .bind(seq)
                    .execute(&mut *tx)
                    .await?;
                    filled += 1;
                }
            }
            tx.commit().await?;
        }
        Ok(filled)
    }

    /// The entry with this seq.
    pub async fn audit_entry(&self, seq: u64) -> Result<Option<AuditRow>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {ENTRY_COLUMNS} FROM audit_entries WHERE seq = $1"
        ))
        .bind(to_i64(seq)?)
        .fetch_optional(&self.inner.pool)
        .await?;
        let mut rows = row
            .as_ref()
            .map(entry_from)
            .transpose()?
            .into_iter()
            .collect::<Vec<_>>();
        attach_patients(&self.inner.pool, &mut rows).await?;
        Ok(rows.pop())
    }

    /// The tail of the trail: the seq the next entry would get and the last entry's hash.
    pub async fn audit_tail(&self) -> Result<AuditTail, StoreError> {
        let mut conn = self.inner.pool.acquire().await?;
        tail(&mut conn).await
    }

    /// Stores a checkpoint. Returns `false` (and changes nothing) when one of that size exists.
    pub async fn insert_audit_checkpoint(&self, cp: &CheckpointRow) -> Result<bool, StoreError> {
        let _guard = self.write_guard().await;
        let done = sqlx::query(
            "INSERT INTO audit_checkpoints (size, root, last_entry_hash, time, signature, \
             frontier) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(to_i64(cp.size)?)
        .bind(cp.root.clone())
        .bind(cp.last_entry_hash.clone())
        .bind(cp.time)
        .bind(cp.signature.clone())
        .bind(cp.frontier.clone())
        .execute(&self.inner.pool)
        .await;
        match done {
            Ok(_) => Ok(true),
            Err(e) if is_unique_violation(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Every checkpoint, smallest size first.
    pub async fn audit_checkpoints(&self) -> Result<Vec<CheckpointRow>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoints ORDER BY size"
        ))
        .fetch_all(&self.inner.pool)
        .await?;
        rows.iter().map(checkpoint_from).collect()
    }

    /// The checkpoints of size `min_size` or more, smallest size first.
    pub async fn audit_checkpoints_from(
        &self,
        min_size: u64,
    ) -> Result<Vec<CheckpointRow>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoints WHERE size >= $1 ORDER BY size"
        ))
        .bind(to_i64(min_size)?)
        .fetch_all(&self.inner.pool)
        .await?;
        rows.iter().map(checkpoint_from).collect()
    }

    /// The checkpoint of the largest size, if any.
    pub async fn last_audit_checkpoint(&self) -> Result<Option<CheckpointRow>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoints ORDER BY size DESC LIMIT 1"
        ))
        .fetch_optional(&self.inner.pool)
        .await?;
        row.as_ref().map(checkpoint_from).transpose()
    }

    /// The key that authenticates the audit chain (HMAC-SHA256, derived with HKDF from the
    /// tenant's index secret under a label of its own).
    pub fn audit_chain_key(&self) -> std::sync::Arc<phivault_crypto::MacKey> {
        self.inner.keys.audit_chain()
    }

    /// Where the tenant's keyed chain starts, if recorded.
    pub async fn audit_keyed_from(&self) -> Result<Option<KeyedFrom>, StoreError> {
        let row = sqlx::query("SELECT keyed_from, tag FROM audit_chain WHERE tenant = $1")
            .bind(&self.inner.tenant)
            .fetch_optional(&self.inner.pool)
            .await?;
        row.map(|row| {
            Ok(KeyedFrom {
                seq: to_u64(row.try_get("keyed_from")?)?,
                tag: row.try_get("tag")?,
            })
        })
        .transpose()
    }

    /// Records where the keyed chain starts, when nothing is recorded yet: at the seq the next
    /// entry gets, read under the append lock in the same transaction, so no entry can slip
    /// in between. `decide` gets that seq and the last entry (if any) and returns the tag of
    /// the seq, or an error to refuse (for example when the last entry is already keyed:
    /// then the record was deleted). Returns what is recorded (the earlier record when there
    /// was one).
    pub async fn record_audit_keyed_from<F, E>(&self, decide: F) -> Result<KeyedFrom, E>
    where
        F: FnOnce(u64, Option<&AuditRow>) -> Result<Vec<u8>, E>,
        E: From<StoreError>,
    {
        let _guard = self.write_guard().await;
        let mut tx = self.begin_write().await?;
        if self.inner.backend == Backend::Postgres {
            sqlx::query("SELECT 1 AS locked FROM (SELECT pg_advisory_xact_lock($1)) AS l")
                .bind(APPEND_LOCK_KEY)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::from)?;
        }
        let existing = sqlx::query("SELECT keyed_from, tag FROM audit_chain WHERE tenant = $1")
            .bind(&self.inner.tenant)
            .fetch_optional(&mut *tx)
            .await
            .map_err(StoreError::from)?;
        if let Some(row) = existing {
            return Ok(KeyedFrom {
                seq: to_u64(row.try_get("keyed_from").map_err(StoreError::from)?)?,
                tag: row.try_get("tag").map_err(StoreError::from)?,
            });
        }
        let last = sqlx::query(&format!(
            "SELECT {ENTRY_COLUMNS} FROM audit_entries ORDER BY seq DESC LIMIT 1"
        ))
        .fetch_optional(&mut *tx)
        .await
        .map_err(StoreError::from)?
        .as_ref()
        .map(entry_from)
        .transpose()?;
        let seq = last.as_ref().map_or(1, |r| r.seq + 1);
        let tag = decide(seq, last.as_ref())?;
        let (_, now) = crate::now();
        sqlx::query(
            "INSERT INTO audit_chain (tenant, keyed_from, tag, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(&self.inner.tenant)
        .bind(to_i64(seq)?)
        .bind(tag.clone())
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from)?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok(KeyedFrom { seq, tag })
    }

    /// The tenant's checkpoint-signing key, unsealed. When there is none and the trail is
    /// empty (no entry, no checkpoint), `create` makes one (returning the raw public key and
    /// the PKCS#8 private key) and it is stored sealed. Concurrent creators agree on the first
    /// key created.
    ///
    /// A missing key with entries or checkpoints present is refused
    /// ([`StoreError::AuditKeyMissing`]): the key is made with the first entry, so its absence
    /// means the row was deleted, and a new key would sign a history rewritten by whoever
    /// deleted it.
    pub async fn audit_signing_key<F, E>(&self, create: F) -> Result<AuditKey, E>
    where
        F: FnOnce() -> Result<(Vec<u8>, Zeroizing<Vec<u8>>), E>,
        E: From<StoreError>,
    {
        if let Some(key) = self.find_audit_key().await? {
            return Ok(key);
        }
        let entries = self.audit_tail().await?.seq.saturating_sub(1);
        let checkpoints = self.last_audit_checkpoint().await?.map_or(0, |c| c.size);
        if entries > 0 || checkpoints > 0 {
            tracing::error!(
                target: "phivault::integrity",
                tenant = %self.inner.tenant,
                entries,
                "the audit signing key is missing while the trail has entries"
            );
            return Err(StoreError::AuditKeyMissing { entries }.into());
        }
        let (public_key, private) = create()?;
        let dek = self.directory_key().await?;
        let tenant = &self.inner.tenant;
        let key_id = uuid::Uuid::new_v4().to_string();
        let sealed = dek
            .sealer
            .seal(&key_aad(tenant, &key_id, &dek.key_id), private.as_slice())
            .map_err(StoreError::from)?;
        let (_, now) = crate::now();
        {
            let _guard = self.write_guard().await;
            sqlx::query(
                "INSERT INTO audit_keys (key_id, tenant, public_key, sealed_private, created_at) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(&key_id)
            .bind(tenant)
            .bind(public_key)
            .bind(sealed)
            .bind(now)
            .execute(&self.inner.pool)
            .await
            .map_err(StoreError::from)?;
        }
        Ok(self
            .find_audit_key()
            .await?
            .ok_or_else(|| StoreError::Config("a new audit signing key vanished".to_owned()))?)
    }

    async fn find_audit_key(&self) -> Result<Option<AuditKey>, StoreError> {
        let row = sqlx::query(
            "SELECT key_id, public_key, sealed_private FROM audit_keys WHERE tenant = $1 \
             ORDER BY created_at, key_id LIMIT 1",
        )
        .bind(&self.inner.tenant)
        .fetch_optional(&self.inner.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let key_id: String = row.try_get("key_id")?;
        let public_key: Vec<u8> = row.try_get("public_key")?;
        let sealed: Vec<u8> = row.try_get("sealed_private")?;
        let dek = self.directory_key().await?;
        let private = dek
            .sealer
            .open(&key_aad(&self.inner.tenant, &key_id, &dek.key_id), &sealed)
            .map_err(|_| {
                tracing::error!(
                    target: "phivault::integrity",
                    tenant = %self.inner.tenant,
                    key_id = %key_id,
                    "the audit signing key does not open"
                );
                StoreError::Integrity {
                    rtype: "audit-key".to_owned(),
                    id: key_id.clone(),
                }
            })?;
        Ok(Some(AuditKey {
            key_id,
            public_key,
            private_pkcs8: Zeroizing::new(private),
        }))
    }
}
