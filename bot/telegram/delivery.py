"""Puts outbox rows on Telegram with aiogram, and says what happened in core's terms."""

from __future__ import annotations

import json
import logging

from aiogram import Bot
from aiogram.exceptions import (
    TelegramBadRequest,
    TelegramForbiddenError,
    TelegramNetworkError,
    TelegramNotFound,
    TelegramRetryAfter,
    TelegramServerError,
    TelegramUnauthorizedError,
)
from aiogram.methods.base import Response, TelegramMethod
from aiogram.types import (
    BufferedInputFile,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    TelegramObject,
)
from aiohttp import ClientError

from bot.telegram import generics  # noqa: F401  (aiogram's Response[...] classes kept alive)
from bot.telegram.convert import CALLBACK_PREFIX
from core.models import OutboxMessage
from core.outbox import SendOutcome

log = logging.getLogger(__name__)
CAPTION_LIMIT = 1024


def keyboard(buttons_json: str) -> InlineKeyboardMarkup | None:
    """Draw core's abstract buttons as an inline keyboard of tokens."""
    rows = json.loads(buttons_json or "[]")
    if not rows:
        return None
    return InlineKeyboardMarkup(
        inline_keyboard=[
            [
                InlineKeyboardButton(text=b["label"], callback_data=CALLBACK_PREFIX + b["token"])
                for b in row
            ]
            for row in rows
        ]
    )


def keyboard_json(buttons_json: str) -> str | None:
    """``keyboard`` as the JSON Telegram reads, written directly (no models on the way)."""
    rows = json.loads(buttons_json or "[]")
    if not rows:
        return None
    return json.dumps(
        {
            "inline_keyboard": [
                [{"text": b["label"], "callback_data": CALLBACK_PREFIX + b["token"]} for b in row]
                for row in rows
            ]
        },
        ensure_ascii=False,
    )


class SentMessage(TelegramObject):
    """What delivery reads of Telegram's answer to a send: the message id, nothing else.

    The rest of the answer (the whole Message, with its chat, sender and keyboard) is kept as
    it came, unparsed (aiogram's objects allow extra fields).
    """

    message_id: int


class SendText(TelegramMethod[SentMessage]):
    """``sendMessage`` with the keyboard already as JSON, answered with only the message id.

    The same request as aiogram's ``SendMessage`` puts on the wire for a text and an inline
    keyboard, through the same Bot, session and error mapping; it skips building the keyboard
    as models and parsing the whole sent Message back, which delivery never reads (a fifth of
    the bot's CPU per message went to sending in bench (a)).
    """

    __returning__ = SentMessage
    __api_method__ = "sendMessage"

    chat_id: int | str
    text: str
    reply_markup: str | None = None


#: aiogram parses the answer with ``Response[SentMessage]``; kept alive, as in
#: ``bot.telegram.generics``, so that garbage collection does not make it build it again.
_PINNED_RESPONSE = Response[SentMessage]


class TelegramSender:
    """Sends one row: text with its keyboard, or a document with the text as caption."""

    channel = "telegram"

    def __init__(self, bot: Bot) -> None:
        self.bot = bot

    async def send(self, row: OutboxMessage) -> SendOutcome:
        """Send ``row``; map Telegram's answers to sent / retry / blocked / failed."""
        try:
            if row.document_name and row.document_body is not None:
                markup = keyboard(row.buttons)
                caption = row.text[:CAPTION_LIMIT] or None
                sent = await self.bot.send_document(
                    chat_id=row.chat_id,
                    document=BufferedInputFile(
                        row.document_body.encode("utf-8"), filename=row.document_name
                    ),
                    caption=caption,
                    reply_markup=markup,
                )
                if len(row.text) > CAPTION_LIMIT:
                    await self.bot.send_message(chat_id=row.chat_id, text=row.text)
                return SendOutcome.sent(str(sent.message_id))
            text = await self.bot(
                SendText(
                    chat_id=row.chat_id, text=row.text, reply_markup=keyboard_json(row.buttons)
                )
            )
            return SendOutcome.sent(str(text.message_id))
        except TelegramRetryAfter as exc:
            return SendOutcome("retry", retry_after=float(exc.retry_after), error="429 retry_after")
        except TelegramForbiddenError as exc:
            return SendOutcome("blocked", error=f"403 {exc.message}")
        except (TelegramServerError, TelegramNetworkError, ClientError, TimeoutError) as exc:
            return SendOutcome("retry", error=f"{type(exc).__name__}: {exc}"[:500])
        except TelegramUnauthorizedError as exc:
            # The token is wrong or revoked: keep every message until the operator fixes it.
            log.error("Telegram refused the bot token: %s", exc.message)
            return SendOutcome("retry", retry_after=60.0, error=f"401 {exc.message}")
        except (TelegramBadRequest, TelegramNotFound) as exc:
            return SendOutcome("failed", error=f"400 {exc.message}"[:500])
