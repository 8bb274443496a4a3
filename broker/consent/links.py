"""Operator import of patient ↔ holder links (DESIGN step 4: bulk and demo seeding)."""

from __future__ import annotations

import hmac
import re
import secrets
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from sqlalchemy import select
from sqlalchemy.orm import Session

from broker.audit.log import append_event
from broker.audit.tags import EventTag
from broker.catalog.models import Holder
from broker.consent.models import HolderLink, LinkRequest
from broker.consent.patients.models import Patient
from broker.consent.patients.service import fold_email
from broker.consent.proofs import FAPI2_ALGORITHMS, JoseError, ReplayCache, verify_jwt
from broker.consent.service import link_patient
from broker.db import utcnow
from broker.errors import BrokerError, InvalidRequest, NotFound
from broker.opaque import secret_digest

_HANDLE = re.compile(r"^[A-Za-z0-9_\-]{16,64}$")


def import_links(session: Session, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Create the links of ``rows``; every row is checked, and any error stops the import."""
    errors: list[str] = []
    created = 0
    now = utcnow()
    for number, row in enumerate(rows, start=2):  # line 1 is the header
        email = (row.get("email") or "").strip()
        holder = (row.get("holder") or "").strip()
        handle = (row.get("handle") or "").strip() or None
        patient = session.scalars(select(Patient).where(Patient.email_key == fold_email(email))).first()
        if patient is None:
            errors.append(f"line {number}: no patient account for this e-mail")
            continue
        if handle is not None and not _HANDLE.match(handle):
            errors.append(f"line {number}: handle must be 16 to 64 letters, digits, - or _")
            continue
        if handle is not None:
            taken = session.scalars(select(HolderLink).where(HolderLink.handle == handle)).first()
            if taken is not None and (taken.patient_id, taken.holder_id) != (patient.id, holder):
                errors.append(f"line {number}: this handle is already used by another link")
                continue
        try:
            link_patient(
                session, patient_id=patient.id, holder_id=holder, handle=handle, now=now, by="operator:import"
            )
        except BrokerError as exc:
            errors.append(f"line {number}: {exc.detail}")
            continue
        created += 1
    if errors:
        # Raising rolls the whole import back: a file is imported entirely or not at all.
        raise InvalidRequest("nothing imported: " + "; ".join(errors), errors=errors)
    return {"linked": created, "errors": []}


# -- the link step: the patient authenticates at the holder and comes back linked -----------

LINK_TTL = timedelta(minutes=10)
LINK_TOKEN_TYPES = ("link+jwt",)


def start_link(
    session: Session, *, patient_id: str, holder_id: str, issuer: str, secret_key: bytes, now: datetime
) -> str:
    """Where to send the patient: the holder's link endpoint, with a one-time ``state``."""
    holder = session.get(Holder, holder_id)
    if holder is None or holder.status != "approved" or not holder.link_endpoint:
        raise NotFound("this source cannot be linked from here")
    state = secrets.token_urlsafe(32)
    session.add(
        LinkRequest(
            state_hash=secret_digest(secret_key, state),
            patient_id=patient_id,
            holder_id=holder_id,
            created_at=now,
            expires_at=now + LINK_TTL,
        )
    )
    query = urlencode({"state": state, "redirect_uri": f"{issuer}/my/sources/callback", "broker": issuer})
    separator = "&" if "?" in holder.link_endpoint else "?"
    return holder.link_endpoint + separator + query


def finish_link(
    session: Session,
    *,
    patient_id: str,
    state: str | None,
    link_token: str | None,
    issuer: str,
    secret_key: bytes,
    replay: ReplayCache,
    now: datetime,
) -> HolderLink:
    """The holder's answer: a JWT it signed, naming the handle it keeps for this patient.

    The handle comes signed by the holder's registered key, bound to this ``state``, so that
    neither the patient's browser nor anyone else can link a patient to another's record.
    """
    if not state or not link_token:
        raise InvalidRequest("the source's answer is incomplete")
    request = session.get(LinkRequest, secret_digest(secret_key, state), with_for_update=True)
    if (
        request is None
        or request.patient_id != patient_id
        or request.used_at is not None
        or request.expires_at <= now
    ):
        raise InvalidRequest("this link request is unknown, used or expired; start again")
    holder = session.get(Holder, request.holder_id)
    if holder is None or holder.status != "approved" or not holder.jwks:
        raise InvalidRequest("this source is not available")
    try:
        verified = verify_jwt(
            link_token,
            keys=holder.jwks,
            algorithms=FAPI2_ALGORITHMS,
            types=LINK_TOKEN_TYPES,
            typ_required=True,
            issuer=holder.identifier,
            audiences=(issuer,),
            required_claims=("iss", "aud", "exp", "iat", "jti", "state", "handle"),
            now=now,
            leeway=timedelta(seconds=30),
        )
    except JoseError as exc:
        raise InvalidRequest(f"the source's answer could not be verified: {exc}") from None
    claims = verified.claims
    if not hmac.compare_digest(str(claims["state"]), state):
        raise InvalidRequest("the source's answer is for another link request")
    handle = claims["handle"]
    if not isinstance(handle, str) or not _HANDLE.match(handle):
        raise InvalidRequest("the source gave a malformed handle")
    if claims["exp"] - claims["iat"] > LINK_TTL.total_seconds():
        raise InvalidRequest("the source's answer lives too long")
    if not replay.first_use(
        f"link:{holder.identifier}:{claims['jti']}",
        datetime.fromtimestamp(claims["exp"], UTC) + timedelta(seconds=30),
    ):
        raise InvalidRequest("the source's answer was already used")
    # Written only now: the replay record commits on its own connection first (SQLite lets
    # one writer at a time, so this unit of work must not have written yet).
    request.used_at = now
    taken = session.scalars(select(HolderLink).where(HolderLink.handle == handle)).first()
    if taken is not None and (taken.patient_id, taken.holder_id) != (patient_id, holder.identifier):
        raise InvalidRequest("this record is already linked to another account")
    existing = session.scalars(
        select(HolderLink).where(
            HolderLink.patient_id == patient_id, HolderLink.holder_id == holder.identifier
        )
    ).first()
    if existing is not None and existing.handle != handle:
        existing.handle = handle  # the holder re-issued the handle for this patient
    return link_patient(session, patient_id=patient_id, holder_id=holder.identifier, handle=handle, now=now)


def unlink(session: Session, *, patient_id: str, holder_id: str, now: datetime | None = None) -> HolderLink:
    link = session.scalars(
        select(HolderLink).where(HolderLink.patient_id == patient_id, HolderLink.holder_id == holder_id)
    ).first()
    if link is None:
        raise NotFound("you are not linked to this source")
    # New tokens for this holder stop at once (the token endpoint needs an active link).
    if link.status != "unlinked":
        link.status = "unlinked"
        append_event(
            session,
            tag=EventTag.LINK_REMOVED,
            patient_id=patient_id,
            actor=f"patient:{patient_id}",
            details={"holder": holder_id},
            at=now or utcnow(),
        )
    return link
