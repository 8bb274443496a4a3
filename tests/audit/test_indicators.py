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


def _cells(html: str) -> list[str]:
    import re

    return [re.sub(r"\s+", " ", c).strip() for c in re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", html, re.S)]


def test_public_page_shows_names_and_hides_small_cells(client: Any, world: World) -> None:
    for i in range(9):
        world.patient(f"p{i}")
    page = client.get("/indicators")  # public: no log-in
    assert page.status_code == 200
    html = page.text
    assert "Indicateurs publics" in html and 'lang="fr"' in html
    cells = _cells(html)
    # The app by its name, not its id; nine patients: the count is not shown.
    row = cells.index("Suivi Glycémie")
    assert cells[row + 1] == "moins de 10" and cells[row + 2] == "0"
    assert ">9<" not in html
    assert "Conformes à la charte : 1" in html
    assert page.headers["x-frame-options"] == "DENY"


def test_public_page_in_english_with_counts_of_ten(client: Any, world: World) -> None:
    for i in range(10):
        world.patient(f"p{i}")
        assert client.post("/receipts", content=world.receipt(f"p{i}"), headers=JWT).status_code == 201
    html = client.get("/indicators", headers={"Accept-Language": "en"}).text
    assert "Public indicators" in html
    assert "Permissions per app" in html and "Permissions per kind of data" in html
    cells = _cells(html)
    assert cells[cells.index("Suivi Glycémie") + 1] == "10"
    assert "Meeting the charter: 1" in html
