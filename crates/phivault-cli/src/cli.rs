//! The command line. Every setting is an `Option` with its environment variable, so clap
//! applies "flag over environment" and leaves `None` for the file and the defaults.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::builder::BoolishValueParser;
use clap::{Args, Parser, Subcommand};

use crate::config::{Layer, LogFormat};

/// The configuration keys, for `--help`.
pub(crate) const SETTINGS_HELP: &str = "\
Settings (precedence: flag > environment > configuration file > default):
  toml key             environment variable          flag                    default
  data_dir             PHIVAULT_DATA_DIR             --data-dir DIR          ./phivault-data
  database_url         PHIVAULT_DATABASE_URL         --database-url URL      sqlite://<data_dir>/phivault.db
  listen               PHIVAULT_LISTEN               --listen ADDR           127.0.0.1:8443
  master_key_file      PHIVAULT_MASTER_KEY_FILE      --master-key-file F     <data_dir>/master.key
  insecure_http        PHIVAULT_INSECURE_HTTP        --insecure-http         false (loopback only)
  max_body_bytes       PHIVAULT_MAX_BODY_BYTES       --max-body-bytes N      10485760
  max_bundle_entries   PHIVAULT_MAX_BUNDLE_ENTRIES   --max-bundle-entries N  1000
  public_base_url      PHIVAULT_PUBLIC_BASE_URL      --public-base-url URL   https://<listen>/fhir
  policy_file          PHIVAULT_POLICY_FILE          --policy-file F         none (default policies only)
  log_format           PHIVAULT_LOG_FORMAT           --log-format text|json  text

Configuration file: --config FILE or PHIVAULT_CONFIG, else ./phivault.toml when it exists.
It holds the toml keys above (unknown keys are an error), e.g.:
  data_dir = \"/var/lib/phivault\"
  listen = \"0.0.0.0:8443\"
  database_url = \"postgres://phivault@db.internal/phivault\"
Relative paths are relative to the working directory. Log verbosity: RUST_LOG (default info).";

/// phivault: a FHIR R4 server that keeps protected health information encrypted and
/// access-controlled.
#[derive(Debug, Parser)]
#[command(name = "phivault", version, after_help = SETTINGS_HELP)]
pub(crate) struct Invocation {
    /// Configuration file (TOML; keys listed below). Default: ./phivault.toml when it exists.
    #[arg(
        long,
        global = true,
        env = "PHIVAULT_CONFIG",
        value_name = "FILE",
        hide_env_values = true
    )]
    pub(crate) config: Option<PathBuf>,

    #[command(subcommand)]
    pub(crate) command: TopCommand,
}

/// Every command: the server's own ([`Command`], run by `commands`) and the identity and
/// policy administration (run by `admin`).
#[derive(Debug, Subcommand)]
pub(crate) enum TopCommand {
    #[command(flatten)]
    Core(Command),
    /// Manage user accounts: create, link to a Patient or Practitioner, grant access to a
    /// patient.
    #[command(subcommand)]
    User(UserCommand),
    /// Manage OAuth2 clients (SMART backend apps).
    #[command(subcommand)]
    Client(ClientCommand),
    /// Check authorization policies.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Review break-the-glass (emergency) accesses.
    #[command(subcommand, name = "break-glass")]
    BreakGlass(BreakGlassCommand),
    /// Verify the tamper-evident audit trail and prove entries in it.
    #[command(subcommand)]
    Audit(crate::audit_cmd::AuditCommand),
    /// Back up the whole store while the server runs: one consistent snapshot, compressed and
    /// encrypted with age to the given recipients, with a manifest; or verify an archive
    /// (`backup verify`), or create an age identity for backups (`backup keygen`).
    #[command(after_help = SETTINGS_HELP)]
    Backup(crate::backup_cmd::BackupCommand),
    /// Restore a backup into an empty database (or replace one with --force): checks the
    /// archive, the master key and the audit trail before anything changes, then replays the
    /// erasure and retention ledgers of what it replaces.
    #[command(after_help = SETTINGS_HELP)]
    Restore(crate::backup_cmd::RestoreArgs),
    /// Erase a patient for good by crypto-shredding: destroys the patient's data key, so every
    /// version of every resource in their compartment becomes unreadable at once; records it
    /// in the erasure ledger and the audit trail, prints the signed erasure certificate (JSON)
    /// on stdout, then deletes the compartment's search tokens. Requires --yes.
    #[command(after_help = SETTINGS_HELP)]
    Erase(EraseArgs),
    /// Export a patient's record as a portable package (right of access and portability): one
    /// NDJSON file (application/fhir+ndjson) with a manifest line, every current resource of
    /// the patient's compartment, their Consents and their access log as FHIR AuditEvents;
    /// with --recipient, encrypted to those age public keys. `phivault import` re-imports it
    /// (resources keep their ids; the manifest and AuditEvents are skipped).
    #[command(name = "export-patient", after_help = SETTINGS_HELP)]
    ExportPatient(ExportPatientArgs),
    /// A de-identified research export: the records of the patients whose consent permits
    /// research (purpose of use HRESCH; where no consent applies, the configured default,
    /// which denies research unless set) through a de-identification configuration, as one
    /// NDJSON file per resource type and report.json (counts, rules applied, the
    /// configuration's hash, k-anonymity and l-diversity). Labelled resources never leave.
    /// Audited as `cli deidentify`, in the access log of every patient released. With
    /// --new-key FILE, creates a project key and exits.
    #[command(after_help = SETTINGS_HELP)]
    Deidentify(DeidentifyArgs),
    /// Apply the retention periods of the configuration (`[retention]`).
    #[command(subcommand)]
    Retention(RetentionCommand),
    /// After a breach: whose data an actor reached, from the audit trail.
    #[command(subcommand)]
    Breach(crate::breach_cmd::BreachCommand),
    /// The alerts of the breach-detection rules, from the audit trail.
    #[command(subcommand)]
    Alerts(crate::alerts_cmd::AlertsCommand),
    /// Rotate the key-encryption key or the master key while servers run; show the keys.
    #[command(subcommand)]
    Keys(crate::keys_cmd::KeysCommand),
}

