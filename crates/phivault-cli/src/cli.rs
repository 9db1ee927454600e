//! The command line. Every setting is an `Option` with its environment variable, so clap
//! applies "flag over environment" and leaves `None` for the file and the defaults.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::builder::BoolishValueParser;
use clap::{Args, Parser, Subcommand};

use crate::config::{Layer, LogFormat};

/// The configuration keys, for `--help`.
const SETTINGS_HELP: &str = "\
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
  log_format           PHIVAULT_LOG_FORMAT           --log-format text|json  text

Configuration file: --config FILE or PHIVAULT_CONFIG, else ./phivault.toml when it exists.
It holds the toml keys above (unknown keys are an error), e.g.:
  data_dir = \"/var/lib/phivault\"
  listen = \"0.0.0.0:8443\"
  database_url = \"postgres://phivault@db.internal/phivault\"
Relative paths are relative to the working directory. Log verbosity: RUST_LOG (default info).";

/// phivault: a FHIR R4 server that keeps protected health information encrypted, audited and
/// access-controlled.
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
    /// Serve the FHIR API over HTTPS (creates the data directory, master key, certificates and
    /// bootstrap token on first start).
    #[command(after_help = SETTINGS_HELP)]
    Serve(ServeArgs),
    /// Create the data directory, master key, database, certificates and bootstrap admin token,
    /// then exit.
    #[command(after_help = SETTINGS_HELP)]
    Init(StorageArgs),
    /// Import FHIR resources from *.json (Bundle of type transaction, batch or collection, or
    /// one resource) and *.ndjson (one resource per line) files, or directories of them.
    #[command(after_help = SETTINGS_HELP)]
    Import(ImportArgs),
    /// Manage the bootstrap admin token.
    #[command(subcommand)]
    BootstrapToken(TokenCommand),
    /// Measure ingest and read-by-id speed on a fresh temporary store (synthetic data only).
    Bench(BenchArgs),
}

impl Command {
    /// The settings given on the command line or in the environment.
    pub(crate) fn layer(&self) -> Layer {
        match self {
            Command::Serve(a) => a.layer(),
            Command::Init(a) => a.layer(),
            Command::Import(a) => a.storage.layer(),
            Command::BootstrapToken(TokenCommand::Reset(a)) => a.layer(),
            Command::Bench(_) => Layer::default(),
        }
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum TokenCommand {
    /// Replace the bootstrap admin token and print the new one (shown once). A running server
    /// keeps the old one until restarted.
    #[command(after_help = SETTINGS_HELP)]
    Reset(DataDirArgs),
}

/// The data directory alone.
#[derive(Debug, Clone, Default, Args)]
pub(crate) struct DataDirArgs {
    /// Directory of the database, master key, certificates and bootstrap token hash
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
    fn layer(&self) -> Layer {
        Layer {
            data_dir: self.data_dir.clone(),
            ..Layer::default()
        }
    }
}

/// Where the data lives (shared by serve, init and import).
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
    fn layer(&self) -> Layer {
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

    /// Print the merged settings (as a phivault.toml, passwords masked) and exit.
    #[arg(long)]
    pub(crate) print_config: bool,
}

impl ServeArgs {
    fn layer(&self) -> Layer {
        Layer {
            listen: self.listen,
            insecure_http: self.insecure_http,
            max_body_bytes: self.max_body_bytes,
            public_base_url: self.public_base_url.clone(),
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

#[derive(Debug, Clone, Args)]
pub(crate) struct BenchArgs {
    /// Patients to ingest; each is one transaction Bundle of 100 resources (1 Patient and 99
    /// Observations).
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) patients: u64,

    /// Reads by id of random ingested resources.
    #[arg(long, value_name = "N", default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) reads: u64,

    /// Benchmark against this (empty) database instead of a temporary SQLite file. Its
    /// content is not removed afterwards.
    #[arg(long, value_name = "URL")]
    pub(crate) database_url: Option<String>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn help_documents_every_key() {
        let mut cmd = Cli::command();
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
    fn import_takes_storage_flags() {
        let cli = Cli::try_parse_from([
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
        let layer = cli.command.layer();
        assert_eq!(layer.data_dir, Some(PathBuf::from("/d")));
        assert_eq!(layer.max_bundle_entries, Some(7));
        assert!(Cli::try_parse_from(["phivault", "import"]).is_err());
    }
}
