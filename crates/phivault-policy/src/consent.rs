//! Patients' consents (FHIR R4 `Consent`) as facts of a decision: which purposes of use, data
//! classes and principals a patient permits or denies, and for how long.
//!
//! Only consents of scope `patient-privacy` or `research`
//! (`http://terminology.hl7.org/CodeSystem/consentscope`) take part in decisions; other
//! consents (treatment, advance directives) are stored like any resource and ignored here.
//!
//! The rules, as [`Consent::decide`] and [`evaluate`] apply them:
//! - A consent counts only while its `status` is `active`.
//! - A provision **applies** to a request when each of its conditions holds: `purpose` (any
//!   of the listed v3-ActReason codes or a specialization of one in the v3-ActReason
//!   hierarchy, [`Purpose::parent`]: a provision on TREAT covers ETREAT and COC; none listed:
//!   every purpose, except in a `research` consent where it means HRESCH), `period` (the decision time lies within it; partial dates
//!   cover their whole year, month or day), `class` (the resource's type, system
//!   `http://hl7.org/fhir/resource-types`; none listed: every type) and `actor` (the principal
//!   is one of them; none listed: everyone). An actor is a `Practitioner/{id}` reference,
//!   matching the users linked to that Practitioner, or an identifier with system
//!   [`CLIENT_ACTOR_SYSTEM`] whose value is an OAuth2 client id, matching that client.
//! - Nested provisions (`provision.provision`, one level deep) are exceptions to their parent:
//!   they apply only where the parent applies, and the **most specific applicable provision
//!   wins** (an exception over its parent). A provision without `type` decides nothing itself
//!   (a frame for its exceptions). Within one level, deny wins over permit.
//! - Across a patient's consents, **deny wins**: one consent denying is enough, whatever the
//!   others permit; a later deny consent withdraws an earlier permit.
//! - With no applicable provision in any consent, the configured default of the purpose
//!   applies ([`ConsentDefaults`]: research and marketing denied, everything else permitted).
//!
//! Consents are checked when written ([`Consent::parse`]): unknown purposes, classes or actor
//! kinds, exceptions nested deeper than one level, malformed periods, and two exceptions of
//! the same level that contradict each other (permit and deny for a common purpose, class and
//! actor over overlapping periods) are refused with the path of the problem.

use std::collections::BTreeMap;
use std::fmt;

use phivault_fhir::{Id, ResourceType};
use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::{Date, Duration, Month, OffsetDateTime, Time};

use crate::{PURPOSE_SYSTEM, PolicyError, Purpose};

/// The code system of consent scopes.
pub const CONSENT_SCOPE_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/consentscope";
/// The code system of FHIR resource types (data classes of a provision).
pub const RESOURCE_TYPES_SYSTEM: &str = "http://hl7.org/fhir/resource-types";
/// The identifier system naming an OAuth2 client as a provision's actor (value: client id).
pub const CLIENT_ACTOR_SYSTEM: &str = "urn:phivault:client";

/// Longest list of purposes, classes, actors or exceptions read from one provision.
const MAX_ITEMS: usize = 100;

fn invalid(path: impl Into<String>, message: impl Into<String>) -> PolicyError {
    PolicyError::InvalidConsent {
        path: path.into(),
        message: message.into(),
    }
}

/// What a consent is about: privacy in general, or research.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsentScope {
    /// `patient-privacy`: who may use the record, for which purposes.
    PatientPrivacy,
    /// `research`: participation in research (provisions without purpose mean HRESCH).
    Research,
}

/// Permit or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ProvisionType {
    /// `deny`.
    Deny,
    /// `permit`.
    Permit,
}

impl ProvisionType {
    fn as_str(self) -> &'static str {
        match self {
            ProvisionType::Deny => "deny",
            ProvisionType::Permit => "permit",
        }
    }
}

/// Who a provision is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsentActor {
    /// Users linked to this Practitioner.
    Practitioner(Id),
    /// The OAuth2 client with this id.
    Client(String),
}

/// A time window, `[start, end)`; `None` is unbounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Period {
    start: Option<OffsetDateTime>,
    end: Option<OffsetDateTime>,
}

impl Period {
    fn contains(&self, t: OffsetDateTime) -> bool {
        self.start.is_none_or(|s| s <= t) && self.end.is_none_or(|e| t < e)
    }

    fn overlaps(&self, other: &Period) -> bool {
        let before = |end: Option<OffsetDateTime>, start: Option<OffsetDateTime>| match (end, start)
        {
            (Some(e), Some(s)) => e <= s,
            _ => false,
        };
        !before(self.end, other.start) && !before(other.end, self.start)
    }
}

/// One rule of a consent, with its exceptions.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Provision {
    kind: Option<ProvisionType>,
    /// Empty: every purpose (HRESCH only in a research consent).
    purposes: Vec<Purpose>,
    period: Option<Period>,
    /// Empty: everyone.
    actors: Vec<ConsentActor>,
    /// Empty: every type.
    classes: Vec<ResourceType>,
    exceptions: Vec<Provision>,
}

