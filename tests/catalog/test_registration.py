"""RFC 7591 registration and RFC 7592 management, with bad input at every entry point.

Each refusal must give a clear error naming what is wrong and leave the database as it was.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from broker.catalog.models import App, AppCategory, AppPurpose, CharterVerdict
from broker.db import make_engine
from tests.factories import app_registration

HOSTILE = [
    "'; DROP TABLE apps; --",
    '" OR 1=1 --',
    "<script>alert(1)</script>",
    "Robert'); DELETE FROM holders;--",
    "%_\\",
    "<img src=x onerror=alert(1)>",
]


def row_counts(db_url: str) -> tuple[int, int, int, int]:
    engine = make_engine(db_url)
    with engine.connect() as conn:
        counts = tuple(
            conn.scalar(select(func.count()).select_from(model))
            for model in (App, AppCategory, AppPurpose, CharterVerdict)
        )
    engine.dispose()
    return counts  # type: ignore[return-value]


def register(client: Any, body: Any) -> Any:
    return client.post("/register", json=body)


def assert_refused(response: Any, error: str, field: str, db_url: str, before: tuple[int, ...]) -> None:
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error"] == error
    assert field in body["error_description"], body
    assert response.headers["cache-control"] == "no-store"
    assert row_counts(db_url) == before


def test_register_compliant_app(client: Any, db_url: str) -> None:
    response = register(client, app_registration())
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["client_id"].startswith("app_")
    assert body["registration_access_token"].startswith("hcb_reg_")
    assert body["registration_client_uri"] == f"http://127.0.0.1:8000/register/{body['client_id']}"
    assert body["client_name"] == "Suivi Glycémie"
    assert body["token_endpoint_auth_method"] == "none"
    verdict = body["charter_verdict"]
    assert verdict["status"] == "approved", verdict
    assert len(verdict["manifest_sha256"]) == 64
    assert verdict["charter_version"]
    assert body["status"] == "approved"
    assert response.headers["cache-control"] == "no-store"
    assert row_counts(db_url) == (1, 2, 1, 1)


def test_unknown_metadata_is_dropped(client: Any) -> None:
    response = register(client, app_registration(extra_field="kept?", ui_locales="fr"))
    assert response.status_code == 201
    assert "extra_field" not in response.json()


MISSING_AND_MALFORMED = [
    # (change to the request, expected error, field named in the description)
    ({"redirect_uris": []}, "invalid_redirect_uri", "redirect_uris"),
    ({"redirect_uris": "https://a.example/cb"}, "invalid_redirect_uri", "redirect_uris"),
    ({"redirect_uris": ["http://glycemie.example/cb"]}, "invalid_redirect_uri", "redirect_uris[0]"),
    ({"redirect_uris": ["https://glycemie.example/cb#frag"]}, "invalid_redirect_uri", "redirect_uris[0]"),
    ({"redirect_uris": ["https://*.glycemie.example/cb"]}, "invalid_redirect_uri", "redirect_uris[0]"),
    ({"redirect_uris": ["https://glycemie.example/*"]}, "invalid_redirect_uri", "redirect_uris[0]"),
    ({"redirect_uris": ["https://user:pw@glycemie.example/cb"]}, "invalid_redirect_uri", "redirect_uris[0]"),
    ({"redirect_uris": ["/relative/cb"]}, "invalid_redirect_uri", "redirect_uris[0]"),
    ({"redirect_uris": ["javascript:alert(1)"]}, "invalid_redirect_uri", "redirect_uris[0]"),
    (
        {"redirect_uris": ["https://a.example/cb", "https://a.example/cb"]},
        "invalid_redirect_uri",
        "redirect_uris",
    ),
    ({"client_name": ""}, "invalid_client_metadata", "client_name"),
    ({"client_name": 42}, "invalid_client_metadata", "client_name"),
    ({"client_name": "Suivi\u202eeimécylG"}, "invalid_client_metadata", "client_name"),
    ({"client_name": "x" * 101}, "invalid_client_metadata", "client_name"),
    ({"grant_types": ["implicit"]}, "invalid_client_metadata", "grant_types[0]"),
    ({"grant_types": ["refresh_token"]}, "invalid_client_metadata", "grant_types"),
    ({"response_types": ["token"]}, "invalid_client_metadata", "response_types"),
    (
        {"token_endpoint_auth_method": "client_secret_basic"},
        "invalid_client_metadata",
        "token_endpoint_auth_method",
    ),
    ({"token_endpoint_auth_method": "private_key_jwt"}, "invalid_client_metadata", "jwks"),
    (
        {"jwks": {"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "1"}]}},
        "invalid_client_metadata",
        "jwks.keys[0]",
    ),
    ({"jwks_uri": "http://keys.example/jwks.json"}, "invalid_client_metadata", "jwks_uri"),
    ({"logo_uri": "ftp://glycemie.example/logo.png"}, "invalid_client_metadata", "logo_uri"),
    ({"contacts": ["not-an-email"]}, "invalid_client_metadata", "contacts[0]"),
    ({"software_statement": "eyJ.eyJ.sig"}, "invalid_client_metadata", "software_statement"),
    ({"client_id": "app_chosen"}, "invalid_client_metadata", "client_id"),
    ({"charter_manifest": None}, "invalid_client_metadata", "charter_manifest"),
    ({"charter_manifest": []}, "invalid_client_metadata", "charter_manifest"),
]


@pytest.mark.parametrize(("change", "error", "field"), MISSING_AND_MALFORMED)
def test_malformed_registration_is_refused(
    client: Any, db_url: str, change: dict[str, Any], error: str, field: str
) -> None:
    before = row_counts(db_url)
    assert_refused(register(client, app_registration(**change)), error, field, db_url, before)


def _manifest_change(path: str, value: Any) -> dict[str, Any]:
    body = app_registration()
    target: Any = body["charter_manifest"]
    keys = path.split(".")
    for key in keys[:-1]:
        target = target[int(key)] if key.isdigit() else target[key]
    last = keys[-1]
    if value is _DELETE:
        del target[last]
    elif last.isdigit():
        target[int(last)] = value
    else:
        target[last] = value
    return body


_DELETE = object()

MANIFEST_CASES = [
    ("publisher", _DELETE, "charter_manifest.publisher"),
    ("publisher.legal_name", _DELETE, "charter_manifest.publisher.legal_name"),
    ("publisher.contact_email", "nobody", "charter_manifest.publisher.contact_email"),
    ("business_model", "subscription", "charter_manifest.business_model"),
    ("business_model.model", "pay_what_you_want", "charter_manifest.business_model.model"),
    ("purposes", _DELETE, "charter_manifest.purposes"),
    ("purposes.0.id", "world_domination", "charter_manifest.purposes[0].id"),
    ("data_requests", {"category": "lab_results"}, "charter_manifest.data_requests"),
    ("data_requests.0.category", "horoscope", "charter_manifest.data_requests[0].category"),
    ("data_requests.0.purpose", "unknown_purpose", "charter_manifest.data_requests[0].purpose"),
    ("data_requests.0.optional", "no", "charter_manifest.data_requests[0].optional"),
    ("retention.days", "two years", "charter_manifest.retention.days"),
    ("retention.days", -5, "charter_manifest.retention.days"),
    ("rights", ["https://x.example"], "charter_manifest.rights"),
    ("hosting.country", 33, "charter_manifest.hosting.country"),
    ("data_leaves_eu", _DELETE, "charter_manifest.data_leaves_eu"),
    ("data_leaves_eu", "no", "charter_manifest.data_leaves_eu"),
    ("third_parties", [{"purpose": "analytics"}], "charter_manifest.third_parties[0].name"),
]


@pytest.mark.parametrize(("path", "value", "field"), MANIFEST_CASES)
def test_malformed_manifest_is_refused(client: Any, db_url: str, path: str, value: Any, field: str) -> None:
    before = row_counts(db_url)
    response = register(client, _manifest_change(path, value))
    assert_refused(response, "invalid_client_metadata", field, db_url, before)


@pytest.mark.parametrize(
    ("content", "headers", "status"),
    [
        (b"client_name=x", {"content-type": "application/x-www-form-urlencoded"}, 415),
        (b"{}", {"content-type": "text/plain"}, 415),
        (b"{}", {}, 415),
        (b"{not json", {"content-type": "application/json"}, 400),
        (b"\xff\xfe", {"content-type": "application/json"}, 400),
        (b'{"client_name": "a", "client_name": "b"}', {"content-type": "application/json"}, 400),
        (b'["a list"]', {"content-type": "application/json"}, 400),
    ],
)
def test_wrong_content_type_or_broken_json(
    client: Any, db_url: str, content: bytes, headers: dict[str, str], status: int
) -> None:
    before = row_counts(db_url)
    response = client.post("/register", content=content, headers=headers)
    assert response.status_code == status, response.text
    assert response.json()["error"] in ("invalid_client_metadata", "invalid_request")
    assert response.json()["error_description"]
    assert row_counts(db_url) == before


def test_oversized_body_gets_a_clear_413(
    client: Any, db_url: str, settings: Any, operator_token: str
) -> None:
    before = row_counts(db_url)
    body = app_registration()
    body["charter_manifest"]["padding"] = "x" * (settings.max_body_bytes + 1)
    response = register(client, body)
    assert response.status_code == 413
    assert str(settings.max_body_bytes) in response.json()["error_description"]
    assert row_counts(db_url) == before
    admin = client.post(
        "/admin/holders",
        content=b"x" * (settings.max_body_bytes + 10),
        headers={"content-type": "application/json", "Authorization": f"Bearer {operator_token}"},
    )
    assert admin.status_code == 413
    assert admin.headers["content-type"].startswith("application/problem+json")
    assert str(settings.max_body_bytes) in admin.json()["detail"]


def test_duplicate_registration_is_refused(client: Any, db_url: str) -> None:
    assert register(client, app_registration()).status_code == 201
    before = row_counts(db_url)
    # the same name, differently cased and accented, is the same app to a patient
    for name in ("Suivi Glycémie", "SUIVI GLYCEMIE", "suivi  glycémie"):
        assert_refused(
            register(client, app_registration(name=name)),
            "invalid_client_metadata",
            "client_name",
            db_url,
            before,
        )


@pytest.mark.parametrize("text", HOSTILE)
def test_metacharacters_are_stored_verbatim_and_harmless(client: Any, db_url: str, text: str) -> None:
    body = app_registration(name=f"App {text}"[:100])
    body["charter_manifest"]["publisher"]["legal_name"] = text
    body["charter_manifest"]["purposes"][0]["description"] = text
    body["charter_manifest"]["data_requests"][0]["justification"] = text
    response = register(client, body)
    assert response.status_code == 201, response.text
    client_id = response.json()["client_id"]
    facts = client.get(f"/api/catalog/apps/{client_id}").json()
    assert facts["publisher"]["legal_name"] == text
    assert facts["data_requests"][0]["justification"] == text
    found = client.get("/api/catalog/apps", params={"q": text}).json()["items"]
    assert [item["client_id"] for item in found] == [client_id]
    # every table is still there and intact
    assert row_counts(db_url)[0] == 1


def _registered(client: Any) -> dict[str, Any]:
    response = register(client, app_registration())
    assert response.status_code == 201
    return response.json()


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_read_update_delete_with_registration_token(client: Any, db_url: str) -> None:
    reg = _registered(client)
    uri = reg["registration_client_uri"].removeprefix("http://127.0.0.1:8000")
    token = reg["registration_access_token"]

    read = client.get(uri, headers=_auth(token))
    assert read.status_code == 200
    assert "registration_access_token" not in read.json()
    assert read.json()["charter_verdict"]["status"] == "approved"

    update = app_registration()
    update["client_id"] = reg["client_id"]
    update["client_uri"] = "https://glycemie.example/v2"
    updated = client.put(uri, json=update, headers=_auth(token))
    assert updated.status_code == 200, updated.text
    new_token = updated.json()["registration_access_token"]
    assert new_token != token
    assert updated.json()["client_uri"] == "https://glycemie.example/v2"

    # the token used for the update is revoked by the rotation
    stale = client.get(uri, headers=_auth(token))
    assert stale.status_code == 401
    assert stale.json()["error"] == "invalid_token"
    assert 'error="invalid_token"' in stale.headers["www-authenticate"]

    verdict = client.get(uri + "/verdict", headers=_auth(new_token))
    assert verdict.json()["charter_verdict"]["status"] == "approved"

    assert client.delete(uri, headers=_auth(new_token)).status_code == 204
    assert client.get(uri, headers=_auth(new_token)).status_code == 401
    assert client.get(f"/api/catalog/apps/{reg['client_id']}").status_code == 404
    # the name is free again
    assert register(client, app_registration()).status_code == 201


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer hcb_reg_wrong"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer "},
    ],
)
def test_wrong_registration_token_changes_nothing(client: Any, db_url: str, headers: dict[str, str]) -> None:
    reg = _registered(client)
    uri = f"/register/{reg['client_id']}"
    before = row_counts(db_url)
    update = app_registration(client_uri="https://evil.example")
    update["client_id"] = reg["client_id"]
    for response in (
        client.get(uri, headers=headers),
        client.put(uri, json=update, headers=headers),
        client.delete(uri, headers=headers),
    ):
        assert response.status_code == 401
        assert response.json()["error"] == "invalid_token"
    assert row_counts(db_url) == before
    facts = client.get(f"/api/catalog/apps/{reg['client_id']}").json()
    assert facts["client_uri"] == "https://glycemie.example"


def test_token_of_one_app_does_not_open_another(client: Any) -> None:
    first = _registered(client)
    second = register(client, app_registration(name="Autre App")).json()
    response = client.get(
        f"/register/{second['client_id']}", headers=_auth(first["registration_access_token"])
    )
    assert response.status_code == 401
    unknown = client.get("/register/app_unknown", headers=_auth(first["registration_access_token"]))
    assert unknown.status_code == 401  # existence is not disclosed


def test_update_refused_when_malformed_or_client_id_mismatch(client: Any, db_url: str) -> None:
    reg = _registered(client)
    uri = f"/register/{reg['client_id']}"
    token = reg["registration_access_token"]
    before = row_counts(db_url)
    no_id = app_registration()
    response = client.put(uri, json=no_id, headers=_auth(token))
    assert_refused(response, "invalid_client_metadata", "client_id", db_url, before)
    bad = app_registration(redirect_uris=["http://glycemie.example/cb"])
    bad["client_id"] = reg["client_id"]
    assert_refused(
        client.put(uri, json=bad, headers=_auth(token)),
        "invalid_redirect_uri",
        "redirect_uris[0]",
        db_url,
        before,
    )
    # the token still works: a refused update revokes nothing
    assert client.get(uri, headers=_auth(token)).status_code == 200


def test_loopback_redirects_only_in_development_mode(settings: Any, tmp_path: Any) -> None:
    from dataclasses import replace

    from litestar.testing import TestClient

    from broker.app import create_app
    from broker.keys import KeyStore

    body = app_registration(redirect_uris=["http://127.0.0.1:8001/callback"])
    with TestClient(app=create_app(settings)) as dev:
        assert dev.post("/register", json=body).status_code == 201
    production = replace(settings, dev_mode=False, key_dir=tmp_path / "prod-keys")
    KeyStore(production.key_dir).create()
    with TestClient(app=create_app(production)) as prod:
        response = prod.post(
            "/register", json=app_registration(name="Autre", redirect_uris=["http://127.0.0.1:8001/callback"])
        )
        assert response.status_code == 400
        assert response.json()["error"] == "invalid_redirect_uri"
        assert "development mode" in response.json()["error_description"]
