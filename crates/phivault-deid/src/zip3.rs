//! ZIP codes reduced to their first three digits, and to `000` where the three-digit area
//! holds 20,000 people or fewer (HIPAA Safe Harbor).

/// The shipped table of small three-digit areas (see the file's header for its source).
const RESTRICTED: &str = include_str!("../data/zip3-restricted.txt");

/// The shipped table.
pub(crate) fn default_restricted() -> Vec<String> {
    RESTRICTED
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

/// The three-digit form of a US ZIP code (`12345` or `12345-6789`), `000` for a restricted
/// area; `None` for anything else (removed by the caller).
pub(crate) fn generalize(value: &str, restricted: &[String]) -> Option<String> {
    let five = value.trim().split('-').next().unwrap_or_default();
    if five.len() != 5 || !five.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let three = &five[..3];
    Some(if restricted.iter().any(|r| r == three) {
        "000".to_owned()
    } else {
        three.to_owned()
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn three_digits_and_small_areas() {
        let table = default_restricted();
        assert_eq!(table.len(), 17);
        assert_eq!(generalize("02139", &table).unwrap(), "021");
        assert_eq!(generalize("02139-4307", &table).unwrap(), "021");
        assert_eq!(generalize("03601", &table).unwrap(), "000");
        assert_eq!(generalize("89301", &table).unwrap(), "000");
        assert!(generalize("SW1A 1AA", &table).is_none());
        assert!(generalize("0213", &table).is_none());
    }
}
