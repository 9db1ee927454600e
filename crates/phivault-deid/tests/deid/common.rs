//! Helpers shared by the tests: running an export, reading its output, scanning its bytes.

use std::collections::BTreeSet;

use phivault_deid::{Config, Deidentifier, ProjectKey, Release, Run};
use serde_json::Value;

use crate::synthea::{Planted, Synthetic};

/// The year the exports are made in (ages are counted at it).
pub(crate) const REFERENCE_YEAR: i32 = 2025;

/// A test key: 32 copies of `byte`.
pub(crate) fn key(byte: u8) -> ProjectKey {
    ProjectKey::from_bytes(&[byte; 32]).unwrap()
}

/// The engine of a preset under key `byte`.
pub(crate) fn preset(name: &str, byte: u8) -> Deidentifier {
    Deidentifier::new(Config::preset(name).unwrap(), key(byte), REFERENCE_YEAR)
}

/// The engine of a configuration text under key `byte`.
pub(crate) fn configured(text: &str, byte: u8) -> Deidentifier {
    Deidentifier::new(Config::parse(text).unwrap(), key(byte), REFERENCE_YEAR)
}

/// `patients` through one export.
pub(crate) fn export(engine: &Deidentifier, patients: &[Synthetic], k: Option<usize>) -> Release {
    let mut run = Run::new(engine);
    for p in patients {
        run.add_patient(&p.id, &p.patient);
        for (t, r) in &p.resources {
            run.add(&p.id, t, r);
        }
    }
    run.finish(k)
}

/// Every byte a recipient gets: the files and the report.
pub(crate) fn all_bytes(release: &Release) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, body) in &release.files {
        out.extend_from_slice(name.as_bytes());
        out.push(b'\n');
        out.extend_from_slice(body);
    }
    out.extend_from_slice(&serde_json::to_vec(&release.report).unwrap());
    out
}

/// The released resources of `rtype`.
pub(crate) fn lines(release: &Release, rtype: &str) -> Vec<Value> {
    release
        .files
        .get(rtype)
        .map(|f| {
            f.split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .map(|l| serde_json::from_slice(l).unwrap())
                .collect()
        })
        .unwrap_or_default()
}

/// The planted values found in `bytes`, ASCII-case-insensitively.
pub(crate) fn leaks<'a>(
    bytes: &[u8],
    planted: impl IntoIterator<Item = &'a Planted>,
) -> Vec<String> {
    let hay = String::from_utf8_lossy(bytes).to_ascii_lowercase();
    planted
        .into_iter()
        .filter(|p| hay.contains(&p.value.to_ascii_lowercase()))
        .map(|p| format!("{}: {}", p.class, p.value))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// Every run of exactly 64 hexadecimal digits in `bytes` (pseudonyms).
pub(crate) fn hex64(bytes: &[u8]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut start = 0;
    for i in 0..=bytes.len() {
        let hex = i < bytes.len() && bytes[i].is_ascii_hexdigit();
        if !hex {
            if i - start == 64 {
                out.insert(String::from_utf8_lossy(&bytes[start..i]).to_ascii_lowercase());
            }
            start = i + 1;
        }
    }
    out
}

/// Every `dddd-dd` in `bytes` (a date with at least a month), with some context.
pub(crate) fn year_month_patterns(bytes: &[u8]) -> Vec<String> {
    let digit = |i: usize| bytes.get(i).is_some_and(u8::is_ascii_digit);
    (0..bytes.len())
        .filter(|&i| {
            (0..4).all(|d| digit(i + d))
                && bytes.get(i + 4) == Some(&b'-')
                && digit(i + 5)
                && digit(i + 6)
        })
        .map(|i| {
            String::from_utf8_lossy(&bytes[i.saturating_sub(40)..(i + 20).min(bytes.len())])
                .into_owned()
        })
        .collect()
}

/// Pairs of strings at the same place in `input` and `output` (a resource and its
/// de-identified form): arrays are paired item by item when they kept their length.
pub(crate) fn paired_strings<'a>(
    input: &'a Value,
    output: &'a Value,
    out: &mut Vec<(&'a str, &'a str)>,
) {
    match (input, output) {
        (Value::Object(i), Value::Object(o)) => {
            for (k, ov) in o {
                if let Some(iv) = i.get(k) {
                    paired_strings(iv, ov, out);
                }
            }
        }
        (Value::Array(i), Value::Array(o)) if i.len() == o.len() => {
            for (iv, ov) in i.iter().zip(o) {
                paired_strings(iv, ov, out);
            }
        }
        (Value::String(i), Value::String(o)) => out.push((i, o)),
        _ => {}
    }
}

/// Every string leaf of `v`.
pub(crate) fn strings<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::Object(m) => m.values().for_each(|v| strings(v, out)),
        Value::Array(a) => a.iter().for_each(|v| strings(v, out)),
        Value::String(s) => out.push(s),
        _ => {}
    }
}

/// The calendar date of a FHIR date or date-time of at least day precision.
pub(crate) fn day_of(s: &str) -> Option<time::Date> {
    let b = s.as_bytes();
    if s.len() < 10 || b[4] != b'-' || b[7] != b'-' || (s.len() > 10 && b[10] != b'T') {
        return None;
    }
    let month = time::Month::try_from(s[5..7].parse::<u8>().ok()?).ok()?;
    time::Date::from_calendar_date(s[0..4].parse().ok()?, month, s[8..10].parse().ok()?).ok()
}
