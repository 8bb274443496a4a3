"""Operator import of patient ↔ holder links (DESIGN step 4: bulk and demo seeding)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from broker.consent.models import HolderLink
from broker.consent.patients.models import Patient
from broker.consent.patients.service import fold_email
from broker.consent.service import link_patient
from broker.db import utcnow
from broker.errors import BrokerError, InvalidRequest

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
            link_patient(session, patient_id=patient.id, holder_id=holder, handle=handle, now=now)
        except BrokerError as exc:
            errors.append(f"line {number}: {exc.detail}")
            continue
        created += 1
    if errors:
        # Raising rolls the whole import back: a file is imported entirely or not at all.
        raise InvalidRequest("nothing imported: " + "; ".join(errors), errors=errors)
    return {"linked": created, "errors": []}
