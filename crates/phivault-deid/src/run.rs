//! One export: patients and their resources in, NDJSON per type and a report out.
//!
//! The caller chooses the patients (those whose consent permits the use) and hands each
//! patient's `Patient` first, then the rest of their compartment. Risk is measured on the
//! de-identified output; with a threshold k, every record of a patient in a class smaller
//! than k is withheld, and the report says how many.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;
use serde_json::Value;

use crate::Deidentifier;
use crate::config::QuasiIdentifier;
use crate::engine::{PatientContext, RuleCounts};
use crate::risk::{self, QiKey, Risk};

/// One patient's output, held until the export's risk is known.
struct Held {
    /// The patient's original id (for the caller's audit entry, never in the output).
    id: String,
    ctx: PatientContext,
    /// Output order: by pseudonym, never by the original id.
    pseudonym: String,
    patient: Option<Value>,
    resources: Vec<(String, Value)>,
}

/// An export being assembled.
pub struct Run<'a> {
    engine: &'a Deidentifier,
    held: HashMap<String, Held>,
    read: BTreeMap<String, u64>,
    not_exported: BTreeMap<String, u64>,
    without_patient: u64,
    counts: RuleCounts,
}

impl std::fmt::Debug for Run<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Run")
            .field("patients", &self.held.len())
            .finish_non_exhaustive()
    }
}

/// Resources of one type in a report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TypeCounts {
    /// Read from the store.
    pub read: u64,
    /// Written to the output.
    pub released: u64,
    /// Withheld because their patient's class was smaller than k.
    pub suppressed: u64,
}

/// What an export did, for the researcher and the data protection officer. Holds counts,
/// rule names and class sizes, never a value of a record.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// SHA-256 of the resolved configuration.
    pub configuration_hash: String,
    /// The preset the configuration extends.
    pub preset: Option<String>,
    /// Patients whose records were released.
    pub patients_released: usize,
    /// Patients withheld by the k threshold.
    pub patients_suppressed: usize,
    /// Patients left out because their consent does not permit the use (set by the caller,
    /// who decides consent).
    pub patients_without_consent: usize,
    /// By resource type.
    pub resources: BTreeMap<String, TypeCounts>,
    /// Resources read whose type has no rule (left out whole), by type.
    pub types_without_rules: BTreeMap<String, u64>,
    /// Resources that named no patient handed to the run (left out).
    pub resources_without_patient: u64,
    /// How many elements each rule decided.
    pub rules_applied: BTreeMap<String, u64>,
    /// The quasi-identifiers measured.
    pub quasi_identifiers: Vec<QuasiIdentifier>,
    /// The sensitive attribute of l-diversity.
    pub sensitive_attribute: String,
    /// Risk of the output before suppression.
    pub risk: Risk,
    /// The k threshold applied, if any.
    pub k_threshold: Option<usize>,
    /// Risk of what was released (after suppression).
    pub risk_released: Risk,
}

/// The output of a run. Its `Debug` output names the files and their sizes, never their
/// content (a limited data set is still PHI).
pub struct Release {
    /// NDJSON by resource type.
    pub files: BTreeMap<String, Vec<u8>>,
    /// The report.
    pub report: Report,
    /// The original ids of the patients whose records were released (ascending): the
    /// caller names them in the export's audit entry. Not part of the output.
    pub released_patients: Vec<String>,
}

impl std::fmt::Debug for Release {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sizes: BTreeMap<&str, usize> = self
            .files
            .iter()
            .map(|(t, b)| (t.as_str(), b.len()))
            .collect();
        f.debug_struct("Release")
            .field("file_bytes", &sizes)
            .field("report", &self.report)
            .field("released_patients", &self.released_patients.len())
            .finish()
    }
}

