//! Revocations survive a restore: what the installation being replaced had revoked (tokens,
//! users, clients, recovery codes, apps' authorizations, id_token signing keys) is applied over the restored rows in the restore's
//! transaction, as its erasure ledger is (DESIGN.md invariant 6 for erasures; the same
//! reasoning for access that was taken away).

use sqlx::Row;

use super::RestoreTx;
use crate::StoreError;

/// What the installation being replaced had revoked ([`RestoreTx::revocations`]). `Debug`
/// shows counts only.
#[derive(Default)]
pub struct Revocations {
    /// (token hash, revoked at).
    tokens: Vec<(Vec<u8>, i64)>,
    /// (user id, disabled at).
    users: Vec<(String, i64)>,
    /// (client id, disabled at).
    clients: Vec<(String, i64)>,
    /// (user id, code hash, used at).
    codes: Vec<(String, Vec<u8>, i64)>,
    /// (user id, password hash): compared with the restored ones, never written.
    passwords: Vec<(String, String)>,
    /// (tenant, user id, client id, revoked at).
    authorizations: Vec<(String, String, String, i64)>,
    /// (tenant, key id, retired at).
    signing_keys: Vec<(String, String, i64)>,
}

impl std::fmt::Debug for Revocations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Revocations")
            .field("tokens", &self.tokens.len())
            .field("users", &self.users.len())
            .field("clients", &self.clients.len())
            .field("recovery_codes", &self.codes.len())
            .field("authorizations", &self.authorizations.len())
            .field("signing_keys", &self.signing_keys.len())
            .finish_non_exhaustive()
    }
}

/// What [`RestoreTx::replay_revocations`] changed in the restored rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RevocationsReplayed {
    /// Tokens revoked (again).
    pub tokens: u64,
    /// Users disabled (again).
    pub users: u64,
    /// OAuth clients disabled (again).
    pub clients: u64,
    /// Recovery codes marked spent (again).
    pub recovery_codes: u64,
    /// Apps' authorizations revoked (again).
    pub authorizations: u64,
    /// id_token signing keys retired (again).
    pub signing_keys: u64,
    /// Restored users whose password hash differs from the replaced installation's (not
    /// changed: the operator decides whether to reset them).
    pub passwords_differ: u64,
}

impl RestoreTx {
    /// The revocations of the database as it is now (read before [`RestoreTx::clear`], from
    /// the installation being replaced): revoked tokens, disabled users and clients, spent
    /// recovery codes, and the users' password hashes (only compared, never carried).
    pub async fn revocations(&mut self) -> Result<Revocations, StoreError> {
        let mut out = Revocations::default();
        for row in
            sqlx::query("SELECT token_hash, revoked_at FROM tokens WHERE revoked_at IS NOT NULL")
                .fetch_all(&mut *self.tx)
                .await?
        {
            out.tokens
                .push((row.try_get("token_hash")?, row.try_get("revoked_at")?));
        }
        for row in sqlx::query("SELECT user_id, disabled_at, password_hash FROM users")
            .fetch_all(&mut *self.tx)
            .await?
        {
            let user_id: String = row.try_get("user_id")?;
            if let Some(at) = row.try_get::<Option<i64>, _>("disabled_at")? {
                out.users.push((user_id.clone(), at));
            }
            out.passwords
                .push((user_id, row.try_get::<String, _>("password_hash")?));
        }
        for row in sqlx::query(
            "SELECT client_id, disabled_at FROM oauth_clients WHERE disabled_at IS NOT NULL",
        )
        .fetch_all(&mut *self.tx)
        .await?
        {
            out.clients
                .push((row.try_get("client_id")?, row.try_get("disabled_at")?));
        }
        for row in sqlx::query(
            "SELECT user_id, code_hash, used_at FROM recovery_codes WHERE used_at IS NOT NULL",
        )
        .fetch_all(&mut *self.tx)
        .await?
        {
            out.codes.push((
                row.try_get("user_id")?,
                row.try_get("code_hash")?,
                row.try_get("used_at")?,
            ));
        }
        for row in sqlx::query(
            "SELECT tenant, user_id, client_id, revoked_at FROM oauth_authorizations \
             WHERE revoked_at IS NOT NULL",
        )
        .fetch_all(&mut *self.tx)
        .await?
        {
            out.authorizations.push((
                row.try_get("tenant")?,
                row.try_get("user_id")?,
                row.try_get("client_id")?,
                row.try_get("revoked_at")?,
            ));
        }
        for row in sqlx::query(
            "SELECT tenant, kid, retired_at FROM oidc_signing_keys WHERE retired_at IS NOT NULL",
        )
        .fetch_all(&mut *self.tx)
        .await?
        {
            out.signing_keys.push((
                row.try_get("tenant")?,
                row.try_get("kid")?,
                row.try_get("retired_at")?,
            ));
        }
        Ok(out)
    }

