//! `/admin/console/alerts`: the alerts the detection rules raised (the same as `phivault
//! alerts list` and `GET /admin/alerts`), and `/admin/console/breach`: a breach-impact report
//! of one person's or app's requests, or one network's, in a time window (the report of
//! `phivault breach report`, [`phivault_audit::breach_report`], whose rules are there).
//!
//! Both only read the trail: auditors may use them. The report is asked for by a post, so
//! the username or network stays out of URLs and logs; it lists patients by id only.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use ipnet::IpNet;
use phivault_audit::{AccessKind, Affected, BreachReport, Selector, breach_report};
use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, PrimitiveDateTime};

use super::{ALERTS, BREACH, checked_form, failed, field, render, when_ms};
use crate::AppState;
use crate::edge::AuditSlot;
use crate::web::session::{Area, signed_in};

/// The navigation item of both pages.
const ACTIVE: &str = "alerts";
/// The periods the alerts page offers, in days; the first is the default.
const PERIODS: &[u32] = &[7, 1, 30, 90];
/// Most alerts listed.
const MAX_ALERTS: u32 = 500;
/// Most patients of a report shown on the page (the command line writes them all).
const MAX_SHOWN_PATIENTS: usize = 1000;
const DAY_MS: i64 = 24 * 3_600_000;

/// The names of accounts and apps by id, for showing who an id is.
async fn names(state: &AppState) -> Result<HashMap<String, String>, phivault_auth::ServiceError> {
    let mut names: HashMap<String, String> = state
        .accounts
        .list_users()
        .await?
        .into_iter()
        .map(|u| (u.user_id, u.username))
        .collect();
    names.extend(
        state
            .accounts
            .list_clients()
            .await?
            .into_iter()
            .map(|c| (c.client_id, c.name)),
    );
    Ok(names)
}

/// The period of `query` (`days=30`) when it is one of [`PERIODS`], else the default.
fn period(query: Option<&str>) -> u32 {
    query
        .and_then(|q| q.split('&').find_map(|p| p.strip_prefix("days=")))
        .and_then(|d| d.parse().ok())
        .filter(|d| PERIODS.contains(d))
        .unwrap_or(PERIODS[0])
}

/// The actor id a subject starts with (`user-1`, `user-1@10.0.0.1`, `user-1/Patient/p`).
fn subject_actor(subject: &str) -> &str {
    subject.split(['@', '/']).next().unwrap_or(subject)
}

/// One alert as listed.
#[derive(Serialize)]
struct AlertItem {
    id: String,
    seq: u64,
    time: String,
    rule: String,
    kind: String,
    subject: String,
    subject_kind: String,
    /// The account or app the subject names, when it names one.
    subject_name: Option<String>,
    count: u64,
    threshold: u64,
    from: String,
    to: String,
    first_seq: u64,
    last_seq: u64,
    delivered: bool,
}

/// A period choice of the alerts page.
#[derive(Serialize)]
struct PeriodChoice {
    days: u32,
    selected: bool,
}

/// `console/alerts.html`.
#[derive(Serialize)]
struct AlertsView {
    alerts: Vec<AlertItem>,
    periods: Vec<PeriodChoice>,
    days: u32,
    limit: u32,
}

/// `GET /admin/console/alerts?days=7`: the alerts of the last 1, 7, 30 or 90 days.
pub(super) async fn page(
    State(state): State<AppState>,
    slot: AuditSlot,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    if let Err(r) = signed_in(&state, &slot, &headers, Area::Console, ALERTS).await {
        return r;
    }
    let days = period(query.as_deref());
    let since = now_ms().saturating_sub(i64::from(days) * DAY_MS);
    let listed = match phivault_alerts::list_alerts(&state.store, since, MAX_ALERTS).await {
        Ok(a) => a,
        Err(e) => return failed(&state, &headers, ACTIVE, ALERTS, &e),
    };
    let names = match names(&state).await {
        Ok(n) => n,
        Err(e) => return failed(&state, &headers, ACTIVE, ALERTS, &e),
    };
    let alerts = listed
        .into_iter()
        .map(|a| {
            let r = a.alert;
            AlertItem {
                subject_name: names.get(subject_actor(&r.subject)).cloned(),
                id: a.id,
                seq: a.seq,
                time: a.time,
                rule: r.rule,
                kind: r.kind,
                subject: r.subject,
                subject_kind: r.subject_kind,
                count: r.count,
                threshold: r.threshold,
                from: when_ms(r.from),
                to: when_ms(r.to),
                first_seq: r.first_seq,
                last_seq: r.last_seq,
                delivered: a.delivered,
            }
        })
        .collect();
    let view = AlertsView {
        alerts,
        periods: PERIODS
            .iter()
            .map(|d| PeriodChoice {
                days: *d,
                selected: *d == days,
            })
            .collect(),
        days,
        limit: MAX_ALERTS,
    };
    render(
        &state,
        &headers,
        StatusCode::OK,
        "console/alerts.html",
        ACTIVE,
        &view,
    )
}

