//! Sensitivity labels read from `meta.security`.

use std::fmt;

use serde_json::Value;

use crate::PolicyError;
use crate::error::clip;

/// HL7 v3 Confidentiality code system.
pub const CONFIDENTIALITY_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality";
/// HL7 v3 ActCode code system (information sensitivity codes).
pub const ACT_CODE_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";
const CONFIDENTIALITY_OID: &str = "urn:oid:2.16.840.1.113883.5.25";
const ACT_CODE_OID: &str = "urn:oid:2.16.840.1.113883.5.4";

/// A sensitivity label that needs an explicit grant (per patient) before a principal may see
/// or change a resource that carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Label {
    /// Restricted (v3-Confidentiality `R`; `V`, very restricted, counts as restricted too).
    Restricted,
    /// Mental health (v3-ActCode `PSY`; `MH` and `BH` are read as aliases).
    MentalHealth,
    /// Substance use (v3-ActCode `ETH`; `SUD`, `ETHUD` and `OPIOIDUD` are read as aliases).
    SubstanceUse,
    /// HIV/AIDS (v3-ActCode `HIV`).
    Hiv,
}

impl Label {
    /// Every label.
    pub const ALL: &'static [Label] = &[
        Label::Restricted,
        Label::MentalHealth,
        Label::SubstanceUse,
        Label::Hiv,
    ];

    /// The canonical code, as policies see it in `resource.labels` and `context.label_grants`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Label::Restricted => "R",
            Label::MentalHealth => "PSY",
            Label::SubstanceUse => "ETH",
            Label::Hiv => "HIV",
        }
    }

    /// Parses a canonical code or an alias (`PSY`, `MH`, ...), e.g. for a grant given on the
    /// command line.
    pub fn parse(code: &str) -> Result<Self, PolicyError> {
        Self::from_code(code).ok_or_else(|| PolicyError::UnknownLabel(clip(code)))
    }

    fn from_code(code: &str) -> Option<Self> {
        Some(match code {
            "R" | "V" => Label::Restricted,
            "PSY" | "MH" | "BH" => Label::MentalHealth,
            "ETH" | "SUD" | "ETHUD" | "OPIOIDUD" => Label::SubstanceUse,
            "HIV" => Label::Hiv,
            _ => return None,
        })
    }

    /// The label of one `meta.security` coding, if it is one of ours.
    ///
    /// A coding without `system` is read by its code alone: a label is never dropped because
    /// its writer left the system out (erring towards needing a grant). Codings of other
    /// systems are not labels here.
    fn from_coding(system: Option<&str>, code: &str) -> Option<Self> {
        let label = Self::from_code(code)?;
        let confidentiality = matches!(label, Label::Restricted);
        match system {
            None => Some(label),
            Some(CONFIDENTIALITY_SYSTEM | CONFIDENTIALITY_OID) if confidentiality => Some(label),
            Some(ACT_CODE_SYSTEM | ACT_CODE_OID) if !confidentiality => Some(label),
            Some(_) => None,
        }
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The sensitivity labels a resource body carries in `meta.security`, sorted, without
/// duplicates. Anything that is not a coding of ours is ignored; nothing here fails.
pub fn labels_of(body: &Value) -> Vec<Label> {
    let mut labels: Vec<Label> = body
        .get("meta")
        .and_then(|m| m.get("security"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|coding| {
            let code = coding.get("code")?.as_str()?;
            let system = match coding.get("system") {
                None | Some(Value::Null) => None,
                Some(s) => Some(s.as_str()?),
            };
            Label::from_coding(system, code)
        })
        .collect();
    labels.sort();
    labels.dedup();
    labels
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn security(codings: Value) -> Value {
        json!({"resourceType": "Observation", "meta": {"security": codings}})
    }

    #[test]
    fn reads_meta_security() {
        let body = security(json!([
            {"system": CONFIDENTIALITY_SYSTEM, "code": "R"},
            {"system": ACT_CODE_SYSTEM, "code": "PSY"},
            {"system": ACT_CODE_SYSTEM, "code": "ETH"},
            {"system": ACT_CODE_SYSTEM, "code": "HIV"},
            {"system": ACT_CODE_SYSTEM, "code": "HIV"},
        ]));
        assert_eq!(labels_of(&body), Label::ALL.to_vec());
    }

    #[test]
    fn aliases_oids_and_missing_system() {
        let body = security(json!([
            {"system": ACT_CODE_SYSTEM, "code": "MH"},
            {"system": ACT_CODE_OID, "code": "SUD"},
            {"code": "HIV"},
        ]));
        assert_eq!(
            labels_of(&body),
            vec![Label::MentalHealth, Label::SubstanceUse, Label::Hiv]
        );
        let body = security(json!([{"system": CONFIDENTIALITY_OID, "code": "V"}]));
        assert_eq!(labels_of(&body), vec![Label::Restricted]);
    }

    #[test]
    fn ignores_what_is_not_ours() {
        for codings in [
            json!([{"system": CONFIDENTIALITY_SYSTEM, "code": "N"}]),
            json!([{"system": CONFIDENTIALITY_SYSTEM, "code": "PSY"}]),
            json!([{"system": ACT_CODE_SYSTEM, "code": "R"}]),
            json!([{"system": "http://example.org", "code": "HIV"}]),
            json!([{"system": 7, "code": "HIV"}]),
            json!([{"code": 7}]),
            json!("R"),
            json!({}),
        ] {
            assert!(
                labels_of(&security(codings.clone())).is_empty(),
                "{codings}"
            );
        }
        assert!(labels_of(&json!({"resourceType": "Patient"})).is_empty());
        assert!(labels_of(&json!(null)).is_empty());
    }

    #[test]
    fn parse_codes() {
        for l in Label::ALL {
            assert_eq!(Label::parse(l.as_str()).unwrap(), *l);
        }
        assert_eq!(Label::parse("MH").unwrap(), Label::MentalHealth);
        assert!(Label::parse("psy").is_err());
    }
}
