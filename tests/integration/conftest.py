"""The whole bot (``Runtime``) driven through the fake Telegram Bot API, over polling or webhook.

``start_bot("polling")`` / ``start_bot("webhook")`` build the runtime from settings exactly as
``anxin run`` does (real aiogram client, real delivery worker, real FastAPI app for the webhook)
against an in-process :class:`FakeBotAPI`; :class:`Resident` is a Telegram user who taps the
buttons of the messages the bot actually sent.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func
from sqlmodel import SQLModel, col, select

from bot.runtime import Runtime
from core.clock import FakeClock
from core.config import Settings
from core.models import InboundSeen, OutboxMessage, Person
from core.outbox import RateLimits
from tests.fakebotapi import FakeBotAPI, FakeUser, SentMessage

WEBHOOK_SECRET = "fake-telegram-secret_0123456789"


# Flood limits have their own tests (test_outbox_delivery.py); here they would only add waits.
def unlimited() -> RateLimits:
    return RateLimits(global_per_second=10_000, chat_per_second=10_000, chat_burst=10_000)


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def eventually(
    check: Callable[[], Awaitable[Any]],
    timeout: float = 10.0,  # noqa: ASYNC109
    what: str = "condition",
) -> Any:
    """Re-check ``check`` with short waits until it is truthy, or fail after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = await check()
        if result:
            return result
        if loop.time() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s")
        await asyncio.sleep(0.02)


@dataclass
class BotUnderTest:
    """A running runtime, its fake Telegram, and ways to look into its database."""

    runtime: Runtime
    api: FakeBotAPI
    transport: str
    clock: FakeClock
    residents: dict[int, Resident] = field(default_factory=dict)

    @property
    def webhook_url(self) -> str:
        return f"http://127.0.0.1:{self.runtime.settings.port}/telegram/webhook"

    def resident(self, user_id: int, language_code: str | None = "zh-hans") -> Resident:
        """A Telegram user (the same handle for the same id)."""
        if user_id not in self.residents:
            user = self.api.user(user_id, f"用户{user_id}", language_code=language_code)
            self.residents[user_id] = Resident(self, user)
        return self.residents[user_id]

    async def count(self, table: type[SQLModel]) -> int:
        """Rows in ``table``."""
        async with self.runtime.db.session() as session:
            return int((await session.exec(select(func.count()).select_from(table))).one())

    async def person(self, external_id: int) -> Person | None:
        async with self.runtime.db.session() as session:
            found = await session.exec(
                select(Person)
                .where(Person.channel == "telegram")
                .where(Person.external_id == str(external_id))
            )
            return found.first()

    async def outbox(self, chat_id: int | None = None) -> list[OutboxMessage]:
        async with self.runtime.db.session() as session:
            query = select(OutboxMessage).order_by(col(OutboxMessage.id))
            if chat_id is not None:
                query = query.where(OutboxMessage.chat_id == str(chat_id))
            return list((await session.exec(query)).all())

    async def seen_keys(self) -> list[str]:
        async with self.runtime.db.session() as session:
            return list((await session.exec(select(InboundSeen.key))).all())

    async def delivered(self, update: dict[str, Any], times: int = 1) -> None:
        """Wait until the webhook answered 2xx for ``update`` ``times`` times (it is handled)."""
        assert self.transport == "webhook", "only a webhook answer says an update was handled"
        update_id = update["update_id"]

        def done() -> bool:
            hook = self.api.webhook
            return (
                hook is not None
                and [
                    uid
                    for uid, status in hook.deliveries
                    if isinstance(status, int) and 200 <= status < 300
                ].count(update_id)
                >= times
            )

        await self.api.wait_for(done, timeout=10)

    async def all_sent(self) -> None:
        """Wait until the outbox holds nothing still to send."""

        async def settled() -> bool:
            return all(r.status not in ("pending", "sending") for r in await self.outbox())

        await eventually(settled, what="an empty outbox")


class Resident:
    """A Telegram user writing to the bot and pressing the buttons it really sent."""

    def __init__(self, bot: BotUnderTest, user: FakeUser) -> None:
        self.bot = bot
        self.user = user
        self.id = user.id

    async def say(self, text: str) -> dict[str, Any]:
        return await self.user.send_text(text)

    async def command(self, command: str) -> dict[str, Any]:
        return await self.user.send_command(command)

    async def replies(
        self,
        count: int = 1,
        *,
        contains: str | None = None,
        timeout: float = 10.0,  # noqa: ASYNC109
    ) -> list[SentMessage]:
        """The next ``count`` messages the bot sent this person (each read once)."""
        return await self.user.wait_reply(count, contains=contains, timeout=timeout)

    def button(self, label: str) -> tuple[SentMessage, str]:
        """The newest bot message with a button whose label contains ``label``, and its data."""
        for message in reversed(self.user.messages):
            for button in message.buttons:
                if label in button["text"]:
                    return message, button["callback_data"]
        shown = [b["text"] for m in self.user.messages for b in m.buttons]
        raise AssertionError(f"no button {label!r} was sent to {self.id}; buttons: {shown}")

    async def tap(self, label: str) -> dict[str, Any]:
        """Press the newest button labelled ``label`` with the callback data the bot sent."""
        message, data = self.button(label)
        return await self.user.press(message, data)

    async def answer_to(self, press: dict[str, Any]) -> dict[str, Any]:
        """The bot's answerCallbackQuery for a press (the toast the person sees)."""
        query_id = press["callback_query"]["id"]
        answer: dict[str, Any] = await self.bot.api.wait_for(
            lambda: self.bot.api.callback_answers.get(query_id)
        )
        return answer


StartBot = Callable[..., Awaitable[BotUnderTest]]


@pytest.fixture
async def api() -> AsyncIterator[FakeBotAPI]:
    async with FakeBotAPI() as server:
        yield server


@pytest.fixture
async def start_bot(
    api: FakeBotAPI, db_url: str, tmp_path: Path, clock: FakeClock
) -> AsyncIterator[StartBot]:
    """Start the runtime over ``"polling"`` or ``"webhook"``; it is stopped after the test."""
    started: list[Runtime] = []

    async def start(transport: str, **overrides: Any) -> BotUnderTest:
        port = free_port()
        options: dict[str, Any] = {
            "data_dir": tmp_path,
            "database_url": db_url,
            "telegram_token": api.token,
            "telegram_api_url": api.base_url,
            "host": "127.0.0.1",
            "port": port,
            "log_level": "WARNING",
        }
        if transport == "webhook":
            options["public_url"] = f"http://127.0.0.1:{port}"
            options["webhook_secret"] = WEBHOOK_SECRET
        options.update(overrides)
        settings = Settings(**options, _env_file=None)
        runtime = Runtime.build(settings, clock, telegram_limits=unlimited())
        await runtime.db.create_all()
        started.append(runtime)
        await runtime.start(serve_http=transport == "webhook", scheduler=False)
        if transport == "webhook":
            server = runtime.server
            assert server is not None

            async def listening() -> bool:
                return bool(server.started)

            await eventually(listening, what="the web server listening")
        return BotUnderTest(runtime, api, transport, clock)

    yield start
    for runtime in started:
        # Runtime.stop() waits 5 s for each PostgreSQL LISTEN task, which ends only when
        # cancelled (start(scheduler=False) turns the NOTIFY wake-ups on); cancel them first.
        for task in runtime.tasks:
            if getattr(task.get_coro(), "__qualname__", "") == "Database.listen":
                task.cancel()
        await runtime.stop()