/// `phivault retention ...`
#[derive(Debug, Subcommand)]
pub(crate) enum RetentionCommand {
    /// Dispose of every resource older than its type's retention period (all its versions,
    /// search tokens and pointer deleted, recorded in the retention ledger and the audit
    /// trail); prints per type how many were (with --dry-run: would be) disposed of.
    #[command(after_help = SETTINGS_HELP)]
    Run(RetentionRunArgs),
}

/// `phivault retention run [--dry-run]`
#[derive(Debug, Clone, Args)]
pub(crate) struct RetentionRunArgs {
    /// Only count the expired resources; change nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
    #[command(flatten)]
    pub(crate) storage: StorageArgs,
}

/// `phivault export-patient PATIENT_ID --out FILE [--recipient AGE_PUBLIC_KEY ...]`
#[derive(Debug, Clone, Args)]
pub(crate) struct ExportPatientArgs {
    /// The id of the Patient whose record is exported.
    #[arg(value_name = "PATIENT_ID")]
    pub(crate) patient: String,
    /// The package file to write (created with owner-only permissions; an existing file is
    /// replaced).
    #[arg(long, value_name = "FILE")]
    pub(crate) out: PathBuf,
    /// Encrypt the package to this age X25519 public key (`age1...`); repeat for several
    /// recipients. Without it the package is plaintext PHI.
    #[arg(long = "recipient", value_name = "AGE_PUBLIC_KEY")]
    pub(crate) recipients: Vec<String>,
    #[command(flatten)]
    pub(crate) storage: StorageArgs,
}

/// `phivault deidentify --deid-config FILE --out DIR [--k N] [--key FILE]`, or
/// `phivault deidentify --new-key FILE`. (`--config` stays the server's configuration, which
/// gives the storage and the consent defaults.)
#[derive(Debug, Clone, Args)]
pub(crate) struct DeidentifyArgs {
    /// The de-identification configuration (TOML: a preset to extend, rules, risk settings,
    /// key_file; see docs/deidentification.md).
    #[arg(long, value_name = "FILE", required_unless_present = "new_key")]
    pub(crate) deid_config: Option<PathBuf>,
    /// The directory to write (created owner-only; an existing non-empty one is refused).
    #[arg(long, value_name = "DIR", required_unless_present = "new_key")]
    pub(crate) out: Option<PathBuf>,
    /// Withhold every record of the patients whose quasi-identifier class is smaller than N
    /// (the report says how many).
    #[arg(long = "k", value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub(crate) k: Option<u64>,
    /// The project key file (64 hex digits); default: key_file of the configuration.
    #[arg(long, value_name = "FILE")]
    pub(crate) key: Option<PathBuf>,
    /// Write a new random project key to FILE (created owner-only, never overwritten) and
    /// exit.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["deid_config", "out", "k", "key"])]
    pub(crate) new_key: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) storage: StorageArgs,
}

