"""The pinned connection (S2) under a total deadline (S4).

httpx hands the connection pool a URL; the pool asks its network backend to
``connect_tcp(host, port)``. Our backend resolves ``host`` itself, checks every address with
S0, and opens the socket to a checked address only. The pool then starts TLS with the original
host name (SNI and certificate check) and sends ``Host`` from the URL, so the peer sees the
name while the broker connects to the address it checked. Every connection, redirect hops
included, resolves and checks anew, and nothing else resolves the name: no rebinding window.
"""

from __future__ import annotations

import socket
import ssl
import time
import typing
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field

import httpcore
import httpx

from broker.outbound.addresses import address_problem, is_ip_literal
from broker.outbound.errors import OutboundRefused

#: ``resolver(host, port)``: the IP addresses of ``host``, as strings.
Resolver = Callable[[str, int], Sequence[str]]


def system_resolver(host: str, port: int) -> list[str]:
    """getaddrinfo, every address it returns (S2 checks them all)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


# getaddrinfo has no timeout of its own and cannot be interrupted: it runs in one of these
# threads and the fetch waits for it only until its deadline. A resolution that hangs keeps
# its thread until the system resolver gives up; with the pool bounded, hanging names cannot
# pile up threads, and a fetch whose resolution waits behind them times out like the rest.
_RESOLVER_THREADS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="broker-resolve")


def resolve_within(resolver: Resolver, host: str, port: int, timeout: float) -> Sequence[str]:
    """``resolver(host, port)``, or ``OutboundRefused`` if it takes more than ``timeout`` s."""
    if timeout <= 0:
        raise OutboundRefused(f"no time left to resolve {host!r}")
    future = _RESOLVER_THREADS.submit(resolver, host, port)
    try:
        return future.result(timeout=timeout)
    except FutureTimeout:
        future.cancel()  # if still queued; a running getaddrinfo finishes in its thread
        raise OutboundRefused(f"resolving {host!r} took more than {timeout:.1f} s") from None


def _default_ssl_context() -> ssl.SSLContext:
    context = httpx.create_ssl_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


@dataclass(frozen=True)
class OutboundPolicy:
    """How the broker fetches: one per deployment, from ``OutboundPolicy.from_settings``.

    The defaults are the production rules; tests replace the resolver, shorten the deadline,
    trust a local certificate authority and name loopback stand-ins for public addresses.
    """

    dev_mode: bool = False
    allowed_ports: frozenset[int] = frozenset({443})
    resolver: Resolver = system_resolver
    connect_timeout: float = 2.0
    resolve_timeout: float = 2.0
    deadline: float = 5.0
    ssl_context: ssl.SSLContext = field(default_factory=_default_ssl_context)
    public_stand_ins: frozenset[str] = frozenset()

    @classmethod
    def from_settings(cls, settings: typing.Any) -> OutboundPolicy:
        """From ``broker.settings.Settings``: development mode and the allowed ports."""
        return cls(dev_mode=settings.dev_mode, allowed_ports=settings.outbound_allowed_ports)

    def pinned_address(self, host: str, port: int, deadline_at: float | None = None) -> str:
        """S2: resolve ``host``; refuse if any address fails S0; the address to connect to.

        S4: resolution ends by ``resolve_timeout`` and by the fetch's deadline.
        """
        if is_ip_literal(host):
            addresses: Sequence[str] = [host]
        else:
            timeout = self.resolve_timeout
            if deadline_at is not None:
                timeout = min(timeout, deadline_at - time.monotonic())
            try:
                addresses = list(resolve_within(self.resolver, host, port, timeout))
            except (OSError, UnicodeError) as exc:
                raise OutboundRefused(f"resolving {host!r} failed: {exc}") from None
        if not addresses:
            raise OutboundRefused(f"{host!r} has no address")
        for address in addresses:
            problem = address_problem(
                address, loopback_allowed=self.dev_mode, public_stand_ins=self.public_stand_ins
            )
            if problem:
                raise OutboundRefused(f"{host!r} resolves to a refused address: {problem}")
        return addresses[0]


class _DeadlineStream(httpcore.NetworkStream):
    """A socket whose every read and write ends by the fetch's deadline (slow peers)."""

    def __init__(self, inner: httpcore.NetworkStream, deadline_at: float) -> None:
        self._inner = inner
        self._deadline_at = deadline_at

    def _remaining(self, timeout: float | None) -> float:
        remaining = self._deadline_at - time.monotonic()
        if remaining <= 0:
            raise httpcore.ReadTimeout("the total deadline has passed")
        return remaining if timeout is None else min(timeout, remaining)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, self._remaining(timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, self._remaining(timeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        inner = self._inner.start_tls(ssl_context, server_hostname, self._remaining(timeout))
        return _DeadlineStream(inner, self._deadline_at)

    def get_extra_info(self, info: str) -> typing.Any:
        return self._inner.get_extra_info(info)


class _PinnedBackend(httpcore.NetworkBackend):
    def __init__(self, policy: OutboundPolicy, deadline_at: float) -> None:
        self._policy = policy
        self._deadline_at = deadline_at
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[typing.Any] | None = None,
    ) -> httpcore.NetworkStream:
        address = self._policy.pinned_address(host, port, self._deadline_at)
        remaining = self._deadline_at - time.monotonic()
        if remaining <= 0:
            raise OutboundRefused("the total deadline passed before connecting")
        limit = min(self._policy.connect_timeout, remaining)
        stream = self._inner.connect_tcp(address, port, timeout=limit)
        return _DeadlineStream(stream, self._deadline_at)

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[typing.Any] | None = None,
    ) -> httpcore.NetworkStream:
        raise OutboundRefused("unix sockets are never used")

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _ResponseStream(httpx.SyncByteStream):
    def __init__(self, inner: Iterable[bytes]) -> None:
        self._inner = inner

    def __iter__(self) -> Iterator[bytes]:
        yield from self._inner

    def close(self) -> None:
        close = getattr(self._inner, "close", None)
        if close is not None:
            close()


class PinnedTransport(httpx.BaseTransport):
    """An httpx transport over a pool whose only way out is ``_PinnedBackend``."""

    def __init__(self, policy: OutboundPolicy, deadline_at: float) -> None:
        self._pool = httpcore.ConnectionPool(
            ssl_context=policy.ssl_context,
            max_connections=1,
            max_keepalive_connections=0,  # every hop connects, so every hop is checked
            http1=True,
            http2=False,
            retries=0,
            network_backend=_PinnedBackend(policy, deadline_at),
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.SyncByteStream)
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        response = self._pool.handle_request(core_request)
        assert isinstance(response.stream, Iterable)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_ResponseStream(response.stream),
            extensions=response.extensions,
        )

    def close(self) -> None:
        self._pool.close()
