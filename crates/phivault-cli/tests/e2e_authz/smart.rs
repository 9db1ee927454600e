//! The authorization matrix through SMART App Launch tokens: the same cells, the same
//! expected answers as with sessions.

use std::collections::BTreeSet;

use phivault_testkit::{
    AuthorizeUrl, ClientAuth, ClientKey, ClientSpec, Decision, Pkce, Server, backends,
};

use super::{BIN, Who, World, run_matrix, table};

/// The matrix again with every principal acting through an app (SMART App Launch): each
/// user's session is replaced by an access token of the authorization code flow, signed in
/// through the pages (`user/*.cruds` for staff, `patient/*.cruds` for patients; two of them
/// through a refresh), and the system app by a `private_key_jwt` client with
/// `system/*.cruds`. An app gets at most what the person may do, and nothing in the matrix
/// is beyond the scopes: every decision must be the one of [`MATRIX`]. SQLite only: the
/// decisions do not depend on the backend, and the session matrix covers both.
#[tokio::test(flavor = "multi_thread")]
async fn authorization_matrix_through_smart_apps() {
    let table = table();
    let backend = backends().remove(0);
    let server = Server::start(BIN, &backend, &[]).await;
    let mut w = World::new(server).await;
    smart_tokens(&mut w).await;
    let failures = run_matrix(&w, &table).await;
    eprintln!(
        "authorization matrix through SMART apps ({}): {} answered otherwise",
        backend.name(),
        failures.len()
    );
    w.server.assert_no_panic();
    assert!(
        failures.is_empty(),
        "{} cells answered otherwise through SMART apps than with sessions:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Replaces the World's user sessions and system token with SMART App Launch tokens.
async fn smart_tokens(w: &mut World) {
    const CB: &str = "https://app.example/cb";
    const STAFF_SCOPE: &str = "user/*.cruds offline_access";
    const PATIENT_SCOPE: &str = "launch/patient patient/*.cruds offline_access";
    let server = &w.server;
    let public = |name, scope| ClientSpec {
        kind: "public",
        name,
        scope,
        redirect_uris: &[CB],
        jwks: None,
    };
    let staff_app = server
        .register_client(&public("staff app", STAFF_SCOPE))
        .await;
    let patient_app = server
        .register_client(&public("patient app", PATIENT_SCOPE))
        .await;
    let http = server.oauth();
    for (who, account) in &w.accounts {
        let patient = match who {
            Who::PatientP1 => Some(w.p1.as_str()),
            Who::PatientP2 => Some(w.p2.as_str()),
            _ => None,
        };
        let (app, scope) = match patient {
            Some(_) => (&patient_app, PATIENT_SCOPE),
            None => (&staff_app, STAFF_SCOPE),
        };
        let pkce = Pkce::generate();
        let url = AuthorizeUrl::new(&http, &app.client_id, CB, scope, "m", &pkce);
        let mut browser = server.browser();
        let page = browser.open(&url.url()).await;
        page.assert_status(200);
        let mut page = browser
            .sign_in(&page, &account.username, &account.password)
            .await;
        if let Some(totp) = &account.totp {
            // The sign-in's TOTP step is spent: a recovery code is the second factor here.
            page = browser.totp(&page, &totp.recovery_codes[0]).await;
        }
        page.assert_status(200);
        let r = browser.consent(&page, Decision::ApproveOffered).await;
        let code = r
            .redirect_param("code")
            .unwrap_or_else(|| panic!("{who:?}: an approval gives a code: {r:?}"));
        let r = http
            .exchange_code(&app.auth(), &code, CB, &pkce.verifier)
            .await;
        r.assert_status(200);
        let mut t = r.json();
        if matches!(who, Who::Care | Who::PatientP2) {
            let refresh = t["refresh_token"].as_str().expect("offline_access");
            let r = http.refresh(&app.auth(), refresh, None).await;
            r.assert_status(200);
            t = r.json();
        }
        let granted: BTreeSet<&str> = t["scope"].as_str().unwrap().split(' ').collect();
        assert_eq!(granted, scope.split(' ').collect(), "{who:?}: {t}");
        assert_eq!(t["patient"].as_str(), patient, "{who:?}: {t}");
        let token = t["access_token"].as_str().unwrap();
        assert!(token.starts_with("pva_"), "{who:?}: an app's access token");
        w.apis.insert(*who, server.api_as(token));
    }
    // The system app: a backend service with its own key (private_key_jwt).
    let key = ClientKey::es384("system-1");
    let backend = server
        .register_client(&ClientSpec {
            kind: "confidential-jwt",
            name: "backend service",
            scope: "system/*.cruds",
            redirect_uris: &[],
            jwks: Some(phivault_testkit::oauth::jwks(&[&key])),
        })
        .await;
    let assertion = key.assertion(&backend.client_id, &http.token_endpoint());
    let r = http
        .client_credentials(&ClientAuth::assertion(assertion), None)
        .await;
    r.assert_status(200);
    assert_eq!(r.json()["scope"], "system/*.cruds");
    let token = r.json()["access_token"].as_str().unwrap().to_owned();
    w.apis.insert(Who::System, server.api_as(&token));
}
