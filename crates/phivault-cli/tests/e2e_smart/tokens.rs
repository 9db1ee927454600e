//! The token, introspection and revocation endpoints: client assertions, refresh tokens,
//! introspection, revocation, `client disable` and `client rotate-secret`.

use phivault_testkit::{AuthorizeUrl, BadAssertion, ClientAuth, ClientSpec, Pkce};
use serde_json::json;

use super::world::*;

/// `private_key_jwt`: every bad assertion is `invalid_client`; good RS384 and ES384 pass.
pub(crate) async fn client_assertions(ctx: &Ctx) {
    let http = ctx.http();
    let id = &ctx.jwt.client_id;
    let aud = http.token_endpoint();
    for key in [&ctx.rsa, &ctx.ec] {
        let r = http
            .client_credentials(&ClientAuth::assertion(key.assertion(id, &aud)), None)
            .await;
        r.assert_status(200);
        assert_eq!(r.json()["scope"], "system/*.rs", "{r:?}");
        let token = r.json()["access_token"].as_str().unwrap().to_owned();
        ctx.reads(&token, 200).await;
    }
    let bad: Vec<(String, String)> = BadAssertion::ALL
        .iter()
        .map(|b| (format!("RS384 {b:?}"), ctx.rsa.bad_assertion(*b, id, &aud)))
        .chain(
            [
                BadAssertion::WrongKey,
                BadAssertion::AlgNone,
                BadAssertion::Hs256WithPublicKey,
            ]
            .iter()
            .map(|b| (format!("ES384 {b:?}"), ctx.ec.bad_assertion(*b, id, &aud))),
        )
        .collect();
    for (what, jwt) in bad {
        ctx.refused_assertion(&http, &what, ClientAuth::assertion(jwt))
            .await;
    }
    // A public client cannot use client credentials.
    let before = ctx.server.tokens_of_client(&ctx.public.client_id).await;
    let r = http.client_credentials(&ctx.public.auth(), None).await;
    assert_oauth_error(&r, 400, "unauthorized_client");
    assert_eq!(
        ctx.server.tokens_of_client(&ctx.public.client_id).await,
        before
    );
    // From another address: the per-address limit counts 20 failures.
    let http = ctx.http();
    // A replayed jti: the same assertion again, or another one signed with its jti (by
    // either key of the client), is refused.
    let jti = format!("replay-{}", phivault_testkit::random_u64());
    let once = ctx.ec.assertion_with_jti(id, &aud, &jti, 120);
    let r = http
        .client_credentials(&ClientAuth::assertion(once.clone()), None)
        .await;
    r.assert_status(200);
    ctx.refused_assertion(
        &http,
        "the same assertion again",
        ClientAuth::assertion(once),
    )
    .await;
    for key in [&ctx.ec, &ctx.rsa] {
        let again = key.assertion_with_jti(id, &aud, &jti, 90);
        ctx.refused_assertion(
            &http,
            "a new assertion, a used jti",
            ClientAuth::assertion(again),
        )
        .await;
    }
    // A client_id naming another client than the assertion's subject.
    ctx.refused_assertion(
        &http,
        "client_id of another client",
        ClientAuth::Assertion {
            client_id: Some(ctx.secret.client_id.clone()),
            jwt: ctx.rsa.assertion(id, &aud),
        },
    )
    .await;
    // A public client naming the jwt client's id without an assertion.
    ctx.refused_assertion(&http, "no assertion", ClientAuth::Public(id.clone()))
        .await;
}

/// Refresh tokens: another client's is refused; a reused one kills its whole family.
pub(crate) async fn refresh_refusals(ctx: &Ctx) {
    let http = ctx.http();
    let public = &ctx.public;
    let auth = public.auth();
    let t = ctx
        .tokens(public, "launch/patient offline_access patient/*.rs")
        .await;
    let r1 = t["refresh_token"].as_str().unwrap();

    // Another client presents it: refused, and the family lives on.
    let since = ctx.server.audit_seq().await;
    let r = http.refresh(&ctx.public2.auth(), r1, None).await;
    assert_oauth_error(&r, 400, "invalid_grant");
    ctx.refusal(
        since,
        "POST /oauth/token refresh_token refused invalid_grant",
        Some(&ctx.public2.client_id),
    )
    .await;
    ctx.reads(t["access_token"].as_str().unwrap(), 200).await;

    // A scope beyond the grant: refused.
    let r = http.refresh(&auth, r1, Some("patient/*.cruds")).await;
    assert_oauth_error(&r, 400, "invalid_scope");

    // Rotation, then reuse of the rotated token.
    let r = http.refresh(&auth, r1, None).await;
    r.assert_status(200);
    let t2 = r.json();
    let a2 = t2["access_token"].as_str().unwrap();
    let r2 = t2["refresh_token"].as_str().unwrap();
    assert_ne!(r2, r1, "the refresh token rotates");
    ctx.reads(a2, 200).await;
    let before = ctx.server.tokens_of_client(&public.client_id).await;
    let since = ctx.server.audit_seq().await;
    let r = http.refresh(&auth, r1, None).await;
    assert_oauth_error(&r, 400, "invalid_grant");
    assert_eq!(ctx.server.tokens_of_client(&public.client_id).await, before);
    let e = ctx.refusal(since, "reuse", Some(&public.client_id)).await;
    assert!(
        e["action"]
            .as_str()
            .unwrap()
            .contains("refused invalid_grant"),
        "{e}"
    );
    ctx.reads(a2, 401).await;
    ctx.reads(t["access_token"].as_str().unwrap(), 401).await;
    let r = http.refresh(&auth, r2, None).await;
    assert_oauth_error(&r, 400, "invalid_grant");
}

