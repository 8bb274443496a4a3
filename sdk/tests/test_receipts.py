"""Access receipts: signed per the contract, queued on disk, delivered once after an outage.

The broker's ``/receipts`` endpoint is tested against here through a small local server that
implements the contract (201 first time, 200 ``recorded: false`` for a known jti, problem
documents for bad receipts), and against the real broker when it serves the endpoint.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from jwcrypto import jwk
from sdk_support import Broker, Browser, LocalServer, grant, new_key, public_jwk

from broker_sdk import HolderVerifier, ReceiptSender
from broker_sdk._jose import b64url_decode, import_public_jwk, json_object, parse
from broker_sdk.receipts import RECEIPT_TYP

ISSUER = "https://broker.example"


class ContractBroker:
    """The receipt contract, served on loopback; ``down`` makes it refuse connections."""

    def __init__(self, holder_id: str, key: jwk.JWK) -> None:
        self.holder_id = holder_id
        self.public = import_public_jwk(public_jwk(key))
        self.recorded: dict[str, dict[str, Any]] = {}
        self.answers: list[int] = []
        self.fail_with: int | None = None
        self.lock = threading.Lock()
        self.server = LocalServer(self.handle)

    def handle(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        status, answer = self._answer(method, path, headers, body)
        self.answers.append(status)
        return (
            status,
            {"Content-Type": "application/json" if status < 400 else "application/problem+json"},
            json.dumps(answer).encode(),
        )

    def _answer(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, Any]]:
        if self.fail_with is not None:
            return self.fail_with, {"status": self.fail_with, "detail": "unavailable"}
        if method != "POST" or path != "/receipts" or headers.get("content-type") != "application/jwt":
            return 415, {"status": 415, "detail": "application/jwt expected"}
        try:
            parsed = parse(body.decode(), max_length=16_000)
            assert parsed.header["typ"] == RECEIPT_TYP and parsed.header["alg"] == "ES256"
            assert parsed.header["kid"] == self.public.kid
            self.public.verify(parsed.signing_input, parsed.signature)
            claims = parsed.claims
            assert claims["iss"] == self.holder_id and claims["aud"] == ISSUER
            assert 0 < claims["exp"] - claims["iat"] <= 7 * 24 * 3600
            assert isinstance(claims["record_count"], int) and claims["record_count"] >= 0
            for name in ("jti", "consent_id", "token_jti", "client_id", "categories", "released_at"):
                assert name in claims, name
        except Exception as exc:  # noqa: BLE001
            return 400, {"status": 400, "detail": f"bad receipt: {exc!r}"}
        with self.lock:
            if claims["jti"] in self.recorded:
                return 200, {"receipt": claims["jti"], "recorded": False}
            self.recorded[claims["jti"]] = claims
            return 201, {"receipt": claims["jti"], "recorded": True}


@pytest.fixture
def holder_key() -> jwk.JWK:
    return new_key("holder-receipts")


def sender_for(server: ContractBroker, key: jwk.JWK, queue: Path, **kw: Any) -> ReceiptSender:
    return ReceiptSender(
        ISSUER,
        holder_id="labo-a",
        key=key,
        queue_path=queue,
        endpoint=f"{server.server.url}/receipts",
        base_delay=0.05,
        **kw,
    )


def test_receipts_survive_an_outage_and_are_delivered_once(tmp_path: Path, holder_key: jwk.JWK) -> None:
    server = ContractBroker("labo-a", holder_key)
    port = server.server.port
    server.server.close()  # the broker is down: nothing listens on its port
    sender = sender_for(server, holder_key, tmp_path / "queue.db")
    ids = [
        sender.submit_claims(
            consent_id="cns_1",
            token_jti=f"tok{i}",
            client_id="app",
            categories=["lab_results"],
            record_count=i,
        )
        for i in range(3)
    ]
    report = sender.flush()
    assert report.delivered == 0 and report.pending == 3
    sender.close()  # the holder process stops too: the queue is on disk

    server = ContractBroker("labo-a", holder_key)
    server.server.close()
    server.server = LocalServer(server.handle, port=port)  # the broker is back where it was
    try:
        sender = sender_for(server, holder_key, tmp_path / "queue.db")
        report = sender.flush()
        assert (report.delivered, report.duplicates, report.pending) == (3, 0, 0)
        assert sorted(server.recorded) == sorted(ids)
        assert [server.recorded[j]["record_count"] for j in ids] == [0, 1, 2]
        assert sender.flush().delivered == 0  # nothing left: each access once
        sender.close()
    finally:
        server.server.close()


def test_a_lost_answer_is_retried_and_counted_once(tmp_path: Path, holder_key: jwk.JWK) -> None:
    server = ContractBroker("labo-a", holder_key)
    try:
        sender = sender_for(server, holder_key, tmp_path / "q.db")
        jti = sender.submit_claims(
            consent_id="cns_1", token_jti="t", client_id="app", categories=["lab_results"], record_count=2
        )
        # the broker recorded it but the answer was lost: the queue still holds it
        token = sender._db.execute("SELECT token FROM receipts WHERE jti = ?", (jti,)).fetchone()[0]
        assert (
            httpx.post(
                f"{server.server.url}/receipts", content=token, headers={"Content-Type": "application/jwt"}
            ).status_code
            == 201
        )
        report = sender.flush()
        assert (report.delivered, report.duplicates, report.pending) == (0, 1, 0)
        assert len(server.recorded) == 1
        sender.close()
    finally:
        server.server.close()


def test_5xx_and_429_are_retried_4xx_set_aside(tmp_path: Path, holder_key: jwk.JWK) -> None:
    server = ContractBroker("labo-a", holder_key)
    try:
        sender = sender_for(server, holder_key, tmp_path / "q.db")
        sender.submit_claims(consent_id="c", token_jti="t", client_id="a", categories=["x"], record_count=1)
        for status in (503, 429, 408):
            server.fail_with = status
            assert sender.flush().pending == 1
        server.fail_with = 400
        report = sender.flush()
        assert (report.rejected, report.pending) == (1, 0)
        [rejected] = sender.rejected()
        assert json.loads(rejected["error"])["status"] == 400
        sender.close()
    finally:
        server.server.close()


def test_a_wrong_key_is_refused_by_the_contract(tmp_path: Path, holder_key: jwk.JWK) -> None:
    server = ContractBroker("labo-a", holder_key)
    try:
        sender = sender_for(server, new_key("holder-receipts"), tmp_path / "q.db")
        sender.submit_claims(consent_id="c", token_jti="t", client_id="a", categories=["x"], record_count=1)
        assert sender.flush().rejected == 1
        sender.close()
    finally:
        server.server.close()


def test_background_drain_delivers_after_submit(tmp_path: Path, holder_key: jwk.JWK) -> None:
    server = ContractBroker("labo-a", holder_key)
    try:
        with sender_for(server, holder_key, tmp_path / "q.db").start() as sender:
            sender.submit_claims(
                consent_id="c", token_jti="t", client_id="a", categories=["x"], record_count=1
            )
            deadline = time.monotonic() + 5
            while not server.recorded and time.monotonic() < deadline:
                time.sleep(0.02)
            assert len(server.recorded) == 1
    finally:
        server.server.close()


def test_a_receipt_near_its_end_is_signed_again_with_the_same_jti(
    tmp_path: Path, holder_key: jwk.JWK
) -> None:
    server = ContractBroker("labo-a", holder_key)
    try:
        sender = sender_for(server, holder_key, tmp_path / "q.db", lifetime=600)
        jti = sender.submit_claims(
            consent_id="c", token_jti="t", client_id="a", categories=["x"], record_count=1
        )
        before = sender._db.execute("SELECT token FROM receipts").fetchone()[0]
        assert sender.flush().delivered == 1
        after = sender._db.execute("SELECT token FROM receipts").fetchone()[0]
        assert before != after and list(server.recorded) == [jti]
        claims = json_object(b64url_decode(after.split(".")[1]), "x")
        assert claims["exp"] - claims["iat"] == 600
        sender.close()
    finally:
        server.server.close()


def test_receipt_of_a_verified_token_against_the_real_broker(
    live_broker: Broker, browser: Browser, tmp_path: Path
) -> None:
    probe = httpx.post(
        f"{live_broker.issuer}/receipts", content=b"x", headers={"Content-Type": "application/jwt"}
    )
    if probe.status_code in (404, 405):
        pytest.skip("this broker does not serve /receipts yet")
    holder = live_broker.holders["labo-a"]
    token = grant(live_broker, browser)
    with HolderVerifier(live_broker.issuer, holder.base_url, holder_id="labo-a") as verifier:
        verified = verifier.verify(token["access_token"], categories=["lab_results"])
    sender = ReceiptSender(
        live_broker.issuer, holder_id="labo-a", key=holder.key, queue_path=tmp_path / "q.db", base_delay=0.05
    )
    live_broker.stop()  # the broker is down at the time of the release
    try:
        sender.submit(verified, categories=["lab_results"], record_count=3)
        assert sender.flush().pending == 1
    finally:
        live_broker.start()
    report = sender.flush()
    assert (report.delivered, report.rejected, report.pending) == (1, 0, 0), sender.rejected()
    sender.close()
