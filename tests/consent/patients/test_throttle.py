"""Log-in throttling (SECURITY W7): 429 with Retry-After, then allowed again; never a lockout."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from broker.consent.patients import throttle
from broker.consent.patients.models import LoginThrottle
from broker.db import utcnow
from tests.consent.patients.browser import log_in, sign_up

WRONG = "ce n'est pas le bon mot de passe"


def test_policy_grows_exponentially_and_is_capped() -> None:
    policy = throttle.ACCOUNT_POLICY
    assert [policy.block_for(n) for n in range(1, 5)] == [None] * 4
    assert policy.block_for(5) == timedelta(seconds=30)
    assert policy.block_for(6) == timedelta(seconds=60)
    assert policy.block_for(7) == timedelta(seconds=120)
    assert policy.block_for(100) == timedelta(hours=1)
    assert policy.block_for(10**9) == timedelta(hours=1)  # never permanent


def test_repeated_failures_get_429_then_the_account_opens_again(
    client: Any, db: sessionmaker[Session]
) -> None:
    sign_up(client)
    for _ in range(throttle.ACCOUNT_POLICY.free_failures):
        assert log_in(client, password=WRONG).status_code == 400
    blocked = log_in(client)  # even the right password waits: the guesser cannot tell
    assert blocked.status_code == 429
    assert 1 <= int(blocked.headers["retry-after"]) <= 30
    assert "Trop de tentatives de connexion" in blocked.text and "réessayez dans 1 minute" in blocked.text
    # The same answer for an address that has no account (no enumeration through the throttle).
    for _ in range(throttle.ACCOUNT_POLICY.free_failures):
        log_in(client, email="nobody@example.org", password=WRONG)
    assert log_in(client, email="nobody@example.org", password=WRONG).status_code == 429

    # The block ends by itself: move its end into the past, as the clock would.
    with db.begin() as session:
        session.execute(update(LoginThrottle).values(blocked_until=utcnow() - timedelta(seconds=1)))
    assert log_in(client).status_code == 303
    with db() as session:  # success cleared the account's count, not the address's
        keys = [row.key for row in session.scalars(select(LoginThrottle))]
    assert sum(key.startswith("account:") for key in keys) == 1  # nobody@…'s count remains
    assert sum(key.startswith("ip:") for key in keys) == 1


def test_throttle_counts_are_forgotten_after_a_quiet_period(db: sessionmaker[Session]) -> None:
    keys = throttle.throttle_keys(b"k" * 32, "someone@example.org", "192.0.2.1")
    policies = keys.policies()
    start = utcnow()
    with db.begin() as session:
        for i in range(5):
            throttle.record_failure(session, policies, start + timedelta(seconds=i))
        assert throttle.retry_after(session, list(policies), start + timedelta(seconds=5)) == 29
        assert throttle.retry_after(session, list(policies), start + timedelta(seconds=35)) is None
        later = start + throttle.ACCOUNT_POLICY.forget_after + timedelta(seconds=5)
        throttle.record_failure(session, policies, later)
        row = session.get(LoginThrottle, keys.account)
        assert row is not None and row.failures == 1 and row.blocked_until is None  # a fresh start


def test_keys_name_neither_the_address_nor_the_email() -> None:
    keys = throttle.throttle_keys(b"k" * 32, "someone@example.org", "192.0.2.1")
    assert "someone" not in keys.account and "192.0.2.1" not in keys.address


def test_throttled_page_in_english(client: Any) -> None:
    sign_up(client)
    client.cookies.set("broker_lang", "en", domain="testserver.local")
    for _ in range(throttle.ACCOUNT_POLICY.free_failures):
        log_in(client, password=WRONG)
    blocked = log_in(client, password=WRONG)
    assert blocked.status_code == 429
    assert "Too many log-in attempts" in blocked.text and "try again in 1 minute" in blocked.text
