//! Entries that concern several patients (a search's hits) are found by each patient's
//! queries; every column copied out of a body (and every patient row) is compared with the
//! body by `audit verify` and by the start-up check, which name the altered entry.

use phivault_audit::{AuditEntry, AuditError, AuditLog};
use phivault_store::Store;
use phivault_store::audit::AuditQuery;

use super::{entry, fixtures, tail_err, verify_err, with_tail};

/// A search by `user-1` whose hits belong to three patients.
fn search_entry(i: u64) -> AuditEntry {
    let mut e = entry(i);
    e.action = "GET /fhir/{type}".to_owned();
    e.resource_id = None;
    e.patient_id = None;
    e.outcome = phivault_audit::Outcome::Allowed;
    e.set_patients(["pat-c", "pat-a", "pat-b"]);
    e
}

/// time, actor, patient, action, outcome of a row.
type Columns = (i64, String, Option<String>, Option<String>, Option<String>);

fn by_patient(patient: &str) -> AuditQuery {
    AuditQuery {
        patient: Some(patient.to_owned()),
        ..AuditQuery::default()
    }
}

async fn sql(store: &Store, statement: &str) {
    sqlx::query(statement).execute(store.pool()).await.unwrap();
}

#[tokio::test]
async fn a_search_is_found_by_every_patient_it_returned() {
    for f in fixtures().await {
        let log = super::populated(&f.store).await;
        let seq = log.append(&search_entry(51)).await.unwrap();
        for p in ["pat-a", "pat-b", "pat-c"] {
            let rows = f.store.audit_search(&by_patient(p), 10).await.unwrap();
            assert_eq!(rows.first().map(|r| r.seq), Some(seq), "{}: {p}", f.label);
            assert_eq!(rows[0].patients, ["pat-a", "pat-b", "pat-c"]);
            assert_eq!(f.store.audit_count(&by_patient(p)).await.unwrap(), 1);
        }
        // Single-patient entries are found through the same rows; filters still combine.
        let mut q = by_patient("pat-1");
        assert_eq!(f.store.audit_count(&q).await.unwrap(), 13, "{}", f.label);
        q.outcome = Some("denied".to_owned());
        assert_eq!(f.store.audit_count(&q).await.unwrap(), 2, "{}", f.label);
        let page = f.store.audit_search(&by_patient("pat-1"), 5).await.unwrap();
        assert_eq!(page.len(), 5);
        assert!(page.windows(2).all(|w| w[0].seq > w[1].seq));
        assert!(page.iter().all(|r| r.patients == ["pat-1"]));
        let report = log.verify(|_| {}).await.unwrap();
        assert_eq!(report.entries, 51);
    }
}

#[tokio::test]
async fn a_nulled_patient_column_is_named_and_does_not_hide_the_entry() {
    for f in fixtures().await {
        let log = super::populated(&f.store).await;
        let before = f.store.audit_count(&by_patient("pat-1")).await.unwrap();
        sql(
            &f.store,
            "UPDATE audit_entries SET patient = NULL WHERE patient = 'pat-1'",
        )
        .await;
        let err = verify_err(&log).await;
        assert!(
            matches!(
                err,
                AuditError::ColumnMismatch {
                    seq: 1,
                    column: "patient"
                }
            ),
            "{}: {err}",
            f.label
        );
        assert_eq!(err.first_bad_seq(), Some(1));
        // The access-log query does not go through that column.
        assert_eq!(
            f.store.audit_count(&by_patient("pat-1")).await.unwrap(),
            before
        );
    }
}

