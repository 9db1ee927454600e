//! Backups and restores (issue 7), on SQLite always and on PostgreSQL when
//! `PHIVAULT_TEST_DATABASE_URL` is set (each database in its own schema), and across the two:
//! a round trip of a few thousand resources is identical row for row and read for read; an
//! erasure or disposal after the backup survives a restore over the installation; a flipped
//! byte or a truncation anywhere in the archive is detected; bad input (wrong identity, wrong
//! master key, newer schema, damaged archive, non-empty target) changes nothing; a backup
//! taken while writes go on is a consistent snapshot.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::sync::{Arc, OnceLock};

use phivault_audit::{ActorKind, AuditEntry, AuditLog, Outcome};
use phivault_backup::{BackupError, Manifest, RestoreOptions};
use phivault_crypto::{ArchiveMacKey, MasterKey, StaticKeyProvider};
use phivault_fhir::{BundleRequest, Id, ResourceType, ValidResource, Validator};
use phivault_store::backup::{EPHEMERAL_TABLES, RestoreTarget, TABLES, Value};
use phivault_store::{
    AnyConnection, AuditSink, NoAudit, RetentionRule, SinkFuture, Store, StoreError, StoreOptions,
    Written,
};
use serde_json::{Value as Json, json};

#[path = "backup/auth.rs"]
mod auth;

fn validator() -> &'static Validator {
    static V: OnceLock<Validator> = OnceLock::new();
    V.get_or_init(|| Validator::new().unwrap())
}

fn valid(body: Json) -> ValidResource {
    validator().validate(body, None).unwrap()
}

fn observation() -> ResourceType {
    ResourceType::parse("Observation").unwrap()
}

fn random_hex() -> String {
    let mut b = [0u8; 32];
    phivault_crypto::random_bytes(&mut b).unwrap();
    hex::encode(b)
}

fn postgres_base() -> Option<String> {
    std::env::var("PHIVAULT_TEST_DATABASE_URL")
        .ok()
        .map(|u| u.trim().to_owned())
        .filter(|u| !u.is_empty())
}

/// The backends under test.
fn backends() -> Vec<&'static str> {
    let mut out = vec!["sqlite"];
    if postgres_base().is_some() {
        out.push("postgres");
    }
    out
}

/// A fresh, empty database on `backend`: its URL and the directory that holds it.
async fn fresh_url(backend: &str) -> (String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    if backend == "sqlite" {
        return (
            format!("sqlite://{}/phivault.db", dir.path().display()),
            dir,
        );
    }
    let base = postgres_base().unwrap();
    let schema = format!("pv_backup_{}", &random_hex()[..12]);
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&base)
        .await
        .expect("PHIVAULT_TEST_DATABASE_URL must point at a running PostgreSQL");
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&mut conn)
        .await
        .unwrap();
    let sep = if base.contains('?') { '&' } else { '?' };
    (
        format!("{base}{sep}options=-c%20search_path%3D{schema}"),
        dir,
    )
}

async fn open(url: &str, key: &str) -> Store {
    Store::open(
        &StoreOptions::new(url.to_owned()),
        &StaticKeyProvider::from_hex(key.to_owned()),
    )
    .await
    .unwrap()
}

fn master(key: &str) -> MasterKey {
    MasterKey::from_hex(key).unwrap()
}

/// Writes an audit entry per written resource, in the write's transaction.
struct Trail(Arc<AuditLog>);

fn entry(action: &str, rtype: Option<String>, id: Option<String>) -> AuditEntry {
    AuditEntry {
        seq: 0,
        time: 1_700_000_000_000,
        actor_id: "test".to_owned(),
        actor_kind: ActorKind::System,
        role: None,
        purpose: None,
        break_glass: false,
        action: action.to_owned(),
        resource_type: rtype,
        resource_id: id,
        patient_id: None,
        outcome: Outcome::Allowed,
        source_address: None,
        request_id: "r".to_owned(),
        actor_ref: None,
        patients: Vec::new(),
        refusals: None,
        configuration: None,
        labels: Vec::new(),
        alert: None,
        via_client: None,
    }
}

impl AuditSink for Trail {
    fn record<'a>(&'a self, conn: &'a mut AnyConnection, written: &'a [Written]) -> SinkFuture<'a> {
        Box::pin(async move {
            let entries: Vec<_> = written
                .iter()
                .map(|w| {
                    entry(
                        w.kind.as_str(),
                        Some(w.rtype.to_string()),
                        Some(w.id.to_string()),
                    )
                })
                .collect();
            self.0
                .append_all_in(conn, &entries)
                .await
                .map_err(|e| StoreError::Config(e.to_string()))?;
            Ok(())
        })
    }
}

