"""Sign-up, log-in, log-out and sessions over HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from litestar.testing import TestClient
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from broker.app import create_app
from broker.consent.patients.models import Patient, PatientSession
from broker.consent.patients.sessions import session_id_hash
from broker.db import utcnow
from broker.settings import Settings
from tests.consent.patients.browser import PASSWORD, form_token, log_in, page_token, session_cookie, sign_up


def _patients(db: sessionmaker[Session]) -> list[Patient]:
    with db() as session:
        return list(session.scalars(select(Patient)))


def _session_row(db: sessionmaker[Session], settings: Settings, session_id: str) -> PatientSession | None:
    with db() as session:
        return session.get(PatientSession, session_id_hash(settings, session_id))


def test_sign_up_then_log_in_reaches_the_account_page(client: Any, db: sessionmaker[Session]) -> None:
    created = sign_up(client, email="Camille@Example.org", display_name="Camille  Durand")
    assert created.status_code == 303
    assert created.headers["location"].startswith("/login?signed_up=1")
    [patient] = _patients(db)
    assert patient.email_key == "camille@example.org"
    assert patient.display_name == "Camille Durand"
    assert patient.password_hash and patient.password_hash.startswith("$argon2id$")
    assert PASSWORD not in patient.password_hash

    response = log_in(client, email="CAMILLE@example.org ")
    assert response.status_code == 303
    assert response.headers["location"] == "/account"
    page = client.get("/account")
    assert page.status_code == 200
    assert "Bonjour Camille Durand" in page.text


@pytest.mark.parametrize(
    ("password", "message"),
    [
        ("courte phrase", "au moins 15 caractères"),
        ("x" * 1025, "trop long"),
        ("azertyuiopqsdfghjklm", "trop courant"),
        ("aaaaaaaaaaaaaaaaaaaa", "trop courant"),
        ("abcdefghijklmnopqrstu", "trop courant"),
        ("camille@example.orgcamille@example.org", "votre adresse e-mail"),
    ],
)
def test_sign_up_refuses_weak_passwords_and_creates_nothing(
    client: Any, db: sessionmaker[Session], password: str, message: str
) -> None:
    response = sign_up(client, password=password)
    assert response.status_code == 400
    assert message in response.text
    assert 'aria-invalid="true"' in response.text
    assert _patients(db) == []


def test_a_long_passphrase_with_any_characters_is_accepted(client: Any, db: sessionmaker[Session]) -> None:
    password = "Ünë phrâse 🌿 de 64 caractères ou plus, sans règle de composition, ok !!"
    assert len(password) >= 64
    assert sign_up(client, password=password).status_code == 303
    assert log_in(client, password=password).status_code == 303


def test_sign_up_answers_the_same_for_a_known_address(client: Any, db: sessionmaker[Session]) -> None:
    first = sign_up(client)
    again = sign_up(client, display_name="Someone else", password="un autre mot de passe bien long")
    assert (first.status_code, first.headers["location"]) == (again.status_code, again.headers["location"])
    [patient] = _patients(db)
    assert patient.display_name == "Camille"  # the existing account is untouched
    assert log_in(client).status_code == 303


def test_unknown_account_and_wrong_password_get_the_same_answer(client: Any, settings: Settings) -> None:
    sign_up(client)
    hashing = client.app.state.password_hashing
    calls: list[str | None] = []
    real = hashing._verify_now

    def counting(stored: str | None, password: str) -> tuple[bool, str | None]:
        calls.append(stored)
        return real(stored, password)

    hashing._verify_now = counting
    wrong = log_in(client, email="camille@example.org", password="pas le bon mot de passe du tout")
    unknown = log_in(client, email="personne@example.org", password="pas le bon mot de passe du tout")
    assert wrong.status_code == unknown.status_code == 400
    assert wrong.text.replace("camille@example.org", "E") == unknown.text.replace("personne@example.org", "E")
    assert sorted(wrong.headers.keys()) == sorted(unknown.headers.keys())
    # The unknown account cost a full argon2id check too (against a dummy hash).
    assert len(calls) == 2 and calls[0] is not None and calls[1] is None


def test_session_id_changes_at_log_in(client: Any, db: sessionmaker[Session], settings: Settings) -> None:
    sign_up(client)
    # An attacker plants a session id of their choosing before the victim logs in.
    client.cookies.set("broker_session", "hcb_ps_planted-by-an-attacker", domain="testserver.local")
    token = form_token(client.get("/login").text)
    response = client.post(
        "/login",
        data={"csrf_token": token, "email": "camille@example.org", "password": PASSWORD, "next": "/account"},
        follow_redirects=False,
    )
    assert response.status_code == 303
    first = session_cookie(client)
    assert first and first != "hcb_ps_planted-by-an-attacker"
    assert _session_row(db, settings, "hcb_ps_planted-by-an-attacker") is None
    log_in(client)
    second = session_cookie(client)
    assert second and second != first


def test_the_session_table_holds_no_session_id(client: Any, db: sessionmaker[Session]) -> None:
    sign_up(client)
    log_in(client)
    raw = session_cookie(client)
    assert raw
    with db() as session:
        rows = list(session.scalars(select(PatientSession)))
    assert len(rows) == 1 and raw not in rows[0].id_hash


def test_logout_ends_the_session_on_the_server(
    client: Any, db: sessionmaker[Session], settings: Settings
) -> None:
    sign_up(client)
    log_in(client)
    stolen = session_cookie(client)
    assert stolen
    token = form_token(client.get("/account").text)
    response = client.post("/logout", data={"csrf_token": token}, follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/login?logged_out=1"
    row = _session_row(db, settings, stolen)
    assert row is not None and row.revoked_at is not None
    # Someone who copied the cookie before the log-out gets nothing with it.
    client.cookies.set("broker_session", stolen, domain="testserver.local")
    after = client.get("/account", follow_redirects=False)
    assert after.status_code == 303
    assert after.headers["location"] == "/login?next=%2Faccount"


@pytest.mark.parametrize("expiry", ["idle", "absolute"])
def test_sessions_expire(client: Any, db: sessionmaker[Session], settings: Settings, expiry: str) -> None:
    sign_up(client)
    log_in(client)
    raw = session_cookie(client)
    assert raw and client.get("/account").status_code == 200
    now = utcnow()
    if expiry == "idle":
        values = {"last_seen_at": now - timedelta(seconds=settings.session_idle_timeout + 1)}
    else:  # active a second ago, but logged in more than 12 hours ago
        values = {
            "last_seen_at": now - timedelta(seconds=1),
            "created_at": now - timedelta(seconds=settings.session_absolute_timeout + 1),
            "expires_at": now - timedelta(seconds=1),
        }
    with db.begin() as session:
        session.execute(
            update(PatientSession)
            .where(PatientSession.id_hash == session_id_hash(settings, raw))
            .values(**values)
        )
    response = client.get("/account?tab=1", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/login?next=%2Faccount%3Ftab%3D1"


def test_activity_keeps_a_session_alive(client: Any, db: sessionmaker[Session], settings: Settings) -> None:
    sign_up(client)
    log_in(client)
    raw = session_cookie(client)
    assert raw
    almost = utcnow() - timedelta(seconds=settings.session_idle_timeout - 30)
    with db.begin() as session:
        session.execute(
            update(PatientSession)
            .where(PatientSession.id_hash == session_id_hash(settings, raw))
            .values(last_seen_at=almost)
        )
    assert client.get("/account").status_code == 200
    row = _session_row(db, settings, raw)
    assert row is not None and row.last_seen_at > almost + timedelta(seconds=60)


@pytest.mark.parametrize(
    "target",
    [
        "https://evil.example/",
        "//evil.example/",
        "/\\evil.example",
        "\\\\evil.example",
        "/\tevil.example",
        "javascript:alert(1)",
        " /account",
        "http:/evil.example",
        "/account#fragment",
        "/x\r\nSet-Cookie: a=b",
    ],
)
def test_next_accepts_only_a_local_path(client: Any, target: str) -> None:
    sign_up(client)
    response = log_in(client, next=target)
    assert response.status_code == 303
    assert response.headers["location"] == "/account"


def test_next_keeps_a_local_path_with_its_query(client: Any) -> None:
    sign_up(client)
    response = log_in(client, next="/authorize?client_id=abc&state=xyz")
    assert response.headers["location"] == "/authorize?client_id=abc&state=xyz"


def test_cookie_attributes_over_http_in_development(client: Any) -> None:
    sign_up(client)
    response = log_in(client)
    [cookie] = [c for c in response.headers.get_list("set-cookie") if c.startswith("broker_session=")]
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "path", "samesite"} <= attributes
    assert "samesite=lax" in cookie.lower() and "path=/" in cookie.lower()
    assert "secure" not in attributes and "domain" not in attributes


def test_cookie_attributes_over_https(settings: Settings) -> None:
    secure = replace(settings, issuer="https://broker.example")
    with TestClient(app=create_app(secure), base_url="https://broker.example") as client:
        login_page = client.get("/login")
        csrf_cookie = login_page.headers["set-cookie"]
        assert csrf_cookie.startswith("__Host-broker_csrf=") and "Secure" in csrf_cookie
        assert "strict-transport-security" in login_page.headers
        assert sign_up(client).status_code == 303
        response = log_in(client)
        assert response.status_code == 303
        [cookie] = [
            c for c in response.headers.get_list("set-cookie") if c.startswith("__Host-broker_session=")
        ]
        parts = [part.strip().lower() for part in cookie.split(";")]
        assert {"secure", "httponly", "path=/", "samesite=lax"} <= set(parts)
        assert not any(part.startswith("domain") for part in parts)
        assert client.get("/account").status_code == 200


def test_pages_carry_the_security_headers(client: Any) -> None:
    response = client.get("/login")
    csp = response.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and "object-src 'none'" in csp and "base-uri 'none'" in csp
    assert "script-src 'self' 'nonce-" in csp
    assert "form-action" not in csp  # SECURITY W2: it would break the redirect to the app
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["content-type"].startswith("text/html")


def test_pages_are_french_first_and_english_on_request(client: Any) -> None:
    assert '<html lang="fr">' in client.get("/login").text
    english = client.get("/login", headers={"Accept-Language": "en-GB,en;q=0.9,fr;q=0.5"})
    assert '<html lang="en">' in english.text and "Log in" in english.text
    switched = client.get("/language?to=en&next=%2Fsignup", follow_redirects=False)
    assert switched.status_code == 303 and switched.headers["location"] == "/signup"
    page = client.get("/signup")
    assert "Create an account" in page.text and "E-mail address" in page.text
    back = client.get("/language?to=fr&next=https://evil.example", follow_redirects=False)
    assert back.headers["location"] == "/login"


def test_base_template_offers_a_skip_link_and_labelled_fields(client: Any) -> None:
    html = client.get("/signup").text
    assert '<a class="skip-link" href="#contenu">' in html and 'id="contenu"' in html
    for field in ("email", "display_name", "password"):
        assert f'<label for="{field}">' in html and f'id="{field}"' in html
    assert 'href="/language?to=en&amp;next=%2Fsignup"' in html


def test_the_display_name_is_escaped_and_cleaned(client: Any, db: sessionmaker[Session]) -> None:
    sign_up(client, display_name="<script>alert(1)</script>\u202eevil")
    log_in(client)
    html = client.get("/account").text
    assert "<script>alert(1)" not in html and "&lt;script&gt;" in html
    assert "\u202e" not in _patients(db)[0].display_name


def test_account_page_requires_a_session(client: Any) -> None:
    response = client.get("/account", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/login?next=%2Faccount"
    assert page_token(client)  # the log-in page works without any session
