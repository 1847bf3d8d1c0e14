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
from aiogram.types import BufferedInputFile, InlineKeyboardButton, InlineKeyboardMarkup
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


class TelegramSender:
    """Sends one row: text with its keyboard, or a document with the text as caption."""

    channel = "telegram"

    def __init__(self, bot: Bot) -> None:
        self.bot = bot

    async def send(self, row: OutboxMessage) -> SendOutcome:
        """Send ``row``; map Telegram's answers to sent / retry / blocked / failed."""
        try:
            markup = keyboard(row.buttons)
            if row.document_name and row.document_body is not None:
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
            else:
                sent = await self.bot.send_message(
                    chat_id=row.chat_id, text=row.text, reply_markup=markup
                )
            return SendOutcome.sent(str(sent.message_id))
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
