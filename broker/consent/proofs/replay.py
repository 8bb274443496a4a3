"""One-time use of ``jti`` values: client assertions (RFC 7523 §3 item 7) and DPoP proofs (RFC 9449 §11.1).

The verifiers depend only on the :class:`ReplayCache` protocol. :class:`MemoryReplayCache`
serves tests and a single process; several broker processes need a shared store (the
database-backed cache), or a proof replayed against another process would pass.
"""

from __future__ import annotations

import heapq
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol

__all__ = ["MemoryReplayCache", "ReplayCache", "ReplayCacheFull"]


class ReplayCache(Protocol):
    def first_use(self, key: str, expires_at: datetime) -> bool:
        """Record ``key`` until ``expires_at``; True the first time, False on a replay."""
        ...


class ReplayCacheFull(RuntimeError):
    """Every slot holds a live entry: refusing is the only safe answer (evicting would allow a replay)."""


def _utcnow() -> datetime:
    return datetime.now(UTC)


class MemoryReplayCache:
    """A bounded, expiring, thread-safe set of used keys for one process."""

    def __init__(self, max_entries: int = 100_000, clock: Callable[[], datetime] = _utcnow) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be positive")
        self.max_entries = max_entries
        self._clock = clock
        self._expiry: dict[str, datetime] = {}
        self._heap: list[tuple[datetime, str]] = []
        # Litestar runs synchronous handlers in worker threads: check-and-set must be atomic.
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._expiry)

    def first_use(self, key: str, expires_at: datetime) -> bool:
        if expires_at.tzinfo is None:
            raise ValueError("expires_at must be timezone-aware")
        with self._lock:
            now = self._clock()
            self._purge(now)
            if key in self._expiry:
                return False
            if len(self._expiry) >= self.max_entries:
                raise ReplayCacheFull(f"replay cache holds {self.max_entries} live entries")
            self._expiry[key] = expires_at
            heapq.heappush(self._heap, (expires_at, key))
            return True

    def _purge(self, now: datetime) -> None:
        # An entry may go once its token can no longer pass the verifier's time checks.
        while self._heap and self._heap[0][0] <= now:
            expires_at, key = heapq.heappop(self._heap)
            if self._expiry.get(key) == expires_at:
                del self._expiry[key]
