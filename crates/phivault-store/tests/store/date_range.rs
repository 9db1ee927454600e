//! Date range search over blind tokens against a brute-force oracle: random resources with
//! dates of random precision and Periods, random searches with every prefix; the result set
//! equals the one computed from R4 semantics on the plain dates (both backends).

use std::collections::BTreeSet;

use time::{Date, Month};

use super::*;

/// xorshift64*: seeded, reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[usize::try_from(self.below(items.len() as u64)).unwrap()]
    }
}

/// A date written at some precision: its text and its first and last day.
#[derive(Clone, Debug)]
struct Written {
    text: String,
    first: Date,
    last: Date,
}

fn date(y: i32, m: u8, d: u8) -> Date {
    Date::from_calendar_date(y, Month::try_from(m).unwrap(), d).unwrap()
}

/// A random date at year, month, day or (with `time`) dateTime precision, mostly in a few
/// years around 2000 (so that ranges and values overlap often), sometimes far outside the
/// searchable universe.
fn random_written(rng: &mut Rng, time: bool) -> Written {
    let year = match rng.below(20) {
        0 => 1750,
        1 => 2300,
        2 => 1800,
        3 => 2200,
        _ => 1998 + i32::try_from(rng.below(5)).unwrap(),
    };
    let month = 1 + u8::try_from(rng.below(12)).unwrap();
    let len = Month::try_from(month).unwrap().length(year);
    let day = 1 + u8::try_from(rng.below(u64::from(len))).unwrap();
    match rng.below(if time { 4 } else { 3 }) {
        0 => Written {
            text: format!("{year:04}"),
            first: date(year, 1, 1),
            last: date(year, 12, 31),
        },
        1 => Written {
            text: format!("{year:04}-{month:02}"),
            first: date(year, month, 1),
            last: date(year, month, len),
        },
        2 => Written {
            text: format!("{year:04}-{month:02}-{day:02}"),
            first: date(year, month, day),
            last: date(year, month, day),
        },
        _ => {
            let zone = *rng.pick(&["Z", "+05:00", "-11:00"]);
            Written {
                text: format!("{year:04}-{month:02}-{day:02}T23:30:00{zone}"),
                first: date(year, month, day),
                last: date(year, month, day),
            }
        }
    }
}

/// A target value: `[lo, hi]` in days, `None` an open end.
#[derive(Clone, Copy, Debug)]
struct Target {
    lo: Option<Date>,
    hi: Option<Date>,
}

/// A random `effective[x]`: dateTime, instant or Period (open ends included); `None` for no
/// value.
fn random_effective(rng: &mut Rng) -> (Value, Option<Target>) {
    match rng.below(8) {
        0 => (json!({}), None),
        1..=3 => {
            let w = random_written(rng, true);
            (
                json!({ "effectiveDateTime": w.text }),
                Some(Target {
                    lo: Some(w.first),
                    hi: Some(w.last),
                }),
            )
        }
        4 => {
            let mut w = random_written(rng, true);
            while !w.text.contains('T') {
                w = random_written(rng, true);
            }
            (
                json!({ "effectiveInstant": w.text }),
                Some(Target {
                    lo: Some(w.first),
                    hi: Some(w.last),
                }),
            )
        }
        _ => {
            let (a, b) = (random_written(rng, true), random_written(rng, true));
            let (start, end) = if a.first <= b.first { (a, b) } else { (b, a) };
            match rng.below(4) {
                0 => (
                    json!({ "effectivePeriod": { "start": start.text } }),
                    Some(Target {
                        lo: Some(start.first),
                        hi: None,
                    }),
                ),
                1 => (
                    json!({ "effectivePeriod": { "end": end.text } }),
                    Some(Target {
                        lo: None,
                        hi: Some(end.last),
                    }),
                ),
                _ => (
                    json!({ "effectivePeriod": { "start": start.text, "end": end.text } }),
                    Some(Target {
                        lo: Some(start.first),
                        hi: Some(end.last),
                    }),
                ),
            }
        }
    }
}

