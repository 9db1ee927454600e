//! OpenID Connect: the server's id_token signing keys (kept sealed in the store), their
//! rotation with an overlap period, the published JWKS, and signed id_tokens.
//!
//! The newest key that is not retired signs. A key is replaced after
//! [`SIGNING_KEY_ROTATE_SECS`]; the key it replaces stays in the JWKS for
//! [`SIGNING_KEY_OVERLAP_SECS`] more, so an app that fetched the JWKS before the rotation
//! still verifies a token signed just before it, and one that sees an unknown `kid` refetches.
//! Several nodes may each create a key at the same moment: both are published, either signs,
//! and the older is retired after the overlap.

use serde_json::json;

use super::*;
use crate::jwt::SigningKey;

/// A signing key signs for 90 days.
pub const SIGNING_KEY_ROTATE_SECS: i64 = 90 * 24 * 3600;
/// A replaced key stays published for a day.
pub const SIGNING_KEY_OVERLAP_SECS: i64 = 24 * 3600;
/// How long an id_token is valid.
const ID_TOKEN_LIFETIME_SECS: i64 = 600;

/// What an id_token says (OpenID Connect Core §2, SMART `fhirUser`).
#[derive(Debug, Clone)]
pub struct IdTokenClaims {
    /// `iss`: the server's issuer URL (the FHIR base).
    pub issuer: String,
    /// `sub`: the user id.
    pub subject: String,
    /// `aud`: the client id.
    pub audience: String,
    /// `fhirUser`: absolute URL of the user's Patient or Practitioner, when linked.
    pub fhir_user: Option<String>,
    /// `nonce` of the authorization request.
    pub nonce: Option<String>,
}

impl Accounts {
    /// Makes sure a signing key is in force: creates one when none is, or when the newest is
    /// older than [`SIGNING_KEY_ROTATE_SECS`] (or always, with `force`), and retires keys
    /// replaced more than [`SIGNING_KEY_OVERLAP_SECS`] ago. Returns the kid that signs.
    pub async fn ensure_signing_key(&self, force: bool) -> Result<String, ServiceError> {
        let now = self.now();
        let mut keys = self.store.signing_keys().await?;
        keys.retain(|k| k.retired_at.is_none());
        keys.sort_by_key(|k| k.created_at);
        let stale = keys
            .last()
            .is_none_or(|k| now.saturating_sub(k.created_at) >= SIGNING_KEY_ROTATE_SECS);
        let newest = if force || stale {
            let key = SigningKey::generate().map_err(internal)?;
            self.store
                .insert_signing_key(&phivault_store::oauth::SigningKeyRow {
                    kid: key.kid().to_owned(),
                    alg: "RS256".to_owned(),
                    private_der: key.private_der().clone(),
                    public_jwk: key.public_jwk().to_string(),
                    created_at: now,
                    retired_at: None,
                })
                .await?;
            tracing::info!(target: "phivault::auth", kid = key.kid(), "OpenID Connect signing key created");
            (key.kid().to_owned(), now)
        } else {
            keys.last()
                .map(|k| (k.kid.clone(), k.created_at))
                .ok_or_else(|| internal("no signing key"))?
        };
        // A key is replaced when a newer one exists; retire it once the overlap has passed
        // since its successor was created.
        for pair in keys.windows(2) {
            if let [old, successor] = pair
                && now.saturating_sub(successor.created_at) >= SIGNING_KEY_OVERLAP_SECS
            {
                self.store.retire_signing_key(&old.kid, now).await?;
            }
        }
        if let Some(old) = keys.last().filter(|k| k.kid != newest.0)
            && now.saturating_sub(newest.1) >= SIGNING_KEY_OVERLAP_SECS
        {
            self.store.retire_signing_key(&old.kid, now).await?;
        }
        Ok(newest.0)
    }

    /// The published keys (`{"keys": [...]}`): every key not retired.
    pub async fn jwks(&self) -> Result<Value, ServiceError> {
        let mut keys = Vec::new();
        for k in self.store.signing_keys().await? {
            if k.retired_at.is_none() {
                keys.push(serde_json::from_str::<Value>(&k.public_jwk).map_err(internal)?);
            }
        }
        Ok(json!({ "keys": keys }))
    }

    /// A signed id_token (RS256, the newest key; one is created when none is in force).
    pub async fn id_token(&self, claims: &IdTokenClaims) -> Result<String, ServiceError> {
        let kid = self.ensure_signing_key(false).await?;
        let row = self
            .store
            .signing_keys()
            .await?
            .into_iter()
            .find(|k| k.kid == kid)
            .ok_or_else(|| internal("the signing key vanished"))?;
        let key = SigningKey::from_der(&row.kid, &row.private_der).map_err(internal)?;
        let now = self.now();
        let mut body = json!({
            "iss": claims.issuer,
            "sub": claims.subject,
            "aud": claims.audience,
            "iat": now,
            "exp": now.saturating_add(ID_TOKEN_LIFETIME_SECS),
        });
        if let Some(fhir_user) = &claims.fhir_user {
            body["fhirUser"] = json!(fhir_user);
        }
        if let Some(nonce) = &claims.nonce {
            body["nonce"] = json!(nonce);
        }
        key.sign(&body).map_err(internal)
    }

    /// The `fhirUser` of a user, relative (`Patient/1`, `Practitioner/2`), when linked.
    pub async fn fhir_user(&self, user_id: &str) -> Result<Option<String>, ServiceError> {
        let Some(user) = self.store.user_by_id(user_id).await? else {
            return Ok(None);
        };
        Ok(match (&user.patient_id, &user.practitioner_id) {
            (Some(p), _) if user.role == Role::Patient.as_str() => Some(format!("Patient/{p}")),
            (_, Some(p)) => Some(format!("Practitioner/{p}")),
            _ => None,
        })
    }
}
