//! The accounts service over a real store: run on SQLite always and on PostgreSQL when
//! `PHIVAULT_TEST_DATABASE_URL` is set (each test in a fresh schema), with a cheap argon2
//! hasher and a fixed clock.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use phivault_auth::{
    Accounts, AddressLimiter, Authenticated, Clock, FixedClock, LoginOutcome, LoginRequest,
    Password, PasswordHasher, ServiceError,
};
use phivault_crypto::StaticKeyProvider;
use phivault_fhir::{Id, ValidResource, Validator};
use phivault_policy::{Label, PrincipalKind, Role, ScopeSet};
use phivault_store::{NoAudit, Store, StoreOptions};
use serde_json::{Value, json};

#[path = "service/nodes.rs"]
mod nodes;
#[path = "service/relationships.rs"]
mod relationships;

/// 2025-10-09T08:53:20Z, a step boundary (divisible by 30).
const T0: i64 = 1_760_000_000;
const PASSWORD: &str = "correct horse battery staple 42";

fn random_hex() -> String {
    let mut b = [0u8; 16];
    phivault_crypto::random_bytes(&mut b).unwrap();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn validator() -> &'static Validator {
    static V: OnceLock<Validator> = OnceLock::new();
    V.get_or_init(|| Validator::new().unwrap())
}

fn valid(body: Value) -> ValidResource {
    validator().validate(body, None).unwrap()
}

fn id(s: &str) -> Id {
    Id::parse(s).unwrap()
}

fn ip(n: u8) -> IpAddr {
    IpAddr::from([192, 0, 2, n])
}

struct Fixture {
    accounts: Accounts,
    clock: Arc<FixedClock>,
    store: Store,
    /// The SQLite directory (empty for PostgreSQL).
    dir: tempfile::TempDir,
    /// PostgreSQL: the server URL and this fixture's schema.
    pg: Option<(String, String)>,
    label: &'static str,
}

impl Fixture {
    fn advance(&self, secs: i64) {
        self.clock.advance(secs);
    }

    fn now(&self) -> i64 {
        self.clock.now_unix()
    }

    async fn login(
        &self,
        username: &str,
        password: &str,
        totp: Option<String>,
        recovery: Option<&str>,
    ) -> Result<LoginOutcome, ServiceError> {
        self.accounts
            .login(LoginRequest {
                username: username.to_owned(),
                password: Password::new(password),
                totp,
                recovery_code: recovery.map(str::to_owned),
                address: ip(9),
            })
            .await
    }

    /// A clinician with TOTP confirmed, signed in with a code: (session, base32 secret,
    /// recovery codes).
    async fn enrolled(&self, username: &str, role: Role) -> (Authenticated, String, Vec<String>) {
        self.enrolled_as(username, role, true).await
    }

    /// As [`Fixture::enrolled`], for a role whose first session is `enrolment_only` or not.
    async fn enrolled_as(
        &self,
        username: &str,
        role: Role,
        enrolment_only: bool,
    ) -> (Authenticated, String, Vec<String>) {
        self.accounts
            .create_user(username, Password::new(PASSWORD), role, &NoAudit)
            .await
            .unwrap();
        let first = self.login(username, PASSWORD, None, None).await.unwrap();
        assert_eq!(first.enrolment_only, enrolment_only, "{}", self.label);
        let who = self
            .accounts
            .authenticate(first.token.expose())
            .await
            .unwrap();
        let enrolment = self
            .accounts
            .begin_totp_enrolment(&who, &NoAudit)
            .await
            .unwrap();
        let codes = self
            .accounts
            .confirm_totp(
                &who,
                &code_at(&enrolment.secret_base32, self.now()),
                &NoAudit,
            )
            .await
            .unwrap();
        // The confirming code's step is spent: sign in with the next one.
        self.advance(30);
        let session = self
            .login(
                username,
                PASSWORD,
                Some(code_at(&enrolment.secret_base32, self.now())),
                None,
            )
            .await
            .unwrap();
        assert!(!session.enrolment_only);
        let who = self
            .accounts
            .authenticate(session.token.expose())
            .await
            .unwrap();
        (who, enrolment.secret_base32, codes)
    }
}

async fn open(url: &str) -> Store {
    open_with_key(url, &format!("{}{}", random_hex(), random_hex())).await
}

