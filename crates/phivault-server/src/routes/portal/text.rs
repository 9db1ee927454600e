//! Plain words for the portal: purposes of use, roles, kinds of records, dates and numbers as
//! a patient reads them. Pure functions; nothing here looks anything up.
//!
//! What holds: every function answers something readable for any input (an unknown code is
//! shown as itself, never dropped), and none invents a value: a date that cannot be read is
//! shown as written.

use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::{Date, Month, OffsetDateTime, UtcOffset};

/// A purpose of use (HL7 v3 ActReason code) in plain words.
pub(super) fn purpose_label(code: &str) -> String {
    let label = match code {
        "TREAT" => "Treatment",
        "ETREAT" => "Emergency treatment",
        "HPAYMT" => "Payment",
        "HOPERAT" => "Running the service",
        "HRESCH" => "Research",
        "PATRQT" => "Your own request",
        "PUBHLTH" => "Public health",
        "HMARKT" => "Marketing",
        "HSYSADMIN" => "System administration",
        "HTEST" => "Testing",
        "COC" => "Coordinating your care",
        "CAREMGT" => "Care management",
        "HACCRED" => "Accreditation",
        "HLEGAL" => "Legal requirements",
        "FAMRQT" => "Requested by your family",
        "PWATRNY" => "Requested by your power of attorney",
        "SUPNWK" => "Requested by your support network",
        "SYSDEV" => "Systems development",
        other => return other.to_owned(),
    };
    label.to_owned()
}

/// A role of this server (`clinician`) in plain words.
pub(super) fn role_label(role: &str) -> String {
    let label = match role {
        "clinician" => "Clinician",
        "patient" => "Patient",
        "admin" => "Administrator",
        "auditor" => "Auditor",
        "researcher" => "Researcher",
        "app" => "App",
        "" => "",
        other => return other.to_owned(),
    };
    label.to_owned()
}

/// Kinds of records: (FHIR type, one, several).
const KINDS: &[(&str, &str, &str)] = &[
    ("Patient", "your personal details", "personal details"),
    (
        "Observation",
        "a test result or measurement",
        "test results and measurements",
    ),
    ("Condition", "a condition", "conditions"),
    ("MedicationRequest", "a prescription", "prescriptions"),
    (
        "MedicationStatement",
        "a medication record",
        "medication records",
    ),
    (
        "MedicationAdministration",
        "a record of a medicine given",
        "records of medicines given",
    ),
    ("AllergyIntolerance", "an allergy", "allergies"),
    ("Immunization", "a vaccination", "vaccinations"),
    ("Procedure", "a procedure", "procedures"),
    ("Encounter", "a visit or stay", "visits and stays"),
    ("DiagnosticReport", "a report", "reports"),
    ("DocumentReference", "a document", "documents"),
    ("CarePlan", "a care plan", "care plans"),
    ("CareTeam", "a care team", "care teams"),
    ("Consent", "a consent record", "consent records"),
    ("Task", "a request", "requests"),
    ("Claim", "a billing claim", "billing claims"),
    (
        "ExplanationOfBenefit",
        "an insurance statement",
        "insurance statements",
    ),
    ("Coverage", "an insurance policy", "insurance policies"),
    ("ImagingStudy", "an imaging study", "imaging studies"),
    ("Device", "a device", "devices"),
    ("Goal", "a care goal", "care goals"),
    ("AuditEvent", "an access log entry", "access log entries"),
];

/// One record of `rtype` in words: "a test result or measurement".
pub(super) fn one_record(rtype: &str) -> String {
    match KINDS.iter().find(|(t, _, _)| *t == rtype) {
        Some((_, one, _)) => (*one).to_owned(),
        None => {
            let words = split_camel(rtype);
            let article = if words.starts_with(['a', 'e', 'i', 'o', 'u']) {
                "an"
            } else {
                "a"
            };
            format!("{article} {words} record")
        }
    }
}

/// Several records of `rtype` in words: "test results and measurements".
pub(super) fn many_records(rtype: &str) -> String {
    match KINDS.iter().find(|(t, _, _)| *t == rtype) {
        Some((_, _, many)) => (*many).to_owned(),
        None => format!("{} records", split_camel(rtype)),
    }
}

/// `MedicationAdministration` as `medication administration`.
fn split_camel(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 4);
    for (i, c) in s.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push(' ');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// A gender code (`female`) in plain words.
