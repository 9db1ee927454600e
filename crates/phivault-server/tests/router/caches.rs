//! The server's caches never outlive what they cache. The verified-token cache: a token used
//! (so cached) and then revoked, or whose user or client is disabled, or whose patient link
//! changes, is answered by the new state on the very next request. The consent memo: a
//! consent written, withdrawn or deleted binds the next decision and the next search. Both
//! whether the change went through this server or through another process on the same
//! database (as the CLI does). On SQLite and (when `PHIVAULT_TEST_DATABASE_URL` is set)
//! PostgreSQL.

use super::*;

/// One context per backend (see [`backend_contexts`]).
async fn contexts() -> Vec<(&'static str, Ctx)> {
    backend_contexts("tokc").await
}

impl Ctx {
    /// The accounts service of another process on the same database: its own store (own
    /// pool, own caches), as `phivault user ...` opens it.
    async fn other_process(&self) -> Accounts {
        let keys = phivault_crypto::StaticKeyProvider::from_hex(self.master_hex.clone());
        let store = Store::open(&StoreOptions::new(self.url.clone()), &keys)
            .await
            .unwrap();
        Accounts::with_hasher(store, PasswordHasher::with_params(8, 1, 1).unwrap())
    }

    /// Reads `uri` with `token` twice (200 both times), so the token is verified and cached.
    async fn use_twice(&self, token: &str, uri: &str, what: &str) {
        for _ in 0..2 {
            let a = self.get_as(token, uri).await;
            assert_eq!(a.status, StatusCode::OK, "{what}: {a:?}");
        }
        assert!(self.state.accounts.verified_tokens() >= 1, "{what}");
    }

    async fn logout(&self, token: &str) -> Answer {
        self.send(
            self.req_as(token, Method::POST, "/auth/logout")
                .body(Body::empty())
                .unwrap(),
        )
        .await
    }
}

fn assert_refused(a: &Answer, what: &str) {
    a.assert_outcome(StatusCode::UNAUTHORIZED, "login");
    assert_eq!(a.diagnostics(), "authentication failed", "{what}");
}

/// A patient account linked to a new Patient; returns (patient id, session).
async fn patient_account(c: &Ctx, username: &str) -> (String, String) {
    let (pid, _) = c.create(&patient("Cached")).await;
    c.user(username, Role::Patient).await;
    c.state
        .accounts
        .link_patient(username, &Id::parse(&pid).unwrap(), &NoAudit)
        .await
        .unwrap();
    (pid, c.session(username).await)
}

#[tokio::test]
async fn a_cached_token_revoked_on_one_request_is_refused_on_the_next() {
    for (backend, c) in contexts().await {
        // Logout.
        let (pid, session) = patient_account(&c, "cache-logout").await;
        let uri = format!("/fhir/Patient/{pid}");
        c.use_twice(&session, &uri, backend).await;
        let a = c.logout(&session).await;
        assert_eq!(a.status, StatusCode::NO_CONTENT, "{backend}: {a:?}");
        assert_refused(&c.get_as(&session, &uri).await, backend);

        // OAuth2 revocation of a client's access token.
        let (id, secret) = c.client("cached-app", "system/*.rs", None).await;
        let access = c.client_token(&id, &secret, None).await;
        c.use_twice(&access, &uri, backend).await;
        let a = c
            .form(
                "/oauth/revoke",
                &format!("token={access}"),
                Some((&id, &secret)),
            )
            .await;
        assert_eq!(a.status, StatusCode::OK, "{backend}: {a:?}");
        assert_refused(&c.get_as(&access, &uri).await, backend);

        // Other tokens stay usable (verified again, then cached again).
        c.use_twice(&c.token, &uri, backend).await;
    }
}

#[tokio::test]
async fn revocation_by_another_process_binds_the_next_request() {
    for (backend, c) in contexts().await {
        let other = c.other_process().await;
        let (pid, session) = patient_account(&c, "cache-remote").await;
        let uri = format!("/fhir/Patient/{pid}");
        c.use_twice(&session, &uri, backend).await;
        other.revoke(&session, &NoAudit).await.unwrap();
        assert_refused(&c.get_as(&session, &uri).await, backend);
        // The same through the store directly (what the revocation writes).
        let second = c.session("cache-remote").await;
        c.use_twice(&second, &uri, backend).await;
        let hash = phivault_auth::TokenHash::of(&second);
        assert!(
            other
                .store()
                .revoke_token(
                    hash.as_bytes(),
                    i64::try_from(now_unix()).unwrap(),
                    &NoAudit,
                    &phivault_store::AccountChange::new(
                        phivault_store::AccountChangeKind::TokenRevoked
                    ),
                )
                .await
                .unwrap()
        );
        assert_refused(&c.get_as(&second, &uri).await, backend);
        other.store().close().await;
    }
}

#[tokio::test]
async fn a_cached_token_of_a_disabled_user_is_refused_on_the_next_request() {
    for (backend, c) in contexts().await {
        let other = c.other_process().await;
        let (pid, session) = patient_account(&c, "cache-disabled").await;
        let uri = format!("/fhir/Patient/{pid}");
        c.use_twice(&session, &uri, backend).await;
        other
            .disable_user("cache-disabled", &NoAudit)
            .await
            .unwrap();
        assert_refused(&c.get_as(&session, &uri).await, backend);

        // In this process too.
        let (pid, session) = patient_account(&c, "cache-disabled-here").await;
        let uri = format!("/fhir/Patient/{pid}");
        c.use_twice(&session, &uri, backend).await;
        c.state
            .accounts
            .disable_user("cache-disabled-here", &NoAudit)
            .await
            .unwrap();
        assert_refused(&c.get_as(&session, &uri).await, backend);
        other.store().close().await;
    }
}

