//! `phivault import` against a real (temporary) SQLite store, through the import core.
#![allow(clippy::unwrap_used, clippy::expect_used)]

// The binary crate has no library target: the import core is self-contained and included.
#[path = "../src/import.rs"]
#[allow(dead_code, unreachable_pub, unused_imports)]
mod import;

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use import::{ImportEvent, ImportSummary, Place};
use phivault_crypto::FileKeyProvider;
use phivault_fhir::{Id, ResourceType, Validator};
use phivault_store::{Store, StoreError, StoreOptions};
use serde_json::{Value, json};

fn validator() -> &'static Validator {
    static VALIDATOR: OnceLock<Validator> = OnceLock::new();
    VALIDATOR.get_or_init(|| Validator::new().expect("the FHIR schema compiles"))
}

struct Fixture {
    dir: tempfile::TempDir,
    store: Store,
}

impl Fixture {
    async fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let keys = FileKeyProvider::new(dir.path().join("master.key"));
        keys.create_if_missing().unwrap();
        let opts = StoreOptions::new(format!("sqlite://{}", dir.path().join("t.db").display()));
        let store = Store::open(&opts, &keys).await.unwrap();
        Fixture { dir, store }
    }

    /// Writes `name` (relative to the temp dir, parents created) and returns its path.
    fn file(&self, name: &str, content: &str) -> PathBuf {
        let path = self.dir.path().join("in").join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, content).unwrap();
        path
    }

    async fn import(&self, paths: &[PathBuf]) -> ImportSummary {
        import::import(
            &self.store,
            validator(),
            &phivault_store::NoAudit,
            paths,
            &|_| {},
        )
        .await
    }

    async fn read(&self, rtype: &str, id: &str) -> Result<Value, StoreError> {
        self.store
            .read(ResourceType::parse(rtype).unwrap(), &Id::parse(id).unwrap())
            .await
            .map(|r| r.body)
    }
}

fn patient(id: Option<&str>, family: &str) -> Value {
    let mut p = json!({
        "resourceType": "Patient",
        "name": [{ "family": family, "given": ["Ana"] }],
        "gender": "female",
        "birthDate": "1970-01-02"
    });
    if let Some(id) = id {
        p["id"] = json!(id);
    }
    p
}

fn observation(id: Option<&str>, subject: &str) -> Value {
    let mut o = json!({
        "resourceType": "Observation",
        "status": "final",
        "code": { "coding": [{ "system": "http://loinc.org", "code": "8867-4" }] },
        "subject": { "reference": subject },
        "effectiveDateTime": "2024-01-02T10:00:00Z",
        "valueQuantity": { "value": 72, "unit": "/min",
                           "system": "http://unitsofmeasure.org", "code": "/min" }
    });
    if let Some(id) = id {
        o["id"] = json!(id);
    }
    o
}

fn only_error(summary: &ImportSummary) -> &import::ImportError {
    assert_eq!(summary.errors.len(), 1, "{:?}", summary.errors);
    &summary.errors[0]
}

#[tokio::test]
async fn synthea_transaction_resolves_urn_uuid_references() {
    let fx = Fixture::new().await;
    let patient_urn = "urn:uuid:7f0c3b9e-6a55-4c1c-9d1e-2d4f1b7b1a01";
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            { "fullUrl": patient_urn, "resource": patient(None, "Quintana"),
              "request": { "method": "POST", "url": "Patient" } },
            { "fullUrl": "urn:uuid:7f0c3b9e-6a55-4c1c-9d1e-2d4f1b7b1a02",
              "resource": observation(None, patient_urn),
              "request": { "method": "POST", "url": "Observation" } },
            { "resource": observation(Some("obs-1"), patient_urn),
              "request": { "method": "PUT", "url": "Observation/obs-1" } }
        ]
    });
    let path = fx.file("synthea/patient.json", &bundle.to_string());
    let summary = fx.import(&[path]).await;
    assert!(summary.errors.is_empty(), "{:?}", summary.errors);
    assert_eq!((summary.resources, summary.files), (3, 1));
    assert_eq!(
        summary.to_string(),
        "imported: 3 resources, 1 files, 0 errors"
    );

    let obs = fx.read("Observation", "obs-1").await.unwrap();
    let reference = obs["subject"]["reference"].as_str().unwrap();
    let patient_id = reference.strip_prefix("Patient/").expect(reference);
    assert_ne!(reference, patient_urn);
    let stored = fx.read("Patient", patient_id).await.unwrap();
    assert_eq!(stored["name"][0]["family"], "Quintana");
}

