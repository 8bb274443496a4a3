"""The attack suite runs against a real ``broker serve`` process, once per database backend."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.attacks.live import Live, live_broker
from tests.conftest import backends


@pytest.fixture(scope="session", params=backends())
def live(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    base = tmp_path_factory.mktemp(f"live-{request.param}")
    limits = {
        # Short client time limits, so that the slow-client tests take seconds.
        "BROKER_HEADER_TIMEOUT": "2",
        "BROKER_BODY_TIMEOUT": "3",
        # Rate limits off (where the broker has them; tests/ops tests them): thousands of
        # generated requests from one address would otherwise mostly be answered 429.
        "BROKER_RATE_LIMIT_ADDRESS": "0",
        "BROKER_RATE_LIMIT_CLIENT": "0",
        "BROKER_RATE_LIMIT_PATIENT": "0",
    }
    with live_broker(base, request.param, **limits) as broker:
        yield broker
