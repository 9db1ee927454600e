//! Date range search over blind tokens.
//!
//! The index holds only HMAC tokens of equal values, so a range cannot be compared in SQL.
//! Instead each date value is indexed by the calendar units that contain its endpoints, and
//! a prefixed query is turned into the fewest calendar units that cover the range it asks for:
//! the query is then equality of tokens (an `IN` list), and the index reveals no order.
//!
//! **Target values.** Each date, dateTime or instant is the range of its own precision, in
//! whole days: `2020` is 2020-01-01..=2020-12-31, `2020-03` the month, `2020-03-14` and
//! `2020-03-14T10:00:00+01:00` that day (the date as written: a time and its zone are not
//! looked at). A Period is `start`'s first day ..= `end`'s last day; a missing start is open
//! below, a missing end open above; a Period with neither is not indexed. The value's first day
//! `lo` is indexed under `{param}:lo` and its last day `hi` under `{param}:hi`, each as the five
//! calendar units that hold it: its century (`20xx`), decade (`202x`), year (`2024`), month
//! (`2024-03`) and day (`2024-03-14`) — ten tokens per value, and one presence token. Centuries
//! and decades keep open ranges short: `ge2020-01-01` is `202x`, `203x` to `209x`, `21xx`,
//! `2200` and the bucket above (12 tokens) rather than 181 years, and each token is one probe
//! of the index for each candidate a search tests.
//!
//! **Bounded universe.** Days from [`MIN_YEAR`]-01-01 to [`MAX_YEAR`]-12-31 are indexed as
//! above. An endpoint before it (or a missing Period start) is indexed as the one token
//! `<1800`, after it (or a missing end) as `>2200`; they stand for "earlier than any day of the
//! universe" and "later". Search values must fall inside the universe (a query for year 1700
//! is refused), so these two buckets are exact: `lt1850` finds a birth date of 1750.
//!
//! **Prefixes** (R4 search, both the search value `[s0, s1]` and the target `[lo, hi]` are
//! ranges): `gt` hi > s1, `ge` hi >= s0, `lt` lo < s0, `le` lo <= s1, `sa` lo > s1, `eb` hi <
//! s0: each one condition on one endpoint, served exactly by the cover of that endpoint's
//! range. `eq` (the target within the search range) is s0 <= lo and hi <= s1: two conditions,
//! both covers must match. `ne` is a value that is not `eq`: the parameter is present and the
//! `lo` cover or the `hi` cover does not match (a NOT EXISTS over the eq tokens). `ap` is
//! refused.
//!
//! **Where tokens only approximate.** Tokens say which endpoints a resource has, not which
//! endpoints belong to the same value. For a resource with one value of the parameter (almost
//! all date parameters are single-valued) every prefix is exact. With several values, `gt`,
//! `ge`, `lt`, `le`, `sa` and `eb` stay exact ("some value satisfies it"), but `eq` may also
//! match a resource whose one value starts in the range and another value ends in it, and
//! `ne` is "not both the starts and the ends fall in the range" in the same sense. Times of
//! day are not indexed: a search value with a time is refused.
//!
//! **Cost.** A cover holds at most, on each side of the centuries it spans, 30 days, 11
//! months, 9 years and 9 decades; at most 4 centuries; and the 2 buckets: [`MAX_COVER`]
//! tokens, far below the search's bound on entries; the number of tokens of a query depends on its range and is
//! visible to a database observer, as the `IN` list length.

use time::{Date, Month};

use super::IndexEntry;

/// First year of the indexed universe.
pub(crate) const MIN_YEAR: i32 = 1800;

/// Last year of the indexed universe.
pub(crate) const MAX_YEAR: i32 = 2200;

/// Most tokens one cover can hold (see the module docs).
const MAX_COVER: usize = 2 * (30 + 11 + 9 + 9) + 4 + 2;

// One date value's query (`ne`: two covers and two presence entries) fits many times in a
// search's bound on entries.
const _: () = assert!(2 * (MAX_COVER + 1) * 10 < super::MAX_ENTRIES);

/// The token standing for any endpoint before the universe.
const BELOW: &str = "<1800";

/// The token standing for any endpoint after the universe.
const ABOVE: &str = ">2200";

/// The presence token's value (indexed under `{param}:lo` for every value).
const PRESENT: &str = "*";

/// A day of the extended universe, as a Julian day number; [`below`] and [`above`] are the
/// buckets just outside.
type Day = i32;

fn first_day() -> Day {
    ymd(MIN_YEAR, 1, 1).unwrap_or(0)
}

fn last_day() -> Day {
    ymd(MAX_YEAR, 12, 31).unwrap_or(0)
}

