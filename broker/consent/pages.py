"""The patient's pages of the consent flow: the authorization request, the consent screen,
and the list of consents with one-click revocation. Server-rendered; no JavaScript needed."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, TypeVar

from litestar import Request, Response, Router, get, post
from litestar.datastructures import State
from litestar.params import FromPath, FromQuery
from litestar.response import Redirect
from sqlalchemy import select
from sqlalchemy.orm import Session

from broker.audit.history import TIMEZONE, format_when, last_releases
from broker.catalog.models import App, Holder
from broker.charter import Charter
from broker.consent import oauth
from broker.consent.caregivers.models import GRANT
from broker.consent.caregivers.service import people_helped
from broker.consent.catalog_pages import link_target
from broker.consent.links import finish_link, start_link, unlink
from broker.consent.models import AuthorizationRequest, ConsentRecord
from broker.consent.patients import (
    PAGE_EXCEPTION_HANDLERS,
    check_csrf,
    login_redirect,
    patient_from_request,
    render_page,
)
from broker.consent.patients.models import Patient
from broker.consent.patients.rendering import page_language
from broker.consent.replay_store import DatabaseReplayCache
from broker.consent.service import (
    EXPIRY_REMINDER_DAYS,
    ConsentEndRefused,
    Grant,
    active_links,
    change_consent_end,
    grant_consent,
    latest_end,
    longest_consent_days,
    patient_consent,
    patient_consents,
    revoke_consent,
)
from broker.db import utcnow
from broker.errors import BrokerError, InvalidRequest
from broker.http import NO_STORE, in_transaction

DURATIONS = (7, 30, 90, 180, 365)
T = TypeVar("T")


@dataclass(frozen=True)
class Choice:
    """One (purpose, category) line of the consent screen."""

    value: str  # "purpose|category", the form field value
    purpose: str
    category: str
    label: str
    purpose_label: str
    justification: str
    optional: bool
    sensitive: bool

    @property
    def checked(self) -> bool:
        # Sensitive categories are never ticked in advance (MANIFEST.md, art. 06c).
        return not self.sensitive


def _choices(app: App, charter: Charter, request: AuthorizationRequest, lang: str) -> list[Choice]:
    requests = {
        (r["purpose"], r["category"]): r for r in app.client_metadata["charter_manifest"]["data_requests"]
    }
    out = []
    for item in oauth.requested_of(request):
        for category in item.categories:
            declared = requests.get((item.purpose, category), {})
            entry = charter.categories[category]
            out.append(
                Choice(
                    value=f"{item.purpose}|{category}",
                    purpose=item.purpose,
                    category=category,
                    label=entry.label(lang),
                    purpose_label=charter.purposes[item.purpose].label(lang),
                    justification=str(declared.get("justification", "")),
                    optional=bool(declared.get("optional", False)) or entry.sensitive,
                    sensitive=entry.sensitive,
                )
            )
    return out


def _holders(
    session: Session, patient: Patient, request: AuthorizationRequest, categories: set[str]
) -> list[Holder]:
    wanted = {r.get("holder") for r in request.requested}
    out = []
    for _link, holder in active_links(session, patient.id):
        if None not in wanted and holder.identifier not in wanted:
            continue
        if categories & set(holder.categories):
            out.append(holder)
    return out


def _page_error(request: Request[Any, Any, Any], error: BrokerError) -> Response[Any]:
    return render_page(
        request,
        "consent/error.html",
        status_code=error.status,
        message=error.detail,
        app_status=error.extra.get("app_status"),
        code=error.extra.get("code"),
    )


@get("/authorize", include_in_schema=False)
async def authorize(request: Request[Any, Any, Any], state: State) -> Response[Any]:
    """RFC 6749 §4.1.1; with ``request_uri`` the parameters were pushed first (RFC 9126)."""
    settings = state.settings
    query = request.query_params
    for key in query:
        if len(query.getall(key)) > 1:
            return _page_error(request, oauth.AuthorizationPageError(f"parameter {key!r} is repeated"))
    params: dict[str, str] = {key: str(query.get(key)) for key in query}

    def work(session: Session) -> tuple[str, Any]:
        now = utcnow()
        pushed: AuthorizationRequest | None = None
        if "request_uri" in params:
            request_uri = params["request_uri"] or ""
            pushed = session.get(AuthorizationRequest, request_uri.removeprefix(oauth.PAR_PREFIX))
            if (
                pushed is None
                or not request_uri.startswith(oauth.PAR_PREFIX)
                or not pushed.pushed
                or pushed.client_id != params.get("client_id")
                or pushed.expires_at <= now
                or pushed.used_at is not None
            ):
                raise oauth.AuthorizationPageError("this request_uri is unknown, used or expired")
            params.setdefault("redirect_uri", pushed.redirect_uri)
        app = oauth.check_client_and_redirect(session, params.get("client_id"), params.get("redirect_uri"))
        patient = patient_from_request(session, request, settings)
        if patient is None:
            # RFC 9700 §4.11.2: any error redirect happens only after the patient logged in.
            return "login", None
        if pushed is not None:
            if pushed.patient_id not in (None, patient.id):
                raise oauth.AuthorizationPageError("this request_uri belongs to another session")
            pushed.patient_id = patient.id
            pushed.expires_at = now + oauth.AUTHORIZATION_REQUEST_TTL
            stored = pushed
        else:
            charter = state.charters.current(session)
            checked = oauth.check_authorization_params(app, charter, params, settings.issuer)
            stored = oauth.store_authorization_request(session, checked, pushed=False, now=now)
            stored.patient_id = patient.id
        return "consent", stored.id

    try:
        outcome, value = await in_transaction(state.session_factory, work)
    except oauth.AuthorizationPageError as exc:
        return _page_error(request, exc)
    except oauth.RedirectError as exc:
        return Redirect(exc.location(), status_code=303)
    if outcome == "login":
        return login_redirect(request)
    return Redirect(f"/consent/{value}", status_code=303)


class LoginRequired(Exception):
    """No logged-in patient: pages send to the log-in page, the API answers 401."""


async def as_patient(
    request: Request[Any, Any, Any], state: State, work: Callable[[Session, Patient], T]
) -> T:
    """``work`` for the logged-in patient, in one unit of work (a worker thread)."""

    def run(session: Session) -> T:
        patient = patient_from_request(session, request, state.settings)
        if patient is None:
            raise LoginRequired
        return work(session, patient)

    return await in_transaction(state.session_factory, run)


async def page_action(
    request: Request[Any, Any, Any],
    state: State,
    work: Callable[[Session, Patient], T],
    respond: Callable[[T], Response[Any] | Awaitable[Response[Any]]],
) -> Response[Any]:
    """A patient page: log-in first, errors as a readable page, else ``respond`` (which may
    itself render a page after the unit of work, e.g. a form shown again with its error)."""
    try:
        result = await as_patient(request, state, work)
    except LoginRequired:
        return login_redirect(request)
    except BrokerError as exc:
        return _page_error(request, exc)
    answer = respond(result)
    return await answer if inspect.isawaitable(answer) else answer


async def checked_form(request: Request[Any, Any, Any], state: State) -> Any:
    """The posted form, after its CSRF token (SECURITY W4)."""
    form = await request.form()
    check_csrf(request, state.settings, form.get("csrf_token"))
    return form


def see_other(location: str) -> Callable[[Any], Response[Any]]:
    return lambda _result: Redirect(location, status_code=303)


def _own_request(session: Session, patient: Patient, request_id: str, now: datetime) -> AuthorizationRequest:
    pending = oauth.pending_request(session, request_id, now)
    if pending.patient_id != patient.id:
        raise oauth.AuthorizationPageError("this consent request belongs to another session")
    return pending


def screen_context(
    request: Request[Any, Any, Any],
    state: State,
    session: Session,
    pending: AuthorizationRequest,
    patient: Patient,
) -> dict[str, Any]:
    """What the consent screen shows about ``pending`` for ``patient``'s data."""
    app = session.get(App, pending.client_id)
    assert app is not None
    charter = state.charters.current(session)
    lang = page_language(request)
    choices = _choices(app, charter, pending, lang)
    manifest = app.client_metadata["charter_manifest"]
    longest = longest_consent_days(app)
    return {
        "app": app,
        "manifest": manifest,
        "request_id": pending.id,
        "business_model_label": charter.business_models[manifest["business_model"]["model"]].label(lang),
        "choices": choices,
        "holders": _holders(session, patient, pending, {c.category for c in choices}),
        # The usual choices, up to what the app allows, and that bound itself.
        "durations": sorted({d for d in DURATIONS if d < longest} | {longest}),
        "default_days": longest,
        "patient": patient,
    }


