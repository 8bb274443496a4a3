"""Strict compact JWS: parsing, keys, signature checks and signing.

Verification runs on the ``cryptography`` key objects that jwcrypto imports (jwcrypto's JWS
object costs about 2.5 times the bare signature check); jwcrypto stays in charge of key
import and of signing, where the cost does not matter. Every refusal names the check (the
rows of the JWT attack table J1–J19 are cited where they apply).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from jwcrypto import jwk, jws
from jwcrypto.common import JWException

from broker_sdk.errors import TokenInvalid

# J1, J3, J4, J15: asymmetric algorithms only; "none", HS*, RS1_5, PBES2 never.
# alg -> (kty, curves, signature length or None for RSA).
ALGORITHMS: dict[str, tuple[str, frozenset[str], int | None]] = {
    "ES256": ("EC", frozenset({"P-256"}), 64),
    "ES384": ("EC", frozenset({"P-384"}), 96),
    "EdDSA": ("OKP", frozenset({"Ed25519", "Ed448"}), None),
    "PS256": ("RSA", frozenset(), None),
}
_CURVE_ORDER = {
    "P-256": 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
    "P-384": int(
        "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973",
        16,
    ),
}
_ED_LENGTH = {"Ed25519": 64, "Ed448": 114}
_MIN_RSA_BITS = 2048
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k", "priv"})
# Header members that select or carry keys (J5, J6) or change the JWS processing (J14, b64).
KEY_HEADERS = ("jku", "jwk", "x5u", "x5c", "x5t", "x5t#S256")
_REFUSED_HEADERS = ("b64", "zip", "enc", "crit")
_TO_STANDARD = bytes.maketrans(b"-_", b"+/")
_B64_INDEX = {c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")}
_ECDSA = {"ES256": ec.ECDSA(hashes.SHA256()), "ES384": ec.ECDSA(hashes.SHA384())}
_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)


def b64url_encode(data: bytes) -> str:
    """Base64url without padding (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(segment: str, what: str = "segment") -> bytes:
    """Strict base64url: URL-safe alphabet, no padding, canonical trailing bits."""
    rest = len(segment) % 4
    if rest == 1 or "+" in segment or "/" in segment or "=" in segment:
        raise TokenInvalid(f"{what} is not base64url without padding", reason="malformed")
    try:
        raw = segment.encode("ascii").translate(_TO_STANDARD)
        # strict_mode: any character outside the alphabet is an error, not skipped.
        data = binascii.a2b_base64(raw + b"=" * (-rest % 4), strict_mode=True)
    except (UnicodeEncodeError, binascii.Error, ValueError) as exc:
        raise TokenInvalid(f"{what} is not base64url", reason="malformed") from exc
    # Canonical form: the unused low bits of the last character are zero, so that no two
    # strings decode to the same bytes (a token cannot be altered without changing meaning).
    if rest and _B64_INDEX[segment[-1]] & (0x0F if rest == 2 else 0x03):
        raise TokenInvalid(f"{what} is not canonical base64url", reason="malformed")
    return data


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):  # J18: parsers disagree on which duplicate wins
        raise TokenInvalid("duplicate JSON member", reason="malformed")
    return obj


def _no_constant(name: str) -> Any:
    raise TokenInvalid(f"JSON constant {name} is not allowed", reason="malformed")


def json_object(raw: bytes, what: str) -> dict[str, Any]:
    """Strict JSON object: UTF-8, no duplicate members (J18), no NaN/Infinity."""
    try:
        value = _STRICT_JSON.decode(raw.decode("utf-8"))
    except TokenInvalid:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise TokenInvalid(f"{what} is not UTF-8 JSON", reason="malformed") from exc
    if not isinstance(value, dict):
        raise TokenInvalid(f"{what} is not a JSON object", reason="malformed")
    return value


# One decoder, made once: json.loads(..., object_pairs_hook=...) would build one per call.
_STRICT_JSON = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_no_constant)


def normalize_typ(value: str) -> str:
    """RFC 7515 §4.1.9: case-insensitive; ``application/`` may be omitted."""
    lowered = value.lower()
    return lowered[12:] if lowered.startswith("application/") and "/" not in lowered[12:] else lowered


@dataclass(frozen=True)
class Parsed:
    """A compact JWS split and decoded, not yet verified."""

    header: dict[str, Any]
    claims: dict[str, Any]
    signing_input: bytes
    signature: bytes


