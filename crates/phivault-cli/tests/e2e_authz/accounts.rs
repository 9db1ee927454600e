//! Accounts and access beyond the matrix: break-the-glass as the first access, TOTP, lockout,
//! OAuth2 clients, the administration commands, care relationships from CareTeams.

use super::*;

// ---------------------------------------------------------------------------------------
// Break-the-glass as the first access: a search limited to one patient

/// DESIGN.md: a clinician "may claim an emergency (ETREAT with a reason) to pass a denial".
/// A search limited to one patient (`Observation?patient=X`) names the patient the claim is
/// for, so it passes like a read does, even as the clinician's first access to that patient.
#[tokio::test(flavor = "multi_thread")]
async fn break_the_glass_search_first() {
    let mut report = Vec::new();
    for backend in backends() {
        let server = Server::start(BIN, &backend, &[]).await;
        let sys = server.api().clone();
        let code = Marker::code("bg-");
        let p = sys
            .create(&fixtures::patient(Marker::name().text(), "Emergency"))
            .await;
        let o = sys.create(&observation(&p, &code, false)).await;
        let token = server.staff_session(&random_username(), "clinician").await;
        let api = server.api_as(&token);
        let reason = Marker::name();
        let q = query("Observation", &[("patient", &p)]);
        // Without the claim: nothing.
        let r = Api::send(
            api.request(Method::GET, &q)
                .header("X-Purpose-Of-Use", "ETREAT"),
        )
        .await;
        assert!(
            r.status == 403 || (r.status == 200 && r.json()["total"] == 0),
            "without a claim the search shows nothing: {r:?}"
        );
        // With the claim, the search by patient is the first access: it passes the refusal.
        let r = Api::send(
            api.request(Method::GET, &q)
                .header("X-Purpose-Of-Use", "ETREAT")
                .header("X-Break-Glass-Reason", reason.text()),
        )
        .await;
        r.assert_status(200);
        let b = r.json();
        let ids: Vec<Value> = phivault_testkit::search_matches(&b, "Observation")
            .iter()
            .map(|x| x["id"].clone())
            .collect();
        if ids != [json!(o)] || r.header("x-break-glass") != Some("recorded") {
            report.push(format!(
                "[{}] a break-the-glass search limited to one patient, as the first access, \
                 lists {ids:?} (expected [{o}]) and says X-Break-Glass: {:?}: {r:?}",
                backend.name(),
                r.header("x-break-glass")
            ));
        }
        server.assert_no_panic();
    }
    assert!(report.is_empty(), "{}", report.join("\n"));
}

// ---------------------------------------------------------------------------------------
// TOTP

