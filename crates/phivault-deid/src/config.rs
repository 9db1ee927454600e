//! The configuration file: rules by resource type and path, and the settings of the passes
//! around them. TOML:
//!
//! ```toml
//! extends = "safe-harbor"        # start from a preset (safe-harbor, limited-data-set,
//!                                # gdpr-pseudonymization); the rules below are added, and
//!                                # replace a preset rule of the same type and path
//! dates = "year"                 # every date a `keep` rule passes (named or below the
//!                                # named element, and dates written in kept text):
//!                                # year | shift | keep | redact
//! date_shift_max_days = 365      # dateShift offsets lie in -N..=N days, never 0
//! scrub_free_text = true         # remove the patient's names, identifiers, contacts and
//!                                # addresses (as their Patient holds them) from kept text
//! known_systems = ["http://example.org/codes"]   # added to the defaults: a Coding.display
//!                                # is kept only when its system is one of these
//! zip3_restricted = ["036"]      # replaces the shipped table of small ZIP areas
//!
//! [risk]
//! quasi_identifiers = [{ path = "Patient.birthDate", as = "year" },
//!                      { path = "Patient.gender" },
//!                      { path = "Patient.address.postalCode", as = "zip3" }]
//! sensitive = "Condition.code"
//!
//! [[rules]]
//! path = "Observation.valueQuantity.value"   # Type.element.element..., or *.element...
//! method = "perturb"                         # keep, redact, cryptoHash, encrypt, dateShift,
//! bound = 0.5                                # generalize (to = year | birth-year | zip3 |
//! relative = false                           # age), substitute (value = ...), perturb
//! ```
//!
//! Paths name JSON elements (`valueQuantity`, not `value[x]`); array positions are not
//! written. A rule on an `extension` path may add `url = "..."`: it then covers only the
//! extensions with that url (several such rules may share the path); the other extensions
//! there are left out unless a rule without `url` names the path. A rule covers its element and everything below it; the longest matching path
//! wins, a type's own rule over a `*` rule of the same length. A resource type is exported
//! only if it has a rule of its own (`*` rules alone do not export a type). Free text, dates
//! and extensions have rules of their own: see the engine (`engine.rs`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::DeidError;

/// The presets shipped with the crate, by name.
pub const PRESETS: &[(&str, &str)] = &[
    ("safe-harbor", include_str!("../presets/safe-harbor.toml")),
    (
        "limited-data-set",
        include_str!("../presets/limited-data-set.toml"),
    ),
    (
        "gdpr-pseudonymization",
        include_str!("../presets/gdpr-pseudonymization.toml"),
    ),
];

/// Code systems whose `Coding.display` is a published term, not free text.
pub(crate) const DEFAULT_KNOWN_SYSTEMS: &[&str] = &[
    "http://loinc.org",
    "http://snomed.info/sct",
    "http://www.nlm.nih.gov/research/umls/rxnorm",
    "http://hl7.org/fhir/sid/icd-10",
    "http://hl7.org/fhir/sid/icd-10-cm",
    "http://hl7.org/fhir/sid/icd-9-cm",
    "http://hl7.org/fhir/sid/cvx",
    "http://unitsofmeasure.org",
    "urn:ietf:bcp:47",
    // CDC Race and Ethnicity (US Core race and ethnicity extensions).
    "urn:oid:2.16.840.1.113883.6.238",
    "http://terminology.hl7.org/CodeSystem/",
    "http://hl7.org/fhir/",
];

/// The configuration file as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConfigFile {
    /// The project key file (64 hex digits), relative to the configuration file.
    pub(crate) key_file: Option<String>,
    /// A preset to start from.
    pub(crate) extends: Option<String>,
    /// The policy for every date a `keep` rule passes.
    pub(crate) dates: Option<DatePolicy>,
    /// Largest date shift, in days.
    pub(crate) date_shift_max_days: Option<u32>,
    /// Whether kept text is scrubbed of the patient's own identifiers.
    pub(crate) scrub_free_text: Option<bool>,
    /// Code systems added to the defaults.
    #[serde(default)]
    pub(crate) known_systems: Vec<String>,
    /// Replaces the shipped table of small three-digit ZIP areas.
    pub(crate) zip3_restricted: Option<Vec<String>>,
    /// Re-identification risk settings.
    pub(crate) risk: Option<RiskFile>,
    /// The rules.
    #[serde(default)]
    pub(crate) rules: Vec<RuleFile>,
}

