"""HTML pages of patient accounts: sign-up, log-in, log-out, the account page and its
actions (password, log-out everywhere, export, deletion), language.

Every page works without JavaScript; every form carries a CSRF token; every POST that
succeeds answers 303 (SECURITY A1 §4.12).
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any
from urllib.parse import quote

from litestar import Request, Response, Router, get, post
from litestar.datastructures import State
from litestar.exceptions import HTTPException
from litestar.params import FromQuery
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from broker.consent.patients import account, cookies, oidc, service
from broker.consent.patients.csrf import FIELD as CSRF_FIELD
from broker.consent.patients.csrf import check_csrf
from broker.consent.patients.errors import TooManyAttempts
from broker.consent.patients.models import Patient
from broker.consent.patients.passwords import HashingBusy, PasswordHashing
from broker.consent.patients.rendering import page_language, render_page, safe_next
from broker.consent.patients.sessions import login_redirect, patient_from_request, session_id_hash
from broker.db import DATABASE_RETRY_AFTER, database_unreachable, utcnow
from broker.errors import BrokerError
from broker.http import client_address, in_transaction
from broker.settings import Settings
from broker.web.i18n import LANGUAGE_COOKIE, LANGUAGES

log = logging.getLogger(__name__)

NO_STORE = {"Cache-Control": "no-store"}
MAX_FIELD = 4096  # no field of these forms is longer; bigger ones are cut before any work


def patient_state(settings: Settings) -> dict[str, Any]:
    """What the patient pages keep in the application state (added by ``create_app``)."""
    from broker.web.i18n import PageTemplates

    return {
        "page_templates": PageTemplates(),
        "password_hashing": PasswordHashing(
            memory_kib=settings.argon2_memory_kib,
            time_cost=settings.argon2_time_cost,
            parallelism=settings.argon2_parallelism,
            concurrency=settings.password_hash_concurrency,
        ),
        "oidc_provider": oidc.ProviderCache(settings) if settings.oidc_enabled else None,
    }


async def form_fields(request: Request[Any, Any, Any], *names: str) -> dict[str, str]:
    form = await request.form()
    values: dict[str, str] = {}
    for name in (CSRF_FIELD, "next", *names):
        value = form.get(name)
        # A NUL (which PostgreSQL text cannot hold) empties the field: the page then says
        # what is missing, as for a field left blank.
        values[name] = value[:MAX_FIELD] if isinstance(value, str) and "\x00" not in value else ""
    return values


def see_other(location: str, *cookie_list: Any) -> Response[Any]:
    return Response(
        content=None,
        status_code=303,
        headers={"Location": location, **NO_STORE},
        cookies=list(cookie_list),
    )


def minutes(seconds: int) -> int:
    return max(1, math.ceil(seconds / 60))


# -- sign-up ----------------------------------------------------------------------------------


@get("/signup", include_in_schema=False)
async def signup_page(request: Request[Any, Any, Any], next: FromQuery[str | None] = None) -> Response[str]:
    return render_page(request, "patients/signup.html", next=safe_next(next), values={}, errors={})


@post("/signup", include_in_schema=False)
async def signup_submit(request: Request[Any, Any, Any], state: State) -> Response[Any]:
    settings: Settings = state.settings
    fields = await form_fields(request, "email", "display_name", "password")
    check_csrf(request, settings, fields[CSRF_FIELD])
    next_path = safe_next(fields["next"])
    errors = service.sign_up_problems(fields["email"], fields["display_name"], fields["password"])
    if errors:
        values = {"email": fields["email"], "display_name": fields["display_name"]}
        return render_page(
            request, "patients/signup.html", status_code=400, next=next_path, values=values, errors=errors
        )
    # Hash first, whether or not the address has an account: both answers cost the same.
    password_hash = await state.password_hashing.hash(fields["password"])
    language = page_language(request)
    now = utcnow()

    def work(session: Session) -> None:
        service.create_local_account(
            session,
            email=fields["email"],
            display_name=fields["display_name"],
            password_hash=password_hash,
            language=language,
            now=now,
        )

    await in_transaction(state.session_factory, work)
    # The same answer for a new address and a known one (no account enumeration).
    return see_other(f"/login?signed_up=1&next={quote(next_path, safe='')}")


# -- log-in / log-out -------------------------------------------------------------------------


@get("/login", include_in_schema=False)
async def login_page(
    request: Request[Any, Any, Any],
    next: FromQuery[str | None] = None,
    signed_up: FromQuery[bool] = False,
    logged_out: FromQuery[bool] = False,
) -> Response[str]:
    notice = "signed_up" if signed_up else "logged_out" if logged_out else None
    return render_page(request, "patients/login.html", next=safe_next(next), email="", notice=notice)


@post("/login", include_in_schema=False)
async def login_submit(request: Request[Any, Any, Any], state: State) -> Response[Any]:
    settings: Settings = state.settings
    fields = await form_fields(request, "email", "password")
    check_csrf(request, settings, fields[CSRF_FIELD])
    next_path = safe_next(fields["next"])
    result = await service.log_in(
        state.session_factory,
        state.password_hashing,
        settings,
        email=fields["email"],
        password=fields["password"],
        address=client_address(request),
        now=utcnow(),
    )
    if result.retry_after is not None:
        return render_page(
            request,
            "patients/login.html",
            status_code=429,
            headers={"Retry-After": str(result.retry_after)},
            next=next_path,
            email=fields["email"],
            error="throttled",
            wait_minutes=minutes(result.retry_after),
        )
    if result.session_id is None:
        return render_page(
            request,
            "patients/login.html",
            status_code=400,
            next=next_path,
            email=fields["email"],
            error="bad_credentials",
        )
    # A new session id at every log-in (fixation); the pre-session CSRF cookie is done with.
    return see_other(
        next_path,
        cookies.make(settings, cookies.SESSION, result.session_id),
        cookies.expired(settings, cookies.CSRF),
    )


@post("/logout", include_in_schema=False)
async def logout(request: Request[Any, Any, Any], state: State) -> Response[Any]:
    settings: Settings = state.settings
    fields = await form_fields(request)
    check_csrf(request, settings, fields[CSRF_FIELD])
    session_id = cookies.read(request, settings, cookies.SESSION)
    now = utcnow()
    await in_transaction(state.session_factory, lambda s: service.log_out(s, session_id, settings, now))
    return see_other("/login?logged_out=1", cookies.expired(settings, cookies.SESSION))


# -- the account page ---------------------------------------------------------------------------


ACCOUNT_NOTICES = ("password_changed",)


async def logged_in_patient(request: Request[Any, Any, Any], state: State) -> Patient | None:
    settings: Settings = state.settings
    return await in_transaction(
        state.session_factory, lambda session: patient_from_request(session, request, settings)
    )


def account_form(
    request: Request[Any, Any, Any], patient: Patient, *, status_code: int = 200, **context: Any
) -> Response[str]:
    context.setdefault("errors", {})
    return render_page(
        request, "patients/account.html", status_code=status_code, patient=patient, **context
    )


async def password_problem_code(
    request: Request[Any, Any, Any], state: State, patient: Patient, given: str
) -> tuple[str | None, dict[str, Any]]:
    """``(None, {})`` when ``given`` is the patient's password; else an error code for the
    field ("password_wrong" or "throttled") and what the page says with it."""
    check = await service.check_current_password(
        state.session_factory,
        state.password_hashing,
        state.settings,
        patient=patient,
        password=given,
        address=client_address(request),
        now=utcnow(),
    )
    if check.retry_after is not None:
        # ``headers`` goes to ``render_page``, ``wait_minutes`` to the template.
        return "throttled", {
            "wait_minutes": minutes(check.retry_after),
            "headers": {"Retry-After": str(check.retry_after)},
        }
    return (None, {}) if check.matches else ("password_wrong", {})


def throttled_status(code: str | None) -> int:
    return 429 if code == "throttled" else 400


@get("/account", include_in_schema=False)
async def account_page(
    request: Request[Any, Any, Any], state: State, done: FromQuery[str | None] = None
) -> Response[Any]:
    # Imported here: the caregivers package imports this one (its Patient model).
    from broker.consent.caregivers.service import invitations_for

    def work(session: Session) -> tuple[Patient | None, list[str]]:
        patient = patient_from_request(session, request, state.settings)
        if patient is None:
            return None, []
        return patient, [row.patient.display_name for row in invitations_for(session, patient, utcnow())]

    patient, inviting = await in_transaction(state.session_factory, work)
    if patient is None:
        return login_redirect(request)
    notice = done if done in ACCOUNT_NOTICES else None
    return account_form(request, patient, notice=notice, inviting=inviting)


@post("/account/password", include_in_schema=False)
async def change_password(request: Request[Any, Any, Any], state: State) -> Response[Any]:
    settings: Settings = state.settings
    fields = await form_fields(request, "current_password", "new_password")
    check_csrf(request, settings, fields[CSRF_FIELD])
    patient = await logged_in_patient(request, state)
    if patient is None:
        return login_redirect(request)
    if patient.password_hash is None:  # known only through an external identity provider
        return account_form(request, patient, status_code=400, errors={"current_password": "no_password"})
    problem = account.new_password_problem(patient, fields["new_password"])
    wrong, extra = await password_problem_code(request, state, patient, fields["current_password"])
    if wrong:
        return account_form(
            request, patient, status_code=throttled_status(wrong), errors={"current_password": wrong}, **extra
        )
    if problem:
        return account_form(request, patient, status_code=400, errors={"new_password": problem})
    password_hash = await state.password_hashing.hash(fields["new_password"])
    session_id = cookies.read(request, settings, cookies.SESSION) or ""
    now = utcnow()

    def work(session: Session) -> None:
        account.change_password(
            session,
            patient_id=patient.id,
            password_hash=password_hash,
            keep_session=session_id_hash(settings, session_id),
            now=now,
        )

    await in_transaction(state.session_factory, work)
    return see_other("/account?done=password_changed")


@post("/account/logout-everywhere", include_in_schema=False)
async def log_out_everywhere(request: Request[Any, Any, Any], state: State) -> Response[Any]:
    settings: Settings = state.settings
    fields = await form_fields(request)
    check_csrf(request, settings, fields[CSRF_FIELD])
    now = utcnow()

    def work(session: Session) -> bool:
        patient = patient_from_request(session, request, settings, now)
        if patient is None:
            return False
        account.end_sessions(session, patient.id, now)
        return True

    if not await in_transaction(state.session_factory, work):
        return login_redirect(request)
    return see_other("/login?logged_out=1", cookies.expired(settings, cookies.SESSION))


@post("/account/export", include_in_schema=False)
async def export_account(request: Request[Any, Any, Any], state: State) -> Response[Any]:
    """Everything the broker holds about the patient, as a JSON file (GDPR art. 15 and 20)."""
    settings: Settings = state.settings
    fields = await form_fields(request)
    check_csrf(request, settings, fields[CSRF_FIELD])
    await account.sequence_audit(state)  # the events written so far get their inclusion proofs
    now = utcnow()

    def work(session: Session) -> dict[str, Any] | None:
        patient = patient_from_request(session, request, settings, now)
        if patient is None:
            return None
        return account.account_export(session, patient=patient, issuer=settings.issuer, now=now)

    body = await in_transaction(state.session_factory, work)
    if body is None:
        return login_redirect(request)
    filename = f"mes-donnees-{now:%Y-%m-%d}.json"
    return Response(
        content=json.dumps(body, ensure_ascii=False, indent=2).encode("utf-8"),
        media_type="application/json",
        status_code=200,
        headers={
            "Content-Disposition": f'attachment; filename="{filename}"',
            "X-Content-Type-Options": "nosniff",
            **NO_STORE,
        },
    )


@get("/account/delete", include_in_schema=False)
async def delete_page(request: Request[Any, Any, Any], state: State) -> Response[Any]:
    patient = await logged_in_patient(request, state)
    if patient is None:
        return login_redirect(request)
    return render_page(request, "patients/account_delete.html", patient=patient, errors={})


@post("/account/delete", include_in_schema=False)
async def delete_submit(request: Request[Any, Any, Any], state: State) -> Response[Any]:
    """GDPR art. 17: consents revoked first (holders are told), then erasure, then the account."""
    settings: Settings = state.settings
    fields = await form_fields(request, "understood", "password")
    check_csrf(request, settings, fields[CSRF_FIELD])
    patient = await logged_in_patient(request, state)
    if patient is None:
        return login_redirect(request)
    errors: dict[str, str] = {}
    extra: dict[str, Any] = {}
    if fields["understood"] != "yes":
        errors["understood"] = "not_confirmed"
    if patient.password_hash is not None:
        wrong, extra = await password_problem_code(request, state, patient, fields["password"])
        if wrong:
            errors["password"] = wrong
    if errors:
        return render_page(
            request,
            "patients/account_delete.html",
            status_code=throttled_status(errors.get("password")),
            patient=patient,
            errors=errors,
            **extra,
        )
    patient_id = patient.id
    await in_transaction(
        state.session_factory,
        lambda session: account.withdraw_everything(session, patient_id=patient_id, now=utcnow()),
    )
    # The revocations are placed in the tree before the erasure: the log keeps that they
    # happened (their leaves stay), while their readable details go with the rest.
    await account.sequence_audit(state)
    await in_transaction(
        state.session_factory,
        lambda session: account.delete_account(session, patient_id=patient_id, now=utcnow()),
    )
    return see_other("/account/deleted", cookies.expired(settings, cookies.SESSION))


@get("/account/deleted", include_in_schema=False)
async def deleted_page(request: Request[Any, Any, Any]) -> Response[Any]:
    return render_page(request, "patients/account_deleted.html")


# -- language ---------------------------------------------------------------------------------


@get("/language", include_in_schema=False)
async def choose_language(
    state: State,
    to: FromQuery[str | None] = None,
    next: FromQuery[str | None] = None,
) -> Response[Any]:
    """The language links: a preference, not a state change worth a form (no JavaScript)."""
    settings: Settings = state.settings
    response = see_other(safe_next(next, default="/login"))
    if to in LANGUAGES:
        response.set_cookie(
            key=LANGUAGE_COOKIE,
            value=str(to),
            max_age=365 * 86400,
            path="/",
            secure=cookies.secure(settings),
            httponly=True,
            samesite="lax",
        )
    return response


# -- errors as pages -------------------------------------------------------------------------


def page_error_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """Broker errors on a page, as a readable page in the visitor's language."""
    headers: dict[str, str] = {}
    if isinstance(exc, HTTPException):
        status, code = exc.status_code, "http"
        if status >= 500:
            return render_page(request, "patients/error.html", status_code=500, code="internal")
    elif isinstance(exc, BrokerError):
        status = exc.status
        code = getattr(exc, "code", "generic")
        if isinstance(exc, TooManyAttempts | HashingBusy):
            headers["Retry-After"] = str(getattr(exc, "retry_after", 5))
        if isinstance(exc, HashingBusy):
            code = "busy"
    else:
        raise exc
    return render_page(request, "patients/error.html", status_code=status, headers=headers, code=code)


