//! The audit sink of writes (DESIGN.md invariant 2: "writes and their audit entry commit in one
//! transaction").
//!
//! Every write of the store ([`Store::create`](crate::Store::create),
//! [`Store::update`](crate::Store::update), [`Store::delete`](crate::Store::delete) and the
//! writes of [`Store::bundle`](crate::Store::bundle)) takes an [`AuditSink`] and calls it with
//! what it wrote inside the write's transaction, after the last change and before the commit.
//! When the sink fails, the transaction rolls back: no write is committed without its audit
//! entries. The sink is a trait so the store knows nothing about the entries' format (that is
//! phivault-audit's) and so a benchmark can measure the store with the audit switched off.
//!
//! Account changes (a user created, linked, granted, disabled; a client registered; a TOTP
//! factor enrolled; a token revoked: [`crate::accounts`]) keep the same promise through the
//! sibling trait [`AccountSink`]: the change and its audit entry commit in one transaction, so
//! no change is in effect without its entry, and no entry claims a change that did not happen.

use std::future::Future;
use std::pin::Pin;

use phivault_fhir::{Id, ResourceType};
use sqlx::AnyConnection;

use crate::StoreError;

/// What kind of write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteKind {
    /// A new resource (create, or an update that created it).
    Create,
    /// A new version of an existing resource.
    Update,
    /// A deletion (a tombstone version).
    Delete,
    /// The erasure of a patient's compartment ([`Store::erase_patient`](crate::Store::erase_patient)):
    /// `rtype` is Patient, `id` and `patient` the erased patient, `version` 0.
    Erase,
    /// The disposal of an expired resource by retention
    /// ([`Store::dispose_batch`](crate::Store::dispose_batch)): every version deleted;
    /// `version` is the last one, `patient` is `None` (the body is not decrypted).
    Dispose,
}

impl WriteKind {
    /// `create`, `update`, `delete`, `erase` or `dispose`.
    pub fn as_str(self) -> &'static str {
        match self {
            WriteKind::Create => "create",
            WriteKind::Update => "update",
            WriteKind::Delete => "delete",
            WriteKind::Erase => "erase",
            WriteKind::Dispose => "dispose",
        }
    }
}

/// One resource version written by a transaction. Ids only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// What kind of write.
    pub kind: WriteKind,
    /// Resource type.
    pub rtype: ResourceType,
    /// Resource id.
    pub id: Id,
    /// The version written.
    pub version: u64,
    /// The patient compartment the resource is in (for a deletion: the one of its last live
    /// version); `None` for resources outside any compartment.
    pub patient: Option<Id>,
}

/// A boxed future of the sink.
pub type SinkFuture<'a> = Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send + 'a>>;

/// Records the writes of a transaction inside that transaction.
pub trait AuditSink: Send + Sync {
    /// Records `written` (in write order, never empty) through `conn`, the writing
    /// transaction. An error rolls the transaction back.
    fn record<'a>(&'a self, conn: &'a mut AnyConnection, written: &'a [Written]) -> SinkFuture<'a>;
}

/// What kind of account change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountChangeKind {
    /// A user account was created.
    UserCreated,
    /// A patient user was linked to their Patient record.
    PatientLinked,
    /// A clinician was linked to their Practitioner record.
    PractitionerLinked,
    /// A care grant (user, patient) was created or replaced.
    Granted,
    /// An OAuth2 client was registered.
    ClientRegistered,
    /// A user account was disabled.
    UserDisabled,
    /// A TOTP secret was stored for a user (enrolment started).
    TotpEnrolmentStarted,
    /// A user's TOTP factor was enabled (and their recovery codes replaced).
    TotpEnabled,
    /// A session or access token was revoked.
    TokenRevoked,
    /// An OAuth2 client was disabled.
    ClientDisabled,
    /// An OAuth2 client's secret was replaced.
    ClientSecretReplaced,
    /// The tokens of an authorization-code grant were revoked (a replayed code or refresh
    /// token).
    TokenFamilyRevoked,
    /// A user revoked an app's authorization (and the app's tokens).
    AuthorizationRevoked,
    /// A break-the-glass access was reviewed (with a sealed note).
    BreakGlassReviewed,
}

impl AccountChangeKind {
    /// A short name (`user-created`, `granted`, ...), for logs and per-change entries.
    pub fn as_str(self) -> &'static str {
        match self {
            AccountChangeKind::UserCreated => "user-created",
            AccountChangeKind::PatientLinked => "patient-linked",
            AccountChangeKind::PractitionerLinked => "practitioner-linked",
            AccountChangeKind::Granted => "granted",
            AccountChangeKind::ClientRegistered => "client-registered",
            AccountChangeKind::UserDisabled => "user-disabled",
            AccountChangeKind::TotpEnrolmentStarted => "totp-enrolment-started",
            AccountChangeKind::TotpEnabled => "totp-enabled",
            AccountChangeKind::TokenRevoked => "token-revoked",
            AccountChangeKind::ClientDisabled => "client-disabled",
            AccountChangeKind::ClientSecretReplaced => "client-secret-replaced",
            AccountChangeKind::TokenFamilyRevoked => "token-family-revoked",
            AccountChangeKind::AuthorizationRevoked => "authorization-revoked",
            AccountChangeKind::BreakGlassReviewed => "break-glass-reviewed",
        }
    }
}

/// One account change made by a transaction. Ids only: never a username, secret or token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountChange {
    /// What changed.
    pub kind: AccountChangeKind,
    /// The FHIR resource the change names: the Patient of a link or grant, the Practitioner
    /// of a link.
    pub resource: Option<(ResourceType, Id)>,
    /// The patient concerned (a link or grant to their record).
    pub patient: Option<Id>,
}

impl AccountChange {
    /// A change that names no resource.
    pub fn new(kind: AccountChangeKind) -> AccountChange {
        AccountChange {
            kind,
            resource: None,
            patient: None,
        }
    }

    /// A change about `patient`'s own record (link, grant).
    pub fn about_patient(kind: AccountChangeKind, patient: &Id) -> AccountChange {
        AccountChange {
            kind,
            resource: Some((ResourceType::PATIENT, patient.clone())),
            patient: Some(patient.clone()),
        }
    }
}

/// Records an account change inside the transaction that makes it, after the change and
/// before the commit; an error rolls the change back.
pub trait AccountSink: Send + Sync {
    /// Records `change` through `conn`, the changing transaction.
    fn record_account<'a>(
        &'a self,
        conn: &'a mut AnyConnection,
        change: &'a AccountChange,
    ) -> SinkFuture<'a>;
}

/// A sink that records nothing: for tests of the store itself and for the benchmark of the
/// store without auditing. The server and the CLI never use it for a data write or an
/// account change.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoAudit;

impl AuditSink for NoAudit {
    fn record<'a>(&'a self, _: &'a mut AnyConnection, _: &'a [Written]) -> SinkFuture<'a> {
        Box::pin(async { Ok(()) })
    }
}

impl AccountSink for NoAudit {
    fn record_account<'a>(
        &'a self,
        _: &'a mut AnyConnection,
        _: &'a AccountChange,
    ) -> SinkFuture<'a> {
        Box::pin(async { Ok(()) })
    }
}