/// What a population holds, to check against.
struct Population {
    patients: Vec<String>,
    observations: Vec<String>,
}

/// `patients` patients with 4 observations each, in transactions of 10 patients, every
/// write audited; then a second version of every 4th observation, a deletion of every 10th,
/// checkpoints on the way and a few entries after the last one.
async fn populate(store: &Store, log: &Arc<AuditLog>, patients: usize) -> Population {
    let trail = Trail(log.clone());
    let mut out = Population {
        patients: Vec::new(),
        observations: Vec::new(),
    };
    for chunk in 0..patients.div_ceil(10) {
        let mut entries = Vec::new();
        for p in 0..10.min(patients - chunk * 10) {
            let n = chunk * 10 + p;
            let urn = format!("urn:uuid:00000000-0000-4000-8000-{n:012}");
            entries.push(json!({
                "fullUrl": urn,
                "resource": {"resourceType": "Patient",
                    "name": [{"family": format!("Backupfamily{n}"), "given": ["Bo"]}],
                    "birthDate": "1970-01-01"},
                "request": {"method": "POST", "url": "Patient"}}));
            for o in 0..4 {
                entries.push(json!({
                    "resource": {"resourceType": "Observation", "status": "final",
                        "code": {"coding": [{"system": "http://loinc.org", "code": format!("{o}-{n}")}]},
                        "valueString": format!("BACKUPMARKER{n}x{o}"),
                        "subject": {"reference": urn}},
                    "request": {"method": "POST", "url": "Observation"}}));
            }
        }
        let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
        let req = BundleRequest::parse(validator(), bundle, 1000).unwrap();
        let resp = store.bundle(req, &trail).await.unwrap();
        for e in resp["entry"].as_array().unwrap() {
            let loc = e["response"]["location"].as_str().unwrap();
            let mut parts = loc.split('/');
            let (t, id) = (parts.next().unwrap(), parts.next().unwrap());
            match t {
                "Patient" => out.patients.push(id.to_owned()),
                _ => out.observations.push(id.to_owned()),
            }
        }
        if chunk == 3 {
            log.checkpoint().await.unwrap();
        }
    }
    for (i, o) in out.observations.iter().enumerate() {
        let id = Id::parse(o).unwrap();
        if i % 4 == 0 {
            let mut body = store.read(observation(), &id).await.unwrap().body;
            body["status"] = json!("amended");
            store.update(&id, valid(body), None, &trail).await.unwrap();
        }
        if i % 10 == 5 {
            store.delete(observation(), &id, &trail).await.unwrap();
        }
    }
    log.checkpoint().await.unwrap();
    for i in 0..5 {
        log.append(&entry("read", None, Some(format!("x{i}"))))
            .await
            .unwrap();
    }
    out
}

fn identity() -> (age::x25519::Identity, age::x25519::Recipient) {
    let id = age::x25519::Identity::generate();
    let r = id.to_public();
    (id, r)
}

fn archive_key(key: &str) -> ArchiveMacKey {
    ArchiveMacKey::derive(&master(key)).unwrap()
}

async fn backup(
    store: &Store,
    recipient: &age::x25519::Recipient,
    key: &str,
) -> (Vec<u8>, Manifest) {
    phivault_backup::write_backup(
        store,
        Vec::new(),
        std::slice::from_ref(recipient),
        &archive_key(key),
        |_, _| {},
    )
    .await
    .unwrap()
}

async fn restore_into(
    archive: &[u8],
    identity: &age::x25519::Identity,
    url: &str,
    key: &str,
    options: RestoreOptions,
) -> Result<phivault_backup::RestoreReport, BackupError> {
    let target = RestoreTarget::connect(url).await.unwrap();
    let result = phivault_backup::restore(
        archive,
        std::slice::from_ref(identity),
        &target,
        &master(key),
        options,
        |_, _| {},
    )
    .await;
    target.close(false).await;
    result
}

