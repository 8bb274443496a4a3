"""Client authentication with a signed JWT, ``private_key_jwt`` (RFC 7523 §2.2 and §3, RFC 7521 §4.2).

The assertion is verified against the client's registered JWKS only. RFC 7523 §3 items:
``iss`` and ``sub`` are the ``client_id`` (1, 2); ``aud`` names this server (3); ``exp`` is
required (4) and, here, close (a lifetime cap); ``nbf``/``iat`` are checked when present
(5, 6); ``jti`` is required and used once (7); the signature is valid (9).

On ``audiences``: pass the exact strings this server accepts, ideally the issuer identifier
alone. An ``aud`` naming another server's token endpoint must never pass here (the 2025
"audience injection" findings against ``private_key_jwt``), which exact matching ensures.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from broker.consent.proofs.jose import (
    FAPI2_ALGORITHMS,
    ClaimError,
    ReplayedToken,
    verify_jwt,
)
from broker.consent.proofs.replay import ReplayCache

__all__ = [
    "CLIENT_ASSERTION_TYPE",
    "CLIENT_ASSERTION_TYPES",
    "ClientAssertion",
    "verify_client_assertion",
]

# RFC 7523 §2.2: the value of `client_assertion_type` that announces a JWT assertion.
CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

# `typ` is optional in RFC 7523; "JWT" is common, and the RFC 7523 update
# (draft-ietf-oauth-rfc7523bis) names "client-authentication+jwt". Any other type — an access
# token, a DPoP proof, an ID token — is refused (RFC 8725 §3.11).
CLIENT_ASSERTION_TYPES = ("client-authentication+jwt", "JWT")

CLIENT_ASSERTION_LEEWAY = timedelta(seconds=30)
_MAX_JTI_LENGTH = 256


@dataclass(frozen=True)
class ClientAssertion:
    """An accepted assertion: the client it authenticates and what identifies its use."""

    client_id: str
    jti: str
    expires_at: datetime
    issued_at: datetime | None
    alg: str
    kid: str | None
    claims: dict[str, Any]


def verify_client_assertion(
    assertion: str,
    *,
    client_id: str,
    client_jwks: Mapping[str, Any],
    audiences: Collection[str],
    now: datetime,
    replay: ReplayCache,
    max_lifetime: timedelta = timedelta(seconds=300),
    leeway: timedelta = CLIENT_ASSERTION_LEEWAY,
    algorithms: Collection[str] = FAPI2_ALGORITHMS,
) -> ClientAssertion:
    """Verify ``assertion`` as the authentication of ``client_id``; the jti is spent on success."""
    if not client_id:
        raise ValueError("client_id is required")
    verified = verify_jwt(
        assertion,
        keys=client_jwks,  # only the keys the client registered; never header key material
        algorithms=algorithms,
        types=CLIENT_ASSERTION_TYPES,
        typ_required=False,  # RFC 7523 does not require typ; a wrong one is still refused
        issuer=client_id,  # §3 (1): iss is the client_id, compared exactly
        audiences=audiences,  # §3 (3): exact strings, no prefix or substring
        required_claims=("iss", "sub", "aud", "exp", "jti"),  # §3 (1)-(4), (7)
        now=now,
        leeway=leeway,
    )
    claims = verified.claims

    if claims["sub"] != client_id:  # §3 (2)
        raise ClaimError("sub is not the client_id")

    # A lifetime cap: an assertion that stays valid for long is a bearer credential worth
    # stealing, and its jti would have to be remembered for as long.
    exp = claims["exp"]
    if exp > (now + max_lifetime + leeway).timestamp():
        raise ClaimError(f"assertion expires too far in the future (more than {max_lifetime})")
    iat = claims.get("iat")
    if iat is not None and exp - iat > max_lifetime.total_seconds():
        raise ClaimError(f"assertion lifetime exceeds {max_lifetime}")

    jti = claims["jti"]
    if not 0 < len(jti) <= _MAX_JTI_LENGTH:
        raise ClaimError("jti must be a non-empty string of reasonable length")
    expires_at = datetime.fromtimestamp(exp, UTC)
    # §3 (7): one use per (client, jti), remembered until the assertion could no longer pass
    # the exp check. The length prefix keeps "a:b"+"c" apart from "a"+"b:c".
    key = f"client_assertion:{len(client_id)}:{client_id}:{jti}"
    if not replay.first_use(key, expires_at + leeway):
        raise ReplayedToken("client assertion replayed (jti already used)")

    return ClientAssertion(
        client_id=client_id,
        jti=jti,
        expires_at=expires_at,
        issued_at=datetime.fromtimestamp(iat, UTC) if iat is not None else None,
        alg=verified.alg,
        kid=verified.kid,
        claims=claims,
    )
