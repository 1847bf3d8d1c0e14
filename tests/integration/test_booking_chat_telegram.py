"""A booked session held as a chat through the bot, through aiogram and the fake Bot API.

The counselor meets "in the chat" and is called 王老师. The resident who writes before the
session is told when it starts and how to get help now; the counselor opens the session from
the 1-hour reminder; both talk through the bot without seeing each other's Telegram names or
ids; a risky message still reaches the staff chat (and the counselor, flagged); a message the
counselor's Telegram refuses once is sent again from the outbox; the session ends with the
End button and the counselor records it. A session nobody ends is closed by the scheduler's
sweep; stale and foreign buttons and ``/end`` with nothing open are answered kindly. The
injected clock moves time; the sweeps are called as the scheduler would call them.
"""

from __future__ import annotations

from datetime import timedelta

from sqlmodel import select

from core import booking, booking_chat
from core.booking import Booking, BookingChat
from core.clock import FakeClock
from core.escalation import Escalation
from core.models import OutboxMessage
from tests.integration.conftest import BotUnderTest, Resident, StartBot, eventually
from tests.integration.test_booking_telegram import (
    SESSION_START,
    STAFF_CHAT,
    a_booked_session,
    start,
    tap_on,
)

CHAT_WITH_A_NAME = "chat name=王老师"


async def booked_chat(bot: BotUnderTest) -> tuple[Resident, Resident, str]:
    return await a_booked_session(bot, topic="睡眠", meet=CHAT_WITH_A_NAME)


async def opened(bot: BotUnderTest, counselor: Resident, resident: Resident) -> None:
    """The counselor opens the session from /slots; both hear that it has started."""
    await counselor.command("/slots")
    await tap_on(counselor, "你的咨询时段", "开始与")
    await counselor.replies(1, contains="会谈已打开")
    await resident.replies(1, contains="王老师已经在这里了")


async def test_a_booked_chat_session_through_telegram(
    start_bot: StartBot, clock: FakeClock
) -> None:
    bot = await start(start_bot)
    counselor, resident, code = await booked_chat(bot)

    await resident.say("你好，咨询师在吗？")  # the day before: when it starts, and help now
    [early] = await resident.replies(1, contains="文字会谈")
    assert "2026年1月7日 14:00" in (early.plain_text or "")
    assert "010-82951332" in (early.plain_text or "")

    clock.set(SESSION_START - timedelta(hours=24))
    assert await booking.sweep_reminders(bot.runtime.core.engine) == 2
    [day_before] = await counselor.replies(1, contains="24 小时")
    assert day_before.buttons == []  # the Start button comes with the last reminder
    clock.set(SESSION_START - timedelta(hours=1))
    assert await booking.sweep_reminders(bot.runtime.core.engine) == 2
    await resident.replies(1, contains="还有1 小时就开始")
    [reminder] = await counselor.replies(1, contains="1 小时")
    start_label = f"开始与 {code} 的会谈"
    assert [b["text"] for b in reminder.buttons] == [f"💬 {start_label}"]

    clock.set(SESSION_START - timedelta(minutes=5))
    await counselor.user.press(
        reminder, next(b["callback_data"] for b in reminder.buttons if start_label in b["text"])
    )
    [open_note] = await counselor.replies(1, contains="会谈已打开")
    assert code in (open_note.plain_text or "") and "睡眠" in (open_note.plain_text or "")
    await resident.replies(1, contains="王老师已经在这里了")

    await resident.say("我最近总是失眠，躺下就开始担心家里")
    [relayed] = await counselor.replies(1, contains="总是失眠")
    assert (relayed.plain_text or "").startswith(f"💬 {code}：")
    assert "8002" not in (relayed.plain_text or "") and "用户8002" not in (relayed.plain_text or "")
    await counselor.say("我在，慢慢说。最近大概几点能睡着？")
    [answer] = await resident.replies(1, contains="慢慢说")
    assert (answer.plain_text or "") == "🧑‍⚕️ 王老师：我在，慢慢说。最近大概几点能睡着？"
    assert "8001" not in (answer.plain_text or "")

    await resident.say("有时候觉得我真的不想活了")
    [card] = await bot.api.wait_for_message(STAFF_CHAT, contains=code)
    assert "认领" in str(card.buttons) and "8002" not in (card.plain_text or "")
    await resident.replies(1, contains="010-82951332")  # the safety reply, at once
    [flagged] = await counselor.replies(1, contains="预警卡片")
    assert (flagged.plain_text or "").startswith(f"⚠️ {code}：有时候觉得我真的不想活了")

    # The counselor's Telegram refuses the next message once: the outbox sends it again.
    bot.api.fail_next("sendMessage", 500, chat_id=counselor.id)
    await resident.say("谢谢你陪我说这些")

    async def retried() -> bool:
        rows = await bot.outbox(counselor.id)
        return any(r.attempts >= 1 and r.status == "pending" for r in rows)

    await eventually(retried, what="the refused message waiting for its retry")
    clock.advance(seconds=5)
    bot.runtime.workers["telegram"].wake()
    [late] = await counselor.replies(1, contains="谢谢你陪我说这些")
    assert (late.plain_text or "") == f"💬 {code}：谢谢你陪我说这些"

    clock.set(SESSION_START + timedelta(minutes=45))
    await counselor.tap("结束会谈")
    [ended] = await counselor.replies(1, contains="已结束（你结束了会谈）")
    await resident.replies(1, contains="王老师结束了这次会谈")
    await counselor.user.press(
        ended, next(b["callback_data"] for b in ended.buttons if "已进行" in b["text"])
    )
    await counselor.replies(1, contains="只有工作人员能看到")
    await counselor.say("失眠与担忧家人，已给出睡眠建议；风险已由值班跟进")
    await counselor.replies(1, contains="备注已保存")
    async with bot.runtime.db.session() as session:
        [held] = (await session.exec(select(Booking))).all()
        [chat] = (await session.exec(select(BookingChat))).all()
        [escalation] = (await session.exec(select(Escalation))).all()
    assert held.status == "held" and chat.ended_by == "counselor"
    assert escalation.status == "open"  # the alert stays with the on-call team
    await bot.all_sent()


