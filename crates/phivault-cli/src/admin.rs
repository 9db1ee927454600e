//! The identity and policy administration commands: `user`, `client`, `policy check` and
//! `break-glass list`.
//!
//! They open the same storage as `serve` (so they run while the server runs: SQLite in WAL
//! mode with a busy timeout, or PostgreSQL) and call the accounts service of `phivault-auth`;
//! the behaviour lives there. Stdout carries only the contract lines of docs/CONTRACTS.md
//! (a generated password, a client's id and secret, `ok: N policies`, the break-the-glass
//! table); confirmations go to stderr; a failure is one line on stderr and exit status 1.
//!
//! Every command that opens the store leaves one audit entry (`cli user add`, ...) with its
//! outcome (see `cli_audit`): an account change commits with its entry in one transaction, so
//! a change whose entry cannot be written does not happen; a failure, or a read, is recorded
//! after the operation. `policy check` reads a file only and is not audited.

use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow, bail};
use phivault_auth::{Accounts, Password};
use phivault_crypto::{FileKeyProvider, KeyProvider};
use phivault_fhir::Id;
use phivault_policy::{Label, PolicyEngine, PolicyError, Role};
use phivault_store::{Backend, Store, StoreError, StoreOptions};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::cli::{
    BreakGlassCommand, BreakGlassListArgs, PolicyCommand, RetentionCommand, StorageArgs,
    TopCommand, UserAddArgs, UserCommand, UserGrantArgs,
};
use crate::cli_audit::CliAudit;
use crate::config::{self, LogFormat, Settings};

/// Characters of a generated password: 24 of 62 letters and digits, about 143 bits.
const GENERATED_PASSWORD_CHARS: usize = 24;
const PASSWORD_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
/// Longest password line read from stdin (the policy allows 128 characters).
const MAX_PASSWORD_LINE: usize = 4096;

