"""SMART App Launch against a running phivault, as an app and a person would do it.

The app is `authlib` (OAuth2Session: PKCE S256, refresh; PrivateKeyJWT for the backend
service); the person's browser is headless Chromium driven by `playwright`. A small threaded
HTTP server on 127.0.0.1 is the app's redirect URI and records what comes back to it.

Run by the Rust test `e2e_smart_browser`, which starts the server, provisions the records,
users and clients, and sets:
  PHIVAULT_BASE            the FHIR base URL (https://127.0.0.1:PORT/fhir)
  REQUESTS_CA_BUNDLE       the server's CA certificate (requests reads it)
  PHIVAULT_SCREENSHOTS     where the page screenshots go
  SMART_CHROMIUM           the Chromium binary (never `playwright install`)
  SMART_REDIRECT_PORT      the loopback port of the app's redirect URI (/callback)
  SMART_APP_CLIENT_ID      the public app
  SMART_BACKEND_CLIENT_ID  the confidential-jwt backend service
  SMART_BACKEND_KEY        its RS384 private key (PEM file; JWKS kid "backend-1")
  SMART_PATIENT_ID, SMART_OTHER_PATIENT_ID, SMART_ENCOUNTER_ID
  SMART_PATIENT_NAME, SMART_OTHER_NAME   how the pages may name the two patients
  SMART_PATIENT_USER, SMART_PATIENT_PASSWORD    a patient user linked to SMART_PATIENT_ID
  SMART_CLINICIAN_USER, SMART_CLINICIAN_PASSWORD, SMART_CLINICIAN_TOTP_SECRET,
  SMART_CLINICIAN_TOTP_LAST_STEP (the TOTP step already spent), SMART_CLINICIAN_RECOVERY_CODE
                           a clinician with grants on both patients
  SMART_LAUNCH             an EHR launch id the clinician's session minted (patient+encounter)

Prints one line per check and exits 1 at the first failure. Tokens, codes, passwords and
secrets are never printed.
"""

import base64
import hashlib
import json
import os
import re
import signal
import sys
import threading
import time
import urllib.parse
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pyotp
import requests
from authlib.common.security import generate_token
from authlib.integrations.base_client import OAuthError
from authlib.integrations.requests_client import OAuth2Session
from authlib.oauth2.rfc7523 import PrivateKeyJWT
from playwright.sync_api import expect, sync_playwright

with warnings.catch_warnings():
    # authlib.jose is deprecated in favour of joserfc, but it is still authlib's documented
    # way to check an id_token against a JWKS in the pinned version.
    warnings.simplefilter("ignore", DeprecationWarning)
    from authlib.jose import JsonWebKey, jwt
    from authlib.jose.errors import BadSignatureError

ENV = os.environ
BASE = ENV["PHIVAULT_BASE"].rstrip("/")
ROOT = BASE.removesuffix("/fhir")
SHOTS = ENV["PHIVAULT_SCREENSHOTS"]
CHROMIUM = ENV.get("SMART_CHROMIUM", "/usr/bin/chromium")
PORT = int(ENV["SMART_REDIRECT_PORT"])
REDIRECT = f"http://127.0.0.1:{PORT}/callback"
APP = ENV["SMART_APP_CLIENT_ID"]
APP_NAME = "Ada's Health Diary"
BACKEND = ENV["SMART_BACKEND_CLIENT_ID"]
BACKEND_KEY = ENV["SMART_BACKEND_KEY"]
PATIENT = ENV["SMART_PATIENT_ID"]
OTHER = ENV["SMART_OTHER_PATIENT_ID"]
ENCOUNTER = ENV["SMART_ENCOUNTER_ID"]
PATIENT_NAME = ENV["SMART_PATIENT_NAME"]
OTHER_NAME = ENV["SMART_OTHER_NAME"]
FHIR_JSON = "application/fhir+json"

# How long a page, an element or the redirect to the app may take.
PAGE_TIMEOUT_S = 30
expect.set_options(timeout=PAGE_TIMEOUT_S * 1000)

