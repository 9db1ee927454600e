//! OAuth2 and SMART App Launch state: one-time codes, refresh rotation and token families,
//! client-assertion ids, remembered consents, launch contexts, clients' new columns and the
//! sealed id_token signing keys, on each backend.

use phivault_store::accounts::{ClientRow, TokenRow};
use phivault_store::oauth::{
    AuthorizationRow, CONFIDENTIAL_JWT, CONFIDENTIAL_SECRET, CodeRow, CodeTake, LaunchRow, PUBLIC,
    SigningKeyRow,
};
use phivault_store::{
    AccountChange, AccountChangeKind, AccountSink, Generation, NoAudit, SinkFuture, Store,
    StoreError,
};
use sqlx::AnyConnection;
use zeroize::Zeroizing;

use super::{fixtures, patient, random_hex, valid};

fn change(kind: AccountChangeKind) -> AccountChange {
    AccountChange::new(kind)
}

/// A sink that refuses to record: the change must roll back with it.
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

fn code(hash: u8, family: &str, issued_at: i64) -> CodeRow {
    CodeRow {
        code_hash: vec![hash; 32],
        client_id: "pvcl_app".to_owned(),
        user_id: "u-1".to_owned(),
        redirect_uri: "https://app.example/cb".to_owned(),
        scopes: "launch/patient patient/*.rs openid fhirUser".to_owned(),
        code_challenge: "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM".to_owned(),
        launch_patient: Some("p-1".to_owned()),
        launch_encounter: Some("e-1".to_owned()),
        nonce: Some("n-0S6_WzA2Mj".to_owned()),
        family: family.to_owned(),
        issued_at,
        expires_at: issued_at + 60,
        used_at: None,
    }
}

fn token(hash: u8, kind: &str, principal: &str, client: &str, family: Option<&str>) -> TokenRow {
    TokenRow {
        token_hash: vec![hash; 32],
        kind: kind.to_owned(),
        principal_id: principal.to_owned(),
        client_id: Some(client.to_owned()),
        scopes: "patient/*.rs".to_owned(),
        launch_patient: Some("p-1".to_owned()),
        issued_at: 1_700_000_000 + i64::from(hash),
        expires_at: 4_000_000_000,
        revoked_at: None,
        family: family.map(str::to_owned),
        encounter: Some("e-1".to_owned()),
    }
}

async fn revoked(s: &Store, hash: u8) -> bool {
    s.token(&[hash; 32])
        .await
        .unwrap()
        .unwrap()
        .revoked_at
        .is_some()
}

#[tokio::test]
async fn a_code_is_taken_once_then_answers_replayed() {
    for f in fixtures().await {
        let (s, l) = (&f.store, f.label);
        let issued = code(1, "fam-1", 1_700_000_000);
        s.insert_code(&issued).await.unwrap();

        let CodeTake::Taken(first) = s.take_code(&[1; 32], 1_700_000_010).await.unwrap() else {
            panic!("{l}: the first take must succeed");
        };
        assert_eq!(first.used_at, Some(1_700_000_010), "{l}");
        assert_eq!(
            CodeRow {
                used_at: None,
                ..first.clone()
            },
            issued,
            "{l}: every field round-trips"
        );
        let CodeTake::Replayed(again) = s.take_code(&[1; 32], 1_700_000_020).await.unwrap() else {
            panic!("{l}: a second take is a replay");
        };
        assert_eq!(
            again.used_at,
            Some(1_700_000_010),
            "{l}: the first use stays"
        );
        assert_eq!(again.family, "fam-1", "{l}");
        assert_eq!(
            s.take_code(&[9; 32], 1_700_000_020).await.unwrap(),
            CodeTake::Unknown,
            "{l}"
        );

        // Parallel exchanges of one code: exactly one wins.
        s.insert_code(&code(2, "fam-2", 1_700_000_000))
            .await
            .unwrap();
        let takes =
            futures::future::join_all((0..8).map(|i| s.take_code(&[2; 32], 1_700_000_030 + i)))
                .await;
        let taken = takes
            .iter()
            .filter(|t| matches!(t, Ok(CodeTake::Taken(_))))
            .count();
        let replayed = takes
            .iter()
            .filter(|t| matches!(t, Ok(CodeTake::Replayed(_))))
            .count();
        assert_eq!((taken, replayed), (1, 7), "{l}");

        // A code expired for more than a day is purged when the next one is issued; one
        // expired for less is kept (a replay of it is still recognised).
        let later = 1_700_000_060 + 24 * 3600 + 1;
        s.insert_code(&code(3, "fam-3", later - 10)).await.unwrap();
        assert!(matches!(
            s.take_code(&[2; 32], later).await.unwrap(),
            CodeTake::Replayed(_)
        ));
        s.insert_code(&code(4, "fam-4", later + 1)).await.unwrap();
        assert_eq!(
            s.take_code(&[1; 32], later + 1).await.unwrap(),
            CodeTake::Unknown,
            "{l}: purged"
        );
    }
}