const PREFIXES: &[&str] = &["", "eq", "ne", "gt", "lt", "ge", "le", "sa", "eb"];

/// A random search value inside the universe: its text and `[s0, s1]`.
fn random_search(rng: &mut Rng) -> (String, Date, Date) {
    let mut w = random_written(rng, false);
    while w.first.year() < 1800 || w.last.year() > 2200 {
        w = random_written(rng, false);
    }
    (w.text, w.first, w.last)
}

/// R4 semantics on the plain dates (search range `[s0, s1]`, target `[lo, hi]`).
fn oracle(prefix: &str, s0: Date, s1: Date, t: Option<Target>) -> bool {
    let Some(t) = t else {
        return false;
    };
    let lo_ge = |d: Date| t.lo.is_some_and(|lo| lo >= d);
    let hi_le = |d: Date| t.hi.is_some_and(|hi| hi <= d);
    let eq = lo_ge(s0) && hi_le(s1);
    match prefix {
        "" | "eq" => eq,
        "ne" => !eq,
        "gt" => t.hi.is_none_or(|hi| hi > s1),
        "ge" => t.hi.is_none_or(|hi| hi >= s0),
        "lt" => t.lo.is_none_or(|lo| lo < s0),
        "le" => t.lo.is_none_or(|lo| lo <= s1),
        "sa" => t.lo.is_some_and(|lo| lo > s1),
        "eb" => t.hi.is_some_and(|hi| hi < s0),
        other => panic!("{other}"),
    }
}

#[tokio::test]
async fn date_range_search_equals_the_oracle() {
    let obs = ResourceType::parse("Observation").unwrap();
    for f in fixtures().await {
        let s = &f.store;
        let mut rng = Rng(0x5eed_da7e_0000_0001);
        let pat = s
            .create(valid(patient("Ranger", "Rae")), &NoAudit)
            .await
            .unwrap();
        let mut targets = Vec::new();
        for _ in 0..80 {
            let (effective, target) = random_effective(&mut rng);
            let mut body = observation(&pat.id, "8867-4");
            body.as_object_mut().unwrap().remove("effectiveDateTime");
            for (k, v) in effective.as_object().unwrap() {
                body[k] = v.clone();
            }
            let stored = s.create(valid(body), &NoAudit).await.unwrap();
            targets.push((stored.id, target));
        }
        let mut partial = 0;
        for case in 0..300 {
            // One value, an OR of two, or an AND of two parameters.
            let shape = rng.below(5);
            let mut params = Vec::new();
            let mut expected: BTreeSet<String> = targets
                .iter()
                .map(|(id, _)| id.as_str().to_owned())
                .collect();
            for _ in 0..(if shape == 4 { 2 } else { 1 }) {
                let mut values = Vec::new();
                let mut hit = BTreeSet::new();
                for _ in 0..(if shape == 3 { 2 } else { 1 }) {
                    let prefix = *rng.pick(PREFIXES);
                    let (text, s0, s1) = random_search(&mut rng);
                    values.push(format!("{prefix}{text}"));
                    for (id, t) in &targets {
                        if oracle(prefix, s0, s1, *t) {
                            hit.insert(id.as_str().to_owned());
                        }
                    }
                }
                expected.retain(|id| hit.contains(id));
                params.push(("date".to_owned(), values.join(",")));
            }
            params.push(("_count".to_owned(), "1000".to_owned()));
            let q = SearchQuery::parse(obs, &params, false).unwrap();
            let page = s.search(obs, &q).await.unwrap();
            let got: BTreeSet<String> = page
                .resources
                .iter()
                .map(|r| r.id.as_str().to_owned())
                .collect();
            assert_eq!(got, expected, "{} case {case}: {params:?}", f.label);
            assert_eq!(page.total, expected.len() as u64, "{}", f.label);
            partial += usize::from(!expected.is_empty() && expected.len() < targets.len());
        }
        // The cases discriminate: most select some resources and not others.
        assert!(partial > 150, "{partial}");
    }
}

