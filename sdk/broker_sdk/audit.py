"""Check a patient's audit export offline: the broker's signature, each event, each proof.

A patient downloads ``GET /api/me/audit/export`` (format ``broker-audit-export/1``) and
anyone may check it later with the broker's JWKS alone; nothing here touches the network::

    {"format", "issuer", "patient_id", "salt": base64,
     "checkpoint": {"tree_size", "root_hash", "timestamp", "signed": compact JWS},
     "entries": [{"leaf_index", "id", "tag", "at", "patient", "actor", "details",
                  "commitment": base64, "inclusion_path": [base64, ...]}],
     "pending": [events not yet covered by the checkpoint]}

What :func:`verify_export` checks, reporting every problem it finds (not only the first):

- **signature**: ``checkpoint.signed`` is a compact JWS, ``alg`` ES256, ``typ``
  ``audit-checkpoint+jwt``, a ``kid`` naming exactly one key of the given JWKS, no
  key-carrying header, a valid signature; its claims ``iss`` (the expected issuer when one is
  given, and the export's ``issuer``), ``tree_size``, ``root_hash`` and ``iat`` are well
  formed, and the readable ``tree_size`` and ``root_hash`` of the export say the same;
- **commitment**, for each entry: HMAC-SHA256, keyed with the patient's salt (an empty key
  for an event about no patient), over the canonical JSON of ``{"v": 1, "index", "id",
  "tag", "at", "patient", "actor", "details"}`` (sorted keys, no spaces, UTF-8) is the
  entry's ``commitment``; the index and id are inside, so an event moved elsewhere in the log
  no longer opens;
- **inclusion**, for each entry: its ``inclusion_path`` leads from the leaf hash
  SHA-256(0x00 || commitment) at ``leaf_index`` to the signed root of the signed tree size
  (RFC 9162 §2.1.3.2);
- **format**: anything unreadable in one entry (a missing or mistyped field, bad base64, an
  event of another patient), entries not in increasing leaf order, a leaf or event twice.

A document that is not an export at all raises :class:`ExportUnreadable`.

What no export can show: an event left out. Each entry proves itself; the format binds no
event to the patient's previous one, so an export from which a whole entry was removed
still verifies (see the broker's public checkpoints and consistency proofs for the log as
a whole).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from broker_sdk import _jose
from broker_sdk.errors import ExportUnreadable, TokenInvalid

__all__ = [
    "CHECKPOINT_TYP",
    "EXPORT_FORMAT",
    "CheckpointResult",
    "EntryResult",
    "ExportProblem",
    "ExportReport",
    "ExportUnreadable",
    "ProblemKind",
    "event_commitment",
    "leaf_hash",
    "verify_export",
    "verify_inclusion",
]

EXPORT_FORMAT = "broker-audit-export/1"
CHECKPOINT_TYP = "audit-checkpoint+jwt"
HASH_SIZE = 32
MAX_CHECKPOINT_LENGTH = 8 * 1024
MAX_PATH_LENGTH = 64  # a tree of at most 2**64 leaves

ProblemKind = Literal["signature", "commitment", "inclusion", "format"]


@dataclass(frozen=True)
class ExportProblem:
    """One failed check. ``index`` is the entry's position in ``entries`` (None for the
    checkpoint or the document as a whole); ``event_id`` and ``leaf_index`` as the entry
    states them, when it states them as integers."""

    kind: ProblemKind
    message: str
    index: int | None = None
    event_id: int | None = None
    leaf_index: int | None = None

    def __str__(self) -> str:
        where = "checkpoint" if self.index is None else f"entry {self.index}"
        if self.event_id is not None:
            where += f" (event {self.event_id}"
            where += f", leaf {self.leaf_index})" if self.leaf_index is not None else ")"
        return f"{self.kind}: {where}: {self.message}"


@dataclass(frozen=True)
class CheckpointResult:
    """What the signed checkpoint says (its claims, even when the signature fails)."""

    signature: bool
    kid: str | None
    issuer: str | None
    tree_size: int | None
    root_hash: str | None
    issued_at: int | None


@dataclass(frozen=True)
class EntryResult:
    """One entry's checks: its commitment opens, its proof leads to the signed root."""

    index: int
    event_id: int | None
    leaf_index: int | None
    tag: str | None
    at: str | None
    commitment: bool
    inclusion: bool

    @property
    def ok(self) -> bool:
        return self.commitment and self.inclusion


