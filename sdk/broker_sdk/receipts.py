"""Access receipts: the holder tells the broker what it released, signed, exactly once.

Each release becomes a receipt (an ``access-receipt+jwt`` JWS signed with the holder's
registered key) written to an on-disk queue (SQLite, committed before :meth:`submit`
returns) and then delivered to ``{issuer}/receipts``. Delivery retries with exponential
backoff and jitter (honouring ``Retry-After``) for as long as the broker is down or answers
5xx, 408 or 429; the broker records each receipt ``jti`` once, so a retry after a lost
answer cannot count an access twice. A 4xx answer is final: the receipt is set aside as
rejected, with the broker's problem document, for a person to look at.

A receipt lives seven days (``exp``); one still queued when it nears its end is signed
again, same ``jti``, so an outage longer than that loses nothing either.
"""

from __future__ import annotations

import json
import logging
import random
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx
from jwcrypto import jwk

from broker_sdk import _jose
from broker_sdk.errors import ReceiptRejected
from broker_sdk.verifier import VerifiedToken

__all__ = ["RECEIPT_TYP", "DeliveryReport", "ReceiptSender"]

log = logging.getLogger("broker_sdk.receipts")

RECEIPT_TYP = "access-receipt+jwt"
MAX_LIFETIME = 7 * 24 * 3600
RESIGN_MARGIN = 3600  # sign again when less than an hour of life is left
_SCHEMA = """
CREATE TABLE IF NOT EXISTS receipts (
    jti TEXT PRIMARY KEY,
    claims TEXT NOT NULL,
    token TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'queued',      -- queued | delivered | rejected
    created_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error TEXT,
    delivered_at REAL,
    recorded INTEGER
);
CREATE INDEX IF NOT EXISTS receipts_due ON receipts (state, next_attempt_at);
"""


@dataclass(frozen=True)
class DeliveryReport:
    """What one :meth:`ReceiptSender.flush` did."""

    delivered: int
    duplicates: int  # the broker had them already (a retry after a lost answer)
    rejected: int
    pending: int  # still queued (the broker is unreachable or answered 5xx/408/429)