#[tokio::test]
async fn date_tokens_of_an_older_index_format_are_rebuilt() {
    let obs = ResourceType::parse("Observation").unwrap();
    for f in fixtures().await {
        let s = &f.store;
        let pat = s
            .create(valid(patient("Olddate", "Oli")), &NoAudit)
            .await
            .unwrap();
        let o = s
            .create(valid(observation(&pat.id, "8867-4")), &NoAudit)
            .await
            .unwrap();
        // `ge2024-03` is covered by months, years and decades; `ge2020-01-01` by decades and
        // centuries alone, which only format 5 indexes.
        let find = |store: &Store| {
            let store = store.clone();
            async move {
                let mut totals = Vec::new();
                for value in ["ge2024-03", "ge2020-01-01"] {
                    let q = query(obs, &[("date", value)]);
                    totals.push(store.search(obs, &q).await.unwrap().total);
                }
                totals
            }
        };
        assert_eq!(find(s).await, [1, 1]);
        let mut store = s.clone();
        // Indexes of format 2 (no range tokens) and 4 (no decades or centuries).
        for old in [2, 4] {
            sqlx::query("UPDATE index_formats SET format = $1")
                .bind(old)
                .execute(store.pool())
                .await
                .unwrap();
            sqlx::query("DELETE FROM search_index WHERE id = $1")
                .bind(o.id.as_str())
                .execute(store.pool())
                .await
                .unwrap();
            assert_eq!(find(&store).await, [0, 0]);
            store = f.reopen(&f.key).await.unwrap();
            assert_eq!(find(&store).await, [1, 1], "format {old}, {}", f.label);
        }
    }
}

/// A random `_lastUpdated` search value around `base`: its text and range `[from, to)` in unix
/// seconds, computed by truncating an instant (not by parsing the text).
fn random_instant_search(rng: &mut Rng, base: i64) -> (String, i64, i64) {
    use time::{Duration, OffsetDateTime, UtcOffset};
    let t = base + i64::try_from(rng.below(3 * 86_400 * 40)).unwrap() - 86_400 * 40;
    let offset = *rng.pick(&[0i8, 1, -5]);
    let zone = match offset {
        0 => "Z".to_owned(),
        h => format!("{}{:02}:00", if h < 0 { '-' } else { '+' }, h.abs()),
    };
    let local = OffsetDateTime::from_unix_timestamp(t)
        .unwrap()
        .to_offset(UtcOffset::from_hms(offset, 0, 0).unwrap());
    let utc = OffsetDateTime::from_unix_timestamp(t).unwrap();
    let (y, m, d) = (utc.year(), u8::from(utc.month()), utc.day());
    match rng.below(5) {
        0 => {
            let start = utc
                .replace_date(date(y, 1, 1))
                .replace_time(time::Time::MIDNIGHT);
            let end = start.replace_year(y + 1).unwrap();
            (
                format!("{y:04}"),
                start.unix_timestamp(),
                end.unix_timestamp(),
            )
        }
        1 => {
            let start = utc
                .replace_day(1)
                .unwrap()
                .replace_time(time::Time::MIDNIGHT);
            let end = start + Duration::days(i64::from(utc.month().length(y)));
            (
                format!("{y:04}-{m:02}"),
                start.unix_timestamp(),
                end.unix_timestamp(),
            )
        }
        2 => {
            let start = utc.replace_time(time::Time::MIDNIGHT);
            (
                format!("{y:04}-{m:02}-{d:02}"),
                start.unix_timestamp(),
                start.unix_timestamp() + 86_400,
            )
        }
        3 => {
            let start = local
                .replace_second(0)
                .unwrap()
                .replace_nanosecond(0)
                .unwrap();
            let text = format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}{zone}",
                local.year(),
                u8::from(local.month()),
                local.day(),
                local.hour(),
                local.minute()
            );
            (text, start.unix_timestamp(), start.unix_timestamp() + 60)
        }
        _ => {
            let text = format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}{zone}",
                local.year(),
                u8::from(local.month()),
                local.day(),
                local.hour(),
                local.minute(),
                local.second()
            );
            (text, t, t + 1)
        }
    }
}

