"""Shared fixtures: databases (SQLite always, PostgreSQL when available), clocks, the core.

Tests that need PostgreSQL or a browser skip when those are missing and say so in the
summary; ``--require-all`` (used by ``.ci/run``) turns every such skip into a failure.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from core.clock import FakeClock
from core.config import Settings
from core.db import Database
from core.services import Core, build_core

POSTGRES_ENV = "ANXIN_TEST_POSTGRES_URL"
CHROMIUM = os.environ.get("ANXIN_TEST_CHROMIUM", "/usr/bin/chromium")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--require-all",
        action="store_true",
        default=False,
        help="fail, instead of skipping, tests whose PostgreSQL or browser is missing",
    )


_missing: list[str] = []


def missing_service(request: pytest.FixtureRequest, what: str) -> None:
    """Skip for want of ``what``, or fail under --require-all."""
    message = f"skipped: no {what}"
    if request.config.getoption("--require-all"):
        pytest.fail(f"{message} (--require-all is set)")
    _missing.append(what)
    pytest.skip(message)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _missing:
        counts = {w: _missing.count(w) for w in sorted(set(_missing))}
        terminalreporter.write_sep("=", "what this run did not test")
        for what, n in counts.items():
            terminalreporter.write_line(
                f"{n} test(s) skipped: no {what}. Install it (see README) or run .ci/run."
            )


def postgres_url() -> str | None:
    """The admin URL of a test PostgreSQL server, if one is configured."""
    return os.environ.get(POSTGRES_ENV) or None


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database URL: SQLite in tmp_path, or a new PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'test.sqlite3'}"
        return
    yield from fresh_postgres(request)


def fresh_postgres(request: pytest.FixtureRequest) -> Iterator[str]:
    """A new, empty PostgreSQL database for one test, dropped afterwards (or a skip)."""
    admin = postgres_url()
    if admin is None:
        missing_service(request, f"PostgreSQL (set {POSTGRES_ENV})")
        return
    name = f"anxin_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(_pg_admin(admin, f'CREATE DATABASE "{name}"'))
    base, _, _ = admin.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        asyncio.run(_pg_admin(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def settings_for(tmp_path: Path, db_url: str, **overrides: Any) -> Settings:
    """Settings for a test: its own data folder and database, no .env, and ``overrides``."""
    return Settings(data_dir=tmp_path, database_url=db_url, _env_file=None, **overrides)  # type: ignore[call-arg]


async def _pg_admin(url: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture
def chromium_path(request: pytest.FixtureRequest) -> str:
    """Debian's Chromium, or a skip (a failure under --require-all)."""
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        missing_service(request, "browser (Debian's chromium at /usr/bin/chromium)")
    return CHROMIUM


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    return settings_for(tmp_path, db_url)


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    database = Database(db_url)
    await database.create_all()
    yield database
    await database.dispose()


@pytest.fixture
async def core(settings: Settings, db: Database, clock: FakeClock) -> Core:
    return build_core(settings, db, clock)
