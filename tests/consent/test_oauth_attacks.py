"""Attacks on the authorization server (issue 4 acceptance; SECURITY A1, A4 J1-J5, A6 W4/W10).

Each attack gets a clear RFC 6749-style answer and issues nothing:

- token, PAR and revocation endpoints: ``{"error", "error_description"}`` JSON;
- the authorization endpoint, once the patient has logged in: a 303 back to the registered
  redirect URI carrying ``error``, ``iss`` (RFC 9207) and ``state``, and no ``code``;
- unknown client, unregistered redirect URI, unapproved app, unusable ``request_uri``: an
  error page, never a ``Location`` (RFC 9700 §4.11.2).

"Nothing issued" is checked in the database: no new authorization code, refresh token,
consent record or consent event, and what existed before still works where it should.

Everything runs in process (Litestar ``TestClient``: it keeps the browser's cookies), on
SQLite and PostgreSQL; the live-process flow is in ``test_oauth_flow.py``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt as pyjwt
import pytest
from argon2 import PasswordHasher
from jwcrypto import jwk
from jwcrypto import jwt as jwcrypto_jwt
from litestar.testing import TestClient
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from broker.app import create_app
from broker.catalog import service as catalog
from broker.catalog.enforcement import CharterInForce, apply_charter, charter_source
from broker.consent.models import (
    AuthorizationCode,
    AuthorizationRequest,
    ConsentEvent,
    ConsentRecord,
    RefreshToken,
    StatusEntry,
)
from broker.consent.patients.service import create_local_account
from broker.consent.service import link_patient
from broker.consent.status_list import StatusList
from broker.db import make_engine, make_session_factory, transaction, utcnow
from broker.settings import Settings
from tests.factories import TWO_HOLDERS, app_registration, seed_two_holders

PASSWORD = "une phrase de passe assez longue pour les attaques"
REDIRECT = "https://glycemie.example/callback"
HOLDERS = TWO_HOLDERS
GAELLE, BRUNO = "gaelle@example.org", "bruno@example.org"
CHARTER_V2 = Path(__file__).resolve().parent.parent / "charter" / "data" / "charter-2.0.json"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


# -- the world --------------------------------------------------------------------------------


@pytest.fixture
def settings(settings: Settings) -> Settings:  # type: ignore[override]
    # The OWASP minimum (m=19 MiB, t=2, p=1): still argon2id, cheap enough for many log-ins.
    return replace(settings, argon2_memory_kib=19456, argon2_time_cost=2, argon2_parallelism=1)


@dataclass
class Env:
    settings: Settings
    db: sessionmaker[Session]
    browser: TestClient[Any]  # Gaëlle's browser, logged in; also used as the app's HTTP client
    client_id: str  # the public app "Suivi Glycémie"
    patients: dict[str, str]  # email -> patient id

    @property
    def issuer(self) -> str:
        return self.settings.issuer


def register(db: sessionmaker[Session], settings: Settings, name: str, **changes: Any) -> tuple[str, str]:
    """Register an app directly in the catalog; returns (client_id, status)."""
    body = app_registration(name=name, redirect_uris=[REDIRECT], **changes)
    with transaction(db) as session:
        charter = CharterInForce(settings.charter_version).current(session)
        registered = catalog.register_app(
            session, body=body, charter=charter, secret_key=settings.secret_key, dev_mode=True, now=utcnow()
        )
        return registered.app.client_id, registered.app.status


def register_with_model(
    db: sessionmaker[Session], settings: Settings, name: str, model: str
) -> tuple[str, str]:
    body = app_registration(name=name, redirect_uris=[REDIRECT])
    body["charter_manifest"]["business_model"]["model"] = model
    with transaction(db) as session:
        charter = CharterInForce(settings.charter_version).current(session)
        registered = catalog.register_app(
            session, body=body, charter=charter, secret_key=settings.secret_key, dev_mode=True, now=utcnow()
        )
        return registered.app.client_id, registered.app.status


@pytest.fixture
def env(client: TestClient[Any], settings: Settings) -> Iterator[Env]:
    engine = make_engine(settings.database_url)
    db = make_session_factory(engine)
    hasher = PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1)
    patients: dict[str, str] = {}
    with transaction(db) as session:
        now = utcnow()
        charter = CharterInForce(settings.charter_version).current(session)
        seed_two_holders(session, charter, now)
        for email, name in ((GAELLE, "Gaëlle"), (BRUNO, "Bruno")):
            patient = create_local_account(
                session,
                email=email,
                display_name=name,
                password_hash=hasher.hash(PASSWORD),
                language="fr",
                now=now,
            )
            assert patient is not None
            patients[email] = patient.id
            for identifier in HOLDERS:
                link_patient(session, patient_id=patient.id, holder_id=identifier, now=now)
    client_id, status = register(db, settings, "Suivi Glycémie")
    assert status == "approved"
    log_in(client, GAELLE)
    yield Env(settings, db, client, client_id, patients)
    engine.dispose()


@pytest.fixture
def bruno(env: Env) -> Iterator[TestClient[Any]]:
    """A second patient's browser, on its own broker instance (same database and secret)."""
    with TestClient(app=create_app(env.settings)) as other:
        log_in(other, BRUNO)
        yield other


# -- what a browser does ---------------------------------------------------------------------


def hidden(html: str, name: str) -> str:
    match = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert match, f"no hidden input {name}"
    return match.group(1)


def log_in(browser: TestClient[Any], email: str) -> None:
    page = browser.get("/login")
    response = browser.post(
        "/login",
        data={
            "csrf_token": hidden(page.text, "csrf_token"),
            "email": email,
            "password": PASSWORD,
            "next": "/",
        },
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text


def page_csrf(browser: TestClient[Any]) -> str:
    return hidden(browser.get("/account").text, "csrf_token")


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def auth_params(client_id: str, challenge: str | None, **extra: str | None) -> dict[str, str]:
    params: dict[str, str | None] = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": REDIRECT,
        "state": "st-" + secrets.token_urlsafe(8),
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    params.update(extra)
    return {k: v for k, v in params.items() if v is not None}


def authorize(browser: TestClient[Any], params: dict[str, str]) -> Any:
    return browser.get("/authorize?" + urlencode(params), follow_redirects=False)


@dataclass
class Screen:
    path: str
    html: str

    def form(self, decision: str = "accept", **changes: Any) -> dict[str, Any]:
        data: dict[str, Any] = {
            "csrf_token": hidden(self.html, "csrf_token"),
            "decision": decision,
            "days": "90",
            "holder": re.findall(r'name="holder" value="([^"]+)"', self.html),
            "item": re.findall(r'name="item" value="([^"]+)"[^>]*checked', self.html),
        }
        data.update(changes)
        return {k: v for k, v in data.items() if v is not None}


def open_consent(browser: TestClient[Any], client_id: str, challenge: str, **extra: str) -> Screen:
    started = authorize(browser, auth_params(client_id, challenge, **extra))
    assert started.status_code == 303, started.text
    path = started.headers["location"]
    assert path.startswith("/consent/"), path
    screen = browser.get(path)
    assert screen.status_code == 200, screen.text
    return Screen(path, screen.text)


def answer(browser: TestClient[Any], screen: Screen, data: dict[str, Any], **headers: str) -> Any:
    return browser.post(screen.path, data=data, headers=headers, follow_redirects=False)


def query_of(location: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(location).query)


def get_code(browser: TestClient[Any], client_id: str, challenge: str, **extra: str) -> str:
    screen = open_consent(browser, client_id, challenge, **extra)
    done = answer(browser, screen, screen.form())
    assert done.status_code == 303, done.text
    return query_of(done.headers["location"])["code"][0]


def post_form(http: TestClient[Any], path: str, data: dict[str, str], **headers: str) -> Any:
    return http.post(path, content=urlencode(data), headers={**FORM, **headers})


def redeem(http: TestClient[Any], client_id: str, code: str, verifier: str | None, **extra: str) -> Any:
    data = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": REDIRECT,
        "client_id": client_id,
    }
    if verifier is not None:
        data["code_verifier"] = verifier
    data.update(extra)
    return post_form(http, "/token", {k: v for k, v in data.items() if v is not None})


