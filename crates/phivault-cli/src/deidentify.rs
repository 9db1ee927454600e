//! `phivault deidentify --deid-config FILE --out DIR [--k N] [--key FILE]`: a de-identified
//! research export, one `<Type>.ndjson` per resource type and `report.json`, of the patients
//! whose consent permits research; `phivault deidentify --new-key FILE` creates a project key.
//!
//! The rules it keeps:
//! - **Research consent decides who is exported.** A patient is exported only when their
//!   active Consents permit research (purpose of use HRESCH) for their Patient resource, and
//!   each of their other resources only when the Consents permit research for its type; where
//!   no consent applies, the configured default decides (`[consent_defaults]` of the server
//!   configuration: research is denied unless set to permit). The decision is the server's
//!   ([`phivault_policy::evaluate`]); a stored Consent that can no longer be applied denies.
//!   Consents are read once, at the start: a withdrawal committed before a run excludes the
//!   patient from that run.
//! - **Labelled data never leaves.** A resource carrying a sensitivity label (`meta.security`)
//!   is left out, and so is every resource of a patient whose Patient record carries one.
//! - **Only what the engine outputs.** The files hold what `phivault-deid` makes of the
//!   records under the configuration (allow-list rules; pseudonyms and date shifts keyed by
//!   the project key); with `--k N`, every record of a patient whose quasi-identifier class
//!   is smaller than N is withheld, and the report says how many.
//! - **Audited, fail-closed, per patient.** The export is written to a temporary directory
//!   beside `--out`; then the run's one `cli deidentify` entry is appended, with purpose of
//!   use HRESCH, the configuration's SHA-256 (`configuration`, as `report.json` states it),
//!   and every patient whose records the export holds, so that each finds it in their access
//!   log (patients left out by consent, by a label or by the k threshold are not named); only
//!   then is the directory renamed into place. When the entry cannot be written the output is
//!   removed. A run that fails appends its entry with outcome `error`, naming no patient
//!   (nothing was released).
//! - **Owner-only, never over data.** The directory is created 0700 and its files 0600; an
//!   existing non-empty `--out` is refused, and so is an existing `--new-key` file.
//! - **No PHI in messages.** stderr carries counts, k and l, and the configuration hash; never
//!   an id, a name or a value of a record.
//!
//! The records are read as the operator (the holder of the master key runs this command; the
//! audit entry is theirs), type by type in store pages over every compartment: the Patients
//! first, then each other patient-compartment type the configuration exports.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use phivault_audit::Outcome;
use phivault_deid::{Config, Deidentifier, ProjectKey, Release, Report, Risk, Run};
use phivault_fhir::{Id, ResourceType, SearchQuery, compartment_patient_of};
use phivault_policy::{Consent, ConsentDefaults, ConsentQuery, Purpose, evaluate, labels_of};
use phivault_server::portability;
use phivault_store::{SearchScope, Store, StoredResource};
use time::OffsetDateTime;

use crate::cli_audit::CliAudit;

/// Resources read per store page.
const PAGE: usize = 1000;

/// The name of the report file.
const REPORT_FILE: &str = "report.json";

/// What the command needs before the store is opened: a checked configuration, its key and
/// a usable `--out`.
pub(crate) struct Prepared {
    config: Config,
    key: ProjectKey,
    out: PathBuf,
    k: Option<usize>,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("configuration", &self.config.hash())
            .field("out", &self.out)
            .field("k", &self.k)
            .finish_non_exhaustive()
    }
}

/// Reads the configuration and the key and checks `out`, before anything touches the store
/// (mistakes there cost nothing and are not audited). The key file is `key`, else the
/// configuration's `key_file`.
pub(crate) fn prepare(
    config_file: &Path,
    key: Option<&Path>,
    out: &Path,
    k: Option<usize>,
) -> Result<Prepared> {
    let config = Config::load(config_file)?;
    let key_file = key
        .map(Path::to_path_buf)
        .or_else(|| config.key_file.clone())
        .ok_or_else(|| {
            anyhow!(
                "no project key: {} names no key_file and --key was not given (create one with \
                 `phivault deidentify --new-key FILE`, then name it in key_file or pass --key)",
                config_file.display()
            )
        })?;
    let key = ProjectKey::load(&key_file)?;
    crate::commands::check_new_out(out)?;
    Ok(Prepared {
        config,
        key,
        out: out.to_path_buf(),
        k,
    })
}

