//! One resource through the rules.
//!
//! The rules it keeps:
//! - **Allow-list.** An element no rule covers is removed. So are extensions
//!   (`extension`, `modifierExtension`) unless a rule's path goes through them, primitive
//!   extensions (`_birthDate`), and a resource type with no rule of its own is left out.
//! - **Free text is removed unless named.** `text` (the narrative's `div` included),
//!   `display`, `comment`, `description`, `note` text, `patientInstruction`, `valueString`,
//!   `valueMarkdown`, `contentString`, `conclusion`, `summary`, `authorString` and `title` are
//!   removed unless a rule names that exact element, except a `Coding.display` whose `system`
//!   is a known code system (a published term). So is an element's own `id` below the
//!   resource (only the resource's `id` is covered by a rule above it).
//! - **Every date a `keep` passes goes through the date policy** (year, shift, keep or
//!   redact), whether the rule names the date element or an element above it: a date is
//!   never kept more precisely than the policy says. A date that should be treated otherwise
//!   gets its own method (`dateShift`, `generalize` to `year`, `redact`).
//! - **Pseudonyms link.** `cryptoHash` of a resource's `id` and of a `Type/id` reference
//!   (`Type/id/_history/n` too, its version dropped) hash the same `Type/id` text, so a
//!   reference still points at the pseudonymous resource.
//! - **Kept text is scrubbed** (when configured) of the patient's own names, identifiers,
//!   contacts and address found in their Patient resource, and dates written in it follow the
//!   date policy (see `scrub.rs`). Scrubbing covers free text and every string kept by a rule
//!   above it; a structured element a rule names exactly (the city a limited data set keeps)
//!   is kept as written.
//! - **`substitute` replaces the element it names** as a whole (an object included); below
//!   that element, and for every other method, a rule acts on each value (leaf) it covers.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::{Map, Value};

use crate::config::{Config, DatePolicy, Generalization, Method};
use crate::scrub::{self, Terms};
use crate::{ProjectKey, dates, zip3};

/// Elements that hold free text.
const FREE_TEXT: &[&str] = &[
    "text",
    "div",
    "display",
    "comment",
    "description",
    "patientInstruction",
    "valueString",
    "valueMarkdown",
    "contentString",
    "conclusion",
    "summary",
    "authorString",
    "title",
];

/// Element names under which a year or year-month string is taken for a date (a full date is
/// recognized anywhere; a four-digit code is not a year).
fn date_named(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.contains("date")
        || lower.contains("time")
        || matches!(
            name,
            "start"
                | "end"
                | "issued"
                | "recorded"
                | "authoredOn"
                | "created"
                | "lastUpdated"
                | "onsetString"
        )
}

/// What is known about one patient while their resources are de-identified.
pub struct PatientContext {
    /// `Patient/<id>`.
    reference: String,
    /// The date offset of `dateShift`, in days (never 0).
    offset_days: i64,
    /// Terms to scrub from kept text.
    terms: Terms,
}

impl std::fmt::Debug for PatientContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PatientContext").finish_non_exhaustive()
    }
}

/// The rules of one type, by path below the type.
#[derive(Default)]
struct TypeRules {
    exact: HashMap<String, usize>,
    /// Rules that select extensions by `url`, by their (extension) path.
    by_url: HashMap<String, Vec<(String, usize)>>,
    /// Every path that lies on the way to a rule (`a`, `a.b` for a rule on `a.b.c`).
    above: HashSet<String>,
}

/// A configured de-identification with its key: transforms resources one by one.
pub struct Deidentifier {
    config: Config,
    /// Each rule's label in reports, by index.
    labels: Vec<String>,
    key: ProjectKey,
    hash: String,
    by_type: HashMap<String, TypeRules>,
    reference_year: i32,
}

impl std::fmt::Debug for Deidentifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deidentifier")
            .field("configuration", &self.hash)
            .finish_non_exhaustive()
    }
}

/// Counts kept while transforming: rule label to leaves it decided.
pub(crate) type RuleCounts = BTreeMap<String, u64>;