fn below() -> Day {
    first_day() - 1
}

fn above() -> Day {
    last_day() + 1
}

fn ymd(y: i32, m: u8, d: u8) -> Option<Day> {
    let month = Month::try_from(m).ok()?;
    Date::from_calendar_date(y, month, d)
        .ok()
        .map(Date::to_julian_day)
}

/// A search value's precision-range prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Prefix {
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    Sa,
    Eb,
}

/// The days `[first, last]` of a date written at year, month or day precision, unclamped.
/// `None` when it is not such a date (a time part is looked at by the caller).
fn calendar_range(s: &str) -> Option<(Day, Day)> {
    let parts: Vec<&str> = s.split('-').collect();
    let number = |s: &str, len: usize| -> Option<i32> {
        (s.len() == len && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    let year = number(parts.first()?, 4).filter(|y| *y > 0)?;
    match parts.as_slice() {
        [_] => Some((ymd(year, 1, 1)?, ymd(year, 12, 31)?)),
        [_, m] => {
            let m = u8::try_from(number(m, 2)?).ok()?;
            let first = Date::from_calendar_date(year, Month::try_from(m).ok()?, 1).ok()?;
            let last = first.replace_day(first.month().length(year)).ok()?;
            Some((first.to_julian_day(), last.to_julian_day()))
        }
        [_, m, d] => {
            let day = ymd(
                year,
                u8::try_from(number(m, 2)?).ok()?,
                u8::try_from(number(d, 2)?).ok()?,
            )?;
            Some((day, day))
        }
        _ => None,
    }
}

/// Clamps a day into the extended universe (outside days become the buckets).
fn clamp(day: Day) -> Day {
    day.clamp(below(), above())
}

/// The range `[lo, hi]` of a target value: a date/dateTime/instant string, or a Period
/// object. `None` when it has no usable date.
pub(crate) fn target_range(value: &serde_json::Value) -> Option<(Day, Day)> {
    let of = |s: &str| calendar_range(s.split('T').next().unwrap_or_default());
    match value {
        serde_json::Value::String(s) => of(s).map(|(lo, hi)| (clamp(lo), clamp(hi))),
        serde_json::Value::Object(period) => {
            let start = period.get("start").and_then(|v| v.as_str()).and_then(of);
            let end = period.get("end").and_then(|v| v.as_str()).and_then(of);
            if start.is_none() && end.is_none() {
                return None;
            }
            Some((
                start.map_or(below(), |s| clamp(s.0)),
                end.map_or(above(), |e| clamp(e.1)),
            ))
        }
        _ => None,
    }
}

/// The century token of the century starting at year `y` (`y` a multiple of 100).
fn century(y: i32) -> String {
    format!("{:02}xx", y / 100)
}

/// The decade token of the decade starting at year `y` (`y` a multiple of 10).
fn decade(y: i32) -> String {
    format!("{:03}x", y / 10)
}

/// The tokens of one endpoint: its century, decade, year, month and day, or its bucket. A
/// century or decade reaching past [`MAX_YEAR`] is never part of a cover, so it is left out.
fn endpoint_tokens(day: Day) -> Vec<String> {
    if day <= below() {
        return vec![BELOW.to_owned()];
    }
    if day >= above() {
        return vec![ABOVE.to_owned()];
    }
    match Date::from_julian_day(day) {
        Ok(d) => {
            let (y, m, dd) = (d.year(), u8::from(d.month()), d.day());
            let mut out = Vec::with_capacity(5);
            let (c, dec) = (y - y.rem_euclid(100), y - y.rem_euclid(10));
            if c + 99 <= MAX_YEAR {
                out.push(century(c));
            }
            if dec + 9 <= MAX_YEAR {
                out.push(decade(dec));
            }
            out.push(format!("{y:04}"));
            out.push(format!("{y:04}-{m:02}"));
            out.push(format!("{y:04}-{m:02}-{dd:02}"));
            out
        }
        Err(_) => Vec::new(),
    }
}

/// The index entries of one target value of `param`.
pub(crate) fn index_value(param: &str, value: &serde_json::Value) -> Vec<IndexEntry> {
    let Some((lo, hi)) = target_range(value) else {
        return Vec::new();
    };
    let (lo_key, hi_key) = keys(param);
    let mut out = vec![IndexEntry::new(lo_key.clone(), PRESENT)];
    out.extend(
        endpoint_tokens(lo)
            .into_iter()
            .map(|v| IndexEntry::new(lo_key.clone(), v)),
    );
    out.extend(
        endpoint_tokens(hi)
            .into_iter()
            .map(|v| IndexEntry::new(hi_key.clone(), v)),
    );
    out
}

fn keys(param: &str) -> (String, String) {
    (format!("{param}:lo"), format!("{param}:hi"))
}

/// The fewest century, decade, year, month and day tokens (and buckets) whose union is
/// exactly the days `[a, b]` of the extended universe; empty when `a > b`.
pub(crate) fn cover(a: Day, b: Day) -> Vec<String> {
    let (mut a, mut b) = (clamp(a), clamp(b));
    let mut out = Vec::new();
    if a > b {
        return out;
    }
    if a <= below() {
        out.push(BELOW.to_owned());
        a = first_day();
    }
    let top = b >= above();
    if top {
        b = last_day();
    }
    while a <= b {
        let Ok(d) = Date::from_julian_day(a) else {
            break;
        };
        let (y, m) = (d.year(), u8::from(d.month()));
        let year_end = ymd(y, 12, 31).unwrap_or(a);
        let month_end = a + i32::from(d.month().length(y)) - 1;
        let century_end = ymd(y + 99, 12, 31).unwrap_or(i32::MAX);
        let decade_end = ymd(y + 9, 12, 31).unwrap_or(i32::MAX);
        if d.ordinal() == 1 && y % 100 == 0 && century_end <= b {
            out.push(century(y));
            a = century_end + 1;
        } else if d.ordinal() == 1 && y % 10 == 0 && decade_end <= b {
            out.push(decade(y));
            a = decade_end + 1;
        } else if d.ordinal() == 1 && year_end <= b {
            out.push(format!("{y:04}"));
            a = year_end + 1;
        } else if d.day() == 1 && month_end <= b {
            out.push(format!("{y:04}-{m:02}"));
            a = month_end + 1;
        } else {
            out.push(format!("{y:04}-{m:02}-{:02}", d.day()));
            a += 1;
        }
    }
    if top {
        out.push(ABOVE.to_owned());
    }
    out
}

/// A test of the index: the resource has (or, negated, has none of) these entries.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenTest {
    /// `false`: the resource must have none of `any_of`.
    pub present: bool,
    /// Entries, any of which is the test's hit.
    pub any_of: Vec<IndexEntry>,
}

impl std::fmt::Debug for TokenTest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenTest")
            .field("present", &self.present)
            .field("values", &self.any_of.len())
            .finish()
    }
}

