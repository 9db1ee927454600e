//! Text that a rule keeps, cleaned of what the record itself says identifies the patient.
//! The engine scrubs free text a rule names and every string kept by a rule above it; a
//! structured element a rule names exactly is kept as written.
//!
//! The rules it keeps:
//! - **The patient's own identifiers go.** Their names (and their contacts' names, and their
//!   mother's maiden name), identifier values, telecom values, address lines, cities,
//!   districts and postal codes (their addresses, their contacts', their birth place) and
//!   their birth date, as their Patient resource holds them, are replaced by `[REDACTED]`
//!   wherever they occur in kept text, ignoring case. A term of fewer than three characters
//!   is not searched (it would scrub ordinary words). A term with seven or more digits (a
//!   phone or fax number, an SSN, a record number) also matches when the text writes its
//!   digits with other separators or none (`617 555 1000`, `6175551000`).
//! - **Dates written in text follow the date policy**: `2019-04-02`, `2019-04-02T09:30:00Z`
//!   and `4/2/2019` become the year, the shifted date in the same form, or `[REDACTED]`
//!   (`year`, `shift`, `redact`); `keep` leaves them.
//!
//! What it does not do: recognize a name, place, number or date that the Patient resource
//! does not hold or that is written in another form (`April 2`), which takes language
//! processing. Terms are matched as substrings, so a short name also scrubs words that
//! contain it.

use serde_json::Value;
use zeroize::Zeroizing;

use crate::config::DatePolicy;
use crate::dates;

/// The replacement of a scrubbed term or date.
pub(crate) const SCRUBBED: &str = "[REDACTED]";

/// Extensions of Patient whose values name the patient's family or place of birth.
const MAIDEN_NAME: &str = "http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName";
const BIRTH_PLACE: &str = "http://hl7.org/fhir/StructureDefinition/patient-birthPlace";

/// What to scrub for one patient: lower-case terms (longest first) and the digits of the
/// terms that have seven or more.
#[derive(Default)]
pub(crate) struct Terms {
    text: Vec<Zeroizing<String>>,
    digits: Vec<Zeroizing<String>>,
}

/// The identifying terms of a Patient resource (see the module docs).
pub(crate) fn terms(patient: &Value) -> Terms {
    let mut text: Vec<Zeroizing<String>> = Vec::new();
    let mut add = |v: &Value| {
        if let Some(s) = v.as_str() {
            let s = s.trim().to_lowercase();
            if s.chars().count() >= 3 && !text.iter().any(|t| **t == s) {
                text.push(Zeroizing::new(s));
            }
        }
    };
    let each = |v: &Value| v.as_array().cloned().unwrap_or_default();
    let mut names = each(&patient["name"]);
    let mut addresses = each(&patient["address"]);
    for contact in each(&patient["contact"]) {
        names.push(contact["name"].clone());
        addresses.push(contact["address"].clone());
        for t in each(&contact["telecom"]) {
            add(&t["value"]);
        }
    }
    for ext in each(&patient["extension"]) {
        match ext["url"].as_str() {
            Some(MAIDEN_NAME) => add(&ext["valueString"]),
            Some(BIRTH_PLACE) => addresses.push(ext["valueAddress"].clone()),
            _ => {}
        }
    }
    for name in &names {
        add(&name["family"]);
        add(&name["text"]);
        for g in each(&name["given"]) {
            add(&g);
        }
    }
    for i in each(&patient["identifier"]) {
        add(&i["value"]);
    }
    for t in each(&patient["telecom"]) {
        add(&t["value"]);
    }
    for a in &addresses {
        for part in ["city", "district", "postalCode", "text"] {
            add(&a[part]);
        }
        for l in each(&a["line"]) {
            add(&l);
        }
    }
    add(&patient["birthDate"]);
    // Longest first, so a full name is replaced before its parts.
    text.sort_by_key(|t| std::cmp::Reverse(t.len()));
    let mut digits: Vec<Zeroizing<String>> = Vec::new();
    for t in &text {
        let d: String = t.chars().filter(char::is_ascii_digit).collect();
        if d.len() >= 7 && !digits.iter().any(|x| **x == d) {
            digits.push(Zeroizing::new(d));
        }
    }
    digits.sort_by_key(|t| std::cmp::Reverse(t.len()));
    Terms { text, digits }
}

