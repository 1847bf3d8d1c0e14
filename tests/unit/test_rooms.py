"""Group-support rooms: defining, browsing, seats, invite links, reminders, safety in the group."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlmodel import col, func, select

from core.clock import FakeClock
from core.config import Settings
from core.escalation import Escalation
from core.messages import Inbound, InboundKind
from core.models import OutboxMessage, Person
from core.rooms import (
    RoomInvite,
    RoomMember,
    RoomSession,
    send_due_room_reminders,
    sweep_invites,
)
from core.services import Core
from tests.drivers import EngineChat

STAFF_CHAT = "-100500"
ROOM_CHAT = "-100777"
ADMIN = "800"
_updates = itertools.count(50_000)


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


class FakeInviteLinks:
    """The Telegram adapter's port, recorded; ``fail`` makes every call raise."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[str, str, datetime]] = []
        self.fail = fail

    async def create_invite_link(self, chat_id: str, *, name: str, expire_at: datetime) -> str:
        self.calls.append((chat_id, name, expire_at))
        if self.fail:
            raise RuntimeError("Bad Request: not enough rights")
        return f"https://t.me/+fake{len(self.calls)}"


async def code_of(core: Core, external_id: str) -> str:
    async with core.db.session() as s:
        return (
            (await s.exec(select(Person).where(Person.external_id == external_id))).one().case_code
        )


async def define_room(
    core: Core, *, capacity: int = 2, where: str = f"telegram={ROOM_CHAT}", staff: str = "no"
) -> EngineChat:
    """A room led by facilitator 900, with one session tomorrow 19:00–20:30 (Shanghai)."""
    facilitator = EngineChat(core, "900")
    await facilitator.onboard()
    admin = EngineChat(core, ADMIN)
    await admin.command(
        "room",
        f'add sleep title="睡个好觉小组" topic=sleep lang=zh_Hans capacity={capacity} '
        f"facilitator={await code_of(core, '900')} {where} staff={staff}",
    )
    await admin.command("room", "text sleep rules 不评判，不外传。")
    await admin.command("room", "session sleep 明天 19:00-20:30")
    assert "添加 1 次活动" in (await admin.new_replies())[-1].text
    await facilitator.new_replies()
    return facilitator


async def join(core: Core, external_id: str) -> EngineChat:
    chat = EngineChat(core, external_id)
    await chat.onboard()
    await chat.tap("线上互助小组")
    await chat.tap("睡个好觉")
    await chat.tap("我同意小组规则")
    return chat


async def members(core: Core) -> list[RoomMember]:
    async with core.db.session() as s:
        return list((await s.exec(select(RoomMember).order_by(col(RoomMember.seat)))).all())


def group_text(external_id: str, text: str, chat_id: str = ROOM_CHAT) -> Inbound:
    return Inbound(
        channel="telegram",
        external_id=external_id,
        chat_id=chat_id,
        kind=InboundKind.TEXT,
        text=text,
        chat_kind="supergroup",
        update_key=str(next(_updates)),
    )


async def outbox_to(core: Core, chat_id: str) -> list[OutboxMessage]:
    async with core.db.session() as s:
        return list(
            (await s.exec(select(OutboxMessage).where(OutboxMessage.chat_id == chat_id))).all()
        )


async def test_a_resident_accepts_the_rules_joins_and_gets_a_one_person_invite_link(
    core: Core, clock: FakeClock
) -> None:
    await define_room(core)
    chat = EngineChat(core, "100")
    await chat.onboard()
    await chat.tap("线上互助小组")
    listing = (await chat.new_replies())[-1]
    assert (
        "睡个好觉小组" in listing.buttons[0][0]["label"]
        and "剩 2 位" in listing.buttons[0][0]["label"]
    )
    await chat.tap("睡个好觉")
    details = (await chat.new_replies())[-1].text
    assert "不评判，不外传" in details and "Telegram" in details
    await chat.tap("我同意小组规则")
    assert "报名成功" in (await chat.new_replies())[-1].text
    links = FakeInviteLinks()
    assert await sweep_invites(core.engine, links) == 1
    assert await sweep_invites(core.engine, links) == 0  # made once
    [(chat_id, name, expire_at)] = links.calls
    assert chat_id == ROOM_CHAT and (await code_of(core, "100")) in name
    assert expire_at > clock.now()
    invite = (await chat.new_replies())[-1].text
    assert "https://t.me/+fake1" in invite and "只能你自己用" in invite


