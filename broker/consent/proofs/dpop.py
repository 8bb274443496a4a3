"""DPoP proofs (RFC 9449): proof of possession of a client key, checked as §4.3 lists.

:func:`verify_dpop_proof` runs the twelve checks of RFC 9449 §4.3 that concern the proof
itself (the first, "one DPoP header", belongs to the HTTP layer): well-formed JWT, ``typ``
``dpop+jwt``, an allow-listed asymmetric ``alg``, signature by the public key in the ``jwk``
header, that key public, ``htm``/``htu`` matching the request, ``nonce`` when the server
requires one, ``iat`` within the window, ``ath`` and the key binding (``cnf.jkt``) when an
access token is presented, and one-time use of ``jti`` (§11.1).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from broker.consent.proofs.jose import (
    FAPI2_ALGORITHMS,
    ClaimError,
    ExpiredToken,
    ReplayedToken,
    UseDPoPNonce,
    b64url_encode,
    verify_jwt,
)
from broker.consent.proofs.replay import ReplayCache

__all__ = [
    "DPOP_MAX_AGE",
    "DPOP_TYP",
    "DPoPProof",
    "access_token_hash",
    "normalize_htu",
    "verify_dpop_proof",
]

DPOP_TYP = "dpop+jwt"

# §11.1: proofs are accepted for a short window after iat, and the jti cache covers exactly
# that window. A client with a skewed clock is told to use a server nonce instead (§8).
DPOP_MAX_AGE = timedelta(seconds=60)
DPOP_LEEWAY = timedelta(seconds=10)  # tolerated iat in the future

_MAX_JTI_LENGTH = 256
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_PERCENT = re.compile(r"%([0-9A-Fa-f]{2})")
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class DPoPProof:
    """An accepted proof; ``jkt`` is the RFC 7638 thumbprint that binds tokens to its key."""

    jkt: str
    jti: str
    htm: str
    htu: str
    issued_at: datetime
    public_jwk: dict[str, Any]
    claims: dict[str, Any]


def access_token_hash(access_token: str) -> str:
    """``ath`` (§4.2): base64url of the SHA-256 of the ASCII access token."""
    try:
        raw = access_token.encode("ascii")
    except UnicodeEncodeError as exc:
        raise ClaimError("access token is not ASCII") from exc
    return b64url_encode(hashlib.sha256(raw).digest())


def _normalize_percent(part: str) -> str:
    # RFC 3986 §6.2.2.1-2: hex digits upper-case; unreserved characters decoded.
    def fix(match: re.Match[str]) -> str:
        char = chr(int(match.group(1), 16))
        return char if char in _UNRESERVED else "%" + match.group(1).upper()

    return _PERCENT.sub(fix, part)


def _remove_dot_segments(path: str) -> str:
    # RFC 3986 §5.2.4, applied as §6.2.2.3 asks.
    out: list[str] = []
    rest = path
    while rest:
        if rest.startswith("../"):
            rest = rest[3:]
        elif rest.startswith("./"):
            rest = rest[2:]
        elif rest.startswith("/./"):
            rest = rest[2:]
        elif rest == "/.":
            rest = "/"
        elif rest.startswith("/../"):
            rest = rest[3:]
            if out:
                out.pop()
        elif rest == "/..":
            rest = "/"
            if out:
                out.pop()
        elif rest in (".", ".."):
            rest = ""
        else:
            start = 1 if rest.startswith("/") else 0
            end = rest.find("/", start)
            end = len(rest) if end == -1 else end
            out.append(rest[:end])
            rest = rest[end:]
    return "".join(out)


def normalize_htu(url: str) -> str:
    """The comparable form of an HTTP URI (§4.3 item 9): query and fragment dropped, then
    RFC 3986 §6.2.2 syntax-based and §6.2.3 scheme-based normalisation."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ClaimError(f"htu {url!r} is not a URI") from exc
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise ClaimError(f"htu {url!r} is not an http(s) URI")
    if parts.username is not None or parts.password is not None:
        raise ClaimError("htu must not carry userinfo")
    host = parts.hostname
    if not host:
        raise ClaimError(f"htu {url!r} has no host")
    if ":" in host:
        host = f"[{host}]"
    authority = host if port is None or port == _DEFAULT_PORTS[scheme] else f"{host}:{port}"
    path = _remove_dot_segments(_normalize_percent(parts.path)) or "/"
    return f"{scheme}://{authority}{path}"


