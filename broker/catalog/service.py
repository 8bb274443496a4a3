"""The registry's services: apps (RFC 7591 / 7592), holders, and the public catalog.

Services take a session and plain values and return plain values; they never commit (the
route's unit of work does, once). Every change they make is checked first, so that a refused
request leaves the database as it was.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from broker import strictjson
from broker.audit.log import append_event
from broker.audit.tags import EventTag
from broker.catalog import repository
from broker.catalog.models import (
    App,
    AppCategory,
    AppPurpose,
    AppSearchTerm,
    CharterVerdict,
    Holder,
    HolderCategory,
)
from broker.catalog.schemas import (
    ClientRegistration,
    fold,
    validate_client_registration,
    validate_holder,
)
from broker.charter import MALFORMED_RULES, Charter, Verdict, evaluate, manifest_digest
from broker.errors import Conflict, InvalidClientMetadata, InvalidRequest, InvalidToken, NotFound
from broker.opaque import new_secret, secret_digest, secret_matches

REGISTRATION_TOKEN_PREFIX = "hcb_reg"  # noqa: S105 (a prefix, not a secret)
# Statuses whose apps reach patients, per policy mode (issue 3: `gate` lists approved apps
# only; `label` lists every registered app with its verdict as a label).
LISTED = {
    "gate": ("approved",),
    "label": ("approved", "needs_review", "refused", "pending", "suspended"),
}


# -- apps: RFC 7591 registration, RFC 7592 management --------------------------------------


@dataclass(frozen=True)
class Registered:
    app: App
    registration_access_token: str | None


def search_terms(folded: str) -> list[str]:
    """The distinct words of a folded text, as the search index keeps them."""
    return sorted({w[:64] for w in re.split(r"[^\w]+", folded) if w})


def _search_text(reg: ClientRegistration, charter: Charter) -> str:
    manifest = reg.metadata["charter_manifest"]
    parts = [reg.client_name, reg.publisher_name]
    parts += [p.get("description", "") for p in manifest["purposes"]]
    for pid in reg.purposes:
        purpose = charter.purposes[pid]
        parts += [purpose.label("fr"), purpose.label("en")]
    for category in reg.categories:
        parts += [charter.categories[category].label("fr"), charter.categories[category].label("en")]
    return fold(" ".join(parts))


def apply_verdict(
    session: Session,
    app: App,
    verdict: Verdict,
    digest: str,
    now: datetime,
    decided_by: str = "engine",
    reason: str | None = None,
    status: str | None = None,
) -> None:
    """Record a verdict on ``app``: its current one, and a row in the history.

    An operator's decision (``status`` given) keeps the engine's findings beside it as
    ``reviewed_findings``, so later re-checks know which questions it settled.
    """
    body = verdict_json(verdict, digest, now)
    if decided_by != "engine":
        body.update(
            status=status or verdict.status,
            decided_by=decided_by,
            reason=reason,
            reviewed_findings=body["findings"],
        )
    app.verdict = body
    session.add(
        CharterVerdict(
            client_id=app.client_id,
            status=body["status"],
            charter_version=verdict.charter_version,
            manifest_sha256=digest,
            checked_at=now,
            findings=body["findings"],
            decided_by=decided_by,
            reason=reason,
        )
    )


def log_app_event(
    session: Session,
    tag: EventTag,
    app: App,
    actor: str,
    now: datetime,
    **extra: Any,
) -> None:
    """An app's event in the audit log: public facts (no patient), its status and verdict."""
    details: dict[str, Any] = {"app": app.client_id, "name": app.client_name, "status": app.status}
    if app.verdict is not None:
        details["charter_version"] = app.verdict.get("charter_version")
        details["articles"] = sorted({f["article"] for f in app.verdict.get("findings", [])})
    details["manifest_sha256"] = app.manifest_sha256
    details.update(extra)
    append_event(session, tag=tag, patient_id=None, actor=actor, details=details, at=now)


