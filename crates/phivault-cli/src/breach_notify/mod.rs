//! `phivault breach notify --report FILE --incident FILE --template DIR --out DIR
//! [--encrypt-to AGE_RECIPIENT]...`: after `breach report`, the notifications of a personal
//! data breach: one letter to each patient whose data was reached (GDPR art. 34) and the
//! notification to the supervisory authority (art. 33), as HTML and PDF.
//!
//! Out of `OUT/`: `letters/<patient id>.html` and `.pdf` per notified patient,
//! `regulator-summary.html` and `.pdf`, and `manifest.json` (the files, the counts, and the
//! ids of the patients who could not be notified, with why).
//!
//! The rules it keeps:
//! - **Mistakes cost nothing.** The report, the incident file, the templates, the age
//!   recipients and `--out` are all checked before the store is opened (`prepare`); a
//!   mistake there is named precisely, writes nothing and is not audited.
//! - **A letter holds one patient.** Each letter is rendered from values about its patient
//!   only (their name and language from their own Patient record, read as the operator
//!   through the store so it is decrypted like any read; the window and the categories of
//!   their own data from the report; the operator's incident text). The actor, other
//!   patients and the ids of other resources are never given to a letter template (see
//!   `letters`). The regulator summary has counts and no ids (see `summary`).
//! - **Erasure is final.** A patient erased since the breach (their data key destroyed) has
//!   no name or language any more: they are skipped and counted as not notifiable, erased;
//!   a patient whose record is gone from the store (disposed of) likewise, as unknown. A
//!   deleted patient is addressed from their last version before the deletion.
//! - **Audited, fail-closed.** The files are written into a temporary directory beside
//!   `--out`; then one `cli breach notify` entry (outcome allowed) naming every notified
//!   patient is appended, so that each finds it in their access log; only then is the
//!   directory renamed into place. When the entry cannot be written the output is removed.
//!   A run that fails appends its entry with outcome `error`, naming no patient.
//! - **Owner-only or sealed.** The directory is 0700 and its files 0600; with
//!   `--encrypt-to`, every file is age-encrypted to the recipients and nothing is written in
//!   plaintext (see `output`).
//! - **No PHI in messages.** Errors about a patient name their id; stderr carries counts,
//!   template names and times, never a name.

mod input;
mod letters;
mod output;
mod pdf;
mod summary;
mod templates;

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use minijinja::value::{Serde, Value};
use phivault_audit::Outcome;

use crate::cli_audit::CliAudit;
use phivault_fhir::{Id, ResourceType};
use phivault_store::{Store, StoreError};
use serde::Serialize;
use serde_json::Value as Json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::cli::StorageArgs;
use input::{Incident, Report};
use letters::LetterContext;
use output::Sink;
use summary::{Subjects, SummaryContext};
use templates::Templates;

/// The action of the run's audit entry.
const ACTION: &str = "cli breach notify";

/// `phivault breach notify --report FILE --incident FILE --template DIR --out DIR`
#[derive(Debug, Clone, Args)]
pub(crate) struct BreachNotifyArgs {
    /// The report, as written by `phivault breach report --format json --out FILE`.
    #[arg(long, value_name = "FILE")]
    pub(crate) report: PathBuf,
    /// The incident (TOML): description, detected_at, likely_consequences, measures_taken,
    /// [contact] name and address/email/phone; optional controller, recommendations,
    /// delay_reasons.
    #[arg(long, value_name = "FILE")]
    pub(crate) incident: PathBuf,
    /// The templates: a copy of templates/breach/ (letter.html, letter.txt,
    /// letter.<lang>.html/.txt, regulator-summary.html/.txt).
    #[arg(long, value_name = "DIR")]
    pub(crate) template: PathBuf,
    /// A new (or empty) directory for the letters, the summary and the manifest.
    #[arg(long, value_name = "DIR")]
    pub(crate) out: PathBuf,
    /// Encrypt every file to this age X25519 recipient (`age1...`; repeatable): files are
    /// written as `<name>.age`, nothing in plaintext.
    #[arg(long = "encrypt-to", value_name = "AGE_RECIPIENT")]
    pub(crate) encrypt_to: Vec<String>,
    #[command(flatten)]
    pub(crate) storage: StorageArgs,
}