def refresh(http: TestClient[Any], client_id: str, token: str, **extra: str) -> Any:
    return post_form(
        http,
        "/token",
        {"grant_type": "refresh_token", "refresh_token": token, "client_id": client_id, **extra},
    )


def tokens_for(
    env: Env, browser: TestClient[Any] | None = None, client_id: str | None = None
) -> dict[str, Any]:
    """The whole legitimate flow: authorization, consent, code redemption."""
    browser = browser or env.browser
    client_id = client_id or env.client_id
    verifier, challenge = pkce()
    code = get_code(browser, client_id, challenge)
    response = redeem(browser, client_id, code, verifier, resource=HOLDERS["labo-test"])
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


# -- what the broker answered ----------------------------------------------------------------


def counts(db: sessionmaker[Session]) -> dict[str, int]:
    with db() as session:
        return {
            model.__name__: session.scalar(select(func.count()).select_from(model)) or 0
            for model in (AuthorizationCode, RefreshToken, ConsentRecord, ConsentEvent)
        }


def consent_row(db: sessionmaker[Session], consent_id: str) -> ConsentRecord:
    with db() as session:
        row = session.get(ConsentRecord, consent_id)
        assert row is not None
        session.expunge(row)
        return row


def assert_oauth_error(response: Any, error: str | tuple[str, ...], status: int = 400) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    expected = (error,) if isinstance(error, str) else error
    assert body["error"] in expected, body
    assert isinstance(body.get("error_description"), str) and body["error_description"], body
    assert "access_token" not in body and "refresh_token" not in body
    assert response.headers["cache-control"].startswith("no-store")
    return body


def assert_refused(response: Any, status: int = 400) -> None:
    """Refused and nothing in the answer; the body's format is checked separately (see
    ``test_invalid_request_uses_the_rfc6749_error_format``)."""
    assert response.status_code == status, response.text
    assert "access_token" not in response.text and "refresh_token" not in response.text
    assert "request_uri" not in response.json()
    assert response.headers["cache-control"].startswith("no-store")


def assert_error_page(response: Any, status: int = 400) -> None:
    """RFC 9700 §4.11.2: a page for the person, never a redirect to an unverified URI."""
    assert response.status_code == status, response.text
    assert "location" not in response.headers
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["x-frame-options"] == "DENY"
    assert "code=" not in response.text


def assert_error_redirect(response: Any, env: Env, error: str, state: str | None) -> dict[str, list[str]]:
    assert response.status_code == 303, response.text
    location = response.headers["location"]
    assert location.startswith(REDIRECT + "?"), location
    query = query_of(location)
    assert query["error"] == [error], query
    assert query.get("error_description"), query
    assert query["iss"] == [env.issuer]  # RFC 9207, errors included
    assert query.get("state") == ([state] if state else None)
    assert "code" not in query
    return query


# == the authorization endpoint ===============================================================


PKCE_ATTACKS = {
    "no challenge": {"code_challenge": None, "code_challenge_method": None},
    "challenge, no method (means plain)": {"code_challenge_method": None},
    "method plain": {"code_challenge_method": "plain"},
    "plain with a verifier-like challenge": {"code_challenge": "a" * 64, "code_challenge_method": "plain"},
    "method s256 in lower case": {"code_challenge_method": "s256"},
    "unknown method": {"code_challenge_method": "S512"},
    "method without challenge": {"code_challenge": None},
    "challenge too short": {"code_challenge": "A" * 42},
    "challenge too long": {"code_challenge": "A" * 44},
    "challenge padded": {"code_challenge": "A" * 42 + "="},
    "challenge in base64, not base64url": {"code_challenge": "+" * 43},
    "challenge with a space": {"code_challenge": "A" * 21 + " " + "A" * 21},
    "empty challenge": {"code_challenge": ""},
}


@pytest.mark.parametrize("changes", PKCE_ATTACKS.values(), ids=PKCE_ATTACKS.keys())
def test_authorization_without_valid_s256_pkce_is_refused(env: Env, changes: dict[str, str | None]) -> None:
    _, challenge = pkce()
    params = auth_params(env.client_id, challenge, **changes)
    before = counts(env.db)
    response = authorize(env.browser, params)
    assert_error_redirect(response, env, "invalid_request", params["state"])
    assert counts(env.db) == before
    with env.db() as session:
        assert session.scalar(select(func.count()).select_from(AuthorizationRequest)) == 0


def test_authorization_error_before_log_in_goes_to_the_log_in_page(client: TestClient[Any], env: Env) -> None:
    """RFC 9700 §4.11.2: no automatic error redirect to the app before the patient logged in."""
    with TestClient(app=create_app(env.settings)) as anonymous:
        response = authorize(anonymous, auth_params(env.client_id, None, code_challenge_method=None))
        assert response.status_code == 303
        assert response.headers["location"].startswith("/login?next=")


@pytest.mark.parametrize("state", [None, ""], ids=["absent", "empty"])
def test_state_is_required(env: Env, state: str | None) -> None:
    _, challenge = pkce()
    params = auth_params(env.client_id, challenge, state=state)
    before = counts(env.db)
    assert_error_redirect(authorize(env.browser, params), env, "invalid_request", None)
    assert counts(env.db) == before


def test_overlong_state_and_token_response_type_are_refused(env: Env) -> None:
    _, challenge = pkce()
    long_state = auth_params(env.client_id, challenge, state="s" * 501)
    assert_error_redirect(authorize(env.browser, long_state), env, "invalid_request", "s" * 501)
    implicit = auth_params(env.client_id, challenge, response_type="token")
    assert_error_redirect(
        authorize(env.browser, implicit), env, "unsupported_response_type", implicit["state"]
    )


def _details(**detail: Any) -> str:
    item = {"type": "health_data", "purpose": "chronic_disease_followup", "categories": ["lab_results"]}
    item.update(detail)
    return json.dumps([{k: v for k, v in item.items() if v is not None}])