/// Runs an administration command (`command` is never [`TopCommand::Core`]).
pub(crate) async fn run(config_file: Option<&Path>, command: TopCommand) -> Result<ExitCode> {
    let settings = |storage: &StorageArgs| -> Result<Settings> {
        let file = config::load_file(config_file)?;
        let settings = config::resolve(storage.layer(), file)?;
        init_tracing(settings.log_format);
        Ok(settings)
    };
    match command {
        TopCommand::Core(_)
        | TopCommand::Audit(_)
        | TopCommand::Keys(_)
        | TopCommand::Backup(_)
        | TopCommand::Restore(_) => bail!("not an administration command"),
        TopCommand::User(UserCommand::Add(args)) => {
            let accounts = open(&settings(&args.storage)?).await?;
            let result = audited(&accounts, "user add", None, async |audit| {
                user_add(&accounts, &args, audit).await
            })
            .await;
            close(accounts).await;
            result?;
        }
        TopCommand::User(UserCommand::LinkPatient(args)) => {
            let id = parse_id(&args.id, "patient")?;
            let accounts = open(&settings(&args.storage)?).await?;
            let link = async |audit: &CliAudit| {
                accounts
                    .0
                    .link_patient(&args.username, &id, audit)
                    .await
                    .with_context(|| format!("linking user {} to Patient/{id}", args.username))
            };
            let about = About::patient("Patient", &id);
            let result = audited(&accounts, "user link-patient", Some(about), link).await;
            close(accounts).await;
            result?;
            eprintln!("phivault: user {} linked to Patient/{id}", args.username);
        }
        TopCommand::User(UserCommand::LinkPractitioner(args)) => {
            let id = parse_id(&args.id, "practitioner")?;
            let accounts = open(&settings(&args.storage)?).await?;
            let link = async |audit: &CliAudit| {
                accounts
                    .0
                    .link_practitioner(&args.username, &id, audit)
                    .await
                    .with_context(|| format!("linking user {} to Practitioner/{id}", args.username))
            };
            let about = About {
                resource: ("Practitioner", &id),
                patient: None,
            };
            let result = audited(&accounts, "user link-practitioner", Some(about), link).await;
            close(accounts).await;
            result?;
            eprintln!(
                "phivault: user {} linked to Practitioner/{id}",
                args.username
            );
        }
        TopCommand::User(UserCommand::Grant(args)) => {
            let grant = Grant::parse(&args, OffsetDateTime::now_utc())?;
            let accounts = open(&settings(&args.storage)?).await?;
            let grant_it = async |audit: &CliAudit| {
                accounts
                    .0
                    .grant(
                        &args.username,
                        &grant.patient,
                        &grant.labels,
                        grant.until,
                        audit,
                    )
                    .await
                    .with_context(|| {
                        format!(
                            "granting user {} access to Patient/{}",
                            args.username, grant.patient
                        )
                    })
            };
            let about = About::patient("Patient", &grant.patient);
            let result = audited(&accounts, "user grant", Some(about), grant_it).await;
            close(accounts).await;
            result?;
            eprintln!("phivault: {}", grant.describe(&args.username));
        }
        TopCommand::User(UserCommand::Disable(args)) => {
            let accounts = open(&settings(&args.storage)?).await?;
            let disable = async |audit: &CliAudit| {
                accounts
                    .0
                    .disable_user(&args.username, audit)
                    .await
                    .with_context(|| format!("disabling user {}", args.username))
            };
            let result = audited(&accounts, "user disable", None, disable).await;
            close(accounts).await;
            result?;
            eprintln!(
                "phivault: user {} disabled: their sessions and tokens are refused from the next \
                 request on",
                args.username
            );
        }
        TopCommand::Client(command) => return crate::client_cmd::run(command, &settings).await,
        TopCommand::Policy(PolicyCommand::Check(args)) => {
            return Ok(policy_check(&args.file));
        }
        TopCommand::Erase(args) => {
            let id = parse_id(&args.patient, "patient")?;
            if !args.yes {
                bail!(
                    "erasing Patient/{id} destroys all of the patient's data for good and cannot \
                     be undone; run again with --yes to confirm"
                );
            }
            let opened = open(&settings(&args.storage)?).await?;
            let result = erase(&opened, &id).await;
            close(opened).await;
            let cert = result?;
            let text = serde_json::to_string_pretty(&cert).context("printing the certificate")?;
            println!("{text}");
        }
        TopCommand::ExportPatient(args) => {
            let id = parse_id(&args.patient, "patient")?;
            let opened = open(&settings(&args.storage)?).await?;
            let result =
                crate::export_patient::run(&opened.0, &opened.1, &id, &args.out, &args.recipients)
                    .await;
            close(opened).await;
            result?;
        }
        TopCommand::Deidentify(args) => {
            if let Some(path) = &args.new_key {
                crate::deidentify::new_key(path)?;
                return Ok(ExitCode::SUCCESS);
            }
            let (Some(deid_config), Some(out)) = (&args.deid_config, &args.out) else {
                bail!("deidentify needs --deid-config FILE and --out DIR (or --new-key FILE)");
            };
            let k = args
                .k
                .map(usize::try_from)
                .transpose()
                .context("--k is too large")?;
            let settings = settings(&args.storage)
                .map_err(|e| crate::deidentify::hint_if_deid_config(e, config_file))?;
            let prepared = crate::deidentify::prepare(deid_config, args.key.as_deref(), out, k)?;
            let opened = open(&settings).await?;
            let result =
                crate::deidentify::run(&opened.1, &settings.consent_defaults, prepared).await;
            close(opened).await;
            result?;
        }
        TopCommand::Alerts(crate::alerts_cmd::AlertsCommand::List(args)) => {
            let opened = open(&settings(&args.storage)?).await?;
            let run = async |_: &CliAudit| crate::alerts_cmd::list(&opened.1, &args).await;
            let result = audited(&opened, "alerts list", None, run).await;
            close(opened).await;
            result?;
        }
        TopCommand::Breach(crate::breach_cmd::BreachCommand::Report(args)) => {
            let opened = open(&settings(&args.storage)?).await?;
            let run = async |_: &CliAudit| crate::breach_cmd::report(&opened.1, &args).await;
            let result = audited(&opened, "breach report", None, run).await;
            close(opened).await;
            result?;
        }
        TopCommand::Breach(crate::breach_cmd::BreachCommand::Notify(args)) => {
            let settings = settings(&args.storage)?;
            let prepared = crate::breach_notify::prepare(&args)?;
            let opened = open(&settings).await?;
            let result = crate::breach_notify::run(&opened.1, prepared).await;
            close(opened).await;
            result?;
        }
        TopCommand::Retention(RetentionCommand::Run(args)) => {
            let settings = settings(&args.storage)?;
            let opened = open(&settings).await?;
            let result = retention_run(&opened, &settings, args.dry_run).await;
            close(opened).await;
            print!("{}", result?);
        }
        TopCommand::BreakGlass(BreakGlassCommand::List(args)) => {
            let accounts = open(&settings(&args.storage)?).await?;
            let list = async |_: &CliAudit| {
                accounts
                    .0
                    .list_break_glass()
                    .await
                    .context("listing break-the-glass records")
            };
            let result = audited(&accounts, "break-glass list", None, list).await;
            close(accounts).await;
            print!("{}", break_glass_table(&result?, &args));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `phivault erase`: the erasure (its `erase` entry commits with it), the run's `cli erase`
/// entry with its outcome, the certificate signed with the trail's key; then the sweep of the
/// compartment's search tokens (reported on stderr; a failure there is reported and left to
/// the next sweep: searches skip the erased compartment anyway).
async fn erase(opened: &Opened, patient: &Id) -> Result<phivault_audit::ErasureCertificate> {
    let store = &opened.1;
    let audit = CliAudit::open(store, "erase").await?;
    let erased = store
        .erase_patient(patient, &audit)
        .await
        .with_context(|| format!("erasing Patient/{patient}"));
    let about = About::patient("Patient", patient);
    let record = audit
        .finish(erased, Some(about.resource), about.patient)
        .await?;
    let cert = audit.log().certify_erasure(&record);
    eprintln!(
        "phivault: Patient/{patient} erased: data key {} destroyed, {} resources made \
         unreadable",
        record.key_id, record.resources
    );
    if store.key_residue_pending() && !matches!(store.purge_pending_key_residue().await, Ok(true)) {
        eprintln!(
            "phivault: warning: the destroyed key's bytes are still in the database files \
             (the database stayed busy); a running server retries every few seconds, otherwise \
             the next erasure or key rotation does (see docs/keys.md)"
        );
    }
    match store.sweep_erasures().await {
        Ok(r) => eprintln!(
            "phivault: {} search index rows of erased patients deleted",
            r.index_rows
        ),
        Err(e) => eprintln!(
            "phivault: warning: deleting the search index rows of erased patients failed \
             ({e}); they are never matched; the next erasure or server start retries"
        ),
    }
    Ok(cert)
}

/// `phivault retention run [--dry-run]`: the configured rules at the current time; each
/// disposal batch commits with its `dispose` entries, the run's `cli retention run` entry
/// records the outcome (a dry run is audited too). Returns the report, one line per rule:
/// `<type> <count> disposed` (or `would be disposed`).
async fn retention_run(opened: &Opened, settings: &Settings, dry_run: bool) -> Result<String> {
    let store = &opened.1;
    if settings.retention.is_empty() {
        eprintln!("phivault: no retention period is configured ([retention]); nothing expires");
    }
    let audit = CliAudit::open(store, "retention run").await?;
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let run = store
        .run_retention(&settings.retention, now, dry_run, &audit)
        .await
        .context("applying the retention periods");
    let counts = audit.finish(run, None, None).await?;
    let verb = if dry_run {
        "would be disposed of"
    } else {
        "disposed of"
    };
    Ok(counts
        .iter()
        .map(|c| format!("{} {} {verb}\n", c.rtype, c.resources))
        .collect())
}

/// What an administration command was about, for its audit entry.
pub(crate) struct About<'a> {
    /// The resource (type, id).
    resource: (&'a str, &'a Id),
    /// The patient concerned.
    patient: Option<&'a Id>,
}

impl<'a> About<'a> {
    /// A resource of `patient`'s own (the Patient itself).
    fn patient(rtype: &'a str, patient: &'a Id) -> About<'a> {
        About {
            resource: (rtype, patient),
            patient: Some(patient),
        }
    }
}

/// Runs `operation` as `phivault <command>` with the command's audit context. The trail is
/// opened first (when it cannot be, the command is not run). An account change the operation
/// makes through the context commits with the command's entry; otherwise (a failure, a read)
/// the entry is appended afterwards with the outcome, and when it cannot be, the command
/// fails, saying so.
pub(crate) async fn audited<T>(
    opened: &Opened,
    command: &str,
    about: Option<About<'_>>,
    operation: impl AsyncFnOnce(&CliAudit) -> Result<T>,
) -> Result<T> {
    let audit = CliAudit::open(&opened.1, command).await?;
    let result = operation(&audit).await;
    let (resource, patient) = match about {
        Some(a) => (Some(a.resource), a.patient),
        None => (None, None),
    };
    audit.finish(result, resource, patient).await
}

/// Warnings and errors of the libraries to stderr (`RUST_LOG` overrides).
fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(filter);
    // Fails only when a subscriber is already installed; the first one stays.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// The accounts service and the store under it (closed with [`close`]).
pub(crate) struct Opened(pub(crate) Accounts, pub(crate) Store);

/// Opens the storage as `serve` does: the data directory and master key (created when
/// missing, so the first admin can be made before the first start), then the database.
pub(crate) async fn open(settings: &Settings) -> Result<Opened> {
    // `phivault bench http` adds its client to the server it starts through `client add`.
    crate::bench_gate::refuse_unless_bench_child()?;
    let dir = &settings.data_dir;
    crate::commands::create_private_dir(dir)
        .with_context(|| format!("creating the data directory {}", dir.display()))?;
    let keys = FileKeyProvider::new(&settings.master_key_file);
    let created = keys
        .create_if_missing()
        .context("creating the master key")?;
    keys.master_key()
        .with_context(|| format!("reading the master key {}", keys.path().display()))?;
    // Never name the URL: it may hold a password.
    let backend = Backend::from_url(&settings.database_url)
        .map(|b| b.name())
        .unwrap_or("configured");
    let mut opts = StoreOptions::new(settings.database_url.clone());
    opts.max_connections = 2;
    let store = Store::open(&opts, &keys).await.map_err(|e| {
        let key_problem = matches!(e, StoreError::Crypto(_) | StoreError::Integrity { .. });
        let error = anyhow::Error::new(e).context(format!("opening the {backend} database"));
        if let Some(why) = crate::keys_cmd::interrupted_master_rotation(keys.path()) {
            error.context(why)
        } else if key_problem && created {
            error.context(format!(
                "the master key {} was created just now, but the database was made with \
                 another one (restore that key file)",
                keys.path().display()
            ))
        } else {
            error
        }
    })?;
    Ok(Opened(Accounts::new(store.clone()), store))
}

pub(crate) async fn close(opened: Opened) {
    let Opened(accounts, store) = opened;
    drop(accounts);
    store.close().await;
}

/// `phivault user add`: the user commits with the command's entry (`audit`).
async fn user_add(opened: &Opened, args: &UserAddArgs, audit: &CliAudit) -> Result<()> {
    let role = parse_user_role(&args.role)?;
    let (password, generated) = if args.password_stdin {
        (read_password_line(std::io::stdin().lock())?, false)
    } else {
        (generate_password()?, true)
    };
    let shown = generated.then(|| password.expose().to_owned());
    opened
        .0
        .create_user(&args.username, password, role, audit)
        .await
        .with_context(|| format!("creating user {}", args.username))?;
    if let Some(shown) = shown {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "phivault: password for {} (shown once): {shown}",
            args.username
        )?;
        out.flush()?;
    }
    eprintln!("phivault: created user {} (role {role})", args.username);
    Ok(())
}