def page_database_error(request: Request[Any, Any, Any], exc: DBAPIError) -> Response[Any]:
    """The database out of reach for a moment (a restart): a readable page saying to try again
    shortly, with ``Retry-After``; nothing was changed. Any other database error is a bug."""
    if not database_unreachable(exc):
        log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
        return render_page(request, "patients/error.html", status_code=500, code="internal")
    log.warning("database unavailable on %s %s: %s", request.method, request.url.path, exc.orig)
    headers = {"Retry-After": str(DATABASE_RETRY_AFTER)}
    return render_page(request, "patients/error.html", status_code=503, headers=headers, code="unavailable")


PAGE_EXCEPTION_HANDLERS: dict[int | type[Exception], Any] = {
    BrokerError: page_error_handler,
    HTTPException: page_error_handler,
    DBAPIError: page_database_error,
}

patient_pages = Router(
    path="/",
    route_handlers=[
        signup_page,
        signup_submit,
        login_page,
        login_submit,
        logout,
        account_page,
        change_password,
        log_out_everywhere,
        export_account,
        delete_page,
        delete_submit,
        deleted_page,
        choose_language,
        oidc.start_external_login,
        oidc.external_login_callback,
    ],
    exception_handlers=PAGE_EXCEPTION_HANDLERS,
    include_in_schema=False,
)

__all__ = [
    "PAGE_EXCEPTION_HANDLERS",
    "page_error_handler",
    "patient_pages",
    "patient_state",
]
