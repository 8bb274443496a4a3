"""Fixtures of the SDK's tests; they live in ``sdk_support`` so that test modules can import
its helpers (the repository's own ``tests`` package owns that name)."""

from sdk_support import broker, browser, holder_api, live_broker

__all__ = ["broker", "browser", "holder_api", "live_broker"]