async def test_stale_and_foreign_buttons_end_with_nothing_open_and_the_scheduler_closing(
    start_bot: StartBot, clock: FakeClock
) -> None:
    bot = await start(start_bot)
    counselor, resident, code = await booked_chat(bot)

    await resident.command("/end")
    await resident.replies(1, contains="现在没有进行中的会谈")
    clock.set(SESSION_START - timedelta(minutes=30))
    await counselor.command("/slots")
    [listing] = await counselor.replies(1, contains="你的咨询时段")
    assert not any("开始与" in b["text"] for b in listing.buttons)  # not yet
    clock.set(SESSION_START)
    await counselor.command("/slots")
    [listing] = await counselor.replies(1, contains="你的咨询时段")
    start_data = next(b["callback_data"] for b in listing.buttons if "开始与" in b["text"])

    stranger = bot.resident(8009)  # someone else pressing the counselor's button
    await stranger.command("/start")
    await stranger.replies(2)
    answer = await stranger.answer_to(await stranger.user.press(listing, start_data, check=False))
    assert "失效" in answer.get("text", "")
    assert await bot.count(BookingChat) == 0

    await counselor.user.press(listing, start_data)
    await counselor.replies(1, contains="会谈已打开")
    await resident.replies(1, contains="王老师已经在这里了")
    await resident.say("我在")
    await counselor.replies(1, contains=f"💬 {code}：我在")

    engine = bot.runtime.core.engine
    clock.set(SESSION_START + timedelta(minutes=79))  # 50-minute session, closed 30 after
    assert await booking_chat.sweep_chats(engine) == 0
    clock.set(SESSION_START + timedelta(minutes=80))
    assert await booking_chat.sweep_chats(engine) == 1
    assert await booking_chat.sweep_chats(engine) == 0
    await resident.replies(1, contains="对话已自动结束")
    [asked] = await counselor.replies(1, contains="超过预约时间后自动结束")
    assert any("未到场" in b["text"] for b in asked.buttons)

    await counselor.user.press(listing, start_data)  # the old Start button
    await counselor.replies(1, contains="已经失效")
    await resident.say("还在吗？")
    [free_text] = await resident.replies(1)
    assert "还在吗" not in (free_text.plain_text or "")  # nothing relays any more
    await counselor.command("/end")
    await counselor.replies(1, contains="现在没有进行中的会谈")
    await bot.all_sent()
    async with bot.runtime.db.session() as session:
        rows = await session.exec(select(OutboxMessage).where(OutboxMessage.chat_id == "8001"))
        assert not any("还在吗" in r.text for r in rows.all())
