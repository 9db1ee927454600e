//! Authenticating bearer tokens, with a bounded in-memory cache of verified tokens.
//!
//! Verifying a token reads its row, its client and its user. The cache keeps what that
//! verification answered ([`Authenticated`]) with the token's expiry, keyed by the token's
//! SHA-256 (never the token), and tagged with the auth generation
//! ([`phivault_store::Generation::Auth`]) read *before* the rows were. Every change that
//! alters what verification would answer (revocation, a user or client disabled, a patient or
//! Practitioner link, a second factor confirmed, an erasure, a restore) writes a fresh
//! generation in its own transaction, in whatever process makes it.
//!
//! What this keeps:
//! - **Revocation binds the next request.** Each request reads the generation (one indexed
//!   row) before it uses the cache; a change committed before that read gives another value,
//!   which drops every entry. An entry is only trusted under the value it was verified at.
//! - **No entry is newer-labelled than its rows.** The generation is read before the rows, so
//!   an entry verified across a concurrent change carries the old value and is dropped at the
//!   next request; an entry is stored only while the cache still holds the value it was read
//!   under.
//! - **Expiry is checked on every use**, against this service's clock.
//! - **Only successes are cached**; a refused token is verified again on each presentation.
//! - **Bounded**: at most [`MAX_VERIFIED_TOKENS`] entries; expired ones go first, then
//!   arbitrary ones (a dropped entry only costs one verification).
//! - Without a generation row (a database restored from an archive older than generations)
//!   nothing is cached.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use phivault_policy::{PrincipalRef, Role, ScopeSet};
use phivault_store::Generation;

use super::{Accounts, Authenticated, ServiceError, internal, parse_id};
use crate::token;
use crate::{TokenHash, TokenKind, TokenRecord};

/// Most verified tokens kept at once.
pub const MAX_VERIFIED_TOKENS: usize = 10_000;

/// One verified token.
struct Verified {
    who: Authenticated,
    /// Unix time the token expires.
    expires_at: i64,
}

#[derive(Default)]
struct Entries {
    /// The generation every entry was verified at.
    generation: Option<i64>,
    by_hash: HashMap<[u8; 32], Verified>,
}

/// The cache of verified tokens (see the module docs). Shared by the clones of a service.
pub(super) struct VerifiedTokens {
    entries: Mutex<Entries>,
    capacity: usize,
}

impl std::fmt::Debug for VerifiedTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedTokens").finish_non_exhaustive()
    }
}

impl VerifiedTokens {
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            entries: Mutex::new(Entries::default()),
            capacity,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        // The map is valid after a panic elsewhere (each operation leaves it whole).
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The principal verified for `hash` at `generation`, unless it expired by `now`. A
    /// generation other than the cache's drops every entry first.
    fn get(&self, hash: &[u8; 32], generation: i64, now: i64) -> Option<Authenticated> {
        let mut entries = self.lock();
        if entries.generation != Some(generation) {
            entries.by_hash.clear();
            entries.generation = Some(generation);
            return None;
        }
        match entries.by_hash.get(hash) {
            Some(v) if now < v.expires_at => Some(v.who.clone()),
            Some(_) => {
                entries.by_hash.remove(hash);
                None
            }
            None => None,
        }
    }

    /// Keeps `who` for `hash`, verified from rows read after `generation` was; nothing is
    /// kept when the cache has moved to another generation meanwhile.
    fn insert(&self, hash: [u8; 32], generation: i64, verified: Verified, now: i64) {
        let mut entries = self.lock();
        if entries.generation != Some(generation) {
            return;
        }
        if entries.by_hash.len() >= self.capacity {
            entries.by_hash.retain(|_, v| now < v.expires_at);
        }
        while entries.by_hash.len() >= self.capacity {
            let Some(first) = entries.by_hash.keys().next().copied() else {
                break;
            };
            entries.by_hash.remove(&first);
        }
        if self.capacity > 0 {
            entries.by_hash.insert(hash, verified);
        }
    }

    /// How many tokens are cached now (for tests and diagnostics).
    fn len(&self) -> usize {
        self.lock().by_hash.len()
    }
}

fn fail(why: &'static str) -> ServiceError {
    tracing::debug!(target: "phivault::auth", why, "bearer token refused");
    ServiceError::CredentialFailure
}

impl Accounts {
    /// Who a bearer token speaks for (session or access token).
    pub async fn authenticate(&self, bearer: &str) -> Result<Authenticated, ServiceError> {
        // Read before the rows (see the module docs).
        let generation = self.store.generation(Generation::Auth).await?;
        self.authenticate_under(bearer, generation).await
    }

    /// [`Accounts::authenticate`] under an auth generation the caller read (with the other
    /// generations, `phivault_store::Store::generations`) before calling: the verified-token
    /// cache answers only for tokens verified under that same value.
    pub async fn authenticate_under(
        &self,
        bearer: &str,
        generation: Option<i64>,
    ) -> Result<Authenticated, ServiceError> {
        let (kind, hash) = token::parse(bearer).map_err(|_| fail("malformed"))?;
        if !matches!(kind, TokenKind::Session | TokenKind::Access) {
            return Err(fail("not a session or access token"));
        }
        let now = self.now();
        if let Some(g) = generation
            && let Some(who) = self.verified.get(hash.as_bytes(), g, now)
        {
            return Ok(who);
        }
        let verified = self.verify_token(kind, &hash, now).await?;
        let who = verified.who.clone();
        if let Some(g) = generation {
            self.verified.insert(*hash.as_bytes(), g, verified, now);
        }
        Ok(who)
    }

    /// How many verified tokens this service keeps now (for tests and diagnostics).
    pub fn verified_tokens(&self) -> usize {
        self.verified.len()
    }

