"""The daily report's figures against a seeded dataset, its posting, and its CSV."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from sqlmodel import col, select

from core import reports
from core.assessment import AssessmentResult
from core.checkins import Checkin
from core.clock import FakeClock
from core.config import Settings
from core.escalation import Escalation, OnCall
from core.models import OutboxMessage, Person, RoleGrant
from core.quiet import parse_clock_time
from core.services import Core
from tests.drivers import EngineChat

STAFF_CHAT = "-100800"
DAY = date(2026, 1, 4)
# 2026-01-04 in Shanghai runs from 2026-01-03 16:00 to 2026-01-04 16:00 UTC.
IN_DAY = datetime(2026, 1, 4, 3, 0, tzinfo=UTC)
BEFORE = datetime(2026, 1, 3, 15, 0, tzinfo=UTC)

SITES = """
[[site]]
code = "north"
timezone = "Asia/Shanghai"
name = { zh_Hans = "北区隔离点", en = "North site" }
[[site.hotline]]
number = "010-82951332"
name = { zh_Hans = "北京心理危机研究与干预中心", en = "Beijing crisis line" }
open_24h = true

[[site]]
code = "west"
timezone = "Europe/London"
name = { zh_Hans = "西区", en = "West site" }
[[site.hotline]]
number = "116 123"
name = { zh_Hans = "撒玛利亚会", en = "Samaritans" }
open_24h = true
"""


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2026, 1, 5, 1, 0, tzinfo=UTC))  # 09:00 in Shanghai


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    sites = tmp_path / "sites.toml"
    sites.write_text(SITES, encoding="utf-8")
    return Settings(
        data_dir=tmp_path,
        database_url=db_url,
        telegram_token="1:x",  # type: ignore[call-arg]
        staff_chat_id=STAFF_CHAT,
        sites_file=sites,
        _env_file=None,
    )


def _codes() -> Iterator[str]:
    n = 0
    while True:
        n += 1
        yield f"R-T{n:03d}"


async def seed(core: Core) -> None:
    """A day at the north site, plus noise outside the day and at the west site."""
    codes = _codes()
    async with core.db.session() as s:

        def person(site: str, relation: str, consent_at: datetime) -> Person:
            p = Person(
                channel="telegram",
                external_id=next(codes),
                chat_id="0",
                case_code=next(codes),
                site_code=site,
                relation=relation,
                age_band="18_39",
                consent_version=1,
                consent_at=consent_at,
                created_at=consent_at,
                last_seen_at=consent_at,
            )
            s.add(p)
            return p

        new = [person("north", "resident", IN_DAY) for _ in range(4)]
        old = person("north", "resident", BEFORE)
        person("north", "site_staff", IN_DAY)  # staff are not residents
        person("west", "resident", IN_DAY)  # another site
        counselor = person("north", "site_staff", BEFORE)
        roaming = person("north", "site_staff", BEFORE)
        roaming.site_code = None
        await s.flush()
        for c in (counselor, roaming):
            s.add(RoleGrant(person_id=c.id, role="counselor", granted_at=BEFORE))
            s.add(OnCall(person_id=c.id, since=BEFORE))

        for who, instrument, band, at in (
            (new[0], "phq2", "negative", IN_DAY),
            (new[1], "phq2", "negative", IN_DAY),
            (new[2], "phq9", "moderate", IN_DAY),
            (old, "phq9", "mild", BEFORE),  # the day before
        ):
            s.add(
                AssessmentResult(
                    person_id=who.id,
                    instrument=instrument,
                    version="1",
                    attempt=f"a{who.id}{instrument}",
                    total=3,
                    band=band,
                    created_at=at,
                )
            )

        def escalation(who: Person, created: datetime, claim_after: int | None) -> None:
            s.add(
                Escalation(
                    person_id=who.id,
                    open_person_id=None if claim_after else who.id,
                    case_code=who.case_code,
                    site_code="north",
                    level=3,
                    source="triage",
                    status="claimed" if claim_after else "open",
                    created_at=created,
                    claimed_at=created + timedelta(seconds=claim_after) if claim_after else None,
                )
            )

        escalation(new[0], IN_DAY, 60)
        escalation(new[1], IN_DAY + timedelta(hours=1), 180)
        escalation(new[2], IN_DAY + timedelta(hours=2), None)
        escalation(old, BEFORE, None)  # still open from the day before

        for index, who in enumerate(new):
            s.add(
                Checkin(
                    person_id=who.id,
                    site_code="north",
                    local_date=DAY.isoformat(),
                    sent_at=IN_DAY + timedelta(hours=9),
                    answered_at=IN_DAY + timedelta(hours=10) if index < 3 else None,
                    mood=3 if index < 3 else None,
                )
            )
        await s.commit()


async def test_the_daily_figures_match_the_seeded_day(core: Core) -> None:
    await seed(core)
    site = core.sites.get("north")
    assert site is not None
    figures = await core.db.run(lambda s: reports.compute(s, site, DAY, core.clock.now()))
    assert figures.new_residents == 4
    assert figures.assessments == {"phq2": {"negative": 2}, "phq9": {"moderate": 1}}
    assert figures.escalations == 3
    assert figures.claim_median_seconds == 120.0 and figures.claim_slowest_seconds == 180.0
    assert figures.escalations_still_open == 4  # claimed or not, none resolved yet
    assert (figures.checkins_sent, figures.checkins_answered) == (4, 3)
    assert figures.checkin_response_rate == 0.75
    assert figures.residents == 5 and figures.counselors_on_duty == 2
    assert figures.counselors_per_200 == 80.0 and figures.guide == "above"


async def test_bookings_and_rooms_count_zero_on_a_day_without_any(core: Core) -> None:
    await seed(core)
    site = core.sites.get("north")
    assert site is not None
    figures = await core.db.run(lambda s: reports.compute(s, site, DAY, core.clock.now()))
    installed = reports._module("core.booking") is not None
    assert figures.bookings_held == (0 if installed else None)
    assert figures.booking_no_shows == (0 if installed else None)


async def north_reports(core: Core) -> list[OutboxMessage]:
    async with core.db.session() as s:
        found = await s.exec(
            select(OutboxMessage)
            .where(OutboxMessage.kind == "daily_report")
            .where(col(OutboxMessage.dedupe_key).startswith("report:north:"))
            .order_by(col(OutboxMessage.id))
        )
        return list(found.all())


async def test_the_report_is_posted_once_per_site_after_the_report_time(
    core: Core, clock: FakeClock
) -> None:
    await seed(core)
    at_eight = parse_clock_time("08:00")
    clock.set(datetime(2026, 1, 4, 23, 59, tzinfo=UTC))  # 07:59 in Shanghai
    await reports.sweep(core.engine, at_eight)
    assert not await north_reports(core)
    clock.set(datetime(2026, 1, 5, 0, 0, tzinfo=UTC))  # 08:00 in Shanghai
    await reports.sweep(core.engine, at_eight)
    await reports.sweep(core.engine, at_eight)
    posted = await north_reports(core)
    [report] = posted
    assert "北区隔离点" in report.text and "2026-01-04" in report.text
    assert "新入住人员：4" in report.text and "3/4（75%）" in report.text
    assert "认领用时中位数 2:00，最慢 3:00" in report.text


async def test_the_csv_has_one_row_per_site_with_the_figures(core: Core) -> None:
    await seed(core)
    north = core.sites.get("north")
    assert north is not None
    figures = await core.db.run(lambda s: reports.compute(s, north, DAY, core.clock.now()))
    rows = list(csv.DictReader(io.StringIO(reports.to_csv([figures]))))
    assert rows[0]["site"] == "north" and rows[0]["new_residents"] == "4"
    assert rows[0]["checkin_response_rate"] == "0.750"
    assert rows[0]["assessments"] == "phq2 negative 2; phq9 moderate 1"
    assert rows[0]["guide_6_9"] == "above"


async def test_only_supervisors_and_admins_see_the_report_in_the_chat(core: Core) -> None:
    resident = EngineChat(core, "500")
    await resident.command("start")
    await resident.command("report")
    assert any("只有督导" in r.text for r in await resident.new_replies())
