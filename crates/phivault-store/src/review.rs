//! What the admin console reviews: the review of break-the-glass accesses, and the list of
//! user accounts with their usernames opened.
//!
//! What holds:
//! - **A claim is reviewed once.** [`Store::review_break_glass`] sets the review in one
//!   compare-and-set update (`reviewed_at IS NULL`), so two reviewers racing cannot both
//!   write one; the second learns it was reviewed already ([`ReviewOutcome::Already`]).
//! - **The note is sealed like the reason** (it may describe the patient): AES-256-GCM under
//!   the tenant's directory data key, bound (associated data) to the tenant, the claim (id,
//!   claimant, patient), the reviewer and the review time. A note moved to another claim or
//!   another review, or a review time changed, no longer opens: reported as
//!   [`StoreError::Integrity`], never shown.
//! - **A review is an account change**: it commits in one transaction with what the
//!   caller's [`AccountSink`] records (the request's audit entry); a failing sink rolls it
//!   back. A review that does not happen (no such claim, reviewed already) records nothing.
//! - **Usernames are opened for administrators only** ([`Store::list_users`]); the listing's
//!   `Debug` leaves them out.
//! - Erasing a patient deletes their claims, and the reviews with them (they are columns of
//!   the claim's row).

use std::fmt;

use sqlx::Row;
use sqlx::any::AnyRow;

use crate::accounts::{UserRow, commit_recorded};
use crate::{AccountChange, AccountSink, Store, StoreError};

/// Longest review note kept, in bytes (the service sets the limit people see).
const MAX_NOTE_BYTES: usize = 16 * 1024;

/// The review of one break-the-glass claim, its note opened.
#[derive(Clone, PartialEq, Eq)]
pub struct BreakGlassReview {
    /// The claim reviewed.
    pub id: String,
    /// Unix time of the review.
    pub reviewed_at: i64,
    /// Who reviewed (a user id).
    pub reviewer_id: String,
    /// The reviewer's note (may describe the patient: reviewers only, never logged).
    pub note: String,
}

impl fmt::Debug for BreakGlassReview {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakGlassReview")
            .field("id", &self.id)
            .field("reviewed_at", &self.reviewed_at)
            .field("reviewer_id", &self.reviewer_id)
            .finish_non_exhaustive()
    }
}

/// What [`Store::review_break_glass`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReviewOutcome {
    /// The review was written (and recorded by the sink).
    Reviewed,
    /// The claim was reviewed already: nothing written, nothing recorded.
    Already,
    /// No claim with this id in the tenant: nothing written, nothing recorded.
    Missing,
}

/// A break-the-glass claim's fixed facts and review time (no reason, no note).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimStatus {
    /// Who claimed.
    pub user_id: String,
    /// For which patient.
    pub patient_id: String,
    /// Unix time it was reviewed, if it was.
    pub reviewed_at: Option<i64>,
}

/// A user account as the console lists it, its username opened. `Debug` leaves the
/// username out.
#[derive(Clone, PartialEq, Eq)]
pub struct ListedUser {
    /// Account id.
    pub user_id: String,
    /// The username (sealed at rest; never log it).
    pub username: String,
    /// Role name.
    pub role: String,
    /// Whether a second factor is on.
    pub totp_enabled: bool,
    /// Unix time a login lock ends, if the account was locked.
    pub locked_until: Option<i64>,
    /// Linked Patient id (patient users).
    pub patient_id: Option<String>,
    /// Linked Practitioner id (clinicians).
    pub practitioner_id: Option<String>,
    /// Unix time created.
    pub created_at: i64,
    /// Unix time disabled, if it was.
    pub disabled_at: Option<i64>,
}

impl fmt::Debug for ListedUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ListedUser")
            .field("user_id", &self.user_id)
            .field("role", &self.role)
            .field("totp_enabled", &self.totp_enabled)
            .field("disabled_at", &self.disabled_at)
            .finish_non_exhaustive()
    }
}

/// The associated data of a review note: the claim, the reviewer, the time and the key.
fn note_aad(
    tenant: &str,
    claim: &Claim,
    reviewer_id: &str,
    reviewed_at: i64,
    key_id: &str,
) -> Vec<u8> {
    format!(
        "phivault/break-glass|{tenant}|{}|{}|{}|review|{reviewer_id}|{reviewed_at}|{key_id}",
        claim.id, claim.user_id, claim.patient_id
    )
    .into_bytes()
}

/// The fixed columns of a claim a note is bound to.
struct Claim {
    id: String,
    user_id: String,
    patient_id: String,
}

