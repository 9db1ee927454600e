//! `phivault alerts list`: the alerts the detection rules raised (read from the audit trail,
//! where each alert is an entry), newest first, as text or JSON. Audited as `cli alerts list`.

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use phivault_store::Store;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::cli::StorageArgs;

/// `phivault alerts ...`
#[derive(Debug, Subcommand)]
pub(crate) enum AlertsCommand {
    /// The alerts raised since an instant (default: the last seven days), newest first:
    /// rule, subject (an actor id or an address), counts, window, the evidence entries'
    /// seqs, and whether the webhook took each one.
    #[command(after_help = crate::cli::SETTINGS_HELP)]
    List(AlertsListArgs),
}

/// `phivault alerts list [--since T] [--limit N] [--format text|json]`
#[derive(Debug, Args)]
pub(crate) struct AlertsListArgs {
    /// Only alerts raised at or after this RFC 3339 instant.
    #[arg(long, value_name = "INSTANT")]
    pub(crate) since: Option<String>,
    /// At most this many (1 to 10000).
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub(crate) limit: u32,
    /// `text` (default) or `json`.
    #[arg(long, value_name = "FORMAT", default_value = "text")]
    pub(crate) format: String,
    #[command(flatten)]
    pub(crate) storage: StorageArgs,
}

const WEEK_MS: i64 = 7 * 24 * 3_600_000;

/// Prints the alerts.
pub(crate) async fn list(store: &Store, args: &AlertsListArgs) -> Result<()> {
    if !matches!(args.format.as_str(), "text" | "json") {
        bail!("--format is text or json");
    }
    if !(1..=10_000).contains(&args.limit) {
        bail!("--limit is 1 to 10000");
    }
    let now = OffsetDateTime::now_utc();
    let since = match &args.since {
        None => now_ms(now) - WEEK_MS,
        Some(text) => now_ms(
            OffsetDateTime::parse(text, &Rfc3339)
                .context("--since: an RFC 3339 instant such as 2026-12-01T00:00:00Z")?,
        ),
    };
    let alerts = phivault_alerts::list_alerts(store, since, args.limit).await?;
    if args.format == "json" {
        println!("{}", serde_json::to_string_pretty(&alerts)?);
        return Ok(());
    }
    if alerts.is_empty() {
        println!("no alerts");
        return Ok(());
    }
    for a in &alerts {
        println!(
            "{}  {}  {} ({})  {} {}: count {} over threshold {}, entries {}..{}{}",
            a.time,
            a.id,
            a.alert.rule,
            a.alert.kind,
            a.alert.subject_kind,
            a.alert.subject,
            a.alert.count,
            a.alert.threshold,
            a.alert.first_seq,
            a.alert.last_seq,
            if a.delivered { ", delivered" } else { "" },
        );
    }
    Ok(())
}

fn now_ms(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}
