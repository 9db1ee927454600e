//! Authorization of the FHIR interactions, in one place.
//!
//! Every interaction becomes an [`AccessRequest`] decided by the policy engine (default deny):
//! the principal from the token, the purpose of use (`X-Purpose-Of-Use`, else the role's
//! default), the resource's type, compartment patient and sensitivity labels as stored (and as
//! sent, for writes), the principal's care relationship with that patient, the consent state
//! and any break-the-glass claim.
//!
//! Rules kept here:
//! - **Decide on what is stored.** Read, vread, history, update and delete load the current
//!   resource first and decide on its compartment and labels (a deleted resource: on its last
//!   live version); update decides on the new body too, so moving a resource into another
//!   compartment needs both; vread and history also decide on every version they return.
//!   An instance's history and its versions are decided like a read of the resource as well
//!   (the query rules, which a resource outside every compartment matches, never open one).
//! - **Existence never leaks.** A resource that does not exist is decided as one of the same
//!   type in a compartment the principal cannot reach (a fresh random patient id, or the
//!   directory): the refusal is the same as for an existing resource out of reach, and only a
//!   principal who could reach it learns "not found". A refusal for a labelled resource says
//!   `label-not-granted` only to a principal who could read it without the label.
//! - **Searches never return or count what may not be read.** The store restricts the search
//!   in SQL to the compartments (and the labels) the principal may read ([`SearchScope`]);
//!   every hit is then decided again (defence in depth; a disagreement is logged as an error
//!   and the hit dropped).
//! - **Consent is read at decision time.** Each decision about a patient's resource reads that
//!   patient's active `Consent`s (`Consent?patient=X&status=active` through the store, with a
//!   system-level scope: not through the requesting principal's access) and evaluates them
//!   for the purpose of use, the resource type and the principal (its Practitioner, its
//!   OAuth2 client); with no applicable provision, the configured default of the purpose
//!   decides. Consents read are kept in the process memo ([`crate::ConsentMemo`]) under
//!   the consent generation, which every Consent write (any process) replaces in its own
//!   transaction; each request reads the generation before any consent (when it is
//!   authenticated, in the same statement as the token cache's generation) and takes from the
//!   memo only what was read under the same value, so a withdrawal (status `inactive`, or a
//!   deny provision) binds the next request of every principal, tokens already issued
//!   included. Searches apply the same verdicts in SQL: patients whose consent denies are left
//!   out of the scope (or, for a purpose denied by default, only the patients whose consent
//!   permits are in it), so results and totals agree with the per-hit decisions. A patient's
//!   own access does not depend on consent.
//! - **Purposes are the role's.** A purpose of use the principal's role may not assert
//!   (configured per role, the v3-ActReason hierarchy applied) is refused with 403 before
//!   anything else; the policies refuse it too.
//! - **Break-the-glass** (`X-Purpose-Of-Use: ETREAT` with `X-Break-Glass-Reason`): a clinician's
//!   claim for one hour. ETREAT without a claim in force is refused for a patient's data. It passes a denying consent too (flagged and reviewed like any
//!   break-the-glass access): an emergency is when the record is needed most. An access allowed only because of it is recorded before any data is
//!   returned (`X-Break-Glass: recorded`); later requests with ETREAT use the recorded claim
//!   while it lasts.
//!
//! For the audit trail, the guard notes in the request's [`AuditSlot`] the effective purpose
//! of use, every compartment patient it decided on (allowed or denied: a refused request's
//! entry names the patient too, when there was exactly one), every patient whose resources a
//! search returns or sorts (so each finds the search in their access log), the sensitivity
//! labels (codes) of every resource it allowed or a search returns or sorts, and of every
//! resource it refused (in the entry of a request that was not served), and whether an
//! allowed decision relied on break-the-glass (a new claim or a recorded one).