impl<'a> Run<'a> {
    /// A new, empty export with `engine`.
    pub fn new(engine: &'a Deidentifier) -> Run<'a> {
        Run {
            engine,
            held: HashMap::new(),
            read: BTreeMap::new(),
            not_exported: BTreeMap::new(),
            without_patient: 0,
            counts: RuleCounts::new(),
        }
    }

    /// Adds a patient by their `Patient` resource (id `id`).
    pub fn add_patient(&mut self, id: &str, body: &Value) {
        *self.read.entry("Patient".to_owned()).or_default() += 1;
        let ctx = self.engine.patient_context(id, Some(body));
        let out = self
            .engine
            .apply_counted(&ctx, "Patient", body, &mut self.counts);
        if out.is_none() {
            *self.not_exported.entry("Patient".to_owned()).or_default() += 1;
        }
        self.held.insert(
            id.to_owned(),
            Held {
                id: id.to_owned(),
                ctx,
                pseudonym: self.engine.pseudonym_of("Patient", id),
                patient: out,
                resources: Vec::new(),
            },
        );
    }

    /// Adds a resource of `rtype` from the compartment of `patient` (added before).
    pub fn add(&mut self, patient: &str, rtype: &str, body: &Value) {
        *self.read.entry(rtype.to_owned()).or_default() += 1;
        let Some(held) = self.held.get_mut(patient) else {
            self.without_patient += 1;
            return;
        };
        match self
            .engine
            .apply_counted(&held.ctx, rtype, body, &mut self.counts)
        {
            Some(out) => held.resources.push((rtype.to_owned(), out)),
            None => *self.not_exported.entry(rtype.to_owned()).or_default() += 1,
        }
    }

    /// Measures the output, withholds patients in classes smaller than `k`, and writes the
    /// files and the report.
    pub fn finish(self, k: Option<usize>) -> Release {
        let config = self.engine.config();
        let (sens_type, sens_path) = config
            .sensitive
            .split_once('.')
            .unwrap_or((config.sensitive.as_str(), ""));
        let mut patients: Vec<Held> = self.held.into_values().collect();
        patients.sort_by(|a, b| a.pseudonym.cmp(&b.pseudonym));
        let keys: Vec<QiKey> = patients
            .iter()
            .map(|p| risk::key_of(p.patient.as_ref(), &config.quasi_identifiers))
            .collect();
        let sensitive: Vec<String> = patients
            .iter()
            .map(|p| {
                let mut values = BTreeSet::new();
                for (t, r) in &p.resources {
                    if t == sens_type {
                        risk::values_at(r, sens_path, &mut values);
                    }
                }
                serde_json::to_string(&values).unwrap_or_default()
            })
            .collect();
        let before = risk::measure(keys.iter().zip(&sensitive));
        let sizes = risk::class_sizes(&keys);
        let threshold = k.filter(|k| *k > 1);
        let kept: Vec<bool> = keys
            .iter()
            .map(|key| threshold.is_none_or(|k| sizes.get(key).copied().unwrap_or(0) >= k))
            .collect();
        let released = risk::measure(
            keys.iter()
                .zip(&sensitive)
                .zip(&kept)
                .filter(|(_, k)| **k)
                .map(|(pair, _)| pair),
        );

        let mut resources: BTreeMap<String, TypeCounts> = self
            .read
            .iter()
            .map(|(t, n)| {
                (
                    t.clone(),
                    TypeCounts {
                        read: *n,
                        ..TypeCounts::default()
                    },
                )
            })
            .collect();
        let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let mut suppressed_patients = 0;
        let mut released_patients = Vec::with_capacity(patients.len());
        for (p, keep) in patients.iter().zip(&kept) {
            if *keep {
                released_patients.push(p.id.clone());
            } else {
                suppressed_patients += 1;
            }
            let all = p
                .patient
                .iter()
                .map(|b| ("Patient", b))
                .chain(p.resources.iter().map(|(t, b)| (t.as_str(), b)));
            for (t, body) in all {
                let counts = resources.entry(t.to_owned()).or_default();
                if *keep {
                    counts.released += 1;
                    let file = files.entry(t.to_owned()).or_default();
                    file.extend_from_slice(body.to_string().as_bytes());
                    file.push(b'\n');
                } else {
                    counts.suppressed += 1;
                }
            }
        }
        let report = Report {
            configuration_hash: self.engine.config_hash().to_owned(),
            preset: config.extends.clone(),
            patients_released: patients.len() - suppressed_patients,
            patients_suppressed: suppressed_patients,
            patients_without_consent: 0,
            resources,
            types_without_rules: self.not_exported,
            resources_without_patient: self.without_patient,
            rules_applied: self.counts,
            quasi_identifiers: config.quasi_identifiers.clone(),
            sensitive_attribute: config.sensitive.clone(),
            risk: before,
            k_threshold: threshold,
            risk_released: released,
        };
        released_patients.sort();
        Release {
            files,
            report,
            released_patients,
        }
    }
}
