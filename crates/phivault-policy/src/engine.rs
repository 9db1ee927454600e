//! The Cedar engine: loading and validating policies, and deciding.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::Path;

use cedar_policy::{
    Authorizer, Context, Decision, Entities, Entity, EntityId, EntityTypeName, EntityUid, Policy,
    PolicyId, PolicySet, Request, RestrictedExpression, Schema, ValidationMode, Validator,
};
use phivault_fhir::{Id, ResourceType};
use time::OffsetDateTime;

use crate::request::is_directory_type;
use crate::{
    AccessRequest, Action, Label, PolicyError, PolicyProblem, PrincipalKind, Purpose, Role,
    RolePurposes,
};

/// The Cedar schema every policy is validated against (`policies/schema.cedarschema`).
pub const SCHEMA: &str = include_str!("../policies/schema.cedarschema");
/// The default policy set (`policies/default.cedar`).
pub const DEFAULT_POLICIES: &str = include_str!("../policies/default.cedar");

/// Prefix given to the ids of operators' policies, so that they never collide with, or pass
/// for, a default policy in the audit trail.
pub const EXTRA_POLICY_PREFIX: &str = "extra.";

/// Proof that a request was decided and allowed. Only [`PolicyEngine::decide`] (and
/// [`PolicyEngine::filter`]) make one: its fields are private, it has no public constructor
/// and it is not `Clone`, so one decision is one proof. The store's read and write functions
/// take it, and the audit trail records what it carries.
pub struct Authorized {
    principal_kind: PrincipalKind,
    principal_id: String,
    role: Role,
    action: Action,
    resource_type: Option<ResourceType>,
    patient: Option<Id>,
    purpose: Purpose,
    break_glass_until: Option<OffsetDateTime>,
    policies: Vec<String>,
    decided_at: OffsetDateTime,
}

impl Authorized {
    /// User or client.
    pub fn principal_kind(&self) -> PrincipalKind {
        self.principal_kind
    }

    /// The account or client id.
    pub fn principal_id(&self) -> &str {
        &self.principal_id
    }

    /// The principal's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The action allowed.
    pub fn action(&self) -> Action {
        self.action
    }

    /// The resource type it is allowed on (`None`: all types, or a non-clinical action).
    pub fn resource_type(&self) -> Option<ResourceType> {
        self.resource_type
    }

    /// The patient compartment it is allowed in (`None`: none, or a query across patients);
    /// for [`Action::ReadAudit`], the patient whose access log may be read (`None`: the whole
    /// trail).
    pub fn patient(&self) -> Option<&Id> {
        self.patient.as_ref()
    }

    /// The purpose of use it was allowed for.
    pub fn purpose(&self) -> Purpose {
        self.purpose
    }

    /// True when the access was allowed only because of a break-the-glass claim: the audit
    /// trail flags it and lists it for review.
    pub fn break_glass(&self) -> bool {
        self.break_glass_until.is_some()
    }

    /// When the break-the-glass claim this access relies on lapses.
    pub fn break_glass_expires_at(&self) -> Option<OffsetDateTime> {
        self.break_glass_until
    }

    /// The ids of the policies that allowed it (`@id`; operators' policies start with
    /// [`EXTRA_POLICY_PREFIX`]).
    pub fn policies(&self) -> &[String] {
        &self.policies
    }

    /// When it was decided.
    pub fn decided_at(&self) -> OffsetDateTime {
        self.decided_at
    }

    /// Whether this proof is for `action` on `rtype` in `patient`'s compartment: the store
    /// checks it before acting.
    pub fn covers(
        &self,
        action: Action,
        rtype: Option<ResourceType>,
        patient: Option<&Id>,
    ) -> bool {
        self.action == action && self.resource_type == rtype && self.patient.as_ref() == patient
    }
}

impl fmt::Debug for Authorized {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Ids of the principal and the policies only; the patient is not named (logs never
        // say whose record was read: the audit trail does).
        f.debug_struct("Authorized")
            .field("principal_kind", &self.principal_kind)
            .field("principal_id", &self.principal_id)
            .field("role", &self.role)
            .field("action", &self.action)
            .field("resource_type", &self.resource_type)
            .field("in_compartment", &self.patient.is_some())
            .field("purpose", &self.purpose)
            .field("break_glass", &self.break_glass())
            .field("policies", &self.policies)
            .finish_non_exhaustive()
    }
}

