//! SMART App Launch refusals, over HTTPS against the real binary, on every backend: what the
//! authorization endpoint, its pages and the token, revocation and introspection endpoints
//! must refuse, each with its RFC 6749 / 7523 error code, without issuing a token, and with
//! the refusal in the audit trail. One server per backend serves every check; each check
//! talks from an address of its own (`X-Forwarded-For`, the server trusting 127.0.0.1 as a
//! proxy), so the per-address limit of failed client authentications never mixes them.
//!
//! Covered: unknown clients and unregistered redirect URIs (an error page, never a
//! redirect); PKCE required and S256 only; `aud`; scopes beyond the registration; `state`
//! returned intact; authorization codes (replay revokes the first exchange's tokens, another
//! client, expiry, verifier, redirect URI); `private_key_jwt` assertions (wrong key, `none`,
//! HS256 with the public key, expired, too long, wrong audience, replayed `jti`; good RS384
//! and ES384); refresh tokens (another client's, reuse kills the family); CSRF of the pages,
//! escaping, security headers and cookies; introspection; revocation; `client disable` and
//! `client rotate-secret`; a patient's Consent denying an app; the person's list of apps and
//! its revocation; the id_token; discovery.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "e2e_smart/person.rs"]
mod person;
#[path = "e2e_smart/tokens.rs"]
mod tokens;
#[path = "e2e_smart/world.rs"]
mod world;

use std::time::Instant;

use phivault_testkit::{AuthorizeUrl, ClientAuth, Decision, Pkce, backends};
use serde_json::json;
use world::*;

#[tokio::test(flavor = "multi_thread")]
async fn smart_app_launch_refusals() {
    for backend in backends() {
        let started = Instant::now();
        let ctx = Ctx::new(&backend).await;
        let setup = started.elapsed();
        discovery(&ctx).await;
        bad_client_or_redirect_uri(&ctx).await;
        pkce_aud_and_scope(&ctx).await;
        state_round_trip(&ctx).await;
        code_refusals(&ctx).await;
        tokens::client_assertions(&ctx).await;
        tokens::refresh_refusals(&ctx).await;
        person::pages_csrf_and_headers(&ctx).await;
        let clinician = person::clinician_picker(&ctx).await;
        tokens::introspection(&ctx).await;
        tokens::revocation_disable_and_rotation(&ctx).await;
        person::consent_binds_issued_tokens(&ctx, &clinician).await;
        person::apps_of_a_person(&ctx).await;
        person::id_token(&ctx).await;
        let logs = ctx.server.stderr_text();
        assert!(
            !logs.contains(&ctx.password),
            "a password reached the server's logs"
        );
        // No credential of any kind (sessions, access and refresh tokens, codes, secrets,
        // second-factor tickets, launches) reached the logs, nor an assertion.
        for prefix in [
            "pvs_", "pva_", "pvr_", "pvo_", "pvc_", "pvm_", "pvl_", "eyJ",
        ] {
            assert!(
                !logs.contains(prefix),
                "something like a credential ({prefix}...) reached the logs"
            );
        }
        ctx.server.assert_no_panic();
        eprintln!(
            "smart refusals ({}): setup {:.1}s, total {:.1}s",
            backend.name(),
            setup.as_secs_f64(),
            started.elapsed().as_secs_f64()
        );
    }
}

/// `/.well-known/smart-configuration`: the capabilities, S256 only.
async fn discovery(ctx: &Ctx) {
    let http = ctx.http();
    let r = http.get("/.well-known/smart-configuration", None).await;
    r.assert_status(200);
    let d = r.json();
    assert_eq!(
        d["code_challenge_methods_supported"],
        json!(["S256"]),
        "{d}"
    );
    let caps = d["capabilities"].as_array().expect("capabilities");
    for needed in [
        "launch-standalone",
        "launch-ehr",
        "client-public",
        "client-confidential-symmetric",
        "client-confidential-asymmetric",
        "context-standalone-patient",
        "permission-v2",
        "permission-offline",
        "sso-openid-connect",
    ] {
        assert!(caps.contains(&json!(needed)), "capability {needed}: {d}");
    }
    let root = ctx.server.origin();
    assert_eq!(d["token_endpoint"], format!("{root}/oauth/token"));
    assert_eq!(
        d["authorization_endpoint"],
        format!("{root}/oauth/authorize")
    );
    assert_eq!(d["issuer"], ctx.server.base());
    let methods = d["token_endpoint_auth_methods_supported"].to_string();
    assert!(methods.contains("private_key_jwt"), "{d}");
    assert_eq!(
        d["token_endpoint_auth_signing_alg_values_supported"],
        json!(["RS384", "ES384"])
    );
}

