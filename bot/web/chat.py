"""The web chat: a page at ``/`` and a WebSocket that carries the conversation.

An anonymous HttpOnly cookie names the browser's conversation; the server keeps only its
hash. Messages go through core like any channel's, and replies arrive through the outbox into
a transcript, so reloading the page (or losing the connection) resumes where it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from fastapi import APIRouter, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import HTMLResponse, Response
from sqlmodel import col, select

from bot.web.hub import WebHub
from core.conversation import ConversationEngine, guess_language
from core.db import DatabaseUnavailable
from core.messages import Inbound, InboundKind
from core.models import Person, WebTranscript

log = logging.getLogger(__name__)

COOKIE = "anxin_sid"
COOKIE_MAX_AGE = 180 * 24 * 3600
MAX_TEXT = 20_000
HISTORY = 200
PUSH_FALLBACK_SECONDS = 5.0
PAGE = Path(__file__).parent / "static" / "chat.html"
PAGE_KEYS = (
    "web.title",
    "web.placeholder",
    "web.send",
    "web.connecting",
    "web.offline",
    "web.example_banner",
    "web.too_long",
    "web.download",
    "web.sos",
    "web.cookies",
)


def chat_id_for(sid: str) -> str:
    """The chat id the server keeps for a browser's cookie (a hash, never the cookie)."""
    return "w" + hashlib.sha256(sid.encode()).hexdigest()[:32]