impl Deidentifier {
    /// The engine for `config`, keyed by `key`; ages are counted at `reference_year` (the
    /// year of the export).
    pub fn new(config: Config, key: ProjectKey, reference_year: i32) -> Deidentifier {
        let mut by_type: HashMap<String, TypeRules> = HashMap::new();
        for (i, rule) in config.rules.iter().enumerate() {
            let t = by_type.entry(rule.rtype.clone()).or_default();
            match &rule.url {
                None => {
                    t.exact.insert(rule.path.clone(), i);
                }
                Some(url) => {
                    t.by_url
                        .entry(rule.path.clone())
                        .or_default()
                        .push((url.clone(), i));
                    // The extension path itself is on the way to a rule.
                    t.above.insert(rule.path.clone());
                }
            }
            let mut prefix = String::new();
            for seg in rule.path.split('.') {
                if !prefix.is_empty() {
                    t.above.insert(prefix.clone());
                    prefix.push('.');
                }
                prefix.push_str(seg);
            }
        }
        let hash = config.hash();
        let labels = config.rules.iter().map(|r| r.label()).collect();
        Deidentifier {
            config,
            labels,
            key,
            hash,
            by_type,
            reference_year,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// SHA-256 of the resolved configuration, hex.
    pub fn config_hash(&self) -> &str {
        &self.hash
    }

    /// The project key (the key holder reverses `encrypt` with it).
    pub fn key(&self) -> &ProjectKey {
        &self.key
    }

    /// Whether resources of `rtype` are exported at all (the type has rules of its own).
    pub fn exports(&self, rtype: &str) -> bool {
        self.by_type.contains_key(rtype)
    }

    /// The pseudonymous id of `rtype/id` under `cryptoHash`.
    pub fn pseudonym_of(&self, rtype: &str, id: &str) -> String {
        self.key.pseudonym(&format!("{rtype}/{id}"))
    }

    /// The context of `patient_id`, with scrub terms from their (original) Patient resource.
    pub fn patient_context(&self, patient_id: &str, patient: Option<&Value>) -> PatientContext {
        let max = i64::from(self.config.date_shift_max_days);
        // Uniform over -max..=max without 0: 2 * max values.
        let span = u64::try_from(2 * max).unwrap_or(1).max(1);
        let draw = i64::try_from(self.key.shift_draw(patient_id) % span).unwrap_or(0);
        let offset_days = if draw < max {
            draw - max
        } else {
            draw - max + 1
        };
        let terms = if self.config.scrub_free_text {
            patient.map(scrub::terms).unwrap_or_default()
        } else {
            Terms::default()
        };
        PatientContext {
            reference: format!("Patient/{patient_id}"),
            offset_days,
            terms,
        }
    }

    /// The patient's date offset in days (for tests and the key holder).
    pub fn offset_days(&self, ctx: &PatientContext) -> i64 {
        ctx.offset_days
    }

    /// `body` (a resource of `rtype` in `ctx`'s compartment) de-identified; `None` when the
    /// type is not exported.
    pub fn apply(&self, ctx: &PatientContext, rtype: &str, body: &Value) -> Option<Value> {
        self.apply_counted(ctx, rtype, body, &mut RuleCounts::new())
    }

    pub(crate) fn apply_counted(
        &self,
        ctx: &PatientContext,
        rtype: &str,
        body: &Value,
        counts: &mut RuleCounts,
    ) -> Option<Value> {
        if !self.exports(rtype) {
            return None;
        }
        let Value::Object(fields) = body else {
            return None;
        };
        let mut walk = Walk {
            engine: self,
            ctx,
            rtype,
            own: self.by_type.get(rtype),
            any: self.by_type.get("*"),
            path: String::new(),
            counts,
            resource_id: body["id"].as_str().unwrap_or_default(),
            perturbed: HashMap::new(),
            forced: None,
        };
        let kept = walk.object(fields).unwrap_or_default();
        // `resourceType` first, then `id`, as FHIR JSON is usually read.
        let mut out = Map::with_capacity(kept.len() + 1);
        out.insert("resourceType".to_owned(), Value::String(rtype.to_owned()));
        let (ids, others): (Vec<_>, Vec<_>) = kept.into_iter().partition(|(k, _)| k == "id");
        out.extend(ids);
        out.extend(others);
        Some(Value::Object(out))
    }
}

/// The walk over one resource.
struct Walk<'a> {
    engine: &'a Deidentifier,
    ctx: &'a PatientContext,
    rtype: &'a str,
    own: Option<&'a TypeRules>,
    any: Option<&'a TypeRules>,
    /// The current path below the type (`code.coding`).
    path: String,
    counts: &'a mut RuleCounts,
    resource_id: &'a str,
    /// How many values of each path `perturb` has drawn noise for in this resource.
    perturbed: HashMap<String, u32>,
    /// Inside an extension a `url` rule selected: that rule, and the length of the path at
    /// which it applies (it decides everything below).
    forced: Option<(usize, usize)>,
}

/// The rule deciding a leaf: its index and whether it names the leaf exactly.
struct Decision {
    rule: usize,
    exact: bool,
}

impl Walk<'_> {
    /// Whether anything at or below the current path has a rule (or a rule above covers it).
    fn reachable(&self, covered: bool) -> bool {
        covered
            || [self.own, self.any]
                .into_iter()
                .flatten()
                .any(|t| t.above.contains(&self.path) || t.exact.contains_key(&self.path))
    }