/// Every row of every table.
async fn all_rows(store: &Store) -> Vec<(&'static str, Vec<Vec<Value>>)> {
    let mut snapshot = store.snapshot().await.unwrap();
    let mut out = Vec::new();
    for table in TABLES {
        let mut rows = Vec::new();
        snapshot
            .for_each_row(table, |r| {
                rows.push(r);
                Ok::<(), StoreError>(())
            })
            .await
            .unwrap();
        out.push((table.name, rows));
    }
    snapshot.finish().await.unwrap();
    out
}

/// Both stores hold the same rows, and read the same resources and histories.
async fn assert_same(a: &Store, b: &Store, population: &Population, what: &str) {
    let (rows_a, rows_b) = (all_rows(a).await, all_rows(b).await);
    for ((name, ra), (_, rb)) in rows_a.iter().zip(&rows_b) {
        assert_eq!(ra.len(), rb.len(), "{what}: rows of {name}");
        assert!(ra == rb, "{what}: table {name} differs");
    }
    for (rtype, ids) in [
        (ResourceType::PATIENT, &population.patients),
        (observation(), &population.observations),
    ] {
        for id in ids {
            let id = Id::parse(id).unwrap();
            let x = a
                .read(rtype, &id)
                .await
                .map(|r| r.body)
                .map_err(|e| e.http_status());
            let y = b
                .read(rtype, &id)
                .await
                .map(|r| r.body)
                .map_err(|e| e.http_status());
            assert_eq!(x, y, "{what}: {rtype}/{id}");
            let hx = a.history(rtype, &id, 100, 0).await.unwrap();
            let hy = b.history(rtype, &id, 100, 0).await.unwrap();
            assert!(hx == hy, "{what}: history of {rtype}/{id}");
        }
    }
    let (la, lb) = (
        AuditLog::open(a.clone()).await.unwrap(),
        AuditLog::open(b.clone()).await.unwrap(),
    );
    let (va, vb) = (
        la.verify(|_| {}).await.unwrap(),
        lb.verify(|_| {}).await.unwrap(),
    );
    assert_eq!(va, vb, "{what}: audit verification");
    assert_eq!(
        la.checkpoints().await.unwrap(),
        lb.checkpoints().await.unwrap(),
        "{what}: checkpoints"
    );
}

#[tokio::test]
async fn the_table_list_is_the_schema_of_each_backend() {
    for backend in backends() {
        let (url, _dir) = fresh_url(backend).await;
        let store = open(&url, &random_hex()).await;
        let sql = if backend == "sqlite" {
            "SELECT m.name AS t, p.name AS c FROM sqlite_master m, pragma_table_info(m.name) p \
             WHERE m.type = 'table' AND m.name NOT LIKE '\\_%' ESCAPE '\\' \
             AND m.name NOT LIKE 'sqlite%' ORDER BY 1, 2"
        } else {
            "SELECT table_name::text AS t, column_name::text AS c FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name NOT LIKE '\\_%' \
             ORDER BY 1, 2"
        };
        let rows: Vec<(String, String)> =
            sqlx::query_as(sql).fetch_all(store.pool()).await.unwrap();
        let mut listed: Vec<(String, String)> = TABLES
            .iter()
            .flat_map(|t| {
                t.columns
                    .iter()
                    .map(|c| (t.name.to_owned(), c.name.to_owned()))
            })
            .collect();
        listed.sort();
        // The ephemeral tables are left out of backups, but they must exist.
        let (ephemeral, mut found): (Vec<_>, Vec<_>) = rows
            .into_iter()
            .partition(|(t, _)| EPHEMERAL_TABLES.contains(&t.as_str()));
        for table in EPHEMERAL_TABLES {
            assert!(
                ephemeral.iter().any(|(t, _)| t == table),
                "{backend}: backup::EPHEMERAL_TABLES names {table}, which is not in the schema"
            );
        }
        found.sort();
        assert_eq!(
            found, listed,
            "{backend}: backup::TABLES must list every table and column of the schema \
             (but the ones in EPHEMERAL_TABLES)"
        );
    }
}

