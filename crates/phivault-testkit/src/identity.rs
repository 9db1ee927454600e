//! Accounts, sessions and tokens for the end-to-end suites: the binary's `user` and `client`
//! commands run on the server's own storage (while it runs), and the HTTP flows of login,
//! TOTP enrolment and OAuth2 client credentials.

use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use reqwest::{Method, RequestBuilder};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use crate::api::{Api, Resp};
use crate::markers::random_u64;
use crate::server::Server;

/// The scope of the system app the kit provisions after each start.
pub const SYSTEM_SCOPE: &str = "system/*.cruds";

/// Stdout prefixes of `phivault client add` (docs/CONTRACTS.md).
const CLIENT_ID_LINE: &str = "client_id: ";
const CLIENT_SECRET_LINE: &str = "client_secret: ";

/// Seconds per TOTP step.
pub const TOTP_STEP_SECS: u64 = 30;

/// What a CLI run printed.
#[derive(Debug, Clone)]
pub struct CliOutput {
    /// Exit code (`None`: killed by a signal).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl CliOutput {
    /// Asserts exit status 0; returns self.
    pub fn assert_ok(&self, what: &str) -> &Self {
        assert_eq!(
            self.code,
            Some(0),
            "{what} failed.\nstdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    /// Asserts the contract of a failure: exit status 1 and one line on stderr mentioning
    /// `mentions` (case-insensitively). Returns the line.
    pub fn assert_error(&self, what: &str, mentions: &str) -> String {
        assert_eq!(
            self.code,
            Some(1),
            "{what} must fail with exit status 1.\nstdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        let lines: Vec<&str> = self
            .stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect();
        assert_eq!(
            lines.len(),
            1,
            "{what}: an error is one line on stderr:\n{}",
            self.stderr
        );
        assert!(
            lines[0]
                .to_ascii_lowercase()
                .contains(&mentions.to_ascii_lowercase()),
            "{what}: the error should mention {mentions:?}: {}",
            lines[0]
        );
        lines[0].to_owned()
    }
}

/// A completed TOTP enrolment.
#[derive(Clone)]
pub struct TotpEnrolled {
    /// The base32 secret the server showed once.
    pub secret: String,
    /// The `otpauth://` URL the server showed once.
    pub otpauth_url: String,
    /// The recovery codes the server showed once.
    pub recovery_codes: Vec<String>,
    /// The TOTP step whose code confirmed the enrolment (spent: the next login needs a later
    /// step).
    pub confirmed_step: u64,
}

impl std::fmt::Debug for TotpEnrolled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TotpEnrolled")
            .field("recovery_codes", &self.recovery_codes.len())
            .finish_non_exhaustive()
    }
}

/// A user made and signed in by [`Server::account`] or [`Server::sign_in`].
#[derive(Clone)]
pub struct Account {
    /// Login name.
    pub username: String,
    /// Role given at creation.
    pub role: String,
    /// Password.
    pub password: String,
    /// The TOTP enrolment, when the account had to (or was asked to) enrol.
    pub totp: Option<TotpEnrolled>,
    /// A full session token.
    pub token: String,
    /// The enrolment-only session of the first login, when TOTP was enrolled.
    pub enrolment_token: Option<String>,
}

impl std::fmt::Debug for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Account")
            .field("username", &self.username)
            .field("role", &self.role)
            .field("totp", &self.totp)
            .finish_non_exhaustive()
    }
}

/// What `POST /auth/login` answered with 200.
#[derive(Debug, Clone)]
pub struct LoginAnswer {
    /// The session token.
    pub token: String,
    /// True when the session may only enrol TOTP.
    pub enrolment_only: bool,
}