def split_compact(token: str, max_length: int) -> tuple[str, str, str]:
    """Three segments of a compact JWS; the size cap comes before any decoding (J13)."""
    if not isinstance(token, str):
        raise TokenInvalid("the token is not a string", reason="malformed")
    if len(token) > max_length:
        raise TokenInvalid(f"the token is longer than {max_length} characters", reason="size")
    segments = token.split(".")
    if len(segments) == 5:  # J10, J14, J15
        raise TokenInvalid("a JWE is not accepted: a signed JWT (JWS) is expected", reason="jwe")
    if len(segments) != 3:  # JSON serialization (J18) and anything else
        raise TokenInvalid("not a compact JWS (three segments)", reason="malformed")
    return segments[0], segments[1], segments[2]


def parse(token: str, *, max_length: int) -> Parsed:
    header_b64, payload_b64, signature_b64 = split_compact(token, max_length)
    header = json_object(b64url_decode(header_b64, "header"), "header")
    if not payload_b64:
        raise TokenInvalid("the payload is empty (detached payloads are not accepted)", reason="malformed")
    claims = json_object(b64url_decode(payload_b64, "payload"), "payload")
    signature = b64url_decode(signature_b64, "signature")
    return Parsed(header, claims, f"{header_b64}.{payload_b64}".encode("ascii"), signature)


def check_header(
    header: Mapping[str, Any],
    *,
    algorithms: Collection[str],
    typ: str,
    kid_required: bool = True,
    embedded_key: bool = False,
) -> str:
    """``alg`` allow-listed (exact case), ``typ`` as expected, no key-carrying header, ``kid``."""
    alg = header.get("alg")
    if not isinstance(alg, str):
        raise TokenInvalid("the header has no alg", reason="alg")
    if alg not in algorithms:  # "none" in any casing, HS*, RS*: refused here (J1, J3, J4)
        raise TokenInvalid(f"algorithm {alg!r} is not accepted", reason="alg")
    found = header.get("typ")
    if not isinstance(found, str) or normalize_typ(found) != typ:  # J10
        raise TokenInvalid(f"typ {found!r} is not {typ!r}", reason="typ")
    for name in KEY_HEADERS:  # J5, J6: keys never come from the token
        if name in header and not (embedded_key and name == "jwk"):
            raise TokenInvalid(f"header parameter {name!r} is not accepted", reason="header")
    for name in _REFUSED_HEADERS:  # J12, J14: nothing critical is understood here
        if name in header:
            raise TokenInvalid(f"header parameter {name!r} is not accepted", reason="header")
    if kid_required:
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid or len(kid) > 256:  # J7, J8
            raise TokenInvalid("kid is required (a non-empty string)", reason="kid")
    return alg


@dataclass(frozen=True)
class VerifyKey:
    """One public key, bound to one algorithm (J17), ready to verify."""

    kid: str | None
    alg: str
    crv: str | None
    key: Any  # a cryptography public key object

    def verify(self, signing_input: bytes, signature: bytes) -> None:
        """Raise :class:`TokenInvalid` unless ``signature`` is this key's over the input."""
        alg = self.alg
        if not signature:  # J2
            raise TokenInvalid("the signature is empty", reason="signature")
        try:
            if alg in _ECDSA:
                half = len(signature) // 2
                if len(signature) != ALGORITHMS[alg][2]:
                    raise TokenInvalid(f"wrong {alg} signature length", reason="signature")
                r = int.from_bytes(signature[:half], "big")
                s = int.from_bytes(signature[half:], "big")
                order = _CURVE_ORDER[self.crv or ""]
                if not (0 < r < order and 0 < s < order):  # J9 (CVE-2022-21449)
                    raise TokenInvalid("ECDSA signature values out of range", reason="signature")
                self.key.verify(encode_dss_signature(r, s), signing_input, _ECDSA[alg])
            elif alg == "EdDSA":
                if len(signature) != _ED_LENGTH[self.crv or ""]:
                    raise TokenInvalid("wrong EdDSA signature length", reason="signature")
                self.key.verify(signature, signing_input)
            else:  # PS256
                self.key.verify(signature, signing_input, _PSS, hashes.SHA256())
        except InvalidSignature:
            raise TokenInvalid("the signature does not verify", reason="signature") from None


