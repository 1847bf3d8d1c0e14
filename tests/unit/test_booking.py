"""Booking one-to-one counseling: availability, the resident's flow, races, reminders, outcomes."""

from __future__ import annotations

import asyncio
import itertools
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlmodel import col, select

from core.booking import (
    Booking,
    BookingChat,
    BookingReminder,
    BookingWaitlist,
    Counselor,
    Slot,
    SlotConflict,
    add_slots,
    send_due_reminders,
)
from core.booking_chat import close_due_chats
from core.clock import FakeClock, as_utc
from core.config import ConfigError, Settings, load_settings
from core.db import Database
from core.escalation import Escalation
from core.models import AuditLog, ButtonToken, OutboxMessage, Person, RoleGrant
from core.privacy import export_person
from core.services import Core, build_core
from tests.drivers import EngineChat
from tests.unit.test_checkins import SITES  # two sites: Shanghai and London
from tests.unit.test_checkins import resident as resident_at  # onboarded by a site's link

STAFF_CHAT = "-100500"
ADMIN = "800"
PHONE = "010-12345678"


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    return Settings(
        data_dir=tmp_path,
        database_url=db_url,
        telegram_token="1:x",  # type: ignore[call-arg]
        staff_chat_id=STAFF_CHAT,
        admins=[ADMIN],
        _env_file=None,
    )


async def case_code(core: Core, external_id: str) -> str:
    async with core.db.session() as s:
        person = (await s.exec(select(Person).where(Person.external_id == external_id))).one()
        return person.case_code


async def counselor(
    core: Core,
    external_id: str = "900",
    meet: str = f"phone:{PHONE}",
    languages: str = "zh_Hans",
    site: str | None = None,
) -> EngineChat:
    """A registered counselor (onboarded, then registered by the admin)."""
    if site is None:
        chat = EngineChat(core, external_id)
        await chat.onboard()
    else:
        chat = await resident_at(core, external_id, site)
    admin = EngineChat(core, ADMIN)
    await admin.command(
        "counselor",
        f"{await case_code(core, external_id)} languages={languages} sites=* meet={meet}",
    )
    assert "已登记咨询师" in (await admin.new_replies())[-1].text
    return chat


async def with_slots(chat: EngineChat, phrase: str = "明天 14:00-17:00 50分钟") -> None:
    await chat.command("available", phrase)
    await chat.tap("添加")
    await chat.new_replies()


async def slots(core: Core) -> list[Slot]:
    async with core.db.session() as s:
        return list((await s.exec(select(Slot).order_by(col(Slot.starts_at)))).all())


async def bookings(core: Core) -> list[Booking]:
    async with core.db.session() as s:
        return list((await s.exec(select(Booking).order_by(col(Booking.id)))).all())


async def resident(core: Core, external_id: str = "100", lang: str = "中文") -> EngineChat:
    chat = EngineChat(core, external_id)
    await chat.onboard(lang)
    return chat


async def book_first(chat: EngineChat, day: str = "1月6日", time: str = "14:00") -> None:
    await chat.tap("预约心理咨询")
    await chat.tap(day)
    await chat.tap(time)
    await chat.tap("睡眠")
    await chat.tap("确认预约")


async def person_pk(core: Core, external_id: str) -> int:
    async with core.db.session() as s:
        person = (await s.exec(select(Person).where(Person.external_id == external_id))).one()
        assert person.id is not None
        return person.id


async def booked(core: Core, meet: str = f"phone:{PHONE}") -> tuple[EngineChat, EngineChat]:
    """A counselor with three slots on January 6th and a resident who booked the first."""
    c = await counselor(core, meet=meet)
    await with_slots(c)
    r = await resident(core)
    await book_first(r)
    return c, r


def local(hour: int, minute: int = 0, day: int = 6) -> datetime:
    """A time on January ``day`` 2026 in Shanghai (UTC+8), as aware UTC."""
    return datetime(2026, 1, day, hour - 8, minute, tzinfo=UTC)


# Availability --------------------------------------------------------------------------------


async def test_availability_in_chinese_words_becomes_fifty_minute_slots(core: Core) -> None:
    chat = await counselor(core)
    await chat.command("available", "明天 14:00-17:00 50分钟")
    preview = (await chat.new_replies())[-1].text
    assert "1月6日" in preview and "14:00、15:00、16:00" in preview
    await chat.tap("添加")
    assert "已添加 3 个" in (await chat.new_replies())[-1].text
    found = await slots(core)
    assert [as_utc(s.starts_at) for s in found] == [local(14), local(15), local(16)]
    assert all(as_utc(s.ends_at) - as_utc(s.starts_at) == timedelta(minutes=50) for s in found)


async def test_an_unparseable_phrase_is_asked_again_and_nothing_is_stored(core: Core) -> None:
    chat = await counselor(core)
    await chat.command("menu")
    await chat.tap("我的咨询时段")
    await chat.tap("添加可预约时间")
    await chat.text("随便什么时候都行")
    replies = await chat.new_replies()
    assert any("哪一天" in r.text for r in replies)
    assert "什么时候有空" in replies[-1].text  # asked again
    assert await slots(core) == []
    await chat.text("明天下午两点到五点")  # the same step still reads the next answer
    assert "15:00" in (await chat.new_replies())[-1].text


