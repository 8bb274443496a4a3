"""Trusted peer brokers and the apps imported from them: metadata only, never health data."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from broker.db import Base, UTCDateTime, utcnow


class FederationPeer(Base):
    """A broker this one trusts, added by the operator with its keys pinned.

    ``jwks`` is the peer's key set trusted now: pinned when the operator adds the peer, and
    replaced only by a configuration that a key trusted before signed, or that the pinned
    trust anchor vouches for. ``import_apps`` is false for a peer this broker only vouches for
    as its superior (a trust anchor's subordinates).
    """

    __tablename__ = "federation_peers"

    entity_id: Mapped[str] = mapped_column(String(2000), primary_key=True)
    jwks: Mapped[dict[str, Any]] = mapped_column(JSON)
    trust_anchor: Mapped[str | None] = mapped_column(String(2000), nullable=True)
    trust_anchor_jwks: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    import_apps: Mapped[bool] = mapped_column(Boolean, default=True)
    # active (synchronised as asked) | refused (the last synchronisation was refused)
    state: Mapped[str] = mapped_column(String(16), default="active")
    added_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    added_by: Mapped[str] = mapped_column(String(120))
    last_sync_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_success_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # "<reason>: <detail>" of the last refused synchronisation, NULL after a successful one.
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    charter_version: Mapped[str | None] = mapped_column(String(32), nullable=True)


class ImportedApp(Base):
    """An app of the local catalog that was registered at a peer, and what the peer said of it.

    The row in ``apps`` is this broker's own: its verdict comes from this broker's charter.
    This row remembers where it came from and the peer's word at the last synchronisation.
    """

    __tablename__ = "federation_imported_apps"

    client_id: Mapped[str] = mapped_column(ForeignKey("apps.client_id", ondelete="CASCADE"), primary_key=True)
    peer_id: Mapped[str] = mapped_column(
        ForeignKey("federation_peers.entity_id", ondelete="CASCADE"), index=True
    )
    entity_id: Mapped[str] = mapped_column(String(2000))
    # approved | suspended | dropped (no longer listed) | revoked (its trust mark) | removed
    origin_status: Mapped[str] = mapped_column(String(16))
    origin_manifest_sha256: Mapped[str] = mapped_column(String(64))
    origin_charter_version: Mapped[str | None] = mapped_column(String(32), nullable=True)
    imported_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    synced_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
