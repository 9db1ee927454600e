//! The app's keys for `private_key_jwt` (RS384, ES384), good and deliberately bad client
//! assertions, and id_token verification as a relying party does it.

use aws_lc_rs::hmac;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _, RSA_PKCS1_SHA384, RsaKeyPair,
    RsaPublicKeyComponents,
};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use crate::identity::unix_now;
use crate::markers::random_u64;

// ---------------------------------------------------------------------------------------
// private_key_jwt

enum KeyPair {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
}

/// A client's signing key for `private_key_jwt`: RSA-2048 (RS384) or P-384 (ES384).
pub struct ClientKey {
    kid: String,
    pair: KeyPair,
}

impl std::fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg())
            .finish_non_exhaustive()
    }
}

/// Deliberately bad client assertions: each must be refused with `invalid_client`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadAssertion {
    /// Signed by another key of the same type and `kid`.
    WrongKey,
    /// `alg: none`, no signature.
    AlgNone,
    /// HS256 with the public key's bytes as the HMAC secret (the key-confusion attack).
    Hs256WithPublicKey,
    /// `exp` two minutes ago (past the server's leeway).
    Expired,
    /// `exp` ten minutes ahead (more than five).
    ExpTooFar,
    /// `aud` another server's token endpoint.
    WrongAudience,
}

impl BadAssertion {
    /// Every kind.
    pub const ALL: [BadAssertion; 6] = [
        BadAssertion::WrongKey,
        BadAssertion::AlgNone,
        BadAssertion::Hs256WithPublicKey,
        BadAssertion::Expired,
        BadAssertion::ExpTooFar,
        BadAssertion::WrongAudience,
    ];
}

/// The claims of a client assertion: `iss` = `sub` = the client, `aud`, `exp` =
/// now + `lifetime`, `iat`, a fresh `jti`.
pub fn assertion_claims(client_id: &str, aud: &str, lifetime: i64) -> Value {
    let now = i64::try_from(unix_now()).expect("a time in range");
    json!({
        "iss": client_id,
        "sub": client_id,
        "aud": aud,
        "exp": now + lifetime,
        "iat": now,
        "jti": format!("jti-{:016x}", random_u64()),
    })
}

/// A compact JWT of `header` and `claims`, signed by `sign` (empty: no signature).
pub fn compact_jwt(header: &Value, claims: &Value, sign: impl FnOnce(&[u8]) -> Vec<u8>) -> String {
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = sign(message.as_bytes());
    format!("{message}.{}", URL_SAFE_NO_PAD.encode(signature))
}

