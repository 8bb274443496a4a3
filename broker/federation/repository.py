"""The rows federation documents are built from (apps, holders, trusted peers), and the peers."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from broker.catalog.models import App, Holder
from broker.federation.models import FederationPeer, ImportedApp


def app_ids(session: Session, statuses: Sequence[str]) -> Sequence[str]:
    """The apps registered here (imported ones are their origin's to vouch for)."""
    imported = select(ImportedApp.client_id)
    return session.scalars(
        select(App.client_id)
        .where(App.status.in_(statuses), App.client_id.not_in(imported))
        .order_by(App.client_id)
    ).all()


def holder_ids(session: Session, statuses: Sequence[str]) -> Sequence[str]:
    return session.scalars(
        select(Holder.identifier).where(Holder.status.in_(statuses)).order_by(Holder.identifier)
    ).all()


def get_app(session: Session, client_id: str) -> App | None:
    """An app registered here; ``None`` for an imported one (its origin speaks for it)."""
    if session.get(ImportedApp, client_id) is not None:
        return None
    return session.get(App, client_id)


def get_holder(session: Session, identifier: str) -> Holder | None:
    return session.get(Holder, identifier)


def get_peer(session: Session, entity_id: str) -> FederationPeer | None:
    return session.get(FederationPeer, entity_id)


def peer_ids(session: Session) -> Sequence[str]:
    return session.scalars(select(FederationPeer.entity_id).order_by(FederationPeer.entity_id)).all()


def peers(session: Session) -> Sequence[FederationPeer]:
    return session.scalars(select(FederationPeer).order_by(FederationPeer.entity_id)).all()


def imported_from(session: Session, peer_id: str) -> dict[str, ImportedApp]:
    rows = session.scalars(select(ImportedApp).where(ImportedApp.peer_id == peer_id))
    return {row.client_id: row for row in rows}


def origin_of(session: Session, client_id: str) -> ImportedApp | None:
    return session.get(ImportedApp, client_id)


def origins(session: Session, client_ids: Sequence[str]) -> dict[str, str]:
    """client id → entity id of the peer broker it was registered at, for imported apps."""
    if not client_ids:
        return {}
    rows = session.execute(
        select(ImportedApp.client_id, ImportedApp.peer_id).where(ImportedApp.client_id.in_(list(client_ids)))
    )
    return {client_id: peer_id for client_id, peer_id in rows}


def claim_peer(session: Session, peer_id: str, *, now: datetime, not_after: datetime) -> bool:
    """Mark a synchronisation with ``peer_id`` as started, unless one started after ``not_after``.

    One conditional UPDATE: of several processes claiming at once, one changes the row.
    """
    result = session.execute(
        update(FederationPeer)
        .where(
            FederationPeer.entity_id == peer_id,
            or_(FederationPeer.last_sync_at.is_(None), FederationPeer.last_sync_at <= not_after),
        )
        .values(last_sync_at=now)
    )
    return bool(getattr(result, "rowcount", 0) == 1)
