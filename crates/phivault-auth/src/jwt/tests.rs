//! Tests of the client assertion rules, the JWK set filter and the id_token signing key.

use std::sync::OnceLock;

use aws_lc_rs::hmac;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair,
    RSA_PKCS1_SHA384, RSA_PSS_SHA384, RsaEncoding,
};
use jsonwebtoken::jwk::Jwk;

use super::*;

const CLIENT: &str = "client-7";
const ENDPOINT: &str = "https://ehr.example/oauth/token";
const NOW: i64 = 1_800_000_000;

/// RSA keys are slow to generate: one per role, shared by the tests.
fn rsa_key(slot: usize) -> &'static RsaKeyPair {
    static KEYS: [OnceLock<RsaKeyPair>; 3] = [OnceLock::new(), OnceLock::new(), OnceLock::new()];
    KEYS[slot].get_or_init(|| RsaKeyPair::generate(KeySize::Rsa2048).unwrap())
}

fn client_rsa() -> &'static RsaKeyPair {
    rsa_key(0)
}

fn attacker_rsa() -> &'static RsaKeyPair {
    rsa_key(1)
}

fn client_ec() -> &'static EcdsaKeyPair {
    static KEY: OnceLock<EcdsaKeyPair> = OnceLock::new();
    KEY.get_or_init(|| EcdsaKeyPair::generate(&ECDSA_P384_SHA384_FIXED_SIGNING).unwrap())
}

fn rsa_jwk(pair: &RsaKeyPair, kid: &str) -> Value {
    let RsaPublicKeyComponents { n, e } =
        RsaPublicKeyComponents::<Vec<u8>>::from(pair.public_key());
    json!({
        "kty": "RSA", "kid": kid, "alg": "RS384", "use": "sig",
        "n": URL_SAFE_NO_PAD.encode(n), "e": URL_SAFE_NO_PAD.encode(e),
    })
}

fn ec_jwk(pair: &EcdsaKeyPair, kid: &str, crv: &str) -> Value {
    let point = pair.public_key().as_ref();
    let half = (point.len() - 1) / 2;
    json!({
        "kty": "EC", "kid": kid, "crv": crv,
        "x": URL_SAFE_NO_PAD.encode(&point[1..=half]),
        "y": URL_SAFE_NO_PAD.encode(&point[half + 1..]),
    })
}

fn jwks(keys: &[Value]) -> ClientJwks {
    ClientJwks::parse(&json!({ "keys": keys }).to_string()).unwrap()
}

/// The registered set of the client in most tests: one RSA and one P-384 key.
fn client_jwks() -> ClientJwks {
    jwks(&[
        rsa_jwk(client_rsa(), "rsa-1"),
        ec_jwk(client_ec(), "ec-1", "P-384"),
    ])
}

fn good_claims() -> Value {
    json!({ "iss": CLIENT, "sub": CLIENT, "aud": ENDPOINT, "exp": NOW + 120, "jti": "j-1" })
}

fn compact(header: &Value, claims: &Value, sign: impl Fn(&[u8]) -> Vec<u8>) -> String {
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = sign(message.as_bytes());
    format!("{message}.{}", URL_SAFE_NO_PAD.encode(signature))
}

fn rsa_sign(
    pair: &'static RsaKeyPair,
    encoding: &'static dyn RsaEncoding,
) -> impl Fn(&[u8]) -> Vec<u8> {
    move |message| {
        let mut signature = vec![0; pair.public_modulus_len()];
        pair.sign(encoding, &SystemRandom::new(), message, &mut signature)
            .unwrap();
        signature
    }
}

fn ec_sign(pair: &'static EcdsaKeyPair) -> impl Fn(&[u8]) -> Vec<u8> {
    move |message| {
        pair.sign(&SystemRandom::new(), message)
            .unwrap()
            .as_ref()
            .to_vec()
    }
}

fn rs384(kid: Option<&str>, claims: &Value) -> String {
    let mut header = json!({ "alg": "RS384", "typ": "JWT" });
    if let Some(kid) = kid {
        header["kid"] = json!(kid);
    }
    compact(&header, claims, rsa_sign(client_rsa(), &RSA_PKCS1_SHA384))
}

