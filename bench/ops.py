"""What the operations layer costs per request: request id, JSON log line, metrics, limits.

Two applications built from the same code on the same SQLite file, in this process, driven
through ASGI directly (no sockets, so that the difference is not lost in HTTP parsing):

- reference: the broker without the operations layer (Litestar's handler unwrapped, abuse
  limits off, logging not configured);
- with ops: as ``broker serve`` runs it (request id, one JSON log line per request written to
  /dev/null through the real formatter, Prometheus counters and histogram, abuse limits on
  with allowances too large to be reached); and the same with the limits off, to tell the
  limits' share from the rest.

Rounds alternate between the two; each round times ``--requests`` requests per endpoint, in
CPU time of this process. Prints the median CPU time per request over the rounds, and the
ratio. No assertion about time.

    .venv/bin/python bench/ops.py [--rounds 15] [--requests 300]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from litestar import Litestar

from broker.app import create_app
from broker.migrate import upgrade
from broker.ops.logs import JsonFormatter
from broker.ops.observe import ObservedRequests
from broker.settings import Settings

ENDPOINTS: list[tuple[str, str, str, bytes]] = [
    ("GET /healthz", "GET", "/healthz", b""),
    ("GET /jwks.json", "GET", "/jwks.json", b""),
    ("POST /token (refused grant)", "POST", "/token", b"grant_type=refresh_token&refresh_token=hcb_rt_x&client_id=a"),
]


async def call(app: Litestar, method: str, path: str, body: bytes) -> int:
    headers = [(b"host", b"127.0.0.1:8000")]
    if body:
        headers += [
            (b"content-type", b"application/x-www-form-urlencoded"),
            (b"content-length", str(len(body)).encode()),
        ]
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }
    sent = False
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            await asyncio.sleep(3600)
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)  # type: ignore[arg-type]
    return status


async def timed(app: Litestar, method: str, path: str, body: bytes, count: int) -> float:
    # CPU time of the process (its worker threads included): the machine is shared, and
    # wall time would count the other programs' turns on the cores.
    started = time.process_time()
    for _ in range(count):
        status = await call(app, method, path, body)
        assert status < 500, status
    return (time.process_time() - started) / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-ops-"))
    url = f"sqlite:///{tmp / 'broker.db'}"
    upgrade(url)
    base = Settings(
        database_url=url,
        key_dir=tmp / "keys",
        dev_mode=True,
        secret_key=b"bench-secret-key-of-at-least-32-bytes!",
        audit_interval=0,
    )
    reference = create_app(replace(base, rate_limit_address=0, rate_limit_client=0, rate_limit_patient=0))
    assert isinstance(reference.asgi_handler, ObservedRequests)
    reference.asgi_handler = reference.asgi_handler.app  # without the operations layer
    huge = 10**6
    with_ops = create_app(replace(base, rate_limit_address=huge, rate_limit_client=huge, rate_limit_patient=huge))
    # The same without the abuse limits: what the request id, log line and metrics cost alone.
    no_limits = create_app(replace(base, rate_limit_address=0, rate_limit_client=0, rate_limit_patient=0))

    handler = logging.FileHandler("/dev/null")
    handler.setFormatter(JsonFormatter())

    def logging_on(on: bool) -> None:
        root = logging.getLogger()
        if on:
            root.addHandler(handler)
            root.setLevel(logging.INFO)
        else:
            root.removeHandler(handler)
            root.setLevel(logging.WARNING)

    results: dict[str, dict[str, list[float]]] = {
        name: {"ref": [], "ops": [], "nolimits": []} for name, *_ in ENDPOINTS
    }

    async def run() -> None:
        for _name, method, path, body in ENDPOINTS:  # warm-up
            await timed(reference, method, path, body, 50)
            await timed(with_ops, method, path, body, 50)
            await timed(no_limits, method, path, body, 50)
        for _ in range(args.rounds):
            for name, method, path, body in ENDPOINTS:
                logging_on(False)
                results[name]["ref"].append(await timed(reference, method, path, body, args.requests))
                logging_on(True)
                results[name]["ops"].append(await timed(with_ops, method, path, body, args.requests))
                results[name]["nolimits"].append(await timed(no_limits, method, path, body, args.requests))
                logging_on(False)

    asyncio.run(run())
    print(f"\nOperations layer, CPU per request (median of {args.rounds} rounds of {args.requests}; ASGI)")
    print(
        f"{'endpoint':<30} {'reference µs':>13} {'with ops µs':>12} {'added µs':>9} {'ratio':>6}"
        f" {'ops, no limits µs':>18}"
    )
    for name, times in results.items():
        ref, ops = statistics.median(times["ref"]) * 1e6, statistics.median(times["ops"]) * 1e6
        bare = statistics.median(times["nolimits"]) * 1e6
        print(f"{name:<30} {ref:>13.1f} {ops:>12.1f} {ops - ref:>9.1f} {ops / ref:>6.2f} {bare:>18.1f}")


if __name__ == "__main__":
    main()
