"""``/healthz``, ``/readyz`` and ``/metrics``: for the orchestrator, the load balancer and
Prometheus. Not in the OpenAPI description, not rate limited, not in the request log."""

from __future__ import annotations

import hmac
import logging
from typing import Any

from litestar import MediaType, Request, Response, get
from litestar.datastructures import State
from sqlalchemy import text
from sqlalchemy.orm import Session

from broker.errors import BrokerError, NotFound, Unauthorized
from broker.http import bearer_token, in_transaction
from broker.ops.metrics import exposition

log = logging.getLogger("broker.ops")

#: Paths kept out of the request log and of the latency figures' noise.
QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


class NotReady(BrokerError):
    status = 503
    slug = "not-ready"
    title = "This broker node is not ready to serve requests"


@get("/healthz", include_in_schema=False, media_type=MediaType.JSON, cache_control=None)
async def healthz() -> Response[dict[str, str]]:
    """The process is up and its event loop answers; nothing else is looked at."""
    return Response({"status": "ok"}, headers={"Cache-Control": "no-store"})


def _database_answers(session: Session) -> None:
    session.execute(text("SELECT 1"))


@get("/readyz", include_in_schema=False, media_type=MediaType.JSON)
async def readyz(state: State) -> Response[dict[str, str]]:
    """Ready: not shutting down, the database answers, a signing key is loaded."""
    if state.draining.draining:
        raise NotReady("this node is shutting down")
    try:
        await in_transaction(state.session_factory, _database_answers)
    except Exception:  # any failure means not ready; the cause is logged
        log.warning("readiness: the database does not answer", exc_info=True)
        raise NotReady("the database does not answer") from None
    try:
        state.keystore.refresh()
        state.keystore.public_key(state.keystore.active_kid)
    except Exception:
        log.warning("readiness: no usable signing key", exc_info=True)
        raise NotReady("no signing key is loaded") from None
    return Response({"status": "ready"}, headers={"Cache-Control": "no-store"})


@get("/metrics", include_in_schema=False)
async def metrics(request: Request[Any, Any, Any], state: State) -> Response[Any]:
    """Prometheus text format. With ``BROKER_METRICS_TOKEN`` set, only for that bearer token;
    without it, in development mode only (never public by default in production)."""
    token = state.settings.metrics_token
    if token is None:
        if not state.settings.dev_mode:
            raise NotFound("no metrics here: set BROKER_METRICS_TOKEN to publish them")
    else:
        given = bearer_token(request) or ""
        if not hmac.compare_digest(given.encode(), token.encode()):
            refused = Unauthorized("send Authorization: Bearer <BROKER_METRICS_TOKEN>")
            return Response(  # RFC 6750 §3: say which scheme is wanted
                refused.problem(request.url.path),
                status_code=401,
                media_type="application/problem+json",
                headers={"WWW-Authenticate": 'Bearer realm="metrics"', "Cache-Control": "no-store"},
            )
    body, media_type = exposition()
    return Response(body, media_type=media_type, headers={"Cache-Control": "no-store"})


health_routes = [healthz, readyz, metrics]
