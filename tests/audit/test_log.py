"""The log: appends, the sequencer, signed checkpoints, and `verify` against tampering done
directly in the database (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import threading
from datetime import timedelta
from typing import Any

import pytest
from jwcrypto import jwk, jws
from jwcrypto.common import json_encode
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker

from broker.audit import merkle
from broker.audit.checkpoints import consistency, inclusion, latest_checkpoint
from broker.audit.log import append_event, erase_patient_audit
from broker.audit.models import AuditCheckpoint, AuditEvent
from broker.audit.sequencer import CHECKPOINT_TYP, b64, sequence_batch
from broker.audit.tags import EventTag
from broker.db import transaction, utcnow
from broker.keys import KeyStore
from broker.settings import Settings
from tests.audit.conftest import sequence_all, verify


def _append(factory: sessionmaker[Session], count: int, patients: tuple[str | None, ...] = ("pat_a", "pat_b", None)) -> None:
    now = utcnow()
    with transaction(factory) as session:
        for i in range(count):
            patient = patients[i % len(patients)]
            append_event(
                session,
                tag=EventTag.CONSENT_GRANTED if patient else EventTag.APP_REGISTERED,
                patient_id=patient,
                actor=f"patient:{patient}" if patient else "app:app_x",
                details={"app": "app_x", "holders": ["labo"], "categories": ["lab_results"], "n": i},
                at=now + timedelta(seconds=i),
            )


@pytest.fixture
def log(factory: sessionmaker[Session], keystore: KeyStore, settings: Settings) -> sessionmaker[Session]:
    """Twelve events in three checkpoints (5, 9, 12 entries)."""
    for count in (5, 4, 3):
        _append(factory, count)
        sequence_all(factory, keystore, settings)
    return factory


def _ids(factory: sessionmaker[Session]) -> list[int]:
    with factory() as session:
        return list(session.scalars(select(AuditEvent.id).order_by(AuditEvent.leaf_index)))


def _exec(factory: sessionmaker[Session], sql: str, **params: Any) -> None:
    with transaction(factory) as session:
        session.execute(text(sql), params)


def test_append_is_one_insert_and_sequencing_signs_checkpoints(
    log: sessionmaker[Session], keystore: KeyStore, settings: Settings
) -> None:
    with log() as session:
        sizes = list(session.scalars(select(AuditCheckpoint.tree_size).order_by(AuditCheckpoint.tree_size)))
        assert sizes == [5, 9, 12]
        assert session.scalar(select(func.count()).where(AuditEvent.leaf_index.is_(None))) == 0
        latest = latest_checkpoint(session)
        assert latest is not None
    # The checkpoint is a JWS of the broker's key that says what the row says.
    token = jws.JWS()
    token.deserialize(latest.signed, key=jwk.JWK(**keystore.public_key(keystore.active_kid)), alg="ES256")
    claims = json.loads(token.payload)
    assert claims["tree_size"] == 12 and claims["root_hash"] == b64(latest.root_hash)
    assert claims["iss"] == settings.issuer
    report = verify(log, keystore, settings)
    assert report.ok and report.entries == 12 and report.checkpoints == 3, report


def test_nothing_new_signs_nothing(log: sessionmaker[Session], keystore: KeyStore, settings: Settings) -> None:
    assert sequence_all(log, keystore, settings) == 0
    with log() as session:
        assert session.scalar(select(func.count()).select_from(AuditCheckpoint)) == 3


def test_proofs_verify_against_the_signed_checkpoints(log: sessionmaker[Session]) -> None:
    import base64

    def raw(value: str) -> bytes:
        return base64.b64decode(value)

    with log() as session:
        for index in range(12):
            proof = inclusion(session, leaf_index=index, tree_size=12)
            root = raw(proof["checkpoint"]["root_hash"])
            path = [raw(p) for p in proof["inclusion_path"]]
            assert merkle.verify_inclusion(raw(proof["leaf_hash"]), index, 12, path, root)
        for first, second in ((5, 9), (5, 12), (9, 12), (12, 12)):
            proof = consistency(session, first=first, second=second)
            assert merkle.verify_consistency(
                first,
                second,
                raw(proof["first_checkpoint"]["root_hash"]),
                raw(proof["second_checkpoint"]["root_hash"]),
                [raw(p) for p in proof["consistency_path"]],
            )


def test_sequencing_in_small_batches_gives_the_same_tree(
    factory: sessionmaker[Session], keystore: KeyStore, settings: Settings
) -> None:
    _append(factory, 10)
    assert sequence_all(factory, keystore, settings, limit=3) == 10
    with factory() as session:
        sizes = list(session.scalars(select(AuditCheckpoint.tree_size).order_by(AuditCheckpoint.tree_size)))
    assert sizes == [3, 6, 9, 10]
    assert verify(factory, keystore, settings).ok


def test_one_sequencer_at_a_time(
    factory: sessionmaker[Session], keystore: KeyStore, settings: Settings
) -> None:
    """Sequencers racing each other (several broker processes) never fork the tree."""
    _append(factory, 30)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            sequence_all(factory, keystore, settings, limit=4)
        except BaseException as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    with factory() as session:
        assert session.scalar(select(func.max(AuditEvent.leaf_index))) == 29
    assert verify(factory, keystore, settings).ok


def test_a_busy_sequencer_is_skipped_not_waited_for(
    factory: sessionmaker[Session], keystore: KeyStore, settings: Settings
) -> None:
    _append(factory, 2)
    with transaction(factory) as holder:
        assert sequence_batch(holder, signer=keystore, secret_key=settings.secret_key,
                              issuer=settings.issuer, now=utcnow()) == 2
        if factory.kw["bind"].dialect.name == "postgresql":
            with transaction(factory) as other:
                assert sequence_batch(other, signer=keystore, secret_key=settings.secret_key,
                                      issuer=settings.issuer, now=utcnow(), wait=False) is None


# -- tampering, done directly in the database --------------------------------------------

def test_edited_event(log: sessionmaker[Session], keystore: KeyStore, settings: Settings) -> None:
    ids = _ids(log)
    details = json.dumps({"app": "app_x", "holders": ["labo"], "categories": ["lab_results"], "n": 99})
    _exec(log, "UPDATE audit_events SET details = :d WHERE id = :id", d=details, id=ids[6])
    problem = verify(log, keystore, settings).problem
    assert (problem.kind, problem.index, problem.event_id) == ("edited", 6, ids[6])


def test_edited_time_or_actor(log: sessionmaker[Session], keystore: KeyStore, settings: Settings) -> None:
    ids = _ids(log)
    _exec(log, "UPDATE audit_events SET actor = 'operator:someone' WHERE id = :id", id=ids[10])
    problem = verify(log, keystore, settings).problem
    assert (problem.kind, problem.index, problem.event_id) == ("edited", 10, ids[10])


def test_edited_filter_column(log: sessionmaker[Session], keystore: KeyStore, settings: Settings) -> None:
    ids = _ids(log)
    _exec(log, "UPDATE audit_events SET app_id = 'app_other' WHERE id = :id", id=ids[3])
    problem = verify(log, keystore, settings).problem
    assert (problem.kind, problem.index, problem.event_id) == ("filters", 3, ids[3])


def test_deleted_event(log: sessionmaker[Session], keystore: KeyStore, settings: Settings) -> None:
    ids = _ids(log)
    _exec(log, "DELETE FROM audit_events WHERE id = :id", id=ids[4])
    problem = verify(log, keystore, settings).problem
    assert (problem.kind, problem.index) == ("missing", 4)
    assert str(ids[5]) in problem.message


def test_deleted_event_with_the_rest_renumbered(
    log: sessionmaker[Session], keystore: KeyStore, settings: Settings
) -> None:
    ids = _ids(log)
    _exec(log, "DELETE FROM audit_events WHERE id = :id", id=ids[4])
    for index in range(5, 12):
        _exec(log, "UPDATE audit_events SET leaf_index = :new WHERE leaf_index = :old", new=index - 1, old=index)
    problem = verify(log, keystore, settings).problem
    assert (problem.kind, problem.index, problem.event_id) == ("misplaced", 4, ids[5])


def test_deleted_tail(log: sessionmaker[Session], keystore: KeyStore, settings: Settings) -> None:
    ids = _ids(log)
    _exec(log, "DELETE FROM audit_events WHERE id = :id", id=ids[11])
    problem = verify(log, keystore, settings).problem
    assert (problem.kind, problem.index, problem.checkpoint_size) == ("missing", 11, 12)


def test_reordered_events(log: sessionmaker[Session], keystore: KeyStore, settings: Settings) -> None:
    ids = _ids(log)
    _exec(log, "UPDATE audit_events SET leaf_index = -1 WHERE id = :id", id=ids[7])
    _exec(log, "UPDATE audit_events SET leaf_index = 7 WHERE id = :id", id=ids[8])
    _exec(log, "UPDATE audit_events SET leaf_index = 8 WHERE id = :id", id=ids[7])
    problem = verify(log, keystore, settings).problem
    assert (problem.kind, problem.index, problem.event_id) == ("misplaced", 7, ids[8])


def test_inserted_event(log: sessionmaker[Session], keystore: KeyStore, settings: Settings) -> None:
    for index in range(11, 1, -1):
        _exec(log, "UPDATE audit_events SET leaf_index = :new WHERE leaf_index = :old", new=index + 1, old=index)
    with transaction(log) as session:
        append_event(session, tag=EventTag.CONSENT_REVOKED, patient_id="pat_a", actor="patient:pat_a",
                     details={"app": "app_x"}, at=utcnow())
        inserted = session.scalar(select(func.max(AuditEvent.id)))
        session.execute(text("UPDATE audit_events SET leaf_index = 2, commitment = :c, seal = :s WHERE id = :id"),
                        {"c": bytes(32), "s": bytes(32), "id": inserted})
    problem = verify(log, keystore, settings).problem
    assert (problem.kind, problem.index, problem.event_id) == ("misplaced", 2, inserted)


def test_event_rewritten_with_its_hashes_but_without_the_secret(
    log: sessionmaker[Session], keystore: KeyStore, settings: Settings
) -> None:
    """Salts are in the database: a writer can recompute a commitment, not the seal."""
    from broker.audit.log import commitment, event_body
    from broker.audit.models import AuditSalt

    ids = _ids(log)
    with transaction(log) as session:
        row = session.get(AuditEvent, ids[1])
        assert row is not None and row.patient_id is not None
        salt = session.get(AuditSalt, row.patient_id)
        assert salt is not None
        row.details = {**(row.details or {}), "n": 1000}
        row.commitment = commitment(salt.salt, event_body(index=1, event_id=row.id, tag=row.tag, at=row.at,
                                                         patient_id=row.patient_id, actor=row.actor,
                                                         details=row.details))
    problem = verify(log, keystore, settings).problem
    assert (problem.kind, problem.index, problem.event_id) == ("misplaced", 1, ids[1])


def test_event_rewritten_by_someone_holding_the_secret(
    log: sessionmaker[Session], keystore: KeyStore, settings: Settings
) -> None:
    """Even with every hash and seal recomputed, the signed checkpoints do not match."""
    from broker.audit.log import commitment, event_body, seal, seal_key
    from broker.audit.models import AuditSalt

    ids = _ids(log)
    with transaction(log) as session:
        row = session.get(AuditEvent, ids[6])
        assert row is not None and row.patient_id is not None
        salt = session.get(AuditSalt, row.patient_id)
        assert salt is not None
        row.details = {**(row.details or {}), "n": 1000}
        row.commitment = commitment(salt.salt, event_body(index=6, event_id=row.id, tag=row.tag, at=row.at,
                                                         patient_id=row.patient_id, actor=row.actor,
                                                         details=row.details))
        row.seal = seal(seal_key(settings.secret_key), 6, merkle.leaf_hash(row.commitment))
    problem = verify(log, keystore, settings).problem
    assert (problem.kind, problem.checkpoint_size, problem.index) == ("checkpoint", 9, 5)


def test_swapped_checkpoint(log: sessionmaker[Session], keystore: KeyStore, settings: Settings) -> None:
    with log() as session:
        signed = {size: s for size, s in session.execute(select(AuditCheckpoint.tree_size, AuditCheckpoint.signed))}
    _exec(log, "UPDATE audit_checkpoints SET signed = :s WHERE tree_size = 9", s=signed[5])
    problem = verify(log, keystore, settings).problem
    assert (problem.kind, problem.checkpoint_size) == ("checkpoint", 9)
    assert "swapped" in problem.message


def test_forged_checkpoint(log: sessionmaker[Session], keystore: KeyStore, settings: Settings) -> None:
    """A checkpoint signed by another key, even with the right kid, does not pass."""
    with log() as session:
        row = session.get(AuditCheckpoint, 12)
        assert row is not None
        claims = {"iss": settings.issuer, "tree_size": 12, "root_hash": b64(row.root_hash),
                  "iat": int(row.issued_at.timestamp())}
    other = jwk.JWK.generate(kty="EC", crv="P-256")
    token = jws.JWS(json_encode(claims))
    token.add_signature(other, alg="ES256", protected={"alg": "ES256", "kid": keystore.active_kid,
                                                        "typ": CHECKPOINT_TYP})
    _exec(log, "UPDATE audit_checkpoints SET signed = :s WHERE tree_size = 12", s=token.serialize(compact=True))
    problem = verify(log, keystore, settings).problem
    assert (problem.kind, problem.checkpoint_size) == ("checkpoint", 12)
    assert "signature" in problem.message


def test_erasure_keeps_the_tree_verifiable(
    log: sessionmaker[Session], keystore: KeyStore, settings: Settings
) -> None:
    with log() as session:
        before = {r.id: r.commitment for r in session.scalars(select(AuditEvent))}
        root = latest_checkpoint(session).root_hash  # type: ignore[union-attr]
    with transaction(log) as session:
        erased = erase_patient_audit(session, "pat_a")
    assert erased == 5
    with log() as session:
        rows = list(session.scalars(select(AuditEvent)))
        assert {r.id: r.commitment for r in rows} == before
        assert not [r for r in rows if r.patient_id == "pat_a"]
        gone = [r for r in rows if r.erased_at is not None]
        assert len(gone) == 5 and all(r.details is None and r.actor is None for r in gone)
        assert session.scalar(text("SELECT count(*) FROM audit_salts WHERE patient_id = 'pat_a'")) == 0
        assert latest_checkpoint(session).root_hash == root  # type: ignore[union-attr]
        # Another patient's proofs are unchanged.
        other = session.scalars(select(AuditEvent).where(AuditEvent.patient_id == "pat_b")).first()
        assert other is not None and other.details is not None
    report = verify(log, keystore, settings)
    assert report.ok, report
