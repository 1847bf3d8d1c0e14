"""Check-ins, quiet hours and follow-ups with an injected clock, across two timezones."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlmodel import col, select

from core import checkins
from core.checkins import Checkin, CheckinPlan, FollowUp, next_checkin_at, parse_date
from core.clock import FakeClock, as_utc
from core.config import Settings
from core.escalation import Escalation
from core.messages import Outbound, Priority
from core.models import OutboxMessage, Person, RoleGrant
from core.outbox import DeliveryWorker, RateLimits, SendOutcome, queue
from core.quiet import QuietHold, QuietHours
from core.risk import RiskLevel
from core.services import Core
from tests.drivers import EngineChat

STAFF_CHAT = "-100600"
# Monday 5 January 2026, 02:00 UTC: 10:00 in Shanghai, 02:00 in London.
START = datetime(2026, 1, 5, 2, 0, tzinfo=UTC)

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
    return FakeClock(START)


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


async def resident(core: Core, external_id: str, site: str, lang: str = "中文") -> EngineChat:
    """A resident onboarded through a site's deep link."""
    chat = EngineChat(core, external_id, language_hint="zh-hans" if lang == "中文" else "en")
    await chat.command("start", f"site_{site}")
    await chat.tap(lang)
    await chat.tap("同意" if lang == "中文" else "I agree")
    await chat.tap("正在隔离" if lang == "中文" else "I am in isolation")
    await chat.tap("18–39")
    await chat.new_replies()
    return chat


async def person_id(core: Core, chat: EngineChat) -> int:
    async with core.db.session() as s:
        found = (await s.exec(select(Person).where(Person.external_id == chat.external_id))).one()
        assert found.id is not None
        return found.id


async def plan(core: Core, chat: EngineChat) -> CheckinPlan:
    async with core.db.session() as s:
        found = await s.get(CheckinPlan, await person_id(core, chat))
        assert found is not None
        return found


async def checkin_prompts(core: Core, chat: EngineChat) -> list[OutboxMessage]:
    async with core.db.session() as s:
        rows = await s.exec(
            select(OutboxMessage)
            .where(OutboxMessage.chat_id == chat.external_id, OutboxMessage.kind == "checkin")
            .order_by(col(OutboxMessage.id))
        )
        return list(rows.all())


async def staff_rows(core: Core, kind: str) -> list[OutboxMessage]:
    async with core.db.session() as s:
        rows = await s.exec(
            select(OutboxMessage).where(
                OutboxMessage.chat_id == STAFF_CHAT, OutboxMessage.kind == kind
            )
        )
        return list(rows.all())


async def at(core: Core, clock: FakeClock, when: datetime) -> dict[str, int]:
    """Move the clock to ``when`` and run the check-in sweep once."""
    clock.set(when)
    return await checkins.sweep(core.engine)


async def add_escalation(
    core: Core, chat: EngineChat, *, level: RiskLevel, resolved_at: datetime | None
) -> None:
    pid = await person_id(core, chat)
    async with core.db.session() as s:
        s.add(
            Escalation(
                person_id=pid,
                open_person_id=None if resolved_at else pid,
                case_code="R-TEST",
                site_code="north",
                level=int(level),
                source="triage",
                status="resolved" if resolved_at else "open",
                created_at=(resolved_at or core.clock.now()) - timedelta(minutes=30),
                claimed_at=(resolved_at or core.clock.now()) - timedelta(minutes=25),
                resolved_at=resolved_at,
                outcome="safe" if resolved_at else None,
            )
        )
        await s.commit()


# Scheduling -------------------------------------------------------------------------------------


