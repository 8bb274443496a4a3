"""Holders: registered and approved by the operator, through the admin API and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.factories import holder_declaration


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_admin_api_needs_an_operator_token(client: Any) -> None:
    for headers in ({}, _auth("hcb_op_forged"), {"Authorization": "Basic b3A6b3A="}):
        response = client.post("/admin/holders", json=holder_declaration(), headers=headers)
        assert response.status_code == 401
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["status"] == 401
        assert client.get("/admin/holders", headers=headers).status_code == 401
    assert client.get("/api/catalog/holders").json() == []


def test_add_then_approve_holder(client: Any, operator_token: str) -> None:
    created = client.post(
        "/admin/holders",
        json=holder_declaration(
            release_step_categories=["lab_results"], download_endpoint="https://labo-test.example/download"
        ),
        headers=_auth(operator_token),
    )
    assert created.status_code == 201, created.text
    assert created.json()["status"] == "pending"
    # pending holders are not public
    assert client.get("/api/catalog/holders").json() == []
    approved = client.post("/admin/holders/labo-test/approve", headers=_auth(operator_token))
    assert approved.status_code == 200
    assert approved.json()["status"] == "approved"
    assert approved.json()["approved_by"] == "test-operator"
    public = client.get("/api/catalog/holders").json()
    assert [h["identifier"] for h in public] == ["labo-test"]
    assert public[0]["release_step_categories"] == ["lab_results"]
    assert public[0]["download_endpoint"] == "https://labo-test.example/download"
    assert "jwks" not in public[0]
    listed = client.get("/admin/holders", params={"status": "approved"}, headers=_auth(operator_token)).json()
    assert [h["identifier"] for h in listed] == ["labo-test"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"identifier": "Labo Test!"}, "identifier"),
        ({"identifier": "x" * 65}, "identifier"),
        ({"legal_name": ""}, "legal_name"),
        ({"legal_name": "<b>Labo</b>\u202e"}, "legal_name"),
        ({"base_url": "http://labo.example/fhir"}, "base_url"),
        ({"base_url": "https://labo.example/fhir?x=1"}, "base_url"),
        ({"categories": []}, "categories"),
        ({"categories": ["lab_results", "tarot"]}, "categories[1]"),
        ({"release_step_categories": ["imaging"]}, "release_step_categories[0]"),
        ({"download_endpoint": "http://labo.example/download"}, "download_endpoint"),
        ({"download_endpoint": "https://labo.example/download?token=x"}, "download_endpoint"),
        ({"download_endpoint": "https://labo.example/download#top"}, "download_endpoint"),
        ({"jwks": {"keys": []}}, "jwks.keys"),
        (
            {"jwks": {"keys": [{"kty": "EC", "crv": "P-256", "x": "bad", "y": "bad", "kid": "k"}]}},
            "jwks.keys[0]",
        ),
    ],
)
def test_bad_holder_declarations(
    client: Any, operator_token: str, change: dict[str, Any], field: str
) -> None:
    response = client.post("/admin/holders", json=holder_declaration(**change), headers=_auth(operator_token))
    assert response.status_code == 400, response.text
    problem = response.json()
    assert response.headers["content-type"].startswith("application/problem+json")
    assert problem["field"] == field
    assert field in problem["detail"]
    assert client.get("/admin/holders", headers=_auth(operator_token)).json() == []


def test_private_key_in_holder_jwks_is_refused(client: Any, operator_token: str) -> None:
    from jwcrypto import jwk

    private = jwk.JWK.generate(kty="EC", crv="P-256").export_private(as_dict=True)
    private["kid"] = "k1"
    response = client.post(
        "/admin/holders", json=holder_declaration(jwks={"keys": [private]}), headers=_auth(operator_token)
    )
    assert response.status_code == 400
    assert "private" in response.json()["detail"]


def test_duplicate_holder_conflicts(client: Any, operator_token: str) -> None:
    assert (
        client.post("/admin/holders", json=holder_declaration(), headers=_auth(operator_token)).status_code
        == 201
    )
    again = client.post(
        "/admin/holders", json=holder_declaration(legal_name="Autre"), headers=_auth(operator_token)
    )
    assert again.status_code == 409
    listed = client.get("/admin/holders", headers=_auth(operator_token)).json()
    assert [h["legal_name"] for h in listed] == ["Laboratoire Test"]


def test_approve_unknown_holder_is_404(client: Any, operator_token: str) -> None:
    response = client.post("/admin/holders/nobody/approve", headers=_auth(operator_token))
    assert response.status_code == 404
    assert response.json()["type"].endswith("/not-found")


def _broker(settings: Any, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "BROKER_DATABASE_URL": settings.database_url,
        "BROKER_KEY_DIR": str(settings.key_dir),
        "BROKER_DEV_MODE": "true",
        "BROKER_SECRET_KEY": settings.secret_key.decode(),
    }
    return subprocess.run(
        [sys.executable, "-m", "broker.cli", *args],
        input=stdin,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_add_approve_list(settings: Any, tmp_path: Path) -> None:
    path = tmp_path / "holder.json"
    path.write_text(json.dumps(holder_declaration("pharma-test")))
    added = _broker(settings, "holders", "add", str(path))
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout)["status"] == "pending"
    assert _broker(settings, "holders", "approve", "pharma-test").returncode == 0
    listed = json.loads(_broker(settings, "holders", "list", "--status", "approved").stdout)
    assert [h["identifier"] for h in listed] == ["pharma-test"]
    bad = _broker(settings, "holders", "add", "-", stdin=json.dumps({"identifier": "x"}))
    assert bad.returncode == 1
    assert "legal_name" in bad.stderr
