//! `phivault import`: FHIR files into the store.
//!
//! The core, [`import`], walks the paths, reads each file, hands its resources to the store and
//! collects counts and errors; it prints nothing (progress goes through a callback), so it is
//! tested without a terminal. Files:
//! - `*.json`: a Bundle of type `transaction` (atomic: a failing entry leaves nothing of the
//!   file; `urn:uuid:` references are resolved by the store, as Synthea writes them), `batch`
//!   (each entry on its own) or `collection` (a batch of PUTs for entries with an id, POSTs
//!   otherwise), or one resource (update when it has an id, else create);
//! - `*.ndjson`: one resource per non-empty line, each written on its own (update when it has
//!   an id, so a patient export package re-imports under the same ids; its manifest line and
//!   `AuditEvent` lines are skipped).
//!
//! Directories are searched recursively in sorted order for those two extensions; Synthea's
//! shared `hospitalInformation*` and `practitionerInformation*` Bundles are imported before
//! the others, since patient Bundles name their providers by conditional references
//! (`Organization?identifier=...`) resolved against what is already stored. Conditional
//! creates (`ifNoneExist`) that find their match write nothing, so importing a shared Bundle
//! twice adds nothing. Error
//! messages name files, entry indexes (0-based, as `Bundle.entry[K]`) and line numbers
//! (1-based), never resource content.
//!
//! Every write goes through the store with the caller's [`AuditSink`] (the binary's records
//! one audit entry per written resource in the write's transaction).
//!
//! This file is self-contained (it is also included by the integration tests).

use std::fmt;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use phivault_fhir::{BundleRequest, EntryMethod, FhirError, ValidResource, Validator};
use phivault_store::{AuditSink, Store, StoreError};
use serde_json::{Value, json};

/// Where in a file an error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Place {
    /// The whole file.
    File,
    /// `Bundle.entry[K]` (0-based).
    Entry(usize),
    /// Line K of an NDJSON file (1-based).
    Line(usize),
}

/// One thing that could not be imported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ImportError {
    /// The file (or path given) concerned.
    pub(crate) file: PathBuf,
    /// Where in it.
    pub(crate) place: Place,
    /// What went wrong (no resource content).
    pub(crate) message: String,
}

impl fmt::Display for ImportError {
    /// `FILE: entry K: message`, `FILE: line K: message` or `FILE: message`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.file.display();
        match self.place {
            Place::File => write!(f, "{file}: {}", self.message),
            Place::Entry(k) => write!(f, "{file}: entry {k}: {}", self.message),
            Place::Line(k) => write!(f, "{file}: line {k}: {}", self.message),
        }
    }
}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ImportSummary {
    /// Resources written.
    pub(crate) resources: usize,
    /// Files read (whether or not everything in them could be imported).
    pub(crate) files: usize,
    /// Everything that failed, in order.
    pub(crate) errors: Vec<ImportError>,
}

impl fmt::Display for ImportSummary {
    /// `imported: <N> resources, <F> files, <E> errors`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "imported: {} resources, {} files, {} errors",
            self.resources,
            self.files,
            self.errors.len()
        )
    }
}

