"""Requests generated from the broker's OpenAPI description (schemathesis), against a real
``broker serve`` process on SQLite and on PostgreSQL.

For every operation in ``/schema/openapi.json``, schemathesis generates requests that follow
the description (positive) and requests that break it (negative); about half of them carry
valid credentials and identifiers (the app's registration access token and client_id, an
operator token, a logged-in patient's session and CSRF token), so that the authenticated
code behind the 401 is reached too. Each answer must:

- not be a 5xx;
- have a documented status, media type and body (the description's ``default`` response is
  RFC 9457 problem details, or the RFC 6749 error object on the OAuth endpoints);
- as an error, be problem details whose ``status`` is the answer's status, or an RFC 6749
  error object with a non-empty ``error``.

``BROKER_ATTACK_EXAMPLES`` sets the examples per operation and generation mode (100 by
default, a few minutes for both backends; 500 for a long run). A table of the figures is
printed at the end of each backend's run.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from broker.app import _is_oauth_path
from tests.attacks.live import Live


@schemathesis.serializer("application/jwt")
def compact_jwt(context: Any, value: Any) -> bytes:
    """Access receipts are compact JWTs: the generated string is sent as it is."""
    return str(value).encode("utf-8", "surrogatepass")


EXAMPLES = int(os.environ.get("BROKER_ATTACK_EXAMPLES", "100"))
MODES = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)


def header(response: schemathesis.Response, name: str) -> str:
    values = response.headers.get(name.lower()) or [""]
    return values[0]


def problem_details(ctx: Any, response: schemathesis.Response, case: schemathesis.Case) -> None:
    """An error answer says what is wrong in the format of its endpoint (RFC 9457 / RFC 6749)."""
    if response.status_code < 400:
        return
    media_type = header(response, "content-type").split(";", 1)[0].strip()
    if response.status_code in (408, 431):
        return  # written by the HTTP server itself, before any request reaches the app
    body = response.json()
    bearer = response.status_code == 401 and header(response, "www-authenticate").startswith("Bearer")
    if _is_oauth_path(case.operation.path) or bearer:  # RFC 6750 §3 for a refused bearer token
        assert media_type == "application/json", f"an OAuth error as {media_type}"
        assert isinstance(body.get("error"), str) and body["error"], f"no RFC 6749 error: {body}"
    else:
        assert media_type == "application/problem+json", f"an error as {media_type}, not problem details"
        assert body.get("status") == response.status_code, f"status member {body.get('status')}"
        assert isinstance(body.get("title"), str) and body["title"], "problem details without a title"


CHECKS = (
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    problem_details,
)


@dataclass
class Tally:
    requests: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    failures: dict[str, str] = field(default_factory=dict)  # first failure per operation and check
    per_operation: Counter[str] = field(default_factory=Counter)
    skipped: list[str] = field(default_factory=list)
    seconds: Counter[str] = field(default_factory=Counter)


def with_credentials(case: schemathesis.Case, live: Live) -> None:
    """The credentials and identifiers a legitimate caller of this operation would hold."""
    creds = live.credentials
    path = case.operation.path
    headers = dict(case.headers or {})
    cookies = dict(case.cookies or {})
    params = case.path_parameters
    if params is not None and "client_id" in params:
        spare = path == "/register/{client_id}" and case.method.upper() == "DELETE"
        params["client_id"] = creds.spare_client_id if spare else creds.client_id
        if path.startswith("/register/"):
            token = creds.spare_registration_token if spare else creds.registration_token
            headers["Authorization"] = f"Bearer {token}"
    if path.startswith("/admin/"):
        headers["Authorization"] = f"Bearer {creds.operator_token}"
    if path.startswith("/api/me/"):
        cookies.update(dict(creds.patient_cookies.items()))
        headers["X-CSRF-Token"] = creds.patient_csrf
    case.headers, case.cookies = headers, cookies


def exercise(
    operation: Any, mode: GenerationMode, live: Live, session: requests.Session, tally: Tally
) -> None:
    name = f"{operation.method.upper()} {operation.path}"
    strategy = operation.as_strategy(generation_mode=mode)

    @hypothesis.given(case=strategy, legitimate=st.booleans())
    @hypothesis.settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    def one(case: schemathesis.Case, legitimate: bool) -> None:
        if legitimate:
            with_credentials(case, live)
        response = case.call(session=session, timeout=20)
        tally.requests += 1
        tally.per_operation[name] += 1
        tally.statuses[f"{response.status_code // 100}xx"] += 1
        try:
            case.validate_response(response, checks=CHECKS)
        except AssertionError as exc:
            key = f"{name} [{mode.value}] {str(exc).splitlines()[0][:120]}"
            tally.failures.setdefault(key, f"{exc}\n{case.as_curl_command()}")

    started = time.monotonic()
    try:
        one()
    except hypothesis.errors.Unsatisfiable:
        # Nothing in it can be made invalid (no parameters, no body, or free strings only).
        tally.skipped.append(f"{name} [{mode.value}]")
    tally.seconds[f"{name} [{mode.value}]"] += time.monotonic() - started


def test_generated_requests_get_documented_answers_and_no_server_error(
    live: Live, capsys: pytest.CaptureFixture[str]
) -> None:
    schema = schemathesis.openapi.from_url(f"{live.base_url}/schema/openapi.json")
    schema.config.update(base_url=live.base_url)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 30, "the description lost operations"
    tally = Tally()
    with requests.Session() as session:
        for operation in operations:
            for mode in MODES:
                exercise(operation, mode, live, session, tally)
    table = [
        f"schemathesis against `broker serve` on {live.backend} ({EXAMPLES} examples per operation and mode)",
        f"  operations          {len(operations)}",
        f"  requests made       {tally.requests}",
        "  answers             " + ", ".join(f"{k} {v}" for k, v in sorted(tally.statuses.items())),
        f"  only valid requests {len(tally.skipped)} (nothing in them can be made invalid)",
        f"  failures            {len(tally.failures)}",
        "  slowest operations  "
        + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in tally.seconds.most_common(3)),
    ]
    with capsys.disabled():
        print("\n" + "\n".join(table))
    assert tally.statuses["5xx"] == 0 or tally.failures
    assert not tally.failures, json.dumps(tally.failures, indent=1, ensure_ascii=False)[:20000]
    # Every operation was called, and the run is the thousands of requests it claims to be.
    assert set(tally.per_operation) == {f"{op.method.upper()} {op.path}" for op in operations}
    assert tally.requests >= len(operations) * EXAMPLES // 2