async def test_a_window_in_the_past_is_refused(core: Core) -> None:
    chat = await counselor(core)
    await chat.command("available", "今天 9:00-11:00")  # 20:00 in Shanghai now
    assert "已经过去" in "".join(r.text for r in await chat.new_replies())
    assert await slots(core) == []


async def test_overlapping_availability_is_refused_whole(core: Core) -> None:
    chat = await counselor(core)
    await with_slots(chat)
    await chat.command("available", "明天 16:30-18:30 50分钟")
    await chat.tap("添加")
    assert "冲突" in "".join(r.text for r in await chat.new_replies())
    assert len(await slots(core)) == 3


async def test_two_overlapping_additions_at_once_store_one_of_them(
    core: Core, clock: FakeClock
) -> None:
    await counselor(core)
    async with core.db.session() as s:
        profile = (await s.exec(select(Counselor))).one()
    first, second = [local(14), local(15), local(16)], [local(15, 30), local(16, 30)]
    results = await asyncio.gather(
        core.db.run(lambda s: add_slots(s, profile, first, 50, clock.now())),
        core.db.run(lambda s: add_slots(s, profile, second, 50, clock.now())),
    )
    assert sum(isinstance(r, SlotConflict) for r in results) == 1
    found = await slots(core)
    assert len(found) in (2, 3)
    for a, b in itertools.pairwise(found):
        assert as_utc(a.ends_at) <= as_utc(b.starts_at)


async def test_a_counselor_removes_a_free_slot(core: Core) -> None:
    chat = await counselor(core)
    await with_slots(chat)
    await chat.command("slots")
    await chat.tap("删除")
    assert "已删除" in "".join(r.text for r in await chat.new_replies())
    assert [s.status for s in await slots(core)].count("removed") == 1


async def test_removing_a_booked_slot_asks_then_cancels_and_offers_the_resident_other_times(
    core: Core,
) -> None:
    c = await counselor(core)
    await with_slots(c)
    r = await resident(core)
    waiting = await resident(core, "101")
    await book_first(r)
    await r.new_replies()
    async with core.db.session() as s:  # someone waiting for a time: nothing opens for them
        s.add(BookingWaitlist(person_id=await person_pk(core, "101"), created_at=local(9)))
        await s.commit()
    await c.command("slots")
    await c.new_replies()
    await c.tap("已预约")
    sure = (await c.new_replies())[-1]
    code = await case_code(core, "100")
    assert "会取消这次预约" in sure.text and code in sure.text
    assert [b.status for b in await bookings(core)] == ["booked"]
    await c.tap("删除并取消")
    done = "".join(x.text for x in await c.new_replies())
    assert "预约已取消" in done and code in done
    [booking] = await bookings(core)
    assert booking.status == "cancelled" and booking.active_slot_id is None
    assert [s.status for s in await slots(core)] == ["removed", "open", "open"]
    [told] = await r.new_replies()
    assert "2026年1月6日 14:00" in told.text and "这不是你的原因" in told.text
    assert [row[0]["label"] for row in told.buttons[:2]] == [
        "2026年1月6日 15:00（周二）",
        "2026年1月6日 16:00（周二）",
    ]
    assert await waiting.new_replies() == []
    await r.press(told.token("15:00"))
    await r.tap("先不说")
    await r.tap("确认预约")
    assert [b.status for b in await bookings(core)] == ["cancelled", "booked"]
    async with core.db.session() as s:
        assert (await s.exec(select(BookingReminder))).all()  # the new booking's, not the old
        old = await s.exec(select(BookingReminder).where(BookingReminder.booking_id == booking.id))
        assert old.all() == []


async def test_keeping_a_booked_slot_and_a_stale_removal_confirmation(core: Core) -> None:
    c, r = await booked(core)
    await c.command("slots")
    await c.tap("已预约")
    await c.tap("保留这个时段")
    assert [b.status for b in await bookings(core)] == ["booked"]
    await c.tap("已预约")
    confirm = (await c.new_replies())[-1].token("删除并取消")
    await c.command("available")  # another step since: the confirmation is stale
    result = await c.press(confirm)
    assert result.notice and "之前的步骤" in result.notice
    assert [b.status for b in await bookings(core)] == ["booked"]
    await c.tap("已预约")
    confirm = (await c.new_replies())[-1].token("删除并取消")
    await r.tap("预约心理咨询")
    await r.tap("取消预约")
    await r.tap("确定取消")  # the resident cancels first: the removal finds a free slot
    await r.new_replies()
    await c.press(confirm)
    assert "已删除" in "".join(x.text for x in await c.new_replies())
    assert await r.new_replies() == []
    assert [s.status for s in await slots(core)] == ["removed", "open", "open"]


async def test_a_started_booked_slot_cannot_be_removed(core: Core, clock: FakeClock) -> None:
    c, _r = await booked(core)
    await c.command("slots")
    await c.tap("已预约")
    clock.set(local(14, 5))
    await c.tap("删除并取消")
    assert "已经开始" in (await c.new_replies())[-1].text
    assert [b.status for b in await bookings(core)] == ["booked"]


