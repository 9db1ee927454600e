//! An erasure is final on disk: when `erase_patient` returns, the wrapped data key is in no
//! database file (SQLite: database, WAL, shm; PostgreSQL: the key table's pages, read with
//! `pageinspect`); the erasure removes the patient's traces outside the compartment; and a
//! wrapped data key is bound to its owner (swapping owners makes it fail to open), while a key
//! wrapped in the first format still opens and is moved to the current one by a rotation.

use phivault_fhir::{Id, ResourceType};
use phivault_store::accounts::{BreakGlassRow, ClientRow, GrantRow, NewUser, TokenRow};
use phivault_store::{NoAudit, Store, StoreError};
use sqlx::Row;

use super::{Fixture, fixtures, observation, patient, valid};
use phivault_store::{AccountChange, AccountChangeKind};

/// An account change for calls whose sink ([`NoAudit`]) records nothing.
fn any_change() -> AccountChange {
    AccountChange::new(AccountChangeKind::UserCreated)
}

/// The key id and wrapped bytes of `patient`'s data key.
async fn key_of(s: &Store, patient: &Id) -> (String, Vec<u8>) {
    let key_id: String =
        sqlx::query("SELECT key_id FROM current_resources WHERE rtype = 'Patient' AND id = $1")
            .bind(patient.as_str())
            .fetch_one(s.pool())
            .await
            .unwrap()
            .get("key_id");
    let wrapped: Vec<u8> = sqlx::query("SELECT wrapped FROM data_keys WHERE key_id = $1")
        .bind(&key_id)
        .fetch_one(s.pool())
        .await
        .unwrap()
        .get("wrapped");
    (key_id, wrapped)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Where `needle` is found in the store's files: SQLite, every file of the database
/// directory; PostgreSQL, the raw pages of `tables` (through `pageinspect`; None when that
/// extension cannot be had, and the check is skipped).
async fn found_in_files(f: &Fixture, tables: &[&str], needle: &[u8]) -> Option<Vec<String>> {
    let mut found = Vec::new();
    if f.label == "sqlite" {
        for entry in std::fs::read_dir(f._dir.path()).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() && contains(&std::fs::read(&path).unwrap(), needle) {
                found.push(path.display().to_string());
            }
        }
        return Some(found);
    }
    let s = &f.store;
    let schema = match pageinspect_schema(s).await {
        Some(x) => x,
        None => {
            eprintln!("postgres: pageinspect unavailable; the page scan is skipped");
            return None;
        }
    };
    for table in tables {
        let pages: i64 = sqlx::query(&format!(
            "SELECT (pg_relation_size('{table}') / 8192)::BIGINT AS n"
        ))
        .fetch_one(s.pool())
        .await
        .unwrap()
        .get("n");
        for page in 0..pages {
            let raw: Vec<u8> = sqlx::query(&format!(
                "SELECT {schema}.get_raw_page('{table}', $1::INT) AS p"
            ))
            .bind(page)
            .fetch_one(s.pool())
            .await
            .unwrap()
            .get("p");
            if contains(&raw, needle) {
                found.push(format!("{table} page {page}"));
            }
        }
    }
    Some(found)
}

/// The schema of the `pageinspect` extension, created when missing (superuser only).
async fn pageinspect_schema(s: &Store) -> Option<String> {
    let q = "SELECT extnamespace::regnamespace::TEXT AS s FROM pg_extension \
             WHERE extname = 'pageinspect'";
    if let Ok(Some(row)) = sqlx::query(q).fetch_optional(s.pool()).await {
        return Some(row.get("s"));
    }
    // Another test may create it at the same moment: look again whatever this answers.
    let _ = sqlx::query("CREATE EXTENSION IF NOT EXISTS pageinspect SCHEMA public")
        .execute(s.pool())
        .await;
    sqlx::query(q)
        .fetch_optional(s.pool())
        .await
        .ok()
        .flatten()
        .map(|r| r.get("s"))
}

#[tokio::test]
async fn an_erased_key_is_in_no_database_file_when_the_erasure_returns() {
    for f in fixtures().await {
        let s = &f.store;
        let l = f.label;
        let p = s
            .create(valid(patient("Shred", "Sam")), &NoAudit)
            .await
            .unwrap();
        s.create(valid(observation(&p.id, "8310-5")), &NoAudit)
            .await
            .unwrap();
        let q = s
            .create(valid(patient("Stay", "Sue")), &NoAudit)
            .await
            .unwrap();
        let (_, wrapped) = key_of(s, &p.id).await;
        let (_, kept) = key_of(s, &q.id).await;
        // The test can fail: before the erasure the wrapped key is in the files.
        let Some(before) = found_in_files(&f, &["data_keys"], &wrapped).await else {
            continue;
        };
        assert!(!before.is_empty(), "{l}: the key is written somewhere");

        s.erase_patient(&p.id, &NoAudit).await.unwrap();
        assert!(!s.key_residue_pending(), "{l}");
        let after = found_in_files(&f, &["data_keys"], &wrapped).await.unwrap();
        assert!(after.is_empty(), "{l}: erased key bytes still in {after:?}");
        // Only the erased key went: the other patient's key is still there and opens.
        let still = found_in_files(&f, &["data_keys"], &kept).await.unwrap();
        assert!(!still.is_empty(), "{l}");
        s.read(ResourceType::PATIENT, &q.id).await.unwrap();
    }
}

