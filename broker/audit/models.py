"""The audit log's tables.

``audit_events`` is the log: a request inserts a row (``leaf_index`` NULL); the sequencer
later gives it its place in the Merkle tree (``leaf_index``), its ``commitment`` (the leaf)
and its ``seal``. Rows are never deleted; erasure clears the readable columns of one
patient's rows and keeps the commitments, so that the tree still verifies.

``app_id``, ``holders`` and ``categories`` repeat what ``details`` says, in a form an index
and a ``LIKE`` can use (``,a,b,``), for the patient's filters; ``broker audit verify``
checks that they agree with ``details``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Index, Integer, LargeBinary, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from broker.db import Base, UTCDateTime

# SQLite gives automatic ids only to an INTEGER PRIMARY KEY; PostgreSQL gets a bigint.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class AuditEvent(Base):
    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    tag: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    patient_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    actor: Mapped[str | None] = mapped_column(String(200), nullable=True)
    app_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    holders: Mapped[str | None] = mapped_column(Text, nullable=True)
    categories: Mapped[str | None] = mapped_column(Text, nullable=True)
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # Set by the sequencer, never by a request.
    leaf_index: Mapped[int | None] = mapped_column(BigInteger, nullable=True, unique=True)
    commitment: Mapped[bytes | None] = mapped_column(LargeBinary(32), nullable=True)
    seal: Mapped[bytes | None] = mapped_column(LargeBinary(32), nullable=True)
    erased_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    __table_args__ = (
        # The patient's timeline, newest first, with keyset pagination on (at, id).
        Index("ix_audit_events_patient_at", "patient_id", "at", "id"),
        # What the sequencer has still to place: small, since rows leave it within seconds.
        Index(
            "ix_audit_events_unsequenced",
            "id",
            postgresql_where=text("leaf_index IS NULL"),
            sqlite_where=text("leaf_index IS NULL"),
        ),
        Index("ix_audit_events_tag", "tag"),
    )


class AuditSalt(Base):
    """Each patient's random salt: the key of their events' commitments. Deleting it is
    what erases the log's memory of them (the commitments can no longer be opened)."""

    __tablename__ = "audit_salts"

    patient_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    salt: Mapped[bytes] = mapped_column(LargeBinary(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class AuditCheckpoint(Base):
    """A signed tree head: size, root, time, signed by the broker's key (a compact JWS).

    ``compact`` keeps the right edge of the tree at that size, from which the sequencer
    continues without reading old leaves.
    """

    __tablename__ = "audit_checkpoints"

    tree_size: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    root_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    issued_at: Mapped[datetime] = mapped_column(UTCDateTime())
    signed: Mapped[str] = mapped_column(Text)
    compact: Mapped[bytes] = mapped_column(LargeBinary)


class AccessReceipt(Base):
    """That a holder's receipt was recorded: one row per (holder, jti), so a retried
    receipt enters the log once. The event itself holds what the receipt said."""

    __tablename__ = "audit_receipts"

    holder_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    jti: Mapped[str] = mapped_column(String(64), primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(40), index=True)
    consent_id: Mapped[str] = mapped_column(String(40))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())
    flagged: Mapped[bool] = mapped_column(Boolean, default=False)
