//! Plain-language words of the system pages: times, ages and durations, purposes of use,
//! outcomes and the trail's backup actions. Pure functions, no I/O.
//!
//! Times are shown in UTC, to the second, in one fixed form (`2026-03-01 14:05:09 UTC`),
//! so that what an operator reads matches the server's logs whatever the browser's zone.

use phivault_audit::Outcome;
use phivault_policy::Purpose;
use time::OffsetDateTime;

/// Now, in unix milliseconds.
pub(crate) fn now_ms() -> i64 {
    let t = OffsetDateTime::now_utc();
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// `2026-03-01 14:05:09 UTC` of unix milliseconds; the number itself when out of range.
pub(crate) fn when_ms(ms: i64) -> String {
    match OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        Err(_) => ms.to_string(),
    }
}

/// [`when_ms`] of unix seconds.
pub(crate) fn when_secs(secs: i64) -> String {
    when_ms(secs.saturating_mul(1000))
}

/// A short age: `3 days`, `5 hours`, `7 minutes`, `12 seconds` (the largest whole unit;
/// negative ages, a clock set back, read as `0 seconds`).
pub(crate) fn age(seconds: i64) -> String {
    let s = seconds.max(0);
    let (n, unit) = if s >= 86_400 {
        (s / 86_400, "day")
    } else if s >= 3600 {
        (s / 3600, "hour")
    } else if s >= 60 {
        (s / 60, "minute")
    } else {
        (s, "second")
    };
    plural(n, unit)
}

/// `1 day`, `2 days`.
fn plural(n: i64, unit: &str) -> String {
    if n == 1 {
        format!("1 {unit}")
    } else {
        format!("{n} {unit}s")
    }
}

/// A retention period in words, exact: `10 years` (365-day years), `6 weeks`, `30 days`,
/// `36 hours`, `90 minutes`, `45 seconds`; the largest unit that divides it.
pub(crate) fn period(seconds: i64) -> String {
    const UNITS: [(i64, &str); 5] = [
        (365 * 86_400, "year"),
        (7 * 86_400, "week"),
        (86_400, "day"),
        (3600, "hour"),
        (60, "minute"),
    ];
    let s = seconds.max(0);
    for (size, unit) in UNITS {
        if s >= size && s % size == 0 {
            return plural(s / size, unit);
        }
    }
    plural(s, "second")
}

/// What a purpose of use means, for people who do not know the HL7 codes.
pub(crate) fn purpose_words(purpose: Purpose) -> &'static str {
    match purpose {
        Purpose::Treat => "Treatment",
        Purpose::EmergencyTreat => "Emergency treatment",
        Purpose::Payment => "Payment for care",
        Purpose::Operations => "Running the healthcare organisation",
        Purpose::Research => "Research",
        Purpose::PatientRequest => "At the patient's request",
        Purpose::PublicHealth => "Public health",
        Purpose::Marketing => "Marketing",
        Purpose::SystemAdministration => "System administration",
        Purpose::Test => "Testing",
        Purpose::CoordinationOfCare => "Coordination of care",
        Purpose::CareManagement => "Care management",
        Purpose::Accreditation => "Accreditation",
        Purpose::Legal => "Legal matters",
        Purpose::FamilyRequest => "At the family's request",
        Purpose::PowerOfAttorney => "At the request of a power of attorney",
        Purpose::SupportNetwork => "At the request of a support network",
        Purpose::SystemDevelopment => "Systems development",
        // A purpose added later shows its code until it gets words here.
        _ => purpose.as_str(),
    }
}

/// The outcome of an entry in words: `succeeded`, `refused`, `failed`.
pub(crate) fn outcome_words(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Allowed => "succeeded",
        Outcome::Denied => "refused",
        Outcome::Error => "failed",
    }
}

/// The trail's actions of backups and restores (the CLI writes them), with their name on
/// the backups page; `None` for every other action.
pub(crate) fn backup_action(action: &str) -> Option<&'static str> {
    match action {
        "cli backup" => Some("Backup"),
        "cli backup verify" => Some("Backup check"),
        "cli restore" => Some("Restore"),
        _ => None,
    }
}

