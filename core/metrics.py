"""Operational figures for ``/metrics``, read from the database on every scrape.

Several web and worker processes may share one PostgreSQL database, so nothing here is a
per-process counter: every figure is a gauge computed by a few aggregate queries that stay on
indexes (``ix_outbox_pending``, ``ix_escalation_due``, ``inbound_seen.seen_at``,
``checkin.sent_at``, ``ix_broadcast_due``) or on small tables, and never read a message, a
name or a case code. Labels are fixed vocabularies only: channel, priority, status, risk level.

``render`` writes the Prometheus text exposition format (version 0.0.4) by hand.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import case
from sqlmodel import col, func, select
from sqlmodel.ext.asyncio.session import AsyncSession

from core.booking import Booking
from core.broadcasts import Broadcast
from core.checkins import Checkin
from core.clock import as_utc
from core.escalation import Escalation, OnCall
from core.messages import Priority
from core.models import InboundSeen, OutboxMessage
from core.risk import RiskLevel

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

INBOUND_WINDOW = timedelta(minutes=5)
BOOKING_WINDOW = timedelta(hours=24)
CHECKIN_WINDOW = timedelta(hours=24)
#: Outbox states of rows that will not be sent: given up after errors, the person blocked the
#: bot, or the broadcast they belonged to was cancelled.
UNDELIVERED = ("failed", "blocked", "cancelled")
BROADCASTS_UNDER_WAY = ("scheduled", "sending")
#: Levels whose series are always present, so that an alert on them never sees "no data".
ESCALATION_LEVELS = (RiskLevel.MODERATE, RiskLevel.HIGH, RiskLevel.IMMINENT)

_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
#: Channel names come from the code ("telegram", "web"); anything else is not a label value.
_CHANNEL = re.compile(r"^[a-z][a-z0-9_]{0,15}$")
#: The channels core speaks on; each has its outbox and inbound series even when idle.
CHANNELS = ("telegram", "web")
OTHER = "other"


@dataclass(frozen=True)
class Sample:
    """One value of a metric, with its labels."""

    labels: tuple[tuple[str, str], ...]
    value: float


@dataclass
class Gauge:
    """One metric family: a name, a help text, and its samples."""

    name: str
    help: str
    samples: list[Sample] = field(default_factory=list)

    def set(self, value: float, **labels: str) -> Gauge:
        """Add a sample (labels in the order given)."""
        self.samples.append(Sample(tuple(labels.items()), float(value)))
        return self


def priority_label(priority: int) -> str:
    """``crisis``, ``escalation``, … for a stored priority (its number if unknown)."""
    try:
        return Priority(priority).name.lower()
    except ValueError:
        return str(int(priority))


def level_label(level: int) -> str:
    """``moderate``, ``high``, ``imminent`` … for a stored risk level (its number if unknown)."""
    try:
        return RiskLevel(level).label
    except ValueError:
        return str(int(level))


def _age(now: datetime, since: datetime | None) -> float:
    if since is None:
        return 0.0
    return max(0.0, (now - as_utc(since)).total_seconds())


async def collect(
    session: AsyncSession,
    now: datetime,
    *,
    stale_claim: timedelta,
    channels: Sequence[str] = CHANNELS,
) -> list[Gauge]:
    """Every figure, as of ``now``.

    Each of ``channels`` always has its series (zero when idle), so that an alert never sees
    "no data"; rows of any other channel are counted under ``channel="other"``.
    """
    channels = sorted(set(channels))
    for name in channels:
        if not _CHANNEL.match(name) or name == OTHER:
            raise ValueError(f"not a channel name: {name!r}")
    gauges: list[Gauge] = []
    gauges += await _outbox(session, now, stale_claim, channels)
    gauges += await _escalations(session, now)
    gauges += await _activity(session, now, channels)
    return gauges


def _per_channel(channels: Sequence[str], condition: Any = None) -> list[Any]:
    """``sum(channel = c [and condition])`` for each channel: counted in the same pass.

    Grouping by channel instead would let SQLite, once ANALYZE has run, prefer a full scan of
    ``ix_outbox_chat`` (which starts with the channel) over a search of ``ix_outbox_pending``.
    """
    channel = col(OutboxMessage.channel)
    sums: list[Any] = []
    for name in channels:
        match = channel == name if condition is None else (channel == name) & condition
        sums.append(func.sum(case((match, 1), else_=0)))
    return sums


async def _outbox(
    session: AsyncSession, now: datetime, stale_claim: timedelta, channels: Sequence[str]
) -> list[Gauge]:
    status = col(OutboxMessage.status)
    priority = col(OutboxMessage.priority)
    # Pending rows: one range of ix_outbox_pending, already in priority order. The age counts
    # from ``due_at``, so a reminder held for quiet hours, or a broadcast for later, is not late.
    pending_rows: Sequence[Sequence[Any]] = (
        await session.exec(
            select(
                priority, func.count(), func.min(col(OutboxMessage.due_at)), *_per_channel(channels)
            )
            .where(status == "pending")
            .group_by(priority)
        )
    ).all()
    stale_claimed = col(OutboxMessage.claimed_at) < now - stale_claim
    sending_row: Sequence[Any] = (
        await session.exec(
            select(
                func.count(),
                func.sum(case((stale_claimed, 1), else_=0)),
                *_per_channel(channels),
                *_per_channel(channels, stale_claimed),
            ).where(status == "sending")
        )
    ).one()
    undelivered_rows = (
        await session.exec(
            select(OutboxMessage.status, OutboxMessage.priority, func.count())
            .where(status.in_(UNDELIVERED))
            .group_by(status, priority)
        )
    ).all()

    width = len(channels)
    priorities = [p.name.lower() for p in Priority]
    pending_count: dict[tuple[str, str], int] = {(c, p): 0 for c in channels for p in priorities}
    oldest: dict[str, datetime | None] = dict.fromkeys(priorities)
    for row in pending_rows:
        label = priority_label(row[0])
        total = int(row[1])
        counts = [int(n or 0) for n in row[3:]]
        for channel, count in zip(channels, counts, strict=True):
            pending_count[(channel, label)] = count
        if total > sum(counts):  # a channel this code does not know
            pending_count[(OTHER, label)] = total - sum(counts)
        if row[2] is not None:
            oldest[label] = as_utc(row[2])
    figures = [int(n or 0) for n in sending_row]
    total, total_stale = figures[0], figures[1]
    sending = dict(zip(channels, figures[2 : 2 + width], strict=True))
    stale = dict(zip(channels, figures[2 + width :], strict=True))
    if total > sum(sending.values()) or total_stale > sum(stale.values()):
        sending[OTHER] = total - sum(sending.values())
        stale[OTHER] = total_stale - sum(stale.values())
    undelivered: dict[tuple[str, str], int] = {(s, p): 0 for s in UNDELIVERED for p in priorities}
    for state, number, count in undelivered_rows:
        key = (state, priority_label(number))
        undelivered[key] = undelivered.get(key, 0) + int(count)

    pending_gauge = Gauge(
        "anxin_outbox_pending",
        "Outbox rows waiting to be sent (due now, held for quiet hours, or waiting out a retry).",
    )
    for (channel, label), count in pending_count.items():
        pending_gauge.set(count, channel=channel, priority=label)
    age_gauge = Gauge(
        "anxin_outbox_oldest_pending_age_seconds",
        "Seconds the oldest due, unsent outbox row of this priority has been waiting "
        "(0 when none). Crisis and escalation rows should go within seconds.",
    )
    for label, since in oldest.items():
        age_gauge.set(_age(now, since), priority=label)
    sending_gauge = Gauge(
        "anxin_outbox_sending", "Outbox rows claimed by a delivery worker and not yet recorded."
    )
    stale_gauge = Gauge(
        "anxin_outbox_stale_claims",
        f"Outbox rows claimed more than {stale_claim.total_seconds():g} s ago (the stale-claim "
        "age): their worker probably died; they are queued again by the next release sweep.",
    )
    for channel in sending:
        sending_gauge.set(sending[channel], channel=channel)
        stale_gauge.set(stale[channel], channel=channel)
    undelivered_gauge = Gauge(
        "anxin_outbox_undelivered",
        "Outbox rows that will not be sent, kept since the database began: failed (given up "
        "after errors), blocked (the person blocked the bot), cancelled (broadcast cancelled).",
    )
    for (state, label), count in sorted(undelivered.items()):
        undelivered_gauge.set(count, status=state, priority=label)
    return [pending_gauge, age_gauge, sending_gauge, stale_gauge, undelivered_gauge]


async def _escalations(session: AsyncSession, now: datetime) -> list[Gauge]:
    open_rows = (
        await session.exec(
            select(
                Escalation.level,
                func.count(),
                func.min(col(Escalation.created_at)),
                func.min(col(Escalation.next_page_at)),
            )
            .where(col(Escalation.status) == "open")
            .group_by(col(Escalation.level))
        )
    ).all()
    claimed_rows = (
        await session.exec(
            select(Escalation.level, func.count())
            .where(col(Escalation.status) == "claimed")
            .group_by(col(Escalation.level))
        )
    ).all()
    on_call = (await session.exec(select(func.count()).select_from(OnCall))).one()

    levels = [level.label for level in ESCALATION_LEVELS]
    unclaimed = dict.fromkeys(levels, 0)
    claimed = dict.fromkeys(levels, 0)
    oldest: datetime | None = None
    next_page: datetime | None = None
    for level, count, created, page_at in open_rows:
        label = level_label(level)
        unclaimed[label] = unclaimed.get(label, 0) + int(count)
        if created is not None:
            oldest = as_utc(created) if oldest is None else min(oldest, as_utc(created))
        if page_at is not None:
            next_page = as_utc(page_at) if next_page is None else min(next_page, as_utc(page_at))
    for level, count in claimed_rows:
        label = level_label(level)
        claimed[label] = claimed.get(label, 0) + int(count)

    unclaimed_gauge = Gauge(
        "anxin_escalations_unclaimed",
        "Open escalation cards nobody has claimed yet, by risk level.",
    )
    for label, count in unclaimed.items():
        unclaimed_gauge.set(count, level=label)
    claimed_gauge = Gauge(
        "anxin_escalations_claimed",
        "Escalations a counselor has claimed and not yet resolved, by risk level.",
    )
    for label, count in claimed.items():
        claimed_gauge.set(count, level=label)
    return [
        unclaimed_gauge,
        Gauge(
            "anxin_escalation_oldest_unclaimed_age_seconds",
            "Seconds since the oldest unclaimed escalation card was opened (0 when none).",
        ).set(_age(now, oldest)),
        Gauge(
            "anxin_escalation_repage_overdue_seconds",
            "Seconds an unclaimed card's re-page is past due (0 when none is): the scheduler "
            "re-pages every 15 s, so a large value means no scheduler is running.",
        ).set(_age(now, next_page)),
        claimed_gauge,
        Gauge("anxin_counselors_on_call", "Counselors on duty now (/oncall on).").set(on_call),
    ]


async def _activity(session: AsyncSession, now: datetime, channels: Sequence[str]) -> list[Gauge]:
    seen = col(InboundSeen.channel)
    # (typed by hand: with one fixed column the checker takes the row for a scalar)
    inbound_row = cast(
        Sequence[Any],
        (
            await session.exec(
                select(
                    func.count(),
                    *[func.sum(case((seen == name, 1), else_=0)) for name in channels],
                ).where(col(InboundSeen.seen_at) >= now - INBOUND_WINDOW)
            )
        ).one(),
    )
    starts = col(Booking.starts_at)
    bookings = (
        await session.exec(
            select(func.count())
            .select_from(Booking)
            .where(col(Booking.status) == "booked")
            .where(starts >= now)
            .where(starts < now + BOOKING_WINDOW)
        )
    ).one()
    checkins = (
        await session.exec(
            select(func.count())
            .select_from(Checkin)
            .where(col(Checkin.sent_at) >= now - CHECKIN_WINDOW)
        )
    ).one()
    broadcast_rows = (
        await session.exec(
            select(Broadcast.status, func.count())
            .where(col(Broadcast.status).in_(BROADCASTS_UNDER_WAY))
            .group_by(col(Broadcast.status))
        )
    ).all()

    inbound_total = int(inbound_row[0])
    inbound = [int(n or 0) for n in inbound_row[1:]]
    inbound_gauge = Gauge(
        "anxin_inbound_updates_5m",
        "Platform updates and web-chat messages handled in the last 5 minutes.",
    )
    for channel, count in zip(channels, inbound, strict=True):
        inbound_gauge.set(count, channel=channel)
    if inbound_total > sum(inbound):
        inbound_gauge.set(inbound_total - sum(inbound), channel=OTHER)
    under_way = dict.fromkeys(BROADCASTS_UNDER_WAY, 0)
    for status, count in broadcast_rows:
        under_way[status] = int(count)
    broadcast_gauge = Gauge(
        "anxin_broadcasts",
        "Broadcasts confirmed and waiting for their time (scheduled) or being queued (sending).",
    )
    for status, count in under_way.items():
        broadcast_gauge.set(count, status=status)
    return [
        inbound_gauge,
        Gauge(
            "anxin_bookings_upcoming_24h",
            "Booked one-to-one sessions starting in the next 24 hours.",
        ).set(bookings),
        Gauge(
            "anxin_checkins_queued_24h", "Check-ins queued to residents in the last 24 hours."
        ).set(checkins),
        broadcast_gauge,
    ]


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_value(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


def render(gauges: Iterable[Gauge]) -> str:
    """The Prometheus text exposition (0.0.4) of ``gauges``: HELP, TYPE, then each sample."""
    lines: list[str] = []
    names: set[str] = set()
    for gauge in gauges:
        if not _NAME.match(gauge.name) or gauge.name in names:
            raise ValueError(f"bad or repeated metric name {gauge.name!r}")
        names.add(gauge.name)
        lines.append(f"# HELP {gauge.name} {_escape_help(gauge.help)}")
        lines.append(f"# TYPE {gauge.name} gauge")
        for sample in gauge.samples:
            if sample.labels:
                for label, _ in sample.labels:
                    if not _LABEL_NAME.match(label) or label.startswith("__"):
                        raise ValueError(f"bad label name {label!r}")
                inner = ",".join(f'{k}="{_escape_value(v)}"' for k, v in sample.labels)
                lines.append(f"{gauge.name}{{{inner}}} {_number(sample.value)}")
            else:
                lines.append(f"{gauge.name} {_number(sample.value)}")
    return "\n".join(lines) + "\n"
