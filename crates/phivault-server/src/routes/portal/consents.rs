//! `GET /portal/consents`: for each purpose a patient decides on (treatment, payment, running
//! the service, public health, research, marketing), what the server decides today and why
//! (their own consent, or the standard setting); `POST /portal/consents` (`purpose`,
//! `decision` = `grant` | `withdraw`) changes it by writing real FHIR `Consent`s through the
//! API as the patient, so the next request of anyone, apps included, is decided on it.
//!
//! How a decision is written ([`plan`]), keeping to `phivault_policy::consent`'s rules (only
//! active consents count; across consents deny wins; with none applying, the purpose's
//! default decides):
//! - **Grant**: the patient's active consents that deny this purpose and nothing more specific
//!   ("simple": one provision, purposes only) are set `inactive` (or lose this purpose when
//!   they list several); then, unless one already does, a new active Consent permits it.
//! - **Withdraw**: the simple consents permitting it are set `inactive` (or lose this
//!   purpose); then, when the purpose would still be permitted (a default that permits, or a
//!   more detailed consent), a new active Consent denies it.
//! - New consents are written before old ones are changed, so that at no moment is more
//!   permitted than before or after the change (a new deny holds before the old permit goes;
//!   a new permit does nothing while the old deny stands).
//! - Consents with more detailed rules (named people or apps, kinds of records, periods,
//!   exceptions) are never changed here: they are listed, and the status says when they still
//!   limit a purpose.

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;
use phivault_fhir::{Id, ResourceType};
use phivault_policy::{
    CONSENT_SCOPE_SYSTEM, Consent, ConsentDefaults, ConsentQuery, ConsentVerdict, PURPOSE_SYSTEM,
    Purpose, evaluate,
};
use serde::Serialize;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::text::{date_text, resources};
use super::{
    Connect, Query, Visit, checked_form, done_message, not_shown, problem, render, unavailable,
    visit,
};
use crate::AppState;
use crate::edge::AuditSlot;
use crate::web::session::see_other;

/// The purposes the page offers: (purpose, title, what it means).
const CHOICES: &[(Purpose, &str, &str)] = &[
    (
        Purpose::Treat,
        "Treatment",
        "Doctors, nurses and other clinicians caring for you can see and add to your record. \
         If you say no, they can still open it in an emergency, and every such access is \
         recorded and reviewed.",
    ),
    (
        Purpose::Payment,
        "Payment",
        "Your record can be used to bill for your care and to handle insurance claims.",
    ),
    (
        Purpose::Operations,
        "Running the service",
        "Your record can be used to run, check and improve the healthcare service.",
    ),
    (
        Purpose::PublicHealth,
        "Public health",
        "Your record can be shared with public health services where the law allows it.",
    ),
    (
        Purpose::Research,
        "Research",
        "Approved research apps and researchers can use your record for health research.",
    ),
    (
        Purpose::Marketing,
        "Marketing",
        "Your record can be used to tell you about products and services.",
    ),
];

/// The confirmations of this page.
const DONE: &[(&str, &str)] = &[
    ("granted", "Thank you. Your consent has been recorded."),
    (
        "withdrawn",
        "Your consent has been withdrawn. It applies from now on, to every request.",
    ),
    (
        "limited",
        "Your choice has been recorded, but another, more detailed consent record still \
         limits this. Your care provider can help you change it.",
    ),
];

/// LOINC "Patient Consent": the category of the consents written here.
const CONSENT_CATEGORY: &str = "59284-0";
/// HL7 v3 ActCode: the policy rule of an opt-in or opt-out.
const ACT_CODE_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";

/// Grant or withdraw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Decision {
    /// Permit the purpose.
    Grant,
    /// Deny the purpose.
    Withdraw,
}

impl Decision {
    fn parse(s: &str) -> Option<Decision> {
        match s {
            "grant" => Some(Decision::Grant),
            "withdraw" => Some(Decision::Withdraw),
            _ => None,
        }
    }
}

/// What the server decides for a purpose, over every kind of record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Standing {
    /// Permitted for every kind of record.
    Allowed,
    /// Permitted for none.
    Denied,
    /// Permitted for some kinds only.
    Partly,
}

/// A purpose's standing and whether a consent of the patient's decides it (else the default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Status {
    pub(super) standing: Standing,
    /// A consent applies (for at least one kind of record).
    pub(super) by_consent: bool,
}

