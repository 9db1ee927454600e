//! Settings: flags > environment > configuration file > defaults.
//!
//! clap resolves the first two (each flag is an `Option` with an `env = "PHIVAULT_..."`), so a
//! command's arguments become one [`Layer`]; the TOML file is another [`Layer`]; [`resolve`]
//! stacks them over the defaults of docs/CONTRACTS.md.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use phivault_policy::{ConsentDefaults, Purpose, Role, RolePurposes};
use phivault_server::{
    ProcessingActivity, check_processing_activities, default_processing_activities,
};
use phivault_store::RetentionRule;
use serde::Deserialize;

use crate::config_cluster::{ClusterLayer, ClusterSettings};
use crate::config_database::{DatabaseLayer, DatabaseSettings};
use crate::config_edge::{EdgeLayer, EdgeSettings};
use crate::research_projects::{ResearchProjectSetting, check_research_projects};
use phivault_alerts::{RuleSetting, WebhookSetting};

/// The file read when neither `--config` nor `PHIVAULT_CONFIG` names one (only if it exists).
pub(crate) const DEFAULT_CONFIG_FILE: &str = "phivault.toml";
/// Default `data_dir`.
pub(crate) const DEFAULT_DATA_DIR: &str = "./phivault-data";
/// Default `listen`.
pub(crate) const DEFAULT_LISTEN: &str = "127.0.0.1:8443";
/// Default `max_body_bytes` (10 MiB).
pub(crate) const DEFAULT_MAX_BODY_BYTES: usize = 10 * 1024 * 1024;
/// Default `max_bundle_entries`.
pub(crate) const DEFAULT_MAX_BUNDLE_ENTRIES: usize = 1000;

/// Log output format (stderr).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// One source of settings (the command line with the environment, or the file); `None`
/// means "not set here". Also the schema of `phivault.toml`: unknown keys are refused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Layer {
    pub(crate) data_dir: Option<PathBuf>,
    pub(crate) database_url: Option<String>,
    pub(crate) listen: Option<SocketAddr>,
    pub(crate) master_key_file: Option<PathBuf>,
    pub(crate) insecure_http: Option<bool>,
    pub(crate) max_body_bytes: Option<usize>,
    pub(crate) max_bundle_entries: Option<usize>,
    pub(crate) public_base_url: Option<String>,
    pub(crate) log_format: Option<LogFormat>,
    pub(crate) policy_file: Option<PathBuf>,
    /// The audit trail's checkpoint public key the operator pinned (64 hex digits, file
    /// only): `serve` and `audit verify` refuse a database whose key differs.
    pub(crate) audit_public_key: Option<String>,
    /// `[consent_defaults]`: purpose of use code -> "permit" | "deny" (file only).
    pub(crate) consent_defaults: Option<BTreeMap<String, String>>,
    /// `[role_purposes]`: role -> the purpose of use codes it may assert (file only).
    pub(crate) role_purposes: Option<BTreeMap<String, Vec<String>>>,
    /// `[[processing_activities]]`: the register of processing activities (file only).
    pub(crate) processing_activities: Option<Vec<ProcessingActivity>>,
    /// `[retention]`: resource type -> period ("30d", "10y") (file only).
    pub(crate) retention: Option<BTreeMap<String, String>>,
    /// `[edge]`: proxies, password hashing (file only; see `config_edge`).
    pub(crate) edge: Option<EdgeLayer>,
    /// `[database]`: the connection pool of `serve` (file only; see `config_database`).
    pub(crate) database: Option<DatabaseLayer>,
    /// `[cluster]`: node id, checkpoint cadence (file only; see `config_cluster`).
    pub(crate) cluster: Option<ClusterLayer>,
    /// `[[research_projects]]`: de-identified exports researchers may run (file only; see
    /// `research_projects`).
    pub(crate) research_projects: Option<Vec<ResearchProjectSetting>>,
    /// `[[alert_rules]]`: the breach-detection rules (file only; replace the defaults).
    pub(crate) alert_rules: Option<Vec<RuleSetting>>,
    /// `[alert_webhook]`: where alerts are POSTed, and the file of the signing key.
    pub(crate) alert_webhook: Option<WebhookSetting>,
}

