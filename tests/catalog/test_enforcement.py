"""Charter enforcement over time: verdicts stored, versions applied, reviews settled."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient
from sqlalchemy import select

from broker.app import create_app
from broker.catalog.models import CharterVerdict
from broker.db import make_engine
from tests.catalog.test_holders import _broker
from tests.factories import app_registration

V2 = Path(__file__).resolve().parent.parent / "charter" / "data" / "charter-2.0.json"


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def listed(client: Any) -> list[str]:
    return [a["client_name"] for a in client.get("/api/catalog/apps").json()["items"]]


def verdict_rows(db_url: str, client_id: str) -> list[tuple[str, str, str]]:
    engine = make_engine(db_url)
    with engine.connect() as conn:
        rows = conn.execute(
            select(CharterVerdict.status, CharterVerdict.charter_version, CharterVerdict.decided_by)
            .where(CharterVerdict.client_id == client_id)
            .order_by(CharterVerdict.id)
        ).all()
    engine.dispose()
    return [tuple(r) for r in rows]  # type: ignore[misc]


def test_refused_app_is_registered_but_not_listed(client: Any, db_url: str) -> None:
    body = app_registration(name="Vente de Données")
    body["charter_manifest"]["business_model"]["model"] = "sale_of_data"
    response = client.post("/register", json=body)
    assert response.status_code == 201
    verdict = response.json()["charter_verdict"]
    assert verdict["status"] == "refused"
    assert "07" in {f["article"] for f in verdict["findings"]}
    assert all(f["message"]["fr"] and f["message"]["en"] for f in verdict["findings"])
    assert listed(client) == []
    assert client.get(f"/api/catalog/apps/{response.json()['client_id']}").status_code == 404


def test_label_mode_lists_every_app_with_its_verdict(settings: Any) -> None:
    with TestClient(app=create_app(replace(settings, policy_mode="label"))) as client:
        body = app_registration(name="Vente de Données")
        body["charter_manifest"]["business_model"]["model"] = "sale_of_data"
        client.post("/register", json=body)
        client.post("/register", json=app_registration())
        items = client.get("/api/catalog/apps").json()["items"]
        assert {(i["client_name"], i["verdict"]["status"]) for i in items} == {
            ("Suivi Glycémie", "approved"),
            ("Vente de Données", "refused"),
        }
        refused = next(i for i in items if i["verdict"]["status"] == "refused")
        assert "07" in refused["verdict"]["articles"]


def test_charter_version_change_suspends_and_fix_restores(client: Any, settings: Any, db_url: str) -> None:
    assert V2.exists(), "the stricter test charter v2 is missing"
    v2 = json.loads(V2.read_text())
    keeps = client.post("/register", json=app_registration(name="Reste Conforme")).json()
    adverts = app_registration(name="Pub Sans Santé")
    adverts["charter_manifest"]["business_model"]["model"] = "advertising_without_health_data"
    adverts = client.post("/register", json=adverts).json()
    long_keep = app_registration(name="Garde Longue")
    long_keep["charter_manifest"]["retention"]["days"] = v2["retention_max_days"] + 100
    long_keep = client.post("/register", json=long_keep).json()
    for reg in (keeps, adverts, long_keep):
        assert reg["status"] == "approved", reg["charter_verdict"]
    assert listed(client) == ["Garde Longue", "Pub Sans Santé", "Reste Conforme"]

    applied = _broker(settings, "charter", "apply", str(V2))
    assert applied.returncode == 0, applied.stderr
    report = json.loads(applied.stdout)
    assert report["version"] == v2["version"]
    assert sorted(report["suspended"]) == sorted([adverts["client_id"], long_keep["client_id"]])
    assert report["checked"] == 3

    assert listed(client) == ["Reste Conforme"]
    assert client.get(f"/api/catalog/apps/{adverts['client_id']}").status_code == 404
    own = client.get(
        f"/register/{adverts['client_id']}/verdict", headers=_auth(adverts["registration_access_token"])
    ).json()
    assert own["status"] == "suspended"
    assert own["charter_verdict"]["charter_version"] == v2["version"]
    assert "07" in {f["article"] for f in own["charter_verdict"]["findings"]}
    assert verdict_rows(db_url, adverts["client_id"])[-1][:2] == ("refused", v2["version"])
    assert _broker(settings, "charter", "show").stdout.strip() == json.dumps(v2["version"])
    # applying the same version twice is refused
    assert _broker(settings, "charter", "apply", str(V2)).returncode == 1

    # the developer fixes the manifest: the update is checked against v2 and restores the app
    fixed = app_registration(name="Pub Sans Santé")
    fixed["client_id"] = adverts["client_id"]
    updated = client.put(
        f"/register/{adverts['client_id']}", json=fixed, headers=_auth(adverts["registration_access_token"])
    )
    assert updated.status_code == 200, updated.text
    assert updated.json()["status"] == "approved"
    assert updated.json()["charter_verdict"]["charter_version"] == v2["version"]
    assert listed(client) == ["Pub Sans Santé", "Reste Conforme"]


def _pharma(name: str = "Labo Pharma Coach") -> dict[str, Any]:
    body = app_registration(name=name)
    body["charter_manifest"]["business_model"]["model"] = "pharma_funded"
    body["charter_manifest"]["business_model"]["description"] = "Financé par un laboratoire pharmaceutique."
    return body


def test_needs_review_is_settled_by_an_operator_with_a_reason(
    client: Any, operator_token: str, db_url: str
) -> None:
    reg = client.post("/register", json=_pharma()).json()
    assert reg["status"] == "needs_review", reg["charter_verdict"]
    assert listed(client) == []
    queue = client.get("/admin/reviews", headers=_auth(operator_token)).json()
    assert [q["client_id"] for q in queue] == [reg["client_id"]]

    uri = f"/admin/apps/{reg['client_id']}/decision"
    for bad in (
        {"decision": "approved"},
        {"decision": "maybe", "reason": "x"},
        {"decision": "approved", "reason": "   "},
    ):
        assert client.post(uri, json=bad, headers=_auth(operator_token)).status_code == 400
    assert client.post(uri, json={"decision": "approved", "reason": "x"}).status_code == 401

    decided = client.post(
        uri,
        json={"decision": "approved", "reason": "Funding contract read; no access to data."},
        headers=_auth(operator_token),
    )
    assert decided.status_code == 200, decided.text
    assert decided.json()["status"] == "approved"
    assert decided.json()["charter_verdict"]["decided_by"] == "operator:test-operator"
    assert listed(client) == ["Labo Pharma Coach"]
    rows = verdict_rows(db_url, reg["client_id"])
    assert rows == [
        ("needs_review", rows[0][1], "engine"),
        ("approved", rows[0][1], "operator:test-operator"),
    ]
    # settled once: deciding again is a conflict
    again = client.post(uri, json={"decision": "refused", "reason": "x"}, headers=_auth(operator_token))
    assert again.status_code == 409


@pytest.mark.parametrize("decision", ["approved", "refused"])
def test_cli_review_decision(client: Any, settings: Any, decision: str) -> None:
    reg = client.post("/register", json=_pharma()).json()
    listing = json.loads(_broker(settings, "reviews", "list").stdout)
    assert [r["client_id"] for r in listing] == [reg["client_id"]]
    result = _broker(settings, "reviews", "decide", reg["client_id"], decision, "--reason", "checked")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["status"] == decision
    assert listed(client) == (["Labo Pharma Coach"] if decision == "approved" else [])
