"""The audit log tampered with directly in the database, seen by both verifiers side by side.

Each test writes SQL on ``audit_events`` or ``audit_checkpoints`` the way someone with write
access to the database could (recomputing commitments with the salts the database holds,
when that helps them), then fetches the patient's export through ``GET
/api/me/audit/export`` and checks it offline with ``broker_sdk.verify_export`` against the
broker's ``/jwks.json``, and runs ``broker audit verify`` on the same database. Both must name
what was changed: the SDK by entry (kind, position in the export, event id), the broker by
leaf index and event id. Where the broker cannot build an export from the damaged log (a
deleted event), the endpoint must refuse it as a problem rather than serve a partial one.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

import pytest
from broker_sdk import ExportReport, verify_export
from jwcrypto import jwk, jws
from sqlalchemy import JSON, bindparam, select, text
from sqlalchemy.orm import Session

from broker.audit.log import commitment, event_body
from broker.audit.merkle import MerkleTree, leaf_hash
from broker.audit.models import AuditCheckpoint, AuditEvent, AuditSalt
from broker.audit.sequencer import CHECKPOINT_TYP, checkpoint_claims
from broker.cli import main
from broker.db import transaction
from tests.audit.conftest import World

JWT = {"Content-Type": "application/jwt"}


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, settings: Any) -> None:
    """What `broker audit verify` reads: the same database, keys and secret as the app."""
    monkeypatch.setenv("BROKER_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("BROKER_KEY_DIR", str(settings.key_dir))
    monkeypatch.setenv("BROKER_SECRET_KEY", settings.secret_key.decode())
    monkeypatch.setenv("BROKER_ISSUER", settings.issuer)
    monkeypatch.setenv("BROKER_DEV_MODE", "true")


@dataclass
class Log:
    client: Any
    world: World
    capsys: pytest.CaptureFixture[str]
    jwks: dict[str, Any]
    issuer: str
    patient_id: str

    def export(self) -> dict[str, Any]:
        answer = self.client.get("/api/me/audit/export")
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    def sdk(self, export: dict[str, Any]) -> ExportReport:
        return verify_export(export, jwks=self.jwks, issuer=self.issuer)

    def broker_verify(self) -> tuple[int, str, dict[str, Any] | None]:
        """`broker audit verify`: exit code, what it says on stderr, and its JSON report."""
        self.capsys.readouterr()
        code = main(["audit", "verify"])
        out, err = self.capsys.readouterr()
        return code, err, (json.loads(out) if code else None)

    def mine(self) -> list[tuple[int, int]]:
        """(leaf index, event id) of the patient's sequenced events, in leaf order."""
        with self.world.factory() as session:
            rows = session.execute(
                text("SELECT leaf_index, id FROM audit_events WHERE patient_id = :p AND leaf_index IS NOT NULL "
                     "ORDER BY leaf_index"),
                {"p": self.patient_id},
            ).all()
        return [(int(leaf), int(event_id)) for leaf, event_id in rows]

    def checkpoint_sizes(self) -> list[int]:
        with self.world.factory() as session:
            return [int(s) for s in session.scalars(text("SELECT tree_size FROM audit_checkpoints ORDER BY 1"))]


@pytest.fixture
def log(client: Any, world: World, env: None, settings: Any, capsys: pytest.CaptureFixture[str]) -> Log:
    """Two patients; Gaëlle's log spans two signed checkpoints, and she is logged in."""
    world.patient("gaelle")
    world.patient("antoine", grants={"pharma-test": ["medications"]})
    for _ in range(2):
        assert client.post("/receipts", content=world.receipt("gaelle"), headers=JWT).status_code == 201
    world.log_in(client, "gaelle")
    jwks = client.get("/jwks.json").json()
    found = Log(client, world, capsys, jwks, settings.issuer, world.patients["gaelle"])
    found.export()  # sequences the log and signs the first checkpoint
    for _ in range(2):
        assert client.post("/receipts", content=world.receipt("gaelle"), headers=JWT).status_code == 201
    token = world.receipt("antoine", holder="pharma-test", categories=["medications"])
    assert client.post("/receipts", content=token, headers=JWT).status_code == 201
    found.export()  # and the second
    assert len(found.checkpoint_sizes()) == 2
    return found


