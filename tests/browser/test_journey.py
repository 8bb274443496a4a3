"""The whole patient journey in Chromium, in French and in English, against real processes:
the broker (behind its recording proxy), the two demo holders and the demo app (the e2e
stack, tests/e2e/stack.py).

Sign up and log in → link the laboratory and the insurer at their own pages → browse and
filter the catalog → the app's page → connect → consent with one category unticked → see it in
«Mes accords» → the app reads (its page draws the chart from what the laboratory sent it) →
that read in «Mon historique» and as the last read in «Mes accords» → shorten the consent →
revoke it (the page says what will happen) → the app is refused → export (the downloaded file
is read) → delete the account.

Every page passes axe-core (no serious or critical violation), says no jargon, is photographed
at 1280 and 360 px into docs/screenshots/, and reflows at 200 % zoom (640 CSS pixels on a
1280-pixel screen). The consent path is also run with the keyboard alone, and a few attacks are
tried in the browser: open redirects after log-in and on the consent's return address.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from broker.audit.history import TIMEZONE
from broker.db import utcnow
from tests.browser.axe import assert_accessible
from tests.browser.test_catalog_pages import JARGON, shoot
from tests.e2e.stack import Database, Stack, free_port

pytestmark = pytest.mark.e2e

PASSWORD = "une phrase de passe pour le parcours"
STATUS_LIST_TTL = 30.0  # the broker's status list cache lifetime (broker/consent/routes.py)
LINKS = (  # the demo holders' own log-ins for Gaëlle's records (examples/)
    ("labo-demo", "gaelle.martin", "labo-gaelle-2026"),
    ("assurance-demo", "gaelle.martin", "assurance-gaelle-2026"),
)
TEXTS = {
    "fr": {
        "signup": "Créer mon compte",
        "login": "Se connecter",
        "need": "suivre mon diabète",
        "funding": "Payant par abonnement",
        "search": "Chercher",
        "connect": "Connecter cette application",
        "accept": "J'accepte",
        "active": "actif jusqu'au",
        "never_read": "Dernière lecture : aucune pour l'instant.",
        "last_read": "Dernière lecture : le",
        "released": "Laboratoire Démo",
        "end_changed": "La date de fin de votre accord est changée.",
        "what_happens": "Voici ce qui se passera si vous confirmez",
        "revoked": "Votre accord est retiré.",
        "understood": "Je comprends que mon compte",
        "deleted": "Votre compte est supprimé",
    },
    "en": {
        "signup": "Create my account",
        "login": "Log in",
        "need": "follow my diabetes",
        "funding": "Paid by subscription",
        "search": "Search",
        "connect": "Connect this app",
        "accept": "I agree",
        "active": "active until",
        "never_read": "Last read: none so far.",
        "last_read": "Last read: on",
        "released": "Laboratoire Démo",
        "end_changed": "The end date of your consent is changed.",
        "what_happens": "This is what will happen if you confirm",
        "revoked": "Your consent is withdrawn.",
        "understood": "I understand that my account",
        "deleted": "Your account is deleted",
    },
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp("journey")
    running = Stack(base, Database.sqlite(base))
    try:
        running.up()
        yield running
    finally:
        running.down()
        for name in ("broker", "app", *dict.fromkeys(h for h, _, _ in LINKS)):
            assert "Traceback" not in running.log(name), running.log(name)[-3000:]


@pytest.fixture
def accounts(stack: Stack) -> Iterator[list[tuple[Any, str]]]:
    """The (page, language) of each account a test opens: deleted afterwards if the test did
    not get that far, so that the demo records at the holders are free for the next test."""
    opened: list[tuple[Any, str]] = []
    yield opened
    for page, language in opened:
        page.goto(f"{stack.issuer}/account/delete")
        if page.url == f"{stack.issuer}/account/delete":  # still logged in: still there
            delete_account(page, stack, language)


def check(page: Any, axe: str, language: str, shot: str | None = None) -> None:
    """The page's language, axe-core, plain words, reflow at 200 % zoom, and its pictures."""
    assert page.locator("html").get_attribute("lang") == language
    assert_accessible(page, axe)
    text = page.locator("main").inner_text()
    assert not JARGON.search(text), f"{page.url}: {JARGON.search(text)}"
    # 200 % zoom on a 1280-pixel screen leaves 640 CSS pixels: nothing may stick out sideways.
    page.set_viewport_size({"width": 640, "height": 900})
    width = page.evaluate("() => document.documentElement.scrollWidth")
    assert width <= 640, f"{page.url} is {width} px wide at 200 % zoom"
    page.set_viewport_size({"width": 1280, "height": 900})
    if shot:
        shoot(page, shot)


