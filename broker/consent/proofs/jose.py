"""Strict verification of compact JWS tokens carrying JWT claims: the one door of every verifier.

Client assertions (RFC 7523), DPoP proofs (RFC 9449) and status list tokens all pass through
:func:`verify_jwt`. It spells out every check in the order it runs, so a reviewer can hold it
against the attack table of ``SECURITY.md`` A4 (rows J1–J19, named in the comments below):

1. size cap before any decoding (J13); compact serialization only, exactly three segments;
   JWE (five segments, J10/J14/J15) and JSON serialization (J18) refused;
2. strict base64url (alphabet, no padding, canonical) and strict JSON: objects only,
   duplicate members refused (J18), no ``NaN``/``Infinity``;
3. header: ``alg`` from an explicit asymmetric allow-list, case-sensitive, so ``none`` in any
   casing and every ``HS*`` are refused (J1, J3, J4, J15); ``typ`` compared to the expected
   type (J10); ``crit`` refused unless understood (J12); ``b64``, ``zip``, ``enc`` refused;
4. key: chosen only from the caller's trusted set by ``kid`` (J5–J8), never from ``jwk``,
   ``jku``, ``x5u`` or ``x5c`` — except an embedded ``jwk`` where the caller asks for one (DPoP);
   key type and curve must fit ``alg``, the key's own ``alg`` must equal the header's (J17),
   RSA keys below 2048 bits and symmetric keys refused (J4, J16), private keys refused;
5. signature: non-empty, of the exact length ``alg`` gives (J2), ECDSA ``r`` and ``s`` in
   ``[1, n-1]`` (J9), then verified over the segments exactly as received;
6. claims: a JSON object; ``exp``/``nbf``/``iat`` numeric and checked with an explicit leeway of
   at most 60 s (J11); required claims present; ``iss`` and ``aud`` compared by exact string
   equality, never prefix or substring (J11).

Secrets are never compared here (J19 concerns opaque secrets; the callers use
:func:`hmac.compare_digest` for ``ath``, ``jkt`` and nonces).

Exception tree::

    JoseError
    ├── MalformedToken      not a well-formed compact JWS/JWT, or a refused construction
    ├── WrongType           ``typ`` or ``alg`` not the expected ones
    ├── BadSignature        no acceptable key, or the signature does not verify
    │   └── UnknownKey      ``kid`` not in the trusted set (the caller may refetch once)
    ├── ExpiredToken        ``exp`` passed (beyond leeway), or too old for its use
    └── ClaimError          a claim is missing, of the wrong type or value
        ├── ReplayedToken   ``jti`` seen before
        └── UseDPoPNonce    the server's DPoP nonce is missing or stale (RFC 9449 §8)
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cryptography.exceptions import InvalidSignature
from jwcrypto import jwk
from jwcrypto.common import JWException
from jwcrypto.jwa import JWA

__all__ = [
    "FAPI2_ALGORITHMS",
    "MAX_LEEWAY",
    "MAX_TOKEN_LENGTH",
    "SUPPORTED_ALGORITHMS",
    "BadSignature",
    "ClaimError",
    "ExpiredToken",
    "JoseError",
    "MalformedToken",
    "ReplayedToken",
    "UnknownKey",
    "UseDPoPNonce",
    "VerifiedJWT",
    "WrongType",
    "b64url_decode",
    "b64url_encode",
    "verify_jwt",
]

# J13: tokens longer than this are refused before any decoding. Access tokens, client
# assertions and DPoP proofs stay far below it; status list tokens pass a larger cap.
MAX_TOKEN_LENGTH = 8 * 1024

# J11 / FAPI2: clock skew tolerated on exp/nbf/iat; callers pass their own, never more.
MAX_LEEWAY = timedelta(seconds=60)

# Asymmetric algorithms only (J1, J3, J4, J15): no "none", no HMAC, no key-management algs.
# Each maps to the key type and curves it may use and to its signature length in bytes
# (None: the RSA modulus length).
_ALGORITHMS: dict[str, tuple[str, frozenset[str], int | None]] = {
    "ES256": ("EC", frozenset({"P-256"}), 64),
    "ES384": ("EC", frozenset({"P-384"}), 96),
    "ES512": ("EC", frozenset({"P-521"}), 132),
    "EdDSA": ("OKP", frozenset({"Ed25519", "Ed448"}), None),
    "Ed25519": ("OKP", frozenset({"Ed25519"}), 64),
    "PS256": ("RSA", frozenset(), None),
    "PS384": ("RSA", frozenset(), None),
    "PS512": ("RSA", frozenset(), None),
    "RS256": ("RSA", frozenset(), None),
    "RS384": ("RSA", frozenset(), None),
    "RS512": ("RSA", frozenset(), None),
}
SUPPORTED_ALGORITHMS: frozenset[str] = frozenset(_ALGORITHMS)

# The FAPI 2.0 Security Profile's set (§5.4): PS256, ES256, EdDSA; we add the larger ES/PS
# sizes. RS* (PKCS#1 v1.5) is supported but must be asked for explicitly.
FAPI2_ALGORITHMS: tuple[str, ...] = ("ES256", "ES384", "ES512", "PS256", "PS384", "PS512", "EdDSA")

_ED_SIGNATURE_LENGTH = {"Ed25519": 64, "Ed448": 114}

# Orders of the NIST curves (FIPS 186-4 / SEC 2). J9: an ECDSA r or s outside [1, n-1] is
# refused here before the library sees it, so the "psychic signature" (r = s = 0, or = n) is
# refused even if a future backend regressed.
_CURVE_ORDER = {
    "P-256": 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
    "P-384": int(
        "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973",
        16,
    ),
    "P-521": int(
        "01FF" + "FFFFFFFF" * 7 + "FFFFFFFA51868783BF2F966B7FCC0148F709A5D03BB5C9B8899C47AEBB6FB71E91386409",
        16,
    ),
}

_MIN_RSA_BITS = 2048  # J16 (and NIST SP 800-131A)
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k", "priv"})
_B64URL = re.compile(r"[A-Za-z0-9_-]*")
# Header parameters that never belong in the tokens we accept: b64 (RFC 7797 unencoded
# payload), zip (JWE-only compression, J14) and enc (a JWE header).
_REFUSED_HEADERS = ("b64", "zip", "enc")
_TIME_CLAIMS = ("exp", "nbf", "iat")


class JoseError(Exception):
    """A token was refused; the message says which check failed (never any key material)."""


class MalformedToken(JoseError):
    """Not a well-formed compact JWS carrying a JSON claims set, or a refused construction."""


class WrongType(JoseError):
    """The ``typ`` header or the algorithm is not one this verifier accepts."""


class BadSignature(JoseError):
    """No acceptable key, or the signature does not verify."""


class UnknownKey(BadSignature):
    """The ``kid`` is not in the trusted key set; the caller may refetch the set once."""


class ExpiredToken(JoseError):
    """The token expired (beyond leeway) or is too old for its use."""


class ClaimError(JoseError):
    """A claim is missing, has the wrong type, or the wrong value."""


class ReplayedToken(ClaimError):
    """The ``jti`` was used before."""


class UseDPoPNonce(ClaimError):
    """The DPoP proof lacks the server's current nonce (answer ``use_dpop_nonce``)."""


