"""The offline verifier of a patient's audit export, against a real export of the live broker:
it passes as given, and each way of tampering with it is caught and named (kind and entry).
Its RFC 9162 inclusion check is held against trees computed here from the RFC's definitions."""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from jwcrypto import jwk, jws
from sdk_support import Broker, Browser, grant, new_key
from sqlalchemy import create_engine, text

from broker_sdk import ExportReport, ExportUnreadable, verify_export, verify_inclusion
from broker_sdk.cli import main

# -- RFC 9162 §2.1, written from the RFC's recursive definitions ------------------------------


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def mth(leaves: list[bytes]) -> bytes:
    """MTH(D[n]) of §2.1.1, over the leaf inputs (not their hashes)."""
    n = len(leaves)
    if n == 0:
        return sha256(b"")
    if n == 1:
        return sha256(b"\x00" + leaves[0])
    k = 1
    while k * 2 < n:
        k *= 2
    return sha256(b"\x01" + mth(leaves[:k]) + mth(leaves[k:]))


def path(m: int, leaves: list[bytes]) -> list[bytes]:
    """PATH(m, D[n]) of §2.1.3.1."""
    n = len(leaves)
    if n == 1:
        return []
    k = 1
    while k * 2 < n:
        k *= 2
    if m < k:
        return [*path(m, leaves[:k]), mth(leaves[k:])]
    return [*path(m - k, leaves[k:]), mth(leaves[:k])]


# The test vectors of the RFC 6962 reference code (certificate-transparency): the tree heads
# of the first n of these eight leaves.
CT_LEAVES = [bytes.fromhex(h) for h in (
    "", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f",
)]
CT_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]


def test_the_reference_tree_heads() -> None:
    assert [mth(CT_LEAVES[:n]).hex() for n in range(1, 9)] == CT_ROOTS


def test_inclusion_proofs_follow_rfc_9162() -> None:
    for size in [*range(1, 34), 63, 64, 65, 100]:
        leaves = [f"leaf {i}".encode() for i in range(size)]
        root = mth(leaves)
        for index in range(size):
            leaf = sha256(b"\x00" + leaves[index])
            proof = path(index, leaves)
            assert verify_inclusion(leaf, index, size, proof, root), (size, index)
            # Anything else is refused: another place, a deeper tree, a longer or shorter path,
            # a changed hash, another root.
            assert not verify_inclusion(leaf, index, 2 * size + 1, proof, root)
            assert not verify_inclusion(leaf, size, size, proof, root)
            assert not verify_inclusion(leaf, index, size, [*proof, root], root)
            if proof:
                assert not verify_inclusion(leaf, index ^ 1, size, proof, root)
                assert not verify_inclusion(leaf, index, size, proof[:-1], root)
                bent = [bytes([proof[0][0] ^ 1]) + proof[0][1:], *proof[1:]]
                assert not verify_inclusion(leaf, index, size, bent, root)
            assert not verify_inclusion(leaf, index, size, proof, sha256(root))
    # The reference vectors: every leaf of each of their trees.
    for n in range(1, 9):
        root = bytes.fromhex(CT_ROOTS[n - 1])
        for index in range(n):
            leaf = sha256(b"\x00" + CT_LEAVES[index])
            assert verify_inclusion(leaf, index, n, path(index, CT_LEAVES[:n]), root)
    assert not verify_inclusion(sha256(b"\x00"), 0, 0, [], sha256(b""))  # the empty tree has no leaf


# -- a real export of the live broker -----------------------------------------------------------


@dataclass
class Exported:
    export: dict[str, Any]  # the latest export
    earlier_checkpoint: dict[str, Any]  # a signed checkpoint of a smaller tree
    jwks: dict[str, Any]
    issuer: str
    broker: Broker


@pytest.fixture(scope="module")
def exported(broker: Broker) -> Exported:
    if broker.process is None:
        broker.start()
    patient = Browser(broker)
    try:
        first = patient.http.get("/api/me/audit/export")  # sequences the log, then exports
        assert first.status_code == 200, first.text
        grant(broker, patient)  # a consent and a token: more of the patient's events
        grant(broker, patient)
        answer = patient.http.get("/api/me/audit/export")
        assert answer.status_code == 200, answer.text
        export = answer.json()
    finally:
        patient.http.close()
    earlier = first.json()["checkpoint"]
    assert earlier["tree_size"] < export["checkpoint"]["tree_size"]
    assert len(export["entries"]) >= 4 and export["pending"] == []
    jwks = httpx.get(f"{broker.issuer}/jwks.json").json()
    return Exported(export, earlier, jwks, broker.issuer, broker)