/// `phivault erase PATIENT_ID --yes`
#[derive(Debug, Clone, Args)]
pub(crate) struct EraseArgs {
    /// The id of the Patient to erase.
    #[arg(value_name = "PATIENT_ID")]
    pub(crate) patient: String,
    /// Confirm: the erasure cannot be undone (without it the command refuses).
    #[arg(long)]
    pub(crate) yes: bool,
    #[command(flatten)]
    pub(crate) storage: StorageArgs,
}

/// A server command with the configuration file, as `commands::run` takes it. It is also a
/// parser of the server commands alone (the tests of `config` use it); the binary parses
/// [`Invocation`].
#[derive(Debug, Parser)]
#[command(name = "phivault", version, after_help = SETTINGS_HELP)]
pub(crate) struct Cli {
    /// Configuration file (TOML; keys listed below). Default: ./phivault.toml when it exists.
    #[arg(
        long,
        global = true,
        env = "PHIVAULT_CONFIG",
        value_name = "FILE",
        hide_env_values = true
    )]
    pub(crate) config: Option<PathBuf>,

    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Serve the FHIR API over HTTPS (creates the data directory, master key and certificates
    /// on first start).
    #[command(after_help = SETTINGS_HELP)]
    Serve(ServeArgs),
    /// Create the data directory, master key, database and certificates, then exit.
    #[command(after_help = SETTINGS_HELP)]
    Init(StorageArgs),
    /// Import FHIR resources from *.json (Bundle of type transaction, batch or collection, or
    /// one resource) and *.ndjson (one resource per line) files, or directories of them.
    #[command(after_help = SETTINGS_HELP)]
    Import(ImportArgs),
    /// Measure on synthetic data only: the store in-process (`bench`, `bench store`: ingest,
    /// read by id, erasure, audit verify, backup) or a real server over HTTPS (`bench http`).
    Bench(BenchCommand),
    /// Write synthetic raw Synthea R4 output (patient, hospital and practitioner Bundles) to a
    /// directory, for trying `phivault import` without real data.
    Synthea(SyntheaArgs),
}

impl Command {
    /// The settings given on the command line or in the environment.
    pub(crate) fn layer(&self) -> Layer {
        match self {
            Command::Serve(a) => a.layer(),
            Command::Init(a) => a.layer(),
            Command::Import(a) => a.storage.layer(),
            Command::Bench(_) | Command::Synthea(_) => Layer::default(),
        }
    }
}

/// `phivault user ...`
#[derive(Debug, Subcommand)]
pub(crate) enum UserCommand {
    /// Create a user. Without --password-stdin a strong random password is generated and
    /// printed once.
    #[command(after_help = SETTINGS_HELP)]
    Add(UserAddArgs),
    /// Link a user (role patient) to their Patient record: their own compartment.
    #[command(name = "link-patient", after_help = SETTINGS_HELP)]
    LinkPatient(UserLinkArgs),
    /// Link a user (role clinician) to their Practitioner record (CareTeam participants name
    /// Practitioners).
    #[command(name = "link-practitioner", after_help = SETTINGS_HELP)]
    LinkPractitioner(UserLinkArgs),
    /// Grant a user access to a patient (a care relationship), optionally to resources
    /// carrying sensitivity labels, optionally until a time.
    #[command(after_help = SETTINGS_HELP)]
    Grant(UserGrantArgs),
    /// Disable a user (containment): their logins and every session and token they hold stop
    /// working at once; the account stays for the audit trail.
    #[command(after_help = SETTINGS_HELP)]
    Disable(UserDisableArgs),
}