@dataclass(frozen=True)
class VerifiedJWT:
    """What :func:`verify_jwt` accepted."""

    header: dict[str, Any]
    claims: dict[str, Any]
    alg: str
    kid: str | None
    key: jwk.JWK  # the public key that verified the signature


def b64url_encode(data: bytes) -> str:
    """Base64url without padding (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(segment: str, what: str = "segment") -> bytes:
    """Strict base64url: the URL-safe alphabet only, no padding, canonical trailing bits.

    Canonical form matters: otherwise several strings decode to the same bytes, and a token
    could be altered without changing what it says.
    """
    if not _B64URL.fullmatch(segment) or len(segment) % 4 == 1:
        raise MalformedToken(f"{what} is not base64url without padding")
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError) as exc:
        raise MalformedToken(f"{what} is not base64url") from exc
    if b64url_encode(raw) != segment:
        raise MalformedToken(f"{what} is not in canonical base64url")
    return raw


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for name, value in pairs:
        if name in obj:  # J18: RFC 7515 §5.2 lets us refuse, and parsers disagree on which wins
            raise MalformedToken(f"duplicate JSON member {name!r}")
        obj[name] = value
    return obj


def _refuse_constant(name: str) -> Any:
    raise MalformedToken(f"JSON constant {name} is not allowed")


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        text = raw.decode("utf-8", errors="strict")
        value = json.loads(text, object_pairs_hook=_refuse_duplicates, parse_constant=_refuse_constant)
    except MalformedToken:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise MalformedToken(f"{what} is not valid UTF-8 JSON") from exc
    if not isinstance(value, dict):
        raise MalformedToken(f"{what} is not a JSON object")
    return value


def _normalize_typ(value: str) -> str:
    # RFC 7515 §4.1.9: media type names are case-insensitive, and "application/" may be
    # omitted when no other "/" appears in the value.
    lowered = value.lower()
    if lowered.startswith("application/") and "/" not in lowered[len("application/") :]:
        return lowered[len("application/") :]
    return lowered


def _check_header(
    header: dict[str, Any],
    *,
    algorithms: Collection[str],
    types: Collection[str],
    typ_required: bool,
    understood_crit: Collection[str],
) -> str:
    alg = header.get("alg")
    if not isinstance(alg, str):
        raise MalformedToken("header has no alg")
    if alg not in algorithms:  # exact, case-sensitive: "none", "None", "HS256" all land here
        raise WrongType(f"algorithm {alg!r} is not allowed (allowed: {', '.join(sorted(algorithms))})")

    if "typ" in header:
        typ = header["typ"]
        if not isinstance(typ, str) or _normalize_typ(typ) not in {_normalize_typ(t) for t in types}:
            raise WrongType(f"typ {typ!r} is not the expected {' or '.join(types)!r}")
    elif typ_required:
        raise WrongType(f"typ header missing; expected {' or '.join(types)!r}")

    for name in _REFUSED_HEADERS:
        if name in header:
            raise MalformedToken(f"header parameter {name!r} is not accepted")
    cty = header.get("cty")
    if isinstance(cty, str) and _normalize_typ(cty) == "jwt":
        raise MalformedToken("nested JWTs (cty JWT) are not accepted")

    if "crit" in header:  # J12, RFC 7515 §4.1.11
        crit = header["crit"]
        if not isinstance(crit, list) or not crit or not all(isinstance(c, str) for c in crit):
            raise MalformedToken("crit must be a non-empty list of header names")
        if len(set(crit)) != len(crit):
            raise MalformedToken("crit lists a name twice")
        for name in crit:
            if name not in understood_crit:
                raise MalformedToken(f"critical header {name!r} is not understood")
            if name not in header:
                raise MalformedToken(f"critical header {name!r} is absent")
    return alg


def _check_key_members(key: Mapping[str, Any], alg: str, *, origin: str) -> None:
    """Refuse a key that does not fit ``alg`` before the library sees it (J4, J16, J17)."""
    kty, curves, _ = _ALGORITHMS[alg]
    if key.get("kty") != kty:
        raise BadSignature(f"{origin} key type {key.get('kty')!r} cannot verify {alg}")
    if curves and key.get("crv") not in curves:
        raise BadSignature(f"{origin} key curve {key.get('crv')!r} cannot verify {alg}")
    if "alg" in key and key["alg"] != alg:  # J17: the key's algorithm binds it
        raise BadSignature(f"{origin} key is for {key['alg']!r}, the token says {alg}")
    if "use" in key and key["use"] != "sig":
        raise BadSignature(f"{origin} key is not a signature key (use {key['use']!r})")
    ops = key.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        raise BadSignature(f"{origin} key does not allow verify (key_ops {ops!r})")
    if _PRIVATE_MEMBERS & set(key):
        raise BadSignature(f"{origin} key contains private key material")
    if kty == "RSA":
        n = key.get("n")
        if not isinstance(n, str):
            raise BadSignature(f"{origin} RSA key has no modulus")
        bits = int.from_bytes(b64url_decode(n, f"{origin} RSA modulus"), "big").bit_length()
        if bits < _MIN_RSA_BITS:
            raise BadSignature(f"{origin} RSA key has {bits} bits; at least {_MIN_RSA_BITS} are required")


def _import_key(key: Mapping[str, Any], alg: str, *, origin: str) -> jwk.JWK:
    _check_key_members(key, alg, origin=origin)
    try:
        return jwk.JWK(**key)
    except (JWException, ValueError, TypeError, KeyError) as exc:
        raise BadSignature(f"{origin} key cannot be used: {exc}") from exc


def _select_trusted_key(
    jwks: Mapping[str, Any], header: dict[str, Any], alg: str
) -> tuple[jwk.JWK, str | None]:
    """The key named by ``kid`` in the caller's set; header key material is never looked at."""
    keys = jwks.get("keys") if isinstance(jwks, Mapping) else None
    if not isinstance(keys, list) or not all(isinstance(k, Mapping) for k in keys):
        raise BadSignature("the trusted key set is not a JWKS")
    if not keys:
        raise BadSignature("the trusted key set is empty")
    if "kid" not in header:
        if len(keys) != 1:  # J8: jwcrypto would try every key; we demand the name
            raise BadSignature("kid is required: the trusted key set has several keys")
        return _import_key(keys[0], alg, origin="trusted"), None
    kid = header["kid"]
    if not isinstance(kid, str) or not kid:
        # J7: kid is only ever a dictionary key here; a blank or non-string one is refused.
        raise MalformedToken("kid must be a non-empty string")
    matches = [k for k in keys if k.get("kid") == kid]
    if not matches:
        raise UnknownKey(f"no trusted key has kid {kid!r}")
    if len(matches) > 1:
        raise BadSignature(f"the trusted key set has several keys with kid {kid!r}")
    return _import_key(matches[0], alg, origin="trusted"), kid


