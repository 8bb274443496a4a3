"""«Télécharger mes données»: the patient downloads their own data from each holder (issue 10).

The broker never sees the data. It records a *download consent* of its own per holder (who,
which holder, which categories), signs a one-time token for it, and hands the patient's
browser over to the holder's registered ``download_endpoint``, which answers the browser
directly. The token:

- is typed ``download+jwt`` (RFC 8725 §3.11), so that no verifier of access tokens
  (``at+jwt``) accepts it at a FHIR API, and no download endpoint accepts an access token;
- names the broker's first-party download client, :data:`DOWNLOAD_CLIENT_ID`, which no app
  can be (apps get ``app_…`` identifiers from registration, and the authorization and token
  endpoints know only registered apps);
- is meant for one holder (``aud``: its API base URL, as for access tokens) and lives
  :data:`DOWNLOAD_TOKEN_LIFETIME` seconds;
- is single-use: the holder remembers its ``jti``, and its access receipt ends the download
  consent here, whose status list entry then turns INVALID for every other copy of the
  holder's verifier.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import JSON, ForeignKey, String, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column

from broker.audit.log import append_event
from broker.audit.tags import EventTag
from broker.catalog.models import Holder
from broker.consent.models import StatusEntry
from broker.consent.oauth import pairwise_subject
from broker.consent.service import INVALID, VALID, active_links, status_reference
from broker.db import Base, UTCDateTime, utcnow
from broker.errors import InvalidRequest
from broker.keys import KeyStore
from broker.settings import Settings

DOWNLOAD_CLIENT_ID = "broker-download"  # the broker's own client; apps are "app_…"
DOWNLOAD_TOKEN_TYP = "download+jwt"  # noqa: S105 (a media type, not a secret)
DOWNLOAD_PURPOSE = "personal_copy"
DOWNLOAD_TOKEN_LIFETIME = 120
FORMATS = ("json", "html")


class DownloadConsent(Base):
    """One download at one holder: granted by the patient, ended by its first use.

    ``status``: ``active`` until the holder's receipt (``used``) or its lifetime (read as
    expired from ``expires_at``). It stores no data, only what was asked where.
    """

    __tablename__ = "download_consents"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    patient_id: Mapped[str] = mapped_column(ForeignKey("patients.id", ondelete="CASCADE"), index=True)
    holder_id: Mapped[str] = mapped_column(ForeignKey("holders.identifier"))
    categories: Mapped[list[str]] = mapped_column(JSON)
    token_jti: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="active")  # active | used
    granted_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    status_entry_id: Mapped[int] = mapped_column(ForeignKey("status_entries.id"))


@dataclass(frozen=True)
class Handover:
    """What the patient's browser posts to one holder."""

    holder_id: str
    holder_name: str
    endpoint: str
    token: str
    categories: tuple[str, ...]
    format: str
    consent_id: str


def downloadable(session: Session, patient_id: str) -> list[Holder]:
    """The patient's linked, approved holders that offer a download endpoint."""
    return [h for _link, h in active_links(session, patient_id) if h.download_endpoint]


def recent_downloads(session: Session, patient_id: str, limit: int = 10) -> list[DownloadConsent]:
    """The patient's latest download consents, newest first."""
    return list(
        session.scalars(
            select(DownloadConsent)
            .where(DownloadConsent.patient_id == patient_id)
            .order_by(DownloadConsent.granted_at.desc(), DownloadConsent.id)
            .limit(limit)
        )
    )


def parse_choice(items: Iterable[str], holders: Iterable[Holder]) -> dict[str, list[str]]:
    """``holder|category`` form values → categories per holder; only what each one serves."""
    served = {h.identifier: h.categories for h in holders}
    chosen: dict[str, list[str]] = {}
    for item in items:
        holder_id, _, category = item.partition("|")
        if holder_id not in served or category not in served[holder_id]:
            raise InvalidRequest("the form names a source or a kind of data you cannot download")
        if category not in chosen.setdefault(holder_id, []):
            chosen[holder_id].append(category)
    if not chosen:
        raise InvalidRequest("choose at least one kind of data to download")
    return chosen


