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