/// `hay` with every term replaced; `None` when nothing was.
pub(crate) fn scrub(hay: &str, terms: &Terms) -> Option<String> {
    let mut out: Option<String> = None;
    if hay.len() >= 3 && !terms.text.is_empty() {
        let mut lower = lower_case(hay);
        for term in &terms.text {
            let current = out.as_deref().unwrap_or(hay);
            // Lower-casing may change byte lengths outside ASCII: then only exact-case
            // matches are found (the positions must be those of `current`).
            let find_in = if lower.len() == current.len() {
                lower.as_str()
            } else {
                current
            };
            if !find_in.contains(term.as_str()) {
                continue;
            }
            let mut result = String::with_capacity(current.len());
            let mut rest = 0;
            for (at, _) in find_in.match_indices(term.as_str()) {
                if at < rest {
                    continue;
                }
                result.push_str(&current[rest..at]);
                result.push_str(SCRUBBED);
                rest = at + term.len();
            }
            result.push_str(&current[rest..]);
            lower = lower_case(&result);
            out = Some(result);
        }
    }
    for d in &terms.digits {
        let current = out.as_deref().unwrap_or(hay);
        if let Some(result) = scrub_digits(current, d) {
            out = Some(result);
        }
    }
    out
}

fn lower_case(s: &str) -> String {
    if s.is_ascii() {
        s.to_ascii_lowercase()
    } else {
        s.to_lowercase()
    }
}

/// `hay` with every run of exactly the digits of `digits` (separated by nothing, spaces,
/// `-`, `.`, `/` or parentheses, and not part of a longer number) replaced.
fn scrub_digits(hay: &str, digits: &str) -> Option<String> {
    let (b, want) = (hay.as_bytes(), digits.as_bytes());
    let mut out = String::new();
    let (mut rest, mut i, mut changed) = (0, 0, false);
    while i < b.len() {
        if b[i].is_ascii_digit() && (i == 0 || !b[i - 1].is_ascii_digit()) {
            let (mut j, mut k) = (i, 0);
            while j < b.len() && k < want.len() {
                if b[j].is_ascii_digit() {
                    if b[j] != want[k] {
                        break;
                    }
                    k += 1;
                } else if !matches!(b[j], b' ' | b'-' | b'.' | b'/' | b'(' | b')') {
                    break;
                }
                j += 1;
            }
            if k == want.len() && b.get(j).is_none_or(|c| !c.is_ascii_digit()) {
                // i and j sit on ASCII bytes, so on character boundaries.
                out.push_str(&hay[rest..i]);
                out.push_str(SCRUBBED);
                (rest, i, changed) = (j, j, true);
                continue;
            }
        }
        i += 1;
    }
    changed.then(|| {
        out.push_str(&hay[rest..]);
        out
    })
}

/// `hay` with the dates written in it put through `policy` (see the module docs); `None`
/// when it holds none.
pub(crate) fn dates_in_text(hay: &str, policy: DatePolicy, offset_days: i64) -> Option<String> {
    if policy == DatePolicy::Keep {
        return None;
    }
    let b = hay.as_bytes();
    let digit = |i: usize| b.get(i).is_some_and(u8::is_ascii_digit);
    let mut out = String::new();
    let (mut rest, mut i, mut changed) = (0, 0, false);
    while i < b.len() {
        let starts = digit(i) && (i == 0 || !b[i - 1].is_ascii_alphanumeric());
        if let Some((end, replacement)) = starts
            .then(|| {
                iso_at(hay, i, policy, offset_days).or_else(|| us_at(hay, i, policy, offset_days))
            })
            .flatten()
        {
            out.push_str(&hay[rest..i]);
            out.push_str(&replacement);
            (rest, i, changed) = (end, end, true);
            continue;
        }
        i += 1;
    }
    changed.then(|| {
        out.push_str(&hay[rest..]);
        out
    })
}

/// The date as the policy writes it; `iso` is a valid FHIR date or date-time.
fn by_policy(iso: &str, policy: DatePolicy, offset_days: i64) -> Option<String> {
    match policy {
        DatePolicy::Keep => Some(iso.to_owned()),
        DatePolicy::Redact => Some(SCRUBBED.to_owned()),
        DatePolicy::Year => dates::year(iso).map(|y| format!("{y:04}")),
        DatePolicy::Shift => dates::shift(iso, offset_days),
    }
}

/// An ISO date (with its time, if any) starting at byte `i`: where it ends, what replaces it.
fn iso_at(hay: &str, i: usize, policy: DatePolicy, offset_days: i64) -> Option<(usize, String)> {
    let b = hay.as_bytes();
    let shape = b"dddd-dd-dd";
    let fits = |at: usize, c: u8| {
        b.get(i + at).is_some_and(|x| {
            if c == b'd' {
                x.is_ascii_digit()
            } else {
                *x == c
            }
        })
    };
    if !(0..shape.len()).all(|k| fits(k, shape[k])) || b.get(i + 10).is_some_and(u8::is_ascii_digit)
    {
        return None;
    }
    let day_end = i + 10;
    // A time of day after it: `T` and digits, colons and a fraction, then a zone.
    let mut end = day_end;
    if b.get(end) == Some(&b'T') {
        let mut j = end + 1;
        while b
            .get(j)
            .is_some_and(|c| c.is_ascii_digit() || *c == b':' || *c == b'.')
        {
            j += 1;
        }
        if b.get(j) == Some(&b'Z') {
            j += 1;
        } else if matches!(b.get(j), Some(b'+' | b'-'))
            && hay.get(j + 1..j + 6).is_some_and(|z| {
                z.as_bytes()[2] == b':'
                    && z.bytes()
                        .enumerate()
                        .all(|(k, c)| k == 2 || c.is_ascii_digit())
            })
        {
            j += 6;
        }
        if dates::is_full_date(&hay[i..j]) {
            end = j;
        }
    }
    let iso = &hay[i..end];
    if !dates::is_full_date(iso) {
        return None;
    }
    Some((end, by_policy(iso, policy, offset_days)?))
}

