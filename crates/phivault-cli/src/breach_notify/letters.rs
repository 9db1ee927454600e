//! One patient's letter: what is read from their Patient record, the human names of the
//! categories of their data that were reached, and the values the letter templates see.
//!
//! Invariants:
//! - **Only what the patient needs.** A letter's values are the patient's own name, the
//!   incident as the operator described it, the window in which *their* data was reached,
//!   the categories of *their* data (resource types and sensitivity labels as human words,
//!   never counts of other patients, resource ids or the actor), the consequences, measures,
//!   recommendations and the contact point. The templates are given nothing else, so a
//!   template cannot print what it was not given.
//! - **From the Patient record only.** The name and the language come from the patient's
//!   current `Patient` resource, read by the caller as the operator.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value as Json;
use time::OffsetDateTime;
use time::macros::format_description;

use super::input::{Affected, Contact, Incident};

/// Languages of the category tables: English, Spanish, German (index into the rows).
const TABLE_LANGUAGES: [&str; 3] = ["en", "es", "de"];

/// Resource types as the kinds of data a patient recognises: (type, [en, es, de]).
#[rustfmt::skip]
const RESOURCE_CATEGORIES: &[(&str, [&str; 3])] = &[
    ("Patient", ["your name, date of birth and contact details", "su nombre, fecha de nacimiento y datos de contacto", "Ihr Name, Geburtsdatum und Ihre Kontaktdaten"]),
    ("Observation", ["test results and measurements", "resultados de pruebas y mediciones", "Untersuchungsergebnisse und Messwerte"]),
    ("DiagnosticReport", ["test reports", "informes de pruebas diagnósticas", "Befundberichte"]),
    ("Condition", ["diagnoses", "diagnósticos", "Diagnosen"]),
    ("MedicationRequest", ["medications", "medicamentos", "Medikamente"]),
    ("MedicationStatement", ["medications", "medicamentos", "Medikamente"]),
    ("MedicationAdministration", ["medications", "medicamentos", "Medikamente"]),
    ("MedicationDispense", ["medications", "medicamentos", "Medikamente"]),
    ("AllergyIntolerance", ["allergies", "alergias", "Allergien"]),
    ("Immunization", ["vaccinations", "vacunas", "Impfungen"]),
    ("Procedure", ["procedures and operations", "procedimientos e intervenciones", "Behandlungen und Eingriffe"]),
    ("Encounter", ["visits and hospital stays", "visitas y estancias hospitalarias", "Arztbesuche und Krankenhausaufenthalte"]),
    ("EpisodeOfCare", ["visits and hospital stays", "visitas y estancias hospitalarias", "Arztbesuche und Krankenhausaufenthalte"]),
    ("Appointment", ["appointments", "citas", "Termine"]),
    ("CarePlan", ["care plans", "planes de cuidados", "Behandlungspläne"]),
    ("Goal", ["care plans", "planes de cuidados", "Behandlungspläne"]),
    ("CareTeam", ["your care team", "su equipo de atención", "Ihr Behandlungsteam"]),
    ("DocumentReference", ["clinical documents", "documentos clínicos", "klinische Dokumente"]),
    ("Composition", ["clinical documents", "documentos clínicos", "klinische Dokumente"]),
    ("ImagingStudy", ["medical images", "imágenes médicas", "medizinische Bilder"]),
    ("Media", ["medical images", "imágenes médicas", "medizinische Bilder"]),
    ("FamilyMemberHistory", ["family medical history", "antecedentes familiares", "Familienanamnese"]),
    ("ServiceRequest", ["referrals and orders", "solicitudes y derivaciones", "Überweisungen und Aufträge"]),
    ("Specimen", ["laboratory samples", "muestras de laboratorio", "Laborproben"]),
    ("RiskAssessment", ["risk assessments", "evaluaciones de riesgo", "Risikobewertungen"]),
    ("QuestionnaireResponse", ["questionnaire answers", "respuestas a cuestionarios", "Antworten auf Fragebögen"]),
    ("Communication", ["messages about your care", "mensajes sobre su atención", "Nachrichten zu Ihrer Behandlung"]),
    ("CommunicationRequest", ["messages about your care", "mensajes sobre su atención", "Nachrichten zu Ihrer Behandlung"]),
    ("Consent", ["your consents", "sus consentimientos", "Ihre Einwilligungen"]),
    ("Device", ["medical devices", "dispositivos médicos", "Medizinprodukte"]),
    ("Coverage", ["insurance and billing", "seguro y facturación", "Versicherungs- und Abrechnungsdaten"]),
    ("Claim", ["insurance and billing", "seguro y facturación", "Versicherungs- und Abrechnungsdaten"]),
    ("ExplanationOfBenefit", ["insurance and billing", "seguro y facturación", "Versicherungs- und Abrechnungsdaten"]),
    ("Account", ["insurance and billing", "seguro y facturación", "Versicherungs- und Abrechnungsdaten"]),
    ("Invoice", ["insurance and billing", "seguro y facturación", "Versicherungs- und Abrechnungsdaten"]),
];