impl Store {
    /// Reviews the break-the-glass claim `id` at `reviewed_at` by `reviewer_id` with `note`
    /// (sealed), committed with `audit`'s record of `change`. Only an unreviewed claim is
    /// reviewed: see [`ReviewOutcome`].
    pub async fn review_break_glass(
        &self,
        id: &str,
        reviewer_id: &str,
        note: &str,
        reviewed_at: i64,
        audit: &dyn AccountSink,
        change: &AccountChange,
    ) -> Result<ReviewOutcome, StoreError> {
        if note.len() > MAX_NOTE_BYTES {
            return Err(StoreError::Config(format!(
                "a review note has at most {MAX_NOTE_BYTES} bytes"
            )));
        }
        let tenant = &self.inner.tenant;
        // The claimant and patient never change once written: read outside the transaction
        // to bind the note to them; the update below decides whether it is still unreviewed.
        let Some(status) = self.break_glass_status(id).await? else {
            return Ok(ReviewOutcome::Missing);
        };
        if status.reviewed_at.is_some() {
            return Ok(ReviewOutcome::Already);
        }
        let claim = Claim {
            id: id.to_owned(),
            user_id: status.user_id,
            patient_id: status.patient_id,
        };
        let key = self.directory_key().await?;
        let sealed = key.sealer.seal(
            &note_aad(tenant, &claim, reviewer_id, reviewed_at, &key.key_id),
            note.as_bytes(),
        )?;
        let _guard = self.write_guard().await;
        let mut tx = self.begin_write().await?;
        let done = sqlx::query(
            "UPDATE break_glass SET reviewed_at = $1, reviewer_id = $2, \
             review_note_sealed = $3 WHERE tenant = $4 AND id = $5 AND reviewed_at IS NULL",
        )
        .bind(reviewed_at)
        .bind(reviewer_id)
        .bind(sealed)
        .bind(tenant)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            // Another review won the race (the claim cannot have vanished but by erasure,
            // which is also "nothing to review"). Dropping the transaction rolls it back.
            return Ok(ReviewOutcome::Already);
        }
        commit_recorded(tx, audit, change).await?;
        Ok(ReviewOutcome::Reviewed)
    }

    /// Who claimed break-the-glass access `id`, for which patient, and when it was reviewed
    /// (the reason is not opened); `None` when the tenant has no such claim.
    pub async fn break_glass_status(&self, id: &str) -> Result<Option<ClaimStatus>, StoreError> {
        let row = sqlx::query(
            "SELECT user_id, patient_id, reviewed_at FROM break_glass \
             WHERE tenant = $1 AND id = $2",
        )
        .bind(&self.inner.tenant)
        .bind(id)
        .fetch_optional(&self.inner.pool)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        Ok(Some(ClaimStatus {
            user_id: row.try_get("user_id")?,
            patient_id: row.try_get("patient_id")?,
            reviewed_at: row.try_get("reviewed_at")?,
        }))
    }

    /// Every review of the tenant's break-the-glass claims, newest review first, notes
    /// opened.
    pub async fn break_glass_reviews(&self) -> Result<Vec<BreakGlassReview>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, user_id, patient_id, reviewed_at, reviewer_id, review_note_sealed \
             FROM break_glass WHERE tenant = $1 AND reviewed_at IS NOT NULL \
             ORDER BY reviewed_at DESC, id",
        )
        .bind(&self.inner.tenant)
        .fetch_all(&self.inner.pool)
        .await?;
        self.review_rows(&rows).await
    }

    /// How many break-the-glass claims await review.
    pub async fn unreviewed_break_glass_count(&self) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query(
            "SELECT COUNT(*) AS n FROM break_glass WHERE tenant = $1 AND reviewed_at IS NULL",
        )
        .bind(&self.inner.tenant)
        .fetch_one(&self.inner.pool)
        .await?
        .try_get("n")?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn review_rows(&self, rows: &[AnyRow]) -> Result<Vec<BreakGlassReview>, StoreError> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let key = self.directory_key().await?;
        let tenant = &self.inner.tenant;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let claim = Claim {
                id: row.try_get("id")?,
                user_id: row.try_get("user_id")?,
                patient_id: row.try_get("patient_id")?,
            };
            let reviewed_at: i64 = row.try_get("reviewed_at")?;
            let reviewer_id: Option<String> = row.try_get("reviewer_id")?;
            let sealed: Option<Vec<u8>> = row.try_get("review_note_sealed")?;
            let (Some(reviewer_id), Some(sealed)) = (reviewer_id, sealed) else {
                return Err(self.account_integrity(&claim.id, "break-the-glass review is partial"));
            };
            let plain = key
                .sealer
                .open(
                    &note_aad(tenant, &claim, &reviewer_id, reviewed_at, &key.key_id),
                    &sealed,
                )
                .map_err(|_| {
                    self.account_integrity(&claim.id, "break-the-glass review note does not open")
                })?;
            let note = String::from_utf8(plain).map_err(|_| {
                self.account_integrity(&claim.id, "break-the-glass review note is not text")
            })?;
            out.push(BreakGlassReview {
                id: claim.id,
                reviewed_at,
                reviewer_id,
                note,
            });
        }
        Ok(out)
    }

    /// Every user account of the tenant (disabled ones included), oldest first, usernames
    /// opened (administrators only; never log them).
    pub async fn list_users(&self) -> Result<Vec<ListedUser>, StoreError> {
        let rows = sqlx::query(
            "SELECT user_id, role, totp_enabled, totp_last_step, failed_logins, locked_until, \
             patient_id, practitioner_id, profile_sealed, created_at, disabled_at \
             FROM users WHERE tenant = $1 ORDER BY created_at, user_id",
        )
        .bind(&self.inner.tenant)
        .fetch_all(&self.inner.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let user = UserRow {
                user_id: row.try_get("user_id")?,
                role: row.try_get("role")?,
                // Neither read nor listed: only the profile is opened here.
                password_hash: String::new(),
                totp_sealed: None,
                totp_enabled: row.try_get::<i64, _>("totp_enabled")? != 0,
                totp_last_step: row.try_get("totp_last_step")?,
                failed_logins: row.try_get("failed_logins")?,
                locked_until: row.try_get("locked_until")?,
                patient_id: row.try_get("patient_id")?,
                practitioner_id: row.try_get("practitioner_id")?,
                profile_sealed: row.try_get("profile_sealed")?,
                created_at: row.try_get("created_at")?,
                disabled_at: row.try_get("disabled_at")?,
            };
            let username = self.user_username(&user).await?;
            out.push(ListedUser {
                user_id: user.user_id,
                username,
                role: user.role,
                totp_enabled: user.totp_enabled,
                locked_until: user.locked_until,
                patient_id: user.patient_id,
                practitioner_id: user.practitioner_id,
                created_at: user.created_at,
                disabled_at: user.disabled_at,
            });
        }
        Ok(out)
    }
}
