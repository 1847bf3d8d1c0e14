"""The daily report (日报) per site: posted in the staff chat, and as CSV for the admin API.

A site's report for a local calendar day counts: new residents, questionnaires by band,
escalations (how many, median and slowest time to claim, how many are still open), bookings
held and no-shows, group-room attendance, the check-in response rate, and counselors on duty
per 200 residents against the 6–9 guide. The sweep posts yesterday's report once per site at
the configured local time; a ``DailyReport`` row (unique per site and day) is what makes it once.
"""

from __future__ import annotations

import csv
import importlib
import io
import json
import logging
import statistics
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import Column, DateTime, Text, UniqueConstraint
from sqlalchemy.exc import IntegrityError
from sqlmodel import Field, SQLModel, col, func, or_, select
from sqlmodel.ext.asyncio.session import AsyncSession

from core.access import Action
from core.assessment import AssessmentResult
from core.checkins import Checkin
from core.clock import as_utc
from core.conversation import ConversationEngine, Turn
from core.escalation import Escalation, OnCall
from core.i18n import format_number
from core.messages import Outbound, Priority
from core.models import Person, RoleGrant
from core.outbox import queue
from core.sites import Site

log = logging.getLogger(__name__)

GUIDE_LOW, GUIDE_HIGH = 6, 9  # counselors per 200 people in isolation (the plan's guide)
PER = 200
CLINICAL_ROLES = ("counselor", "supervisor")
CSV_COLUMNS = (
    "site",
    "date",
    "new_residents",
    "assessments",
    "escalations",
    "claim_median_seconds",
    "claim_slowest_seconds",
    "escalations_still_open",
    "bookings_held",
    "booking_no_shows",
    "room_attendance",
    "checkins_sent",
    "checkins_answered",
    "checkin_response_rate",
    "residents",
    "counselors_on_duty",
    "counselors_per_200",
    "guide_6_9",
)


class DailyReport(SQLModel, table=True):
    """A daily report already posted for a site and day (its figures kept as JSON)."""

    __tablename__ = "daily_report"
    __table_args__ = (UniqueConstraint("site_code", "day", name="uq_daily_report"),)

    id: int | None = Field(default=None, primary_key=True)
    site_code: str = Field(max_length=32)
    day: str = Field(max_length=10)
    figures: str = Field(default="{}", sa_column=Column(Text, nullable=False))
    posted_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


@dataclass
class DailyFigures:
    """One site's figures for one local day."""

    site: str
    day: str
    new_residents: int = 0
    assessments: dict[str, dict[str, int]] = field(default_factory=dict)
    escalations: int = 0
    claim_median_seconds: float | None = None
    claim_slowest_seconds: float | None = None
    escalations_still_open: int = 0
    #: None when the deployment has no booking (or room) module
    bookings_held: int | None = None
    booking_no_shows: int | None = None
    room_attendance: int | None = None
    checkins_sent: int = 0
    checkins_answered: int = 0
    residents: int = 0
    counselors_on_duty: int = 0

    @property
    def checkin_response_rate(self) -> float | None:
        """Answered / sent, or None when none were sent."""
        return self.checkins_answered / self.checkins_sent if self.checkins_sent else None

    @property
    def counselors_per_200(self) -> float | None:
        """Counselors on duty per 200 residents, or None without residents."""
        return self.counselors_on_duty * PER / self.residents if self.residents else None

    @property
    def guide(self) -> str:
        """``below``, ``within`` or ``above`` the 6–9 per 200 guide (``none``: no residents)."""
        ratio = self.counselors_per_200
        if ratio is None:
            return "none"
        if ratio < GUIDE_LOW:
            return "below"
        return "within" if ratio <= GUIDE_HIGH else "above"

    def as_row(self) -> dict[str, Any]:
        """The figures as one CSV row."""
        assessments = "; ".join(
            f"{instrument} {band} {n}"
            for instrument, bands in sorted(self.assessments.items())
            for band, n in sorted(bands.items())
        )
        rate = self.checkin_response_rate
        ratio = self.counselors_per_200
        return {
            **{k: v for k, v in asdict(self).items() if k != "assessments"},
            "date": self.day,
            "assessments": assessments,
            "bookings_held": _blank(self.bookings_held),
            "booking_no_shows": _blank(self.booking_no_shows),
            "room_attendance": _blank(self.room_attendance),
            "claim_median_seconds": _blank(self.claim_median_seconds),
            "claim_slowest_seconds": _blank(self.claim_slowest_seconds),
            "checkin_response_rate": "" if rate is None else f"{rate:.3f}",
            "counselors_per_200": "" if ratio is None else f"{ratio:.2f}",
            "guide_6_9": self.guide,
        }


