"""Periodic housekeeping the scheduler wakes; what is due lives in the database."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import delete
from sqlmodel import col
from sqlmodel.ext.asyncio.session import AsyncSession

from core.clock import Clock
from core.db import Database
from core.models import ButtonToken, InboundSeen

SEEN_KEEP = timedelta(days=3)  # Telegram stops retrying an update after about a day
TOKENS_KEEP = timedelta(days=30)


async def forget_old_inbound(db: Database, clock: Clock) -> int:
    """Forget handled update ids older than any platform would send again."""
    cutoff = clock.now() - SEEN_KEEP

    async def work(session: AsyncSession) -> int:
        result = await session.exec(delete(InboundSeen).where(col(InboundSeen.seen_at) < cutoff))
        return int(result.rowcount or 0)

    return await db.run(work)


async def forget_old_buttons(db: Database, clock: Clock) -> int:
    """Drop button tokens nobody can sensibly press any more (they answer "expired")."""
    cutoff = clock.now() - TOKENS_KEEP

    async def work(session: AsyncSession) -> int:
        result = await session.exec(delete(ButtonToken).where(col(ButtonToken.created_at) < cutoff))
        return int(result.rowcount or 0)

    return await db.run(work)
