//! `phivault client add|list|disable|rotate-secret`: OAuth2 client registration.
//!
//! Secrets are printed once, on stdout, only after the registration and its audit entry
//! committed. A `--jwks-url` is fetched here, at registration (https, 10 s, 64 KiB at most),
//! and the keys stored with the client: the server never fetches keys while serving, so a
//! client's key server cannot slow or steer the token endpoint (and the server makes no
//! outbound requests an attacker could aim).

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use phivault_auth::{ClientRegistration, ClientType};
use phivault_policy::ScopeSet;
use serde_json::json;

use crate::admin::{audited, close, open, parse_id};
use crate::cli::{ClientAddArgs, ClientCommand, StorageArgs};
use crate::cli_audit::CliAudit;
use crate::config::Settings;

/// Largest JWKS fetched from a `--jwks-url`.
const MAX_JWKS_BYTES: usize = 64 * 1024;

/// Runs a `client` command.
pub(crate) async fn run(
    command: ClientCommand,
    settings: &dyn Fn(&StorageArgs) -> Result<Settings>,
) -> Result<ExitCode> {
    match command {
        ClientCommand::Add(args) => add(&args, settings(&args.storage)?).await?,
        ClientCommand::List(args) => {
            let json = match args.format.as_str() {
                "text" => false,
                "json" => true,
                other => bail!("--format must be text or json, not {other}"),
            };
            let opened = open(&settings(&args.storage)?).await?;
            let result = opened.0.list_clients().await.context("listing the clients");
            close(opened).await;
            print_clients(&result?, json)?;
        }
        ClientCommand::Disable(args) => {
            let opened = open(&settings(&args.storage)?).await?;
            let disable = async |audit: &CliAudit| {
                opened
                    .0
                    .disable_client(&args.client_id, audit)
                    .await
                    .with_context(|| format!("disabling client {}", args.client_id))
            };
            let result = audited(&opened, "client disable", None, disable).await;
            close(opened).await;
            result?;
            eprintln!(
                "phivault: client {} disabled: its tokens are refused from the next request on",
                args.client_id
            );
        }
        ClientCommand::RotateSecret(args) => {
            let opened = open(&settings(&args.storage)?).await?;
            let rotate = async |audit: &CliAudit| {
                opened
                    .0
                    .rotate_client_secret(&args.client_id, audit)
                    .await
                    .with_context(|| format!("rotating the secret of client {}", args.client_id))
            };
            let result = audited(&opened, "client rotate-secret", None, rotate).await;
            close(opened).await;
            let secret = result?;
            let mut out = std::io::stdout().lock();
            writeln!(out, "client_id: {}", args.client_id)?;
            writeln!(out, "client_secret: {}", secret.expose())?;
            out.flush()?;
            eprintln!("phivault: the new client secret is shown once; the old one no longer works");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The type and launch patient of `client add`'s arguments, checked before anything opens.
fn check_add(args: &ClientAddArgs) -> Result<(ClientType, Option<phivault_fhir::Id>)> {
    let client_type = ClientType::parse(&args.client_type).ok_or_else(|| {
        anyhow!(
            "--type must be public, confidential-jwt or confidential-secret, not {}",
            args.client_type
        )
    })?;
    if args.name.trim().is_empty() {
        bail!("--name must not be empty");
    }
    let scopes = ScopeSet::parse(&args.scope).map_err(|e| anyhow!("--scope: {e}"))?;
    if scopes.data_scopes().is_empty() {
        bail!("--scope names no data scope (e.g. \"system/*.rs\" or \"patient/Observation.rs\")");
    }
    if client_type == ClientType::Public && args.redirect_uris.is_empty() {
        bail!("a public client needs --redirect-uri (it can only use the authorization code flow)");
    }
    if client_type == ClientType::ConfidentialJwt && args.jwks.is_none() && args.jwks_url.is_none()
    {
        bail!("a confidential-jwt client needs its public keys: --jwks FILE or --jwks-url URL");
    }
    let launch_patient = args
        .launch_patient
        .as_deref()
        .map(|p| parse_id(p, "launch patient"))
        .transpose()?;
    Ok((client_type, launch_patient))
}

async fn add(args: &ClientAddArgs, settings: Settings) -> Result<()> {
    let (client_type, launch_patient) = check_add(args)?;
    let jwks = match (&args.jwks, &args.jwks_url) {
        (Some(path), _) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading the JWKS {}", path.display()))?,
        ),
        (None, Some(url)) => Some(fetch_jwks(url).await?),
        (None, None) => None,
    };
    let registration = ClientRegistration {
        name: args.name.clone(),
        client_type,
        scopes: args.scope.clone(),
        redirect_uris: args.redirect_uris.clone(),
        jwks,
        jwks_url: args.jwks_url.clone(),
        launch_patient,
    };
    let opened = open(&settings).await?;
    let create = async |audit: &CliAudit| {
        opened
            .0
            .register_client(&registration, audit)
            .await
            .context("registering the client")
    };
    // The secret is shown only once the registration and its entry have committed.
    let result = audited(&opened, "client add", None, create).await;
    close(opened).await;
    let (client_id, secret) = result?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "client_id: {client_id}")?;
    if let Some(secret) = &secret {
        writeln!(out, "client_secret: {}", secret.expose())?;
    }
    out.flush()?;
    if secret.is_some() {
        eprintln!("phivault: the client secret is shown once; store it now");
    }
    Ok(())
}

/// Fetches a JWKS over https (never plain http: the keys decide who may act as the client).
async fn fetch_jwks(url: &str) -> Result<String> {
    if !url.starts_with("https://") {
        bail!("--jwks-url must be an https URL");
    }
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .context("making an HTTPS client")?;
    let mut response = client
        .get(url)
        .send()
        .await
        .context("fetching the JWKS")?
        .error_for_status()
        .context("fetching the JWKS")?;
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.context("reading the JWKS")? {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_JWKS_BYTES {
            bail!("the JWKS at --jwks-url is larger than {MAX_JWKS_BYTES} bytes");
        }
    }
    String::from_utf8(body).context("the JWKS is not UTF-8")
}

fn print_clients(clients: &[phivault_auth::OAuthClient], as_json: bool) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if as_json {
        let list: Vec<_> = clients
            .iter()
            .map(|c| {
                json!({
                    "client_id": c.client_id,
                    "name": c.name,
                    "type": c.client_type.as_str(),
                    "scope": c.scopes,
                    "redirect_uris": c.redirect_uris,
                    "jwks_url": c.jwks_url,
                    "created_at": c.created_at,
                    "disabled_at": c.disabled_at,
                })
            })
            .collect();
        writeln!(out, "{}", serde_json::to_string_pretty(&list)?)?;
    } else {
        writeln!(out, "client_id\ttype\tstatus\tname\tscope\tredirect_uris")?;
        for c in clients {
            writeln!(
                out,
                "{}\t{}\t{}\t{}\t{}\t{}",
                c.client_id,
                c.client_type.as_str(),
                if c.disabled_at.is_some() {
                    "disabled"
                } else {
                    "enabled"
                },
                c.name.replace(['\t', '\n'], " "),
                c.scopes,
                c.redirect_uris.join(" ")
            )?;
        }
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn args(kind: &str, scope: &str, launch: Option<&str>) -> ClientAddArgs {
        ClientAddArgs {
            name: "app".to_owned(),
            client_type: kind.to_owned(),
            scope: scope.to_owned(),
            redirect_uris: Vec::new(),
            jwks: None,
            jwks_url: None,
            launch_patient: launch.map(str::to_owned),
            storage: StorageArgs::default(),
        }
    }

    #[test]
    fn client_arguments() {
        let secret = "confidential-secret";
        let (kind, launch) = check_add(&args(secret, "system/*.cruds", None)).unwrap();
        assert_eq!(kind, ClientType::ConfidentialSecret);
        assert!(launch.is_none());
        let (_, launch) = check_add(&args(secret, "patient/Observation.rs", Some("p1"))).unwrap();
        assert_eq!(launch.unwrap().to_string(), "p1");
        assert!(check_add(&args(secret, "system/Foo.r", None)).is_err());
        assert!(check_add(&args(secret, "openid", None)).is_err());
        assert!(check_add(&args(secret, "system/*.rs", Some("a b"))).is_err());
        assert!(check_add(&args("confidential", "system/*.rs", None)).is_err());
        // A public client needs a redirect URI; a key client needs keys.
        assert!(check_add(&args("public", "patient/*.rs", None)).is_err());
        let mut public = args("public", "patient/*.rs", None);
        public.redirect_uris = vec!["https://app.example/cb".to_owned()];
        assert_eq!(check_add(&public).unwrap().0, ClientType::Public);
        assert!(check_add(&args("confidential-jwt", "system/*.rs", None)).is_err());
    }
}
