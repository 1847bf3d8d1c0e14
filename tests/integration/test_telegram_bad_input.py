"""What people (and the internet) send that is not the happy path, through the real channel.

Tests that must show that *nothing* happened use the webhook: Telegram's POST is answered only
after the update is handled and committed, so "delivered" means "handled".
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import ClientSession

from core.messages import Outbound, Priority
from core.models import InboundSeen, OutboxMessage, Person
from core.outbox import queue
from tests.integration.conftest import WEBHOOK_SECRET, BotUnderTest, StartBot

BUTTON_INVALID = "这个按钮已经失效了"
MEDIA = "只能读文字消息"


def snapshot(person: Person | None) -> dict[str, Any]:
    """What a press could change about a person (not ``last_seen_at``)."""
    assert person is not None
    return person.model_dump(exclude={"last_seen_at"})


async def post_webhook(
    bot: BotUnderTest, body: bytes, headers: dict[str, str]
) -> tuple[int, dict[str, Any]]:
    async with ClientSession() as http:
        async with http.post(bot.webhook_url, data=body, headers=headers) as response:
            text = await response.text()
            return response.status, json.loads(text) if text else {}


def start_update(user_id: int, update_id: int = 990_001) -> dict[str, Any]:
    return {
        "update_id": update_id,
        "message": {
            "message_id": 1,
            "date": 1_767_600_000,
            "chat": {"id": user_id, "type": "private", "first_name": "X"},
            "from": {"id": user_id, "is_bot": False, "first_name": "X", "language_code": "zh"},
            "text": "/start",
            "entities": [{"type": "bot_command", "offset": 0, "length": 6}],
        },
    }


async def test_duplicate_update_gets_one_reply(start_bot: StartBot) -> None:
    bot = await start_bot("webhook")
    resident = bot.resident(7101)
    update = await resident.command("/start")
    await resident.replies(2)
    rows_before = len(await bot.outbox(7101))

    await bot.api.duplicate_update(update["update_id"])
    await bot.delivered(update, times=2)
    assert len(await bot.outbox(7101)) == rows_before
    assert (await bot.seen_keys()).count(str(update["update_id"])) == 1

    await resident.say("还在吗")  # a later message's answer comes after anything the copy queued
    await resident.replies(1, contains="自动助手")
    await bot.all_sent()
    texts = [m.plain_text or "" for m in bot.api.messages_to(7101)]
    assert sum("你好，我是安心" in t for t in texts) == 2  # /start's welcome, then the re-prompt
    assert sum("示例配置" in t for t in texts) == 2


async def test_forged_callback_data_gets_a_kind_answer_and_changes_nothing(
    start_bot: StartBot,
) -> None:
    bot = await start_bot("polling")
    resident = bot.resident(7102)
    await resident.command("/start")
    _hint, welcome = await resident.replies(2)
    before = snapshot(await bot.person(7102))

    for forged in ("t:" + secrets.token_urlsafe(12), "lang:zh_Hans", "t:", "🙂" * 16):
        press = await resident.user.press(welcome, forged, check=False)
        answer = await resident.answer_to(press)
        assert BUTTON_INVALID in answer["text"]
        invalid, _hint, again = await resident.replies(3)
        assert BUTTON_INVALID in (invalid.plain_text or "")
        assert "请先选择语言" in (again.plain_text or "")  # the current step, shown again

    assert snapshot(await bot.person(7102)) == before
    await resident.tap("中文")  # the real button still works
    await resident.replies(1, contains="隐私")


async def test_another_persons_button_is_refused(start_bot: StartBot) -> None:
    bot = await start_bot("polling")
    alice, bob = bot.resident(7103), bot.resident(7104, language_code="en")
    await alice.command("/start")
    await alice.replies(2)
    await bob.command("/start")
    _hint, bob_welcome = await bob.replies(2)
    _message, alices_data = alice.button("中文")
    alice_before, bob_before = snapshot(await bot.person(7103)), snapshot(await bot.person(7104))

    # Bob's client replays Alice's callback data on Bob's own message.
    answer = await bob.answer_to(await bob.user.press(bob_welcome, alices_data, check=False))
    assert "no longer works" in answer["text"]
    await bob.replies(1, contains="no longer works")
    assert snapshot(await bot.person(7104)) == bob_before
    assert snapshot(await bot.person(7103)) == alice_before

    # Alice's button is untouched and still hers.
    await alice.tap("中文")
    await alice.replies(1, contains="隐私")
    assert not [m for m in bot.api.messages_to(7103) if "no longer works" in (m.plain_text or "")]


async def test_a_press_on_someone_elses_message_answers_in_the_pressers_own_chat(
    start_bot: StartBot,
) -> None:
    bot = await start_bot("polling")
    alice, bob = bot.resident(7105), bot.resident(7106, language_code="en")
    await alice.command("/start")
    await alice.replies(2)
    await bob.command("/start")
    await bob.replies(2)
    message, data = alice.button("中文")
    alice_seen = len(bot.api.messages_to(7105))

    answer = await bob.answer_to(await bob.user.press(message, data))
    assert "no longer works" in answer["text"]
    await bob.replies(1, contains="no longer works")
    bob_row = await bot.person(7106)
    assert bob_row is not None and bob_row.chat_id == "7106"
    assert len(bot.api.messages_to(7105)) == alice_seen  # nothing leaked into Alice's chat


async def test_unknown_command_is_named_and_the_step_shown_again(start_bot: StartBot) -> None:
    bot = await start_bot("polling")
    resident = bot.resident(7107)
    await resident.command("/start")
    await resident.replies(2)
    await resident.command("/frobnicate now")
    unknown, *_rest = await resident.replies(1, contains="/frobnicate")
    assert "我不认识 /frobnicate 这个指令" in (unknown.plain_text or "")
    await resident.replies(1, contains="请先选择语言")


async def test_sticker_photo_and_voice_get_a_kind_answer(start_bot: StartBot) -> None:
    bot = await start_bot("polling")
    resident = bot.resident(7108)
    await resident.user.send_sticker("😢")
    await resident.replies(1, contains=MEDIA)
    await resident.user.send_photo()
    await resident.replies(1, contains=MEDIA)
    await resident.user.send_voice(duration=12)
    await resident.replies(1, contains=MEDIA)
    person = await bot.person(7108)
    assert person is not None and person.consent_version is None
    await bot.all_sent()
    assert {r.status for r in await bot.outbox(7108)} == {"sent"}


async def test_an_edited_message_is_acknowledged_not_answered_again(start_bot: StartBot) -> None:
    bot = await start_bot("polling")
    resident = bot.resident(7109)
    said = await resident.say("我今天很好")
    await resident.replies(1, contains="自动助手")
    await resident.user.edit_text(said["message"]["message_id"], "我今天不太好")
    [edited] = await resident.replies(1, contains="修改了一条消息")
    assert "重新发送" in (edited.plain_text or "")


async def test_a_ten_thousand_character_message_is_answered(start_bot: StartBot) -> None:
    bot = await start_bot("polling")
    resident = bot.resident(7110)
    await resident.say("隔离" * 5_000)
    await resident.replies(1, contains="自动助手")
    await bot.all_sent()
    rows = await bot.outbox(7110)
    assert rows and {r.status for r in rows} == {"sent"}
    assert all(len(m.plain_text or "") <= 4096 for m in bot.api.messages_to(7110))


async def test_a_reply_longer_than_telegram_allows_arrives_in_order_in_parts(
    start_bot: StartBot,
) -> None:
    bot = await start_bot("polling")
    resident = bot.resident(7111)
    await resident.command("/start")
    await resident.replies(2)
    person = await bot.person(7111)
    assert person is not None
    paragraphs = [f"第{i}段：" + "安心" * 150 for i in range(30)]  # ~9,400 characters
    long_text = "\n".join(paragraphs)

    async def queue_long(session: Any) -> int:
        message = Outbound("telegram", "7111", long_text, person_id=person.id)
        return await queue(session, [message], bot.clock.now())

    rows = await bot.runtime.db.run(queue_long)
    bot.runtime.workers["telegram"].wake()
    parts = await resident.replies(rows)
    assert len(parts) == 3
    assert all(len(p.plain_text or "") <= 4096 for p in parts)
    assert "\n".join(p.plain_text or "" for p in parts) == long_text


async def test_empty_messages_get_a_gentle_answer(start_bot: StartBot) -> None:
    bot = await start_bot("polling")
    resident = bot.resident(7112)
    await resident.say("")
    await resident.replies(1, contains="空消息")
    await resident.say("   \n ")
    await resident.replies(1, contains="空消息")


async def test_channel_posts_and_group_chatter_store_nothing_and_get_no_reply(
    start_bot: StartBot,
) -> None:
    bot = await start_bot("webhook")
    post = await bot.api.channel_post("今日防疫通知")
    await bot.delivered(post)
    group = bot.api.group(title="隔离点3号楼")
    chatter = await group.send_text(bot.api.user(7113), "大家好")
    await bot.delivered(chatter)
    for table in (Person, InboundSeen, OutboxMessage):
        assert await bot.count(table) == 0
    assert bot.api.sent == []


async def test_malformed_json_at_the_webhook_is_400_and_stores_nothing(
    start_bot: StartBot,
) -> None:
    bot = await start_bot("webhook")
    headers = {"X-Telegram-Bot-Api-Secret-Token": WEBHOOK_SECRET}
    for body in (
        b'{"update_id": 5, "message": {',
        b"\xff\xfe not even text",
        b"[1, 2, 3]",
        b'{"update_id": "five"}',
        b'{"update_id": 6, "message": {"text": "no chat, no sender"}}',
    ):
        status, _ = await post_webhook(bot, body, {**headers, "Content-Type": "application/json"})
        assert status == 400, body
    for table in (Person, InboundSeen, OutboxMessage):
        assert await bot.count(table) == 0
    assert bot.api.sent == []


async def test_a_wrong_or_missing_webhook_secret_is_401_and_stores_nothing(
    start_bot: StartBot,
) -> None:
    bot = await start_bot("webhook")
    bot.api.user(7114, started=True)
    body = json.dumps(start_update(7114)).encode()
    json_type = {"Content-Type": "application/json"}
    for headers in (
        json_type,
        {**json_type, "X-Telegram-Bot-Api-Secret-Token": "not-the-secret-at-all"},
        {**json_type, "X-Telegram-Bot-Api-Secret-Token": WEBHOOK_SECRET[:-1]},
        {**json_type, "X-Telegram-Bot-Api-Secret-Token": ""},
    ):
        status, _ = await post_webhook(bot, body, headers)
        assert status == 401
    for table in (Person, InboundSeen, OutboxMessage):
        assert await bot.count(table) == 0

    # the same update with the right secret is taken: the refusals were about the secret
    right = {**json_type, "X-Telegram-Bot-Api-Secret-Token": WEBHOOK_SECRET}
    status, _ = await post_webhook(bot, body, right)
    assert status == 200
    assert await bot.count(Person) == 1
    assert await bot.count(InboundSeen) == 1
    assert Priority.REPLY == min(r.priority for r in await bot.outbox(7114))


async def test_an_oversized_update_is_413_whether_announced_or_streamed(
    start_bot: StartBot,
) -> None:
    bot = await start_bot("webhook")
    bot.api.user(7115, started=True)
    update = start_update(7115, update_id=990_077)
    update["message"]["text"] = "/start " + "长" * 400_000  # 1.2 MB as UTF-8
    body = json.dumps(update, ensure_ascii=False).encode()
    headers = {
        "Content-Type": "application/json",
        "X-Telegram-Bot-Api-Secret-Token": WEBHOOK_SECRET,
    }
    status, _ = await post_webhook(bot, body, headers)  # with its Content-Length
    assert status == 413

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: read until it is too big
        for at in range(0, len(body), 64_000):
            yield body[at : at + 64_000]

    async with ClientSession() as http:
        async with http.post(bot.webhook_url, data=chunks(), headers=headers) as response:
            assert response.status == 413
            assert "content-length" not in {k.lower() for k in response.request_info.headers}
        async with http.get(bot.webhook_url) as response:
            assert response.status == 405 and response.headers["Allow"] == "POST"
    for table in (Person, InboundSeen, OutboxMessage):
        assert await bot.count(table) == 0
    # The same person's ordinary update right after is taken.
    status, answer = await post_webhook(bot, json.dumps(start_update(7115)).encode(), headers)
    assert (status, answer) == (200, {"ok": True})
    assert await bot.count(InboundSeen) == 1
