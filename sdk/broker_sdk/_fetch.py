"""What a holder fetches from a broker: its JWKS and its Token Status Lists, both cached.

Keys: cached for the ``Cache-Control`` max-age the broker sends, kept within
[``JWKS_MIN_TTL``, ``JWKS_MAX_TTL``]; an unknown ``kid`` refetches at most once per
``refetch_interval`` (J8, SECURITY S8). Status lists: each cached for the ``ttl`` its
token states (bounded by ``max_ttl``); past that it is fetched again, and when the broker
cannot be reached a copy is still used until ``max_age`` after it was fetched, then never:
the verifier fails closed with :class:`BrokerUnavailable`.
"""

from __future__ import annotations

import re
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from broker_sdk import _jose
from broker_sdk.errors import BrokerUnavailable, TokenInvalid

JWKS_MIN_TTL = 60.0
JWKS_MAX_TTL = 20 * 60.0  # SECURITY S8
MAX_JWKS_BYTES = 64 * 1024
MAX_STATUS_TOKEN_LENGTH = 1024 * 1024
MAX_STATUS_BYTES = 4 * 1024 * 1024
STATUS_TYP = "statuslist+jwt"
_MAX_AGE = re.compile(r"max-age=(\d+)")


def _max_age(response: httpx.Response) -> float | None:
    match = _MAX_AGE.search(response.headers.get("cache-control", ""))
    return float(match.group(1)) if match else None


def get_bounded(http: httpx.Client, url: str, *, limit: int, accept: str) -> httpx.Response:
    """GET ``url`` with a cap on the decoded body; no redirects, no environment proxies."""
    with http.stream("GET", url, headers={"Accept": accept}, follow_redirects=False) as response:
        chunks: list[bytes] = []
        size = 0
        for chunk in response.iter_bytes():
            size += len(chunk)
            if size > limit:
                raise httpx.DecodingError(f"{url}: answer larger than {limit} bytes")
            chunks.append(chunk)
        response._content = b"".join(chunks)  # the body, read once within the cap
    return response


class KeySet:
    """One issuer's JWKS, as ``kid`` -> :class:`VerifyKey`, refreshed as described above."""

    def __init__(
        self,
        jwks_uri: str,
        http: httpx.Client,
        *,
        algorithms: tuple[str, ...],
        refetch_interval: float,
        clock: Callable[[], float],
    ) -> None:
        self.jwks_uri = jwks_uri
        self._http = http
        self._algorithms = algorithms
        self._refetch_interval = refetch_interval
        self._clock = clock
        self._keys: dict[str, _jose.VerifyKey] = {}
        self._fetched_at: float | None = None
        self._expires_at = 0.0
        self._last_attempt = -1e18
        self._lock = threading.Lock()
        self.fetch_count = 0

    def _fetch(self) -> None:
        self._last_attempt = self._clock()
        self.fetch_count += 1
        try:
            response = get_bounded(
                self._http, self.jwks_uri, limit=MAX_JWKS_BYTES, accept="application/jwk-set+json"
            )
            response.raise_for_status()
            document = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise BrokerUnavailable(f"the broker's keys could not be fetched: {exc}", reason="jwks") from exc
        raw = document.get("keys") if isinstance(document, dict) else None
        if not isinstance(raw, list):
            raise BrokerUnavailable("the broker's JWKS is not a key set", reason="jwks")
        keys: dict[str, _jose.VerifyKey] = {}
        duplicates: set[str] = set()
        for member in raw:
            if not isinstance(member, dict) or not isinstance(member.get("kid"), str):
                continue
            try:
                key = _jose.import_public_jwk(member)
            except ValueError:
                continue  # a key we may not use is simply not trusted
            if key.alg not in self._algorithms:
                continue
            if member["kid"] in keys:
                duplicates.add(member["kid"])
            keys[member["kid"]] = key
        for kid in duplicates:  # two keys, one name: trust neither
            del keys[kid]
        now = self._clock()
        ttl = min(max(_max_age(response) or JWKS_MIN_TTL, JWKS_MIN_TTL), JWKS_MAX_TTL)
        self._keys, self._fetched_at, self._expires_at = keys, now, now + ttl

    def get(self, kid: str) -> _jose.VerifyKey:
        """The key named ``kid``; refetches when expired, or once when ``kid`` is unknown."""
        now = self._clock()
        if now >= self._expires_at and now - self._last_attempt >= 1.0:
            with self._lock:
                if self._clock() >= self._expires_at:
                    try:
                        self._fetch()
                    except BrokerUnavailable:
                        if self._fetched_at is None:
                            raise
                        # Keep the keys we have; a broker outage must not stop verification.
                        self._expires_at = self._clock() + JWKS_MIN_TTL
        key = self._keys.get(kid)
        if key is not None:
            return key
        with self._lock:  # J8: one rate-limited refetch for an unknown kid (key rotation)
            key = self._keys.get(kid)
            if key is None and self._clock() - self._last_attempt >= self._refetch_interval:
                self._fetch()
                key = self._keys.get(kid)
        if key is None:
            raise TokenInvalid("no key of the broker has this kid", reason="kid")
        return key

    def cached(self, kid: str) -> _jose.VerifyKey | None:
        """The key if it is already known and fresh, without any fetch."""
        return self._keys.get(kid) if self._clock() < self._expires_at else None


