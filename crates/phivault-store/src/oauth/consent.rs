//! Remembered consents: what a user allowed an app, until they revoke it. Revoking one also
//! revokes every token of that user bound to that app, in the same transaction.

use sqlx::Row;
use sqlx::any::AnyRow;

use crate::accounts::commit_recorded_auth;
use crate::{AccountChange, AccountSink, Store, StoreError};

/// A user's consent to an app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizationRow {
    /// The user.
    pub user_id: String,
    /// The app.
    pub client_id: String,
    /// The scopes allowed at the last consent, space-separated.
    pub scopes: String,
    /// Unix time of the last consent.
    pub granted_at: i64,
    /// Unix time the app last used it.
    pub last_used_at: i64,
    /// Unix time, if revoked.
    pub revoked_at: Option<i64>,
}

const AUTHORIZATION_COLUMNS: &str =
    "user_id, client_id, scopes, granted_at, last_used_at, revoked_at";

fn authorization_from(row: &AnyRow) -> Result<AuthorizationRow, StoreError> {
    Ok(AuthorizationRow {
        user_id: row.try_get("user_id")?,
        client_id: row.try_get("client_id")?,
        scopes: row.try_get("scopes")?,
        granted_at: row.try_get("granted_at")?,
        last_used_at: row.try_get("last_used_at")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}

impl Store {
    /// Records a consent: creates the (user, client) authorization or replaces its scopes,
    /// times and revocation (a new consent after a revocation is in force again).
    pub async fn upsert_authorization(&self, auth: &AuthorizationRow) -> Result<(), StoreError> {
        let _guard = self.write_guard().await;
        sqlx::query(&format!(
            "INSERT INTO oauth_authorizations (tenant, {AUTHORIZATION_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (tenant, user_id, client_id) DO UPDATE SET scopes = excluded.scopes, \
             granted_at = excluded.granted_at, last_used_at = excluded.last_used_at, \
             revoked_at = excluded.revoked_at"
        ))
        .bind(&self.inner.tenant)
        .bind(&auth.user_id)
        .bind(&auth.client_id)
        .bind(&auth.scopes)
        .bind(auth.granted_at)
        .bind(auth.last_used_at)
        .bind(auth.revoked_at)
        .execute(&self.inner.pool)
        .await?;
        Ok(())
    }

    /// Sets the last use of the authorization in force of (user, client) to `now`. `false`
    /// when there is none in force.
    pub async fn touch_authorization(
        &self,
        user_id: &str,
        client_id: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        let _guard = self.write_guard().await;
        let done = sqlx::query(
            "UPDATE oauth_authorizations SET last_used_at = $1 \
             WHERE tenant = $2 AND user_id = $3 AND client_id = $4 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(&self.inner.tenant)
        .bind(user_id)
        .bind(client_id)
        .execute(&self.inner.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The authorization of (user, client), in force or revoked.
    pub async fn authorization(
        &self,
        user_id: &str,
        client_id: &str,
    ) -> Result<Option<AuthorizationRow>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {AUTHORIZATION_COLUMNS} FROM oauth_authorizations \
             WHERE tenant = $1 AND user_id = $2 AND client_id = $3"
        ))
        .bind(&self.inner.tenant)
        .bind(user_id)
        .bind(client_id)
        .fetch_optional(&self.inner.pool)
        .await?;
        row.as_ref().map(authorization_from).transpose()
    }

    /// The user's authorizations in force, by client id.
    pub async fn authorizations_of_user(
        &self,
        user_id: &str,
    ) -> Result<Vec<AuthorizationRow>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {AUTHORIZATION_COLUMNS} FROM oauth_authorizations \
             WHERE tenant = $1 AND user_id = $2 AND revoked_at IS NULL ORDER BY client_id"
        ))
        .bind(&self.inner.tenant)
        .bind(user_id)
        .fetch_all(&self.inner.pool)
        .await?;
        rows.iter().map(authorization_from).collect()
    }

    /// Revokes at `now`, in one transaction committed with `audit`'s record of `change`, the
    /// user's authorization of the app and every unrevoked token the user holds for it
    /// (access and refresh). `false` (nothing changed or recorded) when there was neither an
    /// authorization in force nor such a token.
    pub async fn revoke_authorization(
        &self,
        user_id: &str,
        client_id: &str,
        now: i64,
        audit: &dyn AccountSink,
        change: &AccountChange,
    ) -> Result<bool, StoreError> {
        let tenant = &self.inner.tenant;
        let _guard = self.write_guard().await;
        let mut tx = self.begin_write().await?;
        let authorizations = sqlx::query(
            "UPDATE oauth_authorizations SET revoked_at = $1 \
             WHERE tenant = $2 AND user_id = $3 AND client_id = $4 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(tenant)
        .bind(user_id)
        .bind(client_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        // Tokens too, even without an authorization in force: the user's intent is that the
        // app reaches nothing of theirs any more.
        let tokens = sqlx::query(
            "UPDATE tokens SET revoked_at = $1 WHERE tenant = $2 AND principal_id = $3 \
             AND client_id = $4 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(tenant)
        .bind(user_id)
        .bind(client_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if authorizations + tokens == 0 {
            return Ok(false);
        }
        commit_recorded_auth(tx, tenant, audit, change).await?;
        Ok(true)
    }
}
