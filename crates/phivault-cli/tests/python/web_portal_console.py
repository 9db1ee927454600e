"""The patient portal and the admin console against a running phivault, as people use them.

Headless Chromium (Debian's, never `playwright install`) driven by `playwright` is each
person's browser; `requests` is the apps (a research app, a feed, the patient's SMART app);
`pyotp` computes TOTP codes; `pyrage` makes the age key of the encrypted download and opens
it; `axe-playwright-python` bundles axe-core, injected with `page.evaluate` (a DevTools
evaluation, which the pages' Content-Security-Policy does not govern: the pages themselves
stay under their real policy, no `bypass_csp`). A small threaded HTTP server on 127.0.0.1 is
the SMART app's redirect URI and, reached as `http://localhost:PORT`, "another site" (another
origin and another site: other host, other scheme) serving a forged form and a framing page.

Run by the Rust test `e2e_web_browser`, which starts the server and provisions:
  PHIVAULT_BASE            the FHIR base URL (https://127.0.0.1:PORT/fhir)
  REQUESTS_CA_BUNDLE       the server's CA certificate (requests reads it)
  PHIVAULT_SCREENSHOTS     where the screenshots go
  WEB_CHROMIUM             the Chromium binary
  WEB_PORT                 the port of the little server (the app's redirect URI is
                           http://127.0.0.1:WEB_PORT/callback)
  WEB_INJECTED             the markup in the patient's family name and the app's name
  WEB_PATIENT_ID, WEB_PATIENT_USER, WEB_PATIENT_PASSWORD
                           the patient and their account (no second factor yet)
  WEB_CARER_NAME           the clinician who read and searched the record
  WEB_EMERGENCY_NAME       the clinician who broke the glass
  WEB_RESEARCH_TOKEN       the token of a system/*.rs app acting for HRESCH
  WEB_FEED_NAME, WEB_FEED_TOKEN   a system/*.rs app the admin disables, its token
  WEB_APP_CLIENT_ID, WEB_APP_SCOPE   the patient's public SMART app (named with the markup)
  WEB_ADMIN_USER, WEB_ADMIN_PASSWORD, WEB_ADMIN_TOTP_SECRET,
  WEB_ADMIN_TOTP_LAST_STEP (the TOTP step already spent)   an administrator
  WEB_EXPECTED_FAILURES    sections known to fail (comma separated)

The checks run in named sections; a section stops at its first failed check and the others
go on. A section that fails and is not expected, or is expected and passes, fails the run
(exit 1). Tokens, codes, passwords and keys are never printed.
"""

import base64
import hashlib
import json
import os
import re
import secrets
import signal
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pyotp
import pyrage
import requests
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import expect, sync_playwright

ENV = os.environ
BASE = ENV["PHIVAULT_BASE"].rstrip("/")
ROOT = BASE.removesuffix("/fhir")
SHOTS = ENV["PHIVAULT_SCREENSHOTS"]
CHROMIUM = ENV.get("WEB_CHROMIUM", "/usr/bin/chromium")
PORT = int(ENV["WEB_PORT"])
REDIRECT = f"http://127.0.0.1:{PORT}/callback"
# The same little server under another host name: another site for the browser.
ELSEWHERE = f"http://localhost:{PORT}"
INJECTED = ENV["WEB_INJECTED"]
PATIENT = ENV["WEB_PATIENT_ID"]
FHIR_JSON = "application/fhir+json"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}

# How long a page or an element may take (a debug build on two busy cores).
PAGE_TIMEOUT_S = 20
expect.set_options(timeout=PAGE_TIMEOUT_S * 1000)

STARTED = time.monotonic()


def out(line):
    print(line, flush=True)


def hard_stop(*_):
    out("FAIL [time] the script ran over 170 s")
    os._exit(1)


# A hung browser or server must not hang CI.
signal.signal(signal.SIGALRM, hard_stop)
signal.alarm(170)


class Failed(Exception):
    """A failed check: ends its section."""


def check(condition, what, detail=""):
    """One line per check; a failure ends the section."""
    if not condition:
        raise Failed(f"{what}: {detail or 'not as expected'}")
    out(f"ok   {what}")


def info(text):
    out(f"     {text}")


EXPECTED = {n for n in ENV.get("WEB_EXPECTED_FAILURES", "").split(",") if n}
RESULTS = []