def verdict_json(verdict: Verdict, digest: str, now: datetime) -> dict[str, Any]:
    body = verdict.to_json()
    body["checked_at"] = now.isoformat().replace("+00:00", "Z")
    body["manifest_sha256"] = digest
    return body


def _fill(app: App, reg: ClientRegistration, charter: Charter) -> None:
    app.client_name = reg.client_name
    app.name_key = fold(reg.client_name)
    app.publisher_name = reg.publisher_name
    app.client_metadata = reg.metadata
    app.business_model = reg.business_model
    app.data_leaves_eu = reg.data_leaves_eu
    app.search_text = _search_text(reg, charter)
    app.token_endpoint_auth_method = reg.token_endpoint_auth_method
    app.category_rows = [AppCategory(category=c) for c in reg.categories]
    app.term_rows = [AppSearchTerm(term=t) for t in search_terms(app.search_text)]
    app.purpose_rows = [AppPurpose(purpose=p) for p in reg.purposes]


def _check_name_free(session: Session, name_key: str, client_id: str | None) -> None:
    other = repository.app_by_name_key(session, name_key)
    if other is not None and other.client_id != client_id:
        raise InvalidClientMetadata(
            "client_name: an app with this name is already registered; to change an app, "
            "update it at its registration_client_uri (RFC 7592) instead of registering it again",
            field="client_name",
        )


def _flush_guarding_name(session: Session) -> None:
    try:
        session.flush()
    except IntegrityError:
        # Two registrations of one name raced past the check above: the unique index decides.
        raise InvalidClientMetadata(
            "client_name: an app with this name is already registered", field="client_name"
        ) from None


def _checked(metadata: dict[str, Any], charter: Charter, dev_mode: bool) -> Verdict:
    """The charter's verdict; a manifest the charter finds malformed is a 400, not a verdict.

    The schema checks types, URIs and vocabularies; the charter's own ``manifest.*`` rules
    are the authority on which members a manifest must have, so both agree by construction.
    """
    verdict = evaluate(metadata, charter, allow_loopback_http=dev_mode)
    if verdict.malformed:
        problems = [f for f in verdict.findings if f.rule in MALFORMED_RULES]
        raise InvalidClientMetadata(
            "; ".join(f"{f.field}: {f.message.en}" for f in problems), field=problems[0].field
        )
    return verdict


def register_app(
    session: Session,
    *,
    body: Any,
    charter: Charter,
    secret_key: bytes,
    dev_mode: bool,
    now: datetime,
) -> Registered:
    """RFC 7591 §3: validate, check against the charter, store; the answer carries the verdict."""
    reg = validate_client_registration(body, charter, dev_mode=dev_mode)
    _check_name_free(session, fold(reg.client_name), None)
    verdict = _checked(reg.metadata, charter, dev_mode)
    digest = manifest_digest(reg.metadata)
    token = new_secret(REGISTRATION_TOKEN_PREFIX)
    app = App(
        client_id="app_" + secrets.token_urlsafe(12),
        manifest_sha256=digest,
        status=verdict.status,
        registration_token_hash=secret_digest(secret_key, token),
        created_at=now,
        updated_at=now,
    )
    _fill(app, reg, charter)
    session.add(app)
    _flush_guarding_name(session)
    apply_verdict(session, app, verdict, digest, now)
    log_app_event(session, EventTag.APP_REGISTERED, app, f"app:{app.client_id}", now)
    return Registered(app, token)


def authenticate_registration(
    session: Session, *, client_id: str, token: str | None, secret_key: bytes
) -> App:
    """RFC 7592 §3: the registration access token, or 401 for any mismatch.

    An unknown client_id gets the same answer as a wrong token, so that the endpoint does not
    tell whether an app exists.
    """
    app = repository.get_app(session, client_id)
    if (
        app is None
        or token is None
        or app.status == "deleted"
        or not secret_matches(secret_key, token, app.registration_token_hash)
    ):
        raise InvalidToken("the registration access token is missing, wrong or revoked")
    return app


