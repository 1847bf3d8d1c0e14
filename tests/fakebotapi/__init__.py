"""A fake Telegram Bot API server for tests (aiohttp.web), driven by the real aiogram client.

In-process use::

    async with FakeBotAPI() as api:
        bot = Bot(api.token, session=AiohttpSession(api=TelegramAPIServer.from_base(api.base_url)))
        user = api.user(id=100500, first_name="小明", language_code="zh-hans")
        await user.send_command("/start site_A12")
        [reply] = await api.wait_for_message(user.id)
        await user.press(reply, "consent:yes")

Behaviour (like Telegram): ``{base_url}/bot{token}/{method}`` accepts JSON, urlencoded and
multipart bodies (and query strings); method names are case-insensitive; a wrong token is
401 "Unauthorized", an unknown method 404 "Not Found". ``getUpdates`` has real offset
semantics (updates with ``update_id < offset`` are confirmed and forgotten, negative offsets
too), ``limit``, ``allowed_updates`` (filtered when an update is created, remembered between
calls) and long polling that returns as soon as an update arrives; a second concurrent
``getUpdates`` ends the first with 409, and with a webhook set ``getUpdates`` is 409.
Webhook updates are POSTed (``X-Telegram-Bot-Api-Secret-Token``) one at a time, retried on
non-2xx after ``webhook_retry_delay * attempt`` up to ``webhook_max_attempts``; a method in
the webhook response body (JSON or multipart, as aiogram sends) is executed. HTML
``parse_mode`` is parsed strictly (entities computed, length checked on the parsed text);
MarkdownV2 gets the reserved-character / unclosed-entity checks; inline keyboards are validated
(``callback_data`` 1-64 bytes, else 400 "BUTTON_DATA_INVALID"). With ``strict_chats`` sending
to an unknown chat is 400 "chat not found" and to a user who never wrote is 403.

Implemented methods: getMe, logOut, close, getUpdates, setWebhook, deleteWebhook,
getWebhookInfo, sendMessage, sendDocument, sendPhoto, sendVoice, sendSticker, sendAudio,
sendVideo, sendAnimation, editMessageText, editMessageReplyMarkup, editMessageCaption,
deleteMessage, deleteMessages, answerCallbackQuery, sendChatAction, getChat, getChatMember,
createChatInviteLink, revokeChatInviteLink, setMyCommands, getMyCommands, deleteMyCommands,
getFile (+ ``/file/bot{token}/{path}`` downloads), setMyDescription, setMyShortDescription,
setChatMenuButton, leaveChat, banChatMember, unbanChatMember, approveChatJoinRequest,
declineChatJoinRequest, pinChatMessage, unpinChatMessage, setMessageReaction. Other real Bot
API methods answer 404 "Not Found: method X is not implemented by FakeBotAPI".

Simulation: ``api.user(...)`` -> :class:`FakeUser` (``send_text``, ``send_command``,
``press``, ``send_sticker``, ``send_photo``, ``send_voice``, ``send_document``,
``edit_text``, ``join``, ``leave``; ``chat=`` a group to write there), ``api.group(...)``,
``api.channel(...)``, ``api.channel_post(text)``, ``api.raw_update(dict)``,
``api.duplicate_update(update_id)``, ``api.block(user)`` / ``api.unblock(user)`` (with
``my_chat_member`` updates), ``api.set_member(chat, user, status)``.

Observation: ``api.sent`` (:class:`SentMessage`: sends and edits), ``api.messages_to(chat)``,
``api.message(chat, message_id)`` (current state), ``api.calls`` (:class:`Call`),
``api.callback_answers``, ``api.invite_links``, ``api.chat_actions``, ``api.deleted``,
``api.commands``, ``api.delivered`` (update ids returned by getUpdates / webhook),
``api.stats`` (Counter), ``await api.wait_for(predicate)``, ``await api.wait_for_message(chat,
count=1, timeout=5.0, contains=None)`` (inbox semantics: consumes what it returns).

Faults: ``fail_next(method, status, times=, retry_after=, chat_id=, match=, raw_body=)``
(status int, ``"timeout"`` or ``"disconnect"``), ``delay_next(method, seconds)``,
``fail_rate(rate, statuses, seed=)``, ``clear_faults()``, ``enforce_limits(global_per_second=30,
per_chat_per_second=1, per_chat_burst=3, per_group_per_minute=20, clock=)``; 429s caused by
limits are counted in ``stats["rate_limited"]``.

Out of process: ``python -m tests.fakebotapi --port 0 --token T`` prints
``FAKEBOTAPI_READY http://127.0.0.1:PORT`` and serves until SIGTERM/SIGINT. The control API
(JSON; answers ``{"ok": true, "result": ...}``, 400 on a bad request, 408 when a wait times
out) is also mounted on in-process servers; :class:`ControlClient` wraps it:

=======  =========================================  =========================================
verb     path                                        body / query
=======  =========================================  =========================================
GET      /_control/state                             -> bot, pending/delivered updates, stats
POST     /_control/reset                             forget everything
POST     /_control/users                             {id, first_name, language_code, started}
POST     /_control/users/{user_id}/text              {text, chat_id?, reply_to?}
POST     /_control/users/{user_id}/command           {command: "/start site_A12", chat_id?}
POST     /_control/users/{user_id}/callback          {message_id, data, chat_id?, check?}
POST     /_control/users/{user_id}/sticker|photo|voice  {emoji? | caption? | duration?}
POST     /_control/users/{user_id}/document          {filename, data_base64, caption?}
POST     /_control/users/{user_id}/edit              {message_id, text, chat_id?}
POST     /_control/users/{user_id}/block|unblock     {}
POST     /_control/users/{user_id}/join|leave        {chat_id, invite_link?}
POST     /_control/groups                            {id, title, type?, bot_status?}
POST     /_control/members                           {chat_id, user_id, status}
POST     /_control/channel_post                      {text, chat_id?}
POST     /_control/updates                           a raw update object
POST     /_control/updates/{update_id}/duplicate     {}
GET      /_control/sent                              ?chat_id=&include_edits=1&since=N
GET      /_control/calls                             ?method=sendMessage
POST     /_control/wait_message                      {chat_id, count?, timeout?, contains?}
POST     /_control/fail                              {method, status, times?, retry_after?,
                                                     chat_id?, description?, raw_body?}
POST     /_control/delay                             {method, seconds, times?, chat_id?}
POST     /_control/fail_rate                         {rate, statuses?, seed?, methods?}
POST     /_control/clear_faults                      {}
POST     /_control/limits                            {enabled?, global_per_second?, ...}
GET      /_control/stats                             -> counters
=======  =========================================  =========================================

User ids in ``/users/{user_id}/...`` are created on first use (``first_name`` etc. may be
given in the same body).
"""

from .actors import FakeChannel, FakeGroup, FakeUser
from .control import ControlClient
from .models import ApiError, Call, SentMessage, Upload
from .server import DEFAULT_TOKEN, FakeBotAPI

__all__ = [
    "DEFAULT_TOKEN",
    "ApiError",
    "Call",
    "ControlClient",
    "FakeBotAPI",
    "FakeChannel",
    "FakeGroup",
    "FakeUser",
    "SentMessage",
    "Upload",
]