def section(name, fn, *args):
    """Runs one named section; its result is judged at the end against EXPECTED."""
    out(f"-- {name}")
    began = time.monotonic()
    try:
        value = fn(*args)
    except Failed as e:
        RESULTS.append((name, False, str(e)))
        out(f"     [{name}] failed: {e}")
        return None
    except Exception as e:  # noqa: BLE001 (any error fails the section, said in one line)
        # Only the first line: a library's longer message may quote what a page was sent.
        first = (str(e).strip().splitlines() or [""])[0][:300]
        RESULTS.append((name, False, f"{type(e).__name__}: {first}"))
        out(f"     [{name}] failed: {type(e).__name__}: {first}")
        return None
    RESULTS.append((name, True, ""))
    info(f"[{name}] {time.monotonic() - began:.1f} s")
    return value


def judge():
    """Prints the verdict of every section; True when the run passes."""
    passed = True
    names = {n for n, _, _ in RESULTS}
    for name, ok, detail in RESULTS:
        if name in EXPECTED and ok:
            out(f"FAIL [{name}] passes now: remove it from EXPECTED_FAILURES in e2e_web_browser.rs")
            passed = False
        elif name in EXPECTED:
            out(f"xfail [{name}] {detail}")
        elif not ok:
            out(f"FAIL [{name}] {detail}")
            passed = False
    for name in sorted(EXPECTED - names):
        out(f"FAIL [{name}] listed in EXPECTED_FAILURES but no section has that name")
        passed = False
    good = sum(1 for _, ok, _ in RESULTS if ok)
    out(f"sections: {good} ok, {len(RESULTS) - good} not ok, {len(EXPECTED)} expected to fail")
    return passed


# ---------------------------------------------------------------- the other site


class Elsewhere:
    """The app's redirect URI (`/callback`, recorded) and the pages of another site."""

    def __init__(self, port):
        self.hits = []
        self.pages = {}
        self.cond = threading.Condition()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                url = urllib.parse.urlsplit(self.path)
                if url.path == "/callback":
                    params = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
                    with owner.cond:
                        owner.hits.append(params)
                        owner.cond.notify_all()
                    body = "<!doctype html><title>App</title><h1>Back in the app</h1>"
                else:
                    body = owner.pages.get(url.path)
                    if body is None:
                        self.send_error(404)
                        return
                data = body.encode("utf-8")
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                # The callback's query holds the authorization code: never logged.
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def count(self):
        with self.cond:
            return len(self.hits)

    def wait_after(self, seen):
        with self.cond:
            if not self.cond.wait_for(lambda: len(self.hits) > seen, PAGE_TIMEOUT_S):
                raise Failed(f"redirect to the app: nothing reached {REDIRECT}")
            return self.hits[seen]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def forged_form(action, fields):
    """A page of another site that posts `fields` to `action` as soon as it loads."""
    inputs = "".join(
        f'<input type="hidden" name="{html_escape(k)}" value="{html_escape(v)}">' for k, v in fields
    )
    return (
        '<!doctype html><html lang="en"><title>You won a prize</title>'
        f'<body><form id="f" method="post" action="{html_escape(action)}">{inputs}</form>'
        "<script>document.getElementById('f').submit()</script></body></html>"
    )