def _blank(value: float | None) -> object:
    return "" if value is None else value


def day_window(day: date, site: Site) -> tuple[datetime, datetime]:
    """The UTC start and end of a local calendar day at a site."""
    tz = site.tz
    start = datetime.combine(day, time(0, 0), tzinfo=tz)
    end = datetime.combine(day + timedelta(days=1), time(0, 0), tzinfo=tz)
    return start.astimezone(UTC), end.astimezone(UTC)


OptionalFigures = Callable[[AsyncSession, str, datetime, datetime], Awaitable[dict[str, int]]]


def _module(name: str) -> Any:
    """A feature module, or None when this deployment does not have it."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


async def booking_figures(
    session: AsyncSession, site_code: str, start: datetime, end: datetime
) -> dict[str, int] | None:
    """Sessions held and no-shows at a site in a window; None without the booking module.

    The module's own ``report_figures`` is used when it has one; otherwise its ``Booking``
    table is counted by status (``held``, ``no_show``) for sessions starting in the window.
    """
    module = _module("core.booking")
    if module is None:
        return None
    hook: OptionalFigures | None = getattr(module, "report_figures", None)
    if callable(hook):
        return await hook(session, site_code, start, end)
    booking = getattr(module, "Booking", None)
    if booking is None:
        return None
    rows = (
        await session.exec(
            select(booking.status, func.count())
            .join(Person, col(Person.id) == booking.resident_id)
            .where(col(Person.site_code) == site_code)
            .where(booking.starts_at >= start, booking.starts_at < end)
            .group_by(booking.status)
        )
    ).all()
    by_status = {str(status): int(n) for status, n in rows}
    return {"held": by_status.get("held", 0), "no_shows": by_status.get("no_show", 0)}


async def room_figures(
    session: AsyncSession, site_code: str, start: datetime, end: datetime
) -> dict[str, int] | None:
    """Seats taken in group-room sessions starting in the window; None without rooms."""
    module = _module("core.rooms")
    if module is None:
        return None
    hook: OptionalFigures | None = getattr(module, "report_figures", None)
    if callable(hook):
        return await hook(session, site_code, start, end)
    member = getattr(module, "RoomMember", None)
    meeting = getattr(module, "RoomSession", None)
    if member is None or meeting is None:
        return None
    attended = await _count(
        session,
        select(func.count())
        .select_from(member)
        .join(meeting, meeting.id == member.session_id)
        .join(Person, col(Person.id) == member.person_id)
        .where(col(Person.site_code) == site_code)
        .where(meeting.starts_at >= start, meeting.starts_at < end),
    )
    return {"attended": attended}


async def compute(session: AsyncSession, site: Site, day: date, now: datetime) -> DailyFigures:
    """Count one site's figures for one local day (open escalations as of ``now``)."""
    start, end = day_window(day, site)
    figures = DailyFigures(site=site.code, day=day.isoformat())
    at_site = col(Person.site_code) == site.code

    figures.new_residents = await _count(
        session,
        select(func.count())
        .select_from(Person)
        .where(at_site)
        .where(col(Person.relation) != "site_staff")
        .where(col(Person.consent_at) >= start, col(Person.consent_at) < end),
    )
    bands = (
        await session.exec(
            select(AssessmentResult.instrument, AssessmentResult.band, func.count())
            .join(Person, col(Person.id) == col(AssessmentResult.person_id))
            .where(at_site)
            .where(col(AssessmentResult.created_at) >= start)
            .where(col(AssessmentResult.created_at) < end)
            .group_by(col(AssessmentResult.instrument), col(AssessmentResult.band))
        )
    ).all()
    for instrument, band, n in bands:
        figures.assessments.setdefault(instrument, {})[band] = int(n)

    escalations = (
        await session.exec(
            select(Escalation.created_at, Escalation.claimed_at)
            .where(col(Escalation.site_code) == site.code)
            .where(col(Escalation.created_at) >= start)
            .where(col(Escalation.created_at) < end)
        )
    ).all()
    figures.escalations = len(escalations)
    waits = [
        (as_utc(claimed) - as_utc(created)).total_seconds()
        for created, claimed in escalations
        if claimed is not None
    ]
    if waits:
        figures.claim_median_seconds = float(statistics.median(waits))
        figures.claim_slowest_seconds = float(max(waits))
    figures.escalations_still_open = await _count(
        session,
        select(func.count())
        .select_from(Escalation)
        .where(col(Escalation.site_code) == site.code)
        .where(col(Escalation.status) != "resolved")
        .where(col(Escalation.created_at) < as_utc(now)),
    )

    bookings = await booking_figures(session, site.code, start, end)
    if bookings is not None:
        figures.bookings_held = int(bookings.get("held", 0))
        figures.booking_no_shows = int(bookings.get("no_shows", 0))
    rooms = await room_figures(session, site.code, start, end)
    if rooms is not None:
        figures.room_attendance = int(rooms.get("attended", 0))

    sent_rows = (
        await session.exec(
            select(Checkin.answered_at)
            .where(col(Checkin.site_code) == site.code)
            .where(col(Checkin.sent_at) >= start)
            .where(col(Checkin.sent_at) < end)
        )
    ).all()
    figures.checkins_sent = len(sent_rows)
    figures.checkins_answered = sum(1 for answered in sent_rows if answered is not None)

    figures.residents = await _count(
        session,
        select(func.count())
        .select_from(Person)
        .where(at_site)
        .where(col(Person.relation) == "resident")
        .where(col(Person.consent_version).is_not(None))
        .where(col(Person.blocked_at).is_(None)),
    )
    # Counselors serving the site: those of the site, and those of no site (the whole team).
    figures.counselors_on_duty = await _count(
        session,
        select(func.count(func.distinct(OnCall.person_id)))
        .select_from(OnCall)
        .join(Person, col(Person.id) == col(OnCall.person_id))
        .join(RoleGrant, col(RoleGrant.person_id) == col(OnCall.person_id))
        .where(col(RoleGrant.role).in_(CLINICAL_ROLES))
        .where(or_(at_site, col(Person.site_code).is_(None))),
    )
    return figures