#[derive(Debug, Clone, Args)]
pub(crate) struct UserDisableArgs {
    /// The user's login name.
    #[arg(value_name = "USERNAME")]
    pub(crate) username: String,
    #[command(flatten)]
    pub(crate) storage: StorageArgs,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct UserAddArgs {
    /// The login name.
    #[arg(long, value_name = "USERNAME")]
    pub(crate) username: String,
    /// admin, clinician, patient, researcher or auditor.
    #[arg(long, value_name = "ROLE")]
    pub(crate) role: String,
    /// Read the password from the first line of standard input instead of generating one.
    #[arg(long)]
    pub(crate) password_stdin: bool,
    #[command(flatten)]
    pub(crate) storage: StorageArgs,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct UserLinkArgs {
    /// The user's login name.
    #[arg(value_name = "USERNAME")]
    pub(crate) username: String,
    /// The FHIR id of the record (Patient or Practitioner).
    #[arg(value_name = "ID")]
    pub(crate) id: String,
    #[command(flatten)]
    pub(crate) storage: StorageArgs,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct UserGrantArgs {
    /// The user's login name.
    #[arg(value_name = "USERNAME")]
    pub(crate) username: String,
    /// The FHIR id of the Patient.
    #[arg(value_name = "PATIENT_ID")]
    pub(crate) patient: String,
    /// Sensitivity labels also granted, comma-separated: R (restricted), PSY (mental health),
    /// ETH (substance use), HIV.
    #[arg(long, value_name = "LABELS", value_delimiter = ',')]
    pub(crate) labels: Vec<String>,
    /// When the grant ends (RFC 3339, e.g. 2027-01-31T18:00:00Z). Default: no end.
    #[arg(long, value_name = "RFC3339")]
    pub(crate) until: Option<String>,
    #[command(flatten)]
    pub(crate) storage: StorageArgs,
}

/// `phivault client ...`
#[derive(Debug, Subcommand)]
pub(crate) enum ClientCommand {
    /// Register an OAuth2 client and print its id (and, for a confidential-secret client,
    /// its secret, shown once).
    #[command(after_help = SETTINGS_HELP)]
    Add(ClientAddArgs),
    /// List the registered OAuth2 clients (disabled ones included).
    #[command(after_help = SETTINGS_HELP)]
    List(ClientListArgs),
    /// Disable an OAuth2 client (containment): its credentials and every token issued to it
    /// stop working at once; the registration stays for the audit trail.
    #[command(after_help = SETTINGS_HELP)]
    Disable(ClientDisableArgs),
    /// Give a confidential-secret client a new secret (printed once); the old one stops
    /// working at once.
    #[command(after_help = SETTINGS_HELP)]
    RotateSecret(ClientDisableArgs),
}

#[derive(Debug, Clone, Args)]
pub(crate) struct ClientDisableArgs {
    /// The client id (`pvcl_...`).
    #[arg(value_name = "CLIENT_ID")]
    pub(crate) client_id: String,
    #[command(flatten)]
    pub(crate) storage: StorageArgs,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct ClientListArgs {
    /// `text` (a table) or `json`.
    #[arg(long, value_name = "FORMAT", default_value = "text")]
    pub(crate) format: String,
    #[command(flatten)]
    pub(crate) storage: StorageArgs,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct ClientAddArgs {
    /// A name for people (shown on the consent screen and in the audit trail).
    #[arg(long, value_name = "NAME")]
    pub(crate) name: String,
    /// How the client authenticates: `public` (a browser or phone app: PKCE, no secret),
    /// `confidential-jwt` (private_key_jwt with its own keys: SMART Backend Services) or
    /// `confidential-secret` (a shared secret).
    #[arg(
        long = "type",
        value_name = "TYPE",
        default_value = "confidential-secret"
    )]
    pub(crate) client_type: String,
    /// The SMART scopes the client may get, space-separated (e.g. "system/*.cruds",
    /// "patient/Observation.rs", "openid fhirUser launch/patient offline_access").
    #[arg(long, value_name = "SCOPES")]
    pub(crate) scope: String,
    /// A redirect URI of the authorization code flow, matched exactly (https, or http to
    /// localhost). Repeat for several.
    #[arg(long = "redirect-uri", value_name = "URI")]
    pub(crate) redirect_uris: Vec<String>,
    /// The client's public keys (a JWKS or one JWK, JSON) for confidential-jwt: RS384 (RSA,
    /// 2048 bits or more) or ES384 (P-384).
    #[arg(long, value_name = "FILE", conflicts_with = "jwks_url")]
    pub(crate) jwks: Option<std::path::PathBuf>,
    /// Where to fetch the client's JWKS from, now (https); the keys are stored with the
    /// registration and the URL recorded. The server never fetches keys itself.
    #[arg(long, value_name = "URL")]
    pub(crate) jwks_url: Option<String>,
    /// The patient whose compartment the client's patient/ scopes reach (client credentials).
    #[arg(long, value_name = "ID")]
    pub(crate) launch_patient: Option<String>,
    #[command(flatten)]
    pub(crate) storage: StorageArgs,
}

/// `phivault policy ...`
#[derive(Debug, Subcommand)]
pub(crate) enum PolicyCommand {
    /// Check a file of Cedar policies against the schema, together with the default policies.
    /// Prints `ok: N policies`, or each problem (exit status 1).
    Check(PolicyCheckArgs),
}

#[derive(Debug, Clone, Args)]
pub(crate) struct PolicyCheckArgs {
    /// The policy file (Cedar syntax).
    #[arg(value_name = "FILE")]
    pub(crate) file: PathBuf,
}

/// `phivault break-glass ...`
#[derive(Debug, Subcommand)]
pub(crate) enum BreakGlassCommand {
    /// List break-the-glass accesses, newest first: time, user, patient, expiry.
    #[command(after_help = SETTINGS_HELP)]
    List(BreakGlassListArgs),
}

#[derive(Debug, Clone, Args)]
pub(crate) struct BreakGlassListArgs {
    /// Also show the stated reasons (they may describe the patient: for reviewers only).
    #[arg(long)]
    pub(crate) show_reasons: bool,
    #[command(flatten)]
    pub(crate) storage: StorageArgs,
}

/// The data directory alone.
#[derive(Debug, Clone, Default, Args)]
pub(crate) struct DataDirArgs {
    /// Directory of the database, master key and certificates
    /// [toml: data_dir] [default: ./phivault-data]
    #[arg(
        long,
        env = "PHIVAULT_DATA_DIR",
        value_name = "DIR",
        hide_env_values = true
    )]
    pub(crate) data_dir: Option<PathBuf>,
}

impl DataDirArgs {
    pub(crate) fn layer(&self) -> Layer {
        Layer {
            data_dir: self.data_dir.clone(),
            ..Layer::default()
        }
    }
}

/// Where the data lives (shared by serve, init, import and the administration commands).
#[derive(Debug, Clone, Default, Args)]
pub(crate) struct StorageArgs {
    #[command(flatten)]
    pub(crate) dir: DataDirArgs,