/// A role a user may hold (not `app`, which is for OAuth2 clients).
fn parse_user_role(text: &str) -> Result<Role> {
    let role = Role::parse(text).map_err(|_| {
        anyhow!("unknown role `{text}`: use admin, clinician, patient, researcher or auditor")
    })?;
    if role == Role::App {
        bail!("the app role is for OAuth2 clients (`phivault client add`), not users");
    }
    Ok(role)
}

/// The first line of `input`, without its line ending.
fn read_password_line(mut input: impl BufRead) -> Result<Password> {
    let mut line = String::new();
    let mut limited = (&mut input).take(MAX_PASSWORD_LINE as u64);
    limited
        .read_line(&mut line)
        .context("reading the password from standard input")?;
    if line.len() >= MAX_PASSWORD_LINE && !line.ends_with('\n') {
        bail!("the password line on standard input is too long");
    }
    let trimmed_len = line.trim_end_matches(['\n', '\r']).len();
    line.truncate(trimmed_len);
    if line.is_empty() {
        bail!("no password on standard input (--password-stdin reads its first line)");
    }
    Ok(Password::new(line))
}

/// A random password of [`GENERATED_PASSWORD_CHARS`] letters and digits (rejection sampling,
/// so every character is uniform).
fn generate_password() -> Result<Password> {
    let mut out = String::with_capacity(GENERATED_PASSWORD_CHARS);
    let limit = 256 - (256 % PASSWORD_ALPHABET.len());
    while out.len() < GENERATED_PASSWORD_CHARS {
        let mut buf = [0u8; 64];
        phivault_crypto::random_bytes(&mut buf).context("generating a password")?;
        for b in buf {
            if usize::from(b) < limit && out.len() < GENERATED_PASSWORD_CHARS {
                out.push(char::from(
                    PASSWORD_ALPHABET[usize::from(b) % PASSWORD_ALPHABET.len()],
                ));
            }
        }
    }
    Ok(Password::new(out))
}

