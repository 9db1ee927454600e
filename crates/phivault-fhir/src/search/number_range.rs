//! Number and quantity range search over blind tokens.
//!
//! Like dates (see `date_range`), a numeric value is indexed under the buckets that contain
//! it, from coarse to fine, and a prefixed query is turned into the fewest buckets whose union
//! is exactly the range it asks for: the query is equality of HMAC tokens (an `IN` list), and
//! the tokens themselves reveal no order.
//!
//! **Buckets.** The buckets form an ordered tree. Under the root (the presence bucket, "has a
//! value") are the negative numbers, zero and the positive numbers. Under each sign are the
//! decimal exponents [`MIN_EXP`]..=[`MAX_EXP`] of the scientific form `d.ddd × 10^e`, and one
//! bucket each side for magnitudes below `10^MIN_EXP` ("tiny") and from `10^(MAX_EXP+1)`
//! ("huge"). Under an exponent are the first significant digit, then the next, down to
//! [`SIG_DIGITS`] digits; under the last digit two leaves: the value is exactly that truncation
//! (`=`), or has further non-zero digits (`~`, larger in magnitude). Negative numbers order their
//! children in reverse, so the tree's left-to-right order is the numeric order. A value is
//! indexed under every bucket on its path: [`SIG_DIGITS`] + 4 tokens (fewer for zero, tiny and
//! huge values).
//!
//! **Exact covers.** A search boundary must be zero or a number whose magnitude is in
//! `[10^MIN_EXP, 10^(MAX_EXP+1))` with at most [`SIG_DIGITS`] significant digits (anything
//! else is refused with a message): it is then exactly a leaf (`=`) of the tree, and every
//! range between two leaves (or a leaf and either end) is exactly a union of whole buckets.
//! No post-filter on decrypted values is needed: results are exact for every value, whatever
//! its own precision (a value with more digits is in a `~` leaf, strictly between two
//! boundaries).
//!
//! **Prefixes** (R4 number search; the target is the value as a point): `eq` (default): the
//! value lies in the implicit range of the search value's written precision, `[v - h, v + h)`
//! with `h` half a unit of its last written digit (`5.4` is `[5.35, 5.45)`, `100` is `[99.5,
//! 100.5)`, `1e2` is `[50, 150)`); `ne`: the parameter is present and no value lies there;
//! `lt`, `le`, `gt`, `ge`: compared with the exact search value; `sa`: the value is at or
//! above `v + h`; `eb`: below `v - h`; `ap`: within the `eq` range or within 10% of `v`.
//! With several values of a parameter in one resource, every prefix but `ne` means "some value
//! matches"; `ne` means "no value is equal".
//!
//! **Quantities** are indexed per unit family: any unit (`5.4`), `system|code` (`5.4|
//! http://unitsofmeasure.org|mmol/L`) and code or unit text without a system (`5.4||mg`, per R4
//! either the code or the unit). The number and its units are inside the HMAC input, so two
//! families give unrelated tokens. No unit conversion: `mg` and `g` are different units. A
//! comparator on the stored quantity (`<5`) is not interpreted: its value is indexed.
//!
//! **Cost.** A cover holds at most 9 buckets per digit level on each side, one leaf per side,
//! the exponents in between and the sign buckets: at most [`MAX_COVER`] tokens (`ap` two
//! covers); the search's bound on entries refuses a query with too many of them.

use super::IndexEntry;

/// Significant digits indexed (and allowed in a search boundary).
pub(crate) const SIG_DIGITS: usize = 6;

/// Smallest decimal exponent with its own buckets.
pub(crate) const MIN_EXP: i64 = -12;

/// Largest decimal exponent with its own buckets.
pub(crate) const MAX_EXP: i64 = 15;

/// Number of exponents with their own buckets.
const EXPONENTS: u8 = (MAX_EXP - MIN_EXP + 1) as u8;

/// Most tokens one cover can hold (see the module docs): per side 9 per digit level and one
/// leaf, the exponents and sign buckets between.
pub(crate) const MAX_COVER: usize = 2 * (9 * SIG_DIGITS + 1) + 2 * (EXPONENTS as usize + 2) + 3;

