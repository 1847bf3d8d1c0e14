"""Booking a counselor in the web chat: the whole app, Chromium as WeChat on a phone.

The counselor and their availability are set up through core (the counselor works from
Telegram, which this app has no token for); the resident books, is reminded when the injected
clock reaches the reminder and the sweep runs, and cancels from the reminder's button.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from playwright.async_api import expect
from sqlmodel import select

from core import booking
from core.booking import Booking, Counselor, add_slots
from core.clock import FakeClock
from core.models import Person, RoleGrant
from core.services import Core
from tests.drivers import EngineChat
from tests.e2e.conftest import LiveApp, PhoneFactory
from tests.e2e.test_web_chat import MENU_ZH, Chat

SESSION_START = datetime(2026, 1, 7, 6, 0, tzinfo=UTC)  # 1月7日 14:00 in Shanghai
LINK = "https://meet.example.org/anxin-1"


async def counselor_with_slots(core: Core, clock: FakeClock) -> None:
    """A counselor meeting by video link, free on January 7 from 14:00 to 17:00 (Shanghai)."""
    await EngineChat(core, "9001").command("start")
    async with core.db.session() as session:
        person = (await session.exec(select(Person).where(Person.external_id == "9001"))).one()
        assert person.id is not None
        session.add(RoleGrant(person_id=person.id, role="counselor", granted_at=clock.now()))
        counselor = Counselor(
            person_id=person.id,
            languages="zh_Hans",
            meet="link",
            meet_detail=LINK,
            updated_at=clock.now(),
        )
        session.add(counselor)
        await session.commit()
    starts = [SESSION_START + timedelta(hours=n) for n in range(3)]
    await core.db.run(lambda s: add_slots(s, counselor, starts, 50, clock.now()))


async def onboard(chat: Chat) -> None:
    """Onboard in Chinese, up to the main menu (other messages may follow the menu)."""
    await chat.tap("中文")
    await chat.tap("同意，开始")
    await chat.tap("正在隔离的人")
    await chat.tap("18–39岁")
    await expect(chat.log).to_contain_text(MENU_ZH)


async def test_a_resident_books_in_the_web_chat_is_reminded_and_cancels(
    phone: PhoneFactory, live_app: LiveApp, clock: FakeClock
) -> None:
    core = live_app.runtime.core
    await counselor_with_slots(core, clock)
    page = await phone("zh-CN")
    chat = Chat(page)
    await onboard(chat)

    await chat.tap("📅 预约心理咨询")
    await chat.expect_bot("想约哪一天")
    await chat.tap("1月7日 周三")
    await chat.expect_bot("可以约的时间")
    await chat.tap("15:00")
    await chat.expect_bot("想和咨询师聊些什么")
    await chat.say("隔离以后一直睡不好")
    await chat.expect_bot("请确认")
    await expect(chat.bot.last).to_contain_text("2026年1月7日 15:00")
    await expect(chat.bot.last).to_contain_text("隔离以后一直睡不好")
    await chat.tap("✅ 确认预约")
    await chat.expect_bot("预约好了")

    clock.set(SESSION_START + timedelta(hours=1) - timedelta(hours=24))
    assert await booking.sweep_reminders(core.engine) == 2  # the resident's and the counselor's
    await chat.expect_bot("还有24 小时就开始了")
    await expect(chat.bot.last).to_contain_text(LINK)

    await chat.tap("查看或修改预约")
    await chat.expect_bot("你已经预约了一次心理咨询")
    await chat.tap("取消预约")
    await chat.expect_bot("确定要取消")
    await chat.tap("确定取消")
    await chat.expect_bot("已经取消了")
    async with core.db.session() as session:
        [cancelled] = (await session.exec(select(Booking))).all()
    assert cancelled.status == "cancelled" and cancelled.topic == "隔离以后一直睡不好"
