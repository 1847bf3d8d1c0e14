"""The database goes away for a few seconds while residents write: the webhook answers 503, the
fake Telegram retries the update as Telegram does, and once the database is back every update
is handled once and every reply and staff card is delivered once.

On PostgreSQL the bot reaches the server through a TCP proxy in this test, which drops every
connection and refuses new ones for the outage (as a restarting or failing-over server does).
On SQLite another connection holds the file's write lock for longer than ``Database.run``'s
retry budget (six tries, each waiting out the busy timeout: about 7.5 s, inside the ~10 s a
webhook caller waits; the fake Telegram gives up after 10 s, like Telegram).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
from sqlalchemy.engine import make_url

from tests.fakebotapi import FakeBotAPI
from tests.faults.conftest import (
    audit,
    counselor_on_call,
    create_schema,
    crisis_script,
    free_port,
    in_process_bot,
    message_with,
    settled,
    staff_room,
    until,
)

OUTAGE = 4.0  # seconds; longer than Database.run's retry budget on a refused connection
FIRST_RESIDENT = 5_600_000


class TcpProxy:
    """127.0.0.1:port -> target, that can drop every connection and refuse new ones."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self.server: asyncio.Server | None = None
        self.links: set[asyncio.StreamWriter] = set()
        self.accepted = 0

    async def open(self) -> None:
        self.server = await asyncio.start_server(self._link, "127.0.0.1", self.port)

    async def cut(self) -> None:
        """Stop listening and reset every open connection."""
        if self.server is not None:
            self.server.close()
            self.server = None
        for writer in list(self.links):
            transport = writer.transport
            transport.abort()
        self.links.clear()

    async def _link(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            server_r, server_w = await asyncio.open_connection(*self.target)
        except OSError:
            client_w.transport.abort()
            return
        self.links.update((client_w, server_w))

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            writer.transport.abort()
            self.links.discard(writer)

        await asyncio.gather(pipe(client_r, server_w), pipe(server_r, client_w))


async def update_statuses(api: FakeBotAPI, update_id: int) -> list[int | str]:
    hook = api.webhook
    assert hook is not None
    return [status for uid, status in hook.deliveries if uid == update_id]


async def outage(
    api: FakeBotAPI,
    tmp_path: Path,
    bot_url: str,
    url: str,
    cut: Callable[[], Awaitable[None]],
    restore: Callable[[], Awaitable[None]],
    least: float,
) -> str:
    """Residents write while the database is away (``cut`` .. ``restore``, at least ``least``
    seconds and until the webhook has answered 503); check the outcome; return a summary."""
    started = time.monotonic()
    async with in_process_bot(api, tmp_path, bot_url):
        counselor = staff_room(api)
        await counselor_on_call(api, counselor)
        # One resident has an escalation claimed before the outage; another is mid-onboarding.
        await crisis_script(api, FIRST_RESIDENT, counselor)
        second = api.user(FIRST_RESIDENT + 1, "小周", language_code="zh-hans")
        await second.send_command("/start")
        await message_with(api, second.id, "你好，我是安心")
        await settled(url)

        await cut()
        began = time.monotonic()
        risky = await second.send_text("我不想活了")  # written while the database is away
        third = asyncio.create_task(crisis_script(api, FIRST_RESIDENT + 2, counselor, patience=60))

        async def answered_503() -> bool:
            return 503 in await update_statuses(api, risky["update_id"])

        await until(answered_503, "a 503 for the update written during the outage", 60)
        await asyncio.sleep(max(0.0, least - (time.monotonic() - began)))
        await restore()
        lasted = time.monotonic() - began

        await message_with(api, second.id, "已经通知了值班的心理咨询师", timeout=30)
        await message_with(api, second.id, "你有没有想过要怎么做", timeout=30)
        await asyncio.wait_for(third, 60)
        rows = await settled(url, timeout=30)
        statuses = await update_statuses(api, risky["update_id"])
    result = audit(rows, api)
    summary = (
        f"outage {lasted:.1f}s; webhook answers for the update written in it: {statuses}; "
        f"{api.stats['webhook_errors']} webhook errors in all; {result.rows} rows, "
        f"{result.sends} sends, {result.duplicates} duplicate(s); "
        f"{time.monotonic() - started:.1f}s"
    )
    assert statuses[-1] == 200 and set(statuses[:-1]) == {503}, summary
    assert not result.problems, f"{summary}\n" + "\n".join(result.problems)
    assert result.duplicates == 0
    assert api.stats["webhook_dropped"] == 0
    return summary


async def test_postgresql_gone_for_seconds_gets_503s_then_everything_is_delivered_once(
    pg_url: str, api: FakeBotAPI, tmp_path: Path
) -> None:
    await create_schema(pg_url)
    url = make_url(pg_url)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    await proxy.open()
    through_proxy = url.set(host="127.0.0.1", port=proxy.port)
    summary = await outage(
        api,
        tmp_path,
        through_proxy.render_as_string(hide_password=False),
        pg_url,
        proxy.cut,
        proxy.open,
        OUTAGE,
    )
    print(f"\nPostgreSQL outage: {summary}")
    conn = await asyncpg.connect(pg_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        cards = await conn.fetch("SELECT status FROM escalation")
        seen = await conn.fetchval("SELECT count(*) FROM inbound_seen")
    finally:
        await conn.close()
    assert Counter(r["status"] for r in cards) == Counter({"claimed": 2, "open": 1})
    assert seen == len(api.delivered)  # every update handled once


async def test_sqlite_locked_past_the_retry_budget_gets_503s_then_everything_is_delivered_once(
    api: FakeBotAPI, tmp_path: Path
) -> None:
    path = tmp_path / "anxin.sqlite3"
    url = f"sqlite+aiosqlite:///{path}"
    await create_schema(url)
    locker = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)

    async def lock() -> None:
        await asyncio.to_thread(locker.execute, "BEGIN EXCLUSIVE")

    async def unlock() -> None:
        await asyncio.to_thread(locker.execute, "ROLLBACK")

    try:
        # Every write waits out SQLite's busy timeout, six times, before Database.run gives
        # up and the webhook answers 503.
        summary = await outage(api, tmp_path, url, url, lock, unlock, 0.0)
    finally:
        locker.close()
    print(f"\nSQLite lock: {summary}")
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        cards = Counter(s for (s,) in conn.execute("SELECT status FROM escalation"))
        [(seen,)] = conn.execute("SELECT count(*) FROM inbound_seen").fetchall()
    assert cards == Counter({"claimed": 2, "open": 1})
    assert seen == len(api.delivered)