#[tokio::test(flavor = "multi_thread")]
async fn totp_second_factor() {
    for backend in backends() {
        let server = Server::start(BIN, &backend, &[]).await;

        // A staff account's first session may only enrol TOTP.
        let username = random_username();
        let password = server.create_user(&username, "clinician").await;
        let r = server.login(&username, &password, None).await;
        let first = phivault_testkit::LoginAnswer::parse(&r);
        assert!(first.enrolment_only, "staff must enrol TOTP first: {r:?}");
        let enrol_only = server.api_as(&first.token);
        enrol_only
            .get("Patient")
            .await
            .assert_outcome(403, &["TOTP"]);

        // Enrolment: a wrong code is refused, the right one returns recovery codes.
        let r =
            Api::send(server.origin_request(Method::POST, "/auth/totp/enroll", Some(&first.token)))
                .await;
        r.assert_status(200);
        let v = r.json();
        let secret = v["secret"].as_str().unwrap().to_owned();
        assert!(
            v["otpauth_url"]
                .as_str()
                .is_some_and(|u| u.starts_with("otpauth://totp/") && u.contains(&secret)),
            "{r:?}"
        );
        let now = totp_step(unix_now());
        let wrong = wrong_code(&secret, now);
        let r = server.confirm_totp(&first.token, &wrong).await;
        assert_eq!(r.status, 400, "a wrong confirmation code: {r:?}");
        let confirm_step = now;
        let r = server
            .confirm_totp(&first.token, &totp_code(&secret, confirm_step))
            .await;
        r.assert_status(200);
        let recovery: Vec<String> = r.json()["recovery_codes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().to_owned())
            .collect();
        assert_eq!(recovery.len(), 10, "{r:?}");

        // Password alone: refused like a wrong password, nothing says it was right.
        let r = server.login(&username, &password, None).await;
        r.assert_outcome(401, &["authentication failed"]);
        assert!(!r.text.contains("TOTP"), "{r:?}");
        // A wrong code.
        let now = totp_step(unix_now()).max(confirm_step + 1);
        let r = server
            .login(&username, &password, Some(&wrong_code(&secret, now)))
            .await;
        r.assert_outcome(401, &["authentication failed"]);
        // An old code, outside the window (three steps back).
        let old = totp_code(&secret, now - 3);
        if !window(&secret, now).contains(&old) {
            let r = server.login(&username, &password, Some(&old)).await;
            r.assert_outcome(401, &["authentication failed"]);
        }
        // The confirming code again: already used.
        let r = server
            .login(
                &username,
                &password,
                Some(&totp_code(&secret, confirm_step)),
            )
            .await;
        r.assert_outcome(401, &["authentication failed"]);
        // The next code: accepted, once.
        let code = totp_code(&secret, now);
        let r = server.login(&username, &password, Some(&code)).await;
        let session = phivault_testkit::LoginAnswer::parse(&r);
        assert!(!session.enrolment_only);
        let r = server.login(&username, &password, Some(&code)).await;
        r.assert_outcome(401, &["authentication failed"]);

        // A recovery code instead of TOTP: once.
        let body =
            json!({ "username": username, "password": password, "recovery_code": recovery[0] });
        let r = server.login_with(body.clone()).await;
        r.assert_status(200);
        let r = server.login_with(body).await;
        r.assert_outcome(401, &["authentication failed"]);

        // The session works, and logout ends it.
        let api = server.api_as(&session.token);
        api.get(&query("Patient", &[("_count", "1")]))
            .await
            .assert_status(200);
        let r =
            Api::send(server.origin_request(Method::POST, "/auth/logout", Some(&session.token)))
                .await;
        assert!(matches!(r.status, 200 | 204), "{r:?}");
        api.get("Patient")
            .await
            .assert_outcome(401, &["authentication failed"]);

        // Refusals never echo what was sent.
        let logs = server.stderr_text();
        for s in [
            &password,
            &secret,
            &code,
            &recovery[0],
            &session.token,
            &first.token,
        ] {
            assert!(!logs.contains(s.as_str()), "a credential reached the logs");
        }
        server.assert_no_panic();
    }
}

/// The codes accepted around `step` (now-1 ..= now+1).
fn window(secret: &str, step: u64) -> Vec<String> {
    (step - 1..=step + 1)
        .map(|s| totp_code(secret, s))
        .collect()
}

/// A 6-digit code accepted at no step of the window around `step`.
fn wrong_code(secret: &str, step: u64) -> String {
    let accepted = window(secret, step);
    (0..1000u32)
        .map(|i| format!("{:06}", (i * 7919 + 123_457) % 1_000_000))
        .find(|c| !accepted.contains(c))
        .unwrap()
}

// ---------------------------------------------------------------------------------------
// Lockout

/// After 5 consecutive wrong passwords the account is locked: the right password is refused
/// with 429 and `Retry-After` (the first lock lasts 60 s, README "Accounts") until it passes.
/// The test does not wait a minute: it asserts the lock and its announced length.
#[tokio::test(flavor = "multi_thread")]
async fn lockout_after_five_wrong_passwords() {
    for backend in backends() {
        let server = Server::start(BIN, &backend, &[]).await;
        let username = random_username();
        let password = server.create_user(&username, "patient").await;
        for i in 1..=5 {
            let r = server
                .login(&username, &format!("{password}-wrong{i}"), None)
                .await;
            r.assert_outcome(401, &["authentication failed"]);
        }
        let r = server.login(&username, &password, None).await;
        r.assert_outcome(429, &[]);
        let retry: u64 = r
            .header("retry-after")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("429 without Retry-After: {r:?}"));
        assert!(
            (30..=60).contains(&retry),
            "the first lock lasts 60 s (Retry-After {retry})"
        );
        // Long: still locked a moment later, whatever the password.
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        let r = server.login(&username, &password, None).await;
        r.assert_outcome(429, &[]);
        // An unknown account is not told apart by the lock: it answers 401 as before.
        let r = server.login(&random_username(), &password, None).await;
        r.assert_outcome(401, &["authentication failed"]);
        // Another account is not affected.
        let other = random_username();
        let other_pw = server.create_user(&other, "patient").await;
        server
            .login(&other, &other_pw, None)
            .await
            .assert_status(200);
        assert!(!server.stderr_text().contains(&password));
        server.assert_no_panic();
    }
}

