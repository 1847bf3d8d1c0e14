"""Mood check-ins and follow-ups after discharge: the bot reaching out at the right time.

Each onboarded person has a check-in plan: a local time (20:00 in the site's timezone by
default) and how often, which follows their risk: daily for 7 days after a high-risk
escalation is resolved, every 2 days after a moderate result, otherwise twice a week. The
next due check-in is a row's ``next_due_at``; the scheduler's sweep sends what is due and
plans the next one in the same transaction (thousands at a time, batch after batch until
none is due), so a restart loses nothing and a sweep run twice sends nothing twice. Answers
are five mood buttons and an optional note, which triage reads like any other message. Two
low moods in a row offer a counselor; three silent days after a recent high-risk escalation
alert the staff chat. An isolation end date starts follow-ups at 1 week, 1 month, 3 months
and 6 months, each offered, never forced.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from sqlalchemy import (
    Column,
    DateTime,
    Index,
    Text,
    UniqueConstraint,
    and_,
    case,
    delete,
    exists,
    or_,
    text,
)
from sqlalchemy import select as core_select
from sqlalchemy.sql.elements import ColumnElement
from sqlmodel import Field, SQLModel, col, func, select
from sqlmodel.ext.asyncio.session import AsyncSession

from core.access import Action
from core.assessment import CALM_BANDS, AssessmentResult
from core.bulk import insert_returning, update_rows
from core.clock import as_utc
from core.conversation import ConversationEngine, MenuEntry, Turn
from core.escalation import Escalation
from core.messages import Button, Outbound, Priority
from core.models import AuditLog, Person
from core.outbox import queue, queue_many
from core.quiet import QuietHours, parse_clock_time
from core.risk import RiskLevel

if TYPE_CHECKING:
    from core.config import Settings

log = logging.getLogger(__name__)

MOODS = (1, 2, 3, 4, 5)  # 1 very low … 5 very good
LOW_MOOD = 2
LOW_STREAK_OFFER = 2
HIGH_DAILY_DAYS = 7
MODERATE_RECENT_DAYS = 28
#: The person fact "has a check-in plan" (``ensure_plan`` looks no further when it is true).
HAS_PLAN = "checkins.has_plan"
SILENCE_DAYS = 3
RECENT_HIGH_DAYS = 14
ANSWER_WINDOW = timedelta(hours=20)
TWICE_WEEKLY = (0, 3)  # Monday and Thursday
TIME_CHOICES = ("09:00", "12:00", "18:00", "20:00", "21:00")
PAUSE_DAYS = 7
FOLLOW_UP_STAGES: tuple[tuple[str, int], ...] = (("1w", 7), ("1m", 30), ("3m", 91), ("6m", 182))
SWEEP_LIMIT = 200
#: Due check-ins per transaction of the check-in sweep, which runs batch after batch until
#: nothing is due. On SQLite a batch holds the write lock while it writes: 0.1 to 0.3 s for
#: 2,000 on a 2-core machine; smaller batches wait less for others but queue fewer a second.
CHECKIN_BATCH = 2000
#: A bound on one sweep's batches (2,000,000 check-ins), in case something never stops being due.
MAX_CHECKIN_BATCHES = 1000
#: Batches at once on PostgreSQL (each on its own connection; SQLite takes one at a time).
CHECKIN_PARALLEL = 2
NOTE_LIMIT = 1000


def _ts(nullable: bool = False, index: bool = False) -> Any:
    return Field(
        default=None,
        sa_column=Column(DateTime(timezone=True), nullable=nullable, index=index),
    )


class CheckinPlan(SQLModel, table=True):
    """One person's check-in schedule: when, how often, and what the last answers were."""

    __tablename__ = "checkin_plan"
    __table_args__ = (Index("ix_checkin_plan_due", "status", "next_due_at"),)

    person_id: int = Field(foreign_key="person.id", primary_key=True, ondelete="CASCADE")
    local_time: str = Field(default="20:00", max_length=5)
    #: active, paused (for a week; resumes by itself) or stopped (until the person resumes)
    status: str = Field(default="active", max_length=16)
    tier: str = Field(default="low", max_length=16)
    next_due_at: datetime | None = _ts(nullable=True)
    planned_at: datetime = _ts()
    last_sent_on: str | None = Field(default=None, max_length=10)
    last_answered_at: datetime | None = _ts(nullable=True)
    low_streak: int = 0
    silence_alert_at: datetime | None = _ts(nullable=True)
    isolation_end: str | None = Field(default=None, max_length=10)
    created_at: datetime = _ts()


class Checkin(SQLModel, table=True):
    """One check-in sent to one person on one local date, and their answer if any."""

    __tablename__ = "checkin"
    __table_args__ = (UniqueConstraint("person_id", "local_date", name="uq_checkin_day"),)

    id: int | None = Field(default=None, primary_key=True)
    person_id: int = Field(foreign_key="person.id", index=True, ondelete="CASCADE")
    site_code: str | None = Field(default=None, max_length=32)
    local_date: str = Field(max_length=10)
    sent_at: datetime = _ts(index=True)
    answered_at: datetime | None = _ts(nullable=True)
    mood: int | None = None
    note: str | None = Field(default=None, sa_column=Column(Text, nullable=True))


class FollowUp(SQLModel, table=True):
    """A re-screen offered after discharge (1 week, 1 month, 3 and 6 months)."""

    __tablename__ = "follow_up"
    __table_args__ = (UniqueConstraint("person_id", "stage", name="uq_follow_up_stage"),)

    id: int | None = Field(default=None, primary_key=True)
    person_id: int = Field(foreign_key="person.id", index=True, ondelete="CASCADE")
    stage: str = Field(max_length=4)
    due_at: datetime = _ts(index=True)
    sent_at: datetime | None = _ts(nullable=True)
    response: str | None = Field(default=None, max_length=16)


