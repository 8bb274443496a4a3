"""The database-backed replay cache: one ``jti`` use per key, shared by every broker node."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from broker.consent.models import UsedJti


class DatabaseReplayCache:
    """``ReplayCache`` on the ``used_jtis`` table; the primary key decides races."""

    def __init__(self, session: Session, now: datetime) -> None:
        self.session = session
        self.now = now

    def first_use(self, key: str, expires_at: datetime) -> bool:
        self.session.execute(delete(UsedJti).where(UsedJti.key == key, UsedJti.expires_at <= self.now))
        try:
            with self.session.begin_nested():
                self.session.add(UsedJti(key=key[:300], expires_at=expires_at))
        except IntegrityError:
            return False
        return True


def purge_expired(session: Session, now: datetime) -> int:
    result = session.execute(delete(UsedJti).where(UsedJti.expires_at <= now))
    return int(getattr(result, "rowcount", 0) or 0)