/// A store under the master key `key_hex` (two stores on one database share it).
async fn open_with_key(url: &str, key_hex: &str) -> Store {
    Store::open(
        &StoreOptions::new(url.to_owned()),
        &StaticKeyProvider::from_hex(key_hex.to_owned()),
    )
    .await
    .unwrap()
}

/// With `PHIVAULT_TEST_DATABASE_URL` set: a fresh schema there, as (server URL, schema, URL
/// of the schema).
async fn pg_schema() -> Option<(String, String, String)> {
    let base = std::env::var("PHIVAULT_TEST_DATABASE_URL").ok()?;
    let schema = format!("pv_auth_{}", &random_hex()[..12]);
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&base)
        .await
        .expect("PHIVAULT_TEST_DATABASE_URL must point at a running PostgreSQL");
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&mut conn)
        .await
        .unwrap();
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
    Some((base, schema, url))
}

fn service(store: Store, clock: &Arc<FixedClock>) -> Accounts {
    let hasher = PasswordHasher::with_params(8, 1, 1).unwrap();
    Accounts::with_hasher(store, hasher)
        .with_clock(clock.clone())
        .with_address_limiter(AddressLimiter::new(10_000, 300))
}

/// A fresh store and service on each backend under test.
async fn fixtures() -> Vec<Fixture> {
    let mut out = Vec::new();
    let dir = tempfile::tempdir().unwrap();
    let store = open(&format!("sqlite://{}/phivault.db", dir.path().display())).await;
    let clock = Arc::new(FixedClock::new(T0));
    out.push(Fixture {
        accounts: service(store.clone(), &clock),
        clock,
        store,
        dir,
        pg: None,
        label: "sqlite",
    });
    if let Some((base, schema, url)) = pg_schema().await {
        let store = open(&url).await;
        let clock = Arc::new(FixedClock::new(T0));
        out.push(Fixture {
            accounts: service(store.clone(), &clock),
            clock,
            store,
            dir: tempfile::tempdir().unwrap(),
            pg: Some((base, schema)),
            label: "postgres",
        });
    }
    out
}

/// The TOTP code of a base32 secret at `now`, as an authenticator app computes it.
fn code_at(base32: &str, now: i64) -> String {
    let raw = totp_rs::Secret::try_from_base32(base32).unwrap();
    let totp = totp_rs::Builder::new()
        .with_algorithm(totp_rs::Algorithm::SHA1)
        .with_digits(6)
        .with_skew(0)
        .with_step_duration(30)
        .with_secret(raw)
        .build()
        .unwrap();
    totp.generate(u64::try_from(now).unwrap()).to_string()
}

fn is_credential_failure(r: &Result<impl std::fmt::Debug, ServiceError>) -> bool {
    matches!(r, Err(ServiceError::CredentialFailure))
}

#[tokio::test]
async fn users_are_created_under_the_password_policy() {
    for f in fixtures().await {
        let a = &f.accounts;
        assert_eq!(a.user_count().await.unwrap(), 0);
        let uid = a
            .create_user(
                "Alice.Example",
                Password::new(PASSWORD),
                Role::Clinician,
                &NoAudit,
            )
            .await
            .unwrap();
        assert_eq!(a.user_count().await.unwrap(), 1);
        assert_eq!(a.username(&uid).await.unwrap(), "Alice.Example");

        let refused = [
            ("bob", "short-pw", "at least 12"),
            ("bob", "123456789012", "too common"),
            ("bob", "QWERTY123456", "too common"),
            ("bobby-tables", "i-am-BOBBY-TABLES-ok", "username"),
        ];
        for (user, pw, why) in refused {
            let err = a
                .create_user(user, Password::new(pw), Role::Patient, &NoAudit)
                .await
                .unwrap_err();
            match &err {
                ServiceError::WeakPassword(m) => {
                    assert!(m.contains(why), "{}: {m}", f.label);
                    assert!(!m.contains(pw), "{m}");
                }
                other => panic!("{}: {pw}: {other:?}", f.label),
            }
        }
        // The same name, differently cased and padded, is taken.
        let err = a
            .create_user(
                " alice.EXAMPLE ",
                Password::new(PASSWORD),
                Role::Patient,
                &NoAudit,
            )
            .await
            .unwrap_err();
        assert!(matches!(err, ServiceError::UsernameTaken), "{err:?}");
        for bad in ["", "   ", "a:b", "tab\there"] {
            let err = a
                .create_user(bad, Password::new(PASSWORD), Role::Patient, &NoAudit)
                .await
                .unwrap_err();
            assert!(matches!(err, ServiceError::Invalid(_)), "{bad:?}: {err:?}");
        }
        let err = a
            .create_user("an-app", Password::new(PASSWORD), Role::App, &NoAudit)
            .await
            .unwrap_err();
        assert!(matches!(err, ServiceError::Invalid(_)), "{err:?}");
        assert_eq!(a.user_count().await.unwrap(), 1);
        // Usernames are matched case-insensitively at login too.
        let s = f
            .login("  ALICE.example", PASSWORD, None, None)
            .await
            .unwrap();
        assert_eq!(s.role, Role::Clinician);
    }
}