@get("/consent/{request_id:str}", include_in_schema=False)
async def consent_screen(
    request: Request[Any, Any, Any], state: State, request_id: FromPath[str]
) -> Response[Any]:
    """What the app is, who runs it, how it is paid for, what it asks and why — before any
    choice (DESIGN step 5, charter art. 06a and 06b)."""

    def work(session: Session, patient: Patient) -> dict[str, Any]:
        now = utcnow()
        pending = _own_request(session, patient, request_id, now)
        context = screen_context(request, state, session, pending, patient)
        # Someone this patient helps, with the right to consent for them (caregivers).
        context["grant_for"] = people_helped(session, patient.id, now, need=GRANT)
        return context

    return await page_action(
        request, state, work, lambda context: render_page(request, "consent/authorize.html", **context)
    )


def _grants(selected: list[Choice], holders: dict[str, Holder], picked: set[str]) -> list[Grant]:
    """Per ticked holder and purpose, the ticked categories that holder serves."""
    grants = []
    for holder_id in sorted(picked):
        served = set(holders[holder_id].categories)
        by_purpose: dict[str, list[str]] = {}
        for choice in selected:
            if choice.category in served:
                by_purpose.setdefault(choice.purpose, []).append(choice.category)
        grants += [Grant(holder_id, purpose, tuple(cats)) for purpose, cats in by_purpose.items()]
    return grants