/// A JWK set of these keys' public halves.
pub fn jwks(keys: &[&ClientKey]) -> Value {
    json!({ "keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>() })
}

impl ClientKey {
    /// A fresh RSA-2048 key for RS384.
    pub fn rs384(kid: &str) -> ClientKey {
        ClientKey {
            kid: kid.to_owned(),
            pair: KeyPair::Rsa(RsaKeyPair::generate(KeySize::Rsa2048).expect("an RSA key")),
        }
    }

    /// A fresh P-384 key for ES384.
    pub fn es384(kid: &str) -> ClientKey {
        ClientKey {
            kid: kid.to_owned(),
            pair: KeyPair::Ec(
                EcdsaKeyPair::generate(&ECDSA_P384_SHA384_FIXED_SIGNING).expect("a P-384 key"),
            ),
        }
    }

    /// Another fresh key of the same type and `kid` (an impostor's).
    pub fn impostor(&self) -> ClientKey {
        match self.pair {
            KeyPair::Rsa(_) => ClientKey::rs384(&self.kid),
            KeyPair::Ec(_) => ClientKey::es384(&self.kid),
        }
    }

    /// Its key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// `RS384` or `ES384`.
    pub fn alg(&self) -> &'static str {
        match self.pair {
            KeyPair::Rsa(_) => "RS384",
            KeyPair::Ec(_) => "ES384",
        }
    }

    /// The bytes of the public key (RSA: DER RSAPublicKey; EC: the uncompressed point).
    pub fn public_bytes(&self) -> Vec<u8> {
        match &self.pair {
            KeyPair::Rsa(p) => p.public_key().as_ref().to_vec(),
            KeyPair::Ec(p) => p.public_key().as_ref().to_vec(),
        }
    }

    /// The public JWK (`kty`, `kid`, `alg`, `use` and the key members).
    pub fn jwk(&self) -> Value {
        match &self.pair {
            KeyPair::Rsa(p) => {
                let RsaPublicKeyComponents { n, e } =
                    RsaPublicKeyComponents::<Vec<u8>>::from(p.public_key());
                json!({
                    "kty": "RSA", "kid": self.kid, "alg": "RS384", "use": "sig",
                    "n": URL_SAFE_NO_PAD.encode(n), "e": URL_SAFE_NO_PAD.encode(e),
                })
            }
            KeyPair::Ec(p) => {
                let point = p.public_key().as_ref();
                let half = (point.len() - 1) / 2;
                json!({
                    "kty": "EC", "kid": self.kid, "alg": "ES384", "use": "sig", "crv": "P-384",
                    "x": URL_SAFE_NO_PAD.encode(&point[1..=half]),
                    "y": URL_SAFE_NO_PAD.encode(&point[half + 1..]),
                })
            }
        }
    }

    /// The signature of `message` with this key's algorithm.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match &self.pair {
            KeyPair::Rsa(p) => {
                let mut signature = vec![0; p.public_modulus_len()];
                p.sign(&RSA_PKCS1_SHA384, &rng, message, &mut signature)
                    .expect("RSA signing works");
                signature
            }
            KeyPair::Ec(p) => p
                .sign(&rng, message)
                .expect("ECDSA signing works")
                .as_ref()
                .to_vec(),
        }
    }

    /// A JWT of `claims` signed with this key (header `alg`, `kid`, `typ`).
    pub fn sign_jwt(&self, claims: &Value) -> String {
        let header = json!({ "alg": self.alg(), "kid": self.kid, "typ": "JWT" });
        compact_jwt(&header, claims, |m| self.sign(m))
    }

    /// A good assertion for `client_id` at the token endpoint `aud`: 2 minutes, fresh `jti`.
    pub fn assertion(&self, client_id: &str, aud: &str) -> String {
        self.sign_jwt(&assertion_claims(client_id, aud, 120))
    }

    /// A good assertion with a chosen `jti` and lifetime (a replay signs another one with a
    /// `jti` already used).
    pub fn assertion_with_jti(
        &self,
        client_id: &str,
        aud: &str,
        jti: &str,
        lifetime: i64,
    ) -> String {
        let mut claims = assertion_claims(client_id, aud, lifetime);
        claims["jti"] = json!(jti);
        self.sign_jwt(&claims)
    }

    /// A deliberately bad assertion of kind `bad`, otherwise well-formed.
    pub fn bad_assertion(&self, bad: BadAssertion, client_id: &str, aud: &str) -> String {
        let good = assertion_claims(client_id, aud, 120);
        let with = |name: &str, value: Value| {
            let mut c = good.clone();
            c[name] = value;
            c
        };
        let now = i64::try_from(unix_now()).expect("a time in range");
        match bad {
            BadAssertion::WrongKey => self.impostor().sign_jwt(&good),
            BadAssertion::AlgNone => {
                let header = json!({ "alg": "none", "kid": self.kid, "typ": "JWT" });
                compact_jwt(&header, &good, |_| Vec::new())
            }
            BadAssertion::Hs256WithPublicKey => {
                let header = json!({ "alg": "HS256", "kid": self.kid, "typ": "JWT" });
                let key = hmac::Key::new(hmac::HMAC_SHA256, &self.public_bytes());
                compact_jwt(&header, &good, |m| hmac::sign(&key, m).as_ref().to_vec())
            }
            BadAssertion::Expired => self.sign_jwt(&with("exp", json!(now - 120))),
            BadAssertion::ExpTooFar => self.sign_jwt(&with("exp", json!(now + 600))),
            BadAssertion::WrongAudience => {
                self.sign_jwt(&with("aud", json!("https://elsewhere.example/oauth/token")))
            }
        }
    }
}

/// Verifies an id_token with the server's published JWK set (`GET /oauth/jwks`) the way a
/// relying party does (jsonwebtoken, RS256, the key of the token's `kid`, `iss` and `aud`
/// checked); returns the claims, or why it does not verify.
pub fn try_verify_id_token(
    jwks: &Value,
    token: &str,
    issuer: &str,
    audience: &str,
) -> Result<Value, String> {
    use jsonwebtoken::crypto::CryptoProvider;
    if CryptoProvider::try_get_default().is_none() {
        let _ = CryptoProvider::install_default(&jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER);
    }
    let header = jsonwebtoken::decode_header(token).map_err(|e| format!("header: {e:?}"))?;
    if header.alg != jsonwebtoken::Algorithm::RS256 {
        return Err(format!("alg {:?}, not RS256", header.alg));
    }
    let kid = header.kid.ok_or("the id_token names no key (kid)")?;
    let jwk = jwks["keys"]
        .as_array()
        .and_then(|keys| keys.iter().find(|k| k["kid"] == kid.as_str()))
        .ok_or_else(|| format!("no key {kid} in the published set"))?;
    let jwk: jsonwebtoken::jwk::Jwk =
        serde_json::from_value(jwk.clone()).map_err(|e| format!("not a JWK: {e}"))?;
    let key = jsonwebtoken::DecodingKey::from_jwk(&jwk).map_err(|e| format!("key: {e:?}"))?;
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_audience(&[audience]);
    validation.set_issuer(&[issuer]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    jsonwebtoken::decode::<Value>(token, &key, &validation)
        .map(|data| data.claims)
        .map_err(|e| format!("{e:?}"))
}

/// [`try_verify_id_token`], a test failure when the id_token does not verify.
pub fn verify_id_token(jwks: &Value, token: &str, issuer: &str, audience: &str) -> Value {
    try_verify_id_token(jwks, token, issuer, audience)
        .unwrap_or_else(|e| panic!("the id_token does not verify: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assertions_have_the_shape_asked_for() {
        let key = ClientKey::es384("k1");
        let jwt = key.assertion("c", "https://h/oauth/token");
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        assert_eq!(header["alg"], "ES384");
        assert_eq!(header["kid"], "k1");
        let none = key.bad_assertion(BadAssertion::AlgNone, "c", "a");
        assert!(none.ends_with('.'));
        assert_eq!(key.jwk()["crv"], "P-384");
    }
}