async def test_a_removed_booking_is_told_in_english_in_london_time_and_waitlisted_first(
    tmp_path: Path, db: Database, clock: FakeClock
) -> None:
    sites = tmp_path / "sites.toml"
    sites.write_text(SITES, encoding="utf-8")
    core = build_core(
        Settings(
            data_dir=tmp_path,
            database_url=db.url,
            telegram_token="1:x",  # type: ignore[call-arg]
            staff_chat_id=STAFF_CHAT,
            admins=[ADMIN],
            sites_file=sites,
            _env_file=None,
        ),
        db,
        clock,
    )
    c = await counselor(core, languages="zh_Hans,en", site="north")
    await c.command("available", "明天 14:00-15:00 50分钟")  # one slot, 14:00 in Shanghai
    await c.tap("添加")
    r = await resident_at(core, "100", "west", "English")
    later = await resident_at(core, "101", "west", "English")
    await r.tap("Book a counselor")
    await r.tap("Tue 6 Jan")
    await r.tap("06:00")  # 14:00 in Shanghai is 06:00 in London
    await r.tap("Skip")
    await r.tap("Confirm")
    await r.new_replies()
    clock.advance(minutes=5)
    await later.tap("Book a counselor")
    await later.tap("Tell me when")  # joins the waitlist after that booking was made
    await c.command("slots")
    await c.tap("已预约")
    await c.tap("删除并取消")
    [told] = await r.new_replies()
    assert "6 Jan 2026, 06:00" in told.text and "waitlist" in told.text
    async with core.db.session() as s:
        queue = await s.exec(select(BookingWaitlist).order_by(col(BookingWaitlist.created_at)))
        first, _ = queue.all()
    assert first.person_id == await person_pk(core, "100")
    await with_slots(c, "后天 9:00-10:00 50分钟")
    opened = (await r.new_replies())[-1]
    assert "has opened" in opened.text and "7 Jan 2026, 01:00" in opened.text


async def test_only_an_admin_registers_counselors(core: Core) -> None:
    chat = EngineChat(core, "901")
    await chat.onboard()
    await chat.command("counselor", f"{await case_code(core, '901')} meet=chat")
    assert "只有管理员" in (await chat.new_replies())[-1].text
    async with core.db.session() as s:
        assert (await s.exec(select(Counselor))).all() == []


# The resident's flow ---------------------------------------------------------------------------


async def test_resident_books_day_time_topic_and_the_counselor_is_told(core: Core) -> None:
    c = await counselor(core)
    await with_slots(c)
    r = await resident(core)
    await r.tap("预约心理咨询")
    days = (await r.new_replies())[-1]
    assert "1月6日" in days.buttons[0][0]["label"]
    await r.tap("1月6日")
    times = (await r.new_replies())[-1]
    assert [b["label"] for b in times.buttons[0]] == ["14:00", "15:00", "16:00"]
    await r.tap("15:00")
    await r.tap("睡眠")
    confirm = (await r.new_replies())[-1].text
    assert "2026年1月6日 15:00" in confirm and "电话" in confirm and "睡眠" in confirm
    await r.tap("确认预约")
    assert "预约好了" in (await r.new_replies())[-1].text
    [booking] = await bookings(core)
    assert booking.status == "booked" and booking.topic == "@sleep"
    told = (await c.new_replies())[-1].text
    assert "新预约" in told and await case_code(core, "100") in told and "睡眠" in told
    assert "高风险" not in told


async def test_a_typed_topic_is_kept_in_the_residents_words(core: Core) -> None:
    c = await counselor(core)
    await with_slots(c)
    r = await resident(core)
    await r.tap("预约心理咨询")
    await r.tap("1月6日")
    await r.tap("14:00")
    await r.text("总是担心家里的老人")
    await r.tap("确认预约")
    assert (await bookings(core))[0].topic == "总是担心家里的老人"


async def test_the_menu_entry_is_hidden_from_children(core: Core) -> None:
    child = EngineChat(core, "150")
    await child.command("start")
    await child.tap("中文")
    await child.tap("同意")
    await child.tap("正在隔离")
    await child.tap("16岁以下")
    await child.command("menu")
    labels = [b["label"] for row in (await child.new_replies())[-1].buttons for b in row]
    assert not any("预约" in label for label in labels)


async def test_an_english_speaker_does_not_see_a_chinese_only_counselor(core: Core) -> None:
    c = await counselor(core)
    await with_slots(c)
    r = EngineChat(core, "101", language_hint="en")
    await r.onboard("English")
    await r.tap("Book a counselor")
    assert "no free times" in (await r.new_replies())[-1].text


async def test_twenty_residents_racing_for_one_slot_make_one_booking(core: Core) -> None:
    c = await counselor(core)
    await with_slots(c)
    racers = [await resident(core, str(200 + n)) for n in range(20)]
    tokens = []
    for r in racers:
        await r.tap("预约心理咨询")
        await r.tap("1月6日")
        await r.tap("14:00")
        await r.tap("先不说")
        tokens.append((await r.new_replies())[-1].token("确认预约"))
    await asyncio.gather(*(r.press(t) for r, t in zip(racers, tokens, strict=True)))
    found = await bookings(core)
    assert len(found) == 1 and found[0].status == "booked"
    losers = [r for r in racers if r.external_id != str(found[0].resident_id)]
    offered = 0
    for r in racers:
        texts = [x.text for x in await r.new_replies()]
        if any("被别人约走" in t for t in texts):
            offered += 1
            assert any("还空着" in t for t in texts)  # the next free slots, one tap each
    assert offered == 19 and len(losers) >= 19


