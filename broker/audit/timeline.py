"""A patient's own events: the timeline (filtered, paginated) and the export with proofs.

Every query here is scoped to one patient id, given by the caller from the logged-in
session; filters and cursors only ever narrow that set, so another patient's app, holder,
category or cursor yields what a made-up one yields: nothing, and no count.

The export (``format`` ``broker-audit-export/1``) is what an offline verifier needs::

    {"format", "issuer", "patient_id", "salt": base64,
     "checkpoint": {"tree_size", "root_hash", "timestamp", "signed": compact JWS},
     "entries": [{"leaf_index", "id", "tag", "at", "patient", "actor", "details",
                  "commitment": base64, "inclusion_path": [base64, ...]}],
     "pending": [events not yet covered by the checkpoint]}

For each entry: body = canonical JSON of ``{"v": 1, "index": leaf_index, "id", "tag", "at",
"patient", "actor", "details"}``; commitment = HMAC-SHA256(salt, body); leaf hash =
SHA-256(0x00 || commitment); the inclusion path leads to ``root_hash`` (RFC 9162
§2.1.3.2); the checkpoint's JWS verifies with the broker's JWKS (``typ``
``audit-checkpoint+jwt``) and says the same size and root.
"""

from __future__ import annotations

import base64
import json
from datetime import datetime
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from broker import strictjson
from broker.audit.checkpoints import checkpoint_json, latest_checkpoint, load_tree
from broker.audit.log import iso
from broker.audit.models import AuditEvent, AuditSalt
from broker.audit.sequencer import b64
from broker.errors import InvalidRequest

EXPORT_FORMAT = "broker-audit-export/1"
MAX_PAGE = 200


def _parse_time(value: str | None, name: str) -> datetime | None:
    if value is None or value == "":
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequest(f"{name}: an ISO 8601 date and time", field=name) from None
    if parsed.tzinfo is None:
        raise InvalidRequest(f"{name}: give a time zone (Z or +hh:mm)", field=name)
    return parsed


def _encode_cursor(event: AuditEvent) -> str:
    raw = json.dumps([iso(event.at), event.id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, int]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at, event_id = strictjson.loads(raw)
        if not isinstance(at, str) or not isinstance(event_id, int) or isinstance(event_id, bool):
            raise ValueError
        parsed = datetime.fromisoformat(at)
        if parsed.tzinfo is None:
            raise ValueError
        return parsed, event_id
    except (ValueError, TypeError):
        raise InvalidRequest("cursor: not a cursor this API gave out", field="cursor") from None


def _filter(name: str, value: str | None) -> str | None:
    if value is None or value == "":
        return None
    if len(value) > 64 or "," in value:
        raise InvalidRequest(f"{name}: an identifier of at most 64 characters", field=name)
    return value


def event_json(event: AuditEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "tag": event.tag,
        "at": iso(event.at),
        "actor": event.actor,
        "details": event.details,
        "leaf_index": event.leaf_index,
    }


def patient_events(
    session: Session,
    *,
    patient_id: str,
    app: str | None = None,
    holder: str | None = None,
    category: str | None = None,
    since: str | None = None,
    until: str | None = None,
    cursor: str | None = None,
    limit: int = 50,
) -> dict[str, Any]:
    """One page of the patient's events, newest first, with the next page's cursor."""
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidRequest(f"limit: from 1 to {MAX_PAGE}", field="limit")
    ev = AuditEvent
    query = select(ev).where(ev.patient_id == patient_id)
    if (app := _filter("app", app)) is not None:
        query = query.where(ev.app_id == app)
    if (holder := _filter("holder", holder)) is not None:
        query = query.where(ev.holders.contains(f",{holder},", autoescape=True))
    if (category := _filter("category", category)) is not None:
        query = query.where(ev.categories.contains(f",{category},", autoescape=True))
    if (start := _parse_time(since, "since")) is not None:
        query = query.where(ev.at >= start)
    if (end := _parse_time(until, "until")) is not None:
        query = query.where(ev.at < end)
    if cursor:
        at, event_id = _decode_cursor(cursor)
        query = query.where(or_(ev.at < at, and_(ev.at == at, ev.id < event_id)))
    rows = list(session.scalars(query.order_by(ev.at.desc(), ev.id.desc()).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return {
        "items": [event_json(e) for e in rows],
        "next_cursor": _encode_cursor(rows[-1]) if more else None,
    }


def patient_export(session: Session, *, patient_id: str, issuer: str) -> dict[str, Any]:
    """Every event of the patient, with inclusion proofs against the latest checkpoint."""
    checkpoint = latest_checkpoint(session)
    size = checkpoint.tree_size if checkpoint is not None else 0
    rows = list(
        session.scalars(
            select(AuditEvent)
            .where(AuditEvent.patient_id == patient_id)
            .order_by(AuditEvent.leaf_index.is_(None), AuditEvent.leaf_index, AuditEvent.id)
        )
    )
    salt = session.get(AuditSalt, patient_id)
    covered = [e for e in rows if e.leaf_index is not None and e.leaf_index < size]
    tree = load_tree(session, size) if covered else None
    entries = []
    for event in covered:
        assert tree is not None and event.leaf_index is not None and event.commitment is not None
        entries.append(
            {
                "leaf_index": event.leaf_index,
                "id": event.id,
                "tag": event.tag,
                "at": iso(event.at),
                "patient": event.patient_id,
                "actor": event.actor,
                "details": event.details,
                "commitment": b64(event.commitment),
                "inclusion_path": [b64(h) for h in tree.inclusion_proof(event.leaf_index, size)],
            }
        )
    return {
        "format": EXPORT_FORMAT,
        "issuer": issuer,
        "patient_id": patient_id,
        "salt": b64(salt.salt) if salt is not None else None,
        "checkpoint": checkpoint_json(checkpoint) if checkpoint is not None else None,
        "entries": entries,
        "pending": [event_json(e) for e in rows if e not in covered],
    }
