"""``python -m bot run`` killed with SIGKILL mid-conversation, then restarted: nothing is lost
and nothing is sent twice.

Both the bot and the fake Bot API run as subprocesses (the fake's control API drives users and
faults); the database is a SQLite file the test reads directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.fakebotapi import ControlClient
from tests.integration.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "4242000:crash-test-token"
RESIDENT = 424_242
BOUND = 20.0  # seconds any single wait in these tests may take


async def until(
    check: Callable[[], Any],
    what: str,
    timeout: float = BOUND,  # noqa: ASYNC109
) -> Any:
    """Re-check ``check`` with short waits until it is truthy, or fail after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = check()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return result
        if loop.time() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s")
        await asyncio.sleep(0.05)


class Database:
    """Read-only look at the bot's SQLite file from outside the process."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        if not self.path.exists():
            return []
        try:
            with contextlib.closing(
                sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=1)
            ) as conn:
                return list(conn.execute(sql, args).fetchall())
        except sqlite3.OperationalError:  # not migrated yet, or busy for a moment
            return []

    def seen(self, update_id: int) -> bool:
        rows = self.query(
            "SELECT 1 FROM inbound_seen WHERE channel = 'telegram' AND key = ?", str(update_id)
        )
        return bool(rows)

    def outbox(self) -> list[tuple[int, str, int, str]]:
        rows = self.query(
            "SELECT id, status, attempts, text FROM outbox WHERE chat_id = ? ORDER BY id",
            str(RESIDENT),
        )
        return [(int(a), str(b), int(c), str(d)) for a, b, c, d in rows]


class Processes:
    """The subprocesses this test started; each is killed by its own pid at the end."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[asyncio.subprocess.Process] = []

    async def fake_api(self) -> str:
        log = (self.tmp_path / "fakebotapi.log").open("wb")
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.fakebotapi",
            "--port",
            "0",
            "--token",
            TOKEN,
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
        )
        self.started.append(proc)
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), BOUND)
        marker, _, url = line.decode().strip().partition(" ")
        assert marker == "FAKEBOTAPI_READY", line
        return url

    async def bot(self, env: dict[str, str], name: str) -> asyncio.subprocess.Process:
        log = (self.tmp_path / f"{name}.log").open("wb")
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bot",
            "run",
            cwd=self.tmp_path,  # no .env from the repository
            env=env,
            stdout=log,
            stderr=log,
        )
        self.started.append(proc)
        return proc

    async def kill(self, proc: asyncio.subprocess.Process) -> None:
        if proc.returncode is None:
            proc.kill()  # SIGKILL: no shutdown code runs
            await asyncio.wait_for(proc.wait(), BOUND)

    async def stop_all(self) -> None:
        for proc in reversed(self.started):
            if proc.returncode is None:
                proc.terminate()
                try:
                    await asyncio.wait_for(proc.wait(), 5)
                except TimeoutError:
                    await self.kill(proc)


@pytest.fixture
async def processes(tmp_path: Path) -> AsyncIterator[Processes]:
    procs = Processes(tmp_path)
    try:
        yield procs
    finally:
        await procs.stop_all()


def bot_env(tmp_path: Path, api_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANXIN_")}
    env.update(
        PYTHONPATH=str(ROOT),
        ANXIN_TELEGRAM_TOKEN=TOKEN,
        ANXIN_TELEGRAM_API_URL=api_url,
        ANXIN_DATA_DIR=str(tmp_path / "data"),
        ANXIN_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'anxin.sqlite3'}",
        ANXIN_HOST="127.0.0.1",
        ANXIN_PORT=str(free_port()),
        ANXIN_LOG_LEVEL="WARNING",
    )
    env.update(extra)
    return env


def log_tail(tmp_path: Path) -> str:
    out = []
    for name in ("bot-1.log", "bot-2.log"):
        path = tmp_path / name
        if path.exists():
            out.append(f"--- {name}\n" + path.read_text(errors="replace")[-3000:])
    return "\n".join(out)


async def welcome_texts(ctl: ControlClient) -> list[str]:
    return [m["text"] for m in await ctl.sent(RESIDENT)]