/// A resource type not in the table.
const OTHER_RECORDS: [&str; 3] = [
    "other health records",
    "otros datos de salud",
    "weitere Gesundheitsdaten",
];

/// Sensitivity labels (HL7 v3 ActCode information sensitivity codes, and the
/// v3-Confidentiality codes R and V) as the kinds of data they mark: (codes, [en, es, de]).
#[rustfmt::skip]
const LABEL_CATEGORIES: &[(&[&str], [&str; 3])] = &[
    (&["PSY", "MH", "BH"], ["mental health", "salud mental", "psychische Gesundheit"]),
    (&["PSYTHPN"], ["psychotherapy notes", "notas de psicoterapia", "Psychotherapie-Aufzeichnungen"]),
    (&["ETH", "SUD", "ETHUD", "OPIOIDUD"], ["substance use", "consumo de sustancias", "Substanzkonsum"]),
    (&["HIV"], ["HIV status", "estado serológico respecto al VIH", "HIV-Status"]),
    (&["STD"], ["sexually transmitted infections", "infecciones de transmisión sexual", "sexuell übertragbare Infektionen"]),
    (&["SDV"], ["sexual assault, abuse or domestic violence", "agresión sexual, abuso o violencia doméstica", "sexuelle Übergriffe, Missbrauch oder häusliche Gewalt"]),
    (&["SEX"], ["sexuality and reproductive health", "sexualidad y salud reproductiva", "Sexualität und reproduktive Gesundheit"]),
    (&["GDIS"], ["genetic conditions", "enfermedades genéticas", "genetische Erkrankungen"]),
    (&["SCA"], ["sickle cell disease", "anemia falciforme", "Sichelzellkrankheit"]),
    (&["MST"], ["military sexual trauma", "trauma sexual en el servicio militar", "sexuelles Trauma im Militärdienst"]),
    (&["R", "V"], ["information marked as restricted", "información de acceso restringido", "als vertraulich eingestufte Informationen"]),
];

/// A label not in the table.
const OTHER_SENSITIVE: [&str; 3] = [
    "other sensitive information",
    "otra información sensible",
    "weitere sensible Informationen",
];

/// The column of the tables for a template language (`es`, `de-at`, ...); English otherwise.
pub(super) fn column(language: Option<&str>) -> usize {
    let primary = language
        .and_then(|l| l.split('-').next())
        .map(str::to_ascii_lowercase);
    TABLE_LANGUAGES
        .iter()
        .position(|l| Some(*l) == primary.as_deref())
        .unwrap_or(0)
}

/// The human name of a resource type, in table column `col`.
pub(super) fn resource_category(rtype: &str, col: usize) -> &'static str {
    let row = RESOURCE_CATEGORIES
        .iter()
        .find(|(t, _)| *t == rtype)
        .map_or(&OTHER_RECORDS, |(_, names)| names);
    row.get(col).copied().unwrap_or(row[0])
}

/// The human name of a sensitivity label code, in table column `col`.
pub(super) fn label_category(code: &str, col: usize) -> &'static str {
    let row = LABEL_CATEGORIES
        .iter()
        .find(|(codes, _)| codes.contains(&code))
        .map_or(&OTHER_SENSITIVE, |(_, names)| names);
    row.get(col).copied().unwrap_or(row[0])
}

/// Where `rtype` stands in the table (the patient's identity first, then clinical data, then
/// billing); types not in the table come last.
fn table_position(rtype: &str) -> usize {
    RESOURCE_CATEGORIES
        .iter()
        .position(|(t, _)| *t == rtype)
        .unwrap_or(RESOURCE_CATEGORIES.len())
}