def fresh(exported: Exported) -> dict[str, Any]:
    return copy.deepcopy(exported.export)


def check(exported: Exported, export: dict[str, Any], **kw: Any) -> ExportReport:
    return verify_export(export, jwks=exported.jwks, issuer=kw.pop("issuer", exported.issuer), **kw)


def named(report: ExportReport) -> set[tuple[str, int | None]]:
    return {(p.kind, p.index) for p in report.problems}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_a_real_export_verifies_offline(exported: Exported) -> None:
    export = fresh(exported)
    for given in (export, json.dumps(export), json.dumps(export).encode()):
        report = check(exported, given)
        assert report.ok, report.problems
    assert report.patient_id == export["patient_id"] and report.issuer == exported.issuer
    assert report.checkpoint is not None and report.checkpoint.signature
    assert report.checkpoint.tree_size == export["checkpoint"]["tree_size"]
    assert [e.event_id for e in report.entries] == [e["id"] for e in export["entries"]]
    assert all(e.commitment and e.inclusion for e in report.entries)
    tags = {e.tag for e in report.entries}
    assert "patient:link:created" in tags and "patient:consent:granted" in tags
    # Without an expected issuer it still checks everything else.
    assert verify_export(export, jwks=exported.jwks).ok


def test_the_checkpoint_from_another_broker_is_refused(exported: Exported) -> None:
    report = check(exported, fresh(exported), issuer="https://another-broker.example")
    assert named(report) == {("signature", None)}
    assert "another-broker" in report.problems[0].message


# -- tampering, each way ------------------------------------------------------------------------


def test_edited_details_are_named(exported: Exported) -> None:
    export = fresh(exported)
    entry = export["entries"][1]
    entry["details"] = {**(entry["details"] or {}), "holder": "labo-forged"}
    report = check(exported, export)
    assert named(report) == {("commitment", 1)}
    (problem,) = report.problems
    assert problem.event_id == entry["id"] and problem.leaf_index == entry["leaf_index"]
    assert report.entries[1].inclusion and not report.entries[1].commitment


def test_a_changed_tag_is_named(exported: Exported) -> None:
    export = fresh(exported)
    export["entries"][0]["tag"] = "patient:consent:revoked"
    assert named(check(exported, export)) == {("commitment", 0)}


def test_another_salt_opens_no_commitment(exported: Exported) -> None:
    export = fresh(exported)
    export["salt"] = b64(bytes(32))
    report = check(exported, export)
    assert named(report) == {("commitment", i) for i in range(len(export["entries"]))}


def test_an_event_dropped_from_the_log_is_caught(exported: Exported) -> None:
    """Whoever drops an event from the log and closes the gap (later leaves move down one
    place, their commitments and proofs recomputed with the salt) builds another tree: no
    proof leads to the signed root any more, and the root they state is not the signed one."""
    export = fresh(exported)
    size = export["checkpoint"]["tree_size"]
    engine = create_engine(exported.broker.db_url)
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT leaf_index, commitment FROM audit_events WHERE leaf_index < :n ORDER BY leaf_index"),
            {"n": size},
        ).all()
    engine.dispose()
    log = [bytes(c) for _, c in rows]
    assert len(log) == size
    dropped = export["entries"].pop(2)
    del log[dropped["leaf_index"]]
    salt = base64.b64decode(export["salt"])
    for entry in export["entries"]:
        if entry["leaf_index"] > dropped["leaf_index"]:
            entry["leaf_index"] -= 1
            body = {k: entry[k] for k in ("id", "tag", "at", "patient", "actor", "details")}
            body.update(v=1, index=entry["leaf_index"])
            canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
            leaf = hmac.new(salt, canonical, hashlib.sha256).digest()
            log[entry["leaf_index"]] = leaf
            entry["commitment"] = b64(leaf)
    for entry in export["entries"]:
        entry["inclusion_path"] = [b64(h) for h in path(entry["leaf_index"], log)]
    export["checkpoint"].update(tree_size=size - 1, root_hash=b64(mth(log)))
    report = check(exported, export)
    assert named(report) == {("signature", None)} | {("inclusion", i) for i in range(len(export["entries"]))}
    assert "the broker signed" in report.problems_of("signature")[0].message
    # Stating the signed tree size and root again only leaves the proofs that do not lead there.
    export["checkpoint"] = copy.deepcopy(exported.export["checkpoint"])
    report = check(exported, export)
    assert named(report) == {("inclusion", i) for i in range(len(export["entries"]))}


