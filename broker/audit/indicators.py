"""Public indicators (charter art. 08): aggregate counts from the log, small cells hidden.

Computed from the audit events alone: consents granted and revoked per app and per data
category, releases per holder, apps per current verdict. A cell that rests on fewer than
``SMALL_CELL`` distinct patients shows no number (``null``, and its key is listed under
``suppressed``), so that no count points at a handful of people. Apps are not people: the
count of apps per verdict is shown whole. Erased events no longer count.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from broker.audit.models import AuditEvent
from broker.audit.tags import EventTag

SMALL_CELL = 10
APP_TAGS = (
    EventTag.APP_REGISTERED,
    EventTag.APP_UPDATED,
    EventTag.APP_DELETED,
    EventTag.APP_SUSPENDED,
    EventTag.APP_RESTORED,
    EventTag.APP_RECHECKED,
    EventTag.APP_DECIDED,
)


def _split(joined: str | None) -> list[str]:
    return [v for v in (joined or "").split(",") if v]


def _cells(patients: dict[str, set[str]], counts: dict[str, int] | None = None) -> dict[str, Any]:
    values: dict[str, int | None] = {}
    suppressed = []
    for key in sorted(patients):
        if len(patients[key]) < SMALL_CELL:
            values[key] = None
            suppressed.append(key)
        else:
            values[key] = counts[key] if counts is not None else len(patients[key])
    return {"values": values, "suppressed": suppressed}


def public_indicators(session: Session) -> dict[str, Any]:
    ev = AuditEvent
    granted_app: dict[str, set[str]] = defaultdict(set)
    revoked_app: dict[str, set[str]] = defaultdict(set)
    granted_category: dict[str, set[str]] = defaultdict(set)
    revoked_category: dict[str, set[str]] = defaultdict(set)
    consent_rows = session.execute(
        select(ev.tag, ev.patient_id, ev.app_id, ev.categories).where(
            ev.tag.in_([EventTag.CONSENT_GRANTED.value, EventTag.CONSENT_REVOKED.value]),
            ev.patient_id.is_not(None),
        )
    )
    for tag, patient, app, categories in consent_rows:
        granted = tag == EventTag.CONSENT_GRANTED
        by_app = granted_app if granted else revoked_app
        by_category = granted_category if granted else revoked_category
        if not patient:
            continue
        if app:
            by_app[app].add(patient)
        for category in _split(categories):
            by_category[category].add(patient)

    release_patients: dict[str, set[str]] = defaultdict(set)
    release_counts: dict[str, int] = defaultdict(int)
    for patient, holders in session.execute(
        select(ev.patient_id, ev.holders).where(
            ev.tag == EventTag.DATA_RELEASED.value, ev.patient_id.is_not(None)
        )
    ):
        if not patient:
            continue
        for holder in _split(holders):
            release_patients[holder].add(patient)
            release_counts[holder] += 1

    # The current status of each app is the one its latest event gave.
    status: dict[str, str] = {}
    for app, details in session.execute(
        select(ev.app_id, ev.details)
        .where(ev.tag.in_([t.value for t in APP_TAGS]), ev.app_id.is_not(None))
        .order_by(ev.id)
    ):
        if isinstance(details, dict) and isinstance(details.get("status"), str):
            status[app] = details["status"]
    verdicts: dict[str, int] = defaultdict(int)
    for value in status.values():
        if value != "deleted":
            verdicts[value] += 1

    return {
        "small_cell": SMALL_CELL,
        "consents_granted_per_app": _cells(granted_app),
        "consents_revoked_per_app": _cells(revoked_app),
        "consents_granted_per_category": _cells(granted_category),
        "consents_revoked_per_category": _cells(revoked_category),
        "releases_per_holder": _cells(release_patients, release_counts),
        "apps_per_verdict": dict(sorted(verdicts.items())),
    }


def indicators_context(session: Session, charter: Any, language: str) -> dict[str, Any]:
    """The public indicators with names instead of ids, for the public page."""
    from broker.catalog.models import App, Holder  # names only; the counts come from the log

    figures = public_indicators(session)
    apps = {key: name for key, name in session.execute(select(App.client_id, App.client_name))}
    holders = {key: name for key, name in session.execute(select(Holder.identifier, Holder.legal_name))}

    def category(category_id: str) -> str:
        entry = charter.categories.get(category_id)
        return str(entry.label(language)) if entry else category_id

    def rows(cells: dict[str, Any], name: Any) -> list[dict[str, Any]]:
        listed = [{"name": name(key), "value": value} for key, value in cells["values"].items()]
        return sorted(listed, key=lambda row: row["name"].casefold())

    def pair(granted: dict[str, Any], revoked: dict[str, Any], name: Any) -> list[dict[str, Any]]:
        keys = set(granted["values"]) | set(revoked["values"])
        listed = [
            {
                "name": name(key),
                "granted": granted["values"].get(key),
                "revoked": revoked["values"].get(key),
                "granted_known": key in granted["values"],
                "revoked_known": key in revoked["values"],
            }
            for key in keys
        ]
        return sorted(listed, key=lambda row: row["name"].casefold())

    return {
        "small_cell": figures["small_cell"],
        "per_app": pair(
            figures["consents_granted_per_app"],
            figures["consents_revoked_per_app"],
            lambda key: apps.get(key, key),
        ),
        "per_category": pair(
            figures["consents_granted_per_category"], figures["consents_revoked_per_category"], category
        ),
        "releases": rows(figures["releases_per_holder"], lambda key: holders.get(key, key)),
        "verdicts": figures["apps_per_verdict"],
    }
