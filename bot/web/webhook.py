"""Telegram's webhook in plain ASGI, ahead of FastAPI's routing.

Every update Telegram sends comes through here, so it costs what the work costs and little
more: FastAPI's routing, dependency solving and request and response objects were a tenth of
the process's CPU per update in bench (a) (bench/README.md). The answers are the ones Telegram
needs: 200 once core has the update (it is in the database), 503 while the database is away
(Telegram retries), 400 for what is not an update (Telegram would only send it again), and
401/404/405/413 for requests that are not Telegram's. Anything unexpected propagates to
Starlette's ServerErrorMiddleware, which answers 500 and logs it, as for any other route.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from core.db import DatabaseUnavailable

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from bot.telegram.channel import TelegramChannel

WEBHOOK_PATH = "/telegram/webhook"
SECRET_HEADER = b"x-telegram-bot-api-secret-token"
MAX_UPDATE_BYTES = 1_000_000

_JSON = (b"content-type", b"application/json")
_OK = b'{"ok":true}'
_NOT_AN_UPDATE = b'{"error":"not a Telegram update"}'
_MALFORMED = b'{"error":"malformed JSON"}'
_UNAVAILABLE = b'{"error":"temporarily unavailable"}'
_NOT_ALLOWED = b'{"detail":"Method Not Allowed"}'


class _Disconnected(Exception):
    """The client went away while its body was being read."""


class TelegramWebhook:
    """ASGI middleware: ``POST /telegram/webhook`` here, everything else to ``app``.

    ``channel`` and ``secret`` are read per request (a runtime without Telegram, or without
    a secret, answers 404, as if there were no such route).
    """

    def __init__(
        self,
        app: ASGIApp,
        channel: Callable[[], TelegramChannel | None],
        secret: Callable[[], str],
    ) -> None:
        self.app = app
        self.channel = channel
        self.secret = secret

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != WEBHOOK_PATH:
            await self.app(scope, receive, send)
            return
        try:
            status, body, headers = await self._answer(scope, receive)
        except _Disconnected:
            return
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [*headers, (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _answer(
        self, scope: Scope, receive: Receive
    ) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        if scope["method"] != "POST":
            return 405, _NOT_ALLOWED, [_JSON, (b"allow", b"POST")]
        channel, secret = self.channel(), self.secret()
        if channel is None or not secret:
            return 404, b"", []
        given, length = b"", None
        for name, value in scope["headers"]:
            if name == SECRET_HEADER:
                given = value
            elif name == b"content-length":
                length = value
        if not hmac.compare_digest(given, secret.encode()):
            return 401, b"", []
        if length is not None and length.isdigit() and int(length) > MAX_UPDATE_BYTES:
            return 413, b"", []
        body = await _read_body(receive)
        if body is None:
            return 413, b"", []
        try:
            payload: Any = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return 400, _MALFORMED, [_JSON]
        if not isinstance(payload, dict) or not isinstance(payload.get("update_id"), int):
            return 400, _NOT_AN_UPDATE, [_JSON]
        try:
            await channel.feed_webhook(payload)
        except ValidationError:
            return 400, _NOT_AN_UPDATE, [_JSON]
        except DatabaseUnavailable:
            # Telegram retries a 5xx, so the update is not lost while the database is away.
            return 503, _UNAVAILABLE, [_JSON]
        return 200, _OK, [_JSON]


async def _read_body(receive: Receive) -> bytes | None:
    """The request body, or None once it grows past ``MAX_UPDATE_BYTES`` (read no further)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_UPDATE_BYTES:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
