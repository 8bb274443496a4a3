"""Links and consent records: grant, update, revoke, and the status their tokens carry."""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Protocol

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from broker.audit.log import append_event
from broker.audit.tags import EventTag
from broker.catalog.models import App, Holder
from broker.consent import push  # noqa: F401 (every consent event committed wakes the push streams)
from broker.consent.models import ConsentEvent, ConsentRecord, HolderLink, RefreshToken, StatusEntry
from broker.errors import InvalidRequest, NotFound
from broker.web.i18n import TIMEZONE

# Token Status List values (IETF OAuth Token Status List, §7.1).
VALID, INVALID, SUSPENDED = 0, 1, 2
# Entries per status list: 2 bits each, so 32 KiB before compression.
LIST_SIZE = 1 << 17
MAX_CONSENT_DAYS = 365
# "My consents" reminds the patient of a consent that ends within this many days.
EXPIRY_REMINDER_DAYS = 14


# -- links ----------------------------------------------------------------------------------


def link_patient(
    session: Session,
    *,
    patient_id: str,
    holder_id: str,
    handle: str | None = None,
    now: datetime,
    by: str | None = None,
) -> HolderLink:
    """Create (or return) the patient's link to a holder, with an opaque random handle.

    ``by`` is who made the link for the log (the patient unless said otherwise).
    """
    holder = session.get(Holder, holder_id)
    if holder is None or holder.status != "approved":
        raise NotFound(f"no approved holder {holder_id!r}")
    link = session.scalars(
        select(HolderLink).where(HolderLink.patient_id == patient_id, HolderLink.holder_id == holder_id)
    ).first()
    if link is None:
        link = HolderLink(
            patient_id=patient_id,
            holder_id=holder_id,
            handle=handle or "lnk_" + secrets.token_urlsafe(24),
            created_at=now,
        )
        session.add(link)
    elif link.status == "active":
        return link
    link.status = "active"
    append_event(
        session,
        tag=EventTag.LINK_CREATED,
        patient_id=patient_id,
        actor=by or f"patient:{patient_id}",
        details={"holder": holder_id},
        at=now,
    )
    return link


def active_links(session: Session, patient_id: str) -> list[tuple[HolderLink, Holder]]:
    rows = session.execute(
        select(HolderLink, Holder)
        .join(Holder, Holder.identifier == HolderLink.holder_id)
        .where(
            HolderLink.patient_id == patient_id, HolderLink.status == "active", Holder.status == "approved"
        )
        .order_by(Holder.legal_name)
    ).all()
    return [(link, holder) for link, holder in rows]


# -- consents ------------------------------------------------------------------------------


def status_reference(entry_id: int, issuer: str) -> tuple[str, int]:
    """The status list URI and index of a status entry."""
    return f"{issuer}/status/{entry_id // LIST_SIZE}", entry_id % LIST_SIZE


def _new_status_entry(session: Session, now: datetime) -> StatusEntry:
    entry = StatusEntry(status=VALID, updated_at=now)
    session.add(entry)
    session.flush()
    return entry


# The consent's status records and the audit log's tags for them.
_AUDIT_TAGS = {
    "granted": EventTag.CONSENT_GRANTED,
    "changed": EventTag.CONSENT_CHANGED,
    "revoked": EventTag.CONSENT_REVOKED,
}


def _event(
    session: Session,
    consent: ConsentRecord,
    action: str,
    by: str,
    now: datetime,
    reason: str | None = None,
    caregiver: str | None = None,
) -> None:
    tag = _AUDIT_TAGS.get(action)
    if tag is not None:
        grants = consent.grants or []
        details: dict[str, Any] = {
            "app": consent.client_id,
            "consent_id": consent.id,
            "holders": sorted({g["holder"] for g in grants}),
            "categories": sorted({c for g in grants for c in g["categories"]}),
            "purposes": list(consent.purposes),
            "grants": grants,
            "expires_at": consent.expires_at.isoformat(),
        }
        if reason is not None:
            details["reason"] = reason
        if caregiver is not None:
            details["caregiver"] = caregiver  # the helper's name, as the patient's history shows it
        append_event(session, tag=tag, patient_id=consent.patient_id, actor=by, details=details, at=now)
    session.add(
        ConsentEvent(
            consent_id=consent.id,
            action=action,
            status=consent.status,
            at=now,
            by=by,
            reason=reason,
            grants=consent.grants,
        )
    )


@dataclass(frozen=True)
class Grant:
    holder: str
    purpose: str
    categories: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "type": "health_data",
            "holder": self.holder,
            "purpose": self.purpose,
            "categories": list(self.categories),
        }


