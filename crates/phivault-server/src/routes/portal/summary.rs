//! `GET /portal`: the patient's record at a glance: who they are, active conditions, current
//! medications, recent results, and one vital sign over time as a line chart with the same
//! numbers in a table beside it (for screen readers, and for anyone who prefers numbers).
//!
//! The chart is drawn by the template from numbers computed here ([`chart`]): the
//! `<polyline>` points and the dots are formatted numbers only, never text from the record.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Serialize;
use serde_json::{Value, json};

use super::requests::target_of;
use super::text::{concept_text, date_text, gender_label, number_text, resources, unix_of};
use super::{Connect, Visit, not_shown, render, visit};
use crate::AppState;
use crate::edge::AuditSlot;

/// The vital signs the chart may show, in order of preference (LOINC code, name). The first
/// with at least two readings is drawn.
const VITALS: &[(&str, &str)] = &[
    ("29463-7", "Body weight"),
    ("8867-4", "Heart rate"),
    ("39156-5", "Body mass index"),
    ("8480-6", "Systolic blood pressure"),
    ("8310-5", "Body temperature"),
    ("9279-1", "Breathing rate"),
    ("8302-2", "Body height"),
];

/// Readings drawn at most (the latest).
const MAX_POINTS: usize = 60;
/// Results listed under "Recent results".
const RECENT: usize = 10;

/// The chart's drawing area (SVG user units) and margins.
const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 260.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 20.0;
const BOTTOM: f64 = 40.0;

/// `GET /portal`.
pub(super) async fn page(
    State(state): State<AppState>,
    slot: AuditSlot,
    connect: Connect,
    headers: HeaderMap,
) -> Response {
    let v = match visit(&state, &slot, connect, &headers, "/portal").await {
        Ok(v) => v,
        Err(r) => return r,
    };
    match gather(&v).await {
        Ok(context) => render(
            &state,
            &headers,
            StatusCode::OK,
            "portal/summary.html",
            "summary",
            context,
        ),
        Err(status) => not_shown(&state, &headers, "summary", status),
    }
}

/// The page's values, read as the patient.
async fn gather(v: &Visit<'_>) -> Result<Value, StatusCode> {
    let id = &v.patient;
    let patient = v.json(&format!("/fhir/Patient/{id}")).await?;
    let conditions = v
        .json(&format!(
            "/fhir/Condition?patient=Patient/{id}&clinical-status=active&_count=100"
        ))
        .await?;
    let medications = v
        .json(&format!(
            "/fhir/MedicationRequest?patient=Patient/{id}&status=active&_count=100"
        ))
        .await?;
    let recent = v
        .json(&format!(
            "/fhir/Observation?patient=Patient/{id}&_sort=-date&_count={RECENT}"
        ))
        .await?;
    let vitals = v
        .json(&format!(
            "/fhir/Observation?patient=Patient/{id}&category=vital-signs&_sort=-date&_count=500"
        ))
        .await?;
    let chart = pick_vital(&resources(&vitals)).map(|(name, unit, samples)| {
        let rows: Vec<Value> = samples
            .iter()
            .rev()
            .map(|s| json!({ "date": date_text(&s.when), "value": number_text(s.value) }))
            .collect();
        json!({
            "name": name,
            "unit": unit,
            "geometry": chart(&samples),
            "rows": rows,
        })
    });
    Ok(json!({
        "patient": person(&patient),
        "conditions": resources(&conditions).into_iter().map(condition).collect::<Vec<_>>(),
        "medications": resources(&medications).into_iter().map(medication).collect::<Vec<_>>(),
        "observations": resources(&recent).into_iter().map(observation).collect::<Vec<_>>(),
        "chart": chart,
    }))
}

/// Name, birth date and gender of a Patient.
fn person(p: &Value) -> Value {
    json!({
        "name": human_name(p.pointer("/name/0")),
        "birth_date": p.get("birthDate").and_then(Value::as_str).map(date_text).unwrap_or_default(),
        "gender": gender_label(p.get("gender").and_then(Value::as_str).unwrap_or("")),
        "fix": fix_link(p),
    })
}