/// `[risk]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RiskFile {
    /// Quasi-identifiers, read from the de-identified Patient.
    pub(crate) quasi_identifiers: Option<Vec<QuasiIdentifier>>,
    /// The sensitive attribute of l-diversity (`Type.element...`).
    pub(crate) sensitive: Option<String>,
}

/// One quasi-identifier: a path of the Patient, optionally reduced.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct QuasiIdentifier {
    /// `Patient.element...`.
    pub path: String,
    /// `year` or `zip3`: the value is reduced so before it is compared.
    #[serde(rename = "as", default, skip_serializing_if = "Option::is_none")]
    pub reduce: Option<Reduce>,
}

/// How a quasi-identifier value is reduced before classes are formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reduce {
    /// The year of a date.
    Year,
    /// The first three characters.
    Zip3,
}

/// What happens to every date a `keep` rule passes (whether it names the date or an element
/// above it), and to dates written in kept text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatePolicy {
    /// Reduced to the year.
    Year,
    /// Shifted by the patient's offset.
    Shift,
    /// Kept as they are.
    Keep,
    /// Removed.
    Redact,
}

/// One `[[rules]]` entry as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RuleFile {
    /// One path.
    pub(crate) path: Option<String>,
    /// Several paths with the same method.
    #[serde(default)]
    pub(crate) paths: Vec<String>,
    /// The method's name.
    pub(crate) method: String,
    /// `generalize`: what to.
    pub(crate) to: Option<String>,
    /// `substitute`: the replacement.
    pub(crate) value: Option<Value>,
    /// `perturb`: the largest change.
    pub(crate) bound: Option<f64>,
    /// `perturb`: `bound` is a fraction of the value.
    pub(crate) relative: Option<bool>,
    /// On an `extension` path: the rule applies to the extensions with this `url` only.
    pub(crate) url: Option<String>,
}

/// A de-identification method.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "method", rename_all = "camelCase")]
pub enum Method {
    /// Kept (text and dates under it still pass the free-text and date rules).
    Keep,
    /// Removed.
    Redact,
    /// Replaced by a keyed pseudonym (HMAC-SHA256 with the project key).
    CryptoHash,
    /// Replaced by its encryption under the project key.
    Encrypt,
    /// Moved by the patient's date offset.
    DateShift,
    /// Generalized.
    Generalize {
        /// To what.
        to: Generalization,
    },
    /// Replaced by a fixed value.
    Substitute {
        /// The value.
        value: Value,
    },
    /// Numeric noise within `bound` (a fraction of the value when `relative`), rounded to
    /// the value's decimals (at most 6) without passing the bound (so a bound under one unit
    /// of the last decimal leaves the value as it is). Keyed: the same key, resource, element
    /// and occurrence draw the same noise in every export.
    Perturb {
        /// The largest change.
        bound: f64,
        /// Whether `bound` is relative.
        relative: bool,
    },
}

impl Method {
    /// The method's name in configuration and reports.
    pub fn name(&self) -> &'static str {
        match self {
            Method::Keep => "keep",
            Method::Redact => "redact",
            Method::CryptoHash => "cryptoHash",
            Method::Encrypt => "encrypt",
            Method::DateShift => "dateShift",
            Method::Generalize { .. } => "generalize",
            Method::Substitute { .. } => "substitute",
            Method::Perturb { .. } => "perturb",
        }
    }
}

/// What `generalize` reduces a value to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Generalization {
    /// A date to its year.
    Year,
    /// A birth date to its year, every age over 89 to one class ("90+": the year of 90
    /// years before the reference date).
    BirthYear,
    /// A US ZIP code to its first three digits, `000` for small areas.
    Zip3,
    /// An age in years over 89 to 90 (meaning 90 or older).
    Age,
}

/// One rule, checked.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rule {
    /// Resource type, or `*`.
    pub rtype: String,
    /// Elements below the type, dot-separated.
    pub path: String,
    /// On an `extension` (or `modifierExtension`) path: only the extensions with this
    /// `url` (with everything inside them); others at that path are left out unless a rule
    /// without `url` covers them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// What happens to what the path covers.
    #[serde(flatten)]
    pub method: Method,
}

impl Rule {
    /// `Type.path method`, or `Type.path(url) method`.
    pub fn label(&self) -> String {
        match &self.url {
            None => format!("{}.{} {}", self.rtype, self.path, self.method.name()),
            Some(url) => format!("{}.{}({url}) {}", self.rtype, self.path, self.method.name()),
        }
    }
}

