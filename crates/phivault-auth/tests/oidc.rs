//! OpenID Connect signing keys (rotation with an overlap, sealed at rest) and the two-step
//! login of the sign-in pages, over a real SQLite store with a fixed clock.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;
use std::sync::Arc;

use phivault_auth::{
    Accounts, AddressLimiter, FixedClock, IdTokenClaims, LoginRequest, LoginStep, Password,
    PasswordHasher, SIGNING_KEY_OVERLAP_SECS, SIGNING_KEY_ROTATE_SECS, ServiceError,
};
use phivault_crypto::StaticKeyProvider;
use phivault_policy::Role;
use phivault_store::{NoAudit, Store, StoreOptions};
use serde_json::Value;

const T0: i64 = 1_760_000_000;
const PASSWORD: &str = "correct horse battery staple 42";

fn random_hex() -> String {
    let mut b = [0u8; 16];
    phivault_crypto::random_bytes(&mut b).unwrap();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

async fn service(dir: &tempfile::TempDir) -> (Accounts, Arc<FixedClock>) {
    let store = Store::open(
        &StoreOptions::new(format!("sqlite://{}/phivault.db", dir.path().display())),
        &StaticKeyProvider::from_hex(format!("{}{}", random_hex(), random_hex())),
    )
    .await
    .unwrap();
    let clock = Arc::new(FixedClock::new(T0));
    let accounts = Accounts::with_hasher(store, PasswordHasher::with_params(8, 1, 1).unwrap())
        .with_clock(clock.clone())
        .with_address_limiter(AddressLimiter::new(10_000, 300));
    (accounts, clock)
}

fn kids(jwks: &Value) -> Vec<String> {
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect()
}

/// The `kid` of a compact JWT's header.
fn kid_of(jwt: &str) -> String {
    use base64::Engine as _;
    let header = jwt.split('.').next().unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .unwrap();
    let header: Value = serde_json::from_slice(&bytes).unwrap();
    header["kid"].as_str().unwrap().to_owned()
}

fn claims() -> IdTokenClaims {
    IdTokenClaims {
        issuer: "https://h/fhir".to_owned(),
        subject: "u1".to_owned(),
        audience: "pvcl_x".to_owned(),
        fhir_user: Some("https://h/fhir/Patient/p1".to_owned()),
        nonce: Some("n-1".to_owned()),
    }
}

#[tokio::test]
async fn signing_keys_rotate_with_an_overlap_and_never_rest_in_the_clear() {
    let dir = tempfile::tempdir().unwrap();
    let (accounts, clock) = service(&dir).await;
    // The first id_token creates the first key; the JWKS publishes it.
    let first = accounts.id_token(&claims()).await.unwrap();
    let k1 = kid_of(&first);
    assert_eq!(kids(&accounts.jwks().await.unwrap()), vec![k1.clone()]);
    // It verifies with the published key, with the claims given.
    let jwks = accounts.jwks().await.unwrap();
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwks["keys"][0].clone()).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_audience(&["pvcl_x"]);
    validation.set_issuer(&["https://h/fhir"]);
    validation.validate_exp = false;
    let decoded = jsonwebtoken::decode::<Value>(
        &first,
        &jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap(),
        &validation,
    )
    .unwrap();
    assert_eq!(decoded.claims["fhirUser"], "https://h/fhir/Patient/p1");
    assert_eq!(decoded.claims["nonce"], "n-1");
    assert_eq!(decoded.claims["sub"], "u1");
    // Before its age, nothing changes.
    clock.advance(SIGNING_KEY_ROTATE_SECS - 10);
    assert_eq!(accounts.ensure_signing_key(false).await.unwrap(), k1);
    // At its age a new key signs, and the old one stays published through the overlap.
    clock.advance(10);
    let k2 = accounts.ensure_signing_key(false).await.unwrap();
    assert_ne!(k2, k1);
    assert_eq!(kid_of(&accounts.id_token(&claims()).await.unwrap()), k2);
    let published = kids(&accounts.jwks().await.unwrap());
    assert!(published.contains(&k1) && published.contains(&k2));
    clock.advance(SIGNING_KEY_OVERLAP_SECS - 1);
    accounts.ensure_signing_key(false).await.unwrap();
    assert_eq!(kids(&accounts.jwks().await.unwrap()).len(), 2);
    // After the overlap the old key is retired.
    clock.advance(1);
    accounts.ensure_signing_key(false).await.unwrap();
    assert_eq!(kids(&accounts.jwks().await.unwrap()), vec![k2.clone()]);
    // A forced rotation (the CLI) replaces it at once, keeping the overlap.
    let k3 = accounts.ensure_signing_key(true).await.unwrap();
    assert_ne!(k3, k2);
    assert_eq!(kids(&accounts.jwks().await.unwrap()).len(), 2);
    // The private keys are sealed: no PKCS#8 header of an RSA key in the database file.
    accounts.store().clone().close().await;
    let rsa_pkcs8_marker: &[u8] = &[
        0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00, 0x04, 0x82,
    ];
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        assert!(
            !bytes
                .windows(rsa_pkcs8_marker.len())
                .any(|w| w == rsa_pkcs8_marker),
            "a private key in the clear on disk"
        );
    }
}