def verify_dpop_proof(
    proof: str,
    *,
    method: str,
    url: str,
    now: datetime,
    replay: ReplayCache,
    access_token: str | None = None,
    expected_jkt: str | None = None,
    nonce: str | None = None,
    max_age: timedelta = DPOP_MAX_AGE,
    leeway: timedelta = DPOP_LEEWAY,
    algorithms: Collection[str] = FAPI2_ALGORITHMS,
) -> DPoPProof:
    """Verify the ``DPoP`` header value of a request to ``method url``.

    ``access_token`` is given when the proof accompanies one (resource requests, §7): then
    ``ath`` must match it. ``expected_jkt`` is the thumbprint the token or grant is bound to
    (``cnf.jkt``, §6). ``nonce`` is the server's current nonce when it requires one (§8, §9).
    """
    verified = verify_jwt(
        proof,
        keys=None,
        embedded_jwk=True,  # §4.3 (6): the proof is signed by the key it carries
        algorithms=algorithms,  # §4.3 (5): asymmetric, allow-listed
        types=(DPOP_TYP,),  # §4.3 (4)
        typ_required=True,
        issuer=None,  # proofs have no iss or aud; htm/htu/ath bind them instead
        audiences=None,
        required_claims=("jti", "htm", "htu", "iat"),  # §4.3 (3)
        now=now,
        leeway=leeway,
    )
    claims = verified.claims

    jti, htm, htu = claims["jti"], claims["htm"], claims["htu"]
    if not isinstance(jti, str) or not 0 < len(jti) <= _MAX_JTI_LENGTH:
        raise ClaimError("jti must be a non-empty string of reasonable length")
    if not isinstance(htm, str) or htm != method:  # methods are case-sensitive (RFC 9110 §9.1)
        raise ClaimError(f"htm {htm!r} does not match the request method {method!r}")
    if not isinstance(htu, str) or normalize_htu(htu) != normalize_htu(url):  # §4.3 (9)
        raise ClaimError(f"htu {htu!r} does not match the request URI")

    if nonce is not None:  # §4.3 (10), §8: the answer to this error is `use_dpop_nonce`
        presented = claims.get("nonce")
        if not isinstance(presented, str) or not hmac.compare_digest(presented, nonce):
            raise UseDPoPNonce("the DPoP proof must carry the server's current nonce")

    # §4.3 (11): iat no later than now + leeway (checked by verify_jwt), no older than max_age.
    iat = claims["iat"]
    if iat < (now - max_age).timestamp():
        raise ExpiredToken("DPoP proof is too old (iat)")

    if access_token is not None:  # §4.3 (12), §7.1
        ath = claims.get("ath")
        if not isinstance(ath, str) or not hmac.compare_digest(ath, access_token_hash(access_token)):
            raise ClaimError("ath does not match the access token")

    jkt = verified.key.thumbprint()
    if expected_jkt is not None and not hmac.compare_digest(jkt, expected_jkt):
        raise ClaimError("the proof's key is not the key the token is bound to (cnf.jkt)")

    issued_at = datetime.fromtimestamp(iat, UTC)
    # §11.1: the jti is remembered for as long as the proof could pass the iat window; the
    # key includes jkt so that nobody can burn another key holder's jti values.
    if not replay.first_use(f"dpop:{jkt}:{jti}", max(issued_at, now) + max_age + leeway):
        raise ReplayedToken("DPoP proof replayed (jti already used)")

    return DPoPProof(
        jkt=jkt,
        jti=jti,
        htm=htm,
        htu=htu,
        issued_at=issued_at,
        public_jwk=verified.key.export_public(as_dict=True),
        claims=claims,
    )
