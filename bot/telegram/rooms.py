"""Telegram's side of support rooms: one-person, expiring invite links to a room's group."""

from __future__ import annotations

from datetime import datetime

from aiogram import Bot


class TelegramInviteLinks:
    """Core's ``InviteLinks`` port over the Bot API's ``createChatInviteLink``."""

    def __init__(self, bot: Bot) -> None:
        self.bot = bot

    async def create_invite_link(self, chat_id: str, *, name: str, expire_at: datetime) -> str:
        """Make a link that lets exactly one person join ``chat_id`` until ``expire_at``."""
        link = await self.bot.create_chat_invite_link(
            chat_id=int(chat_id), name=name[:32], expire_date=expire_at, member_limit=1
        )
        return link.invite_link