def sign_up_and_log_in(page: Any, stack: Stack, axe: str, language: str, email: str) -> None:
    words = TEXTS[language]
    page.goto(f"{stack.issuer}/signup")
    check(page, axe, language)
    page.locator("#email").fill(email)
    page.locator("#display_name").fill("Gaëlle Martin")
    page.locator("#password").fill(PASSWORD)
    page.get_by_role("button", name=words["signup"], exact=True).click()
    page.wait_for_url(re.compile(r"/login\?"))
    page.locator("#email").fill(email)
    page.locator("#password").fill(PASSWORD)
    page.get_by_role("button", name=words["login"], exact=True).click()
    page.wait_for_url(f"{stack.issuer}/account")


def link_sources(page: Any, stack: Stack) -> None:
    """Each holder's own log-in page: the patient proves there that the record is hers."""
    for holder, username, password in LINKS:
        page.goto(f"{stack.issuer}/my/sources")
        page.locator(f"form[action='/my/sources/{holder}/link'] button").click()
        page.wait_for_url(re.compile(rf"127\.0\.0\.1:{stack.ports[holder]}/"))
        page.locator("#username").fill(username)
        page.locator("#password").fill(password)
        page.locator("form[action='/link'] button").click()
        arrive(page, f"{stack.issuer}/my/sources")
        assert page.locator(f"form[action='/my/sources/{holder}/unlink']").count() == 1


def delete_account(page: Any, stack: Stack, language: str) -> None:
    """Which also frees the demo records at the holders for the next test's account."""
    page.goto(f"{stack.issuer}/account/delete")
    page.get_by_label(re.compile(TEXTS[language]["understood"])).check()
    page.locator("#password").fill(PASSWORD)
    page.locator("form[action='/account/delete'] button").click()
    arrive(page, f"{stack.issuer}/account/deleted")
    assert TEXTS[language]["deleted"] in page.locator("main").inner_text()