fn verify(assertion: &str) -> Result<AssertionClaims, AssertionError> {
    verify_client_assertion(assertion, &client_jwks(), CLIENT, ENDPOINT, NOW)
}

fn with(claims: &[(&str, Value)]) -> Value {
    let mut value = good_claims();
    for (name, claim) in claims {
        value[*name] = claim.clone();
    }
    value
}

fn without(name: &str) -> Value {
    let mut value = good_claims();
    value.as_object_mut().unwrap().remove(name);
    value
}

#[test]
fn a_good_rs384_assertion_is_accepted() {
    let claims = verify(&rs384(Some("rsa-1"), &good_claims())).unwrap();
    assert_eq!(
        claims,
        AssertionClaims {
            jti: "j-1".into(),
            exp: NOW + 120
        }
    );
    // Without a kid, every RSA key is tried.
    assert!(verify(&rs384(None, &good_claims())).is_ok());
}

#[test]
fn a_good_es384_assertion_is_accepted() {
    let header = json!({ "alg": "ES384", "typ": "JWT", "kid": "ec-1" });
    let token = compact(&header, &good_claims(), ec_sign(client_ec()));
    assert_eq!(verify(&token).unwrap().jti, "j-1");
    let header = json!({ "alg": "ES384" });
    let token = compact(&header, &good_claims(), ec_sign(client_ec()));
    assert!(verify(&token).is_ok());
}

#[test]
fn alg_none_and_missing_alg_are_refused() {
    for header in [
        json!({ "alg": "none", "kid": "rsa-1" }),
        json!({ "alg": "None" }),
        json!({ "alg": "" }),
        json!({ "alg": null }),
        json!({ "alg": ["RS384"] }),
        json!({ "typ": "JWT" }),
    ] {
        let token = compact(&header, &good_claims(), |_| Vec::new());
        assert_eq!(verify(&token), Err(AssertionError::Algorithm), "{header}");
    }
    let unsigned = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
        URL_SAFE_NO_PAD.encode(good_claims().to_string())
    );
    assert_eq!(verify(&unsigned), Err(AssertionError::Algorithm));
}

#[test]
fn hs256_signed_with_the_public_key_is_refused() {
    // The classic confusion attack: the attacker knows the public key and uses its bytes as
    // an HMAC secret, hoping the verifier feeds the same bytes to HMAC.
    let RsaPublicKeyComponents { n, .. } =
        RsaPublicKeyComponents::<Vec<u8>>::from(client_rsa().public_key());
    let jwk_text = rsa_jwk(client_rsa(), "rsa-1").to_string();
    for secret in [
        n,
        jwk_text.into_bytes(),
        client_rsa().public_key().as_ref().to_vec(),
    ] {
        for alg in ["HS256", "HS384", "HS512"] {
            let header = json!({ "alg": alg, "kid": "rsa-1" });
            let key = hmac::Key::new(hmac::HMAC_SHA256, &secret);
            let token = compact(&header, &good_claims(), |message| {
                hmac::sign(&key, message).as_ref().to_vec()
            });
            assert_eq!(verify(&token), Err(AssertionError::Algorithm), "{alg}");
        }
    }
}

#[test]
fn other_asymmetric_algorithms_are_refused() {
    let sign = rsa_sign(client_rsa(), &RSA_PKCS1_SHA384);
    for alg in [
        "RS256", "RS512", "PS384", "ES256", "ES512", "EdDSA", "rs384",
    ] {
        let header = json!({ "alg": alg, "kid": "rsa-1" });
        let token = compact(&header, &good_claims(), &sign);
        assert_eq!(verify(&token), Err(AssertionError::Algorithm), "{alg}");
    }
    // A genuine RS256 signature by the registered key is still RS256.
    let header = json!({ "alg": "RS256", "kid": "rsa-1" });
    let token = compact(
        &header,
        &good_claims(),
        rsa_sign(client_rsa(), &RSA_PKCS1_SHA256),
    );
    assert_eq!(verify(&token), Err(AssertionError::Algorithm));
    // A PSS signature presented as RS384 does not verify.
    let header = json!({ "alg": "RS384", "kid": "rsa-1" });
    let token = compact(
        &header,
        &good_claims(),
        rsa_sign(client_rsa(), &RSA_PSS_SHA384),
    );
    assert_eq!(verify(&token), Err(AssertionError::Signature));
}

