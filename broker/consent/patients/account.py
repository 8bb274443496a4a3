"""What a patient does with their own account: change the password, end every session,
take away everything the broker holds about them (GDPR art. 15 and 20), delete it (art. 17).

Services take a session and plain values and never commit; the pages call them inside the
request's unit of work.
"""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Any

from anyio import to_thread
from litestar.datastructures import State
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from broker.audit.log import erase_patient_audit, iso
from broker.audit.sequencer import sequence
from broker.audit.timeline import patient_export
from broker.catalog.models import App, Holder
from broker.consent.models import ConsentEvent, ConsentRecord, HolderLink
from broker.consent.patients.models import ExternalIdentity, Patient, PatientSession
from broker.consent.patients.passwords import password_problem
from broker.consent.patients.service import clean_name, fold_email
from broker.consent.service import revoke_consent
from broker.settings import Settings

EXPORT_FORMAT = "broker-patient-export/1"
DELETION_REASON = "account deleted by the patient"


def new_password_problem(patient: Patient, password: str) -> str | None:
    """The sign-up rules (``password_problem``), with this patient's address and name."""
    folded = fold_email(patient.email or "")
    words = (folded, folded.split("@", 1)[0], clean_name(patient.display_name))
    context = tuple(word for word in words if word)
    return password_problem(password, context=context)


def end_sessions(session: Session, patient_id: str, now: datetime, keep: str | None = None) -> None:
    """Revoke every open session of the patient but ``keep`` (a session id hash), if given."""
    query = update(PatientSession).where(
        PatientSession.patient_id == patient_id, PatientSession.revoked_at.is_(None)
    )
    if keep is not None:
        query = query.where(PatientSession.id_hash != keep)
    session.execute(query.values(revoked_at=now).execution_options(synchronize_session=False))


def change_password(
    session: Session, *, patient_id: str, password_hash: str, keep_session: str, now: datetime
) -> None:
    """Store the new hash; every other browser is logged out (it may be the one that leaked it)."""
    session.execute(
        update(Patient)
        .where(Patient.id == patient_id)
        .values(password_hash=password_hash, password_changed_at=now)
        .execution_options(synchronize_session=False)
    )
    end_sessions(session, patient_id, now, keep=keep_session)


def _when(at: datetime | None) -> str | None:
    return iso(at) if at is not None else None


def _status(consent: ConsentRecord, now: datetime) -> str:
    return "expired" if consent.status == "active" and consent.expires_at <= now else consent.status


