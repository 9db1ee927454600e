//! Re-identification risk of what an export releases: k-anonymity and l-diversity over the
//! configured quasi-identifiers, read from the de-identified output (what a recipient sees).
//!
//! - A patient's quasi-identifier key is the tuple of the configured Patient elements, each
//!   reduced as configured (`year`, `zip3`); an element the output does not carry counts as
//!   `*` (suppressed), which matches only other `*`.
//! - k is the size of the smallest class of patients sharing a key.
//! - l (distinct l-diversity) is, over classes, the smallest number of distinct values of the
//!   sensitive attribute; a patient's value is the set of the attribute's values in all their
//!   exported resources of that type (so two patients with the same conditions share one
//!   value, and a class whose members all have the same conditions has l = 1).

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde_json::Value;

use crate::config::{QuasiIdentifier, Reduce};
use crate::dates;

/// The key of one patient.
pub(crate) type QiKey = Vec<String>;

/// The quasi-identifier key of a de-identified Patient.
pub(crate) fn key_of(patient: Option<&Value>, qis: &[QuasiIdentifier]) -> QiKey {
    qis.iter()
        .map(|qi| {
            let below = qi.path.split_once('.').map_or("", |(_, p)| p);
            let raw = patient.and_then(|p| first_at(p, below));
            match (raw, qi.reduce) {
                (None, _) => "*".to_owned(),
                (Some(v), Some(Reduce::Year)) => {
                    dates::year(&v).map_or_else(|| "*".to_owned(), |y| format!("{y:04}"))
                }
                (Some(v), Some(Reduce::Zip3)) => v.chars().take(3).collect(),
                (Some(v), None) => v,
            }
        })
        .collect()
}

/// The first leaf at `path` (arrays: their first element), as text.
fn first_at(value: &Value, path: &str) -> Option<String> {
    let mut v = value;
    for seg in path.split('.').filter(|s| !s.is_empty()) {
        while let Value::Array(items) = v {
            v = items.first()?;
        }
        v = v.get(seg)?;
    }
    while let Value::Array(items) = v {
        v = items.first()?;
    }
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Null | Value::Object(_) => None,
        other => Some(other.to_string()),
    }
}

/// Every value at `path` of a de-identified resource (canonical JSON text of each).
pub(crate) fn values_at(value: &Value, path: &str, out: &mut BTreeSet<String>) {
    let Some((head, rest)) = path.split_once('.').map_or(Some((path, "")), Some) else {
        return;
    };
    match value {
        Value::Array(items) => items.iter().for_each(|i| values_at(i, path, out)),
        Value::Object(fields) if head.is_empty() => {
            out.insert(Value::Object(fields.clone()).to_string());
        }
        Value::Object(fields) => {
            if let Some(v) = fields.get(head) {
                values_at(v, rest, out);
            }
        }
        leaf if head.is_empty() => {
            out.insert(leaf.to_string());
        }
        _ => {}
    }
}

/// The risk figures of a release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Risk {
    /// Patients released.
    pub patients: usize,
    /// Equivalence classes.
    pub classes: usize,
    /// k: the smallest class (0 when no patient is released).
    pub k: usize,
    /// How many classes have that size.
    pub smallest_classes: usize,
    /// Patients in classes smaller than 5 (a common release threshold).
    pub patients_in_classes_below_5: usize,
    /// l: the fewest distinct sensitive values in a class (0 when no patient is released).
    pub l: usize,
}

/// The figures of `patients` (key, sensitive value of each).
pub(crate) fn measure<'a>(patients: impl IntoIterator<Item = (&'a QiKey, &'a String)>) -> Risk {
    let mut classes: BTreeMap<&QiKey, (usize, BTreeSet<&String>)> = BTreeMap::new();
    let mut total = 0;
    for (key, sensitive) in patients {
        let c = classes.entry(key).or_default();
        c.0 += 1;
        c.1.insert(sensitive);
        total += 1;
    }
    let k = classes.values().map(|c| c.0).min().unwrap_or(0);
    Risk {
        patients: total,
        classes: classes.len(),
        k,
        smallest_classes: classes.values().filter(|c| c.0 == k).count(),
        patients_in_classes_below_5: classes.values().filter(|c| c.0 < 5).map(|c| c.0).sum(),
        l: classes.values().map(|c| c.1.len()).min().unwrap_or(0),
    }
}

/// Sizes of each key's class.
pub(crate) fn class_sizes<'a>(
    keys: impl IntoIterator<Item = &'a QiKey>,
) -> BTreeMap<&'a QiKey, usize> {
    let mut sizes = BTreeMap::new();
    for k in keys {
        *sizes.entry(k).or_insert(0) += 1;
    }
    sizes
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_read_the_output() {
        let qis = crate::Config::preset("safe-harbor")
            .unwrap()
            .quasi_identifiers;
        let p = json!({"birthDate": "1980", "gender": "female",
                       "address": [{"postalCode": "021", "state": "MA"}]});
        assert_eq!(key_of(Some(&p), &qis), vec!["1980", "female", "021"]);
        assert_eq!(
            key_of(Some(&json!({"gender": "male"})), &qis),
            vec!["*", "male", "*"]
        );
        assert_eq!(key_of(None, &qis), vec!["*", "*", "*"]);
    }

    #[test]
    fn k_and_l() {
        let a: QiKey = vec!["1980".into(), "female".into()];
        let b: QiKey = vec!["1990".into(), "male".into()];
        let (x, y) = ("[\"x\"]".to_owned(), "[\"y\"]".to_owned());
        let r = measure([(&a, &x), (&a, &y), (&a, &x), (&b, &x)]);
        assert_eq!(
            (r.patients, r.classes, r.k, r.smallest_classes, r.l),
            (4, 2, 1, 1, 1)
        );
        let r = measure([(&a, &x), (&a, &y)]);
        assert_eq!((r.k, r.l), (2, 2));
        let mut out = BTreeSet::new();
        values_at(
            &json!({"code": {"coding": [{"system": "s", "code": "1"}]}}),
            "code",
            &mut out,
        );
        assert_eq!(out.len(), 1);
    }
}
