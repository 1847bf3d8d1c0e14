"""Which outbox rows a delivery sweep claims: priority, per-chat order, and no starvation."""

from __future__ import annotations

import pytest

from bot.runtime import TELEGRAM_URGENT_RESERVE
from core.clock import FakeClock
from core.db import Database
from core.messages import Outbound, Priority
from core.models import OutboxMessage
from core.outbox import DeliveryWorker, RateLimits, SendOutcome, queue


class RecordingSender:
    """Accepts every row and remembers the order (the platform is tested elsewhere)."""

    channel = "telegram"

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    async def send(self, row: OutboxMessage) -> SendOutcome:
        self.sent.append((row.chat_id, row.text))
        return SendOutcome.sent()


class Monotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_busy_staff_group_does_not_starve_residents(db: Database, clock: FakeClock) -> None:
    staff = [
        Outbound("telegram", "-100", f"card {n}", priority=Priority.ESCALATION, chat_kind="group")
        for n in range(400)
    ]
    resident = Outbound("telegram", "42", "your reply", priority=Priority.REPLY)
    await db.run(lambda s: queue(s, [*staff, resident], clock.now()))
    sender = RecordingSender()
    tick = Monotonic()
    worker = DeliveryWorker(db, sender, clock, RateLimits(monotonic=tick), batch=50)
    for _ in range(5):
        await worker.deliver_due()
        tick.now += 0.1
    assert ("42", "your reply") in sender.sent
    group = [text for chat, text in sender.sent if chat == "-100"]
    assert group == [f"card {n}" for n in range(len(group))]  # in order, within the group limit
    assert len(group) <= 3


async def test_crisis_rows_jump_the_queue_but_a_chat_keeps_its_order(
    db: Database, clock: FakeClock
) -> None:
    broadcasts = [
        Outbound("telegram", str(n), "news", priority=Priority.BROADCAST) for n in range(100)
    ]
    crisis = Outbound("telegram", "7", "call now", priority=Priority.CRISIS)
    await db.run(lambda s: queue(s, [*broadcasts, crisis], clock.now()))
    sender = RecordingSender()
    limits = RateLimits(monotonic=Monotonic(), urgent_reserve=TELEGRAM_URGENT_RESERVE)
    worker = DeliveryWorker(db, sender, clock, limits, batch=500)
    await worker.deliver_due()
    assert sender.sent[0] == ("7", "call now")
    # The overall limit of one second, less the send kept for crisis and escalation rows,
    # which the crisis itself may use: the crisis and 28 broadcasts.
    assert len(sender.sent) == 29


def test_a_worker_that_left_the_reserve_free_waits_for_the_window_not_its_fallback() -> None:
    tick = Monotonic()
    limits = RateLimits(monotonic=tick, urgent_reserve=1)
    for n in range(29):
        assert limits.allows(str(n), "private", urgent=False)
        limits.spend(str(n), "private")
        tick.now += 0.01
    assert not limits.allows("more", "private", urgent=False)
    assert limits.allows("crisis", "private", urgent=True)  # the 30th send is the reserve
    # The first of the 29 leaves the one-second window 0.71 s from now; then the next fits.
    assert limits.global_wait() == pytest.approx(0.71)
    tick.now += 0.72
    assert limits.allows("more", "private", urgent=False)