/// The patient's consents as the decisions read them (an unreadable one denies everything,
/// as the server takes it).
fn parsed(bodies: &[Value], patient: &Id) -> Vec<Consent> {
    bodies
        .iter()
        .filter_map(|b| match Consent::parse(b) {
            Ok(c) => c,
            Err(_) => Some(Consent::unreadable(patient.clone())),
        })
        .filter(Consent::is_active)
        .collect()
}

/// What `consents` (else `defaults`) decide for `purpose` for anyone not named in a consent,
/// over every kind of record of a patient's compartment, at `now`.
pub(super) fn status(
    consents: &[Consent],
    purpose: Purpose,
    defaults: &ConsentDefaults,
    now: OffsetDateTime,
) -> Status {
    let (mut allowed, mut denied, mut by_consent) = (false, false, false);
    for rtype in ResourceType::all().filter(ResourceType::in_patient_compartment) {
        let query = ConsentQuery {
            purpose,
            rtype: Some(rtype),
            practitioner: None,
            client: None,
            now,
        };
        let verdict = evaluate(consents, &query);
        by_consent |= verdict != ConsentVerdict::NoConsent;
        if verdict.permits(defaults, purpose) {
            allowed = true;
        } else {
            denied = true;
        }
    }
    let standing = match (allowed, denied) {
        (true, false) => Standing::Allowed,
        (false, _) => Standing::Denied,
        (true, true) => Standing::Partly,
    };
    Status {
        standing,
        by_consent,
    }
}

/// A consent the page may change: active, of scope patient-privacy or research, with one
/// provision of a type, listing purposes (a research consent without purposes means research)
/// and nothing else. Its type and purpose codes; `None` for any other.
pub(super) fn simple(body: &Value) -> Option<(&'static str, Vec<String>)> {
    if body.get("status").and_then(Value::as_str) != Some("active") {
        return None;
    }
    let scope = body
        .pointer("/scope/coding")
        .and_then(Value::as_array)?
        .iter()
        .find(|c| {
            c.get("system")
                .and_then(Value::as_str)
                .is_none_or(|s| s == CONSENT_SCOPE_SYSTEM)
        })?
        .get("code")
        .and_then(Value::as_str)?;
    let provision = body.get("provision")?.as_object()?;
    // Anything but a type and purposes makes the provision more specific than a purpose.
    if provision.keys().any(|k| k != "type" && k != "purpose") {
        return None;
    }
    let kind = match provision.get("type").and_then(Value::as_str)? {
        "permit" => "permit",
        "deny" => "deny",
        _ => return None,
    };
    let mut purposes = Vec::new();
    for p in provision
        .get("purpose")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if p.get("system")
            .and_then(Value::as_str)
            .is_some_and(|s| s != PURPOSE_SYSTEM)
        {
            return None;
        }
        purposes.push(p.get("code").and_then(Value::as_str)?.to_owned());
    }
    match (scope, purposes.is_empty()) {
        ("research", true) => Some((kind, vec![Purpose::Research.as_str().to_owned()])),
        ("research" | "patient-privacy", false) => Some((kind, purposes)),
        _ => None,
    }
}

/// The changes one decision makes: consents to write anew, then stored ones to update.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Plan {
    /// New Consents (POST), written first.
    pub(super) create: Vec<Value>,
    /// Changed Consents (PUT, each with its `id`).
    pub(super) update: Vec<Value>,
}

/// A new Consent of `patient` that permits or denies `purpose`.
pub(super) fn new_consent(patient: &Id, purpose: Purpose, permit: bool, now: &str) -> Value {
    let scope = if purpose == Purpose::Research {
        "research"
    } else {
        "patient-privacy"
    };
    let me = format!("Patient/{patient}");
    json!({
        "resourceType": "Consent",
        "status": "active",
        "scope": { "coding": [{ "system": CONSENT_SCOPE_SYSTEM, "code": scope }] },
        "category": [{ "coding": [{
            "system": "http://loinc.org",
            "code": CONSENT_CATEGORY,
            "display": "Patient Consent",
        }] }],
        "patient": { "reference": me },
        "dateTime": now,
        "performer": [{ "reference": me }],
        "policyRule": { "coding": [{
            "system": ACT_CODE_SYSTEM,
            "code": if permit { "OPTIN" } else { "OPTOUT" },
        }] },
        "provision": {
            "type": if permit { "permit" } else { "deny" },
            "purpose": [{ "system": PURPOSE_SYSTEM, "code": purpose.as_str() }],
        },
    })
}

