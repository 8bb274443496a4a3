"""DPoP (RFC 9449): proofs made by apps, proofs checked by holders.

A holder checks a proof as §4.3 and §7.1 list: ``typ`` ``dpop+jwt``, an allow-listed
asymmetric ``alg``, signed by the public key in its ``jwk`` header, ``htm`` and ``htu``
matching the request, ``iat`` within the window, ``ath`` the hash of the presented token,
the key's thumbprint equal to the token's ``cnf.jkt``, and the ``jti`` used once.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from jwcrypto import jwk

from broker_sdk import _jose
from broker_sdk.errors import DPoPProofInvalid, TokenInvalid

__all__ = [
    "DPOP_ALGORITHMS",
    "DPoPKey",
    "MemoryReplayCache",
    "ReplayCache",
    "access_token_hash",
    "normalize_htu",
    "verify_dpop_proof",
]

DPOP_TYP = "dpop+jwt"
DPOP_ALGORITHMS = ("ES256", "ES384", "EdDSA", "PS256")
MAX_PROOF_LENGTH = 8 * 1024
_DEFAULT_PORTS = {"http": 80, "https": 443}
_PERCENT = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


class ReplayCache(Protocol):
    """Remembers proof ``jti`` values; several holder processes need a shared one."""

    def first_use(self, key: str, expires_at: float) -> bool:
        """True the first time ``key`` is seen before ``expires_at``; False afterwards."""
        ...


class MemoryReplayCache:
    """An in-process replay cache, bounded; when full of live entries it refuses (fails closed)."""

    def __init__(self, max_entries: int = 100_000, clock: Callable[[], float] = time.time) -> None:
        self._seen: dict[str, float] = {}
        self._max = max_entries
        self._clock = clock
        self._lock = threading.Lock()

    def first_use(self, key: str, expires_at: float) -> bool:
        with self._lock:
            now = self._clock()
            if key in self._seen and self._seen[key] > now:
                return False
            if len(self._seen) >= self._max:
                self._seen = {k: v for k, v in self._seen.items() if v > now}
                if len(self._seen) >= self._max:
                    return False
            self._seen[key] = expires_at
            return True


def access_token_hash(access_token: str) -> str:
    """``ath`` (§4.2): base64url SHA-256 of the access token."""
    return _jose.b64url_encode(hashlib.sha256(access_token.encode("ascii")).digest())


def normalize_htu(url: str) -> str:
    """Comparable form of an HTTP URI (§4.3 item 9): no query or fragment, scheme and host in
    lower case, default port dropped, percent-encoding normalised (RFC 3986 §6.2.2-3)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname or parts.username is not None:
        raise ValueError(f"{url!r} is not an http(s) URI without userinfo")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    port = parts.port
    authority = host if port in (None, _DEFAULT_PORTS[scheme]) else f"{host}:{port}"

    def fix(match: re.Match[str]) -> str:
        char = chr(int(match.group(1), 16))
        return char if char in _UNRESERVED else "%" + match.group(1).upper()

    return f"{scheme}://{authority}{_PERCENT.sub(fix, parts.path) or '/'}"


@dataclass(frozen=True)
class DPoPProof:
    jkt: str
    jti: str
    iat: float


def verify_dpop_proof(
    proof: str,
    *,
    method: str,
    url: str,
    access_token: str,
    expected_jkt: str,
    replay: ReplayCache,
    now: float,
    max_age: float = 60.0,
    leeway: float = 10.0,
    algorithms: tuple[str, ...] = DPOP_ALGORITHMS,
) -> DPoPProof:
    """Check a DPoP proof presented with a sender-constrained access token (§4.3, §7.1)."""
    try:
        parsed = _jose.parse(proof, max_length=MAX_PROOF_LENGTH)
        alg = _jose.check_header(
            parsed.header, algorithms=algorithms, typ=DPOP_TYP, kid_required=False, embedded_key=True
        )
        embedded = parsed.header.get("jwk")
        if not isinstance(embedded, dict):
            raise TokenInvalid("the proof carries no jwk", reason="dpop")
        try:
            key = _jose.import_public_jwk(embedded, alg=alg)
            jkt = _jose.thumbprint(embedded)
        except ValueError as exc:
            raise TokenInvalid(f"the proof's key is unusable: {exc}", reason="dpop") from exc
        key.verify(parsed.signing_input, parsed.signature)
    except TokenInvalid as exc:
        raise DPoPProofInvalid(f"DPoP proof refused: {exc.description}", reason="dpop") from None
    claims = parsed.claims
    jti, htm, htu, iat = claims.get("jti"), claims.get("htm"), claims.get("htu"), claims.get("iat")
    if not isinstance(jti, str) or not 0 < len(jti) <= 256:
        raise DPoPProofInvalid("DPoP proof: jti is required", reason="dpop")
    if htm != method:
        raise DPoPProofInvalid("DPoP proof: htm does not match the request method", reason="dpop_htm")
    try:
        same_uri = isinstance(htu, str) and normalize_htu(htu) == normalize_htu(url)
    except ValueError:
        same_uri = False
    if not same_uri:
        raise DPoPProofInvalid("DPoP proof: htu does not match the request URI", reason="dpop_htu")
    if isinstance(iat, bool) or not isinstance(iat, int | float):
        raise DPoPProofInvalid("DPoP proof: iat is required", reason="dpop")
    if iat > now + leeway or iat < now - max_age:
        raise DPoPProofInvalid("DPoP proof: iat is outside the accepted window", reason="dpop_iat")
    ath = claims.get("ath")
    if not isinstance(ath, str) or not hmac.compare_digest(ath, access_token_hash(access_token)):
        raise DPoPProofInvalid("DPoP proof: ath does not match the access token", reason="dpop_ath")
    if not hmac.compare_digest(jkt, expected_jkt):
        raise DPoPProofInvalid("DPoP proof: the key is not the one the token is bound to", reason="dpop_jkt")
    if not replay.first_use(f"{jkt}:{jti}", max(iat, now) + max_age + leeway):
        raise DPoPProofInvalid("DPoP proof replayed (jti already used)", reason="dpop_replay")
    return DPoPProof(jkt=jkt, jti=jti, iat=float(iat))


class DPoPKey:
    """An app's DPoP key: makes proofs for the token endpoint and for holders."""

    def __init__(self, key: jwk.JWK | None = None) -> None:
        self.key = key if key is not None else jwk.JWK.generate(kty="EC", crv="P-256")
        if not self.key.has_private:
            raise ValueError("a DPoP key must be a private key")
        self._public = _jose.public_members(self.key)
        self._public.pop("kid", None)
        self.jkt = _jose.thumbprint(self._public)

    @classmethod
    def from_json(cls, text: str) -> DPoPKey:
        return cls(jwk.JWK.from_json(text))

    def to_json(self) -> str:
        """The private key as JWK JSON (store it 0600: it is the token's proof of possession)."""
        return str(self.key.export_private())

    def proof(
        self, method: str, url: str, *, access_token: str | None = None, nonce: str | None = None
    ) -> str:
        claims: dict[str, Any] = {
            "jti": secrets.token_urlsafe(16),
            "htm": method.upper(),
            "htu": url.split("?", 1)[0].split("#", 1)[0],
            "iat": int(time.time()),
        }
        if access_token is not None:
            claims["ath"] = access_token_hash(access_token)
        if nonce is not None:
            claims["nonce"] = nonce
        return _jose.sign(claims, self.key, typ=DPOP_TYP, kid="", jwk=self._public)
