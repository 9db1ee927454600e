//! The `[edge]` table of `phivault.toml`: how the server meets the network (file only).
//!
//! - `trusted_proxies`: CIDR ranges (or single addresses) of reverse proxies whose
//!   `X-Forwarded-For` names the client for the login and token limits; default none (the
//!   peer is the client). List only proxies you run: any listed peer can claim any address.
//! - `max_concurrent_password_hashes`: argon2id runs at once (each a core for tens of
//!   milliseconds and 19 MiB); default half the cores, at least 1. Further logins wait.
//! - `require_patient_totp`: patient accounts, like staff, must confirm TOTP before their
//!   sessions can do anything else; default false (patients may still enrol).
//! - `header_read_timeout_secs`: seconds for the TLS handshake and for each request head;
//!   also how long a kept-alive connection may wait idle for its next request; default 10.
//! - `body_read_timeout_secs`: seconds to read a request body once its head is in; default 30.
//! - `max_connections`: open connections at once; default 1024.
//! - `max_connections_per_address`: open connections at once from one client address (IPv6:
//!   one /64); default 64. Behind a reverse proxy every client is the proxy's address.
//! - `refusal_window_secs`: refused unauthenticated requests (no or invalid bearer token) are
//!   audited in full once per client address per window, counted otherwise, and summarised in
//!   one entry per address at the window's end; default 60 (1 to 86400). A `kill -9` loses at
//!   most one window of counts.
//! - `refusal_max_addresses`: client addresses tracked per window; requests from further
//!   addresses go to one overflow summary (a count and a sample of addresses); default 10000.
//! - `bulk_export_max_resources`, `bulk_export_max_bytes`: the most resources and NDJSON
//!   bytes one Bulk Data export may hold in memory (a larger export is refused with 400);
//!   defaults 100000 and 268435456 (256 MiB).
//! - `bulk_export_max_jobs`: exports held in memory at once (429 beyond); default 16.
//! - `bulk_export_expiry_secs`: how long a finished export stays downloadable; default 3600
//!   (1 to 86400).

use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use crate::config::ConfigError;

/// `[edge]` as written in the file; `None` means "not set here".
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EdgeLayer {
    pub(crate) trusted_proxies: Option<Vec<String>>,
    pub(crate) max_concurrent_password_hashes: Option<usize>,
    pub(crate) require_patient_totp: Option<bool>,
    pub(crate) header_read_timeout_secs: Option<u64>,
    pub(crate) body_read_timeout_secs: Option<u64>,
    pub(crate) max_connections: Option<usize>,
    pub(crate) max_connections_per_address: Option<usize>,
    pub(crate) refusal_window_secs: Option<u64>,
    pub(crate) refusal_max_addresses: Option<usize>,
    pub(crate) bulk_export_max_resources: Option<usize>,
    pub(crate) bulk_export_max_bytes: Option<usize>,
    pub(crate) bulk_export_max_jobs: Option<usize>,
    pub(crate) bulk_export_expiry_secs: Option<u64>,
}

/// `[edge]` resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EdgeSettings {
    pub(crate) trusted_proxies: Vec<IpNet>,
    pub(crate) max_concurrent_password_hashes: usize,
    pub(crate) require_patient_totp: bool,
    /// Connection caps and slow-client timeouts.
    pub(crate) limits: phivault_server::ConnectionLimits,
    /// How refused unauthenticated requests are aggregated in the audit trail.
    pub(crate) refusals: phivault_server::RefusalLimits,
    /// Bounds on Bulk Data exports held in memory.
    pub(crate) bulk: phivault_server::BulkLimits,
}