/// A US date `M/D/YYYY` starting at byte `i`: where it ends, what replaces it (a shifted
/// date is written `MM/DD/YYYY`).
fn us_at(hay: &str, i: usize, policy: DatePolicy, offset_days: i64) -> Option<(usize, String)> {
    let b = hay.as_bytes();
    let number = |from: usize, max: usize| -> Option<(usize, usize)> {
        let len = b[from..]
            .iter()
            .take(max + 1)
            .take_while(|c| c.is_ascii_digit())
            .count();
        (1..=max)
            .contains(&len)
            .then(|| (hay[from..from + len].parse().unwrap_or(0), from + len))
    };
    let (month, at) = number(i, 2)?;
    (b.get(at) == Some(&b'/')).then_some(())?;
    let (day, at) = number(at + 1, 2)?;
    (b.get(at) == Some(&b'/')).then_some(())?;
    let (year, end) = number(at + 1, 4)?;
    if end - at - 1 != 4 {
        return None;
    }
    let iso = format!("{year:04}-{month:02}-{day:02}");
    if !dates::is_full_date(&iso) {
        return None;
    }
    let out = by_policy(&iso, policy, offset_days)?;
    let out = match policy {
        DatePolicy::Shift => format!("{}/{}/{}", &out[5..7], &out[8..10], &out[0..4]),
        _ => out,
    };
    Some((end, out))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn patient() -> Value {
        json!({
            "name": [{"family": "Zorblatt", "given": ["Quintavius", "Al"], "text": "Quintavius Zorblatt"}],
            "identifier": [{"value": "999-10-4400"}],
            "telecom": [{"value": "617-555-1000"}],
            "address": [{"line": ["4417 Quarrendon Lane"], "city": "Pemberwick", "postalCode": "02139"}],
            "extension": [{"url": MAIDEN_NAME, "valueString": "Vexlington"},
                          {"url": BIRTH_PLACE, "valueAddress": {"city": "Glenmarrow"}}],
            "contact": [{"name": {"given": ["Ophira"]}, "address": {"city": "Dunmere"}}],
            "birthDate": "1967-08-23"
        })
    }

    #[test]
    fn the_patients_own_terms_go_in_any_case_and_numbers_in_any_format() {
        let t = terms(&patient());
        let text = "QUINTAVIUS zorblatt (ssn 999 10 4400, tel 6175551000, 1-617-555-1000) \
                    of Pemberwick, born 1967-08-23 in Glenmarrow; mother Vexlington; \
                    sister Ophira in Dunmere; Al said hello; 96175551000 is another number";
        let out = scrub(text, &t).unwrap();
        for gone in [
            "quintavius",
            "zorblatt",
            "4400",
            "tel 617",
            "1-617",
            "pemberwick",
            "1967",
            "glenmarrow",
            "vexlington",
            "ophira",
            "dunmere",
        ] {
            assert!(!out.to_lowercase().contains(gone), "{gone}: {out}");
        }
        assert!(
            out.contains("Al said"),
            "short terms are not searched: {out}"
        );
        assert!(
            out.contains("96175551000"),
            "not inside a longer number: {out}"
        );
        assert!(scrub("nothing here", &t).is_none());
    }

    #[test]
    fn dates_in_text_follow_the_policy() {
        let text = "seen 2019-04-02T09:30:00-05:00, again 4/9/2019 and 12/31/2019; \
                    not 2019-13-01, 1/2/34, v2019-04-02 or 12345-67-89";
        let year = dates_in_text(text, DatePolicy::Year, 0).unwrap();
        assert_eq!(
            year,
            "seen 2019, again 2019 and 2019; not 2019-13-01, 1/2/34, v2019-04-02 or 12345-67-89"
        );
        let shifted = dates_in_text(text, DatePolicy::Shift, 3).unwrap();
        assert!(
            shifted.starts_with("seen 2019-04-05T09:30:00-05:00, again 04/12/2019 and 01/03/2020;")
        );
        let redacted = dates_in_text("on 2019-04-02.", DatePolicy::Redact, 0).unwrap();
        assert_eq!(redacted, "on [REDACTED].");
        assert!(dates_in_text(text, DatePolicy::Keep, 3).is_none());
        assert!(dates_in_text("no dates", DatePolicy::Year, 3).is_none());
    }
}
