//! Raw Synthea output, both shapes, imported through the import core on every backend
//! (SQLite; PostgreSQL when `PHIVAULT_TEST_DATABASE_URL` is set): every resource stored
//! (counts per type equal the source), every reference resolved to a stored resource,
//! shared Bundles imported again add nothing, and no planted marker lies in the database
//! (files of SQLite, `pg_dump` of PostgreSQL) in the clear.
#![allow(clippy::unwrap_used, clippy::expect_used)]

// The binary crate has no library target: its self-contained modules are included.
#[path = "../src/import.rs"]
#[allow(dead_code, unreachable_pub, unused_imports)]
mod import;
#[path = "../src/synth.rs"]
#[allow(dead_code, unreachable_pub)]
mod synth;
#[path = "../src/synthea.rs"]
#[allow(dead_code, unreachable_pub)]
mod synthea;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use phivault_crypto::FileKeyProvider;
use phivault_fhir::{Id, ResourceType, SearchQuery, Validator};
use phivault_store::{Store, StoreOptions};
use phivault_testkit::{Backend, Marker, PgSchema, backends, scan_bytes, scan_dir};
use serde_json::Value;
use synthea::Shape;

fn validator() -> &'static Validator {
    static VALIDATOR: OnceLock<Validator> = OnceLock::new();
    VALIDATOR.get_or_init(|| Validator::new().expect("the FHIR schema compiles"))
}

struct Db {
    data: tempfile::TempDir,
    store: Store,
    pg: Option<PgSchema>,
}

async fn open(backend: &Backend) -> Db {
    let data = tempfile::tempdir().unwrap();
    let keys = FileKeyProvider::new(data.path().join("master.key"));
    keys.create_if_missing().unwrap();
    let (url, pg) = match backend {
        Backend::Sqlite => (
            format!("sqlite://{}", data.path().join("t.db").display()),
            None,
        ),
        Backend::Postgres { url } => {
            let schema = PgSchema::create(url).await;
            (schema.url(), Some(schema))
        }
    };
    let store = Store::open(&StoreOptions::new(url), &keys).await.unwrap();
    Db { data, store, pg }
}

impl Db {
    async fn import(&self, paths: &[PathBuf]) -> import::ImportSummary {
        import::import(
            &self.store,
            validator(),
            &phivault_store::NoAudit,
            paths,
            &|_| {},
        )
        .await
    }

    /// Every stored resource of `rtype` (current versions).
    async fn all(&self, rtype: &str) -> (u64, Vec<Value>) {
        let rtype = ResourceType::parse(rtype).unwrap();
        let mut out = Vec::new();
        let mut offset = 0usize;
        loop {
            let pairs = vec![
                ("_count".to_owned(), "1000".to_owned()),
                ("_offset".to_owned(), offset.to_string()),
            ];
            let q = SearchQuery::parse(rtype, &pairs, false).unwrap();
            let page = self.store.search(rtype, &q).await.unwrap();
            let n = page.resources.len();
            out.extend(page.resources.into_iter().map(|r| r.body));
            offset += n;
            if n == 0 || offset as u64 >= page.total {
                return (page.total, out);
            }
        }
    }

    async fn counts(&self, types: &[String]) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for t in types {
            let (total, all) = self.all(t).await;
            assert_eq!(total as usize, all.len(), "{t}");
            out.insert(t.clone(), all.len());
        }
        out
    }
}

fn references(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(o) => {
            for (k, v) in o {
                match (k.as_str(), v) {
                    ("reference", Value::String(r)) => out.push(r.clone()),
                    _ => references(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| references(v, out)),
        _ => {}
    }
}

/// A run of `shape` with markers planted in a patient's name, a Claim and an Organization.
fn run_with_markers(shape: Shape, markers: &[Marker]) -> Vec<(String, Value)> {
    let mut files = synthea::synthea_run(&mut synth::Rng::new(11), shape, 3);
    let (_, hospital) = &mut files[0];
    hospital["entry"][0]["resource"]["name"] = markers[0].text().into();
    let (name, patient) = files.last_mut().unwrap();
    assert!(!name.starts_with("hospital") && !name.starts_with("practitioner"));
    for entry in patient["entry"].as_array_mut().unwrap() {
        let resource = &mut entry["resource"];
        match resource["resourceType"].as_str() {
            Some("Patient") => resource["name"][0]["family"] = markers[1].text().into(),
            Some("Claim") => {
                resource["item"][0]["productOrService"]["text"] = markers[2].text().into();
            }
            _ => {}
        }
    }
    files
}

async fn imports_every_resource(backend: &Backend, shape: Shape) {
    let what = format!("{} {shape:?}", backend.name());
    let markers = [Marker::name(), Marker::name(), Marker::code("claim")];
    let files = run_with_markers(shape, &markers);
    let input = tempfile::tempdir().unwrap();
    let mut shared = Vec::new();
    for (name, bundle) in &files {
        let path = input.path().join(name);
        std::fs::write(&path, bundle.to_string()).unwrap();
        if name.starts_with("hospitalInformation") || name.starts_with("practitionerInformation") {
            shared.push(path);
        }
    }
    let bundles: Vec<&Value> = files.iter().map(|(_, b)| b).collect();
    let source = synthea::counts(&bundles);
    let types: Vec<String> = source.keys().cloned().collect();
    assert_eq!(types.len(), 25, "{what}: {types:?}");

    let db = open(backend).await;
    // The whole directory: the shared Bundles are imported first whatever their names.
    let summary = db.import(&[input.path().to_path_buf()]).await;
    assert!(summary.errors.is_empty(), "{what}: {:?}", summary.errors);
    assert_eq!(summary.resources, source.values().sum::<usize>(), "{what}");
    assert_eq!(db.counts(&types).await, source, "{what}");

    // Every reference is `Type/id` of a stored resource.
    let mut checked = 0;
    for t in &types {
        for body in db.all(t).await.1 {
            let mut refs = Vec::new();
            references(&body, &mut refs);
            for reference in refs {
                let (rt, id) = reference
                    .split_once('/')
                    .unwrap_or_else(|| panic!("{what}: {t} holds {reference}"));
                assert!(!id.contains(['/', '?']), "{what}: {t} holds {reference}");
                db.store
                    .read(ResourceType::parse(rt).unwrap(), &Id::parse(id).unwrap())
                    .await
                    .unwrap_or_else(|e| panic!("{what}: {t} -> {reference}: {e}"));
                checked += 1;
            }
        }
    }
    assert!(checked > 100, "{what}: {checked}");

    // The shared Bundles again: nothing added.
    let again = db.import(&shared).await;
    assert!(again.errors.is_empty(), "{what}: {:?}", again.errors);
    if shape == Shape::Newer {
        assert_eq!(again.resources, 0, "{what}");
    }
    assert_eq!(db.counts(&types).await, source, "{what}");

    // No marker at rest.
    let findings = match &db.pg {
        None => {
            let (scanned, findings) = scan_dir(db.data.path(), &markers);
            assert!(!scanned.is_empty());
            findings
        }
        Some(schema) => scan_bytes("pg_dump", &schema.dump(), &markers),
    };
    assert!(findings.is_empty(), "{what}: {findings:?}");
    db.store.close().await;
}

#[tokio::test]
async fn raw_synthea_of_both_shapes_imports_whole() {
    for backend in backends() {
        for shape in [Shape::Older, Shape::Newer] {
            imports_every_resource(&backend, shape).await;
        }
    }
}