async def test_first_checkins_come_at_20_00_local_time_in_each_timezone(
    core: Core, clock: FakeClock
) -> None:
    shanghai = await resident(core, "201", "north")
    london = await resident(core, "202", "west", "English")
    await at(core, clock, datetime(2026, 1, 5, 11, 59, tzinfo=UTC))
    assert not await checkin_prompts(core, shanghai) and not await checkin_prompts(core, london)
    await at(core, clock, datetime(2026, 1, 5, 12, 0, tzinfo=UTC))  # 20:00 in Shanghai
    assert len(await checkin_prompts(core, shanghai)) == 1
    assert not await checkin_prompts(core, london)
    await at(core, clock, datetime(2026, 1, 5, 19, 59, tzinfo=UTC))
    assert not await checkin_prompts(core, london)
    await at(core, clock, datetime(2026, 1, 5, 20, 0, tzinfo=UTC))  # 20:00 in London
    [prompt] = await checkin_prompts(core, london)
    assert "How has today been" in prompt.text and prompt.priority == Priority.REMINDER


async def test_a_sweep_run_twice_sends_each_checkin_once(core: Core, clock: FakeClock) -> None:
    chat = await resident(core, "203", "north")
    await at(core, clock, datetime(2026, 1, 5, 12, 0, tzinfo=UTC))
    await at(core, clock, datetime(2026, 1, 5, 12, 0, tzinfo=UTC))
    await at(core, clock, datetime(2026, 1, 5, 12, 5, tzinfo=UTC))
    assert len(await checkin_prompts(core, chat)) == 1


async def test_low_risk_checkins_come_twice_a_week(core: Core, clock: FakeClock) -> None:
    chat = await resident(core, "204", "north")
    sent_days = []
    for day in range(5, 19):
        await at(core, clock, datetime(2026, 1, day, 12, 1, tzinfo=UTC))
        sent_days.append(len(await checkin_prompts(core, chat)))
    # Mon 5 (first), then Thursdays and Mondays: 8, 12, 15.
    firsts = [5 + i for i, n in enumerate(sent_days) if n > (sent_days[i - 1] if i else 0)]
    assert firsts == [5, 8, 12, 15]


async def test_a_resolved_high_risk_escalation_makes_checkins_daily_for_a_week(
    core: Core, clock: FakeClock
) -> None:
    chat = await resident(core, "205", "north")
    await at(core, clock, datetime(2026, 1, 5, 12, 0, tzinfo=UTC))
    assert as_utc((await plan(core, chat)).next_due_at) == datetime(2026, 1, 8, 12, 0, tzinfo=UTC)
    clock.set(datetime(2026, 1, 5, 15, 0, tzinfo=UTC))
    await add_escalation(core, chat, level=RiskLevel.HIGH, resolved_at=clock.now())
    await at(core, clock, datetime(2026, 1, 5, 15, 1, tzinfo=UTC))
    updated = await plan(core, chat)
    assert updated.tier == "high"
    assert as_utc(updated.next_due_at) == datetime(2026, 1, 6, 12, 0, tzinfo=UTC)


async def test_daily_checkins_return_to_twice_a_week_after_seven_days(
    core: Core, clock: FakeClock
) -> None:
    chat = await resident(core, "206", "north")
    await add_escalation(core, chat, level=RiskLevel.HIGH, resolved_at=clock.now())
    counts = []
    for day in range(5, 17):
        await at(core, clock, datetime(2026, 1, day, 12, 0, tzinfo=UTC))
        counts.append(len(await checkin_prompts(core, chat)))
    # Daily from the 5th to the 11th (7 days after resolution on the 5th), then Mon 12, Thu 15.
    assert counts == [1, 2, 3, 4, 5, 6, 7, 8, 8, 8, 9, 9]


async def test_a_moderate_questionnaire_result_means_every_second_day(core: Core) -> None:
    assert next_checkin_at(
        time(20, 0), ZoneInfo("Asia/Shanghai"), "moderate", START, date(2026, 1, 4)
    ) == datetime(2026, 1, 6, 12, 0, tzinfo=UTC)


async def test_a_stopped_resident_gets_no_checkin(core: Core, clock: FakeClock) -> None:
    chat = await resident(core, "207", "north")
    await chat.command("stop")
    await at(core, clock, datetime(2026, 1, 5, 12, 0, tzinfo=UTC))
    assert not await checkin_prompts(core, chat)
    assert as_utc((await plan(core, chat)).next_due_at) > clock.now()


# Answers ----------------------------------------------------------------------------------------


