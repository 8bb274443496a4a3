"""The outermost layer of every HTTP request: its id, its log line, its metrics.

It wraps Litestar's own handler (routing and error handling included), so a 404, a 413 or a
500 are counted and logged like any answer. The request id is the incoming ``X-Request-ID``
when it is sane (logs.request_id_from), else a new one; it is echoed in the response and set
in ``logs.REQUEST_ID`` for every log line written while the request is served.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from litestar.datastructures import MutableScopeHeaders
from litestar.types import ASGIApp, HTTPScope, Message, Receive, Scope, Send

from broker.ops.health import QUIET_PATHS
from broker.ops.logs import REQUEST_ID, request_id_from
from broker.ops.metrics import observe_request

log = logging.getLogger("broker.request")

#: The route label of a request no route matched (a 404): never its path, which is chosen
#: by the client and would let anyone grow the metrics without bound.
UNMATCHED = "unmatched"


class ObservedRequests:
    """ASGI middleware around Litestar's handler (``app.asgi_handler``)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # type: ignore[comparison-overlap]  # Litestar's enum is a str
            await self.app(scope, receive, send)
            return
        await self._observe(scope, receive, send)  # type: ignore[arg-type]

    async def _observe(self, scope: HTTPScope, receive: Receive, send: Send) -> None:
        incoming = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                incoming = value.decode("latin-1")
                break
        request_id = request_id_from(incoming)
        token = REQUEST_ID.set(request_id)
        started = time.perf_counter()
        status = 500  # if the app fails before answering, uvicorn answers 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = MutableScopeHeaders.from_message(message)
                headers["X-Request-ID"] = request_id
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            route = _route(scope)
            observe_request(scope["method"], route, status, seconds)
            if scope["path"] not in QUIET_PATHS:
                _log_request(scope["method"], route, status, seconds)
            REQUEST_ID.reset(token)


def _route(scope: Scope) -> str:
    template: Any = scope.get("path_template")
    return template if isinstance(template, str) and template else UNMATCHED


def _log_request(method: str, route: str, status: int, seconds: float) -> None:
    level = logging.ERROR if status >= 500 else logging.INFO
    if not log.isEnabledFor(level):
        return
    # The record is made here rather than by ``log.log``: that one looks up its caller's file
    # and line in the stack, which cost more than the rest of the line (bench/ops.py).
    record = log.makeRecord(
        log.name,
        level,
        "broker/ops/observe.py",
        0,
        "%s %s %d",
        (method, route, status),
        None,
        extra={"method": method, "route": route, "status": status, "duration_us": round(seconds * 1e6)},
    )
    log.handle(record)