/// `body` without `purpose`: inactive when it was its only purpose, else the same consent
/// for its other purposes.
fn without(body: &Value, purpose: Purpose) -> Value {
    let mut changed = body.clone();
    if let Some(o) = changed.as_object_mut() {
        // The server sets `meta`; a narrative would no longer say what the consent says.
        o.remove("meta");
        o.remove("text");
    }
    let rest: Vec<Value> = body
        .pointer("/provision/purpose")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|p| p.get("code").and_then(Value::as_str) != Some(purpose.as_str()))
        .cloned()
        .collect();
    if rest.is_empty() {
        changed["status"] = json!("inactive");
    } else {
        changed["provision"]["purpose"] = Value::Array(rest);
    }
    changed
}

/// The writes that carry out `decision` on `purpose` for `patient`, whose stored Consents
/// are `bodies` (see the module docs).
pub(super) fn plan(
    bodies: &[Value],
    patient: &Id,
    purpose: Purpose,
    decision: Decision,
    defaults: &ConsentDefaults,
    now: OffsetDateTime,
) -> Plan {
    let (against, for_it) = match decision {
        Decision::Grant => ("deny", "permit"),
        Decision::Withdraw => ("permit", "deny"),
    };
    let code = purpose.as_str();
    let mut update = Vec::new();
    let mut after: Vec<Value> = Vec::with_capacity(bodies.len());
    let mut already = false;
    for body in bodies {
        match simple(body) {
            Some((kind, purposes)) if kind == against && purposes.iter().any(|p| p == code) => {
                let changed = without(body, purpose);
                if body.get("id").and_then(Value::as_str).is_some() {
                    after.push(changed.clone());
                    update.push(changed);
                } else {
                    // Cannot be updated without an id: it stays as it is.
                    after.push(body.clone());
                }
            }
            Some((kind, purposes)) => {
                already |= kind == for_it && purposes.iter().any(|p| p == code);
                after.push(body.clone());
            }
            None => after.push(body.clone()),
        }
    }
    let stamp = now.format(&Rfc3339).unwrap_or_default();
    let needed = match decision {
        // An explicit record of the patient's agreement, once.
        Decision::Grant => !already,
        // A denial when withdrawing the permits is not enough.
        Decision::Withdraw => {
            !already
                && status(&parsed(&after, patient), purpose, defaults, now).standing
                    != Standing::Denied
        }
    };
    let create = if needed {
        vec![new_consent(
            patient,
            purpose,
            decision == Decision::Grant,
            &stamp,
        )]
    } else {
        Vec::new()
    };
    Plan { create, update }
}

/// One purpose as the page shows it.
#[derive(Debug, Clone, Serialize)]
struct ChoiceRow {
    code: &'static str,
    title: &'static str,
    what: &'static str,
    /// `allowed`, `denied` or `partly` (a class of the badge).
    standing: &'static str,
    /// The status in words.
    status: &'static str,
}

/// The status of a purpose in words.
fn status_text(s: Status) -> &'static str {
    match (s.standing, s.by_consent) {
        (Standing::Allowed, true) => "Allowed: you agreed",
        (Standing::Allowed, false) => "Allowed (the standard setting)",
        (Standing::Denied, true) => "Not allowed: you said no",
        (Standing::Denied, false) => "Not allowed unless you agree (the standard setting)",
        (Standing::Partly, _) => "Allowed for some kinds of records only",
    }
}

/// The patient's active Consents, read as them.
async fn stored(v: &Visit<'_>) -> Result<Vec<Value>, StatusCode> {
    let bundle = v
        .json(&format!(
            "/fhir/Consent?patient=Patient/{}&status=active&_count=1000",
            v.patient
        ))
        .await?;
    Ok(resources(&bundle)
        .into_iter()
        .filter(|c| c.get("status").and_then(Value::as_str) == Some("active"))
        .cloned()
        .collect())
}