async def test_joining_a_full_room_is_refused(core: Core) -> None:
    await define_room(core, capacity=1)
    await join(core, "100")
    late = await join(core, "101")
    assert any("满员" in r.text for r in await late.new_replies())
    assert [m.seat for m in await members(core)] == [1]


async def test_joining_at_once_never_exceeds_capacity(core: Core) -> None:
    await define_room(core, capacity=2)
    chats = []
    tokens = []
    for n in range(6):
        chat = EngineChat(core, str(300 + n))
        await chat.onboard()
        await chat.tap("线上互助小组")
        await chat.tap("睡个好觉")
        tokens.append((await chat.new_replies())[-1].token("我同意小组规则"))
        chats.append(chat)
    await asyncio.gather(*(c.press(t) for c, t in zip(chats, tokens, strict=True)))
    assert [m.seat for m in await members(core)] == [1, 2]


async def test_leaving_frees_the_place_for_someone_else(core: Core) -> None:
    await define_room(core, capacity=1)
    first = await join(core, "100")
    await first.tap("线上互助小组")
    await first.tap("我报名的小组")
    await first.tap("退出")
    assert "已经退出" in (await first.new_replies())[-1].text
    assert await members(core) == []
    await join(core, "101")
    assert len(await members(core)) == 1


async def test_an_invite_for_someone_who_left_is_never_sent(core: Core) -> None:
    await define_room(core)
    chat = await join(core, "100")
    await chat.tap("线上互助小组")
    await chat.tap("我报名的小组")
    await chat.tap("退出")
    links = FakeInviteLinks()
    assert await sweep_invites(core.engine, links) == 0
    assert links.calls == []


async def test_an_invite_that_keeps_failing_is_handed_to_the_facilitator(
    core: Core, clock: FakeClock
) -> None:
    facilitator = await define_room(core)
    chat = await join(core, "100")
    links = FakeInviteLinks(fail=True)
    for _ in range(5):
        await sweep_invites(core.engine, links)
        clock.advance(minutes=5)
    assert len(links.calls) == 5
    assert any("没能生成" in r.text for r in await chat.new_replies())
    assert any("请手动邀请" in r.text for r in await facilitator.new_replies())
    async with core.db.session() as s:
        assert (await s.exec(select(RoomInvite.status))).all() == ["failed"]


async def test_staff_only_rooms_are_visible_to_staff_only(core: Core) -> None:
    await define_room(core, staff="yes")
    resident = EngineChat(core, "100")
    await resident.onboard()
    await resident.tap("线上互助小组")
    assert "还没有安排" in (await resident.new_replies())[-1].text
    admin = EngineChat(core, ADMIN)
    await admin.command("grant", f"{await code_of(core, '100')} staff")
    await resident.tap("线上互助小组")
    assert "睡个好觉" in (await resident.new_replies())[-1].buttons[0][0]["label"]


async def test_link_rooms_send_the_link_with_the_reminder_and_the_facilitator_gets_the_list(
    core: Core, clock: FakeClock
) -> None:
    facilitator = await define_room(core, where="link=https://meet.example.org/sleep")
    one, two = await join(core, "100"), await join(core, "101")
    for chat in (one, two):
        assert "会议链接会在开始前" in (await chat.new_replies())[-1].text

    async def sweep() -> int:
        return await core.db.run(lambda s: send_due_room_reminders(s, core.engine, clock.now()))

    assert await sweep() == 0
    starts = datetime(2026, 1, 6, 11, 0, tzinfo=UTC)  # 19:00 in Shanghai
    clock.set(starts - timedelta(hours=2))
    assert await sweep() == 1
    expected = (await facilitator.new_replies())[-1].text
    assert "2/2" in expected
    assert await code_of(core, "100") in expected and await code_of(core, "101") in expected
    clock.set(starts - timedelta(hours=1))
    assert await sweep() == 2
    assert await sweep() == 0
    for chat in (one, two):
        assert "https://meet.example.org/sleep" in (await chat.new_replies())[-1].text


