//! The two inputs of `breach notify`, checked before the store is opened: the JSON breach
//! report (`phivault breach report --format json --out FILE`) and the operator's incident file
//! (TOML).
//!
//! Rules:
//! - **The report is read for ids, times and counts only.** Its `about` and `actors` (who
//!   caused the breach) are never loaded, so no letter can name them. A patient listed twice,
//!   an id outside the FHIR grammar, an instant that does not parse, or `first` after `last`
//!   make the report malformed; `by_label` is optional (reports written before it existed).
//! - **The incident file is complete or refused.** Every required field is present and not
//!   blank, `detected_at` is an RFC 3339 instant with an offset and not in the future, the
//!   contact point can be reached (an address, an e-mail or a phone), and unknown fields are
//!   refused (a typo never silently drops a sentence from every letter).

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use phivault_fhir::Id;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Largest input file read (a report of a million patients is about 300 MB; this is a
/// guard against a wrong path, not a limit on breaches).
const MAX_INPUT_BYTES: u64 = 1 << 30;

/// One affected patient of the report.
#[derive(Debug, Clone)]
pub(super) struct Affected {
    pub(super) id: Id,
    pub(super) first: OffsetDateTime,
    pub(super) last: OffsetDateTime,
    pub(super) accesses: u64,
    pub(super) by_resource_type: BTreeMap<String, u64>,
    /// Sensitivity-label codes (`PSY`, `HIV`, ...) and counts; empty when the report has none.
    pub(super) by_label: BTreeMap<String, u64>,
}

/// A checked breach report.
#[derive(Debug)]
pub(super) struct Report {
    pub(super) from: OffsetDateTime,
    pub(super) to: OffsetDateTime,
    pub(super) generated_at: OffsetDateTime,
    pub(super) patients: Vec<Affected>,
    /// Whether the report counts sensitivity labels (`by_label`) at all.
    pub(super) labels_counted: bool,
}

/// The report as written by `breach report --format json` (only the fields used here).
#[derive(Debug, Deserialize)]
struct ReportFile {
    from: String,
    to: String,
    generated_at: String,
    patients: Vec<PatientFile>,
}

#[derive(Debug, Deserialize)]
struct PatientFile {
    patient: String,
    first: String,
    last: String,
    accesses: u64,
    by_resource_type: BTreeMap<String, u64>,
    #[serde(default)]
    by_label: Option<BTreeMap<String, u64>>,
}

/// Reads `path` as text, refusing what is not a regular file of reasonable size.
fn read_text(path: &Path, flag: &str) -> Result<String> {
    let meta = std::fs::metadata(path).with_context(|| format!("{flag} {}", path.display()))?;
    if !meta.is_file() {
        bail!("{flag} {}: not a file", path.display());
    }
    if meta.len() > MAX_INPUT_BYTES {
        bail!("{flag} {}: larger than 1 GiB", path.display());
    }
    std::fs::read_to_string(path).with_context(|| format!("{flag} {}", path.display()))
}

/// An RFC 3339 instant, or an error naming `what`.
pub(super) fn instant(text: &str, what: &str) -> Result<OffsetDateTime> {
    OffsetDateTime::parse(text.trim(), &Rfc3339).map_err(|_| {
        anyhow!("{what} is not an RFC 3339 instant with an offset (such as 2026-12-01T09:30:00Z)")
    })
}

impl Report {
    /// Reads and checks the report file `path`.
    pub(super) fn load(path: &Path) -> Result<Report> {
        let text = read_text(path, "--report")?;
        Report::parse(&text).with_context(|| format!("--report {}", path.display()))
    }

    pub(super) fn parse(text: &str) -> Result<Report> {
        let file: ReportFile = serde_json::from_str(text).map_err(|e| {
            anyhow!(
                "not a JSON breach report (write one with `phivault breach report --format \
                 json --out FILE`): {e}"
            )
        })?;
        let mut seen = HashSet::new();
        let mut labels_counted = false;
        let mut patients = Vec::with_capacity(file.patients.len());
        for (i, p) in file.patients.into_iter().enumerate() {
            let id =
                Id::parse(&p.patient).map_err(|_| anyhow!("patient {}: not a FHIR id", i + 1))?;
            if !seen.insert(id.clone()) {
                bail!("Patient/{id} is listed twice");
            }
            let first = instant(&p.first, &format!("Patient/{id}: first"))?;
            let last = instant(&p.last, &format!("Patient/{id}: last"))?;
            if first > last {
                bail!("Patient/{id}: first is after last");
            }
            labels_counted |= p.by_label.is_some();
            patients.push(Affected {
                id,
                first,
                last,
                accesses: p.accesses,
                by_resource_type: p.by_resource_type,
                by_label: p.by_label.unwrap_or_default(),
            });
        }
        let from = instant(&file.from, "from")?;
        let to = instant(&file.to, "to")?;
        if from > to {
            bail!("from is after to");
        }
        Ok(Report {
            from,
            to,
            generated_at: instant(&file.generated_at, "generated_at")?,
            patients,
            labels_counted,
        })
    }
}

/// The contact point (data protection officer or other), as the letters and the summary
/// print it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Contact {
    pub(super) name: String,
    #[serde(default)]
    pub(super) address: Option<String>,
    #[serde(default)]
    pub(super) email: Option<String>,
    #[serde(default)]
    pub(super) phone: Option<String>,
}