def named(report: ExportReport) -> set[tuple[str, int | None, int | None]]:
    return {(p.kind, p.index, p.event_id) for p in report.problems}


def position(export: dict[str, Any], event_id: int) -> int:
    return next(i for i, e in enumerate(export["entries"]) if e["id"] == event_id)


def recommit(session: Session, event_ids: list[int]) -> None:
    """What someone holding the database can do: recompute rows' commitments with the salts
    it stores (not their seals: those need the broker's secret)."""
    session.expire_all()
    for event_id in event_ids:
        event = session.get(AuditEvent, event_id)
        assert event is not None and event.leaf_index is not None
        salt = session.get(AuditSalt, event.patient_id) if event.patient_id else None
        body = event_body(index=event.leaf_index, event_id=event.id, tag=event.tag, at=event.at,
                          patient_id=event.patient_id, actor=event.actor, details=event.details)
        session.execute(text("UPDATE audit_events SET commitment = :c WHERE id = :id"),
                        {"c": commitment(salt.salt if salt else None, body), "id": event_id})


SET_DETAILS = text("UPDATE audit_events SET details = :d WHERE id = :id").bindparams(bindparam("d", type_=JSON))


def released(log: Log) -> list[tuple[int, int]]:
    """(leaf index, event id) of Gaëlle's data releases."""
    with log.world.factory() as session:
        ids = set(session.scalars(select(AuditEvent.id).where(AuditEvent.patient_id == log.patient_id,
                                                               AuditEvent.tag == "holder:data:released")))
    return [(leaf, event_id) for leaf, event_id in log.mine() if event_id in ids]


# -- untouched ----------------------------------------------------------------------------------


def test_an_untouched_log_verifies_on_both_sides(log: Log) -> None:
    export = log.export()
    assert len(export["entries"]) == 7 and export["pending"] == []
    report = log.sdk(export)
    assert report.ok, report.problems
    assert all(e.commitment and e.inclusion for e in report.entries)
    code, err, _ = log.broker_verify()
    assert code == 0, err


# -- events -------------------------------------------------------------------------------------


def test_edited_details(log: Log) -> None:
    # A release made to look smaller: 12 records become 1.
    leaf, target = released(log)[1]
    with transaction(log.world.factory) as session:
        event = session.get(AuditEvent, target)
        assert event is not None and event.details is not None and event.details["record_count"] == 12
        session.execute(SET_DETAILS, {"d": {**event.details, "record_count": 1}, "id": target})
    export = log.export()
    at = position(export, target)
    assert export["entries"][at]["details"]["record_count"] == 1  # served as it now reads
    report = log.sdk(export)
    assert named(report) == {("commitment", at, target)}
    assert report.problems[0].leaf_index == leaf
    assert report.entries[at].inclusion and not report.entries[at].commitment
    code, err, found = log.broker_verify()
    assert code == 1
    assert found is not None and found["problem"]["kind"] == "edited"
    assert (found["problem"]["index"], found["problem"]["event_id"]) == (leaf, target)
    assert f"entry {leaf} (event id {target}): edited" in err


def test_reordered_events(log: Log) -> None:
    # Two of Gaëlle's events exchange their leaf indices (rows, commitments and seals move
    # with them).
    (a, first), (b, second) = log.mine()[1], log.mine()[4]
    with transaction(log.world.factory) as session:
        swap = text("UPDATE audit_events SET leaf_index = :to WHERE id = :id")
        session.execute(swap, {"to": -1, "id": first})
        session.execute(swap, {"to": a, "id": second})
        session.execute(swap, {"to": b, "id": first})
    export = log.export()
    assert [e["id"] for e in export["entries"] if e["leaf_index"] in (a, b)] == [second, first]
    report = log.sdk(export)
    at_a, at_b = position(export, second), position(export, first)
    # Each is committed with its own index: neither opens at the other's place.
    assert {p for p in named(report) if p[0] == "commitment"} == {("commitment", at_a, second),
                                                                  ("commitment", at_b, first)}
    # And the tree rebuilt from the rows is not the signed one: no proof leads to its root.
    assert {p for p in named(report) if p[0] == "inclusion"} == {
        ("inclusion", i, e["id"]) for i, e in enumerate(export["entries"])
    }
    assert {p.kind for p in report.problems} == {"commitment", "inclusion"}
    code, err, found = log.broker_verify()
    assert code == 1
    assert found is not None and found["problem"]["kind"] == "misplaced"
    assert (found["problem"]["index"], found["problem"]["event_id"]) == (a, second)
    assert f"entry {a} (event id {second}): misplaced" in err