#[tokio::test]
async fn a_rotation_leaves_no_old_wrapping_in_the_database_files() {
    for f in fixtures().await {
        let s = &f.store;
        let l = f.label;
        let p = s
            .create(valid(patient("Rota", "Ron")), &NoAudit)
            .await
            .unwrap();
        let (_, old) = key_of(s, &p.id).await;
        let Some(before) = found_in_files(&f, &["data_keys"], &old).await else {
            continue;
        };
        assert!(!before.is_empty(), "{l}");
        let report = s.rotate_keks(100, |_| {}).await.unwrap();
        assert!(report.residue_purged, "{l}");
        let after = found_in_files(&f, &["data_keys"], &old).await.unwrap();
        assert!(after.is_empty(), "{l}: old wrapping still in {after:?}");
        s.read(ResourceType::PATIENT, &p.id).await.unwrap();
    }
}

#[tokio::test]
async fn erasure_removes_grants_break_glass_tokens_and_account_links() {
    for f in fixtures().await {
        let s = &f.store;
        let l = f.label;
        let p = s
            .create(valid(patient("Trace", "Tom")), &NoAudit)
            .await
            .unwrap();
        let q = s
            .create(valid(patient("Other", "Olga")), &NoAudit)
            .await
            .unwrap();
        let mut users = Vec::new();
        for (name, role) in [
            ("doc", "clinician"),
            ("pat", "patient"),
            ("pat2", "patient"),
        ] {
            let user_id = uuid_like(name);
            s.insert_user(
                &NewUser {
                    user_id: user_id.clone(),
                    username: format!("{name}-{l}"),
                    role: role.to_owned(),
                    password_hash: "$argon2id$x".to_owned(),
                    created_at: 1,
                },
                &NoAudit,
                &any_change(),
            )
            .await
            .unwrap();
            users.push(user_id);
        }
        let (doc, pat, pat2) = (&users[0], &users[1], &users[2]);
        for who in [&p.id, &q.id] {
            s.upsert_grant(
                &GrantRow {
                    user_id: doc.clone(),
                    patient_id: who.to_string(),
                    labels: String::new(),
                    created_at: 1,
                    expires_at: None,
                },
                &NoAudit,
                &any_change(),
            )
            .await
            .unwrap();
            s.insert_break_glass(&BreakGlassRow {
                id: format!("bg-{who}"),
                user_id: doc.clone(),
                patient_id: who.to_string(),
                reason: "unconscious in the emergency room".to_owned(),
                started_at: 1,
                expires_at: i64::MAX,
            })
            .await
            .unwrap();
        }
        s.set_user_patient(pat, Some(p.id.as_str()), &NoAudit, &any_change())
            .await
            .unwrap();
        s.set_user_patient(pat2, Some(q.id.as_str()), &NoAudit, &any_change())
            .await
            .unwrap();
        let token = |hash: u8, who: &Id| TokenRow {
            token_hash: vec![hash; 32],
            kind: "access".to_owned(),
            principal_id: "client-1".to_owned(),
            client_id: None,
            scopes: "patient/*.rs".to_owned(),
            launch_patient: Some(who.to_string()),
            issued_at: 1,
            expires_at: i64::MAX,
            revoked_at: None,
            family: None,
            encounter: None,
        };
        s.insert_token(&token(1, &p.id)).await.unwrap();
        s.insert_token(&token(2, &q.id)).await.unwrap();
        let client = |id: &str, who: &Id| ClientRow {
            client_id: format!("{id}-{l}"),
            name: "launched app".to_owned(),
            secret_hash: vec![7; 32],
            scopes: "patient/*.rs".to_owned(),
            launch_patient: Some(who.to_string()),
            created_at: 1,
            disabled_at: None,
            client_type: "confidential-secret".to_owned(),
            redirect_uris: Vec::new(),
            jwks: None,
            jwks_url: None,
        };
        for (id, who) in [("app-p", &p.id), ("app-q", &q.id)] {
            s.insert_client(&client(id, who), &NoAudit, &any_change())
                .await
                .unwrap();
        }

        s.erase_patient(&p.id, &NoAudit).await.unwrap();

        // The app launched for the erased patient names no one and is disabled; the other
        // patient's app is untouched.
        let app = s.client(&format!("app-p-{l}")).await.unwrap().unwrap();
        assert_eq!(app.launch_patient, None, "{l}");
        assert!(app.disabled_at.is_some(), "{l}");
        let other_app = s.client(&format!("app-q-{l}")).await.unwrap().unwrap();
        assert_eq!(other_app.launch_patient, Some(q.id.to_string()), "{l}");
        assert_eq!(other_app.disabled_at, None, "{l}");

        assert_eq!(s.grant(doc, p.id.as_str()).await.unwrap(), None, "{l}");
        assert!(s.grant(doc, q.id.as_str()).await.unwrap().is_some(), "{l}");
        let bg: Vec<String> = s
            .list_break_glass()
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.patient_id)
            .collect();
        assert_eq!(bg, vec![q.id.to_string()], "{l}");
        let linked = s.user_by_id(pat).await.unwrap().unwrap().patient_id;
        assert_eq!(linked, None, "{l}");
        let other = s.user_by_id(pat2).await.unwrap().unwrap().patient_id;
        assert_eq!(other, Some(q.id.to_string()), "{l}");
        assert_eq!(s.token(&[1; 32]).await.unwrap(), None, "{l}");
        assert!(s.token(&[2; 32]).await.unwrap().is_some(), "{l}");
        // The patient id is in none of those tables any more.
        for table in ["care_grants", "break_glass", "users"] {
            let n: i64 = sqlx::query(&format!(
                "SELECT COUNT(*) AS n FROM {table} WHERE patient_id = $1"
            ))
            .bind(p.id.as_str())
            .fetch_one(s.pool())
            .await
            .unwrap()
            .get("n");
            assert_eq!(n, 0, "{l}: {table}");
        }
    }
}

