"""The conversation engine: onboarding, buttons, bad input, idempotency, privacy."""

from __future__ import annotations

from sqlmodel import select

from core.models import AuditLog, Person
from core.services import Core
from tests.drivers import EngineChat


async def test_onboarding_in_chinese_reaches_the_menu(core: Core) -> None:
    chat = EngineChat(core)
    await chat.command("start")
    first = await chat.new_replies()
    assert any("你好，我是安心" in r.text for r in first)
    await chat.tap("中文")
    assert "隐私" in (await chat.new_replies())[-1].text
    await chat.tap("同意")
    assert "你是哪一位" in (await chat.new_replies())[-1].text
    await chat.tap("正在隔离")
    await chat.tap("18–39")
    replies = await chat.new_replies()
    assert any("编号" in r.text for r in replies)
    assert replies[-1].text.startswith("我能为你做些什么")
    async with core.db.session() as s:
        person = (await s.exec(select(Person))).one()
    assert person.consent_version == 1 and person.site_code == "example"
    assert person.relation == "resident" and person.age_band == "18_39"


async def test_deep_link_site_is_remembered_through_consent(core: Core) -> None:
    chat = EngineChat(core, language_hint="en")
    await chat.command("start", "site_example")
    await chat.tap("English")
    await chat.tap("I agree")
    async with core.db.session() as s:
        assert (await s.exec(select(Person))).one().site_code == "example"


async def test_duplicate_update_is_handled_once(core: Core) -> None:
    chat = EngineChat(core)
    await chat.command("start", update_key="77")
    before = len(await chat.all_replies())
    again = await chat.command("start", update_key="77")
    assert again.duplicate
    assert len(await chat.all_replies()) == before


async def test_forged_button_token_gets_a_kind_answer(core: Core) -> None:
    chat = EngineChat(core)
    await chat.command("start")
    await chat.new_replies()
    result = await chat.press("forged-token-xyz")
    assert result.notice and "失效" in result.notice
    assert any("失效" in r.text for r in await chat.new_replies())


async def test_another_persons_button_is_refused(core: Core) -> None:
    alice, bob = EngineChat(core, "1"), EngineChat(core, "2")
    await alice.command("start")
    token = (await alice.new_replies())[-1].token("中文")
    await bob.command("start")
    await bob.new_replies()
    result = await bob.press(token)
    assert result.notice and "失效" in result.notice
    async with core.db.session() as s:
        bob_row = (await s.exec(select(Person).where(Person.external_id == "2"))).one()
    assert bob_row.state == "onb_language"


async def test_stale_button_from_an_earlier_step_is_refused(core: Core) -> None:
    chat = EngineChat(core)
    await chat.command("start")
    await chat.tap("中文")
    agree = (await chat.new_replies())[-1].token("同意")
    await chat.press(agree)
    await chat.new_replies()
    result = await chat.press(agree)
    assert result.notice and "之前的步骤" in result.notice


async def test_unknown_command_is_answered(core: Core) -> None:
    chat = EngineChat(core)
    await chat.onboard()
    await chat.command("frobnicate")
    assert "/frobnicate" in (await chat.new_replies())[0].text


async def test_empty_and_huge_messages_are_answered(core: Core) -> None:
    chat = EngineChat(core)
    await chat.onboard()
    await chat.text("")
    assert "空消息" in (await chat.new_replies())[0].text
    await chat.text("隔离" * 5000)
    assert await chat.new_replies()


async def test_sos_shows_24_hour_line_and_emergency_numbers(core: Core) -> None:
    chat = EngineChat(core)
    await chat.command("sos")
    reply = (await chat.new_replies())[-1]
    assert reply.priority == 0
    assert "110" in reply.text and "120" in reply.text and "010-82951332" in reply.text
    assert "24小时" in reply.text


async def test_erasure_removes_the_person_and_confirms(core: Core) -> None:
    chat = EngineChat(core)
    await chat.onboard()
    await chat.command("privacy")
    await chat.tap("删除")
    await chat.tap("确定删除")
    replies = await chat.new_replies()
    assert "已全部删除" in replies[-1].text
    async with core.db.session() as s:
        assert (await s.exec(select(Person))).all() == []
        assert (await s.exec(select(AuditLog.action))).all()[-1] == "privacy.erase"


async def test_export_sends_a_json_document(core: Core) -> None:
    chat = EngineChat(core)
    await chat.onboard()
    await chat.command("privacy")
    await chat.tap("下载")
    reply = (await chat.new_replies())[-1]
    assert reply.document_name and reply.document_name.endswith(".json")