@dataclass(frozen=True)
class CheckinConfig:
    """Deployment choices for check-ins: the default time and the quiet hours."""

    default_time: time = time(20, 0)
    quiet: QuietHours = field(default_factory=QuietHours)

    @classmethod
    def from_settings(cls, settings: Settings) -> CheckinConfig:
        """Build from the deployment's settings (``checkin_time``, ``quiet_hours``)."""
        return cls.from_text(settings.checkin_time, settings.quiet_hours)

    @classmethod
    def from_text(cls, default_time: str, quiet_hours: str) -> CheckinConfig:
        """Build from configuration text (``"20:00"``, ``"22:00-08:00"``); ValueError if bad."""
        config = cls(parse_clock_time(default_time), QuietHours.from_text(quiet_hours))
        if config.quiet.contains(config.default_time):
            raise ValueError(
                f"the default check-in time {default_time} falls inside the quiet hours "
                f"{quiet_hours}; choose a time outside them."
            )
        return config


# Risk tiers, as SQL so that broadcasts can select by them too ---------------------------------


def high_tier_clause(now: datetime) -> ColumnElement[bool]:
    """People with a high-risk escalation open, or resolved in the last 7 days."""
    since = now - timedelta(days=HIGH_DAILY_DAYS)
    return exists().where(
        col(Escalation.person_id) == col(Person.id),
        col(Escalation.level) >= int(RiskLevel.HIGH),
        or_(col(Escalation.status) != "resolved", col(Escalation.resolved_at) >= since),
    )


def moderate_tier_clause(now: datetime) -> ColumnElement[bool]:
    """People whose latest recent questionnaire was not calm, or with a recent moderate case."""
    since = now - timedelta(days=MODERATE_RECENT_DAYS)
    later = AssessmentResult.__table__.alias("later_result")  # type: ignore[attr-defined]
    worrying = exists().where(
        col(AssessmentResult.person_id) == col(Person.id),
        col(AssessmentResult.created_at) >= since,
        col(AssessmentResult.band).not_in(CALM_BANDS),
        # Correlated through the result's own person: SQLAlchemy correlates a subquery only
        # with the SELECT right around it, so ``Person.id`` here would be a person of its own
        # (a later result of anyone at all would have hidden this one).
        ~exists().where(
            later.c.person_id == col(AssessmentResult.person_id),
            later.c.created_at > col(AssessmentResult.created_at),
        ),
    )
    moderate_case = exists().where(
        col(Escalation.person_id) == col(Person.id),
        col(Escalation.level) == int(RiskLevel.MODERATE),
        or_(col(Escalation.status) != "resolved", col(Escalation.resolved_at) >= since),
    )
    return or_(worrying, moderate_case)


async def care_tiers(
    session: AsyncSession, person_ids: Collection[int], now: datetime
) -> dict[int, str]:
    """Each listed person's risk tier (``high``, ``moderate`` or ``low``), in one query.

    People who do not exist are left out (``care_tier`` calls them ``low``).
    """
    if not person_ids:
        return {}
    tier = case(
        (high_tier_clause(now), "high"), (moderate_tier_clause(now), "moderate"), else_="low"
    )
    found = await session.exec(
        select(col(Person.id), tier).where(col(Person.id).in_(list(person_ids)))
    )
    return {pid: str(level) for pid, level in found.all() if pid is not None}


async def care_tier(session: AsyncSession, person_id: int, now: datetime) -> str:
    """The person's risk tier for check-ins: ``high``, ``moderate`` or ``low``."""
    return (await care_tiers(session, (person_id,), now)).get(person_id, "low")


def next_checkin_at(
    local_time: time, tz: ZoneInfo, tier: str, after: datetime, last_sent_on: date | None
) -> datetime:
    """The next check-in moment (UTC) after ``after`` for a tier, spacing from the last one.

    High: every day; moderate: every second day; low: Mondays and Thursdays. The very first
    check-in goes at the next slot, whatever the tier.
    """
    local_after = as_utc(after).astimezone(tz)
    day = local_after.date()
    for _ in range(16):
        slot = datetime.combine(day, local_time, tzinfo=tz)
        if slot > local_after and _spaced(day, tier, last_sent_on):
            return slot.astimezone(UTC)
        day += timedelta(days=1)
    raise AssertionError("a check-in slot exists within 16 days")


def _spaced(day: date, tier: str, last_sent_on: date | None) -> bool:
    if last_sent_on is None:
        return True
    gap = (day - last_sent_on).days
    if tier == "high":
        return gap >= 1
    if tier == "moderate":
        return gap >= 2
    return gap >= 1 and day.weekday() in TWICE_WEEKLY


# Registration -----------------------------------------------------------------------------------


def register(engine: ConversationEngine, config: CheckinConfig) -> None:
    """Plug check-ins and follow-ups into the engine: menu, buttons, commands, plan creation."""
    flow = CheckinFlow(config)
    engine.state("checkin_note", flow.prompt_note, flow.note_text)
    engine.state("checkin_time", flow.prompt_time, flow.typed_time)
    engine.state("checkin_enddate", flow.prompt_end_date, flow.typed_end_date)
    engine.action("checkin.mood", flow.mood, any_step=True)
    engine.action("checkin.note", flow.ask_note, any_step=True)
    engine.action("checkin.settings", flow.settings, any_step=True)
    engine.action("checkin.time", flow.choose_time)
    engine.action("checkin.time_menu", flow.time_menu)
    engine.action("checkin.pause", flow.pause)
    engine.action("checkin.stop", flow.stop)
    engine.action("checkin.resume", flow.resume)
    engine.action("checkin.enddate", flow.ask_end_date)
    engine.action("followup.start", flow.follow_up_start, any_step=True)
    engine.action("followup.later", flow.follow_up_later, any_step=True)
    engine.action("followup.never", flow.follow_up_never, any_step=True)
    engine.command("checkin", flow.settings)
    engine.command("enddate", flow.end_date_command, before_onboarding=True)
    engine.after_turn.append(flow.ensure_plan)
    engine.person_fact(HAS_PLAN, exists().where(col(CheckinPlan.person_id) == col(Person.id)))
    engine.export_hooks.append(_export)
    # Before the housekeeping entries (language, privacy, help), after the care ones.
    at = next((i for i, e in enumerate(engine.menu) if e.key == "language"), len(engine.menu))
    engine.menu.insert(
        at,
        MenuEntry("checkin", "menu.checkin", "checkin.settings", lambda p, _r: _eligible(p)),
    )