def grant_consent(
    session: Session,
    *,
    patient_id: str,
    app: App,
    grants: Iterable[Grant],
    days: int,
    charter_version: str,
    by: str,
    now: datetime,
    caregiver: str | None = None,
) -> ConsentRecord:
    """Record the patient's consent; granting the same app again updates the one record.

    ``caregiver`` is the name of the caregiver who acts for the patient (``by`` names them
    too, as ``caregiver:<id>``), for the patient's history.

    Every (re)grant takes a fresh status entry: tokens issued under an earlier, revoked grant
    keep pointing at an INVALID entry and never come back to life.
    """
    grant_list = [g.to_json() for g in grants if g.categories]
    if not grant_list:
        raise InvalidRequest("nothing to consent to: no category at any holder", code="nothing")
    longest = longest_consent_days(app)
    if not 1 <= days <= longest:
        raise InvalidRequest(f"duration: from 1 to {longest} days", code="duration")
    consent = session.scalars(
        select(ConsentRecord)
        .where(ConsentRecord.patient_id == patient_id, ConsentRecord.client_id == app.client_id)
        .with_for_update()
    ).first()
    purposes = sorted({g["purpose"] for g in grant_list})
    if consent is None:
        entry = _new_status_entry(session, now)
        consent = ConsentRecord(
            id="cns_" + secrets.token_urlsafe(16),
            patient_id=patient_id,
            client_id=app.client_id,
            purposes=purposes,
            grants=grant_list,
            status="active",
            granted_at=now,
            updated_at=now,
            expires_at=now + timedelta(days=days),
            charter_version=charter_version,
            manifest_sha256=app.manifest_sha256,
            status_entry_id=entry.id,
        )
        session.add(consent)
        session.flush()
        _event(session, consent, "granted", by, now, caregiver=caregiver)
        return consent
    was_active = consent.status == "active" and consent.expires_at > now
    if not was_active:
        _retire_status_entry(session, consent, now)
        consent.status_entry_id = _new_status_entry(session, now).id
        consent.granted_at = now
    consent.purposes = purposes
    consent.grants = grant_list
    consent.status = "active"
    consent.revoked_at = consent.revoked_by = consent.revoke_reason = None
    consent.updated_at = now
    consent.expires_at = now + timedelta(days=days)
    consent.charter_version = charter_version
    consent.manifest_sha256 = app.manifest_sha256
    _event(session, consent, "changed" if was_active else "granted", by, now, caregiver=caregiver)
    return consent


def _retire_status_entry(session: Session, consent: ConsentRecord, now: datetime) -> None:
    session.execute(
        update(StatusEntry)
        .where(StatusEntry.id == consent.status_entry_id)
        .values(status=INVALID, updated_at=now)
    )


def reissue_status_entry(session: Session, consent: ConsentRecord, now: datetime) -> None:
    """Every token issued so far under ``consent`` turns INVALID; new ones get a fresh entry.

    Used when a replayed code shows that a token may be in the wrong hands (RFC 9700 §4.2.4).
    """
    _retire_status_entry(session, consent, now)
    consent.status_entry_id = _new_status_entry(session, now).id
    consent.updated_at = now
    _event(session, consent, "tokens_revoked", "broker", now, "authorization code replayed")


