//! Archives are authenticated to the installation (a MAC under a key derived from the
//! master key), and a forced restore carries the replaced installation's revocations forward.

use super::*;
use phivault_store::NoAudit;
use phivault_store::accounts::{ClientRow, NewUser, TokenRow};
use phivault_store::oauth::{AuthorizationRow, SigningKeyRow};
use phivault_store::{AccountChange, AccountChangeKind};

/// An account change for calls whose sink ([`NoAudit`]) records nothing.
fn any_change() -> AccountChange {
    AccountChange::new(AccountChangeKind::UserCreated)
}

/// The plaintext of a v2 archive rewritten as the v1 format (no MAC): what an archive
/// written before authentication looks like, or what someone without the master key can
/// make of rows they hold.
fn as_v1(archive: &[u8], id: &age::x25519::Identity, r: &age::x25519::Recipient) -> Vec<u8> {
    let inner = plain(archive, id);
    // The closing MAC record: tag, length 32, 32 bytes.
    let mac_at = inner.len() - 37;
    assert_eq!(inner[mac_at], b'A');
    let inner = &inner[..mac_at];
    let inner = inner_replace(inner, b"phivault-backup/v2\n", b"phivault-backup/v1\n");
    let inner = inner_replace(
        &inner,
        b"\"format\":\"phivault-backup/v2\"",
        b"\"format\":\"phivault-backup/v1\"",
    );
    // The manifest repeats the header.
    let inner = inner_replace(
        &inner,
        b"\"format\":\"phivault-backup/v2\"",
        b"\"format\":\"phivault-backup/v1\"",
    );
    seal(&inner, r)
}

#[tokio::test]
async fn an_archive_not_written_under_this_master_key_is_refused() {
    let (id, recipient) = identity();
    for backend in backends() {
        let key = random_hex();
        let (url, _dir) = fresh_url(backend).await;
        let store = open(&url, &key).await;
        let log = Arc::new(AuditLog::open(store.clone()).await.unwrap());
        populate(&store, &log, 5).await;
        let (genuine, _) = backup(&store, &recipient, &key).await;
        // Someone with the database (every row, every wrapped key) and the public recipient,
        // but not the master key: their archive carries keys that open under the master key,
        // and a MAC under any key but the right one.
        let (forged, _) = backup(&store, &recipient, &random_hex()).await;
        store.close().await;
        let before = fingerprint(&url, &key).await;
        let force = RestoreOptions {
            force: true,
            allow_broken_audit: false,
            allow_unauthenticated: false,
        };

        let e = restore_into(&forged, &id, &url, &key, force)
            .await
            .unwrap_err();
        assert!(
            matches!(e, BackupError::Unauthenticated(_)),
            "{backend}: {e}"
        );
        assert!(e.to_string().contains("master key"), "{e}");
        let e = phivault_backup::verify(
            &forged[..],
            std::slice::from_ref(&id),
            Some(&archive_key(&key)),
            |_, _| {},
        )
        .unwrap_err();
        assert!(
            matches!(e, BackupError::Unauthenticated(_)),
            "{backend}: {e}"
        );
        // Without the master key, verify checks integrity only.
        phivault_backup::verify(&forged[..], std::slice::from_ref(&id), None, |_, _| {}).unwrap();

        // The same rows as a v1 archive (no MAC): refused unless explicitly allowed.
        let v1 = as_v1(&forged, &id, &recipient);
        let e = restore_into(&v1, &id, &url, &key, force).await.unwrap_err();
        assert!(
            matches!(e, BackupError::Unauthenticated(_)),
            "{backend}: {e}"
        );
        assert!(e.to_string().contains("--allow-unauthenticated"), "{e}");
        let e = phivault_backup::verify(
            &v1[..],
            std::slice::from_ref(&id),
            Some(&archive_key(&key)),
            |_, _| {},
        )
        .unwrap_err();
        assert!(
            matches!(e, BackupError::Unauthenticated(_)),
            "{backend}: {e}"
        );

        // A MAC record stripped from a genuine archive is damage, not a v1 archive.
        let mut stripped = plain(&genuine, &id);
        stripped.truncate(stripped.len() - 37);
        let e = restore_into(&seal(&stripped, &recipient), &id, &url, &key, force)
            .await
            .unwrap_err();
        assert!(matches!(e, BackupError::Corrupt(_)), "{backend}: {e}");

        assert_eq!(fingerprint(&url, &key).await, before, "{backend}: changed");

        // The genuine archive verifies and restores, authenticated.
        phivault_backup::verify(
            &genuine[..],
            std::slice::from_ref(&id),
            Some(&archive_key(&key)),
            |_, _| {},
        )
        .unwrap();
        let report = restore_into(&genuine, &id, &url, &key, force)
            .await
            .unwrap();
        assert!(report.authenticated, "{backend}");
        // A v1 archive restores when explicitly allowed, and says it was not authenticated.
        let report = restore_into(
            &as_v1(&genuine, &id, &recipient),
            &id,
            &url,
            &key,
            RestoreOptions {
                allow_unauthenticated: true,
                ..force
            },
        )
        .await
        .unwrap();
        assert!(!report.authenticated, "{backend}");
    }
}