SCOPE_ATTACKS = {
    "scope imaging": ({"scope": "imaging"}, "invalid_scope"),
    "scope one allowed one not": ({"scope": "lab_results imaging"}, "invalid_scope"),
    "scope unknown word": ({"scope": "openid"}, "invalid_scope"),
    "details imaging": (
        {"authorization_details": _details(categories=["imaging"])},
        "invalid_authorization_details",
    ),
    "details allowed plus imaging": (
        {"authorization_details": _details(categories=["lab_results", "imaging"])},
        "invalid_authorization_details",
    ),
    "details unknown purpose": (
        {"authorization_details": _details(purpose="marketing")},
        "invalid_authorization_details",
    ),
    "details purpose of the charter, not of the manifest": (
        {"authorization_details": _details(purpose="scientific_research")},
        "invalid_authorization_details",
    ),
    "details malformed JSON": (
        {"authorization_details": '[{"type": "health_data"'},
        "invalid_authorization_details",
    ),
    "details an object, not an array": (
        {"authorization_details": json.dumps({"type": "health_data"})},
        "invalid_authorization_details",
    ),
    "details empty array": ({"authorization_details": "[]"}, "invalid_authorization_details"),
    "details another type": (
        {"authorization_details": _details(type="payment")},
        "invalid_authorization_details",
    ),
    "details without categories": (
        {"authorization_details": _details(categories=None)},
        "invalid_authorization_details",
    ),
    "details holder not a string": (
        {"authorization_details": _details(holder=["labo-test"])},
        "invalid_authorization_details",
    ),
    "details category not a string": (
        {"authorization_details": _details(categories=[{"lab_results": True}])},
        "invalid_authorization_details",
    ),
}


@pytest.mark.parametrize(("changes", "error"), SCOPE_ATTACKS.values(), ids=SCOPE_ATTACKS.keys())
def test_request_beyond_the_manifest_is_refused(env: Env, changes: dict[str, str], error: str) -> None:
    _, challenge = pkce()
    params = auth_params(env.client_id, challenge, **changes)
    before = counts(env.db)
    assert_error_redirect(authorize(env.browser, params), env, error, params["state"])
    assert counts(env.db) == before


REDIRECT_ATTACKS = {
    "trailing slash": REDIRECT + "/",
    "other port": "https://glycemie.example:8443/callback",
    "explicit default port": "https://glycemie.example:443/callback",
    "extra query": REDIRECT + "?next=https://evil.example",
    "fragment": REDIRECT + "#x",
    "path case": "https://glycemie.example/Callback",
    "host case": "https://GLYCEMIE.example/callback",
    "scheme downgrade": "http://glycemie.example/callback",
    "percent-encoded path": "https://glycemie.example/%63allback",
    "dot segments": "https://glycemie.example/x/../callback",
    "sub-domain": "https://evil.glycemie.example/callback",
    "userinfo": "https://glycemie.example@evil.example/callback",
    "another site": "https://evil.example/callback",
    "empty": "",
}


@pytest.mark.parametrize("redirect_uri", REDIRECT_ATTACKS.values(), ids=REDIRECT_ATTACKS.keys())
def test_redirect_uri_not_exactly_registered_gets_an_error_page(env: Env, redirect_uri: str) -> None:
    _, challenge = pkce()
    before = counts(env.db)
    # with a request that is otherwise valid, and with one that would be an error redirect
    for extra in ({}, {"code_challenge_method": "plain", "scope": "imaging"}):
        response = authorize(
            env.browser, auth_params(env.client_id, challenge, redirect_uri=redirect_uri, **extra)
        )
        assert_error_page(response)
    assert counts(env.db) == before


def test_missing_redirect_uri_unknown_or_unapproved_client_get_an_error_page(env: Env) -> None:
    _, challenge = pkce()
    refused_id, status = register_with_model(env.db, env.settings, "Vente de Données", "sale_of_data")
    assert status == "refused"
    before = counts(env.db)
    for params in (
        auth_params(env.client_id, challenge, redirect_uri=None),
        auth_params("app_unknown", challenge),
        {k: v for k, v in auth_params(env.client_id, challenge).items() if k != "client_id"},
        auth_params(refused_id, challenge),
        auth_params(refused_id, challenge, scope="imaging"),  # no error redirect for it either
    ):
        assert_error_page(authorize(env.browser, params))
    # the same pages when nobody is logged in
    with TestClient(app=create_app(env.settings)) as anonymous:
        assert_error_page(authorize(anonymous, auth_params("app_unknown", challenge)))
        assert_error_page(
            authorize(anonymous, auth_params(env.client_id, challenge, redirect_uri=REDIRECT + "/"))
        )
        assert_error_page(authorize(anonymous, auth_params(refused_id, challenge)))
    assert counts(env.db) == before


def test_repeated_authorization_parameter_gets_an_error_page(env: Env) -> None:
    _, challenge = pkce()
    query = (
        urlencode(auth_params(env.client_id, challenge)) + "&redirect_uri=" + "https%3A%2F%2Fevil.example%2F"
    )
    response = env.browser.get("/authorize?" + query, follow_redirects=False)
    assert_error_page(response)


# == the consent form =========================================================================


CSRF_ATTACKS = {
    "missing token": ("missing", {}),
    "empty token": ("empty", {}),
    "wrong token": ("wrong", {}),
    "token of another session": ("other-session", {}),
    "cross-site fetch": ("valid", {"Sec-Fetch-Site": "cross-site"}),
    "same-site fetch": ("valid", {"Sec-Fetch-Site": "same-site"}),
    "foreign origin": ("valid", {"Origin": "https://evil.example"}),
    "null origin": ("valid", {"Origin": "null"}),
}


def _forged_token(kind: str, real: str, other: TestClient[Any] | None) -> str | None:
    if kind == "missing":
        return None
    if kind == "empty":
        return ""
    if kind == "wrong":
        return "0" * len(real)
    if kind == "other-session":
        assert other is not None
        token = page_csrf(other)
        assert token != real
        return token
    return real


@pytest.mark.parametrize(("kind", "headers"), CSRF_ATTACKS.values(), ids=CSRF_ATTACKS.keys())
def test_csrf_on_the_consent_form_is_refused(
    env: Env, request: pytest.FixtureRequest, kind: str, headers: dict[str, str]
) -> None:
    other = request.getfixturevalue("bruno") if kind == "other-session" else None
    _, challenge = pkce()
    screen = open_consent(env.browser, env.client_id, challenge)
    before = counts(env.db)
    form = screen.form()
    form["csrf_token"] = _forged_token(kind, form["csrf_token"], other)
    response = answer(env.browser, screen, {k: v for k, v in form.items() if v is not None}, **headers)
    assert response.status_code == 403, response.text
    assert "location" not in response.headers
    assert counts(env.db) == before  # no code, no consent
    # the request was not spent: the patient's own answer still goes through, once
    done = answer(env.browser, screen, screen.form())
    assert done.status_code == 303 and "code" in query_of(done.headers["location"])


