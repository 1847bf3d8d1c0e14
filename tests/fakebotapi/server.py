"""The fake Telegram Bot API server (see the package docstring for the overview)."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
import json
import random
import re
import secrets
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Self

from aiohttp import ClientSession, ClientTimeout, MultipartReader, web

from .actors import FakeChannel, FakeGroup, FakeUser
from .limits import LimitConfig, RateLimiter
from .markup import markup_for_message, render, validate_reply_markup
from .models import (
    DEFAULT_ALLOWED_UPDATES,
    MEMBER_STATUSES,
    ApiError,
    Call,
    FileRecord,
    JSONDict,
    SentMessage,
    Upload,
    bad_request,
    canonical,
    chat_instance_for,
    chat_member_json,
    error_for_status,
    make_file_id,
    update_type,
)

DEFAULT_TOKEN: Final = "7012345678:AAFakeBotApiAnxinTestToken-0123456789ab"
FailStatus = int | str  # an HTTP status, "timeout" (hang) or "disconnect" (drop connection)
MethodImpl = Callable[[JSONDict, dict[str, Upload]], Awaitable[Any]]

#: Parameters that are always strings: never JSON-decoded when they arrive as form fields.
_STRING_PARAMS: Final = frozenset(
    {
        "text",
        "caption",
        "parse_mode",
        "url",
        "secret_token",
        "callback_query_id",
        "inline_message_id",
        "action",
        "language_code",
        "name",
        "description",
        "short_description",
        "ip_address",
        "business_connection_id",
        "message_effect_id",
        "emoji",
        "title",
        "document",
        "photo",
        "voice",
        "sticker",
        "audio",
        "video",
        "animation",
        "thumbnail",
        "file_id",
        "invite_link",
        "question",
    }
)
#: Methods subject to flood limits (``enforce_limits``).
_RATE_LIMITED: Final = frozenset(
    {
        "sendMessage",
        "sendDocument",
        "sendPhoto",
        "sendVoice",
        "sendSticker",
        "sendAudio",
        "sendVideo",
        "sendAnimation",
        "sendMediaGroup",
        "copyMessage",
        "forwardMessage",
    }
)
_MEDIA_KINDS: Final = ("document", "photo", "voice", "sticker", "audio", "video", "animation")
_CHAT_ACTIONS: Final = frozenset(
    {
        "typing",
        "upload_photo",
        "record_video",
        "upload_video",
        "record_voice",
        "upload_voice",
        "upload_document",
        "choose_sticker",
        "find_location",
        "record_video_note",
        "upload_video_note",
    }
)
_COMMAND_RE: Final = re.compile(r"^[a-z0-9_]{1,32}$")
_SECRET_RE: Final = re.compile(r"^[A-Za-z0-9_-]{1,256}$")
_NOT_MODIFIED: Final = (
    "message is not modified: specified new message content and reply markup are exactly "
    "the same as a current content and reply markup of the message"
)
_PNG_1PX: Final = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000100e221bc330000000049454e44ae426082"
)


@dataclass
class FailRule:
    method: str  # canonical method name or "*"
    status: FailStatus
    times: int | None  # None: forever
    retry_after: int | None = None
    description: str | None = None
    chat_id: int | None = None
    match: Callable[[JSONDict], bool] | None = None
    raw_body: str | None = None
    hang: float = 3600.0

    def matches(self, call: Call) -> bool:
        if self.times is not None and self.times <= 0:
            return False
        if self.method != "*" and self.method.lower() != call.method.lower():
            return False
        if self.chat_id is not None and call.params.get("chat_id") != self.chat_id:
            return False
        return self.match is None or bool(self.match(call.params))


@dataclass
class DelayRule:
    method: str
    seconds: float
    times: int | None
    chat_id: int | None = None

    def matches(self, call: Call) -> bool:
        if self.times is not None and self.times <= 0:
            return False
        if self.chat_id is not None and call.params.get("chat_id") != self.chat_id:
            return False
        return self.method == "*" or self.method.lower() == call.method.lower()


@dataclass
class RandomFailures:
    rate: float
    statuses: tuple[FailStatus, ...]
    rng: random.Random
    methods: frozenset[str] | None
    exclude: frozenset[str]
    retry_after: int
    hang: float

    def pick(self, method: str) -> FailStatus | None:
        if method in self.exclude or (self.methods is not None and method not in self.methods):
            return None
        if self.rng.random() >= self.rate:
            return None
        return self.rng.choice(self.statuses)


@dataclass
class _Pending:
    update: JSONDict
    protected: bool = False  # a duplicate: not confirmable by offset until delivered once
    delivered: bool = False
    attempts: int = 0  # webhook delivery attempts

    @property
    def update_id(self) -> int:
        return int(self.update["update_id"])


@dataclass
class Webhook:
    url: str
    secret_token: str | None
    max_connections: int = 40
    allowed_updates: list[str] | None = None
    last_error_date: int | None = None
    last_error_message: str | None = None
    deliveries: list[tuple[int, int | str]] = field(default_factory=list)


class _Disconnect(Exception):
    """Internal: drop the client connection without answering."""


class FakeBotAPI:
    """An in-process Telegram Bot API server for tests (aiohttp.web on 127.0.0.1).

    ``clock`` (monotonic seconds) drives flood limits and timestamps in records; ``wall_clock``
    (unix seconds) drives ``date`` fields. With ``strict_chats`` (default) sending to an unknown
    chat is 400 "chat not found" and to a user who never wrote to the bot is 403, like Telegram.
    """

    def __init__(
        self,
        token: str = DEFAULT_TOKEN,
        *,
        username: str = "anxin_test_bot",
        first_name: str = "安心 Test",
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        strict_chats: bool = True,
        first_update_id: int = 734_100_001,
        webhook_retry_delay: float = 0.05,
        webhook_max_attempts: int = 5,
        seed: int = 0,
    ) -> None:
        bot_id, sep, _ = token.partition(":")
        if not sep or not bot_id.isdigit():
            raise ValueError("token must look like '<bot id>:<secret>'")
        self.token = token
        self.host = host
        self.port = port
        self.clock = clock
        self.wall_clock = wall_clock
        self.strict_chats = strict_chats
        self.webhook_retry_delay = webhook_retry_delay
        self.webhook_max_attempts = webhook_max_attempts
        self.bot_id = int(bot_id)
        self.bot_user: JSONDict = {
            "id": self.bot_id,
            "is_bot": True,
            "first_name": first_name,
            "username": username,
        }
        self.me: JSONDict = {
            **self.bot_user,
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
            "can_connect_to_business": False,
            "has_main_web_app": False,
        }
        self._seed = seed
        self._runner: web.AppRunner | None = None
        self._http: ClientSession | None = None
        self._webhook_task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self._stopping = asyncio.Event()
        self._methods: dict[str, tuple[str, MethodImpl]] = {}
        for attr in dir(self):
            if attr.startswith("_m_"):
                name = attr[3:]
                self._methods[name.lower()] = (name, getattr(self, attr))
        self._known_methods = _aiogram_method_names()
        # Kept across reset(): a bot that keeps polling must not see ids go backwards (its
        # offset would silently confirm the new updates) nor its pending poll end in a 409.
        self._update_ids = itertools.count(first_update_id)
        self._poll_generation = 0
        self.reset()

    # ------------------------------------------------------------------ lifecycle

    def reset(self) -> None:
        """Forget all state (users, chats, updates, records, faults, limits, webhook).

        Update ids keep increasing across resets, so a bot that keeps polling is unaffected.
        """
        self.calls: list[Call] = []
        self.sent: list[SentMessage] = []
        self.deleted: list[tuple[int, int]] = []
        self.callback_answers: dict[str, JSONDict] = {}
        self.invite_links: list[JSONDict] = []
        self.chat_actions: list[tuple[int, str]] = []
        self.commands: dict[tuple[str, str], list[JSONDict]] = {}
        self.files: dict[str, FileRecord] = {}
        self.delivered: list[int] = []  # update ids returned by getUpdates, in order
        self.dropped_updates: list[JSONDict] = []  # filtered out by allowed_updates
        self.stats: Counter[str] = Counter()
        self.webhook: Webhook | None = None
        self._file_serial = itertools.count(1)
        self._query_serial = itertools.count(1)
        self._user_ids = itertools.count(5_210_000_001)
        self._group_ids = itertools.count(1)
        self._pending: list[_Pending] = []
        self._history: dict[int, JSONDict] = {}
        self._allowed: frozenset[str] = DEFAULT_ALLOWED_UPDATES
        self._messages: dict[tuple[int, int], JSONDict] = {}
        self._message_ids: dict[int, itertools.count[int]] = {}
        self._chats: dict[int, JSONDict] = {}
        self._users: dict[int, FakeUser] = {}
        self._groups: dict[int, FakeGroup] = {}
        self._members: dict[tuple[int, int], str] = {}
        self._blocked: set[int] = set()
        self._queries: dict[str, JSONDict] = {}
        self._inbox: dict[int, int] = {}
        self._fail_rules: list[FailRule] = []
        self._delay_rules: list[DelayRule] = []
        self._random: RandomFailures | None = None
        self._limiter: RateLimiter | None = None
        self._notify()

    async def start(self) -> Self:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/bot{token}/{method}", self._handle_api)
        app.router.add_get("/file/bot{token}/{path:.+}", self._handle_file)
        from .control import add_control_routes

        add_control_routes(app, self)
        self._stopping.clear()
        self._runner = web.AppRunner(
            app, handler_cancellation=True, shutdown_timeout=1.0, access_log=None
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        self._http = ClientSession(timeout=ClientTimeout(total=10))
        return self

    async def stop(self) -> None:
        self._stopping.set()
        self._notify()
        if self._webhook_task is not None:
            self._webhook_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._webhook_task
            self._webhook_task = None
        if self._http is not None:
            await self._http.close()
            self._http = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # ------------------------------------------------------------------ notification & waits

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait_change(self, deadline: float | None) -> bool:
        """Wait for any state change until ``deadline`` (loop time); False on timeout/stop."""
        event = self._changed
        loop = asyncio.get_running_loop()
        remaining = None if deadline is None else deadline - loop.time()
        if remaining is not None and remaining <= 0:
            return False
        try:
            await asyncio.wait_for(event.wait(), remaining)
        except TimeoutError:
            return False
        return not self._stopping.is_set()

    async def wait_for(
        self,
        predicate: Callable[[], Any],
        timeout: float = 5.0,  # noqa: ASYNC109
    ) -> Any:
        """Wait until ``predicate()`` is truthy (re-checked on every state change); return it."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            result = predicate()
            if result:
                return result
            if not await self._wait_change(deadline):
                result = predicate()
                if result:
                    return result
                raise TimeoutError(
                    f"condition not met within {timeout}s; last calls: {self._recent_calls()}"
                )

    def _recent_calls(self) -> str:
        return ", ".join(f"{c.method}->{c.status}" for c in self.calls[-8:]) or "none"

    def messages_to(self, chat_id: Any, *, include_edits: bool = False) -> list[SentMessage]:
        """Bot outputs to ``chat_id`` (a user/group handle or id), oldest first."""
        from .actors import chat_id_of

        cid = chat_id_of(chat_id)
        return [m for m in self.sent if m.chat_id == cid and (include_edits or not m.is_edit)]

    async def wait_for_message(
        self,
        chat_id: Any,
        count: int = 1,
        timeout: float = 5.0,  # noqa: ASYNC109
        contains: str | None = None,
    ) -> list[SentMessage]:
        """Wait for the next ``count`` new messages to ``chat_id`` (containing ``contains``).

        Inbox semantics: each chat has a read cursor; returned messages (and the non-matching
        ones before them) are consumed, so the next call waits for newer ones.
        """
        from .actors import chat_id_of

        cid = chat_id_of(chat_id)

        def ready() -> list[SentMessage] | None:
            start = self._inbox.get(cid, 0)
            pool = self.messages_to(cid)[start:]
            found: list[SentMessage] = []
            for index, message in enumerate(pool):
                if (
                    contains is None
                    or contains in (message.plain_text or "")
                    or contains in (message.text or "")
                ):
                    found.append(message)
                    if len(found) == count:
                        self._inbox[cid] = start + index + 1
                        return found
            return None

        try:
            result: list[SentMessage] = await self.wait_for(ready, timeout)
        except TimeoutError:
            seen = [m.plain_text for m in self.messages_to(cid)]
            raise TimeoutError(
                f"expected {count} message(s) to {cid}"
                + (f" containing {contains!r}" if contains else "")
                + f" within {timeout}s; messages so far: {seen}; calls: {self._recent_calls()}"
            ) from None
        return result

    def message(self, chat_id: Any, message_id: int) -> JSONDict | None:
        """Current state of a message (after edits), or None if deleted / unknown."""
        from .actors import chat_id_of

        return self._messages.get((chat_id_of(chat_id), message_id))

    # ------------------------------------------------------------------ fault injection

    def fail_next(
        self,
        method: str = "*",
        status: FailStatus = 500,
        *,
        times: int | None = 1,
        retry_after: int | None = None,
        description: str | None = None,
        chat_id: int | None = None,
        match: Callable[[JSONDict], bool] | None = None,
        raw_body: str | None = None,
        hang: float = 3600.0,
    ) -> FailRule:
        """Fail the next ``times`` calls of ``method`` (``"*"``: any; ``times=None``: always).

        ``status`` is an HTTP status (429 gets ``retry_after``, default 1), ``"timeout"`` (no
        answer for ``hang`` seconds, then the call proceeds) or ``"disconnect"`` (the connection
        is dropped without an answer). ``raw_body`` replaces the JSON error body (e.g. nginx HTML
        for a 502).
        """
        if status == 429 and retry_after is None:
            retry_after = 1
        rule = FailRule(
            method, status, times, retry_after, description, chat_id, match, raw_body, hang
        )
        self._fail_rules.append(rule)
        return rule

    def delay_next(
        self,
        method: str = "*",
        seconds: float = 1.0,
        *,
        times: int | None = 1,
        chat_id: int | None = None,
    ) -> DelayRule:
        """Answer the next ``times`` calls of ``method`` ``seconds`` late (real time)."""
        rule = DelayRule(method, seconds, times, chat_id)
        self._delay_rules.append(rule)
        return rule

    def fail_rate(
        self,
        rate: float,
        statuses: Iterable[FailStatus] = (500, 429, "timeout"),
        *,
        seed: int | None = None,
        methods: Iterable[str] | None = None,
        exclude: Iterable[str] = ("getUpdates", "getMe"),
        retry_after: int = 1,
        hang: float = 3600.0,
    ) -> None:
        """Fail a random ``rate`` of calls (reproducible with ``seed``); ``rate=0`` disables."""
        if rate <= 0:
            self._random = None
            return
        self._random = RandomFailures(
            rate=rate,
            statuses=tuple(statuses),
            rng=random.Random(self._seed if seed is None else seed),
            methods=frozenset(methods) if methods is not None else None,
            exclude=frozenset(exclude),
            retry_after=retry_after,
            hang=hang,
        )

    def clear_faults(self) -> None:
        self._fail_rules.clear()
        self._delay_rules.clear()
        self._random = None

    def enforce_limits(
        self,
        enabled: bool = True,
        *,
        global_per_second: float = 30,
        per_chat_per_second: float = 1,
        per_chat_burst: int = 3,
        per_group_per_minute: int = 20,
        clock: Callable[[], float] | None = None,
    ) -> None:
        """Answer 429 (with retry_after) when Telegram's flood limits are exceeded.

        Counts go to ``stats["rate_limited"]`` (and ``rate_limited:global|chat|group``).
        """
        if not enabled:
            self._limiter = None
            return
        config = LimitConfig(
            global_per_second, per_chat_per_second, per_chat_burst, per_group_per_minute
        )
        self._limiter = RateLimiter(config, clock or self.clock)

    def block(self, user_id: Any, *, notify: bool = True) -> None:
        """The user blocks the bot: sends to them get 403; a ``my_chat_member`` update."""
        from .actors import chat_id_of

        uid = chat_id_of(user_id)
        if uid in self._blocked:
            return
        self._blocked.add(uid)
        if notify and uid in self._users:
            self._my_chat_member(uid, "member", "kicked")
        self._notify()

    def unblock(self, user_id: Any, *, notify: bool = True) -> None:
        from .actors import chat_id_of

        uid = chat_id_of(user_id)
        if uid not in self._blocked:
            return
        self._blocked.discard(uid)
        if notify and uid in self._users:
            self._my_chat_member(uid, "kicked", "member")
        self._notify()

    def _my_chat_member(self, uid: int, old: str, new: str) -> None:
        user = self._users[uid]
        self._enqueue(
            {
                "my_chat_member": {
                    "chat": self._ensure_private_chat(user),
                    "from": user.json,
                    "date": self._now(),
                    "old_chat_member": chat_member_json(self.bot_user, old),
                    "new_chat_member": chat_member_json(self.bot_user, new, until_date=0),
                }
            }
        )

    # ------------------------------------------------------------------ actors

    def user(
        self,
        id: int | None = None,
        first_name: str = "小安",
        *,
        last_name: str | None = None,
        username: str | None = None,
        language_code: str | None = "zh-hans",
        is_premium: bool = False,
        started: bool = False,
    ) -> FakeUser:
        """A user handle (the same handle for the same id). ``started``: the private chat with
        the bot already exists (so the bot may write first)."""
        uid = id if id is not None else next(self._user_ids)
        if uid in self._users:
            return self._users[uid]
        handle = FakeUser(
            self,
            uid,
            first_name,
            last_name=last_name,
            username=username,
            language_code=language_code,
            is_premium=is_premium,
        )
        self._users[uid] = handle
        if started:
            self._ensure_private_chat(handle)
        return handle

    def group(
        self,
        id: int | None = None,
        title: str = "安心互助小组",
        *,
        type: str | None = None,
        username: str | None = None,
        bot_status: str = "administrator",
    ) -> FakeGroup:
        """A group (``-N``) or supergroup (``-100…``) with the bot in it."""
        gid = id if id is not None else -1_001_900_000_000 - next(self._group_ids)
        if gid in self._groups:
            return self._groups[gid]
        kind = type or ("supergroup" if str(gid).startswith("-100") else "group")
        chat: JSONDict = {"id": gid, "type": kind, "title": title}
        if username:
            chat["username"] = username
        handle = FakeChannel(self, chat) if kind == "channel" else FakeGroup(self, chat)
        self._chats[gid] = chat
        self._groups[gid] = handle
        self._members[(gid, self.bot_id)] = bot_status
        return handle

    def channel(
        self,
        id: int | None = None,
        title: str = "安心频道",
        *,
        username: str | None = None,
        bot_status: str = "administrator",
    ) -> FakeChannel:
        handle = self.group(id, title, type="channel", username=username, bot_status=bot_status)
        assert isinstance(handle, FakeChannel)
        return handle

    def set_member(self, chat_id: Any, user: FakeUser | int, status: str) -> None:
        """Configure getChatMember's answer for (chat, user)."""
        from .actors import chat_id_of

        if status not in MEMBER_STATUSES:
            raise ValueError(f"status must be one of {MEMBER_STATUSES}")
        uid = user.id if isinstance(user, FakeUser) else user
        self._members[(chat_id_of(chat_id), uid)] = status

    async def channel_post(self, text: str, *, chat: Any = None) -> JSONDict:
        """A ``channel_post`` update in ``chat`` (a default channel is created if None)."""
        from .actors import chat_id_of

        channel = self.channel() if chat is None else self._groups[chat_id_of(chat)]
        message = self._store_message(
            channel.id, {"sender_chat": channel.json, "chat": channel.json, "text": text}
        )
        return self._enqueue({"channel_post": message})

    async def raw_update(self, update: JSONDict) -> JSONDict:
        """Enqueue any update dict as-is (``update_id`` assigned if missing); not filtered."""
        update = dict(update)
        if "update_id" not in update:
            update = {"update_id": next(self._update_ids), **update}
        return self._enqueue(update, raw=True)

    async def duplicate_update(self, update_id: int) -> JSONDict:
        """Enqueue an already-sent update again, unchanged (same ``update_id``)."""
        update = self._history.get(update_id)
        if update is None:
            raise KeyError(f"no update {update_id} was ever enqueued")
        return self._enqueue(update, raw=True, duplicate=True)

    # -- internal actor plumbing (called by the handles)

    def _now(self) -> int:
        return int(self.wall_clock())

    def _ensure_private_chat(self, user: FakeUser) -> JSONDict:
        chat = self._chats.get(user.id)
        if chat is None:
            chat = {"id": user.id, "type": "private", "first_name": user.first_name}
            if user.last_name:
                chat["last_name"] = user.last_name
            if user.username:
                chat["username"] = user.username
            self._chats[user.id] = chat
        return chat

    def _user_chat(self, user: FakeUser, chat_id: int) -> JSONDict:
        if chat_id == user.id:
            if user.id in self._blocked:
                self.unblock(user.id)  # writing to a blocked bot means "Restart"
            return self._ensure_private_chat(user)
        chat = self._chats.get(chat_id)
        if chat is None or chat["type"] == "private":
            raise ValueError(f"user {user.id} can't write into chat {chat_id}; create it first")
        if self._members.get((chat_id, user.id), "left") in ("left", "kicked"):
            self._members[(chat_id, user.id)] = "member"
        return chat

    def _next_message_id(self, chat_id: int) -> int:
        counter = self._message_ids.setdefault(chat_id, itertools.count(1))
        return next(counter)

    def _store_message(self, chat_id: int, body: JSONDict) -> JSONDict:
        message: JSONDict = {"message_id": self._next_message_id(chat_id), "date": self._now()}
        message.update(body)
        self._messages[(chat_id, message["message_id"])] = message
        return message

    def user_message(
        self, user: FakeUser, chat_id: int, content: JSONDict, *, reply_to: Any = None
    ) -> JSONDict:
        from .actors import message_ref

        chat = self._user_chat(user, chat_id)
        body: JSONDict = {"from": user.json, "chat": chat}
        if reply_to is not None:
            ref = self._messages.get(message_ref(reply_to, chat_id))
            if ref is not None:
                body["reply_to_message"] = {k: v for k, v in ref.items() if k != "reply_to_message"}
        body.update(content)
        message = self._store_message(chat["id"], body)
        return self._enqueue({"message": message})

    def user_media(
        self,
        user: FakeUser,
        chat_id: int,
        kind: str,
        *,
        caption: str | None = None,
        data: bytes | None = None,
        emoji: str = "😊",
        duration: int = 3,
        filename: str = "file.txt",
    ) -> JSONDict:
        blob = data if data is not None else (_PNG_1PX if kind in ("photo", "sticker") else b"OggS")
        record = self._new_file(kind, blob, filename if kind == "document" else None)
        base = {"file_id": record.file_id, "file_unique_id": record.file_unique_id}
        content: JSONDict
        if kind == "photo":
            sizes = []
            for index, side in enumerate((90, 320, 800)):
                file_id, unique = make_file_id(f"photo-{index}", next(self._file_serial))
                sizes.append(
                    {
                        "file_id": file_id,
                        "file_unique_id": unique,
                        "width": side,
                        "height": side,
                        "file_size": len(blob),
                    }
                )
            sizes[-1].update(base)
            content = {"photo": sizes}
        elif kind == "sticker":
            content = {
                "sticker": {
                    **base,
                    "type": "regular",
                    "width": 512,
                    "height": 512,
                    "is_animated": False,
                    "is_video": False,
                    "emoji": emoji,
                    "set_name": "AnxinTestStickers",
                    "file_size": len(blob),
                }
            }
        elif kind == "voice":
            content = {
                "voice": {
                    **base,
                    "duration": duration,
                    "mime_type": "audio/ogg",
                    "file_size": len(blob),
                }
            }
        else:
            content = {
                "document": {
                    **base,
                    "file_name": filename,
                    "mime_type": _guess_mime(filename),
                    "file_size": len(blob),
                }
            }
        if caption:
            content["caption"] = caption
        return self.user_message(user, chat_id, content)

    def user_edit(self, user: FakeUser, chat_id: int, message_id: int, text: str) -> JSONDict:
        message = self._messages.get((chat_id, message_id))
        if message is None or message.get("from", {}).get("id") != user.id:
            raise ValueError(f"user {user.id} has no message {message_id} in chat {chat_id}")
        message.pop("entities", None)
        message.update(text=text, edit_date=self._now())
        return self._enqueue({"edited_message": dict(message)})

    def user_callback(
        self, user: FakeUser, chat_id: int, message_id: int, data: str, *, check: bool
    ) -> JSONDict:
        message = self._messages.get((chat_id, message_id))
        if message is None:
            raise ValueError(f"no message {message_id} in chat {chat_id} (deleted?)")
        if message.get("from", {}).get("id") != self.bot_id:
            raise ValueError(f"message {message_id} in chat {chat_id} is not from the bot")
        if check:
            rows = (message.get("reply_markup") or {}).get("inline_keyboard") or []
            available = [b.get("callback_data") for row in rows for b in row]
            if data not in available:
                raise ValueError(
                    f"message {message_id} has no button with callback_data {data!r}; "
                    f"available: {available} (pass check=False to forge one)"
                )
        query_id = str(self.bot_id * 1000 + next(self._query_serial) + 4_000_000_000_000_000)
        query: JSONDict = {
            "id": query_id,
            "from": user.json,
            "message": dict(message),
            "chat_instance": chat_instance_for(chat_id, self.bot_id),
            "data": data,
        }
        self._queries[query_id] = query
        return self._enqueue({"callback_query": query})

    def user_join(self, user: FakeUser, chat_id: int, *, invite_link: str | None) -> JSONDict:
        chat = self._chats[chat_id]
        old = self._members.get((chat_id, user.id), "left")
        self._members[(chat_id, user.id)] = "member"
        change: JSONDict = {
            "chat": chat,
            "from": user.json,
            "date": self._now(),
            "old_chat_member": chat_member_json(user.json, old),
            "new_chat_member": chat_member_json(user.json, "member"),
        }
        if invite_link is not None:
            link = next((i for i in self.invite_links if i["invite_link"] == invite_link), None)
            if link is None:
                raise ValueError(f"unknown invite link {invite_link!r}")
            change["invite_link"] = link
        if chat["type"] != "channel":
            self._store_and_enqueue_service(chat, user, {"new_chat_members": [user.json]})
        return self._enqueue({"chat_member": change})

    def user_leave(self, user: FakeUser, chat_id: int) -> JSONDict:
        chat = self._chats[chat_id]
        old = self._members.get((chat_id, user.id), "member")
        self._members[(chat_id, user.id)] = "left"
        if chat["type"] != "channel":
            self._store_and_enqueue_service(chat, user, {"left_chat_member": user.json})
        return self._enqueue(
            {
                "chat_member": {
                    "chat": chat,
                    "from": user.json,
                    "date": self._now(),
                    "old_chat_member": chat_member_json(user.json, old),
                    "new_chat_member": chat_member_json(user.json, "left"),
                }
            }
        )

    def _store_and_enqueue_service(self, chat: JSONDict, user: FakeUser, body: JSONDict) -> None:
        message = self._store_message(chat["id"], {"from": user.json, "chat": chat, **body})
        self._enqueue({"message": message})

    def _new_file(self, kind: str, data: bytes, filename: str | None = None) -> FileRecord:
        file_id, unique = make_file_id(kind, next(self._file_serial))
        folder = {"photo": "photos", "voice": "voice", "sticker": "stickers"}.get(kind, "documents")
        suffix = {"photo": ".jpg", "voice": ".oga", "sticker": ".webp"}.get(kind, "")
        name = filename or f"file_{len(self.files)}{suffix}"
        record = FileRecord(file_id, unique, data, f"{folder}/{name}")
        self.files[file_id] = record
        return record

    # ------------------------------------------------------------------ update queue

    def _enqueue(self, update: JSONDict, *, raw: bool = False, duplicate: bool = False) -> JSONDict:
        update = copy.deepcopy(update)  # later edits must not change what was enqueued
        if "update_id" not in update:
            update = {"update_id": next(self._update_ids), **update}
        kind = update_type(update)
        allowed = self._allowed
        if self.webhook is not None and self.webhook.allowed_updates:
            allowed = frozenset(self.webhook.allowed_updates)
        if not raw and kind is not None and kind not in allowed:
            self.dropped_updates.append(update)
            self.stats["dropped_updates"] += 1
            return update
        self._history.setdefault(update["update_id"], update)
        self._pending.append(_Pending(update, protected=duplicate))
        self._notify()
        return update

    @property
    def pending_updates(self) -> list[JSONDict]:
        return [p.update for p in self._pending]

    def _confirm(self, offset: int) -> None:
        if offset < 0:
            self._pending = (
                self._pending[offset:] if -offset < len(self._pending) else self._pending
            )
            return
        last = -1
        for index, pending in enumerate(self._pending):
            if pending.delivered and pending.update_id == offset - 1:
                last = index
        kept = [
            p
            for index, p in enumerate(self._pending)
            if index > last and not (p.update_id < offset and (p.delivered or not p.protected))
        ]
        if len(kept) != len(self._pending):
            self._pending = kept
            self._notify()

    # ------------------------------------------------------------------ HTTP plumbing

    async def _handle_file(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["token"] != self.token:
            return _json_response(error_for_status(401).payload(), 401)
        path = request.match_info["path"]
        for record in self.files.values():
            if record.file_path == path:
                return web.Response(body=record.data)
        return _json_response(error_for_status(404).payload(), 404)

    async def _handle_api(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["token"] != self.token:
            self.stats["status_401"] += 1
            return _json_response(error_for_status(401).payload(), 401)
        name = request.match_info["method"]
        try:
            params, files = await _read_params(request)
        except ApiError as error:
            return _json_response(error.payload(), error.status)
        try:
            return await self._dispatch(name, params, files, request)
        except _Disconnect:
            if request.transport is not None:
                request.transport.close()
            raise asyncio.CancelledError from None

    async def _dispatch(
        self,
        name: str,
        params: JSONDict,
        files: dict[str, Upload],
        request: web.Request | None,
    ) -> web.StreamResponse:
        entry = self._methods.get(name.lower())
        canonical_name = entry[0] if entry else self._known_methods.get(name.lower(), name)
        call = Call(canonical_name, params, self.clock(), files=files)
        self.calls.append(call)
        self.stats["calls"] += 1
        self._notify()
        try:
            if entry is None:
                if name.lower() in self._known_methods:
                    raise ApiError(
                        404, f"Not Found: method {canonical_name} is not implemented by FakeBotAPI"
                    )
                raise ApiError(404, "Not Found")
            await self._apply_faults(call)
            result = await entry[1](params, files)
        except ApiError as error:
            call.status, call.description = error.status, error.description
            self.stats[f"status_{error.status}"] += 1
            self._notify()
            if error.raw_body is not None:
                return web.Response(
                    status=error.status, text=error.raw_body, content_type="text/html"
                )
            return _json_response(error.payload(), error.status)
        self._notify()
        body: JSONDict = {"ok": True, "result": result}
        if isinstance(result, _Described):
            body = {"ok": True, "result": result.value, "description": result.description}
        return _json_response(body, 200)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _apply_faults(self, call: Call) -> None:
        for delay in self._delay_rules:
            if delay.matches(call):
                if delay.times is not None:
                    delay.times -= 1
                self.stats["delayed"] += 1
                await self._sleep(delay.seconds)
                break
        for rule in self._fail_rules:
            if rule.matches(call):
                if rule.times is not None:
                    rule.times -= 1
                self.stats["injected"] += 1
                await self._fail(
                    rule.status, rule.retry_after, rule.description, rule.raw_body, rule.hang
                )
                return
        if self._random is not None:
            status = self._random.pick(call.method)
            if status is not None:
                self.stats["injected"] += 1
                self.stats["injected_random"] += 1
                await self._fail(status, self._random.retry_after, None, None, self._random.hang)
                return
        if self._limiter is not None and call.method in _RATE_LIMITED:
            chat_id = call.params.get("chat_id")
            if isinstance(chat_id, int):
                verdict = self._limiter.check(chat_id)
                if verdict is not None:
                    which, retry_after = verdict
                    self.stats["rate_limited"] += 1
                    self.stats[f"rate_limited:{which}"] += 1
                    raise error_for_status(429, retry_after)

    async def _fail(
        self,
        status: FailStatus,
        retry_after: int | None,
        description: str | None,
        raw_body: str | None,
        hang: float,
    ) -> None:
        if status == "timeout":
            await self._sleep(hang)
            return  # a very late answer: the call proceeds if the client is still there
        if status == "disconnect":
            raise _Disconnect
        if not isinstance(status, int):
            raise ValueError(f"unknown failure {status!r}")
        error = error_for_status(status, retry_after if status == 429 else None, description)
        if raw_body is not None:
            error.raw_body = raw_body
        raise error

    async def execute(self, method: str, params: Mapping[str, Any]) -> Any:
        """Run a Bot API method in-process (no HTTP, no faults); returns the result or raises
        ApiError. Handy for assertions that need the server's view (e.g. getChatMember)."""
        entry = self._methods.get(method.lower())
        if entry is None:
            raise ApiError(404, "Not Found")
        return await entry[1](_normalize(dict(params)), {})

    # ------------------------------------------------------------------ param helpers

    def _require(self, params: JSONDict, name: str) -> Any:
        value = params.get(name)
        if value is None or value == "":
            raise bad_request(f"{name} is empty")
        return value

    def _int(self, params: JSONDict, name: str) -> int:
        value = self._require(params, name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad_request(f"invalid {name} specified")
        return value

    def _resolve_chat_id(self, params: JSONDict) -> int:
        value = self._require(params, "chat_id")
        if isinstance(value, str) and value.startswith("@"):
            for chat in self._chats.values():
                if chat.get("username", "").lower() == value[1:].lower():
                    return int(chat["id"])
            raise bad_request("chat not found")
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad_request("chat not found")
        return value

    def _writable_chat(self, params: JSONDict) -> JSONDict:
        """The target chat of a send/edit, checking blocks, membership and existence."""
        chat_id = self._resolve_chat_id(params)
        if chat_id in self._blocked:
            raise ApiError(403, "Forbidden: bot was blocked by the user")
        chat = self._chats.get(chat_id)
        if chat is None:
            if chat_id in self._users:
                raise ApiError(403, "Forbidden: bot can't initiate conversation with a user")
            if chat_id == self.bot_id:
                raise ApiError(403, "Forbidden: bot can't send messages to bots")
            if self.strict_chats:
                raise bad_request("chat not found")
            chat = {"id": chat_id, "type": "private" if chat_id > 0 else "supergroup"}
            chat.update({"first_name": "User"} if chat_id > 0 else {"title": "Chat"})
            self._chats[chat_id] = chat
        if chat["type"] != "private":
            status = self._members.get((chat_id, self.bot_id), "member")
            if status == "kicked":
                kind = "channel" if chat["type"] == "channel" else "group"
                raise ApiError(403, f"Forbidden: bot was kicked from the {kind} chat")
            if status == "left":
                raise ApiError(403, "Forbidden: bot is not a member of the group chat")
        return chat

    def _text(
        self, params: JSONDict, name: str, limit: int, empty: str, long: str
    ) -> tuple[str, str, list[JSONDict]]:
        """(raw, plain, entities) for a text/caption parameter."""
        raw = params.get(name)
        raw = "" if raw is None else str(raw)
        if params.get(f"{'caption_' if name == 'caption' else ''}entities"):
            plain, entities = (
                raw,
                list(params[f"{'caption_' if name == 'caption' else ''}entities"]),
            )
        else:
            plain, entities = render(raw, params.get("parse_mode"))
        if empty and not plain.strip():
            raise bad_request(empty)
        if len(plain) > limit:
            raise bad_request(long)
        return raw, plain, entities

    def _reply_to(self, params: JSONDict, chat_id: int) -> JSONDict | None:
        reply = params.get("reply_parameters")
        message_id = params.get("reply_to_message_id")
        allow = bool(params.get("allow_sending_without_reply"))
        if isinstance(reply, dict):
            message_id = reply.get("message_id")
            allow = allow or bool(reply.get("allow_sending_without_reply"))
        if message_id is None:
            return None
        target = self._messages.get((chat_id, int(message_id)))
        if target is None:
            if allow:
                return None
            raise bad_request("message to be replied not found")
        return {k: v for k, v in target.items() if k != "reply_to_message"}

    def _bot_message(self, chat: JSONDict, body: JSONDict, params: JSONDict) -> JSONDict:
        head: JSONDict = {"chat": chat}
        if chat["type"] == "channel":
            head["sender_chat"] = chat
        else:
            head["from"] = self.bot_user
        reply = self._reply_to(params, chat["id"])
        if reply is not None:
            head["reply_to_message"] = reply
        return self._store_message(chat["id"], {**head, **body})

    def _record(
        self,
        method: str,
        chat_id: int,
        message: JSONDict,
        params: JSONDict,
        raw: str | None,
        plain: str | None,
        markup: JSONDict | None,
        upload: Upload | None = None,
    ) -> None:
        self.sent.append(
            SentMessage(
                method=method,
                chat_id=chat_id,
                message_id=message["message_id"],
                text=raw,
                plain_text=plain,
                parse_mode=params.get("parse_mode"),
                reply_markup=markup,
                params=params,
                message=copy.deepcopy(message),
                time=self.clock(),
                upload=upload,
            )
        )

    # ------------------------------------------------------------------ Bot API methods
    # Each _m_<name> implements the Bot API method <name> (case-insensitive, as Telegram).

    async def _m_getMe(self, params: JSONDict, files: dict[str, Upload]) -> Any:
        return self.me

    async def _m_logOut(self, params: JSONDict, files: dict[str, Upload]) -> Any:
        return True

    async def _m_close(self, params: JSONDict, files: dict[str, Upload]) -> Any:
        return True

    async def _m_getUpdates(self, params: JSONDict, files: dict[str, Upload]) -> Any:
        if self.webhook is not None:
            raise ApiError(
                409,
                "Conflict: can't use getUpdates method while webhook is active; use "
                "deleteWebhook to delete the webhook first",
            )
        offset = params.get("offset")
        limit = params.get("limit") or 100
        timeout = params.get("timeout") or 0
        if not isinstance(limit, int) or not isinstance(timeout, int | float):
            raise bad_request("wrong parameter value")
        limit = max(1, min(100, limit))
        allowed = params.get("allowed_updates")
        if isinstance(allowed, list):
            self._allowed = frozenset(allowed) if allowed else DEFAULT_ALLOWED_UPDATES
        if isinstance(offset, int) and offset != 0:
            self._confirm(offset)
        self._poll_generation += 1  # a newer getUpdates ends a pending one with 409
        generation = self._poll_generation
        self._notify()
        deadline = asyncio.get_running_loop().time() + float(timeout)
        while not self._pending and timeout > 0:
            if not await self._wait_change(deadline):
                break
            if self._poll_generation != generation:
                raise ApiError(
                    409,
                    "Conflict: terminated by other getUpdates request; make sure that only "
                    "one bot instance is running",
                )
            if self.webhook is not None:
                break
        batch = self._pending[:limit]
        for pending in batch:
            pending.delivered = True
            self.delivered.append(pending.update_id)
        if batch:
            self._notify()
        return [p.update for p in batch]

    async def _m_setWebhook(self, params: JSONDict, files: dict[str, Upload]) -> Any:
        url = params.get("url") or ""
        if not url:
            return await self._m_deleteWebhook(params, files)
        if not re.match(r"^https?://[^\s/]+", str(url)):
            raise bad_request("bad webhook: Failed to resolve host: Name or service not known")
        secret = params.get("secret_token")
        if secret is not None and not _SECRET_RE.match(str(secret)):
            raise bad_request("secret token contains unallowed characters")
        if params.get("drop_pending_updates"):
            self._pending.clear()
        allowed = params.get("allowed_updates")
        if isinstance(allowed, list):
            self._allowed = frozenset(allowed) if allowed else DEFAULT_ALLOWED_UPDATES
        unchanged = self.webhook is not None and self.webhook.url == url
        self.webhook = Webhook(
            url=str(url),
            secret_token=str(secret) if secret else None,
            max_connections=int(params.get("max_connections") or 40),
            allowed_updates=allowed if isinstance(allowed, list) else None,
        )
        if self._webhook_task is None or self._webhook_task.done():
            self._webhook_task = asyncio.create_task(self._webhook_loop())
        self._notify()
        return _Described(True, "Webhook is already set" if unchanged else "Webhook was set")

    async def _m_deleteWebhook(self, params: JSONDict, files: dict[str, Upload]) -> Any:
        if params.get("drop_pending_updates"):
            self._pending.clear()
        had = self.webhook is not None
        self.webhook = None
        if self._webhook_task is not None:
            self._webhook_task.cancel()
            self._webhook_task = None
        self._notify()
        return _Described(True, "Webhook was deleted" if had else "Webhook is already deleted")

    async def _m_getWebhookInfo(self, params: JSONDict, files: dict[str, Upload]) -> Any:
        info: JSONDict = {
            "url": self.webhook.url if self.webhook else "",
            "has_custom_certificate": False,
            "pending_update_count": len(self._pending),
        }
        if self.webhook is not None:
            info["max_connections"] = self.webhook.max_connections
            info["ip_address"] = "127.0.0.1"
            if self.webhook.allowed_updates:
                info["allowed_updates"] = self.webhook.allowed_updates
            if self.webhook.last_error_date is not None:
                info["last_error_date"] = self.webhook.last_error_date
                info["last_error_message"] = self.webhook.last_error_message
        return info

    async def _m_sendMessage(self, params: JSONDict, files: dict[str, Upload]) -> Any:
        chat = self._writable_chat(params)
        raw, plain, entities = self._text(
            params, "text", 4096, "message text is empty", "message is too long"
        )
        markup = validate_reply_markup(params.get("reply_markup"))
        body: JSONDict = {"text": plain}
        if entities:
            body["entities"] = entities
        shown = markup_for_message(markup)
        if shown:
            body["reply_markup"] = shown
        message = self._bot_message(chat, body, params)
        self._record("sendMessage", chat["id"], message, params, raw, plain, markup)
        return message

    async def _send_media(self, kind: str, params: JSONDict, files: dict[str, Upload]) -> Any:
        chat = self._writable_chat(params)
        upload = _resolve_upload(kind, params, files)
        raw, plain, entities = self._text(
            params, "caption", 1024, "", "message caption is too long"
        )
        markup = validate_reply_markup(params.get("reply_markup"))
        data = upload.data if upload.data is not None else b""
        record = self._new_file(kind, data, upload.filename)
        if upload.reference and upload.reference in self.files:
            record = self.files[upload.reference]
        base: JSONDict = {"file_id": record.file_id, "file_unique_id": record.file_unique_id}
        if upload.data is not None:
            base["file_size"] = len(upload.data)
        media: Any
        if kind == "photo":
            media = [{**base, "width": 800, "height": 800}]
        elif kind == "sticker":
            media = {
                **base,
                "type": "regular",
                "width": 512,
                "height": 512,
                "is_animated": False,
                "is_video": False,
            }
        elif kind in ("video", "animation"):
            media = {
                **base,
                "width": 640,
                "height": 360,
                "duration": int(params.get("duration") or 1),
            }
        elif kind in ("voice", "audio"):
            media = {**base, "duration": int(params.get("duration") or 1)}
        else:
            media = dict(base)
            if upload.filename:
                media["file_name"] = upload.filename
                ctype = upload.content_type
                if not ctype or ctype == "application/octet-stream":
                    ctype = _guess_mime(upload.filename)
                media["mime_type"] = ctype
        body: JSONDict = {kind: media}
        if plain:
            body["caption"] = plain
            if entities:
                body["caption_entities"] = entities
        shown = markup_for_message(markup)
        if shown:
            body["reply_markup"] = shown
        message = self._bot_message(chat, body, params)
        method = "send" + kind[0].upper() + kind[1:]
        self._record(
            method, chat["id"], message, params, raw or None, plain or None, markup, upload
        )
        return message

    async def _m_sendDocument(self, params: JSONDict, files: dict[str, Upload]) -> Any:
        return await self._send_media("document", params, files)

    async def _m_sendPhoto(self, params: JSONDict, files: dict[str, Upload]) -> Any:
        return await self._send_media("photo", params, files)

    async def _m_sendVoice(self, params: JSONDict, files: dict[str, Upload]) -> Any:
        return await self._send_media("voice", params, files)

    async def _m_sendSticker(self, params: JSONDict, files: dict[str, Upload]) -> Any:
        return await self._send_media("sticker", params, files)

    async def _m_sendAudio(self, params: JSONDict, files: dict[str, Upload]) -> Any:
        return await self._send_media("audio", params, files)

    async def _m_sendVideo(self, params: JSONDict, files: dict[str, Upload]) -> Any:
        return await self._send_media("video", params, files)

    async def _m_sendAnimation(self, params: JSONDict, files: dict[str, Upload]) -> Any:
        return await self._send_media("animation", params, files)

    def _editable(self, params: JSONDict) -> tuple[JSONDict, JSONDict]:
        if params.get("inline_message_id"):
            raise bad_request("MESSAGE_ID_INVALID")
        chat = self._writable_chat(params)
        message_id = self._int(params, "message_id")
        message = self._messages.get((chat["id"], message_id))
        if message is None:
            raise bad_request("message to edit not found")
        author = message.get("from", {}).get("id")
        if author != self.bot_id and message.get("sender_chat", {}).get("id") != chat["id"]:
            raise bad_request("message can't be edited")
        return chat, message

    async def _m_editMessageText(self, params: JSONDict, files: dict[str, Upload]) -> Any:
        chat, message = self._editable(params)
        if "text" not in message:
            raise bad_request("there is no text in the message to edit")
        raw, plain, entities = self._text(
            params, "text", 4096, "message text is empty", "message is too long"
        )
        markup = validate_reply_markup(params.get("reply_markup"))
        shown = markup_for_message(markup)
        if (
            message.get("text") == plain
            and message.get("entities", []) == entities
            and message.get("reply_markup") == shown
        ):
            raise bad_request(_NOT_MODIFIED)
        message["text"] = plain
        message.pop("entities", None)
        if entities:
            message["entities"] = entities
        message.pop("reply_markup", None)
        if shown:
            message["reply_markup"] = shown
        message["edit_date"] = self._now()
        self._record("editMessageText", chat["id"], dict(message), params, raw, plain, markup)
        return message

    async def _m_editMessageReplyMarkup(self, params: JSONDict, files: dict[str, Upload]) -> Any:
        chat, message = self._editable(params)
        markup = validate_reply_markup(params.get("reply_markup"))
        shown = markup_for_message(markup)
        if message.get("reply_markup") == shown:
            raise bad_request(_NOT_MODIFIED)
        message.pop("reply_markup", None)
        if shown:
            message["reply_markup"] = shown
        message["edit_date"] = self._now()
        text = message.get("text", message.get("caption"))
        self._record(
            "editMessageReplyMarkup", chat["id"], dict(message), params, text, text, markup
        )
        return message

    async def _m_editMessageCaption(self, params: JSONDict, files: dict[str, Upload]) -> Any:
        chat, message = self._editable(params)
        if "text" in message:
            raise bad_request("there is no caption in the message to edit")
        raw, plain, entities = self._text(
            params, "caption", 1024, "", "message caption is too long"
        )
        markup = validate_reply_markup(params.get("reply_markup"))
        shown = markup_for_message(markup)
        if message.get("caption", "") == plain and message.get("reply_markup") == shown:
            raise bad_request(_NOT_MODIFIED)
        for key in ("caption", "caption_entities", "reply_markup"):
            message.pop(key, None)
        if plain:
            message["caption"] = plain
        if entities:
            message["caption_entities"] = entities
        if shown:
            message["reply_markup"] = shown
        message["edit_date"] = self._now()
        self._record("editMessageCaption", chat["id"], dict(message), params, raw, plain, markup)
        return message

    async def _m_deleteMessage(self, params: JSONDict, files: dict[str, Upload]) -> Any:
        chat_id = self._resolve_chat_id(params)
        message_id = self._int(params, "message_id")
        if self._messages.pop((chat_id, message_id), None) is None:
            raise bad_request("message to delete not found")
        self.deleted.append((chat_id, message_id))
        return True

    async def _m_deleteMessages(self, params: JSONDict, files: dict[str, Upload]) -> Any:
        chat_id = self._resolve_chat_id(params)
        for message_id in self._require(params, "message_ids"):
            if self._messages.pop((chat_id, int(message_id)), None) is not None:
                self.deleted.append((chat_id, int(message_id)))
        return True

    async def _m_answerCallbackQuery(self, params: JSONDict, files: dict[str, Upload]) -> Any:
        query_id = str(self._require(params, "callback_query_id"))
        if query_id not in self._queries or query_id in self.callback_answers:
            raise bad_request(
                "query is too old and response timeout expired or query ID is invalid"
            )
        text = params.get("text")
        if text is not None and len(str(text)) > 200:
            raise bad_request("MESSAGE_TOO_LONG")
        self.callback_answers[query_id] = params
        return True

    async def _m_sendChatAction(self, params: JSONDict, files: dict[str, Upload]) -> Any:
        chat = self._writable_chat(params)
        action = self._require(params, "action")
        if action not in _CHAT_ACTIONS:
            raise bad_request("wrong parameter action in request")
        self.chat_actions.append((chat["id"], str(action)))
        return True

    async def _m_getChat(self, params: JSONDict, files: dict[str, Upload]) -> Any:
        chat_id = self._resolve_chat_id(params)
        chat = self._chats.get(chat_id)
        if chat is None:
            raise bad_request("chat not found")
        return {
            **chat,
            "accent_color_id": 0,
            "max_reaction_count": 11,
            "accepted_gift_types": {
                "unlimited_gifts": False,
                "limited_gifts": False,
                "unique_gifts": False,
                "premium_subscription": False,
                "gifts_from_channels": False,
            },
        }

    async def _m_getChatMember(self, params: JSONDict, files: dict[str, Upload]) -> Any:
        chat_id = self._resolve_chat_id(params)
        user_id = self._int(params, "user_id")
        chat = self._chats.get(chat_id)
        if chat is None:
            raise bad_request("chat not found")
        if user_id == self.bot_id:
            user_json: JSONDict = self.bot_user
            status = (
                "member"
                if chat["type"] == "private"
                else self._members.get((chat_id, user_id), "member")
            )
        else:
            handle = self._users.get(user_id)
            if handle is None:
                raise bad_request("PARTICIPANT_ID_INVALID")
            user_json = handle.json
            if chat["type"] == "private":
                status = "member" if chat_id == user_id else "left"
            else:
                status = self._members.get((chat_id, user_id), "left")
        return chat_member_json(user_json, status)

    async def _m_createChatInviteLink(self, params: JSONDict, files: dict[str, Upload]) -> Any:
        chat = self._writable_chat(params)
        if chat["type"] == "private":
            raise bad_request("can't invite members to a private chat")
        if self._members.get((chat["id"], self.bot_id)) not in ("administrator", "creator"):
            raise bad_request("not enough rights to manage chat invite links")
        link: JSONDict = {
            "invite_link": "https://t.me/+" + secrets.token_urlsafe(12)[:16],
            "creator": self.bot_user,
            "creates_join_request": bool(params.get("creates_join_request")),
            "is_primary": False,
            "is_revoked": False,
        }
        name = params.get("name")
        if name:
            if len(str(name)) > 32:
                raise bad_request("invite link name is too long")
            link["name"] = str(name)
        expire = params.get("expire_date")
        if expire:
            link["expire_date"] = int(expire)
        limit = params.get("member_limit")
        if limit is not None:
            if link["creates_join_request"]:
                raise bad_request(
                    "member limit can't be specified for links requiring administrator approval"
                )
            if not isinstance(limit, int) or not 1 <= limit <= 99999:
                raise bad_request("member limit must be between 1 and 99999")
            link["member_limit"] = limit
        self.invite_links.append({**link, "chat_id": chat["id"]})
        return link

    async def _m_revokeChatInviteLink(self, params: JSONDict, files: dict[str, Upload]) -> Any:
        chat_id = self._resolve_chat_id(params)
        url = self._require(params, "invite_link")
        for link in self.invite_links:
            if link["invite_link"] == url and link["chat_id"] == chat_id:
                link["is_revoked"] = True
                return {k: v for k, v in link.items() if k != "chat_id"}
        raise bad_request("INVITE_HASH_EXPIRED")

    def _scope_key(self, params: JSONDict) -> tuple[str, str]:
        scope = params.get("scope") or {"type": "default"}
        return canonical(scope), str(params.get("language_code") or "")

    async def _m_setMyCommands(self, params: JSONDict, files: dict[str, Upload]) -> Any:
        commands = self._require(params, "commands")
        if not isinstance(commands, list) or len(commands) > 100:
            raise bad_request("commands must be an array of at most 100 BotCommand")
        for command in commands:
            if not isinstance(command, dict) or not _COMMAND_RE.match(
                str(command.get("command", ""))
            ):
                raise bad_request("BOT_COMMAND_INVALID")
            if not 1 <= len(str(command.get("description", ""))) <= 256:
                raise bad_request("BOT_COMMAND_DESCRIPTION_INVALID")
        self.commands[self._scope_key(params)] = [
            {"command": c["command"], "description": c["description"]} for c in commands
        ]
        return True

    async def _m_getMyCommands(self, params: JSONDict, files: dict[str, Upload]) -> Any:
        return self.commands.get(self._scope_key(params), [])

    async def _m_deleteMyCommands(self, params: JSONDict, files: dict[str, Upload]) -> Any:
        self.commands.pop(self._scope_key(params), None)
        return True

    async def _m_getFile(self, params: JSONDict, files: dict[str, Upload]) -> Any:
        record = self.files.get(str(self._require(params, "file_id")))
        if record is None:
            raise bad_request("invalid file_id")
        return {
            "file_id": record.file_id,
            "file_unique_id": record.file_unique_id,
            "file_size": len(record.data),
            "file_path": record.file_path,
        }

    async def _simple_chat_method(self, params: JSONDict) -> bool:
        chat_id = self._resolve_chat_id(params)
        if chat_id not in self._chats:
            raise bad_request("chat not found")
        return True

    async def _m_setMyDescription(self, params: JSONDict, files: dict[str, Upload]) -> Any:
        return True

    async def _m_setMyShortDescription(self, params: JSONDict, files: dict[str, Upload]) -> Any:
        return True

    async def _m_setChatMenuButton(self, params: JSONDict, files: dict[str, Upload]) -> Any:
        return True

    async def _m_leaveChat(self, params: JSONDict, files: dict[str, Upload]) -> Any:
        await self._simple_chat_method(params)
        self._members[(self._resolve_chat_id(params), self.bot_id)] = "left"
        return True

    async def _m_banChatMember(self, params: JSONDict, files: dict[str, Upload]) -> Any:
        await self._simple_chat_method(params)
        self._members[(self._resolve_chat_id(params), self._int(params, "user_id"))] = "kicked"
        return True

    async def _m_unbanChatMember(self, params: JSONDict, files: dict[str, Upload]) -> Any:
        await self._simple_chat_method(params)
        key = (self._resolve_chat_id(params), self._int(params, "user_id"))
        if self._members.get(key) == "kicked" or not params.get("only_if_banned"):
            self._members[key] = "left"
        return True

    async def _m_approveChatJoinRequest(self, params: JSONDict, files: dict[str, Upload]) -> Any:
        await self._simple_chat_method(params)
        self._members[(self._resolve_chat_id(params), self._int(params, "user_id"))] = "member"
        return True

    async def _m_declineChatJoinRequest(self, params: JSONDict, files: dict[str, Upload]) -> Any:
        return await self._simple_chat_method(params)

    async def _m_pinChatMessage(self, params: JSONDict, files: dict[str, Upload]) -> Any:
        return await self._simple_chat_method(params)

    async def _m_unpinChatMessage(self, params: JSONDict, files: dict[str, Upload]) -> Any:
        return await self._simple_chat_method(params)

    async def _m_setMessageReaction(self, params: JSONDict, files: dict[str, Upload]) -> Any:
        return await self._simple_chat_method(params)

    # ------------------------------------------------------------------ webhook delivery

    async def _webhook_loop(self) -> None:
        while self.webhook is not None and not self._stopping.is_set():
            if not self._pending:
                await self._wait_change(None)
                continue
            hook = self.webhook
            pending = self._pending[0]
            status = await self._post_update(hook, pending.update)
            hook.deliveries.append((pending.update_id, status))
            if isinstance(status, int) and 200 <= status < 300:
                self._pending.pop(0)
                self.delivered.append(pending.update_id)
                self._notify()
                continue
            pending.attempts += 1
            hook.last_error_date = self._now()
            hook.last_error_message = (
                f"Wrong response from the webhook: {status}"
                if isinstance(status, int)
                else str(status)
            )
            self.stats["webhook_errors"] += 1
            self._notify()
            if pending.attempts >= self.webhook_max_attempts:
                self._pending.pop(0)
                self.stats["webhook_dropped"] += 1
                continue
            await self._sleep(self.webhook_retry_delay * pending.attempts)

    async def _post_update(self, hook: Webhook, update: JSONDict) -> int | str:
        assert self._http is not None
        headers = {"Content-Type": "application/json"}
        if hook.secret_token:
            headers["X-Telegram-Bot-Api-Secret-Token"] = hook.secret_token
        try:
            async with self._http.post(
                hook.url, data=json.dumps(update, ensure_ascii=False), headers=headers
            ) as response:
                status = response.status
                if 200 <= status < 300:
                    await self._webhook_reply(response)
                return status
        except Exception as error:  # any client failure is a delivery error
            return f"Connection failed: {type(error).__name__}: {error}"

    async def _webhook_reply(self, response: Any) -> None:
        """Execute a method returned in the webhook response body (as Telegram does)."""
        ctype = response.content_type
        params: JSONDict = {}
        files: dict[str, Upload] = {}
        if ctype == "application/json":
            try:
                body = await response.json()
            except ValueError:
                return
            if isinstance(body, dict):
                params = body
        elif ctype.startswith("multipart/"):
            reader = MultipartReader.from_response(response)
            async for part in reader:
                if part is None or isinstance(part, MultipartReader) or part.name is None:
                    continue
                data = await part.read()
                if part.filename:
                    files[part.name] = Upload(part.name, part.filename, None, bytes(data))
                else:
                    params[part.name] = bytes(data).decode("utf-8")
        method = params.pop("method", None)
        if not method:
            return
        with contextlib.suppress(ApiError):
            await self._dispatch(str(method), _normalize(params), files, None)


@dataclass
class _Described:
    value: Any
    description: str


def _aiogram_method_names() -> dict[str, str]:
    """Real Bot API method names (lowercased -> canonical), from aiogram's ``methods/`` files.

    Read from file names rather than imported: importing aiogram.types costs seconds.
    """
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("aiogram")
    if spec is None or not spec.submodule_search_locations:
        return {}
    names: dict[str, str] = {}
    for location in spec.submodule_search_locations:
        for path in (Path(location) / "methods").glob("*.py"):
            if path.stem.startswith("_") or path.stem == "base":
                continue
            head, *rest = path.stem.split("_")
            api_name = head + "".join(part.capitalize() for part in rest)
            names[api_name.lower()] = api_name
    return names


def _json_response(body: JSONDict, status: int) -> web.Response:
    return web.json_response(
        body, status=status, dumps=lambda obj: json.dumps(obj, ensure_ascii=False)
    )


def _guess_mime(filename: str) -> str:
    import mimetypes

    return mimetypes.guess_type(filename)[0] or "application/octet-stream"


def _decode_form_value(name: str, value: str) -> Any:
    if name in _STRING_PARAMS:
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value


def _normalize(params: JSONDict) -> JSONDict:
    for key in ("chat_id", "user_id", "message_id", "from_chat_id"):
        value = params.get(key)
        if isinstance(value, str) and value.lstrip("-").isdigit():
            params[key] = int(value)
    return params


async def _read_params(request: web.Request) -> tuple[JSONDict, dict[str, Upload]]:
    """Parameters from the query string plus a JSON, urlencoded or multipart body."""
    params: JSONDict = {k: _decode_form_value(k, v) for k, v in request.query.items()}
    files: dict[str, Upload] = {}
    if request.method == "POST" and request.body_exists:
        if request.content_type == "application/json":
            try:
                body = await request.json()
            except ValueError:
                raise bad_request("can't parse JSON encoded request") from None
            if not isinstance(body, dict):
                raise bad_request("JSON object expected")
            params.update(body)
        else:
            form = await request.post()
            for key, value in form.items():
                if isinstance(value, web.FileField):
                    files[key] = Upload(key, value.filename, value.content_type, value.file.read())
                else:
                    params[key] = _decode_form_value(key, str(value))
    return _normalize(params), files


def _resolve_upload(kind: str, params: JSONDict, files: dict[str, Upload]) -> Upload:
    value = params.get(kind)
    upload: Upload | None = None
    if isinstance(value, str) and value.startswith("attach://"):
        upload = files.get(value.removeprefix("attach://"))
    elif kind in files:
        upload = files[kind]
    elif isinstance(value, str) and value:
        return Upload(kind, None, None, None, reference=value)
    if upload is None:
        raise bad_request(f"there is no {kind} in the request")
    if not upload.data:
        raise bad_request("file must be non-empty")
    return Upload(kind, upload.filename, upload.content_type, upload.data)
