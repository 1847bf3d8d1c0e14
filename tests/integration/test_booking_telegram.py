"""Booking and support rooms through the real aiogram client, the runtime and the fake Bot API.

A counselor adds availability in Chinese words, a resident books it, both get their reminders
when the injected clock reaches them (the sweep is called directly, as the scheduler would),
the counselor marks the session held; then the resident joins a room, receives a one-person
invite link made with ``createChatInviteLink``, joins the group with it, and a high-risk message
there reaches the staff chat and never the group.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlmodel import col, select

from bot.telegram.rooms import TelegramInviteLinks
from core import booking, rooms
from core.booking import Booking
from core.clock import FakeClock
from core.escalation import Escalation
from tests.fakebotapi import SentMessage
from tests.integration.conftest import BotUnderTest, Resident, StartBot
from tests.integration.test_telegram_onboarding import onboard_in_chinese

ADMIN_ID = 8000
STAFF_CHAT = -1_009_000_000_001
ROOM_CHAT = -1_009_000_000_002
PHONE = "010-12345678"
SESSION_START = datetime(2026, 1, 7, 6, 0, tzinfo=UTC)  # 后天 14:00 in Shanghai


async def tap_on(person: Resident, contains: str, label: str) -> SentMessage:
    """Wait for the bot's message containing ``contains`` and press its button ``label``."""
    [message] = await person.replies(1, contains=contains)
    data = next(b["callback_data"] for b in message.buttons if label in b["text"])
    await person.user.press(message, data)
    return message


async def start(start_bot: StartBot) -> BotUnderTest:
    bot = await start_bot("polling", staff_chat_id=str(STAFF_CHAT), admins=[str(ADMIN_ID)])
    bot.api.group(STAFF_CHAT, "值班咨询师")
    return bot


async def registered_counselor(
    bot: BotUnderTest, meet: str = f"phone:{PHONE}"
) -> tuple[Resident, str]:
    counselor = bot.resident(8001)
    await onboard_in_chinese(counselor)
    person = await bot.person(8001)
    assert person is not None
    admin = bot.resident(ADMIN_ID)
    await admin.command(f"/counselor {person.case_code} languages=zh_Hans sites=* meet={meet}")
    await admin.replies(1, contains="已登记咨询师")
    return counselor, person.case_code


async def counselor_with_an_afternoon(bot: BotUnderTest, meet: str = f"phone:{PHONE}") -> Resident:
    """A registered counselor who adds 后天 14:00-17:00 (three 50-minute slots) in words."""
    counselor, _ = await registered_counselor(bot, meet)
    await counselor.command("/available 后天 下午2点到5点 50分钟")
    await tap_on(counselor, "将添加 3 个时段", "添加")
    await counselor.replies(1, contains="已添加 3 个可预约时段")
    return counselor


async def book_through_the_menu(
    resident: Resident, day: str = "1月7日", time: str = "14:00", topic: str = "先不说"
) -> tuple[SentMessage, SentMessage]:
    """Menu → day → time → topic → confirm; the list of times and the confirmation shown."""
    await resident.tap("预约心理咨询")
    await tap_on(resident, "想约哪一天", day)
    times = await tap_on(resident, "可以约的时间", time)
    await tap_on(resident, "想和咨询师聊些什么", topic)
    confirm = await tap_on(resident, "请确认", "确认预约")
    await resident.replies(1, contains="预约好了")
    return times, confirm


async def a_booked_session(
    bot: BotUnderTest, topic: str = "先不说", meet: str = f"phone:{PHONE}"
) -> tuple[Resident, Resident, str]:
    """A counselor's afternoon, and resident 8002 who booked its 14:00: both, and the code."""
    counselor = await counselor_with_an_afternoon(bot, meet)
    resident = bot.resident(8002)
    await onboard_in_chinese(resident)
    await book_through_the_menu(resident, topic=topic)
    await counselor.replies(1, contains="新预约")
    person = await bot.person(8002)
    assert person is not None
    return counselor, resident, person.case_code


async def test_availability_in_chinese_words_is_booked_reminded_and_marked_held(
    start_bot: StartBot, clock: FakeClock
) -> None:
    bot = await start(start_bot)
    counselor = await counselor_with_an_afternoon(bot)

    resident = bot.resident(8002)
    await onboard_in_chinese(resident)
    times, confirm = await book_through_the_menu(resident, topic="睡眠")
    assert [b["text"] for b in times.buttons][:3] == ["14:00", "15:00", "16:00"]
    assert "2026年1月7日 14:00" in (confirm.plain_text or "")
    resident_code = (await bot.person(8002)).case_code  # type: ignore[union-attr]
    [told] = await counselor.replies(1, contains="新预约")
    assert resident_code in (told.plain_text or "") and "睡眠" in (told.plain_text or "")

    engine = bot.runtime.core.engine
    clock.set(SESSION_START - timedelta(hours=24))
    assert await booking.sweep_reminders(engine) == 2
    assert await booking.sweep_reminders(engine) == 0
    [early] = await resident.replies(1, contains="24 小时")
    assert PHONE in (early.plain_text or "")
    await counselor.replies(1, contains="24 小时")
    clock.set(SESSION_START - timedelta(hours=1))
    assert await booking.sweep_reminders(engine) == 2
    [soon] = await resident.replies(1, contains="1 小时")
    assert PHONE in (soon.plain_text or "")
    await counselor.replies(1, contains="1 小时")

    clock.set(SESSION_START + timedelta(minutes=50))
    assert await booking.sweep_reminders(engine) == 1
    await tap_on(counselor, "请记录", "已进行")
    await counselor.replies(1, contains="只有工作人员能看到")
    await counselor.say("睡眠有改善，两周后复诊")
    await counselor.replies(1, contains="备注已保存")
    async with bot.runtime.db.session() as session:
        [held] = (await session.exec(select(Booking))).all()
    assert held.status == "held" and held.staff_note == "睡眠有改善，两周后复诊"
    await bot.all_sent()


