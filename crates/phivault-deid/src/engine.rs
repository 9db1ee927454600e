//! One resource through the rules.
//!
//! The rules it keeps:
//! - **Allow-list.** An element no rule covers is removed. So are extensions
//!   (`extension`, `modifierExtension`) unless a rule's path goes through them, primitive
//!   extensions (`_birthDate`), and a resource type with no rule of its own is left out.
//! - **Free text is removed unless named.** `text` (the narrative's `div` included),
//!   `display`, `comment`, `description`, `note` text, `patientInstruction`, `valueString`,
//!   `authorString` and `title` are removed unless a rule names that exact element, except a
//!   `Coding.display` whose `system` is a known code system (a published term).
//! - **Dates under a `keep`** that does not name them go through the configured date policy
//!   (year, shift, keep or redact); naming a date element exactly keeps it.
//! - **Pseudonyms link.** `cryptoHash` of a resource's `id` and of a `Type/id` reference hash
//!   the same `Type/id` text, so a reference still points at the pseudonymous resource.
//! - **Kept text is scrubbed** (when configured) of the patient's own names, identifiers,
//!   contacts and address found elsewhere in the record.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::{Map, Value};
use zeroize::Zeroizing;

use crate::config::{Config, DatePolicy, Generalization, Method};
use crate::{DeidError, ProjectKey, dates, zip3};

/// Elements that hold free text.
const FREE_TEXT: &[&str] = &[
    "text",
    "div",
    "display",
    "comment",
    "description",
    "patientInstruction",
    "valueString",
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

/// The replacement of a scrubbed term.
const SCRUBBED: &str = "[REDACTED]";

/// What is known about one patient while their resources are de-identified.
pub struct PatientContext {
    /// `Patient/<id>`.
    reference: String,
    /// The date offset of `dateShift`, in days (never 0).
    offset_days: i64,
    /// Lower-case terms to scrub from kept text.
    terms: Vec<Zeroizing<String>>,
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
    /// Every path that lies on the way to a rule (`a`, `a.b` for a rule on `a.b.c`).
    above: HashSet<String>,
}

/// A configured de-identification with its key: transforms resources one by one.
pub struct Deidentifier {
    config: Config,
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
            t.exact.insert(rule.path.clone(), i);
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
        Deidentifier {
            config,
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
            patient.map(scrub_terms).unwrap_or_default()
        } else {
            Vec::new()
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
        };
        let mut out = walk.object(fields).unwrap_or_default();
        out.insert("resourceType".to_owned(), Value::String(rtype.to_owned()));
        Some(Value::Object(out))
    }
}

/// Lower-case identifying terms of a Patient: names, identifiers, contacts, address lines.
fn scrub_terms(patient: &Value) -> Vec<Zeroizing<String>> {
    let mut terms: Vec<Zeroizing<String>> = Vec::new();
    let mut add = |v: &Value| {
        if let Some(s) = v.as_str() {
            let s = s.trim().to_lowercase();
            // Short fragments ("Al", "Jr") would scrub ordinary words.
            if s.chars().count() >= 3 && !terms.iter().any(|t| **t == s) {
                terms.push(Zeroizing::new(s));
            }
        }
    };
    let each = |v: &Value| v.as_array().cloned().unwrap_or_default();
    let mut names = each(&patient["name"]);
    for contact in each(&patient["contact"]) {
        names.push(contact["name"].clone());
        for t in each(&contact["telecom"]) {
            add(&t["value"]);
        }
    }
    for name in &names {
        add(&name["family"]);
        add(&name["text"]);
        for g in each(&name["given"]) {
            add(&g);
        }
    }
    for i in each(&patient["identifier"]) {
        add(&i["value"]);
    }
    for t in each(&patient["telecom"]) {
        add(&t["value"]);
    }
    for a in each(&patient["address"]) {
        add(&a["city"]);
        add(&a["postalCode"]);
        add(&a["text"]);
        for l in each(&a["line"]) {
            add(&l);
        }
    }
    add(&patient["birthDate"]);
    // Longest first, so a full name is replaced before its parts.
    terms.sort_by_key(|t| std::cmp::Reverse(t.len()));
    terms
}

