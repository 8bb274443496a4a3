"""The catalog pages in Chromium, in French and in English: a patient logs in, browses and
filters the catalog, opens an app's page, then her own pages; each page passes axe-core
(no serious or critical violation), works with the keyboard alone, fits a 360-pixel screen,
and is photographed into docs/screenshots/. Then what an app could try through its manifest."""

from __future__ import annotations

import copy
import re
from typing import Any

import httpx
import pytest

from broker.consent.catalog_pages import link_target, need_words
from broker.demo import DEMO_APP
from tests.browser.axe import assert_accessible
from tests.browser.conftest import GAELLE, SCREENSHOTS, Broker

# Words a patient should never meet on these pages (issue 7: plain words).
JARGON = re.compile(r"\b(scopes?|tokens?|oauth)\b", re.IGNORECASE)
TEXTS = {
    "fr": {
        "login": "Se connecter",
        "catalog": "Catalogue des applications",
        "search": "Chercher",
        "need": "suivre mon diabète",
        "funding": "Payant par abonnement",
        "order": "ordre alphabétique",
        "mine": "une de vos sources",
        "connect": "Connecter cette application",
        "charter": "article par article",
        "approved": "Cette application respecte la charte.",
    },
    "en": {
        "login": "Log in",
        "catalog": "App catalog",
        "search": "Search",
        "need": "follow my diabetes",
        "funding": "Paid by subscription",
        "order": "alphabetical order",
        "mine": "one of your sources",
        "connect": "Connect this app",
        "charter": "article by article",
        "approved": "This app follows the charter.",
    },
}


