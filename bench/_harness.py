"""Shared parts of the benchmarks: databases, seeding, a fast fake Bot API, bot processes.

Everything listens on 127.0.0.1. The bot under test (Anxin, or a bare aiogram echo bot) runs
in its own process (``python bench/_harness.py serve anxin|echo CONFIG_JSON``), so that it has
a core of its own; the load generator and the fake Bot API share the benchmark's process.

Times are ``time.monotonic()`` (CLOCK_MONOTONIC on Linux, the same clock in every process).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import resource
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.fakebotapi import FakeBotAPI  # noqa: E402

PG_ADMIN = os.environ.get(
    "ANXIN_BENCH_POSTGRES_URL", "postgresql+asyncpg://anxin:anxin@127.0.0.1:5432/anxin"
)
TOKEN = "4242424242:bench-token_0123456789abcdefghij"
SECRET = "bench-webhook-secret_0123456789"
STAFF_CHAT = -1009000000001
FIRST_USER = 7_000_000_000
SITE = "example"


# Machine and figures -------------------------------------------------------------------------


def machine() -> str:
    """One line: CPU model, cores, RAM, Python, SQLite."""
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{model}; {os.cpu_count()} cores; {ram:.0f} GiB RAM; Python {platform.python_version()};"
        f" SQLite {sqlite3.sqlite_version}"
    )


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile (``fraction`` in 0..1) of ``values``."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-fraction * len(ordered) // 1))))
    return ordered[rank - 1]


def latency_line(values: list[float]) -> str:
    """p50/p95/p99/max in milliseconds."""
    return (
        f"p50 {percentile(values, 0.50) * 1000:7.1f} ms  p95 {percentile(values, 0.95) * 1000:7.1f}"
        f" ms  p99 {percentile(values, 0.99) * 1000:7.1f} ms  max {max(values) * 1000:7.1f} ms"
    )


def cpu_seconds() -> float:
    """CPU time (user + system) of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# Databases -----------------------------------------------------------------------------------


async def _pg_admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def database(kind: str, workdir: Path) -> AsyncIterator[str]:
    """A fresh, empty database URL (SQLite file in ``workdir`` or a new PostgreSQL database);
    the PostgreSQL database is dropped afterwards."""
    if kind == "sqlite":
        path = workdir / f"bench-{uuid.uuid4().hex[:8]}.sqlite3"
        try:
            yield f"sqlite+aiosqlite:///{path}"
        finally:
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(OSError):
                    Path(f"{path}{suffix}").unlink()  # noqa: ASYNC240
        return
    if kind != "postgresql":
        raise ValueError(kind)
    name = f"anxin_bench_{uuid.uuid4().hex[:10]}"
    await _pg_admin(f'CREATE DATABASE "{name}"')
    base, _, _ = PG_ADMIN.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        await _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def person_row(user_id: int, index: int, now: Any, **extra: Any) -> dict[str, Any]:
    """An onboarded, consented resident at the example site, in the main menu."""
    row = {
        "channel": "telegram",
        "external_id": str(user_id),
        "chat_id": str(user_id),
        "case_code": f"R-Z{index:07d}",
        "language": "zh_Hans",
        "language_confirmed": True,
        "site_code": SITE,
        "relation": "resident",
        "age_band": "18_39",
        "consent_version": 1,
        "consent_at": now,
        "state": "menu",
        "state_data": "{}",
        "state_seq": 1,
        "paused": False,
        "created_at": now,
        "last_seen_at": now,
    }
    row.update(extra)
    return row


async def seed(url: str, rows: Iterable[dict[str, Any]], *, chunk: int = 5000) -> int:
    """Create the schema and bulk-insert ``rows`` into ``person``; return how many."""
    from sqlalchemy import insert

    from core.db import Database
    from core.models import Person

    db = Database(url)
    await db.create_all()
    batch: list[dict[str, Any]] = []
    total = 0

    async def flush(rows_: list[dict[str, Any]]) -> None:
        async def work(session: Any) -> None:
            await session.execute(insert(Person), rows_)

        await db.run(work)

    for row in rows:
        batch.append(row)
        if len(batch) >= chunk:
            await flush(batch)
            total += len(batch)
            batch = []
    if batch:
        await flush(batch)
        total += len(batch)
    await db.dispose()
    return total


# The fake Bot API, made cheap to observe ------------------------------------------------------


@dataclass
class Received:
    """One message that reached the fake Bot API."""

    at: float
    chat_id: int
    text: str
    markup: Any


