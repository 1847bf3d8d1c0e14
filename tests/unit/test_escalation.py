"""Triage → safety reply → staff card → claim → relay → resolve, and the re-pages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlmodel import col, select

from core.clock import FakeClock
from core.config import Settings
from core.db import Database
from core.escalation import Escalation, OnCall, page_due
from core.messages import Priority
from core.models import AuditLog, OutboxMessage, Person, RoleGrant
from core.services import Core
from tests.drivers import EngineChat

STAFF_CHAT = "-100500"


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    return Settings(
        data_dir=tmp_path,
        database_url=db_url,
        telegram_token="1:x",  # type: ignore[call-arg]
        staff_chat_id=STAFF_CHAT,
        _env_file=None,
    )


async def staff_rows(core: Core) -> list[OutboxMessage]:
    async with core.db.session() as s:
        return list(
            (
                await s.exec(
                    select(OutboxMessage)
                    .where(OutboxMessage.chat_id == STAFF_CHAT)
                    .order_by(col(OutboxMessage.id))
                )
            ).all()
        )


async def grant(core: Core, chat: EngineChat, role: str) -> None:
    await chat.command("start")
    async with core.db.session() as s:
        person = (await s.exec(select(Person).where(Person.external_id == chat.external_id))).one()
        s.add(RoleGrant(person_id=person.id, role=role, granted_at=core.clock.now()))
        await s.commit()


async def counselor_on_call(core: Core, external_id: str = "900") -> EngineChat:
    counselor = EngineChat(core, external_id)
    await grant(core, counselor, "counselor")
    await counselor.command("oncall", "on")
    await counselor.new_replies()
    return counselor


async def open_escalations(core: Core) -> list[Escalation]:
    async with core.db.session() as s:
        return list((await s.exec(select(Escalation))).all())


def press_staff(rows: list[OutboxMessage], label: str) -> str:
    for row in reversed(rows):
        for line in json.loads(row.buttons):
            for button in line:
                if label in button["label"]:
                    return str(button["token"])
    raise AssertionError(f"no staff button {label!r}")


async def test_risky_message_gets_safety_reply_and_a_staff_card(core: Core) -> None:
    await counselor_on_call(core)
    resident = EngineChat(core, "100")
    await resident.onboard()
    await resident.text("我不想活了")
    replies = await resident.new_replies()
    assert replies[0].priority == Priority.CRISIS
    assert "已经通知了值班的心理咨询师" in replies[0].text and "010-82951332" in replies[0].text
    assert any("怎么做" in r.text for r in replies)  # the direct follow-up question
    cards = await staff_rows(core)
    assert len(cards) == 1 and cards[0].priority == Priority.ESCALATION
    assert "高风险" in cards[0].text and "我不想活了" in cards[0].text
    assert [e.status for e in await open_escalations(core)] == ["open"]


async def test_nobody_on_call_tells_the_resident_to_call_a_24_hour_line(core: Core) -> None:
    resident = EngineChat(core, "100")
    await resident.onboard()
    await resident.text("I want to kill myself")
    reply = (await resident.new_replies())[0]
    assert "现在没有心理咨询师在线值班" in reply.text and "24小时" in reply.text
    assert "无人值班" in (await staff_rows(core))[0].text


async def test_a_second_signal_appends_to_the_one_open_escalation(core: Core) -> None:
    resident = EngineChat(core, "100")
    await resident.onboard()
    await resident.text("我想死")
    await resident.text("活着没意思，想解脱")
    escalations = await open_escalations(core)
    assert len(escalations) == 1
    assert len(await staff_rows(core)) == 1


async def test_yes_to_the_plan_question_raises_to_imminent(core: Core) -> None:
    resident = EngineChat(core, "100")
    await resident.onboard()
    await resident.text("我想死")
    await resident.tap("是的")
    assert (await open_escalations(core))[0].level == 4
    cards = await staff_rows(core)
    assert "升级" in cards[-1].text and "紧急" in cards[-1].text
    assert any("110" in r.text for r in await resident.new_replies())


async def test_a_bare_yes_typed_after_the_question_raises_to_imminent(core: Core) -> None:
    resident = EngineChat(core, "100")
    await resident.onboard()
    await resident.text("我想死")
    await resident.text("是")
    assert (await open_escalations(core))[0].level == 4


async def test_claim_relays_both_ways_and_resolve_records_the_outcome(core: Core) -> None:
    counselor = await counselor_on_call(core)
    resident = EngineChat(core, "100")
    await resident.onboard()
    await resident.text("我想死")
    await resident.new_replies()
    claim = press_staff(await staff_rows(core), "认领")
    result = await counselor.press(claim, chat_kind="group")
    assert result.notice and "认领" in result.notice
    assert any("连线" in r.text for r in await counselor.new_replies())
    assert any("咨询师现在和你在一起" in r.text for r in await resident.new_replies())

    await resident.text("我一个人在房间里")
    assert any("我一个人在房间里" in r.text for r in await counselor.new_replies())
    await counselor.text("我在这里陪你，可以说说发生了什么吗？")
    got = await resident.new_replies()
    assert got[-1].text.startswith("🧑‍⚕️ 咨询师：我在这里陪你")

    await resident.command("menu")  # the bot's menus stay away while a human holds the chat
    assert "正在和值班咨询师交谈" in (await resident.new_replies())[-1].text

    await counselor.command("done")
    await counselor.tap("安全")
    escalation = (await open_escalations(core))[0]
    assert escalation.status == "resolved" and escalation.outcome == "safe"
    assert any("安全计划" in r.text for r in await resident.new_replies())
    async with core.db.session() as s:
        actions = set((await s.exec(select(AuditLog.action))).all())
    assert {"escalation.open", "escalation.claim", "case.view", "escalation.resolve"} <= actions


async def test_a_claim_from_someone_without_a_staff_role_is_refused(core: Core) -> None:
    resident = EngineChat(core, "100")
    await resident.onboard()
    await resident.text("我想死")
    intruder = EngineChat(core, "666")
    await intruder.command("start")
    result = await intruder.press(press_staff(await staff_rows(core), "认领"), chat_kind="group")
    assert result.notice and "只有登记的心理工作人员" in result.notice
    assert (await open_escalations(core))[0].status == "open"
    async with core.db.session() as s:
        assert "escalation.claim.refused" in (await s.exec(select(AuditLog.action))).all()


async def test_two_claims_have_one_winner(core: Core) -> None:
    first = await counselor_on_call(core, "901")
    second = await counselor_on_call(core, "902")
    resident = EngineChat(core, "100")
    await resident.onboard()
    await resident.text("我想死")
    token = press_staff(await staff_rows(core), "认领")
    await first.press(token, chat_kind="group")
    lost = await second.press(token, chat_kind="group")
    assert lost.notice and "已由" in lost.notice
    escalation = (await open_escalations(core))[0]
    async with core.db.session() as s:
        winner = await s.get(Person, escalation.claimed_by)
    assert winner is not None and winner.external_id == "901"


async def test_unclaimed_cards_are_repaged_then_sent_to_the_supervisor(
    core: Core, clock: FakeClock
) -> None:
    counselor = await counselor_on_call(core)
    supervisor = EngineChat(core, "800")
    await grant(core, supervisor, "supervisor")
    await supervisor.new_replies()
    resident = EngineChat(core, "100")
    await resident.onboard()
    await resident.text("我想死")
    await resident.new_replies()

    async def sweep() -> int:
        return await core.db.run(lambda s: page_due(s, core.engine, clock.now()))

    assert await sweep() == 0
    clock.advance(minutes=2, seconds=1)
    assert await sweep() == 1
    assert any("无人认领" in r.text for r in await counselor.new_replies())
    assert "再次提醒" in (await staff_rows(core))[-1].text
    clock.advance(minutes=3)
    assert await sweep() == 1
    assert any("督导" in r.text for r in await supervisor.new_replies())
    assert any("24小时" in r.text for r in await resident.new_replies())
    assert await sweep() == 0


async def test_staff_concern_report_opens_a_moderate_case(core: Core) -> None:
    resident = EngineChat(core, "100")
    await resident.onboard()
    async with core.db.session() as s:
        code = (await s.exec(select(Person.case_code))).one()
    doctor = EngineChat(core, "700")
    await grant(core, doctor, "staff")
    await doctor.command("concern", f"{code} 情绪低落，早醒，不吃饭")
    escalation = (await open_escalations(core))[0]
    assert escalation.level == 2 and escalation.source == "staff_report"
    assert "早醒" in (await staff_rows(core))[-1].text


async def test_erasure_waits_while_an_escalation_is_open(core: Core) -> None:
    resident = EngineChat(core, "100")
    await resident.onboard()
    await resident.text("我想死")
    await resident.command("privacy")
    await resident.tap("删除")
    assert "结束后" in (await resident.new_replies())[-1].text
    async with core.db.session() as s:
        assert (await s.exec(select(Person).where(Person.external_id == "100"))).first()


async def test_sos_opens_an_imminent_escalation(core: Core) -> None:
    resident = EngineChat(core, "100")
    await resident.command("sos")
    assert (await open_escalations(core))[0].level == 4
    assert "110" in (await resident.new_replies())[0].text


async def test_stats_give_median_and_90th_percentile_time_to_claim(
    core: Core, clock: FakeClock
) -> None:
    counselor = await counselor_on_call(core)
    for n, wait in enumerate((10, 20, 30, 40, 100)):
        resident = EngineChat(core, str(200 + n))
        await resident.onboard()
        await resident.text("我想死")
        clock.advance(seconds=wait)
        await counselor.press(press_staff(await staff_rows(core), "认领"), chat_kind="group")
        await counselor.command("done")
        await counselor.tap("安全")
    await counselor.new_replies()
    await counselor.command("stats")
    text = (await counselor.new_replies())[-1].text
    assert "中位数 30 秒" in text and "90% 在 100 秒内" in text


async def test_ordinary_chatter_raises_nothing(core: Core, db: Database) -> None:
    resident = EngineChat(core, "100")
    await resident.onboard()
    for text in ("什么时候能解除隔离", "饭太难吃了", "累死了", "笑死我了"):
        await resident.text(text)
    assert await open_escalations(core) == []
    async with core.db.session() as s:
        assert (await s.exec(select(OnCall))).all() == []
