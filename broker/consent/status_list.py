"""Token Status List (IETF OAuth draft "Token Status List", draft-ietf-oauth-status-list).

Each access token carries ``status.status_list.{idx, uri}``; the list at ``uri`` holds, at
``idx``, the token's status in ``bits`` bits. The broker publishes the list as a signed JWT
(``typ`` ``statuslist+jwt``) that holders fetch and cache for ``ttl`` seconds (DESIGN step 9).

Encoding (draft §4.1): entry ``i`` lives in byte ``i * bits // 8``, starting at the least
significant bit; the byte array is compressed with DEFLATE in the ZLIB data format (RFC 1950)
at the highest compression level, then base64url-encoded without padding.

The values (draft §7.1) map to the consent record (DESIGN "Records"): VALID = active,
SUSPENDED = app suspended, INVALID = withdrawn or expired. Nothing here does I/O or reads a
clock; callers pass ``now``.
"""

from __future__ import annotations

import zlib
from collections.abc import Collection, Mapping
from datetime import datetime, timedelta
from enum import IntEnum
from typing import Any

from broker.consent.proofs.jose import ClaimError, MalformedToken, b64url_decode, b64url_encode, verify_jwt
from broker.keys import KeyStore

__all__ = [
    "ALLOWED_BITS",
    "DEFAULT_BITS",
    "INVALID",
    "MAX_DECODED_BYTES",
    "MAX_STATUS_LIST_TOKEN_LENGTH",
    "STATUS_LIST_TYP",
    "SUSPENDED",
    "VALID",
    "Status",
    "StatusList",
    "StatusListError",
    "referenced_token_claim",
    "status_list_token",
    "verify_status_list_token",
]


class Status(IntEnum):
    """Status Types of the draft (§7.1)."""

    VALID = 0x00
    INVALID = 0x01  # irreversible
    SUSPENDED = 0x02  # reversible


VALID, INVALID, SUSPENDED = Status.VALID, Status.INVALID, Status.SUSPENDED

ALLOWED_BITS = (1, 2, 4, 8)
DEFAULT_BITS = 2  # SUSPENDED (0x02) needs two bits
STATUS_LIST_TYP = "statuslist+jwt"

# Decompression cap: 4 MiB is 16 Mi entries at 2 bits, far above one list's share of tokens.
# A list is decompressed in a bounded stream, so a few KiB of zeros cannot become gigabytes.
MAX_DECODED_BYTES = 4 * 1024 * 1024
# A list token is bigger than other JWTs (the compressed list travels in it); still bounded.
MAX_STATUS_LIST_TOKEN_LENGTH = 1024 * 1024
DEFAULT_LIFETIME = timedelta(hours=1)


class StatusListError(ValueError):
    """A status list that cannot be built or decoded."""


def _check_bits(bits: object) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in ALLOWED_BITS:
        raise StatusListError(f"bits must be one of {ALLOWED_BITS}, not {bits!r}")
    return bits


