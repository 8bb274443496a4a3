"""The push stream across nodes: the cursor, the NOTIFY channel, and two real nodes.

- The stream's cursor never skips an event whose id was taken before a later one committed.
- The NOTIFY channel is the schema's: a broker in another schema of the same database does
  not wake this one's streams, its own commits do.
- Two broker processes (one of them with two workers) on one PostgreSQL: a withdrawal on
  node A reaches a holder subscribed (SDK) on node B within a second, and so does an app's
  suspension by a charter re-check and its restoration.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select, text

from broker.consent.events import GAP_SECONDS, Cursor
from broker.consent.push import _NOTIFY, PushHub
from broker.db import make_engine
from tests.conftest import PG_ENV
from tests.reliability.harness import HOLDER_ID, Brokers, drop_schema, new_schema

pytestmark = pytest.mark.reliability


def test_cursor_waits_for_ids_committed_out_of_order() -> None:
    cursor = Cursor(10)
    assert cursor.take([11, 13], now=0.0) == [11, 13]
    assert cursor.floor == 11  # 12 is in flight: a resumption must ask from 11 on
    assert cursor.top == 13 and cursor.waiting == [12]  # the next read: after 13, and 12
    assert cursor.take([13], now=1.0) == []  # read again, not sent again
    assert cursor.take([12, 13, 14], now=2.0) == [12, 14]
    assert cursor.floor == 14
    # An id that never comes (a rolled-back insert) is waited for a while, then given up.
    assert cursor.take([16], now=3.0) == [16]
    assert cursor.floor == 14
    assert cursor.take([16], now=3.0 + GAP_SECONDS) == []
    assert cursor.floor == 16


def test_a_committed_consent_event_wakes_the_streams(db_url: str) -> None:
    """On PostgreSQL through NOTIFY, on SQLite in the process itself: at commit, not before."""
    from bench.tokens import prepare_broker
    from broker.catalog.models import App
    from broker.consent.patients.models import Patient
    from broker.consent.service import Grant, grant_consent
    from broker.db import make_session_factory, utcnow

    client_id = prepare_broker(db_url, 1)
    engine = make_engine(db_url)
    factory = make_session_factory(engine)

    def grant(commit: bool) -> None:
        with factory() as session:
            patient = session.scalars(select(Patient)).one()
            app = session.get(App, client_id)
            assert app is not None
            grant_consent(
                session,
                patient_id=patient.id,
                app=app,
                grants=[Grant("labo-bench", "chronic_disease_followup", ("lab_results",))],
                days=30,
                charter_version="1.0",
                by="test",
                now=utcnow(),
            )
            session.flush()
            if commit:
                session.commit()
            else:
                session.rollback()

    async def scenario() -> tuple[bool, bool]:
        hub = PushHub(db_url)
        await hub.start()
        try:
            if hub.postgresql:
                assert await asyncio.to_thread(hub.listening.wait, 10)
            wake = hub.subscribe()
            await asyncio.sleep(0.1)
            wake.clear()
            results = []
            for commit in (False, True):
                await asyncio.to_thread(grant, commit)
                try:
                    await asyncio.wait_for(wake.wait(), 1.0)
                    results.append(True)
                except TimeoutError:
                    results.append(False)
            return results[0], results[1]
        finally:
            await hub.stop()

    try:
        after_rollback, after_commit = asyncio.run(scenario())
    finally:
        engine.dispose()
    assert not after_rollback, "a rolled-back consent event woke the streams"
    assert after_commit, "a committed consent event did not wake the streams"


@pytest.fixture
def pg_server() -> str:
    url = os.environ.get(PG_ENV)
    if not url:
        pytest.skip(f"needs PostgreSQL ({PG_ENV})")
    return url


def test_notify_channel_is_the_schemas(pg_server: str) -> None:
    mine, my_url = new_schema(pg_server, "broker_push_a")
    other, other_url = new_schema(pg_server, "broker_push_b")
    try:

        async def scenario() -> tuple[bool, bool]:
            hub = PushHub(my_url)
            await hub.start()
            try:
                assert await asyncio.to_thread(hub.listening.wait, 10)
                wake = hub.subscribe()
                await asyncio.sleep(0.1)
                wake.clear()

                def notify(url: str) -> None:
                    engine = make_engine(url)
                    with engine.begin() as conn:
                        conn.execute(_NOTIFY)
                    engine.dispose()

                async def heard_after_notify(url: str) -> bool:
                    await asyncio.to_thread(notify, url)
                    try:
                        await asyncio.wait_for(wake.wait(), 1.0)
                    except TimeoutError:
                        return False
                    return True

                return await heard_after_notify(other_url), await heard_after_notify(my_url)
            finally:
                await hub.stop()

        heard_other, heard_mine = asyncio.run(scenario())
        assert not heard_other, "a broker in another schema woke this one"
        assert heard_mine, "this schema's notification did not wake the stream"
    finally:
        drop_schema(pg_server, mine)
        drop_schema(pg_server, other)


@pytest.fixture
def brokers(pg_server: str, tmp_path: Path) -> Iterator[Brokers]:
    schema, url = new_schema(pg_server, "broker_push")
    # Node A with two workers: whichever worker serves the holder, the push must reach it.
    stack = Brokers.up(url, tmp_path, patients=1, workers=2)
    try:
        yield stack
    finally:
        stack.down()
        drop_schema(pg_server, schema)


def test_withdrawal_and_suspension_reach_a_holder_on_another_node(brokers: Brokers) -> None:
    from broker_sdk.errors import AppSuspended, TokenRevoked
    from broker_sdk.verifier import HolderVerifier

    from tests.reliability.harness import HOLDER_AUDIENCE, Patient

    assert brokers.holder_key is not None
    patient = Patient(0, brokers.issuer, brokers.client_id)
    holder = HolderVerifier(
        brokers.issuer, HOLDER_AUDIENCE, holder_id=HOLDER_ID, holder_key=brokers.holder_key
    )
    try:
        assert holder.start_push(wait=20)
        patient.log_in()
        patient.grant()
        assert patient.access_token is not None
        holder.verify(patient.access_token)  # warm: the status list is cached for its ttl

        # Suspension: the app is suspended by a charter re-check, then restored.
        engine = make_engine(brokers.database_url)
        with engine.begin() as conn:
            conn.execute(text("UPDATE apps SET status = 'suspended'"))
        engine.dispose()
        began = time.monotonic()
        _announce(brokers, "suspended")
        assert _refused_within(holder, patient.access_token, AppSuspended, 1.0), "suspension not pushed"
        print(f"suspension refused after {time.monotonic() - began:.3f} s")
        engine = make_engine(brokers.database_url)
        with engine.begin() as conn:
            conn.execute(text("UPDATE apps SET status = 'approved'"))
        engine.dispose()
        _announce(brokers, "restored")
        deadline = time.monotonic() + 1.0
        while True:
            try:
                holder.verify(patient.access_token)
                break
            except AppSuspended:
                assert time.monotonic() < deadline, "restoration not pushed"
                time.sleep(0.01)

        # Withdrawal on node A, holder on node B (the balancer sends it there).
        patient.revoke(via=brokers.nodes[0].url)
        began = time.monotonic()
        assert _refused_within(holder, patient.access_token, TokenRevoked, 1.0), "withdrawal not pushed"
        print(f"withdrawal refused after {time.monotonic() - began:.3f} s")

        # Catch-up: the holder goes away; meanwhile the patient grants and withdraws again;
        # back on the other node with Last-Event-ID, it is told what it missed.
        listener = next(iter(holder._issuers.values())).listener
        assert listener is not None and listener.last_event_id is not None
        last_seen = listener.last_event_id
        holder.close()
        time.sleep(1.01 - time.time() % 1)  # a new token's iat after the withdrawal's second
        patient.grant()
        since = time.time()
        patient.revoke()
        assert _replayed(brokers, last_seen, since - 0.01) == patient.consent_id, "the missed withdrawal"
    finally:
        holder.close()
        patient.close()


def _replayed(brokers: Brokers, last_event_id: str, since: float) -> str | None:
    """The consent of the first withdrawal made after ``since`` (epoch) that a holder
    resuming at ``last_event_id`` on node A is sent; None if none comes within 3 s."""
    import json
    from datetime import datetime

    import httpx
    from broker_sdk.events import client_assertion

    assert brokers.holder_key is not None
    headers = {
        "Authorization": "Bearer "
        + client_assertion(brokers.holder_key, client_id=HOLDER_ID, audience=brokers.issuer),
        "Last-Event-ID": last_event_id,
    }
    deadline = time.monotonic() + 3
    event = ""
    with httpx.stream(
        "GET",
        f"{brokers.nodes[0].url}/events/revocations",
        params={"holder": HOLDER_ID},
        headers=headers,
        timeout=5,
    ) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if time.monotonic() > deadline:
                break
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data = json.loads(line[6:])
                if event == "revoked" and datetime.fromisoformat(data["at"]).timestamp() >= since:
                    return str(data["consent_id"])
    return None


def _announce(brokers: Brokers, action: str) -> None:
    """What a charter re-check writes when it suspends or restores the app (enforcement.py)."""
    from broker.catalog.models import App
    from broker.consent.service import announce_app_status
    from broker.db import make_session_factory, transaction, utcnow

    engine = make_engine(brokers.database_url)
    with transaction(make_session_factory(engine)) as session:
        app = session.get(App, brokers.client_id)
        assert app is not None
        assert announce_app_status(session, app, action, utcnow()) == 1
    engine.dispose()


def _refused_within(holder: object, token: str, error: type[Exception], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            holder.verify(token)  # type: ignore[attr-defined]
        except error:
            return True
        time.sleep(0.01)
    return False


def test_a_connection_the_database_dropped_gives_its_own_error(db_url: str) -> None:
    """A unit of work whose connection the database terminated (a restart) must fail with the
    driver's error, which the app answers with a retryable 503; the push hooks on rollback
    must not turn it into another error (it was a 500 under the fault test)."""
    from sqlalchemy.exc import OperationalError

    from broker.db import make_session_factory, transaction

    if not db_url.startswith("postgresql"):
        pytest.skip("a connection terminated by the server is a PostgreSQL matter")
    engine = make_engine(db_url)
    admin = make_engine(db_url)
    try:
        with pytest.raises(OperationalError), transaction(make_session_factory(engine)) as session:
            pid = session.execute(text("SELECT pg_backend_pid()")).scalar_one()
            with admin.begin() as conn:
                conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            session.execute(text("SELECT 1"))
    finally:
        engine.dispose()
        admin.dispose()
