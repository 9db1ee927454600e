//! What a decision is asked about: principal, action, resource and context.

use std::fmt;

use phivault_fhir::{Id, ResourceType};
use time::{Duration, OffsetDateTime};

use crate::{Action, Label, PolicyError, Purpose, Role, ScopeSet};

/// Longest principal id accepted, in bytes.
const MAX_PRINCIPAL_ID_LEN: usize = 128;
/// Longest break-the-glass reason accepted, in characters.
const MAX_REASON_CHARS: usize = 1000;

/// True for resource types outside the patient compartment (Practitioner, Organization,
/// Medication, ...), as the FHIR crate generates it from the Patient CompartmentDefinition.
pub(crate) fn is_directory_type(rtype: ResourceType) -> bool {
    !rtype.in_patient_compartment()
}

/// Whether a principal is a person or an app on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PrincipalKind {
    /// A user account (possibly through an app, with delegated scopes).
    User,
    /// An OAuth2 client acting on its own (client credentials).
    Client,
}

/// Who asks. Built by the authentication layer from a verified session or token.
#[derive(Debug, Clone)]
pub struct PrincipalRef {
    kind: PrincipalKind,
    id: String,
    role: Role,
    linked_patient: Option<Id>,
    scopes: Option<ScopeSet>,
    launch_patient: Option<Id>,
}

impl PrincipalRef {
    /// A user with a role other than [`Role::App`].
    pub fn user(id: &str, role: Role) -> Result<Self, PolicyError> {
        if role == Role::App {
            return Err(PolicyError::InvalidPrincipal(
                "a user cannot have the app role",
            ));
        }
        Ok(PrincipalRef {
            kind: PrincipalKind::User,
            id: check_id(id)?,
            role,
            linked_patient: None,
            scopes: None,
            launch_patient: None,
        })
    }

    /// An app acting on its own (OAuth2 client credentials), limited to `scopes`. Its `user/`
    /// scopes give it nothing: it has no user whose permissions they would narrow.
    pub fn client(id: &str, scopes: ScopeSet) -> Result<Self, PolicyError> {
        Ok(PrincipalRef {
            kind: PrincipalKind::Client,
            id: check_id(id)?,
            role: Role::App,
            linked_patient: None,
            scopes: Some(scopes),
            launch_patient: None,
        })
    }

    /// The patient record a patient user is linked to (`phivault user link-patient`); their
    /// own compartment. Only for users with [`Role::Patient`].
    pub fn with_linked_patient(mut self, patient: Id) -> Result<Self, PolicyError> {
        if self.kind != PrincipalKind::User || self.role != Role::Patient {
            return Err(PolicyError::InvalidPrincipal(
                "only patient users are linked to a patient record",
            ));
        }
        self.linked_patient = Some(patient);
        Ok(self)
    }

    /// The SMART scopes of the token a user acts through (an app launched by the user): they
    /// narrow what the user may do. Without them (the user's own session), scopes do not
    /// apply.
    pub fn with_scopes(mut self, scopes: ScopeSet) -> Self {
        self.scopes = Some(scopes);
        self
    }

    /// The launch patient of the token: the only compartment its `patient/` scopes reach. A
    /// patient user's launch patient defaults to their linked record.
    pub fn with_launch_patient(mut self, patient: Id) -> Self {
        self.launch_patient = Some(patient);
        self
    }

    /// User or client.
    pub fn kind(&self) -> PrincipalKind {
        self.kind
    }

    /// The account or client id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The linked patient record, for patient users.
    pub fn linked_patient(&self) -> Option<&Id> {
        self.linked_patient.as_ref()
    }

    /// The token's scopes, if access goes through a token with scopes.
    pub fn scopes(&self) -> Option<&ScopeSet> {
        self.scopes.as_ref()
    }

    /// The patient whose compartment `patient/` scopes reach.
    pub fn launch_patient(&self) -> Option<&Id> {
        self.launch_patient
            .as_ref()
            .or(self.linked_patient.as_ref())
    }

    /// Whether the principal is the patient of compartment `patient`.
    pub(crate) fn owns(&self, patient: Option<&Id>) -> bool {
        match (&self.linked_patient, patient) {
            (Some(own), Some(p)) => own == p,
            _ => false,
        }
    }

    /// Whether the principal's scopes (if any) allow this access.
    pub(crate) fn scope_permits(&self, action: Action, resource: &ResourceRef) -> bool {
        match &self.scopes {
            None => true,
            Some(scopes) => scopes.permits_for(
                self.kind == PrincipalKind::User,
                action,
                resource.rtype,
                resource.patient.as_ref(),
                self.launch_patient(),
            ),
        }
    }
}

