"""Issue 8's acceptance: three brokers as real processes, one app registered once, reaching the
patients of another broker, and a holder that trusts two brokers through their anchor.

* ``T`` is the trust anchor: its operator pins the keys of ``A`` and ``B`` (it vouches for them).
* ``A`` and ``B`` name ``T`` in their ``authority_hints``; ``B`` trusts ``A`` through ``T``
  (``broker federation peer add A --trust-anchor T``) and synchronises every 2 seconds.
* The app registers at ``A`` (RFC 7591, ``private_key_jwt``); ``B`` imports it, re-checked
  against its own charter, and shows where it was registered.
* A patient of ``B`` finds the app in ``B``'s catalog and consents at ``B``; the app
  authenticates to ``B`` with the keys of its registration at ``A`` and gets a token from ``B``.
* The holder (the SDK's verifier) trusts ``A`` and ``B``, each resolved through its entity
  configuration and ``T``'s statement about it, and honours the token.
* ``A``'s operator applies a stricter charter that suspends the app: after ``B``'s next
  synchronisation the app is gone from ``B``'s catalog, and the holder refuses its token.

Every broker has a database of its own: SQLite files, and PostgreSQL schemas when
``BROKER_TEST_DATABASE_URL`` is set.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from broker_sdk import AppClient, AppSuspended, IssuerResolver, federated_verifier
from broker_sdk.errors import OAuthError
from jwcrypto import jwk

from broker.catalog import service as catalog
from broker.charter import load_charter
from broker.db import make_engine, make_session_factory, transaction, utcnow
from tests.catalog.test_enforcement import V2
from tests.conftest import PG_ENV, backends
from tests.consent.test_oauth_flow import PASSWORD, consent, log_in
from tests.e2e.stack import ROOT, Database, free_port
from tests.factories import app_registration, holder_declaration, linked_patient

EMAIL = "gaelle@example.org"
REDIRECT_URI = "http://127.0.0.1:9/callback"  # never contacted: the test reads the 303
LABO = "https://labo-test.example/fhir"
APP_NAME = "Tension Partagée"


@dataclass
class BrokerProcess:
    """One broker: its port, database and keys; ``cli`` runs ``broker …`` against it."""

    name: str
    base: Path
    database: Database
    port: int = field(default_factory=free_port)
    extra_env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "BROKER_DATABASE_URL": self.database.url,
            "BROKER_KEY_DIR": str(self.base / "keys"),
            "BROKER_DEV_MODE": "true",
            "BROKER_ISSUER": self.issuer,
            "BROKER_PORT": str(self.port),
            "BROKER_ARGON2_MEMORY_KIB": "19456",
            "BROKER_ARGON2_TIME_COST": "2",
            "BROKER_ARGON2_PARALLELISM": "1",
            "BROKER_FEDERATION_SYNC_INTERVAL": "0",
            **self.extra_env,
        }

    def cli(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "broker.cli", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if ok:
            assert done.returncode == 0, f"{self.name} {args}: {done.stdout}\n{done.stderr}"
        return done

    def start(self) -> None:
        log = open(self.base / "broker.log", "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "broker.cli", "serve"], cwd=ROOT, env=self.env, stdout=log, stderr=log
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{self.issuer}/jwks.json", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert self.process.poll() is None, self.log()
            assert time.monotonic() < deadline, f"{self.name} did not start:\n{self.log()}"
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log(self) -> str:
        path = self.base / "broker.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def jwks_file(self) -> str:
        path = self.base / "jwks.json"
        path.write_text(httpx.get(f"{self.issuer}/jwks.json").text)
        return str(path)

    def session(self) -> Any:
        return transaction(make_session_factory(make_engine(self.database.url)))


def new_key(kid: str) -> jwk.JWK:
    key = jwk.JWK.generate(kty="EC", crv="P-256")
    return jwk.JWK(**{**key.export(as_dict=True), "kid": kid})


def wait_for(what: str, check: Callable[[], bool], broker: BrokerProcess, timeout: float = 40) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout} s:\n{broker.log()}"
        time.sleep(0.3)


@pytest.fixture(params=backends())
def brokers(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, BrokerProcess]]:
    made: dict[str, BrokerProcess] = {}
    try:
        for name in ("T", "A", "B"):
            base = tmp_path / name
            base.mkdir()
            if request.param == "postgresql":
                database = Database.postgresql(os.environ[PG_ENV])
            else:
                database = Database(f"sqlite:///{base / 'broker.db'}")
            made[name] = BrokerProcess(name, base, database)
        hints = {"BROKER_FEDERATION_AUTHORITY_HINTS": made["T"].issuer}
        made["A"].extra_env.update(hints)
        made["B"].extra_env.update(hints, BROKER_FEDERATION_SYNC_INTERVAL="2")
        for broker in made.values():
            broker.cli("migrate")
        yield made
    finally:
        for broker in made.values():
            broker.stop()
            broker.database.drop()


def seed_b(broker: BrokerProcess) -> None:
    """B's own holder (approved by its operator) and patient, linked to it."""
    charter = load_charter()
    with broker.session() as session:
        now = utcnow()
        catalog.add_holder(
            session,
            body=holder_declaration("labo-test", base_url=LABO),
            charter=charter,
            dev_mode=True,
            now=now,
        )
        catalog.approve_holder(session, identifier="labo-test", operator="test", now=now)
        linked_patient(session, email=EMAIL, password=PASSWORD, holders=["labo-test"], now=now)