/// Everything checked before the store is opened.
pub(crate) struct Prepared {
    report: Report,
    incident: Incident,
    templates: Templates,
    out: PathBuf,
    recipients: Vec<String>,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("patients", &self.report.patients.len())
            .field("templates", &self.templates)
            .field("out", &self.out)
            .field("recipients", &self.recipients.len())
            .finish_non_exhaustive()
    }
}

/// Reads and checks every input (see the module docs); touches neither the store nor
/// `--out`.
pub(crate) fn prepare(args: &BreachNotifyArgs) -> Result<Prepared> {
    output::check_recipients(&args.encrypt_to)?;
    let incident = Incident::load(&args.incident, OffsetDateTime::now_utc())?;
    let report = Report::load(&args.report)?;
    let templates = Templates::load(&args.template)?;
    crate::commands::check_new_out(&args.out)?;
    Ok(Prepared {
        report,
        incident,
        templates,
        out: args.out.clone(),
        recipients: args.encrypt_to.clone(),
    })
}

/// Runs the notification (see the module docs) and reports on stderr.
pub(crate) async fn run(store: &Store, prepared: Prepared) -> Result<()> {
    let audit = CliAudit::open(store, "breach notify").await?;
    let out = prepared.out.clone();
    let tmp = crate::commands::partial_sibling(&out);
    let built = build(store, &prepared, &tmp).await;
    if built.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    let (outcome, patients) = match &built {
        Ok(b) => (Outcome::Allowed, b.notified.clone()),
        Err(_) => (Outcome::Error, Vec::new()),
    };
    let recorded = audit.about_patients(outcome, patients).await;
    let built = match (built, recorded) {
        (Ok(b), Ok(_)) => b,
        (Ok(_), Err(audit)) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(audit.context("the notification was removed"));
        }
        (Err(e), Ok(_)) => return Err(e),
        (Err(e), Err(audit)) => return Err(anyhow!("{e:#} (and {audit:#})")),
    };
    if let Err(e) = std::fs::rename(&tmp, &out) {
        let _ = std::fs::remove_dir_all(&tmp);
        bail!("moving the notification to {}: {e}", out.display());
    }
    for line in report_lines(&built, &prepared, &out) {
        eprintln!("phivault: {line}");
    }
    Ok(())
}

/// What the store holds of a patient of the report.
enum Record {
    /// Their Patient resource (the current version, or the last before a deletion).
    Found(Json),
    /// Erased: unreadable for ever.
    Erased,
    /// Not in this store.
    Unknown,
}

/// Reads `id`'s Patient resource as the operator.
async fn read_patient(store: &Store, id: &Id) -> Result<Record> {
    let read = match store.read(ResourceType::PATIENT, id).await {
        Err(StoreError::Gone { version, .. }) if version > 1 => {
            store.vread(ResourceType::PATIENT, id, version - 1).await
        }
        other => other,
    };
    match read {
        Ok(r) => Ok(Record::Found(r.body)),
        Err(StoreError::Erased { .. }) => Ok(Record::Erased),
        Err(StoreError::NotFound { .. } | StoreError::Gone { .. }) => Ok(Record::Unknown),
        Err(e) => Err(anyhow!("reading Patient/{id}: {e}")),
    }
}

/// One letter in the manifest.
#[derive(Debug, Serialize)]
struct LetterEntry {
    patient: String,
    /// The template's language; none for the default.
    language: Option<String>,
    files: Vec<String>,
}

/// A patient who was not notified, and why (`erased`, `unknown`).
#[derive(Debug, Serialize)]
struct NotNotified {
    patient: String,
    reason: &'static str,
}

/// `manifest.json`: ids, file names and counts only.
#[derive(Debug, Serialize)]
struct Manifest<'a> {
    generated_at: String,
    encrypted: bool,
    subjects: &'a Subjects,
    letters: &'a [LetterEntry],
    not_notified: &'a [NotNotified],
    regulator_summary: &'a [String],
}

/// What one run made.
#[derive(Debug)]
struct Built {
    /// The notified patients, in report order.
    notified: Vec<String>,
    subjects: Subjects,
    /// Letters per template (`letter.es.html`).
    by_template: BTreeMap<String, usize>,
    late: Option<time::Duration>,
}

