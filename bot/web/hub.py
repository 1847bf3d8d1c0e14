"""Tells open web-chat pages that their transcript has something new."""

from __future__ import annotations

import asyncio
from collections import defaultdict


class WebHub:
    """Per chat, the events of the pages (sockets) that are open on it."""

    def __init__(self) -> None:
        self._listeners: dict[str, set[asyncio.Event]] = defaultdict(set)

    def subscribe(self, chat_id: str) -> asyncio.Event:
        """Register a page; its event is set whenever the chat's transcript grows."""
        event = asyncio.Event()
        self._listeners[chat_id].add(event)
        return event

    def unsubscribe(self, chat_id: str, event: asyncio.Event) -> None:
        """Forget a closed page."""
        listeners = self._listeners.get(chat_id)
        if listeners is not None:
            listeners.discard(event)
            if not listeners:
                del self._listeners[chat_id]

    def notify(self, chat_id: str) -> None:
        """Wake every page open on ``chat_id``."""
        for event in self._listeners.get(chat_id, ()):
            event.set()
