//! Number and quantity range search over blind tokens against a brute-force oracle: random
//! Observations with quantities of random precision, sign and unit, random searches with every
//! prefix and unit form; the result set equals the one computed exactly on the plain values
//! (both backends).

use std::collections::BTreeSet;

use super::*;

/// xorshift64*: seeded, reproducible.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// Values are compared exactly as integers of this many decimal places.
const PLACES: i32 = 8;

/// A random number `m × 10^k` with up to `digits` digits and `k` in -4..=1: its text (with
/// `k` as written precision) and its value in units of `10^-PLACES`.
fn random_number(rng: &mut Rng, digits: u32) -> (String, i128, i32) {
    let width = 1 + u32::try_from(rng.below(u64::from(digits))).unwrap();
    let m = i128::from(rng.below(10u64.pow(width)));
    let k = i32::try_from(rng.below(6)).unwrap() - 4;
    let negative = rng.below(4) == 0 && m != 0;
    let text = if k > 0 {
        format!("{m}e{k}")
    } else {
        let s = format!("{m:0>width$}", width = usize::try_from(1 - k).unwrap());
        let cut = s.len() - usize::try_from(-k).unwrap();
        if k == 0 {
            s
        } else {
            format!("{}.{}", &s[..cut], &s[cut..])
        }
    };
    let value = m * 10i128.pow(u32::try_from(k + PLACES).unwrap());
    if negative {
        (format!("-{text}"), -value, k)
    } else {
        (text, value, k)
    }
}

const UCUM: &str = "http://unitsofmeasure.org";
const PREFIXES: &[&str] = &["", "eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"];

/// A stored quantity: value and UCUM code.
#[derive(Clone, Copy, Debug)]
struct Stored {
    value: i128,
    code: &'static str,
}

fn oracle(prefix: &str, v: i128, k: i32, code: Option<&str>, target: Option<Stored>) -> bool {
    // No value in the unit asked for: no prefix matches, not even ne (R4: ne matches
    // resources that have a value of the parameter, not equal to the search value).
    let Some(t) = target.filter(|t| code.is_none_or(|c| c == t.code)) else {
        return false;
    };
    let half = 5 * 10i128.pow(u32::try_from(k - 1 + PLACES).unwrap());
    let (lo, hi) = (v - half, v + half);
    let x = t.value;
    let eq = x >= lo && x < hi;
    match prefix {
        "" | "eq" => eq,
        "ne" => !eq,
        "gt" => x > v,
        "lt" => x < v,
        "ge" => x >= v,
        "le" => x <= v,
        "sa" => x >= hi,
        "eb" => x < lo,
        "ap" => {
            // Within the eq range or 10% of v: 10x compared with 9v and 11v.
            let (a, b) = if v < 0 {
                (11 * v, 9 * v)
            } else {
                (9 * v, 11 * v)
            };
            eq || (10 * x >= a && 10 * x <= b)
        }
        other => panic!("{other}"),
    }
}

#[tokio::test]
async fn number_and_quantity_search_equals_the_oracle() {
    let obs = ResourceType::parse("Observation").unwrap();
    for f in fixtures().await {
        let s = &f.store;
        let mut rng = Rng(0x5eed_0000_9a47_1170);
        let pat = s
            .create(valid(patient("Quanta", "Quinn")), &NoAudit)
            .await
            .unwrap();
        let mut targets = Vec::new();
        for i in 0..80 {
            let mut body = observation(&pat.id, "2345-7");
            let stored = if i % 10 == 0 {
                body.as_object_mut().unwrap().remove("valueQuantity");
                None
            } else {
                let (text, value, _) = random_number(&mut rng, 8);
                let code = if rng.below(3) == 0 { "mg" } else { "mmol/L" };
                // The number as JSON, written exactly as the text.
                let number: Value = serde_json::from_str(&text).unwrap();
                body["valueQuantity"] = json!({"value": number, "system": UCUM, "code": code});
                Some(Stored { value, code })
            };
            let created = s.create(valid(body), &NoAudit).await.unwrap();
            targets.push((created.id, stored));
        }
        let mut partial = 0;
        for case in 0..300 {
            let mut values = Vec::new();
            let mut expected = BTreeSet::new();
            for _ in 0..(1 + rng.below(2)) {
                let prefix = PREFIXES[usize::try_from(rng.below(10)).unwrap()];
                let (text, v, k) = random_number(&mut rng, 4);
                let (unit, code) = match rng.below(4) {
                    0 => (format!("|{UCUM}|mg"), Some("mg")),
                    1 => ("||mmol/L".to_owned(), Some("mmol/L")),
                    _ => (String::new(), None),
                };
                values.push(format!("{prefix}{text}{unit}"));
                for (id, t) in &targets {
                    if oracle(prefix, v, k, code, *t) {
                        expected.insert(id.as_str().to_owned());
                    }
                }
            }
            let params = [
                ("value-quantity".to_owned(), values.join(",")),
                ("_count".to_owned(), "1000".to_owned()),
            ];
            let q = SearchQuery::parse(obs, &params, false)
                .unwrap_or_else(|e| panic!("case {case}: {params:?}: {e}"));
            let page = s.search(obs, &q).await.unwrap();
            let got: BTreeSet<String> = page
                .resources
                .iter()
                .map(|r| r.id.as_str().to_owned())
                .collect();
            assert_eq!(got, expected, "{} case {case}: {params:?}", f.label);
            partial += usize::from(!expected.is_empty() && expected.len() < targets.len());
        }
        assert!(partial > 150, "{partial}");
    }
}