/// Why a request was refused. It depends only on the request's facts (principal, action,
/// resource type, labels, context), never on whether a resource exists, so the HTTP edge can
/// answer a refusal for one resource the same way as a missing one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DenyReason {
    /// No policy allows it (default deny).
    NoPermit,
    /// The resource carries a sensitivity label the principal holds no grant for. Tells that
    /// the resource is sensitive: for the log and the principal, not for third parties.
    LabelNotGranted,
    /// The token's SMART scopes do not reach it.
    ScopeTooNarrow,
    /// A policy would allow it, but the patient's consent does not.
    ConsentDenies,
    /// A policy would allow it for another purpose of use.
    PurposeNotAllowed,
    /// The principal's role may not assert this purpose of use at all ([`RolePurposes`]).
    PurposeNotPermitted,
    /// Emergency treatment (ETREAT) about a patient needs a break-the-glass claim
    /// (`X-Break-Glass-Reason`, or a recorded claim still in force).
    BreakGlassRequired,
    /// An operator's `forbid` policy refuses it.
    Forbidden,
    /// The request could not be evaluated (a policy errored): refused, failing closed.
    Indeterminate,
}

impl DenyReason {
    /// A short stable code, for logs and OperationOutcome diagnostics.
    pub fn as_str(&self) -> &'static str {
        match self {
            DenyReason::NoPermit => "no-permit",
            DenyReason::LabelNotGranted => "label-not-granted",
            DenyReason::ScopeTooNarrow => "scope-too-narrow",
            DenyReason::ConsentDenies => "consent-denies",
            DenyReason::PurposeNotAllowed => "purpose-not-allowed",
            DenyReason::PurposeNotPermitted => "purpose-not-permitted",
            DenyReason::BreakGlassRequired => "break-glass-required",
            DenyReason::Forbidden => "forbidden",
            DenyReason::Indeterminate => "indeterminate",
        }
    }
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DenyReason::NoPermit => "no policy allows this access",
            DenyReason::LabelNotGranted => "a sensitivity label requires a grant",
            DenyReason::ScopeTooNarrow => "the token's scopes do not allow this access",
            DenyReason::ConsentDenies => "the patient's consent does not allow this access",
            DenyReason::PurposeNotAllowed => "this purpose of use does not allow this access",
            DenyReason::PurposeNotPermitted => "the principal may not assert this purpose of use",
            DenyReason::BreakGlassRequired => {
                "emergency treatment (ETREAT) needs a break-the-glass reason"
            }
            DenyReason::Forbidden => "a policy forbids this access",
            DenyReason::Indeterminate => "the access could not be decided",
        })
    }
}

/// A refusal, with its reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    reason: DenyReason,
    break_glass_would_permit: bool,
}

impl Denied {
    /// Why.
    pub fn reason(&self) -> DenyReason {
        self.reason
    }

    /// True when the same request with `X-Purpose-Of-Use: ETREAT` and a break-the-glass
    /// reason would be allowed: the portal may offer it.
    pub fn break_glass_would_permit(&self) -> bool {
        self.break_glass_would_permit
    }

    fn indeterminate() -> Self {
        Denied {
            reason: DenyReason::Indeterminate,
            break_glass_would_permit: false,
        }
    }
}

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "access denied: {}", self.reason)
    }
}

impl std::error::Error for Denied {}

/// The facts handed to Cedar as `context`.
#[derive(Clone)]
struct Facts {
    purpose: Purpose,
    purpose_permitted: bool,
    break_glass: bool,
    own_record: bool,
    care_team: bool,
    label_grants: Vec<Label>,
    consent_permits: bool,
    scope_permits: bool,
}

enum Outcome {
    Allow(Vec<String>),
    Deny(Vec<String>),
    Error,
}

/// Entity type names and action ids, parsed once.
struct Names {
    user: EntityTypeName,
    client: EntityTypeName,
    resource: EntityTypeName,
    system: EntityTypeName,
    audit: EntityTypeName,
    actions: HashMap<Action, EntityUid>,
}