def issue_downloads(
    session: Session,
    *,
    patient_id: str,
    chosen: Mapping[str, list[str]],
    file_format: str,
    settings: Settings,
    keystore: KeyStore,
    now: datetime,
) -> list[Handover]:
    """One download consent and one signed token per chosen holder."""
    if file_format not in FORMATS:
        raise InvalidRequest("choose the file (FHIR) or the printable summary")
    links = {h.identifier: (link, h) for link, h in active_links(session, patient_id)}
    out = []
    for holder_id in sorted(chosen):
        if holder_id not in links or not links[holder_id][1].download_endpoint:
            raise InvalidRequest("this source is not linked to your account or offers no download")
        link, holder = links[holder_id]
        categories = sorted(chosen[holder_id])
        entry = StatusEntry(status=VALID, updated_at=now)
        session.add(entry)
        session.flush()
        jti = secrets.token_urlsafe(16)
        consent = DownloadConsent(
            id="dl_" + secrets.token_urlsafe(16),
            patient_id=patient_id,
            holder_id=holder_id,
            categories=categories,
            token_jti=jti,
            status="active",
            granted_at=now,
            expires_at=now + timedelta(seconds=DOWNLOAD_TOKEN_LIFETIME),
            status_entry_id=entry.id,
        )
        session.add(consent)
        uri, idx = status_reference(entry.id, settings.issuer)
        issued = int(now.timestamp())
        detail = {
            "type": "health_data",
            "holder": holder_id,
            "purpose": DOWNLOAD_PURPOSE,
            "categories": categories,
        }
        claims: dict[str, Any] = {
            "iss": settings.issuer,
            "sub": pairwise_subject(settings.secret_key, patient_id, DOWNLOAD_CLIENT_ID),
            "aud": holder.base_url,
            "iat": issued,
            "nbf": issued,
            "exp": issued + DOWNLOAD_TOKEN_LIFETIME,
            "jti": jti,
            "client_id": DOWNLOAD_CLIENT_ID,
            "scope": " ".join(categories),
            "authorization_details": [detail],
            "consent_id": consent.id,
            "link_handle": link.handle,
            "status": {"status_list": {"idx": idx, "uri": uri}},
        }
        token = keystore.sign(claims, typ=DOWNLOAD_TOKEN_TYP)
        append_event(
            session,
            tag=EventTag.DOWNLOAD_GRANTED,
            patient_id=patient_id,
            actor=f"patient:{patient_id}",
            details={
                "app": DOWNLOAD_CLIENT_ID,
                "holder": holder_id,
                "categories": categories,
                "consent_id": consent.id,
                "token_jti": jti,
                "expires_at": consent.expires_at.isoformat(),
            },
            at=now,
        )
        assert holder.download_endpoint is not None
        out.append(
            Handover(
                holder_id=holder_id,
                holder_name=holder.legal_name,
                endpoint=holder.download_endpoint,
                token=token,
                categories=tuple(categories),
                format=file_format,
                consent_id=consent.id,
            )
        )
    return out


def granted_at(consent: DownloadConsent, holder_id: str) -> set[str] | None:
    """The categories a download consent covers at ``holder_id`` (None: not this holder)."""
    return set(consent.categories) if consent.holder_id == holder_id else None


def end_download(session: Session, consent: DownloadConsent, now: datetime) -> None:
    """The download happened (the holder's receipt): the consent ends, its token dies."""
    if consent.status == "used":
        return
    consent.status = "used"
    consent.used_at = now
    session.execute(
        update(StatusEntry)
        .where(StatusEntry.id == consent.status_entry_id)
        .values(status=INVALID, updated_at=now)
    )