use std::collections::HashSet;
use std::sync::Mutex;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::Response;
use phivault_auth::{Authenticated, BreakGlassRecord};
use phivault_fhir::{Id, ResourceType, ValidResource, compartment_patient};
use phivault_policy::{
    AccessRequest, Action, Authorized, BreakGlass, DecisionContext, Denied, DenyReason, Label,
    PrincipalKind, Purpose, ResourceRef, Role, labels_of,
};
use phivault_store::{Facts as StoredFacts, StoreError, StoredResource, Unreleased};
use serde_json::Value;
use time::OffsetDateTime;

use crate::edge::{AuditSlot, ConsentGeneration};
use crate::{ApiError, AppState};

mod consents;
mod research;
mod search;
mod sorted;

use consents::ConsentCache;
use search::SearchPlan;

/// `X-Purpose-Of-Use`: an HL7 v3 PurposeOfUse code (`TREAT`, `ETREAT`, ...).
pub(crate) static X_PURPOSE_OF_USE: HeaderName = HeaderName::from_static("x-purpose-of-use");
/// `X-Break-Glass-Reason`: why an emergency access is claimed (with `ETREAT`).
pub(crate) static X_BREAK_GLASS_REASON: HeaderName =
    HeaderName::from_static("x-break-glass-reason");
/// `X-Break-Glass` on a response: `recorded` when this request made a break-the-glass access.
pub(crate) static X_BREAK_GLASS: HeaderName = HeaderName::from_static("x-break-glass");

/// Longest break-the-glass reason accepted, in characters.
const MAX_REASON_CHARS: usize = 500;

/// Every `meta.security` code that is a sensitivity label (canonical codes and the aliases
/// [`Label`] reads), for keeping labelled resources out of searches by principals whose label
/// grants are per patient. Matching by code alone may leave out a little more than needed
/// (the same code in another system), never less.
const LABEL_CODES: &str = "R,V,PSY,MH,BH,ETH,SUD,ETHUD,OPIOIDUD,HIV";

/// The resource a request is about, as currently stored.
pub(crate) enum Current {
    /// The current version, held by the store until a decision releases it.
    Live(Unreleased<StoredResource>),
    /// Deleted; the deletion's version and the facts of the last live version, when readable.
    Deleted {
        /// The deletion's version.
        version: u64,
        /// The facts of the version before the deletion.
        last: Option<StoredFacts>,
    },
    /// Never existed.
    Missing,
    /// In an erased patient compartment: its key is destroyed, no version can be read.
    Erased,
}

impl Current {
    /// The answer for a resource that is not live: 410 when deleted, else 404.
    pub(crate) fn absent(&self, rtype: ResourceType, id: &Id) -> ApiError {
        match self {
            Current::Deleted { version, .. } => ApiError::Store(StoreError::Gone {
                rtype: rtype.to_string(),
                id: id.to_string(),
                version: *version,
            }),
            Current::Erased => ApiError::Store(StoreError::Erased {
                rtype: rtype.to_string(),
                id: id.to_string(),
            }),
            Current::Live(_) | Current::Missing => ApiError::Store(StoreError::NotFound {
                rtype: rtype.to_string(),
                id: id.to_string(),
            }),
        }
    }
}

/// Where a break-the-glass claim of a decision came from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ClaimSource {
    /// No claim.
    None,
    /// `X-Break-Glass-Reason` on this request: recorded when relied on.
    New,
    /// A recorded claim still in force.
    Recorded,
}

/// The facts of a resource the policies look at.
#[derive(Clone)]
pub(crate) struct Facts {
    /// The compartment patient (`None`: directory, or no patient).
    pub(crate) patient: Option<Id>,
    /// Sensitivity labels.
    pub(crate) labels: Vec<Label>,
    /// The patient is created by this very request (a POST of a Patient, or a reference to
    /// one in the same transaction): the creator is treated as on its care team.
    pub(crate) new_patient: bool,
}