def update_app(
    session: Session,
    *,
    app: App,
    body: Any,
    charter: Charter,
    secret_key: bytes,
    dev_mode: bool,
    now: datetime,
) -> Registered:
    """RFC 7592 §2.2: replace the metadata; re-run the charter; rotate the access token."""
    if not isinstance(body, dict):
        raise InvalidClientMetadata("request body: must be a JSON object")
    body = dict(body)
    if body.pop("client_id", None) != app.client_id:
        raise InvalidClientMetadata(
            "client_id: must be present and equal to the app's client_id (RFC 7592 §2.2)",
            field="client_id",
        )
    reg = validate_client_registration(body, charter, dev_mode=dev_mode)
    _check_name_free(session, fold(reg.client_name), app.client_id)
    verdict = _checked(reg.metadata, charter, dev_mode)
    digest = manifest_digest(reg.metadata)
    token = new_secret(REGISTRATION_TOKEN_PREFIX)
    _fill(app, reg, charter)
    app.manifest_sha256 = digest
    app.status = verdict.status
    app.updated_at = now
    # Rotation: the token used for this update is revoked by this very change.
    app.registration_token_hash = secret_digest(secret_key, token)
    _flush_guarding_name(session)
    apply_verdict(session, app, verdict, digest, now)
    log_app_event(session, EventTag.APP_UPDATED, app, f"app:{app.client_id}", now)
    return Registered(app, token)


def import_app(
    session: Session,
    *,
    client_id: str,
    body: Any,
    charter: Charter,
    dev_mode: bool,
    now: datetime,
    actor: str,
    app: App | None = None,
) -> App:
    """An app registered at a peer broker, put in (or refreshed in) this catalog.

    The metadata (as the peer's signed statement gives it, without people's contacts) is
    validated and checked against *this* broker's charter: the app's status here is this
    broker's own verdict. No registration access token: the app is managed at its origin, and
    RFC 7592 calls here answer as for an unknown token.
    """
    reg = validate_client_registration(body, charter, dev_mode=dev_mode)
    digest = manifest_digest(reg.metadata)
    _check_name_free(session, fold(reg.client_name), client_id)
    verdict = _checked(reg.metadata, charter, dev_mode)
    previous = None if app is None else app.status
    if app is None:
        app = App(client_id=client_id, registration_token_hash=None, created_at=now)
        session.add(app)
    _fill(app, reg, charter)
    app.manifest_sha256 = digest
    app.status = verdict.status
    app.updated_at = now
    _flush_guarding_name(session)
    apply_verdict(session, app, verdict, digest, now)
    tag = EventTag.APP_REGISTERED if previous is None else EventTag.APP_UPDATED
    if previous == "suspended" and app.status == "approved":
        tag = EventTag.APP_RESTORED
    log_app_event(session, tag, app, actor, now)
    return app


def delete_app(session: Session, *, app: App, now: datetime) -> None:
    """RFC 7592 §2.3: the app is deregistered; its row stays, marked, for the record."""
    app.status = "deleted"
    app.name_key = None
    app.registration_token_hash = None
    app.updated_at = now
    log_app_event(session, EventTag.APP_DELETED, app, f"app:{app.client_id}", now)


def registration_response(app: App, issuer: str, token: str | None) -> dict[str, Any]:
    """RFC 7591 §3.2.1 / RFC 7592 §3: metadata, the broker-assigned fields and the verdict."""
    body = dict(app.client_metadata)
    body["client_id"] = app.client_id
    body["client_id_issued_at"] = int(app.created_at.timestamp())
    body["registration_client_uri"] = f"{issuer}/register/{app.client_id}"
    if token is not None:
        body["registration_access_token"] = token
    body["charter_verdict"] = app.verdict
    body["status"] = app.status
    return body


# -- holders ------------------------------------------------------------------------------


