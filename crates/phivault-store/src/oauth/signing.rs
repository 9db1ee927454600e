//! The OpenID Connect id_token signing keys of the tenant. The private half is sealed with the
//! tenant's directory data key (like TOTP secrets), the associated data binding tenant, key
//! id, algorithm, published public key and purpose: a sealed key copied to another row, or a
//! row whose public key or algorithm was changed, does not open and is reported as an
//! integrity failure rather than served.

use std::fmt;

use sqlx::Row;
use zeroize::Zeroizing;

use crate::{Store, StoreError};

/// A signing key, its private half in the clear in memory (sealed at rest). `Debug` leaves
/// the private half out.
#[derive(Clone)]
pub struct SigningKeyRow {
    /// Key id (`kid` of the JWS header and the published JWK).
    pub kid: String,
    /// JWS algorithm (`RS256`).
    pub alg: String,
    /// The private key (DER).
    pub private_der: Zeroizing<Vec<u8>>,
    /// The public key as a JWK (JSON text), as published.
    pub public_jwk: String,
    /// Unix time.
    pub created_at: i64,
    /// Unix time it stopped signing, if it did.
    pub retired_at: Option<i64>,
}

impl fmt::Debug for SigningKeyRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKeyRow")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("created_at", &self.created_at)
            .field("retired_at", &self.retired_at)
            .finish_non_exhaustive()
    }
}

/// The associated data of a sealed signing key: a JSON array, so that no field's content can
/// shift the boundary between two fields.
fn signing_aad(
    tenant: &str,
    kid: &str,
    alg: &str,
    public_jwk: &str,
    key_id: &str,
) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(&[
        "phivault/oidc-signing-key",
        tenant,
        kid,
        alg,
        public_jwk,
        "private",
        key_id,
    ])
    .map_err(|e| StoreError::Config(format!("cannot encode associated data: {e}")))
}

impl Store {
    /// Stores a signing key, its private half sealed. A key id already stored is refused
    /// (a database error).
    pub async fn insert_signing_key(&self, key: &SigningKeyRow) -> Result<(), StoreError> {
        let data_key = self.directory_key().await?;
        let tenant = &self.inner.tenant;
        let aad = signing_aad(
            tenant,
            &key.kid,
            &key.alg,
            &key.public_jwk,
            &data_key.key_id,
        )?;
        let sealed = data_key.sealer.seal(&aad, key.private_der.as_slice())?;
        let _guard = self.write_guard().await;
        sqlx::query(
            "INSERT INTO oidc_signing_keys (tenant, kid, alg, private_sealed, public_jwk, \
             created_at, retired_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(tenant)
        .bind(&key.kid)
        .bind(&key.alg)
        .bind(sealed)
        .bind(&key.public_jwk)
        .bind(key.created_at)
        .bind(key.retired_at)
        .execute(&self.inner.pool)
        .await?;
        Ok(())
    }

    /// Every signing key of the tenant (retired ones included), oldest first, unsealed.
    pub async fn signing_keys(&self) -> Result<Vec<SigningKeyRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT kid, alg, private_sealed, public_jwk, created_at, retired_at \
             FROM oidc_signing_keys WHERE tenant = $1 ORDER BY created_at, kid",
        )
        .bind(&self.inner.tenant)
        .fetch_all(&self.inner.pool)
        .await?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let data_key = self.directory_key().await?;
        let tenant = &self.inner.tenant;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let kid: String = row.try_get("kid")?;
            let alg: String = row.try_get("alg")?;
            let public_jwk: String = row.try_get("public_jwk")?;
            let sealed: Vec<u8> = row.try_get("private_sealed")?;
            let aad = signing_aad(tenant, &kid, &alg, &public_jwk, &data_key.key_id)?;
            let private_der = data_key
                .sealer
                .open(&aad, &sealed)
                .map(Zeroizing::new)
                .map_err(|_| self.account_integrity(&kid, "signing key does not open"))?;
            out.push(SigningKeyRow {
                kid,
                alg,
                private_der,
                public_jwk,
                created_at: row.try_get("created_at")?,
                retired_at: row.try_get("retired_at")?,
            });
        }
        Ok(out)
    }

    /// Retires a signing key at `at` (it signs no more; it may still be published for the
    /// tokens it signed). `false` when unknown or retired already.
    pub async fn retire_signing_key(&self, kid: &str, at: i64) -> Result<bool, StoreError> {
        let _guard = self.write_guard().await;
        let done = sqlx::query(
            "UPDATE oidc_signing_keys SET retired_at = $1 \
             WHERE tenant = $2 AND kid = $3 AND retired_at IS NULL",
        )
        .bind(at)
        .bind(&self.inner.tenant)
        .bind(kid)
        .execute(&self.inner.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}
