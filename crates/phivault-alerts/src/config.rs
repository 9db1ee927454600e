//! `[[alert_rules]]` and `[alert_webhook]` of `phivault.toml`, checked into [`Rule`]s and a
//! [`Webhook`] before the server listens.
//!
//! ```toml
//! [[alert_rules]]
//! name = "many-patients"       # unique; named by every alert it raises
//! kind = "distinct_patients"   # what it watches (see RuleKind)
//! window = "10m"               # s, m, h or d
//! threshold = 50               # raises when the count passes it (51 patients here)
//!
//! [alert_webhook]
//! url = "https://siem.example.org/hooks/phivault"
//! secret_file = "/etc/phivault/webhook.secret"   # the HMAC-SHA256 key, 32+ bytes
//! ```
//!
//! Without `[[alert_rules]]` the defaults ([`default_rules`]) apply; a file that lists rules
//! replaces them all. Every mistake is reported with the rule's name and the field; a field
//! that does not apply to a rule's kind is a mistake, not ignored.

use std::path::PathBuf;

use phivault_audit::ActorKind;
use serde::{Deserialize, Serialize};
use time::UtcOffset;
use zeroize::Zeroizing;

/// What a rule watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleKind {
    /// A principal reads (reads, searches, exports) more distinct patients in `window` than
    /// `threshold`, or than `baseline_factor` times its own usual peak.
    DistinctPatients,
    /// A staff user (of `roles`) acts outside `hours` on `days` (local time at `utc_offset`).
    OffHours,
    /// More than `threshold` refused requests of one principal (or, unauthenticated, of one
    /// client address) in `window`.
    RepeatedDenials,
    /// A principal reaches more than `threshold` distinct patients under break-the-glass in
    /// `window`.
    BreakGlass,
    /// A principal (of `actor_kinds`) is used from an address it has not used in
    /// `lookback`.
    NewAddress,
    /// A principal runs a Bulk Data export or `$everything` without having done so in
    /// `lookback`.
    UnusualBulk,
    /// A user (of `roles`) reaches a record labelled with one of `labels` of a patient they
    /// have no care relationship with.
    LabelledAccess,
    /// An administrator grants access to themselves, or to an account created less than
    /// `window` before.
    SelfGrant,
}

impl RuleKind {
    /// The name as written in configuration and in alerts.
    pub fn as_str(self) -> &'static str {
        match self {
            RuleKind::DistinctPatients => "distinct_patients",
            RuleKind::OffHours => "off_hours",
            RuleKind::RepeatedDenials => "repeated_denials",
            RuleKind::BreakGlass => "break_glass",
            RuleKind::NewAddress => "new_address",
            RuleKind::UnusualBulk => "unusual_bulk",
            RuleKind::LabelledAccess => "labelled_access",
            RuleKind::SelfGrant => "self_grant",
        }
    }
}

/// One `[[alert_rules]]` entry as written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSetting {
    /// Unique name (1 to 64 of letters, digits, `-`, `_`, `.`).
    pub name: String,
    /// What the rule watches.
    pub kind: RuleKind,
    /// The counting window (and the quiet time after an alert): `30s`, `10m`, `1h`, `1d`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    /// The count to pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<u64>,
    /// `distinct_patients`: also raise when the count passes this many times the
    /// principal's own peak of an earlier day (learned while the server runs; at least 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_factor: Option<u32>,
    /// Roles of the users watched (`off_hours`, `labelled_access`, `distinct_patients`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles: Option<Vec<String>>,
    /// `off_hours`: working hours, `HH:MM-HH:MM` (an end before the start spans midnight).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hours: Option<String>,
    /// `off_hours`: working days (`mon` ... `sun`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub days: Option<Vec<String>>,
    /// `off_hours`: the site's offset from UTC (`+01:00`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utc_offset: Option<String>,
    /// `new_address`, `unusual_bulk`: how far back "usual" reaches (`30d`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lookback: Option<String>,
    /// `labelled_access`: the security-label codes watched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<String>>,
    /// `new_address`, `distinct_patients`: which principals (`user`, `client`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor_kinds: Option<Vec<String>>,
}

impl RuleSetting {
    /// A rule named `name` of `kind` with every other field left to the kind's defaults.
    pub fn new(name: &str, kind: RuleKind) -> RuleSetting {
        RuleSetting {
            name: name.to_owned(),
            kind,
            window: None,
            threshold: None,
            baseline_factor: None,
            roles: None,
            hours: None,
            days: None,
            utc_offset: None,
            lookback: None,
            labels: None,
            actor_kinds: None,
        }
    }
}