def _eligible(person: Person) -> bool:
    """Whether check-ins suit this person: onboarded and not a child (who gets site staff)."""
    return (
        person.consent_version is not None
        and person.age_band is not None
        and person.age_band != "under_16"
    )


def _tz(engine: ConversationEngine, person: Person) -> ZoneInfo:
    site = engine.sites.get(person.site_code) or engine.sites.default()
    return site.tz


def _local_date(moment: datetime, tz: ZoneInfo) -> date:
    return as_utc(moment).astimezone(tz).date()


async def plan_for(session: AsyncSession, person_id: int) -> CheckinPlan | None:
    """The person's check-in plan, if they have one."""
    return await session.get(CheckinPlan, person_id)


class CheckinFlow:
    """The resident's side of check-ins: answers, notes, settings and follow-up offers."""

    def __init__(self, config: CheckinConfig) -> None:
        self.config = config

    # Plan -------------------------------------------------------------------------------------

    async def ensure_plan(self, turn: Turn) -> None:
        """After onboarding, give the person a plan and tell them when check-ins come."""
        person = turn.person
        if turn.erased or person.id is None or not _eligible(person):
            return
        if turn.facts.get(HAS_PLAN) or await turn.session.get(CheckinPlan, person.id) is not None:
            return
        tz = _tz(turn.engine, person)
        local_time = self.config.default_time
        plan = CheckinPlan(
            person_id=person.id,
            local_time=local_time.strftime("%H:%M"),
            tier=await care_tier(turn.session, person.id, turn.now),
            planned_at=turn.now,
            created_at=turn.now,
        )
        plan.next_due_at = next_checkin_at(local_time, tz, plan.tier, turn.now, None)
        turn.session.add(plan)
        turn.say("checkin.welcome", time=plan.local_time)
        # Said before the menu that ends onboarding, so the menu stays the last thing shown.
        welcome = turn.out.pop()
        turn.out.insert(max(0, len(turn.out) - 1), welcome)

    async def _plan(self, turn: Turn) -> CheckinPlan | None:
        if turn.person.id is None or not _eligible(turn.person):
            turn.say("checkin.not_for_you", buttons=[[turn.menu_button()]])
            return None
        plan = await turn.session.get(CheckinPlan, turn.person.id)
        if plan is None:
            await self.ensure_plan(turn)
            plan = await turn.session.get(CheckinPlan, turn.person.id)
        return plan

    def _replan(self, turn: Turn, plan: CheckinPlan, tier: str) -> None:
        last = date.fromisoformat(plan.last_sent_on) if plan.last_sent_on else None
        plan.tier = tier
        plan.planned_at = turn.now
        plan.next_due_at = next_checkin_at(
            parse_clock_time(plan.local_time), _tz(turn.engine, turn.person), tier, turn.now, last
        )
        turn.session.add(plan)

    # Answers ----------------------------------------------------------------------------------

    async def mood(self, turn: Turn, arg: str) -> None:
        """A mood button: record it once, for today's check-in only, and answer kindly."""
        checkin_id, _, raw_mood = arg.partition(":")
        checkin = await turn.session.get(Checkin, int(checkin_id)) if checkin_id.isdigit() else None
        if checkin is None or checkin.person_id != turn.person.id or not raw_mood.isdigit():
            turn.say("input.button_invalid")
            return
        mood = int(raw_mood)
        if mood not in MOODS:
            turn.say("input.button_invalid")
            return
        if checkin.answered_at is not None:
            turn.notice = turn.t("checkin.already_answered")
            turn.say("checkin.already_answered", buttons=self._after_buttons(turn, checkin))
            return
        latest = (
            await turn.session.exec(
                select(Checkin.id)
                .where(Checkin.person_id == turn.person.id)
                .order_by(col(Checkin.sent_at).desc(), col(Checkin.id).desc())
                .limit(1)
            )
        ).first()
        if latest != checkin.id or as_utc(turn.now) - as_utc(checkin.sent_at) > ANSWER_WINDOW:
            turn.notice = turn.t("checkin.stale", day=checkin.local_date)
            turn.say("checkin.stale", day=checkin.local_date, buttons=[[turn.menu_button()]])
            return
        checkin.mood = mood
        checkin.answered_at = turn.now
        turn.session.add(checkin)
        plan = await turn.session.get(CheckinPlan, turn.person.id)
        streak = 0
        if plan is not None:
            plan.last_answered_at = turn.now
            plan.low_streak = plan.low_streak + 1 if mood <= LOW_MOOD else 0
            streak = plan.low_streak
            turn.session.add(plan)
        turn.say(f"checkin.thanks_{mood}", buttons=self._after_buttons(turn, checkin))
        if streak >= LOW_STREAK_OFFER:
            self._offer_counselor(turn)

    def _after_buttons(self, turn: Turn, checkin: Checkin) -> list[list[Button]]:
        rows: list[list[Button]] = []
        if checkin.note is None and checkin.answered_at is not None:
            rows.append([turn.button("checkin.button_note", "checkin.note", str(checkin.id))])
        if "selfhelp" in turn.engine.actions:
            rows.append([turn.button("menu.selfhelp", "selfhelp")])
        rows.append([turn.menu_button()])
        return rows

    def _offer_counselor(self, turn: Turn) -> None:
        """Two low moods in a row: offer a counselor (and a booking, where bookings exist)."""
        rows = [[turn.button("escalation.button_request", "esc.request")]]
        if "book" in turn.engine.actions:
            rows.append([turn.button("checkin.button_book", "book")])
        rows.append([turn.button("escalation.button_decline", "esc.decline")])
        turn.say("checkin.low_streak", buttons=rows)

    async def ask_note(self, turn: Turn, arg: str) -> None:
        """ "Add a few words": the next message is kept with the check-in (triage reads it)."""
        checkin = await turn.session.get(Checkin, int(arg)) if arg.isdigit() else None
        if checkin is None or checkin.person_id != turn.person.id or checkin.note is not None:
            turn.say("input.button_invalid")
            return
        turn.goto("checkin_note", checkin=checkin.id)
        await self.prompt_note(turn)

    async def prompt_note(self, turn: Turn) -> None:
        """Ask for the optional note."""
        turn.say("checkin.note_ask", buttons=[[turn.button("checkin.button_skip", "menu")]])

    async def note_text(self, turn: Turn, text: str) -> None:
        """Keep the note with the check-in; triage has already read it for risk."""
        checkin_id = turn.data.get("checkin")
        checkin = await turn.session.get(Checkin, int(checkin_id)) if checkin_id else None
        if checkin is not None and checkin.person_id == turn.person.id:
            checkin.note = text.strip()[:NOTE_LIMIT]
            turn.session.add(checkin)
        turn.goto("menu")
        buttons = [[turn.menu_button()]]
        if "selfhelp" in turn.engine.actions:
            buttons.insert(0, [turn.button("menu.selfhelp", "selfhelp")])
        turn.say("checkin.note_saved", buttons=buttons)

    # Settings ---------------------------------------------------------------------------------

    async def settings(self, turn: Turn, _arg: str) -> None:
        """The check-in settings: time, how often and why, pause, stop, isolation end date."""
        plan = await self._plan(turn)
        if plan is None:
            return
        status_key = f"checkin.status_{plan.status}"
        rows = [[turn.button("checkin.button_time", "checkin.time_menu")]]
        if plan.status == "active":
            rows.append(
                [
                    turn.button("checkin.button_pause", "checkin.pause"),
                    turn.button("checkin.button_stop", "checkin.stop"),
                ]
            )
        else:
            rows.append([turn.button("checkin.button_resume", "checkin.resume")])
        rows.append([turn.button("checkin.button_enddate", "checkin.enddate")])
        rows.append([turn.menu_button()])
        turn.say(
            "checkin.settings",
            time=plan.local_time,
            often=turn.t(f"checkin.often_{plan.tier}"),
            status=turn.t(status_key),
            end=plan.isolation_end or turn.t("checkin.end_unknown"),
            buttons=rows,
        )

    async def time_menu(self, turn: Turn, _arg: str) -> None:
        """Offer check-in times to tap, or to type one."""
        turn.goto("checkin_time")
        await self.prompt_time(turn)

    async def prompt_time(self, turn: Turn) -> None:
        """Ask for a time of day."""
        quiet = self.config.quiet
        turn.say(
            "checkin.time_ask",
            start=quiet.end.strftime("%H:%M"),
            end=quiet.start.strftime("%H:%M"),
            buttons=[
                [
                    turn.button("checkin.time_label", "checkin.time", t, time=t)
                    for t in TIME_CHOICES
                ],
                [turn.menu_button()],
            ],
        )

    async def typed_time(self, turn: Turn, text: str) -> None:
        """A typed time such as 19:30."""
        await self.choose_time(turn, text)

    async def choose_time(self, turn: Turn, raw: str) -> None:
        """Set the check-in time, refusing one inside the quiet hours."""
        try:
            chosen = parse_clock_time(raw)
        except ValueError:
            turn.say("checkin.time_bad")
            await self.prompt_time(turn)
            return
        if self.config.quiet.contains(chosen):
            turn.say(
                "checkin.time_quiet",
                start=self.config.quiet.start.strftime("%H:%M"),
                end=self.config.quiet.end.strftime("%H:%M"),
            )
            await self.prompt_time(turn)
            return
        plan = await self._plan(turn)
        if plan is None:
            return
        plan.local_time = chosen.strftime("%H:%M")
        if plan.status == "active":
            self._replan(turn, plan, plan.tier)
        turn.session.add(plan)
        turn.goto("menu")
        turn.say("checkin.time_set", time=plan.local_time, buttons=[[turn.menu_button()]])

    async def pause(self, turn: Turn, _arg: str) -> None:
        """Skip the next week of check-ins; they resume by themselves."""
        plan = await self._plan(turn)
        if plan is None:
            return
        plan.status = "paused"
        last = turn.now + timedelta(days=PAUSE_DAYS)
        plan.next_due_at = next_checkin_at(
            parse_clock_time(plan.local_time), _tz(turn.engine, turn.person), "high", last, None
        )
        plan.planned_at = turn.now
        turn.session.add(plan)
        turn.say("checkin.paused", days=PAUSE_DAYS, buttons=[[turn.menu_button()]])

    async def stop(self, turn: Turn, _arg: str) -> None:
        """Stop check-ins until the person turns them on again."""
        plan = await self._plan(turn)
        if plan is None:
            return
        plan.status = "stopped"
        plan.next_due_at = None
        turn.session.add(plan)
        turn.say(
            "checkin.stopped",
            buttons=[
                [turn.button("checkin.button_resume", "checkin.resume")],
                [turn.menu_button()],
            ],
        )

    async def resume(self, turn: Turn, _arg: str) -> None:
        """Turn check-ins on again."""
        plan = await self._plan(turn)
        if plan is None:
            return
        plan.status = "active"
        assert turn.person.id is not None
        self._replan(turn, plan, await care_tier(turn.session, turn.person.id, turn.now))
        turn.say("checkin.resumed", time=plan.local_time, buttons=[[turn.menu_button()]])

    # Isolation end date and follow-ups --------------------------------------------------------

    async def ask_end_date(self, turn: Turn, _arg: str) -> None:
        """Ask for the isolation end date."""
        turn.goto("checkin_enddate")
        await self.prompt_end_date(turn)

    async def prompt_end_date(self, turn: Turn) -> None:
        """Ask for a date such as 2026-02-01."""
        turn.say("checkin.enddate_ask", buttons=[[turn.menu_button()]])

    async def typed_end_date(self, turn: Turn, text: str) -> None:
        """A typed end date."""
        tz = _tz(turn.engine, turn.person)
        end = parse_date(text, _local_date(turn.now, tz))
        if end is None:
            turn.say("checkin.enddate_bad")
            return
        await self._set_end_date(turn, turn.person, end)
        turn.goto("menu")
        turn.say("checkin.enddate_set", day=end.isoformat(), buttons=[[turn.menu_button()]])

    async def end_date_command(self, turn: Turn, args: str) -> None:
        """``/enddate 2026-02-01`` for oneself; staff: ``/enddate R-7K3Q 2026-02-01``."""
        parts = args.split()
        if len(parts) == 2 and parts[0].upper().startswith("R-"):
            if not turn.may(Action.REPORT_CONCERN):
                turn.say("checkin.enddate_not_allowed")
                return
            code = parts[0].upper()[:16]
            resident = (
                await turn.session.exec(select(Person).where(Person.case_code == code))
            ).first()
            if resident is None:
                turn.say("admin.no_such_case", code=code)
                return
            end = parse_date(parts[1], _local_date(turn.now, _tz(turn.engine, resident)))
            if end is None:
                turn.say("checkin.enddate_bad")
                return
            await self._set_end_date(turn, resident, end)
            turn.session.add(
                AuditLog(
                    at=turn.now,
                    actor_person_id=turn.person.id,
                    actor=turn.person.case_code,
                    action="checkin.enddate",
                    subject=resident.case_code,
                    detail=end.isoformat(),
                )
            )
            turn.say("checkin.enddate_staff_set", code=code, day=end.isoformat())
            return
        if not turn.onboarded:
            turn.say("onboarding.finish_first")
            return
        if len(parts) == 1:
            await self.typed_end_date(turn, parts[0])
            return
        await self.ask_end_date(turn, "")

    async def _set_end_date(self, turn: Turn, person: Person, end: date) -> None:
        """Record the end date and plan the follow-ups that have not been offered yet."""
        assert person.id is not None
        plan = await turn.session.get(CheckinPlan, person.id)
        if plan is None:
            plan = CheckinPlan(
                person_id=person.id,
                local_time=self.config.default_time.strftime("%H:%M"),
                planned_at=turn.now,
                created_at=turn.now,
                status="active" if _eligible(person) else "stopped",
            )
            if _eligible(person):
                plan.next_due_at = next_checkin_at(
                    self.config.default_time, _tz(turn.engine, person), "low", turn.now, None
                )
        plan.isolation_end = end.isoformat()
        turn.session.add(plan)
        await plan_follow_ups(
            turn.session,
            person.id,
            end,
            parse_clock_time(plan.local_time),
            _tz(turn.engine, person),
            turn.now,
        )

    async def follow_up_start(self, turn: Turn, arg: str) -> None:
        """Yes to a follow-up: start the short re-screen (PHQ-2) where assessments exist."""
        await self._answer_follow_up(turn, arg, "started")
        start = turn.engine.actions.get("assess.start")
        if start is not None:
            await start.handler(turn, "phq2")
            return
        opener = turn.engine.actions.get("assess")
        if opener is not None:
            await opener.handler(turn, "")
            return
        turn.say("checkin.followup_no_assessment", buttons=[[turn.menu_button()]])

    async def follow_up_later(self, turn: Turn, arg: str) -> None:
        """Not now: nothing else happens until the next follow-up."""
        await self._answer_follow_up(turn, arg, "later")
        turn.say("checkin.followup_later", buttons=[[turn.menu_button()]])

    async def follow_up_never(self, turn: Turn, arg: str) -> None:
        """No more follow-ups: the ones not yet offered are removed."""
        await self._answer_follow_up(turn, arg, "declined")
        await turn.session.exec(
            delete(FollowUp).where(
                col(FollowUp.person_id) == turn.person.id, col(FollowUp.sent_at).is_(None)
            )
        )
        turn.say("checkin.followup_never", buttons=[[turn.menu_button()]])

    async def _answer_follow_up(self, turn: Turn, arg: str, response: str) -> None:
        follow_up = await turn.session.get(FollowUp, int(arg)) if arg.isdigit() else None
        if follow_up is not None and follow_up.person_id == turn.person.id:
            follow_up.response = response
            turn.session.add(follow_up)


