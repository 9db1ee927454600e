//! De-identified research exports: a Bulk Data `$export` (system, Patient or Group level)
//! with `deidentification=<project>`, for researchers and research apps.
//!
//! Rules kept here:
//! - **Only through a configured project.** The operator names each research project in the
//!   server's configuration with its de-identification configuration and project key; a
//!   client chooses a project by name and can neither see nor change its rules or key. An
//!   unknown project is refused (400).
//! - **Research only, within consent, never labelled data**: the reads are
//!   [`Access::research_read`]'s (purpose HRESCH, the patients whose research consent
//!   permits it, an `export_deidentified` decision per patient and type, labelled resources
//!   left out).
//! - **Only de-identified data leaves.** Everything read goes through the project's
//!   [`Deidentifier`] (allow-list rules, keyed pseudonyms, dates, k-anonymity suppression)
//!   before it is put in a file; the report (counts, rules applied, the configuration's hash,
//!   k and l) goes in the manifest's `extension.deidentification`.
//! - **Audited with its configuration.** The kick-off's audit entry names every patient
//!   whose records it released (not those a k threshold withholds), the purpose (HRESCH, so
//!   each patient's access log shows a research use) and the configuration's hash.
//! - Patient compartment types only: a research export is about patients' data.

use std::collections::BTreeMap;
use std::sync::Arc;

use phivault_deid::{Deidentifier, Run};
use phivault_fhir::{Id, ResourceType};
use serde_json::Value;
use zeroize::Zeroizing;

use crate::fhir_routes::Access;
use crate::{ApiError, BulkLimits, ServerError};

/// One research project: its de-identification engine (configuration and key) and the
/// smallest class size it releases.
pub struct ResearchProject {
    name: String,
    engine: Deidentifier,
    k: Option<usize>,
}

impl std::fmt::Debug for ResearchProject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResearchProject")
            .field("name", &self.name)
            .field("configuration", &self.engine.config_hash())
            .field("k", &self.k)
            .finish_non_exhaustive()
    }
}

impl ResearchProject {
    /// A project named `name` (letters, digits, `-`, `_`, `.`; 1 to 64) exporting through
    /// `engine`, withholding patients in quasi-identifier classes smaller than `k`.
    pub fn new(
        name: &str,
        engine: Deidentifier,
        k: Option<usize>,
    ) -> Result<ResearchProject, ServerError> {
        ResearchProject::check_name(name).map_err(ServerError::Config)?;
        Ok(ResearchProject {
            name: name.to_owned(),
            engine,
            k,
        })
    }

    /// Checks a project name (what clients write in `deidentification=`): 1 to 64 letters,
    /// digits, `-`, `_` or `.`. The error names the problem.
    pub fn check_name(name: &str) -> Result<(), String> {
        let ok = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if ok {
            Ok(())
        } else {
            Err(format!(
                "research project name `{}`: use 1 to 64 letters, digits, '-', '_' or '.'",
                name.chars().take(64).collect::<String>()
            ))
        }
    }

    /// The project's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// The configured projects, by name.
#[derive(Debug, Default)]
pub struct ResearchProjects(BTreeMap<String, Arc<ResearchProject>>);

impl ResearchProjects {
    /// The projects; two with one name are refused.
    pub fn new(projects: Vec<ResearchProject>) -> Result<ResearchProjects, ServerError> {
        let mut by_name = BTreeMap::new();
        for p in projects {
            let name = p.name.clone();
            if by_name.insert(name.clone(), Arc::new(p)).is_some() {
                return Err(ServerError::Config(format!(
                    "two research projects are named `{name}`"
                )));
            }
        }
        Ok(ResearchProjects(by_name))
    }

    fn get(&self, name: &str) -> Result<Arc<ResearchProject>, ApiError> {
        self.0.get(name).cloned().ok_or_else(|| {
            ApiError::BadRequest(format!(
                "deidentification: there is no research project named `{}` on this server",
                name.chars().take(64).collect::<String>()
            ))
        })
    }
}

/// A research export's files (NDJSON by type, with their counts) and its report.
pub(crate) struct ResearchOutput {
    pub(crate) files: BTreeMap<&'static str, (Zeroizing<Vec<u8>>, usize)>,
    pub(crate) report: Value,
}

/// Runs the research export of `project` over `types` (compartment types) of the patients
/// in `members` (all when `None`).
pub(crate) async fn export(
    projects: &ResearchProjects,
    project: &str,
    access: &mut Access,
    types: &[ResourceType],
    members: Option<&[Id]>,
    limits: BulkLimits,
) -> Result<ResearchOutput, ApiError> {
    let project = projects.get(project)?;
    access.require_research()?;
    let engine = &project.engine;
    access.audit_slot().note_configuration(engine.config_hash());
    // The Patient first: a patient's other resources are de-identified in its context.
    let mut ordered: Vec<ResourceType> = types
        .iter()
        .copied()
        .filter(|t| t.in_patient_compartment() && engine.exports(t.as_str()))
        .collect();
    ordered.sort_by_key(|t| *t != ResourceType::PATIENT);
    if ordered.first() != Some(&ResourceType::PATIENT) {
        ordered.insert(0, ResourceType::PATIENT);
    }
    let mut run = Run::new(engine);
    let mut read = 0usize;
    let mut patients_read = 0usize;
    for rtype in ordered {
        for (patient, resource) in access.research_read(rtype, members).await? {
            read += 1;
            if read > limits.max_resources {
                return Err(too_large(limits));
            }
            if rtype == ResourceType::PATIENT {
                patients_read += 1;
                run.add_patient(patient.as_str(), &resource.body);
            } else {
                run.add(patient.as_str(), rtype.as_str(), &resource.body);
            }
        }
    }
    let population = access.research_population(members).await?;
    let release = run.finish(project.k);
    for patient in &release.released_patients {
        if let Ok(id) = Id::parse(patient) {
            access.audit_slot().note_patient(&id);
        }
    }
    let mut report = release.report;
    report.patients_without_consent = usize::try_from(population)
        .unwrap_or(usize::MAX)
        .saturating_sub(patients_read);
    let mut files = BTreeMap::new();
    let mut bytes = 0usize;
    for (t, content) in release.files {
        let rtype = ResourceType::parse(&t)
            .map_err(|_| ApiError::internal(&"the engine wrote a file of an unknown type"))?;
        let count = content.iter().filter(|b| **b == b'\n').count();
        bytes = bytes.saturating_add(content.len());
        if bytes > limits.max_bytes {
            return Err(too_large(limits));
        }
        files.insert(rtype.as_str(), (Zeroizing::new(content), count));
    }
    let mut report = serde_json::to_value(&report).map_err(|e| ApiError::internal(&e))?;
    if let Value::Object(m) = &mut report {
        m.insert("project".to_owned(), Value::String(project.name.clone()));
    }
    Ok(ResearchOutput { files, report })
}

fn too_large(limits: BulkLimits) -> ApiError {
    ApiError::BadRequest(format!(
        "this export exceeds the server's limit of {} resources or {} bytes: narrow it with \
         _type, or export by Group",
        limits.max_resources, limits.max_bytes
    ))
}
