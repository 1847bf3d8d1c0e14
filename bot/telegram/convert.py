"""Telegram updates → core ``Inbound``; nothing here decides anything about the person."""

from __future__ import annotations

from aiogram.types import CallbackQuery, Message

from core.messages import Inbound, InboundKind

CALLBACK_PREFIX = "t:"


def message_inbound(message: Message, update_id: int, *, edited: bool = False) -> Inbound | None:
    """Translate a private-chat message (or its edit); None for what has no sender."""
    user = message.from_user
    if user is None or user.is_bot:
        return None

    def inbound(kind: InboundKind, **fields: str) -> Inbound:
        return Inbound(
            channel="telegram",
            external_id=str(user.id),
            chat_id=str(message.chat.id),
            kind=kind,
            update_key=str(update_id),
            language_hint=user.language_code,
            chat_kind=message.chat.type,
            **fields,
        )

    text = message.text if message.text is not None else message.caption
    if edited:
        return inbound(InboundKind.EDITED, text=text or "")
    if message.text is not None:
        command = _command(message)
        if command is not None:
            name, args = command
            return inbound(InboundKind.COMMAND, command=name, args=args, text=message.text)
        return inbound(InboundKind.TEXT, text=message.text)
    if text:  # a photo or file with a caption: read the caption like a message
        return inbound(InboundKind.TEXT, text=text, media=_media_kind(message))
    return inbound(InboundKind.MEDIA, media=_media_kind(message))


def callback_inbound(query: CallbackQuery, update_id: int) -> Inbound | None:
    """Translate a button press; the data is only a token that core looks up."""
    message = query.message
    presser = str(query.from_user.id)
    if message is None or message.chat.type == "private":
        # A private chat is the presser's own: never let a press on a message of another
        # person's chat move this person's replies (and chat id) over there.
        chat_id, chat_kind = presser, "private"
    else:
        chat_id, chat_kind = str(message.chat.id), message.chat.type
    data = query.data or ""
    token = data[len(CALLBACK_PREFIX) :] if data.startswith(CALLBACK_PREFIX) else ""
    return Inbound(
        channel="telegram",
        external_id=presser,
        chat_id=chat_id,
        kind=InboundKind.BUTTON,
        token=token or "-",
        update_key=str(update_id),
        language_hint=query.from_user.language_code,
        chat_kind=chat_kind,
    )


def _command(message: Message) -> tuple[str, str] | None:
    text = message.text or ""
    if not text.startswith("/"):
        return None
    head, _, args = text[1:].partition(" ")
    name = head.split("@", 1)[0].strip().lower()
    if not name or not all(c.isascii() and (c.isalnum() or c == "_") for c in name):
        return None
    return name[:32], args.strip()


def _media_kind(message: Message) -> str:
    for kind in (
        "sticker",
        "photo",
        "voice",
        "video",
        "video_note",
        "audio",
        "document",
        "animation",
        "location",
        "contact",
        "poll",
        "dice",
    ):
        if getattr(message, kind, None):
            return kind
    return "other"