fn uuid_like(name: &str) -> String {
    format!("{name}-{}", &super::random_hex()[..12])
}

/// Swaps the `owner` columns of the data keys of `a` and `b` (through a placeholder: the
/// owner is unique per tenant and kind).
async fn swap_owners(s: &Store, a: &str, b: &str) {
    let owner = |k: &str| {
        let k = k.to_owned();
        async move {
            sqlx::query("SELECT owner FROM data_keys WHERE key_id = $1")
                .bind(k)
                .fetch_one(s.pool())
                .await
                .unwrap()
                .get::<Vec<u8>, _>("owner")
        }
    };
    let (oa, ob) = (owner(a).await, owner(b).await);
    for (key, value) in [(a, vec![0u8; 32]), (b, oa), (a, ob)] {
        sqlx::query("UPDATE data_keys SET owner = $1 WHERE key_id = $2")
            .bind(value)
            .bind(key)
            .execute(s.pool())
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_wrapped_key_moved_to_another_owner_does_not_open() {
    for f in fixtures().await {
        let l = f.label;
        let s = &f.store;
        let a = s
            .create(valid(patient("Owner", "Ada")), &NoAudit)
            .await
            .unwrap();
        let b = s
            .create(valid(patient("Owner", "Bob")), &NoAudit)
            .await
            .unwrap();
        let (ka, wa) = key_of(s, &a.id).await;
        let (kb, _) = key_of(s, &b.id).await;
        assert_eq!(wa.len(), 61, "{l}: version byte + nonce + key + tag");
        assert_eq!(wa[0], 2, "{l}");
        swap_owners(s, &ka, &kb).await;
        // A fresh process (nothing cached) reads both rows: neither key opens.
        let fresh = f.reopen(&f.key).await.unwrap();
        for id in [&a.id, &b.id] {
            let e = fresh.read(ResourceType::PATIENT, id).await.unwrap_err();
            assert!(
                matches!(e, StoreError::Integrity { .. } | StoreError::Crypto(_)),
                "{l}: {e:?}"
            );
        }
        // Swapped back, both open again: the failure was the binding, nothing else.
        swap_owners(s, &ka, &kb).await;
        let fresh = f.reopen(&f.key).await.unwrap();
        fresh.read(ResourceType::PATIENT, &a.id).await.unwrap();
        fresh.read(ResourceType::PATIENT, &b.id).await.unwrap();
    }
}

#[tokio::test]
async fn a_key_in_the_first_wrapping_format_opens_and_a_rotation_binds_its_owner() {
    for f in fixtures().await {
        let l = f.label;
        let s = &f.store;
        let a = s
            .create(valid(patient("Legacy", "Lea")), &NoAudit)
            .await
            .unwrap();
        let (ka, _) = key_of(s, &a.id).await;
        s.rewrap_in_first_format(&ka).await.unwrap();
        let (_, old) = key_of(s, &a.id).await;
        assert_eq!(old.len(), 60, "{l}: no version byte");
        let fresh = f.reopen(&f.key).await.unwrap();
        fresh.read(ResourceType::PATIENT, &a.id).await.unwrap();
        s.rotate_keks(100, |_| {}).await.unwrap();
        let (_, new) = key_of(s, &a.id).await;
        assert_eq!((new.len(), new[0]), (61, 2), "{l}: current format");
        let fresh = f.reopen(&f.key).await.unwrap();
        fresh.read(ResourceType::PATIENT, &a.id).await.unwrap();
    }
}