def test_another_patients_browser_cannot_answer_the_consent_request(env: Env, bruno: TestClient[Any]) -> None:
    _, challenge = pkce()
    screen = open_consent(env.browser, env.client_id, challenge)
    before = counts(env.db)
    assert_error_page(bruno.get(screen.path))
    stolen = screen.form()
    stolen["csrf_token"] = page_csrf(bruno)  # Bruno's own, valid token
    assert_error_page(answer(bruno, screen, stolen))
    assert counts(env.db) == before


def test_a_consent_request_is_answered_once(env: Env) -> None:
    _, challenge = pkce()
    screen = open_consent(env.browser, env.client_id, challenge)
    first = answer(env.browser, screen, screen.form())
    assert first.status_code == 303
    assert "code" in query_of(first.headers["location"])
    after_first = counts(env.db)
    assert after_first["AuthorizationCode"] == 1
    for decision in ("accept", "deny"):
        again = answer(env.browser, screen, screen.form(decision))
        assert_error_page(again)
    assert counts(env.db) == after_first  # no second code, no consent change
    # the consent screen itself is gone too
    assert_error_page(env.browser.get(screen.path))


def test_a_denied_request_cannot_be_accepted_afterwards(env: Env) -> None:
    _, challenge = pkce()
    screen = open_consent(env.browser, env.client_id, challenge)
    denied = answer(env.browser, screen, screen.form("deny"))
    query = query_of(denied.headers["location"])
    assert query["error"] == ["access_denied"] and "code" not in query
    before = counts(env.db)
    assert_error_page(answer(env.browser, screen, screen.form("accept")))
    assert counts(env.db) == before
    assert before["AuthorizationCode"] == 0 and before["ConsentRecord"] == 0


FORM_TAMPERING = {
    "a category the request did not ask for": {"item": ["chronic_disease_followup|imaging"]},
    "a purpose the request did not name": {"item": ["scientific_research|lab_results"]},
    "a holder the patient is not linked to": {"holder": ["labo-unlinked"]},
    "a duration beyond the maximum": {"days": "366"},
    "a zero duration": {"days": "0"},
    "a duration that is not a number": {"days": "forever"},
}


@pytest.mark.parametrize("changes", FORM_TAMPERING.values(), ids=FORM_TAMPERING.keys())
def test_a_tampered_consent_form_is_refused(env: Env, changes: dict[str, Any]) -> None:
    _, challenge = pkce()
    screen = open_consent(env.browser, env.client_id, challenge)
    before = counts(env.db)
    assert_error_page(answer(env.browser, screen, screen.form(**changes)))
    assert counts(env.db) == before
    done = answer(env.browser, screen, screen.form())  # the request is still the patient's to answer
    assert done.status_code == 303 and "code" in query_of(done.headers["location"])


@pytest.mark.parametrize(
    ("changes", "outcome"),
    [({"item": []}, "code"), ({"holder": []}, "page")],
    ids=["no optional category ticked", "no data source ticked"],
)
def test_a_consent_form_without_item_or_holder_fields_is_answered(
    env: Env, changes: dict[str, Any], outcome: str
) -> None:
    _, challenge = pkce()
    screen = open_consent(env.browser, env.client_id, challenge)
    response = answer(env.browser, screen, screen.form(**changes))
    if outcome == "code":  # only the required lab_results: a valid consent
        assert response.status_code == 303, response.text
        assert "code" in query_of(response.headers["location"])
    else:  # "choose at least one of your data sources", and nothing issued
        assert_error_page(response)
        assert "Vous n'avez coché aucune source de données." in response.text  # in the patient's words
        assert counts(env.db)["AuthorizationCode"] == 0


# == the token endpoint: codes ================================================================


def test_wrong_or_missing_code_verifier_is_refused(env: Env) -> None:
    verifier, challenge = pkce()
    code = get_code(env.browser, env.client_id, challenge)
    other_verifier, _ = pkce()
    before = counts(env.db)
    for bad in (other_verifier, None, "", verifier[:-1], verifier + "A", challenge, "a" * 129):
        response = redeem(env.browser, env.client_id, code, bad)
        assert_oauth_error(response, ("invalid_grant", "invalid_request"))
    assert counts(env.db) == before  # no refresh token


def test_an_expired_code_is_refused(env: Env) -> None:
    verifier, challenge = pkce()
    code = get_code(env.browser, env.client_id, challenge)
    with transaction(env.db) as session:
        session.execute(update(AuthorizationCode).values(expires_at=utcnow() - timedelta(seconds=1)))
    before = counts(env.db)
    assert_oauth_error(redeem(env.browser, env.client_id, code, verifier), "invalid_grant")
    assert_oauth_error(redeem(env.browser, env.client_id, "hcb_code_forged", verifier), "invalid_grant")
    assert counts(env.db) == before


def test_redirect_uri_at_the_token_endpoint_must_be_identical(env: Env) -> None:
    verifier, challenge = pkce()
    code = get_code(env.browser, env.client_id, challenge)
    before = counts(env.db)
    for other in (REDIRECT + "/", "https://glycemie.example:443/callback", REDIRECT + "?x=1", "", None):
        response = redeem(env.browser, env.client_id, code, verifier, redirect_uri=other)
        assert_oauth_error(response, ("invalid_grant", "invalid_request"))
    assert counts(env.db) == before
    assert redeem(env.browser, env.client_id, code, verifier).status_code == 200


def test_a_code_is_bound_to_its_client(env: Env) -> None:
    other_app, _ = register(env.db, env.settings, "Autre Appli")
    verifier, challenge = pkce()
    code = get_code(env.browser, env.client_id, challenge)
    before = counts(env.db)
    assert_oauth_error(redeem(env.browser, other_app, code, verifier), "invalid_grant")
    assert counts(env.db) == before
    # another client's attempt neither spends the code nor revokes anything
    assert redeem(env.browser, env.client_id, code, verifier).status_code == 200


@pytest.mark.parametrize("rotated", [False, True], ids=["first-refresh-token", "after-rotation"])
def test_code_replay_is_refused_and_revokes_what_the_code_produced(env: Env, rotated: bool) -> None:
    verifier, challenge = pkce()
    code = get_code(env.browser, env.client_id, challenge)
    first = redeem(env.browser, env.client_id, code, verifier)
    assert first.status_code == 200, first.text
    live = first.json()["refresh_token"]
    if rotated:  # the refresh token the code produced was already rotated by the legitimate app
        rotation = refresh(env.browser, env.client_id, live)
        assert rotation.status_code == 200
        live = rotation.json()["refresh_token"]
    before = counts(env.db)
    with env.db() as session:
        consent = session.scalars(select(ConsentRecord)).one()
        old_entry = consent.status_entry_id
    assert_oauth_error(redeem(env.browser, env.client_id, code, verifier), "invalid_grant")
    # nothing issued; one event records why the consent's tokens were stopped
    assert counts(env.db) == {**before, "ConsentEvent": before["ConsentEvent"] + 1}
    with env.db() as session:
        assert all(row.revoked_at is not None for row in session.scalars(select(RefreshToken)))
        # the access tokens the code produced point at an entry that is now INVALID
        assert session.get(StatusEntry, old_entry).status == 1
        consent = session.scalars(select(ConsentRecord)).one()
        assert consent.status == "active" and consent.status_entry_id != old_entry
    assert_oauth_error(refresh(env.browser, env.client_id, live), "invalid_grant")
    assert_oauth_error(refresh(env.browser, env.client_id, first.json()["refresh_token"]), "invalid_grant")


