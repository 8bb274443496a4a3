"""The patient's pages of the audit log: the history (``/my/history``) and the signed
receipts of their consents (``/my/consents/{id}/receipt.jwt`` and its other forms).

Everything here acts for the logged-in patient only; another patient's consent id is "not
found", the same answer as an id that never existed.
"""

from __future__ import annotations

import json
from typing import Any

from litestar import Request, Response, Router, get
from litestar.datastructures import State
from litestar.params import FromPath
from sqlalchemy.orm import Session

from broker.audit.consent_receipts import (
    CONSENT_RECEIPT_TYP,
    consent_receipt_claims,
    fhir_consent,
    parse_document,
)
from broker.audit.history import history_context
from broker.audit.indicators import indicators_context
from broker.consent.pages import page_action
from broker.consent.patients import PAGE_EXCEPTION_HANDLERS, render_page
from broker.consent.patients.models import Patient
from broker.consent.patients.rendering import page_language
from broker.http import NO_STORE, in_transaction


@get("/my/consents/{consent_id:str}/{document:str}", include_in_schema=False)
async def consent_receipt(
    request: Request[Any, Any, Any], state: State, consent_id: FromPath[str], document: FromPath[str]
) -> Response[Any]:
    """A receipt of one of my consents (``receipt.*``) or of its withdrawal (``withdrawal.*``),
    as a JWS (``.jwt``), a Kantara Consent Receipt (``.kantara.json``) or a FHIR Consent
    (``.fhir.json``)."""
    settings = state.settings
    keystore = state.keystore

    def work(session: Session, patient: Patient) -> tuple[str, str, str]:
        wanted = parse_document(document)
        claims = consent_receipt_claims(
            session,
            patient_id=patient.id,
            consent_id=consent_id,
            kind=wanted.kind,
            issuer=settings.issuer,
            charter=state.charters.current(session),
        )
        if wanted.format == "jwt":
            body = keystore.sign(claims, typ=CONSENT_RECEIPT_TYP)
        elif wanted.format == "kantara.json":
            body = json.dumps(claims, ensure_ascii=False, indent=2)
        else:
            body = json.dumps(fhir_consent(claims), ensure_ascii=False, indent=2)
        return body, wanted.media_type, wanted.filename(consent_id)

    def respond(result: tuple[str, str, str]) -> Response[Any]:
        body, media_type, filename = result
        return Response(
            body,
            media_type=media_type,
            headers={**NO_STORE, "Content-Disposition": f'attachment; filename="{filename}"'},
        )

    return await page_action(request, state, work, respond)


@get("/my/history", include_in_schema=False)
async def my_history(request: Request[Any, Any, Any], state: State) -> Response[Any]:
    """What happened with my data, in plain words, newest first (charter art. 08)."""
    language = page_language(request)
    query = request.query_params

    def work(session: Session, patient: Patient) -> dict[str, Any]:
        return history_context(
            session,
            patient_id=patient.id,
            charter=state.charters.current(session),
            language=language,
            app=query.get("app"),
            holder=query.get("holder"),
            category=query.get("category"),
            technical=query.get("details") == "1",
            cursor=query.get("cursor"),
        ) | {"patient": patient}

    return await page_action(
        request, state, work, lambda context: render_page(request, "audit/history.html", **context)
    )


@get("/indicators", include_in_schema=False)
async def indicators_page(request: Request[Any, Any, Any], state: State) -> Response[Any]:
    """Public aggregate figures (charter art. 08): anyone may see whether the broker is used
    and how, without any count pointing at fewer than ten people."""
    language = page_language(request)

    def work(session: Session) -> dict[str, Any]:
        return indicators_context(session, state.charters.current(session), language)

    context = await in_transaction(state.session_factory, work)
    return render_page(request, "audit/indicators.html", **context)


audit_pages = Router(
    path="/",
    route_handlers=[my_history, consent_receipt, indicators_page],
    exception_handlers=PAGE_EXCEPTION_HANDLERS,
    include_in_schema=False,
)