// Several query values fit in a search's bound on entries.
const _: () = assert!(2 * MAX_COVER * 10 < super::MAX_ENTRIES);

/// Longest number text accepted in a search value.
const MAX_NUMBER_CHARS: usize = 64;

/// The unit family meaning "any unit".
const ANY_UNIT: &str = "*";

/// System of Money amounts (their `currency` is the code).
const CURRENCY_SYSTEM: &str = "urn:iso:std:iso:4217";

/// A decimal number as written: sign, significant digits (no leading or trailing zeros;
/// empty for zero), the exponent of the first digit in scientific form, and the exponent of
/// the last digit written (its precision).
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Decimal {
    negative: bool,
    digits: Vec<u8>,
    exp: i64,
    precision: i64,
}

impl Decimal {
    /// Parses FHIR decimal syntax (`-?digits[.digits][e[+-]digits]`, leading zeros allowed).
    pub(crate) fn parse(s: &str) -> Option<Decimal> {
        let (negative, rest) = match s.strip_prefix('-') {
            Some(r) => (true, r),
            None => (false, s),
        };
        let (mantissa, e) = match rest.find(['e', 'E']) {
            Some(i) => (&rest[..i], Some(&rest[i + 1..])),
            None => (rest, None),
        };
        let e: i64 = match e {
            None => 0,
            Some(e) => {
                let digits = e.strip_prefix(['+', '-']).unwrap_or(e);
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                // Absurd exponents saturate: such values fall in the tiny or huge buckets.
                let magnitude: i64 = digits.parse().unwrap_or(1_000_000_000).min(1_000_000_000);
                if e.starts_with('-') {
                    -magnitude
                } else {
                    magnitude
                }
            }
        };
        let (int, frac) = match mantissa.split_once('.') {
            Some((i, f)) => (i, f),
            None => (mantissa, ""),
        };
        let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if int.is_empty() || !all_digits(int) || !all_digits(frac) || mantissa.ends_with('.') {
            return None;
        }
        let frac_len = i64::try_from(frac.len()).ok()?;
        let int_len = i64::try_from(int.len()).ok()?;
        let written: Vec<u8> = int.bytes().chain(frac.bytes()).map(|b| b - b'0').collect();
        let precision = e - frac_len;
        let Some(first) = written.iter().position(|d| *d != 0) else {
            return Some(Decimal {
                negative: false,
                digits: Vec::new(),
                exp: 0,
                precision,
            });
        };
        let last = written.iter().rposition(|d| *d != 0).unwrap_or(first);
        Some(Decimal {
            negative,
            digits: written[first..=last].to_vec(),
            exp: int_len - 1 - i64::try_from(first).ok()? + e,
            precision,
        })
    }

    /// `n × 10^unit`.
    fn from_scaled(n: i128, unit: i64) -> Decimal {
        let text = n.unsigned_abs().to_string();
        let mut d = Decimal::parse(&text).unwrap_or(Decimal {
            negative: false,
            digits: Vec::new(),
            exp: 0,
            precision: 0,
        });
        d.negative = n < 0 && !d.digits.is_empty();
        d.exp += unit;
        d.precision += unit;
        d
    }

    /// The value as an integer times `10^unit`, `None` if that does not fit (a value written
    /// with absurdly many digits).
    fn scaled(&self, unit: i64) -> Option<i128> {
        if self.digits.is_empty() {
            return Some(0);
        }
        let len = i64::try_from(self.digits.len()).ok()?;
        let last = self.exp - (len - 1);
        let shift = u32::try_from(last - unit).ok()?;
        if len + i64::from(shift) > 36 {
            return None;
        }
        let mut n: i128 = 0;
        for d in &self.digits {
            n = n * 10 + i128::from(*d);
        }
        n = n.checked_mul(10i128.checked_pow(shift)?)?;
        Some(if self.negative { -n } else { n })
    }
}

/// A leaf or bucket of the tree: the ranks of the children taken from the root.
type Path = Vec<u8>;

/// Ranks under the root.
const NEGATIVE: u8 = 0;
const ZERO: u8 = 1;
const POSITIVE: u8 = 2;

