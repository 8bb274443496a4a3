"""Patient ↔ holder links: the link step through the holder, unlinking, and the operator import."""

from __future__ import annotations

import json
import secrets
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from argon2 import PasswordHasher
from jwcrypto import jwk, jwt
from sqlalchemy import select

from broker.consent.models import HolderLink
from broker.consent.patients.service import create_local_account
from broker.db import make_engine, make_session_factory, transaction, utcnow
from tests.catalog.test_holders import _broker
from tests.consent.test_oauth_flow import hidden
from tests.factories import holder_declaration

PASSWORD = "une phrase de passe assez longue pour le test"
LINK_ENDPOINT = "https://labo-test.example/broker-link"


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def make_patient(settings: Any, email: str) -> str:
    engine = make_engine(settings.database_url)
    with transaction(make_session_factory(engine)) as session:
        patient = create_local_account(session, email=email, display_name=email.split("@")[0],
                                       password_hash=PasswordHasher().hash(PASSWORD),
                                       language="fr", now=utcnow())
        assert patient is not None
        patient_id = patient.id
    engine.dispose()
    return patient_id


def log_in(client: Any, email: str) -> None:
    page = client.get("/login")
    answer = client.post("/login", data={"csrf_token": hidden(page.text, "csrf_token"),
                                         "email": email, "password": PASSWORD, "next": "/"},
                         follow_redirects=False)
    assert answer.status_code == 303, answer.text


def links(settings: Any) -> list[tuple[str, str, str, str]]:
    engine = make_engine(settings.database_url)
    with engine.connect() as conn:
        rows = conn.execute(select(HolderLink.patient_id, HolderLink.holder_id, HolderLink.handle,
                                   HolderLink.status).order_by(HolderLink.id)).all()
    engine.dispose()
    return [tuple(r) for r in rows]  # type: ignore[misc]


@pytest.fixture
def holder_key(client: Any, operator_token: str) -> jwk.JWK:
    key = jwk.JWK.generate(kty="EC", crv="P-256", kid="labo-link-key")
    public = key.export_public(as_dict=True)
    public.update(alg="ES256", use="sig")
    body = holder_declaration("labo-test", link_endpoint=LINK_ENDPOINT, jwks={"keys": [public]})
    assert client.post("/admin/holders", json=body, headers=_auth(operator_token)).status_code == 201
    client.post("/admin/holders/labo-test/approve", headers=_auth(operator_token))
    return key


def link_token(key: jwk.JWK, state: str, handle: str, *, issuer: str = "labo-test",
               audience: str = "http://127.0.0.1:8000", typ: str = "link+jwt") -> str:
    now = int(time.time())
    token = jwt.JWT(header={"alg": "ES256", "kid": key.key_id, "typ": typ},
                    claims={"iss": issuer, "aud": audience, "iat": now, "exp": now + 120,
                            "jti": secrets.token_urlsafe(12), "state": state, "handle": handle})
    token.make_signed_token(key)
    return str(token.serialize())


def start(client: Any) -> str:
    page = client.get("/my/sources")
    assert page.status_code == 200
    answer = client.post("/my/sources/labo-test/link",
                         data={"csrf_token": hidden(page.text, "csrf_token")}, follow_redirects=False)
    assert answer.status_code == 303
    location = answer.headers["location"]
    assert location.startswith(LINK_ENDPOINT + "?")
    query = parse_qs(urlsplit(location).query)
    assert query["redirect_uri"] == ["http://127.0.0.1:8000/my/sources/callback"]
    return query["state"][0]


def test_link_step_through_the_holder(client: Any, settings: Any, holder_key: jwk.JWK) -> None:
    patient_id = make_patient(settings, "gaelle@example.org")
    log_in(client, "gaelle@example.org")
    state = start(client)
    handle = "labo-" + secrets.token_hex(12)
    back = client.get("/my/sources/callback", params={"state": state,
                                                      "link_token": link_token(holder_key, state, handle)},
                      follow_redirects=False)
    assert back.status_code == 303 and back.headers["location"] == "/my/sources"
    assert links(settings) == [(patient_id, "labo-test", handle, "active")]
    assert "Délier" in client.get("/my/sources").text

    page = client.get("/my/sources")
    client.post("/my/sources/labo-test/unlink", data={"csrf_token": hidden(page.text, "csrf_token")})
    assert links(settings)[0][3] == "unlinked"


@pytest.mark.parametrize("attack", ["other-key", "wrong-state", "wrong-audience", "wrong-type",
                                    "wrong-issuer", "bad-handle", "replay", "no-token"])
def test_forged_link_answers_are_refused(client: Any, settings: Any, holder_key: jwk.JWK, attack: str) -> None:
    make_patient(settings, "gaelle@example.org")
    log_in(client, "gaelle@example.org")
    state = start(client)
    handle = "labo-" + secrets.token_hex(12)
    key = jwk.JWK.generate(kty="EC", crv="P-256", kid="labo-link-key") if attack == "other-key" else holder_key
    token = link_token(
        key, "another-state" if attack == "wrong-state" else state,
        "../../etc/passwd" if attack == "bad-handle" else handle,
        audience="https://evil.example" if attack == "wrong-audience" else "http://127.0.0.1:8000",
        typ="JWT" if attack == "wrong-type" else "link+jwt",
        issuer="pharma-test" if attack == "wrong-issuer" else "labo-test",
    )
    params = {"state": state, "link_token": token}
    if attack == "no-token":
        params.pop("link_token")
    if attack == "replay":
        assert client.get("/my/sources/callback", params=params, follow_redirects=False).status_code == 303
        # the same answer again, for a fresh request of the same patient
        params["state"] = start(client)
    answer = client.get("/my/sources/callback", params=params, follow_redirects=False)
    assert answer.status_code == 400, answer.text
    assert "text/html" in answer.headers["content-type"]
    assert len(links(settings)) == (1 if attack == "replay" else 0)


def test_a_state_cannot_be_used_by_another_patient(client: Any, settings: Any, holder_key: jwk.JWK) -> None:
    make_patient(settings, "gaelle@example.org")
    make_patient(settings, "antoine@example.org")
    log_in(client, "gaelle@example.org")
    state = start(client)
    client.cookies.clear()
    log_in(client, "antoine@example.org")
    answer = client.get("/my/sources/callback", params={
        "state": state, "link_token": link_token(holder_key, state, "labo-" + secrets.token_hex(12))},
        follow_redirects=False)
    assert answer.status_code == 400
    assert links(settings) == []


def test_operator_import_of_links(client: Any, settings: Any, holder_key: jwk.JWK, tmp_path: Any) -> None:
    gaelle = make_patient(settings, "gaelle@example.org")
    path = tmp_path / "links.csv"
    path.write_text("email,holder,handle\ngaelle@example.org,labo-test,labo-handle-0000000001\n")
    done = _broker(settings, "links", "import", str(path))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"linked": 1, "errors": []}
    assert links(settings) == [(gaelle, "labo-test", "labo-handle-0000000001", "active")]
    # one bad line and nothing of the file is imported
    path.write_text("email,holder\nantoine@example.org,labo-test\ngaelle@example.org,nobody\n")
    failed = _broker(settings, "links", "import", str(path))
    assert failed.returncode == 1
    assert "line 2" in failed.stderr and "line 3" in failed.stderr
    assert len(links(settings)) == 1