/// Progress of an import, for a progress bar.
#[derive(Debug)]
pub(crate) enum ImportEvent<'a> {
    /// The paths were walked: this many files will be read.
    Found { files: usize },
    /// Reading this file starts.
    FileStarted { file: &'a Path },
    /// This many more resources were written.
    Imported { resources: usize },
    /// Something failed (also kept in the summary).
    Error(&'a ImportError),
    /// The file started last is done.
    FileDone,
}

/// Imports every `.json`/`.ndjson` file under `paths` into `store`; `audit` records each write
/// in its transaction.
///
/// Bundles larger than `store.max_bundle_entries()` are refused.
pub(crate) async fn import(
    store: &Store,
    validator: &Validator,
    audit: &dyn AuditSink,
    paths: &[PathBuf],
    progress: &dyn Fn(ImportEvent<'_>),
) -> ImportSummary {
    let mut run = Run {
        store,
        validator,
        audit,
        progress,
        summary: ImportSummary::default(),
    };
    let mut files = Vec::new();
    for path in paths {
        collect(path, true, &mut files, &mut run);
    }
    // Synthea's shared Bundles first: patient Bundles name their providers by conditional
    // references that only these create (stable: the order is otherwise kept).
    files.sort_by_key(|(file, _)| !is_shared_synthea(file));
    progress(ImportEvent::Found { files: files.len() });
    for (file, kind) in files {
        progress(ImportEvent::FileStarted { file: &file });
        run.summary.files += 1;
        match kind {
            Kind::Json => run.json_file(&file).await,
            Kind::Ndjson => run.ndjson_file(&file).await,
        }
        progress(ImportEvent::FileDone);
    }
    run.summary
}

/// Whether a file is one of the Bundles Synthea writes once per run for every patient
/// (`hospitalInformation*.json`, `practitionerInformation*.json`).
fn is_shared_synthea(file: &Path) -> bool {
    file.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
        n.starts_with("hospitalInformation") || n.starts_with("practitionerInformation")
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Json,
    Ndjson,
}

fn kind_of(path: &Path) -> Option<Kind> {
    let ext = path.extension()?.to_str()?.to_ascii_lowercase();
    match ext.as_str() {
        "json" => Some(Kind::Json),
        "ndjson" => Some(Kind::Ndjson),
        _ => None,
    }
}

/// Adds `path` (a file, or a directory searched recursively) to `out`. Paths named on the
/// command line must be importable; inside directories other files are skipped, and
/// symbolic links to directories are not followed (no cycles).
fn collect(path: &Path, named: bool, out: &mut Vec<(PathBuf, Kind)>, run: &mut Run<'_>) {
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) => {
            run.fail(path, Place::File, format!("cannot read: {e}"));
            return;
        }
    };
    if meta.is_dir() {
        let mut children: Vec<(PathBuf, bool)> = match fs::read_dir(path) {
            Ok(entries) => entries
                .filter_map(|entry| match entry {
                    Ok(entry) => {
                        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
                        Some((entry.path(), is_dir))
                    }
                    Err(e) => {
                        run.fail(path, Place::File, format!("cannot list directory: {e}"));
                        None
                    }
                })
                .collect(),
            Err(e) => {
                run.fail(path, Place::File, format!("cannot list directory: {e}"));
                return;
            }
        };
        children.sort();
        for (child, is_dir) in children {
            if is_dir {
                collect(&child, false, out, run);
            } else if let Some(kind) = kind_of(&child) {
                out.push((child, kind));
            }
        }
    } else {
        match kind_of(path) {
            Some(kind) => out.push((path.to_path_buf(), kind)),
            None if named => run.fail(
                path,
                Place::File,
                "not a .json or .ndjson file (or a directory of them)".to_owned(),
            ),
            None => {}
        }
    }
}

struct Run<'a> {
    store: &'a Store,
    validator: &'a Validator,
    audit: &'a dyn AuditSink,
    progress: &'a dyn Fn(ImportEvent<'_>),
    summary: ImportSummary,
}

