"""SQL of patient accounts, sessions, external identities and log-in throttles."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from broker.consent.patients.models import ExternalIdentity, LoginThrottle, Patient, PatientSession


def patient_by_email_key(session: Session, email_key: str) -> Patient | None:
    return session.scalars(select(Patient).where(Patient.email_key == email_key)).one_or_none()


def get_patient(session: Session, patient_id: str) -> Patient | None:
    return session.get(Patient, patient_id)


def add(session: Session, row: Patient | ExternalIdentity | PatientSession | LoginThrottle) -> None:
    session.add(row)
    session.flush()


def set_password_hash(session: Session, patient_id: str, password_hash: str) -> None:
    session.execute(update(Patient).where(Patient.id == patient_id).values(password_hash=password_hash))


def identity(session: Session, issuer: str, subject: str) -> ExternalIdentity | None:
    return session.scalars(
        select(ExternalIdentity).where(ExternalIdentity.issuer == issuer, ExternalIdentity.subject == subject)
    ).one_or_none()


def session_by_hash(session: Session, id_hash: str) -> PatientSession | None:
    return session.get(PatientSession, id_hash)


def revoke_session(session: Session, id_hash: str, now: datetime) -> None:
    session.execute(
        update(PatientSession)
        .where(PatientSession.id_hash == id_hash, PatientSession.revoked_at.is_(None))
        .values(revoked_at=now)
    )


def touch_session(session: Session, id_hash: str, now: datetime) -> None:
    session.execute(update(PatientSession).where(PatientSession.id_hash == id_hash).values(last_seen_at=now))


def purge_sessions(session: Session, patient_id: str, now: datetime, idle_before: datetime) -> None:
    """Forget a patient's sessions that can no longer be used (kept tidy at each log-in)."""
    session.execute(
        delete(PatientSession).where(
            PatientSession.patient_id == patient_id,
            (PatientSession.expires_at <= now)
            | (PatientSession.last_seen_at <= idle_before)
            | PatientSession.revoked_at.is_not(None),
        )
    )


def throttles(session: Session, keys: list[str], for_update: bool = False) -> dict[str, LoginThrottle]:
    query = select(LoginThrottle).where(LoginThrottle.key.in_(keys))
    if for_update:
        query = query.with_for_update()
    return {row.key: row for row in session.scalars(query)}


def delete_throttle(session: Session, key: str) -> None:
    session.execute(delete(LoginThrottle).where(LoginThrottle.key == key))
