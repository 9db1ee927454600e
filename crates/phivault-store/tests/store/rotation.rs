//! Key rotation (issue 7): KEK rotation in batches with a second store (a running server)
//! reading and writing throughout, an interrupted rotation resumed without a new KEK, and the
//! master key rotation that leaves the old master key refused.

use std::collections::HashMap;

use phivault_crypto::{MasterKey, StaticKeyProvider};
use phivault_fhir::{Id, ResourceType};
use phivault_store::{NoAudit, Store, StoreError, StoreOptions};
use serde_json::Value;
use sqlx::Row;

use super::{Fixture, fixtures, observation, patient, random_hex, valid};

/// Creates `n` patients with one observation each; returns (type, id) -> body.
async fn populate(s: &Store, n: usize, tag: &str) -> HashMap<(ResourceType, Id), Value> {
    let mut out = HashMap::new();
    for i in 0..n {
        let p = s
            .create(valid(patient(&format!("Rot{tag}{i}"), "Ann")), &NoAudit)
            .await
            .unwrap();
        let o = s
            .create(valid(observation(&p.id, "8867-4")), &NoAudit)
            .await
            .unwrap();
        out.insert((ResourceType::PATIENT, p.id.clone()), p.body);
        out.insert((o.rtype, o.id.clone()), o.body);
    }
    out
}

async fn assert_all_read(s: &Store, expected: &HashMap<(ResourceType, Id), Value>, what: &str) {
    for ((rtype, id), body) in expected {
        let read = s
            .read(*rtype, id)
            .await
            .unwrap_or_else(|e| panic!("{what}: {rtype}/{id}: {e}"));
        assert_eq!(&read.body, body, "{what}: {rtype}/{id}");
    }
}

/// kek_id of every data key row, and the KEK rows (id, active).
async fn key_rows(s: &Store) -> (Vec<String>, Vec<(String, i64)>) {
    let dks = sqlx::query("SELECT kek_id FROM data_keys")
        .fetch_all(s.pool())
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<String, _>("kek_id"))
        .collect();
    let keks = sqlx::query("SELECT kek_id, active FROM key_encryption_keys ORDER BY created_at")
        .fetch_all(s.pool())
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get::<String, _>("kek_id"), r.get::<i64, _>("active")))
        .collect();
    (dks, keks)
}

