"""The patient pages' cookies, all ``HttpOnly; SameSite=Lax; Path=/`` with no ``Domain``.

When the broker's issuer is https the names carry the ``__Host-`` prefix and the ``Secure``
attribute (RFC 6265bis §4.1.3.2: such a cookie cannot be set by a sibling domain nor over
http). In development over http on 127.0.0.1 a browser would drop a ``Secure`` or
``__Host-`` cookie, so plain names are used there.
"""

from __future__ import annotations

from typing import Any

from litestar import Request
from litestar.datastructures import Cookie

from broker.settings import Settings

SESSION = "broker_session"
CSRF = "broker_csrf"  # the pre-session CSRF secret (login and sign-up forms)
OIDC = "broker_oidc"  # the external log-in in progress (state, nonce, PKCE verifier)


def secure(settings: Settings) -> bool:
    return settings.issuer.startswith("https://")


def name(settings: Settings, base: str) -> str:
    return f"__Host-{base}" if secure(settings) else base


def read(request: Request[Any, Any, Any], settings: Settings, base: str) -> str | None:
    value = request.cookies.get(name(settings, base))
    return value or None


def make(settings: Settings, base: str, value: str, max_age: int | None = None) -> Cookie:
    return Cookie(
        key=name(settings, base),
        value=value,
        max_age=max_age,
        path="/",
        domain=None,
        secure=secure(settings),
        httponly=True,
        samesite="lax",
    )


def expired(settings: Settings, base: str) -> Cookie:
    return make(settings, base, "", max_age=0)