/// A HumanName as written: its `text`, else prefix, given names and family name.
fn human_name(name: Option<&Value>) -> String {
    let Some(name) = name else {
        return String::new();
    };
    if let Some(t) = name.get("text").and_then(Value::as_str)
        && !t.trim().is_empty()
    {
        return t.trim().to_owned();
    }
    let mut parts: Vec<&str> = Vec::new();
    for key in ["prefix", "given"] {
        if let Some(list) = name.get(key).and_then(Value::as_array) {
            parts.extend(list.iter().filter_map(Value::as_str));
        }
    }
    if let Some(f) = name.get("family").and_then(Value::as_str) {
        parts.push(f);
    }
    parts
        .iter()
        .map(|p| p.trim())
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The first date of `keys` found on `r`, as a day.
fn first_date(r: &Value, keys: &[&str]) -> String {
    keys.iter()
        .find_map(|k| r.pointer(k).and_then(Value::as_str))
        .map(date_text)
        .unwrap_or_default()
}

/// The `Type/id` of a resource, "" without an id.
fn reference(r: &Value) -> String {
    match (
        r.get("resourceType").and_then(Value::as_str),
        r.get("id").and_then(Value::as_str),
    ) {
        (Some(t), Some(id)) => format!("{t}/{id}"),
        _ => String::new(),
    }
}

/// The "ask for a correction" link of a resource: the requests page about it ("" when the
/// resource has no `Type/id` a request can name; such a link needs no escaping in a URL).
pub(super) fn fix_link(r: &Value) -> String {
    let reference = reference(r);
    if target_of(&reference).is_some() {
        format!("/portal/requests?target={reference}")
    } else {
        String::new()
    }
}

fn condition(c: &Value) -> Value {
    json!({
        "name": concept_text(c.get("code")),
        "since": first_date(c, &["/onsetDateTime", "/onsetPeriod/start", "/recordedDate"]),
        "fix": fix_link(c),
    })
}

fn medication(m: &Value) -> Value {
    let name = match concept_text(m.get("medicationCodeableConcept")) {
        n if !n.is_empty() => n,
        _ => m
            .pointer("/medicationReference/display")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned(),
    };
    json!({
        "name": name,
        "dosage": m.pointer("/dosageInstruction/0/text").and_then(Value::as_str).unwrap_or(""),
        "since": first_date(m, &["/authoredOn"]),
        "fix": fix_link(m),
    })
}

fn observation(o: &Value) -> Value {
    json!({
        "name": concept_text(o.get("code")),
        "value": value_text(o),
        "date": first_date(o, &["/effectiveDateTime", "/effectivePeriod/start", "/effectiveInstant", "/issued"]),
        "fix": fix_link(o),
    })
}

/// A quantity as "72.5 kg".
fn quantity_text(q: &Value) -> Option<String> {
    let value = q.get("value").and_then(Value::as_f64)?;
    let unit = q
        .get("unit")
        .and_then(Value::as_str)
        .or_else(|| q.get("code").and_then(Value::as_str))
        .unwrap_or("");
    Some(format!("{} {unit}", number_text(value)).trim().to_owned())
}

/// The value of an Observation or of one of its components, in words; "" when none.
fn own_value(o: &Value) -> String {
    if let Some(q) = o.get("valueQuantity").and_then(quantity_text) {
        return q;
    }
    if let Some(s) = o.get("valueString").and_then(Value::as_str) {
        return s.to_owned();
    }
    if let Some(c) = o.get("valueCodeableConcept") {
        return concept_text(Some(c));
    }
    if let Some(b) = o.get("valueBoolean").and_then(Value::as_bool) {
        return if b { "Yes" } else { "No" }.to_owned();
    }
    if let Some(n) = o.get("valueInteger").and_then(Value::as_i64) {
        return n.to_string();
    }
    String::new()
}

/// The value of an Observation in words, its components joined ("Systolic blood pressure
/// 120 mmHg; Diastolic blood pressure 80 mmHg") when it has no value of its own.
pub(super) fn value_text(o: &Value) -> String {
    let own = own_value(o);
    if !own.is_empty() {
        return own;
    }
    o.get("component")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| {
            let v = own_value(c);
            (!v.is_empty()).then(|| format!("{} {v}", concept_text(c.get("code"))))
        })
        .map(|s| s.trim().to_owned())
        .collect::<Vec<_>>()
        .join("; ")
}