STARTED = time.monotonic()
# A hung browser or server must not hang CI: fail loudly instead.
signal.signal(signal.SIGALRM, lambda *_: fail("time limit", "the script ran over 170 s"))
signal.alarm(170)


def fail(what, detail):
    print(f"FAIL {what}: {detail}", flush=True)
    sys.exit(1)


def check(condition, what, detail=""):
    """One line per check; the first failure ends the run."""
    if not condition:
        fail(what, detail or "not as expected")
    print(f"ok   {what}", flush=True)


# Checks the server does not pass yet, by name (the Rust test's EXPECTED_FAILURES): each must
# still fail, so the list only ever shrinks.
EXPECTED_FAILURES = {n for n in ENV.get("SMART_EXPECTED_FAILURES", "").split(",") if n}


def check_gap(name, condition, what, detail=""):
    """A check that may be listed as expected to fail under `name`."""
    if name not in EXPECTED_FAILURES:
        return check(condition, what, detail)
    if condition:
        fail(
            what,
            f"passes now: remove {name!r} from EXPECTED_FAILURES in e2e_smart_browser.rs",
        )
    print(f"xfail {what}: {detail} (expected: {name})", flush=True)


def info(text):
    print(f"     {text}", flush=True)


# ---------------------------------------------------------------- the app's redirect URI


class Callback:
    """The app's redirect endpoint: records each request's path and query parameters."""

    def __init__(self, port):
        self.hits = []
        self.cond = threading.Condition()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                url = urllib.parse.urlsplit(self.path)
                params = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
                with owner.cond:
                    owner.hits.append((url.path, params, self.path))
                    owner.cond.notify_all()
                body = b"<!doctype html><title>App</title><h1>Back in the app</h1>"
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                # The query holds the authorization code: never logged.
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def count(self):
        with self.cond:
            return len(self.hits)

    def wait_after(self, seen, timeout=PAGE_TIMEOUT_S):
        """The first request after `seen` earlier ones: (path, params, raw path)."""
        with self.cond:
            if not self.cond.wait_for(lambda: len(self.hits) > seen, timeout):
                fail("redirect to the app", f"nothing reached {REDIRECT} in {timeout} s")
            return self.hits[seen]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


# ---------------------------------------------------------------- HTTP helpers


def bearer(token):
    return {"Authorization": f"Bearer {token}", "Accept": FHIR_JSON}


def fhir_get(token, path):
    return requests.get(f"{BASE}/{path}", headers=bearer(token), timeout=30)


def why(r):
    """A response's status and, for a FHIR refusal, its diagnostics (never a token)."""
    try:
        issues = r.json().get("issue", [])
        text = "; ".join(i.get("diagnostics", "") for i in issues)
    except ValueError:
        text = ""
    return f"HTTP {r.status_code} {text}".strip()


def oauth_error(call):
    """Runs an authlib token call that must fail; the RFC 6749 error code it raised."""
    try:
        call()
    except OAuthError as e:
        return e.error
    return None


def shot(page, name):
    path = os.path.join(SHOTS, name)
    page.screenshot(path=path, full_page=True)
    info(f"screenshot {name}")


# ---------------------------------------------------------------- the browser side


def new_context(browser):
    """A fresh browser profile (no cookies) trusting the server's test CA's certificate.

    Timeouts are generous: CI runs this beside the rest of the suite on two cores, and a
    sign-in hashes a password (Argon2) in a debug build."""
    context = browser.new_context(ignore_https_errors=True)
    context.set_default_timeout(PAGE_TIMEOUT_S * 1000)
    return context


def sign_in(page, url, username, password, shot_name=None):
    response = page.goto(url)
    check(
        response is not None and response.status == 200,
        "GET /oauth/authorize shows a page",
    )
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    expect(page.locator("main")).to_contain_text(APP_NAME)
    csp = response.headers.get("content-security-policy", "")
    check(
        "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp,
        "the sign-in page has a strict Content-Security-Policy",
        csp,
    )
    if shot_name:
        shot(page, shot_name)
    page.get_by_label("Username", exact=True).fill(username)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_role("button", name="Sign in").click()