    /// The longest rule covering the current path (inside an extension a `url` rule
    /// selected: that rule).
    fn decide(&self) -> Option<Decision> {
        if let Some((rule, depth)) = self.forced {
            return Some(Decision {
                rule,
                exact: self.path.len() == depth,
            });
        }
        let mut end = self.path.len();
        loop {
            let prefix = &self.path[..end];
            for t in [self.own, self.any].into_iter().flatten() {
                if let Some(&rule) = t.exact.get(prefix) {
                    return Some(Decision {
                        rule,
                        exact: end == self.path.len(),
                    });
                }
            }
            end = prefix.rfind('.')?;
        }
    }

    fn count(&mut self, rule: usize) {
        let label = &self.engine.labels[rule];
        match self.counts.get_mut(label) {
            Some(n) => *n += 1,
            None => {
                self.counts.insert(label.clone(), 1);
            }
        }
    }

    fn object(&mut self, fields: &Map<String, Value>) -> Option<Map<String, Value>> {
        // Whether a rule above this object covers all of it (extensions excepted).
        let covered = self.decide().is_some() && !self.path.is_empty();
        let mut out = Map::new();
        for (name, value) in fields {
            if name.starts_with('_') || (self.path.is_empty() && name == "resourceType") {
                continue;
            }
            let saved = self.path.len();
            if !self.path.is_empty() {
                self.path.push('.');
            }
            self.path.push_str(name);
            let is_extension = name == "extension" || name == "modifierExtension";
            // Extensions pass only where a rule's path goes through them (or inside an
            // extension a `url` rule selected).
            let reach = if is_extension {
                self.forced.is_some() || self.reachable(false)
            } else {
                self.reachable(covered || self.decide().is_some())
            };
            if reach {
                let known_display = name == "display"
                    && fields
                        .get("system")
                        .and_then(Value::as_str)
                        .is_some_and(|s| self.known_system(s));
                if let Some(v) = self.value(name, value, known_display) {
                    out.insert(name.clone(), v);
                }
            }
            self.path.truncate(saved);
        }
        (!out.is_empty()).then_some(out)
    }

    fn known_system(&self, system: &str) -> bool {
        self.engine
            .config
            .known_systems
            .iter()
            .any(|k| system == k || (k.ends_with('/') && system.starts_with(k.as_str())))
    }

    fn value(&mut self, name: &str, value: &Value, known_display: bool) -> Option<Value> {
        match value {
            Value::Object(fields) => match self.substitute_here() {
                Some(v) => Some(v),
                None => self.object(fields).map(Value::Object),
            },
            Value::Array(items) if self.forced.is_none() && self.selects_by_url() => {
                let out: Vec<Value> = items
                    .iter()
                    .filter_map(|item| self.extension(name, item, known_display))
                    .collect();
                (!out.is_empty()).then_some(Value::Array(out))
            }
            Value::Array(items) => {
                let out: Vec<Value> = items
                    .iter()
                    .filter_map(|item| self.value(name, item, known_display))
                    .collect();
                (!out.is_empty()).then_some(Value::Array(out))
            }
            leaf => self.leaf(name, leaf, known_display),
        }
    }