pub(crate) fn parse_id(text: &str, what: &str) -> Result<Id> {
    Id::parse(text)
        .map_err(|_| anyhow!("invalid {what} id `{text}`: 1 to 64 letters, digits, `-` or `.`"))
}

/// A parsed `phivault user grant`.
#[derive(Debug)]
struct Grant {
    patient: Id,
    labels: Vec<Label>,
    until: Option<i64>,
}

impl Grant {
    fn parse(args: &UserGrantArgs, now: OffsetDateTime) -> Result<Grant> {
        let patient = parse_id(&args.patient, "patient")?;
        let mut labels = Vec::new();
        for code in args
            .labels
            .iter()
            .map(|l| l.trim())
            .filter(|l| !l.is_empty())
        {
            let label = Label::parse(code).map_err(|_| {
                anyhow!("unknown sensitivity label `{code}`: use R, PSY, ETH or HIV")
            })?;
            if !labels.contains(&label) {
                labels.push(label);
            }
        }
        labels.sort();
        let until = match &args.until {
            None => None,
            Some(text) => {
                let t = OffsetDateTime::parse(text, &Rfc3339).map_err(|_| {
                    anyhow!("--until `{text}` is not an RFC 3339 time (e.g. 2027-01-31T18:00:00Z)")
                })?;
                if t <= now {
                    bail!("--until {text} is in the past");
                }
                Some(t.unix_timestamp())
            }
        };
        Ok(Grant {
            patient,
            labels,
            until,
        })
    }

