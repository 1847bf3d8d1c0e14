"""A resident talking to the engine directly, reading replies from the outbox."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from typing import Any

from sqlmodel import col, select

from core.messages import HandleResult, Inbound, InboundKind
from core.models import OutboxMessage
from core.services import Core

_updates = itertools.count(1)


@dataclass
class Reply:
    """One outbox row as the person would see it."""

    id: int
    text: str
    buttons: list[list[dict[str, str]]]
    priority: int
    kind: str
    document_name: str | None

    def token(self, label_part: str) -> str:
        """The token of the button whose label contains ``label_part``."""
        for line in self.buttons:
            for button in line:
                if label_part in button["label"]:
                    return button["token"]
        raise AssertionError(f"no button with {label_part!r} in {self.buttons}")


@dataclass
class EngineChat:
    """Drives one person's conversation through ``core.engine.handle``."""

    core: Core
    external_id: str = "1001"
    channel: str = "telegram"
    language_hint: str | None = "zh-hans"
    seen: int = 0
    results: list[HandleResult] = field(default_factory=list)

    async def _send(self, **kw: Any) -> HandleResult:
        kw.setdefault("update_key", str(next(_updates)))
        inbound = Inbound(
            channel=self.channel,
            external_id=self.external_id,
            chat_id=self.external_id,
            language_hint=self.language_hint,
            **kw,
        )
        result = await self.core.engine.handle(inbound)
        self.results.append(result)
        return result

    async def text(self, text: str, **kw: Any) -> HandleResult:
        return await self._send(kind=InboundKind.TEXT, text=text, **kw)

    async def command(self, name: str, args: str = "", **kw: Any) -> HandleResult:
        return await self._send(kind=InboundKind.COMMAND, command=name, args=args, **kw)

    async def press(self, token: str, **kw: Any) -> HandleResult:
        return await self._send(kind=InboundKind.BUTTON, token=token, **kw)

    async def tap(self, label_part: str) -> HandleResult:
        """Press the newest button whose label contains ``label_part``."""
        for reply in reversed(await self.all_replies()):
            for line in reply.buttons:
                for button in line:
                    if label_part in button["label"]:
                        return await self.press(button["token"])
        raise AssertionError(f"no button with {label_part!r}")

    async def all_replies(self) -> list[Reply]:
        async with self.core.db.session() as session:
            rows = (
                await session.exec(
                    select(OutboxMessage)
                    .where(OutboxMessage.chat_id == self.external_id)
                    .where(OutboxMessage.channel == self.channel)
                    .order_by(col(OutboxMessage.id))
                )
            ).all()
        return [
            Reply(r.id or 0, r.text, json.loads(r.buttons), r.priority, r.kind, r.document_name)
            for r in rows
        ]

    async def new_replies(self) -> list[Reply]:
        """Replies queued since the last call."""
        fresh = [r for r in await self.all_replies() if r.id > self.seen]
        if fresh:
            self.seen = fresh[-1].id
        return fresh

    async def onboard(self, lang_label: str = "中文") -> None:
        """Go through onboarding with the usual answers."""
        await self.command("start")
        await self.tap(lang_label)
        await self.tap("同意" if lang_label == "中文" else "I agree")
        await self.tap("正在隔离" if lang_label == "中文" else "I am in isolation")
        await self.tap("18–39")
        await self.new_replies()
