"""«Télécharger mes données» at the broker (issue 10): the page, the one-time download
consent and its token, the holder's receipt that ends it, and bad forms that change nothing."""

from __future__ import annotations

import base64
import json
import re
import time
from typing import Any
from urllib.parse import urlencode

import pytest
from sqlalchemy import func, select, update

from broker.audit.models import AuditEvent
from broker.catalog.models import Holder
from broker.consent.download import DOWNLOAD_CLIENT_ID, DownloadConsent
from broker.consent.models import StatusEntry
from broker.consent.service import INVALID, VALID
from tests.audit.conftest import World
from tests.consent.test_oauth_flow import hidden
from tests.e2e.browser import forms

JWT = {"Content-Type": "application/jwt"}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def offer_downloads(world: World, *holders: str) -> None:
    with world.factory.begin() as session:
        for holder in holders:
            session.execute(
                update(Holder)
                .where(Holder.identifier == holder)
                .values(download_endpoint=f"https://{holder}.example/download")
            )


def submit(client: Any, items: list[str], file_format: str = "json", csrf: bool = True) -> Any:
    page = client.get("/my/download")
    assert page.status_code == 200, page.text
    body = [("item", i) for i in items] + [("format", file_format)]
    if csrf:
        body.insert(0, ("csrf_token", hidden(page.text, "csrf_token")))
    return client.post("/my/download", content=urlencode(body), headers=FORM)


def decode(segment: str) -> dict[str, Any]:
    return dict(json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))))


def handed_over(html: str) -> dict[str, str]:
    """holder endpoint → token, from the forms the page hands the browser."""
    found = {}
    for form in forms(html):
        if form.action.startswith("https://"):
            assert form.method == "post"  # the token goes in the body, never in a URL
            found[form.action] = dict(form.fields)["download_token"]
    return found


def count(world: World, statement: Any) -> int:
    with world.factory() as session:
        return int(session.scalar(statement) or 0)


def test_the_page_offers_linked_sources_with_a_download(client: Any, world: World) -> None:
    world.patient("gaelle")
    offer_downloads(world, "labo-test")
    world.log_in(client, "gaelle")
    page = client.get("/my/download")
    assert page.status_code == 200
    assert 'value="labo-test|lab_results"' in page.text
    assert "pharma-test|" not in page.text  # linked, but offers no download
    client.cookies.clear()
    assert client.get("/my/download", follow_redirects=False).status_code in (302, 303)


def test_a_download_is_a_one_time_consent_that_its_receipt_ends(client: Any, world: World) -> None:
    patient = world.patient("gaelle")
    offer_downloads(world, "labo-test", "pharma-test")
    world.log_in(client, "gaelle")
    answer = submit(client, ["labo-test|lab_results", "labo-test|identity", "pharma-test|medications"])
    assert answer.status_code == 200, answer.text
    policy = answer.headers["content-security-policy"]
    assert "connect-src 'self' https://labo-test.example https://pharma-test.example" in policy
    tokens = handed_over(answer.text)
    assert set(tokens) == {"https://labo-test.example/download", "https://pharma-test.example/download"}
    token = tokens["https://labo-test.example/download"]
    header, claims = decode(token.split(".")[0]), decode(token.split(".")[1])
    assert header["typ"] == "download+jwt"
    assert claims["aud"] == "https://labo-test.example/fhir" and claims["client_id"] == DOWNLOAD_CLIENT_ID
    assert claims["exp"] - claims["iat"] == 120
    assert claims["scope"] == "identity lab_results"
    assert claims["authorization_details"][0]["categories"] == ["identity", "lab_results"]
    assert claims["consent_id"].startswith("dl_") and claims["link_handle"]
    with world.factory() as session:
        consent = session.get(DownloadConsent, claims["consent_id"])
        assert consent is not None and consent.status == "active" and consent.patient_id == patient
        assert consent.token_jti == claims["jti"] and consent.categories == ["identity", "lab_results"]
        entry_id = consent.status_entry_id
        assert session.get(StatusEntry, entry_id).status == VALID  # type: ignore[union-attr]
    granted = select(func.count()).select_from(AuditEvent).where(AuditEvent.tag == "patient:download:granted")
    assert count(world, granted) == 2

    # The laboratory's receipt: recorded in the timeline, and the download consent ends.
    receipt = {
        "consent_id": claims["consent_id"],
        "client_id": DOWNLOAD_CLIENT_ID,
        "token_jti": claims["jti"],
        "categories": ["identity", "lab_results"],
        "record_count": 9,
    }
    assert (
        client.post("/receipts", content=world.receipt("gaelle", **receipt), headers=JWT).status_code == 201
    )
    with world.factory() as session:
        consent = session.get(DownloadConsent, claims["consent_id"])
        assert consent is not None and consent.status == "used" and consent.used_at is not None
        assert session.get(StatusEntry, entry_id).status == INVALID  # type: ignore[union-attr]
        event = session.scalars(select(AuditEvent).where(AuditEvent.tag == "holder:data:released")).one()
    assert event.details is not None
    assert event.details["app"] == DOWNLOAD_CLIENT_ID and event.details["record_count"] == 9
    assert event.details["flagged"] is False
    listed = client.get("/my/download").text
    assert "Mes derniers téléchargements" in listed
    assert "téléchargé." in listed and "prêt, pas encore utilisé." in listed  # the insurer's is unused
    history = client.get("/my/history").text
    assert re.search(r"Vous avez téléchargé 9 éléments \([^)]*\) chez labo-test", history), history

    # A second release under the same download, after it ended: recorded and flagged.
    later = world.receipt("gaelle", **receipt, released_at=int(time.time()) + 30)
    assert client.post("/receipts", content=later, headers=JWT).status_code == 201
    with world.factory() as session:
        flagged = session.scalars(
            select(AuditEvent).where(AuditEvent.tag == "holder:data:released").order_by(AuditEvent.id.desc())
        ).first()
    assert flagged is not None and flagged.details is not None and flagged.details["after_consent_ended"]

    # Another holder, or an app's client id, cannot report under this download consent.
    other = world.receipt("gaelle", holder="pharma-test", **receipt)
    assert client.post("/receipts", content=other, headers=JWT).status_code == 403
    as_app = world.receipt("gaelle", **{**receipt, "client_id": world.client_id})
    assert client.post("/receipts", content=as_app, headers=JWT).status_code == 403


@pytest.mark.parametrize(
    ("case", "items", "file_format", "status"),
    [
        ("unknown source", ["nope-test|lab_results"], "json", 400),
        ("source without a download", ["pharma-test|lab_results"], "json", 400),
        ("category not served", ["labo-test|imaging"], "json", 400),
        ("nothing chosen", [], "json", 400),
        ("unknown format", ["labo-test|lab_results"], "pdf", 400),
        ("no CSRF token", ["labo-test|lab_results"], "json", 403),
    ],
)
def test_bad_forms_change_nothing(
    client: Any, world: World, case: str, items: list[str], file_format: str, status: int
) -> None:
    world.patient("gaelle")
    offer_downloads(world, "labo-test")
    world.log_in(client, "gaelle")
    answer = submit(client, items, file_format, csrf=case != "no CSRF token")
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("text/html")  # a readable page
    assert "download_token" not in answer.text
    assert count(world, select(func.count()).select_from(DownloadConsent)) == 0
    granted = select(func.count()).select_from(AuditEvent).where(AuditEvent.tag == "patient:download:granted")
    assert count(world, granted) == 0