#[tokio::test]
async fn refresh_rotation_is_one_time_and_families_revoke_together() {
    for f in fixtures().await {
        let (s, l) = (&f.store, f.label);
        s.insert_tokens(&[
            token(1, "access", "u-1", "app", Some("fam")),
            token(2, "refresh", "u-1", "app", Some("fam")),
        ])
        .await
        .unwrap();
        let next = [
            token(3, "access", "u-1", "app", Some("fam")),
            token(4, "refresh", "u-1", "app", Some("fam")),
        ];
        assert!(
            s.rotate_refresh(&[2; 32], 1_800_000_000, &next)
                .await
                .unwrap(),
            "{l}"
        );
        assert!(revoked(s, 2).await, "{l}");
        assert!(!revoked(s, 4).await, "{l}");
        // The same refresh token again: refused, and nothing is inserted.
        let replay = [token(5, "refresh", "u-1", "app", Some("fam"))];
        assert!(
            !s.rotate_refresh(&[2; 32], 1_800_000_001, &replay)
                .await
                .unwrap(),
            "{l}"
        );
        assert_eq!(s.token(&[5; 32]).await.unwrap(), None, "{l}");
        // An access token is not a refresh token; an unknown hash is nothing.
        assert!(
            !s.rotate_refresh(&[3; 32], 1_800_000_001, &replay)
                .await
                .unwrap(),
            "{l}"
        );
        assert!(!revoked(s, 3).await, "{l}");
        assert!(
            !s.rotate_refresh(&[77; 32], 1_800_000_001, &replay)
                .await
                .unwrap(),
            "{l}"
        );

        // Parallel rotations of one refresh token: exactly one wins.
        let news: Vec<[TokenRow; 1]> = (0..6u8)
            .map(|i| [token(10 + i, "refresh", "u-1", "app", Some("fam"))])
            .collect();
        let wins = futures::future::join_all(
            news.iter()
                .map(|n| s.rotate_refresh(&[4; 32], 1_800_000_002, n)),
        )
        .await
        .into_iter()
        .filter(|r| *r.as_ref().unwrap())
        .count();
        assert_eq!(wins, 1, "{l}");

        let family = s.tokens_of_family("fam").await.unwrap();
        assert_eq!(family.len(), 5, "{l}: 1, 2, 3, 4 and the one winner");
        assert!(family.iter().all(|t| t.encounter.as_deref() == Some("e-1")));

        // Another grant's token and a session are not in the family.
        s.insert_tokens(&[token(30, "access", "u-1", "app", Some("other"))])
            .await
            .unwrap();
        let before = s.generation(Generation::Auth).await.unwrap();
        let n = s
            .revoke_family(
                "fam",
                1_800_000_100,
                &NoAudit,
                &change(AccountChangeKind::TokenFamilyRevoked),
            )
            .await
            .unwrap();
        assert_eq!(n, 3, "{l}: 1, 3 and the winner were still in force");
        assert_ne!(s.generation(Generation::Auth).await.unwrap(), before, "{l}");
        assert!(
            s.tokens_of_family("fam")
                .await
                .unwrap()
                .iter()
                .all(|t| t.revoked_at.is_some()),
            "{l}"
        );
        assert!(!revoked(s, 30).await, "{l}");
        let n = s
            .revoke_family(
                "fam",
                1_800_000_200,
                &NoAudit,
                &change(AccountChangeKind::TokenFamilyRevoked),
            )
            .await
            .unwrap();
        assert_eq!(n, 0, "{l}");

        // Without its audit entry, a family revocation does not happen.
        let err = s
            .revoke_family(
                "other",
                1_800_000_300,
                &RefusingSink,
                &change(AccountChangeKind::TokenFamilyRevoked),
            )
            .await;
        assert!(err.is_err(), "{l}");
        assert!(!revoked(s, 30).await, "{l}");
    }
}