impl Layer {
    /// Each setting from `self` when set there, else from `lower`.
    fn over(self, lower: Layer) -> Layer {
        Layer {
            data_dir: self.data_dir.or(lower.data_dir),
            database_url: self.database_url.or(lower.database_url),
            listen: self.listen.or(lower.listen),
            master_key_file: self.master_key_file.or(lower.master_key_file),
            insecure_http: self.insecure_http.or(lower.insecure_http),
            max_body_bytes: self.max_body_bytes.or(lower.max_body_bytes),
            max_bundle_entries: self.max_bundle_entries.or(lower.max_bundle_entries),
            public_base_url: self.public_base_url.or(lower.public_base_url),
            log_format: self.log_format.or(lower.log_format),
            policy_file: self.policy_file.or(lower.policy_file),
            audit_public_key: self.audit_public_key.or(lower.audit_public_key),
            consent_defaults: self.consent_defaults.or(lower.consent_defaults),
            role_purposes: self.role_purposes.or(lower.role_purposes),
            processing_activities: self.processing_activities.or(lower.processing_activities),
            retention: self.retention.or(lower.retention),
            edge: self.edge.or(lower.edge),
            database: self.database.or(lower.database),
            cluster: ClusterLayer::merge(self.cluster, lower.cluster),
            research_projects: self.research_projects.or(lower.research_projects),
            alert_rules: self.alert_rules.or(lower.alert_rules),
            alert_webhook: self.alert_webhook.or(lower.alert_webhook),
        }
    }
}

/// The merged settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Settings {
    pub(crate) data_dir: PathBuf,
    pub(crate) database_url: String,
    pub(crate) listen: SocketAddr,
    pub(crate) master_key_file: PathBuf,
    pub(crate) insecure_http: bool,
    pub(crate) max_body_bytes: usize,
    pub(crate) max_bundle_entries: usize,
    /// True when `max_bundle_entries` was set (flag, env or file) rather than defaulted.
    pub(crate) max_bundle_entries_set: bool,
    /// As configured; [`Settings::base_url`] derives it from `listen` when unset.
    pub(crate) public_base_url: Option<String>,
    pub(crate) log_format: LogFormat,
    /// Operator policies added to the default set.
    pub(crate) policy_file: Option<PathBuf>,
    /// The pinned checkpoint public key of the audit trail (raw Ed25519, 32 bytes).
    pub(crate) audit_public_key: Option<Vec<u8>>,
    /// What each purpose of use gets when no consent of the patient applies (built-in:
    /// HRESCH and HMARKT deny, every other purpose permit), with the configured overrides.
    pub(crate) consent_defaults: ConsentDefaults,
    /// The purposes of use each role may assert (built-in unless configured per role).
    pub(crate) role_purposes: RolePurposes,
    /// The register of processing activities (built-in unless configured).
    pub(crate) processing_activities: Vec<ProcessingActivity>,
    /// Retention periods by resource type (none: every resource is kept forever).
    pub(crate) retention: Vec<RetentionRule>,
    /// `[edge]`.
    pub(crate) edge: EdgeSettings,
    /// `[database]`.
    pub(crate) database: DatabaseSettings,
    /// `[cluster]`.
    pub(crate) cluster: ClusterSettings,
    /// The research projects (checked; their files are read when the server starts).
    pub(crate) research_projects: Vec<ResearchProjectSetting>,
    /// The breach-detection rules in force (the defaults unless configured; checked).
    pub(crate) alert_rules: Vec<RuleSetting>,
    /// The alert webhook (its key file is read when the server starts).
    pub(crate) alert_webhook: Option<WebhookSetting>,
}

