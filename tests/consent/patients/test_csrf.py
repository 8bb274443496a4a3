"""CSRF: every state-changing form refuses a missing, wrong or cross-site submission."""

from __future__ import annotations

from typing import Any

import pytest
from litestar.testing import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from broker.app import create_app
from broker.consent.patients.models import Patient, PatientSession
from broker.settings import Settings
from tests.consent.patients.browser import PASSWORD, form_token, log_in, page_token, sign_up

SIGN_UP = {"email": "eve@example.org", "display_name": "Eve", "password": PASSWORD, "next": ""}


def _count(db: sessionmaker[Session], model: type[Any]) -> int:
    with db() as session:
        return len(list(session.scalars(select(model))))


@pytest.mark.parametrize(
    ("token", "headers"),
    [
        (None, {}),
        ("", {}),
        ("0" * 64, {}),
        ("valid", {"Origin": "https://evil.example"}),
        ("valid", {"Origin": "null"}),
        ("valid", {"Sec-Fetch-Site": "cross-site"}),
        ("valid", {"Sec-Fetch-Site": "same-site"}),
    ],
)
def test_sign_up_form_refuses_forged_submissions(
    client: Any, db: sessionmaker[Session], token: str | None, headers: dict[str, str]
) -> None:
    real = page_token(client, "/signup")
    data = dict(SIGN_UP)
    if token is not None:
        data["csrf_token"] = real if token == "valid" else token
    response = client.post("/signup", data=data, headers=headers, follow_redirects=False)
    assert response.status_code == 403
    assert "text/html" in response.headers["content-type"]
    assert "Rien n'a été changé" in response.text
    assert response.headers["x-frame-options"] == "DENY"
    assert _count(db, Patient) == 0


def test_same_origin_submissions_are_accepted(client: Any, db: sessionmaker[Session]) -> None:
    token = page_token(client, "/signup")
    headers = {"Origin": "http://127.0.0.1:8000", "Sec-Fetch-Site": "same-origin"}
    response = client.post(
        "/signup", data={**SIGN_UP, "csrf_token": token}, headers=headers, follow_redirects=False
    )
    assert response.status_code == 303
    assert _count(db, Patient) == 1


def test_a_token_from_another_browser_is_refused(settings: Settings, db: sessionmaker[Session]) -> None:
    app = create_app(settings)
    with TestClient(app=app) as attacker, TestClient(app=app) as victim:
        stolen = page_token(attacker, "/signup")  # valid, but bound to the attacker's cookie
        page_token(victim, "/signup")
        response = victim.post("/signup", data={**SIGN_UP, "csrf_token": stolen}, follow_redirects=False)
        assert response.status_code == 403
    assert _count(db, Patient) == 0


def test_login_form_refuses_a_missing_token(client: Any, db: sessionmaker[Session]) -> None:
    sign_up(client)
    page_token(client)
    response = client.post(
        "/login", data={"email": "camille@example.org", "password": PASSWORD}, follow_redirects=False
    )
    assert response.status_code == 403
    assert _count(db, PatientSession) == 0


def test_logout_form_refuses_forged_submissions(client: Any, db: sessionmaker[Session]) -> None:
    sign_up(client)
    log_in(client)
    token = form_token(client.get("/account").text)
    for data, headers in (
        ({}, {}),
        ({"csrf_token": "f" * 64}, {}),
        ({"csrf_token": token}, {"Sec-Fetch-Site": "cross-site"}),
        ({"csrf_token": token}, {"Origin": "https://evil.example"}),
    ):
        response = client.post("/logout", data=data, headers=headers, follow_redirects=False)
        assert response.status_code == 403
    assert client.get("/account").status_code == 200  # still logged in: nothing changed
    with db() as session:
        assert [row.revoked_at for row in session.scalars(select(PatientSession))] == [None]


def test_the_session_token_changes_with_the_session(client: Any) -> None:
    sign_up(client)
    before = page_token(client)
    log_in(client)
    after = form_token(client.get("/account").text)
    assert before != after
    # The token of the pre-session form no longer works once logged in.
    response = client.post("/logout", data={"csrf_token": before}, follow_redirects=False)
    assert response.status_code == 403


def test_chromium_s_null_origin_is_accepted_from_this_broker_s_own_page(
    client: Any, db: sessionmaker[Session]
) -> None:
    """Chromium posts "Origin: null" from a page with a no-referrer policy; Sec-Fetch-Site,
    which no page can set, says the form is the broker's own."""
    token = page_token(client, "/signup")
    headers = {"Origin": "null", "Sec-Fetch-Site": "same-origin"}
    response = client.post(
        "/signup", data={**SIGN_UP, "csrf_token": token}, headers=headers, follow_redirects=False
    )
    assert response.status_code == 303
    assert _count(db, Patient) == 1