#[tokio::test]
async fn transaction_with_an_invalid_entry_imports_nothing_of_the_file() {
    let fx = Fixture::new().await;
    let mut bad = observation(None, "Patient/tx-p");
    bad["status"] = json!("not-a-status");
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            { "resource": patient(Some("tx-p"), "Okafor"),
              "request": { "method": "PUT", "url": "Patient/tx-p" } },
            { "resource": bad, "request": { "method": "POST", "url": "Observation" } }
        ]
    });
    let path = fx.file("bad-tx.json", &bundle.to_string());
    let summary = fx.import(std::slice::from_ref(&path)).await;
    let error = only_error(&summary);
    assert_eq!(error.place, Place::Entry(1));
    assert_eq!(error.file, path);
    assert!(
        error
            .to_string()
            .starts_with(&format!("{}: entry 1: ", path.display())),
        "{error}"
    );
    assert!(!error.message.contains("not-a-status"), "PHI-free: {error}");
    assert_eq!(summary.resources, 0);
    assert_eq!(summary.files, 1);
    assert!(matches!(
        fx.read("Patient", "tx-p").await,
        Err(StoreError::NotFound { .. })
    ));
}

#[tokio::test]
async fn transaction_failing_in_the_store_rolls_back_and_names_the_entry() {
    let fx = Fixture::new().await;
    // Entry 1 is valid FHIR but its If-Match cannot hold: the store fails it, atomically.
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            { "resource": patient(Some("tx-q"), "Nakamura"),
              "request": { "method": "PUT", "url": "Patient/tx-q" } },
            { "resource": patient(Some("tx-r"), "Nakamura"),
              "request": { "method": "PUT", "url": "Patient/tx-r", "ifMatch": "W/\"5\"" } }
        ]
    });
    let path = fx.file("conflict.json", &bundle.to_string());
    let summary = fx.import(&[path]).await;
    let error = only_error(&summary);
    assert_eq!(error.place, Place::Entry(1), "{error}");
    assert_eq!(summary.resources, 0);
    assert!(fx.read("Patient", "tx-q").await.is_err());
}

#[tokio::test]
async fn ndjson_bad_line_is_reported_and_the_others_imported() {
    let fx = Fixture::new().await;
    let mut invalid = patient(None, "Bad");
    invalid["gender"] = json!("sometimes");
    let text = format!(
        "{}\n{}\n\n{}\r\n",
        patient(Some("nd-1"), "Lindqvist"),
        invalid,
        observation(None, "Patient/nd-1"),
    );
    let path = fx.file("bulk/Patient.ndjson", &text);
    let summary = fx.import(std::slice::from_ref(&path)).await;
    let error = only_error(&summary);
    assert_eq!(error.place, Place::Line(2));
    assert!(
        error
            .to_string()
            .starts_with(&format!("{}: line 2: ", path.display())),
        "{error}"
    );
    assert!(!error.message.contains("sometimes"), "PHI-free: {error}");
    assert_eq!((summary.resources, summary.files), (2, 1));
    assert_eq!(
        fx.read("Patient", "nd-1").await.unwrap()["name"][0]["family"],
        "Lindqvist"
    );
}

#[tokio::test]
async fn malformed_json_is_reported_by_file_name() {
    let fx = Fixture::new().await;
    let path = fx.file("broken.json", "{\"resourceType\": \"Patient\", \"name\": [");
    let summary = fx.import(std::slice::from_ref(&path)).await;
    let error = only_error(&summary);
    assert_eq!(error.place, Place::File);
    assert_eq!(error.file, path);
    assert!(
        error
            .to_string()
            .starts_with(&format!("{}: ", path.display()))
    );
    assert!(error.message.contains("JSON"), "{error}");
    assert_eq!(
        summary.to_string(),
        "imported: 0 resources, 1 files, 1 errors"
    );
}

#[tokio::test]
async fn single_resources_create_or_update() {
    let fx = Fixture::new().await;
    let with_id = fx.file("p.json", &patient(Some("one-1"), "Adeyemi").to_string());
    let without_id = fx.file("q.json", &patient(None, "Mbeki").to_string());
    let summary = fx.import(&[with_id.clone(), without_id]).await;
    assert!(summary.errors.is_empty(), "{:?}", summary.errors);
    assert_eq!((summary.resources, summary.files), (2, 2));
    // Importing again updates the resource with an id.
    let summary = fx.import(&[with_id]).await;
    assert!(summary.errors.is_empty(), "{:?}", summary.errors);
    let stored = fx.read("Patient", "one-1").await.unwrap();
    assert_eq!(stored["meta"]["versionId"], "2");
}