impl Settings {
    /// Public base URL of the FHIR API: `public_base_url`, else `https://<listen>/fhir`
    /// (`http://` with `insecure_http`).
    pub(crate) fn base_url(&self) -> String {
        match &self.public_base_url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => {
                let scheme = if self.insecure_http { "http" } else { "https" };
                format!("{scheme}://{}/fhir", self.listen)
            }
        }
    }

    /// The settings as a `phivault.toml` (a password in `database_url` is masked).
    pub(crate) fn to_toml(&self) -> String {
        let quote = |s: &str| {
            // A TOML basic string: escape backslash and quote; control characters as \u.
            let mut out = String::from("\"");
            for c in s.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '"' => out.push_str("\\\""),
                    c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
                    c => out.push(c),
                }
            }
            out.push('"');
            out
        };
        let mut out = String::new();
        let mut line = |key: &str, value: String| {
            out.push_str(key);
            out.push_str(" = ");
            out.push_str(&value);
            out.push('\n');
        };
        line("data_dir", quote(&self.data_dir.display().to_string()));
        line("database_url", quote(&mask_password(&self.database_url)));
        line("listen", quote(&self.listen.to_string()));
        line(
            "master_key_file",
            quote(&self.master_key_file.display().to_string()),
        );
        line("insecure_http", self.insecure_http.to_string());
        line("max_body_bytes", self.max_body_bytes.to_string());
        line("max_bundle_entries", self.max_bundle_entries.to_string());
        line("public_base_url", quote(&self.base_url()));
        line("log_format", quote(self.log_format.as_str()));
        if let Some(f) = &self.policy_file {
            line("policy_file", quote(&f.display().to_string()));
        }
        if let Some(k) = &self.audit_public_key {
            line("audit_public_key", quote(&hex::encode(k)));
        }
        out.push_str(&format!(
            "# processing_activities: {} entries\n",
            self.processing_activities.len()
        ));
        out.push_str("\n[consent_defaults]\n");
        for p in Purpose::ALL {
            let d = if self.consent_defaults.permits(*p) {
                "permit"
            } else {
                "deny"
            };
            out.push_str(&format!("{p} = \"{d}\"\n"));
        }
        out.push_str("\n[role_purposes]\n");
        for r in Role::ALL {
            let codes: Vec<String> = self
                .role_purposes
                .listed(*r)
                .iter()
                .map(|p| quote(p.as_str()))
                .collect();
            out.push_str(&format!("{r} = [{}]\n", codes.join(", ")));
        }
        if !self.retention.is_empty() {
            out.push_str("\n[retention]\n");
            for r in &self.retention {
                let days = r.max_age_secs / DAY_SECS;
                let period = if days % 365 == 0 {
                    format!("{}y", days / 365)
                } else {
                    format!("{days}d")
                };
                out.push_str(&format!("{} = \"{period}\"\n", r.rtype));
            }
        }
        out.push_str(&self.edge.to_toml());
        out.push_str(&self.database.to_toml());
        out.push_str(&self.cluster.to_toml());
        for p in &self.research_projects {
            out.push_str("\n[[research_projects]]\n");
            out.push_str(&format!("name = {}\n", quote(&p.name)));
            out.push_str(&format!(
                "deidentification = {}\n",
                quote(&p.deidentification.display().to_string())
            ));
            if let Some(k) = p.k {
                out.push_str(&format!("k = {k}\n"));
            }
        }
        for rule in &self.alert_rules {
            out.push_str("\n[[alert_rules]]\n");
            out.push_str(&toml::to_string(rule).unwrap_or_default());
        }
        if let Some(hook) = &self.alert_webhook {
            out.push_str("\n[alert_webhook]\n");
            out.push_str(&toml::to_string(hook).unwrap_or_default());
        }
        out
    }
}

/// A configuration mistake. Messages name keys and files, never secrets.
#[derive(Debug)]
pub(crate) enum ConfigError {
    /// The configuration file could not be read.
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The configuration file is not valid (syntax, unknown key, wrong type).
    Parse { path: PathBuf, message: String },
    /// A setting has a value that cannot work.
    Invalid { key: &'static str, message: String },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // The I/O cause is the error's source (printed after it by `{:#}`).
            ConfigError::Read { path, .. } => {
                write!(f, "cannot read the configuration file {}", path.display())
            }
            ConfigError::Parse { path, message } => {
                write!(f, "configuration file {}: {message}", path.display())
            }
            ConfigError::Invalid { key, message } => write!(f, "setting {key}: {message}"),
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConfigError::Read { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Reads the configuration file: `explicit` (from `--config`/`PHIVAULT_CONFIG`, must exist),
/// else `./phivault.toml` when it exists, else an empty layer.
pub(crate) fn load_file(explicit: Option<&Path>) -> Result<Layer, ConfigError> {
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None => {
            let p = PathBuf::from(DEFAULT_CONFIG_FILE);
            if !p.is_file() {
                return Ok(Layer::default());
            }
            p
        }
    };
    let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
        path: path.clone(),
        source,
    })?;
    parse_file(&path, &text)
}

/// Parses the text of a configuration file (unknown keys are an error naming the key).
pub(crate) fn parse_file(path: &Path, text: &str) -> Result<Layer, ConfigError> {
    toml::from_str(text).map_err(|e| {
        // `message()` names the key ("unknown field `x`, expected one of ..."); the line
        // comes from the span. One line, without toml's multi-line excerpt.
        let message = one_line(e.message());
        let message = match e.span() {
            Some(span) => {
                let line = 1 + text
                    .get(..span.start)
                    .map_or(0, |before| before.matches('\n').count());
                format!("line {line}: {message}")
            }
            None => message,
        };
        ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        }
    })
}

