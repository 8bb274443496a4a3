"""End to end: the broker, both demo holders and the demo app as real processes on loopback.

The patient's browser (httpx submitting the pages' forms) signs up at the broker, links both
holders through their own log-in pages, connects the app, consents, and sees the glucose
chart the app drew from what the laboratory sent it directly. Then:

- revocation reaches the holder within one second with the push stream, and within the
  status list's cache lifetime without it;
- receipts survive a broker outage: released while the broker is down, each is in the audit
  log once after it comes back;
- THE ONE RULE: the broker's database (every table), its log and every byte of its HTTP
  traffic (recorded by a proxy in front of it) contain none of the values, codes or patient
  names the holders served.

Runs on SQLite, and on PostgreSQL when BROKER_TEST_DATABASE_URL is set.
"""

from __future__ import annotations

import copy
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import PG_ENV, backends
from tests.e2e.browser import Browser
from tests.e2e.stack import Database, Stack, find_served, served, where

pytestmark = pytest.mark.e2e

STATUS_LIST_TTL = 30.0  # the broker's status list cache lifetime (broker/consent/routes.py)
PATIENT = {
    "email": "gaelle@e2e.example",
    "display_name": "Gaëlle Martin",
    "password": "une-phrase-de-passe-e2e",
}


@pytest.fixture(params=backends())
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    import os

    database = (
        Database.postgresql(os.environ[PG_ENV])
        if request.param == "postgresql"
        else Database.sqlite(tmp_path)
    )
    running = Stack(tmp_path, database)
    try:
        running.up()
        yield running
    finally:
        running.down()
        database.drop()


def sign_up_and_link(browser: Browser, stack: Stack) -> None:
    browser.get(f"{stack.issuer}/signup")
    page = browser.submit("/signup", **{k: PATIENT[k] for k in ("email", "display_name", "password")})
    assert page.status_code == 200, page.text[:2000]
    if "/logout" not in page.text:  # not logged in by the sign-up itself
        browser.get(f"{stack.issuer}/login")
        page = browser.submit("/login", email=PATIENT["email"], password=PATIENT["password"])
        assert "/logout" in page.text, page.text[:3000]
    for holder, username, password in (
        ("labo-demo", "gaelle.martin", "labo-gaelle-2026"),
        ("assurance-demo", "gaelle.martin", "assurance-gaelle-2026"),
    ):
        browser.get(f"{stack.issuer}/my/sources")
        page = browser.submit(f"/my/sources/{holder}/link")
        assert page.url.port == stack.ports[holder], "the link step goes through the holder's own page"
        page = browser.submit("/link", username=username, password=password)
        assert page.url.path == "/my/sources", page.text[:2000]
        assert f"/my/sources/{holder}/unlink" in page.text


def connect_app(browser: Browser, stack: Stack) -> str:
    """«Connecter mes données» → the broker's consent screen → accept → back at the app."""
    browser.get(stack.url("app"))
    page = browser.submit("/connect")
    assert "/consent/" in page.url.path, page.text[:2000]
    assert "Suivi Glycémie" in page.text and "Glycémie SAS" in page.text  # who asks, before any choice
    page = browser.submit("/consent/", decision="accept")
    assert page.url.port == stack.ports["app"] and page.status_code == 200, page.text[:3000]
    return page.text


def revoke(browser: Browser, stack: Stack) -> float:
    listing = browser.get(f"{stack.issuer}/my/consents")
    confirm = re.search(r'href="(/my/consents/[^"/]+/revoke)"', listing.text)
    assert confirm, listing.text[:2000]
    browser.get(f"{stack.issuer}{confirm.group(1)}")  # the page that says what will happen
    page = browser.submit("/revoke")
    assert page.status_code == 200, page.text[:2000]
    return time.monotonic()


def wait_refused(
    browser: Browser, stack: Stack, since: float, limit: float, every: float
) -> tuple[float, str]:
    """Reload the app's page until it says «Accès retiré»; the delay since ``since``."""
    while True:
        page = browser.get(stack.url("app"))
        if "acces-retire" in page.text:
            return time.monotonic() - since, page.text
        assert time.monotonic() - since < limit, f"still served after {limit} s:\n{page.text[:1500]}"
        time.sleep(every)


def expected_glucose() -> list[str]:
    from examples.lab_holder import data

    record = data.PATIENTS[0].record_id  # Gaëlle's record at the laboratory
    return [f"{r['valueQuantity']['value']} mmol/L" for r in data.search(record, "14771-0")]


