"""The rows federation documents are built from: apps and holders, read only."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from broker.catalog.models import App, Holder


def app_ids(session: Session, statuses: Sequence[str]) -> Sequence[str]:
    return session.scalars(
        select(App.client_id).where(App.status.in_(statuses)).order_by(App.client_id)
    ).all()


def holder_ids(session: Session, statuses: Sequence[str]) -> Sequence[str]:
    return session.scalars(
        select(Holder.identifier).where(Holder.status.in_(statuses)).order_by(Holder.identifier)
    ).all()


def get_app(session: Session, client_id: str) -> App | None:
    return session.get(App, client_id)


def get_holder(session: Session, identifier: str) -> Holder | None:
    return session.get(Holder, identifier)