/// The configuration with its preset applied and every rule checked.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    /// The preset it extends, if any.
    pub extends: Option<String>,
    /// Dates a `keep` passes.
    pub dates: DatePolicy,
    /// Largest date shift, in days.
    pub date_shift_max_days: u32,
    /// Scrub the patient's identifiers from kept text.
    pub scrub_free_text: bool,
    /// Code systems whose displays are kept.
    pub known_systems: Vec<String>,
    /// Small three-digit ZIP areas.
    pub zip3_restricted: Vec<String>,
    /// Quasi-identifiers.
    pub quasi_identifiers: Vec<QuasiIdentifier>,
    /// Sensitive attribute of l-diversity.
    pub sensitive: String,
    /// The rules, in order.
    pub rules: Vec<Rule>,
    /// The project key file named by the configuration (resolved against the file's
    /// directory by [`Config::load`]). Not part of [`Config::hash`]: the same rules under
    /// another key are the same configuration.
    #[serde(skip)]
    pub key_file: Option<std::path::PathBuf>,
}

impl Config {
    /// A shipped preset.
    pub fn preset(name: &str) -> Result<Config, DeidError> {
        Config::parse(&format!("extends = \"{}\"\n", name.escape_default()))
    }

    /// Reads a configuration file's text (see the module docs).
    pub fn parse(text: &str) -> Result<Config, DeidError> {
        let file: ConfigFile =
            toml::from_str(text).map_err(|e| DeidError::Config(e.message().to_owned()))?;
        let key_file = file.key_file.clone().map(std::path::PathBuf::from);
        let mut config = Config::resolve(file, 0)?;
        config.key_file = key_file;
        Ok(config)
    }

    /// Reads a configuration file; its `key_file` is taken relative to the file's directory.
    pub fn load(path: &std::path::Path) -> Result<Config, DeidError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| DeidError::Config(format!("reading {}: {}", path.display(), e.kind())))?;
        let mut config = Config::parse(&text)
            .map_err(|e| DeidError::Config(format!("{}: {e}", path.display())))?;
        if let Some(k) = &config.key_file
            && k.is_relative()
        {
            config.key_file = Some(path.parent().unwrap_or(std::path::Path::new(".")).join(k));
        }
        Ok(config)
    }

    fn resolve(file: ConfigFile, depth: usize) -> Result<Config, DeidError> {
        let mut config = match &file.extends {
            None => Config {
                extends: None,
                dates: DatePolicy::Redact,
                date_shift_max_days: 365,
                scrub_free_text: true,
                known_systems: DEFAULT_KNOWN_SYSTEMS
                    .iter()
                    .map(|s| (*s).to_owned())
                    .collect(),
                zip3_restricted: crate::zip3::default_restricted(),
                quasi_identifiers: default_quasi_identifiers(),
                sensitive: "Condition.code".to_owned(),
                rules: Vec::new(),
                key_file: None,
            },
            Some(name) => {
                let text = PRESETS
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, t)| *t)
                    .ok_or_else(|| {
                        DeidError::Config(format!(
                            "extends: `{}` is not a preset (safe-harbor, limited-data-set, \
                             gdpr-pseudonymization)",
                            name.chars().take(64).collect::<String>()
                        ))
                    })?;
                if depth > 2 {
                    return Err(DeidError::Config(
                        "presets extend each other in a loop".into(),
                    ));
                }
                let preset: ConfigFile = toml::from_str(text)
                    .map_err(|e| DeidError::Config(format!("preset {name}: {}", e.message())))?;
                let mut base = Config::resolve(preset, depth + 1)?;
                base.extends = Some(name.clone());
                base
            }
        };
        if let Some(d) = file.dates {
            config.dates = d;
        }
        if let Some(n) = file.date_shift_max_days {
            if n == 0 || n > 36_500 {
                return Err(DeidError::Config(
                    "date_shift_max_days must lie in 1..=36500".to_owned(),
                ));
            }
            config.date_shift_max_days = n;
        }
        if let Some(s) = file.scrub_free_text {
            config.scrub_free_text = s;
        }
        for s in file.known_systems {
            if !config.known_systems.contains(&s) {
                config.known_systems.push(s);
            }
        }
        if let Some(z) = file.zip3_restricted {
            if let Some(bad) = z
                .iter()
                .find(|z| z.len() != 3 || !z.bytes().all(|b| b.is_ascii_digit()))
            {
                return Err(DeidError::Config(format!(
                    "zip3_restricted: `{}` is not three digits",
                    bad.chars().take(16).collect::<String>()
                )));
            }
            config.zip3_restricted = z;
        }
        if let Some(risk) = file.risk {
            if let Some(q) = risk.quasi_identifiers {
                for qi in &q {
                    let (t, _) = split_path(&qi.path)?;
                    if t != "Patient" {
                        return Err(DeidError::Config(format!(
                            "risk.quasi_identifiers: `{}` is not a path of Patient",
                            qi.path
                        )));
                    }
                }
                config.quasi_identifiers = q;
            }
            if let Some(s) = risk.sensitive {
                split_path(&s)?;
                config.sensitive = s;
            }
        }
        for (i, rule) in file.rules.into_iter().enumerate() {
            let method =
                method_of(&rule).map_err(|e| DeidError::Config(format!("rules[{i}]: {e}")))?;
            let paths: Vec<String> = rule
                .path
                .iter()
                .cloned()
                .chain(rule.paths.iter().cloned())
                .collect();
            if paths.is_empty() {
                return Err(DeidError::Config(format!(
                    "rules[{i}]: give `path` or `paths`"
                )));
            }
            for p in paths {
                let (rtype, path) =
                    split_path(&p).map_err(|e| DeidError::Config(format!("rules[{i}]: {e}")))?;
                if let Some(url) = &rule.url {
                    let last = path.rsplit('.').next().unwrap_or_default();
                    if !matches!(last, "extension" | "modifierExtension") {
                        return Err(DeidError::Config(format!(
                            "rules[{i}]: `url` selects extensions: the path must end in \
                             extension or modifierExtension, not `{last}`"
                        )));
                    }
                    if url.trim().is_empty() || url.chars().any(char::is_whitespace) {
                        return Err(DeidError::Config(format!(
                            "rules[{i}]: `url` must be an extension's canonical URL"
                        )));
                    }
                }
                let rule = Rule {
                    rtype,
                    path,
                    url: rule.url.clone(),
                    method: method.clone(),
                };
                // A later rule for the same type, path (and url) replaces the earlier one (a
                // file overriding its preset).
                config.rules.retain(|r| {
                    !(r.rtype == rule.rtype && r.path == rule.path && r.url == rule.url)
                });
                config.rules.push(rule);
            }
        }
        Ok(config)
    }

    /// SHA-256 of the configuration as resolved (preset included), hex: names the exact
    /// rules an export ran with.
    pub fn hash(&self) -> String {
        let canonical = serde_json::to_vec(self).unwrap_or_default();
        hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &canonical).as_ref())
    }

    /// The rules by type (`*` included), for reports.
    pub fn rules_by_type(&self) -> BTreeMap<&str, Vec<&Rule>> {
        let mut out: BTreeMap<&str, Vec<&Rule>> = BTreeMap::new();
        for r in &self.rules {
            out.entry(r.rtype.as_str()).or_default().push(r);
        }
        out
    }
}

