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