def _embedded_key(header: dict[str, Any], alg: str) -> jwk.JWK:
    """RFC 9449 §4.3 (6)-(7): the proof's own public key, from its ``jwk`` header."""
    embedded = header.get("jwk")
    if not isinstance(embedded, dict):
        raise MalformedToken("header jwk is missing or not an object")
    return _import_key(embedded, alg, origin="embedded")


def _check_signature_shape(signature: bytes, alg: str, key: jwk.JWK) -> None:
    if not signature:  # J2: the null signature
        raise BadSignature("signature is empty")
    kty, _, length = _ALGORITHMS[alg]
    if kty == "RSA":
        length = (int.from_bytes(b64url_decode(key["n"], "RSA modulus"), "big").bit_length() + 7) // 8
    elif kty == "OKP" and length is None:
        length = _ED_SIGNATURE_LENGTH[key["crv"]]
    if len(signature) != length:
        # jwcrypto splits an ECDSA signature in two halves of any size; a padded signature
        # would verify, so the exact length is enforced here.
        raise BadSignature(f"signature is {len(signature)} bytes; {alg} gives {length}")
    if kty == "EC":
        order = _CURVE_ORDER[key["crv"]]
        half = len(signature) // 2
        r = int.from_bytes(signature[:half], "big")
        s = int.from_bytes(signature[half:], "big")
        if not (0 < r < order and 0 < s < order):  # J9 (CVE-2022-21449)
            raise BadSignature("ECDSA signature values out of range")


