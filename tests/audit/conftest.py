"""Fixtures of the audit tests: a key store, a session factory, and a log with some events."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from broker.db import make_engine, make_session_factory
from broker.keys import KeyStore
from broker.settings import Settings


@pytest.fixture
def settings(settings: Settings) -> Settings:  # type: ignore[override]
    # No background sequencer in these tests: they sequence when they mean to.
    return replace(settings, audit_interval=0)


@pytest.fixture
def keystore(key_dir: Path) -> KeyStore:
    store = KeyStore(key_dir)
    store.create()
    return store.load()


@pytest.fixture
def factory(settings: Settings) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(settings.database_url)
    yield make_session_factory(engine)
    engine.dispose()


def sequence_all(factory: sessionmaker[Session], keystore: KeyStore, settings: Settings, **kw: Any) -> int:
    from broker.audit.sequencer import sequence

    return sequence(factory, signer=keystore, secret_key=settings.secret_key, issuer=settings.issuer, **kw)


def verify(factory: sessionmaker[Session], keystore: KeyStore, settings: Settings) -> Any:
    from broker.audit.verify import verify_log

    with factory() as session:
        return verify_log(
            session,
            trusted_keys=keystore.public_jwks(),
            secret_key=settings.secret_key,
            issuer=settings.issuer,
        )


# -- a small world: two holders with their signing keys, an app, patients with consents ------

HOLDERS = ("labo-test", "pharma-test")


class World:
    def __init__(self, settings: Settings, factory: sessionmaker[Session]) -> None:
        self.settings = settings
        self.factory = factory
        self.keys: dict[str, Any] = {}
        self.patients: dict[str, str] = {}  # name -> patient id
        self.consents: dict[str, str] = {}  # name -> consent id
        self.client_id = ""

    def patient(self, name: str, *, grants: dict[str, list[str]] | None = None) -> str:
        """A patient linked to both holders, consenting to the app (per holder: categories)."""
        from broker.catalog.models import App
        from broker.consent.patients.service import create_local_account
        from broker.consent.service import Grant, grant_consent, link_patient
        from broker.db import transaction, utcnow

        grants = grants if grants is not None else {"labo-test": ["lab_results"]}
        with transaction(self.factory) as session:
            now = utcnow()
            patient = create_local_account(session, email=f"{name}@example.org", display_name=name,
                                           password_hash="not-a-hash", language="fr", now=now)
            assert patient is not None
            for holder in HOLDERS:
                link_patient(session, patient_id=patient.id, holder_id=holder, now=now)
            app = session.get(App, self.client_id)
            assert app is not None
            consent = grant_consent(
                session, patient_id=patient.id, app=app,
                grants=[Grant(h, "chronic_disease_followup", tuple(c)) for h, c in grants.items()],
                days=30, charter_version="1.0", by=f"patient:{patient.id}", now=now,
            )
            self.patients[name] = patient.id
            self.consents[name] = consent.id
        return self.patients[name]

    def log_in(self, client: Any, name: str) -> None:
        from broker.consent.patients.sessions import start_session
        from broker.db import transaction, utcnow

        with transaction(self.factory) as session:
            session_id = start_session(session, self.patients[name], self.settings, utcnow())
        client.cookies.clear()
        client.cookies.set("broker_session", session_id)

    def receipt(self, name: str, holder: str = "labo-test", **changes: Any) -> str:
        """An access receipt signed by ``holder``, following the SDK's contract."""
        import secrets
        import time

        from jwcrypto import jws
        from jwcrypto.common import json_encode

        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": holder, "aud": self.settings.issuer, "iat": now, "exp": now + 3600,
            "jti": secrets.token_urlsafe(12), "consent_id": self.consents[name],
            "token_jti": "at_" + secrets.token_urlsafe(8), "client_id": self.client_id,
            "categories": ["lab_results"], "record_count": 12, "released_at": now - 5,
        }
        header = {"alg": "ES256", "kid": f"{holder}-key", "typ": "access-receipt+jwt"}
        header.update(changes.pop("header", {}))
        claims.update(changes)
        claims = {k: v for k, v in claims.items() if v is not None}
        key = changes.get("key") or self.keys[holder]
        claims.pop("key", None)
        token = jws.JWS(json_encode(claims))
        token.add_signature(key, alg=None, protected=json_encode(header))
        return str(token.serialize(compact=True))


@pytest.fixture
def world(settings: Settings, factory: sessionmaker[Session]) -> World:
    from jwcrypto import jwk

    from broker.catalog import service
    from broker.charter import load_charter
    from broker.db import transaction, utcnow
    from tests.factories import app_registration, holder_declaration

    charter = load_charter()
    world = World(settings, factory)
    with transaction(factory) as session:
        now = utcnow()
        for holder in HOLDERS:
            key = jwk.JWK.generate(kty="EC", crv="P-256", kid=f"{holder}-key")
            public = key.export_public(as_dict=True)
            public.update(alg="ES256", use="sig")
            world.keys[holder] = key
            service.add_holder(
                session,
                body=holder_declaration(holder, legal_name=holder, base_url=f"https://{holder}.example/fhir",
                                        categories=["lab_results", "medications", "identity"],
                                        jwks={"keys": [public]}),
                charter=charter, dev_mode=True, now=now,
            )
            service.approve_holder(session, identifier=holder, operator="test", now=now)
        registered = service.register_app(session, body=app_registration(), charter=charter,
                                          secret_key=settings.secret_key, dev_mode=True, now=now)
        assert registered.app.status == "approved"
        world.client_id = registered.app.client_id
    return world