    /// Applies the revocations of the installation being replaced ([`RestoreTx::revocations`])
    /// over the restored rows, as the erasure ledger is replayed: a token revoked there
    /// (logout, revocation) stays revoked, a user or client disabled there stays disabled, a
    /// recovery code spent there stays spent. Each of these only ever goes one way (set
    /// once, never cleared, not even by the server's own code), so carrying them is right
    /// whichever of the two copies is the newer. An app's authorization is the exception (a
    /// new consent puts a revoked one in force again): its revocation is carried over a
    /// restored authorization granted no later than it was revoked. Password hashes are
    /// not carried (no change time is recorded, so either side may be the newer one): the
    /// users whose hash differs are counted for the operator.
    pub async fn replay_revocations(
        &mut self,
        other: &Revocations,
    ) -> Result<RevocationsReplayed, StoreError> {
        let mut done = RevocationsReplayed::default();
        for (hash, at) in &other.tokens {
            done.tokens += sqlx::query(
                "UPDATE tokens SET revoked_at = $1 WHERE token_hash = $2 \
                 AND revoked_at IS NULL",
            )
            .bind(*at)
            .bind(hash.as_slice())
            .execute(&mut *self.tx)
            .await?
            .rows_affected();
        }
        for (user_id, at) in &other.users {
            done.users += sqlx::query(
                "UPDATE users SET disabled_at = $1 WHERE user_id = $2 \
                 AND disabled_at IS NULL",
            )
            .bind(*at)
            .bind(user_id)
            .execute(&mut *self.tx)
            .await?
            .rows_affected();
        }
        for (client_id, at) in &other.clients {
            done.clients += sqlx::query(
                "UPDATE oauth_clients SET disabled_at = $1 WHERE client_id = $2 \
                 AND disabled_at IS NULL",
            )
            .bind(*at)
            .bind(client_id)
            .execute(&mut *self.tx)
            .await?
            .rows_affected();
        }
        for (user_id, hash, at) in &other.codes {
            done.recovery_codes += sqlx::query(
                "UPDATE recovery_codes SET used_at = $1 WHERE user_id = $2 AND code_hash = $3 \
                 AND used_at IS NULL",
            )
            .bind(*at)
            .bind(user_id)
            .bind(hash.as_slice())
            .execute(&mut *self.tx)
            .await?
            .rows_affected();
        }
        for (tenant, user_id, client_id, at) in &other.authorizations {
            done.authorizations += sqlx::query(
                "UPDATE oauth_authorizations SET revoked_at = $1 WHERE tenant = $2 \
                 AND user_id = $3 AND client_id = $4 AND revoked_at IS NULL AND granted_at <= $1",
            )
            .bind(*at)
            .bind(tenant)
            .bind(user_id)
            .bind(client_id)
            .execute(&mut *self.tx)
            .await?
            .rows_affected();
        }
        for (tenant, kid, at) in &other.signing_keys {
            done.signing_keys += sqlx::query(
                "UPDATE oidc_signing_keys SET retired_at = $1 WHERE tenant = $2 AND kid = $3 \
                 AND retired_at IS NULL",
            )
            .bind(*at)
            .bind(tenant)
            .bind(kid)
            .execute(&mut *self.tx)
            .await?
            .rows_affected();
        }
        for (user_id, hash) in &other.passwords {
            done.passwords_differ +=
                sqlx::query("SELECT 1 AS x FROM users WHERE user_id = $1 AND password_hash <> $2")
                    .bind(user_id)
                    .bind(hash)
                    .fetch_optional(&mut *self.tx)
                    .await?
                    .map_or(0, |_| 1);
        }
        if done.tokens + done.users + done.clients > 0 {
            // The restored rows no longer are the archive's: see `crate::generations`.
            crate::generations::bump_all(&mut self.tx).await?;
        }
        Ok(done)
    }
}
