//! FHIR OperationOutcome.

use serde_json::{Value, json};

use crate::{Issue, IssueCode};

/// An OperationOutcome under construction.
#[derive(Debug, Clone, Default)]
pub struct OperationOutcome {
    issues: Vec<(String, Issue)>,
}

impl OperationOutcome {
    /// An outcome with one error issue.
    pub fn error(code: IssueCode, message: impl Into<String>) -> Self {
        let mut o = Self::default();
        o.push(
            "error",
            Issue {
                code,
                path: String::new(),
                message: message.into(),
            },
        );
        o
    }

    /// An outcome with one informational issue (successful operations), with the issue code
    /// `informational`.
    pub fn information(message: impl Into<String>) -> Self {
        let mut o = Self::default();
        o.push(
            "information",
            Issue {
                code: IssueCode::Informational,
                path: String::new(),
                message: message.into(),
            },
        );
        o
    }

    /// An outcome from several error issues.
    pub fn from_issues(issues: Vec<Issue>) -> Self {
        let mut o = Self::default();
        for i in issues {
            o.push("error", i);
        }
        o
    }

    /// Adds an issue with a severity (`fatal`, `error`, `warning`, `information`).
    pub fn push(&mut self, severity: &str, issue: Issue) {
        self.issues.push((severity.to_owned(), issue));
    }

    /// The FHIR JSON.
    pub fn to_json(&self) -> Value {
        let issues: Vec<Value> = self
            .issues
            .iter()
            .map(|(sev, i)| {
                let mut v = json!({
                    "severity": sev,
                    "code": i.code.as_str(),
                    "diagnostics": i.message,
                });
                if !i.path.is_empty() {
                    v["expression"] = json!([i.path]);
                }
                v
            })
            .collect();
        json!({ "resourceType": "OperationOutcome", "issue": issues })
    }
}
