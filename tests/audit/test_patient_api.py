"""The patient's own events and export: scoped to the logged-in patient, with proofs that
verify offline; another patient's ids, filters and cursors leak nothing."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

from jwcrypto import jwk, jws

from broker.audit import merkle
from broker.audit.log import erase_patient_audit
from broker.db import transaction
from tests.audit.conftest import World

JWT = {"Content-Type": "application/jwt"}


def _events(client: Any, **params: Any) -> dict[str, Any]:
    answer = client.get("/api/me/audit/events", params=params)
    assert answer.status_code == 200, answer.text
    assert answer.headers["cache-control"].startswith("no-store")
    return dict(answer.json())


def _two_patients(client: Any, world: World) -> None:
    world.patient("gaelle", grants={"labo-test": ["lab_results"]})
    world.patient("antoine", grants={"pharma-test": ["medications"]})
    for _ in range(3):
        assert client.post("/receipts", content=world.receipt("gaelle"), headers=JWT).status_code == 201
    token = world.receipt("antoine", holder="pharma-test", categories=["medications"])
    assert client.post("/receipts", content=token, headers=JWT).status_code == 201


def test_login_is_required(client: Any, world: World) -> None:
    assert client.get("/api/me/audit/events").status_code == 401
    assert client.get("/api/me/audit/export").status_code == 401


def test_a_patient_sees_their_own_events_with_filters_and_pages(client: Any, world: World) -> None:
    _two_patients(client, world)
    world.log_in(client, "gaelle")
    everything = _events(client, limit=200)["items"]
    tags = [e["tag"] for e in everything]
    assert tags.count("holder:data:released") == 3
    assert tags.count("patient:link:created") == 2 and tags.count("patient:consent:granted") == 1
    assert all(world.patients["antoine"] not in json.dumps(e) for e in everything)
    # Filters.
    assert len(_events(client, holder="labo-test")["items"]) == 5  # a link, the consent, three releases
    assert len(_events(client, category="lab_results")["items"]) == 4
    assert len(_events(client, app=world.client_id)["items"]) == 4
    # Pages of two, newest first, that add up to the whole.
    seen, cursor = [], None
    while True:
        page = _events(client, limit=2, **({"cursor": cursor} if cursor else {}))
        seen += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [e["id"] for e in seen] == [e["id"] for e in everything]
    assert [e["at"] for e in seen] == sorted((e["at"] for e in seen), reverse=True)


def test_another_patients_filters_and_cursors_leak_nothing(client: Any, world: World) -> None:
    _two_patients(client, world)
    world.log_in(client, "antoine")
    theirs = _events(client, limit=200)["items"]
    world.log_in(client, "gaelle")
    mine = _events(client, limit=200)["items"]
    assert not {e["id"] for e in theirs} & {e["id"] for e in mine}
    nothing = _events(client, holder="unknown-holder")
    # Antoine's category (only he released medications) and a made-up holder: the same empty
    # answer, and no count anywhere in it.
    assert _events(client, category="medications") == nothing == {"items": [], "next_cursor": None}
    # A holder both use: only Gaëlle's own link event there.
    shared = _events(client, holder="pharma-test")["items"]
    assert [e["tag"] for e in shared] == ["patient:link:created"]
    assert {e["id"] for e in shared} <= {e["id"] for e in mine}
    # A cursor built from Antoine's newest event pages through Gaëlle's events only.
    newest = theirs[0]
    forged = base64.urlsafe_b64encode(json.dumps([newest["at"], newest["id"] + 1]).encode()).decode().rstrip("=")
    assert all(e["id"] in {m["id"] for m in mine} for e in _events(client, cursor=forged)["items"])
    # The export carries only Gaëlle's events.
    export = client.get("/api/me/audit/export").json()
    assert {e["id"] for e in export["entries"]} == {e["id"] for e in mine}


def test_bad_filters_are_refused(client: Any, world: World) -> None:
    world.patient("gaelle")
    world.log_in(client, "gaelle")
    for params in ({"limit": 0}, {"since": "yesterday"}, {"cursor": "not-a-cursor"}, {"since": "2026-01-01T00:00"}):
        answer = client.get("/api/me/audit/events", params=params)
        assert answer.status_code == 400, params
        assert answer.headers["content-type"].startswith("application/problem+json")


def verify_export(export: dict[str, Any], jwks: dict[str, Any]) -> None:
    """What an offline verifier does with an export, written from its documented format."""
    checkpoint = export["checkpoint"]
    header = json.loads(base64.urlsafe_b64decode(checkpoint["signed"].split(".")[0] + "=="))
    key = next(k for k in jwks["keys"] if k["kid"] == header["kid"])
    token = jws.JWS()
    token.deserialize(checkpoint["signed"], key=jwk.JWK(**key), alg="ES256")
    signed = json.loads(token.payload)
    assert header["typ"] == "audit-checkpoint+jwt"
    assert (signed["tree_size"], signed["root_hash"]) == (checkpoint["tree_size"], checkpoint["root_hash"])
    root = base64.b64decode(signed["root_hash"])
    salt = base64.b64decode(export["salt"])
    for entry in export["entries"]:
        body = json.dumps({"v": 1, "index": entry["leaf_index"], "id": entry["id"], "tag": entry["tag"],
                           "at": entry["at"], "patient": entry["patient"], "actor": entry["actor"],
                           "details": entry["details"]},
                          sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        leaf = hmac.new(salt, body, hashlib.sha256).digest()
        assert base64.b64encode(leaf).decode() == entry["commitment"]
        path = [base64.b64decode(p) for p in entry["inclusion_path"]]
        assert merkle.verify_inclusion(hashlib.sha256(b"\x00" + leaf).digest(), entry["leaf_index"],
                                       signed["tree_size"], path, root)


def test_the_export_verifies_offline(client: Any, world: World) -> None:
    _two_patients(client, world)
    world.log_in(client, "gaelle")
    answer = client.get("/api/me/audit/export")
    assert answer.status_code == 200 and answer.headers["cache-control"].startswith("no-store")
    export = answer.json()
    assert export["format"] == "broker-audit-export/1" and export["patient_id"] == world.patients["gaelle"]
    assert len(export["entries"]) == 6 and export["pending"] == []
    verify_export(export, client.get("/jwks.json").json())
    # The public checkpoint is the one the export proves against (or a later one).
    public = client.get("/.well-known/audit-checkpoint").json()
    assert public["tree_size"] >= export["checkpoint"]["tree_size"]


def test_erasure_leaves_another_patients_export_intact(client: Any, world: World) -> None:
    _two_patients(client, world)
    world.log_in(client, "antoine")
    before = client.get("/api/me/audit/export").json()
    with transaction(world.factory) as session:
        assert erase_patient_audit(session, world.patients["gaelle"]) == 6
    after = client.get("/api/me/audit/export").json()
    assert after["entries"] == before["entries"] or [e["commitment"] for e in after["entries"]] == [
        e["commitment"] for e in before["entries"]
    ]
    verify_export(after, client.get("/jwks.json").json())
    world.log_in(client, "gaelle")
    assert _events(client)["items"] == []
    assert client.get("/api/me/audit/export").json()["entries"] == []


def test_public_checkpoints_and_proofs(client: Any, world: World) -> None:
    world.patient("gaelle")
    latest = client.get("/.well-known/audit-checkpoint")
    assert latest.status_code == 200
    size = latest.json()["tree_size"]
    assert client.get(f"/api/audit/checkpoints/{size}").json() == latest.json()
    assert client.get("/api/audit/checkpoints/999999").status_code == 404
    proof = client.get("/api/audit/proofs/inclusion", params={"leaf_index": 0, "tree_size": size}).json()
    assert merkle.verify_inclusion(base64.b64decode(proof["leaf_hash"]), 0, size,
                                   [base64.b64decode(p) for p in proof["inclusion_path"]],
                                   base64.b64decode(latest.json()["root_hash"]))
    world.patient("antoine")
    client.get("/api/me/audit/export")  # sequences on demand (needs no log-in to do so)
    newer = client.get("/.well-known/audit-checkpoint").json()
    assert newer["tree_size"] > size
    proof = client.get("/api/audit/proofs/consistency", params={"first": size, "second": newer["tree_size"]}).json()
    assert merkle.verify_consistency(size, newer["tree_size"], base64.b64decode(latest.json()["root_hash"]),
                                     base64.b64decode(newer["root_hash"]),
                                     [base64.b64decode(p) for p in proof["consistency_path"]])