/// Distinct names of `codes` in the order they come, without repeats.
fn distinct<'a>(
    codes: impl Iterator<Item = &'a String>,
    name: impl Fn(&str) -> &'static str,
) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for code in codes {
        let n = name(code);
        if !out.contains(&n) {
            out.push(n);
        }
    }
    out
}

/// What the letter needs from the Patient record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct PatientFacts {
    pub(super) given: String,
    pub(super) family: String,
    /// Given names then family name; `name.text` when neither is there; may be empty.
    pub(super) name: String,
    /// `communication.language.coding[0].code` of the preferred communication, else of the
    /// first.
    pub(super) language: Option<String>,
}

/// The name to address the patient by: the `official` name, else `usual`, else the first
/// that is not `old`.
fn chosen_name(body: &Json) -> Option<&Json> {
    let names = body.get("name")?.as_array()?;
    let with_use = |u: &str| {
        names
            .iter()
            .find(|n| n.get("use").and_then(Json::as_str) == Some(u))
    };
    with_use("official")
        .or_else(|| with_use("usual"))
        .or_else(|| {
            names
                .iter()
                .find(|n| n.get("use").and_then(Json::as_str) != Some("old"))
        })
        .or_else(|| names.first())
}

/// The facts of a Patient resource `body`.
pub(super) fn patient_facts(body: &Json) -> PatientFacts {
    let name = chosen_name(body);
    fn text(v: Option<&Json>) -> &str {
        v.and_then(Json::as_str).map(str::trim).unwrap_or_default()
    }
    let given: Vec<&str> = name
        .and_then(|n| n.get("given"))
        .and_then(Json::as_array)
        .map(|g| g.iter().filter_map(Json::as_str).map(str::trim).collect())
        .unwrap_or_default();
    let given = given.join(" ");
    let family = text(name.and_then(|n| n.get("family"))).to_owned();
    let mut full = format!("{given} {family}").trim().to_owned();
    if full.is_empty() {
        full = text(name.and_then(|n| n.get("text"))).to_owned();
    }
    let communications = body
        .get("communication")
        .and_then(Json::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let communication = communications
        .iter()
        .find(|c| c.get("preferred").and_then(Json::as_bool) == Some(true))
        .or_else(|| communications.first());
    let language = communication
        .and_then(|c| c.pointer("/language/coding/0/code"))
        .and_then(Json::as_str)
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(str::to_owned);
    PatientFacts {
        given,
        family,
        name: full,
        language,
    }
}

/// An instant as letters and the summary print it: `2026-12-01 08:15 UTC`.
pub(super) fn when(t: OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC)
        .format(format_description!(
            "[year]-[month]-[day] [hour]:[minute] UTC"
        ))
        .unwrap_or_default()
}

/// A day as letters print it: `2026-12-01`.
pub(super) fn day(t: OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC)
        .format(format_description!("[year]-[month]-[day]"))
        .unwrap_or_default()
}

/// The incident as templates see it.
#[derive(Debug, Serialize)]
pub(super) struct IncidentView<'a> {
    pub(super) description: &'a str,
    pub(super) detected_at: String,
    pub(super) likely_consequences: &'a str,
    pub(super) measures_taken: &'a str,
    pub(super) recommendations: Option<&'a str>,
}

impl<'a> IncidentView<'a> {
    pub(super) fn of(incident: &'a Incident) -> IncidentView<'a> {
        IncidentView {
            description: &incident.description,
            detected_at: when(incident.detected_at),
            likely_consequences: &incident.likely_consequences,
            measures_taken: &incident.measures_taken,
            recommendations: incident.recommendations.as_deref(),
        }
    }
}

/// The patient as a letter sees them.
#[derive(Debug, Serialize)]
struct PatientView<'a> {
    name: &'a str,
    given: &'a str,
    family: &'a str,
}

/// When their data was reached.
#[derive(Debug, Serialize)]
struct AccessView {
    first: String,
    last: String,
    first_day: String,
    last_day: String,
    /// Requests that reached their data.
    count: u64,
}

/// Every value a letter template is given.
#[derive(Debug, Serialize)]
pub(super) struct LetterContext<'a> {
    /// The template's language (`es`), none for the default template.
    language: Option<&'a str>,
    patient: PatientView<'a>,
    controller: Option<&'a str>,
    incident: IncidentView<'a>,
    contact: &'a Contact,
    access: AccessView,
    /// The kinds of their data that were reached, as words, in the letter's language.
    categories: Vec<&'static str>,
    /// The sensitive kinds (from labels), as words; empty when the report has no labels.
    sensitive: Vec<&'static str>,
    /// The same as codes (`Observation`, `PSY`), for templates in other languages.
    resource_types: Vec<&'a str>,
    labels: Vec<&'a str>,
    /// The day the letter was made.
    date: String,
}