fn check_id(id: &str) -> Result<String, PolicyError> {
    if id.is_empty() || id.len() > MAX_PRINCIPAL_ID_LEN || id.chars().any(char::is_control) {
        return Err(PolicyError::InvalidPrincipal(
            "principal id must be 1 to 128 bytes without control characters",
        ));
    }
    Ok(id.to_owned())
}

/// What a clinical action is about: one resource, a type-level query, or a query over all
/// types. Built from the stored resource's metadata (never from what the client claims), or,
/// before the resource is known, from the request. For [`Action::ReadAudit`], only `patient`
/// counts: the patient whose access log is read, or `None` for the whole trail
/// ([`ResourceRef::audit_trail`]). Ignored for the other non-clinical actions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResourceRef {
    /// The resource type; `None` for a query over all types (`GET /?_type=...`,
    /// `GET /_history`), or for a non-clinical action.
    pub rtype: Option<ResourceType>,
    /// The patient whose compartment holds the resource (or the query is limited to);
    /// `None` outside any compartment, or for a query across patients.
    pub patient: Option<Id>,
    /// The resource's sensitivity labels ([`labels_of`](crate::labels_of) its body).
    pub labels: Vec<Label>,
}

impl ResourceRef {
    /// A resource of `rtype` in `patient`'s compartment (or none), carrying `labels`.
    pub fn new(rtype: ResourceType, patient: Option<Id>, labels: Vec<Label>) -> Self {
        ResourceRef {
            rtype: Some(rtype),
            patient,
            labels,
        }
    }

    /// No resource: for the non-clinical actions and transactions.
    pub fn none() -> Self {
        ResourceRef::default()
    }

    /// The audit trail, for [`Action::ReadAudit`]: the entries about `patient` (that
    /// patient's access log), or the whole trail (`None`).
    pub fn audit_trail(patient: Option<Id>) -> Self {
        ResourceRef {
            rtype: None,
            patient,
            labels: Vec::new(),
        }
    }

    /// True when the type lies outside the patient compartment (Practitioner, Organization,
    /// ...).
    pub fn is_directory(&self) -> bool {
        self.rtype.is_some_and(is_directory_type)
    }
}

/// A break-the-glass claim: a clinician's emergency access, with its reason and time window.
/// The server keeps the claim for its window and passes it with each request of that
/// clinician for that patient; the audit trail records the reason.
#[derive(Clone, PartialEq, Eq)]
pub struct BreakGlass {
    reason: String,
    started_at: OffsetDateTime,
    expires_at: OffsetDateTime,
}

impl BreakGlass {
    /// How long a claim lasts unless configured otherwise.
    pub const DEFAULT_WINDOW: Duration = Duration::hours(1);
    /// The longest window a claim may have.
    pub const MAX_WINDOW: Duration = Duration::hours(24);

    /// A new claim at `now` for `window` (`X-Break-Glass-Reason`). The reason must say
    /// something: 1 to 1000 characters after trimming, no control characters.
    pub fn claim(reason: &str, now: OffsetDateTime, window: Duration) -> Result<Self, PolicyError> {
        Self::restore(reason, now, now + window)
    }

    /// A claim kept by the server, read back for a later request.
    pub fn restore(
        reason: &str,
        started_at: OffsetDateTime,
        expires_at: OffsetDateTime,
    ) -> Result<Self, PolicyError> {
        let reason = reason.trim();
        if reason.is_empty() {
            return Err(PolicyError::InvalidBreakGlass("a reason is required"));
        }
        if reason.chars().count() > MAX_REASON_CHARS || reason.chars().any(char::is_control) {
            return Err(PolicyError::InvalidBreakGlass(
                "the reason must be at most 1000 characters, without control characters",
            ));
        }
        let window = expires_at - started_at;
        if window <= Duration::ZERO || window > Self::MAX_WINDOW {
            return Err(PolicyError::InvalidBreakGlass(
                "the window must be positive and at most 24 hours",
            ));
        }
        Ok(BreakGlass {
            reason: reason.to_owned(),
            started_at,
            expires_at,
        })
    }

    /// Why access was claimed. May describe the patient: audit trail only, never logs.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// When the claim was made.
    pub fn started_at(&self) -> OffsetDateTime {
        self.started_at
    }

    /// When the claim lapses.
    pub fn expires_at(&self) -> OffsetDateTime {
        self.expires_at
    }

    /// Whether the claim is in force at `now`.
    pub fn is_active(&self, now: OffsetDateTime) -> bool {
        self.started_at <= now && now < self.expires_at
    }
}

impl fmt::Debug for BreakGlass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The reason may describe the patient: not printed.
        f.debug_struct("BreakGlass")
            .field("started_at", &self.started_at)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// The facts of a decision that are not about the principal or the resource. The caller