def html_escape(text):
    return (
        str(text)
        .replace("&", "&amp;")
        .replace('"', "&quot;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
    )


# ---------------------------------------------------------------- HTTP helpers


def why(r):
    """A response's status and, for a FHIR refusal, its diagnostics (never a token)."""
    try:
        issues = r.json().get("issue", [])
        text = "; ".join(i.get("diagnostics", "") for i in issues)
    except ValueError:
        text = ""
    return f"HTTP {r.status_code} {text}".strip()


def fhir_get(token, path, purpose=None):
    headers = {"Authorization": f"Bearer {token}", "Accept": FHIR_JSON}
    if purpose:
        headers["X-Purpose-Of-Use"] = purpose
    return requests.get(f"{BASE}/{path}", headers=headers, timeout=30)


def research_read():
    return fhir_get(ENV["WEB_RESEARCH_TOKEN"], f"Patient/{PATIENT}", "HRESCH")


def path_of(url):
    return urllib.parse.urlsplit(url).path


def totp_code(secret, last_step):
    """A code of a step never used yet and inside the server's window (now-1 ..= now+1)."""
    step = max(last_step + 1, int(time.time()) // 30)
    while step > int(time.time()) // 30 + 1:
        time.sleep(1)
    return step, pyotp.TOTP(secret).at(step * 30)


# ---------------------------------------------------------------- pages, shots, axe

AXE = Axe()
# Every page's axe violations: stem -> [(rule, impact, nodes, help, first targets)].
A11Y = {}
# Pages wider than a phone at 390 px (horizontal scrolling): stem -> scroll width.
OVERFLOW = {}


def new_context(browser):
    """A fresh browser profile (no cookies) trusting the server's test certificate."""
    context = browser.new_context(ignore_https_errors=True, viewport=DESKTOP, accept_downloads=True)
    context.set_default_timeout(PAGE_TIMEOUT_S * 1000)
    return context


def shots(page, stem):
    """Full-page screenshots at desktop and phone widths; records overflow at phone width."""
    page.set_viewport_size(DESKTOP)
    page.screenshot(path=os.path.join(SHOTS, f"{stem}-desktop.png"), full_page=True)
    page.set_viewport_size(PHONE)
    width = page.evaluate("() => document.documentElement.scrollWidth")
    if width > PHONE["width"] + 1:
        OVERFLOW[stem] = width
    page.screenshot(path=os.path.join(SHOTS, f"{stem}-phone.png"), full_page=True)
    page.set_viewport_size(DESKTOP)
    info(f"screenshots {stem}-desktop.png, {stem}-phone.png")


def audit(page, stem):
    """axe-core on the page as it is (desktop width)."""
    results = AXE.run(page)
    # A page where axe passed no rule at all would mean it did not really run.
    check(
        len(results.response.get("passes", [])) >= 5,
        f"{stem}: axe-core ran on the page",
        f"{len(results.response.get('passes', []))} rules passed",
    )
    A11Y[stem] = [
        (
            v["id"],
            v.get("impact") or "unknown",
            len(v["nodes"]),
            v.get("help", ""),
            [" ".join(map(str, n.get("target", []))) for n in v["nodes"][:3]],
        )
        for v in results.response["violations"]
    ]


def page_rules(page, response, stem):
    """What every page keeps: a strict CSP, no framing, no caching, one h1, no script."""
    headers = response.headers
    csp = headers.get("content-security-policy", "")
    check(
        "frame-ancestors 'none'" in csp
        and "default-src 'none'" in csp
        and "unsafe-inline" not in csp
        and "script-src" not in csp,
        f"{stem}: a strict Content-Security-Policy (no script, no framing)",
        csp,
    )
    check(
        headers.get("x-frame-options", "").upper() == "DENY"
        and "no-store" in headers.get("cache-control", ""),
        f"{stem}: X-Frame-Options DENY and Cache-Control no-store",
    )
    check(
        page.locator("h1").count() == 1 and page.locator("main h1").count() == 1,
        f"{stem}: one h1, inside main",
        f"{page.locator('h1').count()} h1",
    )
    check(page.locator("script").count() == 0, f"{stem}: no script element")
    text = page.locator("main").inner_text()
    check(
        "serde_json" not in text and "[object Object]" not in text,
        f"{stem}: no value shown as a data structure",
        (re.search(r".{0,40}serde_json.{0,40}", text) or [""])[0],
    )


def visit(page, path, stem):
    """Opens a page of a signed-in area: status, rules, screenshots, axe."""
    response = page.goto(ROOT + path)
    check(
        response is not None and response.status == 200 and path_of(page.url) == path,
        f"GET {path}: 200, the page itself",
        f"{response and response.status} at {path_of(page.url)}",
    )
    page_rules(page, response, stem)
    shots(page, stem)
    audit(page, stem)
    return response


def inert(page, where):
    """The injected markup is text on this page: no script element, nothing ran."""
    check(
        page.evaluate("() => typeof window.__pwned") == "undefined",
        f"{where}: the injected script did not run",
    )
    check(page.locator("script").count() == 0, f"{where}: no script element in the page")
    expect(page.locator("main")).to_contain_text(INJECTED)
    check(True, f"{where}: the markup is shown as text")


def item(page, selector, text, heading=False):
    """The one list item or table row (`selector`, inside `main`) that shows `text` (a string
    or a regular expression), in its own heading when `heading`."""
    found = page.locator("main").locator(selector)
    if heading:
        found = found.filter(has=page.locator("h2, h3", has_text=text))
    else:
        found = found.filter(has_text=text)
    check(found.count() == 1, f"one {selector} shows {text}", f"{found.count()} found")
    return found


def form_of(button):
    """The action and fields a button's form would post (the button's own name too)."""
    return button.evaluate(
        """b => { const f = b.form; const d = new FormData(f, b);
                  return {action: f.action, fields: [...d.entries()]}; }"""
    )


def forge(page, site, name, action, fields):
    """Another site's page posts `fields` to `action` in this browser (the victim's): the
    status the server answered."""
    forged = [(k, v) for k, v in fields if k != "csrf"]
    # A token of the right form: the attacker cannot know the victim's.
    forged.append(("csrf", base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()[:43]))
    site.pages[f"/{name}"] = forged_form(action, forged)
    target = path_of(action)
    with page.expect_response(
        lambda r: r.request.method == "POST" and path_of(r.url) == target
    ) as answer:
        page.goto(f"{ELSEWHERE}/{name}")
    status = answer.value.status
    page.wait_for_load_state()
    shots(page, f"security-{name}")
    info(
        f"the forged post to {target} was answered {status}, the browser is at {path_of(page.url)}"
    )
    # Refused outright (403), or sent to sign in (no cookie crossed over): never done.
    check(
        status == 403 or (status in (302, 303) and path_of(page.url) == "/signin"),
        f"a forged cross-site post to {target} is refused",
        f"HTTP {status}",
    )


# ---------------------------------------------------------------- the patient


def sign_in_form(page, username, password):
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    page.get_by_label("Username", exact=True).fill(username)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_role("button", name="Sign in").click()


def second_factor(page, code):
    expect(page.get_by_role("heading", name="Enter your verification code")).to_be_visible()
    page.get_by_label("Verification code", exact=True).fill(code)
    page.get_by_role("button", name="Verify").click()


def patient_enrols(browser, state):
    """(1) Password sign-in, authenticator enrolment, recovery codes, sign-out, sign-in with a
    code."""
    context = new_context(browser)
    state["patient_context"] = context
    page = context.new_page()
    state["patient"] = page
    response = page.goto(ROOT + "/portal")
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(page.url).query))
    check(
        path_of(page.url) == "/signin" and query.get("next") == "/portal",
        "/portal without a session: the sign-in page, coming back to /portal",
        page.url.replace(ROOT, ""),
    )
    page_rules(page, response, "account-signin")
    shots(page, "account-signin")
    audit(page, "account-signin")
    sign_in_form(page, ENV["WEB_PATIENT_USER"], ENV["WEB_PATIENT_PASSWORD"])
    page.wait_for_url(lambda u: path_of(u) in ("/portal", "/account/totp"))
    check(
        path_of(page.url) == "/portal",
        "a password alone opens the portal (no authenticator yet)",
        path_of(page.url),
    )
    response = page.goto(ROOT + "/account/totp")
    expect(page.get_by_role("heading", name="Authenticator app")).to_be_visible()
    page_rules(page, response, "account-totp")
    shots(page, "account-totp")
    audit(page, "account-totp")
    page.get_by_role("button", name="Set up an authenticator").click()
    expect(page.locator("svg.qr path")).to_be_visible()
    secret = page.locator("#totp-secret").inner_text().strip()
    check(
        re.fullmatch(r"[A-Z2-7]{16,}=*", secret) is not None,
        "the enrolment page shows the key (#totp-secret, base32) beside the QR code",
    )
    shots(page, "account-totp-scan")
    audit(page, "account-totp-scan")
    step = int(time.time()) // 30
    page.get_by_label("Code from your app", exact=True).fill(pyotp.TOTP(secret).at(step * 30))
    page.get_by_role("button", name="Turn on").click()
    expect(page.get_by_role("heading", name="Your recovery codes")).to_be_visible()
    codes = [c.strip() for c in page.locator("ul.codes li").all_inner_texts()]
    check(
        len(codes) >= 2 and len(set(codes)) == len(codes),
        "the code turns the authenticator on; the recovery codes are shown",
        f"{len(codes)} codes",
    )
    shots(page, "account-recovery-codes")
    audit(page, "account-recovery-codes")
    state["recovery_codes"] = codes
    page.get_by_role("link", name="Continue").click()
    page.wait_for_url(lambda u: path_of(u) == "/portal")
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(lambda u: path_of(u) == "/signin")
    page.goto(ROOT + "/portal")
    check(path_of(page.url) == "/signin", "after signing out the portal asks for a sign-in")
    sign_in_form(page, ENV["WEB_PATIENT_USER"], ENV["WEB_PATIENT_PASSWORD"])
    expect(page.get_by_role("heading", name="Enter your verification code")).to_be_visible()
    shots(page, "account-verify")
    audit(page, "account-verify")
    _, code = totp_code(secret, step)
    second_factor(page, code)
    page.wait_for_url(lambda u: path_of(u) in ("/portal", "/signin", "/signin/totp"))
    check(
        path_of(page.url) == "/portal",
        "signed in again with the password and a code from the authenticator",
        path_of(page.url),
    )