@pytest.mark.parametrize("close_the_gap", [False, True], ids=["hole", "renumbered"])
def test_deleted_event(log: Log, close_the_gap: bool) -> None:
    size = log.checkpoint_sizes()[-1]
    leaf, target = log.mine()[2]
    with transaction(log.world.factory) as session:
        session.execute(text("DELETE FROM audit_events WHERE id = :id"), {"id": target})
        if close_the_gap:
            # Later rows move down one place, their commitments recomputed with the salts.
            later = list(session.scalars(text("SELECT id FROM audit_events WHERE leaf_index > :l "
                                              "ORDER BY leaf_index"), {"l": leaf}))
            for event_id in later:
                session.execute(text("UPDATE audit_events SET leaf_index = leaf_index - 1 WHERE id = :id"),
                                {"id": event_id})
            recommit(session, later)
    # The export is refused, loudly: the log no longer holds what its checkpoint covers, and
    # no proof can be built against it. There is no export for the SDK to check; the one
    # taken before the deletion still verifies (an export cannot show an event left out).
    answer = log.client.get("/api/me/audit/export")
    assert answer.status_code == 500, answer.text  # a damaged log is the server's fault, said so
    assert answer.json()["title"] == "The audit log is damaged"
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert f"does not hold the {size} entries its checkpoint covers" in answer.json()["detail"]
    assert log.checkpoint_sizes()[-1] == size  # and nothing was signed over the damage
    code, err, found = log.broker_verify()
    assert code == 1 and found is not None
    problem = found["problem"]
    if close_the_gap:
        with log.world.factory() as session:
            moved = session.scalar(text("SELECT id FROM audit_events WHERE leaf_index = :l"), {"l": leaf})
        assert (problem["kind"], problem["index"], problem["event_id"]) == ("misplaced", leaf, moved)
        assert f"entry {leaf} (event id {moved}): misplaced" in err
    else:
        assert (problem["kind"], problem["index"], problem["event_id"]) == ("missing", leaf, None)
        assert f"entry {leaf}: missing: no entry at this index (deleted)" in err


def test_inserted_event(log: Log) -> None:
    # A forged release of 500 records slipped in at the place of Gaëlle's third event; the rows
    # from there move up one place; the forged row and the moved ones get commitments that open
    # with the salts. Its seal is a copy of the displaced row's (the secret it needs is not in
    # the database).
    leaf, displaced = log.mine()[2]
    _, template = released(log)[0]
    with transaction(log.world.factory) as session:
        session.execute(text("UPDATE audit_events SET leaf_index = -leaf_index - 1 WHERE leaf_index >= :l"),
                        {"l": leaf})
        session.execute(text("UPDATE audit_events SET leaf_index = -leaf_index WHERE leaf_index < 0"))
        event = session.get(AuditEvent, template)
        assert event is not None and event.details is not None
        session.execute(
            text("INSERT INTO audit_events (tag, at, patient_id, actor, app_id, holders, categories, details, "
                 "leaf_index, commitment, seal) SELECT tag, at, patient_id, actor, app_id, holders, categories, "
                 ":d, :l, commitment, seal FROM audit_events WHERE id = :displaced").bindparams(
                bindparam("d", type_=JSON)),
            {"d": {**event.details, "record_count": 500}, "l": leaf, "displaced": displaced},
        )
        forged = session.scalar(text("SELECT id FROM audit_events WHERE leaf_index = :l"), {"l": leaf})
        moved = list(session.scalars(text("SELECT id FROM audit_events WHERE leaf_index > :l"), {"l": leaf}))
        recommit(session, [forged, *moved])
    export = log.export()
    at = position(export, forged)
    assert export["entries"][at]["details"]["record_count"] == 500 and export["entries"][at]["leaf_index"] == leaf
    report = log.sdk(export)
    # Every commitment opens; but the tree of the rows is not the tree the broker signed: no
    # proof leads to the signed root, the forged entry's first among them.
    assert all(e.commitment for e in report.entries)
    assert ("inclusion", at, forged) in named(report)
    assert named(report) == {("inclusion", i, e["id"]) for i, e in enumerate(export["entries"])}
    code, err, found = log.broker_verify()
    assert code == 1 and found is not None
    assert (found["problem"]["kind"], found["problem"]["index"], found["problem"]["event_id"]) == (
        "misplaced", leaf, forged)
    assert f"entry {leaf} (event id {forged}): misplaced" in err


