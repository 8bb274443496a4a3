"""Behaviour of the ``broker serve`` process: its log, its shutdown, its workers' metrics.

Real processes on loopback ports, on both backends (the ``world`` fixture of the end-to-end
OAuth test: a seeded broker, a patient, an app, two holders).
"""

from __future__ import annotations

import json
import secrets
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from broker.keys import KeyStore
from tests.consent.test_holder_side import assertion, granted_token, holder_key
from tests.consent.test_oauth_flow import (
    PASSWORD,
    World,
    app_client,
    consent,
    hidden,
    log_in,
    start_broker,
    world,
)

__all__ = ["world"]  # the fixture, re-exported for pytest


def _stop(world: World, sig: int = signal.SIGTERM) -> tuple[int, list[str]]:
    """Signal the broker, wait for it to exit; its exit code and its output's lines."""
    assert world.server is not None and world.log_path is not None
    world.server.send_signal(sig)
    code = world.server.wait(timeout=30)
    return code, world.log_path.read_text().splitlines()


def _json_lines(lines: list[str]) -> list[dict[str, Any]]:
    records = []
    for line in lines:
        if line.startswith("Broker starting"):  # the one line printed for a person, on stdout
            continue
        records.append(json.loads(line))  # every other line is one JSON object
    return records


def test_log_of_a_full_flow_holds_no_secret(world: World) -> None:
    secrets_seen: list[str] = [PASSWORD]
    browser = httpx.Client(base_url=world.issuer)
    log_in(browser, world.email)
    secrets_seen += [value for value in browser.cookies.values() if len(value) >= 16]
    app = app_client(world)
    verifier = secrets.token_urlsafe(48)
    url, state = app.create_authorization_url(f"{world.issuer}/authorize", code_verifier=verifier)
    location = consent(browser, url).headers["location"]
    code = parse_qs(urlsplit(location).query)["code"][0]
    secrets_seen += [verifier, state, code]
    token = app.fetch_token(
        f"{world.issuer}/token",
        authorization_response=location,
        code_verifier=verifier,
        resource=world.holders["labo-test"],
    )
    refreshed = app.refresh_token(f"{world.issuer}/token", refresh_token=token["refresh_token"])
    secrets_seen += [token["access_token"], token["refresh_token"], refreshed["access_token"]]
    secrets_seen += [refreshed["refresh_token"]]
    key = holder_key(world, "labo-test")
    holder_assertion = assertion(key, "labo-test", world.issuer)
    answer = httpx.post(
        f"{world.issuer}/introspect",
        data={
            "token": refreshed["access_token"],
            "client_id": "labo-test",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": holder_assertion,
        },
    )
    assert answer.json()["active"] is True
    secrets_seen.append(holder_assertion)
    # a request with secrets in its query string and a failing one
    assert httpx.get(f"{world.issuer}/authorize?code={code}&state={state}").status_code < 500
    bad = httpx.post(f"{world.issuer}/token", data={"grant_type": "authorization_code", "code": code})
    assert bad.status_code in (400, 401)
    page = browser.get("/my/consents")
    revoked = browser.post(
        f"/my/consents/{token['consent_id']}/revoke", data={"csrf_token": hidden(page.text, "csrf_token")}
    )
    assert revoked.status_code < 400
    secrets_seen.append(hidden(page.text, "csrf_token"))
    # a sane X-Request-ID is kept and echoed, another one is replaced
    echoed = httpx.get(f"{world.issuer}/jwks.json", headers={"X-Request-ID": "trace-0123456789"})
    assert echoed.headers["x-request-id"] == "trace-0123456789"
    replaced = httpx.get(f"{world.issuer}/jwks.json", headers={"X-Request-ID": "bad id\twith spaces"})
    assert replaced.headers["x-request-id"] != "bad id\twith spaces"
    assert len(replaced.headers["x-request-id"]) == 32

    # the flow's domain events, counted as they committed
    metrics = httpx.get(f"{world.issuer}/metrics").text
    assert _sample(metrics, "broker_tokens_issued_total", grant="authorization_code") == 1
    assert _sample(metrics, "broker_tokens_issued_total", grant="refresh_token") == 1
    assert _sample(metrics, "broker_revocations_total", kind="consent") == 1
    assert _sample(metrics, "broker_audit_appends_total", tag="patient:consent:granted") == 1
    assert _sample(metrics, "broker_http_requests_total", route="/token", status="200") == 2

    exit_code, lines = _stop(world)
    assert exit_code in (0, -signal.SIGTERM)
    text = "\n".join(lines)
    for secret in secrets_seen:
        assert secret not in text, f"a secret ({secret[:12]}…) is in the log"
    assert "hcb_" not in text and "eyJ" not in text
    records = _json_lines(lines)
    requests = [r for r in records if r["logger"] == "broker.request"]
    assert len(requests) >= 15
    for record in requests:
        assert "?" not in record["route"]
        assert len(record["request_id"]) >= 8
        assert {"method", "route", "status", "duration_us", "ts", "level"} <= record.keys()
    routes = {r["route"] for r in requests}
    assert {"/token", "/authorize", "/login", "/introspect"} <= routes
    assert any(r["request_id"] == "trace-0123456789" for r in requests)
    assert any(r["logger"].startswith("uvicorn") for r in records)  # uvicorn's lines are JSON too


def _subscribe(issuer: str, key: Any, subscribed: threading.Semaphore, ended: threading.Semaphore) -> list[str]:
    """Subscribe to the push stream as ``labo-test`` in a thread; the lines it hears.

    ``subscribed`` is released once the stream answers, ``ended`` once the server has ended it
    (a clean end of stream: no error, no reset).
    """
    lines: list[str] = []

    def listen() -> None:
        headers = {"Authorization": f"Bearer {assertion(key, 'labo-test', issuer)}"}
        with httpx.stream(
            "GET", f"{issuer}/events/revocations", params={"holder": "labo-test"}, headers=headers, timeout=30
        ) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                lines.append(line)
                if line.startswith(": subscribed"):
                    subscribed.release()
        ended.release()

    threading.Thread(target=listen, daemon=True).start()
    return lines