#[test]
fn a_wrong_key_is_refused() {
    let header = json!({ "alg": "RS384", "kid": "rsa-1" });
    let token = compact(
        &header,
        &good_claims(),
        rsa_sign(attacker_rsa(), &RSA_PKCS1_SHA384),
    );
    assert_eq!(verify(&token), Err(AssertionError::Signature));
    let header = json!({ "alg": "RS384" });
    let token = compact(
        &header,
        &good_claims(),
        rsa_sign(attacker_rsa(), &RSA_PKCS1_SHA384),
    );
    assert_eq!(verify(&token), Err(AssertionError::Signature));
}

#[test]
fn a_key_in_the_header_is_ignored() {
    let header = json!({ "alg": "RS384", "jwk": rsa_jwk(attacker_rsa(), "evil"),
        "jku": "https://evil.example/jwks" });
    let token = compact(
        &header,
        &good_claims(),
        rsa_sign(attacker_rsa(), &RSA_PKCS1_SHA384),
    );
    assert_eq!(verify(&token), Err(AssertionError::Signature));
}

#[test]
fn unknown_kid_or_key_type_is_refused() {
    assert_eq!(
        verify(&rs384(Some("rsa-2"), &good_claims())),
        Err(AssertionError::UnknownKey)
    );
    // The kid of the EC key with RS384: no RSA key has it.
    assert_eq!(
        verify(&rs384(Some("ec-1"), &good_claims())),
        Err(AssertionError::UnknownKey)
    );
    // ES384 against a set holding RSA keys only.
    let rsa_only = jwks(&[rsa_jwk(client_rsa(), "rsa-1")]);
    let token = compact(
        &json!({ "alg": "ES384" }),
        &good_claims(),
        ec_sign(client_ec()),
    );
    assert_eq!(
        verify_client_assertion(&token, &rsa_only, CLIENT, ENDPOINT, NOW),
        Err(AssertionError::UnknownKey)
    );
}

#[test]
fn every_key_of_the_type_is_tried_without_kid() {
    let set = jwks(&[rsa_jwk(attacker_rsa(), "old"), rsa_jwk(client_rsa(), "new")]);
    let token = rs384(None, &good_claims());
    assert!(verify_client_assertion(&token, &set, CLIENT, ENDPOINT, NOW).is_ok());
    // With a kid, only that key: the right signature under the wrong kid fails.
    let token = rs384(Some("old"), &good_claims());
    assert_eq!(
        verify_client_assertion(&token, &set, CLIENT, ENDPOINT, NOW),
        Err(AssertionError::Signature)
    );
}

#[test]
fn expiry_is_checked_with_the_callers_clock_and_leeway() {
    let at = |exp: i64| verify(&rs384(Some("rsa-1"), &with(&[("exp", json!(exp))])));
    assert_eq!(at(NOW - 61), Err(AssertionError::Expired));
    assert_eq!(at(NOW - 60), Err(AssertionError::Expired));
    assert!(at(NOW - 59).is_ok());
    assert!(at(NOW).is_ok());
    assert!(at(NOW + 300).is_ok());
    assert_eq!(at(NOW + 301), Err(AssertionError::TooLong));
    assert_eq!(at(NOW + 86_400), Err(AssertionError::TooLong));
    assert_eq!(at(i64::MAX), Err(AssertionError::TooLong));
    // The system clock plays no part: far from NOW, the same token is judged by `now`.
    let token = rs384(Some("rsa-1"), &good_claims());
    assert_eq!(
        verify_client_assertion(&token, &client_jwks(), CLIENT, ENDPOINT, NOW + 3_600),
        Err(AssertionError::Expired)
    );
}

#[test]
fn exp_must_be_an_integer() {
    for exp in [
        json!("1800000100"),
        json!(1_800_000_100.5),
        json!(null),
        json!(-1),
    ] {
        let result = verify(&rs384(Some("rsa-1"), &with(&[("exp", exp.clone())])));
        assert!(
            matches!(
                result,
                Err(AssertionError::Claims("exp") | AssertionError::Expired)
            ),
            "{exp}: {result:?}"
        );
    }
    assert_eq!(
        verify(&rs384(Some("rsa-1"), &without("exp"))),
        Err(AssertionError::Claims("exp"))
    );
}