/// An unknown client or an unregistered redirect URI gets an error page, never a redirect.
async fn bad_client_or_redirect_uri(ctx: &Ctx) {
    let http = ctx.http();
    let pkce = Pkce::generate();
    let good = AuthorizeUrl::new(
        &http,
        &ctx.public.client_id,
        CB,
        "patient/*.rs",
        "s1",
        &pkce,
    );
    let cases = [
        (
            "unknown client",
            good.clone().set("client_id", "pvcl_no-such-client"),
        ),
        ("no client", good.clone().remove("client_id")),
        (
            "unregistered redirect URI",
            good.clone().set("redirect_uri", "https://evil.example/cb"),
        ),
        (
            "redirect URI not exactly registered",
            good.clone().set("redirect_uri", &format!("{CB}/")),
        ),
        (
            "redirect URI with a query added",
            good.clone().set("redirect_uri", &format!("{CB}?x=1")),
        ),
        ("no redirect URI", good.clone().remove("redirect_uri")),
        (
            "another client's redirect URI",
            good.clone().set("redirect_uri", CB3),
        ),
    ];
    for (what, url) in cases {
        let since = ctx.server.audit_seq().await;
        let mut browser = ctx.server.browser();
        let r = browser.open(&url.url()).await;
        assert_eq!(r.status, 400, "{what}: an error page: {r:?}");
        assert!(r.location().is_none(), "{what}: never a redirect: {r:?}");
        assert_html_page(&r, what);
        let e = ctx
            .refusal(since, "GET /oauth/authorize refused page", None)
            .await;
        assert_eq!(e["outcome"], "error", "{what}: {e}");
    }
    // A parameter given twice (which redirect URI would count?): a page too.
    let twice = format!("{}&redirect_uri={}", good.url(), urlencoding::encode(CB2));
    let r = ctx.browser().open(&twice).await;
    assert_eq!(r.status, 400, "a repeated parameter: {r:?}");
    assert!(r.location().is_none(), "{r:?}");
}