/// `GET /portal/consents`.
pub(super) async fn page(
    State(state): State<AppState>,
    slot: AuditSlot,
    connect: Connect,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    let v = match visit(&state, &slot, connect, &headers, "/portal/consents").await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let bodies = match stored(&v).await {
        Ok(b) => b,
        Err(s) => return not_shown(&state, &headers, "consents", s),
    };
    let consents = parsed(&bodies, &v.patient);
    let now = OffsetDateTime::now_utc();
    let choices: Vec<ChoiceRow> = CHOICES
        .iter()
        .map(|(purpose, title, what)| {
            let s = status(&consents, *purpose, &state.consent_defaults, now);
            ChoiceRow {
                code: purpose.as_str(),
                title,
                what,
                standing: match s.standing {
                    Standing::Allowed => "allowed",
                    Standing::Denied => "denied",
                    Standing::Partly => "partly",
                },
                status: status_text(s),
            }
        })
        .collect();
    // Consents with more detailed rules: shown, never changed here.
    let others: Vec<Value> = bodies
        .iter()
        .filter(|b| simple(b).is_none())
        .map(|b| {
            json!({
                "date": b.get("dateTime").and_then(Value::as_str).map(date_text).unwrap_or_default(),
            })
        })
        .collect();
    let mut context = json!({ "choices": choices, "others": others });
    if let Some(d) = done_message(&Query::of(raw.as_deref()), DONE) {
        context["done"] = json!(d);
    }
    render(
        &state,
        &headers,
        StatusCode::OK,
        "portal/consents.html",
        "consents",
        context,
    )
}

/// `POST /portal/consents` `purpose`, `decision`.
pub(super) async fn decide(
    State(state): State<AppState>,
    slot: AuditSlot,
    connect: Connect,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let form = match checked_form(&state, &headers, body, "consents").await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let v = match visit(&state, &slot, connect, &headers, "/portal/consents").await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let purpose = form
        .one("purpose")
        .and_then(|p| CHOICES.iter().find(|(c, _, _)| c.as_str() == p))
        .map(|(c, _, _)| *c);
    let decision = form.one("decision").and_then(Decision::parse);
    let (Some(purpose), Some(decision)) = (purpose, decision) else {
        return problem(
            &state,
            &headers,
            StatusCode::BAD_REQUEST,
            "consents",
            "That choice was not understood",
            "Please go back to the consents page and use one of its buttons.",
        );
    };
    let bodies = match stored(&v).await {
        Ok(b) => b,
        Err(s) => return not_shown(&state, &headers, "consents", s),
    };
    let now = OffsetDateTime::now_utc();
    let plan = plan(
        &bodies,
        &v.patient,
        purpose,
        decision,
        &state.consent_defaults,
        now,
    );
    let mut after = bodies.clone();
    for consent in &plan.create {
        match v
            .api
            .send_json(Method::POST, "/fhir/Consent", FHIR_JSON, consent)
            .await
        {
            Ok(a) if a.ok() => after.push(a.json()),
            Ok(_) => return not_saved(&state, &headers),
            Err(_) => return unavailable(&state, &headers, "consents"),
        }
    }
    for consent in &plan.update {
        let Some(id) = consent.get("id").and_then(Value::as_str) else {
            continue;
        };
        let path = format!("/fhir/Consent/{}", urlencoding::encode(id));
        match v
            .api
            .send_json(Method::PUT, &path, FHIR_JSON, consent)
            .await
        {
            Ok(a) if a.ok() => {
                after.retain(|b| b.get("id").and_then(Value::as_str) != Some(id));
                after.push(a.json());
            }
            Ok(_) => return not_saved(&state, &headers),
            Err(_) => return unavailable(&state, &headers, "consents"),
        }
    }
    let reached = status(
        &parsed(&after, &v.patient),
        purpose,
        &state.consent_defaults,
        now,
    );
    let wanted = match decision {
        Decision::Grant => Standing::Allowed,
        Decision::Withdraw => Standing::Denied,
    };
    let done = match decision {
        _ if reached.standing != wanted => "limited",
        Decision::Grant => "granted",
        Decision::Withdraw => "withdrawn",
    };
    see_other(&format!("/portal/consents?done={done}"))
}

/// The media type of the Consents written.
const FHIR_JSON: &str = "application/fhir+json";

