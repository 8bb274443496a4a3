"""Canonical JSON bytes and their SHA-256, for manifest digests and charter identities."""

from __future__ import annotations

import hashlib
import json

__all__ = ["canonical_json", "sha256_hex"]


def canonical_json(value: object) -> bytes:
    """Sorted keys, no whitespace, UTF-8 without ASCII escapes.

    `surrogatepass` keeps the function total on strings holding a lone surrogate (Python's JSON
    parser accepts "\\ud800"); such strings encode to bytes that no valid UTF-8 text produces,
    so two different values still never share a digest.
    """
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8", "surrogatepass")


def sha256_hex(value: object) -> str:
    """SHA-256, in lower-case hex, of `canonical_json(value)`."""
    return hashlib.sha256(canonical_json(value)).hexdigest()