def test_token_request_with_a_repeated_parameter_or_wrong_content_type_is_refused(env: Env) -> None:
    verifier, challenge = pkce()
    code = get_code(env.browser, env.client_id, challenge)
    data = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": REDIRECT,
        "client_id": env.client_id,
        "code_verifier": verifier,
    }
    good = urlencode(data)
    before = counts(env.db)
    for body, headers in (
        (good + "&code=" + code, FORM),  # the same value twice
        (good + "&client_id=app_other", FORM),  # two different clients
        (good + "&code_verifier=" + verifier, FORM),
        (good + "&grant_type=refresh_token", FORM),
        (json.dumps(data), {"Content-Type": "application/json"}),
        (good, {"Content-Type": "text/plain"}),
        (good, {"Content-Type": "multipart/form-data; boundary=x"}),
        (good, {"Content-Type": "application/x-www-form-urlencoded-evil"}),
    ):
        response = env.browser.post("/token", content=body, headers=headers)
        assert_refused(response)
    no_type = env.browser.post("/token", content=good.encode(), headers={"Content-Type": ""})
    assert_refused(no_type)
    assert counts(env.db) == before
    # none of these spent the code
    assert post_form(env.browser, "/token", data).status_code == 200


@pytest.mark.parametrize(
    ("path", "body", "content_type"),
    [
        ("/token", "grant_type=authorization_code&grant_type=refresh_token", FORM["Content-Type"]),
        ("/token", '{"grant_type": "authorization_code"}', "application/json"),
        ("/token", "grant_type=authorization_code&client_id={client_id}", FORM["Content-Type"]),
        ("/token", "grant_type=refresh_token&client_id={client_id}", FORM["Content-Type"]),
        ("/par", "client_id={client_id}&redirect_uri=https%3A%2F%2Fevil.example%2F", FORM["Content-Type"]),
        ("/revoke", "client_id={client_id}", FORM["Content-Type"]),
        ("/revoke", "token=a&token=b&client_id={client_id}", FORM["Content-Type"]),
    ],
    ids=[
        "token repeated",
        "token json",
        "token without code",
        "token without refresh_token",
        "par unregistered redirect",
        "revoke without token",
        "revoke repeated",
    ],
)
def test_invalid_request_uses_the_rfc6749_error_format(
    env: Env, path: str, body: str, content_type: str
) -> None:
    response = env.browser.post(
        path, content=body.replace("{client_id}", env.client_id), headers={"Content-Type": content_type}
    )
    assert_oauth_error(response, "invalid_request")


# == the token endpoint: refresh tokens =======================================================


def test_old_refresh_token_used_after_the_legitimate_client_rotated_revokes_the_family(env: Env) -> None:
    token = tokens_for(env)
    stolen = token["refresh_token"]
    second = refresh(env.browser, env.client_id, stolen).json()["refresh_token"]
    third = refresh(env.browser, env.client_id, second)  # the legitimate app went on with the new one
    assert third.status_code == 200
    current = third.json()["refresh_token"]
    before = counts(env.db)
    assert_oauth_error(refresh(env.browser, env.client_id, stolen), "invalid_grant")  # the attacker, late
    assert counts(env.db) == before
    assert_oauth_error(refresh(env.browser, env.client_id, current), "invalid_grant")  # family revoked
    assert_oauth_error(refresh(env.browser, env.client_id, second), "invalid_grant")


def test_attacker_first_then_legitimate_client_revokes_the_attackers_tokens(env: Env) -> None:
    token = tokens_for(env)
    stolen = token["refresh_token"]
    attacker = refresh(env.browser, env.client_id, stolen)  # the attacker wins the race
    assert attacker.status_code == 200
    assert_oauth_error(refresh(env.browser, env.client_id, stolen), "invalid_grant")  # the app, second
    assert_oauth_error(refresh(env.browser, env.client_id, attacker.json()["refresh_token"]), "invalid_grant")


def test_refresh_token_of_another_client_is_refused(env: Env) -> None:
    other_app, _ = register(env.db, env.settings, "Autre Appli")
    token = tokens_for(env)
    before = counts(env.db)
    assert_oauth_error(refresh(env.browser, other_app, token["refresh_token"]), "invalid_grant")
    assert counts(env.db) == before
    assert refresh(env.browser, env.client_id, token["refresh_token"]).status_code == 200  # not spent


# == a suspended app ==========================================================================


def _status_of(browser: TestClient[Any], access_token: str) -> int:
    reference = pyjwt.decode(access_token, options={"verify_signature": False})["status"]["status_list"]
    text = browser.get(urlsplit(reference["uri"]).path).text
    payload = pyjwt.decode(text, options={"verify_signature": False})
    entries = StatusList.decode(payload["status_list"]["lst"], payload["status_list"]["bits"])
    return entries.get(reference["idx"])


def test_a_suspended_app_gets_no_token_no_consent_screen_and_its_status_is_suspended(env: Env) -> None:
    adverts, status = register_with_model(
        env.db, env.settings, "Pub Sans Santé", "advertising_without_health_data"
    )
    assert status == "approved"  # under the packaged charter 1.0
    token = tokens_for(env, client_id=adverts)
    assert _status_of(env.browser, token["access_token"]) == 0  # VALID
    # an unredeemed code, a pending consent screen and a pushed request from before the suspension
    verifier, challenge = pkce()
    code = get_code(env.browser, adverts, challenge)
    _, challenge2 = pkce()
    pending = open_consent(env.browser, adverts, challenge2)
    pushed = post_form(env.browser, "/par", auth_params(adverts, challenge2))
    assert pushed.status_code == 201

    charter, document = charter_source(str(CHARTER_V2))
    with transaction(env.db) as session:
        report = apply_charter(
            session, charter=charter, document=document, applied_by="test", dev_mode=True, now=utcnow()
        )
    assert report.suspended == [adverts]  # the compliant app stays approved
    before = counts(env.db)

    assert_oauth_error(refresh(env.browser, adverts, token["refresh_token"]), "invalid_grant")
    assert_oauth_error(redeem(env.browser, adverts, code, verifier), "invalid_grant")
    assert_error_page(authorize(env.browser, auth_params(adverts, challenge)))
    assert_error_page(authorize(env.browser, auth_params(adverts, challenge, scope="imaging")))
    request_uri = pushed.json()["request_uri"]
    assert_error_page(authorize(env.browser, {"client_id": adverts, "request_uri": request_uri}))
    assert_error_page(answer(env.browser, pending, pending.form()))
    new_push = post_form(env.browser, "/par", auth_params(adverts, challenge))
    assert_oauth_error(
        new_push, ("invalid_client", "unauthorized_client", "invalid_request"), new_push.status_code
    )
    assert new_push.status_code in (400, 401)
    assert counts(env.db) == before
    assert _status_of(env.browser, token["access_token"]) == 2  # SUSPENDED
    # the compliant app is untouched
    assert tokens_for(env)["access_token"]


