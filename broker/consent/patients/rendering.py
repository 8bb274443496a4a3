"""``render_page``: an HTML page in the visitor's language, with the patient pages' headers.

Headers (SECURITY W1, W3): a strict Content-Security-Policy (no script runs but one carrying
the response's nonce; the page cannot be framed), ``X-Frame-Options: DENY`` for browsers
without CSP level 2, no Referer sent anywhere, nothing cached, no MIME sniffing, and HSTS
when the broker is served over https. ``form-action`` is left out on purpose: Chrome and
Safari apply it to the redirect that follows a form POST, which breaks the OAuth redirect to
an app after consent (w3c/webappsec #482).
"""

from __future__ import annotations

import secrets
from typing import Any
from urllib.parse import quote, urlsplit

from litestar import MediaType, Request, Response

from broker.consent.patients import cookies
from broker.consent.patients.csrf import csrf_token, pending_cookie
from broker.settings import Settings
from broker.web.i18n import LANGUAGE_COOKIE, LANGUAGE_NAMES, LANGUAGES, choose_language

DEFAULT_NEXT = "/account"
MAX_NEXT = 2000


def page_language(request: Request[Any, Any, Any]) -> str:
    return choose_language(request.cookies.get(LANGUAGE_COOKIE), request.headers.get("accept-language"))


def safe_next(value: str | None, default: str = DEFAULT_NEXT) -> str:
    """``value`` if it is a path on this broker, else ``default`` (no open redirect).

    Accepted: ``/path?query`` only. Refused: absolute URLs, scheme-relative ``//host``,
    backslashes (browsers read ``/\\host`` as ``//host``), control characters and whitespace.
    """
    if not value or len(value) > MAX_NEXT or not value.startswith("/"):
        return default
    if value.startswith("//") or "\\" in value or any(ord(ch) < 0x21 or ord(ch) == 0x7F for ch in value):
        return default
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or parts.fragment:
        return default
    return value


def security_headers(settings: Settings, nonce: str, language: str) -> dict[str, str]:
    headers = {
        "Content-Security-Policy": (
            f"default-src 'self'; script-src 'self' 'nonce-{nonce}'; style-src 'self'; img-src 'self'; "
            "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
        ),
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
        "Content-Language": language,
        "Vary": "Cookie, Accept-Language",
    }
    if cookies.secure(settings):
        headers["Strict-Transport-Security"] = "max-age=63072000; includeSubDomains"
    return headers


def current_target(request: Request[Any, Any, Any]) -> str:
    return request.url.path + (f"?{request.url.query}" if request.url.query else "")


def render_page(
    request: Request[Any, Any, Any],
    template_name: str,
    *,
    status_code: int = 200,
    headers: dict[str, str] | None = None,
    **context: Any,
) -> Response[str]:
    """Render ``template_name`` (which extends ``base.html``) as a complete response.

    The template receives ``csrf_token`` (for a hidden input of that name), ``csp_nonce``,
    ``language`` and the language links, besides ``context``.
    """
    state = request.app.state
    settings: Settings = state.settings
    language = page_language(request)
    nonce = secrets.token_urlsafe(16)
    here = quote(current_target(request), safe="")
    body = state.page_templates.get(language, template_name).render(
        csrf_token=csrf_token(request, settings),
        csp_nonce=nonce,
        language_links=[
            {"code": code, "name": LANGUAGE_NAMES[code], "href": f"/language?to={code}&next={here}"}
            for code in LANGUAGES
        ],
        oidc_name=settings.oidc_name if settings.oidc_enabled else None,
        **context,
    )
    response: Response[str] = Response(
        body,
        status_code=status_code,
        media_type=MediaType.HTML,
        headers={**security_headers(settings, nonce, language), **(headers or {})},
    )
    cookie = pending_cookie(request, settings)
    if cookie is not None:
        response.set_cookie(cookie)
    return response