    /// Whether `url` rules select the extensions at the current path.
    fn selects_by_url(&self) -> bool {
        [self.own, self.any]
            .into_iter()
            .flatten()
            .any(|t| t.by_url.contains_key(&self.path))
    }

    /// One extension at a path with `url` rules: under the rule for its `url` (the type's
    /// own before a `*` rule), else under the rule without `url` that covers the path, if any.
    fn extension(&mut self, name: &str, item: &Value, known_display: bool) -> Option<Value> {
        let url = item.get("url").and_then(Value::as_str);
        let rule = [self.own, self.any].into_iter().flatten().find_map(|t| {
            t.by_url
                .get(&self.path)?
                .iter()
                .find(|(u, _)| Some(u.as_str()) == url)
                .map(|(_, i)| *i)
        });
        match rule {
            Some(rule) => {
                self.forced = Some((rule, self.path.len()));
                let out = self.value(name, item, known_display);
                self.forced = None;
                out
            }
            None if self.decide().is_some_and(|d| d.exact) => {
                self.value_unselected(name, item, known_display)
            }
            None => None,
        }
    }

    /// [`Walk::value`] of one array item, without the `url` selection (a rule without `url`
    /// names the path).
    fn value_unselected(&mut self, name: &str, item: &Value, known_display: bool) -> Option<Value> {
        match item {
            Value::Object(fields) => match self.substitute_here() {
                Some(v) => Some(v),
                None => self.object(fields).map(Value::Object),
            },
            leaf => self.leaf(name, leaf, known_display),
        }
    }

    /// The value of a `substitute` rule naming the current path exactly.
    fn substitute_here(&mut self) -> Option<Value> {
        let decision = self.decide().filter(|d| d.exact)?;
        let Method::Substitute { value } = &self.engine.config.rules[decision.rule].method else {
            return None;
        };
        let value = value.clone();
        self.count(decision.rule);
        Some(value)
    }

    fn leaf(&mut self, name: &str, value: &Value, known_display: bool) -> Option<Value> {
        let decision = self.decide()?;
        let method = &self.engine.config.rules[decision.rule].method;
        let free_text = FREE_TEXT.contains(&name) && !known_display;
        // An element's own id (not the resource's) is a code of the sender's, not data.
        let element_id = name == "id" && self.path != "id";
        if (free_text || element_id) && !decision.exact {
            return None;
        }
        let out = match method {
            Method::Redact => None,
            // A structured element the rule names exactly (the city a limited data set
            // keeps) is kept as written; free text, and what a rule above keeps, is scrubbed.
            Method::Keep => self.keep(name, value, free_text || !decision.exact),
            Method::CryptoHash => Some(Value::String(self.hash(name, value))),
            Method::Encrypt => self
                .engine
                .key
                .encrypt(&text_of(value))
                .ok()
                .map(Value::String),
            Method::DateShift => value
                .as_str()
                .and_then(|s| dates::shift(s, self.ctx.offset_days))
                .map(Value::String),
            Method::Generalize { to } => self.generalize(*to, value),
            Method::Substitute { value } => Some(value.clone()),
            Method::Perturb { bound, relative } => self.perturb(value, *bound, *relative),
        };
        if out.is_some() || matches!(method, Method::Redact) {
            self.count(decision.rule);
        }
        out
    }

