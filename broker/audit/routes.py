"""The audit log's HTTP surface: checkpoints and proofs (public), access receipts (holders),
the patient's own events and export (the logged-in patient), public indicators."""

from __future__ import annotations

import functools
from typing import Annotated, Any

from anyio import to_thread
from litestar import Request, Response, get, post
from litestar.datastructures import State
from litestar.params import FromQuery, Parameter
from sqlalchemy.orm import Session

from broker.audit.checkpoints import checkpoint_at, checkpoint_json, consistency, inclusion, latest_checkpoint
from broker.audit.indicators import public_indicators
from broker.audit.receipts import RECEIPT_MEDIA_TYPE, ReceiptInvalid, ReceiptMediaType, record_receipt
from broker.audit.sequencer import sequence
from broker.audit.timeline import patient_events, patient_export
from broker.consent.pages import api_action
from broker.consent.patients.models import Patient
from broker.db import utcnow
from broker.errors import NotFound
from broker.http import NO_STORE, Position, in_transaction

# Checkpoints and proofs are the same for everyone and change every few seconds at most.
PUBLIC_CACHE = {"Cache-Control": "public, max-age=5"}


async def sequence_now(state: State) -> int:
    """Place every event appended so far (before a proof is built against the log)."""
    settings = state.settings
    run = functools.partial(
        sequence,
        state.session_factory,
        signer=state.keystore,
        secret_key=settings.secret_key,
        issuer=settings.issuer,
    )
    placed: int = await to_thread.run_sync(run)
    return placed


@get("/.well-known/audit-checkpoint", tags=["audit"], summary="The latest signed checkpoint of the audit log")
async def latest(state: State) -> Response[Any]:
    def work(session: Session) -> dict[str, Any] | None:
        checkpoint = latest_checkpoint(session)
        return checkpoint_json(checkpoint) if checkpoint is not None else None

    body = await in_transaction(state.session_factory, work)
    if body is None:
        await sequence_now(state)
        body = await in_transaction(state.session_factory, work)
    if body is None:
        raise NotFound("the audit log has no checkpoint yet")
    return Response(body, headers=PUBLIC_CACHE)


@get("/api/audit/checkpoints/{tree_size:int}", tags=["audit"], summary="The signed checkpoint of a tree size")
async def checkpoint(state: State, tree_size: Position) -> Response[Any]:
    body = await in_transaction(state.session_factory, lambda s: checkpoint_json(checkpoint_at(s, tree_size)))
    return Response(body, headers=PUBLIC_CACHE)


@get("/api/audit/proofs/inclusion", tags=["audit"], summary="RFC 9162 inclusion proof of one leaf")
async def inclusion_proof(
    state: State, leaf_index: Position, tree_size: Position
) -> Response[Any]:
    body = await in_transaction(
        state.session_factory, lambda s: inclusion(s, leaf_index=leaf_index, tree_size=tree_size)
    )
    return Response(body, headers=PUBLIC_CACHE)


@get("/api/audit/proofs/consistency", tags=["audit"], summary="RFC 9162 consistency proof of two checkpoints")
async def consistency_proof(state: State, first: Position, second: Position) -> Response[Any]:
    body = await in_transaction(state.session_factory, lambda s: consistency(s, first=first, second=second))
    return Response(body, headers=PUBLIC_CACHE)


@post("/receipts", tags=["audit"], summary="A holder's signed access receipt (application/jwt)")
async def receipts(request: Request[Any, Any, Any], state: State) -> Response[Any]:
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != RECEIPT_MEDIA_TYPE:
        given = media_type or "missing"
        raise ReceiptMediaType(f"Content-Type must be {RECEIPT_MEDIA_TYPE}, not {given!r}")
    raw = await request.body()
    try:
        token = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        raise ReceiptInvalid("the body is not a compact JWS") from None
    issuer = state.settings.issuer
    outcome = await in_transaction(
        state.session_factory, lambda s: record_receipt(s, token=token, issuer=issuer, now=utcnow())
    )
    return Response(outcome.to_json(), status_code=201 if outcome.recorded else 200, headers=NO_STORE)


@get("/api/me/audit/events", tags=["patient"], summary="The logged-in patient's own audit events")
async def my_events(
    request: Request[Any, Any, Any],
    state: State,
    app_id: Annotated[str | None, Parameter(query="app")] = None,
    holder: FromQuery[str | None] = None,
    category: FromQuery[str | None] = None,
    since: FromQuery[str | None] = None,
    until: FromQuery[str | None] = None,
    cursor: FromQuery[str | None] = None,
    limit: FromQuery[int] = 50,
) -> Response[Any]:
    def work(session: Session, patient: Patient) -> dict[str, Any]:
        return patient_events(
            session,
            patient_id=patient.id,
            app=app_id,
            holder=holder,
            category=category,
            since=since,
            until=until,
            cursor=cursor,
            limit=limit,
        )

    return await api_action(request, state, work)


@get(
    "/api/me/audit/export",
    tags=["patient"],
    summary="The logged-in patient's events with inclusion proofs and the signed checkpoint",
)
async def my_export(request: Request[Any, Any, Any], state: State) -> Response[Any]:
    await sequence_now(state)
    issuer = state.settings.issuer
    return await api_action(
        request, state, lambda session, patient: patient_export(session, patient_id=patient.id, issuer=issuer)
    )


@get("/api/indicators", tags=["audit"], summary="Public aggregate indicators; small cells suppressed")
async def indicators(state: State) -> Response[Any]:
    body = await in_transaction(state.session_factory, public_indicators)
    return Response(body, headers={"Cache-Control": "public, max-age=60"})


audit_routes = [latest, checkpoint, inclusion_proof, consistency_proof, receipts, indicators]
patient_audit_api = [my_events, my_export]