/// `[alert_webhook]` as written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSetting {
    /// Where alerts are POSTed: `https://...`, or `http://` to a loopback address only.
    pub url: String,
    /// A file holding the HMAC-SHA256 key (at least 32 bytes; surrounding whitespace is
    /// trimmed).
    pub secret_file: PathBuf,
    /// Attempts per alert before giving up (default 8: about four minutes of backoff).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
}

/// A checked rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Its name.
    pub name: String,
    /// Its kind.
    pub kind: RuleKind,
    /// Counting window and quiet time after an alert, in ms.
    pub window_ms: i64,
    /// The count to pass.
    pub threshold: u64,
    /// See [`RuleSetting::baseline_factor`].
    pub baseline_factor: Option<u32>,
    /// Roles watched; `None`: every role.
    pub roles: Option<Vec<String>>,
    /// Working time, minutes after local midnight: `[start, end)`.
    pub hours: (u32, u32),
    /// Working days, Monday first.
    pub days: [bool; 7],
    /// The site's offset from UTC.
    pub utc_offset: UtcOffset,
    /// See [`RuleSetting::lookback`], in ms.
    pub lookback_ms: i64,
    /// Label codes watched.
    pub labels: Vec<String>,
    /// Principal kinds watched.
    pub actor_kinds: Vec<ActorKind>,
}

/// A mistake in the alert configuration: which rule, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

const MINUTE: i64 = 60_000;
const HOUR: i64 = 60 * MINUTE;
const DAY: i64 = 24 * HOUR;

/// Parses `30s`, `10m`, `1h`, `2d` into ms (at least one second, at most 366 days).
pub fn parse_duration(text: &str) -> Option<i64> {
    let text = text.trim();
    let unit = text.chars().last()?;
    let n: i64 = text[..text.len() - unit.len_utf8()].parse().ok()?;
    let ms = match unit {
        's' => n.checked_mul(1000)?,
        'm' => n.checked_mul(MINUTE)?,
        'h' => n.checked_mul(HOUR)?,
        'd' => n.checked_mul(DAY)?,
        _ => return None,
    };
    (1000..=366 * DAY).contains(&ms).then_some(ms)
}

fn parse_clock(text: &str) -> Option<u32> {
    let (h, m) = text.trim().split_once(':')?;
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (h <= 24 && m < 60 && h * 60 + m <= 24 * 60).then_some(h * 60 + m)
}

const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// The defaults (when `[[alert_rules]]` is absent): every kind but `off_hours`, which needs
/// the site's own hours and time zone.
pub fn default_rules() -> Vec<RuleSetting> {
    let rule = |name: &str, kind, window: &str, threshold: Option<u64>| RuleSetting {
        window: Some(window.to_owned()),
        threshold,
        ..RuleSetting::new(name, kind)
    };
    vec![
        RuleSetting {
            baseline_factor: Some(3),
            ..rule("many-patients", RuleKind::DistinctPatients, "10m", Some(50))
        },
        rule(
            "repeated-denials",
            RuleKind::RepeatedDenials,
            "5m",
            Some(10),
        ),
        rule("break-glass-burst", RuleKind::BreakGlass, "1h", Some(3)),
        RuleSetting {
            lookback: Some("30d".to_owned()),
            ..rule("new-address", RuleKind::NewAddress, "1h", None)
        },
        RuleSetting {
            lookback: Some("30d".to_owned()),
            ..rule("unusual-bulk", RuleKind::UnusualBulk, "1h", None)
        },
        rule(
            "labelled-without-care",
            RuleKind::LabelledAccess,
            "1h",
            None,
        ),
        rule("self-grant", RuleKind::SelfGrant, "1d", None),
    ]
}

/// Checks the rules (the defaults when `None`).
pub fn check_rules(settings: Option<Vec<RuleSetting>>) -> Result<Vec<Rule>, ConfigError> {
    let settings = settings.unwrap_or_else(default_rules);
    let mut rules: Vec<Rule> = Vec::with_capacity(settings.len());
    for s in settings {
        let rule = check_rule(s)?;
        if rules.iter().any(|r| r.name == rule.name) {
            return Err(ConfigError(format!(
                "alert_rules: two rules are named `{}`",
                rule.name
            )));
        }
        rules.push(rule);
    }
    Ok(rules)
}