fn default_quasi_identifiers() -> Vec<QuasiIdentifier> {
    vec![
        QuasiIdentifier {
            path: "Patient.birthDate".to_owned(),
            reduce: Some(Reduce::Year),
        },
        QuasiIdentifier {
            path: "Patient.gender".to_owned(),
            reduce: None,
        },
        QuasiIdentifier {
            path: "Patient.address.postalCode".to_owned(),
            reduce: Some(Reduce::Zip3),
        },
    ]
}

/// `Type.a.b` into (`Type`, `a.b`), both checked.
pub(crate) fn split_path(p: &str) -> Result<(String, String), DeidError> {
    let bad = |why: &str| {
        DeidError::Config(format!(
            "path `{}`: {why}",
            p.chars().take(120).collect::<String>()
        ))
    };
    let (t, rest) = p
        .split_once('.')
        .ok_or_else(|| bad("a path is Type.element (or *.element)"))?;
    if t != "*" && phivault_fhir::ResourceType::parse(t).is_err() {
        return Err(bad("it does not start with a FHIR R4 resource type or `*`"));
    }
    for seg in rest.split('.') {
        let mut chars = seg.chars();
        let ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
            && chars.all(|c| c.is_ascii_alphanumeric());
        if !ok {
            return Err(bad(
                "elements are JSON names (letters and digits), separated by dots",
            ));
        }
    }
    Ok((t.to_owned(), rest.to_owned()))
}

