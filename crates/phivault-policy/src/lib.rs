//! Authorization for phivault: who may do what to which data, for which purpose.
//!
//! This crate owns the Cedar schema and the default policy set (`policies/`, compiled in),
//! loading and validating operators' extra policies (`phivault policy check`), and the facts a
//! decision is made on: principals and roles ([`PrincipalRef`], [`Role`]), purpose of use
//! ([`Purpose`], HL7 PurposeOfUse codes), sensitivity labels read from `meta.security`
//! ([`Label`], [`labels_of`]), SMART on FHIR scopes ([`ScopeSet`]) and break-the-glass claims
//! ([`BreakGlass`]), and patients' consents ([`Consent`], [`evaluate`], [`ConsentDefaults`]:
//! the rules are in the `consent` module's docs). The caller computes what needs the store (care team, label grants,
//! consent) and passes it in a [`DecisionContext`]; this crate does no I/O beyond reading a
//! policy file it is given.
//!
//! Guarantees:
//! - **Default deny.** [`PolicyEngine::decide`] allows a request only when a policy permits it
//!   and no policy forbids it; a request that cannot be evaluated is refused.
//! - **Proof of decision.** An allowed request yields an [`Authorized`] value that only this
//!   crate can construct; the store's read and write functions take it, so an access that
//!   was not decided does not compile. It carries what the audit trail records: principal,
//!   action, type, patient, purpose, break-the-glass, and the deciding policies. There is no
//!   test-only constructor either: other crates' tests obtain one by deciding a real request.
//! - **Refusals reveal nothing about existence.** A [`Denied`] depends only on the request's
//!   facts, never on whether a resource exists.
//! - **Scopes and labels bind everyone.** SMART scopes and sensitivity labels are `forbid`
//!   policies, which operators' policies cannot pass; only a patient's own record and a
//!   clinician's time-limited break-the-glass pass a label.
//!
//! Purposes of use follow the HL7 v3-ActReason hierarchy ([`Purpose::parent`]): a consent
//! provision or a role's allowance for a purpose covers its specializations. Each role may
//! assert only the purposes it is allowed ([`RolePurposes`], configurable; `forbid.purpose`).
//! ETREAT is an emergency claim: without a break-the-glass claim in force it is refused for a
//! patient's data (`forbid.emergency_without_claim`), so it never passes a consent denying
//! TREAT unless the access is recorded as break-the-glass.
//!
//! Default roles: `admin` (users, clients, keys; no clinical data), `clinician` (patients on
//! their care team, within consent, for the purposes they may assert: TREAT by default, and
//! HOPERAT/HPAYMT when configured; deletes for TREAT only; break-the-glass reads with ETREAT;
//! never a change to a patient's Consents), `patient` (reads their own compartment and their
//! own access log, creates and changes their own Consents, creates their own Tasks), `researcher` (de-identified exports),
//! `auditor` (the whole audit trail), and `app` clients (what their scopes allow, within
//! consent; never a change to Consents or CareTeams, which grant access: an operator's policy
//! names the apps that may). Everyone may read the CapabilityStatement and the register of processing
//! activities.

mod action;
mod consent;
mod engine;
mod error;
mod label;
mod purpose;
mod request;
mod scope;

pub use action::Action;
pub use consent::{
    CLIENT_ACTOR_SYSTEM, CONSENT_SCOPE_SYSTEM, Consent, ConsentActor, ConsentDefaults,
    ConsentQuery, ConsentScope, ConsentVerdict, ProvisionType, RESOURCE_TYPES_SYSTEM,
    denies_client_by_name, evaluate, period_contains,
};
pub use engine::{
    Authorized, DEFAULT_POLICIES, Denied, DenyReason, EXTRA_POLICY_PREFIX, PolicyEngine, SCHEMA,
};
pub use error::{PolicyError, PolicyProblem};
pub use label::{ACT_CODE_SYSTEM, CONFIDENTIALITY_SYSTEM, Label, labels_of};
pub use purpose::{PURPOSE_SYSTEM, Purpose, Role, RolePurposes};
pub use request::{
    AccessRequest, BreakGlass, DecisionContext, PrincipalKind, PrincipalRef, ResourceRef,
};
pub use scope::{Permissions, ScopeContext, ScopeSet, SmartScope};