    /// Database: sqlite://PATH or postgres://USER@HOST/DB
    /// [toml: database_url] [default: sqlite://<data_dir>/phivault.db]
    #[arg(
        long,
        env = "PHIVAULT_DATABASE_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub(crate) database_url: Option<String>,

    /// File holding the master key (64 hex digits, mode 0600; created when missing)
    /// [toml: master_key_file] [default: <data_dir>/master.key]
    #[arg(
        long,
        env = "PHIVAULT_MASTER_KEY_FILE",
        value_name = "FILE",
        hide_env_values = true
    )]
    pub(crate) master_key_file: Option<PathBuf>,

    /// Largest number of entries in a transaction or batch Bundle (import applies it only
    /// when set) [toml: max_bundle_entries] [default: 1000]
    #[arg(
        long,
        env = "PHIVAULT_MAX_BUNDLE_ENTRIES",
        value_name = "N",
        hide_env_values = true
    )]
    pub(crate) max_bundle_entries: Option<usize>,

    /// Log format on stderr [toml: log_format] [default: text]
    #[arg(
        long,
        env = "PHIVAULT_LOG_FORMAT",
        value_name = "FORMAT",
        hide_env_values = true
    )]
    pub(crate) log_format: Option<LogFormat>,
}

impl StorageArgs {
    pub(crate) fn layer(&self) -> Layer {
        Layer {
            database_url: self.database_url.clone(),
            master_key_file: self.master_key_file.clone(),
            max_bundle_entries: self.max_bundle_entries,
            log_format: self.log_format,
            ..self.dir.layer()
        }
    }
}

#[derive(Debug, Clone, Default, Args)]
pub(crate) struct ServeArgs {
    #[command(flatten)]
    pub(crate) storage: StorageArgs,

    /// Address to listen on (port 0 picks a free port) [toml: listen] [default: 127.0.0.1:8443]
    #[arg(
        long,
        env = "PHIVAULT_LISTEN",
        value_name = "ADDR",
        hide_env_values = true
    )]
    pub(crate) listen: Option<SocketAddr>,

    /// Serve plain HTTP instead of HTTPS; allowed on a loopback address only
    /// [toml: insecure_http] [default: false]
    #[arg(
        long,
        env = "PHIVAULT_INSECURE_HTTP",
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = BoolishValueParser::new(),
        hide_env_values = true
    )]
    pub(crate) insecure_http: Option<bool>,

    /// Largest request body accepted, in bytes [toml: max_body_bytes] [default: 10485760]
    #[arg(
        long,
        env = "PHIVAULT_MAX_BODY_BYTES",
        value_name = "N",
        hide_env_values = true
    )]
    pub(crate) max_body_bytes: Option<usize>,

    /// Public base URL of the FHIR API, used in links [toml: public_base_url]
    /// [default: https://<listen>/fhir]
    #[arg(
        long,
        env = "PHIVAULT_PUBLIC_BASE_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub(crate) public_base_url: Option<String>,

    /// Extra Cedar policies added to the default set, validated against the schema before the
    /// server starts (check one with `phivault policy check FILE`) [toml: policy_file]
    /// [default: none]
    #[arg(
        long,
        env = "PHIVAULT_POLICY_FILE",
        value_name = "FILE",
        hide_env_values = true
    )]
    pub(crate) policy_file: Option<PathBuf>,

    /// This node's name in logs and in Bulk Data export URLs (letters, digits, `.`, `_`, `-`)
    /// [toml: cluster.node_id] [default: <host name>-<process id>]
    #[arg(
        long,
        env = "PHIVAULT_NODE_ID",
        value_name = "NAME",
        hide_env_values = true
    )]
    pub(crate) node_id: Option<String>,

    /// Print the merged settings (as a phivault.toml, passwords masked) and exit.
    #[arg(long)]
    pub(crate) print_config: bool,

    /// Start even when the start-up check of the audit trail (from its last checkpoint on)
    /// finds it tampered with; the finding is logged as an error. A deliberate choice for
    /// this start only: there is no configuration key or environment variable for it.
    /// Investigate first with `phivault audit verify`.
    #[arg(long)]
    pub(crate) allow_broken_audit: bool,
}