/// Renders every document into the new directory `dir`.
async fn build(store: &Store, prepared: &Prepared, dir: &std::path::Path) -> Result<Built> {
    let Prepared {
        report,
        incident,
        templates,
        recipients,
        ..
    } = prepared;
    let now = OffsetDateTime::now_utc();
    let mut sink = Sink::create(dir, recipients)?;
    let mut subjects = Subjects {
        total: report.patients.len(),
        ..Subjects::default()
    };
    let mut letters = Vec::new();
    let mut not_notified = Vec::new();
    let mut by_template: BTreeMap<String, usize> = BTreeMap::new();
    for affected in &report.patients {
        let id = &affected.id;
        let body = match read_patient(store, id).await? {
            Record::Found(body) => body,
            Record::Erased => {
                subjects.erased += 1;
                not_notified.push(NotNotified {
                    patient: id.to_string(),
                    reason: "erased",
                });
                continue;
            }
            Record::Unknown => {
                subjects.unknown += 1;
                not_notified.push(NotNotified {
                    patient: id.to_string(),
                    reason: "unknown",
                });
                continue;
            }
        };
        let facts = letters::patient_facts(&body);
        drop(body);
        let pair = templates.letter_for(facts.language.as_deref());
        let language = pair.language.as_deref();
        let context = Value::from(Serde(LetterContext::new(
            language, &facts, affected, incident, now,
        )));
        let html = templates
            .render(&pair.html, &context)
            .with_context(|| format!("the letter of Patient/{id}"))?;
        let text = templates
            .render(&pair.txt, &context)
            .with_context(|| format!("the letter of Patient/{id}"))?;
        let files = vec![
            sink.write(&format!("letters/{id}.html"), html.as_bytes())?,
            sink.write(&format!("letters/{id}.pdf"), &pdf::render(&text, language))?,
        ];
        *by_template.entry(pair.html.clone()).or_default() += 1;
        subjects.notified += 1;
        letters.push(LetterEntry {
            patient: id.to_string(),
            language: pair.language.clone(),
            files,
        });
    }

    let summary = templates.summary();
    let context = Value::from(Serde(SummaryContext::new(report, incident, &subjects, now)));
    let html = templates.render(&summary.html, &context)?;
    let text = templates.render(&summary.txt, &context)?;
    let summary_files = vec![
        sink.write("regulator-summary.html", html.as_bytes())?,
        sink.write("regulator-summary.pdf", &pdf::render(&text, None))?,
    ];
    let manifest = Manifest {
        generated_at: now.format(&Rfc3339).unwrap_or_default(),
        encrypted: sink.encrypted(),
        subjects: &subjects,
        letters: &letters,
        not_notified: &not_notified,
        regulator_summary: &summary_files,
    };
    let mut json = serde_json::to_vec_pretty(&manifest).context("the manifest")?;
    json.push(b'\n');
    sink.write("manifest.json", &json)?;
    sink.finish();
    Ok(Built {
        notified: letters.into_iter().map(|l| l.patient).collect(),
        subjects,
        by_template,
        late: summary::delay(incident.detected_at, now),
    })
}

