"""Plain data records and JSON builders for the fake Telegram Bot API.

Everything the server returns is built here as plain ``dict`` objects shaped exactly like the
Bot API JSON (``from`` not ``from_user``), so aiogram's pydantic models accept them.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

JSONDict = dict[str, Any]

#: Update types delivered when ``allowed_updates`` is empty / never set (Bot API default).
DEFAULT_ALLOWED_UPDATES: frozenset[str] = frozenset(
    {
        "message",
        "edited_message",
        "channel_post",
        "edited_channel_post",
        "business_connection",
        "business_message",
        "edited_business_message",
        "deleted_business_messages",
        "inline_query",
        "chosen_inline_result",
        "callback_query",
        "shipping_query",
        "pre_checkout_query",
        "purchased_paid_media",
        "poll",
        "poll_answer",
        "my_chat_member",
        "chat_join_request",
        "chat_boost",
        "removed_chat_boost",
    }
)


class ApiError(Exception):
    """Raised by method implementations; rendered as ``{"ok": false, ...}``."""

    def __init__(self, status: int, description: str, retry_after: int | None = None) -> None:
        super().__init__(description)
        self.status = status
        self.description = description
        self.retry_after = retry_after
        self.raw_body: str | None = None  # replaces the JSON body (e.g. an nginx HTML page)

    def payload(self) -> JSONDict:
        body: JSONDict = {"ok": False, "error_code": self.status, "description": self.description}
        if self.retry_after is not None:
            body["parameters"] = {"retry_after": self.retry_after}
        return body


def bad_request(what: str) -> ApiError:
    return ApiError(400, f"Bad Request: {what}")


DEFAULT_DESCRIPTIONS: dict[int, str] = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    409: "Conflict",
    413: "Request Entity Too Large",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


def error_for_status(
    status: int, retry_after: int | None = None, description: str | None = None
) -> ApiError:
    """An :class:`ApiError` worded like Telegram for ``status``."""
    if status == 429:
        seconds = retry_after if retry_after is not None else 1
        return ApiError(
            429, description or f"Too Many Requests: retry after {seconds}", retry_after=seconds
        )
    return ApiError(
        status, description or DEFAULT_DESCRIPTIONS.get(status, "Error"), retry_after=retry_after
    )


def utf16_len(text: str) -> int:
    """Length in UTF-16 code units, the unit of Telegram entity offsets."""
    return len(text.encode("utf-16-le")) // 2


def chat_instance_for(chat_id: int, bot_id: int) -> str:
    """Stable, realistic (signed 64-bit) ``chat_instance`` for a chat/bot pair."""
    digest = hashlib.sha256(f"{bot_id}:{chat_id}".encode()).digest()
    return str(int.from_bytes(digest[:8], "big", signed=True))


def make_file_id(kind: str, serial: int) -> tuple[str, str]:
    """(file_id, file_unique_id) that look like Telegram's url-safe base64 blobs."""
    raw = hashlib.sha256(f"{kind}:{serial}".encode()).digest()
    file_id = "AgAC" + base64.urlsafe_b64encode(raw + raw[:12]).decode().rstrip("=")
    unique = "AQAD" + base64.urlsafe_b64encode(raw[:9]).decode().rstrip("=")
    return file_id, unique


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


@dataclass
class Upload:
    """A file the bot uploaded (multipart) or referenced (file_id / URL)."""

    field: str
    filename: str | None
    content_type: str | None
    data: bytes | None
    reference: str | None = None  # file_id or URL when no bytes were uploaded


@dataclass
class SentMessage:
    """One bot output: a new message (``send*``) or an edit (``edit*``)."""

    method: str
    chat_id: int
    message_id: int
    text: str | None  # as sent (raw, before parse_mode); the caption for media
    plain_text: str | None  # after parse_mode parsing (what the user sees)
    parse_mode: str | None
    reply_markup: JSONDict | None
    params: JSONDict
    message: JSONDict  # the Message object returned to the bot
    time: float  # clock() at the time of the call
    upload: Upload | None = None

    @property
    def is_edit(self) -> bool:
        return self.method.startswith("edit")

    @property
    def buttons(self) -> list[JSONDict]:
        """Flattened inline keyboard buttons (empty if none)."""
        rows = (self.reply_markup or {}).get("inline_keyboard") or []
        return [button for row in rows for button in row]

    @property
    def callback_data(self) -> list[str]:
        return [b["callback_data"] for b in self.buttons if "callback_data" in b]


@dataclass
class Call:
    """One Bot API request as received (after token check)."""

    method: str
    params: JSONDict
    time: float
    status: int = 200
    description: str | None = None
    files: dict[str, Upload] = field(default_factory=dict)


@dataclass
class FileRecord:
    file_id: str
    file_unique_id: str
    data: bytes
    file_path: str


def user_json(
    user_id: int,
    first_name: str,
    *,
    is_bot: bool = False,
    last_name: str | None = None,
    username: str | None = None,
    language_code: str | None = None,
    is_premium: bool | None = None,
) -> JSONDict:
    user: JSONDict = {"id": user_id, "is_bot": is_bot, "first_name": first_name}
    if last_name:
        user["last_name"] = last_name
    if username:
        user["username"] = username
    if language_code:
        user["language_code"] = language_code
    if is_premium:
        user["is_premium"] = True
    return user


_ADMIN_RIGHTS = (
    "can_manage_chat",
    "can_delete_messages",
    "can_manage_video_chats",
    "can_restrict_members",
    "can_promote_members",
    "can_change_info",
    "can_invite_users",
    "can_post_stories",
    "can_edit_stories",
    "can_delete_stories",
    "can_send_welcome_messages",
    "can_pin_messages",
)

_RESTRICTED_RIGHTS = (
    "can_send_messages",
    "can_send_audios",
    "can_send_documents",
    "can_send_photos",
    "can_send_videos",
    "can_send_video_notes",
    "can_send_voice_notes",
    "can_send_polls",
    "can_send_other_messages",
    "can_add_web_page_previews",
    "can_react_to_messages",
    "can_edit_tag",
    "can_change_info",
    "can_invite_users",
    "can_pin_messages",
    "can_manage_topics",
)

MEMBER_STATUSES = ("creator", "administrator", "member", "restricted", "left", "kicked")


def chat_member_json(user: JSONDict, status: str, until_date: int = 0) -> JSONDict:
    """A ChatMember object of the right variant for ``status``."""
    if status == "creator":
        return {"status": status, "user": user, "is_anonymous": False}
    if status == "administrator":
        member: JSONDict = {
            "status": status,
            "user": user,
            "can_be_edited": False,
            "is_anonymous": False,
        }
        member.update(dict.fromkeys(_ADMIN_RIGHTS, True))
        return member
    if status == "member":
        return {"status": status, "user": user}
    if status == "restricted":
        member = {"status": status, "user": user, "is_member": True, "until_date": until_date}
        member.update(dict.fromkeys(_RESTRICTED_RIGHTS, False))
        return member
    if status == "left":
        return {"status": status, "user": user}
    if status == "kicked":
        return {"status": status, "user": user, "until_date": until_date}
    raise ValueError(f"unknown chat member status {status!r}; expected one of {MEMBER_STATUSES}")


def update_type(update: JSONDict) -> str | None:
    """The update's type: its single key besides ``update_id``."""
    kinds = [key for key in update if key != "update_id"]
    return kinds[0] if len(kinds) == 1 else None