impl Names {
    fn new() -> Result<Self, PolicyError> {
        let ty = |name: &str| {
            name.parse::<EntityTypeName>()
                .map_err(|e| PolicyError::BuiltIn(e.to_string()))
        };
        let action_type = ty("PhiVault::Action")?;
        Ok(Names {
            user: ty("PhiVault::User")?,
            client: ty("PhiVault::Client")?,
            resource: ty("PhiVault::Resource")?,
            system: ty("PhiVault::System")?,
            audit: ty("PhiVault::AuditTrail")?,
            actions: Action::ALL
                .iter()
                .map(|a| {
                    let uid = EntityUid::from_type_name_and_id(
                        action_type.clone(),
                        EntityId::new(a.as_str()),
                    );
                    (*a, uid)
                })
                .collect(),
        })
    }
}

/// The policy decision point: the schema, the default policies and the operators' policies,
/// validated together. Cheap to share (`&self` everywhere); build it once at start-up.
pub struct PolicyEngine {
    schema: Schema,
    policies: PolicySet,
    authorizer: Authorizer,
    names: Names,
    extra: usize,
    role_purposes: RolePurposes,
}

impl fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyEngine")
            .field("policies", &self.policies.policies().count())
            .field("extra", &self.extra)
            .finish_non_exhaustive()
    }
}

