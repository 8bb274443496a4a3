"""The sequencer: gives appended events their place in the tree and signs checkpoints.

Requests only insert events (``append_event``); nothing is locked across a request. The
sequencer, run by every broker process in the background (``BROKER_AUDIT_INTERVAL``) and on
demand (before a proof is built, ``broker audit sequence``), takes the events not yet in the
tree in id order, gives them consecutive leaf indices, computes their commitments and seals,
extends the tree from the right edge kept with the latest checkpoint, and signs a new
checkpoint — all in one transaction, so a checkpoint never covers an event that is not there.

Only one sequencer works at a time, across every process: a PostgreSQL advisory lock held
for the transaction, or SQLite's write lock taken first (``BEGIN IMMEDIATE``). Events of
transactions still open are invisible to it and are placed by a later run, so the index
order is the order in which events became visible, which is what a log can promise.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol, cast

from anyio import to_thread
from sqlalchemy import Table, bindparam, select, text, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from broker.audit.log import commitment, event_body, seal, seal_key
from broker.audit.merkle import CompactRange, leaf_hash
from broker.audit.models import AuditCheckpoint, AuditEvent, AuditSalt
from broker.db import transaction, utcnow

log = logging.getLogger("broker.audit")

CHECKPOINT_TYP = "audit-checkpoint+jwt"
BATCH = 5000
# pg_advisory_xact_lock key of the sequencer: "audit" in ASCII.
LOCK_KEY = 0x6175646974
_EVENTS = cast(Table, AuditEvent.__table__)


class Signer(Protocol):
    """What signs checkpoints: ``broker.keys.KeyStore`` is one."""

    def sign(self, claims: dict[str, Any], typ: str) -> str: ...


def b64(data: bytes) -> str:
    """Standard base64, as RFC 9162 carries hashes in JSON."""
    return base64.b64encode(data).decode("ascii")


def _lock(session: Session, wait: bool) -> bool:
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        if wait:
            session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK_KEY})
            return True
        return bool(session.scalar(text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": LOCK_KEY}))
    # SQLite: take the write lock before reading anything, so that two sequencers never
    # read the same tree head (the session must not have written yet).
    try:
        session.connection().exec_driver_sql("BEGIN IMMEDIATE")
    except OperationalError:
        if wait:
            raise
        return False
    return True


def checkpoint_claims(issuer: str, tree_size: int, root: bytes, issued_at: datetime) -> dict[str, Any]:
    return {"iss": issuer, "tree_size": tree_size, "root_hash": b64(root), "iat": int(issued_at.timestamp())}


def sequence_batch(
    session: Session,
    *,
    signer: Signer,
    secret_key: bytes,
    issuer: str,
    now: datetime,
    limit: int = BATCH,
    wait: bool = True,
) -> int | None:
    """Place up to ``limit`` events and sign a checkpoint, in the session's transaction.

    Returns how many events were placed, or None when another sequencer is at work (and
    ``wait`` is false). Call it on a fresh session: it must take its lock first.
    """
    if not _lock(session, wait):
        return None
    latest = session.scalars(
        select(AuditCheckpoint).order_by(AuditCheckpoint.tree_size.desc()).limit(1)
    ).first()
    tree = CompactRange.from_bytes(latest.tree_size, latest.compact) if latest else CompactRange()
    ev = AuditEvent
    rows = session.execute(
        select(ev.id, ev.tag, ev.at, ev.patient_id, ev.actor, ev.details)
        .where(ev.leaf_index.is_(None))
        .order_by(ev.id)
        .limit(limit)
        .with_for_update()  # an erasure waits for this batch rather than racing it
    ).all()
    if not rows:
        return 0
    patients = {r.patient_id for r in rows if r.patient_id is not None}
    salts: dict[str, bytes] = {}
    if patients:
        found = session.execute(
            select(AuditSalt.patient_id, AuditSalt.salt).where(AuditSalt.patient_id.in_(patients))
        )
        salts = {patient_id: salt for patient_id, salt in found}
        for patient_id in sorted(patients - set(salts)):
            salts[patient_id] = secrets.token_bytes(32)
            session.add(AuditSalt(patient_id=patient_id, salt=salts[patient_id], created_at=now))
        session.flush()
    key = seal_key(secret_key)
    placed = []
    for row in rows:
        index = tree.size
        body = event_body(
            index=index,
            event_id=row.id,
            tag=row.tag,
            at=row.at,
            patient_id=row.patient_id,
            actor=row.actor,
            details=row.details,
        )
        leaf = commitment(salts.get(row.patient_id) if row.patient_id else None, body)
        hashed = leaf_hash(leaf)
        tree.append(hashed)
        placed.append({"b_id": row.id, "b_index": index, "b_leaf": leaf, "b_seal": seal(key, index, hashed)})
    session.execute(
        update(_EVENTS)
        .where(_EVENTS.c.id == bindparam("b_id"))
        .values(leaf_index=bindparam("b_index"), commitment=bindparam("b_leaf"), seal=bindparam("b_seal")),
        placed,
    )
    issued_at = datetime.fromtimestamp(int(now.timestamp()), UTC)
    root = tree.root()
    session.add(
        AuditCheckpoint(
            tree_size=tree.size,
            root_hash=root,
            issued_at=issued_at,
            signed=signer.sign(checkpoint_claims(issuer, tree.size, root, issued_at), CHECKPOINT_TYP),
            compact=tree.to_bytes(),
        )
    )
    return len(rows)


def sequence(
    factory: sessionmaker[Session],
    *,
    signer: Signer,
    secret_key: bytes,
    issuer: str,
    wait: bool = True,
    limit: int = BATCH,
) -> int:
    """Place every visible event, one transaction per batch; returns how many were placed."""
    total = 0
    while True:
        with transaction(factory) as session:
            placed = sequence_batch(
                session,
                signer=signer,
                secret_key=secret_key,
                issuer=issuer,
                now=utcnow(),
                limit=limit,
                wait=wait,
            )
        if placed is None:
            return total
        total += placed
        if placed < limit:
            return total


class BackgroundSequencer:
    """Runs ``sequence`` every ``interval`` seconds while the app lives (its lifespan)."""

    def __init__(self, run: Callable[[], int], interval: float, name: str = "audit sequencer") -> None:
        self._run = run
        self.interval = interval
        self.name = name  # other periodic work runs the same way (the federation's synchroniser)
        self._task: asyncio.Task[None] | None = None

    async def _loop(self) -> None:
        while True:
            try:
                await to_thread.run_sync(self._run)
            except Exception:  # logged; the next tick tries again
                log.exception("%s run failed", self.name)
            await asyncio.sleep(self.interval)

    async def start(self) -> None:
        # An app may be started again on another event loop (a test client opened twice):
        # a task left on another loop is that loop's to end.
        running = self._task is not None and self._task.get_loop() is asyncio.get_running_loop()
        if self.interval > 0 and not running:
            self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        if task.get_loop() is asyncio.get_running_loop():
            try:
                await task
            except asyncio.CancelledError:
                pass