async def test_a_mood_answer_is_recorded_with_a_warm_reply(core: Core, clock: FakeClock) -> None:
    chat = await resident(core, "208", "north")
    await at(core, clock, datetime(2026, 1, 5, 12, 0, tzinfo=UTC))
    await chat.tap("还不错")
    replies = await chat.new_replies()
    assert any("真好" in r.text for r in replies)
    async with core.db.session() as s:
        [row] = (await s.exec(select(Checkin))).all()
    assert row.mood == 4 and row.answered_at is not None


async def test_yesterdays_checkin_buttons_are_refused_kindly(core: Core, clock: FakeClock) -> None:
    chat = await resident(core, "209", "north")
    await add_escalation(core, chat, level=RiskLevel.HIGH, resolved_at=clock.now())
    await at(core, clock, datetime(2026, 1, 5, 12, 0, tzinfo=UTC))
    [yesterday] = await checkin_prompts(core, chat)
    await at(core, clock, datetime(2026, 1, 6, 12, 0, tzinfo=UTC))
    old_token = next(
        b["token"] for line in _buttons(yesterday) for b in line if "很好" in b["label"]
    )
    await chat.new_replies()
    result = await chat.press(old_token)
    assert result.notice is not None and "2026-01-05" in result.notice
    async with core.db.session() as s:
        assert all(c.mood is None for c in (await s.exec(select(Checkin))).all())


async def test_a_second_answer_to_the_same_checkin_is_not_counted(
    core: Core, clock: FakeClock
) -> None:
    chat = await resident(core, "210", "north")
    await at(core, clock, datetime(2026, 1, 5, 12, 0, tzinfo=UTC))
    await chat.tap("很差")
    await chat.tap("很好")
    async with core.db.session() as s:
        [row] = (await s.exec(select(Checkin))).all()
    assert row.mood == 1
    assert any("已经回答过" in r.text for r in await chat.new_replies())


async def test_two_low_moods_in_a_row_offer_a_counselor(core: Core, clock: FakeClock) -> None:
    chat = await resident(core, "211", "north")
    await add_escalation(core, chat, level=RiskLevel.HIGH, resolved_at=clock.now())
    await at(core, clock, datetime(2026, 1, 5, 12, 0, tzinfo=UTC))
    await chat.tap("不太好")
    assert not any("咨询师聊一聊" in r.text for r in await chat.new_replies())
    await at(core, clock, datetime(2026, 1, 6, 12, 0, tzinfo=UTC))
    await chat.tap("很差")
    offer = [r for r in await chat.new_replies() if "咨询师聊一聊" in r.text]
    assert offer and offer[0].token("请咨询师联系我")


async def test_a_checkin_note_is_read_by_triage(core: Core, clock: FakeClock) -> None:
    chat = await resident(core, "212", "north")
    await at(core, clock, datetime(2026, 1, 5, 12, 0, tzinfo=UTC))
    await chat.tap("很差")
    await chat.tap("再写几句")
    await chat.text("我不想活了")
    async with core.db.session() as s:
        escalations = (await s.exec(select(Escalation))).all()
    assert len(escalations) == 1 and escalations[0].source == "triage"
    assert any(r.priority == Priority.CRISIS for r in await chat.new_replies())


async def test_a_calm_note_is_kept_with_the_checkin(core: Core, clock: FakeClock) -> None:
    chat = await resident(core, "213", "north")
    await at(core, clock, datetime(2026, 1, 5, 12, 0, tzinfo=UTC))
    await chat.tap("一般")
    await chat.tap("再写几句")
    await chat.text("今天和家里视频了")
    async with core.db.session() as s:
        [row] = (await s.exec(select(Checkin))).all()
    assert row.note == "今天和家里视频了"


# Settings -------------------------------------------------------------------------------------


async def test_a_checkin_time_inside_quiet_hours_is_refused(core: Core) -> None:
    chat = await resident(core, "214", "north")
    await chat.command("checkin")
    await chat.tap("改时间")
    await chat.text("23:30")
    assert any("休息时间" in r.text for r in await chat.new_replies())
    assert (await plan(core, chat)).local_time == "20:00"


