"""Fetching one document: redirects (S3), limits (S4), a bare client (S5), one error (S6)."""

from __future__ import annotations

import http.cookiejar
import json
import logging
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpcore
import httpx

from broker.outbound.addresses import Target, check_url
from broker.outbound.errors import OutboundRefused
from broker.outbound.transport import OutboundPolicy, PinnedTransport
from broker.strictjson import json_depth, no_duplicate_keys

logger = logging.getLogger("broker.outbound")

USER_AGENT = "consent-broker-fetcher/1 (+https://consent-broker.example/outbound)"
MAX_REDIRECTS = 2
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


@dataclass(frozen=True)
class FetchKind:
    """What a fetch expects: media types, decoded size cap, JSON nesting depth."""

    name: str
    max_bytes: int
    content_types: frozenset[str]
    max_depth: int = 32


JWKS = FetchKind("jwks", 64 * 1024, frozenset({"application/json", "application/jwk-set+json"}), 8)
DOCUMENT = FetchKind("document", 256 * 1024, frozenset({"application/json"}), 32)
#: OpenID Federation 1.0 §9: entity configurations and statements are JWTs.
ENTITY_STATEMENT = FetchKind(
    "entity-statement", 256 * 1024, frozenset({"application/entity-statement+jwt", "application/jwt"})
)


def _no_cookies() -> http.cookiejar.CookieJar:
    # S5: a cookie set by one hop is never sent to the next one.
    return http.cookiejar.CookieJar(policy=http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))


def _safe_for_log(url: str) -> str:
    """Scheme, host, port and path: enough to investigate, without a query that may hold secrets."""
    try:
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}{parts.path}"
    except ValueError:
        return "<unparsable URL>"


def _target(url: str, policy: OutboundPolicy) -> Target:
    checked = check_url(url, dev_mode=policy.dev_mode, allowed_ports=policy.allowed_ports)
    if isinstance(checked, str):
        raise OutboundRefused(checked)
    return checked


def _read_body(response: httpx.Response, cap: int, deadline_at: float) -> bytes:
    """S4: the decoded body, refused as soon as it passes ``cap`` bytes.

    httpx would inflate gzip itself, one network chunk at a time and without bound (64 KiB of
    gzip can hold 64 MiB), so the broker asks for ``identity``, reads the raw bytes and inflates
    them itself with an output limit.
    """
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    decoder: Any
    if encoding in ("", "identity"):
        decoder = None
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > cap:
            raise OutboundRefused(f"Content-Length {declared} is over the {cap}-byte cap")
    elif encoding in ("gzip", "x-gzip"):
        decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
    elif encoding == "deflate":
        decoder = zlib.decompressobj()
    else:
        raise OutboundRefused(f"unsupported Content-Encoding {encoding!r}")
    body = bytearray()
    for chunk in response.iter_raw():
        if time.monotonic() > deadline_at:
            raise OutboundRefused("the total deadline passed while reading the body")
        if decoder is None:
            body += chunk
        else:
            try:
                # max_length ≥ 1 here: an output limit, never "unlimited" (which 0 would mean).
                body += decoder.decompress(chunk, cap + 1 - len(body))
            except zlib.error as exc:
                raise OutboundRefused(f"the body does not inflate: {exc}") from None
        if len(body) > cap:
            raise OutboundRefused(f"the decoded body is over the {cap}-byte cap")
    if decoder is not None:
        if decoder.unconsumed_tail:
            raise OutboundRefused(f"the decoded body is over the {cap}-byte cap")
        body += decoder.flush()
        if len(body) > cap:
            raise OutboundRefused(f"the decoded body is over the {cap}-byte cap")
    return bytes(body)