class BenchAPI(FakeBotAPI):
    """The project's fake Bot API, recording sends per chat and waking waiters per chat.

    ``FakeBotAPI.sent`` keeps a deep copy of every message and its waiters re-scan it on every
    change; at thousands of messages a second that would measure the fake, not the bot.
    """

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("strict_chats", False)
        kwargs.setdefault("clock", time.monotonic)
        super().__init__(TOKEN, **kwargs)
        self.by_chat: dict[int, list[Received]] = defaultdict(list)
        self.total = 0
        self._waiters: dict[int, list[tuple[int, asyncio.Future[None]]]] = defaultdict(list)
        self._matchers: dict[int, list[tuple[Any, asyncio.Future[Received]]]] = defaultdict(list)

    def _record(  # type: ignore[override]
        self,
        method: str,
        chat_id: int,
        message: dict[str, Any],
        params: dict[str, Any],
        raw: str | None,
        plain: str | None,
        markup: Any,
        upload: Any = None,
    ) -> None:
        got = self.by_chat[chat_id]
        got.append(Received(time.monotonic(), chat_id, raw or "", markup))
        self.total += 1
        matchers = self._matchers.get(chat_id)
        if matchers:
            received = got[-1]
            for predicate, future in list(matchers):
                if not future.done() and predicate(received):
                    future.set_result(received)
                    matchers.remove((predicate, future))
        waiters = self._waiters.get(chat_id)
        if waiters:
            still = []
            for count, future in waiters:
                if len(got) >= count:
                    if not future.done():
                        future.set_result(None)
                else:
                    still.append((count, future))
            self._waiters[chat_id] = still
        # Calls are kept by the fake for assertions; a benchmark never reads them.
        if len(self.calls) > 1000:
            del self.calls[:]

    async def wait_match(
        self,
        chat_id: int,
        predicate: Any,
        since: float,
        timeout: float,  # noqa: ASYNC109
    ) -> Received:
        """The first message to ``chat_id`` that arrived at or after ``since`` and matches."""
        for received in self.by_chat[chat_id]:
            if received.at >= since and predicate(received):
                return received
        future: asyncio.Future[Received] = asyncio.get_running_loop().create_future()
        self._matchers[chat_id].append((predicate, future))
        return await asyncio.wait_for(future, timeout)

    async def wait_count(self, chat_id: int, count: int, timeout: float) -> None:  # noqa: ASYNC109
        """Wait until ``count`` messages in all reached ``chat_id``."""
        if len(self.by_chat[chat_id]) >= count:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters[chat_id].append((count, future))
        await asyncio.wait_for(future, timeout)


# Telegram updates ----------------------------------------------------------------------------


class Updates:
    """Builds Telegram updates from residents (unique update ids)."""

    def __init__(self, start: int = 900_000_001) -> None:
        self.next_id = start
        self.message_ids: dict[int, int] = defaultdict(int)

    def _user(self, user_id: int) -> dict[str, Any]:
        return {"id": user_id, "is_bot": False, "first_name": "居民", "language_code": "zh-hans"}

    def text(self, user_id: int, text: str) -> dict[str, Any]:
        self.next_id += 1
        self.message_ids[user_id] += 1
        message: dict[str, Any] = {
            "message_id": self.message_ids[user_id],
            "date": int(time.time()),
            "chat": {"id": user_id, "type": "private", "first_name": "居民"},
            "from": self._user(user_id),
            "text": text,
        }
        if text.startswith("/"):
            head = text.split(" ", 1)[0]
            message["entities"] = [{"type": "bot_command", "offset": 0, "length": len(head)}]
        return {"update_id": self.next_id, "message": message}

    def press(self, user_id: int, data: str, message_id: int = 1) -> dict[str, Any]:
        self.next_id += 1
        return {
            "update_id": self.next_id,
            "callback_query": {
                "id": f"q{self.next_id}",
                "from": self._user(user_id),
                "chat_instance": f"ci{user_id}",
                "data": data,
                "message": {
                    "message_id": message_id,
                    "date": int(time.time()),
                    "chat": {"id": user_id, "type": "private", "first_name": "居民"},
                    "from": {"id": 4242424242, "is_bot": True, "first_name": "安心"},
                    "text": "menu",
                },
            },
        }


