//! SMART on FHIR scopes (v2, and v1 read as v2).

use std::fmt;

use phivault_fhir::{Id, ResourceType};

use crate::error::clip;
use crate::{Action, PolicyError};

/// Longest scope accepted, in bytes.
const MAX_SCOPE_LEN: usize = 200;
/// Most scopes accepted in one scope string.
const MAX_SCOPES: usize = 256;

/// Whose data a scope reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ScopeContext {
    /// `patient/`: the compartment of the launch patient only (and directory resources).
    Patient,
    /// `user/`: whatever the user the app acts for may reach; it only narrows that user's own
    /// permissions. An app acting on its own (client credentials) has no user, so `user/`
    /// scopes give it nothing.
    User,
    /// `system/`: every patient (backend services).
    System,
}

impl ScopeContext {
    /// The scope prefix (`patient`).
    pub fn as_str(&self) -> &'static str {
        match self {
            ScopeContext::Patient => "patient",
            ScopeContext::User => "user",
            ScopeContext::System => "system",
        }
    }
}

/// A set of SMART v2 permissions: `c` create, `r` read (read, vread, history), `u` update,
/// `d` delete, `s` search.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Permissions(u8);

impl Permissions {
    /// `c`: create.
    pub const CREATE: Permissions = Permissions(1);
    /// `r`: read, vread, history.
    pub const READ: Permissions = Permissions(2);
    /// `u`: update.
    pub const UPDATE: Permissions = Permissions(4);
    /// `d`: delete.
    pub const DELETE: Permissions = Permissions(8);
    /// `s`: search.
    pub const SEARCH: Permissions = Permissions(16);
    /// `cruds`: all of them.
    pub const ALL: Permissions = Permissions(31);

    const LETTERS: [(char, Permissions); 5] = [
        ('c', Permissions::CREATE),
        ('r', Permissions::READ),
        ('u', Permissions::UPDATE),
        ('d', Permissions::DELETE),
        ('s', Permissions::SEARCH),
    ];

    /// True when every permission of `other` is in `self`.
    pub fn contains(self, other: Permissions) -> bool {
        self.0 & other.0 == other.0
    }

    /// The permission a clinical action needs; `None` for the other actions.
    pub fn needed_by(action: Action) -> Option<Permissions> {
        Some(match action {
            Action::Read | Action::Vread | Action::History => Permissions::READ,
            // A research export is a search whose hits leave de-identified.
            Action::Search | Action::ExportDeidentified => Permissions::SEARCH,
            Action::Create => Permissions::CREATE,
            Action::Update => Permissions::UPDATE,
            Action::Delete => Permissions::DELETE,
            _ => return None,
        })
    }

    /// Parses the part after the dot: v2 letters in `cruds` order (`rs`), or v1 `read`
    /// (= `rs`), `write` (= `cud`), `*` (= `cruds`).
    fn parse(s: &str) -> Result<Self, &'static str> {
        match s {
            "read" => return Ok(Permissions(Self::READ.0 | Self::SEARCH.0)),
            "write" => {
                return Ok(Permissions(
                    Self::CREATE.0 | Self::UPDATE.0 | Self::DELETE.0,
                ));
            }
            "*" => return Ok(Self::ALL),
            "" => return Err("no permissions after the dot"),
            _ => {}
        }
        let mut bits = 0u8;
        let mut next = 0usize;
        for c in s.chars() {
            let at = Self::LETTERS[next..]
                .iter()
                .position(|(l, _)| *l == c)
                .ok_or("permissions must be letters of `cruds`, in that order, each once")?;
            bits |= Self::LETTERS[next + at].1.0;
            next += at + 1;
        }
        Ok(Permissions(bits))
    }
}

impl fmt::Display for Permissions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (letter, p) in Self::LETTERS {
            if self.contains(p) {
                write!(f, "{letter}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Permissions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Permissions({self})")
    }
}

/// One SMART data-access scope: `patient/Observation.rs`, `user/*.cruds`, `system/*.r`, or
/// v1 `patient/*.read`, `user/Observation.write`. Displayed in v2 form.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SmartScope {
    context: ScopeContext,
    resource_type: Option<ResourceType>,
    permissions: Permissions,
}

impl SmartScope {
    /// Parses one data-access scope. Granular v2 scopes (with `?`) and types this server does
    /// not store are refused.
    pub fn parse(s: &str) -> Result<Self, PolicyError> {
        let bad = |reason| PolicyError::InvalidScope {
            scope: clip(s),
            reason,
        };
        if s.len() > MAX_SCOPE_LEN {
            return Err(bad("too long"));
        }
        if s.contains('?') {
            return Err(bad("granular scopes (with `?`) are not supported"));
        }
        let (context, rest) = s
            .split_once('/')
            .ok_or(bad("expected `patient/`, `user/` or `system/`"))?;
        let context = match context {
            "patient" => ScopeContext::Patient,
            "user" => ScopeContext::User,
            "system" => ScopeContext::System,
            _ => return Err(bad("expected `patient/`, `user/` or `system/`")),
        };
        let (rtype, perms) = rest
            .rsplit_once('.')
            .ok_or(bad("expected `Type.permissions`"))?;
        let resource_type = match rtype {
            "*" => None,
            t => Some(ResourceType::parse(t).map_err(|_| bad("resource type not stored here"))?),
        };
        let permissions = Permissions::parse(perms).map_err(bad)?;
        Ok(SmartScope {
            context,
            resource_type,
            permissions,
        })
    }