PORTAL_PAGES = [
    ("summary", "/portal"),
    ("access", "/portal/access"),
    ("apps", "/portal/apps"),
    ("consents", "/portal/consents"),
    ("download", "/portal/download"),
    ("requests", "/portal/requests"),
    ("privacy", "/portal/privacy"),
]

CONSOLE_PAGES = [
    ("home", "/admin"),
    ("users", "/admin/console/users"),
    ("clients", "/admin/console/clients"),
    ("break-glass", "/admin/console/break-glass"),
    ("alerts", "/admin/console/alerts"),
    ("audit", "/admin/console/audit"),
    ("keys", "/admin/console/keys"),
    ("backups", "/admin/console/backups"),
    ("settings", "/admin/console/settings"),
    ("breach", "/admin/console/breach"),
]


def summary_page(page):
    """The summary: the patient's name (markup in it stays text), the chart with its table."""
    visit(page, "/portal", "portal-summary")
    inert(page, "/portal (the patient's name)")
    main = page.locator("main")
    expect(main).to_contain_text("Ada")
    expect(main).to_contain_text("Hypertension")
    expect(main).to_contain_text("lisinopril")
    points = page.locator("main svg polyline").first.get_attribute("points") or ""
    check(
        re.fullmatch(r"[\d.\s,\-]+", points) is not None and len(points.split()) >= 2,
        "the vital-sign chart is a polyline of numbers",
        points[:60],
    )
    check(page.locator("main table").count() >= 1, "a table beside the chart")