def shown(patient_id, name):
    """How a page may name a patient: by name or by reference (a regular expression)."""
    return f"Patient/{re.escape(patient_id)}|{re.escape(name)}"


# Scopes the consent page may fold into the `openid` line ("know who you are").
IDENTITY_COMPANIONS = {"fhirUser", "profile"}


def consent(page, scopes, patient_label, shot_name, untick=()):
    """Checks the consent page, unticks `untick` (scope values), and allows."""
    expect(page.get_by_role("heading", name=re.compile("Allow"))).to_be_visible()
    asked = set(scopes.split())
    listed = page.locator(".scope-code").all_inner_texts()
    folded = asked - set(listed)
    check(
        set(listed) <= asked
        and len(listed) == len(set(listed))
        and (not folded or ("openid" in listed and folded <= IDENTITY_COMPANIONS)),
        "the consent page lists each requested scope (identity scopes on one line)",
        f"{listed}",
    )
    boxes = page.locator("input[type=checkbox][name=scope]")
    check(
        boxes.count() == len(listed)
        and all(boxes.nth(i).is_checked() for i in range(boxes.count())),
        "each listed scope has a ticked checkbox",
    )
    expect(page.locator("main")).to_contain_text(f"You will return to http://127.0.0.1:{PORT}")
    if patient_label:
        expect(page.locator("main")).to_contain_text(re.compile(patient_label))
    for value in untick:
        page.locator(f"input[type=checkbox][name=scope][value='{value}']").uncheck()
    if shot_name:
        shot(page, shot_name)
    page.get_by_role("button", name="Allow").click()