impl LoginAnswer {
    /// Parses a 200 answer of `POST /auth/login` (a test failure otherwise).
    pub fn parse(r: &Resp) -> LoginAnswer {
        assert_eq!(r.status, 200, "login refused: {r:?}");
        let v = r.json();
        let token = v["token"]
            .as_str()
            .or_else(|| v["session_token"].as_str())
            .or_else(|| v["access_token"].as_str())
            .unwrap_or_else(|| panic!("login answered without a token: {r:?}"))
            .to_owned();
        let enrolment_only = [
            "enrolment_only",
            "enrolment_required",
            "totp_enrolment_required",
        ]
        .iter()
        .any(|k| v[*k].as_bool() == Some(true));
        LoginAnswer {
            token,
            enrolment_only,
        }
    }
}

/// Unix time now, seconds.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// The TOTP step of `unix` seconds.
pub fn totp_step(unix: u64) -> u64 {
    unix / TOTP_STEP_SECS
}

/// The 6-digit code of `secret_base32` for TOTP step `step` (phivault's parameters: SHA-1, 6
/// digits, 30 s). Cross-checked with `phivault_auth::Totp::verify`, the server's own verifier.
pub fn totp_code(secret_base32: &str, step: u64) -> String {
    let secret = totp_rs::Secret::try_from_base32(secret_base32)
        .unwrap_or_else(|e| panic!("the enrolment secret is not base32: {e:?}"));
    let bytes = secret.as_bytes().to_vec();
    let totp = totp_rs::Builder::new()
        .with_algorithm(totp_rs::Algorithm::SHA1)
        .with_digits(6)
        .with_skew(0)
        .with_step_duration(TOTP_STEP_SECS)
        .with_secret(bytes.as_slice())
        .with_issuer(Some("phivault"))
        .with_account_name("e2e")
        .build()
        .unwrap_or_else(|e| panic!("cannot build a TOTP generator: {e:?}"));
    let code = totp.generate(step * TOTP_STEP_SECS).to_string();
    // The server's verifier accepts it at that step (so a refusal later is the server's).
    let ours = phivault_auth::TotpSecret::from_bytes(&bytes)
        .unwrap_or_else(|e| panic!("the enrolment secret is not 20 bytes: {e}"));
    let verifier = phivault_auth::Totp::new(&ours, "e2e").expect("a TOTP verifier");
    let at = i64::try_from(step * TOTP_STEP_SECS).expect("a time in range");
    assert_eq!(
        verifier.verify(&code, at, None).ok(),
        Some(step),
        "the kit's TOTP code disagrees with phivault_auth::Totp"
    );
    code
}

/// The raw bytes of a base32 TOTP secret (to look for them at rest).
pub fn totp_secret_bytes(secret_base32: &str) -> Vec<u8> {
    totp_rs::Secret::try_from_base32(secret_base32)
        .unwrap_or_else(|e| panic!("the enrolment secret is not base32: {e:?}"))
        .as_bytes()
        .to_vec()
}

/// A password that satisfies the policy and is unique (`Pw-` and 16 random letters, then
/// digits): [`crate::Marker::code`]-like, so the at-rest scans can look for it.
pub fn random_password() -> String {
    let m = crate::Marker::code("Pw-");
    format!("{}-{}", m.text(), random_u64() % 1000)
}

impl Server {
    /// The origin of the running instance, `https://127.0.0.1:<port>` (the FHIR base without
    /// `/fhir`): where `/auth`, `/oauth`, `/admin` and `/.well-known` live.
    pub fn origin(&self) -> String {
        let base = self.base();
        let url = reqwest::Url::parse(base).unwrap_or_else(|e| panic!("bad base {base}: {e}"));
        url.origin().ascii_serialization()
    }

    /// An absolute URL at the origin: `/auth/login` -> `https://127.0.0.1:<port>/auth/login`.
    pub fn origin_url(&self, path: &str) -> String {
        format!("{}/{}", self.origin(), path.trim_start_matches('/'))
    }

