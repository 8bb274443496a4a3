"""Proofs the broker verifies: strict JOSE, DPoP (RFC 9449), client assertions (RFC 7523).

Every JWT the broker receives goes through :func:`verify_jwt`; the other verifiers are thin
layers on it that add the claims of their RFC.
"""

from broker.consent.proofs.client_assertion import (
    CLIENT_ASSERTION_TYPE,
    CLIENT_ASSERTION_TYPES,
    ClientAssertion,
    verify_client_assertion,
)
from broker.consent.proofs.dpop import (
    DPOP_MAX_AGE,
    DPOP_TYP,
    DPoPProof,
    access_token_hash,
    normalize_htu,
    verify_dpop_proof,
)
from broker.consent.proofs.jose import (
    FAPI2_ALGORITHMS,
    MAX_LEEWAY,
    MAX_TOKEN_LENGTH,
    SUPPORTED_ALGORITHMS,
    BadSignature,
    ClaimError,
    ExpiredToken,
    JoseError,
    MalformedToken,
    ReplayedToken,
    UnknownKey,
    UseDPoPNonce,
    VerifiedJWT,
    WrongType,
    b64url_decode,
    b64url_encode,
    verify_jwt,
)
from broker.consent.proofs.replay import MemoryReplayCache, ReplayCache, ReplayCacheFull

__all__ = [
    "CLIENT_ASSERTION_TYPE",
    "CLIENT_ASSERTION_TYPES",
    "DPOP_MAX_AGE",
    "DPOP_TYP",
    "FAPI2_ALGORITHMS",
    "MAX_LEEWAY",
    "MAX_TOKEN_LENGTH",
    "SUPPORTED_ALGORITHMS",
    "BadSignature",
    "ClaimError",
    "ClientAssertion",
    "DPoPProof",
    "ExpiredToken",
    "JoseError",
    "MalformedToken",
    "MemoryReplayCache",
    "ReplayCache",
    "ReplayCacheFull",
    "ReplayedToken",
    "UnknownKey",
    "UseDPoPNonce",
    "VerifiedJWT",
    "WrongType",
    "access_token_hash",
    "b64url_decode",
    "b64url_encode",
    "normalize_htu",
    "verify_client_assertion",
    "verify_dpop_proof",
    "verify_jwt",
]
