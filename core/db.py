"""The database: engine, sessions, one transaction per use case, and schema upgrades."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlmodel import SQLModel
from sqlmodel.ext.asyncio.session import AsyncSession

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Seconds one SQLite statement waits for another process's write lock. ``Database.run``
#: tries six times, so a locked file is given up (503 to a webhook) after about 7.5 s: inside
#: the ~10 s a webhook caller such as Telegram waits for an answer.
SQLITE_BUSY_SECONDS = 1
#: Milliseconds one SQLite statement run in the event loop's thread may block it, waiting for
#: a lock held by another process; a write transaction waits for its lock without blocking
#: (``Database._begin_writing``), up to ``SQLITE_BUSY_SECONDS`` per attempt.
SQLITE_INLINE_BUSY_MS = 20
#: Seconds a ``Database.run`` on SQLite waits in all for its turn at this process's writer
#: (behind other transactions of the same process) before it gives up as unavailable, so a
#: queue behind a file locked by another process still answers 503 in time.
SQLITE_QUEUE_SECONDS = 7.5

#: The task running a ``Database.run`` transaction on SQLite, to refuse a nested one.
_writing: contextvars.ContextVar[asyncio.Task[Any] | None] = contextvars.ContextVar(
    "anxin_sqlite_writing", default=None
)

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


class DatabaseUnavailable(RuntimeError):
    """The database could not be reached or stayed locked; the caller should answer 5xx."""


class Database:
    """An async engine and the sessions made from it.

    On SQLite, which has one writer, the transactions of ``run`` go one at a time in each
    process (an ``asyncio.Lock``) and start with ``BEGIN IMMEDIATE``, so they queue here
    instead of sleeping in SQLite's busy handler, and never fail to upgrade a read to a write;
    ``busy_timeout`` still covers another process holding the file. Sessions from ``session``
    and ``run(..., write=False)`` start with a plain (deferred) ``BEGIN`` and do not queue.
    """

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        #: SQLite calls made in the event loop's thread (a database file named in the URL).
        self.inline = False
        kwargs: dict[str, Any] = {"echo": echo}
        busy_ms = SQLITE_BUSY_SECONDS * 1000
        if self.is_sqlite:
            path = _sqlite_file(url)
            if path is not None:
                self.inline = True
                busy_ms = SQLITE_INLINE_BUSY_MS
                kwargs["async_creator"] = functools.partial(_connect_inline, path)
            else:
                kwargs["connect_args"] = {"timeout": SQLITE_BUSY_SECONDS}
        else:
            kwargs.update(pool_size=10, max_overflow=20, pool_pre_ping=True)
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        #: The engine whose transactions write: on SQLite they begin with BEGIN IMMEDIATE.
        self.writer: AsyncEngine = self.engine
        self._lock: asyncio.Lock | None = None
        self._lock_loop: asyncio.AbstractEventLoop | None = None
        if self.is_sqlite:
            # SQLAlchemy's recipe for SQLite transactions: the driver emits no BEGIN of its
            # own (isolation_level None), and SQLAlchemy's "begin" event emits ours.
            event.listen(
                self.engine.sync_engine, "connect", functools.partial(_sqlite_connect, busy_ms)
            )
            event.listen(self.engine.sync_engine, "begin", _sqlite_begin)
            self.writer = self.engine.execution_options(**{_BEGIN_OPTION: "BEGIN IMMEDIATE"})

    def _writer_lock(self) -> asyncio.Lock:
        """This process's SQLite writer lock (one per event loop, for tests that run several)."""
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock_loop is not loop:
            self._lock, self._lock_loop = asyncio.Lock(), loop
        return self._lock

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """Open a session; the caller commits (one transaction per use case)."""
        async with AsyncSession(self.engine, expire_on_commit=False) as session:
            yield session

    async def run(
        self,
        work: Callable[[AsyncSession], Awaitable[T]],
        *,
        attempts: int = 6,
        write: bool = True,
    ) -> T:
        """Run ``work`` in one transaction and commit, retrying while the database is busy.

        A briefly locked SQLite file or a dropped PostgreSQL connection is retried with
        backoff; if it stays unavailable, ``DatabaseUnavailable`` is raised and nothing of the
        work is kept.

        On SQLite, write transactions take turns in this process (see the class), so ``work``
        must not call ``run`` itself (that is refused rather than left to deadlock);
        ``write=False`` is for work that only reads, which then neither waits for nor holds
        up the writers.
        """
        serialised = self.is_sqlite and write
        if serialised and _writing.get() is asyncio.current_task():
            raise RuntimeError("Database.run called inside another Database.run transaction")
        deadline = time.monotonic() + SQLITE_QUEUE_SECONDS
        delay = 0.05
        for attempt in range(1, attempts + 1):
            try:
                if serialised:
                    return await self._run_serialised(work, deadline)
                async with self.session() as session:
                    result = await work(session)
                    await session.commit()
                    return result
            except (OperationalError, DBAPIError, OSError) as exc:
                if not _is_transient(exc) or attempt == attempts:
                    if _is_transient(exc):
                        raise DatabaseUnavailable(str(exc).splitlines()[0]) from exc
                    raise
                log.warning("database busy (attempt %d): %s", attempt, str(exc).splitlines()[0])
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
        raise AssertionError("unreachable")

    async def _run_serialised(
        self, work: Callable[[AsyncSession], Awaitable[T]], deadline: float
    ) -> T:
        lock = self._writer_lock()
        if lock.locked():
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    await lock.acquire()
            except TimeoutError:
                raise DatabaseUnavailable(
                    "database is busy: waited too long for this process's writer"
                ) from None
        else:
            await lock.acquire()
        token = _writing.set(asyncio.current_task())
        try:
            session = await self._begin_writing()
            async with session:
                result = await work(session)
                await session.commit()
                return result
        finally:
            _writing.reset(token)
            lock.release()

    async def _begin_writing(self) -> AsyncSession:
        """A session whose write transaction has begun (SQLite's write lock is ours).

        When SQLite runs in the event loop's thread, a lock held by another process is waited
        for here, in short sleeps up to ``SQLITE_BUSY_SECONDS``, as SQLite's own busy handler
        would, without blocking the loop; then "database is locked" goes to ``run``'s retries.
        """
        give_up = time.monotonic() + SQLITE_BUSY_SECONDS
        delay = 0.002
        while True:
            session = AsyncSession(self.writer, expire_on_commit=False)
            try:
                await session.connection()
                return session
            except OperationalError as exc:
                await session.close()
                if not self.inline or not _is_locked(exc) or time.monotonic() >= give_up:
                    raise
            except BaseException:
                await session.close()
                raise
            await asyncio.sleep(min(delay, max(0.0, give_up - time.monotonic())))
            delay = min(delay * 2, 0.1)

    async def ping(self) -> None:
        """Check that the database answers, raising ``DatabaseUnavailable`` if not."""
        try:
            async with self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception as exc:  # any driver error means "not reachable" to the operator
            raise DatabaseUnavailable(f"cannot reach the database: {_first_line(exc)}") from exc

    async def notify(self, channel: str, payload: str) -> None:
        """Tell other processes sharing this PostgreSQL database something (no-op on SQLite)."""
        if self.is_sqlite:
            return
        try:
            async with self.engine.connect() as conn:
                await conn.execute(text("SELECT pg_notify(:c, :p)"), {"c": channel, "p": payload})
                await conn.commit()
        except Exception:  # a lost wake-up only delays delivery until the next poll
            log.warning("could not notify %s", channel, exc_info=True)

    async def listen(self, channel: str, callback: Callable[[str], None]) -> None:
        """Call ``callback(payload)`` for every notification on ``channel`` until cancelled."""
        if self.is_sqlite:
            return
        async with self.engine.connect() as conn:
            raw = await conn.get_raw_connection()
            driver = raw.driver_connection
            assert driver is not None

            def on_notify(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
                callback(payload)

            await driver.add_listener(channel, on_notify)
            try:
                await asyncio.Event().wait()
            finally:
                await driver.remove_listener(channel, on_notify)

    async def create_all(self) -> None:
        """Create every table directly (tests); deployments use ``upgrade``."""
        import core.tables  # noqa: F401  (every table on the metadata)

        async with self.engine.begin() as conn:
            await conn.run_sync(SQLModel.metadata.create_all)

    async def dispose(self) -> None:
        """Close every pooled connection."""
        await self.engine.dispose()


def upgrade(url: str, revision: str = "head") -> None:
    """Apply Alembic migrations up to ``revision`` (blocking; call before the loop starts)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["database_url"] = url
    command.upgrade(cfg, revision)


_BEGIN_OPTION = "anxin_sqlite_begin"


def _sqlite_connect(busy_ms: int, dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
    # The driver's own BEGIN comes only before the first write; _sqlite_begin emits ours.
    if dbapi_connection.isolation_level is not None:
        dbapi_connection.isolation_level = None


def _sqlite_file(url: str) -> str | None:
    """The database file of a plain SQLite URL (no memory database, no query options)."""
    parsed = make_url(url)
    name = parsed.database
    if parsed.get_driver_name() != "aiosqlite" or parsed.query or not name:
        return None
    if name == ":memory:" or name.startswith("file:"):
        return None
    return name


class _InlineSQLite(aiosqlite.Connection):
    """aiosqlite's connection, with every call made at once in the event loop's thread.

    aiosqlite hands each call (cursor, execute, fetch, commit …) to a thread of its own and
    back, several hops per statement that cost more than the statements themselves (a turn
    is about forty of them). Anxin's statements are short, and a process's writes take turns
    anyway, so they run in the loop's thread instead; no thread is started.
    """

    async def _execute(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if not self._running or not self._connection:
            raise ValueError("Connection closed")
        return fn(*args, **kwargs)

    async def _connect(self) -> _InlineSQLite:
        if self._connection is None:
            self._connection = self._connector()
        return self

    def __await__(self) -> Generator[Any, None, _InlineSQLite]:
        return self._connect().__await__()

    def stop(self) -> asyncio.Future[Any] | None:
        self._running = False
        if self._connection is not None:
            self._connection.close()
            self._connection = None
        return None


async def _connect_inline(path: str) -> _InlineSQLite:
    connector = functools.partial(
        sqlite3.connect,
        path,
        timeout=SQLITE_INLINE_BUSY_MS / 1000,
        isolation_level=None,
        check_same_thread=False,
    )
    return await _InlineSQLite(connector, 64)


def _is_locked(exc: BaseException) -> bool:
    text_ = str(exc).lower()
    return "database is locked" in text_ or "database is busy" in text_


def _sqlite_begin(conn: Any) -> None:
    conn.exec_driver_sql(conn.get_execution_options().get(_BEGIN_OPTION, "BEGIN"))


def _is_transient(exc: BaseException) -> bool:
    text_ = str(exc).lower()
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    # asyncpg raises the socket's own error when the server refuses or drops a new
    # connection ("[Errno 111] Connect call failed"), not a DBAPI error.
    if isinstance(exc, ConnectionError | TimeoutError):
        return True
    return any(
        marker in text_
        for marker in (
            "database is locked",
            "database is busy",
            "connection refused",
            "connect call failed",
            "connection was closed",
            "connection is closed",
            "could not connect",
            "cannot connect",
            "server closed the connection",
            "terminating connection",
            "the database system is starting up",
            "the database system is shutting down",
            "deadlock detected",
            "could not serialize",
        )
    )


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
