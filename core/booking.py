"""One-to-one counseling: counselors, their slots, residents' bookings, reminders and outcomes.

An admin registers a counselor (languages, sites, how they meet). The counselor adds
availability in plain words ("明天 14:00-17:00 50分钟") or step by step; it becomes slots that
never overlap (added under a lock on the counselor's row). A resident picks a day, a time and
optionally a topic. The database decides who gets a slot: a booking holds the slot's id in a
unique column, inserted with ``ON CONFLICT DO NOTHING``, so two residents racing for one slot
get exactly one booking and the other is offered the next free ones. Reminders are rows with a
due time, swept by the scheduler; after the session the counselor marks it held or no-show.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from babel.dates import format_date, format_time
from sqlalchemy import Column, DateTime, Index, Text, UniqueConstraint, delete, or_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Field, SQLModel, col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from core.access import Action, Role, may
from core.clock import as_utc
from core.conversation import ConversationEngine, MenuEntry, Turn
from core.i18n import babel_locale, format_when
from core.messages import Button, Outbound, Priority
from core.models import AuditLog, Person, RoleGrant
from core.outbox import queue
from core.risk import RiskLevel
from core.timephrase import Availability, PhraseError, parse_availability

if TYPE_CHECKING:
    from core.config import Settings

MEET_KINDS = ("chat", "phone", "link")
TOPICS = ("sleep", "worry", "mood", "family", "work", "grief", "other")
DAYS_SHOWN = 7
TIMES_SHOWN = 12
OFFERS_SHOWN = 3
SLOTS_LISTED = 10
RECENT_RISK = timedelta(days=14)
STEP_LENGTHS = (30, 45, 50, 60)
TOPIC_LIMIT = 200
NOTE_LIMIT = 2000


@dataclass(frozen=True)
class BookingRules:
    """Deployment choices for booking: when changes close, and the reminders sent."""

    cutoff: timedelta = timedelta(hours=2)
    reminders: tuple[tuple[str, timedelta], ...] = (
        ("24h", timedelta(hours=24)),
        ("1h", timedelta(hours=1)),
    )
    #: A chat session through the bot can be opened from this long before its start …
    chat_opens_before: timedelta = timedelta(minutes=10)
    #: … and is closed by the scheduler this long after its booked end if nobody ended it.
    chat_grace: timedelta = timedelta(minutes=30)

    @classmethod
    def from_settings(cls, settings: Settings) -> BookingRules:
        """The rules a deployment chose (``ANXIN_BOOKING_CUTOFF_MINUTES``)."""
        return cls(cutoff=timedelta(minutes=settings.booking_cutoff_minutes))


def _ts(nullable: bool = False) -> Any:
    return Field(
        default=None if nullable else ...,
        sa_column=Column(DateTime(timezone=True), nullable=nullable),
    )


class Counselor(SQLModel, table=True):
    """A person who takes one-to-one bookings: their languages, sites and way of meeting."""

    __tablename__ = "counselor"

    person_id: int = Field(foreign_key="person.id", primary_key=True, ondelete="CASCADE")
    languages: str = Field(default="zh_Hans", max_length=64)
    #: Comma-separated site codes; empty serves every site.
    sites: str = Field(default="", max_length=512)
    meet: str = Field(default="chat", max_length=16)
    meet_detail: str = Field(default="", max_length=512)
    #: The name residents see in a chat session ("王老师"); empty: "your counselor".
    display_name: str = Field(default="", max_length=32)
    active: bool = True
    #: Bumped before slots are added: the row lock that keeps a counselor's slots apart.
    slots_version: int = 0
    updated_at: datetime = _ts()

    def language_list(self) -> list[str]:
        """The languages this counselor works in."""
        return [p for p in self.languages.split(",") if p]

    def site_list(self) -> list[str]:
        """The sites served (empty: all)."""
        return [p for p in self.sites.split(",") if p]

    def serves(self, person: Person, default_language: str) -> bool:
        """Whether this counselor speaks the person's language and serves their site."""
        if not self.active or person.id == self.person_id:
            return False
        if (person.language or default_language) not in self.language_list():
            return False
        sites = self.site_list()
        return not sites or (person.site_code or "") in sites


class Slot(SQLModel, table=True):
    """One bookable session time of one counselor."""

    __tablename__ = "booking_slot"
    __table_args__ = (Index("ix_booking_slot_open", "status", "starts_at"),)

    id: int | None = Field(default=None, primary_key=True)
    counselor_id: int = Field(foreign_key="person.id", index=True, ondelete="CASCADE")
    starts_at: datetime = _ts()
    ends_at: datetime = _ts()
    status: str = Field(default="open", max_length=16)
    created_at: datetime = _ts()


class Booking(SQLModel, table=True):
    """A resident's booking of a slot, from confirmation to held, no-show or cancelled."""

    __tablename__ = "booking"

    id: int | None = Field(default=None, primary_key=True)
    slot_id: int = Field(foreign_key="booking_slot.id", index=True, ondelete="CASCADE")
    # Equal to slot_id while the booking stands, None once cancelled: the unique constraint
    # is what gives a slot to exactly one resident, however many race for it.
    active_slot_id: int | None = Field(default=None, unique=True)
    resident_id: int = Field(foreign_key="person.id", index=True, ondelete="CASCADE")
    counselor_id: int = Field(foreign_key="person.id", index=True, ondelete="CASCADE")
    starts_at: datetime = _ts()
    ends_at: datetime = _ts()
    topic: str = Field(default="", max_length=TOPIC_LIMIT)
    high_risk: bool = False
    status: str = Field(default="booked", max_length=16)
    created_at: datetime = _ts()
    cancelled_at: datetime | None = _ts(nullable=True)
    marked_at: datetime | None = _ts(nullable=True)
    #: Written by the counselor after the session; only staff ever see it.
    staff_note: str = Field(default="", sa_column=Column(Text, nullable=False))