async def test_a_reply_committed_but_not_sent_is_delivered_once_after_a_crash(
    processes: Processes, tmp_path: Path
) -> None:
    api_url = await processes.fake_api()
    db = Database(tmp_path / "anxin.sqlite3")
    async with ControlClient(api_url, timeout=BOUND + 5) as ctl:
        await ctl.post("/_control/users", {"id": RESIDENT, "first_name": "小李"})
        # Telegram says "too many requests, come back in 3 s" to every send: the replies are
        # committed and waiting in the outbox when the bot dies.
        await ctl.post(
            "/_control/fail",
            {"method": "sendMessage", "status": 429, "retry_after": 3, "times": None},
        )
        first = await processes.bot(bot_env(tmp_path, api_url), "bot-1")
        update = await ctl.send_command(RESIDENT, "/start")

        def replies_waiting() -> bool:
            rows = db.outbox()
            return (
                db.seen(update["update_id"])
                and len(rows) == 2
                and all(status == "pending" for _id, status, _n, _t in rows)
                and rows[0][2] == 1  # tried once, held by retry_after
            )

        try:
            await until(replies_waiting, "the inbound committed with its replies held")
        except AssertionError:
            raise AssertionError(log_tail(tmp_path)) from None
        await processes.kill(first)
        assert await welcome_texts(ctl) == []

        await ctl.post("/_control/clear_faults")
        await processes.bot(bot_env(tmp_path, api_url), "bot-2")
        await ctl.wait_message(RESIDENT, count=2, timeout=BOUND)
        await until(
            lambda: [s for _i, s, _n, _t in db.outbox()] == ["sent", "sent"], "rows marked sent"
        )
        texts = await welcome_texts(ctl)
        assert len(texts) == 2 and "示例配置" in texts[0] and "你好，我是安心" in texts[1]
        assert len(db.query("SELECT key FROM inbound_seen")) == 1

        # The restarted bot carries on with the same conversation.
        [welcome] = [m for m in await ctl.sent(RESIDENT) if m.get("reply_markup")]
        buttons = welcome["reply_markup"]["inline_keyboard"][0]
        chinese = next(b["callback_data"] for b in buttons if b["text"] == "中文")
        await ctl.press(RESIDENT, welcome["message_id"], chinese)
        [consent] = await ctl.wait_message(RESIDENT, contains="隐私", timeout=BOUND)
        assert len(await welcome_texts(ctl)) == 3 and consent


async def test_a_row_in_flight_when_the_bot_dies_is_sent_once_after_the_stale_claim_age(
    processes: Processes, tmp_path: Path
) -> None:
    api_url = await processes.fake_api()
    db = Database(tmp_path / "anxin.sqlite3")
    async with ControlClient(api_url, timeout=BOUND + 5) as ctl:
        await ctl.post("/_control/users", {"id": RESIDENT, "first_name": "小李"})
        # The first send hangs: its row is claimed ('sending') when the bot is killed.
        await ctl.post("/_control/delay", {"method": "sendMessage", "seconds": 3600, "times": 1})
        first = await processes.bot(bot_env(tmp_path, api_url), "bot-1")
        update = await ctl.send_command(RESIDENT, "/start")

        async def in_flight() -> bool:
            statuses = [s for _i, s, _n, _t in db.outbox()]
            stats = await ctl.get("/_control/stats")
            return (
                db.seen(update["update_id"])
                and statuses == ["sending", "pending"]
                and stats.get("delayed", 0) == 1
            )

        try:
            await until(in_flight, "a reply in flight")
        except AssertionError:
            raise AssertionError(log_tail(tmp_path)) from None
        await processes.kill(first)
        assert await welcome_texts(ctl) == []
        assert [s for _i, s, _n, _t in db.outbox()] == ["sending", "pending"]

        # With the default age (60 s) the restarted worker would leave this chat waiting for
        # a minute or more; a short age shows the outcome within the test's bounds.
        await ctl.post("/_control/clear_faults")
        env = bot_env(tmp_path, api_url, ANXIN_OUTBOX_STALE_CLAIM_SECONDS="0.5")
        await processes.bot(env, "bot-2")
        await ctl.wait_message(RESIDENT, count=2, timeout=BOUND)
        await until(
            lambda: [s for _i, s, _n, _t in db.outbox()] == ["sent", "sent"], "rows marked sent"
        )
        texts = await welcome_texts(ctl)
        assert len(texts) == 2 and "示例配置" in texts[0] and "你好，我是安心" in texts[1]
        attempts = [n for _i, _s, n, _t in db.outbox()]
        assert attempts == [1, 1]  # the killed attempt never got recorded; one real send each