/// `error` (reading the server configuration), with a hint when `--config` names a
/// de-identification configuration (the spelling): that one is `--deid-config`.
pub(crate) fn hint_if_deid_config(error: anyhow::Error, config: Option<&Path>) -> anyhow::Error {
    match config {
        Some(file) if Config::load(file).is_ok() => error.context(format!(
            "--config {} is read as the server configuration (storage, consent defaults); \
             give the de-identification configuration as --deid-config",
            file.display()
        )),
        _ => error,
    }
}

/// `phivault deidentify --new-key FILE`: a new random project key in a new owner-only file.
pub(crate) fn new_key(path: &Path) -> Result<()> {
    let text = ProjectKey::generate()?;
    let mut file = crate::backup_cmd::create_private_file(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            anyhow!(
                "{} exists: a project key is never overwritten (the pseudonyms and date shifts \
                 of earlier exports depend on it); choose another file",
                path.display()
            )
        } else {
            anyhow!("creating {}: {e}", path.display())
        }
    })?;
    if let Err(e) = file
        .write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
    {
        drop(file);
        let _ = std::fs::remove_file(path);
        bail!("writing {}: {e}", path.display());
    }
    eprintln!(
        "phivault: new project key written to {} (owner-only). Name it in the configuration's \
         key_file (or pass --key) and back it up: the same key gives the same pseudonyms and \
         date shifts in every export. Keep it away from the recipients of the exports: it \
         links pseudonyms back to records and decrypts `encrypt` values",
        path.display()
    );
    Ok(())
}

/// Runs the export (see the module docs) and reports on stderr.
pub(crate) async fn run(
    store: &Store,
    defaults: &ConsentDefaults,
    prepared: Prepared,
) -> Result<()> {
    let audit = CliAudit::open(store, "deidentify").await?;
    let hash = prepared.config.hash();
    let out = prepared.out.clone();
    let tmp = crate::commands::partial_sibling(&out);
    let built = build(store, defaults, prepared, &tmp).await;
    if built.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    let (outcome, patients) = match &built {
        Ok(b) => (Outcome::Allowed, b.released.clone()),
        Err(_) => (Outcome::Error, Vec::new()),
    };
    let recorded = audit
        .release_entry(outcome, Purpose::Research, &hash, patients)
        .await;
    let built = match (built, recorded) {
        (Ok(b), Ok(())) => b,
        (Ok(_), Err(audit)) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(audit.context("the export was removed"));
        }
        (Err(e), Ok(())) => return Err(e),
        (Err(e), Err(audit)) => return Err(anyhow!("{e:#} (and {audit:#})")),
    };
    if let Err(e) = std::fs::rename(&tmp, &out) {
        let _ = std::fs::remove_dir_all(&tmp);
        bail!("moving the export to {}: {e}", out.display());
    }
    for line in summary(&built, &out) {
        eprintln!("phivault: {line}");
    }
    Ok(())
}

/// What one run released and left out.
#[derive(Debug)]
struct Built {
    report: Report,
    /// The patients whose records the files hold, ascending.
    released: Vec<String>,
    tally: Tally,
}

/// What was left out before the engine, and why (counts only).
#[derive(Debug, Default)]
struct Tally {
    /// Patients whose consent does not permit research for their Patient resource.
    without_consent: usize,
    /// Patients whose Patient resource carries a sensitivity label.
    labelled_patients: usize,
    /// Resources of exported patients left out for a sensitivity label, by type.
    labelled: BTreeMap<&'static str, u64>,
    /// Resources of exported patients whose consent does not permit research for their
    /// type, by type.
    by_consent: BTreeMap<&'static str, u64>,
    /// Stored Consents that can no longer be applied (each denies).
    unreadable_consents: usize,
}

