//! Test kit of phivault (dev-only): helpers that start the real `phivault` binary and talk
//! HTTPS to it, fixtures, and the tools the end-to-end suites need.
//!
//! What it owns:
//! - [`Backend`] and [`backends`]: the storage suites run once on SQLite and, when
//!   `PHIVAULT_TEST_DATABASE_URL` is set, once more on PostgreSQL, each server instance in a
//!   fresh schema ([`PgSchema`]) dropped afterwards;
//! - [`Server`]: `phivault serve` on port 0 in a temporary data directory, its stdout contract
//!   parsed (CA certificate, listening URL; no token is ever printed), its output drained in
//!   the background ([`Server::stderr_text`]), a [`reqwest`] client that trusts only the
//!   server's generated CA, SIGKILL ([`Server::kill`]) and restart on the same data. After
//!   each start the kit provisions a system app (`phivault client add --scope system/*.cruds`
//!   on the same storage, then `POST /oauth/token`), whose access token is [`Server::token`]:
//!   the storage suites run with full system access;
//! - identities ([`Server::create_user`], [`Server::login`], [`Server::enrol_totp`],
//!   [`Server::staff_session`], [`Server::client_token`], [`totp_code`]): accounts and OAuth2
//!   clients made with the binary's own `user` and `client` commands, sessions and tokens
//!   obtained over HTTPS;
//! - [`Api`] and [`Resp`]: authenticated FHIR requests and assertions on OperationOutcomes;
//! - [`Forwarder`]: a TCP forwarder between the server and PostgreSQL, to take the database
//!   away and give it back;
//! - [`Marker`] and the byte scanners: unique strings to find plaintext PHI at rest;
//! - [`fixtures`]: FHIR resources and Bundles;
//! - [`oauth`]: SMART App Launch driven from outside: a form-driving [`Browser`], PKCE,
//!   authorization requests, the token endpoint, `private_key_jwt` keys and bad assertions,
//!   clients registered with `phivault client add --type`.
//!
//! Everything here is test code: failures panic with a message that says what was expected
//! and includes the server's stderr where it helps.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod api;
mod backend;
pub mod fixtures;
mod forwarder;
mod identity;
mod markers;
pub mod oauth;
mod private_pg;
mod server;

pub use api::{Api, Resp, next_link, query, search_matches};
pub use backend::{Backend, DATABASE_URL_ENV, PgSchema, backends, postgres_target, with_host};
pub use forwarder::Forwarder;
pub use identity::{
    Account, CliOutput, LoginAnswer, SYSTEM_SCOPE, TOTP_STEP_SECS, TotpEnrolled, random_password,
    random_username, totp_code, totp_secret_bytes, totp_step, unix_now,
};
pub use markers::{Finding, Marker, random_u64, scan_bytes, scan_dir};
pub use oauth::{
    AuthorizeUrl, BadAssertion, Browser, ClientAuth, ClientKey, ClientSpec, Decision, OAuthHttp,
    Pkce, RegisteredClient,
};
pub use private_pg::PrivatePostgres;
pub use server::{PHIVAULT_ENV, Server};