async def test_a_loser_books_the_offered_next_slot_in_one_tap(core: Core) -> None:
    c = await counselor(core)
    await with_slots(c)
    first, second = await resident(core, "100"), await resident(core, "101")
    for r in (first, second):
        await r.tap("预约心理咨询")
        await r.tap("1月6日")
        await r.tap("14:00")
        await r.tap("先不说")
    await first.tap("确认预约")
    await second.tap("确认预约")
    await second.tap("15:00")
    await second.tap("先不说")
    await second.tap("确认预约")
    assert sorted(b.starts_at.hour for b in await bookings(core)) == [6, 7]


# Changes and the cut-off -----------------------------------------------------------------------


async def test_cancelling_frees_the_slot_and_tells_the_counselor(core: Core) -> None:
    c, r = await booked(core)
    await c.new_replies()
    await r.tap("预约心理咨询")
    await r.tap("取消预约")
    await r.tap("确定取消")
    assert "已经取消" in (await r.new_replies())[-1].text
    [booking] = await bookings(core)
    assert booking.status == "cancelled" and booking.active_slot_id is None
    assert "取消" in (await c.new_replies())[-1].text
    other = await resident(core, "101")
    await book_first(other)  # the same slot can be booked again
    assert len([b for b in await bookings(core) if b.status == "booked"]) == 1


async def test_cancelling_inside_the_cut_off_is_refused(core: Core, clock: FakeClock) -> None:
    _c, r = await booked(core)
    await r.tap("预约心理咨询")
    clock.set(local(12, 30))  # 90 minutes before 14:00
    await r.tap("取消预约")
    assert "不能在线取消" in (await r.new_replies())[-1].text
    assert (await bookings(core))[0].status == "booked"