// ---------------------------------------------------------------------------------------
// OAuth2 clients

#[tokio::test(flavor = "multi_thread")]
async fn oauth_client_credentials() {
    for backend in backends() {
        let server = Server::start(BIN, &backend, &[]).await;
        let sys = server.api().clone();
        let p = sys
            .create(&fixtures::patient(Marker::name().text(), "Scoped"))
            .await;

        let (id, secret) = server
            .add_client("reader", "system/*.rs system/Patient.cruds", None)
            .await;
        // Wrong secret, unknown client: the same invalid_client.
        let r = server.token_request(&id, &format!("{secret}x"), None).await;
        assert_eq!(r.status, 401, "{r:?}");
        assert_eq!(r.json()["error"], "invalid_client", "{r:?}");
        let r = server.token_request("no-such-client", &secret, None).await;
        assert_eq!(r.status, 401, "{r:?}");
        assert_eq!(r.json()["error"], "invalid_client", "{r:?}");
        // A scope beyond the client's: refused.
        let r = server
            .token_request(&id, &secret, Some("system/*.cruds"))
            .await;
        assert_eq!(r.status, 400, "{r:?}");
        assert_eq!(r.json()["error"], "invalid_scope", "{r:?}");
        // A narrower scope: granted as asked, and enforced.
        let r = server
            .token_request(&id, &secret, Some("system/Observation.rs"))
            .await;
        r.assert_status(200);
        let v = r.json();
        assert_eq!(v["scope"], "system/Observation.rs", "{r:?}");
        assert!(
            v["expires_in"]
                .as_i64()
                .is_some_and(|s| (1..=900).contains(&s)),
            "15 min at most: {r:?}"
        );
        let narrow = server.api_as(v["access_token"].as_str().unwrap());
        narrow
            .get(&format!("Patient/{p}"))
            .await
            .assert_outcome(403, &[]);
        narrow
            .get(&query("Observation", &[("patient", &p)]))
            .await
            .assert_status(200);
        // The full scope: read everything, write Patients only.
        let token = server.client_credentials(&id, &secret, None).await;
        let api = server.api_as(&token);
        api.get(&format!("Patient/{p}")).await.assert_status(200);
        let obs = observation(&p, &Marker::code("oc-"), false);
        api.post_json("Observation", &obs)
            .await
            .assert_outcome(403, &[]);
        api.post_json("Patient", &fixtures::patient(Marker::name().text(), "New"))
            .await
            .assert_status(201);

        // Revocation by the client: the token stops working.
        let body = query(
            "",
            &[
                ("token", &token),
                ("client_id", &id),
                ("client_secret", &secret),
            ],
        );
        let r = Api::send(
            server
                .origin_request(Method::POST, "/oauth/revoke", None)
                .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(body.trim_start_matches('?').to_owned()),
        )
        .await;
        r.assert_status(200);
        api.get(&format!("Patient/{p}"))
            .await
            .assert_outcome(401, &["authentication failed"]);

        // SMART discovery names the token endpoint.
        let r =
            Api::send(server.origin_request(Method::GET, "/.well-known/smart-configuration", None))
                .await;
        r.assert_status(200);
        assert_eq!(
            r.json()["token_endpoint"],
            server.origin_url("/oauth/token"),
            "{r:?}"
        );

        // A client made with a launch patient reaches only that patient's compartment.
        let other = sys
            .create(&fixtures::patient(Marker::name().text(), "Other"))
            .await;
        let oid = sys
            .create(&observation(&other, &Marker::code("oc-"), false))
            .await;
        let mine = sys
            .create(&observation(&p, &Marker::code("oc-"), false))
            .await;
        let t = server
            .client_token("patient/Observation.rs", Some(&p))
            .await;
        let app = server.api_as(&t);
        app.get(&format!("Observation/{mine}"))
            .await
            .assert_status(200);
        app.get(&format!("Observation/{oid}"))
            .await
            .assert_outcome(403, &[]);

        // CLI errors: one line, exit 1.
        let out = server
            .cli(
                &[
                    "client",
                    "add",
                    "--name",
                    "bad",
                    "--scope",
                    "system/Nope.rs",
                ],
                None,
            )
            .await;
        out.assert_error("client add with a bad scope", "scope");
        let logs = server.stderr_text();
        assert!(
            !logs.contains(&secret) && !logs.contains(&token),
            "credentials reached the logs"
        );
        server.assert_no_panic();
    }
}