impl Run<'_> {
    fn fail(&mut self, file: &Path, place: Place, message: String) {
        let error = ImportError {
            file: file.to_path_buf(),
            place,
            message,
        };
        (self.progress)(ImportEvent::Error(&error));
        self.summary.errors.push(error);
    }

    fn imported(&mut self, resources: usize) {
        if resources > 0 {
            self.summary.resources += resources;
            (self.progress)(ImportEvent::Imported { resources });
        }
    }

    async fn json_file(&mut self, file: &Path) {
        let bytes = match fs::read(file) {
            Ok(b) => b,
            Err(e) => return self.fail(file, Place::File, format!("cannot read: {e}")),
        };
        let body: Value = match serde_json::from_slice(&bytes) {
            Ok(v) => v,
            // serde_json's syntax errors give a position and never quote the input.
            Err(e) => return self.fail(file, Place::File, format!("not valid JSON: {e}")),
        };
        drop(bytes);
        let is_bundle = body.get("resourceType").and_then(Value::as_str) == Some("Bundle");
        if !is_bundle {
            return self.single_resource(file, body).await;
        }
        let bundle_type = body
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        match bundle_type.as_str() {
            "transaction" => self.transaction(file, body).await,
            "batch" => {
                let count = body
                    .get("entry")
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len);
                self.batch(file, body, (0..count).collect()).await;
            }
            "collection" => self.collection(file, body).await,
            other => self.fail(
                file,
                Place::File,
                format!(
                    "a Bundle of type '{}' cannot be imported (expected transaction, batch or \
                     collection)",
                    other.chars().take(32).collect::<String>()
                ),
            ),
        }
    }

    async fn single_resource(&mut self, file: &Path, body: Value) {
        match self.validator.validate(body, None) {
            Ok(resource) => match self.write(resource).await {
                Ok(()) => self.imported(1),
                Err(e) => self.fail(file, Place::File, e.to_string()),
            },
            Err(e) => self.fail(file, Place::File, e.to_string()),
        }
    }

    /// Update when the resource has an id, else create.
    async fn write(&self, resource: ValidResource) -> Result<(), StoreError> {
        match resource.id() {
            Some(id) => self
                .store
                .update(&id, resource, None, self.audit)
                .await
                .map(|_| ()),
            None => self.store.create(resource, self.audit).await.map(|_| ()),
        }
    }

    async fn transaction(&mut self, file: &Path, body: Value) {
        let request =
            match BundleRequest::parse(self.validator, body, self.store.max_bundle_entries()) {
                Ok(r) => r,
                Err(e) => {
                    let (place, message) = fhir_place(e);
                    return self.fail(file, place, message);
                }
            };
        let methods: Vec<EntryMethod> = request.entries.iter().map(|e| e.method).collect();
        match self.store.bundle(request, self.audit).await {
            Ok(response) => {
                let written = count_written(&response, &methods, &mut |_, _| {});
                self.imported(written);
            }
            Err(StoreError::Entry { index, source }) => {
                self.fail(file, Place::Entry(index), source.to_string());
            }
            Err(e) => self.fail(file, Place::File, e.to_string()),
        }
    }

    /// A batch: entries that do not parse are reported and left out, the others written one
    /// by one. `original[i]` is the index in the file of the body's entry `i`.
    async fn batch(&mut self, file: &Path, mut body: Value, mut original: Vec<usize>) {
        let limit = self.store.max_bundle_entries();
        let request = loop {
            if original.is_empty() {
                return;
            }
            match BundleRequest::parse(self.validator, body.clone(), limit) {
                Ok(r) => break r,
                Err(FhirError::BadBundleEntry { index, message }) if index < original.len() => {
                    self.fail(file, Place::Entry(original[index]), message);
                    original.remove(index);
                    if let Some(entries) = body.get_mut("entry").and_then(Value::as_array_mut)
                        && index < entries.len()
                    {
                        entries.remove(index);
                    } else {
                        // The body and the index disagree: stop rather than loop.
                        return;
                    }
                }
                Err(e) => {
                    let (place, message) = fhir_place(e);
                    return self.fail(file, place, message);
                }
            }
        };
        drop(body);
        let methods: Vec<EntryMethod> = request.entries.iter().map(|e| e.method).collect();
        match self.store.bundle(request, self.audit).await {
            Ok(response) => {
                let mut failures = Vec::new();
                let written = count_written(&response, &methods, &mut |i, message| {
                    failures.push((original.get(i).copied().unwrap_or(i), message));
                });
                for (index, message) in failures {
                    self.fail(file, Place::Entry(index), message);
                }
                self.imported(written);
            }
            Err(StoreError::Entry { index, source }) => {
                let index = original.get(index).copied().unwrap_or(index);
                self.fail(file, Place::Entry(index), source.to_string());
            }
            Err(e) => self.fail(file, Place::File, e.to_string()),
        }
    }

    /// A collection: each entry's resource as a PUT (with an id) or a POST, in a batch.
    async fn collection(&mut self, file: &Path, body: Value) {
        let Value::Object(mut bundle) = body else {
            return;
        };
        let entries = match bundle.remove("entry") {
            Some(Value::Array(entries)) => entries,
            None => Vec::new(),
            Some(_) => {
                return self.fail(
                    file,
                    Place::File,
                    "Bundle.entry: expected an array".to_owned(),
                );
            }
        };
        let mut batch_entries = Vec::with_capacity(entries.len());
        let mut original = Vec::with_capacity(entries.len());
        for (index, entry) in entries.into_iter().enumerate() {
            match collection_entry(entry) {
                Ok(e) => {
                    batch_entries.push(e);
                    original.push(index);
                }
                Err(message) => self.fail(file, Place::Entry(index), message),
            }
        }
        let batch = json!({ "resourceType": "Bundle", "type": "batch", "entry": batch_entries });
        self.batch(file, batch, original).await;
    }

    async fn ndjson_file(&mut self, file: &Path) {
        let reader = match fs::File::open(file) {
            Ok(f) => BufReader::new(f),
            Err(e) => return self.fail(file, Place::File, format!("cannot read: {e}")),
        };
        let mut reader = reader;
        let mut line = Vec::new();
        let mut number = 0usize;
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    return self.fail(file, Place::Line(number + 1), format!("cannot read: {e}"));
                }
            }
            number += 1;
            let text = line.trim_ascii();
            if text.is_empty() {
                continue;
            }
            if is_package_extra(text) {
                continue;
            }
            let outcome = match self.validator.parse(text, None) {
                Ok(resource) => self.write(resource).await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match outcome {
                Ok(()) => self.imported(1),
                Err(message) => self.fail(file, Place::Line(number), message),
            }
        }
    }
}