def test_the_demo_app_manifest_is_the_one_the_demo_seeds() -> None:
    from broker.demo import DEMO_APP_SEEDED

    manifest = json.loads((Path(__file__).parents[2] / "examples/diabetes_app/manifest.json").read_text())
    seeded = copy.deepcopy(DEMO_APP_SEEDED)
    for name in ("redirect_uris", "client_uri"):  # the app puts its own address in these
        manifest.pop(name), seeded.pop(name)
    assert manifest == seeded


def test_demo_flow_revocation_outage_and_the_one_rule(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    browser = Browser()
    sign_up_and_link(browser, stack)

    # -- consent, then the chart, drawn from what the laboratory sent the app directly ------
    page = connect_app(browser, stack)
    assert "<svg" in page and "Votre glycémie à jeun" in page, page[:3000]
    for value in expected_glucose():
        assert value in page
    assert "Le coût de votre suivi" in page  # the insurer's reimbursements, a second holder
    assert find_served(page), "the app's page shows the served values: the search below can find them"

    # -- revocation with the push stream: the holder refuses within one second -------------
    browser.get(stack.url("app"))  # the app now holds a valid token for each holder
    revoked_at = revoke(browser, stack)
    push_delay, page = wait_refused(browser, stack, revoked_at, limit=5.0, every=0.05)
    assert "data-refused-by='holder'" in page, page[:2000]
    assert push_delay < 1.0, f"push stream: refused after {push_delay:.2f} s"

    # -- without the push stream: within the status list's cache lifetime -----------------
    stack.restart_holders(push=False)
    page = connect_app(browser, stack)
    assert "<svg" in page
    revoked_at = revoke(browser, stack)
    list_delay, page = wait_refused(browser, stack, revoked_at, limit=STATUS_LIST_TTL + 5, every=0.5)
    assert "data-refused-by='holder'" in page, page[:2000]
    assert list_delay <= STATUS_LIST_TTL + 2, f"status list only: refused after {list_delay:.2f} s"

    # -- receipts survive a broker outage ---------------------------------------------------
    page = connect_app(browser, stack)  # a fresh consent; tokens and status list now cached
    assert "<svg" in page
    stack.stop("broker")
    page = browser.get(stack.url("app")).text  # the holders release while the broker is down
    assert "<svg" in page, "the holders serve a valid token from their caches while the broker is down"
    queued_during_outage = stack.receipts("queued")
    assert len(queued_during_outage) >= 2, "one receipt per holder waits on disk"
    stack.start_broker()
    deadline = time.monotonic() + 90
    while stack.receipts("queued"):
        assert time.monotonic() < deadline, f"receipts still queued: {stack.receipts('queued')}"
        time.sleep(0.5)
    delivered = stack.receipts("delivered")
    recorded = stack.database.column("SELECT holder_id || ' ' || jti FROM audit_receipts")
    assert set(queued_during_outage) <= set(recorded)
    assert sorted(recorded) == sorted(delivered), "every release is in the audit log, once"
    released = []
    cursor = None
    while True:  # the patient's own timeline, page by page
        params = {"limit": "200", **({"cursor": cursor} if cursor else {})}
        answer = browser.http.get(f"{stack.issuer}/api/me/audit/events", params=params).json()
        released += [e for e in answer["items"] if e["tag"] == "holder:data:released"]
        if not (cursor := answer.get("next_cursor")):
            break
    assert len(released) == len(recorded), "the patient sees every release in their timeline, once"

    # -- THE ONE RULE ---------------------------------------------------------------------
    stack.down()
    needles = served()
    dump, log = stack.database.dump(), stack.log("broker")
    in_database = find_served(dump, needles)
    in_log = find_served(log, needles)
    assert stack.proxy is not None
    capture = stack.proxy.text()
    in_traffic = find_served(capture, needles)
    assert "/token" in capture and "/receipts" in capture and "/consent/" in capture  # the capture is real
    assert "content-encoding" not in capture.lower(), "compressed answers would hide their content"
    assert in_database == [], f"health data in the broker's database:\n{where(dump, in_database)}"
    assert in_log == [], f"health data in the broker's log:\n{where(log, in_log)}"
    assert in_traffic == [], f"health data in the broker's traffic:\n{where(capture, in_traffic)}"
    with capsys.disabled():
        print(
            f"\n[{stack.database.url.split(':')[0]}] revocation reached the holder after "
            f"{push_delay * 1000:.0f} ms (push stream), {list_delay:.1f} s (status list only); "
            f"{len(recorded)} receipts recorded once each, {len(queued_during_outage)} of them queued "
            f"during the outage; searched {sum(len(v) for v in needles.values())} served strings in "
            f"{len(capture) // 1024} KiB of traffic: none found"
        )
