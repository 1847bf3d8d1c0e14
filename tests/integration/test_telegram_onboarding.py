"""Onboarding in Chinese through the real aiogram client, over long polling and over the webhook."""

from __future__ import annotations

import pytest

from core.models import OutboxMessage
from tests.integration.conftest import WEBHOOK_SECRET, Resident, StartBot


async def onboard_in_chinese(resident: Resident) -> None:
    """/start → 中文 → 同意，开始 → 正在隔离的人 → 18–39岁, checking each answer on the way."""
    await resident.command("/start")
    hint, welcome = await resident.replies(2)
    assert "示例配置" in (hint.plain_text or "")
    assert "你好，我是安心" in (welcome.plain_text or "")
    assert [b["text"] for b in welcome.buttons] == ["中文", "English"]

    answer = await resident.answer_to(await resident.tap("中文"))
    assert not answer.get("text")  # a good press gets a silent answer, no toast
    [consent] = await resident.replies(1, contains="隐私")
    assert "隐私" in (consent.plain_text or "")
    assert "同意，开始" in [b["text"] for b in consent.buttons]

    await resident.tap("同意，开始")
    await resident.replies(1, contains="谢谢你的信任")
    [relation] = await resident.replies(1, contains="你是哪一位")
    assert "正在隔离的人" in [b["text"] for b in relation.buttons]

    await resident.tap("正在隔离的人")
    [age] = await resident.replies(1, contains="你的年龄是")
    assert "18–39岁" in [b["text"] for b in age.buttons]

    await resident.tap("18–39岁")
    await resident.replies(1, contains="你的编号是 R-")
    [menu] = await resident.replies(1, contains="我能为你做些什么")
    assert "🆘 我需要紧急帮助" in [b["text"] for b in menu.buttons]


@pytest.mark.parametrize("transport", ["polling", "webhook"])
async def test_onboarding_in_chinese_reaches_the_main_menu(
    start_bot: StartBot, transport: str
) -> None:
    bot = await start_bot(transport)
    resident = bot.resident(7001)
    await onboard_in_chinese(resident)

    person = await bot.person(7001)
    assert person is not None
    assert (person.language, person.consent_version, person.site_code) == ("zh_Hans", 1, "example")
    assert (person.relation, person.age_band, person.state) == ("resident", "18_39", "menu")
    assert person.chat_id == "7001"
    await bot.all_sent()
    rows = await bot.outbox(7001)
    assert {r.status for r in rows} == {"sent"}
    # each outbox row went out exactly once, as the message Telegram gave back its id for
    sent = bot.api.messages_to(7001)
    assert len(sent) == len(rows) >= 8
    assert [r.platform_message_id for r in rows] == [str(m.message_id) for m in sent]
    assert all(isinstance(r, OutboxMessage) and r.attempts == 1 for r in rows)
    assert len(bot.api.callback_answers) == 4


async def test_polling_removes_a_webhook_and_confirms_updates(start_bot: StartBot) -> None:
    bot = await start_bot("polling")
    resident = bot.resident(7002)
    update = await resident.command("/start")
    await resident.replies(2)
    assert bot.api.webhook is None
    assert update["update_id"] in bot.api.delivered
    assert [c.method for c in bot.api.calls[:2]] == ["deleteWebhook", "getMe"]


async def test_webhook_is_registered_with_the_secret_and_allowed_updates(
    start_bot: StartBot,
) -> None:
    bot = await start_bot("webhook")
    hook = bot.api.webhook
    assert hook is not None
    assert hook.url == bot.webhook_url
    assert hook.secret_token == WEBHOOK_SECRET
    assert set(hook.allowed_updates or []) >= {"message", "edited_message", "callback_query"}
