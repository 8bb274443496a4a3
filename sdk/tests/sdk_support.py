"""A real broker for the SDK's tests, and small local servers for forged documents.

The broker runs as its own process (``python -m broker.cli serve``) on a loopback port, on a
migrated SQLite database seeded through the broker's services: two approved holders whose
keys the tests hold, an approved public app, and a patient linked to both holders. The
patient's consent is given by posting the consent form, as a browser would. The broker's
signing key is created by the test (``KeyStore``), so forged tokens can carry a valid
broker signature where the attack needs one.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
import uvicorn
from jwcrypto import jwk
from litestar import Litestar, Request, get
from litestar.middleware import DefineMiddleware

from broker_sdk import BrokerAuthMiddleware, HolderVerifier
from broker_sdk.asgi import SCOPE_KEY

PASSWORD = "une phrase de passe assez longue pour le test"
EMAIL = "gaelle@example.org"
REDIRECT_URI = "http://127.0.0.1:9/callback"  # never contacted: the tests read the 303


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def new_key(kid: str | None = None) -> jwk.JWK:
    key = jwk.JWK.generate(kty="EC", crv="P-256")
    return jwk.JWK(**{**key.export(as_dict=True), "kid": kid or key.thumbprint()})


def public_jwk(key: jwk.JWK) -> dict[str, Any]:
    public: dict[str, Any] = key.export_public(as_dict=True)
    public.update(alg="ES256", use="sig")
    return public


@dataclass
class Holder:
    identifier: str
    base_url: str
    key: jwk.JWK
    link_endpoint: str | None = None


@dataclass
class Broker:
    """A broker process that a test may stop and start again (same database, keys, port)."""

    issuer: str
    port: int
    db_url: str
    key_dir: Path
    secret_key: str
    holders: dict[str, Holder]
    client_id: str
    process: subprocess.Popen[str] | None = None
    log: list[str] = field(default_factory=list)

    @property
    def signing_key(self) -> jwk.JWK:
        ring = json.loads((self.key_dir / "keyring.json").read_text())
        kid = next(k["kid"] for k in ring["keys"] if k["status"] == "active")
        key = jwk.JWK.from_json((self.key_dir / f"{kid}.jwk").read_text())
        return jwk.JWK(**{**key.export(as_dict=True), "kid": kid})

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "BROKER_DATABASE_URL": self.db_url,
            "BROKER_KEY_DIR": str(self.key_dir),
            "BROKER_DEV_MODE": "true",
            "BROKER_SECRET_KEY": self.secret_key,
            "BROKER_PORT": str(self.port),
            "BROKER_ISSUER": self.issuer,
        }

    def start(self) -> None:
        assert self.process is None
        self.process = subprocess.Popen(
            [sys.executable, "-m", "broker.cli", "serve"],
            env=self.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{self.issuer}/jwks.json", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.process.poll() is not None:
                out = self.process.stdout.read() if self.process.stdout else ""
                raise RuntimeError(f"the broker did not start:\n{out}")
            assert time.monotonic() < deadline, "the broker did not start within 30 s"
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stdout:
            self.log.append(self.process.stdout.read())
        self.process = None

    def sql(self, statement: str, **params: Any) -> None:
        from broker.db import make_engine
        from sqlalchemy import text

        engine = make_engine(self.db_url)
        with engine.begin() as conn:
            conn.execute(text(statement), params)
        engine.dispose()


def _app_body(name: str) -> dict[str, Any]:
    from broker.demo import DEMO_APP

    body = copy.deepcopy(DEMO_APP)
    body["client_name"] = name
    body["redirect_uris"] = [REDIRECT_URI]
    return body


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    from argon2 import PasswordHasher
    from broker.catalog import service as catalog
    from broker.charter import load_charter
    from broker.consent.patients.service import create_local_account
    from broker.consent.service import link_patient
    from broker.db import make_engine, make_session_factory, transaction, utcnow
    from broker.keys import KeyStore
    from broker.migrate import upgrade

    root = tmp_path_factory.mktemp("broker")
    db_url = f"sqlite:///{root}/broker.db"
    upgrade(db_url)
    key_dir = root / "keys"
    KeyStore(key_dir).create()
    port = free_port()
    issuer = f"http://127.0.0.1:{port}"
    holders = {
        "labo-a": Holder("labo-a", f"http://127.0.0.1:{free_port()}/fhir", new_key("labo-a-key")),
        "labo-b": Holder("labo-b", f"http://127.0.0.1:{free_port()}/fhir", new_key("labo-b-key")),
    }
    holders["labo-a"].link_endpoint = holders["labo-a"].base_url.replace("/fhir", "/link")
    charter = load_charter()
    secret = "sdk-test-secret-key-of-at-least-32-bytes"
    engine = make_engine(db_url)
    with transaction(make_session_factory(engine)) as session:
        now = utcnow()
        for holder in holders.values():
            body: dict[str, Any] = {
                "identifier": holder.identifier,
                "legal_name": f"Laboratoire {holder.identifier}",
                "base_url": holder.base_url,
                "categories": ["lab_results", "identity"],
                "release_step_categories": [],
                "jwks": {"keys": [public_jwk(holder.key)]},
            }
            if holder.link_endpoint:
                body["link_endpoint"] = holder.link_endpoint
            catalog.add_holder(session, body=body, charter=charter, dev_mode=True, now=now)
            catalog.approve_holder(session, identifier=holder.identifier, operator="test", now=now)
        registered = catalog.register_app(
            session,
            body=_app_body("Suivi Glycémie"),
            charter=charter,
            secret_key=secret.encode(),
            dev_mode=True,
            now=now,
        )
        assert registered.app.status == "approved"
        patient = create_local_account(
            session,
            email=EMAIL,
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
    running = Broker(issuer, port, db_url, key_dir, secret, holders, client_id)
    running.start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def live_broker(broker: Broker) -> Broker:
    """The session broker, started again if a test stopped it."""
    if broker.process is None:
        broker.start()
    return broker


# -- a patient's browser ----------------------------------------------------------------------


def hidden(html: str, name: str) -> str:
    match = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert match, f"no hidden input {name}"
    return match.group(1)


class Browser:
    """The patient: logs in, consents on the consent screen, withdraws consents."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.http = httpx.Client(base_url=broker.issuer, timeout=10)
        page = self.http.get("/login")
        answer = self.http.post(
            "/login",
            data={
                "csrf_token": hidden(page.text, "csrf_token"),
                "email": EMAIL,
                "password": PASSWORD,
                "next": "/",
            },
        )
        assert answer.status_code == 303, answer.text

    def consent(self, authorization_url: str) -> str:
        """Accept everything on the consent screen; the redirect back to the app."""
        screen = self.http.get(authorization_url, follow_redirects=True)
        assert screen.status_code == 200, screen.text
        data = {
            "csrf_token": hidden(screen.text, "csrf_token"),
            "decision": "accept",
            "days": "30",
            "holder": re.findall(r'name="holder" value="([^"]+)"', screen.text),
            "item": re.findall(r'name="item" value="([^"]+)"[^>]*checked', screen.text),
        }
        answer = self.http.post(urlsplit(str(screen.url)).path, data=data)
        assert answer.status_code == 303, answer.text
        return answer.headers["location"]

    def revoke(self, consent_id: str) -> None:
        page = self.http.get("/my/consents")
        answer = self.http.post(
            f"/my/consents/{consent_id}/revoke", data={"csrf_token": hidden(page.text, "csrf_token")}
        )
        assert answer.status_code in (200, 303), answer.text