# == client assertions (private_key_jwt) ======================================================


@dataclass
class Confidential:
    client_id: str
    key: jwk.JWK


@pytest.fixture
def confidential(env: Env) -> Confidential:
    key = jwk.JWK.generate(kty="EC", crv="P-256")
    public = key.export_public(as_dict=True)
    public.update(kid="app-key-1", alg="ES256", use="sig")
    client_id, status = register(
        env.db,
        env.settings,
        "Glycémie Pro",
        jwks={"keys": [public]},
        token_endpoint_auth_method="private_key_jwt",
    )
    assert status == "approved"
    return Confidential(client_id, key)


def assertion(
    env: Env,
    app: Confidential,
    *,
    key: jwk.JWK | None = None,
    header: dict[str, Any] | None = None,
    **claims: Any,
) -> str:
    now = int(time.time())
    head = {"alg": "ES256", "kid": "app-key-1", "typ": "JWT", **(header or {})}
    body = {
        "iss": app.client_id,
        "sub": app.client_id,
        "aud": f"{env.issuer}/token",
        "iat": now,
        "exp": now + 60,
        "jti": uuid.uuid4().hex,
        **claims,
    }
    token = jwcrypto_jwt.JWT(header=head, claims={k: v for k, v in body.items() if v is not None})
    token.make_signed_token(key or app.key)
    return str(token.serialize())


def _b64(data: bytes | str) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unsigned(env: Env, app: Confidential, alg: str, signature: str = "") -> str:
    now = int(time.time())
    header = {"alg": alg, "kid": "app-key-1", "typ": "JWT"}
    claims = {
        "iss": app.client_id,
        "sub": app.client_id,
        "aud": f"{env.issuer}/token",
        "iat": now,
        "exp": now + 60,
        "jti": uuid.uuid4().hex,
    }
    return f"{_b64(json.dumps(header))}.{_b64(json.dumps(claims))}.{signature}"


def hs256_with_public_key(env: Env, app: Confidential) -> str:
    """RS/HS key confusion (CVE-2016-10555): HMAC keyed with the app's public JWK as JSON."""
    secret = json.dumps(app.key.export_public(as_dict=True)).encode()
    signing_input = unsigned(env, app, "HS256")[:-1]
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(mac)}"


def with_assertion(app: Confidential, signed: str | None, **form: str) -> dict[str, str]:
    data = {"client_id": app.client_id, "client_assertion_type": ASSERTION_TYPE, **form}
    if signed is not None:
        data["client_assertion"] = signed
    return data


def confidential_code(env: Env, app: Confidential) -> tuple[str, str]:
    verifier, challenge = pkce()
    return get_code(env.browser, app.client_id, challenge), verifier


def code_form(code: str, verifier: str) -> dict[str, str]:
    return {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": REDIRECT,
        "code_verifier": verifier,
    }


def test_a_valid_client_assertion_authenticates_at_token_par_and_revoke(
    env: Env, confidential: Confidential
) -> None:
    code, verifier = confidential_code(env, confidential)
    response = post_form(
        env.browser,
        "/token",
        with_assertion(confidential, assertion(env, confidential), **code_form(code, verifier)),
    )
    assert response.status_code == 200, response.text
    refresh_token = response.json()["refresh_token"]
    for aud in (env.issuer, f"{env.issuer}/token"):
        rotated = post_form(
            env.browser,
            "/token",
            with_assertion(
                confidential,
                assertion(env, confidential, aud=aud),
                grant_type="refresh_token",
                refresh_token=refresh_token,
            ),
        )
        assert rotated.status_code == 200, rotated.text
        refresh_token = rotated.json()["refresh_token"]
    _, challenge = pkce()
    pushed = post_form(
        env.browser,
        "/par",
        with_assertion(
            confidential,
            assertion(env, confidential, aud=env.issuer),
            **auth_params(confidential.client_id, challenge),
        ),
    )
    assert pushed.status_code == 201, pushed.text
    revoked = post_form(
        env.browser,
        "/revoke",
        with_assertion(confidential, assertion(env, confidential), token=refresh_token),
    )
    assert revoked.status_code == 200
    dead = post_form(
        env.browser,
        "/token",
        with_assertion(
            confidential,
            assertion(env, confidential),
            grant_type="refresh_token",
            refresh_token=refresh_token,
        ),
    )
    assert_oauth_error(dead, "invalid_grant")


def test_a_confidential_client_needs_pkce_too(env: Env, confidential: Confidential) -> None:
    _, challenge = pkce()
    for changes in (
        {"code_challenge": None, "code_challenge_method": None},
        {"code_challenge_method": "plain"},
    ):
        params = auth_params(confidential.client_id, challenge, **changes)
        assert_error_redirect(authorize(env.browser, params), env, "invalid_request", params["state"])
        pushed = post_form(
            env.browser,
            "/par",
            with_assertion(confidential, assertion(env, confidential), **params),
        )
        assert_refused(pushed)


BAD_ASSERTIONS = {
    "replayed jti": "replay",
    "expired": "expired",
    "expired long ago": "expired-long-ago",
    "no exp": "no-exp",
    "lifetime too long": "too-long",
    "audience of another server": "aud:https://evil.example/token",
    "issuer with a trailing path": "aud:{issuer}/evil",
    "token endpoint with a trailing slash": "aud:{issuer}/token/",
    "issuer with a trailing slash": "aud:{issuer}/",
    "issuer prefix": "aud:{issuer}0",
    "audience list of another server": "aud-list",
    "signed by another key, same kid": "other-key",
    "attacker key embedded in the header": "embedded-jwk",
    "alg none": "none:none",
    "alg None": "none:None",
    "alg NONE": "none:NONE",
    "alg nOnE": "none:nOnE",
    "ES256 with an empty signature": "empty-signature",
    "ES256 with an all-zero signature": "zero-signature",
    "HS256 keyed with the public key": "hs256",
    "iss of another client": "iss",
    "sub of another client": "sub",
    "no jti": "no-jti",
    "an access-token typ": "typ",
    "garbage": "garbage",
    "empty assertion": "empty",
    "no assertion, only the type": "absent",
    "wrong assertion type": "wrong-type",
    "public-client style, no assertion at all": "public",
}