/// The patients' research consents, read once.
struct ResearchConsents<'a> {
    by_patient: HashMap<Id, Vec<Consent>>,
    defaults: &'a ConsentDefaults,
    now: OffsetDateTime,
}

impl ResearchConsents<'_> {
    /// Reads every active Consent, grouped by patient; a stored consent that can no longer
    /// be applied counts as [`Consent::unreadable`] (it denies).
    async fn load<'a>(
        store: &Store,
        defaults: &'a ConsentDefaults,
        tally: &mut Tally,
    ) -> Result<ResearchConsents<'a>> {
        let rtype = ResourceType::parse("Consent")
            .map_err(|_| anyhow!("the Consent type is not supported"))?;
        let mut by_patient: HashMap<Id, Vec<Consent>> = HashMap::new();
        let active = [("status".to_owned(), "active".to_owned())];
        each_resource(store, rtype, &active, |r| {
            let Some(patient) = compartment_patient_of(rtype, &r.body) else {
                return;
            };
            let consent = match Consent::parse(&r.body) {
                Ok(Some(c)) => c,
                Ok(None) => return,
                Err(_) => {
                    tally.unreadable_consents += 1;
                    Consent::unreadable(patient.clone())
                }
            };
            by_patient.entry(patient).or_default().push(consent);
        })
        .await?;
        Ok(ResearchConsents {
            by_patient,
            defaults,
            now: OffsetDateTime::now_utc(),
        })
    }

    /// Whether `patient`'s consents (else the research default) permit research on their
    /// resources of `rtype`.
    fn permit(&self, patient: &Id, rtype: ResourceType) -> bool {
        let consents = self.by_patient.get(patient).map_or(&[][..], Vec::as_slice);
        let query = ConsentQuery {
            purpose: Purpose::Research,
            rtype: Some(rtype),
            practitioner: None,
            client: None,
            now: self.now,
        };
        evaluate(consents, &query).permits(self.defaults, Purpose::Research)
    }
}

/// Hands every current resource of `rtype` matching `pairs`, over every patient compartment,
/// to `each`, one store page at a time.
async fn each_resource(
    store: &Store,
    rtype: ResourceType,
    pairs: &[(String, String)],
    mut each: impl FnMut(StoredResource),
) -> Result<()> {
    let scope = SearchScope {
        patients: None,
        directory: false,
        ..SearchScope::default()
    };
    let mut query = SearchQuery::parse(rtype, pairs, false)
        .with_context(|| format!("the query of the {rtype} resources"))?;
    query.count = PAGE;
    query.offset = 0;
    loop {
        let page = store
            .search_scoped(rtype, &query, &scope)
            .await
            .with_context(|| format!("reading the {rtype} resources"))?;
        let read = page.resources.len();
        page.resources.into_iter().for_each(&mut each);
        query.offset = query.offset.saturating_add(read);
        if read == 0 || u64::try_from(query.offset).unwrap_or(u64::MAX) >= page.total {
            return Ok(());
        }
    }
}