/// The authorization of one request: who, for which purpose, with which claim. Extracted from
/// the request by every FHIR handler (and the admin API).
pub(crate) struct Access {
    state: AppState,
    who: Authenticated,
    purpose: Purpose,
    /// The claim made by this request (`ETREAT` with a reason), if any.
    claim: Option<BreakGlass>,
    now: OffsetDateTime,
    /// Patients whose break-the-glass access this request recorded.
    recorded: HashSet<Id>,
    /// The request's audit context: purpose, decided patients, break-the-glass.
    slot: AuditSlot,
    /// Patients' active consents, read during this request only.
    consents: Mutex<ConsentCache>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("principal", &self.who.principal.id())
            .field("purpose", &self.purpose)
            .field("claim", &self.claim.is_some())
            .finish_non_exhaustive()
    }
}

impl FromRequestParts<AppState> for Access {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let who = parts
            .extensions
            .get::<Authenticated>()
            .cloned()
            .ok_or(ApiError::Unauthorized)?;
        // Every request passes the audit middleware first; without its slot, refuse (an
        // access that could not be audited is not given).
        let slot = AuditSlot::of(&parts.extensions)
            .ok_or_else(|| ApiError::internal(&"a FHIR request without its audit context"))?;
        let access = Access::new(state.clone(), who, &parts.headers, slot)?;
        if let Some(ConsentGeneration(g)) = parts.extensions.get::<ConsentGeneration>() {
            access.consents_under(*g);
        }
        Ok(access)
    }
}

/// The purpose named by `X-Purpose-Of-Use`, if any.
fn purpose_header(headers: &HeaderMap) -> Result<Option<Purpose>, ApiError> {
    let mut values = headers.get_all(&X_PURPOSE_OF_USE).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let bad = || {
        ApiError::BadRequest(
            "X-Purpose-Of-Use must be one HL7 PurposeOfUse code (v3-ActReason), such as TREAT, \
             ETREAT, HPAYMT, HOPERAT or HRESCH"
                .to_owned(),
        )
    };
    if values.next().is_some() {
        return Err(bad());
    }
    let text = value.to_str().map_err(|_| bad())?;
    Purpose::parse(text).map(Some).map_err(|_| bad())
}

/// The reason named by `X-Break-Glass-Reason`, if any (1 to 500 characters, UTF-8).
fn reason_header(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let mut values = headers.get_all(&X_BREAK_GLASS_REASON).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let bad = || {
        ApiError::BadRequest(format!(
            "X-Break-Glass-Reason must be one reason of 1 to {MAX_REASON_CHARS} characters \
             (UTF-8, no control characters)"
        ))
    };
    if values.next().is_some() {
        return Err(bad());
    }
    let text = std::str::from_utf8(value.as_bytes())
        .map_err(|_| bad())?
        .trim();
    let chars = text.chars().count();
    if chars == 0 || chars > MAX_REASON_CHARS || text.chars().any(char::is_control) {
        return Err(bad());
    }
    Ok(Some(text.to_owned()))
}

fn unix_time(t: i64) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp(t).ok()
}

/// A recorded claim as the policy crate's value (`None` when it cannot be read back).
fn restore_claim(record: &BreakGlassRecord) -> Option<BreakGlass> {
    BreakGlass::restore(
        &record.reason,
        unix_time(record.started_at)?,
        unix_time(record.expires_at)?,
    )
    .ok()
}

/// True for the types outside any patient compartment (Practitioner, Organization, ...).
pub(crate) fn is_directory(rtype: ResourceType) -> bool {
    ResourceRef::new(rtype, None, Vec::new()).is_directory()
}

/// The refusal answered for a denied request.
fn forbidden(reason: DenyReason) -> ApiError {
    ApiError::Forbidden(format!("access denied: {}", reason.as_str()))
}