/// How many children the bucket `prefix` has; 0 for a leaf.
fn children(prefix: &[u8]) -> u8 {
    match prefix.len() {
        0 => 3,
        1 if prefix[0] == ZERO => 0,
        1 => EXPONENTS + 2,
        2 if prefix[1] == 0 || prefix[1] == EXPONENTS + 1 => 0,
        2 => 9,
        n if n < 2 + SIG_DIGITS => 10,
        n if n == 2 + SIG_DIGITS => 2,
        _ => 0,
    }
}

/// The leaf of a value.
fn leaf(d: &Decimal) -> Path {
    if d.digits.is_empty() {
        return vec![ZERO];
    }
    let pos = !d.negative;
    let sign = if pos { POSITIVE } else { NEGATIVE };
    let (low, high) = (0, EXPONENTS + 1);
    if d.exp < MIN_EXP {
        return vec![sign, if pos { low } else { high }];
    }
    if d.exp > MAX_EXP {
        return vec![sign, if pos { high } else { low }];
    }
    // In range: the casts below cannot truncate.
    let e = u8::try_from(if pos {
        d.exp - MIN_EXP + 1
    } else {
        MAX_EXP - d.exp + 1
    })
    .unwrap_or_default();
    let mut path = vec![sign, e];
    for i in 0..SIG_DIGITS {
        let digit = d.digits.get(i).copied().unwrap_or(0);
        let rank = match (i, pos) {
            (0, true) => digit.saturating_sub(1),
            (0, false) => 9 - digit,
            (_, true) => digit,
            (_, false) => 9 - digit,
        };
        path.push(rank);
    }
    let more = u8::from(d.digits.len() > SIG_DIGITS);
    path.push(if pos { more } else { 1 - more });
    path
}

/// Whether `tail` is the leftmost leaf under its bucket.
fn is_min(tail: &[u8]) -> bool {
    tail.iter().all(|r| *r == 0)
}

/// Whether `tail` is the rightmost leaf under `prefix`.
fn is_max(prefix: &[u8], tail: &[u8]) -> bool {
    let mut p = prefix.to_vec();
    for r in tail {
        if children(&p) != r + 1 {
            return false;
        }
        p.push(*r);
    }
    true
}

/// The next leaf to the right, `None` after the last.
fn succ(leaf: &[u8]) -> Option<Path> {
    let i = (0..leaf.len())
        .rev()
        .find(|&i| leaf[i] + 1 < children(&leaf[..i]))?;
    let mut p = leaf[..=i].to_vec();
    p[i] += 1;
    while children(&p) > 0 {
        p.push(0);
    }
    Some(p)
}

/// The next leaf to the left, `None` before the first.
fn pred(leaf: &[u8]) -> Option<Path> {
    let i = (0..leaf.len()).rev().find(|&i| leaf[i] > 0)?;
    let mut p = leaf[..=i].to_vec();
    p[i] -= 1;
    while children(&p) > 0 {
        let last = children(&p) - 1;
        p.push(last);
    }
    Some(p)
}

/// The fewest buckets whose union is exactly the leaves from `lo` to `hi` (inclusive; `None`
/// is open); empty when the range is.
fn cover(lo: Option<&[u8]>, hi: Option<&[u8]>) -> Vec<Path> {
    let mut out = Vec::new();
    if let (Some(a), Some(b)) = (lo, hi)
        && a > b
    {
        return out;
    }
    cover_under(&mut Vec::new(), lo, hi, &mut out);
    out
}

fn cover_under(prefix: &mut Path, lo: Option<&[u8]>, hi: Option<&[u8]>, out: &mut Vec<Path>) {
    let lo = lo.filter(|l| !is_min(l));
    let hi = hi.filter(|h| !is_max(prefix, h));
    let n = children(prefix);
    if (lo.is_none() && hi.is_none()) || n == 0 {
        out.push(prefix.clone());
        return;
    }
    let a = lo.map_or(0, |l| l[0]);
    let b = hi.map_or(n - 1, |h| h[0]);
    if a > b {
        return;
    }
    let mut under = |prefix: &mut Path, rank: u8, lo: Option<&[u8]>, hi: Option<&[u8]>| {
        prefix.push(rank);
        cover_under(prefix, lo, hi, out);
        prefix.pop();
    };
    if a == b {
        under(prefix, a, lo.map(|l| &l[1..]), hi.map(|h| &h[1..]));
        return;
    }
    under(prefix, a, lo.map(|l| &l[1..]), None);
    for c in a + 1..b {
        under(prefix, c, None, None);
    }
    under(prefix, b, None, hi.map(|h| &h[1..]));
}

