"""The durable outbox: queueing messages in the caller's transaction, and delivering them.

A message is queued in the same transaction as the state change that produced it. Delivery
workers claim due rows in priority order (crisis first), respect the platform's rate limits,
retry what failed for a passing reason, honour ``retry_after``, stop at a person who blocked
the bot, and mark every row sent exactly once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import Integer, bindparam, tuple_, update
from sqlalchemy.orm.attributes import set_committed_value
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from core.bulk import insert_rows, update_rows
from core.clock import Clock
from core.db import Database
from core.messages import Outbound, Priority, split_text
from core.models import ButtonToken, OutboxMessage, Person, WebTranscript

log = logging.getLogger(__name__)

STALE_CLAIM = timedelta(seconds=60)
MAX_BACKOFF = 300.0
GIVE_UP_AFTER = 40  # attempts, for everything but crisis messages, which never give up


@dataclass(frozen=True)
class SendOutcome:
    """What happened when a row was handed to the platform."""

    status: str  # "sent", "retry", "blocked", "failed"
    retry_after: float | None = None
    message_id: str | None = None
    error: str = ""

    @classmethod
    def sent(cls, message_id: str | None = None) -> SendOutcome:
        """The platform accepted the message."""
        return cls("sent", message_id=message_id)


class HoldPolicy(Protocol):
    """Says which claimed rows must wait (quiet hours), and until when."""

    async def held(
        self, session: AsyncSession, rows: Sequence[OutboxMessage], now: datetime
    ) -> dict[int, datetime]:
        """Map the id of every row that must wait to the time it may go."""
        ...


class Sender(Protocol):
    """A channel's way of putting one outbox row on the platform."""

    channel: str

    async def send(self, row: OutboxMessage) -> SendOutcome:
        """Send ``row`` and say what happened; never raise for platform errors."""
        ...


async def queue(
    session: AsyncSession, messages: Sequence[Outbound], now: datetime, state_seq: int | None = None
) -> int:
    """Add ``messages`` to the outbox in the caller's transaction (nothing is committed here).

    Buttons become server-side tokens bound to the message's person and ``state_seq``; long
    texts are split into parts, the buttons going with the last part. This is ``queue_many``
    (one INSERT per table, at once rather than at the session's next flush); returns the
    outbox rows added.
    """
    return await queue_many(session, messages, now, state_seq)