    fn describe(&self, username: &str) -> String {
        let mut line = format!("granted user {username} access to Patient/{}", self.patient);
        if !self.labels.is_empty() {
            let labels: Vec<&str> = self.labels.iter().map(Label::as_str).collect();
            line.push_str(&format!(" with labels {}", labels.join(",")));
        }
        match self.until.and_then(|u| format_time(u).ok()) {
            Some(until) => line.push_str(&format!(" until {until}")),
            None => line.push_str(" (no end)"),
        }
        line
    }
}

/// Checks `client add`'s arguments before touching the database.
/// `phivault policy check FILE`: `ok: N policies` on stdout, else each problem on stderr and
/// exit status 1.
fn policy_check(file: &Path) -> ExitCode {
    match PolicyEngine::check_file(file) {
        Ok(n) => {
            println!("ok: {n} policies");
            ExitCode::SUCCESS
        }
        Err(PolicyError::Invalid(problems)) => {
            for p in &problems {
                eprintln!("{}: {}", file.display(), one_line(&p.to_string()));
            }
            eprintln!(
                "phivault: error: {} problem(s) in {}",
                problems.len(),
                file.display()
            );
            ExitCode::from(1)
        }
        // The I/O error names the file already.
        Err(e @ PolicyError::Io { .. }) => {
            eprintln!("phivault: error: {}", one_line(&e.to_string()));
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!(
                "phivault: error: {}: {}",
                file.display(),
                one_line(&e.to_string())
            );
            ExitCode::from(1)
        }
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn format_time(unix: i64) -> Result<String> {
    let t = OffsetDateTime::from_unix_timestamp(unix).context("a time out of range")?;
    Ok(t.format(&Rfc3339)?)
}

/// Printable on one terminal line: control characters shown as `\u{..}`.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// The `break-glass list` table: a header, then one row per record, columns padded.
fn break_glass_table(
    records: &[phivault_auth::BreakGlassRecord],
    args: &BreakGlassListArgs,
) -> String {
    let mut rows: Vec<Vec<String>> = vec![
        ["time", "user", "patient", "expires"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect(),
    ];
    if args.show_reasons {
        rows[0].push("reason".to_owned());
    }
    for r in records {
        let time = |t: i64| format_time(t).unwrap_or_else(|_| t.to_string());
        let mut row = vec![
            time(r.started_at),
            printable(&r.user_id),
            r.patient.to_string(),
            time(r.expires_at),
        ];
        if args.show_reasons {
            row.push(printable(&r.reason));
        }
        rows.push(row);
    }
    let columns = rows[0].len();
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == columns {
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.push_str(&" ".repeat(widths[c] - cell.chars().count() + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn generated_passwords_are_long_and_distinct() {
        let a = generate_password().unwrap();
        let b = generate_password().unwrap();
        assert_eq!(a.expose().len(), GENERATED_PASSWORD_CHARS);
        assert!(a.expose().bytes().all(|c| PASSWORD_ALPHABET.contains(&c)));
        assert_ne!(a.expose(), b.expose());
    }

    #[test]
    fn password_line_from_stdin() {
        let p = read_password_line(&b"correct horse battery\r\nsecond line\n"[..]).unwrap();
        assert_eq!(p.expose(), "correct horse battery");
        let p = read_password_line(&b"no newline at all"[..]).unwrap();
        assert_eq!(p.expose(), "no newline at all");
        assert!(read_password_line(&b"\n"[..]).is_err());
        assert!(read_password_line(&b""[..]).is_err());
        let long = vec![b'x'; MAX_PASSWORD_LINE + 10];
        assert!(read_password_line(&long[..]).is_err());
    }

    #[test]
    fn user_roles() {
        assert_eq!(parse_user_role("clinician").unwrap(), Role::Clinician);
        assert!(parse_user_role("app").is_err());
        assert!(parse_user_role("Admin").is_err());
    }

    fn grant_args(labels: &[&str], until: Option<&str>) -> UserGrantArgs {
        UserGrantArgs {
            username: "ann".to_owned(),
            patient: "p1".to_owned(),
            labels: labels.iter().map(|s| (*s).to_owned()).collect(),
            until: until.map(str::to_owned),
            storage: StorageArgs::default(),
        }
    }

    #[test]
    fn grants() {
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let g = Grant::parse(&grant_args(&["HIV", "MH", "PSY"], None), now).unwrap();
        assert_eq!(g.labels, [Label::MentalHealth, Label::Hiv]);
        assert_eq!(g.until, None);
        let g = Grant::parse(&grant_args(&[], Some("2030-01-01T00:00:00Z")), now).unwrap();
        assert_eq!(g.until, Some(1_893_456_000));
        assert_eq!(
            g.describe("ann"),
            "granted user ann access to Patient/p1 until 2030-01-01T00:00:00Z"
        );
        assert!(Grant::parse(&grant_args(&["XYZ"], None), now).is_err());
        assert!(Grant::parse(&grant_args(&[], Some("2020-01-01T00:00:00Z")), now).is_err());
        assert!(Grant::parse(&grant_args(&[], Some("tomorrow")), now).is_err());
        let mut bad = grant_args(&[], None);
        bad.patient = "a b".to_owned();
        assert!(Grant::parse(&bad, now).is_err());
    }

    #[test]
    fn break_glass_table_hides_reasons_unless_asked() {
        let records = vec![phivault_auth::BreakGlassRecord {
            id: "bg1".to_owned(),
            user_id: "u-1".to_owned(),
            patient: Id::parse("p1").unwrap(),
            reason: "unconscious\tin ED".to_owned(),
            started_at: 1_800_000_000,
            expires_at: 1_800_003_600,
        }];
        let mut args = BreakGlassListArgs {
            show_reasons: false,
            storage: StorageArgs::default(),
        };
        let table = break_glass_table(&records, &args);
        assert_eq!(
            table,
            "time                  user  patient  expires\n\
             2027-01-15T08:00:00Z  u-1   p1       2027-01-15T09:00:00Z\n"
        );
        assert!(!table.contains("unconscious"));
        args.show_reasons = true;
        let table = break_glass_table(&records, &args);
        assert!(table.lines().next().unwrap().ends_with("reason"));
        assert!(table.contains("unconscious\\u{9}in ED"));
    }

    #[test]
    fn policy_check_counts_and_reports() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.cedar");
        std::fs::write(
            &good,
            "@id(\"admin.read\")\npermit (principal is PhiVault::User, \
             action == PhiVault::Action::\"read\", resource is PhiVault::Resource)\n\
             when { principal.role == \"admin\" };\n",
        )
        .unwrap();
        assert_eq!(policy_check(&good), ExitCode::SUCCESS);
        let bad = dir.path().join("bad.cedar");
        std::fs::write(
            &bad,
            "permit (principal, action, resource) when { nope };\n",
        )
        .unwrap();
        assert_eq!(policy_check(&bad), ExitCode::from(1));
        assert_eq!(
            policy_check(&dir.path().join("missing.cedar")),
            ExitCode::from(1)
        );
    }
}