impl ServeArgs {
    fn layer(&self) -> Layer {
        Layer {
            listen: self.listen,
            insecure_http: self.insecure_http,
            max_body_bytes: self.max_body_bytes,
            public_base_url: self.public_base_url.clone(),
            policy_file: self.policy_file.clone(),
            cluster: self
                .node_id
                .clone()
                .map(|node_id| crate::config_cluster::ClusterLayer {
                    node_id: Some(node_id),
                    ..Default::default()
                }),
            ..self.storage.layer()
        }
    }
}

#[derive(Debug, Clone, Args)]
pub(crate) struct ImportArgs {
    /// Files (*.json, *.ndjson) or directories (searched recursively, in sorted order).
    #[arg(required = true, value_name = "PATH")]
    pub(crate) paths: Vec<PathBuf>,

    #[command(flatten)]
    pub(crate) storage: StorageArgs,
}

/// `phivault synthea`
#[derive(Debug, Clone, Args)]
pub(crate) struct SyntheaArgs {
    /// `older`: `urn:uuid:` references only, providers inside each patient Bundle; `newer`:
    /// conditional references to shared hospital and practitioner Bundles with `ifNoneExist`.
    #[arg(long, value_name = "SHAPE", default_value = "newer", value_parser = ["older", "newer"])]
    pub(crate) shape: String,

    /// Patients (one Bundle each).
    #[arg(long, value_name = "N", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub(crate) patients: u64,

    /// Seed of the generator (the same seed writes the same files).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub(crate) seed: u64,

    /// Directory to write into (created if missing).
    #[arg(long, value_name = "DIR")]
    pub(crate) out: PathBuf,
}

/// `phivault bench [store|http] ...`: without a subcommand, the store benchmark (its flags
/// are accepted directly, as before the subcommands existed).
#[derive(Debug, Clone, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct BenchCommand {
    #[command(subcommand)]
    pub(crate) command: Option<BenchSubcommand>,
    #[command(flatten)]
    pub(crate) store: BenchArgs,
}

/// The benchmarks.
#[derive(Debug, Clone, Subcommand)]
pub(crate) enum BenchSubcommand {
    /// The store in-process, on a fresh temporary store: ingest, read by id, erasure, audit
    /// verify, backup (the default).
    Store(BenchArgs),
    /// A real `phivault serve` (this binary, as a child process) over HTTPS on a temporary
    /// store: ingest of a Synthea-shaped population through transaction Bundles, then reads
    /// and searches at each concurrency (req/s, p50, p99, server CPU per request).
    Http(BenchHttpArgs),
    /// `phivault import` (this binary, as a child process) of a Synthea-shaped population
    /// written as one transaction Bundle file per patient, into a temporary store: rate, CPU
    /// per resource and the importer's peak resident memory.
    Import(BenchImportArgs),
    /// Several `phivault serve` nodes (this binary, as child processes) on one PostgreSQL
    /// database: throughput of audited reads and of writes at each node count, as ratios to
    /// the first, and where the CPU went (nodes, PostgreSQL, load generator).
    Cluster(crate::bench_cluster::BenchClusterArgs),
}

/// `phivault bench import`
#[derive(Debug, Clone, Args)]
pub(crate) struct BenchImportArgs {
    /// Patients of the synthetic population (100 to 300 resources each, one file each).
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub(crate) patients: u64,

    /// Seed of the population (the same seed, the same files).
    #[arg(long, value_name = "S", default_value_t = 1)]
    pub(crate) seed: u64,

    /// Import into this (empty) PostgreSQL database instead of a temporary SQLite file. Its
    /// content is not removed afterwards.
    #[arg(long, value_name = "URL")]
    pub(crate) database_url: Option<String>,