DATE_PATTERNS = (
    re.compile(r"^(?P<y>\d{4})[-/.年](?P<m>\d{1,2})[-/.月](?P<d>\d{1,2})日?$"),
    re.compile(r"^(?P<m>\d{1,2})[-/.月](?P<d>\d{1,2})日?$"),
)


def parse_date(text: str, today: date) -> date | None:
    """Read a date (``2026-02-01``, ``2026/2/1``, ``2026年2月1日``, ``2月1日``), or None.

    Without a year, the date is taken within a year around ``today`` (isolation ends soon, or
    ended recently).
    """
    cleaned = text.strip().replace(" ", "")
    for pattern in DATE_PATTERNS:
        found = pattern.match(cleaned)
        if found is None:
            continue
        parts = found.groupdict()
        try:
            if parts.get("y"):
                return date(int(parts["y"]), int(parts["m"]), int(parts["d"]))
            guess = date(today.year, int(parts["m"]), int(parts["d"]))
        except ValueError:
            return None
        if (guess - today).days > 183:
            guess = guess.replace(year=guess.year - 1)
        elif (today - guess).days > 183:
            guess = guess.replace(year=guess.year + 1)
        return guess
    return None


async def plan_follow_ups(
    session: AsyncSession,
    person_id: int,
    end: date,
    local_time: time,
    tz: ZoneInfo,
    now: datetime,
) -> list[FollowUp]:
    """Plan the follow-ups after ``end`` that are still ahead; ones already offered stay."""
    await session.exec(
        delete(FollowUp).where(
            col(FollowUp.person_id) == person_id, col(FollowUp.sent_at).is_(None)
        )
    )
    offered = set(
        (await session.exec(select(FollowUp.stage).where(FollowUp.person_id == person_id))).all()
    )
    planned: list[FollowUp] = []
    for stage, days in FOLLOW_UP_STAGES:
        due = datetime.combine(end + timedelta(days=days), local_time, tzinfo=tz).astimezone(UTC)
        if stage in offered or due < as_utc(now) - timedelta(days=1):
            continue
        row = FollowUp(person_id=person_id, stage=stage, due_at=due)
        session.add(row)
        planned.append(row)
    return planned


