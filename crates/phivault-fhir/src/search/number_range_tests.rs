#![allow(clippy::unwrap_used)]

use std::cmp::Ordering;

use serde_json::json;

use super::super::date_range::Matcher;
use super::*;

fn dec(s: &str) -> Decimal {
    Decimal::parse(s).unwrap_or_else(|| panic!("{s}"))
}

/// Exact numeric order of two decimals, independent of the tree.
fn cmp(a: &Decimal, b: &Decimal) -> Ordering {
    let sign = |d: &Decimal| match (d.digits.is_empty(), d.negative) {
        (true, _) => 0,
        (false, true) => -1,
        (false, false) => 1,
    };
    let (sa, sb) = (sign(a), sign(b));
    if sa != sb || sa == 0 {
        return sa.cmp(&sb);
    }
    let magnitude = a.exp.cmp(&b.exp).then_with(|| a.digits.cmp(&b.digits));
    if sa < 0 {
        magnitude.reverse()
    } else {
        magnitude
    }
}

/// Plain text of a decimal (for messages).
fn show(d: &Decimal) -> String {
    let digits: String = d.digits.iter().map(|x| char::from(b'0' + x)).collect();
    format!(
        "{}0.{digits}e{}",
        if d.negative { "-" } else { "" },
        d.exp + 1
    )
}

#[test]
fn parses_decimals_as_written() {
    let d = dec("5.40");
    assert_eq!(
        (d.negative, d.digits.clone(), d.exp, d.precision),
        (false, vec![5, 4], 0, -2)
    );
    let d = dec("-0.00120");
    assert_eq!(
        (d.negative, d.digits.clone(), d.exp, d.precision),
        (true, vec![1, 2], -3, -5)
    );
    let d = dec("1e2");
    assert_eq!((d.digits.clone(), d.exp, d.precision), (vec![1], 2, 2));
    let d = dec("100");
    assert_eq!((d.digits.clone(), d.exp, d.precision), (vec![1], 2, 0));
    let d = dec("-0.0");
    assert!(d.digits.is_empty() && !d.negative);
    assert_eq!(dec("12.5E-3").exp, -2);
    assert_eq!(dec("007").exp, 0);
    for bad in [
        "", "-", ".5", "5.", "1e", "1e+", "abc", "1.2.3", "+5", "5,4", "0x10", "1 2",
    ] {
        assert!(Decimal::parse(bad).is_none(), "{bad:?}");
    }
}

#[test]
fn implicit_ranges() {
    for (v, lo, hi) in [
        ("5.4", "5.35", "5.45"),
        ("100", "99.5", "100.5"),
        ("1e2", "50", "150"),
        ("-5.4", "-5.45", "-5.35"),
        ("0", "-0.5", "0.5"),
        ("0.0", "-0.05", "0.05"),
        ("1.50", "1.495", "1.505"),
    ] {
        let (a, b) = precision_range(&dec(v)).unwrap();
        assert_eq!(cmp(&a, &dec(lo)), Ordering::Equal, "{v}: {}", show(&a));
        assert_eq!(cmp(&b, &dec(hi)), Ordering::Equal, "{v}: {}", show(&b));
    }
}

#[test]
fn leaves_are_in_numeric_order() {
    let values = [
        "-1e40",
        "-9.99e15",
        "-123456.7",
        "-123456",
        "-5.45",
        "-5.4",
        "-5.35",
        "-1e-12",
        "-1e-13",
        "0",
        "1e-13",
        "1e-12",
        "0.5",
        "5.35",
        "5.4",
        "5.4000001",
        "5.40001",
        "5.45",
        "123456",
        "1234567",
        "9.99e15",
        "1e16",
    ];
    for w in values.windows(2) {
        let (a, b) = (dec(w[0]), dec(w[1]));
        assert_eq!(cmp(&a, &b), Ordering::Less);
        let (la, lb) = (leaf(&a), leaf(&b));
        assert!(la < lb, "{} {}", w[0], w[1]);
        assert_eq!(children(&la), 0);
    }
    // Every value reaches a leaf; succ and pred walk between neighbours.
    let l = leaf(&dec("5.4"));
    assert_eq!(l.len(), 3 + SIG_DIGITS);
    assert_eq!(pred(&succ(&l).unwrap()).unwrap(), l);
    assert_eq!(succ(&l).unwrap(), leaf(&dec("5.4000001")));
    assert!(pred(&[NEGATIVE, 0]).is_none());
    assert!(succ(&[POSITIVE, EXPONENTS + 1]).is_none());
}

