"""Running the broker in production: health, metrics, logs, limits and shutdown.

- ``health``: ``/healthz`` (the process answers), ``/readyz`` (database reachable, signing
  key loaded, not shutting down) and ``/metrics`` (Prometheus text format).
- ``metrics``: the Prometheus metrics and how several worker processes share them.
- ``logs``: one JSON object per line, with the request id; nothing secret in it.
- ``observe``: the outermost ASGI layer: request id, one log line and metrics per request.
- ``limits``: requests per minute per address, per app and per patient on the log-in,
  sign-up, registration, authorization and token endpoints (429 with ``Retry-After``).
- ``shutdown``: on SIGTERM, readiness turns 503 and the push streams end cleanly while
  uvicorn lets in-flight requests finish.

These modules import no domain package; ``app.py`` wires them in.
"""