// ---------------------------------------------------------------------------------------
// The administration commands

#[tokio::test(flavor = "multi_thread")]
async fn administration_commands() {
    let backend = backends().remove(0);
    let server = Server::start(BIN, &backend, &[]).await;

    // A generated password is printed once on stdout, and works.
    let username = random_username();
    let out = server
        .cli(
            &["user", "add", "--username", &username, "--role", "patient"],
            None,
        )
        .await;
    out.assert_ok("user add");
    let prefix = format!("phivault: password for {username} (shown once): ");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one line on stdout: {}", out.stdout);
    let password = lines[0]
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("contract line: {}", lines[0]));
    assert!(password.len() >= 16, "a strong password");
    server
        .login(&username, password, None)
        .await
        .assert_status(200);

    // Errors: one line on stderr, exit status 1.
    let out = server
        .cli(
            &["user", "add", "--username", &username, "--role", "patient"],
            None,
        )
        .await;
    out.assert_error("a taken username", "exists");
    let out = server
        .cli(
            &[
                "user",
                "add",
                "--username",
                &random_username(),
                "--role",
                "app",
            ],
            None,
        )
        .await;
    out.assert_error("the app role for a user", "app");
    let out = server
        .cli(
            &[
                "user",
                "add",
                "--username",
                &random_username(),
                "--role",
                "patient",
                "--password-stdin",
            ],
            Some("password\n"),
        )
        .await;
    out.assert_error("a weak password", "password");
    let out = server
        .cli(&["user", "grant", "nobody-here", "p1"], None)
        .await;
    out.assert_error("a grant to an unknown user", "not found");
    let out = server
        .cli(&["user", "grant", &username, "p1", "--labels", "XYZ"], None)
        .await;
    out.assert_error("an unknown label", "label");
    let out = server
        .cli(
            &[
                "user",
                "grant",
                &username,
                "p1",
                "--until",
                "2001-01-01T00:00:00Z",
            ],
            None,
        )
        .await;
    out.assert_error("a grant ending in the past", "past");
    let out = server
        .cli(&["user", "link-patient", &username, "not an id"], None)
        .await;
    out.assert_error("a bad patient id", "id");

    // policy check
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.cedar");
    std::fs::write(
        &good,
        "@id(\"ops.read\")\npermit (principal is PhiVault::User, action == PhiVault::Action::\"read\", \
         resource is PhiVault::Resource) when { principal.role == \"admin\" };\n\
         @id(\"ops.search\")\npermit (principal is PhiVault::User, action == PhiVault::Action::\"search\", \
         resource is PhiVault::Resource) when { principal.role == \"admin\" };\n",
    )
    .unwrap();
    let out = server
        .cli_plain(&["policy", "check", good.to_str().unwrap()], None)
        .await;
    out.assert_ok("policy check");
    assert_eq!(out.stdout.trim(), "ok: 2 policies");
    let bad = dir.path().join("bad.cedar");
    std::fs::write(
        &bad,
        "permit (principal, action, resource) when { principal.nope == 1 };\n",
    )
    .unwrap();
    let out = server
        .cli_plain(&["policy", "check", bad.to_str().unwrap()], None)
        .await;
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stdout.is_empty() && !out.stderr.trim().is_empty(),
        "{out:?}"
    );

    // break-glass list on a fresh server: the header only.
    let out = server.cli(&["break-glass", "list"], None).await;
    out.assert_ok("break-glass list");
    assert_eq!(out.stdout.lines().count(), 1, "{}", out.stdout);
    server.assert_no_panic();
}