# The scheduler's sweeps ---------------------------------------------------------------------


def _staff_message(engine: ConversationEngine, text: str, kind: str) -> Outbound | None:
    chat = engine.config.staff_chat_id
    if not chat:
        return None
    return Outbound(
        channel="telegram",
        chat_id=chat,
        chat_kind="group",
        text=text,
        priority=Priority.ESCALATION,
        kind=kind,
    )


def _may_reach(person: Any) -> bool:
    """Whether outreach may go to ``person`` (a Person, or a row of its columns)."""
    return (
        not person.paused
        and person.blocked_at is None
        and person.consent_version is not None
        and person.consent_withdrawn_at is None
    )


@dataclass(frozen=True)
class DueBatch:
    """What one transaction of the check-in sweep did."""

    taken: int  # due plans read (at most the batch size)
    advanced: int  # plans moved on to their next slot
    queued: int  # check-ins queued


def _reachable() -> ColumnElement[bool]:
    """``_may_reach`` in SQL, for a batch's rows (one column instead of four to read)."""
    return and_(
        ~col(Person.paused),
        col(Person.blocked_at).is_(None),
        col(Person.consent_version).is_not(None),
        col(Person.consent_withdrawn_at).is_(None),
    )


# What a batch reads of each due plan's person: plain rows, no ORM objects. ``state_seq``
# is read by ``queue_many`` (the row is the buttons' ``seq_holder``).
_PERSON_COLUMNS = (
    col(Person.id),
    col(Person.channel),
    col(Person.chat_id),
    col(Person.site_code),
    col(Person.language),
    col(Person.state),
    col(Person.state_seq),
)