#[tokio::test]
async fn removed_or_added_patient_rows_are_named() {
    for f in fixtures().await {
        let log = super::populated(&f.store).await;
        let seq = log.append(&search_entry(51)).await.unwrap();
        // Hiding the search from one patient's log.
        sql(
            &f.store,
            "DELETE FROM audit_entry_patients WHERE patient = 'pat-b'",
        )
        .await;
        assert_eq!(f.store.audit_count(&by_patient("pat-b")).await.unwrap(), 0);
        let err = verify_err(&log).await;
        assert!(
            matches!(err, AuditError::ColumnMismatch { seq: s, column: "patients" } if s == seq),
            "{}: {err}",
            f.label
        );
        sql(
            &f.store,
            &format!("INSERT INTO audit_entry_patients (seq, patient) VALUES ({seq}, 'pat-b')"),
        )
        .await;
        log.verify(|_| {}).await.unwrap();
        // Hiding every entry of a patient, and a false attribution.
        sql(
            &f.store,
            "DELETE FROM audit_entry_patients WHERE patient = 'pat-2'",
        )
        .await;
        assert_eq!(
            verify_err(&log).await.first_bad_seq(),
            Some(2),
            "{}",
            f.label
        );
        sql(
            &f.store,
            "INSERT INTO audit_entry_patients (seq, patient) \
             SELECT seq, patient FROM audit_entries WHERE patient = 'pat-2'",
        )
        .await;
        log.verify(|_| {}).await.unwrap();
        sql(
            &f.store,
            "INSERT INTO audit_entry_patients (seq, patient) VALUES (7, 'pat-z')",
        )
        .await;
        let err = verify_err(&log).await;
        assert!(
            matches!(
                err,
                AuditError::ColumnMismatch {
                    seq: 7,
                    column: "patients"
                }
            ),
            "{}: {err}",
            f.label
        );
    }
}

#[tokio::test]
async fn every_copied_column_is_compared_with_the_body() {
    for f in fixtures().await {
        let log = super::populated(&f.store).await;
        let alterations = [
            (
                "UPDATE audit_entries SET time = time + 1 WHERE seq = 3",
                "time",
            ),
            (
                "UPDATE audit_entries SET actor = 'user-9' WHERE seq = 3",
                "actor",
            ),
            (
                "UPDATE audit_entries SET patient = 'pat-9' WHERE seq = 3",
                "patient",
            ),
            (
                "UPDATE audit_entries SET action = 'D' WHERE seq = 3",
                "action",
            ),
            (
                "UPDATE audit_entries SET outcome = 'error' WHERE seq = 3",
                "outcome",
            ),
            (
                "UPDATE audit_entry_patients SET patient = 'pat-9' WHERE seq = 3",
                "patients",
            ),
        ];
        for (statement, column) in alterations {
            let saved: Vec<Columns> = sqlx::query_as(
                "SELECT time, actor, patient, action, outcome FROM audit_entries \
                     WHERE seq = 3",
            )
            .fetch_all(f.store.pool())
            .await
            .unwrap();
            sql(&f.store, statement).await;
            let err = verify_err(&log).await;
            assert!(
                matches!(&err, AuditError::ColumnMismatch { seq: 3, column: c } if *c == column),
                "{}: {column}: {err}",
                f.label
            );
            assert!(err.to_string().contains("audit entry 3"), "{err}");
            let (time, actor, patient, action, outcome) = saved[0].clone();
            sqlx::query(
                "UPDATE audit_entries SET time = $1, actor = $2, patient = $3, action = $4, \
                 outcome = $5 WHERE seq = 3",
            )
            .bind(time)
            .bind(actor)
            .bind(patient.clone())
            .bind(action)
            .bind(outcome)
            .execute(f.store.pool())
            .await
            .unwrap();
            sql(&f.store, "DELETE FROM audit_entry_patients WHERE seq = 3").await;
            sqlx::query("INSERT INTO audit_entry_patients (seq, patient) VALUES (3, $1)")
                .bind(patient)
                .execute(f.store.pool())
                .await
                .unwrap();
            log.verify(|_| {}).await.unwrap();
        }
    }
}

#[tokio::test]
async fn the_start_up_check_names_altered_columns_after_the_checkpoint() {
    for f in fixtures().await {
        let log: AuditLog = with_tail(&f).await;
        sql(&f.store, "DELETE FROM audit_entry_patients WHERE seq = 55").await;
        let err = tail_err(&log).await;
        assert!(
            matches!(
                err,
                AuditError::ColumnMismatch {
                    seq: 55,
                    column: "patients"
                }
            ),
            "{}: {err}",
            f.label
        );
        // No checkpoint is made over it.
        assert!(log.checkpoint().await.is_err());
    }
}