def test_an_entry_left_out_of_the_document_still_verifies(exported: Exported) -> None:
    """The limit of the format: each entry proves itself, none vouches for the others, so an
    export from which a whole entry was removed is a valid proof of the rest."""
    export = fresh(exported)
    del export["entries"][2]
    assert check(exported, export).ok


def test_reordered_events_are_named(exported: Exported) -> None:
    # Two events exchange their places in the log (each takes the other's leaf and proof):
    # each is committed with its index, and its proof is for the other leaf.
    export = fresh(exported)
    first, second = export["entries"][1], export["entries"][2]
    for name in ("leaf_index", "inclusion_path"):
        first[name], second[name] = second[name], first[name]
    export["entries"][1:3] = [second, first]  # the document stays in leaf order
    report = check(exported, export)
    assert named(report) == {(kind, i) for kind in ("commitment", "inclusion") for i in (1, 2)}
    # Two entries exchanged in the document only: each still proves itself; the order is wrong.
    export = fresh(exported)
    export["entries"][1], export["entries"][2] = export["entries"][2], export["entries"][1]
    report = check(exported, export)
    assert named(report) == {("format", 2)}
    assert "leaf order" in report.problems[0].message


def test_an_altered_proof_hash_is_named(exported: Exported) -> None:
    export = fresh(exported)
    entry = export["entries"][3]
    hashes = base64.b64decode(entry["inclusion_path"][-1])
    entry["inclusion_path"][-1] = b64(bytes([hashes[0] ^ 0x80]) + hashes[1:])
    report = check(exported, export)
    assert named(report) == {("inclusion", 3)}
    assert report.entries[3].commitment and not report.entries[3].inclusion


def test_a_checkpoint_of_another_tree_size_is_caught(exported: Exported) -> None:
    export = fresh(exported)
    export["checkpoint"] = copy.deepcopy(exported.earlier_checkpoint)
    report = check(exported, export)
    assert report.checkpoint is not None and report.checkpoint.signature  # a genuine checkpoint…
    assert named(report) == {("inclusion", i) for i in range(len(export["entries"]))}  # …of another tree
    # Its size stated over the genuine signed one: the signed claims decide, and disagree.
    export = fresh(exported)
    export["checkpoint"]["tree_size"] = exported.earlier_checkpoint["tree_size"]
    assert named(check(exported, export)) == {("signature", None)}


def forged(exported: Exported, key: jwk.JWK, header: dict[str, Any] | None = None, **claims: Any) -> str:
    signed = exported.export["checkpoint"]["signed"]
    payload = json.loads(base64.urlsafe_b64decode(signed.split(".")[1] + "=="))
    payload.update(claims)
    protected = {"alg": "ES256", "typ": "audit-checkpoint+jwt", "kid": key.get("kid"), **(header or {})}
    token = jws.JWS(json.dumps(payload).encode())
    token.add_signature(key, alg=protected["alg"], protected=json.dumps(protected))
    return str(token.serialize(compact=True))


def broker_kid(exported: Exported) -> str:
    header = json.loads(base64.urlsafe_b64decode(exported.export["checkpoint"]["signed"].split(".")[0] + "=="))
    return str(header["kid"])