async def queue_many(
    session: AsyncSession,
    messages: Iterable[Outbound],
    now: datetime,
    state_seq: int | None = None,
) -> int:
    """Add ``messages`` to the outbox in the caller's transaction: one INSERT per table.

    Each button becomes a token (``now`` in ms as 12 hex digits, then 16 random URL-safe
    characters) bound to the message's person (to nobody for a staff button) and to its
    ``seq_holder``'s ``state_seq`` (else ``state_seq``); a long text is split into parts, the
    buttons and document going with the last one. The rows go at once with the driver's
    executemany (``core.bulk``), without ORM objects, so they are in the database before
    anything the session has not flushed yet; that needs no flush first, since the only foreign
    key here, a token's person, is a person with an id, which only a flush gives. Their ids are
    not returned. ``messages`` is read once, so a generator keeps only one message alive at a
    time (thousands in a check-in sweep). Returns the outbox rows added.
    """
    labels: dict[str, str] = {}  # a label as JSON, for json.dumps(drawn)'s exact text
    # token_urlsafe(12) per button, drawn 64 at a time, then up to 1,024 (12 bytes are 16
    # characters): a turn draws little, a sweep seldom. The random part comes after the time
    # in milliseconds as 12 hex digits, so that new tokens go at the end of the primary key's
    # index instead of anywhere in it: a 100,000-person check-in sweep (500,000 tokens) took
    # 17.5 s with random keys and 12.5 s with these (bench (d), SQLite). The time says no more
    # than the message's own date; the 96 random bits are what make a token unguessable.
    prefix = f"{int(now.timestamp() * 1000):012x}"
    raw, at, draw = "", 0, 64
    token_rows: list[tuple[object, ...]] = []
    outbox_rows: list[tuple[object, ...]] = []
    for message in messages:
        seq = getattr(message.seq_holder, "state_seq", state_seq) or 0
        drawn: list[str] = []
        for line in message.buttons:
            drawn_line: list[str] = []
            for button in line:
                if message.person_id is None and button.scope != "staff":
                    raise ValueError("buttons need a person to bind their tokens to")
                if at == len(raw):
                    raw, at, draw = secrets.token_urlsafe(12 * draw), 0, min(2 * draw, 1024)
                token, at = prefix + raw[at : at + 16], at + 16
                person_id = None if button.scope == "staff" else message.person_id
                token_rows.append((token, person_id, button.action, button.arg, seq))
                label = labels.get(button.label)
                if label is None:
                    label = labels[button.label] = json.dumps(button.label, ensure_ascii=False)
                # Tokens are URL-safe base64: nothing in them needs escaping.
                drawn_line.append(f'{{"label": {label}, "token": "{token}"}}')
            drawn.append("[" + ", ".join(drawn_line) + "]")
        parts = split_text(message.text) if message.text else [""]
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            document = message.document if last else None
            outbox_rows.append(
                (
                    message.channel,
                    message.chat_id,
                    message.chat_kind,
                    message.person_id,
                    int(message.priority),
                    message.kind,
                    part,
                    "[" + ", ".join(drawn) + "]" if last else "[]",
                    document[0] if document else None,
                    document[1] if document else None,
                    f"{message.dedupe_key}#{index}"
                    if message.dedupe_key and index
                    else message.dedupe_key,
                )
            )
    await insert_rows(
        session,
        ButtonToken.__table__,  # type: ignore[attr-defined]
        ("token", "person_id", "action", "arg", "state_seq"),
        token_rows,
        same={"created_at": now},
    )
    # Columns not named (hold_until, claimed_at, sent_at, platform_message_id, error) are
    # NULL, as for a row that was never tried.
    await insert_rows(
        session,
        OutboxMessage.__table__,  # type: ignore[attr-defined]
        (
            "channel",
            "chat_id",
            "chat_kind",
            "person_id",
            "priority",
            "kind",
            "text",
            "buttons",
            "document_name",
            "document_body",
            "dedupe_key",
        ),
        outbox_rows,
        same={"status": "pending", "attempts": 0, "due_at": now, "created_at": now},
    )
    return len(outbox_rows)


class TokenBucket:
    """A rate limit: ``rate`` per second with bursts up to ``burst``."""

    def __init__(self, rate: float, burst: float, monotonic: Callable[[], float]) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.monotonic = monotonic
        self.stamp = monotonic()

    def _refill(self) -> None:
        now = self.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def ready(self) -> bool:
        """Whether one more send fits now."""
        self._refill()
        return self.tokens >= 1

    def take(self) -> None:
        """Spend one send."""
        self._refill()
        self.tokens -= 1

    def wait_time(self) -> float:
        """Seconds until one more send fits."""
        self._refill()
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) / self.rate


class SlidingWindow:
    """A rate limit: at most ``limit`` sends in any ``window`` seconds.

    Used for the overall limit, where a token bucket's full burst on top of its refill would
    let nearly twice the limit go out in the first second of a broadcast.
    """

    def __init__(self, limit: float, window: float, monotonic: Callable[[], float]) -> None:
        self.limit = max(1, int(limit))
        self.window = window
        self.monotonic = monotonic
        self.stamps: deque[float] = deque()

    def _forget(self) -> float:
        now = self.monotonic()
        while self.stamps and self.stamps[0] <= now - self.window:
            self.stamps.popleft()
        return now

    def ready(self, reserve: int = 0) -> bool:
        """Whether one more send fits now, leaving ``reserve`` sends free."""
        return self.free(reserve) > 0

    def take(self) -> None:
        """Spend one send."""
        self.stamps.append(self._forget())

    def free(self, reserve: int = 0) -> int:
        """How many more sends fit now, leaving ``reserve`` sends free."""
        self._forget()
        return max(0, self.limit - reserve - len(self.stamps))

    def wait_time(self, reserve: int = 0) -> float:
        """Seconds until one more send fits, leaving ``reserve`` sends free."""
        now = self._forget()
        room = max(1, self.limit - reserve)
        if len(self.stamps) < room:
            return 0.0
        # The oldest stamps must leave the window until fewer than ``room`` remain.
        return max(0.0, self.stamps[len(self.stamps) - room] + self.window - now)