def _check_times(
    claims: dict[str, Any], *, required: Collection[str], now: datetime, leeway: timedelta
) -> None:
    now_ts = now.timestamp()
    slack = leeway.total_seconds()
    for name in _TIME_CLAIMS:
        if name not in claims:
            continue
        value = claims[name]
        # RFC 7519 §2 NumericDate: a JSON number; bool is an int in Python, so refuse it.
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ClaimError(f"{name} is not a NumericDate")
    if "exp" in claims and claims["exp"] <= now_ts - slack:
        raise ExpiredToken("token expired")
    if "nbf" in claims and claims["nbf"] > now_ts + slack:
        raise ClaimError("token is not valid yet (nbf in the future)")
    if "iat" in claims and claims["iat"] > now_ts + slack:
        raise ClaimError("token issued in the future (iat)")
    for name in required:
        if claims.get(name) is None:
            raise ClaimError(f"claim {name!r} is required")


def _check_string_claims(
    claims: dict[str, Any], *, issuer: str | None, audiences: Collection[str] | None
) -> None:
    for name in ("iss", "sub", "jti"):
        if name in claims and not isinstance(claims[name], str):
            raise ClaimError(f"{name} is not a string")
    if issuer is not None and claims.get("iss") != issuer:
        # J11: equality, never `in` (PyJWT CVE-2024-53861 matched a substring)
        raise ClaimError(f"iss {claims.get('iss')!r} is not the expected issuer")
    if audiences is not None:
        aud = claims.get("aud")
        values = [aud] if isinstance(aud, str) else aud
        if not isinstance(values, list) or not values or not all(isinstance(a, str) for a in values):
            raise ClaimError("aud is missing or not a string or a list of strings")
        if not any(a in audiences for a in values):  # membership of whole strings only
            raise ClaimError(f"aud {aud!r} does not name this server")