#[test]
fn nbf_in_the_future_is_refused() {
    let at = |nbf: i64| verify(&rs384(Some("rsa-1"), &with(&[("nbf", json!(nbf))])));
    assert!(at(NOW + 60).is_ok());
    assert_eq!(at(NOW + 61), Err(AssertionError::Claims("nbf")));
}

#[test]
fn audience_must_be_the_token_endpoint() {
    let aud = |aud: Value| verify(&rs384(Some("rsa-1"), &with(&[("aud", aud)])));
    assert_eq!(
        aud(json!("https://ehr.example/oauth/authorize")),
        Err(AssertionError::Claims("aud"))
    );
    assert_eq!(
        aud(json!("https://ehr.example/oauth/token/")),
        Err(AssertionError::Claims("aud"))
    );
    assert!(aud(json!(["https://other.example", ENDPOINT])).is_ok());
    assert_eq!(
        aud(json!(["https://other.example"])),
        Err(AssertionError::Claims("aud"))
    );
    assert_eq!(aud(json!([])), Err(AssertionError::Claims("aud")));
    assert_eq!(aud(json!(42)), Err(AssertionError::Claims("aud")));
    assert_eq!(
        verify(&rs384(Some("rsa-1"), &without("aud"))),
        Err(AssertionError::Claims("aud"))
    );
}

#[test]
fn issuer_and_subject_must_be_the_client() {
    let claims = |iss: Value, sub: Value| with(&[("iss", iss), ("sub", sub)]);
    assert_eq!(
        verify(&rs384(
            Some("rsa-1"),
            &claims(json!("other"), json!(CLIENT))
        )),
        Err(AssertionError::Claims("iss"))
    );
    assert_eq!(
        verify(&rs384(
            Some("rsa-1"),
            &claims(json!(CLIENT), json!("other"))
        )),
        Err(AssertionError::Claims("sub"))
    );
    // iss == sub, but not the authenticating client.
    assert!(matches!(
        verify(&rs384(
            Some("rsa-1"),
            &claims(json!("other"), json!("other"))
        )),
        Err(AssertionError::Claims("iss" | "sub"))
    ));
    // An array issuer passes jsonwebtoken's check but is not a client id.
    assert_eq!(
        verify(&rs384(
            Some("rsa-1"),
            &claims(json!([CLIENT]), json!(CLIENT))
        )),
        Err(AssertionError::Claims("iss"))
    );
    for name in ["iss", "sub"] {
        assert_eq!(
            verify(&rs384(Some("rsa-1"), &without(name))),
            Err(AssertionError::Claims(name))
        );
    }
}

#[test]
fn jti_is_required_and_bounded() {
    let jti = |jti: Value| verify(&rs384(Some("rsa-1"), &with(&[("jti", jti)])));
    assert_eq!(jti(json!("")), Err(AssertionError::Claims("jti")));
    assert_eq!(
        jti(json!("x".repeat(257))),
        Err(AssertionError::Claims("jti"))
    );
    assert_eq!(jti(json!(7)), Err(AssertionError::Claims("jti")));
    assert_eq!(jti(json!("x".repeat(256))).unwrap().jti.len(), 256);
    assert_eq!(
        jti(json!("é".repeat(256))).unwrap().jti.chars().count(),
        256
    );
    assert_eq!(
        verify(&rs384(Some("rsa-1"), &without("jti"))),
        Err(AssertionError::Claims("jti"))
    );
}

