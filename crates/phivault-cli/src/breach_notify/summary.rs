//! The notification to the supervisory authority (GDPR art. 33(3)): what the summary
//! templates are given, and the 72-hour deadline of art. 33(1).
//!
//! Invariants:
//! - **Counts, not people.** The summary gives the number of data subjects (patients in the
//!   report: notified, erased, not in the store) and of records reached (accesses, by
//!   resource type and, when the report has them, by sensitivity label); it never names a
//!   patient or carries an id.
//! - **The deadline is computed, not typed.** It is `detected_at` + 72 hours; when this
//!   notification is made later than that, the summary says so with the delay, and with the
//!   operator's `delay_reasons` (art. 33(1) requires them), or a marked gap when there are
//!   none.

use std::collections::BTreeMap;

use serde::Serialize;
use time::{Duration, OffsetDateTime};

use super::input::{Contact, Incident, Report};
use super::letters::{IncidentView, label_category, resource_category, when};

/// The time art. 33(1) allows between becoming aware of a breach and notifying.
pub(super) const NOTIFICATION_WINDOW: Duration = Duration::hours(72);

/// The deadline of the notification to the authority.
pub(super) fn deadline(detected_at: OffsetDateTime) -> OffsetDateTime {
    detected_at.saturating_add(NOTIFICATION_WINDOW)
}

/// How late a notification made at `at` is (`None` when on time).
pub(super) fn delay(detected_at: OffsetDateTime, at: OffsetDateTime) -> Option<Duration> {
    let late = at - deadline(detected_at);
    late.is_positive().then_some(late)
}

/// A duration in words: `2 days, 3 hours and 5 minutes` (whole minutes, rounded down; at
/// least `less than a minute`).
pub(super) fn in_words(d: Duration) -> String {
    let minutes = d.whole_minutes().max(0);
    let (days, hours, minutes) = (minutes / 1440, minutes / 60 % 24, minutes % 60);
    let unit = |n: i64, one: &str, many: &str| {
        (n > 0).then(|| format!("{n} {}", if n == 1 { one } else { many }))
    };
    let parts: Vec<String> = [
        unit(days, "day", "days"),
        unit(hours, "hour", "hours"),
        unit(minutes, "minute", "minutes"),
    ]
    .into_iter()
    .flatten()
    .collect();
    match parts.as_slice() {
        [] => "less than a minute".to_owned(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// The data subjects.
#[derive(Debug, Default, Serialize)]
pub(super) struct Subjects {
    /// Patients in the report.
    pub(super) total: usize,
    /// Patients a letter was made for.
    pub(super) notified: usize,
    /// Patients erased since (crypto-shredded): their records, name and address are gone.
    pub(super) erased: usize,
    /// Patients whose record is not in this store (disposed of).
    pub(super) unknown: usize,
}

/// One row of a count table.
#[derive(Debug, Serialize)]
struct Row {
    code: String,
    name: &'static str,
    count: u64,
}

/// The records reached.
#[derive(Debug, Serialize)]
struct Records {
    /// Requests that reached a patient's data, summed over patients.
    accesses: u64,
    by_resource_type: Vec<Row>,
    by_label: Vec<Row>,
    /// Whether the report counted sensitivity labels at all.
    labels_counted: bool,
}

/// The time line.
#[derive(Debug, Serialize)]
struct Timeline {
    detected_at: String,
    deadline: String,
    generated_at: String,
    access_from: String,
    access_to: String,
    report_generated_at: String,
    /// Whether this notification is later than the deadline.
    late: bool,
    /// By how much, in words (when late).
    delay: Option<String>,
    /// The operator's reasons for the delay (when late and given).
    delay_reasons: Option<String>,
}

/// Every value the summary templates are given.
#[derive(Debug, Serialize)]
pub(super) struct SummaryContext<'a> {
    controller: Option<&'a str>,
    incident: IncidentView<'a>,
    contact: &'a Contact,
    subjects: &'a Subjects,
    records: Records,
    timeline: Timeline,
}

impl<'a> SummaryContext<'a> {
    /// The summary of `report` for `incident`, made at `now`, with `subjects` counted.
    pub(super) fn new(
        report: &Report,
        incident: &'a Incident,
        subjects: &'a Subjects,
        now: OffsetDateTime,
    ) -> SummaryContext<'a> {
        let mut types: BTreeMap<&str, u64> = BTreeMap::new();
        let mut labels: BTreeMap<&str, u64> = BTreeMap::new();
        let mut accesses = 0u64;
        for p in &report.patients {
            accesses = accesses.saturating_add(p.accesses);
            for (t, n) in &p.by_resource_type {
                let e = types.entry(t.as_str()).or_default();
                *e = e.saturating_add(*n);
            }
            for (l, n) in &p.by_label {
                let e = labels.entry(l.as_str()).or_default();
                *e = e.saturating_add(*n);
            }
        }
        let rows = |m: BTreeMap<&str, u64>, name: fn(&str, usize) -> &'static str| -> Vec<Row> {
            m.into_iter()
                .filter(|(_, n)| *n > 0)
                .map(|(code, count)| Row {
                    code: code.to_owned(),
                    name: name(code, 0),
                    count,
                })
                .collect()
        };
        let late = delay(incident.detected_at, now);
        SummaryContext {
            controller: incident.controller.as_deref(),
            incident: IncidentView::of(incident),
            contact: &incident.contact,
            subjects,
            records: Records {
                accesses,
                by_resource_type: rows(types, resource_category),
                by_label: rows(labels, label_category),
                labels_counted: report.labels_counted,
            },
            timeline: Timeline {
                detected_at: when(incident.detected_at),
                deadline: when(deadline(incident.detected_at)),
                generated_at: when(now),
                access_from: when(report.from),
                access_to: when(report.to),
                report_generated_at: when(report.generated_at),
                late: late.is_some(),
                delay: late.map(in_words),
                delay_reasons: late.and(incident.delay_reasons.clone()),
            },
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::input::instant;
    use super::*;

    #[test]
    fn the_deadline_is_72_hours_after_detection() {
        let detected = instant("2026-12-01T09:30:00Z", "t").unwrap();
        assert_eq!(
            deadline(detected),
            instant("2026-12-04T09:30:00Z", "t").unwrap()
        );
        // Across a change of offset the instant is what counts.
        let local = instant("2026-03-28T10:00:00+01:00", "t").unwrap();
        assert_eq!(
            deadline(local),
            instant("2026-03-31T09:00:00Z", "t").unwrap()
        );
        let on_time = instant("2026-12-04T09:30:00Z", "t").unwrap();
        assert_eq!(delay(detected, on_time), None, "at the deadline is on time");
        let late = instant("2026-12-05T12:45:00Z", "t").unwrap();
        assert_eq!(
            delay(detected, late),
            Some(Duration::hours(27) + Duration::minutes(15))
        );
    }

    #[test]
    fn durations_read_as_words() {
        assert_eq!(in_words(Duration::seconds(30)), "less than a minute");
        assert_eq!(in_words(Duration::minutes(1)), "1 minute");
        assert_eq!(in_words(Duration::hours(5)), "5 hours");
        assert_eq!(
            in_words(Duration::hours(27) + Duration::minutes(15)),
            "1 day, 3 hours and 15 minutes"
        );
        assert_eq!(
            in_words(Duration::days(2) + Duration::minutes(1)),
            "2 days and 1 minute"
        );
    }
}
