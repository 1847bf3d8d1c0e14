"""aiogram's ``Response[...]`` models for the Bot API methods Anxin calls, kept alive.

aiogram parses every answer with ``Response[method.__returning__]``. pydantic caches such a
parametrised class only weakly, so after each cyclic garbage collection the next call builds
it again with full schema generation (milliseconds per send). Anxin allocates enough for
garbage collection to run often, so without these references most sends paid for a rebuild.
"""

from __future__ import annotations

from typing import Any

from aiogram.methods import (
    AnswerCallbackQuery,
    CreateChatInviteLink,
    DeleteWebhook,
    GetChatMember,
    GetMe,
    GetUpdates,
    SendDocument,
    SendMessage,
    SetWebhook,
)
from aiogram.methods.base import Response

#: Every method Anxin calls (delivery, callback answers, staff membership, room invite links,
#: the webhook, long polling).
METHODS: tuple[type[Any], ...] = (
    SendMessage,
    SendDocument,
    AnswerCallbackQuery,
    GetChatMember,
    CreateChatInviteLink,
    SetWebhook,
    DeleteWebhook,
    GetUpdates,
    GetMe,
)

#: The parametrised classes themselves: while this module lives, pydantic's cache keeps them.
PINNED: tuple[type[Any], ...] = tuple(
    Response[method.__returning__]  # type: ignore[name-defined]
    for method in METHODS
)
