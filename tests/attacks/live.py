"""One broker as a real process (``broker migrate`` then ``broker serve``) for the attack suite,
with the credentials a client of its API can hold: an app's registration access token, an
operator token, and a patient's logged-in session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.conftest import PG_ENV
from tests.consent.patients.browser import log_in, page_token, sign_up
from tests.e2e.stack import Database, Stack
from tests.factories import app_registration

REDIRECT = "https://attaque.example/callback"
PATIENT = "attaque@example.org"


@dataclass
class LiveBroker(Stack):
    """The e2e stack's process handling, with the broker alone and reached directly."""

    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def issuer(self) -> str:
        return self.url("broker")

    @property
    def env(self) -> dict[str, str]:
        return {**super().env, **self.extra_env}


@dataclass
class Credentials:
    client_id: str  # an app registered through /register
    registration_token: str
    spare_client_id: str  # a second app, for DELETE /register/{client_id}
    spare_registration_token: str
    operator_token: str
    patient_cookies: httpx.Cookies
    patient_csrf: str


@dataclass
class Live:
    base_url: str
    backend: str
    broker: LiveBroker
    credentials: Credentials


def _register(http: httpx.Client, name: str) -> tuple[str, str]:
    answer = http.post("/register", json=app_registration(name=name, redirect_uris=[REDIRECT]))
    assert answer.status_code == 201, answer.text
    body = answer.json()
    return body["client_id"], body["registration_access_token"]


@contextmanager
def live_broker(base: Path, backend: str, **extra_env: str) -> Iterator[Live]:
    """A migrated broker serving on a free port, on SQLite or on PostgreSQL."""
    database = Database.sqlite(base) if backend == "sqlite" else Database.postgresql(os.environ[PG_ENV])
    broker = LiveBroker(base, database, extra_env=extra_env)
    try:
        broker.run("-m", "broker.cli", "migrate")
        operator = broker.run("-m", "broker.cli", "operator-token", "attack-suite").strip()
        broker.start_broker()
        with httpx.Client(base_url=broker.issuer, timeout=30) as http:
            client_id, token = _register(http, "Appli Attaquée")
            spare_id, spare_token = _register(http, "Appli Jetable")
            assert sign_up(http, email=PATIENT).status_code == 303
            assert log_in(http, email=PATIENT).status_code == 303
            csrf = page_token(http, "/account")
            cookies = httpx.Cookies(http.cookies)
        credentials = Credentials(client_id, token, spare_id, spare_token, operator, cookies, csrf)
        yield Live(broker.issuer, backend, broker, credentials)
    finally:
        broker.down()
        database.drop()