impl PolicyEngine {
    /// The engine with the default policy set only.
    pub fn new_default() -> Result<Self, PolicyError> {
        Self::build("").map_err(|e| match e {
            // The built-in text is ours: any refusal of it is a bug, not a user error.
            PolicyError::Parse(m) => PolicyError::BuiltIn(m),
            PolicyError::Invalid(problems) => PolicyError::BuiltIn(
                problems
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
            other => other,
        })
    }

    /// The engine with the default policy set and the operator's policies in `text` (Cedar
    /// syntax). The added policies are validated against the schema in strict mode together
    /// with the defaults; every problem is reported with the policy's id. Policies are named
    /// by their `@id("...")` annotation (else Cedar's `policyN`), prefixed with
    /// [`EXTRA_POLICY_PREFIX`]. Templates are refused.
    ///
    /// Added policies can allow more (e.g. grant an admin clinical access) but never pass a
    /// default `forbid`: Cedar's forbids override every permit.
    pub fn with_extra_policies(text: &str) -> Result<Self, PolicyError> {
        Self::build(text)
    }

    /// As [`PolicyEngine::with_extra_policies`], reading the policies from a file.
    pub fn with_extra_policy_file(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::with_extra_policies(&text)
    }

    /// Checks an operator's policy file (`phivault policy check`): it must parse and validate
    /// against the schema together with the defaults. Returns how many policies it holds.
    pub fn check_file(path: &Path) -> Result<usize, PolicyError> {
        Self::with_extra_policy_file(path).map(|engine| engine.extra)
    }

    /// How many operator policies are loaded.
    pub fn extra_policy_count(&self) -> usize {
        self.extra
    }

    /// The ids of every loaded policy, defaults first.
    pub fn policy_ids(&self) -> Vec<String> {
        self.policies
            .policies()
            .map(|p| p.id().to_string())
            .collect()
    }

    fn build(extra_text: &str) -> Result<Self, PolicyError> {
        let (schema, _warnings) = Schema::from_cedarschema_str(SCHEMA)
            .map_err(|e| PolicyError::BuiltIn(format!("schema: {e}")))?;
        let mut problems = Vec::new();
        let mut policies = PolicySet::new();
        let defaults = named_policies(DEFAULT_POLICIES, "", &mut problems)
            .map_err(|e| PolicyError::BuiltIn(format!("default policies: {e}")))?;
        let extras = named_policies(extra_text, EXTRA_POLICY_PREFIX, &mut problems)?;
        let extra = extras.len();
        for policy in defaults.into_iter().chain(extras) {
            let id = policy.id().to_string();
            if policies.add(policy).is_err() {
                problems.push(PolicyProblem {
                    policy: id,
                    message: "another policy has the same id".to_owned(),
                });
            }
        }
        let validation = Validator::new(schema.clone()).validate(&policies, ValidationMode::Strict);
        problems.extend(validation.validation_errors().map(|e| {
            let policy = e.policy_id().to_string();
            let message = e.to_string();
            // Cedar's messages start by naming the policy, which the problem already does.
            let message = message
                .strip_prefix(&format!("for policy `{policy}`, "))
                .map_or_else(|| message.clone(), str::to_owned);
            PolicyProblem { policy, message }
        }));
        if !problems.is_empty() {
            return Err(PolicyError::Invalid(problems));
        }
        Ok(PolicyEngine {
            schema,
            policies,
            authorizer: Authorizer::new(),
            names: Names::new()?,
            extra,
            role_purposes: RolePurposes::default(),
        })
    }

    /// Sets the purposes of use each role may assert (instead of the built-in ones): a request
    /// naming another purpose is refused (`forbid.purpose`).
    pub fn set_role_purposes(&mut self, purposes: RolePurposes) {
        self.role_purposes = purposes;
    }

    /// The purposes of use each role may assert.
    pub fn role_purposes(&self) -> &RolePurposes {
        &self.role_purposes
    }

    /// Decides one request. Allowed: the proof of it. Refused: why. A request that cannot be
    /// evaluated is refused ([`DenyReason::Indeterminate`]): this never fails open.
    pub fn decide(&self, request: &AccessRequest) -> Result<Authorized, Denied> {
        self.decide_inner(request, true)
    }

    /// Filters search hits: decides `request_for(item)` for each item (usually
    /// [`Action::Search`] on the hit's own [`ResourceRef`](crate::ResourceRef), with the
    /// care team, grants and consent of the hit's patient) and keeps the allowed ones with
    /// their proofs, in order. Refusals are not explained (that would cost more evaluations).
    pub fn filter<T>(
        &self,
        items: impl IntoIterator<Item = T>,
        mut request_for: impl FnMut(&T) -> AccessRequest,
    ) -> Vec<(T, Authorized)> {
        items
            .into_iter()
            .filter_map(|item| {
                let request = request_for(&item);
                self.decide_inner(&request, false)
                    .ok()
                    .map(|proof| (item, proof))
            })
            .collect()
    }

    fn decide_inner(&self, request: &AccessRequest, explain: bool) -> Result<Authorized, Denied> {
        let Ok(entities) = self.entities(request) else {
            return Err(Denied::indeterminate());
        };
        let facts = facts_of(request, &self.role_purposes);
        match self.evaluate(request, &entities, &facts) {
            Outcome::Allow(policies) => {
                // Was the claim needed? Ask again without it.
                let needed_glass = facts.break_glass
                    && !matches!(
                        self.evaluate(
                            request,
                            &entities,
                            &Facts {
                                break_glass: false,
                                ..facts.clone()
                            }
                        ),
                        Outcome::Allow(_)
                    );
                let ctx = &request.context;
                let clinical = request.action.is_clinical();
                // A research export's proof is per type and patient, like a clinical one.
                let typed = clinical || request.action == Action::ExportDeidentified;
                // A read of the audit trail keeps the patient whose access log it is, an
                // erasure the patient erased.
                let about_patient = typed
                    || request.action == Action::ReadAudit
                    || request.action == Action::Erase
                    || request.action.is_about_own_patient();
                Ok(Authorized {
                    principal_kind: request.principal.kind(),
                    principal_id: request.principal.id().to_owned(),
                    role: request.principal.role(),
                    action: request.action,
                    resource_type: request.resource.rtype.filter(|_| typed),
                    patient: request.resource.patient.clone().filter(|_| about_patient),
                    purpose: ctx.purpose,
                    break_glass_until: ctx
                        .break_glass
                        .as_ref()
                        .filter(|_| needed_glass)
                        .map(|b| b.expires_at()),
                    policies,
                    decided_at: ctx.now,
                })
            }
            Outcome::Deny(forbids) if explain => {
                Err(self.explain(request, &entities, &facts, &forbids))
            }
            // Not explained (search filtering drops it).
            Outcome::Deny(_) => Err(Denied {
                reason: DenyReason::NoPermit,
                break_glass_would_permit: false,
            }),
            Outcome::Error => Err(Denied::indeterminate()),
        }
    }

    /// Why a request was refused: from the forbids that fired, or else by asking Cedar what
    /// would have changed the answer.
    fn explain(
        &self,
        request: &AccessRequest,
        entities: &Entities,
        facts: &Facts,
        forbids: &[String],
    ) -> Denied {
        let allowed = |f: Facts| matches!(self.evaluate(request, entities, &f), Outcome::Allow(_));
        let reasons: Vec<&str> = forbids
            .iter()
            .filter_map(|id| self.policies.annotation(&PolicyId::new(id), "reason"))
            .collect();
        let reason = if reasons.contains(&"purpose") {
            DenyReason::PurposeNotPermitted
        } else if reasons.contains(&"scope") {
            DenyReason::ScopeTooNarrow
        } else if reasons.contains(&"label") {
            DenyReason::LabelNotGranted
        } else if reasons.contains(&"break_glass") {
            DenyReason::BreakGlassRequired
        } else if !forbids.is_empty() {
            DenyReason::Forbidden
        } else if !facts.consent_permits
            && allowed(Facts {
                consent_permits: true,
                ..facts.clone()
            })
        {
            DenyReason::ConsentDenies
        } else if [request.principal.role().default_purpose(), Purpose::Treat]
            .into_iter()
            .filter(|p| *p != facts.purpose)
            .any(|purpose| {
                allowed(Facts {
                    purpose,
                    purpose_permitted: self
                        .role_purposes
                        .permits(request.principal.role(), purpose),
                    ..facts.clone()
                })
            })
        {
            DenyReason::PurposeNotAllowed
        } else {
            DenyReason::NoPermit
        };
        let already_glass = facts.break_glass && facts.purpose == Purpose::EmergencyTreat;
        let break_glass_would_permit = request.principal.kind() == PrincipalKind::User
            && request.action.is_clinical()
            && !already_glass
            && allowed(Facts {
                purpose: Purpose::EmergencyTreat,
                purpose_permitted: self
                    .role_purposes
                    .permits(request.principal.role(), Purpose::EmergencyTreat),
                break_glass: true,
                ..facts.clone()
            });
        Denied {
            reason,
            break_glass_would_permit,
        }
    }

    fn evaluate(&self, request: &AccessRequest, entities: &Entities, facts: &Facts) -> Outcome {
        let Ok(cedar_request) = self.cedar_request(request, facts) else {
            return Outcome::Error;
        };
        let response = self
            .authorizer
            .is_authorized(&cedar_request, &self.policies, entities);
        // A policy that errors is skipped by Cedar; a skipped forbid could let a request
        // through, so any error refuses.
        if response.diagnostics().errors().next().is_some() {
            return Outcome::Error;
        }
        let ids = response
            .diagnostics()
            .reason()
            .map(ToString::to_string)
            .collect();
        match response.decision() {
            Decision::Allow => Outcome::Allow(ids),
            Decision::Deny => Outcome::Deny(ids),
        }
    }

    fn principal_uid(&self, request: &AccessRequest) -> EntityUid {
        let ty = match request.principal.kind() {
            PrincipalKind::User => &self.names.user,
            PrincipalKind::Client => &self.names.client,
        };
        EntityUid::from_type_name_and_id(ty.clone(), EntityId::new(request.principal.id()))
    }

    fn resource_uid(&self, request: &AccessRequest) -> EntityUid {
        // The resource entity stands for the facts of this request only; its id is not used.
        if request.action.is_on_resource() {
            EntityUid::from_type_name_and_id(self.names.resource.clone(), EntityId::new("this"))
        } else if request.action == Action::ReadAudit {
            EntityUid::from_type_name_and_id(self.names.audit.clone(), EntityId::new("this"))
        } else {
            EntityUid::from_type_name_and_id(self.names.system.clone(), EntityId::new("phivault"))
        }
    }

    fn entities(&self, request: &AccessRequest) -> Result<Entities, ()> {
        let principal = Entity::new(
            self.principal_uid(request),
            HashMap::from([(
                "role".to_owned(),
                RestrictedExpression::new_string(request.principal.role().as_str().to_owned()),
            )]),
            HashSet::new(),
        )
        .map_err(|_| ())?;
        let resource = if request.action.is_on_resource() {
            let r = &request.resource;
            Entity::new(
                self.resource_uid(request),
                HashMap::from([
                    (
                        "rtype".to_owned(),
                        RestrictedExpression::new_string(
                            r.rtype.map_or("", |t| t.as_str()).to_owned(),
                        ),
                    ),
                    (
                        "patient".to_owned(),
                        RestrictedExpression::new_string(
                            r.patient.as_ref().map_or("", Id::as_str).to_owned(),
                        ),
                    ),
                    (
                        "directory".to_owned(),
                        RestrictedExpression::new_bool(r.rtype.is_some_and(is_directory_type)),
                    ),
                    ("labels".to_owned(), label_set(&r.labels)),
                ]),
                HashSet::new(),
            )
            .map_err(|_| ())?
        } else if request.action == Action::ReadAudit {
            // The part of the trail asked about: one patient's entries, or all ("").
            Entity::new(
                self.resource_uid(request),
                HashMap::from([(
                    "patient".to_owned(),
                    RestrictedExpression::new_string(
                        request
                            .resource
                            .patient
                            .as_ref()
                            .map_or("", Id::as_str)
                            .to_owned(),
                    ),
                )]),
                HashSet::new(),
            )
            .map_err(|_| ())?
        } else {
            Entity::new_no_attrs(self.resource_uid(request), HashSet::new())
        };
        Entities::from_entities([principal, resource], Some(&self.schema)).map_err(|_| ())
    }

    fn cedar_request(&self, request: &AccessRequest, facts: &Facts) -> Result<Request, ()> {
        let action = self.names.actions.get(&request.action).ok_or(())?.clone();
        let context = Context::from_pairs([
            (
                "purpose".to_owned(),
                RestrictedExpression::new_string(facts.purpose.as_str().to_owned()),
            ),
            (
                "purpose_lineage".to_owned(),
                RestrictedExpression::new_set(
                    facts
                        .purpose
                        .lineage()
                        .into_iter()
                        .map(|p| RestrictedExpression::new_string(p.as_str().to_owned())),
                ),
            ),
            (
                "purpose_permitted".to_owned(),
                RestrictedExpression::new_bool(facts.purpose_permitted),
            ),
            (
                "break_glass".to_owned(),
                RestrictedExpression::new_bool(facts.break_glass),
            ),
            (
                "own_record".to_owned(),
                RestrictedExpression::new_bool(facts.own_record),
            ),
            (
                "care_team".to_owned(),
                RestrictedExpression::new_bool(facts.care_team),
            ),
            ("label_grants".to_owned(), label_set(&facts.label_grants)),
            (
                "consent_permits".to_owned(),
                RestrictedExpression::new_bool(facts.consent_permits),
            ),
            (
                "scope_permits".to_owned(),
                RestrictedExpression::new_bool(facts.scope_permits),
            ),
        ])
        .map_err(|_| ())?;
        Request::new(
            self.principal_uid(request),
            action,
            self.resource_uid(request),
            context,
            Some(&self.schema),
        )
        .map_err(|_| ())
    }
}

fn label_set(labels: &[Label]) -> RestrictedExpression {
    let mut codes: Vec<&str> = labels.iter().map(Label::as_str).collect();
    codes.sort_unstable();
    codes.dedup();
    RestrictedExpression::new_set(
        codes
            .into_iter()
            .map(|c| RestrictedExpression::new_string(c.to_owned())),
    )
}

/// The context facts: the caller's, plus those the engine computes itself.
fn facts_of(request: &AccessRequest, role_purposes: &RolePurposes) -> Facts {
    let ctx = &request.context;
    Facts {
        purpose: ctx.purpose,
        purpose_permitted: role_purposes.permits(request.principal.role(), ctx.purpose),
        break_glass: ctx.break_glass_active(),
        own_record: request.principal.owns(request.resource.patient.as_ref()),
        care_team: ctx.care_team,
        label_grants: ctx.label_grants.clone(),
        consent_permits: ctx.consent_permits,
        scope_permits: request
            .principal
            .scope_permits(request.action, &request.resource),
    }
}

/// Parses policy text and names each policy `prefix` + its `@id` (else Cedar's `policyN`).
fn named_policies(
    text: &str,
    prefix: &str,
    problems: &mut Vec<PolicyProblem>,
) -> Result<Vec<Policy>, PolicyError> {
    let parsed: PolicySet = text.parse().map_err(|e: cedar_policy::ParseErrors| {
        PolicyError::Parse(
            e.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        )
    })?;
    for template in parsed.templates() {
        problems.push(PolicyProblem {
            policy: format!("{prefix}{}", template.id()),
            message: "templates are not supported; write static policies".to_owned(),
        });
    }
    Ok(parsed
        .policies()
        .map(|p| {
            let name = p
                .annotation("id")
                .map_or_else(|| p.id().to_string(), str::to_owned);
            p.new_id(PolicyId::new(format!("{prefix}{name}")))
        })
        .collect())
}
