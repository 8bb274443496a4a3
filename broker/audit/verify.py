"""``broker audit verify``: recompute the whole log from the database and check it against
the signed checkpoints; stop at the first bad entry and name it (index and event id).

What each kind of tampering looks like to this check:

- an **edited** event: its commitment no longer opens with its content (``edited``);
- a **deleted** event: a hole in the leaf indices (``missing``), or, if the later rows were
  renumbered to close it, the next row is not where it was sealed (``misplaced``); rows cut
  from the end leave the log shorter than its latest checkpoint (``missing``);
- **reordered** events: each is sealed, and committed, with its index (``misplaced``);
- an **inserted** event: it has no valid seal for its place (``misplaced``);
- a **swapped or forged checkpoint**: its signature, or its claims against its row, or its
  root against the recomputed tree (``checkpoint``).

The seals need the broker's secret: without it an attacker with write access to the
database cannot rewrite an entry and its hashes consistently, so the bad entry is named
exactly. With it, the signed checkpoints still catch the change (``checkpoint``), naming
the first entry the checkpoint covers that may have been changed.
"""

from __future__ import annotations

import base64
import hmac
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from jwcrypto import jwk, jws
from jwcrypto.common import JWException
from sqlalchemy import select
from sqlalchemy.orm import Session

from broker.audit.log import commitment, event_body, filter_columns, seal, seal_key
from broker.audit.merkle import CompactRange, leaf_hash
from broker.audit.models import AuditCheckpoint, AuditEvent, AuditSalt
from broker.audit.sequencer import CHECKPOINT_TYP, checkpoint_claims

__all__ = ["Problem", "VerifyReport", "check_checkpoint", "verify_log"]


@dataclass(frozen=True)
class Problem:
    kind: str  # missing | misplaced | edited | filters | checkpoint
    index: int | None
    event_id: int | None
    message: str
    checkpoint_size: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "index": self.index,
            "event_id": self.event_id,
            "checkpoint_size": self.checkpoint_size,
            "message": self.message,
        }

    def __str__(self) -> str:
        where = f"entry {self.index}" if self.index is not None else "log"
        if self.event_id is not None:
            where += f" (event id {self.event_id})"
        return f"{where}: {self.kind}: {self.message}"


@dataclass(frozen=True)
class VerifyReport:
    entries: int
    checkpoints: int
    problem: Problem | None

    @property
    def ok(self) -> bool:
        return self.problem is None

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "entries": self.entries,
            "checkpoints": self.checkpoints,
            "problem": self.problem.to_json() if self.problem else None,
        }