impl Access {
    /// The authorization of a request by `who` with these headers; `slot` is the request's
    /// audit context.
    pub(crate) fn new(
        state: AppState,
        who: Authenticated,
        headers: &HeaderMap,
        slot: AuditSlot,
    ) -> Result<Access, ApiError> {
        let purpose =
            purpose_header(headers)?.unwrap_or_else(|| who.principal.role().default_purpose());
        slot.note_purpose(purpose);
        // The policies refuse it too (`forbid.purpose`); refusing here first names the
        // purposes the role may assert. The audit middleware records the refusal.
        let role = who.principal.role();
        let allowed = state.policy.role_purposes();
        if !allowed.permits(role, purpose) {
            let listed: Vec<&str> = allowed.listed(role).iter().map(Purpose::as_str).collect();
            return Err(ApiError::Forbidden(format!(
                "access denied: purpose-not-permitted: the {role} role may not assert the \
                 purpose of use {purpose} (X-Purpose-Of-Use); it may assert {} and their \
                 specializations",
                listed.join(", ")
            )));
        }
        let now = OffsetDateTime::now_utc();
        let claim = match reason_header(headers)? {
            None => None,
            Some(_) if purpose != Purpose::EmergencyTreat => {
                return Err(ApiError::BadRequest(
                    "X-Break-Glass-Reason is only accepted with X-Purpose-Of-Use: ETREAT"
                        .to_owned(),
                ));
            }
            Some(reason) => Some(
                BreakGlass::claim(&reason, now, BreakGlass::DEFAULT_WINDOW)
                    .map_err(|e| ApiError::BadRequest(format!("X-Break-Glass-Reason: {e}")))?,
            ),
        };
        Ok(Access {
            state,
            who,
            purpose,
            claim,
            now,
            recorded: HashSet::new(),
            slot,
            consents: Mutex::new(ConsentCache::default()),
        })
    }

    /// The request's audit context (for the audit sink of its writes).
    /// Decides `action` about the patient `patient` as a whole (erase, export, requests about
    /// one's own record): on the patient's `Patient` reference, with this request's purpose,
    /// before anything is looked up, so the refusal is the same whether the patient exists.
    pub(crate) fn decide_on_patient(
        &self,
        action: Action,
        patient: &Id,
    ) -> Result<Authorized, ApiError> {
        let request = AccessRequest {
            principal: self.who.principal.clone(),
            action,
            resource: ResourceRef::new(ResourceType::PATIENT, Some(patient.clone()), Vec::new()),
            context: DecisionContext::new(self.purpose, self.now),
        };
        self.state
            .policy
            .decide(&request)
            .map_err(|d| forbidden(d.reason()))
    }

    pub(crate) fn audit_slot(&self) -> AuditSlot {
        self.slot.clone()
    }

    /// The authenticated principal.
    pub(crate) fn who(&self) -> &Authenticated {
        &self.who
    }

    fn role(&self) -> Role {
        self.who.principal.role()
    }

    fn is_user(&self) -> bool {
        self.who.principal.kind() == PrincipalKind::User
    }

    fn is_clinician(&self) -> bool {
        self.is_user() && self.role() == Role::Clinician
    }

    /// Whether break-the-glass claims apply to this request at all.
    fn glass_applies(&self) -> bool {
        self.is_clinician() && self.purpose == Purpose::EmergencyTreat
    }

    /// The context of a decision with nothing established about a patient: the purpose's
    /// consent default (the policies consult consent only for a patient's resources).
    fn base_context(&self) -> DecisionContext {
        let mut ctx = DecisionContext::new(self.purpose, self.now);
        ctx.consent_permits = self.state.consent_defaults.permits(self.purpose);
        ctx
    }