impl<'a> LetterContext<'a> {
    /// The values of `affected`'s letter in `language` (the template's).
    pub(super) fn new(
        language: Option<&'a str>,
        facts: &'a PatientFacts,
        affected: &'a Affected,
        incident: &'a Incident,
        now: OffsetDateTime,
    ) -> LetterContext<'a> {
        let col = column(language);
        let mut types: Vec<&String> = affected
            .by_resource_type
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(t, _)| t)
            .collect();
        types.sort_by_key(|t| (table_position(t), t.as_str()));
        let labels: BTreeMap<&String, &u64> =
            affected.by_label.iter().filter(|(_, n)| **n > 0).collect();
        LetterContext {
            language,
            patient: PatientView {
                name: &facts.name,
                given: &facts.given,
                family: &facts.family,
            },
            controller: incident.controller.as_deref(),
            incident: IncidentView::of(incident),
            contact: &incident.contact,
            access: AccessView {
                first: when(affected.first),
                last: when(affected.last),
                first_day: day(affected.first),
                last_day: day(affected.last),
                count: affected.accesses,
            },
            categories: distinct(types.iter().copied(), |t| resource_category(t, col)),
            sensitive: distinct(labels.keys().copied(), |c| label_category(c, col)),
            resource_types: types.iter().map(|t| t.as_str()).collect(),
            labels: labels.keys().map(|c| c.as_str()).collect(),
            date: day(now),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_name_and_language_come_from_the_patient() {
        let body = json!({
            "resourceType": "Patient",
            "name": [
                {"use": "old", "family": "Former", "given": ["Ana"]},
                {"use": "official", "family": "Núñez", "given": ["Ana", "María"]}
            ],
            "communication": [
                {"language": {"coding": [{"code": "en"}]}},
                {"language": {"coding": [{"code": "es-MX"}]}, "preferred": true}
            ]
        });
        let f = patient_facts(&body);
        assert_eq!(f.name, "Ana María Núñez");
        assert_eq!(f.family, "Núñez");
        assert_eq!(f.language.as_deref(), Some("es-MX"));

        let first = json!({"communication": [{"language": {"coding": [{"code": "de"}]}},
                                             {"language": {"coding": [{"code": "fr"}]}}],
                           "name": [{"text": "Dr. K"}]});
        let f = patient_facts(&first);
        assert_eq!(f.language.as_deref(), Some("de"));
        assert_eq!(f.name, "Dr. K");
        assert_eq!(patient_facts(&json!({})), PatientFacts::default());
        let odd = json!({"name": "x", "communication": {"language": 1}});
        assert_eq!(patient_facts(&odd), PatientFacts::default());
    }

    #[test]
    fn categories_are_words_in_the_letter_language() {
        assert_eq!(
            resource_category("Observation", 0),
            "test results and measurements"
        );
        assert_eq!(
            resource_category("Condition", column(Some("es"))),
            "diagnósticos"
        );
        assert_eq!(
            resource_category("MedicationRequest", column(Some("de-AT"))),
            "Medikamente"
        );
        assert_eq!(
            resource_category("Basic", column(Some("fr"))),
            "other health records"
        );
        assert_eq!(label_category("PSY", 0), "mental health");
        assert_eq!(label_category("HIV", 0), "HIV status");
        assert_eq!(label_category("ETH", 0), "substance use");
        assert_eq!(
            label_category("OPIOIDUD", column(Some("es"))),
            "consumo de sustancias"
        );
        assert_eq!(label_category("XYZ", 0), "other sensitive information");
        let codes: Vec<String> = ["MedicationRequest", "MedicationStatement", "Condition"]
            .map(String::from)
            .to_vec();
        assert_eq!(
            distinct(codes.iter(), |t| resource_category(t, 0)),
            ["medications", "diagnoses"]
        );
    }

    #[test]
    fn instants_print_in_utc() {
        let t = super::super::input::instant("2026-12-01T09:15:30+01:00", "t").unwrap();
        assert_eq!(when(t), "2026-12-01 08:15 UTC");
        assert_eq!(day(t), "2026-12-01");
    }
}