#[tokio::test]
async fn wrong_password_and_unknown_user_answer_alike() {
    for f in fixtures().await {
        f.accounts
            .create_user("carol", Password::new(PASSWORD), Role::Patient, &NoAudit)
            .await
            .unwrap();
        let wrong = f
            .login("carol", "not the password at all", None, None)
            .await
            .unwrap_err();
        let unknown = f.login("nobody", PASSWORD, None, None).await.unwrap_err();
        assert!(
            matches!(wrong, ServiceError::CredentialFailure),
            "{wrong:?}"
        );
        assert!(
            matches!(unknown, ServiceError::CredentialFailure),
            "{unknown:?}"
        );
        assert_eq!(wrong.to_string(), unknown.to_string());
        assert_eq!(format!("{wrong:?}"), format!("{unknown:?}"));
        // A patient has no second factor to give: signed in, not enrolment-only.
        let s = f.login("carol", PASSWORD, None, None).await.unwrap();
        assert!(!s.enrolment_only);
        assert_eq!(s.expires_at, f.now() + 8 * 3600);
    }
}

#[tokio::test]
async fn lockout_engages_after_five_failures_and_releases() {
    for f in fixtures().await {
        f.accounts
            .create_user("dave", Password::new(PASSWORD), Role::Patient, &NoAudit)
            .await
            .unwrap();
        for i in 0..5 {
            let known = f.login("dave", "wrong password here", None, None).await;
            let unknown = f.login("ghost", "wrong password here", None, None).await;
            assert!(is_credential_failure(&known), "{} #{i}: {known:?}", f.label);
            assert!(is_credential_failure(&unknown), "#{i}: {unknown:?}");
        }
        // Locked: even the right password is not checked; an unknown name answers the same.
        let known = f.login("dave", PASSWORD, None, None).await.unwrap_err();
        let unknown = f.login("ghost", PASSWORD, None, None).await.unwrap_err();
        assert!(
            matches!(known, ServiceError::Throttled { retry_after: 60 }),
            "{known:?}"
        );
        assert_eq!(format!("{known:?}"), format!("{unknown:?}"));
        f.advance(59);
        assert!(matches!(
            f.login("dave", PASSWORD, None, None).await,
            Err(ServiceError::Throttled { retry_after: 1 })
        ));
        f.advance(1);
        // Released; the success resets the count, so four failures do not lock again.
        f.login("dave", PASSWORD, None, None).await.unwrap();
        for _ in 0..4 {
            let r = f.login("dave", "wrong password here", None, None).await;
            assert!(is_credential_failure(&r));
        }
        f.login("dave", PASSWORD, None, None).await.unwrap();
        // Unknown names are released too (and still fail).
        let r = f.login("ghost", PASSWORD, None, None).await;
        assert!(is_credential_failure(&r), "{r:?}");
        // A second lock lasts twice as long.
        for _ in 0..5 {
            let _ = f.login("dave", "wrong password here", None, None).await;
        }
        f.advance(60);
        let _ = f.login("dave", "wrong password here", None, None).await;
        assert!(matches!(
            f.login("dave", PASSWORD, None, None).await,
            Err(ServiceError::Throttled { retry_after: 120 })
        ));
    }
}

