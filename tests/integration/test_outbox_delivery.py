"""The outbox's delivery worker against the fake Bot API, through TelegramSender and aiogram.

Time is simulated: a FakeClock for the database's ``due_at``/``hold_until`` and one simulated
monotonic clock shared by our rate limits and the fake's Telegram-like flood limiter, so a test
covering minutes of sending runs in a fraction of a second.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from sqlmodel import col, select

from bot.runtime import TELEGRAM_URGENT_RESERVE
from bot.telegram.delivery import TelegramSender, keyboard
from core.clock import FakeClock, as_utc
from core.db import Database
from core.messages import Button, Outbound, Priority
from core.models import OutboxMessage, Person
from core.outbox import DeliveryWorker, RateLimits, queue
from tests.fakebotapi import FakeBotAPI


class SimulatedSeconds:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Rig:
    """A delivery worker, its database, fake Telegram and the two simulated clocks."""

    def __init__(self, db: Database, api: FakeBotAPI, bot: Bot, clock: FakeClock) -> None:
        self.db = db
        self.api = api
        self.bot = bot
        self.clock = clock
        self.mono = api.clock
        assert isinstance(self.mono, SimulatedSeconds)
        self.worker = self.make_worker()

    def make_worker(self, **limits: Any) -> DeliveryWorker:
        self.worker = DeliveryWorker(
            self.db, TelegramSender(self.bot), self.clock, RateLimits(monotonic=self.mono, **limits)
        )
        return self.worker

    def advance(self, seconds: float) -> None:
        """Move both clocks together."""
        self.clock.advance(seconds=seconds)
        assert isinstance(self.mono, SimulatedSeconds)
        self.mono.now += seconds

    async def sweep(self) -> int:
        sent, _wait = await self.worker.deliver_due()
        return sent

    async def drain(self, step: float = 0.05, limit: float = 600.0) -> float:
        """Sweep every ``step`` simulated seconds until nothing is left; the time it took."""
        elapsed = 0.0
        while await self.open_rows():
            await self.sweep()
            self.advance(step)
            elapsed += step
            assert elapsed < limit, "the outbox did not drain"
        return elapsed

    async def queue(self, *messages: Outbound) -> list[OutboxMessage]:
        """Queue ``messages``; the outbox rows that added."""
        before = {row.id for row in await self.rows()}
        await self.db.run(lambda s: queue(s, list(messages), self.clock.now()))
        return [row for row in await self.rows() if row.id not in before]

    async def rows(self) -> list[OutboxMessage]:
        async with self.db.session() as session:
            found = await session.exec(select(OutboxMessage).order_by(col(OutboxMessage.id)))
            return list(found.all())

    async def row(self, row_id: int | None) -> OutboxMessage:
        async with self.db.session() as session:
            row = await session.get(OutboxMessage, row_id)
            assert row is not None
            return row

    async def person(self, chat: int, case_code: str) -> Person:
        """A resident of ``chat`` (rows with buttons need a person to bind their tokens to)."""
        async with self.db.session() as session:
            person = Person(
                channel="telegram",
                external_id=str(chat),
                chat_id=str(chat),
                case_code=case_code,
                created_at=self.clock.now(),
                last_seen_at=self.clock.now(),
            )
            session.add(person)
            await session.commit()
            await session.refresh(person)
            return person

    async def open_rows(self) -> int:
        return sum(r.status in ("pending", "sending") for r in await self.rows())

    def sends(self) -> list[Any]:
        """sendMessage calls the fake answered 200 (what a person would see)."""
        return [c for c in self.api.calls if c.method == "sendMessage" and c.status == 200]


def text(chat: int, body: str, priority: Priority = Priority.REPLY, **kw: Any) -> Outbound:
    return Outbound("telegram", str(chat), body, priority=priority, **kw)


@pytest.fixture
async def rig(db: Database, clock: FakeClock) -> AsyncIterator[Rig]:
    async with FakeBotAPI(clock=SimulatedSeconds()) as api:
        session = AiohttpSession(api=TelegramAPIServer.from_base(api.base_url), timeout=0.3)
        bot = Bot(api.token, session=session)
        try:
            yield Rig(db, api, bot, clock)
        finally:
            http = await session.create_session()
            await http.close()


def users(rig: Rig, *ids: int) -> list[int]:
    for uid in ids:
        rig.api.user(uid, started=True)
    return list(ids)


async def test_a_crisis_queued_after_fifty_broadcasts_goes_first(rig: Rig) -> None:
    chats = users(rig, *range(8001, 8051))
    [person] = users(rig, 8100)
    await rig.queue(*(text(c, f"心理科普 {c}", Priority.BROADCAST) for c in chats))
    await rig.queue(text(person, "请马上拨打 120", Priority.CRISIS, kind="crisis"))
    rig.make_worker(global_per_second=1.0)  # one message per sweep shows the order plainly

    assert await rig.sweep() == 1
    assert [c.params["chat_id"] for c in rig.sends()] == [person]
    await rig.drain(step=1.0)
    assert len(rig.sends()) == 51


async def test_a_crisis_to_a_chat_with_a_broadcast_backlog_jumps_the_queue(rig: Rig) -> None:
    [chat] = users(rig, 8200)
    await rig.queue(*(text(chat, f"心理科普 第{i}篇", Priority.BROADCAST) for i in range(50)))
    await rig.queue(text(chat, "请马上拨打 120", Priority.CRISIS, kind="crisis"))

    await rig.sweep()
    assert [m.text for m in rig.api.messages_to(chat)] == ["请马上拨打 120"]
    await rig.drain(step=0.5)
    texts = [m.text for m in rig.api.messages_to(chat)]
    assert texts[1:] == [f"心理科普 第{i}篇" for i in range(50)]


async def test_429_holds_the_row_for_retry_after_then_sends_it_once(rig: Rig) -> None:
    [chat] = users(rig, 8300)
    [row] = await rig.queue(text(chat, "你的预约已确认"))
    rig.api.fail_next("sendMessage", 429, retry_after=7)

    await rig.sweep()
    held = await rig.row(row.id)
    assert (held.status, held.attempts) == ("pending", 1)
    assert held.hold_until is not None
    assert as_utc(held.hold_until) == rig.clock.now() + timedelta(seconds=7)
    rig.advance(6.9)
    assert await rig.sweep() == 0
    rig.advance(0.1)
    assert await rig.sweep() == 1
    assert [m.text for m in rig.api.messages_to(chat)] == ["你的预约已确认"]
    assert (await rig.row(row.id)).status == "sent"
    assert [c.status for c in rig.api.calls if c.method == "sendMessage"] == [429, 200]


@pytest.mark.parametrize(
    ("status", "raw_body"),
    [(500, None), (502, "<html><body><h1>502 Bad Gateway</h1>nginx</body></html>")],
)
async def test_server_errors_are_retried_with_backoff_then_sent_once(
    rig: Rig, status: int, raw_body: str | None
) -> None:
    [chat] = users(rig, 8400)
    [row] = await rig.queue(text(chat, "今天感觉怎么样？"))
    rig.api.fail_next("sendMessage", status, times=2, raw_body=raw_body)

    holds = []
    for _ in range(2):
        start = rig.clock.now()
        await rig.sweep()
        pending = await rig.row(row.id)
        assert pending.status == "pending" and pending.hold_until is not None
        holds.append((as_utc(pending.hold_until) - start).total_seconds())
        assert await rig.sweep() == 0  # held: not tried again at once
        rig.advance(holds[-1])
    assert holds[1] > holds[0] > 0  # backing off
    assert await rig.sweep() == 1
    assert [m.text for m in rig.api.messages_to(chat)] == ["今天感觉怎么样？"]
    final = await rig.row(row.id)
    assert (final.status, final.attempts) == ("sent", 3)


async def test_a_request_timeout_is_retried_and_sent_once(rig: Rig) -> None:
    [chat] = users(rig, 8500)
    [row] = await rig.queue(text(chat, "我们在这里陪你"))
    rig.api.fail_next("sendMessage", "timeout", hang=30)  # longer than the 0.3 s session timeout

    await rig.sweep()
    pending = await rig.row(row.id)
    assert (pending.status, pending.attempts) == ("pending", 1)
    assert pending.error is not None and "timeout" in pending.error.lower()
    assert rig.api.messages_to(chat) == []
    assert pending.hold_until is not None
    rig.advance((as_utc(pending.hold_until) - rig.clock.now()).total_seconds())
    assert await rig.sweep() == 1
    assert [m.text for m in rig.api.messages_to(chat)] == ["我们在这里陪你"]


async def test_403_marks_the_chats_rows_blocked_and_the_person_blocked(
    rig: Rig, db: Database
) -> None:
    blocked, other = users(rig, 8600, 8601)
    person = await rig.person(blocked, "R-BLK1")
    await rig.queue(*(text(blocked, f"提醒 {i}", Priority.REMINDER) for i in range(3)))
    await rig.queue(text(other, "你好"))
    rig.api.block(blocked)

    await rig.drain()
    statuses = {(r.chat_id, r.status) for r in await rig.rows()}
    assert statuses == {(str(blocked), "blocked"), (str(other), "sent")}
    assert len([c for c in rig.api.calls if c.params.get("chat_id") == blocked]) == 1
    async with db.session() as session:
        fresh = await session.get(Person, person.id)
        assert fresh is not None and fresh.blocked_at is not None
        assert as_utc(fresh.blocked_at) <= rig.clock.now()


async def test_a_text_over_4096_characters_arrives_split_in_order(rig: Rig, db: Database) -> None:
    [chat] = users(rig, 8700)
    person = await rig.person(chat, "R-LONG")
    long_text = "\n".join(f"第{i}段：" + "放松呼吸，" * 60 for i in range(35))
    assert len(long_text) > 10_000
    button = [[Button("主菜单", "menu")]]
    rows = await rig.queue(text(chat, long_text, buttons=button, person_id=person.id))
    assert len(rows) == 3

    await rig.drain()
    parts = rig.api.messages_to(chat)
    assert [len(p.text or "") <= 4096 for p in parts] == [True, True, True]
    assert "\n".join(p.text or "" for p in parts) == long_text
    assert [bool(p.buttons) for p in parts] == [False, False, True]


async def test_flood_limits_hold_per_chat_and_overall(rig: Rig) -> None:
    crowd = users(rig, *range(9000, 9120))
    [busy] = users(rig, 9500)
    await rig.queue(*(text(c, f"科普 {c}", Priority.BROADCAST) for c in crowd))
    await rig.queue(*(text(busy, f"消息 {i}") for i in range(6)))
    rig.api.enforce_limits(global_per_second=30, per_chat_per_second=1, per_chat_burst=3)
    rig.make_worker(urgent_reserve=TELEGRAM_URGENT_RESERVE)  # as deployed

    await rig.drain(step=0.1)
    sends = rig.sends()
    assert len(sends) == 126
    assert rig.api.stats["rate_limited"] == 0  # a Telegram-like limiter never had to say 429
    start = sends[0].time
    per_second = Counter(int(c.time - start) for c in sends)
    busy_per_second = Counter(int(c.time - start) for c in sends if c.params["chat_id"] == busy)
    # At most 29 in any simulated second overall, and in any one-second stretch: Telegram's 30
    # less the send each second keeps for crisis and escalation rows (none here).
    assert max(per_second.values()) == 29
    times = [c.time for c in sends]
    assert all(later - earlier >= 1.0 for earlier, later in zip(times, times[29:], strict=False))
    # One chat: 1 a second, with Telegram's short burst of 3 (n sends need n - 3 seconds).
    assert max(busy_per_second.values()) <= 3
    busy_times = [c.time for c in sends if c.params["chat_id"] == busy]
    for i, earlier in enumerate(busy_times):
        for j in range(i + 1, len(busy_times)):
            assert busy_times[j] - earlier >= (j - i + 1) - 3 - 1e-9
    # Every row went out exactly once.
    assert sorted(Counter(c.params["text"] for c in sends).values()) == [1] * 126


async def test_a_keyboard_goes_out_as_aiogram_would_send_it_and_the_message_id_is_kept(
    rig: Rig, db: Database
) -> None:
    [chat] = users(rig, 4711)
    person = await rig.person(chat, "R-KEYB1")
    buttons = [
        [Button('很好 "好"', "mood", "5"), Button("差", "mood", "1")],
        [Button("主菜单", "menu")],
    ]
    [row] = await rig.queue(text(chat, "今天心情怎么样？", buttons=buttons, person_id=person.id))
    await rig.drain()
    [call] = rig.sends()
    # The request aiogram's own SendMessage would make with keyboard(): the same fields.
    expected = keyboard(row.buttons)
    assert expected is not None
    assert call.params["reply_markup"] == expected.model_dump(exclude_none=True)
    assert call.params["text"] == "今天心情怎么样？" and str(call.params["chat_id"]) == str(chat)
    [message] = rig.api.messages_to(chat)
    assert [b["text"] for b in message.buttons] == ['很好 "好"', "差", "主菜单"]
    sent = await rig.row(row.id)
    assert sent.status == "sent" and sent.platform_message_id == str(message.message_id)
