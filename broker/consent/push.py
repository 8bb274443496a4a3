"""Waking the push streams of every broker node when a consent event is committed.

The revocation stream (``events.py``) reads the ``consent_events`` table; what this module
adds is *when* to read it. On PostgreSQL every node runs one listening connection per
process (``LISTEN``), and every transaction that inserts a consent event sends a
notification (``pg_notify``, delivered at commit, never for a rolled-back transaction), so a
withdrawal made on one node wakes the streams of all nodes and all ``--workers`` at once.
On SQLite (one node) a commit wakes the streams of its own process, and the streams also poll
the table (other ``--workers`` of the node, other processes such as ``broker charter apply``).

NOTIFY channels are database-wide, not schema-wide: several brokers (or test runs) sharing
one database in different schemas would hear each other. The channel is therefore derived
from the schema the connection writes into (``current_schema()``, i.e. the search_path), on
both sides, by the database itself: ``broker_events_<md5 of the schema name>``.

The listening connection is a plain psycopg 3 connection in a daemon thread. When it drops
(PostgreSQL restarted, network cut) the thread reconnects with a backoff; meanwhile, and
once more after reconnecting, the streams fall back to polling and read everything after
their position, so nothing is missed in the gap — the notification is only a wake-up, the
table is the truth.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from typing import Any

from sqlalchemy import Engine, event, text
from sqlalchemy.engine import make_url

from broker.consent.models import ConsentEvent

log = logging.getLogger("broker.push")

CHANNEL_SQL = "'broker_events_' || md5(current_schema())"
_NOTIFY = text(f"SELECT pg_notify({CHANNEL_SQL}, '')")
# How often a stream reads the table without a wake-up: often when nothing would wake it
# (SQLite, or the listening connection is down), rarely as a safety net otherwise.
FALLBACK_POLL_SECONDS = 0.25
SAFETY_POLL_SECONDS = 5.0
MAX_BACKOFF_SECONDS = 5.0


# The hubs of this process: a commit on SQLite wakes them directly (no NOTIFY there).
_HUBS: weakref.WeakSet[PushHub] = weakref.WeakSet()
_PENDING = "consent_event_pending"


@event.listens_for(ConsentEvent, "after_insert")
def _announce(_mapper: Any, connection: Any, _target: ConsentEvent) -> None:
    """Queue a notification in the inserting transaction (PostgreSQL folds duplicates); on
    SQLite, remember to wake this process's streams at commit."""
    if connection.dialect.name == "postgresql":
        connection.execute(_NOTIFY)
    else:
        connection.info[_PENDING] = True


@event.listens_for(Engine, "commit")
def _committed(connection: Any) -> None:
    if connection.info.pop(_PENDING, False):
        for hub in list(_HUBS):
            hub.wake_from_any_thread()


@event.listens_for(Engine, "rollback")
def _rolled_back(connection: Any) -> None:
    # A connection the database dropped (a restart) is being discarded with its ``info``;
    # touching it now would raise instead of letting the rollback finish (a 500, not a 503).
    if connection.dialect.name == "postgresql" or connection.invalidated:
        return
    connection.info.pop(_PENDING, None)


def libpq_conninfo(database_url: str) -> str:
    """The SQLAlchemy URL as a libpq URI (the search_path option included)."""
    return make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)


class PushHub:
    """One per process: wakes this process's push streams when consent events are committed.

    ``subscribe()`` gives a stream an :class:`asyncio.Event` that is set at every wake-up;
    ``poll_interval`` tells the stream how long it may wait without one.
    """

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.postgresql = make_url(database_url).get_backend_name() == "postgresql"
        self.channel: str | None = None
        self.listening = threading.Event()
        self.reconnections = 0
        self._subscribers: set[asyncio.Event] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.closed = False

    # -- life cycle (the app's on_startup / on_shutdown) ---------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        _HUBS.add(self)
        if self.postgresql and self._thread is None:
            self._thread = threading.Thread(target=self._listen, name="broker-push-listen", daemon=True)
            self._thread.start()

    async def stop(self) -> None:
        """Close every stream of this process (they end cleanly) and stop listening."""
        self.closed = True
        _HUBS.discard(self)
        self._stop.set()
        self._wake_all()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 3)
            self._thread = None

    # -- the streams' side ---------------------------------------------------------------

    def subscribe(self) -> asyncio.Event:
        wake = asyncio.Event()
        self._subscribers.add(wake)
        return wake

    def unsubscribe(self, wake: asyncio.Event) -> None:
        self._subscribers.discard(wake)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    @property
    def poll_interval(self) -> float:
        return SAFETY_POLL_SECONDS if self.listening.is_set() else FALLBACK_POLL_SECONDS

    def _wake_all(self) -> None:
        for wake in list(self._subscribers):
            wake.set()

    def wake_from_any_thread(self) -> None:
        """Wake this process's streams (a SQLite commit in this process)."""
        self._wake_from_thread()

    def _wake_from_thread(self) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._wake_all)
            except RuntimeError:  # the loop closed meanwhile
                pass

    # -- the listening connection --------------------------------------------------------

    def _listen(self) -> None:
        import psycopg
        from psycopg import sql

        conninfo = libpq_conninfo(self.database_url)
        backoff = 0.1
        while not self._stop.is_set():
            try:
                with psycopg.connect(
                    conninfo,
                    autocommit=True,
                    connect_timeout=5,
                    keepalives=1,
                    keepalives_idle=5,
                    keepalives_interval=2,
                    keepalives_count=3,
                ) as conn:
                    row = conn.execute(f"SELECT {CHANNEL_SQL}").fetchone()
                    assert row is not None
                    self.channel = str(row[0])
                    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
                    self.listening.set()
                    backoff = 0.1
                    # Catch-up: whatever was committed while no one listened is read now.
                    self._wake_from_thread()
                    while not self._stop.is_set():
                        # Returns after a second without a notification, to see _stop.
                        for _ in conn.notifies(timeout=1.0):
                            self._wake_from_thread()
            except (psycopg.Error, OSError) as exc:  # the connection is gone
                if self._stop.is_set():
                    break
                was_listening = self.listening.is_set()
                self.listening.clear()
                self._wake_from_thread()  # the streams poll until the connection is back
                if was_listening:
                    self.reconnections += 1
                    log.warning("push: the listening connection dropped (%s); reconnecting", exc)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
        self.listening.clear()
