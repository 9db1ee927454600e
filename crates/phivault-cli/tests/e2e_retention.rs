//! Retention (issue 6) through the CLI, on every backend: with `[retention] Observation =
//! "30d"` in the configuration file, `phivault retention run --dry-run` reports the expired
//! Observations and changes nothing; `phivault retention run` disposes of them (every version,
//! search tokens, pointer: reads answer NotFound, no ciphertext row is left), keeps the recent
//! ones and the other types, records a `dispose` audit entry per resource and a
//! `cli retention run` entry; a configuration naming an unknown type or a bad period is
//! refused with a message naming it, before anything runs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Output};

use phivault_audit::AuditEntry;
use phivault_crypto::FileKeyProvider;
use phivault_fhir::{Id, ResourceType, Validator};
use phivault_store::{NoAudit, Store, StoreError, StoreOptions};
use phivault_testkit::{Backend, PgSchema, backends};
use serde_json::{Value, json};
use sqlx::Row;

const BIN: &str = env!("CARGO_BIN_EXE_phivault");
const DAY: i64 = 86_400;

struct Setup {
    dir: tempfile::TempDir,
    url: String,
    store: Store,
    _schema: Option<PgSchema>,
}

impl Setup {
    async fn new(backend: &Backend) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let keys = FileKeyProvider::new(dir.path().join("master.key"));
        keys.create_if_missing().unwrap();
        let schema = match backend {
            Backend::Sqlite => None,
            Backend::Postgres { url } => Some(PgSchema::create(url).await),
        };
        let url = match &schema {
            Some(s) => s.url(),
            None => format!("sqlite://{}", dir.path().join("phivault.db").display()),
        };
        let store = Store::open(&StoreOptions::new(url.clone()), &keys)
            .await
            .unwrap();
        Setup {
            dir,
            url,
            store,
            _schema: schema,
        }
    }

    fn config(&self, text: &str) -> std::path::PathBuf {
        let path = self.dir.path().join("phivault.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    fn phivault(&self, config: &std::path::Path, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("--config")
            .arg(config)
            .args(args)
            .arg("--data-dir")
            .arg(self.dir.path())
            .arg("--database-url")
            .arg(&self.url)
            .current_dir(self.dir.path())
            .env_remove("PHIVAULT_DATABASE_URL")
            .env_remove("PHIVAULT_DATA_DIR")
            .env_remove("PHIVAULT_MASTER_KEY_FILE")
            .env_remove("PHIVAULT_CONFIG")
            .output()
            .unwrap()
    }

    async fn create(&self, body: Value) -> Id {
        let v = Validator::new().unwrap().validate(body, None).unwrap();
        self.store.create(v, &NoAudit).await.unwrap().id
    }

    async fn age(&self, rtype: &str, id: &Id, secs: i64) {
        for table in ["current_resources", "resource_versions"] {
            sqlx::query(&format!(
                "UPDATE {table} SET recorded_at = recorded_at - $1 WHERE rtype = $2 AND id = $3"
            ))
            .bind(secs)
            .bind(rtype)
            .bind(id.as_str())
            .execute(self.store.pool())
            .await
            .unwrap();
        }
    }

    async fn version_rows(&self, id: &Id) -> i64 {
        sqlx::query("SELECT COUNT(*) AS n FROM resource_versions WHERE id = $1")
            .bind(id.as_str())
            .fetch_one(self.store.pool())
            .await
            .unwrap()
            .get("n")
    }

    async fn entries(&self) -> Vec<AuditEntry> {
        let rows = sqlx::query("SELECT body FROM audit_entries ORDER BY seq")
            .fetch_all(self.store.pool())
            .await
            .unwrap();
        rows.iter()
            .map(|r| AuditEntry::from_canonical(&r.get::<Vec<u8>, _>("body")).unwrap())
            .collect()
    }
}