def add_holder(session: Session, *, body: Any, charter: Charter, dev_mode: bool, now: datetime) -> Holder:
    decl = validate_holder(body, charter, dev_mode=dev_mode)
    if repository.get_holder(session, decl.identifier) is not None:
        raise Conflict(f"identifier: a holder {decl.identifier!r} is already registered", field="identifier")
    holder = Holder(
        identifier=decl.identifier,
        legal_name=decl.legal_name,
        base_url=decl.base_url,
        categories=list(decl.categories),
        release_step_categories=list(decl.release_step_categories),
        jwks=decl.jwks,
        jwks_uri=decl.jwks_uri,
        link_endpoint=decl.link_endpoint,
        download_endpoint=decl.download_endpoint,
        status="pending",
        created_at=now,
        category_rows=[HolderCategory(category=c) for c in decl.categories],
    )
    session.add(holder)
    session.flush()
    append_event(
        session,
        tag=EventTag.HOLDER_REGISTERED,
        patient_id=None,
        actor="operator",
        details={"holder": holder.identifier, "name": holder.legal_name, "served": list(holder.categories)},
        at=now,
    )
    return holder


def approve_holder(session: Session, *, identifier: str, operator: str, now: datetime) -> Holder:
    holder = repository.get_holder(session, identifier)
    if holder is None:
        raise NotFound(f"no holder {identifier!r}")
    if holder.status != "approved":
        holder.status = "approved"
        holder.approved_at = now
        holder.approved_by = operator
        append_event(
            session,
            tag=EventTag.HOLDER_APPROVED,
            patient_id=None,
            actor=f"operator:{operator}",
            details={"holder": holder.identifier, "name": holder.legal_name},
            at=now,
        )
    return holder


def list_holders(session: Session, *, status: str | None = None) -> list[dict[str, Any]]:
    if status is not None and status not in ("pending", "approved", "suspended"):
        raise InvalidRequest("status: expected pending, approved or suspended", field="status")
    return [holder_json(h, private=True) for h in repository.list_holders(session, status)]