class StatusList:
    """A fixed-size array of ``size`` statuses of ``bits`` bits each."""

    __slots__ = ("_data", "bits", "size")

    def __init__(self, size: int, bits: int = DEFAULT_BITS) -> None:
        self.bits = _check_bits(bits)
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise StatusListError("size must be a positive integer")
        self.size = size
        self._data = bytearray((size * bits + 7) // 8)

    @classmethod
    def from_bytes(cls, data: bytes, bits: int) -> StatusList:
        """The list a byte array holds: every bit is an entry slot, so size = 8·len / bits."""
        bits = _check_bits(bits)
        if not data:
            raise StatusListError("a status list has at least one byte")
        status_list = cls(len(data) * 8 // bits, bits)
        status_list._data[:] = data
        return status_list

    def __len__(self) -> int:
        return self.size

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StatusList):
            return NotImplemented
        return (self.bits, self.size, self._data) == (other.bits, other.size, other._data)

    def __repr__(self) -> str:
        return f"StatusList(size={self.size}, bits={self.bits})"

    def _locate(self, idx: int) -> tuple[int, int]:
        if isinstance(idx, bool) or not isinstance(idx, int):
            raise TypeError("a status list index is an int")
        if not 0 <= idx < self.size:
            raise IndexError(f"index {idx} outside the list of {self.size} entries")
        bit = idx * self.bits
        return bit // 8, bit % 8

    def get(self, idx: int) -> int:
        byte, shift = self._locate(idx)
        return (self._data[byte] >> shift) & ((1 << self.bits) - 1)

    def set(self, idx: int, status: int) -> None:
        byte, shift = self._locate(idx)
        mask = (1 << self.bits) - 1
        if isinstance(status, bool) or not isinstance(status, int) or not 0 <= status <= mask:
            raise StatusListError(f"status {status!r} does not fit in {self.bits} bits")
        self._data[byte] = (self._data[byte] & ~(mask << shift)) | (status << shift)

    def to_bytes(self) -> bytes:
        return bytes(self._data)

    def encode(self) -> str:
        """``lst`` (draft §4.1): ZLIB (RFC 1950) at level 9, base64url without padding."""
        return b64url_encode(zlib.compress(bytes(self._data), level=9))

    def to_json(self) -> dict[str, Any]:
        """The ``status_list`` claim: ``{"bits", "lst"}``."""
        return {"bits": self.bits, "lst": self.encode()}

    @classmethod
    def decode(cls, lst: str, bits: int, *, max_bytes: int = MAX_DECODED_BYTES) -> StatusList:
        """The list ``lst`` encodes; refuses more than ``max_bytes`` once decompressed."""
        bits = _check_bits(bits)
        if not isinstance(lst, str):
            raise StatusListError("lst must be a string")
        try:
            compressed = b64url_decode(lst, "lst")
        except MalformedToken as exc:
            raise StatusListError(str(exc)) from exc
        inflater = zlib.decompressobj(wbits=zlib.MAX_WBITS)  # ZLIB format: header and Adler-32
        try:
            # Stream with a bound: at most max_bytes + 1 bytes ever exist in memory.
            data = inflater.decompress(compressed, max_bytes + 1)
        except zlib.error as exc:
            raise StatusListError("lst is not ZLIB-compressed data") from exc
        if len(data) > max_bytes or inflater.unconsumed_tail:
            raise StatusListError(f"status list larger than {max_bytes} bytes once decompressed")
        if not inflater.eof:
            raise StatusListError("lst is truncated")
        if inflater.unused_data:
            raise StatusListError("lst has data after the compressed stream")
        return cls.from_bytes(data, bits)


def referenced_token_claim(uri: str, idx: int) -> dict[str, Any]:
    """The ``status`` claim of a Referenced Token (draft §6.1)."""
    if isinstance(idx, bool) or not isinstance(idx, int) or idx < 0:
        raise StatusListError("idx must be a non-negative integer")
    if not uri:
        raise StatusListError("uri is required")
    return {"status": {"status_list": {"idx": idx, "uri": uri}}}


def status_list_token(
    keystore: KeyStore,
    *,
    uri: str,
    status_list: StatusList,
    issuer: str,
    now: datetime,
    ttl: timedelta,
    lifetime: timedelta = DEFAULT_LIFETIME,
) -> str:
    """The Status List Token (draft §5.1), signed with the broker's active key.

    ``ttl`` tells holders how long they may cache it before fetching again (how quickly a
    revocation reaches them without the push stream); ``exp`` bounds how long a copy held by
    anyone stays acceptable at all.
    """
    if ttl <= timedelta(0) or lifetime <= timedelta(0):
        raise StatusListError("ttl and lifetime must be positive")
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    iat = int(now.timestamp())
    claims = {
        "sub": uri,  # §5.1: sub is the URI of this list, as the Referenced Tokens name it
        "iss": issuer,
        "iat": iat,
        "exp": iat + int(lifetime.total_seconds()),
        "ttl": int(ttl.total_seconds()),
        "status_list": status_list.to_json(),
    }
    return keystore.sign(claims, STATUS_LIST_TYP)


def verify_status_list_token(
    token: str,
    jwks: Mapping[str, Any],
    *,
    expected_uri: str,
    issuer: str,
    now: datetime,
    leeway: timedelta,
    algorithms: Collection[str] = ("ES256",),
    max_bytes: int = MAX_DECODED_BYTES,
    max_length: int = MAX_STATUS_LIST_TOKEN_LENGTH,
) -> StatusList:
    """The list in a Status List Token, after every check of draft §5.1 and §8.3."""
    verified = verify_jwt(
        token,
        keys=jwks,  # the issuer's published JWKS, chosen by kid
        algorithms=algorithms,  # §5.1: asymmetric only; the broker signs ES256
        types=(STATUS_LIST_TYP,),  # §5.1: typ MUST be statuslist+jwt
        typ_required=True,
        issuer=issuer,
        audiences=None,  # a status list is public to every holder: it has no aud
        required_claims=("sub", "iat", "exp", "status_list"),  # exp: the broker always sets it
        now=now,
        leeway=leeway,
        max_length=max_length,
    )
    claims = verified.claims
    if claims["sub"] != expected_uri:  # §8.3: the list is the one the token referenced
        raise ClaimError(f"sub {claims['sub']!r} is not the status list {expected_uri!r}")
    ttl = claims.get("ttl")
    if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int) or ttl <= 0):
        raise ClaimError("ttl must be a positive integer")
    status_claim = claims["status_list"]
    if not isinstance(status_claim, dict):
        raise ClaimError("status_list is not an object")
    lst, bits = status_claim.get("lst"), status_claim.get("bits")
    if not isinstance(lst, str) or not isinstance(bits, int):
        raise ClaimError("status_list needs bits (an integer) and lst (a string)")
    try:
        return StatusList.decode(lst, bits, max_bytes=max_bytes)
    except StatusListError as exc:
        raise ClaimError(f"status_list: {exc}") from exc
