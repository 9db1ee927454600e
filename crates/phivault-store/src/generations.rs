//! Cache generations: one row per tenant and kind of derived state (`cache_generations`),
//! holding a random value that every transaction changing the rows behind that state replaces
//! in the same transaction.
//!
//! What a reader may rely on: a value read at time t differs from every value read before the
//! last change committed before t (up to a 2^-63 chance per change). So a process that derived
//! something from the rows after reading value g, and reads g again later, knows no change
//! committed in between; any other value (or no row) means "derive again". This holds across
//! processes and nodes sharing the database, because the value lives in the database.
//!
//! The values are random rather than counted, so that one value names one state of the rows
//! across copies of the database: a restore brings back an archive's rows with the values
//! they had when the archive was taken (a process that cached under such a value cached
//! exactly those rows), where a counter could climb again to a value a running process had
//! cached under with other rows behind it. A restore that then changes the restored rows
//! (replayed revocations, erasures, retention disposals) writes fresh values in its
//! transaction ([`bump_all`]).

use sqlx::{AnyConnection, Row};

use crate::{Store, StoreError};

/// The kind of derived state a generation guards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Generation {
    /// What authenticating a bearer token answers: the token rows, the clients, and the
    /// users' role, disabled flag, patient and Practitioner links and second factor.
    Auth,
    /// The active `Consent` resources of the tenant: any write of a Consent (create, update,
    /// delete, a Bundle entry, disposal by retention), an erasure, a restore.
    Consent,
}

impl Generation {
    fn name(self) -> &'static str {
        match self {
            Generation::Auth => "auth",
            Generation::Consent => "consent",
        }
    }
}

/// A fresh random value.
fn fresh_value() -> Result<i64, StoreError> {
    let mut bytes = [0u8; 8];
    phivault_crypto::random_bytes(&mut bytes)?;
    Ok(i64::from_le_bytes(bytes))
}

/// The consent generation's kind when `rtype` is the Consent type (writes of it replace it).
pub(crate) fn of_type(rtype: &str) -> Option<Generation> {
    (rtype == "Consent").then_some(Generation::Consent)
}

/// Inside a write transaction of `tenant`: replaces the generation `kind` with a fresh value.
pub(crate) async fn bump(
    conn: &mut AnyConnection,
    tenant: &str,
    kind: Generation,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO cache_generations (tenant, name, value) VALUES ($1, $2, $3) \
         ON CONFLICT (tenant, name) DO UPDATE SET value = excluded.value",
    )
    .bind(tenant)
    .bind(kind.name())
    .bind(fresh_value()?)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Inside a restore that changed restored rows: replaces every generation of every tenant
/// with a fresh value.
pub(crate) async fn bump_all(conn: &mut AnyConnection) -> Result<(), StoreError> {
    sqlx::query("UPDATE cache_generations SET value = $1")
        .bind(fresh_value()?)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// The values of every generation, read by one statement (see [`Store::generations`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Generations {
    /// [`Generation::Auth`]'s value (`None`: no row, nothing may be cached under it).
    pub auth: Option<i64>,
    /// [`Generation::Consent`]'s value (`None`: no row).
    pub consent: Option<i64>,
}

impl Store {
    /// The values of every generation, read together: one statement where a request would
    /// otherwise read each generation it caches under on its own (the request's token, then
    /// its consents). A value read earlier in a request is as good as one read later: what
    /// was cached under it is at least as new as that moment, and the request began after it.
    pub async fn generations(&self) -> Result<Generations, StoreError> {
        let rows = sqlx::query("SELECT name, value FROM cache_generations WHERE tenant = $1")
            .bind(&self.inner.tenant)
            .fetch_all(&self.inner.pool)
            .await?;
        let mut out = Generations::default();
        for row in rows {
            let name: String = row.try_get("name")?;
            let value: i64 = row.try_get("value")?;
            if name == Generation::Auth.name() {
                out.auth = Some(value);
            } else if name == Generation::Consent.name() {
                out.consent = Some(value);
            }
        }
        Ok(out)
    }

    /// The current value of the generation `kind`, or `None` when it has no row (a restored
    /// archive from before generations): then nothing may be cached under it.
    pub async fn generation(&self, kind: Generation) -> Result<Option<i64>, StoreError> {
        let row =
            sqlx::query("SELECT value FROM cache_generations WHERE tenant = $1 AND name = $2")
                .bind(&self.inner.tenant)
                .bind(kind.name())
                .fetch_optional(&self.inner.pool)
                .await?;
        Ok(match row {
            Some(row) => Some(row.try_get("value")?),
            None => None,
        })
    }

    /// Gives the generation `kind` a row when it has none (at open), so that caching can
    /// start without waiting for a first change.
    pub(crate) async fn ensure_generation(&self, kind: Generation) -> Result<(), StoreError> {
        let _guard = self.write_guard().await;
        sqlx::query(
            "INSERT INTO cache_generations (tenant, name, value) VALUES ($1, $2, $3) \
             ON CONFLICT (tenant, name) DO NOTHING",
        )
        .bind(&self.inner.tenant)
        .bind(kind.name())
        .bind(fresh_value()?)
        .execute(&self.inner.pool)
        .await?;
        Ok(())
    }
}
