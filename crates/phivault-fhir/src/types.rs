//! Resource types and ids.

use std::fmt;

use crate::FhirError;

/// A resource type this server stores. Only supported types can be constructed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceType(&'static str);

impl ResourceType {
    /// Every type this server stores: the concrete resource types of FHIR R4 4.0.1 but
    /// Parameters, Bundle, Binary, AuditEvent and OperationOutcome (see `data/README.md`),
    /// sorted by name. Generated from the specification at build time.
    pub const ALL: &'static [&'static str] = crate::spec::TYPE_NAMES;

    /// The Patient type.
    pub const PATIENT: ResourceType = ResourceType("Patient");

    /// The Practitioner type.
    pub const PRACTITIONER: ResourceType = ResourceType("Practitioner");

    /// Parses a type name; unknown or unsupported names are refused.
    pub fn parse(name: &str) -> Result<Self, FhirError> {
        match Self::ALL.binary_search(&name) {
            Ok(i) => Ok(ResourceType(Self::ALL[i])),
            Err(_) => Err(FhirError::UnknownType(name.chars().take(64).collect())),
        }
    }

    /// Why `name`, an R4 resource type, is not stored here (`None` when it is stored or is no
    /// R4 type at all).
    pub fn exclusion(name: &str) -> Option<&'static str> {
        crate::spec::exclusion(name)
    }

    /// Iterates over all supported types.
    pub fn all() -> impl Iterator<Item = ResourceType> {
        Self::ALL.iter().map(|t| ResourceType(t))
    }

    /// The type's name.
    pub fn as_str(&self) -> &'static str {
        self.0
    }

    /// Whether resources of this type belong to a patient's compartment (sealed under that
    /// patient's key, read by whoever may read the patient's record): Patient, the types the
    /// Patient CompartmentDefinition lists with parameters, and Contract, Device,
    /// GuidanceResponse and Task (which name a patient by their `patient` parameter). The
    /// others are directory types (Practitioner, Organization, Medication, ...).
    pub fn in_patient_compartment(&self) -> bool {
        !crate::compartment_params(*self).is_empty()
    }
}

impl fmt::Display for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// A FHIR logical id: `[A-Za-z0-9\-\.]{1,64}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Id(String);

impl Id {
    /// Parses an id; anything outside the FHIR id grammar is refused.
    pub fn parse(s: &str) -> Result<Self, FhirError> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if ok {
            Ok(Id(s.to_owned()))
        } else {
            Err(FhirError::InvalidId(s.chars().take(80).collect()))
        }
    }

    /// A new random id (UUID v4, lower-case).
    pub fn generate() -> Self {
        Id(uuid::Uuid::new_v4().to_string())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(Id::parse("abc-1.2").is_ok());
        assert!(Id::parse("").is_err());
        assert!(Id::parse("a/b").is_err());
        assert!(Id::parse(&"a".repeat(65)).is_err());
        assert!(Id::parse(&"a".repeat(64)).is_ok());
        assert_eq!(Id::generate().as_str().len(), 36);
    }

    #[test]
    fn types() {
        assert_eq!(
            ResourceType::parse("Patient").unwrap(),
            ResourceType::PATIENT
        );
        assert!(ResourceType::parse("Patients").is_err());
        assert!(ResourceType::parse("patient").is_err());
        for name in [
            "Claim",
            "ExplanationOfBenefit",
            "Provenance",
            "Medication",
            "Goal",
        ] {
            assert_eq!(ResourceType::parse(name).unwrap().as_str(), name);
        }
        for name in [
            "Bundle",
            "Parameters",
            "Binary",
            "AuditEvent",
            "OperationOutcome",
        ] {
            assert!(ResourceType::parse(name).is_err(), "{name}");
            assert!(ResourceType::exclusion(name).is_some(), "{name}");
        }
        assert!(ResourceType::PATIENT.in_patient_compartment());
        assert!(
            ResourceType::parse("Claim")
                .unwrap()
                .in_patient_compartment()
        );
        assert!(
            ResourceType::parse("Device")
                .unwrap()
                .in_patient_compartment()
        );
        assert!(
            !ResourceType::parse("Medication")
                .unwrap()
                .in_patient_compartment()
        );
        assert!(
            !ResourceType::parse("Practitioner")
                .unwrap()
                .in_patient_compartment()
        );
    }
}