    /// Verifies a token from its stored row, its client and its user.
    async fn verify_token(
        &self,
        kind: TokenKind,
        hash: &TokenHash,
        now: i64,
    ) -> Result<Verified, ServiceError> {
        let row = self
            .store
            .token(hash.as_bytes())
            .await?
            .ok_or_else(|| fail("unknown"))?;
        let record = TokenRecord {
            hash: <[u8; 32]>::try_from(row.token_hash.as_slice())
                .map(TokenHash::from_bytes)
                .map_err(|_| fail("stored hash length"))?,
            kind: row
                .kind
                .parse::<TokenKind>()
                .map_err(|_| fail("stored kind"))?,
            principal_id: row.principal_id,
            client_id: row.client_id,
            scopes: row.scopes,
            issued_at: row.issued_at,
            expires_at: row.expires_at,
            revoked_at: row.revoked_at,
        };
        record
            .check(now, kind, None)
            .map_err(|_| fail("expired, revoked or of another kind"))?;
        let expires_at = record.expires_at;
        let launch_patient = row.launch_patient.as_deref().map(parse_id).transpose()?;
        if let Some(client_id) = record.client_id.as_deref() {
            // A token bound to a client stops working when the client is disabled.
            match self.store.client(client_id).await? {
                Some(c) if c.disabled_at.is_none() => {}
                _ => return Err(fail("client unknown or disabled")),
            }
        }
        if kind == TokenKind::Access
            && let Some(client_id) = record
                .client_id
                .as_deref()
                .filter(|c| *c == record.principal_id)
        {
            // A client acting on its own (client credentials).
            let scopes = ScopeSet::parse(&record.scopes).map_err(internal)?;
            let mut principal = PrincipalRef::client(client_id, scopes).map_err(internal)?;
            if let Some(p) = launch_patient {
                principal = principal.with_launch_patient(p);
            }
            return Ok(Verified {
                who: Authenticated {
                    principal,
                    practitioner: None,
                    client_id: Some(client_id.to_owned()),
                    enrolment_only: false,
                },
                expires_at,
            });
        }
        let user = match self.store.user_by_id(&record.principal_id).await? {
            Some(u) if u.disabled_at.is_none() => u,
            _ => return Err(fail("account unknown or disabled")),
        };
        let role = Role::parse(&user.role).map_err(internal)?;
        let mut principal = PrincipalRef::user(&user.user_id, role).map_err(internal)?;
        if role == Role::Patient
            && let Some(p) = &user.patient_id
        {
            principal = principal
                .with_linked_patient(parse_id(p)?)
                .map_err(internal)?;
        }
        if kind == TokenKind::Access {
            // A user acting through an app: the token's scopes narrow what the user may do.
            principal = principal.with_scopes(ScopeSet::parse(&record.scopes).map_err(internal)?);
            if let Some(p) = launch_patient {
                principal = principal.with_launch_patient(p);
            }
        }
        let practitioner = user.practitioner_id.as_deref().map(parse_id).transpose()?;
        Ok(Verified {
            who: Authenticated {
                principal,
                practitioner,
                client_id: record.client_id,
                enrolment_only: kind == TokenKind::Session
                    && self.second_factor_required(role)
                    && !user.totp_enabled,
            },
            expires_at,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn who(id: &str) -> Authenticated {
        Authenticated {
            principal: PrincipalRef::user(id, Role::Clinician).unwrap(),
            practitioner: None,
            client_id: None,
            enrolment_only: false,
        }
    }

    fn verified(id: &str, expires_at: i64) -> Verified {
        Verified {
            who: who(id),
            expires_at,
        }
    }

    #[test]
    fn an_entry_serves_only_its_generation_and_until_expiry() {
        let c = VerifiedTokens::new(8);
        assert!(c.get(&[1; 32], 7, 100).is_none());
        c.insert([1; 32], 7, verified("u1", 200), 100);
        assert_eq!(c.get(&[1; 32], 7, 199).unwrap().principal.id(), "u1");
        // Expired: refused and dropped.
        assert!(c.get(&[1; 32], 7, 200).is_none());
        assert_eq!(c.len(), 0);
        c.insert([1; 32], 7, verified("u1", 200), 100);
        // Another generation drops everything, and an old one is not taken back.
        assert!(c.get(&[1; 32], 8, 100).is_none());
        assert_eq!(c.len(), 0);
        assert!(c.get(&[1; 32], 7, 100).is_none());
    }

    #[test]
    fn an_entry_verified_at_a_superseded_generation_is_not_kept() {
        let c = VerifiedTokens::new(8);
        assert!(c.get(&[1; 32], 7, 100).is_none());
        // Another request saw a change meanwhile.
        assert!(c.get(&[2; 32], 8, 100).is_none());
        c.insert([1; 32], 7, verified("u1", 200), 100);
        assert_eq!(c.len(), 0);
        assert!(c.get(&[1; 32], 8, 100).is_none());
    }

    #[test]
    fn the_cache_is_bounded_and_drops_expired_entries_first() {
        let c = VerifiedTokens::new(2);
        assert!(c.get(&[0; 32], 1, 0).is_none());
        c.insert([1; 32], 1, verified("u1", 10), 0);
        c.insert([2; 32], 1, verified("u2", 100), 0);
        c.insert([3; 32], 1, verified("u3", 100), 50);
        assert_eq!(c.len(), 2);
        assert!(c.get(&[1; 32], 1, 50).is_none());
        assert!(c.get(&[2; 32], 1, 50).is_some());
        assert!(c.get(&[3; 32], 1, 50).is_some());
        c.insert([4; 32], 1, verified("u4", 100), 50);
        assert_eq!(c.len(), 2);
        assert!(c.get(&[4; 32], 1, 50).is_some());
    }
}
