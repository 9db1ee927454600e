//! End-to-end: account changes commit with their audit entry, on every backend (DESIGN.md
//! invariant 2). When the trail refuses inserts, a change made through the admin API
//! (user, link, grant, client), the CLI (`user add|grant|link-patient`, `client add`) or
//! the session routes (logout, TOTP enrolment) does not happen: the answer is 503 (the CLI
//! fails), and afterwards the user cannot log in, the grant is absent, the client cannot get a
//! token, the session still works, and the trail holds nothing new. When the trail accepts
//! them, each change has exactly one entry, in the change's transaction.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use phivault_audit::{ActorKind, AuditEntry, Outcome};
use phivault_testkit::fixtures;
use phivault_testkit::{Api, Backend, Marker, Resp, Server, backends, random_username};
use reqwest::Method;
use serde_json::{Value, json};
use sqlx::Row;

const BIN: &str = env!("CARGO_BIN_EXE_phivault");

/// Every audit entry after `after` (seq), read from the database, but the server's own alerts
/// (actor `phivault`): the detection rules raise them in the background, at their own pace,
/// and they are not the requests' entries.
async fn entries_after(server: &Server, after: u64) -> Vec<AuditEntry> {
    let db = server.db().await;
    let rows = sqlx::query(
        "SELECT body FROM audit_entries WHERE seq > $1 AND actor <> 'phivault' \
         ORDER BY seq",
    )
    .bind(i64::try_from(after).unwrap())
    .fetch_all(&db)
    .await
    .unwrap();
    db.close().await;
    rows.iter()
        .map(|row| AuditEntry::from_canonical(&row.get::<Vec<u8>, _>("body")).unwrap())
        .collect()
}

/// The seq of the last entry (0 when none).
async fn last_seq(server: &Server) -> u64 {
    let db = server.db().await;
    let row = sqlx::query("SELECT COALESCE(MAX(seq), 0) AS last FROM audit_entries")
        .fetch_one(&db)
        .await
        .unwrap();
    db.close().await;
    u64::try_from(row.get::<i64, _>("last")).unwrap()
}

/// Rows of an account table.
async fn count(server: &Server, table: &str) -> i64 {
    let db = server.db().await;
    let n = sqlx::query(&format!("SELECT COUNT(*) AS n FROM {table}"))
        .fetch_one(&db)
        .await
        .unwrap()
        .get::<i64, _>("n");
    db.close().await;
    n
}

/// Makes the audit table refuse inserts (`on` true) or accept them again.
async fn refuse_audit_inserts(server: &Server, on: bool) {
    let db = server.db().await;
    let statements: &[&str] = match (server.backend(), on) {
        (Backend::Sqlite, true) => &["CREATE TRIGGER audit_ro BEFORE INSERT ON audit_entries \
              BEGIN SELECT RAISE(ABORT, 'read-only'); END;"],
        (Backend::Sqlite, false) => &["DROP TRIGGER audit_ro"],
        (Backend::Postgres { .. }, true) => &[
            "CREATE FUNCTION audit_ro() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN RAISE EXCEPTION 'read-only'; END $$",
            "CREATE TRIGGER audit_ro BEFORE INSERT ON audit_entries \
             FOR EACH ROW EXECUTE FUNCTION audit_ro()",
        ],
        (Backend::Postgres { .. }, false) => &[
            "DROP TRIGGER audit_ro ON audit_entries",
            "DROP FUNCTION audit_ro()",
        ],
    };
    for sql in statements {
        sqlx::query(sql).execute(&db).await.unwrap();
    }
    db.close().await;
}

async fn admin_post(server: &Server, admin: &str, path: &str, body: &Value) -> Resp {
    Api::send(
        server
            .origin_request(Method::POST, path, Some(admin))
            .header("content-type", "application/json")
            .body(body.to_string()),
    )
    .await
}