async def test_a_new_checkin_time_moves_the_next_checkin(core: Core, clock: FakeClock) -> None:
    chat = await resident(core, "215", "north")
    await chat.command("checkin")
    await chat.tap("改时间")
    await chat.text("9:30")
    updated = await plan(core, chat)
    assert updated.local_time == "09:30"
    assert as_utc(updated.next_due_at) == datetime(2026, 1, 6, 1, 30, tzinfo=UTC)


async def test_pause_skips_a_week_then_checkins_resume(core: Core, clock: FakeClock) -> None:
    chat = await resident(core, "216", "north")
    await chat.command("checkin")
    await chat.tap("暂停一周")
    for day in range(5, 12):
        await at(core, clock, datetime(2026, 1, day, 12, 0, tzinfo=UTC))
    assert not await checkin_prompts(core, chat)
    await at(core, clock, datetime(2026, 1, 12, 12, 0, tzinfo=UTC))
    assert len(await checkin_prompts(core, chat)) == 1


# Silence -------------------------------------------------------------------------------------


async def test_three_silent_days_after_a_high_risk_case_alert_the_staff_once(
    core: Core, clock: FakeClock
) -> None:
    chat = await resident(core, "217", "north")
    await add_escalation(core, chat, level=RiskLevel.HIGH, resolved_at=clock.now())
    for day in (5, 6, 7):
        await at(core, clock, datetime(2026, 1, day, 12, 0, tzinfo=UTC))
    assert not await staff_rows(core, "checkin_silence")
    await at(core, clock, datetime(2026, 1, 8, 2, 0, tzinfo=UTC))  # 3 days since resolution
    [alert] = await staff_rows(core, "checkin_silence")
    assert "R-TEST" in alert.text and "3" in alert.text
    await at(core, clock, datetime(2026, 1, 8, 12, 0, tzinfo=UTC))
    await at(core, clock, datetime(2026, 1, 9, 2, 0, tzinfo=UTC))
    assert len(await staff_rows(core, "checkin_silence")) == 1


async def test_an_answered_checkin_prevents_the_silence_alert(core: Core, clock: FakeClock) -> None:
    chat = await resident(core, "218", "north")
    await add_escalation(core, chat, level=RiskLevel.HIGH, resolved_at=clock.now())
    await at(core, clock, datetime(2026, 1, 6, 12, 0, tzinfo=UTC))
    await chat.tap("一般")
    for day in (7, 8):
        await at(core, clock, datetime(2026, 1, day, 12, 0, tzinfo=UTC))
    await at(core, clock, datetime(2026, 1, 8, 13, 0, tzinfo=UTC))
    assert not await staff_rows(core, "checkin_silence")


# Quiet hours ----------------------------------------------------------------------------------


async def drain(worker: DeliveryWorker) -> None:
    """Sweep until a sweep sends nothing."""
    for _ in range(50):
        sent, _wait = await worker.deliver_due()
        if not sent:
            return
    raise AssertionError("the outbox did not settle")


class RecordingSender:
    channel = "telegram"

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def send(self, row: OutboxMessage) -> SendOutcome:
        self.sent.append(row.text)
        return SendOutcome.sent()


async def test_quiet_hours_hold_outreach_but_never_a_crisis_message(
    core: Core, clock: FakeClock
) -> None:
    chat = await resident(core, "219", "north")
    pid = await person_id(core, chat)
    sender = RecordingSender()
    hold = QuietHold(QuietHours(), core.sites)
    limits = RateLimits(global_per_second=1000, chat_per_second=1000, chat_burst=1000)
    worker = DeliveryWorker(core.db, sender, clock, limits, hold=hold)
    await drain(worker)
    sender.sent.clear()
    clock.set(datetime(2026, 1, 5, 15, 0, tzinfo=UTC))  # 23:00 in Shanghai

    def to_resident(text: str, priority: Priority) -> Outbound:
        return Outbound("telegram", chat.external_id, text, priority=priority, person_id=pid)

    await core.db.run(
        lambda s: queue(
            s,
            [
                to_resident("broadcast", Priority.BROADCAST),
                to_resident("reminder", Priority.REMINDER),
                to_resident("crisis", Priority.CRISIS),
                to_resident("reply", Priority.REPLY),
            ],
            clock.now(),
        )
    )
    await drain(worker)
    assert "crisis" in sender.sent and "reply" in sender.sent
    assert "broadcast" not in sender.sent and "reminder" not in sender.sent
    clock.set(datetime(2026, 1, 5, 23, 59, tzinfo=UTC))  # 07:59 in Shanghai
    await drain(worker)
    assert "reminder" not in sender.sent
    clock.set(datetime(2026, 1, 6, 0, 0, tzinfo=UTC))  # 08:00 in Shanghai
    await drain(worker)
    assert sender.sent.count("reminder") == 1 and sender.sent.count("broadcast") == 1