#[test]
fn malformed_assertions_are_refused() {
    let good = rs384(Some("rsa-1"), &good_claims());
    let parts: Vec<&str> = good.split('.').collect();
    let tampered_claims = URL_SAFE_NO_PAD.encode(with(&[("jti", json!("j-2"))]).to_string());
    assert_eq!(
        verify(&format!("{}.{tampered_claims}.{}", parts[0], parts[2])),
        Err(AssertionError::Signature)
    );
    let not_json = URL_SAFE_NO_PAD.encode("not json");
    for token in [
        String::new(),
        "abc".to_owned(),
        format!("{}.{}", parts[0], parts[1]),
        format!("{good}.extra"),
        format!("!!.{}.{}", parts[1], parts[2]),
        format!("{not_json}.{}.{}", parts[1], parts[2]),
        format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode("[1]"),
            parts[1],
            parts[2]
        ),
        format!("{}.{not_json}.{}", parts[0], parts[2]),
        format!("{}.{}.!!", parts[0], parts[1]),
        format!("{good}{}", "A".repeat(MAX_ASSERTION_BYTES)),
    ] {
        let result = verify(&token);
        assert!(
            matches!(
                result,
                Err(AssertionError::Malformed | AssertionError::Signature)
            ),
            "{token:.40}: {result:?}"
        );
    }
    let kid_number = json!({ "alg": "RS384", "kid": 1 });
    let token = compact(
        &kid_number,
        &good_claims(),
        rsa_sign(client_rsa(), &RSA_PKCS1_SHA384),
    );
    assert_eq!(verify(&token), Err(AssertionError::Malformed));
}

#[test]
fn payload_that_is_not_json_after_a_good_signature_is_malformed() {
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"RS384","kid":"rsa-1"}"#);
    let payload = URL_SAFE_NO_PAD.encode("not json");
    let message = format!("{header}.{payload}");
    let signature = rsa_sign(client_rsa(), &RSA_PKCS1_SHA384)(message.as_bytes());
    let token = format!("{message}.{}", URL_SAFE_NO_PAD.encode(signature));
    assert_eq!(verify(&token), Err(AssertionError::Malformed));
}

#[test]
fn a_single_jwk_is_a_set_of_one() {
    let set = ClientJwks::parse(&rsa_jwk(client_rsa(), "rsa-1").to_string()).unwrap();
    assert_eq!(set.len(), 1);
    assert!(!set.is_empty());
    let token = rs384(Some("rsa-1"), &good_claims());
    assert!(verify_client_assertion(&token, &set, CLIENT, ENDPOINT, NOW).is_ok());
    assert_eq!(client_jwks().len(), 2);
}

#[test]
fn private_and_symmetric_keys_refuse_the_set() {
    let mut private = rsa_jwk(client_rsa(), "rsa-1");
    private["d"] = json!("AQAB");
    let set = json!({ "keys": [rsa_jwk(client_rsa(), "ok"), private] }).to_string();
    assert_eq!(ClientJwks::parse(&set).unwrap_err(), JwtError::PrivateKey);
    let mut ec_private = ec_jwk(client_ec(), "ec-1", "P-384");
    ec_private["d"] = json!("AAAA");
    assert_eq!(
        ClientJwks::parse(&ec_private.to_string()).unwrap_err(),
        JwtError::PrivateKey
    );
    let oct = json!({ "keys": [rsa_jwk(client_rsa(), "ok"), { "kty": "oct", "k": "c2VjcmV0" }] });
    assert_eq!(
        ClientJwks::parse(&oct.to_string()).unwrap_err(),
        JwtError::SymmetricKey
    );
}

