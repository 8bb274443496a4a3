"""The holder's download endpoint (broker issue 10) against a live broker's keys and status
lists: only download tokens, each once; the FHIR Bundle, the summary, CORS."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sdk_support import Broker, Browser, grant
from test_verifier import forged, payload

from broker_sdk import HolderVerifier, TokenExpired, TokenInvalid, VerificationError
from broker_sdk.download import (
    DOWNLOAD_CLIENT_ID,
    DOWNLOAD_TOKEN_TYP,
    DownloadEndpoint,
    DownloadRequest,
    DownloadVerifier,
    handle_download,
    summary_html,
)

OBSERVATION = {
    "resourceType": "Observation",
    "id": "obs-1",
    "status": "final",
    "code": {"text": "Glycémie <à jeun>"},
    "effectiveDateTime": "2026-03-01T08:00:00Z",
    "valueQuantity": {"value": 5.4, "unit": "mmol/L"},
}


@pytest.fixture
def app_token(live_broker: Broker, browser: Browser) -> str:
    return str(grant(live_broker, browser)["access_token"])


def download_token(broker: Broker, app_token: str, **changes: Any) -> str:
    now = int(time.time())
    claims = {"client_id": DOWNLOAD_CLIENT_ID, "iat": now, "nbf": now, "exp": now + 120, **changes}
    claims["jti"] = claims.get("jti") or f"dl-{time.monotonic_ns()}"
    return forged(broker, app_token, header={"typ": DOWNLOAD_TOKEN_TYP}, **claims)


@pytest.fixture
def downloads(live_broker: Broker) -> Iterator[DownloadVerifier]:
    holder = live_broker.holders["labo-a"]
    with DownloadVerifier(live_broker.issuer, holder.base_url, holder_id="labo-a") as verifier:
        yield verifier


def reason(verifier: Any, token: str) -> str:
    with pytest.raises(VerificationError) as caught:
        verifier.verify(token)
    assert type(caught.value) is TokenInvalid, caught.value
    return caught.value.reason


def test_a_download_token_serves_once(
    live_broker: Broker, app_token: str, downloads: DownloadVerifier
) -> None:
    token = download_token(live_broker, app_token)
    verified = downloads.verify(token)
    assert verified.client_id == DOWNLOAD_CLIENT_ID and verified.categories
    assert reason(downloads, token) == "replay"


def test_app_tokens_are_refused_at_the_download_endpoint(
    live_broker: Broker, app_token: str, downloads: DownloadVerifier
) -> None:
    assert reason(downloads, app_token) == "typ"  # an access token, however valid
    assert reason(downloads, download_token(live_broker, app_token, client_id="app_other")) == "client"


def test_download_tokens_are_refused_at_the_api(live_broker: Broker, app_token: str) -> None:
    holder = live_broker.holders["labo-a"]
    with HolderVerifier(live_broker.issuer, holder.base_url, holder_id="labo-a") as api:
        assert reason(api, download_token(live_broker, app_token)) == "typ"
        # Even typed as an access token, the download client is refused at the API.
        now = int(time.time())
        disguised = forged(
            live_broker, app_token, client_id=DOWNLOAD_CLIENT_ID, iat=now, nbf=now, exp=now + 60, jti="x1"
        )
        assert reason(api, disguised) == "client"


def test_after_its_lifetime(live_broker: Broker, app_token: str) -> None:
    holder = live_broker.holders["labo-a"]
    token = download_token(live_broker, app_token)
    with DownloadVerifier(
        live_broker.issuer, holder.base_url, holder_id="labo-a", clock=lambda: time.time() + 200
    ) as late:
        with pytest.raises(TokenExpired):
            late.verify(token)


def test_handle_download_answers_a_bundle_or_a_summary(
    live_broker: Broker, app_token: str, downloads: DownloadVerifier
) -> None:
    asked: list[DownloadRequest] = []

    def serve(request: DownloadRequest) -> list[dict[str, Any]]:
        asked.append(request)
        return [OBSERVATION]

    base = live_broker.holders["labo-a"].base_url
    token = download_token(live_broker, app_token)
    answer = handle_download({"download_token": token}, downloads, serve, base_url=base, holder_name="Labo A")
    assert answer.status == 200
    headers = dict(answer.headers)
    assert headers["content-type"] == "application/fhir+json"
    assert headers["content-disposition"].startswith("attachment")
    bundle = json.loads(answer.body)
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "collection"
    assert bundle["entry"] == [{"fullUrl": f"{base}/Observation/obs-1", "resource": OBSERVATION}]
    assert asked[0].categories == frozenset(payload(token)["scope"].split())
    # The same token again: a readable refusal, nothing served.
    again = handle_download({"download_token": token}, downloads, serve, base_url=base, holder_name="Labo A")
    assert again.status == 401 and "déjà servi" in again.text and len(asked) == 1
    summary = handle_download(
        {"download_token": download_token(live_broker, app_token), "format": "html"},
        downloads,
        serve,
        base_url=base,
        holder_name="Labo A",
    )
    assert summary.status == 200 and "5.4 mmol/L" in summary.text
    assert "&lt;à jeun&gt;" in summary.text  # escaped
    assert handle_download({"format": "pdf"}, downloads, serve, base_url=base, holder_name="x").status == 400


def test_summary_is_newest_first() -> None:
    older = {**OBSERVATION, "id": "obs-0", "effectiveDateTime": "2025-01-01", "valueQuantity": {"value": 1}}
    page = summary_html([older, OBSERVATION], title="T", holder_name="H")
    assert page.index("2026-03-01") < page.index("2025-01-01")


def call(
    endpoint: DownloadEndpoint, method: str, body: bytes = b"", **headers: str
) -> tuple[int, dict[str, str], bytes]:
    sent: list[dict[str, Any]] = []
    scope = {
        "type": "http",
        "method": method,
        "path": "/download",
        "query_string": headers.pop("query", "").encode(),
        "headers": [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()],
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(endpoint(scope, receive, send))
    start = sent[0]
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, sent[1]["body"]


def test_the_asgi_endpoint_and_cors(live_broker: Broker, app_token: str, downloads: DownloadVerifier) -> None:
    base = live_broker.holders["labo-a"].base_url
    endpoint = DownloadEndpoint(
        downloads,
        lambda request: [OBSERVATION],
        base_url=base,
        holder_name="Labo A",
        allowed_origins=["http://broker.example"],
    )
    form = "application/x-www-form-urlencoded"
    token = download_token(live_broker, app_token)
    raw = f"download_token={token}&format=json".encode()
    status, headers, _ = call(endpoint, "POST", raw, content_type=form, origin="http://evil.example")
    assert status == 200 and "access-control-allow-origin" not in headers  # served, not readable by evil
    status, headers, answer = call(
        endpoint,
        "POST",
        f"download_token={download_token(live_broker, app_token)}".encode(),
        content_type=form,
        origin="http://broker.example",
    )
    assert status == 200 and headers["access-control-allow-origin"] == "http://broker.example"
    assert json.loads(answer)["resourceType"] == "Bundle"
    assert call(endpoint, "GET")[0] == 405
    assert call(endpoint, "POST", b"", content_type=form, query=f"download_token={token}")[0] == 401
    assert call(endpoint, "POST", raw, content_type="application/json")[0] == 400