def test_quiet_hours_release_at_eight_in_the_sites_timezone() -> None:
    quiet = QuietHours()
    london = ZoneInfo("Europe/London")
    assert quiet.release(datetime(2026, 1, 5, 22, 30, tzinfo=UTC), london) == datetime(
        2026, 1, 6, 8, 0, tzinfo=UTC
    )
    assert quiet.release(datetime(2026, 1, 5, 21, 59, tzinfo=UTC), london) is None


# Follow-ups -----------------------------------------------------------------------------------


async def test_an_isolation_end_date_plans_four_follow_ups(core: Core) -> None:
    chat = await resident(core, "220", "north")
    await chat.command("enddate", "2026-01-10")
    async with core.db.session() as s:
        stages = [f.stage for f in (await s.exec(select(FollowUp).order_by(FollowUp.due_at)))]
    assert stages == ["1w", "1m", "3m", "6m"]


async def test_a_follow_up_is_offered_once_and_starts_a_short_rescreen(
    core: Core, clock: FakeClock
) -> None:
    chat = await resident(core, "221", "north")
    await chat.command("enddate", "2026-01-10")
    await at(core, clock, datetime(2026, 1, 17, 11, 59, tzinfo=UTC))
    await at(core, clock, datetime(2026, 1, 17, 12, 0, tzinfo=UTC))
    await at(core, clock, datetime(2026, 1, 17, 12, 1, tzinfo=UTC))
    offers = [r for r in await chat.new_replies() if "一周" in r.text]
    assert len(offers) == 1
    await chat.tap("好，开始")
    assert any("PHQ" in r.text or "1/" in r.text for r in await chat.new_replies())


async def test_no_more_follow_ups_removes_the_rest(core: Core, clock: FakeClock) -> None:
    chat = await resident(core, "222", "north")
    await chat.command("enddate", "2026-01-10")
    await at(core, clock, datetime(2026, 1, 17, 12, 0, tzinfo=UTC))
    await chat.tap("以后不用再回访了")
    async with core.db.session() as s:
        left = (await s.exec(select(FollowUp).where(col(FollowUp.sent_at).is_(None)))).all()
    assert left == []


async def test_staff_can_set_a_residents_end_date(core: Core) -> None:
    chat = await resident(core, "223", "north")
    async with core.db.session() as s:
        person = (await s.exec(select(Person).where(Person.external_id == "223"))).one()
    staff = EngineChat(core, "900")
    await staff.command("start")
    async with core.db.session() as s:
        staff_person = (await s.exec(select(Person).where(Person.external_id == "900"))).one()
        s.add(RoleGrant(person_id=staff_person.id, role="staff", granted_at=START))
        await s.commit()
    await staff.command("enddate", f"{person.case_code} 2026-01-12")
    assert (await plan(core, chat)).isolation_end == "2026-01-12"


def test_dates_are_read_in_the_usual_chinese_and_iso_forms() -> None:
    today = date(2026, 1, 5)
    assert parse_date("2026-02-01", today) == date(2026, 2, 1)
    assert parse_date("2026年2月1日", today) == date(2026, 2, 1)
    assert parse_date("12月30日", today) == date(2025, 12, 30)
    assert parse_date("明天", today) is None


def _buttons(row: OutboxMessage) -> list[list[dict[str, str]]]:
    loaded: list[list[dict[str, str]]] = json.loads(row.buttons)
    return loaded