#[test]
fn unusable_keys_are_left_out() {
    let p256 = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
    let mut rs256_only = rsa_jwk(client_rsa(), "rsa-1");
    rs256_only["alg"] = json!("RS256");
    let mut encryption = rsa_jwk(client_rsa(), "rsa-1");
    encryption["use"] = json!("enc");
    let mut sign_only = rsa_jwk(client_rsa(), "rsa-1");
    sign_only["key_ops"] = json!(["sign"]);
    let mut ec_as_rsa_alg = ec_jwk(client_ec(), "ec-1", "P-384");
    ec_as_rsa_alg["alg"] = json!("RS384");
    // 1024-bit modulus (only its size matters here).
    let mut small = vec![0xC3u8; 128];
    small[127] = 0x01;
    let weak = json!({ "kty": "RSA", "n": URL_SAFE_NO_PAD.encode(&small), "e": "AQAB" });
    let okp = json!({ "kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo" });
    for key in [
        ec_jwk(&p256, "p256", "P-256"),
        rs256_only,
        encryption,
        sign_only,
        ec_as_rsa_alg,
        weak,
        okp,
    ] {
        assert_eq!(
            ClientJwks::parse(&json!({ "keys": [key.clone()] }).to_string()).unwrap_err(),
            JwtError::NoUsableKey,
            "{key}"
        );
    }
    // A usable key next to them is kept, alone.
    let mixed = json!({ "keys": [ec_jwk(&p256, "p256", "P-256"), rsa_jwk(client_rsa(), "rsa-1")] });
    assert_eq!(ClientJwks::parse(&mixed.to_string()).unwrap().len(), 1);
    assert_eq!(
        ClientJwks::parse(r#"{"keys":[]}"#).unwrap_err(),
        JwtError::NoUsableKey
    );
}

#[test]
fn malformed_sets_are_refused_without_echoing_keys() {
    let good = rsa_jwk(client_rsa(), "rsa-1");
    let n = good["n"].as_str().unwrap().to_owned();
    let mut bad_e = good.clone();
    bad_e["e"] = json!("AQAA");
    let mut e_one = good.clone();
    e_one["e"] = json!("AQ");
    let mut bad_n = good.clone();
    bad_n["n"] = json!(format!("{n}=="));
    let mut no_kty = good.clone();
    no_kty.as_object_mut().unwrap().remove("kty");
    let mut kid_number = good.clone();
    kid_number["kid"] = json!(3);
    let mut short_x = ec_jwk(client_ec(), "ec-1", "P-384");
    short_x["x"] = json!("AAAA");
    let mut no_crv = ec_jwk(client_ec(), "ec-1", "P-384");
    no_crv.as_object_mut().unwrap().remove("crv");
    let mut ops_string = good.clone();
    ops_string["key_ops"] = json!("verify");
    let too_many = json!({ "keys": vec![good; MAX_KEYS + 1] }).to_string();
    let cases = [
        ("not json".to_owned(), JwtError::Jwks("not JSON")),
        ("[]".to_owned(), JwtError::Jwks("not a JSON object")),
        (
            r#"{"keys":{}}"#.to_owned(),
            JwtError::Jwks("keys is not an array"),
        ),
        (
            r#"{"keys":[1]}"#.to_owned(),
            JwtError::Jwks("a key is not an object"),
        ),
        (bad_e.to_string(), JwtError::Jwks("e")),
        (e_one.to_string(), JwtError::Jwks("e")),
        (bad_n.to_string(), JwtError::Jwks("n")),
        (no_kty.to_string(), JwtError::Jwks("kty")),
        (kid_number.to_string(), JwtError::Jwks("kid")),
        (short_x.to_string(), JwtError::Jwks("x")),
        (no_crv.to_string(), JwtError::Jwks("crv")),
        (ops_string.to_string(), JwtError::Jwks("key_ops")),
        (too_many, JwtError::Jwks("too many keys")),
        (" ".repeat(MAX_JWKS_BYTES + 1), JwtError::Jwks("too large")),
    ];
    for (text, expected) in cases {
        let err = ClientJwks::parse(&text).unwrap_err();
        assert_eq!(err, expected, "{text:.60}");
        assert!(!err.to_string().contains(&n[..16]));
    }
}

#[test]
fn error_texts_hold_no_key_material() {
    for err in [
        AssertionError::Algorithm,
        AssertionError::UnknownKey,
        AssertionError::Signature,
        AssertionError::Claims("aud"),
        AssertionError::Expired,
        AssertionError::TooLong,
        AssertionError::Malformed,
        AssertionError::Unavailable,
    ] {
        assert!(
            err.to_string().starts_with("client assertion") || err == AssertionError::Unavailable
        );
    }
}

fn server_key() -> &'static SigningKey {
    static KEY: OnceLock<SigningKey> = OnceLock::new();
    KEY.get_or_init(|| SigningKey::generate().unwrap())
}

/// Verifies an id_token the way a relying party does: jsonwebtoken, the published JWK.
fn relying_party_decode(token: &str, jwk: &Value) -> jsonwebtoken::errors::Result<Value> {
    let jwk: Jwk = serde_json::from_value(jwk.clone()).unwrap();
    let key = DecodingKey::from_jwk(&jwk).unwrap();
    let mut validation = Validation::new(Algorithm::RS256);
    // The time and audience rules are the relying party's; this checks the signature.
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_aud = false;
    jsonwebtoken::decode::<Value>(token, &key, &validation).map(|data| {
        assert_eq!(data.header.kid.as_deref(), Some(server_key().kid()));
        assert_eq!(data.header.typ.as_deref(), Some("JWT"));
        data.claims
    })
}

