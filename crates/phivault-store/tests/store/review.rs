//! Break-the-glass reviews (once, sealed notes bound to their claim and review, committed
//! with the audit sink's record) and the user list with opened usernames, on each backend.

use phivault_store::accounts::{BreakGlassRow, NewUser};
use phivault_store::review::ReviewOutcome;
use phivault_store::{
    AccountChange, AccountChangeKind, AccountSink, NoAudit, SinkFuture, Store, StoreError,
};
use sqlx::{AnyConnection, Row};

use super::fixtures;

fn reviewed() -> AccountChange {
    AccountChange::new(AccountChangeKind::BreakGlassReviewed)
}

/// A sink that refuses to record: the review must roll back with it.
struct RefusingSink;

impl AccountSink for RefusingSink {
    fn record_account<'a>(
        &'a self,
        _: &'a mut AnyConnection,
        _: &'a AccountChange,
    ) -> SinkFuture<'a> {
        Box::pin(async { Err(StoreError::Config("the audit trail refused".to_owned())) })
    }
}

async fn user(s: &Store, id: &str, username: &str, role: &str, created_at: i64) {
    let new = NewUser {
        user_id: id.to_owned(),
        username: username.to_owned(),
        role: role.to_owned(),
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2g".to_owned(),
        created_at,
    };
    let change = AccountChange::new(AccountChangeKind::UserCreated);
    assert!(s.insert_user(&new, &NoAudit, &change).await.unwrap());
}

async fn claim(s: &Store, id: &str, patient: &str, started_at: i64) {
    s.insert_break_glass(&BreakGlassRow {
        id: id.to_owned(),
        user_id: "u-clin".to_owned(),
        patient_id: patient.to_owned(),
        reason: format!("Unconscious on arrival, no consent possible ({id})"),
        started_at,
        expires_at: started_at + 3600,
    })
    .await
    .unwrap();
}

/// Two users (a clinician who breaks the glass, an admin who reviews) and two claims.
async fn setup(s: &Store) {
    user(s, "u-clin", "Dr Claimant", "clinician", 10).await;
    user(s, "u-admin", "Reviewer Admin", "admin", 20).await;
    claim(s, "bg-1", "p-1", 1_000).await;
    claim(s, "bg-2", "p-2", 2_000).await;
}

#[tokio::test]
async fn a_claim_is_reviewed_once_with_its_note_sealed() {
    for f in fixtures().await {
        let s = &f.store;
        setup(s).await;
        assert_eq!(
            s.unreviewed_break_glass_count().await.unwrap(),
            2,
            "{}",
            f.label
        );
        assert!(s.break_glass_reviews().await.unwrap().is_empty());
        let status = s.break_glass_status("bg-1").await.unwrap().unwrap();
        assert_eq!(
            (
                status.user_id.as_str(),
                status.patient_id.as_str(),
                status.reviewed_at
            ),
            ("u-clin", "p-1", None)
        );
        assert!(s.break_glass_status("bg-none").await.unwrap().is_none());

        let note = "Confirmed with the ward: emergency admission, access justified.";
        let outcome = s
            .review_break_glass("bg-1", "u-admin", note, 5_000, &NoAudit, &reviewed())
            .await
            .unwrap();
        assert_eq!(outcome, ReviewOutcome::Reviewed, "{}", f.label);
        assert_eq!(s.unreviewed_break_glass_count().await.unwrap(), 1);
        assert_eq!(
            s.break_glass_status("bg-1")
                .await
                .unwrap()
                .unwrap()
                .reviewed_at,
            Some(5_000)
        );
        let reviews = s.break_glass_reviews().await.unwrap();
        assert_eq!(reviews.len(), 1);
        let r = &reviews[0];
        assert_eq!(
            (
                r.id.as_str(),
                r.reviewer_id.as_str(),
                r.reviewed_at,
                r.note.as_str()
            ),
            ("bg-1", "u-admin", 5_000, note)
        );
        // Debug never shows the note.
        assert!(!format!("{r:?}").contains("ward"));

        // Once only: a second review, even another reviewer's, changes and records nothing.
        let again = s
            .review_break_glass(
                "bg-1",
                "u-clin",
                "overwrite",
                6_000,
                &RefusingSink,
                &reviewed(),
            )
            .await
            .unwrap();
        assert_eq!(again, ReviewOutcome::Already, "{}", f.label);
        assert_eq!(s.break_glass_reviews().await.unwrap()[0].note, note);
        let missing = s
            .review_break_glass("bg-none", "u-admin", "x", 6_000, &RefusingSink, &reviewed())
            .await
            .unwrap();
        assert_eq!(missing, ReviewOutcome::Missing);

        // At rest the note is sealed: the text is nowhere in the row.
        let row = sqlx::query("SELECT review_note_sealed FROM break_glass WHERE id = 'bg-1'")
            .fetch_one(s.pool())
            .await
            .unwrap();
        let sealed: Vec<u8> = row.try_get("review_note_sealed").unwrap();
        assert!(
            !sealed.windows(9).any(|w| w == b"Confirmed"),
            "{}: the note is in the clear",
            f.label
        );
    }
}

