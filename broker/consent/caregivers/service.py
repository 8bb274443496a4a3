"""Caregivers: invitations, answers, withdrawal, and the acts of a caregiver for a patient.

Every act is written to the helped patient's audit log in the same unit of work as the change
it records, with the caregiver as actor (``caregiver:<account id>``) and their name in the
details, so that the patient's history says who did it. What the broker refuses a caregiver
is recorded too (``record_refusal``), once whatever the refused act had begun is rolled back
(the pages run each act in a savepoint).

Services take a session and plain values and never commit.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from broker.audit.log import append_event, iso
from broker.audit.tags import EventTag
from broker.catalog.models import App
from broker.consent.caregivers.models import GRANT, RIGHTS, VIEW, Delegation
from broker.consent.models import ConsentRecord
from broker.consent.patients.models import Patient
from broker.consent.patients.service import fold_email, valid_email
from broker.consent.service import Grant, active_links, grant_consent, patient_consent, revoke_consent
from broker.errors import Forbidden, InvalidRequest, NotFound

__all__ = [
    "MAX_DAYS",
    "MAX_OPEN",
    "CaregiverRefused",
    "Helped",
    "InvalidInvitation",
    "acting_for",
    "answer_invitation",
    "caregiver_export",
    "check_grant",
    "end_for_deleted_account",
    "grant_for",
    "helpers_of",
    "invitations_for",
    "invite",
    "last_day",
    "people_helped",
    "record_refusal",
    "revoke_for",
    "stop_helping",
    "viewed",
    "withdraw",
]

TIMEZONE = ZoneInfo("Europe/Paris")  # the day a patient picks ends at midnight, Paris time
MAX_DAYS = 365  # as a consent: no help given for longer than a year at once
MAX_OPEN = 10  # invitations and helpers at once, per patient
OPEN = ("invited", "active")


class InvalidInvitation(InvalidRequest):
    """The invitation form has a mistake; ``field`` and ``code`` name it for the page."""

    slug = "invalid-invitation"
    title = "The invitation cannot be sent"

    def __init__(self, detail: str, *, field: str, code: str) -> None:
        super().__init__(detail, field=field)
        self.field, self.code = field, code


class CaregiverRefused(Forbidden):
    """A caregiver asked for something the patient did not allow, or no longer allows.

    ``reason``: ``withdrawn`` (the patient took the help back), ``ended`` (the caregiver
    stopped, or the period is over), ``not_allowed`` (beyond the rights given),
    ``outside_limits`` (a grant beyond the categories or holders given).
    """

    slug = "caregiver-refused"
    title = "Not allowed for this caregiver"
    code: ClassVar[str] = "caregiver_refused"

    def __init__(
        self,
        detail: str,
        *,
        reason: str,
        delegation: Delegation,
        caregiver: Patient,
        patient: Patient,
        attempted: str,
    ) -> None:
        super().__init__(detail)
        self.reason, self.attempted = reason, attempted
        self.patient_name = patient.display_name
        self.delegation_id, self.patient_id = delegation.id, delegation.patient_id
        self.caregiver_id, self.caregiver_name = caregiver.id, caregiver.display_name


@dataclass(frozen=True)
class Helped:
    """A patient a caregiver helps, and the help given."""

    delegation: Delegation
    patient: Patient


def _actor(caregiver: Patient) -> str:
    return f"caregiver:{caregiver.id}"


def _details(delegation: Delegation, name: str, **more: Any) -> dict[str, Any]:
    details: dict[str, Any] = {
        "delegation_id": delegation.id,
        "caregiver": name,
        "rights": delegation.rights,
        "allowed_categories": list(delegation.categories or []),
        "allowed_holders": list(delegation.holders or []),
        "expires_at": iso(last_day(delegation)),  # the history says "until <the day chosen>"
    }
    details.update(more)
    return details


def _caregiver_name(session: Session, delegation: Delegation) -> str:
    caregiver = session.get(Patient, delegation.caregiver_id) if delegation.caregiver_id else None
    return caregiver.display_name if caregiver is not None else delegation.invitee_email


def end_of_day(day: date) -> datetime:
    return datetime.combine(day + timedelta(days=1), time(0, 0), tzinfo=TIMEZONE)


def last_day(delegation: Delegation) -> datetime:
    """The last moment of the help, within the day the patient chose (for display)."""
    return delegation.ends_at - timedelta(seconds=1)


def _parse_day(text: str, now: datetime) -> date:
    try:
        day = date.fromisoformat(text.strip())
    except ValueError:
        raise InvalidInvitation("give the last day", field="ends_on", code="date_missing") from None
    today = now.astimezone(TIMEZONE).date()
    if day < today:
        raise InvalidInvitation("the last day is already past", field="ends_on", code="date_past")
    if day > today + timedelta(days=MAX_DAYS):
        raise InvalidInvitation(f"at most {MAX_DAYS} days from today", field="ends_on", code="date_far")
    return day


def invite(
    session: Session,
    *,
    patient: Patient,
    email: str,
    rights: str,
    categories: Iterable[str],
    holders: Iterable[str],
    ends_on: str,
    now: datetime,
) -> Delegation:
    """Invite the owner of ``email`` to help ``patient``, from now to the end of ``ends_on``.

    With ``grant``, the caregiver may consent only to ``categories`` at ``holders``, which
    must be among what the patient's linked holders serve. The answer is the same whether the
    address has an account or not (SECURITY W8): the invitation waits for whoever logs in
    with it.
    """
    email = email.strip()
    key = fold_email(email)
    if not valid_email(email):
        raise InvalidInvitation("give the e-mail address of an account", field="email", code="email_invalid")
    if key == (patient.email_key or ""):
        raise InvalidInvitation("you cannot invite yourself", field="email", code="email_self")
    if rights not in RIGHTS:
        raise InvalidInvitation("choose what the caregiver may do", field="rights", code="rights_missing")
    ends_at = end_of_day(_parse_day(ends_on, now))
    open_rows = helpers_of(session, patient.id, now)
    if any(row.invitee_key == key for row in open_rows):
        raise InvalidInvitation("this person is already invited", field="email", code="email_already")
    if len(open_rows) >= MAX_OPEN:
        raise InvalidInvitation(f"at most {MAX_OPEN} caregivers at once", field="email", code="too_many")
    chosen_categories: list[str] | None = None
    chosen_holders: list[str] | None = None
    if rights == GRANT:
        linked = {holder.identifier: holder for _link, holder in active_links(session, patient.id)}
        served = {c for holder in linked.values() for c in holder.categories}
        chosen_categories = sorted(set(categories))
        chosen_holders = sorted(set(holders))
        if not chosen_categories or not set(chosen_categories) <= served:
            raise InvalidInvitation(
                "choose the kinds of data the caregiver may share",
                field="categories",
                code="categories_missing",
            )
        if not chosen_holders or not set(chosen_holders) <= set(linked):
            raise InvalidInvitation(
                "choose the data sources the caregiver may share from",
                field="holders",
                code="holders_missing",
            )
    delegation = Delegation(
        id="dlg_" + secrets.token_urlsafe(16),
        patient_id=patient.id,
        invitee_email=email,
        invitee_key=key,
        caregiver_id=None,
        rights=rights,
        categories=chosen_categories,
        holders=chosen_holders,
        status="invited",
        created_at=now,
        ends_at=ends_at,
    )
    session.add(delegation)
    session.flush()
    append_event(
        session,
        tag=EventTag.DELEGATION_GIVEN,
        patient_id=patient.id,
        actor=f"patient:{patient.id}",
        details=_details(delegation, email),
        at=now,
    )
    return delegation


def helpers_of(session: Session, patient_id: str, now: datetime) -> list[Delegation]:
    """The patient's invitations waiting for an answer and the help in force, soonest end first."""
    return list(
        session.scalars(
            select(Delegation)
            .where(Delegation.patient_id == patient_id, Delegation.status.in_(OPEN), Delegation.ends_at > now)
            .order_by(Delegation.ends_at, Delegation.id)
        )
    )