async def send_due_checkins(
    session: AsyncSession, engine: ConversationEngine, now: datetime, limit: int = CHECKIN_BATCH
) -> DueBatch:
    """Send up to ``limit`` due check-ins and plan each person's next one, in one transaction.

    Set-based, for the thousands that fall due in the same minute: the plans, their people and
    their tiers in one query; the check-ins in one INSERT (their ids come back through
    RETURNING, for the buttons), the outbox rows and button tokens in one INSERT each, and
    every plan's next slot in one UPDATE.
    """
    due = (
        core_select(
            col(CheckinPlan.person_id), col(CheckinPlan.local_time), col(CheckinPlan.last_sent_on)
        )
        .where(col(CheckinPlan.status).in_(("active", "paused")))
        .where(col(CheckinPlan.next_due_at) <= now)
        # The index's own order: read straight from it, where ordering by the time alone
        # would sort every due plan for each batch (on PostgreSQL, under FOR UPDATE, on disk).
        .order_by(col(CheckinPlan.status), col(CheckinPlan.next_due_at))
        .limit(limit)
    )
    if not engine.db.is_sqlite:
        # The tier's estimated cost grows with the batch; PostgreSQL's JIT would then spend a
        # third of a second compiling a query that runs in milliseconds.
        await session.execute(text("SET LOCAL jit = off"))
        due = due.with_for_update(skip_locked=True)
    plans = due.subquery("due")
    tier = case(
        (high_tier_clause(now), "high"), (moderate_tier_clause(now), "moderate"), else_="low"
    )
    rows = (
        await session.execute(
            core_select(
                plans.c.local_time,
                plans.c.last_sent_on,
                *_PERSON_COLUMNS,
                tier.label("tier"),
                _reachable().label("reachable"),
            ).join_from(plans, Person, col(Person.id) == plans.c.person_id)
        )
    ).all()
    if not rows:
        return DueBatch(0, 0, 0)

    zones: dict[str | None, ZoneInfo] = {}
    todays: dict[ZoneInfo, str] = {}  # each zone's local date today, as text
    slots: dict[tuple[str, ZoneInfo, str, str], datetime] = {}
    holding = engine.holding_states
    sending: list[tuple[Any, str]] = []  # (person, local date) of each check-in to send
    moves: list[tuple[int, str, str | None, datetime]] = []
    for person in rows:  # a due plan and its person
        local_time, last_sent_on, person_id, _, _, site_code, _, state, _, tier, reachable = person
        tz = zones.get(site_code)
        if tz is None:
            site = engine.sites.get(site_code) or engine.sites.default()
            tz = zones[site_code] = site.tz
        today_text = todays.get(tz)
        if today_text is None:
            today_text = todays[tz] = _local_date(now, tz).isoformat()
        # The person held by a counselor, or who asked for quiet, is not interrupted; the
        # plan simply moves on to the next slot.
        if reachable and state not in holding:
            sending.append((person, today_text))
            last_sent_on = today_text
        key = (local_time, tz, tier, last_sent_on or today_text)
        next_due = slots.get(key)
        if next_due is None:
            next_due = slots[key] = next_checkin_at(
                parse_clock_time(local_time),
                tz,
                tier,
                now,
                date.fromisoformat(last_sent_on or today_text),
            )
        moves.append((person_id, tier, last_sent_on, next_due))

    queued = 0
    if sending:
        # A check-in already sent today (only if the plan was moved by hand) is not sent twice.
        added = await insert_returning(
            session,
            Checkin.__table__,  # type: ignore[attr-defined]
            ("person_id", "site_code", "local_date"),
            [(person.id, person.site_code, local_date) for person, local_date in sending],
            ("id", "person_id"),
            same={"sent_at": now},
            skip_conflicts_on=("person_id", "local_date"),
        )
        checkin_ids = {int(person_id): int(checkin_id) for checkin_id, person_id in added}
        texts: dict[str, tuple[str, list[tuple[str, str]]]] = {}
        # A generator: each message is made, turned into rows and dropped, so thousands of
        # short-lived objects never reach the garbage collector's older generations.
        await queue_many(
            session,
            (
                _checkin_message(engine, person, checkin_ids[person.id], texts)
                for person, _local in sending
                if person.id in checkin_ids
            ),
            now,
        )
        queued = len(checkin_ids)
    await update_rows(
        session,
        CheckinPlan.__table__,  # type: ignore[attr-defined]
        ("person_id", "tier", "last_sent_on", "next_due_at"),
        moves,
        same={"status": "active", "planned_at": now},
    )
    return DueBatch(taken=len(rows), advanced=len(moves), queued=queued)


