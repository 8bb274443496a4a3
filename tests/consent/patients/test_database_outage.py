"""A patient page while the database is out of reach: a readable page saying to try again in
a moment (503 with ``Retry-After``), never a 500 or a JSON body; the same page works again as
soon as the database is back. The outage is real: the broker's own PostgreSQL role is refused
new connections and its open ones are terminated (other users of the server are untouched)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from broker.db import make_engine
from tests.consent.patients.browser import log_in, sign_up


@pytest.fixture
def own_role(db_url: str) -> Iterator[tuple[str, Any]]:
    """A login role of its own with every right on the test schema: (its URL, an admin engine)."""
    if not db_url.startswith("postgresql"):
        pytest.skip("the outage is made with PostgreSQL roles")
    url = make_url(db_url)
    schema = str(url.query["options"]).split("search_path=", 1)[1]
    role = f"broker_outage_{secrets.token_hex(4)}"
    admin = make_engine(db_url)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE ROLE "{role}" LOGIN'))
        conn.execute(text(f'GRANT USAGE, CREATE ON SCHEMA "{schema}" TO "{role}"'))
        conn.execute(text(f'GRANT ALL ON ALL TABLES IN SCHEMA "{schema}" TO "{role}"'))
        conn.execute(text(f'GRANT ALL ON ALL SEQUENCES IN SCHEMA "{schema}" TO "{role}"'))
    try:
        yield url.set(username=role).render_as_string(hide_password=False), (admin, role)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'ALTER ROLE "{role}" NOLOGIN'))
            conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = :r"), {"r": role})
            conn.execute(text(f'DROP OWNED BY "{role}"'))
            conn.execute(text(f'DROP ROLE "{role}"'))
        admin.dispose()


def _cut(admin: Any, role: str, cut: bool) -> None:
    with admin.begin() as conn:
        conn.execute(text(f'ALTER ROLE "{role}" {"NOLOGIN" if cut else "LOGIN"}'))
        if cut:
            conn.execute(
                text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = :r"), {"r": role}
            )


def test_a_page_during_a_database_outage_says_to_try_again(own_role: tuple[str, Any], tmp_path: Path) -> None:
    from litestar.testing import TestClient

    from broker.app import create_app
    from broker.settings import Settings

    url, (admin, role) = own_role
    settings = Settings(
        database_url=url,
        issuer="http://127.0.0.1:8000",
        key_dir=tmp_path / "keys",
        dev_mode=True,
        secret_key=b"test-secret-key-of-at-least-32-bytes!",
    )
    with TestClient(app=create_app(settings)) as client:
        assert sign_up(client).status_code == 303
        assert log_in(client).status_code == 303
        assert client.get("/my/consents").status_code == 200

        _cut(admin, role, cut=True)
        out = client.get("/my/consents", headers={"Accept-Language": "fr"})
        assert out.status_code == 503, out.text
        assert out.headers["retry-after"] == "1"
        assert out.headers["content-type"].startswith("text/html")
        assert "momentanément indisponible" in out.text and "Rien n'a été changé" in out.text

        _cut(admin, role, cut=False)
        back = client.get("/my/consents")
        assert back.status_code == 200, back.text