#[tokio::test]
async fn last_updated_search_equals_the_oracle() {
    let obs = ResourceType::parse("Observation").unwrap();
    for f in fixtures().await {
        let s = &f.store;
        let mut rng = Rng(0x1a57_0bda_7e00_0002);
        let pat = s
            .create(valid(patient("Lastup", "Lou")), &NoAudit)
            .await
            .unwrap();
        // A fresh write is found by the second, day and year of its meta.lastUpdated.
        let fresh = s
            .create(valid(observation(&pat.id, "8867-4")), &NoAudit)
            .await
            .unwrap();
        let stamped = fresh.body["meta"]["lastUpdated"].as_str().unwrap();
        let second = format!("{}Z", &stamped[..19]);
        for (value, found) in [
            (second.clone(), true),
            (format!("ge{second}"), true),
            (format!("le{second}"), true),
            (format!("gt{second}"), false),
            (format!("lt{second}"), false),
            (format!("ne{second}"), false),
            (stamped[..10].to_owned(), true),
            (format!("eb{}", &stamped[..4]), false),
        ] {
            let page = s
                .search(obs, &query(obs, &[("_lastUpdated", &value)]))
                .await
                .unwrap();
            assert_eq!(page.total, u64::from(found), "{} {value}", f.label);
        }
        // Write times spread over months: set as if written then.
        let base = 1_600_000_000i64;
        let mut written = vec![(fresh.id.clone(), None)];
        for _ in 0..60 {
            let o = s
                .create(valid(observation(&pat.id, "8867-4")), &NoAudit)
                .await
                .unwrap();
            let at = base + i64::try_from(rng.below(86_400 * 60)).unwrap() - 86_400 * 30;
            sqlx::query("UPDATE current_resources SET recorded_at = $1 WHERE id = $2")
                .bind(at)
                .bind(o.id.as_str())
                .execute(s.pool())
                .await
                .unwrap();
            written.push((o.id, Some(at)));
        }
        let mut partial = 0;
        for case in 0..200 {
            let mut params = Vec::new();
            let mut expected: BTreeSet<String> = BTreeSet::new();
            let mut values = Vec::new();
            for _ in 0..(1 + rng.below(2)) {
                let prefix = *rng.pick(PREFIXES);
                let (text, from, to) = random_instant_search(&mut rng, base);
                values.push(format!("{prefix}{text}"));
                for (id, at) in &written {
                    // The fresh resource was written now: later than every search value.
                    let at = at.unwrap_or(i64::MAX / 2);
                    let hit = match prefix {
                        "" | "eq" => at >= from && at < to,
                        "ne" => at < from || at >= to,
                        "gt" | "sa" => at >= to,
                        "ge" => at >= from,
                        "lt" | "eb" => at < from,
                        "le" => at < to,
                        other => panic!("{other}"),
                    };
                    if hit {
                        expected.insert(id.as_str().to_owned());
                    }
                }
            }
            params.push(("_lastUpdated".to_owned(), values.join(",")));
            params.push(("_count".to_owned(), "1000".to_owned()));
            let q = SearchQuery::parse(obs, &params, false).unwrap();
            let page = s.search(obs, &q).await.unwrap();
            let got: BTreeSet<String> = page
                .resources
                .iter()
                .map(|r| r.id.as_str().to_owned())
                .collect();
            assert_eq!(got, expected, "{} case {case}: {params:?}", f.label);
            partial += usize::from(!expected.is_empty() && expected.len() < written.len());
        }
        assert!(partial > 60, "{partial}");
    }
}