@post("/consent/{request_id:str}", include_in_schema=False)
async def consent_decision(
    request: Request[Any, Any, Any], state: State, request_id: FromPath[str]
) -> Response[Any]:
    """The patient's answer. Both answers go back to the app with a 303 (RFC 9700 §4.12)."""
    form = await checked_form(request, state)

    def work(session: Session, patient: Patient) -> str:
        now = utcnow()
        pending = _own_request(session, patient, request_id, now)

        def record(app: App, grants: list[Grant], days: int, charter_version: str) -> ConsentRecord:
            return grant_consent(
                session,
                patient_id=patient.id,
                app=app,
                grants=grants,
                days=days,
                charter_version=charter_version,
                by=f"patient:{patient.id}",
                now=now,
            )

        return decide(state, session, form, pending, patient, record, now)

    return await page_action(request, state, work, lambda location: Redirect(location, status_code=303))


def decide(
    state: State,
    session: Session,
    form: Any,
    pending: AuthorizationRequest,
    patient: Patient,
    record: Callable[[App, list[Grant], int, str], ConsentRecord],
    now: datetime,
) -> str:
    """The answer to ``pending`` about ``patient``'s data, as the redirect back to the app.

    ``record`` stores the consent: the patient's own, or a caregiver's for them.
    """
    settings = state.settings
    pending.used_at = now  # one answer per request
    if form.get("decision") != "accept":
        return oauth.authorization_response(
            pending.redirect_uri,
            settings.issuer,
            state=pending.state,
            error="access_denied",
            error_description="the patient did not consent",
        )
    app = session.get(App, pending.client_id)
    if app is None or app.status != "approved":
        raise oauth.AuthorizationPageError("this app can no longer ask for your consent")
    charter = state.charters.current(session)
    choices = {c.value: c for c in _choices(app, charter, pending, "fr")}
    picked = set(form.getall("item", []))
    if picked - set(choices):
        raise InvalidRequest("the form names data that this request did not ask for")
    # Required lines are part of the request itself; optional ones only when ticked.
    selected = [c for c in choices.values() if not c.optional or c.value in picked]
    # The sources the screen offered (for every line asked, ticked or not): unticking the
    # only category a source serves leaves that source ticked but with nothing to give.
    holders = {
        h.identifier: h for h in _holders(session, patient, pending, {c.category for c in choices.values()})
    }
    picked_holders = set(form.getall("holder", []))
    if not picked_holders or not picked_holders <= set(holders):
        raise InvalidRequest("choose at least one of your data sources", code="no_source")
    try:
        days = int(form.get("days", ""))
    except ValueError:
        raise InvalidRequest("choose a duration", code="duration") from None
    consent = record(app, _grants(selected, holders, picked_holders), days, charter.version)
    code = oauth.issue_code(
        session, request=pending, consent=consent, secret_key=settings.secret_key, now=now
    )
    return oauth.authorization_response(pending.redirect_uri, settings.issuer, code=code, state=pending.state)


