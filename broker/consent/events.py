"""The push stream of revocations for holders (Server-Sent Events, DESIGN step 9).

A holder subscribed here learns within a second that a consent covering it was withdrawn,
instead of waiting for its cached status list to expire. The stream reads the consent
events table (``id`` is the SSE event id), so it works the same on every broker node and
resumes after a gap from ``Last-Event-ID`` without losing an event.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from litestar import Request, get
from litestar.datastructures import State
from litestar.response import ServerSentEvent, ServerSentEventMessage
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from broker.catalog.models import Holder
from broker.consent.models import ConsentEvent
from broker.consent.proofs import JoseError, verify_client_assertion
from broker.consent.replay_store import DatabaseReplayCache
from broker.db import utcnow
from broker.errors import InvalidToken
from broker.http import bearer_token, in_transaction
from broker.ops.shutdown import until_draining

POLL_SECONDS = 0.25
HEARTBEAT_SECONDS = 15.0
ENDING = ("revoked",)


def revocations_after(
    session: Session, holder_id: str, last_id: int, limit: int = 500
) -> list[dict[str, Any]]:
    """Withdrawals after ``last_id`` of consents that granted something at this holder."""
    rows = session.scalars(
        select(ConsentEvent)
        .where(ConsentEvent.id > last_id, ConsentEvent.action.in_(ENDING))
        .order_by(ConsentEvent.id)
        .limit(limit)
    ).all()
    out = []
    for row in rows:
        holders = {g.get("holder") for g in (row.grants or [])}
        out.append(
            {
                "id": row.id,
                "relevant": holder_id in holders,
                "consent_id": row.consent_id,
                "status": row.status,
                "at": row.at.isoformat(),
            }
        )
    return out


def _after(session: Session, *, holder: str, last_id: int) -> list[dict[str, Any]]:
    return revocations_after(session, holder, last_id)


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

    async def stream() -> AsyncIterator[ServerSentEventMessage]:
        last = start
        idle = 0.0
        yield ServerSentEventMessage(comment="subscribed", retry=1000, data=None)
        while True:
            events = await in_transaction(factory, functools.partial(_after, holder=holder, last_id=last))
            for event in events:
                last = event["id"]
                if event.pop("relevant"):
                    yield ServerSentEventMessage(
                        id=event["id"], event="revoked", data=json.dumps(event, separators=(",", ":"))
                    )
                    idle = 0.0
            if idle >= HEARTBEAT_SECONDS:
                yield ServerSentEventMessage(comment="keep-alive", data=None)
                idle = 0.0
            await asyncio.sleep(POLL_SECONDS)
            idle += POLL_SECONDS

    # On shutdown the stream ends with a comment; the holder reconnects elsewhere, resuming
    # from its Last-Event-ID.
    farewell = ServerSentEventMessage(comment="closing: this node is shutting down", data=None)
    return ServerSentEvent(
        until_draining(stream(), state.draining, farewell), headers={"Cache-Control": "no-store"}
    )