#[tokio::test]
async fn round_trip_is_identical_on_each_backend_and_across() {
    let (id, recipient) = identity();
    for source in backends() {
        let key = random_hex();
        let (url, _dir) = fresh_url(source).await;
        let store = open(&url, &key).await;
        let log = Arc::new(AuditLog::open(store.clone()).await.unwrap());
        let population = populate(&store, &log, 400).await;
        let (archive, manifest) = backup(&store, &recipient, &key).await;
        assert_eq!(manifest.resources + manifest.deleted_resources, 2000);
        assert!(manifest.versions > 2000 + 200, "{}", manifest.versions);
        assert!(manifest.audit.entries > 2000 && manifest.audit.checkpoints >= 2);
        assert_eq!(manifest.audit.problem, None);
        assert_eq!(manifest.audit.unsealed, 5);
        // No plaintext in the archive (it is encrypted), and verify agrees with the writer.
        assert!(!archive.windows(12).any(|w| w == b"BACKUPMARKER"));
        let verified = phivault_backup::verify(
            &archive[..],
            std::slice::from_ref(&id),
            Some(&archive_key(&key)),
            |_, _| {},
        )
        .unwrap();
        assert_eq!(verified, manifest);
        for target in backends() {
            let what = format!("{source} -> {target}");
            let (turl, _tdir) = fresh_url(target).await;
            let report = restore_into(&archive, &id, &turl, &key, RestoreOptions::default())
                .await
                .unwrap();
            assert_eq!(report.rows, manifest.rows(), "{what}");
            assert_eq!(report.keys_erased, 0);
            let restored = open(&turl, &key).await;
            assert_same(&store, &restored, &population, &what).await;
            // The restored installation keeps working: a new patient, an audited write.
            let p = restored
                .create(
                    valid(json!({"resourceType": "Patient", "name": [{"family": "After"}]})),
                    &NoAudit,
                )
                .await
                .unwrap();
            restored.read(ResourceType::PATIENT, &p.id).await.unwrap();
            restored.close().await;
        }
        store.close().await;
    }
}

#[tokio::test]
async fn erasure_and_disposal_after_the_backup_survive_a_restore_over_the_installation() {
    let (id, recipient) = identity();
    for backend in backends() {
        let key = random_hex();
        let (url, _dir) = fresh_url(backend).await;
        let store = open(&url, &key).await;
        let log = Arc::new(AuditLog::open(store.clone()).await.unwrap());
        let population = populate(&store, &log, 20).await;
        let (archive, _) = backup(&store, &recipient, &key).await;

        // After the backup: a patient is erased, and a resource type's retention expires
        // (every Observation is older than a period of 0 seconds at "now + 1 day").
        let erased = Id::parse(&population.patients[3]).unwrap();
        store
            .erase_patient(&erased, &Trail(log.clone()))
            .await
            .unwrap();
        let rule = RetentionRule {
            rtype: observation(),
            max_age_secs: 1,
        };
        let now = time::OffsetDateTime::now_utc().unix_timestamp() + 86_400;
        store
            .run_retention(&[rule], now, false, &Trail(log.clone()))
            .await
            .unwrap();
        let kept = Id::parse(&population.patients[4]).unwrap();
        store.close().await;

        // Restored elsewhere, without the installation's ledgers, the backup still holds the
        // patient: it is the replay that keeps them erased below.
        let (fresh, _fresh_dir) = fresh_url(backend).await;
        restore_into(&archive, &id, &fresh, &key, RestoreOptions::default())
            .await
            .unwrap();
        let elsewhere = open(&fresh, &key).await;
        elsewhere
            .read(ResourceType::PATIENT, &erased)
            .await
            .unwrap();
        elsewhere.close().await;

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
        assert_eq!(report.keys_erased, 1, "{backend}");
        assert!(report.resources_disposed > 0, "{backend}");
        let restored = open(&url, &key).await;
        let e = restored
            .read(ResourceType::PATIENT, &erased)
            .await
            .unwrap_err();
        assert_eq!(e.http_status(), 410, "{backend}: {e}");
        assert!(matches!(e, StoreError::Erased { .. }), "{backend}: {e}");
        // Writes into the compartment are refused, and no key is ever made again.
        let refused = restored
            .update(
                &erased,
                valid(json!({"resourceType": "Patient", "id": erased.to_string()})),
                None,
                &NoAudit,
            )
            .await
            .unwrap_err();
        assert_eq!(refused.http_status(), 410, "{backend}: {refused}");
        // Another patient is back; the observations disposed of after the backup are not.
        restored.read(ResourceType::PATIENT, &kept).await.unwrap();
        for o in &population.observations {
            let e = restored
                .read(observation(), &Id::parse(o).unwrap())
                .await
                .unwrap_err();
            assert!(
                matches!(e.http_status(), 404 | 410),
                "{backend}: Observation/{o} reads after its disposal: {e}"
            );
        }
        restored.close().await;
    }
}

