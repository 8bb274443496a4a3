"""«Télécharger mes données» end to end (issue 10): the broker, both demo holders and the demo
app as real processes on loopback (the broker behind a recording proxy), Debian's Chromium
driven by Playwright.

- Without JavaScript: the patient picks some categories, submits the page, then each holder's
  form; each file is a FHIR R4 Bundle (validated with fhir.resources) holding exactly the
  chosen categories; the printable summary opens.
- With JavaScript: the page fetches from both holders and assembles one .zip archive.
- Refusals: a replayed token, a token at another holder, after its lifetime, at the FHIR API,
  an app token at the download endpoint, an app asking for the download client or a
  "download" authorization detail.
- The timeline records each download through the holders' receipts.
- THE ONE RULE: the broker's database (every table), its log and its HTTP traffic contain
  none of the downloaded values.

Runs on SQLite, and on PostgreSQL when BROKER_TEST_DATABASE_URL is set.
"""

from __future__ import annotations

import io
import json
import time
import zipfile
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest

from tests.browser.test_catalog_pages import check_page, shoot
from tests.consent.test_oauth_flow import hidden
from tests.e2e.browser import Browser, forms
from tests.e2e.stack import Stack, find_served, served, where
from tests.e2e.test_demo_flow import sign_up_and_link, stack

__all__ = ["stack"]  # the fixture (real processes, on each backend), re-exported for pytest

pytestmark = pytest.mark.e2e

LAB, INSURER = "labo-demo", "assurance-demo"
DOWNLOAD_CLIENT_ID = "broker-download"