/// PKCE is required and S256 only; `aud` must be this server; scopes stay within the
/// registration (at the authorization endpoint: a redirect; with client credentials: 400).
async fn pkce_aud_and_scope(ctx: &Ctx) {
    let http = ctx.http();
    let pkce = Pkce::generate();
    let good = AuthorizeUrl::new(
        &http,
        &ctx.public.client_id,
        CB,
        "launch/patient patient/*.rs",
        "st-1",
        &pkce,
    );
    let cases = [
        (
            "no PKCE",
            good.clone()
                .remove("code_challenge")
                .remove("code_challenge_method"),
            "invalid_request",
        ),
        (
            "no method",
            good.clone().remove("code_challenge_method"),
            "invalid_request",
        ),
        (
            "plain",
            good.clone()
                .set("code_challenge_method", "plain")
                .set("code_challenge", &pkce.verifier),
            "invalid_request",
        ),
        (
            "S256 without a challenge",
            good.clone().remove("code_challenge"),
            "invalid_request",
        ),
        (
            "a challenge that is not S256",
            good.clone().set("code_challenge", "short"),
            "invalid_request",
        ),
        (
            "aud another server",
            good.clone().set("aud", "https://elsewhere.example/fhir"),
            "invalid_request",
        ),
        ("no aud", good.clone().remove("aud"), "invalid_request"),
        (
            "scope beyond the registration",
            good.clone().set("scope", "patient/*.cruds"),
            "invalid_scope",
        ),
        (
            "system scope for a person",
            good.clone().set("scope", "system/*.rs"),
            "invalid_scope",
        ),
        ("no scope", good.clone().remove("scope"), "invalid_scope"),
        (
            "response_type token",
            good.clone().set("response_type", "token"),
            "unsupported_response_type",
        ),
    ];
    for (what, url, error) in cases {
        let since = ctx.server.audit_seq().await;
        let codes = ctx.codes_of(&ctx.public.client_id).await;
        let mut browser = ctx.server.browser();
        let r = browser.open(&url.url()).await;
        assert_eq!(r.status, 303, "{what}: redirected to the app: {r:?}");
        let location = r.location().unwrap();
        assert!(
            location.starts_with(&format!("{CB}?")),
            "{what}: {location}"
        );
        assert_eq!(r.redirect_param("error").as_deref(), Some(error), "{what}");
        assert_eq!(r.redirect_param("state").as_deref(), Some("st-1"), "{what}");
        assert!(r.redirect_param("code").is_none(), "{what}: {location}");
        assert_eq!(ctx.codes_of(&ctx.public.client_id).await, codes, "{what}");
        ctx.refusal(
            since,
            &format!("GET /oauth/authorize refused {error}"),
            None,
        )
        .await;
    }

    // No state: refused, and none invented.
    let r = ctx
        .browser()
        .open(&good.clone().remove("state").url())
        .await;
    assert_eq!(
        r.redirect_param("error").as_deref(),
        Some("invalid_request")
    );
    assert!(r.redirect_param("state").is_none(), "{r:?}");

    // Client credentials beyond the registration: JSON 400, no token.
    let http = ctx.http();
    let id = &ctx.jwt.client_id;
    let before = ctx.server.tokens_of_client(id).await;
    let since = ctx.server.audit_seq().await;
    let assertion = ctx.rsa.assertion(id, &http.token_endpoint());
    let r = http
        .client_credentials(&ClientAuth::assertion(assertion), Some("system/*.cruds"))
        .await;
    assert_oauth_error(&r, 400, "invalid_scope");
    assert_eq!(ctx.server.tokens_of_client(id).await, before, "no token");
    let e = ctx
        .refusal(
            since,
            "POST /oauth/token client_credentials refused invalid_scope",
            Some(id),
        )
        .await;
    assert_ne!(e["outcome"], "allowed", "{e}");
}

/// `state` comes back exactly as sent: on an approval, a denial and an error.
async fn state_round_trip(ctx: &Ctx) {
    let state = "a b&c=d+e%20f/?#é✓ 患者";
    let (r, _) = ctx
        .authorize(
            &ctx.public,
            CB,
            "patient/*.rs",
            state,
            Decision::ApproveOffered,
        )
        .await;
    assert!(r.redirect_param("code").is_some(), "{r:?}");
    assert_eq!(r.redirect_param("state").as_deref(), Some(state));
    let (r, _) = ctx
        .authorize(&ctx.public, CB, "patient/*.rs", state, Decision::Deny)
        .await;
    assert_eq!(r.status, 303, "{r:?}");
    assert_eq!(r.redirect_param("error").as_deref(), Some("access_denied"));
    assert_eq!(r.redirect_param("state").as_deref(), Some(state));
    assert!(r.redirect_param("code").is_none(), "{r:?}");
    let http = ctx.http();
    let url = AuthorizeUrl::new(
        &http,
        &ctx.public.client_id,
        CB,
        "patient/*.rs",
        state,
        &Pkce::generate(),
    )
    .set("code_challenge_method", "plain");
    let r = ctx.server.browser().open(&url.url()).await;
    assert_eq!(r.redirect_param("state").as_deref(), Some(state));
}