/// True for the lines of a patient export package that are not resources to import: its
/// manifest and the AuditEvents of the access log (the audit trail is each server's own; an
/// imported AuditEvent would be a record of accesses that did not happen here).
fn is_package_extra(line: &[u8]) -> bool {
    let marked = |needle: &[u8]| line.windows(needle.len()).any(|w| w == needle);
    if !marked(b"AuditEvent") && !marked(phivault_server::portability::EXPORT_SYSTEM.as_bytes()) {
        return false;
    }
    match serde_json::from_slice::<Value>(line) {
        Ok(v) => {
            v.get("resourceType").and_then(Value::as_str) == Some("AuditEvent")
                || phivault_server::portability::is_manifest(&v)
        }
        Err(_) => false,
    }
}

/// A collection entry as a batch entry: PUT `Type/id` when the resource has an id, else
/// POST `Type`.
fn collection_entry(entry: Value) -> Result<Value, String> {
    let Value::Object(mut entry) = entry else {
        return Err("expected an object".to_owned());
    };
    let resource = entry
        .remove("resource")
        .ok_or_else(|| "no resource".to_owned())?;
    let rtype = resource
        .get("resourceType")
        .and_then(Value::as_str)
        .ok_or_else(|| "the resource has no resourceType".to_owned())?
        .to_owned();
    let request = match resource.get("id") {
        Some(Value::String(id)) => json!({ "method": "PUT", "url": format!("{rtype}/{id}") }),
        Some(_) => return Err("the resource's id is not a string".to_owned()),
        None => json!({ "method": "POST", "url": rtype }),
    };
    let mut out = serde_json::Map::new();
    if let Some(full_url) = entry.remove("fullUrl") {
        out.insert("fullUrl".to_owned(), full_url);
    }
    out.insert("resource".to_owned(), resource);
    out.insert("request".to_owned(), request);
    Ok(Value::Object(out))
}

/// Where a Bundle-parsing error points and its message.
fn fhir_place(error: FhirError) -> (Place, String) {
    match error {
        FhirError::BadBundleEntry { index, message } => (Place::Entry(index), message),
        other => (Place::File, other.to_string()),
    }
}