/// Introspection: active tokens described, revoked and unknown ones inactive, public
/// clients refused.
pub(crate) async fn introspection(ctx: &Ctx) {
    let http = ctx.http();
    let t = ctx
        .tokens(&ctx.public, "launch/patient offline_access patient/*.rs")
        .await;
    let access = t["access_token"].as_str().unwrap();
    let refresh = t["refresh_token"].as_str().unwrap();
    let by_secret = ctx.secret.auth();
    let r = http.introspect(&by_secret, access).await;
    r.assert_status(200);
    let v = r.json();
    assert_eq!(v["active"], true, "{v}");
    assert_eq!(v["scope"], t["scope"], "{v}");
    assert_eq!(v["client_id"], ctx.public.client_id.as_str(), "{v}");
    assert!(v["sub"].as_str().is_some_and(|s| !s.is_empty()), "{v}");
    assert_eq!(v["patient"], ctx.patient.as_str(), "{v}");
    // By a key-holding client too, and HTTP Basic.
    let jwt = ClientAuth::assertion(
        ctx.rsa
            .assertion(&ctx.jwt.client_id, &http.token_endpoint()),
    );
    let r = http.introspect(&jwt, refresh).await;
    r.assert_status(200);
    assert_eq!(r.json()["active"], true);
    assert_eq!(r.json()["token_type"], "refresh_token");
    let basic = ClientAuth::Basic {
        id: ctx.secret.client_id.clone(),
        secret: ctx.secret.secret.clone().unwrap(),
    };
    let r = http.introspect(&basic, access).await;
    assert_eq!(r.json()["active"], true, "{r:?}");
    // Unknown and revoked: inactive.
    for unknown in ["pva_not-a-token", "garbage"] {
        let r = http.introspect(&by_secret, unknown).await;
        r.assert_status(200);
        assert_eq!(r.json(), json!({ "active": false }));
    }
    http.revoke(&ctx.public.auth(), access)
        .await
        .assert_status(200);
    let r = http.introspect(&by_secret, access).await;
    assert_eq!(r.json(), json!({ "active": false }));
    // A public client cannot introspect.
    let since = ctx.server.audit_seq().await;
    let r = http.introspect(&ctx.public.auth(), refresh).await;
    assert_oauth_error(&r, 401, "invalid_client");
    ctx.refusal(since, "POST /oauth/introspect", None).await;
    let r = http.introspect(&ClientAuth::Nothing, refresh).await;
    assert_oauth_error(&r, 401, "invalid_client");
}

/// Revocation by the client (a refresh token takes its family), `client disable` (every
/// token of the client at once) and `client rotate-secret`.
pub(crate) async fn revocation_disable_and_rotation(ctx: &Ctx) {
    let http = ctx.http();
    let scope = "launch/patient offline_access patient/*.rs";
    let t = ctx.tokens(&ctx.public, scope).await;
    let access = t["access_token"].as_str().unwrap();
    let refresh = t["refresh_token"].as_str().unwrap();
    // Another client's revocation is ignored (200 all the same).
    http.revoke(&ctx.public2.auth(), refresh)
        .await
        .assert_status(200);
    ctx.reads(access, 200).await;
    http.revoke(&ctx.public.auth(), refresh)
        .await
        .assert_status(200);
    ctx.reads(access, 401).await;
    let r = http.refresh(&ctx.public.auth(), refresh, None).await;
    assert_oauth_error(&r, 400, "invalid_grant");

    // `client disable`: every token of the client, at once.
    let doomed = ctx.public_client("doomed").await;
    let t1 = ctx.tokens(&doomed, scope).await;
    let t2 = ctx.tokens(&doomed, scope).await;
    for t in [&t1, &t2] {
        ctx.reads(t["access_token"].as_str().unwrap(), 200).await;
    }
    ctx.server
        .cli(&["client", "disable", &doomed.client_id], None)
        .await
        .assert_ok("phivault client disable");
    for t in [&t1, &t2] {
        ctx.reads(t["access_token"].as_str().unwrap(), 401).await;
        let r = http
            .refresh(&doomed.auth(), t["refresh_token"].as_str().unwrap(), None)
            .await;
        assert_oauth_error(&r, 401, "invalid_client");
    }
    let url = AuthorizeUrl::new(&http, &doomed.client_id, CB, scope, "d", &Pkce::generate());
    let r = ctx.server.browser().open(&url.url()).await;
    assert_eq!(
        r.status, 400,
        "a disabled client gets no authorization: {r:?}"
    );
    assert!(r.location().is_none());

    // `client rotate-secret`: the old secret fails, the new one works.
    let rotated = ctx
        .server
        .register_client(&ClientSpec {
            kind: "confidential-secret",
            name: "rotated",
            scope: "system/Patient.rs",
            redirect_uris: &[],
            jwks: None,
        })
        .await;
    let old = rotated.auth();
    http.introspect(&old, "x").await.assert_status(200);
    let out = ctx
        .server
        .cli(&["client", "rotate-secret", &rotated.client_id], None)
        .await;
    out.assert_ok("phivault client rotate-secret");
    let new_secret = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("client_secret: "))
        .expect("the new secret on stdout")
        .trim()
        .to_owned();
    assert_ne!(Some(&new_secret), rotated.secret.as_ref());
    let since = ctx.server.audit_seq().await;
    let r = http.introspect(&old, "x").await;
    assert_oauth_error(&r, 401, "invalid_client");
    ctx.refusal(since, "POST /oauth/introspect", None).await;
    let new = ClientAuth::Post {
        id: rotated.client_id.clone(),
        secret: new_secret,
    };
    http.introspect(&new, "x").await.assert_status(200);
}