/// Merges `cli` (flags, then environment: clap already applied that order) over `file`
/// over the defaults, and checks the values.
pub(crate) fn resolve(cli: Layer, file: Layer) -> Result<Settings, ConfigError> {
    let merged = cli.over(file);
    let data_dir = merged
        .data_dir
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
    if data_dir.as_os_str().is_empty() {
        return Err(ConfigError::Invalid {
            key: "data_dir",
            message: "must not be empty".to_owned(),
        });
    }
    let database_url = merged
        .database_url
        .unwrap_or_else(|| format!("sqlite://{}", data_dir.join("phivault.db").display()));
    if !(database_url.starts_with("sqlite:")
        || database_url.starts_with("postgres:")
        || database_url.starts_with("postgresql:"))
    {
        return Err(ConfigError::Invalid {
            key: "database_url",
            message: "must start with sqlite:// or postgres://".to_owned(),
        });
    }
    let listen = match merged.listen {
        Some(addr) => addr,
        None => DEFAULT_LISTEN.parse().map_err(|_| ConfigError::Invalid {
            key: "listen",
            message: "the default address does not parse".to_owned(),
        })?,
    };
    let master_key_file = merged
        .master_key_file
        .unwrap_or_else(|| data_dir.join("master.key"));
    let insecure_http = merged.insecure_http.unwrap_or(false);
    let audit_public_key = match &merged.audit_public_key {
        None => None,
        Some(text) => Some(
            hex::decode(text.trim())
                .ok()
                .filter(|k| k.len() == 32)
                .ok_or_else(|| ConfigError::Invalid {
                    key: "audit_public_key",
                    message: "must be 64 hex digits (as printed by `phivault serve` at first \
                              start)"
                        .to_owned(),
                })?,
        ),
    };
    let max_body_bytes = merged.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES);
    if max_body_bytes == 0 {
        return Err(ConfigError::Invalid {
            key: "max_body_bytes",
            message: "must be at least 1".to_owned(),
        });
    }
    let max_bundle_entries_set = merged.max_bundle_entries.is_some();
    let max_bundle_entries = merged
        .max_bundle_entries
        .unwrap_or(DEFAULT_MAX_BUNDLE_ENTRIES);
    if max_bundle_entries == 0 {
        return Err(ConfigError::Invalid {
            key: "max_bundle_entries",
            message: "must be at least 1".to_owned(),
        });
    }
    let public_base_url = merged.public_base_url;
    if let Some(url) = &public_base_url
        && !(url.starts_with("https://") || url.starts_with("http://"))
    {
        return Err(ConfigError::Invalid {
            key: "public_base_url",
            message: "must start with https:// (or http://)".to_owned(),
        });
    }
    let mut consent_defaults = ConsentDefaults::default();
    for (code, value) in merged.consent_defaults.unwrap_or_default() {
        let purpose = Purpose::parse(&code).map_err(|_| ConfigError::Invalid {
            key: "consent_defaults",
            message: format!(
                "`{}` is not an HL7 PurposeOfUse code (TREAT, ETREAT, HPAYMT, HOPERAT, HRESCH, \
                 HMARKT, ...)",
                code.chars().take(40).collect::<String>()
            ),
        })?;
        let permit = ConsentDefaults::parse_setting(&value).map_err(|_| ConfigError::Invalid {
            key: "consent_defaults",
            message: format!("{purpose} must be \"permit\" or \"deny\""),
        })?;
        consent_defaults.set(purpose, permit);
    }
    let mut role_purposes = RolePurposes::default();
    for (name, codes) in merged.role_purposes.unwrap_or_default() {
        let role = Role::parse(&name).map_err(|_| ConfigError::Invalid {
            key: "role_purposes",
            message: format!(
                "`{}` is not a role (admin, clinician, patient, researcher, auditor, app)",
                name.chars().take(40).collect::<String>()
            ),
        })?;
        let mut purposes = Vec::with_capacity(codes.len());
        for code in codes {
            purposes.push(Purpose::parse(&code).map_err(|_| ConfigError::Invalid {
                key: "role_purposes",
                message: format!(
                    "{role}: `{}` is not an HL7 PurposeOfUse code (TREAT, ETREAT, HPAYMT, \
                     HOPERAT, HRESCH, ...)",
                    code.chars().take(40).collect::<String>()
                ),
            })?);
        }
        role_purposes
            .set(role, purposes)
            .map_err(|e| ConfigError::Invalid {
                key: "role_purposes",
                message: e.to_string(),
            })?;
    }
    let processing_activities = merged
        .processing_activities
        .unwrap_or_else(default_processing_activities);
    check_processing_activities(&processing_activities).map_err(|message| {
        ConfigError::Invalid {
            key: "processing_activities",
            message,
        }
    })?;
    let retention = parse_retention(merged.retention.unwrap_or_default())?;
    let edge = merged.edge.unwrap_or_default().resolve()?;
    let database = merged.database.unwrap_or_default().resolve()?;
    let cluster = merged.cluster.unwrap_or_default().resolve()?;
    let research_projects = check_research_projects(merged.research_projects.unwrap_or_default())?;
    let alert_rules = merged
        .alert_rules
        .unwrap_or_else(phivault_alerts::default_rules);
    phivault_alerts::check_rules(Some(alert_rules.clone())).map_err(|e| ConfigError::Invalid {
        key: "alert_rules",
        message: e.0,
    })?;
    Ok(Settings {
        data_dir,
        database_url,
        listen,
        master_key_file,
        insecure_http,
        max_body_bytes,
        max_bundle_entries,
        max_bundle_entries_set,
        public_base_url,
        log_format: merged.log_format.unwrap_or_default(),
        policy_file: merged.policy_file,
        audit_public_key,
        consent_defaults,
        role_purposes,
        processing_activities,
        retention,
        edge,
        database,
        cluster,
        research_projects,
        alert_rules,
        alert_webhook: merged.alert_webhook,
    })
}