/// The token text of a bucket in a unit family.
fn token(family: &str, bucket: &[u8]) -> String {
    let ranks: Vec<String> = bucket.iter().map(u8::to_string).collect();
    format!("{family}#{}", ranks.join("."))
}

/// The index entries of one numeric value in the given unit families.
fn index_number(param: &str, number: &Decimal, families: &[String]) -> Vec<IndexEntry> {
    let path = leaf(number);
    let mut out = Vec::new();
    for family in families {
        for depth in 0..=path.len() {
            out.push(IndexEntry::new(param, token(family, &path[..depth])));
        }
    }
    out
}

/// The number of a JSON value (a number, or a string holding one), as written.
fn number_of(value: &serde_json::Value) -> Option<Decimal> {
    match value {
        serde_json::Value::Number(n) => Decimal::parse(&n.to_string()),
        serde_json::Value::String(s) => Decimal::parse(s.trim()),
        _ => None,
    }
}

/// The index entries of a value of a number parameter (a decimal or an integer).
pub(crate) fn index_number_value(param: &str, value: &serde_json::Value) -> Vec<IndexEntry> {
    match number_of(value) {
        Some(d) => index_number(param, &d, &[ANY_UNIT.to_owned()]),
        None => Vec::new(),
    }
}

/// The index entries of a value of a quantity parameter (Quantity, Age, Duration, Count,
/// Distance, Money): under any unit, `system|code`, and each of its code and unit text.
pub(crate) fn index_quantity_value(param: &str, value: &serde_json::Value) -> Vec<IndexEntry> {
    let Some(number) = value.get("value").and_then(number_of) else {
        return Vec::new();
    };
    let text = |key: &str| {
        value
            .get(key)
            .and_then(serde_json::Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
    };
    let (system, code) = match text("currency") {
        Some(currency) => (Some(CURRENCY_SYSTEM), Some(currency)),
        None => (text("system"), text("code")),
    };
    let mut families = vec![ANY_UNIT.to_owned()];
    if let (Some(s), Some(c)) = (system, code) {
        families.push(format!("{s}|{c}"));
    }
    for loose in [code, text("unit")].into_iter().flatten() {
        let f = format!("~{loose}");
        if !families.contains(&f) {
            families.push(f);
        }
    }
    index_number(param, &number, &families)
}

/// A boundary of a search range as a leaf; `Err` when it is not one exactly.
fn boundary(d: &Decimal) -> Result<Path, String> {
    if d.digits.len() > SIG_DIGITS {
        return Err(format!(
            "at most {SIG_DIGITS} significant digits can be searched (for eq, ne, sa, eb and \
             ap, one fewer: the implicit range of the value adds one)"
        ));
    }
    let path = leaf(d);
    if path.len() == 2 {
        return Err(format!(
            "numbers of magnitude 1e{MIN_EXP} to 1e{} only (or 0) can be searched",
            MAX_EXP + 1
        ));
    }
    Ok(path)
}

/// The implicit range `[v - h, v + h)` of a written value.
fn precision_range(v: &Decimal) -> Result<(Decimal, Decimal), String> {
    let unit = v.precision - 1;
    let n = v
        .scaled(unit)
        .ok_or_else(|| format!("at most {SIG_DIGITS} significant digits can be searched"))?;
    Ok((
        Decimal::from_scaled(n - 5, unit),
        Decimal::from_scaled(n + 5, unit),
    ))
}

/// Parses `[prefix]number` (`number|system|code`, `number||code` for a quantity) for
/// `param` into the entries any of which matches, or the entries the parameter must have
/// and those it must lack (`ne`); `Err` is the message.
pub(crate) fn parse_query(
    param: &str,
    part: &str,
    quantity: bool,
) -> Result<super::date_range::Matcher, String> {
    use super::date_range::{Matcher, Prefix, TokenTest};
    let pieces = super::split_unescaped(part, '|');
    let (number, family) = match (quantity, pieces.as_slice()) {
        (_, [n]) => (n.clone(), ANY_UNIT.to_owned()),
        (true, [n, system, code]) => {
            let (system, code) = (super::unescape(system), super::unescape(code));
            let (system, code) = (system.trim(), code.trim());
            let family = match (system.is_empty(), code.is_empty()) {
                (true, true) => ANY_UNIT.to_owned(),
                (true, false) => format!("~{code}"),
                (false, false) => format!("{system}|{code}"),
                (false, true) => {
                    return Err(
                        "a system without a code (number|system|) is not supported; \
                                give number|system|code or number||code"
                            .to_owned(),
                    );
                }
            };
            (n.clone(), family)
        }
        (true, _) => {
            return Err("not a quantity ([prefix]number, number|system|code or \
                        number||code)"
                .to_owned());
        }
        (false, _) => return Err("not a number ([prefix]number)".to_owned()),
    };
    let number = number.trim();
    let (prefix, rest, approximate) = match number.get(..2) {
        Some("ap") => (Prefix::Eq, &number[2..], true),
        _ => {
            let (p, r) = super::date_range::split_prefix(number)?;
            (p, r, false)
        }
    };
    if rest.len() > MAX_NUMBER_CHARS {
        return Err("the number is too long".to_owned());
    }
    let v = Decimal::parse(rest)
        .ok_or_else(|| "not a valid number ([prefix]digits[.digits][e[+|-]digits])".to_owned())?;
    let entries = |paths: Vec<Path>| -> Vec<IndexEntry> {
        paths
            .iter()
            .map(|p| IndexEntry::new(param, token(&family, p)))
            .collect()
    };
    let exact = || boundary(&v);
    let range = || -> Result<(Path, Path), String> {
        let (lo, hi) = precision_range(&v)?;
        Ok((boundary(&lo)?, boundary(&hi)?))
    };
    Ok(match prefix {
        Prefix::Ge => Matcher::AnyOf(entries(cover(Some(&exact()?), None))),
        Prefix::Gt => Matcher::AnyOf(entries(
            succ(&exact()?).map_or_else(Vec::new, |s| cover(Some(&s), None)),
        )),
        Prefix::Le => Matcher::AnyOf(entries(cover(None, Some(&exact()?)))),
        Prefix::Lt => Matcher::AnyOf(entries(
            pred(&exact()?).map_or_else(Vec::new, |p| cover(None, Some(&p))),
        )),
        Prefix::Sa => Matcher::AnyOf(entries(cover(Some(&range()?.1), None))),
        Prefix::Eb => Matcher::AnyOf(entries(
            pred(&range()?.0).map_or_else(Vec::new, |p| cover(None, Some(&p))),
        )),
        Prefix::Eq | Prefix::Ne => {
            let (lo, hi) = range()?;
            let mut within = pred(&hi).map_or_else(Vec::new, |h| cover(Some(&lo), Some(&h)));
            if approximate {
                // 0.9 v and 1.1 v, exactly: 9 and 11 times v's digits, one place lower.
                let last = v.exp + 1 - i64::try_from(v.digits.len()).unwrap_or(0);
                let n = v
                    .scaled(last)
                    .ok_or_else(|| "not a valid number".to_owned())?;
                let (a, b) = (
                    Decimal::from_scaled(n * 9, last - 1),
                    Decimal::from_scaled(n * 11, last - 1),
                );
                let (a, b) = if v.negative { (b, a) } else { (a, b) };
                within.extend(cover(Some(&boundary(&a)?), Some(&boundary(&b)?)));
            }
            if prefix == Prefix::Eq {
                Matcher::AnyOf(entries(within))
            } else {
                let present = IndexEntry::new(param, token(&family, &[]));
                Matcher::Conjunctions(vec![vec![
                    TokenTest {
                        present: true,
                        any_of: vec![present],
                    },
                    TokenTest {
                        present: false,
                        any_of: entries(within),
                    },
                ]])
            }
        }
    })
}

#[cfg(test)]
#[path = "number_range_tests.rs"]
mod tests;