/// computes the care team, grants and consent from the store; the engine computes the rest
/// (own record, scopes, whether a break-the-glass claim is in force).
#[derive(Debug, Clone)]
pub struct DecisionContext {
    /// Purpose of use (`X-Purpose-Of-Use`, or the role's default).
    pub purpose: Purpose,
    /// A break-the-glass claim, if the principal made one for this patient.
    pub break_glass: Option<BreakGlass>,
    /// The time of the decision (a fake clock in tests).
    pub now: OffsetDateTime,
    /// The principal is on the patient's care team (a CareTeam naming them) or holds a grant
    /// for this patient.
    pub care_team: bool,
    /// Sensitivity labels the principal is explicitly granted for this patient.
    pub label_grants: Vec<Label>,
    /// The patient's consents allow this purpose for this principal. Not consulted for
    /// resources outside any compartment or for the patient's own access.
    pub consent_permits: bool,
}

impl DecisionContext {
    /// A context with `purpose` at `now`, and nothing granted: no claim, not on the care
    /// team, no label grants, consent not established.
    pub fn new(purpose: Purpose, now: OffsetDateTime) -> Self {
        DecisionContext {
            purpose,
            break_glass: None,
            now,
            care_team: false,
            label_grants: Vec::new(),
            consent_permits: false,
        }
    }

    /// Whether a break-the-glass claim is in force now.
    pub(crate) fn break_glass_active(&self) -> bool {
        self.break_glass
            .as_ref()
            .is_some_and(|b| b.is_active(self.now))
    }
}

/// One question to the policy engine.
#[derive(Debug, Clone)]
pub struct AccessRequest {
    /// Who asks.
    pub principal: PrincipalRef,
    /// To do what.
    pub action: Action,
    /// On what (for [`Action::ReadAudit`]: which part of the trail; ignored for the other
    /// non-clinical actions).
    pub resource: ResourceRef,
    /// In which circumstances.
    pub context: DecisionContext,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn directory_types() {
        let dir: Vec<&str> = ResourceType::all()
            .filter(|t| is_directory_type(*t))
            .map(|t| t.as_str())
            .collect();
        for t in [
            "Practitioner",
            "PractitionerRole",
            "Organization",
            "Location",
            "Medication",
            "Questionnaire",
        ] {
            assert!(dir.contains(&t), "{t}");
        }
        for t in [
            "Patient",
            "Observation",
            "Claim",
            "ExplanationOfBenefit",
            "Provenance",
            "Device",
            "Task",
            "Goal",
            "Group",
        ] {
            assert!(!dir.contains(&t), "{t}");
        }
        assert_eq!(dir.len(), ResourceType::ALL.len() - 69);
    }

    #[test]
    fn principals() {
        assert!(PrincipalRef::user("u1", Role::App).is_err());
        assert!(PrincipalRef::user("", Role::Clinician).is_err());
        assert!(PrincipalRef::user("a\nb", Role::Clinician).is_err());
        let p = Id::parse("p1").unwrap();
        assert!(
            PrincipalRef::user("u1", Role::Clinician)
                .unwrap()
                .with_linked_patient(p.clone())
                .is_err()
        );
        let pat = PrincipalRef::user("u1", Role::Patient)
            .unwrap()
            .with_linked_patient(p.clone())
            .unwrap();
        assert_eq!(pat.launch_patient(), Some(&p));
        assert!(pat.owns(Some(&p)));
        assert!(!pat.owns(None));
        let c = PrincipalRef::client("c1", ScopeSet::default()).unwrap();
        assert_eq!(c.role(), Role::App);
        assert!(c.with_linked_patient(p).is_err());
    }

    #[test]
    fn break_glass_claims() {
        let now = datetime!(2026-01-01 12:00 UTC);
        assert!(BreakGlass::claim("  ", now, BreakGlass::DEFAULT_WINDOW).is_err());
        assert!(BreakGlass::claim("x", now, Duration::ZERO).is_err());
        assert!(BreakGlass::claim("x", now, Duration::hours(25)).is_err());
        assert!(BreakGlass::claim("a\u{7}", now, Duration::hours(1)).is_err());
        assert!(BreakGlass::claim(&"x".repeat(1001), now, Duration::hours(1)).is_err());
        let b = BreakGlass::claim(" unconscious in ED ", now, Duration::hours(1)).unwrap();
        assert_eq!(b.reason(), "unconscious in ED");
        assert!(b.is_active(now));
        assert!(b.is_active(now + Duration::minutes(59)));
        assert!(!b.is_active(now + Duration::hours(1)));
        assert!(!b.is_active(now - Duration::seconds(1)));
        assert!(!format!("{b:?}").contains("unconscious"));
    }
}