    /// Whose data it reaches.
    pub fn context(&self) -> ScopeContext {
        self.context
    }

    /// The resource type, or `None` for `*`.
    pub fn resource_type(&self) -> Option<ResourceType> {
        self.resource_type
    }

    /// What it allows.
    pub fn permissions(&self) -> Permissions {
        self.permissions
    }

    /// Whether this scope allows `need` on a resource of `rtype` (`None`: all types) in the
    /// compartment of `patient` (`None`: none, or a query across patients).
    fn reaches(
        &self,
        need: Permissions,
        rtype: Option<ResourceType>,
        patient: Option<&Id>,
        launch_patient: Option<&Id>,
    ) -> bool {
        if !self.permissions.contains(need) {
            return false;
        }
        if self.resource_type.is_some() && self.resource_type != rtype {
            return false;
        }
        match self.context {
            ScopeContext::System | ScopeContext::User => true,
            ScopeContext::Patient => match (launch_patient, patient) {
                (Some(launch), Some(patient)) => launch == patient,
                (Some(_), None) => rtype.is_some_and(crate::request::is_directory_type),
                (None, _) => false,
            },
        }
    }
}

impl fmt::Display for SmartScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rtype = self.resource_type.map_or("*", |t| t.as_str());
        write!(f, "{}/{rtype}.{}", self.context.as_str(), self.permissions)
    }
}

/// The scopes of a token or a client registration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScopeSet {
    data: Vec<SmartScope>,
    other: Vec<String>,
}

impl ScopeSet {
    /// Parses a space-separated scope string. Scopes that are not about data (`openid`,
    /// `fhirUser`, `launch/patient`, `offline_access`, ...) and granular v2 scopes (with `?`,
    /// not supported yet) are kept aside and grant no data access; a malformed data scope is
    /// an error.
    pub fn parse(s: &str) -> Result<Self, PolicyError> {
        let mut set = ScopeSet::default();
        for (n, token) in s.split_ascii_whitespace().enumerate() {
            if n >= MAX_SCOPES {
                return Err(PolicyError::InvalidScope {
                    scope: clip(token),
                    reason: "too many scopes",
                });
            }
            let data_like = ["patient/", "user/", "system/"]
                .iter()
                .any(|p| token.starts_with(p));
            if data_like && !token.contains('?') {
                let scope = SmartScope::parse(token)?;
                if !set.data.contains(&scope) {
                    set.data.push(scope);
                }
            } else if token.len() > MAX_SCOPE_LEN {
                return Err(PolicyError::InvalidScope {
                    scope: clip(token),
                    reason: "too long",
                });
            } else if !set.other.iter().any(|o| o == token) {
                set.other.push(token.to_owned());
            }
        }
        Ok(set)
    }

    /// The data-access scopes.
    pub fn data_scopes(&self) -> &[SmartScope] {
        &self.data
    }

    /// The scopes kept aside: they grant no data access.
    pub fn other_scopes(&self) -> &[String] {
        &self.other
    }

    /// Whether these scopes allow `action` on a resource of `rtype` (`None`: all types) in the
    /// compartment of `patient` (`None`: outside any compartment, or a query across patients),
    /// for a token launched with `launch_patient`.
    ///
    /// Read, vread and history need `r`, search `s`, create `c`, update `u`, delete `d`.
    /// `patient/` scopes reach only the launch patient's compartment, and directory resources
    /// (Practitioner, Organization, ...). A transaction needs at least one data scope (each
    /// entry is then checked on its own); reading the CapabilityStatement needs none; the
    /// administrative actions are never allowed by scopes.
    pub fn permits(
        &self,
        action: Action,
        rtype: Option<ResourceType>,
        patient: Option<&Id>,
        launch_patient: Option<&Id>,
    ) -> bool {
        self.permits_for(true, action, rtype, patient, launch_patient)
    }

    /// As [`ScopeSet::permits`]; `with_user` false ignores `user/` scopes (an app without a
    /// user).
    pub(crate) fn permits_for(
        &self,
        with_user: bool,
        action: Action,
        rtype: Option<ResourceType>,
        patient: Option<&Id>,
        launch_patient: Option<&Id>,
    ) -> bool {
        let usable = |s: &&SmartScope| with_user || s.context != ScopeContext::User;
        match action {
            Action::ReadCapabilities | Action::ReadProcessingActivities => true,
            Action::Transaction => self.data.iter().any(|s| usable(&s)),
            _ => match Permissions::needed_by(action) {
                Some(need) => self
                    .data
                    .iter()
                    .filter(usable)
                    .any(|s| s.reaches(need, rtype, patient, launch_patient)),
                None => false,
            },
        }
    }
}

