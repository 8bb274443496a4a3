"""The database-backed replay cache: one ``jti`` use per key, shared by every broker node."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from broker.consent.models import UsedJti
from broker.db import transaction


class DatabaseReplayCache:
    """``ReplayCache`` on the ``used_jtis`` table; the primary key decides races.

    Each use is recorded in a transaction of its own, committed at once: a request that
    fails later (a wrong code, an expired grant) must not roll back the fact that its
    assertion or proof was spent, or the same one could be replayed.
    """

    def __init__(self, factory: sessionmaker[Session], now: datetime) -> None:
        self.factory = factory
        self.now = now

    def first_use(self, key: str, expires_at: datetime) -> bool:
        key = key[:300]
        try:
            with transaction(self.factory) as session:
                # Expired records go as new ones come (an index range on expires_at, usually
                # empty), so the table holds only what can still be replayed.
                session.execute(delete(UsedJti).where(UsedJti.expires_at <= self.now))
                session.add(UsedJti(key=key, expires_at=expires_at))
        except IntegrityError:
            return False
        return True

