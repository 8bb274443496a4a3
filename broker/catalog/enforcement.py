"""Enforcement of the charter over time: the version in force, re-checks, operator reviews."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from broker.audit.log import append_event
from broker.audit.tags import EventTag
from broker.catalog import repository
from broker.catalog.models import App, CharterVersion
from broker.catalog.service import apply_verdict, log_app_event
from broker.charter import Charter, Verdict, evaluate, load_charter
from broker.charter.loading import parse_charter
from broker.consent.service import announce_app_status
from broker.errors import Conflict, InvalidRequest, NotFound


@dataclass
class CharterInForce:
    """Which charter governs this broker: the latest applied version, else the configured one.

    Charters are cached by version; the database says which version is in force, so every
    node of a deployment agrees after ``broker charter apply``.
    """

    configured_version: str | None = None
    _cache: dict[str, Charter] = field(default_factory=dict)

    def current(self, session: Session) -> Charter:
        row = repository.latest_charter_version(session)
        if row is None:
            return self._packaged(self.configured_version)
        charter = self._cache.get(row.version)
        if charter is None:
            charter = self._cache[row.version] = parse_charter(
                row.document, f"charter {row.version} (database)"
            )
        return charter

    def _packaged(self, version: str | None) -> Charter:
        key = f"packaged:{version}"
        if key not in self._cache:
            self._cache[key] = load_charter(version)
        return self._cache[key]


def _settled_by_operator(app: App, verdict: Verdict, digest: str) -> bool:
    """An operator approved this very manifest after a review that raised the same questions.

    Re-checks then keep the operator's decision instead of asking again; any new finding, or
    any change of the manifest, sends the app back to review.
    """
    previous = app.verdict or {}
    if previous.get("decided_by", "engine") == "engine" or app.status != "approved":
        return False
    if previous.get("manifest_sha256") != digest or verdict.status != "needs_review":
        return False
    settled = {f["rule"] for f in previous.get("reviewed_findings", [])}
    return {f.rule for f in verdict.findings} <= settled


def charter_source(version_or_path: str) -> tuple[Charter, dict[str, Any]]:
    """A charter to apply, and the document to keep in the database: a packaged version or
    the path of a charter JSON file."""
    path = Path(version_or_path)
    if path.suffix == ".json" and path.is_file():
        raw = path.read_bytes()
    else:
        charter = load_charter(version_or_path)  # raises for an unknown version
        data_dir = resources.files("broker.charter") / "data"
        raw = (data_dir / f"charter-{charter.version}.json").read_bytes()
    document = json.loads(raw)
    return parse_charter(document, str(version_or_path)), document


@dataclass(frozen=True)
class ApplyReport:
    version: str
    checked: int
    outcome: dict[str, int]
    suspended: list[str]
    restored: list[str]

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "checked": self.checked,
            "outcome": self.outcome,
            "suspended": self.suspended,
            "restored": self.restored,
        }


def apply_charter(
    session: Session,
    *,
    charter: Charter,
    document: dict[str, Any],
    applied_by: str,
    dev_mode: bool,
    now: datetime,
) -> ApplyReport:
    """Put ``charter`` in force and re-check every live app against it.

    An app that was approved and no longer passes is *suspended*: out of the catalog, no
    new consents or tokens, and its outstanding tokens stop being honoured. An app that now
    passes is approved, whatever it was before.
    """
    if session.get(CharterVersion, charter.version) is not None:
        raise Conflict(f"charter version {charter.version} has been applied already")
    session.add(
        CharterVersion(version=charter.version, document=document, applied_at=now, applied_by=applied_by)
    )
    outcome: Counter[str] = Counter()
    suspended: list[str] = []
    restored: list[str] = []
    apps = repository.live_apps(session)
    for app in apps:
        verdict = evaluate(app.client_metadata, charter, allow_loopback_http=dev_mode)
        if _settled_by_operator(app, verdict, app.manifest_sha256):
            outcome["approved"] += 1
            continue
        was = app.status
        if verdict.status == "approved" and was == "suspended" and app.registration_token_hash is None:
            # An app managed at a peer broker (imported: no registration token here) may have
            # been suspended by its origin: only the next synchronisation may restore it.
            status = "suspended"
        elif verdict.status == "approved":
            status = "approved"
            if was == "suspended":
                restored.append(app.client_id)
        elif was in ("approved", "suspended"):
            status = "suspended"
            if was == "approved":
                suspended.append(app.client_id)
        else:
            status = verdict.status
        app.status = status
        app.updated_at = now
        apply_verdict(session, app, verdict, app.manifest_sha256, now)
        outcome[status] += 1
        if status != was:
            if status == "suspended":
                tag = EventTag.APP_SUSPENDED
                announce_app_status(session, app, "suspended", now)
            elif was == "suspended" and status == "approved":
                tag = EventTag.APP_RESTORED
                announce_app_status(session, app, "restored", now)
            else:
                tag = EventTag.APP_RECHECKED
            log_app_event(session, tag, app, "broker", now, previous_status=was)
    append_event(
        session,
        tag=EventTag.CHARTER_APPLIED,
        patient_id=None,
        actor=f"operator:{applied_by}",
        details={"charter_version": charter.version, "checked": len(apps), "outcome": dict(outcome)},
        at=now,
    )
    return ApplyReport(charter.version, len(apps), dict(outcome), suspended, restored)


def pending_reviews(session: Session) -> list[dict[str, Any]]:
    return [
        {
            "client_id": app.client_id,
            "client_name": app.client_name,
            "publisher": app.publisher_name,
            "verdict": app.verdict,
        }
        for app in repository.apps_by_status(session, "needs_review")
    ]


def decide_review(
    session: Session,
    *,
    client_id: str,
    decision: Any,
    reason: Any,
    operator: str,
    charter: Charter,
    dev_mode: bool,
    now: datetime,
) -> App:
    """An operator settles a ``needs_review`` verdict, with a recorded reason."""
    if decision not in ("approved", "refused"):
        raise InvalidRequest("decision: expected approved or refused", field="decision")
    if not isinstance(reason, str) or not reason.strip() or len(reason) > 2000:
        raise InvalidRequest("reason: a reason of 1 to 2000 characters is required", field="reason")
    app = repository.get_app(session, client_id)
    if app is None or app.status == "deleted":
        raise NotFound(f"no app {client_id!r}")
    if app.status != "needs_review" or app.verdict is None:
        raise Conflict(f"app {client_id!r} is {app.status}, not waiting for a review")
    engine_verdict = evaluate(app.client_metadata, charter, allow_loopback_http=dev_mode)
    apply_verdict(
        session,
        app,
        engine_verdict,
        app.manifest_sha256,
        now,
        decided_by=f"operator:{operator}",
        reason=reason,
        status=decision,
    )
    app.status = decision
    app.updated_at = now
    log_app_event(session, EventTag.APP_DECIDED, app, f"operator:{operator}", now, reason=reason)
    return app
