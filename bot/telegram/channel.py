"""The Telegram channel: aiogram's bot and dispatcher, long polling or webhook."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiogram import Bot, Dispatcher, F, Router
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.types import CallbackQuery, Message, Update
from aiogram.types.update import UpdateTypeLookupError

from bot.telegram import generics  # noqa: F401  (aiogram's Response[...] classes kept alive)
from bot.telegram.convert import callback_inbound, message_inbound
from core.conversation import ConversationEngine
from core.db import DatabaseUnavailable
from core.messages import HandleResult, Inbound, InboundKind

log = logging.getLogger(__name__)

ALLOWED_UPDATES = ["message", "edited_message", "callback_query", "channel_post", "my_chat_member"]
POLLING_DB_PATIENCE = 120.0  # seconds a polled update waits for the database to come back


class TelegramChannel:
    """Receives Telegram updates, hands them to core, and holds the Bot for delivery."""

    def __init__(
        self, token: str, api_url: str, engine: ConversationEngine, staff_chat_id: str = ""
    ) -> None:
        session = AiohttpSession(api=TelegramAPIServer.from_base(api_url.rstrip("/")))
        self.bot = Bot(token=token, session=session)
        self.engine = engine
        self.staff_chat_id = staff_chat_id
        # No aiogram FSM: conversation state lives in the database (core), per update.
        self.dispatcher = Dispatcher(disable_fsm=True)
        self.dispatcher.include_router(self._router())
        self.polling = False
        self._members: dict[str, tuple[float, bool]] = {}
        if staff_chat_id:
            engine.staff_member = self.is_staff_member

    def _router(self) -> Router:
        router = Router(name="anxin")
        router.message.register(self._on_message, F.chat.type == "private")
        router.edited_message.register(self._on_edited, F.chat.type == "private")
        if self.staff_chat_id:
            # Staff commands in the counselors' group (/oncall, /queue, /stats, /concern …).
            router.message.register(
                self._on_message, F.chat.id == int(self.staff_chat_id), F.text.startswith("/")
            )
        router.callback_query.register(self._on_callback)
        # Group chatter goes to core, which reads only support-room groups, for risk.
        router.message.register(
            self._on_group_message, F.chat.type.in_({"group", "supergroup"}), F.text
        )
        router.channel_post.register(self._on_ignored)
        router.message.register(self._on_ignored)
        return router

    async def is_staff_member(self, channel: str, external_id: str) -> bool:
        """Whether a Telegram user is in the staff chat now (asked at most once a minute)."""
        if channel != "telegram" or not self.staff_chat_id:
            return False
        loop = asyncio.get_running_loop()
        cached = self._members.get(external_id)
        if cached is not None and loop.time() - cached[0] < 60:
            return cached[1]
        try:
            member = await self.bot.get_chat_member(int(self.staff_chat_id), int(external_id))
            inside = member.status in ("creator", "administrator", "member", "restricted")
        except Exception:  # unknown user, network trouble: not verified means not allowed
            log.warning("could not check staff chat membership of %s", external_id)
            return False
        self._members[external_id] = (loop.time(), inside)
        return inside

    async def _handle(self, inbound: Inbound) -> HandleResult:
        """Hand an inbound to core; while polling, wait out a database outage."""
        delay, waited = 0.5, 0.0
        while True:
            try:
                return await self.engine.handle(inbound)
            except DatabaseUnavailable:
                # Over a webhook the 5xx makes Telegram retry; a polled update has already
                # been confirmed, so it waits here instead of being dropped.
                if not self.polling or waited >= POLLING_DB_PATIENCE:
                    raise
                log.warning(
                    "database unavailable; update %s waits %.1fs", inbound.update_key, delay
                )
                await asyncio.sleep(delay)
                waited += delay
                delay = min(delay * 2, 10.0)

    async def _on_message(self, message: Message, event_update: Update) -> None:
        """A resident wrote to the bot in a private chat."""
        inbound = message_inbound(message, event_update.update_id)
        if inbound is not None:
            await self._handle(inbound)

    async def _on_edited(self, message: Message, event_update: Update) -> None:
        """A resident edited an earlier message."""
        inbound = message_inbound(message, event_update.update_id, edited=True)
        if inbound is not None:
            await self._handle(inbound)

    async def _on_callback(self, query: CallbackQuery, event_update: Update) -> None:
        """A button was pressed: core checks the token; the toast shows core's notice."""
        inbound = callback_inbound(query, event_update.update_id)
        result = HandleResult()
        if inbound is not None:
            result = await self._handle(inbound)
        try:
            await query.answer(text=(result.notice or "")[:200] or None)
        except Exception:  # the answer is a courtesy; the reply already sits in the outbox
            log.info("could not answer callback query %s", query.id)

    async def _on_group_message(self, message: Message, event_update: Update) -> None:
        """Someone wrote text in a group: core reads a room's group for risk, never replies."""
        inbound = message_inbound(message, event_update.update_id)
        if inbound is not None and inbound.kind == InboundKind.TEXT:
            await self._handle(inbound)

    async def _on_ignored(self, event: Any) -> None:
        """Channel posts and group chatter are not conversations; nothing is stored."""
        log.debug("ignored %s", type(event).__name__)

    async def feed_webhook(self, payload: dict[str, Any]) -> None:
        """Handle one update POSTed by Telegram (raises on failure so the caller answers 5xx)."""
        update = Update.model_validate(payload, context={"bot": self.bot})
        try:
            update.event_type  # noqa: B018  (raises for update types this aiogram does not know)
        except UpdateTypeLookupError:
            log.info("ignored update %s of an unknown type", update.update_id)
            return
        await self.dispatcher.feed_update(self.bot, update)

    async def run_polling(self) -> None:
        """Long-poll Telegram until cancelled (the webhook is removed first)."""
        self.polling = True
        await self.bot.delete_webhook(drop_pending_updates=False)
        await self.dispatcher.start_polling(
            self.bot,
            handle_signals=False,
            close_bot_session=False,
            allowed_updates=ALLOWED_UPDATES,
            polling_timeout=25,
        )

    async def stop_polling(self) -> None:
        """Stop long polling if it runs."""
        if self.polling:
            try:
                await self.dispatcher.stop_polling()
            except RuntimeError:
                pass
            self.polling = False

    async def set_webhook(self, url: str, secret: str) -> None:
        """Ask Telegram to POST updates to ``url`` with ``secret`` in a header."""
        await self.bot.set_webhook(url=url, secret_token=secret, allowed_updates=ALLOWED_UPDATES)

    async def close(self) -> None:
        """Close the HTTP session."""
        await self.bot.session.close()