impl fmt::Display for ScopeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for s in self
            .data
            .iter()
            .map(ToString::to_string)
            .chain(self.other.iter().cloned())
        {
            if !first {
                f.write_str(" ")?;
            }
            first = false;
            f.write_str(&s)?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn id(s: &str) -> Id {
        Id::parse(s).unwrap()
    }

    fn t(s: &str) -> Option<ResourceType> {
        Some(ResourceType::parse(s).unwrap())
    }

    #[test]
    fn parses_v2_and_v1() {
        for (input, shown) in [
            ("patient/Observation.rs", "patient/Observation.rs"),
            ("user/*.cruds", "user/*.cruds"),
            ("system/*.r", "system/*.r"),
            ("patient/*.read", "patient/*.rs"),
            ("user/Observation.write", "user/Observation.cud"),
            ("system/Patient.*", "system/Patient.cruds"),
            ("user/Condition.cd", "user/Condition.cd"),
        ] {
            assert_eq!(SmartScope::parse(input).unwrap().to_string(), shown);
        }
    }

    #[test]
    fn refuses_malformed() {
        for bad in [
            "patient/Observation.sr",
            "patient/Observation.rr",
            "patient/Observation.x",
            "patient/Observation.",
            "patient/Observation",
            "patient/Observations.r",
            "practitioner/*.r",
            "patient/Observation.rs?category=laboratory",
            "*.r",
        ] {
            assert!(SmartScope::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn scope_set_keeps_other_scopes_aside() {
        let set = ScopeSet::parse(
            "openid fhirUser launch/patient offline_access patient/Observation.rs \
             patient/Observation.rs patient/Observation.rs?category=vital-signs",
        )
        .unwrap();
        assert_eq!(set.data_scopes().len(), 1);
        assert_eq!(
            set.other_scopes(),
            [
                "openid",
                "fhirUser",
                "launch/patient",
                "offline_access",
                "patient/Observation.rs?category=vital-signs"
            ]
        );
        assert!(ScopeSet::parse("openid patient/Foo.r").is_err());
        assert!(ScopeSet::parse("").unwrap().data_scopes().is_empty());
    }

    #[test]
    fn patient_scopes_reach_the_launch_patient_only() {
        let set = ScopeSet::parse("patient/Observation.rs").unwrap();
        let (a, b) = (id("a"), id("b"));
        let obs = t("Observation");
        assert!(set.permits(Action::Read, obs, Some(&a), Some(&a)));
        assert!(set.permits(Action::Vread, obs, Some(&a), Some(&a)));
        assert!(set.permits(Action::History, obs, Some(&a), Some(&a)));
        assert!(set.permits(Action::Search, obs, Some(&a), Some(&a)));
        assert!(!set.permits(Action::Read, obs, Some(&b), Some(&a)));
        assert!(!set.permits(Action::Read, obs, Some(&a), None));
        assert!(!set.permits(Action::Search, obs, None, Some(&a)));
        assert!(!set.permits(Action::Update, obs, Some(&a), Some(&a)));
        assert!(!set.permits(Action::Create, obs, Some(&a), Some(&a)));
        assert!(!set.permits(Action::Delete, obs, Some(&a), Some(&a)));
        assert!(!set.permits(Action::Read, t("Condition"), Some(&a), Some(&a)));
        assert!(!set.permits(Action::Read, None, Some(&a), Some(&a)));
        assert!(!set.permits(Action::ManageUsers, obs, Some(&a), Some(&a)));
        assert!(set.permits(Action::ReadCapabilities, None, None, None));

        let set = ScopeSet::parse("patient/*.r").unwrap();
        assert!(set.permits(Action::Read, t("Practitioner"), None, Some(&a)));
        assert!(!set.permits(Action::Read, t("Observation"), None, Some(&a)));
        assert!(!set.permits(Action::Search, t("Practitioner"), None, Some(&a)));
    }

    #[test]
    fn user_and_system_scopes() {
        let a = id("a");
        let set = ScopeSet::parse("user/*.cruds").unwrap();
        for action in Action::ALL.iter().filter(|a| a.is_clinical()) {
            assert!(set.permits(*action, t("Condition"), Some(&a), None));
            assert!(set.permits(*action, None, None, None));
            assert!(!set.permits_for(false, *action, t("Condition"), Some(&a), None));
        }
        assert!(set.permits(Action::Transaction, None, None, None));
        assert!(!set.permits_for(false, Action::Transaction, None, None, None));

        let set = ScopeSet::parse("system/*.r").unwrap();
        assert!(set.permits_for(false, Action::Read, t("Condition"), Some(&a), None));
        assert!(set.permits_for(false, Action::History, t("Condition"), Some(&a), None));
        assert!(!set.permits_for(false, Action::Search, t("Condition"), Some(&a), None));
        assert!(!set.permits_for(false, Action::Update, t("Condition"), Some(&a), None));
        assert!(!set.permits_for(false, Action::ExportDeidentified, None, None, None));
    }
}
