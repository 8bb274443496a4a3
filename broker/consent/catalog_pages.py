"""The catalog as patients see it: ``/catalog`` (browse and search) and ``/catalog/{client_id}``
(an app's page). Server-rendered, no JavaScript; open to anyone, logged in or not.

These pages live beside the consent pages rather than in ``broker/catalog`` because they read
the visitor's session and linked sources, and the catalog domain imports nothing from consent
(STYLE.md, convention 12). The search itself is the catalog's (``search_catalog``,
``app_facts``); this module only turns patients' words into its filters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from litestar import Request, Response, Router, get
from litestar.datastructures import State
from litestar.params import FromPath
from sqlalchemy.orm import Session

from broker.audit.indicators import public_indicators
from broker.catalog import repository, service
from broker.catalog.schemas import fold
from broker.charter import Charter
from broker.consent.patients import PAGE_EXCEPTION_HANDLERS, patient_from_request, render_page
from broker.consent.patients.rendering import page_language
from broker.consent.service import active_links
from broker.errors import BrokerError, NotFound
from broker.federation.repository import origins
from broker.http import in_transaction

PAGE_SIZE = 20
# Needs found through the charter's purposes are listed whole, up to this many apps.
NEED_LIMIT = 100


def N_(message: str) -> str:
    """Marks ``message`` for the message catalogs; pages translate it when they show it."""
    return message


@dataclass(frozen=True)
class Funding:
    """A way of paying for an app, in the words patients use, and the business models it means.

    ``label`` is a French message id, translated by the page (``_()`` in the template)."""

    id: str
    label: str
    models: tuple[str, ...]


# MANIFEST.md's business models, grouped as patients ask about them. The ids here are the
# page's own (the form's values); the models they stand for are the manifest's ids.
FUNDINGS = (
    Funding("public", N_("Gratuit, service public"), ("public_service",)),
    Funding(
        "no-ads",
        N_("Sans publicité"),
        (
            "subscription",
            "one_off_payment",
            "freemium",
            "public_service",
            "insurer_funded",
            "employer_funded",
            "pharma_funded",
        ),
    ),
    Funding("subscription", N_("Payant par abonnement"), ("subscription",)),
    Funding("one-off", N_("Payant une seule fois"), ("one_off_payment",)),
    Funding("freemium", N_("Gratuit avec options payantes"), ("freemium",)),
    Funding("insurer", N_("Payé par une assurance ou une mutuelle"), ("insurer_funded",)),
    Funding("employer", N_("Payé par un employeur"), ("employer_funded",)),
    Funding("pharma", N_("Payé par un laboratoire pharmaceutique"), ("pharma_funded",)),
    Funding(
        "ads",
        N_("Avec publicité (jamais choisie d'après vos données de santé)"),
        ("advertising_without_health_data",),
    ),
)
FUNDING_BY_ID = {f.id: f for f in FUNDINGS}

# Small words that say nothing of a need ("suivre MON diabète"): left out of the search.
STOP_WORDS = frozenset(
    "a au aux avec ce ces d de des du en et je la le les l ma me mes mon mieux moi ne nos notre "
    "on ou par pour qu que qui sa se ses son sur ta te tes ton un une vos votre "
    "an and for i in is it me my of on or the to with your".split()
)


def need_words(text: str) -> list[str]:
    return [w for w in re.split(r"[^\w]+", fold(text)) if w and w not in STOP_WORDS]


def purposes_for(words: list[str], charter: Charter) -> list[str]:
    """The purposes whose label or description names the most of ``words`` (prefix match).

    "suivre mon diabète" finds the chronic-disease follow-up: its description mentions diabetes,
    while no app needs to say the word itself.
    """
    scores: dict[str, int] = {}
    for pid, purpose in charter.purposes.items():
        text = " ".join(
            [purpose.label("fr"), purpose.label("en"), purpose.description("fr"), purpose.description("en")]
        )
        vocabulary = set(re.split(r"[^\w]+", fold(text)))
        score = sum(1 for w in words if len(w) >= 3 and any(v.startswith(w) for v in vocabulary))
        if score:
            scores[pid] = score
    if not scores:
        return []
    best = max(scores.values())
    return [pid for pid, score in scores.items() if score == best]


def _one(query: Any, name: str) -> str | None:
    value = query.get(name)
    return str(value).strip() or None if value is not None else None


def catalog_context(
    session: Session, request: Request[Any, Any, Any], state: State, language: str
) -> dict[str, Any]:
    query = request.query_params
    settings = state.settings
    charter = state.charters.current(session)
    patient = patient_from_request(session, request, settings)
    linked = {h.identifier for _link, h in active_links(session, patient.id)} if patient else set()
    holders = list(repository.list_holders(session, "approved"))

    q = _one(query, "q")
    need = _one(query, "need")
    category = _one(query, "category")
    funding_id = _one(query, "funding")
    holder = _one(query, "holder")
    cursor = _one(query, "cursor")
    # Unknown values (an old link, a hand-edited address) are dropped, not an error page.
    need = need if need in charter.purposes else None
    category = category if category in charter.categories else None
    funding = FUNDING_BY_ID.get(funding_id or "")
    holder = holder if holder in {h.identifier for h in holders} else None
    if q is not None:
        q = q[:200]

    filters: dict[str, Any] = {
        "charter": charter,
        "policy_mode": settings.policy_mode,
        "categories": [category] if category else None,
        "purpose": need,
        "business_models": list(funding.models) if funding else None,
        "holder": holder,
    }
    words = need_words(q) if q else []
    found_by_need: list[str] = []
    try:
        page = service.search_catalog(
            session, q=" ".join(words) or None, cursor=cursor, limit=PAGE_SIZE, **filters
        )
    except BrokerError:
        page = service.search_catalog(session, q=" ".join(words) or None, limit=PAGE_SIZE, **filters)
    if words and not page["items"] and not cursor and not need:
        # No app says these words: look for the need they describe among the charter's purposes.
        found_by_need = purposes_for(words, charter)
        seen: dict[str, dict[str, Any]] = {}
        for pid in found_by_need:
            for item in service.search_catalog(session, limit=NEED_LIMIT, **(filters | {"purpose": pid}))[
                "items"
            ]:
                seen[item["client_id"]] = item
        apps = sorted(seen.values(), key=lambda a: (fold(a["client_name"]), a["client_id"]))
        page = {"items": apps, "next_cursor": None}

    results = []
    registered_at = origins(session, [item["client_id"] for item in page["items"]])
    for item in page["items"]:
        feeding = repository.holders_serving(session, item["categories"])
        results.append(
            {
                **item,
                "funding_label": charter.business_models[item["business_model"]["id"]].label(language)
                if item["business_model"]["id"] in charter.business_models
                else item["business_model"]["id"],
                "purpose_labels": [p["label"][language] for p in item["purposes"]],
                "category_labels": [
                    charter.categories[c].label(language)
                    for c in item["categories"]
                    if c in charter.categories
                ],
                "holders": [{"name": h.legal_name, "linked": h.identifier in linked} for h in feeding],
                "origin": origin_label(registered_at.get(item["client_id"])),
            }
        )
    kept = {"q": q, "need": need, "category": category, "funding": funding.id if funding else None}
    kept["holder"] = holder
    next_query = {k: v for k, v in kept.items() if v}
    if page["next_cursor"]:
        next_query["cursor"] = page["next_cursor"]
    return {
        "patient": patient,
        "apps": results,
        "selected": kept,
        "filtered": any(kept.values()),
        "next_query": next_query if page["next_cursor"] else None,
        "needs": [(pid, p.label(language)) for pid, p in charter.purposes.items() if p.user_facing],
        "found_by_need": [charter.purposes[pid].label(language) for pid in found_by_need],
        "category_groups": [
            (
                group.label(language),
                [(cid, c.label(language)) for cid, c in charter.categories.items() if c.group == gid],
            )
            for gid, group in charter.typology_groups.items()
        ],
        "fundings": [(f.id, f.label) for f in FUNDINGS],
        "holders": [
            {"id": h.identifier, "name": h.legal_name, "linked": h.identifier in linked} for h in holders
        ],
    }


@get("/catalog", include_in_schema=False)
async def catalog_page(request: Request[Any, Any, Any], state: State) -> Response[Any]:
    """Approved apps in alphabetical order, filtered by need, data, funding and source."""
    language = page_language(request)
    context = await in_transaction(
        state.session_factory, lambda session: catalog_context(session, request, state, language)
    )
    return render_page(request, "catalog/catalog.html", **context)


def _articles(facts: dict[str, Any], charter: Charter, language: str) -> list[dict[str, Any]]:
    """Every article of the charter, with what the verdict found about it (often nothing)."""
    verdict = facts.get("verdict") or {}
    findings: dict[str, list[dict[str, Any]]] = {}
    for finding in verdict.get("findings", []):
        # The plain-language message meant for patients; the developer's one if there is none.
        message = finding.get("patient_message") or finding.get("message") or {}
        text = message.get(language) or message.get("fr") or ""
        findings.setdefault(str(finding.get("article")), []).append(
            {"text": text, "refused": finding.get("severity") == "refuse"}
        )
    return [
        {"id": aid, "title": article.title(language), "findings": findings.get(aid, [])}
        for aid, article in charter.articles.items()
    ]


def origin_label(entity_id: str | None) -> str | None:
    """The partner broker an imported app was registered at, by its host name (issue 8)."""
    if entity_id is None:
        return None
    return urlsplit(entity_id).netloc or entity_id


def link_target(value: Any) -> str | None:
    """``value`` if it is safe as a link (web or mail address), else ``None``: an app's text
    such as ``javascript:…`` is shown as text, never as a link (SECURITY W9)."""
    if not isinstance(value, str):
        return None
    scheme = urlsplit(value.strip()).scheme.lower()
    return value.strip() if scheme in ("https", "http", "mailto") else None


RIGHTS = ("access", "rectification", "erasure", "portability")


def _usage(indicators: dict[str, Any], client_id: str) -> dict[str, Any]:
    granted = indicators["consents_granted_per_app"]
    revoked = indicators["consents_revoked_per_app"]
    return {
        "granted": granted["values"].get(client_id),
        "revoked": revoked["values"].get(client_id),
        "suppressed": client_id not in granted["values"] or client_id in granted["suppressed"],
        "small_cell": indicators["small_cell"],
    }


def app_context(
    session: Session, request: Request[Any, Any, Any], state: State, client_id: str, language: str
) -> dict[str, Any]:
    settings = state.settings
    charter = state.charters.current(session)
    facts = service.app_facts(session, client_id=client_id, charter=charter, policy_mode=settings.policy_mode)
    patient = patient_from_request(session, request, settings)
    linked = {h.identifier for _link, h in active_links(session, patient.id)} if patient else set()
    model = charter.business_models.get(facts["business_model"]["id"])
    hosting = facts.get("hosting") or {}
    certification = charter.health_data_certifications.get(str(hosting.get("health_data_certification")))
    return {
        "patient": patient,
        "app": facts,
        "funding_label": model.label(language) if model else facts["business_model"]["id"],
        "funding_explained": model.description(language) if model else "",
        "purposes": [
            {"label": p["label"][language], "description": p.get("description") or ""}
            for p in facts["purposes"]
        ],
        "requests": [
            {
                "label": r["label"][language],
                "optional": bool(r.get("optional")),
                "sensitive": charter.categories[r["category"]].sensitive
                if r["category"] in charter.categories
                else False,
                "justification": r.get("justification") or "",
                "purpose": charter.purposes[r["purpose"]].label(language)
                if r.get("purpose") in charter.purposes
                else "",
            }
            for r in facts["data_requests"]
        ],
        "articles": _articles(facts, charter, language),
        "verdict_status": (facts.get("verdict") or {}).get("status"),
        "hosting": hosting,
        "certification": certification.label(language) if certification else None,
        "rights": [
            {"id": key, "text": str(value), "href": link_target(value)}
            for key, value in sorted(
                (facts.get("rights") or {}).items(),
                key=lambda kv: RIGHTS.index(kv[0]) if kv[0] in RIGHTS else len(RIGHTS),
            )
            if value
        ],
        "connect_href": link_target(facts.get("client_uri")),
        "policy_href": link_target(facts.get("policy_uri")),
        "holders": [{"name": h["legal_name"], "linked": h["identifier"] in linked} for h in facts["holders"]],
        "usage": _usage(public_indicators(session), client_id),
        "origin": origin_label(origins(session, [client_id]).get(client_id)),
    }


@get("/catalog/{client_id:str}", include_in_schema=False)
async def app_page(request: Request[Any, Any, Any], state: State, client_id: FromPath[str]) -> Response[Any]:
    """Who makes the app, how it is paid for, the charter's verdict, the data it asks and why."""
    language = page_language(request)
    try:
        context = await in_transaction(
            state.session_factory, lambda session: app_context(session, request, state, client_id, language)
        )
    except NotFound:
        return render_page(request, "catalog/not_found.html", status_code=404)
    return render_page(request, "catalog/app.html", **context)


catalog_pages = Router(
    path="/",
    route_handlers=[catalog_page, app_page],
    exception_handlers=PAGE_EXCEPTION_HANDLERS,
    include_in_schema=False,
)