def arrive(page: Any, url: Any) -> None:
    """Wait for ``url``; if the browser stays elsewhere, say where and what the page says."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_url(url)
    except PlaywrightTimeout:
        raise AssertionError(f"{page.url}: {page.locator('body').inner_text()[:2000]}") from None


def wait_for_text(page: Any, url: str, text: str, limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while True:
        page.goto(url)
        if text in page.locator("body").inner_text():
            return
        assert time.monotonic() < deadline, f"{url}: no «{text}» after {limit} s"
        time.sleep(0.5)


@pytest.mark.parametrize("language", ["fr", "en"])
def test_the_patient_journey(
    stack: Stack, axe: str, new_page: Any, accounts: list[tuple[Any, str]], language: str
) -> None:
    words = TEXTS[language]
    page = new_page(language)
    accounts.append((page, language))
    email = f"gaelle-{language}@parcours.example"
    sign_up_and_log_in(page, stack, axe, language, email)
    link_sources(page, stack)

    # -- the catalog, filtered by need and by way of paying; the app's page ------------------
    page.goto(f"{stack.issuer}/catalog")
    check(page, axe, language)
    page.locator("#q").fill(words["need"])
    page.locator("#funding").select_option(label=words["funding"])
    page.get_by_role("button", name=words["search"], exact=True).click()
    page.wait_for_url(re.compile(r"/catalog\?.*funding=subscription"))
    assert page.locator("ul.apps > li").count() == 1
    page.locator("ul.apps a", has_text="Suivi Glycémie").click()
    page.wait_for_url(re.compile(r"/catalog/app_"))
    check(page, axe, language)

    # -- connect: the app's site, then the broker's consent screen ---------------------------
    connect = page.get_by_role("link", name=re.compile(words["connect"]))
    assert connect.get_attribute("href") == stack.url("app"), connect.get_attribute("href")
    connect.click()
    page.wait_for_url(re.compile(rf"127\.0\.0\.1:{stack.ports['app']}/"))
    page.locator("form[action='/connect'] button").click()
    page.wait_for_url(re.compile(r"/consent/"))
    check(page, axe, language, f"consent-{language}")
    optional = page.locator("input[name=item]")
    assert optional.count() == 1  # the reimbursements; the laboratory results are needed
    assert optional.get_attribute("value") == "health_budget|reimbursements"
    optional.uncheck()
    page.get_by_role("button", name=words["accept"], exact=True).click()
    arrive(page, re.compile(rf"127\.0\.0\.1:{stack.ports['app']}/"))
    app_page = page.locator("body").inner_text()
    assert "Votre glycémie à jeun" in app_page and "mmol/L" in app_page, app_page[:1500]
    assert "Le coût de votre suivi" not in app_page  # the unticked category was not given

    # -- «Mes accords»: what, where, since, until; then the app's read appears --------------
    page.goto(f"{stack.issuer}/my/consents")
    main = page.locator("main").inner_text()
    assert "Suivi Glycémie" in main and words["active"] in main
    assert "Laboratoire Démo" in main
    assert re.search(r"(Remboursements|Reimbursements)", main) is None, main
    wait_for_text(page, f"{stack.issuer}/my/consents", words["last_read"])
    assert words["never_read"] not in page.locator("main").inner_text()
    check(page, axe, language, f"my-consents-active-{language}")

    page.goto(f"{stack.issuer}/my/history")
    history = page.locator("main").inner_text()
    assert words["released"] in history and "Suivi Glycémie" in history
    check(page, axe, language, f"history-{language}")

    # -- shorten the consent to a week ---------------------------------------------------------
    page.goto(f"{stack.issuer}/my/consents")
    ends_on = (utcnow() + timedelta(days=7)).astimezone(TIMEZONE).date()
    page.locator("input[name=ends_on]").fill(ends_on.isoformat())
    page.locator("form.end-date button").click()
    page.wait_for_url(re.compile(r"done=end_changed"))
    assert words["end_changed"] in page.locator("main").inner_text()
    assert page.locator("input[name=ends_on]").input_value() == ends_on.isoformat()
    assert page.locator("section.reminder").count() == 1  # a week left: the reminder shows
    check(page, axe, language)

    # -- revoke: the page says what will happen; then the app is refused ------------------------
    page.locator("a[href$='/revoke']").click()
    page.wait_for_url(re.compile(r"/my/consents/[^/]+/revoke$"))
    assert words["what_happens"] in page.locator("main").inner_text()
    check(page, axe, language, f"revoke-{language}")
    page.locator("form[action$='/revoke'] button").click()
    page.wait_for_url(re.compile(r"done=revoked"))
    assert words["revoked"] in page.locator("main").inner_text()
    assert page.locator("form.end-date").count() == 0
    # Within a second with the holders' push stream (tests/e2e measures it); here, under any
    # load, within the status list's cache lifetime at worst.
    deadline = time.monotonic() + STATUS_LIST_TTL + 10
    while True:
        page.goto(f"{stack.url('app')}/")
        if page.locator("#acces-retire").count():
            break
        assert time.monotonic() < deadline, "the app still reads after the revocation"
        time.sleep(0.2)

    # -- export: the file names the withdrawn consent -----------------------------------------
    page.goto(f"{stack.issuer}/account")
    check(page, axe, language, f"account-{language}")
    with page.expect_download() as download_info:
        page.locator("form[action='/account/export'] button").click()
    download = download_info.value
    assert re.fullmatch(r"mes-donnees-\d{4}-\d{2}-\d{2}\.json", download.suggested_filename)
    exported = json.loads(Path(download.path()).read_text(encoding="utf-8"))
    assert exported["account"]["email"] == email
    [consent] = exported["consents"]
    assert consent["app_name"] == "Suivi Glycémie" and consent["status"] == "revoked"
    assert [c for g in consent["grants"] for c in g["categories"]] == ["lab_results"]
    actions = [h["action"] for h in consent["history"]]
    assert actions[0] == "granted" and "changed" in actions and actions[-1] == "revoked"
    tags = {e["tag"] for e in exported["audit"]["entries"]}  # each with its inclusion proof
    assert {"holder:data:released", "patient:consent:changed", "patient:consent:revoked"} <= tags

    # -- delete the account ---------------------------------------------------------------------
    page.goto(f"{stack.issuer}/account/delete")
    check(page, axe, language, f"account-delete-{language}")
    delete_account(page, stack, language)
    check(page, axe, language)
    page.goto(f"{stack.issuer}/my/consents")
    assert "/login" in page.url


def press_until(page: Any, selector: str, limit: int = 80) -> None:
    """Tab until ``selector`` has the focus (the keyboard only, never the mouse)."""
    for _ in range(limit):
        page.keyboard.press("Tab")
        if page.evaluate("(s) => document.activeElement && document.activeElement.matches(s)", selector):
            return
    raise AssertionError(f"{selector} cannot be reached with Tab on {page.url}")


@pytest.mark.parametrize("language", ["fr", "en"])
def test_the_consent_path_with_the_keyboard_alone(
    stack: Stack, axe: str, new_page: Any, accounts: list[tuple[Any, str]], language: str
) -> None:
    page = new_page(language)
    accounts.append((page, language))
    email = f"clavier-{language}@parcours.example"
    sign_up_and_log_in(page, stack, axe, language, email)
    link_sources(page, stack)
    page.goto(f"{stack.url('app')}/")
    press_until(page, "form[action='/connect'] button")
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"/consent/"))
    press_until(page, "input[name=item]")
    page.keyboard.press("Space")  # untick the reimbursements
    assert not page.locator("input[name=item]").is_checked()
    press_until(page, "button[value=accept]")
    page.keyboard.press("Enter")
    arrive(page, re.compile(rf"127\.0\.0\.1:{stack.ports['app']}/"))
    assert "mmol/L" in page.locator("body").inner_text()
    # Then withdraw it, still without the mouse.
    page.goto(f"{stack.issuer}/my/consents")
    press_until(page, "a[href$='/revoke']")
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"/revoke$"))
    press_until(page, "form[action$='/revoke'] button")
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"done=revoked"))
    assert TEXTS[language]["revoked"] in page.locator("main").inner_text()
    delete_account(page, stack, language)


@pytest.mark.parametrize(
    "target", ["https://evil.example/", "//evil.example/", "/\\evil.example", "javascript:alert(1)"]
)
def test_log_in_never_sends_the_patient_elsewhere(stack: Stack, axe: str, new_page: Any, target: str) -> None:
    page = new_page("fr")
    sign_up_and_log_in(page, stack, axe, "fr", f"redirige-{abs(hash(target))}@parcours.example")
    page.context.clear_cookies()
    page.goto(f"{stack.issuer}/login?next={target}")
    page.locator("#email").fill(f"redirige-{abs(hash(target))}@parcours.example")
    page.locator("#password").fill(PASSWORD)
    page.get_by_role("button", name="Se connecter", exact=True).click()
    page.wait_for_load_state()
    assert page.url == f"{stack.issuer}/account", page.url


def test_a_consent_request_with_a_foreign_return_address_goes_nowhere(stack: Stack, new_page: Any) -> None:
    """An unregistered redirect_uri is refused on a broker page: no redirect to it, ever
    (RFC 6749 §4.1.2.1), whether or not the patient is logged in."""
    page = new_page("fr")
    client_id = stack.database.scalar("SELECT client_id FROM apps WHERE client_name = 'Suivi Glycémie'")
    for redirect_uri in ("https://evil.example/callback", f"{stack.url('app')}/callback/../evil"):
        response = page.goto(
            f"{stack.issuer}/authorize?response_type=code&client_id={client_id}"
            f"&redirect_uri={redirect_uri}&state=x&code_challenge=abc&code_challenge_method=S256"
        )
        assert response is not None and response.status == 400
        assert page.url.startswith(stack.issuer), page.url
        assert page.locator("main a[href*='evil']").count() == 0
        assert response.headers["x-frame-options"] == "DENY"


def framed_text(page: Any, target: str) -> str:
    """What a page of another origin shows when it puts ``target`` in an iframe. That page is
    served by a real server on loopback: Chromium would block a page it sees as public from
    framing a local one anyway (local network access), which would prove nothing here."""
    body = f'<!doctype html><title>x</title><iframe src="{target}" width="800" height="600"></iframe>'.encode()

    class Attacker(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", free_port()), Attacker)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        page.goto(f"http://127.0.0.1:{server.server_address[1]}/")
        page.wait_for_timeout(1000)
        texts = []
        for frame in page.frames[1:]:
            try:
                texts.append(frame.evaluate("() => document.body ? document.body.innerText : ''"))
            except Exception as exc:  # noqa: BLE001 (a blocked frame may refuse any script)
                texts.append(f"<{type(exc).__name__}>")
        return "\n".join(texts)
    finally:
        server.shutdown()
        server.server_close()


def test_the_consent_and_revoke_pages_cannot_be_framed(
    stack: Stack, axe: str, new_page: Any, accounts: list[tuple[Any, str]]
) -> None:
    """Clickjacking: another site cannot show these pages in a frame to steer the patient's
    clicks (CSP frame-ancestors 'none', X-Frame-Options DENY), checked by Chromium itself."""
    page = new_page("fr")
    accounts.append((page, "fr"))
    sign_up_and_log_in(page, stack, axe, "fr", "cadre@parcours.example")
    link_sources(page, stack)
    page.goto(f"{stack.url('app')}/")
    page.locator("form[action='/connect'] button").click()
    page.wait_for_url(re.compile(r"/consent/"))
    consent_url = page.url
    assert "J'accepte" in page.locator("main").inner_text()  # the page itself shows the button
    attacker = page.context.new_page()
    # The control: the demo app's own page sets no frame rule, and shows inside the frame.
    assert "Suivi Glycémie" in framed_text(attacker, f"{stack.url('app')}/")
    # The broker's pages show nothing there: not the consent, not even the log-in page.
    assert "Courtier de consentement" not in framed_text(attacker, consent_url)
    page.get_by_role("button", name="J'accepte", exact=True).click()
    arrive(page, re.compile(rf"127\.0\.0\.1:{stack.ports['app']}/"))
    page.goto(f"{stack.issuer}/my/consents")
    revoke_url = stack.issuer + str(page.locator("a[href$='/revoke']").get_attribute("href"))
    for target in (revoke_url, f"{stack.issuer}/my/consents"):
        assert "Courtier de consentement" not in framed_text(attacker, target)
    delete_account(page, stack, "fr")
