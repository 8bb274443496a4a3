"""Slow clients against a real ``broker serve`` process (slowloris).

The broker under test runs with ``BROKER_HEADER_TIMEOUT=2`` and ``BROKER_BODY_TIMEOUT=3``
(``conftest.py``). A client that sends its request head a byte at a time, sends nothing at
all, or trickles its body is answered ``408`` and disconnected once its time is up, instead
of holding the connection for as long as it likes; while such clients hang on, everyone
else is served; a request that arrives in pieces within its time is served as usual.

No assertion is about how fast anything is: a socket timeout of 20 s only stops a test
that would otherwise wait forever (what the broker did before these limits).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import httpx

from tests.attacks.live import Live
from tests.factories import app_registration

HANG_LIMIT = 20.0  # seconds: past this the server is holding the connection "forever"


def connect(live: Live) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", live.broker.ports["broker"]), timeout=HANG_LIMIT)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (or HANG_LIMIT passes)."""
    answer = b""
    try:
        while data := sock.recv(65536):
            answer += data
    except (ConnectionResetError, TimeoutError):
        pass
    return answer


class Trickle(threading.Thread):
    """Sends ``data`` one byte every ``pause`` seconds until done or the server hangs up."""

    def __init__(self, sock: socket.socket, data: bytes, pause: float) -> None:
        super().__init__(daemon=True)
        self.sock, self.data, self.pause = sock, data, pause
        self.sent = 0
        self.stopped_by_server = False

    def run(self) -> None:
        for i in range(len(self.data)):
            try:
                self.sock.sendall(self.data[i : i + 1])
            except OSError:
                self.stopped_by_server = True
                return
            self.sent += 1
            time.sleep(self.pause)


@contextmanager
def slow_connection(live: Live, data: bytes, pause: float = 0.25) -> Iterator[tuple[socket.socket, Trickle]]:
    sock = connect(live)
    trickle = Trickle(sock, data, pause)
    trickle.start()
    try:
        yield sock, trickle
    finally:
        sock.close()


def assert_served_meanwhile(live: Live, times: int = 5) -> None:
    with httpx.Client(base_url=live.base_url, timeout=HANG_LIMIT) as http:
        for _ in range(times):
            assert http.get("/jwks.json").status_code == 200


def assert_timed_out(answer: bytes) -> None:
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert b"connection: close" in answer.lower()


HEAD = b"GET /jwks.json HTTP/1.1\r\nHost: broker\r\nUser-Agent: " + b"s" * 400 + b"\r\n\r\n"


def test_a_head_sent_byte_by_byte_is_cut_and_others_are_served(live: Live) -> None:
    with slow_connection(live, HEAD) as (sock, trickle):
        assert_served_meanwhile(live)
        answer = read_until_closed(sock)
    assert_timed_out(answer)
    assert trickle.sent < len(HEAD), "the whole head was sent: the limit was not what stopped it"


def test_a_connection_that_sends_nothing_is_closed(live: Live) -> None:
    with connect(live) as sock:
        assert_timed_out(read_until_closed(sock))


def test_many_slow_heads_at_once_do_not_stop_the_broker(live: Live) -> None:
    with ExitStack() as stack:
        slow = [stack.enter_context(slow_connection(live, HEAD, pause=0.5)) for _ in range(100)]
        assert_served_meanwhile(live, times=20)
        answers = [read_until_closed(sock) for sock, _ in slow]
    for answer in answers:
        assert_timed_out(answer)
    assert_served_meanwhile(live)


def registration_head(length: int) -> bytes:
    return (
        b"POST /register HTTP/1.1\r\nHost: broker\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(length).encode() + b"\r\n\r\n"
    )


def catalog_size(live: Live) -> int:
    listing = httpx.get(f"{live.base_url}/api/catalog/apps", params={"limit": 100}, timeout=HANG_LIMIT)
    assert listing.status_code == 200, listing.text
    return len(listing.json()["items"])


def test_a_body_trickled_slowly_is_cut_and_nothing_is_registered(live: Live) -> None:
    body = json.dumps(app_registration(name="Appli Lente", redirect_uris=["https://lente.example/cb"])).encode()
    before = catalog_size(live)
    with connect(live) as sock:
        sock.sendall(registration_head(len(body)))
        trickle = Trickle(sock, body, pause=0.25)
        trickle.start()
        assert_served_meanwhile(live)
        answer = read_until_closed(sock)
    assert_timed_out(answer)
    assert trickle.sent < len(body)
    assert catalog_size(live) == before


def test_a_request_in_pieces_within_its_time_is_served(live: Live) -> None:
    """The limits are on the whole head and body, not on each read: pieces are fine."""
    body = json.dumps(app_registration(name="Appli Patiente", redirect_uris=["https://patiente.example/cb"]))
    raw = registration_head(len(body.encode())) + body.encode()
    with connect(live) as sock:
        for start in range(0, len(raw), len(raw) // 4 + 1):
            sock.sendall(raw[start : start + len(raw) // 4 + 1])
            time.sleep(0.3)
        head = sock.recv(65536)
    assert head.startswith(b"HTTP/1.1 201 "), head[:300]


def test_a_kept_alive_connection_gets_a_fresh_head_limit_per_request(live: Live) -> None:
    """Two requests on one connection, the second begun after longer than the head limit
    since the connection opened: it is timed from its own first byte."""
    request = b"GET /jwks.json HTTP/1.1\r\nHost: broker\r\n\r\n"
    with connect(live) as sock:
        sock.sendall(request)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
        time.sleep(1.5)  # idle, within uvicorn's keep-alive (5 s)
        sock.sendall(request[:10])
        time.sleep(1.0)  # 2.5 s after the connection opened: past the 2 s head limit
        sock.sendall(request[10:])
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