#[tokio::test]
async fn numeric_values_are_not_in_the_database_in_plaintext() {
    let risk = ResourceType::parse("RiskAssessment").unwrap();
    for f in fixtures().await {
        let s = &f.store;
        let pat = s
            .create(valid(patient("Numer", "Nia")), &NoAudit)
            .await
            .unwrap();
        // Distinctive digits: no other number in the database has them.
        let digits = format!("{}", 10_000_000 + random_u64() % 89_999_999);
        let value = format!("0.{digits}");
        let body: Value = json!({
            "resourceType": "RiskAssessment",
            "status": "final",
            "subject": {"reference": format!("Patient/{}", pat.id)},
            "prediction": [{"probabilityDecimal": serde_json::from_str::<Value>(&value).unwrap()}],
        });
        s.create(valid(body), &NoAudit).await.unwrap();
        let page = s
            .search(risk, &query(risk, &[("probability", "gt0.1")]))
            .await
            .unwrap();
        assert_eq!(page.total, 1, "{}", f.label);
        if f.label == "sqlite" && !phivault_crypto::NOOP_CIPHER {
            let dir = std::path::Path::new(f.url.trim_start_matches("sqlite://"))
                .parent()
                .unwrap()
                .to_owned();
            let mut scanned = 0;
            for entry in std::fs::read_dir(&dir).unwrap() {
                let Ok(bytes) = std::fs::read(entry.unwrap().path()) else {
                    continue;
                };
                scanned += bytes.len();
                let found = bytes.windows(digits.len()).any(|w| w == digits.as_bytes());
                assert!(!found, "{}", f.label);
            }
            assert!(scanned > 10_000, "{scanned}");
        }
        if f.label == "postgres" && !phivault_crypto::NOOP_CIPHER {
            // Every text and binary column of the store's tables, as text.
            let rows = sqlx::query(
                "SELECT string_agg(t::text, ' ') AS dump FROM (SELECT * FROM search_index) t",
            )
            .fetch_one(s.pool())
            .await
            .unwrap();
            let dump: Option<String> = rows.try_get("dump").unwrap();
            assert!(!dump.unwrap_or_default().contains(&digits));
            let rows = sqlx::query(
                "SELECT string_agg(t::text, ' ') AS dump FROM (SELECT * FROM resource_versions) t",
            )
            .fetch_one(s.pool())
            .await
            .unwrap();
            let dump: Option<String> = rows.try_get("dump").unwrap();
            // bytea is dumped as hex: look for the digits' hex too.
            let dump = dump.unwrap_or_default();
            let digits_hex: String = digits.bytes().map(|b| format!("{b:02x}")).collect();
            assert!(!dump.is_empty() && !dump.contains(&digits), "{}", f.label);
            assert!(!dump.contains(&digits_hex), "{}", f.label);
        }
    }
}

/// A random 64-bit value (not for cryptography).
fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    phivault_crypto::random_bytes(&mut b).unwrap();
    u64::from_le_bytes(b)
}

#[tokio::test]
async fn number_tokens_of_an_older_index_format_are_rebuilt() {
    let obs = ResourceType::parse("Observation").unwrap();
    for f in fixtures().await {
        let s = &f.store;
        let pat = s
            .create(valid(patient("Oldnum", "Ola")), &NoAudit)
            .await
            .unwrap();
        // The helper's Observation has a valueQuantity of 72 /min.
        let o = s
            .create(valid(observation(&pat.id, "8867-4")), &NoAudit)
            .await
            .unwrap();
        let find = |store: &Store| {
            let store = store.clone();
            async move {
                store
                    .search(obs, &query(obs, &[("value-quantity", "gt70||/min")]))
                    .await
                    .unwrap()
                    .total
            }
        };
        assert_eq!(find(s).await, 1);
        // An index of format 3 (no number tokens).
        sqlx::query("UPDATE index_formats SET format = 3")
            .execute(s.pool())
            .await
            .unwrap();
        sqlx::query("DELETE FROM search_index WHERE id = $1")
            .bind(o.id.as_str())
            .execute(s.pool())
            .await
            .unwrap();
        assert_eq!(find(s).await, 0);
        let reopened = f.reopen(&f.key).await.unwrap();
        assert_eq!(find(&reopened).await, 1, "{}", f.label);
    }
}
