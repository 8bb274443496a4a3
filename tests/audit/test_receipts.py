"""Access receipts from holders: the contract of POST /receipts."""

from __future__ import annotations

from typing import Any

import pytest
from jwcrypto import jwk
from sqlalchemy import select

from broker.audit.models import AuditEvent
from tests.audit.conftest import World

JWT = {"Content-Type": "application/jwt"}


def released(world: World) -> list[AuditEvent]:
    with world.factory() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.tag == "holder:data:released")))


def test_a_receipt_is_recorded_once(client: Any, world: World) -> None:
    patient = world.patient("gaelle")
    token = world.receipt("gaelle", jti="rcpt-0001")
    first = client.post("/receipts", content=token, headers=JWT)
    assert first.status_code == 201, first.text
    assert first.json() == {"receipt": "rcpt-0001", "recorded": True}
    again = client.post("/receipts", content=token, headers=JWT)
    assert again.status_code == 200 and again.json() == {"receipt": "rcpt-0001", "recorded": False}
    events = released(world)
    assert len(events) == 1
    event = events[0]
    assert event.patient_id == patient and event.actor == "holder:labo-test"
    assert event.details is not None
    assert {k: event.details[k] for k in ("holder", "app", "categories", "record_count", "consent_id", "flagged")} == {
        "holder": "labo-test", "app": world.client_id, "categories": ["lab_results"], "record_count": 12,
        "consent_id": world.consents["gaelle"], "flagged": False,
    }
    assert event.details["token_jti"].startswith("at_")


def test_categories_beyond_the_consent_are_recorded_and_flagged(client: Any, world: World) -> None:
    world.patient("gaelle")
    answer = client.post("/receipts", content=world.receipt("gaelle", categories=["lab_results", "medications"]),
                         headers=JWT)
    assert answer.status_code == 201
    (event,) = released(world)
    assert event.details is not None
    assert event.details["flagged"] is True and event.details["outside_consent"] == ["medications"]


@pytest.mark.parametrize(
    ("case", "status"),
    [
        ("bad-signature", 401),
        ("unknown-holder", 401),
        ("unapproved-holder", 401),
        ("wrong-typ", 401),
        ("unknown-consent", 403),
        ("holder-not-in-consent", 403),
        ("wrong-client", 403),
        ("wrong-audience", 400),
        ("too-long-lived", 400),
        ("missing-claim", 400),
        ("negative-count", 400),
        ("bad-jti", 400),
        ("expired", 400),
    ],
)
def test_refused_receipts(client: Any, world: World, settings: Any, case: str, status: int) -> None:
    import time

    from broker.catalog.models import Holder
    from broker.db import transaction

    world.patient("gaelle", grants={"labo-test": ["lab_results"]})
    now = int(time.time())
    token = {
        "bad-signature": lambda: world.receipt("gaelle", key=jwk.JWK.generate(kty="EC", crv="P-256")),
        "unknown-holder": lambda: world.receipt("gaelle", iss="labo-inconnu"),
        "unapproved-holder": lambda: world.receipt("gaelle"),
        "wrong-typ": lambda: world.receipt("gaelle", header={"typ": "at+jwt"}),
        "unknown-consent": lambda: world.receipt("gaelle", consent_id="cns_nope"),
        "holder-not-in-consent": lambda: world.receipt("gaelle", holder="pharma-test"),
        "wrong-client": lambda: world.receipt("gaelle", client_id="app_other"),
        "wrong-audience": lambda: world.receipt("gaelle", aud="https://another-broker.example"),
        "too-long-lived": lambda: world.receipt("gaelle", exp=now + 8 * 86400),
        "missing-claim": lambda: world.receipt("gaelle", record_count=None),
        "negative-count": lambda: world.receipt("gaelle", record_count=-1),
        "bad-jti": lambda: world.receipt("gaelle", jti="no spaces/allowed"),
        "expired": lambda: world.receipt("gaelle", iat=now - 3 * 86400, exp=now - 3600),
    }[case]()
    if case == "unapproved-holder":
        with transaction(world.factory) as session:
            holder = session.get(Holder, "labo-test")
            assert holder is not None
            holder.status = "suspended"
    answer = client.post("/receipts", content=token, headers=JWT)
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert released(world) == []


def test_a_receipt_queued_for_days_is_accepted(client: Any, world: World) -> None:
    import time

    world.patient("gaelle")
    now = int(time.time())
    token = world.receipt("gaelle", iat=now - 5 * 86400, exp=now + 86400, released_at=now - 5 * 86400)
    assert client.post("/receipts", content=token, headers=JWT).status_code == 201


def test_receipts_need_their_media_type(client: Any, world: World) -> None:
    world.patient("gaelle")
    answer = client.post("/receipts", content=world.receipt("gaelle"), headers={"Content-Type": "application/json"})
    assert answer.status_code == 415