/// One reading of a vital sign.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Sample {
    /// When it was taken (a FHIR date or dateTime).
    pub(super) when: String,
    /// Unix seconds of `when`.
    pub(super) at: i64,
    /// The number.
    pub(super) value: f64,
}

/// Whether a CodeableConcept holds the LOINC `code`.
fn has_loinc(concept: Option<&Value>, code: &str) -> bool {
    concept
        .and_then(|c| c.get("coding"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|c| {
            c.get("code").and_then(Value::as_str) == Some(code)
                && c.get("system")
                    .and_then(Value::as_str)
                    .is_none_or(|s| s == "http://loinc.org")
        })
}

/// The vital sign to draw among `observations`: (name, unit, the latest readings in time
/// order). The first of [`VITALS`] with at least two numeric readings; `None` without one.
pub(super) fn pick_vital(observations: &[&Value]) -> Option<(String, String, Vec<Sample>)> {
    for (code, name) in VITALS {
        let mut unit = String::new();
        let mut samples: Vec<Sample> = Vec::new();
        for o in observations {
            if !has_loinc(o.get("code"), code) {
                continue;
            }
            let Some(value) = o
                .pointer("/valueQuantity/value")
                .and_then(Value::as_f64)
                .filter(|v| v.is_finite())
            else {
                continue;
            };
            let when = [
                "/effectiveDateTime",
                "/effectivePeriod/start",
                "/effectiveInstant",
            ]
            .iter()
            .find_map(|k| o.pointer(k).and_then(Value::as_str));
            let Some((when, at)) = when.and_then(|w| Some((w.to_owned(), unix_of(w)?))) else {
                continue;
            };
            if unit.is_empty() {
                unit = o
                    .pointer("/valueQuantity/unit")
                    .or_else(|| o.pointer("/valueQuantity/code"))
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned();
            }
            samples.push(Sample { when, at, value });
        }
        if samples.len() >= 2 {
            samples.sort_by(|a, b| a.at.cmp(&b.at).then(a.when.cmp(&b.when)));
            let skip = samples.len().saturating_sub(MAX_POINTS);
            samples.drain(..skip);
            return Some(((*name).to_owned(), unit, samples));
        }
    }
    None
}

/// A label on an axis: where (SVG user units, as text) and the words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(super) struct Label {
    /// Its x.
    pub(super) x: String,
    /// Its y (the text's baseline).
    pub(super) y: String,
    /// `start` or `end`.
    pub(super) anchor: &'static str,
    /// The words.
    pub(super) text: String,
}

/// A point of the chart (SVG user units, as text).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(super) struct Point {
    pub(super) x: String,
    pub(super) y: String,
}

/// The chart of some readings, as the template draws it. Every number is text already:
/// the template does no arithmetic, and JSON numbers (kept as written, arbitrary precision)
/// would not reach it as numbers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(super) struct Geometry {
    /// The `viewBox` width and height.
    pub(super) width: String,
    pub(super) height: String,
    /// The plot area's edges.
    pub(super) left: String,
    pub(super) right: String,
    pub(super) top: String,
    pub(super) bottom: String,
    /// The `points` of the `<polyline>`: `x,y` pairs separated by spaces, numbers only.
    pub(super) points: String,
    /// The same points, for the dots.
    pub(super) dots: Vec<Point>,
    /// The lowest and highest value, left of the plot.
    pub(super) y_labels: Vec<Label>,
    /// The first and last day, under the plot.
    pub(super) x_labels: Vec<Label>,
}