/// The page of a consent the API did not accept.
fn not_saved(state: &AppState, headers: &HeaderMap) -> Response {
    problem(
        state,
        headers,
        StatusCode::CONFLICT,
        "consents",
        "Your choice could not be saved",
        "Nothing was changed, or only part of it. Please reload the consents page to see \
         where things stand, and try again.",
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use time::macros::datetime;

    use super::*;

    const NOW: OffsetDateTime = datetime!(2025-01-01 00:00 UTC);

    fn pid() -> Id {
        Id::parse("p1").unwrap()
    }

    fn with_id(mut c: Value, id: &str) -> Value {
        c["id"] = json!(id);
        c["meta"] = json!({"versionId": "1"});
        c
    }

    fn standing(bodies: &[Value], purpose: Purpose) -> Status {
        status(
            &parsed(bodies, &pid()),
            purpose,
            &ConsentDefaults::default(),
            NOW,
        )
    }

    /// The stored consents after `plan` is carried out (ids for new ones: n1, n2...).
    fn apply(bodies: &[Value], plan: &Plan) -> Vec<Value> {
        let mut out: Vec<Value> = bodies.to_vec();
        for (i, c) in plan.create.iter().enumerate() {
            out.push(with_id(c.clone(), &format!("n{i}")));
        }
        for c in &plan.update {
            let id = c["id"].as_str().unwrap();
            out.retain(|b| b["id"] != id);
            out.push(c.clone());
        }
        out
    }

    fn decide(bodies: &[Value], purpose: Purpose, decision: Decision) -> (Plan, Vec<Value>) {
        let p = plan(
            bodies,
            &pid(),
            purpose,
            decision,
            &ConsentDefaults::default(),
            NOW,
        );
        let after = apply(bodies, &p);
        (p, after)
    }

    #[test]
    fn the_new_consents_are_what_the_policy_reads() {
        let c = new_consent(&pid(), Purpose::Research, true, "2025-01-01T00:00:00Z");
        let parsed = Consent::parse(&c).unwrap().unwrap();
        assert!(parsed.is_active());
        assert_eq!(c["scope"]["coding"][0]["code"], "research");
        assert_eq!(simple(&c), Some(("permit", vec!["HRESCH".to_owned()])));
        let d = new_consent(&pid(), Purpose::Treat, false, "2025-01-01T00:00:00Z");
        assert_eq!(d["scope"]["coding"][0]["code"], "patient-privacy");
        assert_eq!(simple(&d), Some(("deny", vec!["TREAT".to_owned()])));
        assert_eq!(d["patient"]["reference"], "Patient/p1");
    }

    #[test]
    fn research_is_granted_then_withdrawn() {
        assert_eq!(
            standing(&[], Purpose::Research),
            Status {
                standing: Standing::Denied,
                by_consent: false
            }
        );
        let (p, after) = decide(&[], Purpose::Research, Decision::Grant);
        assert_eq!((p.create.len(), p.update.len()), (1, 0));
        assert_eq!(
            standing(&after, Purpose::Research),
            Status {
                standing: Standing::Allowed,
                by_consent: true
            }
        );
        // Granting again writes nothing.
        let (p2, _) = decide(&after, Purpose::Research, Decision::Grant);
        assert!(p2.create.is_empty() && p2.update.is_empty());
        // Withdrawing sets the permit inactive; research is then denied by default, so no
        // deny consent is needed.
        let (p, after) = decide(&after, Purpose::Research, Decision::Withdraw);
        assert_eq!((p.create.len(), p.update.len()), (0, 1));
        assert_eq!(p.update[0]["status"], "inactive");
        assert!(p.update[0].get("meta").is_none());
        assert_eq!(
            standing(&after, Purpose::Research).standing,
            Standing::Denied
        );
        // Treatment is untouched throughout.
        assert_eq!(standing(&after, Purpose::Treat).standing, Standing::Allowed);
    }

    #[test]
    fn treatment_is_withdrawn_with_a_denial_and_granted_again() {
        // Treatment is permitted by default: withdrawing needs a deny consent.
        let (p, after) = decide(&[], Purpose::Treat, Decision::Withdraw);
        assert_eq!((p.create.len(), p.update.len()), (1, 0));
        assert_eq!(p.create[0]["provision"]["type"], "deny");
        assert_eq!(
            standing(&after, Purpose::Treat),
            Status {
                standing: Standing::Denied,
                by_consent: true
            }
        );
        // Granting sets the denial inactive and records the agreement.
        let (p, after) = decide(&after, Purpose::Treat, Decision::Grant);
        assert_eq!((p.create.len(), p.update.len()), (1, 1));
        assert_eq!(p.update[0]["status"], "inactive");
        assert_eq!(standing(&after, Purpose::Treat).standing, Standing::Allowed);
    }

    #[test]
    fn a_consent_of_several_purposes_loses_only_the_one_decided() {
        let both = with_id(
            json!({
                "resourceType": "Consent", "status": "active",
                "scope": {"coding": [{"system": CONSENT_SCOPE_SYSTEM, "code": "patient-privacy"}]},
                "category": [{"coding": [{"system": "http://loinc.org", "code": CONSENT_CATEGORY}]}],
                "patient": {"reference": "Patient/p1"},
                "provision": {"type": "deny", "purpose": [
                    {"system": PURPOSE_SYSTEM, "code": "HRESCH"},
                    {"system": PURPOSE_SYSTEM, "code": "HMARKT"},
                ]},
            }),
            "c1",
        );
        let bodies = [both];
        let (p, after) = decide(&bodies, Purpose::Research, Decision::Grant);
        assert_eq!(p.update.len(), 1);
        assert_eq!(p.update[0]["status"], "active");
        assert_eq!(
            p.update[0]["provision"]["purpose"],
            json!([{"system": PURPOSE_SYSTEM, "code": "HMARKT"}])
        );
        assert_eq!(
            standing(&after, Purpose::Research).standing,
            Standing::Allowed
        );
        assert_eq!(
            standing(&after, Purpose::Marketing),
            Status {
                standing: Standing::Denied,
                by_consent: true
            }
        );
    }

    #[test]
    fn detailed_consents_are_left_alone_and_still_count() {
        // A denial of research for observations only: not simple, never changed.
        let detailed = with_id(
            json!({
                "resourceType": "Consent", "status": "active",
                "scope": {"coding": [{"system": CONSENT_SCOPE_SYSTEM, "code": "patient-privacy"}]},
                "patient": {"reference": "Patient/p1"},
                "provision": {"type": "deny",
                    "purpose": [{"system": PURPOSE_SYSTEM, "code": "HRESCH"}],
                    "class": [{"system": "http://hl7.org/fhir/resource-types", "code": "Observation"}]},
            }),
            "d1",
        );
        assert_eq!(simple(&detailed), None);
        let bodies = [detailed];
        let (p, after) = decide(&bodies, Purpose::Research, Decision::Grant);
        assert!(p.update.is_empty());
        assert_eq!(p.create.len(), 1);
        assert_eq!(
            standing(&after, Purpose::Research).standing,
            Standing::Partly
        );
        // A research consent without purposes is simple (it means research).
        let research = with_id(
            json!({
                "resourceType": "Consent", "status": "active",
                "scope": {"coding": [{"system": CONSENT_SCOPE_SYSTEM, "code": "research"}]},
                "patient": {"reference": "Patient/p1"},
                "provision": {"type": "permit"},
            }),
            "r1",
        );
        assert_eq!(
            simple(&research),
            Some(("permit", vec!["HRESCH".to_owned()]))
        );
        let (p, after) = decide(&[research], Purpose::Research, Decision::Withdraw);
        assert_eq!(p.update[0]["status"], "inactive");
        assert!(p.create.is_empty());
        assert_eq!(
            standing(&after, Purpose::Research).standing,
            Standing::Denied
        );
        // A patient-privacy consent without purposes covers every purpose: not simple.
        let all = json!({
            "status": "active",
            "scope": {"coding": [{"code": "patient-privacy"}]},
            "provision": {"type": "deny"},
        });
        assert_eq!(simple(&all), None);
        assert_eq!(simple(&json!({"status": "inactive"})), None);
    }

    #[test]
    fn an_unreadable_stored_consent_denies_as_the_server_takes_it() {
        let broken = json!({
            "resourceType": "Consent", "status": "active",
            "scope": {"coding": [{"system": CONSENT_SCOPE_SYSTEM, "code": "patient-privacy"}]},
            "patient": {"reference": "Patient/p1"},
            "provision": {"type": "maybe"},
        });
        assert_eq!(
            standing(&[broken], Purpose::Treat).standing,
            Standing::Denied
        );
    }

    #[test]
    fn statuses_in_words() {
        let s = |standing, by_consent| {
            status_text(Status {
                standing,
                by_consent,
            })
        };
        assert_eq!(s(Standing::Allowed, true), "Allowed: you agreed");
        assert_eq!(s(Standing::Denied, true), "Not allowed: you said no");
        assert!(s(Standing::Denied, false).contains("standard setting"));
        assert!(s(Standing::Partly, true).contains("some kinds"));
        assert_eq!(Decision::parse("grant"), Some(Decision::Grant));
        assert_eq!(Decision::parse("GRANT"), None);
    }
}