    /// A request to a path at the origin (not under `/fhir`), with `bearer` when given.
    pub fn origin_request(
        &self,
        method: Method,
        path: &str,
        bearer: Option<&str>,
    ) -> RequestBuilder {
        let rb = self
            .client()
            .request(method, self.origin_url(path))
            .header(ACCEPT, "application/json");
        match bearer {
            Some(t) => rb.header(AUTHORIZATION, format!("Bearer {t}")),
            None => rb,
        }
    }

    /// The same API with another bearer token.
    pub fn api_as(&self, token: &str) -> Api {
        self.api().with_token(token)
    }

    /// Runs `phivault <args> --data-dir <data dir> [--database-url <direct url>]` (the same
    /// storage as the server, reached directly even when the server goes through a proxy),
    /// with `stdin` as its standard input.
    pub async fn cli(&self, args: &[&str], stdin: Option<&str>) -> CliOutput {
        let dir = self.data_dir().display().to_string();
        let url = self.database_url();
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--data-dir", dir.as_str()]);
        if self.backend().is_postgres() {
            all.extend(["--database-url", url.as_str()]);
        }
        self.cli_plain(&all, stdin).await
    }

    /// Runs `phivault <args>` as given (no storage options added), in the data directory,
    /// without the developer's `PHIVAULT_*` environment.
    pub async fn cli_plain(&self, args: &[&str], stdin: Option<&str>) -> CliOutput {
        let mut cmd = tokio::process::Command::new(self.bin());
        cmd.args(args)
            .current_dir(self.data_dir())
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for var in crate::server::PHIVAULT_ENV {
            cmd.env_remove(var);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.bin().display()));
        if let Some(input) = stdin {
            let mut pipe = child.stdin.take().expect("stdin is piped");
            pipe.write_all(input.as_bytes())
                .await
                .unwrap_or_else(|e| panic!("cannot write to the CLI's stdin: {e}"));
            drop(pipe);
        }
        let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("phivault {args:?} did not finish within 60 s"))
            .unwrap_or_else(|e| panic!("phivault {args:?}: {e}"));
        CliOutput {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `phivault user add --username <u> --role <role> --password-stdin` with a fresh random
    /// password, which it returns.
    pub async fn create_user(&self, username: &str, role: &str) -> String {
        let password = random_password();
        self.create_user_with_password(username, role, &password)
            .await;
        password
    }

    /// `phivault user add --username <u> --role <role> --password-stdin` with `password`.
    pub async fn create_user_with_password(&self, username: &str, role: &str, password: &str) {
        let out = self
            .cli(
                &[
                    "user",
                    "add",
                    "--username",
                    username,
                    "--role",
                    role,
                    "--password-stdin",
                ],
                Some(&format!("{password}\n")),
            )
            .await;
        out.assert_ok("phivault user add --password-stdin");
        assert!(
            !out.stdout.contains(password) && !out.stderr.contains(password),
            "user add echoes a password it was given"
        );
    }

    /// `phivault user link-patient <u> <patient id>`.
    pub async fn link_patient(&self, username: &str, patient: &str) {
        self.cli(&["user", "link-patient", username, patient], None)
            .await
            .assert_ok("phivault user link-patient");
    }

    /// `phivault user link-practitioner <u> <practitioner id>`.
    pub async fn link_practitioner(&self, username: &str, practitioner: &str) {
        self.cli(&["user", "link-practitioner", username, practitioner], None)
            .await
            .assert_ok("phivault user link-practitioner");
    }

    /// `phivault user grant <u> <patient id> [--labels a,b] [--until t]`.
    pub async fn grant(&self, username: &str, patient: &str, labels: &[&str], until: Option<&str>) {
        let joined = labels.join(",");
        let mut args = vec!["user", "grant", username, patient];
        if !labels.is_empty() {
            args.extend(["--labels", joined.as_str()]);
        }
        if let Some(u) = until {
            args.extend(["--until", u]);
        }
        self.cli(&args, None).await.assert_ok("phivault user grant");
    }

    /// `phivault client add --name <n> --scope <scope> [--launch-patient <id>]`: returns the
    /// (client id, secret) of its two stdout lines.
    pub async fn add_client(
        &self,
        name: &str,
        scope: &str,
        launch_patient: Option<&str>,
    ) -> (String, String) {
        let mut args = vec!["client", "add", "--name", name, "--scope", scope];
        if let Some(p) = launch_patient {
            args.extend(["--launch-patient", p]);
        }
        let out = self.cli(&args, None).await;
        out.assert_ok("phivault client add");
        let lines: Vec<&str> = out.stdout.lines().collect();
        assert_eq!(
            lines.len(),
            2,
            "contract: `client add` prints exactly two lines on stdout:\n{}",
            out.stdout
        );
        let id = lines[0]
            .strip_prefix(CLIENT_ID_LINE)
            .unwrap_or_else(|| panic!("contract: first line `client_id: ...`: {}", lines[0]));
        let secret = lines[1]
            .strip_prefix(CLIENT_SECRET_LINE)
            .unwrap_or_else(|| panic!("contract: second line `client_secret: ...`: {}", lines[1]));
        assert!(!id.trim().is_empty() && !secret.trim().is_empty());
        (id.trim().to_owned(), secret.trim().to_owned())
    }

    /// `POST /oauth/token` with `grant_type=client_credentials` (form); the raw answer.
    pub async fn token_request(&self, client_id: &str, secret: &str, scope: Option<&str>) -> Resp {
        let mut pairs = vec![
            ("grant_type", "client_credentials"),
            ("client_id", client_id),
            ("client_secret", secret),
        ];
        if let Some(s) = scope {
            pairs.push(("scope", s));
        }
        let body = crate::api::query("", &pairs)
            .trim_start_matches('?')
            .to_owned();
        Api::send(
            self.origin_request(Method::POST, "/oauth/token", None)
                .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(body),
        )
        .await
    }

    /// The access token of a client credentials grant (asserting success).
    pub async fn client_credentials(
        &self,
        client_id: &str,
        secret: &str,
        scope: Option<&str>,
    ) -> String {
        let r = self.token_request(client_id, secret, scope).await;
        assert_eq!(
            r.status,
            200,
            "POST /oauth/token (client_credentials) refused: {r:?}\nstderr:\n{}",
            self.stderr_text()
        );
        let v = r.json();
        assert!(
            v["token_type"]
                .as_str()
                .is_some_and(|t| t.eq_ignore_ascii_case("bearer")),
            "token_type Bearer: {r:?}"
        );
        v["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no access_token: {r:?}"))
            .to_owned()
    }

    /// A new client with `scope` (and launch patient) and an access token for it.
    pub async fn client_token(&self, scope: &str, launch_patient: Option<&str>) -> String {
        let name = format!("e2e-{:08x}", random_u64() as u32);
        let (id, secret) = self.add_client(&name, scope, launch_patient).await;
        self.client_credentials(&id, &secret, None).await
    }

    /// `POST /auth/login` with a username, a password and maybe a TOTP code; the raw answer.
    pub async fn login(&self, username: &str, password: &str, totp: Option<&str>) -> Resp {
        let mut body = json!({ "username": username, "password": password });
        if let Some(code) = totp {
            body["totp"] = json!(code);
        }
        self.login_with(body).await
    }

    /// `POST /auth/login` with any JSON body (recovery codes, malformed bodies).
    pub async fn login_with(&self, body: Value) -> Resp {
        Api::send(
            self.origin_request(Method::POST, "/auth/login", None)
                .header(CONTENT_TYPE, "application/json")
                .body(body.to_string()),
        )
        .await
    }

    /// `POST /auth/totp/enroll` then `POST /auth/totp/confirm` with the current code, for the
    /// user of `session`; returns the base32 secret.
    pub async fn enrol_totp(&self, session: &str) -> String {
        self.enrol_totp_full(session).await.secret
    }

    /// Like [`Server::enrol_totp`], with everything the server showed once.
    pub async fn enrol_totp_full(&self, session: &str) -> TotpEnrolled {
        let r =
            Api::send(self.origin_request(Method::POST, "/auth/totp/enroll", Some(session))).await;
        assert_eq!(r.status, 200, "POST /auth/totp/enroll: {r:?}");
        let v = r.json();
        let secret = v["secret"]
            .as_str()
            .unwrap_or_else(|| panic!("enrolment without a secret: {r:?}"))
            .to_owned();
        let otpauth_url = v["otpauth_url"].as_str().unwrap_or_default().to_owned();
        let step = totp_step(unix_now());
        let r = self.confirm_totp(session, &totp_code(&secret, step)).await;
        assert_eq!(r.status, 200, "POST /auth/totp/confirm: {r:?}");
        let recovery_codes: Vec<String> = r.json()["recovery_codes"]
            .as_array()
            .unwrap_or_else(|| panic!("confirmation without recovery codes: {r:?}"))
            .iter()
            .filter_map(|c| c.as_str().map(str::to_owned))
            .collect();
        TotpEnrolled {
            secret,
            otpauth_url,
            recovery_codes,
            confirmed_step: step,
        }
    }

    /// `POST /auth/totp/confirm` with `code`; the raw answer.
    pub async fn confirm_totp(&self, session: &str, code: &str) -> Resp {
        Api::send(
            self.origin_request(Method::POST, "/auth/totp/confirm", Some(session))
                .header(CONTENT_TYPE, "application/json")
                .body(json!({ "code": code }).to_string()),
        )
        .await
    }

    /// Creates a user with `role` and signs in ([`Server::sign_in`]): the whole dance.
    pub async fn account(&self, username: &str, role: &str, force_totp: bool) -> Account {
        let password = self.create_user(username, role).await;
        self.sign_in(username, role, &password, force_totp).await
    }

    /// Signs in an existing user: logs in, enrols TOTP when the server demands it (or when
    /// `force_totp`), and logs in again with a fresh code.
    pub async fn sign_in(
        &self,
        username: &str,
        role: &str,
        password: &str,
        force_totp: bool,
    ) -> Account {
        let r = self.login(username, password, None).await;
        let first = LoginAnswer::parse(&r);
        let account = |totp, token, enrolment_token| Account {
            username: username.to_owned(),
            role: role.to_owned(),
            password: password.to_owned(),
            totp,
            token,
            enrolment_token,
        };
        if !first.enrolment_only && !force_totp {
            return account(None, first.token, None);
        }
        let enrolled = self.enrol_totp_full(&first.token).await;
        // The confirming step is spent: the next one is accepted (now+1 is in the window).
        let code = totp_code(&enrolled.secret, enrolled.confirmed_step + 1);
        let r = self.login(username, password, Some(&code)).await;
        let second = LoginAnswer::parse(&r);
        assert!(
            !second.enrolment_only,
            "after enrolment the session is a full one: {r:?}"
        );
        account(Some(enrolled), second.token, Some(first.token))
    }

    /// A full session for a new user `username` with `role` (TOTP enrolled when required).
    pub async fn staff_session(&self, username: &str, role: &str) -> String {
        self.account(username, role, false).await.token
    }
}

/// A fresh username (`zu` and 16 random letters): unique, and a marker the at-rest scans can
/// look for.
pub fn random_username() -> String {
    crate::Marker::code("zu").text().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totp_codes_match_rfc_6238() {
        // RFC 6238 appendix B, SHA-1 seed "12345678901234567890", last 6 digits.
        let secret = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";
        assert_eq!(totp_code(secret, totp_step(59)), "287082");
        assert_eq!(totp_code(secret, totp_step(1_111_111_109)), "081804");
        assert_eq!(totp_code(secret, totp_step(1_234_567_890)), "005924");
    }

    #[test]
    fn passwords_and_usernames_are_fresh() {
        assert_ne!(random_password(), random_password());
        assert!(random_password().len() >= 12);
        assert_ne!(random_username(), random_username());
    }
}
