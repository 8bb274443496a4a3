"""Database plumbing: engine, sessions and the declarative base.

The broker uses synchronous SQLAlchemy sessions: authlib's server side is synchronous, and
Litestar runs such handlers in worker threads (``sync_to_thread=True``). SQLite is the
embedded default; PostgreSQL is the production system of record.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import DateTime, Engine, MetaData, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

# Constraint names come from one convention so that migrations are stable on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


class WriterLock:
    """One writer at a time on a SQLite file, waited for in the kernel, not by polling.

    SQLite lets one connection write at once; a connection that finds the write lock taken
    sleeps in its busy handler (1, 2, 5, 10 … ms) and tries again, so under concurrent writes
    most of the time goes to sleeping (the refresh grant's p99 was 400–800 ms that way). The
    broker's connections take this lock instead before their first write and release it at
    commit or rollback: a thread lock between the threads of one process, and ``flock`` on a
    file beside the database between processes; a waiter wakes as soon as the writer is done.
    The lock is re-entrant per thread, so a unit of work that opens a second connection keeps
    SQLite's own behaviour (the busy timeout) instead of waiting for itself.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._thread_lock = threading.RLock()
        self._depth = 0
        self._fd: int | None = None
        self._pid = 0

    def acquire(self) -> None:
        self._thread_lock.acquire()
        self._depth += 1
        if self._depth == 1:
            if self._fd is None or os.getpid() != self._pid:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
                self._pid = os.getpid()
            fcntl.flock(self._fd, fcntl.LOCK_EX)

    def release(self) -> None:
        self._depth -= 1
        if self._depth == 0 and self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._thread_lock.release()


_READ_ONLY = ("SELECT", "PRAGMA", "WITH")  # WITH … SELECT; a WITH … INSERT takes the lock late


def _serialize_sqlite_writers(engine: Engine, lock: WriterLock) -> None:
    @event.listens_for(engine, "before_cursor_execute")
    def _before_write(conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "writer_lock" not in conn.info and not statement.lstrip()[:6].upper().startswith(_READ_ONLY):
            lock.acquire()
            conn.info["writer_lock"] = True

    def _release(conn: Any) -> None:
        if conn.info.pop("writer_lock", None):
            lock.release()

    event.listen(engine, "commit", _release)
    event.listen(engine, "rollback", _release)

    @event.listens_for(engine.pool, "checkin")
    def _checked_in(_dbapi_connection: Any, record: Any) -> None:
        # A safety net: a connection never goes back to the pool holding the lock.
        if record is not None and record.info.pop("writer_lock", None):
            lock.release()


def make_engine(database_url: str, **kwargs: Any) -> Engine:
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        database = url.database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **kwargs)
        if database and database != ":memory:":
            _serialize_sqlite_writers(engine, WriterLock(Path(database + ".write-lock")))

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(url, **kwargs)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


class KeepChanges(Exception):
    """Mixed into an error whose unit of work must still commit: a refusal that revokes
    something (a replayed code or refresh token) must not roll its revocation back."""


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commits once at the end, rolls back on any error but KeepChanges."""
    with factory() as session:
        try:
            yield session
        except KeepChanges:
            session.commit()
            raise
        except BaseException:
            session.rollback()
            raise
        session.commit()


# Seconds a client is asked to wait (``Retry-After``) while the database is out of reach.
DATABASE_RETRY_AFTER = 1


def database_unreachable(exc: DBAPIError) -> bool:
    """True when ``exc`` says the database is out of reach (restarting, fail-over, network):
    the unit of work rolled back and may be tried again. Any other database error is a bug."""
    return bool(exc.connection_invalidated) or isinstance(exc, OperationalError | InterfaceError)
