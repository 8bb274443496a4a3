"""Graceful shutdown: SIGTERM ends the push streams cleanly and turns readiness off.

uvicorn, on SIGTERM (or Ctrl-C), stops accepting connections, lets each request in flight
finish (up to ``timeout_graceful_shutdown``), then runs the application's shutdown. A push
stream never finishes by itself, so uvicorn would wait out its whole grace period and then
cut it. ``Draining`` hears the same signal first: every stream wrapped by ``until_draining``
sends a last comment and ends, so the holder sees a clean end of stream and reconnects
(``retry``) to another node with its ``Last-Event-ID``, missing nothing; ``/readyz`` answers
503 from that moment so that a load balancer stops sending new requests here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import AsyncIterator, Callable
from types import FrameType
from typing import Any, TypeVar

from broker.ops.metrics import PUSH_SUBSCRIBERS

log = logging.getLogger("broker.shutdown")
T = TypeVar("T")
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Draining:
    """Whether this process is shutting down; one per application."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def draining(self) -> bool:
        return self._event.is_set()

    async def wait(self) -> None:
        await self._event.wait()

    def begin(self) -> None:
        """Start draining (from the event loop's thread)."""
        if not self._event.is_set():
            log.info("shutting down: push streams end, readiness off", extra={"event": "draining"})
            self._event.set()

    def install(self) -> None:
        """On startup: hear SIGTERM and SIGINT before the server does, then pass them on.

        uvicorn installs its handlers (``signal.signal``) before the application starts, so
        ours wraps theirs. Without the main thread (a test client) there is no signal to hear.
        """
        self._loop = asyncio.get_running_loop()
        if threading.current_thread() is not threading.main_thread():
            return
        for number in SIGNALS:
            previous = signal.getsignal(number)
            signal.signal(number, self._handler(previous))

    def _handler(self, previous: Any) -> Callable[[int, FrameType | None], None]:
        def handle(number: int, frame: FrameType | None) -> None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.call_soon_threadsafe(self.begin)
            if callable(previous):  # uvicorn's handler: stop accepting, finish what is in flight
                previous(number, frame)

        return handle


async def until_draining(stream: AsyncIterator[T], draining: Draining, farewell: T) -> AsyncIterator[T]:
    """The items of ``stream`` until shutdown begins, then ``farewell``; counts subscribers."""
    PUSH_SUBSCRIBERS.inc()
    stop = asyncio.ensure_future(draining.wait())
    following: asyncio.Future[T] | None = None
    try:
        while True:
            following = asyncio.ensure_future(anext(stream))
            done, _ = await asyncio.wait({following, stop}, return_when=asyncio.FIRST_COMPLETED)
            if following not in done:
                yield farewell
                return
            try:
                item = following.result()
            except StopAsyncIteration:
                return
            yield item
    finally:
        # Shutdown, the end of the stream, or the subscriber gone (cancelled): stop waiting
        # for the next item, then close the stream.
        PUSH_SUBSCRIBERS.dec()
        for task in (stop, following):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                    await task
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(RuntimeError):
                await aclose()