class BookingReminder(SQLModel, table=True):
    """A message due about a booking (24 h, 1 h before; "after" asks the outcome)."""

    __tablename__ = "booking_reminder"
    __table_args__ = (
        UniqueConstraint("booking_id", "recipient", "kind", name="uq_booking_reminder"),
        Index("ix_booking_reminder_due", "sent_at", "due_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    booking_id: int = Field(foreign_key="booking.id", index=True, ondelete="CASCADE")
    recipient: str = Field(max_length=16)
    kind: str = Field(max_length=8)
    due_at: datetime = _ts()
    sent_at: datetime | None = _ts(nullable=True)


class BookingChat(SQLModel, table=True):
    """A booked session held as a chat through the bot, from the counselor's start to its end.

    The row is the session's whole state: residents' and counselors' conversation states only
    point at it, and ``close_at`` is the due time at which the scheduler ends it if nobody has.
    """

    __tablename__ = "booking_chat"
    __table_args__ = (Index("ix_booking_chat_due", "status", "close_at"),)

    booking_id: int = Field(foreign_key="booking.id", primary_key=True, ondelete="CASCADE")
    status: str = Field(default="open", max_length=16)
    opened_at: datetime = _ts()
    close_at: datetime = _ts()
    ended_at: datetime | None = _ts(nullable=True)
    #: "counselor", "resident", "timeout" or "erased".
    ended_by: str = Field(default="", max_length=16)


class BookingWaitlist(SQLModel, table=True):
    """A resident who found nothing free and wants to hear when a slot opens."""

    __tablename__ = "booking_waitlist"

    person_id: int = Field(foreign_key="person.id", primary_key=True, ondelete="CASCADE")
    created_at: datetime = _ts()


def register(engine: ConversationEngine, rules: BookingRules | None = None) -> None:
    """Plug booking into the engine: menu entries, the resident and counselor flows, commands."""
    flow = BookingFlow(rules or BookingRules())
    engine.menu.append(
        MenuEntry(
            "book",
            "booking.menu_book",
            "book.start",
            visible=lambda person, _roles: person.age_band != "under_16",
        )
    )
    engine.menu.append(
        MenuEntry(
            "slots",
            "booking.menu_slots",
            "slots.menu",
            visible=lambda _person, roles: may(roles, Action.MANAGE_SLOTS),
        )
    )
    engine.state("book_day", flow.prompt_day)
    engine.state("book_time", flow.prompt_time)
    engine.state("book_topic", flow.prompt_topic, flow.typed_topic)
    engine.state("book_confirm", flow.prompt_confirm)
    engine.state("slot_add", flow.prompt_add, flow.typed_availability)
    engine.state("slot_step_day", flow.prompt_step_day)
    engine.state("slot_step_hours", flow.prompt_step_hours, flow.typed_step_hours)
    engine.state("slot_step_length", flow.prompt_step_length)
    engine.state("slot_confirm", flow.prompt_slot_confirm)
    engine.state("book_note", flow.prompt_note, flow.typed_note, triage=False)
    engine.action("book.start", flow.start, any_step=True)
    engine.action("book.day", flow.choose_day)
    engine.action("book.time", flow.choose_time)
    engine.action("book.offer", flow.choose_offer, any_step=True)
    engine.action("book.topic", flow.choose_topic)
    engine.action("book.confirm", flow.confirm)
    engine.action("book.back", flow.back)
    engine.action("book.waitlist", flow.join_waitlist, any_step=True)
    engine.action("book.cancel", flow.cancel_ask, any_step=True)
    engine.action("book.cancel_yes", flow.cancel_confirm)
    engine.action("book.reschedule", flow.reschedule, any_step=True)
    engine.action("book.cant_come", flow.cant_come, any_step=True)
    engine.action("book.mark", flow.mark, any_step=True)
    engine.action("book.note_skip", flow.note_skip)
    engine.action("slots.menu", flow.slots_menu, any_step=True)
    engine.action("slots.add", flow.add_start, any_step=True)
    engine.action("slots.steps", flow.steps_start)
    engine.action("slots.day", flow.step_day)
    engine.action("slots.length", flow.step_length)
    engine.action("slots.confirm", flow.add_confirm)
    engine.action("slots.remove", flow.remove_slot, any_step=True)
    engine.action("slots.remove_yes", flow.remove_booked_slot)
    engine.command("counselor", flow.register_counselor, before_onboarding=True)
    engine.command("slots", flow.slots_command, before_onboarding=True)
    engine.command("available", flow.available_command, before_onboarding=True)
    engine.command("booking", flow.booking_command)
    engine.export_hooks.append(export_bookings)
    engine.erasure_hooks.append(flow.before_erasure)
    from core import booking_chat  # the session flow builds on this module's tables

    booking_chat.register(engine, flow.rules)


# Reading the tables ------------------------------------------------------------------------


async def bookable_slots(
    session: AsyncSession,
    person: Person,
    after: datetime,
    default_language: str,
    *,
    limit: int = 300,
) -> list[Slot]:
    """Free slots starting at or after ``after`` with a counselor who can see ``person``."""
    rows = await session.exec(
        select(Slot, Counselor)
        .join(Counselor, col(Counselor.person_id) == col(Slot.counselor_id))
        .outerjoin(Booking, col(Booking.active_slot_id) == col(Slot.id))
        .where(col(Booking.id).is_(None))
        .where(col(Slot.status) == "open")
        .where(col(Counselor.active).is_(True))
        .where(col(Slot.starts_at) >= after.astimezone(UTC))
        .order_by(col(Slot.starts_at), col(Slot.id))
        .limit(limit)
    )
    return [slot for slot, counselor in rows.all() if counselor.serves(person, default_language)]


async def upcoming_booking(session: AsyncSession, person_id: int, now: datetime) -> Booking | None:
    """The person's booking that has not started yet, if any."""
    return (
        await session.exec(
            select(Booking)
            .where(Booking.resident_id == person_id)
            .where(col(Booking.status) == "booked")
            .where(col(Booking.starts_at) > now.astimezone(UTC))
            .order_by(col(Booking.starts_at))
        )
    ).first()


async def recent_high_risk(session: AsyncSession, person_id: int, now: datetime) -> bool:
    """Whether the person has an open, or a recent, high-risk escalation."""
    from core.escalation import Escalation

    found = await session.exec(
        select(Escalation.id)
        .where(Escalation.person_id == person_id)
        .where(col(Escalation.level) >= int(RiskLevel.HIGH))
        .where(
            or_(
                col(Escalation.status) != "resolved",
                col(Escalation.created_at) >= (now - RECENT_RISK).astimezone(UTC),
            )
        )
    )
    return found.first() is not None


def person_tz(engine: ConversationEngine, person: Person) -> ZoneInfo:
    """The timezone a person reads times in: their site's, or the first site's."""
    site = engine.sites.get(person.site_code) or engine.sites.default()
    return site.tz


def day_label(day: date, lang: str) -> str:
    """A day as a button shows it: "1月6日 周二" / "Tue 6 Jan"."""
    pattern = "M月d日 EEE" if lang == "zh_Hans" else "EEE d MMM"
    return format_date(day, pattern, locale=babel_locale(lang))


def time_label(moment: datetime, lang: str, tz: ZoneInfo) -> str:
    """A time of day as a button shows it: "14:00"."""
    return format_time(as_utc(moment).astimezone(tz), "HH:mm", locale=babel_locale(lang))


def when_label(moment: datetime, lang: str, tz: ZoneInfo) -> str:
    """A date and time with the weekday: "2026年1月6日 14:00（周二）"."""
    local = as_utc(moment).astimezone(tz)
    weekday = format_date(local.date(), "EEE", locale=babel_locale(lang))
    text = format_when(local, lang, tz)
    return f"{text}（{weekday}）" if lang == "zh_Hans" else f"{weekday} {text}"


async def booking_named(session: AsyncSession, arg: str) -> Booking | None:
    """The booking a button's argument names, if it exists."""
    try:
        return await session.get(Booking, int(arg))
    except ValueError:
        return None


def _insert(is_sqlite: bool) -> Any:
    return sqlite.insert if is_sqlite else postgresql.insert


# The resident's flow -------------------------------------------------------------------------


class BookingFlow:
    """The conversation steps of booking, for residents and counselors."""

    def __init__(self, rules: BookingRules) -> None:
        self.rules = rules

    def _bookable_from(self, turn: Turn) -> datetime:
        return turn.now + self.rules.cutoff

    async def _free(self, turn: Turn) -> list[Slot]:
        return await bookable_slots(
            turn.session,
            turn.person,
            self._bookable_from(turn),
            turn.engine.config.default_language,
        )

    def _tz(self, turn: Turn) -> ZoneInfo:
        return person_tz(turn.engine, turn.person)

    async def start(self, turn: Turn, _arg: str) -> None:
        """Show the resident's booking, or begin a new one at the day step."""
        if not turn.onboarded:
            await turn.prompt()
            return
        existing = await upcoming_booking(turn.session, _pid(turn.person), turn.now)
        if existing is not None:
            await self._show_booking(turn, existing)
            return
        turn.goto("book_day")
        await self.prompt_day(turn)

    async def booking_command(self, turn: Turn, args: str) -> None:
        """``/booking``: the same as the menu entry."""
        await self.start(turn, args)

    async def _show_booking(self, turn: Turn, booking: Booking) -> None:
        tz = self._tz(turn)
        counselor = await turn.session.get(Counselor, booking.counselor_id)
        rows = []
        if as_utc(booking.starts_at) - turn.now >= self.rules.cutoff:
            rows.append(
                [
                    turn.button("booking.button_reschedule", "book.reschedule", str(booking.id)),
                    turn.button("booking.button_cancel", "book.cancel", str(booking.id)),
                ]
            )
        else:
            rows.append(
                [turn.button("booking.button_cant_come", "book.cant_come", str(booking.id))]
            )
        rows.append([turn.menu_button()])
        turn.say(
            "booking.yours",
            when=when_label(booking.starts_at, turn.lang, tz),
            meet=self._meet_summary(turn.t, counselor),
            topic=self._topic_text(turn.t, booking.topic),
            buttons=rows,
        )

    async def prompt_day(self, turn: Turn) -> None:
        """List the days with free slots (the earliest slot first for someone at high risk)."""
        free = await self._free(turn)
        if not free:
            turn.say(
                "booking.none_free",
                buttons=[
                    [turn.button("booking.button_waitlist", "book.waitlist")],
                    [turn.menu_button()],
                ],
            )
            return
        tz = self._tz(turn)
        days: list[date] = []
        for slot in free:
            day = as_utc(slot.starts_at).astimezone(tz).date()
            if day not in days:
                days.append(day)
        rows: list[list[Button]] = []
        key = "booking.choose_day"
        if await recent_high_risk(turn.session, _pid(turn.person), turn.now):
            earliest = free[0]
            key = "booking.choose_day_priority"
            rows.append(
                [
                    turn.button(
                        "booking.button_earliest",
                        "book.time",
                        str(earliest.id),
                        when=when_label(earliest.starts_at, turn.lang, tz),
                    )
                ]
            )
        rows += [
            [Button(day_label(day, turn.lang), "book.day", day.isoformat())]
            for day in days[:DAYS_SHOWN]
        ]
        rows.append([turn.menu_button()])
        turn.say(key, buttons=rows)

    async def choose_day(self, turn: Turn, arg: str) -> None:
        """The resident picked a day: show its free times."""
        try:
            day = date.fromisoformat(arg)
        except ValueError:
            await turn.prompt()
            return
        turn.goto("book_time", day=day.isoformat(), resched=turn.data.get("resched"))
        await self.prompt_time(turn)

    async def prompt_time(self, turn: Turn) -> None:
        """List the free times on the chosen day, in the resident's timezone."""
        tz = self._tz(turn)
        day = date.fromisoformat(str(turn.data.get("day")))
        free = [
            s for s in await self._free(turn) if as_utc(s.starts_at).astimezone(tz).date() == day
        ]
        if not free:
            turn.say("booking.day_gone")
            turn.goto("book_day", resched=turn.data.get("resched"))
            await self.prompt_day(turn)
            return
        times: list[Button] = []
        seen: set[datetime] = set()
        for slot in free:
            if as_utc(slot.starts_at) in seen:
                continue  # two counselors free at once: offer the time once
            seen.add(as_utc(slot.starts_at))
            times.append(
                Button(time_label(slot.starts_at, turn.lang, tz), "book.time", str(slot.id))
            )
        rows = [times[i : i + 3] for i in range(0, min(len(times), TIMES_SHOWN), 3)]
        rows.append([turn.button("booking.button_other_day", "book.back"), turn.menu_button()])
        turn.say("booking.choose_time", day=day_label(day, turn.lang), buttons=rows)

    async def _valid_slot(self, turn: Turn, arg: str) -> Slot | None:
        """The slot a button names, if it is still free for this person now; else say why."""
        try:
            slot_id = int(arg)
        except ValueError:
            slot_id = -1
        slot = await turn.session.get(Slot, slot_id) if slot_id > 0 else None
        counselor = await turn.session.get(Counselor, slot.counselor_id) if slot else None
        if (
            slot is None
            or counselor is None
            or slot.status != "open"
            or not counselor.serves(turn.person, turn.engine.config.default_language)
        ):
            turn.say("booking.slot_unavailable")
            return None
        if as_utc(slot.starts_at) < self._bookable_from(turn):
            turn.say("booking.slot_too_late", cutoff=_duration(turn.t, self.rules.cutoff))
            return None
        taken = await turn.session.exec(select(Booking.id).where(Booking.active_slot_id == slot.id))
        if taken.first() is not None:
            turn.say("booking.slot_taken")
            return None
        return slot

    async def _offer_fresh(self, turn: Turn) -> None:
        turn.goto("book_day", resched=turn.data.get("resched"))
        await self.prompt_day(turn)

    async def choose_time(self, turn: Turn, arg: str) -> None:
        """The resident picked a time: ask for an optional topic."""
        slot = await self._valid_slot(turn, arg)
        if slot is None:
            await self._offer_fresh(turn)
            return
        turn.goto("book_topic", slot=slot.id, resched=turn.data.get("resched"))
        await self.prompt_topic(turn)

    async def choose_offer(self, turn: Turn, arg: str) -> None:
        """A slot offered after a lost race or from the waitlist was picked."""
        resched = turn.data.get("resched") if turn.person.state.startswith("book_") else None
        existing = await upcoming_booking(turn.session, _pid(turn.person), turn.now)
        if existing is not None and existing.id != resched:
            await self._show_booking(turn, existing)
            return
        turn.data["resched"] = resched
        await self.choose_time(turn, arg)

    async def prompt_topic(self, turn: Turn) -> None:
        """Ask what the resident would like to talk about (optional)."""
        rows = [
            [turn.button(f"booking.topic.{t}", "book.topic", t) for t in TOPICS[i : i + 2]]
            for i in range(0, len(TOPICS), 2)
        ]
        rows.append([turn.button("booking.button_skip_topic", "book.topic", "")])
        turn.say("booking.choose_topic", buttons=rows)

    async def choose_topic(self, turn: Turn, arg: str) -> None:
        """A topic button (or "skip") was pressed."""
        topic = arg if arg in TOPICS else ""
        await self._to_confirm(turn, f"@{topic}" if topic else "")

    async def typed_topic(self, turn: Turn, text: str) -> None:
        """The resident typed their own topic."""
        await self._to_confirm(turn, " ".join(text.split())[:TOPIC_LIMIT].lstrip("@"))

    async def _to_confirm(self, turn: Turn, topic: str) -> None:
        turn.goto(
            "book_confirm",
            slot=turn.data.get("slot"),
            topic=topic,
            resched=turn.data.get("resched"),
        )
        await self.prompt_confirm(turn)

    async def prompt_confirm(self, turn: Turn) -> None:
        """Show the choice and ask for confirmation."""
        slot = await turn.session.get(Slot, int(turn.data.get("slot") or 0))
        if slot is None:
            await self._offer_fresh(turn)
            return
        counselor = await turn.session.get(Counselor, slot.counselor_id)
        turn.say(
            "booking.confirm",
            when=when_label(slot.starts_at, turn.lang, self._tz(turn)),
            minutes=_minutes(slot),
            meet=self._meet_summary(turn.t, counselor),
            topic=self._topic_text(turn.t, str(turn.data.get("topic", ""))),
            buttons=[
                [turn.button("booking.button_confirm", "book.confirm", str(slot.id))],
                [turn.button("booking.button_other_time", "book.back"), turn.menu_button()],
            ],
        )

    async def back(self, turn: Turn, _arg: str) -> None:
        """Back to the list of days."""
        await self._offer_fresh(turn)

    async def confirm(self, turn: Turn, arg: str) -> None:
        """Book the slot: the database's unique constraint decides a race."""
        slot = await self._valid_slot(turn, arg)
        if slot is None:
            await self._offer_next(turn)
            return
        resched_id = turn.data.get("resched")
        existing = await upcoming_booking(turn.session, _pid(turn.person), turn.now)
        if existing is not None and existing.id != resched_id:
            turn.goto("menu")
            await self._show_booking(turn, existing)
            return
        high_risk = await recent_high_risk(turn.session, _pid(turn.person), turn.now)
        topic = str(turn.data.get("topic", ""))
        booking = await claim_slot(
            turn.session,
            turn.engine.db.is_sqlite,
            slot,
            _pid(turn.person),
            topic,
            high_risk,
            turn.now,
        )
        if booking is None:
            turn.say("booking.slot_taken")
            await self._offer_next(turn)
            return
        schedule_reminders(turn.session, booking, turn.now, self.rules)
        await turn.session.exec(
            delete(BookingWaitlist).where(col(BookingWaitlist.person_id) == turn.person.id)
        )
        if existing is not None:
            await self._cancel(turn, existing, rescheduled=True)
        counselor = await turn.session.get(Counselor, booking.counselor_id)
        turn.goto("menu")
        turn.say(
            "booking.done",
            when=when_label(booking.starts_at, turn.lang, self._tz(turn)),
            meet=self._meet_summary(turn.t, counselor),
            cutoff=_duration(turn.t, self.rules.cutoff),
            buttons=[[turn.menu_button()]],
        )
        await self._tell_counselor(turn, booking, "booking.counselor_new")
        _audit(turn, "booking.book", booking)

    async def _offer_next(self, turn: Turn) -> None:
        """After a lost race: the next free slots, one tap each."""
        free = (await self._free(turn))[:OFFERS_SHOWN]
        tz = self._tz(turn)
        turn.goto("book_day", resched=turn.data.get("resched"))
        if not free:
            await self.prompt_day(turn)
            return
        rows = [
            [Button(when_label(s.starts_at, turn.lang, tz), "book.offer", str(s.id))] for s in free
        ]
        rows.append([turn.button("booking.button_other_day", "book.back"), turn.menu_button()])
        turn.say("booking.next_free", buttons=rows)

    async def join_waitlist(self, turn: Turn, _arg: str) -> None:
        """Put the resident on the waitlist; they hear when a slot opens."""
        if await turn.session.get(BookingWaitlist, turn.person.id) is None:
            turn.session.add(BookingWaitlist(person_id=_pid(turn.person), created_at=turn.now))
        turn.goto("menu")
        turn.say("booking.waitlisted", buttons=[[turn.menu_button()]])

    async def _own_booking(self, turn: Turn, arg: str) -> Booking | None:
        booking = await booking_named(turn.session, arg)
        if booking is None or booking.resident_id != turn.person.id or booking.status != "booked":
            turn.say("booking.no_such_booking", buttons=[[turn.menu_button()]])
            return None
        return booking

    def _before_cutoff(self, turn: Turn, booking: Booking) -> bool:
        if as_utc(booking.starts_at) - turn.now >= self.rules.cutoff:
            return True
        turn.say(
            "booking.too_late_to_change",
            cutoff=_duration(turn.t, self.rules.cutoff),
            buttons=[[turn.button("booking.button_cant_come", "book.cant_come", str(booking.id))]],
        )
        return False

    async def cancel_ask(self, turn: Turn, arg: str) -> None:
        """Ask before cancelling."""
        booking = await self._own_booking(turn, arg)
        if booking is None or not self._before_cutoff(turn, booking):
            return
        turn.goto("menu")
        turn.say(
            "booking.cancel_sure",
            when=when_label(booking.starts_at, turn.lang, self._tz(turn)),
            buttons=[
                [turn.button("booking.button_cancel_yes", "book.cancel_yes", str(booking.id))],
                [turn.button("booking.button_keep", "menu")],
            ],
        )

    async def cancel_confirm(self, turn: Turn, arg: str) -> None:
        """Cancel the booking; the counselor and the waitlist hear of it."""
        booking = await self._own_booking(turn, arg)
        if booking is None or not self._before_cutoff(turn, booking):
            return
        await self._cancel(turn, booking, rescheduled=False)
        turn.say("booking.cancelled", buttons=[[turn.menu_button()]])

    async def _cancel(self, turn: Turn, booking: Booking, *, rescheduled: bool) -> None:
        await release_booking(turn.session, booking, turn.now)
        await self._tell_counselor(
            turn,
            booking,
            "booking.counselor_moved" if rescheduled else "booking.counselor_cancelled",
        )
        _audit(turn, "booking.reschedule" if rescheduled else "booking.cancel", booking)
        await turn.session.flush()
        slot = await turn.session.get(Slot, booking.slot_id)
        if slot is not None and slot.status == "open":
            await tell_waitlist(turn, [slot])

    async def reschedule(self, turn: Turn, arg: str) -> None:
        """Choose a new time; the old booking stands until the new one is confirmed."""
        booking = await self._own_booking(turn, arg)
        if booking is None or not self._before_cutoff(turn, booking):
            return
        turn.goto("book_day", resched=booking.id)
        await self.prompt_day(turn)

    async def cant_come(self, turn: Turn, arg: str) -> None:
        """Inside the cut-off: tell the counselor the resident cannot come."""
        booking = await self._own_booking(turn, arg)
        if booking is None:
            return
        await self._tell_counselor(turn, booking, "booking.counselor_cant_come")
        turn.say("booking.cant_come_sent", buttons=[[turn.menu_button()]])

    async def _tell_counselor(self, turn: Turn, booking: Booking, key: str) -> None:
        counselor = await turn.session.get(Person, booking.counselor_id)
        if counselor is None:
            return
        turn.send_to(
            counselor,
            counselor_text(turn.engine, counselor, booking, key, turn.person.case_code),
            priority=Priority.REPLY,
            kind="booking",
        )

    @staticmethod
    def _meet_summary(t: Any, counselor: Counselor | None) -> str:
        kind = counselor.meet if counselor else "chat"
        return str(t(f"booking.meet_summary.{kind}"))

    @staticmethod
    def _topic_text(t: Any, topic: str) -> str:
        if not topic:
            return str(t("booking.topic_none"))
        if topic.startswith("@") and topic[1:] in TOPICS:
            return str(t(f"booking.topic.{topic[1:]}"))
        return topic

    async def before_erasure(self, turn: Turn) -> None:
        """The person is about to be erased: their standing bookings are cancelled first.

        A resident's counselor hears of it by case code only, and the time is offered to the
        waitlist; a counselor's residents are told kindly and offered other counselors' times.
        """
        person = turn.person
        standing = (
            await turn.session.exec(
                select(Booking)
                .where(
                    or_(
                        col(Booking.resident_id) == person.id,
                        col(Booking.counselor_id) == person.id,
                    )
                )
                .where(col(Booking.status) == "booked")
                .where(col(Booking.ends_at) > turn.now.astimezone(UTC))
                .order_by(col(Booking.starts_at))
            )
        ).all()
        profile = await turn.session.get(Counselor, person.id)
        if profile is not None:  # their own other times are no longer offered to anyone
            profile.active = False
            turn.session.add(profile)
        freed: list[Slot] = []
        for booking in standing:
            await release_booking(turn.session, booking, turn.now)
            turn.session.add(
                AuditLog(
                    at=turn.now,
                    actor=person.case_code,
                    action="booking.cancel_erased",
                    subject=f"booking {booking.id}",
                )
            )
            if booking.resident_id == person.id:
                other = await turn.session.get(Person, booking.counselor_id)
                if other is not None:
                    lang = other.language or turn.engine.config.default_language
                    turn.send_to(
                        other,
                        turn.engine.catalogs.t(
                            lang,
                            "booking.counselor_erased",
                            code=person.case_code,
                            when=when_label(booking.starts_at, lang, person_tz(turn.engine, other)),
                        ),
                        kind="booking",
                    )
                slot = await turn.session.get(Slot, booking.slot_id)
                if slot is not None and slot.status == "open":
                    freed.append(slot)
            else:
                resident = await turn.session.get(Person, booking.resident_id)
                if resident is not None:
                    await offer_after_cancel(turn, resident, booking, self.rules)
        await tell_waitlist(turn, freed)

    # The counselor's side ------------------------------------------------------------------

    async def _counselor(self, turn: Turn) -> Counselor | None:
        if not turn.may(Action.MANAGE_SLOTS):
            turn.say("booking.not_counselor")
            return None
        counselor = await turn.session.get(Counselor, turn.person.id)
        if counselor is None or not counselor.active:
            turn.say("booking.not_registered")
            return None
        return counselor

    async def slots_command(self, turn: Turn, _args: str) -> None:
        """``/slots``: the counselor's upcoming slots and bookings."""
        await self.slots_menu(turn, "")

    async def slots_menu(self, turn: Turn, _arg: str) -> None:
        """List upcoming slots with their bookings, and offer to add or remove."""
        counselor = await self._counselor(turn)
        if counselor is None:
            return
        tz = person_tz(turn.engine, turn.person)
        since = (turn.now - timedelta(days=2)).astimezone(UTC)
        slots = (
            await turn.session.exec(
                select(Slot)
                .where(Slot.counselor_id == counselor.person_id)
                .where(col(Slot.status) == "open")
                .where(col(Slot.ends_at) >= since)
                .order_by(col(Slot.starts_at))
            )
        ).all()
        bookings = {
            b.slot_id: b
            for b in (
                await turn.session.exec(
                    select(Booking)
                    .where(Booking.counselor_id == counselor.person_id)
                    .where(col(Booking.active_slot_id).is_not(None))
                    .where(col(Booking.ends_at) >= since)
                )
            ).all()
        }
        codes = await _case_codes(turn.session, [b.resident_id for b in bookings.values()])
        lines: list[str] = []
        rows: list[list[Button]] = [[turn.button("booking.button_add", "slots.add")]]
        for slot in slots:
            when = when_label(slot.starts_at, turn.lang, tz)
            booking = bookings.get(_sid(slot))
            if booking is None:
                if as_utc(slot.starts_at) <= turn.now:
                    continue
                lines.append(turn.t("booking.slot_line_free", when=when, minutes=_minutes(slot)))
                if len(rows) <= SLOTS_LISTED:
                    rows.append(
                        [
                            turn.button(
                                "booking.button_remove", "slots.remove", str(slot.id), when=when
                            )
                        ]
                    )
                continue
            lines.append(
                turn.t(
                    "booking.slot_line_booked",
                    when=when,
                    code=codes.get(booking.resident_id, "—"),
                    topic=self._topic_text(turn.t, booking.topic),
                    flag=turn.t("booking.flag_high_risk") if booking.high_risk else "",
                    status=turn.t(f"booking.status.{booking.status}"),
                )
            )
            code = codes.get(booking.resident_id, "—")
            if await self._chat_startable(turn, counselor, booking):
                rows.append([chat_start_button(turn.engine, turn.lang, booking, code)])
            elif booking.status == "booked" and as_utc(booking.starts_at) <= turn.now:
                rows.append(_mark_buttons(turn.t, booking, code))
            elif booking.status == "booked" and len(rows) <= SLOTS_LISTED:
                rows.append(
                    [
                        turn.button(
                            "booking.button_remove_booked",
                            "slots.remove",
                            str(slot.id),
                            when=when,
                            code=code,
                        )
                    ]
                )
        rows.append([turn.menu_button()])
        if not lines:
            turn.say("booking.slots_empty", buttons=rows)
            return
        turn.say("booking.slots_list", lines="\n".join(lines), buttons=rows)

    async def _chat_startable(self, turn: Turn, counselor: Counselor, booking: Booking) -> bool:
        """Whether a booking meets in the bot's chat and its session may be opened now."""
        if counselor.meet != "chat" or booking.status != "booked":
            return False
        opens = as_utc(booking.starts_at) - self.rules.chat_opens_before
        if not opens <= turn.now < as_utc(booking.ends_at) + self.rules.chat_grace:
            return False
        chat = await turn.session.get(BookingChat, booking.id)
        return chat is None or chat.status == "open"

    async def add_start(self, turn: Turn, _arg: str) -> None:
        """Ask for availability in plain words (or step by step)."""
        if await self._counselor(turn) is None:
            return
        turn.goto("slot_add")
        await self.prompt_add(turn)

    async def prompt_add(self, turn: Turn) -> None:
        """The question for availability in plain words, with examples."""
        turn.say(
            "booking.add_prompt",
            buttons=[
                [turn.button("booking.button_steps", "slots.steps")],
                [turn.menu_button()],
            ],
        )

    async def available_command(self, turn: Turn, args: str) -> None:
        """``/available 明天 14:00-17:00 50分钟``: add availability in one message."""
        if await self._counselor(turn) is None:
            return
        if not args.strip():
            turn.goto("slot_add")
            await self.prompt_add(turn)
            return
        await self.typed_availability(turn, args)

    async def typed_availability(self, turn: Turn, text: str) -> None:
        """Read availability words; preview the slots, or ask again saying what was unclear."""
        tz = person_tz(turn.engine, turn.person)
        try:
            found = parse_availability(text, turn.now.astimezone(tz).date())
        except PhraseError as exc:
            turn.goto("slot_add")
            turn.say(f"booking.phrase_error.{exc.reason}")
            await self.prompt_add(turn)
            return
        await self._preview(turn, found)

    async def _preview(self, turn: Turn, found: Availability) -> None:
        tz = person_tz(turn.engine, turn.person)
        starts = [s for s in found.slot_starts(tz)]
        if not starts or starts[0] <= turn.now:
            turn.goto("slot_add")
            turn.say("booking.phrase_error.past")
            await self.prompt_add(turn)
            return
        turn.goto(
            "slot_confirm",
            starts=[s.astimezone(UTC).isoformat() for s in starts],
            minutes=found.minutes,
        )
        await self.prompt_slot_confirm(turn)

    async def prompt_slot_confirm(self, turn: Turn) -> None:
        """Show the slots the words became, and ask to add them."""
        tz = person_tz(turn.engine, turn.person)
        starts = [datetime.fromisoformat(s) for s in turn.data.get("starts", [])]
        minutes = int(turn.data.get("minutes", 50))
        if not starts:
            turn.goto("slot_add")
            await self.prompt_add(turn)
            return
        day = day_label(starts[0].astimezone(tz).date(), turn.lang)
        times = "、".join(time_label(s, turn.lang, tz) for s in starts)
        turn.say(
            "booking.add_preview",
            day=day,
            times=times if turn.lang == "zh_Hans" else times.replace("、", ", "),
            count=len(starts),
            minutes=minutes,
            buttons=[
                [turn.button("booking.button_add_yes", "slots.confirm")],
                [turn.button("booking.button_add_again", "slots.add"), turn.menu_button()],
            ],
        )

    async def add_confirm(self, turn: Turn, _arg: str) -> None:
        """Add the previewed slots, refusing any overlap with the counselor's own slots."""
        counselor = await self._counselor(turn)
        if counselor is None:
            return
        starts = [datetime.fromisoformat(s) for s in turn.data.get("starts", [])]
        minutes = int(turn.data.get("minutes", 50))
        added = await add_slots(turn.session, counselor, starts, minutes, turn.now)
        tz = person_tz(turn.engine, turn.person)
        if isinstance(added, SlotConflict):
            turn.goto("slot_add")
            turn.say(
                "booking.add_overlap",
                when=when_label(added.existing.starts_at, turn.lang, tz),
                end=time_label(added.existing.ends_at, turn.lang, tz),
            )
            await self.prompt_add(turn)
            return
        if not added:
            turn.goto("slot_add")
            turn.say("booking.phrase_error.past")
            await self.prompt_add(turn)
            return
        turn.goto("menu")
        turn.say(
            "booking.added",
            count=len(added),
            buttons=[
                [turn.button("booking.button_add_more", "slots.add")],
                [turn.button("booking.menu_slots", "slots.menu")],
                [turn.menu_button()],
            ],
        )
        turn.session.add(
            AuditLog(
                at=turn.now,
                actor_person_id=turn.person.id,
                actor=turn.person.case_code,
                action="booking.slots_added",
                detail=f"{len(added)} slots from {added[0].starts_at.isoformat()}",
            )
        )
        await tell_waitlist(turn, added)

    async def steps_start(self, turn: Turn, _arg: str) -> None:
        """Add availability step by step: first the day."""
        turn.goto("slot_step_day")
        await self.prompt_step_day(turn)

    async def prompt_step_day(self, turn: Turn) -> None:
        """Day buttons for the next week."""
        today = turn.now.astimezone(person_tz(turn.engine, turn.person)).date()
        days = [today + timedelta(days=n) for n in range(DAYS_SHOWN)]
        rows = [
            [Button(day_label(d, turn.lang), "slots.day", d.isoformat()) for d in days[i : i + 2]]
            for i in range(0, len(days), 2)
        ]
        rows.append([turn.menu_button()])
        turn.say("booking.step_day", buttons=rows)

    async def step_day(self, turn: Turn, arg: str) -> None:
        """The day was chosen; ask for the hours."""
        try:
            day = date.fromisoformat(arg)
        except ValueError:
            await turn.prompt()
            return
        turn.goto("slot_step_hours", day=day.isoformat())
        await self.prompt_step_hours(turn)

    async def prompt_step_hours(self, turn: Turn) -> None:
        """Ask for the hours of the chosen day."""
        turn.say(
            "booking.step_hours", day=day_label(date.fromisoformat(turn.data["day"]), turn.lang)
        )

    async def typed_step_hours(self, turn: Turn, text: str) -> None:
        """Read the hours; then ask for the session length."""
        day = str(turn.data.get("day"))
        try:
            found = parse_availability(f"{day} {text}", date.fromisoformat(day))
        except PhraseError as exc:
            turn.say(f"booking.phrase_error.{exc.reason}")
            await self.prompt_step_hours(turn)
            return
        turn.goto(
            "slot_step_length", day=day, start=found.start.isoformat(), end=found.end.isoformat()
        )
        await self.prompt_step_length(turn)

    async def prompt_step_length(self, turn: Turn) -> None:
        """Session length buttons."""
        turn.say(
            "booking.step_length",
            buttons=[
                [
                    turn.button("booking.button_minutes", "slots.length", str(m), minutes=m)
                    for m in STEP_LENGTHS
                ],
                [turn.menu_button()],
            ],
        )

    async def step_length(self, turn: Turn, arg: str) -> None:
        """The length was chosen: preview like the plain-words path."""
        from datetime import time as clock_time

        try:
            minutes = int(arg)
            found = Availability(
                day=date.fromisoformat(str(turn.data["day"])),
                start=clock_time.fromisoformat(str(turn.data["start"])),
                end=clock_time.fromisoformat(str(turn.data["end"])),
                minutes=minutes,
            )
        except (KeyError, ValueError):
            await self.steps_start(turn, "")
            return
        if minutes not in STEP_LENGTHS or not found.slot_starts(ZoneInfo("UTC")):
            turn.say("booking.phrase_error.too_short")
            await self.steps_start(turn, "")
            return
        await self._preview(turn, found)

    async def _own_slot(self, turn: Turn, arg: str) -> tuple[Slot, Booking | None] | None:
        """The counselor's own open slot a button names, with its standing booking if any."""
        counselor = await self._counselor(turn)
        if counselor is None:
            return None
        try:
            slot = await turn.session.get(Slot, int(arg))
        except ValueError:
            slot = None
        if slot is None or slot.counselor_id != counselor.person_id or slot.status != "open":
            turn.say("booking.slot_unavailable")
            return None
        booking = (
            await turn.session.exec(select(Booking).where(Booking.active_slot_id == slot.id))
        ).first()
        if booking is not None and as_utc(slot.starts_at) <= turn.now:
            turn.say("booking.remove_started")
            return None
        return slot, booking

    async def remove_slot(self, turn: Turn, arg: str) -> None:
        """Remove one of the counselor's own slots; a booked one only after a confirmation."""
        found = await self._own_slot(turn, arg)
        if found is None:
            return
        slot, booking = found
        tz = person_tz(turn.engine, turn.person)
        if booking is not None:
            resident = await turn.session.get(Person, booking.resident_id)
            turn.goto("menu")  # the confirmation belongs to this step only
            turn.say(
                "booking.remove_booked_sure",
                when=when_label(slot.starts_at, turn.lang, tz),
                code=resident.case_code if resident else "—",
                buttons=[
                    [turn.button("booking.button_remove_yes", "slots.remove_yes", str(slot.id))],
                    [turn.button("booking.button_keep_slot", "slots.menu")],
                ],
            )
            return
        slot.status = "removed"
        turn.session.add(slot)
        turn.say("booking.removed", when=when_label(slot.starts_at, turn.lang, tz))
        await self.slots_menu(turn, "")

    async def remove_booked_slot(self, turn: Turn, arg: str) -> None:
        """Confirmed: remove the slot, cancel its booking, and look after the resident."""
        found = await self._own_slot(turn, arg)
        if found is None:
            return
        slot, booking = found
        slot.status = "removed"
        turn.session.add(slot)
        tz = person_tz(turn.engine, turn.person)
        when = when_label(slot.starts_at, turn.lang, tz)
        if booking is None:  # the resident cancelled meanwhile: a free slot is simply removed
            turn.say("booking.removed", when=when)
            await self.slots_menu(turn, "")
            return
        await release_booking(turn.session, booking, turn.now)
        _audit(turn, "booking.removed_by_counselor", booking)
        resident = await turn.session.get(Person, booking.resident_id)
        if resident is not None:
            await offer_after_cancel(turn, resident, booking, self.rules)
        turn.say(
            "booking.removed_booked",
            when=when,
            code=resident.case_code if resident else "—",
        )
        await self.slots_menu(turn, "")

    async def mark(self, turn: Turn, arg: str) -> None:
        """The counselor marks a session held or no-show; then offers a staff-only note."""
        booking_id, _, outcome = arg.partition(":")
        booking = await booking_named(turn.session, booking_id)
        if (
            booking is None
            or booking.counselor_id != turn.person.id
            or outcome not in ("held", "no_show")
            or not turn.may(Action.MANAGE_SLOTS)
        ):
            turn.say("booking.no_such_booking")
            return
        if booking.status != "booked":
            turn.say("booking.already_marked", status=turn.t(f"booking.status.{booking.status}"))
            return
        if (
            as_utc(booking.starts_at) > turn.now
            and await turn.session.get(BookingChat, booking.id) is None
        ):
            turn.say("booking.not_started")
            return
        booking.status = outcome
        booking.marked_at = turn.now
        turn.session.add(booking)
        _audit(turn, f"booking.{outcome}", booking)
        turn.goto("book_note", booking=booking.id)
        turn.say("booking.marked", status=turn.t(f"booking.status.{outcome}"))
        await self.prompt_note(turn)

    async def prompt_note(self, turn: Turn) -> None:
        """Ask for an optional note only staff will see."""
        turn.say(
            "booking.note_ask",
            buttons=[[turn.button("booking.button_no_note", "book.note_skip")]],
        )

    async def typed_note(self, turn: Turn, text: str) -> None:
        """Store the staff-only note on the booking."""
        booking = await turn.session.get(Booking, int(turn.data.get("booking") or 0))
        if booking is not None and booking.counselor_id == turn.person.id:
            booking.staff_note = text.strip()[:NOTE_LIMIT]
            turn.session.add(booking)
            _audit(turn, "booking.note", booking)
        turn.goto("menu")
        turn.say("booking.note_saved", buttons=[[turn.menu_button()]])

    async def note_skip(self, turn: Turn, _arg: str) -> None:
        """No note this time."""
        turn.goto("menu")
        turn.say("booking.note_skipped", buttons=[[turn.menu_button()]])

    async def register_counselor(self, turn: Turn, args: str) -> None:
        """``/counselor R-CODE languages=zh_Hans,en sites=a meet=phone:…``: register (admins)."""
        if not turn.may(Action.GRANT_ROLES):
            turn.say("admin.not_allowed")
            return
        parts = args.split()
        if not parts:
            turn.say("booking.counselor_usage")
            return
        code = parts[0].upper()[:16]
        person = (await turn.session.exec(select(Person).where(Person.case_code == code))).first()
        if person is None:
            turn.say("admin.no_such_case", code=code)
            return
        counselor = await turn.session.get(Counselor, person.id)
        if parts[1:] == ["off"]:
            if counselor is not None:
                counselor.active = False
                counselor.updated_at = turn.now
                turn.session.add(counselor)
            turn.say("booking.counselor_off", code=code)
            return
        options = parse_counselor_options(parts[1:], turn.engine)
        if options is None:
            turn.say("booking.counselor_usage")
            return
        if counselor is None:
            counselor = Counselor(person_id=_pid(person), updated_at=turn.now)
        for name, value in options.items():
            setattr(counselor, name, value)
        counselor.active = True
        counselor.updated_at = turn.now
        turn.session.add(counselor)
        granted = await turn.session.exec(
            select(RoleGrant).where(
                RoleGrant.person_id == person.id, RoleGrant.role == Role.COUNSELOR.value
            )
        )
        if granted.first() is None:
            turn.session.add(
                RoleGrant(
                    person_id=_pid(person),
                    role=Role.COUNSELOR.value,
                    granted_by=turn.person.id,
                    granted_at=turn.now,
                )
            )
        turn.session.add(
            AuditLog(
                at=turn.now,
                actor_person_id=turn.person.id,
                actor=turn.person.case_code,
                action="booking.counselor",
                subject=code,
                detail=json.dumps(options, ensure_ascii=False)[:500],
            )
        )
        turn.say(
            "booking.counselor_saved",
            code=code,
            languages=counselor.languages,
            sites=counselor.sites or "*",
            meet=turn.t(f"booking.meet_kind.{counselor.meet}"),
        )


def parse_counselor_options(
    words: Sequence[str], engine: ConversationEngine
) -> dict[str, Any] | None:
    """``languages=… sites=… meet=…`` as counselor fields; None when anything is wrong."""
    options: dict[str, Any] = {}
    for word in words:
        name, sep, value = word.partition("=")
        if not sep or not value:
            return None
        if name in ("languages", "langs", "lang"):
            langs = [v for v in value.split(",") if v]
            if not langs or any(v not in engine.config.languages for v in langs):
                return None
            options["languages"] = ",".join(langs)
        elif name == "sites":
            sites = [v.lower() for v in value.split(",") if v]
            if value != "*" and any(engine.sites.get(v) is None for v in sites):
                return None
            options["sites"] = "" if value == "*" else ",".join(sites)
        elif name == "name":
            options["display_name"] = value.replace("_", " ")[:32]
        elif name == "meet":
            kind, _, detail = value.partition(":")
            if kind not in MEET_KINDS or (kind != "chat" and not detail):
                return None
            if kind == "link" and not detail.startswith(("https://", "http://")):
                return None
            options["meet"] = kind
            options["meet_detail"] = detail[:500]
        else:
            return None
    return options


# Claiming a slot: the database decides ---------------------------------------------------------


async def claim_slot(
    session: AsyncSession,
    is_sqlite: bool,
    slot: Slot,
    resident_id: int,
    topic: str,
    high_risk: bool,
    now: datetime,
) -> Booking | None:
    """Insert the booking for ``slot`` unless another holds it; None when the slot was taken.

    ``ON CONFLICT DO NOTHING`` on the unique ``active_slot_id`` makes the database the judge,
    without aborting the caller's transaction when it says no.
    """
    statement = (
        _insert(is_sqlite)(Booking)
        .values(
            slot_id=slot.id,
            active_slot_id=slot.id,
            resident_id=resident_id,
            counselor_id=slot.counselor_id,
            starts_at=as_utc(slot.starts_at),
            ends_at=as_utc(slot.ends_at),
            topic=topic[:TOPIC_LIMIT],
            high_risk=high_risk,
            status="booked",
            created_at=now,
            staff_note="",
        )
        .on_conflict_do_nothing(index_elements=["active_slot_id"])
        .returning(col(Booking.id))
    )
    result = await session.exec(statement)
    booking_id = result.scalar()
    if booking_id is None:
        return None
    return await session.get(Booking, booking_id)


def schedule_reminders(
    session: AsyncSession, booking: Booking, now: datetime, rules: BookingRules
) -> None:
    """Add the booking's reminder rows (only those still in the future) and the outcome ask."""
    starts = as_utc(booking.starts_at)
    for recipient in ("resident", "counselor"):
        for kind, before in rules.reminders:
            if starts - before > now:
                session.add(
                    BookingReminder(
                        booking_id=_bid(booking),
                        recipient=recipient,
                        kind=kind,
                        due_at=starts - before,
                    )
                )
    session.add(
        BookingReminder(
            booking_id=_bid(booking),
            recipient="counselor",
            kind="after",
            due_at=as_utc(booking.ends_at),
        )
    )


@dataclass(frozen=True)
class SlotConflict:
    """New availability overlaps a slot the counselor already has."""

    existing: Slot


async def add_slots(
    session: AsyncSession,
    counselor: Counselor,
    starts: Sequence[datetime],
    minutes: int,
    now: datetime,
) -> list[Slot] | SlotConflict:
    """Add slots for ``counselor`` unless one overlaps an existing open slot.

    The counselor's row is updated first: that takes its row lock (PostgreSQL) or the write
    lock (SQLite), so two additions for one counselor are checked one after the other.
    """
    length = timedelta(minutes=minutes)
    wanted = sorted(s.astimezone(UTC) for s in starts if s > now)
    if not wanted:
        return []
    await session.exec(
        update(Counselor)
        .where(col(Counselor.person_id) == counselor.person_id)
        .values(slots_version=col(Counselor.slots_version) + 1)
        .execution_options(synchronize_session=False)
    )
    first, last = wanted[0], wanted[-1] + length
    overlapping = (
        await session.exec(
            select(Slot)
            .where(Slot.counselor_id == counselor.person_id)
            .where(col(Slot.status) == "open")
            .where(col(Slot.starts_at) < last)
            .where(col(Slot.ends_at) > first)
            .order_by(col(Slot.starts_at))
        )
    ).all()
    for existing in overlapping:
        for start in wanted:
            if as_utc(existing.starts_at) < start + length and as_utc(existing.ends_at) > start:
                return SlotConflict(existing)
    slots = [
        Slot(
            counselor_id=counselor.person_id,
            starts_at=start,
            ends_at=start + length,
            created_at=now,
        )
        for start in wanted
    ]
    session.add_all(slots)
    await session.flush()
    return slots


async def tell_waitlist(turn: Turn, slots: Sequence[Slot]) -> None:
    """Tell waitlisted residents whom these newly free slots suit; they leave the waitlist."""
    session = turn.session
    future = [s for s in slots if as_utc(s.starts_at) > turn.now]
    if not future:
        return
    counselors = {
        c.person_id: c
        for c in (
            await session.exec(
                select(Counselor).where(
                    col(Counselor.person_id).in_({s.counselor_id for s in future})
                )
            )
        ).all()
    }
    waiting = (
        await session.exec(
            select(BookingWaitlist, Person)
            .join(Person, col(Person.id) == col(BookingWaitlist.person_id))
            .order_by(col(BookingWaitlist.created_at))
        )
    ).all()
    default = turn.engine.config.default_language
    for entry, person in waiting:
        fitting = [
            s
            for s in future
            if s.counselor_id in counselors and counselors[s.counselor_id].serves(person, default)
        ]
        if not fitting or person.id == turn.person.id:
            continue
        lang = person.language or default
        earliest = min(fitting, key=lambda s: as_utc(s.starts_at))
        turn.send_to(
            person,
            turn.engine.catalogs.t(
                lang,
                "booking.waitlist_opened",
                when=when_label(earliest.starts_at, lang, person_tz(turn.engine, person)),
            ),
            buttons=[
                [
                    Button(
                        turn.engine.catalogs.t(lang, "booking.button_book_it"),
                        "book.offer",
                        str(earliest.id),
                    )
                ],
                [Button(turn.engine.catalogs.t(lang, "booking.button_see_all"), "book.start")],
            ],
            priority=Priority.REMINDER,
            kind="booking",
        )
        await session.delete(entry)


async def release_booking(session: AsyncSession, booking: Booking, now: datetime) -> None:
    """Cancel a booking: its slot is no longer held by it and its reminders go."""
    booking.status = "cancelled"
    booking.active_slot_id = None
    booking.cancelled_at = now
    session.add(booking)
    await session.exec(delete(BookingReminder).where(col(BookingReminder.booking_id) == booking.id))
    await session.flush()


async def offer_after_cancel(
    turn: Turn, resident: Person, booking: Booking, rules: BookingRules
) -> None:
    """Tell a resident kindly that the counselor cancelled their session, in their language and
    timezone, with the next free times one tap each; with none free they go on the waitlist,
    in the place their booking gave them."""
    engine = turn.engine
    lang = resident.language or engine.config.default_language
    tz = person_tz(engine, resident)
    t = functools.partial(engine.catalogs.t, lang)
    free = (
        await bookable_slots(
            turn.session, resident, turn.now + rules.cutoff, engine.config.default_language
        )
    )[:OFFERS_SHOWN]
    when = when_label(booking.starts_at, lang, tz)
    rows = [[Button(when_label(s.starts_at, lang, tz), "book.offer", str(s.id))] for s in free]
    if free:
        text = t("booking.counselor_cancelled_you", when=when)
        rows.append([Button(t("booking.button_see_all"), "book.start")])
    else:
        text = t("booking.counselor_cancelled_you_waitlist", when=when)
        if await turn.session.get(BookingWaitlist, resident.id) is None:
            turn.session.add(
                BookingWaitlist(person_id=_pid(resident), created_at=as_utc(booking.created_at))
            )
    rows.append([Button(t("button.menu"), "menu")])
    turn.send_to(resident, text, buttons=rows, priority=Priority.REPLY, kind="booking")


# Reminders: rows with a due time, swept by the scheduler ---------------------------------------


def counselor_text(
    engine: ConversationEngine, counselor: Person, booking: Booking, key: str, code: str
) -> str:
    """A message to the counselor about a booking, with the high-risk flag when set."""
    lang = counselor.language or engine.config.default_language
    t = engine.catalogs.t
    tz = person_tz(engine, counselor)
    topic = BookingFlow._topic_text(lambda k: t(lang, k), booking.topic)
    return t(
        lang,
        key,
        when=when_label(booking.starts_at, lang, tz),
        code=code,
        topic=topic,
        flag=t(lang, "booking.flag_high_risk") if booking.high_risk else "",
    )


def meet_details(engine: ConversationEngine, lang: str, counselor: Counselor | None) -> str:
    """How the resident meets the counselor: the number to call, the link, or the bot chat."""
    kind = counselor.meet if counselor else "chat"
    detail = counselor.meet_detail if counselor else ""
    return engine.catalogs.t(lang, f"booking.meet_details.{kind}", detail=detail)


async def send_due_reminders(
    session: AsyncSession, engine: ConversationEngine, now: datetime
) -> int:
    """Queue every reminder that is due and not yet sent; each is sent once, however often run."""
    query = (
        select(BookingReminder)
        .where(col(BookingReminder.sent_at).is_(None))
        .where(col(BookingReminder.due_at) <= now.astimezone(UTC))
        .order_by(col(BookingReminder.due_at), col(BookingReminder.id))
        .limit(300)
    )
    if not engine.db.is_sqlite:
        query = query.with_for_update(skip_locked=True)
    due = (await session.exec(query)).all()
    out: list[Outbound] = []
    t = engine.catalogs.t
    for reminder in due:
        reminder.sent_at = now
        session.add(reminder)
        booking = await session.get(Booking, reminder.booking_id)
        if booking is None or booking.status != "booked":
            continue
        resident = await session.get(Person, booking.resident_id)
        counselor_person = await session.get(Person, booking.counselor_id)
        counselor = await session.get(Counselor, booking.counselor_id)
        if resident is None or counselor_person is None:
            continue
        if reminder.recipient == "resident":
            lang = resident.language or engine.config.default_language
            out.append(
                Outbound(
                    channel=resident.channel,
                    chat_id=resident.chat_id,
                    text=t(
                        lang,
                        "booking.reminder_resident",
                        when=when_label(booking.starts_at, lang, person_tz(engine, resident)),
                        lead=t(lang, f"booking.lead.{reminder.kind}"),
                        meet=meet_details(engine, lang, counselor),
                    ),
                    priority=Priority.REMINDER,
                    kind="reminder",
                    person_id=resident.id,
                    seq_holder=resident,
                    buttons=[[Button(t(lang, "booking.button_manage"), "book.start")]],
                    dedupe_key=f"booking-reminder:{reminder.id}",
                )
            )
        elif reminder.kind == "after":
            if await session.get(BookingChat, booking.id) is not None:
                continue  # a chat session asks for the outcome when it ends
            lang = counselor_person.language or engine.config.default_language
            out.append(
                Outbound(
                    channel=counselor_person.channel,
                    chat_id=counselor_person.chat_id,
                    text=counselor_text(
                        engine, counselor_person, booking, "booking.ask_outcome", resident.case_code
                    ),
                    priority=Priority.REMINDER,
                    kind="reminder",
                    person_id=counselor_person.id,
                    seq_holder=counselor_person,
                    buttons=[
                        _mark_buttons(functools.partial(t, lang), booking, resident.case_code)
                    ],
                    dedupe_key=f"booking-reminder:{reminder.id}",
                )
            )
        else:
            lang = counselor_person.language or engine.config.default_language
            text = counselor_text(
                engine, counselor_person, booking, "booking.reminder_counselor", resident.case_code
            )
            text += "\n" + t(
                lang, "booking.lead_line", lead=t(lang, f"booking.lead.{reminder.kind}")
            )
            buttons: list[list[Button]] = []
            if counselor is not None and counselor.meet != "chat":
                text += "\n" + meet_details(engine, lang, counselor)
            elif as_utc(booking.starts_at) - as_utc(reminder.due_at) <= timedelta(hours=1):
                text += "\n" + t(lang, "booking.chat_reminder_counselor")
                buttons.append([chat_start_button(engine, lang, booking, resident.case_code)])
            out.append(
                Outbound(
                    channel=counselor_person.channel,
                    chat_id=counselor_person.chat_id,
                    text=text,
                    priority=Priority.REMINDER,
                    kind="reminder",
                    person_id=counselor_person.id,
                    seq_holder=counselor_person,
                    buttons=buttons,
                    dedupe_key=f"booking-reminder:{reminder.id}",
                )
            )
    await queue(session, out, now)
    return len(out)


async def sweep_reminders(engine: ConversationEngine) -> int:
    """The scheduler's job: queue the booking reminders due now, in one transaction."""
    return await engine.sweep(lambda session, now: send_due_reminders(session, engine, now))


# Data export -----------------------------------------------------------------------------------


async def export_bookings(session: AsyncSession, person: Person) -> tuple[str, Any]:
    """The person's bookings for their data download (staff notes are not theirs to read)."""
    rows = (
        await session.exec(
            select(Booking).where(Booking.resident_id == person.id).order_by(col(Booking.starts_at))
        )
    ).all()
    return "bookings", [
        {
            "starts_at": as_utc(b.starts_at).isoformat(),
            "ends_at": as_utc(b.ends_at).isoformat(),
            "topic": b.topic.lstrip("@"),
            "status": b.status,
            "booked_at": as_utc(b.created_at).isoformat(),
        }
        for b in rows
    ]


# Small helpers ---------------------------------------------------------------------------------


def chat_start_button(engine: ConversationEngine, lang: str, booking: Booking, code: str) -> Button:
    """The counselor's button that opens a booked chat session (and rejoins an open one)."""
    return Button(
        engine.catalogs.t(lang, "booking.button_chat_start", code=code),
        "bchat.open",
        str(booking.id),
    )


def _mark_buttons(t: Any, booking: Booking, code: str) -> list[Button]:
    return [
        Button(str(t("booking.button_held")).format(code=code), "book.mark", f"{booking.id}:held"),
        Button(
            str(t("booking.button_no_show")).format(code=code), "book.mark", f"{booking.id}:no_show"
        ),
    ]


async def _case_codes(session: AsyncSession, ids: Sequence[int]) -> dict[int, str]:
    if not ids:
        return {}
    rows = await session.exec(
        select(Person.id, Person.case_code).where(col(Person.id).in_(set(ids)))
    )
    return {pid: code for pid, code in rows.all() if pid is not None}


def _audit(turn: Turn, action: str, booking: Booking) -> None:
    turn.session.add(
        AuditLog(
            at=turn.now,
            actor_person_id=turn.person.id,
            actor=turn.person.case_code,
            action=action,
            subject=f"booking {booking.id}",
        )
    )


def _minutes(slot: Slot) -> int:
    return int((as_utc(slot.ends_at) - as_utc(slot.starts_at)).total_seconds() // 60)


def _duration(t: Any, delta: timedelta) -> str:
    """A cut-off in words ("2 小时", "90 分钟", "1 hour"): whole hours as hours, else minutes."""
    minutes = int(delta.total_seconds() // 60)
    if minutes == 60:
        return str(t("booking.duration.hour"))
    if minutes and minutes % 60 == 0:
        return str(t("booking.duration.hours", count=minutes // 60))
    return str(t("booking.duration.minutes", count=minutes))


def _pid(person: Person) -> int:
    assert person.id is not None
    return person.id


def _sid(slot: Slot) -> int:
    assert slot.id is not None
    return slot.id


def _bid(booking: Booking) -> int:
    assert booking.id is not None
    return booking.id
