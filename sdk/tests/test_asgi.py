"""The ASGI middleware in front of a Litestar holder API, served by uvicorn on loopback."""

from __future__ import annotations

import httpx
from sdk_support import Broker, Browser, grant

from broker_sdk import DPoPKey


def test_middleware_answers_per_rfc_6750_and_9449(
    holder_api: str, live_broker: Broker, browser: Browser
) -> None:
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

    in_query = httpx.get(
        url,
        params={"access_token": token["access_token"]},
        headers={"Authorization": f"Bearer {token['access_token']}"},
    )
    assert in_query.status_code == 401

    browser.revoke(token["consent_id"])


def test_middleware_with_dpop(holder_api: str, live_broker: Broker, browser: Browser) -> None:
    key = DPoPKey()
    token = grant(live_broker, browser, dpop=key)["access_token"]
    url = f"{holder_api}/Observation"
    ok = httpx.get(
        url, headers={"Authorization": f"DPoP {token}", "DPoP": key.proof("GET", url, access_token=token)}
    )
    assert ok.status_code == 200, ok.text
    no_proof = httpx.get(url, headers={"Authorization": f"DPoP {token}"})
    assert no_proof.status_code == 401
    assert no_proof.headers["www-authenticate"].startswith('DPoP error="invalid_dpop_proof"')
    downgrade = httpx.get(url, headers={"Authorization": f"Bearer {token}"})
    assert downgrade.status_code == 401