def account_export(session: Session, *, patient: Patient, issuer: str, now: datetime) -> dict[str, Any]:
    """Everything the broker holds about ``patient``: account, links, consents, audit events.

    The password hash is left out on purpose: it is a secret of the broker's, not a fact about
    the person, and a copy of it would only help someone guess the password.
    """
    # Imported here: the caregivers package imports this one (its Patient model).
    from broker.consent.caregivers.service import caregiver_export

    identities = session.scalars(
        select(ExternalIdentity)
        .where(ExternalIdentity.patient_id == patient.id)
        .order_by(ExternalIdentity.id)
    ).all()
    links = session.execute(
        select(HolderLink, Holder)
        .join(Holder, Holder.identifier == HolderLink.holder_id)
        .where(HolderLink.patient_id == patient.id)
        .order_by(HolderLink.created_at, HolderLink.id)
    ).all()
    consents = session.execute(
        select(ConsentRecord, App)
        .join(App, App.client_id == ConsentRecord.client_id)
        .where(ConsentRecord.patient_id == patient.id)
        .order_by(ConsentRecord.granted_at, ConsentRecord.id)
    ).all()
    history: dict[str, list[dict[str, Any]]] = {consent.id: [] for consent, _ in consents}
    if history:
        for event in session.scalars(
            select(ConsentEvent)
            .where(ConsentEvent.consent_id.in_(list(history)))
            .order_by(ConsentEvent.at, ConsentEvent.id)
        ):
            history[event.consent_id].append(
                {
                    "action": event.action,
                    "status": event.status,
                    "at": iso(event.at),
                    "by": event.by,
                    "reason": event.reason,
                    "grants": event.grants,
                }
            )
    return {
        "format": EXPORT_FORMAT,
        "issuer": issuer,
        "generated_at": iso(now),
        "account": {
            "id": patient.id,
            "email": patient.email,
            "display_name": patient.display_name,
            "preferred_language": patient.preferred_language,
            "created_at": _when(patient.created_at),
            "password_changed_at": _when(patient.password_changed_at),
            "external_identities": [
                {"issuer": i.issuer, "subject": i.subject, "created_at": _when(i.created_at)}
                for i in identities
            ],
        },
        "links": [
            {
                "holder": holder.identifier,
                "holder_name": holder.legal_name,
                "handle": link.handle,
                "status": link.status,
                "created_at": _when(link.created_at),
            }
            for link, holder in links
        ],
        "consents": [
            {
                "id": consent.id,
                "app": app.client_id,
                "app_name": app.client_name,
                "status": _status(consent, now),
                "purposes": consent.purposes,
                "grants": consent.grants,
                "granted_at": _when(consent.granted_at),
                "updated_at": _when(consent.updated_at),
                "expires_at": _when(consent.expires_at),
                "revoked_at": _when(consent.revoked_at),
                "charter_version": consent.charter_version,
                "history": history[consent.id],
            }
            for consent, app in consents
        ],
        "caregivers": caregiver_export(session, patient),
        "audit": patient_export(session, patient_id=patient.id, issuer=issuer),
    }


def withdraw_everything(session: Session, *, patient_id: str, now: datetime) -> int:
    """The first step of a deletion: caregiver relations ended both ways, every consent
    revoked, every source unlinked.

    Through ``revoke_consent``, so that holders learn it from the status list and the push
    stream and the audit log records each revocation. Returns how many consents were revoked.
    """
    # Imported here: broker.consent.links and the caregivers package import this package.
    from broker.consent.caregivers.service import end_for_deleted_account
    from broker.consent.links import unlink

    end_for_deleted_account(session, patient_id=patient_id, now=now)
    by = f"patient:{patient_id}"
    revoked = 0
    for consent in session.scalars(
        select(ConsentRecord)
        .where(ConsentRecord.patient_id == patient_id, ConsentRecord.status != "revoked")
        .order_by(ConsentRecord.id)
        .with_for_update()  # a token refresh of the same consent waits its turn (oauth.py)
    ).all():
        revoke_consent(session, consent=consent, by=by, reason=DELETION_REASON, now=now)
        revoked += 1
    for holder_id in session.scalars(
        select(HolderLink.holder_id).where(HolderLink.patient_id == patient_id, HolderLink.status == "active")
    ).all():
        unlink(session, patient_id=patient_id, holder_id=holder_id, now=now)
    return revoked


def delete_account(session: Session, *, patient_id: str, now: datetime) -> None:
    """The second step: the audit log forgets the patient, then the account and its sessions go.

    Consent records, links and external identities follow the account (``ON DELETE
    CASCADE``); the status list entries of the revoked consents stay INVALID.
    """
    erase_patient_audit(session, patient_id, now)
    session.execute(delete(PatientSession).where(PatientSession.patient_id == patient_id))
    session.execute(delete(ExternalIdentity).where(ExternalIdentity.patient_id == patient_id))
    session.execute(
        delete(Patient).where(Patient.id == patient_id).execution_options(synchronize_session=False)
    )


async def sequence_audit(state: State) -> None:
    """Place every audit event appended so far (the background sequencer may be off)."""
    settings: Settings = state.settings
    run = functools.partial(
        sequence,
        state.session_factory,
        signer=state.keystore,
        secret_key=settings.secret_key,
        issuer=settings.issuer,
    )
    await to_thread.run_sync(run)
