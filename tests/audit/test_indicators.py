"""Public indicators: counts per app, category, holder and verdict; small cells suppressed."""

from __future__ import annotations

from typing import Any

from tests.audit.conftest import World

JWT = {"Content-Type": "application/jwt"}


def test_small_cells_are_suppressed(client: Any, world: World) -> None:
    for i in range(9):
        world.patient(f"p{i}")
    body = client.get("/api/indicators").json()
    granted = body["consents_granted_per_app"]
    assert granted["values"] == {world.client_id: None} and granted["suppressed"] == [world.client_id]
    assert body["consents_granted_per_category"]["values"] == {"lab_results": None}
    assert body["apps_per_verdict"] == {"approved": 1}  # apps are not people: never suppressed
    text = client.get("/api/indicators").text
    assert "9" not in text.replace(world.client_id, "")  # the small count appears nowhere


def test_cells_of_ten_patients_are_shown(client: Any, world: World) -> None:
    for i in range(10):
        world.patient(f"p{i}", grants={"labo-test": ["lab_results"], "pharma-test": ["medications"]})
        assert client.post("/receipts", content=world.receipt(f"p{i}"), headers=JWT).status_code == 201
    # One patient releases twice more: counted as releases, not as patients.
    for _ in range(2):
        assert client.post("/receipts", content=world.receipt("p0"), headers=JWT).status_code == 201
    body = client.get("/api/indicators").json()
    assert body["consents_granted_per_app"]["values"] == {world.client_id: 10}
    assert body["consents_granted_per_category"]["values"] == {"lab_results": 10, "medications": 10}
    assert body["releases_per_holder"]["values"] == {"labo-test": 12}
    assert body["consents_revoked_per_app"]["values"] == {}
