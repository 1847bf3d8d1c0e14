"""The real aiogram client (HTTP, no mocks) against tests.fakebotapi.FakeBotAPI."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, web

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `tests` is not an installed package
    sys.path.insert(0, str(ROOT))

from aiogram import Bot, Dispatcher, F  # noqa: E402
from aiogram.client.session.aiohttp import AiohttpSession  # noqa: E402
from aiogram.client.telegram import TelegramAPIServer  # noqa: E402
from aiogram.exceptions import (  # noqa: E402
    ClientDecodeError,
    TelegramBadRequest,
    TelegramConflictError,
    TelegramForbiddenError,
    TelegramNetworkError,
    TelegramRetryAfter,
    TelegramServerError,
    TelegramUnauthorizedError,
)
from aiogram.types import (  # noqa: E402
    BotCommand,
    BufferedInputFile,
    CallbackQuery,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    Message,
    TelegramObject,
    Update,
)
from aiogram.webhook.aiohttp_server import SimpleRequestHandler  # noqa: E402

from tests.fakebotapi import ControlClient, FakeBotAPI  # noqa: E402

KEYBOARD = InlineKeyboardMarkup(
    inline_keyboard=[
        [
            InlineKeyboardButton(text="同意", callback_data="consent:yes"),
            InlineKeyboardButton(text="不同意", callback_data="consent:no"),
        ]
    ]
)


def make_bot(api: FakeBotAPI, *, token: str | None = None, timeout: float = 10.0) -> Bot:
    session = AiohttpSession(api=TelegramAPIServer.from_base(api.base_url), timeout=timeout)
    return Bot(token or api.token, session=session)


async def close_bot(bot: Bot) -> None:
    # AiohttpSession.close() sleeps 250 ms for TLS shutdown; nothing to wait for on plain HTTP.
    assert isinstance(bot.session, AiohttpSession)
    session = await bot.session.create_session()
    await session.close()


def text_of(api: FakeBotAPI, chat_id: int, message_id: int) -> str:
    """Current text of a message as the user sees it (after edits)."""
    return str((api.message(chat_id, message_id) or {}).get("text", ""))


@pytest.fixture
async def api() -> AsyncIterator[FakeBotAPI]:
    async with FakeBotAPI() as server:
        yield server


@pytest.fixture
async def bot(api: FakeBotAPI) -> AsyncIterator[Bot]:
    client = make_bot(api)
    yield client
    await close_bot(client)


class Receiver:
    """A tiny aiohttp webhook endpoint recording what Telegram (the fake) POSTs."""

    def __init__(self, statuses: list[int] | None = None, reply: dict[str, Any] | None = None):
        self.requests: list[tuple[dict[str, str], dict[str, Any]]] = []
        self.statuses = statuses or []
        self.reply = reply
        self.got = asyncio.Event()
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((dict(request.headers), await request.json()))
        self.got.set()
        status = self.statuses.pop(0) if self.statuses else 200
        if status == 200 and self.reply is not None:
            return web.json_response(self.reply)
        return web.json_response({}, status=status)

    async def __aenter__(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self.runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}/hook"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


# --------------------------------------------------------------------------- basics


async def test_get_me(bot: Bot, api: FakeBotAPI) -> None:
    me = await bot.get_me()
    assert me.is_bot is True
    assert me.id == api.bot_id == bot.id
    assert me.username == "anxin_test_bot"
    assert me.can_join_groups is True
    assert api.calls[-1].method == "getMe"


async def test_wrong_token_is_unauthorized(api: FakeBotAPI) -> None:
    intruder = make_bot(api, token="42:not-the-right-token")
    try:
        with pytest.raises(TelegramUnauthorizedError, match="Unauthorized"):
            await intruder.get_me()
    finally:
        await close_bot(intruder)


async def test_raw_http_json_form_and_unknown_method(api: FakeBotAPI) -> None:
    user = api.user(1001, started=True)
    base = f"{api.base_url}/bot{api.token}"
    async with ClientSession() as http:
        async with http.post(f"{base}/fooBar") as resp:
            assert resp.status == 404
            assert await resp.json() == {"ok": False, "error_code": 404, "description": "Not Found"}
        async with http.post(f"{base}/sendmessage", json={"chat_id": user.id, "text": "json"}) as r:
            body = await r.json()
            assert r.status == 200 and body["ok"] is True
            assert body["result"]["from"]["is_bot"] is True
        form = {
            "chat_id": str(user.id),
            "text": "123",
            "reply_markup": json.dumps(KEYBOARD.model_dump(exclude_none=True)),
        }
        async with http.post(f"{base}/sendMessage", data=form) as r:
            assert (await r.json())["result"]["text"] == "123"
    assert [m.text for m in api.messages_to(user.id)] == ["json", "123"]
    assert api.sent[-1].callback_data == ["consent:yes", "consent:no"]


# --------------------------------------------------------------------------- sending


async def test_send_message_with_inline_keyboard(bot: Bot, api: FakeBotAPI) -> None:
    user = api.user(2002, "小明")
    await user.send_text("你好")
    message = await bot.send_message(
        user.id, "<b>欢迎</b>来到安心", reply_markup=KEYBOARD, parse_mode="HTML"
    )
    assert message.text == "欢迎来到安心"
    assert message.entities and message.entities[0].type == "bold"
    assert message.reply_markup is not None
    assert message.reply_markup.model_dump() == KEYBOARD.model_dump()
    assert message.from_user is not None and message.from_user.is_bot
    [sent] = api.messages_to(user.id)
    assert sent.method == "sendMessage"
    assert sent.text == "<b>欢迎</b>来到安心" and sent.plain_text == "欢迎来到安心"
    assert sent.callback_data == ["consent:yes", "consent:no"]
    assert sent.message_id == message.message_id == 2  # the user's message was 1


async def test_callback_data_limit_is_in_bytes(bot: Bot, api: FakeBotAPI) -> None:
    user = api.user(3003, started=True)
    ok = InlineKeyboardMarkup(
        inline_keyboard=[[InlineKeyboardButton(text="a", callback_data="安" * 21)]]
    )
    await bot.send_message(user.id, "63 bytes", reply_markup=ok)
    too_long = InlineKeyboardMarkup(
        inline_keyboard=[[InlineKeyboardButton(text="b", callback_data="安" * 22)]]  # 66 bytes
    )
    with pytest.raises(TelegramBadRequest, match="BUTTON_DATA_INVALID"):
        await bot.send_message(user.id, "66 bytes", reply_markup=too_long)
    assert [m.text for m in api.sent] == ["63 bytes"]


async def test_text_length_and_parse_errors(bot: Bot, api: FakeBotAPI) -> None:
    user = api.user(3004, started=True)
    await bot.send_message(user.id, "字" * 4096)
    with pytest.raises(TelegramBadRequest, match="message is too long"):
        await bot.send_message(user.id, "字" * 4097)
    with pytest.raises(TelegramBadRequest, match="message text is empty"):
        await bot.send_message(user.id, "   ")
    with pytest.raises(TelegramBadRequest, match="can't parse entities"):
        await bot.send_message(user.id, "1 < 2", parse_mode="HTML")
    with pytest.raises(TelegramBadRequest, match=r"Character '\.' is reserved"):
        await bot.send_message(user.id, "谢谢.", parse_mode="MarkdownV2")
    assert len(api.sent) == 1


async def test_unknown_and_unstarted_chats(bot: Bot, api: FakeBotAPI) -> None:
    with pytest.raises(TelegramBadRequest, match="chat not found"):
        await bot.send_message(999_999, "hi")
    silent = api.user(4004)
    with pytest.raises(TelegramForbiddenError, match="can't initiate conversation"):
        await bot.send_message(silent.id, "hi")


async def test_send_document_is_recorded_and_downloadable(bot: Bot, api: FakeBotAPI) -> None:
    user = api.user(5005, started=True)
    payload = "随访报告\n".encode()
    message = await bot.send_document(
        user.id, BufferedInputFile(payload, filename="report.txt"), caption="报告"
    )
    [sent] = api.messages_to(user.id)
    assert sent.method == "sendDocument" and sent.text == "报告"
    assert sent.upload is not None
    assert sent.upload.filename == "report.txt" and sent.upload.data == payload
    assert message.document is not None and message.document.file_name == "report.txt"
    assert message.document.mime_type == "text/plain"
    downloaded = await bot.download(message.document.file_id)
    assert downloaded is not None and downloaded.read() == payload


async def test_edit_delete_and_callback_answers(bot: Bot, api: FakeBotAPI) -> None:
    user = api.user(6006, started=True)
    message = await bot.send_message(user.id, "问题 1", reply_markup=KEYBOARD)
    edited = await bot.edit_message_text("问题 2", chat_id=user.id, message_id=message.message_id)
    assert isinstance(edited, Message) and edited.edit_date is not None
    assert edited.reply_markup is None  # no reply_markup in the edit removes the keyboard
    with pytest.raises(TelegramBadRequest, match="message is not modified"):
        await bot.edit_message_text("问题 2", chat_id=user.id, message_id=message.message_id)
    await bot.edit_message_reply_markup(
        chat_id=user.id, message_id=message.message_id, reply_markup=KEYBOARD
    )
    update = await user.press(message, "consent:no")
    query_id = update["callback_query"]["id"]
    assert await bot.answer_callback_query(query_id, text="好的")
    with pytest.raises(TelegramBadRequest, match="query is too old"):
        await bot.answer_callback_query(query_id)
    assert await bot.delete_message(user.id, message.message_id)
    with pytest.raises(TelegramBadRequest, match="message to delete not found"):
        await bot.delete_message(user.id, message.message_id)
    assert [m.method for m in api.sent] == [
        "sendMessage",
        "editMessageText",
        "editMessageReplyMarkup",
    ]
    assert api.callback_answers[query_id]["text"] == "好的"
    with pytest.raises(ValueError, match="deleted"):
        await user.press(message, "consent:yes")


async def test_groups_members_invite_links_and_commands(bot: Bot, api: FakeBotAPI) -> None:
    group = api.group(-1001987654321, "安心互助小组")
    alice, bob = api.user(7001, "阿丽"), api.user(7002, "小波")
    await alice.send_text("大家好", chat=group)
    assert (await bot.get_chat_member(group.id, alice.id)).status == "member"
    assert (await bot.get_chat_member(group.id, bob.id)).status == "left"
    group.set_member(bob, "kicked")
    assert (await bot.get_chat_member(group.id, bob.id)).status == "kicked"
    group.set_member(bob, "administrator")
    assert (await bot.get_chat_member(group.id, bob.id)).status == "administrator"

    link = await bot.create_chat_invite_link(group.id, name="site_A12", member_limit=1)
    assert link.invite_link.startswith("https://t.me/+") and link.member_limit == 1
    assert link.creator.id == bot.id
    carol = api.user(7003, "小卡")
    await carol.join(group, invite_link=link.invite_link)
    assert (await bot.get_chat_member(group.id, carol.id)).status == "member"
    chat = await bot.get_chat(group.id)
    assert chat.type == "supergroup" and chat.title == "安心互助小组"
    await bot.send_chat_action(group.id, "typing")
    assert api.chat_actions == [(group.id, "typing")]

    await bot.set_my_commands([BotCommand(command="start", description="开始")], language_code="zh")
    assert [c.command for c in await bot.get_my_commands(language_code="zh")] == ["start"]
    assert await bot.get_my_commands() == []


# --------------------------------------------------------------------------- faults


async def test_429_is_retry_after(bot: Bot, api: FakeBotAPI) -> None:
    user = api.user(8001, started=True)
    api.fail_next("sendMessage", status=429, retry_after=3, times=2)
    for _ in range(2):
        with pytest.raises(TelegramRetryAfter) as caught:
            await bot.send_message(user.id, "hi")
        assert caught.value.retry_after == 3
        assert "retry after 3" in caught.value.message
    await bot.send_message(user.id, "hi")
    assert [c.status for c in api.calls] == [429, 429, 200]


async def test_500_403_timeout_and_disconnect(bot: Bot, api: FakeBotAPI) -> None:
    user = api.user(8002, started=True)
    api.fail_next("sendMessage", status=500)
    with pytest.raises(TelegramServerError):
        await bot.send_message(user.id, "hi")
    api.fail_next("sendMessage", status=502, raw_body="<html>502 Bad Gateway</html>")
    with pytest.raises(Exception, match="Failed to decode"):  # nginx HTML, as in production
        await bot.send_message(user.id, "hi")
    api.block(user.id)
    with pytest.raises(TelegramForbiddenError, match="bot was blocked by the user"):
        await bot.send_message(user.id, "hi")
    api.unblock(user.id)
    api.fail_next("sendMessage", status="disconnect")
    with pytest.raises(TelegramNetworkError):
        await bot.send_message(user.id, "hi")
    impatient = make_bot(api, timeout=0.2)
    try:
        api.fail_next("sendMessage", status="timeout")
        with pytest.raises(TelegramNetworkError, match="timeout"):
            await impatient.send_message(user.id, "hi")
    finally:
        await close_bot(impatient)
    assert api.sent == []
    kinds = [u["my_chat_member"]["new_chat_member"]["status"] for u in api.pending_updates]
    assert kinds == ["kicked", "member"]


async def test_delay_and_random_failures_are_reproducible(bot: Bot, api: FakeBotAPI) -> None:
    user = api.user(8003, started=True)
    api.delay_next("sendMessage", seconds=0.05)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await bot.send_message(user.id, "slow")
    assert loop.time() - started >= 0.05

    outcomes: list[list[int]] = []
    for _ in range(2):
        api.calls.clear()
        api.fail_rate(0.5, statuses=(500, 429), seed=7)
        for _ in range(12):
            try:
                await bot.send_message(user.id, "x")
            except (TelegramServerError, TelegramRetryAfter):
                pass
        outcomes.append([c.status for c in api.calls])
    assert outcomes[0] == outcomes[1]
    assert {500, 429, 200} <= set(outcomes[0])
    api.fail_rate(0)


async def test_flood_limits_with_injected_clock(bot: Bot, api: FakeBotAPI) -> None:
    now = [1000.0]
    api.enforce_limits(per_chat_per_second=1, per_chat_burst=3, clock=lambda: now[0])
    user = api.user(8004, started=True)
    for _ in range(3):
        await bot.send_message(user.id, "burst")
    with pytest.raises(TelegramRetryAfter) as caught:
        await bot.send_message(user.id, "one too many")
    assert caught.value.retry_after == 1
    now[0] += 1.0
    await bot.send_message(user.id, "after waiting")
    group = api.group(-1001000000777)
    api.enforce_limits(per_group_per_minute=2, clock=lambda: now[0])
    await bot.send_message(group.id, "1")
    await bot.send_message(group.id, "2")
    with pytest.raises(TelegramRetryAfter) as caught:
        await bot.send_message(group.id, "3")
    assert caught.value.retry_after == 60
    assert api.stats["rate_limited"] == 2
    assert api.stats["rate_limited:chat"] == 1 and api.stats["rate_limited:group"] == 1


# --------------------------------------------------------------------------- updates


async def test_get_updates_offset_limit_and_long_polling(bot: Bot, api: FakeBotAPI) -> None:
    user = api.user(9001)
    for text in ("一", "二", "三"):
        await user.send_text(text)
    first = await bot.get_updates(limit=2)
    assert [u.message.text for u in first if u.message] == ["一", "二"]
    again = await bot.get_updates()  # nothing confirmed yet: same updates again
    assert [u.update_id for u in again][:2] == [u.update_id for u in first]
    rest = await bot.get_updates(offset=first[-1].update_id + 1)
    assert [u.message.text for u in rest if u.message] == ["三"]
    assert await bot.get_updates(offset=rest[-1].update_id + 1) == []

    loop = asyncio.get_running_loop()
    started = loop.time()
    poll = asyncio.create_task(bot.get_updates(offset=rest[-1].update_id + 1, timeout=20))
    await api.wait_for(lambda: len(api.calls) == 5)
    await user.send_sticker("🌱")
    [update] = await poll
    assert update.message is not None and update.message.sticker is not None
    assert loop.time() - started < 1.0


async def test_every_update_kind_validates_in_aiogram(bot: Bot, api: FakeBotAPI) -> None:
    user = api.user(9002, "小红")
    group = api.group(-1001000000002, "组")
    await user.send_command("/start site_A12")
    await user.send_photo("照片")
    await user.send_voice(5)
    sent = await user.send_text("原文")
    await user.edit_text(sent["message"]["message_id"], "改过")
    await user.send_text("群里说话", chat=group)
    await api.channel_post("频道公告")
    await api.raw_update({"some_future_update": {"x": 1}})  # unknown kinds are tolerated
    updates = await bot.get_updates()
    assert [u.event_type for u in updates[:7]] == [
        "message",
        "message",
        "message",
        "message",
        "edited_message",
        "message",
        "channel_post",
    ]
    command = updates[0].message
    assert command is not None and command.entities is not None
    assert command.entities[0].type == "bot_command" and command.entities[0].length == 6
    assert updates[1].message and updates[1].message.photo and updates[1].message.caption == "照片"
    assert (
        updates[2].message and updates[2].message.voice and updates[2].message.voice.duration == 5
    )
    assert updates[4].edited_message and updates[4].edited_message.text == "改过"
    assert updates[3].message and updates[3].message.text == "原文"  # enqueued before the edit
    assert updates[5].message and updates[5].message.chat.type == "supergroup"
    assert updates[6].channel_post and updates[6].channel_post.sender_chat
    assert len(updates) == 8 and updates[7].model_extra == {"some_future_update": {"x": 1}}

    # A malformed update poisons the whole getUpdates batch in aiogram: worth knowing.
    await api.raw_update({"message": {"message_id": 1, "date": 0, "chat": {"id": 1}}})
    with pytest.raises(ClientDecodeError):
        await bot.get_updates(offset=updates[-1].update_id + 1)


async def test_allowed_updates_filters_new_updates(bot: Bot, api: FakeBotAPI) -> None:
    user = api.user(9003)
    await user.send_text("hi")
    message_update = (await bot.get_updates(allowed_updates=["message"]))[0]
    reply = await bot.send_message(user.id, "?", reply_markup=KEYBOARD)
    await user.press(reply, "consent:yes")
    assert await bot.get_updates(offset=message_update.update_id + 1) == []
    assert len(api.dropped_updates) == 1


async def test_polling_dispatcher_text_and_callback(api: FakeBotAPI) -> None:
    bot = make_bot(api)
    dp = Dispatcher()
    seen: Counter[int] = Counter()

    async def count(
        handler: Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]],
        event: TelegramObject,
        data: dict[str, Any],
    ) -> Any:
        assert isinstance(event, Update)
        seen[event.update_id] += 1
        return await handler(event, data)

    dp.update.outer_middleware(count)

    @dp.message(F.text)
    async def on_text(message: Message) -> None:
        await message.answer(f"收到：{message.text}", reply_markup=KEYBOARD)

    @dp.callback_query(F.data.startswith("consent:"))
    async def on_consent(query: CallbackQuery) -> None:
        await query.answer("谢谢")
        assert isinstance(query.message, Message)
        await query.message.edit_text(f"你选择了 {query.data}")

    polling = asyncio.create_task(
        dp.start_polling(bot, handle_signals=False, close_bot_session=False, polling_timeout=5)
    )
    try:
        user = api.user(10001, "小李")
        await user.send_text("我有点焦虑")
        [reply] = await api.wait_for_message(user.id)
        assert reply.text == "收到：我有点焦虑"
        await user.press(reply, "consent:yes")
        await api.wait_for(lambda: text_of(api, user.id, reply.message_id).startswith("你"))
        await api.wait_for(lambda: not api.pending_updates)  # offsets confirmed
        assert text_of(api, user.id, reply.message_id) == "你选择了 consent:yes"
        assert [a["text"] for a in api.callback_answers.values()] == ["谢谢"]
        [duplicated, other] = sorted(seen)
        assert seen == {duplicated: 1, other: 1}
        assert len(api.delivered) == len(set(api.delivered)) == 2

        await api.duplicate_update(duplicated)  # the very same update, delivered again
        await api.wait_for(lambda: seen[duplicated] == 2)
        await api.wait_for(lambda: not api.pending_updates)
        assert api.delivered.count(duplicated) == 2
    finally:
        await dp.stop_polling()
        await polling
        await close_bot(bot)


async def test_second_poller_conflicts_the_first(bot: Bot, api: FakeBotAPI) -> None:
    first = asyncio.create_task(bot.get_updates(timeout=20))
    await api.wait_for(lambda: len(api.calls) == 1)
    other = make_bot(api)
    try:
        second = asyncio.create_task(other.get_updates(timeout=20))
        with pytest.raises(TelegramConflictError, match="terminated by other getUpdates"):
            await first
        await api.user(11001).send_text("hi")
        assert len(await second) == 1
    finally:
        await close_bot(other)


# --------------------------------------------------------------------------- webhook


async def test_webhook_delivery_secret_retries_and_conflict(bot: Bot, api: FakeBotAPI) -> None:
    api.webhook_retry_delay = 0.01
    async with Receiver(statuses=[500]) as receiver:
        assert await bot.set_webhook(receiver.url, secret_token="anxin-s3cret")
        with pytest.raises(TelegramConflictError, match="webhook is active"):
            await bot.get_updates()
        update = await api.user(12001).send_text("webhook 你好")
        await api.wait_for(lambda: len(receiver.requests) == 2 and not api.pending_updates)
        for headers, body in receiver.requests:  # first answered 500, so retried
            assert headers["X-Telegram-Bot-Api-Secret-Token"] == "anxin-s3cret"
            assert body == update
        info = await bot.get_webhook_info()
        assert info.url == receiver.url and info.pending_update_count == 0
        assert info.last_error_message == "Wrong response from the webhook: 500"
        await api.duplicate_update(update["update_id"])
        await api.wait_for(lambda: len(receiver.requests) == 3)
        assert receiver.requests[2][1]["update_id"] == update["update_id"]
        assert await bot.delete_webhook()
    assert (await bot.get_webhook_info()).url == ""


async def test_webhook_reply_method_with_aiogram_handler(api: FakeBotAPI) -> None:
    bot = make_bot(api)
    dp = Dispatcher()

    @dp.message()
    async def echo(message: Message) -> Any:
        return message.answer(f"回声：{message.text}")  # answered in the webhook response

    app = web.Application()
    SimpleRequestHandler(dp, bot, secret_token="tok", handle_in_background=False).register(
        app, path="/webhook"
    )
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/webhook"
        await bot.set_webhook(url, secret_token="tok")
        user = api.user(12002)
        await user.send_text("在吗")
        [reply] = await api.wait_for_message(user.id)
        assert reply.text == "回声：在吗"
    finally:
        await runner.cleanup()
        await close_bot(bot)


# --------------------------------------------------------------------------- control API


async def test_control_api_in_process(bot: Bot, api: FakeBotAPI) -> None:
    async with ControlClient(api.base_url) as control:
        await control.send_command(13001, "/start site_A12", first_name="小周")
        [update] = await bot.get_updates()
        assert update.message and update.message.text == "/start site_A12"
        assert update.message.from_user and update.message.from_user.first_name == "小周"
        message = await bot.send_message(13001, "选择", reply_markup=KEYBOARD)
        [seen] = await control.wait_message(13001)
        assert seen["text"] == "选择" and seen["reply_markup"] == KEYBOARD.model_dump(
            exclude_none=True
        )
        await control.press(13001, message.message_id, "consent:yes")
        updates = await bot.get_updates(offset=update.update_id + 1)
        assert updates[0].callback_query and updates[0].callback_query.data == "consent:yes"
        await control.fail_next("sendMessage", 429, retry_after=5)
        with pytest.raises(TelegramRetryAfter):
            await bot.send_message(13001, "x")
        with pytest.raises(TimeoutError):
            await control.wait_message(13001, timeout=0.05)
        assert [m["text"] for m in await control.sent(13001)] == ["选择"]
        await control.reset()
        assert api.sent == [] and api.calls == []
        after = await control.send_text(13001, "重置之后")
        assert after["update_id"] > updates[-1].update_id  # ids never go backwards


async def test_subprocess_server(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.fakebotapi",
        "--port",
        "0",
        "--token",
        "123456:subprocess-token",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode()
        assert line.startswith("FAKEBOTAPI_READY ")
        base_url = line.split()[1]
        session = AiohttpSession(api=TelegramAPIServer.from_base(base_url))
        remote_bot = Bot("123456:subprocess-token", session=session)
        async with ControlClient(base_url) as control:
            await control.send_text(14001, "跨进程")
            [update] = await remote_bot.get_updates()
            assert update.message and update.message.text == "跨进程"
            await remote_bot.send_message(14001, "收到")
            [reply] = await control.wait_message(14001)
            assert reply["text"] == "收到"
        await close_bot(remote_bot)
    finally:
        proc.terminate()
        assert await proc.wait() == 0