#[tokio::test]
async fn a_client_assertion_id_is_accepted_once_while_it_could_be_replayed() {
    for f in fixtures().await {
        let (s, l) = (&f.store, f.label);
        assert!(s.claim_jti("app", "j-1", 1_000, 900).await.unwrap(), "{l}");
        assert!(
            !s.claim_jti("app", "j-1", 1_000, 950).await.unwrap(),
            "{l}: replay"
        );
        assert!(
            !s.claim_jti("app", "j-1", 2_000, 999).await.unwrap(),
            "{l}: replay"
        );
        // Another client's assertion with the same id is another claim.
        assert!(
            s.claim_jti("other", "j-1", 1_000, 950).await.unwrap(),
            "{l}"
        );
        // Once the first claim expired, the id may be claimed again (the assertion itself
        // would be refused as expired by then).
        assert!(
            s.claim_jti("app", "j-1", 2_000, 1_000).await.unwrap(),
            "{l}"
        );
        assert!(
            !s.claim_jti("app", "j-1", 2_000, 1_500).await.unwrap(),
            "{l}"
        );

        let claims = futures::future::join_all(
            (0..8).map(|_| s.claim_jti("app", "j-parallel", 5_000, 1_600)),
        )
        .await;
        let won = claims.iter().filter(|c| *c.as_ref().unwrap()).count();
        assert_eq!(won, 1, "{l}");
    }
}