@dataclass
class RateLimits:
    """A platform's limits: overall, per private chat, per group (Telegram's by default).

    Overall at most ``global_per_second`` in any second; a private chat ``chat_per_second``
    after a burst of ``chat_burst``; a group ``group_per_minute``.
    """

    global_per_second: float = 30.0
    chat_per_second: float = 1.0
    chat_burst: float = 3.0
    group_per_minute: float = 20.0
    #: Sends of each second kept for crisis and escalation messages (0: none), so that a crisis
    #: arriving while replies and broadcasts fill the overall limit goes at once.
    urgent_reserve: int = 0
    monotonic: Callable[[], float] = time.monotonic
    _global: SlidingWindow | None = field(default=None, init=False)
    _sends: SlidingWindow | None = field(default=None, init=False)
    _chats: dict[str, TokenBucket] = field(default_factory=dict, init=False)
    _limited: set[str] = field(default_factory=set, init=False)

    def _bucket(self, chat_id: str, chat_kind: str) -> TokenBucket:
        bucket = self._chats.get(chat_id)
        if bucket is None:
            if chat_kind == "private":
                bucket = TokenBucket(self.chat_per_second, self.chat_burst, self.monotonic)
            else:
                bucket = TokenBucket(self.group_per_minute / 60.0, 3.0, self.monotonic)
            self._chats[chat_id] = bucket
            if len(self._chats) > 50_000:  # forget idle chats; a fresh bucket starts full
                for key in list(self._chats)[:10_000]:
                    del self._chats[key]
        return bucket

    def _window(self) -> SlidingWindow:
        if self._global is None:
            self._global = SlidingWindow(self.global_per_second, 1.0, self.monotonic)
        return self._global

    def _reserve(self, urgent: bool) -> int:
        return 0 if urgent else min(self.urgent_reserve, self._window().limit - 1)

    def allows(self, chat_id: str, chat_kind: str, *, urgent: bool = True) -> bool:
        """Whether a message to this chat may go now (non-urgent ones leave the reserve)."""
        window = self._window()
        return window.ready(self._reserve(urgent)) and self._bucket(chat_id, chat_kind).ready()

    def room(self, *, urgent: bool = True) -> int:
        """How many more messages the overall limit lets go now (non-urgent: less the reserve)."""
        return self._window().free(self._reserve(urgent))

    def spend(self, chat_id: str, chat_kind: str) -> None:
        """Count one message to this chat."""
        assert self._global is not None
        self._global.take()
        bucket = self._bucket(chat_id, chat_kind)
        bucket.take()
        if not bucket.ready():
            self._limited.add(chat_id)

    def limited_chats(self) -> set[str]:
        """Chats that have used up their own limit for now."""
        for chat_id in list(self._limited):
            bucket = self._chats.get(chat_id)
            if bucket is None or bucket.ready():
                self._limited.discard(chat_id)
        return set(self._limited)

    def global_wait(self) -> float:
        """Seconds until the overall limit allows one more message that is not urgent.

        When nothing could be claimed, what waits is not urgent (urgent rows may use the
        reserve, and a new one wakes the worker), so this counts the reserve: without it a
        worker whose 29 claims of the second left the 30th free slept its fallback half second
        instead, and a broadcast went at 26 a second rather than 29.
        """
        if self._global is None:
            return 0.0
        return self._global.wait_time(min(self.urgent_reserve, self._global.limit - 1))

    async def pace_send(self) -> None:
        """Wait until one more send fits the overall limit counted at the moment of sending.

        Claims are counted when rows are claimed; a batch whose sends spread out (each send is
        followed by its own database write) would otherwise overlap the next batch's sends
        and put up to twice the limit on the wire within one second.
        """
        if self._sends is None:
            self._sends = SlidingWindow(self.global_per_second, 1.0, self.monotonic)
        for _ in range(100):  # bounded: a clock that stands still must not hang delivery
            wait = self._sends.wait_time()
            if wait <= 0:
                break
            await asyncio.sleep(wait)
        self._sends.take()


