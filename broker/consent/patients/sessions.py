"""Patient sessions (SECURITY W5, OWASP Session Management).

The cookie holds a random id with 256 bits of entropy; the table holds only its HMAC, so a
copy of the database opens no session. A new id is drawn at every log-in (no fixation), a
log-out revokes the row, and a session ends after ``session_idle_timeout`` without activity
or ``session_absolute_timeout`` after log-in, whichever comes first.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

from litestar import Request, Response
from sqlalchemy.orm import Session

from broker.consent.patients import cookies, repository
from broker.consent.patients.models import Patient, PatientSession
from broker.db import utcnow
from broker.opaque import new_secret, secret_digest
from broker.settings import Settings

SESSION_PREFIX = "hcb_ps"
# last_seen_at is written at most this often: idle expiry to the minute, without a write for
# every page a patient opens.
TOUCH_INTERVAL = timedelta(seconds=60)


def session_id_hash(settings: Settings, session_id: str) -> str:
    return secret_digest(settings.secret_key, session_id)


def start_session(session: Session, patient_id: str, settings: Settings, now: datetime) -> str:
    """Open a session for ``patient_id``; returns the id to put in the cookie (never stored)."""
    repository.purge_sessions(
        session, patient_id, now, idle_before=now - timedelta(seconds=settings.session_idle_timeout)
    )
    session_id = new_secret(SESSION_PREFIX)
    repository.add(
        session,
        PatientSession(
            id_hash=session_id_hash(settings, session_id),
            patient_id=patient_id,
            created_at=now,
            last_seen_at=now,
            expires_at=now + timedelta(seconds=settings.session_absolute_timeout),
        ),
    )
    return session_id


def end_session(session: Session, session_id: str | None, settings: Settings, now: datetime) -> None:
    if session_id:
        repository.revoke_session(session, session_id_hash(settings, session_id), now)


def is_usable(row: PatientSession, settings: Settings, now: datetime) -> bool:
    return (
        row.revoked_at is None
        and now < row.expires_at
        and now - row.last_seen_at < timedelta(seconds=settings.session_idle_timeout)
    )


def patient_from_request(
    session: Session, request: Request[Any, Any, Any], settings: Settings, now: datetime | None = None
) -> Patient | None:
    """The patient logged in on this browser, or None (no cookie, unknown, revoked, expired).

    Call it inside the request's unit of work: it records the activity (``last_seen_at``).
    """
    session_id = cookies.read(request, settings, cookies.SESSION)
    if not session_id or len(session_id) > 200:
        return None
    now = now or utcnow()
    id_hash = session_id_hash(settings, session_id)
    row = repository.session_by_hash(session, id_hash)
    if row is None or not is_usable(row, settings, now):
        return None
    if now - row.last_seen_at >= TOUCH_INTERVAL:
        repository.touch_session(session, id_hash, now)
    return repository.get_patient(session, row.patient_id)


def login_redirect(request: Request[Any, Any, Any]) -> Response[Any]:
    """303 to the log-in page, which brings the patient back here afterwards."""
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return Response(
        content=None,
        status_code=303,
        headers={"Location": "/login?next=" + quote(target, safe=""), "Cache-Control": "no-store"},
    )