#[tokio::test]
async fn revoking_an_authorization_revokes_the_apps_tokens_of_that_user() {
    for f in fixtures().await {
        let (s, l) = (&f.store, f.label);
        let auth = AuthorizationRow {
            user_id: "u-1".to_owned(),
            client_id: "app".to_owned(),
            scopes: "launch/patient patient/*.rs offline_access".to_owned(),
            granted_at: 100,
            last_used_at: 100,
            revoked_at: None,
        };
        s.upsert_authorization(&auth).await.unwrap();
        s.upsert_authorization(&AuthorizationRow {
            client_id: "other-app".to_owned(),
            ..auth.clone()
        })
        .await
        .unwrap();
        assert!(
            s.touch_authorization("u-1", "app", 150).await.unwrap(),
            "{l}"
        );
        assert!(!s.touch_authorization("u-1", "nobody", 150).await.unwrap());
        assert_eq!(
            s.authorization("u-1", "app")
                .await
                .unwrap()
                .unwrap()
                .last_used_at,
            150
        );
        s.insert_tokens(&[
            token(1, "access", "u-1", "app", Some("f1")),
            token(2, "refresh", "u-1", "app", Some("f1")),
            token(3, "access", "u-1", "other-app", Some("f2")),
            token(4, "access", "u-2", "app", Some("f3")),
        ])
        .await
        .unwrap();

        // Without its audit entry, nothing is revoked.
        assert!(
            s.revoke_authorization(
                "u-1",
                "app",
                200,
                &RefusingSink,
                &change(AccountChangeKind::AuthorizationRevoked)
            )
            .await
            .is_err()
        );
        assert!(!revoked(s, 1).await, "{l}");
        assert_eq!(
            s.authorization("u-1", "app")
                .await
                .unwrap()
                .unwrap()
                .revoked_at,
            None
        );

        let before = s.generation(Generation::Auth).await.unwrap();
        assert!(
            s.revoke_authorization(
                "u-1",
                "app",
                200,
                &NoAudit,
                &change(AccountChangeKind::AuthorizationRevoked)
            )
            .await
            .unwrap(),
            "{l}"
        );
        assert_ne!(s.generation(Generation::Auth).await.unwrap(), before, "{l}");
        assert!(revoked(s, 1).await && revoked(s, 2).await, "{l}");
        assert!(!revoked(s, 3).await, "{l}: another app");
        assert!(!revoked(s, 4).await, "{l}: another user");
        assert_eq!(
            s.authorization("u-1", "app")
                .await
                .unwrap()
                .unwrap()
                .revoked_at,
            Some(200)
        );
        let in_force: Vec<String> = s
            .authorizations_of_user("u-1")
            .await
            .unwrap()
            .into_iter()
            .map(|a| a.client_id)
            .collect();
        assert_eq!(in_force, ["other-app"], "{l}");
        assert!(!s.touch_authorization("u-1", "app", 250).await.unwrap());
        assert!(
            !s.revoke_authorization(
                "u-1",
                "app",
                300,
                &NoAudit,
                &change(AccountChangeKind::AuthorizationRevoked)
            )
            .await
            .unwrap(),
            "{l}: nothing left in force"
        );

        // A new consent is in force again.
        s.upsert_authorization(&AuthorizationRow {
            granted_at: 400,
            last_used_at: 400,
            ..auth.clone()
        })
        .await
        .unwrap();
        let again = s.authorization("u-1", "app").await.unwrap().unwrap();
        assert_eq!((again.granted_at, again.revoked_at), (400, None), "{l}");
        assert_eq!(s.authorizations_of_user("u-1").await.unwrap().len(), 2);
    }
}

#[tokio::test]
async fn clients_keep_their_type_redirect_uris_and_keys() {
    for f in fixtures().await {
        let (s, l) = (&f.store, f.label);
        let public = ClientRow {
            client_id: "pvcl_public".to_owned(),
            name: "Patient app".to_owned(),
            secret_hash: Vec::new(),
            scopes: "launch/patient patient/*.rs openid fhirUser".to_owned(),
            launch_patient: None,
            created_at: 10,
            disabled_at: None,
            client_type: PUBLIC.to_owned(),
            redirect_uris: vec![
                "https://app.example/cb".to_owned(),
                "http://127.0.0.1:7000/cb".to_owned(),
            ],
            jwks: None,
            jwks_url: None,
        };
        let jwt = ClientRow {
            client_id: "pvcl_backend".to_owned(),
            name: "Backend service".to_owned(),
            client_type: CONFIDENTIAL_JWT.to_owned(),
            redirect_uris: Vec::new(),
            jwks: Some(r#"{"keys":[{"kty":"EC","crv":"P-384"}]}"#.to_owned()),
            jwks_url: Some("https://backend.example/jwks.json".to_owned()),
            created_at: 20,
            ..public.clone()
        };
        for c in [&public, &jwt] {
            s.insert_client(c, &NoAudit, &change(AccountChangeKind::ClientRegistered))
                .await
                .unwrap();
        }
        assert_eq!(
            s.client("pvcl_public").await.unwrap().as_ref(),
            Some(&public)
        );
        assert_eq!(s.client("pvcl_backend").await.unwrap().as_ref(), Some(&jwt));
        assert_eq!(
            s.list_clients().await.unwrap(),
            [public.clone(), jwt.clone()],
            "{l}"
        );

        // A line break would split a redirect URI when read back: refused.
        let bad = ClientRow {
            client_id: "pvcl_bad".to_owned(),
            redirect_uris: vec!["https://a.example/cb\nhttps://evil.example/cb".to_owned()],
            ..public.clone()
        };
        assert!(
            s.insert_client(&bad, &NoAudit, &change(AccountChangeKind::ClientRegistered))
                .await
                .is_err()
        );
        assert_eq!(s.client("pvcl_bad").await.unwrap(), None, "{l}");

        // A row from before client types reads as a secret client without redirect URIs.
        sqlx::query(
            "UPDATE oauth_clients SET client_type = NULL, redirect_uris = NULL \
             WHERE client_id = 'pvcl_backend'",
        )
        .execute(s.pool())
        .await
        .unwrap();
        let old = s.client("pvcl_backend").await.unwrap().unwrap();
        assert_eq!(old.client_type, CONFIDENTIAL_SECRET, "{l}");
        assert!(old.redirect_uris.is_empty(), "{l}");

        let replace = |id: &'static str| async move {
            s.set_client_secret(
                id,
                &[5; 32],
                &NoAudit,
                &change(AccountChangeKind::ClientSecretReplaced),
            )
            .await
            .unwrap()
        };
        assert!(replace("pvcl_backend").await, "{l}");
        assert_eq!(
            s.client("pvcl_backend").await.unwrap().unwrap().secret_hash,
            [5; 32]
        );
        assert!(!replace("pvcl_nobody").await, "{l}");
        s.disable_client(
            "pvcl_backend",
            30,
            &NoAudit,
            &change(AccountChangeKind::ClientDisabled),
        )
        .await
        .unwrap();
        assert!(
            !replace("pvcl_backend").await,
            "{l}: a disabled client keeps its secret"
        );
    }
}