async def queue_due_checkins(
    engine: ConversationEngine,
    now: datetime,
    batch_size: int = CHECKIN_BATCH,
    parallel: int | None = None,
) -> int:
    """Queue every check-in due at ``now``: batch after batch, each its own transaction.

    On PostgreSQL ``parallel`` (default ``CHECKIN_PARALLEL``) batches run at once, on their own
    connections (``SKIP LOCKED`` gives each its own plans), so the database works on one while
    the next is prepared; SQLite has one writer, and one batch at a time. Delivery is woken
    after each batch, so the first check-ins go out while later ones are queued, and other
    work can take the database between batches. A crash loses at most the batches in
    progress, which the next sweep sends. Returns how many were queued.
    """
    if engine.db.is_sqlite:
        parallel = 1
    elif parallel is None:
        parallel = CHECKIN_PARALLEL
    if parallel <= 1:
        return await _queue_batches(engine, now, batch_size)
    async with asyncio.TaskGroup() as group:
        runs = [group.create_task(_queue_batches(engine, now, batch_size)) for _ in range(parallel)]
    return sum(run.result() for run in runs)


async def _queue_batches(engine: ConversationEngine, now: datetime, batch_size: int) -> int:
    """Batches until one comes back short: nothing more is due (or the rest is locked)."""
    queued = 0
    for _ in range(MAX_CHECKIN_BATCHES):
        batch = await engine.db.run(lambda s: send_due_checkins(s, engine, now, batch_size))
        queued += batch.queued
        if batch.queued:
            engine.notify("telegram")
            engine.notify("web")
        if batch.taken < batch_size or not batch.advanced:
            break
        await asyncio.sleep(0)
    return queued


def _checkin_message(
    engine: ConversationEngine,
    person: Any,
    checkin_id: int,
    texts: dict[str, tuple[str, list[tuple[str, str]]]],
) -> Outbound:
    """The mood question with five buttons; ``person`` is a Person or a row of its columns.

    ``texts`` keeps each language's question and (label, ``:mood``) pairs across one batch.
    """
    lang = person.language or engine.config.default_language
    known = texts.get(lang)
    if known is None:
        t = engine.catalogs.t
        known = texts[lang] = (
            t(lang, "checkin.ask"),
            [(t(lang, f"checkin.mood_{m}"), f":{m}") for m in MOODS],
        )
    ask, moods = known
    prefix = str(checkin_id)
    # The argument of each is "<check-in id>:<mood>".
    buttons = [[Button(label, "checkin.mood", prefix + mood) for label, mood in moods]]
    return Outbound(
        channel=person.channel,
        chat_id=person.chat_id,
        text=ask,
        buttons=buttons,
        priority=Priority.REMINDER,
        kind="checkin",
        person_id=person.id,
        seq_holder=person,
        dedupe_key=f"checkin:{checkin_id}",
    )


async def replan_changed(session: AsyncSession, engine: ConversationEngine, now: datetime) -> int:
    """Bring forward the next check-in of people whose risk changed since it was planned.

    An escalation resolved or a questionnaire finished after the plan was made may change the
    tier (daily for a week after a high-risk case closes); the next slot moves accordingly.
    """
    changed = or_(
        exists().where(
            col(Escalation.person_id) == col(CheckinPlan.person_id),
            or_(
                col(Escalation.resolved_at) > col(CheckinPlan.planned_at),
                col(Escalation.created_at) > col(CheckinPlan.planned_at),
            ),
        ),
        exists().where(
            col(AssessmentResult.person_id) == col(CheckinPlan.person_id),
            col(AssessmentResult.created_at) > col(CheckinPlan.planned_at),
        ),
    )
    plans = (
        await session.exec(
            select(CheckinPlan).where(CheckinPlan.status == "active", changed).limit(SWEEP_LIMIT)
        )
    ).all()
    for plan in plans:
        person = await session.get(Person, plan.person_id)
        if person is None:
            continue
        tier = await care_tier(session, plan.person_id, now)
        last = date.fromisoformat(plan.last_sent_on) if plan.last_sent_on else None
        proposed = next_checkin_at(
            parse_clock_time(plan.local_time), _tz(engine, person), tier, now, last
        )
        if plan.next_due_at is None or proposed < as_utc(plan.next_due_at) or tier != plan.tier:
            plan.next_due_at = proposed
        plan.tier = tier
        plan.planned_at = now
        session.add(plan)
    return len(plans)