#[tokio::test]
async fn a_cached_token_of_a_disabled_client_is_refused_on_the_next_request() {
    for (backend, c) in contexts().await {
        let other = c.other_process().await;
        let (pid, _) = c.create(&patient("ClientCache")).await;
        let uri = format!("/fhir/Patient/{pid}");
        let (id, secret) = c.client("to-disable", "system/*.rs", None).await;
        let access = c.client_token(&id, &secret, None).await;
        c.use_twice(&access, &uri, backend).await;
        other.disable_client(&id, &NoAudit).await.unwrap();
        assert_refused(&c.get_as(&access, &uri).await, backend);
        // Its credentials no longer get tokens either.
        let a = c
            .form(
                "/oauth/token",
                "grant_type=client_credentials",
                Some((&id, &secret)),
            )
            .await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{backend}: {a:?}");

        // In this process too.
        let (id, secret) = c.client("to-disable-here", "system/*.rs", None).await;
        let access = c.client_token(&id, &secret, None).await;
        c.use_twice(&access, &uri, backend).await;
        c.state
            .accounts
            .disable_client(&id, &NoAudit)
            .await
            .unwrap();
        assert_refused(&c.get_as(&access, &uri).await, backend);
        assert!(matches!(
            other.disable_client("pvcl_none", &NoAudit).await,
            Err(phivault_auth::ServiceError::NotFound(_))
        ));
        other.store().close().await;
    }
}

#[tokio::test]
async fn a_patient_link_changed_elsewhere_binds_the_next_request() {
    for (backend, c) in contexts().await {
        let other = c.other_process().await;
        let (pid, session) = patient_account(&c, "cache-relink").await;
        let uri = format!("/fhir/Patient/{pid}");
        c.use_twice(&session, &uri, backend).await;
        let (elsewhere, _) = c.create(&patient("Elsewhere")).await;
        other
            .link_patient("cache-relink", &Id::parse(&elsewhere).unwrap(), &NoAudit)
            .await
            .unwrap();
        // The token still speaks for the user, now linked to the other record.
        let a = c.get_as(&session, &uri).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{backend}: {a:?}");
        let a = c
            .get_as(&session, &format!("/fhir/Patient/{elsewhere}"))
            .await;
        assert_eq!(a.status, StatusCode::OK, "{backend}: {a:?}");
        other.store().close().await;
    }
}

// The other process writes as the system (as the CLI's import does), without a principal's
// decision: the proof-free store writes.
#[allow(clippy::disallowed_methods)]
#[tokio::test]
async fn a_consent_changed_by_another_process_binds_the_next_request() {
    for (backend, c) in contexts().await {
        let other = c.other_process().await;
        let admin = c.person("admin", Role::Admin).await;
        let doc = c.person("doc", Role::Clinician).await;
        let (pid, _) = c.create(&patient("Memo")).await;
        let (oid, _) = c.create(&observation(&pid)).await;
        c.grant(&admin, "doc", &pid, &[]).await;
        let uri = format!("/fhir/Observation/{oid}");
        let search = format!("/fhir/Observation?subject=Patient/{pid}");
        // Read twice (the memo holds the patient's consents: none), searched twice.
        for _ in 0..2 {
            let a = c.get_as(&doc, &uri).await;
            assert_eq!(a.status, StatusCode::OK, "{backend}: {a:?}");
            assert_eq!(total(&c.get_as(&doc, &search).await), 1, "{backend}");
            assert_eq!(
                total(&c.get_as(&doc, "/fhir/Observation").await),
                1,
                "{backend}"
            );
        }

        // The patient refuses treatment, written by another process: the next decision, the
        // next patient search and the next search across patients all apply it.
        let valid = |body: Value| c.state.validator.validate(body, None).unwrap();
        let consent = other
            .store()
            .create(valid(deny_consent(&pid, "TREAT", &[])), &NoAudit)
            .await
            .unwrap();
        c.get_as(&doc, &uri).await.assert_denied("consent-denies");
        assert_eq!(total(&c.get_as(&doc, &search).await), 0, "{backend}");
        assert_eq!(
            total(&c.get_as(&doc, "/fhir/Observation").await),
            0,
            "{backend}"
        );
        c.get_as(&doc, &uri).await.assert_denied("consent-denies");

        // The refusal withdrawn (inactive) elsewhere: the next request reads again.
        let mut body = consent.body.clone();
        body["status"] = json!("inactive");
        other
            .store()
            .update(&consent.id, valid(body.clone()), None, &NoAudit)
            .await
            .unwrap();
        let a = c.get_as(&doc, &uri).await;
        assert_eq!(a.status, StatusCode::OK, "{backend}: {a:?}");
        assert_eq!(
            total(&c.get_as(&doc, "/fhir/Observation").await),
            1,
            "{backend}"
        );

        // Active again, then deleted.
        body["status"] = json!("active");
        other
            .store()
            .update(&consent.id, valid(body), None, &NoAudit)
            .await
            .unwrap();
        c.get_as(&doc, &uri).await.assert_denied("consent-denies");
        other
            .store()
            .delete(consent.rtype, &consent.id, &NoAudit)
            .await
            .unwrap();
        let a = c.get_as(&doc, &uri).await;
        assert_eq!(a.status, StatusCode::OK, "{backend}: {a:?}");
        other.store().close().await;
    }
}
