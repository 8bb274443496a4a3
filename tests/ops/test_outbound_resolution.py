"""Name resolution of the guarded outbound client ends by its deadline (SECURITY S4).

getaddrinfo cannot be interrupted; the client waits for it in a thread, only until then.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace

import pytest

from broker.outbound import DOCUMENT, OutboundPolicy, OutboundRefused, fetch_json


@pytest.fixture
def hanging() -> Iterator[tuple[threading.Event, list[str]]]:
    """A resolver that hangs until released (a dead DNS server); released after the test."""
    release = threading.Event()
    calls: list[str] = []
    yield release, calls
    release.set()


def _policy(release: threading.Event, calls: list[str]) -> OutboundPolicy:
    def resolver(host: str, port: int) -> Sequence[str]:
        calls.append(host)
        release.wait(30)
        return ["93.184.216.34"]

    return OutboundPolicy(resolver=resolver, resolve_timeout=0.5, deadline=5.0)


def test_a_hanging_resolution_is_refused_at_the_resolve_timeout(
    hanging: tuple[threading.Event, list[str]],
) -> None:
    policy = _policy(*hanging)
    started = time.monotonic()
    with pytest.raises(OutboundRefused) as refused:
        fetch_json("https://hanging.example/doc.json", kind=DOCUMENT, policy=policy)
    took = time.monotonic() - started
    assert "took more than 0.5 s" in refused.value.reason
    assert hanging[1] == ["hanging.example"]
    assert 0.4 < took < 2.0, took


def test_the_total_deadline_bounds_resolution_too(hanging: tuple[threading.Event, list[str]]) -> None:
    policy = replace(_policy(*hanging), resolve_timeout=10.0, deadline=0.5)
    started = time.monotonic()
    with pytest.raises(OutboundRefused):
        fetch_json("https://hanging.example/doc.json", kind=DOCUMENT, policy=policy)
    assert time.monotonic() - started < 2.0


def test_a_prompt_resolution_is_checked_as_before() -> None:
    policy = OutboundPolicy(resolver=lambda host, port: ["10.0.0.7"], resolve_timeout=0.5)
    with pytest.raises(OutboundRefused) as refused:
        policy.pinned_address("intranet.example", 443, time.monotonic() + 5)
    assert "refused address" in refused.value.reason
    public = OutboundPolicy(resolver=lambda host, port: ["93.184.216.34"], resolve_timeout=0.5)
    assert public.pinned_address("example.org", 443) == "93.184.216.34"


def test_resolver_errors_are_refusals() -> None:
    def broken(host: str, port: int) -> Sequence[str]:
        raise OSError("[Errno -2] Name or service not known")

    with pytest.raises(OutboundRefused) as refused:
        OutboundPolicy(resolver=broken).pinned_address("nowhere.example", 443)
    assert "Name or service not known" in refused.value.reason
