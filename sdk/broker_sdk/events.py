"""The broker's push stream of revocations (Server-Sent Events), for holders.

A background thread keeps ``GET {issuer}/events/revocations?holder=ID`` open, authenticated
by a fresh client assertion of the holder (RFC 7523) on every connection, and resumes after
a drop with ``Last-Event-ID`` so that no withdrawal is missed. Each ``revoked`` event calls
``on_revoked(consent_id, at)`` with the time of the withdrawal (epoch seconds); the
``suspended`` and ``restored`` events (the app's suspension by a charter re-check, and its
end) call ``on_suspended(consent_id, suspended, at)`` when it is given.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
from jwcrypto import jwk

from broker_sdk import _jose

__all__ = ["RevocationListener", "client_assertion"]

log = logging.getLogger("broker_sdk.events")

ASSERTION_TYP = "client-authentication+jwt"


def client_assertion(key: jwk.JWK, *, client_id: str, audience: str, lifetime: int = 60) -> str:
    """An RFC 7523 ``private_key_jwt`` assertion: iss = sub = ``client_id``, one-time ``jti``."""
    now = int(time.time())
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": audience,
        "iat": now,
        "exp": now + lifetime,
        "jti": secrets.token_urlsafe(18),
    }
    return _jose.sign(claims, key, typ=ASSERTION_TYP)


def _epoch(value: Any) -> float:
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            # The broker writes UTC; a value without an offset is read as UTC too.
            return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
        except ValueError:
            pass
    return time.time()


class RevocationListener:
    """One subscription to one broker's push stream, in a daemon thread."""

    def __init__(
        self,
        issuer: str,
        *,
        holder_id: str,
        holder_key: jwk.JWK,
        on_revoked: Callable[[str, float], None],
        on_suspended: Callable[[str, bool, float], None] | None = None,
        endpoint: str | None = None,
        http: httpx.Client | None = None,
        max_backoff: float = 30.0,
    ) -> None:
        self.issuer = issuer
        self.endpoint = endpoint or f"{issuer}/events/revocations"
        self.holder_id = holder_id
        self._key = holder_key
        self._on_revoked = on_revoked
        self._on_suspended = on_suspended
        self._http = http or httpx.Client(timeout=httpx.Timeout(5.0, read=45.0), trust_env=False)
        self._owns_http = http is None
        self._max_backoff = max_backoff
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._response: httpx.Response | None = None
        self.last_event_id: str | None = None
        self.connected = threading.Event()
        self.last_error: str | None = None

    def start(self) -> RevocationListener:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="broker-revocations", daemon=True)
            self._thread.start()
        return self

    def wait_connected(self, timeout: float = 10.0) -> bool:
        return self.connected.wait(timeout)

    def close(self) -> None:
        self._stop.set()
        response = self._response
        if response is not None:
            try:
                response.close()
            except Exception:
                log.debug("closing the stream", exc_info=True)
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._owns_http:
            self._http.close()

    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                self._listen()
                backoff = 0.5
            except (httpx.HTTPError, OSError, ValueError) as exc:
                self.last_error = str(exc) or type(exc).__name__
                if not self._stop.is_set():
                    log.warning("revocation stream of %s interrupted: %s", self.issuer, self.last_error)
            self.connected.clear()
            if self._stop.wait(backoff):
                return
            backoff = min(backoff * 2, self._max_backoff)

    def _listen(self) -> None:
        assertion = client_assertion(self._key, client_id=self.holder_id, audience=self.issuer)
        headers = {"Authorization": f"Bearer {assertion}", "Accept": "text/event-stream"}
        if self.last_event_id is not None:
            headers["Last-Event-ID"] = self.last_event_id
        with self._http.stream(
            "GET", self.endpoint, params={"holder": self.holder_id}, headers=headers
        ) as response:
            self._response = response
            if response.status_code != 200:
                response.read()
                raise ValueError(f"the broker refused the subscription ({response.status_code})")
            event, event_id = "message", None
            data: list[str] = []
            for line in response.iter_lines():
                if self._stop.is_set():
                    return
                if line == "":
                    if data and event in ("revoked", "suspended", "restored"):
                        self._dispatch(event, "\n".join(data))
                    if event_id is not None:
                        self.last_event_id = event_id
                    event, data, event_id = "message", [], None
                elif line.startswith(":"):
                    self.connected.set()  # ": subscribed", then keep-alive comments
                else:
                    name, _, value = line.partition(":")
                    value = value[1:] if value.startswith(" ") else value
                    if name == "event":
                        event = value
                    elif name == "data":
                        data.append(value)
                    elif name == "id":
                        event_id = value
        self._response = None

    def _dispatch(self, event: str, payload: str) -> None:
        try:
            body = json.loads(payload)
        except ValueError:
            return
        consent_id = body.get("consent_id") if isinstance(body, dict) else None
        if not isinstance(consent_id, str):
            return
        if event == "revoked":
            self._on_revoked(consent_id, _epoch(body.get("at")))
        elif self._on_suspended is not None:
            self._on_suspended(consent_id, event == "suspended", _epoch(body.get("at")))