/// The incident file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IncidentFile {
    description: String,
    /// A TOML datetime or a string.
    detected_at: toml::Value,
    likely_consequences: String,
    measures_taken: String,
    contact: Contact,
    #[serde(default)]
    controller: Option<String>,
    #[serde(default)]
    recommendations: Option<String>,
    #[serde(default)]
    delay_reasons: Option<String>,
}

/// A checked incident file.
#[derive(Debug, Clone)]
pub(super) struct Incident {
    /// What happened.
    pub(super) description: String,
    /// When the breach was detected (the 72-hour deadline counts from it).
    pub(super) detected_at: OffsetDateTime,
    pub(super) likely_consequences: String,
    pub(super) measures_taken: String,
    pub(super) contact: Contact,
    /// The controller (organisation).
    pub(super) controller: Option<String>,
    /// What patients can do.
    pub(super) recommendations: Option<String>,
    /// Why the authority is notified after the 72 hours (art. 33(1)).
    pub(super) delay_reasons: Option<String>,
}

/// `value` trimmed, or an error when it is blank.
fn required(value: String, field: &str) -> Result<String> {
    let value = value.trim();
    if value.is_empty() {
        bail!("{field} is empty");
    }
    Ok(value.to_owned())
}

/// `value` trimmed, `None` when absent or blank.
fn optional(value: Option<String>) -> Option<String> {
    value.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
}

impl Incident {
    /// Reads and checks the incident file `path`; `now` bounds `detected_at`.
    pub(super) fn load(path: &Path, now: OffsetDateTime) -> Result<Incident> {
        let text = read_text(path, "--incident")?;
        Incident::parse(&text, now).with_context(|| format!("--incident {}", path.display()))
    }

