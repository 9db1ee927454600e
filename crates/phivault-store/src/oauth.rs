//! OAuth2 and SMART App Launch at rest: clients ([`clients`]), authorization codes, the
//! token families of authorization-code grants and refresh-token rotation, client-assertion
//! ids (`jti`), EHR launch contexts, remembered consents ([`consent`]) and the OpenID Connect
//! signing keys ([`signing`]), for the accounts service (phivault-auth), which decides; this
//! module only keeps, and makes the one-time checks atomic.
//!
//! Rules it keeps:
//! - **nothing usable is stored in the clear**: codes, launch handles and tokens are kept as
//!   the SHA-256 the caller hands in; the signing keys' private halves are sealed with the
//!   tenant's directory data key, bound (AEAD associated data) to tenant, key id, algorithm
//!   and published public key, so a sealed key moved to another row, or a row whose public
//!   key was swapped, does not open;
//! - **one use means one use**: [`Store::take_code`], [`Store::rotate_refresh`] and
//!   [`Store::claim_jti`] each decide in one compare-and-set statement (inside a
//!   transaction), so of two parallel presentations exactly one wins, on either backend;
//! - **taking access away is recorded and seen at once**: [`Store::revoke_family`] and
//!   [`Store::revoke_authorization`] commit with their audit entry and replace the auth
//!   cache generation in the same transaction, like [`Store::revoke_token`].
//!
//! Expiry is the caller's check everywhere (the store returns the times); expired rows are
//! purged as new ones are written.

mod clients;
mod consent;
mod signing;

use sqlx::Row;
use sqlx::any::AnyRow;

use crate::accounts::{TokenRow, commit_recorded_auth, insert_token_in, token_from};
use crate::{AccountChange, AccountSink, Store, StoreError};

pub use consent::AuthorizationRow;
pub use signing::SigningKeyRow;

/// Client type: authenticates with a client secret (the type of clients registered before
/// types existed).
pub const CONFIDENTIAL_SECRET: &str = "confidential-secret";
/// Client type: no credential; the authorization-code grant needs PKCE.
pub const PUBLIC: &str = "public";
/// Client type: authenticates with a signed assertion (`private_key_jwt`) verified with the
/// keys of its `jwks`.
pub const CONFIDENTIAL_JWT: &str = "confidential-jwt";

/// How long a code stays stored after it expired: a code presented again within that time
/// answers [`CodeTake::Replayed`] (so its grant's tokens are revoked) rather than
/// [`CodeTake::Unknown`].
pub const CODE_KEPT_AFTER_EXPIRY_SECS: i64 = 24 * 3600;

/// An authorization code as stored: its SHA-256, never the code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeRow {
    /// SHA-256 of the code as issued.
    pub code_hash: Vec<u8>,
    /// The client it was issued to.
    pub client_id: String,
    /// The user who authorized it.
    pub user_id: String,
    /// The redirect URI of the authorization request (the token request must repeat it).
    pub redirect_uri: String,
    /// Granted scopes, space-separated.
    pub scopes: String,
    /// PKCE `code_challenge` (S256).
    pub code_challenge: String,
    /// The launch patient.
    pub launch_patient: Option<String>,
    /// The launch encounter.
    pub launch_encounter: Option<String>,
    /// OpenID Connect `nonce` of the request, echoed in the id_token.
    pub nonce: Option<String>,
    /// The family of the tokens the code is exchanged for ([`TokenRow::family`]).
    pub family: String,
    /// Unix time.
    pub issued_at: i64,
    /// Unix time (exclusive).
    pub expires_at: i64,
    /// Unix time it was exchanged, if it was.
    pub used_at: Option<i64>,
}

/// The answer of [`Store::take_code`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodeTake {
    /// The code was unused and is now spent (its `used_at` is the time of this take).
    Taken(CodeRow),
    /// The code was spent before: a replay (the caller revokes its family).
    Replayed(CodeRow),
    /// No such code (never issued, or purged).
    Unknown,
}

/// An EHR launch context: what the opaque `launch` parameter stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchRow {
    /// SHA-256 of the `launch` value.
    pub launch_hash: Vec<u8>,
    /// The user who launched.
    pub user_id: String,
    /// The patient open in the EHR.
    pub patient_id: String,
    /// The encounter open in the EHR.
    pub encounter_id: Option<String>,
    /// Unix time.
    pub created_at: i64,
    /// Unix time (exclusive).
    pub expires_at: i64,
}

/// `lines` one per line (`None` for none). A line break inside one would split it on
/// reading: refused.
pub(crate) fn join_lines(lines: &[String]) -> Result<Option<String>, StoreError> {
    if lines.iter().any(|l| l.contains(['\n', '\r'])) {
        return Err(StoreError::Config(
            "a redirect URI holds a line break".to_owned(),
        ));
    }
    Ok((!lines.is_empty()).then(|| lines.join("\n")))
}

/// The lines of [`join_lines`].
pub(crate) fn split_lines(text: Option<&str>) -> Vec<String> {
    text.map(|t| {
        t.split('\n')
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    })
    .unwrap_or_default()
}