fn method_of(rule: &RuleFile) -> Result<Method, String> {
    let unexpected = |field: &str| format!("`{field}` does not apply to {}", rule.method);
    let m = match rule.method.as_str() {
        "keep" => Method::Keep,
        "redact" => Method::Redact,
        "cryptoHash" => Method::CryptoHash,
        "encrypt" => Method::Encrypt,
        "dateShift" => Method::DateShift,
        "generalize" => {
            let to = match rule.to.as_deref() {
                Some("year") => Generalization::Year,
                Some("birth-year") => Generalization::BirthYear,
                Some("zip3") => Generalization::Zip3,
                Some("age") => Generalization::Age,
                _ => return Err("generalize needs `to` = year, birth-year, zip3 or age".into()),
            };
            Method::Generalize { to }
        }
        "substitute" => Method::Substitute {
            value: rule.value.clone().ok_or("substitute needs `value`")?,
        },
        "perturb" => {
            let bound = rule.bound.ok_or("perturb needs `bound` (> 0)")?;
            if !(bound.is_finite() && bound > 0.0) {
                return Err("perturb's `bound` must be a positive number".into());
            }
            Method::Perturb {
                bound,
                relative: rule.relative.unwrap_or(false),
            }
        }
        other => {
            return Err(format!(
                "`{}` is not a method (keep, redact, cryptoHash, encrypt, dateShift, \
                 generalize, substitute, perturb)",
                other.chars().take(32).collect::<String>()
            ));
        }
    };
    if rule.to.is_some() && !matches!(m, Method::Generalize { .. }) {
        return Err(unexpected("to"));
    }
    if rule.value.is_some() && !matches!(m, Method::Substitute { .. }) {
        return Err(unexpected("value"));
    }
    if (rule.bound.is_some() || rule.relative.is_some()) && !matches!(m, Method::Perturb { .. }) {
        return Err(unexpected("bound"));
    }
    Ok(m)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn presets_parse() {
        for (name, _) in PRESETS {
            let c = Config::preset(name).unwrap();
            assert!(!c.rules.is_empty(), "{name}");
            assert_eq!(c.extends.as_deref(), Some(*name));
        }
    }

    #[test]
    fn a_file_extends_and_overrides_a_preset() {
        let base = Config::preset("safe-harbor").unwrap();
        let c = Config::parse(
            "extends = \"safe-harbor\"\n[[rules]]\npath = \"Observation.valueQuantity.value\"\n\
             method = \"perturb\"\nbound = 0.5\n",
        )
        .unwrap();
        let r: Vec<_> = c
            .rules
            .iter()
            .filter(|r| r.rtype == "Observation" && r.path == "valueQuantity.value")
            .collect();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].method.name(), "perturb");
        assert_ne!(c.hash(), base.hash(), "the hash names the rules");
        assert_eq!(base.hash(), Config::preset("safe-harbor").unwrap().hash());
    }

    #[test]
    fn mistakes_are_named() {
        for (text, says) in [
            ("extends = \"nope\"", "not a preset"),
            (
                "[[rules]]\npath = \"Nope.x\"\nmethod = \"keep\"",
                "resource type",
            ),
            (
                "[[rules]]\npath = \"Patient\"\nmethod = \"keep\"",
                "Type.element",
            ),
            (
                "[[rules]]\npath = \"Patient.a-b\"\nmethod = \"keep\"",
                "JSON names",
            ),
            (
                "[[rules]]\npath = \"Patient.name\"\nmethod = \"hide\"",
                "not a method",
            ),
            (
                "[[rules]]\npath = \"Patient.name\"\nmethod = \"generalize\"",
                "needs `to`",
            ),
            (
                "[[rules]]\npath = \"Patient.name\"\nmethod = \"perturb\"\nbound = -1",
                "positive",
            ),
            (
                "[[rules]]\npath = \"Patient.name\"\nmethod = \"keep\"\nto = \"year\"",
                "does not apply",
            ),
            ("[[rules]]\nmethod = \"keep\"", "`path` or `paths`"),
            ("bogus = 1", "unknown field"),
            (
                "[[rules]]\npath = \"Patient.name\"\nmethod = \"keep\"\nurl = \"http://x\"",
                "must end in extension",
            ),
            (
                "[[rules]]\npath = \"Patient.extension\"\nmethod = \"keep\"\nurl = \"a b\"",
                "canonical URL",
            ),
            ("zip3_restricted = [\"12\"]", "three digits"),
            (
                "[risk]\nquasi_identifiers = [{ path = \"Observation.code\" }]",
                "path of Patient",
            ),
        ] {
            let e = Config::parse(text).unwrap_err().to_string();
            assert!(e.contains(says), "{text}: {e}");
        }
    }
}