def _bad_assertion(env: Env, app: Confidential, kind: str) -> dict[str, str]:
    now = int(time.time())
    if kind == "replay":
        spent = assertion(env, app)
        first = post_form(env.browser, "/revoke", with_assertion(app, spent, token="hcb_rt_unknown"))
        assert first.status_code == 200, first.text  # authenticated: the jti is spent
        return with_assertion(app, spent)
    if kind == "expired":
        return with_assertion(app, assertion(env, app, iat=now - 180, exp=now - 60))
    if kind == "expired-long-ago":
        return with_assertion(app, assertion(env, app, iat=now - 86400, exp=now - 86400 + 60))
    if kind == "no-exp":
        return with_assertion(app, assertion(env, app, exp=None))
    if kind == "too-long":
        return with_assertion(app, assertion(env, app, exp=now + 86400))
    if kind.startswith("aud:"):
        return with_assertion(app, assertion(env, app, aud=kind[4:].format(issuer=env.issuer)))
    if kind == "aud-list":
        return with_assertion(app, assertion(env, app, aud=["https://evil.example/token"]))
    if kind == "other-key":
        return with_assertion(app, assertion(env, app, key=jwk.JWK.generate(kty="EC", crv="P-256")))
    if kind == "embedded-jwk":
        attacker = jwk.JWK.generate(kty="EC", crv="P-256")
        header = {"jwk": attacker.export_public(as_dict=True)}
        return with_assertion(app, assertion(env, app, key=attacker, header=header))
    if kind.startswith("none:"):
        return with_assertion(app, unsigned(env, app, kind[5:]))
    if kind == "empty-signature":
        return with_assertion(app, unsigned(env, app, "ES256"))
    if kind == "zero-signature":
        return with_assertion(app, unsigned(env, app, "ES256", _b64(bytes(64))))
    if kind == "hs256":
        return with_assertion(app, hs256_with_public_key(env, app))
    if kind == "iss":
        return with_assertion(app, assertion(env, app, iss="app_other"))
    if kind == "sub":
        return with_assertion(app, assertion(env, app, sub="app_other"))
    if kind == "no-jti":
        return with_assertion(app, assertion(env, app, jti=None))
    if kind == "typ":
        return with_assertion(app, assertion(env, app, header={"typ": "at+jwt"}))
    if kind == "garbage":
        return with_assertion(app, "not.a.jwt")
    if kind == "empty":
        return with_assertion(app, "")
    if kind == "absent":
        return with_assertion(app, None)
    if kind == "wrong-type":
        return {
            **with_assertion(app, assertion(env, app)),
            "client_assertion_type": "urn:ietf:params:oauth:x",
        }
    assert kind == "public"
    return {"client_id": app.client_id}


@pytest.mark.parametrize("kind", BAD_ASSERTIONS.values(), ids=BAD_ASSERTIONS.keys())
def test_bad_client_authentication_is_refused(env: Env, confidential: Confidential, kind: str) -> None:
    code, verifier = confidential_code(env, confidential)
    auth = _bad_assertion(env, confidential, kind)
    before = counts(env.db)
    response = post_form(env.browser, "/token", {**auth, **code_form(code, verifier)})
    assert_oauth_error(response, "invalid_client", 401)
    assert "www-authenticate" in response.headers
    _, challenge = pkce()
    pushed = post_form(env.browser, "/par", {**auth, **auth_params(confidential.client_id, challenge)})
    assert_oauth_error(pushed, "invalid_client", 401)
    assert counts(env.db) == before
    # the code was not spent: the real client still redeems it
    good = post_form(
        env.browser,
        "/token",
        with_assertion(confidential, assertion(env, confidential), **code_form(code, verifier)),
    )
    assert good.status_code == 200, good.text


def test_an_assertion_spent_on_a_failed_grant_cannot_be_replayed(
    env: Env, confidential: Confidential
) -> None:
    """The jti is recorded even when the grant that follows fails (its own commit)."""
    code, verifier = confidential_code(env, confidential)
    signed = assertion(env, confidential)
    failed = post_form(
        env.browser, "/token", with_assertion(confidential, signed, **code_form("hcb_code_forged", verifier))
    )
    assert_oauth_error(failed, "invalid_grant")  # the client authenticated, the grant failed
    replayed = post_form(
        env.browser, "/token", with_assertion(confidential, signed, **code_form(code, verifier))
    )
    assert_oauth_error(replayed, "invalid_client", 401)


def test_a_code_from_a_withdrawn_consent_is_refused(env: Env) -> None:
    verifier, challenge = pkce()
    code = get_code(env.browser, env.client_id, challenge)
    consent_id = env.browser.get("/api/me/consents").json()[0]["consent_id"]
    revoked = _revoke(env.browser, "api", consent_id, page_csrf(env.browser))
    assert revoked.status_code == 200
    before = counts(env.db)
    assert_oauth_error(redeem(env.browser, env.client_id, code, verifier), "invalid_grant")
    assert counts(env.db) == before


def test_a_failed_revocation_with_a_bad_assertion_revokes_nothing(
    env: Env, confidential: Confidential
) -> None:
    code, verifier = confidential_code(env, confidential)
    issued = post_form(
        env.browser,
        "/token",
        with_assertion(confidential, assertion(env, confidential), **code_form(code, verifier)),
    )
    refresh_token = issued.json()["refresh_token"]
    forged = with_assertion(
        confidential,
        assertion(env, confidential, key=jwk.JWK.generate(kty="EC", crv="P-256")),
        token=refresh_token,
    )
    assert_oauth_error(post_form(env.browser, "/revoke", forged), "invalid_client", 401)
    public_style = post_form(
        env.browser, "/revoke", {"client_id": confidential.client_id, "token": refresh_token}
    )
    assert_oauth_error(public_style, "invalid_client", 401)
    still = post_form(
        env.browser,
        "/token",
        with_assertion(
            confidential,
            assertion(env, confidential),
            grant_type="refresh_token",
            refresh_token=refresh_token,
        ),
    )
    assert still.status_code == 200, still.text


def test_a_public_client_cannot_present_an_assertion_for_itself(env: Env, confidential: Confidential) -> None:
    """The public app has no keys: any assertion naming it is refused (no method switching)."""
    public_app = Confidential(env.client_id, confidential.key)
    verifier, challenge = pkce()
    code = get_code(env.browser, env.client_id, challenge)
    response = post_form(
        env.browser,
        "/token",
        {**with_assertion(public_app, assertion(env, public_app)), **code_form(code, verifier)},
    )
    assert_oauth_error(response, "invalid_client", 401)
    assert redeem(env.browser, env.client_id, code, verifier).status_code == 200


# == PAR ======================================================================================


def push(env: Env, client_id: str, challenge: str, **extra: str) -> str:
    response = post_form(env.browser, "/par", auth_params(client_id, challenge, **extra))
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["request_uri"].startswith("urn:ietf:params:oauth:request_uri:")
    assert 0 < body["expires_in"] <= 600
    return str(body["request_uri"])


def test_a_pushed_request_is_used_once(env: Env) -> None:
    verifier, challenge = pkce()
    request_uri = push(env, env.client_id, challenge)
    started = authorize(env.browser, {"client_id": env.client_id, "request_uri": request_uri})
    assert started.status_code == 303 and started.headers["location"].startswith("/consent/")
    screen = Screen(started.headers["location"], env.browser.get(started.headers["location"]).text)
    done = answer(env.browser, screen, screen.form())
    code = query_of(done.headers["location"])["code"][0]
    assert redeem(env.browser, env.client_id, code, verifier).status_code == 200
    before = counts(env.db)
    again = authorize(env.browser, {"client_id": env.client_id, "request_uri": request_uri})
    assert_error_page(again)
    assert counts(env.db) == before