/// `hay` with every ASCII-case-insensitive occurrence of a term replaced.
fn scrub(hay: &str, terms: &[Zeroizing<String>]) -> Option<String> {
    let mut out: Option<String> = None;
    for term in terms {
        let current = out.as_deref().unwrap_or(hay);
        let lower = current.to_lowercase();
        // Lower-casing may change byte lengths outside ASCII: then only exact-case matches.
        let same_len = lower.len() == current.len();
        let find_in = if same_len { lower.as_str() } else { current };
        if !find_in.contains(term.as_str()) {
            continue;
        }
        let mut result = String::with_capacity(current.len());
        let mut rest = 0;
        for (at, _) in find_in.match_indices(term.as_str()) {
            if at < rest {
                continue;
            }
            result.push_str(&current[rest..at]);
            result.push_str(SCRUBBED);
            rest = at + term.len();
        }
        result.push_str(&current[rest..]);
        out = Some(result);
    }
    out
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

    /// The longest rule covering the current path.
    fn decide(&self) -> Option<Decision> {
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
        let label = self.engine.config.rules[rule].label();
        *self.counts.entry(label).or_default() += 1;
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
            // Extensions pass only where a rule's path goes through them.
            let reach = if is_extension {
                self.reachable(false)
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
            Value::Object(fields) => self.object(fields).map(Value::Object),
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

    fn leaf(&mut self, name: &str, value: &Value, known_display: bool) -> Option<Value> {
        let decision = self.decide()?;
        let method = &self.engine.config.rules[decision.rule].method;
        let free_text = FREE_TEXT.contains(&name) && !known_display;
        if free_text && !decision.exact {
            return None;
        }
        let out = match method {
            Method::Redact => None,
            Method::Keep => self.keep(name, value, decision.exact),
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

    fn keep(&self, name: &str, value: &Value, exact: bool) -> Option<Value> {
        let Some(s) = value.as_str() else {
            return Some(value.clone());
        };
        let is_date = dates::is_full_date(s) || (date_named(name) && dates::is_partial_date(s));
        let kept = if is_date && !exact {
            match self.engine.config.dates {
                DatePolicy::Keep => s.to_owned(),
                DatePolicy::Redact => return None,
                DatePolicy::Year => format!("{:04}", dates::year(s)?),
                DatePolicy::Shift => dates::shift(s, self.ctx.offset_days)?,
            }
        } else {
            s.to_owned()
        };
        Some(Value::String(scrub(&kept, &self.ctx.terms).unwrap_or(kept)))
    }

    fn hash(&self, name: &str, value: &Value) -> String {
        let text = text_of(value);
        let key = &self.engine.key;
        if self.path == "id" {
            return key.pseudonym(&format!("{}/{text}", self.rtype));
        }
        if name == "reference"
            && let Some((t, id)) = text.split_once('/')
            && phivault_fhir::ResourceType::parse(t).is_ok()
            && phivault_fhir::Id::parse(id).is_ok()
        {
            return format!("{t}/{}", key.pseudonym(&text));
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

    fn perturb(&self, value: &Value, bound: f64, relative: bool) -> Option<Value> {
        let n = number_of(value)?;
        let text = value.to_string();
        let decimals = text.split_once('.').map_or(0, |(_, f)| f.len()).min(6);
        // Stable per resource and element: the same export twice gives the same noise, so
        // averaging exports learns nothing.
        let draw = self.engine.key.noise_draw(&format!(
            "{}|{}/{}|{}",
            self.ctx.reference, self.rtype, self.resource_id, self.path
        ));
        #[allow(clippy::cast_precision_loss)]
        let unit = (draw as f64) / (u64::MAX as f64) * 2.0 - 1.0;
        let width = if relative { bound * n.abs() } else { bound };
        let noisy = n + unit * width;
        let scale = 10f64.powi(i32::try_from(decimals).unwrap_or(0));
        let rounded = (noisy * scale).round() / scale;
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

/// Reverses `encrypt` for the key holder.
pub fn decrypt(key: &ProjectKey, value: &str) -> Result<Zeroizing<String>, DeidError> {
    key.decrypt(value)
}
