"""``/healthz``, ``/readyz`` and ``/metrics`` on both backends."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from litestar.testing import TestClient
from prometheus_client.parser import text_string_to_metric_families

from broker.app import create_app
from broker.keys import KeyStore
from tests.factories import app_registration


def test_readyz_checks_database_and_keys(client: Any, key_dir: Path) -> None:
    answer = client.get("/readyz")
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"status": "ready"}

    # keys gone bad: a keyring naming no active key
    keyring = next(key_dir.glob("*.json"))
    saved = keyring.read_text()
    data = json.loads(saved)
    for key in data["keys"]:
        key["status"] = "retiring"
    keyring.write_text(json.dumps(data))
    answer = client.get("/readyz")
    assert answer.status_code == 503
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert answer.json()["detail"] == "no signing key is loaded"
    keyring.write_text(saved)
    assert client.get("/readyz").status_code == 200


def test_healthz_answers_and_readyz_is_503_without_the_database(settings: Any) -> None:
    from dataclasses import replace

    broken = replace(settings, database_url="postgresql+psycopg://nobody@127.0.0.1:9/none?connect_timeout=1")
    with TestClient(app=create_app(broken)) as client:
        answer = client.get("/readyz")
        assert answer.status_code == 503
        body = answer.json()
        assert body["status"] == 503 and body["detail"] == "the database does not answer"
        health = client.get("/healthz")
        assert health.status_code == 200 and health.json() == {"status": "ok"}


def test_readyz_is_503_while_draining(client: Any) -> None:
    client.app.state.draining.begin()
    answer = client.get("/readyz")
    assert answer.status_code == 503
    assert answer.json()["detail"] == "this node is shutting down"


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def _value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_requests_and_verdicts(client: Any) -> None:
    before = _samples(client.get("/metrics").text)
    assert client.get("/jwks.json").status_code == 200
    assert client.get("/no/such/page").status_code == 404
    registered = client.post("/register", json=app_registration())
    assert registered.status_code == 201, registered.text
    answer = client.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    after = _samples(answer.text)

    def grew(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    assert grew("broker_http_requests_total", method="GET", route="/jwks.json", status="200") == 1
    # a path no route matched is counted under one label, never under the path itself
    assert grew("broker_http_requests_total", method="GET", route="unmatched", status="404") == 1
    assert not any("/no/such/page" in str(key) for key in after)
    assert grew("broker_http_request_duration_seconds_count", method="POST", route="/register") == 1
    assert grew("broker_verdicts_total", status="approved") == 1
    assert grew("broker_audit_appends_total", tag="app:registration:created") == 1
    assert ("broker_push_subscribers", ()) in after


def test_metrics_are_not_public_in_production(settings: Any) -> None:
    from dataclasses import replace

    KeyStore(settings.key_dir).create()  # production mode creates no key by itself
    production = replace(settings, dev_mode=False)
    with TestClient(app=create_app(production)) as client:
        assert client.get("/metrics").status_code == 404
    token = "m" * 40
    protected = replace(settings, dev_mode=False, metrics_token=token)
    with TestClient(app=create_app(protected)) as client:
        refused = client.get("/metrics")
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"].startswith("Bearer")
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert client.get("/metrics", headers={"Authorization": "Bearer " + "x" * 40}).status_code == 401
        answer = client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 200
        assert "broker_http_requests_total" in answer.text