/// Authorization codes: replay, another client, expiry, verifier, redirect URI.
async fn code_refusals(ctx: &Ctx) {
    let http = ctx.http();
    let public = &ctx.public;
    let auth = public.auth();
    let scope = "launch/patient offline_access patient/*.rs";

    // Replay: refused, and the first exchange's tokens die with it.
    let (code, pkce) = ctx.code(public, CB, scope).await;
    let r = http.exchange_code(&auth, &code, CB, &pkce.verifier).await;
    r.assert_status(200);
    let first = r.json();
    let access = first["access_token"].as_str().unwrap();
    let refresh = first["refresh_token"].as_str().unwrap();
    assert_eq!(first["patient"], ctx.patient.as_str(), "{first}");
    ctx.reads(access, 200).await;
    let refused = ctx
        .refused_exchange(
            public,
            &auth,
            &code,
            CB,
            &pkce.verifier,
            400,
            "invalid_grant",
        )
        .await;
    assert!(refused.contains("authorization_code"), "{refused}");
    ctx.reads(access, 401).await;
    let r = http.refresh(&auth, refresh, None).await;
    assert_oauth_error(&r, 400, "invalid_grant");

    // Presented by another client: refused (and spent).
    let (code, pkce) = ctx.code(public, CB, scope).await;
    let other = &ctx.public2;
    let before = ctx.server.tokens_of_client(&public.client_id).await;
    ctx.refused_exchange(
        other,
        &other.auth(),
        &code,
        CB,
        &pkce.verifier,
        400,
        "invalid_grant",
    )
    .await;
    assert_eq!(ctx.server.tokens_of_client(&public.client_id).await, before);
    ctx.refused_exchange(
        public,
        &auth,
        &code,
        CB,
        &pkce.verifier,
        400,
        "invalid_grant",
    )
    .await;

    // Expiry: a code lives 60 s (stored so); an aged one is refused.
    let (code, pkce) = ctx.code(public, CB, scope).await;
    let wrong_lifetimes = ctx
        .server
        .sql_count(
            "SELECT COUNT(*) FROM oauth_codes WHERE client_id = $1 AND expires_at <> issued_at + 60",
            &[&public.client_id],
        )
        .await;
    assert_eq!(
        wrong_lifetimes, 0,
        "every code of the client lives exactly 60 s"
    );
    // Every unused code of the client, the one just issued among them, is aged past its
    // expiry (its row only: the code itself is unchanged).
    let aged = ctx
        .server
        .sql(
            "UPDATE oauth_codes SET issued_at = issued_at - 61, expires_at = expires_at - 61 \
             WHERE client_id = $1 AND used_at IS NULL",
            &[&public.client_id],
        )
        .await;
    assert!(aged >= 1, "the code just issued is unused");
    ctx.refused_exchange(
        public,
        &auth,
        &code,
        CB,
        &pkce.verifier,
        400,
        "invalid_grant",
    )
    .await;

    // Wrong verifier, none, another registered redirect URI.
    let (code, _) = ctx.code(public, CB, scope).await;
    let wrong = Pkce::generate();
    ctx.refused_exchange(
        public,
        &auth,
        &code,
        CB,
        &wrong.verifier,
        400,
        "invalid_grant",
    )
    .await;
    let (code, pkce) = ctx.code(public, CB, scope).await;
    ctx.refused_exchange(
        public,
        &auth,
        &code,
        CB2,
        &pkce.verifier,
        400,
        "invalid_grant",
    )
    .await;
    let (code, _) = ctx.code(public, CB, scope).await;
    let before = ctx.server.tokens_of_client(&public.client_id).await;
    let r = http
        .token(
            &auth,
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", CB),
            ],
        )
        .await;
    assert_oauth_error(&r, 400, "invalid_request");
    assert_eq!(ctx.server.tokens_of_client(&public.client_id).await, before);
    // An unknown client: invalid_client, the entry names the grant (no actor).
    let since = ctx.server.audit_seq().await;
    let nobody = ClientAuth::Public("pvcl_no-such-client".to_owned());
    let r = http.exchange_code(&nobody, &code, CB, "x").await;
    assert_oauth_error(&r, 401, "invalid_client");
    let e = ctx
        .refusal(
            since,
            "POST /oauth/token authorization_code refused invalid_client",
            None,
        )
        .await;
    assert_eq!(e["outcome"], "denied", "{e}");
    assert_eq!(e["actor_kind"], "anonymous", "{e}");
    // An unknown grant type; a parameter given twice.
    let r = http
        .token(&auth, &[("grant_type", "password"), ("username", "u")])
        .await;
    assert_oauth_error(&r, 400, "unsupported_grant_type");
    let r = http
        .token(
            &auth,
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("code", &code),
                ("redirect_uri", CB),
            ],
        )
        .await;
    assert_oauth_error(&r, 400, "invalid_request");
    // A code is not a refresh token, nor the reverse.
    let r = http.refresh(&auth, &code, None).await;
    assert_oauth_error(&r, 400, "invalid_grant");
}