impl EdgeLayer {
    /// Checks the values and fills in the defaults.
    pub(crate) fn resolve(self) -> Result<EdgeSettings, ConfigError> {
        let mut trusted_proxies = Vec::new();
        for text in self.trusted_proxies.unwrap_or_default() {
            let text = text.trim();
            let net = text
                .parse::<IpNet>()
                .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| ConfigError::Invalid {
                    key: "edge.trusted_proxies",
                    message: format!(
                        "`{}` is not an IP address or CIDR range",
                        text.chars().take(60).collect::<String>()
                    ),
                })?;
            trusted_proxies.push(net);
        }
        let max_concurrent_password_hashes = self
            .max_concurrent_password_hashes
            .unwrap_or_else(phivault_auth::default_hash_concurrency);
        if max_concurrent_password_hashes == 0 {
            return Err(ConfigError::Invalid {
                key: "edge.max_concurrent_password_hashes",
                message: "must be at least 1".to_owned(),
            });
        }
        let defaults = phivault_server::ConnectionLimits::default();
        let limits = phivault_server::ConnectionLimits {
            header_read_timeout: seconds(
                "edge.header_read_timeout_secs",
                self.header_read_timeout_secs,
                defaults.header_read_timeout,
            )?,
            body_read_timeout: seconds(
                "edge.body_read_timeout_secs",
                self.body_read_timeout_secs,
                defaults.body_read_timeout,
            )?,
            max_connections: at_least_one(
                "edge.max_connections",
                self.max_connections,
                defaults.max_connections,
            )?,
            max_connections_per_address: at_least_one(
                "edge.max_connections_per_address",
                self.max_connections_per_address,
                defaults.max_connections_per_address,
            )?,
        };
        let refusal_defaults = phivault_server::RefusalLimits::default();
        let refusals = phivault_server::RefusalLimits {
            window: seconds(
                "edge.refusal_window_secs",
                self.refusal_window_secs,
                refusal_defaults.window,
            )?,
            max_addresses: at_least_one(
                "edge.refusal_max_addresses",
                self.refusal_max_addresses,
                refusal_defaults.max_addresses,
            )?,
        };
        let bulk_defaults = phivault_server::BulkLimits::default();
        let bulk = phivault_server::BulkLimits {
            max_resources: at_least_one(
                "edge.bulk_export_max_resources",
                self.bulk_export_max_resources,
                bulk_defaults.max_resources,
            )?,
            max_bytes: at_least_one(
                "edge.bulk_export_max_bytes",
                self.bulk_export_max_bytes,
                bulk_defaults.max_bytes,
            )?,
            max_jobs: at_least_one(
                "edge.bulk_export_max_jobs",
                self.bulk_export_max_jobs,
                bulk_defaults.max_jobs,
            )?,
            expiry: seconds(
                "edge.bulk_export_expiry_secs",
                self.bulk_export_expiry_secs,
                bulk_defaults.expiry,
            )?,
        };
        Ok(EdgeSettings {
            trusted_proxies,
            max_concurrent_password_hashes,
            require_patient_totp: self.require_patient_totp.unwrap_or(false),
            limits,
            refusals,
            bulk,
        })
    }
}

/// A timeout in whole seconds, 1 to one day (0 would refuse every request).
fn seconds(
    key: &'static str,
    value: Option<u64>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match value {
        None => Ok(default),
        Some(n) if (1..=86_400).contains(&n) => Ok(Duration::from_secs(n)),
        Some(_) => Err(ConfigError::Invalid {
            key,
            message: "must be between 1 and 86400 seconds".to_owned(),
        }),
    }
}

/// A cap of at least 1 (0 would refuse every connection).
fn at_least_one(
    key: &'static str,
    value: Option<usize>,
    default: usize,
) -> Result<usize, ConfigError> {
    match value {
        None => Ok(default),
        Some(0) => Err(ConfigError::Invalid {
            key,
            message: "must be at least 1".to_owned(),
        }),
        Some(n) => Ok(n),
    }
}