#[tokio::test]
async fn a_review_whose_audit_record_fails_is_rolled_back() {
    for f in fixtures().await {
        let s = &f.store;
        setup(s).await;
        let e = s
            .review_break_glass(
                "bg-2",
                "u-admin",
                "looked fine",
                5_000,
                &RefusingSink,
                &reviewed(),
            )
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::Config(_)), "{}: {e:?}", f.label);
        assert_eq!(s.unreviewed_break_glass_count().await.unwrap(), 2);
        assert_eq!(
            s.break_glass_status("bg-2")
                .await
                .unwrap()
                .unwrap()
                .reviewed_at,
            None
        );
        // And it can be reviewed afterwards.
        let outcome = s
            .review_break_glass(
                "bg-2",
                "u-admin",
                "looked fine",
                5_001,
                &NoAudit,
                &reviewed(),
            )
            .await
            .unwrap();
        assert_eq!(outcome, ReviewOutcome::Reviewed);
    }
}

#[tokio::test]
async fn a_note_opens_only_on_its_own_claim_and_review() {
    for f in fixtures().await {
        let s = &f.store;
        setup(s).await;
        s.review_break_glass("bg-1", "u-admin", "note one", 5_000, &NoAudit, &reviewed())
            .await
            .unwrap();
        // The review's time changed at rest: the note no longer opens.
        sqlx::query("UPDATE break_glass SET reviewed_at = 5001 WHERE id = 'bg-1'")
            .execute(s.pool())
            .await
            .unwrap();
        let e = s.break_glass_reviews().await.unwrap_err();
        assert!(
            matches!(e, StoreError::Integrity { .. }),
            "{}: {e:?}",
            f.label
        );
        sqlx::query("UPDATE break_glass SET reviewed_at = 5000 WHERE id = 'bg-1'")
            .execute(s.pool())
            .await
            .unwrap();
        assert_eq!(s.break_glass_reviews().await.unwrap().len(), 1);

        // The sealed note copied onto another claim, same reviewer and time: refused.
        sqlx::query(
            "UPDATE break_glass SET reviewed_at = 5000, reviewer_id = 'u-admin', \
             review_note_sealed = (SELECT review_note_sealed FROM break_glass WHERE id = 'bg-1') \
             WHERE id = 'bg-2'",
        )
        .execute(s.pool())
        .await
        .unwrap();
        let e = s.break_glass_reviews().await.unwrap_err();
        assert!(
            matches!(e, StoreError::Integrity { .. }),
            "{}: {e:?}",
            f.label
        );

        // A review time without a reviewer or note is not a review: refused, not shown.
        sqlx::query(
            "UPDATE break_glass SET reviewer_id = NULL, review_note_sealed = NULL \
             WHERE id = 'bg-2'",
        )
        .execute(s.pool())
        .await
        .unwrap();
        let e = s.break_glass_reviews().await.unwrap_err();
        assert!(
            matches!(e, StoreError::Integrity { .. }),
            "{}: {e:?}",
            f.label
        );
    }
}

#[tokio::test]
async fn users_are_listed_with_their_usernames_opened() {
    for f in fixtures().await {
        let s = &f.store;
        assert!(s.list_users().await.unwrap().is_empty(), "{}", f.label);
        setup(s).await;
        user(s, "u-pat", "Patient Person", "patient", 30).await;
        s.set_user_patient(
            "u-pat",
            Some("p-1"),
            &NoAudit,
            &AccountChange::new(AccountChangeKind::PatientLinked),
        )
        .await
        .unwrap();
        s.disable_user(
            "u-clin",
            40,
            &NoAudit,
            &AccountChange::new(AccountChangeKind::UserDisabled),
        )
        .await
        .unwrap();
        let users = s.list_users().await.unwrap();
        type Seen<'a> = (&'a str, &'a str, &'a str, Option<i64>, Option<&'a str>);
        let seen: Vec<Seen<'_>> = users
            .iter()
            .map(|u| {
                (
                    u.user_id.as_str(),
                    u.username.as_str(),
                    u.role.as_str(),
                    u.disabled_at,
                    u.patient_id.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            seen,
            [
                ("u-clin", "Dr Claimant", "clinician", Some(40), None),
                ("u-admin", "Reviewer Admin", "admin", None, None),
                ("u-pat", "Patient Person", "patient", None, Some("p-1")),
            ],
            "{}",
            f.label
        );
        assert!(users.iter().all(|u| !u.totp_enabled));
        // Debug never shows a username.
        assert!(!format!("{users:?}").contains("Claimant"));
    }
}