async def test_a_session_that_has_started_cannot_be_joined_from_an_old_button(
    core: Core, clock: FakeClock
) -> None:
    await define_room(core)
    chat = EngineChat(core, "100")
    await chat.onboard()
    await chat.tap("线上互助小组")
    await chat.tap("睡个好觉")
    token = (await chat.new_replies())[-1].token("我同意小组规则")
    clock.set(datetime(2026, 1, 6, 11, 5, tzinfo=UTC))
    await chat.press(token)
    assert any("已经开始" in r.text for r in await chat.new_replies())
    assert await members(core) == []


async def test_a_high_risk_message_in_a_room_group_alerts_staff_never_the_group(
    core: Core,
) -> None:
    facilitator = await define_room(core)
    member = await join(core, "100")
    await member.new_replies()
    result = await core.engine.handle(group_text("100", "我真的不想活了"))
    assert not result.duplicate
    staff = await outbox_to(core, STAFF_CHAT)
    assert len(staff) == 1
    assert "睡个好觉小组" in staff[0].text and await code_of(core, "100") in staff[0].text
    assert "认领" in staff[0].buttons
    assert await outbox_to(core, ROOM_CHAT) == []  # nothing is ever said in the group
    private = await member.new_replies()
    assert any("让我们很担心你" in r.text and "010-82951332" in r.text for r in private)
    assert any("不要在群里公开回应" in r.text for r in await facilitator.new_replies())
    async with core.db.session() as s:
        [escalation] = (await s.exec(select(Escalation))).all()
    assert escalation.level >= 3


async def test_a_high_risk_message_from_a_stranger_in_a_room_group_still_alerts_staff(
    core: Core,
) -> None:
    await define_room(core)
    await core.engine.handle(group_text("555", "I want to kill myself"))
    [alert] = await outbox_to(core, STAFF_CHAT)
    assert "未在安心登记的成员" in alert.text
    assert await outbox_to(core, ROOM_CHAT) == [] and await outbox_to(core, "555") == []


async def test_chatter_in_a_room_group_and_any_other_group_leaves_no_trace(core: Core) -> None:
    await define_room(core)
    await core.engine.handle(group_text("556", "今晚大家睡得怎么样"))
    await core.engine.handle(group_text("557", "我不想活了", chat_id="-100999"))
    async with core.db.session() as s:
        strangers = (
            await s.exec(
                select(func.count())
                .select_from(Person)
                .where(col(Person.external_id).in_(["556", "557"]))
            )
        ).one()
    assert strangers == 0
    assert await outbox_to(core, STAFF_CHAT) == []


async def test_sessions_repeat_weekly_when_asked(core: Core) -> None:
    await define_room(core)
    admin = EngineChat(core, ADMIN)
    await admin.command("room", "session sleep 周四 19:00-20:00 weeks=3")
    async with core.db.session() as s:
        count = (await s.exec(select(func.count()).select_from(RoomSession))).one()
    assert count == 4


async def test_the_data_download_lists_the_persons_group_sessions(core: Core) -> None:
    await define_room(core)
    chat = await join(core, "100")
    await chat.command("privacy")
    await chat.tap("下载我的数据")
    assert any(r.document_name for r in await chat.new_replies())
    from core.privacy import export_person

    async with core.db.session() as s:
        person = (await s.exec(select(Person).where(Person.external_id == "100"))).one()
        exported = await export_person(core.engine, s, person)
    assert exported["group_sessions"][0]["room"] == "睡个好觉小组"
