"""Links, consent records, and the bookkeeping of the OAuth flow: metadata only.

Secrets (authorization codes, refresh tokens) are stored as HMACs; records are never deleted
to revoke something: they are marked (STYLE 5, authlib's habit).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from broker.db import Base, UTCDateTime, utcnow


class HolderLink(Base):
    """Per (patient, holder) an opaque random handle the holder maps to its own record.

    Tokens carry this handle, never a national identifier (DESIGN step 4).
    """

    __tablename__ = "holder_links"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    patient_id: Mapped[str] = mapped_column(ForeignKey("patients.id", ondelete="CASCADE"))
    holder_id: Mapped[str] = mapped_column(ForeignKey("holders.identifier"), index=True)
    handle: Mapped[str] = mapped_column(String(64), unique=True)
    status: Mapped[str] = mapped_column(String(16), default="active")  # active | unlinked
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (UniqueConstraint("patient_id", "holder_id"),)


class ConsentRecord(Base):
    """One patient's consent to one app (DESIGN "Records"); it outlives the OAuth dance.

    Granting the same app again updates this record. ``grants`` lists, per holder, the
    categories and purpose consented there (the RFC 9396 ``authorization_details``).
    """

    __tablename__ = "consents"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    patient_id: Mapped[str] = mapped_column(ForeignKey("patients.id", ondelete="CASCADE"))
    client_id: Mapped[str] = mapped_column(ForeignKey("apps.client_id"), index=True)
    purposes: Mapped[list[str]] = mapped_column(JSON)
    grants: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    # active | revoked | expired | suspended (with the app)
    status: Mapped[str] = mapped_column(String(16), default="active")
    granted_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    revoked_by: Mapped[str | None] = mapped_column(String(120), nullable=True)
    revoke_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    charter_version: Mapped[str] = mapped_column(String(32))
    manifest_sha256: Mapped[str] = mapped_column(String(64))
    # The Token Status List entry its tokens point at; a fresh one at every (re)grant, so that
    # tokens issued before a revocation never come back to life.
    status_entry_id: Mapped[int] = mapped_column(ForeignKey("status_entries.id"))

    __table_args__ = (UniqueConstraint("patient_id", "client_id"),)


class ConsentEvent(Base):
    """The chain of a consent's status records: granted, changed, revoked, suspended …"""

    __tablename__ = "consent_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    consent_id: Mapped[str] = mapped_column(ForeignKey("consents.id", ondelete="CASCADE"), index=True)
    action: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    by: Mapped[str] = mapped_column(String(120))
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    grants: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, nullable=True)


class StatusEntry(Base):
    """One entry of a Token Status List: ``id`` gives the list and the index within it."""

    __tablename__ = "status_entries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    status: Mapped[int] = mapped_column(Integer, default=0)  # 0 valid, 1 invalid, 2 suspended
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class AuthorizationRequest(Base):
    """An authorization request between /authorize (or PAR) and the patient's decision."""

    __tablename__ = "authorization_requests"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    client_id: Mapped[str] = mapped_column(ForeignKey("apps.client_id"))
    redirect_uri: Mapped[str] = mapped_column(String(2000))
    state: Mapped[str] = mapped_column(String(500))
    code_challenge: Mapped[str] = mapped_column(String(128))
    # What the app asked for, validated against its approved manifest: per holder (or for
    # every linked holder when ``holder`` is null) the categories and the purpose.
    requested: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    pushed: Mapped[bool] = mapped_column(default=False)  # RFC 9126
    # The patient who saw the consent screen; only they can answer it.
    patient_id: Mapped[str | None] = mapped_column(
        ForeignKey("patients.id", ondelete="CASCADE"), nullable=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class AuthorizationCode(Base):
    __tablename__ = "authorization_codes"

    code_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    client_id: Mapped[str] = mapped_column(ForeignKey("apps.client_id"))
    patient_id: Mapped[str] = mapped_column(ForeignKey("patients.id", ondelete="CASCADE"))
    consent_id: Mapped[str] = mapped_column(ForeignKey("consents.id", ondelete="CASCADE"))
    redirect_uri: Mapped[str] = mapped_column(String(2000))
    code_challenge: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # The refresh-token family the code produced: revoked if the code is ever replayed.
    family_id: Mapped[str | None] = mapped_column(String(40), nullable=True)


class RefreshToken(Base):
    """A refresh token, rotated on every use; a family shares one consent and one lineage."""

    __tablename__ = "refresh_tokens"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    family_id: Mapped[str] = mapped_column(String(40), index=True)
    consent_id: Mapped[str] = mapped_column(ForeignKey("consents.id", ondelete="CASCADE"), index=True)
    client_id: Mapped[str] = mapped_column(ForeignKey("apps.client_id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # RFC 9449 §5: the DPoP key a public client's refresh tokens are bound to, if any.
    dpop_jkt: Mapped[str | None] = mapped_column(String(64), nullable=True)


class LinkRequest(Base):
    """A patient sent to a holder to be linked; ``state`` (stored as an HMAC) brings them back."""

    __tablename__ = "link_requests"

    state_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    patient_id: Mapped[str] = mapped_column(ForeignKey("patients.id", ondelete="CASCADE"))
    holder_id: Mapped[str] = mapped_column(ForeignKey("holders.identifier"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class UsedJti(Base):
    """Replay cache for client assertions and DPoP proofs, shared by every broker node."""

    __tablename__ = "used_jtis"

    key: Mapped[str] = mapped_column(String(300), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
