"""Which outbox rows a delivery sweep claims: priority, per-chat order, and no starvation."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.runtime import TELEGRAM_URGENT_RESERVE
from core.clock import FakeClock, as_utc
from core.db import Database
from core.messages import Outbound, Priority
from core.models import OutboxMessage
from core.outbox import READ_PER_SEND, DeliveryWorker, RateLimits, SendOutcome, queue


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


class Statements:
    """The SQL a database runs (each statement, and whether it went as executemany)."""

    def __init__(self, db: Database) -> None:
        self.seen: list[tuple[str, bool]] = []
        self.engine = db.engine.sync_engine
        event.listen(self.engine, "before_cursor_execute", self._record)

    def _record(
        self, _conn: Any, _cursor: Any, sql: str, _params: Any, _ctx: Any, many: bool
    ) -> None:
        self.seen.append((" ".join(sql.split()), many))

    def close(self) -> None:
        event.remove(self.engine, "before_cursor_execute", self._record)

    def reads(self) -> list[str]:
        return [sql for sql, _many in self.seen if sql.startswith("SELECT")]

    def claims(self) -> list[tuple[str, bool]]:
        """UPDATEs of the outbox that mark rows claimed (not those recording a send)."""
        return [
            (sql, many)
            for sql, many in self.seen
            if sql.startswith("UPDATE outbox") and "attempts" not in sql
        ]


@pytest.fixture
def statements(db: Database) -> Iterator[Statements]:
    watch = Statements(db)
    yield watch
    watch.close()


@contextmanager
def loaded_rows() -> Iterator[list[int]]:
    """The ids of the outbox rows loaded as objects meanwhile."""
    ids: list[int] = []

    def load(target: OutboxMessage, _context: Any) -> None:
        ids.append(target.id or 0)

    event.listen(OutboxMessage, "load", load)
    try:
        yield ids
    finally:
        event.remove(OutboxMessage, "load", load)


def fill(limits: RateLimits, sends: int) -> None:
    """Spend ``sends`` of the overall limit on chats no row is queued to."""
    for n in range(sends):
        assert limits.allows(f"other-{n}", "private", urgent=True)
        limits.spend(f"other-{n}", "private")


async def test_a_claim_reads_a_few_rows_for_each_send_that_fits(
    db: Database, clock: FakeClock
) -> None:
    news = [Outbound("telegram", str(n), "news", priority=Priority.BROADCAST) for n in range(100)]
    await db.run(lambda s: queue(s, news, clock.now()))
    limits = RateLimits(monotonic=Monotonic())
    fill(limits, 28)  # two of the second's 30 left
    sender = RecordingSender()
    worker = DeliveryWorker(db, sender, clock, limits)
    with loaded_rows() as loaded:
        assert await worker.deliver_due() == (2, 0.0)
    assert sender.sent == [("0", "news"), ("1", "news")]
    assert len(loaded) == 2 * READ_PER_SEND  # not the batch of 300 (nor the 100 queued)


async def test_rows_passed_over_do_not_cut_a_sweep_short(db: Database, clock: FakeClock) -> None:
    # One chat's 200 replies come first; a sweep sends one of them (a chat's messages go one
    # at a time), then fills the second's 30 sends with the next chats, reading on.
    chatty = [Outbound("telegram", "chatty", f"reply {n}") for n in range(200)]
    others = [Outbound("telegram", str(n), "hello") for n in range(40)]
    await db.run(lambda s: queue(s, [*chatty, *others], clock.now()))
    sender = RecordingSender()
    worker = DeliveryWorker(db, sender, clock, RateLimits(monotonic=Monotonic()))
    assert (await worker.deliver_due())[0] == 30
    assert sender.sent == [("chatty", "reply 0"), *((str(n), "hello") for n in range(29))]


class QuietChats:
    """Quiet hours for chats whose id starts with "q": their rows may go in eight hours."""

    def __init__(self) -> None:
        self.asked = 0

    async def held(
        self, session: AsyncSession, rows: Sequence[OutboxMessage], now: datetime
    ) -> dict[int, datetime]:
        self.asked += len(rows)
        return {r.id: now + timedelta(hours=8) for r in rows if r.id and r.chat_id[0] == "q"}


async def test_rows_held_for_quiet_hours_do_not_hold_up_the_rows_behind_them(
    db: Database, clock: FakeClock
) -> None:
    quiet = [Outbound("telegram", f"q{n}", "tip", priority=Priority.BROADCAST) for n in range(150)]
    group = [
        Outbound("telegram", f"g{n}", "tip", priority=Priority.BROADCAST, chat_kind="group")
        for n in range(5)
    ]
    await db.run(lambda s: queue(s, [*quiet, *group], clock.now()))
    sender = RecordingSender()
    hold = QuietChats()
    worker = DeliveryWorker(db, sender, clock, RateLimits(monotonic=Monotonic()), hold=hold)
    assert (await worker.deliver_due())[0] == 5
    assert sender.sent == [(f"g{n}", "tip") for n in range(5)]
    async with db.session() as session:
        rows = (await session.exec(select(OutboxMessage).order_by(col(OutboxMessage.id)))).all()
    later = clock.now() + timedelta(hours=8)
    assert [(r.chat_id, r.status, as_utc(r.due_at)) for r in rows[:150]] == [
        (f"q{n}", "pending", later) for n in range(150)
    ]
    # Held rows are due again when quiet hours end: the next sweep reads none of them.
    asked = hold.asked
    assert await worker.deliver_due() == (0, 0.5)
    assert hold.asked == asked


async def test_a_claim_is_one_read_and_one_update(
    db: Database, clock: FakeClock, statements: Statements
) -> None:
    replies = [Outbound("telegram", str(n), "hello") for n in range(20)]
    await db.run(lambda s: queue(s, replies, clock.now()))
    statements.seen.clear()
    worker = DeliveryWorker(db, RecordingSender(), clock, RateLimits(monotonic=Monotonic()))
    assert (await worker.deliver_due())[0] == 20
    [read] = statements.reads()  # no separate query for the chats with a message in flight
    assert read.startswith("SELECT outbox.id, ")
    [(mark, many)] = statements.claims()  # not one UPDATE per row
    assert "WHERE outbox.id IN (" in mark and not many
    async with db.session() as session:
        rows = (await session.exec(select(OutboxMessage))).all()
    assert {(r.status, r.claimed_at, r.attempts) for r in rows} == {("sent", None, 1)}


async def test_a_full_window_is_waited_out_without_a_claim(
    db: Database, clock: FakeClock, statements: Statements
) -> None:
    await db.run(lambda s: queue(s, [Outbound("telegram", "1", "hello")], clock.now()))
    tick = Monotonic()
    limits = RateLimits(monotonic=tick)
    fill(limits, 30)
    tick.now += 0.25
    statements.seen.clear()
    worker = DeliveryWorker(db, RecordingSender(), clock, limits)
    assert await worker.deliver_due() == (0, pytest.approx(0.75))
    assert statements.seen == []  # the database was not asked anything
    tick.now += 0.75
    assert (await worker.deliver_due())[0] == 1


async def test_only_the_reserve_left_lets_a_crisis_through(db: Database, clock: FakeClock) -> None:
    news = [Outbound("telegram", str(n), "news", priority=Priority.BROADCAST) for n in range(50)]
    crisis = Outbound("telegram", "7", "call now", priority=Priority.CRISIS)
    await db.run(lambda s: queue(s, [*news, crisis], clock.now()))
    limits = RateLimits(monotonic=Monotonic(), urgent_reserve=TELEGRAM_URGENT_RESERVE)
    fill(limits, 30 - TELEGRAM_URGENT_RESERVE)
    sender = RecordingSender()
    worker = DeliveryWorker(db, sender, clock, limits)
    assert (await worker.deliver_due())[0] == 1
    assert sender.sent == [("7", "call now")]


async def test_a_chat_in_flight_or_waiting_out_a_retry_gets_nothing_more(
    db: Database, clock: FakeClock
) -> None:
    now = clock.now()
    await db.run(
        lambda s: queue(
            s,
            [
                Outbound("telegram", "flying", "first"),
                Outbound("telegram", "flying", "second"),
                Outbound("telegram", "waiting", "retried"),
                Outbound("telegram", "waiting", "call now", priority=Priority.CRISIS),
                Outbound("telegram", "retry-over", "retried"),
                Outbound("telegram", "free", "hello"),
            ],
            now,
        )
    )

    async def prepare(session: AsyncSession) -> None:
        rows = (await session.exec(select(OutboxMessage).order_by(col(OutboxMessage.id)))).all()
        rows[0].status, rows[0].claimed_at = "sending", now  # another worker's, in flight
        rows[2].hold_until, rows[2].attempts = now + timedelta(seconds=30), 1
        rows[4].hold_until, rows[4].attempts = now - timedelta(seconds=1), 1
        for row in rows:
            session.add(row)

    await db.run(prepare)
    sender = RecordingSender()
    worker = DeliveryWorker(db, sender, clock, RateLimits(monotonic=Monotonic()))
    await worker.deliver_due()
    assert sorted(sender.sent) == [("free", "hello"), ("retry-over", "retried")]
    clock.advance(seconds=30)  # the retry is due: the crisis goes first, then the row held
    sender.sent.clear()
    await worker.deliver_due()
    await worker.deliver_due()
    assert sender.sent == [("waiting", "call now"), ("waiting", "retried")]


async def test_two_workers_never_claim_the_same_row(db: Database, clock: FakeClock) -> None:
    if db.is_sqlite:
        pytest.skip("SQLite runs one writer at a time: claims cannot overlap")
    replies = [Outbound("telegram", str(n), "hello") for n in range(30)]
    await db.run(lambda s: queue(s, replies, clock.now()))
    first_limits = RateLimits(monotonic=Monotonic())
    fill(first_limits, 25)  # the first worker may send five
    first = DeliveryWorker(db, RecordingSender(), clock, first_limits, worker_id="a")
    second = DeliveryWorker(db, RecordingSender(), clock, RateLimits(monotonic=Monotonic()))
    async with db.session() as session, db.session() as other:
        mine = await first._claim(session, clock.now())  # its transaction still open
        # Waiting for the first's locks would be a deadlock here: fail instead.
        await other.exec(text("SET LOCAL lock_timeout = '2s'"))
        theirs = await second._claim(other, clock.now())
        await other.commit()
        await session.commit()
    assert [r.chat_id for r in mine] == [str(n) for n in range(5)]
    # The first read locked the rows it read, four for each send it could make, until its
    # transaction ended; the second worker took the rows after them, not the same ones.
    assert [r.chat_id for r in theirs] == [str(n) for n in range(5 * READ_PER_SEND, 30)]
