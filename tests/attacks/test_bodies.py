"""Oversized and deeply nested input on every endpoint that reads JSON or a form, and on every
JSON the broker decodes from a parameter (cursors, RFC 9396 ``authorization_details``, JWT
headers and payloads read before verification).

Each is refused with 413 or 400 in the endpoint's error format (RFC 9457 problem details,
or RFC 6749 ``error`` on the OAuth endpoints) and changes nothing in the database. CPython's
JSON parser recurses once per level and raises ``RecursionError`` (not ``ValueError``) near a
thousand levels: before the broker counted the nesting first, each of these was a 500.

In process (Litestar's test client), on SQLite and PostgreSQL; a body sent slowly or too
long on a real connection is in ``test_slow_clients.py``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import replace
from typing import Any
from urllib.parse import quote

import pytest
from litestar.testing import TestClient
from sqlalchemy import func, select

from broker.db import make_engine
from broker.models import metadata
from broker.settings import Settings
from broker.strictjson import MAX_DEPTH
from tests.consent.patients.browser import log_in, sign_up
from tests.factories import app_registration

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
JSON = {"Content-Type": "application/json"}
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@pytest.fixture
def settings(settings: Settings) -> Settings:  # type: ignore[override]
    # The lowest password cost the broker accepts: one patient logs in here.
    return replace(settings, argon2_memory_kib=19456, argon2_time_cost=2, argon2_parallelism=1)


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def nested_arrays(depth: int) -> str:
    return "[" * depth + "]" * depth


def nested_objects(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


# Written by the background sequencer on its own schedule (a signed checkpoint once earlier
# events are sequenced), whatever the request under test did: not part of "nothing stored".
BACKGROUND_TABLES = frozenset({"audit_checkpoints"})


def snapshot(db_url: str) -> dict[str, int]:
    """Rows per table: what "nothing stored" is checked against."""
    engine = make_engine(db_url)
    with engine.connect() as conn:
        counts = {
            t.name: conn.scalar(select(func.count()).select_from(t)) or 0
            for t in metadata.sorted_tables
            if t.name not in BACKGROUND_TABLES
        }
    engine.dispose()
    return counts


@pytest.fixture
def world(client: TestClient[Any], operator_token: str) -> Iterator[dict[str, str]]:
    """A registered app (its registration token) and the operator's token."""
    answer = client.post("/register", json=app_registration(redirect_uris=["https://glycemie.example/cb"]))
    assert answer.status_code == 201, answer.text
    body = answer.json()
    yield {
        "client_id": body["client_id"],
        "registration": body["registration_access_token"],
        "operator": operator_token,
    }


def json_endpoints(world: dict[str, str]) -> list[tuple[str, str, dict[str, str]]]:
    """(method, path, headers) of every route that reads a JSON body, with valid credentials."""
    client_id = world["client_id"]
    registration = {"Authorization": f"Bearer {world['registration']}"}
    operator = {"Authorization": f"Bearer {world['operator']}"}
    return [
        ("POST", "/register", {}),
        ("PUT", f"/register/{client_id}", registration),
        ("POST", "/admin/holders", operator),
        ("POST", f"/admin/apps/{client_id}/decision", operator),
    ]


FORM_ENDPOINTS = ["/token", "/par", "/revoke", "/introspect", "/federation/trust_mark_status"]