def verify_jwt(
    token: str,
    *,
    keys: Mapping[str, Any] | None,
    embedded_jwk: bool = False,
    algorithms: Collection[str],
    types: Collection[str],
    typ_required: bool,
    issuer: str | None,
    audiences: Collection[str] | None,
    required_claims: Collection[str],
    now: datetime,
    leeway: timedelta,
    understood_crit: Collection[str] = (),
    max_length: int = MAX_TOKEN_LENGTH,
) -> VerifiedJWT:
    """Parse and verify a compact JWS whose payload is a JWT claims set; every check named.

    ``keys`` is the trusted JWKS (``{"keys": [...]}``); with ``embedded_jwk=True`` it must be
    ``None`` and the key is the header's ``jwk`` (DPoP only). ``types`` lists the accepted
    ``typ`` values; ``typ_required=False`` also accepts a token without ``typ``. ``issuer``
    and ``audiences`` are checked when not ``None``; each caller says ``None`` on purpose.
    """
    # Caller mistakes are programming errors, not token errors.
    for name, value in (("algorithms", algorithms), ("types", types), ("required_claims", required_claims)):
        if isinstance(value, str):  # a bare string would be read as a set of characters
            raise ValueError(f"{name} must be a collection of strings, not a string")
    if embedded_jwk != (keys is None):
        raise ValueError("give either a trusted key set or embedded_jwk=True, not both or neither")
    if not algorithms or not set(algorithms) <= SUPPORTED_ALGORITHMS:
        raise ValueError(f"algorithms must be a non-empty subset of {sorted(SUPPORTED_ALGORITHMS)}")
    if not types:
        raise ValueError("name the accepted typ values")
    if audiences is not None and (isinstance(audiences, str) or not audiences):
        raise ValueError("audiences must be a non-empty collection of strings")
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if not timedelta(0) <= leeway <= MAX_LEEWAY:
        raise ValueError(f"leeway must be between 0 and {MAX_LEEWAY}")

    # 1. Shape, before any decoding (J13, J10, J14, J18).
    if not isinstance(token, str):
        raise MalformedToken("token is not a string")
    if len(token) > max_length:
        raise MalformedToken(f"token longer than {max_length} characters")
    if token.lstrip().startswith("{"):
        raise MalformedToken("JWS JSON serialization is not accepted; compact serialization only")
    segments = token.split(".")
    if len(segments) == 5:
        raise MalformedToken("JWE is not accepted; a signed JWT is expected")
    if len(segments) != 3:
        raise MalformedToken("a compact JWS has exactly three segments")
    header_b64, payload_b64, signature_b64 = segments

    # 2. Strict decoding.
    header = _json_object(b64url_decode(header_b64, "header"), "header")
    alg = _check_header(
        header, algorithms=algorithms, types=types, typ_required=typ_required, understood_crit=understood_crit
    )
    if not payload_b64:
        raise MalformedToken("payload is empty (detached payloads are not accepted)")
    claims = _json_object(b64url_decode(payload_b64, "payload"), "payload")
    signature = b64url_decode(signature_b64, "signature")

    # 3. Key: from the caller's set by kid, or the embedded jwk when asked (J5–J8, J17).
    if embedded_jwk:
        key, kid = _embedded_key(header, alg), None
    else:
        assert keys is not None
        key, kid = _select_trusted_key(keys, header, alg)

    # 4. Signature over the segments exactly as received (J2, J9).
    _check_signature_shape(signature, alg, key)
    signing_input = f"{header_b64}.{payload_b64}".encode("ascii")
    try:
        JWA.signing_alg(alg).verify(key, signing_input, signature)
    except (InvalidSignature, JWException, ValueError, TypeError, NotImplementedError) as exc:
        raise BadSignature("signature does not verify") from exc

    # 5. Claims (J11).
    _check_times(claims, required=required_claims, now=now, leeway=leeway)
    _check_string_claims(claims, issuer=issuer, audiences=audiences)
    return VerifiedJWT(header=header, claims=claims, alg=alg, kid=kid, key=key)
