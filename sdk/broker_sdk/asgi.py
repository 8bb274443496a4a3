"""ASGI middleware for holders: Litestar, Starlette, FastAPI, or any ASGI 3 application.

Every HTTP request outside ``public_paths`` must carry a broker access token
(``Authorization: Bearer …`` or ``DPoP …`` with its ``DPoP`` proof). The verified token is put
in the ASGI scope under ``scope["broker_token"]`` (and ``scope["state"]["broker_token"]``,
where Starlette's ``request.state`` and Litestar's ``request.state`` read it). Refusals
follow RFC 6750 §3 and RFC 9449 §7.1: 401 with ``WWW-Authenticate`` naming the error, 403
``insufficient_scope``, and 503 when the broker's status cannot be known (fail closed).

A token seen before is checked inline; one that needs the network (first sight, or a status
list to refresh) is checked in a worker thread, so the event loop never waits on the broker.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Collection, MutableMapping
from typing import Any
from urllib.parse import parse_qs

from broker_sdk.errors import BrokerUnavailable, InsufficientScope, TokenInvalid, VerificationError
from broker_sdk.verifier import HolderVerifier, VerifiedToken, parse_authorization

__all__ = ["SCOPE_KEY", "BrokerAuthMiddleware", "www_authenticate"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

SCOPE_KEY = "broker_token"


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def www_authenticate(
    error: VerificationError | None, *, realm: str | None = None, dpop_algs: Collection[str] = ("ES256",)
) -> str:
    """The ``WWW-Authenticate`` value: a Bearer and a DPoP challenge (RFC 6750 §3, RFC 9449 §7.1)."""
    params: list[str] = []
    if realm:
        params.append(f"realm={_quoted(realm)}")
    if error is not None:
        params.append(f"error={_quoted(error.error)}")
        params.append(f"error_description={_quoted(error.description)}")
        if isinstance(error, InsufficientScope) and error.missing:
            params.append(f"scope={_quoted(' '.join(sorted(error.missing)))}")
    bearer = "Bearer" + (" " + ", ".join(params) if params else "")
    dpop = "DPoP " + ", ".join([*params, f"algs={_quoted(' '.join(dpop_algs))}"])
    if error is not None and error.error == "invalid_dpop_proof":
        return dpop
    return f"{bearer}, {dpop}"


class BrokerAuthMiddleware:
    """Wraps an ASGI app so that its HTTP routes need a valid broker token.

    ``categories``: the data categories a request needs, from its scope (for example by
    path: ``lambda scope: {"lab_results"}``); ``None`` asks for none beyond a valid token.
    ``public_origin``: this holder's public ``scheme://host[:port]`` (what DPoP proofs name
    in ``htu``); by default the request's own scheme and ``Host`` header.
    """

    def __init__(
        self,
        app: ASGIApp,
        verifier: HolderVerifier,
        *,
        categories: Callable[[Scope], Collection[str]] | None = None,
        public_paths: Collection[str] = (),
        public_origin: str | None = None,
        realm: str | None = None,
    ) -> None:
        self.app = app
        self.verifier = verifier
        self.categories = categories
        self.public_paths = tuple(public_paths)
        self.public_origin = public_origin.rstrip("/") if public_origin else None
        self.realm = realm

    def _is_public(self, path: str) -> bool:
        return any(path == p or (p.endswith("/") and path.startswith(p)) for p in self.public_paths)

    def _url(self, scope: Scope, headers: dict[str, str]) -> str:
        raw = scope.get("raw_path")
        path = raw.decode("latin-1") if isinstance(raw, bytes) else scope.get("root_path", "") + scope["path"]
        path = path.split("?", 1)[0]
        if self.public_origin:
            return self.public_origin + path
        host = headers.get("host") or "{}:{}".format(*(scope.get("server") or ("localhost", 80)))
        return f"{scope.get('scheme', 'http')}://{host}{path}"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._is_public(scope["path"]):
            await self.app(scope, receive, send)
            return
        headers: dict[str, str] = {}
        dpop_count = 0
        for name, value in scope.get("headers", []):
            key = name.decode("latin-1").lower()
            if key == "dpop":
                dpop_count += 1
            headers[key] = value.decode("latin-1")
        try:
            if "access_token" in parse_qs(scope.get("query_string", b"").decode("latin-1")):
                # RFC 9700 §4.3.2: tokens never travel in URLs.
                raise TokenInvalid("access tokens are not accepted in the query string", reason="query")
            if dpop_count > 1:
                raise TokenInvalid("exactly one DPoP header is allowed", reason="dpop")
            scheme, token = parse_authorization(headers.get("authorization"))
            needed = self.categories(scope) if self.categories is not None else ()
            kwargs: dict[str, Any] = {
                "categories": needed,
                "scheme": scheme,
                "dpop": headers.get("dpop"),
                "method": scope["method"],
                "url": self._url(scope, headers),
            }
            verified: VerifiedToken
            if self.verifier.is_warm(token):
                verified = self.verifier.verify(token, **kwargs)
            else:
                verified = await asyncio.to_thread(self.verifier.verify, token, **kwargs)
        except VerificationError as exc:
            await self._refuse(send, exc, missing=not headers.get("authorization"))
            return
        scope[SCOPE_KEY] = verified
        state = scope.setdefault("state", {})
        if isinstance(state, dict):
            state[SCOPE_KEY] = verified
        await self.app(scope, receive, send)

    async def _refuse(self, send: Send, error: VerificationError, *, missing: bool) -> None:
        if isinstance(error, BrokerUnavailable):
            body = {
                "type": "about:blank",
                "title": "The consent broker cannot be reached",
                "status": 503,
                "detail": "the consent's status cannot be checked now; try again shortly",
            }
            headers = [(b"content-type", b"application/problem+json"), (b"retry-after", b"5")]
        else:
            # RFC 6750 §3.1: a request without credentials gets the challenge without an error.
            challenge = www_authenticate(
                None if missing else error, realm=self.realm, dpop_algs=self.verifier.dpop_algorithms
            )
            body = {"error": error.error, "error_description": error.description}
            headers = [
                (b"content-type", b"application/json"),
                (b"www-authenticate", challenge.encode("latin-1", errors="replace")),
            ]
        payload = json.dumps(body).encode()
        headers += [(b"cache-control", b"no-store"), (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": error.status_code, "headers": headers})
        await send({"type": "http.response.body", "body": payload})