/// Seconds in a retention period's unit: `d` (days) or `y` (365 days).
const DAY_SECS: i64 = 86_400;

/// `[retention]`: each key a supported resource type, each value a whole number of days
/// (`"30d"`) or years (`"10y"`, 365 days each), at least 1.
pub(crate) fn parse_retention(
    table: BTreeMap<String, String>,
) -> Result<Vec<RetentionRule>, ConfigError> {
    let mut rules = Vec::with_capacity(table.len());
    for (name, period) in table {
        let rtype =
            phivault_fhir::ResourceType::parse(&name).map_err(|_| ConfigError::Invalid {
                key: "retention",
                message: format!(
                    "`{}` is not a supported resource type",
                    name.chars().take(40).collect::<String>()
                ),
            })?;
        let bad = || ConfigError::Invalid {
            key: "retention",
            message: format!(
                "{rtype}: the period must be a whole number of days or years, such as \"30d\" or \"10y\""
            ),
        };
        let period = period.trim();
        let (number, unit_secs) = if let Some(n) = period.strip_suffix('d') {
            (n, DAY_SECS)
        } else if let Some(n) = period.strip_suffix('y') {
            (n, 365 * DAY_SECS)
        } else {
            return Err(bad());
        };
        if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let n: i64 = number.parse().map_err(|_| bad())?;
        if n == 0 {
            return Err(bad());
        }
        let max_age_secs = n.checked_mul(unit_secs).ok_or_else(bad)?;
        rules.push(RetentionRule {
            rtype,
            max_age_secs,
        });
    }
    Ok(rules)
}

