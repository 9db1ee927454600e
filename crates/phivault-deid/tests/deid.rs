//! The de-identification engine end to end, on Synthea-shaped patients with an identifier of
//! every HIPAA Safe Harbor class planted: what the presets release (and what they must not),
//! pseudonyms, date shifting, risk and suppression, configuration files.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "deid/common.rs"]
mod common;
#[path = "deid/config.rs"]
mod config;
#[path = "deid/dates.rs"]
mod dates;
#[path = "deid/pseudonyms.rs"]
mod pseudonyms;
#[path = "deid/risk.rs"]
mod risk;
#[path = "deid/safe_harbor.rs"]
mod safe_harbor;
#[path = "deid/synthea.rs"]
mod synthea;