    /// Print the figures as one JSON document on stdout.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `phivault bench http`
#[derive(Debug, Clone, Args)]
pub(crate) struct BenchHttpArgs {
    /// Patients of the synthetic population (100 to 300 resources each, one transaction
    /// Bundle per patient).
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub(crate) patients: u64,

    /// Seed of the population and of the requests (the same seed, the same run).
    #[arg(long, value_name = "S", default_value_t = 1)]
    pub(crate) seed: u64,

    /// Concurrent connections of each run, comma-separated (one keep-alive connection per
    /// worker).
    #[arg(long, value_name = "N,N,...", value_delimiter = ',', default_values_t = [1u64, 16, 64], value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub(crate) connections: Vec<u64>,

    /// Seconds each workload runs at each concurrency.
    #[arg(long, value_name = "N", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub(crate) seconds: u64,

    /// Only these workloads, comma-separated (default: all): read, family, identifier,
    /// obs-code, obs-date, everything.
    #[arg(long, value_name = "NAME,...", value_delimiter = ',', value_parser = ["read", "family", "identifier", "obs-code", "obs-date", "everything"])]
    pub(crate) workloads: Vec<String>,

    /// Serve from this (empty) PostgreSQL database instead of a temporary SQLite file. Its
    /// content is not removed afterwards.
    #[arg(long, value_name = "URL")]
    pub(crate) database_url: Option<String>,

    /// Print the figures as one JSON document on stdout instead of the table.
    #[arg(long)]
    pub(crate) json: bool,

    /// Serve without breach-detection rules (`alert_rules = []`), to measure what the
    /// default rules cost against a run without this flag.
    #[arg(long)]
    pub(crate) no_alerts: bool,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct BenchArgs {
    /// Patients to ingest; each is one transaction Bundle of 100 resources (1 Patient and 99
    /// Observations).
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) patients: u64,

    /// Reads by id of random ingested resources.
    #[arg(long, value_name = "N", default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) reads: u64,

    /// Readers for the concurrent read phase (the same number of reads, split among them).
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub(crate) readers: u64,

    /// Benchmark against this (empty) database instead of a temporary SQLite file. Its
    /// content is not removed afterwards.
    #[arg(long, value_name = "URL")]
    pub(crate) database_url: Option<String>,

    /// Resources of the large patient whose erasure is timed (next to one of 10); 0 skips the
    /// erasure figures.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub(crate) erasure_resources: u64,

    /// Also time a backup of the benchmark store (snapshot, zstd, age), its verification and
    /// its restore (resources/s, MB/s).
    #[arg(long)]
    pub(crate) backup: bool,

    /// Entries the audit trail is filled up to (with synthetic read entries, written in
    /// large transactions) before its full verification is timed; 0 verifies the trail the
    /// benchmark made.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub(crate) audit_entries: u64,

    /// An empty database to restore the benchmark's backup into (with --backup; default: a
    /// temporary SQLite file).
    #[arg(long, value_name = "URL", requires = "backup")]
    pub(crate) restore_url: Option<String>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_is_consistent() {
        Invocation::command().debug_assert();
    }

    #[test]
    fn help_documents_every_key() {
        let mut cmd = Invocation::command();
        let top = cmd.render_long_help().to_string();
        let serve = cmd
            .find_subcommand_mut("serve")
            .unwrap()
            .render_long_help()
            .to_string();
        for key in [
            "data_dir",
            "database_url",
            "listen",
            "master_key_file",
            "insecure_http",
            "max_body_bytes",
            "max_bundle_entries",
            "public_base_url",
            "log_format",
        ] {
            assert!(top.contains(key), "phivault --help lacks {key}");
            assert!(
                serve.contains(&format!("[toml: {key}]")),
                "phivault serve --help lacks [toml: {key}]"
            );
            let env = format!("PHIVAULT_{}", key.to_uppercase());
            assert!(serve.contains(&env), "phivault serve --help lacks {env}");
        }
        assert!(top.contains("PHIVAULT_CONFIG"));
    }

