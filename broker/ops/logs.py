"""Structured logs: one JSON object per line on standard error, with the request id.

What a line may hold is decided here, not at each call site: the message, the logger, the
level, the request id and a few named fields (``method``, ``route``, ``status``,
``duration_us``). A request is logged by its route *template* (``/consent/{request_id:str}``),
never by its path or query string, where authorization codes, ``state`` and link tokens
travel. Durations are whole microseconds: a decimal number in the log could be mistaken
for a health value by the end-to-end test that searches the log for them. As a last guard,
anything shaped like a JWT or one of the broker's opaque secrets (``hcb_…``) is masked in
every message, so a mistake elsewhere cannot put one in the log.
"""

from __future__ import annotations

import json
import logging
import logging.config
import re
import secrets
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

#: The id of the request being served (a context variable: worker threads inherit it).
REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)

# An incoming X-Request-ID is kept when it is short and plain (a proxy's id, a UUID), so that
# one request can be followed through nginx and the broker; anything else is replaced.
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{7,127}")
_SECRETS = re.compile(
    r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*"  # a JWS or JWT, signed or not
    r"|hcb_[a-z]+_[A-Za-z0-9_-]{16,}"  # the broker's opaque secrets (broker.opaque)
)
#: Fields a record may carry besides its message (``logger.info(..., extra={...})``).
FIELDS = ("method", "route", "status", "duration_us", "event")


def request_id_from(header: str | None) -> str:
    """The incoming ``X-Request-ID`` if it is sane, else a new random one."""
    if header is not None and _SANE_REQUEST_ID.fullmatch(header):
        return header
    return secrets.token_hex(16)


def mask_secrets(text: str) -> str:
    return _SECRETS.sub("[masked]", text)


class JsonFormatter(logging.Formatter):
    """A log record as one line of JSON."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": mask_secrets(record.getMessage()),
            "pid": record.process,  # which worker, with `broker serve --workers N`
        }
        request_id = REQUEST_ID.get()
        if request_id is not None:
            line["request_id"] = request_id
        for name in FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                line[name] = value
        if record.exc_info and record.exc_info[1] is not None:
            # The exception's type and the stack, for the operator; its message is masked too.
            line["exception"] = mask_secrets(self.formatException(record.exc_info))
        return json.dumps(line, ensure_ascii=False, separators=(",", ":"))


def log_config(level: str = "INFO") -> dict[str, Any]:
    """The ``logging.config.dictConfig`` of ``broker serve`` (uvicorn applies it per worker)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
        "root": {"handlers": ["stderr"], "level": level},
        "loggers": {
            # uvicorn's own loggers go through the root handler, as JSON like the rest.
            "uvicorn": {"handlers": [], "propagate": True, "level": level},
            "uvicorn.error": {"handlers": [], "propagate": True, "level": level},
            # Its access log would write paths with their query strings: never.
            "uvicorn.access": {"handlers": [], "propagate": False, "level": "CRITICAL"},
        },
    }


def configure_logging(level: str = "INFO") -> None:
    logging.config.dictConfig(log_config(level))