/// `postgres://user:secret@host/db` -> `postgres://user:***@host/db`.
pub(crate) fn mask_password(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest_start = scheme_end + 3;
    let rest = &url[rest_start..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &authority[..at];
    let Some(colon) = userinfo.find(':') else {
        return url.to_owned();
    };
    format!(
        "{}{}:***{}",
        &url[..rest_start],
        &userinfo[..colon],
        &rest[at..]
    )
}

fn one_line(text: &str) -> String {
    text.split('\n')
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn file(text: &str) -> Layer {
        parse_file(Path::new("test.toml"), text).unwrap()
    }

    #[test]
    fn defaults() {
        let s = resolve(Layer::default(), Layer::default()).unwrap();
        assert_eq!(s.data_dir, PathBuf::from("./phivault-data"));
        assert_eq!(s.database_url, "sqlite://./phivault-data/phivault.db");
        assert_eq!(s.listen.to_string(), "127.0.0.1:8443");
        assert_eq!(
            s.master_key_file,
            PathBuf::from("./phivault-data/master.key")
        );
        assert!(!s.insecure_http);
        assert_eq!(s.max_body_bytes, 10_485_760);
        assert_eq!(s.max_bundle_entries, 1000);
        assert!(!s.max_bundle_entries_set);
        assert_eq!(s.base_url(), "https://127.0.0.1:8443/fhir");
        assert_eq!(s.log_format, LogFormat::Text);
    }

    #[test]
    fn derived_defaults_follow_data_dir_and_listen() {
        let cli = Layer {
            data_dir: Some("/srv/pv".into()),
            listen: Some("127.0.0.1:0".parse().unwrap()),
            insecure_http: Some(true),
            ..Layer::default()
        };
        let s = resolve(cli, Layer::default()).unwrap();
        assert_eq!(s.database_url, "sqlite:///srv/pv/phivault.db");
        assert_eq!(s.master_key_file, PathBuf::from("/srv/pv/master.key"));
        assert_eq!(s.base_url(), "http://127.0.0.1:0/fhir");
    }

    #[test]
    fn file_beats_default() {
        let f = file(
            r#"
            data_dir = "/from/file"
            listen = "0.0.0.0:9000"
            max_body_bytes = 1234
            max_bundle_entries = 5
            insecure_http = true
            log_format = "json"
            public_base_url = "https://fhir.example.org/fhir/"
            "#,
        );
        let s = resolve(Layer::default(), f).unwrap();
        assert_eq!(s.data_dir, PathBuf::from("/from/file"));
        assert_eq!(s.listen.to_string(), "0.0.0.0:9000");
        assert_eq!(s.max_body_bytes, 1234);
        assert_eq!(s.max_bundle_entries, 5);
        assert!(s.max_bundle_entries_set);
        assert!(s.insecure_http);
        assert_eq!(s.log_format, LogFormat::Json);
        assert_eq!(s.base_url(), "https://fhir.example.org/fhir");
    }

    #[test]
    fn command_line_beats_file() {
        // The command-line layer is what clap produced from flags and environment.
        let cli = Layer {
            data_dir: Some("/from/cli".into()),
            max_body_bytes: Some(99),
            insecure_http: Some(false),
            log_format: Some(LogFormat::Text),
            ..Layer::default()
        };
        let f = file(
            r#"
            data_dir = "/from/file"
            database_url = "postgres://pv@db/pv"
            max_body_bytes = 1234
            insecure_http = true
            log_format = "json"
            "#,
        );
        let s = resolve(cli, f).unwrap();
        assert_eq!(s.data_dir, PathBuf::from("/from/cli"));
        assert_eq!(s.max_body_bytes, 99);
        assert!(!s.insecure_http);
        assert_eq!(s.log_format, LogFormat::Text);
        // Not on the command line: the file's value.
        assert_eq!(s.database_url, "postgres://pv@db/pv");
        // Derived from the winning data_dir.
        assert_eq!(s.master_key_file, PathBuf::from("/from/cli/master.key"));
    }

    #[test]
    fn flag_beats_env_beats_file_beats_default() {
        use crate::cli::Cli;
        use clap::Parser;

        // clap gives flags > env; this checks the whole chain through the real parser, with
        // the environment passed as a clap default (the same mechanism as `env = ...`),
        // without touching the process environment.
        let with_env = |args: &[&str], env_listen: Option<&str>| -> Settings {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            if let Some(v) = env_listen {
                let v: &'static str = Box::leak(v.to_owned().into_boxed_str());
                cmd = cmd.mut_subcommand("serve", |c| c.mut_arg("listen", |a| a.default_value(v)));
            }
            let matches = cmd.try_get_matches_from(args).unwrap();
            let cli = <Cli as clap::FromArgMatches>::from_arg_matches(&matches).unwrap();
            let layer = cli.command.layer();
            let f = file("listen = \"127.0.0.3:3\"");
            resolve(layer, f).unwrap()
        };
        let flag = with_env(
            &["phivault", "serve", "--listen", "127.0.0.1:1"],
            Some("127.0.0.2:2"),
        );
        assert_eq!(flag.listen.to_string(), "127.0.0.1:1");
        let env = with_env(&["phivault", "serve"], Some("127.0.0.2:2"));
        assert_eq!(env.listen.to_string(), "127.0.0.2:2");
        let from_file = with_env(&["phivault", "serve"], None);
        assert_eq!(from_file.listen.to_string(), "127.0.0.3:3");
        let default = resolve(Layer::default(), Layer::default()).unwrap();
        assert_eq!(default.listen.to_string(), "127.0.0.1:8443");
        // The parser itself, without env.
        let cli = Cli::try_parse_from(["phivault", "serve", "--insecure-http"]).unwrap();
        assert_eq!(cli.command.layer().insecure_http, Some(true));
        let cli = Cli::try_parse_from(["phivault", "serve", "--insecure-http=false"]).unwrap();
        assert_eq!(cli.command.layer().insecure_http, Some(false));
    }

    #[test]
    fn unknown_key_is_named() {
        let err = parse_file(
            Path::new("x.toml"),
            "data_dir = \"d\"\nlisten_addr = \"x\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("listen_addr"), "{err}");
        assert!(err.contains("line 2"), "{err}");
        assert!(err.contains("x.toml"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn allow_broken_audit_is_not_a_file_key() {
        // A per-start choice on the command line only (`serve --allow-broken-audit`).
        let err = parse_file(Path::new("x.toml"), "allow_broken_audit = true\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("allow_broken_audit"), "{err}");
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(parse_file(Path::new("x"), "listen = \"nowhere\"").is_err());
        assert!(parse_file(Path::new("x"), "log_format = \"xml\"").is_err());
        assert!(parse_file(Path::new("x"), "max_body_bytes = -1").is_err());
        let bad_url = Layer {
            database_url: Some("mysql://x".into()),
            ..Layer::default()
        };
        assert!(resolve(bad_url, Layer::default()).is_err());
        let zero = Layer {
            max_bundle_entries: Some(0),
            ..Layer::default()
        };
        assert!(resolve(zero, Layer::default()).is_err());
    }

    #[test]
    fn role_purposes() {
        let s = resolve(Layer::default(), Layer::default()).unwrap();
        assert_eq!(s.role_purposes, RolePurposes::default());
        assert!(!s.role_purposes.permits(Role::Clinician, Purpose::Payment));
        let f = file(
            r#"
            [role_purposes]
            clinician = ["TREAT", "HPAYMT"]
            "#,
        );
        let s = resolve(Layer::default(), f).unwrap();
        assert!(s.role_purposes.permits(Role::Clinician, Purpose::Payment));
        assert!(
            s.role_purposes
                .permits(Role::Clinician, Purpose::EmergencyTreat)
        );
        assert!(
            !s.role_purposes
                .permits(Role::Clinician, Purpose::Operations)
        );
        // The printed settings read back the same.
        let printed = s.to_toml();
        assert!(
            printed.contains("clinician = [\"TREAT\", \"HPAYMT\"]"),
            "{printed}"
        );
        let again = resolve(Layer::default(), file(&printed)).unwrap();
        assert_eq!(again.role_purposes, s.role_purposes);
        let bad = [
            ("[role_purposes]\nnurse = [\"TREAT\"]\n", "nurse"),
            (
                "[role_purposes]\nclinician = [\"CURIOSITY\"]\n",
                "CURIOSITY",
            ),
            (
                "[role_purposes]\nclinician = [\"HPAYMT\"]\n",
                "default purpose TREAT",
            ),
        ];
        for (text, mentions) in bad {
            let e = resolve(Layer::default(), file(text))
                .unwrap_err()
                .to_string();
            assert!(e.contains("role_purposes") && e.contains(mentions), "{e}");
        }
    }

    #[test]
    fn consent_defaults_and_the_register() {
        let s = resolve(Layer::default(), Layer::default()).unwrap();
        assert!(!s.consent_defaults.permits(Purpose::Research));
        assert!(!s.consent_defaults.permits(Purpose::Marketing));
        assert!(s.consent_defaults.permits(Purpose::Treat));
        assert_eq!(s.processing_activities, default_processing_activities());
        let f = file(
            r#"
            [consent_defaults]
            HRESCH = "permit"
            HOPERAT = "deny"

            [[processing_activities]]
            name = "treatment"
            description = "care"
            purposes = ["TREAT"]
            legal_basis = "art. 9(2)(h)"
            data_subjects = ["patients"]
            data_classes = ["Observation"]
            recipients = ["care team"]
            retention = "10 years"
            "#,
        );
        let s = resolve(Layer::default(), f).unwrap();
        assert!(s.consent_defaults.permits(Purpose::Research));
        assert!(!s.consent_defaults.permits(Purpose::Operations));
        assert!(!s.consent_defaults.permits(Purpose::Marketing));
        assert_eq!(s.processing_activities.len(), 1);
        assert_eq!(s.processing_activities[0].retention, "10 years");
        // The printed settings carry the defaults.
        let printed = s.to_toml();
        assert!(printed.contains("HRESCH = \"permit\""), "{printed}");
        let again = resolve(Layer::default(), file(&printed)).unwrap();
        assert_eq!(again.consent_defaults, s.consent_defaults);

        let bad = [
            ("[consent_defaults]\nCURIOSITY = \"permit\"\n", "CURIOSITY"),
            ("[consent_defaults]\nHRESCH = \"maybe\"\n", "HRESCH must be"),
        ];
        for (text, mentions) in bad {
            let e = resolve(Layer::default(), file(text))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("consent_defaults") && e.contains(mentions),
                "{e}"
            );
        }
        let e = resolve(
            Layer::default(),
            file(
                "[[processing_activities]]\nname = \"x\"\ndescription = \"\"\n\
                 purposes = [\"NOPE\"]\nlegal_basis = \"\"\ndata_subjects = []\n\
                 data_classes = [\"Patient\"]\nrecipients = []\nretention = \"1y\"\n",
            ),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("processing_activities[0].purposes"), "{e}");
        // Unknown keys of an entry are named.
        let e = parse_file(
            Path::new("x.toml"),
            "[[processing_activities]]\nname = \"x\"\nretention_days = 3\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("retention_days"), "{e}");
    }

    #[test]
    fn retention_periods_are_parsed_and_checked() {
        let s = resolve(Layer::default(), Layer::default()).unwrap();
        assert!(s.retention.is_empty(), "no retention by default");
        let s = resolve(
            Layer::default(),
            file("[retention]\nObservation = \"10y\"\nCondition = \"30d\"\n"),
        )
        .unwrap();
        let get = |name: &str| {
            s.retention
                .iter()
                .find(|r| r.rtype.as_str() == name)
                .map(|r| r.max_age_secs)
        };
        assert_eq!(get("Observation"), Some(10 * 365 * 86_400));
        assert_eq!(get("Condition"), Some(30 * 86_400));
        assert_eq!(get("Patient"), None);
        // The printed settings read back with the same periods.
        let printed = s.to_toml();
        assert!(printed.contains("Observation = \"10y\""), "{printed}");
        assert!(printed.contains("Condition = \"30d\""), "{printed}");
        let again = resolve(Layer::default(), file(&printed)).unwrap();
        assert_eq!(again.retention, s.retention);
        for (text, needle) in [
            (
                "Obsrvation = \"10y\"",
                "Obsrvation` is not a supported resource type",
            ),
            ("Observation = \"10\"", "Observation: the period"),
            ("Observation = \"10m\"", "Observation: the period"),
            ("Observation = \"0d\"", "Observation: the period"),
            ("Observation = \"-1d\"", "Observation: the period"),
            ("Observation = \"y\"", "Observation: the period"),
            ("Observation = \"10é\"", "Observation: the period"),
            (
                "Observation = \"99999999999999999y\"",
                "Observation: the period",
            ),
        ] {
            let e = resolve(Layer::default(), file(&format!("[retention]\n{text}\n")))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("setting retention") && e.contains(needle),
                "{text}: {e}"
            );
        }
        // A number instead of a string is a parse error naming the line.
        let e = parse_file(Path::new("t.toml"), "[retention]\nObservation = 10\n").unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
    }

    #[test]
    fn missing_explicit_file_is_an_error() {
        let err = load_file(Some(Path::new("/nonexistent/phivault.toml"))).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }));
        assert!(std::error::Error::source(&err).is_some());
    }

    #[test]
    fn passwords_are_masked() {
        assert_eq!(
            mask_password("postgres://pv:s3cret@db:5432/pv?sslmode=require"),
            "postgres://pv:***@db:5432/pv?sslmode=require"
        );
        assert_eq!(mask_password("postgres://pv@db/pv"), "postgres://pv@db/pv");
        assert_eq!(
            mask_password("sqlite:///srv/a@b:c/x.db"),
            "sqlite:///srv/a@b:c/x.db"
        );
        let s = resolve(
            Layer {
                database_url: Some("postgres://u:p4ss@h/d".into()),
                ..Layer::default()
            },
            Layer::default(),
        )
        .unwrap();
        assert!(!s.to_toml().contains("p4ss"));
        // The printed settings read back as the same settings.
        let again = resolve(Layer::default(), file(&s.to_toml().replace("***", "p4ss"))).unwrap();
        assert_eq!(again.database_url, s.database_url);
        assert_eq!(again.listen, s.listen);
    }
}
