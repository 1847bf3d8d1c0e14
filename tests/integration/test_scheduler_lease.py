"""Exactly one scheduler per deployment (bot/lease.py).

On PostgreSQL a second scheduler process stands by and takes over when the first stops or
loses its connection; on SQLite a second `anxin run` on the same file is refused with a
sentence saying why.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from bot.lease import LeaseHeld, SchedulerLease
from bot.runtime import Runtime
from core.clock import FakeClock
from core.db import Database, upgrade
from tests.conftest import fresh_postgres, settings_for

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


BOUND = 20.0


async def until(check: Callable[[], bool], what: str) -> None:
    """Wait (bounded) until ``check()`` holds; the lease's own loop runs meanwhile."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + BOUND
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.fixture
def pg_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A new PostgreSQL database: the standby scheduler is a PostgreSQL feature."""
    yield from fresh_postgres(request)


@pytest.fixture
async def schedulers(pg_url: str, tmp_path: Path) -> AsyncIterator[list[Runtime]]:
    """Two scheduler-role runtimes of one deployment, not yet started."""
    await asyncio.to_thread(upgrade, pg_url)
    settings = settings_for(tmp_path, pg_url)
    runtimes = [Runtime.build(settings, FakeClock()) for _ in range(2)]
    for runtime in runtimes:
        runtime.lease_check_seconds = 0.05
    yield runtimes
    for runtime in runtimes:
        await runtime.stop()


async def standby_tries(runtime: Runtime, more: int) -> None:
    """Let a standby try (and fail) to take the lease ``more`` more times."""
    lease = runtime.lease
    assert lease is not None
    target = lease.tries + more
    await until(lambda: lease.tries >= target, f"{more} more tries of the standby")


async def start_scheduler(runtime: Runtime) -> None:
    await runtime.start(serve_http=False, deliver=False, scheduler=True)


async def test_second_scheduler_stands_by_and_takes_over(schedulers: list[Runtime]) -> None:
    first, second = schedulers
    await start_scheduler(first)
    await start_scheduler(second)
    assert first.scheduler is not None and first.scheduler.running
    assert second.scheduler is None, "two schedulers would run every sweep twice"

    await standby_tries(second, 5)
    assert second.scheduler is None

    await first.stop()
    await until(lambda: second.scheduler is not None, "the standby to take over")
    assert second.scheduler is not None and second.scheduler.running
    assert {job.id for job in second.scheduler.get_jobs()} >= {"checkins_sweep", "broadcasts_sweep"}


async def test_holder_that_loses_its_connection_stops_scheduling(
    schedulers: list[Runtime], pg_url: str
) -> None:
    first, second = schedulers
    await start_scheduler(first)
    await start_scheduler(second)
    assert first.lease is not None and first.lease._conn is not None
    raw = await first.lease._conn.get_raw_connection()
    backend = raw.driver_connection.get_server_pid()  # type: ignore[union-attr]

    killer = Database(pg_url)
    try:
        async with killer.engine.connect() as conn:
            await conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": backend})
            await conn.commit()
    finally:
        await killer.dispose()

    old = first.scheduler
    # The old holder stops its scheduler; then one of the two (whichever tries first) leads.
    await until(lambda: first.scheduler is not old, "the old holder to stop its scheduler")
    await until(
        lambda: (first.scheduler is not None) + (second.scheduler is not None) == 1,
        "exactly one scheduler again",
    )
    leader = first if first.scheduler is not None else second
    assert leader.lease is not None and leader.lease.held
    await standby_tries(first if leader is second else second, 5)
    assert (first.scheduler is not None) + (second.scheduler is not None) == 1


async def test_sqlite_second_process_is_refused_with_a_sentence(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'anxin.sqlite3'}"
    db = Database(url)
    holder = SchedulerLease(db)
    try:
        assert await holder.try_acquire()
        with pytest.raises(LeaseHeld, match=f"pid {os.getpid()}"):
            await SchedulerLease(db).try_acquire()

        # The real entry point: `anxin run` on the same database file.
        env = {key: value for key, value in os.environ.items() if not key.startswith("ANXIN_")} | {
            "ANXIN_DATA_DIR": str(tmp_path),
            "ANXIN_PORT": str(free_port()),
        }
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "bot.cli", "run"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2, done.stderr
        assert "already running on" in done.stderr
        assert "use PostgreSQL for several processes" in done.stderr

        await holder.release()
        second = SchedulerLease(db)
        assert await second.try_acquire(), "the lease is free once released"
        await second.release()
    finally:
        await holder.release()
        await db.dispose()