/// Fifty wrong passwords at once, on a known account and on an unknown name: the lock is
/// checked and the attempt counted in one step, so exactly five passwords are checked (and
/// refused) and the other 45 are throttled; afterwards the right password is refused too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_wrong_passwords_cannot_pass_the_lockout() {
    for f in fixtures().await {
        f.accounts
            .create_user(
                "mallory.target",
                Password::new(PASSWORD),
                Role::Patient,
                &NoAudit,
            )
            .await
            .unwrap();
        for name in ["mallory.target", "no.such.account"] {
            let attempts: Vec<_> = (0..50u8)
                .map(|i| {
                    let accounts = f.accounts.clone();
                    tokio::spawn(async move {
                        accounts
                            .login(LoginRequest {
                                username: name.to_owned(),
                                password: Password::new(format!("wrong guess number {i}")),
                                totp: None,
                                recovery_code: None,
                                address: ip(i),
                            })
                            .await
                    })
                })
                .collect();
            let mut failures = 0;
            let mut throttled = 0;
            for attempt in attempts {
                match attempt.await.unwrap() {
                    Err(ServiceError::CredentialFailure) => failures += 1,
                    Err(ServiceError::Throttled { .. }) => throttled += 1,
                    other => panic!("{} {name}: {other:?}", f.label),
                }
            }
            assert_eq!((failures, throttled), (5, 45), "{} {name}", f.label);
            let after = f.login(name, PASSWORD, None, None).await;
            assert!(
                matches!(after, Err(ServiceError::Throttled { retry_after: 60 })),
                "{} {name}: {after:?}",
                f.label
            );
        }
    }
}

/// Patients can protect their accounts with TOTP (then a code is needed at login), and with
/// the setting on, a patient without TOTP gets an enrolment-only session like staff.
#[tokio::test]
async fn patients_may_and_can_be_required_to_use_totp() {
    for f in fixtures().await {
        // Optional: a patient signs in without a factor, enrols, then needs a code.
        let (who, secret, codes) = f.enrolled_as("pat.optional", Role::Patient, false).await;
        assert_eq!(who.principal.kind(), PrincipalKind::User);
        assert_eq!(codes.len(), 10);
        let r = f.login("pat.optional", PASSWORD, None, None).await;
        assert!(is_credential_failure(&r), "{}: {r:?}", f.label);
        f.advance(30);
        f.login(
            "pat.optional",
            PASSWORD,
            Some(code_at(&secret, f.now())),
            None,
        )
        .await
        .unwrap();

        // Required: the first session can only enrol.
        let strict = f.accounts.clone().with_patient_totp_required(true);
        strict
            .create_user(
                "pat.strict",
                Password::new(PASSWORD),
                Role::Patient,
                &NoAudit,
            )
            .await
            .unwrap();
        let request = || LoginRequest {
            username: "pat.strict".into(),
            password: Password::new(PASSWORD),
            totp: None,
            recovery_code: None,
            address: ip(7),
        };
        let first = strict.login(request()).await.unwrap();
        assert!(first.enrolment_only, "{}", f.label);
        let session = strict.authenticate(first.token.expose()).await.unwrap();
        assert!(session.enrolment_only);
        assert!(matches!(
            strict.care_patients(&session).await,
            Err(ServiceError::EnrolmentRequired)
        ));
        // Without the setting the same account is a full session.
        assert!(!f.accounts.login(request()).await.unwrap().enrolment_only);
    }
}

/// Password hashes run at most `with_hash_concurrency` at once, however many logins arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn password_hashes_are_bounded_in_concurrency() {
    for f in fixtures().await {
        let accounts = f.accounts.clone().with_hash_concurrency(2);
        let attempts: Vec<_> = (0..40u8)
            .map(|i| {
                let accounts = accounts.clone();
                tokio::spawn(async move {
                    accounts
                        .login(LoginRequest {
                            username: format!("burst.{i}"),
                            password: Password::new("some password or other"),
                            totp: None,
                            recovery_code: None,
                            address: ip(i),
                        })
                        .await
                })
            })
            .collect();
        for attempt in attempts {
            let r = attempt.await.unwrap();
            assert!(is_credential_failure(&r), "{r:?}");
        }
        let peak = accounts.peak_concurrent_hashes();
        assert!((1..=2).contains(&peak), "{}: {peak}", f.label);
    }
}

#[tokio::test]
async fn logins_per_address_are_limited() {
    for f in fixtures().await {
        let accounts = f
            .accounts
            .clone()
            .with_address_limiter(AddressLimiter::new(3, 300));
        accounts
            .create_user("erin", Password::new(PASSWORD), Role::Patient, &NoAudit)
            .await
            .unwrap();
        let try_password = |addr: IpAddr, password: &str| {
            accounts.login(LoginRequest {
                username: "erin".into(),
                password: Password::new(password),
                totp: None,
                recovery_code: None,
                address: addr,
            })
        };
        let attempt = |addr: IpAddr| try_password(addr, PASSWORD);
        // Successful logins are not counted: the people behind one address (a clinic's NAT,
        // a reverse proxy) do not lock each other out by signing in.
        for _ in 0..10 {
            attempt(ip(1)).await.unwrap();
        }
        for _ in 0..3 {
            let r = try_password(ip(1), "wrong password here").await;
            assert!(is_credential_failure(&r), "{r:?}");
        }
        // Three failures: the address is throttled, even for the right password.
        let err = attempt(ip(1)).await.unwrap_err();
        assert!(
            matches!(err, ServiceError::Throttled { retry_after: 300 }),
            "{err:?}"
        );
        attempt(ip(2)).await.unwrap();
        f.advance(300);
        attempt(ip(1)).await.unwrap();
    }
}