def invitations_for(session: Session, caregiver: Patient, now: datetime) -> list[Helped]:
    """Invitations addressed to this account's e-mail address, still open."""
    if not caregiver.email_key:
        return []
    rows = session.execute(
        select(Delegation, Patient)
        .join(Patient, Patient.id == Delegation.patient_id)
        .where(
            Delegation.invitee_key == caregiver.email_key,
            Delegation.status == "invited",
            Delegation.ends_at > now,
            Delegation.patient_id != caregiver.id,
        )
        .order_by(Delegation.created_at, Delegation.id)
    ).all()
    return [Helped(d, p) for d, p in rows]


def people_helped(session: Session, caregiver_id: str, now: datetime, need: str = VIEW) -> list[Helped]:
    """The patients this account helps now, by name; with ``need``, those who allow that."""
    rows = session.execute(
        select(Delegation, Patient)
        .join(Patient, Patient.id == Delegation.patient_id)
        .where(
            Delegation.caregiver_id == caregiver_id, Delegation.status == "active", Delegation.ends_at > now
        )
        .order_by(Patient.display_name, Delegation.id)
    ).all()
    return [Helped(d, p) for d, p in rows if d.allows(need)]


def answer_invitation(
    session: Session, *, caregiver: Patient, delegation_id: str, accept: bool, now: datetime
) -> Delegation:
    """Accept or decline an invitation addressed to this account's e-mail address."""
    delegation = session.get(Delegation, delegation_id, with_for_update=True)
    if (
        delegation is None
        or not caregiver.email_key
        or delegation.invitee_key != caregiver.email_key
        or delegation.patient_id == caregiver.id
    ):
        raise NotFound("no such invitation")
    if delegation.status != "invited" or delegation.ends_at <= now:
        raise InvalidRequest("this invitation is no longer open")
    delegation.caregiver_id = caregiver.id
    delegation.status = "active" if accept else "declined"
    delegation.answered_at = now
    append_event(
        session,
        tag=EventTag.DELEGATION_ACCEPTED if accept else EventTag.DELEGATION_DECLINED,
        patient_id=delegation.patient_id,
        actor=_actor(caregiver),
        details=_details(delegation, caregiver.display_name),
        at=now,
    )
    return delegation


