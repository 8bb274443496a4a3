"""Log-in through an external OpenID Connect provider, against a local one over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from litestar.testing import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from broker.app import create_app
from broker.consent.patients.models import ExternalIdentity, Patient, PatientSession
from broker.settings import Settings
from tests.consent.patients.browser import page_token, session_cookie
from tests.consent.patients.oidc_provider import LocalProvider


@pytest.fixture
def provider(settings: Settings) -> Iterator[LocalProvider]:
    with LocalProvider(redirect_uri=settings.issuer + "/login/oidc/callback") as running:
        yield running


@pytest.fixture
def oidc_client(settings: Settings, provider: LocalProvider) -> Iterator[Any]:
    configured = replace(
        settings,
        oidc_issuer=provider.issuer,
        oidc_client_id=provider.client_id,
        oidc_client_secret=provider.client_secret,
        oidc_name="Identité Test",
        oidc_scopes="openid profile",
    )
    with TestClient(app=create_app(configured)) as client:
        yield client


def start(client: Any, provider: LocalProvider, next_path: str = "/account") -> str:
    """Press the button; returns where the provider sends the browser back (path and query)."""
    token = page_token(client, "/login")
    pressed = client.post(
        "/login/oidc", data={"csrf_token": token, "next": next_path}, follow_redirects=False
    )
    assert pressed.status_code == 303, pressed.text
    location = pressed.headers["location"]
    assert location.startswith(provider.issuer + "/authorize?")
    at_provider = httpx.get(location, follow_redirects=False, trust_env=False)  # real loopback HTTP
    assert at_provider.status_code == 302, at_provider.text
    back = urlsplit(at_provider.headers["location"])
    return f"{back.path}?{back.query}"


def _count(db: sessionmaker[Session], model: type[Any]) -> int:
    with db() as session:
        return len(list(session.scalars(select(model))))


def test_the_login_page_offers_the_provider(oidc_client: Any, client: Any) -> None:
    assert "Se connecter avec Identité Test" in oidc_client.get("/login").text
    assert "/login/oidc" not in client.get("/login").text  # not configured: no button


def test_external_log_in_creates_the_patient_once(
    oidc_client: Any, provider: LocalProvider, db: sessionmaker[Session]
) -> None:
    callback = start(oidc_client, provider, "/account?from=oidc")
    response = oidc_client.get(callback, follow_redirects=False)
    assert response.status_code == 303, response.text
    assert response.headers["location"] == "/account?from=oidc"
    assert "Bonjour Gaëlle Externe" in oidc_client.get("/account").text

    # The authorization request used PKCE S256, a state and a nonce; the code was redeemed
    # with the verifier and the client secret.
    [asked] = provider.authorize_requests
    assert asked["code_challenge_method"] == "S256" and asked["state"] and asked["nonce"]
    assert asked["scope"] == "openid profile"
    [redeemed] = provider.token_requests
    assert len(redeemed["code_verifier"]) >= 43

    first_session = session_cookie(oidc_client)
    oidc_client.cookies.clear()
    assert oidc_client.get(start(oidc_client, provider), follow_redirects=False).status_code == 303
    assert session_cookie(oidc_client) != first_session
    with db() as session:
        [identity] = session.scalars(select(ExternalIdentity))
        assert (identity.issuer, identity.subject) == (provider.issuer, provider.subject)
        [patient] = session.scalars(select(Patient))
        assert patient.id == identity.patient_id and patient.email is None and patient.password_hash is None


REASONS = {
    "wrong_nonce": "wrong nonce",
    "wrong_audience": "not for this broker (aud)",
    "bad_signature": "bad signature",
    "wrong_issuer": "wrong issuer",
    "expired": "expired",
    "alg_none": "not a signed compact JWS",
    "hs256_with_secret": "'HS256' is not allowed",
    "embedded_jwk": "no key of the provider matches kid 'attacker'",
    "no_id_token": "no ID token",
}


@pytest.mark.parametrize("mode", sorted(REASONS))
def test_a_bad_id_token_is_refused(
    oidc_client: Any,
    provider: LocalProvider,
    db: sessionmaker[Session],
    mode: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    provider.mode = mode
    response = oidc_client.get(start(oidc_client, provider), follow_redirects=False)
    assert response.status_code == 400
    assert "n'a pas abouti" in response.text
    assert session_cookie(oidc_client) is None
    assert _count(db, Patient) == _count(db, PatientSession) == _count(db, ExternalIdentity) == 0
    assert provider.token_requests  # the code was redeemed; its ID token was what failed
    assert any(REASONS[mode] in record.getMessage() for record in caplog.records), caplog.text


def test_a_changed_state_is_refused(
    oidc_client: Any, provider: LocalProvider, db: sessionmaker[Session]
) -> None:
    callback = start(oidc_client, provider)
    path, query = callback.split("?", 1)
    params = {k: v[0] for k, v in parse_qs(query).items()}
    params["state"] = "forged-" + params["state"]
    response = oidc_client.get(path, params=params, follow_redirects=False)
    assert response.status_code == 400
    assert provider.token_requests == []  # refused before the code was even redeemed
    assert _count(db, Patient) == 0


def test_a_callback_in_another_browser_is_refused(
    settings: Settings, oidc_client: Any, provider: LocalProvider, db: sessionmaker[Session]
) -> None:
    # Login CSRF: an attacker starts a log-in with their own account and sends the victim the
    # callback link. The victim's browser has no matching transaction cookie.
    callback = start(oidc_client, provider)
    oidc_client.cookies.clear()
    response = oidc_client.get(callback, follow_redirects=False)
    assert response.status_code == 400
    assert _count(db, PatientSession) == 0


def test_a_callback_cannot_be_replayed(oidc_client: Any, provider: LocalProvider) -> None:
    callback = start(oidc_client, provider)
    assert oidc_client.get(callback, follow_redirects=False).status_code == 303
    assert oidc_client.get(callback, follow_redirects=False).status_code == 400  # the transaction is spent


def test_an_error_from_the_provider_is_shown_plainly(oidc_client: Any, provider: LocalProvider) -> None:
    callback = start(oidc_client, provider)
    state = parse_qs(callback.split("?", 1)[1])["state"][0]
    response = oidc_client.get(
        "/login/oidc/callback", params={"error": "access_denied", "state": state}, follow_redirects=False
    )
    assert response.status_code == 400
    assert "annulée" in response.text


def test_the_button_needs_a_csrf_token(oidc_client: Any) -> None:
    page_token(oidc_client, "/login")
    assert (
        oidc_client.post("/login/oidc", data={"next": "/account"}, follow_redirects=False).status_code == 403
    )


def test_an_unreachable_provider_gives_a_plain_error(settings: Settings) -> None:
    dead = replace(
        settings,
        oidc_issuer="http://127.0.0.1:9",  # discard port: nothing listens
        oidc_client_id="broker",
        oidc_client_secret="secret",
    )
    with TestClient(app=create_app(dead)) as client:
        token = page_token(client, "/login")
        response = client.post("/login/oidc", data={"csrf_token": token}, follow_redirects=False)
        assert response.status_code == 400
        assert "service d'identité" in response.text