def _consent_rows(
    session: Session, patient: Patient, charter: Charter, lang: str, now: datetime
) -> list[dict[str, Any]]:
    """Per consent: what the app may read where, since and until when, its last read, and
    the dates the patient may move the end to."""
    reads = last_releases(session, patient.id)
    holder_names = dict(session.execute(select(Holder.identifier, Holder.legal_name)).all())
    today = now.astimezone(TIMEZONE).date()
    soon = now + timedelta(days=EXPIRY_REMINDER_DAYS)
    rows = []
    for consent, app in patient_consents(session, patient.id):
        active = consent.status == "active" and consent.expires_at > now
        last_read = reads.get(app.client_id)
        latest = latest_end(app, now)
        rows.append(
            {
                "consent": consent,
                "app": app,
                "active": active,
                "ends_soon": active and consent.expires_at <= soon,
                "grants": [
                    {
                        "holder": holder_names.get(g["holder"], g["holder"]),
                        "categories": [
                            charter.categories[c].label(lang) if c in charter.categories else c
                            for c in g["categories"]
                        ],
                    }
                    for g in consent.grants
                ],
                "since": format_when(consent.granted_at, lang, now),
                "until": format_when(consent.expires_at, lang, now),
                "last_read": format_when(last_read, lang, now) if last_read else None,
                "end_min": today.isoformat(),
                "end_max": latest.astimezone(TIMEZONE).date().isoformat(),
                "end_max_label": format_when(latest, lang, now).date,
                "end_value": consent.expires_at.astimezone(TIMEZONE).date().isoformat(),
            }
        )
    return rows


def _my_consents_page(
    request: Request[Any, Any, Any],
    state: State,
    *,
    status_code: int = 200,
    notice: str | None = None,
    error: tuple[str, str] | None = None,
) -> Awaitable[Response[Any]]:
    def work(session: Session, patient: Patient) -> dict[str, Any]:
        now = utcnow()
        charter = state.charters.current(session)
        rows = _consent_rows(session, patient, charter, page_language(request), now)
        return {
            "patient": patient,
            "consents": rows,
            "ending_soon": [row for row in rows if row["ends_soon"]],
            "reminder_days": EXPIRY_REMINDER_DAYS,
            "notice": notice,
            "error": error,
        }

    return page_action(
        request,
        state,
        work,
        lambda context: render_page(request, "consent/my_consents.html", status_code=status_code, **context),
    )


CONSENT_NOTICES = ("end_changed", "revoked")


@get("/my/consents", include_in_schema=False)
async def my_consents(
    request: Request[Any, Any, Any], state: State, done: FromQuery[str | None] = None
) -> Response[Any]:
    return await _my_consents_page(request, state, notice=done if done in CONSENT_NOTICES else None)