async def test_joining_a_room_sends_a_one_person_invite_link_and_the_group_is_read_for_risk(
    start_bot: StartBot, clock: FakeClock
) -> None:
    bot = await start(start_bot)
    counselor, counselor_code = await registered_counselor(bot)
    group = bot.api.group(ROOM_CHAT, "睡个好觉小组")
    admin = bot.resident(ADMIN_ID)
    await admin.command(
        f"/room add sleep title=睡个好觉小组 topic=sleep capacity=8 "
        f"facilitator={counselor_code} telegram={ROOM_CHAT}"
    )
    await admin.replies(1, contains="已保存小组 sleep")
    await admin.command("/room session sleep 明天 19:00-20:30")
    await admin.replies(1, contains="添加 1 次活动")

    resident = bot.resident(8002)
    await onboard_in_chinese(resident)
    await resident.tap("线上互助小组")
    await tap_on(resident, "线上互助小组", "睡个好觉小组")
    await tap_on(resident, "小组规则", "我同意小组规则")
    await resident.replies(1, contains="报名成功")

    telegram = bot.runtime.telegram
    assert telegram is not None
    assert (
        await rooms.sweep_invites(bot.runtime.core.engine, TelegramInviteLinks(telegram.bot)) == 1
    )
    [link] = bot.api.invite_links
    assert link["chat_id"] == ROOM_CHAT and link["member_limit"] == 1
    assert link["expire_date"] > int(clock.now().timestamp())
    [invite] = await resident.replies(1, contains="专属链接")
    assert link["invite_link"] in (invite.plain_text or "")

    await resident.user.join(group, invite_link=link["invite_link"])
    await resident.user.send_text("今晚又睡不着", chat=group)
    await resident.user.send_text("我真的不想活了", chat=group)
    [alert] = await bot.api.wait_for_message(STAFF_CHAT, contains="睡个好觉小组")
    resident_code = (await bot.person(8002)).case_code  # type: ignore[union-attr]
    assert resident_code in (alert.plain_text or "") and "认领" in str(alert.buttons)
    await resident.replies(1, contains="让我们很担心你")
    await counselor.replies(1, contains="不要在群里公开回应")
    await bot.all_sent()
    assert bot.api.messages_to(ROOM_CHAT) == []  # the bot never speaks in the group
    async with bot.runtime.db.session() as session:
        assert len((await session.exec(select(Escalation))).all()) == 1


async def test_a_counselor_removes_a_booked_slot_and_the_resident_rebooks_from_the_offer(
    start_bot: StartBot,
) -> None:
    bot = await start(start_bot)
    counselor, resident, resident_code = await a_booked_session(bot)

    await counselor.command("/slots")
    listing = await tap_on(counselor, "你的咨询时段", f"{resident_code} 已预约")
    assert "删除 2026年1月7日 15:00" in str(listing.buttons)  # free ones keep their button
    [sure] = await counselor.replies(1, contains="会取消这次预约")
    assert resident_code in (sure.plain_text or "")
    await counselor.user.press(
        sure, next(b["callback_data"] for b in sure.buttons if "删除并" in b["text"])
    )
    await counselor.replies(1, contains="预约已取消")

    [told] = await resident.replies(1, contains="这不是你的原因")
    assert "2026年1月7日 14:00" in (told.plain_text or "")
    offered = [b["text"] for b in told.buttons]
    assert offered[:2] == ["2026年1月7日 15:00（周三）", "2026年1月7日 16:00（周三）"]
    await resident.user.press(told, told.buttons[0]["callback_data"])
    await tap_on(resident, "想和咨询师聊些什么", "先不说")
    await tap_on(resident, "请确认", "确认预约")
    await resident.replies(1, contains="预约好了")
    async with bot.runtime.db.session() as session:
        rows = (await session.exec(select(Booking).order_by(col(Booking.id)))).all()
    assert [(b.status, b.starts_at.hour) for b in rows] == [("cancelled", 6), ("booked", 7)]
    await bot.all_sent()


async def test_a_resident_who_erases_their_data_frees_the_slot_and_the_counselor_hears_the_code(
    start_bot: StartBot,
) -> None:
    bot = await start(start_bot)
    counselor, resident, resident_code = await a_booked_session(bot, topic="睡眠")

    await resident.command("/privacy")
    await tap_on(resident, "隐私", "删除我的全部数据")
    await tap_on(resident, "确定要删除", "确定删除")
    await resident.replies(1, contains="已全部删除")
    [told] = await counselor.replies(1, contains="删除了自己在安心的全部资料")
    text = told.plain_text or ""
    assert resident_code in text and "2026年1月7日 14:00" in text
    assert "睡眠" not in text and "8002" not in text and "用户8002" not in text

    other = bot.resident(8003)
    await onboard_in_chinese(other)
    await book_through_the_menu(other)  # the same 14:00 is free again
    async with bot.runtime.db.session() as session:
        [again] = (await session.exec(select(Booking))).all()
    assert again.status == "booked" and again.starts_at.hour == 6
    await bot.all_sent()
