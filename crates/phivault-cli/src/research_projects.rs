//! `[[research_projects]]` of `phivault.toml` (file only): the de-identified Bulk Data
//! exports (`$export?deidentification=<name>`) researchers and research apps may run.
//!
//! ```toml
//! [[research_projects]]
//! name = "cardio-2026"                               # what clients name in the export
//! deidentification = "/etc/phivault/cardio.toml"     # the de-identification configuration;
//!                                                    # its key_file names the project key
//! k = 5                                              # optional: withhold patients in
//!                                                    # quasi-identifier classes below 5
//! ```
//!
//! Names are checked when the configuration is read; the configuration and key files are
//! read, and every mistake in them reported, when the server starts (it refuses to start
//! rather than run a project it cannot apply).

use std::path::PathBuf;

use anyhow::{Context, Result, anyhow};
use phivault_deid::{Config, Deidentifier, ProjectKey};
use phivault_server::{ResearchProject, ResearchProjects};
use serde::Deserialize;

use crate::config::ConfigError;

/// One `[[research_projects]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ResearchProjectSetting {
    pub(crate) name: String,
    pub(crate) deidentification: PathBuf,
    pub(crate) k: Option<usize>,
}

/// Checks names (unique, 1 to 64 of letters, digits, `-`, `_`, `.`) and `k` (at least 1).
pub(crate) fn check_research_projects(
    projects: Vec<ResearchProjectSetting>,
) -> Result<Vec<ResearchProjectSetting>, ConfigError> {
    let invalid = |message: String| ConfigError::Invalid {
        key: "research_projects",
        message,
    };
    for (i, p) in projects.iter().enumerate() {
        ResearchProject::check_name(&p.name).map_err(invalid)?;
        if projects[..i].iter().any(|q| q.name == p.name) {
            return Err(invalid(format!("two projects are named `{}`", p.name)));
        }
        if p.k == Some(0) {
            return Err(invalid(format!("{}: k must be at least 1", p.name)));
        }
    }
    Ok(projects)
}

/// Reads each project's configuration and key into its engine (ages counted at
/// `reference_year`).
pub(crate) fn load(
    projects: &[ResearchProjectSetting],
    reference_year: i32,
) -> Result<ResearchProjects> {
    let mut out = Vec::with_capacity(projects.len());
    for p in projects {
        let config = Config::load(&p.deidentification)
            .with_context(|| format!("research project {}", p.name))?;
        let key_file = config.key_file.clone().ok_or_else(|| {
            anyhow!(
                "research project {}: {} names no key_file (the project key: create one with \
                 `phivault deidentify --new-key FILE`)",
                p.name,
                p.deidentification.display()
            )
        })?;
        let key =
            ProjectKey::load(&key_file).with_context(|| format!("research project {}", p.name))?;
        let engine = Deidentifier::new(config, key, reference_year);
        out.push(ResearchProject::new(&p.name, engine, p.k)?);
    }
    Ok(ResearchProjects::new(out)?)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn setting(name: &str, k: Option<usize>) -> ResearchProjectSetting {
        ResearchProjectSetting {
            name: name.to_owned(),
            deidentification: PathBuf::from("x.toml"),
            k,
        }
    }

    #[test]
    fn names_and_k_are_checked() {
        assert!(check_research_projects(vec![setting("cardio-2026", Some(5))]).is_ok());
        for bad in [
            vec![setting("", None)],
            vec![setting("a b", None)],
            vec![setting("a", None), setting("a", None)],
            vec![setting("a", Some(0))],
        ] {
            assert!(check_research_projects(bad).is_err());
        }
    }

    #[test]
    fn loading_reads_the_configuration_and_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("p.toml");
        std::fs::write(&conf, "extends = \"safe-harbor\"\nkey_file = \"p.key\"\n").unwrap();
        let missing = load(
            &[ResearchProjectSetting {
                name: "p".into(),
                deidentification: conf.clone(),
                k: None,
            }],
            2026,
        )
        .unwrap_err();
        assert!(format!("{missing:#}").contains("p.key"), "{missing:#}");
        std::fs::write(
            dir.path().join("p.key"),
            ProjectKey::generate().unwrap().as_str(),
        )
        .unwrap();
        let projects = load(
            &[ResearchProjectSetting {
                name: "p".into(),
                deidentification: conf,
                k: Some(2),
            }],
            2026,
        )
        .unwrap();
        assert!(format!("{projects:?}").contains("\"p\""));
        let nokey = dir.path().join("n.toml");
        std::fs::write(&nokey, "extends = \"safe-harbor\"\n").unwrap();
        let e = load(
            &[ResearchProjectSetting {
                name: "n".into(),
                deidentification: nokey,
                k: None,
            }],
            2026,
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("names no key_file"), "{e:#}");
    }
}