/// The stderr lines of a run: counts, template names and times, never a name.
fn report_lines(built: &Built, prepared: &Prepared, out: &std::path::Path) -> Vec<String> {
    let s = &built.subjects;
    let templates: Vec<String> = built
        .by_template
        .iter()
        .map(|(t, n)| format!("{t} {n}"))
        .collect();
    let mut lines = vec![format!(
        "breach notification written to {}: {} letters (HTML and PDF{}) and the regulator \
         summary, for {} patients in the report",
        out.display(),
        s.notified,
        if templates.is_empty() {
            String::new()
        } else {
            format!("; {}", templates.join(", "))
        },
        s.total
    )];
    if s.erased + s.unknown > 0 {
        lines.push(format!(
            "not notifiable: {} erased, {} not in the store (manifest.json lists their ids)",
            s.erased, s.unknown
        ));
    }
    if let Some(late) = built.late {
        let deadline = letters::when(summary::deadline(prepared.incident.detected_at));
        let mut line = format!(
            "the 72-hour deadline ({deadline}) passed {} ago; the summary says so",
            summary::in_words(late)
        );
        if prepared.incident.delay_reasons.is_none() {
            line.push_str(
                ": give the reasons for the delay (GDPR art. 33(1)) as delay_reasons in the \
                 incident file and run again",
            );
        }
        lines.push(line);
    }
    lines.push(if prepared.recipients.is_empty() {
        "the files are not encrypted and hold PHI: protect them, or use --encrypt-to".to_owned()
    } else {
        format!(
            "every file is encrypted with age to {} recipients",
            prepared.recipients.len()
        )
    });
    lines.push(format!(
        "audited as `{ACTION}`, in the access log of each of the {} patients notified",
        s.notified
    ));
    lines
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The templates shipped in the repository render every document (a missing value or a
    /// typo in them fails here, not at a breach).
    #[test]
    fn the_shipped_templates_render() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../templates/breach");
        let templates = Templates::load(&dir).unwrap();
        let now = input::instant("2026-12-06T12:00:00Z", "now").unwrap();
        let report = Report::parse(
            r#"{"from": "2026-12-01T00:00:00Z", "to": "2026-12-02T00:00:00Z",
                "generated_at": "2026-12-02T10:00:00Z", "patients": [
                {"patient": "p1", "first": "2026-12-01T08:00:00Z", "last": "2026-12-01T09:00:00Z",
                 "accesses": 4, "by_resource_type": {"Patient": 1, "Observation": 2, "Condition": 1},
                 "by_label": {"PSY": 1}}]}"#,
        )
        .unwrap();
        let incident = Incident::parse(
            "description = \"What happened.\"\ndetected_at = 2026-12-02T09:30:00Z\n\
             likely_consequences = \"Consequences.\"\nmeasures_taken = \"Measures.\"\n\
             [contact]\nname = \"DPO\"\nemail = \"dpo@example.org\"\n",
            now,
        )
        .unwrap();
        let facts = letters::PatientFacts {
            given: "Ana".to_owned(),
            family: "Núñez".to_owned(),
            name: "Ana Núñez".to_owned(),
            language: None,
        };
        let expected = [
            (
                None,
                "Dear Ana Núñez",
                "test results and measurements",
                "mental health",
            ),
            (
                Some("es"),
                "Estimado/a Ana Núñez",
                "resultados de pruebas y mediciones",
                "salud mental",
            ),
            (
                Some("de"),
                "Guten Tag Ana Núñez",
                "Untersuchungsergebnisse und Messwerte",
                "psychische Gesundheit",
            ),
        ];
        for (tag, greeting, category, sensitive) in expected {
            let pair = templates.letter_for(tag);
            assert_eq!(pair.language.as_deref(), tag);
            let letter = LetterContext::new(tag, &facts, &report.patients[0], &incident, now);
            let categories = serde_json::to_value(&letter).unwrap()["categories"].clone();
            assert_eq!(categories.as_array().unwrap().len(), 3, "{categories}");
            if tag.is_none() {
                // In the table's order: who they are first.
                assert_eq!(
                    categories,
                    serde_json::json!([
                        "your name, date of birth and contact details",
                        "test results and measurements",
                        "diagnoses"
                    ])
                );
            }
            let ctx = Value::from(Serde(LetterContext::new(
                pair.language.as_deref(),
                &facts,
                &report.patients[0],
                &incident,
                now,
            )));
            for name in [&pair.html, &pair.txt] {
                let text = templates.render(name, &ctx).unwrap();
                assert!(text.contains(greeting), "{name}: {text}");
                assert!(text.contains(category), "{name}: {text}");
                assert!(text.contains(sensitive), "{name}: {text}");
                assert!(text.contains("2026-12-01 08:00 UTC"), "{name}: {text}");
                assert!(!text.contains("p1"), "{name}: no id");
            }
            let pdf = pdf::render(&templates.render(&pair.txt, &ctx).unwrap(), tag);
            assert!(pdf.starts_with(b"%PDF-"));
        }
        let subjects = Subjects {
            total: 1,
            notified: 1,
            ..Subjects::default()
        };
        let ctx = Value::from(Serde(SummaryContext::new(
            &report, &incident, &subjects, now,
        )));
        for name in ["regulator-summary.html", "regulator-summary.txt"] {
            let text = templates.render(name, &ctx).unwrap();
            assert!(
                text.contains("72-hour deadline (Article 33(1)): 2026-12-05 09:30 UTC"),
                "{name}: {text}"
            );
            assert!(
                text.contains("made 1 day, 2 hours and 30 minutes after the 72-hour deadline"),
                "{name}: {text}"
            );
            assert!(text.contains("mental health"), "{name}: {text}");
            assert!(!text.contains("p1"), "{name}: no id");
        }
    }
}
