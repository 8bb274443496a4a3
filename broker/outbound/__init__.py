"""The guarded client for every URL the broker fetches on behalf of someone (SECURITY.md A5).

App ``jwks_uri``, holder keys, peer brokers' federation documents: all go through here, and
nothing else in the broker opens an outbound connection to a URL someone else chose.

::

    from broker.outbound import DOCUMENT, JwksCache, OutboundPolicy, OutboundRefused, fetch_json

    policy = OutboundPolicy.from_settings(settings)          # once per process
    document = fetch_json(url, kind=DOCUMENT, policy=policy)   # dict, or OutboundRefused
    statement = fetch_bytes(url, kind=ENTITY_STATEMENT, policy=policy)  # a JWT's bytes
    keys = JwksCache(policy).get(jwks_uri, kid)              # {"keys": [...]}, cached

What every fetch enforces:

- S1 ``https`` only (development mode: also ``http`` to ``localhost`` or a loopback literal,
  on any port); port 443 unless listed in ``BROKER_OUTBOUND_ALLOWED_PORTS``; no user info; no
  IP-literal host outside development loopback; host names IDNA-encoded to ASCII.
- S0/S2 the host is resolved with getaddrinfo on each connection and refused if *any* address
  is not global or lies in the deny set (private, loopback, link-local and metadata, CGNAT,
  multicast, reserved, documentation, and every IPv6 form embedding IPv4); the socket goes to
  a checked address while TLS (SNI, certificate) and ``Host`` keep the name.
- S3 no automatic redirects: at most 2, each checked again; https→http refused;
  ``same_origin=True`` (used for jwks_uri) refuses cross-origin hops.
- S4 2 s to resolve (getaddrinfo in a thread, waited for until then), 2 s to connect, 5 s
  for everything; the body is capped per kind on decoded bytes
  while it streams (``JWKS`` 64 KiB, ``DOCUMENT`` and ``ENTITY_STATEMENT`` 256 KiB);
  Content-Type allow-listed per kind; JSON strict, with a depth limit checked before parsing.
- S5 ``trust_env=False`` (no proxy variables, no .netrc), no cookies, no credentials, a fixed
  User-Agent.
- S6 one error, ``OutboundRefused``, whose public message is always ``PUBLIC_MESSAGE``; the
  cause is ``exc.reason``, logged on the ``broker.outbound`` logger.
- S8 ``JwksCache``: TTL ≤ 20 minutes, a minimum refetch interval, one refetch on unknown kid.

The API is synchronous, like the broker's services; call it from a worker thread, not from
the event loop. Tests build an ``OutboundPolicy`` with a fake ``resolver``, a short
``deadline``, their own ``ssl_context`` and ``public_stand_ins`` (loopback addresses that count
as public), because tests may send packets to loopback only.

Errors::

    BrokerError (broker.errors)
    └── OutboundRefused            502, generic message; ``reason`` for logs and tests
"""

from broker.outbound.addresses import Target, address_problem, check_url
from broker.outbound.errors import PUBLIC_MESSAGE, OutboundRefused
from broker.outbound.fetch import (
    DOCUMENT,
    ENTITY_STATEMENT,
    JWKS,
    MAX_REDIRECTS,
    USER_AGENT,
    FetchKind,
    fetch_bytes,
    fetch_json,
    parse_json,
)
from broker.outbound.jwks import MAX_TTL, JwksCache
from broker.outbound.transport import OutboundPolicy, Resolver, system_resolver

__all__ = [
    "DOCUMENT",
    "ENTITY_STATEMENT",
    "JWKS",
    "MAX_REDIRECTS",
    "MAX_TTL",
    "PUBLIC_MESSAGE",
    "USER_AGENT",
    "FetchKind",
    "JwksCache",
    "OutboundPolicy",
    "OutboundRefused",
    "Resolver",
    "Target",
    "address_problem",
    "check_url",
    "fetch_bytes",
    "fetch_json",
    "parse_json",
    "system_resolver",
]
