"""Writing to the audit log, what a leaf commits to, and erasure.

``append_event`` is what every domain calls, in its own unit of work, next to the change the
event records: one INSERT, no SELECT, no lock beyond the row it writes. The event gets its
place in the tree later, from the sequencer (``broker.audit.sequencer``), the way
Certificate Transparency logs separate accepting an entry from integrating it.

What a leaf is (and what an export's verifier recomputes)::

    body       = canonical JSON of {"v": 1, "index", "id", "tag", "at", "patient", "actor",
                                    "details"}   (sorted keys, no spaces, UTF-8)
    commitment = HMAC-SHA256(key = the patient's salt, body)
    leaf       = commitment                      (RFC 9162 leaf hash: SHA-256(0x00 || leaf))

The salt is 32 random bytes per patient, kept in ``audit_salts``. Events that concern no
patient (apps, holders, operators' decisions: public facts) use an empty key, so that anyone
holding the event can check its leaf. Putting the index and id in the body binds each event
to its place: moving a row elsewhere in the log breaks its commitment.

Each sequenced row also carries a ``seal``: HMAC-SHA256 under a key derived from the
broker's secret (``BROKER_SECRET_KEY``) over (index, leaf hash). The salts live in the
database, so someone who can write to it could recompute a commitment after editing a row;
without the broker's secret they cannot recompute the seal, and ``broker audit verify``
names the exact entry. The signed checkpoints remain the proof for everyone else.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Table, delete, insert, update
from sqlalchemy.orm import Session

from broker.audit.models import AccessReceipt, AuditEvent, AuditSalt
from broker.audit.tags import EventTag
from broker.db import utcnow

__all__ = [
    "append_event",
    "canonical_json",
    "commitment",
    "erase_patient_audit",
    "event_body",
    "filter_columns",
    "seal",
]

_EVENTS = cast(Table, AuditEvent.__table__)
_MAX_DEPTH = 8


def canonical_json(value: object) -> bytes:
    """Sorted keys, no whitespace, UTF-8 without ASCII escapes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _check_json(value: Any, depth: int = 0) -> None:
    # Floats are refused: their text form differs between serializers, and a commitment must
    # be recomputable byte for byte by anyone, in any language.
    if depth > _MAX_DEPTH:
        raise ValueError("audit details are nested too deeply")
    if value is None or isinstance(value, bool | int | str):
        return
    if isinstance(value, list):
        for item in value:
            _check_json(item, depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError("audit details: keys must be strings")
            _check_json(item, depth + 1)
        return
    kind = type(value).__name__
    raise ValueError(f"audit details: {kind} is not allowed (strings, integers, lists, objects)")


def _joined(values: Iterable[Any]) -> str | None:
    items = sorted({str(v) for v in values if isinstance(v, str) and v})
    return "," + ",".join(items) + "," if items else None


def filter_columns(details: Mapping[str, Any] | None) -> dict[str, str | None]:
    """The columns the patient's filters use, as ``details`` gives them."""
    details = details or {}
    app = details.get("app")
    holders: list[Any] = []
    if isinstance(details.get("holder"), str):
        holders.append(details["holder"])
    if isinstance(details.get("holders"), list):
        holders += details["holders"]
    categories = details.get("categories")
    return {
        "app_id": app if isinstance(app, str) else None,
        "holders": _joined(holders),
        "categories": _joined(categories if isinstance(categories, list) else []),
    }


#: ``session.info`` key of the events appended in the session's open transaction, as
#: ``(tag, details)``; the metrics (broker/ops/metrics.py) count them once it commits.
COMMITTING_EVENTS = "audit_events_committing"


def append_event(
    session: Session,
    *,
    tag: EventTag | str,
    patient_id: str | None,
    actor: str,
    details: dict[str, Any],
    at: datetime,
) -> None:
    """Add an event to the log, in the caller's transaction: one INSERT, nothing read.

    ``details`` is a JSON object of strings, integers, booleans, lists and objects; the keys
    ``app`` (client id), ``holder`` / ``holders`` and ``categories`` feed the patient's
    filters. ``at`` is when the recorded change happened (timezone-aware).
    """
    tag = EventTag(tag)  # an unknown tag is a programming error
    if at.tzinfo is None:
        raise ValueError("at must be timezone-aware")
    _check_json(details)
    session.execute(
        insert(_EVENTS),
        {
            "tag": tag.value,
            "at": at,
            "patient_id": patient_id,
            "actor": actor,
            "details": details,
            **filter_columns(details),
        },
    )
    session.info.setdefault(COMMITTING_EVENTS, []).append((tag.value, details))


def iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="microseconds")


def event_body(
    *,
    index: int,
    event_id: int,
    tag: str,
    at: datetime,
    patient_id: str | None,
    actor: str | None,
    details: Any,
) -> bytes:
    """The bytes a leaf commits to (see the module's docstring)."""
    return canonical_json(
        {
            "v": 1,
            "index": index,
            "id": event_id,
            "tag": tag,
            "at": iso(at),
            "patient": patient_id,
            "actor": actor,
            "details": details,
        }
    )


def commitment(salt: bytes | None, body: bytes) -> bytes:
    return hmac.new(salt or b"", body, hashlib.sha256).digest()


def seal_key(secret_key: bytes) -> bytes:
    return hmac.new(secret_key, b"broker audit seal v1", hashlib.sha256).digest()


def seal(key: bytes, index: int, leaf_hash: bytes) -> bytes:
    return hmac.new(key, index.to_bytes(8, "big") + leaf_hash, hashlib.sha256).digest()


def erase_patient_audit(session: Session, patient_id: str, now: datetime | None = None) -> int:
    """Forget what the log says about a patient; the tree still verifies.

    The salt goes, so their commitments can no longer be opened or guessed; the readable
    columns of their events are cleared (the leaf commitments stay, with the tag and the
    time, which say nothing about who). Events not yet in the tree are simply deleted: no
    checkpoint covers them. Returns the number of events erased.
    """
    now = now or utcnow()
    session.execute(
        delete(AuditEvent)
        .where(AuditEvent.patient_id == patient_id, AuditEvent.leaf_index.is_(None))
        .execution_options(synchronize_session=False)
    )
    result = session.execute(
        update(AuditEvent)
        .where(AuditEvent.patient_id == patient_id)
        .values(
            patient_id=None,
            actor=None,
            app_id=None,
            holders=None,
            categories=None,
            details=None,
            erased_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    session.execute(delete(AuditSalt).where(AuditSalt.patient_id == patient_id))
    session.execute(delete(AccessReceipt).where(AccessReceipt.patient_id == patient_id))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
