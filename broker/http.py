"""Small pieces shared by the JSON routes: body parsing, bearer tokens, the unit of work."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from typing import Annotated, Any, TypeVar

from anyio import CapacityLimiter, to_thread
from litestar import Request
from litestar.params import Parameter
from sqlalchemy.orm import Session, sessionmaker

from broker import strictjson
from broker.db import transaction
from broker.errors import BrokerError, InvalidRequest

T = TypeVar("T")

#: A size or position in the broker's tables (tree sizes, leaf indexes, status list ids), as a
#: path or query parameter: a 64-bit column holds it. Beyond, the database driver refuses the
#: number (SQLite: ``OverflowError``) and the request would end in a 500, not a 400.
Position = Annotated[int, Parameter(ge=0, le=2**63 - 1)]

# Answers that carry secrets or one patient's data are never cached (RFC 6749 §5.1).
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class UnsupportedMediaType(BrokerError):
    status = 415
    slug = "unsupported-media-type"
    title = "The body must be JSON"


class MalformedJSON(BrokerError):
    status = 400
    slug = "malformed-json"
    title = "The body is not valid JSON"


async def json_body(request: Request[Any, Any, Any]) -> Any:
    """The request's JSON body; 415 for another media type, 400 for broken JSON."""
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        raise UnsupportedMediaType(f"Content-Type must be application/json, not {media_type or 'missing'!r}")
    raw = await request.body()
    try:
        return strictjson.loads(raw)
    except ValueError as exc:
        raise MalformedJSON(f"the body is not valid UTF-8 JSON: {exc}") from None


def refuse_nul_characters(request: Request[Any, Any, Any]) -> None:
    """Litestar ``before_request``: a NUL character in the path or the query is a 400.

    PostgreSQL text cannot hold NUL (0x00): a string carrying one would fail in the database,
    a 500 instead of an answer saying what is wrong. Bodies are checked where they are read
    (``strictjson.loads``, the OAuth form).
    """
    query = request.scope.get("query_string", b"")
    if "\x00" in request.scope["path"] or b"\x00" in query or b"%00" in query:
        raise InvalidRequest("the request contains a NUL character (%00)")


def bearer_token(request: Request[Any, Any, Any]) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


Networks = Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]


def forwarded_address(peer: str | None, forwarded_for: str | None, trusted: Networks) -> str:
    """The client's address: the peer's, unless the peer is a trusted proxy.

    Behind trusted proxies, ``X-Forwarded-For`` is read from the right (each proxy appends
    the address it saw) and the first address that is not a trusted proxy is the client's:
    anything left of it was written by the client and proves nothing (SECURITY A1 §4.13).
    """
    if not peer:
        return "unknown"
    if not trusted or not _in_networks(peer, trusted):
        return peer
    address = peer
    for item in reversed((forwarded_for or "").split(",")):
        candidate = item.strip()
        try:
            ipaddress.ip_address(candidate)
        except ValueError:
            break  # garbage: stop at the last address a trusted proxy vouched for
        address = candidate
        if not _in_networks(candidate, trusted):
            break
    return address


def _in_networks(address: str, networks: Networks) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


def client_address(request: Request[Any, Any, Any]) -> str:
    """The address of the client of ``request``, trusting ``BROKER_TRUSTED_PROXIES`` only."""
    return forwarded_address(
        request.client.host if request.client else None,
        request.headers.get("x-forwarded-for"),
        request.app.state.settings.trusted_proxies,
    )


class _DatabaseThreads:
    """How many threads of a process do database work at once (``BROKER_DB_THREADS``).

    anyio's default allows 40: on the token endpoint's load that many threads spent their time
    waiting for the GIL while one of them held SQLite's write lock, and opened connections
    beyond the pool's size only to close them again.
    """

    size = 8
    _limiter: CapacityLimiter | None = None

    @classmethod
    def configure(cls, size: int) -> None:
        if size != cls.size or cls._limiter is None:
            cls.size, cls._limiter = size, CapacityLimiter(size)

    @classmethod
    def limiter(cls) -> CapacityLimiter:
        if cls._limiter is None:
            cls._limiter = CapacityLimiter(cls.size)
        return cls._limiter


configure_database_threads = _DatabaseThreads.configure


async def in_transaction(
    factory: sessionmaker[Session], work: Callable[[Session], T], *, inline: bool = False
) -> T:
    """Run ``work`` in a worker thread inside one transaction, committed once at the end.

    ``inline`` runs it on the event loop's own thread instead: only for short units of work on
    an embedded SQLite database, where handing the work to a thread and back costs more than
    the work (the token endpoint: 2.96 against 3.31 ms of CPU per refresh with one thread).
    """

    def run() -> T:
        with transaction(factory) as session:
            return work(session)

    if inline:
        return run()
    return await to_thread.run_sync(run, limiter=_DatabaseThreads.limiter())
