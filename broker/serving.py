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
"""

from __future__ import annotations

import asyncio
import socket

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEAD_BYTES = 16 * 1024


def _no_delay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class BrokerHttpProtocol(HttpToolsProtocol):
    """httptools with TCP_NODELAY and a bounded request head."""

    _in_head = True
    _head_bytes = 0
    _tail = b""  # the last bytes of the head so far, to find its end across reads

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        _no_delay(transport)
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._in_head:
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
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head, self._head_bytes, self._tail = True, 0, b""

    def _refuse_head(self) -> None:
        message = b"Request header fields too large."
        self.transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
            b"content-type: text/plain; charset=utf-8\r\n"
            b"content-length: " + str(len(message)).encode("ascii") + b"\r\n"
            b"connection: close\r\n\r\n" + message
        )
        self.transport.close()
