//! `phivault breach report`: whose data one actor reached in a window, from the audit trail,
//! to notify the patients and the regulator after credentials were stolen or misused.
//!
//! `--actor USERNAME`, `--client CLIENT_ID`, `--token-hash HEX` (SHA-256 of a stolen token, as
//! stored: its principal, within the token's lifetime) or `--address CIDR` (every actor whose
//! requests came from there), with `--from` and `--to` (RFC 3339 instants, to exclusive).
//!
//! The report itself is `phivault_audit::breach_report` (its rules are there). Here: the
//! actor named by login, client id or token hash is resolved to the trail's actor id (a
//! token's window is cut to its lifetime), and the report is printed as Markdown or JSON, to
//! stdout or an owner-only `--out` file. It names patients (ids only) and is audited as
//! `cli breach report` (outcome only; the entry names no patient: it reads the trail, not
//! their records).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use ipnet::IpNet;
use phivault_audit::{AccessKind, BreachReport, Selector, breach_report};
use phivault_store::Store;
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::cli::StorageArgs;

/// `phivault breach ...`
#[derive(Debug, Subcommand)]
pub(crate) enum BreachCommand {
    /// List every patient whose data an actor (a user, a client, a token or a network
    /// address) read, searched, exported or changed in a window, with counts by kind and
    /// resource type and the first and last access. Audited as `cli breach report`.
    #[command(after_help = crate::cli::SETTINGS_HELP)]
    Report(BreachReportArgs),
    /// From a JSON breach report and an incident file: one letter per patient (HTML and PDF,
    /// in the patient's language where a template exists) and the summary for the
    /// supervisory authority (GDPR art. 33), into a new owner-only directory. Audited as
    /// `cli breach notify`, in the access log of every patient notified.
    #[command(after_help = crate::cli::SETTINGS_HELP)]
    Notify(crate::breach_notify::BreachNotifyArgs),
}

/// `phivault breach report (--actor|--client|--token-hash|--address) --from T --to T`
#[derive(Debug, Clone, Args)]
#[command(group(clap::ArgGroup::new("who").required(true).args(["actor", "client", "token_hash", "address"])))]
pub(crate) struct BreachReportArgs {
    /// A user's login name.
    #[arg(long, value_name = "USERNAME")]
    pub(crate) actor: Option<String>,
    /// An OAuth2 client id (its own requests, client credentials).
    #[arg(long, value_name = "CLIENT_ID")]
    pub(crate) client: Option<String>,
    /// The SHA-256 (hex) of a token: its principal's requests within the token's lifetime.
    #[arg(long, value_name = "HEX")]
    pub(crate) token_hash: Option<String>,
    /// A network (CIDR, or one address): every request from it.
    #[arg(long, value_name = "CIDR")]
    pub(crate) address: Option<String>,
    /// Start of the window (RFC 3339 instant, inclusive).
    #[arg(long, value_name = "INSTANT")]
    pub(crate) from: String,
    /// End of the window (RFC 3339 instant, exclusive).
    #[arg(long, value_name = "INSTANT")]
    pub(crate) to: String,
    /// `markdown` (default) or `json`.
    #[arg(long, value_name = "FORMAT", default_value = "markdown")]
    pub(crate) format: String,
    /// Write the report to this new file (owner-only) instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub(crate) out: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) storage: StorageArgs,
}

/// One patient in the printed report.
#[derive(Debug, Serialize)]
struct Affected {
    patient: String,
    first: String,
    last: String,
    accesses: u64,
    by_kind: BTreeMap<AccessKind, u64>,
    by_resource_type: BTreeMap<String, u64>,
    /// By sensitivity label (data class): attributed to every patient an entry concerns.
    by_label: BTreeMap<String, u64>,
}

/// The printed report.
#[derive(Debug, Serialize)]
struct Report {
    about: String,
    from: String,
    to: String,
    generated_at: String,
    /// Allowed requests covered.
    requests: u64,
    /// Refused requests (they exposed nothing).
    refused: u64,
    /// Actors whose requests were covered (for `--address`: who came from there).
    actors: Vec<String>,
    patients: Vec<Affected>,
}

impl Report {
    fn of(about: String, r: BreachReport) -> Report {
        Report {
            about,
            from: format_ms(r.from_ms),
            to: format_ms(r.to_ms),
            generated_at: format_ms(
                i64::try_from(OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000)
                    .unwrap_or(i64::MAX),
            ),
            requests: r.requests,
            refused: r.refused,
            actors: r.actors,
            patients: r
                .patients
                .into_iter()
                .map(|p| Affected {
                    patient: p.patient,
                    first: format_ms(p.first_ms),
                    last: format_ms(p.last_ms),
                    accesses: p.accesses,
                    by_kind: p.by_kind,
                    by_resource_type: p.by_resource_type,
                    by_label: p.by_label,
                })
                .collect(),
        }
    }
}

fn instant(text: &str, flag: &str) -> Result<i64> {
    let t = OffsetDateTime::parse(text, &Rfc3339)
        .with_context(|| format!("{flag}: an RFC 3339 instant such as 2026-12-01T00:00:00Z"))?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).context("the instant is out of range")
}

