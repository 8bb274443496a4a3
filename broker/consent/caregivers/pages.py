"""The caregiver pages: who helps me and whom I help (``/my/caregivers``), and a caregiver
acting for someone (``/helping/{delegation_id}``), always naming the person acted for.

Every form carries a CSRF token; every POST that succeeds answers 303. A refusal (beyond
the limits, after withdrawal, after the period) is a readable page, changes nothing, and is
written to the helped patient's history.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

from litestar import Request, Response, Router, get, post
from litestar.datastructures import State
from litestar.params import FromPath, FromQuery
from litestar.response import Redirect
from sqlalchemy.orm import Session

from broker.audit.history import TIMEZONE, format_when
from broker.catalog.models import App, Holder
from broker.consent.caregivers import service
from broker.consent.caregivers.models import GRANT, RIGHTS, Delegation
from broker.consent.caregivers.service import CaregiverRefused, Helped, InvalidInvitation
from broker.consent.models import ConsentRecord
from broker.consent.pages import _own_request, checked_form, decide, page_action, screen_context
from broker.consent.patients import PAGE_EXCEPTION_HANDLERS, render_page
from broker.consent.patients.models import Patient
from broker.consent.patients.rendering import page_language
from broker.consent.service import Grant, active_links, patient_consents
from broker.db import utcnow

T = TypeVar("T")
NOTICES = ("invited", "withdrawn", "accepted", "declined", "stopped", "revoked")
MAX_FIELD = 4096


async def caregiver_action(
    request: Request[Any, Any, Any],
    state: State,
    work: Callable[[Session, Patient], T],
    respond: Callable[[T], Response[Any]],
) -> Response[Any]:
    """A page for the logged-in account (``page_action``); a caregiver's refused act is undone,
    recorded, then shown as a readable page."""
    refused: list[CaregiverRefused] = []

    def guarded(session: Session, patient: Patient) -> T | None:
        try:
            with session.begin_nested():  # whatever the refused act began is rolled back
                return work(session, patient)
        except CaregiverRefused as exc:
            service.record_refusal(session, exc, utcnow())
            refused.append(exc)
            return None

    def answer(result: T | None) -> Response[Any]:
        if refused:
            return render_page(request, "caregivers/refused.html", status_code=403, refused=refused[0])
        return respond(result)  # type: ignore[arg-type]  # None only when refused

    return await page_action(request, state, guarded, answer)


def _when(request: Request[Any, Any, Any], delegation: Delegation) -> str:
    return format_when(service.last_day(delegation), page_language(request)).date


def _limits(
    request: Request[Any, Any, Any], state: State, session: Session, delegation: Delegation
) -> dict[str, str]:
    """The categories and holders a caregiver may grant, in words."""
    if delegation.rights != GRANT:
        return {"categories": "", "holders": ""}
    charter = state.charters.current(session)
    lang = page_language(request)
    labels = [
        charter.categories[c].label(lang) if c in charter.categories else c
        for c in delegation.categories or []
    ]
    names = []
    for holder_id in delegation.holders or []:
        holder = session.get(Holder, holder_id)
        names.append(holder.legal_name if holder is not None else holder_id)
    return {"categories": ", ".join(labels), "holders": ", ".join(names)}


def _invite_options(
    request: Request[Any, Any, Any], state: State, session: Session, patient: Patient
) -> dict[str, Any]:
    charter = state.charters.current(session)
    lang = page_language(request)
    holders = [holder for _link, holder in active_links(session, patient.id)]
    served = sorted({c for h in holders for c in h.categories if c in charter.categories})
    today = utcnow().astimezone(TIMEZONE).date()
    return {
        "holder_options": [{"value": h.identifier, "label": h.legal_name} for h in holders],
        "category_options": sorted(
            ({"value": c, "label": charter.categories[c].label(lang)} for c in served),
            key=lambda o: o["label"].casefold(),
        ),
        "today": today.isoformat(),
        "last_allowed": (today + timedelta(days=service.MAX_DAYS)).isoformat(),
        "default_end": (today + timedelta(days=30)).isoformat(),
    }


def _page_context(
    request: Request[Any, Any, Any], state: State, session: Session, patient: Patient
) -> dict[str, Any]:
    now = utcnow()
    helpers = []
    for delegation in service.helpers_of(session, patient.id, now):
        caregiver = session.get(Patient, delegation.caregiver_id) if delegation.caregiver_id else None
        helpers.append(
            {
                "delegation": delegation,
                "name": caregiver.display_name if caregiver else delegation.invitee_email,
                "email": delegation.invitee_email,
                "until": _when(request, delegation),
                **_limits(request, state, session, delegation),
            }
        )

    def described(rows: list[Helped]) -> list[dict[str, Any]]:
        return [
            {
                "delegation": row.delegation,
                "name": row.patient.display_name,
                "until": _when(request, row.delegation),
                **_limits(request, state, session, row.delegation),
            }
            for row in rows
        ]

    return {
        "patient": patient,
        "helpers": helpers,
        "invitations": described(service.invitations_for(session, patient, now)),
        "helping": described(service.people_helped(session, patient.id, now)),
        "rights": RIGHTS,
        **_invite_options(request, state, session, patient),
    }


def _caregivers_page(
    request: Request[Any, Any, Any], context: dict[str, Any], status_code: int = 200, **more: Any
) -> Response[str]:
    more.setdefault("errors", {})
    more.setdefault("values", {})
    return render_page(request, "caregivers/caregivers.html", status_code=status_code, **context, **more)


@get("/my/caregivers", include_in_schema=False)
async def caregivers_page(
    request: Request[Any, Any, Any], state: State, done: FromQuery[str | None] = None
) -> Response[Any]:
    return await caregiver_action(
        request,
        state,
        lambda session, patient: _page_context(request, state, session, patient),
        lambda context: _caregivers_page(request, context, notice=done if done in NOTICES else None),
    )


def _form_value(form: Any, name: str) -> str:
    value = form.get(name)
    return value[:MAX_FIELD] if isinstance(value, str) else ""


@post("/my/caregivers/invite", include_in_schema=False)
async def invite(request: Request[Any, Any, Any], state: State) -> Response[Any]:
    form = await checked_form(request, state)
    values = {name: _form_value(form, name) for name in ("email", "rights", "ends_on")}
    categories = [c for c in form.getall("categories", []) if isinstance(c, str)][:100]
    holders = [h for h in form.getall("holders", []) if isinstance(h, str)][:100]

    def work(session: Session, patient: Patient) -> dict[str, Any] | None:
        try:
            with session.begin_nested():
                service.invite(
                    session,
                    patient=patient,
                    email=values["email"],
                    rights=values["rights"],
                    categories=categories,
                    holders=holders,
                    ends_on=values["ends_on"],
                    now=utcnow(),
                )
        except InvalidInvitation as problem:
            context = _page_context(request, state, session, patient)
            context["errors"] = {problem.field: problem.code}
            return context
        return None

    def respond(context: dict[str, Any] | None) -> Response[Any]:
        if context is None:
            return Redirect("/my/caregivers?done=invited", status_code=303)
        errors = context.pop("errors")
        shown = {**values, "categories": categories, "holders": holders}
        return _caregivers_page(request, context, status_code=400, errors=errors, values=shown)

    return await caregiver_action(request, state, work, respond)


def _simple_post(path: str, act: Callable[[Session, Patient, str], Any], done: str) -> Any:
    """A one-button form on a delegation: CSRF, the act, back to the caregivers page."""

    @post(path, include_in_schema=False, name=f"caregivers-{done}")
    async def handler(
        request: Request[Any, Any, Any], state: State, delegation_id: FromPath[str]
    ) -> Response[Any]:
        await checked_form(request, state)
        return await caregiver_action(
            request,
            state,
            lambda session, patient: act(session, patient, delegation_id),
            lambda _result: Redirect(f"/my/caregivers?done={done}", status_code=303),
        )

    return handler


withdraw = _simple_post(
    "/my/caregivers/{delegation_id:str}/withdraw",
    lambda s, p, d: service.withdraw(s, patient_id=p.id, delegation_id=d, now=utcnow()),
    "withdrawn",
)
accept = _simple_post(
    "/my/caregivers/{delegation_id:str}/accept",
    lambda s, p, d: service.answer_invitation(s, caregiver=p, delegation_id=d, accept=True, now=utcnow()),
    "accepted",
)
decline = _simple_post(
    "/my/caregivers/{delegation_id:str}/decline",
    lambda s, p, d: service.answer_invitation(s, caregiver=p, delegation_id=d, accept=False, now=utcnow()),
    "declined",
)
stop = _simple_post(
    "/my/caregivers/{delegation_id:str}/stop",
    lambda s, p, d: service.stop_helping(s, caregiver=p, delegation_id=d, now=utcnow()),
    "stopped",
)


# -- acting for someone -------------------------------------------------------------------------


def _helping_context(
    request: Request[Any, Any, Any], state: State, session: Session, caregiver: Patient, delegation_id: str
) -> dict[str, Any]:
    now = utcnow()
    helped = service.acting_for(
        session, caregiver=caregiver, delegation_id=delegation_id, need="view", now=now
    )
    service.viewed(session, helped, caregiver, now)
    holders = {h.identifier: h.legal_name for _l, h in active_links(session, helped.patient.id)}
    charter = state.charters.current(session)
    return {
        "patient": caregiver,
        "helped": helped.patient,
        "delegation": helped.delegation,
        "until": _when(request, helped.delegation),
        **_limits(request, state, session, helped.delegation),
        "others": [
            row
            for row in service.people_helped(session, caregiver.id, now)
            if row.delegation.id != delegation_id
        ],
        "holder_names": holders,
        "category_names": {c: entry.label(page_language(request)) for c, entry in charter.categories.items()},
        "consents": [
            {"consent": c, "app": a, "active": c.status == "active" and c.expires_at > now}
            for c, a in patient_consents(session, helped.patient.id)
        ],
    }


@get("/helping/{delegation_id:str}", include_in_schema=False)
async def helping_page(
    request: Request[Any, Any, Any],
    state: State,
    delegation_id: FromPath[str],
    done: FromQuery[str | None] = None,
) -> Response[Any]:
    return await caregiver_action(
        request,
        state,
        lambda session, caregiver: _helping_context(request, state, session, caregiver, delegation_id),
        lambda context: render_page(
            request, "caregivers/helping.html", notice=done if done in NOTICES else None, **context
        ),
    )


@post("/helping/{delegation_id:str}/consents/{consent_id:str}/revoke", include_in_schema=False)
async def revoke_for(
    request: Request[Any, Any, Any], state: State, delegation_id: FromPath[str], consent_id: FromPath[str]
) -> Response[Any]:
    await checked_form(request, state)
    return await caregiver_action(
        request,
        state,
        lambda session, caregiver: service.revoke_for(
            session, caregiver=caregiver, delegation_id=delegation_id, consent_id=consent_id, now=utcnow()
        ),
        lambda _consent: Redirect(f"/helping/{delegation_id}?done=revoked", status_code=303),
    )


# -- consenting for someone, through an app's consent request ---------------------------------
#
# The caregiver opened an app's consent request (``/consent/{request_id}``) and chose to answer
# it for the person they help. The lines and sources offered are only those the person
# allowed; a form that names others is refused by ``service.grant_for`` and recorded.


@get("/helping/{delegation_id:str}/consent/{request_id:str}", include_in_schema=False)
async def consent_screen_for(
    request: Request[Any, Any, Any], state: State, delegation_id: FromPath[str], request_id: FromPath[str]
) -> Response[Any]:
    def work(session: Session, caregiver: Patient) -> dict[str, Any]:
        now = utcnow()
        helped = service.acting_for(
            session, caregiver=caregiver, delegation_id=delegation_id, need=GRANT, now=now
        )
        pending = _own_request(session, caregiver, request_id, now)
        context = screen_context(request, state, session, pending, helped.patient)
        categories, holders = set(helped.delegation.categories or []), set(helped.delegation.holders or [])
        context.update(
            patient=caregiver,
            acting_for=helped.patient,
            form_action=f"/helping/{delegation_id}/consent/{pending.id}",
            blocked=[c for c in context["choices"] if not c.optional and c.category not in categories],
            choices=[c for c in context["choices"] if c.category in categories],
            holders=[h for h in context["holders"] if h.identifier in holders],
        )
        return context

    return await caregiver_action(
        request, state, work, lambda context: render_page(request, "consent/authorize.html", **context)
    )


@post("/helping/{delegation_id:str}/consent/{request_id:str}", include_in_schema=False)
async def consent_decision_for(
    request: Request[Any, Any, Any], state: State, delegation_id: FromPath[str], request_id: FromPath[str]
) -> Response[Any]:
    """The caregiver's answer for the person helped; it goes back to the app as theirs would."""
    form = await checked_form(request, state)

    def work(session: Session, caregiver: Patient) -> str:
        now = utcnow()
        helped = service.acting_for(
            session, caregiver=caregiver, delegation_id=delegation_id, need=GRANT, now=now
        )
        pending = _own_request(session, caregiver, request_id, now)

        def record(app: App, grants: list[Grant], days: int, charter_version: str) -> ConsentRecord:
            return service.grant_for(
                session,
                caregiver=caregiver,
                delegation_id=delegation_id,
                app=app,
                grants=grants,
                days=days,
                charter_version=charter_version,
                now=now,
            )

        return decide(state, session, form, pending, helped.patient, record, now)

    return await caregiver_action(request, state, work, lambda location: Redirect(location, status_code=303))


caregiver_pages = Router(
    path="/",
    route_handlers=[
        caregivers_page,
        invite,
        withdraw,
        accept,
        decline,
        stop,
        helping_page,
        revoke_for,
        consent_screen_for,
        consent_decision_for,
    ],
    exception_handlers=PAGE_EXCEPTION_HANDLERS,
    include_in_schema=False,
)

__all__ = ["caregiver_pages"]
