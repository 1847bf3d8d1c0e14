"""Shared parts of the fault tests: bot processes, the fake Telegram, a scripted crisis, an audit.

- :class:`ForkServer` (session) starts ``anxin run`` processes in milliseconds: it imports the
  bot once and forks a child per start that runs ``bot.cli.main(["run", ...])`` (see
  ``forkserver.py``). Children lift Telegram's flood limits, as the in-process fixtures do
  (``unlimited()``): pacing has its own tests and here it would only add minutes.
- :class:`Fleet` (per test) owns the bot processes a test started and stops them at the end.
- the fake Bot API runs in the test process, with Telegram-like webhook retries patient enough
  to outlast a restart.
- :func:`crisis_script` is one resident's conversation with an escalation: onboarding, a
  high-risk message, a follow-up answer, and a counselor claiming the card in the staff chat.
- :func:`audit` compares what the fake API received with the outbox rows the database says
  were sent: no row lost, and every extra copy explained by a row that was in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import threading
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest

from tests.fakebotapi import FakeBotAPI, FakeUser, SentMessage

if TYPE_CHECKING:
    from bot.runtime import Runtime

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "4242001:fault-test-token"
WEBHOOK_SECRET = "fault-test-secret_0123456789"
STAFF_CHAT = -1_004_200_000_001
COUNSELOR = 4_200_001
BOUND = 20.0  # seconds any single wait may take


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def until(
    check: Callable[[], Any],
    what: str,
    timeout: float = BOUND,  # noqa: ASYNC109
    every: float = 0.02,
) -> Any:
    """Re-check ``check`` (sync or async) until it is truthy, or fail after ``timeout``."""
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
        await asyncio.sleep(every)


# --------------------------------------------------------------------------- processes


class ForkServer:
    """Client of ``python -m tests.faults.forkserver`` (one request at a time)."""

    def __init__(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.faults.forkserver"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._lock = threading.Lock()
        ready = self._read()
        assert ready.get("ready"), ready

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the fork server ended (exit {self.proc.poll()})")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def request(self, **request: Any) -> dict[str, Any]:
        with self._lock:
            assert self.proc.stdin is not None
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
            return self._read()

    async def call(self, **request: Any) -> dict[str, Any]:
        return await asyncio.to_thread(self.request, **request)

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()  # the server stops its children and exits
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture(scope="session")
def forkserver() -> Iterator[ForkServer]:
    server = ForkServer()
    try:
        yield server
    finally:
        server.close()


@dataclass
class BotProcess:
    """One ``anxin run`` process."""

    name: str
    pid: int
    role: str
    port: int
    log: Path
    env: dict[str, str]
    status: int | None = None  # exit status once it has ended

    @property
    def alive(self) -> bool:
        return self.status is None


class Fleet:
    """The bot processes one test started; each is stopped by its own pid at the end."""

    def __init__(self, server: ForkServer, tmp_path: Path) -> None:
        self.server = server
        self.tmp_path = tmp_path
        self.started: list[BotProcess] = []
        self.kills = 0

    async def start(self, env: dict[str, str], name: str, role: str = "all") -> BotProcess:
        argv = ["run", "--role", role, "--no-migrate"]
        log = self.tmp_path / f"{name}.log"
        answer = await self.server.call(
            op="spawn", argv=argv, env=env, cwd=str(self.tmp_path), log=str(log), unlimited=True
        )
        proc = BotProcess(name, int(answer["pid"]), role, int(env["ANXIN_PORT"]), log, env)
        self.started.append(proc)
        return proc

    async def kill(self, proc: BotProcess) -> None:
        """SIGKILL: no shutdown code runs."""
        answer = await self.server.call(op="kill", pid=proc.pid)
        proc.status = answer.get("status")
        self.kills += 1

    async def stop(self, proc: BotProcess) -> None:
        if proc.alive:
            answer = await self.server.call(op="stop", pid=proc.pid, grace=10)
            proc.status = answer.get("status")

    async def check_running(self, proc: BotProcess) -> None:
        if not proc.alive:
            return
        answer = await self.server.call(op="poll", pid=proc.pid)
        if not answer["alive"]:
            proc.status = answer.get("status")
            raise AssertionError(f"{proc.name} exited ({proc.status}):\n{self.logs(proc)}")

    async def healthy(self, proc: BotProcess, timeout: float = BOUND) -> None:  # noqa: ASYNC109
        """Wait until a process with a web server answers /healthz with 200."""
        url = f"http://127.0.0.1:{proc.port}/healthz"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:

            async def ok() -> bool:
                await self.check_running(proc)
                try:
                    async with http.get(url) as response:
                        return response.status == 200
                except (aiohttp.ClientError, TimeoutError):
                    return False

            try:
                await until(ok, f"{proc.name} serving", timeout, every=0.05)
            except AssertionError as error:
                raise AssertionError(f"{error}\n{self.logs(proc)}") from None

    def logs(self, *procs: BotProcess, tail: int = 3000) -> str:
        out = []
        for proc in procs or tuple(self.started):
            if proc.log.exists():
                out.append(f"--- {proc.name}\n" + proc.log.read_text(errors="replace")[-tail:])
        return "\n".join(out)

    async def stop_all(self) -> None:
        for proc in reversed(self.started):
            with contextlib.suppress(Exception):
                await self.stop(proc)


@pytest.fixture
async def fleet(forkserver: ForkServer, tmp_path: Path) -> AsyncIterator[Fleet]:
    procs = Fleet(forkserver, tmp_path)
    try:
        yield procs
    finally:
        await procs.stop_all()


@pytest.fixture
def pg_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh PostgreSQL database (a skip without one, a failure under --require-all)."""
    from tests.conftest import POSTGRES_ENV, _pg_admin, missing_service, postgres_url

    admin = postgres_url()
    if admin is None:
        missing_service(request, f"PostgreSQL (set {POSTGRES_ENV})")
        return
    name = f"anxin_faults_{uuid.uuid4().hex[:12]}"
    asyncio.run(_pg_admin(admin, f'CREATE DATABASE "{name}"'))
    try:
        yield f"{admin.rpartition('/')[0]}/{name}"
    finally:
        asyncio.run(_pg_admin(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def bot_env(
    tmp_path: Path,
    api: FakeBotAPI,
    database_url: str,
    *,
    port: int,
    public_port: int | None = None,
    stale_claim: float = 0.05,
    **extra: str,
) -> dict[str, str]:
    """Environment of an ``anxin run`` process against the fake API, by webhook."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANXIN_")}
    env.update(
        PYTHONPATH=str(ROOT),
        ANXIN_TELEGRAM_TOKEN=api.token,
        ANXIN_TELEGRAM_API_URL=api.base_url,
        ANXIN_DATA_DIR=str(tmp_path / "data"),
        ANXIN_DATABASE_URL=database_url,
        ANXIN_HOST="127.0.0.1",
        ANXIN_PORT=str(port),
        ANXIN_PUBLIC_URL=f"http://127.0.0.1:{public_port or port}",
        ANXIN_WEBHOOK_SECRET=WEBHOOK_SECRET,
        ANXIN_STAFF_CHAT_ID=str(STAFF_CHAT),
        ANXIN_ADMINS=str(COUNSELOR),
        ANXIN_OUTBOX_STALE_CLAIM_SECONDS=str(stale_claim),
        ANXIN_LOG_LEVEL="WARNING",
    )
    env.update(extra)
    return env


@contextlib.asynccontextmanager
async def in_process_bot(
    api: FakeBotAPI, tmp_path: Path, database_url: str, *, send_timeout: float = 0.5
) -> AsyncIterator[Runtime]:
    """The whole runtime in this process (real clock, webhook, delivery; no scheduler).

    ``send_timeout`` is aiogram's request timeout, so that a call Telegram never answers is
    given up in a test's time rather than aiogram's 60 s.
    """
    from bot.runtime import Runtime
    from core.clock import SystemClock
    from core.config import Settings
    from core.outbox import RateLimits

    port = free_port()
    settings = Settings(
        data_dir=tmp_path,
        database_url=database_url,
        telegram_token=api.token,
        telegram_api_url=api.base_url,
        host="127.0.0.1",
        port=port,
        public_url=f"http://127.0.0.1:{port}",
        webhook_secret=WEBHOOK_SECRET,
        staff_chat_id=str(STAFF_CHAT),
        admins=[str(COUNSELOR)],
        log_level="WARNING",
        _env_file=None,
    )
    # Flood limits (the staff group's 20 a minute too) have their own tests.
    limits = RateLimits(
        global_per_second=100_000,
        chat_per_second=100_000,
        chat_burst=100_000,
        group_per_minute=6_000_000,
    )
    runtime = Runtime.build(settings, SystemClock(), telegram_limits=limits)
    assert runtime.telegram is not None
    runtime.telegram.bot.session.timeout = send_timeout
    await runtime.db.create_all()
    try:
        await runtime.start(serve_http=True, scheduler=False)
        server = runtime.server
        assert server is not None
        await until(lambda: server.started, "the web server listening")
        yield runtime
    finally:
        for task in runtime.listeners:
            task.cancel()
        await runtime.stop()


# --------------------------------------------------------------------------- the fake API


@pytest.fixture
async def api() -> AsyncIterator[FakeBotAPI]:
    """The fake Bot API, retrying a webhook update like Telegram until the bot is back."""
    async with FakeBotAPI(TOKEN, webhook_retry_delay=0.05, webhook_max_attempts=80) as server:
        yield server


def staff_room(api: FakeBotAPI) -> FakeUser:
    """The staff group with the bot in it, and a counselor (a configured admin) as member."""
    api.group(STAFF_CHAT, "值班咨询师")
    counselor = api.user(COUNSELOR, "王老师", language_code="zh-hans")
    api.set_member(STAFF_CHAT, counselor, "member")
    return counselor


async def counselor_on_call(api: FakeBotAPI, counselor: FakeUser) -> None:
    """The counselor writes to the bot once (so it may write back) and goes on call."""
    await counselor.send_command("/start")
    await message_with(api, COUNSELOR, "你好，我是安心")
    await counselor.send_command("/oncall", chat=STAFF_CHAT)
    await message_with(api, STAFF_CHAT, "你已开始值班")


# --------------------------------------------------------------------------- the conversation


def _matches(message: SentMessage, text: str, button: str | None) -> bool:
    if text not in (message.plain_text or "") and text not in (message.text or ""):
        return False
    return button is None or any(button in b["text"] for b in message.buttons)


async def message_with(
    api: FakeBotAPI,
    chat_id: int,
    text: str,
    button: str | None = None,
    timeout: float = BOUND,  # noqa: ASYNC109
) -> SentMessage:
    """The first message to ``chat_id`` containing ``text`` (and a button ``button``)."""

    def found() -> SentMessage | None:
        for message in api.messages_to(chat_id):
            if _matches(message, text, button):
                return message
        return None

    try:
        result: SentMessage = await api.wait_for(found, timeout)
    except TimeoutError:
        seen = [(m.plain_text or "")[:40] for m in api.messages_to(chat_id)]
        raise AssertionError(
            f"no message to {chat_id} with {text!r} within {timeout}s; got {seen}"
        ) from None
    return result


async def press(user: FakeUser, message: SentMessage, label: str) -> None:
    """``user`` presses the button labelled ``label`` on ``message`` (any chat)."""
    data = next(b["callback_data"] for b in message.buttons if label in b["text"])
    await user.press(message, data)


CASE_CODE = re.compile(r"R-[0-9A-Z]{4}")


async def crisis_script(
    api: FakeBotAPI,
    resident_id: int,
    counselor: FakeUser,
    *,
    claim: bool = True,
    patience: float = BOUND,
) -> str:
    """One resident from /start to a counselor claiming their case; returns the case code.

    ``patience``: how long to wait for each expected message.
    """
    resident = api.user(resident_id, f"居民{resident_id % 1000}", language_code="zh-hans")

    async def to(chat: int, text: str, button: str | None = None) -> SentMessage:
        return await message_with(api, chat, text, button, timeout=patience)

    me = resident_id
    await resident.send_command("/start")
    await press(resident, await to(me, "你好，我是安心", "中文"), "中文")
    await press(resident, await to(me, "隐私", "同意，开始"), "同意，开始")
    await press(resident, await to(me, "你是哪一位", "正在隔离的人"), "正在隔离的人")
    await press(resident, await to(me, "你的年龄是", "18–39岁"), "18–39岁")
    told = await to(me, "你的编号是 R-")
    match = CASE_CODE.search(told.plain_text or "")
    assert match, told.plain_text
    code = match.group(0)
    await to(me, "我能为你做些什么")
    await resident.send_text("我不想活了")
    await to(me, "已经通知了值班的心理咨询师")
    question = await to(me, "你有没有想过要怎么做", "没有")
    card = await to(STAFF_CHAT, code, "认领")
    await press(resident, question, "没有")
    await to(me, "你身边有没有可以用来伤害自己的东西")
    if claim:
        await press(counselor, card, "认领")
        await to(me, "现在和你在一起")
        await to(STAFF_CHAT, f"{code} 已由")
        await to(COUNSELOR, f"你现在与 {code} 连线")
    return code


# --------------------------------------------------------------------------- the outbox


@dataclass(frozen=True)
class Row:
    id: int
    chat_id: str
    status: str
    text: str
    platform_message_id: str | None
    attempts: int


OUTBOX_SQL = (
    "SELECT id, chat_id, status, text, platform_message_id, attempts FROM outbox "
    "WHERE channel = 'telegram' ORDER BY id"
)


async def create_schema(database_url: str) -> None:
    """Create every table from the models (as the integration fixtures do); bots start with
    ``--no-migrate``."""
    from core.db import Database

    database = Database(database_url)
    try:
        await database.create_all()
    finally:
        await database.dispose()


async def outbox_rows(database_url: str) -> list[Row]:
    """Every Telegram outbox row, read from outside the bot's processes."""
    if database_url.startswith("sqlite"):
        path = database_url.split("///", 1)[1]

        def read() -> list[tuple[Any, ...]]:
            with contextlib.closing(
                sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
            ) as conn:
                return list(conn.execute(OUTBOX_SQL).fetchall())

        raw = await asyncio.to_thread(read)
    else:
        import asyncpg

        conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            raw = [tuple(r) for r in await conn.fetch(OUTBOX_SQL)]
        finally:
            await conn.close()
    return [Row(int(a), str(b), str(c), str(d), e, int(f)) for a, b, c, d, e, f in raw]


async def settled(database_url: str, timeout: float = BOUND) -> list[Row]:  # noqa: ASYNC109
    """Wait until no Telegram row is pending or being sent; return the rows."""
    last: list[Row] = []

    async def done() -> bool:
        nonlocal last
        last = await outbox_rows(database_url)
        return all(r.status not in ("pending", "sending") for r in last)

    try:
        await until(done, "an outbox with nothing left to send", timeout, every=0.05)
    except AssertionError as error:
        waiting = [(r.id, r.chat_id, r.status, r.attempts) for r in last if r.status != "sent"]
        raise AssertionError(f"{error}: {waiting[:20]}") from None
    return last


@dataclass
class Audit:
    """What reached the fake Telegram compared with what the database says was sent."""

    rows: int = 0
    sends: int = 0
    duplicates: int = 0
    duplicated_rows: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def audit(rows: list[Row], api: FakeBotAPI, in_flight: Counter[int] | None = None) -> Audit:
    """Check every row was sent and went out once, or more only while in flight at a kill.

    ``in_flight`` counts, per row id, the kills that found the row ``sending``: each such
    kill may have let one extra copy out (the send completed, its record did not).
    """
    in_flight = in_flight or Counter()
    result = Audit(rows=len(rows))
    sent = [m for m in api.sent if m.method == "sendMessage"]
    result.sends = len(sent)
    by_id = {(m.chat_id, m.message_id): m for m in sent}
    copies: Counter[tuple[int, str]] = Counter((m.chat_id, m.text or "") for m in sent)
    per_text: dict[tuple[int, str], list[Row]] = {}
    for row in rows:
        if row.status != "sent":
            result.problems.append(f"row {row.id} to {row.chat_id} is {row.status}")
            continue
        key = (int(row.chat_id), row.text)
        per_text.setdefault(key, []).append(row)
        message = by_id.get((key[0], int(row.platform_message_id or 0)))
        if message is None or (message.text or "") != row.text:
            result.problems.append(
                f"row {row.id} to {row.chat_id} says sent as message {row.platform_message_id}, "
                "which Telegram does not have with that text"
            )
    for key, count in copies.items():
        owners = per_text.get(key, [])
        extra = count - len(owners)
        if extra < 0:
            result.problems.append(
                f"{-extra} row(s) to {key[0]} never reached Telegram: {key[1][:60]!r}"
            )
            continue
        if extra == 0:
            continue
        allowance = sum(in_flight[r.id] for r in owners)
        result.duplicates += extra
        result.duplicated_rows.extend(r.id for r in owners if in_flight[r.id])
        if not owners:
            result.problems.append(f"{extra} message(s) to {key[0]} match no row: {key[1][:60]!r}")
        elif extra > allowance:
            result.problems.append(
                f"{extra} extra cop(ies) of row(s) {[r.id for r in owners]} to {key[0]}, "
                f"but only {allowance} kill(s) found them in flight: {key[1][:60]!r}"
            )
    for key, owners in per_text.items():
        if key not in copies:
            result.problems.append(f"rows {[r.id for r in owners]} never reached Telegram")
    return result


async def in_flight_rows(database_url: str) -> list[int]:
    """Ids of rows a delivery worker had claimed and not yet recorded (``sending``)."""
    return [r.id for r in await outbox_rows(database_url) if r.status == "sending"]