    fn keep(&self, name: &str, value: &Value, scrub_it: bool) -> Option<Value> {
        let Some(s) = value.as_str() else {
            return Some(value.clone());
        };
        let policy = self.engine.config.dates;
        let is_date = dates::is_full_date(s) || (date_named(name) && dates::is_partial_date(s));
        if is_date {
            return match policy {
                DatePolicy::Keep => Some(s.to_owned()),
                DatePolicy::Redact => None,
                DatePolicy::Year => dates::year(s).map(|y| format!("{y:04}")),
                DatePolicy::Shift => dates::shift(s, self.ctx.offset_days),
            }
            .map(Value::String);
        }
        let scrubbed = scrub_it.then(|| scrub::scrub(s, &self.ctx.terms)).flatten();
        let text = scrubbed.as_deref().unwrap_or(s);
        let dated = scrub::dates_in_text(text, policy, self.ctx.offset_days);
        Some(Value::String(
            dated.or(scrubbed).unwrap_or_else(|| s.to_owned()),
        ))
    }

    fn hash(&self, name: &str, value: &Value) -> String {
        let text = text_of(value);
        let key = &self.engine.key;
        if self.path == "id" {
            return key.pseudonym(&format!("{}/{text}", self.rtype));
        }
        // `Type/id`, or `Type/id/_history/version` (the version is dropped: it would say how
        // often the record changed).
        let unversioned = text.split("/_history/").next().unwrap_or_default();
        if name == "reference"
            && let Some((t, id)) = unversioned.split_once('/')
            && phivault_fhir::ResourceType::parse(t).is_ok()
            && phivault_fhir::Id::parse(id).is_ok()
        {
            return format!("{t}/{}", key.pseudonym(unversioned));
        }
        key.pseudonym(&text)
    }

    fn generalize(&self, to: Generalization, value: &Value) -> Option<Value> {
        match to {
            Generalization::Year => {
                let y = dates::year(value.as_str()?)?;
                Some(Value::String(format!("{y:04}")))
            }
            Generalization::BirthYear => {
                let y = dates::year(value.as_str()?)?;
                // Everyone older than 89 falls in one class: born 90 years before the
                // reference year (HIPAA: "aggregated into a single category of age 90 or
                // older").
                let y = y.max(self.engine.reference_year - 90);
                Some(Value::String(format!("{y:04}")))
            }
            Generalization::Zip3 => {
                zip3::generalize(value.as_str()?, &self.engine.config.zip3_restricted)
                    .map(Value::String)
            }
            Generalization::Age => {
                let n = number_of(value)?;
                Some(if n > 89.0 {
                    Value::from(90)
                } else {
                    value.clone()
                })
            }
        }
    }

    fn perturb(&mut self, value: &Value, bound: f64, relative: bool) -> Option<Value> {
        let n = number_of(value)?;
        let text = value.to_string();
        let decimals = text.split_once('.').map_or(0, |(_, f)| f.len()).min(6);
        // Stable per resource, element and occurrence (the second component's value draws
        // apart from the first's): the same export twice gives the same noise, so averaging
        // exports learns nothing.
        let seen = self.perturbed.entry(self.path.clone()).or_insert(0);
        *seen += 1;
        let draw = self.engine.key.noise_draw(&format!(
            "{}|{}/{}|{}|{}",
            self.ctx.reference, self.rtype, self.resource_id, self.path, seen
        ));
        #[allow(clippy::cast_precision_loss)]
        let unit = (draw as f64) / (u64::MAX as f64) * 2.0 - 1.0;
        let width = if relative { bound * n.abs() } else { bound };
        let noisy = n + unit * width;
        let scale = 10f64.powi(i32::try_from(decimals).unwrap_or(0));
        let mut rounded = (noisy * scale).round() / scale;
        // Rounding to the value's precision may step past the bound: step back towards it.
        if (rounded - n).abs() > width {
            rounded -= (1.0 / scale).copysign(rounded - n);
        }
        let text = format!("{rounded:.decimals$}");
        serde_json::from_str::<Value>(&text).ok()
    }
}

