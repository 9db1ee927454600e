//! `_lastUpdated`: the time of a resource's last write, with every date prefix.
//!
//! `meta.lastUpdated` is stamped by the store when it writes a version, and the store keeps
//! the same instant (to the second) in the clear as the row's write time, which it already
//! uses for retention: a write time is not clinical data, and it is visible to a database
//! reader anyway. So `_lastUpdated` needs no blind tokens: a query becomes half-open intervals
//! of unix seconds compared with that column, exactly.
//!
//! Search values: `YYYY`, `YYYY-MM`, `YYYY-MM-DD` (a UTC day, month or year), or
//! `YYYY-MM-DDThh:mm[:ss][Z|±hh:mm]` (a zone is required with a time). A search value is the
//! range of its precision; the target is a point in time, so `eq` is "within", `gt`/`sa` "at or
//! after the range's end", `lt`/`eb` "before its start", `ge` "at or after its start", `le`
//! "before its end", `ne` "outside". Fractional seconds other than zeros are refused: the
//! write time is kept to the second, so a sub-second bound could not be decided exactly.

use time::{Date, Month, PrimitiveDateTime, Time, UtcOffset};

use super::date_range::{Prefix, split_prefix};

/// Unix seconds `[from, to)`; `None`: unbounded on that side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeInterval {
    /// First second in the interval.
    pub from: Option<i64>,
    /// First second after the interval.
    pub to: Option<i64>,
}

const MALFORMED: &str = "not a valid date or instant ([prefix]YYYY, YYYY-MM, YYYY-MM-DD or \
                         YYYY-MM-DDThh:mm[:ss] with Z or an offset)";

/// Parses one `_lastUpdated` value into the intervals (OR) of write times it matches.
pub(crate) fn parse(part: &str) -> Result<Vec<TimeInterval>, String> {
    let (prefix, rest) = split_prefix(part.trim())?;
    let (from, to) = range(rest)?;
    let i = |from, to| TimeInterval { from, to };
    Ok(match prefix {
        Prefix::Eq => vec![i(Some(from), Some(to))],
        Prefix::Ne => vec![i(None, Some(from)), i(Some(to), None)],
        Prefix::Gt | Prefix::Sa => vec![i(Some(to), None)],
        Prefix::Ge => vec![i(Some(from), None)],
        Prefix::Lt | Prefix::Eb => vec![i(None, Some(from))],
        Prefix::Le => vec![i(None, Some(to))],
    })
}

