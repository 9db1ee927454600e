//! The `[cluster]` table of `phivault.toml`: how a node takes part in a cluster of nodes
//! serving one PostgreSQL database (file only; a single node needs none of it).
//!
//! - `node_id`: the node's name in the logs; default `<host name>-<process id>`. Letters,
//!   digits, `.`, `_` and `-`, at most 64 (it is logged, so it must not carry anything else).
//! - `checkpoint_interval_secs`: how often the leading node signs an audit checkpoint when
//!   entries were added (also every 10,000 entries); default 60 (1 to 86400). Measured from
//!   the trail's last checkpoint, so a node taking over from one that died signs within one
//!   interval of the last checkpoint.

use std::time::Duration;

use serde::Deserialize;

use crate::config::ConfigError;

/// `[cluster]` as written in the file; `None` means "not set here".
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClusterLayer {
    pub(crate) node_id: Option<String>,
    pub(crate) checkpoint_interval_secs: Option<u64>,
}

/// `[cluster]` resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClusterSettings {
    /// As configured; None: derived from the host and process when serving starts.
    pub(crate) node_id: Option<String>,
    pub(crate) checkpoint_interval: Duration,
}

impl ClusterLayer {
    /// Each key from `upper` when set there, else from `lower` (`--node-id` overrides the
    /// file's node id and keeps its other keys).
    pub(crate) fn merge(upper: Option<Self>, lower: Option<Self>) -> Option<Self> {
        match (upper, lower) {
            (Some(u), Some(l)) => Some(ClusterLayer {
                node_id: u.node_id.or(l.node_id),
                checkpoint_interval_secs: u.checkpoint_interval_secs.or(l.checkpoint_interval_secs),
            }),
            (u, l) => u.or(l),
        }
    }

    /// Checks the values and fills in the defaults.
    pub(crate) fn resolve(self) -> Result<ClusterSettings, ConfigError> {
        let node_id = match self.node_id {
            None => None,
            Some(id) => {
                if !phivault_server::is_node_id(&id) {
                    return Err(ConfigError::Invalid {
                        key: "cluster.node_id",
                        message: "must be 1 to 64 letters, digits, '.', '_' or '-'".to_owned(),
                    });
                }
                Some(id)
            }
        };
        let default_interval = phivault_server::NodeSettings::default().checkpoint_interval;
        let checkpoint_interval = match self.checkpoint_interval_secs {
            None => default_interval,
            Some(n) if (1..=86_400).contains(&n) => Duration::from_secs(n),
            Some(_) => {
                return Err(ConfigError::Invalid {
                    key: "cluster.checkpoint_interval_secs",
                    message: "must be between 1 and 86400 seconds".to_owned(),
                });
            }
        };
        Ok(ClusterSettings {
            node_id,
            checkpoint_interval,
        })
    }
}

impl ClusterSettings {
    /// What the server is given.
    pub(crate) fn node(&self) -> phivault_server::NodeSettings {
        phivault_server::NodeSettings {
            node_id: self
                .node_id
                .clone()
                .unwrap_or_else(phivault_server::default_node_id),
            checkpoint_interval: self.checkpoint_interval,
        }
    }

    /// The `[cluster]` table as TOML (a node id left to its default is not written: it is
    /// derived anew by each process).
    pub(crate) fn to_toml(&self) -> String {
        let mut out = String::from("\n[cluster]\n");
        if let Some(id) = &self.node_id {
            out.push_str(&format!("node_id = \"{id}\"\n"));
        }
        out.push_str(&format!(
            "checkpoint_interval_secs = {}\n",
            self.checkpoint_interval.as_secs()
        ));
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn defaults_values_and_mistakes() {
        let d = ClusterLayer::default().resolve().unwrap();
        assert_eq!(d.node_id, None);
        assert_eq!(d.checkpoint_interval, Duration::from_secs(60));
        assert!(d.node().node_id.contains('-'), "host-pid by default");
        let s = ClusterLayer {
            node_id: Some("node-2.eu_west".into()),
            checkpoint_interval_secs: Some(5),
        }
        .resolve()
        .unwrap();
        assert_eq!(s.node().node_id, "node-2.eu_west");
        assert_eq!(s.node().checkpoint_interval, Duration::from_secs(5));
        assert_eq!(
            s.to_toml(),
            "\n[cluster]\nnode_id = \"node-2.eu_west\"\ncheckpoint_interval_secs = 5\n"
        );
        let merged = ClusterLayer::merge(
            Some(ClusterLayer {
                node_id: Some("flag".into()),
                checkpoint_interval_secs: None,
            }),
            Some(ClusterLayer {
                node_id: Some("file".into()),
                checkpoint_interval_secs: Some(9),
            }),
        )
        .unwrap();
        assert_eq!(
            (merged.node_id.as_deref(), merged.checkpoint_interval_secs),
            (Some("flag"), Some(9))
        );
        for bad in [
            ClusterLayer {
                node_id: Some(String::new()),
                ..ClusterLayer::default()
            },
            ClusterLayer {
                node_id: Some("a\nb".into()),
                ..ClusterLayer::default()
            },
            ClusterLayer {
                node_id: Some("x".repeat(65)),
                ..ClusterLayer::default()
            },
            ClusterLayer {
                checkpoint_interval_secs: Some(0),
                ..ClusterLayer::default()
            },
        ] {
            assert!(bad.clone().resolve().is_err(), "{bad:?}");
        }
    }
}
