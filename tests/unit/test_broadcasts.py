"""Admin broadcasts: composing in the chat, audiences, bad input, fan-out, progress, cancel."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func
from sqlmodel import col, select

from core import broadcasts
from core.broadcasts import Audience, Broadcast, BroadcastError
from core.clock import FakeClock
from core.config import Settings
from core.escalation import Escalation
from core.messages import Priority
from core.models import AuditLog, OutboxMessage, Person
from core.risk import RiskLevel
from core.services import Core
from tests.drivers import EngineChat

STAFF_CHAT = "-100700"
ADMIN = "9001"


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


async def residents(core: Core, *ids: str, lang: str = "中文") -> list[EngineChat]:
    chats = []
    for external_id in ids:
        chat = EngineChat(core, external_id, language_hint="zh-hans")
        await chat.onboard(lang)
        chats.append(chat)
    return chats


async def broadcast_rows(core: Core) -> list[OutboxMessage]:
    async with core.db.session() as s:
        found = await s.exec(
            select(OutboxMessage)
            .where(OutboxMessage.kind == "broadcast")
            .order_by(col(OutboxMessage.id))
        )
        return list(found.all())


async def staff_texts(core: Core) -> list[str]:
    async with core.db.session() as s:
        found = await s.exec(
            select(OutboxMessage.text)
            .where(OutboxMessage.chat_id == STAFF_CHAT)
            .order_by(col(OutboxMessage.id))
        )
        return list(found.all())


async def compose(core: Core, admin: EngineChat, audience: str, zh: str, en: str | None) -> None:
    await admin.command("broadcast", audience)
    await admin.text(zh)
    if en is None:
        await admin.tap("跳过")
    else:
        await admin.text(en)
    await admin.tap("现在发送")


async def test_an_admin_broadcast_reaches_each_resident_once_in_their_language(
    core: Core,
) -> None:
    await residents(core, "301", "302", lang="中文")
    await residents(core, "303", lang="English")
    admin = EngineChat(core, ADMIN)
    await compose(core, admin, "everyone", "今晚八点有线上放松小组。", "Relaxation group at 8 pm.")
    preview = (await admin.new_replies())[-1]
    assert "接收人数：3" in preview.text and "今晚八点" in preview.text
    await admin.tap("确认发送")
    await broadcasts.sweep(core.engine)
    await broadcasts.sweep(core.engine)
    rows = await broadcast_rows(core)
    assert sorted(r.chat_id for r in rows) == ["301", "302", "303"]
    by_chat = {r.chat_id: r for r in rows}
    assert by_chat["303"].text == "Relaxation group at 8 pm."
    assert by_chat["301"].text == "今晚八点有线上放松小组。"
    assert all(r.priority == Priority.BROADCAST for r in rows)


async def test_a_skipped_language_gets_the_default_text(core: Core) -> None:
    await residents(core, "304", lang="English")
    admin = EngineChat(core, ADMIN)
    await compose(core, admin, "everyone", "通知内容", None)
    await admin.tap("确认发送")
    await broadcasts.sweep(core.engine)
    assert [r.text for r in await broadcast_rows(core)] == ["通知内容"]


async def test_a_resident_who_sent_stop_or_blocked_the_bot_is_left_out(core: Core) -> None:
    stopped, _blocked, _ok = await residents(core, "305", "306", "307")
    await stopped.command("stop")
    async with core.db.session() as s:
        person = (await s.exec(select(Person).where(Person.external_id == "306"))).one()
        person.blocked_at = core.clock.now()
        s.add(person)
        await s.commit()
    admin = EngineChat(core, ADMIN)
    await compose(core, admin, "everyone", "通知", "notice")
    await admin.tap("确认发送")
    await broadcasts.sweep(core.engine)
    assert [r.chat_id for r in await broadcast_rows(core)] == ["307"]


async def test_a_non_admin_cannot_broadcast(core: Core) -> None:
    [resident] = await residents(core, "308")
    await resident.command("broadcast", "everyone")
    assert any("只有管理员" in r.text for r in await resident.new_replies())
    async with core.db.session() as s:
        refused = (
            await s.exec(select(AuditLog).where(AuditLog.action == "broadcast.compose.refused"))
        ).all()
        assert len(refused) == 1
        assert (await s.exec(select(func.count()).select_from(Broadcast))).one() == 0


async def test_a_text_longer_than_telegram_allows_is_refused_with_its_length(core: Core) -> None:
    admin = EngineChat(core, ADMIN)
    await admin.command("broadcast", "everyone")
    await admin.text("长" * 5000)
    replies = await admin.new_replies()
    assert any("5,000" in r.text and "4,096" in r.text for r in replies)
    assert replies[-1].text.startswith("请发送")  # asked again for the same language


def test_create_draft_refuses_an_over_long_text_in_any_language() -> None:
    with pytest.raises(BroadcastError) as raised:
        broadcasts.check_texts({"zh_Hans": "好", "en": "x" * 4097}, ("zh_Hans", "en"), "zh_Hans")
    assert raised.value.key == "broadcast.too_long" and raised.value.params["length"] == 4097


async def test_an_empty_audience_is_shown_and_cannot_be_confirmed(core: Core) -> None:
    await residents(core, "309")
    admin = EngineChat(core, ADMIN)
    await compose(core, admin, "language en", "通知", "notice")
    replies = await admin.new_replies()
    assert "接收人数：0" in replies[-2].text
    assert "没有符合条件的接收人" in replies[-1].text
    assert not any(b for r in replies for line in r.buttons for b in line if "确认" in b["label"])


async def test_confirming_an_empty_audience_through_core_is_refused(core: Core) -> None:
    now = core.clock.now()

    async def work(session):  # type: ignore[no-untyped-def]
        draft = await broadcasts.create_draft(
            session,
            core.engine,
            texts={"zh_Hans": "通知"},
            audience=Audience("everyone"),
            send_at=None,
            created_by="test",
            now=now,
        )
        await broadcasts.confirm(session, core.engine, draft.id, "test", now)

    with pytest.raises(BroadcastError) as raised:
        await core.db.run(work)
    assert raised.value.key == "broadcast.empty"


async def test_a_bad_audience_gets_the_usage(core: Core) -> None:
    admin = EngineChat(core, ADMIN)
    await admin.command("broadcast", "planet mars")
    assert any("用法" in r.text for r in await admin.new_replies())


async def test_a_site_audience_reaches_only_that_site(core: Core) -> None:
    await residents(core, "310")
    with pytest.raises(BroadcastError):
        Audience.parse("site")
    admin = EngineChat(core, ADMIN)
    await compose(core, admin, "site nowhere", "通知", "notice")
    assert any("没有这个隔离点" in r.text for r in await admin.new_replies())
    await compose(core, admin, "site example", "通知", "notice")
    assert "接收人数：1" in (await admin.new_replies())[-1].text


async def test_a_risk_tier_audience_reaches_people_with_a_recent_high_risk_case(
    core: Core,
) -> None:
    await residents(core, "311", "312")
    async with core.db.session() as s:
        person = (await s.exec(select(Person).where(Person.external_id == "311"))).one()
        s.add(
            Escalation(
                person_id=person.id,
                case_code=person.case_code,
                level=int(RiskLevel.HIGH),
                source="triage",
                status="resolved",
                created_at=core.clock.now(),
                resolved_at=core.clock.now(),
            )
        )
        await s.commit()
    now = core.clock.now()
    counts = {}
    for tier in ("high", "moderate", "low"):
        counts[tier] = await core.db.run(
            lambda s, t=tier: broadcasts.count_recipients(s, Audience("risk", t), now, "zh_Hans")
        )
    assert counts == {"high": 1, "moderate": 0, "low": 1}


async def test_fan_out_resumes_from_its_cursor_without_queueing_anyone_twice(
    core: Core,
) -> None:
    await residents(core, *(str(400 + i) for i in range(7)))
    now = core.clock.now()

    async def prepare(session):  # type: ignore[no-untyped-def]
        draft = await broadcasts.create_draft(
            session,
            core.engine,
            texts={"zh_Hans": "分批"},
            audience=Audience("everyone"),
            send_at=None,
            created_by="test",
            now=now,
        )
        await broadcasts.confirm(session, core.engine, draft.id, "test", now)
        return draft.id

    broadcast_id = await core.db.run(prepare)
    await core.db.run(lambda s: broadcasts.start_due(s, core.engine, now))
    # Two small batches, then the process "dies"; a fresh sweep finishes the rest.
    for _ in range(2):
        await core.db.run(lambda s: broadcasts.fan_out_batch(s, core.engine, broadcast_id, now, 3))
    assert len(await broadcast_rows(core)) == 6
    await broadcasts.sweep(core.engine)
    await broadcasts.sweep(core.engine)
    rows = await broadcast_rows(core)
    assert len(rows) == 7 and len({r.chat_id for r in rows}) == 7


async def test_progress_and_completion_are_posted_in_the_staff_chat(
    core: Core, clock: FakeClock
) -> None:
    await residents(core, "313", "314")
    admin = EngineChat(core, ADMIN)
    await compose(core, admin, "everyone", "通知", "notice")
    await admin.tap("确认发送")
    await broadcasts.sweep(core.engine)
    assert any("已发送 0，失败 0，剩余 2（共 2）" in t for t in await staff_texts(core))
    async with core.db.session() as s:
        for row in await s.exec(select(OutboxMessage).where(OutboxMessage.kind == "broadcast")):
            row.status = "sent" if row.chat_id == "313" else "failed"
            s.add(row)
        await s.commit()
    clock.advance(seconds=5)
    await broadcasts.sweep(core.engine)
    assert any("已完成：已发送 1，失败 1，剩余 0" in t for t in await staff_texts(core))


async def test_cancel_drops_what_has_not_been_sent(core: Core, clock: FakeClock) -> None:
    await residents(core, "315", "316", "317")
    admin = EngineChat(core, ADMIN)
    await compose(core, admin, "everyone", "通知", "notice")
    await admin.tap("确认发送")
    await broadcasts.sweep(core.engine)
    async with core.db.session() as s:
        first = (
            await s.exec(select(OutboxMessage).where(OutboxMessage.kind == "broadcast"))
        ).first()
        assert first is not None
        first.status = "sent"
        s.add(first)
        await s.commit()
    await admin.command("broadcast", "cancel 1")
    statuses = sorted(r.status for r in await broadcast_rows(core))
    assert statuses == ["cancelled", "cancelled", "sent"]
    assert any("已被" in t and "取消" in t for t in await staff_texts(core))
    clock.advance(minutes=5)
    await broadcasts.sweep(core.engine)
    assert len(await broadcast_rows(core)) == 3


async def test_a_broadcast_for_later_waits_for_its_time(core: Core, clock: FakeClock) -> None:
    await residents(core, "318")
    admin = EngineChat(core, ADMIN)
    await admin.command("broadcast", "everyone")
    await admin.text("明早通知")
    await admin.tap("跳过")
    local = (clock.now() + timedelta(hours=3)).astimezone(core.sites.default().tz)
    await admin.text(local.strftime("%Y-%m-%d %H:%M"))
    await admin.tap("确认发送")
    await broadcasts.sweep(core.engine)
    assert not await broadcast_rows(core)
    clock.advance(hours=3, minutes=1)
    await broadcasts.sweep(core.engine)
    assert len(await broadcast_rows(core)) == 1
