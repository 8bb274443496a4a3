"""The ASGI middleware in front of a Litestar holder API, served by uvicorn on loopback."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import uvicorn
from litestar import Litestar, Request, get
from litestar.middleware import DefineMiddleware
from sdk_support import Broker, Browser, grant

from broker_sdk import BrokerAuthMiddleware, DPoPKey, HolderVerifier
from broker_sdk.asgi import SCOPE_KEY


@get("/fhir/Observation")
async def observations(request: Request[Any, Any, Any]) -> dict[str, Any]:
    token = request.scope[SCOPE_KEY]  # type: ignore[literal-required]
    return {"consent_id": token.consent_id, "handle": token.link_handle}


@get("/fhir/Patient")
async def patient(request: Request[Any, Any, Any]) -> dict[str, Any]:
    return {"resourceType": "Patient"}


@get("/fhir/metadata")
async def metadata() -> dict[str, Any]:
    return {"resourceType": "CapabilityStatement"}


def categories(scope: Any) -> set[str]:
    return {"identity"} if scope["path"].endswith("/Patient") else {"lab_results"}


@pytest.fixture
def holder_api(live_broker: Broker) -> Iterator[str]:
    holder = live_broker.holders["labo-a"]
    verifier = HolderVerifier(live_broker.issuer, holder.base_url, holder_id="labo-a")
    app = Litestar(
        route_handlers=[observations, patient, metadata],
        middleware=[
            DefineMiddleware(
                BrokerAuthMiddleware, verifier=verifier, categories=categories, public_paths=["/fhir/metadata"]
            )
        ],
    )
    port = urlsplit(holder.base_url).port
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    try:
        yield holder.base_url
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        verifier.close()


def test_middleware_answers_per_rfc_6750_and_9449(holder_api: str, live_broker: Broker, browser: Browser) -> None:
    url = f"{holder_api}/Observation"
    assert httpx.get(f"{holder_api}/metadata").status_code == 200  # public path

    missing = httpx.get(url)
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"].startswith("Bearer, DPoP algs=")
    assert "error=" not in missing.headers["www-authenticate"]

    garbage = httpx.get(url, headers={"Authorization": "Bearer not.a.token"})
    assert garbage.status_code == 401
    assert 'Bearer error="invalid_token"' in garbage.headers["www-authenticate"]
    assert garbage.json()["error"] == "invalid_token"

    token = grant(live_broker, browser)
    good = httpx.get(url, headers={"Authorization": f"Bearer {token['access_token']}"})
    assert good.status_code == 200, good.text
    assert good.json()["consent_id"] == token["consent_id"]
    again = httpx.get(url, headers={"Authorization": f"bearer {token['access_token']}"})  # seen before
    assert again.status_code == 200

    scope = httpx.get(f"{holder_api}/Patient", headers={"Authorization": f"Bearer {token['access_token']}"})
    assert scope.status_code == 403
    assert 'error="insufficient_scope"' in scope.headers["www-authenticate"]
    assert 'scope="identity"' in scope.headers["www-authenticate"]

    in_query = httpx.get(url, params={"access_token": token["access_token"]},
                         headers={"Authorization": f"Bearer {token['access_token']}"})
    assert in_query.status_code == 401

    browser.revoke(token["consent_id"])


def test_middleware_with_dpop(holder_api: str, live_broker: Broker, browser: Browser) -> None:
    key = DPoPKey()
    token = grant(live_broker, browser, dpop=key)["access_token"]
    url = f"{holder_api}/Observation"
    ok = httpx.get(url, headers={"Authorization": f"DPoP {token}", "DPoP": key.proof("GET", url, access_token=token)})
    assert ok.status_code == 200, ok.text
    no_proof = httpx.get(url, headers={"Authorization": f"DPoP {token}"})
    assert no_proof.status_code == 401
    assert no_proof.headers["www-authenticate"].startswith('DPoP error="invalid_dpop_proof"')
    downgrade = httpx.get(url, headers={"Authorization": f"Bearer {token}"})
    assert downgrade.status_code == 401
