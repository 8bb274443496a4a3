"""`broker migrate` then `broker serve`, as `make run` does: a real process on a real port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _raw_exchange(port: int, chunks: list[bytes]) -> bytes:
    """Send ``chunks`` on one connection (stopping if the server closes it); all it answers."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            for chunk in chunks:
                sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = b""
        try:
            while data := sock.recv(65536):
                answer += data
        except ConnectionResetError:
            pass
        return answer


def assert_request_head_is_bounded(port: int) -> None:
    """SECURITY J13: a huge header is refused with 431 and the connection closed, without the
    server reading all of it; a request head within the bound is served."""
    within = b"GET /jwks.json HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 8000 + b"\r\nConnection: close\r\n\r\n"
    assert _raw_exchange(port, [within]).startswith(b"HTTP/1.1 200")
    huge = [b"GET /jwks.json HTTP/1.1\r\nHost: x\r\nX-Pad: "] + [b"a" * 65536] * 160  # 10 MiB
    started = time.monotonic()
    answer = _raw_exchange(port, [*huge, b"\r\n\r\n"])
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    assert time.monotonic() - started < 5
    # Many small headers add up the same way.
    many = b"GET /jwks.json HTTP/1.1\r\nHost: x\r\n" + b"X-A: b\r\n" * 4000 + b"\r\n"
    assert _raw_exchange(port, [many]).startswith(b"HTTP/1.1 431")
    # A body is not a head: a POST larger than the head bound is parsed as usual.
    body = b"grant_type=refresh_token&refresh_token=" + b"x" * 30000
    post = (
        b"POST /token HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        + b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body
    )
    answer = _raw_exchange(port, [post])
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]  # the body was read: no client_id
    assert b'"error":"invalid_client"' in answer


def test_run_serves_within_seconds_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    port = _free_port()
    env = {
        **os.environ,
        "BROKER_DATABASE_URL": f"sqlite:///{tmp_path}/broker.db",
        "BROKER_KEY_DIR": str(tmp_path / "keys"),
        "BROKER_DEV_MODE": "true",
        "BROKER_DEMO": "true",
        "BROKER_PORT": str(port),
    }
    migrate = subprocess.run(
        [sys.executable, "-m", "broker.cli", "migrate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert migrate.returncode == 0, migrate.stderr
    started = time.monotonic()
    server = subprocess.Popen(
        [sys.executable, "-m", "broker.cli", "serve"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        while True:
            try:
                if httpx.get(f"{base}/.well-known/oauth-authorization-server", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None, server.stdout.read() if server.stdout else ""
            assert time.monotonic() - started < 15, "the broker did not answer within 15 s"
            time.sleep(0.1)
        ready_after = time.monotonic() - started
        assert httpx.get(f"{base}/jwks.json").json()["keys"]
        catalog = httpx.get(f"{base}/api/catalog/apps").json()
        assert [a["client_name"] for a in catalog["items"]] == ["Suivi Glycémie"]
        assert sorted(h["identifier"] for h in httpx.get(f"{base}/api/catalog/holders").json()) == [
            "assurance-demo",
            "labo-demo",
        ]
        print(f"ready after {ready_after:.2f} s")
        assert_request_head_is_bounded(port)
    finally:
        server.send_signal(signal.SIGINT)
        try:
            code = server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            raise
    output = server.stdout.read() if server.stdout else ""
    assert code == 0, output
    assert f"http://127.0.0.1:{port}" in output
    assert "Traceback" not in output