/// The principal and request a consent is asked about.
#[derive(Debug, Clone, Copy)]
pub struct ConsentQuery<'a> {
    /// The purpose of use.
    pub purpose: Purpose,
    /// The resource's type (`None`: unknown, then class-limited permits do not apply and
    /// class-limited denials do).
    pub rtype: Option<ResourceType>,
    /// The Practitioner the requesting user is linked to.
    pub practitioner: Option<&'a Id>,
    /// The requesting OAuth2 client, for a client acting on its own.
    pub client: Option<&'a str>,
    /// The decision time.
    pub now: OffsetDateTime,
}

/// A patient's privacy or research consent, as the decisions read it.
#[derive(Clone, PartialEq, Eq)]
pub struct Consent {
    patient: Id,
    active: bool,
    scope: ConsentScope,
    provision: Option<Provision>,
}

impl fmt::Debug for Consent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The provisions say something about the patient: not printed.
        f.debug_struct("Consent")
            .field("active", &self.active)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

/// The outcome of a patient's consents for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsentVerdict {
    /// An applicable provision permits, and none denies.
    Permit,
    /// An applicable provision denies.
    Deny,
    /// No provision applies: the purpose's default decides.
    NoConsent,
}

impl ConsentVerdict {
    /// Whether the request may proceed, with `defaults` deciding when no consent applies.
    pub fn permits(self, defaults: &ConsentDefaults, purpose: Purpose) -> bool {
        match self {
            ConsentVerdict::Permit => true,
            ConsentVerdict::Deny => false,
            ConsentVerdict::NoConsent => defaults.permits(purpose),
        }
    }
}

/// Whether one of `consents` denies the requesting client by name: a `deny` provision (or
/// exception) that lists `query.client` among its actors and applies to the query. For a
/// patient's own access through an app: the patient's other provisions govern what others may
/// do, not their own access, but an app the patient denied by name is refused even when it
/// acts for them.
pub fn denies_client_by_name<'c>(
    consents: impl IntoIterator<Item = &'c Consent>,
    query: &ConsentQuery<'_>,
) -> bool {
    let Some(client) = query.client else {
        return false;
    };
    let names = |p: &Provision| {
        p.kind == Some(ProvisionType::Deny)
            && p.actors
                .iter()
                .any(|a| matches!(a, ConsentActor::Client(id) if id == client))
    };
    consents.into_iter().any(|c| {
        let Some(root) = c.provision.as_ref().filter(|_| c.active) else {
            return false;
        };
        if !c.applies(root, query) {
            return false;
        }
        names(root)
            || root
                .exceptions
                .iter()
                .any(|e| names(e) && c.applies(e, query))
    })
}

/// The verdict of all of a patient's consents (deny wins; see the module docs).
pub fn evaluate<'c>(
    consents: impl IntoIterator<Item = &'c Consent>,
    query: &ConsentQuery<'_>,
) -> ConsentVerdict {
    let mut verdict = ConsentVerdict::NoConsent;
    for consent in consents {
        match consent.decide(query) {
            Some(ProvisionType::Deny) => return ConsentVerdict::Deny,
            Some(ProvisionType::Permit) => verdict = ConsentVerdict::Permit,
            None => {}
        }
    }
    verdict
}

/// What happens for each purpose of use when no consent applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentDefaults {
    permits: BTreeMap<Purpose, bool>,
}

impl Default for ConsentDefaults {
    /// Research (HRESCH) and marketing (HMARKT) denied unless permitted; every other purpose
    /// (treatment, emergencies, payment, operations, ...) permitted unless denied.
    fn default() -> Self {
        let permits = Purpose::ALL
            .iter()
            .map(|p| (*p, !matches!(p, Purpose::Research | Purpose::Marketing)))
            .collect();
        ConsentDefaults { permits }
    }
}

impl ConsentDefaults {
    /// Sets the default of `purpose`.
    pub fn set(&mut self, purpose: Purpose, permit: bool) {
        self.permits.insert(purpose, permit);
    }

    /// Whether `purpose` is permitted when no consent applies.
    pub fn permits(&self, purpose: Purpose) -> bool {
        self.permits.get(&purpose).copied().unwrap_or(false)
    }

    /// Reads a default as written in configuration: `permit` or `deny`.
    pub fn parse_setting(value: &str) -> Result<bool, PolicyError> {
        match value {
            "permit" => Ok(true),
            "deny" => Ok(false),
            _ => Err(invalid(
                "consent_defaults",
                "a default is \"permit\" or \"deny\"",
            )),
        }
    }
}