/// Decrypts and decompresses an archive (for the tests that rewrite its content).
fn plain(archive: &[u8], id: &age::x25519::Identity) -> Vec<u8> {
    let d = age::Decryptor::new(archive).unwrap();
    let r = d
        .decrypt(std::iter::once(id as &dyn age::Identity))
        .unwrap();
    let mut out = Vec::new();
    zstd::stream::read::Decoder::new(r)
        .unwrap()
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// Compresses and encrypts `plain` as an archive.
fn seal(plain: &[u8], r: &age::x25519::Recipient) -> Vec<u8> {
    let mut z = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
    z.write_all(plain).unwrap();
    let compressed = z.finish().unwrap();
    let e = age::Encryptor::with_recipients(std::iter::once(r as &dyn age::Recipient)).unwrap();
    let mut out = Vec::new();
    let mut w = e.wrap_output(&mut out).unwrap();
    w.write_all(&compressed).unwrap();
    w.finish().unwrap();
    out
}

#[tokio::test]
async fn every_flipped_byte_and_every_truncation_is_detected() {
    let (id, recipient) = identity();
    let key = random_hex();
    let (url, _dir) = fresh_url("sqlite").await;
    let store = open(&url, &key).await;
    let log = Arc::new(AuditLog::open(store.clone()).await.unwrap());
    populate(&store, &log, 10).await;
    let (archive, _) = backup(&store, &recipient, &key).await;
    let ids = std::slice::from_ref(&id);
    phivault_backup::verify(&archive[..], ids, Some(&archive_key(&key)), |_, _| {}).unwrap();
    // Every byte of the age header and of the last 100 bytes, and every 7th byte between.
    let n = archive.len();
    let header_end = archive.windows(4).position(|w| w == b"\n---").unwrap() + 48;
    let positions: Vec<usize> = (0..n)
        .filter(|&i| i < header_end || i + 100 >= n || i % 7 == 0)
        .collect();
    assert!(positions.len() > n / 7);
    for i in positions {
        let mut bad = archive.clone();
        bad[i] ^= 0x01;
        assert!(
            phivault_backup::verify(&bad[..], ids, Some(&archive_key(&key)), |_, _| {}).is_err(),
            "a flipped bit at byte {i} of {n} went unnoticed"
        );
    }
    for len in (0..n).step_by(97).chain([n - 1, n - 17]) {
        assert!(
            phivault_backup::verify(&archive[..len], ids, Some(&archive_key(&key)), |_, _| {})
                .is_err(),
            "a truncation to {len} of {n} bytes went unnoticed"
        );
    }
    // Re-encrypted with one row changed inside (what only a holder of the recipient key
    // could do): the table's hash catches it.
    let mut inner = plain(&archive, &id);
    let at = inner
        .windows(13)
        .position(|w| w == b"phivault/kek|")
        .unwrap_or(inner.len() / 2);
    inner[at] ^= 0x20;
    let e =
        phivault_backup::verify(&seal(&inner, &recipient)[..], ids, None, |_, _| {}).unwrap_err();
    assert!(matches!(e, BackupError::Corrupt(_)), "{e}");
}

/// The digest of every table, to show that a refused restore changed nothing.
async fn fingerprint(url: &str, key: &str) -> Vec<(&'static str, Vec<Vec<Value>>)> {
    let store = open(url, key).await;
    let rows = all_rows(&store).await;
    store.close().await;
    rows
}

#[tokio::test]
async fn bad_input_is_refused_before_anything_changes() {
    let (id, recipient) = identity();
    let (other_id, _) = identity();
    for backend in backends() {
        let key = random_hex();
        let (url, _dir) = fresh_url(backend).await;
        let store = open(&url, &key).await;
        let log = Arc::new(AuditLog::open(store.clone()).await.unwrap());
        populate(&store, &log, 10).await;
        let (archive, _) = backup(&store, &recipient, &key).await;
        // The installation moves on after the backup.
        store
            .create(
                valid(json!({"resourceType": "Patient", "name": [{"family": "Later"}]})),
                &Trail(log.clone()),
            )
            .await
            .unwrap();
        store.close().await;
        let before = fingerprint(&url, &key).await;
        let force = RestoreOptions {
            force: true,
            allow_broken_audit: false,
            allow_unauthenticated: false,
        };

        let e = restore_into(&archive, &id, &url, &key, RestoreOptions::default())
            .await
            .unwrap_err();
        assert!(
            matches!(e, BackupError::TargetNotEmpty(_)),
            "{backend}: {e}"
        );
        assert!(e.to_string().contains("--force"), "{e}");

        let e = restore_into(&archive, &other_id, &url, &key, force)
            .await
            .unwrap_err();
        assert!(matches!(e, BackupError::WrongIdentity), "{backend}: {e}");

        let truncated = &archive[..archive.len() - 300];
        let e = restore_into(truncated, &id, &url, &key, force)
            .await
            .unwrap_err();
        assert!(matches!(e, BackupError::Corrupt(_)), "{backend}: {e}");

        let mut flipped = archive.clone();
        let middle = flipped.len() / 2;
        flipped[middle] ^= 0x80;
        let e = restore_into(&flipped, &id, &url, &key, force)
            .await
            .unwrap_err();
        assert!(matches!(e, BackupError::Corrupt(_)), "{backend}: {e}");

        let e = restore_into(&archive, &id, &url, &random_hex(), force)
            .await
            .unwrap_err();
        assert!(
            matches!(e, BackupError::WrongMasterKey(_)),
            "{backend}: {e}"
        );

        // A backup from a newer schema.
        let inner = plain(&archive, &id);
        let text = String::from_utf8_lossy(&inner);
        let version = phivault_store::backup::schema_version();
        let from = format!("\"schema_version\":{version}");
        let to = format!("\"schema_version\":{}", version + 1);
        assert!(text.contains(&from));
        let newer = seal(
            &inner_replace(&inner, from.as_bytes(), to.as_bytes()),
            &recipient,
        );
        let e = restore_into(&newer, &id, &url, &key, force)
            .await
            .unwrap_err();
        assert!(
            matches!(e, BackupError::NewerSchema { .. }),
            "{backend}: {e}"
        );

        assert_eq!(fingerprint(&url, &key).await, before, "{backend}: changed");

        // And the archive itself still restores (with --force).
        restore_into(&archive, &id, &url, &key, force)
            .await
            .unwrap();
        assert_ne!(fingerprint(&url, &key).await, before, "{backend}");
    }
}

fn inner_replace(haystack: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len());
    let mut i = 0;
    let mut replaced = false;
    while i < haystack.len() {
        if !replaced && haystack[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
            replaced = true;
        } else {
            out.push(haystack[i]);
            i += 1;
        }
    }
    assert!(replaced);
    out
}