async def _count(session: AsyncSession, query: Any) -> int:
    return int((await session.exec(query)).one())


def report_text(engine: ConversationEngine, figures: DailyFigures, site: Site) -> str:
    """The report as staff read it in the chat."""
    lang = engine.config.default_language
    t = engine.catalogs.t
    none = t(lang, "report.none")
    not_installed = t(lang, "report.not_installed")
    assessments = (
        "\n".join(
            "  "
            + instrument.upper()
            + ": "
            + ", ".join(f"{band} {n}" for band, n in sorted(bands.items()))
            for instrument, bands in sorted(figures.assessments.items())
        )
        or "  " + none
    )
    rate = figures.checkin_response_rate
    ratio = figures.counselors_per_200
    return t(
        lang,
        "report.daily",
        site=site.name(lang),
        day=figures.day,
        new=figures.new_residents,
        assessments=assessments,
        escalations=figures.escalations,
        median=_duration(figures.claim_median_seconds, none),
        slowest=_duration(figures.claim_slowest_seconds, none),
        still_open=figures.escalations_still_open,
        bookings=not_installed if figures.bookings_held is None else str(figures.bookings_held),
        no_shows=(
            not_installed if figures.booking_no_shows is None else str(figures.booking_no_shows)
        ),
        rooms=not_installed if figures.room_attendance is None else str(figures.room_attendance),
        answered=figures.checkins_answered,
        sent=figures.checkins_sent,
        rate=none if rate is None else f"{rate:.0%}",
        on_duty=figures.counselors_on_duty,
        residents=figures.residents,
        per200=none if ratio is None else format_number(round(ratio, 1), lang),
        guide=t(lang, f"report.guide_{figures.guide}"),
    )