fn unavailable(r: &Resp, what: &str) {
    assert_eq!(r.status, 503, "{what}: {r:?}");
    r.assert_outcome(503, &["audit"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn account_changes_do_not_happen_without_their_entry() {
    for backend in backends() {
        let server = Server::start(BIN, &backend, &[]).await;
        let s = server.api().clone();
        let admin = server.staff_session(&random_username(), "admin").await;
        let pid = s
            .create(&fixtures::patient(Marker::name().text(), "Kept"))
            .await;
        let doc = random_username();
        server.create_user(&doc, "clinician").await;
        let pat = random_username();
        let pat_password = server.create_user(&pat, "patient").await;
        // A session to log out of and to enrol TOTP with (a patient needs no second factor).
        let session = server.api_as(
            &server
                .sign_in(&pat, "patient", &pat_password, false)
                .await
                .token,
        );

        let (users, grants, clients, totp) = (
            count(&server, "users").await,
            count(&server, "care_grants").await,
            count(&server, "oauth_clients").await,
            count(&server, "users WHERE totp_sealed IS NOT NULL").await,
        );
        let before = last_seq(&server).await;
        refuse_audit_inserts(&server, true).await;

        let ghost = random_username();
        let r = admin_post(
            &server,
            &admin,
            "/admin/users",
            &json!({ "username": ghost, "password": "Correct-Horse-Battery-9", "role": "patient" }),
        )
        .await;
        unavailable(&r, "create user");
        let r = admin_post(
            &server,
            &admin,
            &format!("/admin/users/{doc}/grants"),
            &json!({ "patient": pid }),
        )
        .await;
        unavailable(&r, "grant");
        let r = admin_post(
            &server,
            &admin,
            &format!("/admin/users/{pat}/link-patient"),
            &json!({ "patient": pid }),
        )
        .await;
        unavailable(&r, "link patient");
        let r = admin_post(
            &server,
            &admin,
            "/admin/clients",
            &json!({ "name": "ghost app", "scope": "system/*.rs" }),
        )
        .await;
        unavailable(&r, "create client");
        let r =
            Api::send(server.origin_request(Method::POST, "/auth/logout", Some(session.token())))
                .await;
        unavailable(&r, "logout");
        let r = Api::send(server.origin_request(
            Method::POST,
            "/auth/totp/enroll",
            Some(session.token()),
        ))
        .await;
        unavailable(&r, "TOTP enrolment");
        assert!(!r.text.contains("otpauth"), "no secret shown: {r:?}");

        let cli_ghost = random_username();
        for (args, what) in [
            (
                vec!["user", "grant", doc.as_str(), pid.as_str()],
                "user grant",
            ),
            (
                vec!["user", "link-patient", pat.as_str(), pid.as_str()],
                "link",
            ),
            (
                vec![
                    "user",
                    "add",
                    "--username",
                    cli_ghost.as_str(),
                    "--role",
                    "patient",
                ],
                "user add",
            ),
            (
                vec!["client", "add", "--name", "ghost", "--scope", "system/*.rs"],
                "client add",
            ),
        ] {
            let out = server.cli(&args, None).await;
            assert_eq!(out.code, Some(1), "{what} must fail: {out:?}");
            assert!(
                out.stderr.contains("audit"),
                "{what}: names the trail: {}",
                out.stderr
            );
            assert!(
                !out.stdout.contains("client_secret") && !out.stdout.contains("password for"),
                "{what}: nothing is shown of a change that did not happen: {}",
                out.stdout
            );
        }
        refuse_audit_inserts(&server, false).await;

        // None of it happened, and the trail holds nothing new.
        assert_eq!(last_seq(&server).await, before, "{}", backend.name());
        assert_eq!(count(&server, "users").await, users, "no user was created");
        assert_eq!(count(&server, "care_grants").await, grants, "no grant");
        assert_eq!(count(&server, "oauth_clients").await, clients, "no client");
        assert_eq!(
            count(&server, "users WHERE totp_sealed IS NOT NULL").await,
            totp,
            "no TOTP secret was stored"
        );
        for name in [&ghost, &cli_ghost] {
            let r = server.login(name, "Correct-Horse-Battery-9", None).await;
            assert_eq!(r.status, 401, "the user does not exist: {r:?}");
        }
        let r = Api::send(server.origin_request(
            Method::POST,
            "/auth/totp/enroll",
            Some(session.token()),
        ))
        .await;
        assert_eq!(
            r.status, 200,
            "the logout did not happen: the session works: {r:?}"
        );
        server
            .cli(&["audit", "verify"], None)
            .await
            .assert_ok("audit verify");
        server.assert_no_panic();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn each_account_change_has_exactly_one_entry() {
    for backend in backends() {
        let server = Server::start(BIN, &backend, &[]).await;
        let s = server.api().clone();
        let admin_name = random_username();
        let admin = server.staff_session(&admin_name, "admin").await;
        let pid = s
            .create(&fixtures::patient(Marker::name().text(), "Granted"))
            .await;
        let pat = random_username();
        let pat_password = server.create_user(&pat, "patient").await;

        // Admin API: a user, then the patient's link; one entry each, committed with it.
        let before = last_seq(&server).await;
        let newcomer = random_username();
        let r = admin_post(
            &server,
            &admin,
            "/admin/users",
            &json!({ "username": newcomer, "password": "Correct-Horse-Battery-9", "role": "patient" }),
        )
        .await;
        assert_eq!(r.status, 201, "{r:?}");
        let user_id = r.json()["user_id"].as_str().unwrap().to_owned();
        let entries = entries_after(&server, before).await;
        assert_eq!(entries.len(), 1, "{entries:?}");
        assert_eq!(entries[0].action, "POST /admin/users");
        assert_eq!(entries[0].outcome, Outcome::Allowed);
        assert_eq!(entries[0].actor_kind, ActorKind::User);
        assert_ne!(entries[0].actor_id, user_id, "the admin acted");
        assert_eq!(
            server
                .login(&newcomer, "Correct-Horse-Battery-9", None)
                .await
                .status,
            200
        );

        let before = last_seq(&server).await;
        let r = admin_post(
            &server,
            &admin,
            &format!("/admin/users/{pat}/link-patient"),
            &json!({ "patient": pid }),
        )
        .await;
        assert_eq!(r.status, 204, "{r:?}");
        let entries = entries_after(&server, before).await;
        assert_eq!(entries.len(), 1, "{entries:?}");
        let e = &entries[0];
        assert_eq!(e.action, "POST /admin/users/{username}/link-patient");
        assert_eq!(e.resource_type.as_deref(), Some("Patient"));
        assert_eq!(e.resource_id.as_deref(), Some(pid.as_str()));
        assert_eq!(
            e.patient_id.as_deref(),
            Some(pid.as_str()),
            "in the access log"
        );
        let session = server
            .sign_in(&pat, "patient", &pat_password, false)
            .await
            .token;
        server
            .api_as(&session)
            .get(&format!("Patient/{pid}"))
            .await
            .assert_status(200);

        // The CLI: one `cli user grant` entry, committed with the grant.
        let doc = random_username();
        server.create_user(&doc, "clinician").await;
        let before = last_seq(&server).await;
        server.grant(&doc, &pid, &[], None).await;
        let entries = entries_after(&server, before).await;
        assert_eq!(entries.len(), 1, "{entries:?}");
        assert_eq!(entries[0].action, "cli user grant");
        assert_eq!(entries[0].actor_kind, ActorKind::System);
        assert_eq!(entries[0].patient_id.as_deref(), Some(pid.as_str()));
        assert_eq!(entries[0].outcome, Outcome::Allowed);

        // A refused change changes nothing and is recorded as a refusal, once.
        let before = last_seq(&server).await;
        let r = admin_post(
            &server,
            &admin,
            "/admin/users/no-such-user/grants",
            &json!({ "patient": pid }),
        )
        .await;
        assert_eq!(r.status, 404, "{r:?}");
        let entries = entries_after(&server, before).await;
        assert_eq!(entries.len(), 1, "{entries:?}");
        assert_eq!(entries[0].outcome, Outcome::Error);
        let out = server
            .cli(&["user", "grant", "no-such-user", &pid], None)
            .await;
        assert_eq!(out.code, Some(1), "{out:?}");
        let entries = entries_after(&server, before).await;
        assert_eq!(entries.len(), 2, "{entries:?}");
        assert_eq!(entries[1].action, "cli user grant");
        assert_eq!(entries[1].outcome, Outcome::Error);

        // Logout: the revocation and its entry.
        let before = last_seq(&server).await;
        let r =
            Api::send(server.origin_request(Method::POST, "/auth/logout", Some(&session))).await;
        assert_eq!(r.status, 204, "{r:?}");
        let entries = entries_after(&server, before).await;
        assert_eq!(entries.len(), 1, "{entries:?}");
        assert_eq!(entries[0].action, "POST /auth/logout");
        server
            .api_as(&session)
            .get(&format!("Patient/{pid}"))
            .await
            .assert_status(401);

        server
            .cli(&["audit", "verify"], None)
            .await
            .assert_ok("audit verify");
        server.assert_no_panic();
    }
}

/// Containment: `phivault user disable` and `client disable`, run while the server serves,
/// refuse the account's session and the client's token (and its credentials) from their next
/// request on, each with one entry; an unknown name changes nothing and is recorded as an
/// error.
#[tokio::test]
async fn disabling_an_account_or_a_client_refuses_its_next_request() {
    for backend in backends() {
        let server = Server::start(BIN, &backend, &[]).await;
        let s = server.api().clone();
        let pid = s
            .create(&fixtures::patient(Marker::name().text(), "Contained"))
            .await;
        let doc = random_username();
        let session = server.staff_session(&doc, "clinician").await;
        server.grant(&doc, &pid, &[], None).await;
        server
            .api_as(&session)
            .get(&format!("Patient/{pid}"))
            .await
            .assert_status(200);
        let (client_id, secret) = server.add_client("contained", "system/*.rs", None).await;
        let token = server.client_credentials(&client_id, &secret, None).await;
        server
            .api_as(&token)
            .get(&format!("Patient/{pid}"))
            .await
            .assert_status(200);

        let before = last_seq(&server).await;
        server
            .cli(&["user", "disable", &doc], None)
            .await
            .assert_ok("phivault user disable");
        server
            .cli(&["client", "disable", &client_id], None)
            .await
            .assert_ok("phivault client disable");
        let entries = entries_after(&server, before).await;
        let actions: Vec<(&str, Outcome)> = entries
            .iter()
            .map(|e| (e.action.as_str(), e.outcome))
            .collect();
        assert_eq!(
            actions,
            [
                ("cli user disable", Outcome::Allowed),
                ("cli client disable", Outcome::Allowed)
            ],
            "{entries:?}"
        );

        server
            .api_as(&session)
            .get(&format!("Patient/{pid}"))
            .await
            .assert_status(401);
        server
            .api_as(&token)
            .get(&format!("Patient/{pid}"))
            .await
            .assert_status(401);
        assert_eq!(
            server.token_request(&client_id, &secret, None).await.status,
            401,
            "a disabled client gets no new token"
        );
        // The server's own app still works: only what was disabled is refused.
        s.get(&format!("Patient/{pid}")).await.assert_status(200);

        let before = last_seq(&server).await;
        let out = server.cli(&["user", "disable", "no-such-user"], None).await;
        assert_eq!(out.code, Some(1), "{out:?}");
        let entries = entries_after(&server, before).await;
        assert_eq!(entries.len(), 1, "{entries:?}");
        assert_eq!(entries[0].action, "cli user disable");
        assert_eq!(entries[0].outcome, Outcome::Error);
    }
}