fn text_of(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn number_of(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.to_string().parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn engine(rules: &str) -> Deidentifier {
        let config = Config::parse(rules).unwrap();
        Deidentifier::new(config, ProjectKey::from_bytes(&[3; 32]).unwrap(), 2025)
    }

    #[test]
    fn perturb_stays_within_its_bound_after_rounding() {
        for (bound, can_move) in [(0.7, false), (1.5, true)] {
            let e = engine(&format!(
                "[[rules]]\npath = \"Observation.component.valueQuantity.value\"\n\
                 method = \"perturb\"\nbound = {bound}\n"
            ));
            let (mut moved, mut apart) = (0, 0);
            for i in 0..300 {
                let ctx = e.patient_context(&format!("p{i}"), None);
                let body = json!({"id": "o", "component": [
                    {"valueQuantity": {"value": 70}}, {"valueQuantity": {"value": 70}}]});
                let out = e.apply(&ctx, "Observation", &body).unwrap();
                let a = out["component"][0]["valueQuantity"]["value"]
                    .as_i64()
                    .unwrap();
                let b = out["component"][1]["valueQuantity"]["value"]
                    .as_i64()
                    .unwrap();
                apart += usize::from(a != b);
                for v in [a, b] {
                    assert!((v - 70).abs() as f64 <= bound, "{bound}: {v}");
                    moved += usize::from(v != 70);
                }
            }
            // An integer within 0.7 can only stay; within 1.5 it moves, each occurrence by
            // its own draw.
            assert_eq!(moved > 0, can_move, "{bound}");
            assert_eq!(apart > 0, can_move, "{bound}");
        }
    }

    #[test]
    fn substitute_replaces_a_whole_element_and_element_ids_go() {
        let e = engine(
            "[[rules]]\npath = \"Patient.maritalStatus\"\nmethod = \"substitute\"\n\
             value = { text = \"withheld\" }\n[[rules]]\npath = \"Patient.communication\"\n\
             method = \"keep\"\n",
        );
        let ctx = e.patient_context("p", None);
        let body = json!({"maritalStatus": {"coding": [{"code": "M"}], "text": "Married"},
                          "communication": [{"id": "c1", "language": {"coding": [{"id": "x", "code": "en"}]}}]});
        let out = e.apply(&ctx, "Patient", &body).unwrap();
        assert_eq!(out["maritalStatus"], json!({"text": "withheld"}));
        assert_eq!(
            out["communication"],
            json!([{"language": {"coding": [{"code": "en"}]}}])
        );
    }

    #[test]
    fn references_link_to_the_pseudonymous_resource_versioned_or_not() {
        let e = engine(
            "[[rules]]\npaths = [\"*.id\", \"*.subject.reference\"]\nmethod = \"cryptoHash\"\n\
             [[rules]]\npath = \"Observation.status\"\nmethod = \"keep\"\n",
        );
        let ctx = e.patient_context("p1", None);
        let id = e.pseudonym_of("Patient", "p1");
        for reference in ["Patient/p1", "Patient/p1/_history/3"] {
            let out = e
                .apply(
                    &ctx,
                    "Observation",
                    &json!({"id": "o", "subject": {"reference": reference}}),
                )
                .unwrap();
            assert_eq!(
                out["subject"]["reference"],
                format!("Patient/{id}"),
                "{reference}"
            );
            assert_eq!(out["id"], e.pseudonym_of("Observation", "o"));
        }
        let out = e
            .apply(
                &ctx,
                "Observation",
                &json!({"subject": {"reference": "urn:uuid:1234"}}),
            )
            .unwrap();
        assert_eq!(out["subject"]["reference"].as_str().unwrap().len(), 64);
    }

    #[test]
    fn a_date_named_exactly_still_follows_the_date_policy() {
        for (policy, expected) in [
            ("year", Some("2019")),
            ("redact", None),
            ("keep", Some("2019-04-02T09:30:00Z")),
        ] {
            let e = engine(&format!(
                "dates = \"{policy}\"\n[[rules]]\npath = \"Condition.onsetDateTime\"\nmethod = \"keep\"\n\
                 [[rules]]\npath = \"Condition.id\"\nmethod = \"keep\"\n"
            ));
            let ctx = e.patient_context("p", None);
            let out = e
                .apply(
                    &ctx,
                    "Condition",
                    &json!({"id": "c", "onsetDateTime": "2019-04-02T09:30:00Z"}),
                )
                .unwrap();
            assert_eq!(out["onsetDateTime"].as_str(), expected, "{policy}");
        }
    }
}