def access_page(page):
    """(2) The clinician's read and search, and the break-the-glass read, with their actors."""
    visit(page, "/portal/access", "portal-access")
    carer, emergency = ENV["WEB_CARER_NAME"], ENV["WEB_EMERGENCY_NAME"]
    rows = page.locator("main tbody tr").filter(has_text=carer).all_inner_texts()
    rows = [t.lower() for t in rows]
    check(bool(rows), f"the access log names the clinician ({carer})")
    check(
        any(re.search(r"\blooked at\b|\bread\b|\bopened\b", t) for t in rows),
        "the clinician's read is listed with its actor",
        " | ".join(rows)[:300],
    )
    check(
        any("search" in t for t in rows),
        "the clinician's search is listed with its actor",
        " | ".join(rows)[:300],
    )
    check(any("clinician" in t for t in rows), "the actor's role is shown")
    glass = page.locator("main tbody tr").filter(has_text=emergency)
    marked = [t.lower() for t in glass.all_inner_texts()]
    check(
        any("emergency" in t or "break" in t for t in marked),
        "the break-the-glass read is listed and marked as such",
        " | ".join(marked)[:300],
    )
    check(
        glass.first.evaluate("r => r.classList.contains('highlight')"),
        "the break-the-glass row is highlighted",
    )


