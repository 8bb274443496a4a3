"""The broker's federation endpoints: signed documents that the verifier and PyJWT accept."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
from litestar.testing import TestClient

from broker.app import create_app
from broker.catalog.enforcement import apply_charter, charter_source
from broker.consent.proofs.jose import b64url_encode
from broker.db import make_engine, make_session_factory, transaction, utcnow
from broker.federation.verify import (
    EntityStatement,
    TrustAnchor,
    resolve_trust_chain,
    verify_entity_configuration,
    verify_subordinate_statement,
    verify_trust_mark,
    verify_trust_mark_status,
)
from broker.keys import KeyStore
from tests.catalog.test_enforcement import V2
from tests.factories import app_registration, holder_declaration

ISSUER = "http://127.0.0.1:8000"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _now() -> datetime:
    return datetime.now(UTC)


def _configuration(client: Any) -> EntityStatement:
    response = client.get("/.well-known/openid-federation")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/entity-statement+jwt")
    return verify_entity_configuration(response.text, entity_id=ISSUER, now=_now())


def _fetch(client: Any, sub: str) -> Any:
    return client.get("/federation/fetch", params={"sub": sub})


def _statement(client: Any, sub: str) -> EntityStatement:
    response = _fetch(client, sub)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/entity-statement+jwt")
    return verify_subordinate_statement(
        response.text, superior=_configuration(client), subject=sub, now=_now()
    )


def _pyjwt(token: str, jwks: dict[str, Any], typ: str) -> dict[str, Any]:
    """PyJWT, with the key the header names taken from the published JWKS."""
    header = jwt.get_unverified_header(token)
    assert header["typ"] == typ and header["alg"] == "ES256"
    (key,) = [k for k in jwks["keys"] if k["kid"] == header["kid"]]
    claims: dict[str, Any] = jwt.decode(
        token,
        key=jwt.PyJWK(key).key,
        algorithms=["ES256"],
        issuer=ISSUER,
        options={"require": ["iss", "iat"], "verify_aud": False},
    )
    return claims


def _status(client: Any, mark: str) -> str:
    response = client.post("/federation/trust_mark_status", content=f"trust_mark={mark}", headers=FORM)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/trust-mark-status-response+jwt")
    assert response.headers["cache-control"] == "no-store"
    jwks = client.get("/jwks.json").json()
    return verify_trust_mark_status(
        response.text, issuer=ISSUER, issuer_jwks=jwks, trust_mark=mark, now=_now()
    )


def _mark_of(statement: EntityStatement) -> tuple[str, str]:
    (entry,) = statement.claims["trust_marks"]
    return entry["trust_mark_type"], entry["trust_mark"]


def test_entity_configuration(client: Any) -> None:
    config = _configuration(client)
    jwks = client.get("/jwks.json").json()
    assert config.jwks == jwks
    claims = config.claims
    assert claims["exp"] - claims["iat"] == 24 * 3600
    assert "authority_hints" not in claims and "trust_marks" not in claims
    meta = claims["metadata"]
    assert meta["oauth_authorization_server"] == client.get("/.well-known/oauth-authorization-server").json()
    broker = meta["health_consent_broker"]
    assert broker["policy_mode"] == "gate"
    assert broker["charter_trust_mark_type"] == f"{ISSUER}/trust-marks/charter/{broker['charter_version']}"
    assert meta["federation_entity"]["federation_fetch_endpoint"] == f"{ISSUER}/federation/fetch"
    response = client.get("/.well-known/openid-federation")
    assert _pyjwt(response.text, jwks, "entity-statement+jwt")["sub"] == ISSUER
    assert "max-age" in response.headers["cache-control"]
    # the broker is its own trust anchor in a chain of one
    assert (
        resolve_trust_chain([response.text], anchor=TrustAnchor(ISSUER, jwks), now=_now()).subject == ISSUER
    )


def test_authority_hints_and_own_trust_marks_from_settings(settings: Any, tmp_path: Any) -> None:
    anchor = KeyStore(tmp_path / "anchor")
    anchor.create()
    mark = anchor.sign(
        {
            "iss": "https://anchor.example",
            "sub": ISSUER,
            "trust_mark_type": "https://anchor.example/member",
            "iat": 1,
        },
        typ="trust-mark+jwt",
    )
    changed = replace(
        settings,
        federation_authority_hints=("https://anchor.example",),
        federation_trust_marks=(mark, "not-a-jwt"),
        federation_statement_lifetime=600,
    )
    with TestClient(app=create_app(changed)) as client:
        claims = _configuration(client).claims
    assert claims["authority_hints"] == ["https://anchor.example"]
    assert claims["trust_marks"] == [{"trust_mark_type": "https://anchor.example/member", "trust_mark": mark}]
    assert claims["exp"] - claims["iat"] == 600


def test_app_and_holder_statements(client: Any, operator_token: str) -> None:
    app = client.post("/register", json=app_registration()).json()
    assert app["status"] == "approved"
    declared = holder_declaration()
    client.post("/admin/holders", json=declared, headers=_auth(operator_token))
    app_id = f"{ISSUER}/apps/{app['client_id']}"
    holder_id = f"{ISSUER}/holders/labo-test"
    # a pending holder is nobody's business yet
    assert _fetch(client, holder_id).status_code == 404
    assert client.get("/federation/list").json() == [app_id]
    client.post("/admin/holders/labo-test/approve", headers=_auth(operator_token))
    assert client.get("/federation/list").json() == [app_id, holder_id]
    assert client.get("/federation/list", params={"entity_type": "oauth_resource"}).json() == [holder_id]
    assert client.get("/federation/list", params={"entity_type": "oauth_client"}).json() == [app_id]
    assert client.get("/federation/list", params={"trust_marked": "true"}).json() == [app_id]
    assert client.get("/federation/list", params={"intermediate": "true"}).json() == []

    statement = _statement(client, app_id)
    client_meta = statement.metadata["oauth_client"]
    assert client_meta["client_id"] == app["client_id"]
    assert client_meta["charter_manifest"] == app_registration()["charter_manifest"]
    assert "contacts" not in client_meta  # people's addresses stay at the broker
    facts = statement.metadata["health_consent_app"]
    assert facts["status"] == "approved" and facts["verdict"] == "approved"
    assert facts["charter_manifest_sha256"] == app["charter_verdict"]["manifest_sha256"]
    mark_type, mark = _mark_of(statement)
    jwks = client.get("/jwks.json").json()
    verified = verify_trust_mark(
        mark,
        issuer=ISSUER,
        issuer_jwks=jwks,
        subject=app_id,
        trust_mark_type=mark_type,
        now=_now(),
        status="active",
    )
    assert verified.claims["exp"] - verified.claims["iat"] == 24 * 3600
    assert _pyjwt(mark, jwks, "trust-mark+jwt")["trust_mark_type"] == mark_type
    assert _pyjwt(_fetch(client, app_id).text, jwks, "entity-statement+jwt")["sub"] == app_id
    # the app's chain, with the broker as the anchor
    chain = [_fetch(client, app_id).text, client.get("/.well-known/openid-federation").text]
    assert resolve_trust_chain(chain, anchor=TrustAnchor(ISSUER, jwks), now=_now()).subject == app_id

    holder = _statement(client, holder_id)
    assert holder.jwks == declared["jwks"]
    assert holder.metadata["oauth_resource"]["resource"] == "https://labo-test.example/fhir"
    assert holder.metadata["health_data_holder"]["categories"] == ["lab_results", "identity"]
    assert "trust_marks" not in holder.claims


def test_unknown_subjects_are_404_problems(client: Any) -> None:
    refused = app_registration(name="Vente de Données")
    refused["charter_manifest"]["business_model"]["model"] = "sale_of_data"
    refused_id = client.post("/register", json=refused).json()["client_id"]
    for sub in (
        f"{ISSUER}/apps/app_unknown",
        f"{ISSUER}/apps/{refused_id}",
        f"{ISSUER}/holders/nobody",
        "https://elsewhere.example/apps/x",
        f"{ISSUER}/apps/a/b",
        ISSUER,
    ):
        response = _fetch(client, sub)
        assert response.status_code == 404, sub
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["error"] == "not_found"
    missing = client.get("/federation/fetch")
    assert missing.status_code == 400 and missing.json()["error"] == "invalid_request"
    assert client.get("/federation/list").json() == []


def test_trust_mark_status_requests(client: Any, settings: Any) -> None:
    app = client.post("/register", json=app_registration()).json()
    app_id = f"{ISSUER}/apps/{app['client_id']}"
    _, mark = _mark_of(_statement(client, app_id))
    assert _status(client, mark) == "active"
    # form only, one trust_mark
    json_body = client.post("/federation/trust_mark_status", json={"trust_mark": mark})
    assert json_body.status_code == 415
    for body in ("", "trust_mark=", f"trust_mark={mark}&trust_mark={mark}", "sub=x"):
        response = client.post("/federation/trust_mark_status", content=body, headers=FORM)
        assert response.status_code == 400, body
        assert response.json()["error"] == "invalid_request"
    # a mark with a changed payload, one signed by another key, an expired one
    keystore = KeyStore(settings.key_dir).load()
    header, payload, signature = mark.split(".")
    claims = jwt.decode(mark, options={"verify_signature": False})
    changed = b64url_encode(json.dumps(dict(claims, exp=claims["exp"] + 86400)).encode())
    assert changed != payload
    assert _status(client, f"{header}.{changed}.{signature}") == "invalid"
    stranger = KeyStore(settings.key_dir.parent / "stranger")
    stranger.create()
    assert _status(client, stranger.sign(claims, typ="trust-mark+jwt")) == "invalid"
    stale = dict(claims, iat=claims["iat"] - 7200, exp=claims["iat"] - 3600)
    assert _status(client, keystore.sign(stale, typ="trust-mark+jwt")) == "expired"
    # a mark of ours for another app, or for a holder, is not one this broker issued
    assert (
        _status(client, keystore.sign(dict(claims, sub=f"{ISSUER}/apps/app_none"), typ="trust-mark+jwt"))
        == "invalid"
    )
    assert (
        _status(client, keystore.sign(dict(claims, sub=f"{ISSUER}/holders/x"), typ="trust-mark+jwt"))
        == "invalid"
    )
    # the manifest it vouched for is no longer the app's
    assert (
        _status(client, keystore.sign(dict(claims, charter_manifest_sha256="0" * 64), typ="trust-mark+jwt"))
        == "revoked"
    )


def test_trust_mark_revoked_when_the_app_is_suspended_or_deleted(client: Any, db_url: str) -> None:
    keeps = client.post("/register", json=app_registration(name="Reste Conforme")).json()
    adverts = app_registration(name="Pub Sans Santé")
    adverts["charter_manifest"]["business_model"]["model"] = "advertising_without_health_data"
    adverts = client.post("/register", json=adverts).json()
    keeps_id = f"{ISSUER}/apps/{keeps['client_id']}"
    adverts_id = f"{ISSUER}/apps/{adverts['client_id']}"
    keeps_type, keeps_mark = _mark_of(_statement(client, keeps_id))
    _, adverts_mark = _mark_of(_statement(client, adverts_id))
    assert _status(client, keeps_mark) == _status(client, adverts_mark) == "active"

    # the operator applies a stricter charter: the advertising app is suspended
    charter, document = charter_source(str(V2))
    engine = make_engine(db_url)
    with transaction(make_session_factory(engine)) as session:
        report = apply_charter(
            session, charter=charter, document=document, applied_by="test", dev_mode=True, now=utcnow()
        )
    engine.dispose()
    assert report.suspended == [adverts["client_id"]]

    assert _status(client, adverts_mark) == "revoked"
    suspended = _statement(client, adverts_id)
    assert suspended.metadata["health_consent_app"]["status"] == "suspended"
    assert "trust_marks" not in suspended.claims
    assert client.get("/federation/list").json() == [keeps_id]
    # the app that still passes: its mark of the old version is revoked, a new one is issued
    assert _status(client, keeps_mark) == "revoked"
    new_type, new_mark = _mark_of(_statement(client, keeps_id))
    assert new_type != keeps_type and new_type.endswith(f"/charter/{charter.version}")
    assert _status(client, new_mark) == "active"
    assert _configuration(client).metadata["health_consent_broker"]["charter_version"] == charter.version
    assert client.get("/federation/list", params={"trust_mark_type": keeps_type}).json() == []
    assert client.get("/federation/list", params={"trust_mark_type": new_type}).json() == [keeps_id]

    # the developer deletes the app: its mark is revoked and its statement gone
    deleted = client.delete(
        f"/register/{keeps['client_id']}", headers=_auth(keeps["registration_access_token"])
    )
    assert deleted.status_code == 204
    assert _status(client, new_mark) == "revoked"
    assert _fetch(client, keeps_id).status_code == 404
    assert client.get("/federation/list").json() == []


def test_statements_are_signed_by_the_rotated_key(client: Any, settings: Any) -> None:
    before = client.get("/jwks.json").json()
    KeyStore(settings.key_dir).rotate(timedelta(hours=1))
    after = _configuration(client)
    assert after.kid not in {k["kid"] for k in before["keys"]}
    assert {k["kid"] for k in before["keys"]} < {k["kid"] for k in after.jwks["keys"]}
