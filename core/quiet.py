"""Quiet hours: no reminder, check-in, follow-up or broadcast reaches a person at night.

The hold is applied where delivery workers claim rows, so every feature's outreach waits,
whoever queued it. Crisis and escalation messages never wait, and neither does a reply to
something the person has just written (priority ``REPLY``): only what the bot sends on its own
initiative (``REMINDER`` and ``BROADCAST``) is held until the quiet hours end in the person's
site timezone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from core.clock import as_utc
from core.messages import Priority
from core.models import OutboxMessage, Person
from core.sites import SiteDirectory


def parse_clock_time(text: str) -> time:
    """Read ``"20:00"`` (or ``"8:05"``, ``"20：00"``) as a time of day; ValueError if it is not."""
    cleaned = text.strip().replace("：", ":").replace(".", ":")
    hours, sep, minutes = cleaned.partition(":")
    if not sep or not hours.isdigit() or not minutes.isdigit() or len(minutes) != 2:
        raise ValueError(f"not a time of day: {text!r}")
    hour, minute = int(hours), int(minutes)
    if not (0 <= hour <= 23 and 0 <= minute <= 59):
        raise ValueError(f"not a time of day: {text!r}")
    return time(hour, minute)


def parse_window(text: str) -> tuple[time, time]:
    """Read ``"22:00-08:00"`` as the (start, end) of a daily window."""
    start, sep, end = text.replace("–", "-").partition("-")
    if not sep:
        raise ValueError(f"not a window such as 22:00-08:00: {text!r}")
    return parse_clock_time(start), parse_clock_time(end)


@dataclass(frozen=True)
class QuietHours:
    """A nightly window, in each site's own timezone, in which outreach is held."""

    start: time = time(22, 0)
    end: time = time(8, 0)

    @classmethod
    def from_text(cls, text: str) -> QuietHours:
        """Quiet hours from configuration (``"22:00-08:00"``; an empty text turns them off)."""
        if not text.strip():
            return cls(time(0, 0), time(0, 0))
        start, end = parse_window(text)
        return cls(start, end)

    @property
    def enabled(self) -> bool:
        """Whether the window has any length."""
        return self.start != self.end

    def contains(self, local: time) -> bool:
        """Whether a local time of day falls inside the window."""
        if not self.enabled:
            return False
        if self.start < self.end:
            return self.start <= local < self.end
        return local >= self.start or local < self.end

    def release(self, moment: datetime, tz: ZoneInfo) -> datetime | None:
        """When a message due at ``moment`` may go: None if now, else the window's end (UTC)."""
        local = as_utc(moment).astimezone(tz)
        if not self.contains(local.time().replace(second=0, microsecond=0)):
            return None
        day = local.date()
        if local.time() >= self.end:  # before midnight: the window ends tomorrow morning
            day += timedelta(days=1)
        return datetime.combine(day, self.end, tzinfo=tz).astimezone(UTC)


def is_outreach(priority: int) -> bool:
    """Whether a message of this priority is the bot's own initiative, which quiet hours hold."""
    return priority >= Priority.REMINDER


@dataclass(frozen=True)
class QuietHold:
    """The delivery worker's quiet-hours check: which claimed rows must wait, and until when."""

    hours: QuietHours
    sites: SiteDirectory

    def tz_of(self, site_code: str | None) -> ZoneInfo:
        """The timezone of a person's site (the first site's when they have none)."""
        site = self.sites.get(site_code) or self.sites.default()
        return site.tz

    async def held(
        self, session: AsyncSession, rows: Sequence[OutboxMessage], now: datetime
    ) -> dict[int, datetime]:
        """For each outreach row to a person now inside quiet hours, the time it may go."""
        if not self.hours.enabled:
            return {}
        candidates = [
            r for r in rows if r.person_id is not None and r.id and is_outreach(r.priority)
        ]
        if not candidates:
            return {}
        person_ids = {r.person_id for r in candidates}
        found = await session.exec(
            select(Person.id, Person.site_code).where(col(Person.id).in_(person_ids))
        )
        site_of = {pid: code for pid, code in found.all()}
        held: dict[int, datetime] = {}
        for row in candidates:
            release = self.hours.release(now, self.tz_of(site_of.get(row.person_id)))
            if release is not None and row.id is not None:
                held[row.id] = release
        return held
