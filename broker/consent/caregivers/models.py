"""Caregivers («aidants»): a patient lets another account manage their consents, for a
period and within limits. Identities and permissions only, never health data."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from broker.db import Base, UTCDateTime, utcnow

# What a caregiver may do, each level including the ones before it.
VIEW, REVOKE, GRANT = "view", "revoke", "grant"
RIGHTS = (VIEW, REVOKE, GRANT)


class Delegation(Base):
    """One patient's invitation to one caregiver, and then the help it allows.

    The invitation names an e-mail address (``invitee_key``, folded as account keys are), not
    an account: whether the address has an account is never told to the person who invites
    (SECURITY W8). The account that answers is recorded in ``caregiver_id``.

    ``status``: invited → active (accepted) | declined; active → withdrawn (by the patient)
    | ended (by the caregiver, or their account was deleted). It is over, whatever the
    status, once ``ends_at`` has passed. Records are marked, never deleted, while both
    accounts exist.
    """

    __tablename__ = "delegations"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    patient_id: Mapped[str] = mapped_column(ForeignKey("patients.id", ondelete="CASCADE"), index=True)
    invitee_email: Mapped[str] = mapped_column(String(254))  # as the patient typed it
    invitee_key: Mapped[str] = mapped_column(String(254), index=True)
    caregiver_id: Mapped[str | None] = mapped_column(
        ForeignKey("patients.id", ondelete="CASCADE"), index=True, nullable=True
    )
    rights: Mapped[str] = mapped_column(String(16))  # view | revoke | grant
    # Only with ``grant``: the data categories and holders a caregiver may consent to.
    categories: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    holders: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    status: Mapped[str] = mapped_column(String(16), default="invited")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    ends_at: Mapped[datetime] = mapped_column(UTCDateTime())
    answered_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    ended_by: Mapped[str | None] = mapped_column(String(120), nullable=True)

    def in_force(self, now: datetime) -> bool:
        return self.status == "active" and now < self.ends_at

    def allows(self, right: str) -> bool:
        return RIGHTS.index(self.rights) >= RIGHTS.index(right)
