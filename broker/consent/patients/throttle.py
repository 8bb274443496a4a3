"""Log-in throttling per account and per address (SECURITY W7, NIST SP 800-63B-4 §3.2.2).

After ``free_failures`` failed log-ins the key is blocked for ``first_block``, then twice as
long after each further failure, up to ``max_block``: never a permanent lockout, which would
let anyone lock a patient out. The count is forgotten ``forget_after`` a quiet period, and a
successful log-in clears the account's count (never the address's: an attacker must not reset
their address by logging in to an account of their own).

With the account defaults an attacker gets about 5 + 7 + 24 ≈ 36 guesses a day on one
account; a patient who mistypes a few times waits 30 seconds.

Keys are HMACs of the folded e-mail and of the address, so that the table lists neither, and
an unknown e-mail is throttled exactly like a known one (no account enumeration).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from broker.consent.patients import repository
from broker.consent.patients.models import LoginThrottle
from broker.opaque import secret_digest


@dataclass(frozen=True)
class ThrottlePolicy:
    free_failures: int
    first_block: timedelta
    max_block: timedelta
    forget_after: timedelta

    def block_for(self, failures: int) -> timedelta | None:
        if failures < self.free_failures:
            return None
        doublings = min(failures - self.free_failures, 32)  # bounded: 2**32 × 30 s is past any cap
        block: timedelta = min(self.first_block * (2**doublings), self.max_block)
        return block


ACCOUNT_POLICY = ThrottlePolicy(
    free_failures=5,
    first_block=timedelta(seconds=30),
    max_block=timedelta(hours=1),
    forget_after=timedelta(hours=24),
)
# Many patients may share one address (a hospital, a mobile carrier's NAT): allow more.
ADDRESS_POLICY = ThrottlePolicy(
    free_failures=30,
    first_block=timedelta(seconds=30),
    max_block=timedelta(hours=1),
    forget_after=timedelta(hours=24),
)


@dataclass(frozen=True)
class ThrottleKeys:
    account: str
    address: str

    def policies(
        self, account: ThrottlePolicy = ACCOUNT_POLICY, address: ThrottlePolicy = ADDRESS_POLICY
    ) -> dict[str, ThrottlePolicy]:
        return {self.account: account, self.address: address}


def throttle_keys(secret_key: bytes, email_key: str, address: str) -> ThrottleKeys:
    return ThrottleKeys(
        account="account:" + secret_digest(secret_key, "throttle-account:" + email_key),
        address="ip:" + secret_digest(secret_key, "throttle-address:" + address),
    )


def retry_after(session: Session, keys: list[str], now: datetime) -> int | None:
    """Seconds until every key is free again, or None when none is blocked."""
    waits = [
        (row.blocked_until - now).total_seconds()
        for row in repository.throttles(session, keys).values()
        if row.blocked_until is not None and row.blocked_until > now
    ]
    return math.ceil(max(waits)) if waits else None


def _row(session: Session, key: str, now: datetime) -> LoginThrottle:
    row = repository.throttles(session, [key], for_update=True).get(key)
    if row is not None:
        return row
    fresh = LoginThrottle(key=key, failures=0, window_started_at=now, last_failure_at=now)
    try:
        # Two failures racing on a new key: the loser re-reads the winner's row.
        with session.begin_nested():
            repository.add(session, fresh)
    except IntegrityError:
        row = repository.throttles(session, [key], for_update=True).get(key)
        assert row is not None
        return row
    return fresh


def record_failure(session: Session, policies: dict[str, ThrottlePolicy], now: datetime) -> None:
    for key, policy in policies.items():
        row = _row(session, key, now)
        if row.failures and now - row.last_failure_at > policy.forget_after:
            row.failures = 0
            row.window_started_at = now
            row.blocked_until = None
        row.failures += 1
        row.last_failure_at = now
        block = policy.block_for(row.failures)
        if block is not None:
            row.blocked_until = now + block
    session.flush()


def clear(session: Session, key: str) -> None:
    repository.delete_throttle(session, key)