def patient_consents(issuer: str, authorization_url: str) -> str:
    """The patient of B logs in at B and accepts on B's consent screen; the redirect to the app."""
    browser = httpx.Client(base_url=issuer, timeout=10)
    log_in(browser, EMAIL)
    answer = consent(browser, authorization_url)
    assert answer.status_code == 303, answer.text
    return answer.headers["location"]


def test_an_app_registered_once_reaches_the_patients_of_a_federated_broker(
    brokers: dict[str, BrokerProcess],
) -> None:
    anchor, a, b = brokers["T"], brokers["A"], brokers["B"]
    seed_b(b)
    for broker in (anchor, a, b):
        broker.start()

    # The anchor's operator vouches for A and B; B's operator trusts A through the anchor.
    anchor.cli("federation", "peer", "add", a.issuer, "--jwks", a.jwks_file(), "--no-import")
    anchor.cli("federation", "peer", "add", b.issuer, "--jwks", b.jwks_file(), "--no-import")
    vouched = json.loads(anchor.cli("federation", "sync").stdout)
    assert [r["ok"] for r in vouched] == [True, True]

    # The app registers once, at A, as a confidential client (private_key_jwt).
    key = new_key("app-key-1")
    body = app_registration(
        APP_NAME, redirect_uris=[REDIRECT_URI], token_endpoint_auth_method="private_key_jwt"
    )
    body["charter_manifest"]["retention"]["days"] = 2000  # passes charter 1.0, not the stricter 2.0
    with AppClient(a.issuer, client_key=key) as at_a:
        registration = at_a.register(body)
    assert registration.verdict.approved
    client_id = registration.client_id

    b.cli(
        "federation",
        "peer",
        "add",
        a.issuer,
        "--trust-anchor",
        anchor.issuer,
        "--anchor-jwks",
        anchor.jwks_file(),
    )
    listed = json.loads(b.cli("federation", "peer", "list").stdout)
    assert listed[0]["entity_id"] == a.issuer and listed[0]["trust_anchor"] == anchor.issuer

    # B's periodic synchroniser imports the app; its page says where it was registered.
    wait_for("the import", lambda: httpx.get(f"{b.issuer}/catalog/{client_id}").status_code == 200, b)
    page = httpx.get(f"{b.issuer}/catalog").text
    assert APP_NAME in page and f"Inscrite auprès de 127.0.0.1:{a.port}" in page
    chain = json.loads(b.cli("federation", "chain", f"{a.issuer}/apps/{client_id}").stdout)
    assert chain["valid"] and chain["trust_anchor"] == anchor.issuer
    assert [(s["iss"], s["sub"]) for s in chain["statements"]] == [
        (a.issuer, f"{a.issuer}/apps/{client_id}"),
        (a.issuer, a.issuer),
        (anchor.issuer, a.issuer),
        (anchor.issuer, anchor.issuer),
    ]

    # A patient of B consents at B; the app proves itself to B with its keys from A.
    app_at_b = AppClient(b.issuer, client_id=client_id, client_key=key)
    request = app_at_b.authorization_request(REDIRECT_URI, scope="lab_results")
    grant = app_at_b.exchange_code(request, patient_consents(b.issuer, request.url), resource=LABO)
    token = grant.access_tokens[LABO]
    with AppClient(b.issuer, client_id=client_id, client_key=new_key("app-key-1")) as impostor:
        with pytest.raises(OAuthError) as caught:
            impostor.refresh(grant)
        assert caught.value.error == "invalid_client"

    # The holder trusts A and B, each resolved through the anchor.
    resolver = IssuerResolver(
        trust_anchor=anchor.issuer, anchor_jwks=httpx.get(f"{anchor.issuer}/jwks.json").json()
    )
    url = f"{LABO}/Observation"

    def holder_verifies() -> Any:
        with federated_verifier(
            [a.issuer, b.issuer], LABO, resolver=resolver, holder_id="labo-test", status_max_ttl=1.0
        ) as verifier:
            proof = grant.dpop_key.proof("GET", url, access_token=token.token) if grant.dpop_key else None
            return verifier.verify(token.token, scheme=token.token_type, dpop=proof, method="GET", url=url)

    verified = holder_verifies()
    assert verified.issuer == b.issuer and verified.client_id == client_id
    assert "lab_results" in verified.categories

    # A's operator puts a stricter charter in force: the app is suspended at its origin …
    applied = json.loads(a.cli("charter", "apply", str(V2)).stdout)
    assert applied["suspended"] == [client_id]
    # … and, after B's next synchronisation, gone from B's catalog, its token refused.
    wait_for("the suspension", lambda: httpx.get(f"{b.issuer}/catalog/{client_id}").status_code == 404, b)
    assert APP_NAME not in httpx.get(f"{b.issuer}/catalog").text
    with pytest.raises(AppSuspended) as suspended:
        holder_verifies()
    assert suspended.value.reason == "suspended"  # B's status list, not a failed resolution
    with pytest.raises(OAuthError):
        app_at_b.refresh(grant)
    app_at_b.close()

    # The operator's view: a chain that does not verify exits 1; removing the peer keeps the row.
    unknown = b.cli("federation", "chain", f"{a.issuer}/apps/app_unknown", ok=False)
    assert unknown.returncode == 1 and json.loads(unknown.stdout)["valid"] is False
    removed = json.loads(b.cli("federation", "peer", "remove", a.issuer).stdout)
    assert removed == {"removed": a.issuer, "suspended_apps": []}  # suspended already
    assert json.loads(b.cli("federation", "peer", "list").stdout) == []
    assert httpx.get(f"{b.issuer}/catalog/{client_id}").status_code == 404