#[test]
fn an_id_token_verifies_with_the_published_jwk() {
    let key = server_key();
    let jwk = key.public_jwk();
    assert_eq!(jwk["kty"], "RSA");
    assert_eq!(jwk["alg"], "RS256");
    assert_eq!(jwk["use"], "sig");
    assert_eq!(jwk["e"], "AQAB");
    assert_eq!(jwk["kid"], key.kid());
    assert_eq!(jwk.as_object().unwrap().len(), 6);
    assert_eq!(
        URL_SAFE_NO_PAD
            .decode(jwk["n"].as_str().unwrap())
            .unwrap()
            .len(),
        256
    );
    // The kid is the RFC 7638 thumbprint of the public key.
    assert_eq!(key.kid(), jwk_thumbprint(&key.n, &key.e),);
    let claims = json!({ "iss": "https://ehr.example", "sub": "u-1", "aud": "app",
        "exp": NOW + 300, "iat": NOW, "nonce": "n-1", "fhirUser": "Practitioner/p-1" });
    let token = key.sign(&claims).unwrap();
    assert_eq!(relying_party_decode(&token, &jwk).unwrap(), claims);
    // Tampering breaks it; another key does not verify it.
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    parts[1] = URL_SAFE_NO_PAD.encode(json!({ "sub": "u-2" }).to_string());
    assert!(relying_party_decode(&parts.join("."), &jwk).is_err());
    let other = rsa_jwk(attacker_rsa(), key.kid());
    assert!(relying_party_decode(&token, &other).is_err());
}

#[test]
fn a_stored_key_signs_the_same() {
    let key = server_key();
    let again = SigningKey::from_der(key.kid(), key.private_der()).unwrap();
    assert_eq!(again.kid(), key.kid());
    assert_eq!(again.public_jwk(), key.public_jwk());
    assert_eq!(again.private_der().as_slice(), key.private_der().as_slice());
    let token = again.sign(&json!({ "sub": "u-1" })).unwrap();
    assert_eq!(
        relying_party_decode(&token, &key.public_jwk()).unwrap(),
        json!({ "sub": "u-1" })
    );
}

#[test]
fn bad_stored_keys_and_claims_are_refused() {
    let key = server_key();
    assert_eq!(
        SigningKey::from_der(key.kid(), b"not a key").unwrap_err(),
        JwtError::SigningKey("not an RSA PKCS#8 key")
    );
    let ec = EcdsaKeyPair::generate(&ECDSA_P384_SHA384_FIXED_SIGNING).unwrap();
    let ec_der = ec.to_pkcs8v1().unwrap();
    assert!(SigningKey::from_der("k", ec_der.as_ref()).is_err());
    for kid in ["", "a\nb"] {
        assert_eq!(
            SigningKey::from_der(kid, key.private_der()).unwrap_err(),
            JwtError::SigningKey("kid")
        );
    }
    assert!(key.sign(&json!(["not", "an", "object"])).is_err());
    assert!(key.sign(&json!("text")).is_err());
}

#[test]
fn debug_prints_the_kid_only() {
    let key = server_key();
    let debug = format!("{key:?}");
    assert!(debug.contains(key.kid()));
    assert!(!debug.contains(&URL_SAFE_NO_PAD.encode(&key.private_der()[..32])));
    assert!(!debug.contains(&hex::encode(&key.private_der()[..32])));
    assert!(debug.len() < 120, "{debug}");
    let jwks_debug = format!("{:?}", client_jwks());
    assert!(jwks_debug.contains("rsa-1"));
}

#[test]
fn thumbprint_matches_rfc_7638_example() {
    let n = URL_SAFE_NO_PAD
        .decode(concat!(
            "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_B",
            "JECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_F",
            "DW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4",
            "vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
        ))
        .unwrap();
    let e = URL_SAFE_NO_PAD.decode("AQAB").unwrap();
    assert_eq!(
        jwk_thumbprint(&n, &e),
        "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
    );
}