fn observation(patient: &Id, code: &str) -> Value {
    json!({
        "resourceType": "Observation",
        "status": "final",
        "code": { "coding": [{ "system": "http://loinc.org", "code": code }] },
        "subject": { "reference": format!("Patient/{patient}") },
        "effectiveDateTime": "2024-03-05T10:00:00Z",
    })
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test]
async fn retention_run_disposes_of_expired_resources_dry_run_changes_nothing() {
    for backend in backends() {
        let l = backend.name();
        let t = Setup::new(&backend).await;
        let obs = ResourceType::parse("Observation").unwrap();
        let p = t
            .create(json!({"resourceType": "Patient", "gender": "female"}))
            .await;
        let old1 = t.create(observation(&p, "8310-5")).await;
        let old2 = t.create(observation(&p, "2339-0")).await;
        let recent = t.create(observation(&p, "8867-4")).await;
        for id in [&old1, &old2] {
            t.age("Observation", id, 31 * DAY).await;
        }
        t.age("Observation", &recent, 29 * DAY).await;
        t.age("Patient", &p, 1000 * DAY).await;
        let config = t.config("[retention]\nObservation = \"30d\"\n");

        let o = t.phivault(&config, &["retention", "run", "--dry-run"]);
        assert!(o.status.success(), "{l}: {}", stderr(&o));
        assert_eq!(stdout(&o), "Observation 2 would be disposed of\n", "{l}");
        for id in [&old1, &old2, &recent] {
            t.store.read(obs, id).await.unwrap();
        }
        let entries = t.entries().await;
        assert!(entries.iter().all(|e| e.action != "dispose"), "{l}");
        assert!(
            entries.iter().any(|e| e.action == "cli retention run"),
            "{l}: the dry run is audited"
        );

        let o = t.phivault(&config, &["retention", "run"]);
        assert!(o.status.success(), "{l}: {}", stderr(&o));
        assert_eq!(stdout(&o), "Observation 2 disposed of\n", "{l}");
        for id in [&old1, &old2] {
            let e = t.store.read(obs, id).await.unwrap_err();
            assert!(matches!(e, StoreError::NotFound { .. }), "{l}: {e:?}");
            assert_eq!(t.version_rows(id).await, 0, "{l}");
        }
        t.store.read(obs, &recent).await.unwrap();
        t.store.read(ResourceType::PATIENT, &p).await.unwrap();
        let entries = t.entries().await;
        let mut disposed: Vec<String> = entries
            .iter()
            .filter(|e| e.action == "dispose")
            .map(|e| {
                assert_eq!(e.resource_type.as_deref(), Some("Observation"));
                e.resource_id.clone().unwrap()
            })
            .collect();
        disposed.sort();
        let mut expected = vec![old1.to_string(), old2.to_string()];
        expected.sort();
        assert_eq!(disposed, expected, "{l}");
        assert_eq!(
            entries
                .iter()
                .filter(|e| e.action == "cli retention run")
                .count(),
            2,
            "{l}"
        );

        // Again: nothing left.
        let o = t.phivault(&config, &["retention", "run"]);
        assert!(o.status.success(), "{l}: {}", stderr(&o));
        assert_eq!(stdout(&o), "Observation 0 disposed of\n", "{l}");

        // Bad configurations are refused before anything runs.
        for (text, needle) in [
            ("[retention]\nObservaton = \"30d\"\n", "Observaton"),
            ("[retention]\nObservation = \"30 days\"\n", "Observation"),
        ] {
            let bad = t.config(text);
            let o = t.phivault(&bad, &["retention", "run"]);
            assert!(!o.status.success(), "{l}: {text}");
            let err = stderr(&o);
            assert!(
                err.contains("retention") && err.contains(needle),
                "{l}: {err}"
            );
            assert!(stdout(&o).is_empty());
        }
        t.store.read(obs, &recent).await.unwrap();
        t.store.close().await;
    }
}

/// Over HTTPS: a disposed resource answers 404 (never 500, no integrity alarm) and is found
/// by no search; `phivault retention run` works next to the running server; the server
/// applies `[retention]` by itself when it starts.
#[tokio::test]
async fn the_server_answers_404_after_disposal_and_disposes_at_start() {
    use phivault_testkit::{Server, fixtures, query};
    for backend in backends() {
        let l = backend.name();
        let mut server = Server::start(BIN, &backend, &[]).await;
        let api = server.api().clone();
        let patient = api
            .create(&fixtures::patient_with(
                "Keepsake",
                "Kai",
                &fixtures::mrn(),
                "male",
                "1970-01-01",
            ))
            .await;
        let subject = format!("Patient/{patient}");
        let code = "8310-5";
        let c = || fixtures::coding(Some("http://loinc.org"), code, "body temperature");
        let old = api
            .create(&fixtures::observation(
                &subject,
                c(),
                "2020-01-01T10:00:00Z",
            ))
            .await;
        let later = api
            .create(&fixtures::observation(
                &subject,
                c(),
                "2020-01-02T10:00:00Z",
            ))
            .await;
        let recent = api
            .create(&fixtures::observation(
                &subject,
                c(),
                "2020-01-03T10:00:00Z",
            ))
            .await;
        let age = |id: String| {
            let server = &server;
            async move {
                let db = server.db().await;
                for table in ["current_resources", "resource_versions"] {
                    sqlx::query(&format!(
                        "UPDATE {table} SET recorded_at = recorded_at - $1 WHERE id = $2"
                    ))
                    .bind(31 * DAY)
                    .bind(&id)
                    .execute(&db)
                    .await
                    .unwrap();
                }
                db.close().await;
            }
        };
        age(old.clone()).await;
        // The server's working directory: its ./phivault.toml is read by the CLI and by the
        // server at its next start.
        std::fs::write(
            server.data_dir().join("phivault.toml"),
            "[retention]\nObservation = \"30d\"\n",
        )
        .unwrap();

        let out = server.cli(&["retention", "run"], None).await;
        out.assert_ok("retention run");
        assert_eq!(out.stdout, "Observation 1 disposed of\n", "{l}");
        api.get(&format!("Observation/{old}"))
            .await
            .assert_status(404);
        api.get(&format!("Observation/{old}/_history/1"))
            .await
            .assert_status(404);
        let search = query(
            "Observation",
            &[("code", &format!("http://loinc.org|{code}"))],
        );
        let mut expected = vec![later.clone(), recent.clone()];
        expected.sort();
        assert_eq!(api.search_ids(&search).await, expected, "{l}");
        api.get(&format!("Patient/{patient}"))
            .await
            .assert_status(200);

        // The server applies the periods when it starts.
        age(later.clone()).await;
        server.restart().await;
        let api = server.api().clone();
        let mut status = 0;
        for _ in 0..100 {
            status = api.get(&format!("Observation/{later}")).await.status;
            assert_ne!(status, 500, "{l}");
            if status == 404 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert_eq!(status, 404, "{l}: disposed of by the server at start");
        api.get(&format!("Observation/{recent}"))
            .await
            .assert_status(200);
        assert_eq!(api.search_ids(&search).await, vec![recent.clone()], "{l}");
        server.assert_no_panic();
    }
}