pub(super) fn gender_label(code: &str) -> String {
    match code {
        "female" => "Female".to_owned(),
        "male" => "Male".to_owned(),
        "other" => "Other".to_owned(),
        "unknown" | "" => "Not recorded".to_owned(),
        other => other.to_owned(),
    }
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

fn month_name(m: Month) -> &'static str {
    MONTHS[usize::from(u8::from(m)) - 1]
}

fn day_text(d: Date) -> String {
    format!("{} {} {}", d.day(), month_name(d.month()), d.year())
}

/// A FHIR date or dateTime as a day: "6 May 2024", "May 2024", "2024". A dateTime is read in
/// its own offset (the day the person who recorded it lived). Shown as written when it
/// cannot be read.
pub(super) fn date_text(s: &str) -> String {
    if s.contains('T') {
        return match OffsetDateTime::parse(s, &Rfc3339) {
            Ok(t) => day_text(t.date()),
            Err(_) => s.to_owned(),
        };
    }
    let parts: Vec<&str> = s.split('-').collect();
    let number = |p: &str| p.parse::<i32>().ok();
    let month = |p: &str| p.parse::<u8>().ok().and_then(|m| Month::try_from(m).ok());
    match parts.as_slice() {
        [y] if y.len() == 4 && number(y).is_some() => (*y).to_owned(),
        [y, m] if y.len() == 4 && number(y).is_some() => match month(m) {
            Some(m) => format!("{} {y}", month_name(m)),
            None => s.to_owned(),
        },
        [y, m, d] => {
            let date = number(y).zip(month(m)).and_then(|(y, m)| {
                let d = d.parse::<u8>().ok()?;
                Date::from_calendar_date(y, m, d).ok()
            });
            match date {
                Some(d) => day_text(d),
                None => s.to_owned(),
            }
        }
        _ => s.to_owned(),
    }
}

/// A FHIR instant as a day and time in UTC: "6 May 2024, 07:08 UTC". Shown as written when
/// it cannot be read.
pub(super) fn instant_text(s: &str) -> String {
    match OffsetDateTime::parse(s, &Rfc3339) {
        Ok(t) => moment_text(t),
        Err(_) => s.to_owned(),
    }
}

/// Unix seconds as a day and time in UTC ("" for 0 or less: never).
pub(super) fn unix_text(secs: i64) -> String {
    if secs <= 0 {
        return String::new();
    }
    match OffsetDateTime::from_unix_timestamp(secs) {
        Ok(t) => moment_text(t),
        Err(_) => String::new(),
    }
}

fn moment_text(t: OffsetDateTime) -> String {
    let t = t.to_offset(UtcOffset::UTC);
    format!(
        "{}, {:02}:{:02} UTC",
        day_text(t.date()),
        t.hour(),
        t.minute()
    )
}

/// The instant a FHIR date or dateTime starts at, as unix seconds (dates in UTC).
pub(super) fn unix_of(s: &str) -> Option<i64> {
    if s.contains('T') {
        return OffsetDateTime::parse(s, &Rfc3339)
            .ok()
            .map(OffsetDateTime::unix_timestamp);
    }
    let parts: Vec<&str> = s.split('-').collect();
    let (y, m, d) = match parts.as_slice() {
        [y] => (y.parse().ok()?, 1, 1),
        [y, m] => (y.parse().ok()?, m.parse().ok()?, 1),
        [y, m, d] => (y.parse().ok()?, m.parse().ok()?, d.parse().ok()?),
        _ => return None,
    };
    let date = Date::from_calendar_date(y, Month::try_from(m).ok()?, d).ok()?;
    Some(date.midnight().assume_utc().unix_timestamp())
}

/// A number as people write it: at most two decimals, no trailing zeros (`72`, `72.5`,
/// `0.25`).
pub(super) fn number_text(n: f64) -> String {
    if !n.is_finite() {
        return String::new();
    }
    let text = format!("{n:.2}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text == "-0" {
        "0".to_owned()
    } else {
        text.to_owned()
    }
}