def issue(browser: Browser, stack: Stack, items: list[str], file_format: str = "json") -> dict[str, str]:
    """Submit /my/download as a browser would; the one-time token handed over per holder."""
    page = browser.get(f"{stack.issuer}/my/download")
    assert page.status_code == 200, page.text[:2000]
    body = [("csrf_token", hidden(page.text, "csrf_token")), *[("item", i) for i in items]]
    body.append(("format", file_format))
    answer = browser.http.post(
        f"{stack.issuer}/my/download",
        content=urlencode(body),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert answer.status_code == 200, answer.text[:2000]
    tokens = {}
    for form in forms(answer.text):
        if form.action.endswith("/download") and not form.action.startswith("/"):
            fields = dict(form.fields)
            holder = LAB if urlsplit(form.action).port == stack.ports[LAB] else INSURER
            assert form.action == f"{stack.url(holder)}/download"
            tokens[holder] = fields["download_token"]
    return tokens


def post_token(stack: Stack, holder: str, token: str, file_format: str = "json") -> httpx.Response:
    return httpx.post(f"{stack.url(holder)}/download", data={"download_token": token, "format": file_format})


def validate_bundle(raw: bytes, expected_types: set[str]) -> list[dict[str, Any]]:
    from fhir.resources.bundle import Bundle

    document = json.loads(raw)
    Bundle.model_validate(document)  # a valid FHIR R4 Bundle, every resource in it too
    assert document["type"] in ("collection", "searchset")
    resources = [e["resource"] for e in document["entry"]]
    assert resources, "an empty bundle would prove nothing"
    assert {r["resourceType"] for r in resources} == expected_types
    return resources


def expected(holder: str, categories: set[str]) -> list[dict[str, Any]]:
    if holder == LAB:
        from examples.lab_holder import data as lab
        from examples.lab_holder.server import download

        return download(lab.PATIENTS[0].record_id, frozenset(categories))
    from examples.insurer_holder import data as insurer
    from examples.insurer_holder.server import download as insurer_download

    return insurer_download(insurer.MEMBERS[0].record_id, frozenset(categories))


def to_playwright(browser: Browser, context: Any, stack: Stack) -> None:
    """The patient's broker session, in the Playwright context."""
    context.add_cookies(
        [{"name": c.name, "value": c.value or "", "url": stack.issuer} for c in browser.http.cookies.jar]
    )


def refusals(stack: Stack, browser: Browser) -> None:
    from broker_sdk.download import DownloadVerifier
    from broker_sdk.errors import TokenExpired

    # Replayed: the first use serves the file, the second is refused.
    token = issue(browser, stack, [f"{LAB}|lab_results"])[LAB]
    assert post_token(stack, LAB, token).status_code == 200
    replayed = post_token(stack, LAB, token)
    assert replayed.status_code == 401 and "déjà servi" in replayed.text

    # At another holder: meant for the laboratory, refused by the insurer.
    token = issue(browser, stack, [f"{LAB}|lab_results"])[LAB]
    assert post_token(stack, INSURER, token).status_code == 401
    # At the FHIR API as a Bearer token, instead of the download endpoint.
    api = httpx.get(f"{stack.url(LAB)}/fhir/Observation", headers={"Authorization": f"Bearer {token}"})
    assert api.status_code == 401 and "invalid_token" in api.headers["www-authenticate"]
    # In a URL: refused before anything else.
    in_url = httpx.post(f"{stack.url(LAB)}/download?download_token={token}", data={"format": "json"})
    assert in_url.status_code == 401
    # After its lifetime: the same verifier a holder runs, its clock 200 s ahead (120 s + leeway).
    with DownloadVerifier(
        stack.issuer, f"{stack.url(LAB)}/fhir", holder_id=LAB, clock=lambda: time.time() + 200
    ) as late:
        with pytest.raises(TokenExpired):
            late.verify(token)
    # Not used at all by the refusals above: it still works once.
    assert post_token(stack, LAB, token).status_code == 200

    # An app's access token (at+jwt), even signed by the broker, is refused at the endpoint;
    # so is a download+jwt naming an app instead of the broker's download client.
    from broker.keys import KeyStore

    keys = KeyStore(stack.base / "var" / "keys")
    keys.load()
    now = int(time.time())
    claims = json.loads(_payload(token))
    app_claims = {**claims, "client_id": "app_someone", "iat": now, "nbf": now, "exp": now + 60}
    for typ, body in (("at+jwt", {**claims, "jti": "j1"}), ("download+jwt", {**app_claims, "jti": "j2"})):
        assert post_token(stack, LAB, keys.sign(body, typ=typ)).status_code == 401

    # An app cannot obtain one: the download client is no client of the token endpoint, the
    # authorization endpoint does not know it, and a "download" detail is refused.
    answer = httpx.post(
        f"{stack.issuer}/token",
        data={"grant_type": "authorization_code", "client_id": DOWNLOAD_CLIENT_ID, "code": "x"},
    )
    assert answer.status_code == 401 and answer.json()["error"] == "invalid_client"
    challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    page = browser.http.get(
        f"{stack.issuer}/authorize",
        params={
            "response_type": "code",
            "client_id": DOWNLOAD_CLIENT_ID,
            "redirect_uri": f"{stack.issuer}/my/download",
            "state": "s",
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        },
    )
    assert page.status_code == 400
    client_id = stack.database.scalar("SELECT client_id FROM apps")
    metadata = stack.database.scalar("SELECT client_metadata FROM apps")
    redirect_uri = (json.loads(metadata) if isinstance(metadata, str) else metadata)["redirect_uris"][0]
    for extra in (
        {"authorization_details": json.dumps([{"type": "download", "categories": ["lab_results"]}])},
        {"scope": "download"},
    ):
        refused = browser.http.get(
            f"{stack.issuer}/authorize",
            params={
                "response_type": "code",
                "client_id": client_id,
                "redirect_uri": redirect_uri,
                "state": "s",
                "code_challenge": challenge,
                "code_challenge_method": "S256",
                **extra,
            },
            follow_redirects=False,
        )
        assert refused.status_code == 303, refused.text[:1000]
        query = parse_qs(urlsplit(refused.headers["location"]).query)
        assert query["error"][0] in ("invalid_authorization_details", "invalid_scope")
        assert "code" not in query


def _payload(token: str) -> bytes:
    import base64

    part = token.split(".")[1]
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def test_download_without_and_with_javascript_and_the_one_rule(
    stack: Stack, chromium: Any, axe: str, capsys: pytest.CaptureFixture[str]
) -> None:
    browser = Browser()
    sign_up_and_link(browser, stack)

    # -- without JavaScript: the forms only ---------------------------------------------------
    context = chromium.new_context(java_script_enabled=False, locale="fr-FR", accept_downloads=True)
    context.set_default_timeout(15000)
    to_playwright(browser, context, stack)
    page = context.new_page()
    page.goto(f"{stack.issuer}/my/download")
    assert page.locator("h1").inner_text() == "Télécharger mes données"
    page.uncheck(f"#item-{LAB}-identity")  # the patient keeps lab results only at the laboratory
    page.click("button[type=submit]")
    assert page.locator("#archive").is_hidden()  # no script: the archive offer stays hidden
    chosen = {LAB: {"lab_results"}, INSURER: {"reimbursements"}}
    kinds = {LAB: {"Observation"}, INSURER: {"ExplanationOfBenefit"}}
    for holder in (LAB, INSURER):
        with page.expect_download() as info:
            page.click(f"form[data-holder={holder}] button")
        raw = Path(info.value.path()).read_bytes()
        resources = validate_bundle(raw, kinds[holder])
        assert resources == expected(holder, chosen[holder])

    # -- the printable summary opens (a new tab, the broker's page stays) -------------------
    page.goto(f"{stack.issuer}/my/download")
    page.uncheck(f"#item-{LAB}-identity")
    page.uncheck(f"#item-{INSURER}-reimbursements")
    page.check("#format-html")
    page.click("button[type=submit]")
    with context.expect_page() as opened:
        page.click(f"form[data-holder={LAB}] button")
    summary = opened.value
    summary.wait_for_load_state()
    assert summary.url == f"{stack.url(LAB)}/download"
    rows = summary.locator("tbody tr")
    assert rows.count() == len(expected(LAB, {"lab_results"}))
    text = summary.locator("tbody").inner_text()
    for observation in expected(LAB, {"lab_results"}):
        quantity = observation["valueQuantity"]
        assert f"{quantity['value']} {quantity['unit']}" in text
    context.close()

    # -- with JavaScript: both holders fetched by the page, one archive ---------------------
    context = chromium.new_context(locale="fr-FR", accept_downloads=True)
    context.set_default_timeout(15000)
    to_playwright(browser, context, stack)
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda message: problems.append(message.text))
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.goto(f"{stack.issuer}/my/download")
    check_page(page, axe, "fr")  # axe-core, and no jargon
    shoot(page, "download-fr")
    page.click("button[type=submit]")
    page.wait_for_selector("#archive", state="visible", timeout=5000)
    check_page(page, axe, "fr")
    shoot(page, "download-ready-fr")
    with page.expect_download() as info:
        page.click("#archive-start")
    assert problems == [], problems
    archive = zipfile.ZipFile(io.BytesIO(Path(info.value.path()).read_bytes()))
    assert archive.testzip() is None
    assert sorted(archive.namelist()) == [f"{INSURER}.json", f"{LAB}.json"]
    everything = {LAB: {"lab_results", "identity"}, INSURER: {"reimbursements"}}
    for holder, kinds_here in ((LAB, {"Observation", "Patient"}), (INSURER, {"ExplanationOfBenefit"})):
        resources = validate_bundle(archive.read(f"{holder}.json"), kinds_here)
        assert resources == expected(holder, everything[holder])
    context.close()

    # -- in English too, in plain words ------------------------------------------------------
    context = chromium.new_context(locale="en-GB", extra_http_headers={"Accept-Language": "en"})
    to_playwright(browser, context, stack)
    page = context.new_page()
    page.goto(f"{stack.issuer}/my/download")
    assert page.locator("h1").inner_text() == "Download my data"
    assert "how to keep it safe" in page.locator("main").inner_text().lower()
    check_page(page, axe, "en")
    shoot(page, "download-en")
    context.close()

    refusals(stack, browser)

    # -- the timeline: each download, through the holders' receipts ------------------------
    deadline = time.monotonic() + 30
    while stack.receipts("queued"):
        assert time.monotonic() < deadline, f"receipts still queued: {stack.receipts('queued')}"
        time.sleep(0.3)
    assert stack.receipts("rejected") == []
    events = browser.http.get(f"{stack.issuer}/api/me/audit/events", params={"limit": "200"}).json()["items"]
    downloads = [
        e for e in events if e["tag"] == "holder:data:released" and e["details"]["app"] == DOWNLOAD_CLIENT_ID
    ]
    # no JS: lab + insurer; summary: lab; JS: lab + insurer; refusals: two single uses at the lab.
    assert len(downloads) == 7, events
    assert all(not e["details"]["flagged"] for e in downloads)
    seen = sorted((e["details"]["holder"], tuple(e["details"]["categories"])) for e in downloads)
    assert (LAB, ("identity", "lab_results")) in seen and (LAB, ("lab_results",)) in seen
    used = stack.database.scalar("SELECT count(*) FROM download_consents WHERE status = 'used'")
    assert used == 7
    history = browser.get(f"{stack.issuer}/my/history").text
    assert "Vous avez téléchargé" in history

    # -- THE ONE RULE ---------------------------------------------------------------------
    stack.down()
    needles = served()
    dump, log = stack.database.dump(), stack.log("broker")
    assert stack.proxy is not None
    capture = stack.proxy.text()
    assert "/my/download" in capture and "/receipts" in capture  # the capture is real
    for name, haystack in (("database", dump), ("log", log), ("traffic", capture)):
        found = find_served(haystack, needles)
        assert found == [], f"health data in the broker's {name}:\n{where(haystack, found)}"
    with capsys.disabled():
        print(
            f"\n[{stack.database.url.split(':')[0]}] {len(downloads)} downloads recorded; searched "
            f"{sum(len(v) for v in needles.values())} served strings in {len(capture) // 1024} KiB of "
            "broker traffic, its database and log: none found"
        )
