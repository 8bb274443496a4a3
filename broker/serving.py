"""How ``broker serve`` runs uvicorn.

The HTTP/1.1 parser is httptools (llhttp, in C) on uvloop: on the token endpoint's load,
uvicorn's pure-Python h11 parser alone capped a trivial Litestar endpoint at about 1,100
requests/s on our 2-core machines, against about 2,600 with httptools (bench/tokens.py
measures the broker's figure).

Two things uvicorn does not do for us, done here:

- TCP_NODELAY on every accepted connection. With ``--workers N`` uvicorn hands the listening
  socket to child processes, and the sockets they accept come without it here: a response
  written in two parts (head, then body) then waits for the client's delayed ACK, about 40 ms
  per request (measured: 44 ms instead of 2.4 ms for a GET).
- A bound on the request head (SECURITY J13: a huge header must not make the server hold it).
  httptools buffers a header until it is complete, whatever its size; the protocol counts the
  bytes of each request head as they arrive and answers ``431`` past ``MAX_HEAD_BYTES``,
  before parsing them.
- Time limits on what the client sends (slowloris). uvicorn times out an idle keep-alive
  connection, but not a request head sent one byte every few seconds, nor a body trickled
  slowly: each would hold its connection (and, for a body, the handler reading it) for as
  long as the client likes. The protocol gives a head ``BROKER_HEADER_TIMEOUT`` seconds from
  the connection or from its first byte, and a body ``BROKER_BODY_TIMEOUT`` seconds from the
  end of the head; past either it answers ``408`` (unless a response has begun) and closes.
  The handler reading the body then receives ``http.disconnect`` and ends.

The timeouts are read once per process from the environment with ``Settings.from_env()``:
uvicorn builds this protocol itself, in each worker process, and those inherit the
environment ``broker serve`` was started with.
"""

from __future__ import annotations

import asyncio
import functools
import socket

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from broker.settings import Settings

MAX_HEAD_BYTES = 16 * 1024


@functools.cache
def client_timeouts() -> tuple[float, float]:
    """(head, body) time limits in seconds, from this process's ``BROKER_*`` variables."""
    settings = Settings.from_env()
    return float(settings.header_timeout), float(settings.body_timeout)


def _no_delay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class BrokerHttpProtocol(HttpToolsProtocol):
    """httptools with TCP_NODELAY, a bounded request head and time limits on the client."""

    _in_head = True
    _head_bytes = 0
    _tail = b""  # the last bytes of the head so far, to find its end across reads
    _timer: asyncio.TimerHandle | None = None  # the head's or the body's deadline, if running

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        _no_delay(transport)
        super().connection_made(transport)
        # A connection that sends nothing at all is a head that never comes.
        self._start_timer(client_timeouts()[0])

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            if self._timer is None:
                # The first byte of a request on a kept-alive connection: its head's clock starts.
                self._start_timer(client_timeouts()[0])
            # Where does the head end in this read, if it does? Refuse before parsing when
            # the head goes past the bound: neither httptools nor the app sees it.
            end = (self._tail + data).find(b"\r\n\r\n")
            head_part = len(data) if end < 0 else end + 4 - len(self._tail)
            if self._head_bytes + head_part > MAX_HEAD_BYTES:
                self._refuse_head()
                return
            self._head_bytes += head_part
            self._tail = (self._tail + data)[-3:]
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True

    def on_headers_complete(self) -> None:
        self._in_head = False
        # The body's clock; a request without one completes at once and stops it.
        self._start_timer(client_timeouts()[1])
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._stop_timer()
        super().on_message_complete()
        self._in_head, self._head_bytes, self._tail = True, 0, b""

    def _start_timer(self, seconds: float) -> None:
        self._stop_timer()
        self._timer = self.loop.call_later(seconds, self._client_too_slow)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _client_too_slow(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if self._in_head:
            # Between requests: answer unless a previous (pipelined) response is still going.
            answer = self.cycle is None or self.cycle.response_complete
        else:
            answer = not self.cycle.response_started
        if answer:
            self._answer_and_close(b"408 Request Timeout", b"The request was not sent in time.")
        else:
            self.transport.close()

    def _refuse_head(self) -> None:
        self._answer_and_close(b"431 Request Header Fields Too Large", b"Request header fields too large.")

    def _answer_and_close(self, status: bytes, message: bytes) -> None:
        self.transport.write(
            b"HTTP/1.1 " + status + b"\r\n"
            b"content-type: text/plain; charset=utf-8\r\n"
            b"content-length: " + str(len(message)).encode("ascii") + b"\r\n"
            b"connection: close\r\n\r\n" + message
        )
        self.transport.close()