def assert_problem(response: Any, status: int, path: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    if path.startswith(("/register", "/token", "/par", "/revoke", "/introspect")):
        assert response.headers["content-type"].startswith("application/json")
        assert body["error"] and body["error_description"], body
    else:
        assert response.headers["content-type"].startswith("application/problem+json")
        assert body["status"] == status and body["title"] and body["detail"], body
    return body


BAD_JSON = {
    "arrays nested 30,000 deep": nested_arrays(30_000),
    "objects nested 10,000 deep": nested_objects(10_000),
    "nested one level past the limit": json.dumps({"client_name": json.loads(nested_arrays(MAX_DEPTH))}),
    "invalid UTF-8": '{"client_name": "\udcff"}',
    "duplicate member": '{"client_name": "a", "client_name": "b"}',
    "NUL in a string (PostgreSQL text cannot hold it)": '{"client_name": "a\\u0000b"}',
    "NUL in a member name": '{"client_name": "a", "x\\u0000": 1}',
}


@pytest.mark.parametrize("body", BAD_JSON.values(), ids=BAD_JSON.keys())
def test_malformed_json_bodies_are_400_and_store_nothing(
    client: TestClient[Any], world: dict[str, str], db_url: str, body: str
) -> None:
    before = snapshot(db_url)
    raw = body.encode("utf-8", "surrogateescape")
    for method, path, headers in json_endpoints(world):
        response = client.request(method, path, content=raw, headers={**JSON, **headers})
        assert_problem(response, 400, path)
    assert snapshot(db_url) == before


def test_oversized_json_bodies_are_413_declared_or_streamed_and_store_nothing(
    client: TestClient[Any], world: dict[str, str], db_url: str, settings: Settings
) -> None:
    before = snapshot(db_url)
    big = json.dumps({"client_name": "a" * settings.max_body_bytes}).encode()
    for method, path, headers in json_endpoints(world):
        declared = client.request(method, path, content=big, headers={**JSON, **headers})
        body = assert_problem(declared, 413, path)
        assert str(settings.max_body_bytes) in (body.get("detail") or body["error_description"])
        # Without Content-Length (chunked): the limit is counted on what arrives.
        chunks = (big[i : i + 8192] for i in range(0, len(big), 8192))
        streamed = client.request(method, path, content=chunks, headers={**JSON, **headers})
        assert_problem(streamed, 413, path)
    assert snapshot(db_url) == before


@pytest.mark.parametrize("path", FORM_ENDPOINTS)
def test_oversized_or_non_utf8_forms_are_refused_in_the_endpoints_format(
    client: TestClient[Any], db_url: str, settings: Settings, path: str
) -> None:
    before = snapshot(db_url)
    big = ("token=" + "a" * settings.max_body_bytes).encode()
    assert_problem(client.post(path, content=big, headers=FORM), 413, path)
    # A byte that is not UTF-8 in the form (it was a 500 at the OAuth endpoints).
    broken = client.post(path, content=b"grant_type=\xff\xfe&token=\xff", headers=FORM)
    assert_problem(broken, 400, path)
    assert snapshot(db_url) == before


def test_deep_authorization_details_at_par_is_invalid(client: TestClient[Any], world: dict[str, str], db_url: str) -> None:
    before = snapshot(db_url)
    form = {
        "client_id": world["client_id"],
        "response_type": "code",
        "redirect_uri": "https://glycemie.example/cb",
        "state": "s",
        "code_challenge": "A" * 43,
        "code_challenge_method": "S256",
        "authorization_details": nested_arrays(5000),
    }
    body = "&".join(f"{k}={quote(v)}" for k, v in form.items())
    response = client.post("/par", content=body, headers=FORM)
    assert_problem(response, 400, "/par")
    assert response.json()["error"] == "invalid_authorization_details"
    assert snapshot(db_url) == before


def test_a_client_assertion_with_a_deep_header_is_invalid_client(client: TestClient[Any], db_url: str) -> None:
    """The ``kid`` is read from the header before verification, to fetch the app's keys. The
    2,048 characters it reads hold at most 768 levels, under CPython's limit: a regression
    test, so that a longer read does not become a way to a 500."""
    registered = client.post(
        "/register",
        json=app_registration(
            name="Glycémie Pro",
            redirect_uris=["https://glycemie.example/cb"],
            jwks_uri="http://127.0.0.1:9/jwks.json",  # never reached: the header is refused first
            token_endpoint_auth_method="private_key_jwt",
        ),
    )
    assert registered.status_code == 201, registered.text
    before = snapshot(db_url)
    header = b64(nested_arrays(700).encode())  # 1,400 bytes: under the 2,048 it reads
    form = {
        "grant_type": "refresh_token",
        "refresh_token": "rt_x",
        "client_id": registered.json()["client_id"],
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": f"{header}.{b64(b'{}')}.{b64(b'sig')}",
    }
    response = client.post("/token", content="&".join(f"{k}={quote(v)}" for k, v in form.items()), headers=FORM)
    assert response.status_code in (400, 401), response.text
    assert response.json()["error"] in ("invalid_client", "invalid_request")
    assert snapshot(db_url) == before


def test_a_receipt_with_a_deep_payload_is_refused(client: TestClient[Any], db_url: str) -> None:
    before = snapshot(db_url)
    token = f"{b64(b'{}')}.{b64(nested_arrays(5000).encode())}.{b64(b'sig')}"
    response = client.post("/receipts", content=token, headers={"Content-Type": "application/jwt"})
    assert_problem(response, 400, "/receipts")
    assert snapshot(db_url) == before


def test_deep_cursors_are_400(client: TestClient[Any]) -> None:
    cursor = b64(nested_arrays(5000).encode())
    assert_problem(client.get(f"/api/catalog/apps?cursor={cursor}"), 400, "/api/catalog/apps")
    assert sign_up(client, email="curseur@example.org").status_code == 303
    assert log_in(client, email="curseur@example.org").status_code == 303
    assert_problem(client.get(f"/api/me/audit/events?cursor={cursor}"), 400, "/api/me/audit/events")


def test_huge_numbers_in_paths_and_queries_are_400(client: TestClient[Any]) -> None:
    """A number past the 64-bit columns (or the 32-bit status entries) was a 500."""
    for path in (
        "/status/48347",
        "/status/99999999999999999999",
        "/api/audit/checkpoints/99999999999999999999",
        "/api/audit/proofs/inclusion?leaf_index=0&tree_size=99999999999999999999",
        "/api/audit/proofs/consistency?first=1&second=99999999999999999999",
    ):
        assert_problem(client.get(path), 400, path.split("?")[0])


def test_nul_characters_in_paths_queries_and_forms_are_400(
    client: TestClient[Any], world: dict[str, str], db_url: str
) -> None:
    """A NUL reached PostgreSQL and failed there (a 500) until refused at the boundary."""
    before = snapshot(db_url)
    registration = {"Authorization": f"Bearer {world['registration']}"}
    for path, headers in (
        ("/api/catalog/apps/%00", {}),
        ("/api/catalog/apps?q=a%00b", {}),
        ("/register/%00", registration),
        (f"/register/{world['client_id']}%00/verdict", registration),
    ):
        assert_problem(client.get(path, headers=headers), 400, path.split("?")[0])
    for form in ("grant_type=refresh_token&refresh_token=rt&client_id=%00", "token=a%00b"):
        assert_problem(client.post("/token", content=form, headers=FORM), 400, "/token")
    assert snapshot(db_url) == before
    # On a page, a NUL empties the field: the person reads what is missing, as for a blank one.
    assert sign_up(client, email="nul\x00@example.org").status_code == 400
    assert log_in(client, email="nul\x00@example.org").status_code in (200, 400)  # a failed log-in