class ReceiptSender:
    """Signs, queues and delivers the holder's access receipts.

    ``key``: the holder's private signing key; its ``kid`` must be the one registered at the
    broker. ``queue_path``: the SQLite file of the queue (one per holder process or shared;
    SQLite locks it). Call :meth:`start` for a background thread that drains the queue, or
    :meth:`flush` from your own scheduler.
    """

    def __init__(
        self,
        issuer: str,
        *,
        holder_id: str,
        key: jwk.JWK,
        queue_path: str | Path,
        endpoint: str | None = None,
        http: httpx.Client | None = None,
        lifetime: int = MAX_LIFETIME,
        base_delay: float = 1.0,
        max_delay: float = 300.0,
        timeout: float = 5.0,
    ) -> None:
        if not key.has_private or not key.get("kid"):
            raise ValueError("the receipt key must be a private key with a kid (the one registered)")
        if not 0 < lifetime <= MAX_LIFETIME:
            raise ValueError(f"lifetime must be between 1 and {MAX_LIFETIME} seconds")
        self.issuer = issuer
        self.endpoint = endpoint or f"{issuer}/receipts"
        self.holder_id = holder_id
        self._key = key
        self._lifetime = lifetime
        self._base_delay = base_delay
        self._max_delay = max_delay
        self._owns_http = http is None
        self._http = http or httpx.Client(timeout=timeout, trust_env=False, follow_redirects=False)
        self.queue_path = Path(queue_path)
        self.queue_path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.queue_path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a queued receipt survives a power cut
        self._db.executescript(_SCHEMA)
        self._lock = threading.RLock()
        self._send_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- producing ----------------------------------------------------------------------

    def submit(
        self,
        token: VerifiedToken,
        *,
        categories: Iterable[str],
        record_count: int,
        released_at: float | None = None,
    ) -> str:
        """Queue the receipt of one release made under ``token``; returns the receipt ``jti``.

        Durable when it returns; delivery happens in the background (or at :meth:`flush`).
        """
        return self.submit_claims(
            consent_id=token.consent_id,
            token_jti=token.token_id,
            client_id=token.client_id,
            categories=categories,
            record_count=record_count,
            released_at=released_at,
        )

    def submit_claims(
        self,
        *,
        consent_id: str,
        token_jti: str,
        client_id: str,
        categories: Iterable[str],
        record_count: int,
        released_at: float | None = None,
    ) -> str:
        released = sorted(set(categories))
        if isinstance(record_count, bool) or not isinstance(record_count, int) or record_count < 0:
            raise ValueError("record_count must be an integer >= 0")
        if not all(isinstance(c, str) and c for c in released):
            raise ValueError("categories must be category ids")
        now = time.time()
        jti = "rcpt_" + secrets.token_urlsafe(24)
        claims: dict[str, Any] = {
            "iss": self.holder_id,
            "aud": self.issuer,
            "jti": jti,
            "consent_id": consent_id,
            "token_jti": token_jti,
            "client_id": client_id,
            "categories": released,
            "record_count": record_count,
            "released_at": int(released_at if released_at is not None else now),
        }
        signed = self._sign(claims, now)
        with self._lock:
            self._db.execute(
                "INSERT INTO receipts (jti, claims, token, created_at, next_attempt_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (jti, json.dumps(claims), signed, now, now),
            )
        self._wake.set()
        return jti

    def _sign(self, claims: dict[str, Any], now: float) -> str:
        iat = int(now)
        return _jose.sign({**claims, "iat": iat, "exp": iat + self._lifetime}, self._key, typ=RECEIPT_TYP)

    # -- delivering ---------------------------------------------------------------------

    def pending(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT count(*) FROM receipts WHERE state = 'queued'").fetchone()
        return int(row[0])

    def rejected(self) -> list[dict[str, Any]]:
        """Receipts the broker refused (4xx), with its answer, for a person to look at."""
        with self._lock:
            rows = self._db.execute(
                "SELECT jti, claims, last_error FROM receipts WHERE state = 'rejected' ORDER BY created_at"
            ).fetchall()
        return [{"jti": r[0], "claims": json.loads(r[1]), "error": r[2]} for r in rows]

    def flush(self, *, force: bool = True) -> DeliveryReport:
        """Deliver what is queued now (``force``: without waiting for each backoff to end)."""
        delivered = duplicates = rejected = 0
        with self._send_lock:
            now = time.time()
            with self._lock:
                rows = self._db.execute(
                    "SELECT jti, claims, token, attempts FROM receipts "
                    "WHERE state = 'queued' AND next_attempt_at <= ? ORDER BY created_at",
                    (float("inf") if force else now,),
                ).fetchall()
            for jti, claims_text, token, attempts in rows:
                outcome = self._deliver(jti, json.loads(claims_text), token, attempts)
                if outcome == "later":
                    break  # the broker is down or busy: the rest waits for the next round
                delivered += outcome == "recorded"
                duplicates += outcome == "duplicate"
                rejected += outcome == "rejected"
        return DeliveryReport(delivered, duplicates, rejected, self.pending())

    def _deliver(self, jti: str, claims: dict[str, Any], token: str, attempts: int) -> str:
        now = time.time()
        if _jose_exp(token) - now < RESIGN_MARGIN:
            token = self._sign(claims, now)  # same jti: still delivered at most once
            with self._lock:
                self._db.execute("UPDATE receipts SET token = ? WHERE jti = ?", (token, jti))
        retry_after: float | None = None
        try:
            response = self._http.post(
                self.endpoint, content=token.encode("ascii"), headers={"Content-Type": "application/jwt"}
            )
        except httpx.HTTPError as exc:
            error, status = f"{type(exc).__name__}: {exc}", None
        else:
            status = response.status_code
            error = f"HTTP {status}"
            if status in (200, 201):
                try:
                    recorded = bool(response.json().get("recorded", status == 201))
                except ValueError:
                    recorded = status == 201
                with self._lock:
                    self._db.execute(
                        "UPDATE receipts SET state = 'delivered', delivered_at = ?, recorded = ?, "
                        "attempts = attempts + 1, last_error = NULL WHERE jti = ?",
                        (time.time(), int(recorded), jti),
                    )
                return "recorded" if recorded else "duplicate"
            if 400 <= status < 500 and status not in (408, 429):
                try:
                    problem: Any = response.json()
                except ValueError:
                    problem = response.text[:2000]
                with self._lock:
                    self._db.execute(
                        "UPDATE receipts SET state = 'rejected', attempts = attempts + 1, last_error = ? "
                        "WHERE jti = ?",
                        (json.dumps({"status": status, "problem": problem}), jti),
                    )
                log.error("access receipt %s refused: %s", jti, ReceiptRejected(status, problem))
                return "rejected"
            retry_after = _retry_after(response.headers.get("retry-after"))
        # Exponential backoff with jitter, so that holders do not all come back at once.
        jitter = 0.5 + random.random() / 2  # noqa: S311 (not a secret)
        delay = min(self._max_delay, self._base_delay * 2**attempts) * jitter
        if retry_after is not None:
            delay = max(delay, min(retry_after, self._max_delay))
        with self._lock:
            self._db.execute(
                "UPDATE receipts SET attempts = attempts + 1, next_attempt_at = ?, last_error = ? "
                "WHERE jti = ?",
                (now + delay, error, jti),
            )
        return "later"

    # -- background drain ---------------------------------------------------------------

    def start(self) -> ReceiptSender:
        """Drain the queue in a daemon thread: at once after each :meth:`submit`, and when
        each retry falls due."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="broker-receipts", daemon=True)
            self._thread.start()
        return self

    def _next_due(self) -> float | None:
        with self._lock:
            row = self._db.execute(
                "SELECT min(next_attempt_at) FROM receipts WHERE state = 'queued'"
            ).fetchone()
        return float(row[0]) if row and row[0] is not None else None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.flush(force=False)
            except Exception:
                log.exception("draining access receipts")
            due = self._next_due()
            wait = 60.0 if due is None else max(0.05, min(60.0, due - time.time()))
            self._wake.wait(wait)
            self._wake.clear()

    def close(self, *, flush: bool = False) -> None:
        if flush:
            self.flush()
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        with self._lock:
            self._db.close()
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> ReceiptSender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _jose_exp(token: str) -> float:
    claims = _jose.json_object(_jose.b64url_decode(token.split(".")[1]), "receipt")
    return float(claims.get("exp", 0))


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None