fn check_rule(s: RuleSetting) -> Result<Rule, ConfigError> {
    let name_ok = !s.name.is_empty()
        && s.name.len() <= 64
        && s.name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !name_ok {
        return Err(ConfigError(format!(
            "alert_rules: the name `{}` must be 1 to 64 of letters, digits, `-`, `_`, `.`",
            s.name.escape_debug()
        )));
    }
    let err = |m: String| ConfigError(format!("alert_rules `{}`: {m}", s.name));
    use RuleKind as K;
    let kind = s.kind;
    // Which fields apply to which kinds: any other is a mistake.
    let applies: &[(&str, bool, &[K])] = &[
        (
            "threshold",
            s.threshold.is_some(),
            &[K::DistinctPatients, K::RepeatedDenials, K::BreakGlass],
        ),
        (
            "baseline_factor",
            s.baseline_factor.is_some(),
            &[K::DistinctPatients],
        ),
        (
            "roles",
            s.roles.is_some(),
            &[K::DistinctPatients, K::OffHours, K::LabelledAccess],
        ),
        ("hours", s.hours.is_some(), &[K::OffHours]),
        ("days", s.days.is_some(), &[K::OffHours]),
        ("utc_offset", s.utc_offset.is_some(), &[K::OffHours]),
        (
            "lookback",
            s.lookback.is_some(),
            &[K::NewAddress, K::UnusualBulk],
        ),
        ("labels", s.labels.is_some(), &[K::LabelledAccess]),
        (
            "actor_kinds",
            s.actor_kinds.is_some(),
            &[K::DistinctPatients, K::NewAddress],
        ),
    ];
    for (field, given, kinds) in applies {
        if *given && !kinds.contains(&kind) {
            return Err(err(format!(
                "`{field}` does not apply to a {} rule",
                kind.as_str()
            )));
        }
    }
    let (default_window, default_threshold) = match kind {
        K::DistinctPatients => ("10m", 50),
        K::RepeatedDenials => ("5m", 10),
        K::BreakGlass => ("1h", 3),
        K::SelfGrant => ("1d", 0),
        K::OffHours | K::NewAddress | K::UnusualBulk | K::LabelledAccess => ("1h", 0),
    };
    let window_text = s.window.as_deref().unwrap_or(default_window);
    let window_ms = parse_duration(window_text).ok_or_else(|| {
        err(format!(
            "window `{}`: a duration from 1s to 366d such as 10m, 1h or 1d",
            window_text.escape_debug()
        ))
    })?;
    let lookback_text = s.lookback.as_deref().unwrap_or("30d");
    let lookback_ms = parse_duration(lookback_text).ok_or_else(|| {
        err(format!(
            "lookback `{}`: a duration from 1s to 366d such as 30d",
            lookback_text.escape_debug()
        ))
    })?;
    if s.baseline_factor.is_some_and(|f| f < 2) {
        return Err(err(
            "baseline_factor must be a whole number of at least 2".to_owned()
        ));
    }
    const ROLES: [&str; 6] = [
        "admin",
        "clinician",
        "patient",
        "researcher",
        "auditor",
        "app",
    ];
    if let Some(roles) = &s.roles {
        if roles.is_empty() {
            return Err(err("roles must name at least one role".to_owned()));
        }
        if let Some(bad) = roles.iter().find(|r| !ROLES.contains(&r.as_str())) {
            return Err(err(format!(
                "unknown role `{}` (one of {})",
                bad.escape_debug(),
                ROLES.join(", ")
            )));
        }
    }
    let staff = || {
        Some(
            ["admin", "clinician", "researcher", "auditor"]
                .map(str::to_owned)
                .to_vec(),
        )
    };
    let roles = match kind {
        K::OffHours | K::LabelledAccess => s.roles.clone().or_else(staff),
        _ => s.roles.clone(),
    };
    let hours = match (&s.hours, kind) {
        (None, K::OffHours) => {
            return Err(err(
                "off_hours needs `hours`, the working hours as HH:MM-HH:MM".to_owned(),
            ));
        }
        (None, _) => (0, 24 * 60),
        (Some(text), _) => {
            let parsed = text
                .split_once('-')
                .and_then(|(a, b)| Some((parse_clock(a)?, parse_clock(b)?)));
            match parsed {
                Some((a, b)) if a != b => (a, b),
                _ => {
                    return Err(err(format!(
                        "hours `{}`: HH:MM-HH:MM with different ends, such as 07:00-19:00",
                        text.escape_debug()
                    )));
                }
            }
        }
    };
    let mut days = [true; 7];
    if kind == K::OffHours {
        days = [true, true, true, true, true, false, false];
    }
    if let Some(names) = &s.days {
        days = [false; 7];
        for name in names {
            let i = DAY_NAMES
                .iter()
                .position(|d| d.eq_ignore_ascii_case(name))
                .ok_or_else(|| {
                    err(format!(
                        "unknown day `{}` (mon, tue, wed, thu, fri, sat, sun)",
                        name.escape_debug()
                    ))
                })?;
            days[i] = true;
        }
    }
    let utc_offset = match &s.utc_offset {
        None => UtcOffset::UTC,
        Some(text) => parse_offset(text).ok_or_else(|| {
            err(format!(
                "utc_offset `{}`: +HH:MM or -HH:MM, such as +01:00",
                text.escape_debug()
            ))
        })?,
    };
    let labels = match (&s.labels, kind) {
        (Some(l), _) if l.is_empty() => return Err(err("labels must name a label".to_owned())),
        (Some(l), _) => {
            if let Some(bad) = l
                .iter()
                .find(|c| c.is_empty() || !c.chars().all(|c| c.is_ascii_alphanumeric()))
            {
                return Err(err(format!(
                    "label `{}` is not a security-label code such as PSY",
                    bad.escape_debug()
                )));
            }
            l.clone()
        }
        (None, K::LabelledAccess) => ["ETH", "HIV", "PSY"].map(str::to_owned).to_vec(),
        (None, _) => Vec::new(),
    };
    let actor_kinds = match &s.actor_kinds {
        None if kind == K::NewAddress => vec![ActorKind::Client],
        None => vec![ActorKind::User, ActorKind::Client],
        Some(kinds) if kinds.is_empty() => {
            return Err(err("actor_kinds must name user or client".to_owned()));
        }
        Some(kinds) => kinds
            .iter()
            .map(|k| match k.as_str() {
                "user" => Ok(ActorKind::User),
                "client" => Ok(ActorKind::Client),
                other => Err(err(format!(
                    "actor_kinds: `{}` is not user or client",
                    other.escape_debug()
                ))),
            })
            .collect::<Result<_, _>>()?,
    };
    Ok(Rule {
        name: s.name.clone(),
        kind,
        window_ms,
        threshold: s.threshold.unwrap_or(default_threshold),
        baseline_factor: s.baseline_factor,
        roles,
        hours,
        days,
        utc_offset,
        lookback_ms,
        labels,
        actor_kinds,
    })
}