async def alert_silence(session: AsyncSession, engine: ConversationEngine, now: datetime) -> int:
    """Tell the staff chat about people silent for 3 days after a recent high-risk case."""
    recent = now - timedelta(days=RECENT_HIGH_DAYS)
    query = (
        select(CheckinPlan, Escalation)
        .join(Escalation, col(Escalation.person_id) == col(CheckinPlan.person_id))
        .where(col(Escalation.level) >= int(RiskLevel.HIGH))
        .where(col(Escalation.status) == "resolved")
        .where(col(Escalation.resolved_at) >= recent)
        .order_by(col(Escalation.resolved_at).desc())
    )
    if not engine.db.is_sqlite:  # two workers never alert about the same person twice
        query = query.with_for_update(skip_locked=True, of=CheckinPlan)
    rows = (await session.exec(query)).all()
    out: list[Outbound] = []
    done: set[int] = set()
    alerted = 0
    lang = engine.config.default_language
    for plan, escalation in rows:
        if plan.person_id in done or escalation.resolved_at is None:
            continue
        done.add(plan.person_id)
        since = as_utc(escalation.resolved_at)
        if plan.last_answered_at is not None:
            since = max(since, as_utc(plan.last_answered_at))
        if as_utc(now) - since < timedelta(days=SILENCE_DAYS):
            continue
        if plan.silence_alert_at is not None and as_utc(plan.silence_alert_at) >= since:
            continue
        unanswered = (
            await session.exec(
                select(func.count())
                .select_from(Checkin)
                .where(Checkin.person_id == plan.person_id)
                .where(col(Checkin.sent_at) > since)
                .where(col(Checkin.answered_at).is_(None))
            )
        ).one()
        if not unanswered:
            continue
        days = int((as_utc(now) - since).total_seconds() // 86400)
        message = _staff_message(
            engine,
            engine.catalogs.t(
                lang,
                "checkin.silence_alert",
                code=escalation.case_code,
                days=days,
                missed=int(unanswered),
            ),
            "checkin_silence",
        )
        plan.silence_alert_at = now
        alerted += 1
        session.add(plan)
        session.add(
            AuditLog(
                at=now,
                actor="scheduler",
                action="checkin.silence_alert",
                subject=escalation.case_code,
                detail=f"{days} days, {unanswered} unanswered",
            )
        )
        if message is not None:
            out.append(message)
        else:
            log.warning("no staff chat: silence of %s not posted", escalation.case_code)
    await queue(session, out, now)
    return alerted


async def send_due_follow_ups(
    session: AsyncSession, engine: ConversationEngine, now: datetime
) -> int:
    """Offer every follow-up that is due (once each); return how many were offered."""
    query = (
        select(FollowUp)
        .where(col(FollowUp.sent_at).is_(None))
        .where(col(FollowUp.due_at) <= now)
        .order_by(col(FollowUp.due_at))
        .limit(SWEEP_LIMIT)
    )
    if not engine.db.is_sqlite:
        query = query.with_for_update(skip_locked=True)
    due = (await session.exec(query)).all()
    out: list[Outbound] = []
    t = engine.catalogs.t
    for follow_up in due:
        follow_up.sent_at = now
        session.add(follow_up)
        person = await session.get(Person, follow_up.person_id)
        if person is None or not _may_reach(person):
            follow_up.response = "skipped"
            continue
        lang = person.language or engine.config.default_language
        arg = str(follow_up.id)
        out.append(
            Outbound(
                channel=person.channel,
                chat_id=person.chat_id,
                text=t(lang, f"checkin.followup_{follow_up.stage}"),
                buttons=[
                    [Button(t(lang, "checkin.button_followup_start"), "followup.start", arg)],
                    [Button(t(lang, "checkin.button_followup_later"), "followup.later", arg)],
                    [Button(t(lang, "checkin.button_followup_never"), "followup.never", arg)],
                ],
                priority=Priority.REMINDER,
                kind="followup",
                person_id=person.id,
                seq_holder=person,
                dedupe_key=f"followup:{follow_up.id}",
            )
        )
    await queue(session, out, now)
    return len(out)


async def sweep(engine: ConversationEngine) -> dict[str, int]:
    """The scheduler's job: replan, send due check-ins and follow-ups, alert on silence.

    Each part is its own transaction, so one failing does not hold back the others; the
    check-ins go in batches of ``CHECKIN_BATCH``, each its own transaction, until none is due.
    """
    counts: dict[str, int] = {}
    now = engine.clock.now()
    db = engine.db
    counts["replanned"] = await db.run(lambda s: replan_changed(s, engine, now))
    counts["checkins"] = await queue_due_checkins(engine, now)
    counts["follow_ups"] = await db.run(lambda s: send_due_follow_ups(s, engine, now))
    counts["silence_alerts"] = await db.run(lambda s: alert_silence(s, engine, now))
    if counts["checkins"] or counts["follow_ups"] or counts["silence_alerts"]:
        engine.notify("telegram")
        engine.notify("web")
    return counts


async def _export(session: AsyncSession, person: Person) -> tuple[str, Any]:
    plan = await session.get(CheckinPlan, person.id)
    checkins = (
        await session.exec(
            select(Checkin).where(Checkin.person_id == person.id).order_by(col(Checkin.sent_at))
        )
    ).all()
    return "checkins", {
        "time": plan.local_time if plan else None,
        "status": plan.status if plan else None,
        "isolation_end": plan.isolation_end if plan else None,
        "answers": [
            {"date": c.local_date, "mood": c.mood, "note": c.note}
            for c in checkins
            if c.answered_at is not None
        ],
    }
