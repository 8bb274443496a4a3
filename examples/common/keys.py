"""A holder's signing key, kept in a file only its owner can read.

The key signs the holder's link answers (``link+jwt``) and access receipts; the broker knows
only the public half. The public JWKS is written beside the private key, so that the broker's
demo seeding (``broker/demo.py``) can register it without ever reading the private file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from jwcrypto import jwk

PRIVATE_NAME = "signing-key.jwk"
PUBLIC_NAME = "jwks.json"


def load_or_create_key(state_dir: Path) -> jwk.JWK:
    """The key in ``state_dir`` (directory 0700, private file 0600), created at first use."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = state_dir / PRIVATE_NAME
    if not path.exists():
        fresh = jwk.JWK.generate(kty="EC", crv="P-256")
        # kid = the RFC 7638 thumbprint: the broker and the SDK find the key by it.
        key = jwk.JWK(**{**json.loads(fresh.export_private()), "kid": fresh.thumbprint()})
        try:
            # O_EXCL: two processes starting at once cannot both write a key.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as handle:
                handle.write(key.export_private())
    stored = json.loads(path.read_text())
    key = jwk.JWK(**stored)
    if "kid" not in stored:
        key = jwk.JWK(**{**stored, "kid": key.thumbprint()})
    public = state_dir / PUBLIC_NAME
    document = json.dumps(public_jwks(key), indent=2)
    if not public.exists() or public.read_text() != document:
        tmp = public.with_suffix(".tmp")
        tmp.write_text(document)
        tmp.replace(public)
    return key


def public_jwk(key: jwk.JWK) -> dict[str, Any]:
    # private_keys=False is explicit: jwcrypto exports private parts unless told not to.
    public: dict[str, Any] = json.loads(key.export(private_key=False))
    public.update(kid=key.thumbprint(), alg="ES256", use="sig")
    return public


def public_jwks(key: jwk.JWK) -> dict[str, Any]:
    return {"keys": [public_jwk(key)]}