@pytest.mark.parametrize(
    "forge",
    [
        pytest.param(lambda ex: forged(ex, new_key(broker_kid(ex))), id="another-key-same-kid"),
        pytest.param(lambda ex: forged(ex, new_key("not-the-broker")), id="unknown-kid"),
        pytest.param(lambda ex: forged(ex, new_key(broker_kid(ex)), {"kid": None}), id="no-kid"),
        pytest.param(lambda ex: forged(ex, ex.broker.signing_key, {"typ": "JWT"}), id="wrong-typ"),
        pytest.param(
            lambda ex: forged(ex, new_key(broker_kid(ex)), {"jwk": new_key().export_public(as_dict=True)}),
            id="embedded-key",
        ),
        pytest.param(
            lambda ex: forged(ex, jwk.JWK.generate(kty="oct", size=256, kid=broker_kid(ex)), {"alg": "HS256"}),
            id="hs256",
        ),
        pytest.param(
            lambda ex: forged(ex, ex.broker.signing_key, iss="https://another-broker.example"), id="other-iss"
        ),
        pytest.param(lambda ex: ex.export["checkpoint"]["signed"][:-4] + "AAAA", id="bent-signature"),
        pytest.param(lambda ex: "not.a.jws", id="garbage"),
    ],
)
def test_a_forged_checkpoint_signature_is_named(exported: Exported, forge: Callable[[Exported], str]) -> None:
    export = fresh(exported)
    export["checkpoint"]["signed"] = forge(exported)
    report = check(exported, export)
    assert report.problems_of("signature"), report.problems
    assert report.checkpoint is not None
    assert {p.index for p in report.problems_of("signature")} == {None}
    if report.checkpoint.tree_size is not None:
        # The claims were the genuine ones: the entries themselves still prove against them.
        assert {p.kind for p in report.problems} == {"signature"}


def test_the_brokers_key_signs_what_the_verifier_accepts(exported: Exported) -> None:
    # The forgery helper is sound: the same claims under the broker's own key verify.
    export = fresh(exported)
    export["checkpoint"]["signed"] = forged(exported, exported.broker.signing_key)
    assert check(exported, export).ok


def test_malformed_entries_and_documents(exported: Exported) -> None:
    export = fresh(exported)
    export["entries"][0]["commitment"] = "not base64!"
    del export["entries"][1]["tag"]
    export["entries"][2]["patient"] = "someone-else"
    export["entries"].append(copy.deepcopy(export["entries"][3]))
    report = check(exported, export)
    last = len(export["entries"]) - 1
    assert named(report) == {("format", 0), ("format", 1), ("format", 2), ("format", last)}
    for document in (b"\xff", "[]", "{", json.dumps({**exported.export, "format": "other/1"}),
                     json.dumps({**exported.export, "entries": {}})):
        with pytest.raises(ExportUnreadable):
            verify_export(document, jwks=exported.jwks)
    with pytest.raises(ValueError):
        verify_export(fresh(exported), jwks={"keys": "none"})


# -- the command --------------------------------------------------------------------------------


def test_the_command_prints_each_check(
    exported: Exported, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    export_file, jwks_file = tmp_path / "export.json", tmp_path / "jwks.json"
    export_file.write_text(json.dumps(exported.export))
    jwks_file.write_text(json.dumps(exported.jwks))
    state = str(tmp_path / "state.json")
    code = main(["--state", state, "audit", "verify-export", str(export_file), "--jwks", str(jwks_file),
                 "--issuer", exported.issuer])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "✓ checkpoint" in out and "ES256 signature valid" in out and "all checks passed" in out
    assert out.count("commitment opens, inclusion proven") == len(exported.export["entries"])
    # The JWKS fetched from the broker (the command's only network step).
    code = main(["--state", state, "audit", "verify-export", str(export_file), "--jwks",
                 f"{exported.issuer}/jwks.json"])
    assert code == 0, capsys.readouterr().out
    capsys.readouterr()
    tampered = fresh(exported)
    tampered["entries"][1]["details"] = {"forged": True}
    export_file.write_text(json.dumps(tampered))
    code = main(["--state", state, "audit", "verify-export", str(export_file), "--jwks", str(jwks_file)])
    out = capsys.readouterr().out
    assert code == 1
    assert "✗ entry 1" in out and "commitment:" in out and "1 check(s) failed" in out
    export_file.write_text("not json")
    code = main(["--state", state, "audit", "verify-export", str(export_file), "--jwks", str(jwks_file)])
    assert code == 1 and "not JSON" in capsys.readouterr().err


def test_verification_is_offline(exported: Exported, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: Any, **kw: Any) -> Any:
        raise AssertionError("the verifier went to the network")

    monkeypatch.setattr(httpx.Client, "send", no_network)
    monkeypatch.setattr("socket.create_connection", no_network)
    started = time.perf_counter()
    assert check(exported, fresh(exported)).ok
    assert time.perf_counter() - started < 1
