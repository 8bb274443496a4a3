"""Opaque secrets (registration access tokens, operator tokens …).

Each has a readable prefix so that a leaked one is recognised by secret scanners and by
people, carries 256 bits of randomness, and is stored only as an HMAC-SHA256 under the
broker's secret key: a fast check (no password hash on a hot path) that reveals nothing if
the database leaks.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets


def new_secret(prefix: str) -> str:
    return f"{prefix}_{secrets.token_urlsafe(32)}"


def secret_digest(secret_key: bytes, value: str) -> str:
    return hmac.new(secret_key, value.encode(), hashlib.sha256).hexdigest()


def secret_matches(secret_key: bytes, value: str, stored_digest: str | None) -> bool:
    if not stored_digest:
        return False
    return hmac.compare_digest(secret_digest(secret_key, value), stored_digest)