fn now_ms() -> i64 {
    i64::try_from(OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// An instant typed in the form, as unix ms: a `datetime-local` value (`2026-05-01T14:03`,
/// seconds optional) read as UTC, or an RFC 3339 instant.
fn parse_instant(text: &str) -> Option<i64> {
    let text = text.trim();
    let t = OffsetDateTime::parse(text, &Rfc3339).ok().or_else(|| {
        let minutes = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]");
        let seconds =
            time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]");
        PrimitiveDateTime::parse(text, &minutes)
            .or_else(|_| PrimitiveDateTime::parse(text, &seconds))
            .ok()
            .map(PrimitiveDateTime::assume_utc)
    })?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

/// Unix ms as a `datetime-local` value in UTC (`2026-05-01T14:03`).
fn local_input(ms: i64) -> String {
    let format = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]");
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_default()
}

/// A network typed in the form: a CIDR range or one address.
fn parse_network(text: &str) -> Option<IpNet> {
    let text = text.trim();
    text.parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<std::net::IpAddr>().ok().map(IpNet::from))
}

/// The form's values, shown again with the report or the refusal.
#[derive(Serialize)]
struct BreachForm<'a> {
    principal: &'a str,
    network: &'a str,
    from: &'a str,
    to: &'a str,
}

/// One patient of a report as shown.
#[derive(Serialize)]
struct PatientRow {
    patient: String,
    accesses: u64,
    kinds: String,
    resource_types: String,
    classes: String,
    first: String,
    last: String,
}

/// A report as shown.
#[derive(Serialize)]
struct ReportView {
    about: String,
    from: String,
    to: String,
    requests: u64,
    refused: u64,
    actors: Vec<String>,
    patients: Vec<PatientRow>,
    /// How many patients the report reached (more than shown when over the page's limit).
    total_patients: usize,
}

/// `console/breach.html`.
#[derive(Serialize)]
struct BreachView<'a> {
    form: BreachForm<'a>,
    error: Option<&'a str>,
    report: Option<ReportView>,
}

/// `name n, other m` of counts by key.
fn counts<K>(items: impl IntoIterator<Item = (K, u64)>, name: impl Fn(K) -> String) -> String {
    let parts: Vec<String> = items
        .into_iter()
        .map(|(k, n)| format!("{} {n}", name(k)))
        .collect();
    if parts.is_empty() {
        "–".to_owned()
    } else {
        parts.join(", ")
    }
}

/// The word of an access kind (as the report's JSON names it).
fn kind_word(kind: AccessKind) -> String {
    serde_json::to_value(kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| "other".to_owned())
}

fn patient_row(p: Affected) -> PatientRow {
    PatientRow {
        patient: format!("Patient/{}", p.patient),
        accesses: p.accesses,
        kinds: counts(p.by_kind, kind_word),
        resource_types: counts(p.by_resource_type, |t| t),
        classes: counts(p.by_label, |l| l),
        first: when_ms(p.first_ms),
        last: when_ms(p.last_ms),
    }
}

fn report_view(about: String, r: BreachReport, names: &HashMap<String, String>) -> ReportView {
    let total_patients = r.patients.len();
    ReportView {
        about,
        from: when_ms(r.from_ms),
        to: when_ms(r.to_ms),
        requests: r.requests,
        refused: r.refused,
        actors: r
            .actors
            .into_iter()
            .map(|id| match names.get(&id) {
                Some(name) => format!("{name} ({id})"),
                None => id,
            })
            .collect(),
        patients: r
            .patients
            .into_iter()
            .take(MAX_SHOWN_PATIENTS)
            .map(patient_row)
            .collect(),
        total_patients,
    }
}

/// `GET /admin/console/breach`: the report form, the window set to the last seven days.
pub(super) async fn breach_page(
    State(state): State<AppState>,
    slot: AuditSlot,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = signed_in(&state, &slot, &headers, Area::Console, BREACH).await {
        return r;
    }
    let now = now_ms();
    let (from, to) = (local_input(now - 7 * DAY_MS), local_input(now));
    let view = BreachView {
        form: BreachForm {
            principal: "",
            network: "",
            from: &from,
            to: &to,
        },
        error: None,
        report: None,
    };
    render(
        &state,
        &headers,
        StatusCode::OK,
        "console/breach.html",
        ACTIVE,
        &view,
    )
}

/// Whose requests the form names, and how the report says it; or what is wrong, in words
/// for the page.
async fn selector(
    state: &AppState,
    principal: &str,
    network: &str,
) -> Result<Result<(Selector, String), &'static str>, phivault_auth::ServiceError> {
    match (principal, network) {
        ("", "") => Ok(Err("Name a person or app, or a network.")),
        (_, "") => {
            if let Some(user) = state.store.user_by_username(principal).await? {
                let about = format!("user {principal}");
                return Ok(Ok((Selector::Actor(user.user_id), about)));
            }
            if let Some(client) = state.accounts.oauth_client(principal).await? {
                let about = format!("app {} ({})", client.name, client.client_id);
                return Ok(Ok((Selector::Actor(client.client_id), about)));
            }
            Ok(Err(
                "No account has this username and no app has this client id.",
            ))
        }
        ("", _) => Ok(match parse_network(network) {
            Some(net) => Ok((Selector::Network(net), format!("requests from {net}"))),
            None => Err("The network is a CIDR range (10.1.2.0/24) or one address."),
        }),
        _ => Ok(Err("Name a person or app, or a network, not both.")),
    }
}