#[test]
fn covers_are_fewest_and_bounded() {
    // The whole positive decade is one exponent bucket.
    let c = cover(Some(&leaf(&dec("1"))), pred(&leaf(&dec("10"))).as_deref());
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].len(), 2);
    // [5.35, 5.45): 5.35..5.39 and 5.40..5.44 (two digit buckets each five).
    let c = cover(
        Some(&leaf(&dec("5.35"))),
        pred(&leaf(&dec("5.45"))).as_deref(),
    );
    assert_eq!(c.len(), 10, "{c:?}");
    assert_eq!(cover(None, None), vec![Vec::<u8>::new()]);
    assert!(cover(Some(&leaf(&dec("2"))), Some(&leaf(&dec("1")))).is_empty());
    // The widest covers stay under the bound.
    let (a, b) = (dec("-1.11111e15"), dec("1.11111e-12"));
    for (lo, hi) in [
        (Some(leaf(&a)), Some(leaf(&b))),
        (
            Some(leaf(&dec("1.11111e-12"))),
            Some(leaf(&dec("9.88888e15"))),
        ),
        (
            Some(leaf(&dec("-9.88888e15"))),
            Some(leaf(&dec("9.88888e15"))),
        ),
        (None, Some(leaf(&dec("9.88888e15")))),
    ] {
        let c = cover(lo.as_deref(), hi.as_deref());
        assert!(c.len() <= MAX_COVER, "{}", c.len());
    }
}

/// xorshift: reproducible.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// A random decimal text near a few magnitudes, with 1 to 9 digits, sometimes zero, tiny
/// or huge.
fn random_text(rng: &mut Rng, digits: u64) -> String {
    match rng.below(30) {
        0 => return "0".to_owned(),
        1 => return "1e-20".to_owned(),
        2 => return "-3e40".to_owned(),
        _ => {}
    }
    let n = 1 + rng.below(digits);
    let mut m = String::new();
    for i in 0..n {
        let d = if i == 0 {
            1 + rng.below(9)
        } else {
            rng.below(10)
        };
        m.push(char::from(b'0' + u8::try_from(d).unwrap()));
    }
    let sign = if rng.below(4) == 0 { "-" } else { "" };
    let point = rng.below(n + 3);
    let text = if point < n && point > 0 {
        format!(
            "{}.{}",
            &m[..usize::try_from(point).unwrap()],
            &m[usize::try_from(point).unwrap()..]
        )
    } else if point == 0 {
        format!("0.{m}")
    } else {
        m
    };
    match rng.below(5) {
        0 => format!("{sign}{text}e{}", i64::try_from(rng.below(5)).unwrap() - 2),
        _ => format!("{sign}{text}"),
    }
}

fn matches(m: &Matcher, entries: &[IndexEntry]) -> bool {
    match m {
        Matcher::AnyOf(any) => any.iter().any(|e| entries.contains(e)),
        Matcher::Conjunctions(c) => c.iter().any(|tests| {
            tests
                .iter()
                .all(|t| t.any_of.iter().any(|e| entries.contains(e)) == t.present)
        }),
    }
}

#[test]
fn every_prefix_equals_the_oracle() {
    let mut rng = Rng(0x0dd_ba11_cafe_f00d);
    let values: Vec<(Decimal, Vec<IndexEntry>)> = (0..400)
        .map(|_| {
            let t = random_text(&mut rng, 9);
            let d = dec(&t);
            let entries = index_number_value("n", &json!(t));
            (d, entries)
        })
        .collect();
    let (mut checked, mut hits, mut misses) = (0, 0, 0);
    for _ in 0..600 {
        let prefix = ["", "eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"]
            [usize::try_from(rng.below(10)).unwrap()];
        let text = random_text(&mut rng, 5);
        let Ok(m) = parse_query("n", &format!("{prefix}{text}"), false) else {
            continue;
        };
        checked += 1;
        let v = dec(&text);
        let (lo, hi) = precision_range(&v).unwrap();
        for (d, entries) in &values {
            let in_range = cmp(d, &lo) != Ordering::Less && cmp(d, &hi) == Ordering::Less;
            let expected = match prefix {
                "" | "eq" => in_range,
                "ne" => !in_range,
                "gt" => cmp(d, &v) == Ordering::Greater,
                "lt" => cmp(d, &v) == Ordering::Less,
                "ge" => cmp(d, &v) != Ordering::Less,
                "le" => cmp(d, &v) != Ordering::Greater,
                "sa" => cmp(d, &hi) != Ordering::Less,
                "eb" => cmp(d, &lo) == Ordering::Less,
                _ => {
                    // ap: the eq range or within 10% of v.
                    let last = v.exp + 1 - i64::try_from(v.digits.len()).unwrap();
                    let n = v.scaled(last).unwrap();
                    let (a, b) = (
                        Decimal::from_scaled(n * 9, last - 1),
                        Decimal::from_scaled(n * 11, last - 1),
                    );
                    let (a, b) = if n < 0 { (b, a) } else { (a, b) };
                    in_range || (cmp(d, &a) != Ordering::Less && cmp(d, &b) != Ordering::Greater)
                }
            };
            assert_eq!(
                matches(&m, entries),
                expected,
                "{prefix}{text} vs {}",
                show(d)
            );
            if expected {
                hits += 1;
            } else {
                misses += 1;
            }
        }
    }
    // Most queries parse, and the cases discriminate.
    assert!(checked > 300, "{checked}");
    assert!(hits > 30_000 && misses > 30_000, "{hits} {misses}");
}

