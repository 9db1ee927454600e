//! Result parameters: `_count`, `_summary`, `_total` (and `_totalMethod`, its Aidbox name).
//!
//! * `_count=n`: page size from 0 to [`MAX_COUNT`]; `0` asks for the total only. A larger
//!   value is capped to the maximum and a warning says so (the searchset carries it as an
//!   OperationOutcome entry), rather than refused.
//! * `_summary=count`: the total only (as `_count=0`, whatever `_count` says); `_summary=false`
//!   is the default. The other summaries (`true`, `text`, `data`) and `_elements` shape the
//!   resources returned (see `crate::subset`).
//! * `_total=none` leaves the total out; `estimate` and `accurate` give the exact total (the
//!   count is computed anyway, over what the principal may read only).

use super::{MAX_COUNT, SearchQuery, bad};
use crate::FhirError;

/// Whether and how a searchset states its total.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum TotalMode {
    /// `total` is given (`_total=accurate` or `estimate`, or by default).
    #[default]
    Accurate,
    /// `_total=none`: no `total`.
    None,
}

/// Applies `_count`, `_summary` or `_total` to `query`; `Ok(false)` when `name` is none of them.
pub(crate) fn apply(query: &mut SearchQuery, name: &str, value: &str) -> Result<bool, FhirError> {
    let value = value.trim();
    match name {
        "_count" => {
            let n = value.parse::<u64>().map_err(|_| {
                bad(
                    name,
                    format!("must be a non-negative integer (at most {MAX_COUNT} are returned)"),
                )
            })?;
            match usize::try_from(n).ok().filter(|n| *n <= MAX_COUNT) {
                Some(n) => query.count = n,
                None => {
                    query.count = MAX_COUNT;
                    query.warnings.push(format!(
                        "_count is above the maximum page size and was reduced to {MAX_COUNT}"
                    ));
                }
            }
        }
        "_summary" => match value {
            "count" => query.summary_count = true,
            // Checked (and remembered) by `subset::apply_param`.
            _ => query.summary_count = false,
        },
        "_total" => {
            query.total = match value {
                "none" => TotalMode::None,
                "estimate" | "accurate" => TotalMode::Accurate,
                _ => return Err(bad(name, "must be none, estimate or accurate")),
            }
        }
        // Aidbox's name for `_total`, sent by fhirpy's `count()`: `count` is an exact total.
        "_totalMethod" => {
            query.total = match value {
                "none" => TotalMode::None,
                "count" | "estimate" => TotalMode::Accurate,
                _ => return Err(bad(name, "must be count, estimate or none")),
            }
        }
        _ => return Ok(false),
    }
    Ok(true)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use crate::{ResourceType, SearchQuery};

    use super::*;

    fn parse(list: &[(&str, &str)]) -> Result<SearchQuery, FhirError> {
        let pairs: Vec<(String, String)> = list
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        SearchQuery::parse(ResourceType::PATIENT, &pairs, false)
    }

    #[test]
    fn count_summary_and_total() {
        let q = parse(&[("_count", "0")]).unwrap();
        assert_eq!((q.count, q.warnings.len()), (0, 0));
        let q = parse(&[("_count", "1000")]).unwrap();
        assert_eq!((q.count, q.warnings.len()), (1000, 0));
        for big in ["1001", "18446744073709551615"] {
            let q = parse(&[("_count", big)]).unwrap();
            assert_eq!(q.count, 1000);
            assert!(
                q.warnings[0].contains("reduced to 1000"),
                "{:?}",
                q.warnings
            );
        }
        let q = parse(&[("_summary", "count"), ("_count", "20")]).unwrap();
        assert_eq!(q.count, 0);
        let q = parse(&[("_summary", "false"), ("_count", "20")]).unwrap();
        assert_eq!(q.count, 20);
        let q = parse(&[("_summary", "true"), ("_count", "20")]).unwrap();
        assert_eq!((q.count, q.subset), (20, Some(crate::Subset::Summary)));
        let q = parse(&[("_summary", "count"), ("_summary", "text")]).unwrap();
        assert_eq!(
            (q.summary_count, q.subset),
            (false, Some(crate::Subset::Text))
        );
        let q = parse(&[("_elements", "birthDate")]).unwrap();
        assert_eq!(
            q.subset,
            Some(crate::Subset::Elements(vec!["birthDate".to_owned()]))
        );
        assert_eq!(parse(&[]).unwrap().total, TotalMode::Accurate);
        assert_eq!(parse(&[("_total", "none")]).unwrap().total, TotalMode::None);
        assert_eq!(
            parse(&[("_totalMethod", "none")]).unwrap().total,
            TotalMode::None
        );
        assert_eq!(
            parse(&[("_totalMethod", "count")]).unwrap().total,
            TotalMode::Accurate
        );
        assert!(parse(&[("_totalMethod", "fast")]).is_err());
        assert_eq!(
            parse(&[("_total", "estimate")]).unwrap().total,
            TotalMode::Accurate
        );
        for (name, value, phrase) in [
            ("_count", "-1", "non-negative integer"),
            ("_count", "ten", "non-negative integer"),
            ("_count", "99999999999999999999999", "non-negative integer"),
            ("_summary", "all", "true, text, data, count or false"),
            ("_total", "all", "none, estimate or accurate"),
        ] {
            match parse(&[(name, value)]) {
                Err(FhirError::BadSearchValue { param, message }) => {
                    assert_eq!(param, name);
                    assert!(message.contains(phrase), "{message}");
                }
                other => panic!("{name}={value}: {other:?}"),
            }
        }
    }
}
