//! The `phivault` binary: parses the command line, wires the library crates together and
//! turns failures into one clear line on stderr and a non-zero exit status.
//!
//! Everything with behaviour lives in the library crates (`phivault-store`, `phivault-fhir`,
//! `phivault-server`, ...); the modules here read settings and report.

mod admin;
mod alerts_cmd;
mod audit_cmd;
mod backup_cmd;
mod bench;
mod bench_backup;
mod bench_cluster;
mod bench_gate;
mod bench_http;
mod bench_import;
mod bench_server;
mod breach_cmd;
mod breach_notify;
mod cli;
mod cli_audit;
mod client_cmd;
mod commands;
mod config;
mod config_cluster;
mod config_database;
mod config_edge;
mod deidentify;
mod export_patient;
mod hardening;
mod import;
mod keys_cmd;
mod loadgen;
mod population;
mod research_projects;
mod synth;
mod synthea;

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

fn main() -> ExitCode {
    // Before anything is read or created: owner-only files, no core dumps.
    for failure in hardening::harden() {
        eprintln!("phivault: warning: {failure}");
    }
    let invocation = cli::Invocation::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("phivault: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        match invocation.command {
            cli::TopCommand::Core(command) => {
                commands::run(cli::Cli {
                    config: invocation.config,
                    command,
                })
                .await
            }
            cli::TopCommand::Audit(command) => {
                audit_cmd::run(invocation.config.as_deref(), command).await
            }
            cli::TopCommand::Backup(command) => {
                backup_cmd::run_backup(invocation.config.as_deref(), command).await
            }
            cli::TopCommand::Restore(args) => {
                backup_cmd::run_restore(invocation.config.as_deref(), args).await
            }
            cli::TopCommand::Keys(command) => {
                keys_cmd::run(invocation.config.as_deref(), command).await
            }
            other => admin::run(invocation.config.as_deref(), other).await,
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(5));
    match outcome {
        Ok(code) => code,
        Err(error) => {
            eprintln!("phivault: error: {}", one_line(&error));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, `outer: inner: cause`. A cause whose text its
/// wrapper already ends with is not repeated. Contexts name files and steps, never resource
/// content or key material.
fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        let text = text.trim();
        if text.is_empty() || line.ends_with(text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(text);
    }
    line.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_chain_on_one_line_without_repeats() {
        let io = std::io::Error::new(std::io::ErrorKind::AddrInUse, "in use");
        #[derive(Debug)]
        struct Wrap(std::io::Error);
        impl std::fmt::Display for Wrap {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "listening on x: {}", self.0)
            }
        }
        impl std::error::Error for Wrap {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let error = anyhow::Error::new(Wrap(io)).context("serving\nnow");
        assert_eq!(one_line(&error), "serving now: listening on x: in use");
    }
}