fn request(username: &str, password: &str) -> LoginRequest {
    LoginRequest {
        username: username.to_owned(),
        password: Password::new(password),
        totp: None,
        recovery_code: None,
        address: IpAddr::from([192, 0, 2, 7]),
    }
}

fn code_at(base32: &str, now: i64) -> String {
    let raw = totp_rs::Secret::try_from_base32(base32).unwrap();
    totp_rs::Builder::new()
        .with_algorithm(totp_rs::Algorithm::SHA1)
        .with_digits(6)
        .with_skew(0)
        .with_step_duration(30)
        .with_secret(raw)
        .build()
        .unwrap()
        .generate(u64::try_from(now).unwrap())
        .to_string()
}

#[tokio::test]
async fn a_two_step_login_asks_for_the_code_only_after_the_password_and_spends_its_ticket() {
    let dir = tempfile::tempdir().unwrap();
    let (accounts, clock) = service(&dir).await;
    let ip = IpAddr::from([192, 0, 2, 7]);
    // An account without a second factor is signed in at the first step.
    accounts
        .create_user("pat", Password::new(PASSWORD), Role::Patient, &NoAudit)
        .await
        .unwrap();
    let step = accounts
        .login_first_factor(request("pat", PASSWORD))
        .await
        .unwrap();
    assert!(matches!(step, LoginStep::Done(_)));
    // A clinician with TOTP: a ticket, then the code.
    accounts
        .create_user("doc", Password::new(PASSWORD), Role::Clinician, &NoAudit)
        .await
        .unwrap();
    let LoginStep::Done(first) = accounts
        .login_first_factor(request("doc", PASSWORD))
        .await
        .unwrap()
    else {
        panic!("an account without TOTP yet signs in (enrolment only)")
    };
    assert!(first.enrolment_only);
    let who = accounts.authenticate(first.token.expose()).await.unwrap();
    let enrolment = accounts.begin_totp_enrolment(&who, &NoAudit).await.unwrap();
    let now = T0;
    accounts
        .confirm_totp(&who, &code_at(&enrolment.secret_base32, now), &NoAudit)
        .await
        .unwrap();
    clock.advance(30);
    // A wrong password: the same refusal as ever, no ticket.
    assert!(matches!(
        accounts
            .login_first_factor(request("doc", "wrong password 1234"))
            .await,
        Err(ServiceError::CredentialFailure)
    ));
    let LoginStep::SecondFactor(ticket) = accounts
        .login_first_factor(request("doc", PASSWORD))
        .await
        .unwrap()
    else {
        panic!("a TOTP account needs the second step")
    };
    // A wrong code spends the ticket: the right code cannot follow with it.
    assert!(matches!(
        accounts
            .login_second_factor(ticket.expose(), Some("000000"), None, ip)
            .await,
        Err(ServiceError::CredentialFailure)
    ));
    let code = code_at(&enrolment.secret_base32, T0 + 30);
    assert!(matches!(
        accounts
            .login_second_factor(ticket.expose(), Some(&code), None, ip)
            .await,
        Err(ServiceError::CredentialFailure)
    ));
    // A fresh ticket and the right code: a full session; the ticket is spent.
    let LoginStep::SecondFactor(ticket) = accounts
        .login_first_factor(request("doc", PASSWORD))
        .await
        .unwrap()
    else {
        panic!("second step")
    };
    let session = accounts
        .login_second_factor(ticket.expose(), Some(&code), None, ip)
        .await
        .unwrap();
    assert!(!session.enrolment_only);
    assert!(accounts.authenticate(session.token.expose()).await.is_ok());
    assert!(
        accounts
            .login_second_factor(ticket.expose(), Some(&code), None, ip)
            .await
            .is_err()
    );
    // A ticket is not a session.
    assert!(accounts.authenticate(ticket.expose()).await.is_err());
}
