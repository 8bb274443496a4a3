"""End to end: a live broker process, a patient's browser, and an app using authlib's client.

The app is a real OAuth client library (authlib's httpx ``OAuth2Client``); the broker runs
as its own process on a loopback port; the patient's browser is an httpx client that keeps
cookies and submits the same forms a person would. The access token is verified with PyJWT,
a JOSE library the broker does not use, against the JWKS fetched over HTTP.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest
from argon2 import PasswordHasher
from authlib.integrations.httpx_client import OAuth2Client

from broker.catalog import service as catalog
from broker.charter import load_charter
from broker.consent.patients.service import create_local_account
from broker.consent.service import link_patient
from broker.db import make_engine, make_session_factory, transaction, utcnow
from tests.factories import TWO_HOLDERS, app_registration, seed_two_holders

PASSWORD = "une phrase de passe assez longue pour le test"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class World:
    issuer: str
    client_id: str
    redirect_uri: str
    holders: dict[str, str]  # identifier -> base URL
    email: str
    db_url: str
    # The broker process and the file its output goes to.
    server: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    log_path: Path | None = None


@pytest.fixture
def world(settings: Any, tmp_path: Any) -> Iterator[World]:
    port = _free_port()
    issuer = f"http://127.0.0.1:{port}"
    redirect_uri = "http://127.0.0.1:9/callback"  # never contacted: the test reads the 303
    charter = load_charter()
    engine = make_engine(settings.database_url)
    factory = make_session_factory(engine)
    holders = dict(TWO_HOLDERS)
    with transaction(factory) as session:
        now = utcnow()
        seed_two_holders(session, charter, now)
        registered = catalog.register_app(
            session,
            body=app_registration(redirect_uris=[redirect_uri]),
            charter=charter,
            secret_key=settings.secret_key,
            dev_mode=True,
            now=now,
        )
        assert registered.app.status == "approved"
        patient = create_local_account(
            session,
            email="gaelle@example.org",
            display_name="Gaëlle",
            password_hash=PasswordHasher().hash(PASSWORD),
            language="fr",
            now=now,
        )
        assert patient is not None
        for identifier in holders:
            link_patient(session, patient_id=patient.id, holder_id=identifier, now=now)
        client_id = registered.app.client_id
    engine.dispose()

    log_path = Path(tmp_path) / "broker.log"
    server = start_broker(settings, issuer, log_path)
    try:
        yield World(
            issuer, client_id, redirect_uri, holders, "gaelle@example.org", settings.database_url, server, log_path
        )
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=15)


def start_broker(settings: Any, issuer: str, log_path: Path, *serve_args: str) -> subprocess.Popen[bytes]:
    """``broker serve`` on ``issuer``'s port for the database of ``settings``, once it answers;
    its output goes to ``log_path`` (a file, not a pipe: a pipe nobody reads would stop the
    server once full of log lines)."""
    env = {
        **os.environ,
        "BROKER_DATABASE_URL": settings.database_url,
        "BROKER_KEY_DIR": str(settings.key_dir),
        "BROKER_DEV_MODE": "true",
        "BROKER_SECRET_KEY": settings.secret_key.decode(),
        "BROKER_PORT": str(urlsplit(issuer).port),
        "BROKER_ISSUER": issuer,
    }
    with log_path.open("wb") as log_file:
        server = subprocess.Popen(
            [sys.executable, "-m", "broker.cli", "serve", *serve_args],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{issuer}/jwks.json", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise AssertionError(f"the broker did not start:\n{log_path.read_text()}")
        time.sleep(0.1)


def hidden(html: str, name: str) -> str:
    match = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert match, f"no hidden input {name}"
    return match.group(1)


def log_in(browser: httpx.Client, email: str) -> None:
    page = browser.get("/login")
    response = browser.post(
        "/login",
        data={
            "csrf_token": hidden(page.text, "csrf_token"),
            "email": email,
            "password": PASSWORD,
            "next": "/",
        },
    )
    assert response.status_code == 303, response.text


def consent(
    browser: httpx.Client,
    authorization_url: str,
    decision: str = "accept",
    holders: list[str] | None = None,
    items: list[str] | None = None,
) -> httpx.Response:
    screen = browser.get(authorization_url, follow_redirects=True)
    assert screen.status_code == 200, screen.text
    assert "Glycémie SAS" in screen.text  # who publishes it, before any choice
    assert screen.headers["x-frame-options"] == "DENY"
    data: dict[str, Any] = {
        "csrf_token": hidden(screen.text, "csrf_token"),
        "decision": decision,
        "days": "90",
        "holder": holders
        if holders is not None
        else re.findall(r'name="holder" value="([^"]+)"', screen.text),
        "item": items
        if items is not None
        else re.findall(r'name="item" value="([^"]+)"[^>]*checked', screen.text),
    }
    action = urlsplit(str(screen.url)).path
    return browser.post(action, data=data)


def app_client(world: World) -> OAuth2Client:
    return OAuth2Client(
        client_id=world.client_id,
        redirect_uri=world.redirect_uri,
        token_endpoint_auth_method="none",
        code_challenge_method="S256",
        scope="lab_results device_measurements",
    )


def verify_with_pyjwt(token: str, world: World, audience: str) -> dict[str, Any]:
    jwks = httpx.get(f"{world.issuer}/jwks.json").json()
    header = jwt.get_unverified_header(token)
    assert header["typ"] == "at+jwt"
    key = next(k for k in jwks["keys"] if k["kid"] == header["kid"])
    claims: dict[str, Any] = jwt.decode(
        token,
        key=jwt.PyJWK(key),
        algorithms=["ES256"],
        audience=audience,
        issuer=world.issuer,
        options={"require": ["iss", "sub", "aud", "exp", "iat", "jti", "client_id", "scope"]},
    )
    return claims


def test_code_flow_tokens_per_holder_refresh_and_revocation(world: World) -> None:
    browser = httpx.Client(base_url=world.issuer)
    log_in(browser, world.email)
    app = app_client(world)
    verifier = secrets.token_urlsafe(48)
    url, state = app.create_authorization_url(f"{world.issuer}/authorize", code_verifier=verifier)
    answer = consent(browser, url)
    assert answer.status_code == 303
    location = answer.headers["location"]
    query = parse_qs(urlsplit(location).query)
    assert query["state"] == [state]
    assert query["iss"] == [world.issuer]  # RFC 9207

    labo = world.holders["labo-test"]
    token = app.fetch_token(
        f"{world.issuer}/token", authorization_response=location, code_verifier=verifier, resource=labo
    )
    claims = verify_with_pyjwt(token["access_token"], world, labo)
    assert claims["client_id"] == world.client_id
    assert claims["exp"] - claims["iat"] <= 300
    assert claims["sub"].startswith("p_") and "gaelle" not in claims["sub"]
    assert set(claims["scope"].split()) == {"lab_results"}  # labo-test serves lab_results only
    assert claims["authorization_details"][0]["type"] == "health_data"
    assert claims["consent_id"] == token["consent_id"]
    assert claims["link_handle"].startswith("lnk_")
    status = claims["status"]["status_list"]
    assert status["uri"].startswith(f"{world.issuer}/status/")
    holders_in_answer = {d["holder"]: d["locations"] for d in token["authorization_details"]}
    assert holders_in_answer == {h: [u] for h, u in world.holders.items()}

    # a token for the second holder, by refresh with another resource; the refresh token rotates
    first_refresh = token["refresh_token"]
    pharma = world.holders["pharma-test"]
    second = app.refresh_token(f"{world.issuer}/token", refresh_token=first_refresh, resource=pharma)
    assert second["refresh_token"] != first_refresh
    claims2 = verify_with_pyjwt(second["access_token"], world, pharma)
    assert claims2["sub"] == claims["sub"]
    assert claims2["link_handle"] != claims["link_handle"]  # one handle per holder

    # the rotated token is spent: reusing it revokes the whole family
    reuse = httpx.post(
        f"{world.issuer}/token",
        data={"grant_type": "refresh_token", "refresh_token": first_refresh, "client_id": world.client_id},
    )
    assert reuse.status_code == 400 and reuse.json()["error"] == "invalid_grant"
    after_reuse = httpx.post(
        f"{world.issuer}/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": second["refresh_token"],
            "client_id": world.client_id,
        },
    )
    assert after_reuse.json()["error"] == "invalid_grant"

    # a new grant, then the app revokes its own refresh token (RFC 7009)
    verifier = secrets.token_urlsafe(48)
    url, _ = app.create_authorization_url(f"{world.issuer}/authorize", code_verifier=verifier)
    location = consent(browser, url).headers["location"]
    token = app.fetch_token(
        f"{world.issuer}/token", authorization_response=location, code_verifier=verifier, resource=labo
    )
    revoked = httpx.post(
        f"{world.issuer}/revoke", data={"token": token["refresh_token"], "client_id": world.client_id}
    )
    assert revoked.status_code == 200
    dead = httpx.post(
        f"{world.issuer}/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": token["refresh_token"],
            "client_id": world.client_id,
        },
    )
    assert dead.json()["error"] == "invalid_grant"


def _status_of(world: World, claims: dict[str, Any]) -> int:
    reference = claims["status"]["status_list"]
    text = httpx.get(reference["uri"]).text
    from broker.consent.status_list import StatusList

    payload = jwt.decode(text, options={"verify_signature": False})
    entries = StatusList.decode(payload["status_list"]["lst"], payload["status_list"]["bits"])
    return entries.get(reference["idx"])


def test_patient_revocation_reaches_status_list_and_refresh(world: World) -> None:
    browser = httpx.Client(base_url=world.issuer)
    log_in(browser, world.email)
    app = app_client(world)
    verifier = secrets.token_urlsafe(48)
    url, _ = app.create_authorization_url(f"{world.issuer}/authorize", code_verifier=verifier)
    location = consent(browser, url).headers["location"]
    token = app.fetch_token(
        f"{world.issuer}/token",
        authorization_response=location,
        code_verifier=verifier,
        resource=world.holders["labo-test"],
    )
    claims = verify_with_pyjwt(token["access_token"], world, world.holders["labo-test"])
    assert _status_of(world, claims) == 0  # VALID

    page = browser.get("/my/consents")
    assert "Suivi Glycémie" in page.text
    revoke = browser.post(
        f"/my/consents/{token['consent_id']}/revoke", data={"csrf_token": hidden(page.text, "csrf_token")}
    )
    assert revoke.status_code == 303
    assert _status_of(world, claims) == 1  # INVALID at once (list not cached by this client)
    refused = httpx.post(
        f"{world.issuer}/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": token["refresh_token"],
            "client_id": world.client_id,
        },
    )
    assert refused.json()["error"] == "invalid_grant"
    listing = browser.get("/api/me/consents").json()
    assert [c["status"] for c in listing] == ["revoked"]