const CODE_COLUMNS: &str = "code_hash, client_id, user_id, redirect_uri, scopes, \
     code_challenge, launch_patient, launch_encounter, nonce, family, issued_at, expires_at, \
     used_at";

fn code_from(row: &AnyRow) -> Result<CodeRow, StoreError> {
    Ok(CodeRow {
        code_hash: row.try_get("code_hash")?,
        client_id: row.try_get("client_id")?,
        user_id: row.try_get("user_id")?,
        redirect_uri: row.try_get("redirect_uri")?,
        scopes: row.try_get("scopes")?,
        code_challenge: row.try_get("code_challenge")?,
        launch_patient: row.try_get("launch_patient")?,
        launch_encounter: row.try_get("launch_encounter")?,
        nonce: row.try_get("nonce")?,
        family: row.try_get("family")?,
        issued_at: row.try_get("issued_at")?,
        expires_at: row.try_get("expires_at")?,
        used_at: row.try_get("used_at")?,
    })
}

impl Store {
    // ---- authorization codes ---------------------------------------------------------------

    /// Stores an issued code (its hash), and purges the codes that expired more than
    /// [`CODE_KEPT_AFTER_EXPIRY_SECS`] before it was issued.
    pub async fn insert_code(&self, code: &CodeRow) -> Result<(), StoreError> {
        let tenant = &self.inner.tenant;
        let _guard = self.write_guard().await;
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM oauth_codes WHERE tenant = $1 AND expires_at < $2")
            .bind(tenant)
            .bind(code.issued_at.saturating_sub(CODE_KEPT_AFTER_EXPIRY_SECS))
            .execute(&mut *tx)
            .await?;
        sqlx::query(&format!(
            "INSERT INTO oauth_codes (tenant, {CODE_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
        ))
        .bind(tenant)
        .bind(code.code_hash.as_slice())
        .bind(&code.client_id)
        .bind(&code.user_id)
        .bind(&code.redirect_uri)
        .bind(&code.scopes)
        .bind(&code.code_challenge)
        .bind(code.launch_patient.as_deref())
        .bind(code.launch_encounter.as_deref())
        .bind(code.nonce.as_deref())
        .bind(&code.family)
        .bind(code.issued_at)
        .bind(code.expires_at)
        .bind(code.used_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Spends the code with this hash at `now`: [`CodeTake::Taken`] only for the one call
    /// that finds it unused (the mark is one compare-and-set statement, so of parallel
    /// exchanges exactly one wins), [`CodeTake::Replayed`] for any later one. Whether the
    /// code expired, and whether client, redirect URI and PKCE verifier match, are the
    /// caller's checks (on the row returned).
    pub async fn take_code(&self, code_hash: &[u8], now: i64) -> Result<CodeTake, StoreError> {
        let tenant = &self.inner.tenant;
        let _guard = self.write_guard().await;
        let mut tx = self.begin_write().await?;
        let taken = sqlx::query(
            "UPDATE oauth_codes SET used_at = $1 \
             WHERE code_hash = $2 AND tenant = $3 AND used_at IS NULL",
        )
        .bind(now)
        .bind(code_hash)
        .bind(tenant)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        let row = sqlx::query(&format!(
            "SELECT {CODE_COLUMNS} FROM oauth_codes WHERE code_hash = $1 AND tenant = $2"
        ))
        .bind(code_hash)
        .bind(tenant)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(match row.as_ref().map(code_from).transpose()? {
            None => CodeTake::Unknown,
            Some(code) if taken => CodeTake::Taken(code),
            Some(code) => CodeTake::Replayed(code),
        })
    }

    // ---- token families and refresh --------------------------------------------------------

    /// Stores the tokens of one grant (access and refresh) in one transaction: all or none.
    pub async fn insert_tokens(&self, tokens: &[TokenRow]) -> Result<(), StoreError> {
        let _guard = self.write_guard().await;
        let mut tx = self.begin_write().await?;
        for token in tokens {
            insert_token_in(&mut *tx, &self.inner.tenant, token).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Exchanges a refresh token in one transaction: revokes the refresh token `old_hash` at
    /// `now` and stores `new_tokens`, only if it is an unrevoked refresh token. `false`
    /// (nothing changed) when it is unknown, not a refresh token, or revoked already, which
    /// is how the caller tells a replayed refresh token (of parallel exchanges exactly one
    /// wins). Expiry and client binding are the caller's checks.
    pub async fn rotate_refresh(
        &self,
        old_hash: &[u8],
        now: i64,
        new_tokens: &[TokenRow],
    ) -> Result<bool, StoreError> {
        let tenant = &self.inner.tenant;
        let _guard = self.write_guard().await;
        let mut tx = self.begin_write().await?;
        let done = sqlx::query(
            "UPDATE tokens SET revoked_at = $1 WHERE token_hash = $2 AND tenant = $3 \
             AND kind = 'refresh' AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(old_hash)
        .bind(tenant)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        for token in new_tokens {
            insert_token_in(&mut *tx, tenant, token).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Every token of a family (revoked ones included), in issue order.
    pub async fn tokens_of_family(&self, family: &str) -> Result<Vec<TokenRow>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {} FROM tokens WHERE tenant = $1 AND family = $2 \
             ORDER BY issued_at, token_hash",
            crate::accounts::TOKEN_COLUMNS
        ))
        .bind(&self.inner.tenant)
        .bind(family)
        .fetch_all(&self.inner.pool)
        .await?;
        rows.iter().map(token_from).collect()
    }

    /// Revokes at `now` every unrevoked token of a family (a replayed code or refresh token
    /// compromises the whole grant), committed with `audit`'s record of `change`. Returns the
    /// number of tokens revoked; 0 (nothing recorded) when none was in force.
    pub async fn revoke_family(
        &self,
        family: &str,
        now: i64,
        audit: &dyn AccountSink,
        change: &AccountChange,
    ) -> Result<u64, StoreError> {
        let _guard = self.write_guard().await;
        let mut tx = self.begin_write().await?;
        let revoked = sqlx::query(
            "UPDATE tokens SET revoked_at = $1 \
             WHERE tenant = $2 AND family = $3 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(&self.inner.tenant)
        .bind(family)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if revoked == 0 {
            return Ok(0);
        }
        commit_recorded_auth(tx, &self.inner.tenant, audit, change).await?;
        Ok(revoked)
    }

    // ---- client assertion ids --------------------------------------------------------------

    /// Claims the id `jti` of a client assertion of `client_id`: `true` the first time,
    /// `false` while an earlier claim of it is kept (a replay). `expires_at` must be the
    /// last time the assertion could still be accepted (its `exp` plus any leeway the
    /// verifier allows): the claim is kept until then. Claims expired at `now` are purged.
    pub async fn claim_jti(
        &self,
        client_id: &str,
        jti: &str,
        expires_at: i64,
        now: i64,
    ) -> Result<bool, StoreError> {
        let tenant = &self.inner.tenant;
        let _guard = self.write_guard().await;
        let mut tx = self.begin_write().await?;
        // After this, a row left for (client, jti) is one still in force: the insert below
        // then does nothing.
        sqlx::query("DELETE FROM oauth_jtis WHERE tenant = $1 AND expires_at <= $2")
            .bind(tenant)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        let claimed = sqlx::query(
            "INSERT INTO oauth_jtis (tenant, client_id, jti, expires_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (tenant, client_id, jti) DO NOTHING",
        )
        .bind(tenant)
        .bind(client_id)
        .bind(jti)
        .bind(expires_at)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        tx.commit().await?;
        Ok(claimed)
    }

    // ---- EHR launch contexts ---------------------------------------------------------------

    /// Stores a launch context (its handle's hash), and purges the ones expired when it was
    /// created.
    pub async fn insert_launch(&self, launch: &LaunchRow) -> Result<(), StoreError> {
        let tenant = &self.inner.tenant;
        let _guard = self.write_guard().await;
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM smart_launches WHERE tenant = $1 AND expires_at <= $2")
            .bind(tenant)
            .bind(launch.created_at)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO smart_launches (launch_hash, tenant, user_id, patient_id, \
             encounter_id, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(launch.launch_hash.as_slice())
        .bind(tenant)
        .bind(&launch.user_id)
        .bind(&launch.patient_id)
        .bind(launch.encounter_id.as_deref())
        .bind(launch.created_at)
        .bind(launch.expires_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The launch context with this handle hash (expired or not: the caller checks).
    pub async fn launch(&self, launch_hash: &[u8]) -> Result<Option<LaunchRow>, StoreError> {
        let row = sqlx::query(
            "SELECT launch_hash, user_id, patient_id, encounter_id, created_at, expires_at \
             FROM smart_launches WHERE launch_hash = $1 AND tenant = $2",
        )
        .bind(launch_hash)
        .bind(&self.inner.tenant)
        .fetch_optional(&self.inner.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(LaunchRow {
            launch_hash: row.try_get("launch_hash")?,
            user_id: row.try_get("user_id")?,
            patient_id: row.try_get("patient_id")?,
            encounter_id: row.try_get("encounter_id")?,
            created_at: row.try_get("created_at")?,
            expires_at: row.try_get("expires_at")?,
        }))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn redirect_uris_round_trip_one_per_line() {
        let uris = vec![
            "https://app.example/cb".to_owned(),
            "http://127.0.0.1:8080/callback?x=1".to_owned(),
        ];
        let joined = join_lines(&uris).unwrap();
        assert_eq!(split_lines(joined.as_deref()), uris);
        assert_eq!(join_lines(&[]).unwrap(), None);
        assert!(split_lines(None).is_empty());
        assert!(join_lines(&["https://a.example/\nhttps://b.example/".to_owned()]).is_err());
        assert!(join_lines(&["https://a.example/\r".to_owned()]).is_err());
    }
}
