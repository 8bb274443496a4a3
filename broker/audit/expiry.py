"""Consents that reach their end date: marked expired, and told once in the patient's log.

A consent stops working the moment ``expires_at`` passes (the token endpoint and the status
list compare the time already); what this sweep adds is the record: the consent's status
becomes ``expired``, its status-list entry turns INVALID, a status record ``expired`` joins
its chain, and a ``patient:consent:expired`` event enters the audit log, dated at the
expiry itself. The broker's background task (the audit sequencer's tick, ``app.py``) runs
it about once a minute on every node.

Once each: a consent is claimed by a conditional UPDATE (``status`` still active or
suspended, ``expires_at`` past), so when two nodes sweep together only the one whose UPDATE
changed the row writes the event; a second sweep finds nothing to do.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from broker.audit.log import append_event
from broker.audit.tags import EventTag
from broker.consent.models import ConsentEvent, ConsentRecord, StatusEntry
from broker.consent.service import INVALID
from broker.db import transaction, utcnow

__all__ = ["BATCH", "ExpirySweep", "expire_consents"]

log = logging.getLogger("broker.audit")

BATCH = 500
# A consent in force, or in force but for its app's suspension, can run out.
_LIVE = ("active", "suspended")


def expire_consents(session: Session, *, now: datetime, limit: int = BATCH) -> int:
    """Mark up to ``limit`` consents past their end as expired, in the caller's transaction.

    Returns how many this call expired (and logged).
    """
    due = session.scalars(
        select(ConsentRecord.id)
        .where(ConsentRecord.status.in_(_LIVE), ConsentRecord.expires_at <= now)
        .order_by(ConsentRecord.expires_at, ConsentRecord.id)
        .limit(limit)
    ).all()
    expired = 0
    for consent_id in due:
        claimed = session.execute(
            update(ConsentRecord)
            .where(
                ConsentRecord.id == consent_id,
                ConsentRecord.status.in_(_LIVE),
                ConsentRecord.expires_at <= now,
            )
            .values(status="expired", updated_at=now)
            .execution_options(synchronize_session=False)
        )
        if claimed.rowcount != 1:  # type: ignore[attr-defined]
            continue  # another node expired it first, or it was renewed meanwhile
        consent = session.get(ConsentRecord, consent_id, populate_existing=True)
        assert consent is not None
        session.execute(
            update(StatusEntry)
            .where(StatusEntry.id == consent.status_entry_id)
            .values(status=INVALID, updated_at=now)
        )
        grants: list[dict[str, Any]] = consent.grants or []
        session.add(
            ConsentEvent(
                consent_id=consent.id,
                action="expired",
                status="expired",
                at=consent.expires_at,
                by="broker",
                reason="the consent reached its end date",
                grants=grants,
            )
        )
        append_event(
            session,
            tag=EventTag.CONSENT_EXPIRED,
            patient_id=consent.patient_id,
            actor="broker",
            details={
                "app": consent.client_id,
                "consent_id": consent.id,
                "holders": sorted({g["holder"] for g in grants}),
                "categories": sorted({c for g in grants for c in g["categories"]}),
                "purposes": list(consent.purposes),
                "expires_at": consent.expires_at.isoformat(),
            },
            at=consent.expires_at,
        )
        expired += 1
    return expired


class ExpirySweep:
    """``expire_consents`` every ``every`` seconds at most, one transaction per batch.

    Called from the background task's tick, which comes more often than consents expire.
    """

    def __init__(self, factory: sessionmaker[Session], every: float = 60.0) -> None:
        self.factory = factory
        self.every = every
        self._last: float | None = None

    def __call__(self) -> int:
        clock = time.monotonic()
        if self._last is not None and clock - self._last < self.every:
            return 0
        self._last = clock
        total = 0
        while True:
            with transaction(self.factory) as session:
                done = expire_consents(session, now=utcnow())
            total += done
            if done < BATCH:
                break
        if total:
            log.info("%d consents expired", total)
        return total