@post("/my/consents/{consent_id:str}/end", include_in_schema=False)
async def change_end_from_page(
    request: Request[Any, Any, Any], state: State, consent_id: FromPath[str]
) -> Response[Any]:
    """Shorten or extend a consent, within what the app declared (``longest_consent_days``)."""
    form = await checked_form(request, state)
    try:
        ends_on = date.fromisoformat(str(form.get("ends_on", ""))[:10])
    except ValueError:
        return await _my_consents_page(request, state, status_code=400, error=(consent_id, "date"))

    def work(session: Session, patient: Patient) -> str | None:
        consent = patient_consent(session, patient_id=patient.id, consent_id=consent_id)
        app = session.get(App, consent.client_id)
        assert app is not None
        try:
            change_consent_end(
                session, consent=consent, app=app, ends_on=ends_on, by=f"patient:{patient.id}", now=utcnow()
            )
        except ConsentEndRefused as exc:
            return exc.code  # nothing was changed
        return None

    def respond(refused: str | None) -> Response[Any] | Awaitable[Response[Any]]:
        if refused is None:
            return Redirect("/my/consents?done=end_changed", status_code=303)
        return _my_consents_page(request, state, status_code=400, error=(consent_id, refused))

    return await page_action(request, state, work, respond)


def _withdraw(session: Session, patient: Patient, consent_id: str, now: datetime) -> ConsentRecord:
    consent = patient_consent(session, patient_id=patient.id, consent_id=consent_id)
    return revoke_consent(
        session, consent=consent, by=f"patient:{patient.id}", reason="withdrawn by the patient", now=now
    )


@get("/my/consents/{consent_id:str}/revoke", include_in_schema=False)
async def revoke_confirmation(
    request: Request[Any, Any, Any], state: State, consent_id: FromPath[str]
) -> Response[Any]:
    """What withdrawing will do, before the patient confirms it (no JavaScript dialog)."""

    def work(session: Session, patient: Patient) -> dict[str, Any]:
        consent = patient_consent(session, patient_id=patient.id, consent_id=consent_id)
        app = session.get(App, consent.client_id)
        assert app is not None
        holders = {g["holder"] for g in consent.grants}
        names = session.scalars(select(Holder.legal_name).where(Holder.identifier.in_(holders))).all()
        rights = app.client_metadata.get("charter_manifest", {}).get("rights", {})
        return {
            "patient": patient,
            "consent": consent,
            "app": app,
            "active": consent.status == "active" and consent.expires_at > utcnow(),
            "holders": sorted(names),
            "erasure": link_target(rights.get("erasure")),
        }

    return await page_action(
        request, state, work, lambda context: render_page(request, "consent/revoke.html", **context)
    )


@post("/my/consents/{consent_id:str}/revoke", include_in_schema=False)
async def revoke_from_page(
    request: Request[Any, Any, Any], state: State, consent_id: FromPath[str]
) -> Response[Any]:
    await checked_form(request, state)
    return await page_action(
        request,
        state,
        lambda s, p: _withdraw(s, p, consent_id, utcnow()),
        see_other("/my/consents?done=revoked"),
    )


def _consent_json(consent: ConsentRecord, app: App, now: datetime) -> dict[str, Any]:
    return {
        "consent_id": consent.id,
        "client_id": app.client_id,
        "client_name": app.client_name,
        "status": consent.status if consent.expires_at > now else "expired",
        "grants": consent.grants,
        "granted_at": consent.granted_at.isoformat(),
        "expires_at": consent.expires_at.isoformat(),
        "revoked_at": consent.revoked_at.isoformat() if consent.revoked_at else None,
    }


async def api_action(
    request: Request[Any, Any, Any], state: State, work: Callable[[Session, Patient], Any]
) -> Response[Any]:
    """A patient API call: 401 problem details without a session; errors as problem details."""
    try:
        body = await as_patient(request, state, work)
    except LoginRequired:
        return Response(
            {
                "type": "about:blank",
                "title": "Log in first",
                "status": 401,
                "detail": "this API acts for the logged-in patient: log in at /login",
            },
            status_code=401,
            media_type="application/problem+json",
        )
    return Response(body, headers=NO_STORE)