#[tokio::test]
async fn launch_contexts_and_codes_of_an_erased_patient_are_deleted() {
    for f in fixtures().await {
        let (s, l) = (&f.store, f.label);
        let p = s
            .create(valid(patient("Erased", "Eve")), &NoAudit)
            .await
            .unwrap();
        let q = s
            .create(valid(patient("Kept", "Kim")), &NoAudit)
            .await
            .unwrap();
        let launch = |hash: u8, who: &str| LaunchRow {
            launch_hash: vec![hash; 32],
            user_id: "u-1".to_owned(),
            patient_id: who.to_owned(),
            encounter_id: Some("e-1".to_owned()),
            created_at: 100,
            expires_at: 400,
        };
        for (n, who) in [(1, p.id.as_str()), (2, q.id.as_str())] {
            s.insert_launch(&launch(n, who)).await.unwrap();
            s.insert_code(&CodeRow {
                launch_patient: Some(who.to_owned()),
                ..code(n, "fam", 100)
            })
            .await
            .unwrap();
        }
        assert_eq!(
            s.launch(&[1; 32]).await.unwrap(),
            Some(launch(1, p.id.as_str())),
            "{l}"
        );
        assert_eq!(s.launch(&[3; 32]).await.unwrap(), None, "{l}");

        s.erase_patient(&p.id, &NoAudit).await.unwrap();
        assert_eq!(s.launch(&[1; 32]).await.unwrap(), None, "{l}");
        assert_eq!(
            s.take_code(&[1; 32], 150).await.unwrap(),
            CodeTake::Unknown,
            "{l}"
        );
        assert!(s.launch(&[2; 32]).await.unwrap().is_some(), "{l}");
        assert!(matches!(
            s.take_code(&[2; 32], 150).await.unwrap(),
            CodeTake::Taken(_)
        ));

        // Expired launch contexts are purged when the next one is stored.
        s.insert_launch(&LaunchRow {
            created_at: 500,
            expires_at: 800,
            ..launch(5, q.id.as_str())
        })
        .await
        .unwrap();
        assert_eq!(s.launch(&[2; 32]).await.unwrap(), None, "{l}");
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn signing_keys_are_sealed_at_rest_and_bound_to_their_row() {
    for f in fixtures().await {
        let (s, l) = (&f.store, f.label);
        let marker = format!("PRIVATE-KEY-MARKER-{}", random_hex());
        let jwk = r#"{"kty":"RSA","kid":"k-1","alg":"RS256","use":"sig","n":"AQAB","e":"AQAB"}"#;
        let key = SigningKeyRow {
            kid: "k-1".to_owned(),
            alg: "RS256".to_owned(),
            private_der: Zeroizing::new(marker.as_bytes().to_vec()),
            public_jwk: jwk.to_owned(),
            created_at: 100,
            retired_at: None,
        };
        s.insert_signing_key(&key).await.unwrap();
        s.insert_signing_key(&SigningKeyRow {
            kid: "k-2".to_owned(),
            private_der: Zeroizing::new(b"second".to_vec()),
            created_at: 200,
            ..key.clone()
        })
        .await
        .unwrap();
        assert!(
            s.insert_signing_key(&key).await.is_err(),
            "{l}: a key id is stored once"
        );
        let debug = format!("{key:?}");
        assert!(debug.contains("k-1") && !debug.contains(&marker), "{l}");

        let keys = s.signing_keys().await.unwrap();
        assert_eq!(keys.len(), 2, "{l}");
        assert_eq!(keys[0].kid, "k-1");
        assert_eq!(keys[0].private_der.as_slice(), marker.as_bytes(), "{l}");
        assert_eq!(
            (keys[0].public_jwk.as_str(), keys[0].alg.as_str()),
            (jwk, "RS256")
        );
        assert_eq!(keys[1].private_der.as_slice(), b"second");

        // The private key is in no column in the clear.
        if !phivault_crypto::NOOP_CIPHER {
            let sealed: Vec<u8> = sqlx::query_scalar(
                "SELECT private_sealed FROM oidc_signing_keys WHERE kid = 'k-1'",
            )
            .fetch_one(s.pool())
            .await
            .unwrap();
            assert!(!contains(&sealed, marker.as_bytes()), "{l}");
        }

        // A row whose public key (or algorithm) was changed does not open.
        sqlx::query(
            "UPDATE oidc_signing_keys SET public_jwk = public_jwk || ' ' WHERE kid = 'k-2'",
        )
        .execute(s.pool())
        .await
        .unwrap();
        assert!(
            matches!(s.signing_keys().await, Err(StoreError::Integrity { .. })),
            "{l}"
        );
        sqlx::query("DELETE FROM oidc_signing_keys WHERE kid = 'k-2'")
            .execute(s.pool())
            .await
            .unwrap();
        sqlx::query("UPDATE oidc_signing_keys SET alg = 'none' WHERE kid = 'k-1'")
            .execute(s.pool())
            .await
            .unwrap();
        assert!(
            matches!(s.signing_keys().await, Err(StoreError::Integrity { .. })),
            "{l}"
        );
        sqlx::query("UPDATE oidc_signing_keys SET alg = 'RS256' WHERE kid = 'k-1'")
            .execute(s.pool())
            .await
            .unwrap();

        assert!(s.retire_signing_key("k-1", 300).await.unwrap(), "{l}");
        assert!(!s.retire_signing_key("k-1", 400).await.unwrap(), "{l}");
        assert!(!s.retire_signing_key("nope", 400).await.unwrap(), "{l}");
        assert_eq!(
            s.signing_keys().await.unwrap()[0].retired_at,
            Some(300),
            "{l}"
        );

        // Nor anywhere in the database files (SQLite: database, WAL and shared memory).
        if l == "sqlite" && !phivault_crypto::NOOP_CIPHER {
            s.close().await;
            let mut files = 0;
            for entry in std::fs::read_dir(f._dir.path()).unwrap() {
                let bytes = std::fs::read(entry.unwrap().path()).unwrap();
                assert!(!contains(&bytes, marker.as_bytes()), "{l}");
                files += 1;
            }
            assert!(files >= 1, "{l}");
        }
    }
}
