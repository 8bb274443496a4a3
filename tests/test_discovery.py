"""Discovery: RFC 8414 metadata and the JWKS; private keys never leave the key store."""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from typing import Any

import pytest

from broker.keys import KeyStore
from tests.factories import app_registration
from tests.test_keys import verify_with_jwks


def test_metadata(client: Any) -> None:
    response = client.get("/.well-known/oauth-authorization-server")
    assert response.status_code == 200
    assert response.headers["cache-control"].startswith("public, max-age=")
    meta = response.json()
    assert meta["issuer"] == "http://127.0.0.1:8000"
    assert meta["jwks_uri"] == "http://127.0.0.1:8000/jwks.json"
    assert meta["registration_endpoint"] == "http://127.0.0.1:8000/register"
    assert meta["code_challenge_methods_supported"] == ["S256"]
    assert meta["response_types_supported"] == ["code"]
    assert meta["authorization_response_iss_parameter_supported"] is True
    assert "lab_results" in meta["scopes_supported"]


def test_jwks_is_public_only_and_cacheable(client: Any) -> None:
    response = client.get("/jwks.json")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/jwk-set+json")
    assert "max-age" in response.headers["cache-control"]
    (key,) = response.json()["keys"]
    assert key["kty"] == "EC" and key["crv"] == "P-256" and key["alg"] == "ES256"
    assert key["use"] == "sig" and key["kid"]
    assert set(key) == {"kty", "crv", "x", "y", "kid", "alg", "use"}


def _private_values(key_dir: Any) -> list[str]:
    values = []
    for path in key_dir.glob("*.jwk"):
        values.append(json.loads(path.read_text())["d"])
    return values


def test_rotation_over_http_and_no_private_key_anywhere(
    client: Any, settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    store = KeyStore(settings.key_dir).load()
    token = store.sign({"iss": settings.issuer, "sub": "p1"}, typ="at+jwt")
    old_kid = store.active_kid

    answers = [client.get("/jwks.json").text]
    store.rotate(timedelta(hours=1))
    import os
    import time

    later = time.time() + 2
    os.utime(settings.key_dir / "keyring.json", (later, later))
    jwks_after = client.get("/jwks.json")
    answers.append(jwks_after.text)
    kids = {k["kid"] for k in jwks_after.json()["keys"]}
    assert old_kid in kids and store.active_kid in kids and len(kids) == 2
    # a token signed before the rotation still verifies against the published JWKS
    assert verify_with_jwks(token, jwks_after.json())["sub"] == "p1"
    new_token = store.sign({"iss": settings.issuer, "sub": "p2"}, typ="at+jwt")
    assert verify_with_jwks(new_token, jwks_after.json())["sub"] == "p2"

    # every kind of answer the broker gives, successes and errors
    answers.append(client.get("/.well-known/oauth-authorization-server").text)
    answers.append(client.post("/register", json=app_registration()).text)
    answers.append(client.post("/register", json={"bad": 1}).text)
    answers.append(client.get("/api/catalog/apps").text)
    answers.append(client.get("/nope").text)
    answers.append(client.get("/schema/openapi.json").text)
    answers.append(client.get("/").text)
    secrets = _private_values(settings.key_dir)
    assert len(secrets) == 2
    logs = caplog.text + repr(store) + repr(settings)
    for secret in secrets:
        for answer in answers:
            assert secret not in answer
        assert secret not in logs


def test_cli_keys_rotate_and_list(settings: Any) -> None:
    from tests.catalog.test_holders import _broker

    assert _broker(settings, "keys", "create").returncode == 0
    first = json.loads(_broker(settings, "keys", "list").stdout)
    rotated = _broker(settings, "keys", "rotate")
    assert rotated.returncode == 0, rotated.stderr
    listing = json.loads(_broker(settings, "keys", "list").stdout)
    assert [k["status"] for k in listing] == ["retiring", "active"]
    assert listing[0]["kid"] == first[0]["kid"]
    secrets = _private_values(settings.key_dir)
    for output in (rotated.stdout, rotated.stderr, json.dumps(listing)):
        for secret in secrets:
            assert secret not in output


def test_openapi_documents_the_api(client: Any) -> None:
    schema = client.get("/schema/openapi.json").json()
    for path in (
        "/register",
        "/register/{client_id}",
        "/api/catalog/apps",
        "/api/catalog/apps/{client_id}",
        "/.well-known/oauth-authorization-server",
        "/jwks.json",
        "/admin/holders",
    ):
        assert path in schema["paths"], path


def test_unknown_route_and_method_are_problem_details(client: Any) -> None:
    missing = client.get("/nope")
    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith("application/problem+json")
    wrong = client.delete("/api/catalog/apps")
    assert wrong.status_code == 405
    assert wrong.headers["content-type"].startswith("application/problem+json")


def test_security_headers(client: Any) -> None:
    response = client.get("/")
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    assert "Courtier de consentement" in response.text
