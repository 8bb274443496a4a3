"""CSRF protection of every state-changing form (SECURITY W4, OWASP CSRF Prevention).

Two independent checks, both required:

1. **A token bound to the browser.** With a session cookie, the token is
   ``HMAC(secret, "csrf-session:" + session id)`` (synchronizer token derived from the
   session, so no storage). Without one (log-in and sign-up forms), it is the signed
   double-submit pattern: a random value in a pre-session cookie, and
   ``HMAC(secret, "csrf-pre-session:" + value)`` in the form. Another site can neither read
   the cookie nor compute the HMAC. Compared with ``hmac.compare_digest``.
2. **Fetch metadata.** A POST whose ``Sec-Fetch-Site`` says another site sent it, or whose
   ``Origin`` is not the broker's, is refused even with a valid token. Browsers that send
   neither header fall back on the token alone. ``SameSite=Lax`` is defence in depth only.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Any
from urllib.parse import urlsplit

from litestar import Request
from litestar.datastructures import Cookie

from broker.consent.patients import cookies
from broker.consent.patients.errors import CsrfRejected
from broker.settings import Settings

FIELD = "csrf_token"
_PENDING = "csrf_pre_session_value"  # request.state key: a pre-session value to set as cookie
ALLOWED_FETCH_SITES = ("same-origin", "none")  # "none": typed or bookmarked by the person


def _mac(settings: Settings, purpose: str, value: str) -> str:
    return hmac.new(settings.secret_key, f"{purpose}:{value}".encode(), hashlib.sha256).hexdigest()


def _expected(request: Request[Any, Any, Any], settings: Settings, pending: bool = False) -> str | None:
    session_id = cookies.read(request, settings, cookies.SESSION)
    if session_id:
        return _mac(settings, "csrf-session", session_id)
    pre = cookies.read(request, settings, cookies.CSRF) or (request.state.get(_PENDING) if pending else None)
    if pre:
        return _mac(settings, "csrf-pre-session", pre)
    return None


def csrf_token(request: Request[Any, Any, Any], settings: Settings) -> str:
    """The token for a hidden ``csrf_token`` input in a form of the current browser.

    The first page a browser sees gets a fresh pre-session value; ``render_page`` sets it as
    a cookie on the response (``pending_cookie``).
    """
    token = _expected(request, settings, pending=True)
    if token is None:
        request.state[_PENDING] = secrets.token_urlsafe(32)
        token = _expected(request, settings, pending=True)
        assert token is not None
    return token


def pending_cookie(request: Request[Any, Any, Any], settings: Settings) -> Cookie | None:
    value = request.state.get(_PENDING)
    return cookies.make(settings, cookies.CSRF, value) if value else None


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def allowed_origins(request: Request[Any, Any, Any], settings: Settings) -> set[str]:
    allowed = {_origin(settings.issuer)}
    if settings.dev_mode:
        # A developer may open http://localhost:8000 for an issuer of http://127.0.0.1:8000.
        allowed.add(f"{request.url.scheme}://{request.headers.get('host', '')}".lower())
    return allowed


def check_same_origin(request: Request[Any, Any, Any], settings: Settings) -> None:
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None and fetch_site.strip().lower() not in ALLOWED_FETCH_SITES:
        raise CsrfRejected(f"the form was sent from another site (Sec-Fetch-Site: {fetch_site})")
    origin = request.headers.get("origin")
    if origin is not None and origin.strip().lower() == "null" and fetch_site is not None:
        # Chromium sends "Origin: null" with a form posted from a page whose referrer policy
        # is no-referrer, as every patient page's is (Fetch, "serializing a request origin").
        # Sec-Fetch-Site, which no page can set, then tells where the form came from: it was
        # checked above to be this broker itself.
        return
    if origin is not None and origin.strip().lower() not in allowed_origins(request, settings):
        raise CsrfRejected("the form was sent from another origin")


def check_csrf(request: Request[Any, Any, Any], settings: Settings, submitted: str | None) -> None:
    """Raise ``CsrfRejected`` (403) unless the form comes from this broker's own page."""
    check_same_origin(request, settings)
    expected = _expected(request, settings)  # from the cookies the browser sent, nothing else
    if not submitted or expected is None:
        raise CsrfRejected("the form's security token is missing; reload the page and try again")
    if not hmac.compare_digest(expected.encode(), submitted.encode()):
        raise CsrfRejected("the form's security token does not match; reload the page and try again")