async def test_the_cut_off_is_a_setting(
    settings: Settings, db: Database, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ANXIN_BOOKING_CUTOFF_MINUTES", raising=False)
    assert Settings(_env_file=None).booking_cutoff_minutes == 120  # type: ignore[call-arg]
    monkeypatch.setenv("ANXIN_BOOKING_CUTOFF_MINUTES", "30")
    configured = Settings(**settings.model_dump(exclude={"booking_cutoff_minutes"}), _env_file=None)
    assert configured.booking_cutoff_minutes == 30
    with pytest.raises(ConfigError, match="ANXIN_BOOKING_CUTOFF_MINUTES"):
        load_settings(booking_cutoff_minutes=-5, _env_file=None)
    core = build_core(configured, db, clock)
    c = await counselor(core)
    await with_slots(c)
    r = await resident(core)
    await r.tap("预约心理咨询")
    await r.tap("1月6日")
    await r.tap("14:00")
    await r.tap("先不说")
    clock.set(local(13, 20))  # 40 minutes before: open under a 30-minute cut-off
    await r.tap("确认预约")
    assert "开始前 30 分钟以内" in (await r.new_replies())[-1].text
    await r.tap("预约心理咨询")
    clock.set(local(13, 40))  # 20 minutes before
    await r.tap("取消预约")
    assert "离开始已经不到 30 分钟" in (await r.new_replies())[-1].text
    assert [b.status for b in await bookings(core)] == ["booked"]


async def test_booking_a_slot_inside_the_cut_off_is_refused(core: Core, clock: FakeClock) -> None:
    c = await counselor(core)
    await with_slots(c)
    r = await resident(core)
    await r.tap("预约心理咨询")
    await r.tap("1月6日")
    await r.tap("14:00")
    await r.tap("先不说")
    clock.set(local(12, 30))
    await r.tap("确认预约")
    texts = "".join(x.text for x in await r.new_replies())
    assert "马上就要开始" in texts
    assert await bookings(core) == []


async def test_a_stale_time_button_from_yesterday_is_re_checked(
    core: Core, clock: FakeClock
) -> None:
    c = await counselor(core)
    await with_slots(c)
    r = await resident(core)
    await r.tap("预约心理咨询")
    await r.tap("1月6日")
    token = (await r.new_replies())[-1].token("14:00")
    clock.set(local(20, 0))  # the evening of the 6th: that list is from "yesterday"
    await r.press(token)
    texts = "".join(x.text for x in await r.new_replies())
    assert "马上就要开始" in texts or "不能预约" in texts
    assert await bookings(core) == []


async def test_a_button_from_an_earlier_step_is_refused_as_stale(core: Core) -> None:
    c = await counselor(core)
    await with_slots(c)
    r = await resident(core)
    await r.tap("预约心理咨询")
    day_token = (await r.new_replies())[-1].token("1月6日")
    await r.press(day_token)
    await r.tap("14:00")
    result = await r.press(day_token)  # the day list is an earlier step now
    assert result.notice and "之前的步骤" in result.notice


async def test_rescheduling_moves_the_booking_and_frees_the_old_time(core: Core) -> None:
    c, r = await booked(core)
    await r.tap("预约心理咨询")
    await r.tap("改时间")
    await r.tap("1月6日")
    await r.tap("16:00")
    await r.tap("先不说")
    await r.tap("确认预约")
    found = await bookings(core)
    assert [b.status for b in found] == ["cancelled", "booked"]
    assert found[1].starts_at.replace(tzinfo=UTC) == local(16)
    assert any("改到" in x.text for x in await c.new_replies())


# Waitlist and risk -----------------------------------------------------------------------------


async def test_nothing_free_offers_the_waitlist_and_a_new_slot_tells_the_resident(
    core: Core,
) -> None:
    c = await counselor(core)
    r = await resident(core)
    await r.tap("预约心理咨询")
    assert "暂时没有" in (await r.new_replies())[-1].text
    await r.tap("有空位时通知我")
    await with_slots(c)
    opened = (await r.new_replies())[-1]
    assert "有新的咨询时段" in opened.text and "2026年1月6日 14:00" in opened.text
    await r.tap("约这个时间")
    await r.tap("先不说")
    await r.tap("确认预约")
    assert len(await bookings(core)) == 1


async def test_a_resident_with_a_high_risk_escalation_is_offered_the_earliest_slot(
    core: Core,
) -> None:
    c = await counselor(core)
    await with_slots(c, "后天 9:00-11:00 50分钟")
    await with_slots(c)
    r = await resident(core)
    await r.text("我不想活了")
    await r.command("menu")
    await r.new_replies()
    await r.tap("预约心理咨询")
    days = (await r.new_replies())[-1]
    assert "最早的时段" in days.text and "⭐" in days.buttons[0][0]["label"]
    assert "1月6日 14:00" in days.buttons[0][0]["label"]
    await r.tap("⭐")
    await r.tap("先不说")
    await r.tap("确认预约")
    assert (await bookings(core))[0].high_risk
    assert "高风险" in (await c.new_replies())[-1].text
    async with core.db.session() as s:
        assert (await s.exec(select(Escalation))).first() is not None


# Reminders and the outcome ---------------------------------------------------------------------


async def test_reminders_go_to_both_24_and_1_hour_before_once_each(
    core: Core, clock: FakeClock
) -> None:
    c = await counselor(core)
    await with_slots(c, "后天 14:00-15:00 50分钟")  # Jan 7, 14:00 Shanghai
    r = await resident(core)
    await r.tap("预约心理咨询")
    await r.tap("1月7日")
    await r.tap("14:00")
    await r.tap("先不说")
    await r.tap("确认预约")
    await r.new_replies()
    await c.new_replies()

    async def sweep() -> int:
        return await core.db.run(lambda s: send_due_reminders(s, core.engine, clock.now()))

    assert await sweep() == 0
    clock.set(local(14, day=7) - timedelta(hours=24))
    assert await sweep() == 2
    assert await sweep() == 0  # run twice: nothing twice
    resident_24 = (await r.new_replies())[-1].text
    assert "24 小时" in resident_24 and PHONE in resident_24
    assert "24 小时" in (await c.new_replies())[-1].text
    clock.set(local(13, day=7))
    assert await sweep() == 2
    assert PHONE in (await r.new_replies())[-1].text
    assert "1 小时" in (await c.new_replies())[-1].text
    clock.set(local(14, 50, day=7))
    assert await sweep() == 1
    ask = (await c.new_replies())[-1]
    assert "请记录" in ask.text
    await c.press(ask.token("已进行"))
    await c.text("来访者睡眠改善，下周再约")
    [booking] = await bookings(core)
    assert booking.status == "held" and booking.staff_note == "来访者睡眠改善，下周再约"
    async with core.db.session() as s:
        person = (await s.exec(select(Person).where(Person.external_id == "100"))).one()
        exported = await export_person(core.engine, s, person)
    assert exported["bookings"][0]["status"] == "held"
    assert "睡眠改善" not in json.dumps(exported, ensure_ascii=False)
    async with core.db.session() as s:
        assert all(x.sent_at for x in (await s.exec(select(BookingReminder))).all())


async def test_a_cancelled_booking_sends_no_reminders(core: Core, clock: FakeClock) -> None:
    c = await counselor(core)
    await with_slots(c, "后天 14:00-15:00 50分钟")
    r = await resident(core)
    await r.tap("预约心理咨询")
    await r.tap("1月7日")
    await r.tap("14:00")
    await r.tap("先不说")
    await r.tap("确认预约")
    await r.tap("预约心理咨询")
    await r.tap("取消预约")
    await r.tap("确定取消")
    clock.set(local(14, 50, day=7))
    assert await core.db.run(lambda s: send_due_reminders(s, core.engine, clock.now())) == 0


async def test_a_counselor_marks_a_no_show_from_the_slots_list(
    core: Core, clock: FakeClock
) -> None:
    c, _r = await booked(core)
    await c.command("slots")
    listing = (await c.new_replies())[-1]
    assert not any("未到场" in b["label"] for row in listing.buttons for b in row)
    clock.set(local(15))
    await c.command("slots")
    await c.tap("未到场")
    await c.tap("不用了")
    [booking] = await bookings(core)
    assert booking.status == "no_show" and booking.staff_note == ""


async def test_erasing_a_resident_cancels_their_booking_and_tells_the_counselor_by_code(
    core: Core,
) -> None:
    c = await counselor(core)
    await with_slots(c, "明天 14:00-15:00 50分钟")  # one slot only
    r = await resident(core)
    await book_first(r)
    other = await resident(core, "101")
    await other.tap("预约心理咨询")
    await other.tap("有空位时通知我")
    await c.new_replies()
    code = await case_code(core, "100")
    await r.command("privacy")
    await r.tap("删除")
    await r.tap("确定删除")
    assert "已全部删除" in (await r.new_replies())[-1].text
    assert await bookings(core) == []
    [told] = await c.new_replies()
    assert code in told.text and "2026年1月6日 14:00" in told.text and "重新开放" in told.text
    assert "睡眠" not in told.text and "100" not in told.text.replace(code, "")
    opened = (await other.new_replies())[-1]  # the waitlist hears that the time is free
    assert "有新的咨询时段" in opened.text
    await other.tap("约这个时间")
    await other.tap("先不说")
    await other.tap("确认预约")
    [again] = await bookings(core)
    assert again.status == "booked" and as_utc(again.starts_at) == local(14)
    async with core.db.session() as s:
        assert (await s.exec(select(Person).where(Person.external_id == "100"))).first() is None
        audit = await s.exec(select(AuditLog).where(AuditLog.action == "booking.cancel_erased"))
        assert [a.actor for a in audit.all()] == [code]


async def test_a_counselor_erasing_their_data_tells_their_residents_kindly(core: Core) -> None:
    c, r = await booked(core)
    second = await counselor(core, "901")
    await with_slots(second, "后天 10:00-11:00 50分钟")
    await r.new_replies()
    await c.command("privacy")
    await c.tap("删除")
    await c.tap("确定删除")
    [told] = await r.new_replies()
    assert "这不是你的原因" in told.text and "2026年1月6日 14:00" in told.text
    labels = [b["label"] for row in told.buttons for b in row]
    assert labels[0] == "2026年1月7日 10:00（周三）"  # only the other counselor's time
    assert not any("1月6日" in label for label in labels)
    assert await bookings(core) == []


# Chat sessions through the bot -----------------------------------------------------------------


async def chat_booking(core: Core, name: str = "王老师") -> tuple[EngineChat, EngineChat, str]:
    """A chat-meeting counselor (named ``name``) and a resident booked at 14:00 on Jan 6."""
    c, r = await booked(core, meet="chat" + (f" name={name}" if name else ""))
    await c.new_replies()
    await r.new_replies()
    return c, r, await case_code(core, "100")


async def open_session(c: EngineChat, r: EngineChat, clock: FakeClock) -> None:
    """At 14:00 the counselor opens the session from /slots (what it says is read here)."""
    clock.set(local(14))
    await c.command("slots")
    await c.tap("开始与")
    await r.new_replies()
    await c.new_replies()


async def state_of(core: Core, external_id: str) -> str:
    async with core.db.session() as s:
        return (await s.exec(select(Person).where(Person.external_id == external_id))).one().state


async def chat_row(core: Core) -> BookingChat:
    async with core.db.session() as s:
        return (await s.exec(select(BookingChat))).one()


async def test_a_chat_session_opens_relays_both_ways_pseudonymously_and_ends_with_a_note(
    core: Core, clock: FakeClock
) -> None:
    c, r, code = await chat_booking(core)
    clock.set(local(13))
    assert await core.db.run(lambda s: send_due_reminders(s, core.engine, clock.now())) == 2
    reminder = (await c.new_replies())[-1]
    assert "文字会谈" in reminder.text and code in reminder.buttons[0][0]["label"]
    await c.press(reminder.token("开始与"))
    assert "13:50 起才能打开" in (await c.new_replies())[-1].text  # too early: nothing opens
    assert await state_of(core, "100") == "menu"

    clock.set(local(13, 55))
    await c.press(reminder.token("开始与"))
    opened = (await c.new_replies())[-1].text
    assert "会谈已打开" in opened and code in opened and "睡眠" in opened
    welcome = (await r.new_replies())[-1]
    assert welcome.text.startswith("王老师已经在这里了") and "/end" in welcome.text
    assert (await state_of(core, "100"), await state_of(core, "900")) == (
        "bchat_resident",
        "bchat_counselor",
    )

    await r.text("你好，我最近总是睡不好")
    [relayed] = await c.new_replies()
    assert relayed.text == f"💬 {code}：你好，我最近总是睡不好"
    await c.text("你好，谢谢你来。最近大概几点睡？")
    [back] = await r.new_replies()
    assert back.text == "🧑‍⚕️ 王老师：你好，谢谢你来。最近大概几点睡？"
    assert await case_code(core, "900") not in back.text

    await r.command("menu")  # the bot's menus stay away while the session lasts
    assert "正在和王老师文字会谈" in (await r.new_replies())[-1].text
    await c.command("slots")
    assert code in (await c.new_replies())[-1].text  # reminded whom they are talking with

    clock.set(local(14, 40))
    await c.command("end")
    ended = (await c.new_replies())[-1]
    assert "已结束（你结束了会谈）" in ended.text
    assert "王老师结束了这次会谈" in (await r.new_replies())[-1].text
    assert (await chat_row(core)).ended_by == "counselor"
    assert (await state_of(core, "100"), await state_of(core, "900")) == ("menu", "menu")
    await r.text("谢谢")  # back with the bot: nothing goes to the counselor any more
    assert await c.new_replies() == []
    await c.press(ended.token("已进行"))
    await c.text("睡眠卫生，两周后再约")
    [booking] = await bookings(core)
    assert booking.status == "held" and booking.staff_note == "睡眠卫生，两周后再约"
    clock.set(local(14, 50))  # the usual outcome question is not asked again
    assert await core.db.run(lambda s: send_due_reminders(s, core.engine, clock.now())) == 0


async def test_the_resident_ends_with_the_button_and_an_old_end_button_does_nothing(
    core: Core, clock: FakeClock
) -> None:
    c, r, _ = await chat_booking(core, name="")
    clock.set(local(14))
    await c.command("slots")
    await c.tap("开始与")
    welcome = (await r.new_replies())[-1]
    assert welcome.text.startswith("你的咨询师已经在这里了")
    await c.text("你好")
    assert (await r.new_replies())[-1].text == "🧑‍⚕️ 你的咨询师：你好"
    await r.press(welcome.token("结束会谈"))
    assert "会谈已结束" in (await r.new_replies())[-1].text
    assert "已结束（来访者结束了会谈）" in (await c.new_replies())[-1].text
    result = await r.press(welcome.token("结束会谈"))  # the same button again
    assert result.notice is None
    assert "已经结束了" in (await r.new_replies())[-1].text
    await r.command("end")
    assert "现在没有进行中的会谈" in (await r.new_replies())[-1].text
    await c.command("end")
    assert "现在没有进行中的会谈" in (await c.new_replies())[-1].text


async def test_a_stale_start_button_and_someone_elses_session_are_refused(
    core: Core, clock: FakeClock
) -> None:
    c, r, _ = await chat_booking(core)
    other = await counselor(core, "901", meet="chat")
    clock.set(local(13, 55))
    await c.command("slots")
    start = (await c.new_replies())[-1].token("开始与")
    await r.command("privacy")  # nothing of the resident is shown to another counselor
    result = await other.press(start)  # a token of someone else's
    assert result.notice and "失效" in result.notice
    assert await state_of(core, "100") == "menu"
    [booking] = await bookings(core)
    async with core.db.session() as s:  # the other counselor's own button, naming this booking
        other_id = await person_pk(core, "901")
        s.add(
            ButtonToken(
                token="forged-start-0001",
                person_id=other_id,
                action="bchat.open",
                arg=str(booking.id),
                state_seq=0,
                created_at=clock.now(),
            )
        )
        await s.commit()
    await other.press("forged-start-0001")
    assert "这不是你的会谈" in (await other.new_replies())[-1].text
    assert await state_of(core, "100") == "menu"
    async with core.db.session() as s:
        refused = await s.exec(
            select(AuditLog).where(AuditLog.action == "booking.chat_open.refused")
        )
        assert len(refused.all()) == 1

    await c.press(start)
    await c.command("end")
    await c.new_replies()
    await c.press(start)  # yesterday's button, the session over
    assert "已经失效" in (await c.new_replies())[-1].text
    assert await state_of(core, "900") == "menu"


async def test_a_start_button_for_a_cancelled_booking_is_stale(
    core: Core, clock: FakeClock
) -> None:
    c, r, _ = await chat_booking(core)
    clock.set(local(13))
    await core.db.run(lambda s: send_due_reminders(s, core.engine, clock.now()))
    start = (await c.new_replies())[-1].token("开始与")
    await c.command("slots")
    await c.tap("已预约")
    await c.tap("删除并取消")
    assert "这不是你的原因" in (await r.new_replies())[-1].text
    clock.set(local(13, 55))
    await c.press(start)
    assert "已经失效" in (await c.new_replies())[-1].text
    assert await state_of(core, "100") == "menu"
    async with core.db.session() as s:
        assert (await s.exec(select(BookingChat))).all() == []


async def test_a_resident_writing_before_the_session_opens_hears_when_and_how_to_get_help(
    core: Core, clock: FakeClock
) -> None:
    c, r, code = await chat_booking(core)
    await c.new_replies()
    await r.text("你好，咨询师在吗？")  # the day before
    early = (await r.new_replies())[-1]
    assert "2026年1月6日 14:00" in early.text and "010-82951332" in early.text
    assert "我需要紧急帮助" in early.buttons[0][0]["label"]
    clock.set(local(13, 50))
    await r.text("我到了")
    assert "文字会谈 14:00 开始" in (await r.new_replies())[-1].text
    clock.set(local(14, 5))  # the counselor is late
    await r.text("还没开始吗")
    late = (await r.new_replies())[-1].text
    assert "很快就会在这里打开对话" in late and "010-82951332" in late
    # Not before the start; once it has passed, the counselor is reminded with the Start button,
    # at most once every five minutes however much the resident writes.
    [nudge] = await c.new_replies()
    assert nudge.text.startswith(f"⏰ {code} 已经在等 14:00 开始的文字会谈了")
    assert code in nudge.buttons[0][0]["label"]
    await r.text("你在吗")
    assert await c.new_replies() == []
    clock.set(local(14, 11))
    await r.text("喂？")
    assert [m.text[:1] for m in await c.new_replies()] == ["⏰"]
    await c.press(nudge.buttons[0][0]["token"])
    assert await state_of(core, "100") == "bchat_resident"


async def test_a_risky_message_in_a_session_raises_the_alert_and_reaches_the_counselor(
    core: Core, clock: FakeClock
) -> None:
    c, r, code = await chat_booking(core)
    await open_session(c, r, clock)
    await r.text("我真的不想活了")
    texts = [x.text for x in await r.new_replies()]
    assert any("010-82951332" in t for t in texts)  # the safety reply, at once
    [flagged] = await c.new_replies()
    assert flagged.text.startswith(f"⚠️ {code}：我真的不想活了") and "预警卡片" in flagged.text
    async with core.db.session() as s:
        [escalation] = (await s.exec(select(Escalation))).all()
        cards = await s.exec(select(OutboxMessage).where(OutboxMessage.chat_id == STAFF_CHAT))
        assert any(code in row.text for row in cards.all())
    assert escalation.person_id == await person_pk(core, "100")
    assert await state_of(core, "100") == "bchat_resident"  # still with the counselor
    await r.text("我现在在房间里")
    assert (await c.new_replies())[-1].text == f"💬 {code}：我现在在房间里"
    await r.command("sos")
    assert "刚刚按了紧急求助" in (await c.new_replies())[-1].text


async def test_an_on_call_claim_during_a_session_keeps_the_resident_there_and_reads_along(
    core: Core, clock: FakeClock
) -> None:
    c, r, code = await chat_booking(core)
    on_call = EngineChat(core, "950")
    await on_call.onboard()
    async with core.db.session() as s:
        s.add(
            RoleGrant(
                person_id=await person_pk(core, "950"), role="counselor", granted_at=clock.now()
            )
        )
        await s.commit()
    core.engine.staff_member = _always_staff
    clock.set(local(14))
    await c.command("slots")
    await c.tap("开始与")
    await r.text("我想死")
    [card, *_] = await EngineChat(core, STAFF_CHAT).all_replies()
    await on_call.press(card.token("认领"))
    assert await state_of(core, "100") == "bchat_resident"
    await c.new_replies()
    await on_call.new_replies()
    await r.text("我在房间里")
    assert (await c.new_replies())[-1].text == f"💬 {code}：我在房间里"
    assert (await on_call.new_replies())[-1].text == f"💬 {code}：我在房间里"
    await on_call.command("done")
    await on_call.tap("安全")
    assert await state_of(core, "100") == "bchat_resident"  # resolving leaves the session alone
    await r.text("好一点了")
    assert (await c.new_replies())[-1].text == f"💬 {code}：好一点了"


async def _always_staff(_channel: str, _external_id: str) -> bool:
    return True


async def test_a_session_nobody_ends_is_closed_by_the_scheduler_after_its_time(
    core: Core, clock: FakeClock
) -> None:
    c, r, code = await chat_booking(core)
    await open_session(c, r, clock)

    async def close() -> int:
        return await core.db.run(lambda s: close_due_chats(s, core.engine, clock.now()))

    clock.set(local(15, 19))  # the booked end is 14:50; closed 30 minutes after it
    assert await close() == 0
    clock.set(local(15, 20))
    assert await close() == 1
    assert await close() == 0
    assert "对话已自动结束" in (await r.new_replies())[-1].text
    asked = (await c.new_replies())[-1]
    assert "超过预约时间后自动结束" in asked.text and code in asked.text
    assert (await chat_row(core)).ended_by == "timeout"
    assert (await state_of(core, "100"), await state_of(core, "900")) == ("menu", "menu")
    await c.press(asked.token("未到场"))
    await c.tap("不用了")
    assert (await bookings(core))[0].status == "no_show"


async def test_a_session_cannot_be_opened_while_the_resident_talks_with_the_on_call(
    core: Core, clock: FakeClock
) -> None:
    c, _r, code = await chat_booking(core)
    async with core.db.session() as s:
        person = (await s.exec(select(Person).where(Person.external_id == "100"))).one()
        person.state = "handover"
        s.add(person)
        await s.commit()
    clock.set(local(14))
    await c.command("slots")
    await c.tap("开始与")
    assert f"{code} 现在正在和值班咨询师交谈" in (await c.new_replies())[-1].text
    assert await state_of(core, "100") == "handover"
    async with core.db.session() as s:
        assert (await s.exec(select(BookingChat))).all() == []


async def test_an_english_speaking_resident_has_the_whole_session_in_english(
    core: Core, clock: FakeClock
) -> None:
    c = await counselor(core, meet="chat", languages="zh_Hans,en")
    await with_slots(c)
    r = EngineChat(core, "100", language_hint="en")
    await r.onboard("English")
    for label in ("Book a counselor", "Tue 6 Jan", "14:00", "Skip", "Confirm"):
        await r.tap(label)
    await r.text("hello, is anyone there?")
    early = (await r.new_replies())[-1].text
    assert early.startswith("Your chat session starts at Tue 6 Jan 2026, 14:00")
    assert "010-82951332" in early
    await c.new_replies()
    await open_session(c, r, clock)
    await r.command("menu")
    assert "Your counselor is with you in this session" in (await r.new_replies())[-1].text
    await c.text("你好 / hello")
    assert (await r.new_replies())[-1].text == "🧑‍⚕️ Your counselor: 你好 / hello"
    await r.command("end")
    assert (await r.new_replies())[-1].text.startswith("The session has ended. Thank you")
    assert "来访者结束了会谈" in (await c.new_replies())[-1].text