/// The words of a CodeableConcept: its `text`, else the first coding's `display`, else its
/// `code`; "" when it has none.
pub(super) fn concept_text(concept: Option<&Value>) -> String {
    let Some(c) = concept else {
        return String::new();
    };
    if let Some(t) = c.get("text").and_then(Value::as_str).map(str::trim)
        && !t.is_empty()
    {
        return t.to_owned();
    }
    let codings = c.get("coding").and_then(Value::as_array);
    let from = |key: &str| {
        codings
            .into_iter()
            .flatten()
            .filter_map(|cd| cd.get(key).and_then(Value::as_str))
            .map(str::trim)
            .find(|s| !s.is_empty())
            .map(str::to_owned)
    };
    from("display").or_else(|| from("code")).unwrap_or_default()
}

/// The resources of a searchset Bundle (its `match` entries; outcome entries left out).
pub(super) fn resources(bundle: &Value) -> Vec<&Value> {
    bundle
        .get("entry")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|e| {
            e.pointer("/search/mode").and_then(Value::as_str) != Some("outcome")
                && e.pointer("/resource/resourceType").and_then(Value::as_str)
                    != Some("OperationOutcome")
        })
        .filter_map(|e| e.get("resource"))
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn purposes_roles_and_kinds_in_words() {
        assert_eq!(purpose_label("HRESCH"), "Research");
        assert_eq!(purpose_label("TREAT"), "Treatment");
        assert_eq!(purpose_label("XYZ"), "XYZ");
        assert_eq!(role_label("clinician"), "Clinician");
        assert_eq!(role_label("nurse"), "nurse");
        assert_eq!(one_record("Observation"), "a test result or measurement");
        assert_eq!(many_records("Condition"), "conditions");
        assert_eq!(
            one_record("MedicationDispense"),
            "a medication dispense record"
        );
        assert_eq!(one_record("Appointment"), "an appointment record");
        assert_eq!(many_records("NutritionOrder"), "nutrition order records");
        assert_eq!(gender_label("female"), "Female");
        assert_eq!(gender_label(""), "Not recorded");
    }

    #[test]
    fn dates_and_times_read_as_people_write_them() {
        assert_eq!(date_text("1970-01-02"), "2 January 1970");
        assert_eq!(date_text("2024-05"), "May 2024");
        assert_eq!(date_text("2024"), "2024");
        assert_eq!(date_text("2024-05-06T23:30:00-02:00"), "6 May 2024");
        assert_eq!(date_text("not a date"), "not a date");
        assert_eq!(date_text("2024-02-30"), "2024-02-30");
        assert_eq!(
            instant_text("2024-05-06T07:08:09.123Z"),
            "6 May 2024, 07:08 UTC"
        );
        assert_eq!(
            instant_text("2024-05-06T23:30:00-02:00"),
            "7 May 2024, 01:30 UTC"
        );
        assert_eq!(unix_text(0), "");
        assert_eq!(unix_text(1_715_000_000), "6 May 2024, 12:53 UTC");
        assert_eq!(unix_of("1970-01-02"), Some(86_400));
        assert_eq!(unix_of("1970-01-01T00:01:00Z"), Some(60));
        assert_eq!(unix_of("1971"), Some(31_536_000));
        assert_eq!(unix_of("soon"), None);
    }

    #[test]
    fn numbers_and_concepts() {
        assert_eq!(number_text(72.0), "72");
        assert_eq!(number_text(72.5), "72.5");
        assert_eq!(number_text(0.254), "0.25");
        assert_eq!(number_text(-0.001), "0");
        assert_eq!(number_text(f64::NAN), "");
        let c = json!({"coding": [{"code": "x"}, {"display": "Body weight"}]});
        assert_eq!(concept_text(Some(&c)), "Body weight");
        let c = json!({"text": " Asthma ", "coding": [{"display": "other"}]});
        assert_eq!(concept_text(Some(&c)), "Asthma");
        assert_eq!(concept_text(Some(&json!({"coding": [{"code": "1"}]}))), "1");
        assert_eq!(concept_text(None), "");
    }

    #[test]
    fn bundle_resources_leave_outcomes_out() {
        let b = json!({"entry": [
            {"resource": {"resourceType": "OperationOutcome"}, "search": {"mode": "outcome"}},
            {"resource": {"resourceType": "Condition", "id": "c1"}, "search": {"mode": "match"}},
        ]});
        let r = resources(&b);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0]["id"], "c1");
        assert!(resources(&json!({})).is_empty());
    }
}