impl Consent {
    /// Reads a `Consent` body (already valid FHIR R4). `Ok(None)` for a consent outside the
    /// scopes this server decides on (`patient-privacy`, `research`); an error, with the path
    /// of the problem, for one it cannot apply (see the module docs). Never echoes values.
    pub fn parse(body: &Value) -> Result<Option<Consent>, PolicyError> {
        let Some(scope) = scope_of(body) else {
            return Ok(None);
        };
        let patient = body
            .pointer("/patient/reference")
            .and_then(Value::as_str)
            .and_then(|r| r.strip_prefix("Patient/"))
            .ok_or_else(|| {
                invalid(
                    "Consent.patient",
                    "a patient-privacy or research Consent needs a patient: \
                     a reference `Patient/{id}`",
                )
            })?;
        let patient = Id::parse(patient)
            .map_err(|_| invalid("Consent.patient", "the reference is not `Patient/{id}`"))?;
        let active = body.get("status").and_then(Value::as_str) == Some("active");
        let provision = match body.get("provision") {
            None => None,
            Some(p) => Some(provision(p, "Consent.provision", 0)?),
        };
        let consent = Consent {
            patient,
            active,
            scope,
            provision,
        };
        if let Some(root) = &consent.provision {
            consent.check_contradictions(root, "Consent.provision")?;
        }
        Ok(Some(consent))
    }

    /// A stored consent of `patient` that can no longer be applied (it breaks a rule added
    /// after it was written): taken as denying every purpose, so that what it said is never
    /// widened (fail closed). Break-the-glass and the patient's own access still pass.
    pub fn unreadable(patient: Id) -> Consent {
        Consent {
            patient,
            active: true,
            scope: ConsentScope::PatientPrivacy,
            provision: Some(Provision {
                kind: Some(ProvisionType::Deny),
                purposes: Vec::new(),
                period: None,
                actors: Vec::new(),
                classes: Vec::new(),
                exceptions: Vec::new(),
            }),
        }
    }

    /// The patient who consents.
    pub fn patient(&self) -> &Id {
        &self.patient
    }

    /// Whether the consent is in force (`status` active).
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// This consent's answer to `query`: the type of the most specific applicable provision
    /// (deny over permit at the same level), or `None` when none applies or it is not active.
    pub fn decide(&self, query: &ConsentQuery<'_>) -> Option<ProvisionType> {
        if !self.active {
            return None;
        }
        let root = self.provision.as_ref()?;
        if !self.applies(root, query) {
            return None;
        }
        let nested = root
            .exceptions
            .iter()
            .filter(|e| self.applies(e, query))
            .filter_map(|e| e.kind)
            .min();
        nested.or(root.kind)
    }

