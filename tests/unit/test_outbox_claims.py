"""Which outbox rows a delivery sweep claims: priority, per-chat order, and no starvation."""

from __future__ import annotations

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
    worker = DeliveryWorker(db, sender, clock, RateLimits(monotonic=Monotonic()), batch=500)
    await worker.deliver_due()
    assert sender.sent[0] == ("7", "call now")
    assert len(sender.sent) == 30  # the overall limit of one second
