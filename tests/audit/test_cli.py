"""`broker audit sequence | checkpoint | verify` on a real database, tampered with by hand."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import text

from broker.cli import main
from broker.db import transaction
from tests.audit.conftest import World


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, settings: Any) -> None:
    monkeypatch.setenv("BROKER_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("BROKER_KEY_DIR", str(settings.key_dir))
    monkeypatch.setenv("BROKER_SECRET_KEY", settings.secret_key.decode())
    monkeypatch.setenv("BROKER_ISSUER", settings.issuer)
    monkeypatch.setenv("BROKER_DEV_MODE", "true")


def test_sequence_checkpoint_verify(env: None, keystore: Any, world: World, capsys: Any) -> None:
    world.patient("gaelle")
    world.patient("antoine")
    assert main(["audit", "sequence"]) == 0
    assert "events placed" in capsys.readouterr().out
    assert main(["audit", "checkpoint"]) == 0
    assert '"tree_size"' in capsys.readouterr().out
    assert main(["audit", "verify"]) == 0
    assert "audit log verified" in capsys.readouterr().out
    with transaction(world.factory) as session:
        target = session.execute(text("SELECT id FROM audit_events WHERE leaf_index = 7")).scalar_one()
        session.execute(text("UPDATE audit_events SET at = at WHERE id = :id"), {"id": target})
        session.execute(text("UPDATE audit_events SET tag = 'patient:consent:revoked' WHERE id = :id"),
                        {"id": target})
    assert main(["audit", "verify"]) == 1
    captured = capsys.readouterr()
    assert f"entry 7 (event id {target}): edited" in captured.err
