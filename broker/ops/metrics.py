"""The broker's Prometheus metrics.

One process (``broker serve``): the metrics live in the process and ``/metrics`` shows them.
Several worker processes (``broker serve --workers N``): the command sets
``PROMETHEUS_MULTIPROC_DIR`` to an empty directory before the workers start, each worker
writes its values to files there (prometheus_client's multiprocess mode) and ``/metrics``,
whichever worker answers it, adds them all up. Several nodes (machines) are scraped one by
one, as Prometheus does with any replicated service.

The domain counters (tokens issued, verdicts, revocations, audit appends) are read from the
audit log's events *as their transaction commits*: every such change writes its audit event
in the same transaction (STYLE 8), so a counted event is a committed one, and a rolled back
request counts nothing.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from sqlalchemy import event
from sqlalchemy.orm import Session

from broker.audit.log import COMMITTING_EVENTS

MULTIPROCESS_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"

REQUESTS = Counter(
    "broker_http_requests",
    "HTTP requests answered, by method, route template and status",
    ["method", "route", "status"],
)
LATENCY = Histogram(
    "broker_http_request_duration_seconds",
    "Time to answer an HTTP request, by method and route template",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
TOKENS_ISSUED = Counter(
    "broker_tokens_issued", "Access tokens issued, by grant (code or refresh)", ["grant"]
)
VERDICTS = Counter(
    "broker_verdicts",
    "Charter verdicts on apps (registration, update, re-check, review), by outcome",
    ["status"],
)
REVOCATIONS = Counter(
    "broker_revocations", "Revocations committed: consents (patients) and tokens (apps)", ["kind"]
)
AUDIT_APPENDS = Counter("broker_audit_appends", "Events appended to the audit log, by tag", ["tag"])
PUSH_SUBSCRIBERS = Gauge(
    "broker_push_subscribers",
    "Holders subscribed to the revocation push stream right now",
    multiprocess_mode="livesum",
)

_TOKEN_TAGS = {"broker:token:issued": "authorization_code", "broker:token:refreshed": "refresh_token"}
_VERDICT_TAGS = frozenset(
    {
        "app:registration:created",
        "app:registration:updated",
        "broker:app:suspended",
        "broker:app:restored",
        "broker:app:rechecked",
        "operator:app:decided",
    }
)
_REVOCATION_TAGS = {"patient:consent:revoked": "consent", "broker:token:revoked": "token"}


def multiprocess_mode() -> bool:
    return bool(os.environ.get(MULTIPROCESS_VARIABLE))


def exposition() -> tuple[bytes, str]:
    """The metrics in the Prometheus text format, and its media type."""
    if multiprocess_mode():
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def process_stopped() -> None:
    """A worker's live gauges leave the sum when it stops (multiprocess mode only)."""
    if multiprocess_mode():
        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


def observe_request(method: str, route: str, status: int, seconds: float) -> None:
    REQUESTS.labels(method, route, str(status)).inc()
    LATENCY.labels(method, route).observe(seconds)


def count_event(tag: str, details: dict[str, Any]) -> None:
    AUDIT_APPENDS.labels(tag).inc()
    if tag in _TOKEN_TAGS:
        TOKENS_ISSUED.labels(_TOKEN_TAGS[tag]).inc()
    elif tag in _VERDICT_TAGS:
        VERDICTS.labels(str(details.get("status", "unknown"))).inc()
    elif tag in _REVOCATION_TAGS:
        REVOCATIONS.labels(_REVOCATION_TAGS[tag]).inc()


@event.listens_for(Session, "after_commit")
def _count_committed(session: Session) -> None:
    for tag, details in session.info.pop(COMMITTING_EVENTS, ()):
        count_event(tag, details)


@event.listens_for(Session, "after_rollback")
def _forget_rolled_back(session: Session) -> None:
    session.info.pop(COMMITTING_EVENTS, None)