    /// The purposes a provision covers (`None`: every purpose).
    fn purposes<'p>(&self, p: &'p Provision) -> Option<&'p [Purpose]> {
        if !p.purposes.is_empty() {
            Some(&p.purposes)
        } else if self.scope == ConsentScope::Research {
            Some(&[Purpose::Research])
        } else {
            None
        }
    }

    fn applies(&self, p: &Provision, q: &ConsentQuery<'_>) -> bool {
        // A provision on a purpose covers its specializations (a denial of TREAT covers ETREAT).
        let purpose = self
            .purposes(p)
            .is_none_or(|ps| ps.iter().any(|general| q.purpose.is_within(*general)));
        let period = p.period.is_none_or(|period| period.contains(q.now));
        let class = p.classes.is_empty()
            || match q.rtype {
                Some(t) => p.classes.contains(&t),
                // Unknown type: a class-limited denial applies, a permit does not.
                None => p.kind == Some(ProvisionType::Deny),
            };
        let actor = p.actors.is_empty()
            || p.actors.iter().any(|a| match a {
                ConsentActor::Practitioner(id) => q.practitioner == Some(id),
                ConsentActor::Client(id) => q.client == Some(id.as_str()),
            });
        purpose && period && class && actor
    }

    /// Refuses exceptions of one level that permit and deny the same thing.
    fn check_contradictions(&self, root: &Provision, path: &str) -> Result<(), PolicyError> {
        for (i, a) in root.exceptions.iter().enumerate() {
            for (j, b) in root.exceptions.iter().enumerate().skip(i + 1) {
                let (Some(ka), Some(kb)) = (a.kind, b.kind) else {
                    continue;
                };
                if ka == kb {
                    continue;
                }
                let common_purpose: Option<Vec<&str>> = match (self.purposes(a), self.purposes(b)) {
                    (None, None) => Some(vec!["every purpose"]),
                    (None, Some(x)) | (Some(x), None) => {
                        Some(x.iter().map(Purpose::as_str).collect())
                    }
                    (Some(x), Some(y)) => {
                        let both: Vec<&str> = x
                            .iter()
                            .filter(|p| y.contains(p))
                            .map(Purpose::as_str)
                            .collect();
                        (!both.is_empty()).then_some(both)
                    }
                };
                let common_class = a.classes.is_empty()
                    || b.classes.is_empty()
                    || a.classes.iter().any(|c| b.classes.contains(c));
                let common_actor = a.actors.is_empty()
                    || b.actors.is_empty()
                    || a.actors.iter().any(|c| b.actors.contains(c));
                let unbounded = Period {
                    start: None,
                    end: None,
                };
                let overlap = a
                    .period
                    .unwrap_or(unbounded)
                    .overlaps(&b.period.unwrap_or(unbounded));
                if let Some(purposes) = common_purpose
                    && common_class
                    && common_actor
                    && overlap
                {
                    return Err(invalid(
                        format!("{path}.provision[{j}]"),
                        format!(
                            "contradicts {path}.provision[{i}]: {} and {} at the same level for \
                             the same purpose ({}), data class and actor over overlapping periods",
                            ka.as_str(),
                            kb.as_str(),
                            purposes.join(", ")
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The consent's scope, when it is one this server decides on.
fn scope_of(body: &Value) -> Option<ConsentScope> {
    let codings = body.pointer("/scope/coding")?.as_array()?;
    codings.iter().find_map(|c| {
        let system = c.get("system").and_then(Value::as_str);
        if system.is_some_and(|s| s != CONSENT_SCOPE_SYSTEM) {
            return None;
        }
        match c.get("code").and_then(Value::as_str)? {
            "patient-privacy" => Some(ConsentScope::PatientPrivacy),
            "research" => Some(ConsentScope::Research),
            _ => None,
        }
    })
}

/// The array at `key` of `value` (absent: empty), bounded.
fn items<'v>(value: &'v Value, key: &str, path: &str) -> Result<&'v [Value], PolicyError> {
    let items = match value.get(key) {
        None => return Ok(&[]),
        Some(Value::Array(a)) => a.as_slice(),
        Some(_) => return Err(invalid(format!("{path}.{key}"), "must be an array")),
    };
    if items.len() > MAX_ITEMS {
        return Err(invalid(
            format!("{path}.{key}"),
            format!("at most {MAX_ITEMS} entries are accepted"),
        ));
    }
    Ok(items)
}

fn provision(value: &Value, path: &str, depth: usize) -> Result<Provision, PolicyError> {
    let kind = match value.get("type").and_then(Value::as_str) {
        None => None,
        Some("permit") => Some(ProvisionType::Permit),
        Some("deny") => Some(ProvisionType::Deny),
        Some(_) => {
            return Err(invalid(
                format!("{path}.type"),
                "must be \"permit\" or \"deny\"",
            ));
        }
    };
    let mut purposes = Vec::new();
    for (i, coding) in items(value, "purpose", path)?.iter().enumerate() {
        let here = format!("{path}.purpose[{i}]");
        let system = coding.get("system").and_then(Value::as_str);
        if system.is_some_and(|s| s != PURPOSE_SYSTEM) {
            return Err(invalid(
                here,
                format!("only purposes of use of {PURPOSE_SYSTEM} are supported"),
            ));
        }
        let purpose = coding
            .get("code")
            .and_then(Value::as_str)
            .and_then(|c| Purpose::parse(c).ok())
            .ok_or_else(|| {
                invalid(
                    here,
                    "not a purpose of use this server knows (TREAT, ETREAT, HPAYMT, HOPERAT, \
                     HRESCH, HMARKT, ...)",
                )
            })?;
        purposes.push(purpose);
    }
    let mut classes = Vec::new();
    for (i, coding) in items(value, "class", path)?.iter().enumerate() {
        let here = format!("{path}.class[{i}]");
        if coding.get("system").and_then(Value::as_str) != Some(RESOURCE_TYPES_SYSTEM) {
            return Err(invalid(
                here,
                format!("data classes are resource types: system {RESOURCE_TYPES_SYSTEM}"),
            ));
        }
        let rtype = coding
            .get("code")
            .and_then(Value::as_str)
            .and_then(|c| ResourceType::parse(c).ok())
            .ok_or_else(|| invalid(here, "not a resource type this server stores"))?;
        classes.push(rtype);
    }
    let mut actors = Vec::new();
    for (i, actor) in items(value, "actor", path)?.iter().enumerate() {
        let here = format!("{path}.actor[{i}].reference");
        let reference = actor.get("reference");
        let by_reference = reference
            .and_then(|r| r.get("reference"))
            .and_then(Value::as_str)
            .and_then(|r| r.strip_prefix("Practitioner/"))
            .and_then(|id| Id::parse(id).ok())
            .map(ConsentActor::Practitioner);
        let by_identifier = reference
            .and_then(|r| r.get("identifier"))
            .filter(|i| i.get("system").and_then(Value::as_str) == Some(CLIENT_ACTOR_SYSTEM))
            .and_then(|i| i.get("value").and_then(Value::as_str))
            .filter(|v| !v.is_empty() && v.len() <= 128)
            .map(|v| ConsentActor::Client(v.to_owned()));
        let actor = by_reference.or(by_identifier).ok_or_else(|| {
            invalid(
                here,
                format!(
                    "an actor is a reference `Practitioner/{{id}}` or an identifier with system \
                     {CLIENT_ACTOR_SYSTEM} naming an OAuth2 client"
                ),
            )
        })?;
        actors.push(actor);
    }
    let period = match value.get("period") {
        None => None,
        Some(p) => {
            let bound = |key: &str, end: bool| -> Result<Option<OffsetDateTime>, PolicyError> {
                match p.get(key) {
                    None => Ok(None),
                    Some(v) => v
                        .as_str()
                        .and_then(|s| instant(s, end))
                        .map(Some)
                        .ok_or_else(|| {
                            invalid(format!("{path}.period.{key}"), "not a FHIR dateTime")
                        }),
                }
            };
            let period = Period {
                start: bound("start", false)?,
                end: bound("end", true)?,
            };
            if let (Some(s), Some(e)) = (period.start, period.end)
                && e <= s
            {
                return Err(invalid(
                    format!("{path}.period"),
                    "the period ends before it starts",
                ));
            }
            Some(period)
        }
    };
    let nested = items(value, "provision", path)?;
    if depth >= 1 && !nested.is_empty() {
        return Err(invalid(
            format!("{path}.provision"),
            "exceptions are supported one level deep only",
        ));
    }
    let mut exceptions = Vec::with_capacity(nested.len());
    for (i, n) in nested.iter().enumerate() {
        exceptions.push(provision(n, &format!("{path}.provision[{i}]"), depth + 1)?);
    }
    Ok(Provision {
        kind,
        purposes,
        period,
        actors,
        classes,
        exceptions,
    })
}

/// Whether `now` lies within a FHIR `Period` (`start` and `end` dates or dateTimes, each
/// optional; partial dates cover their whole year, month or day, and `end` is inclusive at
/// its precision). `None` when the period cannot be read (not an object, a bound that is not
/// a date or dateTime, or an end before the start): callers granting access on it treat that
/// as not in force.
pub fn period_contains(period: &Value, now: OffsetDateTime) -> Option<bool> {
    let period = period.as_object()?;
    let bound = |key: &str, end: bool| -> Option<Option<OffsetDateTime>> {
        match period.get(key) {
            None => Some(None),
            Some(v) => instant(v.as_str()?, end).map(Some),
        }
    };
    let period = Period {
        start: bound("start", false)?,
        end: bound("end", true)?,
    };
    if let (Some(s), Some(e)) = (period.start, period.end)
        && e <= s
    {
        return None;
    }
    Some(period.contains(now))
}

/// A FHIR date or dateTime as an instant: a partial date (`2024`, `2024-05`, `2024-05-06`)
/// covers its whole year, month or day, so as a start it is its first instant and as an
/// (exclusive) end the first instant after it; a full dateTime as an end includes itself.
fn instant(s: &str, end: bool) -> Option<OffsetDateTime> {
    if s.contains('T') {
        let t = OffsetDateTime::parse(s, &Rfc3339).ok()?;
        return Some(if end { t + Duration::nanoseconds(1) } else { t });
    }
    let parts: Vec<&str> = s.split('-').collect();
    let num = |p: &str, len: usize| {
        (p.len() == len && p.bytes().all(|b| b.is_ascii_digit()))
            .then(|| p.parse::<i32>().ok())
            .flatten()
    };
    let at = |y: i32, m: u8, d: u8| {
        Date::from_calendar_date(y, Month::try_from(m).ok()?, d)
            .ok()
            .map(|d| d.with_time(Time::MIDNIGHT).assume_utc())
    };
    match parts.as_slice() {
        [y] => {
            let y = num(y, 4)?;
            at(if end { y + 1 } else { y }, 1, 1)
        }
        [y, m] => {
            let (y, m) = (num(y, 4)?, u8::try_from(num(m, 2)?).ok()?);
            let start = at(y, m, 1)?;
            if !end {
                return Some(start);
            }
            if m == 12 {
                at(y + 1, 1, 1)
            } else {
                at(y, m + 1, 1)
            }
        }
        [y, m, d] => {
            let start = at(
                num(y, 4)?,
                u8::try_from(num(m, 2)?).ok()?,
                u8::try_from(num(d, 2)?).ok()?,
            )?;
            Some(if end {
                start + Duration::days(1)
            } else {
                start
            })
        }
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-03-01 12:00 UTC);

    fn consent(scope: &str, provision: Value) -> Value {
        json!({
            "resourceType": "Consent",
            "status": "active",
            "scope": {"coding": [{"system": CONSENT_SCOPE_SYSTEM, "code": scope}]},
            "category": [{"text": "privacy"}],
            "patient": {"reference": "Patient/p1"},
            "provision": provision,
        })
    }

    fn purpose(code: &str) -> Value {
        json!({"system": PURPOSE_SYSTEM, "code": code})
    }

    fn class(t: &str) -> Value {
        json!({"system": RESOURCE_TYPES_SYSTEM, "code": t})
    }

    fn practitioner(id: &str) -> Value {
        json!({"reference": {"reference": format!("Practitioner/{id}")}})
    }

    fn parse(body: &Value) -> Consent {
        Consent::parse(body).unwrap().unwrap()
    }

    fn q(purpose: Purpose) -> ConsentQuery<'static> {
        ConsentQuery {
            purpose,
            rtype: ResourceType::parse("Observation").ok(),
            practitioner: None,
            client: None,
            now: NOW,
        }
    }

    fn err(body: &Value) -> String {
        Consent::parse(body).unwrap_err().to_string()
    }

    #[test]
    fn other_scopes_are_ignored() {
        let mut c = consent("treatment", json!({"type": "deny"}));
        assert_eq!(Consent::parse(&c).unwrap(), None);
        c["scope"] = json!({"text": "privacy"});
        assert_eq!(Consent::parse(&c).unwrap(), None);
    }

    #[test]
    fn a_patient_is_required() {
        let mut c = consent("patient-privacy", json!({"type": "deny"}));
        c.as_object_mut().unwrap().remove("patient");
        assert!(err(&c).contains("Consent.patient"));
        c["patient"] = json!({"reference": "Group/g1"});
        assert!(err(&c).contains("Consent.patient"));
        c["patient"] = json!({"reference": "Patient/p1"});
        assert_eq!(parse(&c).patient().as_str(), "p1");
    }

    #[test]
    fn a_provision_covers_the_specializations_of_its_purposes() {
        let deny_treat = parse(&consent(
            "patient-privacy",
            json!({"type": "deny", "purpose": [purpose("TREAT")]}),
        ));
        for p in [
            Purpose::Treat,
            Purpose::EmergencyTreat,
            Purpose::CoordinationOfCare,
        ] {
            assert_eq!(deny_treat.decide(&q(p)), Some(ProvisionType::Deny), "{p}");
        }
        for p in [Purpose::Payment, Purpose::Operations, Purpose::Research] {
            assert_eq!(deny_treat.decide(&q(p)), None, "{p}");
        }
        // A narrower provision does not cover its parent.
        let deny_emergency = parse(&consent(
            "patient-privacy",
            json!({"type": "deny", "purpose": [purpose("ETREAT")]}),
        ));
        assert_eq!(deny_emergency.decide(&q(Purpose::Treat)), None);
        // Two levels down: HTEST is a kind of SYSDEV, a kind of HOPERAT.
        let deny_ops = parse(&consent(
            "patient-privacy",
            json!({"type": "deny", "purpose": [purpose("HOPERAT")]}),
        ));
        assert_eq!(
            deny_ops.decide(&q(Purpose::Test)),
            Some(ProvisionType::Deny)
        );
        // Across consents: the denial of TREAT wins over a permit of ETREAT.
        let permit_emergency = parse(&consent(
            "patient-privacy",
            json!({"type": "permit", "purpose": [purpose("ETREAT")]}),
        ));
        assert_eq!(
            evaluate(
                [&permit_emergency, &deny_treat],
                &q(Purpose::EmergencyTreat)
            ),
            ConsentVerdict::Deny
        );
    }

    #[test]
    fn fhir_periods() {
        let at = datetime!(2026-03-01 12:00 UTC);
        for (period, want) in [
            (json!({}), Some(true)),
            (json!({"start": "2026-03-01"}), Some(true)),
            (json!({"end": "2026-03-01"}), Some(true)),
            (json!({"end": "2026-02"}), Some(false)),
            (json!({"start": "2026-03-01T12:00:01Z"}), Some(false)),
            (json!({"start": "2026", "end": "2026"}), Some(true)),
            (json!({"start": "yesterday"}), None),
            (json!({"start": "2026-04", "end": "2026-03"}), None),
            (json!("2026"), None),
        ] {
            assert_eq!(period_contains(&period, at), want, "{period}");
        }
    }

    #[test]
    fn purposes_and_status() {
        let permit = parse(&consent(
            "research",
            json!({"type": "permit", "purpose": [purpose("HRESCH")]}),
        ));
        assert_eq!(
            permit.decide(&q(Purpose::Research)),
            Some(ProvisionType::Permit)
        );
        assert_eq!(permit.decide(&q(Purpose::Treat)), None);
        // A research consent without purpose is about research only.
        let bare = parse(&consent("research", json!({"type": "permit"})));
        assert_eq!(
            bare.decide(&q(Purpose::Research)),
            Some(ProvisionType::Permit)
        );
        assert_eq!(bare.decide(&q(Purpose::Marketing)), None);
        // A privacy consent without purpose is about every purpose.
        let all = parse(&consent("patient-privacy", json!({"type": "deny"})));
        for p in Purpose::ALL {
            assert_eq!(all.decide(&q(*p)), Some(ProvisionType::Deny), "{p}");
        }
        // Not active: decides nothing.
        let mut body = consent("research", json!({"type": "permit"}));
        body["status"] = json!("inactive");
        let inactive = parse(&body);
        assert!(!inactive.is_active());
        assert_eq!(inactive.decide(&q(Purpose::Research)), None);
    }

    #[test]
    fn most_specific_wins() {
        // Deny everything, except research on Observations.
        let c = parse(&consent(
            "patient-privacy",
            json!({"type": "deny", "provision": [
                {"type": "permit", "purpose": [purpose("HRESCH")], "class": [class("Observation")]}
            ]}),
        ));
        assert_eq!(c.decide(&q(Purpose::Research)), Some(ProvisionType::Permit));
        assert_eq!(c.decide(&q(Purpose::Treat)), Some(ProvisionType::Deny));
        let mut cond = q(Purpose::Research);
        cond.rtype = ResourceType::parse("Condition").ok();
        assert_eq!(c.decide(&cond), Some(ProvisionType::Deny));
        // Permit research, except for Conditions.
        let c = parse(&consent(
            "research",
            json!({"type": "permit", "provision": [
                {"type": "deny", "class": [class("Condition")]}
            ]}),
        ));
        assert_eq!(c.decide(&q(Purpose::Research)), Some(ProvisionType::Permit));
        assert_eq!(c.decide(&cond), Some(ProvisionType::Deny));
        // An exception never applies outside its parent.
        let c = parse(&consent(
            "patient-privacy",
            json!({"type": "permit", "purpose": [purpose("TREAT")], "provision": [
                {"type": "deny", "purpose": [purpose("HRESCH")]}
            ]}),
        ));
        assert_eq!(c.decide(&q(Purpose::Research)), None);
        // A root without type is a frame: only its exceptions decide.
        let c = parse(&consent(
            "patient-privacy",
            json!({"provision": [{"type": "permit", "purpose": [purpose("HMARKT")]}]}),
        ));
        assert_eq!(
            c.decide(&q(Purpose::Marketing)),
            Some(ProvisionType::Permit)
        );
        assert_eq!(c.decide(&q(Purpose::Treat)), None);
    }

    #[test]
    fn periods() {
        let c = parse(&consent(
            "research",
            json!({"type": "permit", "period": {"start": "2026-01", "end": "2026-02-28"}}),
        ));
        let at = |now| ConsentQuery {
            now,
            ..q(Purpose::Research)
        };
        assert_eq!(c.decide(&at(datetime!(2025-12-31 23:59:59 UTC))), None);
        assert_eq!(
            c.decide(&at(datetime!(2026-01-01 00:00 UTC))),
            Some(ProvisionType::Permit)
        );
        assert_eq!(
            c.decide(&at(datetime!(2026-02-28 23:59:59 UTC))),
            Some(ProvisionType::Permit)
        );
        assert_eq!(c.decide(&at(datetime!(2026-03-01 00:00 UTC))), None);
        // dateTimes, and a deny exception for a window.
        let c = parse(&consent(
            "research",
            json!({"type": "permit", "provision": [
                {"type": "deny", "period": {"start": "2026-03-01T10:00:00Z", "end": "2026-03-01T11:00:00+00:00"}}
            ]}),
        ));
        assert_eq!(
            c.decide(&at(datetime!(2026-03-01 10:30 UTC))),
            Some(ProvisionType::Deny)
        );
        assert_eq!(
            c.decide(&at(datetime!(2026-03-01 11:00 UTC))),
            Some(ProvisionType::Deny)
        );
        assert_eq!(
            c.decide(&at(datetime!(2026-03-01 11:00:01 UTC))),
            Some(ProvisionType::Permit)
        );
        for bad in [
            json!({"start": "yesterday"}),
            json!({"start": 2026}),
            json!({"start": "2026-13"}),
            json!({"start": "2026-03-01T10:00"}),
        ] {
            let e = err(&consent(
                "research",
                json!({"type": "permit", "period": bad}),
            ));
            assert!(e.contains("Consent.provision.period.start"), "{e}");
        }
        let e = err(&consent(
            "research",
            json!({"type": "permit", "period": {"start": "2026-02", "end": "2026-01"}}),
        ));
        assert!(e.contains("ends before it starts"), "{e}");
    }

    #[test]
    fn actors() {
        let c = parse(&consent(
            "patient-privacy",
            json!({"type": "permit", "provision": [
                {"type": "deny", "actor": [practitioner("dr-a"),
                    {"reference": {"identifier": {"system": CLIENT_ACTOR_SYSTEM, "value": "app-1"}}}]}
            ]}),
        ));
        let a = Id::parse("dr-a").unwrap();
        let b = Id::parse("dr-b").unwrap();
        let by = |practitioner, client| ConsentQuery {
            practitioner,
            client,
            ..q(Purpose::Treat)
        };
        assert_eq!(c.decide(&by(Some(&a), None)), Some(ProvisionType::Deny));
        assert_eq!(c.decide(&by(Some(&b), None)), Some(ProvisionType::Permit));
        assert_eq!(c.decide(&by(None, None)), Some(ProvisionType::Permit));
        assert_eq!(
            c.decide(&by(None, Some("app-1"))),
            Some(ProvisionType::Deny)
        );
        assert_eq!(
            c.decide(&by(None, Some("app-2"))),
            Some(ProvisionType::Permit)
        );
        for bad in [
            json!({"reference": {"reference": "Organization/o1"}}),
            json!({"reference": {"identifier": {"system": "urn:other", "value": "x"}}}),
            json!({"role": {"text": "x"}}),
        ] {
            let e = err(&consent(
                "patient-privacy",
                json!({"type": "deny", "actor": [bad]}),
            ));
            assert!(e.contains("Consent.provision.actor[0].reference"), "{e}");
        }
    }

    #[test]
    fn unknown_codes_are_refused() {
        let cases = [
            (json!({"type": "perhaps"}), "Consent.provision.type"),
            (
                json!({"type": "deny", "purpose": [purpose("NOPE")]}),
                "Consent.provision.purpose[0]",
            ),
            (
                json!({"type": "deny", "purpose": [{"system": "urn:x", "code": "TREAT"}]}),
                "Consent.provision.purpose[0]",
            ),
            (
                json!({"type": "deny", "class": [class("Spaceship")]}),
                "Consent.provision.class[0]",
            ),
            (
                json!({"type": "deny", "class": [{"code": "Observation"}]}),
                "Consent.provision.class[0]",
            ),
            (
                json!({"type": "deny", "provision": [{"type": "permit", "provision": [{"type": "deny"}]}]}),
                "Consent.provision.provision[0].provision",
            ),
        ];
        for (provision, path) in cases {
            let e = err(&consent("patient-privacy", provision));
            assert!(e.contains(path), "{path}: {e}");
        }
    }

    #[test]
    fn contradictions_are_refused() {
        let contradicting = json!({"provision": [
            {"type": "permit", "purpose": [purpose("HRESCH"), purpose("TREAT")]},
            {"type": "deny", "purpose": [purpose("HRESCH")], "period": {"start": "2026"}}
        ]});
        let e = err(&consent("patient-privacy", contradicting));
        assert!(e.contains("Consent.provision.provision[1]"), "{e}");
        assert!(
            e.contains("contradicts Consent.provision.provision[0]"),
            "{e}"
        );
        assert!(e.contains("HRESCH") && !e.contains("TREAT"), "{e}");
        // Not contradictions: other purposes, disjoint periods, other classes or actors,
        // the same type twice, or parent and exception.
        let fine = [
            json!({"provision": [
                {"type": "permit", "purpose": [purpose("HRESCH")]},
                {"type": "deny", "purpose": [purpose("HMARKT")]}]}),
            json!({"provision": [
                {"type": "permit", "period": {"end": "2025-12-31"}},
                {"type": "deny", "period": {"start": "2026-01-01"}}]}),
            json!({"provision": [
                {"type": "permit", "class": [class("Observation")]},
                {"type": "deny", "class": [class("Condition")]}]}),
            json!({"provision": [
                {"type": "permit", "actor": [practitioner("a")]},
                {"type": "deny", "actor": [practitioner("b")]}]}),
            json!({"provision": [{"type": "deny"}, {"type": "deny"}]}),
            json!({"type": "permit", "provision": [{"type": "deny"}]}),
        ];
        for provision in fine {
            assert!(
                Consent::parse(&consent("patient-privacy", provision.clone())).is_ok(),
                "{provision}"
            );
        }
    }

    #[test]
    fn deny_wins_across_consents_and_defaults_decide_otherwise() {
        let permit = parse(&consent("research", json!({"type": "permit"})));
        let deny = parse(&consent(
            "patient-privacy",
            json!({"type": "deny", "purpose": [purpose("HRESCH")]}),
        ));
        let r = q(Purpose::Research);
        assert_eq!(evaluate([&permit], &r), ConsentVerdict::Permit);
        assert_eq!(evaluate([&permit, &deny], &r), ConsentVerdict::Deny);
        assert_eq!(evaluate([&deny, &permit], &r), ConsentVerdict::Deny);
        assert_eq!(evaluate([], &r), ConsentVerdict::NoConsent);
        let defaults = ConsentDefaults::default();
        assert!(!ConsentVerdict::NoConsent.permits(&defaults, Purpose::Research));
        assert!(!ConsentVerdict::NoConsent.permits(&defaults, Purpose::Marketing));
        assert!(ConsentVerdict::NoConsent.permits(&defaults, Purpose::Treat));
        assert!(ConsentVerdict::NoConsent.permits(&defaults, Purpose::EmergencyTreat));
        assert!(ConsentVerdict::NoConsent.permits(&defaults, Purpose::Operations));
        assert!(ConsentVerdict::Permit.permits(&defaults, Purpose::Research));
        assert!(!ConsentVerdict::Deny.permits(&defaults, Purpose::Treat));
        let mut strict = defaults;
        strict.set(Purpose::Operations, false);
        assert!(!ConsentVerdict::NoConsent.permits(&strict, Purpose::Operations));
        assert!(ConsentDefaults::parse_setting("permit").unwrap());
        assert!(!ConsentDefaults::parse_setting("deny").unwrap());
        assert!(ConsentDefaults::parse_setting("Deny").is_err());
    }

    #[test]
    fn unreadable_consents_deny_everything() {
        let c = Consent::unreadable(Id::parse("p1").unwrap());
        for p in Purpose::ALL {
            assert_eq!(c.decide(&q(*p)), Some(ProvisionType::Deny), "{p}");
        }
    }

    #[test]
    fn debug_hides_provisions() {
        let c = parse(&consent(
            "patient-privacy",
            json!({"type": "deny", "actor": [practitioner("dr-secret")]}),
        ));
        assert!(!format!("{c:?}").contains("dr-secret"));
    }
}
