"""Consents past their end: marked expired once, logged once, shown to the patient."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import func, select, update

from broker.audit.expiry import ExpirySweep, expire_consents
from broker.audit.models import AuditEvent
from broker.audit.tags import EventTag
from broker.consent.models import ConsentEvent, ConsentRecord, StatusEntry
from broker.consent.service import INVALID
from broker.db import transaction, utcnow
from tests.audit.conftest import World


def _age(world: World, name: str, days: int) -> None:
    """Move the consent's end ``days`` into the past."""
    with transaction(world.factory) as session:
        session.execute(
            update(ConsentRecord)
            .where(ConsentRecord.id == world.consents[name])
            .values(expires_at=utcnow() - timedelta(days=days))
        )


def _expired_events(world: World) -> list[AuditEvent]:
    with world.factory() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.tag == EventTag.CONSENT_EXPIRED)))


def test_the_sweep_expires_each_consent_once(world: World) -> None:
    world.patient("gaelle")
    world.patient("antoine")
    _age(world, "gaelle", 1)
    with transaction(world.factory) as session:
        assert expire_consents(session, now=utcnow()) == 1
    with transaction(world.factory) as session:
        assert expire_consents(session, now=utcnow()) == 0  # idempotent
    assert ExpirySweep(world.factory)() == 0
    (event,) = _expired_events(world)
    assert event.patient_id == world.patients["gaelle"]
    assert event.actor == "broker"
    assert event.details is not None and event.details["consent_id"] == world.consents["gaelle"]
    assert event.app_id == world.client_id
    with world.factory() as session:
        consent = session.get(ConsentRecord, world.consents["gaelle"])
        assert consent is not None and consent.status == "expired"
        assert event.at == consent.expires_at  # dated at the expiry, not at the sweep
        entry = session.get(StatusEntry, consent.status_entry_id)
        assert entry is not None and entry.status == INVALID
        records = session.scalar(
            select(func.count())
            .select_from(ConsentEvent)
            .where(ConsentEvent.consent_id == consent.id, ConsentEvent.action == "expired")
        )
        assert records == 1
        other = session.get(ConsentRecord, world.consents["antoine"])
        assert other is not None and other.status == "active"


def test_a_revoked_or_renewed_consent_is_not_expired(world: World) -> None:
    from broker.consent.service import patient_consent, revoke_consent

    world.patient("gaelle")
    _age(world, "gaelle", 2)
    with transaction(world.factory) as session:
        consent = patient_consent(
            session, patient_id=world.patients["gaelle"], consent_id=world.consents["gaelle"]
        )
        revoke_consent(session, consent=consent, by="patient:x", reason=None, now=utcnow())
    with transaction(world.factory) as session:
        assert expire_consents(session, now=utcnow()) == 0
    assert _expired_events(world) == []


def test_the_sweep_works_in_batches(world: World) -> None:
    for name in ("a", "b", "c"):
        world.patient(name)
        _age(world, name, 3)
    with transaction(world.factory) as session:
        assert expire_consents(session, now=utcnow(), limit=2) == 2
    assert ExpirySweep(world.factory)() == 1
    assert len(_expired_events(world)) == 3


def test_the_patient_sees_the_expiry(client: Any, world: World) -> None:
    world.patient("gaelle")
    _age(world, "gaelle", 1)
    ExpirySweep(world.factory)()
    world.log_in(client, "gaelle")
    client.cookies.set("broker_lang", "fr")
    page = client.get("/my/history").text
    assert "Votre accord à Suivi Glycémie est arrivé à son terme" in page
    assert "Accord terminé." in client.get("/my/consents").text
