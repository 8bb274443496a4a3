"""The catalog API: search, filters, stable pagination, an app's page of facts."""

from __future__ import annotations

from typing import Any

import pytest

from tests.factories import app_registration, holder_declaration


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _emergency_card(name: str) -> dict[str, Any]:
    body = app_registration(name=name)
    manifest = body["charter_manifest"]
    manifest["purposes"] = [{"id": "emergency_card", "description": "Une carte d'urgence sur le téléphone."}]
    manifest["data_requests"] = [
        {
            "category": "blood_group",
            "purpose": "emergency_card",
            "optional": False,
            "justification": "Le groupe sanguin figure sur la carte d'urgence.",
        },
        {
            "category": "allergies",
            "purpose": "emergency_card",
            "optional": False,
            "justification": "Les allergies figurent sur la carte d'urgence.",
        },
    ]
    manifest["business_model"] = {
        "model": "public_service",
        "description": "Gratuit, financé par l'Assurance maladie.",
        "funding_sources": [{"name": "Assurance maladie", "kind": "public_funding"}],
    }
    return body


@pytest.fixture
def catalog(client: Any, operator_token: str) -> dict[str, str]:
    ids = {}
    for name in ("Zèbre Diabète", "Alpha Glucose", "Mon Livret Santé"):
        body = _emergency_card(name) if "Livret" in name else app_registration(name=name)
        response = client.post("/register", json=body)
        assert response.status_code == 201
        assert response.json()["status"] == "approved", response.json()["charter_verdict"]
        ids[name] = response.json()["client_id"]
    client.post("/admin/holders", json=holder_declaration("labo-test"), headers=_auth(operator_token))
    client.post("/admin/holders/labo-test/approve", headers=_auth(operator_token))
    return ids


def names(response: Any) -> list[str]:
    assert response.status_code == 200, response.text
    return [item["client_name"] for item in response.json()["items"]]


def test_neutral_order_and_filters(client: Any, catalog: dict[str, str]) -> None:
    assert names(client.get("/api/catalog/apps")) == ["Alpha Glucose", "Mon Livret Santé", "Zèbre Diabète"]
    assert names(client.get("/api/catalog/apps", params={"q": "zebre"})) == ["Zèbre Diabète"]
    assert names(client.get("/api/catalog/apps", params={"q": "HBA1C"})) == [
        "Alpha Glucose",
        "Zèbre Diabète",
    ]
    assert names(client.get("/api/catalog/apps", params={"category": "blood_group"})) == ["Mon Livret Santé"]
    assert names(client.get("/api/catalog/apps", params={"purpose": "emergency_card"})) == [
        "Mon Livret Santé"
    ]
    assert names(client.get("/api/catalog/apps", params={"business_model": "public_service"})) == [
        "Mon Livret Santé"
    ]
    assert names(
        client.get("/api/catalog/apps", params={"business_model": ["public_service", "subscription"]})
    ) == ["Alpha Glucose", "Mon Livret Santé", "Zèbre Diabète"]
    # labo-test serves lab_results and identity: it can feed the glucose apps only
    assert names(client.get("/api/catalog/apps", params={"holder": "labo-test"})) == [
        "Alpha Glucose",
        "Zèbre Diabète",
    ]
    assert names(client.get("/api/catalog/apps", params={"eu_only": "true", "q": "alpha"})) == [
        "Alpha Glucose"
    ]
    assert names(client.get("/api/catalog/apps", params={"q": "nothing-like-this"})) == []


def test_pagination_is_stable(client: Any, catalog: dict[str, str]) -> None:
    first = client.get("/api/catalog/apps", params={"limit": 2}).json()
    assert [i["client_name"] for i in first["items"]] == ["Alpha Glucose", "Mon Livret Santé"]
    # an app registered between two pages does not shift the next page
    client.post("/register", json=app_registration(name="Aaa Première"))
    second = client.get("/api/catalog/apps", params={"limit": 2, "cursor": first["next_cursor"]}).json()
    assert [i["client_name"] for i in second["items"]] == ["Zèbre Diabète"]
    assert second["next_cursor"] is None


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 101}, "limit"),
        ({"category": "horoscope"}, "category"),
        ({"purpose": "'; DROP TABLE apps;--"}, "purpose"),
        ({"business_model": "<script>"}, "business_model"),
        ({"holder": "nobody"}, "holder"),
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"cursor": "W10"}, "cursor"),
        ({"q": "x" * 201}, "q"),
    ],
)
def test_bad_search_parameters(
    client: Any, catalog: dict[str, str], params: dict[str, Any], field: str
) -> None:
    response = client.get("/api/catalog/apps", params=params)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["field"] == field


@pytest.mark.parametrize("q", ["%", "_", "\\", "' OR '1'='1", "<script>", "a%' --", "\"; --", "glyc%"])
def test_metacharacters_in_search_are_inert(client: Any, catalog: dict[str, str], q: str) -> None:
    """A query means its words: the same results as the words alone, never "everything"."""
    import re

    words = " ".join(re.findall(r"\w+", q))
    expected = names(client.get("/api/catalog/apps", params={"q": words})) if words.strip("_") else []
    assert names(client.get("/api/catalog/apps", params={"q": q})) == expected


def test_prefix_search(client: Any, catalog: dict[str, str]) -> None:
    assert names(client.get("/api/catalog/apps", params={"q": "zeb"})) == ["Zèbre Diabète"]
    assert names(client.get("/api/catalog/apps", params={"q": "livret sant"})) == ["Mon Livret Santé"]
    assert names(client.get("/api/catalog/apps", params={"q": "ebre"})) == []


def test_not_a_number_limit_is_a_clear_400(client: Any) -> None:
    response = client.get("/api/catalog/apps", params={"limit": "ten"})
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/problem+json")


def test_page_of_facts(client: Any, catalog: dict[str, str]) -> None:
    facts = client.get(f"/api/catalog/apps/{catalog['Alpha Glucose']}").json()
    assert facts["publisher"]["legal_name"] == "Glycémie SAS"
    assert facts["business_model"]["id"] == "subscription"
    assert facts["business_model"]["label"]["fr"]
    assert facts["data_requests"][0]["justification"]
    assert facts["hosting"]["health_data_certification"] == "HDS"
    assert facts["rights"]["erasure"]
    assert facts["verdict"]["status"] == "approved"
    assert [h["identifier"] for h in facts["holders"]] == ["labo-test"]
    assert "registration_token_hash" not in str(facts)
    assert client.get("/api/catalog/apps/app_nope").status_code == 404