    pub(super) fn parse(text: &str, now: OffsetDateTime) -> Result<Incident> {
        let file: IncidentFile = toml::from_str(text).map_err(|e| match e.span() {
            Some(span) if span.start > 0 => {
                let line = text
                    .get(..span.start)
                    .map_or(1, |t| t.matches('\n').count() + 1);
                anyhow!("line {line}: {}", e.message())
            }
            _ => anyhow!("{}", e.message()),
        })?;
        let detected_at = match &file.detected_at {
            toml::Value::String(s) => instant(s, "detected_at")?,
            toml::Value::Datetime(d) => instant(&d.to_string(), "detected_at")?,
            _ => bail!("detected_at is not an RFC 3339 instant (such as 2026-12-01T09:30:00Z)"),
        };
        // A few minutes of clock difference between machines are not a mistake.
        if detected_at > now + time::Duration::minutes(5) {
            bail!("detected_at is in the future");
        }
        let contact = Contact {
            name: required(file.contact.name, "contact.name")?,
            address: optional(file.contact.address),
            email: optional(file.contact.email),
            phone: optional(file.contact.phone),
        };
        if contact.address.is_none() && contact.email.is_none() && contact.phone.is_none() {
            bail!("contact needs an address, an email or a phone (how to reach the contact point)");
        }
        Ok(Incident {
            description: required(file.description, "description")?,
            detected_at,
            likely_consequences: required(file.likely_consequences, "likely_consequences")?,
            measures_taken: required(file.measures_taken, "measures_taken")?,
            contact,
            controller: optional(file.controller),
            recommendations: optional(file.recommendations),
            delay_reasons: optional(file.delay_reasons),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const INCIDENT: &str = r#"
description = "A clinician's password was stolen."
detected_at = 2026-12-02T10:00:00Z
likely_consequences = "Others may know of your diagnoses."
measures_taken = "The account was disabled."
recommendations = "Watch for messages that mention your care."

[contact]
name = "Data protection officer"
email = "dpo@example.org"
"#;

    fn now() -> OffsetDateTime {
        instant("2026-12-03T00:00:00Z", "now").unwrap()
    }

    #[test]
    fn an_incident_file_is_read_and_checked() {
        let i = Incident::parse(INCIDENT, now()).unwrap();
        assert_eq!(i.detected_at, instant("2026-12-02T10:00:00Z", "t").unwrap());
        assert_eq!(i.contact.email.as_deref(), Some("dpo@example.org"));
        assert!(i.controller.is_none());
        // detected_at may be a string too.
        let quoted = INCIDENT.replace("2026-12-02T10:00:00Z", "\"2026-12-02T11:00:00+01:00\"");
        let j = Incident::parse(&quoted, now()).unwrap();
        assert_eq!(i.detected_at, j.detected_at);
    }

    #[test]
    fn incident_mistakes_are_named() {
        let cases = [
            (INCIDENT.replace("description =", "desc ="), "description"),
            (
                INCIDENT.replace("2026-12-02T10:00:00Z", "2026-12-02T10:00:00"),
                "detected_at",
            ),
            (
                INCIDENT.replace("2026-12-02T10:00:00Z", "\"yesterday\""),
                "detected_at",
            ),
            (
                INCIDENT.replace("2026-12-02T10:00:00Z", "2027-01-01T00:00:00Z"),
                "future",
            ),
            (
                INCIDENT.replace("\"The account was disabled.\"", "\"  \""),
                "measures_taken is empty",
            ),
            (
                INCIDENT.replace("email = \"dpo@example.org\"", ""),
                "contact",
            ),
            (INCIDENT.replace("[contact]", "[contacts]"), "contact"),
        ];
        for (text, wanted) in cases {
            let e = format!("{:#}", Incident::parse(&text, now()).unwrap_err());
            assert!(e.contains(wanted), "{wanted}: {e}");
        }
    }

    #[test]
    fn a_report_is_read_for_ids_times_and_counts() {
        let text = r#"{"about": "user mallory", "actors": ["u1"], "from": "2026-12-01T00:00:00Z",
            "to": "2026-12-02T00:00:00Z", "generated_at": "2026-12-02T01:00:00Z",
            "requests": 3, "refused": 0, "patients": [
            {"patient": "p1", "first": "2026-12-01T08:00:00.5Z", "last": "2026-12-01T09:00:00Z",
             "accesses": 3, "by_kind": {"read": 3}, "by_resource_type": {"Observation": 3}}]}"#;
        let r = Report::parse(text).unwrap();
        assert_eq!(r.patients.len(), 1);
        assert!(r.patients[0].by_label.is_empty());
        let labelled = text.replace(
            "\"by_resource_type\"",
            "\"by_label\": {\"PSY\": 1}, \"by_resource_type\"",
        );
        assert_eq!(
            Report::parse(&labelled).unwrap().patients[0].by_label["PSY"],
            1
        );
        for (bad, wanted) in [
            (text.replace("\"p1\"", "\"a/b\""), "not a FHIR id"),
            (text.replace("2026-12-01T08:00:00.5Z", "today"), "first"),
            (
                text.replace("\"patients\"", "\"people\""),
                "not a JSON breach report",
            ),
            (
                text.replace("2026-12-01T09:00:00Z", "2026-11-01T09:00:00Z"),
                "after",
            ),
        ] {
            let e = format!("{:#}", Report::parse(&bad).unwrap_err());
            assert!(e.contains(wanted), "{wanted}: {e}");
        }
    }
}