def _get(
    url: str,
    kind: FetchKind,
    policy: OutboundPolicy,
    same_origin: bool,
    form: Mapping[str, str] | None = None,
) -> bytes:
    deadline_at = time.monotonic() + policy.deadline
    first = target = _target(url, policy)
    timeout = httpx.Timeout(
        connect=policy.connect_timeout, read=policy.deadline, write=policy.deadline, pool=policy.deadline
    )
    headers = {
        "User-Agent": USER_AGENT,
        "Accept": ", ".join(sorted(kind.content_types)),
        "Accept-Encoding": "identity",
    }
    with httpx.Client(
        transport=PinnedTransport(policy, deadline_at),
        trust_env=False,  # S5: no proxy variables, no .netrc, no SSL_CERT_FILE
        follow_redirects=False,  # S3: each hop is checked here
        cookies=_no_cookies(),
        headers=headers,
        timeout=timeout,
    ) as client:
        for hop in range(MAX_REDIRECTS + 1):
            method = "GET" if form is None else "POST"
            with client.stream(method, target.url, data=form) as response:
                if response.status_code in _REDIRECT_STATUSES:
                    if form is not None:
                        raise OutboundRefused(f"redirect {response.status_code} in answer to a form")
                    location = response.headers.get("location")
                    if not location:
                        raise OutboundRefused(f"redirect {response.status_code} without Location")
                    if hop == MAX_REDIRECTS:
                        raise OutboundRefused(f"more than {MAX_REDIRECTS} redirects")
                    following = _target(urljoin(target.url, location), policy)
                    if target.scheme == "https" and following.scheme != "https":
                        raise OutboundRefused(f"redirect from https to {following.scheme}")
                    if same_origin and following.origin != first.origin:
                        raise OutboundRefused(f"cross-origin redirect to {_safe_for_log(following.url)}")
                    target = following
                    continue
                if response.status_code != 200:
                    raise OutboundRefused(f"status {response.status_code}")
                media_type = response.headers.get("content-type", "").split(";", 1)[0].strip().lower()
                if media_type not in kind.content_types:
                    allowed = ", ".join(sorted(kind.content_types))
                    raise OutboundRefused(f"Content-Type {media_type!r} is not one of {allowed}")
                return _read_body(response, kind.max_bytes, deadline_at)
    raise AssertionError("unreachable: the loop returns or raises")


def fetch_bytes(
    url: str,
    *,
    kind: FetchKind,
    policy: OutboundPolicy,
    same_origin: bool = False,
    form: Mapping[str, str] | None = None,
) -> bytes:
    """GET ``url`` under S1–S5; the decoded body. Raises ``OutboundRefused`` only (S6).

    With ``form``, a POST of that ``application/x-www-form-urlencoded`` body instead (OpenID
    Federation's trust mark status endpoint); a redirect in answer to it is refused.
    """
    try:
        return _get(url, kind, policy, same_origin, form)
    except OutboundRefused as exc:
        refused = exc
    except (httpx.HTTPError, httpcore.TimeoutException) as exc:
        refused = OutboundRefused(f"{type(exc).__name__}: {exc}")
    except (httpcore.NetworkError, httpcore.ProtocolError, OSError) as exc:
        # TLS failures arrive as httpcore.ConnectError (an httpcore.NetworkError).
        refused = OutboundRefused(f"{type(exc).__name__}: {exc}")
    logger.warning("outbound %s fetch of %s refused: %s", kind.name, _safe_for_log(url), refused.reason)
    raise refused from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json(raw: bytes, *, max_depth: int) -> Any:
    """Strict JSON: UTF-8, no duplicate members, no NaN, bounded depth."""
    text = raw.decode("utf-8")
    if json_depth(text) > max_depth:
        raise ValueError(f"nested deeper than {max_depth}")
    return json.loads(text, object_pairs_hook=no_duplicate_keys, parse_constant=_refuse_constant)


def fetch_json(
    url: str, *, kind: FetchKind, policy: OutboundPolicy, same_origin: bool = False
) -> dict[str, Any]:
    """``fetch_bytes``, then strict JSON whose top level is an object."""
    raw = fetch_bytes(url, kind=kind, policy=policy, same_origin=same_origin)
    try:
        document = parse_json(raw, max_depth=kind.max_depth)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        refused = OutboundRefused(f"the body is not acceptable JSON: {exc}")
    else:
        if isinstance(document, dict):
            return document
        refused = OutboundRefused("the JSON document is not an object")
    logger.warning("outbound %s fetch of %s refused: %s", kind.name, _safe_for_log(url), refused.reason)
    raise refused