    /// The context of a decision about `facts` of type `rtype`: care relationship, label
    /// grants, consent and break-the-glass claim for its patient.
    async fn context(
        &self,
        rtype: ResourceType,
        facts: &Facts,
    ) -> Result<(DecisionContext, ClaimSource), ApiError> {
        let mut ctx = self.base_context();
        let mut source = ClaimSource::None;
        if self.glass_applies()
            && let Some(claim) = &self.claim
        {
            ctx.break_glass = Some(claim.clone());
            source = ClaimSource::New;
        }
        let Some(patient) = &facts.patient else {
            return Ok((ctx, source));
        };
        // A patient being created has no consents yet; patients' own access does not depend
        // on consent (and they reach no one else's record).
        let patient_user = self.is_user() && self.role() == Role::Patient;
        if !facts.new_patient && !patient_user {
            ctx.consent_permits = self.consent_permits(patient, rtype).await?;
        }
        // ...except that an app the patient denied by name is refused even acting for them.
        if patient_user && self.who.client_id.is_some() && self.app_denied(patient, rtype).await? {
            self.slot.note_patient(patient);
            return Err(forbidden(DenyReason::ConsentDenies));
        }
        // A patient's own record is the engine's business (linked patient); clients have no
        // care relationships.
        if self.is_user() && self.role() != Role::Patient {
            if facts.new_patient && self.is_clinician() {
                ctx.care_team = true;
            } else {
                let (care_team, label_grants) =
                    self.state.accounts.relationship(&self.who, patient).await?;
                ctx.care_team = care_team;
                ctx.label_grants = label_grants;
            }
        }
        if self.glass_applies()
            && source == ClaimSource::None
            && let Some(record) = self
                .state
                .accounts
                .active_break_glass(&self.who, patient)
                .await?
            && let Some(claim) = restore_claim(&record)
        {
            ctx.break_glass = Some(claim);
            source = ClaimSource::Recorded;
        }
        Ok((ctx, source))
    }

    fn request(
        &self,
        action: Action,
        resource: ResourceRef,
        context: DecisionContext,
    ) -> AccessRequest {
        AccessRequest {
            principal: self.who.principal.clone(),
            action,
            resource,
            context,
        }
    }

    /// Decides `action` on a resource with `facts` of type `rtype`. Allowed: the proof, after
    /// recording the break-the-glass access it relies on, if any.
    async fn decide(
        &mut self,
        action: Action,
        rtype: ResourceType,
        facts: &Facts,
    ) -> Result<Result<Authorized, Denied>, ApiError> {
        self.decide_with(action, rtype, facts, true).await
    }

    /// As [`Access::decide`]; `record` false for questions that grant no access (explaining
    /// a refusal).
    async fn decide_with(
        &mut self,
        action: Action,
        rtype: ResourceType,
        facts: &Facts,
        record: bool,
    ) -> Result<Result<Authorized, Denied>, ApiError> {
        let (context, source) = self.context(rtype, facts).await?;
        let resource = ResourceRef::new(rtype, facts.patient.clone(), facts.labels.clone());
        let request = self.request(action, resource, context);
        let decision = self.state.policy.decide(&request);
        if record && let Some(patient) = &facts.patient {
            self.slot.note_patient(patient);
        }
        if record {
            // Codes only, from the facts already decided on (no read of its own).
            match &decision {
                Ok(_) => self.slot.note_labels(&facts.labels),
                Err(_) => self.slot.note_denied_labels(&facts.labels),
            }
        }
        if record && decision.as_ref().is_ok_and(Authorized::break_glass) {
            self.slot.note_break_glass();
        }
        if record
            && let Ok(proof) = &decision
            && proof.break_glass()
            && source == ClaimSource::New
            && let (Some(patient), Some(claim)) = (&facts.patient, &self.claim)
            && !self.recorded.contains(patient)
        {
            // Recorded before any data is returned: no record, no access.
            let expires_at = claim.expires_at().unix_timestamp();
            self.state
                .accounts
                .record_break_glass(&self.who, patient, claim.reason(), expires_at)
                .await?;
            tracing::warn!(
                principal = %self.who.principal.id(),
                action = %action,
                rtype = %rtype,
                "break-the-glass access recorded"
            );
            self.recorded.insert(patient.clone());
        }
        Ok(decision)
    }

    /// Decides an action that is not about one resource (transaction as a whole, admin
    /// actions) and refuses with 403 when denied.
    pub(crate) fn require(&self, action: Action) -> Result<Authorized, ApiError> {
        let request = self.request(action, ResourceRef::none(), self.base_context());
        self.state
            .policy
            .decide(&request)
            .map_err(|d| forbidden(d.reason()))
    }

    /// The facts of a stored resource as the store read them: its compartment patient and
    /// labels (the store releases the resource only to a proof for that compartment).
    pub(crate) fn stored_facts(facts: &StoredFacts) -> Facts {
        Facts {
            patient: facts.patient().cloned(),
            labels: facts.labels().to_vec(),
            new_patient: false,
        }
    }