def button_data(markup: Any, index: int) -> str | None:
    """The callback data of the ``index``-th button (flattened) of a recorded inline keyboard."""
    if not isinstance(markup, dict):
        return None
    flat = [b for row in markup.get("inline_keyboard", []) for b in row]
    if not flat:
        return None
    return str(flat[index % len(flat)].get("callback_data"))


# The bot under test, in its own process -------------------------------------------------------


@dataclass
class BotProcess:
    """A bot running in a child process; ``webhook`` is where updates go."""

    kind: str
    process: subprocess.Popen[str]
    port: int
    report: dict[str, Any] = field(default_factory=dict)

    def cpu(self) -> float:
        """CPU seconds (user + system) the bot process has used so far."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    @property
    def webhook(self) -> str:
        return f"http://127.0.0.1:{self.port}/telegram/webhook"

    def stop(self, timeout: float = 30.0) -> dict[str, Any]:
        """SIGTERM, wait, and return the JSON the child printed last (its CPU time etc.)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            out, _ = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            out, _ = self.process.communicate()
        for line in reversed((out or "").splitlines()):
            if line.startswith("BENCH_REPORT "):
                self.report = json.loads(line.removeprefix("BENCH_REPORT "))
                break
        return self.report


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the benchmark dies, so no bot outlives it (Linux)."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