/// Reads, decides, de-identifies and writes the export into `dir` (created here).
async fn build(
    store: &Store,
    defaults: &ConsentDefaults,
    prepared: Prepared,
    dir: &Path,
) -> Result<Built> {
    let Prepared { config, key, k, .. } = prepared;
    let year = OffsetDateTime::now_utc().year();
    let engine = Deidentifier::new(config, key, year);
    let mut tally = Tally::default();
    let consents = ResearchConsents::load(store, defaults, &mut tally).await?;

    let mut run = Run::new(&engine);
    let mut included: HashSet<Id> = HashSet::new();
    let mut seen: HashSet<Id> = HashSet::new();
    each_resource(store, ResourceType::PATIENT, &[], |r| {
        // A page boundary moved by a concurrent write may show a resource twice.
        if !seen.insert(r.id.clone()) {
            return;
        }
        if !consents.permit(&r.id, ResourceType::PATIENT) {
            tally.without_consent += 1;
        } else if !labels_of(&r.body).is_empty() {
            tally.labelled_patients += 1;
        } else {
            run.add_patient(r.id.as_str(), &r.body);
            included.insert(r.id);
        }
    })
    .await?;
    for rtype in portability::compartment_types() {
        if included.is_empty() {
            break;
        }
        if rtype == ResourceType::PATIENT || !engine.exports(rtype.as_str()) {
            continue;
        }
        seen.clear();
        each_resource(store, rtype, &[], |r| {
            let Some(patient) = compartment_patient_of(rtype, &r.body) else {
                return;
            };
            if !included.contains(&patient) || !seen.insert(r.id.clone()) {
                return;
            }
            if !labels_of(&r.body).is_empty() {
                *tally.labelled.entry(rtype.as_str()).or_default() += 1;
            } else if !consents.permit(&patient, rtype) {
                *tally.by_consent.entry(rtype.as_str()).or_default() += 1;
            } else {
                run.add(patient.as_str(), rtype.as_str(), &r.body);
            }
        })
        .await?;
    }

    let Release {
        files,
        mut report,
        released_patients: released,
    } = run.finish(k);
    report.patients_without_consent = tally.without_consent;
    write_files(dir, &files, &report)?;
    Ok(Built {
        report,
        released,
        tally,
    })
}

