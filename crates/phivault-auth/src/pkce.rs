//! PKCE (RFC 7636) for the OAuth2 authorization-code grant, `S256` method only.
//!
//! A public client cannot keep a secret, so it proves that the party redeeming an authorization
//! code is the one that asked for it: it sends `code_challenge = BASE64URL(SHA256(verifier))`
//! with the authorization request and the `code_verifier` with the token request.
//!
//! Rules this module keeps:
//! - **S256 only.** The `plain` method (challenge = verifier) is not offered: a challenge that is
//!   not the base64url of 32 bytes is refused ([`is_valid_challenge`]), so a verifier can never be
//!   accepted by comparing it with itself.
//! - **The verifier has the RFC shape**: 43 to 128 characters of `[A-Za-z0-9-._~]`
//!   (RFC 7636 section 4.1), which also bounds the work done on outside input.
//! - **Constant-time comparison** of the recomputed challenge with the stored one.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Shortest code verifier RFC 7636 allows (32 random bytes in base64url).
pub const VERIFIER_MIN_CHARS: usize = 43;
/// Longest code verifier RFC 7636 allows.
pub const VERIFIER_MAX_CHARS: usize = 128;
/// Length of an S256 code challenge: base64url without padding of a 32-byte SHA-256.
pub const CHALLENGE_CHARS: usize = 43;

/// True when `challenge` is an S256 code challenge: exactly 43 characters that decode as
/// canonical base64url (no padding) to 32 bytes.
pub fn is_valid_challenge(challenge: &str) -> bool {
    // The length check comes first so the decoder never sees long outside input. The base64
    // decoder refuses non-zero trailing bits, so one challenge has one spelling only.
    challenge.len() == CHALLENGE_CHARS
        && URL_SAFE_NO_PAD
            .decode(challenge)
            .is_ok_and(|bytes| bytes.len() == 32)
}

/// True when `verifier` is a well-formed code verifier whose S256 transform equals `challenge`.
///
/// A malformed verifier or challenge answers `false` (never an error: the token endpoint turns
/// every PKCE failure into the same `invalid_grant`).
pub fn verifier_matches(verifier: &str, challenge: &str) -> bool {
    if !is_valid_verifier(verifier) || !is_valid_challenge(challenge) {
        return false;
    }
    let computed = URL_SAFE_NO_PAD.encode(phivault_crypto::sha256(verifier.as_bytes()));
    phivault_crypto::ct_eq(computed.as_bytes(), challenge.as_bytes())
}

/// RFC 7636 section 4.1: `code-verifier = 43*128unreserved`, unreserved = ALPHA / DIGIT / "-" /
/// "." / "_" / "~". ASCII only, so the byte length is the character count.
fn is_valid_verifier(verifier: &str) -> bool {
    (VERIFIER_MIN_CHARS..=VERIFIER_MAX_CHARS).contains(&verifier.len())
        && verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// RFC 7636 appendix B.
    const RFC_VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    const RFC_CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

    #[test]
    fn rfc_7636_appendix_b_vector_matches() {
        assert!(is_valid_challenge(RFC_CHALLENGE));
        assert!(verifier_matches(RFC_VERIFIER, RFC_CHALLENGE));
    }

    #[test]
    fn a_different_verifier_does_not_match() {
        let other = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXl";
        assert!(!verifier_matches(other, RFC_CHALLENGE));
    }

    #[test]
    fn plain_method_is_not_accepted() {
        // With `plain`, challenge == verifier; S256 must not accept that.
        assert!(!verifier_matches(RFC_VERIFIER, RFC_VERIFIER));
    }

    #[test]
    fn verifier_shape_is_enforced() {
        let ok43 = "a".repeat(43);
        let ok128 = "~".repeat(128);
        assert!(is_valid_verifier(&ok43));
        assert!(is_valid_verifier(&ok128));
        assert!(is_valid_verifier(
            "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQ-._~0123"
        ));
        for bad in [
            "a".repeat(42),
            "a".repeat(129),
            format!("{}+", "a".repeat(42)),
            format!("{}/", "a".repeat(42)),
            format!("{}=", "a".repeat(42)),
            format!("{} ", "a".repeat(42)),
            format!("{}é", "a".repeat(41)),
            String::new(),
        ] {
            assert!(!is_valid_verifier(&bad), "{bad:?}");
        }
    }

    #[test]
    fn a_matching_challenge_of_a_malformed_verifier_is_refused() {
        // 42 characters: the hash would match, the shape does not.
        let short = "a".repeat(42);
        let challenge = URL_SAFE_NO_PAD.encode(phivault_crypto::sha256(short.as_bytes()));
        assert!(is_valid_challenge(&challenge));
        assert!(!verifier_matches(&short, &challenge));
    }

    #[test]
    fn challenge_shape_is_enforced() {
        assert!(!is_valid_challenge(""));
        assert!(!is_valid_challenge(&RFC_CHALLENGE[..42]));
        assert!(!is_valid_challenge(&format!("{RFC_CHALLENGE}=")));
        assert!(!is_valid_challenge(&format!("{RFC_CHALLENGE}A")));
        // Standard base64 alphabet characters are not base64url.
        assert!(!is_valid_challenge(&RFC_CHALLENGE.replace('-', "+")));
        // Non-canonical last character (non-zero trailing bits).
        assert!(!is_valid_challenge(&format!("{}N", &RFC_CHALLENGE[..42])));
        assert!(!verifier_matches(RFC_VERIFIER, &RFC_CHALLENGE[..42]));
    }
}