class WebChat:
    """The routes of the web chat, bound to core."""

    def __init__(
        self, engine: ConversationEngine, hub: WebHub, *, secure_cookie: bool, public_url: str = ""
    ) -> None:

        self.engine = engine
        self.hub = hub
        self.secure_cookie = secure_cookie
        self.public_host = urlparse(public_url).netloc.lower() if public_url else ""
        self.page = PAGE.read_text(encoding="utf-8")
        self.router = APIRouter()
        self.router.add_api_route("/", self.index, methods=["GET"], include_in_schema=False)
        self.router.add_api_route(
            "/chat/doc/{item_id}", self.document, methods=["GET"], include_in_schema=False
        )
        self.router.add_api_websocket_route("/ws", self.socket)

    async def _language_of(self, chat_id: str, accept: str | None) -> str:
        async with self.engine.db.session() as session:
            person = (
                await session.exec(
                    select(Person).where(Person.channel == "web", Person.chat_id == chat_id)
                )
            ).first()
        if person is not None and person.language:
            return person.language
        return guess_language(accept, self.engine.config)

    async def index(self, request: Request) -> Response:
        """Serve the chat page, giving the browser its anonymous cookie on first visit."""
        sid = request.cookies.get(COOKIE)
        fresh = not sid or len(sid) < 20 or len(sid) > 100
        if fresh:
            sid = secrets.token_urlsafe(32)
        assert sid is not None
        lang = await self._language_of(chat_id_for(sid), request.headers.get("accept-language"))
        strings = {key.removeprefix("web."): self.engine.catalogs.t(lang, key) for key in PAGE_KEYS}
        config = {"lang": lang, "strings": strings, "example": self.engine.sites.is_example}
        html = (
            self.page.replace("{{LANG}}", "zh-Hans" if lang == "zh_Hans" else "en")
            .replace("{{TITLE}}", strings["title"])
            .replace("{{CONFIG}}", json.dumps(config, ensure_ascii=False).replace("</", "<\\/"))
        )
        response = HTMLResponse(html, headers={"Cache-Control": "no-store"})
        if fresh:
            response.set_cookie(
                COOKIE,
                sid,
                max_age=COOKIE_MAX_AGE,
                httponly=True,
                samesite="lax",
                secure=self.secure_cookie,
            )
        return response

    async def document(self, item_id: int, request: Request) -> Response:
        """Download a document the bot sent in this browser's conversation (its data export)."""
        sid = request.cookies.get(COOKIE) or ""
        async with self.engine.db.session() as session:
            item = await session.get(WebTranscript, item_id)
        if item is None or item.chat_id != chat_id_for(sid) or item.document_body is None:
            return Response(status_code=404)
        return Response(
            item.document_body.encode("utf-8"),
            media_type="application/json",
            headers={
                "Content-Disposition": f'attachment; filename="{item.document_name}"',
                "Cache-Control": "no-store",
            },
        )

    async def socket(self, ws: WebSocket) -> None:
        """Carry one page's conversation: history, then new messages both ways."""
        sid = ws.cookies.get(COOKIE)
        if not sid or not 20 <= len(sid) <= 100:
            await ws.close(code=4401)
            return
        if not self._same_origin(ws):
            await ws.close(code=4403)
            return
        chat_id = chat_id_for(sid)
        await ws.accept()
        wake = self.hub.subscribe(chat_id)
        pusher: asyncio.Task[None] | None = None
        try:
            hello = await ws.receive_json()
            after = _sane_int(hello.get("after", 0)) if isinstance(hello, dict) else 0
            site = str(hello.get("site", ""))[:32] if isinstance(hello, dict) else ""
            await self._ensure_started(chat_id, site, ws.headers.get("accept-language"))
            state = {"after": after}
            await self._push_new(ws, chat_id, state)
            pusher = asyncio.create_task(self._pusher(ws, chat_id, wake, state))
            while True:
                message = await ws.receive()
                if message.get("type") == "websocket.disconnect":
                    break
                frame = message.get("text")
                if frame is None:  # a binary frame: not something the page sends
                    await ws.send_json({"type": "error", "error": "malformed"})
                    continue
                await self._receive(ws, chat_id, frame)
        except WebSocketDisconnect:
            pass
        except (ValueError, TypeError, KeyError):
            with contextlib.suppress(Exception):
                await ws.close(code=1003)
        finally:
            self.hub.unsubscribe(chat_id, wake)
            if pusher is not None:
                pusher.cancel()
                with contextlib.suppress(BaseException):
                    await pusher

    def _same_origin(self, ws: WebSocket) -> bool:
        """Refuse pages of other sites that would ride on the resident's cookie."""
        origin = ws.headers.get("origin")
        if not origin:
            return True  # not a browser, or a browser that sends none: the cookie decides
        host = urlparse(origin).netloc.lower()
        allowed = {ws.headers.get("host", "").lower()}
        if self.public_host:
            allowed.add(self.public_host)
        return host in allowed

    async def _ensure_started(self, chat_id: str, site: str, accept: str | None) -> None:
        """Begin the conversation for a new browser, once (idempotent on its chat id)."""
        args = f"site_{site}" if site else ""
        await self.engine.handle(
            Inbound(
                channel="web",
                external_id=chat_id,
                chat_id=chat_id,
                kind=InboundKind.COMMAND,
                command="start",
                args=args,
                update_key=f"start:{chat_id}",
                language_hint=accept,
            )
        )

    async def _receive(self, ws: WebSocket, chat_id: str, frame: str) -> None:
        try:
            data = json.loads(frame)
        except json.JSONDecodeError:
            await ws.send_json({"type": "error", "error": "malformed"})
            return
        if not isinstance(data, dict):
            await ws.send_json({"type": "error", "error": "malformed"})
            return
        message_id = str(data.get("id", ""))[:64] or secrets.token_hex(8)
        kind = data.get("type")
        if kind == "text":
            text = str(data.get("text", ""))
            if len(text) > MAX_TEXT:
                await ws.send_json(
                    {"type": "error", "id": message_id, "error": "too_long", "limit": MAX_TEXT}
                )
                return
            inbound = _text_inbound(chat_id, message_id, text)
        elif kind == "button":
            inbound = Inbound(
                channel="web",
                external_id=chat_id,
                chat_id=chat_id,
                kind=InboundKind.BUTTON,
                token=str(data.get("token", ""))[:64] or "-",
                update_key=f"m:{message_id}",
            )
        else:
            await ws.send_json({"type": "error", "id": message_id, "error": "unknown_type"})
            return
        try:
            result = await self.engine.handle(inbound)
        except DatabaseUnavailable:
            await ws.send_json({"type": "error", "id": message_id, "error": "busy", "retry": True})
            return
        except Exception:
            # Keep the socket: the page shows the message as not sent instead of looping.
            log.exception("web chat message %s could not be handled", message_id)
            await ws.send_json({"type": "error", "id": message_id, "error": "internal"})
            return
        await ws.send_json({"type": "ack", "id": message_id, "notice": result.notice})

    async def _pusher(
        self, ws: WebSocket, chat_id: str, wake: asyncio.Event, state: dict[str, int]
    ) -> None:
        while True:
            # Woken when a reply is delivered; the timeout is a safety net for a wake-up
            # lost between processes, so a reply never waits more than a few seconds.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout=PUSH_FALLBACK_SECONDS)
            wake.clear()
            await self._push_new(ws, chat_id, state)

    async def _push_new(self, ws: WebSocket, chat_id: str, state: dict[str, int]) -> None:
        async with self.engine.db.session() as session:
            rows = (
                await session.exec(
                    select(WebTranscript)
                    .where(WebTranscript.chat_id == chat_id)
                    .where(col(WebTranscript.id) > state["after"])
                    .order_by(col(WebTranscript.id).desc())
                    .limit(HISTORY)
                )
            ).all()
        for row in reversed(rows):
            await ws.send_json(_frame(row))
            state["after"] = max(state["after"], row.id or 0)


def _sane_int(value: object) -> int:
    """A transcript position from the page, or 0 when it is not a plain, sane integer."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return 0
    try:
        number = int(value)
    except (ValueError, OverflowError):
        return 0
    return number if 0 <= number < 2**62 else 0


def _text_inbound(chat_id: str, message_id: str, text: str) -> Inbound:
    stripped = text.strip()
    if stripped.startswith("/") and len(stripped) > 1:
        head, _, args = stripped[1:].partition(" ")
        if head.isascii() and head.replace("_", "").isalnum():
            return Inbound(
                channel="web",
                external_id=chat_id,
                chat_id=chat_id,
                kind=InboundKind.COMMAND,
                command=head.lower()[:32],
                args=args.strip(),
                text=text,
                update_key=f"m:{message_id}",
            )
    return Inbound(
        channel="web",
        external_id=chat_id,
        chat_id=chat_id,
        kind=InboundKind.TEXT,
        text=text,
        update_key=f"m:{message_id}",
    )


def _frame(row: WebTranscript) -> dict[str, Any]:
    frame: dict[str, Any] = {
        "type": "message",
        "seq": row.id,
        "dir": row.direction,
        "text": row.text,
        "buttons": json.loads(row.buttons or "[]"),
    }
    if row.document_name:
        frame["doc"] = {"name": row.document_name, "url": f"/chat/doc/{row.id}"}
    return frame