impl EdgeSettings {
    /// The `[edge]` table as TOML.
    pub(crate) fn to_toml(&self) -> String {
        let proxies: Vec<String> = self
            .trusted_proxies
            .iter()
            .map(|n| format!("\"{n}\""))
            .collect();
        format!(
            "\n[edge]\ntrusted_proxies = [{}]\nmax_concurrent_password_hashes = {}\n\
             require_patient_totp = {}\nheader_read_timeout_secs = {}\n\
             body_read_timeout_secs = {}\nmax_connections = {}\n\
             max_connections_per_address = {}\nrefusal_window_secs = {}\n\
             refusal_max_addresses = {}\nbulk_export_max_resources = {}\n\
             bulk_export_max_bytes = {}\nbulk_export_max_jobs = {}\n\
             bulk_export_expiry_secs = {}\n",
            proxies.join(", "),
            self.max_concurrent_password_hashes,
            self.require_patient_totp,
            self.limits.header_read_timeout.as_secs(),
            self.limits.body_read_timeout.as_secs(),
            self.limits.max_connections,
            self.limits.max_connections_per_address,
            self.refusals.window.as_secs(),
            self.refusals.max_addresses,
            self.bulk.max_resources,
            self.bulk.max_bytes,
            self.bulk.max_jobs,
            self.bulk.expiry.as_secs()
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn defaults_values_and_mistakes() {
        let d = EdgeLayer::default().resolve().unwrap();
        assert!(d.trusted_proxies.is_empty());
        assert!(d.max_concurrent_password_hashes >= 1);
        let s = EdgeLayer {
            trusted_proxies: Some(vec![
                "10.0.0.0/8".into(),
                " 192.0.2.7 ".into(),
                "::1".into(),
            ]),
            max_concurrent_password_hashes: Some(3),
            require_patient_totp: Some(true),
            header_read_timeout_secs: Some(2),
            max_connections_per_address: Some(5),
            refusal_window_secs: Some(2),
            refusal_max_addresses: Some(7),
            bulk_export_max_resources: Some(50),
            bulk_export_expiry_secs: Some(60),
            ..EdgeLayer::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(s.bulk.max_resources, 50);
        assert_eq!(s.bulk.expiry, Duration::from_secs(60));
        assert_eq!(
            s.bulk.max_jobs,
            phivault_server::BulkLimits::default().max_jobs
        );
        assert!(s.to_toml().contains("bulk_export_max_resources = 50\n"));
        assert_eq!(s.refusals.window, Duration::from_secs(2));
        assert_eq!(s.refusals.max_addresses, 7);
        assert_eq!(d.refusals, phivault_server::RefusalLimits::default());
        assert!(
            s.to_toml()
                .contains("refusal_window_secs = 2\nrefusal_max_addresses = 7\n")
        );
        assert_eq!(
            s.trusted_proxies,
            vec![
                "10.0.0.0/8".parse::<IpNet>().unwrap(),
                "192.0.2.7/32".parse().unwrap(),
                "::1/128".parse().unwrap()
            ]
        );
        assert_eq!(s.max_concurrent_password_hashes, 3);
        assert!(s.require_patient_totp);
        assert!(!d.require_patient_totp);
        assert!(s.to_toml().contains("\"192.0.2.7/32\""));
        assert_eq!(s.limits.header_read_timeout, Duration::from_secs(2));
        assert_eq!(s.limits.max_connections_per_address, 5);
        assert_eq!(s.limits.max_connections, 1024);
        assert_eq!(d.limits, phivault_server::ConnectionLimits::default());
        assert!(s.to_toml().contains("header_read_timeout_secs = 2\n"));
        for bad in [
            EdgeLayer {
                trusted_proxies: Some(vec!["proxy.example".into()]),
                ..EdgeLayer::default()
            },
            EdgeLayer {
                max_concurrent_password_hashes: Some(0),
                ..EdgeLayer::default()
            },
            EdgeLayer {
                header_read_timeout_secs: Some(0),
                ..EdgeLayer::default()
            },
            EdgeLayer {
                max_connections_per_address: Some(0),
                ..EdgeLayer::default()
            },
            EdgeLayer {
                refusal_window_secs: Some(0),
                ..EdgeLayer::default()
            },
            EdgeLayer {
                refusal_max_addresses: Some(0),
                ..EdgeLayer::default()
            },
            EdgeLayer {
                bulk_export_max_jobs: Some(0),
                ..EdgeLayer::default()
            },
            EdgeLayer {
                bulk_export_expiry_secs: Some(0),
                ..EdgeLayer::default()
            },
        ] {
            assert!(bad.resolve().is_err());
        }
    }
}
