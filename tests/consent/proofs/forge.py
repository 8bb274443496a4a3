"""Build JWS tokens byte by byte, the way an attacker would: any header, any signature."""

from __future__ import annotations

import base64
import json
from typing import Any

from jwcrypto import jwk
from jwcrypto.jwa import JWA


def b64(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segment(obj: dict[str, Any] | str) -> str:
    """A base64url JSON segment; a str is taken as raw JSON text (to write duplicates)."""
    return b64(obj if isinstance(obj, str) else json.dumps(obj))


def sign(
    header: dict[str, Any] | str, claims: dict[str, Any] | str, key: jwk.JWK | None, alg: str | None = None
) -> str:
    """A compact JWS; ``alg`` defaults to the header's. ``key=None`` leaves the signature empty."""
    signing_input = f"{segment(header)}.{segment(claims)}"
    if key is None:
        return signing_input + "."
    if alg is None:
        assert isinstance(header, dict)
        alg = header["alg"]
    signature = JWA.signing_alg(alg).sign(key, signing_input.encode())
    return f"{signing_input}.{b64(signature)}"


def with_signature(token: str, signature: bytes) -> str:
    head, payload, _ = token.split(".")
    return f"{head}.{payload}.{b64(signature)}"


def ec_key(crv: str = "P-256") -> jwk.JWK:
    return jwk.JWK.generate(kty="EC", crv=crv)


def public(key: jwk.JWK, **extra: Any) -> dict[str, Any]:
    exported: dict[str, Any] = key.export_public(as_dict=True)
    exported.update(extra)
    return exported
