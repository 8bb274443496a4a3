"""Abuse limits: requests per minute per address, per app and per patient (SECURITY W7).

Which endpoints: log-in and sign-up (patients), registration (apps, RFC 7591/7592),
authorization (``/authorize``, ``/par`` and the consent screen) and the token endpoints
(``/token``, ``/revoke``, ``/introspect``). Each group of endpoints counts on its own, with
one bucket per key:

- per address: the client's address (``X-Forwarded-For`` only from ``BROKER_TRUSTED_PROXIES``);
- per app: the ``client_id`` (HTTP Basic user, form field, query parameter or the
  ``/register/{client_id}`` path);
- per patient: the e-mail typed on log-in and sign-up, the session cookie on authorization.

Each key has a token bucket holding a minute's allowance (``BROKER_RATE_LIMIT_*``), refilled
continuously: a burst up to the allowance passes, then requests pass at the allowance's
pace. Past it the answer is 429 with ``Retry-After`` (seconds until a request would pass), as
an RFC 6749 JSON error (``temporarily_unavailable``) on the OAuth endpoints and a readable
page on the patients' pages. Nothing else is done with the request: no log-in attempt, no
database work.

Storage: each process counts in its own memory (at most ``MAX_KEYS`` keys per kind; past it
a tenth is forgotten, full buckets first); nothing is shared between workers or nodes. With W
worker processes on N nodes behind a load balancer, a client may get up to W×N times the
allowance in the worst case: divide the allowance accordingly. What must hold across nodes
holds in the database already: failed log-ins per account and per address are throttled
there (broker/consent/patients/throttle.py), whichever node receives them.

Keys an app or a patient cannot prove (a ``client_id``, an e-mail) can be named by someone
else. The buckets are checked address first, and a request refused on one spends nothing on
the next: from one address nobody spends more of an app's or a patient's allowance than the
address allowance (below the app's by default, above the patient's: one address sending a
patient's e-mail over and over holds back that patient's log-ins while it keeps sending). The
bucket refills within a minute once the sending stops: no lasting lock-out (SECURITY W7).
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from litestar import MediaType, Request, Response

from broker.http import client_address
from broker.settings import Settings

#: Route templates limited, and the group each counts in.
GROUPS = {
    "/login": "login",
    "/login/oidc": "login",
    "/signup": "signup",
    "/register": "registration",
    "/register/{client_id:str}": "registration",
    "/register/{client_id:str}/verdict": "registration",
    "/authorize": "authorization",
    "/par": "authorization",
    "/consent/{request_id:str}": "authorization",
    "/token": "token",
    "/revoke": "token",
    "/introspect": "token",
}
#: Groups answered with a page (the patient's browser), the others in JSON.
PAGE_GROUPS = frozenset({"login", "signup"})
PAGE_ROUTES = frozenset({"/authorize", "/consent/{request_id:str}"})
#: Keys kept at most per limiter; past it, full buckets (idle keys) are forgotten first.
MAX_KEYS = 100_000

PageRenderer = Callable[[Request[Any, Any, Any], int], Response[Any]]


@dataclass
class _Bucket:
    tokens: float
    at: float


class RateLimiter:
    """Token buckets of ``per_minute`` requests, one per key, in this process's memory."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0  # tokens per second
        self.clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def take(self, key: str) -> int:
        """Spend one request of ``key``: 0 if it may pass, else the seconds to wait."""
        now = self.clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= MAX_KEYS:
                self._make_room(now)
            bucket = self._buckets[key] = _Bucket(self.capacity, now)
        else:
            bucket.tokens = min(self.capacity, bucket.tokens + (now - bucket.at) * self.rate)
            bucket.at = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0
        return max(1, math.ceil((1.0 - bucket.tokens) / self.rate))

    def _make_room(self, now: float) -> None:
        """Forget a tenth of the keys at once (so that this scan is rare): full buckets first,
        whose loss changes nothing, then the oldest."""
        refilled_after = self.capacity / self.rate
        for key in [k for k, b in self._buckets.items() if now - b.at >= refilled_after]:
            del self._buckets[key]
        excess = len(self._buckets) - (MAX_KEYS - MAX_KEYS // 10)
        for key in list(itertools.islice(self._buckets, max(0, excess))):
            del self._buckets[key]

    def __len__(self) -> int:
        return len(self._buckets)


def _digest(value: str) -> str:
    # Keys are kept as digests: no e-mail address or session id sits in memory for this.
    return hashlib.blake2b(value.encode(), digest_size=16).hexdigest()


def _basic_user(request: Request[Any, Any, Any]) -> str | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")[0]
    except (ValueError, UnicodeDecodeError):
        return None
    return unquote(user) or None  # RFC 6749 §2.3.1: form-encoded, then Basic


async def _form_field(request: Request[Any, Any, Any], name: str) -> str | None:
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if request.method != "POST" or media_type != "application/x-www-form-urlencoded":
        return None
    # The body is read once and kept by Litestar for the handler; past the body limit this
    # raises the usual 413.
    value = (await request.form()).get(name)
    return value if isinstance(value, str) and value else None


class RateLimits:
    """The ``before_request`` hook that applies the limits (one per application)."""

    def __init__(self, settings: Settings, page: PageRenderer) -> None:
        self.page = page
        self.limiters: dict[str, RateLimiter] = {}
        for kind, per_minute in (
            ("address", settings.rate_limit_address),
            ("client", settings.rate_limit_client),
            ("patient", settings.rate_limit_patient),
        ):
            if per_minute > 0:
                self.limiters[kind] = RateLimiter(per_minute)

    async def __call__(self, request: Request[Any, Any, Any]) -> Response[Any] | None:
        route = request.scope.get("path_template", "")
        group = GROUPS.get(route)
        if group is None or not self.limiters:
            return None
        keys = await self._keys(request, group)
        # Address first, then app, then patient; a request refused by one bucket spends
        # nothing from the next ones, so that from one address nobody spends more of an app's
        # or a patient's allowance than that address's own.
        for kind, value in keys.items():
            limiter = self.limiters.get(kind)
            if limiter is not None and value:
                wait = limiter.take(f"{group}:{kind}:{_digest(value)}")
                if wait:
                    return self._refusal(request, group, route, wait)
        return None

    async def _keys(self, request: Request[Any, Any, Any], group: str) -> dict[str, str | None]:
        keys: dict[str, str | None] = {"address": client_address(request)}
        if "client" in self.limiters and group in ("registration", "authorization", "token"):
            keys["client"] = (
                request.path_params.get("client_id")
                or _basic_user(request)
                or request.query_params.get("client_id")
                or await _form_field(request, "client_id")
            )
        if "patient" in self.limiters and group in ("login", "signup"):
            email = await _form_field(request, "email")
            keys["patient"] = email.strip().lower() if email else None
        if "patient" in self.limiters and group == "authorization":
            keys["patient"] = _session_cookie(request)
        return keys

    def _refusal(self, request: Request[Any, Any, Any], group: str, route: str, wait: int) -> Response[Any]:
        headers = {"Retry-After": str(wait), "Cache-Control": "no-store"}
        if group in PAGE_GROUPS or route in PAGE_ROUTES:
            response = self.page(request, wait)
            response.headers.update(headers)
            return response
        # The OAuth endpoints (registration, PAR, token): RFC 6749 §5.2's form, with its
        # retryable code (§4.1.2.1) since no code of its own exists for rate limits.
        return Response(
            {
                "error": "temporarily_unavailable",
                "error_description": f"too many requests; retry after {wait} seconds",
            },
            status_code=429,
            media_type=MediaType.JSON,
            headers=headers,
        )


def _session_cookie(request: Request[Any, Any, Any]) -> str | None:
    # The patient's session (whatever the cookie's prefix): the same patient on one browser.
    for name, value in request.cookies.items():
        if name.endswith("broker_session") and value:
            return value
    return None
