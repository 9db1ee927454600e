//! End-to-end audit trail of writes and refusals, on every backend (DESIGN.md invariant 2):
//! a write and its audit entry commit in one transaction, so when the trail refuses inserts
//! the write answers 503 and nothing of it is stored; each single write has exactly one
//! entry naming the resource and its patient; a transaction Bundle has one entry per written
//! resource plus its own; a refused read names the patient it was refused on; and the CLI's
//! data commands leave entries of their own.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use phivault_audit::{ActorKind, AuditEntry, Outcome};
use phivault_testkit::fixtures::{self, BundleBuilder};
use phivault_testkit::{Backend, Marker, Server, backends, query, random_username};
use serde_json::{Value, json};
use sqlx::Row;

const BIN: &str = env!("CARGO_BIN_EXE_phivault");

/// Every audit entry after `after` (seq), read from the database, but the server's own alerts
/// (actor `phivault`): the detection rules raise them in the background, at their own pace,
/// and they are not the requests' entries.
async fn entries_after(server: &Server, after: u64) -> Vec<AuditEntry> {
    let db = server.db().await;
    let rows = sqlx::query(
        "SELECT seq, body FROM audit_entries WHERE seq > $1 AND actor <> 'phivault' \
         ORDER BY seq",
    )
    .bind(i64::try_from(after).unwrap())
    .fetch_all(&db)
    .await
    .unwrap();
    db.close().await;
    rows.iter()
        .map(|row| {
            let body: Vec<u8> = row.get("body");
            AuditEntry::from_canonical(&body).unwrap_or_else(|| {
                panic!("not a canonical entry: {}", String::from_utf8_lossy(&body))
            })
        })
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

/// (action, resource type, resource id, patient, outcome) of an entry.
fn summary(
    e: &AuditEntry,
) -> (
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Outcome,
) {
    (
        e.action.clone(),
        e.resource_type.clone(),
        e.resource_id.clone(),
        e.patient_id.clone(),
        e.outcome,
    )
}

fn some(s: &str) -> Option<String> {
    Some(s.to_owned())
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

fn heart_rate(subject: &str) -> Value {
    fixtures::observation(
        subject,
        fixtures::coding(Some(fixtures::LOINC), "8867-4", "Heart rate"),
        "2021-03-04T10:00:00Z",
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_commit_with_exactly_their_entries() {
    for backend in backends() {
        let server = Server::start(BIN, &backend, &[]).await;
        let s = server.api().clone();
        let (app, _) = server.system_client().unwrap();
        let app = app.to_owned();

        // Create, update, delete: one entry each, naming the resource and its patient.
        let before = last_seq(&server).await;
        let family = Marker::name();
        let pid = s.create(&fixtures::patient(family.text(), "Audited")).await;
        let patient = format!("Patient/{pid}");
        let mut body = s.get(&patient).await.json();
        let after_read = last_seq(&server).await;
        body["gender"] = json!("female");
        s.put_json(&patient, &body).await.assert_status(200);
        let oid = s.create(&heart_rate(&patient)).await;
        let r = s.delete(&format!("Observation/{oid}")).await;
        assert!(matches!(r.status, 200 | 204), "{r:?}");
        let entries = entries_after(&server, before).await;
        let got: Vec<_> = entries.iter().map(summary).collect();
        assert_eq!(
            got,
            vec![
                (
                    "POST /fhir/{type}".to_owned(),
                    some("Patient"),
                    some(&pid),
                    some(&pid),
                    Outcome::Allowed
                ),
                (
                    "GET /fhir/{type}/{id}".to_owned(),
                    some("Patient"),
                    some(&pid),
                    some(&pid),
                    Outcome::Allowed
                ),
                (
                    "PUT /fhir/{type}/{id}".to_owned(),
                    some("Patient"),
                    some(&pid),
                    some(&pid),
                    Outcome::Allowed
                ),
                (
                    "POST /fhir/{type}".to_owned(),
                    some("Observation"),
                    some(&oid),
                    some(&pid),
                    Outcome::Allowed
                ),
                (
                    "DELETE /fhir/{type}/{id}".to_owned(),
                    some("Observation"),
                    some(&oid),
                    some(&pid),
                    Outcome::Allowed
                ),
            ],
            "{}",
            backend.name()
        );
        assert_eq!(
            after_read,
            before + 2,
            "the read's entry was there before its answer"
        );
        for e in &entries {
            assert_eq!(e.actor_id, app);
            assert_eq!(e.actor_kind, ActorKind::Client);
            assert!(e.source_address.is_some(), "{e:?}");
        }

        // A transaction of two resources: one entry per resource, then the Bundle's own.
        let before = last_seq(&server).await;
        let mut bundle = BundleBuilder::transaction();
        let urn = bundle.post(fixtures::patient(Marker::name().text(), "Bundled"));
        bundle.post(heart_rate(&urn));
        let r = s.post_json("", &bundle.build()).await;
        r.assert_status(200);
        let answer = r.json();
        let new_pid = answer["entry"][0]["resource"]["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let new_oid = answer["entry"][1]["resource"]["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let entries = entries_after(&server, before).await;
        assert_eq!(entries.len(), 3, "{entries:?}");
        let mut written: Vec<_> = entries[..2].iter().map(summary).collect();
        written.sort_by(|a, b| a.1.cmp(&b.1));
        assert_eq!(
            written,
            vec![
                (
                    "create".to_owned(),
                    some("Observation"),
                    some(&new_oid),
                    some(&new_pid),
                    Outcome::Allowed
                ),
                (
                    "create".to_owned(),
                    some("Patient"),
                    some(&new_pid),
                    some(&new_pid),
                    Outcome::Allowed
                ),
            ]
        );
        assert_eq!(entries[2].action, "POST /fhir");
        assert_eq!(entries[2].outcome, Outcome::Allowed);
        assert!(
            entries
                .iter()
                .all(|e| e.request_id == entries[2].request_id)
        );
        for e in &entries {
            let text = serde_json::to_string(e).unwrap();
            assert!(!text.contains(family.text()), "no PHI in the trail: {text}");
        }

        // The trail verifies.
        server
            .cli(&["audit", "verify"], None)
            .await
            .assert_ok("audit verify");
        server.assert_no_panic();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_fail_closed_when_the_audit_refuses() {
    for backend in backends() {
        let server = Server::start(BIN, &backend, &[]).await;
        let s = server.api().clone();
        let pid = s
            .create(&fixtures::patient(Marker::name().text(), "Kept"))
            .await;
        let patient = format!("Patient/{pid}");
        let oid = s.create(&heart_rate(&patient)).await;
        let observation = format!("Observation/{oid}");
        let before_patient = s.get(&patient).await.json();
        let before_seq = last_seq(&server).await;

        refuse_audit_inserts(&server, true).await;
        let lost = Marker::name();
        let refused = |r: &phivault_testkit::Resp, what: &str| {
            assert_eq!(r.status, 503, "{what} on {}: {r:?}", backend.name());
            r.assert_outcome(503, &["audit"]);
            assert!(!r.text.contains(lost.text()), "{r:?}");
        };
        let r = s
            .post_json("Patient", &fixtures::patient(lost.text(), "Lost"))
            .await;
        refused(&r, "create");
        let mut body = before_patient.clone();
        body["gender"] = json!("unknown");
        body["name"][0]["family"] = json!(lost.text());
        let r = s.put_json(&patient, &body).await;
        refused(&r, "update");
        let r = s.delete(&observation).await;
        refused(&r, "delete");
        let mut bundle = BundleBuilder::transaction();
        let urn = bundle.post(fixtures::patient(lost.text(), "Bundled"));
        bundle.post(heart_rate(&urn));
        let r = s.post_json("", &bundle.build()).await;
        refused(&r, "transaction");
        let r = s.get(&patient).await;
        refused(&r, "read");
        refuse_audit_inserts(&server, false).await;

        // Nothing of it was stored, and nothing was added to the trail.
        assert_eq!(last_seq(&server).await, before_seq);
        let found = s
            .search_ids(&query("Patient", &[("family", lost.text())]))
            .await;
        assert!(found.is_empty(), "{}: {found:?}", backend.name());
        let r = s.get(&patient).await;
        r.assert_status(200);
        assert_eq!(r.json(), before_patient, "the update was rolled back");
        s.get(&observation).await.assert_status(200);
        let history = s.get(&format!("{patient}/_history")).await.json();
        assert_eq!(history["total"], 1, "{history}");
        let found = s
            .search_ids(&query("Observation", &[("patient", &patient)]))
            .await;
        assert_eq!(found, vec![oid.clone()], "no bundled Observation");
        server
            .cli(&["audit", "verify"], None)
            .await
            .assert_ok("audit verify");
        server.assert_no_panic();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_read_names_its_patient() {
    for backend in backends() {
        let server = Server::start(BIN, &backend, &[]).await;
        let s = server.api().clone();
        let pid = s
            .create(&fixtures::patient(Marker::name().text(), "Elsewhere"))
            .await;
        let oid = s.create(&heart_rate(&format!("Patient/{pid}"))).await;
        let doc = server.staff_session(&random_username(), "clinician").await;
        let as_doc = server.api_as(&doc);

        let before = last_seq(&server).await;
        as_doc
            .get(&format!("Observation/{oid}"))
            .await
            .assert_outcome(403, &["denied"]);
        as_doc
            .get(&format!("Patient/{pid}"))
            .await
            .assert_outcome(403, &["denied"]);
        let entries = entries_after(&server, before).await;
        assert_eq!(entries.len(), 2, "{entries:?}");
        assert_eq!(
            summary(&entries[0]),
            (
                "GET /fhir/{type}/{id}".to_owned(),
                some("Observation"),
                some(&oid),
                some(&pid),
                Outcome::Denied
            )
        );
        assert_eq!(
            summary(&entries[1]),
            (
                "GET /fhir/{type}/{id}".to_owned(),
                some("Patient"),
                some(&pid),
                some(&pid),
                Outcome::Denied
            )
        );
        for e in &entries {
            assert_eq!(e.actor_kind, ActorKind::User);
            assert_eq!(e.role.as_deref(), Some("clinician"));
            assert_eq!(e.purpose.as_deref(), Some("TREAT"));
        }
        server.assert_no_panic();
    }
}

/// The actor id the CLI records for the user running these tests.
fn cli_actor() -> String {
    ["USER", "LOGNAME"]
        .iter()
        .filter_map(|v| std::env::var(v).ok())
        .map(|u| u.trim().to_owned())
        .find(|u| !u.is_empty())
        .map_or_else(|| "cli".to_owned(), |u| format!("cli:{u}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_commands_that_touch_data_are_audited() {
    for backend in backends() {
        let server = Server::start(BIN, &backend, &[]).await;
        let s = server.api().clone();
        let actor = cli_actor();

        // `phivault import`: one entry per resource in its transaction, then the run's.
        let mut bundle = BundleBuilder::transaction();
        let family = Marker::name();
        let urn = bundle.post(fixtures::patient(family.text(), "Imported"));
        bundle.post(heart_rate(&urn));
        let file = server.data_dir().join("import-bundle.json");
        std::fs::write(&file, bundle.build().to_string()).unwrap();
        let path = file.display().to_string();
        let before = last_seq(&server).await;
        let out = server.cli(&["import", &path], None).await;
        out.assert_ok("import");
        assert!(out.stdout.contains("imported: 2 resources"), "{out:?}");
        let pid = s
            .search_ids(&query("Patient", &[("family", family.text())]))
            .await;
        assert_eq!(pid.len(), 1, "{pid:?}");
        let pid = pid[0].clone();
        let oid = s
            .search_ids(&query(
                "Observation",
                &[("patient", &format!("Patient/{pid}"))],
            ))
            .await;
        assert_eq!(oid.len(), 1, "{oid:?}");
        // The two searches above are audited too: take the import's entries only.
        let entries: Vec<AuditEntry> = entries_after(&server, before)
            .await
            .into_iter()
            .filter(|e| e.actor_kind == ActorKind::System)
            .collect();
        assert_eq!(entries.len(), 3, "{}: {entries:?}", backend.name());
        let mut written: Vec<_> = entries[..2].iter().map(summary).collect();
        written.sort_by(|a, b| a.1.cmp(&b.1));
        assert_eq!(
            written,
            vec![
                (
                    "create".to_owned(),
                    some("Observation"),
                    some(&oid[0]),
                    some(&pid),
                    Outcome::Allowed
                ),
                (
                    "create".to_owned(),
                    some("Patient"),
                    some(&pid),
                    some(&pid),
                    Outcome::Allowed
                ),
            ]
        );
        assert_eq!(
            summary(&entries[2]),
            ("cli import".to_owned(), None, None, None, Outcome::Allowed)
        );
        for e in &entries {
            assert_eq!(e.actor_id, actor);
            assert_eq!((e.role.as_ref(), e.purpose.as_ref()), (None, None));
            assert_eq!(e.request_id, entries[2].request_id, "one run");
            assert!(uuid_like(&e.request_id), "{e:?}");
        }

        // `phivault user add`: one entry; a failing one is audited as an error.
        let before = last_seq(&server).await;
        let username = random_username();
        server.create_user(&username, "clinician").await;
        let out = server
            .cli(
                &[
                    "user",
                    "add",
                    "--username",
                    &username,
                    "--role",
                    "clinician",
                    "--password-stdin",
                ],
                Some("another-long-password-91\n"),
            )
            .await;
        out.assert_error("a second user add of the same name", "");
        let grant = server.cli(&["user", "grant", &username, &pid], None).await;
        grant.assert_ok("user grant");
        let entries = entries_after(&server, before).await;
        let got: Vec<_> = entries.iter().map(summary).collect();
        assert_eq!(
            got,
            vec![
                (
                    "cli user add".to_owned(),
                    None,
                    None,
                    None,
                    Outcome::Allowed
                ),
                ("cli user add".to_owned(), None, None, None, Outcome::Error),
                (
                    "cli user grant".to_owned(),
                    some("Patient"),
                    some(&pid),
                    some(&pid),
                    Outcome::Allowed
                ),
            ],
            "{}",
            backend.name()
        );
        assert!(
            entries
                .iter()
                .all(|e| e.actor_id == actor && e.actor_kind == ActorKind::System)
        );
        assert_ne!(
            entries[0].request_id, entries[1].request_id,
            "a request id per run"
        );
        for e in &entries {
            let text = serde_json::to_string(e).unwrap();
            assert!(
                !text.contains(&username),
                "no account names in the trail: {text}"
            );
        }

        // When the trail refuses inserts: nothing is imported, and the commands fail saying so.
        refuse_audit_inserts(&server, true).await;
        let lost = Marker::name();
        let mut bundle = BundleBuilder::transaction();
        bundle.post(fixtures::patient(lost.text(), "Lost"));
        std::fs::write(&file, bundle.build().to_string()).unwrap();
        let out = server.cli(&["import", &path], None).await;
        assert_eq!(out.code, Some(1), "{out:?}");
        assert!(out.stderr.contains("audit"), "{out:?}");
        let out = server.cli(&["break-glass", "list"], None).await;
        out.assert_error("break-glass list without a trail", "audit");
        refuse_audit_inserts(&server, false).await;
        let found = s
            .search_ids(&query("Patient", &[("family", lost.text())]))
            .await;
        assert!(found.is_empty(), "{}: {found:?}", backend.name());
        server
            .cli(&["audit", "verify"], None)
            .await
            .assert_ok("audit verify");
        server.assert_no_panic();
    }
}

fn uuid_like(s: &str) -> bool {
    s.len() == 36 && s.chars().filter(|c| *c == '-').count() == 4
}
