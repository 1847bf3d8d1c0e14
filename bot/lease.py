"""Exactly one scheduler per deployment.

The scheduler wakes the sweeps (check-ins, re-pages, reminders, broadcasts) and, without a
webhook, polls Telegram for updates; two of them would do that work twice and make Telegram
refuse one poller. So the process that runs it holds a lease:

- on PostgreSQL, a session-level advisory lock on a connection of its own. Another scheduler
  process stands by, trying again every few seconds, and takes over when the holder dies (the
  lock goes with its connection);
- on SQLite, which one process serves alone, an exclusive lock on a file beside the database.
  A second process on the same file is refused at start-up with a sentence saying why.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
from pathlib import Path
from typing import IO, Any

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection

from core.db import Database

log = logging.getLogger(__name__)

#: The advisory lock's key: "anxin" in ASCII, so it is unlikely to meet another application's.
LOCK_KEY = 0x616E78696E


class LeaseHeld(RuntimeError):
    """Another process already runs the scheduler on this SQLite database."""


class SchedulerLease:
    """The right to run this deployment's scheduler, held by at most one process."""

    def __init__(self, db: Database, *, check_seconds: float = 5.0) -> None:
        self.db = db
        self.check_seconds = check_seconds
        self._conn: AsyncConnection | None = None
        self._file: IO[str] | None = None
        self.tries = 0  # attempts to take the lease, for operators' logs and the tests

    @property
    def held(self) -> bool:
        return self._conn is not None or self._file is not None

    async def try_acquire(self) -> bool:
        """Take the lease if nobody holds it; True when this process now holds it."""
        if self.held:
            return True
        self.tries += 1
        if self.db.is_sqlite:
            return self._lock_file()
        conn = await self.db.engine.connect()
        try:
            got = bool(
                (
                    await conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": LOCK_KEY})
                ).scalar_one()
            )
            await conn.commit()  # the lock is the session's, not the transaction's
        except BaseException:
            await conn.close()
            raise
        if not got:
            await conn.close()
            return False
        self._conn = conn
        return True

    async def acquire(self) -> None:
        """Wait until this process holds the lease (PostgreSQL standby)."""
        announced = False
        while True:
            try:
                if await self.try_acquire():
                    return
            except Exception as exc:  # the database is down: keep standing by
                log.warning("scheduler lease: cannot reach the database: %s", _first_line(exc))
            if not announced:
                log.warning("another process runs the scheduler; this one stands by to take over")
                announced = True
            await asyncio.sleep(self.check_seconds)

    async def lost(self) -> None:
        """Return when the lease is lost (its connection broke); never on SQLite."""
        if self._conn is None:
            if self._file is not None:  # a file lock lasts as long as this process
                await asyncio.Event().wait()
            return
        while True:
            await asyncio.sleep(self.check_seconds)
            conn = self._conn
            if conn is None:  # released meanwhile
                return
            try:
                await conn.execute(text("SELECT 1"))
                await conn.commit()
            except Exception as exc:
                log.error("scheduler lease lost with its connection: %s", _first_line(exc))
                await self._drop_connection()
                return

    async def release(self) -> None:
        """Give the lease up (at shutdown)."""
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": LOCK_KEY})
                await self._conn.commit()
            await self._drop_connection()
        if self._file is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.invalidate()
            with contextlib.suppress(Exception):
                await conn.close()

    def _lock_file(self) -> bool:
        path = lock_path(self.db.url)
        if path is None:  # an in-memory database belongs to this process alone
            self._file = open(os.devnull)  # held until release
            return True
        handle = open(path, "a+", encoding="utf-8")  # held until release
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise LeaseHeld(
                f"another Anxin process (pid {holder}) is already running on "
                f"{path.parent / path.stem}; "
                "with SQLite one process runs everything: stop it first, or use PostgreSQL "
                "for several processes."
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._file = handle
        return True


def lock_path(url: str) -> Path | None:
    """The lock file beside a SQLite database file; None for an in-memory database."""
    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file::memory:"):
        return None
    return Path(database + ".lock")


def _first_line(exc: Any) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