def _b64url(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def check_checkpoint(
    checkpoint: AuditCheckpoint, trusted_keys: Mapping[str, Any], issuer: str
) -> str | None:
    """Why this stored checkpoint is not one the broker signed for its row, or None.

    The key comes only from the broker's own key set, by ``kid``; the algorithm is pinned.
    """
    try:
        header = json.loads(_b64url(checkpoint.signed.split(".")[0]))
    except (ValueError, IndexError):
        return "its signed form is not a compact JWS"
    if not isinstance(header, dict) or header.get("alg") != "ES256" or header.get("typ") != CHECKPOINT_TYP:
        return "its header is not that of an ES256 audit checkpoint"
    keys = {k.get("kid"): k for k in trusted_keys.get("keys", []) if isinstance(k, Mapping)}
    public = keys.get(header.get("kid"))
    if public is None:
        return f"it is signed by a key the broker does not have (kid {header.get('kid')!r})"
    token = jws.JWS()
    try:
        token.deserialize(checkpoint.signed, key=jwk.JWK(**public), alg="ES256")
        claims = json.loads(token.payload)
    except (JWException, ValueError, TypeError):
        return "its signature does not verify"
    expected = checkpoint_claims(issuer, checkpoint.tree_size, checkpoint.root_hash, checkpoint.issued_at)
    if claims != expected:
        return "what it signs is not what its row says (swapped or edited)"
    return None


def _rows(session: Session) -> Iterator[Any]:
    ev = AuditEvent
    query = (
        select(
            ev.id,
            ev.leaf_index,
            ev.tag,
            ev.at,
            ev.patient_id,
            ev.actor,
            ev.app_id,
            ev.holders,
            ev.categories,
            ev.details,
            ev.commitment,
            ev.seal,
            ev.erased_at,
            AuditSalt.salt,
        )
        .outerjoin(AuditSalt, AuditSalt.patient_id == ev.patient_id)
        .where(ev.leaf_index.is_not(None))
        .order_by(ev.leaf_index)
        .execution_options(yield_per=2000)
    )
    yield from session.execute(query)


def _check_row(row: Any, index: int, key: bytes) -> Problem | None:
    def problem(kind: str, message: str) -> Problem:
        return Problem(kind, index, row.id, message)

    if row.commitment is None or row.seal is None or len(row.commitment) != 32:
        return problem("misplaced", "it has no leaf: it was not placed by the sequencer (inserted?)")
    hashed = leaf_hash(row.commitment)
    if not hmac.compare_digest(seal(key, index, hashed), row.seal):
        return problem(
            "misplaced",
            "it is not the entry the broker sealed at this index (moved, inserted, or earlier "
            "entries removed and the rest renumbered)",
        )
    if row.erased_at is not None:
        if any(v is not None for v in (row.patient_id, row.actor, row.details, row.app_id)):
            return problem("edited", "it is marked erased but still holds readable details")
        return None
    if row.patient_id is not None and row.salt is None:
        return problem("edited", "its patient's salt is gone but the entry was not erased")
    body = event_body(
        index=index,
        event_id=row.id,
        tag=row.tag,
        at=row.at,
        patient_id=row.patient_id,
        actor=row.actor,
        details=row.details,
    )
    if not hmac.compare_digest(commitment(row.salt if row.patient_id else None, body), row.commitment):
        return problem("edited", "its content no longer matches its commitment")
    filters = filter_columns(row.details)
    if (row.app_id, row.holders, row.categories) != tuple(filters.values()):
        return problem("filters", "its app, holders or categories columns disagree with its details")
    return None


def verify_log(
    session: Session, *, trusted_keys: Mapping[str, Any], secret_key: bytes, issuer: str
) -> VerifyReport:
    """Check every entry and every checkpoint, in index order; stop at the first problem."""
    checkpoints = list(session.scalars(select(AuditCheckpoint).order_by(AuditCheckpoint.tree_size)))
    key = seal_key(secret_key)
    tree = CompactRange()
    pending = iter(checkpoints)
    next_checkpoint = next(pending, None)
    previous_size = 0

    def check_due() -> Problem | None:
        nonlocal next_checkpoint, previous_size
        while next_checkpoint is not None and next_checkpoint.tree_size == tree.size:
            cp = next_checkpoint
            reason = check_checkpoint(cp, trusted_keys, issuer)
            if reason is None and cp.root_hash != tree.root():
                reason = (
                    "its signed root is not the root of the entries now in the database: an entry "
                    f"from index {previous_size} to {cp.tree_size - 1} was rewritten with its hashes"
                )
            if reason is not None:
                message = f"checkpoint {cp.tree_size}: {reason}"
                return Problem("checkpoint", previous_size, None, message, cp.tree_size)
            previous_size = cp.tree_size
            next_checkpoint = next(pending, None)
        return None

    for row in _rows(session):
        index = tree.size
        if row.leaf_index != index:
            return VerifyReport(
                index,
                len(checkpoints),
                Problem(
                    "missing",
                    index,
                    None,
                    f"no entry at this index (deleted); the next one is event id {row.id} "
                    f"at index {row.leaf_index}",
                ),
            )
        found = _check_row(row, index, key)
        if found is not None:
            return VerifyReport(index, len(checkpoints), found)
        tree.append(leaf_hash(row.commitment))
        found = check_due()
        if found is not None:
            return VerifyReport(tree.size, len(checkpoints), found)
    if next_checkpoint is not None:
        last = checkpoints[-1].tree_size
        return VerifyReport(
            tree.size,
            len(checkpoints),
            Problem(
                "missing",
                tree.size,
                None,
                f"the log ends at {tree.size} entries but checkpoint {next_checkpoint.tree_size} "
                f"(of {last}) covers more: entries from index {tree.size} were deleted",
                next_checkpoint.tree_size,
            ),
        )
    return VerifyReport(tree.size, len(checkpoints), None)
