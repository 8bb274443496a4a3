"""The holder's side of the patient link step (DESIGN step 4).

The broker sends the patient's browser to the holder's registered ``link_endpoint`` with
``state``, ``redirect_uri`` and ``broker`` (its issuer). The holder authenticates the
patient its own way, picks (or creates) the opaque handle it keeps for that patient, and
sends the browser back to ``redirect_uri`` with ``state`` and a ``link+jwt`` it signed::

    request = parse_link_request(query, trusted_issuers=["https://broker.example"])
    # ... the patient logs in at the holder ...
    location = link_response(request, key=holder_key, holder_id="labo-x", handle=handle)
    # answer 303 See Other, Location: location

The handle is what the broker's tokens carry back (``link_handle``): keep the mapping
handle -> patient record, and never use a national identifier as the handle.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit

from jwcrypto import jwk

from broker_sdk import _jose

__all__ = [
    "LINK_TYP",
    "LinkRequest",
    "LinkRequestError",
    "link_response",
    "link_token",
    "new_handle",
    "parse_link_request",
]

LINK_TYP = "link+jwt"
LINK_LIFETIME = 300  # the broker refuses answers living longer than its 10-minute window
_HANDLE = re.compile(r"^[A-Za-z0-9_\-]{16,64}$")


class LinkRequestError(ValueError):
    """The link request is not one to answer (unknown broker, foreign redirect, no state)."""


@dataclass(frozen=True)
class LinkRequest:
    """What the broker asked: answer ``state`` at ``redirect_uri`` (a page of ``broker``)."""

    state: str
    redirect_uri: str
    broker: str


def new_handle() -> str:
    """A fresh opaque handle for a patient (url-safe, 32 characters, 192 random bits)."""
    return secrets.token_urlsafe(24)


def parse_link_request(query: Mapping[str, str] | str, *, trusted_issuers: Collection[str]) -> LinkRequest:
    """Read and check the broker's link request (a query string or its parsed mapping).

    ``redirect_uri`` must be on the trusted broker's own origin: the holder never becomes an
    open redirector, and a signed handle never goes anywhere but to a broker it trusts.
    """
    params = dict(parse_qsl(query.lstrip("?"), keep_blank_values=True)) if isinstance(query, str) else query
    state, redirect_uri, broker = params.get("state"), params.get("redirect_uri"), params.get("broker")
    if not state or not redirect_uri or not broker:
        raise LinkRequestError("the link request needs state, redirect_uri and broker")
    if len(state) > 512:
        raise LinkRequestError("state is too long")
    if broker not in trusted_issuers:
        raise LinkRequestError("the link request comes from a broker this holder does not trust")
    target, origin = urlsplit(redirect_uri), urlsplit(broker)
    if (target.scheme, target.netloc) != (origin.scheme, origin.netloc) or target.fragment or target.username:
        raise LinkRequestError("redirect_uri is not on the broker's origin")
    if not (target.path + "/").startswith(origin.path.rstrip("/") + "/"):
        raise LinkRequestError("redirect_uri is outside the broker's path")
    return LinkRequest(state=state, redirect_uri=redirect_uri, broker=broker)


def link_token(
    *, key: jwk.JWK, holder_id: str, broker: str, state: str, handle: str, lifetime: int = LINK_LIFETIME
) -> str:
    """The ``link+jwt`` the broker verifies: iss = holder, aud = broker, ``state``, ``handle``."""
    if not _HANDLE.match(handle):
        raise ValueError("a handle is 16 to 64 letters, digits, - or _")
    if not key.get("kid"):
        raise ValueError("the key needs the kid registered at the broker")
    now = int(time.time())
    claims = {
        "iss": holder_id,
        "aud": broker,
        "iat": now,
        "exp": now + lifetime,
        "jti": secrets.token_urlsafe(18),
        "state": state,
        "handle": handle,
    }
    return _jose.sign(claims, key, typ=LINK_TYP)


def link_response(request: LinkRequest, *, key: jwk.JWK, holder_id: str, handle: str) -> str:
    """The URL to send the patient's browser back to (answer 303 with it as ``Location``)."""
    token = link_token(
        key=key, holder_id=holder_id, broker=request.broker, state=request.state, handle=handle
    )
    separator = "&" if "?" in request.redirect_uri else "?"
    return request.redirect_uri + separator + urlencode({"state": request.state, "link_token": token})