/// What a date query value matches: any of the entries, or every test of one conjunction.
pub(crate) enum Matcher {
    AnyOf(Vec<IndexEntry>),
    Conjunctions(Vec<Vec<TokenTest>>),
}

/// Parses `[prefix]YYYY[-MM[-DD]]` for `param` into what it matches; `Err` is the message.
pub(crate) fn parse_query(param: &str, part: &str) -> Result<Matcher, String> {
    let value = part.trim();
    let (prefix, rest) = split_prefix(value)?;
    if rest.contains('T') {
        return Err(
            "a time is not supported: dates are searched at day, month or year \
                    precision on encrypted indexes"
                .to_owned(),
        );
    }
    let (s0, s1) = calendar_range(rest)
        .ok_or_else(|| "not a valid date ([prefix]YYYY, YYYY-MM or YYYY-MM-DD)".to_owned())?;
    if s0 < first_day() || s1 > last_day() {
        return Err(format!(
            "dates from {MIN_YEAR} to {MAX_YEAR} only can be searched (earlier and later values \
             are found by lt{MIN_YEAR} and gt{MAX_YEAR})"
        ));
    }
    let (lo_key, hi_key) = keys(param);
    let entries = |key: &str, a: Day, b: Day| -> Vec<IndexEntry> {
        cover(a, b)
            .into_iter()
            .map(|v| IndexEntry::new(key, v))
            .collect()
    };
    let (lo_in, hi_in) = (entries(&lo_key, s0, s1), entries(&hi_key, s0, s1));
    let test = |present: bool, any_of: Vec<IndexEntry>| TokenTest { present, any_of };
    Ok(match prefix {
        Prefix::Gt => Matcher::AnyOf(entries(&hi_key, s1 + 1, above())),
        Prefix::Ge => Matcher::AnyOf(entries(&hi_key, s0, above())),
        Prefix::Lt => Matcher::AnyOf(entries(&lo_key, below(), s0 - 1)),
        Prefix::Le => Matcher::AnyOf(entries(&lo_key, below(), s1)),
        Prefix::Sa => Matcher::AnyOf(entries(&lo_key, s1 + 1, above())),
        Prefix::Eb => Matcher::AnyOf(entries(&hi_key, below(), s0 - 1)),
        Prefix::Eq => Matcher::Conjunctions(vec![vec![test(true, lo_in), test(true, hi_in)]]),
        Prefix::Ne => {
            let present = || test(true, vec![IndexEntry::new(lo_key.clone(), PRESENT)]);
            Matcher::Conjunctions(vec![
                vec![present(), test(false, lo_in)],
                vec![present(), test(false, hi_in)],
            ])
        }
    })
}