async def start_bot(kind: str, config: dict[str, Any], timeout: float = 60.0) -> BotProcess:  # noqa: ASYNC109
    """Start ``python bench/_harness.py serve KIND CONFIG`` and wait for its READY line."""
    port = free_port()
    config = {**config, "port": port}
    process = subprocess.Popen(  # noqa: ASYNC220
        [sys.executable, str(Path(__file__)), "serve", kind, json.dumps(config)],
        stdout=subprocess.PIPE,
        stderr=None,
        text=True,
        cwd=str(ROOT),
        preexec_fn=_die_with_parent,
    )
    assert process.stdout is not None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        line = await asyncio.wait_for(
            loop.run_in_executor(None, process.stdout.readline), max(0.1, deadline - loop.time())
        )
        if not line:
            raise RuntimeError(f"{kind} bot exited before it was ready (code {process.poll()})")
        if line.startswith("READY"):
            profile = os.environ.get("ANXIN_BENCH_PYSPY")
            if profile and kind == "anxin":
                # py-spy samples the bot until it exits (folded stacks, for flame graphs).
                subprocess.Popen(  # noqa: ASYNC220
                    [
                        str(Path(sys.executable).parent / "py-spy"),
                        "record",
                        "-p",
                        str(process.pid),
                        "-o",
                        profile,
                        "-f",
                        "raw",
                        "-r",
                        "200",
                        "--nonblocking",
                        "--gil",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            return BotProcess(kind, process, port)


# Child side -----------------------------------------------------------------------------------


_gc_time = [0.0, 0.0]


def _time_gc(phase: str, _info: dict[str, Any]) -> None:
    if phase == "start":
        _gc_time[1] = time.perf_counter()
    else:
        _gc_time[0] += time.perf_counter() - _gc_time[1]


async def _serve_anxin(config: dict[str, Any]) -> None:
    import gc

    from bot.runtime import Runtime
    from core.config import Settings
    from core.outbox import RateLimits

    gc.callbacks.append(_time_gc)
    port = config["port"]
    settings = Settings(
        data_dir=Path(config.get("data_dir", "/tmp")),
        database_url=config["database_url"],
        telegram_token=TOKEN,
        telegram_api_url=config["api_url"],
        public_url=f"http://127.0.0.1:{port}",
        webhook_secret=SECRET,
        staff_chat_id=str(config.get("staff_chat_id", "")),
        host="127.0.0.1",
        port=port,
        log_level="WARNING",
        quiet_hours=config.get("quiet_hours", ""),
        repage_minutes=config.get("repage_minutes", 2.0),
        supervisor_minutes=config.get("supervisor_minutes", 5.0),
        _env_file=None,
    )
    limits = config.get("limits")
    runtime = Runtime.build(
        settings,
        telegram_limits=RateLimits(**limits) if limits else RateLimits(),
    )
    await runtime.db.create_all()
    await runtime.start(
        serve_http=True,
        scheduler=bool(config.get("scheduler", False)),
        deliver=True,
        telegram_updates=False,
    )
    server = runtime.server
    assert server is not None
    for _ in range(500):
        if server.started:
            break
        await asyncio.sleep(0.02)
    await _until_terminated()
    report = {"cpu_seconds": cpu_seconds(), "gc_seconds": _gc_time[0]}
    await runtime.stop()
    print("BENCH_REPORT " + json.dumps(report), flush=True)


async def _serve_echo(config: dict[str, Any]) -> None:
    """A bare aiogram 3 echo bot over a webhook (aiogram's own aiohttp handler)."""
    from aiogram import Bot, Dispatcher
    from aiogram.client.session.aiohttp import AiohttpSession
    from aiogram.client.telegram import TelegramAPIServer
    from aiogram.types import CallbackQuery, Message
    from aiogram.webhook.aiohttp_server import SimpleRequestHandler
    from aiohttp import web

    bot = Bot(TOKEN, session=AiohttpSession(api=TelegramAPIServer.from_base(config["api_url"])))
    dispatcher = Dispatcher()

    @dispatcher.message()
    async def echo(message: Message) -> None:
        await message.answer(message.text or "…")

    @dispatcher.callback_query()
    async def pressed(query: CallbackQuery) -> None:
        await query.answer()
        await bot.send_message(query.from_user.id, query.data or "…")

    app = web.Application()
    SimpleRequestHandler(dispatcher, bot, secret_token=SECRET).register(
        app, path="/telegram/webhook"
    )
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", config["port"]).start()
    print("READY", flush=True)
    await _until_terminated()
    report = {"cpu_seconds": cpu_seconds()}
    await runner.cleanup()
    await bot.session.close()
    print("BENCH_REPORT " + json.dumps(report), flush=True)


async def _until_terminated() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if "READY" not in _printed:
        print("READY", flush=True)
        _printed.add("READY")
    await stop.wait()


_printed: set[str] = set()


_PINNED: list[Any] = []


def pin_generics() -> None:
    """Keep aiogram's parametrized ``Response[...]`` models alive (an experiment, see README).

    aiogram builds ``Response[method.__returning__]`` on every call; pydantic caches the class
    only weakly, so after each cyclic garbage collection the class is built again (tens of ms).
    """
    from aiogram.methods.base import Response
    from aiogram.types import Message

    _PINNED.extend([Response[Message], Response[bool]])


def serialize_sqlite_writes() -> None:
    """Experiment: one ``Database.run`` transaction at a time per process on SQLite.

    SQLite has one writer; concurrent write transactions otherwise wait in SQLite's busy
    handler, which sleeps (1, 2, 5 … 100 ms) instead of queueing.
    """
    from core.db import Database

    original = Database.run
    locks: dict[int, asyncio.Lock] = {}

    async def run(self: Database, work: Any, *, attempts: int = 6) -> Any:
        if not self.is_sqlite:
            return await original(self, work, attempts=attempts)
        lock = locks.setdefault(id(self), asyncio.Lock())
        async with lock:
            return await original(self, work, attempts=attempts)

    Database.run = run  # type: ignore[method-assign]


def _child(argv: list[str]) -> None:
    import logging

    logging.basicConfig(level=logging.WARNING)
    kind, config = argv[1], json.loads(argv[2])
    if config.get("pin_generics") or os.environ.get("ANXIN_BENCH_PIN_GENERICS"):
        pin_generics()
    if config.get("serialize_sqlite") or os.environ.get("ANXIN_BENCH_SERIALIZE_SQLITE"):
        serialize_sqlite_writes()
    from bot.cli import run_async

    # Each bot on the event loop it would have in production: Anxin as `anxin run` starts it
    # (uvloop where installed, ANXIN_EVENT_LOOP), the echo bot as aiohttp's web.run_app does
    # (the standard loop) unless the run asks for uvloop (--echo-loop uvloop).
    loop = config.get("event_loop", "auto" if kind == "anxin" else "asyncio")
    if kind == "anxin" and os.environ.get("ANXIN_BENCH_CPROFILE"):
        import cProfile

        # Deterministic profile of the whole child (for where the time goes, not for figures:
        # it slows the bot down several times).
        with cProfile.Profile() as profile:
            run_async(_serve_anxin(config), loop)
        profile.dump_stats(os.environ["ANXIN_BENCH_CPROFILE"])
    elif kind == "anxin":
        run_async(_serve_anxin(config), loop)
    elif kind == "echo":
        _printed.add("READY")  # printed once its site listens
        run_async(_serve_echo(config), loop)
    else:
        raise SystemExit(f"unknown bot {kind!r}")


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "serve":
        _child(sys.argv[1:])
    else:
        raise SystemExit("usage: _harness.py serve anxin|echo CONFIG_JSON")