/// Writes `<Type>.ndjson` for each file and `report.json` into the new directory `dir`.
fn write_files(dir: &Path, files: &BTreeMap<String, Vec<u8>>, report: &Report) -> Result<()> {
    crate::commands::create_new_private_dir(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let report = serde_json::to_vec_pretty(report).context("serializing the report")?;
    let all = files
        .iter()
        .map(|(t, bytes)| (format!("{t}.ndjson"), bytes.as_slice()))
        .chain(std::iter::once((REPORT_FILE.to_owned(), report.as_slice())));
    for (name, bytes) in all {
        let path = dir.join(&name);
        let mut file = crate::backup_cmd::create_private_file(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        file.write_all(bytes)
            .and_then(|()| file.sync_all())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    // The directory's entries, before it is renamed into place.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// The stderr lines of a run: counts, risk and the configuration, never a value.
fn summary(built: &Built, out: &Path) -> Vec<String> {
    let r = &built.report;
    let t = &built.tally;
    let mut lines = vec![format!(
        "de-identified export written to {} (configuration sha256 {}{})",
        out.display(),
        r.configuration_hash,
        r.preset
            .as_deref()
            .map(|p| format!(", extends {p}"))
            .unwrap_or_default()
    )];
    let threshold = r
        .k_threshold
        .map(|k| format!(" (classes smaller than k = {k})"))
        .unwrap_or_default();
    lines.push(format!(
        "patients: {} released, {} without research consent, {} suppressed{threshold}, {} \
         left out for a labelled Patient record",
        r.patients_released, r.patients_without_consent, r.patients_suppressed, t.labelled_patients
    ));
    let per_type: Vec<String> = r
        .resources
        .iter()
        .map(|(ty, c)| {
            format!(
                "{ty} {} released of {} read ({} suppressed)",
                c.released, c.read, c.suppressed
            )
        })
        .collect();
    if !per_type.is_empty() {
        lines.push(format!("resources: {}", per_type.join(", ")));
    }
    let left_out = |what: &str, by: &BTreeMap<&'static str, u64>| {
        (!by.is_empty()).then(|| {
            let parts: Vec<String> = by.iter().map(|(ty, n)| format!("{ty} {n}")).collect();
            format!("left out {what}: {}", parts.join(", "))
        })
    };
    lines.extend(left_out("for a sensitivity label", &t.labelled));
    lines.extend(left_out(
        "because the patient's consent does not permit research on the type",
        &t.by_consent,
    ));
    let risk = |x: &Risk| format!("k = {}, l = {} ({} classes)", x.k, x.l, x.classes);
    lines.push(format!(
        "risk over {}: {} before suppression; {} released",
        quasi_identifiers(r),
        risk(&r.risk),
        risk(&r.risk_released)
    ));
    if t.unreadable_consents > 0 {
        lines.push(format!(
            "warning: {} stored Consents can no longer be applied; each denies research for \
             its patient until it is corrected",
            t.unreadable_consents
        ));
    }
    lines.push(format!(
        "audited as `cli deidentify` (purpose HRESCH), in the access log of each of the {} \
         patients released",
        built.released.len()
    ));
    lines
}

/// `Patient.birthDate as year, ...`.
fn quasi_identifiers(r: &Report) -> String {
    let names: Vec<String> = r
        .quasi_identifiers
        .iter()
        .map(|q| match q.reduce {
            Some(reduce) => format!(
                "{} as {}",
                q.path,
                serde_json::to_value(reduce)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default()
            ),
            None => q.path.clone(),
        })
        .collect();
    if names.is_empty() {
        "no quasi-identifiers".to_owned()
    } else {
        names.join(", ")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn out_must_be_new_or_empty() {
        let dir = tempfile::tempdir().unwrap();
        assert!(crate::commands::check_new_out(&dir.path().join("new")).is_ok());
        assert!(
            crate::commands::check_new_out(dir.path()).is_ok(),
            "an empty directory"
        );
        std::fs::write(dir.path().join("x"), b"x").unwrap();
        let e = crate::commands::check_new_out(dir.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("not empty"), "{e}");
        let e = crate::commands::check_new_out(&dir.path().join("x"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--out"), "{e}");
    }

    #[test]
    fn the_temporary_directory_is_beside_out() {
        let t = crate::commands::partial_sibling(Path::new("/a/b/export"));
        assert_eq!(t.parent(), Some(Path::new("/a/b")));
        assert!(
            t.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("export.partial-")
        );
        let t = crate::commands::partial_sibling(Path::new("export/"));
        assert!(t.to_string_lossy().starts_with("export.partial-"), "{t:?}");
    }

    #[test]
    fn a_new_key_is_private_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("project.key");
        new_key(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.trim().len(), 64);
        assert!(ProjectKey::parse(&text).is_ok());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let e = new_key(&path).unwrap_err().to_string();
        assert!(e.contains("never overwritten"), "{e}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    }

    #[test]
    fn a_configuration_without_a_key_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("deid.toml");
        std::fs::write(&file, "extends = \"safe-harbor\"\n").unwrap();
        let e = prepare(&file, None, &dir.path().join("out"), None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no project key") && e.contains("--new-key"),
            "{e}"
        );
        // key_file is relative to the configuration; --key wins over it.
        let key = dir.path().join("k");
        std::fs::write(&key, "cd".repeat(32)).unwrap();
        std::fs::write(&file, "extends = \"safe-harbor\"\nkey_file = \"k\"\n").unwrap();
        assert!(prepare(&file, None, &dir.path().join("out"), None).is_ok());
        let e = prepare(
            &file,
            Some(&dir.path().join("none")),
            &dir.path().join("o"),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("none"), "{e}");
    }

    #[test]
    fn a_deid_configuration_given_as_config_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let deid = dir.path().join("deid.toml");
        std::fs::write(&deid, "extends = \"safe-harbor\"\n").unwrap();
        let e = hint_if_deid_config(anyhow!("unknown field `extends`"), Some(&deid));
        assert!(format!("{e:#}").contains("--deid-config"), "{e:#}");
        let server = dir.path().join("phivault.toml");
        std::fs::write(&server, "data_dir = \"x\"\n").unwrap();
        let e = hint_if_deid_config(anyhow!("bad"), Some(&server));
        assert_eq!(format!("{e:#}"), "bad");
    }
}
