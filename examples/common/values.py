"""Deterministic "random" values: the same demo data on every machine and every run."""

from __future__ import annotations

import hashlib


def fraction(*parts: object) -> float:
    """A number in [0, 1) fixed by ``parts``."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def between(low: float, high: float, decimals: int, *parts: object) -> float:
    return round(low + (high - low) * fraction(*parts), decimals)
