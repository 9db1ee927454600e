//! Parameters searched as the union of two others of the same type.

use super::{IndexEntry, ResourceType, SearchParam};

/// Parameters whose expression is exactly the union of two others of the same type: R4
/// defines `combo-code` as `Observation.code | Observation.component.code`, and `code` and
/// `component-code` as those two parts. Such a parameter is not indexed on its own (its
/// tokens would repeat its parts': 32 of an Observation's 79 tokens were `combo-code` and
/// `combo-value-quantity`); a search by it looks for the entries of either part. Checked
/// against the specification's expressions by a test.
pub(super) const UNIONS: &[(&str, &str, [&str; 2])] = &[
    ("Observation", "combo-code", ["code", "component-code"]),
    (
        "Observation",
        "combo-value-quantity",
        ["value-quantity", "component-value-quantity"],
    ),
    (
        "Observation",
        "combo-value-concept",
        ["value-concept", "component-value-concept"],
    ),
    (
        "Observation",
        "combo-data-absent-reason",
        ["data-absent-reason", "component-data-absent-reason"],
    ),
];

/// The two parameters `param` of `rtype` is the union of (see [`UNIONS`]).
pub(super) fn union_parts(rtype: ResourceType, param: &str) -> Option<&'static [&'static str; 2]> {
    UNIONS
        .iter()
        .find(|(t, name, _)| *t == rtype.as_str() && *name == param)
        .map(|(_, _, parts)| parts)
}

impl SearchParam {
    /// This parameter of `union` (see [`UNIONS`]) as a search of the entries of either of
    /// its `parts`: each entry becomes the same entry of each part (an entry's key is the
    /// parameter's name, or the name and a suffix such as `:lo`). "Any of" and "none of" then
    /// hold of the union exactly when they hold of the entries of both parts together.
    pub(super) fn into_union(mut self, union: &str, parts: &[&str; 2]) -> SearchParam {
        let split = |entries: Vec<IndexEntry>| -> Vec<IndexEntry> {
            entries
                .into_iter()
                .flat_map(|e| {
                    let suffix = e.param.strip_prefix(union).unwrap_or_default().to_owned();
                    parts.map(|part| IndexEntry::new(format!("{part}{suffix}"), e.value.clone()))
                })
                .collect()
        };
        self.any_of = split(std::mem::take(&mut self.any_of));
        for tests in &mut self.conjunctions {
            for test in tests {
                test.any_of = split(std::mem::take(&mut test.any_of));
            }
        }
        self
    }
}