/// The range `[from, to)` in unix seconds of a search value at its precision.
pub(super) fn range(value: &str) -> Result<(i64, i64), String> {
    let malformed = || MALFORMED.to_owned();
    let (date_part, time_part) = match value.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (value, None),
    };
    let number = |s: &str, len: usize| -> Result<i32, String> {
        if s.len() == len && s.bytes().all(|b| b.is_ascii_digit()) {
            s.parse().map_err(|_| malformed())
        } else {
            Err(malformed())
        }
    };
    let parts: Vec<&str> = date_part.split('-').collect();
    let year = number(parts.first().ok_or_else(malformed)?, 4)?;
    if year == 0 || parts.len() > 3 || (time_part.is_some() && parts.len() != 3) {
        return Err(malformed());
    }
    let month = |m: &str| -> Result<Month, String> {
        Month::try_from(u8::try_from(number(m, 2)?).map_err(|_| malformed())?)
            .map_err(|_| malformed())
    };
    let date = |y: i32, m: Month, d: u8| Date::from_calendar_date(y, m, d).map_err(|_| malformed());
    let utc_midnight = |d: Date| PrimitiveDateTime::new(d, Time::MIDNIGHT).assume_utc();
    let secs = |d: Date| utc_midnight(d).unix_timestamp();
    match (parts.as_slice(), time_part) {
        ([_], _) => {
            let first = date(year, Month::January, 1)?;
            let next = date(year + 1, Month::January, 1)?;
            Ok((secs(first), secs(next)))
        }
        ([_, m], _) => {
            let first = date(year, month(m)?, 1)?;
            let next = first
                .replace_day(first.month().length(year))
                .ok()
                .and_then(Date::next_day)
                .ok_or_else(malformed)?;
            Ok((secs(first), secs(next)))
        }
        ([_, m, d], None) => {
            let day = date(
                year,
                month(m)?,
                u8::try_from(number(d, 2)?).map_err(|_| malformed())?,
            )?;
            let next = day.next_day().ok_or_else(malformed)?;
            Ok((secs(day), secs(next)))
        }
        ([_, m, d], Some(t)) => {
            let day = date(
                year,
                month(m)?,
                u8::try_from(number(d, 2)?).map_err(|_| malformed())?,
            )?;
            let zone_at = t
                .find(['Z', '+', '-'])
                .ok_or_else(|| "a time needs a zone (Z or an offset such as +01:00)".to_owned())?;
            let (clock, zone) = t.split_at(zone_at);
            let offset = if zone == "Z" {
                UtcOffset::UTC
            } else {
                let sign = if zone.starts_with('-') { -1 } else { 1 };
                let (h, m) = zone[1..].split_once(':').ok_or_else(malformed)?;
                let (h, m) = (number(h, 2)?, number(m, 2)?);
                UtcOffset::from_hms(
                    i8::try_from(sign * h).map_err(|_| malformed())?,
                    i8::try_from(sign * m).map_err(|_| malformed())?,
                    0,
                )
                .map_err(|_| malformed())?
            };
            let (clock, fraction) = match clock.split_once('.') {
                Some((c, f)) => (c, Some(f)),
                None => (clock, None),
            };
            if let Some(f) = fraction {
                if f.is_empty() || !f.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(malformed());
                }
                if f.bytes().any(|b| b != b'0') {
                    return Err(
                        "fractional seconds are not supported: the time of a write is \
                                kept to the second"
                            .to_owned(),
                    );
                }
            }
            let fields: Vec<&str> = clock.split(':').collect();
            let (h, mi, s, width) = match fields.as_slice() {
                [h, mi] if fraction.is_none() => (number(h, 2)?, number(mi, 2)?, 0, 60),
                [h, mi, s] => (number(h, 2)?, number(mi, 2)?, number(s, 2)?, 1),
                _ => return Err(malformed()),
            };
            let to_u8 = |v: i32| u8::try_from(v).map_err(|_| malformed());
            let time = Time::from_hms(to_u8(h)?, to_u8(mi)?, to_u8(s)?).map_err(|_| malformed())?;
            let start = PrimitiveDateTime::new(day, time)
                .assume_offset(offset)
                .unix_timestamp();
            Ok((start, start + width))
        }
        _ => Err(malformed()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ranges_of_each_precision() {
        let day = 86_400;
        let y2020 = 1_577_836_800; // 2020-01-01T00:00:00Z
        assert_eq!(range("2020").unwrap(), (y2020, y2020 + 366 * day));
        assert_eq!(
            range("2020-02").unwrap(),
            (y2020 + 31 * day, y2020 + 60 * day)
        );
        assert_eq!(range("2020-01-02").unwrap(), (y2020 + day, y2020 + 2 * day));
        assert_eq!(
            range("2020-01-01T00:01Z").unwrap(),
            (y2020 + 60, y2020 + 120)
        );
        assert_eq!(
            range("2020-01-01T00:00:05Z").unwrap(),
            (y2020 + 5, y2020 + 6)
        );
        assert_eq!(
            range("2020-01-01T01:00:05+01:00").unwrap(),
            (y2020 + 5, y2020 + 6)
        );
        assert_eq!(
            range("2019-12-31T23:00:05-01:00").unwrap(),
            (y2020 + 5, y2020 + 6)
        );
        assert_eq!(
            range("2020-01-01T00:00:05.000Z").unwrap(),
            (y2020 + 5, y2020 + 6)
        );
        for bad in [
            "2020-01-01T00:00:05",
            "2020-01-01T00:00:05.5Z",
            "2020-01T00:00Z",
            "2020-13",
            "2020-02-30",
            "20",
            "0000",
            "2020-01-01T25:00Z",
            "2020-01-01T00:00+1:00",
            "x",
        ] {
            assert!(range(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn prefixes_become_intervals() {
        let (a, b) = range("2020").unwrap();
        let i = |from, to| TimeInterval { from, to };
        for (value, expected) in [
            ("2020", vec![i(Some(a), Some(b))]),
            ("eq2020", vec![i(Some(a), Some(b))]),
            ("ne2020", vec![i(None, Some(a)), i(Some(b), None)]),
            ("gt2020", vec![i(Some(b), None)]),
            ("sa2020", vec![i(Some(b), None)]),
            ("ge2020", vec![i(Some(a), None)]),
            ("lt2020", vec![i(None, Some(a))]),
            ("eb2020", vec![i(None, Some(a))]),
            ("le2020", vec![i(None, Some(b))]),
        ] {
            assert_eq!(parse(value).unwrap(), expected, "{value}");
        }
        assert!(parse("ap2020").unwrap_err().contains("'ap'"));
    }
}