def authorize_app(browser, site, state):
    """The patient connects their SMART app (a recovery code as the second factor)."""
    context = new_context(browser)
    page = context.new_page()
    verifier = secrets.token_urlsafe(48)
    challenge = (
        base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest())
        .rstrip(b"=")
        .decode("ascii")
    )
    app_state = secrets.token_urlsafe(16)
    query = urllib.parse.urlencode(
        {
            "response_type": "code",
            "client_id": ENV["WEB_APP_CLIENT_ID"],
            "redirect_uri": REDIRECT,
            "scope": ENV["WEB_APP_SCOPE"],
            "state": app_state,
            "aud": BASE,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
    )
    seen = site.count()
    page.goto(f"{ROOT}/oauth/authorize?{query}")
    sign_in_form(page, ENV["WEB_PATIENT_USER"], ENV["WEB_PATIENT_PASSWORD"])
    second_factor(page, state["recovery_codes"][0])
    expect(page.get_by_role("heading", name=re.compile("Allow"))).to_be_visible()
    inert(page, "the SMART consent page (the app's name)")
    audit(page, "oauth-consent")
    page.get_by_role("button", name="Allow").click()
    params = site.wait_after(seen)
    check(
        "code" in params and params.get("state") == app_state,
        "a recovery code signs in; the app gets a code and its state back",
    )
    context.close()
    r = requests.post(
        f"{ROOT}/oauth/token",
        data={
            "grant_type": "authorization_code",
            "code": params["code"],
            "redirect_uri": REDIRECT,
            "client_id": ENV["WEB_APP_CLIENT_ID"],
            "code_verifier": verifier,
        },
        timeout=30,
    )
    check(r.status_code == 200, "the app exchanges the code", why(r))
    token = r.json()["access_token"]
    r = fhir_get(token, f"Patient/{PATIENT}")
    check(r.status_code == 200, "the app reads the patient's record", why(r))
    state["app_token"] = token


def apps_page(page, site, state):
    """(8) The app's name is text; a forged revocation from another site changes nothing."""
    visit(page, "/portal/apps", "portal-apps")
    inert(page, "/portal/apps (the app's name)")
    card = item(page, "li.card", INJECTED, heading=True)
    form = form_of(card.get_by_role("button", name="Revoke"))
    info(f"the revocation form posts {sorted(k for k, _ in form['fields'] if k != 'csrf')}")
    forge(page, site, "forge-revoke", form["action"], form["fields"])
    r = fhir_get(state["app_token"], f"Patient/{PATIENT}")
    check(r.status_code == 200, "after the forged post the app still works", why(r))
    page.goto(ROOT + "/portal/apps")
    item(page, "li.card", INJECTED, heading=True)
    check(True, "after the forged post the app is still listed")


def revoke_app(page, state):
    """(4) The patient revokes the app: its next request gets 401."""
    page.goto(ROOT + "/portal/apps")
    card = item(page, "li.card", INJECTED, heading=True)
    card.get_by_role("button", name="Revoke").click()
    page.wait_for_load_state()
    r = fhir_get(state["app_token"], f"Patient/{PATIENT}")
    check(r.status_code == 401, "after the revocation the app's next request gets 401", why(r))
    check(path_of(page.url) == "/portal/apps", "the patient is back on the apps page")
    expect(page.locator("main")).not_to_contain_text(INJECTED)
    check(True, "the app is no longer listed")
    shots(page, "portal-apps-revoked")


def research_card(page):
    return item(page, "li.card", re.compile("research", re.IGNORECASE), heading=True)


def consents_page(page, site):
    """(3) Research permitted then withdrawn on the page: the research app follows at once;
    a forged withdrawal from another site changes nothing."""
    r = research_read()
    check(r.status_code == 403, "before any consent the research app is refused", why(r))
    visit(page, "/portal/consents", "portal-consents")
    research_card(page).get_by_role("button", name="Give consent").click()
    page.wait_for_load_state()
    check(path_of(page.url) == "/portal/consents", "back on the consents page after giving consent")
    r = research_read()
    check(
        r.status_code == 200, "after the patient permits research, the research app reads", why(r)
    )
    form = form_of(research_card(page).get_by_role("button", name="Withdraw consent"))
    info(f"the withdrawal form posts {sorted(k for k, _ in form['fields'] if k != 'csrf')}")
    forge(page, site, "forge-consent", form["action"], form["fields"])
    r = research_read()
    check(r.status_code == 200, "after the forged withdrawal research is still permitted", why(r))
    page.goto(ROOT + "/portal/consents")
    shots(page, "portal-consents-permitted")
    research_card(page).get_by_role("button", name="Withdraw consent").click()
    page.wait_for_load_state()
    r = research_read()
    check(
        r.status_code == 403 and "consent" in why(r).lower(),
        "after the withdrawal the research app's next request is refused (consent)",
        why(r),
    )


def ndjson(data, what):
    text = data.decode("utf-8")
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    check(bool(lines), f"{what}: non-empty NDJSON", f"{len(data)} bytes")
    patients = [x for x in lines if x.get("resourceType") == "Patient"]
    check(
        any(p.get("id") == PATIENT for p in patients),
        f"{what}: {len(lines)} lines, the patient's own Patient among them",
    )


def download_page(page):
    """(5) The package, plain and encrypted to an age key."""
    visit(page, "/portal/download", "portal-download")
    button = page.locator("main").get_by_role("button", name="Download")
    with page.expect_download() as d:
        button.click()
    download = d.value
    with open(download.path(), "rb") as f:
        data = f.read()
    info(f"downloaded {download.suggested_filename} ({len(data)} bytes)")
    ndjson(data, "the package")
    identity = pyrage.x25519.Identity.generate()
    recipient = str(identity.to_public())
    field = page.get_by_label("Encrypt the file to a key (optional)")
    field.fill(recipient)
    with page.expect_download() as d:
        button.click()
    download = d.value
    with open(download.path(), "rb") as f:
        data = f.read()
    info(f"downloaded {download.suggested_filename} ({len(data)} bytes)")
    check(
        data.startswith(b"age-encryption.org/v1"),
        "with an age recipient the package is age-encrypted",
        repr(data[:24]),
    )
    ndjson(pyrage.decrypt(data, [identity]), "the decrypted package")


def framing(browser, site):
    """(8) Another site cannot frame a page."""
    context = new_context(browser)
    page = context.new_page()
    refusals = []
    page.on("console", lambda m: refusals.append(m.text) if "frame" in m.text.lower() else None)
    site.pages["/frame"] = (
        '<!doctype html><html lang="en"><title>Framed</title><body><h1>Another site</h1>'
        f'<iframe src="{ROOT}/portal" title="portal" width="900" height="600"></iframe>'
        f'<iframe src="{ROOT}/signin" title="sign-in" width="900" height="600"></iframe>'
        "</body></html>"
    )
    page.goto(f"{ELSEWHERE}/frame")
    page.wait_for_load_state("load")
    frames = page.frames[1:]
    check(len(frames) == 2, "the other site's page has its two frames")
    for frame in frames:
        try:
            headings = frame.locator("h1").all_inner_texts()
        except PlaywrightError:
            headings = []
        check(
            not frame.url.startswith(ROOT) or not headings,
            "a page of the server does not render inside another site's frame",
            f"{frame.url.replace(ROOT, '')} shows {headings}",
        )
    shots(page, "security-framing")
    info(f"the browser said: {refusals[0][:160] if refusals else '(nothing in the console)'}")
    context.close()


# ---------------------------------------------------------------- the administrator


def admin_signs_in(browser, state):
    """(6) The administrator signs in with a password and a TOTP code."""
    context = new_context(browser)
    state["admin_context"] = context
    page = context.new_page()
    state["admin"] = page
    page.goto(ROOT + "/admin")
    check(path_of(page.url) == "/signin", "/admin without a session: the sign-in page")
    sign_in_form(page, ENV["WEB_ADMIN_USER"], ENV["WEB_ADMIN_PASSWORD"])
    _, code = totp_code(ENV["WEB_ADMIN_TOTP_SECRET"], int(ENV["WEB_ADMIN_TOTP_LAST_STEP"]))
    second_factor(page, code)
    page.wait_for_url(lambda u: path_of(u) in ("/admin", "/signin", "/signin/totp"))
    check(path_of(page.url) == "/admin", "the administrator reaches the console", path_of(page.url))


def break_glass_page(page):
    """(6) The break-the-glass event is listed and marked reviewed with a note."""
    visit(page, "/admin/console/break-glass", "console-break-glass")
    # The event names the record (and the clinician by username or name).
    event = item(page, "li.people-review", PATIENT)
    note = "Reviewed with the emergency team: justified."
    event.get_by_label("Review note").fill(note)
    event.get_by_role("button", name="Mark reviewed").click()
    page.wait_for_load_state()
    page.goto(ROOT + "/admin/console/break-glass")
    expect(page.locator("main li.people-review").filter(has_text=PATIENT)).to_have_count(0)
    row = item(page, "tbody tr", PATIENT)
    expect(row).to_contain_text("reviewed")
    expect(row).to_contain_text(note)
    check(True, "the event moved to the reviewed ones, with the note")
    shots(page, "console-break-glass-reviewed")


def clients_page(page):
    """(6) The administrator disables the feed: its next request is refused."""
    visit(page, "/admin/console/clients", "console-clients")
    inert(page, "/admin/console/clients (the app's name)")
    r = fhir_get(ENV["WEB_FEED_TOKEN"], f"Patient/{PATIENT}")
    check(r.status_code == 200, "before it is disabled the feed reads", why(r))
    feed = ENV["WEB_FEED_NAME"]
    item(page, "tbody tr", feed).get_by_role("button", name="Disable").click()
    page.wait_for_load_state()
    r = fhir_get(ENV["WEB_FEED_TOKEN"], f"Patient/{PATIENT}")
    check(
        r.status_code in (401, 403),
        "after it is disabled the feed's next request is refused",
        why(r),
    )
    info(f"the disabled feed's request: {why(r)}")
    page.goto(ROOT + "/admin/console/clients")
    expect(item(page, "tbody tr", feed)).to_contain_text("disabled")
    check(True, "the feed is listed as disabled")


def audit_page(page):
    """(6) "Verify now" verifies the audit chain."""
    visit(page, "/admin/console/audit", "console-audit")
    page.get_by_role("button", name="Verify now").click()
    page.wait_for_load_state()
    deadline = time.monotonic() + PAGE_TIMEOUT_S
    # A long trail is checked in the background: the page shows progress until it is done.
    while page.locator("#verify-progress").count() and time.monotonic() < deadline:
        time.sleep(0.5)
        page.goto(ROOT + "/admin/console/audit")
    result = page.locator("#verification")
    expect(result).to_contain_text("verified")
    expect(result).not_to_contain_text("failed")
    check(True, "the audit chain is verified")
    shots(page, "console-audit-verified")


# ---------------------------------------------------------------- the run


def accessibility():
    """(9) No serious or critical axe violation on any page (desktop)."""
    for stem in sorted(A11Y):
        found = A11Y[stem]
        bad = [v for v in found if v[1] in ("serious", "critical")]
        minor = [f"{v[0]} ({v[1]}, {v[2]})" for v in found if v not in bad]
        if minor:
            info(f"axe {stem}: minor/moderate: {', '.join(minor)}")

        def judge_page(bad=bad, stem=stem):
            check(
                not bad,
                f"axe: no serious or critical violation on {stem}",
                "; ".join(f"{v[0]} ({v[1]}, {v[2]} nodes: {v[3]}; e.g. {v[4]})" for v in bad),
            )

        section(f"axe-{stem}", judge_page)
    for stem, width in sorted(OVERFLOW.items()):
        info(f"at 390 px {stem} is {width} px wide (scrolls sideways)")


def main():
    os.makedirs(SHOTS, exist_ok=True)
    version = re.match(r"/\*! (axe v[\d.]+)", AXE.axe_script)
    info(f"accessibility rules: {version[1] if version else 'axe-core (version unknown)'}")
    site = Elsewhere(PORT)
    state = {}
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM)
            try:
                section("patient-signin-totp", patient_enrols, browser, state)
                page = state.get("patient")
                if page is not None:
                    section("portal-summary", summary_page, page)
                    section("portal-access", access_page, page)
                    for name, path in PORTAL_PAGES[5:]:
                        section(f"page-portal-{name}", visit, page, path, f"portal-{name}")
                    section("smart-authorize", authorize_app, browser, site, state)
                    if "app_token" in state:
                        section("portal-apps-csrf-xss", apps_page, page, site, state)
                    else:
                        section("page-portal-apps", visit, page, "/portal/apps", "portal-apps")
                    section("portal-consents", consents_page, page, site)
                    if "app_token" in state:
                        section("portal-apps-revoke", revoke_app, page, state)
                    section("portal-download", download_page, page)
                section("framing", framing, browser, site)
                section("admin-signin-totp", admin_signs_in, browser, state)
                admin = state.get("admin")
                if admin is not None:
                    section("console-break-glass", break_glass_page, admin)
                    section("console-clients", clients_page, admin)
                    section("console-audit", audit_page, admin)
                    for name, path in CONSOLE_PAGES:
                        if name not in ("break-glass", "clients", "audit"):
                            section(f"page-console-{name}", visit, admin, path, f"console-{name}")
            finally:
                browser.close()
        accessibility()
    finally:
        site.close()
    passed = judge()
    out(f"the portal and console script took {time.monotonic() - STARTED:.1f} s")
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()
