"""The in-memory replay cache: one use per key, expiry, bounds, thread safety."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest

from broker.consent.proofs import MemoryReplayCache, ReplayCache, ReplayCacheFull

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def test_satisfies_the_protocol() -> None:
    cache: ReplayCache = MemoryReplayCache()
    assert cache.first_use("k", T0 + timedelta(minutes=1))


def test_first_use_then_replay_then_expiry() -> None:
    clock = Clock()
    cache = MemoryReplayCache(clock=clock)
    assert cache.first_use("a", T0 + timedelta(seconds=60))
    assert not cache.first_use("a", T0 + timedelta(seconds=60))
    assert not cache.first_use("a", T0 + timedelta(hours=1))  # a replay cannot extend or reset
    clock.now = T0 + timedelta(seconds=59)
    assert not cache.first_use("a", T0 + timedelta(seconds=60))
    clock.now = T0 + timedelta(seconds=60)
    assert cache.first_use("a", T0 + timedelta(seconds=120))
    assert len(cache) == 1


def test_bounded_and_fails_closed() -> None:
    clock = Clock()
    cache = MemoryReplayCache(max_entries=3, clock=clock)
    for key in "abc":
        assert cache.first_use(key, T0 + timedelta(seconds=10))
    with pytest.raises(ReplayCacheFull):
        cache.first_use("d", T0 + timedelta(seconds=10))
    assert not cache.first_use("a", T0 + timedelta(seconds=10))  # still a replay, never evicted
    clock.now = T0 + timedelta(seconds=10)
    assert cache.first_use("d", T0 + timedelta(seconds=20))  # expired entries made room
    assert len(cache) == 1


def test_arguments() -> None:
    with pytest.raises(ValueError):
        MemoryReplayCache(max_entries=0)
    with pytest.raises(ValueError):
        MemoryReplayCache().first_use("k", datetime(2026, 1, 1))


def test_concurrent_first_use_has_one_winner() -> None:
    cache = MemoryReplayCache()
    results: list[bool] = []
    barrier = threading.Barrier(16)

    def attempt() -> None:
        barrier.wait()
        results.append(cache.first_use("same-jti", datetime.now(UTC) + timedelta(minutes=1)))

    threads = [threading.Thread(target=attempt) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results.count(True) == 1