/// Counts the written resources of a transaction- or batch-response Bundle: POST entries
/// answered 201 (a conditional create that found its match answers 200 and writes nothing)
/// and PUT entries with a 2xx status. Calls `failed(i, message)` for each entry that did not succeed.
fn count_written(
    response: &Value,
    methods: &[EntryMethod],
    failed: &mut dyn FnMut(usize, String),
) -> usize {
    let Some(entries) = response.get("entry").and_then(Value::as_array) else {
        return 0;
    };
    let mut written = 0;
    for (i, entry) in entries.iter().enumerate() {
        let status = entry
            .pointer("/response/status")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if status.starts_with('2') {
            match methods.get(i) {
                Some(EntryMethod::Post) if status.starts_with("201") => written += 1,
                Some(EntryMethod::Put) => written += 1,
                _ => {}
            }
        } else {
            let message = entry
                .pointer("/response/outcome/issue/0/diagnostics")
                .and_then(Value::as_str)
                .map_or_else(|| format!("failed ({status})"), str::to_owned);
            failed(i, message);
        }
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_lines() {
        let e = |place| ImportError {
            file: PathBuf::from("d/a.json"),
            place,
            message: "bad".to_owned(),
        };
        assert_eq!(e(Place::Entry(3)).to_string(), "d/a.json: entry 3: bad");
        assert_eq!(e(Place::Line(2)).to_string(), "d/a.json: line 2: bad");
        assert_eq!(e(Place::File).to_string(), "d/a.json: bad");
        let s = ImportSummary {
            resources: 5,
            files: 2,
            errors: vec![e(Place::File)],
        };
        assert_eq!(s.to_string(), "imported: 5 resources, 2 files, 1 errors");
    }

    #[test]
    fn collection_entries_become_puts_or_posts() {
        let put = collection_entry(json!({
            "fullUrl": "urn:uuid:1",
            "resource": { "resourceType": "Patient", "id": "p1" }
        }));
        assert_eq!(
            put.ok().and_then(|v| v.get("request").cloned()),
            Some(json!({ "method": "PUT", "url": "Patient/p1" }))
        );
        let post = collection_entry(json!({ "resource": { "resourceType": "Patient" } }));
        assert_eq!(
            post.ok().and_then(|v| v.get("request").cloned()),
            Some(json!({ "method": "POST", "url": "Patient" }))
        );
        assert!(collection_entry(json!({ "fullUrl": "x" })).is_err());
        assert!(collection_entry(json!({ "resource": {} })).is_err());
    }

    #[test]
    fn written_counts_and_failures() {
        let response = json!({ "entry": [
            { "response": { "status": "201 Created" } },
            { "response": { "status": "422 Unprocessable Entity", "outcome": {
                "resourceType": "OperationOutcome",
                "issue": [{ "severity": "error", "code": "invalid", "diagnostics": "nope" }] } } },
            { "response": { "status": "204 No Content" } },
        ]});
        let mut failures = Vec::new();
        let n = count_written(
            &response,
            &[EntryMethod::Post, EntryMethod::Put, EntryMethod::Delete],
            &mut |i, m| failures.push((i, m)),
        );
        assert_eq!(n, 1);
        assert_eq!(failures, vec![(1, "nope".to_owned())]);
    }

    #[test]
    fn package_extras_are_skipped() {
        let manifest = format!(
            r#"{{"resourceType":"Parameters","meta":{{"tag":[{{"system":"{}","code":"manifest"}}]}}}}"#,
            phivault_server::portability::EXPORT_SYSTEM
        );
        assert!(is_package_extra(manifest.as_bytes()));
        assert!(is_package_extra(
            br#"{"resourceType":"AuditEvent","id":"1"}"#
        ));
        assert!(!is_package_extra(
            br#"{"resourceType":"Observation","note":[{"text":"AuditEvent"}]}"#
        ));
        assert!(!is_package_extra(br#"{"resourceType":"Patient","id":"p"}"#));
        assert!(!is_package_extra(b"AuditEvent not json"));
    }

    #[test]
    fn kinds() {
        assert_eq!(kind_of(Path::new("a/b.JSON")), Some(Kind::Json));
        assert_eq!(kind_of(Path::new("b.ndjson")), Some(Kind::Ndjson));
        assert_eq!(kind_of(Path::new("b.txt")), None);
        assert_eq!(kind_of(Path::new("json")), None);
    }
}