# -- checkpoints --------------------------------------------------------------------------------


def test_swapped_checkpoint(log: Log) -> None:
    # The latest checkpoint's row keeps its size and root but carries the earlier signed JWS.
    earlier, latest = log.checkpoint_sizes()
    with transaction(log.world.factory) as session:
        session.execute(
            text("UPDATE audit_checkpoints SET signed = (SELECT signed FROM audit_checkpoints WHERE tree_size = :e) "
                 "WHERE tree_size = :l"),
            {"e": earlier, "l": latest},
        )
    export = log.export()
    assert export["checkpoint"]["tree_size"] == latest
    report = log.sdk(export)
    assert report.checkpoint is not None and report.checkpoint.signature  # a genuine signature…
    assert report.checkpoint.tree_size == earlier  # …of another tree
    (signature,) = report.problems_of("signature")
    assert signature.index is None and f"the broker signed {earlier}" in signature.message
    # The proofs were built for the stated tree, not the signed one.
    assert {p.index for p in report.problems_of("inclusion")} == set(range(len(export["entries"])))
    assert {p.kind for p in report.problems} == {"signature", "inclusion"}
    code, err, found = log.broker_verify()
    assert code == 1 and found is not None
    problem = found["problem"]
    assert (problem["kind"], problem["checkpoint_size"], problem["index"]) == ("checkpoint", latest, earlier)
    assert f"entry {earlier}: checkpoint: checkpoint {latest}: " in err and "swapped or edited" in err


def test_forged_checkpoint_over_an_edit(log: Log) -> None:
    # An edited event, its commitment recomputed, and the latest checkpoint replaced by one over
    # the new tree, signed with another key under the broker's kid.
    leaf, target = released(log)[1]
    size = log.checkpoint_sizes()[-1]
    kid = log.jwks["keys"][0]["kid"]
    key = jwk.JWK.generate(kty="EC", crv="P-256", kid=kid)
    with transaction(log.world.factory) as session:
        event = session.get(AuditEvent, target)
        assert event is not None and event.details is not None
        session.execute(SET_DETAILS, {"d": {**event.details, "record_count": 1}, "id": target})
        recommit(session, [target])
        leaves = list(session.scalars(text("SELECT commitment FROM audit_events WHERE leaf_index < :n "
                                           "ORDER BY leaf_index"), {"n": size}))
        root = MerkleTree([leaf_hash(bytes(c)) for c in leaves]).root()
        checkpoint = session.get(AuditCheckpoint, size)
        assert checkpoint is not None
        claims = checkpoint_claims(log.issuer, size, root, checkpoint.issued_at)
        token = jws.JWS(json.dumps(claims).encode())
        token.add_signature(key, alg="ES256", protected=json.dumps({"alg": "ES256", "kid": kid, "typ": CHECKPOINT_TYP}))
        session.execute(
            text("UPDATE audit_checkpoints SET root_hash = :r, signed = :s WHERE tree_size = :n"),
            {"r": root, "s": token.serialize(compact=True), "n": size},
        )
    export = log.export()
    assert export["checkpoint"]["root_hash"] == base64.b64encode(root).decode()
    at = position(export, target)
    assert export["entries"][at]["details"]["record_count"] == 1
    report = log.sdk(export)
    # The entries prove against the stated root; only the signature gives the forgery away.
    assert report.checkpoint is not None and not report.checkpoint.signature
    assert named(report) == {("signature", None, None)}
    assert "signature" in report.problems[0].message
    code, err, found = log.broker_verify()
    assert code == 1 and found is not None
    # The broker's seal, which needs its secret, names the edited entry itself.
    assert (found["problem"]["kind"], found["problem"]["index"], found["problem"]["event_id"]) == (
        "misplaced", leaf, target)
    assert f"entry {leaf} (event id {target}): misplaced" in err