def withdraw(session: Session, *, patient_id: str, delegation_id: str, now: datetime) -> Delegation:
    """The patient takes the help back (or cancels the invitation): effective at once."""
    delegation = session.get(Delegation, delegation_id, with_for_update=True)
    if delegation is None or delegation.patient_id != patient_id:
        raise NotFound("no such caregiver")
    if delegation.status not in OPEN:
        return delegation
    more = {"reason": "invitation_cancelled"} if delegation.status == "invited" else {}
    delegation.status = "withdrawn"
    delegation.ended_at = now
    delegation.ended_by = f"patient:{patient_id}"
    append_event(
        session,
        tag=EventTag.DELEGATION_WITHDRAWN,
        patient_id=patient_id,
        actor=f"patient:{patient_id}",
        details=_details(delegation, _caregiver_name(session, delegation), **more),
        at=now,
    )
    return delegation


def stop_helping(
    session: Session, *, caregiver: Patient, delegation_id: str, now: datetime, reason: str | None = None
) -> Delegation:
    """The caregiver stops helping; the patient's history says so."""
    delegation = session.get(Delegation, delegation_id, with_for_update=True)
    if delegation is None or delegation.caregiver_id != caregiver.id:
        raise NotFound("no such help")
    if delegation.status != "active":
        return delegation
    delegation.status = "ended"
    delegation.ended_at = now
    delegation.ended_by = _actor(caregiver)
    more = {"reason": reason} if reason else {}
    append_event(
        session,
        tag=EventTag.DELEGATION_ENDED,
        patient_id=delegation.patient_id,
        actor=_actor(caregiver),
        details=_details(delegation, caregiver.display_name, **more),
        at=now,
    )
    return delegation


def acting_for(
    session: Session, *, caregiver: Patient, delegation_id: str, need: str, now: datetime
) -> Helped:
    """The patient ``caregiver`` may act for through ``delegation_id``, with right ``need``.

    Someone else's delegation is simply not found (SECURITY W10); the caregiver's own, when
    withdrawn, over or short of ``need``, raises ``CaregiverRefused``.
    """
    # An act that changes something locks the delegation: a withdrawal running at the same
    # moment waits for it, or is seen by it (``withdraw`` takes the same lock).
    delegation = session.get(Delegation, delegation_id, with_for_update=need != VIEW)
    if delegation is None or delegation.caregiver_id != caregiver.id:
        raise NotFound("no such person to help")

    patient = session.get(Patient, delegation.patient_id)
    assert patient is not None  # the foreign key cascades

    def refuse(detail: str, reason: str) -> CaregiverRefused:
        return CaregiverRefused(
            detail, reason=reason, delegation=delegation, caregiver=caregiver, patient=patient, attempted=need
        )

    if delegation.status == "withdrawn":
        raise refuse("this person has taken back the help they gave you", "withdrawn")
    if delegation.status != "active" or delegation.ends_at <= now:
        raise refuse("the period of help is over", "ended")
    if not delegation.allows(need):
        raise refuse("this person did not allow you to do that", "not_allowed")
    return Helped(delegation, patient)


def viewed(session: Session, helped: Helped, caregiver: Patient, now: datetime) -> None:
    """A caregiver opened the patient's consents: the patient's history says so."""
    append_event(
        session,
        tag=EventTag.CAREGIVER_VIEWED,
        patient_id=helped.patient.id,
        actor=_actor(caregiver),
        details=_details(helped.delegation, caregiver.display_name),
        at=now,
    )