    /// The facts of a body sent by the client (create, update).
    pub(crate) fn body_facts(resource: &ValidResource, new_patients: &HashSet<Id>) -> Facts {
        let patient = if is_directory(resource.resource_type()) {
            None
        } else {
            compartment_patient(resource)
        };
        let new_patient = patient.as_ref().is_some_and(|p| new_patients.contains(p));
        Facts {
            patient,
            labels: labels_of(resource.body()),
            new_patient,
        }
    }

    /// Refuses `denied` for `facts` without telling more than the refusal of a resource out
    /// of reach would: `label-not-granted` only when the labels are the only obstacle.
    async fn refusal(
        &mut self,
        action: Action,
        rtype: ResourceType,
        facts: &Facts,
        denied: Denied,
    ) -> Result<ApiError, ApiError> {
        if denied.reason() == DenyReason::LabelNotGranted && !facts.labels.is_empty() {
            let unlabelled = Facts {
                labels: Vec::new(),
                ..facts.clone()
            };
            if let Err(other) = self.decide_with(action, rtype, &unlabelled, false).await? {
                return Ok(forbidden(other.reason()));
            }
        }
        Ok(forbidden(denied.reason()))
    }

    /// Authorizes `action` on a stored resource with the store's `facts`; 403 when denied.
    pub(crate) async fn authorize_stored(
        &mut self,
        action: Action,
        stored: &StoredFacts,
    ) -> Result<Authorized, ApiError> {
        let rtype = stored.rtype();
        let facts = Self::stored_facts(stored);
        // A resource's history and versions are the resource: decided like a read of it
        // first, so a rule meant for queries across patients (which a resource outside every
        // compartment also matches) never opens one resource that may not be read.
        if matches!(action, Action::History | Action::Vread)
            && let Err(denied) = self.decide(Action::Read, rtype, &facts).await?
        {
            return Err(self.refusal(Action::Read, rtype, &facts, denied).await?);
        }
        match self.decide(action, rtype, &facts).await? {
            Ok(proof) => Ok(proof),
            Err(denied) => Err(self.refusal(action, rtype, &facts, denied).await?),
        }
    }

    /// [`Access::authorize_stored`] on a body as stored (an entry a Bundle answered).
    pub(crate) async fn authorize_stored_body(
        &mut self,
        action: Action,
        rtype: ResourceType,
        body: &Value,
    ) -> Result<Authorized, ApiError> {
        self.authorize_stored(action, &StoredFacts::of(rtype, body))
            .await
    }

    /// Authorizes `action` on a body the client sent; 403 when denied.
    pub(crate) async fn authorize_body(
        &mut self,
        action: Action,
        rtype: ResourceType,
        facts: &Facts,
    ) -> Result<Authorized, ApiError> {
        match self.decide(action, rtype, facts).await? {
            Ok(proof) => Ok(proof),
            Err(denied) => Err(forbidden(denied.reason())),
        }
    }

    /// Decides `action` on a resource of `rtype` that does not exist, as if it were in a
    /// compartment the principal cannot reach: Ok only when the principal could reach it.
    pub(crate) async fn authorize_absent(
        &mut self,
        action: Action,
        rtype: ResourceType,
    ) -> Result<(), ApiError> {
        let facts = Facts {
            patient: (!is_directory(rtype)).then(Id::generate),
            labels: Vec::new(),
            new_patient: false,
        };
        // A fresh patient has no recorded claim, and a new claim is only recorded for a
        // resource that exists: decide without recording.
        let (context, _) = self.context(rtype, &facts).await?;
        let request = self.request(
            action,
            ResourceRef::new(rtype, facts.patient, facts.labels),
            context,
        );
        self.state
            .policy
            .decide(&request)
            .map(|_| ())
            .map_err(|d| forbidden(d.reason()))
    }