def totp_code(secret, last_step):
    """A code of a step never used yet and inside the server's window (now-1 ..= now+1)."""
    step = max(last_step + 1, int(time.time()) // 30)
    return pyotp.TOTP(secret).at(step * 30)


# ---------------------------------------------------------------- the app side


class App:
    """A SMART app (public client) doing one standalone or EHR launch with authlib."""

    def __init__(self, conf, scope):
        self.conf = conf
        self.scope = scope
        self.session = OAuth2Session(
            APP,
            redirect_uri=REDIRECT,
            scope=scope,
            code_challenge_method="S256",
            token_endpoint_auth_method="none",
        )
        self.verifier = generate_token(64)
        self.nonce = generate_token(24)
        # Characters that must survive the round trip's URL encoding.
        self.state = generate_token(20) + "-._~ +/=&?"
        self.token = None
        self.code = None

    def authorize_url(self, **extra):
        url, state = self.session.create_authorization_url(
            self.conf["authorization_endpoint"],
            state=self.state,
            code_verifier=self.verifier,
            aud=BASE,
            nonce=self.nonce,
            **extra,
        )
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
        digest = hashlib.sha256(self.verifier.encode("ascii")).digest()
        challenge = base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
        check(
            state == self.state
            and query.get("code_challenge_method") == "S256"
            and query.get("code_challenge") == challenge
            and query.get("aud") == BASE,
            "authlib built the authorization URL (PKCE S256 challenge, aud, state)",
        )
        return url

    def finish(self, callback, seen, page):
        """Waits for the browser to reach the redirect URI and exchanges the code."""
        path, params, raw = callback.wait_after(seen)
        page.wait_for_url(lambda u: u.startswith(REDIRECT))
        check(
            path == "/callback" and "code" in params and "error" not in params,
            "the browser came back to the app with a code",
            f"{path} {sorted(params)} {params.get('error', '')}",
        )
        check(params.get("state") == self.state, "state came back intact")
        self.token = self.session.fetch_token(
            self.conf["token_endpoint"],
            authorization_response=f"http://127.0.0.1:{PORT}{raw}",
            state=self.state,
            code_verifier=self.verifier,
        )
        check(
            bool(self.token.get("access_token"))
            and self.token.get("token_type", "").lower() == "bearer",
            "authlib exchanged the code (public client, PKCE verifier)",
        )
        self.code = params["code"]
        return self.token

    def replay_code(self):
        """The code presented a second time (as a thief would): the RFC 6749 error."""
        return oauth_error(
            lambda: OAuth2Session(
                APP,
                redirect_uri=REDIRECT,
                token_endpoint_auth_method="none",
            ).fetch_token(
                self.conf["token_endpoint"],
                code=self.code,
                code_verifier=self.verifier,
                grant_type="authorization_code",
            )
        )


def verify_id_token(app, jwks, expect_fhir_user):
    id_token = app.token.get("id_token")
    check(bool(id_token), "the token response has an id_token")
    key_set = JsonWebKey.import_key_set(jwks)
    claims = jwt.decode(
        id_token,
        key_set,
        claims_options={
            "iss": {"essential": True, "value": BASE},
            "aud": {"essential": True, "value": APP},
            "nonce": {"essential": True, "value": app.nonce},
            "exp": {"essential": True},
            "sub": {"essential": True},
        },
    )
    claims.validate(leeway=30)
    check(
        claims.header.get("alg") == "RS256"
        and any(k.get("kid") == claims.header.get("kid") for k in jwks["keys"]),
        "the id_token signature verifies against /oauth/jwks (RS256, known kid)",
    )
    head, body, sig = id_token.split(".")
    flipped = sig[:-4] + ("AAAA" if sig[-4:] != "AAAA" else "BBBB")
    try:
        jwt.decode(f"{head}.{body}.{flipped}", key_set)
        tampered = "accepted"
    except BadSignatureError:
        tampered = "refused"
    check(tampered == "refused", "a tampered id_token does not verify", tampered)
    if expect_fhir_user:
        fhir_user = claims.get("fhirUser", "")
        check(
            fhir_user.endswith(expect_fhir_user),
            f"id_token fhirUser ends in {expect_fhir_user}",
            fhir_user,
        )
    return claims


# ---------------------------------------------------------------- scenarios


def discovery():
    r = requests.get(f"{BASE}/.well-known/smart-configuration", timeout=30)
    check(r.status_code == 200, "GET [base]/.well-known/smart-configuration", why(r))
    conf = r.json()
    check(
        "S256" in conf.get("code_challenge_methods_supported", [])
        and "private_key_jwt" in conf.get("token_endpoint_auth_methods_supported", []),
        "discovery names PKCE S256 and private_key_jwt",
    )
    check(
        conf["token_endpoint"] == f"{ROOT}/oauth/token",
        "discovery's token endpoint",
        conf["token_endpoint"],
    )
    r = requests.get(f"{BASE}/.well-known/openid-configuration", timeout=30)
    check(
        r.status_code == 200 and r.json()["issuer"] == BASE,
        "OpenID discovery under the FHIR base names it as issuer",
    )
    jwks = requests.get(conf["jwks_uri"], timeout=30).json()
    check(
        len(jwks.get("keys", [])) >= 1 and all("d" not in k for k in jwks["keys"]),
        "/oauth/jwks publishes public keys only",
    )
    return conf, jwks


def patient_launch(browser, conf, jwks, callback, shots, untick_openid=False):
    """(a) A patient's standalone launch: sign-in, consent, code, tokens, id_token, reads.
    With `untick_openid` the patient unticks "know who you are" on the consent page: the
    grant then has neither openid nor fhirUser, and no id_token."""
    scope = "openid fhirUser launch/patient offline_access patient/*.rs"
    approved = scope.split()
    if untick_openid:
        approved = [s for s in approved if s not in {"openid", "fhirUser"}]
    app = App(conf, scope)
    context = new_context(browser)
    page = context.new_page()
    seen = callback.count()
    sign_in(
        page,
        app.authorize_url(),
        ENV["SMART_PATIENT_USER"],
        ENV["SMART_PATIENT_PASSWORD"],
        "smart-signin.png" if shots else None,
    )
    consent(
        page,
        scope,
        shown(PATIENT, PATIENT_NAME),
        "smart-consent.png" if shots else None,
        untick=("openid",) if untick_openid else (),
    )
    token = app.finish(callback, seen, page)
    context.close()
    check(
        token.get("patient") == PATIENT,
        "token response: patient is the patient's own id",
        str(token.get("patient")),
    )
    check(
        sorted(token.get("scope", "").split()) == sorted(approved),
        "token response: the scopes approved on the consent page",
        token.get("scope", ""),
    )
    check(bool(token.get("refresh_token")), "offline_access gave a refresh token")
    if untick_openid:
        check("id_token" not in token, "openid unticked: no id_token")
    else:
        verify_id_token(app, jwks, f"Patient/{PATIENT}")
    r = fhir_get(token["access_token"], f"Patient/{PATIENT}")
    check(
        r.status_code == 200 and r.json().get("id") == PATIENT,
        "the app reads Patient/<own id> (200)",
        why(r),
    )
    r = fhir_get(token["access_token"], f"Patient/{OTHER}")
    check(r.status_code in (403, 404), "another patient's record is refused", why(r))
    r = fhir_get(token["access_token"], f"Observation?subject=Patient/{PATIENT}")
    check_gap(
        "patient-app-search",
        r.status_code == 200 and len(r.json().get("entry", [])) >= 3,
        "the app searches the patient's observations",
        why(r),
    )
    return app


def clinician_picker_launch(browser, conf, callback):
    """(b) A clinician's standalone launch: sign-in, TOTP, patient picker, consent."""
    scope = "openid fhirUser launch/patient patient/*.rs"
    app = App(conf, scope)
    context = new_context(browser)
    page = context.new_page()
    seen = callback.count()
    sign_in(
        page,
        app.authorize_url(),
        ENV["SMART_CLINICIAN_USER"],
        ENV["SMART_CLINICIAN_PASSWORD"],
        "smart-signin-clinician.png",
    )
    expect(page.get_by_role("heading", name="Enter your verification code")).to_be_visible()
    shot(page, "smart-totp.png")
    code = totp_code(ENV["SMART_CLINICIAN_TOTP_SECRET"], int(ENV["SMART_CLINICIAN_TOTP_LAST_STEP"]))
    page.get_by_label("Verification code", exact=True).fill(code)
    page.get_by_role("button", name="Verify").click()
    expect(page.get_by_role("heading", name="Choose a patient")).to_be_visible()
    radios = page.locator("input[type=radio][name=patient]")
    values = [radios.nth(i).get_attribute("value") for i in range(radios.count())]
    check(
        sorted(values) == sorted([PATIENT, OTHER]),
        "the picker offers exactly the patients in the clinician's care",
        f"{values}",
    )
    chosen = page.locator(f"input[type=radio][name=patient][value='{OTHER}']")
    label = page.locator(f"label[for='{chosen.get_attribute('id')}']").inner_text()
    check(
        OTHER_NAME in label or f"Patient/{OTHER}" in label,
        "each choice is labelled with the patient's name (or reference)",
        label,
    )
    shot(page, "smart-picker.png")
    page.get_by_label(label, exact=True).check()
    check(chosen.is_checked(), "the person picks a patient by its label")
    page.get_by_role("button", name="Continue").click()
    consent(page, scope, shown(OTHER, OTHER_NAME), "smart-consent-picked.png")
    token = app.finish(callback, seen, page)
    context.close()
    check(
        token.get("patient") == OTHER,
        "token response: patient is the one picked",
        str(token.get("patient")),
    )
    check("refresh_token" not in token, "no refresh token without offline_access")
    verify_id_token(app, requests.get(conf["jwks_uri"], timeout=30).json(), None)
    r = fhir_get(token["access_token"], f"Patient/{OTHER}")
    check(r.status_code == 200, "the app reads the picked patient", why(r))
    r = fhir_get(token["access_token"], f"Patient/{PATIENT}")
    check(
        r.status_code in (403, 404),
        "patient/ scopes reach only the picked patient",
        why(r),
    )
    replay = app.replay_code()
    check(
        replay == "invalid_grant",
        "the code works once (a replay is invalid_grant)",
        str(replay),
    )
    r = fhir_get(token["access_token"], f"Patient/{OTHER}")
    check(
        r.status_code == 401,
        "a replayed code revokes the tokens of its first exchange",
        why(r),
    )


def clinician_ehr_launch(browser, conf, callback):
    """(c) An EHR launch: the launch id of the clinician's session brings patient + encounter."""
    scope = "launch openid fhirUser user/*.rs"
    app = App(conf, scope)
    context = new_context(browser)
    page = context.new_page()
    seen = callback.count()
    sign_in(
        page,
        app.authorize_url(launch=ENV["SMART_LAUNCH"]),
        ENV["SMART_CLINICIAN_USER"],
        ENV["SMART_CLINICIAN_PASSWORD"],
    )
    expect(page.get_by_role("heading", name="Enter your verification code")).to_be_visible()
    # The verification page also takes a recovery code (the authenticator is elsewhere).
    page.get_by_label("Verification code", exact=True).fill(ENV["SMART_CLINICIAN_RECOVERY_CODE"])
    page.get_by_role("button", name="Verify").click()
    consent(page, scope, shown(PATIENT, PATIENT_NAME), "smart-consent-ehr.png")
    token = app.finish(callback, seen, page)
    context.close()
    check(
        token.get("patient") == PATIENT,
        "EHR launch: token patient is the launch's",
        str(token.get("patient")),
    )
    check(
        token.get("encounter") == ENCOUNTER,
        "EHR launch: token encounter is the launch's",
        str(token.get("encounter")),
    )
    r = fhir_get(token["access_token"], f"Encounter/{ENCOUNTER}")
    check(r.status_code == 200, "the app reads the launch's encounter", why(r))


def refresh_rotation(first, second, conf):
    """(d) Refresh with rotation; a reused refresh token revokes its whole family."""
    url = conf["token_endpoint"]
    old_access = first.token["access_token"]
    old_refresh = first.token["refresh_token"]
    new = first.session.refresh_token(url, refresh_token=old_refresh)
    check(
        bool(new.get("refresh_token")) and new["refresh_token"] != old_refresh,
        "refresh: a new refresh token (rotation)",
    )
    check(new["access_token"] != old_access, "refresh: a new access token")
    check(
        new.get("patient") == PATIENT,
        "refresh: the launch context stays",
        str(new.get("patient")),
    )
    r = fhir_get(new["access_token"], f"Patient/{PATIENT}")
    check(r.status_code == 200, "the new access token works", why(r))
    info(
        f"the old access token after rotation: HTTP {fhir_get(old_access, f'Patient/{PATIENT}').status_code}"
        " (valid until it expires, or revoked)"
    )
    reuse = oauth_error(lambda: first.session.refresh_token(url, refresh_token=old_refresh))
    check(
        reuse == "invalid_grant",
        "the rotated refresh token presented again: invalid_grant",
        str(reuse),
    )
    newest = oauth_error(
        lambda: first.session.refresh_token(url, refresh_token=new["refresh_token"])
    )
    check(
        newest == "invalid_grant",
        "after the reuse the newest refresh token is refused too",
        str(newest),
    )
    r = fhir_get(new["access_token"], f"Patient/{PATIENT}")
    check(r.status_code == 401, "after the reuse the newest access token gets 401", why(r))
    r = fhir_get(old_access, f"Patient/{PATIENT}")
    check(r.status_code == 401, "after the reuse the first access token gets 401", why(r))
    r = fhir_get(second.token["access_token"], f"Patient/{PATIENT}")
    check(
        r.status_code == 200,
        "another grant of the same app and person is untouched",
        why(r),
    )


def backend_session(conf, claims):
    """authlib with private_key_jwt (RS384). `claims` is a fresh dict: authlib writes the
    assertion's jti into it, so reusing one dict reuses the jti."""
    with open(BACKEND_KEY, encoding="ascii") as f:
        key = f.read()
    session = OAuth2Session(
        BACKEND, key, token_endpoint_auth_method="private_key_jwt", scope="system/*.rs"
    )
    session.register_client_auth_method(
        PrivateKeyJWT(
            conf["token_endpoint"],
            claims=claims,
            headers={"kid": "backend-1"},
            alg="RS384",
        )
    )
    return session


def backend_service(conf):
    """(e) A backend service: client_credentials with an RS384 assertion, then Bulk export."""
    url = conf["token_endpoint"]
    claims = {"exp": int(time.time()) + 240, "jti": generate_token(36)}
    session = backend_session(conf, claims)
    token = session.fetch_token(url, grant_type="client_credentials")
    check(
        token.get("scope") == "system/*.rs" and bool(token.get("access_token")),
        "client_credentials with a private_key_jwt assertion (RS384, exp <= 5 min)",
        token.get("scope", ""),
    )
    replay = oauth_error(lambda: session.fetch_token(url, grant_type="client_credentials"))
    check(
        replay == "invalid_client",
        "the same assertion (same jti) again: invalid_client",
        str(replay),
    )
    long_lived = oauth_error(
        lambda: backend_session(conf, {}).fetch_token(url, grant_type="client_credentials")
    )
    check(
        long_lived == "invalid_client",
        "an assertion living an hour (authlib's default exp) is refused",
        str(long_lived),
    )
    access = token["access_token"]
    kick = requests.get(
        f"{BASE}/Patient/$export",
        timeout=60,
        headers={
            "Authorization": f"Bearer {access}",
            "Accept": FHIR_JSON,
            "Prefer": "respond-async",
        },
    )
    check(
        kick.status_code == 202 and kick.headers.get("Content-Location"),
        "Patient/$export kick-off: 202 with Content-Location",
        why(kick),
    )
    status_url = kick.headers["Content-Location"]
    deadline = time.monotonic() + 30
    while True:
        r = requests.get(status_url, headers={"Authorization": f"Bearer {access}"}, timeout=30)
        if r.status_code == 200:
            break
        check(
            r.status_code == 202 and time.monotonic() < deadline,
            "export status: 202 while running",
            why(r),
        )
        time.sleep(float(r.headers.get("Retry-After", "0.2")))
    manifest = r.json()
    check(
        manifest.get("requiresAccessToken") is True and manifest.get("output"),
        "export complete: a manifest with output files",
    )
    counts = {}
    for item in manifest["output"]:
        r = requests.get(item["url"], headers={"Authorization": f"Bearer {access}"}, timeout=60)
        check(
            r.status_code == 200
            and r.headers.get("Content-Type", "").startswith("application/fhir+ndjson"),
            f"download {item['type']}.ndjson",
            why(r),
        )
        lines = [json.loads(line) for line in r.text.splitlines() if line.strip()]
        check(
            len(lines) == item.get("count")
            and all(line.get("resourceType") == item["type"] for line in lines),
            f"{item['type']}.ndjson: {len(lines)} lines, as the manifest says",
        )
        counts[item["type"]] = len(lines)
    check(
        sum(counts.values()) > 0
        and counts.get("Patient", 0) >= 2
        and counts.get("Observation", 0) >= 3
        and counts.get("Encounter", 0) >= 1,
        "the export holds the patients, observations and encounter",
        f"{counts}",
    )


def login(username, password):
    r = requests.post(
        f"{ROOT}/auth/login",
        json={"username": username, "password": password},
        timeout=30,
    )
    check(r.status_code == 200, "the patient signs in (JSON login)", why(r))
    body = r.json()
    return body.get("token") or body.get("session_token") or body.get("access_token")


def patient_revokes(app, conf):
    """(f) The patient lists their apps and revokes this one: its tokens die at once."""
    session = login(ENV["SMART_PATIENT_USER"], ENV["SMART_PATIENT_PASSWORD"])
    auth = {"Authorization": f"Bearer {session}", "Accept": "application/json"}
    r = requests.get(
        f"{ROOT}/auth/apps",
        headers={"Authorization": f"Bearer {app.token['access_token']}"},
        timeout=30,
    )
    check(r.status_code == 403, "an app's token cannot list the person's apps", why(r))
    r = requests.get(f"{ROOT}/auth/apps", headers=auth, timeout=30)
    check(r.status_code == 200, "GET /auth/apps", why(r))
    apps = [a for a in r.json().get("apps", []) if a.get("client_id") == APP]
    check(len(apps) == 1, "the app is listed once")
    listed = apps[0]
    check(
        listed.get("name") == APP_NAME and "patient/*.rs" in listed.get("scope", "").split(),
        "the listing names the app and its scopes",
        f"{listed.get('name')} {listed.get('scope')}",
    )
    check(
        isinstance(listed.get("last_used_at"), int)
        and listed["last_used_at"] >= listed.get("authorized_at", 0) > 0,
        "the listing has the app's last use",
    )
    r = fhir_get(app.token["access_token"], f"Patient/{PATIENT}")
    check(r.status_code == 200, "before the revocation the app's token works", why(r))
    r = requests.delete(f"{ROOT}/auth/apps/{APP}", headers=auth, timeout=30)
    check(r.status_code == 204, "DELETE /auth/apps/<client_id>: 204", why(r))
    r = fhir_get(app.token["access_token"], f"Patient/{PATIENT}")
    check(
        r.status_code == 401,
        "after the revocation the app's access token gets 401",
        why(r),
    )
    refused = oauth_error(
        lambda: app.session.refresh_token(
            conf["token_endpoint"], refresh_token=app.token["refresh_token"]
        )
    )
    check(
        refused == "invalid_grant",
        "after the revocation its refresh token: invalid_grant",
        str(refused),
    )
    r = requests.get(f"{ROOT}/auth/apps", headers=auth, timeout=30)
    check(
        r.status_code == 200 and all(a.get("client_id") != APP for a in r.json()["apps"]),
        "the app is no longer listed",
    )
    r = requests.delete(f"{ROOT}/auth/apps/{APP}", headers=auth, timeout=30)
    check(r.status_code == 404, "revoking it again: 404", why(r))


def unregistered_redirect(browser, callback):
    """(g) A redirect URI the app did not register: an error page, never a redirect."""
    app = App({"authorization_endpoint": f"{ROOT}/oauth/authorize"}, "openid patient/*.rs")
    app.session.redirect_uri = f"http://127.0.0.1:{PORT}/elsewhere"
    context = new_context(browser)
    page = context.new_page()
    seen = callback.count()
    response = page.goto(app.authorize_url())
    check(
        response is not None and response.status == 400,
        "unregistered redirect_uri: 400",
        str(response and response.status),
    )
    expect(page.get_by_role("heading", name="This app's sign-in link is not valid")).to_be_visible()
    expect(page.locator("main")).to_contain_text("not one it registered")
    shot(page, "smart-error-redirect-uri.png")
    time.sleep(0.3)
    check(
        callback.count() == seen and page.url.startswith(ROOT),
        "the browser stays on the server (no redirect to the unregistered URI)",
    )
    context.close()


def main():
    os.makedirs(SHOTS, exist_ok=True)
    conf, jwks = discovery()
    callback = Callback(PORT)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM)
            try:
                print("-- (a) patient standalone launch", flush=True)
                first = patient_launch(browser, conf, jwks, callback, shots=True)
                print(
                    "-- (b) clinician standalone launch with the patient picker",
                    flush=True,
                )
                clinician_picker_launch(browser, conf, callback)
                print("-- (c) clinician EHR launch", flush=True)
                clinician_ehr_launch(browser, conf, callback)
                print(
                    "-- (a') the patient launches the app again, unticking openid",
                    flush=True,
                )
                second = patient_launch(
                    browser, conf, jwks, callback, shots=False, untick_openid=True
                )
                print("-- (g) unregistered redirect URI", flush=True)
                unregistered_redirect(browser, callback)
            finally:
                browser.close()
        print("-- (d) refresh token rotation and reuse", flush=True)
        refresh_rotation(first, second, conf)
        print("-- (e) backend service with private_key_jwt and Bulk export", flush=True)
        backend_service(conf)
        print("-- (f) the patient revokes the app", flush=True)
        patient_revokes(second, conf)
    finally:
        callback.close()
    print(
        f"all SMART App Launch checks passed in {time.monotonic() - STARTED:.1f} s",
        flush=True,
    )


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # noqa: BLE001 (any error is a failed run, said in one line)
        # Only the first line: a library's longer message may quote what a page was sent.
        first = (str(e).strip().splitlines() or [""])[0][:300]
        fail("unexpected error", f"{type(e).__name__}: {first}")
