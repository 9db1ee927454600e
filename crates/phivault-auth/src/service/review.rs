//! What the admin console reviews: break-the-glass accesses (listed with their reviews,
//! reviewed once with a note) and the user accounts (listed with their usernames).
//!
//! What holds:
//! - **A review is an account change**: committed with the caller's audit entry (naming the
//!   patient whose record was reached), or not at all; a claim is reviewed once.
//! - **The reviewer is a person with an active account**, signed in with their second factor
//!   (not an enrolment-only session), and not the person who broke the glass: nobody signs
//!   off their own emergency access. Which roles may review is the caller's decision (the
//!   console lets administrators).
//! - Notes, like reasons, may describe the patient: they are returned to reviewers and never
//!   logged.

use phivault_store::review::{BreakGlassReview, ListedUser, ReviewOutcome};

use super::*;

/// Longest review note, in characters.
pub(crate) const MAX_REVIEW_NOTE_CHARS: usize = 2000;
/// Longest break-the-glass id looked up (ours are UUIDs).
const MAX_CLAIM_ID_LEN: usize = 64;

/// A review note as kept: trimmed, 1 to [`MAX_REVIEW_NOTE_CHARS`] characters, no control
/// characters but line breaks and tabs (`\r\n` kept as typed).
pub(super) fn check_review_note(note: &str) -> Result<&str, ServiceError> {
    let note = note.trim();
    let chars = note.chars().count();
    if chars == 0 || chars > MAX_REVIEW_NOTE_CHARS {
        return Err(ServiceError::Invalid(format!(
            "a review note has 1 to {MAX_REVIEW_NOTE_CHARS} characters"
        )));
    }
    if note
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    {
        return Err(ServiceError::Invalid(
            "a review note has no control characters".to_owned(),
        ));
    }
    Ok(note)
}

impl Accounts {
    /// Every user account (disabled ones included), oldest first, with its username
    /// (administrators only; never log it).
    pub async fn list_users(&self) -> Result<Vec<ListedUser>, ServiceError> {
        Ok(self.store.list_users().await?)
    }

    /// Every break-the-glass claim, newest first, each with its review when it was reviewed.
    pub async fn break_glass_for_review(
        &self,
    ) -> Result<Vec<(BreakGlassRecord, Option<BreakGlassReview>)>, ServiceError> {
        let mut reviews: HashMap<String, BreakGlassReview> = self
            .store
            .break_glass_reviews()
            .await?
            .into_iter()
            .map(|r| (r.id.clone(), r))
            .collect();
        self.list_break_glass()
            .await?
            .into_iter()
            .map(|claim| {
                let review = reviews.remove(&claim.id);
                Ok((claim, review))
            })
            .collect()
    }

    /// How many break-the-glass claims await review.
    pub async fn unreviewed_break_glass(&self) -> Result<u64, ServiceError> {
        Ok(self.store.unreviewed_break_glass_count().await?)
    }

    /// Reviews the break-the-glass claim `id` as `who` with `note` (see
    /// [`check_review_note`]), committed with `audit`'s entry naming the claim's patient.
    /// [`ServiceError::NotFound`] when there is no such claim, [`ServiceError::Invalid`] when
    /// it was reviewed already, when `who` claimed it, or for a note out of bounds.
    pub async fn review_break_glass(
        &self,
        who: &Authenticated,
        id: &str,
        note: &str,
        audit: &dyn AccountSink,
    ) -> Result<(), ServiceError> {
        if who.enrolment_only {
            return Err(ServiceError::EnrolmentRequired);
        }
        if who.client_id.is_some() {
            return Err(ServiceError::Invalid(
                "a review is made by a person's own session, not an app's token".to_owned(),
            ));
        }
        let reviewer = self.user_of(who).await?;
        let note = check_review_note(note)?;
        let missing = || ServiceError::NotFound("break-the-glass access".to_owned());
        if id.is_empty() || id.len() > MAX_CLAIM_ID_LEN {
            return Err(missing());
        }
        let claim = self
            .store
            .break_glass_status(id)
            .await?
            .ok_or_else(missing)?;
        if claim.user_id == reviewer.user_id {
            return Err(ServiceError::Invalid(
                "a break-the-glass access is reviewed by someone other than who claimed it"
                    .to_owned(),
            ));
        }
        let patient = parse_id(&claim.patient_id)?;
        let outcome = self
            .store
            .review_break_glass(
                id,
                &reviewer.user_id,
                note,
                self.now(),
                audit,
                &AccountChange::about_patient(AccountChangeKind::BreakGlassReviewed, &patient),
            )
            .await?;
        match outcome {
            ReviewOutcome::Reviewed => {
                tracing::info!(
                    target: "phivault::auth",
                    reviewer = %reviewer.user_id,
                    id,
                    "break-the-glass access reviewed"
                );
                Ok(())
            }
            ReviewOutcome::Already => Err(ServiceError::Invalid(
                "this break-the-glass access was reviewed already".to_owned(),
            )),
            ReviewOutcome::Missing => Err(missing()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn review_notes_are_trimmed_and_bounded() {
        assert!(matches!(
            check_review_note("  Checked with the ward: emergency admission.\n"),
            Ok("Checked with the ward: emergency admission.")
        ));
        assert!(matches!(
            check_review_note("line one\r\nline two\tend"),
            Ok("line one\r\nline two\tend")
        ));
        for bad in ["", "   \n ", "bell\u{7}", "nul\u{0}"] {
            assert!(check_review_note(bad).is_err(), "{bad:?}");
        }
        let longest = "é".repeat(MAX_REVIEW_NOTE_CHARS);
        assert!(check_review_note(&longest).is_ok());
        assert!(check_review_note(&format!("{longest}x")).is_err());
    }
}