def test_an_expired_pushed_request_is_refused(env: Env) -> None:
    _, challenge = pkce()
    request_uri = push(env, env.client_id, challenge)
    with transaction(env.db) as session:
        session.execute(
            update(AuthorizationRequest)
            .where(AuthorizationRequest.id == request_uri.rsplit(":", 1)[1])
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    assert_error_page(authorize(env.browser, {"client_id": env.client_id, "request_uri": request_uri}))


def test_a_pushed_request_is_bound_to_its_client_and_to_the_first_patient(
    env: Env, bruno: TestClient[Any]
) -> None:
    other_app, _ = register(env.db, env.settings, "Autre Appli")
    _, challenge = pkce()
    request_uri = push(env, env.client_id, challenge)
    before = counts(env.db)
    for params in (
        {"client_id": other_app, "request_uri": request_uri},
        {"client_id": other_app, "request_uri": request_uri, "redirect_uri": REDIRECT},
        {"request_uri": request_uri},
        {"client_id": env.client_id, "request_uri": request_uri.rsplit(":", 1)[1]},  # the bare id
        {"client_id": env.client_id, "request_uri": "urn:ietf:params:oauth:request_uri:unknown"},
    ):
        assert_error_page(authorize(env.browser, params))
    # the first patient who opens it owns it; another patient's browser gets an error page
    mine = authorize(env.browser, {"client_id": env.client_id, "request_uri": request_uri})
    assert mine.status_code == 303
    assert_error_page(authorize(bruno, {"client_id": env.client_id, "request_uri": request_uri}))
    assert counts(env.db) == before


@pytest.mark.parametrize(
    ("changes", "error"),
    [SCOPE_ATTACKS["scope imaging"], SCOPE_ATTACKS["details imaging"]],
    ids=["scope", "details"],
)
def test_par_beyond_the_manifest_gets_the_specific_error(
    env: Env, changes: dict[str, str], error: str
) -> None:
    _, challenge = pkce()
    response = post_form(env.browser, "/par", auth_params(env.client_id, challenge, **changes))
    assert_oauth_error(response, error)


def test_par_refuses_what_authorize_refuses(env: Env) -> None:
    _, challenge = pkce()
    before = counts(env.db)
    for changes in (
        {"code_challenge": None, "code_challenge_method": None},
        {"code_challenge_method": "plain"},
        {"state": None},
        {"redirect_uri": REDIRECT + "/"},
        {"scope": "imaging"},
        {"authorization_details": "[{"},
        {"request_uri": "urn:ietf:params:oauth:request_uri:x"},
    ):
        response = post_form(env.browser, "/par", auth_params(env.client_id, challenge, **changes))
        assert_refused(response)
    unknown = post_form(env.browser, "/par", auth_params("app_unknown", challenge))
    assert_oauth_error(unknown, "invalid_client", 401)
    with env.db() as session:
        assert session.scalar(select(func.count()).select_from(AuthorizationRequest)) == 0
    assert counts(env.db) == before


# == revocation by the patient ================================================================


REVOKE_CSRF = {
    "page, missing token": ("page", "missing", {}),
    "page, wrong token": ("page", "wrong", {}),
    "page, token of another session": ("page", "other-session", {}),
    "page, cross-site fetch": ("page", "valid", {"Sec-Fetch-Site": "cross-site"}),
    "page, foreign origin": ("page", "valid", {"Origin": "https://evil.example"}),
    "api, missing header": ("api", "missing", {}),
    "api, wrong header": ("api", "wrong", {}),
    "api, token of another session": ("api", "other-session", {}),
    "api, cross-site fetch": ("api", "valid", {"Sec-Fetch-Site": "cross-site"}),
    "api, foreign origin": ("api", "valid", {"Origin": "https://evil.example"}),
}


def _revoke(browser: TestClient[Any], where: str, consent_id: str, token: str | None, **headers: str) -> Any:
    if where == "page":
        data = {"csrf_token": token} if token is not None else {}
        return browser.post(
            f"/my/consents/{consent_id}/revoke", data=data, headers=headers, follow_redirects=False
        )
    if token is not None:
        headers["X-CSRF-Token"] = token
    return browser.post(f"/api/me/consents/{consent_id}/revoke", headers=headers, follow_redirects=False)


def assert_still_active(env: Env, consent_id: str, refresh_token: str, browser: TestClient[Any]) -> str:
    row = consent_row(env.db, consent_id)
    assert row.status == "active" and row.revoked_at is None
    listing = {c["consent_id"]: c["status"] for c in browser.get("/api/me/consents").json()}
    assert listing[consent_id] == "active"
    rotated = refresh(browser, row.client_id, refresh_token)
    assert rotated.status_code == 200, rotated.text
    return str(rotated.json()["refresh_token"])


@pytest.mark.parametrize(("where", "kind", "headers"), REVOKE_CSRF.values(), ids=REVOKE_CSRF.keys())
def test_csrf_on_revocation_is_refused(
    env: Env, request: pytest.FixtureRequest, where: str, kind: str, headers: dict[str, str]
) -> None:
    other = request.getfixturevalue("bruno") if kind == "other-session" else None
    token = tokens_for(env)
    events = counts(env.db)["ConsentEvent"]
    forged = _forged_token(kind, page_csrf(env.browser), other)
    response = _revoke(env.browser, where, token["consent_id"], forged, **headers)
    assert response.status_code == 403, response.text
    assert "location" not in response.headers
    assert counts(env.db)["ConsentEvent"] == events
    assert_still_active(env, token["consent_id"], token["refresh_token"], env.browser)


def test_another_patients_consent_cannot_be_revoked(env: Env, bruno: TestClient[Any]) -> None:
    theirs = tokens_for(env, browser=bruno)
    mine = tokens_for(env)
    assert theirs["consent_id"] != mine["consent_id"]
    before = counts(env.db)
    page = _revoke(env.browser, "page", theirs["consent_id"], page_csrf(env.browser))
    assert_error_page(page, 404)
    api = _revoke(env.browser, "api", theirs["consent_id"], page_csrf(env.browser))
    assert api.status_code == 404, api.text
    unknown = _revoke(env.browser, "api", "cns_does_not_exist", page_csrf(env.browser))
    assert unknown.status_code == 404
    assert api.json().get("detail") == unknown.json().get("detail")  # same answer: nothing to learn
    assert counts(env.db) == before
    assert theirs["consent_id"] not in env.browser.get("/my/consents").text
    assert [c["consent_id"] for c in env.browser.get("/api/me/consents").json()] == [mine["consent_id"]]
    assert_still_active(env, theirs["consent_id"], theirs["refresh_token"], bruno)
    # and the patient's own revocation still works, on their own consent only
    own = _revoke(env.browser, "api", mine["consent_id"], page_csrf(env.browser))
    assert own.status_code == 200 and own.json()["status"] == "revoked"
    assert consent_row(env.db, theirs["consent_id"]).status == "active"