    /// The resource `rtype/id` as stored now.
    pub(crate) async fn load(&self, rtype: ResourceType, id: &Id) -> Result<Current, ApiError> {
        match self.state.store.read_unreleased(rtype, id).await {
            Ok(stored) => Ok(Current::Live(stored)),
            Err(StoreError::NotFound { .. }) => Ok(Current::Missing),
            Err(StoreError::Erased { .. }) => Ok(Current::Erased),
            Err(StoreError::Gone { version, .. }) => {
                let last = match version.checked_sub(1).filter(|v| *v > 0) {
                    Some(previous) => {
                        match self.state.store.vread_unreleased(rtype, id, previous).await {
                            Ok(s) => Some(s.facts().clone()),
                            Err(StoreError::Gone { .. } | StoreError::VersionNotFound { .. }) => {
                                None
                            }
                            Err(e) => return Err(e.into()),
                        }
                    }
                    None => None,
                };
                Ok(Current::Deleted { version, last })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Authorizes `action` on the resource as currently stored (the last live version of a
    /// deleted one; as out of reach when there is none). The proof when there was something
    /// to decide on.
    pub(crate) async fn authorize_current(
        &mut self,
        action: Action,
        rtype: ResourceType,
        current: &Current,
    ) -> Result<Option<Authorized>, ApiError> {
        match current {
            Current::Live(stored) => self
                .authorize_stored(action, stored.facts())
                .await
                .map(Some),
            Current::Deleted {
                last: Some(facts), ..
            } => self.authorize_stored(action, facts).await.map(Some),
            // Nothing of an erased resource can be decided on: as out of reach.
            Current::Deleted { last: None, .. } | Current::Missing | Current::Erased => {
                self.authorize_absent(action, rtype).await.map(|()| None)
            }
        }
    }

    /// Adds `X-Break-Glass: recorded` when this request recorded a break-the-glass access.
    /// (The audit trail learns patients and break-the-glass from the slot, refusals
    /// included.)
    pub(crate) fn mark(&self, mut response: Response) -> Response {
        if !self.recorded.is_empty() {
            response
                .headers_mut()
                .insert(X_BREAK_GLASS.clone(), HeaderValue::from_static("recorded"));
        }
        response
    }

    /// Grants the creator of a new Patient a care relationship with it (clinicians; a
    /// clinician creating a patient has no care team yet). The grant commits with an entry of
    /// its own (action `granted`), after the request's own entry.
    pub(crate) async fn grant_creator(&self, patient: &Id) -> Result<(), ApiError> {
        if !self.is_clinician() {
            return Ok(());
        }
        // `Accounts::grant` takes a username; the token names the user by id.
        let username = zeroize::Zeroizing::new(
            self.state
                .accounts
                .username(self.who.principal.id())
                .await?,
        );
        self.state
            .accounts
            .grant(
                &username,
                patient,
                &[],
                None,
                &crate::audit_sink::RequestSink::per_resource(&self.state, self.slot.clone()),
            )
            .await?;
        Ok(())
    }
}

/// Refuses `_include` and `_revinclude` (and their `:iterate` forms) whatever the handling:
/// they would reach resources of other compartments, and are not supported.
pub(crate) fn refuse_includes(pairs: &[(String, String)]) -> Result<(), ApiError> {
    for (name, _) in pairs {
        let base = name.split(':').next().unwrap_or_default();
        if matches!(base, "_include" | "_revinclude") {
            return Err(ApiError::Fhir(
                phivault_fhir::FhirError::UnknownSearchParam(base.to_owned()),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeSet;

    use phivault_fhir::SearchQuery;

    use super::search::{label_entries, single_patient};
    use super::*;

    #[test]
    fn purpose_headers() {
        let mut h = HeaderMap::new();
        assert_eq!(purpose_header(&h).unwrap(), None);
        h.insert(&X_PURPOSE_OF_USE, HeaderValue::from_static("ETREAT"));
        assert_eq!(purpose_header(&h).unwrap(), Some(Purpose::EmergencyTreat));
        for bad in ["treat", "BTG", "", "http://x|TREAT"] {
            h.insert(&X_PURPOSE_OF_USE, HeaderValue::from_static(bad));
            let e = purpose_header(&h).unwrap_err().to_string();
            assert!(e.contains("X-Purpose-Of-Use"), "{e}");
        }
        h.insert(&X_PURPOSE_OF_USE, HeaderValue::from_static("TREAT"));
        h.append(&X_PURPOSE_OF_USE, HeaderValue::from_static("HRESCH"));
        assert!(purpose_header(&h).is_err());
    }

    #[test]
    fn reason_headers() {
        let mut h = HeaderMap::new();
        assert_eq!(reason_header(&h).unwrap(), None);
        h.insert(
            &X_BREAK_GLASS_REASON,
            HeaderValue::from_static(" unconscious "),
        );
        assert_eq!(reason_header(&h).unwrap().as_deref(), Some("unconscious"));
        h.insert(&X_BREAK_GLASS_REASON, HeaderValue::from_static("  "));
        assert!(reason_header(&h).is_err());
        let long = "x".repeat(501);
        h.insert(&X_BREAK_GLASS_REASON, HeaderValue::from_str(&long).unwrap());
        assert!(reason_header(&h).is_err());
        let ok = "é".repeat(500);
        h.insert(
            &X_BREAK_GLASS_REASON,
            HeaderValue::from_bytes(ok.as_bytes()).unwrap(),
        );
        assert_eq!(reason_header(&h).unwrap().unwrap().chars().count(), 500);
    }

    #[test]
    fn includes_are_refused() {
        for name in [
            "_include",
            "_revinclude",
            "_include:iterate",
            "_revinclude:iterate",
        ] {
            let pairs = vec![(name.to_owned(), "Observation:patient".to_owned())];
            assert!(refuse_includes(&pairs).is_err(), "{name}");
        }
        assert!(refuse_includes(&[("family".to_owned(), "x".to_owned())]).is_ok());
    }

    #[test]
    fn label_exclusion_covers_every_alias() {
        let entries = label_entries(ResourceType::PATIENT, &BTreeSet::new()).unwrap();
        assert_eq!(entries.len(), LABEL_CODES.split(',').count());
        for code in LABEL_CODES.split(',') {
            assert!(Label::parse(code).is_ok(), "{code}");
        }
        // PSY granted: its code and aliases are no longer excluded.
        let psy = BTreeSet::from([Label::MentalHealth]);
        let entries = label_entries(ResourceType::PATIENT, &psy).unwrap();
        assert_eq!(entries.len(), LABEL_CODES.split(',').count() - 3);
        assert!(
            entries
                .iter()
                .all(|e| !["PSY", "MH", "BH"].contains(&e.value.as_str()))
        );
        let all: BTreeSet<Label> = Label::ALL.iter().copied().collect();
        assert!(
            label_entries(ResourceType::PATIENT, &all)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn single_patient_searches() {
        let obs = ResourceType::parse("Observation").unwrap();
        let q = |rtype, pairs: &[(&str, &str)]| {
            let pairs: Vec<(String, String)> = pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            SearchQuery::parse(rtype, &pairs, false).unwrap()
        };
        let p1 = Id::parse("p1").unwrap();
        assert_eq!(
            single_patient(obs, &q(obs, &[("patient", "p1")])),
            Some(p1.clone())
        );
        assert_eq!(
            single_patient(obs, &q(obs, &[("patient", "Patient/p1")])),
            Some(p1.clone())
        );
        assert_eq!(single_patient(obs, &q(obs, &[("patient", "p1,p2")])), None);
        assert_eq!(single_patient(obs, &q(obs, &[])), None);
        let pat = ResourceType::PATIENT;
        assert_eq!(single_patient(pat, &q(pat, &[("_id", "p1")])), Some(p1));
        assert_eq!(single_patient(pat, &q(pat, &[("_id", "p1,p2")])), None);
    }

    #[test]
    fn directory_types() {
        assert!(!is_directory(ResourceType::PATIENT));
        assert!(is_directory(ResourceType::parse("Practitioner").unwrap()));
        assert!(!is_directory(ResourceType::parse("Observation").unwrap()));
    }
}