fn parse_offset(text: &str) -> Option<UtcOffset> {
    let text = text.trim();
    let (sign, rest) = match text.as_bytes().first()? {
        b'+' => (1i8, &text[1..]),
        b'-' => (-1i8, &text[1..]),
        _ => return None,
    };
    let (h, m) = rest.split_once(':')?;
    let (h, m): (i8, i8) = (h.parse().ok()?, m.parse().ok()?);
    if !(0..=14).contains(&h) || !(0..60).contains(&m) {
        return None;
    }
    UtcOffset::from_hms(sign * h, sign * m, 0).ok()
}

/// A checked `[alert_webhook]`: the key is read from its file.
pub struct Webhook {
    /// Where alerts go.
    pub url: reqwest::Url,
    /// The HMAC-SHA256 key.
    pub secret: Zeroizing<Vec<u8>>,
    /// Attempts per alert.
    pub max_attempts: u32,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("url", &self.url.as_str())
            .field("secret", &"[redacted]")
            .field("max_attempts", &self.max_attempts)
            .finish()
    }
}

/// Checks the webhook setting and reads its key.
pub fn check_webhook(s: &WebhookSetting) -> Result<Webhook, ConfigError> {
    let err = |m: String| ConfigError(format!("alert_webhook: {m}"));
    let url = reqwest::Url::parse(&s.url)
        .map_err(|e| err(format!("url `{}`: {e}", s.url.escape_debug())))?;
    let loopback = url.host_str().is_some_and(|h| {
        h == "localhost"
            || h.trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|a| a.is_loopback())
    });
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        "http" => {
            return Err(err(
                "url: plain http only to a loopback address; alerts travel over https".to_owned(),
            ));
        }
        other => return Err(err(format!("url: scheme `{other}` is not https"))),
    }
    let raw = std::fs::read(&s.secret_file).map_err(|e| {
        err(format!(
            "reading secret_file {}: {e}",
            s.secret_file.display()
        ))
    })?;
    let raw = Zeroizing::new(raw);
    let trimmed = raw.trim_ascii();
    if trimmed.len() < 32 {
        return Err(err(format!(
            "secret_file {} holds {} bytes; the key needs at least 32",
            s.secret_file.display(),
            trimmed.len()
        )));
    }
    let max_attempts = s.max_attempts.unwrap_or(8);
    if !(1..=20).contains(&max_attempts) {
        return Err(err("max_attempts must be 1 to 20".to_owned()));
    }
    Ok(Webhook {
        url,
        secret: Zeroizing::new(trimmed.to_vec()),
        max_attempts,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_out_of_range_ones_are_refused() {
        assert_eq!(parse_duration("30s"), Some(30_000));
        assert_eq!(parse_duration("10m"), Some(600_000));
        assert_eq!(parse_duration("2d"), Some(2 * DAY));
        for bad in ["", "10", "0s", "10x", "-1m", "400d", "m"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_defaults_check_and_leave_off_hours_out() {
        let rules = check_rules(None).unwrap();
        assert_eq!(rules.len(), 7);
        assert!(rules.iter().all(|r| r.kind != RuleKind::OffHours));
        let many = &rules[0];
        assert_eq!((many.window_ms, many.threshold), (10 * MINUTE, 50));
        let labelled = rules
            .iter()
            .find(|r| r.kind == RuleKind::LabelledAccess)
            .unwrap();
        assert_eq!(labelled.labels, ["ETH", "HIV", "PSY"]);
    }

    fn off_hours() -> RuleSetting {
        RuleSetting {
            hours: Some("07:00-19:00".to_owned()),
            utc_offset: Some("+01:00".to_owned()),
            ..RuleSetting::new("nights", RuleKind::OffHours)
        }
    }

    #[test]
    fn mistakes_name_the_rule_and_the_field() {
        let cases: Vec<(RuleSetting, &str)> = vec![
            (
                RuleSetting {
                    threshold: Some(3),
                    ..off_hours()
                },
                "`threshold` does not apply to a off_hours rule",
            ),
            (
                RuleSetting {
                    hours: None,
                    ..off_hours()
                },
                "off_hours needs `hours`",
            ),
            (
                RuleSetting {
                    hours: Some("7-19".to_owned()),
                    ..off_hours()
                },
                "hours `7-19`",
            ),
            (
                RuleSetting {
                    days: Some(vec!["monday".to_owned()]),
                    ..off_hours()
                },
                "unknown day `monday`",
            ),
            (
                RuleSetting {
                    utc_offset: Some("CET".to_owned()),
                    ..off_hours()
                },
                "utc_offset `CET`",
            ),
            (
                RuleSetting {
                    roles: Some(vec!["nurse".to_owned()]),
                    ..off_hours()
                },
                "unknown role `nurse`",
            ),
            (
                RuleSetting {
                    window: Some("0s".to_owned()),
                    ..off_hours()
                },
                "window `0s`",
            ),
            (
                RuleSetting {
                    name: "two words".to_owned(),
                    ..off_hours()
                },
                "the name `two words`",
            ),
        ];
        for (setting, expected) in cases {
            let e = check_rules(Some(vec![setting])).unwrap_err().to_string();
            assert!(e.contains(expected), "{e} lacks {expected}");
        }
        let e = check_rules(Some(vec![off_hours(), off_hours()]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("two rules are named `nights`"), "{e}");
    }

    #[test]
    fn off_hours_reads_hours_days_and_offset() {
        let rule = check_rules(Some(vec![off_hours()])).unwrap().remove(0);
        assert_eq!(rule.hours, (7 * 60, 19 * 60));
        assert_eq!(rule.days, [true, true, true, true, true, false, false]);
        assert_eq!(rule.utc_offset, UtcOffset::from_hms(1, 0, 0).unwrap());
        assert_eq!(
            rule.roles.as_deref().unwrap(),
            ["admin", "clinician", "researcher", "auditor"]
        );
    }

    #[test]
    fn the_webhook_needs_https_or_loopback_and_a_long_key() {
        let dir = tempfile::tempdir().unwrap();
        let short = dir.path().join("short");
        std::fs::write(&short, "too short\n").unwrap();
        let long = dir.path().join("long");
        std::fs::write(&long, format!("{}\n", "k".repeat(40))).unwrap();
        let setting = |url: &str, file: &std::path::Path| WebhookSetting {
            url: url.to_owned(),
            secret_file: file.to_owned(),
            max_attempts: None,
        };
        let ok = check_webhook(&setting("http://127.0.0.1:9/hook", &long)).unwrap();
        assert_eq!(ok.secret.len(), 40);
        assert!(!format!("{ok:?}").contains("kkkk"));
        check_webhook(&setting("https://siem.example.org/h", &long)).unwrap();
        let e = check_webhook(&setting("http://siem.example.org/h", &long)).unwrap_err();
        assert!(e.0.contains("loopback"), "{e}");
        let e = check_webhook(&setting("http://127.0.0.1:9/hook", &short)).unwrap_err();
        assert!(e.0.contains("at least 32"), "{e}");
        assert!(!e.0.contains("too short"), "{e}");
    }
}
