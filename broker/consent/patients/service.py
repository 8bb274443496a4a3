"""Patient accounts: sign-up, log-in, log-out, external identities.

Services take a session (or, for the log-in, the session factory, because the password check
runs between two short transactions) and plain values; they never commit themselves.
"""

from __future__ import annotations

import re
import unicodedata
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from broker.consent.patients import repository, sessions, throttle
from broker.consent.patients.models import ExternalIdentity, Patient
from broker.consent.patients.passwords import MAX_INPUT_BYTES, PasswordHashing, password_problem
from broker.http import in_transaction
from broker.settings import Settings

MAX_EMAIL = 254
MAX_NAME = 200
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
# Bidirectional overrides and isolates can make a name read differently from what it is
# (SECURITY W9); control characters have no place in a name either.
_BIDI = {chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F, 0x061C)}


def fold_email(email: str) -> str:
    """The unique key of an e-mail address: NFKC, stripped, case-folded."""
    return unicodedata.normalize("NFKC", email).strip().casefold()


def clean_name(name: str) -> str:
    kept = "".join(
        ch
        for ch in unicodedata.normalize("NFC", name)
        if ch not in _BIDI and unicodedata.category(ch)[0] != "C"
    )
    return " ".join(kept.split())


def valid_email(email: str) -> bool:
    """Whether ``email`` can be an account's address (its folded form, within the length)."""
    folded = fold_email(email)
    return bool(folded) and len(folded) <= MAX_EMAIL and _EMAIL.match(folded) is not None


def sign_up_problems(email: str, display_name: str, password: str) -> dict[str, str]:
    """Field → error code, empty when the sign-up form is acceptable."""
    problems: dict[str, str] = {}
    folded = fold_email(email)
    if not valid_email(email):
        problems["email"] = "email_invalid"
    name = clean_name(display_name)
    if not name:
        problems["display_name"] = "name_missing"
    elif len(name) > MAX_NAME:
        problems["display_name"] = "name_too_long"
    context = (folded, folded.split("@", 1)[0], name)
    problem = password_problem(password, context=context)
    if problem:
        problems["password"] = problem
    return problems


def create_local_account(
    session: Session, *, email: str, display_name: str, password_hash: str, language: str, now: datetime
) -> Patient | None:
    """A new local account, or None when the address already has one (the caller says nothing)."""
    email_key = fold_email(email)
    if repository.patient_by_email_key(session, email_key) is not None:
        return None
    patient = Patient(
        id=str(uuid.uuid4()),
        email=email.strip(),
        email_key=email_key,
        password_hash=password_hash,
        display_name=clean_name(display_name),
        preferred_language=language,
        is_demo=False,
        created_at=now,
        password_changed_at=now,
    )
    try:
        with session.begin_nested():  # the same address signed up twice at once
            repository.add(session, patient)
    except IntegrityError:
        return None
    return patient


@dataclass(frozen=True)
class LoginResult:
    """Exactly one of the three is set."""

    session_id: str | None = None
    retry_after: int | None = None  # seconds; the log-in was not even tried
    failed: bool = False


async def log_in(
    factory: sessionmaker[Session],
    hashing: PasswordHashing,
    settings: Settings,
    *,
    email: str,
    password: str,
    address: str,
    now: datetime,
) -> LoginResult:
    """Check an e-mail and password, throttled; the same work for unknown and known accounts."""
    email_key = fold_email(email)[:MAX_EMAIL]
    keys = throttle.throttle_keys(settings.secret_key, email_key, address)
    policies = keys.policies()

    def look_up(session: Session) -> tuple[int | None, str | None, str | None]:
        wait = throttle.retry_after(session, list(policies), now)
        if wait is not None:
            return wait, None, None
        patient = repository.patient_by_email_key(session, email_key)
        if patient is None:
            return None, None, None
        return None, patient.id, patient.password_hash

    wait, patient_id, stored = await in_transaction(factory, look_up)
    if wait is not None:
        return LoginResult(retry_after=wait)
    if len(password.encode("utf-8")) > MAX_INPUT_BYTES:
        matches, new_hash = False, None  # never hashed: bounds the cost of one request
    else:
        matches, new_hash = await hashing.verify(stored, password)

    def conclude(session: Session) -> str | None:
        if not (matches and patient_id):
            throttle.record_failure(session, policies, now)
            return None
        throttle.clear(session, keys.account)
        if new_hash:
            repository.set_password_hash(session, patient_id, new_hash)
        return sessions.start_session(session, patient_id, settings, now)

    session_id = await in_transaction(factory, conclude)
    return LoginResult(session_id=session_id) if session_id else LoginResult(failed=True)


@dataclass(frozen=True)
class PasswordCheck:
    """The answer of ``check_current_password``: right, wrong, or not tried (``retry_after``)."""

    matches: bool = False
    retry_after: int | None = None  # seconds


async def check_current_password(
    factory: sessionmaker[Session],
    hashing: PasswordHashing,
    settings: Settings,
    *,
    patient: Patient,
    password: str,
    address: str,
    now: datetime,
) -> PasswordCheck:
    """The password a logged-in patient types to confirm an account action, throttled like
    the log-in and on the same counters: a stolen session cannot be used to guess the password
    faster than the log-in page allows (SECURITY W7)."""
    keys = throttle.throttle_keys(settings.secret_key, patient.email_key or patient.id, address)
    policies = keys.policies()
    wait = await in_transaction(factory, lambda session: throttle.retry_after(session, list(policies), now))
    if wait is not None:
        return PasswordCheck(retry_after=wait)
    if patient.password_hash is None or len(password.encode("utf-8")) > MAX_INPUT_BYTES:
        matches = False  # never hashed: bounds the cost of one request
    else:
        matches, _ = await hashing.verify(patient.password_hash, password)

    def conclude(session: Session) -> None:
        if matches:
            throttle.clear(session, keys.account)
        else:
            throttle.record_failure(session, policies, now)

    await in_transaction(factory, conclude)
    return PasswordCheck(matches=matches)


def log_out(session: Session, session_id: str | None, settings: Settings, now: datetime) -> None:
    sessions.end_session(session, session_id, settings, now)


def external_log_in(
    session: Session,
    *,
    issuer: str,
    subject: str,
    display_name: str,
    language: str,
    settings: Settings,
    now: datetime,
) -> str:
    """Open a session for the patient known at ``issuer`` as ``subject``, creating them once.

    Accounts are linked by (issuer, subject) only, never by e-mail: an address asserted by a
    provider must not open a local account that someone else created with it.
    """
    known = repository.identity(session, issuer, subject)
    if known is not None:
        patient_id = known.patient_id
    else:
        patient = Patient(
            id=str(uuid.uuid4()),
            email=None,
            email_key=None,
            password_hash=None,
            display_name=clean_name(display_name)[:MAX_NAME] or "Patient",
            preferred_language=language,
            is_demo=False,
            created_at=now,
        )
        try:
            with session.begin_nested():  # the first log-in, twice at once from two tabs
                repository.add(session, patient)
                repository.add(
                    session,
                    ExternalIdentity(patient_id=patient.id, issuer=issuer, subject=subject, created_at=now),
                )
            patient_id = patient.id
        except IntegrityError:
            winner = repository.identity(session, issuer, subject)
            if winner is None:
                raise
            patient_id = winner.patient_id
    return sessions.start_session(session, patient_id, settings, now)
