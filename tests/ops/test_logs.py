"""The JSON log line: its fields, the request id, and secrets masked as a last guard."""

from __future__ import annotations

import json
import logging
import sys

from broker.ops.logs import REQUEST_ID, JsonFormatter, mask_secrets, request_id_from


def _line(message: str, *args: object, exc: Exception | None = None, **extra: object) -> dict[str, object]:
    record = logging.LogRecord("broker.test", logging.WARNING, __file__, 1, message, args, None)
    if exc is not None:
        try:
            raise exc
        except type(exc):
            record.exc_info = sys.exc_info()
    record.__dict__.update(extra)
    parsed: dict[str, object] = json.loads(JsonFormatter().format(record))
    return parsed


def test_a_line_is_one_json_object_with_the_request_id() -> None:
    token = REQUEST_ID.set("req-0123456789")
    try:
        line = _line("refused %s", "x", route="/token", status=400, password="never")
    finally:
        REQUEST_ID.reset(token)
    assert line["message"] == "refused x"
    assert line["request_id"] == "req-0123456789"
    assert line["level"] == "warning" and line["logger"] == "broker.test"
    assert line["route"] == "/token" and line["status"] == 400
    assert "password" not in line  # only the named fields are written
    assert "request_id" not in _line("outside any request")


def test_secrets_are_masked_in_messages_and_exceptions() -> None:
    jwt = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJwXzEyMyJ9.c2lnbmF0dXJl"
    refresh = "hcb_rt_" + "A" * 43
    line = _line("token %s and %s", jwt, refresh, exc=ValueError(f"bad {refresh}"))
    text = json.dumps(line)
    assert jwt not in text and refresh not in text
    assert line["message"] == "token [masked] and [masked]"
    assert "ValueError: bad [masked]" in str(line["exception"])
    assert mask_secrets("consent c_123 revoked") == "consent c_123 revoked"  # ids stay readable


def test_request_ids_are_kept_only_when_sane() -> None:
    assert request_id_from("0f1e2d3c4b5a69788796a5b4c3d2e1f0") == "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
    assert request_id_from("trace:abc-123_x.y") == "trace:abc-123_x.y"
    for bad in (None, "", "short", "a" * 200, "new\nline-injected", '{"json":1}', "espace inclus"):
        made = request_id_from(bad)
        assert made != bad and len(made) == 32
    assert request_id_from(None) != request_id_from(None)