// ---------------------------------------------------------------------------------------
// Care relationships from CareTeams

/// A CareTeam gives a clinician access to a patient only when written by a principal allowed
/// to grant it (a clinician of the patient's care team; not an app with a CareTeam scope), and
/// only within the team's and the member's periods.
#[tokio::test(flavor = "multi_thread")]
async fn care_teams_need_a_grantor_and_honour_their_periods() {
    for backend in backends() {
        let server = Server::start(BIN, &backend, &[]).await;
        let sys = server.api().clone();
        let p = sys
            .create(&fixtures::patient(Marker::name().text(), "Teamed"))
            .await;
        let d = sys.create(&fixtures::practitioner("Locum")).await;
        let locum_name = random_username();
        let password = server.create_user(&locum_name, "clinician").await;
        server.link_practitioner(&locum_name, &d).await;
        let locum = server.api_as(
            &server
                .sign_in(&locum_name, "clinician", &password, false)
                .await
                .token,
        );
        let lead_name = random_username();
        let password = server.create_user(&lead_name, "clinician").await;
        server.grant(&lead_name, &p, &[], None).await;
        let lead = server.api_as(
            &server
                .sign_in(&lead_name, "clinician", &password, false)
                .await
                .token,
        );
        let read = format!("Patient/{p}");
        let team = |period: Option<Value>| {
            let mut t = json!({
                "resourceType": "CareTeam",
                "status": "active",
                "subject": {"reference": format!("Patient/{p}")},
                "participant": [{"member": {"reference": format!("Practitioner/{d}")}}],
            });
            if let Some(period) = period {
                t["period"] = period;
            }
            t
        };

        // An app whose only scope is creating CareTeams: refused.
        let (id, secret) = server.add_client("teams", "system/CareTeam.c", None).await;
        let app = server.api_as(&server.client_credentials(&id, &secret, None).await);
        app.post_json("CareTeam", &team(None))
            .await
            .assert_outcome(403, &["access denied"]);
        locum
            .get(&read)
            .await
            .assert_outcome(403, &["access denied"]);

        // The lead (on the care team) adds the locum, for a period that is over: nothing.
        lead.create(&team(Some(json!({"start": "2019-01", "end": "2020-06"}))))
            .await;
        locum
            .get(&read)
            .await
            .assert_outcome(403, &["access denied"]);
        // For a period that has begun: the locum is on the team.
        lead.create(&team(Some(json!({"start": "2020-01-01"}))))
            .await;
        locum.get(&read).await.assert_status(200);
        server.assert_no_panic();
    }
}
