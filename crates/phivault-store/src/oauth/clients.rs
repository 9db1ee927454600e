//! OAuth2 clients: registration, lookup, listing, secret replacement and disabling.
//!
//! A client row holds no secret in the clear: the SHA-256 of a client secret, and public keys
//! only in `jwks`. Every change here is an account change, committed in one transaction with
//! its audit entry.

use sqlx::Row;
use sqlx::any::AnyRow;

use crate::accounts::{ClientRow, commit_recorded, commit_recorded_auth};
use crate::{AccountChange, AccountSink, Store, StoreError};

const CLIENT_COLUMNS: &str = "client_id, name, secret_hash, scopes, launch_patient, \
     created_at, disabled_at, client_type, redirect_uris, jwks, jwks_url";

fn client_from(row: &AnyRow) -> Result<ClientRow, StoreError> {
    Ok(ClientRow {
        client_id: row.try_get("client_id")?,
        name: row.try_get("name")?,
        secret_hash: row.try_get("secret_hash")?,
        scopes: row.try_get("scopes")?,
        launch_patient: row.try_get("launch_patient")?,
        created_at: row.try_get("created_at")?,
        disabled_at: row.try_get("disabled_at")?,
        // Rows registered before client types existed all authenticate with a secret.
        client_type: row
            .try_get::<Option<String>, _>("client_type")?
            .unwrap_or_else(|| super::CONFIDENTIAL_SECRET.to_owned()),
        redirect_uris: super::split_lines(
            row.try_get::<Option<String>, _>("redirect_uris")?
                .as_deref(),
        ),
        jwks: row.try_get("jwks")?,
        jwks_url: row.try_get("jwks_url")?,
    })
}

impl Store {
    /// Registers a client, committed with `audit`'s record of `change`. A redirect URI
    /// holding a line break is refused ([`StoreError::Config`]; nothing written).
    pub async fn insert_client(
        &self,
        client: &ClientRow,
        audit: &dyn AccountSink,
        change: &AccountChange,
    ) -> Result<(), StoreError> {
        let redirect_uris = super::join_lines(&client.redirect_uris)?;
        let _guard = self.write_guard().await;
        let mut tx = self.begin_write().await?;
        sqlx::query(&format!(
            "INSERT INTO oauth_clients (tenant, {CLIENT_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
        ))
        .bind(&self.inner.tenant)
        .bind(&client.client_id)
        .bind(&client.name)
        .bind(client.secret_hash.as_slice())
        .bind(&client.scopes)
        .bind(client.launch_patient.as_deref())
        .bind(client.created_at)
        .bind(client.disabled_at)
        .bind(&client.client_type)
        .bind(redirect_uris)
        .bind(client.jwks.as_deref())
        .bind(client.jwks_url.as_deref())
        .execute(&mut *tx)
        .await?;
        commit_recorded(tx, audit, change).await
    }

    /// The client with this id.
    pub async fn client(&self, client_id: &str) -> Result<Option<ClientRow>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {CLIENT_COLUMNS} FROM oauth_clients WHERE client_id = $1 AND tenant = $2"
        ))
        .bind(client_id)
        .bind(&self.inner.tenant)
        .fetch_optional(&self.inner.pool)
        .await?;
        row.as_ref().map(client_from).transpose()
    }

    /// Disables a client at `now` (kept for the audit trail; its credentials and every token
    /// bound to it stop working), committed with `audit`'s record of `change`. `false`
    /// (nothing recorded) when there is no such client or it is disabled already.
    pub async fn disable_client(
        &self,
        client_id: &str,
        now: i64,
        audit: &dyn AccountSink,
        change: &AccountChange,
    ) -> Result<bool, StoreError> {
        let _guard = self.write_guard().await;
        let mut tx = self.begin_write().await?;
        let done = sqlx::query(
            "UPDATE oauth_clients SET disabled_at = $1 WHERE client_id = $2 AND tenant = $3 \
             AND disabled_at IS NULL",
        )
        .bind(now)
        .bind(client_id)
        .bind(&self.inner.tenant)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Ok(false);
        }
        commit_recorded_auth(tx, &self.inner.tenant, audit, change).await?;
        Ok(true)
    }

    /// Every client of the tenant (disabled ones included), oldest first.
    pub async fn list_clients(&self) -> Result<Vec<ClientRow>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {CLIENT_COLUMNS} FROM oauth_clients WHERE tenant = $1 \
             ORDER BY created_at, client_id"
        ))
        .bind(&self.inner.tenant)
        .fetch_all(&self.inner.pool)
        .await?;
        rows.iter().map(client_from).collect()
    }

    /// Replaces the secret hash of an enabled client (the old secret stops working at the
    /// commit), committed with `audit`'s record of `change`. `false` (nothing changed or
    /// recorded) when there is no such client or it is disabled.
    pub async fn set_client_secret(
        &self,
        client_id: &str,
        secret_hash: &[u8],
        audit: &dyn AccountSink,
        change: &AccountChange,
    ) -> Result<bool, StoreError> {
        let _guard = self.write_guard().await;
        let mut tx = self.begin_write().await?;
        let done = sqlx::query(
            "UPDATE oauth_clients SET secret_hash = $1 WHERE client_id = $2 AND tenant = $3 \
             AND disabled_at IS NULL",
        )
        .bind(secret_hash)
        .bind(client_id)
        .bind(&self.inner.tenant)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Ok(false);
        }
        // The clients are part of what authenticating a token answers.
        commit_recorded_auth(tx, &self.inner.tenant, audit, change).await?;
        Ok(true)
    }
}