@dataclass
class StatusEntry:
    """One fetched status list."""

    data: bytes
    bits: int
    fetched_at: float
    fresh_until: float
    usable_until: float  # fetched_at + max_age, and never beyond the list token's exp

    def value(self, idx: int) -> int:
        bit = idx * self.bits
        byte = bit >> 3
        if byte >= len(self.data):
            raise TokenInvalid("the status index is outside the status list", reason="status")
        return (self.data[byte] >> (bit & 7)) & ((1 << self.bits) - 1)


def decode_status_list(lst: Any, bits: Any) -> bytes:
    """``lst`` of draft-ietf-oauth-status-list §4.1: ZLIB, base64url; decompressed with a cap."""
    if bits not in (1, 2, 4, 8) or isinstance(bits, bool) or not isinstance(lst, str):
        raise ValueError("status_list needs bits in 1, 2, 4, 8 and lst a string")
    inflater = zlib.decompressobj()
    data = inflater.decompress(_jose.b64url_decode(lst, "lst"), MAX_STATUS_BYTES + 1)
    if len(data) > MAX_STATUS_BYTES or inflater.unconsumed_tail or not inflater.eof:
        raise ValueError("the status list is too large or truncated")
    return data


class StatusLists:
    """Status lists by URI, each verified against its issuer's keys, in a bounded cache."""

    def __init__(
        self,
        http: httpx.Client,
        *,
        clock: Callable[[], float],
        max_ttl: float,
        max_age: float,
        retry_interval: float,
        max_lists: int = 64,
        leeway: float = 30.0,
    ) -> None:
        self._http = http
        self._clock = clock
        self._max_ttl = max_ttl
        self._max_age = max_age
        self._retry_interval = retry_interval
        self._max_lists = max_lists
        self._leeway = leeway
        self._entries: dict[str, StatusEntry] = {}
        self._failed_at: dict[str, float] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self.fetch_count = 0

    def fresh(self, uri: str) -> StatusEntry | None:
        entry = self._entries.get(uri)
        if entry is not None and self._clock() < entry.fresh_until:
            return entry
        return None

    def get(self, uri: str, issuer: str, keys: KeySet) -> StatusEntry:
        entry = self._entries.get(uri)
        now = self._clock()
        if entry is not None and now < entry.fresh_until:
            return entry
        with self._guard:
            lock = self._locks.setdefault(uri, threading.Lock())
        with lock:  # one fetch per list at a time; the others wait for its result
            entry = self._entries.get(uri)
            now = self._clock()
            if entry is not None and now < entry.fresh_until:
                return entry
            failure: BrokerUnavailable | None = None
            if now - self._failed_at.get(uri, -1e18) >= self._retry_interval:
                try:
                    entry = self._fetch(uri, issuer, keys)
                    self._failed_at.pop(uri, None)
                    return entry
                except BrokerUnavailable as exc:
                    self._failed_at[uri] = now
                    failure = exc
            entry = self._entries.get(uri)
            if entry is not None and now < entry.usable_until:
                return entry  # stale but within the bound: the broker is briefly unreachable
            if entry is None and failure is not None:
                raise failure
            raise BrokerUnavailable(
                "the consent's status cannot be known (status list unreachable past its bound)",
                reason="status_stale",
            )

    def _fetch(self, uri: str, issuer: str, keys: KeySet) -> StatusEntry:
        self.fetch_count += 1
        try:
            response = get_bounded(
                self._http, uri, limit=MAX_STATUS_TOKEN_LENGTH, accept="application/statuslist+jwt"
            )
            response.raise_for_status()
            text = response.text.strip()
        except httpx.HTTPError as exc:
            raise BrokerUnavailable(f"the status list could not be fetched: {exc}", reason="status") from exc
        try:
            parsed = _jose.parse(text, max_length=MAX_STATUS_TOKEN_LENGTH)
            _jose.check_header(parsed.header, algorithms=tuple(_jose.ALGORITHMS), typ=STATUS_TYP)
            key = keys.get(parsed.header["kid"])
            if key.alg != parsed.header["alg"]:
                raise TokenInvalid("key and token algorithms differ", reason="alg")
            key.verify(parsed.signing_input, parsed.signature)
            claims = parsed.claims
            now = self._clock()
            if claims.get("iss") != issuer or claims.get("sub") != uri:
                raise ValueError("the status list is not the one the token names (iss/sub)")
            exp, iat, ttl = claims.get("exp"), claims.get("iat"), claims.get("ttl", self._max_ttl)
            if not isinstance(exp, int | float) or isinstance(exp, bool) or exp <= now - self._leeway:
                raise ValueError("the status list has expired")
            if not isinstance(iat, int | float) or isinstance(iat, bool) or iat > now + self._leeway:
                raise ValueError("the status list is issued in the future")
            if not isinstance(ttl, int | float) or isinstance(ttl, bool) or ttl <= 0:
                raise ValueError("ttl must be a positive number")
            body = claims.get("status_list")
            if not isinstance(body, dict):
                raise ValueError("status_list is missing")
            data = decode_status_list(body.get("lst"), body.get("bits"))
        except (TokenInvalid, ValueError, zlib.error) as exc:
            # A forged or broken list is no better than none: fail closed, never trust it.
            raise BrokerUnavailable(f"the status list was refused: {exc}", reason="status_forged") from exc
        entry = StatusEntry(
            data=data,
            bits=body["bits"],
            fetched_at=now,
            fresh_until=now + min(float(ttl), self._max_ttl),
            usable_until=min(now + self._max_age, float(exp)),
        )
        if uri not in self._entries and len(self._entries) >= self._max_lists:
            self._entries.pop(next(iter(self._entries)))  # bounded: the oldest list goes
        self._entries[uri] = entry
        return entry