/// Who ran a CLI command, from its actor id (`cli:alice` is the OS user `alice`; `cli`
/// alone when the user was not known).
pub(crate) fn cli_user(actor: &str) -> String {
    match actor.strip_prefix("cli:") {
        Some(user) if !user.is_empty() => format!("{user} (command line)"),
        _ if actor == "cli" => "an unnamed user (command line)".to_owned(),
        _ => actor.to_owned(),
    }
}

/// `done` of `total` in whole percent, within 0..=100 (100 for an empty total: nothing was
/// left to do).
pub(crate) fn percent(done: u64, total: u64) -> u64 {
    if total == 0 {
        return 100;
    }
    (u128::from(done.min(total)) * 100 / u128::from(total))
        .try_into()
        .unwrap_or(100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_utc_to_the_second() {
        assert_eq!(when_ms(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(when_ms(1_772_373_909_123), "2026-03-01 14:05:09 UTC");
        assert_eq!(when_secs(1_772_373_909), "2026-03-01 14:05:09 UTC");
        assert_eq!(when_ms(i64::MAX), i64::MAX.to_string());
        assert!(now_ms() > 1_700_000_000_000);
    }

    #[test]
    fn ages_use_the_largest_whole_unit() {
        assert_eq!(age(0), "0 seconds");
        assert_eq!(age(1), "1 second");
        assert_eq!(age(125), "2 minutes");
        assert_eq!(age(3 * 3600 + 60), "3 hours");
        assert_eq!(age(86_400), "1 day");
        assert_eq!(age(2 * 86_400 + 7200), "2 days");
        assert_eq!(age(-3), "0 seconds");
    }

    #[test]
    fn periods_are_exact() {
        assert_eq!(period(10 * 365 * 86_400), "10 years");
        assert_eq!(period(365 * 86_400), "1 year");
        assert_eq!(period(6 * 7 * 86_400), "6 weeks");
        assert_eq!(period(30 * 86_400), "30 days");
        assert_eq!(period(36 * 3600), "36 hours");
        assert_eq!(period(90 * 60), "90 minutes");
        assert_eq!(period(45), "45 seconds");
        assert_eq!(period(3601), "3601 seconds");
        assert_eq!(period(-5), "0 seconds");
    }

    #[test]
    fn every_purpose_has_words() {
        for p in Purpose::ALL {
            let words = purpose_words(*p);
            assert!(!words.is_empty());
            assert_ne!(words, p.as_str(), "{p:?} has no words");
        }
        assert_eq!(purpose_words(Purpose::Research), "Research");
    }

    #[test]
    fn outcomes_in_words() {
        assert_eq!(outcome_words(Outcome::Allowed), "succeeded");
        assert_eq!(outcome_words(Outcome::Denied), "refused");
        assert_eq!(outcome_words(Outcome::Error), "failed");
    }

    #[test]
    fn backup_actions_are_the_three_cli_ones() {
        assert_eq!(backup_action("cli backup"), Some("Backup"));
        assert_eq!(backup_action("cli backup verify"), Some("Backup check"));
        assert_eq!(backup_action("cli restore"), Some("Restore"));
        for other in [
            "cli backup keygen",
            "cli import",
            "GET /admin",
            "backup",
            "",
        ] {
            assert_eq!(backup_action(other), None, "{other}");
        }
    }

    #[test]
    fn cli_users() {
        assert_eq!(cli_user("cli:alice"), "alice (command line)");
        assert_eq!(cli_user("cli"), "an unnamed user (command line)");
        assert_eq!(cli_user("cli:"), "cli:");
        assert_eq!(cli_user("phivault-server"), "phivault-server");
    }

    #[test]
    fn percents_stay_in_range() {
        assert_eq!(percent(0, 0), 100);
        assert_eq!(percent(0, 10), 0);
        assert_eq!(percent(5, 10), 50);
        assert_eq!(percent(1, 3), 33);
        assert_eq!(percent(20, 10), 100);
        assert_eq!(percent(u64::MAX, u64::MAX), 100);
    }
}