fn format_ms(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

/// Runs the report (see the module docs): prints or writes it, and a summary on stderr.
pub(crate) async fn report(store: &Store, args: &BreachReportArgs) -> Result<()> {
    let (mut from, mut to) = (instant(&args.from, "--from")?, instant(&args.to, "--to")?);
    if from >= to {
        bail!("--from must be before --to");
    }
    if !matches!(args.format.as_str(), "markdown" | "json") {
        bail!("--format is markdown or json");
    }
    let (selector, about) = if let Some(username) = &args.actor {
        let user = store
            .user_by_username(username)
            .await?
            .with_context(|| format!("no user named {username}"))?;
        (Selector::Actor(user.user_id), format!("user {username}"))
    } else if let Some(client) = &args.client {
        if store.client(client).await?.is_none() {
            bail!("no client {client}");
        }
        (Selector::Actor(client.clone()), format!("client {client}"))
    } else if let Some(hash) = &args.token_hash {
        let bytes = hex::decode(hash.trim())
            .ok()
            .filter(|b| b.len() == 32)
            .context("--token-hash: 64 hex digits (the SHA-256 of the token)")?;
        let token = store
            .token(&bytes)
            .await?
            .context("no token with this hash (tokens are kept until they expire)")?;
        // The token could only be used while it was valid.
        let end = token
            .revoked_at
            .unwrap_or(token.expires_at)
            .min(token.expires_at);
        from = from.max(token.issued_at.saturating_mul(1000));
        to = to.min(end.saturating_mul(1000));
        (
            Selector::Actor(token.principal_id),
            format!("the token {}…", &hash.trim()[..12]),
        )
    } else if let Some(net) = &args.address {
        let net = net
            .trim()
            .parse::<IpNet>()
            .or_else(|_| net.trim().parse::<std::net::IpAddr>().map(IpNet::from))
            .context("--address: a CIDR range or an address")?;
        (Selector::Network(net), format!("requests from {net}"))
    } else {
        bail!("name --actor, --client, --token-hash or --address");
    };
    let report = Report::of(
        about,
        breach_report(store, &selector, from, to.max(from)).await?,
    );
    let text = match args.format.as_str() {
        "json" => serde_json::to_string_pretty(&report)? + "\n",
        _ => markdown(&report),
    };
    match &args.out {
        Some(path) => {
            let mut file = crate::backup_cmd::create_private_file(path)
                .with_context(|| format!("creating {}", path.display()))?;
            file.write_all(text.as_bytes())
                .and_then(|()| file.sync_all())
                .with_context(|| format!("writing {}", path.display()))?;
        }
        None => std::io::stdout().lock().write_all(text.as_bytes())?,
    }
    eprintln!(
        "phivault: breach report on {}: {} patients reached by {} allowed requests ({} refused)",
        report.about,
        report.patients.len(),
        report.requests,
        report.refused
    );
    Ok(())
}

fn markdown(r: &Report) -> String {
    let mut out = format!(
        "# Breach report: {}\n\nWindow: {} to {} (generated {}).\n\n\
         {} allowed requests reached **{} patients**; {} requests were refused (they exposed \
         nothing).\n\n",
        r.about,
        r.from,
        r.to,
        r.generated_at,
        r.requests,
        r.patients.len(),
        r.refused
    );
    if !r.actors.is_empty() {
        out.push_str(&format!("Actors: {}.\n\n", r.actors.join(", ")));
    }
    out.push_str("| patient | accesses | kinds | resource types | data classes | first | last |\n");
    out.push_str("|---|---|---|---|---|---|---|\n");
    for p in &r.patients {
        let kinds: Vec<String> = p
            .by_kind
            .iter()
            .map(|(k, n)| {
                format!(
                    "{} {n}",
                    serde_json::to_value(k)
                        .unwrap_or_default()
                        .as_str()
                        .unwrap_or("?")
                )
            })
            .collect();
        let types: Vec<String> = p
            .by_resource_type
            .iter()
            .map(|(t, n)| format!("{t} {n}"))
            .collect();
        let classes: Vec<String> = p.by_label.iter().map(|(l, n)| format!("{l} {n}")).collect();
        out.push_str(&format!(
            "| Patient/{} | {} | {} | {} | {} | {} | {} |\n",
            p.patient,
            p.accesses,
            kinds.join(", "),
            types.join(", "),
            if classes.is_empty() {
                "-".to_owned()
            } else {
                classes.join(", ")
            },
            p.first,
            p.last
        ));
    }
    out.push_str(
        "\nData classes: the sensitivity labels (PSY mental health, ETH substance use, HIV, \
         R restricted) of what the requests decided on or returned, counted per request. A \
         request about several patients counts its labels for each of them, so a patient may \
         be listed with a class that was another's data. Entries written before labels were \
         recorded carry none.\n",
    );
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn instants_are_checked() {
        assert_eq!(instant("1970-01-01T00:00:01Z", "--from").unwrap(), 1000);
        assert!(instant("2026-12-01", "--from").is_err());
        assert_eq!(format_ms(1000), "1970-01-01T00:00:01Z");
    }
}