@pytest.fixture
def browser(live_broker: Broker) -> Iterator[Browser]:
    patient = Browser(live_broker)
    yield patient
    patient.http.close()


def grant(broker: Broker, browser: Browser, holder: str = "labo-a", dpop: Any = None) -> dict[str, Any]:
    """A consent and a token response for ``holder``, by hand (no SDK), PKCE S256."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    state = secrets.token_urlsafe(12)
    query = urlencode(
        {
            "response_type": "code",
            "client_id": broker.client_id,
            "redirect_uri": REDIRECT_URI,
            "state": state,
            "scope": "lab_results",
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
    )
    location = browser.consent(f"{broker.issuer}/authorize?{query}")
    code = parse_qs(urlsplit(location).query)["code"][0]
    headers = {"DPoP": dpop.proof("POST", f"{broker.issuer}/token")} if dpop is not None else {}
    answer = httpx.post(
        f"{broker.issuer}/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT_URI,
            "code_verifier": verifier,
            "client_id": broker.client_id,
            "resource": broker.holders[holder].base_url,
        },
        headers=headers,
    )
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


# -- a holder API: Litestar behind the SDK's middleware, served by uvicorn -------------------------


@get("/fhir/Observation")
async def observations(request: Request[Any, Any, Any]) -> dict[str, Any]:
    token = request.scope[SCOPE_KEY]  # type: ignore[literal-required]
    return {"consent_id": token.consent_id, "handle": token.link_handle}


@get("/fhir/Patient")
async def patient(request: Request[Any, Any, Any]) -> dict[str, Any]:
    return {"resourceType": "Patient"}


@get("/fhir/metadata")
async def metadata() -> dict[str, Any]:
    return {"resourceType": "CapabilityStatement"}


def categories(scope: Any) -> set[str]:
    return {"identity"} if scope["path"].endswith("/Patient") else {"lab_results"}


@pytest.fixture
def holder_api(live_broker: Broker) -> Iterator[str]:
    holder = live_broker.holders["labo-a"]
    verifier = HolderVerifier(live_broker.issuer, holder.base_url, holder_id="labo-a", holder_key=holder.key)
    assert verifier.start_push(wait=10)  # revocations reach this holder within a second
    app = Litestar(
        route_handlers=[observations, patient, metadata],
        middleware=[
            DefineMiddleware(
                BrokerAuthMiddleware,
                verifier=verifier,
                categories=categories,
                public_paths=["/fhir/metadata"],
            )
        ],
    )
    port = urlsplit(holder.base_url).port
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    try:
        yield holder.base_url
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        verifier.close()


# -- a small local server for forged documents ---------------------------------------------------


Handler = Callable[[str, str, dict[str, str], bytes], tuple[int, dict[str, str], bytes]]


class LocalServer:
    """A loopback HTTP server whose answers a test decides; it records every request."""

    def __init__(self, handler: Handler, port: int = 0) -> None:
        self.handler = handler
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        outer = self

        class _Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                outer.requests.append((self.command, self.path, headers, body))
                status, answer_headers, payload = outer.handler(self.command, self.path, headers, body)
                self.send_response(status)
                for name, value in answer_headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), _Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