def _duration(seconds: float | None, none: str) -> str:
    if seconds is None:
        return none
    whole = round(seconds)
    return f"{whole // 60}:{whole % 60:02d}"


def to_csv(rows: list[DailyFigures]) -> str:
    """Reports as CSV, one row per site and day."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for figures in rows:
        writer.writerow(figures.as_row())
    return buffer.getvalue()


async def post_due(
    session: AsyncSession, engine: ConversationEngine, site: Site, report_time: time, now: datetime
) -> bool:
    """Post yesterday's report for ``site`` once its local report time has passed."""
    local = as_utc(now).astimezone(site.tz)
    if local.time() < report_time:
        return False
    day = local.date() - timedelta(days=1)
    exists = (
        await session.exec(
            select(DailyReport.id)
            .where(DailyReport.site_code == site.code)
            .where(DailyReport.day == day.isoformat())
        )
    ).first()
    if exists is not None:
        return False
    figures = await compute(session, site, day, now)
    session.add(
        DailyReport(
            site_code=site.code,
            day=day.isoformat(),
            figures=json.dumps(figures.as_row(), ensure_ascii=False),
            posted_at=now,
        )
    )
    chat = engine.config.staff_chat_id
    if chat:
        await queue(
            session,
            [
                Outbound(
                    channel="telegram",
                    chat_id=chat,
                    chat_kind="group",
                    text=report_text(engine, figures, site),
                    priority=Priority.REMINDER,
                    kind="daily_report",
                    dedupe_key=f"report:{site.code}:{day.isoformat()}",
                )
            ],
            now,
        )
    return True


async def sweep(engine: ConversationEngine, report_time: time) -> int:
    """The scheduler's job: post each site's daily report that is due; return how many."""
    now = engine.clock.now()
    posted = 0
    for site in engine.sites.sites.values():

        async def work(session: AsyncSession, site: Site = site) -> bool:
            return await post_due(session, engine, site, report_time, now)

        try:
            posted += int(await engine.db.run(work))
        except IntegrityError:  # another worker posted it at the same moment
            continue
    if posted:
        engine.notify("telegram")
    return posted


def register(engine: ConversationEngine) -> None:
    """Register ``/report [site] [YYYY-MM-DD]`` for supervisors and admins."""
    engine.command("report", _report_command, before_onboarding=True)


async def _report_command(turn: Turn, args: str) -> None:
    if not turn.may(Action.VIEW_REPORTS):
        turn.say("report.not_allowed")
        return
    words = args.split()
    site = turn.engine.sites.get(words[0]) if words else turn.site_or_default
    if site is None:
        turn.say("report.usage")
        return
    local_today = as_utc(turn.now).astimezone(site.tz).date()
    day = local_today - timedelta(days=1)
    if len(words) > 1:
        try:
            day = date.fromisoformat(words[1])
        except ValueError:
            turn.say("report.usage")
            return
    figures = await compute(turn.session, site, day, turn.now)
    turn.send(report_text(turn.engine, figures, site))
