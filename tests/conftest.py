"""Shared fixtures. Every test that touches the database runs on SQLite and on PostgreSQL.

The database is never mocked: each backend gets a fresh database (a file for SQLite, a
schema of its own for PostgreSQL) built by running the Alembic migrations once per session;
tables are emptied after each test.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from broker.db import make_engine
from broker.migrate import upgrade
from broker.models import metadata

PG_ENV = "BROKER_TEST_DATABASE_URL"


def backends() -> list[str]:
    names = ["sqlite"]
    if os.environ.get(PG_ENV):
        names.append("postgresql")
    return names


def _with_search_path(url: str, schema: str) -> str:
    parsed = make_url(url)
    return parsed.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
        hide_password=False
    )


@pytest.fixture(scope="session")
def _databases(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """One migrated database per backend for the whole run."""
    urls: dict[str, str] = {}
    cleanups = []
    sqlite_path = tmp_path_factory.mktemp("db") / "broker.db"
    urls["sqlite"] = f"sqlite:///{sqlite_path}"
    pg_url = os.environ.get(PG_ENV)
    if pg_url:
        schema = f"broker_test_{os.getpid()}_{secrets.token_hex(3)}"
        admin = make_engine(pg_url)
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        urls["postgresql"] = _with_search_path(pg_url, schema)

        def drop() -> None:
            with admin.begin() as conn:
                conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
            admin.dispose()

        cleanups.append(drop)
    for url in urls.values():
        upgrade(url)
    yield urls
    for cleanup in cleanups:
        cleanup()


def _empty_tables(url: str) -> None:
    engine = make_engine(url)
    with engine.begin() as conn:
        for table in reversed(metadata.sorted_tables):
            conn.execute(table.delete())
    engine.dispose()


@pytest.fixture(params=backends())
def db_url(request: pytest.FixtureRequest, _databases: dict[str, str]) -> Iterator[str]:
    """The URL of a migrated, empty database; the test runs once per backend."""
    url = _databases[request.param]
    yield url
    _empty_tables(url)


@pytest.fixture
def key_dir(tmp_path: Path) -> Path:
    return tmp_path / "keys"


@pytest.fixture
def settings(db_url: str, key_dir: Path):  # type: ignore[no-untyped-def]
    from broker.settings import Settings

    return Settings(
        database_url=db_url,
        issuer="http://127.0.0.1:8000",
        key_dir=key_dir,
        dev_mode=True,
        secret_key=b"test-secret-key-of-at-least-32-bytes!",
    )


@pytest.fixture
def client(settings):  # type: ignore[no-untyped-def]
    from litestar.testing import TestClient

    from broker.app import create_app

    with TestClient(app=create_app(settings)) as test_client:
        yield test_client


@pytest.fixture
def operator_token(client, settings) -> str:  # type: ignore[no-untyped-def]
    from broker.catalog.operators import create_operator_token
    from broker.db import make_engine, make_session_factory, transaction, utcnow

    engine = make_engine(settings.database_url)
    with transaction(make_session_factory(engine)) as session:
        token = create_operator_token(
            session, name="test-operator", secret_key=settings.secret_key, now=utcnow()
        )
    engine.dispose()
    return token