fn token(n: u8, principal: &str) -> TokenRow {
    TokenRow {
        token_hash: vec![n; 32],
        kind: "session".to_owned(),
        principal_id: principal.to_owned(),
        client_id: None,
        scopes: "user/*.read".to_owned(),
        launch_patient: None,
        issued_at: 1_700_000_000,
        expires_at: 4_000_000_000,
        revoked_at: None,
        family: None,
        encounter: None,
    }
}

async fn token_revoked(store: &Store, n: u8) -> bool {
    store
        .token(&[n; 32])
        .await
        .unwrap()
        .unwrap()
        .revoked_at
        .is_some()
}

#[tokio::test]
async fn revocations_after_the_backup_survive_a_restore_over_the_installation() {
    let (id, recipient) = identity();
    for backend in backends() {
        let key = random_hex();
        let (url, _dir) = fresh_url(backend).await;
        let store = open(&url, &key).await;
        let log = Arc::new(AuditLog::open(store.clone()).await.unwrap());
        populate(&store, &log, 2).await;
        for (user, name) in [("u-1", "alice"), ("u-2", "bob")] {
            assert!(
                store
                    .insert_user(
                        &NewUser {
                            user_id: user.to_owned(),
                            username: name.to_owned(),
                            role: "clinician".to_owned(),
                            password_hash: format!("$argon2id$old-{user}"),
                            created_at: 1_700_000_000,
                        },
                        &NoAudit,
                        &any_change()
                    )
                    .await
                    .unwrap()
            );
        }
        for client in ["c-1", "c-2"] {
            store
                .insert_client(
                    &ClientRow {
                        client_id: client.to_owned(),
                        name: client.to_owned(),
                        secret_hash: vec![7; 32],
                        scopes: "system/*.read".to_owned(),
                        launch_patient: None,
                        created_at: 1_700_000_000,
                        disabled_at: None,
                        client_type: "confidential-secret".to_owned(),
                        redirect_uris: Vec::new(),
                        jwks: None,
                        jwks_url: None,
                    },
                    &NoAudit,
                    &any_change(),
                )
                .await
                .unwrap();
        }
        for n in 1..=3 {
            store.insert_token(&token(n, "u-1")).await.unwrap();
        }
        store
            .replace_recovery_codes("u-1", &[[1; 32], [2; 32]])
            .await
            .unwrap();
        for client in ["c-1", "c-2"] {
            store
                .upsert_authorization(&AuthorizationRow {
                    user_id: "u-1".to_owned(),
                    client_id: client.to_owned(),
                    scopes: "patient/*.rs".to_owned(),
                    granted_at: 1_700_000_000,
                    last_used_at: 1_700_000_000,
                    revoked_at: None,
                })
                .await
                .unwrap();
        }
        store
            .insert_signing_key(&SigningKeyRow {
                kid: "k-1".to_owned(),
                alg: "RS256".to_owned(),
                private_der: vec![1, 2, 3].into(),
                public_jwk: "{}".to_owned(),
                created_at: 1_700_000_000,
                retired_at: None,
            })
            .await
            .unwrap();
        let (archive, _) = backup(&store, &recipient, &key).await;

        // After the backup: a logout (token 1), a disabled user and client, a spent
        // recovery code, a changed password; and a token issued and revoked since (not in
        // the archive at all).
        let now = 1_800_000_000;
        assert!(
            store
                .revoke_token(&[1; 32], now, &NoAudit, &any_change())
                .await
                .unwrap()
        );
        assert!(
            store
                .disable_user("u-2", now, &NoAudit, &any_change())
                .await
                .unwrap()
        );
        sqlx::query("UPDATE oauth_clients SET disabled_at = $1 WHERE client_id = 'c-2'")
            .bind(now)
            .execute(store.pool())
            .await
            .unwrap();
        assert!(store.use_recovery_code("u-1", &[1; 32], now).await.unwrap());
        assert!(
            store
                .set_password_hash("u-1", "$argon2id$new")
                .await
                .unwrap()
        );
        assert!(
            store
                .revoke_authorization("u-1", "c-1", now, &NoAudit, &any_change())
                .await
                .unwrap()
        );
        // Revoked before the archive's consent was given: that consent is newer and stays.
        sqlx::query(
            "UPDATE oauth_authorizations SET revoked_at = 1600000000 WHERE client_id = 'c-2'",
        )
        .execute(store.pool())
        .await
        .unwrap();
        assert!(store.retire_signing_key("k-1", now).await.unwrap());
        store.insert_token(&token(9, "u-1")).await.unwrap();
        assert!(
            store
                .revoke_token(&[9; 32], now, &NoAudit, &any_change())
                .await
                .unwrap()
        );
        store.close().await;

        let report = restore_into(
            &archive,
            &id,
            &url,
            &key,
            RestoreOptions {
                force: true,
                allow_broken_audit: false,
                allow_unauthenticated: false,
            },
        )
        .await
        .unwrap();
        let r = report.revocations;
        assert_eq!(
            (
                r.tokens,
                r.users,
                r.clients,
                r.recovery_codes,
                r.passwords_differ,
                r.authorizations,
                r.signing_keys
            ),
            (1, 1, 1, 1, 1, 1, 1),
            "{backend}: {r:?}"
        );
        let restored = open(&url, &key).await;
        assert!(
            token_revoked(&restored, 1).await,
            "{backend}: a logout undone"
        );
        assert!(!token_revoked(&restored, 2).await, "{backend}");
        assert!(!token_revoked(&restored, 3).await, "{backend}");
        assert!(restored.token(&[9; 32]).await.unwrap().is_none());
        let user = |id: &'static str| {
            let restored = restored.clone();
            async move { restored.user_by_id(id).await.unwrap().unwrap() }
        };
        assert_eq!(user("u-2").await.disabled_at, Some(now), "{backend}");
        assert_eq!(user("u-1").await.disabled_at, None, "{backend}");
        // The archive's password is restored (the operator is told it differs).
        assert_eq!(user("u-1").await.password_hash, "$argon2id$old-u-1");
        assert_eq!(
            restored.client("c-2").await.unwrap().unwrap().disabled_at,
            Some(now),
            "{backend}"
        );
        assert_eq!(
            restored.client("c-1").await.unwrap().unwrap().disabled_at,
            None
        );
        assert_eq!(
            restored.unused_recovery_codes("u-1").await.unwrap(),
            vec![[2; 32]],
            "{backend}: a spent recovery code is spendable again"
        );
        let authorization = |client: &'static str| {
            let restored = restored.clone();
            async move {
                restored
                    .authorization("u-1", client)
                    .await
                    .unwrap()
                    .unwrap()
                    .revoked_at
            }
        };
        assert_eq!(authorization("c-1").await, Some(now), "{backend}");
        assert_eq!(authorization("c-2").await, None, "{backend}");
        assert_eq!(
            restored.signing_keys().await.unwrap()[0].retired_at,
            Some(now),
            "{backend}"
        );
        restored.close().await;

        // Restoring into an empty database has nothing to carry forward.
        let (fresh, _fresh_dir) = fresh_url(backend).await;
        let report = restore_into(&archive, &id, &fresh, &key, RestoreOptions::default())
            .await
            .unwrap();
        assert_eq!(report.revocations, Default::default());
    }
}
