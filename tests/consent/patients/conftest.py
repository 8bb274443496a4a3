"""Fixtures of the patient-account tests: cheaper argon2 settings and a database handle."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pytest
from sqlalchemy.orm import Session, sessionmaker

from broker.db import make_engine, make_session_factory
from broker.settings import Settings


@pytest.fixture
def settings(settings: Settings) -> Settings:  # type: ignore[override]
    # The OWASP minimum (m=19 MiB, t=2, p=1): still argon2id, faster than the defaults.
    return replace(settings, argon2_memory_kib=19456, argon2_time_cost=2, argon2_parallelism=1)


@pytest.fixture
def db(settings: Settings) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(settings.database_url)
    yield make_session_factory(engine)
    engine.dispose()
