"""The patient's history page: the audit log's events told in plain words (charter art. 08).

The template (``audit/history.html``) writes one sentence per kind of event, so that every
word goes through the translation catalogues; this module gives it what the sentences say:
names instead of ids (the app's ``client_name``, the holder's ``legal_name``, category
labels from the charter), dates in the patient's language and in Paris time, and the
consent a release was made under. Token renewals, which an app makes every few minutes and
which mean nothing to a person, are folded into one line per app and day unless the
patient asks for the technical details.

Like ``broker.audit.timeline``, every query is scoped to the logged-in patient's id and the
filters only narrow that set: another patient's app, holder, category or cursor yields an
empty page, never a count.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from babel.dates import format_date, format_time
from babel.lists import format_list
from sqlalchemy import Select, and_, func, or_, select
from sqlalchemy.orm import Session

from broker.audit.models import AuditEvent
from broker.audit.receipts import LEEWAY as RECEIPT_LEEWAY
from broker.audit.tags import EventTag
from broker.audit.timeline import _decode_cursor, _encode_cursor, _filter
from broker.catalog.models import App, Holder
from broker.charter import Charter
from broker.consent.download import DOWNLOAD_CLIENT_ID
from broker.db import utcnow
from broker.web.i18n import TIMEZONE

__all__ = ["PAGE_SIZE", "TIMEZONE", "Entry", "When", "format_when", "history_context", "last_releases"]

PAGE_SIZE = 30

# The sentence the template writes for each tag.
KINDS = {
    EventTag.LINK_CREATED: "linked",
    EventTag.LINK_REMOVED: "unlinked",
    EventTag.CONSENT_GRANTED: "granted",
    EventTag.CONSENT_CHANGED: "changed",
    EventTag.CONSENT_REVOKED: "revoked",
    EventTag.CONSENT_EXPIRED: "expired",
    EventTag.DELEGATION_GIVEN: "delegation_given",
    EventTag.DELEGATION_WITHDRAWN: "delegation_withdrawn",
    EventTag.DELEGATION_ACCEPTED: "delegation_accepted",
    EventTag.DELEGATION_DECLINED: "delegation_declined",
    EventTag.DELEGATION_ENDED: "delegation_ended",
    EventTag.CAREGIVER_VIEWED: "caregiver_viewed",
    EventTag.CAREGIVER_REFUSED: "caregiver_refused",
    EventTag.TOKEN_ISSUED: "access_given",
    EventTag.TOKEN_REFRESHED: "access_renewed",
    EventTag.TOKEN_REVOKED: "access_ended",
    EventTag.DATA_RELEASED: "released",
    EventTag.DOWNLOAD_GRANTED: "download_prepared",
}
_GRANTS = (EventTag.CONSENT_GRANTED.value, EventTag.CONSENT_CHANGED.value)


@dataclass(frozen=True)
class When:
    """A moment as the page shows it: ``date`` ("3 mars", "1er mars 2025"), ``time``
    ("14 h 02" / "14:02"), and ``iso`` for the ``<time datetime>`` attribute."""

    iso: str
    date: str
    time: str


def _day(day: date, language: str, today: date) -> str:
    pattern = "d MMMM" if day.year == today.year else "d MMMM y"
    text = format_date(day, pattern, locale=language)
    if language == "fr" and day.day == 1:
        text = "1er" + text[1:]  # French writes the first of the month as an ordinal
    return text


def format_when(at: datetime, language: str, now: datetime | None = None) -> When:
    local = at.astimezone(TIMEZONE)
    today = (now or utcnow()).astimezone(TIMEZONE).date()
    if language == "fr":
        clock = f"{local.hour} h {local.minute:02d}"
    else:
        clock = format_time(local, "HH:mm", locale=language)
    return When(iso=local.isoformat(timespec="minutes"), date=_day(local.date(), language, today), time=clock)


def _lower_first(label: str) -> str:
    # "Résultats d'analyses" reads "résultats d'analyses" inside a sentence; "IRM" stays.
    if len(label) > 1 and label[1].isupper():
        return label
    return label[:1].lower() + label[1:]


@dataclass
class Entry:
    """One line of the history."""

    kind: str
    at: datetime
    when: When
    event_id: int = 0
    app: str = ""
    holder: str = ""
    holders: str = ""
    categories: str = ""
    count: int = 0
    consent_id: str | None = None
    consent_date: When | None = None
    expires: When | None = None
    by_you: bool = True
    flagged: bool = False
    outside: str = ""
    after_end: bool = False
    times: int = 0  # folded renewals
    tag: str = ""
    caregiver: str = ""  # the name of the caregiver who acted for the patient, if one did
    rights: str = ""  # what a caregiver was allowed: view | revoke | grant
    reason: str = ""


@dataclass
class _Names:
    apps: dict[str, str] = field(default_factory=dict)
    holders: dict[str, str] = field(default_factory=dict)

    def app(self, client_id: Any) -> str:
        return self.apps.get(client_id, str(client_id or "")) if client_id else ""

    def holder(self, holder_id: Any) -> str:
        return self.holders.get(holder_id, str(holder_id or "")) if holder_id else ""


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _split(joined: str | None) -> list[str]:
    return [part for part in (joined or "").split(",") if part]


def _scoped(
    query: Select[Any], patient_id: str, app: str | None, holder: str | None, category: str | None
) -> Select[Any]:
    ev = AuditEvent
    query = query.where(ev.patient_id == patient_id)
    if app is not None:
        query = query.where(ev.app_id == app)
    if holder is not None:
        query = query.where(ev.holders.contains(f",{holder},", autoescape=True))
    if category is not None:
        query = query.where(ev.categories.contains(f",{category},", autoescape=True))
    return query


def _before(at: datetime, event_id: int) -> Any:
    ev = AuditEvent
    return or_(ev.at < at, and_(ev.at == at, ev.id < event_id))


def _after(at: datetime, event_id: int) -> Any:
    ev = AuditEvent
    return or_(ev.at > at, and_(ev.at == at, ev.id > event_id))


class _Teller:
    """Turns rows into entries, in one language, with names looked up once."""

    def __init__(
        self, charter: Charter, language: str, names: _Names, patient_id: str, now: datetime
    ) -> None:
        self.charter, self.language, self.names = charter, language, names
        self.patient_id, self.now = patient_id, now
        self.grants: dict[str, list[datetime]] = defaultdict(list)  # consent id -> grant times

    def when(self, at: datetime) -> When:
        return format_when(at, self.language, self.now)

    def listed(self, items: list[str]) -> str:
        return format_list(items, locale=self.language) if items else ""

    def categories(self, ids: Any) -> str:
        labels = []
        for category_id in ids if isinstance(ids, list) else []:
            entry = self.charter.categories.get(category_id)
            labels.append(_lower_first(entry.label(self.language)) if entry else str(category_id))
        return self.listed(labels)

    def consent_date(self, consent_id: Any, at: datetime) -> When | None:
        # The grant in force at the release; a holder's clock may run a little ahead of ours.
        times = [t for t in self.grants.get(consent_id, []) if t <= at + RECEIPT_LEEWAY]
        return self.when(max(times)) if times else None

    def entry(self, event: AuditEvent) -> Entry:
        details = event.details or {}
        tag = event.tag
        kind = KINDS.get(EventTag(tag), "other") if tag in EventTag._value2member_map_ else "other"
        holders: list[Any] = details["holders"] if isinstance(details.get("holders"), list) else []
        entry = Entry(
            kind=kind,
            at=event.at,
            when=self.when(event.at),
            event_id=event.id,
            app=self.names.app(details.get("app")),
            holder=self.names.holder(details.get("holder")),
            holders=self.listed([self.names.holder(h) for h in holders]),
            categories=self.categories(details.get("categories")),
            consent_id=details.get("consent_id") if isinstance(details.get("consent_id"), str) else None,
            by_you=event.actor == f"patient:{self.patient_id}",
            caregiver=_text(details.get("caregiver")),
            rights=_text(details.get("rights")),
            reason=_text(details.get("reason")),
            tag=tag,
        )
        if isinstance(details.get("expires_at"), str):
            try:
                entry.expires = self.when(datetime.fromisoformat(details["expires_at"]))
            except ValueError:
                entry.expires = None
        if kind == "released":
            count = details.get("record_count")
            entry.count = count if isinstance(count, int) else 0
            entry.consent_date = self.consent_date(entry.consent_id, event.at)
            entry.flagged = bool(details.get("flagged"))
            entry.outside = self.categories(details.get("outside_consent"))
            entry.after_end = bool(details.get("after_consent_ended"))
            if details.get("app") == DOWNLOAD_CLIENT_ID:
                entry.kind = "downloaded"  # the patient's own download (issue 10)
        return entry


def _fold_renewals(
    session: Session,
    teller: _Teller,
    scope: Select[Any],
    upper: tuple[datetime, int] | None,
    lower: tuple[datetime, int] | None,
) -> list[Entry]:
    """Token renewals between ``lower`` and ``upper`` (the page's span), one line per app and
    Paris day, placed at the day's last renewal."""
    ev = AuditEvent
    query = scope.where(ev.tag == EventTag.TOKEN_REFRESHED.value)
    if upper is not None:
        query = query.where(_before(*upper))
    if lower is not None:
        query = query.where(_after(*lower))
    groups: dict[tuple[str, date], list[Any]] = {}
    for at, event_id, app_id in session.execute(query.with_only_columns(ev.at, ev.id, ev.app_id)):
        key = (app_id or "", at.astimezone(TIMEZONE).date())
        group = groups.setdefault(key, [at, event_id, 0])
        if (at, event_id) > (group[0], group[1]):
            group[0], group[1] = at, event_id
        group[2] += 1
    return [
        Entry(
            kind="access_renewed_folded",
            at=at,
            when=teller.when(at),
            event_id=event_id,
            app=teller.names.app(app_id),
            times=times,
        )
        for (app_id, _day), (at, event_id, times) in groups.items()
    ]


def _summaries(
    teller: _Teller, releases: list[AuditEvent]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Per app and per holder: how many releases, how many items, of what, and the last one."""
    by_app: dict[str, dict[str, Any]] = {}
    by_holder: dict[str, dict[str, Any]] = {}
    for event in releases:
        details = event.details or {}
        count = details.get("record_count") if isinstance(details.get("record_count"), int) else 0
        categories: list[Any] = details["categories"] if isinstance(details.get("categories"), list) else []
        for key, table, other in (
            (details.get("app"), by_app, details.get("holder")),
            (details.get("holder"), by_holder, details.get("app")),
        ):
            if not isinstance(key, str):
                continue
            row = table.setdefault(
                key, {"releases": 0, "records": 0, "categories": set(), "others": set(), "last": None}
            )
            row["releases"] += 1
            row["records"] += count
            row["categories"].update(c for c in categories if isinstance(c, str))
            if isinstance(other, str):
                row["others"].add(other)
            if row["last"] is None or event.at > row["last"]:
                row["last"] = event.at

    def shape(table: dict[str, dict[str, Any]], name: Any, other_name: Any) -> list[dict[str, Any]]:
        out = [
            {
                "id": key,
                "name": name(key),
                "releases": row["releases"],
                "records": row["records"],
                "categories": teller.categories(sorted(row["categories"])),
                "others": teller.listed(sorted(other_name(o) for o in row["others"])),
                "last": teller.when(row["last"]),
            }
            for key, row in table.items()
        ]
        return sorted(out, key=lambda r: r["name"].casefold())

    return (
        shape(by_app, teller.names.app, teller.names.holder),
        shape(by_holder, teller.names.holder, teller.names.app),
    )


def history_context(
    session: Session,
    *,
    patient_id: str,
    charter: Charter,
    language: str,
    app: str | None = None,
    holder: str | None = None,
    category: str | None = None,
    technical: bool = False,
    cursor: str | None = None,
    now: datetime | None = None,
    page_size: int = PAGE_SIZE,
) -> dict[str, Any]:
    """What ``audit/history.html`` shows: one page of entries, the filters, the summaries and
    the warnings, for one patient."""
    now = now or utcnow()
    ev = AuditEvent
    app, holder, category = _filter("app", app), _filter("holder", holder), _filter("category", category)
    scope = _scoped(select(ev), patient_id, app, holder, category)

    # The page: newest first, keyset on (at, id); renewals apart unless asked for.
    query = scope if technical else scope.where(ev.tag != EventTag.TOKEN_REFRESHED.value)
    upper = _decode_cursor(cursor) if cursor else None
    if upper is not None:
        query = query.where(_before(*upper))
    rows = list(session.scalars(query.order_by(ev.at.desc(), ev.id.desc()).limit(page_size + 1)))
    more = len(rows) > page_size
    rows = rows[:page_size]

    # Everything else the page says, for this patient only.
    mine = select(ev).where(ev.patient_id == patient_id)
    releases = list(
        session.scalars(mine.where(ev.tag == EventTag.DATA_RELEASED.value).order_by(ev.at.desc()))
    )
    grants = session.execute(mine.where(ev.tag.in_(_GRANTS)).with_only_columns(ev.at, ev.details)).all()
    options = session.execute(mine.with_only_columns(ev.app_id, ev.holders, ev.categories).distinct()).all()
    app_ids = {a for a, _h, _c in options if a}
    holder_ids = {h for _a, joined, _c in options for h in _split(joined)}
    category_ids = {c for _a, _h, joined in options for c in _split(joined)}

    names = _Names()
    for event in [*rows, *releases]:
        details = event.details or {}
        if isinstance(details.get("app"), str):
            app_ids.add(details["app"])
        holder_ids.update(
            h for h in [details.get("holder"), *(details.get("holders") or [])] if isinstance(h, str)
        )
    if app_ids:
        names.apps = dict(
            session.execute(select(App.client_id, App.client_name).where(App.client_id.in_(app_ids))).all()
        )
    if holder_ids:
        names.holders = dict(
            session.execute(
                select(Holder.identifier, Holder.legal_name).where(Holder.identifier.in_(holder_ids))
            ).all()
        )
    teller = _Teller(charter, language, names, patient_id, now)
    for at, details in grants:
        if isinstance(details, dict) and isinstance(details.get("consent_id"), str):
            teller.grants[details["consent_id"]].append(at)

    entries = [teller.entry(e) for e in rows]
    if not technical:
        lower = (rows[-1].at, rows[-1].id) if more else None
        entries += _fold_renewals(session, teller, scope, upper, lower)
        entries.sort(key=lambda e: (e.at, e.event_id), reverse=True)
    apps_summary, holders_summary = _summaries(teller, releases)
    warnings = [teller.entry(e) for e in releases if (e.details or {}).get("flagged")]

    def labelled(ids: set[str], name: Any) -> list[dict[str, str]]:
        return sorted(({"value": i, "label": name(i)} for i in ids), key=lambda o: o["label"].casefold())

    def category_label(category_id: str) -> str:
        entry = charter.categories.get(category_id)
        return entry.label(language) if entry else category_id

    return {
        "entries": entries,
        "next_cursor": _encode_cursor(rows[-1]) if more else None,
        "filters": {
            "app": app or "",
            "holder": holder or "",
            "category": category or "",
            "technical": technical,
        },
        "filtered": bool(app or holder or category),
        "first_page": cursor is None or cursor == "",
        "app_options": labelled(app_ids, names.app),
        "holder_options": labelled(holder_ids, names.holder),
        "category_options": labelled(category_ids, category_label),
        "apps_summary": apps_summary,
        "holders_summary": holders_summary,
        "warnings": warnings,
    }


def last_releases(session: Session, patient_id: str) -> dict[str, datetime]:
    """Per app, the last time a holder reported releasing this patient's data to it."""
    ev = AuditEvent
    rows = session.execute(
        select(ev.app_id, func.max(ev.at))
        .where(
            ev.patient_id == patient_id,
            ev.tag == EventTag.DATA_RELEASED.value,
            ev.app_id.is_not(None),
        )
        .group_by(ev.app_id)
    ).all()
    return {app_id: at for app_id, at in rows if app_id is not None}
