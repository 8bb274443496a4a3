"""A peer broker for synchronisation tests: a real broker app behind a loopback HTTP server.

The broker (``create_app`` on a SQLite file of its own) answers every request, so its
documents are the genuine ones; a test may replace what one path answers (``tamper``) to
forge or break a document, or stop the server to play a peer that is down.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from litestar.testing import TestClient

from broker.app import create_app
from broker.catalog import service as catalog
from broker.charter import load_charter
from broker.consent.proofs.jose import b64url_decode, b64url_encode
from broker.db import make_engine, make_session_factory, transaction, utcnow
from broker.migrate import upgrade
from broker.settings import Settings
from tests.factories import app_registration
from tests.outbound_servers import Server, answer, serve

# path → function of (the genuine status, content type, body) → what to answer instead
Tamper = Callable[[int, str, bytes], tuple[int, str, bytes]]


@dataclass
class Peer:
    server: Server
    settings: Settings
    client: TestClient[Any]
    tamper: dict[str, Tamper] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def issuer(self) -> str:
        return self.settings.issuer

    def entity(self, client_id: str) -> str:
        return f"{self.issuer}/apps/{client_id}"

    def jwks(self) -> dict[str, Any]:
        body: dict[str, Any] = self.client.get("/jwks.json").json()
        return body

    def get(self, path: str) -> str:
        return str(self.client.get(path).text)

    def register(self, name: str = "Suivi Glycémie", **changes: Any) -> str:
        """An app registered at the peer (approved under its charter): its client_id."""
        engine = make_engine(self.settings.database_url)
        try:
            with transaction(make_session_factory(engine)) as session:
                registered = catalog.register_app(
                    session,
                    body=app_registration(name, **changes),
                    charter=load_charter(),
                    secret_key=self.settings.secret_key,
                    dev_mode=True,
                    now=utcnow(),
                )
                assert registered.app.status == "approved"
                return registered.app.client_id
        finally:
            engine.dispose()

    def set_status(self, client_id: str, status: str) -> None:
        engine = make_engine(self.settings.database_url)
        try:
            with transaction(make_session_factory(engine)) as session:
                app = catalog.repository.get_app(session, client_id)
                assert app is not None
                app.status = status
        finally:
            engine.dispose()

    def _route(self, handler: BaseHTTPRequestHandler) -> None:
        path = handler.path
        with self.lock:
            if handler.command == "POST":
                length = int(handler.headers.get("Content-Length", "0"))
                response = self.client.post(
                    path,
                    content=handler.rfile.read(length),
                    headers={"Content-Type": handler.headers.get("Content-Type", "")},
                )
            else:
                response = self.client.get(path)
        status = response.status_code
        content_type = response.headers.get("content-type", "").split(";")[0]
        body = response.content
        forge = self.tamper.get(path.split("?", 1)[0])
        if forge is not None:
            status, content_type, body = forge(status, content_type, body)
        answer(handler, body, status=status, content_type=content_type)


@contextmanager
def running_peer(directory: Path, **settings: Any) -> Iterator[Peer]:
    """A peer broker on a loopback port, with a database and keys of its own."""
    with ExitStack() as stack:
        server = stack.enter_context(serve())
        directory.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{directory / 'peer.db'}"
        upgrade(url)
        peer_settings = Settings(
            database_url=url,
            issuer=f"http://127.0.0.1:{server.port}",
            key_dir=directory / "keys",
            dev_mode=True,
            secret_key=b"peer-secret-key-of-at-least-32-bytes!!",
            audit_interval=0,
            federation_sync_interval=0,
            **settings,
        )
        client = stack.enter_context(TestClient(app=create_app(peer_settings)))
        peer = Peer(server, peer_settings, client)
        for path in (
            "/.well-known/openid-federation",
            "/federation/fetch",
            "/federation/list",
            "/federation/trust_mark_status",
            "/jwks.json",
        ):
            server.routes[path] = peer._route
        yield peer


# -- forging -----------------------------------------------------------------------------------


def claims_of(token: str) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(b64url_decode(token.split(".")[1], "payload"))
    return value


def changed_payload(token: str, **changes: Any) -> str:
    """The same header and signature over a changed payload (a forgery)."""
    header, _payload, signature = token.split(".")
    claims = claims_of(token)
    claims.update(changes)
    return f"{header}.{b64url_encode(json.dumps(claims).encode())}.{signature}"


def replace_body(body: bytes) -> Tamper:
    return lambda status, content_type, _old: (status, content_type, body)


def rewrite(token_change: Callable[[str], str]) -> Tamper:
    def forge(status: int, content_type: str, body: bytes) -> tuple[int, str, bytes]:
        return status, content_type, token_change(body.decode("ascii")).encode("ascii")

    return forge


def at(when: datetime) -> int:
    return int(when.timestamp())