def _raw_head(port: int, body_length: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    sock.sendall(
        b"POST /token HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        + f"Content-Length: {body_length}\r\n\r\n".encode()
    )
    return sock


def test_sigterm_lets_requests_finish_and_closes_push_streams(world: World) -> None:
    key = holder_key(world, "labo-test")
    browser = httpx.Client(base_url=world.issuer)
    log_in(browser, world.email)
    granted_token(world, browser)
    subscribed, ended = threading.Semaphore(0), threading.Semaphore(0)
    lines_heard = _subscribe(world.issuer, key, subscribed, ended)
    assert subscribed.acquire(timeout=10)
    metrics = httpx.get(f"{world.issuer}/metrics").text
    assert _sample(metrics, "broker_push_subscribers") == 1

    # a request in flight: its head sent, half its body still to come
    port = int(urlsplit(world.issuer).port or 0)
    body = b"grant_type=refresh_token&refresh_token=hcb_rt_" + b"x" * 40 + b"&client_id=nobody"
    sock = _raw_head(port, len(body))
    sock.sendall(body[:20])
    time.sleep(0.3)

    assert world.server is not None
    started = time.monotonic()
    world.server.send_signal(signal.SIGTERM)
    assert ended.acquire(timeout=5), "the push stream did not end"
    took = time.monotonic() - started
    assert lines_heard[-1].startswith(": closing") or ": closing: this node is shutting down" in lines_heard
    # the listener closed: no new connection is accepted
    time.sleep(0.3)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{world.issuer}/healthz", timeout=2)
    # the request in flight still gets its whole answer
    sock.sendall(body[20:])
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    sock.close()
    assert answer.startswith(b"HTTP/1.1 4"), answer[:200]
    assert b'"error":"invalid_client"' in answer or b'"error":"invalid_grant"' in answer

    code = world.server.wait(timeout=15)
    assert code in (0, -signal.SIGTERM)
    records = _json_lines(world.log_path.read_text().splitlines() if world.log_path else [])
    assert any(r.get("event") == "draining" for r in records)
    assert not any("Cancel" in r["message"] for r in records), "uvicorn had to cut a task"
    assert not any(r["level"] == "error" for r in records)
    print(f"push stream closed {took:.2f} s after SIGTERM")


def _sample(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


@pytest.fixture
def two_workers(
    settings: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, Path, subprocess.Popen[bytes]]]:
    KeyStore(settings.key_dir).create()  # before the workers, which would race to create it
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        issuer = f"http://127.0.0.1:{probe.getsockname()[1]}"
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)  # `serve` makes its own
    log_path = tmp_path / "broker.log"
    server = start_broker(settings, issuer, log_path, "--workers", "2")
    try:
        yield issuer, log_path, server
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


def test_sigterm_to_the_parent_closes_every_worker_s_push_streams(
    settings: Any, two_workers: tuple[str, Path, subprocess.Popen[bytes]]
) -> None:
    from jwcrypto import jwk
    from sqlalchemy import update

    from broker.catalog.models import Holder
    from broker.charter import load_charter
    from broker.db import make_engine, make_session_factory, transaction, utcnow
    from tests.factories import seed_two_holders

    issuer, log_path, server = two_workers
    key = jwk.JWK.generate(kty="EC", crv="P-256", kid="labo-key")
    public = {**key.export_public(as_dict=True), "alg": "ES256", "use": "sig"}
    engine = make_engine(settings.database_url)
    with transaction(make_session_factory(engine)) as session:
        seed_two_holders(session, load_charter(), utcnow())
        session.execute(update(Holder).where(Holder.identifier == "labo-test").values(jwks={"keys": [public]}))
    engine.dispose()

    subscribed, ended = threading.Semaphore(0), threading.Semaphore(0)
    heard = [_subscribe(issuer, key, subscribed, ended) for _ in range(4)]
    for _ in heard:
        assert subscribed.acquire(timeout=10)
    server.send_signal(signal.SIGTERM)  # to uvicorn's supervisor, which passes it on
    started = time.monotonic()
    for _ in heard:
        assert ended.acquire(timeout=8), "a push stream was not closed"
    took = time.monotonic() - started
    assert all(any(line.startswith(": closing") for line in lines) for lines in heard)
    records = _json_lines(log_path.read_text().splitlines())
    draining_workers = {r["pid"] for r in records if r.get("event") == "draining"}
    assert len(draining_workers) >= 1
    assert not any("Cancel" in r["message"] for r in records), "uvicorn had to cut a task"
    print(f"4 push streams closed {took:.2f} s after SIGTERM ({len(draining_workers)} worker(s) held them)")


def test_metrics_add_up_across_workers(two_workers: tuple[str, Path, subprocess.Popen[bytes]]) -> None:
    issuer, log_path, _ = two_workers
    before = _sample(httpx.get(f"{issuer}/metrics").text, "broker_http_requests_total", route="/jwks.json")
    # New connections each time, so that both workers serve some of them.
    for _ in range(40):
        assert httpx.get(f"{issuer}/jwks.json").status_code == 200
    started = [r for r in _json_lines(log_path.read_text().splitlines()) if r["message"].startswith("Started server")]
    assert len(started) == 2
    for _ in range(6):  # whichever worker answers, it reports the sum of both
        text = httpx.get(f"{issuer}/metrics").text
        assert _sample(text, "broker_http_requests_total", route="/jwks.json", status="200") == before + 40
