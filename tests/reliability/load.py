"""A steady load on two broker nodes and a holder subscribed to the push stream, with its figures.

Each patient thread loops: the app refreshes its token, the holder verifies the new access
token, and now and then the patient withdraws the consent on node A and grants it again; the
holder (an SDK ``HolderVerifier`` whose traffic goes to node B through the balancer) must
refuse the withdrawn consent's last token from then on. Every operation is counted; every
failure is classified as retryable (no answer, 502, 503 with Retry-After, the holder failing
closed while the broker is out of reach) or not.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from broker_sdk.errors import BrokerSDKError, BrokerUnavailable, TokenRevoked
from broker_sdk.verifier import HolderVerifier

from tests.reliability.harness import (
    HOLDER_AUDIENCE,
    HOLDER_ID,
    Brokers,
    Patient,
    RefreshRefused,
    Retryable,
    Unclear,
)

# How long a withdrawn consent's token may still be honoured by the holder: the push target.
HONOUR_GRACE = 1.0
REFUSAL_WAIT = 5.0


@dataclass
class Figures:
    ops: Counter[str] = field(default_factory=Counter)
    latencies_ms: dict[str, list[float]] = field(default_factory=dict)
    retryable: Counter[str] = field(default_factory=Counter)
    unclear: Counter[str] = field(default_factory=Counter)
    unclear_samples: list[str] = field(default_factory=list)
    revocation_latency: list[float] = field(default_factory=list)  # revoke answered -> refused at holder
    revocation_from_request: list[float] = field(default_factory=list)  # revoke sent -> refused at holder
    honoured_after_revocation: list[float] = field(default_factory=list)  # beyond the grace
    granted: dict[str, list[str]] = field(default_factory=dict)  # consent id -> acknowledged actions
    last_success: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def ok(self, op: str, took: float) -> None:
        with self.lock:
            self.ops[op] += 1
            self.latencies_ms.setdefault(op, []).append(took * 1000)
            self.last_success = time.monotonic()

    def failed(self, error: Exception, op: str) -> None:
        with self.lock:
            if isinstance(error, Retryable):
                self.retryable[f"{op}: {error.kind}"] += 1
            else:
                kind = getattr(error, "kind", type(error).__name__)
                self.unclear[f"{op}: {kind}"] += 1
                if len(self.unclear_samples) < 10:
                    self.unclear_samples.append(f"{op}: {error}")

    def acknowledged(self, consent_id: str, action: str) -> None:
        with self.lock:
            self.granted.setdefault(consent_id, []).append(action)

    def percentile(self, op: str, q: int) -> float:
        values = self.latencies_ms.get(op, [])
        if len(values) < 2:
            return values[0] if values else float("nan")
        return statistics.quantiles(values, n=100)[q - 1] if q != 50 else statistics.median(values)


class Load:
    """``patients`` threads of steady load and the holder, until ``stop()``."""

    def __init__(
        self,
        brokers: Brokers,
        patients: int,
        *,
        revoke_every: int = 6,
        holder_options: dict[str, Any] | None = None,
        pause: float = 0.0,
        on_cycle: Callable[[Load, int], None] | None = None,
    ) -> None:
        self.brokers = brokers
        self.figures = Figures()
        self.revoke_every = revoke_every
        self.pause = pause
        self.on_cycle = on_cycle
        self._stop = threading.Event()
        self._local = threading.local()
        assert brokers.holder_key is not None
        self.holder = HolderVerifier(
            brokers.issuer,
            HOLDER_AUDIENCE,
            holder_id=HOLDER_ID,
            holder_key=brokers.holder_key,
            **(holder_options or {}),
        )
        self.patients = [Patient(i, brokers.issuer, brokers.client_id) for i in range(patients)]
        self._threads = [
            threading.Thread(target=self._run, args=(p,), daemon=True, name=f"patient-{p.index}")
            for p in self.patients
        ]
        # Withdrawals go to node A, the holder listens on node B: every refusal crosses nodes.
        self.node_a = brokers.nodes[0].url

    def start(self) -> Load:
        if not self.holder.start_push(wait=20):
            raise RuntimeError("the holder could not subscribe to the push stream")
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)
        self.holder.close()
        for patient in self.patients:
            patient.close()

    @property
    def push_connected(self) -> bool:
        listeners = [i.listener for i in self.holder._issuers.values()]
        return all(listener is not None and listener.connected.is_set() for listener in listeners)

    # -- one patient's loop ----------------------------------------------------------------

    def _attempt(self, op: str, call: Callable[[], Any]) -> Any:
        """Run ``call`` until it succeeds, counting failures; retryable ones are retried."""
        self._local.retried = False
        while not self._stop.is_set():
            began = time.monotonic()
            try:
                result = call()
            except (Retryable, Unclear) as exc:
                self.figures.failed(exc, op)
                self._local.retried = True
                time.sleep(0.2 if isinstance(exc, Retryable) else 0.5)
                continue
            self.figures.ok(op, time.monotonic() - began)
            return result
        raise _Stopped

    def _run(self, patient: Patient) -> None:
        try:
            self._loop(patient)
        except Exception as exc:  # noqa: BLE001 (a crashed thread must fail the test, not vanish)
            self.figures.failed(Unclear("load thread crashed", repr(exc)), "load")

    def _loop(self, patient: Patient) -> None:
        try:
            self._attempt("log-in", patient.log_in)
            count = 0
            while not self._stop.is_set():
                if patient.consent_id is None or patient.refresh_token is None:
                    if patient.consent_id is not None:  # granted again: the same consent record
                        self.figures.acknowledged(patient.consent_id, "grant sent")
                    self._attempt("grant", patient.grant)
                    assert patient.consent_id is not None
                    self.figures.acknowledged(patient.consent_id, "granted")
                count += 1
                try:
                    self._attempt("refresh", patient.refresh)
                except RefreshRefused as exc:
                    # A refresh whose answer was lost was replayed: the family is revoked by
                    # design (RFC 9700); the app asks the patient again. Otherwise a bug.
                    if self._local.retried:
                        self.figures.failed(Retryable("answer lost, refresh replayed"), "refresh")
                    else:
                        self.figures.failed(Unclear("refresh refused", str(exc)), "refresh")
                    patient.refresh_token = None
                    continue
                self._verify(patient.access_token)
                if self.on_cycle is not None:
                    self.on_cycle(self, patient.index)
                if count % self.revoke_every == 0:
                    self._revoke(patient)
                if self.pause:
                    time.sleep(self.pause)
        except _Stopped:
            return

    def _verify(self, token: str | None) -> None:
        assert token is not None
        while not self._stop.is_set():
            began = time.monotonic()
            try:
                self.holder.verify(token)
            except BrokerUnavailable as exc:  # the holder fails closed: retry later
                self.figures.failed(Retryable(f"holder fails closed ({exc.reason})"), "verify")
                time.sleep(0.2)
                continue
            except BrokerSDKError as exc:  # a fresh token refused: not expected
                self.figures.failed(Unclear("holder refused a fresh token", repr(exc)), "verify")
                return
            self.figures.ok("verify", time.monotonic() - began)
            return

    def _revoke(self, patient: Patient) -> None:
        consent_id, token = patient.consent_id, patient.access_token
        assert consent_id is not None and token is not None
        self.figures.acknowledged(consent_id, "revoke sent")
        self._attempt("revoke", lambda: patient.revoke(via=self.node_a))
        committed = time.monotonic()
        self.figures.acknowledged(consent_id, "revoked")
        patient.refresh_token = None
        # From now on the holder must refuse the consent's last token (after the push delay).
        while True:
            now = time.monotonic()
            try:
                self.holder.verify(token)
            except (TokenRevoked, BrokerUnavailable):
                self.figures.revocation_latency.append(now - committed)
                self.figures.revocation_from_request.append(now - patient.revoke_sent)
                break
            except BrokerSDKError as exc:
                self.figures.failed(Unclear("holder, after revocation", repr(exc)), "verify")
                break
            if now - committed > HONOUR_GRACE:
                self.figures.honoured_after_revocation.append(now - committed)
            if now - committed > REFUSAL_WAIT:
                self.figures.revocation_latency.append(float("inf"))
                break
            time.sleep(0.01)
        # The patient thinks before granting again. At least until the next second: a token
        # carries its issue time in whole seconds (iat), and the holder refuses every token
        # of the consent issued up to the withdrawal's time.
        time.sleep(1.01 - time.time() % 1)

    def wait_recovered(self, since: float, timeout: float = 60.0) -> float:
        """Seconds from ``since`` until an operation succeeded again."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.figures.last_success > since:
                return self.figures.last_success - since
            time.sleep(0.05)
        return float("inf")


class _Stopped(Exception):
    pass