def holder_json(holder: Holder, *, private: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {
        "identifier": holder.identifier,
        "legal_name": holder.legal_name,
        "base_url": holder.base_url,
        "categories": holder.categories,
        "release_step_categories": holder.release_step_categories,
        "link_endpoint": holder.link_endpoint,
        "download_endpoint": holder.download_endpoint,
    }
    if private:
        body.update(
            status=holder.status,
            jwks=holder.jwks,
            jwks_uri=holder.jwks_uri,
            created_at=holder.created_at.isoformat(),
            approved_at=holder.approved_at.isoformat() if holder.approved_at else None,
            approved_by=holder.approved_by,
        )
    return body


# -- the public catalog ---------------------------------------------------------------------

MAX_PAGE = 100
ORDER = "alphabetical by name; no app pays for its place"


def _encode_cursor(app: App) -> str:
    raw = json.dumps([app.name_key, app.client_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[str, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        name_key, client_id = strictjson.loads(raw)
        if not isinstance(name_key, str) or not isinstance(client_id, str):
            raise ValueError
    except (ValueError, TypeError):
        raise InvalidRequest("cursor: not a cursor this catalog gave out", field="cursor") from None
    return name_key, client_id


def _vocabulary(values: list[str], known: Mapping[str, Any], name: str) -> tuple[str, ...]:
    for value in values:
        if value not in known:
            raise InvalidRequest(f"{name}: unknown value {value!r}", field=name)
    return tuple(dict.fromkeys(values))


def search_catalog(
    session: Session,
    *,
    charter: Charter,
    policy_mode: str,
    q: str | None = None,
    categories: list[str] | None = None,
    purpose: str | None = None,
    business_models: list[str] | None = None,
    holder: str | None = None,
    eu_only: bool = False,
    cursor: str | None = None,
    limit: int = 20,
) -> dict[str, Any]:
    """One page of the catalog, with the cursor of the next page (or ``None``)."""
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidRequest(f"limit: must be from 1 to {MAX_PAGE}", field="limit")
    if q is not None and len(q) > 200:
        raise InvalidRequest("q: at most 200 characters", field="q")
    if purpose is not None:
        _vocabulary([purpose], charter.purposes, "purpose")
    if holder is not None:
        found = repository.get_holder(session, holder)
        if found is None or found.status != "approved":
            raise InvalidRequest(f"holder: no approved holder {holder!r}", field="holder")
    query = repository.CatalogQuery(
        statuses=LISTED[policy_mode],
        words=tuple(search_terms(fold(q))) if q else (),
        categories=_vocabulary(categories or [], charter.categories, "category"),
        purpose=purpose,
        business_models=_vocabulary(business_models or [], charter.business_models, "business_model"),
        holder=holder,
        eu_only=eu_only,
        after=_decode_cursor(cursor) if cursor else None,
        limit=limit + 1,
    )
    if q and q.strip() and not query.words:
        # Only punctuation: nothing can match, and an empty filter must not list everything.
        return {"order": ORDER, "items": [], "next_cursor": None}
    rows = list(repository.search_apps(session, query))
    more = len(rows) > limit
    rows = rows[:limit]
    return {
        "order": ORDER,
        "items": [app_summary(app, charter) for app in rows],
        "next_cursor": _encode_cursor(rows[-1]) if more else None,
    }


def _labels(vocabulary: Mapping[str, Any], ident: str) -> dict[str, str]:
    entry = vocabulary.get(ident)
    if entry is None:
        return {"fr": ident, "en": ident}
    return {"fr": entry.label("fr"), "en": entry.label("en")}


def app_summary(app: App, charter: Charter) -> dict[str, Any]:
    manifest = app.client_metadata["charter_manifest"]
    return {
        "client_id": app.client_id,
        "client_name": app.client_name,
        "publisher": app.publisher_name,
        "business_model": {
            "id": app.business_model,
            "label": _labels(charter.business_models, app.business_model),
        },
        "purposes": [
            {"id": p["id"], "label": _labels(charter.purposes, p["id"])} for p in manifest["purposes"]
        ],
        "categories": sorted(r["category"] for r in manifest["data_requests"]),
        "data_leaves_eu": app.data_leaves_eu,
        "status": app.status,
        "verdict": _verdict_summary(app),
    }


def _verdict_summary(app: App) -> dict[str, Any] | None:
    if app.verdict is None:
        return None
    return {
        "status": app.verdict["status"],
        "charter_version": app.verdict["charter_version"],
        "checked_at": app.verdict["checked_at"],
        "articles": sorted({f["article"] for f in app.verdict["findings"]}),
    }


def app_facts(session: Session, *, client_id: str, charter: Charter, policy_mode: str) -> dict[str, Any]:
    """An app's public page of facts: who, how it is paid for, what it asks and why."""
    app = repository.get_app(session, client_id)
    if app is None or app.status not in LISTED[policy_mode]:
        raise NotFound(f"no app {client_id!r} in the catalog")
    metadata = app.client_metadata
    manifest = metadata["charter_manifest"]
    categories = sorted({r["category"] for r in manifest["data_requests"]})
    facts = app_summary(app, charter)
    facts.update(
        client_uri=metadata.get("client_uri"),
        logo_uri=metadata.get("logo_uri"),
        policy_uri=metadata.get("policy_uri"),
        tos_uri=metadata.get("tos_uri"),
        publisher=manifest["publisher"],
        business_model={
            **facts["business_model"],
            "description": manifest["business_model"].get("description"),
            "funding_sources": manifest["business_model"].get("funding_sources", []),
        },
        purposes=[
            {"id": p["id"], "label": _labels(charter.purposes, p["id"]), "description": p.get("description")}
            for p in manifest["purposes"]
        ],
        data_requests=[
            {**r, "label": _labels(charter.categories, r["category"])} for r in manifest["data_requests"]
        ],
        retention=manifest.get("retention"),
        rights=manifest.get("rights"),
        hosting=manifest.get("hosting"),
        third_parties=manifest.get("third_parties", []),
        verdict=app.verdict,
        holders=[holder_json(h) for h in repository.holders_serving(session, categories)],
    )
    return facts
