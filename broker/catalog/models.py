"""Holders and apps as the broker stores them: metadata only, never health data."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from broker.db import Base, UTCDateTime, utcnow


class Holder(Base):
    """A health-data holder, registered and approved by the operator (DESIGN step 3)."""

    __tablename__ = "holders"

    identifier: Mapped[str] = mapped_column(String(64), primary_key=True)
    legal_name: Mapped[str] = mapped_column(String(200))
    base_url: Mapped[str] = mapped_column(String(2000))
    categories: Mapped[list[str]] = mapped_column(JSON)
    release_step_categories: Mapped[list[str]] = mapped_column(JSON)
    jwks: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    jwks_uri: Mapped[str | None] = mapped_column(String(2000), nullable=True)
    # Where the broker sends a patient to authenticate at the holder and come back linked
    # (DESIGN step 4); holders without one are linked by operator import only.
    link_endpoint: Mapped[str | None] = mapped_column(String(2000), nullable=True)
    # Where the patient's browser posts a one-time download token to receive their own data
    # from the holder directly (issue 10); holders without one offer no download.
    download_endpoint: Mapped[str | None] = mapped_column(String(2000), nullable=True)
    # pending → approved (by an operator) ↔ suspended
    status: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    approved_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    approved_by: Mapped[str | None] = mapped_column(String(100), nullable=True)

    category_rows: Mapped[list[HolderCategory]] = relationship(cascade="all, delete-orphan", lazy="select")


class HolderCategory(Base):
    """One category a holder serves: the join the catalog's holder filter uses."""

    __tablename__ = "holder_categories"

    holder_id: Mapped[str] = mapped_column(
        ForeignKey("holders.identifier", ondelete="CASCADE"), primary_key=True
    )
    category: Mapped[str] = mapped_column(String(64), primary_key=True, index=True)


class App(Base):
    """A third-party app: RFC 7591 client metadata with its charter manifest."""

    __tablename__ = "apps"

    client_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    client_name: Mapped[str] = mapped_column(String(200))
    # Case- and accent-folded name: unique among live apps so that patients never face two
    # apps with the same name (NULL once the app is deleted, which frees the name).
    name_key: Mapped[str | None] = mapped_column(String(200), unique=True, nullable=True)
    publisher_name: Mapped[str] = mapped_column(String(300))
    client_metadata: Mapped[dict[str, Any]] = mapped_column(JSON)
    manifest_sha256: Mapped[str] = mapped_column(String(64))
    # pending | approved | refused | needs_review | suspended | deleted
    status: Mapped[str] = mapped_column(String(16), default="pending")
    verdict: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    business_model: Mapped[str] = mapped_column(String(64))
    data_leaves_eu: Mapped[bool] = mapped_column(Boolean)
    # Folded text of the name, publisher and purposes' descriptions, for catalog search.
    search_text: Mapped[str] = mapped_column(Text)
    token_endpoint_auth_method: Mapped[str] = mapped_column(String(32))
    # HMAC-SHA256 of the RFC 7592 registration access token; NULL once revoked.
    registration_token_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    category_rows: Mapped[list[AppCategory]] = relationship(cascade="all, delete-orphan", lazy="select")
    purpose_rows: Mapped[list[AppPurpose]] = relationship(cascade="all, delete-orphan", lazy="select")
    term_rows: Mapped[list[AppSearchTerm]] = relationship(cascade="all, delete-orphan", lazy="select")

    __table_args__ = (
        # The catalog lists by status in a stated neutral order: folded name, then id; the two
        # filters kept on the row ride along, so that a page's ids come from this index alone.
        Index("ix_apps_status_name", "status", "name_key", "client_id", "business_model", "data_leaves_eu"),
    )


class AppCategory(Base):
    __tablename__ = "app_categories"

    client_id: Mapped[str] = mapped_column(ForeignKey("apps.client_id", ondelete="CASCADE"), primary_key=True)
    category: Mapped[str] = mapped_column(String(64), primary_key=True, index=True)


class AppPurpose(Base):
    __tablename__ = "app_purposes"

    client_id: Mapped[str] = mapped_column(ForeignKey("apps.client_id", ondelete="CASCADE"), primary_key=True)
    purpose: Mapped[str] = mapped_column(String(64), primary_key=True, index=True)


class AppSearchTerm(Base):
    """One folded word of an app's name, publisher or purposes, for indexed prefix search.

    ``LIKE '%word%'`` over every app is a full scan; a range on this primary key is not.
    """

    __tablename__ = "app_search_terms"

    # Byte order on PostgreSQL: the prefix range ``term >= w AND term < w || U+FFFF`` must not
    # depend on the database's linguistic collation (which may ignore U+FFFF altogether).
    term: Mapped[str] = mapped_column(
        String(64).with_variant(String(64, collation="C"), "postgresql"), primary_key=True
    )
    client_id: Mapped[str] = mapped_column(
        ForeignKey("apps.client_id", ondelete="CASCADE"), primary_key=True, index=True
    )


class CharterVerdict(Base):
    """Every verdict ever given on an app, by the engine or by an operator, never edited."""

    __tablename__ = "charter_verdicts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    client_id: Mapped[str] = mapped_column(ForeignKey("apps.client_id", ondelete="CASCADE"), index=True)
    status: Mapped[str] = mapped_column(String(16))
    charter_version: Mapped[str] = mapped_column(String(32))
    manifest_sha256: Mapped[str] = mapped_column(String(64))
    checked_at: Mapped[datetime] = mapped_column(UTCDateTime())
    findings: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    # "engine" or "operator:<name>"
    decided_by: Mapped[str] = mapped_column(String(120))
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)


class OperatorToken(Base):
    """A credential of the broker's operator for the admin API, stored as an HMAC."""

    __tablename__ = "operator_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class CharterVersion(Base):
    """A charter version applied to this broker; the latest applied one is in force."""

    __tablename__ = "charter_versions"

    version: Mapped[str] = mapped_column(String(32), primary_key=True)
    document: Mapped[dict[str, Any]] = mapped_column(JSON)
    applied_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    applied_by: Mapped[str] = mapped_column(String(120))