/// The prefix of a search value (`eq` when none) and the rest.
pub(crate) fn split_prefix(value: &str) -> Result<(Prefix, &str), String> {
    let prefix = match value.get(..2) {
        Some("eq") => Prefix::Eq,
        Some("ne") => Prefix::Ne,
        Some("gt") => Prefix::Gt,
        Some("lt") => Prefix::Lt,
        Some("ge") => Prefix::Ge,
        Some("le") => Prefix::Le,
        Some("sa") => Prefix::Sa,
        Some("eb") => Prefix::Eb,
        Some("ap") => {
            return Err("prefix 'ap' (approximately) is not supported on encrypted \
                        indexes; use ge and le"
                .to_owned());
        }
        _ => return Ok((Prefix::Eq, value)),
    };
    Ok((prefix, &value[2..]))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn day(s: &str) -> Day {
        calendar_range(s).unwrap().0
    }

    /// The days a cover token stands for.
    fn span(token: &str) -> (Day, Day) {
        let years = |first: i32, n: i32| {
            (
                ymd(first, 1, 1).unwrap(),
                ymd(first + n - 1, 12, 31).unwrap(),
            )
        };
        match token {
            BELOW => (i32::MIN, below()),
            ABOVE => (above(), i32::MAX),
            t if t.ends_with("xx") => years(t[..2].parse::<i32>().unwrap() * 100, 100),
            t if t.ends_with('x') => years(t[..3].parse::<i32>().unwrap() * 10, 10),
            t => calendar_range(t).unwrap(),
        }
    }

    /// The unit a cover token is part of (`None` for a century or a bucket).
    fn parent(token: &str) -> Option<String> {
        if token == BELOW || token == ABOVE || token.ends_with("xx") {
            return None;
        }
        if token.ends_with('x') {
            return Some(format!("{}xx", &token[..2]));
        }
        match token.len() {
            10 => Some(token[..7].to_owned()),
            7 => Some(token[..4].to_owned()),
            _ => Some(format!("{}x", &token[..3])),
        }
    }

    #[test]
    fn covers_are_exact_and_fewest() {
        let cases: &[(&str, &str, &[&str])] = &[
            ("2020-01-01", "2020-12-31", &["2020"]),
            ("2020-03-01", "2020-03-31", &["2020-03"]),
            ("2020-02-01", "2020-02-29", &["2020-02"]),
            ("2019-02-01", "2019-02-28", &["2019-02"]),
            ("2020-03-14", "2020-03-14", &["2020-03-14"]),
            (
                "2019-12-30",
                "2021-02-02",
                &[
                    "2019-12-30",
                    "2019-12-31",
                    "2020",
                    "2021-01",
                    "2021-02-01",
                    "2021-02-02",
                ],
            ),
            (
                "2020-01-01",
                "2021-06-30",
                &[
                    "2020", "2021-01", "2021-02", "2021-03", "2021-04", "2021-05", "2021-06",
                ],
            ),
        ];
        for (a, b, expected) in cases {
            assert_eq!(cover(day(a), day(b)), *expected, "{a}..{b}");
        }
        assert!(cover(day("2020-01-02"), day("2020-01-01")).is_empty());
        // Decades and centuries where whole ones fit.
        assert_eq!(
            cover(day("2019-12-31"), day("2041-02-28")),
            ["2019-12-31", "202x", "203x", "2040", "2041-01", "2041-02"]
        );
        // An open range: from a decade's first day to the bucket above.
        assert_eq!(
            cover(day("2020-01-01"), above()),
            [
                "202x", "203x", "204x", "205x", "206x", "207x", "208x", "209x", "21xx", "2200",
                ABOVE
            ]
        );
        // The whole universe and beyond: buckets, four centuries and the year 2200.
        let all = cover(below(), above());
        assert_eq!(all, [BELOW, "18xx", "19xx", "20xx", "21xx", "2200", ABOVE]);
        // The widest ranges stay under the bound.
        let widest = cover(day("1800-01-02"), day("2200-12-30"));
        assert!(widest.len() <= MAX_COVER, "{}", widest.len());
        assert_eq!(widest.len(), 30 + 11 + 9 + 9 + 3 + 11 + 30);
        assert!(cover(day("1800-01-02"), above()).len() <= MAX_COVER);
        let near_both_ends = cover(day("1809-12-02"), day("2199-01-30"));
        assert!(
            near_both_ends.len() <= MAX_COVER,
            "{}",
            near_both_ends.len()
        );
    }

    #[test]
    fn covers_partition_random_ranges() {
        // Every day of the range is in exactly one token, no day outside is; and no two
        // tokens could merge into their parent (each is maximal).
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |n: i32| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            i32::try_from(x % u64::try_from(n).unwrap()).unwrap()
        };
        let (lo, hi) = (first_day(), last_day());
        for _ in 0..300 {
            let a = lo - 1 + next(hi - lo + 3);
            let width = if next(2) == 0 { 800 } else { 40_000 };
            let b = a + next(width);
            let tokens = cover(a, b);
            let spans: Vec<(Day, Day)> = tokens.iter().map(|t| span(t)).collect();
            for w in spans.windows(2) {
                assert!(w[0].1 < w[1].0, "{tokens:?}");
            }
            // Contiguous and clamped to the query.
            for w in spans.windows(2) {
                if w[0].1 >= first_day() && w[1].0 <= last_day() {
                    assert_eq!(w[0].1 + 1, w[1].0, "{tokens:?}");
                }
            }
            for (t, (s, e)) in tokens.iter().zip(&spans) {
                if *t == BELOW {
                    assert!(clamp(a) == below());
                } else if *t == ABOVE {
                    assert!(clamp(b) == above());
                } else {
                    assert!(*s >= a && *e <= b, "{t}");
                    // Maximal: the parent unit is not inside the range (or not inside the
                    // universe).
                    if let Some(p) = parent(t) {
                        let (ps, pe) = span(&p);
                        assert!(ps < a || pe > b || pe > last_day(), "{t} in {a}..{b}");
                    }
                }
            }
            let days: i64 = spans
                .iter()
                .zip(&tokens)
                .filter(|(_, t)| *t != BELOW && *t != ABOVE)
                .map(|((s, e), _)| i64::from(e - s + 1))
                .sum();
            let inside = i64::from(b.min(last_day()) - a.max(first_day()) + 1).max(0);
            assert_eq!(days, inside);
        }
    }

    #[test]
    fn target_ranges() {
        use serde_json::json;
        assert_eq!(
            target_range(&json!("2020")),
            Some((day("2020-01-01"), day("2020-12-31")))
        );
        assert_eq!(
            target_range(&json!("2020-03-14T23:30:00-05:00")),
            Some((day("2020-03-14"), day("2020-03-14")))
        );
        assert_eq!(target_range(&json!("1750-05")), Some((below(), below())));
        assert_eq!(target_range(&json!("2300")), Some((above(), above())));
        assert_eq!(
            target_range(&json!({"start": "2020-02"})),
            Some((day("2020-02-01"), above()))
        );
        assert_eq!(
            target_range(&json!({"end": "2020"})),
            Some((below(), day("2020-12-31")))
        );
        assert_eq!(target_range(&json!({})), None);
        assert_eq!(target_range(&json!("garbage")), None);
        assert_eq!(
            endpoint_tokens(day("2020-03-04")),
            ["20xx", "202x", "2020", "2020-03", "2020-03-04"]
        );
        // No century or decade past the universe's last year.
        assert_eq!(
            endpoint_tokens(day("2200-07-01")),
            ["2200", "2200-07", "2200-07-01"]
        );
    }

    #[test]
    fn query_bounds_and_prefixes() {
        for bad in [
            "1799",
            "2201-01",
            "ap2020",
            "2020-01-01T10:00Z",
            "20",
            "2020-02-30",
        ] {
            assert!(parse_query("date", bad).is_err(), "{bad}");
        }
        for ok in [
            "1800",
            "2200-12-31",
            "lt1800",
            "gt2200",
            "ne2020-03",
            "sa2020",
            "eb2020",
        ] {
            assert!(parse_query("date", ok).is_ok(), "{ok}");
        }
        match parse_query("date", "lt1800").unwrap() {
            Matcher::AnyOf(e) => assert_eq!(e, vec![IndexEntry::new("date:lo", BELOW)]),
            Matcher::Conjunctions(_) => panic!(),
        }
        match parse_query("date", "2020").unwrap() {
            Matcher::Conjunctions(c) => {
                assert_eq!(c.len(), 1);
                assert_eq!(c[0][0].any_of, vec![IndexEntry::new("date:lo", "2020")]);
                assert_eq!(c[0][1].any_of, vec![IndexEntry::new("date:hi", "2020")]);
            }
            Matcher::AnyOf(_) => panic!(),
        }
    }
}
