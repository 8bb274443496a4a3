"""Strict JSON reading shared by every place that takes JSON from outside the broker.

RFC 8259 §4 leaves duplicate member names undefined and parsers differ on which one wins, so
a document that has them is refused rather than guessed at (SECURITY J18). Nesting is counted
before parsing, in time linear in the text, so that a deeply nested document is refused with
a reason of its own before a recursive parser gets to it.
"""

from __future__ import annotations

import json
from typing import Any


def no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An ``object_pairs_hook`` refusing duplicate member names (``ValueError``)."""
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate member {key!r}")
        result[key] = value
    return result


def json_depth(text: str) -> int:
    """The deepest nesting of arrays and objects in a JSON text, counted without parsing it."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


#: Nesting allowed in JSON the broker reads from a request: registration documents and
#: manifests are a few levels deep; CPython's parser recurses once per level and fails with
#: ``RecursionError`` (not ``ValueError``) near a thousand.
MAX_DEPTH = 32


def loads(raw: str | bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """Strict JSON from outside: UTF-8, no duplicate members, nesting bounded before parsing.

    Every refusal is a ``ValueError`` (``UnicodeDecodeError`` is one), so callers catch one type.
    """
    text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    if json_depth(text) > max_depth:
        raise ValueError(f"nested deeper than {max_depth} levels")
    value = json.loads(text, object_pairs_hook=no_duplicate_keys)
    if "\\u0000" in text and _holds_nul(value):
        # PostgreSQL text cannot store NUL: refused here rather than as a database error.
        raise ValueError("a string contains a NUL character (\\u0000)")
    return value


def _holds_nul(value: Any) -> bool:
    """Whether a parsed JSON value has a NUL in a string or a member name (depth is bounded)."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any("\x00" in key or _holds_nul(item) for key, item in value.items())
    if isinstance(value, list):
        return any(_holds_nul(item) for item in value)
    return False
