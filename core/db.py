"""The database: engine, sessions, one transaction per use case, and schema upgrades."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import event, text
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlmodel import SQLModel
from sqlmodel.ext.asyncio.session import AsyncSession

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Seconds one SQLite statement waits for another connection's write lock. ``Database.run``
#: tries six times, so a locked file is given up (503 to a webhook) after about 7.5 s: inside
#: the ~10 s a webhook caller such as Telegram waits for an answer.
SQLITE_BUSY_SECONDS = 1

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


class DatabaseUnavailable(RuntimeError):
    """The database could not be reached or stayed locked; the caller should answer 5xx."""


class Database:
    """An async engine and the sessions made from it."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        kwargs: dict[str, Any] = {"echo": echo}
        if self.is_sqlite:
            kwargs["connect_args"] = {"timeout": SQLITE_BUSY_SECONDS}
        else:
            kwargs.update(pool_size=10, max_overflow=20, pool_pre_ping=True)
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """Open a session; the caller commits (one transaction per use case)."""
        async with AsyncSession(self.engine, expire_on_commit=False) as session:
            yield session

    async def run(self, work: Callable[[AsyncSession], Awaitable[T]], *, attempts: int = 6) -> T:
        """Run ``work`` in one transaction and commit, retrying while the database is busy.

        A briefly locked SQLite file or a dropped PostgreSQL connection is retried with
        backoff; if it stays unavailable, ``DatabaseUnavailable`` is raised and nothing of the
        work is kept.
        """
        delay = 0.05
        for attempt in range(1, attempts + 1):
            try:
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


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_SECONDS * 1000}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


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