@get("/api/me/consents", tags=["patient"], summary="The logged-in patient's consents")
async def api_my_consents(request: Request[Any, Any, Any], state: State) -> Response[Any]:
    def work(session: Session, patient: Patient) -> list[dict[str, Any]]:
        now = utcnow()
        return [_consent_json(c, a, now) for c, a in patient_consents(session, patient.id)]

    return await api_action(request, state, work)


@post(
    "/api/me/consents/{consent_id:str}/revoke",
    status_code=200,
    tags=["patient"],
    summary="Withdraw one of my consents (CSRF token in the X-CSRF-Token header)",
)
async def api_revoke(
    request: Request[Any, Any, Any], state: State, consent_id: FromPath[str]
) -> Response[Any]:
    check_csrf(request, state.settings, request.headers.get("x-csrf-token"))

    def work(session: Session, patient: Patient) -> dict[str, Any]:
        now = utcnow()
        consent = _withdraw(session, patient, consent_id, now)
        app = session.get(App, consent.client_id)
        assert app is not None
        return _consent_json(consent, app, now)

    return await api_action(request, state, work)


# -- my data sources: linking a holder, unlinking it -----------------------------------------


@get("/my/sources", include_in_schema=False)
async def my_sources(request: Request[Any, Any, Any], state: State) -> Response[Any]:
    def work(session: Session, patient: Patient) -> dict[str, Any]:
        linked = {holder.identifier: link for link, holder in active_links(session, patient.id)}
        holders = session.scalars(
            select(Holder).where(Holder.status == "approved").order_by(Holder.legal_name)
        ).all()
        return {
            "patient": patient,
            "sources": [{"holder": h, "link": linked.get(h.identifier)} for h in holders],
        }

    return await page_action(
        request, state, work, lambda context: render_page(request, "consent/my_sources.html", **context)
    )


@post("/my/sources/{holder_id:str}/link", include_in_schema=False)
async def link_source(
    request: Request[Any, Any, Any], state: State, holder_id: FromPath[str]
) -> Response[Any]:
    settings = state.settings
    await checked_form(request, state)

    def work(session: Session, patient: Patient) -> str:
        return start_link(
            session,
            patient_id=patient.id,
            holder_id=holder_id,
            issuer=settings.issuer,
            secret_key=settings.secret_key,
            now=utcnow(),
        )

    return await page_action(request, state, work, lambda location: Redirect(location, status_code=303))


@get("/my/sources/callback", include_in_schema=False)
async def link_callback(request: Request[Any, Any, Any], state: State) -> Response[Any]:
    settings = state.settings
    query = request.query_params

    def work(session: Session, patient: Patient) -> None:
        now = utcnow()
        finish_link(
            session,
            patient_id=patient.id,
            state=query.get("state"),
            link_token=query.get("link_token"),
            issuer=settings.issuer,
            secret_key=settings.secret_key,
            replay=DatabaseReplayCache(state.session_factory, now),
            now=now,
        )

    return await page_action(request, state, work, see_other("/my/sources"))


@post("/my/sources/{holder_id:str}/unlink", include_in_schema=False)
async def unlink_source(
    request: Request[Any, Any, Any], state: State, holder_id: FromPath[str]
) -> Response[Any]:
    await checked_form(request, state)
    return await page_action(
        request, state, lambda s, p: unlink(s, patient_id=p.id, holder_id=holder_id), see_other("/my/sources")
    )


consent_pages = Router(
    path="/",
    route_handlers=[
        authorize,
        consent_screen,
        consent_decision,
        my_consents,
        change_end_from_page,
        revoke_confirmation,
        revoke_from_page,
        my_sources,
        link_source,
        link_callback,
        unlink_source,
    ],
    # A refused CSRF token or a malformed form on these pages is a readable page, not JSON.
    exception_handlers=PAGE_EXCEPTION_HANDLERS,
    include_in_schema=False,
)
patient_api = [api_my_consents, api_revoke]
