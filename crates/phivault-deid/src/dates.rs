//! FHIR `date`, `dateTime` and `instant` values: recognized, reduced to their year, shifted by
//! whole days.
//!
//! Shifting by whole days keeps the time of day and the time zone as written, so every
//! interval between two full dates of one patient survives exactly. A partial date (`2019`,
//! `2019-04`) is shifted as its first day and written back at its own precision.

use time::{Date, Duration, Month};

/// How much of a date is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Precision {
    Year,
    Month,
    Day,
}

/// A parsed FHIR date or date-time.
struct FhirDate<'a> {
    date: Date,
    precision: Precision,
    /// `T...` with the time and zone, as written (empty for a date).
    time: &'a str,
}

fn digits(s: &str, n: usize) -> Option<u32> {
    (s.len() == n && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

fn parse(value: &str) -> Option<FhirDate<'_>> {
    let (day_part, time) = match value.find('T') {
        Some(i) => (&value[..i], &value[i..]),
        None => (value, ""),
    };
    if !time.is_empty() && !valid_time(&time[1..]) {
        return None;
    }
    let mut parts = day_part.split('-');
    let year = digits(parts.next()?, 4)?;
    let month = parts
        .next()
        .map(|m| digits(m, 2))
        .map_or(Some(None), |m| m.map(Some))?;
    let day = parts
        .next()
        .map(|d| digits(d, 2))
        .map_or(Some(None), |d| d.map(Some))?;
    if parts.next().is_some() {
        return None;
    }
    let year = i32::try_from(year).ok()?;
    let precision = match (month, day) {
        (None, _) => Precision::Year,
        (Some(_), None) => Precision::Month,
        (Some(_), Some(_)) => Precision::Day,
    };
    if !time.is_empty() && precision != Precision::Day {
        return None;
    }
    let month = Month::try_from(u8::try_from(month.unwrap_or(1)).ok()?).ok()?;
    let day = u8::try_from(day.unwrap_or(1)).ok()?;
    let date = Date::from_calendar_date(year, month, day).ok()?;
    Some(FhirDate {
        date,
        precision,
        time,
    })
}

/// `hh:mm[:ss[.fff]][Z|+hh:mm|-hh:mm]`, loosely: digits, colons, a fraction and a zone.
fn valid_time(t: &str) -> bool {
    let (clock, zone) = match t.find(['Z', '+', '-']) {
        Some(i) => (&t[..i], &t[i..]),
        None => (t, ""),
    };
    let mut fields = clock.split(':');
    let ok_clock = fields
        .next()
        .and_then(|h| digits(h, 2))
        .is_some_and(|h| h < 24)
        && fields
            .next()
            .and_then(|m| digits(m, 2))
            .is_some_and(|m| m < 60)
        && fields.next().is_none_or(|s| {
            let whole = s.split('.').next().unwrap_or_default();
            digits(whole, 2).is_some_and(|s| s < 61)
                && s[2..]
                    .trim_start_matches('.')
                    .bytes()
                    .all(|b| b.is_ascii_digit())
        })
        && fields.next().is_none();
    let ok_zone = zone.is_empty()
        || zone == "Z"
        || (zone.len() == 6
            && digits(&zone[1..3], 2).is_some()
            && &zone[3..4] == ":"
            && digits(&zone[4..6], 2).is_some());
    ok_clock && ok_zone
}

/// Whether `value` is a FHIR date, dateTime or instant of at least day precision (a
/// four-digit code is not taken for a year; see [`is_partial_date`]).
pub(crate) fn is_full_date(value: &str) -> bool {
    parse(value).is_some_and(|d| d.precision == Precision::Day)
}

/// Whether `value` is a year or a year and month.
pub(crate) fn is_partial_date(value: &str) -> bool {
    parse(value).is_some_and(|d| d.precision != Precision::Day)
}

/// The year of a date.
pub(crate) fn year(value: &str) -> Option<i32> {
    parse(value).map(|d| d.date.year())
}

/// `value` moved by `days`, at its own precision, its time of day and zone unchanged.
pub(crate) fn shift(value: &str, days: i64) -> Option<String> {
    let d = parse(value)?;
    let moved = d.date.checked_add(Duration::days(days))?;
    let (y, m, day) = (moved.year(), u8::from(moved.month()), moved.day());
    Some(match d.precision {
        Precision::Year => format!("{y:04}"),
        Precision::Month => format!("{y:04}-{m:02}"),
        Precision::Day => format!("{y:04}-{m:02}-{day:02}{}", d.time),
    })
}

/// Days from `a` to `b` (both full dates), for tests of interval preservation.
#[cfg(test)]
pub(crate) fn days_between(a: &str, b: &str) -> Option<i64> {
    Some((parse(b)?.date - parse(a)?.date).whole_days())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn recognizes_fhir_dates() {
        for full in [
            "2019-04-02",
            "2019-04-02T10:11:12Z",
            "2019-04-02T10:11:12.345+02:00",
            "2019-04-02T10:11:12-05:00",
        ] {
            assert!(is_full_date(full), "{full}");
        }
        for partial in ["2019", "2019-04"] {
            assert!(
                is_partial_date(partial) && !is_full_date(partial),
                "{partial}"
            );
        }
        for not in [
            "8302-2",
            "44054006",
            "2019-13-01",
            "2019-02-30",
            "2019-04-02T25:00:00Z",
            "2019-04-02Tnoon",
            "John",
            "",
        ] {
            assert!(!is_full_date(not) && !is_partial_date(not), "{not}");
        }
    }

    #[test]
    fn shifts_keep_precision_time_and_intervals() {
        assert_eq!(shift("2019-12-30", 3).unwrap(), "2020-01-02");
        assert_eq!(
            shift("2019-12-30T23:59:00+02:00", -365).unwrap(),
            "2018-12-30T23:59:00+02:00"
        );
        assert_eq!(shift("2019-04", 40).unwrap(), "2019-05");
        assert_eq!(shift("2019", -1).unwrap(), "2018");
        let (a, b) = ("2019-02-27", "2020-03-01");
        for days in [-400, -1, 0, 17, 366] {
            assert_eq!(
                days_between(&shift(a, days).unwrap(), &shift(b, days).unwrap()),
                days_between(a, b)
            );
        }
        assert_eq!(year("1931-05-06T00:00:00Z"), Some(1931));
    }
}
