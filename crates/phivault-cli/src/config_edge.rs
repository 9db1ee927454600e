//! The `[edge]` table of `phivault.toml`: how the server meets the network (file only).
//!
//! - `trusted_proxies`: CIDR ranges (or single addresses) of reverse proxies whose
//!   `X-Forwarded-For` names the client for the login and token limits; default none (the
//!   peer is the client). List only proxies you run: any listed peer can claim any address.
//! - `max_concurrent_password_hashes`: argon2id runs at once (each a core for tens of
//!   milliseconds and 19 MiB); default half the cores, at least 1. Further logins wait.
//! - `require_patient_totp`: patient accounts, like staff, must confirm TOTP before their
//!   sessions can do anything else; default false (patients may still enrol).

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
}

/// `[edge]` resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EdgeSettings {
    pub(crate) trusted_proxies: Vec<IpNet>,
    pub(crate) max_concurrent_password_hashes: usize,
    pub(crate) require_patient_totp: bool,
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
        Ok(EdgeSettings {
            trusted_proxies,
            max_concurrent_password_hashes,
            require_patient_totp: self.require_patient_totp.unwrap_or(false),
        })
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
             require_patient_totp = {}\n",
            proxies.join(", "),
            self.max_concurrent_password_hashes,
            self.require_patient_totp
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
        }
        .resolve()
        .unwrap();
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
        for bad in [
            EdgeLayer {
                trusted_proxies: Some(vec!["proxy.example".into()]),
                ..EdgeLayer::default()
            },
            EdgeLayer {
                max_concurrent_password_hashes: Some(0),
                ..EdgeLayer::default()
            },
        ] {
            assert!(bad.resolve().is_err());
        }
    }
}
