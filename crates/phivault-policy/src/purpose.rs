//! Purpose of use and roles.

use std::collections::BTreeMap;
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

impl Purpose {
    /// The purpose this one specializes in the HL7 v3-ActReason hierarchy (`_PurposeOfUse`),
    /// restricted to the purposes this server knows; `None` for a top-level purpose. ETREAT
    /// and COC specialize TREAT; HSYSADMIN, HACCRED, HLEGAL, CAREMGT and SYSDEV specialize
    /// HOPERAT (HTEST specializes SYSDEV); FAMRQT, PWATRNY and SUPNWK specialize PATRQT.
    pub fn parent(&self) -> Option<Purpose> {
        match self {
            Purpose::EmergencyTreat | Purpose::CoordinationOfCare => Some(Purpose::Treat),
            Purpose::SystemAdministration
            | Purpose::Accreditation
            | Purpose::Legal
            | Purpose::CareManagement
            | Purpose::SystemDevelopment => Some(Purpose::Operations),
            Purpose::Test => Some(Purpose::SystemDevelopment),
            Purpose::FamilyRequest | Purpose::PowerOfAttorney | Purpose::SupportNetwork => {
                Some(Purpose::PatientRequest)
            }
            Purpose::Treat
            | Purpose::Payment
            | Purpose::Operations
            | Purpose::Research
            | Purpose::PatientRequest
            | Purpose::PublicHealth
            | Purpose::Marketing => None,
        }
    }

    /// This purpose and every purpose it specializes, most specific first (`ETREAT`,
    /// `TREAT`).
    pub fn lineage(&self) -> Vec<Purpose> {
        let mut out = vec![*self];
        let mut at = *self;
        while let Some(parent) = at.parent() {
            out.push(parent);
            at = parent;
        }
        out
    }

    /// Whether this purpose is `general` or one of its specializations: a consent provision
    /// or an allowance for `general` covers it.
    pub fn is_within(&self, general: Purpose) -> bool {
        self.lineage().contains(&general)
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

/// The purposes of use each role may assert (`X-Purpose-Of-Use`). A purpose listed for a role
/// covers its specializations ([`Purpose::is_within`]); a request naming any other purpose is
/// refused whatever the policies and consents say. Every role may always assert its default
/// purpose ([`Role::default_purpose`]).
///
/// ETREAT is a break-the-glass claim: only clinicians assert it (and only with a claim in
/// force does it reach a patient's data).
///
/// Built-in: `clinician` TREAT (so ETREAT, which needs a break-the-glass reason, and COC);
/// `patient` PATRQT (and FAMRQT, PWATRNY, SUPNWK); `researcher` HRESCH; `auditor` HOPERAT
/// (and its specializations); `admin` HSYSADMIN; `app` TREAT, HPAYMT, HOPERAT, HRESCH and
/// PUBHLTH (an app is further bound by its scopes and by consent). Payment and operations are
/// not a clinician's by default: a consent denying treatment must not be passed by naming
/// another purpose; operators who want clinicians to assert them say so in configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolePurposes {
    allowed: BTreeMap<Role, Vec<Purpose>>,
}

impl Default for RolePurposes {
    fn default() -> Self {
        let allowed = Role::ALL
            .iter()
            .map(|r| {
                let purposes = match r {
                    Role::Clinician => vec![Purpose::Treat],
                    Role::Patient => vec![Purpose::PatientRequest],
                    Role::Researcher => vec![Purpose::Research],
                    Role::Auditor => vec![Purpose::Operations],
                    Role::Admin => vec![Purpose::SystemAdministration],
                    Role::App => vec![
                        Purpose::Treat,
                        Purpose::Payment,
                        Purpose::Operations,
                        Purpose::Research,
                        Purpose::PublicHealth,
                    ],
                };
                (*r, purposes)
            })
            .collect();
        RolePurposes { allowed }
    }
}

impl RolePurposes {
    /// Sets the purposes `role` may assert. Refused when empty or when they do not cover the
    /// role's default purpose (requests without `X-Purpose-Of-Use` would all be refused).
    pub fn set(&mut self, role: Role, purposes: Vec<Purpose>) -> Result<(), PolicyError> {
        let default = role.default_purpose();
        if !purposes.iter().any(|p| default.is_within(*p)) {
            return Err(PolicyError::InvalidRolePurposes(format!(
                "the purposes of role {role} must include its default purpose {default}"
            )));
        }
        let mut purposes = purposes;
        purposes.sort();
        purposes.dedup();
        self.allowed.insert(role, purposes);
        Ok(())
    }

    /// The purposes listed for `role` (each covering its specializations).
    pub fn listed(&self, role: Role) -> &[Purpose] {
        self.allowed.get(&role).map_or(&[], Vec::as_slice)
    }

    /// Whether `role` may assert `purpose`. ETREAT is a break-the-glass claim, which only
    /// clinicians make: no other role asserts it, whatever is listed.
    pub fn permits(&self, role: Role, purpose: Purpose) -> bool {
        if purpose == Purpose::EmergencyTreat && role != Role::Clinician {
            return false;
        }
        self.listed(role).iter().any(|p| purpose.is_within(*p))
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

    #[test]
    fn hierarchy() {
        assert!(Purpose::EmergencyTreat.is_within(Purpose::Treat));
        assert!(Purpose::CoordinationOfCare.is_within(Purpose::Treat));
        assert!(Purpose::Test.is_within(Purpose::Operations));
        assert!(Purpose::Treat.is_within(Purpose::Treat));
        assert!(!Purpose::Treat.is_within(Purpose::EmergencyTreat));
        assert!(!Purpose::Payment.is_within(Purpose::Treat));
        assert!(!Purpose::Operations.is_within(Purpose::Treat));
        assert_eq!(
            Purpose::Test.lineage(),
            [
                Purpose::Test,
                Purpose::SystemDevelopment,
                Purpose::Operations
            ]
        );
    }

    #[test]
    fn role_purposes() {
        let r = RolePurposes::default();
        for role in Role::ALL {
            assert!(r.permits(*role, role.default_purpose()), "{role}");
        }
        assert!(r.permits(Role::Clinician, Purpose::EmergencyTreat));
        assert!(!r.permits(Role::Clinician, Purpose::Payment));
        assert!(!r.permits(Role::Clinician, Purpose::Operations));
        assert!(!r.permits(Role::Patient, Purpose::Treat));
        assert!(r.permits(Role::App, Purpose::Treat));
        assert!(!r.permits(Role::App, Purpose::EmergencyTreat));
        let mut r = r;
        assert!(r.set(Role::Clinician, vec![Purpose::Payment]).is_err());
        r.set(Role::Clinician, vec![Purpose::Treat, Purpose::Payment])
            .unwrap();
        assert!(r.permits(Role::Clinician, Purpose::Payment));
    }
}