def record_refusal(session: Session, refused: CaregiverRefused, now: datetime, **more: Any) -> None:
    """Write a refusal to the helped patient's log (after the refused act was rolled back)."""
    delegation = session.get(Delegation, refused.delegation_id)
    if delegation is None:
        return  # the patient's account is gone meanwhile: nobody's log to write to
    append_event(
        session,
        tag=EventTag.CAREGIVER_REFUSED,
        patient_id=refused.patient_id,
        actor=f"caregiver:{refused.caregiver_id}",
        details=_details(
            delegation, refused.caregiver_name, reason=refused.reason, attempted=refused.attempted, **more
        ),
        at=now,
    )


def revoke_for(
    session: Session, *, caregiver: Patient, delegation_id: str, consent_id: str, now: datetime
) -> ConsentRecord:
    """A caregiver withdraws one of the helped patient's consents."""
    helped = acting_for(session, caregiver=caregiver, delegation_id=delegation_id, need="revoke", now=now)
    consent = patient_consent(session, patient_id=helped.patient.id, consent_id=consent_id)
    return revoke_consent(
        session,
        consent=consent,
        by=_actor(caregiver),
        reason="withdrawn by a caregiver",
        now=now,
        caregiver=caregiver.display_name,
    )


def check_grant(helped: Helped, caregiver: Patient, grants: Iterable[Grant]) -> None:
    """Every category at every holder within what the patient allowed, or ``CaregiverRefused``."""
    delegation = helped.delegation
    categories, holders = set(delegation.categories or []), set(delegation.holders or [])
    for grant in grants:
        if grant.holder not in holders or not set(grant.categories) <= categories:
            raise CaregiverRefused(
                "this goes beyond the data this person allowed you to share",
                reason="outside_limits",
                delegation=delegation,
                caregiver=caregiver,
                patient=helped.patient,
                attempted=GRANT,
            )


def grant_for(
    session: Session,
    *,
    caregiver: Patient,
    delegation_id: str,
    app: App,
    grants: list[Grant],
    days: int,
    charter_version: str,
    now: datetime,
) -> ConsentRecord:
    """A caregiver consents, for the helped patient, within the limits they set."""
    helped = acting_for(session, caregiver=caregiver, delegation_id=delegation_id, need=GRANT, now=now)
    check_grant(helped, caregiver, grants)
    return grant_consent(
        session,
        patient_id=helped.patient.id,
        app=app,
        grants=grants,
        days=days,
        charter_version=charter_version,
        by=_actor(caregiver),
        now=now,
        caregiver=caregiver.display_name,
    )


def end_for_deleted_account(session: Session, *, patient_id: str, now: datetime) -> None:
    """Before an account goes: the help it gave ends and the help it received is withdrawn,
    each recorded in the log of the patient concerned."""
    patient = session.get(Patient, patient_id)
    if patient is None:
        return
    for delegation in session.scalars(
        select(Delegation).where(Delegation.caregiver_id == patient_id, Delegation.status == "active")
    ).all():
        stop_helping(
            session, caregiver=patient, delegation_id=delegation.id, now=now, reason="account deleted"
        )
    for delegation in session.scalars(
        select(Delegation).where(Delegation.patient_id == patient_id, Delegation.status.in_(OPEN))
    ).all():
        withdraw(session, patient_id=patient_id, delegation_id=delegation.id, now=now)


def _row_json(delegation: Delegation) -> dict[str, Any]:
    return {
        "id": delegation.id,
        "rights": delegation.rights,
        "categories": delegation.categories,
        "holders": delegation.holders,
        "status": delegation.status,
        "created_at": iso(delegation.created_at),
        "ends_at": iso(delegation.ends_at),
        "answered_at": iso(delegation.answered_at) if delegation.answered_at else None,
        "ended_at": iso(delegation.ended_at) if delegation.ended_at else None,
    }


def caregiver_export(session: Session, patient: Patient) -> dict[str, Any]:
    """The patient's caregiver relations, both ways, for the account export (GDPR art. 15/20)."""
    mine = session.scalars(
        select(Delegation).where(Delegation.patient_id == patient.id).order_by(Delegation.created_at)
    ).all()
    helped = session.execute(
        select(Delegation, Patient)
        .join(Patient, Patient.id == Delegation.patient_id)
        .where(
            or_(Delegation.caregiver_id == patient.id, Delegation.invitee_key == (patient.email_key or "-"))
        )
        .order_by(Delegation.created_at)
    ).all()
    return {
        "helped_by": [
            {**_row_json(d), "invitee_email": d.invitee_email, "caregiver": _caregiver_name(session, d)}
            for d in mine
        ],
        "helping": [
            {**_row_json(d), "patient": p.display_name} for d, p in helped if d.patient_id != patient.id
        ],
    }