@dataclass(frozen=True)
class ExportReport:
    """The outcome of :func:`verify_export`; ``ok`` when no problem was found."""

    issuer: str | None
    patient_id: str | None
    checkpoint: CheckpointResult | None
    entries: tuple[EntryResult, ...]
    pending: int
    problems: tuple[ExportProblem, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return not self.problems

    def problems_of(self, kind: ProblemKind) -> list[ExportProblem]:
        return [p for p in self.problems if p.kind == kind]


# -- RFC 9162 §2.1: hashes and the inclusion proof's verification ---------------------------


def leaf_hash(leaf: bytes) -> bytes:
    """RFC 9162 §2.1.1: SHA-256(0x00 || leaf)."""
    return hashlib.sha256(b"\x00" + leaf).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def verify_inclusion(
    leaf: bytes, leaf_index: int, tree_size: int, inclusion_path: Sequence[bytes], root: bytes
) -> bool:
    """RFC 9162 §2.1.3.2, step by step: ``leaf`` (a leaf hash) is at ``leaf_index`` in the
    tree of ``tree_size`` leaves whose root hash is ``root``."""
    if not 0 <= leaf_index < tree_size:  # 1. leaf_index must be below tree_size
        return False
    if len(leaf) != HASH_SIZE or len(root) != HASH_SIZE:
        return False
    if any(len(p) != HASH_SIZE for p in inclusion_path):
        return False
    fn, sn = leaf_index, tree_size - 1  # 2.
    r = leaf  # 3.
    for p in inclusion_path:  # 4.
        if sn == 0:  # a. the path is longer than the tree is deep
            return False
        if fn & 1 or fn == sn:  # b. p is a left sibling (or r is a right edge carried up)
            r = _node(p, r)
            while fn & 1 == 0 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:  # p is the right sibling
            r = _node(r, p)
        fn >>= 1  # c.
        sn >>= 1
    return sn == 0 and hmac.compare_digest(r, root)  # 5.


# -- what a leaf commits to -------------------------------------------------------------------


def _canonical_json(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def event_commitment(salt: bytes | None, entry: Mapping[str, Any]) -> bytes:
    """HMAC-SHA256 (key: the patient's salt, or empty) over the canonical body of an entry."""
    body = _canonical_json(
        {
            "v": 1,
            "index": entry["leaf_index"],
            "id": entry["id"],
            "tag": entry["tag"],
            "at": entry["at"],
            "patient": entry["patient"],
            "actor": entry["actor"],
            "details": entry["details"],
        }
    )
    return hmac.new(salt or b"", body, hashlib.sha256).digest()


# -- reading the document ---------------------------------------------------------------------


class _Malformed(ValueError):
    pass


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _Malformed("a JSON object has the same member twice")
    return obj


def _constant(name: str) -> Any:
    raise _Malformed(f"JSON constant {name} is not allowed")


_DECODER = json.JSONDecoder(object_pairs_hook=_pairs, parse_constant=_constant)


def _load(export: dict[str, Any] | bytes | str) -> dict[str, Any]:
    if isinstance(export, dict):
        document: object = export
    else:
        try:
            text = export.decode("utf-8") if isinstance(export, bytes) else export
            document = _DECODER.decode(text)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise ExportUnreadable(f"the export is not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise ExportUnreadable("the export is not a JSON object")
    if document.get("format") != EXPORT_FORMAT:
        raise ExportUnreadable(f"format {document.get('format')!r} is not {EXPORT_FORMAT!r}")
    if not isinstance(document.get("entries"), list):
        raise ExportUnreadable("the export has no list of entries")
    if not isinstance(document.get("checkpoint"), dict | None):
        raise ExportUnreadable("the export's checkpoint is not an object")
    return document


def _b64(value: object, what: str, size: int | None = HASH_SIZE) -> bytes:
    """Standard base64 with padding, as RFC 9162 carries hashes in JSON (canonical only)."""
    if not isinstance(value, str):
        raise _Malformed(f"{what} is not a base64 string")
    try:
        raw = binascii.a2b_base64(value.encode("ascii"), strict_mode=True)
    except (UnicodeEncodeError, binascii.Error, ValueError):
        raise _Malformed(f"{what} is not base64") from None
    if base64.b64encode(raw).decode("ascii") != value:
        raise _Malformed(f"{what} is not canonical base64")
    if size is not None and len(raw) != size:
        raise _Malformed(f"{what} is not {size} bytes")
    return raw


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


# -- the checkpoint ---------------------------------------------------------------------------


def _keys_for(jwks: Mapping[str, Any], kid: str) -> list[Mapping[str, Any]]:
    keys = jwks.get("keys")
    if not isinstance(keys, list):
        raise ValueError("the JWKS has no list of keys")
    return [k for k in keys if isinstance(k, Mapping) and k.get("kid") == kid]


def _checkpoint(
    checkpoint: Mapping[str, Any],
    jwks: Mapping[str, Any],
    issuer: str | None,
    export_issuer: object,
    problems: list[ExportProblem],
) -> tuple[CheckpointResult, int | None, bytes | None]:
    """The checkpoint's result, and the signed tree size and root (None when unreadable)."""

    def fail(message: str) -> None:
        problems.append(ExportProblem("signature", message))

    signature = False
    kid: str | None = None
    claims: dict[str, Any] = {}
    try:
        signed = checkpoint.get("signed")
        if not isinstance(signed, str):
            raise TokenInvalid("the checkpoint has no signed JWS", reason="malformed")
        parsed = _jose.parse(signed, max_length=MAX_CHECKPOINT_LENGTH)
        claims = parsed.claims
        _jose.check_header(parsed.header, algorithms=("ES256",), typ=CHECKPOINT_TYP, kid_required=True)
        kid = parsed.header["kid"]
        candidates = _keys_for(jwks, parsed.header["kid"])
        if len(candidates) != 1:
            raise TokenInvalid(
                f"kid {kid!r} names {len(candidates)} keys of the JWKS, not one", reason="kid"
            )
        try:
            key = _jose.import_public_jwk(candidates[0], alg="ES256")
        except ValueError as exc:
            raise TokenInvalid(f"key {kid!r}: {exc}", reason="key") from None
        key.verify(parsed.signing_input, parsed.signature)
        signature = True
    except TokenInvalid as exc:
        fail(f"the checkpoint's JWS: {exc.description}")

    iss = _str(claims.get("iss"))
    size = _int(claims.get("tree_size"))
    iat = _int(claims.get("iat"))
    root_text = _str(claims.get("root_hash"))
    root: bytes | None = None
    if claims:
        if iss is None:
            fail("the signed checkpoint has no iss")
        elif issuer is not None and iss != issuer.rstrip("/"):
            fail(f"the checkpoint was signed by {iss!r}, not {issuer!r}")
        if iss is not None and export_issuer != iss:
            fail(f"the export names issuer {export_issuer!r}, its checkpoint {iss!r}")
        if size is None or size < 0:
            fail("the signed checkpoint has no tree_size (a non-negative integer)")
        if iat is None:
            fail("the signed checkpoint has no iat (an integer)")
        try:
            root = _b64(root_text, "the signed root_hash")
        except _Malformed as exc:
            fail(str(exc))
        if checkpoint.get("tree_size") != size or checkpoint.get("root_hash") != root_text:
            fail(
                f"the export states tree size {checkpoint.get('tree_size')!r} and root "
                f"{checkpoint.get('root_hash')!r}; the broker signed {size!r} and {root_text!r}"
            )
    result = CheckpointResult(signature, kid, iss, size, root_text, iat)
    return result, size, root


# -- the entries ------------------------------------------------------------------------------

_ENTRY_FIELDS: dict[str, type | tuple[type, ...]] = {
    "leaf_index": int,
    "id": int,
    "tag": str,
    "at": str,
    "patient": (str, type(None)),
    "actor": (str, type(None)),
    "commitment": str,
    "inclusion_path": list,
}


def _entry(
    position: int,
    entry: object,
    *,
    salt: bytes | None,
    patient_id: object,
    tree_size: int | None,
    root: bytes | None,
    problems: list[ExportProblem],
) -> EntryResult:
    if not isinstance(entry, dict):
        problems.append(ExportProblem("format", "the entry is not an object", position))
        return EntryResult(position, None, None, None, None, False, False)
    event_id, leaf_index = _int(entry.get("id")), _int(entry.get("leaf_index"))
    tag, at = _str(entry.get("tag")), _str(entry.get("at"))

    def problem(kind: ProblemKind, message: str) -> None:
        problems.append(ExportProblem(kind, message, position, event_id, leaf_index))

    try:
        for name, kinds in _ENTRY_FIELDS.items():
            value = entry.get(name)
            if not isinstance(value, kinds) or (kinds is int and isinstance(value, bool)):
                raise _Malformed(f"{name} is missing or not of the right type")
        if "details" not in entry:
            raise _Malformed("details is missing")
        if leaf_index is not None and leaf_index < 0:
            raise _Malformed("leaf_index is negative")
        if entry["patient"] is not None and entry["patient"] != patient_id:
            raise _Malformed("the event is not about the export's patient")
        stated = _b64(entry["commitment"], "commitment")
        if len(entry["inclusion_path"]) > MAX_PATH_LENGTH:
            raise _Malformed("the inclusion path is longer than any tree is deep")
        path = [_b64(p, f"inclusion_path[{i}]") for i, p in enumerate(entry["inclusion_path"])]
    except _Malformed as exc:
        problem("format", str(exc))
        return EntryResult(position, event_id, leaf_index, tag, at, False, False)

    key = salt if entry["patient"] is not None else None
    opens = hmac.compare_digest(event_commitment(key, entry), stated)
    if not opens:
        problem("commitment", "the commitment does not open with the event's fields and the salt")
    assert leaf_index is not None
    included = (
        tree_size is not None
        and root is not None
        and verify_inclusion(leaf_hash(stated), leaf_index, tree_size, path, root)
    )
    if not included:
        if tree_size is not None and leaf_index >= tree_size:
            problem("inclusion", f"leaf {leaf_index} is beyond the checkpoint's {tree_size} leaves")
        elif tree_size is None or root is None:
            problem("inclusion", "no signed tree size and root to check the proof against")
        else:
            problem("inclusion", f"the inclusion path does not lead to the root of tree size {tree_size}")
    return EntryResult(position, event_id, leaf_index, tag, at, opens, included)


def _check_order(entries: Sequence[EntryResult], problems: list[ExportProblem]) -> None:
    """Entries in increasing leaf order, each leaf and each event once."""
    leaves: set[int] = set()
    ids: set[int] = set()
    highest: int | None = None
    for entry in entries:
        leaf, event_id = entry.leaf_index, entry.event_id
        found: list[str] = []
        if leaf is not None:
            if leaf in leaves:
                found.append(f"leaf {leaf} appears twice")
            elif highest is not None and leaf < highest:
                found.append(f"leaf {leaf} comes after leaf {highest}: entries go in leaf order")
            leaves.add(leaf)
            highest = leaf if highest is None else max(highest, leaf)
        if event_id is not None:
            if event_id in ids:
                found.append(f"event {event_id} appears twice")
            ids.add(event_id)
        problems.extend(ExportProblem("format", m, entry.index, event_id, leaf) for m in found)


def verify_export(
    export: dict[str, Any] | bytes | str, *, jwks: dict[str, Any], issuer: str | None = None
) -> ExportReport:
    """Check an audit export offline against the broker's JWKS (see the module's docstring).

    ``export`` is the parsed document or its JSON text; ``issuer``, when given, is the broker
    the checkpoint must come from. Every problem is reported in :attr:`ExportReport.problems`;
    raises :class:`ExportUnreadable` when the document is not an export at all, and
    ``ValueError`` when ``jwks`` is not a JWKS.
    """
    if not isinstance(jwks, Mapping) or not isinstance(jwks.get("keys"), list):
        raise ValueError("jwks: a JWK Set ({'keys': [...]}) is expected")
    document = _load(export)
    problems: list[ExportProblem] = []
    patient_id = document.get("patient_id")
    entries_in: list[Any] = document["entries"]

    salt: bytes | None = None
    if document.get("salt") is not None:
        try:
            salt = _b64(document.get("salt"), "salt", size=None)
        except _Malformed as exc:
            problems.append(ExportProblem("format", str(exc)))
    elif any(isinstance(e, dict) and e.get("patient") is not None for e in entries_in):
        problems.append(ExportProblem("format", "the export has events of a patient but no salt"))

    checkpoint_in = document.get("checkpoint")
    checkpoint: CheckpointResult | None = None
    tree_size: int | None = None
    root: bytes | None = None
    if checkpoint_in is not None:
        checkpoint, tree_size, root = _checkpoint(
            checkpoint_in, jwks, issuer, document.get("issuer"), problems
        )
    elif entries_in:
        problems.append(ExportProblem("format", "the export has entries but no checkpoint"))

    entries = [
        _entry(i, entry, salt=salt, patient_id=patient_id, tree_size=tree_size, root=root, problems=problems)
        for i, entry in enumerate(entries_in)
    ]
    _check_order(entries, problems)

    pending = document.get("pending", [])
    if not isinstance(pending, list):
        problems.append(ExportProblem("format", "pending is not a list"))
        pending = []
    return ExportReport(
        issuer=_str(document.get("issuer")),
        patient_id=_str(patient_id),
        checkpoint=checkpoint,
        entries=tuple(entries),
        pending=len(pending),
        problems=tuple(problems),
    )
