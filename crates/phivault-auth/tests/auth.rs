//! The pieces of phivault-auth put together the way the server will: an in-memory stand-in
//! for the store, a login with password and TOTP, recovery, logout, lockout, and a scan of
//! everything "stored" for secrets in the clear.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::IpAddr;

use phivault_auth::token::{self, TokenKind};
use phivault_auth::{
    AddressLimiter, AuthError, Clock, FixedClock, LoginThrottle, Password, PasswordHasher,
    PasswordPolicy, RecoveryCodeHash, RecoveryCodes, TokenError, TokenRecord, Totp, TotpError,
    TotpSecret,
};
use serde::Serialize;

/// What the store would keep for an account (the TOTP secret would be sealed; here it is kept
/// as the bytes the store would seal, and left out of the scan's "stored" output).
#[derive(Serialize)]
struct StoredAccount {
    username: String,
    password_phc: String,
    totp_last_step: Option<u64>,
    recovery: Vec<RecoveryCodeHash>,
    throttle: LoginThrottle,
    #[serde(skip)]
    totp_secret_to_seal: Vec<u8>,
}

#[derive(Default, Serialize)]
struct Store {
    accounts: HashMap<String, StoredAccount>,
    tokens: Vec<TokenRecord>,
}

struct Server {
    store: Store,
    hasher: PasswordHasher,
    addresses: AddressLimiter,
    /// The attempts counted against each address (the store keeps these by blind token).
    address_attempts: HashMap<String, Vec<i64>>,
    clock: FixedClock,
}

const ADDR: &str = "203.0.113.9";

impl Server {
    fn new() -> Self {
        Self {
            store: Store::default(),
            hasher: PasswordHasher::with_params(8, 1, 1).unwrap(),
            addresses: AddressLimiter::default(),
            address_attempts: HashMap::new(),
            clock: FixedClock::new(1_760_000_000),
        }
    }

    fn now(&self) -> i64 {
        self.clock.now_unix()
    }

    fn enrol(&mut self, username: &str, password: &str) -> (TotpSecret, RecoveryCodes) {
        let password = Password::new(password);
        PasswordPolicy::default()
            .check(&password, username)
            .unwrap();
        let secret = TotpSecret::generate().unwrap();
        let totp = Totp::new(&secret, username).unwrap();
        let code = current_code(&secret, self.now());
        let step = totp.verify(&code, self.now(), None).unwrap();
        let recovery = RecoveryCodes::generate(10).unwrap();
        self.store.accounts.insert(
            username.to_owned(),
            StoredAccount {
                username: username.to_owned(),
                password_phc: self.hasher.hash(&password).unwrap(),
                totp_last_step: Some(step),
                recovery: recovery.hashes().to_vec(),
                throttle: LoginThrottle::new(),
                totp_secret_to_seal: secret.expose_bytes().to_vec(),
            },
        );
        (secret, recovery)
    }

    /// First step: password. Returns an MFA ticket.
    fn login_password(&mut self, username: &str, password: &str) -> Result<String, AuthError> {
        let now = self.now();
        let address = AddressLimiter::key(ADDR.parse::<IpAddr>().unwrap());
        self.addresses
            .check_and_record(self.address_attempts.entry(address).or_default(), now)?;
        let password = Password::new(password);
        let Some(account) = self.store.accounts.get_mut(username) else {
            self.hasher.dummy_verify(&password);
            return Err(AuthError::InvalidCredentials);
        };
        account.throttle.check(now)?;
        if !self.hasher.verify(&password, &account.password_phc) {
            account.throttle.record_failure(now);
            return Err(AuthError::InvalidCredentials);
        }
        let (ticket, record) = TokenRecord::issue(TokenKind::Mfa, username, None, "", now).unwrap();
        self.store.tokens.push(record);
        Ok(ticket.expose().to_owned())
    }

    /// Second step: TOTP code or recovery code. Returns a session token.
    fn login_second_factor(&mut self, ticket: &str, code: &str) -> Result<String, AuthError> {
        let now = self.now();
        let (_, hash) = token::parse(ticket)?;
        let record = self
            .store
            .tokens
            .iter_mut()
            .find(|r| r.hash == hash)
            .ok_or(TokenError::Unknown)?;
        record.check(now, TokenKind::Mfa, None)?;
        let username = record.principal_id.clone();
        let account = self.store.accounts.get_mut(&username).unwrap();
        let secret = TotpSecret::from_bytes(&account.totp_secret_to_seal).unwrap();
        let totp = Totp::new(&secret, &username).unwrap();
        match totp.verify(code, now, account.totp_last_step) {
            Ok(step) => account.totp_last_step = Some(step),
            Err(totp_err) => match RecoveryCodes::verify(code, &account.recovery) {
                Some(i) => {
                    account.recovery.remove(i);
                }
                None => {
                    account.throttle.record_failure(now);
                    return Err(totp_err.into());
                }
            },
        }
        account.throttle.record_success();
        record.revoke(now); // a ticket is spent once
        let (session, record) =
            TokenRecord::issue(TokenKind::Session, &username, None, "", now).unwrap();
        self.store.tokens.push(record);
        Ok(session.expose().to_owned())
    }

    fn authenticate(&self, bearer: &str) -> Result<String, AuthError> {
        let (_, hash) = token::parse(bearer)?;
        let record = self
            .store
            .tokens
            .iter()
            .find(|r| r.hash == hash)
            .ok_or(TokenError::Unknown)?;
        record.check(self.now(), TokenKind::Session, None)?;
        Ok(record.principal_id.clone())
    }