#[tokio::test]
async fn a_backup_taken_during_writes_is_a_consistent_snapshot() {
    let (id, recipient) = identity();
    for backend in backends() {
        let key = random_hex();
        let (url, _dir) = fresh_url(backend).await;
        let store = open(&url, &key).await;
        let log = Arc::new(AuditLog::open(store.clone()).await.unwrap());
        populate(&store, &log, 50).await;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (store, log, stop) = (store.clone(), log.clone(), stop.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let body = json!({"resourceType": "Patient", "name": [{"family": format!("Busy{n}")}]});
                    store
                        .create(valid(body), &Trail(log.clone()))
                        .await
                        .unwrap();
                    n += 1;
                }
                n
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let (archive, manifest) = backup(&store, &recipient, &key).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let written = writer.await.unwrap();
        assert!(written > 0, "{backend}: the writer never wrote");
        assert_eq!(manifest.audit.problem, None, "{backend}");
        let (turl, _tdir) = fresh_url(backend).await;
        restore_into(&archive, &id, &turl, &key, RestoreOptions::default())
            .await
            .unwrap();
        let restored = open(&turl, &key).await;
        // Every pointer has its version, every resource its audit entry, the trail verifies.
        let rows = all_rows(&restored).await;
        let table = |name: &str| &rows.iter().find(|(n, _)| *n == name).unwrap().1;
        let versions = table("resource_versions");
        for pointer in table("current_resources") {
            assert!(
                versions.iter().any(|v| v[..4] == pointer[..4]),
                "{backend}: a pointer without its version"
            );
        }
        let entries = table("audit_entries").len() as u64;
        assert_eq!(entries, manifest.audit.entries);
        assert!(
            entries >= manifest.resources + manifest.deleted_resources,
            "{backend}: {entries} entries for {} resources",
            manifest.resources
        );
        AuditLog::open(restored.clone())
            .await
            .unwrap()
            .verify(|_| {})
            .await
            .unwrap();
        restored.close().await;
        store.close().await;
    }
}