async fn open_with(f: &Fixture, key_hex: &str) -> Store {
    Store::open(
        &StoreOptions::new(f.url.clone()),
        &StaticKeyProvider::from_hex(key_hex),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn kek_rotation_rewraps_every_data_key_while_another_store_serves() {
    for f in fixtures().await {
        let label = f.label;
        let s = &f.store;
        // A second store opened before the rotation: a running server.
        let server = open_with(&f, &f.key).await;
        let mut expected = populate(&server, 30, "a").await;
        let (before, keks_before) = key_rows(s).await;
        assert_eq!(keks_before.len(), 1, "{label}");
        let old_kek = keks_before[0].0.clone();
        assert!(before.iter().all(|k| *k == old_kek), "{label}");
        // 30 patients, the directory key is not made yet, the index key.
        assert_eq!(before.len(), 31, "{label}");

        // The server reads and writes while the rotation runs (batches of 4).
        let serving = {
            let server = server.clone();
            let expected = expected.clone();
            tokio::spawn(async move {
                let mut created = HashMap::new();
                for round in 0..10 {
                    assert_all_read(&server, &expected, "during the rotation").await;
                    created.extend(populate(&server, 2, &format!("d{round}")).await);
                }
                created
            })
        };
        let mut calls = 0;
        let report = s
            .rotate_keks(4, |p| {
                calls += 1;
                assert!(p.rewrapped <= p.pending_at_start + 100);
            })
            .await
            .unwrap();
        let created = serving.await.unwrap();
        expected.extend(created);
        assert!(!report.resumed, "{label}");
        assert_ne!(report.kek_id, old_kek, "{label}");
        assert!(report.rewrapped >= 31, "{label}: {report:?}");
        assert!(
            calls >= 8,
            "{label}: one progress call per batch, got {calls}"
        );
        assert_eq!(report.retired, vec![old_kek.clone()], "{label}");

        // After: all data keys under the new KEK, the old KEK row gone.
        let (after, keks_after) = key_rows(s).await;
        assert_eq!(keks_after, vec![(report.kek_id.clone(), 1)], "{label}");
        assert!(
            after.iter().all(|k| *k == report.kek_id),
            "{label}: {after:?}"
        );
        assert_eq!(after.len(), 31 + 20, "{label}");
        let status = s.key_status().await.unwrap();
        assert_eq!(status.pending, 0, "{label}");
        assert_eq!(status.keks.len(), 1, "{label}");
        assert_eq!(status.keks[0].data_keys, 51, "{label}");
        assert!(
            status
                .data_keys_by_kind
                .contains(&("patient".to_owned(), 50)),
            "{label}: {status:?}"
        );

        // The running server, a fresh store and the rotating one all read everything, and
        // the running server makes new keys under the new KEK.
        assert_all_read(&server, &expected, "the running server after").await;
        assert_all_read(s, &expected, "the rotating store after").await;
        let fresh = open_with(&f, &f.key).await;
        assert_all_read(&fresh, &expected, "a fresh store after").await;
        let more = populate(&server, 3, "after").await;
        assert_all_read(&fresh, &more, "new data of the running server").await;
        let (after, _) = key_rows(s).await;
        assert!(after.iter().all(|k| *k == report.kek_id), "{label}");

        // A second rotation from the running server (which never created a KEK itself).
        let second = server.rotate_keks(500, |_| {}).await.unwrap();
        assert_ne!(second.kek_id, report.kek_id, "{label}");
        assert_eq!(second.rewrapped, 54, "{label}");
        assert_all_read(s, &expected, "the first store after a second rotation").await;
        let (_, keks) = key_rows(s).await;
        assert_eq!(keks, vec![(second.kek_id.clone(), 1)], "{label}");
        // Debug output has ids and counts, nothing secret.
        let text = format!("{:?}", s.key_status().await.unwrap());
        assert!(text.contains(&second.kek_id), "{label}");
        server.close().await;
        fresh.close().await;
    }
}

#[tokio::test]
async fn interrupted_kek_rotation_is_resumed_without_a_new_kek() {
    for f in fixtures().await {
        let label = f.label;
        let s = &f.store;
        let expected = populate(s, 12, "i").await;
        let (old_kek, _) = (key_rows(s).await.1[0].0.clone(), ());
        // Start, two batches of 3, then stop (a crash).
        let (new_kek, resumed) = s.start_kek_rotation().await.unwrap();
        assert!(!resumed, "{label}");
        let (n1, last) = s.rewrap_batch(&new_kek, "", 3).await.unwrap().unwrap();
        let (n2, _) = s.rewrap_batch(&new_kek, &last, 3).await.unwrap().unwrap();
        assert_eq!(n1 + n2, 6, "{label}");
        let (dks, keks) = key_rows(s).await;
        assert_eq!(keks.len(), 2, "{label}: both KEKs exist mid-rotation");
        assert_eq!(dks.iter().filter(|k| **k == new_kek).count(), 6, "{label}");
        assert_eq!(dks.iter().filter(|k| **k == old_kek).count(), 7, "{label}");
        let status = s.key_status().await.unwrap();
        assert_eq!(status.pending, 7, "{label}");

        // Mid-rotation everything reads, from this store and a fresh one, and new keys go
        // under the new KEK.
        assert_all_read(s, &expected, "mid-rotation").await;
        let fresh = open_with(&f, &f.key).await;
        assert_all_read(&fresh, &expected, "fresh mid-rotation").await;
        let more = populate(&fresh, 1, "mid").await;
        let (dks, _) = key_rows(s).await;
        assert_eq!(dks.iter().filter(|k| **k == new_kek).count(), 7, "{label}");

        // The next rotation resumes: no third KEK.
        let report = fresh.rotate_keks(500, |_| {}).await.unwrap();
        assert!(report.resumed, "{label}");
        assert_eq!(report.kek_id, new_kek, "{label}");
        assert_eq!(report.rewrapped, 7, "{label}");
        assert_eq!(report.retired, vec![old_kek.clone()], "{label}");
        let (dks, keks) = key_rows(s).await;
        assert_eq!(keks, vec![(new_kek.clone(), 1)], "{label}");
        assert!(dks.iter().all(|k| *k == new_kek), "{label}");
        assert_all_read(s, &expected, "after resuming").await;
        assert_all_read(s, &more, "after resuming").await;

        // A stale rotation step (its KEK no longer active) is refused.
        let third = s.rotate_keks(500, |_| {}).await.unwrap();
        assert!(!third.resumed, "{label}");
        let err = s.rewrap_batch(&new_kek, "", 3).await.unwrap_err();
        assert!(
            err.to_string().contains("no longer the active one"),
            "{label}: {err}"
        );
        fresh.close().await;
    }
}

/// Makes `active` the only active KEK (behind the store's back).
async fn flip(s: &Store, active: &str) {
    sqlx::query("UPDATE key_encryption_keys SET active = CASE WHEN kek_id = $1 THEN 1 ELSE 0 END")
        .bind(active)
        .execute(s.pool())
        .await
        .unwrap();
}

#[tokio::test]
async fn data_key_created_under_the_old_kek_during_a_rotation_is_caught() {
    for f in fixtures().await {
        let label = f.label;
        let s = &f.store;
        let mut expected = populate(s, 3, "c").await;
        let old_kek = key_rows(s).await.1[0].0.clone();
        let (new_kek, _) = s.start_kek_rotation().await.unwrap();
        let (n, _) = s.rewrap_batch(&new_kek, "", 100).await.unwrap().unwrap();
        assert_eq!(n, 4, "{label}");
        // A server that read the active KEK just before the switch creates a key under the
        // old one: simulated by flipping the active flag back while it creates.
        flip(s, &old_kek).await;
        let other = open_with(&f, &f.key).await;
        expected.extend(populate(&other, 1, "late").await);
        flip(s, &new_kek).await;
        let (dks, _) = key_rows(s).await;
        assert_eq!(dks.iter().filter(|k| **k == old_kek).count(), 1, "{label}");

        let report = s.rotate_keks(2, |_| {}).await.unwrap();
        assert!(report.resumed, "{label}");
        assert_eq!(report.kek_id, new_kek, "{label}");
        assert_eq!(report.rewrapped, 1, "{label}");
        assert_eq!(report.retired, vec![old_kek], "{label}");
        let (dks, keks) = key_rows(s).await;
        assert!(dks.iter().all(|k| *k == new_kek), "{label}");
        assert_eq!(keks.len(), 1, "{label}");
        assert_all_read(&other, &expected, "after").await;
        assert_all_read(s, &expected, "after").await;
        other.close().await;
    }
}

#[tokio::test]
async fn master_rotation_refuses_the_old_master_key() {
    for f in fixtures().await {
        let label = f.label;
        let s = &f.store;
        let expected = populate(s, 5, "m").await;
        s.rotate_keks(500, |_| {}).await.unwrap();
        let running = open_with(&f, &f.key).await;
        let new_hex = random_hex();
        let new = MasterKey::from_hex(&new_hex).unwrap();
        let old = MasterKey::from_hex(&f.key).unwrap();
        assert!(s.master_opens_keks(&old).await.unwrap(), "{label}");
        assert!(!s.master_opens_keks(&new).await.unwrap(), "{label}");
        assert_eq!(s.rotate_master(&new).await.unwrap(), 1, "{label}");
        assert!(s.master_opens_keks(&new).await.unwrap(), "{label}");
        assert!(!s.master_opens_keks(&old).await.unwrap(), "{label}");

        // The old master key is refused, with the clear message; the new one opens.
        let err = f.reopen(&f.key).await.unwrap_err();
        assert!(
            err.to_string()
                .contains("does not open with this master key"),
            "{label}: {err}"
        );
        assert!(
            !err.to_string().contains(&f.key),
            "{label}: no key in errors"
        );
        let reopened = open_with(&f, &new_hex).await;
        assert_all_read(&reopened, &expected, "with the new master key").await;
        // The rotating store uses the new master key for its next KEK.
        s.rotate_keks(500, |_| {}).await.unwrap();
        let again = open_with(&f, &new_hex).await;
        assert_all_read(&again, &expected, "after a KEK rotation").await;
        assert!(f.reopen(&f.key).await.is_err(), "{label}");
        // A process still holding the old master key (and a provider that returns only it)
        // cannot open the KEK it has not seen: a clear error, not a wrong read.
        let p = running
            .create(valid(patient("AfterMaster", "Bo")), &NoAudit)
            .await;
        match p {
            Err(StoreError::Config(m)) => {
                assert!(
                    m.contains("does not open with this master key"),
                    "{label}: {m}"
                )
            }
            other => panic!("{label}: expected a master key error, got {other:?}"),
        }
        running.close().await;
        reopened.close().await;
        again.close().await;
    }
}