#[tokio::test]
async fn staff_enrol_totp_and_codes_work_once() {
    for f in fixtures().await {
        let a = &f.accounts;
        a.create_user(
            "dr.frank",
            Password::new(PASSWORD),
            Role::Clinician,
            &NoAudit,
        )
        .await
        .unwrap();
        // Staff without TOTP: a session that can only enrol.
        let first = f.login("dr.frank", PASSWORD, None, None).await.unwrap();
        assert!(first.enrolment_only, "{}", f.label);
        assert_eq!(first.role, Role::Clinician);
        let who = a.authenticate(first.token.expose()).await.unwrap();
        assert!(who.enrolment_only);
        assert!(matches!(
            a.relationship(&who, &id("p1")).await,
            Err(ServiceError::EnrolmentRequired)
        ));
        assert!(matches!(
            a.confirm_totp(&who, "123456", &NoAudit).await,
            Err(ServiceError::Invalid(_))
        ));

        let enrolment = a.begin_totp_enrolment(&who, &NoAudit).await.unwrap();
        assert_eq!(enrolment.secret_base32.len(), 32);
        assert!(
            enrolment
                .otpauth_url
                .starts_with("otpauth://totp/phivault:dr.frank?"),
            "{}",
            enrolment.otpauth_url
        );
        assert!(enrolment.otpauth_url.contains(&enrolment.secret_base32));
        assert!(!format!("{enrolment:?}").contains(&enrolment.secret_base32));
        // Before confirmation a code is not asked for at login.
        assert!(
            f.login("dr.frank", PASSWORD, None, None)
                .await
                .unwrap()
                .enrolment_only
        );
        let secret = enrolment.secret_base32.clone();
        let wrong = format!(
            "{:06}",
            (code_at(&secret, f.now()).parse::<u32>().unwrap() + 1) % 1_000_000
        );
        assert!(is_credential_failure(
            &a.confirm_totp(&who, &wrong, &NoAudit).await
        ));
        let codes = a
            .confirm_totp(&who, &code_at(&secret, f.now()), &NoAudit)
            .await
            .unwrap();
        assert_eq!(codes.len(), 10);
        assert!(codes.iter().all(|c| c.len() == 14));
        // The enrolment session is now a full one; enrolling again is refused.
        assert!(
            !a.authenticate(first.token.expose())
                .await
                .unwrap()
                .enrolment_only
        );
        assert!(matches!(
            a.begin_totp_enrolment(&who, &NoAudit).await,
            Err(ServiceError::Invalid(_))
        ));

        // A code is required now; the right password without one answers exactly like a
        // wrong password or an unknown name (no password oracle), and counts as a failure.
        let right = f.login("dr.frank", PASSWORD, None, None).await.unwrap_err();
        let wrong = f
            .login("nobody.here", "not the password at all", None, None)
            .await
            .unwrap_err();
        assert!(
            matches!(right, ServiceError::CredentialFailure),
            "{right:?}"
        );
        assert_eq!(right.to_string(), wrong.to_string());
        assert_eq!(format!("{right:?}"), format!("{wrong:?}"));
        // The confirming code was spent.
        let r = f
            .login("dr.frank", PASSWORD, Some(code_at(&secret, f.now())), None)
            .await;
        assert!(is_credential_failure(&r), "{r:?}");
        f.advance(30);
        let code = code_at(&secret, f.now());
        let wrong = format!("{:06}", (code.parse::<u32>().unwrap() + 1) % 1_000_000);
        assert!(is_credential_failure(
            &f.login("dr.frank", PASSWORD, Some(wrong), None).await
        ));
        // The right password is needed with the code.
        assert!(is_credential_failure(
            &f.login("dr.frank", "wrong password here", Some(code.clone()), None)
                .await
        ));
        let ok = f
            .login("dr.frank", PASSWORD, Some(code.clone()), None)
            .await
            .unwrap();
        assert!(!ok.enrolment_only);
        // The same code again, even within its window: a replay.
        f.advance(10);
        let r = f.login("dr.frank", PASSWORD, Some(code), None).await;
        assert!(is_credential_failure(&r), "{r:?}");
        // A code never used but from outside the window (two steps ago: later than the last
        // step used, so only the window refuses it) is refused.
        f.advance(80);
        let old = code_at(&secret, f.now() - 60);
        assert!(is_credential_failure(
            &f.login("dr.frank", PASSWORD, Some(old), None).await
        ));

        // A recovery code stands in for the TOTP code, once; case and dashes do not matter.
        let recovery = codes[3].to_uppercase().replace('-', "");
        let s = f
            .login("dr.frank", PASSWORD, None, Some(&recovery))
            .await
            .unwrap();
        assert!(!s.enrolment_only);
        assert!(is_credential_failure(
            &f.login("dr.frank", PASSWORD, None, Some(&codes[3])).await
        ));
        assert!(is_credential_failure(
            &f.login("dr.frank", PASSWORD, None, Some("0000-0000-0000"))
                .await
        ));
        f.login("dr.frank", PASSWORD, None, Some(&codes[4]))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn sessions_authenticate_until_revoked_or_expired() {
    for f in fixtures().await {
        let a = &f.accounts;
        let uid = a
            .create_user("gina", Password::new(PASSWORD), Role::Patient, &NoAudit)
            .await
            .unwrap();
        a.link_patient("gina", &id("pat-gina"), &NoAudit)
            .await
            .unwrap();
        let s = f.login("gina", PASSWORD, None, None).await.unwrap();
        let who = a.authenticate(s.token.expose()).await.unwrap();
        assert_eq!(who.principal.kind(), PrincipalKind::User);
        assert_eq!(who.principal.id(), uid);
        assert_eq!(who.principal.role(), Role::Patient);
        assert_eq!(who.principal.linked_patient(), Some(&id("pat-gina")));
        assert_eq!(who.client_id, None);
        assert!(!who.enrolment_only);

        // Logout.
        a.revoke(s.token.expose(), &NoAudit).await.unwrap();
        assert!(is_credential_failure(
            &a.authenticate(s.token.expose()).await
        ));
        a.revoke(s.token.expose(), &NoAudit).await.unwrap();
        a.revoke("pvs_not-a-token", &NoAudit).await.unwrap();
        for bad in ["", "garbage", "pvs_AAAA", &s.token.expose()[4..]] {
            assert!(is_credential_failure(&a.authenticate(bad).await), "{bad:?}");
        }

        // Expiry after 8 hours, absolute.
        let s = f.login("gina", PASSWORD, None, None).await.unwrap();
        f.advance(8 * 3600 - 1);
        a.authenticate(s.token.expose()).await.unwrap();
        f.advance(1);
        assert!(is_credential_failure(
            &a.authenticate(s.token.expose()).await
        ));

        // A disabled account's sessions stop working, and it cannot sign in.
        let s = f.login("gina", PASSWORD, None, None).await.unwrap();
        a.disable_user("gina", &NoAudit).await.unwrap();
        assert!(is_credential_failure(
            &a.authenticate(s.token.expose()).await
        ));
        assert!(is_credential_failure(
            &f.login("gina", PASSWORD, None, None).await
        ));

        // Links are checked against the role.
        a.create_user("dr.hal", Password::new(PASSWORD), Role::Clinician, &NoAudit)
            .await
            .unwrap();
        assert!(matches!(
            a.link_patient("dr.hal", &id("p1"), &NoAudit).await,
            Err(ServiceError::Invalid(_))
        ));
        assert!(matches!(
            a.link_practitioner("gina", &id("pr1"), &NoAudit).await,
            Err(ServiceError::Invalid(_))
        ));
        assert!(matches!(
            a.link_practitioner("nobody", &id("pr1"), &NoAudit).await,
            Err(ServiceError::NotFound(_))
        ));
    }
}

#[tokio::test]
async fn client_credentials_issue_bound_narrowed_tokens() {
    for f in fixtures().await {
        let a = &f.accounts;
        for bad in ["patient/Nope.rs", "system/Observation.xyz", ""] {
            assert!(
                matches!(
                    a.create_client("bad", bad, None, &NoAudit).await,
                    Err(ServiceError::Invalid(_))
                ),
                "{bad:?}"
            );
        }
        let (client_id, secret) = a
            .create_client(
                "Lab feed",
                "system/Observation.rs system/Patient.r",
                None,
                &NoAudit,
            )
            .await
            .unwrap();
        assert!(client_id.starts_with("pvcl_"), "{client_id}");
        assert!(secret.expose().starts_with("pvc_"));

        // Wrong secret, unknown client, a secret of another client.
        let (other_id, other_secret) = a
            .create_client("Other", "system/Patient.r", None, &NoAudit)
            .await
            .unwrap();
        assert_ne!(other_id, client_id);
        for (cid, s) in [
            (client_id.as_str(), "pvc_wrong"),
            (client_id.as_str(), other_secret.expose()),
            ("pvcl_unknown", secret.expose()),
            ("", secret.expose()),
        ] {
            assert!(
                is_credential_failure(&a.client_credentials(cid, s, None).await),
                "{cid} {s}"
            );
        }

        // Default: everything registered.
        let (token, expires_in, scope) = a
            .client_credentials(&client_id, secret.expose(), None)
            .await
            .unwrap();
        assert_eq!(expires_in, 900);
        assert_eq!(scope, "system/Observation.rs system/Patient.r");
        assert!(token.expose().starts_with("pva_"));
        let who = a.authenticate(token.expose()).await.unwrap();
        assert_eq!(who.principal.kind(), PrincipalKind::Client);
        assert_eq!(who.principal.id(), client_id);
        assert_eq!(who.principal.role(), Role::App);
        assert_eq!(who.client_id.as_deref(), Some(client_id.as_str()));
        assert_eq!(
            who.principal.scopes(),
            Some(&ScopeSet::parse("system/Observation.rs system/Patient.r").unwrap())
        );
        assert!(!who.enrolment_only);
        assert!(who.practitioner.is_none());

        // Narrowing.
        let (narrow, _, scope) = a
            .client_credentials(&client_id, secret.expose(), Some("system/Observation.r"))
            .await
            .unwrap();
        assert_eq!(scope, "system/Observation.r");
        let who = a.authenticate(narrow.expose()).await.unwrap();
        assert_eq!(
            who.principal.scopes(),
            Some(&ScopeSet::parse("system/Observation.r").unwrap())
        );
        // Widening is refused.
        for wide in [
            "system/Observation.rsu",
            "system/*.r",
            "system/Condition.r",
            "user/Observation.r",
            "system/Observation.r openid",
        ] {
            assert!(
                matches!(
                    a.client_credentials(&client_id, secret.expose(), Some(wide))
                        .await,
                    Err(ServiceError::Invalid(_))
                ),
                "{wide}"
            );
        }

        // A client secret is not a bearer token.
        assert!(is_credential_failure(
            &a.authenticate(secret.expose()).await
        ));

        // Revoked, then expired.
        a.revoke(narrow.expose(), &NoAudit).await.unwrap();
        assert!(is_credential_failure(
            &a.authenticate(narrow.expose()).await
        ));
        a.authenticate(token.expose()).await.unwrap();
        f.advance(15 * 60);
        assert!(is_credential_failure(&a.authenticate(token.expose()).await));

        // A patient-launched app carries its launch patient.
        let (pid, psecret) = a
            .create_client(
                "Patient app",
                "patient/Observation.rs",
                Some(&id("p9")),
                &NoAudit,
            )
            .await
            .unwrap();
        let (t, _, _) = a
            .client_credentials(&pid, psecret.expose(), None)
            .await
            .unwrap();
        let who = a.authenticate(t.expose()).await.unwrap();
        assert_eq!(who.principal.launch_patient(), Some(&id("p9")));
    }
}

fn utf16le(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Asserts that none of `secrets` is in `bytes`: as UTF-8, as UTF-16, and (`hex_too`, for a
/// `pg_dump`, which writes BYTEA columns as hex) as hex.
fn assert_absent(bytes: &[u8], secrets: &[String], what: &str, hex_too: bool) {
    for s in secrets {
        assert!(!contains(bytes, s.as_bytes()), "{what}: found {s:?}");
        assert!(
            !contains(bytes, &utf16le(s)),
            "{what}: found {s:?} (UTF-16)"
        );
        if hex_too {
            let hex: String = s.bytes().map(|b| format!("{b:02x}")).collect();
            assert!(
                !contains(bytes, hex.as_bytes()),
                "{what}: found {s:?} (hex)"
            );
        }
    }
}

/// `pg_dump --data-only` of one schema (the rows as PostgreSQL holds them).
fn pg_data_dump(base: &str, schema: &str) -> Vec<u8> {
    let dump = std::process::Command::new("pg_dump")
        .arg(format!("--dbname={base}"))
        .arg(format!("--schema={schema}"))
        .arg("--data-only")
        .output()
        .expect("pg_dump is needed to scan the PostgreSQL schema");
    assert!(
        dump.status.success(),
        "{}",
        String::from_utf8_lossy(&dump.stderr)
    );
    dump.stdout
}

/// Every byte of the SQLite database files.
fn database_bytes(dir: &std::path::Path) -> Vec<u8> {
    let mut all = Vec::new();
    for name in ["phivault.db", "phivault.db-wal", "phivault.db-shm"] {
        if let Ok(bytes) = std::fs::read(dir.join(name)) {
            all.extend(bytes);
        }
    }
    assert!(!all.is_empty());
    all
}

#[tokio::test]
async fn no_credential_username_or_reason_at_rest() {
    for f in fixtures().await {
        let a = &f.accounts;
        let tag = random_hex();
        let username = format!("Zed.Marker{}", &tag[..10]);
        let password = format!("pass phrase {} never stored", &tag[10..22]);
        let reason = format!("Reason marker {}", &tag[..16]);
        let uid = a
            .create_user(
                &username,
                Password::new(password.as_str()),
                Role::Clinician,
                &NoAudit,
            )
            .await
            .unwrap();
        let first = f.login(&username, &password, None, None).await.unwrap();
        let who = a.authenticate(first.token.expose()).await.unwrap();
        let enrolment = a.begin_totp_enrolment(&who, &NoAudit).await.unwrap();
        let secret = enrolment.secret_base32.clone();
        let codes = a
            .confirm_totp(&who, &code_at(&secret, f.now()), &NoAudit)
            .await
            .unwrap();
        f.advance(30);
        let second = f
            .login(&username, &password, Some(code_at(&secret, f.now())), None)
            .await
            .unwrap();
        let third = f
            .login(&username, &password, None, Some(&codes[0]))
            .await
            .unwrap();
        a.revoke(third.token.expose(), &NoAudit).await.unwrap();
        let who = a.authenticate(second.token.expose()).await.unwrap();
        let bg = a
            .record_break_glass(&who, &id("p-scan"), &reason, f.now() + 600)
            .await
            .unwrap();
        let (client_id, client_secret) = a
            .create_client("Scan app", "system/Observation.rs", None, &NoAudit)
            .await
            .unwrap();
        let (access, _, _) = a
            .client_credentials(&client_id, client_secret.expose(), None)
            .await
            .unwrap();

        // What the API handed out is what the scan looks for.
        assert_eq!(a.username(&uid).await.unwrap(), username);
        let listed = a.list_break_glass().await.unwrap();
        assert!(listed.iter().any(|r| r.id == bg && r.reason == reason));
        assert_eq!(codes.len(), 10);
        let mut secrets: Vec<String> = vec![
            username.clone(),
            username.to_lowercase(),
            password.clone(),
            secret.clone(),
            enrolment.otpauth_url.clone(),
            reason.clone(),
        ];
        for t in [
            &first.token,
            &second.token,
            &third.token,
            &access,
            &client_secret,
        ] {
            secrets.push(t.expose().to_owned());
            secrets.push(t.expose()[4..].to_owned());
        }
        for c in &codes {
            secrets.push(c.clone());
            secrets.push(c.replace('-', ""));
        }
        assert!(secrets.iter().all(|s| s.len() >= 12), "{secrets:?}");

        let scan = |what: &str, bytes: &[u8], hex_too: bool| {
            // The scan sees what is stored in the clear: ids are.
            assert!(contains(bytes, client_id.as_bytes()), "{what}");
            assert!(contains(bytes, uid.as_bytes()), "{what}");
            assert_absent(bytes, &secrets, what, hex_too);
        };
        if let Some((base, schema)) = &f.pg {
            let dump = pg_data_dump(base, schema);
            assert!(String::from_utf8_lossy(&dump).contains("recovery_codes"));
            scan("pg_dump", &dump, true);
            continue;
        }
        let check = |when: &str| scan(when, &database_bytes(f.dir.path()), false);
        check("open");
        f.store.close().await;
        check("closed");
    }
}
