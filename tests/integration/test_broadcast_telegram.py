"""A broadcast to 10,000 residents through aiogram and the fake Bot API enforcing 30 messages a
second with random 429s: everyone gets it exactly once, even when the process dies half-way.

Time is simulated (as in test_outbox_delivery.py): a FakeClock for the database's due times
and retry holds, and one simulated monotonic clock shared by our rate limits and the fake's
Telegram-like flood limiter, so the ~6 minutes of sending run in seconds.

The "kill" happens in the middle of a fan-out (3,000 of 10,000 queued) and in the middle of a
delivery sweep whose requests hang at Telegram: the sweep's task is cancelled with its rows
claimed ('sending') and nothing of them delivered. The restarted worker puts those rows back
after the stale-claim age, and the next sweep fans out the rest from the broadcast's cursor.
(A request Telegram processed but whose answer was lost with the process cannot be told apart
from one it never saw; that message would go twice. Telegram has no idempotency key.)
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from sqlalchemy import func, insert
from sqlmodel import select

from bot.telegram.delivery import TelegramSender
from core import broadcasts
from core.broadcasts import Audience
from core.clock import FakeClock
from core.config import Settings
from core.db import Database
from core.models import OutboxMessage, Person
from core.outbox import DeliveryWorker, RateLimits
from core.quiet import QuietHold, QuietHours
from core.services import Core, build_core
from tests.fakebotapi import FakeBotAPI
from tests.integration.conftest import eventually

RECIPIENTS = 10_000
LEFT_OUT = 50  # paused (/stop) and blocked, each
FIRST_ID = 7_000_000
STAFF_CHAT = "-1009000"
TEXT_ZH = "今晚八点有线上放松小组，欢迎参加。"
TEXT_EN = "Online relaxation group tonight at 8 pm; you are welcome to join."


class SimulatedSeconds:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    return Settings(
        data_dir=tmp_path,
        database_url=db_url,
        telegram_token="1:x",  # type: ignore[call-arg]
        staff_chat_id=STAFF_CHAT,
        _env_file=None,
    )


@pytest.fixture
async def api() -> AsyncIterator[FakeBotAPI]:
    async with FakeBotAPI(clock=SimulatedSeconds(), strict_chats=False) as server:
        yield server


@pytest.fixture
async def bot(api: FakeBotAPI) -> AsyncIterator[Bot]:
    session = AiohttpSession(api=TelegramAPIServer.from_base(api.base_url), timeout=60)
    telegram = Bot(api.token, session=session)
    try:
        yield telegram
    finally:
        http = await telegram.session.create_session()
        await http.close()


async def seed_residents(db: Database, clock: FakeClock) -> None:
    """10,000 reachable residents (one in four English), plus people a broadcast must skip."""
    now = clock.now()
    rows: list[dict[str, Any]] = []
    total = RECIPIENTS + 2 * LEFT_OUT
    for index in range(total):
        user_id = FIRST_ID + index
        rows.append(
            {
                "channel": "telegram",
                "external_id": str(user_id),
                "chat_id": str(user_id),
                "case_code": f"R-B{index:06d}",
                "language": "en" if index % 4 == 0 else "zh_Hans",
                "language_confirmed": True,
                "site_code": "example",
                "relation": "resident",
                "age_band": "18_39",
                "consent_version": 1,
                "consent_at": now,
                "state": "menu",
                "state_data": "{}",
                "state_seq": 1,
                "paused": RECIPIENTS <= index < RECIPIENTS + LEFT_OUT,
                "blocked_at": now if index >= RECIPIENTS + LEFT_OUT else None,
                "created_at": now,
                "last_seen_at": now,
            }
        )

    async def work(session: Any) -> None:
        for start in range(0, len(rows), 2000):
            await session.execute(insert(Person), rows[start : start + 2000])

    await db.run(work)


class Deployment:
    """One "process": a delivery worker over the shared database, clocks and fake Telegram."""

    def __init__(self, core: Core, api: FakeBotAPI, bot: Bot, clock: FakeClock) -> None:
        self.core = core
        self.api = api
        self.clock = clock
        self.mono = api.clock
        assert isinstance(self.mono, SimulatedSeconds)
        self.worker = DeliveryWorker(
            core.db,
            TelegramSender(bot),
            clock,
            RateLimits(monotonic=self.mono),
            # A claim of twice what one second allows: a sweep per simulated second.
            batch=60,
            hold=QuietHold(QuietHours(), core.sites),
        )

    def advance(self, seconds: float) -> None:
        """Move both clocks together."""
        self.clock.advance(seconds=seconds)
        assert isinstance(self.mono, SimulatedSeconds)
        self.mono.now += seconds

    async def open_rows(self) -> int:
        async with self.core.db.session() as session:
            found = await session.exec(
                select(func.count())
                .select_from(OutboxMessage)
                .where(OutboxMessage.kind == "broadcast")
                .where(OutboxMessage.status.in_(("pending", "sending")))  # type: ignore[attr-defined]
            )
            return int(found.one())

    async def deliver_until(self, sent_at_least: int) -> None:
        """Sweep once per simulated second until Telegram has ``sent_at_least`` broadcasts."""
        for _ in range(2000):
            if delivered(self.api) >= sent_at_least:
                return
            await self.worker.deliver_due()
            self.advance(1.0)
        raise AssertionError("delivery did not progress")

    async def drain(self) -> float:
        """Deliver every simulated second, with the scheduler's broadcast sweep every 10 s,
        until nothing is left; return the simulated seconds taken."""
        elapsed = 0.0
        while True:
            if elapsed % 10 == 0:
                await broadcasts.sweep(self.core.engine)
                if not await self.open_rows() and await fanned_out(self.core):
                    return elapsed
            await self.worker.deliver_due()
            self.advance(1.0)
            elapsed += 1.0
            assert elapsed < 1200, "the broadcast did not finish"


def delivered(api: FakeBotAPI) -> int:
    return sum(1 for m in api.sent if m.method == "sendMessage" and m.text in (TEXT_ZH, TEXT_EN))


async def fanned_out(core: Core) -> bool:
    async with core.db.session() as session:
        found = (await session.exec(select(broadcasts.Broadcast))).one()
        return found.fanned_out


async def sending_rows(core: Core) -> int:
    async with core.db.session() as session:
        found = await session.exec(
            select(func.count()).select_from(OutboxMessage).where(OutboxMessage.status == "sending")
        )
        return int(found.one())


def most_in_any_second(times: list[float]) -> int:
    window: deque[float] = deque()
    most = 0
    for moment in sorted(times):
        window.append(moment)
        while window[0] <= moment - 1.0:
            window.popleft()
        most = max(most, len(window))
    return most


async def test_ten_thousand_residents_get_a_broadcast_exactly_once_across_a_crash(
    settings: Settings, db: Database, api: FakeBotAPI, bot: Bot, clock: FakeClock
) -> None:
    await seed_residents(db, clock)
    api.enforce_limits(global_per_second=30)
    api.fail_rate(0.02, statuses=(429,), seed=7, methods=("sendMessage",))
    first = build_core(settings, db, clock)
    now = clock.now()

    async def prepare(session: Any) -> int:
        draft = await broadcasts.create_draft(
            session,
            first.engine,
            texts={"zh_Hans": TEXT_ZH, "en": TEXT_EN},
            audience=Audience("everyone"),
            send_at=None,
            created_by="test",
            now=now,
        )
        assert draft.recipients == RECIPIENTS
        confirmed = await broadcasts.confirm(session, first.engine, draft.id, "test", now)
        assert confirmed.id is not None
        return confirmed.id

    broadcast_id = await db.run(prepare)
    await db.run(lambda s: broadcasts.start_due(s, first.engine, now))

    # Process 1 fans out six batches (3,000 people), then delivers about 2,000 of them.
    for _ in range(6):
        await db.run(lambda s: broadcasts.fan_out_batch(s, first.engine, broadcast_id, now))
    one = Deployment(first, api, bot, clock)
    await one.deliver_until(2_000)

    # Then Telegram stops answering and the process dies with its requests in flight.
    api.delay_next("sendMessage", 3600, times=None)
    sweep = asyncio.create_task(one.worker.deliver_due())

    async def hanging() -> bool:
        claimed = await sending_rows(first)
        return claimed > 0 and api.stats["delayed"] == min(claimed, one.worker.concurrency)

    await eventually(hanging, what="requests in flight at Telegram")
    in_flight = await sending_rows(first)
    sent_before = delivered(api)
    sweep.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sweep
    assert 2_000 <= sent_before < 3_000 and in_flight > 0

    # Process 2: a fresh core and worker on the same database; Telegram answers again.
    api.clear_faults()
    api.fail_rate(0.02, statuses=(429,), seed=8, methods=("sendMessage",))
    second = build_core(settings, db, clock)
    two = Deployment(second, api, bot, clock)
    two.advance(61)  # past the stale-claim age, as a real restart would be
    assert await two.worker.release_stale_claims() == in_flight
    await two.drain()

    per_chat = Counter(m.chat_id for m in api.sent if m.text in (TEXT_ZH, TEXT_EN))
    assert len(per_chat) == RECIPIENTS
    assert set(per_chat.values()) == {1}
    assert min(per_chat) == FIRST_ID and max(per_chat) == FIRST_ID + RECIPIENTS - 1
    english = {m.chat_id for m in api.sent if m.text == TEXT_EN}
    assert english == {FIRST_ID + i for i in range(0, RECIPIENTS, 4)}

    sends = [m.time for m in api.sent if m.method == "sendMessage"]
    assert most_in_any_second(sends) <= 30
    assert api.stats["injected_random"] > 0  # some 429s were answered, and retried

    async with db.session() as session:
        statuses = Counter(
            await session.exec(
                select(OutboxMessage.status).where(OutboxMessage.kind == "broadcast")
            )
        )
        staff = (
            await session.exec(
                select(OutboxMessage.text).where(OutboxMessage.chat_id == STAFF_CHAT)
            )
        ).all()
    assert statuses == {"sent": RECIPIENTS}
    assert any(f"已完成：已发送 {RECIPIENTS:,}，失败 0，剩余 0" in t for t in staff)