def revoke_consent(
    session: Session,
    *,
    consent: ConsentRecord,
    by: str,
    reason: str | None,
    now: datetime,
    caregiver: str | None = None,
) -> ConsentRecord:
    """Withdraw a consent: its status entry turns INVALID and every refresh token dies now.

    ``caregiver``: the name of the caregiver who acts for the patient, if one does.
    """
    if consent.status == "revoked":
        return consent
    consent.status = "revoked"
    consent.revoked_at = now
    consent.revoked_by = by
    consent.revoke_reason = reason
    consent.updated_at = now
    _retire_status_entry(session, consent, now)
    session.execute(
        update(RefreshToken)
        .where(RefreshToken.consent_id == consent.id, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    _event(session, consent, "revoked", by, now, reason, caregiver=caregiver)
    return consent


def longest_consent_days(app: App) -> int:
    """How long a consent to ``app`` may run from today: the broker's ceiling, and never
    longer than the app declares it keeps the data (its manifest's ``retention.days``)."""
    manifest = app.client_metadata.get("charter_manifest") or {}
    days = (manifest.get("retention") or {}).get("days")
    if isinstance(days, int) and not isinstance(days, bool) and days >= 1:
        return min(MAX_CONSENT_DAYS, days)
    return MAX_CONSENT_DAYS


def latest_end(app: App, now: datetime) -> datetime:
    return now + timedelta(days=longest_consent_days(app))


class ConsentEndRefused(InvalidRequest):
    """A new end date the patient may not choose; ``code`` says why, for the page."""

    def __init__(self, detail: str, code: str) -> None:
        super().__init__(detail)
        self.code = code  # past | beyond | ended


def change_consent_end(
    session: Session, *, consent: ConsentRecord, app: App, ends_on: date, by: str, now: datetime
) -> ConsentRecord:
    """Shorten or extend an active consent: it now ends at the end of ``ends_on`` (the
    patient's day, in the pages' time zone).

    Allowed from today to ``longest_consent_days`` from now; the last day is cut at exactly
    that bound. Recorded in the audit log (``patient:consent:changed``, with the new end);
    the status list reads ``expires_at``, so tokens stop being valid at the new end, and
    refresh tokens issued earlier are cut to it too.
    """
    if consent.status != "active" or consent.expires_at <= now:
        raise ConsentEndRefused("this consent has ended: give it again from the app", "ended")
    if ends_on < now.astimezone(TIMEZONE).date():
        raise ConsentEndRefused("the new end date is in the past", "past")
    bound = latest_end(app, now)
    last_day = bound.astimezone(TIMEZONE).date()
    if ends_on > last_day:
        raise ConsentEndRefused(f"the app allows a consent until {last_day.isoformat()} at most", "beyond")
    new_end = min(datetime.combine(ends_on, time(23, 59, 59), TIMEZONE).astimezone(UTC), bound)
    if new_end == consent.expires_at:
        return consent
    consent.expires_at = new_end
    consent.updated_at = now
    session.execute(
        update(RefreshToken)
        .where(RefreshToken.consent_id == consent.id, RefreshToken.expires_at > new_end)
        .values(expires_at=new_end)
    )
    _event(session, consent, "changed", by, now, "end date changed")
    return consent


def announce_app_status(session: Session, app: App, action: str, now: datetime) -> int:
    """A status record ``suspended`` or ``restored`` on every live consent of ``app``.

    The consents themselves do not change (their tokens' status follows the app, see
    ``effective_status``); the records let the push stream tell holders at once.
    """
    assert action in ("suspended", "restored")
    consents = session.scalars(
        select(ConsentRecord).where(
            ConsentRecord.client_id == app.client_id, ConsentRecord.status == "active"
        )
    ).all()
    for consent in consents:
        _event(session, consent, action, "broker", now, "charter re-check")
    return len(consents)


def patient_consent(session: Session, *, patient_id: str, consent_id: str) -> ConsentRecord:
    """A consent of this patient; another patient's id is simply not found (W10)."""
    # Locked: a revocation and a refresh of the same consent take their turns (oauth.py).
    consent = session.get(ConsentRecord, consent_id, with_for_update=True)
    if consent is None or consent.patient_id != patient_id:
        raise NotFound("no such consent")
    return consent


def patient_consents(session: Session, patient_id: str) -> list[tuple[ConsentRecord, App]]:
    rows = session.execute(
        select(ConsentRecord, App)
        .join(App, App.client_id == ConsentRecord.client_id)
        .where(ConsentRecord.patient_id == patient_id)
        .order_by(ConsentRecord.status, App.client_name)
    ).all()
    return [(consent, app) for consent, app in rows]


class _ConsentState(Protocol):
    @property
    def status(self) -> str: ...
    @property
    def expires_at(self) -> datetime: ...


class _AppState(Protocol):
    @property
    def status(self) -> str: ...


def effective_status(consent: _ConsentState, app: _AppState, now: datetime) -> int:
    """The Token Status List value of a consent's current entry."""
    if consent.status != "active" or consent.expires_at <= now:
        return INVALID
    if app.status != "approved":
        return SUSPENDED  # the app was suspended by a charter re-check (issue 3)
    return VALID


def status_list_values(session: Session, list_id: int, now: datetime) -> dict[int, int]:
    """Every non-VALID entry of one status list, by index (the rest is VALID)."""
    low, high = list_id * LIST_SIZE, (list_id + 1) * LIST_SIZE
    values: dict[int, int] = {}
    for entry_id, stored in session.execute(
        select(StatusEntry.id, StatusEntry.status).where(
            StatusEntry.id >= low, StatusEntry.id < high, StatusEntry.status != VALID
        )
    ):
        values[entry_id - low] = stored
    rows = session.execute(
        select(ConsentRecord, App)
        .join(App, App.client_id == ConsentRecord.client_id)
        .where(ConsentRecord.status_entry_id >= low, ConsentRecord.status_entry_id < high)
    ).all()
    for consent, app in rows:
        value = effective_status(consent, app, now)
        if value != VALID:
            values[consent.status_entry_id - low] = value
    return values