def shoot(page: Any, name: str) -> None:
    """The page at desktop and phone width, into docs/screenshots/; at 360 px nothing may
    stick out sideways (WCAG 1.4.10, reflow)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for width in (1280, 360):
        page.set_viewport_size({"width": width, "height": 900})
        if width == 360:
            overflow = page.evaluate("() => document.documentElement.scrollWidth")
            assert overflow <= 360, f"{page.url} is {overflow} px wide on a 360 px screen"
        page.screenshot(path=str(SCREENSHOTS / f"{name}-{width}.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 900})


def check_page(page: Any, axe: str, language: str) -> None:
    assert page.locator("html").get_attribute("lang") == language
    assert_accessible(page, axe)
    text = page.locator("main").inner_text()
    assert not JARGON.search(text), f"{page.url}: {JARGON.search(text)}"


def log_in(page: Any, broker: Broker, axe: str, language: str, shots: bool) -> None:
    page.goto(f"{broker.url}/login?next=/catalog")
    check_page(page, axe, language)
    if shots:
        shoot(page, f"login-{language}")
    page.get_by_label(re.compile("e-mail|adresse", re.IGNORECASE)).first.fill(GAELLE[0])
    page.locator("#password").fill(GAELLE[1])
    with page.expect_navigation():
        page.get_by_role("button", name=TEXTS[language]["login"], exact=True).click()
    assert page.url == f"{broker.url}/catalog", page.locator("main").inner_text()


@pytest.mark.parametrize("language", ["fr", "en"])
def test_a_patient_browses_the_catalog_and_reads_an_app_page(
    broker: Broker, axe: str, new_page: Any, language: str
) -> None:
    words = TEXTS[language]
    page = new_page(language)
    log_in(page, broker, axe, language, shots=True)
    check_page(page, axe, language)
    assert words["order"] in page.locator("main").inner_text()
    shoot(page, f"catalog-{language}")

    # A need in the patient's words, and a way of paying: the demo app answers both.
    page.get_by_label(re.compile("cherchez|looking for")).fill(words["need"])
    page.locator("#funding").select_option(label=words["funding"])
    page.get_by_role("button", name=words["search"], exact=True).click()
    page.wait_for_url(re.compile(r"/catalog\?"))
    assert "funding=subscription" in page.url
    results = page.locator("ul.apps > li")
    assert results.count() == 1
    assert "Suivi Glycémie" in results.first.inner_text()
    # Gaëlle is linked to the demo laboratory: the catalog says so.
    assert f"Laboratoire Démo ({words['mine']})" in results.first.inner_text()
    check_page(page, axe, language)
    shoot(page, f"catalog-filtered-{language}")

    # A way of paying the app does not use: nothing, said plainly.
    page.locator("#funding").select_option(value="public")
    page.get_by_role("button", name=words["search"], exact=True).click()
    page.wait_for_url(re.compile("funding=public"))
    assert page.locator("ul.apps > li").count() == 0

    # The app's own page.
    page.goto(f"{broker.url}/catalog?funding=subscription&holder=labo-demo")
    page.get_by_role("link", name="Suivi Glycémie").click()
    page.wait_for_url(re.compile(r"/catalog/app_"))
    main = page.locator("main").inner_text()
    for expected in (words["charter"], words["approved"], "Glycémie SAS", "HDS-2025-0042", words["mine"]):
        assert expected in main, expected
    connect = page.get_by_role("link", name=re.compile(words["connect"]))
    assert connect.get_attribute("href") == "http://127.0.0.1:8001"  # the demo app's client_uri
    check_page(page, axe, language)
    shoot(page, f"app-{language}")

    # The patient's own pages, reached from the navigation, pass the same checks.
    for path, name in (("/my/consents", "my-consents"), ("/my/sources", "my-sources")):
        page.goto(f"{broker.url}{path}")
        check_page(page, axe, language)
        shoot(page, f"{name}-{language}")
    # The catalog is one link away from every page.
    page.get_by_role("link", name=words["catalog"], exact=True).click()
    page.wait_for_url(f"{broker.url}/catalog")


def focus_by_tab(page: Any, selector: str, limit: int = 60) -> None:
    """Press Tab until ``selector`` has the focus; the focus must be visible on the way."""
    for _ in range(limit):
        page.keyboard.press("Tab")
        if page.evaluate("(s) => document.activeElement && document.activeElement.matches(s)", selector):
            outline = page.evaluate(
                "() => { const s = getComputedStyle(document.activeElement);"
                " return [s.outlineStyle, s.outlineWidth]; }"
            )
            assert outline[0] != "none" and outline[1] != "0px", f"{selector}: focus not visible {outline}"
            return
    raise AssertionError(f"{selector} cannot be reached with Tab")


@pytest.mark.parametrize("language", ["fr", "en"])
def test_the_catalog_works_with_the_keyboard_alone(broker: Broker, new_page: Any, language: str) -> None:
    page = new_page(language)
    page.goto(f"{broker.url}/catalog")
    focus_by_tab(page, "#q")
    page.keyboard.type(TEXTS[language]["need"])
    focus_by_tab(page, "#funding")
    page.keyboard.press("ArrowDown")  # the first choice after "any"
    focus_by_tab(page, "form.catalog-filters button[type=submit]")
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"/catalog\?"))
    assert "funding=public" in page.url  # "Gratuit, service public" comes first
    page.goto(f"{broker.url}/catalog?q=" + TEXTS[language]["need"].replace(" ", "+"))
    focus_by_tab(page, "ul.apps a")
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"/catalog/app_"))
    focus_by_tab(page, "a.button")  # "connect this app": reachable, and it leads to the app


XSS = '<img src=x onerror="window.hacked=1"><script>window.hacked=2</script>'


def shown_as_text(page: Any) -> None:
    assert page.evaluate("() => window.hacked") is None
    assert page.locator("main img, main script").count() == 0
    assert XSS in page.locator("main").inner_text(), page.url


def test_text_from_an_app_manifest_is_shown_as_text(broker: Broker, axe: str, new_page: Any) -> None:
    """SECURITY W9: whatever an app writes in its registration is escaped on every page: the
    catalog, the consent screen, «Mes accords», the revoke page and the history."""
    body = copy.deepcopy(DEMO_APP)
    body["client_name"] = "Zèbre " + XSS
    body["client_uri"] = "http://127.0.0.1:9/home"
    body["redirect_uris"] = ["http://127.0.0.1:9/callback"]
    manifest = body["charter_manifest"]
    manifest["publisher"]["legal_name"] = "Éditeur " + XSS
    manifest["publisher"]["address"] = XSS
    manifest["business_model"]["description"] = "Abonnement " + XSS
    manifest["business_model"]["funding_sources"][0]["name"] = XSS
    for purpose in manifest["purposes"]:
        purpose["description"] = "Suivre " + XSS
    for request in manifest["data_requests"]:
        request["justification"] = "Parce que " + XSS
    manifest["retention"]["description"] = XSS
    manifest["hosting"]["provider"] = "Hôte " + XSS
    answer = httpx.post(f"{broker.url}/register", json=body, timeout=10)
    assert answer.status_code == 201, answer.text
    assert answer.json()["status"] == "approved", answer.json()["charter_verdict"]
    client_id = answer.json()["client_id"]

    page = new_page("fr")
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    for path in ("/catalog?q=zebre", f"/catalog/{client_id}"):
        response = page.goto(f"{broker.url}{path}")
        assert response is not None and response.status == 200
        shown_as_text(page)

    # Gaëlle is asked for her consent by that app, gives it, and looks at her pages.
    log_in(page, broker, axe, "fr", shots=False)
    page.route("http://127.0.0.1:9/**", lambda route: route.fulfill(status=200, body="app"))
    page.goto(
        f"{broker.url}/authorize?response_type=code&client_id={client_id}"
        "&redirect_uri=http%3A%2F%2F127.0.0.1%3A9%2Fcallback&state=s1"
        "&code_challenge=E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM&code_challenge_method=S256"
    )
    page.wait_for_url(re.compile("/consent/"))
    shown_as_text(page)
    page.get_by_role("button", name="J'accepte", exact=True).click()
    page.wait_for_url(re.compile(r"127\.0\.0\.1:9/callback\?code="))
    page.goto(f"{broker.url}/my/consents")
    shown_as_text(page)
    page.locator("a[href$='/revoke']", has_text="Zèbre").click()
    page.wait_for_url(re.compile("/revoke$"))
    shown_as_text(page)
    page.locator("form[action$='/revoke'] button").click()
    page.wait_for_url(re.compile("done=revoked"))
    page.goto(f"{broker.url}/my/history")
    shown_as_text(page)
    assert not dialogs


def test_catalog_pages_cannot_be_framed_and_run_no_foreign_script(broker: Broker) -> None:
    app = httpx.get(f"{broker.url}/api/catalog/apps", timeout=10).json()["items"][0]["client_id"]
    for path in ("/catalog", f"/catalog/{app}", "/catalog/app_unknown"):
        answer = httpx.get(f"{broker.url}{path}", timeout=10)
        assert answer.status_code == (404 if path.endswith("unknown") else 200)
        assert answer.headers["x-frame-options"] == "DENY"
        policy = answer.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in policy
        assert re.search(r"script-src 'self' 'nonce-[\w-]+';", policy)
        assert "unsafe-inline" not in policy
        assert "<script" not in answer.text  # no JavaScript is needed on these pages


def test_unsafe_links_from_a_manifest_are_shown_as_text() -> None:
    assert link_target("javascript:alert(1)") is None
    assert link_target(" JavaScript:alert(1)") is None
    assert link_target("data:text/html,x") is None
    assert link_target("https://app.example/export") == "https://app.example/export"
    assert link_target("mailto:dpo@app.example") == "mailto:dpo@app.example"
    assert link_target(None) is None


def test_small_words_do_not_count_in_a_need() -> None:
    assert need_words("Suivre MON diabète") == ["suivre", "diabete"]
