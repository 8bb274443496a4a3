"""The attack suite runs against a real ``broker serve`` process, once per database backend."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.attacks.live import Live, live_broker
from tests.conftest import backends


@pytest.fixture(scope="session", params=backends())
def live(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    base = tmp_path_factory.mktemp(f"live-{request.param}")
    # Short client time limits, so that the slow-client tests take seconds.
    with live_broker(base, request.param, BROKER_HEADER_TIMEOUT="2", BROKER_BODY_TIMEOUT="3") as broker:
        yield broker
