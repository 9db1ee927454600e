//! Purpose of use and roles.

use std::fmt;

use crate::PolicyError;
use crate::error::clip;

/// The code system of HL7 v3 PurposeOfUse codes (`v3-ActReason`).
pub const PURPOSE_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v3-ActReason";

macro_rules! purposes {
    ($($(#[$doc:meta])* $variant:ident = $code:literal,)*) => {
        /// Why a request is made: an HL7 v3 PurposeOfUse code, from the `X-Purpose-Of-Use`
        /// header or the role's default ([`Role::default_purpose`]). Part of every decision.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[non_exhaustive]
        pub enum Purpose {
            $($(#[$doc])* $variant,)*
        }

        impl Purpose {
            /// Every purpose this server knows.
            pub const ALL: &'static [Purpose] = &[$(Purpose::$variant,)*];

            /// The HL7 code.
            pub fn as_str(&self) -> &'static str {
                match self {
                    $(Purpose::$variant => $code,)*
                }
            }
        }
    };
}

purposes! {
    /// Treatment.
    Treat = "TREAT",
    /// Emergency treatment; with a break-the-glass reason it passes a refusal.
    EmergencyTreat = "ETREAT",
    /// Healthcare payment.
    Payment = "HPAYMT",
    /// Healthcare operations.
    Operations = "HOPERAT",
    /// Healthcare research.
    Research = "HRESCH",
    /// Requested by the patient.
    PatientRequest = "PATRQT",
    /// Public health.
    PublicHealth = "PUBHLTH",
    /// Marketing.
    Marketing = "HMARKT",
    /// System administration.
    SystemAdministration = "HSYSADMIN",
    /// Testing.
    Test = "HTEST",
    /// Coordination of care.
    CoordinationOfCare = "COC",
    /// Care management.
    CareManagement = "CAREMGT",
    /// Accreditation.
    Accreditation = "HACCRED",
    /// Legal.
    Legal = "HLEGAL",
    /// Requested by the family.
    FamilyRequest = "FAMRQT",
    /// Requested by a power of attorney.
    PowerOfAttorney = "PWATRNY",
    /// Requested by a support network.
    SupportNetwork = "SUPNWK",
    /// Systems development.
    SystemDevelopment = "SYSDEV",
}

impl Purpose {
    /// Parses a PurposeOfUse code (`TREAT`), optionally written as `system|code` with the
    /// `v3-ActReason` system. Codes are case-sensitive, as HL7 defines them.
    pub fn parse(s: &str) -> Result<Self, PolicyError> {
        let s = s.trim();
        let code = match s.split_once('|') {
            Some((PURPOSE_SYSTEM, code)) => code,
            Some(_) => return Err(PolicyError::UnknownPurpose(clip(s))),
            None => s,
        };
        Self::ALL
            .iter()
            .copied()
            .find(|p| p.as_str() == code)
            .ok_or_else(|| PolicyError::UnknownPurpose(clip(s)))
    }
}

impl fmt::Display for Purpose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a principal is to the system. Users hold one of the first five; OAuth2 clients acting
/// on their own are [`Role::App`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Role {
    /// Runs the system: users, clients, keys. No clinical data unless a policy grants it.
    Admin,
    /// Treats patients: those on their care team (a CareTeam or a grant).
    Clinician,
    /// A patient: their own compartment.
    Patient,
    /// De-identified exports only.
    Researcher,
    /// The audit trail only.
    Auditor,
    /// An app (OAuth2 client credentials), limited by its SMART scopes.
    App,
}

impl Role {
    /// Every role.
    pub const ALL: &'static [Role] = &[
        Role::Admin,
        Role::Clinician,
        Role::Patient,
        Role::Researcher,
        Role::Auditor,
        Role::App,
    ];

    /// Parses a role name (`clinician`).
    pub fn parse(s: &str) -> Result<Self, PolicyError> {
        Self::ALL
            .iter()
            .copied()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| PolicyError::UnknownRole(clip(s)))
    }

    /// The name, as policies see it in `principal.role`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Clinician => "clinician",
            Role::Patient => "patient",
            Role::Researcher => "researcher",
            Role::Auditor => "auditor",
            Role::App => "app",
        }
    }

    /// The purpose of use assumed when a request does not name one.
    pub fn default_purpose(&self) -> Purpose {
        match self {
            Role::Clinician | Role::App => Purpose::Treat,
            Role::Patient => Purpose::PatientRequest,
            Role::Admin => Purpose::SystemAdministration,
            Role::Auditor => Purpose::Operations,
            Role::Researcher => Purpose::Research,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn purposes_round_trip() {
        for p in Purpose::ALL {
            assert_eq!(Purpose::parse(p.as_str()).unwrap(), *p);
        }
        assert_eq!(Purpose::ALL.len(), 18);
        assert_eq!(
            Purpose::parse("http://terminology.hl7.org/CodeSystem/v3-ActReason|ETREAT").unwrap(),
            Purpose::EmergencyTreat
        );
        assert_eq!(Purpose::parse(" TREAT ").unwrap(), Purpose::Treat);
        for bad in ["treat", "", "TREAT2", "http://example.org|TREAT", "BTG"] {
            assert!(Purpose::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn roles_round_trip() {
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()).unwrap(), *r);
        }
        assert!(Role::parse("Admin").is_err());
        assert_eq!(Role::Clinician.default_purpose(), Purpose::Treat);
        assert_eq!(Role::Patient.default_purpose(), Purpose::PatientRequest);
        assert_eq!(Role::Admin.default_purpose(), Purpose::SystemAdministration);
        assert_eq!(Role::Auditor.default_purpose(), Purpose::Operations);
        assert_eq!(Role::Researcher.default_purpose(), Purpose::Research);
        assert_eq!(Role::App.default_purpose(), Purpose::Treat);
    }
}