#[tokio::test]
async fn directories_collections_and_batches() {
    let fx = Fixture::new().await;
    let mut invalid = patient(Some("col-bad"), "Bad");
    invalid["birthDate"] = json!("yesterday");
    let collection = json!({
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            { "resource": patient(Some("col-1"), "Haddad") },
            { "resource": invalid },
            { "fullUrl": "urn:uuid:0000" },
            { "resource": patient(None, "Novak") }
        ]
    });
    let batch = json!({
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            { "resource": patient(Some("b-1"), "Silva"),
              "request": { "method": "PUT", "url": "Patient/b-1" } },
            { "resource": patient(Some("b-2"), "Silva"),
              "request": { "method": "PUT", "url": "Patient/b-2", "ifMatch": "W/\"9\"" } }
        ]
    });
    fx.file("dir/a-collection.json", &collection.to_string());
    fx.file("dir/notes.txt", "not FHIR");
    fx.file("dir/sub/b-batch.json", &batch.to_string());
    let dir = fx.dir.path().join("in").join("dir");

    let seen = RefCell::new(Vec::new());
    let summary = import::import(
        &fx.store,
        validator(),
        &phivault_store::NoAudit,
        std::slice::from_ref(&dir),
        &|e| match e {
            ImportEvent::Found { files } => seen.borrow_mut().push(format!("found {files}")),
            ImportEvent::FileStarted { file } => seen.borrow_mut().push(format!(
                "start {}",
                file.file_name().unwrap().to_string_lossy()
            )),
            _ => {}
        },
    )
    .await;
    assert_eq!(
        seen.into_inner(),
        vec![
            "found 2".to_owned(),
            "start a-collection.json".to_owned(),
            "start b-batch.json".to_owned()
        ]
    );
    assert_eq!(summary.files, 2);
    let places: Vec<(String, Place)> = summary
        .errors
        .iter()
        .map(|e| {
            (
                e.file.file_name().unwrap().to_string_lossy().into_owned(),
                e.place,
            )
        })
        .collect();
    assert_eq!(
        places,
        vec![
            ("a-collection.json".to_owned(), Place::Entry(2)),
            ("a-collection.json".to_owned(), Place::Entry(1)),
            ("b-batch.json".to_owned(), Place::Entry(1)),
        ],
        "{:?}",
        summary.errors
    );
    // col-1, Novak, b-1.
    assert_eq!(summary.resources, 3);
    assert!(fx.read("Patient", "col-1").await.is_ok());
    assert!(fx.read("Patient", "b-1").await.is_ok());
    assert!(fx.read("Patient", "col-bad").await.is_err());
}

#[tokio::test]
async fn missing_and_unsupported_paths_are_errors() {
    let fx = Fixture::new().await;
    let txt = fx.file("x.txt", "{}");
    let missing = Path::new("/nonexistent/phivault/in.json").to_path_buf();
    let summary = fx.import(&[txt, missing]).await;
    assert_eq!(summary.errors.len(), 2, "{:?}", summary.errors);
    assert_eq!(summary.files, 0);
    assert!(summary.errors.iter().all(|e| e.place == Place::File));
}

/// A sink that keeps what it was told, or fails.
#[derive(Default)]
struct Recording {
    written: std::sync::Mutex<Vec<phivault_store::Written>>,
    fail: bool,
}

impl phivault_store::AuditSink for Recording {
    fn record<'a>(
        &'a self,
        _: &'a mut phivault_store::AnyConnection,
        written: &'a [phivault_store::Written],
    ) -> phivault_store::SinkFuture<'a> {
        Box::pin(async move {
            if self.fail {
                return Err(StoreError::Config("the audit refuses".to_owned()));
            }
            self.written.lock().unwrap().extend_from_slice(written);
            Ok(())
        })
    }
}

#[tokio::test]
async fn every_write_goes_through_the_audit_sink() {
    use phivault_store::WriteKind;
    let fx = Fixture::new().await;
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            { "resource": patient(Some("s-1"), "Sinkwell"),
              "request": { "method": "PUT", "url": "Patient/s-1" } },
            { "resource": observation(Some("s-2"), "Patient/s-1"),
              "request": { "method": "PUT", "url": "Observation/s-2" } }
        ]
    });
    let file = fx.file("sink.json", &bundle.to_string());
    let single = fx.file("one.json", &patient(Some("s-1"), "Sinkwell").to_string());

    // A failing sink: nothing is written, and the files say why.
    let failing = Recording {
        fail: true,
        ..Recording::default()
    };
    let summary = import::import(
        &fx.store,
        validator(),
        &failing,
        std::slice::from_ref(&file),
        &|_| {},
    )
    .await;
    assert_eq!(summary.resources, 0);
    assert_eq!(summary.errors.len(), 1, "{:?}", summary.errors);
    assert!(matches!(
        fx.read("Patient", "s-1").await,
        Err(StoreError::NotFound { .. })
    ));

    let sink = Recording::default();
    let summary = import::import(&fx.store, validator(), &sink, &[file, single], &|_| {}).await;
    assert!(summary.errors.is_empty(), "{:?}", summary.errors);
    let written: Vec<(WriteKind, String, String, Option<String>)> = sink
        .written
        .lock()
        .unwrap()
        .iter()
        .map(|w| {
            (
                w.kind,
                w.rtype.to_string(),
                w.id.to_string(),
                w.patient.as_ref().map(ToString::to_string),
            )
        })
        .collect();
    let p = Some("s-1".to_owned());
    assert_eq!(
        written,
        vec![
            (WriteKind::Create, "Patient".into(), "s-1".into(), p.clone()),
            (
                WriteKind::Create,
                "Observation".into(),
                "s-2".into(),
                p.clone()
            ),
            (WriteKind::Update, "Patient".into(), "s-1".into(), p),
        ]
    );
}
