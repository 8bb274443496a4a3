"""What holders rely on: introspection (RFC 7662), the revocation push stream, DPoP-bound tokens.

Runs against a live broker process (the ``world`` fixture of the end-to-end test).
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from typing import Any

import httpx
from jwcrypto import jwk, jws, jwt
from sqlalchemy import update

from broker.catalog.models import Holder
from broker.db import make_engine
from tests.consent.test_oauth_flow import World, app_client, consent, hidden, log_in, world

__all__ = ["world"]  # the fixture, re-exported for pytest

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def holder_key(world: World, holder_id: str) -> jwk.JWK:
    """Give the holder a key the test holds, as an operator would register it."""
    key = jwk.JWK.generate(kty="EC", crv="P-256", kid=f"{holder_id}-key")
    public = key.export_public(as_dict=True)
    public.update(alg="ES256", use="sig")
    engine = make_engine(world.db_url)
    with engine.begin() as conn:
        conn.execute(update(Holder).where(Holder.identifier == holder_id).values(jwks={"keys": [public]}))
    engine.dispose()
    return key


def assertion(key: jwk.JWK, holder_id: str, audience: str) -> str:
    now = int(time.time())
    token = jwt.JWT(
        header={"alg": "ES256", "kid": key.key_id},
        claims={
            "iss": holder_id,
            "sub": holder_id,
            "aud": audience,
            "iat": now,
            "exp": now + 60,
            "jti": secrets.token_urlsafe(12),
        },
    )
    token.make_signed_token(key)
    return str(token.serialize())


def granted_token(world: World, browser: httpx.Client, **fetch: Any) -> dict[str, Any]:
    app = app_client(world)
    verifier = secrets.token_urlsafe(48)
    url, _ = app.create_authorization_url(f"{world.issuer}/authorize", code_verifier=verifier)
    location = consent(browser, url).headers["location"]
    return dict(
        app.fetch_token(
            f"{world.issuer}/token",
            authorization_response=location,
            code_verifier=verifier,
            resource=world.holders["labo-test"],
            **fetch,
        )
    )


def introspect(world: World, key: jwk.JWK, holder_id: str, token: str) -> httpx.Response:
    return httpx.post(
        f"{world.issuer}/introspect",
        data={
            "token": token,
            "client_id": holder_id,
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion(key, holder_id, world.issuer),
        },
    )


def test_introspection_follows_the_consent(world: World) -> None:
    labo_key = holder_key(world, "labo-test")
    pharma_key = holder_key(world, "pharma-test")
    browser = httpx.Client(base_url=world.issuer)
    log_in(browser, world.email)
    token = granted_token(world, browser)

    answer = introspect(world, labo_key, "labo-test", token["access_token"]).json()
    assert answer["active"] is True
    assert answer["consent_id"] == token["consent_id"]
    assert answer["scope"] == "lab_results"
    # a token meant for another holder is not active for this one
    assert introspect(world, pharma_key, "pharma-test", token["access_token"]).json() == {"active": False}
    # a holder without a valid assertion is refused
    forged = httpx.post(
        f"{world.issuer}/introspect",
        data={
            "token": token["access_token"],
            "client_id": "labo-test",
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion(pharma_key, "labo-test", world.issuer),
        },
    )
    assert forged.status_code == 401 and forged.json()["error"] == "invalid_client"
    # garbage is inactive, not an error
    assert introspect(world, labo_key, "labo-test", "not.a.token").json() == {"active": False}

    page = browser.get("/my/consents")
    browser.post(
        f"/my/consents/{token['consent_id']}/revoke", data={"csrf_token": hidden(page.text, "csrf_token")}
    )
    assert introspect(world, labo_key, "labo-test", token["access_token"]).json() == {"active": False}


def test_revocation_reaches_a_subscribed_holder_within_a_second(world: World) -> None:
    key = holder_key(world, "labo-test")
    browser = httpx.Client(base_url=world.issuer)
    log_in(browser, world.email)
    token = granted_token(world, browser)
    received: list[tuple[float, dict[str, Any]]] = []
    subscribed = threading.Event()

    def listen() -> None:
        headers = {"Authorization": f"Bearer {assertion(key, 'labo-test', world.issuer)}"}
        with httpx.stream(
            "GET",
            f"{world.issuer}/events/revocations",
            params={"holder": "labo-test"},
            headers=headers,
            timeout=10,
        ) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if line.startswith(": subscribed"):
                    subscribed.set()
                if line.startswith("data: "):
                    received.append((time.monotonic(), json.loads(line[6:])))
                    return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    assert subscribed.wait(10)
    page = browser.get("/my/consents")
    revoked_at = time.monotonic()
    browser.post(
        f"/my/consents/{token['consent_id']}/revoke", data={"csrf_token": hidden(page.text, "csrf_token")}
    )
    listener.join(timeout=5)
    assert received, "the holder heard nothing"
    arrived, event = received[0]
    assert event["consent_id"] == token["consent_id"] and event["status"] == "revoked"
    assert arrived - revoked_at < 1.0, f"took {arrived - revoked_at:.2f} s"

    # a subscriber without a valid assertion is refused
    refused = httpx.get(f"{world.issuer}/events/revocations", params={"holder": "labo-test"})
    assert refused.status_code == 401


def dpop_proof(key: jwk.JWK, url: str, method: str = "POST") -> str:
    public = key.export_public(as_dict=True)
    token = jws.JWS(
        json.dumps({"jti": secrets.token_urlsafe(12), "htm": method, "htu": url, "iat": int(time.time())})
    )
    token.add_signature(key, alg="ES256", protected={"typ": "dpop+jwt", "alg": "ES256", "jwk": public})
    return str(token.serialize(compact=True))


def test_dpop_bound_tokens(world: World) -> None:
    browser = httpx.Client(base_url=world.issuer)
    log_in(browser, world.email)
    key = jwk.JWK.generate(kty="EC", crv="P-256")
    token_url = f"{world.issuer}/token"
    token = granted_token(world, browser, headers={"DPoP": dpop_proof(key, token_url)})
    assert token["token_type"] == "DPoP"
    claims = json.loads(jwt.JWT(jwt=token["access_token"]).token.objects["payload"])
    assert claims["cnf"] == {"jkt": key.thumbprint()}

    refresh = {
        "grant_type": "refresh_token",
        "refresh_token": token["refresh_token"],
        "client_id": world.client_id,
    }
    # the refresh token is bound to the key: no proof, or another key's proof, is refused
    assert httpx.post(token_url, data=refresh).json()["error"] == "invalid_grant"
    other = jwk.JWK.generate(kty="EC", crv="P-256")
    assert (
        httpx.post(token_url, data=refresh, headers={"DPoP": dpop_proof(other, token_url)}).json()["error"]
        == "invalid_grant"
    )
    # a proof for another URL or a replayed proof is refused
    wrong_url = httpx.post(token_url, data=refresh, headers={"DPoP": dpop_proof(key, world.issuer + "/par")})
    assert wrong_url.json()["error"] == "invalid_dpop_proof"
    proof = dpop_proof(key, token_url)
    good = httpx.post(token_url, data=refresh, headers={"DPoP": proof})
    assert good.status_code == 200, good.text
    replay = httpx.post(
        token_url, data={**refresh, "refresh_token": good.json()["refresh_token"]}, headers={"DPoP": proof}
    )
    assert replay.json()["error"] == "invalid_dpop_proof"