    fn logout(&mut self, bearer: &str) {
        let now = self.now();
        if let Ok((_, hash)) = token::parse(bearer) {
            for r in self.store.tokens.iter_mut().filter(|r| r.hash == hash) {
                r.revoke(now);
            }
        }
    }
}

fn current_code(secret: &TotpSecret, now: i64) -> String {
    // What the user's authenticator app shows: the same RFC 6238 computation, done by totp-rs.
    let app = totp_rs::Builder::new()
        .with_secret(secret.expose_bytes())
        .build()
        .unwrap();
    app.generate(u64::try_from(now).unwrap()).to_string()
}

const PW: &str = "a long and unusual passphrase 9";

#[test]
fn login_with_password_and_totp_then_logout() {
    let mut server = Server::new();
    let (secret, _) = server.enrol("alice", PW);
    server.clock.advance(60);
    let ticket = server.login_password("alice", PW).unwrap();
    let code = current_code(&secret, server.now());
    let session = server.login_second_factor(&ticket, &code).unwrap();
    assert_eq!(server.authenticate(&session).unwrap(), "alice");

    // The ticket is spent; the code cannot be used again.
    assert!(matches!(
        server.login_second_factor(&ticket, &code),
        Err(AuthError::Token(TokenError::Revoked))
    ));
    let ticket2 = server.login_password("alice", PW).unwrap();
    assert!(matches!(
        server.login_second_factor(&ticket2, &code),
        Err(AuthError::Totp(TotpError::Replayed))
    ));

    server.logout(&session);
    assert!(matches!(
        server.authenticate(&session),
        Err(AuthError::Token(TokenError::Revoked))
    ));
}

#[test]
fn sessions_expire_after_eight_hours() {
    let mut server = Server::new();
    let (secret, _) = server.enrol("bob", PW);
    server.clock.advance(60);
    let ticket = server.login_password("bob", PW).unwrap();
    let session = server
        .login_second_factor(&ticket, &current_code(&secret, server.now()))
        .unwrap();
    server.clock.advance(8 * 3600 - 1);
    assert!(server.authenticate(&session).is_ok());
    server.clock.advance(1);
    assert!(matches!(
        server.authenticate(&session),
        Err(AuthError::Token(TokenError::Expired))
    ));
}

#[test]
fn unknown_user_and_wrong_password_look_the_same() {
    let mut server = Server::new();
    server.enrol("carol", PW);
    let unknown = server.login_password("mallory", PW).unwrap_err();
    let wrong = server
        .login_password("carol", "not the passphrase")
        .unwrap_err();
    assert!(unknown.is_credential_failure());
    assert!(wrong.is_credential_failure());
    assert_eq!(unknown.to_string(), wrong.to_string());
    let totp = AuthError::from(TotpError::Wrong);
    let token = AuthError::from(TokenError::Expired);
    assert!(totp.is_credential_failure() && token.is_credential_failure());
}

#[test]
fn recovery_code_replaces_totp_once() {
    let mut server = Server::new();
    let (_, recovery) = server.enrol("dave", PW);
    let code = recovery.codes()[3].expose().to_uppercase();
    let ticket = server.login_password("dave", PW).unwrap();
    assert!(server.login_second_factor(&ticket, &code).is_ok());
    assert_eq!(server.store.accounts["dave"].recovery.len(), 9);
    let ticket = server.login_password("dave", PW).unwrap();
    assert!(matches!(
        server.login_second_factor(&ticket, &code),
        Err(AuthError::Totp(TotpError::Wrong))
    ));
}

#[test]
fn lockout_engages_and_releases() {
    let mut server = Server::new();
    server.enrol("erin", PW);
    for _ in 0..5 {
        assert!(matches!(
            server.login_password("erin", "wrong wrong wrong"),
            Err(AuthError::InvalidCredentials)
        ));
    }
    // Locked: even the right password is not checked.
    let locked = server.login_password("erin", PW).unwrap_err();
    assert!(matches!(locked, AuthError::Locked(_)));
    server.clock.advance(60);
    assert!(server.login_password("erin", PW).is_ok());
}

#[test]
fn address_limit_applies_across_accounts() {
    let mut server = Server::new();
    server.enrol("frank", PW);
    for i in 0..20 {
        let _ = server.login_password(&format!("user{i}"), PW);
    }
    assert!(matches!(
        server.login_password("frank", PW),
        Err(AuthError::AddressLimited(_))
    ));
    server.clock.advance(300);
    assert!(server.login_password("frank", PW).is_ok());
}

#[test]
fn nothing_secret_is_stored_in_the_clear() {
    let mut server = Server::new();
    let (secret, recovery) = server.enrol("grace", PW);
    let ticket = server.login_password("grace", PW).unwrap();
    let session = server
        .login_second_factor(&ticket, recovery.codes()[0].expose())
        .unwrap();
    let stored = serde_json::to_string(&server.store).unwrap();
    let mut secrets = vec![
        PW.to_owned(),
        ticket.clone(),
        ticket[4..].to_owned(),
        session.clone(),
        session[4..].to_owned(),
        secret.to_base32().to_string(),
        hex_of(secret.expose_bytes()),
    ];
    for code in recovery.codes() {
        secrets.push(code.expose().to_owned());
        secrets.push(code.expose().replace('-', ""));
    }
    for s in &secrets {
        assert!(
            !stored.contains(s.as_str()),
            "stored state contains a secret"
        );
    }
    // What is stored is enough: the hash of the session finds its record.
    assert!(stored.contains(&token::hash(&session).to_hex()));
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
