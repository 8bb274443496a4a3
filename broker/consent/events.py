"""The push stream of revocations for holders (Server-Sent Events, DESIGN step 9).

A holder subscribed here learns within a second that a consent covering it was withdrawn,
instead of waiting for its cached status list to expire. The stream reads the consent
events table (``id`` is the SSE event id), so it works the same on every broker node and
resumes after a gap from ``Last-Event-ID`` without losing an event. When to read it is told
by ``push.py`` (PostgreSQL LISTEN/NOTIFY across nodes; polling on SQLite).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any

from litestar import Request, get
from litestar.datastructures import State
from litestar.response import ServerSentEvent, ServerSentEventMessage
from sqlalchemy import ColumnElement, or_, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from broker.catalog.models import Holder
from broker.consent.models import ConsentEvent
from broker.consent.proofs import JoseError, verify_client_assertion
from broker.consent.push import PushHub
from broker.consent.replay_store import DatabaseReplayCache
from broker.db import utcnow
from broker.errors import InvalidToken
from broker.http import bearer_token, in_transaction
from broker.ops.shutdown import until_draining

log = logging.getLogger("broker.push")

HEARTBEAT_SECONDS = 15.0
DATABASE_RETRY_SECONDS = 0.5
# What a holder is told: a withdrawal (tokens issued until then are refused for good), and
# the suspension of the app by a charter re-check and its restoration.
PUSHED = ("revoked", "suspended", "restored")
BATCH = 500
# Ids are taken at insert, rows become visible at commit: on PostgreSQL, with several nodes,
# event 11 can be read before event 10 commits. A missing id is waited for this long (a
# rolled-back insert leaves a hole for good) and at most this many of them.
GAP_SECONDS = 10.0
MAX_GAPS = 2000


class Cursor:
    """A subscriber's position in the consent events, exact despite out-of-order commits.

    ``floor``: every event up to it was read (or its id waited for in vain); it is what the
    stream sends as the SSE event id, so a holder resuming with ``Last-Event-ID`` gets
    everything after it — at worst an event it had already, never one fewer.
    """

    def __init__(self, floor: int) -> None:
        self.floor = floor
        self._seen: set[int] = set()
        self._missing: dict[int, float] = {}  # id -> when first missed (monotonic)

    @property
    def top(self) -> int:
        """The highest id read so far: what comes next is read from there."""
        return max(self._seen, default=self.floor)

    @property
    def waiting(self) -> list[int]:
        """Ids below ``top`` not read yet (their transactions may still commit)."""
        return sorted(self._missing)

    def take(self, ids: list[int], now: float) -> list[int]:
        """The ids read this time that were not read before; moves the floor."""
        fresh = [i for i in ids if i > self.floor and i not in self._seen]
        self._seen.update(fresh)
        for i in fresh:
            self._missing.pop(i, None)
        top = max(self._seen, default=self.floor)
        for i in range(max(self.floor + 1, top - MAX_GAPS), top):
            if i not in self._seen:
                self._missing.setdefault(i, now)
        self._missing = {
            i: t for i, t in self._missing.items() if now - t < GAP_SECONDS and i > top - MAX_GAPS
        }
        self.floor = min(self._missing) - 1 if self._missing else max(top, self.floor)
        self._seen = {i for i in self._seen if i > self.floor}
        return fresh


def events_after(
    session: Session,
    holder_id: str,
    last_id: int,
    waiting: Sequence[int] = (),
    limit: int = BATCH,
) -> list[dict[str, Any]]:
    """Every consent event after ``last_id`` (and those of ``waiting`` that are there now),
    flagged ``relevant`` for what this holder is told."""
    after: ColumnElement[bool] = ConsentEvent.id > last_id
    if waiting:
        after = or_(after, ConsentEvent.id.in_(list(waiting)))
    rows = session.execute(
        select(
            ConsentEvent.id,
            ConsentEvent.action,
            ConsentEvent.consent_id,
            ConsentEvent.status,
            ConsentEvent.at,
            ConsentEvent.grants,
        )
        .where(after)
        .order_by(ConsentEvent.id)
        .limit(limit)
    ).all()
    return [
        {
            "id": row.id,
            "relevant": row.action in PUSHED and holder_id in {g.get("holder") for g in (row.grants or [])},
            "event": row.action,
            "consent_id": row.consent_id,
            "status": row.status,
            "at": row.at.isoformat(),
        }
        for row in rows
    ]


def _after(session: Session, *, holder: str, cursor: Cursor) -> list[dict[str, Any]]:
    return events_after(session, holder, cursor.top, cursor.waiting)


def latest_event_id(session: Session) -> int:
    row = session.scalars(select(ConsentEvent.id).order_by(ConsentEvent.id.desc()).limit(1)).first()
    return int(row or 0)


def authenticate_subscriber(
    session: Session,
    holder_id: str,
    assertion: str | None,
    issuer: str,
    now: datetime,
    factory: sessionmaker[Session],
) -> Holder:
    holder = session.get(Holder, holder_id)
    if holder is None or holder.status != "approved" or not holder.jwks or not assertion:
        raise InvalidToken("a holder assertion is required (Authorization: Bearer <JWT>)")
    try:
        verify_client_assertion(
            assertion,
            client_id=holder.identifier,
            client_jwks=holder.jwks,
            audiences=(issuer, f"{issuer}/events/revocations"),
            now=now,
            replay=DatabaseReplayCache(factory, now),
        )
    except JoseError as exc:
        raise InvalidToken(f"holder assertion refused: {exc}") from None
    return holder


@get("/events/revocations", tags=["oauth"], summary="Push stream of revocations for a holder (SSE)")
async def revocation_stream(request: Request[Any, Any, Any], state: State, holder: str) -> ServerSentEvent:
    """``?holder=<identifier>`` with a client assertion of that holder as the bearer token.

    Without ``Last-Event-ID`` the stream starts now; with it, it first replays what was
    missed.
    """
    factory = state.session_factory
    assertion = bearer_token(request)
    now = utcnow()
    await in_transaction(
        factory, lambda s: authenticate_subscriber(s, holder, assertion, state.settings.issuer, now, factory)
    )
    header = request.headers.get("last-event-id")
    if header is not None and header.isdigit():
        start = int(header)
    else:
        start = await in_transaction(factory, latest_event_id)

    hub: PushHub = state.push

    async def stream() -> AsyncIterator[ServerSentEventMessage]:
        cursor = Cursor(start)
        wake = hub.subscribe()
        try:
            yield ServerSentEventMessage(comment="subscribed", retry=1000, data=None)
            idle = time.monotonic()
            while not hub.closed:
                wake.clear()  # before reading: a wake-up during the read is not lost
                try:
                    events = await in_transaction(
                        factory, functools.partial(_after, holder=holder, cursor=cursor)
                    )
                except DBAPIError as exc:
                    # The database is away (restarting): the holder stays subscribed, and
                    # what was committed meanwhile is read once it is back.
                    log.warning("push stream: the database is out of reach (%s); retrying", exc.orig)
                    await asyncio.sleep(DATABASE_RETRY_SECONDS)
                    continue
                fresh = set(cursor.take([e["id"] for e in events], time.monotonic()))
                for event in events:
                    if event["id"] in fresh and event.pop("relevant"):
                        name = event.pop("event")
                        yield ServerSentEventMessage(
                            id=cursor.floor, event=name, data=json.dumps(event, separators=(",", ":"))
                        )
                        idle = time.monotonic()
                if len(events) >= BATCH:
                    continue  # catching up: read on at once
                if time.monotonic() - idle >= HEARTBEAT_SECONDS:
                    yield ServerSentEventMessage(comment="keep-alive", data=None)
                    idle = time.monotonic()
                try:
                    await asyncio.wait_for(wake.wait(), hub.poll_interval)
                except TimeoutError:
                    pass
        finally:
            hub.unsubscribe(wake)

    # On shutdown the stream ends with a comment; the holder reconnects elsewhere, resuming
    # from its Last-Event-ID.
    farewell = ServerSentEventMessage(comment="closing: this node is shutting down", data=None)
    return ServerSentEvent(
        until_draining(stream(), state.draining, farewell), headers={"Cache-Control": "no-store"}
    )
