"""The catalog pages over HTTP, on every database: filters in patients' words, the stated
order, an app's page with the charter's findings in plain words, unknown values, pagination."""

from __future__ import annotations

import copy
import dataclasses
import re
from typing import Any

import pytest
from litestar.testing import TestClient

from broker.app import create_app
from broker.settings import Settings
from tests.factories import app_registration

pytestmark = pytest.mark.db


def register(client: Any, name: str, approved: bool = True, **manifest_changes: Any) -> dict[str, Any]:
    body = app_registration(name)
    body["charter_manifest"].update(copy.deepcopy(manifest_changes))
    answer = client.post("/register", json=body)
    assert answer.status_code == 201, answer.text
    assert (answer.json()["status"] == "approved") is approved, answer.json()["charter_verdict"]
    return dict(answer.json())


def model(kind: str) -> dict[str, Any]:
    return {
        "model": kind,
        "description": "Plain words.",
        "funding_sources": [{"name": "Its founders", "kind": "equity"}],
    }


def listed(html: str) -> list[str]:
    return re.findall(r'<h3 id="app-\d+"><a href="/catalog/[\w-]+">([^<]+)</a></h3>', html)


def test_filters_in_patients_words_and_a_stated_order(client: Any) -> None:
    register(client, "Zébulon Budget", business_model=model("public_service"))
    register(client, "Agenda Santé")
    register(
        client,
        "Mon Coach",
        business_model=model("advertising_without_health_data"),
    )
    page = client.get("/catalog")
    assert page.status_code == 200
    assert listed(page.text) == ["Agenda Santé", "Mon Coach", "Zébulon Budget"]  # alphabetical
    assert "ordre alphabétique" in page.text
    assert listed(client.get("/catalog?funding=public").text) == ["Zébulon Budget"]
    assert "Mon Coach" not in listed(client.get("/catalog?funding=no-ads").text)
    assert listed(client.get("/catalog?funding=ads").text) == ["Mon Coach"]
    assert listed(client.get("/catalog?q=zebulon").text) == ["Zébulon Budget"]
    # No app says "diabète": the need is found through the charter's purposes.
    needed = client.get("/catalog?q=suivre+mon+diab%C3%A8te")
    assert len(listed(needed.text)) == 3
    assert "Suivi d&#39;une maladie chronique" in needed.text
    assert listed(client.get("/catalog?category=genetics").text) == []
    # Unknown values from an old link are dropped, not an error.
    assert len(listed(client.get("/catalog?funding=bribe&category=nope&holder=x&need=y").text)) == 3
    english = client.get("/catalog", headers={"Accept-Language": "en"})
    assert '<html lang="en">' in english.text
    assert "alphabetical order" in english.text
    assert "Without advertising" in english.text


def test_pages_of_twenty_in_the_same_order(client: Any) -> None:
    for number in range(21):
        register(client, f"Appli {number:02d}")
    first = client.get("/catalog")
    assert listed(first.text) == [f"Appli {n:02d}" for n in range(20)]
    following = re.search(r'<a href="(/catalog\?cursor=[^"]+)">', first.text)
    assert following is not None
    assert listed(client.get(following.group(1).replace("&amp;", "&")).text) == ["Appli 20"]


def test_an_app_page_gives_the_charter_verdict_article_by_article(settings: Settings) -> None:
    labelled = dataclasses.replace(settings, policy_mode="label")
    with TestClient(app=create_app(labelled)) as client:
        refused = register(
            client,
            "Appli Refusée",
            approved=False,
            rights={
                "access": "https://app.example/export",
                "rectification": "mailto:dpo@app.example",
                "erasure": "javascript:alert(1)",
                "portability": "https://app.example/export",
            },
        )
        assert refused["status"] == "refused"
        page = client.get(f"/catalog/{refused['client_id']}")
        assert page.status_code == 200
        text = page.text
        assert "Cette application ne respecte pas la charte." in text
        article = text.index("Article 06d")
        assert "Non respecté :" in text[article:]
        # The patient's message, not the developer's.
        assert "ne dit pas comment consulter, corriger, supprimer" in text[article:]
        assert 'href="javascript' not in text and "javascript:alert(1)" in text
        assert "pas (encore) été approuvée" in client.get("/catalog").text
    # In gate mode, the default, a refused app is not in the catalog at all.
    with TestClient(app=create_app(settings)) as client:
        missing = client.get(f"/catalog/{refused['client_id']}")
        assert missing.status_code == 404
        assert "Application introuvable" in missing.text
        assert listed(client.get("/catalog").text) == []
