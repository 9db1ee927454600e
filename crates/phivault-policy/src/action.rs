//! Actions, mirroring the Cedar schema's.

use std::fmt;

/// What a principal asks to do. Each variant is the Cedar action of the same name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Action {
    /// Read the current version of a resource.
    Read,
    /// Read a given version of a resource.
    Vread,
    /// Search; also used to filter every hit of a search.
    Search,
    /// Read the history of a resource, a type or the server.
    History,
    /// Create a resource.
    Create,
    /// Update a resource.
    Update,
    /// Delete a resource.
    Delete,
    /// Submit a transaction or batch Bundle as a whole; each entry is then decided on its own.
    Transaction,
    /// Manage user accounts.
    ManageUsers,
    /// Manage OAuth2 clients.
    ManageClients,
    /// Manage keys (rotation).
    ManageKeys,
    /// Read the audit trail.
    ReadAudit,
    /// Put a patient's resources of one type into a de-identified research export: decided
    /// per type and patient (with the resource's labels), like a search hit; the content
    /// leaves only through the de-identification engine.
    ExportDeidentified,
    /// Read the CapabilityStatement.
    ReadCapabilities,
    /// Read the register of processing activities (GDPR art. 30).
    ReadProcessingActivities,
    /// Erase a patient (crypto-shredding of the compartment): decided on the patient's
    /// `Patient` resource reference (type Patient, the patient's id, no labels).
    Erase,
    /// Export one's own record as a portable package (`GET /fhir/Patient/{id}/$export`):
    /// decided, like [`Action::Erase`], on the patient's `Patient` resource reference. By
    /// default the patient themselves, in their own session.
    ExportOwn,
    /// Ask for the correction of a resource of one's own record
    /// (`POST /fhir/Patient/{id}/$request-correction`), recorded as a `Task` for staff:
    /// decided, like [`Action::ExportOwn`], on the patient's `Patient` resource reference.
    RequestCorrection,
    /// Ask for the erasure of one's own record (`POST /fhir/Patient/{id}/$request-erasure`),
    /// recorded as a `Task` for staff; an admin then erases. Decided like
    /// [`Action::RequestCorrection`].
    RequestErasure,
}

impl Action {
    /// Every action.
    pub const ALL: &'static [Action] = &[
        Action::Read,
        Action::Vread,
        Action::Search,
        Action::History,
        Action::Create,
        Action::Update,
        Action::Delete,
        Action::Transaction,
        Action::ManageUsers,
        Action::ManageClients,
        Action::ManageKeys,
        Action::ReadAudit,
        Action::ExportDeidentified,
        Action::ReadCapabilities,
        Action::ReadProcessingActivities,
        Action::Erase,
        Action::ExportOwn,
        Action::RequestCorrection,
        Action::RequestErasure,
    ];

    /// The Cedar action id.
    pub fn as_str(&self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::Vread => "vread",
            Action::Search => "search",
            Action::History => "history",
            Action::Create => "create",
            Action::Update => "update",
            Action::Delete => "delete",
            Action::Transaction => "transaction",
            Action::ManageUsers => "manage_users",
            Action::ManageClients => "manage_clients",
            Action::ManageKeys => "manage_keys",
            Action::ReadAudit => "read_audit",
            Action::ExportDeidentified => "export_deidentified",
            Action::ReadCapabilities => "read_capabilities",
            Action::ReadProcessingActivities => "read_processing_activities",
            Action::Erase => "erase",
            Action::ExportOwn => "export_own",
            Action::RequestCorrection => "request_correction",
            Action::RequestErasure => "request_erasure",
        }
    }

    /// True for the FHIR interactions on resources (read, vread, search, history, create,
    /// update, delete): the actions about a patient's data, decided on a resource.
    pub fn is_clinical(&self) -> bool {
        matches!(
            self,
            Action::Read
                | Action::Vread
                | Action::Search
                | Action::History
                | Action::Create
                | Action::Update
                | Action::Delete
        )
    }

    /// True for the actions decided on a patient's `Patient` resource reference that are not
    /// clinical interactions (erasure, the patient's own export and requests).
    pub fn is_about_own_patient(&self) -> bool {
        matches!(
            self,
            Action::Erase | Action::ExportOwn | Action::RequestCorrection | Action::RequestErasure
        )
    }

    /// True for the actions decided on a `Resource` entity (type, patient, labels): the
    /// clinical ones, the ones about one's own patient record, and the research export.
    pub fn is_on_resource(&self) -> bool {
        self.is_clinical() || self.is_about_own_patient() || *self == Action::ExportDeidentified
    }

    /// True for the clinical actions that only read.
    pub fn is_read(&self) -> bool {
        matches!(
            self,
            Action::Read | Action::Vread | Action::Search | Action::History
        )
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
