"""A cache of remote JWKS documents (S8)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from broker.outbound.errors import OutboundRefused
from broker.outbound.fetch import JWKS, fetch_json
from broker.outbound.transport import OutboundPolicy

#: The UAE profile's bound, which SECURITY.md S8 adopts: a key removed by its owner stops
#: being trusted within twenty minutes.
MAX_TTL = 20 * 60.0
MAX_KEYS = 50


@dataclass(frozen=True)
class _Entry:
    jwks: dict[str, Any] | None  # None: the last fetch failed
    fetched_at: float
    failure: str = ""


def _kids(jwks: dict[str, Any]) -> set[str]:
    return {key["kid"] for key in jwks["keys"] if isinstance(key.get("kid"), str)}


def _checked_jwks(document: dict[str, Any]) -> dict[str, Any]:
    keys = document.get("keys")
    if not isinstance(keys, list) or not all(isinstance(key, dict) for key in keys):
        raise OutboundRefused("the JWKS has no list of keys")
    if len(keys) > MAX_KEYS:
        raise OutboundRefused(f"the JWKS holds more than {MAX_KEYS} keys")
    return {"keys": keys}


class JwksCache:
    """JWKS by URL, thread-safe; one per broker process.

    - a document is kept ``ttl`` seconds (at most 20 minutes), then fetched again;
    - an unknown ``kid`` causes one refetch, and only if the document is at least
      ``min_refetch`` seconds old: a flood of made-up kids costs one fetch per interval;
    - a failed fetch is remembered for ``min_refetch`` seconds, and refused meanwhile without
      any network traffic;
    - jwks_uri fetches refuse cross-origin redirects (S3).
    """

    def __init__(
        self,
        policy: OutboundPolicy,
        *,
        ttl: float = 10 * 60.0,
        min_refetch: float = 60.0,
        max_entries: int = 1000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < ttl <= MAX_TTL:
            raise ValueError(f"ttl must be in (0, {MAX_TTL}] seconds")
        if not 0 <= min_refetch <= ttl:
            raise ValueError("min_refetch must be in [0, ttl]")
        self._policy = policy
        self._ttl = ttl
        self._min_refetch = min_refetch
        self._max_entries = max_entries
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def get(self, url: str, kid: str | None = None) -> dict[str, Any]:
        """The JWKS at ``url`` (``{"keys": [...]}``); raises ``OutboundRefused``.

        ``kid`` is the key the caller is about to look for; it is used only as a set member.
        """
        with self._guard:
            lock = self._locks.setdefault(url, threading.Lock())
        with lock:  # one fetch per URL at a time; other URLs are not held up
            now = self._clock()
            entry = self._entries.get(url)
            if entry is not None and now - entry.fetched_at < self._ttl:
                if entry.jwks is None:
                    if now - entry.fetched_at < self._min_refetch:
                        raise OutboundRefused(f"a recent fetch failed: {entry.failure}")
                elif kid is None or kid in _kids(entry.jwks):
                    return entry.jwks
                elif now - entry.fetched_at < self._min_refetch:
                    return entry.jwks  # the verifier will find no such key
            return self._refresh(url, now)

    def _refresh(self, url: str, now: float) -> dict[str, Any]:
        try:
            jwks = _checked_jwks(fetch_json(url, kind=JWKS, policy=self._policy, same_origin=True))
        except OutboundRefused as exc:
            self._store(url, _Entry(None, now, exc.reason))
            raise
        self._store(url, _Entry(jwks, now))
        return jwks

    def _store(self, url: str, entry: _Entry) -> None:
        with self._guard:
            if url not in self._entries and len(self._entries) >= self._max_entries:
                oldest = min(self._entries, key=lambda u: self._entries[u].fetched_at)
                del self._entries[oldest]
                self._locks.pop(oldest, None)
            self._entries[url] = entry