/// `POST /admin/console/breach` `principal` (a username or a client id) or `network` (CIDR),
/// `from`, `to` (UTC; `to` exclusive): the report's table.
pub(super) async fn breach(
    State(state): State<AppState>,
    slot: AuditSlot,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let form = match checked_form(&state, &headers, body, ACTIVE, BREACH).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    if let Err(r) = signed_in(&state, &slot, &headers, Area::Console, BREACH).await {
        return r;
    }
    let typed = BreachForm {
        principal: field(&form, "principal"),
        network: field(&form, "network"),
        from: field(&form, "from"),
        to: field(&form, "to"),
    };
    let window = match (parse_instant(typed.from), parse_instant(typed.to)) {
        (Some(from), Some(to)) if from < to => Ok((from, to)),
        (Some(_), Some(_)) => Err("The start of the window must be before its end."),
        _ => Err("Give the window's start and end as a date and time (UTC)."),
    };
    let chosen = match selector(&state, typed.principal, typed.network).await {
        Ok(s) => s,
        Err(e) => return failed(&state, &headers, ACTIVE, BREACH, &e),
    };
    let (selector, about, (from, to)) = match (chosen, window) {
        (Ok((selector, about)), Ok(window)) => (selector, about, window),
        (Err(error), _) | (_, Err(error)) => {
            let view = BreachView {
                form: typed,
                error: Some(error),
                report: None,
            };
            let status = StatusCode::BAD_REQUEST;
            return render(
                &state,
                &headers,
                status,
                "console/breach.html",
                ACTIVE,
                &view,
            );
        }
    };
    let report = match breach_report(&state.store, &selector, from, to).await {
        Ok(r) => r,
        Err(e) => return failed(&state, &headers, ACTIVE, BREACH, &e),
    };
    let names = match names(&state).await {
        Ok(n) => n,
        Err(e) => return failed(&state, &headers, ACTIVE, BREACH, &e),
    };
    let view = BreachView {
        form: typed,
        error: None,
        report: Some(report_view(about, report, &names)),
    };
    render(
        &state,
        &headers,
        StatusCode::OK,
        "console/breach.html",
        ACTIVE,
        &view,
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn instants_from_the_form_are_utc() {
        assert_eq!(parse_instant("1970-01-01T00:01"), Some(60_000));
        assert_eq!(parse_instant("1970-01-01T00:01:02"), Some(62_000));
        assert_eq!(parse_instant(" 1970-01-01T00:00:01Z "), Some(1000));
        assert_eq!(parse_instant("1970-01-01T01:00:00+01:00"), Some(0));
        for bad in ["", "1970-01-01", "yesterday", "1970-13-01T00:00"] {
            assert_eq!(parse_instant(bad), None, "{bad:?}");
        }
        assert_eq!(local_input(60_000), "1970-01-01T00:01");
        assert_eq!(
            parse_instant(&local_input(1_700_000_040_000)),
            Some(1_700_000_040_000)
        );
    }

    #[test]
    fn networks_are_ranges_or_addresses() {
        assert_eq!(
            parse_network("10.1.2.0/24").unwrap().to_string(),
            "10.1.2.0/24"
        );
        assert_eq!(
            parse_network("10.1.2.3").unwrap().to_string(),
            "10.1.2.3/32"
        );
        assert_eq!(
            parse_network("2001:db8::/32").unwrap().to_string(),
            "2001:db8::/32"
        );
        assert!(parse_network("10.1.2.0/33").is_none());
        assert!(parse_network("example.org").is_none());
    }

    #[test]
    fn periods_and_subjects() {
        assert_eq!(period(None), 7);
        assert_eq!(period(Some("days=30")), 30);
        assert_eq!(period(Some("x=1&days=1")), 1);
        assert_eq!(period(Some("days=5")), 7);
        assert_eq!(period(Some("days=-1")), 7);
        assert_eq!(subject_actor("u-1"), "u-1");
        assert_eq!(subject_actor("u-1@10.0.0.1"), "u-1");
        assert_eq!(subject_actor("u-1/Patient/p-2"), "u-1");
    }

    #[test]
    fn a_report_row_counts_by_kind_type_and_class() {
        let row = patient_row(Affected {
            patient: "p-1".to_owned(),
            first_ms: 0,
            last_ms: 60_000,
            accesses: 3,
            by_kind: BTreeMap::from([(AccessKind::Read, 2), (AccessKind::Search, 1)]),
            by_resource_type: BTreeMap::from([("Observation".to_owned(), 3)]),
            by_label: BTreeMap::new(),
        });
        assert_eq!(row.patient, "Patient/p-1");
        assert_eq!(row.kinds, "read 2, search 1");
        assert_eq!(row.resource_types, "Observation 3");
        assert_eq!(row.classes, "–");
        assert_eq!(row.first, "1970-01-01 00:00 UTC");
        assert_eq!(row.last, "1970-01-01 00:01 UTC");
    }
}
