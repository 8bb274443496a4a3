"""The patient's page «Télécharger mes données» (issue 10): choose, then hand over to holders.

``GET /my/download`` lists the linked holders that offer a download and the kinds of data
each serves. ``POST /my/download`` records one download consent per chosen holder and
answers a page with one form per holder: the patient submits it, and the browser posts the
one-time token (in the body, never in a URL) to the holder, which answers with the file. With
JavaScript (``/static/download.js``, a static file under the strict CSP), the page can fetch
every file itself and assemble one archive; its CSP then allows ``connect-src`` to exactly
these holders' origins.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from litestar import Request, Response, Router, get, post
from litestar.datastructures import State
from sqlalchemy.orm import Session

from broker.audit.history import format_when
from broker.catalog.models import Holder
from broker.consent.download import (
    DOWNLOAD_TOKEN_LIFETIME,
    Handover,
    downloadable,
    issue_downloads,
    parse_choice,
    recent_downloads,
)
from broker.consent.pages import checked_form, page_action
from broker.consent.patients import PAGE_EXCEPTION_HANDLERS, render_page
from broker.consent.patients.models import Patient
from broker.consent.patients.rendering import page_language
from broker.db import utcnow


def _category_label(state: State, session: Session, category: str, lang: str) -> str:
    found = state.charters.current(session).categories.get(category)
    return found.label(lang) if found is not None else category


@get("/my/download", include_in_schema=False)
async def download_page(request: Request[Any, Any, Any], state: State) -> Response[Any]:
    lang = page_language(request)

    def work(session: Session, patient: Patient) -> dict[str, Any]:
        now = utcnow()
        past = []
        for consent in recent_downloads(session, patient.id):
            holder = session.get(Holder, consent.holder_id)
            status = consent.status if consent.status == "used" or consent.expires_at > now else "expired"
            past.append(
                {
                    "holder": holder.legal_name if holder is not None else consent.holder_id,
                    "categories": ", ".join(
                        _category_label(state, session, c, lang) for c in consent.categories
                    ),
                    "when": format_when(consent.granted_at, lang, now),
                    "status": status,
                }
            )
        return {
            "past": past,
            "patient": patient,
            "sources": [
                {
                    "holder": h,
                    "categories": [(c, _category_label(state, session, c, lang)) for c in h.categories],
                }
                for h in downloadable(session, patient.id)
            ],
        }

    return await page_action(
        request, state, work, lambda context: render_page(request, "consent/download.html", **context)
    )


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


@post("/my/download", include_in_schema=False)
async def start_download(request: Request[Any, Any, Any], state: State) -> Response[Any]:
    form = await checked_form(request, state)
    lang = page_language(request)

    def work(session: Session, patient: Patient) -> dict[str, Any]:
        chosen = parse_choice(form.getall("item", []), downloadable(session, patient.id))
        handovers = issue_downloads(
            session,
            patient_id=patient.id,
            chosen=chosen,
            file_format=str(form.get("format", "")),
            settings=state.settings,
            keystore=state.keystore,
            now=utcnow(),
        )
        labels_of = {
            h.holder_id: ", ".join(_category_label(state, session, c, lang) for c in h.categories)
            for h in handovers
        }
        return {"patient": patient, "handovers": handovers, "labels_of": labels_of}

    def respond(context: dict[str, Any]) -> Response[Any]:
        handovers: list[Handover] = context["handovers"]
        response = render_page(
            request, "consent/download_go.html", lifetime=DOWNLOAD_TOKEN_LIFETIME // 60, **context
        )
        # The script may fetch from these holders only (and the form posts to them).
        origins = " ".join(sorted({_origin(h.endpoint) for h in handovers}))
        policy = response.headers["Content-Security-Policy"]
        response.headers["Content-Security-Policy"] = f"{policy}; connect-src 'self' {origins}"
        return response

    return await page_action(request, state, work, respond)


download_pages = Router(
    path="/",
    route_handlers=[download_page, start_download],
    exception_handlers=PAGE_EXCEPTION_HANDLERS,
    include_in_schema=False,
)
