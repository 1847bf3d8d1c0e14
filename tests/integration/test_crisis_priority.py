"""A crisis is not kept waiting by a broadcast: with 10,000 broadcast messages queued and
Telegram answering some of them 429, the safety reply and the staff card go out next."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer

from bot.telegram.delivery import TelegramSender
from core.clock import FakeClock
from core.config import Settings
from core.db import Database
from core.messages import Inbound, InboundKind, Outbound, Priority
from core.outbox import DeliveryWorker, RateLimits, queue
from core.services import build_core
from tests.fakebotapi import FakeBotAPI

STAFF_CHAT = -1001999000000
RESIDENT = 777_000_777
BROADCAST = 10_000


class Tick:
    """A monotonic clock the test moves: no real waiting for the 30-a-second limit."""

    def __init__(self) -> None:
        self.now = 5_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def api() -> FakeBotAPI:
    async with FakeBotAPI(strict_chats=False) as server:
        yield server  # type: ignore[misc]


async def test_crisis_reply_and_card_overtake_a_10000_message_broadcast(
    api: FakeBotAPI, db: Database, clock: FakeClock, tmp_path: Path
) -> None:
    settings = Settings(
        data_dir=tmp_path,
        database_url=db.url,
        telegram_token=api.token,  # type: ignore[call-arg]
        staff_chat_id=str(STAFF_CHAT),
        _env_file=None,
    )
    core = build_core(settings, db, clock)
    news = [
        Outbound(
            "telegram",
            str(10_000_000 + n),
            "本周心理讲座：如何在隔离中睡个好觉",
            priority=Priority.BROADCAST,
            kind="broadcast",
        )
        for n in range(BROADCAST)
    ]
    await db.run(lambda s: queue(s, news, clock.now()))
    for n in range(0, 60, 3):  # some of the broadcast's chats are answered 429
        api.fail_next("sendMessage", 429, retry_after=2, chat_id=10_000_000 + n)

    tick = Tick()
    bot = Bot(api.token, session=AiohttpSession(api=TelegramAPIServer.from_base(api.base_url)))
    worker = DeliveryWorker(db, TelegramSender(bot), clock, RateLimits(monotonic=tick))
    try:
        for _ in range(3):  # the broadcast is under way
            await worker.deliver_due()
            tick.now += 1.0
        before = len(api.sent)
        assert 0 < before <= 90
        assert any(call.status == 429 for call in api.calls)  # Telegram pushed back

        result = await core.engine.handle(
            Inbound(
                channel="telegram",
                external_id=str(RESIDENT),
                chat_id=str(RESIDENT),
                kind=InboundKind.TEXT,
                text="我不想活了，药已经攒好了",
                update_key="risk-1",
                language_hint="zh-hans",
            )
        )
        assert not result.duplicate
        tick.now += 1.0
        await worker.deliver_due()
        next_sends = api.sent[before:]
        to_resident = [m for m in next_sends if m.chat_id == RESIDENT]
        to_staff = [m for m in next_sends if m.chat_id == STAFF_CHAT]
        assert to_resident and "110" in to_resident[0].text  # imminent: emergency numbers first
        assert to_staff and "风险" in to_staff[0].text
        assert len(next_sends) <= 30
        assert api.stats["rate_limited"] == 0
    finally:
        await bot.session.close()