def import_public_jwk(members: Mapping[str, Any], *, alg: str | None = None) -> VerifyKey:
    """A :class:`VerifyKey` from a public JWK; raises ``ValueError`` for an unusable key.

    The key's algorithm is its ``alg`` member, or ``alg`` when the key has none; key type,
    curve, ``use``, ``key_ops`` and size must fit (J4, J16, J17); private members are refused.
    """
    chosen = members.get("alg", alg)
    if chosen not in ALGORITHMS:
        raise ValueError(f"key algorithm {chosen!r} is not supported")
    if alg is not None and chosen != alg:
        raise ValueError(f"the key is for {chosen!r}, not {alg!r}")
    kty, curves, _ = ALGORITHMS[chosen]
    if members.get("kty") != kty or (curves and members.get("crv") not in curves):
        raise ValueError(f"key type {members.get('kty')!r}/{members.get('crv')!r} cannot verify {chosen}")
    if members.get("use", "sig") != "sig":
        raise ValueError("not a signature key")
    ops = members.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        raise ValueError("the key does not allow verify")
    if _PRIVATE_MEMBERS & set(members):
        raise ValueError("the key contains private material")
    try:
        key = jwk.JWK(**dict(members)).get_op_key("verify")
    except (JWException, ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"the key cannot be imported: {exc}") from exc
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < _MIN_RSA_BITS:
        raise ValueError(f"RSA keys need at least {_MIN_RSA_BITS} bits")
    expected = {"EC": ec.EllipticCurvePublicKey, "OKP": (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)}
    if kty in expected and not isinstance(key, expected[kty]):  # type: ignore[arg-type]
        raise ValueError("unexpected key object")
    kid = members.get("kid")
    return VerifyKey(kid if isinstance(kid, str) else None, chosen, members.get("crv"), key)


_THUMBPRINT_MEMBERS = {"EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x"), "RSA": ("e", "kty", "n")}


def thumbprint(members: Mapping[str, Any]) -> str:
    """RFC 7638 JWK thumbprint (SHA-256), base64url."""
    names = _THUMBPRINT_MEMBERS.get(str(members.get("kty")))
    if names is None or not all(isinstance(members.get(n), str) for n in names):
        raise ValueError("cannot compute the thumbprint of this key")
    canonical = json.dumps({n: members[n] for n in names}, separators=(",", ":"), sort_keys=True)
    return b64url_encode(hashlib.sha256(canonical.encode("utf-8")).digest())


def signing_alg(key: jwk.JWK) -> str:
    """The JWS algorithm for one of our private keys."""
    kty, crv = key.get("kty"), key.get("crv")
    if kty == "EC" and crv == "P-256":
        return "ES256"
    if kty == "EC" and crv == "P-384":
        return "ES384"
    if kty == "OKP" and crv in ("Ed25519", "Ed448"):
        return "EdDSA"
    if kty == "RSA":
        return "PS256"
    raise ValueError(f"no signing algorithm for a {kty}/{crv} key")


def sign(claims: Mapping[str, Any], key: jwk.JWK, *, typ: str, kid: str | None = None, **header: Any) -> str:
    """A compact JWS of ``claims`` signed with ``key`` (``kid`` defaults to the key's own)."""
    if not key.has_private:
        raise ValueError("signing needs a private key")
    alg = signing_alg(key)
    protected: dict[str, Any] = {"alg": alg, "typ": typ, **header}
    kid = kid if kid is not None else key.get("kid")
    if kid:
        protected["kid"] = kid
    token = jws.JWS(json.dumps(dict(claims), separators=(",", ":")).encode("utf-8"))
    token.add_signature(key, alg=alg, protected=json.dumps(protected, separators=(",", ":")))
    return str(token.serialize(compact=True))


def public_members(key: jwk.JWK) -> dict[str, Any]:
    """The public JWK of ``key`` as a dict (never private members)."""
    exported: dict[str, Any] = key.export_public(as_dict=True)
    return exported


def load_private_key(path: str | Any) -> jwk.JWK:
    """A private JWK from a file (JWK JSON, or PEM); its ``kid`` is kept, else the thumbprint."""
    from pathlib import Path

    raw = Path(path).read_bytes()
    text = raw.decode("utf-8", errors="replace").lstrip()
    key = jwk.JWK.from_json(text) if text.startswith("{") else jwk.JWK.from_pem(raw)
    if not key.has_private:
        raise ValueError(f"{path}: not a private key")
    if not key.get("kid"):
        key = jwk.JWK(**{**key.export(as_dict=True), "kid": key.thumbprint()})
    return key