def backoff(attempts: int) -> float:
    """Seconds to wait before attempt ``attempts + 1`` after a passing failure."""
    return float(min(MAX_BACKOFF, 2 ** min(attempts, 10)))


_OUTBOX = OutboxMessage.__table__  # type: ignore[attr-defined]
#: Marks one sent row (executed for many at once): bind ``row_id``, ``message_id``, ``sent_at``.
_RECORD_SENT = (
    _OUTBOX.update()
    .where(_OUTBOX.c.id == bindparam("row_id"))
    .values(
        status="sent",
        attempts=_OUTBOX.c.attempts + 1,
        claimed_at=None,
        sent_at=bindparam("sent_at"),
        platform_message_id=bindparam("message_id"),
        error=None,
    )
)
_UNSYNCHRONISED = {"synchronize_session": False}
#: Marks the claimed rows: bind ``ids`` (a list) and ``claimed_at``.
_MARK_SENDING = (
    _OUTBOX.update()
    .where(_OUTBOX.c.id.in_(bindparam("ids", expanding=True)))
    .values(status="sending", claimed_at=bindparam("claimed_at"))
)
#: Rows a claim reads for each message the overall limit lets go now, so that rows passed
#: over (a chat's second message in the sweep, quiet hours) leave enough for the room; when
#: they do not, the claim reads on (``DeliveryWorker._claim``).
READ_PER_SEND = 4


def _due_query(channel: str, *, limited: bool, after: bool, sqlite: bool) -> Any:
    """A claim's read: due pending rows of ``channel`` in priority order, bound to ``now``
    and ``size`` (and ``limited``, a list of chat ids to leave out, and ``after_priority``
    and ``after_id``, where the previous read ended).

    A chat with a message in flight (``sending``) or waiting out a retry (a pending row held
    until later) is left out in the same statement, not by a query of its own first. The
    status condition names both statuses, so that an index reaches a chat's sending and
    pending rows only, not every message it was ever sent. On SQLite each row read asks the
    index on (channel, chat_id, status) about its own chat. PostgreSQL gathers those chats
    once per read (a hashed subplan): a per-row probe, planned on the statistics of a table
    that a broadcast had just filled, became a scan of the channel per row (seconds). On
    PostgreSQL the rows read are locked, and rows another worker locked are skipped.
    """
    stalled = _OUTBOX.alias("stalled")
    now = bindparam("now", type_=_OUTBOX.c.due_at.type)
    stalled_chats = (
        select(stalled.c.chat_id)
        .where(stalled.c.channel == channel)
        .where(stalled.c.status.in_(("sending", "pending")))
        .where((stalled.c.status == "sending") | (stalled.c.hold_until > now))
    )
    query = (
        select(OutboxMessage)
        .where(col(OutboxMessage.channel) == channel)
        .where(col(OutboxMessage.status) == "pending")
        .where(col(OutboxMessage.due_at) <= now)
    )
    if sqlite:
        own_chat = stalled_chats.where(stalled.c.chat_id == _OUTBOX.c.chat_id)
        query = query.where(~own_chat.exists())
    else:
        query = query.where(col(OutboxMessage.chat_id).not_in(stalled_chats))
    if limited:
        query = query.where(col(OutboxMessage.chat_id).not_in(bindparam("limited", expanding=True)))
    if after:
        query = query.where(
            tuple_(col(OutboxMessage.priority), col(OutboxMessage.id))
            > tuple_(bindparam("after_priority"), bindparam("after_id"))
        )
    query = query.order_by(col(OutboxMessage.priority), col(OutboxMessage.id)).limit(
        bindparam("size", type_=Integer)
    )
    return query if sqlite else query.with_for_update(skip_locked=True)