    #[test]
    fn allow_broken_audit_is_a_flag_of_serve_only() {
        let cli =
            Invocation::try_parse_from(["phivault", "serve", "--allow-broken-audit"]).unwrap();
        let TopCommand::Core(Command::Serve(args)) = &cli.command else {
            panic!("serve: {cli:?}");
        };
        assert!(args.allow_broken_audit);
        let cli = Invocation::try_parse_from(["phivault", "serve"]).unwrap();
        let TopCommand::Core(Command::Serve(args)) = &cli.command else {
            panic!("serve: {cli:?}");
        };
        assert!(!args.allow_broken_audit);
        // Not a value flag, and not a flag of the other commands.
        assert!(
            Invocation::try_parse_from(["phivault", "serve", "--allow-broken-audit=true"]).is_err()
        );
        assert!(Invocation::try_parse_from(["phivault", "init", "--allow-broken-audit"]).is_err());
        // No environment variable: the help names none for it.
        let help = Invocation::command()
            .find_subcommand_mut("serve")
            .unwrap()
            .render_long_help()
            .to_string();
        assert!(help.contains("--allow-broken-audit"));
        assert!(!help.contains("PHIVAULT_ALLOW_BROKEN_AUDIT"));
    }

    #[test]
    fn import_takes_storage_flags() {
        let cli = Invocation::try_parse_from([
            "phivault",
            "import",
            "a.json",
            "dir",
            "--data-dir",
            "/d",
            "--max-bundle-entries",
            "7",
        ])
        .unwrap();
        let TopCommand::Core(command) = &cli.command else {
            panic!("import is a server command");
        };
        let layer = command.layer();
        assert_eq!(layer.data_dir, Some(PathBuf::from("/d")));
        assert_eq!(layer.max_bundle_entries, Some(7));
        assert!(Invocation::try_parse_from(["phivault", "import"]).is_err());
    }

    #[test]
    fn deidentify_parses() {
        let cli = Invocation::try_parse_from([
            "phivault",
            "deidentify",
            "--deid-config",
            "deid.toml",
            "--out",
            "export",
            "--k",
            "5",
            "--config",
            "server.toml",
        ])
        .unwrap();
        assert_eq!(cli.config, Some(PathBuf::from("server.toml")));
        let TopCommand::Deidentify(a) = &cli.command else {
            panic!("deidentify: {cli:?}");
        };
        assert_eq!(a.deid_config, Some(PathBuf::from("deid.toml")));
        assert_eq!(a.k, Some(5));
        let cli = Invocation::try_parse_from(["phivault", "deidentify", "--new-key", "k"]).unwrap();
        let TopCommand::Deidentify(a) = &cli.command else {
            panic!("deidentify --new-key: {cli:?}");
        };
        assert_eq!(a.new_key, Some(PathBuf::from("k")));
        for args in [
            &["phivault", "deidentify", "--out", "x"][..],
            &["phivault", "deidentify", "--deid-config", "d.toml"],
            &[
                "phivault",
                "deidentify",
                "--deid-config",
                "d",
                "--out",
                "x",
                "--k",
                "0",
            ],
            &["phivault", "deidentify", "--new-key", "k", "--out", "x"],
        ] {
            assert!(Invocation::try_parse_from(args).is_err(), "{args:?}");
        }
    }

    #[test]
    fn administration_commands_parse() {
        let cli = Invocation::try_parse_from([
            "phivault",
            "user",
            "add",
            "--username",
            "ann",
            "--role",
            "clinician",
            "--password-stdin",
            "--data-dir",
            "/d",
        ])
        .unwrap();
        let TopCommand::User(UserCommand::Add(a)) = &cli.command else {
            panic!("user add: {cli:?}");
        };
        assert!(a.password_stdin);
        assert_eq!(a.storage.layer().data_dir, Some(PathBuf::from("/d")));

        let cli = Invocation::try_parse_from([
            "phivault",
            "user",
            "grant",
            "ann",
            "p1",
            "--labels",
            "PSY,HIV",
            "--until",
            "2030-01-01T00:00:00Z",
        ])
        .unwrap();
        let TopCommand::User(UserCommand::Grant(g)) = &cli.command else {
            panic!("user grant: {cli:?}");
        };
        assert_eq!(g.labels, ["PSY", "HIV"]);
        assert_eq!(g.until.as_deref(), Some("2030-01-01T00:00:00Z"));

        for args in [
            &["phivault", "user", "link-patient", "ann", "p1"][..],
            &["phivault", "user", "link-practitioner", "ann", "dr1"],
            &[
                "phivault",
                "client",
                "add",
                "--name",
                "app",
                "--scope",
                "system/*.rs",
            ],
            &["phivault", "policy", "check", "extra.cedar"],
            &["phivault", "break-glass", "list", "--show-reasons"],
        ] {
            assert!(Invocation::try_parse_from(args).is_ok(), "{args:?}");
        }
        for args in [
            &["phivault", "user", "add", "--username", "ann"][..],
            &["phivault", "client", "add", "--name", "app"],
            &["phivault", "bootstrap-token", "reset"],
        ] {
            assert!(Invocation::try_parse_from(args).is_err(), "{args:?}");
        }
    }
}
