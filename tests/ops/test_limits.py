"""Abuse limits (429 with Retry-After) and body size limits, per endpoint, on both backends."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from litestar.testing import TestClient

from broker.app import create_app
from broker.http import forwarded_address
from broker.ops.limits import RateLimiter, _digest
from tests.factories import app_registration


@pytest.fixture
def limited(settings: Any) -> Iterator[Any]:
    """A broker whose limits are small enough to reach in a test; ``limited(**limits)``."""
    clients: list[TestClient[Any]] = []

    def make(**limits: int) -> TestClient[Any]:
        values = {"rate_limit_address": 0, "rate_limit_client": 0, "rate_limit_patient": 0, **limits}
        client = TestClient(app=create_app(replace(settings, **values)))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def _token_request(client: TestClient[Any], client_id: str = "app-a") -> Any:
    return client.post(
        "/token", data={"grant_type": "refresh_token", "refresh_token": "hcb_rt_nothing", "client_id": client_id}
    )


def test_token_endpoint_per_address(limited: Any) -> None:
    client = limited(rate_limit_address=3)
    for _ in range(3):
        answer = _token_request(client)
        assert answer.status_code in (400, 401), answer.text  # refused, but not for the rate
    refused = _token_request(client)
    assert refused.status_code == 429
    assert refused.headers["content-type"].startswith("application/json")
    assert refused.json()["error"] == "temporarily_unavailable"
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["cache-control"] == "no-store"
    # another group of endpoints counts on its own
    assert client.post("/register", json=app_registration()).status_code == 201
    # health, readiness and metrics are never limited
    for _ in range(5):
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200


def test_token_endpoint_per_client(limited: Any) -> None:
    client = limited(rate_limit_client=2)
    assert [_token_request(client, "app-a").status_code != 429 for _ in range(2)] == [True, True]
    assert _token_request(client, "app-a").status_code == 429
    # the same client named in HTTP Basic counts in the same bucket
    basic = client.post(
        "/token",
        data={"grant_type": "refresh_token", "refresh_token": "x"},
        auth=("app-a", "secret"),
    )
    assert basic.status_code == 429
    assert _token_request(client, "app-b").status_code != 429


def test_registration_per_address(limited: Any) -> None:
    client = limited(rate_limit_address=2)
    assert client.post("/register", json=app_registration("Un")).status_code == 201
    assert client.post("/register", json=app_registration("Deux")).status_code == 201
    refused = client.post("/register", json=app_registration("Trois"))
    assert refused.status_code == 429
    assert refused.json()["error"] == "temporarily_unavailable"
    # nothing was registered by the refused request
    names = [a["client_name"] for a in client.get("/api/catalog/apps").json()["items"]]
    assert "Trois" not in names


def test_login_per_patient_answers_a_page(limited: Any) -> None:
    client = limited(rate_limit_patient=2)
    form = {"email": "gaelle@example.org", "password": "x" * 20, "csrf_token": "wrong"}
    for _ in range(2):
        assert client.post("/login", data=form).status_code != 429
    refused = client.post("/login", data=form)
    assert refused.status_code == 429
    assert refused.headers["content-type"].startswith("text/html")
    assert "Trop de tentatives" in refused.text
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["x-frame-options"] == "DENY"
    english = client.post("/login", data=form, headers={"Accept-Language": "en"})
    assert english.status_code == 429
    assert "Too many attempts. Wait a little, then try again." in english.text
    # another patient is not held back by the first one's limit
    other = client.post("/login", data={**form, "email": "autre@example.org"})
    assert other.status_code != 429


def test_authorization_per_address_answers_a_page(limited: Any) -> None:
    client = limited(rate_limit_address=1)
    assert client.get("/authorize", params={"client_id": "app-a"}).status_code != 429
    refused = client.get("/authorize", params={"client_id": "app-a"})
    assert refused.status_code == 429
    assert "Trop de tentatives" in refused.text


def test_rate_limiter_refills_at_its_pace() -> None:
    now = [1000.0]
    limiter = RateLimiter(60, clock=lambda: now[0])  # one a second, a burst of 60
    assert all(limiter.take("k") == 0 for _ in range(60))
    assert limiter.take("k") == 1
    now[0] += 0.5
    assert limiter.take("k") == 1
    now[0] += 0.6
    assert limiter.take("k") == 0
    assert limiter.take("other") == 0
    slow = RateLimiter(6, clock=lambda: now[0])  # one every ten seconds
    assert all(slow.take("k") == 0 for _ in range(6))
    assert slow.take("k") == 10


def test_forwarded_for_is_believed_only_from_trusted_proxies() -> None:
    proxies = (ipaddress.ip_network("10.0.0.0/24"),)
    # no trusted proxy: the peer, whatever the header says
    assert forwarded_address("203.0.113.9", "198.51.100.1", ()) == "203.0.113.9"
    # a peer that is not a trusted proxy cannot choose its address either
    assert forwarded_address("203.0.113.9", "198.51.100.1", proxies) == "203.0.113.9"
    # behind the proxy: the rightmost address that is not a proxy
    assert forwarded_address("10.0.0.2", "198.51.100.1", proxies) == "198.51.100.1"
    assert forwarded_address("10.0.0.2", "1.1.1.1, 198.51.100.1, 10.0.0.5", proxies) == "198.51.100.1"
    # garbage in the header: the last address a proxy vouched for
    assert forwarded_address("10.0.0.2", "not-an-ip", proxies) == "10.0.0.2"
    assert forwarded_address("10.0.0.2", None, proxies) == "10.0.0.2"


def test_limits_count_the_address_a_trusted_proxy_forwarded(settings: Any) -> None:
    import asyncio

    import httpx

    proxies = (ipaddress.ip_network("10.0.0.0/24"),)
    body = {"grant_type": "refresh_token", "refresh_token": "x", "client_id": "app-a"}

    async def statuses(peer: str, trusted: tuple[Any, ...], forwarded: list[str]) -> list[int]:
        app = create_app(replace(settings, rate_limit_address=2, rate_limit_client=0, trusted_proxies=trusted))
        transport = httpx.ASGITransport(app=app, client=(peer, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://broker") as client:
            return [
                (await client.post("/token", data=body, headers={"X-Forwarded-For": f})).status_code
                for f in forwarded
            ]

    behind_proxy = asyncio.run(statuses("10.0.0.2", proxies, ["198.51.100.1"] * 3 + ["198.51.100.2"]))
    assert behind_proxy[2] == 429 and 429 not in (behind_proxy[:2] + behind_proxy[3:])
    # the same header from a peer that is not a trusted proxy changes nothing: one client
    direct = asyncio.run(statuses("203.0.113.9", proxies, ["198.51.100.1", "198.51.100.2", "198.51.100.3"]))
    assert direct[2] == 429
    # and without any trusted proxy, the header is never believed
    untrusted = asyncio.run(statuses("10.0.0.2", (), ["198.51.100.1", "198.51.100.2", "198.51.100.3"]))
    assert untrusted[2] == 429


# Every endpoint that takes a body, and the form its 413 takes.
BODY_ENDPOINTS = [
    ("/token", "oauth"),
    ("/par", "oauth"),
    ("/revoke", "oauth"),
    ("/introspect", "oauth"),
    ("/register", "oauth"),
    ("/login", "page"),
    ("/signup", "page"),
    ("/admin/holders", "problem"),
]


@pytest.mark.parametrize(("path", "form"), BODY_ENDPOINTS)
def test_body_size_limit_per_endpoint(
    request: pytest.FixtureRequest, client: Any, settings: Any, path: str, form: str
) -> None:
    body = b"a=" + b"x" * settings.max_body_bytes
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if path.startswith("/admin/"):  # the operator API reads no body before its token
        headers["Authorization"] = f"Bearer {request.getfixturevalue('operator_token')}"
        headers["Content-Type"] = "application/json"
    answer = client.post(path, content=body, headers=headers)
    assert answer.status_code == 413, (path, answer.status_code, answer.text[:300])
    if form == "oauth":
        assert answer.json()["error"] == "invalid_request"
        assert str(settings.max_body_bytes) in answer.json()["error_description"]
    elif form == "problem":
        assert answer.headers["content-type"].startswith("application/problem+json")
    else:
        assert answer.headers["content-type"].startswith("text/html")


def test_a_full_limiter_forgets_a_tenth_full_buckets_first(monkeypatch: pytest.MonkeyPatch) -> None:
    import broker.ops.limits as limits

    monkeypatch.setattr(limits, "MAX_KEYS", 100)
    now = [0.0]
    limiter = RateLimiter(60, clock=lambda: now[0])
    for index in range(60):
        limiter.take(f"old-{index}")
    now[0] = 120.0  # the first sixty are full again
    for index in range(40):
        for _ in range(60):
            limiter.take(f"busy-{index}")  # empty buckets: these must be kept
    limiter.take("one-more")
    assert len(limiter) == 41
    assert limiter.take("busy-0") > 0  # still empty: its count was not forgotten
    # only busy keys: the oldest tenth goes, in one pass
    for index in range(59):
        limiter.take(f"new-{index}")
    assert len(limiter) == 100
    limiter.take("overflow")
    assert len(limiter) == 91


def test_a_request_refused_by_its_address_spends_nothing_of_the_app(limited: Any) -> None:
    client = limited(rate_limit_address=2, rate_limit_client=3)
    statuses = [_token_request(client, "app-a").status_code for _ in range(5)]
    assert statuses[2:] == [429, 429, 429]
    # the app's allowance (3) was spent twice only: one more request (from anywhere) passes
    app_bucket = client.app.state.rate_limits.limiters["client"]
    assert app_bucket.take("token:client:" + _digest("app-a")) == 0
    assert app_bucket.take("token:client:" + _digest("app-a")) > 0