class DeliveryWorker:
    """Sends one channel's outbox rows, in priority order, within its rate limits."""

    def __init__(
        self,
        db: Database,
        sender: Sender,
        clock: Clock,
        limits: RateLimits | None = None,
        *,
        batch: int = 300,
        concurrency: int = 16,
        worker_id: str = "worker",
        stale_claim: timedelta | None = None,
        hold: HoldPolicy | None = None,
    ) -> None:
        self.db = db
        self.sender = sender
        self.channel = sender.channel
        self.clock = clock
        self.limits = limits or RateLimits()
        self.batch = batch
        self.concurrency = concurrency
        self.worker_id = worker_id
        self.hold = hold
        self.stale_claim = stale_claim if stale_claim is not None else STALE_CLAIM
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._outcomes: list[tuple[OutboxMessage, SendOutcome, asyncio.Future[None]]] = []
        self._queries: dict[tuple[bool, bool], Any] = {}
        self._recorder: asyncio.Task[None] | None = None

    def wake(self) -> None:
        """Tell the worker there may be something new to send."""
        self._wake.set()

    def stop(self) -> None:
        """Ask the worker to finish what it is sending and stop."""
        self._stopping.set()
        self._wake.set()

    async def release_stale_claims(self) -> int:
        """Put rows claimed by a worker that died back in the queue (at least once)."""
        cutoff = self.clock.now() - self.stale_claim

        async def work(session: AsyncSession) -> int:
            result = await session.exec(
                update(OutboxMessage)
                .where(col(OutboxMessage.channel) == self.channel)
                .where(col(OutboxMessage.status) == "sending")
                .where(col(OutboxMessage.claimed_at) < cutoff)
                .values(status="pending", claimed_at=None)
            )
            return int(result.rowcount or 0)

        released = await self.db.run(work)
        if released:
            log.warning(
                "%s: %d rows claimed by a stopped worker are queued again", self.channel, released
            )
        return released

    async def run_forever(self) -> None:
        """Deliver until stopped, sleeping until woken or until the next row can go."""
        await self.release_stale_claims()
        while not self._stopping.is_set():
            # Cleared before the sweep, not after: a row queued while the sweep reads (and
            # missed by it) still finds the flag set, instead of waiting out the timeout.
            self._wake.clear()
            try:
                sent, wait = await self.deliver_due()
            except Exception:  # keep delivering: a crash here would silence everyone
                log.exception("%s delivery sweep failed; trying again shortly", self.channel)
                sent, wait = 0, 1.0
            if sent:
                continue
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=max(0.01, min(wait, 1.0)))
            except TimeoutError:
                pass

    async def deliver_due(self) -> tuple[int, float]:
        """Claim and send what may go now; return (rows handled, seconds until more may)."""
        if not self.limits.room():  # nothing can go, not even a crisis: no claim
            return 0, self.limits.global_wait() or 0.5
        now = self.clock.now()
        claimed = await self.db.run(lambda s: self._claim(s, now))
        if not claimed:
            return 0, self.limits.global_wait() or 0.5
        semaphore = asyncio.Semaphore(self.concurrency)

        async def one(row: OutboxMessage) -> None:
            async with semaphore:
                await self.limits.pace_send()
                await self._send_one(row)

        await asyncio.gather(*(one(row) for row in claimed))
        return len(claimed), 0.0

    async def _claim(self, session: AsyncSession, now: datetime) -> list[OutboxMessage]:
        # Chats that cannot take a message now (one in flight, one waiting out a retry, their
        # own limit used up) are left out in the query itself, so that one chat with hundreds of
        # waiting rows (a staff group at 20 a minute) never fills the read and starves
        # everyone else.
        limited = sorted(self.limits.limited_chats())
        chosen: list[OutboxMessage] = []
        held_until: list[tuple[int | None, datetime]] = []
        seen: set[str] = set()
        left, after = self.batch, None
        # Read what the overall limit can let go now (a few rows per send, for those passed
        # over), and read on only while rows were passed over and there is room left: the
        # rows chosen are those a single read of ``batch`` rows would give.
        while left > 0 and (room := self.limits.room()) > 0:
            size = min(left, room * READ_PER_SEND)
            params: dict[str, Any] = {"now": now, "size": size}
            if limited:
                params["limited"] = limited
            if after is not None:
                params["after_priority"], params["after_id"] = after
            query = self._query(bool(limited), after is not None)
            rows: Sequence[OutboxMessage] = (await session.exec(query, params=params)).all()
            left -= len(rows)
            held: dict[int, datetime] = {}
            if self.hold is not None and rows:
                held = await self.hold.held(session, rows, now)
            for row in rows:
                if row.id in held:  # quiet hours: due again when they end, not re-read each sweep
                    held_until.append((row.id, held[row.id]))
                    continue
                # One message per chat per sweep keeps each chat's messages in order.
                if row.chat_id in seen:
                    continue
                seen.add(row.chat_id)
                urgent = row.priority <= Priority.ESCALATION
                if not self.limits.allows(row.chat_id, row.chat_kind, urgent=urgent):
                    continue
                self.limits.spend(row.chat_id, row.chat_kind)
                chosen.append(row)
            if len(rows) < size:
                break  # nothing more is due
            # In priority order, past the urgent rows only the room outside the reserve counts.
            last = rows[-1]
            if not self.limits.room(urgent=last.priority <= Priority.ESCALATION):
                break
            after = (last.priority, last.id)
        if held_until:
            await update_rows(session, _OUTBOX, ("id", "due_at"), held_until)
        if chosen:
            # One statement for the rows chosen; the loaded rows say so without a flush.
            await session.exec(
                _MARK_SENDING, params={"ids": [row.id for row in chosen], "claimed_at": now}
            )
            for row in chosen:
                set_committed_value(row, "status", "sending")
                set_committed_value(row, "claimed_at", now)
        return chosen

    def _query(self, limited: bool, after: bool) -> Any:
        key = (limited, after)
        query = self._queries.get(key)
        if query is None:
            query = self._queries[key] = _due_query(
                self.channel, limited=limited, after=after, sqlite=self.db.is_sqlite
            )
        return query

    async def _send_one(self, row: OutboxMessage) -> None:
        try:
            outcome = await self.sender.send(row)
        except Exception as exc:  # a sender bug must not lose the row
            log.exception("%s sender raised for outbox row %s", self.channel, row.id)
            outcome = SendOutcome("retry", error=f"{type(exc).__name__}: {exc}"[:500])
        await self._record_soon(row, outcome)

    async def _record_soon(self, row: OutboxMessage, outcome: SendOutcome) -> None:
        """Record ``outcome`` with the others that finished meanwhile; wait until committed.

        Outcomes are recorded together, in one transaction per round: while one round commits,
        the sends that finish wait for the next, which starts as soon as it ends (no timer, so
        a crisis row is recorded at once when nothing else is being recorded). Until its
        round commits, a sent row stays ``sending``: a worker killed in between leaves it to
        ``release_stale_claims`` and it is sent again after ``stale_claim`` (at least once).
        """
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._outcomes.append((row, outcome, done))
        if self._recorder is None or self._recorder.done():
            self._recorder = asyncio.create_task(self._record_rounds())
        await done

    async def _record_rounds(self) -> None:
        while self._outcomes:
            batch, self._outcomes = self._outcomes, []
            try:
                await self.db.run(lambda s, b=batch: self._record_all(s, b))  # type: ignore[misc]
            except BaseException as exc:
                for _row, _outcome, done in batch:
                    if not done.done():
                        done.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
            else:
                for _row, _outcome, done in batch:
                    if not done.done():
                        done.set_result(None)

    async def _record_all(
        self,
        session: AsyncSession,
        batch: Sequence[tuple[OutboxMessage, SendOutcome, asyncio.Future[None]]],
    ) -> None:
        now = self.clock.now()
        sent = [
            {"row_id": row.id, "message_id": outcome.message_id, "sent_at": now}
            for row, outcome, _done in batch
            if outcome.status == "sent"
        ]
        if sent:
            # One statement for every row that went out (a row erased with its person while in
            # flight matches nothing).
            await session.execute(_RECORD_SENT, sent, execution_options=_UNSYNCHRONISED)
        for row, outcome, _done in batch:
            if outcome.status != "sent":
                await self._record(session, row, outcome)

    async def _record(
        self, session: AsyncSession, row: OutboxMessage, outcome: SendOutcome
    ) -> None:
        now = self.clock.now()
        fresh = await session.get(OutboxMessage, row.id)
        if fresh is None:  # erased with its person while in flight
            return
        fresh.attempts += 1
        fresh.claimed_at = None
        if outcome.status == "sent":
            fresh.status = "sent"
            fresh.sent_at = now
            fresh.platform_message_id = outcome.message_id
            fresh.error = None
        elif outcome.status == "blocked":
            fresh.status = "blocked"
            fresh.error = outcome.error[:500]
            await self._mark_blocked(session, fresh, now)
        elif outcome.status == "failed" or (
            fresh.attempts >= GIVE_UP_AFTER and fresh.priority != Priority.CRISIS
        ):
            fresh.status = "failed"
            fresh.error = outcome.error[:500]
            log.error("%s outbox row %s failed for good: %s", self.channel, fresh.id, outcome.error)
        else:
            wait = (
                outcome.retry_after if outcome.retry_after is not None else backoff(fresh.attempts)
            )
            fresh.status = "pending"
            fresh.hold_until = now + timedelta(seconds=wait)
            fresh.error = outcome.error[:500]
        session.add(fresh)

    async def _mark_blocked(self, session: AsyncSession, row: OutboxMessage, now: datetime) -> None:
        await session.exec(
            update(OutboxMessage)
            .where(col(OutboxMessage.channel) == row.channel)
            .where(col(OutboxMessage.chat_id) == row.chat_id)
            .where(col(OutboxMessage.status) == "pending")
            .values(status="blocked", error="the person blocked the bot")
        )
        if row.chat_kind == "private":
            await session.exec(
                update(Person)
                .where(col(Person.channel) == row.channel)
                .where(col(Person.chat_id) == row.chat_id)
                .values(blocked_at=now)
            )


class WebSender:
    """Delivers web-chat rows into the transcript the page reads.

    The transcript row carries the outbox id under a unique constraint, so a row sent again
    after a crash shows once; ``on_delivered`` tells open pages to fetch it.
    """

    channel = "web"

    def __init__(self, db: Database, on_delivered: Callable[[str], None] | None = None) -> None:
        self.db = db
        self.on_delivered = on_delivered

    async def send(self, row: OutboxMessage) -> SendOutcome:
        """Write ``row`` into its chat's transcript and notify the page."""

        async def work(session: AsyncSession) -> None:
            existing = await session.exec(
                select(WebTranscript.id).where(WebTranscript.outbox_id == row.id)
            )
            if existing.first() is None:
                session.add(
                    WebTranscript(
                        chat_id=row.chat_id,
                        direction="out",
                        text=row.text,
                        buttons=row.buttons,
                        document_name=row.document_name,
                        document_body=row.document_body,
                        outbox_id=row.id,
                        created_at=row.created_at,
                    )
                )

        await self.db.run(work)
        if self.on_delivered is not None:
            self.on_delivered(row.chat_id)
        return SendOutcome.sent(str(row.id))