#[test]
fn quantities_are_indexed_per_unit_family() {
    let q = json!({"value": 5.4, "system": "http://unitsofmeasure.org", "code": "mmol/L",
                   "unit": "mmol/l"});
    let entries = index_quantity_value("value-quantity", &q);
    let hit = |query: &str| {
        matches(
            &parse_query("value-quantity", query, true).unwrap(),
            &entries,
        )
    };
    assert!(hit("5.4"));
    assert!(hit("5.4|http://unitsofmeasure.org|mmol/L"));
    assert!(hit("5.4||mmol/L"));
    assert!(hit("5.4||mmol/l"));
    assert!(hit("gt5|http://unitsofmeasure.org|mmol/L"));
    assert!(hit("5.4||"));
    assert!(!hit("5.4|http://unitsofmeasure.org|mg"));
    assert!(!hit("5.4|http://other|mmol/L"));
    assert!(!hit("5.4||mg"));
    assert!(!hit("5.5"));
    assert!(!hit("lt5.4"));
    let money = index_quantity_value("totalnet", &json!({"value": 120, "currency": "EUR"}));
    let m = parse_query("totalnet", "ge100|urn:iso:std:iso:4217|EUR", true).unwrap();
    assert!(matches(&m, &money));
    // No value, no entries.
    assert!(index_quantity_value("x", &json!({"code": "mg"})).is_empty());
    // Bounded entries per value.
    assert!(entries.len() <= 4 * (SIG_DIGITS + 4), "{}", entries.len());
}

#[test]
fn bad_values_are_refused() {
    for (value, quantity, phrase) in [
        ("abc", false, "not a valid number"),
        ("gt", false, "not a valid number"),
        ("5.4|x|y", false, "not a number"),
        ("5.4|x", true, "not a quantity"),
        ("5.4|http://x|", true, "system without a code"),
        ("1.234567", false, "significant digits"),
        ("gt1.234567", false, "significant digits"),
        ("1.23456", false, "significant digits"),
        ("ge1.23456", false, ""),
        ("1e-20", false, "magnitude"),
        ("gt1e17", false, "magnitude"),
        (
            "5.400000000000000000000000000000000000000000",
            false,
            "significant digits",
        ),
        (&"9".repeat(80), false, "too long"),
    ] {
        let r = parse_query("n", value, quantity);
        if phrase.is_empty() {
            assert!(r.is_ok(), "{value}");
        } else {
            let Err(message) = r else {
                panic!("{value} parsed")
            };
            assert!(message.contains(phrase), "{value}: {message}");
        }
    }
}

#[test]
fn resources_are_indexed_and_searched_through_the_query() {
    use crate::search::{SearchQuery, index_entries};
    use crate::{ResourceType, validate::tests::validator};
    let obs = validator()
        .validate(
            json!({"resourceType": "Observation", "status": "final",
                   "code": {"text": "panel"},
                   "valueQuantity": {"value": 5.4, "system": "http://unitsofmeasure.org",
                                     "code": "mmol/L"},
                   "component": [{"code": {"text": "a"},
                                  "valueQuantity": {"value": 120, "unit": "mg"}}]}),
            None,
        )
        .unwrap();
    let entries = index_entries(&obs);
    let rtype = ResourceType::parse("Observation").unwrap();
    let found = |name: &str, value: &str| {
        let q = SearchQuery::parse(rtype, &[(name.to_owned(), value.to_owned())], false)
            .unwrap_or_else(|e| panic!("{name}={value}: {e}"));
        q.params[0].matches(&entries)
    };
    assert!(found(
        "value-quantity",
        "gt5.3|http://unitsofmeasure.org|mmol/L"
    ));
    assert!(found("value-quantity", "5.4,9"));
    assert!(!found("value-quantity", "gt5.4"));
    assert!(!found("value-quantity", "120"));
    assert!(found("component-value-quantity", "le100||mg,120||mg"));
    assert!(!found("component-value-quantity", "le100||mg"));
    assert!(found("combo-value-quantity", "120"));
    assert!(found("combo-value-quantity", "ne7"));
    let risk = validator()
        .validate(
            json!({"resourceType": "RiskAssessment", "status": "final",
                   "subject": {"reference": "Patient/p1"},
                   "prediction": [{"probabilityDecimal": 0.85}, {"probabilityDecimal": 0.1}]}),
            None,
        )
        .unwrap();
    let entries = index_entries(&risk);
    let rtype = ResourceType::parse("RiskAssessment").unwrap();
    for (value, hit) in [
        ("gt0.8", true),
        ("lt0.05", false),
        ("0.1", true),
        ("ne0.1", false),
    ] {
        let q = SearchQuery::parse(
            rtype,
            &[("probability".to_owned(), value.to_owned())],
            false,
        )
        .unwrap();
        assert_eq!(q.params[0].matches(&entries), hit, "{value}");
    }
}
