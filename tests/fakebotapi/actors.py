"""Simulated Telegram users, groups and channels (handles returned by ``FakeBotAPI``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .models import JSONDict, SentMessage, user_json

if TYPE_CHECKING:
    from .server import FakeBotAPI


def chat_id_of(chat: Any) -> int:
    """Chat id from a handle, an int, a SentMessage, a Message dict or an aiogram Message."""
    if isinstance(chat, int):
        return chat
    if isinstance(chat, FakeGroup | FakeChannel | FakeUser):
        return chat.id
    if isinstance(chat, SentMessage):
        return chat.chat_id
    if isinstance(chat, dict):
        return int(chat["chat"]["id"] if "chat" in chat else chat["id"])
    inner = getattr(chat, "chat", None)
    if inner is not None:
        return int(inner.id)
    raise TypeError(f"can't find a chat id in {chat!r}")


def message_ref(message: Any, default_chat: int) -> tuple[int, int]:
    """(chat_id, message_id) from a SentMessage, Message dict, aiogram Message or an int."""
    if isinstance(message, int):
        return default_chat, message
    if isinstance(message, SentMessage):
        return message.chat_id, message.message_id
    if isinstance(message, dict):
        return int(message["chat"]["id"]), int(message["message_id"])
    if hasattr(message, "message_id") and hasattr(message, "chat"):
        return int(message.chat.id), int(message.message_id)
    raise TypeError(f"can't find a message id in {message!r}")


class FakeUser:
    """A Telegram user talking to the bot. Create with :meth:`FakeBotAPI.user`."""

    def __init__(
        self,
        api: FakeBotAPI,
        user_id: int,
        first_name: str,
        *,
        last_name: str | None = None,
        username: str | None = None,
        language_code: str | None = "zh-hans",
        is_premium: bool = False,
    ) -> None:
        self.api = api
        self.id = user_id
        self.first_name = first_name
        self.last_name = last_name
        self.username = username
        self.language_code = language_code
        self.json: JSONDict = user_json(
            user_id,
            first_name,
            last_name=last_name,
            username=username,
            language_code=language_code,
            is_premium=is_premium,
        )

    def __repr__(self) -> str:
        return f"FakeUser(id={self.id}, first_name={self.first_name!r})"

    def _chat(self, chat: Any) -> int:
        return self.id if chat is None else chat_id_of(chat)

    async def send_text(
        self,
        text: str,
        *,
        chat: Any = None,
        reply_to: Any = None,
        entities: Sequence[JSONDict] | None = None,
    ) -> JSONDict:
        """A ``message`` update with ``text``; returns the update."""
        extra: JSONDict = {"text": text}
        if entities:
            extra["entities"] = list(entities)
        return self.api.user_message(self, self._chat(chat), extra, reply_to=reply_to)

    async def send_command(self, command: str, *, chat: Any = None) -> JSONDict:
        """``/start site_A12``: a message with a ``bot_command`` entity for the first word."""
        if not command.startswith("/"):
            command = "/" + command
        chat_id = self._chat(chat)
        word = command.split(maxsplit=1)[0]
        entity = {"type": "bot_command", "offset": 0, "length": len(word.encode("utf-16-le")) // 2}
        return self.api.user_message(self, chat_id, {"text": command, "entities": [entity]})

    async def press(self, message: Any, callback_data: str, *, check: bool = True) -> JSONDict:
        """A ``callback_query`` for a button on a bot ``message`` this user received.

        ``message`` may be a SentMessage, a Message dict, an aiogram Message or a message id
        in this user's private chat. With ``check`` the button must exist on the message's
        current inline keyboard (as with a real client).
        """
        chat_id, message_id = message_ref(message, self.id)
        return self.api.user_callback(self, chat_id, message_id, callback_data, check=check)

    async def send_sticker(self, emoji: str = "😊", *, chat: Any = None) -> JSONDict:
        return self.api.user_media(self, self._chat(chat), "sticker", emoji=emoji)

    async def send_photo(
        self, caption: str | None = None, *, data: bytes | None = None, chat: Any = None
    ) -> JSONDict:
        return self.api.user_media(self, self._chat(chat), "photo", caption=caption, data=data)

    async def send_voice(
        self, duration: int = 3, *, data: bytes | None = None, chat: Any = None
    ) -> JSONDict:
        return self.api.user_media(self, self._chat(chat), "voice", duration=duration, data=data)

    async def send_document(
        self,
        filename: str = "file.txt",
        data: bytes = b"hello",
        *,
        caption: str | None = None,
        chat: Any = None,
    ) -> JSONDict:
        return self.api.user_media(
            self, self._chat(chat), "document", caption=caption, data=data, filename=filename
        )

    async def edit_text(self, message_id: Any, text: str, *, chat: Any = None) -> JSONDict:
        """An ``edited_message`` update for one of this user's own messages."""
        chat_id, mid = message_ref(message_id, self._chat(chat))
        return self.api.user_edit(self, chat_id, mid, text)

    async def join(self, group: Any, *, invite_link: str | None = None) -> JSONDict:
        """Join a group/channel: ``chat_member`` + (groups) a ``new_chat_members`` message."""
        return self.api.user_join(self, chat_id_of(group), invite_link=invite_link)

    async def leave(self, group: Any) -> JSONDict:
        return self.api.user_leave(self, chat_id_of(group))

    def block_bot(self) -> None:
        self.api.block(self.id)

    @property
    def messages(self) -> list[SentMessage]:
        """New messages the bot sent to this user's private chat."""
        return self.api.messages_to(self.id)

    async def wait_reply(
        self,
        count: int = 1,
        *,
        timeout: float = 5.0,  # noqa: ASYNC109
        contains: str | None = None,
    ) -> list[SentMessage]:
        return await self.api.wait_for_message(
            self.id, count=count, timeout=timeout, contains=contains
        )


class FakeGroup:
    """A group or supergroup the bot is in. Create with :meth:`FakeBotAPI.group`."""

    def __init__(self, api: FakeBotAPI, chat: JSONDict) -> None:
        self.api = api
        self.json = chat
        self.id: int = chat["id"]
        self.title: str = chat["title"]
        self.type: str = chat["type"]

    def __repr__(self) -> str:
        return f"FakeGroup(id={self.id}, title={self.title!r})"

    def set_member(self, user: FakeUser | int, status: str) -> None:
        self.api.set_member(self.id, user, status)

    async def send_text(self, user: FakeUser, text: str) -> JSONDict:
        return await user.send_text(text, chat=self)

    @property
    def messages(self) -> list[SentMessage]:
        return self.api.messages_to(self.id)


class FakeChannel(FakeGroup):
    """A channel the bot administers. Create with :meth:`FakeBotAPI.channel`."""

    async def post(self, text: str) -> JSONDict:
        return await self.api.channel_post(text, chat=self)