/// A coordinate rounded to one decimal, as text: `64`, `120.5`.
fn number(v: f64) -> String {
    let text = format!("{:.1}", (v * 10.0).round() / 10.0);
    text.strip_suffix(".0").unwrap_or(&text).to_owned()
}

/// The chart of `samples` (in time order): x by time (evenly spaced when all share one
/// time), y by value (the range's middle when all are equal), higher values higher up.
pub(super) fn chart(samples: &[Sample]) -> Geometry {
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let (t0, t1) = samples.iter().fold((i64::MAX, i64::MIN), |(lo, hi), s| {
        (lo.min(s.at), hi.max(s.at))
    });
    let (v0, v1) = samples.iter().fold((f64::MAX, f64::MIN), |(lo, hi), s| {
        (lo.min(s.value), hi.max(s.value))
    });
    let n = samples.len();
    let dots: Vec<Point> = samples
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let fx = if t1 > t0 {
                // Seconds over decades fit an f64 exactly enough for a drawing.
                (s.at - t0) as f64 / (t1 - t0) as f64
            } else if n > 1 {
                i as f64 / (n - 1) as f64
            } else {
                0.5
            };
            let fy = if v1 > v0 {
                (s.value - v0) / (v1 - v0)
            } else {
                0.5
            };
            Point {
                x: number(LEFT + fx * plot_w),
                y: number(TOP + (1.0 - fy) * plot_h),
            }
        })
        .collect();
    let points = dots
        .iter()
        .map(|p| format!("{},{}", p.x, p.y))
        .collect::<Vec<_>>()
        .join(" ");
    let mut y_labels = Vec::new();
    let mut x_labels = Vec::new();
    // Labels sit left of the plot (values) and under it (days); +4 centres a 14px text on
    // its line.
    let value_label = |at: f64, v: f64| Label {
        x: number(LEFT - 8.0),
        y: number(at + 4.0),
        anchor: "end",
        text: number_text(v),
    };
    let day_label = |x: f64, anchor, when: &str| Label {
        x: number(x),
        y: number(HEIGHT - BOTTOM + 24.0),
        anchor,
        text: date_text(when),
    };
    if let (Some(first), Some(last)) = (samples.first(), samples.last()) {
        if v1 > v0 {
            y_labels.push(value_label(TOP, v1));
            y_labels.push(value_label(TOP + plot_h, v0));
        } else {
            y_labels.push(value_label(TOP + plot_h / 2.0, v0));
        }
        x_labels.push(day_label(LEFT, "start", &first.when));
        if date_text(&last.when) != date_text(&first.when) {
            x_labels.push(day_label(WIDTH - RIGHT, "end", &last.when));
        }
    }
    Geometry {
        width: number(WIDTH),
        height: number(HEIGHT),
        left: number(LEFT),
        right: number(WIDTH - RIGHT),
        top: number(TOP),
        bottom: number(HEIGHT - BOTTOM),
        points,
        dots,
        y_labels,
        x_labels,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn weight(when: &str, kg: f64) -> Value {
        json!({
            "resourceType": "Observation",
            "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
            "effectiveDateTime": when,
            "valueQuantity": {"value": kg, "unit": "kg"},
        })
    }

    #[test]
    fn the_chart_maps_time_to_x_and_value_to_y() {
        let samples = vec![
            Sample {
                when: "2024-01-01".to_owned(),
                at: 0,
                value: 70.0,
            },
            Sample {
                when: "2024-01-02".to_owned(),
                at: 50,
                value: 80.0,
            },
            Sample {
                when: "2024-01-03".to_owned(),
                at: 100,
                value: 75.0,
            },
        ];
        let g = chart(&samples);
        // x: left edge, middle, right edge; y: bottom for the lowest, top for the highest.
        assert_eq!(g.points, "64,220 342,20 620,120");
        assert_eq!(g.dots.len(), 3);
        assert_eq!(
            g.dots[1],
            Point {
                x: "342".to_owned(),
                y: "20".to_owned()
            }
        );
        assert_eq!(
            (g.y_labels[0].x.as_str(), g.y_labels[0].y.as_str()),
            ("56", "24")
        );
        assert_eq!(g.x_labels[1].anchor, "end");
        assert_eq!(g.x_labels[1].y, "244");
        assert_eq!(g.y_labels[0].text, "80");
        assert_eq!(g.y_labels[1].text, "70");
        assert_eq!(g.x_labels[0].text, "1 January 2024");
        assert_eq!(g.x_labels[1].text, "3 January 2024");
        // The points are numbers, commas and spaces only.
        assert!(
            g.points
                .chars()
                .all(|c| c.is_ascii_digit() || " ,.".contains(c))
        );
    }

    #[test]
    fn equal_times_spread_and_equal_values_sit_in_the_middle() {
        let s = |v| Sample {
            when: "2024-01-01".to_owned(),
            at: 7,
            value: v,
        };
        let g = chart(&[s(5.0), s(5.0)]);
        assert_eq!(g.points, "64,120 620,120");
        assert_eq!(g.y_labels.len(), 1);
        assert_eq!(g.x_labels.len(), 1);
        let g = chart(&[s(1.0)]);
        assert_eq!(g.points, "342,120");
    }

    #[test]
    fn the_first_vital_with_two_readings_is_picked_in_time_order() {
        let hr = json!({
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "effectiveDateTime": "2024-03-01T10:00:00Z",
            "valueQuantity": {"value": 61, "unit": "/min"},
        });
        let hr2 = json!({
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "effectiveDateTime": "2024-03-02T10:00:00Z",
            "valueQuantity": {"value": 64, "unit": "/min"},
        });
        let one_weight = weight("2024-01-01", 70.0);
        let list = [&hr2, &one_weight, &hr];
        let (name, unit, samples) = pick_vital(&list).unwrap();
        assert_eq!((name.as_str(), unit.as_str()), ("Heart rate", "/min"));
        assert_eq!(samples.len(), 2);
        assert!(samples[0].at < samples[1].at);
        let w2 = weight("2023-12-01", 71.5);
        let list = [&hr2, &one_weight, &hr, &w2];
        let (name, unit, samples) = pick_vital(&list).unwrap();
        assert_eq!((name.as_str(), unit.as_str()), ("Body weight", "kg"));
        assert_eq!(samples[0].value, 71.5);
        // Another system's code 29463-7, or no number: not a reading.
        let other = json!({
            "code": {"coding": [{"system": "urn:other", "code": "29463-7"}]},
            "effectiveDateTime": "2024-01-05", "valueQuantity": {"value": 1},
        });
        let text = json!({
            "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
            "effectiveDateTime": "2024-01-06", "valueString": "heavy",
        });
        assert!(pick_vital(&[&one_weight, &other, &text]).is_none());
    }

    #[test]
    fn values_and_names_in_words() {
        let bp = json!({
            "component": [
                {"code": {"text": "Systolic"}, "valueQuantity": {"value": 120, "unit": "mmHg"}},
                {"code": {"text": "Diastolic"}, "valueQuantity": {"value": 80.0, "code": "mm[Hg]"}},
            ],
        });
        assert_eq!(value_text(&bp), "Systolic 120 mmHg; Diastolic 80 mm[Hg]");
        assert_eq!(value_text(&weight("2024", 70.25)), "70.25 kg");
        assert_eq!(value_text(&json!({"valueBoolean": false})), "No");
        assert_eq!(value_text(&json!({})), "");
        let name = json!({"given": ["Alex", "J"], "family": "Doe", "prefix": ["Dr"]});
        assert_eq!(human_name(Some(&name)), "Dr Alex J Doe");
        assert_eq!(human_name(Some(&json!({"text": " A B "}))), "A B");
        assert_eq!(human_name(None), "");
        assert_eq!(
            fix_link(&json!({"resourceType": "Condition", "id": "c1"})),
            "/portal/requests?target=Condition/c1"
        );
        assert_eq!(fix_link(&json!({"resourceType": "Condition"})), "");
        assert_eq!(
            fix_link(&json!({"resourceType": "Condition", "id": "a b"})),
            ""
        );
    }
}
